#include "connectors/scheduler/slurm/slurm_rest.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <exception>
#include <fstream>
#include <set>
#include <sstream>

#include "connectors/scheduler/slurm/slurm_common.hpp"
#include "server/auth/jwt.hpp"
#include "server/common/error.hpp"
#include "server/common/time_format.hpp"
#include "server/observability/log.hpp"

namespace scigate::jobs {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using nlohmann::json;
using namespace slurm;

namespace {

int64_t get_int(const json& j, const char* key, int64_t fallback = 0) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_number_integer() || it->is_number_unsigned()) return it->get<int64_t>();
  if (it->is_number_float()) return static_cast<int64_t>(it->get<double>());
  return fallback;
}

std::string get_string(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number()) return it->dump();
  return {};
}

std::optional<int64_t> unix_ms(const json& j, const char* key) {
  int64_t s = get_int(j, key);
  if (s <= 0) return std::nullopt;
  return s * 1000;
}

// The address (a socket path, a host:port inside the site) goes to the logs only: the caller
// is an agent, and the site's layout is none of its business.
Error unreachable(const std::string& where, const std::string& why) {
  return Error{ErrorCode::kBackendUnavailable, "the Slurm site is unavailable: slurmrestd " + why,
               "try again later; the site's slurmrestd may be down", "slurmrestd " + where + ": " + why};
}

bool error_code_is(const json& body, std::initializer_list<int64_t> codes, std::string_view text) {
  auto it = body.find("errors");
  if (it == body.end() || !it->is_array()) return false;
  for (const auto& e : *it) {
    if (!e.is_object()) continue;
    int64_t code = get_int(e, "error_code", get_int(e, "error_number", 0));
    for (auto c : codes)
      if (code == c) return true;
    if (get_string(e, "error").find(text) != std::string::npos ||
        get_string(e, "description").find(text) != std::string::npos)
      return true;
  }
  return false;
}

bool has_errors(const json& body) {
  auto it = body.find("errors");
  return it != body.end() && it->is_array() && !it->empty();
}

// ESLURM_INVALID_JOB_ID, ESLURM_ALREADY_DONE
constexpr int64_t kInvalidJobId = 2017;
constexpr int64_t kAlreadyDone = 2021;

template <class Stream>
asio::awaitable<SlurmRestScheduler::Reply> exchange(Stream& stream, http::request<http::string_body>& req,
                                                    std::size_t limit) {
  co_await http::async_write(stream, req, asio::use_awaitable);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(limit);
  co_await http::async_read(stream, buffer, parser, asio::use_awaitable);
  SlurmRestScheduler::Reply r;
  r.status = static_cast<int>(parser.get().result_int());
  r.raw = std::move(parser.get().body());
  r.body = json::parse(r.raw, nullptr, false);
  co_return r;
}

// What can be told about a slurmrestd JWT without the site's key. slurmctld answers an expired
// or malformed token by closing the connection, which slurmrestd 22.05 reports as 5005 "Zero
// Bytes were transmitted or received" -- what it also says when slurmctld's answer is lost
// mid-way, so a submit sent with such a token would look as if it might have been taken.
struct TokenCheck {
  std::string trouble;            // "" when nothing is wrong that can be seen
  std::optional<int64_t> exp_ms;  // its "exp"
};
TokenCheck check_token(const std::string& t, int64_t now_ms) {
  TokenCheck c;
  auto claims = auth::unverified_claims(t);
  if (!claims) {
    c.trouble = "is not a JWT";
    return c;
  }
  if (auto exp = claims->find("exp"); exp != claims->end() && exp->is_number()) {
    double e = exp->get<double>();
    if (!(e > 0 && e < 1e12)) {
      c.trouble = "has an exp that is not a time";
      return c;
    }
    c.exp_ms = static_cast<int64_t>(e) * 1000;
    // A minute's margin: slurmctld's clock may be ahead of ours, and a request takes time.
    constexpr int64_t kMarginMs = 60'000;
    if (*c.exp_ms <= now_ms) c.trouble = "expired at " + rfc3339_seconds(*c.exp_ms);
    else if (*c.exp_ms <= now_ms + kMarginMs) c.trouble = "expires at " + rfc3339_seconds(*c.exp_ms) + ", within a minute";
  }
  return c;
}

