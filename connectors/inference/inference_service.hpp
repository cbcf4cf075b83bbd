#pragma once
// OpenAI-compatible inference servers (vLLM, llama.cpp's llama-server, anything speaking the
// same API) as one service the tools and the OpenAI-compatible endpoint call.
//
// - Routing: a model is served by the backends whose /v1/models lists it (narrowed by the
//   config's `models`); a call goes to the healthy one with the most free capacity (in-flight
//   calls / max_concurrency). Every replica full: the call waits up to queue_timeout.
// - Failures: a connection error, a 5xx, a 429, a first-token timeout or an answer of the wrong
//   kind is retried on another replica (then the same one) with exponential backoff and jitter,
//   as long as nothing has reached the caller yet; a 4xx is the caller's problem and is not
//   retried. Consecutive failures open a backend's circuit breaker for breaker_cooldown; then
//   one trial call is let through (half-open).
// - Health: a poller asks each backend's /health and /v1/models every health_interval and tells
//   the model registry what is served now (ModelRegistry::set_served).
// - All HTTP goes through one http::CurlClient, driven by the I/O threads' reactor (made in
//   start()): a slow backend costs a socket, never a thread, and a call's request and answer
//   need no other thread.
//
// Threads: every coroutine may be awaited from any executor; ChunkSink runs on the caller's.
// Cancellation of the awaiting coroutine cancels the backend request (the connection is closed,
// which vLLM and llama.cpp take as an abort). stop() must run before the io_context that awaited
// calls is destroyed (App::drain_writers): it ends the poller and the HTTP client, whose last
// completions are posted to that io_context.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "connectors/inference/openai_wire.hpp"
#include "connectors/registry/model_catalog.hpp"
#include "server/common/error.hpp"
#include "server/config/config.hpp"

namespace scigate::registry {
class ModelRegistry;
}
namespace scigate::http {
class CurlClient;
}

namespace scigate::inference {

using Deadline = std::chrono::steady_clock::time_point;

struct ChatCall {
  std::string model;
  // The request as the caller means it: messages (or prompt), sampling parameters, max_tokens.
  // The service sets "model", "stream" and, when streaming, stream_options.include_usage.
  json body = json::object();
  bool stream = true;        // stream from the backend; chunks go to the sink as they arrive
  bool completions = false;  // POST /v1/completions (a prompt) instead of /v1/chat/completions
  Deadline deadline = Deadline::max();
};

struct ChatOutcome {
  std::optional<Error> error;
  bool delivered = false;        // chunks reached the sink before the error (no silent retry)
  std::string text;              // the generated text (first choice), as far as it came
  std::string finish_reason;
  std::optional<TokenUsage> usage;  // as the backend reported it, if it did
  int64_t content_chunks = 0;    // stream chunks that carried output
  std::string backend;           // the backend that answered (or failed last)
  json response;                 // non-streamed: the backend's answer body
  int attempts = 0;
  bool cancelled = false;
};

// Each stream chunk as the backend sent it (parsed), on the caller's executor.
using ChunkSink = std::function<void(const json& chunk)>;

// The credit resources a model's tokens are charged to: the catalog's `rates` for it (a
// manifest may point several models at one priced resource), else tokens_in:<model> and
// tokens_out:<model> (docs/MODELS.md#rates).
struct TokenResources {
  std::string in, out;
};

struct BackendView {
  std::string id, url, flavor, gpu_type;
  bool healthy = false;
  std::string breaker;  // closed | open | half-open
  int in_flight = 0, max_concurrency = 0;
  std::vector<std::string> served;
  std::string last_error;
};

class InferenceService {
 public:
  InferenceService(const InferenceConfig& config, registry::ModelRegistry* registry);
  ~InferenceService();

  // Makes the HTTP client, driven by `io`, and starts the health poller on it (its first
  // round runs at once). Calls before start() fail as "not running".
  void start(boost::asio::io_context& io);
  // Ends the poller and the HTTP client; calls still in flight complete as cancelled.
  void stop();

  // `sink` must outlive the call (the caller awaits it).
  boost::asio::awaitable<ChatOutcome> chat(ChatCall call, const ChunkSink& sink);
  // POST /v1/embeddings with `body` (input, encoding_format, ...); the answer in `response`.
  boost::asio::awaitable<ChatOutcome> embed(std::string model, json body, Deadline deadline);
  // The backend's own token count (POST /tokenize) of `messages` (an array: chat, template
  // applied where the backend can) or `text` (a string); nullopt when it cannot say.
  boost::asio::awaitable<std::optional<int64_t>> count_tokens(std::string backend, std::string model, json input);

  // One health round for every backend, now (start() runs them every health_interval).
  boost::asio::awaitable<void> refresh();

  bool serves(const std::string& model) const;
  std::vector<std::string> served_models() const;
  std::optional<int64_t> max_model_len(const std::string& model) const;
  // Read from the catalog at construction and again at every health round, so that an import
  // (`scigate models import`, another process) applies within one health_interval.
  TokenResources token_resources(const std::string& model) const;
  // The catalog's modality of `model` (read as token_resources is); nullopt for a model no
  // manifest describes.
  std::optional<std::string> modality(const std::string& model) const;
  std::vector<BackendView> backends() const;

  struct Backend;
  struct Lease;
  enum class Kind { kChatStream, kChatJson, kEmbed };
  struct Try;

 private:
  boost::asio::awaitable<ChatOutcome> call(Kind kind, ChatCall call, const ChunkSink* sink);
  boost::asio::awaitable<std::optional<Lease>> acquire(const std::string& model, const std::vector<std::string>& tried,
                                                       Deadline deadline, Error* why);
  std::optional<Lease> try_acquire(const std::string& model, const std::vector<std::string>& tried, Error* why,
                                   bool* full);
  void record(Backend& b, bool ok, const std::string& error);
  boost::asio::awaitable<void> stream_once(Backend& b, const ChatCall& call, const ChunkSink& sink, Try& t);
  boost::asio::awaitable<void> json_once(Backend& b, Kind kind, const ChatCall& call, Try& t);
  boost::asio::awaitable<void> check(Backend& b);
  boost::asio::awaitable<void> poll_loop();

  InferenceConfig config_;
  registry::ModelRegistry* registry_;
  // The catalog's modality and rates by model id (registry::ModelRegistry::Terms); under m_.
  std::map<std::string, registry::ModelCatalog::Terms> terms_;
  std::unique_ptr<http::CurlClient> client_;
  std::vector<std::unique_ptr<Backend>> backends_;
  mutable std::mutex m_;  // routing state of every backend
  std::shared_ptr<std::atomic<bool>> stopping_ = std::make_shared<std::atomic<bool>>(false);
  boost::asio::io_context* io_ = nullptr;
};

}  // namespace scigate::inference
