#include "server/auth/jwt.hpp"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include <cctype>
#include <cmath>

#include "server/common/crypto.hpp"

namespace scigate::auth {
namespace {

using nlohmann::json;

constexpr int kMaxJsonDepth = 32;

bool is_b64url_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// nlohmann's parser has no depth limit; a token is small, but a header of 8000 '[' should not
// reach it.
bool depth_ok(std::string_view text) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == ']' || c == '}')
      --depth;
  }
  return true;
}

std::optional<json> decode_object(std::string_view segment) {
  auto bytes = crypto::base64url_decode(segment);
  if (!bytes || !depth_ok(*bytes)) return std::nullopt;
  json j = json::parse(*bytes, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  return j;
}

// Values from an unverified header end up in audit records: printable and short.
std::string printable(const std::string& s, std::size_t max = 64) {
  std::string o;
  for (unsigned char c : s.substr(0, max)) o.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  return o;
}

std::string short_dump(const json& j) {
  std::string s = j.dump(-1, ' ', true, json::error_handler_t::replace);
  return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}

// operator[] on a const json with a missing key is undefined behaviour; this is not.
const json& member(const json& obj, const char* key) {
  static const json kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

// JWS ES256 signatures are r||s, 32 bytes each; OpenSSL verifies DER (RFC 3279 Ecdsa-Sig-Value).
std::optional<std::string> es256_to_der(const std::string& raw) {
  if (raw.size() != 64) return std::nullopt;
  const auto* p = reinterpret_cast<const unsigned char*>(raw.data());
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(p, 32, nullptr);
  BIGNUM* s = BN_bin2bn(p + 32, 32, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return std::nullopt;
  }
  std::optional<std::string> out;
  int len = i2d_ECDSA_SIG(sig, nullptr);
  if (len > 0) {
    std::string der(static_cast<std::size_t>(len), '\0');
    auto* q = reinterpret_cast<unsigned char*>(der.data());
    if (i2d_ECDSA_SIG(sig, &q) == len) out = std::move(der);
  }
  ECDSA_SIG_free(sig);  // frees r and s too
  return out;
}

bool signature_valid(const Jwk& key, std::string_view signing_input, const std::string& signature) {
  std::string sig = signature;
  if (key.alg == "ES256") {
    auto der = es256_to_der(signature);
    if (!der) return false;
    sig = std::move(*der);
  }
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit_ex(ctx.get(), nullptr, "SHA256", nullptr, nullptr, key.key.get(), nullptr) != 1)
    return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                          reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size()) == 1;
}

JwtResult fail(JwtError e, std::string detail, const std::string& kid = {}) {
  JwtResult r;
  r.error = e;
  r.detail = std::move(detail);
  r.kid = kid;
  return r;
}

}  // namespace

const char* jwt_error_name(JwtError e) {
  switch (e) {
    case JwtError::kNone:
      return "ok";
    case JwtError::kTooLarge:
      return "too_large";
    case JwtError::kMalformed:
      return "malformed";
    case JwtError::kAlgNone:
      return "alg_none";
    case JwtError::kAlgNotAccepted:
      return "alg_not_accepted";
    case JwtError::kCritical:
      return "crit_unsupported";
    case JwtError::kUnknownKid:
      return "unknown_kid";
    case JwtError::kAlgKeyMismatch:
      return "alg_key_mismatch";
    case JwtError::kBadSignature:
      return "bad_signature";
    case JwtError::kWrongIssuer:
      return "wrong_issuer";
    case JwtError::kWrongAudience:
      return "wrong_audience";
    case JwtError::kExpired:
      return "expired";
    case JwtError::kNotYetValid:
      return "not_yet_valid";
    case JwtError::kIssuedInFuture:
      return "issued_in_future";
    case JwtError::kBadClaim:
      return "bad_claim";
  }
  return "unknown";
}

