// Metered inference through the real binary against the vLLM / llama.cpp test double
// (tests/support/inference_double.cpp, a real HTTP server on 127.0.0.1 that reproduces both
// servers' wire formats): call_inference and embed as MCP tools, the OpenAI-compatible
// endpoint, retries, fallback and the circuit breaker, metering with and without the backend's
// usage, and what the backend received.
#include <catch2/catch.hpp>

#include <set>

#include <arpa/inet.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
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
constexpr const char* kLlamaModel = "qwen2.5-0.5b-instruct-q4";  // served by the llama.cpp double
constexpr const char* kBackendKey = "backend-secret-key-3f9a";

// The switch to run the tests that need no test double against a real vLLM or llama.cpp server
// (docs/INFERENCE.md, "Testing"): SCIGATE_TEST_INFERENCE_URL (its base, without /v1) and
// SCIGATE_TEST_INFERENCE_MODEL (a chat model it serves); optional SCIGATE_TEST_INFERENCE_FLAVOR
// (vllm, the default, or llamacpp) and SCIGATE_TEST_INFERENCE_KEY (its --api-key).
struct RealServer {
  std::string url, model, flavor, key;
};
std::optional<RealServer> real_server() {
  const char* url = std::getenv("SCIGATE_TEST_INFERENCE_URL");
  if (!url || !*url) return std::nullopt;
  auto env = [](const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return std::string(v && *v ? v : fallback);
  };
  RealServer r{url, env("SCIGATE_TEST_INFERENCE_MODEL", ""), env("SCIGATE_TEST_INFERENCE_FLAVOR", "vllm"),
               env("SCIGATE_TEST_INFERENCE_KEY", "")};
  while (!r.url.empty() && r.url.back() == '/') r.url.pop_back();
  if (r.model.empty()) throw std::runtime_error("SCIGATE_TEST_INFERENCE_URL is set: set SCIGATE_TEST_INFERENCE_MODEL too");
  return r;
}

// At the top of a test that needs the test double (its /_control, its deterministic model and
// token counts, or its request log): against a real server it is skipped, saying why.
#define NEEDS_DOUBLE(why)                                                                         \
  do {                                                                                             \
    if (auto real_ = real_server()) {                                                              \
      WARN("skipped: runs against the inference test double only (" << why << "); "               \
           << "SCIGATE_TEST_INFERENCE_URL points at " << real_->url);                             \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

// The demo project's policy: members may call the inference tools with the test models.
// `extra_when` adds conditions to that permit; `extra_rules` adds rules and rate limits.
std::string policy_text(const std::string& extra_rules = "", const std::string& extra_when = "") {
  std::string models = R"("llama-3.1-8b-instruct", "pricey", "bge-m3", "qwen2.5-0.5b-instruct-q4")";
  if (auto real = real_server()) models += ", \"" + real->model + "\"";
  return R"(
[[rules]]
id = "members-infer"
effect = "permit"
principals = ["role:member"]
tools = ["call_inference", "embed"]
[rules.when]
model = { in = [)" + models + R"(] }
max_tokens = { max = 100000, optional = true }
)" + extra_when + R"(
[[rules]]
id = "members-look"
effect = "permit"
principals = ["role:member"]
tools = ["get_usage", "whoami", "stat_file", "read_file", "query_model_registry", "get_model"]
)" + extra_rules;
}

InferenceDoubleOptions vllm(std::vector<std::string> models = {kModel}) {
  InferenceDoubleOptions o;
  o.models = std::move(models);
  o.api_key = kBackendKey;
  return o;
}

std::string url_entry(const std::string& id, const std::string& url, const std::string& flavor,
                      const std::string& extra = "") {
  return "{ id = \"" + id + "\", url = \"" + url + "\", flavor = \"" + flavor + "\"" +
         (extra.empty() ? "" : ", " + extra) + " }";
}

std::string backend_entry(const std::string& id, const InferenceDouble& d, const std::string& extra = "") {
  return url_entry(id, d.base_url(), d.options().flavor, "api_key_file = \"backend.key\"" + (extra.empty() ? "" : ", " + extra));
}

// A server whose [inference] backends are the given entries; tokens cost 0.001 (in) and 0.002
// (out) credits, "pricey" output 1 credit a token. `inference_extra` goes into [inference]
// (health_interval_ms there replaces the default of 200); `policy_extra` is appended to the demo
// project's policy; `config_extra` to the config's top level.
struct InfServer {
  ServerProcess s;
  InfServer(const std::vector<std::string>& backends, const std::string& inference_extra = "",
            const std::string& policy_extra = "", const std::string& config_extra = "",
            const std::string& policy_when = "")
      : s(config_extra + config(backends, inference_extra), false) {
    auto real = real_server();
    std::ofstream(s.dir() / "backend.key") << (real ? real->key : std::string(kBackendKey)) << "\n";
    std::ofstream(s.dir() / "policies" / "demo.toml") << policy_text(policy_extra, policy_when);
    s.start();
  }
  static std::string config(const std::vector<std::string>& backends, const std::string& extra) {
    std::string list;
    for (const auto& b : backends) list += (list.empty() ? "" : ", ") + b;
    std::string rates;
    if (auto real = real_server())
      rates = "\"tokens_in:" + real->model + "\" = 0.001\n\"tokens_out:" + real->model + "\" = 0.002\n";
    return R"([credits.rates]
"tokens_in:llama-3.1-8b-instruct" = 0.001
"tokens_out:llama-3.1-8b-instruct" = 0.002
"tokens_out:pricey" = 1
"tokens_in:bge-m3" = 0.001
)" + rates + R"(
[inference]
)" + (extra.find("retry_backoff_ms") == std::string::npos ? "retry_backoff_ms = 10\n" : "") +
           (extra.find("health_interval_ms") == std::string::npos ? "health_interval_ms = 200\n" : "") + extra +
           "backends = [" + list + "]\n";
  }
};

double balance(Client& c, const ServerProcess& s) {
  return call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"]["balance"].get<double>();
}

json chat_args(int max_tokens, const std::string& model = kModel, const std::string& text = "Hello, world!") {
  return json{{"model", model}, {"messages", json::array({json{{"role", "user"}, {"content", text}}})}, {"max_tokens", max_tokens}};
}

// scigate's prompt estimate for chat_args' default message: frame + message + ceil(13 bytes / 3);
// and the bound its hold takes for it: one token per byte.
constexpr int kPromptEstimate = 16 + 8 + 5;
constexpr int kPromptBound = 16 + 8 + 13;

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

// One tools/call on a connection of its own, without Catch (for threads): the CallToolResult,
// or {"transport_status", "body"} when there is none.
json mcp_call(uint16_t port, const std::string& key, const std::string& tool, json args) {
  Client c(port);
  auto req = modern_request(1, "tools/call", {{"name", tool}, {"arguments", std::move(args)}});
  auto r = c.request(verb::post, "/mcp", modern_headers(key, "tools/call", tool), req.dump());
  json body = r.json_body();
  if (body.is_object() && body.contains("result")) return body["result"];
  return json{{"transport_status", r.status}, {"body", r.body}};
}

