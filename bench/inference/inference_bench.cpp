// What scigate adds in front of an inference server (issue 6), measured against the same test
// backend in the same run:
//
//  1. added latency, non-streaming, open loop at a fixed rate: the same short chat sent
//     (a) straight to the backend's /v1/chat/completions, (b) through scigate's
//     /v1/chat/completions, (c) through scigate's MCP tools/call call_inference; the three kinds
//     take turns in one evenly spaced schedule (the order shuffled within each round), so that
//     noise hits them alike. scigate receives --rate calls/s (b and c), the backend 1.5x that.
//     With nginx installed (--nginx 1, default), a fourth kind in the same schedule: (d) through
//     nginx as a plain reverse proxy to the same backend (keep-alive upstream, no buffering, no
//     access log; pinned and reniced as scigate is) - what one proxy hop with no governance
//     costs on this machine, the reference scigate's added latency and CPU are compared with.
//     Each kind then gets --rate/2 calls/s, the backend 2x --rate.
//     1b (--echo 1): (b) against MCP's no-op echo tool in the same kind of schedule: what the
//     governed pipeline costs without a backend. (--credits off runs scigate without the ledger.)
//  2. added time to first token, streaming: (a) straight with stream=true vs (b) scigate's
//     /v1/chat/completions with stream=true, alternating, scigate again at --rate streams/s.
//     MCP's tools/call answers when the generation is over (progress notifications come every
//     16 tokens and only with a progressToken), so it has no first token to time.
//  3. N concurrent streams (default 1,000, 50 tokens 50 ms apart): first straight to the backend
//     (the reference), then through scigate's /v1/chat/completions; every stream must end with
//     all its tokens and [DONE]; scigate's and the backend's peak RSS and threads meanwhile.
//
//   ninja -C build scigate_inference_bench
//   build/scigate_inference_bench [--rate 500] [--seconds 20] [--streams 1000]
//       [--first-token-ms 0] [--token-ms 0] (the backend's pace in phases 1 and 2; see Options)
//       [--durability commit,fsync] [--pin 1] [--threads N] [--credits on] [--echo 0] [--nice -20]
//       [--nginx 1] [--json FILE]
//
// The backend is tests/support/inference_double.cpp (vLLM flavor, first token and latency 0
// for 1 and 2), started by its fixture; scigate is the real binary in a directory made by
// `scigate init` (the integration tests' ServerProcess), with the double as its one backend,
// log_level warn, and the demo policy whose tokens-per-minute limit is raised out of reach (the
// rate-limit check still runs). Credits are on (the demo project's 1,000), so every call makes a
// hold, a settlement and an audit record. With --pin 1 (default) scigate runs on CPU 1 with
// `threads = 1`, this program and the backend on CPU 0. With --nice (default -20 as root) all
// three run at that priority, as does the session's scheduler autogroup (restored at exit).
//
// The client is one thread (Asio, Beast's parser) with keep-alive connections opened before
// the measured window: latency is the wall time from writing the request to the last byte of
// the answer; time to first token is from writing the request to the read that brought the
// first generated token ("w0"). The pacing lag (actual send time minus planned) is reported so
// that a client that fell behind shows. Exit status 1 if any request failed.
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <nlohmann/json.hpp>

#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_options.hpp"
#include "tests/integration/server_process.hpp"
#include "tests/support/inference_double.hpp"
#include "tests/support/nginx_server.hpp"

namespace {

using nlohmann::json;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto kAwait = asio::as_tuple(asio::use_awaitable);
const std::string kModel = "llama-3.1-8b-instruct";  // the demo policy permits it

double us_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

// Nearest rank, as bench/loadgen.c.
double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t rank = static_cast<std::size_t>(p * static_cast<double>(v.size()) + 0.999999);
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// --- /proc ------------------------------------------------------------------------------------

long status_field(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + ":", 0) == 0) return std::stol(line.substr(name.size() + 1));
  return -1;
}

