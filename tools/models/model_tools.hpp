#pragma once
// The model registry tools (docs/MODELS.md): query_model_registry and get_model. Read-only and
// charged only the flat call fee. A project sees only the models its policy could let it call:
// a model is shown when PolicyEngine::could_permit(principal, project, T, {"model": id}) holds,
// where T is the inference tool for the model's modality (registry::inference_tool_for:
// "embed" for embedding models, "call_inference" for the rest). A hidden model is "not found".
#include "connectors/registry/model_registry.hpp"
#include "policies/credits.hpp"
#include "policies/policy.hpp"
#include "tools/tool.hpp"

namespace scigate::inference {
class InferenceService;
}

namespace scigate::tools {

// What the model tools need from the server; owned by App.
struct ModelToolDeps {
  registry::ModelRegistry& registry;
  const PolicyEngine& policy;            // asked from the registry's worker thread (thread-safe)
  const credits::RateTable* rates = nullptr;  // prices shown by get_model; null: none
  // The configured backends (their GPU type and health, for get_model's served_by); null: none.
  const inference::InferenceService* inference = nullptr;
};

class QueryModelRegistryTool final : public Tool {
 public:
  explicit QueryModelRegistryTool(ModelToolDeps deps);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  ModelToolDeps deps_;
};

class GetModelTool final : public Tool {
 public:
  explicit GetModelTool(ModelToolDeps deps);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  ModelToolDeps deps_;
};

// Whether `project` may see `model` (the rule above), for the tools and `scigate models list`.
bool model_visible(const PolicyEngine& policy, const Principal& principal, const std::string& project,
                   const registry::ModelRecord& model);

}  // namespace scigate::tools
