// scigate_inference_double: a test double of the OpenAI-compatible HTTP API of vLLM (the
// 0.6-0.11 era) and of llama.cpp's llama-server, quirks included, for the inference connector's
// tests and benchmarks. No GPU: a toy tokenizer and a deterministic "model".
//
// Usage: scigate_inference_double [--flavor vllm|llamacpp] [--host 127.0.0.1] [--port N]
//          [--models id1,id2] [--api-key KEY] [--threads N] [--max-model-len N]
//          [--error-format flat|nested] [--embedding-dim N] [--completion-tokens N]
//          [--keep-alive-ms N] [--keep-alive-max N]
// Defaults: vllm, 127.0.0.1, port 0 (any), models "test-model", no key, 2 threads, 4096,
// nested, 8, 16, 5000 ms idle keep-alive (uvicorn's and httplib's 5 s), and at most 5 requests
// per connection for llama.cpp (httplib's CPPHTTPLIB_KEEPALIVE_MAX_COUNT; the 5th answer says
// "Connection: close"), unlimited for vLLM. The first stdout line is exactly "listening <port>"
// (flushed); nothing else goes to stdout. SIGTERM or SIGINT ends it.
//
// Control API (never authenticated, never counted, answered even when `down` or loading):
//   POST /_control        JSON; any of first_token_ms, token_interval_ms, latency_ms,
//                         completion_tokens, loading_ms, fail_next {status, count, format},
//                         cut_after_tokens, error_after_tokens, wrong_content_type, omit_usage,
//                         misreport_completion_tokens (a backend whose streamed usage says
//                         this many generated tokens, whatever it made; -1/null: the truth),
//                         tokenize_status, down, reset. 204 when applied, 400 (nothing applied) for an unknown
//                         key or a bad value. `reset` is applied first, then the other keys.
//   GET  /_control        the behaviour now in force
//   GET  /_control/stats  {counts: {path: n}, status_counts: {"200": n}, requests_total,
//                         in_flight, max_in_flight, streams_started, streams_completed,
//                         streams_cut, streams_cancelled_by_client, closed_unanswered (down),
//                         connections_accepted, connections_open, max_connections_open,
//                         last_request: {method, target, headers (lower-case), body (JSON, or
//                         the raw text when not JSON, null when empty)}}
//   Control requests are not counted and do not change last_request; `reset` clears the stats.
//
// Deterministic model (so tests can assert exact values):
// - Tokenizer: whitespace separates; a run of [A-Za-z0-9_] or of bytes >= 0x80 is one token;
//   every other byte is a token of its own. "Hello, world!" = 4 tokens. Token ids are
//   100 + FNV-1a(piece) % 31900. No BOS/EOS is ever added.
// - Chat prompt tokens = sum over messages of (tokens of its text content + 4). The 4 are the
//   chat template's framing (begin, role, header end, end of message: ids 32000, 32001-32004,
//   32005, 32006); text content is a string or the "text" parts of a content array.
// - Generation: token i is "w<i>", preceded by a space after the first ("w0 w1 w2"), so the
//   text of n tokens tokenizes back to n. The model "wants" completion_tokens (default 16)
//   tokens; a smaller max_tokens (chat: max_completion_tokens, else max_tokens; llama.cpp:
//   n_predict, max_completion_tokens, max_tokens) caps it and finish_reason is "length",
//   otherwise "stop". vLLM also caps at max_model_len - prompt (rejected earlier, see below);
//   llama.cpp stops at the context end with "length".
// - Embeddings: a unit vector of --embedding-dim floats from SplitMix64 seeded with FNV-1a-64
//   of the input text (token-id inputs: of their decimal list), float32 like both servers.
//
// What each flavor does, and where it comes from (read, not copied):
//   https://github.com/vllm-project/vllm/blob/main/vllm/entrypoints/openai/api_server.py,
//     protocol.py, serving_chat.py, serving_completion.py, serving_engine.py (several 2024-2025
//     versions: the flat ErrorResponse era and the ErrorResponse{error: ErrorInfo} one)
//   https://github.com/ggml-org/llama.cpp/blob/master/examples/server/server.cpp and utils.hpp
//     (around b5000, early 2025), tools/server/server-task.cpp (the newer layout)
//   cpp-httplib's httplib.h 0.15 (vendored by llama.cpp) for the keep-alive limits
//   Bug reports and client code quoting real answers, for the exact error texts
//     ("... Please reduce the length of the messages. None"; llama.cpp's
//     exceed_context_size_error body with n_prompt_tokens and n_ctx)
// vLLM:
// - GET /health: 200 with an empty body. GET /version. GET /v1/models: {"object":"list","data":
//   [ModelCard]} with owned_by "vllm", root, parent null, max_model_len and one
//   ModelPermission; every served name has root = the model path (here: the first id).
// - Auth (--api-key): only paths starting with /v1 are checked, by exact comparison with
//   "Bearer KEY"; the answer is 401 {"error":"Unauthorized"} (a bare string, not an error
//   object) - /health, /tokenize, /version stay open.
// - POST bodies must be sent as application/json (validate_json_request, from about 0.7.2):
//   415 {"detail":"Unsupported Media Type: Only 'application/json' is allowed"} otherwise.
// - Errors: newer (ErrorResponse{error: ErrorInfo}, 0.10+) {"error":{"message","type","param",
//   "code"}}; older {"object":"error","message","type","param":null,"code"}. Unknown model:
//   404 NotFoundError "The model `x` does not exist.". Context length (serving_engine
//   _validate_input): without max_tokens, prompt >= max_model_len -> "This model's maximum
//   context length is M tokens. However, you requested P tokens in the messages, Please reduce
//   the length of the messages."; with one, P + max > M -> "... However, you requested T tokens
//   (P in the messages, X in the completion). Please reduce the length of the messages or
//   completion."; the chat path formats it as f"{e} {e.__cause__}", so chat messages end in
//   " None" (seen verbatim in bug reports against 0.6-0.10). Embeddings: "... you requested P
//   tokens in the input for embedding generation. Please reduce the length of the input.".
//   stream_options without stream: 400 "Stream options can only be defined when
//   `stream=True`.". max_tokens < 1: 400 "max_tokens must be at least 1, got N.".
// - Chat stream (model_dump_json(exclude_unset=True)): first chunk delta {"role":"assistant",
//   "content":""}; one chunk per token with "logprobs":null,"finish_reason":null; the last token
//   chunk carries finish_reason and "stop_reason":null; with stream_options.include_usage (true
//   by default once stream_options is given) a final {"choices":[],"usage":{...}} chunk; with
//   continuous_usage_stats every chunk has usage; then "data: [DONE]". Usage keys are in
//   UsageInfo's field order: prompt_tokens, total_tokens, completion_tokens. The SSE answer is
//   "text/event-stream; charset=utf-8" (Starlette adds the charset), chunked.
// - Completions stream chunks are dumped whole (exclude_unset=False): "usage":null in each.
//   Non-stream answers are model_dump(): every field, nulls included.
// - /tokenize: {"count","max_model_len","tokens","token_strs":null}; "prompt" or "messages".
// llama.cpp (ggml-org/llama.cpp examples/server/server.cpp and utils.hpp around b5000,
//   tools/server/server-task.cpp for the newer behaviour):
// - GET /health {"status":"ok"}; while loading every path answers 503 {"error":{"code":503,
//   "message":"Loading model","type":"unavailable_error"}} (middleware_server_state, before
//   the API key check). Errors are {"error":{"code","message","type"}}.
// - Auth: every path but /health, /models, /v1/models is checked ("Bearer " + one of the keys);
//   401 {"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}}.
// - GET /v1/models (and /models): one model, owned_by "llamacpp", with "meta" (vocab_type,
//   n_vocab, n_ctx_train, n_embd, n_params, size). The request's "model" is never checked: it
//   is echoed back (default "gpt-3.5-turbo" upstream; here the first id).
// - Chat stream: a role chunk {"role":"assistant","content":null} (n_decoded == 1), one chunk
//   per token, then a final chunk with an empty delta, finish_reason, usage and timings - sent
//   whether or not stream_options asked for usage - then "data: [DONE]". Content type
//   "text/event-stream"; JSON is "application/json; charset=utf-8"; header Server: llama.cpp.
//   (Newer llama.cpp, server-task.cpp, sends the usage in a separate {"choices":[]} chunk only
//   when include_usage is set; this double reproduces the older, unconditional form.)
// - Context: prompt >= n_ctx is found by the slot after the answer has started, so with
//   stream=true the client gets 200 text/event-stream, an "error: {...}" SSE line (not a
//   "data:" line, so OpenAI clients ignore it) and "data: [DONE]"; without stream, 400
//   {"error":{"code":400,"message":"request (P tokens) exceeds the available context size
//   (N tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":P,
//   "n_ctx":N}} (the message and type of newer builds; b5000 said "the request exceeds the
//   available context size, try increasing the context size or enable context shift").
//   Embeddings longer than the context: 500 "input is too large to process. increase the
//   physical batch size" (server_error).
// - Malformed bodies reach httplib's exception handler: 500 server_error with nlohmann's
//   exception text ("[json.exception.parse_error.101] ...").
// - /tokenize takes {"content": ...} and answers {"tokens":[...]} (with_pieces: [{"id","piece"}]).
// - /v1/embeddings: {"model","object":"list","usage":{"prompt_tokens","total_tokens"},"data":
//   [{"embedding","index","object":"embedding"}]}.
//
// Invented here (no upstream behaviour to copy, or none confirmed):
// - vLLM while "loading" (loading_ms): real vLLM binds its port early and answers nothing
//   until the engine is up; here every path answers 503 ServiceUnavailableError in the
//   configured error format ("The server is loading the model").
// - fail_next bodies: vLLM 500 uses EngineDeadError's message ("EngineCore encountered an
//   issue. See stack trace (above) for the root cause."), other statuses their phrase;
//   llama.cpp uses server_error / unavailable_error.
// - GET /version answers {"version":"0.8.5"}; llama.cpp's GET /props is a minimal subset
//   (default_generation_settings.n_ctx, total_slots, model_path, build_info).
// - A misconfigured proxy (wrong_content_type) answers every path 200 with nginx's welcome page
//   as text/html and "Server: nginx/1.24.0".
// - `n` > 1, stop sequences, logprobs, tools and batch prompts are not modelled (n and stop are
//   ignored); llama.cpp's non-OpenAI endpoints (/completion, /embedding, /infill, /slots)
//   answer 404.
// - Could not confirm the exact version range of the " None" suffix, of 415 on a missing
//   content type, nor when llama.cpp started reading max_completion_tokens (taken as read).
//
// Performance: Boost.Beast over C++20 coroutines, one strand per connection, --threads I/O
// threads, keep-alive; stream chunks are rendered into one reused buffer per stream (no JSON
// tree per token). A client that goes away mid-stream is seen at once (a read armed beside
// the writer sees EOF) and generation stops (streams_cancelled_by_client).
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;  // both servers emit keys in declaration order
using Clock = std::chrono::steady_clock;
using Request = http::request<http::string_body>;
using namespace asio::experimental::awaitable_operators;

constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
constexpr int kMessageOverhead = 4;
constexpr const char* kFingerprint = "b5000-5f0a0b1c";  // llama.cpp's build_info shape

enum class Flavor { vllm, llamacpp };

struct Options {
  Flavor flavor = Flavor::vllm;
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::vector<std::string> models{"test-model"};
  std::string api_key;
  int threads = 2;
  int max_model_len = 4096;
  bool flat_errors = false;
  int embedding_dim = 8;
  int completion_tokens = 16;
  int keep_alive_ms = 5000;  // uvicorn's timeout_keep_alive (vLLM passes 5 s), httplib's 5 s
  int keep_alive_max = -1;   // requests per connection; -1: the flavor's (llama.cpp 5, vLLM none)
};

// ---------------------------------------------------------------------------------------------
// Toy tokenizer and model

bool is_word_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}
bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

template <class F>
void for_each_piece(std::string_view s, F&& f) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (is_space(c)) {
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    if (is_word_byte(c))
      while (j < s.size() && is_word_byte(static_cast<unsigned char>(s[j]))) ++j;
    f(s.substr(i, j - i));
    i = j;
  }
}

std::size_t count_tokens(std::string_view s) {
  std::size_t n = 0;
  for_each_piece(s, [&](std::string_view) { ++n; });
  return n;
}

uint32_t fnv1a32(std::string_view s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}
uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int token_id(std::string_view piece) { return 100 + static_cast<int>(fnv1a32(piece) % 31900u); }

void append_tokens(std::string_view s, std::vector<int>& out) {
  for_each_piece(s, [&](std::string_view p) { out.push_back(token_id(p)); });
}

// Calls f(text) for the text of a message's content: a string, or the "text" parts of an array.
template <class F>
void for_each_content_text(const json& content, F&& f) {
  if (content.is_string()) {
    f(content.get_ref<const std::string&>());
  } else if (content.is_array()) {
    for (const auto& part : content) {
      if (!part.is_object()) continue;
      auto t = part.find("type");
      auto x = part.find("text");
      if (t != part.end() && t->is_string() && *t == "text" && x != part.end() && x->is_string())
        f(x->get_ref<const std::string&>());
    }
  }
}

int role_token(const json& m) {
  auto r = m.find("role");
  if (r == m.end() || !r->is_string()) return 32004;
  const auto& s = r->get_ref<const std::string&>();
  if (s == "system" || s == "developer") return 32001;
  if (s == "user") return 32002;
  if (s == "assistant") return 32003;
  return 32004;
}

std::vector<int> chat_tokens(const json& messages) {
  std::vector<int> out;
  for (const auto& m : messages) {
    out.push_back(32000);
    out.push_back(m.is_object() ? role_token(m) : 32004);
    out.push_back(32005);
    if (m.is_object()) {
      auto c = m.find("content");
      if (c != m.end()) for_each_content_text(*c, [&](const std::string& t) { append_tokens(t, out); });
    }
    out.push_back(32006);
  }
  return out;
}

std::size_t chat_prompt_tokens(const json& messages) {
  std::size_t n = 0;
  for (const auto& m : messages) {
    n += kMessageOverhead;
    if (!m.is_object()) continue;
    auto c = m.find("content");
    if (c != m.end()) for_each_content_text(*c, [&](const std::string& t) { n += count_tokens(t); });
  }
  return n;
}

void append_piece(std::string& out, int i) {
  if (i > 0) out += ' ';
  out += 'w';
  out += std::to_string(i);
}

std::string generated_text(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) append_piece(s, i);
  return s;
}

