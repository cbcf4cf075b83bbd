#include "server/auth/jwks.hpp"
#include "server/common/thread_name.hpp"

#include <curl/curl.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "server/common/crypto.hpp"
#include "server/common/json_util.hpp"
#include "server/observability/log.hpp"

namespace scigate::auth {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxJwksBytes = 1024 * 1024;
constexpr std::size_t kMaxKeys = 100;
constexpr int kMinRsaBits = 2048;

struct BnFree {
  void operator()(BIGNUM* b) const { BN_free(b); }
};
struct BldFree {
  void operator()(OSSL_PARAM_BLD* b) const { OSSL_PARAM_BLD_free(b); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct CtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;

std::shared_ptr<EVP_PKEY> from_params(const char* type, OSSL_PARAM_BLD* bld, std::string& why) {
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld));
  std::unique_ptr<EVP_PKEY_CTX, CtxFree> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    why = "OpenSSL refused the key parameters";
    return nullptr;
  }
  std::shared_ptr<EVP_PKEY> key(raw, EVP_PKEY_free);
  // An EC point off the curve, an even RSA modulus: refuse before anything is verified with it.
  std::unique_ptr<EVP_PKEY_CTX, CtxFree> check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    why = "the public key fails OpenSSL's check";
    return nullptr;
  }
  return key;
}

std::shared_ptr<EVP_PKEY> rsa_key(const json& jwk, std::string& why) {
  auto n = crypto::base64url_decode(string_member(jwk, "n"));
  auto e = crypto::base64url_decode(string_member(jwk, "e"));
  if (!n || !e || n->empty() || e->empty()) {
    why = "RSA key without valid base64url n and e";
    return nullptr;
  }
  BnPtr bn_n(BN_bin2bn(reinterpret_cast<const unsigned char*>(n->data()), static_cast<int>(n->size()), nullptr));
  BnPtr bn_e(BN_bin2bn(reinterpret_cast<const unsigned char*>(e->data()), static_cast<int>(e->size()), nullptr));
  if (!bn_n || !bn_e) {
    why = "out of memory";
    return nullptr;
  }
  if (BN_num_bits(bn_n.get()) < kMinRsaBits) {
    why = "RSA key shorter than " + std::to_string(kMinRsaBits) + " bits";
    return nullptr;
  }
  std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    why = "out of memory";
    return nullptr;
  }
  return from_params("RSA", bld.get(), why);
}

std::shared_ptr<EVP_PKEY> ec_key(const json& jwk, std::string& why) {
  if (string_member(jwk, "crv") != "P-256") {
    why = "EC key on curve \"" + string_member(jwk, "crv").substr(0, 20) + "\" (only P-256 is accepted)";
    return nullptr;
  }
  auto x = crypto::base64url_decode(string_member(jwk, "x"));
  auto y = crypto::base64url_decode(string_member(jwk, "y"));
  // RFC 7518 6.2.1.2: the coordinates are the full 32 bytes, leading zeros included.
  if (!x || !y || x->size() != 32 || y->size() != 32) {
    why = "EC P-256 key without 32-byte base64url x and y";
    return nullptr;
  }
  std::string point = "\x04" + *x + *y;  // uncompressed SEC1 point
  std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1) {
    why = "out of memory";
    return nullptr;
  }
  return from_params("EC", bld.get(), why);
}

// Printable ASCII only and short: kids come from outside and end up in logs.
std::string printable(const std::string& s, std::size_t max = 64) {
  std::string o;
  for (unsigned char c : s.substr(0, max)) o.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  return o;
}

}  // namespace

KeySet parse_jwks(std::string_view text) {
  json doc = json::parse(text, nullptr, false);
  if (!doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array())
    throw std::runtime_error("not a JWKS document (expected an object with a \"keys\" array)");
  KeySet set;
  for (const auto& k : doc["keys"]) {
    if (set.keys.size() >= kMaxKeys) {
      set.skipped.push_back("more than " + std::to_string(kMaxKeys) + " keys: the rest ignored");
      break;
    }
    if (!k.is_object()) {
      set.skipped.push_back("an entry that is not an object");
      continue;
    }
    Jwk jwk;
    jwk.kid = string_member(k, "kid");
    jwk.kty = string_member(k, "kty");
    const std::string label = "key \"" + printable(jwk.kid) + "\": ";
    auto skip = [&](const std::string& why) { set.skipped.push_back(label + why); };
    if (k.contains("use") && string_member(k, "use") != "sig") {
      skip("use is not \"sig\"");
      continue;
    }
    if (k.contains("key_ops")) {
      const json& ops = k["key_ops"];
      bool verify = false;
      if (ops.is_array())
        for (const auto& op : ops) verify = verify || (op.is_string() && op.get<std::string>() == "verify");
      if (!verify) {
        skip("key_ops does not include \"verify\"");
        continue;
      }
    }
    std::string why;
    if (jwk.kty == "RSA") {
      jwk.alg = "RS256";
      jwk.key = rsa_key(k, why);
    } else if (jwk.kty == "EC") {
      jwk.alg = "ES256";
      jwk.key = ec_key(k, why);
    } else {
      // "oct" above all: a symmetric key in a JWKS would let anyone who can read the JWKS sign.
      skip("key type \"" + printable(jwk.kty, 16) + "\" is not accepted (RSA and EC only)");
      continue;
    }
    if (!jwk.key) {
      skip(why);
      continue;
    }
    // A key that names its algorithm is used for that algorithm only.
    if (k.contains("alg") && string_member(k, "alg") != jwk.alg) {
      skip("its alg \"" + printable(string_member(k, "alg"), 16) + "\" is not " + jwk.alg);
      continue;
    }
    set.keys.push_back(std::move(jwk));
  }
  return set;
}

