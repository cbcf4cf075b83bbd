// Jobs through the real binary on the embedded local scheduler: states, output, isolation,
// credits, projects, and a server killed while a job runs.
#include <catch2/catch.hpp>

#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "job_server.hpp"
#include "server_process.hpp"
#include "tool_call.hpp"

using namespace scigate::itest;
using http::verb;
namespace fs = std::filesystem;

namespace {

bool process_gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close != std::string::npos && stat.size() > close + 2 && stat[close + 2] == 'Z';
}

}  // namespace

TEST_CASE("jobs: submit -> COMPLETED with output, a failing script -> FAILED, credits held then settled, "
          "another project sees nothing") {
  JobServer js;
  Client c(js.s.port());
  auto job = submit(c, js.s.user_key(),
                    {{"script", "echo hello; sleep 1"}, {"name", "hello"}, {"resources", {{"walltime", "00:05:00"}}}});
  std::string id = job["job_id"];
  CHECK(id.rfind("j-", 0) == 0);
  std::string state = job["state"];
  CHECK((state == "QUEUED" || state == "ACTIVE"));
  // Held at once: 5 min x 1 CPU x 1 credit/s.
  auto usage = call_tool(c, js.s.user_key(), "get_usage", json::object())["structuredContent"];
  CHECK(usage["held"].get<double>() == Approx(300.0));

  auto done = wait_final(c, js.s.user_key(), id);
  CHECK(done["state"] == "COMPLETED");
  CHECK(done["exit_code"] == 0);
  auto out = call_tool(c, js.s.user_key(), "read_job_output", {{"job_id", id}});
  CHECK(out["structuredContent"]["text"] == "hello\n");
  CHECK(out["structuredContent"]["truncated"] == false);
  auto tail = call_tool(c, js.s.user_key(), "read_job_output", {{"job_id", id}, {"tail", 3}});
  CHECK(tail["structuredContent"]["text"] == "lo\n");
  CHECK(tail["structuredContent"]["truncated"] == true);

  // Settled: the hold is gone, the cost is what ran (about 0.5 s of one CPU), charged once.
  json got;
  CHECK(eventually([&] {
    got = call_tool(c, js.s.user_key(), "get_job", {{"job_id", id}})["structuredContent"];
    return got["credits"].contains("cost");
  }));
  double cost = got["credits"]["cost"].get<double>();
  CHECK(cost > 0.8);
  CHECK(cost < 5.0);
  usage = call_tool(c, js.s.user_key(), "get_usage", json::object())["structuredContent"];
  CHECK(usage["held"].get<double>() == 0);
  CHECK(usage["balance"].get<double>() == Approx(1000 - 0.5 - cost).margin(1e-6));

  auto failed = submit(c, js.s.user_key(), {{"script", "echo oops >&2; exit 7"}, {"resources", {{"walltime", "00:01:00"}}}});
  auto f = wait_final(c, js.s.user_key(), failed["job_id"]);
  CHECK(f["state"] == "FAILED");
  CHECK(f["exit_code"] == 7);
  auto err = call_tool(c, js.s.user_key(), "read_job_output", {{"job_id", failed["job_id"]}, {"stream", "stderr"}});
  CHECK(err["structuredContent"]["text"] == "oops\n");

  // Policy before the scheduler: a walltime above the project's limit never reaches it.
  auto denied = call_tool(c, js.s.user_key(), "submit_job", {{"script", "true"}, {"resources", {{"walltime", "02:00:00"}}}});
  CHECK(error_code(denied) == "policy_denied");
  CHECK(denied["content"][0]["text"].get<std::string>().find("walltime") != std::string::npos);
  // The schema refuses what is not a walltime at all.
  auto malformed = call_tool(c, js.s.user_key(), "submit_job", {{"script", "true"}, {"resources", {{"walltime", "soon"}}}});
  CHECK(malformed["isError"] == true);

  // Bob, of project "other", sees none of it.
  auto foreign = call_tool(c, js.bob_key, "get_job", {{"job_id", id}});
  CHECK(error_code(foreign) == "not_found");
  CHECK(error_code(call_tool(c, js.bob_key, "cancel_job", {{"job_id", id}})) == "not_found");
  CHECK(error_code(call_tool(c, js.bob_key, "read_job_output", {{"job_id", id}})) == "not_found");
  auto bobs = call_tool(c, js.bob_key, "list_jobs", json::object());
  CHECK(bobs["structuredContent"]["jobs"].empty());
  auto page1 = call_tool(c, js.s.user_key(), "list_jobs", {{"limit", 1}})["structuredContent"];
  REQUIRE(page1["jobs"].size() == 1);
  REQUIRE(page1["next_cursor"].is_string());
  auto page2 = call_tool(c, js.s.user_key(), "list_jobs", {{"limit", 1}, {"cursor", page1["next_cursor"]}})["structuredContent"];
  REQUIRE(page2["jobs"].size() == 1);
  CHECK(page2["jobs"][0]["job_id"] != page1["jobs"][0]["job_id"]);
  CHECK(page2["next_cursor"].is_null());
  auto mine = call_tool(c, js.s.user_key(), "list_jobs", {{"state", "COMPLETED"}});
  REQUIRE(mine["structuredContent"]["jobs"].size() == 1);
  CHECK(mine["structuredContent"]["jobs"][0]["job_id"] == id);
}

