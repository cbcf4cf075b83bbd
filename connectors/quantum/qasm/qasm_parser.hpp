#pragma once
// OpenQASM 2.0 (in full) and the OpenQASM 3.0 subset real services exchange, parsed into the
// flat Circuit. Errors are caller-facing (kInvalidArguments) and name a line and column:
// "line 4, column 1: expected ';' ...". Limits keep hostile sources from costing more than a
// bounded amount of time and memory: gate definitions can nest (never recurse: a body may only
// use gates defined before it), so their expansion is bounded in depth and in total operations.
#include <cstddef>
#include <string_view>
#include <variant>

#include "connectors/quantum/circuit.hpp"
#include "server/common/error.hpp"

namespace scigate::quantum {

enum class QasmVersion { kAuto, kV2, kV3 };

struct QasmLimits {
  std::size_t max_source_bytes = 1 << 20;
  int max_qubits = 1024;        // declared; what can be simulated is bounded by memory
  int max_clbits = 4096;
  std::size_t max_ops = 250'000;  // after expanding gate definitions (an op is ~250 bytes)
  int max_gate_depth = 64;      // nesting of gate definitions
  int max_expression_depth = 200;
  // Gate calls visited while expanding definitions, whether they emit an op or not: ten nested
  // definitions of ten calls to an empty gate emit nothing but take 10^10 steps.
  std::size_t max_expansion_steps = 2'000'000;
  // Height of one expression's tree: "0+0+...+0" nests no parentheses, but is evaluated
  // recursively (200,000 terms overflowed the stack).
  int max_expression_height = 1000;
};

struct ParsedCircuit {
  Circuit circuit;
  QasmVersion version = QasmVersion::kV2;
};

std::variant<ParsedCircuit, Error> parse_qasm(std::string_view source, QasmVersion version = QasmVersion::kAuto,
                                              const QasmLimits& limits = {});

// The embedded headers: qelib1.inc as published with the OpenQASM 2 specification, and the
// definitions of the extended gates (rccx, rc3x) that are not simulated natively.
std::string_view qelib1_source();
std::string_view qelib1_extension_source();

}  // namespace scigate::quantum
