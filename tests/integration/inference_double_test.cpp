// The vLLM / llama.cpp test double (tests/support/inference_double.cpp) through scigate's own
// HTTP client: these tests pin the wire formats the double reproduces (each flavor's shapes,
// headers, errors and stream framing, as read in the upstream sources its header cites) and
// every misbehaviour its control API can inject. The inference connector's tests rely on the
// double; these are the evidence that it says what the real servers say.
#include <catch2/catch.hpp>

#include <sys/resource.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <mutex>
#include <thread>

#include "connectors/http/curl_client.hpp"
#include "support/eventually.hpp"
#include "support/inference_double.hpp"
#include "support/run_blocking.hpp"

namespace sh = scigate::http;
using nlohmann::json;
using scigate::test::eventually;
using scigate::test::InferenceDouble;
using scigate::test::InferenceDoubleOptions;
using scigate::test::run_blocking;

namespace {

// 16 prompt tokens: ("You are terse ." = 4) + 4 and ("Hello , world !" = 4) + 4.
const json kMessages = json::parse(R"([{"role":"system","content":"You are terse."},{"role":"user","content":"Hello, world!"}])");
constexpr int kPromptTokens = 16;

std::string words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " w" : "w") + std::to_string(i);
  return s;
}

sh::Request make(const std::string& method, const std::string& url, const std::string& body = "",
                 std::vector<std::string> headers = {"Content-Type: application/json"}) {
  sh::Request r;
  r.method = method;
  r.url = url;
  r.body = body;
  r.headers = std::move(headers);
  r.timeout = std::chrono::seconds(30);
  return r;
}

sh::Response perform(sh::CurlClient& c, sh::Request r) { return run_blocking(c.perform(std::move(r))); }

sh::Response post(sh::CurlClient& c, const InferenceDouble& d, const std::string& path, const json& body,
                  std::vector<std::string> headers = {"Content-Type: application/json"}) {
  return perform(c, make("POST", d.base_url() + path, body.dump(), std::move(headers)));
}

sh::Response get(sh::CurlClient& c, const InferenceDouble& d, const std::string& path, std::vector<std::string> headers = {}) {
  return perform(c, make("GET", d.base_url() + path, "", std::move(headers)));
}

InferenceDoubleOptions opts(const std::string& flavor) {
  InferenceDoubleOptions o;
  o.flavor = flavor;
  return o;
}

json chat_body(const json& extra = json::object()) {
  json b = {{"model", "test-model"}, {"messages", kMessages}};
  b.update(extra);
  return b;
}

json parse(const sh::Response& r) {
  INFO(r.status << " " << r.error << " " << r.body);
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

// The events of an SSE body: the JSON of every "data:" event but [DONE], in order.
struct Sse {
  std::vector<json> chunks;
  std::vector<std::string> events;  // every event's text
  bool done = false;                // "data: [DONE]" was the last event
  bool terminated = false;          // the body ends with a blank line
};

Sse parse_sse(const std::string& body) {
  Sse s;
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto end = body.find("\n\n", pos);
    if (end == std::string::npos) {
      s.events.push_back(body.substr(pos));
      break;
    }
    std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    s.events.push_back(ev);
    s.done = ev == "data: [DONE]";
    if (!s.done && ev.rfind("data: ", 0) == 0) s.chunks.push_back(json::parse(ev.substr(6)));
  }
  s.terminated = body.size() >= 2 && body.compare(body.size() - 2, 2, "\n\n") == 0;
  return s;
}

std::string chat_content(const Sse& s) {
  std::string out;
  for (const auto& c : s.chunks)
    if (!c["choices"].empty() && c["choices"][0]["delta"].contains("content") && c["choices"][0]["delta"]["content"].is_string())
      out += c["choices"][0]["delta"]["content"].get<std::string>();
  return out;
}

std::vector<std::string> keys(const json& o) {
  std::vector<std::string> k;
  for (auto it = o.begin(); it != o.end(); ++it) k.push_back(it.key());
  std::sort(k.begin(), k.end());
  return k;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// N requests at once on one client; answers in request order.
std::vector<sh::Response> perform_all(sh::CurlClient& c, std::vector<sh::Request> reqs) {
  boost::asio::io_context io;
  std::vector<sh::Response> out(reqs.size());
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    boost::asio::co_spawn(io, c.perform(std::move(reqs[i])), [&out, i](std::exception_ptr, sh::Response r) { out[i] = std::move(r); });
  }
  io.run();
  return out;
}

}  // namespace

