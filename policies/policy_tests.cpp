#include "policies/policy_tests.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "policies/project_policies.hpp"
#include "policies/rules.hpp"
#include "policies/toml_util.hpp"

namespace scigate::policy {
namespace {

std::chrono::system_clock::time_point to_time_point(const toml::date_time& dt) {
  using namespace std::chrono;
  sys_days day{year{dt.date.year} / month{dt.date.month} / std::chrono::day{dt.date.day}};
  auto t = day + hours{dt.time.hour} + minutes{dt.time.minute} + seconds{dt.time.second} + nanoseconds{dt.time.nanosecond};
  if (dt.offset) t -= minutes{dt.offset->minutes};
  return time_point_cast<system_clock::duration>(t);
}

std::vector<std::string> string_list(const toml::table& t, std::string_view key, const std::string& source) {
  std::vector<std::string> out;
  const toml::node* n = t.get(key);
  if (!n) return out;
  const toml::array* a = n->as_array();
  if (!a) fail_at(n->source(), source, "\"" + std::string(key) + "\" must be an array of strings");
  for (const auto& e : *a) {
    auto s = e.value<std::string>();
    if (!s) fail_at(e.source(), source, "\"" + std::string(key) + "\" must hold strings");
    out.push_back(*s);
  }
  return out;
}

}  // namespace

std::optional<std::chrono::system_clock::time_point> parse_time(const std::string& text) {
  // TOML's date-time literal is RFC 3339; let the TOML parser read it.
  if (text.find_first_of("\n\"'#=") != std::string::npos) return std::nullopt;
  try {
    toml::table t = toml::parse("t = " + text);
    if (auto dt = t["t"].value<toml::date_time>()) return to_time_point(*dt);
  } catch (const toml::parse_error&) {
  }
  return std::nullopt;
}

TestFileResult run_policy_tests(const std::filesystem::path& file) {
  const std::string source = file.string();
  std::ifstream in(file, std::ios::binary);
  if (!in) throw PolicyError(source + ": cannot read the test file");
  std::stringstream ss;
  ss << in.rdbuf();
  toml::table root = parse_toml(ss.str(), source);
  reject_unknown(root, {"policy", "project", "cases"}, "the top level", source);

  TestFileResult out;
  out.file = source;
  std::string policy_name = required_string(root, "policy", root.source(), "a policy test file", source);
  std::filesystem::path policy_path = policy_name;
  if (policy_path.is_relative()) policy_path = file.parent_path() / policy_path;
  out.policy_file = policy_path.string();
  Policy policy = Policy::load(policy_path);
  std::string project = optional_string(root, "project", source);
  if (project.empty()) project = "test";

  const toml::node* cases = root.get("cases");
  const toml::array* arr = cases ? cases->as_array() : nullptr;
  if (!arr || arr->empty()) fail_at(cases ? cases->source() : root.source(), source, "a policy test file needs [[cases]]");

  RateLimiter limiter;  // one per file: cases run in order, so rate limits can be tested
  for (const auto& node : *arr) {
    const toml::table* c = node.as_table();
    if (!c) fail_at(node.source(), source, "each [[cases]] entry must be a table");
    reject_unknown(*c,
                   {"name", "principal", "kind", "roles", "groups", "tool", "args", "at", "repeat", "expect", "rule",
                    "reason_contains"},
                   "[[cases]]", source);
    TestCaseResult r;
    r.line = static_cast<int>(c->source().begin.line);
    r.name = required_string(*c, "name", c->source(), "a case", source);
    Principal p;
    p.name = required_string(*c, "principal", c->source(), "case \"" + r.name + "\"", source);
    p.kind = optional_string(*c, "kind", source);
    if (p.kind.empty()) p.kind = "user";
    if (p.kind != "user" && p.kind != "service") fail_at(c->get("kind")->source(), source, "kind must be \"user\" or \"service\"");
    p.auth_method = "test";
    p.groups = string_list(*c, "groups", source);
    std::vector<std::string> roles = c->get("roles") ? string_list(*c, "roles", source) : std::vector<std::string>{"member"};
    for (const auto& role : roles)
      if (std::find(known_roles().begin(), known_roles().end(), role) == known_roles().end())
        fail_at(c->get("roles")->source(), source, "unknown role \"" + role + "\"");
    if (!roles.empty()) {
      p.projects = {project};
      p.roles[project] = roles;
    }
    std::string tool = required_string(*c, "tool", c->source(), "case \"" + r.name + "\"", source);
    nlohmann::json args = nlohmann::json::object();
    if (const toml::node* a = c->get("args")) {
      if (a->is_table()) {
        args = toml_to_json(*a);
      } else if (auto s = a->value<std::string>()) {
        args = nlohmann::json::parse(*s, nullptr, false);
        if (args.is_discarded()) fail_at(a->source(), source, "args is not valid JSON");
      } else {
        fail_at(a->source(), source, "args must be a table or a JSON string");
      }
    }
    auto now = std::chrono::system_clock::now();
    if (const toml::node* at = c->get("at")) {
      std::optional<std::chrono::system_clock::time_point> t;
      if (auto dt = at->value<toml::date_time>()) t = to_time_point(*dt);
      else if (auto s = at->value<std::string>()) t = parse_time(*s);
      if (!t) fail_at(at->source(), source, "at must be a date-time like 2025-01-06T10:00:00Z");
      now = *t;
    }
    int64_t repeat = 1;
    if (const toml::node* n = c->get("repeat")) {
      auto v = n->value<int64_t>();
      if (!v || *v < 1 || *v > 100000) fail_at(n->source(), source, "repeat must be a count from 1 to 100000");
      repeat = *v;
    }
    std::string expect = required_string(*c, "expect", c->source(), "case \"" + r.name + "\"", source);
    if (expect != "allow" && expect != "deny") fail_at(c->get("expect")->source(), source, "expect must be \"allow\" or \"deny\"");
    std::string rule = optional_string(*c, "rule", source);
    std::string reason_contains = optional_string(*c, "reason_contains", source);

    for (int64_t i = 0; i < repeat; ++i) r.decision = decide_for_project(&policy, PolicyQuery{p, project, tool, args, now}, &limiter);
    const Decision& d = r.decision;
    std::vector<std::string> problems;
    if ((expect == "allow") != d.permitted()) problems.push_back("expected " + expect + ", got " + (d.permitted() ? "allow" : "deny"));
    if (!rule.empty() && std::find(d.rule_ids.begin(), d.rule_ids.end(), rule) == d.rule_ids.end()) {
      std::string ids;
      for (const auto& id : d.rule_ids) ids += (ids.empty() ? "" : ",") + id;
      problems.push_back("expected rule " + rule + ", decided by " + (ids.empty() ? "no rule" : ids));
    }
    if (!reason_contains.empty() && d.reason.find(reason_contains) == std::string::npos)
      problems.push_back("reason does not contain \"" + reason_contains + "\"");
    r.passed = problems.empty();
    for (const auto& pr : problems) r.failure += (r.failure.empty() ? "" : "; ") + pr;
    out.cases.push_back(std::move(r));
  }
  return out;
}

}  // namespace scigate::policy
