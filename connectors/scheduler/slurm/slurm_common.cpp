#include "connectors/scheduler/slurm/slurm_common.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <ctime>
#include <map>
#include <set>

#include "sandbox/confine.hpp"
#include "server/common/error.hpp"

namespace scigate::jobs::slurm {

namespace {

struct StateInfo {
  JobState state;
  const char* reason;  // for the failure states
};

const std::map<std::string, StateInfo, std::less<>>& states() {
  static const std::map<std::string, StateInfo, std::less<>> m = {
      // queued
      {"PD", {JobState::kQueued, ""}}, {"PENDING", {JobState::kQueued, ""}},
      {"CF", {JobState::kQueued, ""}}, {"CONFIGURING", {JobState::kQueued, ""}},
      {"RD", {JobState::kQueued, ""}}, {"RESV_DEL_HOLD", {JobState::kQueued, ""}},
      {"RF", {JobState::kQueued, ""}}, {"REQUEUE_FED", {JobState::kQueued, ""}},
      {"RH", {JobState::kQueued, ""}}, {"REQUEUE_HOLD", {JobState::kQueued, ""}},
      {"RV", {JobState::kQueued, ""}}, {"REVOKED", {JobState::kQueued, ""}},
      // active
      {"R", {JobState::kActive, ""}}, {"RUNNING", {JobState::kActive, ""}},
      {"CG", {JobState::kActive, ""}}, {"COMPLETING", {JobState::kActive, ""}},
      {"RQ", {JobState::kActive, ""}}, {"REQUEUED", {JobState::kActive, ""}},
      {"RS", {JobState::kActive, ""}}, {"RESIZING", {JobState::kActive, ""}},
      {"SI", {JobState::kActive, ""}}, {"SIGNALING", {JobState::kActive, ""}},
      {"SE", {JobState::kActive, ""}}, {"SPECIAL_EXIT", {JobState::kActive, ""}},
      {"SO", {JobState::kActive, ""}}, {"STAGE_OUT", {JobState::kActive, ""}},
      {"ST", {JobState::kActive, ""}}, {"STOPPED", {JobState::kActive, ""}},
      {"S", {JobState::kActive, ""}}, {"SUSPENDED", {JobState::kActive, ""}},
      // final
      {"CD", {JobState::kCompleted, ""}}, {"COMPLETED", {JobState::kCompleted, ""}},
      {"CA", {JobState::kCanceled, ""}}, {"CANCELLED", {JobState::kCanceled, ""}},
      {"BF", {JobState::kFailed, "node boot failure"}}, {"BOOT_FAIL", {JobState::kFailed, "node boot failure"}},
      {"DL", {JobState::kFailed, "deadline reached"}}, {"DEADLINE", {JobState::kFailed, "deadline reached"}},
      {"F", {JobState::kFailed, ""}}, {"FAILED", {JobState::kFailed, ""}},
      {"NF", {JobState::kFailed, "node failure"}}, {"NODE_FAIL", {JobState::kFailed, "node failure"}},
      {"OOM", {JobState::kFailed, "out of memory"}}, {"OUT_OF_MEMORY", {JobState::kFailed, "out of memory"}},
      {"PR", {JobState::kFailed, "preempted"}}, {"PREEMPTED", {JobState::kFailed, "preempted"}},
      {"TO", {JobState::kFailed, "walltime exceeded"}}, {"TIMEOUT", {JobState::kFailed, "walltime exceeded"}},
  };
  return m;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n' || s.front() == '\r'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::string upper_first_word(std::string_view native) {
  native = trim(native);
  if (auto sp = native.find(' '); sp != std::string_view::npos) native = native.substr(0, sp);
  std::string s(native);
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

template <class T>
bool parse_int(std::string_view s, T& out) {
  s = trim(s);
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool has_control(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

[[noreturn]] void reject(std::string message, std::string hint = {}) {
  throw ErrorException(Error::invalid_arguments(std::move(message), std::move(hint)));
}

}  // namespace

std::optional<JobState> map_state(std::string_view native) {
  auto key = upper_first_word(native);
  auto it = states().find(key);
  if (it == states().end()) return std::nullopt;
  return it->second.state;
}

std::string failure_reason(std::string_view native) {
  auto it = states().find(upper_first_word(native));
  return it == states().end() ? std::string() : std::string(it->second.reason);
}

bool apply_state(JobStatus& st, std::string_view native, std::string_view slurm_reason) {
  auto s = map_state(native);
  st.native_state = upper_first_word(native);
  if (!s) return false;
  st.state = *s;
  std::string reason = failure_reason(native);
  slurm_reason = trim(slurm_reason);
  if (reason.empty() && !slurm_reason.empty() && slurm_reason != "None" && slurm_reason != "(null)")
    reason = std::string(slurm_reason);
  st.reason = std::move(reason);
  return true;
}

bool parse_code_signal(std::string_view s, JobStatus& st) {
  s = trim(s);
  auto colon = s.find(':');
  int code = 0, sig = 0;
  if (colon == std::string_view::npos) {
    if (!parse_int(s, code)) return false;
  } else if (!parse_int(s.substr(0, colon), code) || !parse_int(s.substr(colon + 1), sig)) {
    return false;
  }
  st.exit_code = code;
  if (sig != 0) st.term_signal = sig;
  return true;
}

void apply_wait_status(int64_t status, JobStatus& st) {
  // The POSIX encoding Slurm keeps: low 7 bits the signal, next byte the exit code.
  int sig = static_cast<int>(status & 0x7f);
  if (sig != 0 && sig != 0x7f) {
    st.term_signal = sig;
    st.exit_code.reset();
  } else {
    st.exit_code = static_cast<int>((status >> 8) & 0xff);
  }
}

std::optional<int64_t> parse_time(std::string_view s) {
  s = trim(s);
  if (s.size() < 19 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':') return std::nullopt;
  std::tm tm{};
  int y, mo, d, h, mi, se;
  if (!parse_int(s.substr(0, 4), y) || !parse_int(s.substr(5, 2), mo) || !parse_int(s.substr(8, 2), d) ||
      !parse_int(s.substr(11, 2), h) || !parse_int(s.substr(14, 2), mi) || !parse_int(s.substr(17, 2), se))
    return std::nullopt;
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = se;
  tm.tm_isdst = -1;
  std::time_t t = std::mktime(&tm);
  if (t == static_cast<std::time_t>(-1)) return std::nullopt;
  return static_cast<int64_t>(t) * 1000;
}

int tres_gpus(std::string_view tres, std::string* type) {
  // Slurm lists the total ("gres/gpu=2") and, when typed, each type ("gres/gpu:a100=2").
  std::optional<int> total;
  int typed = 0;
  std::optional<std::string> only_type;  // "" once two types appear
  while (!tres.empty()) {
    auto comma = tres.find(',');
    std::string_view item = tres.substr(0, comma);
    tres = comma == std::string_view::npos ? std::string_view() : tres.substr(comma + 1);
    auto eq = item.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view key = item.substr(0, eq);
    int n = 0;
    if (!parse_int(item.substr(eq + 1), n)) continue;
    if (key == "gres/gpu") {
      total = n;
    } else if (key.substr(0, 9) == "gres/gpu:") {
      typed += n;
      std::string t(key.substr(9));
      if (n > 0) only_type = !only_type || *only_type == t ? t : std::string();
    }
  }
  // GPUs of several types (an untyped request on a mixed partition): no one type. The job is
  // then charged as it was held, at the untyped GPU rate (CREDITS.md), not at whichever type
  // Slurm listed last.
  if (type) *type = only_type.value_or("");
  return total ? *total : typed;
}

int64_t walltime_minutes(std::chrono::seconds walltime) {
  int64_t s = walltime.count();
  if (s <= 0) return 1;
  return std::max<int64_t>(1, (s + 59) / 60);
}

std::string shell_quote(std::string_view word) {
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  out += "'";
  return out;
}

std::string batch_script(const JobSpec& spec) {
  if (!spec.script.empty()) {
    if (spec.script.rfind("#!", 0) == 0) return spec.script;
    std::string s = "#!/bin/bash\n" + spec.script;
    if (s.back() != '\n') s += '\n';
    return s;
  }
  std::string s = "#!/bin/bash\nexec " + shell_quote(spec.executable);
  for (const auto& a : spec.arguments) s += " " + shell_quote(a);
  s += "\n";
  return s;
}

void check_spec(const JobSpec& spec) {
  if (spec.script.empty() == spec.executable.empty())
    reject("a job needs exactly one of a script and an executable");
  if (spec.script.find('\0') != std::string::npos) reject("the job script contains a NUL byte");
  for (const auto& [what, value] : {std::pair<const char*, const std::string*>{"name", &spec.name},
                                    {"partition", &spec.partition},
                                    {"account", &spec.account},
                                    {"executable", &spec.executable},
                                    {"gateway id", &spec.gateway_id},
                                    {"GPU type", &spec.resources.gpu_type},
                                    {"run-as user", &spec.run_as}}) {
    if (has_control(*value)) reject(std::string("the job's ") + what + " contains a control character");
  }
  for (const auto& a : spec.arguments)
    if (a.find('\0') != std::string::npos) reject("a job argument contains a NUL byte");
  // Characters Slurm itself splits on in these fields.
  for (const auto& [what, value] : {std::pair<const char*, const std::string*>{"partition", &spec.partition},
                                    {"account", &spec.account},
                                    {"GPU type", &spec.resources.gpu_type}}) {
    if (value->find_first_of(",:= ") != std::string::npos)
      reject(std::string("the job's ") + what + " may not contain ',', ':', '=' or spaces");
  }
  // squeue --name takes a list: a comma would hide the job from find_submitted.
  if (spec.name.find(',') != std::string::npos) reject("the job's name may not contain ','");
  for (const auto& [name, value] : spec.environment) {
    bool ident = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0]));
    for (char c : name)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) ident = false;
    if (!ident) reject("environment variable name '" + name + "' is not a valid name", "use letters, digits and _");
    for (const char* prefix : {"SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SACCT_", "SCANCEL_", "SPANK_"})
      if (name.rfind(prefix, 0) == 0)
        reject("environment variable " + name + " is reserved for Slurm", "choose a name that does not start with " +
                                                                              std::string(prefix));
    // sbatch runs as root with the job's variables in its own environment: whatever steers the
    // dynamic loader or libc is refused, as glibc itself drops these for setuid programs
    // (unsecvars.h; TMPDIR aside, which jobs commonly set and sbatch does not use).
    static const std::set<std::string, std::less<>> kLoaderAndLibc = {
        "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE",
        "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR", "MALLOC_ARENA_MAX", "MALLOC_CHECK_",
        "MALLOC_PERTURB_"};
    if (name.rfind("LD_", 0) == 0 || kLoaderAndLibc.count(name))
      reject("environment variable " + name + " may not be set for a job",
             "it steers the dynamic loader or libc of sbatch, which runs as root; set it inside the script instead");
    if (value.find('\0') != std::string::npos) reject("environment variable " + name + " contains a NUL byte");
  }
  for (const auto& [what, p] : {std::pair<const char*, const std::filesystem::path*>{"working directory", &spec.working_directory},
                                {"stdout path", &spec.stdout_path},
                                {"stderr path", &spec.stderr_path}}) {
    if (!p->empty() && !p->is_absolute()) reject(std::string("the job's ") + what + " must be an absolute path");
    if (has_control(p->native())) reject(std::string("the job's ") + what + " contains a control character");
  }
  for (const auto& id : spec.after_ok)
    if (!valid_job_id(id)) reject("dependency '" + id + "' is not a Slurm job id");
  const auto& r = spec.resources;
  if (r.nodes < 1 || r.tasks < 1 || r.cpus_per_task < 1 || r.gpus < 0 || r.memory_mb < 0 || r.walltime.count() < 0)
    reject("the job's resources must be positive numbers");
}

