#include "tools/builtin.hpp"

#include "tools/audit/query_audit_log.hpp"
#include "tools/data/file_tools.hpp"
#include "tools/data/transfer_tools.hpp"
#include "tools/demo/demo_tools.hpp"
#include "tools/inference/inference_tools.hpp"
#include "tools/jobs/job_tools.hpp"
#include "tools/models/model_tools.hpp"
#include "tools/quantum/run_quantum_circuit.hpp"
#include "tools/usage/usage_tool.hpp"
#include "tools/whoami/whoami.hpp"

namespace scigate::tools {

ToolRegistry make_registry(const Config& config, const ToolServices& services) {
  ToolRegistry r;
  r.add(std::make_unique<WhoamiTool>(config.server_name));
  if (services.ledger) r.add(std::make_unique<UsageTool>(*services.ledger, services.policy));
  if (services.audit_query) r.add(std::make_unique<QueryAuditLogTool>(*services.audit_query));
  if (services.jobs) {
    r.add(std::make_unique<SubmitJobTool>(*services.jobs));
    r.add(std::make_unique<GetJobTool>(*services.jobs));
    r.add(std::make_unique<ListJobsTool>(*services.jobs));
    r.add(std::make_unique<CancelJobTool>(*services.jobs));
    r.add(std::make_unique<ReadJobOutputTool>(*services.jobs));
    r.add(std::make_unique<WaitJobTool>(*services.jobs));
  }
  if (services.models && services.policy) {
    r.add(std::make_unique<QueryModelRegistryTool>(ModelToolDeps{*services.models, *services.policy, services.rates}));
    r.add(std::make_unique<GetModelTool>(
        ModelToolDeps{*services.models, *services.policy, services.rates, services.inference}));
  }
  if (services.inference) {
    r.add(std::make_unique<CallInferenceTool>(InferenceToolDeps{*services.inference, config.inference, services.rates}));
    r.add(std::make_unique<EmbedTool>(
        InferenceToolDeps{*services.inference, config.inference, services.rates,
                          config.data.areas.empty() ? nullptr : services.areas}));
  }
  if (services.areas && !config.data.areas.empty()) {
    r.add(std::make_unique<ListFilesTool>(*services.areas));
    r.add(std::make_unique<StatFileTool>(*services.areas));
    r.add(std::make_unique<ReadFileTool>(*services.areas));
  }
  if (services.transfers && !config.data.areas.empty()) {
    r.add(std::make_unique<StageDataTool>(*services.transfers));
    r.add(std::make_unique<GetTransferTool>(*services.transfers));
    r.add(std::make_unique<ListTransfersTool>(*services.transfers));
    r.add(std::make_unique<CancelTransferTool>(*services.transfers));
  }
  if (config.quantum.enabled) r.add(std::make_unique<RunQuantumCircuitTool>(config, services.jobs));
  if (config.demo_tools) {
    r.add(std::make_unique<EchoTool>());
    r.add(std::make_unique<SleepTool>());
  }
  return r;
}

}  // namespace scigate::tools
