#pragma once
// The job ledger: every job submitted through the gateway, whatever its site (docs/JOBS.md).
//
// JobService owns gateway ids (j-<12 hex>), the jobs and job_events tables (migration 5), one
// poller per site and the credits of each job:
//   - submit: a detached credit hold (owner "job:<id>": it outlives the call and restarts) for
//     resources x walltime, then the row (state NEW), then Scheduler::submit (QUEUED). Not
//     enough credits refuses before anything reaches the scheduler; a scheduler that refuses
//     releases the hold.
//   - the poller of a site asks its scheduler about ALL active jobs of the site in one poll()
//     per interval, however many agents ask; jobs poll() leaves out are asked final_status().
//     Transitions are written with their times; a final state settles the hold (elapsed x
//     allocated resources, capped at the hold; a job that never ran pays nothing).
//   - get/list are answered from memory (a mirror of the table, loaded at start), never from
//     the scheduler.
//   - at start, jobs that were active are polled again and unsettled final ones are settled:
//     the hold can be settled only once, so nothing is charged twice.
//
// Threads: public methods may be called from any I/O thread. SQLite runs on a one-thread pool
// of its own (posted there, result posted back), never on an I/O thread. The pollers are
// coroutines on the io_context given to start().
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "connectors/scheduler/scheduler.hpp"
#include "policies/ledger.hpp"
#include "server/config/config.hpp"
#include "server/state/db_worker.hpp"

namespace scigate::jobs {

struct JobEvent {
  int64_t time_ms = 0;
  JobState state = JobState::kNew;
  std::string native_state, reason;
};

struct JobRecord {
  std::string id, site, native_id, project, principal, name;
  nlohmann::json spec;  // what was asked, as submitted (resources, script size, ...)
  Resources resources;
  JobState state = JobState::kNew;
  std::string native_state, reason;
  std::optional<int> exit_code, term_signal;
  int64_t created_ms = 0;
  std::optional<int64_t> submit_ms, start_ms, end_ms;
  std::string hold_id;
  MicroCredits held = 0;
  std::optional<MicroCredits> cost;
  std::optional<MicroCredits> cost_so_far;  // a running job: elapsed x resources, priced (not stored)
  bool settled = false;
  // What the scheduler allocated once the job ran (0: not reported); charged instead of what
  // was asked for (a whole node where the site allocates whole nodes; the GPU type it got).
  int alloc_nodes = 0, alloc_cpus = 0, alloc_gpus = 0;
  std::string alloc_gpu_type;
  std::vector<JobEvent> events;
  std::filesystem::path stdout_path, stderr_path;
  nlohmann::json result;  // JobStatus::result of a payload job once it has one (QPU counts)
};

// What the submit_job tool asks for, already validated against its schema and parsed.
struct SubmitRequest {
  JobSpec spec;                    // gateway_id, paths and project are filled in by submit()
  std::string site;                // "" = the first configured site
  std::string working_directory;   // relative to <jobs_root>/<project>; "" = the job's own dir
  std::vector<std::string> after_ok;  // gateway ids
  std::string request_id;
};

struct ListFilter {
  std::optional<JobState> state;
  std::string name, site;
  // Keyset paging, newest first: only jobs strictly older than (created_ms, id) of the last
  // job of the previous page, so jobs submitted meanwhile neither shift nor repeat a page.
  std::optional<std::pair<int64_t, std::string>> before;
  std::size_t limit = 50;
};

class JobService {
 public:
  using SchedulerFactory = std::function<std::unique_ptr<Scheduler>(const SiteConfig&)>;
  // Opens its own connection to `db_path` (migrated already). `factory` builds the scheduler of
  // each site (the local one, Slurm's) in start(), so that CLI commands that build the App start
  // nothing; a site it returns null for (or throws for) is unavailable, with a warning.
  JobService(const Config& config, const std::filesystem::path& db_path, Ledger& ledger, SchedulerFactory factory);
  ~JobService();

  // Loads the table and starts one poller per site on `io`.
  void start(boost::asio::io_context& io);
  // Ends the pollers and waits for queued database work; call once the I/O threads have stopped.
  void stop();

  boost::asio::awaitable<std::variant<JobRecord, Error>> submit(SubmitRequest request);
  // nullopt for a job of another project (callers answer not_found either way).
  std::optional<JobRecord> get(const std::string& project, const std::string& id) const;
  std::vector<JobRecord> list(const std::string& project, const ListFilter& filter, bool* more) const;
  boost::asio::awaitable<std::variant<JobRecord, Error>> cancel(std::string project, std::string id);