std::vector<float> embed(std::string_view text, int dim) {
  uint64_t seed = fnv1a64(text);
  std::vector<double> v(static_cast<std::size_t>(dim));
  double norm = 0;
  for (auto& x : v) {
    x = static_cast<double>(splitmix64(seed) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
    norm += x * x;
  }
  norm = std::sqrt(norm);
  std::vector<float> out(v.size());
  for (std::size_t k = 0; k < v.size(); ++k) out[k] = static_cast<float>(norm > 0 ? v[k] / norm : (k == 0 ? 1.0 : 0.0));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Behaviour steered by the control API, and what the double saw

struct Behaviour {
  int first_token_ms = 0;
  int token_interval_ms = 0;
  int latency_ms = 0;
  int completion_tokens = 16;
  Clock::time_point loading_until{};
  int fail_status = 0;
  int fail_count = 0;
  std::string fail_format;  // "", "flat", "nested"
  int cut_after_tokens = -1;
  int error_after_tokens = -1;
  int misreport_completion_tokens = -1;
  bool wrong_content_type = false;
  bool omit_usage = false;
  int tokenize_status = 0;
  bool down = false;
};

struct Failure {
  int status = 0;
  std::string format;
};

class State {
 public:
  explicit State(int completion_tokens) : default_completion_tokens_(completion_tokens) {
    b_.completion_tokens = completion_tokens;
  }

  Behaviour snapshot() const {
    std::lock_guard lk(mu_);
    return b_;
  }

  // The injected failure for this inference request, if any (consumes one).
  Failure take_failure() {
    std::lock_guard lk(mu_);
    if (b_.fail_count <= 0 || b_.fail_status == 0) return {};
    --b_.fail_count;
    return {b_.fail_status, b_.fail_format};
  }

  // Applies a control body; returns an error (and changes nothing) when it is not valid.
  std::string apply(const json& j) {
    if (!j.is_object()) return "the control body must be a JSON object";
    static const char* kKnown[] = {"first_token_ms",  "token_interval_ms", "latency_ms",   "completion_tokens",
                                   "loading_ms",      "fail_next",         "cut_after_tokens", "error_after_tokens",
                                   "wrong_content_type", "misreport_completion_tokens",
                                   "omit_usage",      "tokenize_status",   "down",         "reset"};
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (std::none_of(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return it.key() == k; }))
        return "unknown control key: " + it.key();
    }
    std::lock_guard lk(mu_);
    Behaviour b = b_;
    bool reset = false;
    if (j.contains("reset")) {
      if (!j["reset"].is_boolean()) return "reset must be a boolean";
      reset = j["reset"].get<bool>();
      if (reset) {
        b = Behaviour{};
        b.completion_tokens = default_completion_tokens_;
      }
    }
    std::string err;
    auto non_negative = [&](const char* key, int& field) {
      if (!j.contains(key) || !err.empty()) return;
      const auto& v = j[key];
      if (!v.is_number_integer() || v.get<long long>() < 0 || v.get<long long>() > 100'000'000) {
        err = std::string(key) + " must be a non-negative integer";
        return;
      }
      field = v.get<int>();
    };
    non_negative("first_token_ms", b.first_token_ms);
    non_negative("token_interval_ms", b.token_interval_ms);
    non_negative("latency_ms", b.latency_ms);
    non_negative("completion_tokens", b.completion_tokens);
    non_negative("tokenize_status", b.tokenize_status);
    int loading_ms = -1;
    non_negative("loading_ms", loading_ms);
    if (!err.empty()) return err;
    if (j.contains("tokenize_status") && b.tokenize_status != 0 && (b.tokenize_status < 100 || b.tokenize_status > 599))
      return "tokenize_status must be 0 or an HTTP status";
    if (loading_ms >= 0) b.loading_until = loading_ms == 0 ? Clock::time_point{} : Clock::now() + std::chrono::milliseconds(loading_ms);
    for (auto [key, field] : {std::pair<const char*, int*>{"cut_after_tokens", &b.cut_after_tokens},
                              std::pair<const char*, int*>{"error_after_tokens", &b.error_after_tokens},
                              std::pair<const char*, int*>{"misreport_completion_tokens", &b.misreport_completion_tokens}}) {
      if (!j.contains(key)) continue;
      const auto& v = j[key];
      if (v.is_null()) {
        *field = -1;
      } else if (v.is_number_integer() && v.get<long long>() >= -1 && v.get<long long>() < 1'000'000) {
        *field = v.get<int>();
      } else {
        return std::string(key) + " must be an integer >= 0 (or -1 / null: off)";
      }
    }
    for (const char* key : {"wrong_content_type", "omit_usage", "down"}) {
      if (!j.contains(key)) continue;
      if (!j[key].is_boolean()) return std::string(key) + " must be a boolean";
    }
    if (j.contains("wrong_content_type")) b.wrong_content_type = j["wrong_content_type"].get<bool>();
    if (j.contains("omit_usage")) b.omit_usage = j["omit_usage"].get<bool>();
    if (j.contains("down")) b.down = j["down"].get<bool>();
    if (j.contains("fail_next")) {
      const auto& f = j["fail_next"];
      if (f.is_null()) {
        b.fail_status = 0;
        b.fail_count = 0;
      } else {
        if (!f.is_object()) return "fail_next must be an object {status, count, format}";
        auto st = f.find("status");
        if (st == f.end() || !st->is_number_integer() || st->get<int>() < 400 || st->get<int>() > 599)
          return "fail_next.status must be an HTTP error status (400-599)";
        int count = 1;
        if (auto c = f.find("count"); c != f.end()) {
          if (!c->is_number_integer() || c->get<long long>() < 0 || c->get<long long>() > 1'000'000)
            return "fail_next.count must be a non-negative integer";
          count = c->get<int>();
        }
        std::string format;
        if (auto fm = f.find("format"); fm != f.end() && !fm->is_null()) {
          if (!fm->is_string() || (*fm != "flat" && *fm != "nested")) return "fail_next.format must be flat or nested";
          format = fm->get<std::string>();
        }
        b.fail_status = st->get<int>();
        b.fail_count = count;
        b.fail_format = format;
      }
    }
    b_ = b;
    if (reset) clear_stats_locked();
    return {};
  }

  json behaviour_json() const {
    std::lock_guard lk(mu_);
    auto now = Clock::now();
    long long loading_left =
        b_.loading_until > now ? std::chrono::duration_cast<std::chrono::milliseconds>(b_.loading_until - now).count() : 0;
    json f = nullptr;
    if (b_.fail_count > 0) f = json{{"status", b_.fail_status}, {"count", b_.fail_count}, {"format", b_.fail_format}};
    return json{{"first_token_ms", b_.first_token_ms},
                {"token_interval_ms", b_.token_interval_ms},
                {"latency_ms", b_.latency_ms},
                {"completion_tokens", b_.completion_tokens},
                {"loading_ms_left", loading_left},
                {"fail_next", f},
                {"cut_after_tokens", b_.cut_after_tokens},
                {"error_after_tokens", b_.error_after_tokens},
                {"misreport_completion_tokens", b_.misreport_completion_tokens},
                {"wrong_content_type", b_.wrong_content_type},
                {"omit_usage", b_.omit_usage},
                {"tokenize_status", b_.tokenize_status},
                {"down", b_.down}};
  }

  void record(const Request& req, const std::string& path) {
    json headers = json::object();
    for (const auto& f : req) {
      std::string name(f.name_string());
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      headers[name] = std::string(f.value());
    }
    json body = nullptr;
    if (!req.body().empty()) {
      body = json::parse(req.body(), nullptr, false);
      if (body.is_discarded()) body = req.body();
    }
    json last{{"method", std::string(req.method_string())},
              {"target", std::string(req.target())},
              {"headers", std::move(headers)},
              {"body", std::move(body)}};
    std::lock_guard lk(mu_);
    ++counts_[path];
    ++requests_total_;
    last_request_ = std::move(last);
  }

  void enter() {
    std::lock_guard lk(mu_);
    max_in_flight_ = std::max(max_in_flight_, ++in_flight_);
  }
  void leave() {
    std::lock_guard lk(mu_);
    --in_flight_;
  }
  void connection_opened() {
    std::lock_guard lk(mu_);
    ++connections_accepted_;
    max_connections_open_ = std::max(max_connections_open_, ++connections_open_);
  }
  void connection_closed() {
    std::lock_guard lk(mu_);
    --connections_open_;
  }
  void status(int s) {
    std::lock_guard lk(mu_);
    ++status_counts_[std::to_string(s)];
  }
  void closed_unanswered() {
    std::lock_guard lk(mu_);
    ++closed_unanswered_;
  }
  enum class StreamEvent { started, completed, cut, cancelled_by_client };
  void stream(StreamEvent e) {
    std::lock_guard lk(mu_);
    switch (e) {
      case StreamEvent::started: ++streams_started_; break;
      case StreamEvent::completed: ++streams_completed_; break;
      case StreamEvent::cut: ++streams_cut_; break;
      case StreamEvent::cancelled_by_client: ++streams_cancelled_by_client_; break;
    }
  }

  json stats_json() const {
    std::lock_guard lk(mu_);
    json counts = json::object();
    for (const auto& [k, v] : counts_) counts[k] = v;
    json statuses = json::object();
    for (const auto& [k, v] : status_counts_) statuses[k] = v;
    return json{{"counts", counts},
                {"status_counts", statuses},
                {"requests_total", requests_total_},
                {"in_flight", in_flight_},
                {"max_in_flight", max_in_flight_},
                {"streams_started", streams_started_},
                {"streams_completed", streams_completed_},
                {"streams_cut", streams_cut_},
                {"streams_cancelled_by_client", streams_cancelled_by_client_},
                {"closed_unanswered", closed_unanswered_},
                {"connections_accepted", connections_accepted_},
                {"connections_open", connections_open_},
                {"max_connections_open", max_connections_open_},
                {"last_request", last_request_}};
  }

 private:
  void clear_stats_locked() {
    counts_.clear();
    status_counts_.clear();
    requests_total_ = 0;
    max_in_flight_ = in_flight_;
    streams_started_ = streams_completed_ = streams_cut_ = streams_cancelled_by_client_ = 0;
    closed_unanswered_ = 0;
    connections_accepted_ = 0;
    max_connections_open_ = connections_open_;
    last_request_ = nullptr;
  }

  mutable std::mutex mu_;
  int default_completion_tokens_;
  Behaviour b_;
  std::map<std::string, uint64_t> counts_;
  std::map<std::string, uint64_t> status_counts_;
  uint64_t requests_total_ = 0;
  int64_t in_flight_ = 0, max_in_flight_ = 0;
  uint64_t streams_started_ = 0, streams_completed_ = 0, streams_cut_ = 0, streams_cancelled_by_client_ = 0;
  uint64_t closed_unanswered_ = 0;
  uint64_t connections_accepted_ = 0;
  int64_t connections_open_ = 0, max_connections_open_ = 0;
  json last_request_ = nullptr;
};

struct App {
  Options opt;
  State state;
  std::atomic<uint64_t> next_id{1};
  uint64_t id_salt;
  explicit App(Options o)
      : opt(std::move(o)),
        state(opt.completion_tokens),
        id_salt(static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count())) {}

  bool vllm() const { return opt.flavor == Flavor::vllm; }

  // vLLM: "<prefix>-" + 32 hex digits (random_uuid); llama.cpp: "chatcmpl-" + 32 alphanumerics.
  std::string new_id(const char* prefix) {
    uint64_t x = id_salt ^ (next_id.fetch_add(1) * 0x9E3779B97F4A7C15ull);
    std::string s = std::string(prefix) + "-";
    if (vllm()) {
      char buf[33];
      uint64_t a = splitmix64(x), b = splitmix64(x);
      std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(a), static_cast<unsigned long long>(b));
      s += buf;
    } else {
      static const char kAlnum[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
      for (int i = 0; i < 32; ++i) s += kAlnum[splitmix64(x) % 62];
    }
    return s;
  }
};

long long unix_now() { return static_cast<long long>(std::time(nullptr)); }

// ---------------------------------------------------------------------------------------------
// Replies

struct Reply {
  int status = 200;
  std::string content_type;  // empty: no body header (vLLM's empty /health)
  std::string body;
  bool close = false;
};

Reply json_reply(const App& app, int status, const std::string& body) {
  return Reply{status, app.vllm() ? "application/json" : "application/json; charset=utf-8", body, false};
}

const char* status_phrase_type(int status) {
  switch (status) {
    case 400: return "BadRequestError";
    case 401: return "UnauthorizedError";
    case 403: return "ForbiddenError";
    case 404: return "NotFoundError";
    case 408: return "RequestTimeoutError";
    case 413: return "PayloadTooLargeError";
    case 422: return "UnprocessableEntityError";
    case 429: return "TooManyRequestsError";
    case 500: return "InternalServerError";
    case 501: return "NotImplementedError";
    case 502: return "BadGatewayError";
    case 503: return "ServiceUnavailableError";
    case 504: return "GatewayTimeoutError";
    default: return "Error";
  }
}

std::string vllm_error_body(bool flat, int code, const std::string& type, const std::string& message) {
  ojson e;
  if (flat) {
    e["object"] = "error";
    e["message"] = message;
    e["type"] = type;
    e["param"] = nullptr;
    e["code"] = code;
    return e.dump();
  }
  e["message"] = message;
  e["type"] = type;
  e["param"] = nullptr;
  e["code"] = code;
  ojson outer;
  outer["error"] = std::move(e);
  return outer.dump();
}

Reply vllm_error(const App& app, int code, const std::string& type, const std::string& message,
                 const std::string& format_override = "") {
  bool flat = format_override.empty() ? app.opt.flat_errors : format_override == "flat";
  return json_reply(app, code, vllm_error_body(flat, code, type, message));
}

const char* llama_error_type(int code) {
  switch (code) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 501: return "not_supported_error";
    case 503: return "unavailable_error";
    default: return "server_error";
  }
}

ojson llama_error_object(int code, const std::string& message, const std::string& type) {
  ojson e;
  e["code"] = code;
  e["message"] = message;
  e["type"] = type;
  return e;
}

Reply llama_error(const App& app, int code, const std::string& message, const std::string& type = "") {
  ojson outer;
  outer["error"] = llama_error_object(code, message, type.empty() ? llama_error_type(code) : type);
  return json_reply(app, code, outer.dump());
}

