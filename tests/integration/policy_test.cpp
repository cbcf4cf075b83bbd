// Per-project policies in the real server: denials as isError results, reloads while sessions
// stay open, SIGHUP with a broken file, rate limits, and the policy CLI.
#include <catch2/catch.hpp>

#include <signal.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "server_process.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

json call(Client& c, const std::string& key, const std::string& tool, json args, int id = 1) {
  auto req = modern_request(id, "tools/call", {{"name", tool}, {"arguments", std::move(args)}});
  auto r = c.request(verb::post, "/mcp", modern_headers(key, "tools/call", tool), req.dump());
  REQUIRE(r.status == 200);
  return r.json_body()["result"];
}

json legacy_call(Client& c, const std::string& key, const std::string& sid, const std::string& tool, json args, int id) {
  json req{{"jsonrpc", "2.0"}, {"id", id}, {"method", "tools/call"}, {"params", {{"name", tool}, {"arguments", std::move(args)}}}};
  auto r = c.request(verb::post, "/mcp", legacy_headers(key, sid), req.dump());
  REQUIRE(r.status == 200);
  return r.json_body()["result"];
}

std::string policy_file(const ServerProcess& s) { return (s.dir() / "policies" / "demo.toml").string(); }

// Replaces the policy file the way editors do: write beside it, then rename over it.
void write_policy(const ServerProcess& s, const std::string& text) {
  std::string tmp = policy_file(s) + ".tmp";
  std::ofstream(tmp) << text;
  std::filesystem::rename(tmp, policy_file(s));
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

const char* kEchoHelloOnly = R"(
[[rules]]
id = "echo-hello-only"
effect = "permit"
principals = ["role:member"]
tools = ["whoami", "echo", "sleep"]
[rules.when]
text = { in = ["hello"], optional = true }
)";

}  // namespace

