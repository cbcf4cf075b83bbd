#pragma once
// Small wrappers over OpenSSL for what the server needs: random tokens, SHA-256, base64 and
// constant-time comparison.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace scigate::crypto {

// `bytes` bytes from the OS CSPRNG, hex-encoded. Throws on RNG failure (a bug-class event).
std::string random_hex(std::size_t bytes);
// `bytes` bytes from the CSPRNG, base64url without padding.
std::string random_token(std::size_t bytes);
std::string sha256_hex(std::string_view data);

// SHA-256 over data that arrives in pieces (files being copied). One thread at a time.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, std::size_t n);
  // The digest in lower-case hex; the object starts over afterwards.
  std::string final_hex();
  void reset();

 private:
  void* ctx_;  // EVP_MD_CTX
};
std::string base64_encode(std::string_view data);
// Standard alphabet, padding optional; nullopt when the input is not base64.
std::optional<std::string> base64_decode(std::string_view data);
// base64url (RFC 4648 section 5) without padding.
std::string base64url_encode(std::string_view data);
// Strict base64url as JWS requires: only [A-Za-z0-9_-], no padding, no whitespace, and unused
// trailing bits zero (one encoding per value). nullopt otherwise.
std::optional<std::string> base64url_decode(std::string_view data);
bool constant_time_equal(std::string_view a, std::string_view b);
// A correlation id, unique across processes and restarts ("req-<random>-<counter>"), cheap
// enough for every request: the CSPRNG is read once per process.
std::string request_id();

}  // namespace scigate::crypto