Reply flavor_error(const App& app, int code, const std::string& message, const std::string& format_override = "") {
  if (app.vllm()) return vllm_error(app, code, status_phrase_type(code), message, format_override);
  return llama_error(app, code, message);
}

Reply injected_failure(const App& app, const Failure& f) {
  std::string msg;
  if (app.vllm()) {
    switch (f.status) {
      case 500: msg = "EngineCore encountered an issue. See stack trace (above) for the root cause."; break;
      case 502: msg = "Bad Gateway"; break;
      case 503: msg = "Service Unavailable"; break;
      case 429: msg = "Too Many Requests"; break;
      default: msg = "Injected failure (HTTP " + std::to_string(f.status) + ")"; break;
    }
  } else {
    msg = f.status == 503 ? "Service Unavailable" : f.status == 500 ? "Internal Server Error"
                                                                   : "Injected failure (HTTP " + std::to_string(f.status) + ")";
  }
  return flavor_error(app, f.status, msg, f.format);
}

Reply html_reply() {
  return Reply{200, "text/html; charset=utf-8",
               "<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n<body>\n<h1>Welcome to nginx!</h1>\n"
               "<p>If you see this page, the nginx web server is successfully installed and working.</p>\n</body>\n</html>\n",
               false};
}

// ---------------------------------------------------------------------------------------------
// Request helpers

std::optional<long long> int_field(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<long long>();
}

bool bool_field(const json& o, const char* key, bool dflt) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_boolean()) return dflt;
  return it->get<bool>();
}

std::string model_field(const App& app, const json& o) {
  auto it = o.find("model");
  if (it == o.end() || !it->is_string()) return app.opt.models.front();
  return it->get<std::string>();
}

bool served(const App& app, const std::string& model) {
  return std::find(app.opt.models.begin(), app.opt.models.end(), model) != app.opt.models.end();
}

bool is_json_content_type(const Request& req) {
  auto it = req.find(http::field::content_type);
  if (it == req.end()) return false;
  std::string v(it->value());
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return v.rfind("application/json", 0) == 0;
}

// Prompt tokens of a completions "prompt": a string, token ids, or a one-element list of either.
std::optional<std::size_t> completion_prompt_tokens(const json& prompt) {
  if (prompt.is_string()) return count_tokens(prompt.get_ref<const std::string&>());
  if (prompt.is_array()) {
    if (std::all_of(prompt.begin(), prompt.end(), [](const json& x) { return x.is_number_integer(); })) return prompt.size();
    if (prompt.size() == 1) return completion_prompt_tokens(prompt[0]);
  }
  return std::nullopt;
}

// The inputs of an embeddings request as texts (token-id lists become their decimal list).
std::optional<std::vector<std::pair<std::string, std::size_t>>> embedding_inputs(const json& input) {
  std::vector<std::pair<std::string, std::size_t>> out;
  auto ids_text = [](const json& ids) {
    std::string s;
    for (const auto& x : ids) s += std::to_string(x.get<long long>()) + ",";
    return s;
  };
  auto all_ints = [](const json& a) { return std::all_of(a.begin(), a.end(), [](const json& x) { return x.is_number_integer(); }); };
  if (input.is_string()) {
    out.emplace_back(input.get<std::string>(), count_tokens(input.get_ref<const std::string&>()));
  } else if (input.is_array() && !input.empty() && all_ints(input)) {
    out.emplace_back(ids_text(input), input.size());
  } else if (input.is_array()) {
    for (const auto& x : input) {
      if (x.is_string()) {
        out.emplace_back(x.get<std::string>(), count_tokens(x.get_ref<const std::string&>()));
      } else if (x.is_array() && all_ints(x)) {
        out.emplace_back(ids_text(x), x.size());
      } else {
        return std::nullopt;
      }
    }
  } else {
    return std::nullopt;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Streams: what to send, rendered without a JSON tree per token

enum class Kind { chat, completion };

struct StreamPlan {
  Flavor flavor = Flavor::vllm;
  Kind kind = Kind::chat;
  std::string id;
  std::string model_json;  // the model name as a JSON string
  long long created = 0;
  int prompt_tokens = 0;
  int n_tokens = 0;
  std::string finish_reason;
  bool include_usage = false;
  bool continuous_usage = false;
  bool omit_usage = false;
  int misreport_completion = -1;  // >= 0: the completion count the final usage claims
  bool generate = true;
  std::string immediate;  // events sent right after the head (llama.cpp's late context error)
  int first_token_ms = 0;
  int token_interval_ms = 0;
  int cut_after = -1;
  int error_after = -1;
  std::string error_event;  // written after `error_after` tokens, in place of the rest
};

void append_usage(std::string& out, const StreamPlan& p, int completion) {
  // vLLM's UsageInfo field order: prompt_tokens, total_tokens, completion_tokens.
  out += R"({"prompt_tokens":)";
  out += std::to_string(p.prompt_tokens);
  out += R"(,"total_tokens":)";
  out += std::to_string(p.prompt_tokens + completion);
  out += R"(,"completion_tokens":)";
  out += std::to_string(completion);
  out += '}';
}

void append_llama_usage(std::string& out, const StreamPlan& p) {
  out += R"({"completion_tokens":)";
  out += std::to_string(p.n_tokens);
  out += R"(,"prompt_tokens":)";
  out += std::to_string(p.prompt_tokens);
  out += R"(,"total_tokens":)";
  out += std::to_string(p.n_tokens + p.prompt_tokens);
  out += '}';
}

void append_vllm_head(std::string& out, const StreamPlan& p) {
  out += R"(data: {"id":")";
  out += p.id;
  out += p.kind == Kind::chat ? R"(","object":"chat.completion.chunk","created":)" : R"(","object":"text_completion","created":)";
  out += std::to_string(p.created);
  out += R"(,"model":)";
  out += p.model_json;
}

void append_llama_tail(std::string& out, const StreamPlan& p) {
  out += R"(,"created":)";
  out += std::to_string(p.created);
  out += R"(,"id":")";
  out += p.id;
  out += R"(","model":)";
  out += p.model_json;
  out += R"(,"system_fingerprint":")";
  out += kFingerprint;
  out += p.kind == Kind::chat ? R"(","object":"chat.completion.chunk")" : R"(","object":"text_completion")";
}

// The chunk before the first token (chat only): the assistant role.
void render_opening(const StreamPlan& p, std::string& out) {
  out.clear();
  if (p.kind != Kind::chat) return;
  if (p.flavor == Flavor::vllm) {
    append_vllm_head(out, p);
    out += R"(,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}])";
    if (p.continuous_usage && !p.omit_usage) {
      out += R"(,"usage":)";
      append_usage(out, p, 0);
    }
    out += "}\n\n";
  } else {
    out += R"(data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}])";
    append_llama_tail(out, p);
    out += "}\n\n";
  }
}

void render_token(const StreamPlan& p, int i, std::string& out) {
  out.clear();
  const bool last = i + 1 == p.n_tokens;
  if (p.flavor == Flavor::vllm) {
    append_vllm_head(out, p);
    if (p.kind == Kind::chat) {
      out += R"(,"choices":[{"index":0,"delta":{"content":")";
      append_piece(out, i);
      out += R"("},"logprobs":null,"finish_reason":)";
      if (last) {
        out += '"';
        out += p.finish_reason;
        out += R"(","stop_reason":null}])";
      } else {
        out += "null}]";
      }
      if (p.continuous_usage && !p.omit_usage) {
        out += R"(,"usage":)";
        append_usage(out, p, i + 1);
      }
    } else {
      out += R"(,"choices":[{"index":0,"text":")";
      append_piece(out, i);
      out += R"(","logprobs":null,"finish_reason":)";
      if (last) {
        out += '"';
        out += p.finish_reason;
        out += '"';
      } else {
        out += "null";
      }
      out += R"(,"stop_reason":null}],"usage":)";
      if (p.continuous_usage && !p.omit_usage)
        append_usage(out, p, i + 1);
      else
        out += "null";
    }
    out += "}\n\n";
  } else {
    if (p.kind == Kind::chat) {
      out += R"(data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":")";
      append_piece(out, i);
      out += R"("}}])";
    } else {
      out += R"(data: {"choices":[{"text":")";
      append_piece(out, i);
      out += R"(","index":0,"logprobs":null,"finish_reason":null}])";
    }
    append_llama_tail(out, p);
    out += "}\n\n";
  }
}

ojson llama_timings(int prompt_n, double prompt_ms, int predicted_n, double predicted_ms) {
  prompt_ms = std::max(prompt_ms, 0.001);
  predicted_ms = std::max(predicted_ms, 0.001);
  ojson t;
  t["prompt_n"] = prompt_n;
  t["prompt_ms"] = prompt_ms;
  t["prompt_per_token_ms"] = prompt_n > 0 ? prompt_ms / prompt_n : prompt_ms;
  t["prompt_per_second"] = 1e3 / prompt_ms * prompt_n;
  t["predicted_n"] = predicted_n;
  t["predicted_ms"] = predicted_ms;
  t["predicted_per_token_ms"] = predicted_n > 0 ? predicted_ms / predicted_n : predicted_ms;
  t["predicted_per_second"] = 1e3 / predicted_ms * predicted_n;
  return t;
}