const char* jwt_error_description(JwtError e) {
  switch (e) {
    case JwtError::kNone:
      return "";
    case JwtError::kTooLarge:
      return "the token is too large";
    case JwtError::kMalformed:
      return "the token is not a well-formed JWT";
    case JwtError::kAlgNone:
      return "unsigned tokens (alg none) are not accepted";
    case JwtError::kAlgNotAccepted:
      return "the token's signature algorithm is not accepted (RS256 or ES256 only)";
    case JwtError::kCritical:
      return "the token has critical header parameters this server does not support";
    case JwtError::kUnknownKid:
      return "the token was signed with an unknown key";
    case JwtError::kAlgKeyMismatch:
      return "the token's algorithm does not match its signing key";
    case JwtError::kBadSignature:
      return "the token's signature is not valid";
    case JwtError::kWrongIssuer:
      return "the token was issued by another issuer";
    case JwtError::kWrongAudience:
      return "the token is not meant for this resource (audience)";
    case JwtError::kExpired:
      return "the token has expired";
    case JwtError::kNotYetValid:
      return "the token is not valid yet";
    case JwtError::kIssuedInFuture:
      return "the token was issued in the future";
    case JwtError::kBadClaim:
      return "the token lacks a required claim or has one of the wrong type";
  }
  return "the token is not valid";
}

bool looks_like_jwt(std::string_view token) {
  std::size_t dots = 0, first = std::string_view::npos, second = std::string_view::npos;
  for (std::size_t i = 0; i < token.size(); ++i) {
    char c = token[i];
    if (c == '.') {
      ++dots;
      (first == std::string_view::npos ? first : second) = i;
    } else if (!is_b64url_char(c)) {
      return false;
    }
  }
  return dots == 2 && first > 0 && second > first + 1;
}

std::optional<json> unverified_claims(std::string_view token) {
  if (token.size() > kMaxTokenBytes || !looks_like_jwt(token)) return std::nullopt;
  auto first = token.find('.');
  auto second = token.find('.', first + 1);
  return decode_object(token.substr(first + 1, second - first - 1));
}

