// The real server over real sockets: what each kind of bad or good request gets back.
#include <catch2/catch.hpp>

#include <sys/resource.h>

#include <regex>
#include <thread>

#include "server_process.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

// One server shared by the tests in this file that do not need a special config.
ServerProcess& shared_server() {
  static ServerProcess s("[limits]\nmax_message_bytes = 65536\n");
  return s;
}

json call(Client& c, const std::string& key, const json& req) {
  std::string name = req["params"].value("name", "");
  auto r = c.request(verb::post, "/mcp", modern_headers(key, req["method"], name), req.dump());
  return r.json_body();
}

}  // namespace

TEST_CASE("http: health, readiness and metrics endpoints") {
  auto& s = shared_server();
  Client c(s.port());
  auto h = c.request(verb::get, "/healthz", {});
  CHECK(h.status == 200);
  CHECK(h.json_body()["status"] == "ok");
  CHECK(c.request(verb::get, "/readyz", {}).status == 200);
  auto m = c.request(verb::get, "/metrics", {});
  CHECK(m.status == 200);
  CHECK(m.body.find("# TYPE scigate_tool_calls_total counter") != std::string::npos);
  CHECK(m.body.find("scigate_http_connections") != std::string::npos);
  CHECK(c.request(verb::post, "/healthz", {}).status == 405);
  CHECK(c.request(verb::get, "/nope", {}).status == 404);
}

TEST_CASE("http: /metrics counts the state writer's commits") {
  auto& s = shared_server();
  int items = metric(s.port(), "scigate_state_items_total");
  int transactions = metric(s.port(), "scigate_state_transactions_total");
  Client c(s.port());
  auto r = call(c, s.user_key(), modern_request(7, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "m"}}}}));
  REQUIRE(r["result"]["isError"] == false);
  // The call is answered once its audit record is committed: the counters already show it.
  CHECK(metric(s.port(), "scigate_state_items_total") > items);
  CHECK(metric(s.port(), "scigate_state_transactions_total") > transactions);
  CHECK(metric(s.port(), "scigate_state_failed_items_total") == 0);
  auto m = c.request(verb::get, "/metrics", {});
  for (const char* series : {"scigate_state_fsyncs_total", "scigate_state_polls_total", "scigate_state_poll_hits_total",
                             "scigate_state_lock_waits_total", "scigate_state_retried_batches_total"})
    CHECK(m.body.find(std::string("# TYPE ") + series + " counter\n" + series + " ") != std::string::npos);
  for (const char* series : {"scigate_credit_memory_holds_total", "scigate_credit_yields_total",
                             "scigate_credit_reloads_total"})
    CHECK(m.body.find(std::string("# TYPE ") + series + " counter\n" + series + " ") != std::string::npos);
  CHECK(m.body.find("# TYPE scigate_credit_ledger_alone gauge\n") != std::string::npos);
}

TEST_CASE("http: authentication at the edge") {
  auto& s = shared_server();
  Client c(s.port());
  auto req = modern_request(1, "tools/list");
  auto h = modern_headers("", "tools/list");
  h.erase("Authorization");
  auto r = c.request(verb::post, "/mcp", h, req.dump());
  CHECK(r.status == 401);
  CHECK(r.header("www-authenticate").rfind("Bearer", 0) == 0);
  CHECK(r.json_body()["error"]["message"].get<std::string>().find("Authorization: Bearer") != std::string::npos);

  auto bad = c.request(verb::post, "/mcp", modern_headers("sgk_000000000000_nope", "tools/list"), req.dump());
  CHECK(bad.status == 401);
  CHECK(bad.header("www-authenticate").find("invalid_token") != std::string::npos);

  auto ok = c.request(verb::post, "/mcp", modern_headers(s.service_key(), "tools/list"), req.dump());
  CHECK(ok.status == 200);
  auto who = call(c, s.service_key(), modern_request(2, "tools/call", {{"name", "whoami"}}));
  CHECK(who["result"]["structuredContent"]["principal"] == "lab-controller");
  CHECK(who["result"]["structuredContent"]["kind"] == "service");
}

