#include "server/auth/claims.hpp"

#include "server/auth/directory.hpp"

#include <sstream>

#include "server/common/json_util.hpp"

namespace scigate::auth {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxListEntries = 256;
constexpr std::size_t kMaxEntryBytes = 256;

// A top-level claim, or failing that a dotted path through nested objects.
const json* find_claim(const json& claims, const std::string& name) {
  if (auto it = claims.find(name); it != claims.end()) return &*it;
  if (name.find('.') == std::string::npos) return nullptr;
  const json* node = &claims;
  std::istringstream parts(name);
  std::string part;
  while (std::getline(parts, part, '.')) {
    if (!node->is_object()) return nullptr;
    auto it = node->find(part);
    if (it == node->end()) return nullptr;
    node = &*it;
  }
  return node;
}

void add_entry(std::vector<std::string>& out, const std::string& s) {
  if (s.empty() || s.size() > kMaxEntryBytes || out.size() >= kMaxListEntries) return;
  for (const auto& e : out)
    if (e == s) return;
  out.push_back(s);
}

// An array of strings (other members ignored), or a string split at spaces when `split`.
void add_strings(std::vector<std::string>& out, const json* node, bool split) {
  if (!node) return;
  if (node->is_array()) {
    for (const auto& e : *node)
      if (e.is_string()) add_entry(out, e.get<std::string>());
  } else if (node->is_string()) {
    if (!split) {
      add_entry(out, node->get<std::string>());
      return;
    }
    std::istringstream words(node->get<std::string>());
    std::string w;
    while (words >> w) add_entry(out, w);
  }
}

}  // namespace

Principal principal_from_claims(const json& claims, const Config& config) {
  static const OidcConfig kDefaults;
  const OidcConfig& oidc = config.oidc ? *config.oidc : kDefaults;
  Principal p;
  p.subject = string_member(claims, "sub");
  const json* name = find_claim(claims, oidc.username_claim);
  p.name = name && name->is_string() && !name->get<std::string>().empty() ? name->get<std::string>() : p.subject;
  p.kind = "user";
  p.auth_method = "jwt";
  add_strings(p.groups, find_claim(claims, oidc.groups_claim), false);
  add_strings(p.scopes, find_claim(claims, "scope"), true);
  add_strings(p.scopes, find_claim(claims, "scp"), true);
  // Memberships and roles from the config, by name and by the token's groups.
  assign_projects(p, config);
  return p;
}

}  // namespace scigate::auth
