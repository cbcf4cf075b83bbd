#pragma once
// Test-only: keys generated with OpenSSL, their JWKS entries, and compact JWS tokens signed with
// them, so tests can play the identity provider. Not for server code (it holds private keys).
#include <openssl/evp.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace scigate::test {

using nlohmann::json;

class TestKey {
 public:
  static TestKey rsa(const std::string& kid, int bits = 2048);
  static TestKey ec(const std::string& kid);  // P-256

  const std::string& kid() const { return kid_; }
  bool is_rsa() const { return rsa_; }
  // The public JWK (kty, kid, use "sig", alg, n/e or crv/x/y); `extra` members are merged in.
  json jwk(const json& extra = json::object()) const;
  // SubjectPublicKeyInfo PEM of the public key (what an HS256 confusion attack uses as secret).
  std::string public_pem() const;

  // A compact JWS over `header` and `payload` JSON, signed with this key: RS256 (PKCS#1 v1.5)
  // for RSA, ES256 (raw r||s) for EC. The header is used as given (alg, kid are the caller's).
  std::string sign(const json& header, const json& payload) const;
  // The same with header {"alg": RS256|ES256, "typ": "JWT", "kid": kid()}.
  std::string sign(const json& payload) const;

 private:
  std::string kid_;
  bool rsa_ = true;
  std::shared_ptr<EVP_PKEY> key_;
};

std::string b64url(const std::string& bytes);
json jwks_of(std::initializer_list<json> keys);
// HS256 over header.payload with `secret` (to show the server refuses it).
std::string sign_hs256(const json& header, const json& payload, const std::string& secret);
// An unsigned token (alg none, empty signature).
std::string unsigned_token(const json& payload);
// Standard claims around now: iss, aud, sub, iat, exp = now + ttl_s.
json claims(const std::string& iss, const json& aud, const std::string& sub, long ttl_s = 300);
long now_s();

}  // namespace scigate::test
