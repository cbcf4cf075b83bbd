// Policy files: parsing (errors with line:column), rule semantics, literals, paths, time
// windows and rate limits.
#include <catch2/catch.hpp>

#include <atomic>
#include <iostream>
#include <thread>

#include "policies/rules.hpp"
#include "server/common/crypto.hpp"

using namespace scigate;
using namespace scigate::policy;
using nlohmann::json;

namespace {

// 2025-01-06 was a Monday.
std::chrono::system_clock::time_point at(int day_of_month, int hour, int minute = 0) {
  using namespace std::chrono;
  sys_days d{year{2025} / January / day{static_cast<unsigned>(day_of_month)}};
  return d + hours{hour} + minutes{minute};
}

Principal member(const std::string& name, const std::string& project = "p", std::vector<std::string> roles = {"member"},
                 std::vector<std::string> groups = {}, const std::string& kind = "user") {
  Principal p;
  p.name = name;
  p.kind = kind;
  p.groups = std::move(groups);
  p.projects = {project};
  p.roles[project] = std::move(roles);
  return p;
}

Decision decide(const Policy& pol, const Principal& who, const std::string& tool, const json& args,
                std::chrono::system_clock::time_point now = at(6, 12), RateLimiter* limiter = nullptr,
                bool consume = true) {
  std::string project = "p";
  return pol.decide(PolicyQuery{who, project, tool, args, now, consume}, limiter);
}

std::string error_of(const std::string& text) {
  try {
    Policy::parse(text, "pol.toml");
  } catch (const PolicyError& e) {
    return e.what();
  }
  return "";
}

const char* kJobs = R"(
[[rules]]
id = "members-read"
effect = "permit"
principals = ["role:member"]
tools = ["get_*", "whoami"]

[[rules]]
id = "gpu-jobs"
effect = "permit"
description = "GPU jobs up to a day, 4 GPUs"
principals = ["group:physics"]
tools = ["submit_job"]
[rules.when]
"resources.gpus" = { max = 4 }
walltime = { max = "24:00:00" }
partition = { in = ["gpu", "debug"] }

[[rules]]
id = "no-debug-for-robots"
effect = "forbid"
description = "Service accounts stay off the debug partition"
principals = ["service:*"]
tools = ["submit_job"]
[rules.when]
partition = { in = ["debug"] }
)";

}  // namespace

TEST_CASE("policy: syntax errors name line and column") {
  auto e = error_of("[[rules]]\nid = \"a\"\neffect = \n");
  CHECK(e.rfind("pol.toml:3:", 0) == 0);
  e = error_of("[[rules]\n");
  CHECK(e.rfind("pol.toml:1:", 0) == 0);
}

TEST_CASE("policy: semantic errors name line and column") {
  struct Case {
    const char* text;
    const char* where;
    const char* what;
  };
  std::vector<Case> cases = {
      {"[[rules]]\neffect = \"permit\"\n", "pol.toml:1:1", "needs an \"id\""},
      {"[[rules]]\nid = \"a\"\neffect = \"allow\"\n", "pol.toml:3:10", "unknown effect \"allow\""},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[[rules]]\nid = \"a\"\neffect = \"permit\"\n", "pol.toml:5:6",
       "duplicate id \"a\" (first used at line 2)"},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\ntoolz = [\"x\"]\n", "pol.toml:4:1", "unknown key \"toolz\" in [[rules]]"},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nn = { maxx = 4 }\n", "pol.toml:5:7", "unknown key \"maxx\""},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nwalltime = { max = \"24:99:00\" }\n", "pol.toml:5:20",
       "bad walltime \"24:99:00\""},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nbytes = { max = \"10 GiBs\" }\n", "pol.toml:5:17",
       "bad byte size"},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nn = { max = \"42\" }\n", "pol.toml:5:13", "ambiguous"},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\nprincipals = [\"alice\"]\n", "pol.toml:4:15", "unknown principal \"alice\""},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\nprincipals = [\"role:boss\"]\n", "pol.toml:4:15", "unknown role \"boss\""},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nn = 4\n", "pol.toml:5:5", "must be a table of tests"},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.context]\nhours = \"8-20\"\n", "pol.toml:5:9", "hours must be"},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.context]\ndays = [\"someday\"]\n", "pol.toml:5:9", "bad day"},
      {"[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\np = { prefix = [\"/a/../b\"] }\n", "pol.toml:5:17", "\"..\""},
      {"[[rules]]\nid = \"builtin-x\"\neffect = \"permit\"\n", "pol.toml:2:6", "reserved"},
      {"[[rate_limits]]\nid = \"r\"\nrate = \"10/fortnight\"\n", "pol.toml:3:8", "rate must be"},
      {"[[rate_limits]]\nid = \"r\"\nrate = \"10/min\"\nburst = 0\n", "pol.toml:4:9", "burst must be"},
      {"[[rate_limits]]\nid = \"r\"\nrate = \"10/min\"\nper = \"galaxy\"\n", "pol.toml:4:7", "per must be"},
      {"utc_offset = \"Europe/Paris\"\n", "pol.toml:1:14", "utc_offset must be"},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto e = error_of(c.text);
    CHECK(e.rfind(std::string(c.where) + ": ", 0) == 0);
    CHECK(e.find(c.what) != std::string::npos);
    if (e.rfind(std::string(c.where) + ": ", 0) != 0) std::cerr << "got: " << e << "\n";
  }
}

