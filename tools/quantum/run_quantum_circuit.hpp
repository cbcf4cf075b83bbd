#pragma once
// run_quantum_circuit: an OpenQASM 2/3 circuit on one of the site's quantum backends: the
// embedded state-vector simulator (answered in the call), or a remote device, a [[sites]] entry
// with scheduler = "ibm-runtime" (a job of the job ledger: the call returns its job id, or, run
// as a task, waits for the device's counts). The circuit is parsed before policy is asked, so
// rules and credit holds see its real size: derive_facts() reports qubits, gates and clbits.
#include <boost/asio/thread_pool.hpp>

#include <map>
#include <memory>
#include <string>

#include "connectors/quantum/backend.hpp"
#include "connectors/quantum/qasm/qasm_parser.hpp"
#include "connectors/scheduler/job_ledger.hpp"
#include "server/config/config.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

class RunQuantumCircuitTool final : public Tool {
 public:
  // `jobs` (may be null) runs circuits on the remote devices among config.sites.
  RunQuantumCircuitTool(const Config& config, jobs::JobService* jobs);
  ~RunQuantumCircuitTool() override;

  const ToolDescriptor& descriptor() const override { return descriptor_; }
  std::variant<json, Error> derive_facts(const json& args) const override;
  Usage worst_case_usage(const json& args) const override;
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

  // The credit resources this tool reports (rates are set per site in [credits.rates]).
  static constexpr const char* kQubitGateResource = "quantum_sim_qubit_gate";
  static constexpr const char* kAmplitudeGateResource = "quantum_sim_mamp_gate";
  // A device's shots: "quantum_shot:<site id>".
  static std::string shot_resource(const std::string& site) { return "quantum_shot:" + site; }

 private:
  std::variant<quantum::ParsedCircuit, Error> parse(const json& args) const;
  boost::asio::awaitable<ToolResult> call_remote(std::shared_ptr<quantum::ParsedCircuit> pc, const json& args,
                                                 CallContext& ctx, std::string site);

  QuantumConfig config_;
  ToolDescriptor descriptor_;
  quantum::QasmLimits limits_;
  std::map<std::string, std::unique_ptr<quantum::QuantumBackend>> backends_;
  jobs::JobService* jobs_ = nullptr;
  std::vector<std::string> remote_;  // site ids of the remote devices
  // Simulations run here, never on the I/O threads; `concurrency` of them at once.
  boost::asio::thread_pool pool_;
};

}  // namespace scigate::tools
