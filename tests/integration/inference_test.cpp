// Metered inference through the real binary against the vLLM / llama.cpp test double
// (tests/support/inference_double.cpp, a real HTTP server on 127.0.0.1 that reproduces both
// servers' wire formats): call_inference and embed as MCP tools, the OpenAI-compatible
// endpoint, retries, fallback and the circuit breaker, metering with and without the backend's
// usage, and what the backend received.
#include <catch2/catch.hpp>

#include <set>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "server_process.hpp"
#include "support/eventually.hpp"
#include "support/inference_double.hpp"
#include "tool_call.hpp"

using namespace scigate::itest;
namespace fs = std::filesystem;
using scigate::test::eventually;
using scigate::test::InferenceDouble;
using scigate::test::InferenceDoubleOptions;
using http::verb;

namespace {

constexpr const char* kModel = "llama-3.1-8b-instruct";
constexpr const char* kBackendKey = "backend-secret-key-3f9a";

constexpr const char* kPolicy = R"(
[[rules]]
id = "members-infer"
effect = "permit"
principals = ["role:member"]
tools = ["call_inference", "embed"]
[rules.when]
model = { in = ["llama-3.1-8b-instruct", "pricey", "bge-m3"] }
max_tokens = { max = 100000, optional = true }

[[rules]]
id = "members-look"
effect = "permit"
principals = ["role:member"]
tools = ["get_usage", "whoami", "stat_file", "query_model_registry", "get_model"]
)";

InferenceDoubleOptions vllm(std::vector<std::string> models = {kModel}) {
  InferenceDoubleOptions o;
  o.models = std::move(models);
  o.api_key = kBackendKey;
  return o;
}

std::string backend_entry(const std::string& id, const InferenceDouble& d, const std::string& extra = "") {
  return "{ id = \"" + id + "\", url = \"" + d.base_url() + "\", flavor = \"" + d.options().flavor +
         "\", api_key_file = \"backend.key\"" + (extra.empty() ? "" : ", " + extra) + " }";
}

// A server whose [inference] backends are the given entries; tokens cost 0.001 (in) and 0.002
// (out) credits, "pricey" output 1 credit a token.
struct InfServer {
  ServerProcess s;
  InfServer(const std::vector<std::string>& backends, const std::string& inference_extra = "")
      : s(config(backends, inference_extra), false) {
    std::ofstream(s.dir() / "backend.key") << kBackendKey << "\n";
    std::ofstream(s.dir() / "policies" / "demo.toml") << kPolicy;
    s.start();
  }
  static std::string config(const std::vector<std::string>& backends, const std::string& extra) {
    std::string list;
    for (const auto& b : backends) list += (list.empty() ? "" : ", ") + b;
    return R"([credits.rates]
"tokens_in:llama-3.1-8b-instruct" = 0.001
"tokens_out:llama-3.1-8b-instruct" = 0.002
"tokens_out:pricey" = 1
"tokens_in:bge-m3" = 0.001

[inference]
retry_backoff_ms = 10
health_interval_ms = 200
)" + extra + "backends = [" + list + "]\n";
  }
};

double balance(Client& c, const ServerProcess& s) {
  return call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"]["balance"].get<double>();
}

json chat_args(int max_tokens, const std::string& model = kModel, const std::string& text = "Hello, world!") {
  return json{{"model", model}, {"messages", json::array({json{{"role", "user"}, {"content", text}}})}, {"max_tokens", max_tokens}};
}

// scigate's prompt estimate for chat_args' default message: frame + message + ceil(13 bytes / 3).
constexpr int kPromptEstimate = 16 + 8 + 5;

// What the project has paid since `before`, once the charge has landed (it is settled after the
// call ends, which a cancelled or cut-off caller does not wait for).
double charged_since(Client& c, const ServerProcess& s, double before) {
  double charged = 0;
  REQUIRE(eventually([&] {
    charged = before - balance(c, s);
    return charged > 0;
  }));
  return charged;
}

