#include <csignal>

#include "server/cli/cli.hpp"

int main(int argc, char** argv) {
  // A client that goes away mid-write must not kill the server.
  std::signal(SIGPIPE, SIG_IGN);
  return scigate::cli::run(std::vector<std::string>(argv, argv + argc));
}