// utime + stime of a process, in seconds.
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(s.substr(close + 2));
  std::string f;
  double ut = 0, st = 0;
  for (int i = 3; rest >> f; ++i) {
    if (i == 14) ut = std::stod(f);
    if (i == 15) {
      st = std::stod(f);
      break;
    }
  }
  return (ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Busy CPU seconds of the whole machine (all CPUs), from /proc/stat.
double machine_busy_seconds() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  double user, nice, system, idle, iowait, irq, softirq, steal;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return (user + nice + system + irq + softirq + steal) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// VmHWM back to the current RSS (Linux >= 4.0), so that a phase's peak is its own.
void reset_peak_rss(pid_t pid) { std::ofstream("/proc/" + std::to_string(pid) + "/clear_refs") << "5"; }

struct CpuWindow {
  pid_t scigate, backend, reference;  // reference: the nginx proxy (-1: none)
  double sg0, be0, ref0, me0, all0;
  Clock::time_point t0;
  CpuWindow(pid_t s, pid_t b, pid_t r = -1)
      : scigate(s), backend(b), reference(r), sg0(cpu_seconds(s)), be0(cpu_seconds(b)), ref0(r > 0 ? cpu_seconds(r) : 0),
        me0(cpu_seconds(getpid())), all0(machine_busy_seconds()), t0(Clock::now()) {}
  json end() const {
    double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    double sg = cpu_seconds(scigate) - sg0, be = cpu_seconds(backend) - be0, me = cpu_seconds(getpid()) - me0;
    double ref = reference > 0 ? cpu_seconds(reference) - ref0 : 0;
    double all = machine_busy_seconds() - all0;
    json j;
    j["wall_s"] = wall;
    j["scigate_cpu_s"] = sg;
    j["backend_cpu_s"] = be;
    j["client_cpu_s"] = me;
    if (reference > 0) j["nginx_cpu_s"] = ref;
    // Everything else on the machine, in cores (1.0 = one CPU kept busy).
    j["other_load_cores"] = std::max(0.0, (all - sg - be - me - ref) / wall);
    return j;
  }
};

// --- the client -------------------------------------------------------------------------------

struct Conn {
  explicit Conn(asio::any_io_executor ex) : sock(ex) {}
  tcp::socket sock;
  beast::flat_buffer buf;
};

struct Sample {
  double total_us = 0;  // write of the request to the last byte of the answer
  double ttfb_us = -1;  // to the read that completed the answer's head (streams)
  double ttft_us = -1;  // to the read that brought the first generated token (streams)
  double lag_us = 0;    // actual send time minus the planned one
};

// One kind of request to one server: its bytes, its check, its connections and its results.
struct Target {
  std::string name;
  uint16_t port = 0;
  std::string raw;   // the whole HTTP request
  bool stream = false;
  std::vector<std::string> expect;  // each must occur in the body
  std::string refuse;               // must not occur ("isError":true for MCP)
  std::vector<std::unique_ptr<Conn>> idle;
  std::vector<Sample> samples;
  long errors = 0;
  std::string first_error;
  long late_connects = 0;  // the pool was empty: a connection was opened in the window
  long max_open_streams = 0;

  void fail(const std::string& why) {
    if (errors++ == 0) first_error = why;
  }
};

Target make_target(std::string name, uint16_t port, std::string raw, bool stream = false) {
  Target t;
  t.name = std::move(name);
  t.port = port;
  t.raw = std::move(raw);
  t.stream = stream;
  return t;
}

std::string post_bytes(const std::string& path, const std::map<std::string, std::string>& headers, const std::string& body) {
  std::string raw = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (const auto& [k, v] : headers) raw += k + ": " + v + "\r\n";
  return raw + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

json chat_body(int max_tokens, bool stream) {
  json msg = json::object();
  msg["role"] = "user";
  msg["content"] = "Say hello to the benchmark in a few words.";
  json b = json::object();
  b["model"] = kModel;
  b["messages"] = json::array({msg});
  b["max_tokens"] = max_tokens;
  if (stream) b["stream"] = true;
  return b;
}

// The generated text of n tokens, as the double makes it ("w0 w1 ... w<n-1>").
std::string generated(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " w" : "w") + std::to_string(i);
  return s;
}

class Client {
 public:
  explicit Client(asio::io_context& io) : io_(io) {}

  asio::awaitable<std::unique_ptr<Conn>> connect(uint16_t port) {
    auto c = std::make_unique<Conn>(io_.get_executor());
    auto [ec] = co_await c->sock.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), kAwait);
    if (ec) co_return nullptr;
    c->sock.set_option(tcp::no_delay(true));
    co_return c;
  }

  // n connections, each used once (unrecorded): scigate gives a new connection header_timeout
  // (10 s) for its first request and a used one idle_timeout (120 s), so a pooled connection that
  // sat unused for a phase would otherwise be found closed.
  asio::awaitable<void> fill_pool(Target& t, int n) {
    std::vector<std::unique_ptr<Conn>> fresh;
    for (int i = 0; i < n; ++i)
      if (auto c = co_await connect(t.port)) fresh.push_back(std::move(c));
    for (auto& c : fresh) co_await exchange(t, std::move(c), Clock::now(), false);
  }

  // One exchange; the connection goes back to the target's pool if it may be reused.
  asio::awaitable<void> exchange(Target& t, std::unique_ptr<Conn> c, Clock::time_point planned, bool record) {
    in_flight_++;
    if (!c) {
      if (record) t.late_connects++;
      c = co_await connect(t.port);
      if (!c) {
        t.fail("cannot connect");
        in_flight_--;
        co_return;
      }
    }
    Sample s;
    const auto t0 = Clock::now();
    s.lag_us = us_between(planned, t0);
    auto [wec, wn] = co_await asio::async_write(c->sock, asio::buffer(t.raw), kAwait);
    if (wec) {
      t.fail("write: " + wec.message());
      in_flight_--;
      co_return;
    }
    http::response_parser<http::string_body> p;
    p.body_limit(64u << 20);
    std::size_t scanned = 0;
    bool counted_open = false;
    while (!p.is_done()) {
      auto [ec, n] = co_await http::async_read_some(c->sock, c->buf, p, kAwait);
      if (ec) {
        t.fail("read: " + ec.message());
        if (counted_open) open_streams_--;
        in_flight_--;
        co_return;
      }
      if (t.stream && p.is_header_done()) {
        if (!counted_open) {
          counted_open = true;
          s.ttfb_us = us_between(t0, Clock::now());
          t.max_open_streams = std::max(t.max_open_streams, ++open_streams_);
        }
        if (s.ttft_us < 0) {
          const std::string& b = p.get().body();
          if (b.find(R"("content":"w0")", scanned > 16 ? scanned - 16 : 0) != std::string::npos) s.ttft_us = us_between(t0, Clock::now());
          scanned = b.size();
        }
      }
    }
    s.total_us = us_between(t0, Clock::now());
    if (counted_open) open_streams_--;
    const auto& res = p.get();
    bool ok = res.result_int() == 200;
    for (const auto& e : t.expect) ok = ok && res.body().find(e) != std::string::npos;
    if (!t.refuse.empty() && res.body().find(t.refuse) != std::string::npos) ok = false;
    if (!ok) {
      t.fail("HTTP " + std::to_string(res.result_int()) + ": " + res.body().substr(0, 300));
    } else if (record) {
      t.samples.push_back(s);
    }
    if (res.keep_alive()) t.idle.push_back(std::move(c));
    in_flight_--;
  }

  // Open loop: request i goes at start + i / rate to kinds[order[i % k]], the order shuffled
  // every round of k; nothing waits for an answer before sending the next.
  asio::awaitable<void> paced(std::vector<Target*> kinds, double rate, double seconds, bool record) {
    asio::steady_timer timer(io_);
    const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / rate));
    const long n = static_cast<long>(rate * seconds);
    std::mt19937 rng(12345);
    std::vector<Target*> order = kinds;
    const auto start = Clock::now() + std::chrono::milliseconds(5);
    for (long i = 0; i < n; ++i) {
      if (i % static_cast<long>(kinds.size()) == 0) std::shuffle(order.begin(), order.end(), rng);
      const auto when = start + i * period;
      timer.expires_at(when);
      co_await timer.async_wait(kAwait);
      Target& t = *order[i % kinds.size()];
      std::unique_ptr<Conn> c;
      if (!t.idle.empty()) {
        c = std::move(t.idle.back());  // most recently used first: warm caches, few connections
        t.idle.pop_back();
      }
      asio::co_spawn(io_, exchange(t, std::move(c), when, record), asio::detached);
    }
    co_await drain();
  }

  // All at once: n connections opened first, then n requests written back to back.
  asio::awaitable<void> burst(Target& t, int n) {
    std::vector<std::unique_ptr<Conn>> conns;
    for (int i = 0; i < n; ++i) {
      auto c = co_await connect(t.port);
      if (!c) {
        t.fail("cannot connect (connection " + std::to_string(i) + ")");
        continue;
      }
      conns.push_back(std::move(c));
    }
    const auto now = Clock::now();
    for (auto& c : conns) asio::co_spawn(io_, exchange(t, std::move(c), now, true), asio::detached);
    co_await drain();
    t.idle.clear();  // close them: the next phase starts from its own connections
  }

  asio::awaitable<void> drain() {
    asio::steady_timer timer(io_);
    while (in_flight_ > 0) {
      timer.expires_after(std::chrono::milliseconds(2));
      co_await timer.async_wait(kAwait);
    }
  }

 private:
  asio::io_context& io_;
  long in_flight_ = 0;
  long open_streams_ = 0;
};

