#include "connectors/scheduler/local/local_scheduler.hpp"
#include "server/common/thread_name.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <thread>
#include <fstream>
#include <sstream>

#include "server/common/time_format.hpp"
#include "sandbox/confine.hpp"
#include "server/common/error.hpp"
#include "server/observability/log.hpp"

namespace scigate::jobs {
namespace fs = std::filesystem;

namespace {

// The wrapper: the job's command runs as its child; its exit code lands in a file even when
// scigate is gone. TERM/INT/HUP get a no-op handler (not SIG_IGN, which the job would
// inherit), so the wrapper outlives the SIGTERM of a walltime or cancel long enough to record.
constexpr const char* kWrapper =
    "trap : TERM INT HUP; \"${@:2}\"; rc=$?; printf '%s\\n' \"$rc\" > \"$1.tmp\" && mv -f \"$1.tmp\" \"$1\"; exit $rc";

// A job's user can write in its job and exit directories: what is read there (running as root,
// on the scheduler's thread) must not follow a link, wait on a FIFO, or be endless. nullopt
// for anything but a regular file of at most kMaxSmallFile bytes.
constexpr std::size_t kMaxSmallFile = 4u << 20;

std::optional<std::string> read_small(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st{};
  std::optional<std::string> out;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    std::string text;
    char buf[8192];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || text.size() + static_cast<std::size_t>(n) > kMaxSmallFile) {
        if (n == 0) out = std::move(text);
        break;
      }
      text.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

// The job's stdout or stderr, new: whatever the job's user left at that name (a FIFO that
// would block the open, a link to another file to truncate) is removed first, and the file is
// created exclusively (a name put back meanwhile fails the start instead).
int create_output(const fs::path& p) {
  ::unlink(p.c_str());
  return ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0640);
}

bool write_file(const fs::path& p, const std::string& text, mode_t mode) {
  auto tmp = p;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return false;
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::fchmod(fd, mode);
  ::close(fd);
  return ok && ::rename(tmp.c_str(), p.c_str()) == 0;
}

std::optional<int> read_exit_code(const fs::path& control) {
  auto t = read_small(control / "exit" / "code");
  if (!t) return std::nullopt;
  try {
    return std::stoi(*t);
  } catch (...) {
    return std::nullopt;
  }
}

std::string find_bwrap() {
  for (const char* p : {"/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"})
    if (::access(p, X_OK) == 0) return p;
  return {};
}

// Alive and not a zombie (an adopted job whose parent died may wait for a reaper).
bool process_alive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  auto stat = read_small("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return false;
  auto close = stat->rfind(')');
  if (close != std::string::npos && close + 2 < stat->size() && (*stat)[close + 2] == 'Z') return false;
  return ::getpgid(pid) == pid;  // a job leads its own group; a reused pid rarely does
}

JobStatus status_from_exit(const std::string& id, int rc) {
  JobStatus s;
  s.native_id = id;
  s.exit_code = rc;
  s.native_state = "exited";
  if (rc == 0) {
    s.state = JobState::kCompleted;
  } else {
    s.state = JobState::kFailed;
    if (rc > 128 && rc < 160) {
      s.term_signal = rc - 128;
      s.reason = std::string("killed by signal ") + std::to_string(rc - 128) + " (" + ::strsignal(rc - 128) + ")";
    } else {
      s.reason = "exit code " + std::to_string(rc);
    }
  }
  return s;
}

std::string status_json(const JobStatus& s) {
  // Hand-built: a few fields, no dependency on the JSON library in the runner.
  std::ostringstream o;
  o << to_string(s.state) << "\n" << s.native_state << "\n" << s.reason << "\n"
    << (s.exit_code ? std::to_string(*s.exit_code) : "") << "\n" << (s.term_signal ? std::to_string(*s.term_signal) : "")
    << "\n" << s.start_ms.value_or(0) << "\n" << s.end_ms.value_or(0) << "\n" << s.alloc_cpus << "\n";
  return o.str();
}

std::optional<JobStatus> parse_status(const std::string& id, const std::string& text) {
  std::istringstream in(text);
  std::string state, native, reason, exit, sig, start, end, cpus;
  if (!std::getline(in, state) || !std::getline(in, native) || !std::getline(in, reason) || !std::getline(in, exit) ||
      !std::getline(in, sig) || !std::getline(in, start) || !std::getline(in, end) || !std::getline(in, cpus))
    return std::nullopt;
  auto st = parse_job_state(state);
  if (!st) return std::nullopt;
  JobStatus s;
  s.native_id = id;
  s.state = *st;
  s.native_state = native;
  s.reason = reason;
  try {
    if (!exit.empty()) s.exit_code = std::stoi(exit);
    if (!sig.empty()) s.term_signal = std::stoi(sig);
    if (std::stoll(start) > 0) s.start_ms = std::stoll(start);
    if (std::stoll(end) > 0) s.end_ms = std::stoll(end);
    s.alloc_cpus = std::stoi(cpus);
  } catch (...) {
    return std::nullopt;
  }
  return s;
}

bool valid_native_id(const std::string& id) {
  auto slash = id.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == id.size()) return false;
  if (id.find('/', slash + 1) != std::string::npos) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  return id.find("..") == std::string::npos && id[0] != '.';
}

