// Local executor throughput: N trivial jobs through the LocalScheduler (files, wrapper, rlimits,
// bubblewrap when installed, the runner thread) against the same N `bash -c true` started with
// fork/exec and waited for directly. Usage: scigate_jobs_bench [N] [slots] [nobwrap]
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "connectors/scheduler/local/local_scheduler.hpp"

using namespace scigate::jobs;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 200;
  int slots = argc > 2 ? std::atoi(argv[2]) : 64;
  char tmpl[] = "/tmp/scigate-jobs-bench-XXXXXX";
  fs::path root = ::mkdtemp(tmpl);
  ::chmod(root.c_str(), 0755);

  auto t0 = std::chrono::steady_clock::now();
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    pid_t p = ::fork();
    if (p == 0) {
      ::execl("/bin/bash", "bash", "-c", "true", nullptr);
      ::_exit(127);
    }
    pids.push_back(p);
    if (static_cast<int>(pids.size()) >= slots) {
      ::waitpid(pids.front(), nullptr, 0);
      pids.erase(pids.begin());
    }
  }
  for (pid_t p : pids) ::waitpid(p, nullptr, 0);
  double direct_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  double sched_s = 0;
  bool sandboxed = false;
  {
    LocalSchedulerOptions o;
    o.jobs_root = root;
    o.slots_cpus = slots;
    o.tick = std::chrono::milliseconds(1);
    o.use_bwrap = !(argc > 3 && std::string(argv[3]) == "nobwrap");
    LocalScheduler sched(o);
    sandboxed = sched.sandboxed();
    std::vector<std::string> ids;
    auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
      JobSpec s;
      char id[32];
      std::snprintf(id, sizeof id, "j-%012x", i);
      s.gateway_id = id;
      s.project = "bench";
      s.script = "true";
      s.resources.walltime = std::chrono::seconds(60);
      ids.push_back(sched.submit_now(s));
    }
    for (;;) {
      auto st = sched.poll_now(ids);
      int done = 0;
      for (const auto& s : st) done += is_final(s.state) ? 1 : 0;
      if (done == n) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    sched_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  }
  fs::remove_all(root);
  std::printf("jobs=%d slots=%d bwrap=%s\n", n, slots, sandboxed ? "yes" : "no");
  std::printf("direct fork/exec bash -c true: %.3f s, %.0f/s\n", direct_s, n / direct_s);
  std::printf("local scheduler (submit..final): %.3f s, %.0f jobs/s\n", sched_s, n / sched_s);
  std::printf("ratio scheduler/direct time: %.2f\n", sched_s / direct_s);
  return 0;
}
