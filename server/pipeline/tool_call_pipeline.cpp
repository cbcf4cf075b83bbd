#include "server/pipeline/tool_call_pipeline.hpp"

#include "server/common/json_util.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

#include "server/common/time_format.hpp"
#include "policies/redact.hpp"
#include "server/common/crypto.hpp"
#include "server/common/utf8.hpp"
#include "server/protocol/jsonrpc.hpp"
#include "server/observability/log.hpp"

namespace scigate {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

// Not inside the coroutine: GCC 12 miscompiles brace-initialised json there.
// The arguments as policy and pricing see them: the caller's, plus the tool's derived facts
// under names the arguments do not use (a fact never overrides what the caller sent).
json merge_derived_facts(const json& args, const json& derived) {
  if (derived.empty() || !derived.is_object() || !args.is_object()) return args;
  json merged = args;
  for (auto it = derived.begin(); it != derived.end(); ++it)
    if (!merged.contains(it.key())) merged[it.key()] = it.value();
  return merged;
}

// A refusal over a derived fact ("qubits 22 exceeds the limit 20"): the caller cannot ask for
// a fact directly, so the hint says where it comes from.
std::string derived_fact_note(const std::string& reason, const std::string& hint, const json& derived, const json& args) {
  if (!derived.is_object()) return {};
  for (auto it = derived.begin(); it != derived.end(); ++it) {
    const std::string& k = it.key();
    if (args.is_object() && args.contains(k)) continue;
    if (reason.rfind(k + " ", 0) == 0 || reason.find(" " + k + " ") != std::string::npos)
      return std::string(hint.empty() ? "" : " ") + "(" + k + " is not an argument: the tool derives it from the call, here " +
             it.value().dump() + ")";
  }
  return {};
}

// What an exception caught as exception_ptr says (for the log, never for the caller).
std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "an exception of unknown type";
  }
}

// A server fault as the caller sees it: the detail goes to the log (`event`), the caller gets
// the request's correlation id to report.
Error internal_failure(const std::string& event, const std::string& request_id, const std::string& tool, Error failure) {
  log::error(event, {{"request_id", request_id}, {"tool", tool}, {"detail", failure.detail}});
  failure.message = "internal error (correlation id " + request_id + ")";
  failure.hint = "this is a server fault, not a problem with the arguments; report the correlation id";
  return failure;
}

json success_result(ToolResult& result) {
  json r = json::object();
  r["content"] = json::array({json{{"type", "text"}, {"text", std::move(result.text)}}});
  if (!result.structured.is_null()) r["structuredContent"] = std::move(result.structured);
  r["isError"] = false;
  return r;
}

}  // namespace

ToolCallPipeline::ToolCallPipeline(const ToolRegistry& registry, const PolicyEngine& policy, Ledger& ledger,
                                   AuditLog& audit, Metrics& metrics, std::chrono::seconds tool_timeout)
    : registry_(registry), policy_(policy), ledger_(ledger), audit_(audit), metrics_(metrics),
      tool_timeout_(tool_timeout) {}

json ToolCallPipeline::error_result(const Error& e) {
  std::string text = e.message;
  if (!e.hint.empty()) text += "\nHint: " + e.hint;
  json err{{"code", to_string(e.code)}, {"message", e.message}};
  if (!e.hint.empty()) err["hint"] = e.hint;
  if (e.retry_after_ms > 0) err["retry_after_ms"] = e.retry_after_ms;
  return json{{"content", json::array({{{"type", "text"}, {"text", text}}})},
              {"isError", true},
              {"_meta", {{"io.scigate/error", err}}}};
}