TEST_CASE("http: Origin is checked against the allow-list") {
  auto& s = shared_server();
  Client c(s.port());
  auto req = modern_request(1, "tools/list");
  auto h = modern_headers(s.user_key(), "tools/list");
  h["Origin"] = "https://evil.example";
  auto r = c.request(verb::post, "/mcp", h, req.dump());
  CHECK(r.status == 403);
  CHECK(r.json_body()["error"]["message"].get<std::string>().find("evil.example") != std::string::npos);
  h["Origin"] = "http://localhost:6274";
  CHECK(c.request(verb::post, "/mcp", h, req.dump()).status == 200);
}

TEST_CASE("http: malformed bodies get clear JSON-RPC errors and the connection survives") {
  auto& s = shared_server();
  Client c(s.port());
  auto h = modern_headers(s.user_key(), "tools/list");
  struct Case {
    std::string body;
    int status;
    int code;
  };
  std::string deep = R"({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":)" + std::string(100, '[') +
                     std::string(100, ']') + "}}";
  std::vector<Case> cases = {
      {"{not json", 400, -32700},
      {R"({"jsonrpc":"2.0","id":1,"method":"tools/li)", 400, -32700},
      {std::string("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xc3\x28\"}"), 400, -32700},
      {deep, 400, -32600},
      {R"([{"jsonrpc":"2.0","id":1,"method":"tools/list"}])", 400, -32600},
      {R"({"jsonrpc":"1.0","id":1,"method":"tools/list"})", 400, -32600},
      {R"({"jsonrpc":"2.0","id":{"a":1},"method":"tools/list"})", 400, -32600},
      {R"("just a string")", 400, -32600},
  };
  for (const auto& k : cases) {
    INFO(k.body.substr(0, 60));
    auto r = c.request(verb::post, "/mcp", h, k.body);
    CHECK(r.status == k.status);
    auto j = r.json_body();
    REQUIRE(j.is_object());
    CHECK(j["error"]["code"] == k.code);
    CHECK(j["error"]["message"].get<std::string>().size() > 5);
  }
  // Still serving on the same connection.
  CHECK(c.request(verb::post, "/mcp", h, modern_request(9, "tools/list").dump()).status == 200);
}

TEST_CASE("http: wrong content type, accept and oversize bodies") {
  auto& s = shared_server();
  {
    Client c(s.port());
    auto h = modern_headers(s.user_key(), "tools/list");
    h["Content-Type"] = "text/plain";
    CHECK(c.request(verb::post, "/mcp", h, modern_request(1, "tools/list").dump()).status == 415);
    h["Content-Type"] = "application/json";
    h["Accept"] = "text/html";
    CHECK(c.request(verb::post, "/mcp", h, modern_request(1, "tools/list").dump()).status == 406);
  }
  {
    Client c(s.port());
    std::string big = R"({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"pad":")" + std::string(70000, 'x') + "\"}}";
    auto r = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/list"), big);
    CHECK(r.status == 413);
    CHECK(r.json_body()["error"]["message"].get<std::string>().find("65536") != std::string::npos);
  }
  Client again(s.port());
  CHECK(again.request(verb::get, "/healthz", {}).status == 200);
}

