// The asynchronous libcurl client against a real HTTP server on 127.0.0.1 (a minimal one here,
// in-process, that answers after a delay): concurrency, limits, errors, cancellation.
#include <catch2/catch.hpp>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include <atomic>
#include <set>
#include <thread>

#include "connectors/http/curl_client.hpp"

using namespace scigate;
namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// An HTTP server on 127.0.0.1 with one thread of its own; serve() gets each accepted
// connection. A derived class calls start() last in its constructor and stop() first in its
// destructor (the thread uses its members).
class TestServer {
 public:
  virtual ~TestServer() = default;
  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  int accepted() const { return accepted_.load(); }

 protected:
  TestServer() : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {}
  void start() {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  void stop() {
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  virtual void serve(std::shared_ptr<tcp::socket> s) = 0;
  asio::io_context io_;

 private:
  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket sock) {
      if (ec) return;
      ++accepted_;
      serve(std::make_shared<tcp::socket>(std::move(sock)));
      accept();
    });
  }
  tcp::acceptor acceptor_;
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

// Answers every request with `body` after `delay`, one connection per request.
class SlowServer final : public TestServer {
 public:
  SlowServer(std::chrono::milliseconds delay, std::string body) : delay_(delay), body_(std::move(body)) { start(); }
  ~SlowServer() override { stop(); }

 private:
  void serve(std::shared_ptr<tcp::socket> s) override {
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
  }
  std::chrono::milliseconds delay_;
  std::string body_;
};

// Answers the first request on a connection at once and keeps it open; the next request on it
// gets no answer (a backend that stalls on a reused connection).
class StallSecondServer final : public TestServer {
 public:
  StallSecondServer() { start(); }
  ~StallSecondServer() override { stop(); }

 private:
  void serve(std::shared_ptr<tcp::socket> s) override {
    auto buf = std::make_shared<std::string>();
    asio::async_read_until(*s, asio::dynamic_buffer(*buf), "\r\n\r\n", [this, s, buf](boost::system::error_code ec, std::size_t n) {
      if (ec) return;
      buf->erase(0, n);
      auto out = std::make_shared<std::string>("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      asio::async_write(*s, asio::buffer(*out), [this, s, buf, out](boost::system::error_code ec, std::size_t) {
        if (ec) return;
        // The second request is read and never answered; the connection stays open (held here).
        asio::async_read_until(*s, asio::dynamic_buffer(*buf), "\r\n\r\n",
                               [this, s, buf](boost::system::error_code, std::size_t) { held_.push_back(s); });
      });
    });
  }
  std::vector<std::shared_ptr<tcp::socket>> held_;  // the server thread's only
};

http::Request get(uint16_t port) {
  http::Request r;
  r.url = "http://127.0.0.1:" + std::to_string(port) + "/x";
  return r;
}

// Both ways of driving the client: its own thread, and the reactor of an io_context (which keeps
// a wait outstanding, so io.run() never runs out of work: run_until() stops when the test's
// condition holds).
struct Driver {
  bool reactor;
  const char* name() const { return reactor ? "reactor" : "thread"; }
};

std::unique_ptr<http::CurlClient> make_client(const Driver& d, asio::io_context& io) {
  if (d.reactor) return std::make_unique<http::CurlClient>(io.get_executor());
  return std::make_unique<http::CurlClient>();
}

template <typename Pred>
bool run_until(asio::io_context& io, Pred done, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  auto end = std::chrono::steady_clock::now() + limit;
  io.restart();
  while (!done() && std::chrono::steady_clock::now() < end) io.run_one_for(std::chrono::milliseconds(50));
  return done();
}

}  // namespace

TEST_CASE("curl client: 100 slow requests run at once on one thread", "[http]") {
  auto d = GENERATE(Driver{false}, Driver{true});
  INFO("driver: " << d.name());
  SlowServer server(std::chrono::milliseconds(500), "hello");
  asio::io_context io;
  auto client = make_client(d, io);
  std::vector<http::Response> got;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i)
    asio::co_spawn(io, client->perform(get(server.port())), [&](std::exception_ptr e, http::Response r) {
      REQUIRE(!e);
      got.push_back(std::move(r));
    });
  REQUIRE(run_until(io, [&] { return got.size() == 100; }));
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const auto& r : got) {
    CHECK(r.ok());
    CHECK(r.body == "hello");
    CHECK(r.header("x-test") == "yes");
  }
  CHECK(s < 5.0);  // one after another would take 50 s
  CHECK(client->in_flight() == 0);
}

