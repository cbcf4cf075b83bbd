// The real binary over stdio, and the command line.
#include <catch2/catch.hpp>

#include <signal.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "server_process.hpp"

using namespace scigate::itest;

namespace {
std::vector<json> lines_of(const std::string& out) {
  std::vector<json> v;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    auto j = json::parse(line, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());  // stdout carries MCP messages only
    v.push_back(j);
  }
  return v;
}
}  // namespace

TEST_CASE("stdio: a session over pipes, bad lines included, ends at EOF") {
  ServerProcess s("", false);
  std::string input;
  input += "this is not json\n";
  input += R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"pipe","version":"0"}}})" "\n";
  input += R"({"jsonrpc":"2.0","method":"notifications/initialized"})" "\n";
  input += R"({"jsonrpc":"2.0","id":2,"method":"tools/list"})" "\n";
  input += R"({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"over stdio"}}})" "\n";
  input += modern_request("m", "tools/call", {{"name", "whoami"}}).dump() + "\n";
  input += R"([1,2])" "\n";
  auto t0 = std::chrono::steady_clock::now();
  std::string out;
  int code = run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, input);
  CHECK(code == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  auto msgs = lines_of(out);
  REQUIRE(msgs.size() == 6);
  std::map<std::string, json> by_id;
  std::vector<json> errors_without_id;
  for (auto& m : msgs) {
    if (m.contains("id")) by_id[m["id"].dump()] = m;
    else errors_without_id.push_back(m);
  }
  REQUIRE(errors_without_id.size() == 2);
  CHECK(errors_without_id[0]["error"]["code"] == -32700);
  CHECK(errors_without_id[1]["error"]["code"] == -32600);
  CHECK(by_id["1"]["result"]["protocolVersion"] == "2025-06-18");
  CHECK(by_id["2"]["result"]["tools"].size() == 20);  // demo policy: echo, get_usage, sleep, whoami, 6 job tools, run_quantum_circuit, query_model_registry, get_model, 7 data tools
  CHECK(by_id["3"]["result"]["structuredContent"]["text"] == "over stdio");
  CHECK(by_id["\"m\""]["result"]["structuredContent"]["principal"] == "demo");
  CHECK(by_id["\"m\""]["result"]["structuredContent"]["auth_method"] == "stdio");
  CHECK(by_id["\"m\""]["result"]["resultType"] == "complete");
}

TEST_CASE("stdio: SCIGATE_API_KEY selects the principal, a bad key refuses to start") {
  ServerProcess s("", false);
  std::string input = modern_request(1, "tools/call", {{"name", "whoami"}}).dump() + "\n";
  setenv("SCIGATE_API_KEY", s.service_key().c_str(), 1);
  std::string out;
  CHECK(run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, input) == 0);
  auto msgs = lines_of(out);
  REQUIRE(msgs.size() == 1);
  CHECK(msgs[0]["result"]["structuredContent"]["principal"] == "lab-controller");
  setenv("SCIGATE_API_KEY", "sgk_bad_bad", 1);
  CHECK(run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, input) == 2);
  CHECK(out.empty());
  unsetenv("SCIGATE_API_KEY");
}

TEST_CASE("cli: version, usage errors and config errors") {
  std::string out;
  CHECK(run_command({binary(), "version"}, &out) == 0);
  CHECK(out.rfind("scigate ", 0) == 0);
  CHECK(run_command({binary(), "frobnicate"}, &out) == 2);
  ServerProcess s("", false);
  s.merge_config("[server]\nthreads = \"many\"\n");
  CHECK(run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, "") == 2);
  CHECK(run_command({binary(), "init", s.dir().string()}, &out) == 3);  // never overwrites
}

