#include "tests/support/slurm_cluster.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "server/common/command_runner.hpp"

#ifndef SCIGATE_SOURCE_DIR
#error "SCIGATE_SOURCE_DIR must name the source tree (scripts/slurm)"
#endif

namespace scigate::test {
namespace asio = boost::asio;

namespace {

std::atomic<int> g_skipped{0};
std::mutex g_mutex;
std::unique_ptr<SlurmCluster> g_cluster;
std::string g_missing;  // set once we know Slurm is not installed
bool g_checked = false;
std::string g_start_failure;  // installed, but start.sh failed

std::filesystem::path scripts() { return std::filesystem::path(SCIGATE_SOURCE_DIR) / "scripts" / "slurm"; }

bool on_path(const std::string& name) {
  std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  path += ":/usr/sbin:/sbin:/usr/bin:/bin";
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (!dir.empty() && ::access((std::filesystem::path(dir) / name).c_str(), X_OK) == 0) return true;
  return false;
}

CommandResult run(CommandOptions o) {
  asio::io_context io;
  std::optional<CommandResult> out;
  std::exception_ptr ep;
  asio::co_spawn(io, run_command(std::move(o)), [&](std::exception_ptr e, CommandResult r) {
    ep = e;
    out = std::move(r);
  });
  io.run();
  if (ep) std::rethrow_exception(ep);
  return std::move(*out);
}

uint16_t free_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// Prints how many tests were skipped when the binary exits, so a skip cannot pass unnoticed.
struct SkipReport {
  ~SkipReport() {
    if (int n = g_skipped.load())
      std::cerr << "\n*** " << n << " Slurm test(s) SKIPPED: " << g_missing
                << " (install with scripts/install-deps.sh --test) ***\n";
  }
} g_skip_report;

}  // namespace

void SlurmCluster::note_skip() { ++g_skipped; }

SlurmCluster* SlurmCluster::get(std::string* why) {
  std::lock_guard g(g_mutex);
  if (!g_checked) {
    g_checked = true;
    for (const char* b : {"munged", "slurmctld", "slurmd", "slurmrestd", "sbatch", "squeue", "sacct", "scancel", "scontrol"}) {
      if (!on_path(b)) {
        g_missing = std::string(b) + " not found";
        break;
      }
    }
    if (g_missing.empty()) {
      std::unique_ptr<SlurmCluster> c(new SlurmCluster());
      try {
        c->start();
      } catch (const std::exception& e) {
        g_start_failure = e.what();
      }
      if (g_start_failure.empty()) {
        g_cluster = std::move(c);
        // Stop it at exit even when a test aborts the run with an exception.
        std::atexit([] { g_cluster.reset(); });
      }
    }
  }
  // Installed but broken is a failure for every test that wanted it, never a skip.
  if (!g_start_failure.empty()) throw std::runtime_error("the Slurm test cluster did not start: " + g_start_failure);
  if (!g_cluster && why) *why = g_missing;
  return g_cluster.get();
}

// A test binary killed before its exit handlers ran (a crash, a ctest timeout) leaves its
// daemons behind: stop those whose owner is gone, by their own state directory's PID files.
static void reap_abandoned() {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/tmp", ec)) {
    if (e.path().filename().string().rfind("sg-slurm-", 0) != 0) continue;
    std::ifstream in(e.path() / "owner.pid");
    pid_t owner = 0;
    if (!(in >> owner) || owner <= 0 || ::kill(owner, 0) == 0 || errno != ESRCH) continue;
    CommandOptions stop;
    stop.argv = {(scripts() / "stop.sh").string(), e.path().string(), "--purge"};
    stop.timeout = std::chrono::seconds(60);
    run(stop);
  }
}

void SlurmCluster::start() {
  reap_abandoned();
  // The ports are picked free here and bound by the daemons a moment later: the cluster of a
  // parallel test may take one in between (start.sh then fails, waiting for a daemon that
  // could not bind). One more try, with other ports.
  for (int attempt = 1;; ++attempt) {
    try {
      start_once();
      return;
    } catch (const std::runtime_error& e) {
      if (attempt == 2) throw;
      std::cerr << "slurm test cluster did not come up; trying again with other ports:\n" << e.what() << "\n";
      state_.clear();
    }
  }
}

