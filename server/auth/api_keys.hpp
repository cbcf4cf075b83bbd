#pragma once
// Bearer API keys. A key looks like `sgk_<key id>_<secret>`; only SHA-256 of the whole token is
// stored, and the token is shown once, at creation. Lookups are cached briefly so the hot path
// does not touch SQLite; a revocation takes effect within `cache_ttl` (default 5 s) in a running
// server.
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "server/auth/principal.hpp"
#include "server/config/config.hpp"
#include "server/state/database.hpp"

namespace scigate::auth {

struct ApiKeyInfo {
  std::string key_id;
  std::string principal;
  std::string kind;
  std::string description;
  int64_t created_at = 0;
  std::optional<int64_t> revoked_at;
};

struct CreatedKey {
  ApiKeyInfo info;
  std::string token;  // the only time the secret exists outside the caller's hands
};

class ApiKeyStore {
 public:
  ApiKeyStore(state::Database& db, const Config& config,
              std::chrono::milliseconds cache_ttl = std::chrono::seconds(5));

  CreatedKey create(const std::string& principal, const std::string& kind, const std::string& description);
  bool revoke(const std::string& key_id);
  std::vector<ApiKeyInfo> list();
  // The principal for a bearer token, or nullopt for an unknown, malformed or revoked key.
  std::optional<Principal> authenticate(const std::string& token);

 private:
  struct CacheEntry {
    std::optional<Principal> principal;
    std::chrono::steady_clock::time_point expires;
  };
  state::Database& db_;
  const Config& config_;
  std::chrono::milliseconds cache_ttl_;
  std::mutex cache_mutex_;
  std::unordered_map<std::string, CacheEntry> cache_;  // by token hash
};

}  // namespace scigate::auth
