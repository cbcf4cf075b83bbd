#include "connectors/inference/inference_service.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "connectors/http/body_stream.hpp"
#include "connectors/http/curl_client.hpp"
#include "connectors/registry/model_registry.hpp"
#include "server/common/time_format.hpp"
#include "server/observability/log.hpp"

namespace scigate::inference {
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {
constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t kMaxErrorBody = 64 * 1024;
constexpr std::size_t kStreamBuffer = 16u << 20;  // unread stream data before the reader is "behind"
constexpr std::size_t kStreamReadBuffer = 4096;   // libcurl's receive buffer for a stream

std::string read_secret(const InferenceBackendConfig& c, std::string* problem) {
  if (!c.api_key_env.empty()) {
    const char* v = std::getenv(c.api_key_env.c_str());
    if (!v || !*v) *problem = "environment variable " + c.api_key_env + " (its API key) is not set";
    return v ? std::string(v) : std::string();
  }
  if (c.api_key_file.empty()) return {};
  std::ifstream in(c.api_key_file);
  if (!in) {
    *problem = "cannot read its api_key_file " + c.api_key_file.string();
    return {};
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string key = ss.str();
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
  return key;
}

// 0.5 to 1.5, for spreading retries. One engine per thread, seeded once: constructing a
// std::random_device runs CPUID several times, which in a virtual machine traps to the hypervisor
// (about 20 us each time on the benchmark VM; bench/inference found it at 3% of the server's CPU
// when every call built one, retried or not).
double backoff_jitter() {
  thread_local std::mt19937 rng(std::random_device{}());
  return std::uniform_real_distribution<double>(0.5, 1.5)(rng);
}

std::chrono::milliseconds left(Deadline deadline) {
  if (deadline == Deadline::max()) return std::chrono::milliseconds::max();
  return std::max(std::chrono::milliseconds(1),
                  std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
}

bool content_type_is(const std::string& value, std::string_view type) {
  std::string v = value.substr(0, value.find(';'));
  while (!v.empty() && v.back() == ' ') v.pop_back();
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  return v == type;
}

// The request body as sent upstream: the caller's, with the model and the stream settings.
std::string upstream_body(const ChatCall& call, bool stream) {
  json body = call.body.is_object() ? call.body : json::object();
  body["model"] = call.model;
  if (stream) {
    body["stream"] = true;
    json opts = body.value("stream_options", json::object());
    if (!opts.is_object()) opts = json::object();
    opts["include_usage"] = true;  // the metering needs the backend's own count
    body["stream_options"] = std::move(opts);
  } else {
    body.erase("stream");
    body.erase("stream_options");
  }
  return body.dump();
}

// The ids a /v1/models answer lists (narrowed to `only` when set), with their context lengths.
// Not in the coroutine: GCC 12 mishandles range-for over json inside coroutines.
bool read_model_list(const std::string& text, const std::vector<std::string>& only, std::vector<std::string>* served,
                     std::map<std::string, int64_t>* max_len) {
  json body = json::parse(text, nullptr, false);
  if (!body.is_object() || !body.contains("data") || !body["data"].is_array()) return false;
  for (const auto& m : body["data"]) {
    if (!m.is_object() || !m.contains("id") || !m["id"].is_string()) continue;
    std::string id = m["id"].get<std::string>();
    // Not a name a caller could pass or a manifest describe: empty, control characters, or
    // longer than any model id (a misbehaving server; nothing of it reaches the registry).
    if (id.empty() || id.size() > 256 ||
        std::any_of(id.begin(), id.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; }))
      continue;
    if (!only.empty() && std::find(only.begin(), only.end(), id) == only.end()) continue;
    served->push_back(id);
    // vLLM: max_model_len; llama.cpp: meta.n_ctx_train.
    if (m.contains("max_model_len") && m["max_model_len"].is_number_integer())
      (*max_len)[id] = m["max_model_len"].get<int64_t>();
    else if (m.contains("meta") && m["meta"].is_object() && m["meta"].contains("n_ctx_train") &&
             m["meta"]["n_ctx_train"].is_number_integer())
      (*max_len)[id] = m["meta"]["n_ctx_train"].get<int64_t>();
  }
  return true;
}

// A whole (non-streamed) answer into the outcome: its text and finish reason for a chat, usage.
void take_answer(ChatOutcome& out, json answer, bool chat) {
  if (chat) {
    ChunkDelta d = answer_delta(answer);
    out.text = d.text;
    out.finish_reason = d.finish_reason;
  }
  out.usage = parse_usage(answer);
  out.response = std::move(answer);
}

// A JSON answer's body; discarded when the answer is not JSON (an HTML error page).
json parse_json_answer(const http::Response& resp) {
  if (!content_type_is(resp.header("content-type"), "application/json")) return json(json::value_t::discarded);
  return json::parse(resp.body, nullptr, false);
}

json tokenize_body(const std::string& flavor, const std::string& model, const json& input) {
  json body = json::object();
  if (flavor == "llamacpp") {
    std::string text;
    if (input.is_string()) {
      text = input.get<std::string>();
    } else if (input.is_array()) {
      for (const auto& m : input)
        if (m.is_object() && m.contains("content") && m["content"].is_string())
          text += (text.empty() ? "" : "\n") + m["content"].get<std::string>();
    }
    body["content"] = text;
    return body;
  }
  body["model"] = model;
  if (input.is_array()) body["messages"] = input;
  else body["prompt"] = input.is_string() ? input.get<std::string>() : input.dump();
  return body;
}

}  // namespace

struct InferenceService::Backend {
  InferenceBackendConfig cfg;
  // Guarded by InferenceService::m_:
  std::string api_key;
  bool healthy = true;  // until a health round says otherwise
  bool checked = false;
  std::vector<std::string> served;
  std::map<std::string, int64_t> max_len;
  std::vector<std::string> uncatalogued;  // served ids no manifest describes, as last logged (poller only)
  int in_flight = 0;
  int failures = 0;            // consecutive
  Clock::time_point open_until{};  // breaker open until then
  bool trial_in_flight = false;    // half-open: the one trial call
  std::string last_error;
};

struct InferenceService::Lease {
  InferenceService* service = nullptr;
  Backend* backend = nullptr;
  bool trial = false;
  Lease(InferenceService* s, Backend* b, bool t) : service(s), backend(b), trial(t) {}
  Lease(Lease&& o) noexcept : service(o.service), backend(o.backend), trial(o.trial) { o.backend = nullptr; }
  Lease& operator=(Lease&&) = delete;
  ~Lease() {
    if (!backend) return;
    std::lock_guard g(service->m_);
    backend->in_flight--;
    if (trial) backend->trial_in_flight = false;
  }
};

struct InferenceService::Try {
  explicit Try(ChatOutcome& o) : out(o) {}
  ChatOutcome& out;
  bool ok = false;
  bool retryable = false;
  bool backend_fault = false;  // counts against the backend's breaker
  Error error;

  void fail(ErrorCode code, std::string message, std::string hint, bool retry, bool fault) {
    error = Error{code, std::move(message), std::move(hint), {}};
    retryable = retry;
    backend_fault = fault;
  }
};

namespace {

// An HTTP error answer from a backend, as the caller should see it.
void classify(InferenceService::Try& t, const std::string& backend, long status, const std::string& body) {
  auto upstream = parse_error_text(body);
  std::string said = upstream ? upstream->message : body.substr(0, 300);
  if (status >= 500 || status == 429) {
    std::string what = status == 503 ? " is unavailable (" + std::to_string(status) + ")" : " failed with HTTP " + std::to_string(status);
    t.fail(ErrorCode::kBackendUnavailable, "inference backend " + backend + what + (said.empty() ? "" : ": " + said),
           "retry shortly; the backend may be loading the model or overloaded", true, status != 429);
    return;
  }
  if (status == 401 || status == 403) {
    t.fail(ErrorCode::kBackendUnavailable, "inference backend " + backend + " refused scigate's credentials",
           "this is a server configuration problem; tell the operators", true, true);
    return;
  }
  if (status == 404) {
    t.fail(ErrorCode::kBackendUnavailable, "inference backend " + backend + " does not serve this model now" +
                                               (said.empty() ? "" : ": " + said),
           "query_model_registry with served_now = true lists the models you can call", true, false);
    return;
  }
  t.fail(ErrorCode::kBackendRejected,
         "the model server rejected the request (HTTP " + std::to_string(status) + ")" + (said.empty() ? "" : ": " + said),
         "change the request as the message says (shorter prompt, smaller max_tokens, valid parameters)", false, false);
}

}  // namespace

InferenceService::InferenceService(const InferenceConfig& config, registry::ModelRegistry* registry)
    : config_(config), registry_(registry) {
  for (const auto& c : config_.backends) {
    auto b = std::make_unique<Backend>();
    b->cfg = c;
    std::string problem;
    b->api_key = read_secret(c, &problem);
    if (!problem.empty()) log::warn("inference_backend_key", {{"backend", c.id}, {"detail", problem}});
    b->served = c.models;  // until its /v1/models says
    backends_.push_back(std::move(b));
  }
  // Before the first call: a call priced with the default resources while the catalog names
  // others would be charged (or not) at the wrong price.
  if (registry_) {
    try {
      terms_ = registry_->terms_now();
    } catch (const std::exception& e) {
      log::warn("inference_registry_sync_failed", {{"detail", std::string("model rates: ") + e.what()}});
    }
  }
}

InferenceService::~InferenceService() { stop(); }

void InferenceService::start(asio::io_context& io) {
  io_ = &io;
  // Driven by the I/O threads' reactor: a call's request and answer stay on the thread that
  // serves it (its callbacks only buffer and ring; nothing in them blocks).
  if (!client_ && !stopping_->load()) client_ = std::make_unique<http::CurlClient>(io.get_executor());
  if (backends_.empty() && !registry_) return;
  // The loop catches what one round throws; should it still end by an exception, say so (with
  // asio::detached, health checks and availability stopped for good without a word).
  asio::co_spawn(io, poll_loop(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log::error("inference_health_loop_ended", {{"detail", ex.what()}});
    }
  });
}

void InferenceService::stop() {
  stopping_->store(true);
  client_.reset();  // cancels what is in flight (before the io_context goes: it is driven by it)
}

asio::awaitable<void> InferenceService::poll_loop() {
  auto stopping = stopping_;
  asio::steady_timer timer(co_await asio::this_coro::executor);
  if (registry_) {
    std::vector<std::string> ids;
    for (const auto& b : backends_) ids.push_back(b->cfg.id);
    try {
      if (auto n = co_await registry_->retain_backends(std::move(ids)))
        log::info("inference_registry_forgot_backends", {{"rows", n}, {"detail", "backends no longer configured"}});
    } catch (const std::exception& e) {
      log::warn("inference_registry_sync_failed", {{"detail", e.what()}});
    }
  }
  while (!stopping->load()) {
    co_await refresh();
    if (stopping->load()) co_return;
    timer.expires_after(config_.health_interval);
    co_await timer.async_wait(kAwait);
  }
}

asio::awaitable<void> InferenceService::refresh() {
  if (registry_) {
    try {
      registry::ModelRegistry::Terms terms = co_await registry_->terms();
      std::lock_guard g(m_);
      terms_ = std::move(terms);
    } catch (const std::exception& e) {  // the last rates read stay
      log::warn("inference_registry_sync_failed", {{"detail", std::string("model rates: ") + e.what()}});
    }
  }
  for (auto& b : backends_) {
    if (stopping_->load()) co_return;
    // One backend's failed round (the database locked for a while, say) must not end the loop:
    // the next round retries it.
    try {
      co_await check(*b);
    } catch (const std::exception& e) {
      log::warn("inference_health_check_failed", {{"backend", b->cfg.id}, {"detail", e.what()}});
    }
  }
}

asio::awaitable<void> InferenceService::check(Backend& b) {
  if (!client_) co_return;
  auto stopping = stopping_;
  std::string problem;
  std::string key = read_secret(b.cfg, &problem);  // re-read: keys rotate
  http::Request r;
  r.url = b.cfg.url + "/health";
  if (!key.empty()) r.headers.push_back("Authorization: Bearer " + key);
  r.connect_timeout = b.cfg.connect_timeout;
  r.timeout = b.cfg.connect_timeout + std::chrono::seconds(5);
  r.max_body = 1 << 20;
  http::Response health = co_await client_->perform(r);
  if (stopping->load()) co_return;
  std::string error;
  std::vector<std::string> served;
  std::map<std::string, int64_t> max_len;
  if (!health.ok()) {
    auto upstream = parse_error_text(health.body);
    error = !health.error.empty() ? "cannot reach it: " + health.error
                                  : "/health answered " + std::to_string(health.status) +
                                        (upstream ? ": " + upstream->message : std::string());
  } else {
    r.url = b.cfg.url + "/v1/models";
    // A server with many LoRA adapters lists thousands of models: more than /health's limit.
    r.max_body = 16 << 20;
    http::Response models = co_await client_->perform(r);
    if (stopping->load()) co_return;
    if (!models.ok() || !read_model_list(models.body, b.cfg.models, &served, &max_len))
      error = !models.error.empty() ? "/v1/models: " + models.error
                                    : "/v1/models answered " + std::to_string(models.status) + " without a model list";
  }
  bool was_healthy;
  {
    std::lock_guard g(m_);
    was_healthy = b.healthy || !b.checked;
    b.checked = true;
    b.api_key = key;
    b.healthy = error.empty();
    b.last_error = error;
    if (error.empty()) {
      b.served = served;
      b.max_len = max_len;
    }
  }
  if (!error.empty() && was_healthy)
    log::warn("inference_backend_down", {{"backend", b.cfg.id}, {"detail", error}});
  else if (error.empty() && !was_healthy)
    log::info("inference_backend_up", {{"backend", b.cfg.id}, {"models", served.size()}});
  if (registry_) {
    std::vector<std::string> now_served;  // nothing while it is down
    if (error.empty()) now_served = served;
    std::vector<std::string> unknown = co_await registry_->set_served(b.cfg.id, std::move(now_served), unix_now_ms());
    std::sort(unknown.begin(), unknown.end());
    // Said once, and again when the set changes: not every health round (a backend serving
    // thousands of uncatalogued adapters would fill the log).
    if (!unknown.empty() && unknown != b.uncatalogued) {
      json ids = json::array();
      for (std::size_t i = 0; i < unknown.size() && i < 20; ++i) ids.push_back(unknown[i]);
      log::info("inference_model_not_in_catalog",
                {{"backend", b.cfg.id}, {"models", ids}, {"count", unknown.size()},
                 {"detail", "served but described by no manifest (scigate models import)"}});
    }
    if (error.empty()) b.uncatalogued = std::move(unknown);
  }
}

bool InferenceService::serves(const std::string& model) const {
  std::lock_guard g(m_);
  for (const auto& b : backends_)
    if (std::find(b->served.begin(), b->served.end(), model) != b->served.end()) return true;
  return false;
}

std::vector<std::string> InferenceService::served_models() const {
  std::lock_guard g(m_);
  std::vector<std::string> out;
  for (const auto& b : backends_) {
    if (b->checked && !b->healthy) continue;  // down: what it served is not served now (as in the registry)
    for (const auto& m : b->served)
      if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
  }
  std::sort(out.begin(), out.end());
  return out;
}

TokenResources InferenceService::token_resources(const std::string& model) const {
  TokenResources r{"tokens_in:" + model, "tokens_out:" + model};
  std::lock_guard g(m_);
  if (auto it = terms_.find(model); it != terms_.end()) {
    const auto& rates = it->second.rates;
    if (auto in = rates.find("tokens_in"); in != rates.end()) r.in = in->second;
    if (auto out = rates.find("tokens_out"); out != rates.end()) r.out = out->second;
  }
  return r;
}

std::optional<std::string> InferenceService::modality(const std::string& model) const {
  std::lock_guard g(m_);
  if (auto it = terms_.find(model); it != terms_.end()) return it->second.modality;
  return std::nullopt;
}

std::optional<int64_t> InferenceService::max_model_len(const std::string& model) const {
  std::lock_guard g(m_);
  std::optional<int64_t> best;
  for (const auto& b : backends_)
    if (auto it = b->max_len.find(model); it != b->max_len.end()) best = std::max(best.value_or(0), it->second);
  return best;
}

std::vector<BackendView> InferenceService::backends() const {
  std::lock_guard g(m_);
  std::vector<BackendView> out;
  auto now = Clock::now();
  for (const auto& b : backends_) {
    BackendView v;
    v.id = b->cfg.id;
    v.url = b->cfg.url;
    v.flavor = b->cfg.flavor;
    v.gpu_type = b->cfg.gpu_type;
    v.healthy = b->healthy;
    v.breaker = b->open_until > now ? "open" : b->failures >= config_.breaker_failures ? "half-open" : "closed";
    v.in_flight = b->in_flight;
    v.max_concurrency = b->cfg.max_concurrency;
    v.served = b->served;
    v.last_error = b->last_error;
    out.push_back(std::move(v));
  }
  return out;
}

// --- routing ---------------------------------------------------------------------------------

std::optional<InferenceService::Lease> InferenceService::try_acquire(const std::string& model,
                                                                     const std::vector<std::string>& tried, Error* why,
                                                                     bool* full) {
  std::lock_guard g(m_);
  auto now = Clock::now();
  Backend* best = nullptr;
  bool best_trial = false;
  double best_score = 0;
  bool any_serving = false, any_full = false;
  Clock::time_point soonest = Clock::time_point::max();
  std::string last_error;
  for (int pass = 0; pass < 2 && !best; ++pass) {
    // Pass 0: replicas this call has not tried yet; pass 1: any (retry the same one).
    for (auto& bp : backends_) {
      Backend& b = *bp;
      if (std::find(b.served.begin(), b.served.end(), model) == b.served.end()) continue;
      any_serving = true;
      bool was_tried = std::find(tried.begin(), tried.end(), b.cfg.id) != tried.end();
      if (pass == 0 && was_tried) continue;
      if (!b.last_error.empty()) last_error = b.cfg.id + ": " + b.last_error;
      bool trial = false;
      if (b.open_until > now) {
        soonest = std::min(soonest, b.open_until);
        continue;
      }
      if (b.failures >= config_.breaker_failures) {  // cooled down: half-open, one trial at a time
        if (b.trial_in_flight) continue;
        trial = true;
      }
      if (b.in_flight >= b.cfg.max_concurrency) {
        any_full = true;
        continue;
      }
      // Healthy first, then the most free capacity.
      double score = (b.healthy ? 0.0 : 1.0) + static_cast<double>(b.in_flight) / b.cfg.max_concurrency;
      if (!best || score < best_score) {
        best = &b;
        best_score = score;
        best_trial = trial;
      }
    }
  }
  if (best) {
    best->in_flight++;
    if (best_trial) best->trial_in_flight = true;
    return Lease(this, best, best_trial);
  }
  if (!any_serving) {
    *why = Error{ErrorCode::kNotFound, "model " + model + " is not served by any inference backend now",
                 "query_model_registry with served_now = true lists the models you can call", {}};
  } else if (any_full) {
    *full = true;
    *why = Error{ErrorCode::kBackendUnavailable, "every backend serving " + model + " is at its concurrency limit",
                 "retry in a moment", {}};
    why->retry_after_ms = 1000;
  } else {
    *why = Error{ErrorCode::kBackendUnavailable,
                 "every backend serving " + model + " is failing" + (last_error.empty() ? "" : " (" + last_error + ")"),
                 "retry later; the operators have been told by the server's logs", {}};
    if (soonest != Clock::time_point::max())
      why->retry_after_ms = std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(soonest - now).count());
  }
  return std::nullopt;
}