TEST_CASE("policy: a denied call is an isError result naming the rule, with a hint") {
  ServerProcess s;
  Client c(s.port());
  auto r = call(c, s.user_key(), "sleep", {{"seconds", 900}});
  CHECK(r["isError"] == true);
  auto err = r["_meta"]["io.scigate/error"];
  CHECK(err["code"] == "policy_denied");
  CHECK(err["message"] == "seconds 900 exceeds the limit 600 (rule members-sleep-10-min)");
  CHECK(err["hint"] == "ask for seconds at most 600");
  CHECK(r["content"][0]["text"].get<std::string>().find("Hint: ask for seconds at most 600") != std::string::npos);
  // The service account is held to the forbid, the user is not.
  auto robot = call(c, s.service_key(), "sleep", {{"seconds", 61}, {"steps", 1}});
  CHECK(robot["_meta"]["io.scigate/error"]["message"].get<std::string>().find("(rule robots-sleep-1-min)") !=
        std::string::npos);
  CHECK(call(c, s.service_key(), "echo", {{"text", "plate 7"}})["isError"] == false);
  // Audited with the rule and the policy's hash.
  CHECK(s.wait_for_log(R"("rules":"members-sleep-10-min")"));
  CHECK(s.wait_for_log(R"("policy_hash":")"));
}

TEST_CASE("policy: editing the file changes the next decision without dropping the session") {
  ServerProcess s;
  Client c(s.port());
  auto init = c.request(verb::post, "/mcp", legacy_headers(s.user_key()), legacy_initialize().dump());
  std::string sid = init.header("mcp-session-id");
  REQUIRE(sid.size() == 32);
  Client stream(s.port());
  stream.send_raw("GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s.user_key() +
                  "\r\nAccept: text/event-stream\r\nMcp-Session-Id: " + sid + "\r\n\r\n");
  REQUIRE(stream.read_head().status == 200);
  CHECK(legacy_call(c, s.user_key(), sid, "echo", {{"text", "x"}}, 2)["isError"] == false);

  write_policy(s, kEchoHelloOnly);
  REQUIRE(s.wait_for_log(R"("event":"policy_reloaded")"));
  CHECK(s.log().find(R"("trigger":"file_change")") != std::string::npos);
  // Clients are told to re-list tools.
  auto ev = stream.next_event(std::chrono::seconds(5));
  REQUIRE(ev);
  CHECK((*ev)["method"] == "notifications/tools/list_changed");

  auto r = legacy_call(c, s.user_key(), sid, "echo", {{"text", "x"}}, 3);
  CHECK(r["isError"] == true);
  CHECK(r["_meta"]["io.scigate/error"]["message"] == "text \"x\" is not \"hello\" (rule echo-hello-only)");
  CHECK(legacy_call(c, s.user_key(), sid, "echo", {{"text", "hello"}}, 4)["isError"] == false);
}

TEST_CASE("policy: SIGHUP with a broken file keeps the previous policy in force") {
  ServerProcess s;
  Client c(s.port());
  write_policy(s, "[[rules]]\nid = \"oops\"\neffect = \"permit\"\n[rules.when]\nseconds = { maxx = 5 }\n");
  kill(s.pid(), SIGHUP);
  REQUIRE(s.wait_for_log(R"("trigger":"sighup")"));
  std::string log = s.log();
  CHECK(log.find("policy_reload_failed") != std::string::npos);
  CHECK(log.find("demo.toml:5:13: unknown key \\\"maxx\\\"") != std::string::npos);
  CHECK(count(log, R"("event":"policy_reloaded")") == 0);
  // Still the old policy: echo allowed, a long sleep refused by the old rule.
  CHECK(call(c, s.user_key(), "echo", {{"text", "x"}})["isError"] == false);
  CHECK(call(c, s.user_key(), "sleep", {{"seconds", 900}})["_meta"]["io.scigate/error"]["message"].get<std::string>().find(
            "members-sleep-10-min") != std::string::npos);
  // Fixed and signalled again: picked up.
  write_policy(s, kEchoHelloOnly);
  kill(s.pid(), SIGHUP);
  REQUIRE(s.wait_for_log(R"("event":"policy_reloaded")"));
  CHECK(call(c, s.user_key(), "echo", {{"text", "x"}})["isError"] == true);
  CHECK(s.running());
}

TEST_CASE("policy: every reload that changes a policy or refuses a file is an audit record") {
  ServerProcess s;
  Client c(s.port());
  REQUIRE(call(c, s.user_key(), "echo", {{"text", "before"}})["isError"] == false);
  // A broken file (refused), a good one (accepted), and a signal that changes nothing (no record).
  write_policy(s, "[[rules]]\nid = \"oops\"\neffect = \"permit\"\n[rules.when]\nseconds = { maxx = 5 }\n");
  kill(s.pid(), SIGHUP);
  REQUIRE(s.wait_for_log("policy_reload_failed"));
  write_policy(s, kEchoHelloOnly);
  kill(s.pid(), SIGHUP);
  REQUIRE(s.wait_for_log(R"("event":"policy_reloaded")"));
  kill(s.pid(), SIGHUP);
  for (auto t0 = std::chrono::steady_clock::now();
       count(s.log(), R"("event":"policy_reloaded")") < 2 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5);)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(call(c, s.user_key(), "echo", {{"text", "hello"}})["isError"] == false);
  REQUIRE(s.stop() == 0);

  std::string out;
  REQUIRE(run_command({binary(), "audit", "export", "--config", s.config_path()}, &out) == 0);
  std::vector<json> reloads, calls;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    json r = json::parse(line);
    if (r.contains("details") && r["details"].value("event", "") == "policy_reload") reloads.push_back(r);
    else if (r.value("tool", "") == "echo") calls.push_back(r);
  }
  // The watcher (1 s poll) may see the broken file too before it is replaced: one or two
  // refusals, from either trigger; the good file is accepted exactly once, whoever loads it first.
  std::vector<json> refusals, acceptances;
  for (const auto& r : reloads) (r["outcome"] == "ok" ? acceptances : refusals).push_back(r);
  REQUIRE(calls.size() == 2);
  REQUIRE(acceptances.size() == 1);
  REQUIRE(!refusals.empty());
  CHECK(refusals.size() <= 2);
  const json& refused = refusals[0];
  const json& accepted = acceptances[0];
  CHECK(refused["project"] == "demo");
  CHECK(refused["principal"] == "");
  CHECK(refused["outcome"] == "invalid");
  CHECK(refused["error_code"] == "policy_invalid");
  CHECK((refused["details"]["trigger"] == "sighup" || refused["details"]["trigger"] == "file_change"));
  CHECK(refused["details"]["file"] == policy_file(s));
  CHECK(refused["details"]["reason"].get<std::string>().rfind(policy_file(s) + ":5:13: unknown key \"maxx\"", 0) == 0);
  // The policy still in force is the one the first call was decided by.
  std::string original = calls[0]["details"]["policy_hash"];
  CHECK(refused["details"]["policy_hash"] == original);
  CHECK(accepted["outcome"] == "ok");
  CHECK(accepted["error_code"] == "");
  CHECK(accepted["details"]["previous_policy_hash"] == original);
  CHECK(accepted["details"]["policy_hash"] == calls[1]["details"]["policy_hash"]);
  CHECK(accepted["details"]["policy_hash"] != original);
  CHECK(accepted["request_id"].get<std::string>().rfind("policy-", 0) == 0);
  // In the chain between the calls they separate.
  CHECK(calls[0]["seq"] < refused["seq"]);
  CHECK(refused["seq"] < accepted["seq"]);
  CHECK(accepted["seq"] < calls[1]["seq"]);
  CHECK(run_command({binary(), "audit", "verify", "--config", s.config_path()}, &out) == 0);
}

