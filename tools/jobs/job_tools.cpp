#include "tools/jobs/job_tools.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>

#include "sandbox/confine.hpp"
#include "server/common/time_format.hpp"
#include "server/common/utf8.hpp"
#include "server/common/keyset_cursor.hpp"

namespace scigate::tools {
namespace asio = boost::asio;
using jobs::JobRecord;
using jobs::JobState;

namespace {

double credits_number(MicroCredits micro) { return static_cast<double>(micro) / 1e6; }

std::string walltime_text(std::chrono::seconds s) {
  int64_t v = s.count();
  char buf[48];
  int64_t d = v / 86400, h = (v % 86400) / 3600, m = (v % 3600) / 60, sec = v % 60;
  if (d > 0) std::snprintf(buf, sizeof buf, "%lld-%02lld:%02lld:%02lld", (long long)d, (long long)h, (long long)m, (long long)sec);
  else std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", (long long)h, (long long)m, (long long)sec);
  return buf;
}

ToolAnnotations read_only() {
  return ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
}

json job_id_schema() { return json::parse(R"({"type": "string", "maxLength": 14, "pattern": "^j-[0-9a-f]{12}$"})"); }

json schema_with_job_id(const char* extra_properties, const char* required) {
  json s = json::parse(std::string(R"({"type":"object","additionalProperties":false,"properties":)") + extra_properties +
                       R"(,"required":)" + required + "}");
  s["properties"]["job_id"] = job_id_schema();
  return s;
}

const char* kSubmitSchema = R"json({
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "name": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$",
             "description": "a label for people and list_jobs filters"},
    "script": {"type": "string", "minLength": 1, "maxLength": 1048576,
               "description": "a bash script (the #! line is optional)"},
    "executable": {"type": "string", "minLength": 1, "maxLength": 4096,
                   "description": "instead of script: a program run with arguments (no shell)"},
    "arguments": {"type": "array", "maxItems": 1024, "items": {"type": "string", "maxLength": 65536}},
    "resources": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "nodes": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1},
        "tasks": {"type": "integer", "minimum": 1, "maximum": 10000000, "default": 1},
        "cpus_per_task": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 1},
        "gpus": {"type": "integer", "minimum": 0, "maximum": 64, "default": 0, "description": "per node"},
        "gpu_type": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "memory": {"type": "string", "maxLength": 32, "pattern": "^[0-9]+(\\.[0-9]+)? ?[KMGTkmgt](i?[Bb])?$",
                   "description": "per node, with its unit: \"4G\", \"512M\", \"1.5TiB\" (a bare number is refused: policies read numbers as bytes, Slurm as MB)"},
        "walltime": {"type": "string", "maxLength": 16, "pattern": "^([0-9]{1,3}-)?[0-9]{1,4}(:[0-9]{1,2}){0,2}$", "default": "01:00:00",
                     "description": "\"HH:MM:SS\" or \"D-HH:MM:SS\" (default 01:00:00)"}
      }
    },
    "partition": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    "account": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    "environment": {"type": "object", "maxProperties": 256,
                    "additionalProperties": {"type": "string", "maxLength": 65536}},
    "working_directory": {"type": "string", "maxLength": 1024,
                          "description": "relative to the project's job area; default: the job's own directory"},
    "site": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    "after_ok": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 14, "pattern": "^j-[0-9a-f]{12}$"},
                 "description": "start only after these jobs completed successfully"}
  },
  "oneOf": [{"required": ["script"]}, {"required": ["executable"]}]
})json";

const char* kJobOutputSchema = R"({
  "type": "object",
  "properties": {
    "job_id": {"type": "string"}, "name": {"type": "string"}, "site": {"type": "string"},
    "state": {"type": "string", "enum": ["NEW", "QUEUED", "ACTIVE", "COMPLETED", "FAILED", "CANCELED"]},
    "final": {"type": "boolean"}
  },
  "required": ["job_id", "state"]
})";

bool has_nul(const std::string& s) { return s.find('\0') != std::string::npos; }

}  // namespace