asio::awaitable<std::optional<InferenceService::Lease>> InferenceService::acquire(const std::string& model,
                                                                                const std::vector<std::string>& tried,
                                                                                Deadline deadline, Error* why) {
  const auto give_up = std::min(deadline, Clock::now() + config_.queue_timeout);
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    bool full = false;
    auto lease = try_acquire(model, tried, why, &full);
    if (lease) co_return lease;
    // Only a full house is worth waiting for; slots free up within milliseconds.
    if (!full || Clock::now() >= give_up) co_return std::nullopt;
    timer.expires_after(std::chrono::milliseconds(5));
    auto [ec] = co_await timer.async_wait(kAwait);
    if (ec == asio::error::operation_aborted) {
      *why = Error{ErrorCode::kCancelled, "cancelled", {}, {}};
      co_return std::nullopt;
    }
  }
}

void InferenceService::record(Backend& b, bool ok, const std::string& error) {
  std::lock_guard g(m_);
  if (ok) {
    b.failures = 0;
    b.open_until = {};
    return;
  }
  b.failures++;
  b.last_error = error;
  if (b.failures >= config_.breaker_failures) {
    if (b.open_until <= Clock::now())
      log::warn("inference_breaker_open", {{"backend", b.cfg.id}, {"failures", b.failures}, {"detail", error}});
    b.open_until = Clock::now() + config_.breaker_cooldown;
  }
}

