#pragma once
// The flat circuit the front ends produce and the backends run: gate applications already
// expanded down to the standard gates (user `gate` definitions are inlined by the parser),
// each with its matrix, plus measurement, reset and classical conditions. Backends never see
// source text, so a new front end or a new backend is independent of the other.
//
// Bit order follows Qiskit: qubit 0 is bit 0 of a basis-state index, and a gate's matrix index
// has bit j for the gate's j-th target (controls are kept apart, see Op).
#include <complex>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace scigate::quantum {

using Complex = std::complex<double>;

// A 2^k x 2^k matrix, row-major, k = number of targets.
using Matrix = std::vector<Complex>;

enum class OpKind { kGate, kMeasure, kReset, kGlobalPhase };

// `if (creg == value)`: the bits of the register, bit 0 first, compared with `value`.
struct Condition {
  std::vector<int> clbits;
  uint64_t value = 0;
};

struct Op {
  OpKind kind = OpKind::kGate;
  std::string name;           // the standard gate's name ("cx"), for gate counts and errors
  std::vector<int> controls;  // all must be |1> for the matrix to act
  std::vector<int> targets;   // the matrix acts on these (bit j of its index = targets[j])
  Matrix matrix;              // for kGate; 1x1 phase for kGlobalPhase
  std::vector<double> params; // the standard gate's parameters (to write the circuit out again)
  int clbit = -1;             // for kMeasure: where the outcome goes
  std::optional<Condition> condition;

  std::size_t num_qubits() const { return controls.size() + targets.size(); }
};

struct Register {
  std::string name;
  int offset = 0;  // index of its bit 0 in the circuit's qubits or clbits
  int size = 0;
};

struct Circuit {
  int num_qubits = 0;
  int num_clbits = 0;
  std::vector<Register> qregs, cregs;  // in declaration order
  std::vector<Op> ops;

  // Gate applications (not measure/reset/phase), the quantity credits are charged on.
  std::size_t gate_count() const;
  // Whether every measurement is terminal: no gate acts on a qubit after it was measured and no
  // reset or condition appears, so shots can be sampled from one final state.
  bool measurements_terminal() const;
  bool has_measurements() const;
};

// What the standard library knows about a gate: its arity and its matrix.
struct StandardGate {
  std::string_view name;
  int num_params = 0;
  int num_controls = 0;
  int num_targets = 1;
};

// The gates of qelib1.inc (the OpenQASM 2 header Qiskit ships, with its extended gates) and of
// OpenQASM 3's stdgates.inc. Null when `name` is not one.
const StandardGate* find_standard_gate(std::string_view name);
std::span<const StandardGate> standard_gates();
// The matrix on the gate's targets for these parameters (size must be num_params).
Matrix standard_gate_matrix(std::string_view name, std::span<const double> params);

// The full 2^q x 2^q matrix of a gate op on its own qubits, ordered controls first then
// targets (bit j of the index = j-th of that list). For tests and for fusion.
Matrix full_matrix(const Op& op);

}  // namespace scigate::quantum
