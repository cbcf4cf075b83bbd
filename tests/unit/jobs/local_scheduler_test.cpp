// The local scheduler through its synchronous API: real processes, real files.
#include <catch2/catch.hpp>

#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "connectors/scheduler/local/local_scheduler.hpp"
#include "server/common/error.hpp"
#include "support/counting_executor.hpp"

using namespace scigate;
using namespace scigate::jobs;
namespace fs = std::filesystem;

namespace {

struct JobsRoot {
  fs::path path;
  JobsRoot() {
    char tmpl[] = "/tmp/scigate-local-XXXXXX";
    path = ::mkdtemp(tmpl);
    ::chmod(path.c_str(), 0755);  // the job's user must reach its directory
  }
  ~JobsRoot() { fs::remove_all(path); }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

JobSpec spec_for(const fs::path& root, const std::string& id, const std::string& script) {
  JobSpec s;
  s.gateway_id = id;
  s.project = "proj";
  s.name = "t";
  s.script = script;
  s.working_directory = root / "proj" / id;
  s.resources.walltime = std::chrono::seconds(30);
  return s;
}

JobStatus wait_final(LocalScheduler& sched, const std::string& id, std::chrono::seconds limit = std::chrono::seconds(20)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    auto st = sched.poll_now({id});
    if (!st.empty() && is_final(st[0].state)) return st[0];
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL("job " << id << " did not end in time");
  return {};
}

bool gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close != std::string::npos && stat.size() > close + 2 && stat[close + 2] == 'Z';
}

LocalSchedulerOptions options(const fs::path& root) {
  LocalSchedulerOptions o;
  o.jobs_root = root;
  o.kill_grace = std::chrono::milliseconds(500);
  o.slots_cpus = 2;
  return o;
}

struct Calls {
  std::string id;
  std::vector<JobStatus> polled;
  std::vector<JobStatus> final_status;
  bool done = false;
};

// Every coroutine entry point once, as a tool call makes them: from a coroutine whose
// executor is not the scheduler's.
boost::asio::awaitable<void> call_each(LocalScheduler& sched, fs::path root, Calls& out) {
  JobSpec spec = spec_for(root, "j-0000000000c1", "echo hi");
  out.id = co_await sched.submit(std::move(spec));
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
  for (int i = 0; i < 1000; ++i) {
    std::vector<std::string> ids{out.id};
    out.polled = co_await sched.poll(std::move(ids));
    if (!out.polled.empty() && is_final(out.polled[0].state)) break;
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(boost::asio::use_awaitable);
  }
  co_await sched.cancel(out.id);  // the job has ended: a no-op, but still a call to the runner
  out.final_status = co_await sched.final_status(out.id);
  out.done = true;
}

}  // namespace

TEST_CASE("local scheduler: its coroutine calls release every copy of the caller's executor") {
  // The caller's executor is a connection's strand in the server: one release too many freed
  // the strand under its live timers (GCC 12 destroyed offload()'s initiation lambda twice).
  JobsRoot root;
  std::optional<LocalScheduler> sched;
  sched.emplace(options(root.path));
  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);  // the calls run on the scheduler's threads
  std::atomic<int> live{0};
  Calls calls;
  std::exception_ptr failure;
  {
    boost::asio::any_io_executor ex = scigate::testing::CountingExecutor(io, live);
    boost::asio::co_spawn(ex, call_each(*sched, root.path, calls), [&guard, &failure](std::exception_ptr e) {
      failure = e;
      guard.reset();
    });
  }
  io.run();
  // The scheduler's threads may still hold (and be about to destroy) a closure with a copy of
  // the executor; its destructor joins them.
  sched.reset();
  REQUIRE_FALSE(failure);
  REQUIRE(calls.done);
  REQUIRE(calls.polled.size() == 1);
  CHECK(calls.polled[0].state == JobState::kCompleted);
  REQUIRE(calls.final_status.size() == 1);
  CHECK(calls.final_status[0].state == JobState::kCompleted);
  CHECK(live.load() == 0);  // below zero: a copy destroyed twice; above: one leaked
}

