#pragma once
// JSON Web Key Sets (RFC 7517) for verifying bearer JWTs: a JWKS parsed into OpenSSL public keys,
// and a cache that re-fetches it when it is old or when a token names a key it does not hold,
// at most once per interval so a flood of tokens with made-up key ids cannot hammer the IdP.
//
// Only signature keys this server can verify are kept: RSA (RS256, at least 2048 bits) and EC
// P-256 (ES256). Symmetric ("oct") keys, keys whose `use` is not "sig", whose `key_ops` lacks
// "verify", or whose own `alg` is something else are left out, with the reason in `skipped`.
#include <openssl/evp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace scigate::auth {

struct Jwk {
  std::string kid;  // may be empty: then only tokens without a kid can pick it
  std::string kty;  // RSA | EC
  std::string alg;  // the one JWS alg this key verifies: RS256 (RSA) or ES256 (EC P-256)
  std::shared_ptr<EVP_PKEY> key;
};

struct KeySet {
  std::vector<Jwk> keys;
  std::vector<std::string> skipped;  // one line per key left out, for the log
};

// Throws std::runtime_error when `text` is not a JWKS document ({"keys": [...]}); keys that
// cannot be used are skipped, not fatal.
KeySet parse_jwks(std::string_view text);

// The current key set and the rules for replacing it. Thread-safe. `fetch` returns the JWKS
// text or throws; it runs on whichever thread calls refresh() (see JwksRefresher for the one
// that keeps network fetches off I/O threads).
class JwksCache {
 public:
  using Fetch = std::function<std::string()>;
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  JwksCache(Fetch fetch, std::chrono::seconds min_refresh_interval, std::chrono::seconds ttl,
            Clock clock = &std::chrono::steady_clock::now);

  // Never null; empty until the first successful fetch.
  std::shared_ptr<const KeySet> keys() const;

  enum class Refresh { kRefreshed, kFailed, kRateLimited, kInFlight };
  // Fetches now unless another fetch is running or one started less than the minimum interval
  // ago (`force` skips the interval, for start-up). A failed fetch keeps the previous keys, as
  // does a document with no usable key.
  Refresh refresh(bool force = false);
  // Whether refresh() would fetch now, or a fetch is already running (its result is coming).
  bool refresh_possible() const;
  // When the keys are next due for a refresh: ttl after the last success, or the minimum
  // interval after a failure (or at once before any attempt).
  std::chrono::steady_clock::time_point next_due() const;
  std::chrono::steady_clock::time_point now() const { return clock_(); }
  // Counts finished refresh attempts (successful or not).
  uint64_t generation() const;
  // Calls `fn` (on the refreshing thread) when an attempt after `generation` has finished, or at
  // once when one already has. Returns an id for forget(), which a waiter that gave up calls so
  // that nothing it captured is called later.
  uint64_t on_refresh_after(uint64_t generation, std::function<void()> fn);
  void forget(uint64_t waiter_id);
  std::string last_error() const;

 private:
  Fetch fetch_;
  std::chrono::seconds min_interval_, ttl_;
  Clock clock_;
  mutable std::mutex mutex_;
  std::shared_ptr<const KeySet> keys_;
  bool in_flight_ = false;
  bool attempted_ = false, succeeded_ = false;
  std::chrono::steady_clock::time_point last_attempt_{}, last_success_{};
  uint64_t generation_ = 0;
  std::string last_error_;
  struct Waiter {
    uint64_t id;
    uint64_t after;
    std::function<void()> fn;
  };
  std::vector<Waiter> waiters_;
  uint64_t next_waiter_ = 0;
};

// Keeps a JwksCache fresh from a thread of its own: at next_due(), and soon after request().
// Stops (and joins) on destruction; a fetch in progress is bounded by the fetch's own timeout.
class JwksRefresher {
 public:
  explicit JwksRefresher(JwksCache& cache);
  ~JwksRefresher();
  JwksRefresher(const JwksRefresher&) = delete;
  JwksRefresher& operator=(const JwksRefresher&) = delete;

  // Asks for a refresh now. False when the rate limit allows none (nothing will happen);
  // true when a fetch will run or is running.
  bool request();

 private:
  void run();
  JwksCache& cache_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool requested_ = false, stop_ = false;
  std::thread thread_;
};

// The JWKS text from a file (at most 1 MiB). Throws std::runtime_error.
std::string read_jwks_file(const std::string& path);
// The JWKS text from an http(s) URL with libcurl: no redirects, at most 1 MiB, status 200,
// `timeout` for the whole transfer. Throws std::runtime_error. Blocking: never call it on an
// I/O thread.
std::string fetch_jwks_url(const std::string& url, std::chrono::milliseconds timeout);

}  // namespace scigate::auth