json job_to_json(const JobRecord& r, bool full) {
  json j = json::object();
  j["job_id"] = r.id;
  j["name"] = r.name;
  j["site"] = r.site;
  j["state"] = std::string(jobs::to_string(r.state));
  j["final"] = jobs::is_final(r.state);
  if (!r.native_state.empty()) j["native_state"] = r.native_state;
  if (!r.reason.empty()) j["reason"] = r.reason;
  if (r.exit_code) j["exit_code"] = *r.exit_code;
  if (r.term_signal) j["signal"] = *r.term_signal;
  j["created"] = rfc3339_seconds(r.created_ms);
  if (r.start_ms) j["started"] = rfc3339_seconds(*r.start_ms);
  if (r.end_ms) j["ended"] = rfc3339_seconds(*r.end_ms);
  if (r.start_ms) {
    int64_t end = r.end_ms.value_or(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
    j["elapsed_s"] = std::max<int64_t>(0, end - *r.start_ms) / 1000.0;
  }
  if (!full) return j;
  j["native_id"] = r.native_id;
  j["principal"] = r.principal;
  json res = json::object();
  res["nodes"] = r.resources.nodes;
  res["tasks"] = r.resources.tasks;
  res["cpus_per_task"] = r.resources.cpus_per_task;
  res["gpus"] = r.resources.gpus;
  if (!r.resources.gpu_type.empty()) res["gpu_type"] = r.resources.gpu_type;
  res["memory_mb"] = r.resources.memory_mb;
  res["walltime"] = walltime_text(r.resources.walltime);
  j["resources"] = std::move(res);
  if (r.alloc_cpus > 0 || r.alloc_gpus > 0) {
    // What the scheduler gave it, and what it is charged for.
    json alloc = json::object();
    if (r.alloc_nodes > 0) alloc["nodes"] = r.alloc_nodes;
    if (r.alloc_cpus > 0) alloc["cpus"] = r.alloc_cpus;
    if (r.alloc_gpus > 0) alloc["gpus"] = r.alloc_gpus;
    if (!r.alloc_gpu_type.empty()) alloc["gpu_type"] = r.alloc_gpu_type;
    j["allocated"] = std::move(alloc);
  }
  json credits = json::object();
  credits["held"] = credits_number(r.held);
  if (r.cost) credits["cost"] = credits_number(*r.cost);
  if (r.cost_so_far) credits["cost_so_far"] = credits_number(*r.cost_so_far);
  credits["settled"] = r.settled;
  j["credits"] = std::move(credits);
  json events = json::array();
  for (const auto& e : r.events) {
    json ev = json::object();
    ev["time"] = rfc3339_seconds(e.time_ms);
    ev["state"] = std::string(jobs::to_string(e.state));
    if (!e.reason.empty()) ev["reason"] = e.reason;
    events.push_back(std::move(ev));
  }
  j["history"] = std::move(events);
  if (!r.result.is_null()) j["result"] = r.result;  // a QPU run's counts
  return j;
}

namespace {
std::string job_text(const JobRecord& r) {
  std::string t = "job " + r.id + (r.name.empty() ? "" : " (" + r.name + ")") + ": " + std::string(jobs::to_string(r.state));
  if (!r.reason.empty()) t += ", " + r.reason;
  if (r.exit_code) t += ", exit code " + std::to_string(*r.exit_code);
  if (r.cost) t += ", cost " + json(credits_number(*r.cost)).dump() + " credits";
  return t;
}

Error not_found(const std::string& id) {
  return Error{ErrorCode::kNotFound, "no job " + id + " in this project", "list_jobs shows this project's jobs", {}};
}

ToolResult job_result(const JobRecord& r) { return ToolResult::success(job_to_json(r, true), job_text(r)); }
}  // namespace

// --- submit_job ------------------------------------------------------------------------------

SubmitJobTool::SubmitJobTool(jobs::JobService& jobs) : jobs_(jobs) {
  descriptor_.name = "submit_job";
  descriptor_.title = "Submit a batch job";
  descriptor_.description =
      "Submits a batch job (a bash script, or an executable with arguments) to one of the site's schedulers and "
      "returns its job id at once; follow it with get_job or wait_job, read its output with read_job_output. "
      "resources: nodes, tasks, cpus_per_task, gpus (per node), gpu_type, memory (\"4G\" or MB), walltime "
      "(\"HH:MM:SS\" or \"D-HH:MM:SS\", default 1 h; the job is stopped when it runs longer). The job's credits "
      "(CPU and GPU hours x walltime) are held at submit and settled by what it used when it ends. "
      "working_directory is relative to the project's job area. after_ok: job ids that must complete first.";
  descriptor_.input_schema = json::parse(kSubmitSchema);
  descriptor_.output_schema = json::parse(kJobOutputSchema);
  descriptor_.annotations = ToolAnnotations{.read_only = false, .destructive = false, .idempotent = false, .open_world = true};
}

namespace {
// The first scheduler directive a batch system could read from `script`: a line whose first
// non-blank characters are "#SBATCH" or "#SLURM" (sbatch reads both), "#PBS" or "#BSUB", in
// any case, in the leading block of comments and blank lines. sbatch stops reading directives
// at the first line with anything but whitespace (isspace: also \v and \f) before a '#'; it
// matches the magic words at column 0, so refusing them after blanks too is the safe side.
std::optional<std::string> scheduler_directive(const std::string& script) {
  auto blank = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  std::size_t at = 0;
  while (at < script.size()) {
    std::size_t end = script.find('\n', at);
    if (end == std::string::npos) end = script.size();
    std::string_view line(script.data() + at, end - at);
    at = end + 1;
    std::size_t first = 0;
    while (first < line.size() && blank(line[first])) ++first;
    if (first == line.size()) continue;
    if (line[first] != '#') return std::nullopt;
    std::string word;
    for (std::size_t i = first + 1; i < line.size() && word.size() < 6 && std::isalpha(static_cast<unsigned char>(line[i])); ++i)
      word += static_cast<char>(std::toupper(static_cast<unsigned char>(line[i])));
    for (std::string_view magic : {"SBATCH", "SLURM", "PBS", "BSUB"})
      if (word.compare(0, magic.size(), magic) == 0) return std::string(line);
  }
  return std::nullopt;
}
}  // namespace

std::variant<jobs::SubmitRequest, Error> SubmitJobTool::parse(const json& args) {
  jobs::SubmitRequest req;
  jobs::JobSpec& s = req.spec;
  if (auto it = args.find("name"); it != args.end() && it->is_string()) s.name = it->get<std::string>();
  if (auto it = args.find("script"); it != args.end() && it->is_string()) s.script = it->get<std::string>();
  if (auto it = args.find("executable"); it != args.end() && it->is_string()) s.executable = it->get<std::string>();
  if (s.script.empty() == s.executable.empty())
    return Error::invalid_arguments("give exactly one of script and executable");
  if (has_nul(s.script) || has_nul(s.executable)) return Error::invalid_arguments("script and executable may not hold NUL bytes");
  if (auto directive = scheduler_directive(s.script))
    return Error::invalid_arguments(
        "the script's line \"" + directive->substr(0, 80) +
            "\" is a scheduler directive: sbatch would obey it over what the policy and the credit hold were decided on",
        "remove the #SBATCH (#PBS, #BSUB) lines and give those settings as arguments (resources, partition, account, "
        "after_ok); job arrays are not offered");
  if (auto it = args.find("arguments"); it != args.end() && it->is_array()) {
    if (s.executable.empty()) return Error::invalid_arguments("arguments go with executable, not with script");
    for (const auto& a : *it) {
      s.arguments.push_back(a.get<std::string>());
      if (has_nul(s.arguments.back())) return Error::invalid_arguments("arguments may not hold NUL bytes");
    }
  }
  if (auto it = args.find("resources"); it != args.end() && it->is_object()) {
    const json& r = *it;
    auto integer = [&](const char* k, int d) { return r.contains(k) && r[k].is_number_integer() ? r[k].get<int>() : d; };
    s.resources.nodes = integer("nodes", 1);
    s.resources.tasks = integer("tasks", 1);
    s.resources.cpus_per_task = integer("cpus_per_task", 1);
    s.resources.gpus = integer("gpus", 0);
    if (r.contains("gpu_type") && r["gpu_type"].is_string()) s.resources.gpu_type = r["gpu_type"].get<std::string>();
    if (r.contains("memory")) {
      // With its unit only: a policy reads a bare number as bytes and Slurm as MB, so a limit
      // of "64GiB" would pass 1048576 (a terabyte to Slurm).
      const json& m = r["memory"];
      const bool unitless = !m.is_string() || m.get<std::string>().find_first_not_of("0123456789. ") == std::string::npos;
      auto mb = unitless ? std::nullopt : jobs::parse_memory_mb(m);
      if (!mb || *mb <= 0)
        return Error::invalid_arguments("memory " + m.dump() + " is not a size with its unit",
                                        "write a size like \"4G\", \"512M\" or \"1.5TiB\"");
      s.resources.memory_mb = *mb;
    }
    if (r.contains("walltime") && r["walltime"].is_string()) {
      auto w = jobs::parse_walltime_arg(r["walltime"].get<std::string>());
      if (!w)
        return Error::invalid_arguments("walltime \"" + r["walltime"].get<std::string>() + "\" is not a walltime",
                                        "write \"HH:MM:SS\" or \"D-HH:MM:SS\", more than zero");
      s.resources.walltime = *w;
    }
    if (s.resources.gpus == 0 && !s.resources.gpu_type.empty())
      return Error::invalid_arguments("gpu_type is set but gpus is 0", "ask for gpus >= 1, or drop gpu_type");
    if (static_cast<int64_t>(s.resources.tasks) * s.resources.cpus_per_task > 10'000'000)
      return Error::invalid_arguments("tasks x cpus_per_task is absurdly large");
  }
  if (auto it = args.find("partition"); it != args.end() && it->is_string()) s.partition = it->get<std::string>();
  if (auto it = args.find("account"); it != args.end() && it->is_string()) s.account = it->get<std::string>();
  if (auto it = args.find("environment"); it != args.end() && it->is_object()) {
    for (auto e = it->begin(); e != it->end(); ++e) {
      std::string why;
      if (!jobs::valid_env_name(e.key(), &why))
        return Error::invalid_arguments("environment variable \"" + e.key() + "\" " + why);
      std::string v = e.value().get<std::string>();
      if (has_nul(v)) return Error::invalid_arguments("environment variable " + e.key() + " holds a NUL byte");
      s.environment[e.key()] = std::move(v);
    }
  }
  if (auto it = args.find("working_directory"); it != args.end() && it->is_string()) {
    std::string why;
    auto rel = sandbox::confine_relative("/nonexistent-root", it->get<std::string>(), &why);
    if (!rel || (!it->get<std::string>().empty() && it->get<std::string>().front() == '/'))
      return Error::invalid_arguments("working_directory \"" + it->get<std::string>() + "\" " +
                                          (rel ? std::string("must be relative to the project's job area") : why),
                                      "give a path relative to the project's job area, without \"..\"");
    req.working_directory = *rel;
  }
  if (auto it = args.find("site"); it != args.end() && it->is_string()) req.site = it->get<std::string>();
  if (auto it = args.find("after_ok"); it != args.end() && it->is_array())
    for (const auto& d : *it) req.after_ok.push_back(d.get<std::string>());
  return req;
}

asio::awaitable<ToolResult> SubmitJobTool::call(const json& args, CallContext& ctx) {
  auto parsed = parse(args);
  if (auto* e = std::get_if<Error>(&parsed)) co_return ToolResult::failure(*e);
  auto req = std::get<jobs::SubmitRequest>(std::move(parsed));
  req.spec.project = ctx.project;
  req.spec.principal = ctx.principal.name;
  req.request_id = ctx.request_id;
  auto r = co_await jobs_.submit(std::move(req));
  if (auto* e = std::get_if<Error>(&r)) co_return ToolResult::failure(*e);
  const JobRecord& rec = std::get<JobRecord>(r);
  ctx.audit_fields["job_id"] = rec.id;
  ctx.audit_fields["site"] = rec.site;
  co_return job_result(rec);
}

// --- get_job ---------------------------------------------------------------------------------

GetJobTool::GetJobTool(jobs::JobService& jobs) : jobs_(jobs) {
  descriptor_.name = "get_job";
  descriptor_.title = "Job status";
  descriptor_.description =
      "State of one job of this project (NEW, QUEUED, ACTIVE, COMPLETED, FAILED, CANCELED), the scheduler's own "
      "state and reason, exit code, times, resources, credits held and cost, and its state history.";
  descriptor_.input_schema = schema_with_job_id("{}", R"(["job_id"])");
  descriptor_.output_schema = json::parse(kJobOutputSchema);
  descriptor_.annotations = read_only();
}

asio::awaitable<ToolResult> GetJobTool::call(const json& args, CallContext& ctx) {
  std::string id = args["job_id"].get<std::string>();
  auto r = jobs_.get(ctx.project, id);
  if (!r) co_return ToolResult::failure(not_found(id));
  co_return job_result(*r);
}

// --- list_jobs -------------------------------------------------------------------------------

ListJobsTool::ListJobsTool(jobs::JobService& jobs) : jobs_(jobs) {
  descriptor_.name = "list_jobs";
  descriptor_.title = "List jobs";
  descriptor_.description =
      "This project's jobs, newest first, compact (id, name, site, state, reason, exit code, times). Filters: "
      "state, name (substring), site. Pass next_cursor back as cursor for the next page.";
  descriptor_.input_schema = json::parse(R"({
    "type": "object", "additionalProperties": false,
    "properties": {
      "state": {"type": "string", "enum": ["NEW", "QUEUED", "ACTIVE", "COMPLETED", "FAILED", "CANCELED"]},
      "name": {"type": "string", "maxLength": 128},
      "site": {"type": "string", "maxLength": 64},
      "limit": {"type": "integer", "minimum": 1, "maximum": 200},
      "cursor": {"type": "string", "maxLength": 31, "pattern": "^[0-9]{1,16}[.]j-[0-9a-f]{12}$"}
    }})");
  descriptor_.output_schema = json::parse(R"({"type": "object", "properties": {
      "jobs": {"type": "array"}, "next_cursor": {"type": ["string", "null"]}}, "required": ["jobs"]})");
  descriptor_.annotations = read_only();
}

