#include "tools/usage/usage_tool.hpp"

#include <cmath>
#include <ctime>

#include "policies/credits.hpp"
#include "server/common/time_format.hpp"

namespace scigate::tools {
namespace {

// Credits as a JSON number: micro-credits / 10^6 prints as the exact decimal (12.5, 0.000001)
// because the shortest round-trip form of that double is the decimal itself.
double credits_number(MicroCredits micro) { return static_cast<double>(micro) / 1e6; }

const char* kOutputSchema = R"({
  "type": "object",
  "properties": {
    "metered": {"type": "boolean", "description": "false: this server does not meter calls; all are free"},
    "project": {"type": "string"},
    "account": {"type": "string"},
    "unit": {"type": "string", "enum": ["credits"]},
    "balance": {"type": "number", "description": "grants minus charges; negative while the credit line is in use"},
    "held": {"type": "number", "description": "worst-case costs of calls still running"},
    "available": {"type": "number", "description": "what a new call may hold: balance + credit_line - held"},
    "credit_line": {"type": "number"},
    "credit_line_used": {"type": "number"},
    "grants": {"type": "array", "items": {"type": "object", "properties": {
      "amount": {"type": "number"}, "remaining": {"type": "number"},
      "expires": {"type": ["string", "null"]}, "note": {"type": "string"}},
      "required": ["amount", "remaining", "expires"]}},
    "holds": {"type": "array", "items": {"type": "object", "properties": {
      "id": {"type": "string"}, "user": {"type": "string"}, "tool": {"type": "string"}, "amount": {"type": "number"},
      "created": {"type": "string"}, "expires": {"type": "string"}},
      "required": ["id", "tool", "amount", "expires"]}},
    "recent_charges": {"type": "array", "items": {"type": "object", "properties": {
      "time": {"type": "string"}, "user": {"type": "string"}, "tool": {"type": "string"},
      "request_id": {"type": "string"}, "amount": {"type": "number"}},
      "required": ["time", "tool", "amount"]}},
    "rates": {"type": "array", "items": {"type": "object", "properties": {
      "resource": {"type": "string"}, "credits_per_unit": {"type": "number"}, "unit": {"type": "string"}},
      "required": ["resource", "credits_per_unit", "unit"]}},
    "sub_budget": {"type": ["object", "null"], "properties": {
      "user": {"type": "string"}, "balance": {"type": "number"}, "held": {"type": "number"},
      "available": {"type": "number"}}},
    "shown": {"type": "string", "enum": ["project", "own"],
      "description": "whose holds and charges are listed: everyone's (a project manager) or the caller's own"},
    "policy": {"type": ["object", "null"],
      "description": "the limits the project's policy sets on the caller; null: no policy file, members may call every tool",
      "properties": {
        "policy_hash": {"type": "string"},
        "rules": {"type": "array", "items": {"type": "object", "properties": {
          "id": {"type": "string"}, "effect": {"type": "string", "enum": ["permit", "forbid"]},
          "tools": {"type": ["array", "string"]}, "description": {"type": "string"},
          "requires": {"type": "array", "items": {"type": "string"}},
          "refuses_when": {"type": "array", "items": {"type": "string"}},
          "window": {"type": "string", "description": "when the rule applies: hours and days"},
          "quota": {"type": "string"}, "quota_left": {"type": "number"}}, "required": ["id", "effect", "tools"]}},
        "rate_limits": {"type": "array", "items": {"type": "object", "properties": {
          "id": {"type": "string"}, "tools": {"type": ["array", "string"]}, "per": {"type": "string"},
          "limit": {"type": "string"}, "burst": {"type": "number"}, "counts": {"type": "string"},
          "available": {"type": ["number", "object"]}, "description": {"type": "string"}},
          "required": ["id", "tools", "per", "limit", "burst"]}}}}
  },
  "required": ["metered", "project"]
})";

}  // namespace

UsageTool::UsageTool(Ledger& ledger, const PolicyEngine* policy) : ledger_(ledger), policy_(policy) {
  descriptor_.name = "get_usage";
  descriptor_.title = "Credit usage";
  descriptor_.description =
      "Shows the credits of the project this call is for: balance, what running calls hold, what is "
      "available for new calls, the credit line, grants and when they expire, recent charges, the "
      "rates (credits per GPU-hour, token, call, ...), your own sub-budget if you have one, and the limits "
      "the project's policy sets on you (what each rule permits or forbids, rate limits and how much of "
      "each is left). Project managers see every member's holds and charges; others see their own. Call "
      "it before expensive work, or when a call was refused for lack of credits or by a limit.";
  descriptor_.input_schema = json::parse(R"({"type":"object","properties":{},"additionalProperties":false})");
  descriptor_.output_schema = json::parse(kOutputSchema);
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
  descriptor_.required_role = "member";
}