TEST_CASE("http: 2026-07-28 header rules") {
  auto& s = shared_server();
  Client c(s.port());
  auto req = modern_request(1, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "x"}}}});
  auto body = req.dump();
  auto code_of = [&](std::map<std::string, std::string> h) {
    auto r = c.request(verb::post, "/mcp", h, body);
    return std::make_pair(r.status, r.json_body()["error"].value("code", 0));
  };
  auto good = modern_headers(s.user_key(), "tools/call", "echo");
  CHECK(c.request(verb::post, "/mcp", good, body).json_body()["result"]["structuredContent"]["text"] == "x");

  auto h = good;
  h.erase("MCP-Protocol-Version");
  CHECK(code_of(h) == std::make_pair(400, -32020));
  h = good;
  h["MCP-Protocol-Version"] = "2025-11-25";
  CHECK(code_of(h) == std::make_pair(400, -32020));
  h = good;
  h.erase("Mcp-Method");
  CHECK(code_of(h) == std::make_pair(400, -32020));
  h = good;
  h["Mcp-Method"] = "tools/list";
  CHECK(code_of(h) == std::make_pair(400, -32020));
  h = good;
  h.erase("Mcp-Name");
  CHECK(code_of(h) == std::make_pair(400, -32020));
  h = good;
  h["Mcp-Name"] = "whoami";
  auto mismatch = c.request(verb::post, "/mcp", h, body);
  CHECK(mismatch.status == 400);
  CHECK(mismatch.json_body()["error"]["message"].get<std::string>().find("'whoami'") != std::string::npos);
  h = good;
  h["Mcp-Name"] = "=?base64?ZWNobw==?=";  // "echo"
  CHECK(c.request(verb::post, "/mcp", h, body).status == 200);

  // Unsupported version in both header and body.
  auto old = req;
  old["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2030-01-01";
  h = good;
  h["MCP-Protocol-Version"] = "2030-01-01";
  auto uv = c.request(verb::post, "/mcp", h, old.dump());
  CHECK(uv.status == 400);
  CHECK(uv.json_body()["error"]["code"] == -32022);
  CHECK(uv.json_body()["error"]["data"]["supported"][0] == "2026-07-28");

  // The modern header without _meta in the body.
  auto bare = json{{"jsonrpc", "2.0"}, {"id", 3}, {"method", "tools/list"}};
  auto r = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/list"), bare.dump());
  CHECK(r.status == 400);
  CHECK(r.json_body()["error"]["code"] == -32602);

  // Unknown method: 404 with -32601.
  auto um = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "prompts/list"),
                      modern_request(4, "prompts/list").dump());
  CHECK(um.status == 404);
  CHECK(um.json_body()["error"]["code"] == -32601);

  // GET and DELETE are not part of this era.
  auto g = modern_headers(s.user_key(), "x");
  CHECK(c.request(verb::get, "/mcp", g).status == 405);
  CHECK(c.request(verb::delete_, "/mcp", g).status == 405);
}

TEST_CASE("http: 2025-11-25 sessions") {
  auto& s = shared_server();
  Client c(s.port());
  json init = legacy_initialize();
  auto r = c.request(verb::post, "/mcp", legacy_headers(s.user_key()), init.dump());
  REQUIRE(r.status == 200);
  std::string sid = r.header("mcp-session-id");
  CHECK(std::regex_match(sid, std::regex("[0-9a-f]{32}")));
  CHECK(r.json_body()["result"]["protocolVersion"] == "2025-11-25");

  auto note = c.request(verb::post, "/mcp", legacy_headers(s.user_key(), sid),
                        R"({"jsonrpc":"2.0","method":"notifications/initialized"})");
  CHECK(note.status == 202);
  CHECK(note.body.empty());

  json list{{"jsonrpc", "2.0"}, {"id", 2}, {"method", "tools/list"}};
  auto l = c.request(verb::post, "/mcp", legacy_headers(s.user_key(), sid), list.dump());
  CHECK(l.status == 200);
  CHECK(l.json_body()["result"]["tools"].size() == 20);  // demo policy: echo, get_usage, sleep, whoami, 6 job tools, run_quantum_circuit, query_model_registry, get_model, 7 data tools

  auto no_sid = c.request(verb::post, "/mcp", legacy_headers(s.user_key()), list.dump());
  CHECK(no_sid.status == 400);
  CHECK(no_sid.json_body()["error"]["message"].get<std::string>().find("Mcp-Session-Id") != std::string::npos);
  CHECK(c.request(verb::post, "/mcp", legacy_headers(s.user_key(), std::string(32, 'a')), list.dump()).status == 404);
  // Someone else's session does not exist for you.
  CHECK(c.request(verb::post, "/mcp", legacy_headers(s.service_key(), sid), list.dump()).status == 404);
  // A version header that contradicts the session.
  auto h = legacy_headers(s.user_key(), sid);
  h["MCP-Protocol-Version"] = "2025-03-26";
  CHECK(c.request(verb::post, "/mcp", h, list.dump()).status == 400);

  // The standalone GET stream: one per session.
  Client stream(s.port());
  auto gh = legacy_headers(s.user_key(), sid);
  gh["Accept"] = "text/event-stream";
  stream.send_raw("GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s.user_key() +
                  "\r\nAccept: text/event-stream\r\nMcp-Session-Id: " + sid + "\r\n\r\n");
  auto head = stream.read_head();
  CHECK(head.status == 200);
  CHECK(head.header("content-type") == "text/event-stream");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(c.request(verb::get, "/mcp", gh).status == 409);

  auto del = c.request(verb::delete_, "/mcp", legacy_headers(s.user_key(), sid));
  CHECK(del.status == 204);
  CHECK(c.request(verb::post, "/mcp", legacy_headers(s.user_key(), sid), list.dump()).status == 404);
  CHECK(c.request(verb::delete_, "/mcp", legacy_headers(s.user_key(), sid)).status == 404);
}

