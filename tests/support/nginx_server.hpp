#pragma once
// A real nginx (Debian's package) on 127.0.0.1 for the data-staging tests and benchmark: a
// fresh prefix directory with its own config, one process (master_process off) started here and
// stopped by its PID, on a free port. It serves a document root and some misbehaviours:
//
//   /files/...          the document root (Range requests, ETag, Last-Modified, sendfile)
//   /slow/...           the same at `slow_rate` bytes per second (nginx limit_rate)
//   /upload/...         PUT (dav_methods) into <root>/upload
//   /private/...        the root, only with "Authorization: Bearer s3cret"
//   /redirect/ok        302 to /files/data.bin (relative)
//   /redirect/loopback  302 to http://127.0.0.2:<port>/files/data.bin
//   /redirect/metadata  302 to http://169.254.169.254/latest/meta-data/
//   /redirect/loop      302 to itself
//   /v1/...             with `proxy_port`: a reverse proxy to http://127.0.0.1:<proxy_port>/v1/...
//                       (HTTP/1.1 keep-alive upstream, no buffering, no access log) - the
//                       reference proxy hop of bench/inference
//
// Lying Content-Lengths need a server that breaks HTTP on purpose, which nginx will not do:
// tests/support/lying_http.py (Debian's /usr/bin/python3) covers those.
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace scigate::test {

class NginxServer {
 public:
  // The server, or nullptr with *why when nginx is not installed (tests skip, loudly).
  static std::unique_ptr<NginxServer> start(std::string* why, int64_t slow_rate = 200 * 1024, uint16_t proxy_port = 0);
  ~NginxServer();

  uint16_t port() const { return port_; }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  const std::filesystem::path& root() const { return root_; }  // served as /files/
  std::filesystem::path access_log() const { return dir_ / "access.log"; }
  pid_t pid() const { return pid_; }

 private:
  NginxServer() = default;
  std::filesystem::path dir_, root_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

// tests/support/lying_http.py on 127.0.0.1: /short (announces more than it sends), /grows
// (HEAD announces less than GET sends), /norange (ignores Range), /stall (sends half, then
// nothing). nullptr with *why without /usr/bin/python3.
class LyingServer {
 public:
  static std::unique_ptr<LyingServer> start(const std::string& script, std::string* why);
  ~LyingServer();
  uint16_t port() const { return port_; }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }

 private:
  LyingServer() = default;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace scigate::test