TEST_CASE("policy: a file cannot name a project (no widening through another project)") {
  auto e = error_of("project = \"other\"\n[[rules]]\nid = \"a\"\neffect = \"permit\"\n");
  CHECK(e.rfind("pol.toml:1:1: a policy file cannot name a project", 0) == 0);
  e = error_of("[[rules]]\nid = \"a\"\neffect = \"permit\"\nprojects = [\"b\"]\n");
  CHECK(e.rfind("pol.toml:4:1: a policy file cannot name a project", 0) == 0);
  e = error_of("[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nproject = { in = [\"b\"] }\n");
  CHECK(e.rfind("pol.toml:5:1: a policy file cannot name a project", 0) == 0);
}

TEST_CASE("policy: default deny, and the first permit whose conditions hold grants") {
  Policy p = Policy::parse(kJobs, "jobs.toml");
  auto alice = member("alice", "p", {"member"}, {"physics"});
  auto d = decide(p, alice, "get_job", json::object());
  CHECK(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"members-read"});
  CHECK(d.policy_hash == crypto::sha256_hex(kJobs));

  d = decide(p, alice, "submit_job", {{"resources", {{"gpus", 2}}}, {"walltime", "12:00:00"}, {"partition", "gpu"}});
  CHECK(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"gpu-jobs"});

  d = decide(p, alice, "delete_everything", json::object());
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"default-deny"});
  CHECK(d.reason == "no rule in project p's policy permits delete_everything");

  // Someone not in the group: the reason says who the nearest permit is for.
  auto bob = member("bob");
  d = decide(p, bob, "submit_job", {{"walltime", "1:00:00"}});
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"default-deny"});
  CHECK(d.reason.find("rule gpu-jobs permits it only to group:physics") != std::string::npos);
}

TEST_CASE("policy: a denial names the exceeded bound, the rule, and what would be allowed") {
  Policy p = Policy::parse(kJobs, "jobs.toml");
  auto alice = member("alice", "p", {"member"}, {"physics"});
  auto d = decide(p, alice, "submit_job", {{"resources", {{"gpus", 2}}}, {"walltime", "48:00:00"}, {"partition", "gpu"}});
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"gpu-jobs"});
  CHECK(d.reason == "walltime 48:00:00 exceeds the limit 24:00:00 (rule gpu-jobs)");
  CHECK(d.hint == "ask for walltime at most 24:00:00");

  // Every failed condition is named at once, so the caller can fix them together.
  d = decide(p, alice, "submit_job", {{"resources", {{"gpus", 8}}}, {"walltime", 2880}, {"partition", "long"}});
  CHECK(d.reason ==
        "resources.gpus 8 exceeds the limit 4; walltime 2880 minutes exceeds the limit 24:00:00; partition \"long\" is "
        "not one of \"gpu\", \"debug\" (rule gpu-jobs)");
  CHECK(d.hint == "ask for resources.gpus at most 4 and walltime at most 24:00:00 and partition one of \"gpu\", \"debug\"");
}

TEST_CASE("policy: a matching forbid beats any permit") {
  Policy p = Policy::parse(kJobs, "jobs.toml");
  auto robot = member("robot", "p", {"member"}, {"physics"}, "service");
  json args{{"resources", {{"gpus", 1}}}, {"walltime", "1:00:00"}, {"partition", "debug"}};
  auto d = decide(p, robot, "submit_job", args);
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"no-debug-for-robots"});
  CHECK(d.reason ==
        "Service accounts stay off the debug partition: partition \"debug\" is one of \"debug\" (rule no-debug-for-robots)");
  CHECK(d.hint == "ask for partition none of \"debug\"");
  // The same call by a user is permitted; the robot on another partition is too.
  CHECK(decide(p, member("alice", "p", {"member"}, {"physics"}), "submit_job", args).permitted());
  args["partition"] = "gpu";
  CHECK(decide(p, robot, "submit_job", args).permitted());
}

TEST_CASE("policy: principals by user, group, role and service account") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "u"
effect = "permit"
principals = ["user:alice"]
tools = ["t_user"]
[[rules]]
id = "g"
effect = "permit"
principals = ["group:chem"]
tools = ["t_group"]
[[rules]]
id = "r"
effect = "permit"
principals = ["role:manager"]
tools = ["t_role"]
[[rules]]
id = "s"
effect = "permit"
principals = ["service:robot-1"]
tools = ["t_service"]
[[rules]]
id = "anyone"
effect = "permit"
tools = ["t_any"]
)",
                           "p.toml");
  auto alice = member("alice");
  auto chemist = member("carol", "p", {"member"}, {"chem"});
  auto manager = member("mia", "p", {"manager"});
  auto admin = member("ada", "p", {"admin"});
  auto robot = member("robot-1", "p", {"member"}, {}, "service");
  auto fake_robot = member("robot-1");  // a user who shares the robot's name
  auto fake_alice = member("alice", "p", {"member"}, {}, "service");

  CHECK(decide(p, alice, "t_user", {}).permitted());
  CHECK_FALSE(decide(p, fake_alice, "t_user", {}).permitted());
  CHECK(decide(p, chemist, "t_group", {}).permitted());
  CHECK_FALSE(decide(p, alice, "t_group", {}).permitted());
  CHECK(decide(p, manager, "t_role", {}).permitted());
  CHECK(decide(p, admin, "t_role", {}).permitted());  // admin implies every role
  CHECK_FALSE(decide(p, alice, "t_role", {}).permitted());
  CHECK(decide(p, robot, "t_service", {}).permitted());
  CHECK_FALSE(decide(p, fake_robot, "t_service", {}).permitted());
  CHECK(decide(p, robot, "t_any", {}).permitted());
  CHECK(decide(p, alice, "t_any", {}).permitted());
}