ToolCallPipeline::Admission ToolCallPipeline::admit(const ToolCallRequest& req, AuditRecord& audit,
                                                    json& facts) const {
  Admission a;
  auto refuse = [&a](const char* outcome, Error e) -> Admission& {
    a.outcome = outcome;
    a.refusal = std::move(e);
    return a;
  };
  // 1. The tool, which must also be one the caller may see.
  Tool* tool = registry_.find(req.tool);
  if (!tool || !visible(req.principal, *tool)) {
    a.unknown_tool = true;
    return refuse("invalid", Error{ErrorCode::kNotFound, "unknown tool", {}, {}});
  }
  const ToolDescriptor& desc = tool->descriptor();

  // 2. The project the call is for, and the caller's role there.
  a.project = req.requested_project.empty() ? req.principal.default_project() : req.requested_project;
  const std::string& project = a.project;
  audit.project = project;
  if (project.empty() && desc.needs_project)
    return refuse("denied", Error{ErrorCode::kForbidden,
                                  req.principal.name + " is not a member of any project, and " + req.tool +
                                      " must be charged to one",
                                  "ask an administrator to add " + req.principal.name + " to a project", {}});
  if (!project.empty() && !req.principal.member_of(project)) {
    std::string mine;
    for (const auto& p : req.principal.projects) mine += (mine.empty() ? "" : ", ") + p;
    return refuse("denied",
                  Error{ErrorCode::kForbidden, req.principal.name + " is not a member of project " + project,
                        mine.empty() ? "ask an administrator to add you to a project"
                                     : "act for one of your projects (" + mine +
                                           ") with _meta[\"io.scigate/project\"] or the X-Scigate-Project header",
                        {}});
  }
  if (!project.empty() && !req.principal.has_role(project, desc.required_role))
    return refuse("denied", Error{ErrorCode::kForbidden,
                                  req.tool + " needs the " + desc.required_role + " role in project " + project +
                                      ", which " + req.principal.name + " does not hold",
                                  "ask a project admin to grant the " + desc.required_role + " role", {}});

  // 3. Arguments against the tool's inputSchema; the audit keeps them, secrets redacted.
  if (auto e = registry_.validate_arguments(*tool, req.arguments)) return refuse("invalid", std::move(*e));
  facts["arguments"] = redact_arguments(req.arguments, desc.input_schema);

  // 3b. Facts the tool derives from the arguments (a circuit's qubits), which policy conditions
  // and the credit hold see beside the arguments.
  std::variant<json, Error> derived = tool->derive_facts(req.arguments);
  if (auto* e = std::get_if<Error>(&derived)) return refuse("invalid", std::move(*e));
  const json& derived_facts = std::get<json>(derived);
  a.decided_args = merge_derived_facts(req.arguments, derived_facts);
  if (!derived_facts.empty()) facts["derived"] = derived_facts;

  // 4. Policy (rules, then rate limits).
  Decision decision = policy_.decide(PolicyQuery{req.principal, project, req.tool, a.decided_args});
  audit.decision_rules = join(decision.rule_ids);
  if (!decision.policy_hash.empty()) facts["policy_hash"] = decision.policy_hash;
  if (!decision.permitted()) {
    Error e{decision.retry_after ? ErrorCode::kRateLimited : ErrorCode::kPolicyDenied, decision.reason,
            decision.hint + derived_fact_note(decision.reason, decision.hint, derived_facts, req.arguments), {}};
    if (decision.retry_after) e.retry_after_ms = std::max<int64_t>(1, decision.retry_after->count());
    if (e.message.find("(rule ") == std::string::npos && !audit.decision_rules.empty())
      e.message += " (rule " + audit.decision_rules + ")";
    return refuse(decision.retry_after ? "rate_limited" : "denied", std::move(e));
  }
  a.tool = tool;
  return a;
}