std::string slurm_message(std::string_view text) {
  std::string out;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.empty()) continue;
    // "sbatch: error: Batch job submission failed: Invalid partition name specified"
    for (std::string_view tag : {"error: ", "fatal: "}) {
      if (auto p = line.find(tag); p != std::string_view::npos) line = line.substr(p + tag.size());
    }
    for (std::string_view lead : {"Batch job submission failed: "})
      if (line.rfind(lead, 0) == 0) line = line.substr(lead.size());
    if (line.empty()) continue;
    if (!out.empty()) out += "; ";
    out += line;
    if (out.size() > 1000) {
      out.resize(1000);
      out += "...";
      break;
    }
  }
  return out;
}

std::string explain_rejection(std::string message, size_t script_bytes) {
  constexpr size_t kDefaultMaxScript = 4 << 20;  // SchedulerParameters=max_script_size
  if (message.find("too long") != std::string::npos && script_bytes > kDefaultMaxScript)
    message += " (the job script is " + std::to_string(script_bytes) +
               " bytes; Slurm accepts 4 MiB unless the site raised max_script_size)";
  return message;
}

bool looks_unreachable(std::string_view text) {
  for (std::string_view s : {"Unable to contact slurm controller", "Socket timed out", "Connection refused",
                             "Zero Bytes were transmitted", "Communication connection failure",
                             "Unable to establish controller", "Munge encode failed", "Protocol authentication error",
                             "slurm_load_jobs error: Unable", "Connection timed out"}) {
    if (text.find(s) != std::string_view::npos) return true;
  }
  return false;
}