// What a queued job needs to start after a restart (the script itself is in job.sh).
std::string spec_to_text(const JobSpec& s) {
  nlohmann::json j = nlohmann::json::object();
  j["gateway_id"] = s.gateway_id;
  j["name"] = s.name;
  j["project"] = s.project;
  j["principal"] = s.principal;
  j["has_script"] = !s.script.empty();
  j["executable"] = s.executable;
  j["arguments"] = s.arguments;
  j["nodes"] = s.resources.nodes;
  j["tasks"] = s.resources.tasks;
  j["cpus_per_task"] = s.resources.cpus_per_task;
  j["memory_mb"] = s.resources.memory_mb;
  j["walltime_s"] = s.resources.walltime.count();
  j["environment"] = s.environment;
  j["working_directory"] = s.working_directory.string();
  j["after_ok"] = s.after_ok;
  j["submit_ms"] = unix_now_ms();
  return j.dump();
}

std::optional<JobSpec> spec_from_text(const std::string& text, const fs::path& control, int64_t* submit_ms) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  try {
    JobSpec s;
    s.gateway_id = j.at("gateway_id").get<std::string>();
    s.name = j.at("name").get<std::string>();
    s.project = j.at("project").get<std::string>();
    s.principal = j.at("principal").get<std::string>();
    if (j.at("has_script").get<bool>()) {
      auto script = read_small(control / "job.sh");
      if (!script) return std::nullopt;
      s.script = *script;
    }
    s.executable = j.at("executable").get<std::string>();
    s.arguments = j.at("arguments").get<std::vector<std::string>>();
    s.resources.nodes = j.at("nodes").get<int>();
    s.resources.tasks = j.at("tasks").get<int>();
    s.resources.cpus_per_task = j.at("cpus_per_task").get<int>();
    s.resources.memory_mb = j.at("memory_mb").get<int64_t>();
    s.resources.walltime = std::chrono::seconds(j.at("walltime_s").get<int64_t>());
    s.environment = j.at("environment").get<std::map<std::string, std::string>>();
    s.working_directory = j.at("working_directory").get<std::string>();
    s.after_ok = j.at("after_ok").get<std::vector<std::string>>();
    *submit_ms = j.at("submit_ms").get<int64_t>();
    return s;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

LocalScheduler::LocalScheduler(LocalSchedulerOptions options) : options_(std::move(options)) {
  if (options_.slots_cpus <= 0) options_.slots_cpus = std::max(1, static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN)));
  free_cpus_ = options_.slots_cpus;
  free_memory_mb_ = options_.slots_memory_mb;
  if (::geteuid() == 0) {
    struct passwd* pw = ::getpwnam(options_.run_as.c_str());
    if (!pw)
      throw std::runtime_error("local scheduler: run_as user \"" + options_.run_as + "\" does not exist");
    uid_ = pw->pw_uid;
    gid_ = pw->pw_gid;
    drop_privileges_ = true;
  } else {
    uid_ = ::geteuid();
    gid_ = ::getegid();
  }
  if (options_.use_bwrap) bwrap_ = find_bwrap();
  if (bwrap_.empty())
    log::warn("local_scheduler_unsandboxed",
              {{"detail", "bubblewrap (bwrap) is not installed or disabled: local jobs run without a read-only "
                          "system or network isolation"}});
  fs::create_directories(options_.jobs_root / ".control");
  ::chmod((options_.jobs_root / ".control").c_str(), 0711);
  ::chmod(options_.jobs_root.c_str(), 0755);
  name_pool_threads(files_, 1, "sg-job-files");
  runner_ = std::thread([this] {
    name_this_thread("sg-local-jobs");
    run();
  });
}