// The audit records of `tool` in the server's log, oldest first.
std::vector<json> audit_records(const ServerProcess& s, const std::string& tool) {
  std::vector<json> out;
  std::istringstream in(s.log());
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.value("event", "") == "audit" && j.value("tool", "") == tool) out.push_back(std::move(j));
  }
  return out;
}

// The newest audit record of `tool` that `pick` accepts (waiting for it: records are logged
// asynchronously); null when none came.
template <class F>
json audit_record(const ServerProcess& s, const std::string& tool, F pick) {
  json found;
  eventually([&] {
    auto all = audit_records(s, tool);
    for (auto it = all.rbegin(); it != all.rend(); ++it)
      if (pick(*it)) {
        found = *it;
        return true;
      }
    return false;
  });
  return found;
}

// A listening socket that never accepts, its one-place queue already full: the kernel drops
// further SYNs, so a connect to it is never answered, as to a host that went down behind a
// firewall.
struct Blackhole {
  int fd = -1;
  std::vector<int> fillers;
  uint16_t port = 0;
  Blackhole() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd, 0) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("cannot set up the blackhole listener");
    port = ntohs(a.sin_port);
    for (int i = 0; i < 3; ++i) {
      int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      (void)::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
      fillers.push_back(c);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ~Blackhole() {
    for (int c : fillers) ::close(c);
    ::close(fd);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

json v1_chat(const std::string& model, int max_tokens, bool stream, const std::string& text = "Hello, world!") {
  json body = {{"model", model}, {"messages", json::array({json{{"role", "user"}, {"content", text}}})},
               {"max_tokens", max_tokens}};
  if (stream) body["stream"] = true;
  return body;
}

// The text of a /v1 event stream's chunks.
std::string sse_text(const std::vector<std::string>& events) {
  std::string text;
  for (const auto& e : events) {
    json chunk = json::parse(e, nullptr, false);
    if (!chunk.is_object() || !chunk.contains("choices") || chunk["choices"].empty()) continue;
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content") && delta["content"].is_string()) text += delta["content"].get<std::string>();
  }
  return text;
}

}  // namespace

TEST_CASE("inference: call_inference streams from vLLM, is charged the backend's usage, and the backend saw what it should") {
  NEEDS_DOUBLE("asserts the double's exact text, token counts and the request it received");
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

TEST_CASE("inference: a call is charged to the resources its model's manifest names, a re-import applying at the next health round") {
  NEEDS_DOUBLE("asserts the double's exact token counts");
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  // The example catalog's own resources (tokens_in:<id>, tokens_out:<id>): 0.001 and 0.002.
  double before = balance(c, s);
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(10));
  REQUIRE(r["isError"] == false);
  CHECK(before - balance(c, s) == Approx(8 * 0.001 + 10 * 0.002));

  // The operator points the model at resources it shares with others (the test config prices
  // "tokens_in:bge-m3" at 0.001 and "tokens_out:pricey" at 1 credit a token): from the next health
  // round its calls are charged there.
  std::string manifest = (s.dir() / "shared.toml").string();
  std::ofstream(manifest) << "[[models]]\nid = \"" << kModel << "\"\nfamily = \"llama-3.1\"\nmodality = \"text\"\n"
                             "tasks = [\"chat\"]\nparameters = 8030000000\ncontext_length = 131072\nlicense = \"llama3.1\"\n"
                             "[models.rates]\ntokens_in = \"tokens_in:bge-m3\"\ntokens_out = \"tokens_out:pricey\"\n";
  std::string out;
  REQUIRE(run_command({binary(), "models", "import", "--config", s.config_path(), manifest}, &out) == 0);
  CHECK(out.find("1 updated") != std::string::npos);
  auto got = call_tool(c, s.user_key(), "get_model", json{{"model", kModel}});
  CHECK(got["structuredContent"]["rates"]["tokens_out"] == "tokens_out:pricey");
  double charged = 0;
  REQUIRE(eventually([&] {
    double b = balance(c, s);
    auto again = call_tool(c, s.user_key(), "call_inference", chat_args(10));
    charged = b - balance(c, s);
    return again["isError"] == false && charged > 1;
  }));
  CHECK(charged == Approx(8 * 0.001 + 10 * 1.0));
}

TEST_CASE("inference: a backend whose usage counts fewer generated tokens than it streamed is charged what it streamed") {
  NEEDS_DOUBLE("makes the double misreport its usage");
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  d.control({{"misreport_completion_tokens", 0}});  // "generated nothing", after 10 tokens
  double before = balance(c, s);
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(10));
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  CHECK(r["structuredContent"]["text"] == words(10));
  CHECK(r["structuredContent"]["usage"]["completion_tokens"] == 10);  // one a chunk, at least
  CHECK(before - balance(c, s) == Approx(8 * 0.001 + 10 * 0.002));
  d.control({{"misreport_completion_tokens", 25}});  // more than it streamed: believed (a chunk may carry several)
  before = balance(c, s);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(30));
  CHECK(r["structuredContent"]["usage"]["completion_tokens"] == 25);
  CHECK(before - balance(c, s) == Approx(8 * 0.001 + 25 * 0.002));
}

TEST_CASE("inference: llama.cpp's unasked usage, then /tokenize when a backend reports none, then the hold") {
  NEEDS_DOUBLE("switches the double's usage and /tokenize off through /_control");
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

  // No usage and no tokenizer: the hold is charged (the prompt's bound and max_tokens), never zero.
  d.control({{"tokenize_status", 500}});
  before = balance(c, s);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(6));
  REQUIRE(r["isError"] == false);
  u = r["structuredContent"]["usage"];
  CHECK(u["counted_by"] == "hold");
  CHECK(u["completion_tokens"] == 6);
  const int held = kPromptBound;
  CHECK(u["prompt_tokens"] == held);
  CHECK(before - balance(c, s) == Approx(held * 0.001 + 6 * 0.002));
}

