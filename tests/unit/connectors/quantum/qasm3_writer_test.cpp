// Writing circuits out as OpenQASM 3 for remote devices, and the native-gate check.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "connectors/quantum/ibm/ibm_runtime.hpp"
#include "connectors/quantum/qasm/qasm3_writer.hpp"
#include "connectors/quantum/qasm/qasm_parser.hpp"
#include "connectors/quantum/statevector/simulator.hpp"

using namespace scigate;
using namespace scigate::quantum;

namespace {

Circuit parse(const std::string& src) {
  auto r = parse_qasm(src);
  if (auto* e = std::get_if<Error>(&r)) FAIL(e->message);
  return std::get<ParsedCircuit>(std::move(r)).circuit;
}

std::vector<Complex> amplitudes(const Circuit& c) {
  SimRequest req;
  req.shots = 0;
  req.return_statevector = true;
  auto r = run_statevector(c, req, SimOptions{});
  if (auto* e = std::get_if<Error>(&r)) FAIL(e->message);
  return std::get<SimResult>(r).statevector;
}

DeviceTarget eagle5() {
  DeviceTarget t;
  t.name = "ibm_test";
  t.num_qubits = 5;
  t.basis = {"ecr", "id", "rz", "sx", "x"};
  t.coupling = {{0, 1}, {1, 2}, {2, 3}, {3, 4}};
  t.conditionals = false;
  return t;
}

}  // namespace

TEST_CASE("qasm3 writer: random OpenQASM 2 circuits come back with the same amplitudes", "[quantum][qasm3]") {
  std::mt19937_64 rng(42);
  const char* gates[] = {"h", "x", "sx", "t", "rz(0.3)", "u3(0.1,0.2,0.3)", "cx", "cz", "ecr", "rzz(1.7)", "cp(-0.4)",
                         "swap", "ccx", "cswap", "crx(2.5)", "cu(0.1,0.2,0.3,0.4)"};
  for (int round = 0; round < 20; ++round) {
    std::string src = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg a[2];\nqreg b[3];\ncreg c[5];\n";
    for (int g = 0; g < 30; ++g) {
      std::string gate = gates[rng() % std::size(gates)];
      int arity = gate == "ccx" || gate == "cswap" ? 3
                  : (gate.rfind("c", 0) == 0 || gate == "ecr" || gate.rfind("rzz", 0) == 0 || gate == "swap") ? 2
                                                                                                             : 1;
      std::vector<int> qs;
      while (static_cast<int>(qs.size()) < arity) {
        int q = static_cast<int>(rng() % 5);
        if (std::find(qs.begin(), qs.end(), q) == qs.end()) qs.push_back(q);
      }
      src += gate;
      for (std::size_t i = 0; i < qs.size(); ++i)
        src += (i ? ", " : " ") + std::string(qs[i] < 2 ? "a[" : "b[") + std::to_string(qs[i] < 2 ? qs[i] : qs[i] - 2) + "]";
      src += ";\n";
    }
    Circuit original = parse(src);
    auto text = write_openqasm3(original);
    REQUIRE(std::holds_alternative<std::string>(text));
    INFO(std::get<std::string>(text));
    CHECK(std::get<std::string>(text).rfind("OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[5] q;\nbit[5] c;\n", 0) == 0);
    Circuit again = parse(std::get<std::string>(text));
    CHECK(again.gate_count() == original.gate_count());
    auto a = amplitudes(original), b = amplitudes(again);
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    CHECK(worst < 1e-12);  // parameters are written with all 17 digits
  }
}