TEST_CASE("inference double: vLLM health, version and model list") {
  auto o = opts("vllm");
  o.models = {"m1", "m2"};
  o.max_model_len = 2048;
  InferenceDouble d(o);
  sh::CurlClient c;
  auto h = get(c, d, "/health");
  CHECK(h.status == 200);
  CHECK(h.body.empty());
  CHECK(h.header("server") == "uvicorn");

  auto m = get(c, d, "/v1/models");
  CHECK(m.status == 200);
  CHECK(m.header("content-type") == "application/json");
  auto j = parse(m);
  CHECK(j["object"] == "list");
  REQUIRE(j["data"].size() == 2);
  CHECK(j["data"][0]["id"] == "m1");
  CHECK(j["data"][1]["id"] == "m2");
  for (const auto& card : j["data"]) {
    CHECK(keys(card) == sorted({"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}));
    CHECK(card["object"] == "model");
    CHECK(card["owned_by"] == "vllm");
    CHECK(card["root"] == "m1");
    CHECK(card["parent"].is_null());
    CHECK(card["max_model_len"] == 2048);
    REQUIRE(card["permission"].size() == 1);
    CHECK(card["permission"][0]["object"] == "model_permission");
    CHECK(card["permission"][0]["allow_sampling"] == true);
    CHECK(card["permission"][0]["organization"] == "*");
  }
  CHECK(parse(get(c, d, "/version")).contains("version"));
  // FastAPI's own answers for what no route serves.
  auto nf = get(c, d, "/v1/nothing");
  CHECK(nf.status == 404);
  CHECK(parse(nf) == json::parse(R"({"detail":"Not Found"})"));
  auto wrong = post(c, d, "/v1/models", json::object());
  CHECK(wrong.status == 405);
  CHECK(parse(wrong) == json::parse(R"({"detail":"Method Not Allowed"})"));
}

TEST_CASE("inference double: llama.cpp health and model list") {
  auto o = opts("llamacpp");
  o.models = {"qwen-gguf", "ignored"};
  o.max_model_len = 1024;
  o.embedding_dim = 16;
  InferenceDouble d(o);
  sh::CurlClient c;
  auto h = get(c, d, "/health");
  CHECK(h.status == 200);
  CHECK(h.header("content-type") == "application/json; charset=utf-8");
  CHECK(h.header("server") == "llama.cpp");
  CHECK(parse(h) == json::parse(R"({"status":"ok"})"));

  for (const char* path : {"/v1/models", "/models"}) {
    auto j = parse(get(c, d, path));
    CHECK(j["object"] == "list");
    REQUIRE(j["data"].size() == 1);  // one model per llama-server
    const auto& card = j["data"][0];
    CHECK(keys(card) == sorted({"id", "object", "created", "owned_by", "meta"}));
    CHECK(card["id"] == "qwen-gguf");
    CHECK(card["owned_by"] == "llamacpp");
    CHECK(card["meta"]["n_ctx_train"] == 1024);
    CHECK(card["meta"]["n_embd"] == 16);
    CHECK(card["meta"].contains("n_vocab"));
    CHECK(card["meta"].contains("n_params"));
  }
  auto nf = get(c, d, "/nothing");
  CHECK(nf.status == 404);
  CHECK(parse(nf) == json::parse(R"({"error":{"code":404,"message":"File Not Found","type":"not_found_error"}})"));
}

TEST_CASE("inference double: chat without streaming is deterministic and counts tokens") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  InferenceDouble d(opts(flavor));
  sh::CurlClient c;
  const bool vllm = flavor == "vllm";

  auto r = post(c, d, "/v1/chat/completions", chat_body());
  CHECK(r.status == 200);
  CHECK(r.header("content-type") == (vllm ? "application/json" : "application/json; charset=utf-8"));
  auto j = parse(r);
  CHECK(j["object"] == "chat.completion");
  CHECK(j["model"] == "test-model");
  CHECK(j["id"].get<std::string>().rfind("chatcmpl-", 0) == 0);
  REQUIRE(j["choices"].size() == 1);
  CHECK(j["choices"][0]["message"]["role"] == "assistant");
  CHECK(j["choices"][0]["message"]["content"] == words(16));
  CHECK(j["choices"][0]["finish_reason"] == "stop");
  CHECK(j["usage"]["prompt_tokens"] == kPromptTokens);
  CHECK(j["usage"]["completion_tokens"] == 16);
  CHECK(j["usage"]["total_tokens"] == kPromptTokens + 16);
  if (vllm) {
    // pydantic's model_dump(): every field, nulls included.
    CHECK(keys(j) == sorted({"id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
                             "prompt_logprobs", "kv_transfer_params"}));
    CHECK(keys(j["choices"][0]) == sorted({"index", "message", "logprobs", "finish_reason", "stop_reason"}));
    CHECK(j["choices"][0]["message"]["tool_calls"] == json::array());
    CHECK(j["usage"].contains("prompt_tokens_details"));
  } else {
    CHECK(keys(j) == sorted({"choices", "created", "model", "system_fingerprint", "object", "usage", "id", "timings"}));
    CHECK(keys(j["choices"][0]) == sorted({"finish_reason", "index", "message"}));
    CHECK(j["timings"]["prompt_n"] == kPromptTokens);
    CHECK(j["timings"]["predicted_n"] == 16);
  }

  // A smaller max_tokens caps the answer: finish_reason "length".
  auto capped = parse(post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 5}})));
  CHECK(capped["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4");
  CHECK(capped["choices"][0]["finish_reason"] == "length");
  CHECK(capped["usage"]["completion_tokens"] == 5);
  // max_completion_tokens wins over max_tokens (both servers read it first).
  auto mct = parse(post(c, d, "/v1/chat/completions", chat_body({{"max_completion_tokens", 3}, {"max_tokens", 10}})));
  CHECK(mct["usage"]["completion_tokens"] == 3);
  // A larger one changes nothing.
  auto roomy = parse(post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 100}})));
  CHECK(roomy["usage"]["completion_tokens"] == 16);
  CHECK(roomy["choices"][0]["finish_reason"] == "stop");
  // Content given as parts counts its text parts only.
  json parts = json::parse(R"([{"role":"user","content":[{"type":"text","text":"two words"},{"type":"image_url","image_url":{"url":"x"}}]}])");
  auto pj = parse(post(c, d, "/v1/chat/completions", json{{"model", "test-model"}, {"messages", parts}}));
  CHECK(pj["usage"]["prompt_tokens"] == 2 + 4);
  // completion_tokens steers the length the model "wants".
  d.control({{"completion_tokens", 4}});
  auto four = parse(post(c, d, "/v1/chat/completions", chat_body()));
  CHECK(four["choices"][0]["message"]["content"] == "w0 w1 w2 w3");
  CHECK(four["choices"][0]["finish_reason"] == "stop");
}