TEST_CASE("inference: the backends' /v1/models keep the registry's served-now current, down and up again") {
  NEEDS_DOUBLE("takes the double down and up through /_control");
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
  // Once, not every health round (every 200 ms here).
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  {
    std::string log = s.log();
    std::size_t lines = 0;
    for (auto at = log.find("inference_model_not_in_catalog"); at != std::string::npos;
         at = log.find("inference_model_not_in_catalog", at + 1))
      ++lines;
    CHECK(lines == 1);
  }

  auto listed = [&] {  // the OpenAI-compatible list
    auto r = c.request(verb::get, "/v1/models", {{"Authorization", "Bearer " + s.user_key()}});
    return r.status == 200 && r.body.find("\"" + std::string(kModel) + "\"") != std::string::npos;
  };
  CHECK(listed());

  // The backend goes away: it serves nothing, and the registry says so; /v1/models too.
  d.control({{"down", true}});
  CHECK(eventually([&] { return served_now().empty(); }));
  CHECK(s.wait_for_log("\"event\":\"inference_backend_down\""));
  CHECK(call_tool(c, s.user_key(), "get_model", {{"model", kModel}})["structuredContent"]["served_by"].empty());
  CHECK_FALSE(listed());
  // And comes back.
  d.control({{"down", false}});
  CHECK(eventually([&] { return served_now() == std::set<std::string>{kModel}; }));
  CHECK(s.wait_for_log("\"event\":\"inference_backend_up\""));
  CHECK(listed());

  // Restarted with no inference backends at all, nothing polls them: what they served is
  // forgotten at start rather than shown as served for ever.
  REQUIRE(s.stop() == 0);
  std::stringstream cfg;
  cfg << std::ifstream(s.config_path()).rdbuf();
  std::string text = cfg.str();
  auto at = text.find("backends = [");
  REQUIRE(at != std::string::npos);
  text.replace(at, text.find('\n', at) - at, "backends = []");
  std::ofstream(s.config_path()) << text;
  s.start();
  Client c2(s.port());
  CHECK(call_tool(c2, s.user_key(), "get_model", {{"model", kModel}})["structuredContent"]["served_by"].empty());
  CHECK(call_tool(c2, s.user_key(), "query_model_registry", {{"served_now", true}})["structuredContent"]["models"].empty());
  CHECK(s.wait_for_log("no inference backends configured"));
}

TEST_CASE("inference: /v1/models lists a catalogued model only if the tool of its modality may be called, as the registry does") {
  NEEDS_DOUBLE("serves an embedding model from the double");
  InferenceDouble d(vllm({kModel, "bge-m3"}));
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  wait_served(c, s, "bge-m3");
  // A policy that lets members call call_inference with any model, and embed with none.
  std::ofstream(s.dir() / "policies" / "demo.toml") << R"([[rules]]
id = "chat-only"
effect = "permit"
principals = ["role:member"]
tools = ["call_inference", "query_model_registry", "get_model"]
)";
  ::kill(s.pid(), SIGHUP);
  auto listed = [&](const std::string& id) {
    auto r = c.request(verb::get, "/v1/models", {{"Authorization", "Bearer " + s.user_key()}});
    return r.status == 200 && r.body.find("\"" + id + "\"") != std::string::npos;
  };
  // bge-m3 is an embedding model: call_inference cannot use it, and embed is not permitted.
  REQUIRE(eventually([&] { return !listed("bge-m3"); }));
  CHECK(listed(kModel));
  auto reg = call_tool(c, s.user_key(), "get_model", {{"model", "bge-m3"}});
  CHECK(error_code(reg) == "not_found");
}

TEST_CASE("inference: a failing replica is retried elsewhere, its breaker opens, and a trial closes it after the cooldown") {
  NEEDS_DOUBLE("makes a replica fail through /_control");
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
  NEEDS_DOUBLE("injects 500s, cut streams and slow first tokens through /_control");
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

  // The engine fails mid-generation. vLLM's stream says 400 BadRequestError whatever the cause,
  // so the code does not make it the caller's fault: backend_unavailable with vLLM's message,
  // not retried (output had begun), the prompt and three tokens paid.
  d.control({{"reset", true}, {"error_after_tokens", 3}});
  before = balance(c, s);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(10));
  INFO(r.dump());
  CHECK(error_code(r) == "backend_unavailable");
  CHECK(error_message(r).find("failed mid-stream: EngineCore encountered an issue") != std::string::npos);
  CHECK(chat_requests(d) == 1);
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
  NEEDS_DOUBLE("slows the double's stream through /_control");
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

TEST_CASE("inference: a call that runs out of time before the first token is a timeout, and does not open the breaker") {
  NEEDS_DOUBLE("delays the double's first token through /_control");
  InferenceDouble d(vllm());
  // One failure would open the breaker; the whole-call limit is shorter than the first-token one.
  InfServer is({backend_entry("gpu01", d, "request_timeout_ms = 600, first_token_timeout_ms = 30000")},
               "retries = 2\nbreaker_failures = 1\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  d.control({{"first_token_ms", 3000}});
  for (int i = 0; i < 2; ++i) {
    auto r = call_tool(c, s.user_key(), "call_inference", chat_args(5));
    INFO(r.dump());
    CHECK(error_code(r) == "timeout");
    CHECK(error_message(r).find("within 600 ms") != std::string::npos);
  }
  // Both reached the backend: the first did not open its breaker (nor was either retried).
  CHECK(chat_requests(d) == 2);
  CHECK(s.log().find("inference_breaker_open") == std::string::npos);
  d.control({{"first_token_ms", 0}});
  auto ok = call_tool(c, s.user_key(), "call_inference", chat_args(5));
  CHECK(ok["isError"] == false);
}

TEST_CASE("inference: max_tokens is cut to what the project can pay, so the budget is never overrun") {
  NEEDS_DOUBLE("needs the double's model 'pricey' and its deterministic output");
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
  NEEDS_DOUBLE("asserts the double's exact text and token counts");
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
  NEEDS_DOUBLE("slows the double's stream through /_control");
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

TEST_CASE("inference: a /v1 stream whose client stops reading is cancelled at the backlog limit, and others are served") {
  NEEDS_DOUBLE("makes the double stream 100,000 tokens at once");
  InferenceDoubleOptions o = vllm();
  o.max_model_len = 1'000'000;
  InferenceDouble d(o);
  InfServer is({backend_entry("gpu01", d)}, "", "", "[http]\nstream_backlog_bytes = 65536\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  d.control({{"completion_tokens", 100000}});
  double before = balance(c, s);
  json body = {{"model", kModel}, {"messages", json::array({json{{"role", "user"}, {"content", "Hello, world!"}}})},
               {"max_tokens", 100000}, {"stream", true}};
  // A client with a small receive buffer that sends its request and never reads.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  int small = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(s.port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s.user_key() +
                    "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.dump().size()) +
                    "\r\n\r\n" + body.dump();
  REQUIRE(::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));

  // The backlog passes 64 KiB once the kernel's buffers are full: the client is taken for gone
  // at once (not after the 30 s write timeout) and its connection closed; the call is settled
  // for what was generated (the double makes its 100,000 tokens faster than any of this).
  auto t0 = std::chrono::steady_clock::now();
  CHECK(s.wait_for_log("\"event\":\"http_stream_backlog_full\"", std::chrono::seconds(20)));
  std::vector<char> sink(1 << 16);
  bool closed = false;
  while (!closed && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) continue;
    ssize_t n = ::recv(fd, sink.data(), sink.size(), 0);
    closed = n <= 0;
  }
  CHECK(closed);  // what the kernel held, then the end: no more than the backlog ever waited
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20));
  double charged = charged_since(c, s, before);
  CHECK(charged <= kPromptBound * 0.001 + 100000 * 0.002 + 1e-9);
  // The server goes on serving others.
  d.control({{"completion_tokens", 16}});
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(5));
  CHECK(r["isError"] == false);
  ::close(fd);
}

