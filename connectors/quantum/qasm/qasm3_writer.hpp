#pragma once
// Writing a flat circuit back out as OpenQASM 3, the form remote quantum services take, and
// checking it against a device's native instructions before it is sent.
//
// The text is the circuit the simulator would run, not the caller's source: user `gate`
// definitions are already inlined, so what the device receives is exactly what was checked.
// One qubit register `q` spans all qubits (q[i] is the device's physical qubit i: a circuit for
// a device is laid out already, as IBM requires "ISA" circuits): physical qubits `$n` are
// written as q[n], declared registers as declared, and a circuit with both is refused (the
// parser numbers `$n` by first use, which only the simulator may do); classical registers keep their
// names and sizes; conditions on a whole register or a single bit become `if`; barriers and
// global phases, which change no sampled outcome, are left out.
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "connectors/quantum/circuit.hpp"
#include "server/common/error.hpp"

namespace scigate::quantum {

std::variant<std::string, Error> write_openqasm3(const Circuit& circuit);

// What a device runs natively, from its configuration (n_qubits, basis_gates, coupling_map).
struct DeviceTarget {
  std::string name;
  int num_qubits = 0;
  std::set<std::string> basis;              // gate names ("ecr", "rz", "sx", "x", "id")
  std::set<std::pair<int, int>> coupling;   // directed pairs a two-qubit gate may act on
  bool conditionals = true;                 // `if` on measured bits (dynamic circuits)
};

// kInvalidArguments naming the first instruction the device cannot run, and how to fix it.
std::optional<Error> check_native(const Circuit& circuit, const DeviceTarget& target);

}  // namespace scigate::quantum