TEST_CASE("policy: a broken file stops start-up with its line and column") {
  ServerProcess s("", false);
  write_policy(s, "[[rules]]\nid = \"a\"\neffect = \"permit\"\ntools = \"echo\"\n");
  CHECK_THROWS(s.start());
  CHECK(s.log().find("scigate: policy error: " + policy_file(s) + ":4:9: \"tools\" must be an array of strings") !=
        std::string::npos);
}

TEST_CASE("policy: a rate limit answers rate_limited with retry_after_ms") {
  ServerProcess s("", false);
  write_policy(s, R"(
[[rules]]
id = "one-sleep-a-day"
effect = "permit"
principals = ["role:member"]
tools = ["sleep"]
[rules.context]
rate = "1/day"

[[rules]]
id = "members"
effect = "permit"
principals = ["role:member"]
tools = ["echo", "whoami", "get_usage"]
[[rate_limits]]
id = "echo-burst"
tools = ["echo"]
per = "principal"
rate = "1/hour"
burst = 2
)");
  s.start();
  Client c(s.port());
  CHECK(call(c, s.user_key(), "echo", {{"text", "1"}})["isError"] == false);
  CHECK(call(c, s.user_key(), "echo", {{"text", "2"}})["isError"] == false);
  auto r = call(c, s.user_key(), "echo", {{"text", "3"}});
  CHECK(r["isError"] == true);
  auto err = r["_meta"]["io.scigate/error"];
  CHECK(err["code"] == "rate_limited");
  CHECK(err["retry_after_ms"].get<int64_t>() > 3500 * 1000);
  CHECK(err["message"].get<std::string>().rfind("rate limit echo-burst: 1 calls per hour per principal; retry in ", 0) == 0);
  // Other principals have their own bucket.
  CHECK(call(c, s.service_key(), "echo", {{"text", "4"}})["isError"] == false);
  CHECK(s.wait_for_log(R"("outcome":"rate_limited")"));

  // A rule's own call rate: the quota is used up, nothing else permits sleep.
  CHECK(call(c, s.user_key(), "sleep", {{"seconds", 0.01}, {"steps", 1}})["isError"] == false);
  auto again = call(c, s.user_key(), "sleep", {{"seconds", 0.01}, {"steps", 1}});
  CHECK(again["isError"] == true);
  auto q = again["_meta"]["io.scigate/error"];
  CHECK(q["code"] == "rate_limited");
  CHECK(q["retry_after_ms"].get<int64_t>() > 23 * 3600 * 1000);
  CHECK(q["message"] == "rule one-sleep-a-day permits at most 1 calls per day per principal, and they are used up; "
                        "retry in 24.0 h (rule one-sleep-a-day)");
  CHECK(s.wait_for_log(R"("rules":"one-sleep-a-day")"));
}