void run(asio::io_context& io, asio::awaitable<void> a) {
  std::exception_ptr error;
  asio::co_spawn(io, std::move(a), [&](std::exception_ptr e) { error = e; });
  io.restart();
  io.run();
  if (error) std::rethrow_exception(error);
}

json summary(const Target& t) {
  std::vector<double> total, ttft, ttfb, lag;
  for (const auto& s : t.samples) {
    total.push_back(s.total_us / 1000);
    if (s.ttfb_us >= 0) ttfb.push_back(s.ttfb_us / 1000);
    if (s.ttft_us >= 0) ttft.push_back(s.ttft_us / 1000);
    lag.push_back(s.lag_us / 1000);
  }
  json j;
  j["n"] = t.samples.size();
  j["errors"] = t.errors;
  if (t.errors) j["first_error"] = t.first_error;
  j["late_connects"] = t.late_connects;
  j["ms"] = {{"min", pct(total, 0.0)}, {"p50", pct(total, 0.5)}, {"p90", pct(total, 0.9)}, {"p99", pct(total, 0.99)},
             {"p999", pct(total, 0.999)}, {"max", pct(total, 1.0)}};
  if (!ttft.empty())
    j["ttft_ms"] = {{"min", pct(ttft, 0.0)}, {"p50", pct(ttft, 0.5)}, {"p90", pct(ttft, 0.9)}, {"p99", pct(ttft, 0.99)},
                    {"p999", pct(ttft, 0.999)}, {"max", pct(ttft, 1.0)}};
  if (!ttfb.empty())
    j["head_ms"] = {{"min", pct(ttfb, 0.0)}, {"p50", pct(ttfb, 0.5)}, {"p90", pct(ttfb, 0.9)}, {"p99", pct(ttfb, 0.99)},
                    {"p999", pct(ttfb, 0.999)}, {"max", pct(ttfb, 1.0)}};
  j["pacing_lag_ms"] = {{"p50", pct(lag, 0.5)}, {"p99", pct(lag, 0.99)}, {"max", pct(lag, 1.0)}};
  if (t.stream) j["max_open_streams"] = t.max_open_streams;
  return j;
}

void print_row(const char* label, const json& s, const char* key) {
  if (s.contains("first_error")) std::printf("  %s: first error: %s\n", label, s["first_error"].get<std::string>().c_str());
  if (!s.contains(key)) return;
  const json& m = s[key];
  std::printf("  %-34s n=%-6ld min %7.3f  p50 %7.3f  p90 %7.3f  p99 %7.3f  p99.9 %7.3f  max %8.3f ms  errors %ld\n", label,
              s["n"].get<long>(), m["min"].get<double>(), m["p50"].get<double>(), m["p90"].get<double>(), m["p99"].get<double>(),
              m["p999"].get<double>(), m["max"].get<double>(), s["errors"].get<long>());
}

bool pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