std::string trim_token(std::string s) {
  auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  s = s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
  if (s.rfind("SLURM_JWT=", 0) == 0) s = s.substr(10);
  return s;
}

}  // namespace

SlurmRestScheduler::SlurmRestScheduler(SlurmRestOptions options) : options_(std::move(options)) {
  if (options_.unix_socket.empty()) {
    // http://HOST:PORT[/]
    std::string u = options_.url;
    if (u.rfind("http://", 0) == 0) u = u.substr(7);
    if (auto slash = u.find('/'); slash != std::string::npos) u = u.substr(0, slash);
    auto colon = u.rfind(':');
    host_ = colon == std::string::npos ? u : u.substr(0, colon);
    port_ = colon == std::string::npos ? "6820" : u.substr(colon + 1);
  }
  if (options_.sacct) sacct_ = std::make_unique<SlurmCliScheduler>(*options_.sacct);
}

SlurmRestScheduler::~SlurmRestScheduler() = default;

std::string SlurmRestScheduler::path(const std::string& rest) const {
  return "/slurm/" + options_.api_version + rest;
}

std::string SlurmRestScheduler::token() {
  if (options_.token_file.empty()) return options_.token;
  std::lock_guard g(token_mutex_);
  std::error_code ec;
  auto mtime = std::filesystem::last_write_time(options_.token_file, ec);
  auto size = ec ? 0 : std::filesystem::file_size(options_.token_file, ec);
  if (ec) return token_cache_;  // keep the last good one while the file is being replaced
  if (token_cache_.empty() || mtime != token_mtime_ || size != token_size_) {
    std::ifstream in(options_.token_file);
    std::stringstream ss;
    ss << in.rdbuf();
    auto t = trim_token(ss.str());
    if (!t.empty()) {
      token_cache_ = std::move(t);
      token_mtime_ = mtime;
      token_size_ = size;
    }
  }
  return token_cache_;
}

asio::awaitable<SlurmRestScheduler::Reply> SlurmRestScheduler::request(std::string method, std::string target,
                                                                       std::string body, std::string user_name) {
  http::request<http::string_body> req;
  req.method(http::string_to_verb(method));
  req.target(target);
  req.version(11);
  req.set(http::field::host, options_.unix_socket.empty() ? host_ : std::string("localhost"));
  req.set(http::field::user_agent, "scigate");
  req.set(http::field::accept, "application/json");
  if (user_name.empty()) user_name = options_.user_name;
  if (!user_name.empty()) req.set("X-SLURM-USER-NAME", user_name);
  if (options_.unix_socket.empty()) {
    auto t = token();
    if (!t.empty()) {
      const int64_t now = unix_now_ms();
      TokenCheck c = check_token(t, now);
      if (!c.trouble.empty())  // refused here: sent, it would fail as an answer lost
        throw ErrorException(Error{ErrorCode::kBackendUnavailable,
                                   "the Slurm site is unavailable: the gateway's slurmrestd token " + c.trouble,
                                   "an operator must renew it (scontrol token username=<user> lifespan=<seconds>) in "
                                   "the site's token file; it is read again when the file changes",
                                   "token file: " + options_.token_file.string()});
      constexpr int64_t kDayMs = 86'400'000;
      if (c.exp_ms && *c.exp_ms - now < kDayMs && token_warned_exp_ms_.exchange(*c.exp_ms) != *c.exp_ms)
        log::warn("slurm_token_expiring", {{"url", options_.url}, {"expires", rfc3339_seconds(*c.exp_ms)},
                                           {"token_file", options_.token_file.string()}});
      req.set("X-SLURM-USER-TOKEN", t);
    }
  }
  ++requests_;  // past the token's check: this one goes out
  if (!body.empty() || method == "POST") {
    req.set(http::field::content_type, "application/json");
    req.body() = std::move(body);
  }
  req.prepare_payload();
  req.keep_alive(false);

  auto ex = co_await asio::this_coro::executor;
  std::string where = options_.unix_socket.empty() ? host_ + ":" + port_ : options_.unix_socket.string();
  std::string failure;
  bool connected = false;  // past this, a POST may have been received: its outcome is unknown
  try {
    if (!options_.unix_socket.empty()) {
      beast::basic_stream<asio::local::stream_protocol> stream(ex);
      stream.expires_after(options_.request_timeout);
      co_await stream.async_connect(asio::local::stream_protocol::endpoint(options_.unix_socket.string()),
                                    asio::use_awaitable);
      connected = true;
      auto r = co_await exchange(stream, req, options_.max_response);
      co_return r;
    } else {
      asio::ip::tcp::resolver resolver(ex);
      auto endpoints = co_await resolver.async_resolve(host_, port_, asio::use_awaitable);
      beast::basic_stream<asio::ip::tcp> stream(ex);
      stream.expires_after(options_.request_timeout);
      co_await stream.async_connect(endpoints, asio::use_awaitable);
      connected = true;
      auto r = co_await exchange(stream, req, options_.max_response);
      co_return r;
    }
  } catch (const boost::system::system_error& e) {
    if (e.code() == beast::error::timeout)
      failure = "did not answer within " + std::to_string(options_.request_timeout.count()) + " ms";
    else
      failure = "could not be reached (" + e.code().message() + ")";
  }
  if (connected && method == "POST") throw SubmitOutcomeUnknown(unreachable(where, failure));
  throw ErrorException(unreachable(where, failure));
}