std::string words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " w" : "w") + std::to_string(i);
  return s;
}

std::string error_code(const json& r) { return r["_meta"]["io.scigate/error"].value("code", ""); }
std::string error_message(const json& r) { return r["_meta"]["io.scigate/error"].value("message", ""); }

int chat_requests(InferenceDouble& d) {
  auto st = d.stats();
  return st["counts"].value("/v1/chat/completions", 0);
}

// The backends are polled at start; the first call waits until the model is served.
void wait_served(Client& c, const ServerProcess& s, const std::string& model = kModel) {
  REQUIRE(eventually([&] {
    auto r = c.request(verb::get, "/v1/models", {{"Authorization", "Bearer " + s.user_key()}});
    return r.status == 200 && r.body.find("\"" + model + "\"") != std::string::npos;
  }));
}

std::map<std::string, std::string> bearer(const std::string& key) {
  return {{"Authorization", "Bearer " + key}, {"Content-Type", "application/json"}};
}

// The data: payloads of an event stream body, in order ("[DONE]" included).
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
  }
  return out;
}

}  // namespace

TEST_CASE("inference: call_inference streams from vLLM, is charged the backend's usage, and the backend saw what it should") {
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  double before = balance(c, s);

  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(10));
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  CHECK(sc["text"] == words(10));
  CHECK(sc["finish_reason"] == "length");
  CHECK(sc["backend"] == "gpu01");
  CHECK(sc["model"] == kModel);
  // "Hello, world!" is 4 tokens, plus 4 for the chat template.
  CHECK(sc["usage"]["prompt_tokens"] == 8);
  CHECK(sc["usage"]["completion_tokens"] == 10);
  CHECK(sc["usage"]["counted_by"] == "backend");
  CHECK_FALSE(sc.contains("max_tokens_capped"));
  CHECK(before - balance(c, s) == Approx(8 * 0.001 + 10 * 0.002));

  // Upstream: a stream with usage asked for, the caller's max_tokens, the backend's own key.
  auto last = d.stats()["last_request"];
  CHECK(last["target"] == "/v1/chat/completions");
  CHECK(last["body"]["stream"] == true);
  CHECK(last["body"]["stream_options"]["include_usage"] == true);
  CHECK(last["body"]["max_tokens"] == 10);
  CHECK(last["body"]["model"] == kModel);
  CHECK(last["headers"]["authorization"] == std::string("Bearer ") + kBackendKey);
  CHECK(last["headers"]["content-type"] == "application/json");
  // The backend key is never logged, and never reaches the caller.
  CHECK(s.log().find(kBackendKey) == std::string::npos);
  CHECK(r.dump().find(kBackendKey) == std::string::npos);

  // A model the backend does not serve: not found, with a way forward; the backend not asked.
  int asked = chat_requests(d);
  auto missing = call_tool(c, s.user_key(), "call_inference", chat_args(5, "bge-m3"));
  CHECK(missing["isError"] == true);
  CHECK(error_code(missing) == "not_found");
  CHECK(error_message(missing).find("not served") != std::string::npos);
  CHECK(chat_requests(d) == asked);
  // A model the policy does not admit is refused before anything is held or sent.
  auto denied = call_tool(c, s.user_key(), "call_inference", chat_args(5, "qwen-72b"));
  CHECK(error_code(denied) == "policy_denied");
}

