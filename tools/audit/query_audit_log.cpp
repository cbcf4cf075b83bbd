#include "tools/audit/query_audit_log.hpp"

#include <charconv>

#include "policies/audit_query.hpp"
#include "policies/audit_time.hpp"

namespace scigate::tools {
namespace {

constexpr int64_t kDefaultLimit = 20;
constexpr int64_t kMaxLimit = 200;  // a model's context is the limit here, not the database

std::string member(const json& args, const char* name) {
  auto it = args.find(name);
  return it != args.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string summary_line(const json& e) {
  std::string s = "#" + std::to_string(e["seq"].get<int64_t>()) + " " + e["time"].get<std::string>();
  for (const char* k : {"principal", "project", "tool"})
    if (e.contains(k)) s += " " + e[k].get<std::string>();
  s += " " + e["outcome"].get<std::string>();
  if (e.contains("error_code")) s += " (" + e["error_code"].get<std::string>() + ")";
  if (e.contains("cost")) s += " cost " + std::to_string(e["cost"].get<int64_t>());
  return s;
}

}  // namespace

QueryAuditLogTool::QueryAuditLogTool(audit::AuditQueryService& service) : service_(service) {
  descriptor_.name = "query_audit_log";
  descriptor_.title = "Query the audit log";
  descriptor_.description =
      "Reads the tamper-evident audit trail of the projects where you hold the auditor role: one record per "
      "request (tool calls with their outcome, cost and duration; denials; failures; refused and "
      "unauthenticated requests), newest first. Filter by project, principal, tool, outcome and time; "
      "times are RFC 3339 (2026-03-01T12:00:00Z), a date, or a span back from now (90m, 24h, 7d). Pass "
      "next_cursor back as cursor for the next page. Set include_details for the recorded arguments "
      "(secrets redacted), policy hash, credits held and other facts.";
  descriptor_.input_schema = json::parse(R"({
    "type": "object",
    "properties": {
      "project": {"type": "string", "description": "only this project (you need the auditor role there); default: every project where you are an auditor"},
      "principal": {"type": "string", "description": "only requests by this user or service account"},
      "tool": {"type": "string", "description": "only calls of this tool"},
      "outcome": {"type": "string", "description": "ok, tool_error, denied, invalid, unauthenticated, rate_limited, cancelled, timeout, internal, replayed"},
      "since": {"type": "string", "description": "records at or after this time"},
      "until": {"type": "string", "description": "records before this time"},
      "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
      "cursor": {"type": "string", "description": "next_cursor from the previous page"},
      "order": {"type": "string", "enum": ["newest_first", "oldest_first"], "default": "newest_first"},
      "include_details": {"type": "boolean", "default": false}
    },
    "additionalProperties": false
  })");
  descriptor_.output_schema = json::parse(R"({
    "type": "object",
    "properties": {
      "events": {"type": "array", "items": {
        "type": "object",
        "properties": {
          "seq": {"type": "integer"}, "time": {"type": "string"}, "principal": {"type": "string"},
          "project": {"type": "string"}, "tool": {"type": "string"}, "outcome": {"type": "string"},
          "error_code": {"type": "string"}, "rules": {"type": "string"}, "cost": {"type": "integer"},
          "duration_ms": {"type": "number"}, "request_id": {"type": "string"}, "details": {"type": "object"}
        },
        "required": ["seq", "time", "outcome", "request_id"]
      }},
      "projects": {"type": "array", "items": {"type": "string"}},
      "next_cursor": {"type": "string"}
    },
    "required": ["events", "projects"]
  })");
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
  descriptor_.required_role = "auditor";
}

boost::asio::awaitable<ToolResult> QueryAuditLogTool::call(const json& args, CallContext& ctx) {
  audit::EventFilter f;
  f.principal = member(args, "principal");
  f.tool = member(args, "tool");
  f.outcome = member(args, "outcome");
  f.descending = member(args, "order") != "oldest_first";
  f.limit = args.contains("limit") ? args["limit"].get<int64_t>() : kDefaultLimit;
  if (f.limit > kMaxLimit) f.limit = kMaxLimit;
  const int64_t now = audit::now_ms();
  for (const char* k : {"since", "until"}) {
    std::string text = member(args, k);
    if (text.empty()) continue;
    auto t = audit::parse_time(text, now);
    if (!t)
      co_return ToolResult::failure(Error::invalid_arguments(
          std::string(k) + " \"" + text + "\" is not a time",
          "use RFC 3339 (2026-03-01T12:00:00Z), a date (2026-03-01), or a span back from now (90m, 24h, 7d)"));
    (std::string(k) == "since" ? f.since_ms : f.until_ms) = *t;
  }
  if (std::string c = member(args, "cursor"); !c.empty()) {
    int64_t seq = 0;
    auto [p, ec] = std::from_chars(c.data(), c.data() + c.size(), seq);
    if (ec != std::errc() || p != c.data() + c.size() || seq < 0)
      co_return ToolResult::failure(
          Error::invalid_arguments("cursor \"" + c + "\" is not one this tool returned", "pass next_cursor back unchanged"));
    f.cursor = seq;
  }
  if (auto refused = audit::restrict_to_auditor(ctx.principal, member(args, "project"), f)) {
    std::string mine;
    for (const auto& p : audit::auditable_projects(ctx.principal)) mine += (mine.empty() ? "" : ", ") + p;
    co_return ToolResult::failure(Error{ErrorCode::kForbidden, *refused,
                                        mine.empty() ? "ask a project admin for the auditor role"
                                                     : "you may read the audit log of: " + mine,
                                        {}});
  }
  std::vector<std::string> scope = *f.projects;
  audit::AuditPage page = co_await service_.query(f);

  const bool details = args.contains("include_details") && args["include_details"].get<bool>();
  json events = json::array();
  std::string text;
  for (const auto& r : page.events) {
    json e = audit::compact_event_json(r, details);
    text += summary_line(e) + "\n";
    events.push_back(std::move(e));
  }
  json out = json::object();
  out["events"] = std::move(events);
  out["projects"] = scope;
  if (page.next_cursor) out["next_cursor"] = std::to_string(*page.next_cursor);
  if (page.events.empty()) text = "No audit records match.\n";
  if (page.next_cursor) text += "More records: call again with cursor \"" + std::to_string(*page.next_cursor) + "\".\n";
  co_return ToolResult::success(std::move(out), std::move(text));
}

}  // namespace scigate::tools
