#include "tools/registry.hpp"

#include "server/common/json_util.hpp"

#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>

#include <algorithm>
#include <stdexcept>

namespace scigate {

namespace {

// libstdc++'s std::regex (valijson's engine for `pattern` and `format`) recurses once per
// repeated character: "[0-9]+" over 30,000 digits overflows an I/O thread's stack and kills the
// server. So every string schema with a pattern or format must bound its length, and the pattern
// only runs on strings within that bound: {"pattern": P, "maxLength": M} is compiled as
// {"maxLength": M, "if": {"maxLength": M}, "then": {"pattern": P}} (valijson reports every
// failing keyword, so a plain pattern would still run on a string maxLength refused).
constexpr std::size_t kMaxPatternSubject = 4096;

void guard_patterns(json& node, const std::string& where);

void guard_each(json& map_of_schemas, const std::string& where) {
  if (!map_of_schemas.is_object()) return;
  for (auto& [k, sub] : map_of_schemas.items()) guard_patterns(sub, where + "." + k);
}

void guard_patterns(json& node, const std::string& where) {
  if (!node.is_object()) return;
  if (node.contains("patternProperties") || node.contains("propertyNames"))
    throw std::invalid_argument(where + ": patternProperties/propertyNames would run regexes on unbounded client keys");
  for (const char* k : {"properties", "definitions", "$defs"})
    if (auto it = node.find(k); it != node.end()) guard_each(*it, where + "." + k);
  for (const char* k : {"items", "additionalItems", "additionalProperties", "contains", "not", "if", "then", "else"})
    if (auto it = node.find(k); it != node.end()) {
      if (it->is_array())
        for (std::size_t i = 0; i < it->size(); ++i) guard_patterns((*it)[i], where + "." + k + "[" + std::to_string(i) + "]");
      else
        guard_patterns(*it, where + "." + k);
    }
  for (const char* k : {"allOf", "anyOf", "oneOf"})
    if (auto it = node.find(k); it != node.end() && it->is_array())
      for (std::size_t i = 0; i < it->size(); ++i) guard_patterns((*it)[i], where + "." + k + "[" + std::to_string(i) + "]");

  json regex_keywords = json::object();
  for (const char* k : {"pattern", "format"})
    if (auto it = node.find(k); it != node.end() && it->is_string()) regex_keywords[k] = *it;
  if (regex_keywords.empty()) return;
  auto max = node.find("maxLength");
  if (max == node.end() || !max->is_number_unsigned() || max->get<std::size_t>() > kMaxPatternSubject)
    throw std::invalid_argument(where + ": a pattern or format needs a maxLength of at most " +
                                std::to_string(kMaxPatternSubject) + " (std::regex recurses per character)");
  if (node.contains("if")) throw std::invalid_argument(where + ": pattern together with if/then is not supported");
  for (auto& [k, v] : regex_keywords.items()) node.erase(k);
  node["if"] = json{{"maxLength", *max}};
  node["then"] = std::move(regex_keywords);
}

json guarded(json schema, const std::string& where) {
  guard_patterns(schema, where);
  return schema;
}

}  // namespace

// valijson's compiled form of one schema. Validation only reads it, so it can be shared.
class CompiledSchema {
 public:
  CompiledSchema(const json& schema, const std::string& where) {
    const json source = guarded(schema, where);
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(source);
    parser.populateSchema(adapter, schema_);
  }
  // nullopt when valid; otherwise "<path>: <problem>" for the first problem found.
  std::optional<std::string> check(const json& value, const std::string& root) const {
    valijson::Validator validator(valijson::Validator::kStrongTypes);
    valijson::ValidationResults results;
    valijson::adapters::NlohmannJsonAdapter adapter(value);
    if (validator.validate(schema_, adapter, &results)) return std::nullopt;
    // valijson reports from the outside in; the innermost error is the most specific one.
    valijson::ValidationResults::Error err, last;
    std::size_t deepest = 0;
    bool any = false;
    while (results.popError(err)) {
      if (!any || err.context.size() > deepest) {
        last = err;
        deepest = err.context.size();
        any = true;
      }
    }
    std::string path = root;
    for (const auto& c : last.context) {
      if (c == "<root>") continue;
      // context entries look like ["name"] or [3]
      // valijson writes context entries as "[name]" for properties and "[3]" for items.
      std::string seg = c;
      if (seg.size() >= 2 && seg.front() == '[' && seg.back() == ']') seg = seg.substr(1, seg.size() - 2);
      bool index = !seg.empty() && std::all_of(seg.begin(), seg.end(), [](unsigned char ch) { return std::isdigit(ch); });
      path += index ? "[" + seg + "]" : "." + seg;
    }
    return path + ": " + last.description;
  }