asio::awaitable<ToolResult> ListJobsTool::call(const json& args, CallContext& ctx) {
  jobs::ListFilter f;
  if (auto it = args.find("state"); it != args.end()) f.state = jobs::parse_job_state(it->get<std::string>());
  if (auto it = args.find("name"); it != args.end()) f.name = it->get<std::string>();
  if (auto it = args.find("site"); it != args.end()) f.site = it->get<std::string>();
  if (auto it = args.find("limit"); it != args.end()) f.limit = it->get<std::size_t>();
  if (auto it = args.find("cursor"); it != args.end()) f.before = parse_keyset_cursor(it->get<std::string>());
  bool more = false;
  auto list = jobs_.list(ctx.project, f, &more);
  json out = json::object();
  json arr = json::array();
  std::string text;
  for (const auto& r : list) {
    arr.push_back(job_to_json(r, false));
    text += job_text(r) + "\n";
  }
  out["jobs"] = std::move(arr);
  out["next_cursor"] = next_keyset_cursor(list, more);
  if (text.empty()) text = "no jobs";
  co_return ToolResult::success(std::move(out), text);
}

// --- cancel_job ------------------------------------------------------------------------------

CancelJobTool::CancelJobTool(jobs::JobService& jobs) : jobs_(jobs) {
  descriptor_.name = "cancel_job";
  descriptor_.title = "Cancel a job";
  descriptor_.description =
      "Cancels a job of this project: a queued job never starts; a running one is stopped with all its "
      "processes. It pays for what it used. Cancelling a finished job changes nothing. The state becomes "
      "CANCELED within a poll interval (get_job or wait_job shows it).";
  descriptor_.input_schema = schema_with_job_id("{}", R"(["job_id"])");
  descriptor_.output_schema = json::parse(kJobOutputSchema);
  descriptor_.annotations = ToolAnnotations{.read_only = false, .destructive = true, .idempotent = true, .open_world = true};
}

