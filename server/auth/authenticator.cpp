#include "server/auth/authenticator.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "server/auth/claims.hpp"
#include "server/observability/log.hpp"

namespace scigate::auth {
namespace {

namespace asio = boost::asio;
using nlohmann::json;

constexpr std::string_view kWellKnown = "/.well-known/oauth-protected-resource";
// A URL fetch is bounded by this; a request waiting for a refresh gives up a little later.
constexpr auto kFetchTimeout = std::chrono::seconds(5);
constexpr auto kRefreshWait = std::chrono::seconds(6);

struct WaiterGuard {
  JwksCache& cache;
  uint64_t id;
  ~WaiterGuard() { cache.forget(id); }
};

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

std::string default_endpoint_url(const Config& c) {
  std::string host = c.http.host.find(':') != std::string::npos ? "[" + c.http.host + "]" : c.http.host;
  return std::string(c.http.tls_cert.empty() ? "http" : "https") + "://" + host + ":" + std::to_string(c.http.port) +
         "/mcp";
}

// The path of an absolute URL ("" for none, query dropped).
std::string url_path(const std::string& url) {
  auto scheme = url.find("://");
  auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  if (slash == std::string::npos) return "";
  std::string path = url.substr(slash);
  if (auto q = path.find('?'); q != std::string::npos) path.resize(q);
  return path == "/" ? "" : path;
}

}  // namespace

std::string resource_metadata_url_for(const std::string& resource) {
  auto scheme = resource.find("://");
  auto slash = resource.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  std::string origin = slash == std::string::npos ? resource : resource.substr(0, slash);
  return origin + std::string(kWellKnown) + url_path(resource);
}

Authenticator::Authenticator(const Config& config, ApiKeyStore& keys, JwksCache::Clock clock)
    : config_(config), keys_(keys) {
  if (!config.oidc) return;
  const OidcConfig& o = *config.oidc;
  JwksCache::Fetch fetch;
  if (!o.jwks_file.empty()) {
    fetch = [path = o.jwks_file.string()] { return read_jwks_file(path); };
  } else {
    fetch = [url = o.jwks_url] { return fetch_jwks_url(url, kFetchTimeout); };
  }
  cache_ =
      std::make_unique<JwksCache>(std::move(fetch), o.jwks_refresh_min_interval, o.jwks_cache_ttl, std::move(clock));
  expect_.issuer = o.issuer;
  expect_.clock_skew = o.clock_skew;
  set_endpoint_url(default_endpoint_url(config));
}

Authenticator::~Authenticator() { stop_background_refresh(); }

void Authenticator::set_endpoint_url(const std::string& mcp_url) {
  if (!config_.oidc) return;
  const OidcConfig& o = *config_.oidc;
  resource_ = o.resource.empty() ? mcp_url : o.resource;
  expect_.audiences = o.audience.empty() ? std::vector<std::string>{resource_} : o.audience;
  metadata_url_ = resource_metadata_url_for(resource_);
  metadata_path_ = std::string(kWellKnown) + url_path(resource_);
}

bool Authenticator::start_background_refresh() {
  if (!cache_ || refresher_) return true;
  bool ok = cache_->refresh(true) == JwksCache::Refresh::kRefreshed;
  if (!ok) log::error("jwks_unavailable", {{"detail", cache_->last_error()}});
  refresher_ = std::make_unique<JwksRefresher>(*cache_);
  return ok;
}

void Authenticator::stop_background_refresh() { refresher_.reset(); }

std::string Authenticator::challenge(const std::string& error, const std::string& description) const {
  std::string c = "Bearer realm=\"scigate\"";
  if (!error.empty()) c += ", error=\"" + error + "\"";
  if (!description.empty()) c += ", error_description=\"" + description + "\"";
  if (cache_) {
    if (!config_.oidc->required_scopes.empty()) c += ", scope=\"" + join(config_.oidc->required_scopes, " ") + "\"";
    c += ", resource_metadata=\"" + metadata_url_ + "\"";
  }
  return c;
}

std::string Authenticator::challenge_for_missing_token() const { return challenge("", ""); }

AuthResult Authenticator::missing(std::string reason) const {
  AuthResult r;
  r.message = cache_ ? "authentication required: send Authorization: Bearer <API key or access token>"
                     : "authentication required: send Authorization: Bearer <API key>";
  r.reason = std::move(reason);
  r.challenge = challenge_for_missing_token();
  return r;
}

AuthResult Authenticator::from_api_key(std::string_view token) const {
  AuthResult r;
  r.token_sent = true;
  if (auto p = keys_.authenticate(std::string(token))) {
    r.status = AuthResult::Status::kOk;
    r.principal = std::move(p);
    return r;
  }
  if (cache_ && token.rfind("sgk_", 0) != 0) {
    // Some IdPs hand out opaque access tokens unless the client names an audience (resource).
    r.message = "the bearer token is neither an API key nor a JWT (opaque access tokens are not accepted)";
    r.reason = r.message;
    r.challenge = challenge("invalid_token", "the token is neither an API key nor a JWT");
    return r;
  }
  r.message = "the bearer token is not valid (unknown, malformed or revoked key)";
  r.reason = r.message;
  if (!cache_ && looks_like_jwt(token)) r.reason += "; it looks like a JWT, but [oidc] is not configured";
  r.challenge = challenge("invalid_token", "unknown, malformed or revoked API key");
  return r;
}

JwtResult Authenticator::verify_now(std::string_view token) const {
  return verify_jwt(token, *cache_->keys(), expect_, std::chrono::system_clock::now());
}

AuthResult Authenticator::from_jwt(JwtResult v, const std::string& refresh_note) const {
  AuthResult r;
  r.token_sent = true;
  if (!v.ok()) {
    r.message = std::string("the bearer token is not valid: ") + jwt_error_description(v.error);
    r.reason = std::string("jwt ") + jwt_error_name(v.error) + ": " + v.detail + refresh_note;
    if (v.error == JwtError::kUnknownKid && cache_->keys()->keys.empty())
      r.reason += "; no JWKS keys loaded (" + cache_->last_error() + ")";
    r.challenge = challenge("invalid_token", jwt_error_description(v.error));
    return r;
  }
  Principal p = principal_from_claims(v.claims, config_);
  std::vector<std::string> lacking;
  for (const auto& want : config_.oidc->required_scopes)
    if (std::find(p.scopes.begin(), p.scopes.end(), want) == p.scopes.end()) lacking.push_back(want);
  if (!lacking.empty()) {
    r.status = AuthResult::Status::kInsufficientScope;
    r.message = "the access token lacks the scope(s) this server requires: " + join(lacking, " ");
    r.reason = "jwt insufficient_scope: missing " + join(lacking, " ") + " (sub " + p.subject.substr(0, 128) + ")";
    // RFC 6750 3.1: the challenge names every scope the request needs, not only the missing ones.
    r.challenge = "Bearer error=\"insufficient_scope\", scope=\"" + join(config_.oidc->required_scopes, " ") +
                  "\", resource_metadata=\"" + metadata_url_ +
                  "\", error_description=\"the access token lacks a required scope\"";
    r.principal = std::move(p);
    return r;
  }
  r.status = AuthResult::Status::kOk;
  r.principal = std::move(p);
  return r;
}

AuthResult Authenticator::authenticate_token(std::string_view token) {
  if (!is_jwt(token)) return from_api_key(token);
  JwtResult v = verify_now(token);
  std::string note;
  if (v.error == JwtError::kUnknownKid) {
    switch (cache_->refresh()) {
      case JwksCache::Refresh::kRefreshed:
        v = verify_now(token);
        break;
      case JwksCache::Refresh::kRateLimited:
        note = " (JWKS refresh rate-limited)";
        break;
      case JwksCache::Refresh::kFailed:
        note = " (JWKS refresh failed)";
        break;
      case JwksCache::Refresh::kInFlight:
        note = " (JWKS refresh in progress)";
        break;
    }
  }
  return from_jwt(std::move(v), note);
}

namespace {
// "Bearer <token>" -> token; nullopt for no header, another scheme or an empty token.
std::optional<std::string_view> bearer(std::string_view authorization) {
  if (authorization.size() < 7) return std::nullopt;
  std::string scheme(authorization.substr(0, 7));
  for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme != "bearer ") return std::nullopt;
  auto token = authorization.substr(7);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
  if (token.empty()) return std::nullopt;
  return token;
}
}  // namespace

