#pragma once
// Waits for a condition that becomes true asynchronously (a poller, a writer thread, another
// process): true as soon as `f()` is, false if it still is not after `limit`. For tests and
// benchmarks; no Catch dependency.
#include <chrono>
#include <thread>

namespace scigate::test {

template <class F>
bool eventually(F f, std::chrono::milliseconds limit = std::chrono::seconds(10),
                std::chrono::milliseconds poll = std::chrono::milliseconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(poll);
  }
  return f();
}

}  // namespace scigate::test