TEST_CASE("inference: call_inference reports progress, and notifications/cancelled stops the backend's generation") {
  NEEDS_DOUBLE("slows the double's stream through /_control");
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
  NEEDS_DOUBLE("sets the double's latency through /_control");
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
  NEEDS_DOUBLE("needs the double's embedding model and dimensions");
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
  NEEDS_DOUBLE("needs the double's embedding model and dimensions");
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
  NEEDS_DOUBLE("asserts the double's exact 600-token text");
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

// --- routing: replicas, connection failures, the queue -----------------------------------------

TEST_CASE("inference: replicas share the load, one that refuses connections is passed over, and each shows its GPU") {
  NEEDS_DOUBLE("stops a replica and slows both through /_control");
  InferenceDouble a(vllm()), b(vllm());
  // One health round at start and none during the test: the dead replica must be found by the
  // calls themselves.
  InfServer is({backend_entry("a", a, "gpu_type = \"h100\""), backend_entry("b", b, "gpu_type = \"a100\"")},
               "health_interval_ms = 60000\n");
  auto& s = is.s;
  Client c(s.port());
  json m;
  REQUIRE(eventually([&] {
    m = call_tool(c, s.user_key(), "get_model", {{"model", kModel}})["structuredContent"];
    return m["served_by"].size() == 2;
  }));
  // What each serving backend runs on, for the agent choosing a model and for the operator.
  std::map<std::string, std::string> gpu;
  for (const auto& e : m["served_by"]) gpu[e["backend"].get<std::string>()] = e.value("gpu_type", "");
  CHECK(gpu == std::map<std::string, std::string>{{"a", "h100"}, {"b", "a100"}});
  std::string listed;
  REQUIRE(run_command({binary(), "models", "list", "--config", s.config_path(), "--served"}, &listed) == 0);
  CHECK(listed.find("a (h100)") != std::string::npos);
  CHECK(listed.find("b (a100)") != std::string::npos);

  // Six calls at once, each taking 400 ms: spread over both replicas by free capacity.
  a.control({{"first_token_ms", 400}});
  b.control({{"first_token_ms", 400}});
  std::vector<std::future<json>> calls;
  for (int i = 0; i < 6; ++i)
    calls.push_back(std::async(std::launch::async, [&] { return mcp_call(s.port(), s.user_key(), "call_inference", chat_args(2)); }));
  std::map<std::string, int> by;
  for (auto& f : calls) {
    json r = f.get();
    INFO(r.dump());
    CHECK(r.value("isError", true) == false);
    by[r["structuredContent"].value("backend", "?")]++;
  }
  CHECK(by["a"] >= 2);
  CHECK(by["b"] >= 2);
  CHECK(by["a"] + by["b"] == 6);
  CHECK(chat_requests(a) == by["a"]);
  CHECK(chat_requests(b) == by["b"]);

  // a goes away (its port refuses connections). It still looks as free as b, so each call tries
  // it first, cannot connect, and is retried on b: every call succeeds, in two attempts.
  b.control({{"reset", true}});
  a.stop();
  for (int i = 0; i < 3; ++i) {
    auto r = call_tool(c, s.user_key(), "call_inference", chat_args(3));
    INFO(r.dump());
    REQUIRE(r["isError"] == false);
    CHECK(r["structuredContent"]["backend"] == "b");
  }
  CHECK(chat_requests(b) == 3);
  json rec = audit_record(s, "call_inference", [](const json& r) { return r["details"].value("attempts", 0) == 2; });
  REQUIRE(rec.is_object());
  CHECK(rec["details"]["backend"] == "b");
  CHECK(rec["outcome"] == "ok");
}

TEST_CASE("inference: a backend that never accepts the connection fails within connect_timeout_ms and is retried as unreachable") {
  NEEDS_DOUBLE("needs a listener that never accepts, which a real server is not");
  Blackhole hole;
  InfServer is({url_entry("hole", hole.url(), "vllm", "models = [\"" + std::string(kModel) + "\"], connect_timeout_ms = 300")},
               "retries = 1\nbreaker_failures = 100\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);  // from the config's `models`: it has never answered
  double before = balance(c, s);
  auto t0 = std::chrono::steady_clock::now();
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(5));
  double secs = seconds_since(t0);
  INFO(r.dump());
  // Unreachable (retried: two attempts of 300 ms each), not a call that ran out of time.
  CHECK(error_code(r) == "backend_unavailable");
  CHECK(error_message(r).find("cannot reach inference backend hole") != std::string::npos);
  CHECK(secs >= 0.55);
  CHECK(secs < 2.5);
  CHECK(balance(c, s) == Approx(before));
  json rec = audit_record(s, "call_inference", [](const json& x) { return x["outcome"] == "tool_error"; });
  REQUIRE(rec.is_object());
  CHECK(rec["details"]["attempts"] == 2);
  CHECK(rec["error_code"] == "backend_unavailable");
}

TEST_CASE("inference: calls beyond a backend's max_concurrency wait for a slot, and past queue_timeout_ms fail saying when to retry") {
  NEEDS_DOUBLE("slows the double through /_control and reads its in-flight count");
  InferenceDouble d(vllm());
  // No health rounds after the first: the double's in-flight count is then the calls' alone.
  InfServer is({backend_entry("gpu01", d, "max_concurrency = 1")}, "queue_timeout_ms = 600\nhealth_interval_ms = 60000\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  // The second call waits for the first one's slot (never two at the backend), then runs.
  d.control({{"first_token_ms", 300}});
  auto first = std::async(std::launch::async, [&] { return mcp_call(s.port(), s.user_key(), "call_inference", chat_args(2)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto t0 = std::chrono::steady_clock::now();
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(2));
  double waited = seconds_since(t0);
  INFO(r.dump());
  CHECK(r["isError"] == false);
  CHECK(first.get().value("isError", true) == false);
  CHECK(d.stats()["max_in_flight"] == 1);
  CHECK(waited >= 0.45);  // about 200 ms in the queue, then its own 300 ms

  // The slot is held for a second: calls that come meanwhile give up after 600 ms, with a
  // retry time (the MCP error's retry_after_ms, /v1's 503 with Retry-After).
  d.control({{"reset", true}, {"first_token_ms", 1000}});
  auto holder = std::async(std::launch::async, [&] { return mcp_call(s.port(), s.user_key(), "call_inference", chat_args(2)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto openai = std::async(std::launch::async, [&] {
    Client c2(s.port());
    return c2.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), v1_chat(kModel, 2, false).dump());
  });
  t0 = std::chrono::steady_clock::now();
  r = call_tool(c, s.user_key(), "call_inference", chat_args(2));
  waited = seconds_since(t0);
  CHECK(error_code(r) == "backend_unavailable");
  CHECK(error_message(r).find("at its concurrency limit") != std::string::npos);
  CHECK(r["_meta"]["io.scigate/error"].value("retry_after_ms", 0) > 0);
  CHECK(waited >= 0.5);
  // It gave up before the slot came free: the error says so (a call that got the slot would
  // have succeeded). The bound on the time is loose: a loaded CI machine (ASan) adds its own.
  CHECK(waited < 3.0);
  auto h = openai.get();
  INFO(h.body);
  CHECK(h.status == 503);
  CHECK(h.json_body()["error"]["type"] == "service_unavailable_error");
  CHECK_FALSE(h.header("retry-after").empty());
  CHECK(holder.get().value("isError", true) == false);
  CHECK(chat_requests(d) == 1);  // only the holder reached the backend
}

// --- what the two servers say ----------------------------------------------------------------

TEST_CASE("inference: vLLM's nested error, llama.cpp's 503 while loading and its error event in a 200 stream reach the caller as they should") {
  NEEDS_DOUBLE("needs the doubles' small contexts and loading state through /_control");
  InferenceDoubleOptions vo = vllm();
  vo.max_model_len = 64;
  vo.error_format = "nested";
  InferenceDouble v(vo);
  InferenceDoubleOptions lo = vllm({kLlamaModel});
  lo.flavor = "llamacpp";
  lo.max_model_len = 64;
  InferenceDouble l(lo);
  InfServer is({backend_entry("vllm", v), backend_entry("llama", l)},
               "retries = 3\nretry_backoff_ms = 50\nbreaker_failures = 100\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);
  wait_served(c, s, kLlamaModel);
  const std::string too_long = words(80);  // beyond both 64-token contexts

  // vLLM: 400 {"error": {"message": ...}} before the stream. Its text reaches the MCP caller and
  // the OpenAI client; the caller's to fix, so not retried.
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(5, kModel, too_long));
  INFO(r.dump());
  CHECK(error_code(r) == "backend_rejected");
  CHECK(error_message(r).find("maximum context length is 64 tokens") != std::string::npos);
  CHECK(chat_requests(v) == 1);
  auto h = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), v1_chat(kModel, 5, true, too_long).dump());
  INFO(h.body);
  CHECK(h.status == 400);
  CHECK(h.json_body()["error"]["type"] == "invalid_request_error");
  CHECK(h.json_body()["error"]["message"].get<std::string>().find("maximum context length is 64 tokens") != std::string::npos);

  // llama.cpp streams the same refusal as an `error:` event inside a 200 answer. It is the
  // same refusal: backend_rejected with llama.cpp's message, not retried, and for a /v1 client
  // still a 400 (no output had started).
  r = call_tool(c, s.user_key(), "call_inference", chat_args(5, kLlamaModel, too_long));
  INFO(r.dump());
  CHECK(error_code(r) == "backend_rejected");
  CHECK(error_message(r).find("exceeds the available context size (64 tokens)") != std::string::npos);
  CHECK(chat_requests(l) == 1);
  h = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), v1_chat(kLlamaModel, 5, true, too_long).dump());
  INFO(h.body);
  CHECK(h.status == 400);
  CHECK(h.json_body()["error"]["message"].get<std::string>().find("exceeds the available context size") != std::string::npos);

  // llama.cpp while loading answers 503 "Loading model" on every path: retried with backoff
  // until it is up (three retries of 50, 100, 200 ms, give or take half, outlast 120 ms).
  l.control({{"reset", true}, {"loading_ms", 120}});
  r = call_tool(c, s.user_key(), "call_inference", chat_args(3, kLlamaModel));
  INFO(r.dump());
  CHECK(r["isError"] == false);
  CHECK(l.stats()["counts"].value("/v1/chat/completions", 0) >= 2);
  // Still loading after every retry: the caller is told what the backend said.
  l.control({{"reset", true}, {"loading_ms", 5000}});
  r = call_tool(c, s.user_key(), "call_inference", chat_args(3, kLlamaModel));
  INFO(r.dump());
  CHECK(error_code(r) == "backend_unavailable");
  CHECK(error_message(r).find("is unavailable (503): Loading model") != std::string::npos);
  CHECK(l.stats()["counts"].value("/v1/chat/completions", 0) == 4);
  l.control({{"loading_ms", 0}});
}

// --- embed -----------------------------------------------------------------------------------

TEST_CASE("inference: embed takes at most max_embedding_inputs, and vectors too large to return inline are saved and handed back by name") {
  NEEDS_DOUBLE("needs the double's embedding model and dimensions");
  InferenceDouble d(vllm({"bge-m3"}));
  // Two vectors of 8 numbers fit in 200 bytes (about 12 a number); three do not.
  InfServer is({backend_entry("gpu01", d)}, "max_embedding_inputs = 4\nmax_inline_vectors_bytes = 200\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s, "bge-m3");
  auto embeddings_calls = [&] { return d.stats()["counts"].value("/v1/embeddings", 0); };

  // More inputs than allowed: refused before anything is held or sent, on both surfaces.
  auto many = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", json::array({"a", "b", "c", "d", "e"})}});
  INFO(many.dump());
  CHECK(many["isError"] == true);
  CHECK(error_code(many) == "invalid_arguments");
  auto h = c.request(verb::post, "/v1/embeddings", bearer(s.user_key()),
                     json{{"model", "bge-m3"}, {"input", json::array({"a", "b", "c", "d", "e"})}}.dump());
  CHECK(h.status == 400);
  CHECK(embeddings_calls() == 0);

  // A backend that fails: the call's audit record still names the model and the backend.
  d.control({{"fail_next", {{"status", 500}, {"count", 3}}}});
  auto failed = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", json::array({"x"})}});
  CHECK(error_code(failed) == "backend_unavailable");
  json rec = audit_record(s, "embed", [](const json& r) { return r["outcome"] == "tool_error"; });
  REQUIRE(rec.is_object());
  CHECK(rec["details"]["model"] == "bge-m3");
  CHECK(rec["details"]["backend"] == "gpu01");
  d.control({{"reset", true}});

  auto fits = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", json::array({"one", "two"})}});
  CHECK(fits["structuredContent"]["inline"] == true);
  CHECK(fits["structuredContent"]["vectors"].size() == 2);
  CHECK_FALSE(fits["structuredContent"].contains("saved"));

  // Too large to return: the shape and norms inline, the numbers in a new file of the project's
  // scratch area, whose name the result gives (with its size and checksum).
  double before = balance(c, s);
  const json texts = json::array({"one two", "three", "four five six"});
  auto r = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", texts}});
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  CHECK(sc["inline"] == false);
  CHECK_FALSE(sc.contains("vectors"));
  CHECK(sc["count"] == 3);
  REQUIRE(sc.contains("saved"));
  const std::string uri = sc["saved"]["uri"];
  CHECK(uri.rfind("area://scratch/embeddings/bge-m3-", 0) == 0);
  CHECK(uri.size() > 6);
  CHECK(uri.substr(uri.size() - 6) == ".jsonl");
  CHECK(sc["saved"]["auto"] == true);
  CHECK(sc["saved"]["format"] == "jsonl");
  CHECK(sc["note"].get<std::string>().find(uri) != std::string::npos);
  CHECK(r["content"][0]["text"].get<std::string>().find(uri) != std::string::npos);
  CHECK(before - balance(c, s) == Approx(sc["usage"]["prompt_tokens"].get<int>() * 0.001));

  // The handle works with the data tools: read_file gives the numbers back, one array per
  // input in input order, with the norms the result reported; stat_file the same checksum.
  auto rf = call_tool(c, s.user_key(), "read_file", {{"uri", uri}});
  INFO(rf.dump());
  REQUIRE(rf["isError"] == false);
  CHECK(rf["structuredContent"]["truncated"] == false);
  std::istringstream in(rf["structuredContent"]["text"].get<std::string>());
  std::string line;
  std::vector<json> rows;
  while (std::getline(in, line))
    if (!line.empty() && line[0] == '[') rows.push_back(json::parse(line));
  REQUIRE(rows.size() == 3);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    double sum = 0;
    for (const auto& x : rows[i]) sum += x.get<double>() * x.get<double>();
    CHECK(std::sqrt(sum) == Approx(sc["norms"][i].get<double>()).epsilon(1e-9));
  }
  auto st = call_tool(c, s.user_key(), "stat_file", {{"uri", uri}, {"sha256", true}});
  CHECK(st["structuredContent"]["sha256"] == sc["saved"]["sha256"]);
  CHECK(st["structuredContent"]["size"] == sc["saved"]["bytes"]);

  // Two such calls never collide, and summary_only still writes nothing.
  auto again = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", texts}});
  CHECK(again["structuredContent"]["saved"]["uri"] != uri);
  auto summary = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", texts}, {"summary_only", true}});
  CHECK_FALSE(summary["structuredContent"].contains("saved"));
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(s.dir() / "data" / "demo" / "scratch" / "embeddings")) ++files;
  CHECK(files == 2);
}

