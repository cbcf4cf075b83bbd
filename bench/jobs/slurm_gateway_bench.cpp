// What scigate adds in front of Slurm, against the same single-node Slurm in one run:
//
//  1. submit latency: submit_job through scigate (HTTP, auth, policy, credit hold, job ledger,
//     audit, then POST /job/submit to slurmrestd) vs the same POST made straight to slurmrestd
//     by the connector in-process (SlurmRestScheduler::submit, no gateway); interleaved, so
//     both see the same machine;
//  2. polling: A agents calling get_job on J tracked jobs as fast as they can for S seconds;
//     slurmctld's own RPC counters (sdiag: REQUEST_JOB_INFO) say how many job queries reached
//     the scheduler meanwhile, against the one per poll interval the site's poller makes.
//
//   cmake --build build --target scigate_slurm_gateway_bench scigate
//   build/scigate_slurm_gateway_bench [--submits 100] [--jobs 1000] [--agents 100] [--seconds 10]
//
// Brings up its own Slurm (tests/support/slurm_cluster) and scigate (the integration tests'
// ServerProcess); run as root with the Slurm packages installed. The partition is set DOWN for
// the run, so every job stays PENDING and is polled, and nothing runs.
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_options.hpp"
#include "connectors/scheduler/slurm/slurm_rest.hpp"
#include "tests/integration/server_process.hpp"
#include "tests/support/run_blocking.hpp"
#include "tests/support/slurm_cluster.hpp"

using namespace scigate;
using namespace scigate::jobs;
using namespace scigate::itest;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * v.size()))];
}

// slurmctld's count of one RPC type, from sdiag.
long rpc_count(const test::SlurmCluster& c, const std::string& type) {
  std::string out = c.command({"sdiag"});
  std::regex re(type + R"(\s+\(\s*\d+\)\s+count:(\d+))");
  std::smatch m;
  return std::regex_search(out, m, re) ? std::stol(m[1]) : 0;
}

json call(Client& c, const std::string& key, const std::string& tool, json args) {
  auto req = modern_request(1, "tools/call", {{"name", tool}, {"arguments", std::move(args)}});
  auto r = c.request(http::verb::post, "/mcp", modern_headers(key, "tools/call", tool), req.dump());
  json body = r.json_body();
  if (r.status != 200 || !body.contains("result") || body["result"].value("isError", false))
    throw std::runtime_error(tool + " failed: " + r.body.substr(0, 400));
  return body["result"]["structuredContent"];
}

constexpr const char* kPolicy = R"(
[[rules]]
id = "bench"
effect = "permit"
principals = ["role:member"]
tools = ["submit_job", "get_job", "list_jobs", "get_usage"]
)";

}  // namespace

