#pragma once
// The OpenAI-compatible API on scigate (POST /v1/chat/completions, POST /v1/embeddings,
// GET /v1/models): lab scripts and existing OpenAI clients use the centre's models with a
// scigate API key, under the same policies, credits and audit as the MCP tools, because each
// request IS a call_inference or embed call through the ToolCallPipeline.
//
// This class maps between the two vocabularies; the HTTP transport (server/transport) does the
// I/O: authentication, the event stream, disconnects. docs/INFERENCE.md "OpenAI-compatible
// endpoint".
//
// Thread-safety: stateless apart from its references; every method may be called concurrently.
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "connectors/inference/openai_wire.hpp"
#include "server/pipeline/tool_call_pipeline.hpp"

namespace scigate {
class PolicyEngine;
}
namespace scigate::inference {
class InferenceService;
}

namespace scigate::openai {

using nlohmann::json;

// An answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with a status.
struct ApiAnswer {
  int status = 200;
  json body;
  int64_t retry_after_ms = 0;  // for 429: the Retry-After header
};

ApiAnswer api_error(int status, const std::string& type, const std::string& message, const std::string& code = {});

// A request turned into a tool call, and how the client wants the answer.
struct MappedCall {
  ToolCallRequest request;
  bool stream = false;         // the client asked for server-sent events
  bool include_usage = false;  // stream_options.include_usage: forward the usage chunk
  bool base64 = false;         // embeddings: encoding_format "base64" (the OpenAI SDKs' default)
};

// An embeddings answer with each vector as base64 of little-endian float32, as OpenAI sends it
// for encoding_format "base64".
json embeddings_as_base64(json response);

class OpenAiApi {
 public:
  OpenAiApi(ToolCallPipeline& pipeline, const PolicyEngine& policy, inference::InferenceService& service)
      : pipeline_(pipeline), policy_(policy), service_(service) {}

  // POST /v1/chat/completions: the body as call_inference arguments (OpenAI parameters scigate
  // does not name go to `extra`), or the 400 that says what is wrong with it.
  static std::variant<MappedCall, ApiAnswer> map_chat(const json& body);
  // POST /v1/embeddings.
  static std::variant<MappedCall, ApiAnswer> map_embeddings(const json& body);

  // The answer for a finished call. `built`: the OpenAI body assembled from what the tool relayed
  // (chunks merged for chat, the backend's answer for embeddings).
  static ApiAnswer answer(const ToolCallOutcome& outcome, const json& built, const std::string& tool);
  // The OpenAI error event a stream ends with when the call fails after it started.
  static json stream_error(const ToolCallOutcome& outcome);
  // A chat answer rebuilt from call_inference's result alone, for a call that relayed no chunks
  // because it was not run again: a retry under an Idempotency-Key replays the first call's
  // result (its text, tool calls, finish reason and usage; the id is new). As one
  // "chat.completion", or as the chunks of a stream ("chat.completion.chunk"s, the usage chunk
  // last).
  static json completion_from_result(const json& call_result);
  static std::vector<json> chunks_from_result(const json& call_result);

  // GET /v1/models: what is served now and the project's policy lets the principal call.
  json models(const Principal& principal, const std::string& project) const;

  ToolCallPipeline& pipeline() { return pipeline_; }

 private:
  ToolCallPipeline& pipeline_;
  const PolicyEngine& policy_;
  inference::InferenceService& service_;
};

}  // namespace scigate::openai
