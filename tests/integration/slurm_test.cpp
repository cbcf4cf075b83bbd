// The Slurm connectors against a real single-node Slurm 22.05 (tests/support/slurm_cluster):
// the CLI connector, and the REST connector over the unix socket (rest_auth/local) and over
// TCP with a JWT. Each test submits real jobs and follows them to their final state.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <thread>

#include "connectors/scheduler/slurm/slurm_cli.hpp"
#include "connectors/scheduler/slurm/slurm_rest.hpp"
#include "server/common/error.hpp"
#include "server/common/time_format.hpp"
#include "tests/support/run_blocking.hpp"
#include "tests/support/slurm_cluster.hpp"

using namespace scigate;
using namespace scigate::jobs;
using scigate::test::SlurmCluster;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

using scigate::test::run_blocking;

void run_blocking(asio::awaitable<void> aw) {
  asio::io_context io;
  std::exception_ptr ep;
  asio::co_spawn(io, std::move(aw), [&](std::exception_ptr e) { ep = e; });
  io.run();
  if (ep) std::rethrow_exception(ep);
}

SlurmCliOptions cli_options(const SlurmCluster& c) {
  SlurmCliOptions o;
  o.slurm_conf = c.slurm_conf();
  return o;
}

struct Site {
  std::string label;
  std::unique_ptr<Scheduler> scheduler;
};

std::unique_ptr<SlurmCliScheduler> make_cli(const SlurmCluster& c) {
  return std::make_unique<SlurmCliScheduler>(cli_options(c));
}

std::unique_ptr<SlurmRestScheduler> make_rest_local(const SlurmCluster& c) {
  SlurmRestOptions o;
  o.unix_socket = c.rest_socket();
  o.sacct = cli_options(c);
  o.request_timeout = 10s;
  return std::make_unique<SlurmRestScheduler>(o);
}

std::filesystem::path write_token(const SlurmCluster& c, const std::string& token) {
  auto p = c.state_dir() / "scigate-jwt.token";
  std::ofstream(p, std::ios::trunc) << "SLURM_JWT=" << token << "\n";
  return p;
}

std::unique_ptr<SlurmRestScheduler> make_rest_jwt(const SlurmCluster& c) {
  SlurmRestOptions o;
  o.url = c.rest_url();
  o.user_name = c.job_user();
  o.token_file = write_token(c, c.token());
  o.sacct = cli_options(c);
  o.request_timeout = 10s;
  return std::make_unique<SlurmRestScheduler>(o);
}

std::vector<Site> all_sites(const SlurmCluster& c) {
  std::vector<Site> s;
  s.push_back({"cli", make_cli(c)});
  s.push_back({"rest-local", make_rest_local(c)});
  s.push_back({"rest-jwt", make_rest_jwt(c)});
  return s;
}

int g_seq = 0;

JobSpec spec_for(const SlurmCluster& c, const std::string& label, const std::string& script) {
  JobSpec s;
  s.gateway_id = "gw-" + label + "-" + std::to_string(++g_seq);
  s.name = s.gateway_id;
  s.script = script;
  s.resources.walltime = 60s;
  s.working_directory = c.jobs_dir();
  s.stdout_path = c.jobs_dir() / (s.gateway_id + ".out");
  s.stderr_path = c.jobs_dir() / (s.gateway_id + ".err");
  return s;
}

std::optional<JobStatus> poll_one(Scheduler& s, const std::string& id) {
  auto all = run_blocking(s.poll({id}));
  for (auto& st : all)
    if (st.native_id == id) return st;
  return std::nullopt;
}

// Polls until the job is final (or gone, then asks final_status), as the job ledger would.
JobStatus wait_final(Scheduler& s, const std::string& id, std::chrono::seconds limit = 60s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    auto st = poll_one(s, id);
    if (st && is_final(st->state)) return *st;
    if (!st) {
      auto fin = run_blocking(s.final_status(id));
      if (!fin.empty()) return fin.back();
    }
    std::this_thread::sleep_for(200ms);
  }
  FAIL("job " << id << " did not finish within " << limit.count() << " s");
  return {};
}