void SlurmCluster::start_once() {
  char tmpl[] = "/tmp/sg-slurm-XXXXXX";  // short: unix socket paths are limited to 107 bytes
  if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  state_ = tmpl;
  std::ofstream(state_ / "owner.pid") << ::getpid() << "\n";
  CommandOptions o;
  o.argv = {(scripts() / "start.sh").string(), state_.string()};
  o.environment = {{"CTLD_PORT", std::to_string(free_port())},
                   {"SLURMD_PORT", std::to_string(free_port())},
                   {"REST_PORT", std::to_string(free_port())},
                   // Finished jobs leave slurmctld quickly, so tests see sacct -c take over.
                   {"MIN_JOB_AGE", "2"}};
  o.timeout = std::chrono::seconds(120);
  auto r = run(o);
  if (!r.success()) {
    std::string msg = "scripts/slurm/start.sh " + state_.string() + ": " + r.describe() + "\n" + r.out + r.err;
    CommandOptions stop;
    stop.argv = {(scripts() / "stop.sh").string(), state_.string()};
    run(stop);
    throw std::runtime_error(msg);
  }
  std::stringstream ss(r.out);
  std::string line;
  while (std::getline(ss, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    auto k = line.substr(0, eq), v = line.substr(eq + 1);
    if (k == "SLURM_REST_SOCKET") rest_socket_ = v;
    else if (k == "SLURM_REST_URL") rest_url_ = v;
    else if (k == "SLURM_JOB_USER") job_user_ = v;
  }
  std::filesystem::create_directories(jobs_dir());
  std::filesystem::permissions(jobs_dir(), std::filesystem::perms::all | std::filesystem::perms::sticky_bit);
  std::cerr << "slurm test cluster up in " << state_ << "\n";
}

SlurmCluster::~SlurmCluster() {
  if (state_.empty()) return;
  const char* keep = std::getenv("SCIGATE_KEEP_SLURM");
  bool purge = !(keep && std::string(keep) == "1");
  CommandOptions o;
  o.argv = {(scripts() / "stop.sh").string(), state_.string()};
  if (purge) o.argv.push_back("--purge");
  o.timeout = std::chrono::seconds(60);
  try {
    auto r = run(o);
    if (!r.success()) std::cerr << "scripts/slurm/stop.sh: " << r.describe() << "\n" << r.out << r.err;
    if (!purge) std::cerr << "slurm test cluster kept in " << state_ << "\n";
  } catch (const std::exception& e) {
    std::cerr << "stopping the slurm test cluster: " << e.what() << "\n";
  }
}

void SlurmCluster::stop_controller() {
  std::ifstream in(state_ / "run" / "slurmctld.pid");
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0) throw std::runtime_error("no slurmctld pid file");
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 200 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (::kill(pid, 0) == 0) throw std::runtime_error("slurmctld did not stop");
}

void SlurmCluster::restart() {
  CommandOptions o;
  o.argv = {(scripts() / "start.sh").string(), state_.string()};
  o.timeout = std::chrono::seconds(120);
  auto r = run(o);
  if (!r.success()) throw std::runtime_error("restarting slurm: " + r.describe() + "\n" + r.out + r.err);
}

std::string SlurmCluster::command(const std::vector<std::string>& argv, int* exit_code) const {
  CommandOptions o;
  o.argv = argv;
  o.environment = {{"SLURM_CONF", slurm_conf().string()}};
  o.environment["PATH"] = std::string(std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin") + ":/usr/sbin:/sbin";
  o.timeout = std::chrono::seconds(60);
  auto r = run(o);
  if (exit_code) *exit_code = r.exit_code;
  return r.out;
}

std::string SlurmCluster::token(int lifespan_s) const {
  int rc = -1;
  auto out = command({"scontrol", "token", "username=" + job_user_, "lifespan=" + std::to_string(lifespan_s)}, &rc);
  if (rc != 0) throw std::runtime_error("scontrol token failed");
  auto eq = out.find('=');
  std::string t = eq == std::string::npos ? out : out.substr(eq + 1);
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  return t;
}

}  // namespace scigate::test