TEST_CASE("inference double: vLLM chat stream, include_usage and continuous usage") {
  InferenceDouble d(opts("vllm"));
  sh::CurlClient c;

  auto r = post(c, d, "/v1/chat/completions", chat_body({{"stream", true}}));
  CHECK(r.status == 200);
  CHECK(r.header("content-type") == "text/event-stream; charset=utf-8");
  CHECK(r.header("transfer-encoding") == "chunked");
  auto s = parse_sse(r.body);
  CHECK(s.done);
  CHECK(s.terminated);
  REQUIRE(s.chunks.size() == 1 + 16);
  const auto& first = s.chunks[0];
  CHECK(first["choices"][0]["delta"] == json::parse(R"({"role":"assistant","content":""})"));
  CHECK(keys(first) == sorted({"id", "object", "created", "model", "choices"}));  // exclude_unset: no usage key at all
  CHECK(keys(first["choices"][0]) == sorted({"index", "delta", "logprobs", "finish_reason"}));
  for (std::size_t i = 0; i < s.chunks.size(); ++i) {
    INFO(i);
    CHECK(s.chunks[i]["object"] == "chat.completion.chunk");
    CHECK(s.chunks[i]["id"] == first["id"]);
    CHECK_FALSE(s.chunks[i].contains("usage"));
    if (i > 0) CHECK(s.chunks[i]["choices"][0]["delta"] == json{{"content", (i > 1 ? " w" : "w") + std::to_string(i - 1)}});
  }
  CHECK(s.chunks[1]["choices"][0]["finish_reason"].is_null());
  CHECK(s.chunks.back()["choices"][0]["finish_reason"] == "stop");
  CHECK(s.chunks.back()["choices"][0]["stop_reason"].is_null());
  CHECK(chat_content(s) == words(16));

  // include_usage: one more chunk with no choices, just before [DONE].
  auto u = parse_sse(post(c, d, "/v1/chat/completions", chat_body({{"stream", true}, {"stream_options", {{"include_usage", true}}}})).body);
  REQUIRE(u.chunks.size() == 1 + 16 + 1);
  CHECK(u.done);
  CHECK(u.chunks.back()["choices"] == json::array());
  CHECK(u.chunks.back()["usage"] == json::parse(R"({"prompt_tokens":16,"total_tokens":32,"completion_tokens":16})"));
  CHECK(u.events[u.events.size() - 2].find(R"("usage":{"prompt_tokens":16,"total_tokens":32,"completion_tokens":16})") != std::string::npos);
  CHECK_FALSE(u.chunks[5].contains("usage"));
  // stream_options given without include_usage: it defaults to true.
  auto dflt = parse_sse(post(c, d, "/v1/chat/completions", chat_body({{"stream", true}, {"stream_options", json::object()}})).body);
  CHECK(dflt.chunks.back()["choices"] == json::array());
  auto off = parse_sse(post(c, d, "/v1/chat/completions", chat_body({{"stream", true}, {"stream_options", {{"include_usage", false}}}})).body);
  CHECK(off.chunks.size() == 1 + 16);

  // continuous_usage_stats: usage in every chunk, completion_tokens counting up.
  auto cu = parse_sse(post(c, d, "/v1/chat/completions",
                           chat_body({{"stream", true}, {"max_tokens", 4},
                                      {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}}))
                          .body);
  REQUIRE(cu.chunks.size() == 1 + 4 + 1);
  for (int i = 0; i < 5; ++i) {
    INFO(i);
    CHECK(cu.chunks[i]["usage"]["prompt_tokens"] == kPromptTokens);
    CHECK(cu.chunks[i]["usage"]["completion_tokens"] == i);
    CHECK(cu.chunks[i]["usage"]["total_tokens"] == kPromptTokens + i);
  }
  CHECK(cu.chunks[4]["choices"][0]["finish_reason"] == "length");
  CHECK(cu.chunks[5]["usage"]["completion_tokens"] == 4);

  // stream_options without stream is refused.
  auto bad = post(c, d, "/v1/chat/completions", chat_body({{"stream_options", {{"include_usage", true}}}}));
  CHECK(bad.status == 400);
  CHECK(parse(bad)["error"]["message"] == "Stream options can only be defined when `stream=True`.");
}

TEST_CASE("inference double: llama.cpp chat stream always ends with usage and timings") {
  InferenceDouble d(opts("llamacpp"));
  sh::CurlClient c;
  auto r = post(c, d, "/v1/chat/completions", chat_body({{"stream", true}, {"max_tokens", 6}}));
  CHECK(r.status == 200);
  CHECK(r.header("content-type") == "text/event-stream");
  CHECK(r.header("transfer-encoding") == "chunked");
  auto s = parse_sse(r.body);
  CHECK(s.done);
  REQUIRE(s.chunks.size() == 1 + 6 + 1);
  CHECK(s.chunks[0]["choices"][0]["delta"] == json::parse(R"({"role":"assistant","content":null})"));
  for (std::size_t i = 0; i + 1 < s.chunks.size(); ++i) {
    INFO(i);
    CHECK(keys(s.chunks[i]) == sorted({"choices", "created", "id", "model", "system_fingerprint", "object"}));
    CHECK(s.chunks[i]["choices"][0]["finish_reason"].is_null());
  }
  CHECK(chat_content(s) == words(6));
  const auto& last = s.chunks.back();
  CHECK(last["choices"][0]["delta"] == json::object());
  CHECK(last["choices"][0]["finish_reason"] == "length");
  // Not asked for (no stream_options), sent anyway.
  CHECK(last["usage"] == json::parse(R"({"completion_tokens":6,"prompt_tokens":16,"total_tokens":22})"));
  CHECK(last["timings"]["predicted_n"] == 6);
  CHECK(last["timings"]["prompt_n"] == kPromptTokens);
  CHECK(last["timings"].contains("predicted_per_second"));

  // The request's model is never checked: it is echoed.
  auto any = parse(post(c, d, "/v1/chat/completions", json{{"model", "whatever-you-say"}, {"messages", kMessages}}));
  CHECK(any["model"] == "whatever-you-say");
  auto none = parse(post(c, d, "/v1/chat/completions", json{{"messages", kMessages}}));
  CHECK(none["model"] == "test-model");
  // /chat/completions without /v1 is served too.
  CHECK(post(c, d, "/chat/completions", chat_body()).status == 200);
}

