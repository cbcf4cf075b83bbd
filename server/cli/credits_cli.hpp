#pragma once
// `scigate credits grant|balance|statement|rates|verify`: the managers' and auditors' side of the
// credit ledger. These work on the database directly, whether or not a server is running; a
// grant first asks a running server that holds in memory to share the ledger (LedgerVisit), so
// it applies to every call whose hold is decided after the command returns.
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "policies/ledger.hpp"
#include "server/config/config.hpp"

namespace scigate::cli {

struct CreditsArgs {
  std::string command;                         // grant | balance | statement | rates | verify
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // without the leading "--"
  std::vector<std::string> flags;
};

// Runs one credits command; returns the exit code. Throws std::invalid_argument for usage errors.
int credits_command(const Config& config, const CreditsArgs& args, std::ostream& out);

// Grants `amount` to a project's account (or to `user`'s sub-budget there); returns the grant id.
int64_t grant_credits(const Config& config, const std::string& project, const std::string& user, MicroCredits amount,
                      std::optional<int64_t> expires_ms, const std::string& granted_by, const std::string& note);

// "2027-01-01" or "2027-01-01T12:00:00Z" (UTC) as unix milliseconds; nullopt when malformed.
std::optional<int64_t> parse_utc_date(const std::string& text);

}  // namespace scigate::cli
