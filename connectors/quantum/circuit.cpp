#include "connectors/quantum/circuit.hpp"

#include <array>
#include <cmath>

namespace scigate::quantum {
namespace {

constexpr Complex kI{0, 1};

// The standard library. Controls come first in a gate's argument list (cx c,t; cswap c,a,b).
constexpr std::array kGates = {
    StandardGate{"U", 3, 0, 1},      StandardGate{"u3", 3, 0, 1},     StandardGate{"u", 3, 0, 1},
    StandardGate{"u2", 2, 0, 1},     StandardGate{"u1", 1, 0, 1},     StandardGate{"p", 1, 0, 1},
    StandardGate{"phase", 1, 0, 1},  StandardGate{"u0", 1, 0, 1},     StandardGate{"id", 0, 0, 1},
    StandardGate{"x", 0, 0, 1},      StandardGate{"y", 0, 0, 1},      StandardGate{"z", 0, 0, 1},
    StandardGate{"h", 0, 0, 1},      StandardGate{"s", 0, 0, 1},      StandardGate{"sdg", 0, 0, 1},
    StandardGate{"t", 0, 0, 1},      StandardGate{"tdg", 0, 0, 1},    StandardGate{"sx", 0, 0, 1},
    StandardGate{"sxdg", 0, 0, 1},   StandardGate{"rx", 1, 0, 1},     StandardGate{"ry", 1, 0, 1},
    StandardGate{"rz", 1, 0, 1},     StandardGate{"CX", 0, 1, 1},     StandardGate{"cx", 0, 1, 1},
    StandardGate{"cy", 0, 1, 1},     StandardGate{"cz", 0, 1, 1},     StandardGate{"ch", 0, 1, 1},
    StandardGate{"csx", 0, 1, 1},    StandardGate{"crx", 1, 1, 1},    StandardGate{"cry", 1, 1, 1},
    StandardGate{"crz", 1, 1, 1},    StandardGate{"cp", 1, 1, 1},     StandardGate{"cphase", 1, 1, 1},
    StandardGate{"cu1", 1, 1, 1},    StandardGate{"cu3", 3, 1, 1},    StandardGate{"cu", 4, 1, 1},
    StandardGate{"swap", 0, 0, 2},   StandardGate{"rxx", 1, 0, 2},    StandardGate{"ryy", 1, 0, 2},
    StandardGate{"rzz", 1, 0, 2},    StandardGate{"ecr", 0, 0, 2},    StandardGate{"ccx", 0, 2, 1},    StandardGate{"cswap", 0, 1, 2},
    StandardGate{"c3x", 0, 3, 1},    StandardGate{"c3sqrtx", 0, 3, 1}, StandardGate{"c4x", 0, 4, 1},
};

Matrix u3(double theta, double phi, double lambda) {
  double c = std::cos(theta / 2), s = std::sin(theta / 2);
  return {c, -std::exp(kI * lambda) * s, std::exp(kI * phi) * s, std::exp(kI * (phi + lambda)) * c};
}
Matrix diag2(Complex a, Complex b) { return {a, 0, 0, b}; }

}  // namespace

std::span<const StandardGate> standard_gates() { return kGates; }

const StandardGate* find_standard_gate(std::string_view name) {
  for (const auto& g : kGates)
    if (g.name == name) return &g;
  return nullptr;
}

Matrix standard_gate_matrix(std::string_view n, std::span<const double> p) {
  const double r2 = 1 / std::sqrt(2.0);
  auto arg = [&](std::size_t i) { return i < p.size() ? p[i] : 0.0; };
  if (n == "U" || n == "u3" || n == "u" || n == "cu3") return u3(arg(0), arg(1), arg(2));
  if (n == "cu") {
    Matrix m = u3(arg(0), arg(1), arg(2));
    for (auto& v : m) v *= std::exp(kI * arg(3));
    return m;
  }
  if (n == "u2") return u3(M_PI / 2, arg(0), arg(1));
  if (n == "u1" || n == "p" || n == "phase" || n == "cp" || n == "cphase" || n == "cu1")
    return diag2(1, std::exp(kI * arg(0)));
  if (n == "u0" || n == "id") return diag2(1, 1);
  if (n == "x" || n == "CX" || n == "cx" || n == "ccx" || n == "c3x" || n == "c4x") return {0, 1, 1, 0};
  if (n == "y" || n == "cy") return {0, -kI, kI, 0};
  if (n == "z" || n == "cz") return diag2(1, -1);
  if (n == "h" || n == "ch") return {r2, r2, r2, -r2};
  if (n == "s") return diag2(1, kI);
  if (n == "sdg") return diag2(1, -kI);
  if (n == "t") return diag2(1, std::exp(kI * (M_PI / 4)));
  if (n == "tdg") return diag2(1, std::exp(-kI * (M_PI / 4)));
  if (n == "sx" || n == "csx" || n == "c3sqrtx") return {Complex(0.5, 0.5), Complex(0.5, -0.5), Complex(0.5, -0.5), Complex(0.5, 0.5)};
  if (n == "sxdg") return {Complex(0.5, -0.5), Complex(0.5, 0.5), Complex(0.5, 0.5), Complex(0.5, -0.5)};
  double c = std::cos(arg(0) / 2), s = std::sin(arg(0) / 2);
  if (n == "rx" || n == "crx") return {c, -kI * s, -kI * s, c};
  if (n == "ry" || n == "cry") return {c, -s, s, c};
  if (n == "rz" || n == "crz") return diag2(std::exp(-kI * (arg(0) / 2)), std::exp(kI * (arg(0) / 2)));
  if (n == "swap" || n == "cswap") return {1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1};
  if (n == "rxx") return {c, 0, 0, -kI * s, 0, c, -kI * s, 0, 0, -kI * s, c, 0, -kI * s, 0, 0, c};
  if (n == "ryy") return {c, 0, 0, kI * s, 0, c, -kI * s, 0, 0, -kI * s, c, 0, kI * s, 0, 0, c};
  if (n == "rzz") {
    Complex a = std::exp(-kI * (arg(0) / 2)), b = std::exp(kI * (arg(0) / 2));
    return {a, 0, 0, 0, 0, b, 0, 0, 0, 0, b, 0, 0, 0, 0, a};
  }
  // The echoed cross-resonance gate, native on IBM's Eagle devices: (IX - XY)/sqrt(2), X and Y
  // on the first qubit (bit 0 of the index) as Qiskit defines ECRGate.
  if (n == "ecr")
    return {0, r2, 0, kI * r2, r2, 0, -kI * r2, 0, 0, kI * r2, 0, r2, -kI * r2, 0, r2, 0};
  return {};
}

Matrix full_matrix(const Op& op) {
  std::size_t nc = op.controls.size(), nt = op.targets.size();
  std::size_t dim = std::size_t{1} << (nc + nt), tdim = std::size_t{1} << nt;
  std::size_t cmask = (std::size_t{1} << nc) - 1;
  Matrix m(dim * dim, 0.0);
  for (std::size_t r = 0; r < dim; ++r) {
    for (std::size_t c = 0; c < dim; ++c) {
      bool active = (r & cmask) == cmask && (c & cmask) == cmask;
      if (!active) {
        m[r * dim + c] = r == c ? 1.0 : 0.0;
      } else if ((r & cmask) == (c & cmask)) {
        m[r * dim + c] = op.matrix[(r >> nc) * tdim + (c >> nc)];
      }
    }
  }
  return m;
}

std::size_t Circuit::gate_count() const {
  std::size_t n = 0;
  for (const auto& op : ops) n += op.kind == OpKind::kGate;
  return n;
}

bool Circuit::has_measurements() const {
  for (const auto& op : ops)
    if (op.kind == OpKind::kMeasure) return true;
  return false;
}

bool Circuit::measurements_terminal() const {
  // A measurement commutes with gates on other qubits, so a gate after a measurement only
  // spoils single-pass sampling when it acts on a qubit already measured.
  std::vector<bool> measured(static_cast<std::size_t>(num_qubits), false);
  for (const auto& op : ops) {
    if (op.kind == OpKind::kReset || op.condition) return false;
    if (op.kind == OpKind::kMeasure) {
      measured[op.targets[0]] = true;
      continue;
    }
    for (int q : op.controls)
      if (measured[q]) return false;
    for (int q : op.targets)
      if (measured[q]) return false;
  }
  return true;
}

}  // namespace scigate::quantum
