// The embedded simulator against the machine's memory bandwidth, measured in the same run.
//
//   scigate_quantum_bench [--qubits 26] [--layered-qubits 25] [--layers 13] [--repeat 3]
//                         [--skip-unfused] [--json FILE]
//
// 1. Bandwidth: memcpy between two buffers the size of the state, best of --repeat; a copy
//    reads and writes every byte, so bandwidth = 2 x size / time.
// 2. Single-qubit gates on a --qubits complex128 state, one thread, each target in turn: every
//    gate reads and writes the state once, so its lower bound is 2 x 16 x 2^n B / bandwidth.
//    Reported as the fraction of that bound reached (AVX2 and portable kernels).
// 3. The layered circuit of the Qulacs benchmark (rx, rz on every qubit, then a ring of CNOTs;
//    --layers of these plus a closing rotation layer: 1,025 gates at 25 qubits), one thread,
//    fusion off and on: time and passes over the state.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench/bench_options.hpp"
#include "connectors/quantum/qasm/qasm_parser.hpp"
#include "connectors/quantum/statevector/kernels.hpp"
#include "connectors/quantum/statevector/simulator.hpp"

using namespace scigate::quantum;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Free {
  void operator()(void* p) const { std::free(p); }
};

double measure_bandwidth(std::size_t bytes, int repeat) {
  std::unique_ptr<char, Free> a(static_cast<char*>(std::aligned_alloc(64, bytes)));
  std::unique_ptr<char, Free> b(static_cast<char*>(std::aligned_alloc(64, bytes)));
  std::memset(a.get(), 1, bytes);
  std::memset(b.get(), 2, bytes);
  double best = 1e30;
  for (int i = 0; i < repeat; ++i) {
    auto t = Clock::now();
    std::memcpy(b.get(), a.get(), bytes);
    best = std::min(best, seconds_since(t));
    std::swap(a, b);
  }
  return 2.0 * double(bytes) / best;
}

json single_qubit_gates(int n, double bandwidth, bool simd) {
  uint64_t dim = uint64_t{1} << n;
  std::unique_ptr<std::complex<double>, Free> state(
      static_cast<std::complex<double>*>(std::aligned_alloc(64, dim * sizeof(std::complex<double>))));
  std::memset(static_cast<void*>(state.get()), 0, dim * sizeof(std::complex<double>));
  state.get()[0] = 1;
  double c = std::cos(0.3), s = std::sin(0.3);
  Matrix u3 = {c, -std::exp(Complex(0, 0.7)) * s, std::exp(Complex(0, 0.5)) * s, std::exp(Complex(0, 1.2)) * c};
  double total = 0, worst = 0, best = 1e30;
  json per_target = json::array();
  for (int t = 0; t < n; ++t) {
    auto g = prepare_gate<double>(n, {}, {t}, u3);
    auto start = Clock::now();
    apply_gate_range<double>(state.get(), g, 0, g.iterations, simd);
    double dt = seconds_since(start);
    total += dt;
    worst = std::max(worst, dt);
    best = std::min(best, dt);
    per_target.push_back(dt);
  }
  double bound = 2.0 * 16.0 * double(dim) / bandwidth;
  double mean = total / n;
  json j;
  j["kernel"] = simd ? "avx2" : "portable";
  j["qubits"] = n;
  j["gates"] = n;
  j["mean_s"] = mean;
  j["best_s"] = best;
  j["worst_s"] = worst;
  j["bound_s"] = bound;
  j["fraction_of_bound"] = bound / mean;
  j["per_target_s"] = per_target;
  return j;
}

std::string layered_circuit(int n, int layers, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> angle(0, 2 * M_PI);
  std::string s = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[" + std::to_string(n) + "];\n";
  auto rot = [&] {
    for (int i = 0; i < n; ++i) {
      s += "rx(" + std::to_string(angle(rng)) + ") q[" + std::to_string(i) + "];\n";
      s += "rz(" + std::to_string(angle(rng)) + ") q[" + std::to_string(i) + "];\n";
    }
  };
  for (int l = 0; l < layers; ++l) {
    rot();
    for (int i = 0; i < n; ++i) s += "cx q[" + std::to_string(i) + "],q[" + std::to_string((i + 1) % n) + "];\n";
  }
  rot();
  return s;
}

