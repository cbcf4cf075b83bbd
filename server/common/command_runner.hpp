#pragma once
// Runs a program to completion from a coroutine, without a shell and without blocking the
// calling thread: argv goes to posix_spawnp as it is (a `;` or `$(...)` in an argument is just
// bytes), stdout and stderr come back through pipes read by the caller's executor, and the exit
// is observed through a pidfd (or, where the kernel has none, a helper thread that waits and
// writes the status to a pipe). Used by the Slurm CLI connector (sbatch, squeue, sacct,
// scancel, scontrol) and by tests.
//
// The child gets its own process group; on timeout (or when the awaiting coroutine is
// cancelled) the whole group gets SIGKILL and is reaped on a helper thread, so no zombie and no
// stray grandchild is left behind. stdin comes from an in-memory file (never a pipe, so a child
// that does not read it cannot make the server take SIGPIPE).
//
// Thread-safety: run_command may be called from any number of coroutines at once.
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace scigate {

struct CommandOptions {
  // argv[0] is the program: a path, or a name looked up in this process's PATH.
  std::vector<std::string> argv;
  // false: the child sees only `environment` (plus nothing else: not even PATH).
  bool inherit_environment = true;
  std::map<std::string, std::string> environment;  // added to / overriding what is inherited
  std::filesystem::path working_directory;          // "" = this process's
  std::string stdin_data;                           // "" = /dev/null
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  std::size_t max_output = 1 << 20;  // per stream; the rest is read and dropped
};

struct CommandResult {
  int exit_code = -1;    // when it exited normally
  int term_signal = 0;   // when a signal ended it (SIGKILL after a timeout)
  bool timed_out = false;
  bool cancelled = false;  // the awaiting coroutine was cancelled; the child was killed
  std::string spawn_error;  // could not start it at all ("sbatch: No such file or directory")
  std::string out, err;
  bool out_truncated = false, err_truncated = false;

  bool started() const { return spawn_error.empty(); }
  bool success() const { return started() && !timed_out && !cancelled && term_signal == 0 && exit_code == 0; }
  // "exit 3", "signal 9", "timed out after 30000 ms", "No such file or directory"... for messages.
  std::string describe() const;
};

boost::asio::awaitable<CommandResult> run_command(CommandOptions options);

}  // namespace scigate
