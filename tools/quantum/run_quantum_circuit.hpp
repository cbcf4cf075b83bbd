#pragma once
// run_quantum_circuit: an OpenQASM 2/3 circuit on one of the site's quantum backends (for now
// the embedded state-vector simulator). The circuit is parsed before policy is asked, so rules
// and credit holds see its real size: derive_facts() reports qubits, gates and clbits.
#include <boost/asio/thread_pool.hpp>

#include <map>
#include <memory>
#include <string>

#include "connectors/quantum/backend.hpp"
#include "connectors/quantum/qasm/qasm_parser.hpp"
#include "server/config/config.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

class RunQuantumCircuitTool final : public Tool {
 public:
  explicit RunQuantumCircuitTool(const QuantumConfig& config);
  ~RunQuantumCircuitTool() override;

  const ToolDescriptor& descriptor() const override { return descriptor_; }
  std::variant<json, Error> derive_facts(const json& args) const override;
  Usage worst_case_usage(const json& args) const override;
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

  // The credit resources this tool reports (rates are set per site in [credits.rates]).
  static constexpr const char* kQubitGateResource = "quantum_sim_qubit_gate";
  static constexpr const char* kAmplitudeGateResource = "quantum_sim_mamp_gate";

 private:
  std::variant<quantum::ParsedCircuit, Error> parse(const json& args) const;

  QuantumConfig config_;
  ToolDescriptor descriptor_;
  quantum::QasmLimits limits_;
  std::map<std::string, std::unique_ptr<quantum::QuantumBackend>> backends_;
  // Simulations run here, never on the I/O threads; `concurrency` of them at once.
  boost::asio::thread_pool pool_;
};

}  // namespace scigate::tools
