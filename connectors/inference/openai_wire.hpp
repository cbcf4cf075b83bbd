#pragma once
// The OpenAI-compatible wire format as vLLM and llama.cpp's llama-server speak it: server-sent
// events, both error bodies, usage objects. Pure functions and one small parser; no I/O.
//
// Quirks handled (docs/INFERENCE.md "Backends"):
// - vLLM answers errors flat, {"object":"error","message":…,"type":…,"code":400} (before 0.8),
//   or nested, {"error":{"message":…,"type":…,"code":…}} (later versions); llama.cpp nests
//   ({"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}).
// - A stream's usage comes in a last chunk with "choices": [] when stream_options.include_usage
//   was asked (vLLM); llama.cpp puts usage (and "timings") in its final chunk unasked.
// - An error can arrive inside a stream as `data: {"error": …}` after a 200 head.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace scigate::inference {

using nlohmann::json;

// One server-sent event: its data, or (llama.cpp, for an error found after the stream began)
// the value of an `error:` field, which OpenAI clients would ignore.
struct SseEvent {
  std::string data;
  bool error = false;
};

// Incremental text/event-stream parser (the WHATWG rules that matter here): lines end with
// \n, \r\n or \r; `data:` lines of one event are joined with \n; a blank line dispatches;
// comment lines (":") and fields other than data and error are ignored. Holds at most one
// partial line.
class SseParser {
 public:
  explicit SseParser(std::size_t max_event_bytes = 8u << 20) : max_(max_event_bytes) {}
  // Appends complete events to *events. False when an event grows past the limit.
  bool feed(std::string_view bytes, std::vector<SseEvent>* events);
  // Whether bytes of an unfinished event are buffered (a stream cut mid-event).
  bool partial() const { return !line_.empty() || has_data_ || has_error_; }

 private:
  void end_line(std::vector<SseEvent>* events);
  std::string line_;
  std::string data_;
  std::string error_;
  bool has_data_ = false;
  bool has_error_ = false;
  bool last_cr_ = false;
  std::size_t max_;
};

struct UpstreamError {
  std::string message;
  std::string type;
  int code = 0;  // the body's code (often the HTTP status), 0 when absent
};

// The error an answer body carries, in any of the three shapes (or a bare {"message", "code"}
// object, as llama.cpp's stream `error:` field holds); nullopt when it is not one.
std::optional<UpstreamError> parse_error(const json& body);
std::optional<UpstreamError> parse_error_text(std::string_view body);

struct TokenUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// body["usage"] when it has integer prompt_tokens (completion_tokens may be absent: embeddings).
std::optional<TokenUsage> parse_usage(const json& body);

// What one chat (or completions) stream chunk adds: content text, a finish reason.
struct ChunkDelta {
  std::string text;
  std::string finish_reason;
  bool has_content = false;  // a content, reasoning or tool-call delta (counts as generated output)
};
ChunkDelta chunk_delta(const json& chunk);

// The text and finish reason of a non-streamed chat or completions answer (first choice).
ChunkDelta answer_delta(const json& body);

// Builds the answer a non-streaming client expects ("chat.completion", or "text_completion")
// from the chunks of a stream: per choice, content and reasoning text concatenated, tool calls
// merged by index (id, name, arguments pieces), logprobs appended, the last finish reason; id,
// created, model and system_fingerprint from the chunks; usage from the usage chunk.
class CompletionBuilder {
 public:
  void add(const json& chunk);
  json build() const;
  // The first choice's tool calls so far (empty array when none).
  json tool_calls() const;
  // Everything the first choice generated, as text for a tokenizer: its content (or completion
  // text), its reasoning, and its tool calls' names and arguments.
  std::string generated_text() const;

 private:
  struct Choice {
    std::string role = "assistant";
    std::string content, reasoning, text;
    bool has_content = false, has_reasoning = false;
    json tool_calls = json::array();
    json logprobs;  // null, or {"content": [...]}
    json finish_reason;
  };
  std::string object_ = "chat.completion";
  json id_, created_, model_, fingerprint_, usage_;
  std::vector<Choice> choices_;
};

}  // namespace scigate::inference
