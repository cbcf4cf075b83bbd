// The engine the server runs: one policy per project, the pipeline in front of it, reloads and
// the file watcher.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <random>
#include <thread>

#include "tests/support/eventually.hpp"
#include "policies/policy_tests.hpp"
#include "policies/project_policies.hpp"
#include "server/common/crypto.hpp"
#include "support/harness.hpp"
#include "tests/support/files.hpp"

using namespace scigate;
namespace fs = std::filesystem;

namespace {

struct TempDir : scigate::test::TempDir {
  TempDir() : scigate::test::TempDir("policy") {}
  fs::path write(const std::string& name, const std::string& text) const {
    // Write beside and rename, as editors do, so a reader never sees half a file.
    auto tmp = path / (name + ".tmp");
    std::ofstream(tmp) << text;
    fs::rename(tmp, path / name);
    return path / name;
  }
};

Principal user_in(const Config& cfg, const std::string& name) {
  Principal p;
  p.name = name;
  p.auth_method = "api_key";
  auth::assign_projects(p, cfg);
  return p;
}

const char* kOpen = "[[rules]]\nid = \"a-open\"\neffect = \"permit\"\ndescription = \"everyone, everything\"\n";
const char* kEchoOnly = "[[rules]]\nid = \"b-echo\"\neffect = \"permit\"\ntools = [\"echo\"]\n[rules.when]\ntext = { in = [\"hello\"] }\n";

using scigate::test::eventually;

}  // namespace

TEST_CASE("project policies: a project's rules never widen access in another project") {
  TempDir dir;
  Config cfg;
  cfg.demo_tools = true;
  ProjectConfig a, b;
  a.id = "A";
  a.members = {"alice"};
  a.policy = dir.write("a.toml", kOpen);
  b.id = "B";
  b.members = {"bob"};
  b.policy = dir.write("b.toml", kEchoOnly);
  cfg.projects = {a, b};

  ProjectPolicies engine(ProjectPolicies::sources_from(cfg));
  ToolRegistry registry = tools::make_registry(cfg);
  test::CountingLedger ledger;
  test::RecordingAudit audit;
  Metrics metrics;
  ToolCallPipeline pipeline(registry, engine, ledger, audit, metrics, std::chrono::seconds(10));
  boost::asio::io_context io;
  Principal bob = user_in(cfg, "bob");
  auto call = [&](const std::string& project, const std::string& tool, json args) {
    ToolCallRequest r;
    r.tool = tool;
    r.arguments = std::move(args);
    r.principal = bob;
    r.requested_project = project;
    r.request_id = "req-test";
    return test::run_blocking(io, pipeline.run(std::move(r)));
  };
  auto code = [](const ToolCallOutcome& o) { return o.result["_meta"]["io.scigate/error"].value("code", ""); };

  // Calls for A are refused by membership before A's open policy is consulted.
  auto o = call("A", "echo", {{"text", "x"}});
  CHECK(o.result["isError"] == true);
  CHECK(code(o) == "forbidden");
  CHECK(audit.records.back().decision_rules.empty());
  // The engine refuses on its own too, should anything call it without the pipeline's check.
  std::string project_a = "A", echo = "echo";
  json args{{"text", "x"}};
  Decision d = engine.decide(PolicyQuery{bob, project_a, echo, args});
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"builtin-membership"});

  // B's calls are decided by B's policy only, whatever A says: sleep is not even listed to bob
  // (so it is an unknown tool), and echo is held to B's condition.
  o = call("B", "sleep", {{"seconds", 0}});
  REQUIRE(o.protocol_error);
  CHECK(o.protocol_error->message == "Unknown tool: sleep");
  o = call("B", "echo", {{"text", "x"}});
  CHECK(code(o) == "policy_denied");
  CHECK(o.result["_meta"]["io.scigate/error"]["message"] == "text \"x\" is not \"hello\" (rule b-echo)");
  CHECK(audit.records.back().decision_rules == "b-echo");
  CHECK(audit.records.back().details["policy_hash"] == crypto::sha256_hex(kEchoOnly));
  o = call("B", "echo", {{"text", "hello"}});
  CHECK(o.result["isError"] == false);
  CHECK(audit.records.back().decision_rules == "b-echo");

  // tools/list: only what B could permit.
  CHECK(engine.may_list(bob, "echo"));
  CHECK_FALSE(engine.may_list(bob, "sleep"));
  Principal alice = user_in(cfg, "alice");
  CHECK(engine.may_list(alice, "sleep"));

  // A file that tries to name another project is refused outright.
  dir.write("a.toml", std::string("project = \"B\"\n") + kOpen);
  auto err = engine.reload();
  REQUIRE(err);
  CHECK(err->find("a.toml:1:1: a policy file cannot name a project") != std::string::npos);
}

