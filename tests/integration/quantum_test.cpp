// run_quantum_circuit through the real binary: results, policy on the parsed circuit's qubits,
// credits by qubits x gates, parse errors with line and column, the memory bound, progress.
#include <catch2/catch.hpp>

#include <fstream>

#include "server_process.hpp"
#include "tool_call.hpp"

using namespace scigate::itest;
using http::verb;

namespace {

constexpr const char* kBell = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0],q[1];\nmeasure q -> c;\n";

std::string ghz(int n) {
  std::string s = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[" + std::to_string(n) + "] q;\nbit[" + std::to_string(n) + "] c;\nh q[0];\n";
  for (int i = 0; i + 1 < n; ++i) s += "cx q[" + std::to_string(i) + "], q[" + std::to_string(i + 1) + "];\n";
  return s + "c = measure q;\n";
}

json usage(Client& c, const ServerProcess& s) { return call_tool(c, s.user_key(), "get_usage", json::object())["structuredContent"]; }

}  // namespace

TEST_CASE("quantum: a Bell pair through the server, charged by qubits x operations") {
  // 1 credit per qubit-operation: the Bell circuit is 2 qubits x (2 gates + 2 measurements) = 8 credits.
  ServerProcess s("[credits.rates]\n\"quantum_sim_qubit_gate\" = 1\n");
  Client c(s.port());
  double before = usage(c, s)["balance"].get<double>();
  auto r = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", kBell}, {"shots", 2000}, {"seed", 11}, {"return_statevector", true}});
  REQUIRE(r["isError"] == false);
  auto sc = r["structuredContent"];
  CHECK(sc["qubits"] == 2);
  CHECK(sc["gates"] == 2);
  CHECK(sc["gate_counts"]["h"] == 1);
  CHECK(sc["gate_counts"]["cx"] == 1);
  CHECK(sc["seed"] == 11);
  CHECK(sc["counts"].size() == 2);
  CHECK(sc["counts"]["00"].get<int>() + sc["counts"]["11"].get<int>() == 2000);
  CHECK(sc["statevector"][0][0].get<double>() == Approx(M_SQRT1_2));
  CHECK(sc["statevector"][3][0].get<double>() == Approx(M_SQRT1_2));
  CHECK(sc["language"] == "openqasm2");
  CHECK(r["content"][0]["text"].get<std::string>().find("2 qubits, 2 gates on statevector") != std::string::npos);
  double after = usage(c, s)["balance"].get<double>();
  CHECK(before - after == Approx(8.0));

  // The same seed gives the same counts.
  auto again = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", kBell}, {"shots", 2000}, {"seed", 11}});
  CHECK(again["structuredContent"]["counts"] == sc["counts"]);
  CHECK(s.wait_for_log("\"qubits\":2"));  // the derived facts are in the audit record
}

TEST_CASE("quantum: policy bounds the qubits of the parsed circuit, and the shots") {
  ServerProcess s;
  Client c(s.port());
  // The demo policy allows 20 qubits: a 21-qubit GHZ is refused before anything runs.
  auto ok = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", ghz(20)}, {"shots", 100}, {"seed", 1}});
  REQUIRE(ok["isError"] == false);
  CHECK(ok["structuredContent"]["language"] == "openqasm3");
  for (auto it = ok["structuredContent"]["counts"].begin(); it != ok["structuredContent"]["counts"].end(); ++it)
    CHECK((it.key() == std::string(20, '0') || it.key() == std::string(20, '1')));
  auto big = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", ghz(21)}});
  REQUIRE(big["isError"] == true);
  auto err = big["_meta"]["io.scigate/error"];
  CHECK(err["code"] == "policy_denied");
  CHECK(err["message"].get<std::string>().find("qubits 21") != std::string::npos);
  CHECK(err["hint"].get<std::string>().find("(qubits is not an argument: the tool derives it from the call, here 21)") !=
        std::string::npos);
  auto shots = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", kBell}, {"shots", 200000}});
  REQUIRE(shots["isError"] == true);
  CHECK(shots["_meta"]["io.scigate/error"]["message"].get<std::string>().find("shots") != std::string::npos);
}

TEST_CASE("quantum: errors name the line and column, and memory is bounded before allocation") {
  ServerProcess s("[quantum]\nmax_memory_mb = 1\n");
  Client c(s.port());
  auto bad = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", "OPENQASM 2.0;\nqreg q[1];\nw q;\n"}});
  REQUIRE(bad["isError"] == true);
  auto e = bad["_meta"]["io.scigate/error"];
  CHECK(e["code"] == "invalid_arguments");
  CHECK(e["message"] == "line 3, column 1: unknown gate 'w'");
  CHECK(e["hint"].get<std::string>().find("qelib1.inc") != std::string::npos);
  // 17 qubits: 2 MiB of amplitudes against a 1 MiB limit.
  auto big = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", ghz(17)}});
  REQUIRE(big["isError"] == true);
  CHECK(big["_meta"]["io.scigate/error"]["message"] == "17 qubits need 2 MiB; this project may use 1 MiB");
  auto single = call_tool(c, s.user_key(), "run_quantum_circuit", {{"source", ghz(16)}, {"precision", "single"}, {"shots", 10}});
  CHECK(single["isError"] == false);
}

TEST_CASE("quantum: expectation values of Pauli observables") {
  ServerProcess s;
  Client c(s.port());
  auto r = call_tool(c, s.user_key(), "run_quantum_circuit",
                     {{"source", "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\nh q[0];\ncx q[0],q[1];\n"},
                      {"shots", 0},
                      {"observables", json::array({"ZZ", "XX", "IZ", json::array({{{"pauli", "YY"}, {"coeff", 2}}})})}});
  REQUIRE(r["isError"] == false);
  auto ev = r["structuredContent"]["expectation_values"];
  REQUIRE(ev.size() == 4);
  CHECK(ev[0].get<double>() == Approx(1.0));
  CHECK(ev[1].get<double>() == Approx(1.0));
  CHECK(ev[2].get<double>() == Approx(0.0).margin(1e-12));
  CHECK(ev[3].get<double>() == Approx(-2.0));
  CHECK(r["structuredContent"]["counts"].empty());
}
