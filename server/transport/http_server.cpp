#include "server/common/utf8.hpp"
#include "server/transport/http_server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <deque>
#include <map>
#include <unordered_map>

#include "connectors/inference/openai_wire.hpp"
#include "policies/audit_query.hpp"
#include "policies/audit_time.hpp"
#include "server/common/crypto.hpp"
#include "server/common/json_util.hpp"
#include "server/observability/log.hpp"
#include "server/openai/openai_api.hpp"

namespace scigate::transport {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
// For the writes of an event stream: a request's cancellation (notifications/cancelled, the
// grace period's end) must not abort a chunk half-written, which leaves the client a broken
// HTTP message; a dead client fails the write by itself, and the body timeout bounds it.
inline auto whole_write() { return asio::bind_cancellation_slot(asio::cancellation_slot(), kAwait); }
using namespace asio::experimental::awaitable_operators;

namespace {

constexpr int kTransportError = -32000;
constexpr int kSessionNotFound = -32001;
constexpr auto kKeepAlive = std::chrono::seconds(15);
// Read buffer a connection keeps between requests; beyond it (a large body was read) it is freed.
constexpr std::size_t kKeptReadBuffer = 16 * 1024;
// What a connection's read buffer may hold at most: a whole header, and the pieces of a chunked
// body the parser buffers until their line ends (a chunk's size line with its extensions, the
// trailer). Body bytes pass through it into the request (limited by max_body_bytes); without a
// cap, a client that never ends a chunk-size line or a trailer grows it without bound, before
// any authentication.
constexpr std::size_t kChunkFramingBytes = 8 * 1024;
constexpr std::size_t kFirstRead = 4096;  // a kept-alive connection's read for its next request
std::size_t read_buffer_limit(const HttpConfig& cfg) { return cfg.max_header_bytes + kChunkFramingBytes; }

std::string lower(std::string_view s) {
  std::string o(s);
  for (auto& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

std::string header(const Request& req, std::string_view name) {
  auto it = req.find(name);
  return it == req.end() ? std::string() : std::string(it->value());
}

// "scheme://host[:port]" of an Origin, compared against allow-list entries that either name a
// port (exact match) or not (any port).
bool origin_allowed(const std::string& origin, const std::vector<std::string>& allowed) {
  auto scheme_end = origin.find("://");
  if (scheme_end == std::string::npos) return false;
  std::string o = lower(origin);
  std::string without_port = o;
  auto host_start = scheme_end + 3;
  auto colon = o.rfind(':');
  if (colon != std::string::npos && colon > host_start && o.find(']', colon) == std::string::npos)
    without_port = o.substr(0, colon);
  for (const auto& a : allowed) {
    std::string la = lower(a);
    if (la == "*" || la == o || la == without_port) return true;
  }
  return false;
}

// Mcp-Name and Mcp-Param-* values may be "=?base64?...?=".
std::optional<std::string> decode_header_value(const std::string& v) {
  constexpr std::string_view kPre = "=?base64?", kPost = "?=";
  if (v.size() >= kPre.size() + kPost.size() && v.compare(0, kPre.size(), kPre) == 0 &&
      v.compare(v.size() - kPost.size(), kPost.size(), kPost) == 0)
    return crypto::base64_decode(std::string_view(v).substr(kPre.size(), v.size() - kPre.size() - kPost.size()));
  for (unsigned char c : v)
    if ((c < 0x20 && c != '\t') || c > 0x7e) return std::nullopt;
  return v;
}

bool accepts(const std::string& accept, std::string_view type) {
  std::string a = lower(accept);
  if (a.empty() || a.find("*/*") != std::string::npos) return true;
  if (a.find(type) != std::string::npos) return true;
  auto slash = type.find('/');
  return a.find(std::string(type.substr(0, slash)) + "/*") != std::string::npos;
}

// GCC 12 miscompiles brace-initialised json with string literals inside coroutines ("array used
// as initializer"), so coroutine bodies build their JSON through these plain functions.
json status_body(const std::string& status) {
  json j = json::object();
  j["status"] = status;
  return j;
}

json unsupported_version_data(const std::string& requested) {
  json j = json::object();
  j["supported"] = mcp::supported_versions();
  j["requested"] = requested;
  return j;
}

// --- GET /audit/events: plain helpers (see above about coroutines) ------------------------------

std::string url_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The filter an auditor asked for, or the reason the query string is not one.
struct EventsRequest {
  audit::EventFilter filter;
  std::string project;
  std::string problem;
};

EventsRequest parse_events_query(std::string_view query) {
  static const std::vector<std::string> kKnown = {"project", "principal", "tool",   "outcome", "since",
                                                  "until",   "limit",     "cursor", "order"};
  EventsRequest r;
  std::map<std::string, std::string> params;
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (part.empty()) continue;
    auto eq = part.find('=');
    std::string key = url_decode(part.substr(0, eq));
    std::string value = eq == std::string_view::npos ? std::string() : url_decode(part.substr(eq + 1));
    if (std::find(kKnown.begin(), kKnown.end(), key) == kKnown.end()) {
      std::string list;
      for (const auto& k : kKnown) list += (list.empty() ? "" : ", ") + k;
      r.problem = "unknown parameter \"" + key.substr(0, 40) + "\" (known: " + list + ")";
      return r;
    }
    if (!params.emplace(key, value).second) {
      r.problem = "parameter \"" + key + "\" given twice";
      return r;
    }
  }
  auto get = [&](const char* k) { return params.count(k) ? params[k] : std::string(); };
  r.project = get("project");
  r.filter.principal = get("principal");
  r.filter.tool = get("tool");
  r.filter.outcome = get("outcome");
  std::string order = get("order");
  if (!order.empty() && order != "asc" && order != "desc") {
    r.problem = "order must be asc or desc";
    return r;
  }
  r.filter.descending = order != "asc";
  auto integer = [](const std::string& v) -> std::optional<int64_t> {
    if (v.empty() || v.size() > 15 || v.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    return std::stoll(v);
  };
  r.filter.limit = audit::kDefaultPageSize;
  if (params.count("limit")) {
    auto n = integer(params["limit"]);
    if (!n || *n < 1) {
      r.problem = "limit must be a whole number from 1 to " + std::to_string(audit::kMaxPageSize);
      return r;
    }
    r.filter.limit = std::min(*n, audit::kMaxPageSize);
  }
  if (params.count("cursor")) {
    auto n = integer(params["cursor"]);
    if (!n) {
      r.problem = "cursor must be a next_cursor value returned by this endpoint";
      return r;
    }
    r.filter.cursor = *n;
  }
  const int64_t now = audit::now_ms();
  for (const char* k : {"since", "until"}) {
    if (!params.count(k)) continue;
    auto t = audit::parse_time(params[k], now);
    if (!t) {
      r.problem = std::string(k) + " must be RFC 3339 (2026-03-01T12:00:00Z), a date, Unix milliseconds, or a span "
                                   "back from now (90m, 24h, 7d)";
      return r;
    }
    (std::string(k) == "since" ? r.filter.since_ms : r.filter.until_ms) = *t;
  }
  return r;
}

json api_error_body(const std::string& code, const std::string& message) {
  json e = json::object();
  e["code"] = code;
  e["message"] = message;
  json j = json::object();
  j["error"] = std::move(e);
  return j;
}

json events_body(const audit::AuditPage& page) {
  json events = json::array();
  for (const auto& r : page.events) events.push_back(audit::event_json(r));
  json j = json::object();
  j["events"] = std::move(events);
  j["next_cursor"] = page.next_cursor ? json(std::to_string(*page.next_cursor)) : json(nullptr);
  return j;
}

// The usage chunk of a stream: usage and no choices (vLLM sends `"choices": []`, other servers
// leave the key out). scigate always asks the backend for it; a client that did not gets none.
bool usage_only_chunk(const json& chunk) {
  if (!chunk.is_object()) return false;
  auto c = chunk.find("choices");
  return (c == chunk.end() || (c->is_array() && c->empty())) && chunk.contains("usage");
}

struct EventQueue {
  explicit EventQueue(const asio::any_io_executor& ex) : wake(ex) {}
  std::deque<std::string> items;
  std::size_t bytes = 0;   // in items
  bool overflow = false;   // more than [http] stream_backlog_bytes waited for the client
  bool done = false;
  asio::steady_timer wake;
};

}  // namespace

class HttpServer::Impl : public std::enable_shared_from_this<HttpServer::Impl> {
 public:
  Impl(asio::io_context& io, HttpDeps deps) : io_(io), deps_(std::move(deps)), acceptor_(asio::make_strand(io)) {
    const auto& h = deps_.config.http;
    if (!h.tls_cert.empty()) {
      tls_ = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
      tls_->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                        asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1);
      tls_->use_certificate_chain_file(h.tls_cert);
      tls_->use_private_key_file(h.tls_key, asio::ssl::context::pem);
    }
  }

  tcp::endpoint listen(const std::string& host, uint16_t port) {
    tcp::endpoint ep(asio::ip::make_address(host), port);
    acceptor_.open(ep.protocol());
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(ep);
    acceptor_.listen(asio::socket_base::max_listen_connections);
    return acceptor_.local_endpoint();
  }

  void start() {
    asio::co_spawn(acceptor_.get_executor(), accept_loop(shared_from_this()), asio::detached);
    asio::co_spawn(asio::make_strand(io_), reap_sessions(shared_from_this()), asio::detached);
  }

  void shutdown(std::function<void()> done) {
    asio::post(acceptor_.get_executor(), [self = shared_from_this(), done = std::move(done)]() mutable {
      self->shutting_down_ = true;
      beast::error_code ec;
      self->acceptor_.close(ec);
      self->deps_.dispatcher.close_subscriptions();
      self->close_connections(false);
      asio::co_spawn(self->acceptor_.get_executor(), self->drain(std::move(done)), asio::detached);
    });
  }

  // --- connection registry (for graceful shutdown) -------------------------------------------
  struct ConnHandle {
    std::function<void(bool force)> close;
  };
  uint64_t add_connection(ConnHandle h) {
    std::lock_guard g(conn_mutex_);
    uint64_t id = next_conn_++;
    conns_.emplace(id, std::move(h));
    deps_.metrics.connections.fetch_add(1);
    return id;
  }
  void remove_connection(uint64_t id) {
    std::lock_guard g(conn_mutex_);
    if (conns_.erase(id)) deps_.metrics.connections.fetch_sub(1);
  }
  void close_connections(bool force) {
    std::vector<std::function<void(bool)>> closers;
    {
      std::lock_guard g(conn_mutex_);
      for (auto& [id, h] : conns_) closers.push_back(h.close);
    }
    for (auto& c : closers) c(force);
  }
  std::size_t connection_count() {
    std::lock_guard g(conn_mutex_);
    return conns_.size();
  }

  asio::io_context& io_;
  HttpDeps deps_;
  tcp::acceptor acceptor_;
  std::unique_ptr<asio::ssl::context> tls_;
  std::atomic<bool> shutting_down_{false};
  std::mutex conn_mutex_;
  std::unordered_map<uint64_t, ConnHandle> conns_;
  uint64_t next_conn_ = 0;

 private:
  static asio::awaitable<void> accept_loop(std::shared_ptr<Impl> self);
  static asio::awaitable<void> reap_sessions(std::shared_ptr<Impl> self) {
    asio::steady_timer t(co_await asio::this_coro::executor);
    while (!self->shutting_down_) {
      t.expires_after(std::chrono::seconds(30));
      co_await t.async_wait(kAwait);
      auto n = self->deps_.sessions.expire(self->deps_.config.http.session_idle_timeout);
      self->deps_.metrics.sessions.store(static_cast<int64_t>(self->deps_.sessions.size()));
      if (n) log::info("sessions_expired", {{"count", n}});
    }
  }
  asio::awaitable<void> drain(std::function<void()> done) {
    asio::steady_timer t(co_await asio::this_coro::executor);
    auto deadline = std::chrono::steady_clock::now() + deps_.config.http.shutdown_grace;
    while (connection_count() > 0 && std::chrono::steady_clock::now() < deadline) {
      t.expires_after(std::chrono::milliseconds(20));
      co_await t.async_wait(kAwait);
    }
    if (connection_count() > 0) {
      log::warn("shutdown_grace_expired", {{"connections", connection_count()}});
      close_connections(true);
      auto unwind = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (connection_count() > 0 && std::chrono::steady_clock::now() < unwind) {
        t.expires_after(std::chrono::milliseconds(20));
        co_await t.async_wait(kAwait);
      }
    }
    done();
  }
};

// One HTTP connection: reads requests in a loop on its own strand.
template <class Stream>
class Connection : public std::enable_shared_from_this<Connection<Stream>> {
 public:
  Connection(std::shared_ptr<HttpServer::Impl> server, Stream stream)
      : server_(std::move(server)),
        stream_(std::move(stream)),
        cfg_(server_->deps_.config.http),
        buffer_(read_buffer_limit(cfg_)) {}