JwksCache::JwksCache(Fetch fetch, std::chrono::seconds min_refresh_interval, std::chrono::seconds ttl, Clock clock)
    : fetch_(std::move(fetch)),
      min_interval_(min_refresh_interval),
      ttl_(ttl),
      clock_(std::move(clock)),
      keys_(std::make_shared<KeySet>()) {}

std::shared_ptr<const KeySet> JwksCache::keys() const {
  std::lock_guard g(mutex_);
  return keys_;
}

bool JwksCache::refresh_possible() const {
  std::lock_guard g(mutex_);
  return in_flight_ || !attempted_ || clock_() - last_attempt_ >= min_interval_;
}

std::chrono::steady_clock::time_point JwksCache::next_due() const {
  std::lock_guard g(mutex_);
  if (!attempted_) return clock_();
  auto after_interval = last_attempt_ + min_interval_;
  // After a failure, retry at the interval, but never in a tight loop when the interval is 0.
  if (!succeeded_ || last_success_ < last_attempt_)
    return last_attempt_ + std::max<std::chrono::steady_clock::duration>(min_interval_, std::chrono::seconds(1));
  return std::max(after_interval, last_success_ + ttl_);
}

uint64_t JwksCache::generation() const {
  std::lock_guard g(mutex_);
  return generation_;
}

std::string JwksCache::last_error() const {
  std::lock_guard g(mutex_);
  return last_error_;
}

uint64_t JwksCache::on_refresh_after(uint64_t generation, std::function<void()> fn) {
  uint64_t id;
  {
    std::lock_guard g(mutex_);
    id = ++next_waiter_;
    if (generation_ <= generation) {
      waiters_.push_back(Waiter{id, generation, std::move(fn)});
      return id;
    }
  }
  fn();
  return id;
}

void JwksCache::forget(uint64_t waiter_id) {
  std::lock_guard g(mutex_);
  std::erase_if(waiters_, [&](const Waiter& w) { return w.id == waiter_id; });
}

JwksCache::Refresh JwksCache::refresh(bool force) {
  {
    std::lock_guard g(mutex_);
    if (in_flight_) return Refresh::kInFlight;
    auto now = clock_();
    if (!force && attempted_ && now - last_attempt_ < min_interval_) return Refresh::kRateLimited;
    in_flight_ = true;
    attempted_ = true;
    last_attempt_ = now;
  }
  std::shared_ptr<KeySet> fresh;
  std::string error;
  try {
    auto set = std::make_shared<KeySet>(parse_jwks(fetch_()));
    if (set->keys.empty()) throw std::runtime_error("the JWKS has no usable key");
    fresh = std::move(set);
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::vector<std::function<void()>> ready;
  {
    std::lock_guard g(mutex_);
    in_flight_ = false;
    ++generation_;
    if (fresh) {
      keys_ = fresh;
      succeeded_ = true;
      last_success_ = last_attempt_;
      last_error_.clear();
    } else {
      last_error_ = error;
    }
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->after < generation_) {
        ready.push_back(std::move(it->fn));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& fn : ready) fn();
  if (!fresh) {
    log::warn("jwks_refresh_failed", {{"detail", error}});
    return Refresh::kFailed;
  }
  json skipped = fresh->skipped;
  log::info("jwks_refreshed", {{"keys", fresh->keys.size()}, {"skipped", skipped}});
  return Refresh::kRefreshed;
}

JwksRefresher::JwksRefresher(JwksCache& cache) : cache_(cache), thread_([this] {
  name_this_thread("sg-jwks");
  run();
}) {}

JwksRefresher::~JwksRefresher() {
  {
    std::lock_guard g(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool JwksRefresher::request() {
  if (!cache_.refresh_possible()) return false;
  {
    std::lock_guard g(mutex_);
    requested_ = true;
  }
  cv_.notify_all();
  return true;
}

void JwksRefresher::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    // The cache's clock is the steady clock outside tests; wait in its terms.
    auto wait = cache_.next_due() - cache_.now();
    cv_.wait_for(lock, std::max(wait, std::chrono::steady_clock::duration(std::chrono::milliseconds(10))),
                 [&] { return stop_ || requested_; });
    if (stop_) return;
    bool asked = requested_;
    requested_ = false;
    if (!asked && cache_.next_due() > cache_.now()) continue;
    lock.unlock();
    cache_.refresh();
    lock.lock();
  }
}

std::string read_jwks_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read JWKS file " + path);
  std::string text(kMaxJwksBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxJwksBytes) throw std::runtime_error("JWKS file " + path + " is larger than 1 MiB");
  return text;
}

namespace {
size_t collect(char* data, size_t size, size_t n, void* user) {
  auto* out = static_cast<std::string*>(user);
  if (out->size() + size * n > kMaxJwksBytes) return 0;  // aborts the transfer
  out->append(data, size * n);
  return size * n;
}
}  // namespace

std::string fetch_jwks_url(const std::string& url, std::chrono::milliseconds timeout) {
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw std::runtime_error("curl_easy_init failed");
  std::string body;
  char err[CURL_ERROR_SIZE] = {0};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "scigate-jwks");
  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK)
    throw std::runtime_error("fetching JWKS from " + url + " failed: " + (err[0] ? err : curl_easy_strerror(rc)));
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200)
    throw std::runtime_error("fetching JWKS from " + url + " failed: HTTP status " + std::to_string(status));
  return body;
}

}  // namespace scigate::auth