  // Prices a Usage with the ledger's rates, for get()'s cost_so_far of running jobs (the
  // composition root sets it when credits are metered). Must be thread-safe.
  void set_pricer(std::function<MicroCredits(const Usage&)> pricer) { pricer_ = std::move(pricer); }

  const std::vector<SiteConfig>& sites() const { return sites_; }
  const SiteConfig* site(const std::string& id) const;
  std::filesystem::path project_dir(const SiteConfig& site, const std::string& project) const {
    return site.jobs_root / project;
  }
  // For tests and benchmarks: how many poll() calls each site's poller made.
  uint64_t polls() const { return polls_.load(); }

  static std::string new_gateway_id();

 private:
  struct SiteRuntime {
    SiteConfig config;
    std::unique_ptr<Scheduler> scheduler;
  };
  boost::asio::awaitable<void> poller(SiteRuntime* site);
  // submit() from the hold on: hold, row, Scheduler::submit, row again. Runs detached from the
  // caller's cancellation.
  boost::asio::awaitable<std::variant<JobRecord, Error>> submit_held(SubmitRequest req, const SiteConfig* site_cfg,
                                                                     SiteRuntime* rt);
  // The scheduler's ids for jobs whose submit outcome is unknown (gateway id -> native id;
  // a job left out is not there), in one query asked up to `attempts` times (1 s, 2 s, ...
  // apart). nullopt: the scheduler could not be asked.
  boost::asio::awaitable<std::optional<std::map<std::string, std::string>>> find_submitted(
      SiteRuntime* rt, std::vector<Scheduler::Submitted> jobs, int attempts);
  // Extends the holds of `site`'s active jobs that this process has not extended for a day
  // (all of them on its first round) to walltime + 14 days from now, so that a job waiting
  // long in the queue is never left running without its hold.
  boost::asio::awaitable<void> keep_holds(SiteRuntime* site);
  boost::asio::awaitable<void> apply(JobRecord before, const JobStatus& status);
  boost::asio::awaitable<void> settle_if_final(std::string id);
  // Runs `fn` on the database thread; the caller resumes on its own executor.
  boost::asio::awaitable<void> on_db(std::function<void(state::Database&)> fn);
  void load();
  static void write_job(state::Database& db, const JobRecord& r);
  static void write_event(state::Database& db, const std::string& id, const JobEvent& e);
  static std::function<void(state::Database&)> write_op(JobRecord rec, std::optional<JobEvent> event);

  const Config& config_;
  Ledger& ledger_;
  SchedulerFactory factory_;
  std::function<MicroCredits(const Usage&)> pricer_;
  std::vector<SiteConfig> sites_;
  std::map<std::string, std::unique_ptr<SiteRuntime>> runtimes_;
  state::DbWorker db_;
  mutable std::mutex mutex_;
  std::map<std::string, JobRecord> jobs_;
  std::set<std::string> submitting_;  // gateway ids whose submit_held() is running
  // When this process last extended each active job's hold (absent: not yet). A job may wait
  // in the queue longer than the hold's first timeout; see keep_holds().
  std::map<std::string, int64_t> hold_kept_ms_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> polls_{0};
  std::optional<boost::asio::any_io_executor> executor_;
};

// "HH:MM:SS", "D-HH:MM:SS", "MM:SS", "M" (Slurm's forms, through policies' parser) -> seconds.
std::optional<std::chrono::seconds> parse_walltime_arg(const std::string& text);
// "4G", "512M", "1024" (MB), "1.5GB" -> MB (rounded up).
std::optional<int64_t> parse_memory_mb(const nlohmann::json& value);
// "[A-Za-z_][A-Za-z0-9_]*", not reserved (PATH, HOME, USER, LD_*, SCIGATE_*, BASH_*).
bool valid_env_name(const std::string& name, std::string* why);
// The credits a job may use: cpu_core_hour x cpus x h, gpu_hour:<type> x gpus x h.
Usage job_usage(const Resources& r, std::chrono::milliseconds elapsed, const std::string& gpu_type);
// What a job that ran `elapsed` is charged for: its allocation where the scheduler reported
// one, else what it asked for.
Usage allocated_usage(const JobRecord& r, std::chrono::milliseconds elapsed);
// A payload job's declared charge (JobSpec::payload "usage").
Usage payload_usage(const nlohmann::json& payload);

}  // namespace scigate::jobs
