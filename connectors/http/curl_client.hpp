#pragma once
// An asynchronous HTTP(S) client for every connector that talks HTTP to the outside (a remote
// QPU service, inference servers, HTTP data sources): libcurl's multi interface. Callers await
// perform(); no I/O thread ever blocks on the network, and hundreds of slow requests in flight
// cost one socket each, not one thread each.
//
// Two ways to drive it, one per kind of caller:
// - CurlClient(): a thread of its own in curl_multi_poll, woken with curl_multi_wakeup when a
//   request is added or cancelled. Request callbacks may block that thread (a download writing
//   to disk, an upload waiting for its producer): data transfers use this one.
// - CurlClient(executor): driven by the executor's reactor (curl_multi_socket_action) on the
//   I/O threads that run it: a request goes out and its answer comes in on the thread that
//   serves the call, with no hand-off to another thread and back (on a busy core each hand-off
//   is a context switch). Callbacks must not block. Inference uses this one. It must be
//   destroyed before the executor's io_context.
// Asio waits on epoll edge-triggered while curl reads a socket in bounded pieces ("readable"
// can stay true without a new edge); the reactor driver keeps curl's sockets in a level-
// triggered epoll set of its own and lets Asio watch only that set (curl_client.cpp).
//
// libcurl gives TLS (OpenSSL), proxies from the environment (https_proxy, no_proxy), HTTP/1.1
// keep-alive with one connection cache for all requests of a client, and exact timeouts.
//
// Threads: perform() may be called from any executor and the caller resumes on its own
// executor. Cancelling the awaiting coroutine (its cancellation slot) removes the transfer and
// completes it with Response::cancelled. Request callbacks run in the client's driving context
// (its thread, or an I/O thread of its executor), one at a time.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace scigate::http {

// Stops one exchange from any thread, for callers that do not await perform() in a coroutine
// they can cancel (a stream consumer, see body_stream.hpp). Cancelling before the exchange
// started stops it as soon as it starts. Thread-safe.
class CancelToken {
 public:
  void cancel();
  bool cancelled() const;

 private:
  friend class CurlClient;
  // Called by the client when the exchange starts; returns false if it is already cancelled.
  bool arm(std::function<void()> canceller);
  mutable std::mutex m_;
  bool cancelled_ = false;
  std::function<void()> canceller_;  // set while the exchange runs
};

struct Request {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::string body;                  // sent for POST/PUT/PATCH (and any method when non-empty)
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds timeout{60'000};  // the whole exchange
  std::size_t max_body = 64u << 20;           // a longer answer fails (Response::error says so)
  // When set, the body is handed over in pieces as it arrives instead of being collected in
  // Response::body (streams). Return false to stop the transfer (Response::error says why).
  std::function<bool(std::string_view)> on_data;
  // When set, called once the head of the (final, non-1xx) response has arrived, before any of
  // its body: the status and the headers (names lower-case). Return false to stop the transfer.
  std::function<bool(long status, const std::map<std::string, std::string>& headers)> on_headers;
  // When set, the request body is read from here instead of `body` (an upload of upload_size
  // bytes): copy up to n bytes into buf and return how many, 0 at the end, -1 to stop.
  std::function<long(char* buf, std::size_t n)> on_read;
  int64_t upload_size = -1;
  // Callbacks run in the client's driving context; on_data/on_read may block it briefly
  // (backpressure) with the thread-driven client only.
  // When set, the exchange can be stopped through it (see CancelToken).
  std::shared_ptr<CancelToken> cancel_token;
  // CURLOPT_RESOLVE entries ("host:port:address"): pins a name to an address already checked.
  std::vector<std::string> resolve;
  bool follow_redirects = false;
  std::string protocols = "http,https";
  // Data transfers: the bytes as sent (no Accept-Encoding: a compressed body would change
  // lengths, ranges and checksums), no proxy from the environment unless one is given, limits.
  bool decode_content = true;
  std::optional<std::string> proxy;          // "" : no proxy at all; unset: the environment's
  std::size_t buffer_size = 0;               // libcurl's receive buffer; 0: its default (16 KiB)
  int64_t max_recv_bytes_per_s = 0;          // 0: unlimited
  long low_speed_bytes_per_s = 0;            // with low_speed_time: fail a stalled transfer
  std::chrono::seconds low_speed_time{0};
};

struct Response {
  long status = 0;  // HTTP status; 0 when no answer came
  std::string body;
  std::map<std::string, std::string> headers;  // names lower-case; the last of repeated ones
  std::string error;    // empty when an HTTP answer came (whatever its status)
  bool cancelled = false;
  bool timed_out = false;
  // No connection was made: refused, unreachable, or the connect timeout passed (timed_out is
  // set too then). Nothing reached the server, so the exchange may be retried anywhere.
  bool connect_failed = false;
  bool partial = false;  // the connection ended before the body the server announced
  double seconds = 0;   // the whole exchange
  std::string remote_address;  // the peer's address, as connected

  bool ok() const { return error.empty() && status >= 200 && status < 300; }
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

class CurlClient {
 public:
  CurlClient();  // a thread of its own
  explicit CurlClient(boost::asio::any_io_executor executor);  // driven by the executor's reactor
  // Cancels what is in flight (completing it with Response::cancelled); joins the thread, or
  // leaves the executor.
  ~CurlClient();
  CurlClient(const CurlClient&) = delete;
  CurlClient& operator=(const CurlClient&) = delete;

  // One exchange. Never throws for network or HTTP failures (see Response::error/status).
  // Not a coroutine (GCC 12 destroys lambdas made inside co_await expressions twice).
  boost::asio::awaitable<Response> perform(Request request) {
    return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void(Response)>(
        Initiation{this}, boost::asio::use_awaitable, std::move(request));
  }

  // For Request callbacks and Completion::complete, which run in the driving context: runs `fn`
  // once the client has handled everything that arrived in the current round of I/O, before it
  // waits again, so that a consumer told of a head, some body and the end in one round is woken
  // once, not three times (on a busy core each wake-up is a context switch). Outside a round
  // `fn` runs at once.
  static void at_round_end(std::function<void()> fn);

  // Transfers started and in flight, for tests and metrics.
  uint64_t started() const;
  std::size_t in_flight() const;

  struct Impl;  // the drivers' common part (curl_client.cpp)

  struct Completion {
    virtual ~Completion() = default;
    virtual void complete(Response r) = 0;
  };
  // The exchange without a coroutine: `completion` runs once, in the driving context (or on the
  // caller's thread, when the exchange cannot start). Stop it with Request::cancel_token.
  void start(Request request, std::unique_ptr<Completion> completion) {
    start(std::move(request), std::move(completion), boost::asio::cancellation_slot());
  }

 private:
  struct Initiation {
    CurlClient* self;
    template <typename Handler>
    void operator()(Handler handler, Request request) const;
  };
  void start(Request request, std::unique_ptr<Completion> completion, boost::asio::cancellation_slot slot);

  std::shared_ptr<Impl> impl_;
};

template <typename Handler>
void CurlClient::Initiation::operator()(Handler handler, Request request) const {
  struct Typed final : Completion {
    explicit Typed(Handler h) : handler(std::move(h)) {}
    void complete(Response r) override {
      auto ex = boost::asio::get_associated_executor(handler);
      boost::asio::post(ex, [h = std::move(handler), r = std::move(r)]() mutable { std::move(h)(std::move(r)); });
    }
    Handler handler;
  };
  auto slot = boost::asio::get_associated_cancellation_slot(handler);
  self->start(std::move(request), std::make_unique<Typed>(std::move(handler)), slot);
}

}  // namespace scigate::http
