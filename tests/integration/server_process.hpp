#pragma once
// Runs the real scigate binary for integration tests: a fresh directory from `scigate init`,
// a config the test may extend, the server on 127.0.0.1 port 0, and raw HTTP helpers that let
// a test send exactly the bytes it wants.
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace scigate::itest {

using nlohmann::json;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string binary();
// A child process with its stdin and stdout on pipes.
struct Child {
  pid_t pid;
  int in_fd;   // write end of its stdin
  int out_fd;  // read end of its stdout
};
Child spawn(const std::vector<std::string>& argv);
// Closes its stdin, reads all of its stdout into *out, waits; returns the exit code (-1 on signal).
int finish(Child& child, std::string* out);
// Runs a command to completion; returns exit code and stdout (stderr goes to the test log).
int run_command(const std::vector<std::string>& argv, std::string* out = nullptr, const std::string& stdin_data = "");

class ServerProcess {
 public:
  // `extra_config` is TOML appended to the config `scigate init` wrote.
  explicit ServerProcess(const std::string& extra_config = "", bool start_now = true);
  ~ServerProcess();

  void start();
  // SIGTERM, then wait; returns the exit status (or -1 on signal).
  int stop(std::chrono::milliseconds wait = std::chrono::seconds(20));
  // SIGKILL, as a crash or the OOM killer would, and reap it.
  void kill_hard();
  bool running();

  uint16_t port() const { return port_; }
  const std::string& user_key() const { return user_key_; }
  const std::string& service_key() const { return service_key_; }
  const std::filesystem::path& dir() const { return dir_; }
  std::string config_path() const { return (dir_ / "scigate.toml").string(); }
  std::string log() const;
  // Waits until the server's log contains `text` (audit lines are written asynchronously).
  bool wait_for_log(const std::string& text, std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  pid_t pid() const { return pid_; }
  void merge_config(const std::string& extra);

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::string user_key_, service_key_;
};

// `scigate key create --principal NAME` against the server's config: the new API key (throws
// when the command fails).
std::string create_key(const ServerProcess& s, const std::string& principal);

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  json json_body() const { return json::parse(body, nullptr, false); }
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// One keep-alive HTTP/1.1 connection.
class Client {
 public:
  explicit Client(uint16_t port);
  Reply request(http::verb verb, const std::string& target, const std::map<std::string, std::string>& headers,
                const std::string& body = "");
  void send_raw(const std::string& bytes);
  // Reads a response head only (for SSE streams), leaving the body on the socket.
  Reply read_head();
  // Reads the next SSE "data:" payload from a chunked stream (nullopt at end of stream).
  std::optional<json> next_event(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  bool closed_by_peer(std::chrono::milliseconds within);
  void close();
  tcp::socket& socket() { return socket_; }

 private:
  asio::io_context io_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::buffer_body>> stream_parser_;
  std::string sse_pending_;
};

// Header sets for the two eras.
std::map<std::string, std::string> modern_headers(const std::string& key, const std::string& method,
                                                  const std::string& name = "");
std::map<std::string, std::string> legacy_headers(const std::string& key, const std::string& session = "");
json modern_request(json id, const std::string& method, json params = json::object());
// The value of one sample of GET /metrics (a series without labels); 0 when absent.
int64_t metric(uint16_t port, const std::string& series);
// A 2025-11-25 initialize request (id 1).
json legacy_initialize();
// The bytes of a POST /mcp, for tests that read the answer as a stream or drop the connection.
std::string raw_post(const std::map<std::string, std::string>& headers, const std::string& body);

}  // namespace scigate::itest
