#include "tools/whoami/whoami.hpp"

#include "scigate/version.hpp"

namespace scigate::tools {

WhoamiTool::WhoamiTool(std::string server_name) : server_name_(std::move(server_name)) {
  descriptor_.name = "whoami";
  descriptor_.title = "Who am I";
  descriptor_.description =
      "Returns the identity this gateway sees for you: principal name and kind, how you "
      "authenticated, the projects you may act for (the default first) and the project this call "
      "counts against, your roles and groups, plus the server version and the MCP protocol version in use. Call it when a "
      "permission or project looks wrong.";
  descriptor_.input_schema = json::parse(R"({"type":"object","properties":{},"additionalProperties":false})");
  descriptor_.output_schema = json::parse(R"({
    "type": "object",
    "properties": {
      "principal": {"type": "string"},
      "kind": {"type": "string", "enum": ["user", "service"]},
      "auth_method": {"type": "string"},
      "projects": {"type": "array", "items": {"type": "string"}},
      "default_project": {"type": "string"},
      "roles": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                "description": "roles held in each project"},
      "groups": {"type": "array", "items": {"type": "string"}},
      "project": {"type": "string"},
      "server": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                 "required": ["name", "version"]},
      "protocol": {"type": "object",
                   "properties": {"version": {"type": "string"}, "era": {"type": "string", "enum": ["2025-11-25", "2026-07-28"]}},
                   "required": ["version", "era"]}
    },
    "required": ["principal", "kind", "auth_method", "projects", "project", "server", "protocol"]
  })");
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
  descriptor_.needs_project = false;
}

namespace {
// Outside the coroutine: GCC 12 miscompiles brace-initialised json inside coroutines.
json describe(const CallContext& ctx, const std::string& server_name) {
  const auto& p = ctx.principal;
  json roles = json::object();
  for (const auto& [project, rs] : p.roles) roles[project] = rs;
  return json{{"principal", p.name},
           {"kind", p.kind},
           {"auth_method", p.auth_method},
           {"projects", p.projects},
           {"default_project", p.default_project()},
           {"project", ctx.project},
           {"server", {{"name", server_name}, {"version", kVersion}}},
           {"protocol", {{"version", ctx.protocol_version}, {"era", ctx.era}}},
           {"roles", std::move(roles)},
           {"groups", p.groups}};
}
}  // namespace

boost::asio::awaitable<ToolResult> WhoamiTool::call(const json&, CallContext& ctx) {
  const auto& p = ctx.principal;
  json out = describe(ctx, server_name_);
  std::string text = "You are " + p.name + " (" + p.kind + ", via " + p.auth_method + ")";
  text += ctx.project.empty() ? ", not acting for any project." : ", acting for project " + ctx.project + ".";
  co_return ToolResult::success(std::move(out), std::move(text));
}

}  // namespace scigate::tools