TEST_CASE("http: progress streams as SSE and closing the stream cancels the call") {
  auto& s = shared_server();
  int before = metric(s.port(), R"(scigate_tool_calls_total{tool="sleep",outcome="cancelled"})");
  auto req = modern_request(5, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 30}, {"steps", 300}}}});
  req["params"]["_meta"]["progressToken"] = "pt";
  Client c(s.port());
  auto h = modern_headers(s.user_key(), "tools/call", "sleep");
  c.send_raw(raw_post(h, req.dump()));
  auto head = c.read_head();
  REQUIRE(head.status == 200);
  CHECK(head.header("content-type") == "text/event-stream");
  auto ev = c.next_event();
  REQUIRE(ev);
  CHECK((*ev)["method"] == "notifications/progress");
  CHECK((*ev)["params"]["progressToken"] == "pt");
  c.close();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  int after = before;
  while (std::chrono::steady_clock::now() < deadline && after == before) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    after = metric(s.port(), R"(scigate_tool_calls_total{tool="sleep",outcome="cancelled"})");
  }
  CHECK(after == before + 1);
  CHECK(s.wait_for_log("\"outcome\":\"cancelled\""));
}

TEST_CASE("http: a request pipelined behind a running call is served after it, whole") {
  // The first call runs under the disconnect watch, which reads whatever arrives meanwhile in
  // small pieces; the second request (larger than one such read) must come out intact.
  auto& s = shared_server();
  auto slow = modern_request(1, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 0.2}, {"steps", 1}}}});
  std::string text(3000, 'p');
  auto echo = modern_request(2, "tools/call", {{"name", "echo"}, {"arguments", {{"text", text}}}});
  Client c(s.port());
  c.send_raw(raw_post(modern_headers(s.user_key(), "tools/call", "sleep"), slow.dump()) +
             raw_post(modern_headers(s.user_key(), "tools/call", "echo"), echo.dump()));
  beast::flat_buffer buffer;
  for (int id : {1, 2}) {
    http::response<http::string_body> res;
    http::read(c.socket(), buffer, res);
    REQUIRE(res.result_int() == 200);
    auto body = json::parse(res.body());
    CHECK(body["id"] == id);
    CHECK(body["result"]["isError"] == false);
    if (id == 2) CHECK(body["result"]["structuredContent"]["text"] == text);
  }
}

TEST_CASE("http: a short SSE call ends with its response and the connection is reusable") {
  auto& s = shared_server();
  auto req = modern_request(6, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 0.05}, {"steps", 2}}}});
  req["params"]["_meta"]["progressToken"] = 17;
  Client c(s.port());
  auto r = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/call", "sleep"), req.dump());
  CHECK(r.header("content-type") == "text/event-stream");
  auto last = r.body.rfind("data: ");
  REQUIRE(last != std::string::npos);
  auto final_msg = json::parse(r.body.substr(last + 6, r.body.find('\n', last) - last - 6));
  CHECK(final_msg["id"] == 6);
  CHECK(final_msg["result"]["structuredContent"]["slept_seconds"] == 0.05);
  CHECK(r.body.find("\"progress\":2") != std::string::npos);
  CHECK(c.request(verb::get, "/healthz", {}).status == 200);
}

