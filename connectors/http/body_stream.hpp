#pragma once
// A response body delivered to a coroutine piece by piece as it arrives (server-sent events
// from an inference server, a large download), on top of CurlClient.
//
//   BodyStream s(client, request, co_await this_coro::executor);
//   co_await s.head();                       // status and headers (or the end, if none came)
//   while (auto piece = co_await s.next()) …  // body pieces, in order
//   s.response()                             // the final status / error, once next() is empty
//
// The curl thread appends what arrives to a buffer and rings a one-slot doorbell channel;
// the consumer takes everything buffered at once, so a fast producer costs one wake-up per
// batch, not per piece. Memory is bounded by Request::max_body of unread data: beyond it the
// transfer is stopped and the response says why.
//
// Threads: one consumer coroutine; cancel() and the destructor may run on its executor. Cancelling
// the awaiting coroutine (its slot) makes head()/next() throw operation_aborted and stops the
// exchange. The client must outlive the stream.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "connectors/http/curl_client.hpp"

namespace scigate::http {

class BodyStream {
 public:
  BodyStream(CurlClient& client, Request request, boost::asio::any_io_executor executor);
  ~BodyStream();  // stops an unfinished exchange
  BodyStream(const BodyStream&) = delete;
  BodyStream& operator=(const BodyStream&) = delete;

  // Waits until the response head is in (or the exchange ended without one).
  boost::asio::awaitable<void> head();
  long status() const;  // 0 until a head came
  std::string header(const std::string& lower_name) const;

  // What arrived since the last call (never empty), or nullopt once the body is complete or the
  // exchange failed; then response() tells which.
  boost::asio::awaitable<std::optional<std::string>> next();

  // The outcome (status, headers, error, timed_out, cancelled); body is empty (it went through
  // next()). Valid once next() returned nullopt.
  const Response& response() const { return final_; }
  bool finished() const;

  void cancel();  // stops the exchange; next() then ends with response().cancelled
  // What cancel() uses, for a timer or another thread that must stop the exchange later
  // without holding the stream.
  std::shared_ptr<CancelToken> cancel_token() const { return token_; }

  struct State;  // shared with the client's thread (body_stream.cpp)

 private:
  std::shared_ptr<State> state_;
  std::shared_ptr<CancelToken> token_;
  Response final_;
};

}  // namespace scigate::http
