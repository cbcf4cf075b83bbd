#include "connectors/scheduler/slurm/slurm_cli.hpp"

#include <charconv>
#include <cstdlib>
#include <set>

#include "connectors/scheduler/slurm/slurm_common.hpp"
#include "server/common/error.hpp"

namespace scigate::jobs {
namespace asio = boost::asio;
using namespace slurm;

namespace {

// squeue -O: a field with a suffix and no width is printed whole. Reason comes last: it is the
// one field that can hold free text, so a '|' in it cannot shift the others.
constexpr const char* kSqueueFields =
    "JobID:|,State:|,exit_code:|,SubmitTime:|,StartTime:|,EndTime:|,NumNodes:|,NumCPUs:|,tres-alloc:|,Comment:|,Reason:|";
constexpr size_t kSqueueFixed = 10;

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  for (;;) {
    auto p = s.find(sep);
    out.push_back(s.substr(0, p));
    if (p == std::string_view::npos) break;
    s = s.substr(p + 1);
  }
  return out;
}

std::vector<std::string_view> lines(std::string_view s) {
  std::vector<std::string_view> out;
  for (auto l : split(s, '\n')) {
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (!l.empty()) out.push_back(l);
  }
  return out;
}

int to_int(std::string_view s) {
  int v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return r.ec == std::errc() ? v : 0;
}

Error unavailable(const std::string& what, const CommandResult& r) {
  std::string msg = slurm_message(r.err);
  if (msg.empty()) msg = r.describe();
  return Error{ErrorCode::kBackendUnavailable, "the Slurm site is unavailable: " + what + " failed (" + msg + ")",
               "try again later; the site's controller may be down or overloaded",
               what + ": " + r.describe() + " stderr: " + r.err.substr(0, 2000)};
}

}  // namespace

SlurmCliScheduler::SlurmCliScheduler(SlurmCliOptions options) : options_(std::move(options)) {}

std::string SlurmCliScheduler::program(const char* name) const {
  return options_.bin_dir.empty() ? std::string(name) : (options_.bin_dir / name).string();
}

std::map<std::string, std::string> SlurmCliScheduler::base_environment() const {
  std::map<std::string, std::string> env;
  const char* path = std::getenv("PATH");
  env["PATH"] = path ? path : "/usr/local/bin:/usr/bin:/bin";
  if (!options_.slurm_conf.empty()) env["SLURM_CONF"] = options_.slurm_conf.string();
  // Slurm prints local times; parse_time reads them in this process's zone.
  if (const char* tz = std::getenv("TZ")) env["TZ"] = tz;
  env["LC_ALL"] = "C";
  return env;
}

asio::awaitable<CommandResult> SlurmCliScheduler::run(std::vector<std::string> argv,
                                                      std::map<std::string, std::string> env, std::string stdin_data) {
  CommandOptions o;
  o.argv = std::move(argv);
  o.inherit_environment = false;
  o.environment = std::move(env);
  o.stdin_data = std::move(stdin_data);
  o.timeout = options_.command_timeout;
  o.max_output = options_.max_output;
  ++commands_;
  co_return co_await run_command(std::move(o));
}