TEST_CASE("policy: tool globs") {
  CHECK(glob_match("get_*", "get_job"));
  CHECK(glob_match("get_*", "get_"));
  CHECK_FALSE(glob_match("get_*", "submit_job"));
  CHECK(glob_match("*", "anything"));
  CHECK(glob_match("job?", "jobs"));
  CHECK_FALSE(glob_match("job?", "job"));
  CHECK(glob_match("*_job*", "submit_job_array"));
  CHECK_FALSE(glob_match("echo", "echo2"));
  Policy p = Policy::parse(kJobs, "jobs.toml");
  CHECK(decide(p, member("a"), "get_anything", {}).permitted());
  CHECK_FALSE(decide(p, member("a"), "xget_anything", {}).permitted());
}

TEST_CASE("policy: walltime and byte literals") {
  CHECK(parse_walltime("24:00:00") == 86400);
  CHECK(parse_walltime("48:00:00") == 172800);
  CHECK(parse_walltime("1-00:00:00") == 86400);
  CHECK(parse_walltime("2-12") == 216000);
  CHECK(parse_walltime("2-12:30") == 217800);
  CHECK(parse_walltime("90") == 5400);     // minutes
  CHECK(parse_walltime("90:30") == 5430);  // minutes:seconds
  CHECK(*parse_walltime("UNLIMITED") == std::numeric_limits<double>::infinity());
  CHECK_FALSE(parse_walltime("24:60:00"));
  CHECK_FALSE(parse_walltime("1-24"));
  CHECK_FALSE(parse_walltime("24h"));
  CHECK_FALSE(parse_walltime(""));
  CHECK_FALSE(parse_walltime("1:2:3:4"));

  CHECK(parse_bytes("512") == 512);
  CHECK(parse_bytes("10GiB") == 10737418240.0);
  CHECK(parse_bytes("10 GB") == 1e10);
  CHECK(parse_bytes("4M") == 4194304);
  CHECK(parse_bytes("1.5KiB") == 1536);
  CHECK_FALSE(parse_bytes("GiB"));
  CHECK_FALSE(parse_bytes("10 parsecs"));

  Policy p = Policy::parse(R"(
[[rules]]
id = "limits"
effect = "permit"
[rules.when]
walltime = { max = "1-00:00:00" }
bytes = { max = "10GiB" }
)",
                           "p.toml");
  auto a = member("a");
  CHECK(decide(p, a, "t", {{"walltime", "23:59:59"}, {"bytes", 10737418240}}).permitted());
  CHECK(decide(p, a, "t", {{"walltime", 1440}, {"bytes", "10GiB"}}).permitted());  // integer walltime: minutes
  auto d = decide(p, a, "t", {{"walltime", "24:00:01"}, {"bytes", 10737418241}});
  CHECK(d.reason == "walltime 24:00:01 exceeds the limit 1-00:00:00; bytes 10737418241 exceeds the limit 10GiB (rule limits)");
  d = decide(p, a, "t", {{"walltime", "UNLIMITED"}, {"bytes", 1}});
  CHECK_FALSE(d.permitted());
  CHECK(d.reason.find("walltime UNLIMITED exceeds the limit 1-00:00:00") == 0);
}

TEST_CASE("policy: unit = walltime reads bare numbers as minutes, mixed units are refused") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "w"
effect = "permit"
[rules.when]
walltime = { max = 60, unit = "walltime" }
)",
                           "p.toml");
  CHECK(decide(p, member("a"), "t", {{"walltime", "01:00:00"}}).permitted());
  CHECK_FALSE(decide(p, member("a"), "t", {{"walltime", "01:00:01"}}).permitted());
  auto e = error_of("[[rules]]\nid = \"a\"\neffect = \"permit\"\n[rules.when]\nw = { min = 1, max = \"2:00:00\" }\n");
  CHECK(e.find("mix units") != std::string::npos);
}

TEST_CASE("policy: min, above, below and not_in, with arrays checked element by element") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "models"
effect = "permit"
[rules.when]
models = { in = ["llama-3-8b", "qwen-7b"] }
shots = { min = 1, below = 100001 }
qubits = { above = 0, max = 32 }
[[rules]]
id = "no-ibm"
effect = "forbid"
[rules.when]
backends = { in = ["ibm_torino"] }
)",
                           "p.toml");
  auto a = member("a");
  json ok{{"models", {"llama-3-8b", "qwen-7b"}}, {"shots", 100000}, {"qubits", 5}};
  CHECK(decide(p, a, "run", ok).permitted());
  auto bad = ok;
  bad["models"] = {"llama-3-8b", "gpt-x"};  // one element outside the set is enough to fail a permit
  auto d = decide(p, a, "run", bad);
  CHECK(d.reason == "models \"gpt-x\" is not one of \"llama-3-8b\", \"qwen-7b\" (rule models)");
  bad = ok;
  bad["shots"] = 100001;
  CHECK(decide(p, a, "run", bad).reason == "shots 100001 is not below 100001 (rule models)");
  bad = ok;
  bad["qubits"] = 0;
  CHECK(decide(p, a, "run", bad).reason == "qubits 0 is not above 0 (rule models)");
  bad = ok;
  bad["shots"] = 0;
  CHECK(decide(p, a, "run", bad).reason == "shots 0 is below the minimum 1 (rule models)");
  // A forbid fires when any element matches: a list cannot smuggle a forbidden value past it.
  auto f = ok;
  f["backends"] = {"aer", "ibm_torino"};
  d = decide(p, a, "run", f);
  CHECK(d.rule_ids == std::vector<std::string>{"no-ibm"});
  f["backends"] = {"aer"};
  CHECK(decide(p, a, "run", f).permitted());
}

