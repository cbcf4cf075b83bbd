#include "tools/models/model_tools.hpp"

#include <functional>
#include <map>

#include "connectors/inference/inference_service.hpp"

namespace scigate::tools {
namespace asio = boost::asio;
using registry::ModelRecord;

namespace {

ToolAnnotations read_only() {
  return ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
}

const char* kQuerySchema = R"json({
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "text": {"type": "string", "minLength": 1, "maxLength": 200,
             "description": "words to search for in model ids, names, families, tasks and descriptions (all must match; prefixes count)"},
    "modality": {"type": "string", "enum": ["text", "vision", "ocr", "embedding", "speech"]},
    "task": {"type": "string", "maxLength": 64, "pattern": "^[a-z0-9][a-z0-9-]{0,63}$", "description": "e.g. chat, tool-use, ocr, embedding, transcription"},
    "license": {"type": "string", "maxLength": 64, "description": "e.g. apache-2.0, mit, llama3.1 (case-insensitive)"},
    "family": {"type": "string", "maxLength": 128},
    "min_parameters": {"type": "integer", "minimum": 0, "description": "parameter count, e.g. 1000000000 for 1B"},
    "max_parameters": {"type": "integer", "minimum": 0},
    "min_context": {"type": "integer", "minimum": 0, "description": "context length in tokens"},
    "served_now": {"type": "boolean", "default": false, "description": "only models a backend serves now"},
    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    "cursor": {"type": "string", "maxLength": 300, "pattern": "^([0-9]{1,9}|k[0-9a-f]{2,280})[.][0-9a-f]{8}$",
               "description": "next_cursor of the previous page (same filters)"}
  }
})json";

const char* kQueryOutputSchema = R"json({
  "type": "object",
  "properties": {
    "models": {"type": "array", "items": {"type": "object", "required": ["id", "modality"]}},
    "next_cursor": {"type": ["string", "null"]},
    "hidden_by_policy": {"type": "integer", "minimum": 0, "description": "models of the catalog (not only matching ones) that the project's policy does not let it use; ask a project admin to permit them"}
  },
  "required": ["models", "next_cursor"]
})json";

const char* kGetSchema = R"json({
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "model": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
              "description": "a model id from query_model_registry"}
  },
  "required": ["model"]
})json";

const char* kGetOutputSchema = R"json({
  "type": "object",
  "properties": {
    "id": {"type": "string"},
    "modality": {"type": "string"},
    "tasks": {"type": "array", "items": {"type": "string"}},
    "rates": {"type": "object"},
    "prices": {"type": "object"},
    "served_by": {"type": "array", "items": {"type": "object", "required": ["backend", "seen_ms"],
                                             "properties": {"backend": {"type": "string"}, "seen_ms": {"type": "integer"},
                                                            "gpu_type": {"type": "string"}}}}
  },
  "required": ["id", "modality", "tasks", "rates", "served_by"]
})json";