json run_layered(const Circuit& c, bool fusion, int max_fused) {
  SimRequest req;
  req.shots = 0;
  SimOptions opt;
  opt.threads = 1;
  opt.fusion = fusion;
  opt.max_fused_qubits = max_fused;
  opt.max_memory_bytes = uint64_t{64} << 30;
  auto t = Clock::now();
  auto r = run_statevector(c, req, opt);
  double dt = seconds_since(t);
  json j;
  j["fusion"] = fusion;
  if (fusion) j["max_fused_qubits"] = max_fused;
  if (auto* e = std::get_if<scigate::Error>(&r)) {
    j["error"] = e->message;
    return j;
  }
  const auto& res = std::get<SimResult>(r);
  j["seconds"] = dt;
  j["passes_over_state"] = res.passes;
  j["operations"] = res.ops_applied;
  j["simd"] = res.simd;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  int qubits = 26, layered_qubits = 25, layers = 13, repeat = 3;
  bool skip_unfused = false;
  std::string json_path;
  scigate::bench::parse_options(
      argc, argv, 1,
      "scigate_quantum_bench [--qubits 26] [--layered-qubits 25] [--layers 13] [--repeat 3] [--skip-unfused] "
      "[--json FILE]",
      [&](const std::string& a, const std::string& v) {
        if (a == "--qubits") qubits = std::stoi(v);
        else if (a == "--layered-qubits") layered_qubits = std::stoi(v);
        else if (a == "--layers") layers = std::stoi(v);
        else if (a == "--repeat") repeat = std::stoi(v);
        else if (a == "--skip-unfused") skip_unfused = true;
        else if (a == "--json") json_path = v;
        else return false;
        return true;
      },
      {"--skip-unfused"});
  json out;
  out["cpus"] = std::thread::hardware_concurrency();
  out["simd_available"] = simd_available();

  std::size_t state_bytes = (std::size_t{1} << qubits) * 16;
  double bw = measure_bandwidth(state_bytes, repeat);
  out["bandwidth_bytes_per_s"] = bw;
  out["bandwidth_buffer_bytes"] = state_bytes;
  std::printf("memory bandwidth (memcpy of %s, best of %d): %.2f GB/s\n", format_bytes(state_bytes).c_str(), repeat, bw / 1e9);

  json gates = json::array();
  for (bool simd : {true, false}) {
    if (simd && !simd_available()) continue;
    json g = single_qubit_gates(qubits, bw, simd);
    std::printf("%d single-qubit gates on %d qubits, 1 thread, %s: mean %.3f s per gate, bound %.3f s -> %.0f%% of the bound\n",
                qubits, qubits, g["kernel"].get<std::string>().c_str(), g["mean_s"].get<double>(), g["bound_s"].get<double>(),
                100 * g["fraction_of_bound"].get<double>());
    gates.push_back(g);
  }
  out["single_qubit_gates"] = gates;

  auto parsed = parse_qasm(layered_circuit(layered_qubits, layers, 2026));
  const Circuit& c = std::get<ParsedCircuit>(parsed).circuit;
  out["layered"]["qubits"] = layered_qubits;
  out["layered"]["gates"] = c.gate_count();
  out["layered"]["layers"] = layers;
  json runs = json::array();
  std::vector<std::pair<bool, int>> configs = {{true, 2}, {true, 3}, {true, 4}};
  if (!skip_unfused) configs.insert(configs.begin(), {false, 0});
  for (auto [fusion, k] : configs) {
    json r = run_layered(c, fusion, k);
    if (r.contains("error")) {
      std::printf("layered: %s\n", r["error"].get<std::string>().c_str());
    } else {
      std::printf("layered %d qubits, %zu gates, 1 thread, fusion %s: %.2f s, %llu passes over the state\n", layered_qubits,
                  c.gate_count(), fusion ? ("up to " + std::to_string(k) + " qubits").c_str() : "off",
                  r["seconds"].get<double>(), (unsigned long long)r["passes_over_state"].get<uint64_t>());
    }
    runs.push_back(r);
  }
  out["layered"]["runs"] = runs;
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