// --- calls -----------------------------------------------------------------------------------

asio::awaitable<ChatOutcome> InferenceService::chat(ChatCall call, const ChunkSink& sink) {
  Kind kind = call.stream ? Kind::kChatStream : Kind::kChatJson;
  co_return co_await this->call(kind, std::move(call), &sink);
}

asio::awaitable<ChatOutcome> InferenceService::embed(std::string model, json body, Deadline deadline) {
  ChatCall c;
  c.model = std::move(model);
  c.body = std::move(body);
  c.stream = false;
  c.deadline = deadline;
  co_return co_await call(Kind::kEmbed, std::move(c), static_cast<const ChunkSink*>(nullptr));
}

asio::awaitable<ChatOutcome> InferenceService::call(Kind kind, ChatCall call, const ChunkSink* sink) {
  ChatOutcome out;
  if (!client_) {
    out.error = Error{ErrorCode::kBackendUnavailable, "the inference service is not running (starting or shutting down)",
                      "retry later", {}};
    co_return out;
  }
  std::vector<std::string> tried;
  for (int attempt = 0;; ++attempt) {
    Error why;
    auto lease = co_await acquire(call.model, tried, call.deadline, &why);
    if (!lease) {
      if (why.code == ErrorCode::kCancelled) out.cancelled = true;
      else if (!out.error) out.error = why;  // the last attempt's own error says more
      co_return out;
    }
    Backend& b = *lease->backend;
    out.backend = b.cfg.id;
    out.attempts++;
    Try t(out);
    if (kind == Kind::kChatStream) co_await stream_once(b, call, *sink, t);
    else co_await json_once(b, kind, call, t);
    if (out.cancelled) co_return out;
    if (t.ok) {
      record(b, true, {});
      out.error.reset();
      co_return out;
    }
    if (t.backend_fault) record(b, false, t.error.message);
    out.error = t.error;
    tried.push_back(b.cfg.id);
    if (!t.retryable || out.delivered || attempt >= config_.retries || Clock::now() >= call.deadline) co_return out;
    lease.reset();  // free the slot while backing off
    auto base = config_.retry_backoff * (1 << std::min(attempt, 10));
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(base * backoff_jitter());
    if (Clock::now() + wait >= call.deadline) co_return out;
    asio::steady_timer timer(co_await asio::this_coro::executor, wait);
    auto [ec] = co_await timer.async_wait(kAwait);
    if (ec == asio::error::operation_aborted) {
      out.cancelled = true;
      co_return out;
    }
    log::debug("inference_retry", {{"backend", b.cfg.id}, {"attempt", attempt + 1}, {"detail", t.error.message}});
  }
}

