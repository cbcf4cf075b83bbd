// The Slurm connectors' parsing and command building, against outputs captured from a real
// Slurm 22.05.8 (Debian 12) single-node cluster.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "connectors/scheduler/slurm/slurm_cli.hpp"
#include "connectors/scheduler/slurm/slurm_common.hpp"
#include "connectors/scheduler/slurm/slurm_rest.hpp"
#include "server/common/error.hpp"

using namespace scigate;
using namespace scigate::jobs;
using namespace scigate::jobs::slurm;
using nlohmann::json;

TEST_CASE("slurm states map to PSI/J exactly as man squeue lists them", "[slurm]") {
  for (const char* s : {"PD", "CF", "RD", "RF", "RH", "RV", "PENDING", "CONFIGURING", "REQUEUE_HOLD", "RESV_DEL_HOLD",
                        "REQUEUE_FED", "REVOKED"})
    CHECK(map_state(s) == JobState::kQueued);
  for (const char* s : {"R", "CG", "RQ", "RS", "SI", "SE", "SO", "ST", "S", "RUNNING", "COMPLETING", "REQUEUED",
                        "RESIZING", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED"})
    CHECK(map_state(s) == JobState::kActive);
  CHECK(map_state("CD") == JobState::kCompleted);
  CHECK(map_state("COMPLETED") == JobState::kCompleted);
  CHECK(map_state("CA") == JobState::kCanceled);
  CHECK(map_state("CANCELLED by 0") == JobState::kCanceled);
  for (const char* s : {"BF", "DL", "F", "NF", "OOM", "PR", "TO", "BOOT_FAIL", "DEADLINE", "FAILED", "NODE_FAIL",
                        "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"})
    CHECK(map_state(s) == JobState::kFailed);
  CHECK_FALSE(map_state("SOMETHING_NEW"));
  CHECK_FALSE(map_state(""));

  JobStatus st;
  REQUIRE(apply_state(st, "OUT_OF_MEMORY", "OutOfMemory"));
  CHECK(st.state == JobState::kFailed);
  CHECK(st.native_state == "OUT_OF_MEMORY");
  CHECK(st.reason == "out of memory");
  REQUIRE(apply_state(st, "TIMEOUT", "TimeLimit"));
  CHECK(st.reason == "walltime exceeded");
  REQUIRE(apply_state(st, "NODE_FAIL", ""));
  CHECK(st.reason == "node failure");
  REQUIRE(apply_state(st, "PREEMPTED", ""));
  CHECK(st.reason == "preempted");
  REQUIRE(apply_state(st, "PENDING", "Dependency"));
  CHECK(st.reason == "Dependency");
  REQUIRE(apply_state(st, "RUNNING", "None"));
  CHECK(st.reason.empty());
}

TEST_CASE("slurm exit codes: code:signal and raw wait status", "[slurm]") {
  JobStatus a;
  REQUIRE(parse_code_signal("3:0", a));
  CHECK(a.exit_code == 3);
  CHECK_FALSE(a.term_signal);
  JobStatus b;
  REQUIRE(parse_code_signal("0:9", b));
  CHECK(b.exit_code == 0);
  CHECK(b.term_signal == 9);
  JobStatus c;
  CHECK_FALSE(parse_code_signal("x:y", c));
  CHECK_FALSE(c.exit_code);

  JobStatus d;
  apply_wait_status(768, d);  // exit 3
  CHECK(d.exit_code == 3);
  CHECK_FALSE(d.term_signal);
  JobStatus e;
  apply_wait_status(15, e);  // SIGTERM
  CHECK(e.term_signal == 15);
  CHECK_FALSE(e.exit_code);
  JobStatus f;
  apply_wait_status(0, f);
  CHECK(f.exit_code == 0);
}

TEST_CASE("slurm helpers: times, TRES, walltime, quoting, ids", "[slurm]") {
  CHECK_FALSE(parse_time("N/A"));
  CHECK_FALSE(parse_time("Unknown"));
  CHECK_FALSE(parse_time(""));
  auto t1 = parse_time("2026-11-21T22:55:22");
  auto t2 = parse_time("2026-11-21T22:55:24");
  REQUIRE(t1);
  REQUIRE(t2);
  CHECK(*t2 - *t1 == 2000);

  CHECK(tres_gpus("cpu=1,mem=256M,node=1,billing=1") == 0);
  std::string type;
  CHECK(tres_gpus("cpu=8,mem=32G,node=1,billing=8,gres/gpu=2,gres/gpu:a100=2", &type) == 2);
  CHECK(type == "a100");
  CHECK(tres_gpus("cpu=8,gres/gpu=4", &type) == 4);
  CHECK(type.empty());
  // Two types (an untyped request over a mixed partition), with and without the total: no one
  // type, so the job is not charged at whichever came last.
  CHECK(tres_gpus("cpu=8,gres/gpu=3,gres/gpu:a100=1,gres/gpu:v100=2", &type) == 3);
  CHECK(type.empty());
  CHECK(tres_gpus("cpu=8,gres/gpu:v100=2,gres/gpu:a100=1", &type) == 3);
  CHECK(type.empty());
  CHECK(tres_gpus("cpu=8,gres/gpu:a100=1,gres/gpu:a100=1", &type) == 2);
  CHECK(type == "a100");

  CHECK(walltime_minutes(std::chrono::seconds(1)) == 1);
  CHECK(walltime_minutes(std::chrono::seconds(60)) == 1);
  CHECK(walltime_minutes(std::chrono::seconds(61)) == 2);
  CHECK(walltime_minutes(std::chrono::hours(24)) == 1440);

  CHECK(shell_quote("it's") == "'it'\\''s'");
  CHECK(shell_quote("$(id); rm -rf /") == "'$(id); rm -rf /'");

  CHECK(valid_job_id("123"));
  CHECK(valid_job_id("123_4"));
  CHECK_FALSE(valid_job_id("-1"));
  CHECK_FALSE(valid_job_id("1,2"));
  CHECK_FALSE(valid_job_id(""));
  CHECK(id_lists({"1", "2", "3"}, 2) == std::vector<std::string>{"1,2", "3"});

  CHECK(slurm_message("sbatch: error: invalid partition specified: nope\n"
                      "sbatch: error: Batch job submission failed: Invalid partition name specified\n") ==
        "invalid partition specified: nope; Invalid partition name specified");
  CHECK(looks_unreachable("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"));
  CHECK_FALSE(looks_unreachable("sbatch: error: Batch job submission failed: Invalid partition name specified"));
}

TEST_CASE("slurm batch script from a script or an executable", "[slurm]") {
  JobSpec s;
  s.script = "echo hi";
  CHECK(batch_script(s) == "#!/bin/bash\necho hi\n");
  s.script = "#!/bin/sh\necho hi\n";
  CHECK(batch_script(s) == "#!/bin/sh\necho hi\n");
  JobSpec e;
  e.executable = "/opt/my app/run";
  e.arguments = {"--in", "a b", "it's", "$(reboot)"};
  CHECK(batch_script(e) == "#!/bin/bash\nexec '/opt/my app/run' '--in' 'a b' 'it'\\''s' '$(reboot)'\n");
}

TEST_CASE("slurm specs with injection attempts are refused before anything runs", "[slurm]") {
  auto base = [] {
    JobSpec s;
    s.script = "true";
    s.working_directory = "/tmp";
    return s;
  };
  auto refused = [](const JobSpec& s) {
    try {
      check_spec(s);
      return false;
    } catch (const ErrorException& e) {
      return e.error().code == ErrorCode::kInvalidArguments;
    }
  };
  CHECK_NOTHROW(check_spec(base()));
  auto s = base();
  s.name = "x\n#SBATCH --uid=0";
  CHECK(refused(s));
  s = base();
  s.partition = "debug,other";
  CHECK(refused(s));
  s = base();
  s.account = "a b";
  CHECK(refused(s));
  s = base();
  s.environment["SBATCH_PARTITION"] = "x";
  CHECK(refused(s));
  s = base();
  s.environment["SLURM_CONF"] = "/etc/evil.conf";
  CHECK(refused(s));
  s = base();
  s.environment["LD_PRELOAD"] = "/tmp/x.so";
  CHECK(refused(s));
  // sbatch runs as root with these in its environment (glibc drops them for setuid programs).
  for (const char* name : {"GLIBC_TUNABLES", "GCONV_PATH", "LOCPATH", "HOSTALIASES", "RES_OPTIONS", "TZDIR", "LD_DEBUG"}) {
    s = base();
    s.environment[name] = "x";
    CHECK(refused(s));
  }
  s = base();
  s.environment["TMPDIR"] = "/scratch/me";
  CHECK_NOTHROW(check_spec(s));
  s = base();
  s.environment["A=B"] = "x";
  CHECK(refused(s));
  s = base();
  s.working_directory = "relative/dir";
  CHECK(refused(s));
  s = base();
  s.after_ok = {"1;rm"};
  CHECK(refused(s));
  s = base();
  s.executable = "/bin/true";
  CHECK(refused(s));  // both a script and an executable
  s = base();
  s.resources.tasks = 0;
  CHECK(refused(s));
  s = base();
  s.environment["OK_NAME"] = "values may hold anything: ,;$() \n";
  CHECK_NOTHROW(check_spec(s));
}

TEST_CASE("sbatch command line: every value glued to its option, no shell", "[slurm]") {
  SlurmCliOptions o;
  o.slurm_conf = "/etc/slurm/slurm.conf";
  o.bin_dir = "/usr/bin";
  SlurmCliScheduler cli(o);
  JobSpec s;
  s.gateway_id = "job-42";
  s.name = "-o /etc/passwd";
  s.script = "true";
  s.partition = "gpu";
  s.account = "proj";
  s.resources.nodes = 2;
  s.resources.tasks = 8;
  s.resources.cpus_per_task = 4;
  s.resources.gpus = 2;
  s.resources.gpu_type = "a100";
  s.resources.memory_mb = 4096;
  s.resources.walltime = std::chrono::seconds(5400);
  s.working_directory = "/work/p";
  s.stdout_path = "/work/p/out";
  s.stderr_path = "/work/p/err";
  s.after_ok = {"10", "11"};
  s.environment["FOO"] = "a,b";
  auto argv = cli.sbatch_argv(s);
  CHECK(argv == std::vector<std::string>{"/usr/bin/sbatch", "--parsable", "--job-name=-o /etc/passwd",
                                         "--comment=job-42", "--partition=gpu", "--account=proj", "--nodes=2",
                                         "--ntasks=8", "--cpus-per-task=4", "--gres=gpu:a100:2", "--mem=4096M",
                                         "--time=90", "--no-requeue", "--chdir=/work/p", "--output=/work/p/out", "--error=/work/p/err",
                                         "--dependency=afterok:10:11", "--kill-on-invalid-dep=yes", "--export=ALL"});
  auto env = cli.sbatch_environment(s);
  CHECK(env.at("FOO") == "a,b");
  CHECK(env.at("SLURM_CONF") == "/etc/slurm/slurm.conf");
  CHECK(env.at("PATH") == o.job_path);
  CHECK_FALSE(env.count("HOME"));  // nothing of the server's environment

  CHECK(cli.squeue_argv("1,2")[0] == "/usr/bin/squeue");
  CHECK(cli.squeue_argv("1,2")[3] == "--jobs=1,2");
}

TEST_CASE("sbatch --parsable output", "[slurm]") {
  CHECK(SlurmCliScheduler::parse_sbatch("42\n") == "42");
  CHECK(SlurmCliScheduler::parse_sbatch("42;cluster\n") == "42");
  CHECK(SlurmCliScheduler::parse_sbatch("") == "");
  CHECK(SlurmCliScheduler::parse_sbatch("Submitted batch job 42\n") == "");
}

TEST_CASE("squeue -O output captured from Slurm 22.05", "[slurm]") {
  // squeue --noheader --states=all --jobs=7,8,9,10,11 --Format=<SlurmCliScheduler's fields>
  // (the Comment column: job 9 submitted with --comment, the others without)
  const char* out =
      "9|CANCELLED|0|2026-11-21T22:55:22|2026-11-21T22:55:24|2026-11-21T22:55:24|1|1|cpu=1,mem=256M,node=1,billing=1|j-000000000009|Dependency|\n"
      "7|FAILED|768|2026-11-21T22:55:22|2026-11-21T22:55:23|2026-11-21T22:55:23|1|1|cpu=1,mem=256M,node=1,billing=1|(null)|NonZeroExitCode|\n"
      "10|PENDING|0|2026-11-21T22:55:22|N/A|N/A|1|1|cpu=1,mem=256M,node=1,billing=1|(null)|Resources|\n"
      "11|PENDING|0|2026-11-21T22:55:22|N/A|N/A|1|1|cpu=1,mem=256M,node=1,billing=1|(null)|Priority|\n"
      "8|RUNNING|0|2026-11-21T22:55:22|2026-11-21T22:55:23|2026-11-21T22:56:23|1|1|cpu=1,mem=256M,node=1,billing=1|(null)|None|\n"
      "12|TIMEOUT|15|2026-11-21T22:55:22|2026-11-21T22:55:23|2026-11-21T22:56:53|1|2|cpu=2,mem=512M,node=1,billing=2,gres/gpu=1|(null)|TimeLimit|\n"
      "13|OUT_OF_MEMORY|0|2026-11-21T22:55:22|2026-11-21T22:55:23|2026-11-21T22:56:53|1|1|cpu=1|(null)|OutOfMemory|\n"
      "14|PENDING|0|2026-11-21T22:55:22|N/A|N/A|1|1|cpu=1|(null)|launch failed|requeued held|\n"
      "garbage line\n";
  auto st = SlurmCliScheduler::parse_squeue(out);
  REQUIRE(st.size() == 8);
  CHECK(st[0].native_id == "9");
  CHECK(st[0].state == JobState::kCanceled);
  CHECK(st[0].end_ms);
  CHECK(st[0].comment == "j-000000000009");
  CHECK(st[1].comment.empty());  // "(null)": no comment
  CHECK(st[1].state == JobState::kFailed);
  CHECK(st[1].exit_code == 3);
  CHECK(st[1].reason == "NonZeroExitCode");
  CHECK(st[2].state == JobState::kQueued);
  CHECK(st[2].reason == "Resources");
  CHECK_FALSE(st[2].start_ms);
  CHECK_FALSE(st[2].exit_code);
  CHECK(st[4].state == JobState::kActive);
  CHECK(st[4].start_ms);
  CHECK_FALSE(st[4].end_ms);  // the expected end of a running job is not an end
  CHECK_FALSE(st[4].exit_code);
  CHECK(st[5].state == JobState::kFailed);
  CHECK(st[5].native_state == "TIMEOUT");
  CHECK(st[5].reason == "walltime exceeded");
  CHECK(st[5].term_signal == 15);
  CHECK(st[5].alloc_cpus == 2);
  CHECK(st[5].alloc_gpus == 1);
  CHECK(st[6].state == JobState::kFailed);  // OOM is never success
  CHECK(st[6].reason == "out of memory");
  CHECK(st[7].reason == "launch failed|requeued held");
}

TEST_CASE("sacct -c output captured from Slurm 22.05 (jobcomp/filetxt)", "[slurm]") {
  // The first two lines as captured with today's format (a job named "na|me" that exited 3;
  // one cancelled while it waited, whose start is its end); the others captured before the
  // name was asked for, with a name added.
  const char* out =
      "2|CANCELLED|0:0|2026-11-24T09:45:28|2026-11-24T09:45:28|0|0|pend\n"
      "1|FAILED|3:0|2026-11-24T09:45:28|2026-11-24T09:45:29|1|1|na|me\n"
      "7|FAILED|3:0|2026-11-21T22:55:23|2026-11-21T22:55:23|1|1|gone\n"
      "9|CANCELLED|0:0|2026-11-21T22:55:24|2026-11-21T22:55:24|0|0|x\n"
      "8|CANCELLED|0:0|2026-11-21T22:55:23|2026-11-21T22:55:25|1|1|x\n"
      "10|FAILED|0:9|2026-11-21T22:55:25|2026-11-21T22:55:25|1|1|x\n"
      "11|COMPLETED|0:0|2026-11-21T22:55:25|2026-11-21T22:55:25|1|1|x\n"
      "12|TIMEOUT|0:15|2026-11-21T22:55:25|2026-11-21T22:56:55|1|2|x\n"
      "13|NODE_FAIL|0:0|2026-11-21T22:55:25|2026-11-21T22:56:55|1|2|x\n"
      "13|COMPLETED|0:0|2026-11-21T22:57:25|2026-11-21T22:58:55|1|2|x\n";
  auto named = SlurmCliScheduler::parse_sacct(out, "1");
  REQUIRE(named.size() == 1);
  CHECK(named[0].name == "na|me");  // the name is the rest of the line
  CHECK(named[0].exit_code == 3);
  CHECK(*named[0].end_ms - *named[0].start_ms == 1000);
  auto pending = SlurmCliScheduler::parse_sacct(out, "2");
  REQUIRE(pending.size() == 1);
  CHECK(pending[0].state == JobState::kCanceled);
  CHECK(pending[0].name == "pend");
  auto a = SlurmCliScheduler::parse_sacct(out, "7");
  REQUIRE(a.size() == 1);
  CHECK(a[0].state == JobState::kFailed);
  CHECK(a[0].exit_code == 3);
  CHECK(a[0].name == "gone");
  auto b = SlurmCliScheduler::parse_sacct(out, "10");
  REQUIRE(b.size() == 1);
  CHECK(b[0].state == JobState::kFailed);
  CHECK(b[0].term_signal == 9);
  auto c = SlurmCliScheduler::parse_sacct(out, "8");
  REQUIRE(c.size() == 1);
  CHECK(c[0].state == JobState::kCanceled);
  CHECK(*c[0].end_ms - *c[0].start_ms == 2000);
  auto d = SlurmCliScheduler::parse_sacct(out, "12");
  REQUIRE(d.size() == 1);
  CHECK(d[0].native_state == "TIMEOUT");
  CHECK(d[0].reason == "walltime exceeded");
  auto e = SlurmCliScheduler::parse_sacct(out, "13");  // one record per run, in the log's order
  REQUIRE(e.size() == 2);
  CHECK(e[0].state == JobState::kFailed);
  CHECK(e[1].state == JobState::kCompleted);
  CHECK(SlurmCliScheduler::parse_sacct(out, "99").empty());
  CHECK(SlurmCliScheduler::parse_sacct("", "7").empty());
  // The format of the connector before JobName was asked for is not read as a record.
  CHECK(SlurmCliScheduler::parse_sacct("7|FAILED|3:0|2026-11-21T22:55:23|2026-11-21T22:55:23|1|1\n", "7").empty());
}

TEST_CASE("slurmrestd v0.0.38 job objects and errors", "[slurm]") {
  // Fields as GET /slurm/v0.0.38/jobs returned them (trimmed to what the connector reads).
  auto body = json::parse(R"({"meta":{},"errors":[],"jobs":[
    {"job_id":4,"job_state":"FAILED","state_reason":"NonZeroExitCode","exit_code":768,"submit_time":1795301416,
     "start_time":1795301417,"end_time":1795301417,"node_count":1,"cpus":1,"tres_alloc_str":"cpu=1,mem=256M,node=1,billing=1"},
    {"job_id":5,"job_state":"CANCELLED","state_reason":"None","exit_code":15,"submit_time":1795301416,
     "start_time":1795301417,"end_time":1795301420,"node_count":1,"cpus":1,"tres_alloc_str":"cpu=1"},
    {"job_id":6,"job_state":"PENDING","state_reason":"Priority","exit_code":0,"submit_time":1795301416,
     "start_time":0,"end_time":0,"node_count":1,"cpus":1,"tres_alloc_str":""},
    {"job_id":7,"job_state":"OUT_OF_MEMORY","state_reason":"OutOfMemory","exit_code":0,"submit_time":1,
     "start_time":2,"end_time":3,"node_count":1,"cpus":4,"tres_alloc_str":"cpu=4,gres/gpu=1,gres/gpu:h100=1"},
    {"no_id":true}]})");
  auto jobs = SlurmRestScheduler::parse_jobs(body);
  REQUIRE(jobs.size() == 4);
  CHECK(jobs[0].native_id == "4");
  CHECK(jobs[0].state == JobState::kFailed);
  CHECK(jobs[0].exit_code == 3);
  CHECK(jobs[0].submit_ms == int64_t(1795301416) * 1000);
  CHECK(jobs[1].state == JobState::kCanceled);
  CHECK(jobs[1].term_signal == 15);
  CHECK(jobs[2].state == JobState::kQueued);
  CHECK_FALSE(jobs[2].start_ms);
  CHECK(jobs[2].reason == "Priority");
  CHECK(jobs[3].state == JobState::kFailed);
  CHECK(jobs[3].reason == "out of memory");
  CHECK(jobs[3].alloc_gpus == 1);
  CHECK(jobs[3].gpu_type == "h100");
  // The comment: a string up to v0.0.38, an object from v0.0.39 (the user's under "job").
  auto with_comment = json::parse(R"({"jobs":[{"job_id":8,"job_state":"PENDING","comment":"j-000000000008"},
    {"job_id":9,"job_state":"PENDING","comment":{"administrator":"","job":"j-000000000009","system":""}}]})");
  auto commented = SlurmRestScheduler::parse_jobs(with_comment);
  REQUIRE(commented.size() == 2);
  CHECK(commented[0].comment == "j-000000000008");
  CHECK(commented[1].comment == "j-000000000009");
  CHECK(jobs[0].comment.empty());

  auto rejected = SlurmRestScheduler::error_from(
      500, json::parse(R"({"errors":[{"error_code":2000,"error":"Invalid partition name specified"}]})"), "the submission");
  CHECK(rejected.code == ErrorCode::kBackendRejected);
  CHECK(rejected.message == "Slurm rejected the job: Invalid partition name specified");
  auto bad_token = SlurmRestScheduler::error_from(
      500, json::parse(R"({"errors":[{"error_code":5005,"error":"Zero Bytes were transmitted or received"}]})"),
      "the submission");
  CHECK(bad_token.code == ErrorCode::kBackendUnavailable);
  CHECK_THAT(bad_token.hint, Catch::Contains("token"));
  auto no_auth = SlurmRestScheduler::error_from(401, json(), "the job list");
  CHECK(no_auth.code == ErrorCode::kBackendUnavailable);
  CHECK_THAT(no_auth.message, Catch::Contains("authentication failed"));
}

