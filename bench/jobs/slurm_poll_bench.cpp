// What one poll of N Slurm jobs costs, through the CLI connector (one squeue), through the REST
// connector (one GET /jobs), and as N separate `squeue --jobs=ID` calls: the reason the job
// ledger runs one poller per site that asks about all of its jobs at once.
//
//   cmake --build build --target scigate_slurm_poll_bench && build/scigate_slurm_poll_bench [N...]
//
// Brings up its own single-node Slurm (tests/support/slurm_cluster), as root, with the Slurm
// packages installed (scripts/install-deps.sh --test). Jobs are submitted held, so that they
// stay in the queue and every poll sees all of them.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "connectors/scheduler/slurm/slurm_cli.hpp"
#include "connectors/scheduler/slurm/slurm_rest.hpp"
#include "tests/support/run_blocking.hpp"
#include "tests/support/slurm_cluster.hpp"

using namespace scigate;
using namespace scigate::jobs;
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

using scigate::test::run_blocking;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  if (sizes.empty()) sizes = {10, 100, 500};
  std::string why;
  auto* cluster = test::SlurmCluster::get(&why);
  if (!cluster) {
    std::fprintf(stderr, "Slurm is not installed: %s\n", why.c_str());
    return 2;
  }
  SlurmCliOptions co;
  co.slurm_conf = cluster->slurm_conf();
  SlurmCliScheduler cli(co);
  SlurmRestOptions ro;
  ro.unix_socket = cluster->rest_socket();
  SlurmRestScheduler rest(ro);

  std::vector<std::string> ids;
  std::printf("| jobs | CLI: one squeue (ms) | REST: one GET /jobs (ms) | CLI: one squeue per job (ms) | per-job / one |\n");
  std::printf("|---:|---:|---:|---:|---:|\n");
  for (int n : sizes) {
    while (static_cast<int>(ids.size()) < n) {
      int rc = 0;
      auto out = cluster->command({"sbatch", "--parsable", "--hold", "--time=1", "--output=/dev/null", "--wrap=true"}, &rc);
      if (rc != 0) {
        std::fprintf(stderr, "sbatch failed\n");
        return 1;
      }
      ids.push_back(SlurmCliScheduler::parse_sbatch(out));
    }
    std::vector<double> one_cli, one_rest;
    for (int rep = 0; rep < 7; ++rep) {
      auto t0 = Clock::now();
      auto a = run_blocking(cli.poll(ids));
      one_cli.push_back(ms_since(t0));
      t0 = Clock::now();
      auto b = run_blocking(rest.poll(ids));
      one_rest.push_back(ms_since(t0));
      if (static_cast<int>(a.size()) != n || static_cast<int>(b.size()) != n) {
        std::fprintf(stderr, "poll saw %zu (cli) / %zu (rest) of %d jobs\n", a.size(), b.size(), n);
        return 1;
      }
    }
    auto t0 = Clock::now();
    for (const auto& id : ids) run_blocking(cli.poll({id}));
    double separate = ms_since(t0);
    std::printf("| %d | %.1f | %.1f | %.1f | %.0fx |\n", n, median(one_cli), median(one_rest), separate,
                separate / median(one_cli));
    std::fflush(stdout);
  }
  cluster->command({"scancel", "--user=root"});
  return 0;
}
