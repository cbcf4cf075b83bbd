#pragma once
// The scheduler connector interface: what the job tools and the job ledger need from a batch
// system. One implementation per kind of site: `local` (child processes on this machine, under
// sandbox/), `slurm` (slurmrestd or the CLI). PBS or another scheduler is one more class.
//
// The job ledger (jobs/ in connectors/scheduler/job_ledger.*) owns gateway ids, state history,
// credits and polling; a Scheduler only translates. In particular:
//   - submit() gets a spec whose paths are already confined and whose policy was decided;
//   - poll() is called by ONE poller per site for ALL of its active jobs at once, so that the
//     load on the scheduler does not grow with the number of agents asking;
//   - jobs a scheduler no longer knows (Slurm after MinJobAge) are absent from poll()'s answer;
//     the ledger then asks final_status() (sacct -c, or the wrapper's exit file);
//   - a scheduler reports what it has under a native id; the ledger decides whether that is
//     its job or another one that took the id (Slurm after slurmctld lost its state).
//
// Every method is a coroutine and must not block an I/O thread: commands (sbatch, squeue,
// sacct...) run with argument vectors, never a shell, off the I/O threads; HTTP to slurmrestd
// goes through an asynchronous client. Failures throw scigate::ErrorException carrying an Error
// (kBackendRejected for a job the scheduler refuses, with its message; kBackendUnavailable when
// it cannot be reached).
#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/common/error.hpp"

namespace scigate::jobs {

// PSI/J job states. Out-of-memory, timeout, node failure and preemption are kFailed, never
// kCompleted; the scheduler's own word is kept in JobStatus::native_state.
enum class JobState { kNew, kQueued, kActive, kCompleted, kFailed, kCanceled };

std::string_view to_string(JobState s);                       // "NEW", "QUEUED", ...
std::optional<JobState> parse_job_state(std::string_view s);  // the inverse (case-insensitive)
inline bool is_final(JobState s) {
  return s == JobState::kCompleted || s == JobState::kFailed || s == JobState::kCanceled;
}

struct Resources {
  int nodes = 1;
  int tasks = 1;          // tasks in all (Slurm --ntasks)
  int cpus_per_task = 1;
  int gpus = 0;           // per node
  std::string gpu_type;   // "" = any
  int64_t memory_mb = 0;  // per node; 0 = the site's default
  std::chrono::seconds walltime{3600};

  int cpus() const { return tasks * cpus_per_task; }
};

struct JobSpec {
  std::string gateway_id;  // assigned by the job ledger before submit; put in the job's name/comment
  std::string name;
  // Exactly one of `script` (a bash script, "#!" line optional) and `executable` (+ arguments).
  std::string script;
  std::string executable;
  std::vector<std::string> arguments;
  Resources resources;
  std::string partition;  // "" = the site's default
  std::string account;    // the scheduler's account ("" = the site's mapping for the project)
  std::map<std::string, std::string> environment;  // only these (plus what the site adds)
  // The site's job root: the directories below are created beneath it, never through a symlink.
  std::filesystem::path jobs_root;
  std::filesystem::path working_directory;  // absolute, confined to the project's area
  std::filesystem::path stdout_path;        // absolute; the job's stdout and stderr land here
  std::filesystem::path stderr_path;
  std::vector<std::string> after_ok;  // native ids this job waits for (afterok)
  std::string project;
  std::string principal;
  std::string run_as;  // the local account the job runs as ("" = the site's default)
  // A job that is not a batch script: what a non-batch site runs (a quantum circuit for a QPU
  // site: {"kind": "quantum-sampler", "qasm3", "shots", ...}). Null for batch jobs. It may
  // carry "usage": [{resource, quantity, how}], what the job is charged when it runs (instead
  // of resources x elapsed); a job that never started is charged nothing.
  nlohmann::json payload;
};

// What the scheduler says about one job now.
struct JobStatus {
  std::string native_id;
  JobState state = JobState::kNew;
  std::string native_state;  // "PENDING", "OUT_OF_MEMORY", "exited", ...
  std::string reason;        // "Resources", "Priority", "walltime exceeded", ...
  std::optional<int> exit_code;    // of the batch script, when it ended
  std::optional<int> term_signal;  // when killed by a signal
  std::optional<int64_t> submit_ms, start_ms, end_ms;  // unix ms
  // What was allocated, for charging: allocated resources x elapsed.
  int alloc_nodes = 0;
  int alloc_cpus = 0;
  int alloc_gpus = 0;
  std::string gpu_type;
  // The job's comment where the scheduler reports it: the gateway id scigate submitted it with
  // ("" when not reported). A status whose comment names another job is not this job's.
  std::string comment;
  // The job's name where the scheduler reports it ("" otherwise): sacct -c has no comment.
  std::string name;
  // What a job whose output is data rather than files produced (a QPU run's counts); null
  // otherwise. Kept in the job ledger and shown by get_job.
  nlohmann::json result;
};

// Thrown by Scheduler::submit when the request may have reached the scheduler but its answer
// was lost (a timeout after sending, a connection cut mid-answer, "Socket timed out", an
// answer that makes no sense): the job may exist. The job ledger then looks it up by its
// comment (find_submitted) instead of calling it refused. A scheduler that was never reached
// (connection refused, controller down) throws a plain ErrorException: nothing was taken.
class SubmitOutcomeUnknown : public ErrorException {
 public:
  using ErrorException::ErrorException;
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  virtual std::string kind() const = 0;  // "local", "slurm-cli", "slurm-rest", "ibm-runtime"
  // Whether the site runs JobSpec::payload jobs (a QPU) rather than scripts.
  virtual bool runs_payloads() const { return false; }

  // Submits and returns the native id. The job may be queued, or already running.
  virtual boost::asio::awaitable<std::string> submit(JobSpec spec) = 0;
  // One query for many jobs. Jobs the scheduler does not know (any more) are left out.
  virtual boost::asio::awaitable<std::vector<JobStatus>> poll(std::vector<std::string> native_ids) = 0;
  // Cancels the job (the whole process group / all steps). Cancelling a finished job is not an
  // error.
  virtual boost::asio::awaitable<void> cancel(std::string native_id) = 0;
  // The end of a job poll() no longer reports (sacct -c, the wrapper's exit file): every record
  // the scheduler has under that id, oldest first (Slurm's completion log keeps one per job
  // that ever had the id, and ids are reused after slurmctld loses its state); empty when even
  // that is gone. The job ledger tells which one is its job's.
  virtual boost::asio::awaitable<std::vector<JobStatus>> final_status(std::string native_id) = 0;
  // The native ids of jobs whose submit's outcome is unknown (sbatch timed out after slurmctld
  // took the job, a crash between submit and record), found by their comment (the gateway id)
  // among the jobs of their names: gateway id -> native id for each job the scheduler has; a
  // job left out is not there. One query for all of them. Throws when the scheduler cannot be
  // asked. Schedulers whose submit cannot be ambiguous answer an empty map.
  struct Submitted {
    std::string gateway_id;
    std::string name;  // the job name it was submitted under
  };
  virtual boost::asio::awaitable<std::map<std::string, std::string>> find_submitted(std::vector<Submitted> jobs) {
    co_return std::map<std::string, std::string>{};
  }
};

}  // namespace scigate::jobs
