#include <catch2/catch.hpp>

#include <sched.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "server/common/crypto.hpp"
#include "server/state/database.hpp"
#include "server/state/spin_policy.hpp"
#include "server/state/writer.hpp"

using namespace scigate;
using std::chrono::microseconds;

namespace {

// Pins the calling thread to its first allowed CPU for the scope; threads it starts meanwhile
// inherit that.
struct OneCpu {
  cpu_set_t was;
  OneCpu() {
    CPU_ZERO(&was);
    REQUIRE(sched_getaffinity(0, sizeof(was), &was) == 0);
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &was)) {
        CPU_SET(c, &one);
        break;
      }
    REQUIRE(sched_setaffinity(0, sizeof(one), &one) == 0);
  }
  ~OneCpu() { sched_setaffinity(0, sizeof(was), &was); }
};

}  // namespace

TEST_CASE("spin policy: polls while one in four finds work, probes every 64 sleeps once it has stopped") {
  if (state::SpinPolicy::allowed_cpus() < 2) return;  // polling is off on one CPU (next test)
  state::SpinPolicy spin(microseconds(50));
  auto now = state::SpinPolicy::Clock::now();
  CHECK(spin.budget(now) == microseconds(50));
  // A closed-loop caller: most polls hit, some miss in runs of several.
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 5; ++i) spin.polled(false);
    for (int i = 0; i < 5; ++i) spin.polled(true);
    CHECK(spin.budget(now) == microseconds(50));
  }
  // Calls further apart than the budget: every poll misses; polling stops within a dozen.
  int misses = 0;
  while (spin.budget(now).count() > 0 && misses < 100) {
    spin.polled(false);
    ++misses;
  }
  CHECK(misses >= 8);
  CHECK(misses <= 12);
  for (int i = 0; i < 63; ++i) spin.slept();
  CHECK(spin.budget(now) == microseconds(0));
  spin.slept();
  CHECK(spin.budget(now) == microseconds(50));  // the probe
  spin.polled(false);
  CHECK(spin.budget(now) == microseconds(0));  // it missed: off again
  for (int i = 0; i < 64; ++i) spin.slept();
  REQUIRE(spin.budget(now) == microseconds(50));
  spin.polled(true);  // the load came back
  CHECK(spin.polling());
  CHECK(spin.budget(now) == microseconds(50));
  CHECK(spin.polls() == 200u + misses + 2);
  CHECK(spin.hits() == 101);
  state::SpinPolicy off(microseconds(0));
  CHECK(off.budget(now) == microseconds(0));
}

TEST_CASE("spin policy: the budget follows the typical idle gap, between 10 µs and the ceiling") {
  if (state::SpinPolicy::allowed_cpus() < 2) return;
  auto now = state::SpinPolicy::Clock::now();
  state::SpinPolicy spin(microseconds(200));
  CHECK(spin.budget(now) == microseconds(200));  // nothing known yet: the ceiling
  // A lone caller whose next call comes ~75 µs after the writer went idle: polls of ~110 µs,
  // long enough to catch it, not the whole ceiling.
  for (int i = 0; i < 64; ++i) spin.idle_ended(microseconds(75));
  CHECK(spin.typical_gap().count() >= 75);
  CHECK(spin.typical_gap().count() <= 82);  // (the running estimate converges from above)
  CHECK(spin.budget(now) >= microseconds(112));
  CHECK(spin.budget(now) <= microseconds(123));
  // Items back to back: never less than 10 µs.
  for (int i = 0; i < 64; ++i) spin.idle_ended(microseconds(1));
  CHECK(spin.budget(now) == microseconds(10));
  // Calls 2 ms apart: capped at the ceiling; one 2 ms gap moves the estimate by at most
  // 2 × ceiling / 8, not by 2 ms / 8.
  spin.idle_ended(microseconds(2000));
  CHECK(spin.typical_gap() <= microseconds(1 + 400 / 8));
  for (int i = 0; i < 64; ++i) spin.idle_ended(microseconds(2000));
  CHECK(spin.budget(now) == microseconds(200));
  // A ceiling below 10 µs is still the ceiling.
  state::SpinPolicy tiny(microseconds(5));
  for (int i = 0; i < 64; ++i) tiny.idle_ended(microseconds(1));
  CHECK(tiny.budget(now) == microseconds(5));
}

TEST_CASE("spin policy: one poll in three finding work keeps it polling, one in eight stops it") {
  if (state::SpinPolicy::allowed_cpus() < 2) return;
  auto now = state::SpinPolicy::Clock::now();
  auto run = [&](int period) {
    state::SpinPolicy spin(microseconds(50));
    for (int i = 0; i < 400; ++i) {
      if (spin.budget(now).count() > 0) spin.polled(i % period == 0);
      else spin.slept();
    }
    return spin;
  };
  auto third = run(3);
  CHECK(third.polling());
  CHECK(third.polls() == 400);
  // A lone caller's next call usually comes later than the budget (bench/governance: 12% of
  // polls hit): off, bar a probe every 64 sleeps.
  auto eighth = run(8);
  CHECK_FALSE(eighth.polling());
  CHECK(eighth.polls() < 40);
}

TEST_CASE("spin policy: a thread allowed one CPU never polls, and notices when that changes") {
  auto now = state::SpinPolicy::Clock::now();
  std::unique_ptr<OneCpu> pinned = std::make_unique<OneCpu>();
  state::SpinPolicy spin(microseconds(50));
  CHECK(spin.budget(now) == microseconds(0));
  pinned.reset();
  if (state::SpinPolicy::allowed_cpus() < 2) return;
  CHECK(spin.budget(now + std::chrono::milliseconds(10)) == microseconds(0));  // read once a second
  CHECK(spin.budget(now + std::chrono::seconds(2)) == microseconds(50));
}

TEST_CASE("writer: on one CPU it sleeps at once after a batch instead of polling") {
  auto path = std::filesystem::temp_directory_path() / ("scigate-spin-" + crypto::random_hex(6) + ".db");
  struct Nothing final : state::Writer::Participant {};
  struct Touch final : state::Writer::Item {
    explicit Touch(state::Writer::Participant* p) : Item(p) {}
    std::promise<void> done;
    void apply() override {}
    void failed(const std::string&) override {}
    void answer() override { done.set_value(); }
  };
  for (bool one_cpu : {true, false}) {
    if (!one_cpu && state::SpinPolicy::allowed_cpus() < 2) continue;
    std::unique_ptr<OneCpu> pinned;
    if (one_cpu) pinned = std::make_unique<OneCpu>();  // before the writer's thread starts
    state::Writer w(path, {});
    pinned.reset();
    Nothing p;
    w.add(&p);
    for (int i = 0; i < 5; ++i) {
      auto item = std::make_shared<Touch>(&p);
      auto f = item->done.get_future();
      w.enqueue(item);
      REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
    }
    w.flush();
    // Idle now: a writer that polls has done so (and given up) well within this.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    w.remove(&p);
    INFO("one CPU: " << one_cpu);
    if (one_cpu) CHECK(w.stats().spins == 0);
    else CHECK(w.stats().spins > 0);
  }
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
}
