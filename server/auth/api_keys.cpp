#include "server/auth/api_keys.hpp"

#include "server/auth/directory.hpp"

#include <ctime>

#include "server/common/crypto.hpp"

namespace scigate::auth {
namespace {
constexpr std::string_view kPrefix = "sgk_";
constexpr std::size_t kMaxCacheEntries = 10000;
}  // namespace

ApiKeyStore::ApiKeyStore(state::Database& db, const Config& config, std::chrono::milliseconds cache_ttl)
    : db_(db), config_(config), cache_ttl_(cache_ttl) {}

CreatedKey ApiKeyStore::create(const std::string& principal, const std::string& kind, const std::string& description) {
  if (principal.empty()) throw std::invalid_argument("a key needs a principal name");
  if (kind != "user" && kind != "service") throw std::invalid_argument("key kind must be user or service");
  CreatedKey out;
  out.info.key_id = crypto::random_hex(6);
  out.token = std::string(kPrefix) + out.info.key_id + "_" + crypto::random_token(32);
  out.info.principal = principal;
  out.info.kind = kind;
  out.info.description = description;
  out.info.created_at = static_cast<int64_t>(std::time(nullptr));
  auto l = db_.lock();
  state::Statement st(db_.handle(),
                      "INSERT INTO api_keys(key_id, secret_hash, principal, kind, description, created_at) "
                      "VALUES (?, ?, ?, ?, ?, ?)");
  st.bind(1, out.info.key_id).bind(2, crypto::sha256_hex(out.token)).bind(3, principal).bind(4, kind);
  st.bind(5, description).bind(6, out.info.created_at);
  st.step();
  return out;
}

bool ApiKeyStore::revoke(const std::string& key_id) {
  auto l = db_.lock();
  state::Statement st(db_.handle(), "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL");
  st.bind(1, static_cast<int64_t>(std::time(nullptr))).bind(2, key_id);
  st.step();
  bool changed = sqlite3_changes(db_.handle()) > 0;
  std::lock_guard g(cache_mutex_);
  cache_.clear();
  return changed;
}

std::vector<ApiKeyInfo> ApiKeyStore::list() {
  auto l = db_.lock();
  state::Statement st(db_.handle(),
                      "SELECT key_id, principal, kind, description, created_at, revoked_at FROM api_keys "
                      "ORDER BY created_at, key_id");
  std::vector<ApiKeyInfo> out;
  while (st.step()) {
    ApiKeyInfo k{st.column_text(0), st.column_text(1), st.column_text(2), st.column_text(3), st.column_int(4), {}};
    if (!st.column_is_null(5)) k.revoked_at = st.column_int(5);
    out.push_back(std::move(k));
  }
  return out;
}

std::optional<Principal> ApiKeyStore::authenticate(const std::string& token) {
  if (token.size() < kPrefix.size() + 8 || token.size() > 256 || token.compare(0, kPrefix.size(), kPrefix) != 0)
    return std::nullopt;
  const std::string hash = crypto::sha256_hex(token);
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard g(cache_mutex_);
    if (auto it = cache_.find(hash); it != cache_.end() && it->second.expires > now) return it->second.principal;
  }
  auto underscore = token.find('_', kPrefix.size());
  if (underscore == std::string::npos) return std::nullopt;
  const std::string key_id = token.substr(kPrefix.size(), underscore - kPrefix.size());
  std::optional<Principal> result;
  {
    auto l = db_.lock();
    state::Statement st(db_.handle(),
                        "SELECT secret_hash, principal, kind FROM api_keys WHERE key_id = ? AND revoked_at IS NULL");
    st.bind(1, key_id);
    if (st.step() && crypto::constant_time_equal(st.column_text(0), hash)) {
      Principal p;
      p.name = st.column_text(1);
      p.kind = st.column_text(2);
      p.auth_method = "api_key";
      p.key_id = key_id;
      assign_projects(p, config_);
      result = std::move(p);
    }
  }
  std::lock_guard g(cache_mutex_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();  // bounded: a flood of bad tokens cannot grow it
  cache_[hash] = CacheEntry{result, now + cache_ttl_};
  return result;
}

}  // namespace scigate::auth
