#include "server/auth/directory.hpp"

#include <algorithm>

namespace scigate::auth {
namespace {

bool matches(const std::vector<std::string>& entries, const Principal& p) {
  for (const auto& e : entries) {
    // A "group:" entry names a group, never a principal: a user whose IdP username is
    // "group:admins" is not thereby in the group.
    if (e.rfind("group:", 0) == 0) {
      if (std::find(p.groups.begin(), p.groups.end(), std::string_view(e).substr(6)) != p.groups.end()) return true;
    } else if (e == p.name) {
      return true;
    }
  }
  return false;
}

}  // namespace

void assign_projects(Principal& p, const Config& config) {
  const UserConfig* user = p.kind == "service" ? nullptr : config.user(p.name);
  if (user)
    for (const auto& g : user->groups)
      if (std::find(p.groups.begin(), p.groups.end(), g) == p.groups.end()) p.groups.push_back(g);

  p.projects.clear();
  p.roles.clear();
  for (const auto& proj : config.projects) {
    std::vector<std::string> roles;
    if (p.kind == "service") {
      if (std::find(proj.service_accounts.begin(), proj.service_accounts.end(), p.name) != proj.service_accounts.end())
        roles.push_back("member");
    } else {
      if (matches(proj.members, p)) roles.push_back("member");
      if (matches(proj.managers, p)) roles.push_back("manager");
      if (matches(proj.auditors, p)) roles.push_back("auditor");
      if (matches(proj.admins, p)) roles.push_back("admin");
    }
    if (roles.empty()) continue;
    p.projects.push_back(proj.id);
    p.roles[proj.id] = std::move(roles);
  }
  // The default project: the user's configured one, else the first where it may call tools.
  std::string preferred = user ? user->default_project : std::string();
  if (preferred.empty() || !p.member_of(preferred)) {
    preferred.clear();
    for (const auto& id : p.projects)
      if (p.has_role(id, "member")) {
        preferred = id;
        break;
      }
  }
  if (!preferred.empty()) {
    auto it = std::find(p.projects.begin(), p.projects.end(), preferred);
    std::rotate(p.projects.begin(), it, it + 1);
  }
}

}  // namespace scigate::auth
