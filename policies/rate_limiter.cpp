#include "policies/rate_limiter.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

namespace scigate {
namespace {

constexpr int64_t kClockStepNs = 1'000'000'000;

int64_t to_ns(RateLimiter::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

double refilled(double tokens, int64_t last_ns, int64_t now_ns, double per_second, double burst) {
  if (now_ns <= last_ns) return tokens;
  return std::min(burst, tokens + static_cast<double>(now_ns - last_ns) * 1e-9 * per_second);
}

std::chrono::milliseconds wait_for(double tokens, double amount, double per_second) {
  double seconds = (amount - tokens) / per_second;
  return std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(std::ceil(seconds * 1000.0))));
}

}  // namespace

RateLimiter::Shard& RateLimiter::shard_for(std::string_view key) const {
  return shards_[std::hash<std::string_view>{}(key) % shards_.size()];
}

void RateLimiter::sweep(Shard& s, int64_t now_ns) {
  for (auto it = s.buckets.begin(); it != s.buckets.end();) {
    const Bucket& b = it->second;
    if (refilled(b.tokens, b.last_ns, now_ns, b.per_second, b.burst) >= b.burst)
      it = s.buckets.erase(it);
    else
      ++it;
  }
  s.sweep_at = std::max<std::size_t>(256, s.buckets.size() * 2);
}

RateLimiter::Result RateLimiter::acquire(const std::string& key, double per_second, double burst, Clock::time_point now,
                                         bool consume, double amount) {
  if (amount > burst) return Result{false, std::chrono::milliseconds(0)};
  const int64_t now_ns = to_ns(now);
  Shard& s = shard_for(key);
  std::lock_guard lock(s.mutex);
  auto it = s.buckets.find(key);
  if (it == s.buckets.end()) {
    if (burst < amount) return Result{false, wait_for(burst, amount, per_second)};
    if (!consume) return Result{};
    if (s.buckets.size() >= s.sweep_at) sweep(s, now_ns);
    s.buckets.emplace(key, Bucket{burst - amount, now_ns, per_second, burst});
    return Result{};
  }
  Bucket& b = it->second;
  b.per_second = per_second;
  b.burst = burst;
  // The wall clock stepped back (NTP, a resumed VM): refill from now on, instead of not at
  // all until it is back where it was. (Concurrent callers' small disorder stays under this.)
  if (now_ns < b.last_ns - kClockStepNs) b.last_ns = now_ns;
  double tokens = refilled(b.tokens, b.last_ns, now_ns, per_second, burst);
  if (tokens < amount) return Result{false, wait_for(tokens, amount, per_second)};
  if (consume) {
    b.tokens = tokens - amount;
    b.last_ns = std::max(b.last_ns, now_ns);
  }
  return Result{};
}

double RateLimiter::available(const std::string& key, double per_second, double burst, Clock::time_point now) const {
  Shard& s = shard_for(key);
  std::lock_guard lock(s.mutex);
  auto it = s.buckets.find(key);
  if (it == s.buckets.end()) return burst;
  return refilled(it->second.tokens, it->second.last_ns, to_ns(now), per_second, burst);
}

void RateLimiter::refund(const std::string& key, double burst, double amount) {
  Shard& s = shard_for(key);
  std::lock_guard lock(s.mutex);
  auto it = s.buckets.find(key);
  if (it != s.buckets.end()) it->second.tokens = std::min(burst, it->second.tokens + amount);
}

std::size_t RateLimiter::size() const {
  std::size_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard lock(s.mutex);
    n += s.buckets.size();
  }
  return n;
}

}  // namespace scigate