TEST_CASE("jobs: walltime exceeded -> FAILED never COMPLETED, cancel kills the process group, scrubbed "
          "environment as the unprivileged user") {
  JobServer js;
  Client c(js.s.port());
  auto slow = submit(c, js.s.user_key(), {{"script", "sleep 60; echo finished"}, {"resources", {{"walltime", "00:00:01"}}}});
  auto f = wait_final(c, js.s.user_key(), slow["job_id"], 30);
  CHECK(f["state"] == "FAILED");
  CHECK(f["native_state"] == "TIMEOUT");
  CHECK(f["reason"].get<std::string>().find("walltime") != std::string::npos);

  auto bg = submit(c, js.s.user_key(), {{"script", "sleep 300 & echo $! > child.pid; wait"},
                                        {"resources", {{"walltime", "00:05:00"}}}});
  std::string bg_id = bg["job_id"];
  json running;
  CHECK(eventually([&] {
    running = call_tool(c, js.s.user_key(), "get_job", {{"job_id", bg_id}})["structuredContent"];
    return running["state"] == "ACTIVE" && running["credits"].value("cost_so_far", 0.0) > 0;
  }));
  CHECK(running["credits"]["cost_so_far"].get<double>() <= running["credits"]["held"].get<double>());
  fs::path pid_file = js.jobs_root / "demo" / bg_id / "child.pid";
  REQUIRE(eventually([&] { return fs::exists(pid_file) && fs::file_size(pid_file) > 0; }));
  pid_t grandchild = std::stoi(slurp(pid_file));
  CHECK_FALSE(process_gone(grandchild));
  auto cancelled = call_tool(c, js.s.user_key(), "cancel_job", {{"job_id", bg_id}});
  CHECK(cancelled["isError"] == false);
  auto fc = wait_final(c, js.s.user_key(), bg_id);
  CHECK(fc["state"] == "CANCELED");
  CHECK(eventually([&] { return process_gone(grandchild); }, std::chrono::seconds(5)));

  auto env = submit(c, js.s.user_key(), {{"script", "env | cut -d= -f1 | sort; id -u"},
                                         {"environment", {{"MY_SETTING", "42"}}},
                                         {"resources", {{"walltime", "00:01:00"}}}});
  auto fe = wait_final(c, js.s.user_key(), env["job_id"]);
  REQUIRE(fe["state"] == "COMPLETED");
  std::string text = call_tool(c, js.s.user_key(), "read_job_output", {{"job_id", env["job_id"]}})["structuredContent"]["text"];
  std::istringstream lines(text);
  std::string line, last;
  std::set<std::string> names;
  while (std::getline(lines, line)) {
    if (!line.empty()) names.insert(line);
    last = line;
  }
  CHECK(names.count("MY_SETTING"));
  CHECK(names.count("SCIGATE_JOB_ID"));
  CHECK(names.count("PATH"));
  for (const auto& n : names) {
    if (n == last) continue;
    bool allowed = n == "PATH" || n == "HOME" || n == "USER" || n == "LANG" || n == "TMPDIR" || n == "PWD" ||
                   n == "SHLVL" || n == "_" || n == "OLDPWD" || n == "MY_SETTING" || n.rfind("SCIGATE_", 0) == 0;
    INFO("variable " << n);
    CHECK(allowed);
  }
  if (::geteuid() == 0) {
    struct passwd* pw = ::getpwnam("nobody");
    REQUIRE(pw);
    CHECK(last == std::to_string(pw->pw_uid));
  }
}

