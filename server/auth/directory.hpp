#pragma once
// Project membership: which projects a principal may act for, and in which roles. Every
// authenticator (API keys, JWTs, stdio) ends with assign_projects(), so membership is decided in
// one place, from the config, whatever the way the caller proved who it is.
#include "server/auth/principal.hpp"
#include "server/config/config.hpp"

namespace scigate::auth {

// Fills principal.projects (the default first, then config order), principal.roles and adds the
// groups the config gives the user to those it already has (from a token's claims, say).
// Entries "group:NAME" match the principal's groups; service_accounts match only principals of
// kind "service", and a service principal gets roles only through service_accounts (a robot's
// key cannot borrow a user's memberships by sharing the name).
void assign_projects(Principal& principal, const Config& config);

}  // namespace scigate::auth