TEST_CASE("inference: llama.cpp's unasked usage, then /tokenize when a backend reports none, then the hold") {
  InferenceDoubleOptions o = vllm();
  o.flavor = "llamacpp";
  InferenceDouble d(o);
  InfServer is({backend_entry("cpu-llama", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(6));
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  CHECK(r["structuredContent"]["text"] == words(6));
  CHECK(r["structuredContent"]["usage"]["counted_by"] == "backend");
  CHECK(r["structuredContent"]["usage"]["completion_tokens"] == 6);

  d.control({{"omit_usage", true}});
  double before = balance(c, s);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(6));
  REQUIRE(r["isError"] == false);
  auto u = r["structuredContent"]["usage"];
  CHECK(u["counted_by"] == "tokenize");
  CHECK(u["prompt_tokens"] == 4);       // llama.cpp's /tokenize counts the text, not the template
  CHECK(u["completion_tokens"] == 6);
  CHECK(d.stats()["counts"].value("/tokenize", 0) == 2);
  CHECK(before - balance(c, s) == Approx(4 * 0.001 + 6 * 0.002));

  // No usage and no tokenizer: the hold is charged (the estimate and max_tokens), never zero.
  d.control({{"tokenize_status", 500}});
  before = balance(c, s);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(6));
  REQUIRE(r["isError"] == false);
  u = r["structuredContent"]["usage"];
  CHECK(u["counted_by"] == "hold");
  CHECK(u["completion_tokens"] == 6);
  const int estimate = kPromptEstimate;
  CHECK(u["prompt_tokens"] == estimate);
  CHECK(before - balance(c, s) == Approx(estimate * 0.001 + 6 * 0.002));
}

TEST_CASE("inference: the backends' /v1/models keep the registry's served-now current, down and up again") {
  InferenceDouble d(vllm({kModel, "in-house-finetune"}));
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  auto served_now = [&] {
    std::set<std::string> ids;
    auto r = call_tool(c, s.user_key(), "query_model_registry", {{"served_now", true}});
    for (const auto& m : r["structuredContent"]["models"]) ids.insert(m["id"].get<std::string>());
    return ids;
  };
  // The catalog (the example manifest) learns from the health poll who serves what.
  REQUIRE(eventually([&] { return served_now() == std::set<std::string>{kModel}; }));
  auto m = call_tool(c, s.user_key(), "get_model", {{"model", kModel}})["structuredContent"];
  REQUIRE(m["served_by"].size() == 1);
  CHECK(m["served_by"][0]["backend"] == "gpu01");
  // A served model no manifest describes is not invented; the operator is told.
  CHECK(s.wait_for_log("\"event\":\"inference_model_not_in_catalog\""));
  CHECK(s.wait_for_log("in-house-finetune"));

  // The backend goes away: it serves nothing, and the registry says so.
  d.control({{"down", true}});
  CHECK(eventually([&] { return served_now().empty(); }));
  CHECK(s.wait_for_log("\"event\":\"inference_backend_down\""));
  CHECK(call_tool(c, s.user_key(), "get_model", {{"model", kModel}})["structuredContent"]["served_by"].empty());
  // And comes back.
  d.control({{"down", false}});
  CHECK(eventually([&] { return served_now() == std::set<std::string>{kModel}; }));
  CHECK(s.wait_for_log("\"event\":\"inference_backend_up\""));
}

TEST_CASE("inference: a failing replica is retried elsewhere, its breaker opens, and a trial closes it after the cooldown") {
  InferenceDouble a(vllm()), b(vllm());
  InfServer is({backend_entry("a", a), backend_entry("b", b)}, "breaker_failures = 2\nbreaker_cooldown_ms = 1500\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  a.control({{"fail_next", {{"status", 503}, {"count", 100}}}});
  for (int i = 0; i < 6; ++i) {
    auto r = call_tool(c, s.user_key(), "call_inference", chat_args(3));
    INFO(i << " " << r.dump());
    REQUIRE(r["isError"] == false);
    CHECK(r["structuredContent"]["backend"] == "b");
  }
  CHECK(chat_requests(a) == 2);  // two failures opened the breaker; no more calls went there
  CHECK(chat_requests(b) == 6);
  CHECK(s.wait_for_log("inference_breaker_open"));
  // After the cooldown one trial goes to a; it succeeds and a is in service again.
  a.control({{"reset", true}});
  std::this_thread::sleep_for(std::chrono::milliseconds(1700));
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(3));
  REQUIRE(r["isError"] == false);
  CHECK(r["structuredContent"]["backend"] == "a");
  CHECK(chat_requests(a) == 1);  // the reset cleared a's counters
}