TEST_CASE("cli: keys are created, listed and revoked, a running server stops accepting a revoked key") {
  ServerProcess s;
  std::string token;
  REQUIRE(run_command({binary(), "key", "create", "--config", s.config_path(), "--principal", "demo", "--description",
                       "itest"},
                      &token) == 0);
  while (!token.empty() && token.back() == '\n') token.pop_back();
  CHECK(token.rfind("sgk_", 0) == 0);
  Client c(s.port());
  auto req = modern_request(1, "tools/call", {{"name", "whoami"}});
  CHECK(c.request(http::verb::post, "/mcp", modern_headers(token, "tools/call", "whoami"), req.dump()).status == 200);

  std::string list;
  REQUIRE(run_command({binary(), "key", "list", "--config", s.config_path()}, &list) == 0);
  std::string key_id = token.substr(4, token.find('_', 4) - 4);
  CHECK(list.find(key_id) != std::string::npos);
  CHECK(list.find("itest") != std::string::npos);
  CHECK(list.find("secret") == std::string::npos);
  // The secret is everything after "sgk_<id>_"; it is base64url, so it may itself contain '_'.
  std::string secret = token.substr(token.find('_', 4) + 1);
  REQUIRE(secret.size() >= 20);
  CHECK(list.find(secret) == std::string::npos);  // never shown again

  REQUIRE(run_command({binary(), "key", "revoke", "--config", s.config_path(), key_id}) == 0);
  CHECK(run_command({binary(), "key", "revoke", "--config", s.config_path(), key_id}) == 1);
  int status = 200;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(8);
  while (status == 200 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    Client c2(s.port());
    status = c2.request(http::verb::post, "/mcp", modern_headers(token, "tools/call", "whoami"), req.dump()).status;
  }
  CHECK(status == 401);
}

TEST_CASE("stdio: EOF ends the server promptly even with a long call and a subscription open") {
  ServerProcess s("", false);
  std::string input;
  input += modern_request("listen", "subscriptions/listen", {{"notifications", {{"toolsListChanged", true}}}}).dump() + "\n";
  input += modern_request("long", "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 30}}}}).dump() + "\n";
  auto t0 = std::chrono::steady_clock::now();
  std::string out;
  CHECK(run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, input) == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  auto msgs = lines_of(out);
  bool acked = false, ended = false, long_answered = false;
  for (auto& m : msgs) {
    if (m.value("method", "") == "notifications/subscriptions/acknowledged") acked = true;
    if (m.contains("id") && m["id"] == "listen" && m.contains("result")) ended = true;
    if (m.contains("id") && m["id"] == "long") long_answered = true;
  }
  CHECK(acked);
  CHECK(ended);               // the subscription closed gracefully
  CHECK_FALSE(long_answered);  // the cancelled call sends nothing
}

TEST_CASE("cli: audit verify checks the hash chain the server wrote, and finds tampering") {
  ServerProcess s;
  Client c(s.port());
  for (int i = 0; i < 5; ++i) {
    auto req = modern_request(i, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "a" + std::to_string(i)}}}});
    REQUIRE(c.request(http::verb::post, "/mcp", modern_headers(s.user_key(), "tools/call", "echo"), req.dump()).status == 200);
  }
  CHECK(c.request(http::verb::post, "/mcp", modern_headers("sgk_x_y", "tools/list"), modern_request(9, "tools/list").dump()).status == 401);
  REQUIRE(s.stop() == 0);  // drains the audit writer
  std::string out;
  CHECK(run_command({binary(), "audit", "verify", "--config", s.config_path()}, &out) == 0);
  CHECK(out.find("intact: 6 records") != std::string::npos);
  std::string db = (s.dir() / "scigate.db").string();
  // Someone with write access to the file rewrites history.
  REQUIRE(run_command({"/usr/bin/sqlite3", db,
                       "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET outcome='ok' WHERE seq=6;"}) == 0);
  CHECK(run_command({binary(), "audit", "verify", "--config", s.config_path()}, &out) == 1);
  CHECK(out.find("BROKEN at record 6") != std::string::npos);
}