TEST_CASE("inference: a /v1/embeddings retry under a used Idempotency-Key is charged once and answered 409, a new key runs") {
  NEEDS_DOUBLE("counts the double's embeddings requests");
  InferenceDouble d(vllm({"bge-m3"}));
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s, "bge-m3");
  auto embeddings_calls = [&] { return d.stats()["counts"].value("/v1/embeddings", 0); };
  const std::string body = json{{"model", "bge-m3"}, {"input", json::array({"alpha", "beta"})}}.dump();
  auto keyed = bearer(s.user_key());
  keyed["Idempotency-Key"] = "emb-retry-1";

  double before = balance(c, s);
  auto first = c.request(verb::post, "/v1/embeddings", keyed, body);
  INFO(first.body);
  REQUIRE(first.status == 200);
  REQUIRE(first.json_body()["data"].size() == 2);
  const double paid = before - balance(c, s);
  CHECK(paid > 0);
  CHECK(embeddings_calls() == 1);

  // The retry (an SDK after a dropped connection): not run again, not charged again, and told
  // plainly that the vectors are gone and what to do — not an empty 200 or a 502.
  auto again = c.request(verb::post, "/v1/embeddings", keyed, body);
  INFO(again.body);
  CHECK(again.status == 409);
  json err = again.json_body()["error"];
  CHECK(err["type"] == "conflict_error");
  CHECK(err["code"] == "idempotency_key_reused");
  CHECK(err["message"].get<std::string>().find("send the request with a new key") != std::string::npos);
  CHECK(embeddings_calls() == 1);
  CHECK(before - balance(c, s) == Approx(paid));

  // A different request under the same key is refused as well (409), never answered with the
  // first one's result; a new key runs and pays.
  auto other = c.request(verb::post, "/v1/embeddings", keyed,
                         json{{"model", "bge-m3"}, {"input", json::array({"gamma"})}}.dump());
  CHECK(other.status == 409);
  CHECK(embeddings_calls() == 1);
  keyed["Idempotency-Key"] = "emb-retry-2";
  auto fresh = c.request(verb::post, "/v1/embeddings", keyed, body);
  CHECK(fresh.status == 200);
  CHECK(embeddings_calls() == 2);
  CHECK(before - balance(c, s) == Approx(2 * paid));
}