asio::awaitable<ToolResult> CancelJobTool::call(const json& args, CallContext& ctx) {
  std::string id = args["job_id"].get<std::string>();
  auto r = co_await jobs_.cancel(ctx.project, id);
  if (auto* e = std::get_if<Error>(&r)) {
    if (e->code == ErrorCode::kNotFound) co_return ToolResult::failure(not_found(id));
    co_return ToolResult::failure(*e);
  }
  const JobRecord& rec = std::get<JobRecord>(r);
  json j = job_to_json(rec, true);
  j["cancel_requested"] = !jobs::is_final(rec.state);
  ctx.audit_fields["job_id"] = rec.id;
  co_return ToolResult::success(std::move(j), jobs::is_final(rec.state) ? job_text(rec) + " (already ended)"
                                                                        : "cancel requested for job " + rec.id);
}

// --- read_job_output -------------------------------------------------------------------------

ReadJobOutputTool::ReadJobOutputTool(jobs::JobService& jobs) : jobs_(jobs) {
  descriptor_.name = "read_job_output";
  descriptor_.title = "Read a job's output";
  descriptor_.description =
      "Reads a job's stdout or stderr: `offset` and `length` bytes, or the last `tail` bytes (at most 65536 per "
      "call). Says when more is left (size, next_offset) and when the output is not text.";
  descriptor_.input_schema = schema_with_job_id(R"({
      "stream": {"type": "string", "enum": ["stdout", "stderr"]},
      "offset": {"type": "integer", "minimum": 0},
      "length": {"type": "integer", "minimum": 1, "maximum": 65536},
      "tail": {"type": "integer", "minimum": 1, "maximum": 65536}})",
                                                R"(["job_id"])");
  descriptor_.output_schema = json::parse(R"({"type": "object", "properties": {
      "job_id": {"type": "string"}, "stream": {"type": "string"}, "offset": {"type": "integer"},
      "bytes": {"type": "integer"}, "size": {"type": "integer"}, "next_offset": {"type": "integer"},
      "truncated": {"type": "boolean"}, "binary": {"type": "boolean"}, "text": {"type": "string"}},
      "required": ["job_id", "stream", "text", "size"]})");
  descriptor_.annotations = read_only();
}