int main(int argc, char** argv) {
  int submits = 100, jobs = 1000, agents = 100, seconds = 10;
  scigate::bench::parse_options(argc, argv, 1,
                       "scigate_slurm_gateway_bench [--submits 100] [--jobs 1000] [--agents 100] [--seconds 10]",
                       [&](const std::string& a, const std::string& s) {
                         int v = std::stoi(s);
                         if (a == "--submits") submits = v;
                         else if (a == "--jobs") jobs = v;
                         else if (a == "--agents") agents = v;
                         else if (a == "--seconds") seconds = v;
                         else return false;
                         return true;
                       });
  std::string why;
  auto* cluster = test::SlurmCluster::get(&why);
  if (!cluster) {
    std::fprintf(stderr, "Slurm is not installed: %s\n", why.c_str());
    return 2;
  }
  cluster->command({"scontrol", "update", "PartitionName=debug", "State=DOWN"});

  // scigate with one Slurm site through slurmrestd's unix socket, polled every second; jobs free.
  ServerProcess s("[credits]\nenabled = false\n", false);
  std::ofstream(s.config_path(), std::ios::app)
      << "\n[[sites]]\nid = \"slurm\"\nscheduler = \"slurm\"\njobs_root = \"" << (cluster->jobs_dir() / "bench").string()
      << "\"\npoll_interval_ms = 1000\nrun_as = \"" << cluster->job_user() << "\"\n[sites.slurm]\nmode = \"rest\"\n"
      << "rest_socket = \"" << cluster->rest_socket().string() << "\"\nslurm_conf = \"" << cluster->slurm_conf().string()
      << "\"\n";
  std::ofstream(s.dir() / "policies" / "demo.toml") << kPolicy;
  s.start();
  const std::string key = s.user_key();

  SlurmRestOptions ro;
  ro.unix_socket = cluster->rest_socket();
  SlurmRestScheduler direct(ro);
  boost::asio::io_context io;

  // 1. Submit latency, interleaved.
  Client c(s.port());
  std::vector<double> via, straight;
  std::vector<std::string> gateway_ids;
  for (int i = 0; i < submits + 5; ++i) {
    auto t0 = Clock::now();
    auto r = call(c, key, "submit_job",
                  {{"name", "bench"}, {"script", "true\n"}, {"resources", {{"walltime", "00:01:00"}}}});
    double a = ms_since(t0);
    JobSpec spec;
    spec.gateway_id = "direct-" + std::to_string(i);
    spec.name = spec.gateway_id;
    spec.script = "true\n";
    spec.resources.walltime = std::chrono::seconds(60);
    spec.working_directory = cluster->jobs_dir();
    spec.stdout_path = cluster->jobs_dir() / "direct.out";
    spec.stderr_path = spec.stdout_path;
    spec.run_as = cluster->job_user();
    t0 = Clock::now();
    test::run_blocking(io, direct.submit(spec));
    double b = ms_since(t0);
    gateway_ids.push_back(r["job_id"]);
    if (i >= 5) {  // the first few warm connections and caches
      via.push_back(a);
      straight.push_back(b);
    }
  }
  double added_p50 = pct(via, 0.5) - pct(straight, 0.5);
  std::printf("submit (n=%d): through scigate p50 %.2f ms p99 %.2f ms; straight to slurmrestd p50 %.2f ms p99 %.2f ms; "
              "added p50 %.2f ms (floor 5 ms: %s)\n",
              submits, pct(via, 0.5), pct(via, 0.99), pct(straight, 0.5), pct(straight, 0.99), added_p50,
              added_p50 <= 5 ? "met" : "NOT met");
  std::fflush(stdout);

  // 2. Polling: J tracked jobs, A agents.
  while (static_cast<int>(gateway_ids.size()) < jobs)
    gateway_ids.push_back(call(c, key, "submit_job", {{"script", "true\n"}, {"resources", {{"walltime", "00:01:00"}}}})["job_id"]);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // every job seen by a poll
  std::atomic<long> calls{0}, errors{0};
  std::atomic<bool> stop{false};
  long rpc0 = rpc_count(*cluster, "REQUEST_JOB_INFO");
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int a = 0; a < agents; ++a)
    threads.emplace_back([&, a] {
      Client mine(s.port());
      std::mt19937 rng(a);
      std::uniform_int_distribution<std::size_t> pick(0, gateway_ids.size() - 1);
      while (!stop.load()) {
        try {
          auto j = call(mine, key, "get_job", {{"job_id", gateway_ids[pick(rng)]}});
          if (j["state"] != "QUEUED") errors++;
          calls++;
        } catch (...) {
          errors++;
        }
      }
    });
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double elapsed_s = ms_since(t0) / 1000;
  long rpcs = rpc_count(*cluster, "REQUEST_JOB_INFO") - rpc0;
  std::printf("polling: %d agents, %d tracked jobs, %.1f s: %ld get_job calls (%.0f/s, %ld errors) -> %ld "
              "REQUEST_JOB_INFO at slurmctld (the poller's one per 1 s interval: ~%.0f); %s\n",
              agents, jobs, elapsed_s, calls.load(), calls.load() / elapsed_s, errors.load(), rpcs, elapsed_s,
              rpcs <= elapsed_s + 2 ? "no queries beyond the poller's" : "MORE queries than the poller's");
  std::ofstream(std::string(SCIGATE_SOURCE_DIR) + "/bench/jobs/gateway-last-run.json")
      << json{{"submit_through_scigate_ms", {{"p50", pct(via, 0.5)}, {"p99", pct(via, 0.99)}}},
              {"submit_straight_ms", {{"p50", pct(straight, 0.5)}, {"p99", pct(straight, 0.99)}}},
              {"added_p50_ms", added_p50},
              {"poll", {{"agents", agents}, {"jobs", jobs}, {"seconds", elapsed_s}, {"get_job_calls", calls.load()},
                        {"errors", errors.load()}, {"job_info_rpcs", rpcs}}}}
             .dump(2);
  cluster->command({"scancel", "--user=" + cluster->job_user()});
  cluster->command({"scancel", "--user=root"});
  cluster->command({"scontrol", "update", "PartitionName=debug", "State=UP"});
  return 0;
}
