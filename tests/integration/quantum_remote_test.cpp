// run_quantum_circuit on a remote device through the real binary: IBM's Qiskit Runtime REST API
// reproduced by tests/support/ibm_runtime_double.py (a real HTTP server on 127.0.0.1 that runs
// the circuits it receives on a state vector), the run followed as a job of the job ledger.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <thread>

#include "job_server.hpp"
#include "server_process.hpp"
#include "tool_call.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

constexpr const char* kCrn = "crn:v1:bluemix:public:quantum-computing:us-east:a/0123:4567::";
constexpr const char* kApiKey = "Zx9-secret-ibm-api-key-never-shown";

// The double, on a port of its own, stopped by PID when the test ends.
struct IbmDouble {
  pid_t pid = -1;
  uint16_t port = 0;
  std::filesystem::path dir;

  explicit IbmDouble(std::vector<std::string> extra = {}) {
    char tmpl[] = "/tmp/scigate-ibm-XXXXXX";
    dir = ::mkdtemp(tmpl);
    auto port_file = dir / "port";
    std::vector<std::string> argv = {SCIGATE_PYTHON3, std::string(SCIGATE_SOURCE_DIR) + "/tests/support/ibm_runtime_double.py",
                                     "--port-file", port_file.string(), "--api-key", kApiKey, "--crn", kCrn};
    argv.insert(argv.end(), extra.begin(), extra.end());
    pid = ::fork();
    if (pid == 0) {
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      ::execvp(a[0], a.data());
      ::_exit(127);
    }
    for (int i = 0; i < 200 && !std::filesystem::exists(port_file); ++i) {
      int st = 0;
      if (::waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        FAIL("the IBM Runtime test double did not start (exit " << WEXITSTATUS(st)
                                                                << "; 77 = python3-numpy missing: scripts/install-deps.sh --test)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    REQUIRE(std::filesystem::exists(port_file));
    port = static_cast<uint16_t>(std::stoi(slurp(port_file)));
  }
  ~IbmDouble() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  json stats() {
    Client c(port);
    return c.request(verb::get, "/_control/stats", {}).json_body();
  }
  void control(const json& j) {
    Client c(port);
    REQUIRE(c.request(verb::post, "/_control", {{"Content-Type", "application/json"}}, j.dump()).status == 204);
  }
};

constexpr const char* kPolicy = R"(
[[rules]]
id = "members-run-circuits"
effect = "permit"
principals = ["role:member"]
tools = ["run_quantum_circuit"]
[rules.when]
backend = { in = ["statevector", "ibm_test"], optional = true }
shots = { max = 100000, optional = true }

[[rules]]
id = "members-follow"
effect = "permit"
principals = ["role:member"]
tools = ["get_job", "list_jobs", "cancel_job", "wait_job", "get_usage", "submit_job"]
)";

// A server whose site ibm_test is the double: 0.01 credit a shot, 0.5 a call.
struct RemoteServer {
  ServerProcess s;
  explicit RemoteServer(const IbmDouble& d, const std::string& key = kApiKey)
      : s(std::string(R"([credits.rates]
"quantum_shot:ibm_test" = 0.01
"call:run_quantum_circuit" = 0.5

[[sites]]
id = "ibm_test"
scheduler = "ibm-runtime"
poll_interval_ms = 100
[sites.ibm_runtime]
url = "http://127.0.0.1:)") + std::to_string(d.port) + R"(/api"
iam_url = "http://127.0.0.1:)" + std::to_string(d.port) + R"("
api_key_file = "ibm.key"
service_crn = ")" + kCrn + R"("
backend = "ibm_test"
max_shots = 20000
)",
          false) {
    std::ofstream(s.dir() / "ibm.key") << key << "\n";
    std::ofstream(s.dir() / "policies" / "demo.toml") << kPolicy;
    s.start();
  }
};

// Three qubits in native gates (rz, sx, x, ecr), two registers: the device's counts must follow
// the exact distribution the embedded simulator computes for the same circuit.
constexpr const char* kNative = R"(OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[2] c;
bit[1] d;
rz(0.7) q[0];
sx q[0];
rz(1.1) q[0];
x q[1];
ecr q[0], q[1];
sx q[2];
ecr q[1], q[2];
c[0] = measure q[0];
c[1] = measure q[1];
d[0] = measure q[2];
)";

double balance(Client& c, const ServerProcess& s) {
  return call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"]["balance"].get<double>();
}

