// Jobs through the real server on a real Slurm cluster: the job tools, the job ledger and its
// poller, credits, and both Slurm connectors as configured in [[sites]] (CLI with slurm_conf,
// slurmrestd on its unix socket). The connectors alone are tested in slurm_test.cpp.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "server_process.hpp"
#include "tool_call.hpp"
#include "tests/support/slurm_cluster.hpp"

using namespace scigate::itest;
using http::verb;
namespace fs = std::filesystem;

namespace {

constexpr const char* kPolicy = R"(
[[rules]]
id = "members-submit"
effect = "permit"
principals = ["role:member"]
tools = ["submit_job"]
[rules.when]
"resources.walltime" = { max = "00:05:00" }

[[rules]]
id = "members-follow"
effect = "permit"
principals = ["role:member"]
tools = ["get_job", "list_jobs", "cancel_job", "read_job_output", "wait_job", "get_usage"]
)";

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
  std::ofstream(s.dir() / "policies" / "demo.toml") << kPolicy;
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
