#include "server/pipeline/tool_call_pipeline.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

#include "server/common/crypto.hpp"
#include "server/observability/log.hpp"

namespace scigate {
namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
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
  return json{{"content", json::array({{{"type", "text"}, {"text", text}}})},
              {"isError", true},
              {"_meta", {{"io.scigate/error", err}}}};
}

asio::awaitable<ToolCallOutcome> ToolCallPipeline::run(ToolCallRequest req) {
  const auto started = std::chrono::steady_clock::now();
  ToolCallOutcome out;
  AuditRecord audit;
  audit.time_ms = now_ms();
  audit.request_id = req.request_id;
  audit.principal = req.principal.name;
  audit.tool = req.tool;

  auto finish = [&](std::string outcome, const Error* err) {
    auto elapsed = std::chrono::steady_clock::now() - started;
    audit.outcome = outcome;
    if (err) {
      audit.error_code = std::string(to_string(err->code));
      if (!err->detail.empty()) audit.details["detail"] = err->detail;
    }
    audit.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count();
    metrics_.record_call(registry_.find(req.tool) ? req.tool : "(unknown)", outcome,
                         std::chrono::duration<double>(elapsed).count());
    audit_.append(std::move(audit));
  };
  auto fail = [&](std::string outcome, const Error& e) {
    out.result = error_result(e);
    finish(std::move(outcome), &e);
  };

  // 1. The tool, which must also be one the caller may see.
  Tool* tool = registry_.find(req.tool);
  if (!tool || !policy_.may_list(req.principal, req.tool)) {
    out.protocol_error = jsonrpc::ProtocolError{jsonrpc::kInvalidParams, "Unknown tool: " + req.tool, nullptr, nullptr};
    Error e{ErrorCode::kNotFound, "unknown tool", {}, {}};
    finish("invalid", &e);
    co_return out;
  }

  // 2. The project the call is for.
  std::string project = req.requested_project.empty() ? req.principal.default_project() : req.requested_project;
  audit.project = project;
  if (project.empty() && tool->descriptor().needs_project) {
    Error e{ErrorCode::kForbidden, req.principal.name + " is not a member of any project, and " + req.tool +
                                       " must be charged to one",
            "ask an administrator to add " + req.principal.name + " to a project", {}};
    fail("denied", e);
    co_return out;
  }

  // 3. Arguments against the tool's inputSchema.
  if (auto e = registry_.validate_arguments(*tool, req.arguments)) {
    fail("invalid", *e);
    co_return out;
  }

  // 4. Policy.
  Decision decision = policy_.decide(PolicyQuery{req.principal, project, req.tool, req.arguments});
  audit.decision_rules = join(decision.rule_ids);
  if (!decision.permitted()) {
    Error e{ErrorCode::kPolicyDenied, decision.reason + " (rule " + audit.decision_rules + ")", decision.hint, {}};
    fail("denied", e);
    co_return out;
  }

  // 5. Credit hold for the worst case.
  Hold hold;
  HoldRequest hr{project, req.principal.name, req.tool, req.request_id, tool->worst_case_cost(req.arguments)};
  if (auto e = ledger_.reserve(hr, hold)) {
    fail("denied", *e);
    co_return out;
  }

  // 6. The tool itself, bounded by the deadline and stopped by cancellation.
  CallContext ctx;
  ctx.principal = req.principal;
  ctx.project = project;
  ctx.request_id = req.request_id;
  ctx.protocol_version = req.protocol_version;
  ctx.era = req.era;
  ctx.client_name = req.client_name;
  ctx.deadline = started + tool_timeout_;
  ctx.progress = std::move(req.progress);
  ctx.cancellation = req.cancellation;

  std::optional<ToolResult> result;
  std::string outcome;
  Error failure;
  // `||` completes on the first *success*, so the handler's exceptions are caught inside and
  // carried out as a value: a throwing tool must not wait for the deadline.
  auto guarded = [&]() -> asio::awaitable<std::pair<std::optional<ToolResult>, std::exception_ptr>> {
    try {
      co_return std::make_pair(std::optional<ToolResult>(co_await tool->call(req.arguments, ctx)), nullptr);
    } catch (...) {
      co_return std::make_pair(std::optional<ToolResult>(), std::current_exception());
    }
  };
  try {
    asio::steady_timer deadline(co_await asio::this_coro::executor, tool_timeout_);
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
      failure = Error{ErrorCode::kTimeout, "the call did not finish within " + std::to_string(tool_timeout_.count()) + " s",
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

  // 7. Settle what was used, release the rest; then audit.
  if (result && !result->error) {
    if (auto problem = registry_.validate_output(*tool, result->structured)) {
      // A server bug: never hand the client content that breaks the advertised schema.
      result.reset();
      outcome = "internal";
      failure = Error::internal("output does not match outputSchema: " + *problem);
    }
  }
  audit.details = std::move(ctx.audit_fields);
  if (result) {
    int64_t cost = std::clamp<int64_t>(result->cost, 0, hold.amount);
    ledger_.settle(hold, cost);
    audit.cost = cost;
    if (result->error) {
      fail("tool_error", *result->error);
    } else {
      json r{{"content", json::array({{{"type", "text"}, {"text", result->text}}})}};
      if (!result->structured.is_null()) r["structuredContent"] = std::move(result->structured);
      r["isError"] = false;
      out.result = std::move(r);
      finish("ok", nullptr);
    }
    co_return out;
  }
  ledger_.release(hold);
  if (outcome == "cancelled") {
    out.cancelled = true;
    Error e{ErrorCode::kCancelled, "cancelled by the caller", {}, {}};
    finish("cancelled", &e);
    co_return out;
  }
  if (outcome == "internal") {
    std::string correlation = req.request_id;
    log::error("tool_failed", {{"request_id", correlation}, {"tool", req.tool}, {"detail", failure.detail}});
    failure.message = "internal error (correlation id " + correlation + ")";
    failure.hint = "this is a server fault, not a problem with the arguments; report the correlation id";
  }
  fail(outcome, failure);
  co_return out;
}

}  // namespace scigate
