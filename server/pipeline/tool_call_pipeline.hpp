#pragma once
// The one path every tools/call takes, in order:
//   find tool -> resolve project -> validate arguments -> policy decision -> credit hold
//   -> run the tool (deadline, cancellation) -> check output -> settle or release -> audit.
// Transports and the MCP dispatcher call run(); nothing else calls tools.
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "policies/audit.hpp"
#include "policies/ledger.hpp"
#include "policies/policy.hpp"
#include "server/observability/metrics.hpp"
#include "server/pipeline/call_context.hpp"
#include "server/protocol/jsonrpc.hpp"
#include "tools/registry.hpp"

namespace scigate {

// The longest idempotency key a caller may send (docs/CREDITS.md), on every transport: it is
// kept with the hold and in the audit record.
constexpr std::size_t kMaxIdempotencyKeyChars = 200;

struct ToolCallRequest {
  std::string tool;
  json arguments = json::object();
  Principal principal;
  std::string requested_project;  // from _meta or a header; empty: the principal's default
  std::string idempotency_key;    // from _meta or the Idempotency-Key header; empty: none
  std::string request_id;         // correlation id
  std::string protocol_version;
  std::string era;
  std::string client_name;
  ProgressReporter progress;
  std::shared_ptr<CancellationFlag> cancellation = std::make_shared<CancellationFlag>();
  // Set for a call that runs as a task: its id (in the audit record) and its longer deadline.
  std::string task_id;
  std::optional<std::chrono::seconds> timeout;  // default: [limits] tool_timeout_s
  // Partial output relayed to the caller as it is produced (see CallContext::partial).
  std::function<void(const json& piece)> partial;
};

struct ToolCallOutcome {
  std::optional<jsonrpc::ProtocolError> protocol_error;  // unknown tool, malformed params
  json result;             // the CallToolResult, when there is no protocol error
  bool cancelled = false;  // the caller cancelled: send nothing
};

class ToolCallPipeline {
 public:
  ToolCallPipeline(const ToolRegistry& registry, const PolicyEngine& policy, Ledger& ledger, AuditLog& audit,
                   Metrics& metrics, std::chrono::seconds tool_timeout);

  boost::asio::awaitable<ToolCallOutcome> run(ToolCallRequest request);

  // The CallToolResult for a failure the model can act on: text for the model, the structured
  // error in _meta (not structuredContent, which must match the tool's outputSchema).
  static json error_result(const Error& e);

  // Whether the tool appears in the principal's tools/list: it holds the tool's role in some
  // project, and the policy could permit a call.
  bool visible(const Principal& principal, const Tool& tool) const;

 private:
  // Steps 1-4 of a call, none of which waits: the tool (one the caller may see), the project
  // and the caller's role there, the arguments (validated; redacted into `facts`), derived
  // facts and the policy decision. A plain function rather than part of run(), so that its
  // locals do not live in run()'s coroutine frame for as long as the call (GCC gives each
  // local of a coroutine its own slot: the frame was 7 KiB, and a streamed call keeps it for
  // minutes).
  struct Admission {
    Tool* tool = nullptr;  // set when admitted
    std::string project;
    nlohmann::json decided_args;  // the arguments with the derived facts merged in
    std::optional<Error> refusal;
    std::string outcome;        // with a refusal: "invalid", "denied" or "rate_limited"
    bool unknown_tool = false;  // a protocol error, not a tool result
  };
  Admission admit(const ToolCallRequest& req, AuditRecord& audit, nlohmann::json& facts) const;

  // One call's state, shared by the phases of run().
  struct Call {
    ToolCallRequest req;
    std::chrono::steady_clock::time_point started;
    std::chrono::seconds timeout{0};
    bool one_writer = false;
    bool auditing = false;  // set by finish(): a fault while auditing is not audited again
    ToolCallOutcome out;
    AuditRecord audit;
    nlohmann::json facts;  // merged into the record's details
    Tool* tool = nullptr;
    std::string project;
    Hold hold;
  };
  boost::asio::awaitable<bool> open(Call& c);
  boost::asio::awaitable<void> close(Call& c, std::optional<ToolResult> result, std::string outcome, Error failure,
                                     CallContext& ctx);
  boost::asio::awaitable<void> finish(Call& c, std::string outcome, const Error* err);
  boost::asio::awaitable<void> fail(Call& c, std::string outcome, const Error& e);

  const ToolRegistry& registry_;
  const PolicyEngine& policy_;
  Ledger& ledger_;
  AuditLog& audit_;
  Metrics& metrics_;
  std::chrono::seconds tool_timeout_;
};

}  // namespace scigate