// Everything after the last token, "data: [DONE]" included.
void render_closing(const StreamPlan& p, double prompt_ms, double predicted_ms, std::string& out) {
  out.clear();
  if (p.generate) {
    if (p.flavor == Flavor::vllm) {
      if (p.n_tokens == 0) {
        // EOS straight away: an empty delta carries the finish_reason.
        append_vllm_head(out, p);
        out += p.kind == Kind::chat
                   ? R"(,"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":")" + p.finish_reason +
                         R"(","stop_reason":null}])"
                   : R"(,"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":")" + p.finish_reason +
                         R"(","stop_reason":null}],"usage":null)";
        out += "}\n\n";
      }
      if (p.include_usage && !p.omit_usage) {
        append_vllm_head(out, p);
        out += R"(,"choices":[],"usage":)";
        append_usage(out, p, p.misreport_completion >= 0 ? p.misreport_completion : p.n_tokens);
        out += "}\n\n";
      }
    } else {
      out += p.kind == Kind::chat ? R"(data: {"choices":[{"finish_reason":")" : R"(data: {"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":")";
      out += p.finish_reason;
      out += p.kind == Kind::chat ? R"(","index":0,"delta":{}}])" : R"("}])";
      if (p.kind == Kind::chat) {
        append_llama_tail(out, p);
        if (!p.omit_usage) {
          out += R"(,"usage":)";
          append_llama_usage(out, p);
        }
      } else {
        // to_json_oaicompat: created, model, system_fingerprint, object, usage, id.
        out += R"(,"created":)" + std::to_string(p.created) + R"(,"model":)" + p.model_json + R"(,"system_fingerprint":")" +
               kFingerprint + R"(","object":"text_completion")";
        if (!p.omit_usage) {
          out += R"(,"usage":)";
          append_llama_usage(out, p);
        }
        out += R"(,"id":")" + p.id + '"';
      }
      if (!p.omit_usage) out += R"(,"timings":)" + llama_timings(p.prompt_tokens, prompt_ms, p.n_tokens, predicted_ms).dump();
      out += "}\n\n";
    }
  }
  out += "data: [DONE]\n\n";
}

// ---------------------------------------------------------------------------------------------
// Endpoints (plain functions: the coroutines below only wait and write)

struct Prepared {
  Reply reply;
  int delay_ms = 0;
  bool stream = false;
  StreamPlan plan;
};

Prepared reply_only(Reply r) {
  Prepared p;
  p.reply = std::move(r);
  return p;
}

ojson vllm_usage(int prompt, int completion) {
  ojson u;
  u["prompt_tokens"] = prompt;
  u["total_tokens"] = prompt + completion;
  u["completion_tokens"] = completion;
  u["prompt_tokens_details"] = nullptr;
  return u;
}

ojson llama_usage(int prompt, int completion) {
  ojson u;
  u["completion_tokens"] = completion;
  u["prompt_tokens"] = prompt;
  u["total_tokens"] = prompt + completion;
  return u;
}

std::string vllm_context_error(int max_len, int prompt, std::optional<long long> max_tokens, bool chat) {
  std::string m = "This model's maximum context length is " + std::to_string(max_len) + " tokens. However, you requested ";
  if (!max_tokens) {
    m += std::to_string(prompt) + " tokens in the messages, Please reduce the length of the messages.";
  } else {
    m += std::to_string(*max_tokens + prompt) + " tokens (" + std::to_string(prompt) + " in the messages, " +
         std::to_string(*max_tokens) + " in the completion). Please reduce the length of the messages or completion.";
  }
  if (chat) m += " None";  // f"{e} {e.__cause__}" in serving_chat
  return m;
}

Prepared generate(App& app, const Request& req, const Behaviour& b, Kind kind) {
  const bool chat = kind == Kind::chat;
  const bool vllm = app.vllm();
  if (vllm && !is_json_content_type(req))
    return reply_only(json_reply(app, 415, R"({"detail":"Unsupported Media Type: Only 'application/json' is allowed"})"));
  if (Failure f = app.state.take_failure(); f.status != 0) return reply_only(injected_failure(app, f));

  json body;
  try {
    body = json::parse(req.body());
  } catch (const std::exception& e) {
    if (vllm)
      return reply_only(vllm_error(app, 400, "BadRequestError",
                                   "[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error', 'input': {}}]"));
    return reply_only(llama_error(app, 500, e.what()));
  }
  if (!body.is_object()) {
    if (vllm)
      return reply_only(vllm_error(app, 400, "BadRequestError",
                                   "[{'type': 'model_attributes_type', 'loc': ('body',), 'msg': 'Input should be a valid dictionary or object to extract fields from'}]"));
    return reply_only(llama_error(app, 500, "[json.exception.type_error.306] cannot use value() with " + std::string(body.type_name())));
  }

  std::size_t prompt = 0;
  if (chat) {
    auto m = body.find("messages");
    if (m == body.end() || !m->is_array()) {
      if (vllm)
        return reply_only(vllm_error(app, 400, "BadRequestError",
                                     "[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}]"));
      return reply_only(llama_error(app, 500, "[json.exception.out_of_range.403] key 'messages' not found"));
    }
    prompt = chat_prompt_tokens(*m);
  } else {
    auto pr = body.find("prompt");
    if (pr == body.end()) {
      if (vllm)
        return reply_only(vllm_error(app, 400, "BadRequestError", "Either prompt or prompt_embeds must be provided and non-empty."));
      return reply_only(llama_error(app, 500, "\"prompt\" is required"));
    }
    auto n = completion_prompt_tokens(*pr);
    if (!n) return reply_only(flavor_error(app, 400, "The test double serves one prompt per request"));
    prompt = *n;
  }

  const std::string model = model_field(app, body);
  const bool stream = bool_field(body, "stream", false);
  StreamPlan plan;
  plan.flavor = app.opt.flavor;
  plan.kind = kind;
  plan.prompt_tokens = static_cast<int>(prompt);
  plan.omit_usage = b.omit_usage;
  plan.misreport_completion = b.misreport_completion_tokens;
  int n_tokens = b.completion_tokens;
  bool capped = false;

  if (vllm) {
    if (!served(app, model)) return reply_only(vllm_error(app, 404, "NotFoundError", "The model `" + model + "` does not exist."));
    auto so = body.find("stream_options");
    if (so != body.end() && !so->is_null() && !stream)
      return reply_only(vllm_error(app, 400, "BadRequestError", "Stream options can only be defined when `stream=True`."));
    if (so != body.end() && so->is_object()) {
      plan.include_usage = bool_field(*so, "include_usage", true);
      plan.continuous_usage = plan.include_usage && bool_field(*so, "continuous_usage_stats", false);
    }
    std::optional<long long> max_tokens;
    if (chat) {
      auto mct = int_field(body, "max_completion_tokens");
      max_tokens = (mct && *mct != 0) ? mct : int_field(body, "max_tokens");  // `or`, as vLLM reads it
    } else {
      max_tokens = int_field(body, "max_tokens");
      if (!max_tokens && !body.contains("max_tokens")) max_tokens = 16;  // CompletionRequest's default
    }
    if (max_tokens && *max_tokens < 1)
      return reply_only(vllm_error(app, 400, "BadRequestError", "max_tokens must be at least 1, got " + std::to_string(*max_tokens) + "."));
    const int max_len = app.opt.max_model_len;
    if ((!max_tokens && static_cast<long long>(prompt) >= max_len) ||
        (max_tokens && static_cast<long long>(prompt) + *max_tokens > max_len))
      return reply_only(vllm_error(app, 400, "BadRequestError", vllm_context_error(max_len, static_cast<int>(prompt), max_tokens, chat)));
    long long cap = max_tokens ? *max_tokens : max_len - static_cast<long long>(prompt);
    if (cap < n_tokens) {
      n_tokens = static_cast<int>(cap);
      capped = true;
    }
  } else {
    long long n_predict = -1;
    if (auto v = int_field(body, "max_completion_tokens")) {
      n_predict = *v;
    } else if (auto w = int_field(body, "max_tokens")) {
      n_predict = *w;
    }
    if (auto v = int_field(body, "n_predict")) n_predict = *v;
    const int n_ctx = app.opt.max_model_len;
    if (static_cast<long long>(prompt) >= n_ctx) {
      ojson e = llama_error_object(400,
                                   "request (" + std::to_string(prompt) + " tokens) exceeds the available context size (" +
                                       std::to_string(n_ctx) + " tokens), try increasing it",
                                   "exceed_context_size_error");
      e["n_prompt_tokens"] = prompt;
      e["n_ctx"] = n_ctx;
      if (!stream) {
        ojson outer;
        outer["error"] = std::move(e);
        return reply_only(json_reply(app, 400, outer.dump()));
      }
      // The slot finds it after the answer has begun: an "error:" line inside a 200 stream.
      plan.generate = false;
      plan.immediate = "error: " + e.dump() + "\n\n";
    }
    if (n_predict >= 0 && n_predict < n_tokens) {
      n_tokens = static_cast<int>(n_predict);
      capped = true;
    }
    long long room = n_ctx - static_cast<long long>(prompt);
    if (room < n_tokens) {
      n_tokens = static_cast<int>(std::max<long long>(room, 0));
      capped = true;
    }
  }

  plan.n_tokens = plan.generate ? n_tokens : 0;
  plan.finish_reason = capped ? "length" : "stop";
  plan.created = unix_now();
  plan.model_json = json(model).dump();
  plan.id = app.new_id(vllm ? (chat ? "chatcmpl" : "cmpl") : "chatcmpl");

  if (stream) {
    plan.first_token_ms = b.first_token_ms;
    plan.token_interval_ms = b.token_interval_ms;
    plan.cut_after = b.cut_after_tokens;
    plan.error_after = b.error_after_tokens;
    if (plan.error_after >= 0) {
      // The engine fails mid-generation. vLLM's stream generator catches every exception and
      // sends create_streaming_error_response(str(e)): a "data:" event in the error format,
      // always type BadRequestError and code 400 whatever went wrong, then "data: [DONE]".
      // llama.cpp sends an "error:" event with the real type (server_error, 500) and ends.
      if (vllm)
        plan.error_event = "data: " +
                           vllm_error_body(app.opt.flat_errors, 400, "BadRequestError",
                                           "EngineCore encountered an issue. See stack trace (above) for the root cause.") +
                           "\n\ndata: [DONE]\n\n";
      else
        plan.error_event = "error: " + llama_error_object(500, "the model crashed while decoding", "server_error").dump() + "\n\n";
    }
    Prepared p;
    p.stream = true;
    p.plan = std::move(plan);
    return p;
  }

  const std::string text = generated_text(plan.n_tokens);
  const int completion = plan.n_tokens;
  ojson r;
  if (vllm) {
    r["id"] = plan.id;
    if (chat) {
      r["object"] = "chat.completion";
      r["created"] = plan.created;
      r["model"] = model;
      ojson msg;
      msg["role"] = "assistant";
      msg["content"] = text;
      msg["refusal"] = nullptr;
      msg["annotations"] = nullptr;
      msg["audio"] = nullptr;
      msg["function_call"] = nullptr;
      msg["tool_calls"] = ojson::array();
      msg["reasoning_content"] = nullptr;
      ojson choice;
      choice["index"] = 0;
      choice["message"] = std::move(msg);
      choice["logprobs"] = nullptr;
      choice["finish_reason"] = plan.finish_reason;
      choice["stop_reason"] = nullptr;
      r["choices"] = ojson::array({std::move(choice)});
      r["service_tier"] = nullptr;
      r["system_fingerprint"] = nullptr;
      if (!b.omit_usage) r["usage"] = vllm_usage(plan.prompt_tokens, completion);
      r["prompt_logprobs"] = nullptr;
      r["kv_transfer_params"] = nullptr;
    } else {
      r["object"] = "text_completion";
      r["created"] = plan.created;
      r["model"] = model;
      ojson choice;
      choice["index"] = 0;
      choice["text"] = text;
      choice["logprobs"] = nullptr;
      choice["finish_reason"] = plan.finish_reason;
      choice["stop_reason"] = nullptr;
      choice["prompt_logprobs"] = nullptr;
      r["choices"] = ojson::array({std::move(choice)});
      r["service_tier"] = nullptr;
      r["system_fingerprint"] = nullptr;
      if (!b.omit_usage) r["usage"] = vllm_usage(plan.prompt_tokens, completion);
      r["kv_transfer_params"] = nullptr;
    }
  } else {
    ojson choice;
    if (chat) {
      choice["finish_reason"] = plan.finish_reason;
      choice["index"] = 0;
      ojson msg;
      msg["role"] = "assistant";
      msg["content"] = text;
      choice["message"] = std::move(msg);
    } else {
      choice["text"] = text;
      choice["index"] = 0;
      choice["logprobs"] = nullptr;
      choice["finish_reason"] = plan.finish_reason;
    }
    r["choices"] = ojson::array({std::move(choice)});
    r["created"] = plan.created;
    r["model"] = model;
    r["system_fingerprint"] = kFingerprint;
    r["object"] = chat ? "chat.completion" : "text_completion";
    if (!b.omit_usage) r["usage"] = llama_usage(plan.prompt_tokens, completion);
    r["id"] = plan.id;
    if (!b.omit_usage) {
      double per_token = std::max(1, b.token_interval_ms);
      r["timings"] = llama_timings(plan.prompt_tokens, std::max(1, b.latency_ms), completion, per_token * completion);
    }
  }
  Prepared p;
  p.reply = json_reply(app, 200, r.dump());
  p.delay_ms = b.latency_ms;
  return p;
}