TEST_CASE("inference double: completions, embeddings and tokenize") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  auto o = opts(flavor);
  o.embedding_dim = 12;
  InferenceDouble d(o);
  sh::CurlClient c;
  const bool vllm = flavor == "vllm";

  auto comp = parse(post(c, d, "/v1/completions", json{{"model", "test-model"}, {"prompt", "Once upon a time"}}));
  CHECK(comp["object"] == "text_completion");
  CHECK(comp["choices"][0]["text"] == words(16));
  CHECK(comp["choices"][0]["finish_reason"] == "stop");
  CHECK(comp["usage"]["prompt_tokens"] == 4);
  CHECK(comp["usage"]["completion_tokens"] == 16);
  auto cs = parse_sse(post(c, d, "/v1/completions", json{{"model", "test-model"}, {"prompt", "Once upon a time"}, {"max_tokens", 3}, {"stream", true}}).body);
  CHECK(cs.done);
  std::string text;
  for (const auto& ch : cs.chunks)
    if (!ch["choices"].empty()) text += ch["choices"][0]["text"].get<std::string>();
  CHECK(text == "w0 w1 w2");
  if (vllm) {
    REQUIRE(cs.chunks.size() == 3);
    CHECK(cs.chunks[0].contains("usage"));  // dumped whole: "usage": null
    CHECK(cs.chunks[0]["usage"].is_null());
    CHECK(cs.chunks[2]["choices"][0]["finish_reason"] == "length");
  } else {
    REQUIRE(cs.chunks.size() == 4);
    CHECK(cs.chunks[3]["choices"][0]["finish_reason"] == "length");
    CHECK(cs.chunks[3]["usage"]["completion_tokens"] == 3);
  }

  auto e = parse(post(c, d, "/v1/embeddings", json{{"model", "test-model"}, {"input", json::array({"alpha beta", "gamma"})}}));
  CHECK(e["object"] == "list");
  REQUIRE(e["data"].size() == 2);
  CHECK(e["usage"]["prompt_tokens"] == 3);
  CHECK(e["usage"]["total_tokens"] == 3);
  for (int i = 0; i < 2; ++i) {
    const auto& item = e["data"][i];
    CHECK(item["object"] == "embedding");
    CHECK(item["index"] == i);
    REQUIRE(item["embedding"].size() == 12);
    double norm = 0;
    for (const auto& x : item["embedding"]) norm += x.get<double>() * x.get<double>();
    CHECK(std::sqrt(norm) == Approx(1.0).margin(1e-5));
  }
  auto again = parse(post(c, d, "/v1/embeddings", json{{"model", "test-model"}, {"input", "gamma"}}));
  CHECK(again["data"][0]["embedding"] == e["data"][1]["embedding"]);  // deterministic
  CHECK(again["data"][0]["embedding"] != e["data"][0]["embedding"]);
  if (vllm) {
    CHECK(e["id"].get<std::string>().rfind("embd-", 0) == 0);
    CHECK(e["usage"]["completion_tokens"] == 0);
  } else {
    CHECK(keys(e) == sorted({"model", "object", "usage", "data"}));
    CHECK(keys(e["usage"]) == sorted({"prompt_tokens", "total_tokens"}));
  }

  // /tokenize: the fallback for usage. Counting a chat's messages gives its prompt_tokens.
  if (vllm) {
    auto t = parse(post(c, d, "/tokenize", json{{"model", "test-model"}, {"prompt", "Hello, world!"}}));
    CHECK(t["count"] == 4);
    CHECK(t["max_model_len"] == 4096);
    CHECK(t["tokens"].size() == 4);
    CHECK(t.contains("token_strs"));
    auto tm = parse(post(c, d, "/tokenize", json{{"model", "test-model"}, {"messages", kMessages}}));
    CHECK(tm["count"] == kPromptTokens);
    CHECK(tm["tokens"].size() == kPromptTokens);
  } else {
    auto t = parse(post(c, d, "/tokenize", json{{"content", "Hello, world!"}}));
    CHECK(keys(t) == std::vector<std::string>{"tokens"});
    CHECK(t["tokens"].size() == 4);
    auto p = parse(post(c, d, "/tokenize", json{{"content", "Hello, world!"}, {"with_pieces", true}}));
    CHECK(p["tokens"][1] == json{{"id", t["tokens"][1]}, {"piece", ","}});
  }
}

TEST_CASE("inference double: vLLM errors in the nested and the flat format") {
  auto format = GENERATE(as<std::string>{}, "nested", "flat");
  INFO(format);
  auto o = opts("vllm");
  o.max_model_len = 32;
  o.error_format = format;
  InferenceDouble d(o);
  sh::CurlClient c;
  auto error_of = [&](const sh::Response& r) {
    auto j = parse(r);
    if (format == "flat") {
      CHECK(keys(j) == sorted({"object", "message", "type", "param", "code"}));
      CHECK(j["object"] == "error");
      return j;
    }
    CHECK(keys(j) == std::vector<std::string>{"error"});
    CHECK(keys(j["error"]) == sorted({"message", "type", "param", "code"}));
    return j["error"];
  };

  // Prompt alone too long (no max_tokens): 16 + 4 * 5 messages >= 32.
  json long_messages = json::array();
  for (int i = 0; i < 5; ++i) long_messages.push_back({{"role", "user"}, {"content", "a b c d"}});
  auto r = post(c, d, "/v1/chat/completions", json{{"model", "test-model"}, {"messages", long_messages}});
  CHECK(r.status == 400);
  auto e = error_of(r);
  CHECK(e["type"] == "BadRequestError");
  CHECK(e["code"] == 400);
  CHECK(e["param"].is_null());
  CHECK(e["message"] ==
        "This model's maximum context length is 32 tokens. However, you requested 40 tokens in the messages, Please reduce the "
        "length of the messages. None");
  // Prompt plus max_tokens too long.
  auto r2 = post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 20}}));
  CHECK(r2.status == 400);
  CHECK(error_of(r2)["message"] ==
        "This model's maximum context length is 32 tokens. However, you requested 36 tokens (16 in the messages, 20 in the "
        "completion). Please reduce the length of the messages or completion. None");
  // Completions say the same without the chat path's " None".
  auto r3 = post(c, d, "/v1/completions", json{{"model", "test-model"}, {"prompt", "a b c d"}, {"max_tokens", 30}});
  CHECK(error_of(r3)["message"] ==
        "This model's maximum context length is 32 tokens. However, you requested 34 tokens (4 in the messages, 30 in the "
        "completion). Please reduce the length of the messages or completion.");
  // Without max_tokens the room left is the cap: 16 wanted, 32 - 16 = 16 allowed.
  auto fits = parse(post(c, d, "/v1/chat/completions", chat_body()));
  CHECK(fits["usage"]["completion_tokens"] == 16);

  auto nm = post(c, d, "/v1/chat/completions", json{{"model", "nope"}, {"messages", kMessages}});
  CHECK(nm.status == 404);
  auto ne = error_of(nm);
  CHECK(ne["type"] == "NotFoundError");
  CHECK(ne["code"] == 404);
  CHECK(ne["message"] == "The model `nope` does not exist.");

  auto zero = post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 0}}));
  CHECK(zero.status == 400);
  CHECK(error_of(zero)["message"] == "max_tokens must be at least 1, got 0.");

  auto emb = post(c, d, "/v1/embeddings", json{{"model", "test-model"}, {"input", words(40)}});
  CHECK(emb.status == 400);
  CHECK(error_of(emb)["message"] ==
        "This model's maximum context length is 32 tokens. However, you requested 40 tokens in the input for embedding "
        "generation. Please reduce the length of the input.");

  // Without "Content-Type: application/json" FastAPI's dependency refuses the body.
  auto ct = post(c, d, "/v1/chat/completions", chat_body(), {});
  CHECK(ct.status == 415);
  CHECK(parse(ct) == json::parse(R"({"detail":"Unsupported Media Type: Only 'application/json' is allowed"})"));
  auto bad = perform(c, make("POST", d.base_url() + "/v1/chat/completions", "{not json"));
  CHECK(bad.status == 400);
  CHECK(error_of(bad)["type"] == "BadRequestError");
}