TEST_CASE("policy: missing arguments, optional, default and the tool's schema default") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "jobs"
effect = "permit"
[rules.when]
walltime = { max = "24:00:00" }
gpus = { max = 4, optional = true }
nodes = { max = 2, default = 1 }
[[rules]]
id = "no-big-mem"
effect = "forbid"
tools = ["submit"]
[rules.when]
memory = { above = "100GiB" }
)",
                           "p.toml");
  auto a = member("a");
  // Permit: a missing walltime fails the condition; the reason says so.
  auto d = decide(p, a, "other", json::object());
  CHECK_FALSE(d.permitted());
  CHECK(d.reason == "the call does not set walltime, which the rule requires (rule jobs)");
  CHECK(d.hint == "ask for walltime at most 24:00:00");
  // Optional gpus and defaulted nodes may be left out.
  CHECK(decide(p, a, "other", {{"walltime", "1:00:00"}}).permitted());
  CHECK_FALSE(decide(p, a, "other", {{"walltime", "1:00:00"}, {"nodes", 3}}).permitted());
  // Forbid: a call that does not ask for the forbidden thing is not forbidden.
  CHECK(decide(p, a, "submit", {{"walltime", "1:00:00"}}).permitted());
  CHECK(decide(p, a, "submit", {{"walltime", "1:00:00"}, {"memory", "64GiB"}}).permitted());
  d = decide(p, a, "submit", {{"walltime", "1:00:00"}, {"memory", "200GiB"}});
  CHECK(d.rule_ids == std::vector<std::string>{"no-big-mem"});
  CHECK(d.reason == "forbidden by the project's policy: memory 200GiB is above 100GiB (rule no-big-mem)");
  CHECK(d.hint == "ask for memory at most 100GiB");
  // null counts as missing.
  CHECK_FALSE(decide(p, a, "other", {{"walltime", nullptr}}).permitted());

  // What the tool will use when the call says nothing: its schema's default, which beats the
  // condition's own default. So leaving an argument out cannot dodge a forbid.
  json schema = json::parse(R"({"type": "object", "properties": {
      "memory": {"type": "string", "default": "500GiB"},
      "nodes": {"type": "integer", "default": 8},
      "walltime": {"type": "string"}}})");
  std::string project = "p", tool = "submit";
  json args{{"walltime", "1:00:00"}};
  d = p.decide(PolicyQuery{a, project, tool, args, at(6, 12)}, nullptr, &schema);
  CHECK(d.rule_ids == std::vector<std::string>{"no-big-mem"});
  CHECK(d.reason == "forbidden by the project's policy: memory 500GiB is above 100GiB (rule no-big-mem)");
  args["memory"] = "1GiB";
  d = p.decide(PolicyQuery{a, project, tool, args, at(6, 12)}, nullptr, &schema);
  CHECK(d.reason == "nodes 8 exceeds the limit 2 (rule jobs)");  // the schema's 8, not the rule's 1
  // Through arrays: "items".
  Policy q = Policy::parse(R"(
[[rules]]
id = "all"
effect = "permit"
[[rules]]
id = "no-debug"
effect = "forbid"
[rules.when]
"steps.partition" = { in = ["debug"] }
)",
                           "q.toml");
  json array_schema = json::parse(R"({"type": "object", "properties": {"steps": {"type": "array",
      "items": {"type": "object", "properties": {"partition": {"type": "string", "default": "debug"}}}}}})");
  json steps{{"steps", json::array({json{{"partition", "gpu"}}, json::object()})}};
  CHECK(q.decide(PolicyQuery{a, project, tool, steps, at(6, 12)}, nullptr).permitted());
  CHECK_FALSE(q.decide(PolicyQuery{a, project, tool, steps, at(6, 12)}, nullptr, &array_schema).permitted());
}

TEST_CASE("policy: an evaluation error denies, with the error as the reason") {
  Policy p = Policy::parse(kJobs, "jobs.toml");
  auto alice = member("alice", "p", {"member"}, {"physics"});
  auto d = decide(p, alice, "submit_job", {{"resources", {{"gpus", "many"}}}, {"walltime", "1:00:00"}, {"partition", "gpu"}});
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"gpu-jobs"});
  CHECK(d.reason == "resources.gpus is \"many\", not a number (rule gpu-jobs)");
  CHECK(d.hint == "give resources.gpus as a number");
  d = decide(p, alice, "submit_job", {{"resources", 3}, {"walltime", "1:00:00"}, {"partition", "gpu"}});
  CHECK(d.reason == "resources is 3, not an object with \"gpus\" (rule gpu-jobs)");
  d = decide(p, alice, "submit_job", {{"resources", {{"gpus", 1}}}, {"walltime", "soon"}, {"partition", "gpu"}});
  CHECK(d.reason == "walltime \"soon\" is not a walltime (rule gpu-jobs)");
  // An error in a forbid denies too, even when a permit would grant.
  auto robot = member("robot", "p", {"member"}, {"physics"}, "service");
  Policy q = Policy::parse(R"(
[[rules]]
id = "all"
effect = "permit"
[[rules]]
id = "cap"
effect = "forbid"
[rules.when]
n = { above = 10 }
)",
                           "q.toml");
  d = decide(q, robot, "t", {{"n", "eleven"}});
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"cap"});
}

