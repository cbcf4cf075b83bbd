#include "connectors/scheduler/job_ledger.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <set>

#include <boost/asio/as_tuple.hpp>

#include "server/common/time_format.hpp"
#include "policies/rules.hpp"
#include "server/observability/log.hpp"

namespace scigate::jobs {
namespace asio = boost::asio;
using nlohmann::json;

namespace {

bool active(const JobRecord& r) { return !is_final(r.state); }

json resources_json(const Resources& r) {
  json j = json::object();
  j["nodes"] = r.nodes;
  j["tasks"] = r.tasks;
  j["cpus_per_task"] = r.cpus_per_task;
  j["gpus"] = r.gpus;
  j["gpu_type"] = r.gpu_type;
  j["memory_mb"] = r.memory_mb;
  j["walltime_s"] = r.walltime.count();
  return j;
}

Resources resources_from(const json& j) {
  Resources r;
  if (!j.is_object()) return r;
  auto num = [&](const char* k, int64_t d) { return j.contains(k) && j[k].is_number_integer() ? j[k].get<int64_t>() : d; };
  r.nodes = static_cast<int>(num("nodes", 1));
  r.tasks = static_cast<int>(num("tasks", 1));
  r.cpus_per_task = static_cast<int>(num("cpus_per_task", 1));
  r.gpus = static_cast<int>(num("gpus", 0));
  if (j.contains("gpu_type") && j["gpu_type"].is_string()) r.gpu_type = j["gpu_type"].get<std::string>();
  r.memory_mb = num("memory_mb", 0);
  r.walltime = std::chrono::seconds(num("walltime_s", 3600));
  return r;
}

json spec_json(const JobSpec& s, const std::string& working_directory) {
  json j = json::object();
  j["name"] = s.name;
  if (!s.script.empty()) j["script_bytes"] = s.script.size();
  if (!s.executable.empty()) {
    j["executable"] = s.executable;
    j["arguments"] = s.arguments;
  }
  j["resources"] = resources_json(s.resources);
  j["partition"] = s.partition;
  j["account"] = s.account;
  json env = json::array();
  for (const auto& [k, v] : s.environment) env.push_back(k);
  j["environment_names"] = std::move(env);
  j["working_directory"] = working_directory;
  j["stdout"] = s.stdout_path.string();
  j["stderr"] = s.stderr_path.string();
  if (!s.payload.is_null()) j["payload"] = s.payload;
  return j;
}

std::string text_of(const json& j, const char* k) {
  return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
}

// Log lines are built here, outside the coroutines: GCC 12 miscompiles brace-initialised json
// with string literals inside a coroutine.
void log_rejected(const std::string& job, const std::string& site, const Error& e) {
  log::info("job_rejected", {{"job", job}, {"site", site}, {"detail", e.message + " " + e.detail}});
}
void log_submitted(const JobRecord& r) {
  log::info("job_submitted", {{"job", r.id}, {"site", r.site}, {"native_id", r.native_id}, {"project", r.project},
                              {"state", std::string(to_string(r.state))}});
}
void log_cancel(const std::string& job, const std::string& native) {
  log::info("job_cancel_requested", {{"job", job}, {"native_id", native}});
}
void log_poll_failed(const std::string& site, const std::string& detail) {
  log::warn("site_poll_failed", {{"site", site}, {"detail", detail}});
}
void log_final_failed(const std::string& site, const std::string& job, const std::string& detail) {
  log::warn("site_final_status_failed", {{"site", site}, {"job", job}, {"detail", detail}});
}
void log_state(const JobRecord& r) {
  log::info("job_state", {{"job", r.id}, {"state", std::string(to_string(r.state))}, {"native_state", r.native_state},
                          {"reason", r.reason}});
}
void log_settled(const std::string& job, MicroCredits posted) { log::info("job_settled", {{"job", job}, {"cost", posted}}); }

}  // namespace

std::optional<std::chrono::seconds> parse_walltime_arg(const std::string& text) {
  auto v = policy::parse_walltime(text);
  if (!v || !std::isfinite(*v) || *v <= 0) return std::nullopt;
  return std::chrono::seconds(static_cast<int64_t>(std::ceil(*v)));
}

std::optional<int64_t> parse_memory_mb(const json& value) {
  if (value.is_number_integer()) {
    auto v = value.get<int64_t>();
    return v >= 0 ? std::optional<int64_t>(v) : std::nullopt;
  }
  if (value.is_number()) {
    double v = value.get<double>();
    return v >= 0 && std::isfinite(v) ? std::optional<int64_t>(static_cast<int64_t>(std::ceil(v))) : std::nullopt;
  }
  if (!value.is_string()) return std::nullopt;
  std::string s = value.get<std::string>();
  if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos) {
    if (s.size() > 12) return std::nullopt;
    return std::stoll(s);
  }
  auto bytes = policy::parse_bytes(s);
  if (!bytes || !std::isfinite(*bytes) || *bytes < 0) return std::nullopt;
  return static_cast<int64_t>(std::ceil(*bytes / (1024.0 * 1024.0)));
}