TEST_CASE("inference: errors come back as the caller can act on them, and cost what was generated") {
  InferenceDoubleOptions o = vllm();
  o.max_model_len = 64;
  o.error_format = "flat";
  InferenceDouble d(o);
  InfServer is({backend_entry("gpu01", d, "first_token_timeout_ms = 400")}, "retries = 2\nbreaker_failures = 100\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  // A 500 is retried (three attempts), then reported; nothing was generated, nothing charged.
  d.control({{"fail_next", {{"status", 500}, {"count", 3}}}});
  double before = balance(c, s);
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(5));
  CHECK(r["isError"] == true);
  CHECK(error_code(r) == "backend_unavailable");
  CHECK(error_message(r).find("failed with HTTP 500") != std::string::npos);
  CHECK(chat_requests(d) == 3);
  CHECK(balance(c, s) == Approx(before));

  // The context limit (vLLM's flat error) is the caller's to fix: not retried, the message kept.
  d.control({{"reset", true}});
  r = call_tool(c, s.user_key(), "call_inference", chat_args(5, kModel, std::string(400, 'x') + " " + words(80)));
  CHECK(error_code(r) == "backend_rejected");
  CHECK(error_message(r).find("maximum context length is 64 tokens") != std::string::npos);
  CHECK(chat_requests(d) == 1);

  // A stream cut after three tokens: an error, not retried (the caller saw output), and the
  // prompt and three tokens are paid.
  d.control({{"reset", true}, {"cut_after_tokens", 3}});
  before = balance(c, s);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(10));
  CHECK(error_code(r) == "backend_unavailable");
  CHECK(error_message(r).find("broke off after 3 chunks") != std::string::npos);
  CHECK(chat_requests(d) == 1);
  const int estimate = kPromptEstimate;
  CHECK(before - balance(c, s) == Approx(estimate * 0.001 + 3 * 0.002));

  // A proxy answering HTML, and a backend that sends nothing in time: both retried, then said.
  d.control({{"reset", true}, {"wrong_content_type", true}});
  r = call_tool(c, s.user_key(), "call_inference", chat_args(5));
  INFO(r.dump());
  CHECK(error_message(r).find("text/html instead of an event stream") != std::string::npos);
  d.control({{"reset", true}, {"first_token_ms", 3000}});
  auto t0 = std::chrono::steady_clock::now();
  r = call_tool(c, s.user_key(), "call_inference", chat_args(5));
  CHECK(error_message(r).find("sent nothing within 400 ms") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  CHECK(d.stats()["streams_cancelled_by_client"].get<int>() >= 1);  // the backend was told to stop
}

TEST_CASE("inference: a stream past the whole-call limit is a timeout (504 on /v1), not retried, and pays what came") {
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d, "request_timeout_ms = 800")}, "retries = 2\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  d.control({{"token_interval_ms", 100}});  // 40 tokens: 4 s, the limit cuts it at ~8

  double before = balance(c, s);
  auto t0 = std::chrono::steady_clock::now();
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(40));
  INFO(r.dump());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  CHECK(error_code(r) == "timeout");
  CHECK(error_message(r).find("did not finish within 800 ms") != std::string::npos);
  CHECK(chat_requests(d) == 1);  // a retry could not finish within the same limit either
  CHECK(d.stats()["streams_cancelled_by_client"].get<int>() >= 1);
  // The prompt and the tokens that came are paid, not the 40 held.
  const int estimate = kPromptEstimate;
  double paid = before - balance(c, s);
  CHECK(paid > estimate * 0.001 + 2 * 0.002);
  CHECK(paid < estimate * 0.001 + 20 * 0.002);

  // The OpenAI-compatible endpoint says so as OpenAI would: 504, a timeout_error.
  json body = {{"model", kModel}, {"messages", json::array({json{{"role", "user"}, {"content", "Hello, world!"}}})},
               {"max_tokens", 40}};
  auto h = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), body.dump());
  INFO(h.body);
  CHECK(h.status == 504);
  CHECK(h.json_body()["error"]["type"] == "timeout_error");
}