std::string ReadJobOutputTool::utf8_safe(std::string_view b, bool* binary, std::size_t* trimmed_front) {
  return scigate::utf8_safe(b, binary, trimmed_front);
}

asio::awaitable<ToolResult> ReadJobOutputTool::call(const json& args, CallContext& ctx) {
  std::string id = args["job_id"].get<std::string>();
  auto r = jobs_.get(ctx.project, id);
  if (!r) co_return ToolResult::failure(not_found(id));
  std::string stream = args.contains("stream") ? args["stream"].get<std::string>() : "stdout";
  if (args.contains("tail") && (args.contains("offset") || args.contains("length")))
    co_return ToolResult::failure(Error::invalid_arguments("give tail, or offset and length, not both"));
  const SiteConfig* site = jobs_.site(r->site);
  if (!site) co_return ToolResult::failure(not_found(id));
  // The job's directory belongs to the job's user: open it beneath the project's area and the
  // file without following links, so a job cannot point its output at someone else's file.
  auto area = jobs_.project_dir(*site, r->project);
  int afd = ::open(area.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int dfd = afd < 0 ? -1 : sandbox::open_beneath(afd, r->id.c_str());
  int fd = dfd < 0 ? -1 : ::openat(dfd, stream.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (afd >= 0) ::close(afd);
  if (dfd >= 0) ::close(dfd);
  json out = json::object();
  out["job_id"] = id;
  out["stream"] = stream;
  struct stat st{};
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
    if (fd >= 0) ::close(fd);
    out["offset"] = 0;
    out["bytes"] = 0;
    out["size"] = 0;
    out["text"] = "";
    out["truncated"] = false;
    out["binary"] = false;
    co_return ToolResult::success(std::move(out), r->state == JobState::kQueued || r->state == JobState::kNew
                                                      ? "the job has not started; no " + stream + " yet"
                                                      : "no " + stream + " for job " + id);
  }
  int64_t size = st.st_size;
  int64_t offset = 0, length = static_cast<int64_t>(kMaxBytes);
  if (args.contains("tail")) {
    int64_t tail = args["tail"].get<int64_t>();
    offset = std::max<int64_t>(0, size - tail);
    length = tail;
  } else {
    if (args.contains("offset")) offset = args["offset"].get<int64_t>();
    if (args.contains("length")) length = args["length"].get<int64_t>();
  }
  length = std::min<int64_t>(length, kMaxBytes);
  std::string buf;
  if (offset < size) {
    buf.resize(static_cast<std::size_t>(std::min<int64_t>(length, size - offset)));
    ssize_t n = ::pread(fd, buf.data(), buf.size(), offset);
    buf.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  }
  ::close(fd);
  bool binary = false;
  std::size_t front = 0;
  std::string text = utf8_safe(buf, &binary, &front);
  // What was returned ends where the UTF-8-safe text ends; the next read starts there.
  int64_t consumed = static_cast<int64_t>(buf.size());
  if (!binary) consumed = static_cast<int64_t>(front + text.size());
  int64_t next = offset + consumed;
  out["offset"] = offset + static_cast<int64_t>(front);
  out["bytes"] = consumed - static_cast<int64_t>(front);
  out["size"] = size;
  out["next_offset"] = next;
  out["truncated"] = next < size || offset > 0;
  out["binary"] = binary;
  out["text"] = text;
  std::string note;
  if (binary) note = "[the output is not UTF-8 text; invalid bytes are shown as U+FFFD]\n";
  if (next < size) note += "[truncated: " + std::to_string(size - next) + " more bytes from offset " + std::to_string(next) + "]\n";
  if (offset > 0) note += "[starts at byte " + std::to_string(offset + front) + " of " + std::to_string(size) + "]\n";
  co_return ToolResult::success(std::move(out), note + text);
}

// --- wait_job --------------------------------------------------------------------------------

WaitJobTool::WaitJobTool(jobs::JobService& jobs) : jobs_(jobs) {
  descriptor_.name = "wait_job";
  descriptor_.title = "Wait for a job";
  descriptor_.description =
      "Waits until a job of this project ends (COMPLETED, FAILED, CANCELED) or timeout_s passes (default 60), "
      "sending progress notifications with its state meanwhile; returns the job as get_job does, with final = false "
      "when it is still running. Clients with MCP tasks get a task to poll instead of a held connection, and may "
      "wait up to a day; an inline call also ends at the server's tool timeout.";
  descriptor_.input_schema = schema_with_job_id(R"({"timeout_s": {"type": "number", "minimum": 0, "maximum": 86400}})",
                                                R"(["job_id"])");
  descriptor_.output_schema = json::parse(kJobOutputSchema);
  descriptor_.annotations = read_only();
  descriptor_.task_support = TaskSupport::kOptional;
}

asio::awaitable<ToolResult> WaitJobTool::call(const json& args, CallContext& ctx) {
  std::string id = args["job_id"].get<std::string>();
  double timeout_s = args.contains("timeout_s") ? args["timeout_s"].get<double>() : 60.0;
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_s));
  // End a little before the pipeline's own deadline, so the caller gets the job (final = false)
  // rather than a timeout error.
  if (ctx.deadline.time_since_epoch().count() != 0 && ctx.deadline - std::chrono::milliseconds(500) < deadline)
    deadline = ctx.deadline - std::chrono::milliseconds(500);
  asio::steady_timer timer(co_await asio::this_coro::executor);
  int reports = 0;
  std::optional<JobState> last;
  auto last_report = std::chrono::steady_clock::now();
  for (;;) {
    auto r = jobs_.get(ctx.project, id);
    if (!r) co_return ToolResult::failure(not_found(id));
    auto now = std::chrono::steady_clock::now();
    if (jobs::is_final(r->state) || now >= deadline || ctx.cancelled()) co_return job_result(*r);
    if (!last || *last != r->state || now - last_report > std::chrono::seconds(5)) {
      ctx.progress.report(++reports, std::nullopt, "job " + id + " is " + std::string(jobs::to_string(r->state)));
      last = r->state;
      last_report = now;
    }
    timer.expires_after(std::min<std::chrono::steady_clock::duration>(std::chrono::milliseconds(100), deadline - now));
    co_await timer.async_wait(asio::use_awaitable);
  }
}

}  // namespace scigate::tools
