#pragma once
// The agent-facing tool interface. A tool is a descriptor plus an async handler; the pipeline
// validates arguments against `input_schema` before `call` runs, so handlers may rely on the
// schema's types and required members. Handlers return domain failures the model can act on as
// ToolResult::failure; they throw only for bugs.
#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <variant>

#include "policies/ledger.hpp"
#include "server/common/error.hpp"
#include "server/pipeline/call_context.hpp"

namespace scigate {

struct ToolAnnotations {
  bool read_only = false;
  bool destructive = true;   // MCP's defaults for a tool that says nothing
  bool idempotent = false;
  bool open_world = true;
};

// Whether a call may run as a task (the MCP tasks extension) instead of answering inline.
enum class TaskSupport { kForbidden, kOptional, kRequired };

struct ToolDescriptor {
  std::string name;
  std::string title;
  std::string description;  // under 2 KB: it is sent to models on every tools/list
  json input_schema;
  json output_schema;       // null when the tool returns no structured content
  ToolAnnotations annotations;
  TaskSupport task_support = TaskSupport::kForbidden;
  // Whether a call must be charged to a project. Only introspection (whoami) works without one.
  bool needs_project = true;
  // The role the caller must hold in the project (see known_roles()); the tool is not even
  // listed to principals holding it nowhere. Audit tools require "auditor".
  std::string required_role = "member";
};

struct ToolResult {
  json structured;          // matches output_schema on success
  std::string text;         // a short human/model-readable rendering
  std::optional<Error> error;
  // What the call actually used, priced by the ledger at settlement (capped at the hold). A
  // failed call that used resources (a job that ran and failed) reports them too.
  Usage usage;

  static ToolResult success(json structured, std::string text) {
    return ToolResult{std::move(structured), std::move(text), std::nullopt, {}};
  }
  static ToolResult failure(Error e) { return ToolResult{nullptr, {}, std::move(e), {}}; }
};

class Tool {
 public:
  virtual ~Tool() = default;
  virtual const ToolDescriptor& descriptor() const = 0;
  // Facts the tool derives from its validated arguments that policy and pricing need but the
  // caller does not state: a circuit's qubit count comes from its source, not from an argument.
  // The pipeline adds them to the arguments that policy conditions and worst_case_usage see
  // (under names the schema does not use; a fact never overrides an argument) and records them
  // in the audit record. An Error refuses the call as invalid before policy is asked. Runs on
  // the call's executor: keep it cheap and bounded (a parse, not a simulation).
  virtual std::variant<json, Error> derive_facts(const json& args) const { return json::object(); }
  // The most this call can use, from its validated arguments and derived facts; priced and held
  // before the call runs. The pipeline adds one "call:<tool>" unit itself.
  virtual Usage worst_case_usage(const json& args) const { return {}; }
  // The least this call can usefully run with, for a call that can shrink its work to fit the
  // project's credits. When set and the worst case is not available, the pipeline holds what is
  // (at least this) and the tool reads CallContext::held. nullopt: all or nothing.
  virtual std::optional<Usage> minimum_usage(const json& args) const { return std::nullopt; }
  // Runs on the call's executor. Cancellation arrives through the coroutine's cancellation
  // slot (awaited Asio operations fail with operation_aborted) and through ctx.cancelled().
  virtual boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) = 0;
};

}  // namespace scigate