asio::awaitable<ToolCallOutcome> ToolCallPipeline::run(ToolCallRequest request) {
  // Cancellation stops the tool, never the bookkeeping around it: holds are released and the
  // audit record written whatever happens to the caller.
  co_await asio::this_coro::throw_if_cancelled(false);
  // The call's state lives in this frame for as long as the tool runs. The steps before and
  // after the tool are coroutines of their own (open, close), so their locals — GCC 12 gives
  // each local of a coroutine its own frame slot — exist only while they run.
  Call c;
  c.req = std::move(request);
  c.started = std::chrono::steady_clock::now();
  c.audit.time_ms = unix_now_ms();
  c.audit.request_id = c.req.request_id;
  c.audit.principal = c.req.principal.name;
  c.audit.tool = utf8_prefix(c.req.tool, kMaxAuditedName);  // an unknown tool's name is the client's
  c.facts = json::object();
  c.facts["auth"] = c.req.principal.auth_method;
  // A service account may share its name with a user: the record says which one it was.
  if (c.req.principal.kind != "user") c.facts["principal_kind"] = c.req.principal.kind;
  if (!c.req.client_name.empty()) c.facts["client"] = utf8_prefix(c.req.client_name, kMaxAuditedName);
  if (!c.req.idempotency_key.empty()) c.facts["idempotency_key"] = c.req.idempotency_key;
  if (!c.req.task_id.empty()) c.facts["task_id"] = c.req.task_id;
  c.timeout = c.req.timeout.value_or(tool_timeout_);
  // The ledger and the audit log share a writer (the server's): a settle or release need not be
  // awaited before the audit record that follows it (Ledger::writer()).
  c.one_writer = ledger_.writer() != nullptr && ledger_.writer() == audit_.writer();

  if (!co_await open(c)) co_return std::move(c.out);

  // 6. The tool itself, bounded by the deadline and stopped by cancellation.
  CallContext ctx;
  ctx.principal = c.req.principal;
  ctx.project = c.project;
  ctx.request_id = c.req.request_id;
  ctx.protocol_version = c.req.protocol_version;
  ctx.era = c.req.era;
  ctx.client_name = c.req.client_name;
  ctx.deadline = c.started + c.timeout;
  ctx.task_id = c.req.task_id;
  ctx.progress = std::move(c.req.progress);
  ctx.cancellation = c.req.cancellation;
  ctx.held = c.hold.amount;
  ctx.metered = !c.hold.id.empty();
  ctx.partial = std::move(c.req.partial);

  std::optional<ToolResult> result;
  std::string outcome;
  Error failure;
  // `||` completes on the first *success*, so the handler's exceptions are caught inside and
  // carried out as a value: a throwing tool must not wait for the deadline.
  auto guarded = [&]() -> asio::awaitable<std::pair<std::optional<ToolResult>, std::exception_ptr>> {
    try {
      co_return std::make_pair(std::optional<ToolResult>(co_await c.tool->call(c.req.arguments, ctx)), nullptr);
    } catch (...) {
      co_return std::make_pair(std::optional<ToolResult>(), std::current_exception());
    }
  };
  try {
    asio::steady_timer deadline(co_await asio::this_coro::executor, c.timeout);
    // as_tuple: the timer cancelled after every normal call must not cost an exception.
    auto winner = co_await (guarded() || deadline.async_wait(asio::as_tuple(asio::use_awaitable)));
    if (winner.index() == 0) {
      auto& [value, thrown] = std::get<0>(winner);
      if (thrown) std::rethrow_exception(thrown);
      result = std::move(value);
    } else if (std::get<0>(std::get<1>(winner)) == asio::error::operation_aborted) {
      outcome = "cancelled";  // the caller's cancellation reached the timer first
    } else {
      ctx.cancellation->cancel();
      outcome = "timeout";
      failure = Error{ErrorCode::kTimeout, "the call did not finish within " + std::to_string(c.timeout.count()) + " s",
                      "ask for less work per call, or use the tool's asynchronous form where it has one", {}};
    }
  } catch (const boost::system::system_error& e) {
    if (e.code() == asio::error::operation_aborted || ctx.cancelled()) {
      outcome = "cancelled";
    } else {
      outcome = "internal";
      failure = Error::internal(std::string("tool threw: ") + e.what());
    }
  } catch (const std::exception& e) {
    outcome = ctx.cancelled() ? "cancelled" : "internal";
    failure = Error::internal(std::string("tool threw: ") + e.what());
  }
  if (!result && ctx.cancelled() && outcome != "timeout") outcome = "cancelled";
  co_await asio::this_coro::reset_cancellation_state(asio::disable_cancellation());

  co_await close(c, std::move(result), std::move(outcome), std::move(failure), ctx);
  co_return std::move(c.out);
}