bool valid_env_name(const std::string& name, std::string* why) {
  auto fail = [&](std::string w) {
    if (why) *why = std::move(w);
    return false;
  };
  if (name.empty() || name.size() > 128) return fail("must be 1 to 128 characters");
  if (!(std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_'))
    return fail("must start with a letter or '_'");
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return fail("may hold only letters, digits and '_'");
  static const char* kReserved[] = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "IFS", "ENV", "BASH_ENV", "TMPDIR"};
  for (const char* r : kReserved)
    if (name == r) return fail("is set by the site and cannot be given");
  for (const char* p : {"LD_", "SCIGATE_", "BASH_", "SLURM_"})
    if (name.rfind(p, 0) == 0) return fail(std::string("may not start with ") + p);
  return true;
}

Usage payload_usage(const json& payload) {
  Usage u;
  auto it = payload.is_object() ? payload.find("usage") : payload.end();
  if (it == payload.end() || !it->is_array()) return u;
  for (const auto& line : *it)
    if (line.is_object() && line.contains("resource") && line.contains("quantity"))
      u.add(line["resource"].get<std::string>(), line["quantity"].get<double>(), line.value("how", std::string()));
  return u;
}

Usage job_usage(const Resources& r, std::chrono::milliseconds elapsed, const std::string& gpu_type) {
  Usage u;
  double hours = static_cast<double>(elapsed.count()) / 3'600'000.0;
  if (hours <= 0) return u;
  int cpus = std::max(1, r.cpus());
  u.add("cpu_core_hour", cpus * hours, std::to_string(cpus) + " CPU x " + std::to_string(hours) + " h");
  if (r.gpus > 0) {
    int gpus = r.gpus * std::max(1, r.nodes);
    std::string type = gpu_type.empty() ? r.gpu_type : gpu_type;
    u.add(type.empty() ? "gpu_hour" : "gpu_hour:" + type, gpus * hours,
          std::to_string(gpus) + " GPU x " + std::to_string(hours) + " h");
  }
  return u;
}

Usage allocated_usage(const JobRecord& r, std::chrono::milliseconds elapsed) {
  Resources used = r.resources;
  std::string type = r.resources.gpu_type;
  if (r.alloc_cpus > 0) {
    used.tasks = r.alloc_cpus;
    used.cpus_per_task = 1;
  }
  if (r.alloc_gpus > 0) {  // a total over the job's nodes
    used.gpus = r.alloc_gpus;
    used.nodes = 1;
    if (!r.alloc_gpu_type.empty()) type = r.alloc_gpu_type;
  }
  return job_usage(used, elapsed, type);
}

namespace {
std::string alloc_text(const JobRecord& r) {
  json a = json::object();
  a["nodes"] = r.alloc_nodes;
  a["cpus"] = r.alloc_cpus;
  a["gpus"] = r.alloc_gpus;
  if (!r.alloc_gpu_type.empty()) a["gpu_type"] = r.alloc_gpu_type;
  return a.dump();
}

void read_alloc(const std::string& text, JobRecord& r) {
  json a = json::parse(text, nullptr, false);
  if (!a.is_object()) return;
  auto num = [&](const char* k) { return a.contains(k) && a[k].is_number_integer() ? a[k].get<int>() : 0; };
  r.alloc_nodes = num("nodes");
  r.alloc_cpus = num("cpus");
  r.alloc_gpus = num("gpus");
  if (a.contains("gpu_type") && a["gpu_type"].is_string()) r.alloc_gpu_type = a["gpu_type"].get<std::string>();
}
}  // namespace

// How long a job whose submit outcome is unknown is looked for before it counts as never
// submitted: well past sbatch's timeout and slurmctld's MessageTimeout.
constexpr int64_t kLostAfterMs = 10 * 60'000;

// A job's hold lasts its walltime plus this much queue time, extended daily while the job is
// active (keep_holds): only a hold whose job the ledger stopped following times out.
constexpr std::chrono::hours kHoldQueueTime{24 * 14};
constexpr int64_t kHoldKeptEveryMs = 24 * 3'600'000;
constexpr std::size_t kHoldsKeptPerRound = 256;

static std::chrono::seconds job_hold_timeout(const Resources& r) {
  return std::chrono::duration_cast<std::chrono::seconds>(r.walltime) + kHoldQueueTime;
}

// The ledger's view of a job's own hold.
static Hold hold_of(const JobRecord& r) {
  Hold h;
  h.id = r.hold_id;
  h.amount = r.held;
  h.project = r.project;
  return h;
}

static std::string submitted_name(const std::string& name, const std::string& gateway_id) {
  return name.empty() ? gateway_id : name;  // as the Slurm connectors name the job
}

namespace {

// Slurm's clock and ours may differ; Slurm's submit time of our job is before the ledger's
// (taken when submit() returned).
constexpr int64_t kClockSlackMs = 60'000;

// Whether a poll answer under this job's native id is another job's: Slurm reuses ids once
// slurmctld has lost its state. A comment that differs proves nothing alone (the job's owner
// may change it with scontrol; a site's job_submit plugin may rewrite it): only a job
// submitted well after ours whose comment is not ours is another job.
bool reused_id(const JobStatus& s, const JobRecord& r) {
  return !s.comment.empty() && s.comment != r.id && s.submit_ms && r.submit_ms &&
         *s.submit_ms > *r.submit_ms + kClockSlackMs;
}

// How a final record under this job's native id relates to the job. Slurm's completion log
// (sacct -c) keeps every job that ever had an id, and reports a name but neither a comment nor
// a submit time (its Submit column is the start).
enum class Kin { kOurs, kMaybe, kOlder, kOther };
Kin kin_of(const JobStatus& s, const JobRecord& r) {
  // Our gateway id in its comment (slurmctld's own record has one): ours, whenever it ran.
  if (!s.comment.empty() && s.comment == r.id) return Kin::kOurs;
  // Ours was seen running, and a job runs once (submitted with --no-requeue): the one that
  // started then is ours, whatever its name. A minute's leeway: the start the ledger knows may
  // be its own clock's (a status without one).
  const bool seen_start = s.start_ms && r.start_ms;
  if (seen_start && std::llabs(*s.start_ms - *r.start_ms) <= kClockSlackMs) return Kin::kOurs;
  // Ended before ours was recorded (created_ms: before the submit, even for a job adopted
  // later): a job that had the id before ours.
  if (s.end_ms && *s.end_ms < r.created_ms - kClockSlackMs) return Kin::kOlder;
  // Started at another time than ours was seen to: a job that took the id after ours.
  if (seen_start) return Kin::kOther;
  // slurmctld's own record has the comment: the rule of a poll answer.
  if (!s.comment.empty()) return reused_id(s, r) ? Kin::kOther : Kin::kMaybe;
  // The completion log has the name only.
  return !s.name.empty() && s.name != submitted_name(r.name, r.id) ? Kin::kOther : Kin::kMaybe;
}

// Of the final records a scheduler keeps under the job's native id (oldest first), the one
// that is this job's end: one that started when ours was seen running, or else the first of
// our name after ours was submitted (a later one of the same name took the id after ours
// ended). `other` is set to a record of another job when there is no such record.
const JobStatus* own_final_record(const std::vector<JobStatus>& records, const JobRecord& r, const JobStatus** other) {
  const JobStatus* maybe = nullptr;
  *other = nullptr;
  for (const auto& s : records) {
    if (!is_final(s.state)) continue;
    switch (kin_of(s, r)) {
      case Kin::kOurs: return &s;
      case Kin::kMaybe: if (!maybe) maybe = &s; break;
      case Kin::kOther: if (!*other) *other = &s; break;
      case Kin::kOlder: break;
    }
  }
  if (maybe) *other = nullptr;
  return maybe;
}

JobStatus lost_status(const std::string& native_id, std::string reason) {
  JobStatus lost;
  lost.native_id = native_id;
  lost.state = JobState::kFailed;
  lost.native_state = "lost";
  lost.reason = std::move(reason);
  lost.end_ms = unix_now_ms();
  return lost;
}

std::string taken_by_another(const JobStatus& s, const JobRecord& r) {
  std::string who = !s.comment.empty()                            ? "comment \"" + s.comment.substr(0, 64) + "\""
                    : s.name.empty() || s.name == submitted_name(r.name, r.id) ? std::string("started at another time")
                                                                  : "name \"" + s.name.substr(0, 64) + "\"";
  return "the scheduler's job " + s.native_id + " is now another job (" + who + "): the scheduler lost this one";
}

}  // namespace

asio::awaitable<std::optional<std::map<std::string, std::string>>> JobService::find_submitted(
    SiteRuntime* rt, std::vector<Scheduler::Submitted> jobs, int attempts) {
  asio::steady_timer pause(co_await asio::this_coro::executor);
  for (int i = 0; i < attempts; ++i) {
    if (i > 0) {
      pause.expires_after(std::chrono::seconds(1 << (i - 1)));
      co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    std::string failure;
    try {
      co_return co_await rt->scheduler->find_submitted(jobs);
    } catch (const ErrorException& e) {
      failure = e.error().message;
    } catch (const std::exception& e) {
      failure = e.what();
    }
    log::warn("job_lookup_failed", {{"job", jobs.size() == 1 ? jobs.front().gateway_id : std::to_string(jobs.size()) + " jobs"},
                                    {"detail", failure}});
  }
  co_return std::nullopt;
}

std::string JobService::new_gateway_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  uint64_t v = rng();
  std::string id = "j-";
  for (int i = 0; i < 12; ++i) id += kHex[(v >> (i * 4)) & 0xf];
  return id;
}

JobService::JobService(const Config& config, const std::filesystem::path& db_path, Ledger& ledger,
                       SchedulerFactory factory)
    : config_(config), ledger_(ledger), factory_(std::move(factory)), sites_(config.sites), db_(db_path) {}

JobService::~JobService() {
  stop();
  db_.join();
}

const SiteConfig* JobService::site(const std::string& id) const {
  for (const auto& s : sites_)
    if (s.id == id) return &s;
  return nullptr;
}

void JobService::stop() {
  stop_ = true;
  // The pool's completions are posted to the callers' executors: they must all have been
  // posted before the server destroys its io_context (App::drain_writers). Joining twice (here
  // and in the destructor) is harmless.
  db_.join();
  // The schedulers go too, while the io_context still exists: their threads (the local runner,
  // the HTTP client of a remote site) post completions to its executors, and anything still in
  // flight is completed (as cancelled) into the stopped context rather than into a dead one.
  runtimes_.clear();
}

void JobService::load() {
  auto lk = db_.db().lock();
  state::Statement st(db_.db().handle(),
                      "SELECT id, site, native_id, project, principal, name, spec, state, native_state, reason, "
                      "exit_code, term_signal, created_ms, submit_ms, start_ms, end_ms, hold_id, held, cost, settled, "
                      "result, alloc FROM jobs WHERE state IN ('NEW','QUEUED','ACTIVE') OR settled = 0 OR created_ms > ?");
  // Final, settled jobs older than a week stay in the table but not in memory.
  st.bind(1, unix_now_ms() - int64_t(7) * 86'400'000);
  std::lock_guard g(mutex_);
  while (st.step()) {
    JobRecord r;
    r.id = st.column_text(0);
    r.site = st.column_text(1);
    r.native_id = st.column_text(2);
    r.project = st.column_text(3);
    r.principal = st.column_text(4);
    r.name = st.column_text(5);
    r.spec = json::parse(st.column_text(6), nullptr, false);
    if (r.spec.is_discarded()) r.spec = json::object();
    r.resources = resources_from(r.spec.is_object() && r.spec.contains("resources") ? r.spec["resources"] : json());
    r.state = parse_job_state(st.column_text(7)).value_or(JobState::kFailed);
    r.native_state = st.column_text(8);
    r.reason = st.column_text(9);
    if (!st.column_is_null(10)) r.exit_code = static_cast<int>(st.column_int(10));
    if (!st.column_is_null(11)) r.term_signal = static_cast<int>(st.column_int(11));
    r.created_ms = st.column_int(12);
    if (!st.column_is_null(13)) r.submit_ms = st.column_int(13);
    if (!st.column_is_null(14)) r.start_ms = st.column_int(14);
    if (!st.column_is_null(15)) r.end_ms = st.column_int(15);
    r.hold_id = st.column_text(16);
    r.held = st.column_int(17);
    if (!st.column_is_null(18)) r.cost = st.column_int(18);
    r.settled = st.column_int(19) != 0;
    if (!st.column_is_null(20)) r.result = json::parse(st.column_text(20), nullptr, false);
    if (r.result.is_discarded()) r.result = nullptr;
    if (!st.column_is_null(21)) read_alloc(st.column_text(21), r);
    r.stdout_path = text_of(r.spec, "stdout");
    r.stderr_path = text_of(r.spec, "stderr");
    jobs_.emplace(r.id, std::move(r));
  }
  state::Statement ev(db_.db().handle(),
                      "SELECT job_id, time_ms, state, native_state, reason FROM job_events WHERE job_id IN "
                      "(SELECT id FROM jobs WHERE state IN ('NEW','QUEUED','ACTIVE') OR settled = 0 OR created_ms > ?) "
                      "ORDER BY seq");
  ev.bind(1, unix_now_ms() - int64_t(7) * 86'400'000);
  while (ev.step()) {
    auto it = jobs_.find(ev.column_text(0));
    if (it == jobs_.end()) continue;
    it->second.events.push_back(JobEvent{ev.column_int(1), parse_job_state(ev.column_text(2)).value_or(JobState::kNew),
                                         ev.column_text(3), ev.column_text(4)});
  }
}

void JobService::start(asio::io_context& io) {
  for (const auto& s : sites_) {
    auto rt = std::make_unique<SiteRuntime>();
    rt->config = s;
    try {
      rt->scheduler = factory_(s);
    } catch (const std::exception& e) {
      log::error("site_unavailable", {{"site", s.id}, {"detail", e.what()}});
      continue;
    }
    if (!rt->scheduler) {
      log::warn("site_unavailable", {{"site", s.id}, {"detail", "no scheduler for \"" + s.scheduler + "\" in this build"}});
      continue;
    }
    runtimes_.emplace(s.id, std::move(rt));
  }
  load();
  executor_ = io.get_executor();
  for (auto& [id, rt] : runtimes_) asio::co_spawn(io, poller(rt.get()), asio::detached);
  std::size_t n_active = 0;
  {
    std::lock_guard g(mutex_);
    for (const auto& [id, r] : jobs_) n_active += active(r) ? 1 : 0;
  }
  log::info("jobs_started", {{"sites", runtimes_.size()}, {"active_jobs", n_active}});
}

asio::awaitable<void> JobService::on_db(std::function<void(state::Database&)> fn) { return db_.run(std::move(fn)); }

void JobService::write_job(state::Database& db, const JobRecord& r) {
  state::Statement st(db.handle(),
                      "INSERT OR REPLACE INTO jobs(id, site, native_id, project, principal, name, spec, state, "
                      "native_state, reason, exit_code, term_signal, created_ms, submit_ms, start_ms, end_ms, hold_id, "
                      "held, cost, settled, result, alloc) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  st.bind(1, r.id).bind(2, r.site).bind(3, r.native_id).bind(4, r.project).bind(5, r.principal).bind(6, r.name);
  st.bind(7, r.spec.dump()).bind(8, to_string(r.state)).bind(9, r.native_state).bind(10, r.reason);
  auto opt = [&](int i, const auto& v) {
    if (v) st.bind(i, static_cast<int64_t>(*v));
    else st.bind_null(i);
  };
  opt(11, r.exit_code);
  opt(12, r.term_signal);
  st.bind(13, r.created_ms);
  opt(14, r.submit_ms);
  opt(15, r.start_ms);
  opt(16, r.end_ms);
  st.bind(17, r.hold_id).bind(18, r.held);
  opt(19, r.cost);
  st.bind(20, int64_t(r.settled ? 1 : 0));
  if (r.result.is_null()) st.bind_null(21);
  else st.bind(21, r.result.dump());
  if (r.alloc_cpus > 0 || r.alloc_gpus > 0) st.bind(22, alloc_text(r));
  else st.bind_null(22);
  st.step();
}

void JobService::write_event(state::Database& db, const std::string& id, const JobEvent& e) {
  state::Statement st(db.handle(),
                      "INSERT INTO job_events(job_id, time_ms, state, native_state, reason) VALUES (?,?,?,?,?)");
  st.bind(1, id).bind(2, e.time_ms).bind(3, to_string(e.state)).bind(4, e.native_state).bind(5, e.reason);
  st.step();
}

std::function<void(state::Database&)> JobService::write_op(JobRecord rec, std::optional<JobEvent> event) {
  // Built outside the coroutines: GCC 12 destroyed a lambda temporary created inside a
  // co_await expression twice (free(): invalid pointer).
  return [rec = std::move(rec), event = std::move(event)](state::Database& db) {
    db.exec("BEGIN IMMEDIATE");
    try {
      write_job(db, rec);
      if (event) write_event(db, rec.id, *event);
      db.exec("COMMIT");
    } catch (...) {
      db.exec("ROLLBACK");
      throw;
    }
  };
}

asio::awaitable<std::variant<JobRecord, Error>> JobService::submit(SubmitRequest req) {
  const SiteConfig* site_cfg = req.site.empty() ? (sites_.empty() ? nullptr : &sites_.front()) : site(req.site);
  if (!site_cfg) {
    std::string known;
    for (const auto& s : sites_) known += (known.empty() ? "" : ", ") + s.id;
    co_return Error::invalid_arguments("unknown site \"" + req.site + "\"", "use one of: " + known);
  }
  auto rt_it = runtimes_.find(site_cfg->id);
  if (rt_it == runtimes_.end())
    co_return Error{ErrorCode::kBackendUnavailable, "site \"" + site_cfg->id + "\" is unavailable", "try another site", {}};
  SiteRuntime* rt = rt_it->second.get();
  JobSpec& spec = req.spec;
  if (rt->scheduler->runs_payloads() && spec.payload.is_null())
    co_return Error::invalid_arguments("site \"" + site_cfg->id + "\" is a quantum device; it runs circuits, not scripts",
                                       "use run_quantum_circuit with backend \"" + site_cfg->id + "\"");
  if (!rt->scheduler->runs_payloads() && !spec.payload.is_null())
    co_return Error::invalid_arguments("site \"" + site_cfg->id + "\" runs batch scripts, not circuits",
                                       "name a quantum device as the backend");
  if (spec.partition.empty()) spec.partition = site_cfg->default_partition;
  if (!site_cfg->partitions.empty() && !spec.partition.empty() &&
      std::find(site_cfg->partitions.begin(), site_cfg->partitions.end(), spec.partition) == site_cfg->partitions.end()) {
    std::string known;
    for (const auto& p : site_cfg->partitions) known += (known.empty() ? "" : ", ") + p;
    co_return Error::invalid_arguments("partition \"" + spec.partition + "\" is not offered by site " + site_cfg->id,
                                       "use one of: " + known);
  }
  // after_ok: gateway ids of this project's jobs on the same site.
  for (const auto& dep : req.after_ok) {
    auto r = get(spec.project, dep);
    if (!r) co_return Error{ErrorCode::kNotFound, "after_ok names job " + dep + ", which does not exist", {}, {}};
    if (r->site != site_cfg->id)
      co_return Error::invalid_arguments("after_ok job " + dep + " runs on site " + r->site + ", not " + site_cfg->id);
    if (r->native_id.empty())
      co_return Error::invalid_arguments("after_ok job " + dep + " never reached the scheduler");
    spec.after_ok.push_back(r->native_id);
  }
  spec.gateway_id = new_gateway_id();
  auto area = project_dir(*site_cfg, spec.project);
  spec.jobs_root = site_cfg->jobs_root;
  spec.working_directory = req.working_directory.empty() ? area / spec.gateway_id : area / req.working_directory;
  spec.stdout_path = area / spec.gateway_id / "stdout";
  spec.stderr_path = area / spec.gateway_id / "stderr";
  if (spec.run_as.empty()) spec.run_as = site_cfg->run_as;

  // From the hold on, the submission runs to its end whatever happens to the caller: a submit
  // cut short by a client's cancel or the call's deadline cannot tell whether the scheduler
  // took the job, and treating it as refused would let the job run untracked and free. So it
  // runs as a coroutine of its own that no caller's cancellation reaches; the caller waits at
  // most the scheduler's own timeouts (sbatch, the REST client) longer.
  auto executor = co_await asio::this_coro::executor;
  auto held = submit_held(std::move(req), site_cfg, rt);
  auto detached_from_caller = asio::bind_cancellation_slot(asio::cancellation_slot(), asio::use_awaitable);
  co_return co_await asio::co_spawn(executor, std::move(held), detached_from_caller);
}

asio::awaitable<std::variant<JobRecord, Error>> JobService::submit_held(SubmitRequest req, const SiteConfig* site_cfg,
                                                                       SiteRuntime* rt) {
  JobSpec& spec = req.spec;
  JobRecord rec;
  rec.id = spec.gateway_id;
  rec.site = site_cfg->id;
  rec.project = spec.project;
  rec.principal = spec.principal;
  rec.name = spec.name;
  rec.spec = spec_json(spec, req.working_directory);
  rec.resources = spec.resources;
  rec.created_ms = unix_now_ms();
  rec.stdout_path = spec.stdout_path;
  rec.stderr_path = spec.stderr_path;

  // The job's own hold: resources x walltime, detached from this call.
  HoldRequest hr;
  hr.project = spec.project;
  hr.principal = spec.principal;
  hr.tool = "job";
  hr.request_id = req.request_id;
  hr.worst_case = spec.payload.is_null()
                      ? job_usage(spec.resources, std::chrono::duration_cast<std::chrono::milliseconds>(spec.resources.walltime),
                                  spec.resources.gpu_type)
                      : payload_usage(spec.payload);
  hr.owner = "job:" + rec.id;
  hr.timeout = job_hold_timeout(spec.resources);  // queue time included
  auto reserved = co_await ledger_.reserve(std::move(hr));
  if (reserved.error) co_return *reserved.error;
  rec.hold_id = reserved.hold.id;
  rec.held = reserved.hold.amount;
  rec.events.push_back(JobEvent{rec.created_ms, JobState::kNew, "", ""});
  {
    std::lock_guard g(mutex_);
    jobs_.emplace(rec.id, rec);
    submitting_.insert(rec.id);  // the poller leaves a NEW job alone while its submit runs
    hold_kept_ms_[rec.id] = rec.created_ms;  // just made with the whole timeout
  }
  struct Submitting {
    JobService& s;
    std::string id;
    ~Submitting() {
      std::lock_guard g(s.mutex_);
      s.submitting_.erase(id);
    }
  } submitting{*this, rec.id};
  {
    auto op = write_op(rec, rec.events.back());
    co_await on_db(std::move(op));
  }

  std::optional<Error> refused;
  std::string native_id;
  bool outcome_unknown = false;
  try {
    native_id = co_await rt->scheduler->submit(spec);
  } catch (const SubmitOutcomeUnknown& e) {
    refused = e.error();
    outcome_unknown = true;
  } catch (const ErrorException& e) {
    refused = e.error();
  } catch (const std::exception& e) {
    // A connector bug or an OS failure: the job must not stay NEW with its credits held.
    refused = Error{ErrorCode::kBackendUnavailable, "site \"" + rec.site + "\" could not take the job", "retry later",
                    e.what()};
  }
  // A lost answer (a timeout after sending, a cut connection, an unexpected answer) is not a
  // refusal: the scheduler may have taken the job. Ask for it by its comment.
  // Not found yet is not proof either: slurmctld may still be working on the request when
  // squeue answers. Unless found, the job stays NEW and held, and the poller keeps asking
  // (kLostAfter) before it calls the job lost.
  bool unconfirmed = false;
  if (refused && outcome_unknown) {
    std::vector<Scheduler::Submitted> asked{{rec.id, submitted_name(spec.name, rec.id)}};
    auto found = co_await find_submitted(rt, std::move(asked), 3);
    if (found && found->count(rec.id)) {
      native_id = found->at(rec.id);
      log::warn("job_submit_recovered", {{"job", rec.id}, {"native_id", native_id}, {"detail", refused->message}});
      refused.reset();
    } else {
      unconfirmed = true;
    }
  }
  if (unconfirmed) {
    log::error("job_submit_unconfirmed", {{"job", rec.id}, {"site", rec.site}, {"detail", refused->message}});
    co_return Error{ErrorCode::kBackendUnavailable,
                    "site \"" + rec.site + "\" did not confirm job " + rec.id + " (" + refused->message +
                        "); it may have been taken",
                    "do not submit again yet: get_job " + rec.id +
                        " shows within a few minutes whether the site has it (QUEUED/ACTIVE) or not (FAILED, "
                        "nothing charged)",
                    refused->detail};
  }
  if (refused) {
    Hold h = hold_of(rec);
    co_await ledger_.release(h);
    rec.state = JobState::kFailed;
    rec.native_state = "rejected";
    rec.reason = refused->message;
    rec.end_ms = unix_now_ms();
    rec.settled = true;
    rec.cost = 0;
    rec.events.push_back(JobEvent{*rec.end_ms, rec.state, rec.native_state, rec.reason});
    log_rejected(rec.id, rec.site, *refused);
  } else {
    rec.native_id = native_id;
    rec.state = JobState::kQueued;
    rec.native_state = "submitted";
    rec.submit_ms = unix_now_ms();
    rec.events.push_back(JobEvent{*rec.submit_ms, rec.state, "", ""});
  }
  {
    std::lock_guard g(mutex_);
    auto& m = jobs_[rec.id];
    // The poller leaves a job alone while it is being submitted (submitting_); the merge keeps
    // whatever else changed meanwhile.
    if (refused) hold_kept_ms_.erase(rec.id);  // released: nothing left to keep
    if (!refused && m.state != JobState::kNew) {
      m.native_id = rec.native_id;
      m.submit_ms = rec.submit_ms;
      rec = m;
    } else {
      m = rec;
    }
  }
  {
    auto op = write_op(rec, rec.events.back());
    co_await on_db(std::move(op));
  }
  log_submitted(rec);
  if (refused) co_return *refused;
  co_return rec;
}

std::optional<JobRecord> JobService::get(const std::string& project, const std::string& id) const {
  std::optional<JobRecord> r;
  {
    std::lock_guard g(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.project != project) return std::nullopt;
    r = it->second;
  }
  if (pricer_ && r->state == JobState::kActive && r->start_ms && !r->hold_id.empty() && !r->spec.contains("payload")) {
    auto elapsed = std::chrono::milliseconds(std::max<int64_t>(0, unix_now_ms() - *r->start_ms));
    elapsed = std::min(elapsed, std::chrono::duration_cast<std::chrono::milliseconds>(r->resources.walltime));
    r->cost_so_far = std::min(r->held, pricer_(allocated_usage(*r, elapsed)));
  }
  return r;
}

std::vector<JobRecord> JobService::list(const std::string& project, const ListFilter& f, bool* more) const {
  std::vector<const JobRecord*> hits;
  std::lock_guard g(mutex_);
  for (const auto& [id, r] : jobs_) {
    if (r.project != project) continue;
    if (f.state && r.state != *f.state) continue;
    if (!f.name.empty() && r.name.find(f.name) == std::string::npos) continue;
    if (!f.site.empty() && r.site != f.site) continue;
    if (f.before && std::make_pair(r.created_ms, r.id) >= *f.before) continue;
    hits.push_back(&r);
  }
  std::sort(hits.begin(), hits.end(), [](const JobRecord* a, const JobRecord* b) {
    return a->created_ms != b->created_ms ? a->created_ms > b->created_ms : a->id > b->id;
  });
  std::vector<JobRecord> out;
  for (std::size_t i = 0; i < hits.size() && out.size() < f.limit; ++i) out.push_back(*hits[i]);
  if (more) *more = out.size() < hits.size();
  return out;
}

asio::awaitable<std::variant<JobRecord, Error>> JobService::cancel(std::string project, std::string id) {
  auto r = get(project, id);
  if (!r) co_return Error{ErrorCode::kNotFound, "no job " + id + " in project " + project, {}, {}};
  if (is_final(r->state) || r->native_id.empty()) co_return *r;
  auto rt = runtimes_.find(r->site);
  if (rt == runtimes_.end())
    co_return Error{ErrorCode::kBackendUnavailable, "site \"" + r->site + "\" is unavailable", {}, {}};
  try {
    co_await rt->second->scheduler->cancel(r->native_id);
  } catch (const ErrorException& e) {
    co_return e.error();
  }
  log_cancel(id, r->native_id);
  co_return *r;
}

asio::awaitable<void> JobService::keep_holds(SiteRuntime* site) {
  const int64_t now = unix_now_ms();
  struct Due {
    std::string job;
    Hold hold;
    std::chrono::seconds timeout;
  };
  std::vector<Due> due;
  {
    std::lock_guard g(mutex_);
    for (const auto& [id, r] : jobs_) {
      if (r.site != site->config.id || !active(r) || r.hold_id.empty()) continue;
      auto kept = hold_kept_ms_.find(id);
      if (kept != hold_kept_ms_.end() && now - kept->second < kHoldKeptEveryMs) continue;
      due.push_back(Due{id, hold_of(r), job_hold_timeout(r.resources)});
    }
  }
  // One writer round trip each: a bounded number per round, so that after a restart with many
  // active jobs the poll itself is not held up (the rest are days from their timeouts).
  if (due.size() > kHoldsKeptPerRound) due.resize(kHoldsKeptPerRound);
  for (const auto& d : due) {
    bool open = false;
    try {
      open = co_await ledger_.extend(d.hold, d.timeout);
    } catch (const std::exception& e) {
      log::warn("job_hold_extend_failed", {{"job", d.job}, {"hold", d.hold.id}, {"detail", e.what()}});
      continue;  // asked again next round
    }
    // Voided under a job still followed (the server was down past the hold's timeout): the
    // job runs unpaid. Reported once a day while it lasts, not every round.
    if (!open) log::error("job_hold_lost", {{"job", d.job}, {"hold", d.hold.id}, {"project", d.hold.project}});
    std::lock_guard g(mutex_);
    if (auto it = jobs_.find(d.job); it != jobs_.end() && active(it->second)) hold_kept_ms_[d.job] = now;
  }
}

asio::awaitable<void> JobService::poller(SiteRuntime* site) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex);
  std::map<std::string, int> missing;  // native id -> polls it was absent without a final status
  while (!stop_) {
    co_await keep_holds(site);
    std::vector<std::string> ids;
    std::vector<std::string> unsettled;
    std::map<std::string, JobRecord> by_native;
    std::vector<Scheduler::Submitted> unsent;  // their submit's outcome is unknown (a crash, a lost answer)
    {
      std::lock_guard g(mutex_);
      for (const auto& [id, r] : jobs_) {
        if (r.site != site->config.id) continue;
        if (active(r) && !r.native_id.empty()) {
          ids.push_back(r.native_id);
          by_native.emplace(r.native_id, r);
        } else if (active(r) && r.state == JobState::kNew && r.native_id.empty() && !submitting_.count(id) &&
                   unix_now_ms() - r.created_ms > 60'000) {
          unsettled.push_back(id);
          unsent.push_back({id, submitted_name(r.name, id)});
        } else if (is_final(r.state) && !r.settled) {
          unsettled.push_back(id);
        }
      }
    }
    // The unsent jobs may be at the scheduler: one lookup for all of them. Not reachable: ask
    // again at the next poll.
    std::optional<std::map<std::string, std::string>> found;
    if (!unsent.empty()) found = co_await find_submitted(site, unsent, 1);
    for (const auto& id : unsettled) {
      std::optional<JobRecord> r;
      std::optional<JobRecord> unsent_rec;
      {
        std::lock_guard g(mutex_);
        auto it = jobs_.find(id);
        if (it != jobs_.end() && it->second.state == JobState::kNew) unsent_rec = it->second;
      }
      if (unsent_rec) {
        if (!found) continue;  // the site cannot be asked: next round
        auto native = found->find(id);
        // Not there: only after kLostAfter of asking is it taken as never submitted.
        if (native == found->end() && unix_now_ms() - unsent_rec->created_ms < kLostAfterMs) continue;
        if (native != found->end()) {
          std::optional<JobRecord> adopted;
          {
            std::lock_guard g(mutex_);
            auto it = jobs_.find(id);
            if (it != jobs_.end() && it->second.state == JobState::kNew && it->second.native_id.empty()) {
              it->second.native_id = native->second;
              it->second.state = JobState::kQueued;
              it->second.native_state = "submitted";
              it->second.submit_ms = unix_now_ms();
              it->second.events.push_back(JobEvent{*it->second.submit_ms, JobState::kQueued, "", ""});
              adopted = it->second;
            }
          }
          if (adopted) {
            log::warn("job_submit_recovered", {{"job", id}, {"native_id", adopted->native_id}});
            auto op = write_op(*adopted, adopted->events.back());
            co_await on_db(std::move(op));
          }
          continue;
        }
      }
      {
        std::lock_guard g(mutex_);
        auto it = jobs_.find(id);
        if (it != jobs_.end() && it->second.state == JobState::kNew) {
          it->second.state = JobState::kFailed;
          it->second.native_state = "lost";
          it->second.reason = "the job never reached the scheduler (scigate stopped during the submit, or the site "
                              "lost it); nothing was charged";
          it->second.end_ms = unix_now_ms();
          it->second.events.push_back(JobEvent{*it->second.end_ms, JobState::kFailed, "lost", it->second.reason});
          r = it->second;
        }
      }
      if (r) {
        auto ev = r->events.back();
        auto op = write_op(*r, ev);
        co_await on_db(std::move(op));
      }
      co_await settle_if_final(id);
    }
    if (!ids.empty()) {
      std::vector<JobStatus> statuses;
      bool ok = true;
      polls_.fetch_add(1);
      try {
        statuses = co_await site->scheduler->poll(ids);
      } catch (const ErrorException& e) {
        ok = false;
        log_poll_failed(site->config.id, e.error().message + " " + e.error().detail);
      } catch (const std::exception& e) {
        ok = false;
        log_poll_failed(site->config.id, e.what());
      }
      if (ok) {
        std::set<std::string> seen;
        for (const auto& s : statuses) {
          auto it = by_native.find(s.native_id);
          if (it == by_native.end()) continue;
          seen.insert(s.native_id);
          missing.erase(s.native_id);
          if (reused_id(s, it->second)) {
            // Ours is gone, and this status is another job's.
            co_await apply(it->second, lost_status(s.native_id, taken_by_another(s, it->second)));
            continue;
          }
          if (!s.comment.empty() && s.comment != it->second.id)
            log::warn("job_comment_changed", {{"job", it->second.id}, {"native_id", s.native_id},
                                              {"comment", s.comment.substr(0, 64)}});
          co_await apply(it->second, s);
        }
        for (const auto& [native, rec] : by_native) {
          if (seen.count(native)) continue;
          std::vector<JobStatus> records;
          try {
            records = co_await site->scheduler->final_status(native);
          } catch (const std::exception& e) {
            log_final_failed(site->config.id, rec.id, e.what());
            continue;
          }
          const JobStatus* other = nullptr;
          if (const JobStatus* fin = own_final_record(records, rec, &other)) {
            missing.erase(native);
            co_await apply(rec, *fin);
          } else if (other) {
            // Another job ended under the id since ours was submitted, and ours did not: ours
            // was lost with slurmctld's state.
            missing.erase(native);
            co_await apply(rec, lost_status(native, taken_by_another(*other, rec)));
          } else if (++missing[native] >= 5) {
            missing.erase(native);
            co_await apply(rec, lost_status(native, "the scheduler no longer knows the job and has no record of its end"));
          }
        }
      }
    }
    timer.expires_after(site->config.poll_interval);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) break;
  }
}

