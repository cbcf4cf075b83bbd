// Jobs through the real server on a real Slurm cluster: the job tools, the job ledger and its
// poller, credits, and both Slurm connectors as configured in [[sites]] (CLI with slurm_conf,
// slurmrestd on its unix socket). The connectors alone are tested in slurm_test.cpp.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "job_server.hpp"
#include "server_process.hpp"
#include "tool_call.hpp"
#include "tests/support/slurm_cluster.hpp"

using namespace scigate::itest;
using http::verb;
namespace fs = std::filesystem;

namespace {

// The job policy of job_server.hpp: members run jobs of up to 10 minutes and follow them.

// Two sites on the one test cluster: the CLI (with its slurm.conf) and slurmrestd's unix socket.
std::string site_config(const scigate::test::SlurmCluster& cluster) {
  fs::path root = cluster.jobs_dir() / ("server-" + std::to_string(::getpid()));
  std::string common = "poll_interval_ms = 200\nrun_as = \"" + cluster.job_user() + "\"\n";
  return "[[sites]]\nid = \"slurm-cli\"\nscheduler = \"slurm\"\njobs_root = \"" + (root / "cli").string() + "\"\n" +
         common + "[sites.slurm]\nmode = \"cli\"\nslurm_conf = \"" + cluster.slurm_conf().string() + "\"\n\n" +
         "[[sites]]\nid = \"slurm-rest\"\nscheduler = \"slurm\"\njobs_root = \"" + (root / "rest").string() + "\"\n" +
         common + "[sites.slurm]\nmode = \"rest\"\nrest_socket = \"" + cluster.rest_socket().string() +
         "\"\nslurm_conf = \"" + cluster.slurm_conf().string() + "\"\n";
}

}  // namespace

TEST_CASE("slurm jobs: submit_job through the server runs on Slurm by CLI and by REST with output and credits",
          "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  ServerProcess s("[credits.rates]\n\"cpu_core_hour\" = 3600\n", false);
  // Appended as written: merge_config folds repeated [[sites]] headers into one.
  std::ofstream(s.config_path(), std::ios::app) << "\n" << site_config(*cluster);
  std::ofstream(s.dir() / "policies" / "demo.toml") << kJobsPolicy;
  s.start();
  Client c(s.port());
  for (std::string site : {"slurm-cli", "slurm-rest"}) {
    INFO(site);
    json args = {{"name", "e2e"},
                 {"site", site},
                 {"script", "echo hello from slurm\nexit 0\n"},
                 {"resources", {{"walltime", "00:02:00"}}}};
    auto submitted = call_tool(c, s.user_key(), "submit_job", args);
    INFO(submitted.dump());
    REQUIRE(submitted["isError"] == false);
    std::string id = submitted["structuredContent"]["job_id"];
    // Visible at once, from the ledger.
    auto got = call_tool(c, s.user_key(), "get_job", {{"job_id", id}});
    REQUIRE(got["isError"] == false);
    CHECK(got["structuredContent"]["site"] == site);

    auto waited = call_tool(c, s.user_key(), "wait_job", {{"job_id", id}, {"timeout_s", 90}});
    INFO(waited.dump());
    REQUIRE(waited["isError"] == false);
    const json& job = waited["structuredContent"];
    CHECK(job["state"] == "COMPLETED");
    CHECK(job["native_state"] == "COMPLETED");
    CHECK(job["exit_code"] == 0);

    auto out = call_tool(c, s.user_key(), "read_job_output", {{"job_id", id}});
    INFO(out.dump());
    REQUIRE(out["isError"] == false);
    CHECK(out["structuredContent"]["text"] == "hello from slurm\n");

    // The job's hold is settled once it ends: what ran (at least a second of one CPU), never
    // more than the hold.
    auto settled = call_tool(c, s.user_key(), "get_job", {{"job_id", id}});
    const json& credits = settled["structuredContent"]["credits"];
    INFO(credits.dump());
    CHECK(credits["settled"] == true);
    CHECK(credits["cost"].get<double>() <= credits["held"].get<double>());
  }
  // A failing script is FAILED with its exit code, by either connector.
  auto failing = call_tool(c, s.user_key(), "submit_job",
                           {{"name", "fails"}, {"site", "slurm-rest"}, {"script", "exit 3\n"},
                            {"resources", {{"walltime", "00:02:00"}}}});
  REQUIRE(failing["isError"] == false);
  auto waited = call_tool(c, s.user_key(), "wait_job",
                          {{"job_id", failing["structuredContent"]["job_id"]}, {"timeout_s", 90}});
  INFO(waited.dump());
  CHECK(waited["structuredContent"]["state"] == "FAILED");
  CHECK(waited["structuredContent"]["exit_code"] == 3);
}