TEST_CASE("inference double: llama.cpp errors, the context overflow inside a stream included") {
  auto o = opts("llamacpp");
  o.max_model_len = 20;
  InferenceDouble d(o);
  sh::CurlClient c;
  json long_messages = json::array({{{"role", "user"}, {"content", words(20)}}});

  auto r = post(c, d, "/v1/chat/completions", json{{"messages", long_messages}});
  CHECK(r.status == 400);
  CHECK(parse(r) == json::parse(R"({"error":{"code":400,"message":"request (24 tokens) exceeds the available context size (20 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":24,"n_ctx":20}})"));

  // Streaming, the slot finds it after the 200 and the SSE head are out: an "error:" line.
  auto s = post(c, d, "/v1/chat/completions", json{{"messages", long_messages}, {"stream", true}});
  CHECK(s.status == 200);
  CHECK(s.header("content-type") == "text/event-stream");
  auto sse = parse_sse(s.body);
  CHECK(sse.chunks.empty());
  REQUIRE(sse.events.size() == 2);
  CHECK(sse.events[0].rfind("error: {\"code\":400,", 0) == 0);
  CHECK(sse.events[0].find("exceed_context_size_error") != std::string::npos);
  CHECK(sse.done);

  // Generation stops at the end of the context: 20 - 16 = 4 tokens, "length".
  auto edge = parse(post(c, d, "/v1/chat/completions", chat_body()));
  CHECK(edge["usage"]["completion_tokens"] == 4);
  CHECK(edge["choices"][0]["finish_reason"] == "length");

  // Malformed bodies reach httplib's exception handler: 500 with nlohmann's text.
  auto bad = perform(c, make("POST", d.base_url() + "/v1/chat/completions", "{not json"));
  CHECK(bad.status == 500);
  auto be = parse(bad)["error"];
  CHECK(be["type"] == "server_error");
  CHECK(be["message"].get<std::string>().find("parse_error") != std::string::npos);
  auto missing = post(c, d, "/v1/chat/completions", json{{"model", "x"}});
  CHECK(missing.status == 500);

  auto emb = post(c, d, "/v1/embeddings", json{{"input", words(30)}});
  CHECK(emb.status == 500);
  CHECK(parse(emb)["error"]["message"] == "input is too large to process. increase the physical batch size");
  // llama.cpp does not care about the content type.
  CHECK(post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 1}}), {}).status == 200);
}

TEST_CASE("inference double: the API key guards what each server guards") {
  const std::string key = "sk-backend-7";
  SECTION("vLLM checks /v1 paths only and answers a bare error string") {
    auto o = opts("vllm");
    o.api_key = key;
    InferenceDouble d(o);
    sh::CurlClient c;
    auto no = post(c, d, "/v1/chat/completions", chat_body());
    CHECK(no.status == 401);
    CHECK(parse(no) == json::parse(R"({"error":"Unauthorized"})"));
    CHECK(get(c, d, "/v1/models").status == 401);
    CHECK(get(c, d, "/v1/models", {"Authorization: Bearer wrong"}).status == 401);
    CHECK(get(c, d, "/v1/models", {"Authorization: bearer " + key}).status == 401);  // exact comparison
    CHECK(get(c, d, "/v1/models", {"Authorization: Bearer " + key}).status == 200);
    CHECK(get(c, d, "/health").status == 200);
    CHECK(post(c, d, "/tokenize", json{{"prompt", "x"}}).status == 200);
    auto ok = post(c, d, "/v1/chat/completions", chat_body(), {"Content-Type: application/json", "Authorization: Bearer " + key});
    CHECK(ok.status == 200);
    CHECK(d.stats()["last_request"]["headers"]["authorization"] == "Bearer " + key);
  }
  SECTION("llama.cpp checks all but health and models") {
    auto o = opts("llamacpp");
    o.api_key = key;
    InferenceDouble d(o);
    sh::CurlClient c;
    auto no = post(c, d, "/v1/chat/completions", chat_body());
    CHECK(no.status == 401);
    CHECK(parse(no) == json::parse(R"({"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}})"));
    CHECK(post(c, d, "/tokenize", json{{"content", "x"}}).status == 401);
    CHECK(get(c, d, "/health").status == 200);
    CHECK(get(c, d, "/v1/models").status == 200);
    CHECK(get(c, d, "/models").status == 200);
    CHECK(post(c, d, "/v1/chat/completions", chat_body(), {"Authorization: Bearer " + key}).status == 200);
  }
}

