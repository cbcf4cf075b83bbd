#pragma once
// An io_context executor that counts its live copies, for tests that check a coroutine
// releases every copy of its executor that it (or a library under it) makes.
//
// Why: a strand's implementation is reference-counted through executor copies. Code that
// destroys one copy twice (GCC 12 does, for a lambda with by-value captures written inside a
// co_await expression) frees the strand while its timers and sockets still use it. That shows
// up as heap corruption far away; with this executor it shows up as a count below zero.
#include <boost/asio/execution.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/require.hpp>

#include <atomic>

namespace scigate::testing {

class CountingExecutor {
 public:
  using Inner = decltype(boost::asio::require(std::declval<boost::asio::io_context::executor_type>(),
                                              boost::asio::execution::blocking.never));

  CountingExecutor(boost::asio::io_context& io, std::atomic<int>& live)
      : inner_(boost::asio::require(io.get_executor(), boost::asio::execution::blocking.never)), live_(&live) {
    ++*live_;
  }
  CountingExecutor(const CountingExecutor& o) noexcept : inner_(o.inner_), live_(o.live_) { ++*live_; }
  CountingExecutor(CountingExecutor&& o) noexcept : inner_(o.inner_), live_(o.live_) { ++*live_; }
  CountingExecutor& operator=(const CountingExecutor& o) noexcept {
    ++*o.live_;  // this copy now counts against the other's counter
    --*live_;
    inner_ = o.inner_;
    live_ = o.live_;
    return *this;
  }
  ~CountingExecutor() { --*live_; }

  template <class F>
  void execute(F&& f) const {
    inner_.execute(std::forward<F>(f));
  }
  boost::asio::execution_context& query(boost::asio::execution::context_t) const noexcept {
    return boost::asio::query(inner_, boost::asio::execution::context);
  }
  static constexpr boost::asio::execution::blocking_t query(boost::asio::execution::blocking_t) noexcept {
    return boost::asio::execution::blocking.never;
  }
  CountingExecutor require(boost::asio::execution::blocking_t::never_t) const { return *this; }
  bool operator==(const CountingExecutor& o) const noexcept { return inner_ == o.inner_ && live_ == o.live_; }
  bool operator!=(const CountingExecutor& o) const noexcept { return !(*this == o); }

 private:
  Inner inner_;
  std::atomic<int>* live_;
};

}  // namespace scigate::testing
