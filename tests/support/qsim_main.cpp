// scigate_qsim FILE [--shots N] [--seed S] [--statevector] [--single] [--no-fusion]
// Runs one OpenQASM file through scigate's parser and simulator and prints the result as JSON:
// the bridge between the C++ simulator and tests/quantum/cross_check.py's reference.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "connectors/quantum/qasm/qasm_parser.hpp"
#include "connectors/quantum/statevector/simulator.hpp"

using namespace scigate::quantum;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: scigate_qsim FILE [--shots N] [--seed S] [--statevector] [--single] [--no-fusion]\n";
    return 2;
  }
  std::ifstream in(argv[1]);
  std::stringstream ss;
  ss << in.rdbuf();
  SimRequest req;
  SimOptions opt;
  opt.max_memory_bytes = uint64_t{4} << 30;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--shots" && i + 1 < argc) req.shots = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--seed" && i + 1 < argc) req.seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--statevector") req.return_statevector = true;
    else if (a == "--single") opt.precision = Precision::kSingle;
    else if (a == "--no-fusion") opt.fusion = false;
    else {
      std::cerr << "unknown option " << a << "\n";
      return 2;
    }
  }
  auto parsed = parse_qasm(ss.str());
  if (auto* e = std::get_if<scigate::Error>(&parsed)) {
    std::cerr << e->message << "\n";
    return 1;
  }
  auto r = run_statevector(std::get<ParsedCircuit>(parsed).circuit, req, opt);
  if (auto* e = std::get_if<scigate::Error>(&r)) {
    std::cerr << e->message << "\n";
    return 1;
  }
  const auto& res = std::get<SimResult>(r);
  nlohmann::json j = nlohmann::json::object();
  j["counts"] = res.counts;
  nlohmann::json sv = nlohmann::json::array();
  for (const auto& a : res.statevector) sv.push_back(nlohmann::json::array({a.real(), a.imag()}));
  j["statevector"] = std::move(sv);
  j["passes"] = res.passes;
  std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return 0;
}