TEST_CASE("inference: max_tokens is cut to what the project can pay, so the budget is never overrun") {
  InferenceDouble d(vllm({"pricey"}));
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s, "pricey");
  double before = balance(c, s);  // 1000 credits from scigate init; output costs 1 credit a token
  REQUIRE(before == Approx(1000));
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(5000, "pricey"));
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  CHECK(sc["max_tokens_capped"] == true);
  CHECK(sc["max_tokens"] == 1000);
  CHECK(d.stats()["last_request"]["body"]["max_tokens"] == 1000);
  CHECK(r["content"][0]["text"].get<std::string>().find("cut to 1000 by the project's credits") != std::string::npos);
  CHECK(sc["usage"]["completion_tokens"] == 16);  // the model stopped by itself
  CHECK(balance(c, s) == Approx(before - 16));
}

TEST_CASE("inference: the OpenAI-compatible endpoint answers like OpenAI, streaming included, with scigate's keys and policy") {
  InferenceDouble d(vllm({kModel, "bge-m3", "not-allowed"}));
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  auto models = c.request(verb::get, "/v1/models", bearer(s.user_key())).json_body();
  std::vector<std::string> ids;
  for (const auto& m : models["data"]) ids.push_back(m["id"]);
  std::sort(ids.begin(), ids.end());
  CHECK(ids == std::vector<std::string>{"bge-m3", kModel});  // not-allowed is served but not admitted
  CHECK(models["object"] == "list");

  json body = {{"model", kModel}, {"messages", json::array({json{{"role", "user"}, {"content", "Hello, world!"}}})},
               {"max_tokens", 5}};
  auto r = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), body.dump());
  REQUIRE(r.status == 200);
  auto j = r.json_body();
  INFO(j.dump());
  CHECK(j["object"] == "chat.completion");
  CHECK(j["choices"][0]["message"]["role"] == "assistant");
  CHECK(j["choices"][0]["message"]["content"] == words(5));
  CHECK(j["choices"][0]["finish_reason"] == "length");
  CHECK(j["usage"]["prompt_tokens"] == 8);
  CHECK(j["usage"]["completion_tokens"] == 5);

  // Streaming: chunks as the backend sent them, no usage chunk unless asked, then [DONE].
  body["stream"] = true;
  r = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), body.dump());
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type").rfind("text/event-stream", 0) == 0);
  auto events = sse_data(r.body);
  REQUIRE(events.size() >= 3);
  CHECK(events.back() == "[DONE]");
  std::string text;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    auto chunk = json::parse(events[i]);
    CHECK(chunk["object"] == "chat.completion.chunk");
    CHECK_FALSE(chunk.contains("usage"));
    if (!chunk["choices"].empty() && chunk["choices"][0]["delta"].contains("content"))
      text += chunk["choices"][0]["delta"]["content"].get<std::string>();
  }
  CHECK(text == words(5));
  body["stream_options"] = {{"include_usage", true}};
  events = sse_data(c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), body.dump()).body);
  REQUIRE(events.size() >= 2);
  auto usage_chunk = json::parse(events[events.size() - 2]);
  CHECK(usage_chunk["choices"].empty());
  CHECK(usage_chunk["usage"]["completion_tokens"] == 5);

  // Embeddings: the backend's answer as it is.
  auto e = c.request(verb::post, "/v1/embeddings", bearer(s.user_key()),
                     json{{"model", "bge-m3"}, {"input", json::array({"a b", "c"})}}.dump());
  REQUIRE(e.status == 200);
  auto ej = e.json_body();
  CHECK(ej["data"].size() == 2);
  CHECK(ej["data"][0]["embedding"].size() == 8);
  CHECK(ej["usage"]["prompt_tokens"] == 3);

  // Refusals in OpenAI's shape, with statuses OpenAI clients understand.
  auto denied = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()),
                          json{{"model", "not-allowed"}, {"messages", body["messages"]}}.dump());
  CHECK(denied.status == 403);
  CHECK(denied.json_body()["error"]["type"] == "permission_error");
  CHECK(c.request(verb::post, "/v1/chat/completions", {{"Content-Type", "application/json"}}, body.dump()).status == 401);
  auto bad = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), "{not json");
  CHECK(bad.status == 400);
  CHECK(bad.json_body()["error"]["type"] == "invalid_request_error");
  auto bad_n = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()),
                         json{{"model", kModel}, {"messages", body["messages"]}, {"n", 3}}.dump());
  CHECK(bad_n.status == 400);
  CHECK(c.request(verb::post, "/v1/completions", bearer(s.user_key()), body.dump()).status == 404);
  // The same credits as the MCP tool: the calls above were charged.
  CHECK(balance(c, s) < 1000);
}

