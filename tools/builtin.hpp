#pragma once
#include "policies/ledger.hpp"
#include "server/config/config.hpp"
#include "tools/registry.hpp"

namespace scigate::audit {
class AuditQueryService;
}

namespace scigate::jobs {
class JobService;
}

namespace scigate::registry {
class ModelRegistry;
}

namespace scigate::storage {
class Areas;
class TransferService;
}

namespace scigate::inference {
class InferenceService;
}

namespace scigate::credits {
class RateTable;
}

namespace scigate {
class PolicyEngine;
}

namespace scigate::tools {

// What tools need from the rest of the server, owned by the composition root (App) and alive
// as long as the registry. A null member leaves out the tools that need it.
struct ToolServices {
  Ledger* ledger = nullptr;  // get_usage
  audit::AuditQueryService* audit_query = nullptr;  // query_audit_log
  jobs::JobService* jobs = nullptr;  // submit_job, get_job, list_jobs, cancel_job, read_job_output, wait_job
  // query_model_registry, get_model: the catalog, and the policy that decides which models a
  // project sees (App passes its engine before constructing it; the tools use it only in calls).
  registry::ModelRegistry* models = nullptr;
  const PolicyEngine* policy = nullptr;
  const credits::RateTable* rates = nullptr;  // prices get_model shows; null without a credit ledger
  storage::Areas* areas = nullptr;  // list_files, stat_file, read_file (when areas are configured)
  storage::TransferService* transfers = nullptr;  // stage_data, get_transfer, list_transfers, cancel_transfer
  inference::InferenceService* inference = nullptr;  // call_inference, embed ([inference] backends)
};

// The explicit list of tools this build offers. Adding a tool is one line in builtin.cpp.
ToolRegistry make_registry(const Config& config, const ToolServices& services = {});
}  // namespace scigate::tools