json UsageTool::to_json(const UsageReport& r) {
  json out = json::object();
  out["metered"] = r.metered;
  out["project"] = r.project;
  if (!r.metered) return out;
  out["account"] = r.account;
  out["unit"] = "credits";
  out["balance"] = credits_number(r.balance);
  out["held"] = credits_number(r.held);
  out["available"] = credits_number(r.available);
  out["credit_line"] = credits_number(r.credit_line);
  out["credit_line_used"] = credits_number(std::max<MicroCredits>(0, -r.balance));
  json grants = json::array();
  for (const auto& g : r.grants) {
    json j = json::object();
    j["amount"] = credits_number(g.amount);
    j["remaining"] = credits_number(g.remaining);
    j["expires"] = g.expires_ms ? json(rfc3339_seconds(*g.expires_ms)) : json(nullptr);
    if (!g.note.empty()) j["note"] = g.note;
    grants.push_back(std::move(j));
  }
  out["grants"] = std::move(grants);
  json holds = json::array();
  for (const auto& h : r.holds) {
    json j = json::object();
    j["id"] = h.id;
    j["user"] = h.user;
    j["tool"] = h.tool;
    j["amount"] = credits_number(h.amount);
    j["created"] = rfc3339_seconds(h.created_ms);
    j["expires"] = rfc3339_seconds(h.expires_ms);
    holds.push_back(std::move(j));
  }
  out["holds"] = std::move(holds);
  json charges = json::array();
  for (const auto& c : r.recent_charges) {
    json j = json::object();
    j["time"] = rfc3339_seconds(c.time_ms);
    j["user"] = c.user;
    j["tool"] = c.tool;
    j["request_id"] = c.request_id;
    j["amount"] = credits_number(c.amount);
    charges.push_back(std::move(j));
  }
  out["recent_charges"] = std::move(charges);
  json rates = json::array();
  for (const auto& rate : r.rates) {
    json j = json::object();
    j["resource"] = rate.resource;
    j["credits_per_unit"] = static_cast<double>(rate.pico_per_unit) / 1e12;
    j["unit"] = rate.unit;
    rates.push_back(std::move(j));
  }
  out["rates"] = std::move(rates);
  if (r.sub_budget) {
    json j = json::object();
    j["user"] = r.sub_budget->user;
    j["balance"] = credits_number(r.sub_budget->balance);
    j["held"] = credits_number(r.sub_budget->held);
    j["available"] = credits_number(r.sub_budget->available);
    out["sub_budget"] = std::move(j);
  } else {
    out["sub_budget"] = nullptr;
  }
  return out;
}

std::string UsageTool::to_text(const UsageReport& r) {
  if (!r.metered) return "Calls are not metered on this server: every call is free.";
  using credits::format;
  std::string t = "Project " + r.project + ": balance " + format(r.balance) + " credits, " + format(r.held) +
                  " held by running calls, " + format(r.available) + " available";
  if (r.credit_line > 0) t += " (including a credit line of " + format(r.credit_line) + ")";
  t += ".";
  if (r.sub_budget)
    t += " Your sub-budget (" + r.sub_budget->user + "): " + format(r.sub_budget->available) + " available.";
  if (!r.rates.empty()) {
    t += " Rates:";
    for (std::size_t i = 0; i < r.rates.size(); ++i)
      t += std::string(i ? "," : "") + " " + r.rates[i].resource + " " + credits::format_rate(r.rates[i].pico_per_unit) +
           "/" + r.rates[i].unit;
    t += ".";
  } else {
    t += " No resource is priced: calls are free.";
  }
  return t;
}

std::string UsageTool::policy_text(const json& limits) {
  if (limits.is_null()) return "";
  std::string t = " Policy: " + std::to_string(limits["rules"].size()) + " rule" + (limits["rules"].size() == 1 ? "" : "s") +
                  " apply to you (see policy.rules).";
  for (const auto& l : limits["rate_limits"]) {
    t += " Rate limit " + l["id"].get<std::string>() + ": " + l["limit"].get<std::string>();
    if (l.contains("available") && l["available"].is_number())
      t += ", " + credits::format(static_cast<MicroCredits>(std::floor(l["available"].get<double>()) * 1e6)) + " left now";
    t += ".";
  }
  return t;
}

boost::asio::awaitable<ToolResult> UsageTool::call(const json&, CallContext& ctx) {
  // A manager (or admin) of the project sees everyone's holds and charges, like a Slurm
  // account coordinator; a member sees its own.
  const bool whole_project = ctx.principal.has_role(ctx.project, "manager");
  UsageReport report = co_await ledger_.usage(ctx.project, ctx.principal.name, whole_project);
  json out = to_json(report);
  out["shown"] = whole_project ? "project" : "own";
  json limits = policy_ ? policy_->limits_for(ctx.principal, ctx.project) : json(nullptr);
  std::string text = to_text(report) + policy_text(limits);
  out["policy"] = std::move(limits);
  co_return ToolResult::success(std::move(out), std::move(text));
}

}  // namespace scigate::tools
