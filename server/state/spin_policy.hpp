#pragma once
// How long an idle worker thread (the state writer) polls for its next item before it sleeps.
//
// Polling saves the wake-up of a sleeping thread (tens of microseconds on a virtual machine)
// when the next item comes soon — a lone caller's next call, the audit record right after a
// settle. It is a loss in two cases, and this policy stops it in both:
// - The thread may run on one CPU only (taskset, a cgroup cpuset, a one-vCPU VM): the thread
//   that would hand it work needs that very CPU, so every microsecond polled delays the work
//   polled for. The allowed CPUs are read again every second (affinity can change at run time).
// - Polls mostly find nothing (calls come further apart than the budget): the policy keeps a
//   running hit rate (each poll weighs 1/8) and stops polling below one in four; every 64th
//   sleep after that polls once to see whether the load has changed. A rate, not a count of
//   misses in a row: hits and misses come mixed, and what decides whether polling pays is
//   their proportion (bench/governance records it: a lone caller's polls, always on, hit only
//   12-16% of the time with a fixed 50 µs budget — the call's round trip is longer).
//
// How long to poll follows the load too: the policy keeps a running estimate of how long the
// thread stays idle before its next item comes (each idle period weighs 1/8; periods longer
// than twice the ceiling count as twice the ceiling) and polls for 1.5 times that, never more
// than the ceiling it was given, never less than 10 µs. A lone caller whose next call comes
// 75 µs after the last answer gets a ~110 µs budget, so its polls hit; calls 2 ms apart push
// the budget to the ceiling, where the polls miss and the hit rate turns polling off.
#include <algorithm>
#include <chrono>
#include <cstdint>

namespace scigate::state {

class SpinPolicy {
 public:
  using Clock = std::chrono::steady_clock;

  // Until idle gaps are known, the budget is the ceiling.
  explicit SpinPolicy(std::chrono::microseconds max) : max_(max), gap16_(16 * max.count()) {}

  // How long to poll now (zero: sleep at once). The caller reports the outcome with polled()
  // when it polled, and calls slept() when it did not.
  std::chrono::microseconds budget(Clock::time_point now) {
    if (max_.count() <= 0) return {};
    if (now >= next_cpu_check_) {
      cpus_ = allowed_cpus();
      next_cpu_check_ = now + std::chrono::seconds(1);
    }
    if (cpus_ < 2) return {};
    if (!polling() && !probe_) return {};
    // 1.5 times the typical idle gap, within [min(10 µs, ceiling), ceiling].
    int64_t want = (gap16_ + gap16_ / 2) / 16;
    return std::chrono::microseconds(std::clamp<int64_t>(want, std::min<int64_t>(10, max_.count()), max_.count()));
  }

  // The thread had been idle for `gap` when its next item came (whether a poll found it or the
  // thread was woken for it).
  void idle_ended(std::chrono::microseconds gap) {
    int64_t g = std::min<int64_t>(std::max<int64_t>(gap.count(), 0), 2 * max_.count());
    gap16_ += (16 * g - gap16_) / 8;
  }
  std::chrono::microseconds typical_gap() const { return std::chrono::microseconds(gap16_ / 16); }

  void polled(bool found_work) {
    ++polls_;
    if (found_work) ++hits_;
    rate_ += ((found_work ? kOne : 0) - rate_) / 8;
    probe_ = false;
  }

  void slept() {
    if (max_.count() <= 0 || polling()) return;
    if (++sleeps_off_ >= 64) {  // probe: the load may have changed
      probe_ = true;
      sleeps_off_ = 0;
    }
  }

  bool polling() const { return rate_ >= kOn; }
  uint64_t polls() const { return polls_; }
  uint64_t hits() const { return hits_; }

  // The CPUs the calling thread may run on (sched_getaffinity); 2 if that cannot be read.
  static int allowed_cpus();

 private:
  static constexpr int kOne = 1024, kOn = kOne / 4;  // the hit rate, in 1024ths
  std::chrono::microseconds max_;
  int64_t gap16_;  // the typical idle gap, a running estimate in 1/16 µs
  int rate_ = kOne;
  bool probe_ = false;
  int cpus_ = 0;
  Clock::time_point next_cpu_check_{};
  uint64_t polls_ = 0, hits_ = 0;
  int sleeps_off_ = 0;
};

}  // namespace scigate::state