Prepared embeddings(App& app, const Request& req, const Behaviour& b) {
  const bool vllm = app.vllm();
  if (vllm && !is_json_content_type(req))
    return reply_only(json_reply(app, 415, R"({"detail":"Unsupported Media Type: Only 'application/json' is allowed"})"));
  if (Failure f = app.state.take_failure(); f.status != 0) return reply_only(injected_failure(app, f));
  json body;
  try {
    body = json::parse(req.body());
  } catch (const std::exception& e) {
    if (vllm)
      return reply_only(vllm_error(app, 400, "BadRequestError",
                                   "[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error', 'input': {}}]"));
    return reply_only(llama_error(app, 500, e.what()));
  }
  if (!body.is_object() || !body.contains("input")) {
    if (vllm)
      return reply_only(vllm_error(app, 400, "BadRequestError", "[{'type': 'missing', 'loc': ('body', 'input'), 'msg': 'Field required'}]"));
    return reply_only(llama_error(app, 400, "\"input\" or \"content\" must be provided"));
  }
  const std::string model = model_field(app, body);
  if (vllm && !served(app, model)) return reply_only(vllm_error(app, 404, "NotFoundError", "The model `" + model + "` does not exist."));
  auto inputs = embedding_inputs(body["input"]);
  if (!inputs) return reply_only(flavor_error(app, 400, "input must be a string, a list of strings or a list of token ids"));
  std::size_t total = 0;
  for (const auto& [text, n] : *inputs) {
    if (n == 0 && !vllm) return reply_only(llama_error(app, 400, "Input content cannot be empty"));
    if (static_cast<long long>(n) > app.opt.max_model_len) {
      if (vllm)
        return reply_only(vllm_error(app, 400, "BadRequestError",
                                     "This model's maximum context length is " + std::to_string(app.opt.max_model_len) +
                                         " tokens. However, you requested " + std::to_string(n) +
                                         " tokens in the input for embedding generation. Please reduce the length of the input."));
      return reply_only(llama_error(app, 500, "input is too large to process. increase the physical batch size"));
    }
    total += n;
  }
  ojson data = ojson::array();
  int index = 0;
  for (const auto& [text, n] : *inputs) {
    ojson d;
    if (vllm) {
      d["index"] = index++;
      d["object"] = "embedding";
      d["embedding"] = embed(text, app.opt.embedding_dim);
    } else {
      d["embedding"] = embed(text, app.opt.embedding_dim);
      d["index"] = index++;
      d["object"] = "embedding";
    }
    data.push_back(std::move(d));
  }
  ojson r;
  const int t = static_cast<int>(total);
  if (vllm) {
    r["id"] = app.new_id("embd");
    r["object"] = "list";
    r["created"] = unix_now();
    r["model"] = model;
    r["data"] = std::move(data);
    if (!b.omit_usage) {
      ojson u;
      u["prompt_tokens"] = t;
      u["total_tokens"] = t;
      u["completion_tokens"] = 0;
      u["prompt_tokens_details"] = nullptr;
      r["usage"] = std::move(u);
    }
  } else {
    r["model"] = model;
    r["object"] = "list";
    if (!b.omit_usage) {
      ojson u;
      u["prompt_tokens"] = t;
      u["total_tokens"] = t;
      r["usage"] = std::move(u);
    }
    r["data"] = std::move(data);
  }
  Prepared p;
  p.reply = json_reply(app, 200, r.dump());
  p.delay_ms = b.latency_ms;
  return p;
}

Prepared tokenize(App& app, const Request& req, const Behaviour& b) {
  const bool vllm = app.vllm();
  if (vllm && !is_json_content_type(req))
    return reply_only(json_reply(app, 415, R"({"detail":"Unsupported Media Type: Only 'application/json' is allowed"})"));
  if (b.tokenize_status != 0)
    return reply_only(flavor_error(app, b.tokenize_status, b.tokenize_status == 404 ? "Not Found" : "Tokenization failed"));
  json body;
  try {
    body = json::parse(req.body());
  } catch (const std::exception& e) {
    if (vllm)
      return reply_only(vllm_error(app, 400, "BadRequestError",
                                   "[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error', 'input': {}}]"));
    return reply_only(llama_error(app, 500, e.what()));
  }
  if (!body.is_object()) return reply_only(flavor_error(app, 400, "the body must be a JSON object"));
  std::vector<int> tokens;
  ojson r;
  if (vllm) {
    if (body.contains("model") && body["model"].is_string() && !served(app, body["model"].get<std::string>()))
      return reply_only(vllm_error(app, 404, "NotFoundError", "The model `" + body["model"].get<std::string>() + "` does not exist."));
    if (auto m = body.find("messages"); m != body.end() && m->is_array()) {
      tokens = chat_tokens(*m);
    } else if (auto p = body.find("prompt"); p != body.end() && p->is_string()) {
      append_tokens(p->get_ref<const std::string&>(), tokens);
    } else {
      return reply_only(vllm_error(app, 400, "BadRequestError", "[{'type': 'missing', 'loc': ('body', 'prompt'), 'msg': 'Field required'}]"));
    }
    r["count"] = tokens.size();
    r["max_model_len"] = app.opt.max_model_len;
    r["tokens"] = tokens;
    r["token_strs"] = nullptr;
  } else {
    ojson list = ojson::array();
    if (auto c = body.find("content"); c != body.end() && c->is_string()) {
      const bool pieces = bool_field(body, "with_pieces", false);
      for_each_piece(c->get_ref<const std::string&>(), [&](std::string_view piece) {
        if (pieces) {
          ojson t;
          t["id"] = token_id(piece);
          t["piece"] = std::string(piece);
          list.push_back(std::move(t));
        } else {
          list.push_back(token_id(piece));
        }
      });
    }
    r["tokens"] = std::move(list);
  }
  return reply_only(json_reply(app, 200, r.dump()));
}