TEST_CASE("http: thousands of idle connections do not stop others being served") {
  auto& s = shared_server();
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  const int n = std::min<int>(3000, static_cast<int>(rl.rlim_cur) - 100);
  asio::io_context io;
  std::vector<tcp::socket> idle;
  for (int i = 0; i < n; ++i) {
    idle.emplace_back(io);
    idle.back().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), s.port()));
  }
  Client c(s.port());
  auto who = call(c, s.user_key(), modern_request(1, "tools/call", {{"name", "whoami"}}));
  CHECK(who["result"]["structuredContent"]["principal"] == "demo");
  for (auto& sock : idle) sock.close();
}

TEST_CASE("http: a slow client is cut off at the header timeout while others are served") {
  ServerProcess s("[http]\nheader_timeout_s = 1\n");
  Client slow(s.port());
  slow.send_raw("POST /mcp HTTP/1.1\r\nHost: x\r\n");
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    slow.send_raw("X-Slow: 1\r\n");
  }
  Client other(s.port());
  CHECK(other.request(verb::get, "/healthz", {}).status == 200);
  CHECK(slow.closed_by_peer(std::chrono::seconds(3)));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(4));
}

TEST_CASE("http: a kept-alive connection's next header is bounded by the header timeout too") {
  ServerProcess s("[http]\nheader_timeout_s = 1\n");
  Client c(s.port());
  REQUIRE(c.request(verb::get, "/healthz", {}).status == 200);
  // The next request starts at once but trickles: the idle timeout (120 s) bounds only the wait
  // for its first byte.
  c.send_raw("POST /mcp HTTP/1.1\r\nHost: x\r\n");
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    c.send_raw("X-Slow: 1\r\n");
  }
  CHECK(c.closed_by_peer(std::chrono::seconds(3)));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(4));
  // An idle kept-alive connection is not cut at the header timeout.
  Client idle(s.port());
  REQUIRE(idle.request(verb::get, "/healthz", {}).status == 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  CHECK(idle.request(verb::get, "/healthz", {}).status == 200);
}

namespace {
// Sends `head` and then `filler` bytes that never end a line; what the server answered before it
// closed the connection (empty if it did not close within 5 s).
std::string flood_unended_line(uint16_t port, const std::string& head, std::size_t filler) {
  Client c(port);
  c.send_raw(head);
  std::string piece(4096, 'a');
  beast::error_code ec;
  for (std::size_t sent = 0; sent < filler && !ec; sent += piece.size())
    asio::write(c.socket(), asio::buffer(piece), ec);  // (fails once the server has closed)
  std::string answer;
  c.socket().non_blocking(true);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    std::size_t n = c.socket().read_some(asio::buffer(buf), ec);
    answer.append(buf, n);
    if (ec && ec != asio::error::would_block) return answer.empty() ? "closed" : answer;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return "";
}
}  // namespace

