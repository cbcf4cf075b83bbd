#include <catch2/catch.hpp>

#include "server/config/config.hpp"

using namespace scigate;

TEST_CASE("config [[sites]]: a local site by default, values, slurm sub-table and strict keys") {
  Config d = parse_config("", "/etc/scigate", "test.toml");
  REQUIRE(d.sites.size() == 1);
  CHECK(d.sites[0].id == "local");
  CHECK(d.sites[0].scheduler == "local");
  CHECK(d.sites[0].jobs_root == std::filesystem::path("/etc/scigate/jobs"));
  CHECK(d.sites[0].poll_interval == std::chrono::milliseconds(250));
  CHECK(d.sites[0].run_as == "nobody");

  Config c = parse_config(R"([[sites]]
id = "hpc"
scheduler = "slurm"
jobs_root = "/scratch/scigate"
default_partition = "debug"
partitions = ["debug", "gpu"]
[sites.slurm]
mode = "rest"
rest_socket = "run/slurmrestd.sock"
jwt_token_file = "/etc/scigate/jwt"
user = "scigate"

[[sites]]
id = "here"
jobs_root = "jobs-here"
poll_interval_ms = 100
slots_cpus = 4
slots_memory_mb = 8192
run_as = "scigate-job"
)",
                          "/etc/scigate", "test.toml");
  REQUIRE(c.sites.size() == 2);
  CHECK(c.sites[0].poll_interval == std::chrono::milliseconds(2000));
  CHECK(c.sites[0].partitions == std::vector<std::string>{"debug", "gpu"});
  REQUIRE(c.sites[0].slurm);
  CHECK(c.sites[0].slurm->mode == "rest");
  CHECK(c.sites[0].slurm->rest_socket == std::filesystem::path("/etc/scigate/run/slurmrestd.sock"));
  CHECK(c.sites[0].slurm->user == "scigate");
  CHECK(c.sites[1].jobs_root == std::filesystem::path("/etc/scigate/jobs-here"));
  CHECK(c.sites[1].poll_interval == std::chrono::milliseconds(100));
  CHECK(c.sites[1].slots_cpus == 4);
  CHECK(c.sites[1].slots_memory_mb == 8192);
  CHECK(c.sites[1].run_as == "scigate-job");
  CHECK(c.site("here") == &c.sites[1]);

  auto refused = [](const std::string& text, const std::string& expect) {
    try {
      parse_config(text, "/x", "sites.toml");
      FAIL("expected ConfigError for " << text);
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains(expect));
    }
  };
  refused("[[sites]]\nid = \"a\"\nqueue = \"x\"\n", "unknown key \"queue\"");
  refused("[[sites]]\nid = \"a\"\nscheduler = \"pbs\"\n", "scheduler must be");
  refused("[[sites]]\nscheduler = \"local\"\n", "needs an \"id\"");
  refused("[[sites]]\nid = \"a\"\n[[sites]]\nid = \"a\"\n", "defined twice");
  refused("[[sites]]\nid = \"a\"\n[sites.slurm]\nmode = \"ssh\"\n", "mode must be");
  refused("[[sites]]\nid = \"a\"\n[sites.slurm]\nhost = \"x\"\n", "unknown key \"host\"");
}

TEST_CASE("config [[sites]]: a quantum device behind IBM's Qiskit Runtime") {
  Config c = parse_config(R"([[sites]]
id = "ibm_kingston"
scheduler = "ibm-runtime"
[sites.ibm_runtime]
api_key_file = "secrets/ibm.key"
service_crn = "crn:v1:bluemix:public:quantum-computing:us-east:a/1:2::"
max_shots = 50000
)",
                          "/etc/scigate", "test.toml");
  REQUIRE(c.sites.size() == 1);
  const auto& s = c.sites[0];
  CHECK(s.poll_interval == std::chrono::milliseconds(5000));
  REQUIRE(s.ibm_runtime);
  CHECK(s.ibm_runtime->backend == "ibm_kingston");  // the site id unless named
  CHECK(s.ibm_runtime->url == "https://quantum.cloud.ibm.com/api");
  CHECK(s.ibm_runtime->iam_url == "https://iam.cloud.ibm.com");
  CHECK(s.ibm_runtime->api_key_file == std::filesystem::path("/etc/scigate/secrets/ibm.key"));
  CHECK(s.ibm_runtime->max_shots == 50000);

  auto bad = [](const std::string& text) {
    try {
      parse_config(text, "/etc/scigate", "t.toml");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(bad("[[sites]]\nid = \"q\"\nscheduler = \"ibm-runtime\"\n").find("no [sites.ibm_runtime] table") !=
        std::string::npos);
  CHECK(bad("[[sites]]\nid = \"q\"\nscheduler = \"ibm-runtime\"\n[sites.ibm_runtime]\nservice_crn = \"x\"\n")
            .find("needs api_key_file and service_crn") != std::string::npos);
  CHECK(bad("[[sites]]\nid = \"q\"\nscheduler = \"ibm-runtime\"\n[sites.ibm_runtime]\napi_key = \"inline\"\n")
            .find("api_key") != std::string::npos);  // keys never in the config file itself
  CHECK(bad("[[sites]]\nid = \"q\"\nscheduler = \"pbs\"\n").find("\"ibm-runtime\"") != std::string::npos);
}
