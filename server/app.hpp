#pragma once
// The composition root: builds every component from the config and wires them together.
// Nothing else constructs components, so swapping an implementation (a policy engine, a ledger)
// is a change here only.
#include <boost/asio/io_context.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "connectors/inference/inference_service.hpp"
#include "connectors/registry/model_registry.hpp"
#include "connectors/storage/areas.hpp"
#include "connectors/storage/transfer_service.hpp"
#include "connectors/scheduler/job_ledger.hpp"
#include "policies/audit_query.hpp"
#include "policies/audit_store.hpp"
#include "policies/credit_ledger.hpp"
#include "policies/ledger.hpp"
#include "policies/project_policies.hpp"
#include "server/auth/api_keys.hpp"
#include "server/auth/authenticator.hpp"
#include "server/config/config.hpp"
#include "server/observability/metrics.hpp"
#include "server/openai/openai_api.hpp"
#include "server/pipeline/tool_call_pipeline.hpp"
#include "server/protocol/mcp_dispatcher.hpp"
#include "server/state/database.hpp"
#include "server/state/wal_checkpointer.hpp"
#include "server/state/writer.hpp"
#include "tools/registry.hpp"

namespace scigate {

// The credit ledger's settings from the config: accounts and credit lines per project, rates.
CreditLedgerOptions credit_ledger_options(const Config& config);

class App {
 public:
  explicit App(Config config);
  ~App();

  // What a server does once before it serves (serve_* call it; benchmarks that drive the
  // pipeline in-process too): owns the credit ledger (alone, or shared with another server on
  // the same database), voids holds left by a previous process, recovers tasks, and readies
  // the audit checkpoints.
  void prepare_to_serve();
  // Serves Streamable HTTP until SIGTERM/SIGINT; returns the exit code. `port_file`, when set,
  // receives the bound port once listening (useful with port 0).
  int serve_http(const std::string& host, uint16_t port, const std::string& port_file);
  // Serves stdio until EOF on stdin; returns the exit code.
  int serve_stdio();

  auth::ApiKeyStore& keys() { return keys_; }
  // For in-process benchmarks (bench/governance): the governed pipeline and its tools.
  ToolCallPipeline& pipeline() { return pipeline_; }
  ToolRegistry& registry() { return registry_; }
  state::Writer::Stats state_stats() const { return writer_.stats(); }  // also on /metrics
  Ledger& ledger() { return *ledger_; }
  const Config& config() const { return config_; }

 private:
  int thread_count() const;
  // Fails running tasks and stops their calls; `done` runs on `io` once they have ended.
  void stop_tasks(boost::asio::io_context& io, std::function<void()> done);
  void reload_policies();
  void watch_policies(boost::asio::io_context& io);
  void drain_writers();  // after the I/O threads stopped, before their io_context goes

  Config config_;
  state::Database db_;
  // Before the writers (ledger, audit) whose connections leave checkpoints to it.
  state::WalCheckpointer checkpointer_;
  auth::ApiKeyStore keys_;
  auth::Authenticator authenticator_;  // API keys and, with [oidc], bearer JWTs
  // The one writer of the credit ledger and the audit log (a call's settle and audit record in
  // one transaction); after keys_, whose construction migrates the schema, and before both.
  state::Writer writer_;
  // SqliteLedger when [credits] enabled (the default), else UnmeteredLedger. Before registry_,
  // whose get_usage tool uses it; after keys_, whose construction migrates the schema.
  SqliteLedger* sqlite_ledger_ = nullptr;  // set by ledger_'s initialiser, so declared first
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<audit::AuditQueryService> audit_query_;  // before registry_: query_audit_log uses it
  std::unique_ptr<jobs::JobService> jobs_;  // before registry_: the job tools use it; schedulers start in serve_*
  std::unique_ptr<registry::ModelRegistry> models_;  // before registry_: the model tools use it
  std::unique_ptr<storage::Areas> areas_;  // before registry_: the file tools use it
  std::unique_ptr<storage::TransferService> transfers_;  // before registry_: stage_data uses it; starts in serve_*
  // With [[inference.backends]]: before registry_ (call_inference, embed); polls in serve_*.
  std::unique_ptr<inference::InferenceService> inference_;
  ToolRegistry registry_;
  ProjectPolicies policy_;  // per-project policy files; reloaded on SIGHUP and on change
  SqliteAuditLog audit_;  // after keys_, whose construction migrates the schema
  Metrics metrics_;
  ToolCallPipeline pipeline_;
  std::unique_ptr<openai::OpenAiApi> openai_;  // null without inference backends
  std::unique_ptr<tasks::TaskManager> tasks_;  // null with [tasks] enabled = false
  mcp::Dispatcher dispatcher_;
};

}  // namespace scigate