TEST_CASE("http: a chunked body's size line and trailer cannot grow the read buffer without bound") {
  auto& s = shared_server();
  const std::string head = "POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  // A chunk extension that never ends (before any authentication): cut off after about the
  // header limit, not read until the body timeout.
  std::string a = flood_unended_line(s.port(), head + "1;", 256 * 1024);
  REQUIRE_FALSE(a.empty());
  if (a != "closed") {
    CHECK(a.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(a.find("chunk size line or the trailer") != std::string::npos);
  }
  // A trailer that never ends, after the last chunk.
  std::string b = flood_unended_line(s.port(), head + "0\r\nX-Trailer: ", 256 * 1024);
  REQUIRE_FALSE(b.empty());
  if (b != "closed") CHECK(b.rfind("HTTP/1.1 400", 0) == 0);
  // A chunked body of ordinary framing, larger than that buffer, still gets through.
  Client c(s.port());
  std::string body = modern_request(1, "tools/call", {{"name", "echo"}, {"arguments", {{"text", std::string(60000, 'x')}}}}).dump();
  std::string raw = "POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n";
  for (const auto& [k, v] : modern_headers(s.user_key(), "tools/call", "echo")) raw += k + ": " + v + "\r\n";
  raw += "\r\n";
  for (std::size_t at = 0; at < body.size(); at += 10000) {
    std::string part = body.substr(at, 10000);
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", part.size());
    raw += size + part + "\r\n";
  }
  raw += "0\r\n\r\n";
  c.send_raw(raw);
  CHECK(c.read_head().status == 200);
  Client other(s.port());
  CHECK(other.request(verb::get, "/healthz", {}).status == 200);
}

TEST_CASE("http: SIGTERM lets an in-flight call finish, then the server exits cleanly") {
  ServerProcess s;
  std::optional<Reply> reply;
  std::thread t([&] {
    Client c(s.port());
    auto req = modern_request(1, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 1.0}}}});
    reply = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/call", "sleep"), req.dump());
  });
  Client idle(s.port());  // an idle keep-alive connection must not hold up shutdown
  // Nor may a 2025-11-25 session's open GET stream.
  Client init(s.port());
  json hello = legacy_initialize();
  std::string sid = init.request(verb::post, "/mcp", legacy_headers(s.user_key()), hello.dump()).header("mcp-session-id");
  REQUIRE_FALSE(sid.empty());
  Client stream(s.port());
  stream.send_raw("GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s.user_key() +
                  "\r\nAccept: text/event-stream\r\nMcp-Session-Id: " + sid + "\r\n\r\n");
  REQUIRE(stream.read_head().status == 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto t0 = std::chrono::steady_clock::now();
  int code = s.stop();
  t.join();
  CHECK(code == 0);
  REQUIRE(reply);
  CHECK(reply->status == 200);
  CHECK(reply->json_body()["result"]["structuredContent"]["slept_seconds"] == 1.0);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
}

TEST_CASE("http: optional TLS serves the same endpoint") {
  ServerProcess s("", false);
  auto cert = (s.dir() / "cert.pem").string(), key = (s.dir() / "key.pem").string();
  REQUIRE(run_command({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                       "-days", "1", "-subj", "/CN=127.0.0.1"}) == 0);
  s.merge_config("[http]\ntls_cert = \"" + cert + "\"\ntls_key = \"" + key + "\"\n");
  s.start();
  auto req = modern_request(1, "tools/call", {{"name", "whoami"}});
  std::string out;
  std::string url = "https://127.0.0.1:" + std::to_string(s.port()) + "/mcp";
  int rc = run_command({"/usr/bin/curl", "-s", "--cacert", cert, url, "-H", "Authorization: Bearer " + s.user_key(), "-H",
                        "Content-Type: application/json", "-H", "Accept: application/json, text/event-stream", "-H",
                        "MCP-Protocol-Version: 2026-07-28", "-H", "Mcp-Method: tools/call", "-H", "Mcp-Name: whoami",
                        "--data-binary", req.dump()},
                       &out);
  REQUIRE(rc == 0);
  auto j = json::parse(out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["result"]["structuredContent"]["principal"] == "demo");
  // Plain HTTP to the TLS port is not served.
  CHECK(run_command({"/usr/bin/curl", "-s", "-m", "3", "http://127.0.0.1:" + std::to_string(s.port()) + "/healthz"}, &out) != 0);
}