std::vector<std::string> SlurmCliScheduler::sbatch_argv(const JobSpec& spec) const {
  const auto& r = spec.resources;
  std::vector<std::string> a = {program("sbatch"), "--parsable"};
  // Every value is glued to its option with '=': a value starting with '-' stays a value.
  std::string name = !spec.name.empty() ? spec.name : !spec.gateway_id.empty() ? spec.gateway_id : "scigate";
  a.push_back("--job-name=" + name);
  if (!spec.gateway_id.empty()) a.push_back("--comment=" + spec.gateway_id);
  if (!spec.partition.empty()) a.push_back("--partition=" + spec.partition);
  if (!spec.account.empty()) a.push_back("--account=" + spec.account);
  a.push_back("--nodes=" + std::to_string(r.nodes));
  a.push_back("--ntasks=" + std::to_string(r.tasks));
  a.push_back("--cpus-per-task=" + std::to_string(r.cpus_per_task));
  if (r.gpus > 0)
    a.push_back("--gres=gpu:" + (r.gpu_type.empty() ? std::string() : r.gpu_type + ":") + std::to_string(r.gpus));
  if (r.memory_mb > 0) a.push_back("--mem=" + std::to_string(r.memory_mb) + "M");
  a.push_back("--time=" + std::to_string(walltime_minutes(r.walltime)));
  // A requeued job keeps its id and restarts; the ledger charges one run, so a job that requeues
  // itself (scontrol requeue $SLURM_JOB_ID) would run again and again for the price of the last.
  a.push_back("--no-requeue");
  if (!spec.working_directory.empty()) a.push_back("--chdir=" + spec.working_directory.string());
  if (!spec.stdout_path.empty()) a.push_back("--output=" + spec.stdout_path.string());
  if (!spec.stderr_path.empty()) a.push_back("--error=" + spec.stderr_path.string());
  if (!spec.after_ok.empty()) {
    std::string dep = "--dependency=afterok";
    for (const auto& id : spec.after_ok) dep += ":" + id;
    a.push_back(dep);
    a.push_back("--kill-on-invalid-dep=yes");  // a failed dependency fails the job, not strands it
  }
  if (!spec.run_as.empty()) a.push_back("--uid=" + spec.run_as);
  a.push_back("--export=ALL");  // = exactly sbatch's environment, which sbatch_environment() sets
  return a;
}

std::map<std::string, std::string> SlurmCliScheduler::sbatch_environment(const JobSpec& spec) const {
  auto env = base_environment();
  std::map<std::string, std::string> job = spec.environment;
  if (!job.count("PATH")) job["PATH"] = options_.job_path;
  // sbatch's own PATH is used to find nothing but the script's interpreter on the node; the
  // job's PATH wins. SLURM_CONF stays ours (check_spec refuses SLURM_* in a spec).
  for (auto& [k, v] : job) env[k] = v;
  env.erase("LC_ALL");
  if (spec.environment.count("LC_ALL")) env["LC_ALL"] = spec.environment.at("LC_ALL");
  return env;
}

std::vector<std::string> SlurmCliScheduler::squeue_argv(const std::string& id_list) const {
  return {program("squeue"), "--noheader", "--states=all", "--jobs=" + id_list, std::string("--Format=") + kSqueueFields};
}

std::vector<std::string> SlurmCliScheduler::squeue_by_name_argv(const std::string& names) const {
  return {program("squeue"), "--noheader", "--states=all", "--name=" + names, std::string("--Format=") + kSqueueFields};
}

std::vector<std::string> SlurmCliScheduler::scancel_argv(const std::string& id) const {
  return {program("scancel"), id};
}

std::vector<std::string> SlurmCliScheduler::sacct_argv(const std::string& id) const {
  // -c: the job completion log (jobcomp/filetxt), which needs no slurmdbd. The explicit start
  // time: without one sacct may look at today only.
  return {program("sacct"), "-c", "--parsable2", "--noheader", "--starttime=2000-01-01T00:00:00", "--jobs=" + id,
          "--format=JobID,State,ExitCode,Start,End,NNodes,NCPUS,JobName"};
}

std::string SlurmCliScheduler::parse_sbatch(std::string_view out) {
  // "123" or, with a cluster name, "123;cluster".
  auto ls = lines(out);
  if (ls.empty()) return {};
  std::string_view id = ls.back();
  id = id.substr(0, id.find(';'));
  while (!id.empty() && id.back() == ' ') id.remove_suffix(1);
  return valid_job_id(id) ? std::string(id) : std::string();
}