TEST_CASE("curl client: size limit, refused connection, timeout and cancellation", "[http]") {
  auto d = GENERATE(Driver{false}, Driver{true});
  INFO("driver: " << d.name());
  asio::io_context io;
  auto client = make_client(d, io);
  auto run = [&](http::Request req) {
    http::Response out;
    bool done = false;
    asio::co_spawn(io, client->perform(std::move(req)), [&](std::exception_ptr, http::Response r) {
      out = std::move(r);
      done = true;
    });
    REQUIRE(run_until(io, [&] { return done; }));
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
  CHECK(refused.connect_failed);

  SlowServer slow(std::chrono::milliseconds(3000), "late");
  auto t = get(slow.port());
  t.timeout = std::chrono::milliseconds(200);
  auto t1 = std::chrono::steady_clock::now();
  auto timed = run(t);
  CHECK(timed.timed_out);
  CHECK_FALSE(timed.error.empty());
  CHECK(std::chrono::steady_clock::now() - t1 < std::chrono::milliseconds(2000));  // curl's timer fired

  // A timeout on a reused connection is a timeout, not a connection that could not be made
  // (libcurl reports no connect time for a reused one).
  StallSecondServer stall;
  auto first = run(get(stall.port()));
  CHECK(first.ok());
  auto second_req = get(stall.port());
  second_req.timeout = std::chrono::milliseconds(300);
  auto second = run(second_req);
  CHECK(stall.accepted() == 1);  // the same connection
  CHECK(second.timed_out);
  CHECK_FALSE(second.connect_failed);

  // Cancelling the awaiting coroutine ends the transfer at once.
  using namespace asio::experimental::awaitable_operators;
  http::Response cancelled;
  bool over = false;
  auto t0 = std::chrono::steady_clock::now();
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::milliseconds(100));
    auto which = co_await (client->perform(get(slow.port())) || timer.async_wait(asio::use_awaitable));
    if (which.index() == 0) cancelled = std::get<0>(which);
    else cancelled.cancelled = true;
    over = true;
  }, asio::detached);
  REQUIRE(run_until(io, [&] { return over; }));
  CHECK(cancelled.cancelled);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(2000));
  // The cancelled transfer is gone from the client too.
  CHECK(run_until(io, [&] { return client->in_flight() == 0; }, std::chrono::seconds(2)));
}

TEST_CASE("curl client: a body many times curl's read buffer arrives whole, in order", "[http]") {
  // curl reads a socket a buffer at a time (1 KiB here): a 4 MiB body takes thousands of reads,
  // most of them with no new data arriving (no new edge for an edge-triggered reactor).
  auto d = GENERATE(Driver{false}, Driver{true});
  INFO("driver: " << d.name());
  std::string body;
  for (int i = 0; body.size() < (4u << 20); ++i) body += std::to_string(i) + ",";
  SlowServer server(std::chrono::milliseconds(0), body);
  asio::io_context io;
  auto client = make_client(d, io);
  auto req = get(server.port());
  req.buffer_size = 1024;  // curl's smallest
  std::string streamed;
  int pieces = 0;
  req.on_data = [&](std::string_view p) {
    streamed.append(p);
    ++pieces;
    return true;
  };
  http::Response r;
  bool done = false;
  asio::co_spawn(io, client->perform(req), [&](std::exception_ptr, http::Response x) {
    r = std::move(x);
    done = true;
  });
  REQUIRE(run_until(io, [&] { return done; }, std::chrono::seconds(10)));
  CHECK(r.ok());
  CHECK(streamed.size() == body.size());
  CHECK(streamed == body);
  CHECK(pieces >= static_cast<int>(body.size() / 1024));
}

TEST_CASE("curl client: the reactor driver runs a call on the I/O thread that serves it", "[http]") {
  SlowServer server(std::chrono::milliseconds(10), "x");
  asio::io_context io;
  http::CurlClient client(io.get_executor());
  std::set<std::thread::id> callback_threads;
  int done = 0;
  for (int i = 0; i < 20; ++i) {
    auto req = get(server.port());
    req.on_headers = [&](long, const std::map<std::string, std::string>&) {
      callback_threads.insert(std::this_thread::get_id());
      return true;
    };
    req.on_data = [&](std::string_view) {
      callback_threads.insert(std::this_thread::get_id());
      return true;
    };
    asio::co_spawn(io, client.perform(req), [&](std::exception_ptr, http::Response r) {
      CHECK(r.ok());
      callback_threads.insert(std::this_thread::get_id());
      ++done;
    });
  }
  REQUIRE(run_until(io, [&] { return done == 20; }));
  // No thread of the client's own: every callback and every resumption ran here.
  CHECK(callback_threads == std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST_CASE("curl client: the reactor driver on four I/O threads, 300 calls at once", "[http]") {
  SlowServer server(std::chrono::milliseconds(100), "four");
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::vector<std::thread> threads;
  {
    http::CurlClient client(io.get_executor());
    std::atomic<int> ok{0}, done{0};
    for (int i = 0; i < 4; ++i) threads.emplace_back([&io] { io.run(); });
    for (int i = 0; i < 300; ++i)
      asio::co_spawn(io, client.perform(get(server.port())), [&](std::exception_ptr, http::Response r) {
        if (r.ok() && r.body == "four") ++ok;
        ++done;
      });
    for (int i = 0; i < 400 && done.load() < 300; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    CHECK(done.load() == 300);
    CHECK(ok.load() == 300);
    CHECK(client.in_flight() == 0);
  }
  io.stop();
  for (auto& t : threads) t.join();
}

TEST_CASE("curl client: a reactor-driven client destroyed mid-call completes it as cancelled", "[http]") {
  SlowServer server(std::chrono::milliseconds(3000), "never");
  asio::io_context io;
  auto client = std::make_unique<http::CurlClient>(io.get_executor());
  std::vector<http::Response> got;
  for (int i = 0; i < 5; ++i)
    asio::co_spawn(io, client->perform(get(server.port())), [&](std::exception_ptr, http::Response r) {
      got.push_back(std::move(r));
    });
  REQUIRE(run_until(io, [&] { return server.accepted() == 5; }, std::chrono::seconds(5)));
  auto t0 = std::chrono::steady_clock::now();
  client.reset();  // the I/O thread is not running it now, as at a server's stop
  REQUIRE(run_until(io, [&] { return got.size() == 5; }, std::chrono::seconds(2)));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1000));
  for (const auto& r : got) {
    CHECK(r.cancelled);
    CHECK(r.error == "the client is shutting down");
  }
}