asio::awaitable<void> JobService::apply(JobRecord before, const JobStatus& s) {
  std::optional<JobRecord> after;
  std::optional<JobEvent> event;
  {
    std::lock_guard g(mutex_);
    auto it = jobs_.find(before.id);
    if (it == jobs_.end() || is_final(it->second.state)) co_return;
    JobRecord& r = it->second;
    JobRecord old = r;
    // States only go forward (NEW, QUEUED, ACTIVE, final). A scheduler's NEW is a state scigate
    // does not know (a later Slurm's word), and QUEUED after ACTIVE a requeue the job was
    // submitted not to do: the job keeps what was known, and the native word is recorded.
    auto rank = [](JobState st) { return st == JobState::kNew ? 0 : st == JobState::kQueued ? 1 : st == JobState::kActive ? 2 : 3; };
    JobState next = s.state;
    if (rank(next) < rank(r.state)) next = r.state;
    if (s.state == JobState::kNew && s.native_state != r.native_state)
      log::warn("job_state_unknown", {{"job", r.id}, {"native_state", s.native_state.substr(0, 64)},
                                      {"kept", std::string(to_string(next))}});
    r.state = next;
    r.native_state = s.native_state;
    r.reason = s.reason;
    if (s.exit_code) r.exit_code = s.exit_code;
    if (s.term_signal) r.term_signal = s.term_signal;
    if (s.start_ms) r.start_ms = s.start_ms;
    if (s.end_ms) r.end_ms = s.end_ms;
    if (!s.result.is_null()) r.result = s.result;
    if (is_final(r.state) && !r.end_ms) r.end_ms = unix_now_ms();
    if (r.state == JobState::kActive && !r.start_ms) r.start_ms = unix_now_ms();
    // The allocation, once the job holds one (a pending job's figures are what it asked for).
    if ((s.state == JobState::kActive || is_final(s.state)) && s.alloc_cpus > 0) {
      r.alloc_nodes = s.alloc_nodes;
      r.alloc_cpus = s.alloc_cpus;
    }
    if ((s.state == JobState::kActive || is_final(s.state)) && s.alloc_gpus > 0) {
      r.alloc_gpus = s.alloc_gpus;
      if (!s.gpu_type.empty()) r.alloc_gpu_type = s.gpu_type;
    }
    if (r.state != old.state) {
      event = JobEvent{unix_now_ms(), r.state, r.native_state, r.reason};
      r.events.push_back(*event);
    }
    if (r.state != old.state || r.native_state != old.native_state || r.reason != old.reason ||
        r.exit_code != old.exit_code || r.start_ms != old.start_ms || r.end_ms != old.end_ms || r.result != old.result ||
        r.alloc_nodes != old.alloc_nodes || r.alloc_cpus != old.alloc_cpus || r.alloc_gpus != old.alloc_gpus || r.alloc_gpu_type != old.alloc_gpu_type)
      after = r;
  }
  if (!after) co_return;
  {
    auto op = write_op(*after, event);
    co_await on_db(std::move(op));
  }
  if (event) log_state(*after);
  if (is_final(after->state)) co_await settle_if_final(after->id);
}