TEST_CASE("policy: path prefixes are normalised and traversal is refused") {
  CHECK(normalise_path("area://scratch/a/./b//c") == "area://scratch/a/b/c");
  CHECK(normalise_path("/home//alice/") == "/home/alice");
  CHECK(normalise_path("area://scratch/") == "area://scratch");
  CHECK_FALSE(normalise_path("area://scratch/../home"));
  CHECK_FALSE(normalise_path("area://scratch/.."));
  CHECK_FALSE(normalise_path("area://scratch/%2e%2e/home"));
  CHECK_FALSE(normalise_path("area://scratch/%2E%2E/home"));
  CHECK_FALSE(normalise_path("area://scratch/..%2fhome"));
  CHECK_FALSE(normalise_path("area://scratch/%252e%252e/home"));  // double encoding
  CHECK_FALSE(normalise_path("area://scratch\\..\\home"));
  CHECK_FALSE(normalise_path(std::string("area://scratch/a\0b", 18)));
  CHECK(normalise_path("area://scratch/...") == "area://scratch/...");  // a legal name
  CHECK(normalise_path("area://scratch/100%") == "area://scratch/100%");

  Policy p = Policy::parse(R"(
[[rules]]
id = "scratch-only"
effect = "permit"
[rules.when]
workdir = { prefix = ["area://scratch/"] }
[[rules]]
id = "not-secrets"
effect = "forbid"
[rules.when]
workdir = { prefix = ["area://scratch/secrets"] }
)",
                           "p.toml");
  auto a = member("a");
  auto wd = [&](const std::string& w) { return decide(p, a, "t", {{"workdir", w}}); };
  CHECK(wd("area://scratch/run1").permitted());
  CHECK(wd("area://scratch//run1/./out").permitted());
  CHECK(wd("area://scratch").permitted());
  CHECK_FALSE(wd("area://scratch2/run1").permitted());  // a prefix ends at a segment boundary
  CHECK_FALSE(wd("area://home/a").permitted());
  auto d = wd("area://scratch/../home");
  CHECK_FALSE(d.permitted());
  // Forbids are evaluated first, so the forbid on the same argument reports the error.
  CHECK(d.reason == "workdir \"area://scratch/../home\" contains a \"..\" segment, which policies refuse (rule not-secrets)");
  CHECK_FALSE(wd("area://scratch/%2e%2e/home").permitted());
  CHECK_FALSE(wd("area://scratch\\..\\home").permitted());
  d = wd("area://scratch//secrets/key");
  CHECK(d.rule_ids == std::vector<std::string>{"not-secrets"});
  CHECK(wd("area://scratch/secrets2/x").permitted());
  CHECK_FALSE(decide(p, a, "t", {{"workdir", 7}}).permitted());
}

TEST_CASE("policy: time windows (injected now, configured UTC offset)") {
  Policy p = Policy::parse(R"(
utc_offset = "+01:00"
[[rules]]
id = "office-hours"
effect = "permit"
tools = ["submit"]
[rules.context]
hours = "08:00-20:00"
days = ["mon-fri"]
[[rules]]
id = "no-nights"
effect = "forbid"
tools = ["inference"]
[rules.context]
hours = "22:00-06:00"
[[rules]]
id = "inference"
effect = "permit"
tools = ["inference"]
)",
                           "p.toml");
  auto a = member("a");
  // 2025-01-06 is a Monday; 07:30 UTC is 08:30 at +01:00.
  CHECK(decide(p, a, "submit", {}, at(6, 7, 30)).permitted());
  auto d = decide(p, a, "submit", {}, at(6, 6, 30));
  CHECK_FALSE(d.permitted());
  CHECK(d.reason == "calls are permitted only 08:00-20:00 on mon-fri (UTC+01:00), and it is mon 07:30 (rule office-hours)");
  CHECK(d.hint == "call again 08:00-20:00 on mon-fri (UTC+01:00)");
  CHECK_FALSE(decide(p, a, "submit", {}, at(6, 19, 0)).permitted());  // 20:00 local: the end is exclusive
  CHECK_FALSE(decide(p, a, "submit", {}, at(11, 12)).permitted());     // Saturday
  // A window across midnight.
  CHECK(decide(p, a, "inference", {}, at(6, 12)).permitted());
  d = decide(p, a, "inference", {}, at(6, 22));  // 23:00 local
  CHECK(d.rule_ids == std::vector<std::string>{"no-nights"});
  CHECK(d.hint == "call again outside 22:00-06:00 (UTC+01:00)");
  CHECK_FALSE(decide(p, a, "inference", {}, at(7, 4)).permitted());  // 05:00 local
  CHECK(decide(p, a, "inference", {}, at(7, 5)).permitted());        // 06:00 local
}

TEST_CASE("policy: could_permit, for tools/list") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "m"
effect = "permit"
principals = ["role:member"]
tools = ["get_*", "submit_job"]
[[rules]]
id = "no-robots"
effect = "forbid"
principals = ["service:*"]
tools = ["submit_job"]
[[rules]]
id = "cap"
effect = "forbid"
tools = ["get_secret"]
[rules.when]
n = { above = 1 }
)",
                           "p.toml");
  auto a = member("a");
  auto robot = member("r", "p", {"member"}, {}, "service");
  auto auditor = member("x", "p", {"auditor"});
  CHECK(p.could_permit(a, "p", "get_job"));
  CHECK(p.could_permit(a, "p", "submit_job"));
  CHECK_FALSE(p.could_permit(a, "p", "delete"));
  CHECK_FALSE(p.could_permit(robot, "p", "submit_job"));  // an unconditional forbid
  CHECK(p.could_permit(robot, "p", "get_secret"));         // a conditional one does not hide it
  CHECK_FALSE(p.could_permit(auditor, "p", "get_job"));
}