// --- keys -------------------------------------------------------------------------------------

TEST_CASE("inference: a backend key from the environment (api_key_env) is sent as Bearer and never shown to agents") {
  NEEDS_DOUBLE("reads the Authorization header the double received");
  const std::string env_key = "sk-env-7c1d55e0b2a94f";
  ::setenv("SCIGATE_TEST_GPU02_KEY", env_key.c_str(), 1);
  ::unsetenv("SCIGATE_TEST_NO_SUCH_KEY");
  InferenceDoubleOptions o = vllm();
  o.api_key = env_key;
  InferenceDouble d(o);
  InferenceDouble locked(vllm({"bge-m3"}));  // wants kBackendKey; its entry names an unset variable
  InfServer is({url_entry("gpu02", d.base_url(), "vllm", "api_key_env = \"SCIGATE_TEST_GPU02_KEY\""),
                url_entry("locked", locked.base_url(), "vllm", "api_key_env = \"SCIGATE_TEST_NO_SUCH_KEY\", models = [\"bge-m3\"]")});
  ::unsetenv("SCIGATE_TEST_GPU02_KEY");  // the server has its own copy of the environment
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(3));
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  CHECK(d.stats()["last_request"]["headers"]["authorization"] == "Bearer " + env_key);

  // A variable that is not set: the operator is told which; the caller gets a configuration
  // problem to report, not a key.
  CHECK(s.wait_for_log("SCIGATE_TEST_NO_SUCH_KEY"));
  auto e = call_tool(c, s.user_key(), "embed", {{"model", "bge-m3"}, {"input", "x"}});
  INFO(e.dump());
  CHECK(error_code(e) == "backend_unavailable");
  CHECK(error_message(e).find("refused scigate's credentials") != std::string::npos);

  // Nothing an agent or OpenAI client can read carries the key.
  std::string seen = r.dump() + e.dump();
  seen += call_tool(c, s.user_key(), "get_model", {{"model", kModel}}).dump();
  seen += call_tool(c, s.user_key(), "query_model_registry", json::object()).dump();
  seen += call_tool(c, s.user_key(), "whoami", json::object()).dump();
  seen += c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/list"), modern_request(2, "tools/list").dump()).body;
  seen += c.request(verb::get, "/v1/models", bearer(s.user_key())).body;
  CHECK(seen.find(env_key) == std::string::npos);
  CHECK(s.log().find(env_key) == std::string::npos);
}