TEST_CASE("jobs: a server SIGKILLed while a job runs finds it COMPLETED after restart and charges it once") {
  JobServer js;
  std::string id;
  {
    Client c(js.s.port());
    auto job = submit(c, js.s.user_key(), {{"script", "sleep 1.5; echo survived"}, {"resources", {{"walltime", "00:02:00"}}}});
    id = job["job_id"];
    REQUIRE(eventually([&] {
      return call_tool(c, js.s.user_key(), "get_job", {{"job_id", id}})["structuredContent"]["state"] == "ACTIVE";
    }));
  }
  js.s.kill_hard();
  // The job outlives the server and its wrapper records the exit code.
  fs::path exit_file = js.jobs_root / ".control" / "demo" / id / "exit" / "code";
  REQUIRE(eventually([&] { return fs::exists(exit_file); }, std::chrono::seconds(15)));
  js.s.start();
  Client c(js.s.port());
  auto done = wait_final(c, js.s.user_key(), id);
  CHECK(done["state"] == "COMPLETED");
  CHECK(done["exit_code"] == 0);
  CHECK(call_tool(c, js.s.user_key(), "read_job_output", {{"job_id", id}})["structuredContent"]["text"] == "survived\n");
  json got;
  REQUIRE(eventually([&] {
    got = call_tool(c, js.s.user_key(), "get_job", {{"job_id", id}})["structuredContent"];
    return got["credits"].contains("cost");
  }));
  double cost = got["credits"]["cost"].get<double>();
  INFO(got.dump());
  INFO(js.s.log());
  CHECK(cost > 1.0);
  CHECK(cost < 10.0);
  auto usage = call_tool(c, js.s.user_key(), "get_usage", json::object())["structuredContent"];
  CHECK(usage["held"].get<double>() == 0);
  CHECK(usage["balance"].get<double>() == Approx(1000 - 0.5 - cost).margin(1e-6));
  int job_charges = 0;
  for (const auto& ch : usage["recent_charges"]) job_charges += ch["tool"] == "job" ? 1 : 0;
  CHECK(job_charges == 1);
}

TEST_CASE("jobs: not enough credits refuses the submit before the scheduler, a queued job cancelled never runs "
          "and pays nothing") {
  JobServer js;
  Client c(js.s.port());
  // 2 CPUs x 10 min x 1 credit/s = 1200 credits > the 1000 granted.
  auto poor = call_tool(c, js.s.user_key(), "submit_job",
                   {{"script", "touch should-not-run"}, {"resources", {{"tasks", 2}, {"walltime", "00:10:00"}}}});
  CHECK(error_code(poor) == "insufficient_credits");
  CHECK(call_tool(c, js.s.user_key(), "list_jobs", json::object())["structuredContent"]["jobs"].empty());
  CHECK_FALSE(fs::exists(js.jobs_root / "demo"));

  // Both slots taken, so the second job queues; cancelled there, it never starts.
  auto busy = submit(c, js.s.user_key(), {{"script", "sleep 30"}, {"resources", {{"tasks", 2}, {"walltime", "00:01:00"}}}});
  REQUIRE(eventually([&] {
    return call_tool(c, js.s.user_key(), "get_job", {{"job_id", busy["job_id"]}})["structuredContent"]["state"] == "ACTIVE";
  }));
  auto queued = submit(c, js.s.user_key(), {{"script", "touch ran"}, {"resources", {{"walltime", "00:01:00"}}}});
  auto q = call_tool(c, js.s.user_key(), "get_job", {{"job_id", queued["job_id"]}})["structuredContent"];
  CHECK(q["state"] == "QUEUED");
  CHECK(call_tool(c, js.s.user_key(), "cancel_job", {{"job_id", queued["job_id"]}})["isError"] == false);
  auto fq = wait_final(c, js.s.user_key(), queued["job_id"]);
  CHECK(fq["state"] == "CANCELED");
  CHECK_FALSE(fq.contains("started"));
  json got;
  REQUIRE(eventually([&] {
    got = call_tool(c, js.s.user_key(), "get_job", {{"job_id", queued["job_id"]}})["structuredContent"];
    return got["credits"].contains("cost");
  }));
  CHECK(got["credits"]["cost"].get<double>() == 0);
  CHECK_FALSE(fs::exists(js.jobs_root / "demo" / queued["job_id"].get<std::string>() / "ran"));
  // The running one, cancelled, pays for the seconds it ran.
  CHECK(call_tool(c, js.s.user_key(), "cancel_job", {{"job_id", busy["job_id"]}})["isError"] == false);
  auto fb = wait_final(c, js.s.user_key(), busy["job_id"]);
  CHECK(fb["state"] == "CANCELED");
  REQUIRE(eventually([&] {
    got = call_tool(c, js.s.user_key(), "get_job", {{"job_id", busy["job_id"]}})["structuredContent"];
    return got["credits"].contains("cost");
  }));
  CHECK(got["credits"]["cost"].get<double>() > 0);
  CHECK(got["credits"]["cost"].get<double>() < 30);
  auto usage = call_tool(c, js.s.user_key(), "get_usage", json::object())["structuredContent"];
  CHECK(usage["held"].get<double>() == 0);
}

