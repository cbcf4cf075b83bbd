#pragma once
// call_inference and embed (docs/INFERENCE.md): metered calls to the OpenAI-compatible backends
// of connectors/inference.
//
// Metering, in the pipeline's terms:
// - derive_facts: `prompt_tokens` (an estimate that errs high: UTF-8 bytes / 3 plus a per-message
//   overhead, images at a flat rate) and `tokens` (prompt_tokens + max_tokens), which policy
//   conditions and token rate limits (`cost = "tokens"`) read.
// - worst_case_usage: tokens_in × prompt_tokens + tokens_out × max_tokens, charged to the
//   model's resources in the catalog (InferenceService::token_resources).
// - minimum_usage: the prompt and a few output tokens. A project that cannot pay the worst case
//   gets a hold of what it has, and max_tokens is cut to what that hold covers, so a budget is
//   never overrun mid-stream.
// - settle: the backend's usage; where it reports none, its /tokenize count; where that fails,
//   the whole hold. A call cancelled mid-stream pays the prompt and the chunks received.
#include "connectors/inference/inference_service.hpp"
#include "connectors/storage/areas.hpp"
#include "policies/credits.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

struct InferenceToolDeps {
  inference::InferenceService& service;
  const InferenceConfig& config;
  const credits::RateTable* rates = nullptr;  // null: no ledger (nothing to fit max_tokens to)
  storage::Areas* areas = nullptr;  // embed's save_to: where vectors are written (null: no areas)
};

// The prompt's size in tokens as policies and token rate limits read it (`prompt_tokens`): UTF-8
// bytes / 3 and a little per message, high for English prose (about 4 bytes a token), about
// right for multi-byte scripts, but a third of the truth for numbers and CSV.
int64_t estimate_prompt_tokens(const json& args);
// What the hold takes for an image, a video, audio or a file part where the model's context length
// is unknown (where it is known: the context, which no prompt exceeds). How many tokens such a
// part becomes is the model's processor's business and the server's settings' (an image at
// Qwen2.5-VL's default max_pixels is 16,384 tokens; mm_processor_kwargs can raise it; a video is
// frames x that), so only the context bounds it.
inline constexpr int64_t kMediaBoundTokens = 16384;
// ... and where it is known, at most this much of it per part.
inline constexpr int64_t kMaxMediaTokens = 131072;

// What the credit hold takes for the prompt (`prompt_tokens_bound`): one token per byte of every
// message field, which no byte-level tokenizer exceeds, and `media_bound` for each image, video,
// audio or file part (call_inference passes the model's context length where the backend reports
// it). A settle never posts more than its hold, so the hold must be the worst case, not the estimate.
int64_t prompt_token_bound(const json& args, int64_t media_bound = kMediaBoundTokens);

class CallInferenceTool final : public Tool {
 public:
  explicit CallInferenceTool(InferenceToolDeps deps);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  std::variant<json, Error> derive_facts(const json& args) const override;
  Usage worst_case_usage(const json& args) const override;
  std::optional<Usage> minimum_usage(const json& args) const override;
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

  // The largest max_tokens (at most `wanted`) whose worst case `held` micro-credits cover.
  static int64_t affordable_max_tokens(const credits::RateTable& rates, const inference::TokenResources& model,
                                       int64_t prompt_tokens, int64_t wanted, MicroCredits held);

 private:
  // The prompt tokens the hold is made for: prompt_token_bound, at most the model's context,
  // never below `estimate` (estimate_prompt_tokens of the same arguments, already computed).
  int64_t hold_prompt_tokens(const json& args, int64_t estimate) const;

  int64_t max_tokens_of(const json& args) const;
  ToolDescriptor descriptor_;
  InferenceToolDeps deps_;
};

class EmbedTool final : public Tool {
 public:
  explicit EmbedTool(InferenceToolDeps deps);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  std::variant<json, Error> derive_facts(const json& args) const override;
  Usage worst_case_usage(const json& args) const override;
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  InferenceToolDeps deps_;
};

}  // namespace scigate::tools