TEST_CASE("inference double: latency and token timing follow the control settings") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  InferenceDouble d(opts(flavor));
  sh::CurlClient c;
  d.control({{"latency_ms", 300}});
  auto slow = post(c, d, "/v1/chat/completions", chat_body());
  CHECK(slow.status == 200);
  CHECK(slow.seconds >= 0.29);

  d.control({{"latency_ms", 0}, {"first_token_ms", 250}, {"token_interval_ms", 60}, {"completion_tokens", 5}});
  std::mutex mu;
  std::vector<std::pair<double, std::string>> arrivals;
  const auto t0 = std::chrono::steady_clock::now();
  auto req = make("POST", d.base_url() + "/v1/chat/completions", chat_body({{"stream", true}}).dump());
  req.on_data = [&](std::string_view piece) {
    std::lock_guard lk(mu);
    arrivals.emplace_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), std::string(piece));
    return true;
  };
  auto r = perform(c, std::move(req));
  CHECK(r.status == 200);
  std::string body;
  double first_content = -1;
  for (const auto& [t, piece] : arrivals) {
    body += piece;
    if (first_content < 0 && piece.find("\"content\":\"w0\"") != std::string::npos) first_content = t;
  }
  auto s = parse_sse(body);
  CHECK(chat_content(s) == words(5));
  CHECK(first_content >= 0.24);
  CHECK(r.seconds >= 0.25 + 4 * 0.06 - 0.02);
  CHECK(r.seconds < 5);
  CHECK(arrivals.size() >= 4);  // flushed per token, not buffered to the end
}

TEST_CASE("inference double: loading answers 503 everywhere until it is over") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  InferenceDouble d(opts(flavor));
  sh::CurlClient c;
  d.control({{"loading_ms", 1500}});
  auto h = get(c, d, "/health");
  CHECK(h.status == 503);
  auto chat = post(c, d, "/v1/chat/completions", chat_body());
  CHECK(chat.status == 503);
  if (flavor == "llamacpp") {
    CHECK(parse(h) == json::parse(R"({"error":{"code":503,"message":"Loading model","type":"unavailable_error"}})"));
  } else {
    CHECK(parse(h)["error"]["type"] == "ServiceUnavailableError");
    CHECK(parse(h)["error"]["code"] == 503);
  }
  CHECK(d.behaviour()["loading_ms_left"].get<int>() > 0);
  CHECK(eventually([&] { return get(c, d, "/health").status == 200; }, std::chrono::seconds(5)));
  CHECK(post(c, d, "/v1/chat/completions", chat_body()).status == 200);
}

TEST_CASE("inference double: fail_next fails exactly N inference requests") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  InferenceDouble d(opts(flavor));
  sh::CurlClient c;
  d.control({{"fail_next", {{"status", 503}, {"count", 2}}}});
  CHECK(get(c, d, "/health").status == 200);  // not an inference request: nothing consumed
  auto a = post(c, d, "/v1/chat/completions", chat_body());
  auto b = post(c, d, "/v1/embeddings", json{{"model", "test-model"}, {"input", "x"}});
  auto ok = post(c, d, "/v1/chat/completions", chat_body());
  CHECK(a.status == 503);
  CHECK(b.status == 503);
  CHECK(ok.status == 200);
  if (flavor == "vllm") {
    CHECK(parse(a)["error"]["code"] == 503);
    CHECK(parse(a)["error"]["type"] == "ServiceUnavailableError");
  } else {
    CHECK(parse(a)["error"]["type"] == "unavailable_error");
  }
  auto st = d.stats();
  CHECK(st["status_counts"]["503"] == 2);
  CHECK(d.behaviour()["fail_next"].is_null());

  // A 500 that vLLM sends when its engine dies, in the older flat format this once.
  d.control({{"fail_next", {{"status", 500}, {"format", "flat"}}}});
  auto f = post(c, d, "/v1/completions", json{{"model", "test-model"}, {"prompt", "x"}});
  CHECK(f.status == 500);
  if (flavor == "vllm") {
    auto j = parse(f);
    CHECK(j["object"] == "error");
    CHECK(j["message"] == "EngineCore encountered an issue. See stack trace (above) for the root cause.");
  } else {
    CHECK(parse(f)["error"]["type"] == "server_error");
  }
  // Streams fail before any byte of the stream.
  d.control({{"fail_next", {{"status", 502}}}});
  auto fs = post(c, d, "/v1/chat/completions", chat_body({{"stream", true}}));
  CHECK(fs.status == 502);
  CHECK(fs.header("content-type").find("application/json") == 0);
}

TEST_CASE("inference double: cut_after_tokens closes a stream without DONE") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  InferenceDouble d(opts(flavor));
  sh::CurlClient c;
  d.control({{"cut_after_tokens", 3}});
  auto r = post(c, d, "/v1/chat/completions", chat_body({{"stream", true}}));
  // The chunked body never ended: curl reports a transfer error (and CurlClient status 0).
  CHECK(r.status == 0);
  CHECK_FALSE(r.error.empty());
  auto s = parse_sse(r.body);
  CHECK_FALSE(s.done);
  CHECK(s.chunks.size() == 1 + 3);
  CHECK(chat_content(s) == "w0 w1 w2");
  // Non-stream answers are not affected.
  CHECK(post(c, d, "/v1/chat/completions", chat_body()).status == 200);
  CHECK(eventually([&] { return d.stats()["streams_cut"] == 1; }));
  // Cut after the last token: all content, but no usage and no [DONE].
  d.control({{"cut_after_tokens", 16}});
  auto all = parse_sse(post(c, d, "/v1/chat/completions", chat_body({{"stream", true}, {"stream_options", {{"include_usage", true}}}})).body);
  CHECK(chat_content(all) == words(16));
  CHECK_FALSE(all.done);
  for (const auto& ch : all.chunks) CHECK_FALSE(ch.contains("usage"));
  d.control({{"cut_after_tokens", nullptr}});
  CHECK(parse_sse(post(c, d, "/v1/chat/completions", chat_body({{"stream", true}})).body).done);
}