  static asio::awaitable<void> run(std::shared_ptr<Connection> self) {
    self->id_ = self->server_->add_connection(HttpServer::Impl::ConnHandle{
        [weak = std::weak_ptr<Connection>(self)](bool force) {
          if (auto s = weak.lock())
            asio::post(s->executor(), [s, force] {
              if (force) {
                // Grace is over: whatever still runs is cancelled, so it unwinds (holds
                // released, audit written) before the process exits.
                s->cancel_on_disconnect_ = true;
                s->work_cancel_.emit(asio::cancellation_type::terminal);
              }
              if (force || !s->busy_) s->close_socket();
            });
        }});
    try {
      co_await self->serve();
    } catch (const std::exception& e) {
      log::debug("connection_error", {{"detail", e.what()}});
    }
    self->close_socket();
    self->server_->remove_connection(self->id_);
  }

 private:
  asio::any_io_executor executor() { return stream_.get_executor(); }
  auto& tcp_layer() { return beast::get_lowest_layer(stream_); }

  void close_socket() {
    beast::error_code ec;
    tcp_layer().socket().shutdown(tcp::socket::shutdown_both, ec);
    tcp_layer().socket().close(ec);
  }

  asio::awaitable<void> serve() {
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
      tcp_layer().expires_after(cfg_.header_timeout);
      auto [ec] = co_await stream_.async_handshake(asio::ssl::stream_base::server, kAwait);
      if (ec) co_return;
    }
    bool first = true;
    for (;;) {
      if (server_->shutting_down_) co_return;
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(cfg_.max_header_bytes));
      parser.body_limit(cfg_.max_body_bytes);
      // Header time is bounded separately from idle keep-alive time, so a slow client that
      // trickles bytes cannot hold the socket: a kept-alive connection waits for the next
      // request's first byte under the idle timeout, and its header, from there, under the
      // header timeout, as the first request's does.
      if (!first && buffer_.size() == 0) {
        tcp_layer().expires_after(cfg_.idle_timeout);
        auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(kFirstRead), kAwait);
        buffer_.commit(n);
        if (ec) co_return;  // closed, reset or idle too long: nothing was asked
      }
      tcp_layer().expires_after(cfg_.header_timeout);
      auto [ec, n] = co_await http::async_read_header(stream_, buffer_, parser, kAwait);
      if (!ec && !parser.is_done()) {
        tcp_layer().expires_after(cfg_.body_timeout);
        std::tie(ec, n) = co_await http::async_read(stream_, buffer_, parser, kAwait);
      }
      first = false;
      // A large body read through the buffer leaves it large; an idle keep-alive connection
      // should not keep that.
      if (buffer_.size() == 0 && buffer_.capacity() > kKeptReadBuffer) buffer_.shrink_to_fit();
      if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
          ec == beast::error::timeout || ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor)
        co_return;
      facts_ = RequestFacts{};
      if (ec == http::error::body_limit) {
        facts_.method = std::string(parser.get().method_string());
        facts_.path = std::string(parser.get().target());
        co_await send(error_response(http::status::payload_too_large, 11, false, kTransportError,
                                     "request body exceeds the limit of " + std::to_string(cfg_.max_body_bytes) +
                                         " bytes"));
        co_return;
      }
      if (ec == http::error::buffer_overflow) {
        // Bytes the parser must hold whole before it can go on: a chunk's size line (with its
        // extensions) or the trailer after the last chunk, neither counted by the header or
        // body limits.
        co_await send(error_response(http::status::bad_request, 11, false, kTransportError,
                                     "a chunk size line or the trailer of the chunked request body exceeds " +
                                         std::to_string(read_buffer_limit(cfg_) - cfg_.max_header_bytes) + " bytes"));
        co_return;
      }
      if (ec == http::error::header_limit) {
        co_await send(error_response(http::status::request_header_fields_too_large, 11, false, kTransportError,
                                     "request headers exceed " + std::to_string(cfg_.max_header_bytes) + " bytes"));
        co_return;
      }
      if (ec) {
        co_await send(error_response(http::status::bad_request, 11, false, kTransportError,
                                     "malformed HTTP request: " + ec.message()));
        co_return;
      }
      tcp_layer().expires_never();
      Request req = parser.release();
      facts_.method = std::string(req.method_string());
      facts_.path = std::string(req.target());
      busy_ = true;
      bool keep = co_await handle(req);
      busy_ = false;
      if (!keep || !req.keep_alive() || !reusable_) co_return;
    }
  }

  Response error_response(http::status status, unsigned version, bool keep_alive, int code, std::string message,
                          const json& id = nullptr, json data = nullptr) {
    return json_response(status, version, keep_alive, jsonrpc::make_error(id, code, message, data));
  }

  Response json_response(http::status status, unsigned version, bool keep_alive, const json& body) {
    if (body.is_object())
      if (auto e = body.find("error"); e != body.end() && e->is_object()) {
        facts_.has_error = true;
        auto code = e->find("code");
        facts_.rpc_code = code != e->end() && code->is_number_integer() ? code->get<int>() : 0;
        facts_.message = string_member(*e, "message");
      }
    Response res{status, version};
    res.set(http::field::server, std::string_view("scigate"));
    res.set(http::field::content_type, std::string_view("application/json"));
    res.keep_alive(keep_alive && !server_->shutting_down_ && reusable_);
    res.body() = jsonrpc::dump(body);
    res.prepare_payload();
    return res;
  }

  asio::awaitable<void> send(Response res) {
    server_->deps_.metrics.record_http(static_cast<int>(res.result_int()));
    // One audit record per refused request: every error answer the pipeline did not record.
    if ((res.result_int() >= 400 || facts_.has_error) && facts_.audit && !facts_.audited)
      audit_refusal(static_cast<int>(res.result_int()));
    tcp_layer().expires_after(cfg_.body_timeout);
    co_await http::async_write(stream_, res, kAwait);
    tcp_layer().expires_never();
  }

  // Routes a request; returns whether the connection may be kept open. A router only: a coroutine's frame holds every local of its body for as
  // long as it runs (GCC 12 does not share slots), and this one waits for the whole call — a
  // streamed one for minutes — so each endpoint's locals live in a coroutine of its own.
  asio::awaitable<bool> handle(Request& req) {
    std::string_view target = req.target();
    auto q = target.find('?');
    std::string path(target.substr(0, q));
    if (path == "/healthz" || path == "/readyz" || path == "/metrics" || server_->deps_.auth.is_metadata_path(path))
      co_return co_await handle_public(req, path);
    if (path == "/audit/events") co_return co_await handle_audit_events(req, q == std::string_view::npos ? std::string_view() : target.substr(q + 1));
    if (path.rfind("/v1/", 0) == 0) co_return co_await handle_openai(req, path);
    co_return co_await handle_mcp(req, path);
  }

  // The probes and the RFC 9728 metadata: public, not audited.
  asio::awaitable<bool> handle_public(Request& req, const std::string& path) {
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    auto& deps = server_->deps_;
    if (path == "/healthz" || path == "/readyz" || path == "/metrics") {
      facts_.audit = false;  // probes are not requests to the gateway's services
      if (req.method() != http::verb::get && req.method() != http::verb::head) {
        Response r = error_response(http::status::method_not_allowed, v, ka, kTransportError, path + " takes GET");
        r.set(http::field::allow, std::string_view("GET"));
        co_await send(std::move(r));
        co_return ka;
      }
      if (path == "/metrics") {
        Response r{http::status::ok, v};
        r.set(http::field::content_type, std::string_view("text/plain; version=0.0.4"));
        r.keep_alive(ka);
        r.body() = deps.metrics.render();
        r.prepare_payload();
        co_await send(std::move(r));
      } else if (path == "/healthz") {
        co_await send(json_response(http::status::ok, v, ka, status_body("ok")));
      } else {
        bool ready = !server_->shutting_down_ && (!deps.ready || deps.ready());
        std::string status = ready ? "ready" : "not ready";
        co_await send(json_response(ready ? http::status::ok : http::status::service_unavailable, v, ka,
                                    status_body(status)));
      }
      co_return ka;
    }
    // RFC 9728: where MCP clients learn which authorization server issues tokens for us. Public.
    facts_.audit = false;  // public metadata, like the probes
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      Response r = error_response(http::status::method_not_allowed, v, ka, kTransportError, path + " takes GET");
      r.set(http::field::allow, std::string_view("GET"));
      co_await send(std::move(r));
      co_return ka;
    }
    Response r = json_response(http::status::ok, v, ka, *deps.auth.protected_resource_metadata());
    // Public metadata: browser-based clients (MCP Inspector) read it cross-origin.
    r.set(http::field::access_control_allow_origin, std::string_view("*"));
    co_await send(std::move(r));
    co_return ka;
  }

  // /mcp, and the answer to any other path.
  asio::awaitable<bool> handle_mcp(Request& req, const std::string& path) {
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    if (path != "/mcp") {
      co_await send(error_response(http::status::not_found, v, ka, kTransportError,
                                   "no such endpoint: " + path + " (the MCP endpoint is /mcp)"));
      co_return ka;
    }

    // DNS-rebinding defence: a browser page from another origin may not talk to us.
    if (std::string origin = header(req, "Origin"); !origin.empty() && !origin_allowed(origin, cfg_.allowed_origins)) {
      co_await send(error_response(http::status::forbidden, v, ka, kTransportError,
                                   "Origin " + origin + " is not allowed; add it to http.allowed_origins"));
      co_return ka;
    }

    std::optional<Principal> authenticated = co_await authenticate(req, /*api_style=*/false);
    if (!authenticated) co_return ka;
    const Principal& principal = *authenticated;

    bool keep = ka;
    if (req.method() == http::verb::post) {
      keep = co_await handle_post(req, principal);
    } else if (req.method() == http::verb::get) {
      keep = co_await handle_get(req, principal);
    } else if (req.method() == http::verb::delete_) {
      keep = co_await handle_delete(req, principal);
    } else {
      Response r = error_response(http::status::method_not_allowed, v, ka, kTransportError, "method not allowed on /mcp");
      r.set(http::field::allow, std::string_view("GET, POST, DELETE"));
      co_await send(std::move(r));
    }
    co_return keep;
  }

  // What the audit record of a refused request says about it. Set as the request is read and
  // handled; send() writes the record when the answer is an error (see there).
  struct RequestFacts {
    bool audit = true;      // false for the probe endpoints
    bool audited = false;   // the request's record is written (by the pipeline or here)
    bool has_error = false; // the answer is a JSON-RPC or API error
    int rpc_code = 0;
    std::string message;
    std::string detail;     // why, when the caller is told less (a refused token)
    std::string method, path, rpc_method, tool, project;
    std::optional<Principal> principal;
  };

  void note_principal(const Request& req, const std::optional<Principal>& p) {
    facts_.principal = p;
    // A project the caller names and belongs to makes the record visible to its auditors.
    if (p)
      if (std::string pj = header(req, "X-Scigate-Project"); !pj.empty() && p->member_of(pj)) facts_.project = pj;
  }

  EdgeRefusal edge_facts(int status) {
    EdgeRefusal e;
    e.http_status = status;
    e.rpc_code = facts_.rpc_code;
    e.reason = facts_.detail.empty() ? facts_.message : facts_.detail;
    e.transport = "http";
    e.method = facts_.method;
    e.path = facts_.path;
    beast::error_code ec;
    auto remote = tcp_layer().socket().remote_endpoint(ec);
    if (!ec) e.remote = remote.address().to_string();
    e.rpc_method = facts_.rpc_method;
    e.tool = utf8_prefix(facts_.tool, kMaxAuditedName);
    e.project = facts_.project;
    if (facts_.principal) e.principal = &*facts_.principal;
    return e;
  }

  void audit_refusal(int status) {
    facts_.audited = true;
    server_->deps_.audit.append(edge_refusal_record(edge_facts(status)));
  }

  // Reading the audit trail is itself recorded.
  void audit_access(std::size_t returned, const std::vector<std::string>& projects) {
    facts_.audited = true;
    AuditRecord r = edge_refusal_record(edge_facts(200));
    r.outcome = "ok";
    r.error_code.clear();
    r.details.erase("reason");
    r.details["returned"] = returned;
    r.details["projects"] = projects;
    server_->deps_.audit.append(std::move(r));
  }

  Response api_error(http::status status, unsigned version, bool keep_alive, const std::string& code,
                     const std::string& message) {
    return json_response(status, version, keep_alive, api_error_body(code, message));
  }

  static void log_query_failure(const std::string& correlation, const std::string& detail) {
    log::error("audit_query_failed", {{"request_id", correlation}, {"detail", detail}});
  }

  // GET /audit/events: the audit trail for auditors, authenticated like /mcp.
  asio::awaitable<bool> handle_audit_events(Request& req, std::string_view query) {
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    auto& deps = server_->deps_;
    if (std::string origin = header(req, "Origin"); !origin.empty() && !origin_allowed(origin, cfg_.allowed_origins)) {
      co_await send(api_error(http::status::forbidden, v, ka, "forbidden", "Origin " + origin + " is not allowed"));
      co_return ka;
    }
    if (req.method() != http::verb::get) {
      Response r = api_error(http::status::method_not_allowed, v, ka, "method_not_allowed", "/audit/events takes GET");
      r.set(http::field::allow, std::string_view("GET"));
      co_await send(std::move(r));
      co_return ka;
    }
    std::optional<Principal> principal = co_await authenticate(req, /*api_style=*/true);
    if (!principal) co_return ka;
    if (!deps.audit_query) {
      co_await send(api_error(http::status::not_found, v, ka, "not_found", "the audit API is not enabled"));
      co_return ka;
    }
    EventsRequest er = parse_events_query(query);
    if (!er.problem.empty()) {
      co_await send(api_error(http::status::bad_request, v, ka, "invalid_arguments", er.problem));
      co_return ka;
    }
    if (auto refused = audit::restrict_to_auditor(*principal, er.project, er.filter)) {
      co_await send(api_error(http::status::forbidden, v, ka, "forbidden", *refused));
      co_return ka;
    }
    // The record of this read belongs to the project read (so that its auditors see who
    // looked), or, for a read across several, names them in details.
    const std::vector<std::string>& scope = *er.filter.projects;
    if (scope.size() == 1) facts_.project = scope.front();
    audit::AuditPage page;
    std::string failure;
    try {
      page = co_await deps.audit_query->query(er.filter);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (!failure.empty()) {
      std::string correlation = crypto::request_id();
      log_query_failure(correlation, failure);
      co_await send(api_error(http::status::internal_server_error, v, ka, "internal",
                              "internal error (correlation id " + correlation + ")"));
      co_return ka;
    }
    audit_access(page.events.size(), scope);
    co_await send(json_response(http::status::ok, v, ka, events_body(page)));
    co_return ka;
  }

  // --- the OpenAI-compatible API (server/openai) -------------------------------------------------
  Response openai_answer(const openai::ApiAnswer& a, unsigned v, bool ka) {
    Response r = json_response(static_cast<http::status>(a.status), v, ka, a.body);
    // 503 too: every replica at its concurrency limit says when to come back, and the OpenAI
    // SDKs honour Retry-After on the statuses they retry.
    if ((a.status == 429 || a.status == 503) && a.retry_after_ms > 0)
      r.set(http::field::retry_after, std::to_string((a.retry_after_ms + 999) / 1000));
    return r;
  }

  static openai::ApiAnswer openai_not_found(bool enabled, const std::string& path) {
    if (!enabled)
      return openai::api_error(404, "not_found_error", "the OpenAI-compatible API is not enabled here (no [inference] backends)");
    return openai::api_error(404, "not_found_error",
                             "no such endpoint: " + path + " (this server has /v1/chat/completions, /v1/embeddings, /v1/models)");
  }
  static openai::ApiAnswer openai_not_member(const Principal& p, const std::string& project) {
    return openai::api_error(403, "permission_error",
                             p.name + " is not a member of project " + (project.empty() ? std::string("(none)") : project));
  }

  struct OpenAiCall;
  // Everything before an OpenAI-compatible call runs: the path, the origin, the method, the
  // caller, the body. Answers refusals and /v1/models itself and returns null; otherwise the
  // call to run. Its own coroutine, so that none of this (the parsed body included) stays in
  // memory while the call runs.
  asio::awaitable<std::shared_ptr<OpenAiCall>> open_openai_call(Request& req, const std::string& path) {
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    auto& deps = server_->deps_;
    openai::OpenAiApi* api = deps.openai;
    const bool known = path == "/v1/chat/completions" || path == "/v1/embeddings" || path == "/v1/models";
    // Answers are built before `co_await send(...)`: GCC 12 destroys a temporary made by ?: inside
    // a co_await expression twice.
    if (!api || !known) {
      Response r = openai_answer(openai_not_found(api != nullptr, path), v, ka);
      co_await send(std::move(r));
      co_return nullptr;
    }
    if (std::string origin = header(req, "Origin"); !origin.empty() && !origin_allowed(origin, cfg_.allowed_origins)) {
      co_await send(openai_answer(openai::api_error(403, "permission_error", "Origin " + origin + " is not allowed"), v, ka));
      co_return nullptr;
    }
    const bool is_models = path == "/v1/models";
    if (req.method() != (is_models ? http::verb::get : http::verb::post)) {
      Response r = openai_answer(openai::api_error(405, "invalid_request_error", path + (is_models ? " takes GET" : " takes POST")), v, ka);
      r.set(http::field::allow, std::string_view(is_models ? "GET" : "POST"));
      co_await send(std::move(r));
      co_return nullptr;
    }
    std::optional<Principal> principal = co_await authenticate(req, /*api_style=*/true);
    if (!principal) co_return nullptr;
    // The project: scigate's header, or the one the OpenAI SDKs send (OpenAI-Project).
    std::string project = header(req, "X-Scigate-Project");
    if (project.empty()) project = header(req, "OpenAI-Project");
    if (is_models) {
      std::string p = project.empty() ? principal->default_project() : project;
      if (p.empty() || !principal->member_of(p)) {
        Response r = openai_answer(openai_not_member(*principal, p), v, ka);
        co_await send(std::move(r));
        co_return nullptr;
      }
      facts_.audit = false;  // a listing, like tools/list
      co_await send(json_response(http::status::ok, v, ka, api->models(*principal, p)));
      co_return nullptr;
    }

    const std::string& text = req.body();
    json body = jsonrpc::depth_within(text, server_->deps_.config.max_depth) ? json::parse(text, nullptr, false)
                                                                             : json(json::value_t::discarded);
    if (body.is_discarded()) {
      co_await send(openai_answer(openai::api_error(400, "invalid_request_error",
                                                    "the request body is not JSON (or nests deeper than " +
                                                        std::to_string(server_->deps_.config.max_depth) + " levels)"),
                                  v, ka));
      co_return nullptr;
    }
    const bool embeddings = path == "/v1/embeddings";
    auto st = std::make_shared<OpenAiCall>();
    st->embeddings = embeddings;
    if (auto refused = prepare_openai_call(*st, body, *principal, project, req)) {
      co_await send(openai_answer(*refused, v, ka));
      co_return nullptr;
    }
    facts_.tool = st->call.request.tool;
    co_return st;
  }

  asio::awaitable<bool> handle_openai(Request& req, const std::string& path) {
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    std::shared_ptr<OpenAiCall> st = co_await open_openai_call(req, path);
    if (!st) co_return ka;  // answered
    openai::OpenAiApi* api = server_->deps_.openai;
    cancel_on_disconnect_ = true;  // an OpenAI client that hangs up has given up
    if (st->call.stream) co_return co_await openai_stream(st, v, ka);
    // A named closure, not one written inside the co_await: GCC 12 destroys a lambda temporary
    // in a co_await expression twice (scripts/check-coroutine-captures.py). `st` outlives the call.
    OpenAiCall* sp = st.get();
    auto work = [sp, api]() -> asio::awaitable<void> {
      sp->out = co_await api->pipeline().run(std::move(sp->call.request));
    };
    co_await run_with_disconnect_watch(st->call.request.cancellation, std::move(work));
    facts_.audited = true;  // the pipeline recorded the call
    if (disconnected_ || st->out.cancelled) co_return false;
    co_await send(openai_answer(st->answer(), v, ka));
    co_return ka;
  }

  // One OpenAI-compatible call's state, on the heap: the handlers below and the tool's relay
  // share it (GCC 12 mishandles lambdas that capture a coroutine's locals by reference).
  struct OpenAiCall {
    openai::MappedCall call;
    std::string tool;
    bool embeddings = false;
    inference::CompletionBuilder builder;  // non-streamed chat: the chunks, merged
    json whole;                            // embeddings: the backend's answer
    ToolCallOutcome out;
    bool started = false;  // streaming: the event stream's head is out
    bool relayed = false;  // not streaming: the tool relayed the backend's answer
    std::shared_ptr<EventQueue> queue;  // streaming: chunks on their way to the client

    // A call that succeeded without relaying anything was not run again: a retry under an
    // Idempotency-Key, answered with the first call's result.
    bool replayed() const {
      return !relayed && !out.protocol_error && out.result.is_object() && !out.result.value("isError", false);
    }
    openai::ApiAnswer answer() const {
      if (embeddings) {
        if (replayed())
          return openai::api_error(409, "conflict_error",
                                   "this Idempotency-Key belongs to an embeddings request that already completed (and "
                                   "was charged); its vectors are not kept for a replay: send the request with a new key",
                                   "idempotency_key_reused");
        return openai::OpenAiApi::answer(out, call.base64 ? openai::embeddings_as_base64(whole) : whole, tool);
      }
      if (replayed()) return openai::ApiAnswer{200, openai::OpenAiApi::completion_from_result(out.result)};
      return openai::OpenAiApi::answer(out, builder.build(), tool);
    }
  };

  // Maps the body to a tool call for `principal` and fills in the transport's facts; or the
  // refusal to send.
  std::optional<openai::ApiAnswer> prepare_openai_call(OpenAiCall& st, const json& body, const Principal& principal,
                                                       const std::string& project, const Request& req) {
    auto mapped = st.embeddings ? openai::OpenAiApi::map_embeddings(body) : openai::OpenAiApi::map_chat(body);
    if (auto* bad = std::get_if<openai::ApiAnswer>(&mapped)) return *bad;
    st.call = std::move(std::get<openai::MappedCall>(mapped));
    ToolCallRequest& tc = st.call.request;
    st.tool = tc.tool;
    tc.principal = principal;
    tc.requested_project = project;
    tc.idempotency_key = header(req, "Idempotency-Key");
    if (tc.idempotency_key.size() > kMaxIdempotencyKeyChars)
      return openai::api_error(400, "invalid_request_error",
                               "the Idempotency-Key header is longer than " + std::to_string(kMaxIdempotencyKeyChars) +
                                   " characters");
    tc.request_id = crypto::request_id();
    tc.protocol_version = "openai";
    tc.era = "openai";
    tc.client_name = utf8_prefix(header(req, "User-Agent"), kMaxAuditedName);
    if (!st.call.stream) {
      OpenAiCall* p = &st;  // lives until the call ends (the handler holds it)
      tc.partial = [p](const json& piece) {
        p->relayed = true;
        if (p->embeddings) p->whole = piece;
        else p->builder.add(piece);
      };
    }
    return std::nullopt;
  }

  // Streaming: the event stream starts with the first chunk, so a call refused before it
  // (policy, credits, a backend that is down) still gets a proper status and JSON error.
  asio::awaitable<bool> openai_stream(std::shared_ptr<OpenAiCall> st, unsigned v, bool ka) {
    auto q = std::make_shared<EventQueue>(executor());
    st->queue = q;
    auto self = this->shared_from_this();
    const bool include_usage = st->call.include_usage;
    st->call.request.partial = [self, q, include_usage](const json& chunk) {
      // The usage chunk (no choices) was asked for by scigate, not necessarily by the client.
      if (!include_usage && usage_only_chunk(chunk)) return;
      self->push(q, jsonrpc::dump(chunk));
    };
    openai::OpenAiApi* api = server_->deps_.openai;
    // A named closure (see handle_openai); `st` and `q` outlive the call.
    Connection* me = this;
    OpenAiCall* sp = st.get();
    EventQueue* qp = q.get();
    auto work = [me, sp, qp, api, v]() -> asio::awaitable<void> {
      co_await (me->openai_dispatch(sp, api) && me->pump_openai(qp, v, &sp->started));
    };
    co_await run_with_disconnect_watch(st->call.request.cancellation, std::move(work));
    facts_.audited = true;
    if (disconnected_ || st->out.cancelled) co_return false;
    if (!st->started && st->replayed()) {
      // A retry under an Idempotency-Key: the first call's result, as a stream.
      co_await write_sse_header(v, "");
      std::vector<json> chunks = openai::OpenAiApi::chunks_from_result(st->out.result);
      for (const auto& chunk : chunks) {
        if (!include_usage && usage_only_chunk(chunk)) continue;
        co_await write_chunk("data: " + jsonrpc::dump(chunk) + "\n\n");
      }
      co_await write_chunk("data: [DONE]\n\n");
      co_await write_last_chunk();
      co_return !disconnected_ && ka;
    }
    if (!st->started) {
      openai::ApiAnswer a = openai::OpenAiApi::answer(st->out, json(), st->tool);
      if (a.status == 200) a = openai::api_error(502, "server_error", "the model server sent no output", "empty_answer");
      co_await send(openai_answer(a, v, ka));
      co_return ka;
    }
    const bool failed = st->out.result.is_object() && st->out.result.value("isError", false);
    if (failed) co_await write_chunk("data: " + jsonrpc::dump(openai::OpenAiApi::stream_error(st->out)) + "\n\n");
    co_await write_chunk("data: [DONE]\n\n");
    co_await write_last_chunk();
    co_return !disconnected_ && ka;
  }

  asio::awaitable<void> openai_dispatch(OpenAiCall* st, openai::OpenAiApi* api) {
    st->out = co_await api->pipeline().run(std::move(st->call.request));
    // Posted, so it lands after the chunks posted before it; it keeps the queue alive.
    asio::post(executor(), [q = st->queue] {
      q->done = true;
      q->wake.cancel();
    });
  }

  // Relays queued chunks as `data:` events; the stream's head goes out with the first one.
  asio::awaitable<void> pump_openai(EventQueue* q, unsigned version, bool* started) {
    for (;;) {
      // The call is cancelled as on a disconnect (stream_overflow() said so when it happened).
      if (q->overflow) throw boost::system::system_error(asio::error::no_buffer_space);
      while (!q->items.empty()) {
        std::string s = std::move(q->items.front());
        q->items.pop_front();
        q->bytes -= s.size();
        if (!*started) {
          co_await write_sse_header(version, "");
          *started = true;
        }
        co_await write_chunk("data: " + s + "\n\n");
      }
      if (q->done || (disconnected_ && cancel_on_disconnect_)) co_return;
      q->wake.expires_after(kKeepAlive);
      auto [ec] = co_await q->wake.async_wait(kAwait);
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) co_return;
      if (!ec && !disconnected_ && *started) co_await write_chunk(":\n\n");
    }
  }

  // The caller of /mcp or /audit/events (API key or, with [oidc], a JWT). On refusal sends 401
  // (no or a bad token) or 403 (a valid token without the required scopes) with the challenge
  // that names the RFC 9728 metadata, and returns nothing; the audit record keeps the precise
  // reason, which the caller is not told.
  asio::awaitable<std::optional<Principal>> authenticate(const Request& req, bool api_style) {
    auth::AuthResult authn = co_await server_->deps_.auth.authenticate_async(header(req, "Authorization"));
    note_principal(req, authn.principal);
    if (authn.ok()) co_return authn.principal;
    facts_.detail = authn.reason;
    const bool scope = authn.status == auth::AuthResult::Status::kInsufficientScope;
    const http::status status = scope ? http::status::forbidden : http::status::unauthorized;
    Response r = api_style ? api_error(status, req.version(), req.keep_alive(), scope ? "forbidden" : "unauthenticated",
                                       authn.message)
                           : error_response(status, req.version(), req.keep_alive(), kTransportError, authn.message);
    r.set(http::field::www_authenticate, authn.challenge);
    co_await send(std::move(r));
    co_return std::nullopt;
  }

  // GET and DELETE exist only for 2025-11-25 sessions; the 2026-07-28 era is POST-only.
  std::optional<Response> reject_sessionless(const Request& req) {
    const unsigned v = req.version();
    std::string pv = header(req, "MCP-Protocol-Version");
    if (pv == mcp::kModernVersion || header(req, "Mcp-Session-Id").empty()) {
      Response r = error_response(http::status::method_not_allowed, v, req.keep_alive(), kTransportError,
                                  "only POST is supported without an Mcp-Session-Id (and in protocol 2026-07-28)");
      r.set(http::field::allow, std::string_view("POST"));
      return r;
    }
    return std::nullopt;
  }

  std::shared_ptr<mcp::LegacySession> find_session(const Request& req, const Principal& p) {
    auto s = server_->deps_.sessions.find(header(req, "Mcp-Session-Id"));
    // A session belongs to the principal that created it; to anyone else it does not exist.
    if (s && s->owner && s->owner->owner_id() != p.owner_id()) return nullptr;
    return s;
  }

  asio::awaitable<bool> handle_delete(Request& req, const Principal& p) {
    if (auto r = reject_sessionless(req)) {
      co_await send(std::move(*r));
      co_return req.keep_alive();
    }
    auto s = find_session(req, p);
    if (!s) {
      co_await send(error_response(http::status::not_found, req.version(), req.keep_alive(), kSessionNotFound,
                                   "Session not found"));
      co_return req.keep_alive();
    }
    server_->deps_.sessions.erase(s->id());
    server_->deps_.metrics.sessions.store(static_cast<int64_t>(server_->deps_.sessions.size()));
    Response r{http::status::no_content, req.version()};
    r.keep_alive(req.keep_alive());
    r.prepare_payload();
    co_await send(std::move(r));
    co_return req.keep_alive();
  }

  asio::awaitable<bool> handle_get(Request& req, const Principal& p) {
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    if (auto r = reject_sessionless(req)) {
      co_await send(std::move(*r));
      co_return ka;
    }
    if (!accepts(header(req, "Accept"), "text/event-stream") || header(req, "Accept").empty()) {
      co_await send(error_response(http::status::not_acceptable, v, ka, kTransportError,
                                   "GET /mcp opens an SSE stream: send Accept: text/event-stream"));
      co_return ka;
    }
    auto s = find_session(req, p);
    if (!s) {
      co_await send(error_response(http::status::not_found, v, ka, kSessionNotFound, "Session not found"));
      co_return ka;
    }
    // The standalone stream: server-initiated notifications until the client or server ends it.
    auto q = std::make_shared<EventQueue>(executor());
    auto self = this->shared_from_this();
    const uint64_t outlet = s->open_outlet([self, q](const json& m) { self->push(q, jsonrpc::dump(m)); });
    if (outlet == 0) {
      co_await send(error_response(http::status::conflict, v, ka, kTransportError,
                                   "this session already has an open GET stream"));
      co_return ka;
    }
    cancel_on_disconnect_ = true;
    busy_ = false;  // long-lived and idle for shutdown purposes
    auto cancel_flag = std::make_shared<CancellationFlag>();
    std::string sid = s->id();
    co_await run_with_disconnect_watch(cancel_flag, [&]() -> asio::awaitable<void> {
      co_await write_sse_header(v, sid);
      co_await pump_events(q, [&] { return server_->shutting_down_ || !server_->deps_.sessions.find(sid); });
    });
    s->close_outlet(outlet);
    co_return false;
  }

  // What handle_post decides before anything runs — all of it without waiting: the message
  // for the dispatcher, or the refusal to send. A plain function: handle_post's frame lives as
  // long as the call (minutes for a long tool call), and each refusal's Response and strings
  // would otherwise keep a slot in it (GCC 12).
  struct PostPlan {
    std::optional<Response> refusal;
    mcp::Inbound in;  // in.message set, unless refused
    std::shared_ptr<mcp::LegacySession> new_session;
    bool notification = false;  // not a request: dispatched and answered 202
    bool modern = false;
    bool stream = false;
  };
  PostPlan plan_post(Request& req, const Principal& principal) {
    PostPlan plan;
    auto& deps = server_->deps_;
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    std::string ctype = lower(header(req, "Content-Type"));
    if (ctype.rfind("application/json", 0) != 0) {
      plan.refusal.emplace(error_response(http::status::unsupported_media_type, v, ka, kTransportError,
                                          "Content-Type must be application/json"));
      return plan;
    }
    std::string accept = header(req, "Accept");
    if (!accepts(accept, "application/json")) {
      plan.refusal.emplace(error_response(http::status::not_acceptable, v, ka, kTransportError,
                                          "Accept must include application/json (and text/event-stream for streaming)"));
      return plan;
    }
    auto parsed = jsonrpc::parse(req.body(), {cfg_.max_body_bytes, deps.config.max_depth});
    if (!parsed.message) {
      plan.refusal.emplace(error_response(http::status::bad_request, v, ka, parsed.error->code, parsed.error->message,
                                          parsed.error->id));
      return plan;
    }
    jsonrpc::Message& msg = *parsed.message;
    facts_.rpc_method = msg.method;
    if (msg.method == "tools/call") facts_.tool = string_member(msg.params, "name");
    const json* meta = nullptr;
    if (msg.params.is_object())
      if (auto it = msg.params.find("_meta"); it != msg.params.end() && it->is_object()) meta = &*it;
    const bool modern = meta && meta->contains(mcp::kMetaProtocolVersion);
    const std::string pv = header(req, "MCP-Protocol-Version");

    mcp::Inbound& in = plan.in;
    in.transport = mcp::Transport::kHttp;
    in.principal = principal;
    in.project_header = header(req, "X-Scigate-Project");
    in.idempotency_header = header(req, "Idempotency-Key");
    std::shared_ptr<mcp::LegacySession>& new_session = plan.new_session;

    if (modern) {
      if (auto bad = check_modern_headers(req, msg, *meta)) {
        plan.refusal.emplace(error_response(http::status::bad_request, v, ka, mcp::kHeaderMismatch, *bad, msg.id));
        return plan;
      }
    } else if (pv == mcp::kModernVersion) {
      if (msg.kind == jsonrpc::Kind::kRequest) {
        plan.refusal.emplace(error_response(http::status::bad_request, v, ka, jsonrpc::kInvalidParams,
                                            std::string("protocol 2026-07-28 requires params._meta[\"") +
                                                mcp::kMetaProtocolVersion + "\"] on every request",
                                            msg.id));
        return plan;
      }
    } else {
      if (!pv.empty() && !mcp::is_legacy_version(pv)) {
        plan.refusal.emplace(error_response(http::status::bad_request, v, ka, mcp::kUnsupportedProtocolVersion,
                                            "Unsupported protocol version " + pv, msg.id,
                                            unsupported_version_data(pv)));
        return plan;
      }
      if (msg.kind == jsonrpc::Kind::kRequest && msg.method == "initialize") {
        new_session = deps.sessions.create(principal);
        if (!new_session) {
          plan.refusal.emplace(error_response(http::status::service_unavailable, v, ka, kTransportError,
                                              "too many open sessions; try again later", msg.id));
          return plan;
        }
        in.session = new_session;
      } else {
        if (header(req, "Mcp-Session-Id").empty()) {
          plan.refusal.emplace(error_response(
              http::status::bad_request, v, ka, kTransportError,
              "Bad Request: Mcp-Session-Id header is required (send initialize first, or use protocol 2026-07-28)",
              msg.id));
          return plan;
        }
        in.session = find_session(req, principal);
        if (!in.session) {
          plan.refusal.emplace(error_response(http::status::not_found, v, ka, kSessionNotFound,
                                              "Session not found: it ended or expired; initialize a new one", msg.id));
          return plan;
        }
        if (!pv.empty() && in.session->initialized() && pv != in.session->version()) {
          plan.refusal.emplace(error_response(http::status::bad_request, v, ka, mcp::kUnsupportedProtocolVersion,
                                              "MCP-Protocol-Version " + pv + " does not match the session's " +
                                                  in.session->version(),
                                              msg.id));
          return plan;
        }
      }
      in.channel = in.session->id();
    }

    plan.modern = modern;
    if (msg.kind != jsonrpc::Kind::kRequest) {
      plan.notification = true;
      in.message = std::move(msg);
      return plan;
    }
    // Stream (SSE) when there will be something to say before the answer: progress for a tool
    // call, or the notifications of a subscription. Otherwise one JSON object.
    const bool wants_progress = msg.method == "tools/call" && meta && meta->contains("progressToken");
    // A modern request the dispatcher will refuse (version, _meta) gets its 400 as plain JSON.
    const bool valid_modern = modern && (*meta)[mcp::kMetaProtocolVersion] == mcp::kModernVersion &&
                              meta->contains(mcp::kMetaClientCapabilities) &&
                              (*meta)[mcp::kMetaClientCapabilities].is_object();
    plan.stream = accepts(accept, "text/event-stream") && !accept.empty() && (!modern || valid_modern) &&
                  (wants_progress || msg.method == "subscriptions/listen");
    in.message = std::move(msg);
    return plan;
  }

  asio::awaitable<bool> handle_post(Request& req, const Principal& principal) {
    auto& deps = server_->deps_;
    const unsigned v = req.version();
    const bool ka = req.keep_alive();
    PostPlan plan = plan_post(req, principal);
    if (plan.refusal) {
      co_await send(std::move(*plan.refusal));
      co_return ka;
    }
    mcp::Inbound& in = plan.in;
    const bool modern = plan.modern;
    const bool stream = plan.stream;
    std::shared_ptr<mcp::LegacySession>& new_session = plan.new_session;
    if (plan.notification) {
      co_await deps.dispatcher.handle(std::move(in));
      Response r{http::status::accepted, v};
      r.keep_alive(ka);
      r.prepare_payload();
      co_await send(std::move(r));
      co_return ka;
    }

    std::string session_header = new_session ? new_session->id() : "";
    auto flag = in.cancellation;
    // notifications/cancelled (from another POST) reaches this request through the dispatcher.
    const uint64_t generation = ++request_generation_;
    auto self_ref = this->shared_from_this();
    in.cancel = [self_ref, flag, generation] {
      flag->cancel();
      asio::post(self_ref->executor(), [self_ref, generation] {
        if (self_ref->request_generation_ == generation) self_ref->work_cancel_.emit(asio::cancellation_type::terminal);
      });
    };
    // 2026-07-28: closing the stream is the cancellation signal. 2025-11-25: a disconnect must
    // not be read as cancellation; the call runs on and its answer is dropped.
    cancel_on_disconnect_ = modern;
    mcp::Outbound out;

    if (!stream) {
      co_await run_with_disconnect_watch(flag, [&]() -> asio::awaitable<void> {
        out = co_await deps.dispatcher.handle(std::move(in));
      });
      if (out.audited) facts_.audited = true;
      if (disconnected_) co_return false;
      finish_session(new_session, out);
      // A cancelled request gets no response (the spec's rule); closing the connection is the
      // only honest way to say so over HTTP/1.1.
      if (!out.response) co_return false;
      Response r = json_response(static_cast<http::status>(out.http_status), v, ka, *out.response);
      if (new_session && out.http_status == 200 && out.response->contains("result"))
        r.set("Mcp-Session-Id", session_header);
      co_await send(std::move(r));
      co_return ka;
    }

    auto q = std::make_shared<EventQueue>(executor());
    auto self = this->shared_from_this();
    in.notify = [self, q](const json& m) { self->push(q, jsonrpc::dump(m)); };
    co_await run_with_disconnect_watch(flag, [&]() -> asio::awaitable<void> {
      co_await write_sse_header(v, session_header);
      // The dispatch and the event pump run side by side; `&&` waits for both, and a
      // disconnect cancels both.
      auto dispatch = [&]() -> asio::awaitable<void> {
        out = co_await deps.dispatcher.handle(std::move(in));
        // Posted, so it lands after notifications that were posted before it.
        asio::post(executor(), [q] {
          q->done = true;
          q->wake.cancel();
        });
      };
      co_await (dispatch() && pump_events(q, [] { return false; }));
      // A notifications/cancelled (2025-11-25) cancelled this coroutine too: clear that, or the
      // writes below would throw at once and the stream end without its last chunk (a partial
      // HTTP message to the client). The request still gets no response event.
      co_await asio::this_coro::reset_cancellation_state();
      if (out.response && !out.audited && out.response->contains("error")) {
        const json& err = (*out.response)["error"];
        facts_.rpc_code = err.value("code", 0);
        facts_.message = string_member(err, "message");
        audit_refusal(200);
      }
      if (out.response) co_await write_event(jsonrpc::dump(*out.response));
      co_await write_last_chunk();
    });
    finish_session(new_session, out);
    co_return !disconnected_ && ka;
  }

  void finish_session(const std::shared_ptr<mcp::LegacySession>& s, const mcp::Outbound& out) {
    if (!s) return;
    bool ok = out.response && out.response->contains("result");
    if (!ok) server_->deps_.sessions.erase(s->id());
    server_->deps_.metrics.sessions.store(static_cast<int64_t>(server_->deps_.sessions.size()));
  }

  // The 2026-07-28 header rules: MCP-Protocol-Version, Mcp-Method and (for named methods)
  // Mcp-Name must be present and agree with the body. Returns the problem, if any.
  std::optional<std::string> check_modern_headers(const Request& req, const jsonrpc::Message& msg, const json& meta) {
    std::string pv = header(req, "MCP-Protocol-Version");
    const json& body_pv = meta[mcp::kMetaProtocolVersion];
    if (pv.empty()) return "Header mismatch: the MCP-Protocol-Version header is required";
    if (!body_pv.is_string() || pv != body_pv.get<std::string>())
      return "Header mismatch: MCP-Protocol-Version header value '" + pv + "' does not match body value '" +
             (body_pv.is_string() ? body_pv.get<std::string>() : body_pv.dump()) + "'";
    if (msg.kind != jsonrpc::Kind::kRequest) return std::nullopt;
    std::string method = header(req, "Mcp-Method");
    if (method.empty()) return "Header mismatch: the Mcp-Method header is required";
    if (method != msg.method)
      return "Header mismatch: Mcp-Method header value '" + method + "' does not match body value '" + msg.method + "'";
    // The tasks extension routes tasks/get, tasks/update and tasks/cancel by task id.
    const bool task_method = msg.method == "tasks/get" || msg.method == "tasks/update" || msg.method == "tasks/cancel";
    const char* name_field = msg.method == "tools/call" || msg.method == "prompts/get" ? "name"
                             : msg.method == "resources/read"                         ? "uri"
                             : task_method                                            ? "taskId"
                                                                                      : nullptr;
    if (name_field) {
      std::string raw = header(req, "Mcp-Name");
      if (raw.empty()) return "Header mismatch: the Mcp-Name header is required for " + msg.method;
      auto name = decode_header_value(raw);
      if (!name) return "Header mismatch: the Mcp-Name header has invalid characters or bad base64";
      const json& body_name = msg.params.is_object() ? msg.params.value(name_field, json()) : json();
      if (!body_name.is_string() || *name != body_name.get<std::string>())
        return "Header mismatch: Mcp-Name header value '" + *name + "' does not match body value '" +
               (body_name.is_string() ? body_name.get<std::string>() : body_name.dump()) + "'";
    }
    return std::nullopt;
  }

  // --- SSE ------------------------------------------------------------------------------------
  void push(const std::shared_ptr<EventQueue>& q, std::string data) {
    auto ex = executor();
    auto deliver = [self = this->shared_from_this(), q, data = std::move(data),
                    limit = cfg_.stream_backlog_bytes]() mutable {
      if (q->overflow) return;
      if (q->bytes + data.size() > limit) {
        // The client reads slower than the events come: not memory without end for it. The
        // write it is stuck in is stopped, so that the call ends now, not at the body timeout.
        q->overflow = true;
        self->stream_overflow();
      } else {
        q->bytes += data.size();
        q->items.push_back(std::move(data));
      }
      q->wake.cancel();
    };
    asio::post(ex, std::move(deliver));
  }

  // A stream whose client let more than stream_backlog_bytes pile up: it is taken for gone, and
  // the write it is stuck in (if any) fails at once.
  void stream_overflow() {
    boost::system::error_code ec;
    auto remote = tcp_layer().socket().remote_endpoint(ec);
    log::warn("http_stream_backlog_full",
              {{"limit_bytes", cfg_.stream_backlog_bytes}, {"remote", ec ? std::string() : remote.address().to_string()},
               {"detail", "the client read the stream slower than it was produced; the stream was ended (and its call "
                          "cancelled, as on a disconnect, where a disconnect cancels it)"}});
    disconnected_ = true;
    tcp_layer().socket().cancel(ec);
  }

  asio::awaitable<void> write_sse_header(unsigned version, const std::string& session_id) {
    http::response<http::empty_body> res{http::status::ok, version};
    res.set(http::field::server, std::string_view("scigate"));
    res.set(http::field::content_type, std::string_view("text/event-stream"));
    res.set(http::field::cache_control, std::string_view("no-cache"));
    res.set("X-Accel-Buffering", std::string_view("no"));
    if (!session_id.empty()) res.set("Mcp-Session-Id", session_id);
    res.chunked(true);
    http::response_serializer<http::empty_body> sr{res};
    server_->deps_.metrics.record_http(200);
    tcp_layer().expires_after(cfg_.body_timeout);
    auto [ec, n] = co_await http::async_write_header(stream_, sr, whole_write());
    tcp_layer().expires_never();
    if (ec) throw boost::system::system_error(ec);
  }

  // A failed write means the client is gone: that ends the work when a disconnect is a
  // cancellation, and otherwise only stops further writes.
  asio::awaitable<void> write_chunk(const std::string& data) {
    if (disconnected_ && !cancel_on_disconnect_) co_return;
    // A client that stops reading must not hold the connection: writes share the body timeout.
    tcp_layer().expires_after(cfg_.body_timeout);
    auto [ec, n] = co_await asio::async_write(stream_, http::make_chunk(asio::buffer(data)), whole_write());
    tcp_layer().expires_never();
    if (ec) {
      disconnected_ = true;
      if (cancel_on_disconnect_) throw boost::system::system_error(ec);
    }
  }
  asio::awaitable<void> write_event(const std::string& data) {
    co_await write_chunk("event: message\ndata: " + data + "\n\n");
  }
  asio::awaitable<void> write_last_chunk() {
    if (disconnected_) co_return;
    tcp_layer().expires_after(cfg_.body_timeout);
    auto [ec, n] = co_await asio::async_write(stream_, http::make_chunk_last(), whole_write());
    tcp_layer().expires_never();
    if (ec) disconnected_ = true;
  }

  // Writes queued events until the queue is marked done (or `stop()` says so), with a comment
  // line as keep-alive when quiet.
  template <class Stop>
  asio::awaitable<void> pump_events(std::shared_ptr<EventQueue> q, Stop stop) {
    for (;;) {
      if (q->overflow) {  // as a failed write would
        if (cancel_on_disconnect_) throw boost::system::system_error(asio::error::no_buffer_space);
        co_return;
      }
      while (!q->items.empty()) {
        std::string s = std::move(q->items.front());
        q->items.pop_front();
        q->bytes -= s.size();
        co_await write_event(s);
      }
      if (q->done || stop() || (disconnected_ && cancel_on_disconnect_)) co_return;
      q->wake.expires_after(kKeepAlive);
      auto [ec] = co_await q->wake.async_wait(kAwait);
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) co_return;
      if (!ec && !disconnected_) co_await write_chunk(":\n\n");
    }
  }

  // Runs `work` while watching the socket: if the client closes the connection the request is
  // cancelled (the MCP cancellation signal for Streamable HTTP). Bytes that arrive meanwhile (a
  // pipelined request) are kept for the next read.
  template <class Work>
  asio::awaitable<void> run_with_disconnect_watch(std::shared_ptr<CancellationFlag> flag, Work work) {
    auto self = this->shared_from_this();
    auto watch_done = std::make_shared<asio::steady_timer>(executor(), asio::steady_timer::time_point::max());
    auto watching = std::make_shared<bool>(true);
    watch_stopped_ = false;
    // A plain completion handler, not a coroutine: the watch lives as long as the call, and a
    // spawned coroutine costs two frames and a thread object for every call in flight.
    // It only has to see EOF or the first bytes of a pipelined request (the next read_header
    // continues from them), so it reads little and, when nothing is pending, frees the block
    // the request was read into first: a connection that streams for minutes keeps ~512 bytes.
    if (buffer_.size() == 0) buffer_.shrink_to_fit();
    auto buf = buffer_.prepare(512);
    WatchHandler watch{self, flag, watch_done, watching};
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      tcp_layer().socket().async_read_some(buf, std::move(watch));
    } else {
      stream_.async_read_some(buf, std::move(watch));
    }
    try {
      co_await asio::co_spawn(executor(), work(), asio::bind_cancellation_slot(work_cancel_.slot(), asio::use_awaitable));
    } catch (const std::exception& e) {
      if (!disconnected_) log::debug("http_stream_error", {{"detail", e.what()}});
      disconnected_ = true;
    }
    if (*watching) {
      beast::error_code ec;
      watch_stopped_ = true;
      tcp_layer().socket().cancel(ec);
      while (*watching) co_await watch_done->async_wait(kAwait);
    }
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
      // A TLS read cancelled mid-record leaves the stream unusable: answer, then close.
      reusable_ = false;
    }
  }

  // Completes the disconnect watch (run_with_disconnect_watch).
  struct WatchHandler {
    std::shared_ptr<Connection> self;
    std::shared_ptr<CancellationFlag> flag;
    std::shared_ptr<asio::steady_timer> watch_done;
    std::shared_ptr<bool> watching;
    void operator()(const boost::system::error_code& ec, std::size_t n) const {
      if (!ec) {
        self->buffer_.commit(n);
      } else if (!self->watch_stopped_) {
        // The peer closed or reset, or shutdown closed the socket.
        log::debug("http_client_gone", {{"detail", ec.message()}});
        self->disconnected_ = true;
        if (self->cancel_on_disconnect_) {
          flag->cancel();
          self->work_cancel_.emit(asio::cancellation_type::terminal);
        }
      }
      *watching = false;
      watch_done->cancel();
    }
  };

  std::shared_ptr<HttpServer::Impl> server_;
  Stream stream_;
  const HttpConfig& cfg_;
  beast::flat_buffer buffer_;
  uint64_t id_ = 0;
  bool busy_ = false;
  bool disconnected_ = false;
  bool reusable_ = true;
  bool watch_stopped_ = false;  // we cancelled the watch ourselves: not a disconnect
  bool cancel_on_disconnect_ = true;
  uint64_t request_generation_ = 0;
  RequestFacts facts_;
  asio::cancellation_signal work_cancel_;
};