namespace {

http::Request base_request(const InferenceService::Backend& b, const std::string& key, const std::string& path,
                           std::string body, Deadline deadline);

// Reads a chat stream's events into the outcome and hands each chunk to the sink. A plain
// object, not a lambda in the coroutine: GCC 12 mishandles lambdas capturing coroutine locals.
struct StreamReader {
  StreamReader(ChatOutcome& o, const ChunkSink& s) : out(o), sink(s) {}
  ChatOutcome& out;
  const ChunkSink& sink;
  SseParser parser;
  std::vector<SseEvent> events;
  bool done = false;
  std::optional<UpstreamError> error;

  // False when an event is larger than the parser's limit.
  bool feed(const std::string& bytes) {
    events.clear();
    if (!parser.feed(bytes, &events)) return false;
    for (auto& e : events) {
      if (done || error) break;
      if (e.error) {  // llama.cpp: an error found after the stream began (context too long)
        auto err = parse_error_text(e.data);
        error = err ? *err : UpstreamError{e.data.substr(0, 300), "", 0};
        break;
      }
      if (e.data == "[DONE]") {
        done = true;
        break;
      }
      json chunk = json::parse(e.data, nullptr, false);
      if (chunk.is_discarded()) continue;  // a keep-alive or junk line: not ours to judge
      if (!chunk.contains("choices")) {  // (a chunk with choices is never an error: no need to look)
        if (auto err = parse_error(chunk)) {
          error = err;
          break;
        }
      }
      ChunkDelta d = chunk_delta(chunk);
      out.text += d.text;
      if (!d.finish_reason.empty()) out.finish_reason = d.finish_reason;
      if (d.has_content) out.content_chunks++;
      if (auto u = parse_usage(chunk)) out.usage = u;
      if (sink) sink(chunk);
      out.delivered = true;
    }
    return true;
  }
};

// Stops a stream whose first byte is late; holds the token, not the stream, so it may fire after.
struct FirstTokenWatch {
  std::shared_ptr<http::CancelToken> token;
  std::shared_ptr<bool> missed;
  void operator()(const boost::system::error_code& ec) const {
    if (ec) return;
    *missed = true;
    token->cancel();
  }
};

}  // namespace