TEST_CASE("stdio: SIGHUP announces a changed tool list instead of killing the server") {
  ServerProcess s("", false);
  Child child = spawn({binary(), "serve", "--config", s.config_path(), "--stdio"});
  std::string init =
      R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})"
      "\n";
  REQUIRE(write(child.in_fd, init.data(), init.size()) == static_cast<ssize_t>(init.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(child.pid, SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::string ping = R"({"jsonrpc":"2.0","id":2,"method":"ping"})" "\n";
  REQUIRE(write(child.in_fd, ping.data(), ping.size()) == static_cast<ssize_t>(ping.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::string out;
  CHECK(finish(child, &out) == 0);
  auto msgs = lines_of(out);
  REQUIRE(msgs.size() == 3);
  CHECK(msgs[1]["method"] == "notifications/tools/list_changed");
  CHECK(msgs[2]["id"] == 2);
}

namespace {
// Reads the child's stdout until the answer to `id` arrives (or 10 s pass); keeps every message.
json await_answer(int fd, const json& id, std::string& pending, std::vector<json>& seen) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
      json m = json::parse(pending.substr(0, nl), nullptr, false);
      pending.erase(0, nl + 1);
      REQUIRE_FALSE(m.is_discarded());
      seen.push_back(m);
      if (m.contains("id") && m["id"] == id) return m;
    }
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    REQUIRE(n > 0);
    pending.append(buf, static_cast<std::size_t>(n));
  }
}

void send_line(const Child& c, const json& m) {
  std::string line = m.dump() + "\n";
  REQUIRE(::write(c.in_fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
}
}  // namespace

TEST_CASE("stdio: notifications/cancelled ends a subscription and a tasks/result wait, with no answer") {
  ServerProcess s("", false);
  Child child = spawn({binary(), "serve", "--config", s.config_path(), "--stdio"});
  std::string pending;
  std::vector<json> seen;
  send_line(child, json::parse(R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})"));
  send_line(child, json::parse(R"({"jsonrpc":"2.0","method":"notifications/initialized"})"));
  await_answer(child.out_fd, 1, pending, seen);
  send_line(child, json{{"jsonrpc", "2.0"}, {"id", 2}, {"method", "tools/call"},
                        {"params", {{"name", "submit_job"},
                                    {"arguments", {{"script", "sleep 30"}, {"resources", {{"walltime", "00:01:00"}}}}}}}});
  json job = await_answer(child.out_fd, 2, pending, seen)["result"]["structuredContent"];
  REQUIRE(job.contains("job_id"));
  send_line(child, json{{"jsonrpc", "2.0"}, {"id", 3}, {"method", "tools/call"},
                        {"params", {{"name", "wait_job"}, {"arguments", {{"job_id", job["job_id"]}}}, {"task", json::object()}}}});
  std::string task_id = await_answer(child.out_fd, 3, pending, seen)["result"]["task"]["taskId"];
  send_line(child, json{{"jsonrpc", "2.0"}, {"id", "r"}, {"method", "tasks/result"}, {"params", {{"taskId", task_id}}}});
  send_line(child, modern_request("listen", "subscriptions/listen", {{"notifications", {{"toolsListChanged", true}}}}));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  send_line(child, json{{"jsonrpc", "2.0"}, {"method", "notifications/cancelled"}, {"params", {{"requestId", "r"}}}});
  send_line(child, json{{"jsonrpc", "2.0"}, {"method", "notifications/cancelled"}, {"params", {{"requestId", "listen"}}}});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  send_line(child, json{{"jsonrpc", "2.0"}, {"id", "r"}, {"method", "tasks/get"}, {"params", {{"taskId", task_id}}}});
  json again = await_answer(child.out_fd, "r", pending, seen);
  CHECK(again["result"]["status"] == "working");  // cancelling the wait is not cancelling the task
  send_line(child, json{{"jsonrpc", "2.0"}, {"id", 9}, {"method", "tools/call"},
                        {"params", {{"name", "cancel_job"}, {"arguments", {{"job_id", job["job_id"]}}}}}});
  await_answer(child.out_fd, 9, pending, seen);
  std::string rest;
  CHECK(finish(child, &rest) == 0);
  for (auto& m : lines_of(pending + rest)) seen.push_back(m);
  // At EOF a live subscription ends with a result and a live tasks/result with the task's end:
  // cancelled ones had no answer at all. ("r" answered once: the tasks/get.)
  int answers_r = 0;
  bool acked = false;
  for (const auto& m : seen) {
    if (m.value("method", "") == "notifications/subscriptions/acknowledged") acked = true;
    CHECK_FALSE((m.contains("id") && m["id"] == "listen"));
    if (m.contains("id") && m["id"] == "r") ++answers_r;
  }
  CHECK(acked);
  CHECK(answers_r == 1);
}