Reply models(const App& app) {
  ojson data = ojson::array();
  const long long now = unix_now();
  if (app.vllm()) {
    for (const auto& id : app.opt.models) {
      ojson perm;
      perm["id"] = "modelperm-" + std::to_string(fnv1a64(id));
      perm["object"] = "model_permission";
      perm["created"] = now;
      perm["allow_create_engine"] = false;
      perm["allow_sampling"] = true;
      perm["allow_logprobs"] = true;
      perm["allow_search_indices"] = false;
      perm["allow_view"] = true;
      perm["allow_fine_tuning"] = false;
      perm["organization"] = "*";
      perm["group"] = nullptr;
      perm["is_blocking"] = false;
      ojson card;
      card["id"] = id;
      card["object"] = "model";
      card["created"] = now;
      card["owned_by"] = "vllm";
      card["root"] = app.opt.models.front();
      card["parent"] = nullptr;
      card["max_model_len"] = app.opt.max_model_len;
      card["permission"] = ojson::array({std::move(perm)});
      data.push_back(std::move(card));
    }
  } else {
    ojson meta;
    meta["vocab_type"] = 2;
    meta["n_vocab"] = 32007;
    meta["n_ctx_train"] = app.opt.max_model_len;
    meta["n_embd"] = app.opt.embedding_dim;
    meta["n_params"] = 1000000;
    meta["size"] = 4000000;
    ojson card;
    card["id"] = app.opt.models.front();
    card["object"] = "model";
    card["created"] = now;
    card["owned_by"] = "llamacpp";
    card["meta"] = std::move(meta);
    data.push_back(std::move(card));
  }
  ojson r;
  r["object"] = "list";
  r["data"] = std::move(data);
  return json_reply(app, 200, r.dump());
}

Reply llama_props(const App& app) {
  ojson gen;
  gen["n_ctx"] = app.opt.max_model_len;
  gen["model"] = app.opt.models.front();
  ojson r;
  r["default_generation_settings"] = std::move(gen);
  r["total_slots"] = 1;
  r["model_path"] = app.opt.models.front();
  r["build_info"] = kFingerprint;
  return json_reply(app, 200, r.dump());
}

std::string target_path(std::string_view target) {
  auto q = target.find('?');
  return std::string(q == std::string_view::npos ? target : target.substr(0, q));
}

bool authorized(const App& app, const Request& req, const std::string& path) {
  if (app.opt.api_key.empty()) return true;
  if (app.vllm()) {
    if (req.method() == http::verb::options || path.rfind("/v1", 0) != 0) return true;
  } else {
    if (req.method() == http::verb::options || path == "/health" || path == "/models" || path == "/v1/models" || path == "/")
      return true;
  }
  auto it = req.find(http::field::authorization);
  return it != req.end() && it->value() == "Bearer " + app.opt.api_key;
}

Prepared route(App& app, const Request& req, const std::string& path, const Behaviour& b) {
  if (b.wrong_content_type) return reply_only(html_reply());
  if (b.loading_until > Clock::now()) {
    if (app.vllm()) return reply_only(vllm_error(app, 503, "ServiceUnavailableError", "The server is loading the model"));
    return reply_only(llama_error(app, 503, "Loading model"));
  }
  if (!authorized(app, req, path)) {
    if (app.vllm()) return reply_only(json_reply(app, 401, R"({"error":"Unauthorized"})"));
    return reply_only(llama_error(app, 401, "Invalid API Key"));
  }
  const auto verb = req.method();
  const bool get = verb == http::verb::get, post = verb == http::verb::post;
  if (app.vllm()) {
    auto wrong_method = [&] { return reply_only(json_reply(app, 405, R"({"detail":"Method Not Allowed"})")); };
    if (path == "/health") return get ? reply_only(Reply{200, "", "", false}) : wrong_method();
    if (path == "/version") return get ? reply_only(json_reply(app, 200, R"({"version":"0.8.5"})")) : wrong_method();
    if (path == "/v1/models") return get ? reply_only(models(app)) : wrong_method();
    if (path == "/v1/chat/completions") return post ? generate(app, req, b, Kind::chat) : wrong_method();
    if (path == "/v1/completions") return post ? generate(app, req, b, Kind::completion) : wrong_method();
    if (path == "/v1/embeddings") return post ? embeddings(app, req, b) : wrong_method();
    if (path == "/tokenize") return post ? tokenize(app, req, b) : wrong_method();
    return reply_only(json_reply(app, 404, R"({"detail":"Not Found"})"));
  }
  if (get && (path == "/health" || path == "/v1/health")) return reply_only(json_reply(app, 200, R"({"status":"ok"})"));
  if (get && (path == "/models" || path == "/v1/models")) return reply_only(models(app));
  if (get && path == "/props") return reply_only(llama_props(app));
  if (post && (path == "/v1/chat/completions" || path == "/chat/completions")) return generate(app, req, b, Kind::chat);
  if (post && path == "/v1/completions") return generate(app, req, b, Kind::completion);
  if (post && path == "/v1/embeddings") return embeddings(app, req, b);
  if (post && path == "/tokenize") return tokenize(app, req, b);
  return reply_only(llama_error(app, 404, "File Not Found"));
}

Reply control(App& app, const Request& req, const std::string& path) {
  if (path == "/_control/stats" && req.method() == http::verb::get) return Reply{200, "application/json", app.state.stats_json().dump()};
  if (path == "/_control" && req.method() == http::verb::get) return Reply{200, "application/json", app.state.behaviour_json().dump()};
  if (path == "/_control" && req.method() == http::verb::post) {
    json j = json::parse(req.body(), nullptr, false);
    if (j.is_discarded()) return Reply{400, "application/json", R"({"error":"the control body is not JSON"})"};
    std::string err = app.state.apply(j);
    if (!err.empty()) return Reply{400, "application/json", json{{"error", err}}.dump()};
    return Reply{204, "", ""};
  }
  return Reply{404, "application/json", R"({"error":"unknown control path"})"};
}

void set_flavor_headers(const App& app, http::fields& f, const Request& req) {
  if (app.vllm()) {
    f.set(http::field::server, "uvicorn");
  } else {
    f.set(http::field::server, "llama.cpp");
    if (auto o = req.find(http::field::origin); o != req.end()) f.set(http::field::access_control_allow_origin, o->value());
  }
}

// ---------------------------------------------------------------------------------------------
// Connections

class InFlight {
 public:
  explicit InFlight(State& s) : s_(s) { s_.enter(); }
  ~InFlight() { s_.leave(); }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  State& s_;
};

class OpenConnection {
 public:
  explicit OpenConnection(State& s) : s_(s) { s_.connection_opened(); }
  ~OpenConnection() { s_.connection_closed(); }
  OpenConnection(const OpenConnection&) = delete;
  OpenConnection& operator=(const OpenConnection&) = delete;

 private:
  State& s_;
};

void close_now(tcp::socket& s) {
  beast::error_code ec;
  s.close(ec);
}

asio::awaitable<bool> send_reply(App& app, tcp::socket& sock, const Request& req, const Reply& r, bool control, bool last) {
  http::response<http::string_body> res{static_cast<http::status>(r.status), req.version()};
  if (!control) {
    set_flavor_headers(app, res.base(), req);
    if (r.content_type.rfind("text/html", 0) == 0) res.set(http::field::server, "nginx/1.24.0");
    app.state.status(r.status);
  }
  if (!r.content_type.empty()) res.set(http::field::content_type, r.content_type);
  res.body() = r.body;
  res.keep_alive(req.keep_alive() && !r.close && !last);
  res.prepare_payload();
  auto [ec, n] = co_await http::async_write(sock, res, kAwait);
  co_return !ec && res.keep_alive();
}

enum class StreamEnd { completed, cut, peer_gone };

asio::awaitable<StreamEnd> write_chunk(tcp::socket& sock, const std::string& data) {
  if (data.empty()) co_return StreamEnd::completed;
  auto [ec, n] = co_await asio::async_write(sock, http::make_chunk(asio::buffer(data)), kAwait);
  co_return ec ? StreamEnd::peer_gone : StreamEnd::completed;
}

asio::awaitable<bool> sleep_ms(asio::steady_timer& timer, int ms) {
  if (ms <= 0) co_return true;
  timer.expires_after(std::chrono::milliseconds(ms));
  auto [ec] = co_await timer.async_wait(kAwait);
  co_return !ec;
}

// A model server's decode steps keep their cadence whatever writing a token cost: each token is
// due at a time fixed from the start (not a sleep after the previous write, whose overshoots
// would add up over a stream and make it slower than the same answer non-streamed).
asio::awaitable<bool> sleep_until(asio::steady_timer& timer, Clock::time_point due) {
  if (due <= Clock::now()) co_return true;
  timer.expires_at(due);
  auto [ec] = co_await timer.async_wait(kAwait);
  co_return !ec;
}

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// Writes the events of one stream; returns how it ended. Cancelled (the peer went away) at any
// wait or write.
asio::awaitable<StreamEnd> produce(tcp::socket& sock, const StreamPlan& plan) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  std::string buf;
  buf.reserve(512);
  const auto t0 = Clock::now();
  if (co_await write_chunk(sock, plan.immediate) != StreamEnd::completed) co_return StreamEnd::peer_gone;
  double prompt_ms = 0;
  auto t_first = t0;
  if (plan.generate) {
    const auto first_due = t0 + std::chrono::milliseconds(plan.first_token_ms);
    if (!co_await sleep_until(timer, first_due)) co_return StreamEnd::peer_gone;
    t_first = Clock::now();
    prompt_ms = ms_since(t0);
    render_opening(plan, buf);
    if (co_await write_chunk(sock, buf) != StreamEnd::completed) co_return StreamEnd::peer_gone;
    for (int i = 0; i < plan.n_tokens; ++i) {
      if (plan.cut_after == i) co_return StreamEnd::cut;
      if (plan.error_after == i) break;
      if (i > 0 && !co_await sleep_until(timer, first_due + std::chrono::milliseconds(i * plan.token_interval_ms)))
        co_return StreamEnd::peer_gone;
      render_token(plan, i, buf);
      if (co_await write_chunk(sock, buf) != StreamEnd::completed) co_return StreamEnd::peer_gone;
    }
    if (plan.cut_after == plan.n_tokens) co_return StreamEnd::cut;
    if (plan.error_after >= 0 && plan.error_after <= plan.n_tokens) {
      if (co_await write_chunk(sock, plan.error_event) != StreamEnd::completed) co_return StreamEnd::peer_gone;
      auto [ec, n] = co_await asio::async_write(sock, http::make_chunk_last(), kAwait);
      co_return ec ? StreamEnd::peer_gone : StreamEnd::completed;
    }
  }
  render_closing(plan, prompt_ms, ms_since(t_first), buf);
  if (co_await write_chunk(sock, buf) != StreamEnd::completed) co_return StreamEnd::peer_gone;
  auto [ec, n] = co_await asio::async_write(sock, http::make_chunk_last(), kAwait);
  co_return ec ? StreamEnd::peer_gone : StreamEnd::completed;
}

