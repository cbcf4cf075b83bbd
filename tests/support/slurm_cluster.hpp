#pragma once
// A real single-node Slurm 22.05 for the tests of one test binary: scripts/slurm/start.sh in a
// fresh temp state directory with free ports, on first use; scripts/slurm/stop.sh --purge when
// the binary exits (SCIGATE_KEEP_SLURM=1 keeps the state directory and its logs).
//
// Tests skip (a Catch2 WARN, counted and summed up at exit) only when the Slurm binaries are
// not installed: `scripts/install-deps.sh --test` installs them, and CI does. When they are
// installed but the cluster cannot start, the test fails.
#include <filesystem>
#include <string>
#include <vector>

namespace scigate::test {

class SlurmCluster {
 public:
  // The cluster, started on the first call; nullptr (and *why) when Slurm is not installed.
  static SlurmCluster* get(std::string* why);
  // Counts a skipped test (see SLURM_CLUSTER_OR_SKIP).
  static void note_skip();

  const std::filesystem::path& state_dir() const { return state_; }
  std::filesystem::path slurm_conf() const { return state_ / "etc" / "slurm.conf"; }
  std::filesystem::path rest_socket() const { return rest_socket_; }
  const std::string& rest_url() const { return rest_url_; }
  const std::string& job_user() const { return job_user_; }
  // A world-writable (sticky) directory for jobs' output, owned by this cluster.
  std::filesystem::path jobs_dir() const { return state_ / "jobs"; }
  // `scontrol token username=<job user> lifespan=<s>`: the JWT for the REST endpoint.
  std::string token(int lifespan_s = 3600) const;
  // Runs a Slurm command against this cluster (argv, no shell); returns its stdout.
  std::string command(const std::vector<std::string>& argv, int* exit_code = nullptr) const;

  // Stops slurmctld (SIGTERM by its PID file), as an outage would; restart() brings it back.
  void stop_controller();
  // scripts/slurm/start.sh on the same state directory: starts whatever is not running.
  void restart();

  ~SlurmCluster();

 private:
  SlurmCluster() = default;
  void start();
  void start_once();
  std::filesystem::path state_, rest_socket_;
  std::string rest_url_, job_user_;
};

}  // namespace scigate::test

// In a TEST_CASE: binds `cluster` or skips the test with a clear message.
#define SLURM_CLUSTER_OR_SKIP(cluster)                                  \
  std::string slurm_skip_reason_;                                       \
  auto* cluster = ::scigate::test::SlurmCluster::get(&slurm_skip_reason_); \
  if (!cluster) {                                                       \
    WARN("SKIPPED (Slurm not installed): " << slurm_skip_reason_);      \
    ::scigate::test::SlurmCluster::note_skip();                         \
    return;                                                             \
  }