// Periodic RSS / thread samples of a process while a phase runs (its own thread).
class Sampler {
 public:
  explicit Sampler(std::vector<pid_t> pids) : pids_(std::move(pids)), peak_rss_(pids_.size()), peak_threads_(pids_.size()) {
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        for (std::size_t i = 0; i < pids_.size(); ++i) {
          peak_rss_[i] = std::max(peak_rss_[i], status_field(pids_[i], "VmRSS"));
          peak_threads_[i] = std::max(peak_threads_[i], status_field(pids_[i], "Threads"));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  ~Sampler() { finish(); }
  void finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  long peak_rss(std::size_t i) const { return peak_rss_[i]; }
  long peak_threads(std::size_t i) const { return peak_threads_[i]; }

 private:
  std::vector<pid_t> pids_;
  std::vector<long> peak_rss_, peak_threads_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct Options {
  double rate = 500;     // calls/s into scigate
  double seconds = 20;   // per measured phase
  double warmup = 3;
  int streams = 1000;
  int stream_tokens = 50;
  int stream_interval_ms = 50;
  int max_tokens = 8;
  // Phases 1 and 2: the backend's pace. 0 (default): every token at once, the worst case for a
  // gateway that reads the backend's stream (its per-event work is all on the critical path).
  // A real model server makes the first token after prefill and the next ones a decode step
  // apart (milliseconds): --first-token-ms / --token-ms reproduce that, the straight
  // non-streamed answer then taking the whole generation (first + (max_tokens-1) x token).
  int first_token_ms = 0;
  int token_ms = 0;
  std::vector<std::string> durability = {"commit", "fsync"};
  bool pin = true;
  bool credits = true;  // false: [credits] enabled = false (no hold, no settlement)
  bool echo = false;    // also phase 1b: /v1 against MCP's no-op echo (the pipeline without a backend)
  bool nginx = true;    // phase 1 also through nginx as a reverse proxy (the reference hop), if installed
  int threads = -1;  // -1: 1 when pinned, else the server's default
  int nice = 0;
  std::string json_path;
  std::vector<std::string> server;  // --server KEY=VALUE: extra [server] settings (an A/B of one knob)
};

// The children, for a SIGINT/SIGTERM of the benchmark: their fixtures' destructors would not run.
volatile sig_atomic_t g_backend_pid = 0, g_gateway_pid = 0;

void on_signal(int sig) {
  if (g_gateway_pid > 0) ::kill(g_gateway_pid, SIGKILL);
  if (g_backend_pid > 0) ::kill(g_backend_pid, SIGKILL);
  ::_exit(128 + sig);
}

struct Gateway {
  std::unique_ptr<scigate::itest::ServerProcess> server;
  std::string key;
};

Gateway start_gateway(const Options& o, const std::string& durability, const std::string& backend_url, int threads) {
  Gateway g;
  std::ostringstream cfg;
  cfg << "[server]\nlog_level = \"warn\"\ndurability = \"" << durability << "\"\n";
  if (threads >= 0) cfg << "threads = " << threads << "\n";
  for (const auto& kv : o.server) cfg << kv << "\n";
  if (!o.credits) cfg << "[credits]\nenabled = false\n";
  cfg << "[inference]\nhealth_interval_ms = 10000\n"
      << "[[inference.backends]]\nid = \"double\"\nurl = \"" << backend_url << "\"\nflavor = \"vllm\"\n"
      << "models = [\"" << kModel << "\"]\nmax_concurrency = " << std::max(4096, o.streams * 2) << "\n";
  g.server = std::make_unique<scigate::itest::ServerProcess>(cfg.str(), false);
  // The demo policy's tokens-per-minute limit (200,000/min) would refuse calls within seconds at
  // 500 calls/s; raised out of reach, its check still runs on every call.
  auto policy = g.server->dir() / "policies" / "demo.toml";
  std::stringstream ss;
  ss << std::ifstream(policy).rdbuf();
  std::string text = std::regex_replace(ss.str(), std::regex("rate = \"200000/minute\""), "rate = \"1000000000/minute\"");
  if (text == ss.str()) throw std::runtime_error("the demo policy has no tokens-per-minute rate to raise");
  std::ofstream(policy) << text;
  if (o.pin) pin_to(1);  // the child inherits CPU 1; this thread goes back to CPU 0
  g.server->start();
  g_gateway_pid = g.server->pid();
  if (o.pin) pin_to(0);
  g.key = g.server->user_key();
  // Ready when the health poller has seen the backend serve the model.
  for (int i = 0; i < 500; ++i) {
    scigate::itest::Client c(g.server->port());
    auto r = c.request(http::verb::get, "/v1/models", {{"Authorization", "Bearer " + g.key}});
    if (r.status == 200 && r.body.find(kModel) != std::string::npos) return g;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("scigate never listed " + kModel + ":\n" + g.server->log());
}

}  // namespace

int run_bench(int argc, char** argv);

int main(int argc, char** argv) {
  ::signal(SIGINT, on_signal);
  ::signal(SIGTERM, on_signal);
  try {
    return run_bench(argc, argv);
  } catch (const std::exception& e) {  // after the fixtures' destructors stopped the children
    std::fprintf(stderr, "scigate_inference_bench: %s\n", e.what());
    return 2;
  }
}

int run_bench(int argc, char** argv) {
  Options o;
  if (::geteuid() == 0) o.nice = -20;
  scigate::bench::parse_options(argc, argv, 1,
                       "scigate_inference_bench [--rate 500] [--seconds 20] [--warmup 3] [--streams 1000] "
                       "[--stream-tokens 50] [--stream-interval-ms 50] [--max-tokens 8] [--first-token-ms 0] "
                       "[--token-ms 0] [--durability commit,fsync] "
                       "[--pin 1] [--threads N] [--credits on] [--echo 0] [--nice -20] [--nginx 1] [--server KEY=VALUE] "
                       "[--json FILE]",
                       [&](const std::string& a, const std::string& v) {
                         if (a == "--rate") o.rate = std::stod(v);
                         else if (a == "--seconds") o.seconds = std::stod(v);
                         else if (a == "--warmup") o.warmup = std::stod(v);
                         else if (a == "--streams") o.streams = std::stoi(v);
                         else if (a == "--stream-tokens") o.stream_tokens = std::stoi(v);
                         else if (a == "--stream-interval-ms") o.stream_interval_ms = std::stoi(v);
                         else if (a == "--max-tokens") o.max_tokens = std::stoi(v);
                         else if (a == "--first-token-ms") o.first_token_ms = std::stoi(v);
                         else if (a == "--token-ms") o.token_ms = std::stoi(v);
                         else if (a == "--pin") o.pin = v != "0";
                         else if (a == "--credits") o.credits = v != "0" && v != "off";
                         else if (a == "--echo") o.echo = v != "0";
                         else if (a == "--nginx") o.nginx = v != "0";
                         else if (a == "--threads") o.threads = std::stoi(v);
                         else if (a == "--nice") o.nice = std::stoi(v);
                         else if (a == "--json") o.json_path = v;
                         else if (a == "--server" && v.find('=') != std::string::npos) o.server.push_back(v);
                         else if (a == "--durability") {
                           o.durability.clear();
                           std::stringstream ss(v);
                           std::string d;
                           while (std::getline(ss, d, ',')) o.durability.push_back(d);
                         } else {
                           return false;
                         }
                         return true;
                       });
  if (o.json_path.empty()) o.json_path = std::string(SCIGATE_SOURCE_DIR) + "/bench/inference/last-run.json";
  if (o.pin && std::thread::hardware_concurrency() < 2) o.pin = false;
  const int threads = o.threads >= 0 ? o.threads : (o.pin ? 1 : -1);

  // 1,000 streams: a socket each on both sides of scigate, in every process.
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  nofile.rlim_cur = nofile.rlim_max;
  setrlimit(RLIMIT_NOFILE, &nofile);
  std::string autogroup_was;
  if (o.nice != 0) {
    if (setpriority(PRIO_PROCESS, 0, o.nice) != 0) std::fprintf(stderr, "cannot set nice %d; running without\n", o.nice);
    std::ifstream ag("/proc/self/autogroup");
    std::string line;
    std::getline(ag, line);
    if (auto p = line.rfind("nice "); p != std::string::npos) {
      autogroup_was = line.substr(p + 5);
      std::ofstream("/proc/self/autogroup") << o.nice;
    }
  }
  if (o.pin) pin_to(0);

  json out;
  out["date_utc"] = [] {
    char buf[64];
    std::time_t t = std::time(nullptr);
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
    return std::string(buf);
  }();
  out["cpus"] = std::thread::hardware_concurrency();
  out["loadavg_start"] = loadavg();
  out["options"] = {{"rate", o.rate}, {"seconds", o.seconds}, {"streams", o.streams}, {"max_tokens", o.max_tokens},
                    {"stream_tokens", o.stream_tokens}, {"stream_interval_ms", o.stream_interval_ms},
                    {"first_token_ms", o.first_token_ms}, {"token_ms", o.token_ms},
                    {"pin", o.pin}, {"credits", o.credits}, {"scigate_threads", threads}, {"nice", o.nice}};
  bool any_error = false;

  scigate::test::InferenceDoubleOptions dopt;
  dopt.flavor = "vllm";
  dopt.models = {kModel};
  dopt.threads = 1;  // one core for the client and the backend when pinned
  dopt.extra_args = {"--keep-alive-ms", "0"};  // the client's pooled connections never time out
  scigate::test::InferenceDouble backend(dopt);
  g_backend_pid = backend.pid();
  // The generation's pace for phases 1 and 2 (a non-streamed answer comes when the last token is made).
  const int generation_ms = o.first_token_ms + std::max(0, o.max_tokens - 1) * o.token_ms;
  const json pace = {{"first_token_ms", o.first_token_ms}, {"token_interval_ms", o.token_ms},
                     {"latency_ms", generation_ms}, {"completion_tokens", 16}};
  backend.control(pace);
  // Connections per kind: the calls in flight at a kind's rate, twice over, and at least 16.
  const int pool = std::max(16, static_cast<int>(o.rate * (generation_ms + 2) / 1000.0 * 2));

  // The reference proxy hop, where scigate runs (CPU 1 when pinned) and at the same priority.
  std::unique_ptr<scigate::test::NginxServer> nginx;
  if (o.nginx) {
    std::string why;
    if (o.pin) pin_to(1);
    nginx = scigate::test::NginxServer::start(&why, 200 * 1024, backend.port());
    if (o.pin) pin_to(0);
    if (!nginx) std::printf("no nginx reference: %s\n", why.c_str());  // (its priority: inherited, as scigate's)
  }
  const pid_t nginx_pid = nginx ? nginx->pid() : -1;
  out["options"]["nginx_reference"] = nginx != nullptr;

  const std::string straight_body = chat_body(o.max_tokens, false).dump();
  const std::string stream_body = chat_body(o.max_tokens, true).dump();
  const std::map<std::string, std::string> json_ct = {{"Content-Type", "application/json"}};
  const std::string text = generated(o.max_tokens);
  const std::string last_token = "w" + std::to_string(o.max_tokens - 1) + "\"";

  for (std::size_t d = 0; d < o.durability.size(); ++d) {
    const std::string& mode = o.durability[d];
    Gateway g = start_gateway(o, mode, backend.base_url(), threads);
    asio::io_context io;  // before the targets: their pooled sockets must go first
    const pid_t sg = g.server->pid();
    auto auth = json_ct;
    auth["Authorization"] = "Bearer " + g.key;
    json args = chat_body(o.max_tokens, false);
    auto mcp_req = scigate::itest::modern_request(1, "tools/call", {{"name", "call_inference"}, {"arguments", args}});
    auto mcp_headers = scigate::itest::modern_headers(g.key, "tools/call", "call_inference");

    Target straight = make_target("straight", backend.port(), post_bytes("/v1/chat/completions", json_ct, straight_body));
    straight.expect = {text};
    Target v1 = make_target("scigate /v1", g.server->port(), post_bytes("/v1/chat/completions", auth, straight_body));
    v1.expect = {text};
    Target mcp = make_target("scigate MCP call_inference", g.server->port(), post_bytes("/mcp", mcp_headers, mcp_req.dump()));
    mcp.expect = {text, "structuredContent"};
    mcp.refuse = "\"isError\":true";
    Target via_nginx = make_target("nginx /v1", nginx ? nginx->port() : 0, post_bytes("/v1/chat/completions", json_ct, straight_body));
    via_nginx.expect = {text};
    Target nginx_s = make_target("nginx /v1 stream", nginx ? nginx->port() : 0, post_bytes("/v1/chat/completions", json_ct, stream_body), true);
    nginx_s.expect = {last_token, "data: [DONE]"};
    Target straight_s = make_target("straight stream", backend.port(), post_bytes("/v1/chat/completions", json_ct, stream_body), true);
    straight_s.expect = {last_token, "data: [DONE]"};
    Target v1_s = make_target("scigate /v1 stream", g.server->port(), post_bytes("/v1/chat/completions", auth, stream_body), true);
    v1_s.expect = {last_token, "data: [DONE]"};

    Client client(io);
    for (Target* t : {&straight, &v1, &mcp, &straight_s, &v1_s}) run(io, client.fill_pool(*t, pool));
    // Phase 1's kinds: each gets rate/2 calls/s, scigate `rate` in all.
    std::vector<Target*> kinds1 = {&straight, &v1, &mcp};
    // Phase 2's: each gets `rate` streams/s.
    std::vector<Target*> kinds2 = {&straight_s, &v1_s};
    if (nginx) {
      for (Target* t : {&via_nginx, &nginx_s}) run(io, client.fill_pool(*t, pool));
      kinds1.push_back(&via_nginx);
      kinds2.push_back(&nginx_s);
    }
    const double rate1 = o.rate / 2 * static_cast<double>(kinds1.size());
    const double rate2 = o.rate * static_cast<double>(kinds2.size());

    json phase;
    phase["durability"] = mode;
    phase["scigate_rss_kib_start"] = status_field(sg, "VmRSS");

    // 1. Non-streaming: the kinds in turn; scigate receives `rate` calls/s.
    std::printf("[%s] non-streaming, open loop: %.0f requests/s (scigate %.0f/s%s), %.0f s\n", mode.c_str(), rate1, o.rate,
                nginx ? ", nginx half that" : "", o.seconds);
    std::fflush(stdout);
    run(io, client.paced(kinds1, rate1, o.warmup, false));
    for (Target* t : kinds1) t->errors = 0, t->late_connects = 0;
    {
      CpuWindow w(sg, backend.pid(), nginx_pid);
      run(io, client.paced(kinds1, rate1, o.seconds, true));
      json cpu = w.end();
      long through = static_cast<long>(v1.samples.size() + mcp.samples.size());
      cpu["scigate_cpu_us_per_call"] = through ? cpu["scigate_cpu_s"].get<double>() * 1e6 / static_cast<double>(through) : 0.0;
      if (nginx && !via_nginx.samples.empty())
        cpu["nginx_cpu_us_per_call"] = cpu["nginx_cpu_s"].get<double>() * 1e6 / static_cast<double>(via_nginx.samples.size());
      phase["nonstream_cpu"] = cpu;
    }
    json a = summary(straight), b = summary(v1), c = summary(mcp);
    phase["nonstream"] = {{"straight", a}, {"v1", b}, {"mcp", c}};
    auto added = [&](const json& x) {
      return json{{"p50", x["ms"]["p50"].get<double>() - a["ms"]["p50"].get<double>()},
                  {"p99", x["ms"]["p99"].get<double>() - a["ms"]["p99"].get<double>()}};
    };
    phase["added_ms"] = {{"v1", added(b)}, {"mcp", added(c)}};
    print_row("straight to the backend", a, "ms");
    print_row("scigate /v1/chat/completions", b, "ms");
    print_row("scigate MCP tools/call", c, "ms");
    if (nginx) {
      json n = summary(via_nginx);
      phase["nonstream"]["nginx"] = n;
      phase["added_ms"]["nginx"] = added(n);
      print_row("nginx reverse proxy (reference)", n, "ms");
    }
    double lag_p99 = 0, lag_max = 0;
    long late = 0;
    for (auto& [kind, sum] : phase["nonstream"].items()) {
      lag_p99 = std::max(lag_p99, sum["pacing_lag_ms"]["p99"].get<double>());
      lag_max = std::max(lag_max, sum["pacing_lag_ms"]["max"].get<double>());
      late += sum["late_connects"].get<long>();
    }
    std::printf("  pacing: the client sent %.3f ms late at p99 (max %.3f ms); connections opened in the window: %ld\n",
                lag_p99, lag_max, late);
    std::printf("  added: /v1 p50 %+.3f p99 %+.3f ms; MCP p50 %+.3f p99 %+.3f ms; scigate CPU %.0f us/call; other load %.2f cores\n",
                phase["added_ms"]["v1"]["p50"].get<double>(), phase["added_ms"]["v1"]["p99"].get<double>(),
                phase["added_ms"]["mcp"]["p50"].get<double>(), phase["added_ms"]["mcp"]["p99"].get<double>(),
                phase["nonstream_cpu"]["scigate_cpu_us_per_call"].get<double>(),
                phase["nonstream_cpu"]["other_load_cores"].get<double>());
    if (nginx) {
      // What one plain proxy hop costs here, and scigate's figures over it.
      const json& n = phase["added_ms"]["nginx"];
      const json& cpu = phase["nonstream_cpu"];
      double nginx_cpu = cpu.value("nginx_cpu_us_per_call", 0.0), sg_cpu = cpu["scigate_cpu_us_per_call"].get<double>();
      json ref;
      ref["v1_minus_nginx_p50_ms"] = phase["added_ms"]["v1"]["p50"].get<double>() - n["p50"].get<double>();
      ref["v1_minus_nginx_p99_ms"] = phase["added_ms"]["v1"]["p99"].get<double>() - n["p99"].get<double>();
      if (n["p50"].get<double>() > 0) ref["v1_over_nginx_added_p50"] = phase["added_ms"]["v1"]["p50"].get<double>() / n["p50"].get<double>();
      if (nginx_cpu > 0) ref["scigate_over_nginx_cpu_per_call"] = sg_cpu / nginx_cpu;
      phase["nginx_reference"] = ref;
      std::printf("  reference: nginx adds p50 %+.3f p99 %+.3f ms, %.0f us CPU/call; scigate /v1 adds %.2fx nginx's p50 "
                  "(%+.3f ms over it), %.1fx its CPU per call\n",
                  n["p50"].get<double>(), n["p99"].get<double>(), nginx_cpu, ref.value("v1_over_nginx_added_p50", 0.0),
                  ref["v1_minus_nginx_p50_ms"].get<double>(), ref.value("scigate_over_nginx_cpu_per_call", 0.0));
    }
    std::fflush(stdout);

    for (Target* t : kinds1) any_error = any_error || t->errors > 0;

    // 1b. (--echo) What the pipeline costs without a backend: /v1 against a no-op MCP echo call
    // (authenticated, policy-checked, audited, free), straight as before; scigate at `rate`.
    if (o.echo) {
      json echo_args = json::object();
      echo_args["text"] = "hi";
      auto echo_req = scigate::itest::modern_request(1, "tools/call", {{"name", "echo"}, {"arguments", echo_args}});
      Target echo = make_target("scigate MCP echo (no backend)", g.server->port(),
                                post_bytes("/mcp", scigate::itest::modern_headers(g.key, "tools/call", "echo"), echo_req.dump()));
      echo.expect = {"structuredContent"};
      echo.refuse = "\"isError\":true";
      run(io, client.fill_pool(echo, 16));
      for (Target* t : {&straight, &v1}) t->samples.clear();
      std::printf("[%s] phase 1b: straight, /v1 and MCP echo in turn, %.0f requests/s (scigate %.0f/s), %.0f s\n", mode.c_str(),
                  o.rate * 1.5, o.rate, o.seconds);
      run(io, client.paced({&straight, &v1, &echo}, o.rate * 1.5, o.warmup, false));
      for (Target* t : {&straight, &v1, &echo}) t->errors = 0, t->late_connects = 0;
      run(io, client.paced({&straight, &v1, &echo}, o.rate * 1.5, o.seconds, true));
      json ea = summary(straight), eb = summary(v1), ec = summary(echo);
      phase["echo_reference"] = {{"straight", ea}, {"v1", eb}, {"mcp_echo", ec}};
      print_row("straight to the backend", ea, "ms");
      print_row("scigate /v1/chat/completions", eb, "ms");
      print_row("scigate MCP echo", ec, "ms");
      any_error = any_error || echo.errors > 0;
      echo.idle.clear();
    }

    // 2. Streaming: straight, /v1 (and nginx) in turn; each receives `rate` streams/s.
    std::printf("[%s] streaming, open loop: %.0f requests/s (scigate %.0f/s%s), %.0f s\n", mode.c_str(), rate2, o.rate,
                nginx ? ", nginx as many" : "", o.seconds);
    std::fflush(stdout);
    run(io, client.paced(kinds2, rate2, o.warmup, false));
    for (Target* t : kinds2) t->errors = 0, t->late_connects = 0;
    {
      CpuWindow w(sg, backend.pid(), nginx_pid);
      run(io, client.paced(kinds2, rate2, o.seconds, true));
      json cpu = w.end();
      cpu["scigate_cpu_us_per_call"] =
          v1_s.samples.empty() ? 0.0 : cpu["scigate_cpu_s"].get<double>() * 1e6 / static_cast<double>(v1_s.samples.size());
      phase["stream_cpu"] = cpu;
    }
    json sa = summary(straight_s), sb = summary(v1_s);
    phase["stream"] = {{"straight", sa}, {"v1", sb}};
    auto ttft = [](const json& s, const char* p) { return s.contains("ttft_ms") ? s["ttft_ms"][p].get<double>() : 0.0; };
    phase["added_ttft_ms"] = {{"p50", ttft(sb, "p50") - ttft(sa, "p50")}, {"p99", ttft(sb, "p99") - ttft(sa, "p99")}};
    print_row("straight, first token", sa, "ttft_ms");
    print_row("scigate /v1, first token", sb, "ttft_ms");
    print_row("straight, whole stream", sa, "ms");
    print_row("scigate /v1, whole stream", sb, "ms");
    std::printf("  added time to first token: p50 %+.3f p99 %+.3f ms; scigate CPU %.0f us/stream; other load %.2f cores\n",
                phase["added_ttft_ms"]["p50"].get<double>(), phase["added_ttft_ms"]["p99"].get<double>(),
                phase["stream_cpu"]["scigate_cpu_us_per_call"].get<double>(),
                phase["stream_cpu"]["other_load_cores"].get<double>());
    if (nginx) {
      json sn = summary(nginx_s);
      phase["stream"]["nginx"] = sn;
      phase["added_ttft_ms_nginx"] = {{"p50", ttft(sn, "p50") - ttft(sa, "p50")}, {"p99", ttft(sn, "p99") - ttft(sa, "p99")}};
      print_row("nginx reverse proxy, first token", sn, "ttft_ms");
      std::printf("  reference: nginx adds to the first token p50 %+.3f p99 %+.3f ms\n",
                  phase["added_ttft_ms_nginx"]["p50"].get<double>(), phase["added_ttft_ms_nginx"]["p99"].get<double>());
    }
    std::fflush(stdout);

    for (Target* t : {&straight, &v1, &mcp, &straight_s, &v1_s, &via_nginx, &nginx_s}) any_error = any_error || t->errors > 0;

    // 3. N concurrent streams (once, with the first durability mode).
    if (d == 0 && o.streams > 0) {
      json ctl = json::object();
      ctl["reset"] = true;  // the stats too: max_in_flight is this burst's
      ctl["completion_tokens"] = o.stream_tokens;
      ctl["token_interval_ms"] = o.stream_interval_ms;
      const std::string long_body = chat_body(o.stream_tokens + 14, true).dump();
      const std::string long_last = "w" + std::to_string(o.stream_tokens - 1) + "\"";
      for (Target* t : {&straight_s, &v1_s}) t->idle.clear();
      Target ref = make_target("straight, concurrent", backend.port(), post_bytes("/v1/chat/completions", json_ct, long_body), true);
      ref.expect = {long_last, "data: [DONE]"};
      Target via = make_target("scigate /v1, concurrent", g.server->port(), post_bytes("/v1/chat/completions", auth, long_body), true);
      via.expect = {long_last, "data: [DONE]"};
      json conc;
      for (Target* t : {&ref, &via}) {
        std::printf("[%s] %d concurrent streams, %s: %d tokens %d ms apart\n", mode.c_str(), o.streams, t->name.c_str(),
                    o.stream_tokens, o.stream_interval_ms);
        std::fflush(stdout);
        backend.control(ctl);
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        long sg_before = status_field(sg, "VmRSS"), be_before = backend.rss_kib();
        reset_peak_rss(sg);
        reset_peak_rss(backend.pid());
        Sampler sampler({sg, backend.pid()});
        CpuWindow w(sg, backend.pid());
        const auto t0 = Clock::now();
        run(io, client.burst(*t, o.streams));
        double wall = std::chrono::duration<double>(Clock::now() - t0).count();
        json cpu = w.end();
        sampler.finish();
        json s = summary(*t);
        s["wall_s"] = wall;
        s["cpu"] = cpu;
        s["scigate_rss_kib_before"] = sg_before;
        s["scigate_vmhwm_kib"] = status_field(sg, "VmHWM");
        s["scigate_peak_rss_kib_sampled"] = sampler.peak_rss(0);
        s["scigate_peak_threads"] = sampler.peak_threads(0);
        s["backend_rss_kib_before"] = be_before;
        s["backend_vmhwm_kib"] = status_field(backend.pid(), "VmHWM");
        s["backend_peak_threads"] = sampler.peak_threads(1);
        json st = backend.stats();
        s["backend_max_in_flight"] = st.value("max_in_flight", -1);
        s["backend_streams_completed"] = st.value("streams_completed", -1);
        s["complete"] = t->samples.size();
        conc[t == &ref ? "straight" : "v1"] = s;
        print_row("head (status line and headers)", s, "head_ms");
        print_row("first token", s, "ttft_ms");
        print_row("whole stream", s, "ms");
        std::printf("  %zu of %d complete in %.2f s, %ld open at once (client), backend max in flight %ld; "
                    "RSS scigate %.1f -> peak %.1f MiB (VmHWM), backend %.1f -> %.1f MiB; threads scigate %ld, backend %ld\n",
                    t->samples.size(), o.streams, wall, t->max_open_streams, s["backend_max_in_flight"].get<long>(),
                    sg_before / 1024.0, s["scigate_vmhwm_kib"].get<long>() / 1024.0, be_before / 1024.0,
                    s["backend_vmhwm_kib"].get<long>() / 1024.0, sampler.peak_threads(0), sampler.peak_threads(1));
        std::fflush(stdout);
        any_error = any_error || t->errors > 0 || static_cast<int>(t->samples.size()) != o.streams;
      }
      phase["concurrent_streams"] = conc;
      backend.control(pace);  // phases 1 and 2's pace again, for the next durability mode
    }
    phase["scigate_rss_kib_end"] = status_field(sg, "VmRSS");
    phase["scigate_vmhwm_kib_end"] = status_field(sg, "VmHWM");
    out["runs"].push_back(phase);
    g_gateway_pid = 0;
    g.server->stop();
  }
  out["loadavg_end"] = loadavg();
  std::ofstream(o.json_path) << out.dump(2) << "\n";
  std::printf("raw figures: %s\n", o.json_path.c_str());
  if (!autogroup_was.empty()) std::ofstream("/proc/self/autogroup") << autogroup_was;
  return any_error ? 1 : 0;
}