TEST_CASE("slurmrestd submission body", "[slurm]") {
  SlurmRestOptions o;
  o.unix_socket = "/run/slurmrestd.sock";
  SlurmRestScheduler rest(o);
  JobSpec s;
  s.gateway_id = "job-7";
  s.executable = "/bin/echo";
  s.arguments = {"a b"};
  s.resources.nodes = 1;
  s.resources.tasks = 2;
  s.resources.gpus = 1;
  s.resources.memory_mb = 1000;
  s.resources.walltime = std::chrono::seconds(90);
  s.stdout_path = "/w/out";
  s.after_ok = {"3"};
  s.environment["X"] = "1,2";
  auto b = rest.submit_body(s);
  CHECK(b["script"] == "#!/bin/bash\nexec '/bin/echo' 'a b'\n");
  CHECK(b["job"]["name"] == "job-7");
  CHECK(b["job"]["comment"] == "job-7");
  CHECK(b["job"]["nodes"] == json::array({1, 1}));
  CHECK(b["job"]["tasks"] == 2);
  CHECK(b["job"]["gpus_per_node"] == "1");
  CHECK(b["job"]["memory_per_node"] == 1000);
  CHECK(b["job"]["time_limit"] == 2);
  CHECK(b["job"]["requeue"] == false);  // one run per job: the ledger charges one
  CHECK(b["job"]["current_working_directory"] == "/tmp");
  CHECK(b["job"]["standard_output"] == "/w/out");
  CHECK(b["job"]["dependency"] == "afterok:3");
  CHECK(b["job"]["environment"]["X"] == "1,2");
  CHECK(b["job"]["environment"]["PATH"] == o.job_path);
  CHECK_FALSE(b["job"].contains("partition"));
}