TEST_CASE("local scheduler: exit codes, output files, scrubbed environment, unprivileged user") {
  JobsRoot root;
  LocalScheduler sched(options(root.path));
  auto ok = sched.submit_now(spec_for(root.path, "j-000000000001",
                                      "echo out; echo err >&2; env > env.txt; id -u > uid.txt; pwd > pwd.txt"));
  CHECK(ok == "proj/j-000000000001");
  auto st = wait_final(sched, ok);
  CHECK(st.state == JobState::kCompleted);
  CHECK(st.exit_code == 0);
  REQUIRE(st.start_ms);
  REQUIRE(st.end_ms);
  fs::path dir = root.path / "proj" / "j-000000000001";
  CHECK(slurp(dir / "stdout") == "out\n");
  CHECK(slurp(dir / "stderr") == "err\n");
  CHECK(slurp(dir / "pwd.txt") == dir.string() + "\n");
  std::istringstream env(slurp(dir / "env.txt"));
  std::string line;
  while (std::getline(env, line)) {
    std::string name = line.substr(0, line.find('='));
    bool allowed = name == "PATH" || name == "HOME" || name == "USER" || name == "LANG" || name == "TMPDIR" ||
                   name == "PWD" || name == "SHLVL" || name == "_" || name == "OLDPWD" || name.rfind("SCIGATE_", 0) == 0;
    CHECK(allowed);
    if (!allowed) INFO("unexpected variable " << name);
  }
  if (::geteuid() == 0) {
    struct passwd* pw = ::getpwnam("nobody");
    REQUIRE(pw);
    CHECK(slurp(dir / "uid.txt") == std::to_string(pw->pw_uid) + "\n");
  }

  auto bad = sched.submit_now(spec_for(root.path, "j-000000000002", "exit 3"));
  st = wait_final(sched, bad);
  CHECK(st.state == JobState::kFailed);
  CHECK(st.exit_code == 3);
  CHECK(st.reason == "exit code 3");
  // After the table forgets (a restart), the files still tell.
  auto again = sched.final_status_now(bad);
  REQUIRE(again);
  CHECK(again->state == JobState::kFailed);
  CHECK(again->exit_code == 3);
}

TEST_CASE("local scheduler: a job that leaves a FIFO where scigate reads or writes does not stop the scheduler") {
  JobsRoot root;
  LocalScheduler sched(options(root.path));
  // The job's user may write its exit-code directory: a FIFO at the exit-code path, then the
  // wrapper killed before it writes the code. Reading it used to block the scheduler's thread
  // (and every later submit) until someone opened the FIFO.
  auto fifo = sched.submit_now(spec_for(
      root.path, "j-0000000000f1",
      "E=$(tr '\\0' '\\n' </proc/$PPID/cmdline | sed -n 5p); mkfifo \"$E\" && kill -9 $PPID; sleep 1"));
  auto st = wait_final(sched, fifo);
  CHECK(st.state == JobState::kFailed);
  // A FIFO at a job's stdout (left by a sibling job of the same user) is replaced, not opened.
  fs::path next_dir = root.path / "proj" / "j-0000000000f2";
  fs::create_directories(next_dir);
  REQUIRE(::mkfifo((next_dir / "stdout").c_str(), 0666) == 0);
  auto ok = sched.submit_now(spec_for(root.path, "j-0000000000f2", "echo fine"));
  st = wait_final(sched, ok);
  CHECK(st.state == JobState::kCompleted);
  CHECK(slurp(next_dir / "stdout") == "fine\n");
}

TEST_CASE("local scheduler: walltime exceeded is FAILED/TIMEOUT, cancel kills the whole group") {
  JobsRoot root;
  LocalScheduler sched(options(root.path));
  auto spec = spec_for(root.path, "j-000000000003", "sleep 30");
  spec.resources.walltime = std::chrono::seconds(1);
  auto id = sched.submit_now(spec);
  auto st = wait_final(sched, id);
  CHECK(st.state == JobState::kFailed);
  CHECK(st.native_state == "TIMEOUT");
  CHECK_THAT(st.reason, Catch::Contains("walltime"));
  REQUIRE(st.start_ms);
  CHECK(*st.end_ms - *st.start_ms < 5000);

  auto c = sched.submit_now(spec_for(root.path, "j-000000000004", "sleep 300 & echo $! > child.pid; wait"));
  fs::path pid_file = root.path / "proj" / "j-000000000004" / "child.pid";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!(fs::exists(pid_file) && fs::file_size(pid_file) > 0) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE(fs::exists(pid_file));
  pid_t grandchild = std::stoi(slurp(pid_file));
  CHECK_FALSE(gone(grandchild));
  sched.cancel_now(c);
  st = wait_final(sched, c);
  CHECK(st.state == JobState::kCanceled);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!gone(grandchild) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(gone(grandchild));
}