std::vector<JobStatus> SlurmCliScheduler::parse_squeue(std::string_view out) {
  std::vector<JobStatus> result;
  for (auto line : lines(out)) {
    auto f = split(line, '|');
    if (f.size() < kSqueueFixed + 1) continue;
    JobStatus st;
    st.native_id = std::string(f[0]);
    if (!valid_job_id(st.native_id)) continue;
    // Reason: everything after the fixed fields, less the trailing separator.
    std::string_view rest = line.substr(f[kSqueueFixed].data() - line.data());
    if (!rest.empty() && rest.back() == '|') rest.remove_suffix(1);
    if (!apply_state(st, f[1], rest)) {
      st.state = JobState::kNew;  // unknown to us: the job ledger keeps what it knew, and logs
    }
    bool started = st.state != JobState::kQueued && st.state != JobState::kNew;
    if (is_final(st.state)) {
      int64_t status = 0;
      auto code = f[2];
      if (std::from_chars(code.data(), code.data() + code.size(), status).ec == std::errc()) apply_wait_status(status, st);
    }
    st.submit_ms = parse_time(f[3]);
    if (started) st.start_ms = parse_time(f[4]);
    if (is_final(st.state)) st.end_ms = parse_time(f[5]);
    st.alloc_nodes = to_int(f[6]);
    st.alloc_cpus = to_int(f[7]);
    st.alloc_gpus = tres_gpus(f[8], &st.gpu_type);
    if (f[9] != "(null)") st.comment = std::string(f[9]);
    result.push_back(std::move(st));
  }
  return result;
}

std::vector<JobStatus> SlurmCliScheduler::parse_sacct(std::string_view out, std::string_view native_id) {
  // JobID|State|ExitCode|Start|End|NNodes|NCPUS|JobName, one line per record under the id (a
  // requeued job has one per run; a reused id one per job), in the log's order. The name is
  // last: it is the rest of the line, '|' and all. (Submit is not asked for: for the completion
  // log, sacct 22.05 prints the start time there.)
  std::vector<JobStatus> found;
  for (auto line : lines(out)) {
    auto f = split(line, '|');
    if (f.size() < 8 || f[0] != native_id) continue;
    JobStatus st;
    st.native_id = std::string(f[0]);
    if (!apply_state(st, f[1], "")) st.state = JobState::kNew;
    parse_code_signal(f[2], st);
    st.start_ms = parse_time(f[3]);
    st.end_ms = parse_time(f[4]);
    st.alloc_nodes = to_int(f[5]);
    st.alloc_cpus = to_int(f[6]);
    st.name = std::string(line.substr(f[7].data() - line.data()));
    found.push_back(std::move(st));
  }
  return found;
}

asio::awaitable<std::string> SlurmCliScheduler::submit(JobSpec spec) {
  check_spec(spec);
  prepare_job_directories(spec);
  auto argv = sbatch_argv(spec);
  auto env = sbatch_environment(spec);
  std::string script = batch_script(spec);
  size_t script_bytes = script.size();
  auto r = co_await run(std::move(argv), std::move(env), std::move(script));
  // An id printed by an sbatch that succeeded is the answer, whatever else it said.
  if (r.success())
    if (std::string id = parse_sbatch(r.out); !id.empty()) co_return id;
  // sbatch that ran out of time, or whose request reached slurmctld but whose answer did not
  // come back, may have queued the job.
  if (r.started() && (r.timed_out || r.cancelled || answer_lost(r.err))) throw SubmitOutcomeUnknown(unavailable("sbatch", r));
  if (!r.started() || looks_unreachable(r.err)) throw ErrorException(unavailable("sbatch", r));
  if (!r.success()) {
    std::string msg = slurm_message(r.err);
    if (msg.empty()) msg = "sbatch " + r.describe();
    throw ErrorException(Error{ErrorCode::kBackendRejected, "Slurm rejected the job: " + explain_rejection(msg, script_bytes),
                               "check the partition, account and resources against what the site offers",
                               "sbatch: " + r.describe() + " stderr: " + r.err.substr(0, 2000)});
  }
  std::string id = parse_sbatch(r.out);
  if (id.empty())  // sbatch succeeded: something was queued
    throw SubmitOutcomeUnknown(Error{ErrorCode::kBackendUnavailable, "the Slurm site gave an unexpected answer to sbatch",
                                     {}, "sbatch stdout: " + r.out.substr(0, 2000)});
  co_return id;
}

