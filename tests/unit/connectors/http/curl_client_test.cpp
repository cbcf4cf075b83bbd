// The asynchronous libcurl client against a real HTTP server on 127.0.0.1 (a minimal one here,
// in-process, that answers after a delay): concurrency, limits, errors, cancellation.
#include <catch2/catch.hpp>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include <atomic>
#include <thread>

#include "connectors/http/curl_client.hpp"

using namespace scigate;
namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// Answers every request with `body` after `delay`, one connection per request.
class SlowServer {
 public:
  SlowServer(std::chrono::milliseconds delay, std::string body)
      : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)), delay_(delay), body_(std::move(body)) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~SlowServer() {
    io_.stop();
    thread_.join();
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  int accepted() const { return accepted_.load(); }

 private:
  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket sock) {
      if (ec) return;
      ++accepted_;
      auto s = std::make_shared<tcp::socket>(std::move(sock));
      auto buf = std::make_shared<std::string>();
      asio::async_read_until(*s, asio::dynamic_buffer(*buf), "\r\n\r\n", [this, s, buf](boost::system::error_code ec, std::size_t) {
        if (ec) return;
        auto t = std::make_shared<asio::steady_timer>(io_, delay_);
        t->async_wait([this, s, t](boost::system::error_code) {
          auto out = std::make_shared<std::string>("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Test: yes\r\n"
                                                   "Content-Length: " + std::to_string(body_.size()) +
                                                   "\r\nConnection: close\r\n\r\n" + body_);
          asio::async_write(*s, asio::buffer(*out), [s, out](boost::system::error_code, std::size_t) {});
        });
      });
      accept();
    });
  }
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::chrono::milliseconds delay_;
  std::string body_;
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

http::Request get(uint16_t port) {
  http::Request r;
  r.url = "http://127.0.0.1:" + std::to_string(port) + "/x";
  return r;
}

}  // namespace

TEST_CASE("curl client: 100 slow requests run at once on one thread", "[http]") {
  SlowServer server(std::chrono::milliseconds(500), "hello");
  http::CurlClient client;
  asio::io_context io;
  std::vector<http::Response> got;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i)
    asio::co_spawn(io, client.perform(get(server.port())), [&](std::exception_ptr e, http::Response r) {
      REQUIRE(!e);
      got.push_back(std::move(r));
    });
  io.run();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(got.size() == 100);
  for (const auto& r : got) {
    CHECK(r.ok());
    CHECK(r.body == "hello");
    CHECK(r.header("x-test") == "yes");
  }
  CHECK(s < 5.0);  // one after another would take 50 s
  CHECK(client.in_flight() == 0);
}

TEST_CASE("curl client: size limit, refused connection, timeout and cancellation", "[http]") {
  http::CurlClient client;
  asio::io_context io;
  auto run = [&](http::Request req) {
    http::Response out;
    asio::co_spawn(io, client.perform(std::move(req)), [&](std::exception_ptr, http::Response r) { out = std::move(r); });
    io.restart();
    io.run();
    return out;
  };
  SlowServer big(std::chrono::milliseconds(0), std::string(10000, 'x'));
  auto req = get(big.port());
  req.max_body = 1000;
  auto r = run(req);
  CHECK_FALSE(r.ok());
  CHECK(r.error == "the response is larger than 1000 bytes");

  uint16_t closed_port;
  {
    tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    closed_port = a.local_endpoint().port();
  }
  auto refused = run(get(closed_port));
  CHECK(refused.status == 0);
  CHECK_FALSE(refused.error.empty());

  SlowServer slow(std::chrono::milliseconds(3000), "late");
  auto t = get(slow.port());
  t.timeout = std::chrono::milliseconds(200);
  auto timed = run(t);
  CHECK(timed.timed_out);
  CHECK_FALSE(timed.error.empty());

  // Cancelling the awaiting coroutine ends the transfer at once.
  using namespace asio::experimental::awaitable_operators;
  http::Response cancelled;
  auto t0 = std::chrono::steady_clock::now();
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::milliseconds(100));
    auto which = co_await (client.perform(get(slow.port())) || timer.async_wait(asio::use_awaitable));
    if (which.index() == 0) cancelled = std::get<0>(which);
    else cancelled.cancelled = true;
  }, asio::detached);
  io.restart();
  io.run();
  CHECK(cancelled.cancelled);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(2000));
  // The cancelled transfer is gone from the client too.
  for (int i = 0; i < 100 && client.in_flight() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(client.in_flight() == 0);
}
