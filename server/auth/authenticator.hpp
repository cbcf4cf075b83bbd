#pragma once
// Who is calling, from a bearer token: the one thing transports ask. A token shaped like an API
// key (sgk_...) goes to the ApiKeyStore; one shaped like a JWT goes to the OIDC verifier when
// [oidc] is configured. The answer is a Principal or a refusal with everything a transport needs
// to say so: a message for the caller, a reason for the audit record (never the token), and the
// RFC 6750 / RFC 9728 WWW-Authenticate challenge. It also owns the OAuth Protected Resource
// Metadata document (RFC 9728) that the challenge points to.
//
// Threads: authenticate*() may be called from any thread at once. JWKS fetches: the synchronous
// calls fetch on the calling thread (stdio start-up, tests); HTTP uses authenticate_async(),
// which leaves fetches to the background thread started by start_background_refresh() and waits
// for one (without blocking its thread) only when a token names a key id not yet known.
#include <boost/asio/awaitable.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "server/auth/api_keys.hpp"
#include "server/auth/jwks.hpp"
#include "server/auth/jwt.hpp"
#include "server/auth/principal.hpp"
#include "server/config/config.hpp"

namespace scigate::auth {

struct AuthResult {
  enum class Status {
    kOk,
    kUnauthenticated,    // no token, or an invalid one: HTTP 401
    kInsufficientScope,  // a valid JWT without the required scopes: HTTP 403
  };
  Status status = Status::kUnauthenticated;
  std::optional<Principal> principal;  // kOk; also kInsufficientScope (who was refused)
  bool token_sent = false;             // an Authorization: Bearer token was there
  std::string message;                 // for the caller
  std::string reason;                  // for the audit record and logs: specific, never the token
  std::string challenge;               // WWW-Authenticate value for a refusal
  bool ok() const { return status == Status::kOk; }
};

class Authenticator {
 public:
  Authenticator(const Config& config, ApiKeyStore& keys, JwksCache::Clock clock = &std::chrono::steady_clock::now);
  ~Authenticator();
  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;

  bool oidc_enabled() const { return cache_ != nullptr; }

  // The MCP endpoint URL as actually bound ("http://127.0.0.1:8750/mcp"): the resource when
  // [oidc] resource is not set, and so the default audience. Call before serving.
  void set_endpoint_url(const std::string& mcp_url);
  // HTTP: fetches the JWKS once now (blocking, bounded by the fetch timeout), then keeps it fresh
  // from a thread of its own. Returns whether the first fetch succeeded. No-op without [oidc].
  bool start_background_refresh();
  void stop_background_refresh();

  // `authorization`: the Authorization header value ("" when absent). Blocking JWKS fetches may
  // happen on the calling thread.
  AuthResult authenticate_header(std::string_view authorization);
  // A bare token (SCIGATE_API_KEY for stdio). Blocking likewise.
  AuthResult authenticate_token(std::string_view token);
  // For I/O threads: never fetches on the calling thread.
  boost::asio::awaitable<AuthResult> authenticate_async(std::string authorization);

  // The challenge for a request without a token (401).
  std::string challenge_for_missing_token() const;

  // RFC 9728 document; nullopt without [oidc].
  std::optional<nlohmann::json> protected_resource_metadata() const;
  // Whether `path` is one where that document is served: /.well-known/oauth-protected-resource,
  // with or without the resource's path (or /mcp) appended.
  bool is_metadata_path(std::string_view path) const;
  const std::string& resource() const { return resource_; }
  const std::string& resource_metadata_url() const { return metadata_url_; }

 private:
  AuthResult missing(std::string reason) const;
  AuthResult from_api_key(std::string_view token) const;
  AuthResult from_jwt(JwtResult r, const std::string& refresh_note) const;
  JwtResult verify_now(std::string_view token) const;
  bool is_jwt(std::string_view token) const { return cache_ && looks_like_jwt(token); }
  std::string challenge(const std::string& error, const std::string& description) const;

  const Config& config_;
  ApiKeyStore& keys_;
  std::unique_ptr<JwksCache> cache_;  // only with [oidc]
  std::unique_ptr<JwksRefresher> refresher_;
  JwtExpectations expect_;
  std::string resource_, metadata_url_, metadata_path_;
};

// "https://gw.example/mcp" -> "https://gw.example/.well-known/oauth-protected-resource/mcp"
// (RFC 9728 section 3.1: the well-known segment goes between host and path).
std::string resource_metadata_url_for(const std::string& resource);

}  // namespace scigate::auth
