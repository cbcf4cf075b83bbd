#include "connectors/quantum/ibm/ibm_runtime.hpp"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include "connectors/quantum/qasm/qasm_parser.hpp"
#include "server/common/time_format.hpp"

namespace scigate::quantum {
namespace asio = boost::asio;
using json = nlohmann::json;
using jobs::JobState;
using jobs::JobStatus;

namespace {

[[noreturn]] void fail(ErrorCode code, std::string message, std::string hint = {}, std::string detail = {}) {
  throw ErrorException(Error{code, std::move(message), std::move(hint), std::move(detail), 0});
}

std::string form_escape(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string trim_slash(std::string s) {
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

std::string read_key(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) fail(ErrorCode::kBackendUnavailable, "the quantum service's credentials are not readable on this server",
                "tell the operators", "cannot read " + file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  std::string k = ss.str();
  while (!k.empty() && std::isspace(static_cast<unsigned char>(k.back()))) k.pop_back();
  while (!k.empty() && std::isspace(static_cast<unsigned char>(k.front()))) k.erase(k.begin());
  if (k.empty()) fail(ErrorCode::kBackendUnavailable, "the quantum service's credentials are missing on this server",
                      "tell the operators", file.string() + " is empty");
  return k;
}

// The service's own words from an error body: {"errors": [{"message"}]} (runtime) or
// {"errorMessage"} (IAM); the raw text otherwise.
std::string service_message(const json& body, const std::string& raw) {
  if (body.is_object()) {
    if (auto e = body.find("errors"); e != body.end() && e->is_array() && !e->empty() && (*e)[0].is_object()) {
      const json& first = (*e)[0];
      if (first.contains("message") && first["message"].is_string()) return first["message"].get<std::string>();
    }
    if (body.contains("errorMessage") && body["errorMessage"].is_string()) return body["errorMessage"].get<std::string>();
    if (body.contains("message") && body["message"].is_string()) return body["message"].get<std::string>();
  }
  return raw.substr(0, 300);
}

int64_t parse_time_ms(const json& v) {
  if (!v.is_string()) return 0;
  std::tm tm{};
  const std::string& s = v.get_ref<const std::string&>();
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return 0;
  return static_cast<int64_t>(timegm(&tm)) * 1000;
}

http::Request make_request(const IbmRuntimeSiteConfig& o, std::string method, std::string url, std::string body) {
  http::Request r;
  r.method = std::move(method);
  r.url = std::move(url);
  r.body = std::move(body);
  r.timeout = o.request_timeout;
  r.connect_timeout = std::min(o.request_timeout, std::chrono::milliseconds(10'000));
  r.max_body = 256u << 20;  // results of 100k shots x several registers
  r.headers.push_back("Accept: application/json");
  return r;
}

json submit_body(const std::string& backend, const std::string& qasm3, int64_t shots) {
  json pub = json::array();
  pub.push_back(qasm3);
  pub.push_back(nullptr);
  pub.push_back(shots);
  json params = json::object();
  params["pubs"] = json::array({pub});
  params["version"] = 2;
  json body = json::object();
  body["program_id"] = "sampler";
  body["backend"] = backend;
  body["params"] = std::move(params);
  return body;
}

}  // namespace

IbmRuntimeScheduler::IbmRuntimeScheduler(IbmRuntimeSiteConfig options) : options_(std::move(options)) {
  options_.url = trim_slash(options_.url);
  options_.iam_url = trim_slash(options_.iam_url);
}

IbmRuntimeScheduler::~IbmRuntimeScheduler() = default;

asio::awaitable<std::string> IbmRuntimeScheduler::token(bool refresh) {
  {
    std::lock_guard g(mutex_);
    if (!refresh && !token_.empty() && std::chrono::steady_clock::now() < token_expiry_) co_return token_;
  }
  std::string key = read_key(options_.api_key_file);
  auto req = make_request(options_, "POST", options_.iam_url + "/identity/token",
                          "grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey=" + form_escape(key));
  req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
  http::Response r = co_await http_.perform(std::move(req));
  if (!r.error.empty())
    fail(ErrorCode::kBackendUnavailable, "the quantum service's sign-in (IBM Cloud IAM) cannot be reached",
         "retry later", r.error);
  json body = json::parse(r.body, nullptr, false);
  if (r.status != 200 || !body.is_object() || !body.contains("access_token") || !body["access_token"].is_string())
    fail(ErrorCode::kBackendUnavailable, "the quantum service refused this server's credentials",
         "tell the operators (the API key may be revoked)",
         "IAM answered " + std::to_string(r.status) + ": " + service_message(body, r.body));
  int64_t ttl = body.value("expires_in", int64_t{3600});
  std::string t = body["access_token"].get<std::string>();
  {
    std::lock_guard g(mutex_);
    token_ = t;
    // A minute of margin, so a token never expires between this check and the service's.
    token_expiry_ = std::chrono::steady_clock::now() + std::chrono::seconds(std::max<int64_t>(0, ttl - 60));
  }
  co_return t;
}

asio::awaitable<IbmRuntimeScheduler::Reply> IbmRuntimeScheduler::api(std::string method, std::string path,
                                                                     std::string body) {
  for (int attempt = 0;; ++attempt) {
    std::string bearer = co_await token(attempt > 0);
    auto req = make_request(options_, method, options_.url + path, body);
    req.headers.push_back("Authorization: Bearer " + bearer);
    req.headers.push_back("Service-CRN: " + options_.service_crn);
    req.headers.push_back("IBM-API-Version: " + options_.api_version);
    if (!body.empty()) req.headers.push_back("Content-Type: application/json");
    http::Response r = co_await http_.perform(std::move(req));
    if (!r.error.empty())
      fail(ErrorCode::kBackendUnavailable, "the quantum service " + options_.backend + " cannot be reached",
           "retry later or use the statevector simulator", method + " " + path + ": " + r.error);
    if (r.status == 401 && attempt == 0) continue;  // the token expired early or was revoked
    Reply out;
    out.status = r.status;
    out.raw = std::move(r.body);
    out.body = json::parse(out.raw, nullptr, false);
    if (out.status == 401 || out.status == 403)
      fail(ErrorCode::kBackendUnavailable, "the quantum service refused this server's credentials",
           "tell the operators (the instance CRN or the API key may be wrong)",
           method + " " + path + ": " + std::to_string(out.status) + " " + service_message(out.body, out.raw));
    if (out.status == 429 || out.status >= 500) {
      Error e{ErrorCode::kBackendUnavailable, "the quantum service " + options_.backend + " is busy or failing",
              "retry later", method + " " + path + ": " + std::to_string(out.status) + " " +
                                 service_message(out.body, out.raw), 0};
      if (out.status == 429) e.retry_after_ms = 60'000;
      throw ErrorException(std::move(e));
    }
    co_return out;
  }
}

DeviceTarget IbmRuntimeScheduler::parse_configuration(const std::string& name, const json& c) {
  DeviceTarget t;
  t.name = name;
  if (!c.is_object()) return t;
  t.num_qubits = c.value("n_qubits", 0);
  if (auto b = c.find("basis_gates"); b != c.end() && b->is_array())
    for (const auto& g : *b)
      if (g.is_string()) t.basis.insert(g.get<std::string>());
  if (auto m = c.find("coupling_map"); m != c.end() && m->is_array())
    for (const auto& e : *m)
      if (e.is_array() && e.size() == 2 && e[0].is_number_integer() && e[1].is_number_integer())
        t.coupling.insert({e[0].get<int>(), e[1].get<int>()});
  // Dynamic circuits: older configurations say "conditional"; newer ones list "if_else".
  bool if_else = false;
  if (auto s = c.find("supported_instructions"); s != c.end() && s->is_array())
    for (const auto& g : *s) if_else = if_else || (g.is_string() && g.get<std::string>() == "if_else");
  t.conditionals = c.value("conditional", false) || if_else;
  return t;
}

asio::awaitable<DeviceTarget> IbmRuntimeScheduler::target() {
  {
    std::lock_guard g(mutex_);
    if (target_ && std::chrono::steady_clock::now() - target_time_ < std::chrono::hours(1)) co_return *target_;
  }
  Reply r = co_await api("GET", "/v1/backends/" + options_.backend + "/configuration", "");
  if (r.status == 404)
    fail(ErrorCode::kBackendUnavailable, "the quantum service does not offer the device " + options_.backend,
         "tell the operators", service_message(r.body, r.raw));
  if (r.status != 200 || !r.body.is_object())
    fail(ErrorCode::kBackendUnavailable, "the quantum service did not describe the device " + options_.backend,
         "retry later", std::to_string(r.status) + " " + r.raw.substr(0, 200));
  DeviceTarget t = parse_configuration(options_.backend, r.body);
  {
    std::lock_guard g(mutex_);
    target_ = t;
    target_time_ = std::chrono::steady_clock::now();
  }
  co_return t;
}

asio::awaitable<std::string> IbmRuntimeScheduler::submit(jobs::JobSpec spec) {
  const json& p = spec.payload;
  if (!p.is_object() || !p.contains("qasm3") || !p["qasm3"].is_string() || !p.contains("shots"))
    fail(ErrorCode::kInvalidArguments, "a quantum device runs circuits: the job has none");
  const std::string& text = p["qasm3"].get_ref<const std::string&>();
  int64_t shots = p["shots"].get<int64_t>();
  if (shots < 1 || shots > options_.max_shots)
    fail(ErrorCode::kInvalidArguments,
         std::to_string(shots) + " shots: " + options_.backend + " takes 1 to " + std::to_string(options_.max_shots),
         "ask for at most " + std::to_string(options_.max_shots) + " shots");
  auto parsed = parse_qasm(text, QasmVersion::kV3, QasmLimits{});
  if (auto* e = std::get_if<Error>(&parsed)) throw ErrorException(*e);
  DeviceTarget t = co_await target();
  if (auto e = check_native(std::get<ParsedCircuit>(parsed).circuit, t)) throw ErrorException(*e);
  Reply r = co_await api("POST", "/v1/jobs", submit_body(options_.backend, text, shots).dump());
  if (r.status == 400 || r.status == 404 || r.status == 409 || r.status == 422)
    fail(ErrorCode::kBackendRejected, options_.backend + " refused the circuit: " + service_message(r.body, r.raw),
         r.status == 409 ? "the instance's usage limit is reached; ask the operators" : "");
  if (r.status / 100 != 2 || !r.body.is_object() || !r.body.contains("id") || !r.body["id"].is_string())
    fail(ErrorCode::kBackendUnavailable, "the quantum service gave no job id", "retry later",
         std::to_string(r.status) + " " + r.raw.substr(0, 200));
  co_return r.body["id"].get<std::string>();
}

std::optional<JobStatus> IbmRuntimeScheduler::parse_job(const json& j) {
  if (!j.is_object() || !j.contains("id") || !j["id"].is_string()) return std::nullopt;
  JobStatus s;
  s.native_id = j["id"].get<std::string>();
  std::string status;
  std::string reason;
  if (auto st = j.find("state"); st != j.end() && st->is_object()) {
    if (st->contains("status") && (*st)["status"].is_string()) status = (*st)["status"].get<std::string>();
    if (st->contains("reason") && (*st)["reason"].is_string()) reason = (*st)["reason"].get<std::string>();
  }
  if (status.empty() && j.contains("status") && j["status"].is_string()) status = j["status"].get<std::string>();
  s.native_state = status;
  s.reason = reason;
  std::string lower = status;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == "queued" || lower == "initializing") {
    s.state = JobState::kQueued;
  } else if (lower == "running" || lower == "validating") {
    s.state = JobState::kActive;
  } else if (lower == "completed") {
    s.state = JobState::kCompleted;
  } else if (lower == "failed") {
    s.state = JobState::kFailed;
    if (s.reason.empty()) s.reason = "the device reported a failure";
  } else if (lower.rfind("cancelled", 0) == 0) {
    // "Cancelled - Ran too long" is the service's own limit: a failure, not a user's cancel.
    bool too_long = lower.find("ran too long") != std::string::npos;
    s.state = too_long ? JobState::kFailed : JobState::kCanceled;
    if (too_long && s.reason.empty()) s.reason = "the job ran longer than the service allows";
  } else {
    s.state = JobState::kQueued;  // an unknown word: not final, keep polling
  }
  s.submit_ms = parse_time_ms(j.value("created", json()));
  if (s.submit_ms == 0) s.submit_ms.reset();
  return s;
}

std::optional<json> IbmRuntimeScheduler::counts_from_results(const std::string& body, std::string* why) {
  auto set_why = [&](std::string w) {
    if (why) *why = std::move(w);
    return std::nullopt;
  };
  // ordered_json: the registers come in the order the circuit declares them.
  auto doc = nlohmann::ordered_json::parse(body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("results") || !doc["results"].is_array() ||
      doc["results"].empty())
    return set_why("the results have no \"results\" list");
  const auto& data = doc["results"][0]["data"];
  if (!data.is_object()) return set_why("the first result has no \"data\"");
  std::vector<std::string> names;
  std::vector<std::vector<uint64_t>> values;
  std::vector<int> widths;
  std::size_t shots = 0;
  for (auto it = data.begin(); it != data.end(); ++it) {
    const auto& reg = it.value();
    if (!reg.is_object() || !reg.contains("samples") || !reg["samples"].is_array())
      return set_why("register " + it.key() + " has no samples");
    int width = reg.value("num_bits", 0);
    if (width < 0 || width > 64) return set_why("register " + it.key() + " has an unusable num_bits");
    std::vector<uint64_t> v;
    v.reserve(reg["samples"].size());
    for (const auto& h : reg["samples"]) {
      if (!h.is_string()) return set_why("a sample of " + it.key() + " is not a hex string");
      const std::string& s = h.get_ref<const std::string&>();
      std::size_t used = 0;
      uint64_t x = 0;
      try {
        x = std::stoull(s, &used, 16);
      } catch (...) {
        return set_why("sample \"" + s + "\" is not hexadecimal");
      }
      if (used != s.size()) return set_why("sample \"" + s + "\" is not hexadecimal");
      v.push_back(x);
    }
    if (!names.empty() && v.size() != shots) return set_why("registers have different numbers of samples");
    shots = v.size();
    names.push_back(it.key());
    values.push_back(std::move(v));
    widths.push_back(width);
  }
  std::map<std::string, int64_t> counts;
  std::string key;
  for (std::size_t s = 0; s < shots; ++s) {
    key.clear();
    for (std::size_t r = names.size(); r-- > 0;) {  // the last declared leftmost
      if (!key.empty()) key += ' ';
      for (int b = widths[r]; b-- > 0;) key += ((values[r][s] >> b) & 1) ? '1' : '0';
    }
    ++counts[key];
  }
  json out = json::object();
  json c = json::object();
  for (const auto& [k, n] : counts) c[k] = n;
  out["counts"] = std::move(c);
  out["registers"] = names;
  out["shots"] = shots;
  return out;
}

asio::awaitable<std::optional<JobStatus>> IbmRuntimeScheduler::status_of(std::string id) {
  Reply r = co_await api("GET", "/v1/jobs/" + id, "");
  if (r.status == 404) co_return std::nullopt;
  if (r.status != 200)
    fail(ErrorCode::kBackendUnavailable, "the quantum service did not say how job " + id + " is", "retry later",
         std::to_string(r.status) + " " + r.raw.substr(0, 200));
  auto s = parse_job(r.body);
  if (!s) co_return std::nullopt;
  if (s->state == JobState::kCompleted) {
    Reply res = co_await api("GET", "/v1/jobs/" + id + "/results", "");
    std::string why;
    std::optional<json> counts;
    if (res.status == 200) counts = counts_from_results(res.raw, &why);
    else why = "results answered " + std::to_string(res.status);
    if (!counts) {
      // A completed job without readable results is not a success the caller could use.
      s->state = JobState::kFailed;
      s->reason = "the device finished but its results could not be read: " + why;
    } else {
      json result = std::move(*counts);
      result["backend"] = options_.backend;
      result["native_job_id"] = id;
      if (r.body.contains("usage") && r.body["usage"].is_object() && r.body["usage"].contains("seconds"))
        result["quantum_seconds"] = r.body["usage"]["seconds"];
      s->result = std::move(result);
    }
  }
  co_return s;
}

asio::awaitable<std::vector<JobStatus>> IbmRuntimeScheduler::poll(std::vector<std::string> native_ids) {
  std::vector<JobStatus> out;
  for (auto& id : native_ids) {
    auto s = co_await status_of(id);
    if (s) out.push_back(std::move(*s));
  }
  co_return out;
}

asio::awaitable<void> IbmRuntimeScheduler::cancel(std::string native_id) {
  Reply r = co_await api("POST", "/v1/jobs/" + native_id + "/cancel", "");
  // 409: already final; 404: already gone. Cancelling a finished job is not an error.
  if (r.status / 100 == 2 || r.status == 409 || r.status == 404) co_return;
  fail(ErrorCode::kBackendUnavailable, "the quantum service did not cancel job " + native_id, "retry",
       std::to_string(r.status) + " " + service_message(r.body, r.raw));
}

asio::awaitable<std::vector<JobStatus>> IbmRuntimeScheduler::final_status(std::string native_id) {
  std::vector<JobStatus> out;
  if (auto st = co_await status_of(native_id)) out.push_back(std::move(*st));
  co_return out;
}

}  // namespace scigate::quantum