TEST_CASE("qasm3 writer: registers, measurements, resets and conditions", "[quantum][qasm3]") {
  Circuit c = parse(
      "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\ncreg m[1];\ncreg r[2];\nh q[0];\nmeasure q[0] -> m[0];\n"
      "reset q[0];\nif(m==1) x q[1];\nmeasure q -> r;\nbarrier q;\n");
  auto text = write_openqasm3(c);
  REQUIRE(std::holds_alternative<std::string>(text));
  std::string t = std::get<std::string>(text);
  CHECK(t.find("bit[1] m;\nbit[2] r;\n") != std::string::npos);
  CHECK(t.find("m[0] = measure q[0];\nreset q[0];\nif (m[0] == 1) { x q[1]; }\n") != std::string::npos);
  CHECK(t.find("r[1] = measure q[1];") != std::string::npos);
  CHECK(t.find("barrier") == std::string::npos);  // no effect on outcomes
  Circuit again = parse(t);
  CHECK(again.ops.size() == c.ops.size());
}

// A transpiled circuit names the device's qubits; the parser numbers them by first use (what
// the simulator needs), and the text sent to a device must put them back where they were.
TEST_CASE("qasm3 writer: physical qubits stay the device's qubits", "[quantum][qasm3]") {
  Circuit c = parse("OPENQASM 3.0;\ninclude \"stdgates.inc\";\nbit[2] c;\nx $3;\necr $4, $3;\nc[0] = measure $3;\n"
                    "c[1] = measure $4;\n");
  CHECK(c.num_qubits == 2);  // the simulator's view: two qubits
  auto text = write_openqasm3(c);
  REQUIRE(std::holds_alternative<std::string>(text));
  std::string t = std::get<std::string>(text);
  CHECK(t.find("qubit[5] q;\n") != std::string::npos);
  CHECK(t.find("x q[3];\necr q[4], q[3];\nc[0] = measure q[3];\nc[1] = measure q[4];\n") != std::string::npos);
  // On the device, the pair is (4, 3): ibm_test couples 3->4 only.
  auto t5 = eagle5();
  auto wrong_way = check_native(parse(t), t5);
  REQUIRE(wrong_way);
  CHECK(wrong_way->message.find("qubits 4 and 3 are not coupled in this direction") != std::string::npos);

  auto mixed = write_openqasm3(parse("OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[1] q;\nx q[0];\nx $0;\n"));
  REQUIRE(std::holds_alternative<Error>(mixed));
  CHECK_THAT(std::get<Error>(mixed).message, Catch::Contains("both physical qubits ($n) and declared qubits"));
  auto far = write_openqasm3(parse("OPENQASM 3.0;\ninclude \"stdgates.inc\";\nx $99999999999;\n"));
  REQUIRE(std::holds_alternative<Error>(far));
  CHECK_THAT(std::get<Error>(far).message, Catch::Contains("beyond any device"));
}

TEST_CASE("native check: basis gates, coupling direction, width and conditionals", "[quantum][qasm3]") {
  auto t = eagle5();
  auto check = [&](const std::string& body) {
    return check_native(parse("OPENQASM 3.0;\ninclude \"stdgates.inc\";\n" + body), t);
  };
  CHECK_FALSE(check("qubit[3] q;\nbit[3] c;\nrz(0.5) q[0];\nsx q[1];\necr q[0], q[1];\necr q[1], q[2];\nc = measure q;\n"));
  auto h = check("qubit[1] q;\nh q[0];\n");
  REQUIRE(h);
  CHECK(h->message == "'h q[0]' is not a native instruction of ibm_test (it runs ecr, id, rz, sx, x, measure, reset)");
  auto back = check("qubit[2] q;\necr q[1], q[0];\n");
  REQUIRE(back);
  CHECK(back->message.find("qubits 1 and 0 are not coupled in this direction") != std::string::npos);
  auto wide = check("qubit[7] q;\nx q[6];\n");
  REQUIRE(wide);
  CHECK(wide->message == "the circuit uses 7 qubits; ibm_test has 5");
  auto cond = check("qubit[1] q;\nbit[1] c;\nc[0] = measure q[0];\nif (c[0]) x q[0];\n");
  REQUIRE(cond);
  CHECK(cond->message.find("classically conditioned") != std::string::npos);
  t.conditionals = true;
  CHECK_FALSE(check("qubit[1] q;\nbit[1] c;\nc[0] = measure q[0];\nif (c[0]) x q[0];\n"));
}

