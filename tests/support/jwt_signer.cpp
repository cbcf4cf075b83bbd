#include "jwt_signer.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/pem.h>

#include <chrono>
#include <stdexcept>

namespace scigate::test {
namespace {

std::string bn_param(EVP_PKEY* k, const char* name, int pad = 0) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(k, name, &bn) != 1) throw std::runtime_error(std::string("no key parameter ") + name);
  int len = pad ? pad : BN_num_bytes(bn);
  std::string out(static_cast<std::size_t>(len), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), len);
  BN_free(bn);
  return out;
}

std::string digest_sign(EVP_PKEY* key, const std::string& data) {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", nullptr, nullptr, key, nullptr) != 1)
    throw std::runtime_error("EVP_DigestSignInit_ex");
  size_t len = 0;
  auto in = reinterpret_cast<const unsigned char*>(data.data());
  if (EVP_DigestSign(ctx.get(), nullptr, &len, in, data.size()) != 1) throw std::runtime_error("EVP_DigestSign");
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in, data.size()) != 1)
    throw std::runtime_error("EVP_DigestSign");
  sig.resize(len);
  return sig;
}

// DER Ecdsa-Sig-Value -> JWS r||s.
std::string der_to_raw(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
  if (!sig) throw std::runtime_error("d2i_ECDSA_SIG");
  std::string raw(64, '\0');
  BN_bn2binpad(ECDSA_SIG_get0_r(sig), reinterpret_cast<unsigned char*>(raw.data()), 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(sig), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
  ECDSA_SIG_free(sig);
  return raw;
}

}  // namespace

std::string b64url(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  for (auto& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

TestKey TestKey::rsa(const std::string& kid, int bits) {
  TestKey k;
  k.kid_ = kid;
  k.rsa_ = true;
  k.key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(bits)), EVP_PKEY_free);
  if (!k.key_) throw std::runtime_error("RSA keygen");
  return k;
}

TestKey TestKey::ec(const std::string& kid) {
  TestKey k;
  k.kid_ = kid;
  k.rsa_ = false;
  k.key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"), EVP_PKEY_free);
  if (!k.key_) throw std::runtime_error("EC keygen");
  return k;
}

json TestKey::jwk(const json& extra) const {
  json j = json::object();
  j["kid"] = kid_;
  j["use"] = "sig";
  if (rsa_) {
    j["kty"] = "RSA";
    j["alg"] = "RS256";
    j["n"] = b64url(bn_param(key_.get(), OSSL_PKEY_PARAM_RSA_N));
    j["e"] = b64url(bn_param(key_.get(), OSSL_PKEY_PARAM_RSA_E));
  } else {
    j["kty"] = "EC";
    j["alg"] = "ES256";
    j["crv"] = "P-256";
    j["x"] = b64url(bn_param(key_.get(), OSSL_PKEY_PARAM_EC_PUB_X, 32));
    j["y"] = b64url(bn_param(key_.get(), OSSL_PKEY_PARAM_EC_PUB_Y, 32));
  }
  for (auto it = extra.begin(); it != extra.end(); ++it) {
    if (it->is_null())
      j.erase(it.key());
    else
      j[it.key()] = *it;
  }
  return j;
}

std::string TestKey::public_pem() const {
  std::unique_ptr<BIO, int (*)(BIO*)> bio(BIO_new(BIO_s_mem()), BIO_free);
  PEM_write_bio_PUBKEY(bio.get(), key_.get());
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string TestKey::sign(const json& header, const json& payload) const {
  std::string input = b64url(header.dump()) + "." + b64url(payload.dump());
  std::string sig = digest_sign(key_.get(), input);
  if (!rsa_) sig = der_to_raw(sig);
  return input + "." + b64url(sig);
}

std::string TestKey::sign(const json& payload) const {
  json h = json::object();
  h["alg"] = rsa_ ? "RS256" : "ES256";
  h["typ"] = "JWT";
  h["kid"] = kid_;
  return sign(h, payload);
}

json jwks_of(std::initializer_list<json> keys) {
  json j = json::object();
  j["keys"] = json::array();
  for (const auto& k : keys) j["keys"].push_back(k);
  return j;
}

std::string sign_hs256(const json& header, const json& payload, const std::string& secret) {
  std::string input = b64url(header.dump()) + "." + b64url(payload.dump());
  unsigned char mac[64];
  size_t len = 0;
  if (!EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, secret.data(), secret.size(),
                 reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, sizeof mac, &len))
    throw std::runtime_error("EVP_Q_mac");
  return input + "." + b64url(std::string(reinterpret_cast<char*>(mac), len));
}

std::string unsigned_token(const json& payload) {
  json h = json::object();
  h["alg"] = "none";
  h["typ"] = "JWT";
  return b64url(h.dump()) + "." + b64url(payload.dump()) + ".";
}

long now_s() {
  return static_cast<long>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

json claims(const std::string& iss, const json& aud, const std::string& sub, long ttl_s) {
  json c = json::object();
  c["iss"] = iss;
  c["aud"] = aud;
  c["sub"] = sub;
  c["iat"] = now_s();
  c["exp"] = now_s() + ttl_s;
  return c;
}

}  // namespace scigate::test