TEST_CASE("cli: policy check explains a decision, exit 0 allow, 1 deny, 2 usage") {
  ServerProcess s("", false);
  std::string out;
  CHECK(run_command({binary(), "policy", "check", "--config", s.config_path(), "--project", "demo", "--as", "demo",
                     "--tool", "sleep", "--args", R"({"seconds": 900})"},
                    &out) == 1);
  CHECK(out.find("decision: deny") != std::string::npos);
  CHECK(out.find("rules:    members-sleep-10-min") != std::string::npos);
  CHECK(out.find("reason:   seconds 900 exceeds the limit 600 (rule members-sleep-10-min)") != std::string::npos);
  CHECK(out.find("hint:     ask for seconds at most 600") != std::string::npos);
  CHECK(run_command({binary(), "policy", "check", "--config", s.config_path(), "--as", "demo", "--tool", "echo", "--args",
                     R"({"text": "hi"})"},
                    &out) == 0);
  CHECK(out.find("decision: allow") != std::string::npos);
  CHECK(out.find("rules:    members-introspect-and-echo") != std::string::npos);
  // Service accounts, and someone outside the project.
  CHECK(run_command({binary(), "policy", "check", "--config", s.config_path(), "--as", "lab-controller", "--kind", "service",
                     "--tool", "sleep", "--args", R"({"seconds": 120})"},
                    &out) == 1);
  CHECK(out.find("robots-sleep-1-min") != std::string::npos);
  CHECK(run_command({binary(), "policy", "check", "--config", s.config_path(), "--project", "demo", "--as", "mallory",
                     "--tool", "echo", "--args", R"({"text": "hi"})"},
                    &out) == 1);
  CHECK(out.find("mallory is not a member of project demo") != std::string::npos);
  // Looking takes no rate-limit token: the check can be repeated past the burst.
  for (int i = 0; i < 3; ++i)
    CHECK(run_command({binary(), "policy", "check", "--config", s.config_path(), "--as", "demo", "--tool", "sleep",
                       "--args", R"({"seconds": 1})"}) == 0);
  CHECK(run_command({binary(), "policy", "check", "--config", s.config_path(), "--tool", "echo"}) == 2);
  CHECK(run_command({binary(), "policy", "check", "--config", s.config_path(), "--as", "demo", "--tool", "echo", "--args",
                     "{not json"}) == 2);
  CHECK(run_command({binary(), "policy", "frobnicate"}) == 2);
}

TEST_CASE("cli: policy test runs the demo's cases, reports failures, and validate names line and column") {
  ServerProcess s("", false);
  std::string tests = (s.dir() / "policies" / "demo.test.toml").string();
  std::string out;
  CHECK(run_command({binary(), "policy", "test", tests}, &out) == 0);
  CHECK(count(out, "  PASS: ") == 15);
  CHECK(out.find("PASS: 15/15") != std::string::npos);

  std::string failing = (s.dir() / "policies" / "failing.test.toml").string();
  std::ofstream(failing) << "policy = \"demo.toml\"\nproject = \"demo\"\n"
                            "[[cases]]\nname = \"an hour of sleep\"\nprincipal = \"demo\"\ntool = \"sleep\"\n"
                            "args = { seconds = 3600 }\nexpect = \"allow\"\n";
  CHECK(run_command({binary(), "policy", "test", tests, failing}, &out) == 1);
  CHECK(out.find("FAIL: an hour of sleep (line 3): expected allow, got deny") != std::string::npos);
  CHECK(out.find("PASS: 15/16") != std::string::npos);
  CHECK(out.find("FAIL: 1/16") != std::string::npos);

  CHECK(run_command({binary(), "policy", "validate", policy_file(s)}, &out) == 0);
  CHECK(out.find(": ok (10 rules, 2 rate limits; sha256 ") != std::string::npos);
  std::string broken = (s.dir() / "policies" / "broken.toml").string();
  std::ofstream(broken) << "[[rules]]\nid = \"x\"\neffect = \"permit\"\n[rules.context]\nhours = \"9-5\"\n";
  CHECK(run_command({binary(), "policy", "validate", broken}, &out) == 1);
  CHECK(out == broken + ":5:9: hours must be \"HH:MM-HH:MM\", e.g. \"08:00-20:00\" or \"22:00-06:00\"\n");
  std::ofstream(broken) << "[[rules]\n";
  CHECK(run_command({binary(), "policy", "validate", broken}, &out) == 1);
  CHECK(out.rfind(broken + ":1:", 0) == 0);
}