// Reads while the stream is written: EOF or an error means the client went away. Bytes that do
// arrive (a pipelined request) stay in the buffer for the next request.
asio::awaitable<void> watch_peer(tcp::socket& sock, beast::flat_buffer& buffer) {
  for (;;) {
    auto [ec, n] = co_await sock.async_read_some(buffer.prepare(4096), kAwait);
    if (ec) co_return;
    buffer.commit(n);
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none || buffer.size() > (1u << 20)) co_return;
  }
}

asio::awaitable<bool> run_stream(App& app, tcp::socket& sock, beast::flat_buffer& buffer, const Request& req,
                                 const StreamPlan& plan, bool last) {
  http::response<http::empty_body> res{http::status::ok, req.version()};
  set_flavor_headers(app, res.base(), req);
  res.set(http::field::content_type, app.vllm() ? "text/event-stream; charset=utf-8" : "text/event-stream");
  res.chunked(true);
  res.keep_alive(req.keep_alive() && !last);
  http::response_serializer<http::empty_body> sr{res};
  app.state.status(200);
  auto [ec, n] = co_await http::async_write_header(sock, sr, kAwait);
  if (ec) {
    app.state.stream(State::StreamEvent::cancelled_by_client);
    co_return false;
  }
  app.state.stream(State::StreamEvent::started);
  auto outcome = co_await (produce(sock, plan) || watch_peer(sock, buffer));
  StreamEnd end = outcome.index() == 0 ? std::get<0>(outcome) : StreamEnd::peer_gone;
  switch (end) {
    case StreamEnd::completed:
      app.state.stream(State::StreamEvent::completed);
      co_return req.keep_alive() && !last;
    case StreamEnd::cut:
      app.state.stream(State::StreamEvent::cut);
      close_now(sock);
      co_return false;
    case StreamEnd::peer_gone:
      app.state.stream(State::StreamEvent::cancelled_by_client);
      close_now(sock);
      co_return false;
  }
  co_return false;
}

// `last`: the connection's last request (httplib's keep-alive max count): answered with
// "Connection: close".
asio::awaitable<bool> handle(App& app, tcp::socket& sock, beast::flat_buffer& buffer, const Request& req, bool last) {
  const std::string path = target_path(req.target());
  if (path == "/_control" || path.rfind("/_control/", 0) == 0) {
    Reply r = control(app, req, path);
    co_return co_await send_reply(app, sock, req, r, true, last);
  }
  app.state.record(req, path);
  InFlight in_flight(app.state);
  const Behaviour b = app.state.snapshot();
  if (b.down) {
    app.state.closed_unanswered();
    close_now(sock);
    co_return false;
  }
  Prepared p = route(app, req, path, b);
  if (p.stream) co_return co_await run_stream(app, sock, buffer, req, p.plan, last);
  if (p.delay_ms > 0) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    co_await sleep_ms(timer, p.delay_ms);
  }
  co_return co_await send_reply(app, sock, req, p.reply, false, last);
}

// One connection: requests in a loop while both sides keep it alive. Idle longer than
// keep_alive_ms between requests, it is closed (as uvicorn and httplib do after 5 s).
asio::awaitable<void> serve(App& app, tcp::socket sock) {
  OpenConnection open(app.state);
  beast::flat_buffer buffer;
  asio::steady_timer idle(co_await asio::this_coro::executor);
  const int max_requests = app.opt.keep_alive_max >= 0 ? app.opt.keep_alive_max : (app.vllm() ? 0 : 5);
  for (int served = 0;; ++served) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    if (app.opt.keep_alive_ms > 0) {
      idle.expires_after(std::chrono::milliseconds(app.opt.keep_alive_ms));
      auto got = co_await (http::async_read(sock, buffer, parser, kAwait) || idle.async_wait(kAwait));
      if (got.index() != 0 || std::get<0>(std::get<0>(got))) break;
    } else {
      auto [ec, n] = co_await http::async_read(sock, buffer, parser, kAwait);
      if (ec) break;
    }
    const Request req = parser.release();
    const bool last = max_requests > 0 && served + 1 >= max_requests;
    if (!co_await handle(app, sock, buffer, req, last)) break;
  }
  if (sock.is_open()) {
    beast::error_code ec;
    sock.shutdown(tcp::socket::shutdown_send, ec);
    sock.close(ec);
  }
}

asio::awaitable<void> accept_loop(App& app, tcp::acceptor& acceptor) {
  asio::steady_timer backoff(acceptor.get_executor());
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(asio::make_strand(acceptor.get_executor()), kAwait);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      // Out of descriptors (EMFILE) and the like: wait instead of spinning.
      backoff.expires_after(std::chrono::milliseconds(10));
      co_await backoff.async_wait(kAwait);
      continue;
    }
    beast::error_code ignored;
    sock.set_option(tcp::no_delay(true), ignored);
    auto ex = sock.get_executor();
    asio::co_spawn(ex, serve(app, std::move(sock)), asio::detached);
  }
}

// ---------------------------------------------------------------------------------------------

[[noreturn]] void usage(int code) {
  std::cerr << "usage: scigate_inference_double [--flavor vllm|llamacpp] [--host 127.0.0.1] [--port N]\n"
               "         [--models id1,id2] [--api-key KEY] [--threads N] [--max-model-len N]\n"
               "         [--error-format flat|nested] [--embedding-dim N] [--completion-tokens N]\n"
               "         [--keep-alive-ms N] [--keep-alive-max N]\n";
  std::exit(code);
}

int to_int(const std::string& flag, const std::string& v, int lo, int hi) {
  try {
    std::size_t pos = 0;
    long long x = std::stoll(v, &pos);
    if (pos == v.size() && x >= lo && x <= hi) return static_cast<int>(x);
  } catch (const std::exception&) {
  }
  std::cerr << flag << ": expected an integer in [" << lo << ", " << hi << "], got '" << v << "'\n";
  usage(2);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") usage(0);
    std::string v;
    if (auto eq = a.find('='); eq != std::string::npos) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else {
      if (i + 1 >= argc) {
        std::cerr << a << ": missing value\n";
        usage(2);
      }
      v = argv[++i];
    }
    if (a == "--flavor") {
      if (v == "vllm") o.flavor = Flavor::vllm;
      else if (v == "llamacpp" || v == "llama.cpp") o.flavor = Flavor::llamacpp;
      else usage(2);
    } else if (a == "--host") {
      o.host = v;
    } else if (a == "--port") {
      o.port = static_cast<uint16_t>(to_int(a, v, 0, 65535));
    } else if (a == "--models") {
      o.models.clear();
      std::size_t start = 0;
      while (start <= v.size()) {
        auto comma = v.find(',', start);
        std::string id = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!id.empty()) o.models.push_back(id);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      if (o.models.empty()) usage(2);
    } else if (a == "--api-key") {
      o.api_key = v;
    } else if (a == "--threads") {
      o.threads = to_int(a, v, 1, 256);
    } else if (a == "--max-model-len") {
      o.max_model_len = to_int(a, v, 1, 1 << 30);
    } else if (a == "--error-format") {
      if (v != "flat" && v != "nested") usage(2);
      o.flat_errors = v == "flat";
    } else if (a == "--embedding-dim") {
      o.embedding_dim = to_int(a, v, 1, 65536);
    } else if (a == "--completion-tokens") {
      o.completion_tokens = to_int(a, v, 0, 1 << 20);
    } else if (a == "--keep-alive-ms") {
      o.keep_alive_ms = to_int(a, v, 0, 1 << 30);
    } else if (a == "--keep-alive-max") {
      o.keep_alive_max = to_int(a, v, 0, 1 << 30);
    } else {
      std::cerr << "unknown flag " << a << "\n";
      usage(2);
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = parse_args(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);
  // A thousand streams need a thousand descriptors (vLLM raises its own limit the same way).
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }

  // Timers to the microsecond: the kernel's default slack (50 us per wake-up) would make a paced
  // stream late by up to that much per token, which no GPU server's stream is (its tokens come
  // from a decode loop, not from timers).
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

  App app(opt);
  asio::io_context io(opt.threads);
  tcp::acceptor acceptor(io);
  try {
    tcp::endpoint ep(asio::ip::make_address(opt.host), opt.port);
    acceptor.open(ep.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    acceptor.bind(ep);
    acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const std::exception& e) {
    std::cerr << "scigate_inference_double: cannot listen on " << opt.host << ":" << opt.port << ": " << e.what() << "\n";
    return 1;
  }
  std::printf("listening %u\n", static_cast<unsigned>(acceptor.local_endpoint().port()));
  std::fflush(stdout);

  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code&, int) { io.stop(); });
  asio::co_spawn(io, accept_loop(app, acceptor), asio::detached);

  std::vector<std::thread> threads;
  for (int i = 1; i < opt.threads; ++i) threads.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : threads) t.join();
  // Detached connection coroutines still hold references to `app`: leave without unwinding.
  std::fflush(stderr);
  std::_Exit(0);
}
