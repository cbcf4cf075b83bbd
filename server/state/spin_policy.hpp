#pragma once
// How long an idle worker thread (the state writer) polls for its next item before it sleeps.
//
// Polling saves the wake-up of a sleeping thread (tens of microseconds on a virtual machine)
// when the next item comes soon — a lone caller's next call, the audit record right after a
// settle. It is a loss in two cases, and this policy stops it in both:
// - The thread may run on one CPU only (taskset, a cgroup cpuset, a one-vCPU VM): the thread
//   that would hand it work needs that very CPU, so every microsecond polled delays the work
//   polled for. The allowed CPUs are read again every second (affinity can change at run time).
// - Polls keep finding nothing (calls come further apart than the budget): each miss halves the
//   next budget, and below a sixteenth of the maximum polling stops; every 64th sleep after
//   that probes once with the full budget, and a hit restores it.
#include <chrono>
#include <cstdint>

namespace scigate::state {

class SpinPolicy {
 public:
  using Clock = std::chrono::steady_clock;

  explicit SpinPolicy(std::chrono::microseconds max) : max_(max), budget_(max) {}

  // How long to poll now (zero: sleep at once). The caller reports the outcome with polled()
  // when it polled, and calls slept() when it did not.
  std::chrono::microseconds budget(Clock::time_point now) {
    if (max_.count() <= 0) return {};
    if (now >= next_cpu_check_) {
      cpus_ = allowed_cpus();
      next_cpu_check_ = now + std::chrono::seconds(1);
    }
    if (cpus_ < 2) return {};
    return budget_;
  }

  void polled(bool found_work) {
    ++polls_;
    if (found_work) {
      ++hits_;
      budget_ = max_;
      sleeps_off_ = 0;
      return;
    }
    budget_ /= 2;
    if (budget_ * 16 < max_) budget_ = {};
  }

  void slept() {
    if (max_.count() <= 0 || budget_.count() > 0) return;
    if (++sleeps_off_ >= 64) {  // probe: the load may have changed
      budget_ = max_;
      sleeps_off_ = 0;
    }
  }

  uint64_t polls() const { return polls_; }
  uint64_t hits() const { return hits_; }

  // The CPUs the calling thread may run on (sched_getaffinity); 2 if that cannot be read.
  static int allowed_cpus();

 private:
  std::chrono::microseconds max_, budget_;
  int cpus_ = 0;
  Clock::time_point next_cpu_check_{};
  uint64_t polls_ = 0, hits_ = 0;
  int sleeps_off_ = 0;
};

}  // namespace scigate::state