TEST_CASE("jobs: wait_job sends progress notifications with the state, then the final job") {
  JobServer js;
  Client c(js.s.port());
  auto job = submit(c, js.s.user_key(), {{"script", "sleep 1"}, {"resources", {{"walltime", "00:01:00"}}}});
  auto req = modern_request(7, "tools/call",
                            {{"name", "wait_job"}, {"arguments", {{"job_id", job["job_id"]}, {"timeout_s", 30}}}});
  req["params"]["_meta"]["progressToken"] = "w";
  auto r = c.request(verb::post, "/mcp", modern_headers(js.s.user_key(), "tools/call", "wait_job"), req.dump());
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "text/event-stream");
  CHECK(r.body.find("notifications/progress") != std::string::npos);
  CHECK(r.body.find("is ACTIVE") != std::string::npos);
  auto last = r.body.rfind("data: ");
  REQUIRE(last != std::string::npos);
  auto final_msg = json::parse(r.body.substr(last + 6, r.body.find('\n', last) - last - 6));
  CHECK(final_msg["id"] == 7);
  CHECK(final_msg["result"]["structuredContent"]["state"] == "COMPLETED");

  // A deadline before the end answers with the job as it is, final = false.
  auto slow = submit(c, js.s.user_key(), {{"script", "sleep 20"}, {"resources", {{"walltime", "00:01:00"}}}});
  auto t0 = std::chrono::steady_clock::now();
  auto w = call_tool(c, js.s.user_key(), "wait_job", {{"job_id", slow["job_id"]}, {"timeout_s", 0.5}});
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK(w["structuredContent"]["final"] == false);
  CHECK(call_tool(c, js.s.user_key(), "cancel_job", {{"job_id", slow["job_id"]}})["isError"] == false);
  CHECK(wait_final(c, js.s.user_key(), slow["job_id"])["state"] == "CANCELED");
}

TEST_CASE("jobs: injection attempts, escaping paths and absurd resources are refused with a clear message") {
  JobServer js;
  Client c(js.s.port());
  auto refused = [&](json args, const std::string& code) {
    // Within the policy's walltime, so that what is refused is the thing under test.
    if (!args.contains("resources")) args["resources"] = {{"walltime", "00:00:10"}};
    if (!args["resources"].contains("walltime")) args["resources"]["walltime"] = "00:00:10";
    auto r = call_tool(c, js.s.user_key(), "submit_job", std::move(args));
    INFO(r.dump());
    CHECK(error_code(r) == code);
    return r["isError"] == true ? r["content"][0]["text"].get<std::string>() : std::string();
  };
  refused({{"script", "true"}, {"name", "x; rm -rf /"}}, "invalid_arguments");
  refused({{"script", "true"}, {"name", "a\nb"}}, "invalid_arguments");
  refused({{"script", "true"}, {"name", "--wrap=id"}}, "invalid_arguments");
  refused({{"script", "true"}, {"partition", "-o /etc/passwd"}}, "invalid_arguments");
  refused({{"script", "true"}, {"account", "$(id)"}}, "invalid_arguments");
  refused({{"script", "true"}, {"environment", {{"A;B", "1"}}}}, "invalid_arguments");
  refused({{"script", "true"}, {"environment", {{"LD_PRELOAD", "/tmp/x.so"}}}}, "invalid_arguments");
  auto esc = refused({{"script", "true"}, {"working_directory", "../../etc"}}, "invalid_arguments");
  CHECK(esc.find("..") != std::string::npos);
  refused({{"script", "true"}, {"working_directory", "/etc"}}, "invalid_arguments");
  refused({{"script", "true"}, {"resources", {{"nodes", 1000000}}}}, "invalid_arguments");
  refused({{"script", "true"}, {"resources", {{"walltime", "1:00:00; reboot"}}}}, "invalid_arguments");
  refused({{"script", std::string(2 * 1024 * 1024, 'x')}}, "invalid_arguments");
  refused({{"script", "true"}, {"executable", "/bin/true"}}, "invalid_arguments");
  // More CPUs than the site has: the scheduler refuses, the job is FAILED, its hold released.
  auto big = refused({{"script", "true"}, {"resources", {{"tasks", 64}, {"walltime", "00:00:10"}}}}, "backend_rejected");
  CHECK(big.find("64 CPUs") != std::string::npos);
  auto usage = call_tool(c, js.s.user_key(), "get_usage", json::object())["structuredContent"];
  CHECK(usage["held"].get<double>() == 0);
  // A symlink planted in the project's area does not lead a job out of it.
  fs::create_directories(js.jobs_root / "demo");
  fs::create_directory_symlink("/etc", js.jobs_root / "demo" / "etc-link");
  auto link = refused({{"script", "touch pwned"}, {"working_directory", "etc-link"}, {"resources", {{"walltime", "00:00:10"}}}},
                      "backend_rejected");
  CHECK(link.find("leaves the project") != std::string::npos);
  CHECK_FALSE(fs::exists("/etc/pwned"));
}