LocalScheduler::~LocalScheduler() {
  {
    std::lock_guard lk(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (runner_.joinable()) runner_.join();
}

fs::path LocalScheduler::control_dir(const std::string& id) const { return options_.jobs_root / ".control" / id; }

template <typename R>
boost::asio::awaitable<R> LocalScheduler::offload(std::function<R()> fn) {
  namespace asio = boost::asio;
  auto ex = co_await asio::this_coro::executor;
  // The operation is built in a statement of its own and then awaited. Written inside the
  // co_await, GCC 12 destroyed this initiation lambda twice, and with it its copy of `ex`: for a
  // call from a connection that is the connection's strand, whose last reference then went
  // early, so beast's timers later used a freed strand (heap corruption: a SIGSEGV at shutdown,
  // or a copy of a job record that never ended). The unit test "local scheduler: its coroutine
  // calls release every copy of the caller's executor" catches it; so does
  // scripts/check-coroutine-captures.py, for any lambda written that way.
  auto op = asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, R)>(
      [this, ex](auto handler, std::function<R()> f) {
        asio::post(files_, [ex, f = std::move(f), handler = std::move(handler)]() mutable {
          std::exception_ptr error;
          R value{};
          try {
            value = f();
          } catch (...) {
            error = std::current_exception();
          }
          asio::post(ex, [handler = std::move(handler), error, value = std::move(value)]() mutable {
            std::move(handler)(error, std::move(value));
          });
        });
      },
      asio::use_awaitable, std::move(fn));
  co_return co_await std::move(op);
}

// The functions handed to offload() are built here, outside the coroutines (GCC 12 destroys
// lambda temporaries inside co_await expressions twice).
namespace {
std::function<std::string()> submit_fn(LocalScheduler* s, JobSpec spec) {
  return [s, spec = std::move(spec)] { return s->submit_now(spec); };
}
std::function<std::vector<JobStatus>()> poll_fn(LocalScheduler* s, std::vector<std::string> ids) {
  return [s, ids = std::move(ids)] { return s->poll_now(ids); };
}
std::function<bool()> cancel_fn(LocalScheduler* s, std::string id) {
  return [s, id = std::move(id)] {
    s->cancel_now(id);
    return true;
  };
}
std::function<std::optional<JobStatus>()> final_fn(LocalScheduler* s, std::string id) {
  return [s, id = std::move(id)] { return s->final_status_now(id); };
}
}  // namespace

boost::asio::awaitable<std::string> LocalScheduler::submit(JobSpec spec) {
  auto fn = submit_fn(this, std::move(spec));
  co_return co_await offload<std::string>(std::move(fn));
}
boost::asio::awaitable<std::vector<JobStatus>> LocalScheduler::poll(std::vector<std::string> ids) {
  auto fn = poll_fn(this, std::move(ids));
  co_return co_await offload<std::vector<JobStatus>>(std::move(fn));
}
boost::asio::awaitable<void> LocalScheduler::cancel(std::string id) {
  auto fn = cancel_fn(this, std::move(id));
  co_await offload<bool>(std::move(fn));
}
boost::asio::awaitable<std::vector<JobStatus>> LocalScheduler::final_status(std::string id) {
  auto fn = final_fn(this, std::move(id));
  auto st = co_await offload<std::optional<JobStatus>>(std::move(fn));
  std::vector<JobStatus> out;
  if (st) out.push_back(std::move(*st));
  co_return out;
}

std::string LocalScheduler::submit_now(const JobSpec& spec) {
  auto reject = [](std::string msg, std::string hint = {}) {
    throw ErrorException(Error{ErrorCode::kBackendRejected, std::move(msg), std::move(hint), {}});
  };
  std::string id = spec.project + "/" + spec.gateway_id;
  if (!valid_native_id(id)) reject("the job's project or id cannot name a directory");
  if (spec.resources.nodes > 1) reject("the local site has one node; ask for nodes = 1");
  if (spec.resources.gpus > 0) reject("the local site has no GPUs");
  int cpus = std::max(1, spec.resources.cpus());
  if (cpus > options_.slots_cpus)
    reject("the job asks for " + std::to_string(cpus) + " CPUs; this site runs jobs with at most " +
               std::to_string(options_.slots_cpus),
           "ask for at most " + std::to_string(options_.slots_cpus) + " CPUs (tasks x cpus_per_task)");
  if (options_.slots_memory_mb > 0 && spec.resources.memory_mb > options_.slots_memory_mb)
    reject("the job asks for " + std::to_string(spec.resources.memory_mb) + " MB of memory; this site has " +
           std::to_string(options_.slots_memory_mb) + " MB for jobs");
  if (spec.script.empty() == spec.executable.empty()) reject("give exactly one of script and executable");

  fs::path project_dir = options_.jobs_root / spec.project;
  fs::path job_dir = project_dir / spec.gateway_id;
  fs::path control = control_dir(id);
  std::error_code ec;
  fs::create_directories(project_dir, ec);
  ::chmod(project_dir.c_str(), 0755);
  fs::create_directories(control / "exit", ec);
  if (ec) throw ErrorException(Error{ErrorCode::kBackendUnavailable, "the local site cannot create the job's files", {},
                                     "create " + control.string() + ": " + ec.message()});
  ::chmod(control.parent_path().c_str(), 0711);
  ::chmod(control.c_str(), 0755);
  if (::mkdir(job_dir.c_str(), 0755) != 0 && errno != EEXIST)
    throw ErrorException(Error{ErrorCode::kBackendUnavailable, "the local site cannot create the job's directory", {},
                               job_dir.string() + ": " + std::strerror(errno)});
  if (drop_privileges_) {
    if (::lchown(job_dir.c_str(), uid_, gid_) != 0 || ::lchown((control / "exit").c_str(), uid_, gid_) != 0)
      throw ErrorException(Error{ErrorCode::kBackendUnavailable, "the local site cannot prepare the job's directory",
                                 {}, std::string("chown: ") + std::strerror(errno)});
  }
  // The working directory: beneath the project's area, created (and given to the job's user)
  // if missing. open_beneath refuses symlinks out of the area, also ones swapped in later.
  std::string why;
  auto rel = sandbox::confine_relative(project_dir, spec.working_directory.empty() ? job_dir.string()
                                                                                    : spec.working_directory.string(),
                                       &why);
  if (!rel) reject("working_directory " + why);
  if (int e = sandbox::make_dirs_beneath(project_dir, *rel, 0755); e != 0)
    reject("working_directory \"" + *rel + "\" cannot be used: " +
           (e == EXDEV || e == ELOOP ? std::string("it leaves the project's job area") : std::strerror(e)));
  int pfd = ::open(project_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int wfd = pfd < 0 ? -1 : sandbox::open_beneath(pfd, rel->c_str());
  int open_errno = errno;
  if (pfd >= 0) ::close(pfd);
  if (wfd < 0)
    reject("working_directory \"" + *rel + "\" cannot be used: " +
           (open_errno == EXDEV || open_errno == ELOOP ? std::string("it leaves the project's job area")
                                                       : std::strerror(open_errno)));
  struct stat st{};
  if (drop_privileges_ && ::fstat(wfd, &st) == 0 && st.st_uid == 0) ::fchown(wfd, uid_, gid_);
  ::close(wfd);

  if (!spec.script.empty() && !write_file(control / "job.sh", spec.script, 0644))
    throw ErrorException(Error{ErrorCode::kBackendUnavailable, "the local site cannot write the job's script", {},
                               (control / "job.sh").string() + ": " + std::strerror(errno)});

  Job job;
  job.spec = spec;
  job.spec.working_directory = *rel;  // relative to the project's area from here on
  if (!write_file(control / "spec.json", spec_to_text(job.spec), 0600))
    throw ErrorException(Error{ErrorCode::kBackendUnavailable, "the local site cannot write the job's files", {},
                               (control / "spec.json").string() + ": " + std::strerror(errno)});
  job.control_dir = control;
  job.job_dir = job_dir;
  job.cpus = cpus;
  job.memory_mb = spec.resources.memory_mb;
  job.status.native_id = id;
  job.status.state = JobState::kQueued;
  job.status.native_state = "queued";
  job.status.submit_ms = unix_now_ms();
  job.status.alloc_cpus = cpus;
  job.status.alloc_nodes = 1;
  {
    std::lock_guard lk(mutex_);
    if (jobs_.count(id)) reject("a job with this id exists already");
    jobs_.emplace(id, std::move(job));
    queue_.push_back(id);
  }
  cv_.notify_all();
  return id;
}

std::vector<JobStatus> LocalScheduler::poll_now(const std::vector<std::string>& ids) {
  std::vector<JobStatus> out;
  std::vector<std::string> unknown;
  {
    std::lock_guard lk(mutex_);
    for (const auto& id : ids) {
      auto it = jobs_.find(id);
      if (it != jobs_.end()) out.push_back(it->second.status);
      else unknown.push_back(id);
    }
  }
  // Jobs from before a restart: still running ones are adopted (walltime, cancel and the exit
  // file apply again); ended ones are left out, for final_status.
  for (const auto& id : unknown) {
    if (!valid_native_id(id)) continue;
    if (auto job = adopt(id)) {
      std::lock_guard lk(mutex_);
      auto [it, added] = jobs_.emplace(id, std::move(*job));
      if (added) {
        free_cpus_ -= it->second.cpus;
        if (options_.slots_memory_mb > 0) free_memory_mb_ -= it->second.memory_mb;
      }
      out.push_back(it->second.status);
    } else if (auto queued = requeue(id)) {
      std::lock_guard lk(mutex_);
      auto [it, added] = jobs_.emplace(id, std::move(*queued));
      if (added) queue_.push_back(id);
      out.push_back(it->second.status);
      cv_.notify_all();
    }
  }
  return out;
}

std::optional<LocalScheduler::Job> LocalScheduler::adopt(const std::string& id) {
  fs::path control = control_dir(id);
  if (fs::exists(control / "final")) return std::nullopt;
  auto pid_text = read_small(control / "pid");
  if (!pid_text) return std::nullopt;
  std::istringstream in(*pid_text);
  long pid = 0;
  int64_t start_ms = 0, walltime_s = 0;
  int cpus = 1;
  in >> pid >> start_ms >> walltime_s >> cpus;
  if (!process_alive(static_cast<pid_t>(pid))) return std::nullopt;
  Job job;
  job.pid = static_cast<pid_t>(pid);
  job.own_child = false;
  job.control_dir = control;
  job.cpus = cpus;
  job.spec.resources.walltime = std::chrono::seconds(walltime_s);
  auto elapsed = std::chrono::milliseconds(std::max<int64_t>(0, unix_now_ms() - start_ms));
  job.start = std::chrono::steady_clock::now() - elapsed;
  job.status.native_id = id;
  job.status.state = JobState::kActive;
  job.status.native_state = "running";
  job.status.start_ms = start_ms;
  job.status.alloc_cpus = cpus;
  job.status.alloc_nodes = 1;
  log::info("local_job_adopted", {{"job", id}, {"pid", pid}});
  return job;
}

std::optional<LocalScheduler::Job> LocalScheduler::requeue(const std::string& id) {
  // A job that was waiting for slots when scigate stopped: nothing ran, so it queues again.
  fs::path control = control_dir(id);
  if (fs::exists(control / "final") || fs::exists(control / "pid") || fs::exists(control / "exit" / "code"))
    return std::nullopt;
  auto text = read_small(control / "spec.json");
  if (!text) return std::nullopt;
  int64_t submit_ms = 0;
  auto spec = spec_from_text(*text, control, &submit_ms);
  if (!spec) return std::nullopt;
  Job job;
  job.spec = std::move(*spec);
  job.control_dir = control;
  job.job_dir = options_.jobs_root / job.spec.project / job.spec.gateway_id;
  job.cpus = std::max(1, job.spec.resources.cpus());
  job.memory_mb = job.spec.resources.memory_mb;
  job.status.native_id = id;
  job.status.state = JobState::kQueued;
  job.status.native_state = "queued";
  job.status.submit_ms = submit_ms;
  job.status.alloc_cpus = job.cpus;
  job.status.alloc_nodes = 1;
  log::info("local_job_requeued", {{"job", id}});
  return job;
}

void LocalScheduler::cancel_now(const std::string& id) {
  {
    std::lock_guard lk(mutex_);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) {
      it->second.cancel_requested = true;
    } else {
      // Not known (a restart): a running one is adopted first, so that it is killed as a group.
      if (!valid_native_id(id)) return;
    }
  }
  if (!poll_now({id}).empty()) {
    std::lock_guard lk(mutex_);
    if (auto it = jobs_.find(id); it != jobs_.end()) it->second.cancel_requested = true;
  }
  cv_.notify_all();
}

std::optional<JobStatus> LocalScheduler::final_status_now(const std::string& id) {
  if (!valid_native_id(id)) return std::nullopt;
  {
    std::lock_guard lk(mutex_);
    if (auto it = jobs_.find(id); it != jobs_.end() && is_final(it->second.status.state)) return it->second.status;
  }
  fs::path control = control_dir(id);
  if (auto t = read_small(control / "final"))
    if (auto s = parse_status(id, *t)) return s;
  auto pid_text = read_small(control / "pid");
  std::optional<int> rc = read_exit_code(control);
  if (!pid_text && !rc) {
    if (!fs::exists(control)) return std::nullopt;
    JobStatus s;
    s.native_id = id;
    s.state = JobState::kFailed;
    s.native_state = "lost";
    s.reason = "the job had not started when scigate stopped, and was not restarted";
    return s;
  }
  JobStatus s;
  int64_t start_ms = 0, walltime_s = 0;
  int cpus = 1;
  long pid = 0;
  if (pid_text) {
    std::istringstream in(*pid_text);
    in >> pid >> start_ms >> walltime_s >> cpus;
    if (process_alive(static_cast<pid_t>(pid))) return std::nullopt;  // still running: poll adopts it
  }
  if (rc) {
    s = status_from_exit(id, *rc);
    std::error_code ec;
    auto mtime = fs::last_write_time(control / "exit" / "code", ec);
    if (!ec)
      s.end_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::file_clock::to_sys(mtime).time_since_epoch())
                     .count();
  } else {
    s.native_id = id;
    s.state = JobState::kFailed;
    s.native_state = "lost";
    s.reason = "the job's process ended without recording an exit code (killed while scigate was down?)";
    s.end_ms = unix_now_ms();
  }
  if (start_ms > 0) s.start_ms = start_ms;
  s.alloc_cpus = cpus;
  s.alloc_nodes = 1;
  if (s.start_ms && s.end_ms && walltime_s > 0 && *s.end_ms - *s.start_ms > walltime_s * 1000 + 1000 &&
      s.state != JobState::kCompleted) {
    s.native_state = "TIMEOUT";
    s.reason = "walltime exceeded";
  }
  return s;
}