TEST_CASE("project policies: projects without a file keep the membership policy") {
  Config cfg;
  ProjectConfig p;
  p.id = "plain";
  p.members = {"alice"};
  p.auditors = {"eve"};
  cfg.projects = {p};
  ProjectPolicies engine(ProjectPolicies::sources_from(cfg));
  Principal alice = user_in(cfg, "alice"), eve = user_in(cfg, "eve"), nobody = user_in(cfg, "nobody");
  std::string project = "plain", tool = "anything", none;
  json args = json::object();
  CHECK(engine.decide(PolicyQuery{alice, project, tool, args}).permitted());
  // Any role in the project passes the built-in policy; the pipeline has already held the
  // caller to the tool's required_role (an auditor reaches only auditor tools such as
  // query_audit_log; governance_test checks that step).
  CHECK(engine.decide(PolicyQuery{eve, project, tool, args}).permitted());
  CHECK_FALSE(engine.decide(PolicyQuery{nobody, project, tool, args}).permitted());
  CHECK(engine.decide(PolicyQuery{nobody, none, tool, args}).permitted());  // no project: whoami only gets here
  CHECK(engine.may_list(alice, tool));
  CHECK(engine.policy_for("plain") == nullptr);
}

TEST_CASE("project policies: a broken file stops start-up with its line and column") {
  TempDir dir;
  auto f = dir.write("p.toml", "[[rules]]\nid = \"a\"\neffect = \"perhaps\"\n");
  try {
    ProjectPolicies engine({{"p", f}});
    FAIL("no error");
  } catch (const PolicyError& e) {
    CHECK(std::string(e.what()) == f.string() + ":3:10: unknown effect \"perhaps\" in rule \"a\" (permit or forbid)");
  }
  CHECK_THROWS_AS(ProjectPolicies({{"p", dir.path / "missing.toml"}}), PolicyError);
}

TEST_CASE("project policies: reload swaps all or keeps all") {
  TempDir dir;
  auto fa = dir.write("a.toml", kOpen);
  auto fb = dir.write("b.toml", kEchoOnly);
  ProjectPolicies engine({{"A", fa}, {"B", fb}});
  Principal p;
  p.name = "carol";
  p.projects = {"A", "B"};
  p.roles = {{"A", {"member"}}, {"B", {"member"}}};
  std::string a = "A", b = "B", sleep = "sleep";
  json args = json::object();
  REQUIRE(engine.decide(PolicyQuery{p, a, sleep, args}).permitted());
  REQUIRE_FALSE(engine.decide(PolicyQuery{p, b, sleep, args}).permitted());

  // B gets fixed, A gets broken: neither changes.
  dir.write("b.toml", kOpen);
  dir.write("a.toml", "[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nn = { max = \"lots\" }\n");
  auto err = engine.reload();
  REQUIRE(err);
  CHECK(err->rfind(fa.string() + ":5:13: ", 0) == 0);
  CHECK(engine.decide(PolicyQuery{p, a, sleep, args}).permitted());
  CHECK_FALSE(engine.decide(PolicyQuery{p, b, sleep, args}).permitted());
  CHECK(engine.policy_for("A")->hash() == crypto::sha256_hex(kOpen));

  dir.write("a.toml", kEchoOnly);
  CHECK_FALSE(engine.reload());
  CHECK_FALSE(engine.decide(PolicyQuery{p, a, sleep, args}).permitted());
  CHECK(engine.decide(PolicyQuery{p, b, sleep, args}).permitted());
}

TEST_CASE("project policies: rate-limit buckets survive a reload while the limit is unchanged") {
  TempDir dir;
  std::string limited = std::string(kOpen) + "[[rate_limits]]\nid = \"slow\"\nrate = \"1/hour\"\nburst = 1\n";
  auto f = dir.write("p.toml", limited);
  ProjectPolicies engine({{"p", f}});
  Principal p;
  p.name = "carol";
  p.projects = {"p"};
  p.roles = {{"p", {"member"}}};
  std::string project = "p", tool = "t";
  json args = json::object();
  auto now = std::chrono::system_clock::now();
  CHECK(engine.decide(PolicyQuery{p, project, tool, args, now}).permitted());
  CHECK(engine.decide(PolicyQuery{p, project, tool, args, now}).retry_after);
  dir.write("p.toml", limited + "# an edit elsewhere\n");
  REQUIRE_FALSE(engine.reload());
  CHECK(engine.decide(PolicyQuery{p, project, tool, args, now}).retry_after);  // still spent
  dir.write("p.toml", std::string(kOpen) + "[[rate_limits]]\nid = \"slow\"\nrate = \"2/hour\"\nburst = 1\n");
  REQUIRE_FALSE(engine.reload());
  CHECK(engine.decide(PolicyQuery{p, project, tool, args, now}).permitted());  // a new limit, a new bucket
}

