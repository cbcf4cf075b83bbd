#include "server/common/command_runner.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <catch2/catch.hpp>

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/support/harness.hpp"

using namespace scigate;
using scigate::test::run_blocking;
namespace asio = boost::asio;

namespace {
CommandResult run(CommandOptions o) {
  asio::io_context io;
  return run_blocking(io, run_command(std::move(o)));
}
}  // namespace

TEST_CASE("command runner: exit codes and output", "[command_runner]") {
  auto ok = run({.argv = {"/bin/sh", "-c", "echo out; echo err >&2; exit 0"}});
  CHECK(ok.success());
  CHECK(ok.exit_code == 0);
  CHECK(ok.out == "out\n");
  CHECK(ok.err == "err\n");

  auto three = run({.argv = {"/bin/sh", "-c", "exit 3"}});
  CHECK_FALSE(three.success());
  CHECK(three.exit_code == 3);
  CHECK(three.describe() == "exit 3");

  auto sig = run({.argv = {"/bin/sh", "-c", "kill -TERM $$"}});
  CHECK(sig.term_signal == SIGTERM);
  CHECK_FALSE(sig.success());
}

TEST_CASE("command runner: a missing program is a spawn error, not an exception", "[command_runner]") {
  auto r = run({.argv = {"/nonexistent/sbatch"}});
  CHECK_FALSE(r.started());
  CHECK(r.spawn_error.find("No such file") != std::string::npos);
  auto r2 = run({.argv = {"scigate-no-such-program-anywhere"}});
  CHECK_FALSE(r2.started());
}

TEST_CASE("command runner: arguments reach the program as they are, no shell", "[command_runner]") {
  auto dir = std::filesystem::temp_directory_path() / ("cmdrun-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto victim = dir / "victim";
  std::ofstream(victim) << "x";
  std::string evil = "; rm -rf " + victim.string() + " $(touch " + (dir / "pwned").string() + ") `id` | cat";
  auto r = run({.argv = {"/bin/echo", evil, "--wrap", "a\nb"}});
  CHECK(r.success());
  CHECK(r.out == evil + " --wrap a\nb\n");
  CHECK(std::filesystem::exists(victim));
  CHECK_FALSE(std::filesystem::exists(dir / "pwned"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("command runner: environment control", "[command_runner]") {
  ::setenv("SCIGATE_RUNNER_TEST_PARENT", "yes", 1);
  auto inherited = run({.argv = {"/usr/bin/env"}, .environment = {{"SLURM_CONF", "/x/slurm.conf"}}});
  CHECK(inherited.out.find("SLURM_CONF=/x/slurm.conf\n") != std::string::npos);
  CHECK(inherited.out.find("SCIGATE_RUNNER_TEST_PARENT=yes") != std::string::npos);

  auto scrubbed = run({.argv = {"/usr/bin/env"}, .inherit_environment = false,
                       .environment = {{"SLURM_CONF", "/x/slurm.conf"}}});
  CHECK(scrubbed.out == "SLURM_CONF=/x/slurm.conf\n");
  ::unsetenv("SCIGATE_RUNNER_TEST_PARENT");
}

TEST_CASE("command runner: stdin and working directory", "[command_runner]") {
  auto r = run({.argv = {"/bin/cat"}, .stdin_data = "#!/bin/bash\necho hi\n"});
  CHECK(r.out == "#!/bin/bash\necho hi\n");
  auto none = run({.argv = {"/bin/cat"}});
  CHECK(none.success());
  CHECK(none.out.empty());
  auto pwd = run({.argv = {"/bin/pwd"}, .working_directory = "/usr"});
  CHECK(pwd.out == "/usr\n");
  // A child that ignores its stdin must not hurt us (no pipe, so no SIGPIPE).
  auto ignore = run({.argv = {"/bin/true"}, .stdin_data = std::string(1 << 20, 'x')});
  CHECK(ignore.success());
}

TEST_CASE("command runner: big output is capped, and the child is not blocked by it", "[command_runner]") {
  auto r = run({.argv = {"/bin/sh", "-c", "head -c 5000000 /dev/zero; echo done >&2"}, .max_output = 1000});
  CHECK(r.success());
  CHECK(r.out.size() == 1000);
  CHECK(r.out_truncated);
  CHECK(r.err == "done\n");
  CHECK_FALSE(r.err_truncated);
}

TEST_CASE("command runner: a timeout kills the whole process group", "[command_runner]") {
  auto dir = std::filesystem::temp_directory_path() / ("cmdrun-t-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto marker = dir / "grandchild-survived";
  auto t0 = std::chrono::steady_clock::now();
  // The grandchild would write the marker after 2 s if it survived its group's SIGKILL.
  auto r = run({.argv = {"/bin/sh", "-c", "(sleep 2; touch " + marker.string() + ") & sleep 30"},
                .timeout = std::chrono::milliseconds(300)});
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.timed_out);
  CHECK_FALSE(r.success());
  CHECK(r.term_signal == SIGKILL);
  CHECK(took < std::chrono::seconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  CHECK_FALSE(std::filesystem::exists(marker));
  std::filesystem::remove_all(dir);
}

TEST_CASE("command runner: several at once on one thread", "[command_runner]") {
  asio::io_context io;
  int done = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 8; ++i) {
    asio::co_spawn(io, run_command({.argv = {"/bin/sh", "-c", "sleep 0.5; echo " + std::to_string(i)}}),
                   [&, i](std::exception_ptr e, CommandResult r) {
                     CHECK_FALSE(e);
                     CHECK(r.out == std::to_string(i) + "\n");
                     ++done;
                   });
  }
  io.run();
  CHECK(done == 8);
  // They ran concurrently: nothing blocked the one thread.
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
}

TEST_CASE("command runner: cancelling the awaiting coroutine kills the child", "[command_runner]") {
  asio::io_context io;
  asio::cancellation_signal cancel;
  std::optional<CommandResult> result;
  auto t0 = std::chrono::steady_clock::now();
  asio::co_spawn(io, run_command({.argv = {"/bin/sleep", "30"}}),
                 asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e, CommandResult r) {
                   if (!e) result = std::move(r);
                 }));
  asio::steady_timer t(io, std::chrono::milliseconds(200));
  t.async_wait([&](auto) { cancel.emit(asio::cancellation_type::terminal); });
  io.run();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  if (result) {
    CHECK(result->cancelled);
    CHECK_FALSE(result->success());
  }
}
