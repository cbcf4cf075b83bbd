#pragma once
// Runs scigate_inference_double (tests/support/inference_double.cpp), the vLLM / llama.cpp test
// double, as a child process of a test or benchmark: started with fork/exec on 127.0.0.1 port 0,
// its port read from its first stdout line ("listening <port>"), stopped by its PID (SIGTERM,
// then SIGKILL after 5 s) when the object goes away. control() and stats() speak its control
// API; request() is a small blocking HTTP client for checks that should not go through the
// code under test. No Catch dependency: failures throw std::runtime_error.
//
// The binary's path comes from InferenceDoubleOptions::binary, else from the environment
// variable SCIGATE_INFERENCE_DOUBLE_BIN, else from the compile definition SCIGATE_INFERENCE_DOUBLE
// (set for scigate_integration_tests).
//
// Thread safety: one object per test; its methods are not meant to be called concurrently.
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace scigate::test {

struct InferenceDoubleOptions {
  std::string flavor = "vllm";      // "vllm" | "llamacpp"
  std::vector<std::string> models;  // served ids; empty: the double's default ("test-model")
  std::string api_key;              // empty: no authentication
  int threads = 2;
  int max_model_len = 0;            // 0: the double's default (4096)
  std::string error_format;         // vLLM: "flat" | "nested"; empty: the default (nested)
  int embedding_dim = 0;            // 0: the default (8)
  std::vector<std::string> extra_args;
  std::string binary;               // empty: SCIGATE_INFERENCE_DOUBLE
};

class InferenceDouble {
 public:
  struct Reply {
    int status = 0;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;
    nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
  };

  explicit InferenceDouble(InferenceDoubleOptions o = {}) : opt_(std::move(o)) { start(); }
  ~InferenceDouble() { stop(); }
  InferenceDouble(const InferenceDouble&) = delete;
  InferenceDouble& operator=(const InferenceDouble&) = delete;

  pid_t pid() const { return pid_; }
  uint16_t port() const { return port_; }
  const InferenceDoubleOptions& options() const { return opt_; }
  // "http://127.0.0.1:<port>" (no trailing slash; vLLM and llama.cpp both serve /v1 below it).
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // POST /_control; throws unless the double applied it (204).
  void control(const nlohmann::json& j) {
    Reply r = request("POST", "/_control", j.dump(), {{"Content-Type", "application/json"}});
    if (r.status != 204) throw std::runtime_error("inference double refused control " + j.dump() + ": " + r.body);
  }
  void reset() { control(nlohmann::json::parse(R"({"reset":true})")); }
  nlohmann::json stats() { return request("GET", "/_control/stats").json(); }
  nlohmann::json behaviour() { return request("GET", "/_control").json(); }

  // Resident memory of the double in KiB (from /proc), -1 when unknown.
  long rss_kib() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
  }

  // One blocking HTTP/1.1 exchange on a fresh connection (10 s receive timeout).
  Reply request(const std::string& method, const std::string& target, const std::string& body = "",
                const std::map<std::string, std::string>& headers = {}) const {
    namespace beast = boost::beast;
    namespace http = beast::http;
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket sock(io);
    sock.connect({boost::asio::ip::make_address("127.0.0.1"), port_});
    timeval tv{10, 0};
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [k, v] : headers) req.set(k, v);
    req.body() = body;
    if (!body.empty() || method == "POST") req.prepare_payload();
    http::write(sock, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(sock, buf, res);
    Reply r;
    r.status = static_cast<int>(res.result_int());
    for (const auto& f : res) {
      std::string name(f.name_string());
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      r.headers[name] = std::string(f.value());
    }
    r.body = std::move(res.body());
    boost::system::error_code ec;
    sock.shutdown(boost::asio::ip::tcp::socket::shutdown_both, ec);
    return r;
  }

  // SIGTERM, then SIGKILL if it has not exited within 5 s; idempotent.
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      int st = 0;
      while (::waitpid(pid_, &st, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &st, 0);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      pid_ = -1;
    }
    if (out_fd_ >= 0) {
      ::close(out_fd_);
      out_fd_ = -1;
    }
  }

 private:
  void start() {
    std::string bin = opt_.binary;
    // A sanitizer build of the double, say, without rebuilding the tests.
    if (const char* env = std::getenv("SCIGATE_INFERENCE_DOUBLE_BIN"); bin.empty() && env && *env) bin = env;
#ifdef SCIGATE_INFERENCE_DOUBLE
    if (bin.empty()) bin = SCIGATE_INFERENCE_DOUBLE;
#endif
    if (bin.empty()) throw std::runtime_error("no path to scigate_inference_double (SCIGATE_INFERENCE_DOUBLE)");
    std::vector<std::string> args = {bin, "--flavor", opt_.flavor, "--host", "127.0.0.1", "--port", "0", "--threads",
                                     std::to_string(opt_.threads)};
    if (!opt_.models.empty()) {
      std::string m;
      for (const auto& id : opt_.models) m += (m.empty() ? "" : ",") + id;
      args.insert(args.end(), {"--models", m});
    }
    if (!opt_.api_key.empty()) args.insert(args.end(), {"--api-key", opt_.api_key});
    if (opt_.max_model_len > 0) args.insert(args.end(), {"--max-model-len", std::to_string(opt_.max_model_len)});
    if (!opt_.error_format.empty()) args.insert(args.end(), {"--error-format", opt_.error_format});
    if (opt_.embedding_dim > 0) args.insert(args.end(), {"--embedding-dim", std::to_string(opt_.embedding_dim)});
    args.insert(args.end(), opt_.extra_args.begin(), opt_.extra_args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    pid_ = ::fork();
    if (pid_ < 0) {
      ::close(fds[0]);
      ::close(fds[1]);
      throw std::runtime_error("fork failed");
    }
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);  // dup2 clears FD_CLOEXEC on the copy
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_fd_ = fds[0];

    // The first line is "listening <port>".
    std::string line;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (line.find('\n') == std::string::npos) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      pollfd p{out_fd_, POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) break;
      char buf[256];
      ssize_t n = ::read(out_fd_, buf, sizeof buf);
      if (n <= 0) break;
      line.append(buf, static_cast<std::size_t>(n));
    }
    const std::string prefix = "listening ";
    if (line.rfind(prefix, 0) != 0 || line.find('\n') == std::string::npos) {
      int st = 0;
      std::string why = "no 'listening <port>' line";
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        why = WIFEXITED(st) ? "exited with " + std::to_string(WEXITSTATUS(st)) : "killed by a signal";
        pid_ = -1;
      }
      stop();
      throw std::runtime_error("scigate_inference_double (" + bin + ") did not start: " + why + "; stdout: " + line);
    }
    port_ = static_cast<uint16_t>(std::stoi(line.substr(prefix.size())));
  }

  InferenceDoubleOptions opt_;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  uint16_t port_ = 0;
};

}  // namespace scigate::test