asio::awaitable<void> InferenceService::stream_once(Backend& b, const ChatCall& call, const ChunkSink& sink, Try& t) {
  ChatOutcome& out = t.out;
  std::string key;
  {
    std::lock_guard g(m_);
    key = b.api_key;
  }
  http::Request r = base_request(b, key, call.completions ? "/v1/completions" : "/v1/chat/completions",
                                 upstream_body(call, true), call.deadline);
  r.headers.push_back("Accept: text/event-stream");
  const std::chrono::milliseconds limit = r.timeout;  // the whole exchange's, for the message
  r.max_body = kStreamBuffer;
  // An event is a few hundred bytes and arrives as the model makes it: 4 KiB reads take a burst
  // of them at once, for a quarter of libcurl's default buffer per stream (bench/inference:
  // 1,000 concurrent streams).
  r.buffer_size = kStreamReadBuffer;
  auto ex = co_await asio::this_coro::executor;
  http::BodyStream s(*client_, std::move(r), ex);

  // The first byte of the answer, within the first-token limit: a timer that stops the
  // exchange (not `next() || timer`: GCC 12 miscompiles that nested in the pipeline's own `||`).
  // When what is left of the call is shorter than the first-token limit, the timer is the
  // call's own deadline: running out of it is a timeout, not a backend that failed to start.
  const Clock::duration call_left = left(call.deadline);
  const bool deadline_first = call_left < b.cfg.first_token_timeout;
  asio::steady_timer first(ex, std::min<Clock::duration>(b.cfg.first_token_timeout, call_left));
  auto first_missed = std::make_shared<bool>(false);
  first.async_wait(FirstTokenWatch{s.cancel_token(), first_missed});
  std::optional<std::string> piece = co_await s.next();
  first.cancel();
  if (!piece && *first_missed && deadline_first) {
    t.fail(ErrorCode::kTimeout,
           "inference backend " + b.cfg.id + " sent nothing before the call's time limit (" +
               std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(call_left).count()) + " ms left)",
           "retry with a longer time limit, or later", false, false);
    co_return;
  }
  if (!piece && *first_missed) {
    t.fail(ErrorCode::kBackendUnavailable,
           "inference backend " + b.cfg.id + " sent nothing within " +
               std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(b.cfg.first_token_timeout).count()) + " ms",
           "retry later, or with a shorter prompt", true, true);
    co_return;
  }
  if (!piece) {  // over without a body
    const http::Response& resp = s.response();
    if (resp.cancelled) {
      out.cancelled = true;
    } else if (resp.timed_out && !resp.connect_failed) {  // also after a 200's headers: the stream never began
      // The call's limit, not the backend's fault (docs/INFERENCE.md: timeouts do not count
      // against the breaker).
      t.fail(ErrorCode::kTimeout,
             "inference backend " + b.cfg.id + " did not answer within " + std::to_string(limit.count()) + " ms",
             "retry later, or raise the call's time limit", false, false);
    } else if (resp.status == 0) {
      t.fail(ErrorCode::kBackendUnavailable, "cannot reach inference backend " + b.cfg.id + ": " + resp.error,
             "retry shortly", true, true);
    } else if (resp.status == 200) {  // a success with nothing in it: the backend is broken, not the request
      t.fail(ErrorCode::kBackendUnavailable, "inference backend " + b.cfg.id + " answered 200 with an empty body",
             "retry shortly", true, true);
    } else {
      classify(t, b.cfg.id, resp.status, "");
    }
    co_return;
  }
  const long status = s.status();
  const std::string ctype = s.header("content-type");
  if (status != 200 || content_type_is(ctype, "application/json")) {
    // An error answer, or a server that ignored "stream": read the whole (bounded) body.
    std::string body = std::move(*piece);
    while (auto more = co_await s.next()) {
      if (body.size() < kMaxErrorBody || status == 200) body += *more;
    }
    if (s.response().cancelled) {
      out.cancelled = true;
      co_return;
    }
    if (status != 200) {
      classify(t, b.cfg.id, status, body);
      co_return;
    }
    json j = json::parse(body, nullptr, false);
    if (auto e = j.is_discarded() ? std::nullopt : parse_error(j)) {
      t.fail(ErrorCode::kBackendUnavailable, "inference backend " + b.cfg.id + " failed: " + e->message, "retry shortly",
             true, true);
      co_return;
    }
    if (j.is_discarded()) {
      t.fail(ErrorCode::kBackendUnavailable, "inference backend " + b.cfg.id + " sent an answer that is not JSON",
             "retry shortly", true, true);
      co_return;
    }
    take_answer(out, std::move(j), true);
    t.ok = true;
    co_return;
  }
  if (!content_type_is(ctype, "text/event-stream")) {
    s.cancel();
    t.fail(ErrorCode::kBackendUnavailable,
           "inference backend " + b.cfg.id + " answered " +
               (ctype.empty() ? "without a content type" : ctype.substr(0, ctype.find(';'))) +
               " instead of an event stream (a proxy in the way?)",
           "retry shortly; if it persists, tell the operators", true, true);
    co_return;
  }

  StreamReader reader(out, sink);
  bool ok = reader.feed(*piece);
  while (ok && !reader.done && !reader.error) {
    auto more = co_await s.next();
    if (!more) break;
    ok = reader.feed(*more);
  }
  const bool done = reader.done;
  std::optional<UpstreamError> stream_error = reader.error;
  if (!ok) {
    s.cancel();
    t.fail(ErrorCode::kBackendUnavailable, "inference backend " + b.cfg.id + " sent an event larger than the limit",
           "retry with a smaller max_tokens", !out.delivered, true);
    co_return;
  }
  if (stream_error) {
    s.cancel();
    // llama.cpp reports a prompt longer than the context as an error event inside a 200 stream
    // (exceed_context_size_error; invalid_request_error for other bad requests): the caller's to
    // fix, as the same error before the stream would be - not retried, and no fault of the
    // backend. Judged by llama.cpp's types, not the code: vLLM's stream generator labels every
    // failure mid-stream 400 BadRequestError, an engine crash included.
    if (stream_error->type == "exceed_context_size_error" || stream_error->type == "invalid_request_error") {
      t.fail(ErrorCode::kBackendRejected, "the model server rejected the request: " + stream_error->message,
             "change the request as the message says (shorter prompt, smaller max_tokens, valid parameters)", false,
             false);
      co_return;
    }
    t.fail(ErrorCode::kBackendUnavailable, "inference backend " + b.cfg.id + " failed mid-stream: " + stream_error->message,
           "retry the call", !out.delivered, true);
    co_return;
  }
  if (done) {
    // Read to the end of the chunked body so the connection can be reused.
    while (co_await s.next()) {
    }
    t.ok = true;
    co_return;
  }
  const http::Response& resp = s.response();
  if (resp.cancelled) {
    out.cancelled = true;
    co_return;
  }
  if (resp.error.empty() && !out.finish_reason.empty()) {  // a server that ends without [DONE]
    t.ok = true;
    co_return;
  }
  if (resp.timed_out) {
    // The whole-call limit (request_timeout_ms, or what was left of the call's deadline): a
    // timeout, not a failing backend, and nothing to retry within the same deadline.
    t.fail(ErrorCode::kTimeout,
           "inference backend " + b.cfg.id + " did not finish within " + std::to_string(limit.count()) +
               " ms (" + std::to_string(out.content_chunks) + " chunks received)",
           "ask for fewer tokens (max_tokens), or raise the call's time limit", false, false);
    co_return;
  }
  t.fail(ErrorCode::kBackendUnavailable,
         "the stream from inference backend " + b.cfg.id + " broke off after " + std::to_string(out.content_chunks) +
             " chunks" + (resp.error.empty() ? "" : " (" + resp.error + ")"),
         out.delivered ? "the text so far is incomplete; retry the call" : "retry the call", !out.delivered, true);
}