asio::awaitable<std::vector<JobStatus>> SlurmCliScheduler::poll(std::vector<std::string> native_ids) {
  std::vector<std::string> ids;
  for (auto& id : native_ids)
    if (valid_job_id(id)) ids.push_back(std::move(id));
  std::vector<JobStatus> out;
  for (const auto& list : id_lists(ids)) {
    auto r = co_await run(squeue_argv(list), base_environment());
    if (!r.success()) {
      // All of the ids unknown (purged after MinJobAge): squeue fails with this message.
      if (r.started() && !r.timed_out && r.exit_code == 1 && r.err.find("Invalid job id specified") != std::string::npos &&
          !looks_unreachable(r.err))
        continue;
      throw ErrorException(unavailable("squeue", r));
    }
    auto part = parse_squeue(r.out);
    for (auto& st : part) out.push_back(std::move(st));
  }
  co_return out;
}

asio::awaitable<void> SlurmCliScheduler::cancel(std::string native_id) {
  if (!valid_job_id(native_id))
    throw ErrorException(Error::invalid_arguments("'" + native_id + "' is not a Slurm job id"));
  // Argument vectors are built outside co_await expressions: GCC 12 miscompiles braced
  // initialiser lists there ("array used as initializer").
  std::vector<std::string> argv = scancel_argv(native_id);
  auto r = co_await run(std::move(argv), base_environment());
  if (r.success()) co_return;
  if (!r.started() || r.timed_out || r.cancelled || looks_unreachable(r.err)) throw ErrorException(unavailable("scancel", r));
  // Cancelling what already ended (or was forgotten) is not an error.
  if (r.err.find("Invalid job id") != std::string::npos || r.err.find("already completing or completed") != std::string::npos)
    co_return;
  throw ErrorException(Error{ErrorCode::kBackendRejected, "Slurm refused to cancel job " + native_id + ": " + slurm_message(r.err),
                             {}, "scancel: " + r.describe() + " stderr: " + r.err.substr(0, 2000)});
}

asio::awaitable<std::map<std::string, std::string>> SlurmCliScheduler::find_submitted(std::vector<Submitted> jobs) {
  // squeue filters by name, not by comment: the jobs of those names, then the ones whose
  // comment is a gateway id asked for. squeue keeps ended jobs for MinJobAge (300 s by default).
  std::map<std::string, std::string> found;
  std::set<std::string> wanted;
  std::set<std::string> names;
  for (const auto& j : jobs) {
    wanted.insert(j.gateway_id);
    names.insert(j.name);
  }
  // squeue --name takes a comma-separated list (check_spec refuses ',' in names); a few hundred
  // names at a time keeps the command line far below ARG_MAX.
  constexpr std::size_t kNamesPerQuery = 200;
  auto next = names.begin();
  while (next != names.end()) {
    std::string list;
    for (std::size_t n = 0; n < kNamesPerQuery && next != names.end(); ++n, ++next) list += (list.empty() ? "" : ",") + *next;
    std::vector<std::string> argv = squeue_by_name_argv(list);
    auto r = co_await run(std::move(argv), base_environment());
    if (!r.success()) throw ErrorException(unavailable("squeue", r));
    for (const auto& st : parse_squeue(r.out))
      if (wanted.count(st.comment)) found.emplace(st.comment, st.native_id);  // the first of any twins
  }
  co_return found;
}

asio::awaitable<std::vector<JobStatus>> SlurmCliScheduler::final_status(std::string native_id) {
  if (!valid_job_id(native_id)) co_return std::vector<JobStatus>{};
  std::vector<std::string> argv = sacct_argv(native_id);
  auto r = co_await run(std::move(argv), base_environment());
  if (!r.success()) throw ErrorException(unavailable("sacct", r));
  co_return parse_sacct(r.out, native_id);
}

}  // namespace scigate::jobs