// --- the OpenAI-compatible endpoint -----------------------------------------------------------

TEST_CASE("inference: on /v1 a stream broken after output ends in an error event, OpenAI-Project picks the project, and Idempotency-Key charges once") {
  NEEDS_DOUBLE("cuts the double's stream through /_control and counts its requests");
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)}, "", "", "[[projects]]\nid = \"physics\"\nmembers = [\"demo\"]\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  // What an OpenAI client sees when the backend breaks off after three tokens: the three
  // chunks, an error event in OpenAI's shape (the SDKs raise it as an APIError), then [DONE].
  d.control({{"cut_after_tokens", 3}});
  auto h = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), v1_chat(kModel, 10, true).dump());
  REQUIRE(h.status == 200);
  auto events = sse_data(h.body);
  INFO(h.body);
  REQUIRE(events.size() >= 3);
  CHECK(events.back() == "[DONE]");
  CHECK(sse_text(events) == words(3));
  json err = json::parse(events[events.size() - 2], nullptr, false);
  REQUIRE(err.contains("error"));
  CHECK(err["error"]["type"] == "service_unavailable_error");
  CHECK(err["error"]["code"] == "backend_unavailable");
  CHECK(err["error"]["message"].get<std::string>().find("broke off after 3 chunks") != std::string::npos);
  d.control({{"reset", true}});

  // OpenAI-Project (what the SDKs send for project=...) chooses the project the call is for:
  // physics has no credits, demo has; a project the key is not in is refused.
  auto with_project = [&](const std::string& p) {
    auto hd = bearer(s.user_key());
    hd["OpenAI-Project"] = p;
    return c.request(verb::post, "/v1/chat/completions", hd, v1_chat(kModel, 5, false).dump());
  };
  auto phys = with_project("physics");
  INFO(phys.body);
  CHECK(phys.status == 402);
  CHECK(phys.json_body()["error"]["code"] == "insufficient_credits");
  CHECK(with_project("demo").status == 200);
  CHECK(with_project("nuclear").status == 403);
  CHECK(chat_requests(d) == 1);
  // X-Scigate-Project wins over OpenAI-Project.
  auto hd = bearer(s.user_key());
  hd["OpenAI-Project"] = "physics";
  hd["X-Scigate-Project"] = "demo";
  CHECK(c.request(verb::post, "/v1/chat/completions", hd, v1_chat(kModel, 5, false).dump()).status == 200);

  // Idempotency-Key: a client retrying the same request gets the same answer, and the backend
  // runs and the project pays once. Also for a stream, replayed as one.
  d.control({{"reset", true}});
  double before = balance(c, s);
  auto keyed = bearer(s.user_key());
  keyed["Idempotency-Key"] = "retry-7f3a";
  auto first = c.request(verb::post, "/v1/chat/completions", keyed, v1_chat(kModel, 5, false).dump());
  auto again = c.request(verb::post, "/v1/chat/completions", keyed, v1_chat(kModel, 5, false).dump());
  INFO(first.body << "\n" << again.body);
  REQUIRE(first.status == 200);
  REQUIRE(again.status == 200);
  CHECK(first.json_body()["choices"][0]["message"]["content"] == words(5));
  CHECK(again.json_body()["choices"][0]["message"]["content"] == words(5));
  CHECK(again.json_body()["choices"][0]["finish_reason"] == "length");
  CHECK(again.json_body()["usage"] == first.json_body()["usage"]);
  CHECK(again.json_body()["object"] == "chat.completion");
  CHECK(chat_requests(d) == 1);
  CHECK(before - balance(c, s) == Approx(8 * 0.001 + 5 * 0.002));
  // The same key for a different request is refused, not answered with the other one's result.
  auto other = c.request(verb::post, "/v1/chat/completions", keyed, v1_chat(kModel, 6, false).dump());
  CHECK(other.status == 409);
  // A key longer than the 200 characters it may have is refused up front, as on MCP.
  auto long_key = bearer(s.user_key());
  long_key["Idempotency-Key"] = std::string(201, 'k');
  auto too_long = c.request(verb::post, "/v1/chat/completions", long_key, v1_chat(kModel, 5, false).dump());
  CHECK(too_long.status == 400);
  CHECK(too_long.body.find("longer than 200 characters") != std::string::npos);
  // llama.cpp's own name for the output length would override max_tokens past the hold.
  json n_predict = v1_chat(kModel, 5, false);
  n_predict["n_predict"] = 300;
  auto refused = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), n_predict.dump());
  CHECK(refused.status == 400);
  CHECK(refused.body.find("n_predict") != std::string::npos);
  CHECK(chat_requests(d) == 1);

  json stream_body = v1_chat(kModel, 5, true);
  stream_body["stream_options"] = {{"include_usage", true}};
  keyed["Idempotency-Key"] = "retry-stream-1";
  auto s1 = c.request(verb::post, "/v1/chat/completions", keyed, stream_body.dump());
  auto s2 = c.request(verb::post, "/v1/chat/completions", keyed, stream_body.dump());
  INFO(s2.body);
  REQUIRE(s2.status == 200);
  CHECK(s2.header("content-type").rfind("text/event-stream", 0) == 0);
  auto e1 = sse_data(s1.body), e2 = sse_data(s2.body);
  CHECK(sse_text(e1) == words(5));
  CHECK(sse_text(e2) == words(5));
  REQUIRE(e2.size() >= 2);
  CHECK(e2.back() == "[DONE]");
  CHECK(json::parse(e2[e2.size() - 2])["usage"]["completion_tokens"] == 5);
  CHECK(chat_requests(d) == 2);
}

