#pragma once
// From the claims of a verified JWT to a Principal. The one place that decides what an OIDC
// identity may do (today: projects by name from [[projects]] members, as for API keys), so that
// richer rules (group-based membership, roles) change this function only.
#include <nlohmann/json.hpp>

#include "server/auth/principal.hpp"
#include "server/config/config.hpp"

namespace scigate::auth {

// name: the [oidc] username_claim (default preferred_username) when it is a non-empty string,
// else sub. subject: sub (always). groups: the groups_claim as an array of strings (or one
// string). scopes: `scope` (space-separated) and `scp` (array, or space-separated as Entra ID
// sends it). kind "user", auth_method "jwt". A claim name that is not a top-level claim and
// contains dots is followed as a path ("realm_access.roles").
// Precondition: `claims` passed verify_jwt (sub is a non-empty string); `config.oidc` is set.
Principal principal_from_claims(const nlohmann::json& claims, const Config& config);

}  // namespace scigate::auth
