#pragma once
// One SQLite connection with one thread of its own for writes, so that no I/O thread waits on
// a commit. Services that keep their state in memory and write it through (the job ledger, the
// task manager) each own one.
//
// Thread-safety: run() may be called from any coroutine; the work runs on the worker thread,
// in order, under the connection's lock, and the coroutine resumes on its own executor. Short
// indexed reads may use db() directly under db().lock().
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <filesystem>
#include <functional>

#include "server/state/database.hpp"
#include "server/common/thread_name.hpp"

namespace scigate::state {

class DbWorker {
 public:
  explicit DbWorker(const std::filesystem::path& path) : db_(path) { name_pool_threads(pool_, 1, "sg-db"); }
  ~DbWorker() { pool_.join(); }

  Database& db() { return db_; }

  // Runs fn on the worker thread; rethrows what it threw. Posted to the pool and posted back
  // (not co_spawned onto the pool): the coroutine's frame and cancellation slot stay on the
  // caller's executor, and the completion reaches that executor even if the caller's
  // operation was cancelled meanwhile. Not a coroutine itself: GCC 12 destroys a lambda made
  // inside a co_await expression twice (here that freed the caller's strand).
  boost::asio::awaitable<void> run(std::function<void(Database&)> fn) {
    namespace asio = boost::asio;
    return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
        [this](auto handler, std::function<void(Database&)> f) {
          auto ex = asio::get_associated_executor(handler);
          asio::post(pool_, [this, ex, f = std::move(f), handler = std::move(handler)]() mutable {
            std::exception_ptr error;
            try {
              auto lk = db_.lock();
              f(db_);
            } catch (...) {
              error = std::current_exception();
            }
            asio::post(ex, [handler = std::move(handler), error]() mutable { std::move(handler)(error); });
          });
        },
        asio::use_awaitable, std::move(fn));
  }

  // Waits for queued work to finish and post its completions. The server calls this before it
  // destroys its io_context (App::drain_writers). Calling it twice is harmless.
  void join() { pool_.join(); }

 private:
  Database db_;
  boost::asio::thread_pool pool_{1};
};

}  // namespace scigate::state
