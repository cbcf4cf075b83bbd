#pragma once
// Verifying a bearer JWT (a JWS in compact form, RFC 7515/7519) against a key set: RS256 and
// ES256 only, with OpenSSL 3's EVP_DigestVerify. Pure and thread-safe: no I/O, no clock of its
// own (the caller passes "now"), so every rule is testable.
//
// Refused: tokens over kMaxTokenBytes, anything but three strict base64url segments with JSON
// objects in the first two, alg "none", every alg but RS256/ES256 (HS256 above all: an HMAC
// "verified" with a public key is the classic confusion), a `crit` header, an alg that does not
// match the key's type (RS256 needs an RSA key, ES256 an EC P-256 key), a bad signature, and then
// the claims: iss, aud, exp, nbf, iat (with clock skew) and a non-empty sub.
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "server/auth/jwks.hpp"

namespace scigate::auth {

inline constexpr std::size_t kMaxTokenBytes = 16 * 1024;

// What a token must say to be accepted.
struct JwtExpectations {
  std::string issuer;
  std::vector<std::string> audiences;  // aud must contain at least one
  std::chrono::seconds clock_skew{60};
};

enum class JwtError {
  kNone,
  kTooLarge,
  kMalformed,  // not three segments, bad base64url, not JSON objects
  kAlgNone,
  kAlgNotAccepted,  // HS256, PS256, RS512, ...
  kCritical,        // a crit header: extensions this server does not implement
  kUnknownKid,      // no key with that kid (or, without a kid, no key at all for the alg)
  kAlgKeyMismatch,  // the kid names a key of another type than the alg needs
  kBadSignature,
  kWrongIssuer,
  kWrongAudience,
  kExpired,
  kNotYetValid,     // nbf in the future
  kIssuedInFuture,  // iat in the future
  kBadClaim,        // exp or sub absent, or exp/nbf/iat not numbers
};

// A short snake_case name for logs and audit records ("expired", "alg_none", ...).
const char* jwt_error_name(JwtError e);
// A fixed, caller-safe sentence for error_description (no token content in it).
const char* jwt_error_description(JwtError e);

struct JwtResult {
  JwtError error = JwtError::kNone;
  std::string detail;     // for logs and audit records: what exactly was wrong; never the token
  nlohmann::json claims;  // the payload, only when error == kNone
  std::string kid;        // the header's kid (printable, truncated), when there was one
  bool ok() const { return error == JwtError::kNone; }
};

// True for something shaped like a compact JWS: two dots, base64url characters otherwise, the
// first two segments non-empty (an empty signature is allowed here so that alg "none" tokens
// reach the verifier and are refused by name).
bool looks_like_jwt(std::string_view token);

// The payload of a token shaped like a JWT, NOT verified: for a token scigate holds for another
// service (slurmrestd's), to read its "exp". Nullopt when it is not a JWT with a JSON object
// for a payload.
std::optional<nlohmann::json> unverified_claims(std::string_view token);

JwtResult verify_jwt(std::string_view token, const KeySet& keys, const JwtExpectations& expect,
                     std::chrono::system_clock::time_point now);

}  // namespace scigate::auth