TEST_CASE("inference: a client that hangs up mid-stream stops the generation and pays for what was generated") {
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  d.control({{"token_interval_ms", 100}, {"completion_tokens", 200}});
  double before = balance(c, s);
  json body = {{"model", kModel}, {"messages", json::array({json{{"role", "user"}, {"content", "Hello, world!"}}})},
               {"max_tokens", 200}, {"stream", true}};
  {
    Client stream(s.port());
    stream.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s.user_key() +
                    "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.dump().size()) +
                    "\r\n\r\n" + body.dump());
    auto head = stream.read_head();
    REQUIRE(head.status == 200);
    for (int i = 0; i < 4; ++i) REQUIRE(stream.next_event());
    stream.close();
  }
  REQUIRE(eventually([&] { return d.stats()["streams_cancelled_by_client"].get<int>() == 1; }));
  // Charged: the prompt estimate and the tokens that came before the hang-up; far from 200.
  double charged = charged_since(c, s, before);
  const int estimate = kPromptEstimate;
  CHECK(charged >= estimate * 0.001 + 3 * 0.002 - 1e-9);
  CHECK(charged < estimate * 0.001 + 100 * 0.002);
  CHECK(d.stats()["streams_completed"].get<int>() == 0);
}

TEST_CASE("inference: call_inference reports progress, and notifications/cancelled stops the backend's generation") {
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  d.control({{"token_interval_ms", 20}, {"completion_tokens", 400}});  // 8 s if left alone
  double before = balance(c, s);
  std::string sid = c.request(verb::post, "/mcp", legacy_headers(s.user_key()), legacy_initialize().dump())
                        .header("mcp-session-id");
  REQUIRE_FALSE(sid.empty());

  json call{{"jsonrpc", "2.0"}, {"id", "inf-1"}, {"method", "tools/call"},
            {"params", {{"name", "call_inference"}, {"arguments", chat_args(400)}, {"_meta", {{"progressToken", "gen"}}}}}};
  Client caller(s.port());
  auto t0 = std::chrono::steady_clock::now();
  caller.send_raw(raw_post(legacy_headers(s.user_key(), sid), call.dump()));
  auto head = caller.read_head();
  REQUIRE(head.status == 200);
  REQUIRE(head.header("content-type") == "text/event-stream");
  // Progress every 16 tokens, against max_tokens.
  std::vector<json> progress;
  while (progress.size() < 2) {
    auto ev = caller.next_event();
    REQUIRE(ev);
    if (ev->value("method", "") == "notifications/progress") progress.push_back(*ev);
  }
  CHECK(progress[0]["params"]["progressToken"] == "gen");
  CHECK(progress[0]["params"]["progress"] == 16);
  CHECK(progress[1]["params"]["progress"] == 32);
  CHECK(progress[0]["params"]["total"] == 400);
  CHECK(progress[0]["params"]["message"] == "tokens generated");

  json cancel{{"jsonrpc", "2.0"}, {"method", "notifications/cancelled"}, {"params", {{"requestId", "inf-1"}, {"reason", "user stop"}}}};
  CHECK(c.request(verb::post, "/mcp", legacy_headers(s.user_key(), sid), cancel.dump()).status == 202);
  // The backend is told at once (its stream closed by scigate), long before the 8 s.
  REQUIRE(eventually([&] { return d.stats()["streams_cancelled_by_client"].get<int>() == 1; }));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK(d.stats()["streams_completed"].get<int>() == 0);
  // The call is answered no further (a cancelled request gets no response) and is audited as
  // cancelled; it pays the prompt and the tokens that came, not the 400 held.
  while (auto ev = caller.next_event(std::chrono::milliseconds(500))) CHECK(ev->value("id", json()) != "inf-1");
  CHECK(s.wait_for_log("\"outcome\":\"cancelled\""));
  double charged = charged_since(c, s, before);
  const int estimate = kPromptEstimate;
  CHECK(charged >= estimate * 0.001 + 32 * 0.002 - 1e-9);
  CHECK(charged < estimate * 0.001 + 400 * 0.002);
}

