#pragma once
// Names the server's threads as `top -H`, `ps -L`, perf, gdb and /proc/PID/task/*/comm show
// them ("sg-writer", "sg-http", "sg-io-2"…), so that an operator can tell which one is busy.
// Linux keeps 15 characters; longer names are cut.
#include <pthread.h>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>

namespace scigate {

inline void name_this_thread(const std::string& name) {
  std::string n = name.substr(0, 15);
  pthread_setname_np(pthread_self(), n.c_str());
}

// Names each of the `threads` threads of a fresh pool `prefix-1`, `prefix-2`…: one task per
// thread, each holding its thread until all have started, so that no thread takes two. Waits a
// second at most (a pool with fewer threads than said keeps the names it got).
inline void name_pool_threads(boost::asio::thread_pool& pool, std::size_t threads, const std::string& prefix) {
  struct Gate {
    std::mutex m;
    std::condition_variable cv;
    std::size_t started = 0;
    bool open = false;
  };
  if (threads == 0) return;
  auto gate = std::make_shared<Gate>();
  for (std::size_t i = 0; i < threads; ++i)
    boost::asio::post(pool, [gate, threads, prefix] {
      std::unique_lock l(gate->m);
      std::size_t n = ++gate->started;
      name_this_thread(threads == 1 ? prefix : prefix + "-" + std::to_string(n));
      if (n == threads) gate->open = true;
      gate->cv.notify_all();
      gate->cv.wait_for(l, std::chrono::seconds(1), [&] { return gate->open; });
    });
  std::unique_lock l(gate->m);
  gate->cv.wait_for(l, std::chrono::seconds(1), [&] { return gate->open; });
  gate->open = true;  // let any task still held go
  gate->cv.notify_all();
}

}  // namespace scigate