// Every path ends here: one audit record, durable before the caller gets an answer.
asio::awaitable<void> ToolCallPipeline::finish(Call& c, std::string outcome, const Error* err) {
  c.auditing = true;
  auto elapsed = std::chrono::steady_clock::now() - c.started;
  c.audit.outcome = outcome;
  if (err) {
    c.audit.error_code = std::string(to_string(err->code));
    if (!err->detail.empty()) c.facts["detail"] = err->detail;
  }
  c.audit.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count();
  if (!c.audit.details.is_object()) c.audit.details = json::object();
  for (auto it = c.facts.begin(); it != c.facts.end(); ++it) c.audit.details[it.key()] = std::move(it.value());
  metrics_.record_call(registry_.find(c.req.tool) ? c.req.tool : "(unknown)", outcome,
                       std::chrono::duration<double>(elapsed).count());
  co_await audit_.append_durable(std::move(c.audit));
}

asio::awaitable<void> ToolCallPipeline::fail(Call& c, std::string outcome, const Error& e) {
  c.out.result = error_result(e);
  co_await finish(c, std::move(outcome), &e);
}

// Steps 1-5: admission and the credit hold. False when the call has been answered without
// running the tool (c.out is the answer, and it is audited).
asio::awaitable<bool> ToolCallPipeline::open(Call& c) {
  // Steps 1-5 run in a try: a fault there (a tool's derive_facts or worst_case_usage, the
  // ledger) is answered as an internal error and audited like every other outcome; until the
  // hold is taken there is nothing to give back.
  std::exception_ptr fault;
  try {
    // 1-4. The tool, the project and role, the arguments and policy: nothing waits there.
    // 2.0 is an integer to the tools' JSON Schemas (2020-12): it reaches them as 2.
    integral_floats_to_integers(c.req.arguments);
    Admission adm = admit(c.req, c.audit, c.facts);
    c.project = adm.project;
    if (adm.refusal) {
      if (adm.unknown_tool) {
        c.out.protocol_error = jsonrpc::ProtocolError{jsonrpc::kInvalidParams, "Unknown tool: " + c.req.tool, nullptr, nullptr};
        co_await finish(c, adm.outcome, &*adm.refusal);
      } else {
        co_await fail(c, adm.outcome, *adm.refusal);
      }
      co_return false;
    }
    c.tool = adm.tool;
    const json& decided_args = adm.decided_args;

    // 5. Credit hold for the worst case (plus the tool's flat per-call rate, if it has one).
    Usage worst = c.tool->worst_case_usage(decided_args);
    worst.add("call:" + c.req.tool, 1);
    std::optional<Usage> minimum = c.tool->minimum_usage(decided_args);
    if (minimum) minimum->add("call:" + c.req.tool, 1);
    HoldRequest hr{c.project, c.req.principal.name, c.req.tool, c.req.request_id, std::move(worst), std::move(minimum),
                   c.req.idempotency_key,
                   // Over the caller too: a user and a service account of one name never share a result.
                   c.req.idempotency_key.empty() ? std::string()
                                                 : crypto::sha256_hex(c.req.principal.owner_id() + "\n" + c.req.tool + "\n" +
                                                                      jsonrpc::dump(c.req.arguments)),
                   c.timeout + std::chrono::seconds(60), {}};
    ReserveResult reserved = co_await ledger_.reserve(std::move(hr));
    if (reserved.error) {
      co_await fail(c, reserved.error->code == ErrorCode::kConflict ? "invalid" : "denied", *reserved.error);
      co_return false;
    }
    c.hold = std::move(reserved.hold);
    if (c.hold.replay) {
      // A retry of a call that already completed under this idempotency key: the same answer,
      // charged once.
      c.out.result = std::move(*c.hold.replay);
      c.facts["replayed"] = true;
      co_await finish(c, "replayed", nullptr);
      co_return false;
    }
  } catch (...) {
    if (c.auditing) throw;
    fault = std::current_exception();
  }
  if (fault) {
    co_await fail(c, "internal", internal_failure("call_failed", c.req.request_id, c.req.tool,
                                                  Error::internal("before the tool ran: " + describe(fault))));
    co_return false;
  }
  c.facts["held"] = c.hold.amount;
  // A cancellation that arrived while the hold was being committed found no operation to
  // cancel (the ledger's are not cancellable): do not start the tool only to wait for it.
  if (c.req.cancellation->cancelled()) {
    co_await ledger_.release(c.hold);
    c.out.cancelled = true;
    Error e{ErrorCode::kCancelled, "cancelled by the caller", {}, {}};
    co_await finish(c, "cancelled", &e);
    co_return false;
  }
  co_return true;
}