TEST_CASE("http: 2025-11-25 cancellation is notifications/cancelled, not a dropped connection") {
  auto& s = shared_server();
  Client c(s.port());
  json init = legacy_initialize();
  std::string sid = c.request(verb::post, "/mcp", legacy_headers(s.user_key()), init.dump()).header("mcp-session-id");
  REQUIRE_FALSE(sid.empty());
  const std::string cancelled = R"(scigate_tool_calls_total{tool="sleep",outcome="cancelled"})";
  const std::string ok = R"(scigate_tool_calls_total{tool="sleep",outcome="ok"})";

  // A notifications/cancelled on another POST stops the running call.
  int before = metric(s.port(), cancelled);
  std::optional<Reply> reply;
  auto t0 = std::chrono::steady_clock::now();
  std::thread t([&] {
    Client caller(s.port());
    json call{{"jsonrpc", "2.0"}, {"id", "long-1"}, {"method", "tools/call"},
              {"params", {{"name", "sleep"}, {"arguments", {{"seconds", 20}}}}}};
    try {
      reply = caller.request(verb::post, "/mcp", legacy_headers(s.user_key(), sid), call.dump());
    } catch (...) {
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  json cancel{{"jsonrpc", "2.0"}, {"method", "notifications/cancelled"}, {"params", {{"requestId", "long-1"}, {"reason", "test"}}}};
  CHECK(c.request(verb::post, "/mcp", legacy_headers(s.user_key(), sid), cancel.dump()).status == 202);
  t.join();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK(metric(s.port(), cancelled) == before + 1);
  if (reply) CHECK(reply->body.find("slept_seconds") == std::string::npos);

  // Dropping the connection does not cancel in this era: the call runs to the end.
  int ok_before = metric(s.port(), ok);
  {
    Client dropper(s.port());
    json call{{"jsonrpc", "2.0"}, {"id", "short-1"}, {"method", "tools/call"},
              {"params", {{"name", "sleep"}, {"arguments", {{"seconds", 0.5}}}}}};
    auto h = legacy_headers(s.user_key(), sid);
    dropper.send_raw(raw_post(h, call.dump()));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    dropper.close();
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (metric(s.port(), ok) == ok_before && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(metric(s.port(), ok) == ok_before + 1);
}

TEST_CASE("http: refused requests are audited, an invalid modern request gets its 400 even when it asked for SSE") {
  ServerProcess s("[server]\nlog_level = \"warn\"\n");  // audit lines survive a quiet log level
  Client c(s.port());
  auto req = modern_request(1, "tools/call", {{"name", "sleep"}, {"arguments", {{"seconds", 0}}}});
  req["params"]["_meta"]["progressToken"] = "p";
  req["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2031-01-01";
  auto h = modern_headers(s.user_key(), "tools/call", "sleep");
  h["MCP-Protocol-Version"] = "2031-01-01";
  auto r = c.request(verb::post, "/mcp", h, req.dump());
  CHECK(r.status == 400);
  CHECK(r.header("content-type") == "application/json");
  CHECK(r.json_body()["error"]["code"] == -32022);

  h = modern_headers("sgk_nobody_nothing", "tools/list");
  CHECK(c.request(verb::post, "/mcp", h, modern_request(2, "tools/list").dump()).status == 401);
  CHECK(c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/list"), "{oops").status == 400);
  CHECK(s.wait_for_log(R"("outcome":"unauthenticated")"));
  CHECK(s.wait_for_log(R"("outcome":"invalid")"));
  CHECK(s.wait_for_log(R"("principal":"demo")"));
}

TEST_CASE("http: SIGHUP announces a changed tool list on open session streams") {
  auto& s = shared_server();
  Client c(s.port());
  json init = legacy_initialize();
  std::string sid = c.request(verb::post, "/mcp", legacy_headers(s.user_key()), init.dump()).header("mcp-session-id");
  Client stream(s.port());
  stream.send_raw("GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s.user_key() +
                  "\r\nAccept: text/event-stream\r\nMcp-Session-Id: " + sid + "\r\n\r\n");
  REQUIRE(stream.read_head().status == 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  kill(s.pid(), SIGHUP);
  auto ev = stream.next_event(std::chrono::seconds(5));
  REQUIRE(ev);
  CHECK((*ev)["method"] == "notifications/tools/list_changed");
}