JobStatus wait_state(Scheduler& s, const std::string& id, JobState want, std::chrono::seconds limit = 30s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  std::optional<JobStatus> st;
  while (std::chrono::steady_clock::now() < deadline) {
    st = poll_one(s, id);
    if (st && st->state == want) return *st;
    std::this_thread::sleep_for(200ms);
  }
  FAIL("job " << id << " never reached state " << static_cast<int>(want) << " (last: " << (st ? st->native_state : "gone") << ")");
  return {};
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Output files appear when slurmstepd flushes; a final state can be seen a moment before.
std::string read_output(const std::filesystem::path& p) {
  for (int i = 0; i < 50; ++i) {
    auto s = slurp(p);
    if (!s.empty()) return s;
    std::this_thread::sleep_for(100ms);
  }
  return slurp(p);
}

}  // namespace

TEST_CASE("slurm: a script runs to completion through each connector", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  for (auto& site : all_sites(*cluster)) {
    INFO(site.label);
    auto spec = spec_for(*cluster, site.label, "echo \"hello $GREETING\"\necho to-stderr >&2\n");
    spec.environment["GREETING"] = "a,b c;$(id)";
    std::string id = run_blocking(site.scheduler->submit(spec));
    REQUIRE_FALSE(id.empty());
    auto st = wait_final(*site.scheduler, id);
    CHECK(st.native_id == id);
    CHECK(st.state == JobState::kCompleted);
    CHECK(st.native_state == "COMPLETED");
    REQUIRE(st.exit_code);
    CHECK(*st.exit_code == 0);
    CHECK_FALSE(st.term_signal);
    CHECK(st.alloc_cpus >= 1);
    CHECK(read_output(spec.stdout_path) == "hello a,b c;$(id)\n");
    CHECK(read_output(spec.stderr_path) == "to-stderr\n");
  }
}

TEST_CASE("slurm: run_as makes the job another user's (CLI --uid as root, REST local user header)", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  std::vector<Site> sites;
  sites.push_back({"cli", make_cli(*cluster)});
  sites.push_back({"rest-local", make_rest_local(*cluster)});
  for (auto& site : sites) {
    INFO(site.label);
    auto spec = spec_for(*cluster, site.label, "id -un\n");
    spec.run_as = cluster->job_user();
    std::string id = run_blocking(site.scheduler->submit(spec));
    CHECK(wait_final(*site.scheduler, id).state == JobState::kCompleted);
    CHECK(read_output(spec.stdout_path) == cluster->job_user() + "\n");
  }
}

TEST_CASE("slurm: a non-zero exit is FAILED with the script's exit code", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  for (auto& site : all_sites(*cluster)) {
    INFO(site.label);
    std::string id = run_blocking(site.scheduler->submit(spec_for(*cluster, site.label, "exit 3\n")));
    auto st = wait_final(*site.scheduler, id);
    CHECK(st.state == JobState::kFailed);
    CHECK(st.native_state == "FAILED");
    REQUIRE(st.exit_code);
    CHECK(*st.exit_code == 3);
  }
}

TEST_CASE("slurm: an executable's arguments reach it verbatim", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  for (auto& site : all_sites(*cluster)) {
    INFO(site.label);
    auto spec = spec_for(*cluster, site.label, "");
    spec.script.clear();
    spec.executable = "/bin/echo";
    spec.arguments = {"a  b", "$(id)", "; rm -rf /tmp/x", "it's", "--wrap"};
    std::string id = run_blocking(site.scheduler->submit(spec));
    auto st = wait_final(*site.scheduler, id);
    CHECK(st.state == JobState::kCompleted);
    CHECK(read_output(spec.stdout_path) == "a  b $(id) ; rm -rf /tmp/x it's --wrap\n");
  }
}

TEST_CASE("slurm: cancel while queued and while running is CANCELED", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  std::vector<Site> sites;
  sites.push_back({"cli", make_cli(*cluster)});
  sites.push_back({"rest-local", make_rest_local(*cluster)});
  for (auto& site : sites) {
    INFO(site.label);
    auto& s = *site.scheduler;
    std::string running = run_blocking(s.submit(spec_for(*cluster, site.label, "sleep 300\n")));
    wait_state(s, running, JobState::kActive);
    // Waits for `running` to succeed: queued (reason Dependency) until then.
    auto dep_spec = spec_for(*cluster, site.label, "echo never\n");
    dep_spec.after_ok = {running};
    std::string queued = run_blocking(s.submit(dep_spec));
    auto q = wait_state(s, queued, JobState::kQueued);
    CHECK(q.native_state == "PENDING");
    CHECK(q.reason == "Dependency");

    run_blocking(s.cancel(queued));
    auto qc = wait_final(s, queued);
    CHECK(qc.state == JobState::kCanceled);
    CHECK(qc.native_state == "CANCELLED");

    run_blocking(s.cancel(running));
    auto rc = wait_final(s, running);
    CHECK(rc.state == JobState::kCanceled);
    CHECK(rc.native_state == "CANCELLED");
    CHECK(rc.start_ms);
    CHECK(rc.end_ms);

    // Cancelling a finished job, or one Slurm never knew, is not an error.
    CHECK_NOTHROW(run_blocking(s.cancel(running)));
    CHECK_NOTHROW(run_blocking(s.cancel("987654")));
  }
}