std::string message(const json& result) { return result["_meta"]["io.scigate/error"].value("message", ""); }

// key "d cc" -> probability, from the simulator's amplitudes (qubit i = bit i of the index).
std::map<std::string, double> exact(const json& statevector) {
  std::map<std::string, double> p;
  for (std::size_t i = 0; i < statevector.size(); ++i) {
    double re = statevector[i][0], im = statevector[i][1];
    std::string key = std::string(1, (i >> 2) & 1 ? '1' : '0') + " " + ((i >> 1) & 1 ? '1' : '0') + (i & 1 ? '1' : '0');
    p[key] += re * re + im * im;
  }
  return p;
}

}  // namespace

TEST_CASE("quantum remote: a device run is a job whose counts follow the exact distribution, charged by shots") {
  IbmDouble d;
  RemoteServer rs(d);
  auto& s = rs.s;
  Client c(s.port());
  double before = balance(c, s);

  auto r = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", kNative}, {"backend", "ibm_test"}, {"shots", 4000}});
  INFO(r.dump());
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  std::string job = sc["job_id"];
  CHECK(job.rfind("j-", 0) == 0);
  CHECK(sc["final"] == false);
  CHECK(sc["backend"] == "ibm_test");
  CHECK(r["content"][0]["text"].get<std::string>().find("wait_job") != std::string::npos);

  auto fin = wait_final(c, s.user_key(), job, 30);
  REQUIRE(fin["state"] == "COMPLETED");
  CHECK(fin["native_state"] == "Completed");
  auto got = call_tool(c, s.user_key(), "get_job", {{"job_id", job}})["structuredContent"];
  auto counts = got["result"]["counts"];
  CHECK(got["result"]["registers"] == json::array({"c", "d"}));
  CHECK(got["result"]["shots"] == 4000);

  auto sim = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", kNative}, {"return_statevector", true}, {"shots", 0}});
  REQUIRE(sim["isError"] == false);
  auto p = exact(sim["structuredContent"]["statevector"]);
  int total = 0;
  for (auto it = counts.begin(); it != counts.end(); ++it) {
    INFO(it.key());
    REQUIRE(p.count(it.key()));
    CHECK(p[it.key()] > 1e-9);  // never an outcome the circuit cannot produce
    total += it.value().get<int>();
  }
  CHECK(total == 4000);
  for (const auto& [key, prob] : p) {
    double n = counts.contains(key) ? counts[key].get<double>() : 0.0;
    double sd = std::sqrt(4000 * prob * (1 - prob));
    INFO(key << " p=" << prob << " n=" << n);
    CHECK(std::abs(n - 4000 * prob) <= 5 * sd + 1);
  }

  // Credits: 0.5 for each call, and the job's 4000 shots x 0.01 once it settles.
  REQUIRE(eventually([&] { return call_tool(c, s.user_key(), "get_job", {{"job_id", job}})["structuredContent"]["credits"]["settled"] == true; }));
  double after = balance(c, s);
  // Only run_quantum_circuit has a call fee (0.5, twice); the simulator run also pays the demo
  // rate of 0.0001 per qubit-operation (3 qubits x (7 gates + 3 measurements)); the device run
  // pays 4000 shots x 0.01.
  CHECK(before - after == Approx(0.5 + 0.5 + 30 * 0.0001 + 40.0));

  // The service saw one sign-in, its headers on every call, and the circuit as one sampler PUB.
  auto st = d.stats();
  CHECK(st["tokens_issued"] == 1);
  CHECK(st["jobs_submitted"] == 1);
  CHECK(st["last_headers"]["service-crn"] == kCrn);
  CHECK(st["last_headers"]["ibm-api-version"] == "2025-05-01");
  CHECK(st["last_headers"]["authorization"].get<std::string>().rfind("Bearer ", 0) == 0);
  // The API key never reaches the log.
  CHECK(s.log().find(kApiKey) == std::string::npos);
}