TEST_CASE("inference double: wrong content type, omit_usage, tokenize failure and down") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  InferenceDouble d(opts(flavor));
  sh::CurlClient c;
  const bool vllm = flavor == "vllm";

  d.control({{"wrong_content_type", true}});
  auto html = post(c, d, "/v1/chat/completions", chat_body());
  CHECK(html.status == 200);
  CHECK(html.header("content-type").rfind("text/html", 0) == 0);
  CHECK(html.body.rfind("<!DOCTYPE html>", 0) == 0);
  d.control({{"wrong_content_type", false}, {"omit_usage", true}});

  auto plain = parse(post(c, d, "/v1/chat/completions", chat_body()));
  CHECK_FALSE(plain.contains("usage"));
  CHECK_FALSE(plain.contains("timings"));
  CHECK(plain["choices"][0]["message"]["content"] == words(16));
  auto s = parse_sse(post(c, d, "/v1/chat/completions", chat_body({{"stream", true}, {"stream_options", {{"include_usage", true}}}})).body);
  CHECK(s.done);
  for (const auto& ch : s.chunks) {
    CHECK_FALSE(ch.contains("usage"));
    CHECK_FALSE(ch.contains("timings"));
  }
  CHECK(chat_content(s) == words(16));
  CHECK_FALSE(parse(post(c, d, "/v1/embeddings", json{{"model", "test-model"}, {"input", "x"}})).contains("usage"));
  // ... but /tokenize still counts: the fallback the connector uses.
  auto t = parse(post(c, d, "/tokenize", vllm ? json{{"prompt", "a b"}} : json{{"content", "a b"}}));
  CHECK(t["tokens"].size() == 2);

  d.control({{"tokenize_status", 500}});
  auto tf = post(c, d, "/tokenize", vllm ? json{{"prompt", "a b"}} : json{{"content", "a b"}});
  CHECK(tf.status == 500);
  CHECK(parse(tf).contains("error"));
  d.control({{"tokenize_status", 0}});

  d.control({{"down", true}});
  auto down = post(c, d, "/v1/chat/completions", chat_body());
  CHECK(down.status == 0);
  CHECK_FALSE(down.error.empty());
  CHECK(get(c, d, "/health").status == 0);
  CHECK(d.stats()["closed_unanswered"].get<int>() >= 2);
  d.control({{"down", false}});
  CHECK(post(c, d, "/v1/chat/completions", chat_body()).status == 200);
}

TEST_CASE("inference double: a client that leaves mid-stream stops the generation") {
  auto flavor = GENERATE(as<std::string>{}, "vllm", "llamacpp");
  INFO(flavor);
  InferenceDouble d(opts(flavor));
  sh::CurlClient c;
  d.control({{"token_interval_ms", 50}, {"completion_tokens", 400}});
  // The client stops reading after its first piece (curl closes the connection).
  auto req = make("POST", d.base_url() + "/v1/chat/completions", chat_body({{"stream", true}}).dump());
  req.on_data = [](std::string_view) { return false; };
  auto r = perform(c, std::move(req));
  CHECK_FALSE(r.error.empty());
  CHECK(eventually([&] { return d.stats()["streams_cancelled_by_client"] == 1; }, std::chrono::seconds(3)));
  auto st = d.stats();
  CHECK(st["streams_completed"] == 0);
  CHECK(st["in_flight"] == 0);

  // Gone while the double waits for the first token (nothing is being written): the read armed
  // beside the writer sees the EOF at once, long before the 20 s first token.
  d.control({{"first_token_ms", 20000}});
  auto slow = make("POST", d.base_url() + "/v1/chat/completions", chat_body({{"stream", true}}).dump());
  slow.timeout = std::chrono::milliseconds(300);
  auto t = perform(c, std::move(slow));
  CHECK(t.timed_out);
  CHECK(eventually([&] { return d.stats()["streams_cancelled_by_client"] == 2; }, std::chrono::seconds(3)));
  CHECK(d.stats()["in_flight"] == 0);
}

TEST_CASE("inference double: stats record what the upstream received") {
  InferenceDouble d(opts("vllm"));
  sh::CurlClient c;
  post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 7}, {"stream", true}, {"stream_options", {{"include_usage", true}}}}),
       {"Content-Type: application/json", "X-Request-Id: abc-1"});
  get(c, d, "/health");
  post(c, d, "/v1/chat/completions?trace=1", chat_body({{"max_tokens", 5}}), {"Content-Type: application/json", "X-Request-Id: abc-2"});
  auto st = d.stats();
  CHECK(st["counts"]["/v1/chat/completions"] == 2);
  CHECK(st["counts"]["/health"] == 1);
  CHECK_FALSE(st["counts"].contains("/_control/stats"));
  CHECK(st["requests_total"] == 3);
  CHECK(st["streams_started"] == 1);
  CHECK(st["streams_completed"] == 1);
  // A request leaves in_flight once its handler unwinds, just after the reply went out.
  CHECK(eventually([&] { return d.stats()["in_flight"] == 0; }));
  const auto& last = st["last_request"];
  CHECK(last["method"] == "POST");
  CHECK(last["target"] == "/v1/chat/completions?trace=1");
  CHECK(last["headers"]["x-request-id"] == "abc-2");
  CHECK(last["headers"]["content-type"] == "application/json");
  CHECK(last["body"]["max_tokens"] == 5);
  CHECK(last["body"]["messages"] == kMessages);

  // Keep-alive: calls on a fresh client share one connection, streams included (the stats call
  // opens its own).
  auto before = d.stats()["connections_accepted"].get<int>();
  {
    sh::CurlClient fresh;
    post(fresh, d, "/v1/chat/completions", chat_body());
    post(fresh, d, "/v1/chat/completions", chat_body({{"stream", true}}));
    post(fresh, d, "/v1/chat/completions", chat_body());
  }
  CHECK(d.stats()["connections_accepted"].get<int>() - before == 1 + 1);

  // max_in_flight: concurrent requests overlap.
  d.control({{"latency_ms", 300}});
  std::vector<sh::Request> reqs;
  for (int i = 0; i < 8; ++i) reqs.push_back(make("POST", d.base_url() + "/v1/chat/completions", chat_body().dump()));
  auto answers = perform_all(c, std::move(reqs));
  for (const auto& a : answers) CHECK(a.status == 200);
  CHECK(d.stats()["max_in_flight"] == 8);
}