TEST_CASE("slurm: a dependency chain runs in order", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  auto s = make_cli(*cluster);
  auto first = spec_for(*cluster, "chain", "sleep 1; echo first >> " + (cluster->jobs_dir() / "chain.log").string() + "\n");
  std::string a = run_blocking(s->submit(first));
  auto second = spec_for(*cluster, "chain", "echo second >> " + (cluster->jobs_dir() / "chain.log").string() + "\n");
  second.after_ok = {a};
  std::string b = run_blocking(s->submit(second));
  CHECK(wait_final(*s, b).state == JobState::kCompleted);
  CHECK(slurp(cluster->jobs_dir() / "chain.log") == "first\nsecond\n");

  // A failed dependency ends the dependent job (--kill-on-invalid-dep) instead of leaving it
  // queued forever with DependencyNeverSatisfied.
  std::string bad = run_blocking(s->submit(spec_for(*cluster, "chain", "exit 1\n")));
  auto third = spec_for(*cluster, "chain", "echo never\n");
  third.after_ok = {bad};
  std::string c = run_blocking(s->submit(third));
  auto st = wait_final(*s, c);
  CHECK(st.state == JobState::kCanceled);
  CHECK(st.native_state == "CANCELLED");
  CHECK(slurp(third.stdout_path).empty());
}

TEST_CASE("slurm: a job Slurm refuses is kBackendRejected with Slurm's message", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  for (auto& site : all_sites(*cluster)) {
    INFO(site.label);
    auto spec = spec_for(*cluster, site.label, "true\n");
    spec.partition = "no-such-partition";
    try {
      run_blocking(site.scheduler->submit(spec));
      FAIL("submitted to an unknown partition");
    } catch (const ErrorException& e) {
      CHECK(e.error().code == ErrorCode::kBackendRejected);
      CHECK_THAT(e.error().message, Catch::Contains("Invalid partition name specified"));
    }
  }
}

TEST_CASE("slurm: a 10 MB script is refused with a message that says why", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  std::vector<Site> sites;
  sites.push_back({"cli", make_cli(*cluster)});
  sites.push_back({"rest-local", make_rest_local(*cluster)});
  for (auto& site : sites) {
    INFO(site.label);
    auto spec = spec_for(*cluster, site.label, "true\n" + std::string(10 << 20, '#') + "\n");
    try {
      run_blocking(site.scheduler->submit(spec));
      FAIL("a 10 MB script was accepted");
    } catch (const ErrorException& e) {
      CHECK(e.error().code == ErrorCode::kBackendRejected);
      CHECK_THAT(e.error().message, Catch::Contains("max_script_size"));
    }
  }
}