TEST_CASE("policy: the hash is the SHA-256 of the file's bytes") {
  std::string text = "[[rules]]\nid = \"a\"\neffect = \"permit\"\n";
  CHECK(Policy::parse(text, "x").hash() == crypto::sha256_hex(text));
  CHECK(Policy::parse(text + "# comment\n", "x").hash() != crypto::sha256_hex(text));
}

TEST_CASE("policy: a hostile argument cannot bloat the reason") {
  Policy p = Policy::parse(kJobs, "jobs.toml");
  auto alice = member("alice", "p", {"member"}, {"physics"});
  std::string huge(100000, 'x');
  auto d = decide(p, alice, "submit_job", {{"resources", {{"gpus", 1}}}, {"walltime", "1:00:00"}, {"partition", huge}});
  CHECK_FALSE(d.permitted());
  CHECK(d.reason.size() < 300);
}

TEST_CASE("rate limits: burst, refill, retry_after, consume=false") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "all"
effect = "permit"
[[rate_limits]]
id = "submit-burst"
tools = ["submit_job"]
per = "principal"
rate = "10/min"
burst = 5
)",
                           "p.toml");
  RateLimiter limiter;
  auto a = member("alice");
  auto t0 = at(6, 12);
  for (int i = 0; i < 5; ++i) CHECK(decide(p, a, "submit_job", {}, t0, &limiter).permitted());
  auto d = decide(p, a, "submit_job", {}, t0, &limiter);
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"submit-burst"});
  REQUIRE(d.retry_after);
  CHECK(d.retry_after->count() == 6000);  // one token per 6 s
  CHECK(d.reason == "rate limit submit-burst: 10 calls per minute per principal; retry in 6.0 s");
  CHECK(d.hint.find("bursts of 5") != std::string::npos);
  // Other tools and other principals have their own budget.
  CHECK(decide(p, a, "get_job", {}, t0, &limiter).permitted());
  CHECK(decide(p, member("bob"), "submit_job", {}, t0, &limiter).permitted());
  // 1.8 s later: 4.2 s to wait.
  d = decide(p, a, "submit_job", {}, t0 + std::chrono::milliseconds(1800), &limiter);
  CHECK(d.reason == "rate limit submit-burst: 10 calls per minute per principal; retry in 4.2 s");
  // consume=false looks without taking.
  auto later = t0 + std::chrono::seconds(6);
  CHECK(decide(p, a, "submit_job", {}, later, &limiter, false).permitted());
  CHECK(decide(p, a, "submit_job", {}, later, &limiter, false).permitted());
  CHECK(decide(p, a, "submit_job", {}, later, &limiter).permitted());
  CHECK_FALSE(decide(p, a, "submit_job", {}, later, &limiter).permitted());
  // A full minute refills the burst, no more.
  auto much_later = later + std::chrono::minutes(10);
  for (int i = 0; i < 5; ++i) CHECK(decide(p, a, "submit_job", {}, much_later, &limiter).permitted());
  CHECK_FALSE(decide(p, a, "submit_job", {}, much_later, &limiter).permitted());
  // A clock that goes backwards refills nothing.
  CHECK_FALSE(decide(p, a, "submit_job", {}, t0 - std::chrono::hours(1), &limiter).permitted());
}

TEST_CASE("rate limits: per project and per principal+tool, and a refused call takes no token") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "all"
effect = "permit"
[[rate_limits]]
id = "proj"
per = "project"
rate = "3/hour"
[[rate_limits]]
id = "pt"
per = "principal+tool"
rate = "2/hour"
)",
                           "p.toml");
  RateLimiter limiter;
  auto t = at(6, 12);
  CHECK(decide(p, member("a"), "x", {}, t, &limiter).permitted());
  CHECK(decide(p, member("a"), "x", {}, t, &limiter).permitted());
  auto d = decide(p, member("a"), "x", {}, t, &limiter);  // pt refuses; the project token is given back
  CHECK(d.rule_ids == std::vector<std::string>{"pt"});
  CHECK(decide(p, member("b"), "x", {}, t, &limiter).permitted());  // the third project call
  d = decide(p, member("c"), "y", {}, t, &limiter);
  CHECK(d.rule_ids == std::vector<std::string>{"proj"});
  CHECK(d.reason.find("3 calls per hour per project") != std::string::npos);
}

TEST_CASE("rate limits: a bucket refills after the wall clock steps back") {
  RateLimiter limiter;
  auto t = at(6, 12);
  const double per_second = 1.0 / 6;  // one token every 6 s
  CHECK(limiter.acquire("k", per_second, 1, t).allowed);
  CHECK_FALSE(limiter.acquire("k", per_second, 1, t).allowed);
  auto back = t - std::chrono::hours(1);  // NTP steps the clock an hour back
  CHECK_FALSE(limiter.acquire("k", per_second, 1, back).allowed);
  auto refused = limiter.acquire("k", per_second, 1, back + std::chrono::seconds(3));
  CHECK_FALSE(refused.allowed);
  CHECK(refused.retry_after <= std::chrono::seconds(6));
  // Six seconds on the stepped clock: a token, as its retry-after said (not in an hour).
  CHECK(limiter.acquire("k", per_second, 1, back + std::chrono::seconds(7)).allowed);
}

