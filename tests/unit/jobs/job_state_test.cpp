#include <catch2/catch.hpp>

#include "connectors/scheduler/job_ledger.hpp"
#include "tools/jobs/job_tools.hpp"

using namespace scigate;
using namespace scigate::jobs;

TEST_CASE("job states: PSI/J names both ways, final states") {
  for (auto s : {JobState::kNew, JobState::kQueued, JobState::kActive, JobState::kCompleted, JobState::kFailed,
                 JobState::kCanceled})
    CHECK(parse_job_state(to_string(s)) == s);
  CHECK(parse_job_state("completed") == JobState::kCompleted);
  CHECK(parse_job_state("Canceled") == JobState::kCanceled);
  CHECK_FALSE(parse_job_state("CANCELLED"));
  CHECK_FALSE(parse_job_state(""));
  CHECK(is_final(JobState::kFailed));
  CHECK_FALSE(is_final(JobState::kActive));
}

TEST_CASE("job arguments: walltime and memory forms") {
  CHECK(parse_walltime_arg("01:00:00") == std::chrono::seconds(3600));
  CHECK(parse_walltime_arg("1-00:00:00") == std::chrono::seconds(86400));
  CHECK(parse_walltime_arg("2-12:30:05") == std::chrono::seconds(2 * 86400 + 12 * 3600 + 30 * 60 + 5));
  CHECK(parse_walltime_arg("00:00:02") == std::chrono::seconds(2));
  CHECK(parse_walltime_arg("90") == std::chrono::seconds(90 * 60));  // Slurm: minutes
  CHECK_FALSE(parse_walltime_arg("00:00:00"));
  CHECK_FALSE(parse_walltime_arg("UNLIMITED"));
  CHECK_FALSE(parse_walltime_arg("abc"));
  CHECK(parse_memory_mb(nlohmann::json(512)) == 512);
  CHECK(parse_memory_mb(nlohmann::json("4G")) == 4096);
  CHECK(parse_memory_mb(nlohmann::json("512M")) == 512);
  CHECK(parse_memory_mb(nlohmann::json("1024")) == 1024);
  CHECK_FALSE(parse_memory_mb(nlohmann::json("lots")));
}

TEST_CASE("job arguments: environment names are checked, reserved ones refused") {
  std::string why;
  CHECK(valid_env_name("OMP_NUM_THREADS", &why));
  CHECK(valid_env_name("_x1", &why));
  CHECK_FALSE(valid_env_name("1X", &why));
  CHECK_FALSE(valid_env_name("A-B", &why));
  CHECK_FALSE(valid_env_name("A;B", &why));
  CHECK_FALSE(valid_env_name("PATH", &why));
  CHECK_FALSE(valid_env_name("LD_PRELOAD", &why));
  CHECK_FALSE(valid_env_name("SCIGATE_JOB_ID", &why));
  CHECK_FALSE(valid_env_name("BASH_ENV", &why));
}

TEST_CASE("job credits: cpu and gpu hours from resources and elapsed time") {
  Resources r;
  r.tasks = 2;
  r.cpus_per_task = 2;
  auto u = job_usage(r, std::chrono::minutes(30), "");
  REQUIRE(u.lines.size() == 1);
  CHECK(u.lines[0].resource == "cpu_core_hour");
  CHECK(u.lines[0].quantity == Approx(2.0));
  r.gpus = 2;
  r.nodes = 2;
  r.gpu_type = "a100";
  u = job_usage(r, std::chrono::hours(1), "");
  REQUIRE(u.lines.size() == 2);
  CHECK(u.lines[1].resource == "gpu_hour:a100");
  CHECK(u.lines[1].quantity == Approx(4.0));
  CHECK(job_usage(r, std::chrono::milliseconds(0), "").lines.empty());  // never ran: nothing
}