void LocalScheduler::run() {
  std::unique_lock lk(mutex_);
  while (!stop_) {
    cv_.wait_for(lk, options_.tick);
    if (stop_) break;
    lk.unlock();
    tick();
    lk.lock();
  }
}

void LocalScheduler::signal_group(Job& job, int sig) {
  if (job.pid > 0) ::kill(-job.pid, sig);
}

void LocalScheduler::tick() {
  std::lock_guard lk(mutex_);
  auto now = std::chrono::steady_clock::now();
  std::vector<std::string> forget;
  for (auto& [id, job] : jobs_) {
    if (is_final(job.status.state)) {
      // Kept a while for poll(); final_status reads the file after that.
      if (job.status.end_ms && unix_now_ms() - *job.status.end_ms > 600'000) forget.push_back(id);
      continue;
    }
    if (job.status.state == JobState::kQueued) {
      if (job.cancel_requested) {
        job.status.state = JobState::kCanceled;
        job.status.native_state = "CANCELLED";
        job.status.reason = "cancelled before it started";
        job.status.end_ms = unix_now_ms();
        write_file(job.control_dir / "final", status_json(job.status), 0644);
        std::erase(queue_, id);
      }
      continue;
    }
    // Running.
    bool ended = false;
    std::optional<int> code, sig;
    if (job.own_child) {
      int status = 0;
      pid_t r = ::waitpid(job.pid, &status, WNOHANG);
      if (r == job.pid) {
        ended = true;
        if (WIFEXITED(status)) code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status)) sig = WTERMSIG(status);
      } else if (r < 0 && errno == ECHILD) {
        ended = true;
      }
    } else if (!process_alive(job.pid)) {
      ended = true;
    }
    if (ended) {
      // The group may still hold stragglers (a background grandchild): they go with the job.
      ::kill(-job.pid, SIGKILL);
      if (auto rc = read_exit_code(job.control_dir)) {
        code = *rc;
        sig.reset();
      }
      finish(job, code, sig);
      continue;
    }
    auto walltime = std::chrono::duration_cast<std::chrono::steady_clock::duration>(job.spec.resources.walltime);
    if (!job.term_sent && job.start && now - *job.start > walltime) {
      job.timed_out = true;
      job.term_sent = now;
      signal_group(job, SIGTERM);
    } else if (!job.term_sent && job.cancel_requested) {
      job.term_sent = now;
      signal_group(job, SIGTERM);
    } else if (job.term_sent && now - *job.term_sent > options_.kill_grace) {
      signal_group(job, SIGKILL);
    }
  }
  for (const auto& id : forget) jobs_.erase(id);
  // Start what fits, in order; a job whose dependencies failed fails.
  for (auto it = queue_.begin(); it != queue_.end();) {
    auto jit = jobs_.find(*it);
    if (jit == jobs_.end() || jit->second.status.state != JobState::kQueued) {
      it = queue_.erase(it);
      continue;
    }
    Job& job = jit->second;
    bool deps_ok = true, deps_failed = false;
    for (const auto& dep : job.spec.after_ok) {
      auto d = jobs_.find(dep);
      if (d == jobs_.end()) {
        auto fin = read_small(control_dir(dep) / "final");
        auto st = fin ? parse_status(dep, *fin) : std::nullopt;
        if (!st || st->state != JobState::kCompleted) deps_failed = true;
        continue;
      }
      if (d->second.status.state == JobState::kCompleted) continue;
      if (is_final(d->second.status.state)) deps_failed = true;
      else deps_ok = false;
    }
    if (deps_failed) {
      job.status.state = JobState::kFailed;
      job.status.native_state = "DependencyNeverSatisfied";
      job.status.reason = "a job it depends on (after_ok) did not complete";
      job.status.end_ms = unix_now_ms();
      write_file(job.control_dir / "final", status_json(job.status), 0644);
      it = queue_.erase(it);
      continue;
    }
    if (!deps_ok) {
      job.status.reason = "Dependency";
      ++it;
      continue;
    }
    bool fits = job.cpus <= free_cpus_ && (options_.slots_memory_mb <= 0 || job.memory_mb <= free_memory_mb_);
    if (!fits) {
      job.status.reason = "Resources";
      break;  // FIFO: later jobs do not overtake
    }
    std::string why;
    if (try_start(job, &why)) {
      free_cpus_ -= job.cpus;
      if (options_.slots_memory_mb > 0) free_memory_mb_ -= job.memory_mb;
    } else {
      job.status.state = JobState::kFailed;
      job.status.native_state = "launch_failed";
      job.status.reason = why;
      job.status.end_ms = unix_now_ms();
      write_file(job.control_dir / "final", status_json(job.status), 0644);
    }
    it = queue_.erase(it);
  }
}