TEST_CASE("rate limits: concurrent callers never get more than the burst") {
  RateLimiter limiter;
  auto t = at(6, 12);
  std::atomic<int> allowed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      for (int k = 0; k < 5000; ++k)
        if (limiter.acquire("one-bucket", 1.0 / 3600, 100, t).allowed) ++allowed;
    });
  for (auto& th : threads) th.join();
  CHECK(allowed.load() == 100);

  // Cost of one check on a warm bucket (timing, not asserted).
  const std::string key = "p\x1fsubmit-burst|0|10/60|5\x1fuser:alice\x1f";
  const int n = 1000000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) limiter.acquire(key, 1e9, 1e9, t + std::chrono::nanoseconds(i));
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count() / n;
  std::cerr << "rate limiter: " << ns << " ns/check\n";
}

TEST_CASE("rate limits: idle buckets are dropped") {
  RateLimiter limiter;
  auto t = at(6, 12);
  for (int i = 0; i < 100000; ++i) limiter.acquire("k" + std::to_string(i), 10, 5, t);
  CHECK(limiter.size() == 100000);  // all still refilling
  auto later = t + std::chrono::seconds(1);
  for (int i = 0; i < 100000; ++i) limiter.acquire("n" + std::to_string(i), 10, 5, later);
  CHECK(limiter.size() < 120000);  // the first 100000 were full again and swept
}

TEST_CASE("policy: decision cost for a 20-rule policy (timing, not asserted)") {
  std::string text;
  for (int i = 0; i < 18; ++i)
    text += "[[rules]]\nid = \"r" + std::to_string(i) + "\"\neffect = \"permit\"\nprincipals = [\"group:g" + std::to_string(i) +
            "\"]\ntools = [\"tool_" + std::to_string(i) + "*\"]\n[rules.when]\nn = { max = 4 }\nw = { max = \"24:00:00\" }\n";
  text += R"(
[[rules]]
id = "robots"
effect = "forbid"
principals = ["service:*"]
[rules.when]
partition = { in = ["debug"] }
[[rules]]
id = "jobs"
effect = "permit"
principals = ["role:member"]
tools = ["submit_job"]
[rules.when]
"resources.gpus" = { max = 4 }
walltime = { max = "24:00:00" }
partition = { in = ["gpu", "debug"] }
workdir = { prefix = ["area://scratch/"] }
[[rate_limits]]
id = "burst"
rate = "1000000/s"
burst = 1000000
)";
  Policy p = Policy::parse(text, "bench.toml");
  RateLimiter limiter;
  auto a = member("alice");
  json args{{"resources", {{"gpus", 2}}}, {"walltime", "12:00:00"}, {"partition", "gpu"}, {"workdir", "area://scratch/run"}};
  std::string project = "p", tool = "submit_job";
  const int n = 200000;
  auto t0 = std::chrono::steady_clock::now();
  int permitted = 0;
  for (int i = 0; i < n; ++i) permitted += p.decide(PolicyQuery{a, project, tool, args, at(6, 12)}, &limiter).permitted();
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count() / n;
  CHECK(permitted == n);
  std::cerr << "policy decide (20 rules, permit, with a rate limit): " << ns << " ns/decision\n";
}

TEST_CASE("policy: a long multi-byte argument is cut at a character boundary in the reason") {
  Policy p = Policy::parse(kJobs, "jobs.toml");
  auto alice = member("alice", "p", {"member"}, {"physics"});
  std::string name = "x";  // so that byte 77 of the quoted value is the middle of a character
  for (int i = 0; i < 60; ++i) name += "\xc3\xa9";  // é, two bytes each
  auto d = decide(p, alice, "submit_job", {{"resources", {{"gpus", 1}}}, {"walltime", "1:00:00"}, {"partition", name}});
  CHECK_FALSE(d.permitted());
  CHECK(d.reason.find("...") != std::string::npos);
  // Valid UTF-8 throughout: dumping it with the strict handler does not throw.
  CHECK_NOTHROW(json(d.reason).dump());
}

TEST_CASE("rate limits: cost takes a call's tokens from the bucket (tokens per minute)") {
  Policy p = Policy::parse(R"(
[[rules]]
id = "all"
effect = "permit"
[[rate_limits]]
id = "tpm"
tools = ["call_inference"]
per = "project"
rate = "1000/min"
cost = "tokens"
)",
                           "p.toml");
  RateLimiter limiter;
  auto a = member("alice");
  auto t = at(6, 12);
  CHECK(decide(p, a, "call_inference", {{"tokens", 600}}, t, &limiter).permitted());
  auto d = decide(p, a, "call_inference", {{"tokens", 500}}, t, &limiter);
  CHECK_FALSE(d.permitted());
  REQUIRE(d.retry_after);
  CHECK(d.retry_after->count() == 6000);  // 100 more tokens at 1000/min
  CHECK(d.reason == "rate limit tpm: 1000 tokens per minute per project; retry in 6.0 s");
  CHECK(decide(p, member("bob"), "call_inference", {{"tokens", 400}}, t, &limiter).permitted());  // same project bucket
  // A call larger than the bucket can never pass: no retry_after, a hint to shrink it.
  d = decide(p, a, "call_inference", {{"tokens", 5000}}, t + std::chrono::hours(1), &limiter);
  CHECK_FALSE(d.permitted());
  CHECK_FALSE(d.retry_after);
  CHECK(d.reason.find("takes 5000 tokens, more than the limit allows at once (1000)") != std::string::npos);
  // A call without the argument counts one.
  CHECK(decide(p, a, "call_inference", {}, t + std::chrono::hours(1), &limiter).permitted());
  CHECK_THROWS_WITH(Policy::parse("[[rate_limits]]\nid = \"r\"\nrate = \"1/min\"\ncost = \"\"\n", "x.toml"),
                    Catch::Contains("cost must name a numeric argument"));
}