TEST_CASE("project policies: the watcher picks up a fixed file and ignores a broken one") {
  TempDir dir;
  auto f = dir.write("p.toml", kEchoOnly);
  ProjectPolicies engine({{"p", f}});
  std::atomic<int> reloads{0};
  engine.watch(std::chrono::milliseconds(20), [&] { ++reloads; });
  Principal p;
  p.name = "carol";
  p.projects = {"p"};
  p.roles = {{"p", {"member"}}};
  std::string project = "p", sleep = "sleep";
  json args = json::object();
  auto permitted = [&] { return engine.decide(PolicyQuery{p, project, sleep, args}).permitted(); };
  REQUIRE_FALSE(permitted());

  // A broken edit: no reload, the old policy stays.
  dir.write("p.toml", "[[rules]]\nid = \"x\"\neffect = \"permit\"\nbogus = 1\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(reloads.load() == 0);
  CHECK_FALSE(permitted());
  CHECK(engine.policy_for("p")->hash() == crypto::sha256_hex(kEchoOnly));

  // The fix is picked up.
  dir.write("p.toml", kOpen);
  CHECK(eventually([&] { return reloads.load() == 1; }));
  CHECK(permitted());

  // Touching the file without changing it reloads nothing.
  fs::last_write_time(f, fs::file_time_type::clock::now() + std::chrono::seconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(reloads.load() == 1);

  // A file briefly missing (rename-on-save) keeps the policy until it is back.
  fs::remove(f);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(permitted());
  dir.write("p.toml", kEchoOnly);
  CHECK(eventually([&] { return reloads.load() == 2; }));
  CHECK_FALSE(permitted());
  engine.stop_watching();
}

TEST_CASE("policy tests: a test file runs its cases in order and reports each") {
  TempDir dir;
  dir.write("pol.toml", R"(
[[rules]]
id = "members"
effect = "permit"
principals = ["role:member"]
[rules.when]
n = { max = 4, optional = true }
[[rate_limits]]
id = "two"
tools = ["limited"]
rate = "2/hour"
)");
  auto tests = dir.write("pol.test.toml", R"(
policy = "pol.toml"
project = "x"
[[cases]]
name = "member within bounds"
principal = "a"
tool = "t"
args = { n = 4 }
expect = "allow"
rule = "members"
[[cases]]
name = "member over the bound"
principal = "a"
tool = "t"
args = '{"n": 5}'
expect = "deny"
reason_contains = "n 5 exceeds the limit 4"
[[cases]]
name = "the third call within the hour"
principal = "a"
tool = "limited"
repeat = 3
expect = "deny"
rule = "two"
[[cases]]
name = "wrong on purpose"
principal = "outsider"
roles = []
tool = "t"
at = 2025-01-06T10:00:00Z
expect = "allow"
rule = "members"
)");
  auto r = policy::run_policy_tests(tests);
  REQUIRE(r.cases.size() == 4);
  CHECK(r.cases[0].passed);
  CHECK(r.cases[1].passed);
  CHECK(r.cases[2].passed);
  CHECK_FALSE(r.cases[3].passed);
  CHECK(r.cases[3].failure == "expected allow, got deny; expected rule members, decided by builtin-membership");
  CHECK(r.cases[3].line == 25);

  auto bad = dir.write("bad.test.toml", "policy = \"pol.toml\"\n[[cases]]\nname = \"x\"\nprincipal = \"a\"\ntool = \"t\"\nexpect = \"maybe\"\n");
  try {
    policy::run_policy_tests(bad);
    FAIL("no error");
  } catch (const PolicyError& e) {
    CHECK(std::string(e.what()) == bad.string() + ":6:10: expect must be \"allow\" or \"deny\"");
  }
  CHECK(policy::parse_time("2025-01-06T11:00:00+01:00") == policy::parse_time("2025-01-06T10:00:00Z"));
  CHECK_FALSE(policy::parse_time("yesterday"));
}
