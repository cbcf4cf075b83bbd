#include "server_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

namespace scigate::itest {

// SCIGATE_TEST_BINARY runs the suite against another build of the server, e.g. a GCC build with
// ASan (docs/CONTRIBUTING.md): the clang ASan stage cannot see GCC's own coroutine bugs.
std::string binary() {
  if (const char* b = std::getenv("SCIGATE_TEST_BINARY"); b && *b) return b;
  return SCIGATE_BINARY;
}

Child spawn(const std::vector<std::string>& argv) {
  int out_pipe[2], in_pipe[2];
  if (pipe(out_pipe) != 0 || pipe(in_pipe) != 0) throw std::runtime_error("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    close(in_pipe[1]);
    close(out_pipe[0]);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  return Child{pid, in_pipe[1], out_pipe[0]};
}

int finish(Child& child, std::string* out) {
  close(child.in_fd);
  std::string collected;
  char buf[4096];
  ssize_t n;
  while ((n = read(child.out_fd, buf, sizeof buf)) > 0) collected.append(buf, static_cast<std::size_t>(n));
  close(child.out_fd);
  int status = 0;
  waitpid(child.pid, &status, 0);
  if (out) *out = collected;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int run_command(const std::vector<std::string>& argv, std::string* out, const std::string& stdin_data) {
  Child child = spawn(argv);
  if (!stdin_data.empty()) (void)!write(child.in_fd, stdin_data.data(), stdin_data.size());
  return finish(child, out);
}

namespace {
std::string line_after(const std::string& text, const std::string& marker) {
  auto p = text.find(marker);
  if (p == std::string::npos) return "";
  p = text.find('\n', p);
  auto e = text.find('\n', p + 1);
  std::string line = text.substr(p + 1, e - p - 1);
  line.erase(0, line.find_first_not_of(' '));
  return line;
}
}  // namespace

// Puts each "[section]" block of `extra` right under the same header of the config (TOML does
// not allow a table twice), or at the end when the config has no such table.
void ServerProcess::merge_config(const std::string& extra) {
  std::ifstream in(config_path());
  std::stringstream ss;
  ss << in.rdbuf();
  std::string cfg = ss.str();
  std::istringstream lines(extra);
  std::string line, section;
  std::map<std::string, std::string> blocks;
  std::vector<std::string> order;
  while (std::getline(lines, line)) {
    if (!line.empty() && line[0] == '[') {
      section = line;
      if (!blocks.count(section)) order.push_back(section);
      blocks[section];
      continue;
    }
    blocks[section] += line + "\n";
  }
  for (const auto& sec : order) {
    auto pos = sec.rfind("[[", 0) == 0 ? std::string::npos : cfg.find("\n" + sec + "\n");
    if (pos == std::string::npos) {
      cfg += "\n" + sec + "\n" + blocks[sec];
      continue;
    }
    // Within the section, a key already set is replaced, a new one inserted after the header.
    std::size_t body = pos + sec.size() + 2;
    std::istringstream kv(blocks[sec]);
    std::string entry;
    while (std::getline(kv, entry)) {
      auto eq = entry.find('=');
      if (eq == std::string::npos) continue;
      std::string key = entry.substr(0, entry.find_first_of(" =", 0));
      std::size_t end = cfg.find("\n[", body);
      if (end == std::string::npos) end = cfg.size();
      std::size_t line = body;
      bool replaced = false;
      while (line < end) {
        std::size_t nl = cfg.find('\n', line);
        if (nl == std::string::npos) nl = cfg.size();
        std::string existing = cfg.substr(line, nl - line);
        if (existing.rfind(key + " ", 0) == 0 || existing.rfind(key + "=", 0) == 0) {
          cfg.replace(line, nl - line, entry);
          replaced = true;
          break;
        }
        line = nl + 1;
      }
      if (!replaced) cfg.insert(body, entry + "\n");
    }
  }
  std::ofstream o(config_path());
  o << cfg;
}

ServerProcess::ServerProcess(const std::string& extra_config, bool start_now) {
  std::random_device rd;
  dir_ = std::filesystem::temp_directory_path() / ("scigate-it-" + std::to_string(rd()) + std::to_string(getpid()));
  std::string out;
  if (run_command({binary(), "init", dir_.string()}, &out) != 0) throw std::runtime_error("scigate init failed");
  user_key_ = line_after(out, "Demo API key for user 'demo'");
  service_key_ = line_after(out, "Service key for 'lab-controller'");
  if (!extra_config.empty()) merge_config(extra_config);
  if (start_now) start();
}

void ServerProcess::start() {
  auto port_file = dir_ / "port";
  std::filesystem::remove(port_file);
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open((dir_ / "server.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 2);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    std::string b = binary(), cfg = config_path(), pf = port_file.string();
    execl(b.c_str(), b.c_str(), "serve", "--config", cfg.c_str(), "--http", "127.0.0.1:0", "--port-file", pf.c_str(),
          nullptr);
    _exit(127);
  }
  for (int i = 0; i < 500; ++i) {
    if (std::filesystem::exists(port_file)) {
      std::ifstream in(port_file);
      int p = 0;
      in >> p;
      port_ = static_cast<uint16_t>(p);
      return;
    }
    if (!running()) throw std::runtime_error("server exited during start-up:\n" + log());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error("server did not start:\n" + log());
}

bool ServerProcess::running() {
  if (pid_ <= 0) return false;
  int status;
  return waitpid(pid_, &status, WNOHANG) == 0;
}

int ServerProcess::stop(std::chrono::milliseconds wait) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + wait;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -2;
}

void ServerProcess::kill_hard() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) stop(std::chrono::seconds(5));
  // SCIGATE_KEEP_TEST_SERVERS=1 keeps the directory (config, database, server.log) to debug a failure.
  if (const char* keep = std::getenv("SCIGATE_KEEP_TEST_SERVERS"); keep && *keep == '1') {
    std::fprintf(stderr, "kept test server directory %s\n", dir_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

bool ServerProcess::wait_for_log(const std::string& text, std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (log().find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

std::string ServerProcess::log() const {
  std::ifstream in(dir_ / "server.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Client::Client(uint16_t port) : socket_(io_) { socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port)); }

Reply Client::request(http::verb verb, const std::string& target, const std::map<std::string, std::string>& headers,
                      const std::string& body) {
  http::request<http::string_body> req{verb, target, 11};
  req.set(http::field::host, "127.0.0.1");
  for (auto& [k, v] : headers) req.set(k, v);
  if (!body.empty() || verb == http::verb::post) {
    req.body() = body;
    req.prepare_payload();
  }
  http::write(socket_, req);
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  http::read(socket_, buffer_, parser);
  auto res = parser.release();
  Reply r;
  r.status = static_cast<int>(res.result_int());
  for (auto& f : res) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(c));
    r.headers[name] = std::string(f.value());
  }
  r.body = res.body();
  return r;
}

void Client::send_raw(const std::string& bytes) { asio::write(socket_, asio::buffer(bytes)); }

Reply Client::read_head() {
  stream_parser_.emplace();
  stream_parser_->body_limit(boost::none);
  http::read_header(socket_, buffer_, *stream_parser_);
  Reply r;
  r.status = static_cast<int>(stream_parser_->get().result_int());
  for (auto& f : stream_parser_->get()) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(c));
    r.headers[name] = std::string(f.value());
  }
  return r;
}

std::optional<json> Client::next_event(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // A complete event ends with a blank line.
    auto end = sse_pending_.find("\n\n");
    while (end != std::string::npos) {
      std::string ev = sse_pending_.substr(0, end);
      sse_pending_.erase(0, end + 2);
      std::string data;
      std::istringstream lines(ev);
      std::string line;
      while (std::getline(lines, line))
        if (line.rfind("data: ", 0) == 0) data += line.substr(6);
      if (!data.empty()) return json::parse(data);
      end = sse_pending_.find("\n\n");
    }
    if (stream_parser_->is_done()) return std::nullopt;
    if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("no SSE event in time");
    char buf[4096];
    stream_parser_->get().body().data = buf;
    stream_parser_->get().body().size = sizeof buf;
    beast::error_code ec;
    http::read_some(socket_, buffer_, *stream_parser_, ec);
    if (ec && ec != http::error::need_buffer) {
      if (ec == http::error::end_of_stream) return std::nullopt;
      throw beast::system_error(ec);
    }
    sse_pending_.append(buf, sizeof buf - stream_parser_->get().body().size);
  }
}

bool Client::closed_by_peer(std::chrono::milliseconds within) {
  socket_.non_blocking(true);
  auto deadline = std::chrono::steady_clock::now() + within;
  char c;
  while (std::chrono::steady_clock::now() < deadline) {
    beast::error_code ec;
    socket_.read_some(asio::buffer(&c, 1), ec);
    if (ec == asio::error::eof || ec == asio::error::connection_reset) return true;
    if (ec && ec != asio::error::would_block) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

void Client::close() {
  beast::error_code ec;
  socket_.shutdown(tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

std::map<std::string, std::string> modern_headers(const std::string& key, const std::string& method,
                                                  const std::string& name) {
  std::map<std::string, std::string> h{{"Authorization", "Bearer " + key},
                                       {"Content-Type", "application/json"},
                                       {"Accept", "application/json, text/event-stream"},
                                       {"MCP-Protocol-Version", "2026-07-28"},
                                       {"Mcp-Method", method}};
  if (!name.empty()) h["Mcp-Name"] = name;
  return h;
}

std::map<std::string, std::string> legacy_headers(const std::string& key, const std::string& session) {
  std::map<std::string, std::string> h{{"Authorization", "Bearer " + key},
                                       {"Content-Type", "application/json"},
                                       {"Accept", "application/json, text/event-stream"}};
  if (!session.empty()) {
    h["Mcp-Session-Id"] = session;
    h["MCP-Protocol-Version"] = "2025-11-25";
  }
  return h;
}

json modern_request(json id, const std::string& method, json params) {
  params["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2026-07-28";
  params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json::object();
  return json{{"jsonrpc", "2.0"}, {"id", std::move(id)}, {"method", method}, {"params", std::move(params)}};
}

json legacy_initialize() {
  return json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", "initialize"},
              {"params", {{"protocolVersion", "2025-11-25"}, {"capabilities", json::object()},
                          {"clientInfo", {{"name", "itest"}, {"version", "1"}}}}}};
}

std::string raw_post(const std::map<std::string, std::string>& headers, const std::string& body) {
  std::string raw = "POST /mcp HTTP/1.1\r\nHost: x\r\n";
  for (auto& [k, v] : headers) raw += k + ": " + v + "\r\n";
  return raw + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string create_key(const ServerProcess& s, const std::string& principal) {
  std::string out;
  if (run_command({binary(), "key", "create", "--config", s.config_path(), "--principal", principal}, &out) != 0)
    throw std::runtime_error("scigate key create --principal " + principal + " failed");
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

int64_t metric(uint16_t port, const std::string& series) {
  Client c(port);
  auto r = c.request(http::verb::get, "/metrics", {});
  auto p = r.body.find("\n" + series + " ");  // a sample line, not its # HELP
  if (p == std::string::npos) return 0;
  return std::stoll(r.body.substr(p + series.size() + 2));
}

}  // namespace scigate::itest
