#include "server/common/command_runner.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>

extern char** environ;

namespace scigate {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

std::string CommandResult::describe() const {
  if (!spawn_error.empty()) return spawn_error;
  if (timed_out) return "timed out (killed)";
  if (cancelled) return "cancelled (killed)";
  if (term_signal != 0) return "killed by signal " + std::to_string(term_signal);
  return "exit " + std::to_string(exit_code);
}

namespace {

// Owns a file descriptor until it is released to asio or closed.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

std::string errno_text(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// stdin as a sealed in-memory file: the child reads it at its own pace, and there is no pipe
// whose closed end could send SIGPIPE to the server.
Fd stdin_file(const std::string& data, std::string* error) {
  if (data.empty()) {
    Fd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!fd) *error = errno_text("/dev/null", errno);
    return fd;
  }
  Fd fd(static_cast<int>(::syscall(SYS_memfd_create, "stdin", MFD_CLOEXEC)));
  if (!fd) fd = Fd(::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (!fd) {
    *error = errno_text("stdin file", errno);
    return fd;
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *error = errno_text("stdin file", errno);
      return Fd();
    }
    done += static_cast<size_t>(n);
  }
  ::lseek(fd.get(), 0, SEEK_SET);
  return fd;
}

std::vector<std::string> build_environment(const CommandOptions& o) {
  std::map<std::string, std::string> env;
  if (o.inherit_environment) {
    for (char** e = environ; e && *e; ++e) {
      std::string_view kv(*e);
      auto eq = kv.find('=');
      if (eq == std::string_view::npos) continue;
      env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
    }
  }
  for (const auto& [k, v] : o.environment) env[k] = v;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

struct Capture {
  std::string data;
  bool truncated = false;
};

asio::awaitable<Capture> drain(asio::posix::stream_descriptor& pipe, size_t cap) {
  Capture c;
  std::array<char, 16384> buf;
  for (;;) {
    auto [ec, n] = co_await pipe.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
    if (n > 0) {
      size_t keep = c.data.size() < cap ? std::min(n, cap - c.data.size()) : 0;
      c.data.append(buf.data(), keep);
      if (keep < n) c.truncated = true;
    }
    if (ec) break;  // eof, or cancelled
  }
  co_return c;
}

// Readable once the child has exited. Returns whether it did (false: cancelled).
asio::awaitable<bool> exited(asio::posix::stream_descriptor& exit_fd) {
  auto [ec] = co_await exit_fd.async_wait(asio::posix::descriptor_base::wait_read, asio::as_tuple(asio::use_awaitable));
  co_return !ec;
}

asio::awaitable<bool> expires(asio::steady_timer& timer) {
  auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  co_return !ec;
}

void decode_status(int status, CommandResult& r) {
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) r.term_signal = WTERMSIG(status);
}

}  // namespace

asio::awaitable<CommandResult> run_command(CommandOptions o) {
  CommandResult r;
  if (o.argv.empty() || o.argv[0].empty()) {
    r.spawn_error = "no program to run";
    co_return r;
  }
  const std::string& program = o.argv[0];

  std::string error;
  Fd in = stdin_file(o.stdin_data, &error);
  if (!in) {
    r.spawn_error = error;
    co_return r;
  }
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    r.spawn_error = errno_text("pipe", errno);
    co_return r;
  }
  Fd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    r.spawn_error = errno_text("pipe", errno);
    co_return r;
  }
  Fd err_r(err_pipe[0]), err_w(err_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 clears close-on-exec on the copies; every other descriptor of ours stays behind.
  posix_spawn_file_actions_adddup2(&actions, in.get(), 0);
  posix_spawn_file_actions_adddup2(&actions, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_w.get(), 2);
  if (!o.working_directory.empty())
    posix_spawn_file_actions_addchdir_np(&actions, o.working_directory.c_str());

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);  // the server ignores SIGPIPE; the child must not
  posix_spawnattr_setpgroup(&attr, 0);         // its own group: a timeout kills all of it
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  std::vector<std::string> env = build_environment(o);
  std::vector<char*> envp, argvp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  for (auto& a : o.argv) argvp.push_back(a.data());
  argvp.push_back(nullptr);

  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, program.c_str(), &actions, &attr, argvp.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    r.spawn_error = errno_text(program, rc);
    co_return r;
  }
  in.reset();
  out_w.reset();
  err_w.reset();

  // How we learn that it exited: a pidfd, or a thread blocked in waitpid that writes the
  // status into a pipe (kernels before 5.3, or sandboxes without pidfd_open).
  bool have_pidfd = true;
  Fd exit_fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  int status_from_thread = 0;
  Fd status_r;
  if (!exit_fd) {
    have_pidfd = false;
    int sp[2];
    if (::pipe2(sp, O_CLOEXEC) != 0) {
      // Nothing to wait with: kill it rather than leave it unobserved.
      ::kill(-pid, SIGKILL);
      std::thread([pid] { ::waitpid(pid, nullptr, 0); }).detach();
      r.spawn_error = errno_text("pipe", errno);
      co_return r;
    }
    status_r = Fd(sp[0]);
    int wfd = sp[1];
    std::thread([pid, wfd] {
      int st = 0;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
      [[maybe_unused]] auto n = ::write(wfd, &st, sizeof st);
      ::close(wfd);
    }).detach();
    exit_fd = Fd(::dup(status_r.get()));
  }

  auto ex = co_await asio::this_coro::executor;
  asio::posix::stream_descriptor out_s(ex, out_r.release()), err_s(ex, err_r.release()), exit_s(ex, exit_fd.release());
  asio::steady_timer timer(ex, o.timeout);

  auto outcome = co_await ((drain(out_s, o.max_output) && drain(err_s, o.max_output) && exited(exit_s)) ||
                           expires(timer));
  bool reaped = false;
  if (outcome.index() == 0) {
    auto& [out, err, did_exit] = std::get<0>(outcome);
    r.out = std::move(out.data);
    r.out_truncated = out.truncated;
    r.err = std::move(err.data);
    r.err_truncated = err.truncated;
    if (did_exit) {
      int st = 0;
      if (have_pidfd) {
        pid_t w;
        while ((w = ::waitpid(pid, &st, WNOHANG)) < 0 && errno == EINTR) {
        }
        if (w == pid) decode_status(st, r);  // ECHILD: someone else reaped it; status unknown
        reaped = w == pid || (w < 0 && errno == ECHILD);
      } else {
        ssize_t n = ::read(status_r.get(), &status_from_thread, sizeof status_from_thread);
        if (n == static_cast<ssize_t>(sizeof status_from_thread)) decode_status(status_from_thread, r);
        reaped = true;
      }
    } else {
      r.cancelled = true;
    }
  } else if (std::get<1>(outcome)) {
    r.timed_out = true;
  } else {
    r.cancelled = true;
  }
  if (!reaped) {
    // Timed out or cancelled: kill the whole group, and reap off this thread (a process in
    // uninterruptible sleep can take a while to die).
    ::kill(-pid, SIGKILL);
    r.term_signal = SIGKILL;
    if (have_pidfd) std::thread([pid] { ::waitpid(pid, nullptr, 0); }).detach();
    // without a pidfd the waiting thread reaps it
  }
  co_return r;
}

}  // namespace scigate
