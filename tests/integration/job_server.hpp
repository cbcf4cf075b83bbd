#pragma once
// A server with the embedded local executor for job integration tests (jobs, tasks): a local
// site polled every 50 ms, 1 credit per core-second, 0.5 per submit, a second project "other"
// for bob, and a policy that lets members run jobs of up to 10 minutes and follow them.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/support/eventually.hpp"
#include "server_process.hpp"
#include "tool_call.hpp"

namespace scigate::itest {

inline constexpr const char* kJobsPolicy = R"(
[[rules]]
id = "members-submit"
effect = "permit"
principals = ["role:member"]
tools = ["submit_job"]
[rules.when]
"resources.walltime" = { max = "00:10:00" }

[[rules]]
id = "members-follow"
effect = "permit"
principals = ["role:member"]
tools = ["get_job", "list_jobs", "cancel_job", "read_job_output", "wait_job", "get_usage", "whoami"]
)";

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A server with a local site polled every 50 ms, 1 credit per core-second, 0.5 per submit, a
// second project "other" for bob, and a policy that lets members run jobs of up to 10 minutes.
struct JobServer {
  ServerProcess s;
  std::string bob_key;
  std::filesystem::path jobs_root;

  JobServer() : s(R"([credits.rates]
"cpu_core_hour" = 3600
"call:submit_job" = 0.5

[[sites]]
id = "local"
jobs_root = "jobsroot"
poll_interval_ms = 50
slots_cpus = 2

[[projects]]
id = "other"
members = ["bob"]
)",
                  false) {
    ::chmod(s.dir().c_str(), 0755);  // the jobs' user must reach jobs_root
    jobs_root = s.dir() / "jobsroot";
    std::ofstream(s.dir() / "policies" / "demo.toml") << kJobsPolicy;
    std::string out;
    REQUIRE(run_command({binary(), "key", "create", "--config", s.config_path(), "--principal", "bob"}, &out) == 0);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    bob_key = out;
    s.start();
  }
};

inline std::string error_code(const json& result) {
  if (!result.value("isError", false)) return "";
  return result["_meta"]["io.scigate/error"].value("code", "");
}

inline json submit(Client& c, const std::string& key, json args) {
  auto r = call_tool(c, key, "submit_job", std::move(args));
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  return r["structuredContent"];
}

inline json wait_final(Client& c, const std::string& key, const std::string& id, double timeout_s = 20) {
  auto r = call_tool(c, key, "wait_job", {{"job_id", id}, {"timeout_s", timeout_s}});
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  return r["structuredContent"];
}

using scigate::test::eventually;

}  // namespace scigate::itest