TEST_CASE("inference: 200 concurrent calls to a backend that takes 1 s finish in about 1 s") {
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d, "max_concurrency = 256")});
  auto& s = is.s;
  {
    Client c(s.port());
    wait_served(c, s);
  }
  d.control({{"latency_ms", 1000}, {"first_token_ms", 1000}});
  json body = {{"model", kModel}, {"messages", json::array({json{{"role", "user"}, {"content", "hi"}}})}, {"max_tokens", 2}};
  std::atomic<int> ok{0};
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < 200; ++i)
    threads.emplace_back([&] {
      try {
        Client c(s.port());
        auto r = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), body.dump());
        if (r.status == 200) ok++;
      } catch (...) {
      }
    });
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(ok == 200);
  CHECK(d.stats()["max_in_flight"].get<int>() >= 150);
  CHECK(secs < 6.0);  // one backend second plus this machine's overhead, not 200 s
}

TEST_CASE("inference: embed returns vectors inline with their usage, or their shape when asked") {
  InferenceDouble d(vllm({"bge-m3"}));
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s, "bge-m3");
  double before = balance(c, s);
  auto r = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", json::array({"one two", "three"})}});
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  CHECK(sc["count"] == 2);
  CHECK(sc["dimensions"] == 8);
  CHECK(sc["inline"] == true);
  REQUIRE(sc["vectors"].size() == 2);
  CHECK(sc["norms"][0].get<double>() == Approx(1.0).epsilon(1e-5));
  CHECK(sc["usage"]["prompt_tokens"] == 3);
  CHECK(before - balance(c, s) == Approx(3 * 0.001));
  r = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", "x"}, {"summary_only", true}});
  CHECK(r["structuredContent"]["inline"] == false);
  CHECK_FALSE(r["structuredContent"].contains("vectors"));
}