TEST_CASE("slurm: one poll answers for several jobs with one query", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  auto cli = make_cli(*cluster);
  auto rest = make_rest_jwt(*cluster);
  std::vector<std::string> ids;
  // Long enough that none can end and be purged (MinJobAge=2) before the polls below.
  std::vector<JobSpec> specs;
  for (int i = 0; i < 6; ++i) specs.push_back(spec_for(*cluster, "many", "sleep 60\n"));
  for (int i = 0; i < 3; ++i) ids.push_back(run_blocking(cli->submit(specs[i])));
  for (int i = 3; i < 6; ++i) ids.push_back(run_blocking(rest->submit(specs[i])));
  auto with_unknown = ids;
  with_unknown.push_back("999999");

  uint64_t before = cli->commands_run();
  auto by_cli = run_blocking(cli->poll(with_unknown));
  CHECK(cli->commands_run() - before == 1);
  CHECK(by_cli.size() == ids.size());

  uint64_t sent = rest->requests_sent();
  auto by_rest = run_blocking(rest->poll(with_unknown));
  CHECK(rest->requests_sent() - sent == 1);
  CHECK(by_rest.size() == ids.size());
  for (const auto& st : by_cli) {
    CHECK((st.state == JobState::kQueued || st.state == JobState::kActive));
    CHECK(st.submit_ms);
  }
  // Each answer carries the comment the job was submitted with (the gateway id), through both.
  for (std::size_t i = 0; i < ids.size(); ++i) {
    for (const auto& st : by_cli)
      if (st.native_id == ids[i]) CHECK(st.comment == specs[i].gateway_id);
    for (const auto& st : by_rest)
      if (st.native_id == ids[i]) CHECK(st.comment == specs[i].gateway_id);
  }
  // Submits whose answers were lost are found again by their comments (and names), several in
  // one query through both; a comment no job carries is left out.
  std::vector<Scheduler::Submitted> asked{{specs[0].gateway_id, specs[0].name},
                                          {specs[4].gateway_id, specs[4].name},
                                          {"gw-never-submitted", specs[1].name}};
  using Found = std::map<std::string, std::string>;
  const Found expected{{specs[0].gateway_id, ids[0]}, {specs[4].gateway_id, ids[4]}};
  before = cli->commands_run();
  CHECK(run_blocking(cli->find_submitted(asked)) == expected);
  CHECK(cli->commands_run() - before == 1);
  sent = rest->requests_sent();
  CHECK(run_blocking(rest->find_submitted(asked)) == expected);
  CHECK(rest->requests_sent() - sent == 1);
  CHECK(run_blocking(cli->find_submitted({{"gw-never-submitted", specs[0].name}})).empty());
  // Ids Slurm never knew: an empty answer, not an error.
  CHECK(run_blocking(cli->poll({"999998"})).empty());
  CHECK(run_blocking(rest->poll({"999998"})).empty());
  CHECK(run_blocking(cli->poll({})).empty());
  for (const auto& id : ids) run_blocking(cli->cancel(id));
  for (const auto& id : ids) CHECK(wait_final(*cli, id).state == JobState::kCanceled);
}

TEST_CASE("slurm: after the job leaves slurmctld, final_status comes from sacct -c", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  auto cli = make_cli(*cluster);
  auto rest = make_rest_local(*cluster);
  JobSpec spec_a = spec_for(*cluster, "gone", "exit 3\n");
  JobSpec spec_b = spec_for(*cluster, "gone", "echo ok\n");
  const int64_t submitted_ms = unix_now_ms();
  std::string a = run_blocking(cli->submit(spec_a));
  std::string b = run_blocking(rest->submit(spec_b));
  // MinJobAge=2 in the test cluster; slurmctld purges on its own schedule (up to a minute).
  auto deadline = std::chrono::steady_clock::now() + 120s;
  bool gone = false;
  while (!gone && std::chrono::steady_clock::now() < deadline) {
    gone = run_blocking(cli->poll({a, b})).empty() && run_blocking(rest->poll({a, b})).empty();
    if (!gone) std::this_thread::sleep_for(1s);
  }
  REQUIRE(gone);
  auto all_a = run_blocking(cli->final_status(a));
  REQUIRE(all_a.size() == 1);
  const auto& fa = all_a[0];
  CHECK(fa.state == JobState::kFailed);
  CHECK(fa.native_state == "FAILED");
  REQUIRE(fa.exit_code);
  CHECK(*fa.exit_code == 3);
  CHECK(fa.end_ms);
  // What tells this job from a later one under the same id (the ledger's check).
  CHECK(fa.name == spec_a.name);
  REQUIRE(fa.start_ms);
  CHECK(*fa.start_ms >= submitted_ms - 1000);  // Slurm prints whole seconds
  CHECK(*fa.start_ms <= *fa.end_ms);
  auto all_b = run_blocking(rest->final_status(b));
  REQUIRE(all_b.size() == 1);
  CHECK(all_b[0].state == JobState::kCompleted);
  CHECK(all_b[0].exit_code == 0);
  CHECK(all_b[0].name == spec_b.name);
  CHECK(run_blocking(cli->final_status("999997")).empty());
}

TEST_CASE("slurm: a job over its walltime is FAILED (TIMEOUT), never COMPLETED", "[slurm][slow]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  // A minute is Slurm's smallest time limit, and slurmctld checks limits every 30 s: this
  // test takes 60-100 s, so both connectors share the wait.
  auto cli = make_cli(*cluster);
  auto rest = make_rest_local(*cluster);
  auto s1 = spec_for(*cluster, "walltime", "sleep 600\n");
  s1.resources.walltime = 1s;  // rounded up to one minute
  auto s2 = s1;
  s2.gateway_id += "-rest";
  s2.stdout_path = cluster->jobs_dir() / "walltime-rest.out";
  s2.stderr_path = cluster->jobs_dir() / "walltime-rest.err";
  std::string a = run_blocking(cli->submit(s1));
  std::string b = run_blocking(rest->submit(s2));
  auto ta = wait_final(*cli, a, 180s);
  auto tb = wait_final(*rest, b, 60s);
  for (const auto& t : {ta, tb}) {
    CHECK(t.state == JobState::kFailed);
    CHECK(t.native_state == "TIMEOUT");
    CHECK(t.reason == "walltime exceeded");
  }
}

