#include "tests/support/nginx_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace scigate::test {
namespace fs = std::filesystem;

namespace {

uint16_t free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

bool accepts(uint16_t port) {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(s);
  return ok;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void stop_child(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 200; ++i) {
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

}  // namespace

std::unique_ptr<NginxServer> NginxServer::start(std::string* why, int64_t slow_rate, uint16_t proxy_port) {
  const char* binary = "/usr/sbin/nginx";
  if (::access(binary, X_OK) != 0) {
    *why = "nginx is not installed (scripts/install-deps.sh --test installs it)";
    return nullptr;
  }
  std::unique_ptr<NginxServer> s(new NginxServer());
  char tmpl[] = "/tmp/scigate-nginx-XXXXXX";
  s->dir_ = ::mkdtemp(tmpl);
  s->root_ = s->dir_ / "files";
  fs::create_directories(s->root_);
  fs::create_directories(s->dir_ / "upload");
  fs::create_directories(s->dir_ / "tmp");
  s->port_ = free_port();
  std::string d = s->dir_.string(), r = s->root_.string(), port = std::to_string(s->port_);
  // The reverse proxy as one would run it in front of an inference server: connections to the
  // upstream kept alive and reused, answers passed on as they come (streams), and neither side's
  // connections closed after nginx's default 1,000 requests (a benchmark's pooled connections
  // would otherwise be reopened in its measured window).
  std::string upstream, proxy;
  if (proxy_port != 0) {
    upstream = "  upstream inference { server 127.0.0.1:" + std::to_string(proxy_port) +
               "; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }\n";
    proxy = "    location /v1/ { proxy_pass http://inference; proxy_http_version 1.1; "
            "proxy_set_header Connection \"\"; proxy_buffering off; access_log off; }\n";
  }
  std::ofstream(s->dir_ / "nginx.conf") << "daemon off;\n"
                                           "master_process off;\n"
                                           "worker_processes 1;\n"
                                           "pid " << d << "/nginx.pid;\n"
                                           "error_log " << d << "/error.log warn;\n"
                                           "events { worker_connections 256; }\n"
                                           "http {\n"
                                           "  access_log " << d << "/access.log;\n"
                                           "  client_body_temp_path " << d << "/tmp/body;\n"
                                           "  proxy_temp_path " << d << "/tmp/proxy;\n"
                                           "  fastcgi_temp_path " << d << "/tmp/fastcgi;\n"
                                           "  uwsgi_temp_path " << d << "/tmp/uwsgi;\n"
                                           "  scgi_temp_path " << d << "/tmp/scgi;\n"
                                           "  default_type application/octet-stream;\n"
                                           "  sendfile on;\n"
                                           "  tcp_nopush on;\n"
                                           "  keepalive_timeout 30;\n"
                                           "  keepalive_requests 100000000;\n"
                                        << upstream <<
                                           "  server {\n"
                                           "    listen 127.0.0.1:" << port << ";\n"
                                        << proxy <<
                                           "    location /files/ { alias " << r << "/; }\n"
                                           "    location /slow/ { alias " << r << "/; limit_rate " << slow_rate << "; }\n"
                                           "    location /upload/ { root " << d << "; dav_methods PUT; "
                                           "create_full_put_path on; client_max_body_size 0; }\n"
                                           "    location /private/ { alias " << r << "/; "
                                           "if ($http_authorization != \"Bearer s3cret\") { return 401; } }\n"
                                           "    location = /redirect/ok { return 302 /files/data.bin; }\n"
                                           "    location = /redirect/loopback { return 302 http://127.0.0.2:" << port
                                        << "/files/data.bin; }\n"
                                           "    location = /redirect/metadata { return 302 "
                                           "http://169.254.169.254/latest/meta-data/; }\n"
                                           "    location = /redirect/loop { return 302 /redirect/loop; }\n"
                                           "  }\n"
                                           "}\n";
  pid_t pid = ::fork();
  if (pid == 0) {
    int log = ::open((s->dir_ / "stderr.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(log, 1);
    ::dup2(log, 2);
    std::string conf = (s->dir_ / "nginx.conf").string(), err = (s->dir_ / "error.log").string();
    ::execl(binary, "nginx", "-p", d.c_str(), "-c", conf.c_str(), "-e", err.c_str(), nullptr);
    ::_exit(127);
  }
  s->pid_ = pid;
  for (int i = 0; i < 500; ++i) {
    if (accepts(s->port_)) return s;
    if (::waitpid(pid, nullptr, WNOHANG) == pid) {
      s->pid_ = -1;
      throw std::runtime_error("nginx exited at start: " + slurp(s->dir_ / "stderr.log") + slurp(s->dir_ / "error.log"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("nginx did not start listening on port " + port);
}

NginxServer::~NginxServer() {
  stop_child(pid_);
  std::error_code ec;
  if (std::getenv("SCIGATE_KEEP_NGINX") == nullptr) fs::remove_all(dir_, ec);
}

std::unique_ptr<LyingServer> LyingServer::start(const std::string& script, std::string* why) {
  const char* python = "/usr/bin/python3";
  if (::access(python, X_OK) != 0) {
    *why = "/usr/bin/python3 is missing";
    return nullptr;
  }
  int out[2];
  if (::pipe(out) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::close(out[0]);
    ::execl(python, "python3", script.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(out[1]);
  std::unique_ptr<LyingServer> s(new LyingServer());
  s->pid_ = pid;
  std::string line;
  char c;
  while (::read(out[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(out[0]);
  s->port_ = static_cast<uint16_t>(std::atoi(line.c_str()));
  if (s->port_ == 0) throw std::runtime_error("lying_http.py did not start");
  return s;
}

LyingServer::~LyingServer() { stop_child(pid_); }

}  // namespace scigate::test
