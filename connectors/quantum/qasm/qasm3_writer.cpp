#include "connectors/quantum/qasm/qasm3_writer.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>

namespace scigate::quantum {

namespace {

std::string number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::string qubit(int q) { return "q[" + std::to_string(q) + "]"; }

// The register and index of classical bit `b`.
std::pair<const Register*, int> clbit(const Circuit& c, int b) {
  for (const auto& r : c.cregs)
    if (b >= r.offset && b < r.offset + r.size) return {&r, b - r.offset};
  return {nullptr, 0};
}

std::string bit(const Circuit& c, int b) {
  auto [r, i] = clbit(c, b);
  return r ? r->name + "[" + std::to_string(i) + "]" : "";
}

std::variant<std::string, Error> condition(const Circuit& c, const Condition& cond) {
  if (cond.clbits.size() == 1) return "if (" + bit(c, cond.clbits[0]) + " == " + std::to_string(cond.value & 1) + ") ";
  auto [r, first] = clbit(c, cond.clbits.empty() ? -1 : cond.clbits[0]);
  bool whole = r && first == 0 && static_cast<int>(cond.clbits.size()) == r->size;
  for (std::size_t i = 0; whole && i < cond.clbits.size(); ++i) whole = cond.clbits[i] == r->offset + static_cast<int>(i);
  if (!whole) return Error::invalid_arguments("a condition on bits of several registers cannot be sent to a device");
  return "if (" + r->name + " == " + std::to_string(cond.value) + ") ";
}

// The device qubit of each of the circuit's qubits. A transpiled circuit names physical qubits
// ($5 is the device's qubit 5: the parser gives each one used a register of its own, numbered
// for the simulator in order of first use); declared registers are laid out as declared (q[i]
// is qubit i). Both in one circuit cannot be placed.
std::variant<std::vector<int>, Error> device_layout(const Circuit& c) {
  constexpr int64_t kMaxPhysical = 1 << 20;
  std::vector<int> where(static_cast<std::size_t>(c.num_qubits), 0);
  bool physical = false, declared = false;
  for (const auto& r : c.qregs) {
    if (!r.name.empty() && r.name[0] == '$') {
      physical = true;
      int64_t n = -1;
      auto [end, ec] = std::from_chars(r.name.data() + 1, r.name.data() + r.name.size(), n);
      if (ec != std::errc() || end != r.name.data() + r.name.size() || n < 0 || n >= kMaxPhysical)
        return Error::invalid_arguments("physical qubit " + r.name.substr(0, 24) + " is beyond any device",
                                        "use the device's qubit numbers ($0 to one less than its qubit count)");
      where[static_cast<std::size_t>(r.offset)] = static_cast<int>(n);
    } else {
      declared = true;
      for (int i = 0; i < r.size; ++i) where[static_cast<std::size_t>(r.offset + i)] = r.offset + i;
    }
  }
  if (physical && declared)
    return Error::invalid_arguments("the circuit uses both physical qubits ($n) and declared qubits: a device cannot tell "
                                    "where the declared ones are",
                                    "use physical qubits only ($0, $1, ..., as a circuit transpiled for the device does), "
                                    "or declared qubits only");
  return where;
}

}  // namespace

std::variant<std::string, Error> write_openqasm3(const Circuit& c) {
  auto layout = device_layout(c);
  if (auto* e = std::get_if<Error>(&layout)) return *e;
  const std::vector<int>& at = std::get<std::vector<int>>(layout);
  auto qubit = [&at](int q) { return "q[" + std::to_string(at.at(static_cast<std::size_t>(q))) + "]"; };
  std::string out = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\n";
  if (!at.empty()) out += "qubit[" + std::to_string(*std::max_element(at.begin(), at.end()) + 1) + "] q;\n";
  for (const auto& r : c.cregs) out += "bit[" + std::to_string(r.size) + "] " + r.name + ";\n";
  for (const auto& op : c.ops) {
    std::string line;
    switch (op.kind) {
      case OpKind::kGlobalPhase:
        continue;
      case OpKind::kMeasure:
        line = bit(c, op.clbit) + " = measure " + qubit(op.targets.at(0)) + ";";
        break;
      case OpKind::kReset:
        line = "reset " + qubit(op.targets.at(0)) + ";";
        break;
      case OpKind::kGate: {
        line = op.name == "CX" ? "cx" : op.name == "U" ? "U" : op.name;
        if (!op.params.empty()) {
          line += "(";
          for (std::size_t i = 0; i < op.params.size(); ++i) line += (i ? ", " : "") + number(op.params[i]);
          line += ")";
        }
        bool first = true;
        for (const auto* list : {&op.controls, &op.targets})
          for (int q : *list) {
            line += (first ? " " : ", ") + qubit(q);
            first = false;
          }
        line += ";";
        break;
      }
    }
    if (op.condition) {
      auto cond = condition(c, *op.condition);
      if (auto* e = std::get_if<Error>(&cond)) return *e;
      line = std::get<std::string>(cond) + "{ " + line + " }";
    }
    out += line + "\n";
  }
  return out;
}

std::optional<Error> check_native(const Circuit& c, const DeviceTarget& t) {
  auto list = [](const std::set<std::string>& s) {
    std::string out;
    for (const auto& g : s) out += (out.empty() ? "" : ", ") + g;
    return out;
  };
  if (c.num_qubits > t.num_qubits)
    return Error::invalid_arguments("the circuit uses " + std::to_string(c.num_qubits) + " qubits; " + t.name +
                                        " has " + std::to_string(t.num_qubits),
                                    "use at most " + std::to_string(t.num_qubits) + " qubits");
  for (const auto& op : c.ops) {
    if (op.condition && !t.conditionals)
      return Error::invalid_arguments(t.name + " does not run classically conditioned operations (if)",
                                      "measure at the end of the circuit instead");
    if (op.kind != OpKind::kGate) continue;
    std::string name = op.name == "CX" ? "cx" : op.name;
    std::vector<int> qs(op.controls);
    qs.insert(qs.end(), op.targets.begin(), op.targets.end());
    std::string where = name;
    for (std::size_t i = 0; i < qs.size(); ++i) where += (i ? ", " : " ") + qubit(qs[i]);
    if (!t.basis.count(name))
      return Error::invalid_arguments("'" + where + "' is not a native instruction of " + t.name + " (it runs " +
                                          list(t.basis) + ", measure, reset)",
                                      "transpile the circuit for " + t.name +
                                          " first (e.g. qiskit.transpile with this backend) or run it on "
                                          "the statevector simulator");
    if (qs.size() > 2)
      return Error::invalid_arguments("'" + where + "' acts on " + std::to_string(qs.size()) + " qubits; " + t.name +
                                      " runs one- and two-qubit gates only", "transpile the circuit for " + t.name);
    if (qs.size() == 2 && !t.coupling.count({qs[0], qs[1]}))
      return Error::invalid_arguments("'" + where + "': qubits " + std::to_string(qs[0]) + " and " +
                                          std::to_string(qs[1]) + " are not coupled in this direction on " + t.name,
                                      "route the circuit onto the device's coupling map (transpile for " + t.name + ")");
  }
  return std::nullopt;
}

}  // namespace scigate::quantum