TEST_CASE("submit_job arguments: parsed, and what the schema cannot say is refused") {
  using tools::SubmitJobTool;
  auto ok = SubmitJobTool::parse(nlohmann::json::parse(
      R"({"script": "echo hi", "name": "t", "resources": {"tasks": 2, "walltime": "00:10:00", "memory": "1G"},
          "environment": {"X": "1"}, "working_directory": "runs/./a"})"));
  REQUIRE(std::holds_alternative<SubmitRequest>(ok));
  auto& req = std::get<SubmitRequest>(ok);
  CHECK(req.spec.resources.walltime == std::chrono::seconds(600));
  CHECK(req.spec.resources.memory_mb == 1024);
  CHECK(req.working_directory == "runs/a");
  CHECK(req.spec.environment.at("X") == "1");
  auto bad = [](const char* text) {
    auto r = SubmitJobTool::parse(nlohmann::json::parse(text));
    REQUIRE(std::holds_alternative<Error>(r));
    return std::get<Error>(r).message;
  };
  CHECK_THAT(bad(R"({"script": "x", "working_directory": "../other"})"), Catch::Contains(".."));
  CHECK_THAT(bad(R"({"script": "x", "working_directory": "/etc"})"), Catch::Contains("working_directory"));
  CHECK_THAT(bad(R"({"script": "x", "environment": {"LD_PRELOAD": "/x.so"}})"), Catch::Contains("LD_PRELOAD"));
  CHECK_THAT(bad(R"({"script": "x", "resources": {"walltime": "00:00:00"}})"), Catch::Contains("walltime"));
  CHECK_THAT(bad(R"({"script": "x", "executable": "/bin/true"})"), Catch::Contains("exactly one"));
  // Memory needs its unit: a policy would read 1048576 as bytes (1 MiB), Slurm as MB (1 TiB).
  CHECK_THAT(bad(R"({"script": "x", "resources": {"memory": 1048576}})"), Catch::Contains("with its unit"));
  CHECK_THAT(bad(R"({"script": "x", "resources": {"memory": "1048576"}})"), Catch::Contains("with its unit"));
  // Scheduler directives in the script would override the arguments the call was decided on.
  CHECK_THAT(bad("{\"script\": \"#!/bin/bash\\n# setup\\n#SBATCH --gres=gpu:8\\nhostname\"}"),
             Catch::Contains("#SBATCH --gres=gpu:8"));
  CHECK_THAT(bad("{\"script\": \"\\n  #PBS -l nodes=4\\nhostname\"}"), Catch::Contains("scheduler directive"));
  // sbatch also reads #SLURM, and skips lines of any isspace() characters (\v, \f) as blank.
  CHECK_THAT(bad("{\"script\": \"#!/bin/bash\\n#SLURM --array=0-999\\nsrun work\"}"), Catch::Contains("#SLURM"));
  CHECK_THAT(bad("{\"script\": \"#!/bin/bash\\n\\u000b\\n\\f \\n#SBATCH --array=0-9\\nsrun work\"}"),
             Catch::Contains("--array=0-9"));
  CHECK_THAT(bad("{\"script\": \"#sbatch --gres=gpu:8\\nhostname\"}"), Catch::Contains("scheduler directive"));
  // After the first command sbatch reads none, so a script may mention them (e.g. one it writes).
  CHECK(std::holds_alternative<SubmitRequest>(
      SubmitJobTool::parse(nlohmann::json::parse("{\"script\": \"echo hi\\necho '#SBATCH -N 2' > next.sh\"}"))));
}

TEST_CASE("read_job_output: UTF-8 cut at either end is trimmed, invalid bytes flag binary") {
  using tools::ReadJobOutputTool;
  bool binary = false;
  std::size_t front = 0;
  std::string e_acute = "\xC3\xA9";
  CHECK(ReadJobOutputTool::utf8_safe("ab" + e_acute, &binary, &front) == "ab" + e_acute);
  CHECK_FALSE(binary);
  CHECK(ReadJobOutputTool::utf8_safe("ab\xC3", &binary, &front) == "ab");  // cut at the end
  CHECK_FALSE(binary);
  CHECK(ReadJobOutputTool::utf8_safe("\xA9xy", &binary, &front) == "xy");  // cut at the start
  CHECK(front == 1);
  CHECK(ReadJobOutputTool::utf8_safe(std::string("a\0b", 3), &binary, &front) == "a\xEF\xBF\xBD" "b");
  CHECK(binary);
  CHECK(ReadJobOutputTool::utf8_safe("a\xFF" "b", &binary, &front) == "a\xEF\xBF\xBD" "b");
  CHECK(binary);
}