TEST_CASE("local scheduler: queued jobs wait for CPU slots, a queued cancel never starts") {
  JobsRoot root;
  auto o = options(root.path);
  o.slots_cpus = 1;
  LocalScheduler sched(o);
  auto a = sched.submit_now(spec_for(root.path, "j-00000000000a", "sleep 1"));
  auto b = sched.submit_now(spec_for(root.path, "j-00000000000b", "touch ran"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto st = sched.poll_now({a, b});
  REQUIRE(st.size() == 2);
  CHECK(st[0].state == JobState::kActive);
  CHECK(st[1].state == JobState::kQueued);
  sched.cancel_now(b);
  CHECK(wait_final(sched, b).state == JobState::kCanceled);
  CHECK(wait_final(sched, a).state == JobState::kCompleted);
  CHECK_FALSE(fs::exists(root.path / "proj" / "j-00000000000b" / "ran"));

  auto big = spec_for(root.path, "j-00000000000c", "true");
  big.resources.tasks = 4;
  CHECK_THROWS_AS(sched.submit_now(big), ErrorException);
}

TEST_CASE("local scheduler: a working directory through a symlink out of the project area is refused") {
  JobsRoot root, outside;
  LocalScheduler sched(options(root.path));
  fs::create_directories(root.path / "proj");
  fs::create_directory_symlink(outside.path, root.path / "proj" / "escape");
  auto spec = spec_for(root.path, "j-00000000000d", "touch pwned");
  spec.working_directory = root.path / "proj" / "escape";
  CHECK_THROWS_AS(sched.submit_now(spec), ErrorException);
  spec.working_directory = root.path / "proj" / ".." / "x";
  CHECK_THROWS_AS(sched.submit_now(spec), ErrorException);
  CHECK_FALSE(fs::exists(outside.path / "pwned"));
}

TEST_CASE("local scheduler: after a restart a running job is adopted and a queued one queues again") {
  JobsRoot root;
  auto o = options(root.path);
  o.slots_cpus = 1;
  std::string a, b;
  {
    LocalScheduler first(o);
    // Long enough to be still running when the second scheduler looks, even under ASan on a
    // loaded machine (with "sleep 1" it sometimes ended first, and was rightly left out).
    a = first.submit_now(spec_for(root.path, "j-0000000000e1", "sleep 4; echo a"));
    b = first.submit_now(spec_for(root.path, "j-0000000000e2", "echo b"));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (first.poll_now({a})[0].state != JobState::kActive && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(first.poll_now({b})[0].state == JobState::kQueued);
  }  // "scigate stops": the runner goes, the job keeps running
  LocalScheduler second(o);
  auto st = second.poll_now({a, b});
  REQUIRE(st.size() == 2);
  CHECK(st[0].state == JobState::kActive);
  CHECK(st[1].state == JobState::kQueued);
  CHECK(wait_final(second, a).state == JobState::kCompleted);
  CHECK(wait_final(second, b).state == JobState::kCompleted);
  CHECK(slurp(root.path / "proj" / "j-0000000000e2" / "stdout") == "b\n");
}

TEST_CASE("local scheduler: under bubblewrap a job sees neither other projects nor the network") {
  JobsRoot root;
  LocalScheduler sched(options(root.path));
  if (!sched.sandboxed()) {
    WARN("bwrap is not installed: nothing to check");
    return;
  }
  fs::create_directories(root.path / "otherproj" / "j-0000000000ff");
  std::ofstream(root.path / "otherproj" / "j-0000000000ff" / "stdout") << "secret\n";
  auto id = sched.submit_now(spec_for(root.path, "j-0000000000f1",
                                      "ls -a " + root.path.string() + " > seen.txt; "
                                      "cat /sys/class/net/*/operstate 2>/dev/null | sort -u > net.txt; "
                                      "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > ifaces.txt; touch /usr/x 2>/dev/null && echo rw > usr.txt; true"));
  CHECK(wait_final(sched, id).state == JobState::kCompleted);
  fs::path dir = root.path / "proj" / "j-0000000000f1";
  std::string seen = slurp(dir / "seen.txt");
  CHECK(seen.find("proj") != std::string::npos);
  CHECK(seen.find("otherproj") == std::string::npos);
  CHECK(slurp(dir / "ifaces.txt") == "lo\n");  // --unshare-net: loopback only
  CHECK_FALSE(fs::exists(dir / "usr.txt"));    // a read-only system
}
