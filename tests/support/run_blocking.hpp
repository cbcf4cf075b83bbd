#pragma once
// Runs a coroutine to completion on an io_context and returns its value (or rethrows), for
// tests and benchmarks that drive async code from plain functions. No Catch dependency.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <exception>
#include <optional>
#include <utility>

namespace scigate::test {

template <class T>
T run_blocking(boost::asio::io_context& io, boost::asio::awaitable<T> aw) {
  std::optional<T> out;
  std::exception_ptr ep;
  boost::asio::co_spawn(io, std::move(aw), [&](std::exception_ptr e, T v) {
    ep = e;
    if (!e) out = std::move(v);
  });
  io.restart();
  io.run();
  if (ep) std::rethrow_exception(ep);
  return std::move(*out);
}

// The same on an io_context of its own.
template <class T>
T run_blocking(boost::asio::awaitable<T> aw) {
  boost::asio::io_context io;
  return run_blocking(io, std::move(aw));
}

}  // namespace scigate::test