AuthResult Authenticator::authenticate_header(std::string_view authorization) {
  auto token = bearer(authorization);
  if (!token)
    return missing(authorization.empty() ? "no Authorization header" : "the Authorization header has no Bearer token");
  return authenticate_token(*token);
}

asio::awaitable<AuthResult> Authenticator::authenticate_async(std::string authorization) {
  auto token = bearer(authorization);
  if (!token || !is_jwt(*token) || !refresher_) co_return authenticate_header(authorization);
  const uint64_t generation = cache_->generation();
  JwtResult v = verify_now(*token);
  std::string note;
  if (v.error == JwtError::kUnknownKid) {
    // A key the cache does not hold: perhaps the IdP rotated. Ask the refresher (which applies
    // the rate limit) and wait for its result without holding this thread.
    if (cache_->generation() != generation) {
      v = verify_now(*token);  // a refresh landed meanwhile
    } else if (refresher_->request()) {
      auto ex = co_await asio::this_coro::executor;
      auto timer = std::make_shared<asio::steady_timer>(ex, kRefreshWait);
      auto fired = std::make_shared<std::atomic<bool>>(false);
      std::weak_ptr<asio::steady_timer> weak = timer;
      // The cache holds the callback, not the timer; and forgets it however this frame ends
      // (also destroyed unresumed at shutdown), so it is never called for a dead request.
      WaiterGuard guard{*cache_, cache_->on_refresh_after(generation, [weak, fired, ex] {
                          fired->store(true);
                          asio::post(ex, [weak] {
                            if (auto t = weak.lock()) t->cancel();
                          });
                        })};
      if (!fired->load()) co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
      v = verify_now(*token);
      if (v.error == JwtError::kUnknownKid) note = " (after a JWKS refresh)";
    } else {
      note = " (JWKS refresh rate-limited)";
    }
  }
  co_return from_jwt(std::move(v), note);
}

std::optional<json> Authenticator::protected_resource_metadata() const {
  if (!cache_) return std::nullopt;
  const OidcConfig& o = *config_.oidc;
  json j = json::object();
  j["resource"] = resource_;
  j["authorization_servers"] = o.authorization_servers;
  if (!o.required_scopes.empty()) j["scopes_supported"] = o.required_scopes;
  j["bearer_methods_supported"] = std::vector<std::string>{"header"};
  j["resource_name"] = config_.server_name;
  return j;
}

bool Authenticator::is_metadata_path(std::string_view path) const {
  if (!cache_) return false;
  return path == kWellKnown || path == std::string(kWellKnown) + "/mcp" || path == metadata_path_;
}

}  // namespace scigate::auth