JwtResult verify_jwt(std::string_view token, const KeySet& keys, const JwtExpectations& expect,
                     std::chrono::system_clock::time_point now) {
  if (token.size() > kMaxTokenBytes)
    return fail(JwtError::kTooLarge,
                std::to_string(token.size()) + " bytes (limit " + std::to_string(kMaxTokenBytes) + ")");
  auto d1 = token.find('.');
  auto d2 = d1 == std::string_view::npos ? d1 : token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos)
    return fail(JwtError::kMalformed, "not three dot-separated segments");
  auto header = decode_object(token.substr(0, d1));
  if (!header) return fail(JwtError::kMalformed, "the header is not base64url-encoded JSON object");
  const json& alg_node = member(*header, "alg");
  if (!alg_node.is_string()) return fail(JwtError::kMalformed, "the header has no alg");
  const std::string alg = alg_node.get<std::string>();
  std::string kid;
  bool has_kid = false;
  if (auto it = header->find("kid"); it != header->end()) {
    if (!it->is_string()) return fail(JwtError::kMalformed, "kid is not a string");
    kid = it->get<std::string>();
    has_kid = true;
  }
  const std::string shown_kid = printable(kid);
  std::string lower_alg;
  for (char c : alg) lower_alg.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  if (lower_alg == "none") return fail(JwtError::kAlgNone, "alg \"" + printable(alg, 16) + "\"", shown_kid);
  if (alg != "RS256" && alg != "ES256")
    return fail(JwtError::kAlgNotAccepted, "alg \"" + printable(alg, 16) + "\" (RS256 and ES256 only)", shown_kid);
  if (header->contains("crit")) return fail(JwtError::kCritical, "the header has crit", shown_kid);

  auto payload_b64 = token.substr(d1 + 1, d2 - d1 - 1);
  auto signature = crypto::base64url_decode(token.substr(d2 + 1));
  if (!signature || signature->empty()) return fail(JwtError::kMalformed, "the signature is not base64url", shown_kid);

  // The candidates: the key(s) with this kid; without a kid, every key. Of those, the ones whose
  // type matches the alg. A kid that names a key of the other type is the alg confusion attack
  // (or a misconfigured client) and is refused as such.
  std::vector<const Jwk*> named, usable;
  for (const auto& k : keys.keys)
    if (!has_kid || k.kid == kid) named.push_back(&k);
  if (named.empty())
    return fail(JwtError::kUnknownKid, has_kid ? "no key with kid \"" + shown_kid + "\"" : "no key and no kid",
                shown_kid);
  for (const auto* k : named)
    if (k->alg == alg) usable.push_back(k);
  if (usable.empty()) {
    if (!has_kid) return fail(JwtError::kUnknownKid, "no kid and no " + alg + " key");
    return fail(
        JwtError::kAlgKeyMismatch,
        "alg " + alg + " but kid \"" + shown_kid + "\" is a " + named.front()->kty + " key for " + named.front()->alg,
        shown_kid);
  }
  const std::string_view signing_input = token.substr(0, d2);
  bool verified = false;
  for (const auto* k : usable) verified = verified || signature_valid(*k, signing_input, *signature);
  if (!verified) return fail(JwtError::kBadSignature, alg + " signature does not verify", shown_kid);

  // From here on the payload is what the issuer signed.
  auto claims = decode_object(payload_b64);
  if (!claims) return fail(JwtError::kMalformed, "the payload is not a base64url-encoded JSON object", shown_kid);
  const json& c = *claims;

  const json& iss = member(c, "iss");
  if (!iss.is_string() || iss.get<std::string>() != expect.issuer)
    return fail(JwtError::kWrongIssuer, "iss " + short_dump(iss) + ", expected \"" + expect.issuer + "\"", shown_kid);

  const json& aud = member(c, "aud");
  bool aud_ok = false;
  auto matches = [&](const json& a) {
    if (!a.is_string()) return false;
    for (const auto& want : expect.audiences)
      if (a.get<std::string>() == want) return true;
    return false;
  };
  if (aud.is_array()) {
    for (const auto& a : aud) aud_ok = aud_ok || matches(a);
  } else {
    aud_ok = matches(aud);
  }
  if (!aud_ok) {
    json want = expect.audiences;
    return fail(JwtError::kWrongAudience, "aud " + short_dump(aud) + ", expected one of " + short_dump(want),
                shown_kid);
  }

  const double now_s = std::chrono::duration<double>(now.time_since_epoch()).count();
  const double skew = static_cast<double>(expect.clock_skew.count());
  auto number = [&](const char* name) -> std::optional<double> {
    auto it = c.find(name);
    if (it == c.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  };
  auto ago = [&](double t) { return std::to_string(static_cast<long long>(std::llround(now_s - t))); };
  auto exp = number("exp");
  if (!exp) return fail(JwtError::kBadClaim, "exp is missing or not a number", shown_kid);
  if (now_s >= *exp + skew)
    return fail(JwtError::kExpired,
                "exp " + std::to_string(static_cast<long long>(*exp)) + " was " + ago(*exp) + " s ago (clock skew " +
                    std::to_string(expect.clock_skew.count()) + " s)",
                shown_kid);
  if (c.contains("nbf")) {
    auto nbf = number("nbf");
    if (!nbf) return fail(JwtError::kBadClaim, "nbf is not a number", shown_kid);
    if (now_s + skew < *nbf)
      return fail(JwtError::kNotYetValid,
                  "nbf is " + std::to_string(static_cast<long long>(std::llround(*nbf - now_s))) +
                      " s in the future (clock skew " + std::to_string(expect.clock_skew.count()) + " s)",
                  shown_kid);
  }
  if (c.contains("iat")) {
    auto iat = number("iat");
    if (!iat) return fail(JwtError::kBadClaim, "iat is not a number", shown_kid);
    if (now_s + skew < *iat)
      return fail(JwtError::kIssuedInFuture,
                  "iat is " + std::to_string(static_cast<long long>(std::llround(*iat - now_s))) +
                      " s in the future (clock skew " + std::to_string(expect.clock_skew.count()) + " s)",
                  shown_kid);
  }
  const json& sub = member(c, "sub");
  if (!sub.is_string() || sub.get<std::string>().empty())
    return fail(JwtError::kBadClaim, "sub is missing or not a non-empty string", shown_kid);

  JwtResult ok;
  ok.claims = std::move(*claims);
  ok.kid = shown_kid;
  return ok;
}

}  // namespace scigate::auth