void LocalScheduler::finish(Job& job, std::optional<int> code, std::optional<int> sig) {
  JobStatus& s = job.status;
  JobStatus base = code ? status_from_exit(s.native_id, *code) : JobStatus{};
  s.exit_code = code;
  s.term_signal = sig ? sig : base.term_signal;
  s.end_ms = unix_now_ms();
  if (job.cancel_requested) {
    s.state = JobState::kCanceled;
    s.native_state = "CANCELLED";
    s.reason = "cancelled";
  } else if (job.timed_out) {
    s.state = JobState::kFailed;
    s.native_state = "TIMEOUT";
    s.reason = "walltime exceeded (" + std::to_string(job.spec.resources.walltime.count()) + " s)";
  } else if (code) {
    s.state = base.state;
    s.native_state = base.native_state;
    s.reason = base.reason;
  } else {
    s.state = JobState::kFailed;
    s.native_state = sig ? "SIGNALED" : "lost";
    s.reason = sig ? "killed by signal " + std::to_string(*sig) : "the job's process vanished";
  }
  free_cpus_ += job.cpus;
  if (options_.slots_memory_mb > 0) free_memory_mb_ += job.memory_mb;
  write_file(job.control_dir / "final", status_json(s), 0644);
}

bool LocalScheduler::try_start(Job& job, std::string* why) {
  const JobSpec& spec = job.spec;
  fs::path project_dir = options_.jobs_root / spec.project;
  fs::path exit_file = job.control_dir / "exit" / "code";
  std::error_code ec;
  fs::remove(exit_file, ec);

  // Everything the child needs is prepared here: after fork() it may only make system calls.
  std::vector<std::string> args;
  if (!bwrap_.empty()) {
    // jobs_root is hidden (every project's jobs run as the same run_as user), then only this
    // job's project area and control directory are put back.
    args = {bwrap_, "--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/tmp",
            "--tmpfs", options_.jobs_root.string(),
            "--bind", project_dir.string(), project_dir.string(),
            // Again after /tmp became a tmpfs: jobs_root may live under /tmp.
            "--ro-bind", job.control_dir.string(), job.control_dir.string(),
            "--bind", (job.control_dir / "exit").string(), (job.control_dir / "exit").string(),
            "--chdir", (project_dir / spec.working_directory).string()};
    if (!options_.allow_network) args.push_back("--unshare-net");
    args.push_back("--");
  }
  args.insert(args.end(), {"/bin/bash", "-c", kWrapper, "scigate-job", exit_file.string()});
  if (!spec.script.empty()) {
    args.push_back("/bin/bash");
    args.push_back((job.control_dir / "job.sh").string());
  } else {
    args.push_back(spec.executable);
    args.insert(args.end(), spec.arguments.begin(), spec.arguments.end());
  }
  std::string home = job.job_dir.string();
  std::vector<std::string> env = {"PATH=/usr/local/bin:/usr/bin:/bin",
                                  "HOME=" + home,
                                  "USER=" + (drop_privileges_ ? options_.run_as : std::string(::getenv("USER") ? ::getenv("USER") : "")),
                                  "LANG=C.UTF-8",
                                  "SCIGATE_JOB_ID=" + spec.gateway_id,
                                  "SCIGATE_JOB_NAME=" + spec.name,
                                  "SCIGATE_PROJECT=" + spec.project,
                                  "SCIGATE_NTASKS=" + std::to_string(spec.resources.tasks),
                                  "SCIGATE_CPUS_PER_TASK=" + std::to_string(spec.resources.cpus_per_task),
                                  "SCIGATE_MEM_MB=" + std::to_string(spec.resources.memory_mb),
                                  "SCIGATE_SUBMIT_DIR=" + (project_dir / spec.working_directory).string(),
                                  "TMPDIR=/tmp"};
  for (const auto& [k, v] : spec.environment) env.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  int out_fd = create_output(job.job_dir / "stdout");
  int err_fd = create_output(job.job_dir / "stderr");
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int pfd = ::open(project_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  auto close_all = [&] {
    for (int fd : {out_fd, err_fd, null_fd, pfd})
      if (fd >= 0) ::close(fd);
  };
  if (out_fd < 0 || err_fd < 0 || null_fd < 0 || pfd < 0) {
    *why = std::string("cannot open the job's output files: ") + std::strerror(errno);
    close_all();
    return false;
  }
  if (drop_privileges_) {
    ::fchown(out_fd, uid_, gid_);
    ::fchown(err_fd, uid_, gid_);
  }
  std::string rel = spec.working_directory.string();
  const char* rel_c = rel.c_str();
  rlim_t cpu_s = static_cast<rlim_t>(spec.resources.walltime.count()) * std::max(1, job.cpus) + 5;
  rlim_t as_bytes = spec.resources.memory_mb > 0 ? static_cast<rlim_t>(spec.resources.memory_mb) * 1024 * 1024
                                                 : RLIM_INFINITY;
  // bwrap maps its own helper pages; with an address-space limit below that, it cannot start.
  if (!bwrap_.empty() && as_bytes != RLIM_INFINITY) as_bytes += 64ull * 1024 * 1024;
  bool drop = drop_privileges_;
  uid_t uid = uid_;
  gid_t gid = gid_;

  pid_t pid = ::fork();
  if (pid < 0) {
    *why = std::string("fork failed: ") + std::strerror(errno);
    close_all();
    return false;
  }
  if (pid == 0) {
    ::setsid();
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int s = 1; s < NSIG; ++s) ::signal(s, SIG_DFL);
    struct rlimit r;
    r.rlim_cur = cpu_s;
    r.rlim_max = cpu_s + 5;
    ::setrlimit(RLIMIT_CPU, &r);
    r.rlim_cur = r.rlim_max = as_bytes;
    ::setrlimit(RLIMIT_AS, &r);
    r.rlim_cur = r.rlim_max = 1024;
    ::setrlimit(RLIMIT_NOFILE, &r);
    if (drop) {
      r.rlim_cur = r.rlim_max = 4096;
      ::setrlimit(RLIMIT_NPROC, &r);
    }
    r.rlim_cur = r.rlim_max = 0;
    ::setrlimit(RLIMIT_CORE, &r);
    ::dup2(null_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    int wd = sandbox::open_beneath(pfd, rel_c);
    if (wd < 0 || ::fchdir(wd) != 0) ::_exit(126);
    if (drop) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) ::_exit(126);
    }
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  close_all();
  // The child's first act is setsid(). Until then it does not lead a group of its own, and a
  // scigate restarted in that instant would not recognise it as a job (process_alive) and lose
  // it: wait for it, which takes microseconds (the restart test caught the race under ASan).
  auto leader_by = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (::getpgid(pid) != pid && std::chrono::steady_clock::now() < leader_by) std::this_thread::yield();
  job.pid = pid;
  job.own_child = true;
  job.start = std::chrono::steady_clock::now();
  job.status.state = JobState::kActive;
  job.status.native_state = "running";
  job.status.reason.clear();
  job.status.start_ms = unix_now_ms();
  write_file(job.control_dir / "pid",
             std::to_string(pid) + " " + std::to_string(*job.status.start_ms) + " " +
                 std::to_string(spec.resources.walltime.count()) + " " + std::to_string(job.cpus) + "\n",
             0644);
  return true;
}

}  // namespace scigate::jobs
