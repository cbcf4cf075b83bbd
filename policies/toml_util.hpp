#pragma once
// Strict TOML reading for the policy and policy-test files: every error names
// FILE:LINE:COLUMN, and keys this version does not know are refused (as in the config).
#include <toml++/toml.h>

#include <nlohmann/json.hpp>

#include <initializer_list>
#include <sstream>
#include <string>
#include <string_view>

#include "policies/rules.hpp"

namespace scigate::policy {

inline std::string where(const toml::source_region& r, const std::string& source) {
  if (r.begin.line == 0) return source;
  return source + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

[[noreturn]] inline void fail_at(const toml::source_region& r, const std::string& source, const std::string& what) {
  throw PolicyError(where(r, source) + ": " + what);
}

inline toml::table parse_toml(std::string_view text, const std::string& source) {
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw PolicyError(where(e.source(), source) + ": " + std::string(e.description()));
  }
}

inline void reject_unknown(const toml::table& t, std::initializer_list<std::string_view> allowed,
                           const std::string& table_name, const std::string& source) {
  for (auto&& [key, node] : t) {
    bool known = false;
    for (auto a : allowed) known = known || key.str() == a;
    if (known) continue;
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    fail_at(key.source().begin.line ? key.source() : node.source(), source,
            "unknown key \"" + std::string(key.str()) + "\" in " + table_name + " (known: " + list + ")");
  }
}

inline std::string required_string(const toml::table& t, std::string_view key, const toml::source_region& owner,
                                   const std::string& what, const std::string& source) {
  const toml::node* n = t.get(key);
  if (!n) fail_at(owner, source, what + " needs \"" + std::string(key) + "\"");
  auto v = n->value<std::string>();
  if (!v) fail_at(n->source(), source, "\"" + std::string(key) + "\" must be a string");
  return *v;
}

inline std::string optional_string(const toml::table& t, std::string_view key, const std::string& source) {
  const toml::node* n = t.get(key);
  if (!n) return {};
  auto v = n->value<std::string>();
  if (!v) fail_at(n->source(), source, "\"" + std::string(key) + "\" must be a string");
  return *v;
}

inline nlohmann::json toml_to_json(const toml::node& n) {
  if (auto t = n.as_table()) {
    nlohmann::json o = nlohmann::json::object();
    for (auto&& [k, v] : *t) o[std::string(k.str())] = toml_to_json(v);
    return o;
  }
  if (auto a = n.as_array()) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& e : *a) arr.push_back(toml_to_json(e));
    return arr;
  }
  if (auto s = n.as_string()) return s->get();
  if (auto i = n.as_integer()) return i->get();
  if (auto f = n.as_floating_point()) return f->get();
  if (auto b = n.as_boolean()) return b->get();
  // Dates and times: as their TOML text.
  std::ostringstream os;
  n.visit([&os](auto&& v) { os << v; });
  return os.str();
}

}  // namespace scigate::policy