TEST_CASE("slurm: an unreachable site is kBackendUnavailable with a clear message", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  auto expect_unavailable = [](const std::function<void()>& f, const std::string& text) {
    try {
      f();
      FAIL("no error");
    } catch (const ErrorException& e) {
      CHECK(e.error().code == ErrorCode::kBackendUnavailable);
      CHECK_THAT(e.error().message, Catch::Contains(text));
    }
  };
  SlurmRestOptions dead;
  dead.unix_socket = cluster->state_dir() / "no-such.sock";
  SlurmRestScheduler rest(dead);
  expect_unavailable([&] { run_blocking(rest.poll({"1"})); }, "could not be reached");
  expect_unavailable([&] { run_blocking(rest.submit(spec_for(*cluster, "dead", "true\n"))); }, "unavailable");

  SlurmCliOptions missing = cli_options(*cluster);
  missing.bin_dir = "/nonexistent-slurm-bin";
  SlurmCliScheduler cli(missing);
  expect_unavailable([&] { run_blocking(cli.poll({"1"})); }, "squeue failed");
  expect_unavailable([&] { run_blocking(cli.submit(spec_for(*cluster, "dead", "true\n"))); }, "sbatch failed");
}

TEST_CASE("slurm: the JWT is re-read from its file when it changes", "[slurm]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  SlurmRestOptions o;
  o.url = cluster->rest_url();
  o.user_name = cluster->job_user();
  o.token_file = write_token(*cluster, "not-a-valid-token");
  SlurmRestScheduler rest(o);
  try {
    run_blocking(rest.poll({"1"}));
    FAIL("a bad token was accepted");
  } catch (const ErrorException& e) {
    CHECK(e.error().code == ErrorCode::kBackendUnavailable);
    CHECK_THAT(e.error().message, Catch::Contains("slurmrestd token is not a JWT"));
  }
  write_token(*cluster, cluster->token());
  CHECK_NOTHROW(run_blocking(rest.poll({"1"})));
  // An expired token: slurmctld would drop the connection, which slurmrestd reports as an
  // answer lost (5005), and the submit would be unknown. It is refused before it is sent.
  write_token(*cluster, cluster->token(1) + "\n\n");  // another size than the last one
  std::this_thread::sleep_for(2500ms);
  try {
    run_blocking(rest.submit(spec_for(*cluster, "expired", "true\n")));
    FAIL("a submit with an expired token succeeded");
  } catch (const SubmitOutcomeUnknown& e) {
    FAIL("an expired token made the submit's outcome unknown: " << e.error().message);
  } catch (const ErrorException& e) {
    CHECK(e.error().code == ErrorCode::kBackendUnavailable);
    CHECK_THAT(e.error().message, Catch::Contains("slurmrestd token expired at"));
  }
}

TEST_CASE("slurm: with slurmctld stopped the site is unavailable, then usable again", "[slurm][slow]") {
  SLURM_CLUSTER_OR_SKIP(cluster);
  auto cli = make_cli(*cluster);
  auto rest = make_rest_local(*cluster);
  cluster->stop_controller();
  // Slurm's own retries take 9-18 s before the commands give up.
  try {
    run_blocking(cli->poll({"1"}));
    FAIL("squeue worked without slurmctld");
  } catch (const ErrorException& e) {
    CHECK(e.error().code == ErrorCode::kBackendUnavailable);
    CHECK_THAT(e.error().message, Catch::Contains("the Slurm site is unavailable"));
    CHECK_THAT(e.error().message, Catch::Contains("Unable to contact slurm controller"));
  }
  try {
    run_blocking(rest->submit(spec_for(*cluster, "down", "true\n")));
    FAIL("a submission worked without slurmctld");
  } catch (const ErrorException& e) {
    CHECK(e.error().code == ErrorCode::kBackendUnavailable);
    CHECK_THAT(e.error().message, Catch::Contains("the Slurm site is unavailable"));
  }
  cluster->restart();
  std::string id = run_blocking(cli->submit(spec_for(*cluster, "back", "true\n")));
  CHECK(wait_final(*cli, id).state == JobState::kCompleted);
}
