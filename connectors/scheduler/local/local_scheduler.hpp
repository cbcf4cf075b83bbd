#pragma once
// The embedded scheduler: jobs run as child processes on this machine (docs/JOBS.md).
//
// Each job gets its own session and process group (setsid), rlimits (CPU time from walltime x
// CPUs, address space from memory, open files, processes), a scrubbed environment, a working
// directory opened beneath <jobs_root>/<project> (sandbox/confine.hpp), stdout and stderr in
// files, and — when scigate runs as root — the unprivileged `run_as` account. With bubblewrap
// installed the job also sees a read-only system, a private /tmp and no network (unless the
// site allows it). A bash wrapper writes the job's exit code to a file, so that a job that
// outlives a scigate restart is still accounted for (jobs are not killed with the server).
//
// Layout, native id "<project>/<gateway id>":
//   <jobs_root>/<project>/<gateway id>/          the job's directory (owned by run_as): stdout, stderr
//   <jobs_root>/.control/<project>/<gateway id>/ owned by scigate: job.sh, spec.json, pid
//   .../<gateway id>/exit/code                   written by the wrapper (the dir is run_as's)
//
// One thread (the "runner") starts queued jobs when slots (CPUs, memory) allow, reaps children
// with waitpid(WNOHANG), enforces walltime (SIGTERM to the group, SIGKILL after a grace) and
// carries out cancels. The coroutines only touch the shared table under a mutex: they never
// block an I/O thread on a process.
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include <boost/asio/thread_pool.hpp>

#include <functional>

#include "connectors/scheduler/scheduler.hpp"

namespace scigate::jobs {

struct LocalSchedulerOptions {
  std::filesystem::path jobs_root;
  std::string run_as = "nobody";     // used only when scigate runs as root
  int slots_cpus = 0;                // 0: the number of CPUs
  int64_t slots_memory_mb = 0;       // 0: memory is not a slot
  bool allow_network = false;
  bool use_bwrap = true;             // when /usr/bin/bwrap (or bwrap on PATH) exists
  std::chrono::milliseconds kill_grace{3000};  // SIGTERM -> SIGKILL
  std::chrono::milliseconds tick{20};
};

class LocalScheduler final : public Scheduler {
 public:
  explicit LocalScheduler(LocalSchedulerOptions options);
  ~LocalScheduler() override;  // stops the runner; running jobs keep running

  std::string kind() const override { return "local"; }
  boost::asio::awaitable<std::string> submit(JobSpec spec) override;
  boost::asio::awaitable<std::vector<JobStatus>> poll(std::vector<std::string> native_ids) override;
  boost::asio::awaitable<void> cancel(std::string native_id) override;
  boost::asio::awaitable<std::vector<JobStatus>> final_status(std::string native_id) override;

  bool sandboxed() const { return !bwrap_.empty(); }

  // Synchronous forms (the runner's table); tests use them directly.
  std::string submit_now(const JobSpec& spec);
  std::vector<JobStatus> poll_now(const std::vector<std::string>& ids);
  void cancel_now(const std::string& id);
  std::optional<JobStatus> final_status_now(const std::string& id);

 private:
  struct Job {
    JobSpec spec;
    JobStatus status;
    std::filesystem::path control_dir, job_dir;
    pid_t pid = 0;
    bool own_child = false;     // waitpid() works; else adopted after a restart
    bool cancel_requested = false;
    bool timed_out = false;
    std::optional<std::chrono::steady_clock::time_point> start, term_sent;
    int cpus = 1;
    int64_t memory_mb = 0;
  };
  void run();
  void tick();
  bool try_start(Job& job, std::string* why);
  void finish(Job& job, std::optional<int> exit_code, std::optional<int> signal);
  void signal_group(Job& job, int sig);
  std::filesystem::path control_dir(const std::string& native_id) const;
  std::optional<Job> adopt(const std::string& native_id);
  std::optional<Job> requeue(const std::string& native_id);
  // Runs `fn` (file system work: directories, chown, script files, exit files) on files_, and
  // resumes the caller on its own executor: the coroutines never block an I/O thread.
  template <typename R>
  boost::asio::awaitable<R> offload(std::function<R()> fn);

  LocalSchedulerOptions options_;
  std::string bwrap_;  // path, empty: not used
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  bool drop_privileges_ = false;
  int free_cpus_ = 0;
  int64_t free_memory_mb_ = 0;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, Job> jobs_;   // native id -> job, until it is final and reported
  std::deque<std::string> queue_;     // native ids waiting for slots, FIFO
  bool stop_ = false;
  std::thread runner_;
  boost::asio::thread_pool files_{1};
};

}  // namespace scigate::jobs
