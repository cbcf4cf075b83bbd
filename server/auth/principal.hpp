#pragma once
#include <string>
#include <vector>

namespace scigate {

// Who is calling. Built by an authenticator at the edge; read-only afterwards.
struct Principal {
  std::string name;                   // user or service-account name
  std::string kind = "user";          // user | service
  std::string auth_method;            // api_key | stdio | jwt
  std::string key_id;                 // for api_key: which key (never the secret)
  std::vector<std::string> projects;  // projects it may act for, default first
  std::vector<std::string> groups;
  std::string subject;                // for jwt: the token's sub (the IdP's stable id), always set
  std::vector<std::string> scopes;    // for jwt: the OAuth scopes the token grants

  const std::string& default_project() const {
    static const std::string kNone;
    return projects.empty() ? kNone : projects.front();
  }
};

}  // namespace scigate