TEST_CASE("inference double: keep-alive limits of uvicorn and httplib") {
  SECTION("llama.cpp closes a connection after its 5th request") {
    InferenceDouble d(opts("llamacpp"));
    auto before = d.stats()["connections_accepted"].get<int>();
    sh::CurlClient c;
    std::vector<std::string> connection;
    for (int i = 0; i < 6; ++i) {
      auto r = post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 1}, {"stream", i % 2 == 1}}));
      CHECK(r.status == 200);
      connection.push_back(r.header("connection"));
    }
    CHECK(connection[3] != "close");
    CHECK(connection[4] == "close");
    // Two connections for the six calls, and this stats call's own.
    CHECK(d.stats()["connections_accepted"].get<int>() - before == 2 + 1);
  }
  SECTION("vLLM keeps one connection for as long as it is used") {
    InferenceDouble d(opts("vllm"));
    auto before = d.stats()["connections_accepted"].get<int>();
    sh::CurlClient c;
    for (int i = 0; i < 8; ++i) CHECK(post(c, d, "/v1/chat/completions", chat_body({{"max_tokens", 1}})).status == 200);
    CHECK(d.stats()["connections_accepted"].get<int>() - before == 1 + 1);
  }
  SECTION("an idle connection is closed by the server") {
    auto o = opts("vllm");
    o.extra_args = {"--keep-alive-ms", "200"};
    InferenceDouble d(o);
    sh::CurlClient c;
    CHECK(post(c, d, "/v1/chat/completions", chat_body()).status == 200);
    // Only the stats call's own connection is left once the client's has idled out.
    CHECK(eventually([&] { return d.stats()["connections_open"] == 1; }, std::chrono::seconds(3)));
    CHECK(post(c, d, "/v1/chat/completions", chat_body()).status == 200);  // the client reconnects
  }
}

TEST_CASE("inference double: control rejects what it does not know and reset restores defaults") {
  InferenceDouble d(opts("llamacpp"));
  CHECK(d.request("POST", "/_control", R"({"bogus":1})").status == 400);
  CHECK(d.request("POST", "/_control", R"({"latency_ms":-5})").status == 400);
  CHECK(d.request("POST", "/_control", R"({"fail_next":{"status":200}})").status == 400);
  CHECK(d.request("POST", "/_control", R"({"latency_ms":100,"bogus":1})").status == 400);
  CHECK(d.behaviour()["latency_ms"] == 0);  // nothing of a refused body is applied
  CHECK(d.request("POST", "/_control", "not json").status == 400);

  auto defaults = d.behaviour();
  d.control(json::parse(R"({"first_token_ms":5,"token_interval_ms":6,"latency_ms":7,"completion_tokens":8,
                            "fail_next":{"status":503,"count":3},"cut_after_tokens":2,"wrong_content_type":true,
                            "omit_usage":true,"tokenize_status":500,"down":true})"));
  CHECK(d.behaviour() != defaults);
  CHECK_THROWS(d.request("GET", "/health"));  // down: closed without an answer, but counted
  CHECK(d.stats()["requests_total"] == 1);
  d.reset();
  CHECK(d.behaviour() == defaults);
  CHECK(d.stats()["requests_total"] == 0);
  CHECK(d.stats()["last_request"].is_null());
  // reset first, then the rest of the same body.
  d.control(json::parse(R"({"reset":true,"latency_ms":9})"));
  CHECK(d.behaviour()["latency_ms"] == 9);
}

TEST_CASE("inference double: 200 concurrent streams on two threads") {
  auto o = opts("vllm");
  o.threads = 2;
  InferenceDouble d(o);
  sh::CurlClient c;
  d.control({{"token_interval_ms", 20}, {"completion_tokens", 10}});
  std::vector<sh::Request> reqs;
  for (int i = 0; i < 200; ++i)
    reqs.push_back(make("POST", d.base_url() + "/v1/chat/completions",
                        chat_body({{"stream", true}, {"stream_options", {{"include_usage", true}}}}).dump()));
  auto answers = perform_all(c, std::move(reqs));
  int complete = 0;
  for (const auto& a : answers) {
    auto s = parse_sse(a.body);
    if (a.status == 200 && s.done && chat_content(s) == words(10) && s.chunks.back()["usage"]["completion_tokens"] == 10) ++complete;
  }
  CHECK(complete == 200);
  auto st = d.stats();
  CHECK(st["streams_completed"] == 200);
  CHECK(st["max_in_flight"].get<int>() >= 100);
}

// The benchmark's load, checked once: 1,000 streams at once on two threads, and what they cost.
TEST_CASE("inference double: 1000 concurrent streams", "[slow]") {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  auto o = opts("vllm");
  o.threads = 2;
  InferenceDouble d(o);
  long idle_rss = d.rss_kib();
  sh::CurlClient c;
  d.control({{"token_interval_ms", 100}, {"completion_tokens", 30}});
  std::atomic<bool> running{true};
  std::atomic<long> peak_rss{0};
  std::thread sampler([&] {
    while (running) {
      peak_rss = std::max(peak_rss.load(), d.rss_kib());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::vector<sh::Request> reqs;
  for (int i = 0; i < 1000; ++i) {
    reqs.push_back(make("POST", d.base_url() + "/v1/chat/completions", chat_body({{"stream", true}}).dump()));
    reqs.back().connect_timeout = std::chrono::seconds(20);
    reqs.back().timeout = std::chrono::seconds(60);
  }
  auto t0 = std::chrono::steady_clock::now();
  auto answers = perform_all(c, std::move(reqs));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  running = false;
  sampler.join();
  int complete = 0;
  for (const auto& a : answers)
    if (a.status == 200 && parse_sse(a.body).done) ++complete;
  auto st = d.stats();
  std::ifstream status("/proc/" + std::to_string(d.pid()) + "/status");
  std::string line, threads;
  while (std::getline(status, line))
    if (line.rfind("Threads:", 0) == 0) threads = line.substr(8);
  WARN("1000 streams x 30 tokens at 100 ms: " << secs << " s, complete " << complete << ", max_in_flight " << st["max_in_flight"]
                                              << ", max_connections_open " << st["max_connections_open"] << ", RSS idle "
                                              << idle_rss << " KiB, peak " << peak_rss.load() << " KiB, threads " << threads);
  CHECK(complete == 1000);
  CHECK(st["max_in_flight"].get<int>() >= 950);
  CHECK(std::stoi(threads) <= 4);
  CHECK(peak_rss.load() < 256 * 1024);
}