json SlurmRestScheduler::submit_body(const JobSpec& spec) const {
  const auto& r = spec.resources;
  json job = json::object();
  job["name"] = !spec.name.empty() ? spec.name : !spec.gateway_id.empty() ? spec.gateway_id : "scigate";
  if (!spec.gateway_id.empty()) job["comment"] = spec.gateway_id;
  if (!spec.partition.empty()) job["partition"] = spec.partition;
  if (!spec.account.empty()) job["account"] = spec.account;
  job["nodes"] = json::array({r.nodes, r.nodes});
  job["tasks"] = r.tasks;
  job["cpus_per_task"] = r.cpus_per_task;
  if (r.gpus > 0) job["gpus_per_node"] = (r.gpu_type.empty() ? std::string() : r.gpu_type + ":") + std::to_string(r.gpus);
  if (r.memory_mb > 0) job["memory_per_node"] = r.memory_mb;
  job["time_limit"] = walltime_minutes(r.walltime);
  job["requeue"] = false;  // as sbatch --no-requeue: the ledger charges one run per job
  job["current_working_directory"] =
      (spec.working_directory.empty() ? options_.default_working_directory : spec.working_directory).string();
  if (!spec.stdout_path.empty()) job["standard_output"] = spec.stdout_path.string();
  if (!spec.stderr_path.empty()) job["standard_error"] = spec.stderr_path.string();
  json env = json::object();
  for (const auto& [k, v] : spec.environment) env[k] = v;
  if (!env.contains("PATH")) env["PATH"] = options_.job_path;
  job["environment"] = std::move(env);
  if (!spec.after_ok.empty()) {
    std::string dep = "afterok";
    for (const auto& id : spec.after_ok) dep += ":" + id;
    job["dependency"] = dep;
    job["kill_on_invalid_dependency"] = true;
  }
  json body = json::object();
  body["script"] = batch_script(spec);
  body["job"] = std::move(job);
  return body;
}