asio::awaitable<void> InferenceService::json_once(Backend& b, Kind kind, const ChatCall& call, Try& t) {
  ChatOutcome& out = t.out;
  std::string key;
  {
    std::lock_guard g(m_);
    key = b.api_key;
  }
  std::string path = kind == Kind::kEmbed ? "/v1/embeddings" : call.completions ? "/v1/completions" : "/v1/chat/completions";
  std::string body;
  if (kind == Kind::kEmbed) {
    json j = call.body.is_object() ? call.body : json::object();
    j["model"] = call.model;
    body = j.dump();
  } else {
    body = upstream_body(call, false);
  }
  http::Request r = base_request(b, key, path, std::move(body), call.deadline);
  http::Response resp = co_await client_->perform(std::move(r));
  if (resp.cancelled) {
    out.cancelled = true;
    co_return;
  }
  if (resp.status == 0) {
    // A connect timeout is a backend that cannot be reached (retried elsewhere), not a call that
    // ran out of time.
    const bool timeout = resp.timed_out && !resp.connect_failed;
    t.fail(timeout ? ErrorCode::kTimeout : ErrorCode::kBackendUnavailable,
           (timeout ? "inference backend " + b.cfg.id + " did not answer in time: "
                    : "cannot reach inference backend " + b.cfg.id + ": ") + resp.error,
           "retry shortly", !timeout, !timeout);  // a timeout is the call's limit, not a backend fault
    co_return;
  }
  if (resp.status != 200) {
    classify(t, b.cfg.id, resp.status, resp.body);
    co_return;
  }
  json j = parse_json_answer(resp);
  if (j.is_discarded() || !j.is_object()) {
    std::string ctype = resp.header("content-type");
    t.fail(ErrorCode::kBackendUnavailable,
           "inference backend " + b.cfg.id + " answered " + (ctype.empty() ? "something" : ctype) + " that is not a JSON answer",
           "retry shortly; if it persists, tell the operators", true, true);
    co_return;
  }
  if (auto e = parse_error(j)) {
    t.fail(ErrorCode::kBackendUnavailable, "inference backend " + b.cfg.id + " failed: " + e->message, "retry shortly",
           true, true);
    co_return;
  }
  take_answer(out, std::move(j), kind != Kind::kEmbed);
  t.ok = true;
}

