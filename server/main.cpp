#include <sys/resource.h>

#include <csignal>

#include "server/cli/cli.hpp"

int main(int argc, char** argv) {
  // A client that goes away mid-write must not kill the server.
  std::signal(SIGPIPE, SIG_IGN);
  // One descriptor per client connection: take the hard limit, not the default soft 1024.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  return scigate::cli::run(std::vector<std::string>(argv, argv + argc));
}
