#include <catch2/catch.hpp>

#include <boost/asio/steady_timer.hpp>

#include <chrono>

#include "tests/support/run_blocking.hpp"
#include "tools/quantum/run_quantum_circuit.hpp"

using namespace scigate;
using namespace scigate::tools;

namespace {

std::string layers(int n, int count) {
  std::string s = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[" + std::to_string(n) + "];\n";
  for (int l = 0; l < count; ++l)
    for (int i = 0; i < n; ++i) s += "rx(0.1) q[" + std::to_string(i) + "];\ncx q[" + std::to_string(i) + "],q[" + std::to_string((i + 1) % n) + "];\n";
  return s;
}

CallContext context() {
  CallContext ctx;
  ctx.deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  return ctx;
}

}  // namespace

TEST_CASE("run_quantum_circuit: facts come from the parsed circuit and price the hold", "[quantum][tools]") {
  QuantumConfig cfg;
  Config full;
  full.quantum = cfg;
  RunQuantumCircuitTool tool(full, nullptr);
  json args = {{"source", "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[3];\ncreg c[3];\nh q;\ncx q[0],q[1];\nmeasure q -> c;\n"}};
  auto f = tool.derive_facts(args);
  REQUIRE(std::holds_alternative<json>(f));
  const json& facts = std::get<json>(f);
  CHECK(facts["qubits"] == 3);
  CHECK(facts["gates"] == 4);
  CHECK(facts["operations"] == 7);  // and 3 measurements: each a pass over the state
  CHECK(facts["mid_circuit_measurement"] == false);
  json merged = args;
  merged.update(facts);
  Usage u = tool.worst_case_usage(merged);
  REQUIRE(u.lines.size() == 2);
  CHECK(u.lines[0].resource == "quantum_sim_qubit_gate");
  CHECK(u.lines[0].quantity == 3 * 7);
  CHECK(u.lines[1].resource == "quantum_sim_mamp_gate");
  CHECK(u.lines[1].quantity == Approx(7.0 * 8 / (1 << 20)));

  // Mid-circuit measurement re-runs the circuit per shot: the hold says so.
  json mid = {{"source", "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\ncreg c[2];\nh q[0];\nmeasure q[0] -> c[0];\n"
                         "if (c == 1) x q[1];\nmeasure q[1] -> c[1];\n"},
              {"shots", 100}};
  json mf = std::get<json>(tool.derive_facts(mid));
  CHECK(mf["mid_circuit_measurement"] == true);
  mid.update(mf);
  CHECK(tool.worst_case_usage(mid).lines[0].quantity == 2 * 4 * 100);  // h, measure, x, measure per run

  // Operations that are not gates still cost: 3,000 global phases on 20 qubits took seconds.
  std::string phases = "OPENQASM 3.0;\nqubit[20] q;\n";
  for (int i = 0; i < 3000; ++i) phases += "gphase(0.5);\n";
  json pf = std::get<json>(tool.derive_facts(json{{"source", phases}}));
  CHECK(pf["gates"] == 0);
  json pa = {{"source", phases}, {"shots", 1}};
  pa.update(pf);
  CHECK(tool.worst_case_usage(pa).lines[0].quantity == 20 * 3000);

  auto bad = tool.derive_facts(json{{"source", "OPENQASM 2.0;\nqreg q[1];\nh q[0];\n"}});
  REQUIRE(std::holds_alternative<Error>(bad));
  CHECK(std::get<Error>(bad).message == "line 3, column 1: unknown gate 'h'");
}

TEST_CASE("run_quantum_circuit: cancellation stops a long simulation on the pool", "[quantum][tools]") {
  QuantumConfig cfg;
  cfg.fusion = false;
  cfg.threads = 1;
  Config full;
  full.quantum = cfg;
  RunQuantumCircuitTool tool(full, nullptr);
  boost::asio::io_context io;
  CallContext ctx = context();
  // 20 qubits x 8000 gates: many seconds; cancelled after 100 ms.
  json args = {{"source", layers(20, 200)}, {"shots", 10}};
  boost::asio::steady_timer timer(io, std::chrono::milliseconds(100));
  auto flag = ctx.cancellation;
  timer.async_wait([flag](auto) { flag->cancel(); });
  auto start = std::chrono::steady_clock::now();
  ToolResult r = test::run_blocking(io, tool.call(args, ctx));
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(r.error);
  CHECK(r.error->code == ErrorCode::kCancelled);
  CHECK(elapsed < 2.0);
}

TEST_CASE("run_quantum_circuit: a run cut short is charged for the part simulated", "[quantum][tools]") {
  QuantumConfig cfg;
  cfg.fusion = false;
  cfg.threads = 1;
  Config full;
  full.quantum = cfg;
  RunQuantumCircuitTool tool(full, nullptr);
  boost::asio::io_context io;
  CallContext ctx = context();
  auto flag = ctx.cancellation;
  // Cancelled once some of it is done (2%, as the progress reports say), like a caller that
  // hangs up, or a deadline, mid-run: before, such a run cost nothing.
  ctx.progress = ProgressReporter([flag](double p, std::optional<double>, const std::string&) {
    if (p >= 2) flag->cancel();
  });
  ToolResult r = test::run_blocking(io, tool.call(json{{"source", layers(16, 200)}, {"shots", 10}}, ctx));
  REQUIRE(r.error);
  CHECK(r.error->code == ErrorCode::kCancelled);
  REQUIRE(r.usage.lines.size() == 2);
  const double whole = 16.0 * 6400;  // 16 qubits x 200 layers of 16 rx and 16 cx
  CHECK(r.usage.lines[0].quantity >= whole * 0.02);
  CHECK(r.usage.lines[0].quantity < whole);
  CHECK(r.usage.lines[0].detail.find("% done") != std::string::npos);
}

TEST_CASE("run_quantum_circuit: progress is reported on the call's executor, up to 100", "[quantum][tools]") {
  QuantumConfig cfg;
  cfg.fusion = false;
  Config full;
  full.quantum = cfg;
  RunQuantumCircuitTool tool(full, nullptr);
  boost::asio::io_context io;
  CallContext ctx = context();
  std::vector<double> seen;
  ctx.progress = ProgressReporter([&](double p, std::optional<double> total, const std::string&) {
    seen.push_back(p);
    CHECK(total == 100.0);
  });
  ToolResult r = test::run_blocking(io, tool.call(json{{"source", layers(12, 20)}, {"shots", 5}, {"seed", 3}}, ctx));
  REQUIRE(!r.error);
  CHECK(r.structured["seed"] == 3);
  CHECK(r.structured["counts"].empty());  // no measurement, no counts
  CHECK(r.usage.lines[0].quantity == 12 * 480);
  REQUIRE(seen.size() >= 10);
  CHECK(std::is_sorted(seen.begin(), seen.end()));
  CHECK(seen.back() == 100);
}