namespace {

// A server with both Slurm sites, 0.01 credit per core-second (so hundreds of jobs fit the
// demo's 1000 credits), and the policy above.
struct SlurmServer {
  ServerProcess s;
  explicit SlurmServer(const scigate::test::SlurmCluster& cluster) : s("[credits.rates]\n\"cpu_core_hour\" = 36\n", false) {
    std::ofstream(s.config_path(), std::ios::app) << "\n" << site_config(cluster);
    std::ofstream(s.dir() / "policies" / "demo.toml") << kJobsPolicy;
    s.start();
  }
};

json submit_ok(Client& c, const std::string& key, const std::string& site, const std::string& script,
               const std::string& walltime = "00:01:00") {
  auto r = call_tool(c, key, "submit_job",
                     {{"site", site}, {"script", script}, {"resources", {{"walltime", walltime}}}});
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  return r["structuredContent"];
}

json usage(Client& c, const std::string& key) {
  return call_tool(c, key, "get_usage", json::object())["structuredContent"];
}

// The flat per-call rate of a tool, from get_usage's rates (0 when it has none).
double call_fee(const json& u, const std::string& tool) {
  for (const auto& r : u["rates"])
    if (r["resource"] == "call:" + tool) return r["credits_per_unit"].get<double>();
  return 0;
}

int job_charges(const json& u) {
  int n = 0;
  for (const auto& ch : u["recent_charges"]) n += ch["tool"] == "job" ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("slurm jobs: 200 jobs in flight through the server all end, each settled once", "[slurm][slow]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  SlurmServer srv(*cluster);
  Client c(srv.s.port());
  const auto& key = srv.s.user_key();
  const json usage0 = usage(c, key);
  const double balance0 = usage0["balance"];
  std::vector<std::string> ids;
  for (int i = 0; i < 200; ++i)
    ids.push_back(submit_ok(c, key, i % 2 ? "slurm-rest" : "slurm-cli", "echo job " + std::to_string(i) + "\n")["job_id"]);
  // All tracked at once: the ledger answers for every one of them while they queue.
  auto listed = call_tool(c, key, "list_jobs", {{"limit", 200}})["structuredContent"];
  CHECK(listed["jobs"].size() == 200);

  std::map<std::string, json> finals;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(8);
  while (finals.size() < ids.size() && std::chrono::steady_clock::now() < deadline) {
    for (const auto& id : ids) {
      if (finals.count(id)) continue;
      auto j = call_tool(c, key, "get_job", {{"job_id", id}})["structuredContent"];
      if (j["credits"].value("settled", false)) finals[id] = j;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  REQUIRE(finals.size() == ids.size());
  int completed = 0;
  double costs = 0;
  for (const auto& [id, j] : finals) {
    INFO(j.dump());
    completed += j["state"] == "COMPLETED" ? 1 : 0;
    costs += j["credits"]["cost"].get<double>();
  }
  CHECK(completed == 200);
  // Each job paid once, what it used: the balance moved by exactly the job costs and the
  // submit calls' flat fee.
  auto u = usage(c, key);
  CHECK(u["held"].get<double>() == 0);
  CHECK(u["balance"].get<double>() == Approx(balance0 - costs - 200 * call_fee(usage0, "submit_job")).margin(1e-6));
  auto out = call_tool(c, key, "read_job_output", {{"job_id", ids[137]}})["structuredContent"];
  CHECK(out["text"] == "job 137\n");
}

TEST_CASE("slurm jobs: scigate killed while Slurm jobs run finds them ended after restart, charged once",
          "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  SlurmServer srv(*cluster);
  std::vector<std::string> ids;
  {
    Client c(srv.s.port());
    for (std::string site : {"slurm-cli", "slurm-rest"})
      ids.push_back(submit_ok(c, srv.s.user_key(), site, "sleep 4\necho survived\n")["job_id"]);
    REQUIRE(eventually([&] {
      for (const auto& id : ids)
        if (call_tool(c, srv.s.user_key(), "get_job", {{"job_id", id}})["structuredContent"]["state"] != "ACTIVE")
          return false;
      return true;
    }, std::chrono::seconds(60)));
  }
  srv.s.kill_hard();
  // The jobs end while no scigate is running.
  std::this_thread::sleep_for(std::chrono::seconds(6));
  srv.s.start();
  Client c(srv.s.port());
  for (const auto& id : ids) {
    INFO(id);
    auto w = call_tool(c, srv.s.user_key(), "wait_job", {{"job_id", id}, {"timeout_s", 60}})["structuredContent"];
    CHECK(w["state"] == "COMPLETED");
    CHECK(call_tool(c, srv.s.user_key(), "read_job_output", {{"job_id", id}})["structuredContent"]["text"] ==
          "survived\n");
  }
  REQUIRE(eventually([&] {
    auto u = usage(c, srv.s.user_key());
    return u["held"].get<double>() == 0 && job_charges(u) == 2;
  }, std::chrono::seconds(20)));
  // A second restart changes nothing: no job is settled twice.
  c.close();
  REQUIRE(srv.s.stop() == 0);
  srv.s.start();
  Client c2(srv.s.port());
  std::this_thread::sleep_for(std::chrono::seconds(1));
  CHECK(job_charges(usage(c2, srv.s.user_key())) == 2);
}

TEST_CASE("slurm jobs: with slurmctld stopped, submit_job says the site is unavailable and holds nothing",
          "[slurm][slow]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  SlurmServer srv(*cluster);
  Client c(srv.s.port());
  const auto& key = srv.s.user_key();
  auto before = usage(c, key);
  cluster->stop_controller();
  for (std::string site : {"slurm-cli", "slurm-rest"}) {
    INFO(site);
    auto r = call_tool(c, key, "submit_job",
                       {{"site", site}, {"script", "true\n"}, {"resources", {{"walltime", "00:01:00"}}}});
    INFO(r.dump());
    REQUIRE(r["isError"] == true);
    CHECK(r["_meta"]["io.scigate/error"]["code"] == "backend_unavailable");
    CHECK(r["content"][0]["text"].get<std::string>().find("unavailable") != std::string::npos);
  }
  auto after = usage(c, key);
  CHECK(after["held"].get<double>() == 0);
  // Only the flat per-call fee of the two calls (every call that ran pays it); no job cost.
  CHECK(after["balance"].get<double>() ==
        Approx(before["balance"].get<double>() - 2 * call_fee(before, "submit_job")).margin(1e-9));
  // The refused submissions are on record as what they were: FAILED, rejected, free.
  auto listed = call_tool(c, key, "list_jobs", json::object())["structuredContent"]["jobs"];
  REQUIRE(listed.size() == 2);
  for (const auto& j : listed) {
    CHECK(j["state"] == "FAILED");
    CHECK(j["native_state"] == "rejected");
  }
  cluster->restart();
  auto back = submit_ok(c, key, "slurm-cli", "true\n");
  CHECK(call_tool(c, key, "wait_job", {{"job_id", back["job_id"]}, {"timeout_s", 60}})["structuredContent"]["state"] ==
        "COMPLETED");
}

TEST_CASE("slurm jobs: a job over its memory request is killed and FAILED, never COMPLETED", "[slurm]") {
  // No cgroups here: the test cluster enforces memory with JobAcctGatherParams=OverMemoryKill
  // (RSS sampled every second), as sites without cgroup v2 do. Slurm 22.05 then reports the job
  // FAILED (signal 9) rather than OUT_OF_MEMORY, which needs cgroups; both map to FAILED.
  SLURM_CLUSTER_OR_SKIP(cluster);
  SlurmServer srv(*cluster);
  Client c(srv.s.port());
  const auto& key = srv.s.user_key();
  for (std::string site : {"slurm-cli", "slurm-rest"}) {
    INFO(site);
    auto r = call_tool(c, key, "submit_job",
                       {{"site", site},
                        {"script", "python3 -c 'import time\nb=[]\nfor i in range(40):\n  b.append(bytearray(16<<20)); "
                                   "time.sleep(0.1)\ntime.sleep(5)\nprint(\"survived\")'\n"},
                        {"resources", {{"walltime", "00:02:00"}, {"memory", "64M"}}}});
    INFO(r.dump());
    REQUIRE(r["isError"] == false);
    std::string id = r["structuredContent"]["job_id"];
    auto w = call_tool(c, key, "wait_job", {{"job_id", id}, {"timeout_s", 90}})["structuredContent"];
    INFO(w.dump());
    CHECK(w["state"] == "FAILED");
    CHECK(w["native_state"] != "COMPLETED");
    CHECK(w["signal"] == 9);
    auto out = call_tool(c, key, "read_job_output", {{"job_id", id}})["structuredContent"]["text"].get<std::string>();
    CHECK(out.find("survived") == std::string::npos);
    // Slurm's own words reach the agent on the job's stderr.
    auto err = call_tool(c, key, "read_job_output", {{"job_id", id}, {"stream", "stderr"}})["structuredContent"]["text"]
                   .get<std::string>();
    CHECK(err.find("Exceeded job memory limit") != std::string::npos);
  }
}