asio::awaitable<void> JobService::settle_if_final(std::string id) {
  std::optional<JobRecord> r;
  {
    std::lock_guard g(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || !is_final(it->second.state) || it->second.settled) co_return;
    r = it->second;
  }
  MicroCredits posted = 0;
  if (!r->hold_id.empty()) {
    std::chrono::milliseconds elapsed{0};
    if (r->start_ms && r->end_ms && *r->end_ms > *r->start_ms) elapsed = std::chrono::milliseconds(*r->end_ms - *r->start_ms);
    // Never more than the walltime it held for (a late poll must not charge queue time).
    elapsed = std::min(elapsed, std::chrono::duration_cast<std::chrono::milliseconds>(r->resources.walltime));
    Hold h = hold_of(*r);
    json result = json::object();
    result["job"] = r->id;
    // A payload job (a QPU run) is charged what its payload declares once it ran (seen running,
    // or completed between two polls), nothing if it never left the queue; a batch job its
    // allocated resources x elapsed (what it asked for where the scheduler reported nothing).
    bool ran = r->start_ms || r->state == JobState::kCompleted;
    Usage used = !r->spec.contains("payload") ? allocated_usage(*r, elapsed)
                 : ran                         ? payload_usage(r->spec["payload"])
                                               : Usage{};
    posted = co_await ledger_.settle(h, std::move(used), std::move(result));
  }
  {
    std::lock_guard g(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) co_return;
    it->second.settled = true;
    it->second.cost = posted;
    hold_kept_ms_.erase(id);
    r = it->second;
  }
  {
    auto op = write_op(*r, std::nullopt);
    co_await on_db(std::move(op));
  }
  log_settled(id, posted);
}

}  // namespace scigate::jobs