TEST_CASE("inference: the audit records of call_inference and of a /v1 call name the tool, model, backend, usage and cost") {
  NEEDS_DOUBLE("asserts the double's exact token counts");
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(10));
  REQUIRE(r["isError"] == false);
  auto hd = bearer(s.user_key());
  hd["User-Agent"] = "OpenAI/Python 1.54.0";
  auto h = c.request(verb::post, "/v1/chat/completions", hd, v1_chat(kModel, 5, false).dump());
  REQUIRE(h.status == 200);

  json mcp = audit_record(s, "call_inference", [](const json& x) { return x["details"]["usage"].value("completion_tokens", 0) == 10; });
  json v1 = audit_record(s, "call_inference", [](const json& x) { return x["details"].value("client", "") == "OpenAI/Python 1.54.0"; });
  REQUIRE(mcp.is_object());
  REQUIRE(v1.is_object());
  for (const auto& [rec, completion] : {std::pair{mcp, 10}, std::pair{v1, 5}}) {
    INFO(rec.dump());
    CHECK(rec["tool"] == "call_inference");
    CHECK(rec["outcome"] == "ok");
    CHECK(rec["principal"] == "demo");
    CHECK(rec["project"] == "demo");
    CHECK(rec["details"]["model"] == kModel);
    CHECK(rec["details"]["backend"] == "gpu01");
    CHECK(rec["details"]["attempts"] == 1);
    CHECK(rec["details"]["usage"]["prompt_tokens"] == 8);
    CHECK(rec["details"]["usage"]["completion_tokens"] == completion);
    CHECK(rec["details"]["usage"]["counted_by"] == "backend");
    // micro-credits: 8 prompt tokens at 0.001, the completion at 0.002
    CHECK(rec["cost"] == 8 * 1000 + completion * 2000);
  }
}

// --- policy -----------------------------------------------------------------------------------

TEST_CASE("inference: a context cap and a tokens-per-minute limit in the project's policy hold before the backend is asked") {
  NEEDS_DOUBLE("counts the requests the double received");
  InferenceDouble d(vllm());
  InfServer is({backend_entry("gpu01", d)}, "", R"(
[[rate_limits]]
id = "tokens-per-minute"
tools = ["call_inference", "embed"]
per = "project"
rate = "300/minute"
cost = "tokens"
)", "", "prompt_tokens = { max = 100 }\n");
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s);

  // A prompt beyond the cap (about 230 tokens by the estimate) is refused by the policy.
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(5, kModel, words(150)));
  INFO(r.dump());
  CHECK(error_code(r) == "policy_denied");
  auto h = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), v1_chat(kModel, 5, false, words(150)).dump());
  CHECK(h.status == 403);
  CHECK(chat_requests(d) == 0);

  // Each call takes its prompt estimate + max_tokens (29 + 100) from a bucket of 300 a minute:
  // two pass, the third waits for tokens, on /v1 too (429 with Retry-After).
  for (int i = 0; i < 2; ++i) REQUIRE(call_tool(c, s.user_key(), "call_inference", chat_args(100))["isError"] == false);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(100));
  INFO(r.dump());
  CHECK(error_code(r) == "rate_limited");
  CHECK(error_message(r).find("tokens-per-minute") != std::string::npos);
  CHECK(r["_meta"]["io.scigate/error"].value("retry_after_ms", 0) > 0);
  h = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), v1_chat(kModel, 100, false).dump());
  CHECK(h.status == 429);
  CHECK(h.json_body()["error"]["type"] == "rate_limit_error");
  CHECK_FALSE(h.header("retry-after").empty());
  // A call larger than the whole bucket can never pass: refused for good (not rate_limited,
  // which clients retry), with how small it must be.
  r = call_tool(c, s.user_key(), "call_inference", chat_args(400));
  INFO(r.dump());
  CHECK(error_code(r) == "policy_denied");
  CHECK(error_message(r).find("takes 429 tokens, more than the limit allows at once (300)") != std::string::npos);
  CHECK(chat_requests(d) == 2);
}

// --- the same checks against a real server ----------------------------------------------------

// Runs against the double, or against the real vLLM / llama.cpp server SCIGATE_TEST_INFERENCE_URL
// names: it asserts only what any conforming server must do.
TEST_CASE("inference: conformance: chat, /v1 streaming, a prompt beyond the context, and the bill, against the double or a real server") {
  std::optional<InferenceDouble> dbl;
  std::string url, model, flavor;
  if (auto real = real_server()) {
    url = real->url;
    model = real->model;
    flavor = real->flavor;
  } else {
    dbl.emplace(vllm());
    url = dbl->base_url();
    model = kModel;
    flavor = "vllm";
  }
  InfServer is({url_entry("upstream", url, flavor, "api_key_file = \"backend.key\", request_timeout_ms = 120000")});
  auto& s = is.s;
  Client c(s.port());
  wait_served(c, s, model);

  // A short chat: text, a finish reason, the backend's own usage, and exactly that charged.
  double before = balance(c, s);
  auto r = call_tool(c, s.user_key(), "call_inference", chat_args(8, model, "Say hello."));
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  CHECK_FALSE(sc["text"].get<std::string>().empty());
  CHECK((sc["finish_reason"] == "stop" || sc["finish_reason"] == "length"));
  CHECK(sc["backend"] == "upstream");
  CHECK(sc["usage"]["counted_by"] == "backend");
  const int prompt = sc["usage"]["prompt_tokens"], completion = sc["usage"]["completion_tokens"];
  CHECK(prompt > 0);
  CHECK(completion >= 1);
  CHECK(completion <= 8);
  CHECK(before - balance(c, s) == Approx(prompt * 0.001 + completion * 0.002));
  json rec = audit_record(s, "call_inference", [](const json& x) { return x["outcome"] == "ok"; });
  REQUIRE(rec.is_object());
  CHECK(rec["details"]["model"] == model);
  CHECK(rec["details"]["usage"]["completion_tokens"] == completion);

  // /v1 streaming, with the usage chunk asked for.
  json body = v1_chat(model, 8, true, "Say hello.");
  body["stream_options"] = {{"include_usage", true}};
  auto h = c.request(verb::post, "/v1/chat/completions", bearer(s.user_key()), body.dump());
  INFO(h.body);
  REQUIRE(h.status == 200);
  CHECK(h.header("content-type").rfind("text/event-stream", 0) == 0);
  auto events = sse_data(h.body);
  REQUIRE(events.size() >= 3);
  CHECK(events.back() == "[DONE]");
  CHECK_FALSE(sse_text(events).empty());
  json usage_chunk = json::parse(events[events.size() - 2]);
  CHECK(usage_chunk["usage"]["completion_tokens"].get<int>() >= 1);
  auto models = c.request(verb::get, "/v1/models", bearer(s.user_key())).json_body();
  bool listed = false;
  for (const auto& m : models["data"]) listed = listed || m["id"] == model;
  CHECK(listed);

  // A prompt longer than the model's context (as its /v1/models says, or 4096): the server's
  // own refusal reaches the caller as one to act on, and nothing is charged.
  int context = 4096;
  for (const auto& m : models["data"])
    if (m["id"] == model && m.contains("max_model_len")) context = m["max_model_len"].get<int>();
  if (context > 60000) {
    WARN("the context check is skipped: a prompt beyond " << context << " tokens is larger than a request should be");
    return;
  }
  before = balance(c, s);
  r = call_tool(c, s.user_key(), "call_inference", chat_args(8, model, words(context + 64)));
  INFO(r.dump());
  CHECK(error_code(r) == "backend_rejected");
  CHECK_FALSE(error_message(r).empty());
  CHECK(balance(c, s) == Approx(before));
}