TEST_CASE("rule rate: a permit grants its quota, then the next permit decides, then a retry-after denial") {
  // Managers' big jobs: 2 a day without asking; beyond that, only small ones (the next rule).
  Policy p = Policy::parse(R"(
[[rules]]
id = "big-jobs-daily"
effect = "permit"
tools = ["submit_job"]
[rules.when]
nodes = { max = 64 }
[rules.context]
rate = "2/day"

[[rules]]
id = "small-jobs"
effect = "permit"
tools = ["submit_job"]
[rules.when]
nodes = { max = 4 }

[[rules]]
id = "project-quota"
effect = "permit"
tools = ["run_quantum_circuit"]
[rules.context]
rate = "3/hour"
per = "project"
hours = "08:00-20:00"

[[rate_limits]]
id = "qpu-burst"
tools = ["run_quantum_circuit"]
rate = "1/minute"
burst = 1
)",
                           "p.toml");
  RateLimiter limiter;
  auto a = member("alice"), b = member("bob");
  auto t = at(6, 12);
  json big = {{"nodes", 32}}, small = {{"nodes", 2}};
  CHECK(decide(p, a, "submit_job", big, t, &limiter).rule_ids == std::vector<std::string>{"big-jobs-daily"});
  // A small job within the quota uses it too: the first permit that holds grants.
  CHECK(decide(p, a, "submit_job", small, t, &limiter).rule_ids == std::vector<std::string>{"big-jobs-daily"});
  // Used up: a small job falls through to the next permit, a big one is refused with when to retry.
  CHECK(decide(p, a, "submit_job", small, t, &limiter).rule_ids == std::vector<std::string>{"small-jobs"});
  auto d = decide(p, a, "submit_job", big, t, &limiter);
  CHECK_FALSE(d.permitted());
  CHECK(d.rule_ids == std::vector<std::string>{"big-jobs-daily"});
  REQUIRE(d.retry_after);
  CHECK(d.retry_after->count() == 12 * 3600 * 1000);  // one call per 12 h comes back
  CHECK(d.reason ==
        "rule big-jobs-daily permits at most 2 calls per day per principal, and they are used up; retry in 12.0 h "
        "(rule big-jobs-daily)");
  CHECK(d.hint == "wait 12.0 h before calling submit_job again");
  // consume=false (policy check) looks without taking; bob has his own quota.
  CHECK(decide(p, b, "submit_job", big, t, &limiter, false).permitted());
  CHECK(decide(p, b, "submit_job", big, t, &limiter).permitted());
  // Half a day later one is back.
  CHECK(decide(p, a, "submit_job", big, t + std::chrono::hours(12), &limiter).permitted());

  // Per project, inside a time window; a rate limit that refuses afterwards gives the quota back.
  auto q = [&](const Principal& who, std::chrono::system_clock::time_point when) {
    return decide(p, who, "run_quantum_circuit", json::object(), when, &limiter);
  };
  CHECK(q(a, t).permitted());
  CHECK(q(a, t).rule_ids == std::vector<std::string>{"qpu-burst"});  // refused by the rate limit: quota returned
  CHECK(q(b, t).permitted());
  CHECK(q(member("carol"), t).permitted());  // the third of the project's 3
  d = q(member("dave"), t);
  CHECK(d.rule_ids == std::vector<std::string>{"project-quota"});
  CHECK(d.reason.find("3 calls per hour per project, and they are used up; retry in 20 min") != std::string::npos);
  // Outside the window the rule does not hold at all, quota or not.
  CHECK(q(member("erin"), at(6, 22)).reason.find("calls are permitted only 08:00-20:00") != std::string::npos);

  // Without a limiter (nothing to count with) the quota is not applied.
  CHECK(decide(p, a, "submit_job", big, t).permitted());

  // What get_usage shows.
  json lim = p.limits_for(a, "p", &limiter, t);
  REQUIRE(lim["rules"].size() == 3);
  CHECK(lim["rules"][0]["quota"] == "2 calls per day per principal");
  CHECK(lim["rules"][0]["quota_left"] == 0);
  CHECK(lim["rules"][2]["quota"] == "3 calls per hour per project");
  CHECK(lim["rules"][2]["window"] == "08:00-20:00 (UTC)");
}

TEST_CASE("rule rate: parse errors name the line and column") {
  CHECK(error_of("[[rules]]\nid = \"f\"\neffect = \"forbid\"\n[rules.context]\nrate = \"5/day\"\n")
            .find("pol.toml:5:8: a forbid cannot have a rate") == 0);
  CHECK(error_of("[[rules]]\nid = \"r\"\neffect = \"permit\"\n[rules.context]\nrate = \"5 per day\"\n")
            .find("pol.toml:5:8: rate must be") == 0);
  CHECK(error_of("[[rules]]\nid = \"r\"\neffect = \"permit\"\n[rules.context]\nburst = 3\n")
            .find("pol.toml:5:9: per and burst in [rules.context] need a rate") == 0);
  CHECK(error_of("[[rules]]\nid = \"r\"\neffect = \"permit\"\n[rules.context]\nrate = \"5/day\"\nper = \"galaxy\"\n")
            .find("pol.toml:6:7: per must be") == 0);
  CHECK(error_of("[[rules]]\nid = \"r\"\neffect = \"permit\"\n[rules.context]\nrates = \"5/day\"\n")
            .find("pol.toml:5:1: unknown key \"rates\"") == 0);
}