 private:
  valijson::Schema schema_;
};

ToolRegistry::ToolRegistry() = default;
ToolRegistry::~ToolRegistry() = default;
ToolRegistry::ToolRegistry(ToolRegistry&&) noexcept = default;
ToolRegistry& ToolRegistry::operator=(ToolRegistry&&) noexcept = default;

void ToolRegistry::add(std::unique_ptr<Tool> tool) {
  const auto& d = tool->descriptor();
  if (d.name.empty() || d.name.size() > 128) throw std::invalid_argument("tool name must be 1..128 characters");
  for (char c : d.name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'))
      throw std::invalid_argument("tool name '" + d.name + "' has characters outside [A-Za-z0-9_.-]");
  if (entries_.count(d.name)) throw std::invalid_argument("duplicate tool " + d.name);
  if (d.description.size() >= 2048) throw std::invalid_argument("description of " + d.name + " is 2 KB or more");
  if (!d.input_schema.is_object() || d.input_schema.value("type", "") != "object")
    throw std::invalid_argument("inputSchema of " + d.name + " must be an object schema");
  if (!d.output_schema.is_null() && d.output_schema.value("type", "") != "object")
    throw std::invalid_argument("outputSchema of " + d.name + " must be an object schema");
  Entry e;
  e.input = std::make_unique<CompiledSchema>(d.input_schema, d.name + " inputSchema");
  if (!d.output_schema.is_null()) e.output = std::make_unique<CompiledSchema>(d.output_schema, d.name + " outputSchema");
  e.tool = std::move(tool);
  entries_.emplace(d.name, std::move(e));
  ordered_.clear();
  for (auto& [name, entry] : entries_) ordered_.push_back(entry.tool.get());
}

Tool* ToolRegistry::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.tool.get();
}

std::optional<Error> ToolRegistry::validate_arguments(const Tool& tool, const json& args) const {
  const auto& e = entries_.at(tool.descriptor().name);
  if (auto at = oversized_integer(args))
    return Error::invalid_arguments("invalid arguments for " + tool.descriptor().name + ": the integer at " + *at +
                                        " is too large (at most 9223372036854775807)",
                                    "send a number within the bounds the tool's inputSchema gives");
  if (auto problem = e.input->check(args, "arguments"))
    return Error::invalid_arguments("invalid arguments for " + tool.descriptor().name + ": " + *problem,
                                    "fix the argument and call again; tools/list shows the tool's inputSchema");
  return std::nullopt;
}

std::optional<std::string> ToolRegistry::validate_output(const Tool& tool, const json& structured) const {
  const auto& e = entries_.at(tool.descriptor().name);
  if (!e.output) return std::nullopt;
  return e.output->check(structured, "structuredContent");
}

json ToolRegistry::to_wire(const ToolDescriptor& d) {
  json t{{"name", d.name}, {"description", d.description}, {"inputSchema", d.input_schema}};
  if (!d.title.empty()) t["title"] = d.title;
  if (!d.output_schema.is_null()) t["outputSchema"] = d.output_schema;
  json ann{{"readOnlyHint", d.annotations.read_only},
           {"destructiveHint", d.annotations.destructive},
           {"idempotentHint", d.annotations.idempotent},
           {"openWorldHint", d.annotations.open_world}};
  if (!d.title.empty()) ann["title"] = d.title;
  t["annotations"] = std::move(ann);
  if (d.task_support != TaskSupport::kForbidden)
    t["execution"] = {{"taskSupport", d.task_support == TaskSupport::kRequired ? "required" : "optional"}};
  return t;
}

}  // namespace scigate