std::optional<JobStatus> SlurmRestScheduler::parse_job(const json& j) {
  if (!j.is_object()) return std::nullopt;
  JobStatus st;
  int64_t id = get_int(j, "job_id", -1);
  if (id < 0) return std::nullopt;
  st.native_id = std::to_string(id);
  if (!apply_state(st, get_string(j, "job_state"), get_string(j, "state_reason"))) st.state = JobState::kNew;
  bool started = st.state != JobState::kQueued && st.state != JobState::kNew;
  if (is_final(st.state) && j.contains("exit_code")) apply_wait_status(get_int(j, "exit_code"), st);
  st.submit_ms = unix_ms(j, "submit_time");
  if (started) st.start_ms = unix_ms(j, "start_time");
  if (is_final(st.state)) st.end_ms = unix_ms(j, "end_time");
  st.alloc_nodes = static_cast<int>(get_int(j, "node_count"));
  st.alloc_cpus = static_cast<int>(get_int(j, "cpus"));
  st.alloc_gpus = tres_gpus(get_string(j, "tres_alloc_str"), &st.gpu_type);
  st.name = get_string(j, "name");
  // v0.0.38 and older: "comment" is a string; from v0.0.39 an object with the user's in "job".
  if (auto c = j.find("comment"); c != j.end()) {
    if (c->is_string()) st.comment = c->get<std::string>();
    else if (c->is_object()) st.comment = get_string(*c, "job");
  }
  return st;
}

std::vector<JobStatus> SlurmRestScheduler::parse_jobs(const json& body) {
  std::vector<JobStatus> out;
  auto it = body.find("jobs");
  if (it == body.end() || !it->is_array()) return out;
  for (const auto& j : *it)
    if (auto st = parse_job(j)) out.push_back(std::move(*st));
  return out;
}

Error SlurmRestScheduler::error_from(int http_status, const json& body, const std::string& what) {
  std::string message;
  int64_t first_code = 0;
  if (auto it = body.find("errors"); it != body.end() && it->is_array()) {
    for (const auto& e : *it) {
      if (!e.is_object()) continue;
      std::string text = get_string(e, "description");
      std::string err = get_string(e, "error");
      if (text.empty()) text = err;
      else if (!err.empty() && text.find(err) == std::string::npos) text += " (" + err + ")";
      if (first_code == 0) first_code = get_int(e, "error_code", get_int(e, "error_number", 0));
      if (!text.empty() && message.find(text) == std::string::npos) message += (message.empty() ? "" : "; ") + text;
    }
  }
  if (message.size() > 1000) message = message.substr(0, 1000) + "...";
  std::string detail = what + ": HTTP " + std::to_string(http_status) + " " + body.dump(-1, ' ', false, json::error_handler_t::replace).substr(0, 2000);
  if (first_code >= 2000 && first_code < 3000)
    return Error{ErrorCode::kBackendRejected, "Slurm rejected the job: " + message,
                 "check the partition, account and resources against what the site offers", detail};
  if (message.empty()) message = http_status == 401 ? "authentication failed" : "HTTP " + std::to_string(http_status);
  return Error{ErrorCode::kBackendUnavailable, "the Slurm site is unavailable: slurmrestd refused " + what + " (" + message + ")",
               http_status == 401 || first_code == 5005 || first_code == -1
                   ? "the site's slurmrestd credentials (user name, JWT token) may be wrong or expired"
                   : "try again later",
               detail};
}

asio::awaitable<std::string> SlurmRestScheduler::submit(JobSpec spec) {
  check_spec(spec);
  prepare_job_directories(spec);
  std::string body = submit_body(spec).dump();
  auto r = co_await request("POST", path("/job/submit"), std::move(body), spec.run_as);
  int64_t id = r.body.is_object() ? get_int(r.body, "job_id", -1) : -1;
  if (r.status == 200 && id > 0 && !has_errors(r.body)) co_return std::to_string(id);
  if (r.body.is_discarded())
    throw SubmitOutcomeUnknown(Error{ErrorCode::kBackendUnavailable,
                                     "the Slurm site gave an unexpected answer to a submission", {},
                                     "HTTP " + std::to_string(r.status) + " " + r.raw.substr(0, 2000)});
  Error e = error_from(r.status, r.body, "the submission");
  if (e.code == ErrorCode::kBackendRejected) e.message = explain_rejection(e.message, batch_script(spec).size());
  // slurmrestd passed it on, and slurmctld's answer was lost on the way back.
  if (e.code == ErrorCode::kBackendUnavailable && answer_lost(e.message + e.detail)) throw SubmitOutcomeUnknown(std::move(e));
  throw ErrorException(std::move(e));
}