TEST_CASE("ibm runtime: job states map to PSI/J, the time limit is a failure", "[quantum][ibm]") {
  auto job = [](const std::string& status, const std::string& reason = "") {
    nlohmann::json j = {{"id", "d123"}, {"status", status}, {"state", {{"status", status}, {"reason", reason}}},
                        {"created", "2026-05-25T15:32:11.000Z"}};
    return IbmRuntimeScheduler::parse_job(j).value();
  };
  CHECK(job("Queued").state == jobs::JobState::kQueued);
  CHECK(job("Running").state == jobs::JobState::kActive);
  CHECK(job("Completed").state == jobs::JobState::kCompleted);
  auto failed = job("Failed", "Error code 1517; bad instruction");
  CHECK(failed.state == jobs::JobState::kFailed);
  CHECK(failed.reason == "Error code 1517; bad instruction");
  CHECK(job("Cancelled").state == jobs::JobState::kCanceled);
  auto too_long = job("Cancelled - Ran too long");
  CHECK(too_long.state == jobs::JobState::kFailed);
  CHECK(too_long.native_state == "Cancelled - Ran too long");
  CHECK(job("Something new").state == jobs::JobState::kQueued);  // not final: keep polling
  CHECK(job("Queued").submit_ms == int64_t{1779723131000});
  CHECK_FALSE(IbmRuntimeScheduler::parse_job(nlohmann::json::object()));
}

TEST_CASE("ibm runtime: hex samples per register become Qiskit-keyed counts", "[quantum][ibm]") {
  // Registers in the order the circuit declares them; bit i of a sample = bit i of the register.
  std::string body = R"({"results": [{"data": {
      "meas": {"samples": ["0x3", "0x0", "0x3", "0x1"], "num_bits": 2},
      "anc": {"samples": ["0x1", "0x0", "0x1", "0x1"], "num_bits": 1}},
      "metadata": {"circuit_metadata": {}}}], "metadata": {"version": 2}})";
  std::string why;
  auto r = IbmRuntimeScheduler::counts_from_results(body, &why);
  REQUIRE(r);
  CHECK((*r)["registers"] == nlohmann::json::array({"meas", "anc"}));
  CHECK((*r)["shots"] == 4);
  CHECK((*r)["counts"] == nlohmann::json({{"1 11", 2}, {"0 00", 1}, {"1 01", 1}}));
  CHECK_FALSE(IbmRuntimeScheduler::counts_from_results(R"({"results": []})", &why));
  CHECK_FALSE(IbmRuntimeScheduler::counts_from_results(
      R"({"results": [{"data": {"c": {"samples": ["0xZZ"], "num_bits": 2}}}]})", &why));
  CHECK(why == "sample \"0xZZ\" is not hexadecimal");
  CHECK_FALSE(IbmRuntimeScheduler::counts_from_results(
      R"({"results": [{"data": {"a": {"samples": ["0x1"], "num_bits": 1}, "b": {"samples": [], "num_bits": 1}}}]})", &why));
}

TEST_CASE("ibm runtime: the device's configuration gives its target", "[quantum][ibm]") {
  nlohmann::json cfg = {{"n_qubits", 127}, {"basis_gates", {"cz", "id", "rz", "sx", "x"}},
                        {"coupling_map", {{0, 1}, {1, 0}}}, {"supported_instructions", {"cz", "if_else", "measure"}}};
  auto t = IbmRuntimeScheduler::parse_configuration("ibm_fez", cfg);
  CHECK(t.num_qubits == 127);
  CHECK(t.basis.count("cz"));
  CHECK(t.coupling.count({1, 0}));
  CHECK(t.conditionals);
}
