#pragma once
// Lets coroutines wait until a background writer thread has durably committed everything up to
// a sequence number (group commit: many callers, one transaction). The waiter resumes on its
// own executor; notify() is called by the writer after each commit.
//
// Thread-safety: wait() and notify() may be called from any thread.
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace scigate {

class CommitWaiters {
 public:
  boost::asio::awaitable<void> wait(uint64_t seq) {
    return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void()>(
        [this, seq](auto handler) {
          std::unique_lock l(mutex_);
          if (committed_ >= seq) {
            l.unlock();
            auto ex = boost::asio::get_associated_executor(handler);
            boost::asio::post(ex, std::move(handler));
            return;
          }
          boost::asio::any_io_executor ex = boost::asio::get_associated_executor(handler);
          waiting_.emplace(seq, Waiter{ex, boost::asio::any_completion_handler<void()>(std::move(handler))});
        },
        boost::asio::use_awaitable);
  }

  // Everything up to and including `committed` is durable.
  void notify(uint64_t committed) {
    std::vector<Waiter> ready;
    {
      std::lock_guard l(mutex_);
      if (committed > committed_) committed_ = committed;
      auto end = waiting_.upper_bound(committed_);
      for (auto it = waiting_.begin(); it != end; ++it) ready.push_back(std::move(it->second));
      waiting_.erase(waiting_.begin(), end);
    }
    for (auto& w : ready) boost::asio::post(w.executor, std::move(w.handler));
  }

 private:
  std::mutex mutex_;
  uint64_t committed_ = 0;
  struct Waiter {
    boost::asio::any_io_executor executor;
    boost::asio::any_completion_handler<void()> handler;
  };
  std::multimap<uint64_t, Waiter> waiting_;
};

}  // namespace scigate
