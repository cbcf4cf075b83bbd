// Argument-partial decisions (Policy::could_permit_with, ProjectPolicies::could_permit): "could
// some call of this tool with these arguments fixed be permitted?", which the model registry
// asks with {"model": id} to show a project only the models it may call.
#include <catch2/catch.hpp>

#include "policies/project_policies.hpp"
#include "policies/rules.hpp"

using namespace scigate;
using namespace scigate::policy;
using nlohmann::json;

namespace {

Principal member(const std::string& name, const std::string& project = "p", const std::string& kind = "user") {
  Principal p;
  p.name = name;
  p.kind = kind;
  p.projects = {project};
  p.roles[project] = {"member"};
  return p;
}

json model(const std::string& id) {
  json j = json::object();
  j["model"] = id;
  return j;
}

const char* kPolicy = R"(
[[rules]]
id = "approved-models"
effect = "permit"
principals = ["role:member"]
tools = ["call_inference", "embed"]
[rules.when]
model = { in = ["llama-3.1-8b-instruct", "bge-m3", "qwen2.5-vl-7b"] }
max_tokens = { max = 4096 }                # not fixed by the question: must not deny

[[rules]]
id = "big-model-office-hours"
effect = "permit"
principals = ["role:member"]
tools = ["call_inference"]
[rules.when]
model = { in = ["llama-3.1-70b-instruct"] }
[rules.context]
hours = "08:00-18:00"                      # a time window is left open too

[[rules]]
id = "robots-no-vision"
effect = "forbid"
principals = ["service:*"]
tools = ["call_inference"]
[rules.when]
model = { in = ["qwen2.5-vl-7b"] }

[[rules]]
id = "no-long-prompts-for-robots"
effect = "forbid"
principals = ["service:*"]
tools = ["call_inference"]
[rules.when]
model = { in = ["llama-3.1-8b-instruct"] }
max_tokens = { above = 1000 }              # depends on an open argument: does not exclude
)";

}  // namespace

TEST_CASE("policy partial: conditions on open arguments and time windows never deny") {
  Policy pol = Policy::parse(kPolicy, "pol.toml");
  Principal alice = member("alice");
  CHECK(pol.could_permit_with(alice, "p", "call_inference", model("llama-3.1-8b-instruct")));
  CHECK(pol.could_permit_with(alice, "p", "embed", model("bge-m3")));
  CHECK(pol.could_permit_with(alice, "p", "call_inference", model("llama-3.1-70b-instruct")));
  CHECK_FALSE(pol.could_permit_with(alice, "p", "call_inference", model("mistral-7b")));
  CHECK_FALSE(pol.could_permit_with(alice, "p", "embed", model("llama-3.1-70b-instruct")));
  // A value of the wrong type for a fixed argument is not permitted (decide() would deny).
  json weird = json::object();
  weird["model"] = 7;
  CHECK_FALSE(pol.could_permit_with(alice, "p", "call_inference", weird));
}

TEST_CASE("policy partial: a forbid excludes only when it fires on the fixed arguments alone") {
  Policy pol = Policy::parse(kPolicy, "pol.toml");
  Principal robot = member("robot", "p", "service");
  CHECK_FALSE(pol.could_permit_with(robot, "p", "call_inference", model("qwen2.5-vl-7b")));
  CHECK(pol.could_permit_with(robot, "p", "call_inference", model("llama-3.1-8b-instruct")));
  CHECK(pol.could_permit_with(member("alice"), "p", "call_inference", model("qwen2.5-vl-7b")));
}

TEST_CASE("policy partial: no rule for the tool is the default deny, an unconditional rule permits all") {
  Policy none = Policy::parse("[[rules]]\nid = \"w\"\neffect = \"permit\"\ntools = [\"whoami\"]\n", "pol.toml");
  CHECK_FALSE(none.could_permit_with(member("alice"), "p", "call_inference", model("llama-3.1-8b-instruct")));
  Policy all = Policy::parse("[[rules]]\nid = \"w\"\neffect = \"permit\"\ntools = [\"*\"]\n", "pol.toml");
  CHECK(all.could_permit_with(member("alice"), "p", "call_inference", model("anything")));
  Policy forbid_all = Policy::parse(
      "[[rules]]\nid = \"w\"\neffect = \"permit\"\ntools = [\"*\"]\n"
      "[[rules]]\nid = \"f\"\neffect = \"forbid\"\ntools = [\"call_inference\"]\n",
      "pol.toml");
  CHECK_FALSE(forbid_all.could_permit_with(member("alice"), "p", "call_inference", model("anything")));
}

TEST_CASE("policy partial: the engine checks membership and keeps the membership policy for projects without a file") {
  ProjectPolicies engine({});
  Principal alice = member("alice");
  CHECK(engine.could_permit(alice, "p", "call_inference", model("x")));
  CHECK_FALSE(engine.could_permit(alice, "other", "call_inference", model("x")));
  CHECK_FALSE(engine.could_permit(alice, "", "call_inference", model("x")));
}