std::optional<std::string> string_arg(const json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

std::optional<int64_t> int_arg(const json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

std::string model_line(const ModelRecord& m) {
  std::string s = m.id + " — " + m.modality + ", " + registry::size_text(m.parameters) + ", " +
                  std::to_string(m.context_length) + " ctx, " + m.license;
  if (!m.served_by.empty()) s += ", served";
  return s;
}

}  // namespace

bool model_visible(const PolicyEngine& policy, const Principal& principal, const std::string& project,
                   const ModelRecord& model) {
  json fixed = json::object();
  fixed["model"] = model.id;
  return policy.could_permit(principal, project, std::string(registry::inference_tool_for(model.modality)), fixed);
}

// --- query_model_registry --------------------------------------------------------------------

QueryModelRegistryTool::QueryModelRegistryTool(ModelToolDeps deps) : deps_(deps) {
  descriptor_.name = "query_model_registry";
  descriptor_.title = "Find models";
  descriptor_.description =
      "Searches the centre's catalog of open-weight models (LLMs, vision-language, OCR, embedding, speech) that this "
      "project may use. Filters: text (full-text over names, tasks and descriptions), modality, task, license, "
      "parameter count, minimum context length, served_now (a backend serves it now). One short object per model; "
      "pass next_cursor back as cursor (with the same filters) for the next page. get_model gives the full record.";
  descriptor_.input_schema = json::parse(kQuerySchema);
  descriptor_.output_schema = json::parse(kQueryOutputSchema);
  descriptor_.annotations = read_only();
}

asio::awaitable<ToolResult> QueryModelRegistryTool::call(const json& args, CallContext& ctx) {
  registry::ModelFilter f;
  f.text = string_arg(args, "text");
  f.modality = string_arg(args, "modality");
  f.task = string_arg(args, "task");
  f.license = string_arg(args, "license");
  f.family = string_arg(args, "family");
  f.min_parameters = int_arg(args, "min_parameters");
  f.max_parameters = int_arg(args, "max_parameters");
  f.min_context = int_arg(args, "min_context");
  if (auto it = args.find("served_now"); it != args.end() && it->is_boolean()) f.served_now = it->get<bool>();
  if (auto l = int_arg(args, "limit")) f.limit = static_cast<std::size_t>(*l);
  if (auto c = string_arg(args, "cursor")) f.cursor = *c;

  const PolicyEngine& policy = deps_.policy;
  registry::ModelCatalog::Visible visible = [&policy, principal = ctx.principal,
                                             project = ctx.project](const ModelRecord& m) {
    return model_visible(policy, principal, project, m);
  };
  auto r = co_await deps_.registry.query(std::move(f), std::move(visible));
  if (auto* e = std::get_if<registry::QueryError>(&r))
    co_return ToolResult::failure(Error::invalid_arguments(e->message, e->hint));
  const auto& page = std::get<registry::ModelPage>(r);

  json out = json::object();
  json arr = json::array();
  std::string text;
  for (const auto& m : page.models) {
    arr.push_back(registry::compact_json(m));
    text += model_line(m) + "\n";
  }
  out["models"] = std::move(arr);
  out["next_cursor"] = page.next_cursor.empty() ? json(nullptr) : json(page.next_cursor);
  out["hidden_by_policy"] = page.hidden;
  if (page.models.empty()) text = "no models match\n";
  else if (!page.next_cursor.empty()) text += "more: cursor " + page.next_cursor + "\n";
  if (page.hidden > 0)
    text += std::to_string(page.hidden) + " model" + (page.hidden == 1 ? " in the catalog is" : "s in the catalog are") +
            " not available to project " + ctx.project + " under its policy (an admin of the project can permit them)";
  if (!text.empty() && text.back() == '\n') text.pop_back();
  ctx.audit_fields["models_returned"] = page.models.size();
  co_return ToolResult::success(std::move(out), text);
}

// --- get_model -------------------------------------------------------------------------------

GetModelTool::GetModelTool(ModelToolDeps deps) : deps_(deps) {
  descriptor_.name = "get_model";
  descriptor_.title = "Describe a model";
  descriptor_.description =
      "The full registry record of one model this project may use: revision, family, modality, tasks, parameter "
      "count, context length, quantization, license, source, weights checksum, GPU memory, description, the credit "
      "resources its use is charged to (with prices where set), and which backends serve it now (served_by).";
  descriptor_.input_schema = json::parse(kGetSchema);
  descriptor_.output_schema = json::parse(kGetOutputSchema);
  descriptor_.annotations = read_only();
}

asio::awaitable<ToolResult> GetModelTool::call(const json& args, CallContext& ctx) {
  std::string id = args["model"].get<std::string>();
  auto m = co_await deps_.registry.get(id);
  // A model the project may not use is "not found", like one that does not exist: the registry
  // does not tell a project what it is kept from.
  if (!m || !model_visible(deps_.policy, ctx.principal, ctx.project, *m))
    co_return ToolResult::failure(Error{ErrorCode::kNotFound,
                                        "no model " + id + " in the registry for project " + ctx.project,
                                        "query_model_registry lists the models this project may use", {}});
  json out = registry::full_json(*m);
  json prices = json::object();
  if (deps_.rates) {
    for (const auto& [kind, resource] : m->rates) {
      const credits::Rate* rate = deps_.rates->find(resource);
      if (!rate || rate->pico_per_unit == 0) continue;
      json p = json::object();
      p["resource"] = resource;
      p["credits_per_unit"] = credits::format_rate(rate->pico_per_unit);
      p["unit"] = rate->unit;
      prices[kind] = std::move(p);
    }
  }
  out["prices"] = std::move(prices);
  // What each serving backend runs on, from the server's config (the registry only knows ids).
  std::map<std::string, std::string> gpu;
  if (deps_.inference)
    for (const auto& b : deps_.inference->backends())
      if (!b.gpu_type.empty()) gpu[b.id] = b.gpu_type;
  for (auto& s : out["served_by"])
    if (auto g = gpu.find(s.value("backend", "")); g != gpu.end()) s["gpu_type"] = g->second;
  std::string text = model_line(*m);
  if (!m->description.empty()) text += "\n" + m->description;
  text += m->served_by.empty() ? "\nnot served by any backend now" : "\nserved by";
  for (const auto& s : m->served_by) {
    text += " " + s.backend;
    if (auto g = gpu.find(s.backend); g != gpu.end()) text += " (" + g->second + ")";
  }
  co_return ToolResult::success(std::move(out), text);
}

}  // namespace scigate::tools