// Step 7, once the tool has ended: settle or release, then the audit record.
asio::awaitable<void> ToolCallPipeline::close(Call& c, std::optional<ToolResult> result, std::string outcome,
                                              Error failure, CallContext& ctx) {
  if (result && !result->error) {
    if (auto problem = registry_.validate_output(*c.tool, result->structured)) {
      // A server bug: never hand the client content that breaks the advertised schema.
      result.reset();
      outcome = "internal";
      failure = Error::internal("output does not match outputSchema: " + *problem);
    }
  }
  if (!ctx.audit_fields.empty()) c.audit.details = std::move(ctx.audit_fields);
  if (result) {
    json r = result->error ? error_result(*result->error) : success_result(*result);
    // A tool error that used resources (a job that ran and failed) pays for them; the flat
    // per-call rate is charged for every call that ran.
    result->usage.add("call:" + c.req.tool, 1);
    // The ledger keeps the result only to replay it for an idempotency key: without one, it
    // gets none (no copy of a long answer).
    json replayable;
    if (!c.req.idempotency_key.empty()) replayable = r;
    if (c.one_writer) {
      // Not awaited: the audit record below is queued after it on the same writer, written
      // after it and durable with it, and reads what it posted — or, decided already (the
      // settle is journaled), says it.
      auto posted = std::make_shared<MicroCredits>(0);
      if (auto decided = ledger_.settle_queued(c.hold, std::move(result->usage), std::move(replayable), posted))
        c.audit.cost = *decided;
      else
        c.audit.cost_posted = std::move(posted);
    } else {
      c.audit.cost = co_await ledger_.settle(c.hold, std::move(result->usage), std::move(replayable));
    }
    c.out.result = std::move(r);
    if (result->error) {
      co_await finish(c, "tool_error", &*result->error);
    } else {
      co_await finish(c, "ok", nullptr);
    }
    co_return;
  }
  if (!ctx.incurred.empty()) {
    // Ended without a result, but the tool had used something (a backend generated tokens
    // before the caller went away): that is charged, the rest of the hold released.
    // No result is stored for its idempotency key: a retry under it runs again (the caller got
    // no answer to replay), as after a release.
    ctx.incurred.add("call:" + c.req.tool, 1);
    c.facts["incurred"] = true;
    c.audit.cost = co_await ledger_.settle(c.hold, std::move(ctx.incurred), json());
  } else if (c.one_writer) {
    ledger_.release_queued(c.hold);
  } else {
    co_await ledger_.release(c.hold);
  }
  if (outcome == "cancelled") {
    c.out.cancelled = true;
    Error e{ErrorCode::kCancelled, "cancelled by the caller", {}, {}};
    co_await finish(c, "cancelled", &e);
    co_return;
  }
  if (outcome == "internal") failure = internal_failure("tool_failed", c.req.request_id, c.req.tool, std::move(failure));
  co_await fail(c, outcome, failure);
}

bool ToolCallPipeline::visible(const Principal& principal, const Tool& tool) const {
  const ToolDescriptor& d = tool.descriptor();
  if (d.needs_project && !principal.has_role_anywhere(d.required_role)) return false;
  return policy_.may_list(principal, d.name);
}

}  // namespace scigate