asio::awaitable<std::optional<int64_t>> InferenceService::count_tokens(std::string backend, std::string model, json input) {
  Backend* b = nullptr;
  std::string key;
  {
    std::lock_guard g(m_);
    for (auto& bp : backends_)
      if (bp->cfg.id == backend) b = bp.get();
    if (b) key = b->api_key;
  }
  if (!b || !client_) co_return std::nullopt;
  http::Request r = base_request(*b, key, "/tokenize", tokenize_body(b->cfg.flavor, model, input).dump(),
                                 Clock::now() + std::chrono::seconds(10));
  http::Response resp = co_await client_->perform(std::move(r));
  if (!resp.ok()) co_return std::nullopt;
  json j = json::parse(resp.body, nullptr, false);
  if (!j.is_object()) co_return std::nullopt;
  if (j.contains("count") && j["count"].is_number_integer()) co_return j["count"].get<int64_t>();
  if (j.contains("tokens") && j["tokens"].is_array()) co_return static_cast<int64_t>(j["tokens"].size());
  co_return std::nullopt;
}

namespace {

http::Request base_request(const InferenceService::Backend& b, const std::string& key, const std::string& path,
                           std::string body, Deadline deadline) {
  http::Request r;
  r.method = "POST";
  r.url = b.cfg.url + path;
  r.headers.push_back("Content-Type: application/json");
  if (!key.empty()) r.headers.push_back("Authorization: Bearer " + key);
  r.body = std::move(body);
  r.connect_timeout = b.cfg.connect_timeout;
  r.timeout = std::min(b.cfg.request_timeout, left(deadline));
  return r;
}

}  // namespace

}  // namespace scigate::inference
