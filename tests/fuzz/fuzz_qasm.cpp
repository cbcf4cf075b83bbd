// libFuzzer target over the OpenQASM front end, and the simulator on whatever parses: bytes ->
// parse_qasm (2, 3 and auto-detected) -> run_statevector on small circuits. Any crash, sanitizer
// report or uncaught exception is a bug, and so is an error that does not say where (every
// parse error but the size limit names a line and column) or counts that do not add up to the
// shots.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "connectors/quantum/qasm/qasm_parser.hpp"
#include "connectors/quantum/statevector/simulator.hpp"

using namespace scigate;
using namespace scigate::quantum;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view src(reinterpret_cast<const char*>(data), size);
  QasmLimits limits;
  limits.max_ops = 20000;  // keeps each input fast; the limit path is exercised all the same
  for (QasmVersion v : {QasmVersion::kAuto, QasmVersion::kV2, QasmVersion::kV3}) {
    auto r = parse_qasm(src, v, limits);
    if (auto* e = std::get_if<Error>(&r)) {
      if (e->code != ErrorCode::kInvalidArguments || e->message.rfind("line ", 0) != 0) std::abort();
      continue;
    }
    const Circuit& c = std::get<ParsedCircuit>(r).circuit;
    for (const auto& op : c.ops) {
      for (int q : op.targets)
        if (q < 0 || q >= c.num_qubits) std::abort();
      for (int q : op.controls)
        if (q < 0 || q >= c.num_qubits) std::abort();
      if (op.kind == OpKind::kMeasure && (op.clbit < 0 || op.clbit >= c.num_clbits)) std::abort();
    }
    if (v != QasmVersion::kAuto || c.num_qubits > 8 || c.ops.size() > 2000) continue;
    SimRequest req;
    req.shots = 16;
    req.seed = size;
    SimOptions opt;
    opt.threads = 1;
    auto s = run_statevector(c, req, opt);
    if (auto* res = std::get_if<SimResult>(&s)) {
      uint64_t total = 0;
      for (const auto& [k, n] : res->counts) total += n;
      if (c.has_measurements() && total != req.shots) std::abort();
    }
  }
  return 0;
}