TEST_CASE("quantum remote: run as a task, the call answers with the device's counts") {
  IbmDouble d;
  RemoteServer rs(d);
  auto& s = rs.s;
  Client c(s.port());
  json req = modern_request(1, "tools/call",
                            {{"name", "run_quantum_circuit"},
                             {"arguments", {{"source", kNative}, {"backend", "ibm_test"}, {"shots", 500}}}});
  req["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"] =
      json::object();
  auto r = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tools/call", "run_quantum_circuit"), req.dump());
  REQUIRE(r.status == 200);
  auto created = r.json_body()["result"];
  INFO(created.dump());
  REQUIRE(created["resultType"] == "task");
  std::string task = created["taskId"];
  json done;
  REQUIRE(eventually(
      [&] {
        json get = modern_request(2, "tasks/get", {{"taskId", task}});
        get["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]["extensions"]["io.modelcontextprotocol/tasks"] =
            json::object();
        auto g = c.request(verb::post, "/mcp", modern_headers(s.user_key(), "tasks/get", task), get.dump());
        done = g.json_body()["result"];
        return done.value("status", "") == "completed" || done.value("status", "") == "failed";
      },
      std::chrono::seconds(30)));
  INFO(done.dump());
  REQUIRE(done["status"] == "completed");
  auto sc = done["result"]["structuredContent"];
  CHECK(sc["final"] == true);
  CHECK(sc["state"] == "COMPLETED");
  int total = 0;
  for (auto it = sc["counts"].begin(); it != sc["counts"].end(); ++it) total += it.value().get<int>();
  CHECK(total == 500);
}

TEST_CASE("quantum remote: circuits the device cannot run are refused before anything is sent") {
  IbmDouble d;
  RemoteServer rs(d);
  auto& s = rs.s;
  Client c(s.port());
  auto run = [&](const std::string& body, json extra = json::object()) {
    json args = {{"source", "OPENQASM 3.0;\ninclude \"stdgates.inc\";\n" + body}, {"backend", "ibm_test"}};
    args.update(extra);
    return call_tool(c, s.user_key(), "run_quantum_circuit", args);
  };
  auto h = run("qubit[2] q;\nbit[2] c;\nh q[0];\nc = measure q;\n");
  REQUIRE(h["isError"] == true);
  CHECK(message(h).find("'h q[0]' is not a native instruction of ibm_test") != std::string::npos);
  CHECK(h["_meta"]["io.scigate/error"]["hint"].get<std::string>().find("transpile") != std::string::npos);

  auto far = run("qubit[3] q;\nbit[3] c;\necr q[0], q[2];\nc = measure q;\n");
  REQUIRE(far["isError"] == true);
  CHECK(message(far).find("qubits 0 and 2 are not coupled") != std::string::npos);
  auto reversed = run("qubit[2] q;\nbit[2] c;\necr q[1], q[0];\nc = measure q;\n");
  REQUIRE(reversed["isError"] == true);
  CHECK(message(reversed).find("not coupled in this direction") != std::string::npos);

  // A transpiled circuit's physical qubits are the device's: `ecr $1, $0` is the pair (1, 0),
  // which ibm_test does not couple (numbered by first use, as the simulator numbers them, it
  // would have gone out as the coupled pair (0, 1): on other qubits than the caller chose).
  auto physical = run("bit[2] c;\necr $1, $0;\nc[0] = measure $0;\nc[1] = measure $1;\n");
  REQUIRE(physical["isError"] == true);
  CHECK(message(physical).find("qubits 1 and 0 are not coupled in this direction") != std::string::npos);

  auto wide = run("qubit[6] q;\nbit[6] c;\nx q[5];\nc = measure q;\n");
  REQUIRE(wide["isError"] == true);
  CHECK(message(wide).find("ibm_test has 5") != std::string::npos);

  auto obs = run("qubit[1] q;\nbit[1] c;\nx q[0];\nc = measure q;\n", {{"observables", {"Z"}}});
  REQUIRE(obs["isError"] == true);
  CHECK(message(obs).find("counts only") != std::string::npos);
  auto none = run("qubit[1] q;\nx q[0];\n");
  REQUIRE(none["isError"] == true);
  CHECK(message(none).find("measures nothing") != std::string::npos);
  auto many = run("qubit[1] q;\nbit[1] c;\nx q[0];\nc = measure q;\n", {{"shots", 50000}});
  REQUIRE(many["isError"] == true);
  CHECK(message(many).find("takes 1 to 20000") != std::string::npos);

  // Nothing reached the service's job queue, and no credits stay held.
  CHECK(d.stats()["jobs_submitted"] == 0);
  auto jobs = call_tool(c, s.user_key(), "list_jobs", json::object())["structuredContent"]["jobs"];
  for (const auto& j : jobs) CHECK(j["state"] == "FAILED");
  CHECK(call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"]["held"].get<double>() == 0);

  // A batch script cannot go to the device.
  auto script = call_tool(c, s.user_key(), "submit_job", {{"script", "echo hi"}, {"site", "ibm_test"}});
  REQUIRE(script["isError"] == true);
  CHECK(message(script).find("is a quantum device") != std::string::npos);
}

TEST_CASE("quantum remote: device failures, the service's time limit, cancel in the queue and an outage") {
  IbmDouble d;
  RemoteServer rs(d);
  auto& s = rs.s;
  Client c(s.port());
  const std::string one = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[1] q;\nbit[1] c;\nx q[0];\nc = measure q;\n";
  auto submit_one = [&](int shots) {
    auto r = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", one}, {"backend", "ibm_test"}, {"shots", shots}});
    INFO(r.dump());
    REQUIRE(r["isError"] == false);
    return r["structuredContent"]["job_id"].get<std::string>();
  };

  d.control({{"next_job", "fail"}});
  auto failed = wait_final(c, s.user_key(), submit_one(100), 30);
  CHECK(failed["state"] == "FAILED");
  CHECK(failed["reason"].get<std::string>().find("Error code 1500") != std::string::npos);

  d.control({{"next_job", "ran_too_long"}});
  auto too_long = wait_final(c, s.user_key(), submit_one(100), 30);
  CHECK(too_long["state"] == "FAILED");  // the service's limit is a failure, not a cancel
  CHECK(too_long["native_state"] == "Cancelled - Ran too long");

  // Cancelled while queued: nothing ran, nothing is charged.
  d.control({{"queue_ms", 60000}});
  std::string queued = submit_one(1000);
  auto cancel = call_tool(c, s.user_key(), "cancel_job", {{"job_id", queued}});
  REQUIRE(cancel["isError"] == false);
  auto canceled = wait_final(c, s.user_key(), queued, 30);
  CHECK(canceled["state"] == "CANCELED");
  REQUIRE(eventually([&] {
    return call_tool(c, s.user_key(), "get_job", {{"job_id", queued}})["structuredContent"]["credits"]["settled"] == true;
  }));
  CHECK(call_tool(c, s.user_key(), "get_job", {{"job_id", queued}})["structuredContent"]["credits"]["cost"].get<double>() == 0);

  // The service down: the caller learns it at once and no credits stay held.
  d.control({{"down", true}});
  auto down = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", one}, {"backend", "ibm_test"}, {"shots", 10}});
  REQUIRE(down["isError"] == true);
  CHECK(error_code(down) == "backend_unavailable");
  CHECK(call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"]["held"].get<double>() == 0);
  // ... and the server keeps serving: the simulator still answers.
  auto local = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", one}, {"shots", 10}});
  CHECK(local["isError"] == false);
}

TEST_CASE("quantum remote: a revoked token is renewed and an API key the service refuses is the operator problem") {
  IbmDouble d({"--queue-ms", "50", "--run-ms", "50"});
  {
    RemoteServer rs(d);
    Client c(rs.s.port());
    const std::string one = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[1] q;\nbit[1] c;\nx q[0];\nc = measure q;\n";
    json args = {{"source", one}, {"backend", "ibm_test"}, {"shots", 10}};
    auto first = call_tool(c, rs.s.user_key(), "run_quantum_circuit", args);
    REQUIRE(first["isError"] == false);
    CHECK(wait_final(c, rs.s.user_key(), first["structuredContent"]["job_id"], 30)["state"] == "COMPLETED");
    d.control({{"revoke_tokens", true}});
    auto second = call_tool(c, rs.s.user_key(), "run_quantum_circuit", args);
    REQUIRE(second["isError"] == false);
    auto fin = wait_final(c, rs.s.user_key(), second["structuredContent"]["job_id"], 30);
    CHECK(fin["state"] == "COMPLETED");
    CHECK(fin["result"]["counts"]["1"] == 10);  // x on |0>: always 1
    CHECK(d.stats()["tokens_issued"] == 2);
  }
  RemoteServer wrong(d, "not-the-key");
  Client c(wrong.s.port());
  const std::string one = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[1] q;\nbit[1] c;\nx q[0];\nc = measure q;\n";
  auto r = call_tool(c, wrong.s.user_key(), "run_quantum_circuit", {{"source", one}, {"backend", "ibm_test"}});
  REQUIRE(r["isError"] == true);
  CHECK(error_code(r) == "backend_unavailable");
  CHECK(message(r) == "the quantum service refused this server's credentials");
  CHECK(wrong.s.log().find("not-the-key") == std::string::npos);
}
