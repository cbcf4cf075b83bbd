#pragma once
// Runs blocking work (file system calls) on a worker pool and resumes the awaiting coroutine on
// its own executor with the result. ErrorException thrown by the work becomes the Error
// alternative; any other exception (a bug) is rethrown in the coroutine.
//
// Not a coroutine itself, and takes the work as a ready-made std::function: GCC 12 destroys a
// lambda made inside a co_await expression twice (see state::DbWorker::run). Write
//   auto work = std::function<T()>(...);  co_await on_pool(pool, std::move(work));
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <functional>
#include <variant>

#include "server/common/error.hpp"

namespace scigate::storage {

template <class T>
boost::asio::awaitable<std::variant<T, Error>> on_pool(boost::asio::thread_pool& pool, std::function<T()> fn) {
  namespace asio = boost::asio;
  using Result = std::variant<T, Error>;
  return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, Result)>(
      [&pool](auto handler, std::function<T()> f) {
        auto ex = asio::get_associated_executor(handler);
        asio::post(pool, [ex, f = std::move(f), handler = std::move(handler)]() mutable {
          std::exception_ptr bug;
          Result result(std::in_place_index<1>, Error{});
          try {
            result = Result(std::in_place_index<0>, f());
          } catch (const ErrorException& e) {
            result = Result(std::in_place_index<1>, e.error());
          } catch (...) {
            bug = std::current_exception();
          }
          asio::post(ex, [handler = std::move(handler), bug, result = std::move(result)]() mutable {
            std::move(handler)(bug, std::move(result));
          });
        });
      },
      asio::use_awaitable, std::move(fn));
}

}  // namespace scigate::storage
