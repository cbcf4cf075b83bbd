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
//   12-16% of the time — the call's round trip is longer than the budget).
#include <chrono>
#include <cstdint>

namespace scigate::state {

class SpinPolicy {
 public:
  using Clock = std::chrono::steady_clock;

  explicit SpinPolicy(std::chrono::microseconds max) : max_(max) {}

  // How long to poll now (zero: sleep at once). The caller reports the outcome with polled()
  // when it polled, and calls slept() when it did not.
  std::chrono::microseconds budget(Clock::time_point now) {
    if (max_.count() <= 0) return {};
    if (now >= next_cpu_check_) {
      cpus_ = allowed_cpus();
      next_cpu_check_ = now + std::chrono::seconds(1);
    }
    if (cpus_ < 2) return {};
    return polling() || probe_ ? max_ : std::chrono::microseconds(0);
  }

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
  int rate_ = kOne;
  bool probe_ = false;
  int cpus_ = 0;
  Clock::time_point next_cpu_check_{};
  uint64_t polls_ = 0, hits_ = 0;
  int sleeps_off_ = 0;
};

}  // namespace scigate::state