asio::awaitable<std::vector<JobStatus>> SlurmRestScheduler::poll(std::vector<std::string> native_ids) {
  std::set<std::string> wanted(native_ids.begin(), native_ids.end());
  if (wanted.empty()) co_return std::vector<JobStatus>{};
  auto r = co_await request("GET", path("/jobs"), {});
  if (r.status != 200 || r.body.is_discarded()) {
    Error e = r.body.is_discarded() ? unreachable(options_.unix_socket.empty() ? host_ + ":" + port_ : options_.unix_socket.string(),
                                                  "answered HTTP " + std::to_string(r.status) + " without JSON")
                                    : error_from(r.status, r.body, "the job list");
    e.code = ErrorCode::kBackendUnavailable;  // a listing can fail, never be "rejected"
    throw ErrorException(std::move(e));
  }
  std::vector<JobStatus> out;
  for (auto& st : parse_jobs(r.body))
    if (wanted.count(st.native_id)) out.push_back(std::move(st));
  co_return out;
}

asio::awaitable<void> SlurmRestScheduler::cancel(std::string native_id) {
  if (!valid_job_id(native_id))
    throw ErrorException(Error::invalid_arguments("'" + native_id + "' is not a Slurm job id"));
  auto r = co_await request("DELETE", path("/job/" + native_id), {});
  if (r.status == 200 && !has_errors(r.body)) co_return;
  // Cancelling what already ended (or was forgotten) is not an error.
  if (error_code_is(r.body, {kInvalidJobId, kAlreadyDone}, "already completing")) co_return;
  Error e = error_from(r.status, r.body, "the cancellation");
  if (e.code == ErrorCode::kBackendRejected) e.message = "Slurm refused to cancel job " + native_id + e.message.substr(e.message.find(':'));
  throw ErrorException(std::move(e));
}

asio::awaitable<std::map<std::string, std::string>> SlurmRestScheduler::find_submitted(std::vector<Submitted> jobs) {
  // slurmrestd cannot filter /jobs by name: one list of all jobs, read for the comments asked for.
  auto r = co_await request("GET", path("/jobs"), {});
  if (r.status != 200 || r.body.is_discarded()) {
    Error e = error_from(r.status, r.body.is_discarded() ? json::object() : r.body, "the job list");
    e.code = ErrorCode::kBackendUnavailable;
    throw ErrorException(std::move(e));
  }
  std::set<std::string> wanted;
  for (const auto& j : jobs) wanted.insert(j.gateway_id);
  std::map<std::string, std::string> found;
  for (const auto& st : parse_jobs(r.body))
    if (wanted.count(st.comment)) found.emplace(st.comment, st.native_id);  // the first of any twins
  co_return found;
}

asio::awaitable<std::vector<JobStatus>> SlurmRestScheduler::final_status(std::string native_id) {
  std::vector<JobStatus> out;
  if (!valid_job_id(native_id)) co_return out;
  auto r = co_await request("GET", path("/job/" + native_id), {});
  if (r.status == 200 && !r.body.is_discarded()) {
    for (auto& st : parse_jobs(r.body))
      if (st.native_id == native_id && is_final(st.state)) out.push_back(std::move(st));
  }
  // The completion log too: slurmctld may hold a later job under a reused id while the log
  // still has ours. The log's records (oldest first) come before the controller's (the newest).
  // A log that cannot be read leaves what slurmctld said, if it said anything.
  if (!sacct_) co_return out;
  std::vector<JobStatus> all;
  std::exception_ptr failed;
  try {
    all = co_await sacct_->final_status(native_id);
  } catch (const std::exception& e) {
    failed = std::current_exception();
    log::warn("slurm_sacct_failed", {{"job", native_id}, {"detail", std::string(e.what()).substr(0, 500)}});
  }
  if (failed && out.empty()) std::rethrow_exception(failed);
  for (auto& st : out) all.push_back(std::move(st));
  co_return all;
}

}  // namespace scigate::jobs
