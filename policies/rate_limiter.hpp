#pragma once
// Token buckets for the policy's [[rate_limits]], keyed by an opaque string the caller builds
// (project, limit id and settings, and the subject: principal, tool, ...).
//
// Thread-safety: every member may be called concurrently. Buckets live in 64 shards, each
// behind its own mutex, so calls for different subjects rarely contend and one bucket's
// check-and-take is atomic (concurrent callers never take more tokens than there are).
//
// Time is whatever the caller passes (the policy query's `now`), so tests inject it. A clock
// that goes backwards refills nothing and never underflows.
//
// Memory: a bucket that would be full again at `now` is indistinguishable from a missing one
// and is dropped by a sweep that runs when a shard has doubled since the last sweep, so the
// store holds roughly the subjects active within one refill period.
#include <array>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace scigate {

class RateLimiter {
 public:
  using Clock = std::chrono::system_clock;

  struct Result {
    bool allowed = true;
    // When not allowed: how long until one token is there.
    std::chrono::milliseconds retry_after{0};
  };

  // Takes `amount` tokens (default one) from the bucket `key` (capacity `burst`, refilled at
  // `per_second` tokens per second, created full), or with consume=false only says whether they
  // are there. An amount above `burst` can never be taken (retry_after is zero then).
  Result acquire(const std::string& key, double per_second, double burst, Clock::time_point now, bool consume = true,
                 double amount = 1.0);
  // The tokens the bucket `key` holds at `now` (a bucket never used holds `burst`); takes none.
  double available(const std::string& key, double per_second, double burst, Clock::time_point now) const;
  // Gives back tokens taken by acquire() (when a later limit of the same call refused it).
  void refund(const std::string& key, double burst, double amount = 1.0);

  std::size_t size() const;

 private:
  struct Bucket {
    double tokens;
    int64_t last_ns;  // time of the last refill
    double per_second;
    double burst;
  };
  struct Shard {
    mutable std::mutex mutex;
    std::unordered_map<std::string, Bucket> buckets;
    std::size_t sweep_at = 256;  // sweep idle buckets when the map grows past this
  };
  static void sweep(Shard& shard, int64_t now_ns);
  Shard& shard_for(std::string_view key) const;

  mutable std::array<Shard, 64> shards_;
};

}  // namespace scigate