bool answer_lost(std::string_view text) {
  // The request went out; its answer did not come back (slurm_send_recv_controller_msg).
  for (std::string_view s : {"Socket timed out", "Zero Bytes were transmitted"})
    if (text.find(s) != std::string_view::npos) return true;
  return false;
}

bool valid_job_id(std::string_view id) {
  if (id.empty() || id.size() > 20) return false;
  for (char c : id)
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '_') return false;
  return std::isdigit(static_cast<unsigned char>(id.front())) != 0;
}

std::vector<std::string> id_lists(const std::vector<std::string>& ids, size_t per_list) {
  std::vector<std::string> out;
  std::string cur;
  size_t n = 0;
  for (const auto& id : ids) {
    if (!cur.empty()) cur += ',';
    cur += id;
    if (++n == per_list) {
      out.push_back(std::move(cur));
      cur.clear();
      n = 0;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

void prepare_job_directories(const JobSpec& spec) {
  namespace fs = std::filesystem;
  std::optional<sandbox::DirOwner> owner;
  if (::geteuid() == 0 && !spec.run_as.empty()) {
    if (struct passwd* pw = ::getpwnam(spec.run_as.c_str()); pw && pw->pw_uid != 0)
      owner = sandbox::DirOwner{pw->pw_uid, pw->pw_gid};
  }
  auto fail = [](const std::string& what, const fs::path& dir, int err) {
    return ErrorException(Error{ErrorCode::kBackendUnavailable, "the job's directory could not be " + what, {},
                                dir.string() + ": " + std::strerror(err)});
  };
  // The site's root is the operator's (created if missing, never given away); everything below
  // it is made with mkdirat + openat(O_NOFOLLOW) from a descriptor, and what is created is
  // fchown'ed: the job account can write the project's directory, so a symlink it planted there
  // must never lead root's mkdir/chown elsewhere.
  std::error_code ec;
  if (spec.jobs_root.empty()) {
    // A spec built without the ledger (a connector used directly) names no root to create
    // beneath: its directories must exist already.
    for (const fs::path& dir : {spec.working_directory, spec.stdout_path.parent_path(), spec.stderr_path.parent_path()})
      if (!dir.empty() && !fs::is_directory(dir, ec)) throw fail("created (the spec names no job root)", dir, ENOENT);
    return;
  }
  fs::create_directories(spec.jobs_root, ec);
  int root_fd = ::open(spec.jobs_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) throw fail("created", spec.jobs_root, errno);
  for (const fs::path& dir : {spec.working_directory, spec.stdout_path.parent_path(), spec.stderr_path.parent_path()}) {
    if (dir.empty()) continue;
    fs::path rel = dir.lexically_normal().lexically_relative(spec.jobs_root.lexically_normal());
    if (rel.empty() || *rel.begin() == "..") {
      ::close(root_fd);
      throw fail("created", dir, EXDEV);
    }
    if (int e = sandbox::make_dirs_at(root_fd, rel.string(), 0755, nullptr, owner ? &*owner : nullptr); e != 0) {
      ::close(root_fd);
      throw fail(e == EXDEV ? "created (a symlink on its path leads out of the job area)" : "created", dir, e);
    }
  }
  ::close(root_fd);
}

}  // namespace scigate::jobs::slurm