TEST_CASE("inference: embed with save_to writes the vectors to a storage area and returns their location") {
  InferenceDouble d(vllm({"bge-m3"}));
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s, "bge-m3");
  double before = balance(c, s);
  json args{{"model", "bge-m3"}, {"input", json::array({"one two", "three", "four five six"})},
            {"save_to", "area://scratch/emb/batch1.jsonl"}};
  auto r = call_tool(c, s.user_key(), "embed", args);
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  CHECK(sc["inline"] == false);
  CHECK_FALSE(sc.contains("vectors"));  // the handle replaces the numbers
  CHECK(sc["count"] == 3);
  REQUIRE(sc.contains("saved"));
  CHECK(sc["saved"]["uri"] == "area://scratch/emb/batch1.jsonl");
  CHECK(sc["saved"]["format"] == "jsonl");
  // The file: one array per input, in input order, with the norms the result reports; its size
  // and SHA-256 as the result says, and stat_file agrees.
  fs::path file = s.dir() / "data" / "demo" / "scratch" / "emb" / "batch1.jsonl";
  REQUIRE(fs::exists(file));
  std::ifstream in(file);
  std::string line;
  std::vector<json> rows;
  while (std::getline(in, line)) rows.push_back(json::parse(line));
  REQUIRE(rows.size() == 3);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    REQUIRE(rows[i].size() == 8);
    double sum = 0;
    for (const auto& x : rows[i]) sum += x.get<double>() * x.get<double>();
    CHECK(std::sqrt(sum) == Approx(sc["norms"][i].get<double>()).epsilon(1e-9));
  }
  CHECK(sc["saved"]["bytes"].get<int64_t>() == static_cast<int64_t>(fs::file_size(file)));
  auto st = call_tool(c, s.user_key(), "stat_file", {{"uri", "area://scratch/emb/batch1.jsonl"}, {"sha256", true}});
  CHECK(st["structuredContent"]["sha256"] == sc["saved"]["sha256"]);
  CHECK(before - balance(c, s) == Approx(sc["usage"]["prompt_tokens"].get<int>() * 0.001));

  // The same name again: refused with a conflict, the file left as it was, and the tokens the
  // backend spent are still paid.
  double mid = balance(c, s);
  auto again = call_tool(c, s.user_key(), "embed", args);
  CHECK(again["isError"] == true);
  CHECK(error_code(again) == "conflict");
  CHECK(error_message(again).find("already exists") != std::string::npos);
  CHECK(static_cast<int64_t>(fs::file_size(file)) == sc["saved"]["bytes"].get<int64_t>());
  CHECK(mid - balance(c, s) == Approx(sc["usage"]["prompt_tokens"].get<int>() * 0.001));

  // Out of the area, into an area the project does not have, or to a URL: refused before the
  // backend is called.
  int calls = d.stats()["counts"].value("/v1/embeddings", 0);
  auto escape = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", "x"}, {"save_to", "area://scratch/../../scigate.toml"}});
  CHECK(escape["isError"] == true);
  auto other = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", "x"}, {"save_to", "area://archive/x.jsonl"}});
  CHECK(other["isError"] == true);
  CHECK(error_code(other) == "not_found");
  auto url = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", "x"}, {"save_to", "https://example.org/x"}});
  CHECK(url["isError"] == true);
  CHECK(error_code(url) == "invalid_arguments");
  CHECK(error_code(escape) == "forbidden");
  CHECK(d.stats()["counts"].value("/v1/embeddings", 0) == calls);  // none of them reached the backend
}

// Streams are read 4 KiB at a time (libcurl's default is 16 KiB per transfer): a long burst of
// events, most of them split across reads, still reaches the /v1 client whole and in order.
TEST_CASE("inference: a long stream read in small pieces reaches the /v1 client whole") {
  InferenceDouble d(vllm());
  InfServer srv({backend_entry("gpu01", d)});
  Client c(srv.s.port());
  wait_served(c, srv.s);
  d.control(json::parse(R"({"completion_tokens":600})"));
  const std::string body =
      R"({"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Hello, world!"}],"max_tokens":600,"stream":true})";
  auto r = c.request(verb::post, "/v1/chat/completions", bearer(srv.s.user_key()), body);
  REQUIRE(r.status == 200);
  auto events = sse_data(r.body);
  REQUIRE(!events.empty());
  CHECK(events.back() == "[DONE]");
  std::string text;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    json chunk = json::parse(events[i]);
    if (!chunk["choices"].empty() && chunk["choices"][0]["delta"].contains("content") &&
        chunk["choices"][0]["delta"]["content"].is_string())
      text += chunk["choices"][0]["delta"]["content"].get<std::string>();
  }
  CHECK(text == words(600));
}
