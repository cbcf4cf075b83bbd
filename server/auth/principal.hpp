#pragma once
#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace scigate {

// Roles a principal can hold in a project, from least to most privileged. `member` may call
// tools; `manager` may also manage the project's credits; `auditor` may read the project's audit
// trail; `admin` may do all of these. A service account is a member whose kind is "service".
inline const std::vector<std::string>& known_roles() {
  static const std::vector<std::string> kRoles = {"member", "manager", "auditor", "admin"};
  return kRoles;
}

// Who is calling. Built by an authenticator at the edge (then completed with the directory's
// project memberships, auth::assign_projects); read-only afterwards.
struct Principal {
  std::string name;                   // user or service-account name
  std::string kind = "user";          // user | service
  std::string auth_method;            // api_key | stdio | jwt
  std::string key_id;                 // for api_key: which key (never the secret)
  std::string subject;                // for jwt: the token's `sub`
  std::vector<std::string> projects;  // projects it may act for, default first
  std::vector<std::string> groups;
  std::vector<std::string> scopes;    // for jwt: the OAuth scopes the token grants
  std::map<std::string, std::vector<std::string>> roles;  // project -> roles held there

  // Whose a task or a session is: the kind with the name, so that a user and a service account
  // of the same name (an IdP username can be anything) never reach each other's.
  std::string owner_id() const { return kind + ":" + name; }

  const std::string& default_project() const {
    static const std::string kNone;
    return projects.empty() ? kNone : projects.front();
  }
  bool member_of(const std::string& project) const {
    return std::find(projects.begin(), projects.end(), project) != projects.end();
  }
  // Whether the principal holds `role` in `project`. admin implies every role; manager implies
  // member.
  bool has_role(const std::string& project, const std::string& role) const {
    auto it = roles.find(project);
    if (it == roles.end()) return false;
    for (const auto& r : it->second)
      if (r == role || r == "admin" || (r == "manager" && role == "member")) return true;
    return false;
  }
  // Whether it holds `role` in any project.
  bool has_role_anywhere(const std::string& role) const {
    for (const auto& [project, _] : roles)
      if (has_role(project, role)) return true;
    return false;
  }
};

}  // namespace scigate
