#pragma once
// The embedded state-vector simulator. run() is blocking and CPU-bound: call it from a worker
// pool, never from an I/O thread. It is safe to run several simulations concurrently (each owns
// its state and threads). Cancellation is polled between gates and between shots.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "connectors/quantum/circuit.hpp"
#include "server/common/error.hpp"

namespace scigate::quantum {

enum class Precision { kDouble, kSingle };

// A Hermitian Pauli-sum observable: sum of coeff * P, P a string over I X Y Z whose rightmost
// character acts on qubit 0 (Qiskit's order).
struct Observable {
  std::vector<std::pair<std::string, double>> terms;
};

struct SimOptions {
  Precision precision = Precision::kDouble;
  bool fusion = true;
  int max_fused_qubits = 4;          // 2..5
  int threads = 0;                   // 0: the machine's cores
  int parallel_min_qubits = 16;      // below this, one thread (splitting costs more than it saves)
  bool simd = true;                  // use AVX2/FMA when the CPU has it
  uint64_t max_memory_bytes = uint64_t{1} << 30;
  int max_statevector_qubits = 20;   // return_statevector beyond this is refused (2^20 amplitudes of JSON)
  // Polled between gates and between shots; true stops the run with kCancelled.
  std::function<bool()> cancelled;
  // Called from the simulating thread with the fraction done, at most about every 1 %.
  std::function<void(double)> progress;
};

struct SimRequest {
  uint64_t shots = 1024;
  uint64_t seed = 0;
  bool return_statevector = false;
  std::vector<Observable> observables;
};

struct SimResult {
  std::map<std::string, uint64_t> counts;  // keys as Qiskit: registers MSB first, last register leftmost
  std::vector<std::complex<double>> statevector;
  std::vector<double> expectation_values;
  uint64_t passes = 0;          // full passes over the state (the bench's cost measure)
  std::size_t ops_applied = 0;  // after fusion
  bool sampled_once = false;    // shots came from one final state (terminal measurements)
  uint64_t memory_bytes = 0;
  int threads = 1;
  bool simd = false;
};

// "1.0 GiB", "512 MiB"
std::string format_bytes(uint64_t bytes);
// What simulating n qubits needs, before anything is allocated (state plus a per-shot copy when
// the circuit measures mid-way and runs more than one shot).
uint64_t required_memory(const Circuit& c, const SimRequest& r, Precision p);

std::variant<SimResult, Error> run_statevector(const Circuit& circuit, const SimRequest& request, const SimOptions& options);

// Fuses runs of gates into dense blocks of at most `max_qubits` (exposed for tests and the
// bench). Measurements, resets and conditioned gates are never fused and keep their order.
std::vector<Op> fuse_gates(const std::vector<Op>& ops, int max_qubits);

}  // namespace scigate::quantum