asio::awaitable<void> HttpServer::Impl::accept_loop(std::shared_ptr<Impl> self) {
  for (;;) {
    auto [ec, socket] = co_await self->acceptor_.async_accept(asio::make_strand(self->io_), kAwait);
    if (ec) {
      if (self->shutting_down_ || ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) co_return;
      // EMFILE and friends: back off briefly rather than spin.
      log::warn("accept_failed", {{"detail", ec.message()}});
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(50));
      co_await t.async_wait(kAwait);
      continue;
    }
    if (self->connection_count() >= self->deps_.config.http.max_connections) {
      beast::error_code ignore;
      socket.close(ignore);  // over capacity: refuse fast instead of queueing unboundedly
      continue;
    }
    socket.set_option(tcp::no_delay(true));
    auto ex = socket.get_executor();
    if (self->tls_) {
      using TlsStream = beast::ssl_stream<beast::tcp_stream>;
      auto conn = std::make_shared<Connection<TlsStream>>(self, TlsStream(beast::tcp_stream(std::move(socket)), *self->tls_));
      asio::co_spawn(ex, Connection<TlsStream>::run(conn), asio::detached);
    } else {
      auto conn = std::make_shared<Connection<beast::tcp_stream>>(self, beast::tcp_stream(std::move(socket)));
      asio::co_spawn(ex, Connection<beast::tcp_stream>::run(conn), asio::detached);
    }
  }
}

HttpServer::HttpServer(asio::io_context& io, HttpDeps deps) : impl_(std::make_shared<Impl>(io, std::move(deps))) {}
HttpServer::~HttpServer() = default;
tcp::endpoint HttpServer::listen(const std::string& host, uint16_t port) { return impl_->listen(host, port); }
void HttpServer::start() { impl_->start(); }
void HttpServer::shutdown(std::function<void()> done) { impl_->shutdown(std::move(done)); }

}  // namespace scigate::transport
