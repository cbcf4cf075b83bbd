#include "tools/inference/inference_tools.hpp"

#include <boost/asio/error.hpp>
#include <boost/system/system_error.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "server/common/crypto.hpp"
#include "server/common/time_format.hpp"

namespace scigate::tools {
namespace asio = boost::asio;

namespace {

constexpr int64_t kPerMessageTokens = 8;   // role markers and separators of a chat template
constexpr int64_t kPerCallTokens = 16;     // the template's frame around the conversation
constexpr int64_t kPerImageTokens = 1600;  // a high-resolution image tile set in a VLM (the estimate)
constexpr int64_t kMinimumOutput = 16;     // the least output a budget-fitted call is worth

constexpr const char* kChatSchema = R"({
  "type": "object",
  "properties": {
    "model": {"type": "string", "minLength": 1, "maxLength": 256,
              "description": "Model id, as query_model_registry lists it (served_now = true)."},
    "messages": {"type": "array", "minItems": 1, "maxItems": 2000,
                 "description": "The conversation: [{role: system|user|assistant|tool, content}]. Content may be a string or OpenAI content parts (text, image_url) for vision models.",
                 "items": {"type": "object",
                           "properties": {"role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                                          "content": {"type": ["string", "array", "null"]},
                                          "name": {"type": "string"},
                                          "tool_call_id": {"type": "string"},
                                          "tool_calls": {"type": "array"}},
                           "required": ["role"]}},
    "prompt": {"type": "string", "description": "A plain prompt for a base (non-chat) model, instead of messages."},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000,
                   "description": "Most tokens to generate. Held up front; cut to what the project can pay."},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "stop": {"type": ["string", "array"], "items": {"type": "string"}, "maxItems": 8},
    "seed": {"type": "integer"},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "response_format": {"type": "object", "description": "e.g. {\"type\": \"json_object\"} or a json_schema"},
    "extra": {"type": "object",
              "description": "Other OpenAI chat parameters, passed to the model server as given (tools, tool_choice, logprobs, top_k, ...)."}
  },
  "required": ["model"],
  "additionalProperties": false
})";

constexpr const char* kChatOutput = R"({
  "type": "object",
  "properties": {
    "text": {"type": "string"},
    "finish_reason": {"type": "string"},
    "tool_calls": {"type": "array"},
    "model": {"type": "string"},
    "backend": {"type": "string"},
    "max_tokens": {"type": "integer"},
    "max_tokens_capped": {"type": "boolean"},
    "usage": {"type": "object",
              "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                             "total_tokens": {"type": "integer"},
                             "counted_by": {"type": "string", "enum": ["backend", "tokenize", "hold"]}},
              "required": ["prompt_tokens", "completion_tokens", "total_tokens", "counted_by"]}
  },
  "required": ["text", "finish_reason", "model", "backend", "max_tokens", "usage"]
})";

constexpr const char* kEmbedSchema = R"({
  "type": "object",
  "properties": {
    "model": {"type": "string", "minLength": 1, "maxLength": 256,
              "description": "An embedding model's id (query_model_registry with modality = embedding)."},
    "input": {"type": ["string", "array"], "items": {"type": "string"}, "minItems": 1,
              "description": "A text, or a list of texts, to embed."},
    "dimensions": {"type": "integer", "minimum": 1, "maximum": 65536,
                   "description": "Truncate the vectors to this many dimensions, where the model supports it."},
    "summary_only": {"type": "boolean", "default": false,
                     "description": "Return only the vectors' shape and norms, not the numbers."},
    "save_to": {"type": "string", "minLength": 9, "maxLength": 4096, "pattern": "^area://",
                "description": "Write the vectors to a new file in one of the project's storage areas (JSON Lines: one array of numbers per input, in input order), e.g. area://scratch/emb/batch1.jsonl, and return its location and SHA-256 instead of the numbers. For results too large to return inline."}
  },
  "required": ["model", "input"],
  "additionalProperties": false
})";

constexpr const char* kEmbedOutput = R"({
  "type": "object",
  "properties": {
    "model": {"type": "string"},
    "backend": {"type": "string"},
    "count": {"type": "integer"},
    "dimensions": {"type": "integer"},
    "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    "norms": {"type": "array", "items": {"type": "number"}},
    "inline": {"type": "boolean"},
    "saved": {"type": "object",
              "properties": {"uri": {"type": "string"}, "bytes": {"type": "integer"}, "sha256": {"type": "string"},
                             "format": {"type": "string", "enum": ["jsonl"]},
                             "auto": {"type": "boolean", "description": "written without save_to, because the vectors were too large to return inline"}},
              "required": ["uri", "bytes", "sha256", "format"]},
    "note": {"type": "string"},
    "usage": {"type": "object",
              "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"},
                             "counted_by": {"type": "string"}},
              "required": ["prompt_tokens", "total_tokens", "counted_by"]}
  },
  "required": ["model", "backend", "count", "dimensions", "inline", "usage"]
})";

// Tokens of `bytes` of text: about a third as many for English and code (the estimate policies
// and rate limits read), or at most as many (the bound the credit hold takes: byte-level BPE and
// byte-fallback tokenizers never make more tokens than bytes, and numbers or CSV come close to
// one token per byte, 3x the estimate).
int64_t text_tokens(std::size_t bytes, bool bound) {
  return bound ? static_cast<int64_t>(bytes) : static_cast<int64_t>((bytes + 2) / 3);
}

// `media_bound`: what the bound takes for a part that is not text (kMediaBoundTokens or the
// model's context length); the estimate takes kPerImageTokens.
int64_t content_tokens(const json& content, bool bound, int64_t media_bound) {
  if (content.is_string()) return text_tokens(content.get_ref<const std::string&>().size(), bound);
  if (!content.is_array()) return 0;
  int64_t n = 0;
  for (const auto& part : content) {
    if (!part.is_object()) continue;
    auto t = part.find("type");
    const std::string type = t != part.end() && t->is_string() ? t->get<std::string>() : std::string();
    auto text = part.find("text");
    if (text != part.end() && text->is_string())  // text, input_text, output_text, thinking, ...
      n += text_tokens(text->get_ref<const std::string&>().size(), bound);
    else if (type == "text" || type == "refusal")  // text in another shape: its bytes
      n += text_tokens(part.dump().size(), bound);
    else  // image_url, video_url, input_audio, file, ...: what the model's processor makes of it,
          // and never less than its bytes would be as text (a part of a type no one knows)
      n += std::max(bound ? media_bound : kPerImageTokens, text_tokens(part.dump().size(), bound));
  }
  return n;
}

// Keys of `extra` that scigate sets itself, or that would make the backend do more than the
// hold covers: another name for the output length (llama.cpp reads n_predict before max_tokens,
// and -1 there is "no limit"), or several completions of which one is metered.
struct ReservedKey {
  const char* key;
  const char* why;
  const char* hint;
};
const ReservedKey* reserved_extra_key(const json& extra) {
  static const ReservedKey kReserved[] = {
      {"model", "is set by scigate", "leave it out of extra"},
      {"messages", "is set by scigate", "leave it out of extra"},
      {"prompt", "is set by scigate", "leave it out of extra"},
      {"stream", "is set by scigate", "leave it out of extra"},
      {"stream_options", "is set by scigate", "leave it out of extra"},
      {"max_tokens", "is set by scigate", "leave it out of extra; use max_tokens"},
      {"max_completion_tokens", "is set by scigate", "leave it out of extra; use max_tokens"},
      {"n_predict", "would set the output length past what the call holds credits for", "use max_tokens"},
      {"max_new_tokens", "would set the output length past what the call holds credits for", "use max_tokens"},
      {"num_predict", "would set the output length past what the call holds credits for", "use max_tokens"},
      {"best_of", "makes the backend generate several completions, of which one is metered",
       "make one call per completion you want"},
      {"use_beam_search", "makes the backend generate several completions, of which one is metered",
       "leave it out"},
  };
  for (const auto& r : kReserved)
    if (extra.contains(r.key)) return &r;
  return nullptr;
}

json usage_json(int64_t prompt, int64_t completion, const std::string& counted_by) {
  json u = json::object();
  u["prompt_tokens"] = prompt;
  u["completion_tokens"] = completion;
  u["total_tokens"] = prompt + completion;
  u["counted_by"] = counted_by;
  return u;
}

// Charged to the model's resources in the catalog (tokens_in:<model> and tokens_out:<model>
// unless its manifest names others).
Usage token_usage(const inference::TokenResources& to, int64_t in, int64_t out) {
  Usage u;
  u.add(to.in, static_cast<double>(in), std::to_string(in) + " prompt tokens");
  if (out >= 0) u.add(to.out, static_cast<double>(out), std::to_string(out) + " generated tokens");
  return u;
}

// The body sent upstream: the caller's sampling parameters over `extra`.
json upstream_body(const json& args, int64_t max_tokens) {
  json body = args.contains("extra") && args["extra"].is_object() ? args["extra"] : json::object();
  for (const char* k : {"messages", "prompt", "temperature", "top_p", "stop", "seed", "presence_penalty",
                        "frequency_penalty", "response_format"})
    if (args.contains(k)) body[k] = args[k];
  body["max_tokens"] = max_tokens;
  return body;
}

json chat_result(const inference::ChatOutcome& out, const json& tool_calls, const std::string& model, int64_t max_tokens,
                 bool capped, const json& usage) {
  json r = json::object();
  r["text"] = out.text;
  r["finish_reason"] = out.finish_reason.empty() ? std::string("unknown") : out.finish_reason;
  if (!tool_calls.empty()) r["tool_calls"] = tool_calls;
  r["model"] = model;
  r["backend"] = out.backend;
  r["max_tokens"] = max_tokens;
  if (capped) r["max_tokens_capped"] = true;
  r["usage"] = usage;
  return r;
}

std::string chat_text(const json& r) {
  std::string t = r["text"].get<std::string>();
  if (r.contains("tool_calls")) t += (t.empty() ? "" : "\n") + std::string("[tool calls] ") + r["tool_calls"].dump();
  const json& u = r["usage"];
  t += "\n\n[" + r["model"].get<std::string>() + " on " + r["backend"].get<std::string>() + ": " +
       std::to_string(u["prompt_tokens"].get<int64_t>()) + " prompt + " +
       std::to_string(u["completion_tokens"].get<int64_t>()) + " generated tokens, finish " +
       r["finish_reason"].get<std::string>() + "]";
  if (r.contains("max_tokens_capped"))
    t += "\n[max_tokens was cut to " + std::to_string(r["max_tokens"].get<int64_t>()) + " by the project's credits]";
  return t;
}

// The record says which model ran where, and what it counted: an auditor reads the bill from it.
json audit_facts(const std::string& model, const inference::ChatOutcome& out, const json& usage) {
  json a = json::object();
  a["model"] = model;
  a["backend"] = out.backend;
  a["attempts"] = out.attempts;
  a["usage"] = usage;
  return a;
}

[[noreturn]] void throw_cancelled() {
  throw boost::system::system_error(asio::error::operation_aborted);
}

}  // namespace

namespace {
int64_t prompt_tokens(const json& args, bool bound, int64_t media_bound = kMediaBoundTokens) {
  int64_t n = kPerCallTokens;
  if (auto m = args.find("messages"); m != args.end() && m->is_array()) {
    for (const auto& msg : *m) {
      n += kPerMessageTokens;
      if (!msg.is_object()) continue;
      for (auto it = msg.begin(); it != msg.end(); ++it) {
        if (it.key() == "content") n += content_tokens(*it, bound, media_bound);
        // The bound takes every other field too: a chat template may render any of them (an
        // assistant's reasoning_content, a tool message's name, ...).
        else if (it.key() == "tool_calls" || (bound && it.key() != "role"))
          n += text_tokens(it.key().size() + it->dump().size(), bound);
      }
    }
  }
  if (auto p = args.find("prompt"); p != args.end() && p->is_string()) n += content_tokens(*p, bound, media_bound);
  // Tool definitions, and for the bound all of extra (documents, template arguments) the
  // backend may render into the prompt.
  if (auto e = args.find("extra"); e != args.end() && e->is_object()) {
    if (bound) n += text_tokens(e->dump().size(), true);
    else if (e->contains("tools")) n += text_tokens((*e)["tools"].dump().size(), false);
  }
  if (auto i = args.find("input"); i != args.end()) {  // embed
    if (i->is_string()) n += content_tokens(*i, bound, media_bound);
    else if (i->is_array())
      for (const auto& s : *i) n += 1 + content_tokens(s, bound, media_bound);
  }
  return n;
}
}  // namespace

int64_t estimate_prompt_tokens(const json& args) { return prompt_tokens(args, false); }
int64_t prompt_token_bound(const json& args, int64_t media_bound) { return prompt_tokens(args, true, media_bound); }

// --- call_inference --------------------------------------------------------------------------

CallInferenceTool::CallInferenceTool(InferenceToolDeps deps) : deps_(deps) {
  descriptor_.name = "call_inference";
  descriptor_.title = "Generate text with a served model";
  descriptor_.description =
      "Generates text with an open-weight language or vision model on the centre's GPU servers (OpenAI-compatible "
      "chat). Pick `model` with query_model_registry (served_now = true), give `messages` (or `prompt` for a base "
      "model) and max_tokens. Charged per token: the prompt and max_tokens are held before the call, the backend's "
      "count is charged after; a project that cannot pay for max_tokens gets it cut to what it can pay (the result "
      "says so). Long generations report progress; cancelling stops the generation and pays for what was generated.";
  descriptor_.input_schema = json::parse(kChatSchema);
  descriptor_.input_schema["properties"]["max_tokens"]["default"] = deps_.config.default_max_tokens;
  descriptor_.output_schema = json::parse(kChatOutput);
  descriptor_.annotations = ToolAnnotations{false, false, false, true};  // spends credits: not "read-only"
}

int64_t CallInferenceTool::max_tokens_of(const json& args) const {
  if (auto m = args.find("max_tokens"); m != args.end() && m->is_number_integer()) return m->get<int64_t>();
  return deps_.config.default_max_tokens;
}

std::variant<json, Error> CallInferenceTool::derive_facts(const json& args) const {
  const bool has_messages = args.contains("messages"), has_prompt = args.contains("prompt");
  if (has_messages == has_prompt)
    return Error::invalid_arguments(has_messages ? "give messages or prompt, not both" : "give messages (or prompt)",
                                    "messages for chat models: [{\"role\": \"user\", \"content\": \"...\"}]");
  if (auto e = args.find("extra"); e != args.end()) {
    if (const ReservedKey* r = reserved_extra_key(*e))
      return Error::invalid_arguments(std::string("extra.") + r->key + " " + r->why, r->hint);
    // The number of completions: `n` (OpenAI, vLLM), `n_cmpl` (llama.cpp's own name; `n` is its
    // alias): one is what the hold is for.
    for (const char* key : {"n", "n_cmpl"})
      if (auto n = e->find(key); n != e->end() && !(n->is_number_integer() && n->get<int64_t>() == 1))
        return Error::invalid_arguments(std::string("extra.") + key + " must be 1", "make one call per completion you want");
  }
  json facts = json::object();
  int64_t prompt = estimate_prompt_tokens(args);
  facts["prompt_tokens"] = prompt;
  facts["tokens"] = prompt + max_tokens_of(args);
  facts["prompt_tokens_bound"] = hold_prompt_tokens(args, prompt);
  return facts;
}

int64_t CallInferenceTool::hold_prompt_tokens(const json& args, int64_t estimate) const {
  // No prompt longer than the model's context gets through the backend: it bounds the whole
  // prompt, and an image, video or audio part alone.
  auto len = deps_.service.max_model_len(args.value("model", ""));
  const bool known = len && *len > 0;
  // One media part is held at most at kMaxMediaTokens, however long a context the backend
  // reports (a 10M-token context would make every image call unaffordable, or overflow).
  int64_t bound = prompt_token_bound(args, known ? std::min(*len, kMaxMediaTokens) : kMediaBoundTokens);
  if (known) bound = std::min(bound, *len);
  return std::max(bound, estimate);
}

namespace {
int64_t held_prompt(const json& decided) {
  return decided.value("prompt_tokens_bound", decided.value("prompt_tokens", int64_t(0)));
}
}  // namespace

Usage CallInferenceTool::worst_case_usage(const json& args) const {
  return token_usage(deps_.service.token_resources(args.value("model", "")), held_prompt(args), max_tokens_of(args));
}

std::optional<Usage> CallInferenceTool::minimum_usage(const json& args) const {
  return token_usage(deps_.service.token_resources(args.value("model", "")), held_prompt(args),
                     std::min(max_tokens_of(args), kMinimumOutput));
}

int64_t CallInferenceTool::affordable_max_tokens(const credits::RateTable& rates, const inference::TokenResources& model,
                                                 int64_t prompt_tokens, int64_t wanted, MicroCredits held) {
  auto fits = [&](int64_t n) {
    Usage u = token_usage(model, prompt_tokens, n);
    u.add("call:call_inference", 1);
    return rates.price(u) <= held;
  };
  if (fits(wanted)) return wanted;
  int64_t lo = 0, hi = wanted;  // fits(lo) is assumed; !fits(hi)
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return std::max<int64_t>(1, lo);
}

asio::awaitable<ToolResult> CallInferenceTool::call(const json& args, CallContext& ctx) {
  const std::string model = args["model"].get<std::string>();
  const inference::TokenResources charged_to = deps_.service.token_resources(model);
  const int64_t prompt_estimate = estimate_prompt_tokens(args);
  const int64_t prompt_held = hold_prompt_tokens(args, prompt_estimate);  // as the hold was sized
  const int64_t wanted = max_tokens_of(args);
  int64_t max_tokens = wanted;
  if (ctx.metered && deps_.rates)
    max_tokens = affordable_max_tokens(*deps_.rates, charged_to, prompt_held, wanted, ctx.held);
  const bool capped = max_tokens < wanted;

  inference::ChatCall call;
  call.model = model;
  call.body = upstream_body(args, max_tokens);
  call.stream = true;
  call.completions = args.contains("prompt");
  call.deadline = ctx.deadline;

  // What a call cut short pays: the prompt, and the chunks that came (about a token each).
  ctx.incurred = token_usage(charged_to, prompt_estimate, 0);
  inference::CompletionBuilder builder;
  int64_t chunks = 0;
  CallContext* c = &ctx;
  inference::CompletionBuilder* b = &builder;
  int64_t* n = &chunks;
  inference::ChunkSink sink = [c, b, n, max_tokens](const json& chunk) {
    b->add(chunk);
    if (!inference::chunk_delta(chunk).has_content) {
      if (c->partial) c->partial(chunk);
      return;
    }
    ++*n;
    c->incurred.lines[1].quantity = static_cast<double>(*n);
    if (c->partial) c->partial(chunk);
    if (*n % 16 == 0) c->progress.report(static_cast<double>(*n), static_cast<double>(max_tokens), "tokens generated");
  };
  inference::ChatOutcome out = co_await deps_.service.chat(std::move(call), sink);
  ctx.incurred.lines[1].quantity = static_cast<double>(out.content_chunks);
  if (out.cancelled || ctx.cancelled()) throw_cancelled();
  if (out.error) {
    ToolResult r = ToolResult::failure(*out.error);
    ctx.audit_fields = audit_facts(model, out, usage_json(prompt_estimate, out.content_chunks, "hold"));
    // Output that reached the caller is paid for; a refusal before any is not.
    if (out.delivered) r.usage = ctx.incurred;
    ctx.incurred = Usage{};
    co_return r;
  }
  // What to charge: the backend's count, else its tokenizer's, else the hold. ctx.incurred (the
  // prompt estimate and the chunks) stays until it is known: a call cancelled while the
  // tokenizer is asked still pays for what was generated.
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::string counted_by = "backend";
  if (out.usage) {
    prompt_tokens = out.usage->prompt_tokens;
    // A usage that says nothing was generated (or has no completion_tokens) after chunks with
    // output is not believed: each of them carried at least one token. (Not a floor otherwise:
    // llama.cpp may send a token as several chunks, one per changed field.)
    completion_tokens = out.usage->completion_tokens > 0 ? out.usage->completion_tokens : out.content_chunks;
  } else {
    json input = args.contains("messages") ? args["messages"] : args["prompt"];
    // All of it: the text, the reasoning and the tool calls.
    json generated = builder.generated_text();
    std::optional<int64_t> p = co_await deps_.service.count_tokens(out.backend, model, std::move(input));
    std::optional<int64_t> g;
    if (p) g = co_await deps_.service.count_tokens(out.backend, model, std::move(generated));
    if (p && g) {
      prompt_tokens = *p;
      completion_tokens = *g;
      counted_by = "tokenize";
    } else {
      prompt_tokens = prompt_held;
      completion_tokens = max_tokens;
      counted_by = "hold";
    }
  }
  ctx.incurred = Usage{};
  json usage = usage_json(prompt_tokens, completion_tokens, counted_by);
  json structured = chat_result(out, builder.tool_calls(), model, max_tokens, capped, usage);
  std::string text = chat_text(structured);
  ctx.audit_fields = audit_facts(model, out, usage);
  ToolResult r = ToolResult::success(std::move(structured), std::move(text));
  r.usage = token_usage(charged_to, prompt_tokens, completion_tokens);
  co_return r;
}

// --- embed -----------------------------------------------------------------------------------

EmbedTool::EmbedTool(InferenceToolDeps deps) : deps_(deps) {
  descriptor_.name = "embed";
  descriptor_.title = "Embed texts as vectors";
  descriptor_.description =
      "Turns texts into embedding vectors with an embedding model served on the centre's GPUs (OpenAI-compatible). "
      "Charged per input token. Small results come back inline; large ones (or with summary_only) as their shape and "
      "norms, so that a batch does not flood the conversation. With save_to, the vectors are written to a file in one "
      "of the project's storage areas and the result names it (read it from a job, or with read_file).";
  descriptor_.input_schema = json::parse(kEmbedSchema);
  descriptor_.input_schema["properties"]["input"]["maxItems"] = deps_.config.max_embedding_inputs;
  descriptor_.output_schema = json::parse(kEmbedOutput);
  descriptor_.annotations = ToolAnnotations{false, false, false, true};
}

std::variant<json, Error> EmbedTool::derive_facts(const json& args) const {
  json facts = json::object();
  int64_t n = estimate_prompt_tokens(args) - kPerCallTokens;
  facts["prompt_tokens"] = n;
  facts["tokens"] = n;
  facts["prompt_tokens_bound"] = prompt_token_bound(args) - kPerCallTokens;  // what the hold takes
  if (args.contains("save_to")) {
    // Policy sees where the vectors would go, as it does for stage_data's destination.
    auto where = storage::parse_location(args["save_to"].get<std::string>());
    if (auto* e = std::get_if<Error>(&where)) return *e;
    facts["destination_area"] = std::get<storage::Location>(where).area;
  }
  return facts;
}

Usage EmbedTool::worst_case_usage(const json& args) const {
  return token_usage(deps_.service.token_resources(args.value("model", "")), held_prompt(args), -1);
}

namespace {

struct Vectors {
  json vectors = json::array();
  json norms = json::array();
  std::size_t dimensions = 0;
  std::size_t bytes = 0;
  bool ok = true;
};

Vectors read_vectors(const json& response) {
  Vectors v;
  const json* data = response.contains("data") && response["data"].is_array() ? &response["data"] : nullptr;
  if (!data) {
    v.ok = false;
    return v;
  }
  std::vector<const json*> ordered(data->size(), nullptr);
  for (std::size_t i = 0; i < data->size(); ++i) {
    const json& item = (*data)[i];
    std::size_t index = i;
    if (item.is_object())
      if (auto ix = item.find("index"); ix != item.end()) {
        if (!ix->is_number_unsigned()) {  // a string, a negative or a fraction: not an answer to place
          v.ok = false;
          return v;
        }
        index = ix->get<std::size_t>();
      }
    if (index >= ordered.size() || !item.is_object() || !item.contains("embedding") || !item["embedding"].is_array()) {
      v.ok = false;
      return v;
    }
    ordered[index] = &item["embedding"];
  }
  for (const json* e : ordered) {
    if (!e) {
      v.ok = false;
      return v;
    }
    double sum = 0;
    for (const auto& x : *e)
      if (x.is_number()) sum += x.get<double>() * x.get<double>();
    v.norms.push_back(std::sqrt(sum));
    v.dimensions = std::max(v.dimensions, e->size());
    v.bytes += e->size() * 12;  // about what one number takes as JSON text
    v.vectors.push_back(*e);
  }
  return v;
}

// One JSON array of numbers per line, in input order.
std::shared_ptr<const std::string> vectors_jsonl(const Vectors& v) {
  auto out = std::make_shared<std::string>();
  for (const auto& vec : v.vectors) {
    *out += vec.dump();
    *out += '\n';
  }
  return out;
}

json saved_json(const std::string& uri, const storage::WriteResult& w) {
  json s = json::object();
  s["uri"] = uri;
  s["bytes"] = w.bytes;
  s["sha256"] = w.sha256;
  s["format"] = "jsonl";
  return s;
}

std::optional<Error> check_save_to(const storage::Areas* areas, const std::string& project, const std::string& uri) {
  if (!areas)
    return Error{ErrorCode::kInvalidArguments, "this server has no storage areas to save vectors to",
                 "leave out save_to (and embed fewer texts per call), or ask the operators to configure [data] areas", {}};
  auto where = storage::parse_location(uri);
  if (auto* e = std::get_if<Error>(&where)) return *e;
  return areas->check_write(project, std::get<storage::Location>(where));
}

// Where vectors too large to return inline go when the caller named no save_to: a new file under
// embeddings/ in an area the project may write (its "scratch" area when it has one, else the
// first), named after the model, the time and a random part so that calls never collide.
std::optional<std::string> auto_save_uri(const storage::Areas* areas, const std::string& project,
                                         const std::string& model) {
  if (!areas) return std::nullopt;
  const AreaConfig* pick = nullptr;
  for (const auto& a : areas->visible(project)) {
    if (!a.may_write || !a.config) continue;
    if (!pick || a.config->id == "scratch") pick = a.config;
    if (pick->id == "scratch") break;
  }
  if (!pick) return std::nullopt;
  std::string name;
  for (char c : model) name += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ? c : '_';
  return "area://" + pick->id + "/embeddings/" + name + "-" + std::to_string(unix_now_ms()) + "-" +
         crypto::random_hex(4) + ".jsonl";
}

json joined_texts(const json& input) {
  if (!input.is_array()) return input;
  std::string joined;
  for (const auto& t : input) joined += t.get<std::string>() + "\n";
  return json(joined);
}

json embed_result(const std::string& model, const std::string& backend, Vectors& v, bool inline_vectors,
                  const std::string& note, const json& usage, const json& saved) {
  json r = json::object();
  r["model"] = model;
  r["backend"] = backend;
  r["count"] = v.norms.size();
  r["dimensions"] = v.dimensions;
  r["inline"] = inline_vectors;
  if (inline_vectors) r["vectors"] = std::move(v.vectors);
  r["norms"] = v.norms;
  if (!saved.is_null()) r["saved"] = saved;
  if (!note.empty()) r["note"] = note;
  r["usage"] = usage;
  return r;
}

}  // namespace

asio::awaitable<ToolResult> EmbedTool::call(const json& args, CallContext& ctx) {
  const std::string model = args["model"].get<std::string>();
  const inference::TokenResources charged_to = deps_.service.token_resources(model);
  if (args.contains("save_to")) {
    // Where the vectors would go is checked before the backend spends anything.
    std::optional<Error> refused = check_save_to(deps_.areas, ctx.project, args["save_to"].get<std::string>());
    if (refused) co_return ToolResult::failure(*refused);
  }
  json body = json::object();
  body["input"] = args["input"];
  if (args.contains("dimensions")) body["dimensions"] = args["dimensions"];
  body["encoding_format"] = "float";
  inference::ChatOutcome out = co_await deps_.service.embed(model, std::move(body), ctx.deadline);
  if (out.cancelled || ctx.cancelled()) throw_cancelled();
  if (out.error) {
    // The record of a failed call names the model and the backend that failed, as call_inference's does.
    ctx.audit_fields = audit_facts(model, out, nullptr);
    co_return ToolResult::failure(*out.error);
  }
  Vectors v = read_vectors(out.response);
  if (!v.ok)
    co_return ToolResult::failure(Error{ErrorCode::kBackendUnavailable,
                                        "inference backend " + out.backend + " sent embeddings in an unexpected shape",
                                        "retry; if it persists, tell the operators", {}});
  int64_t tokens = 0;
  std::string counted_by = "backend";
  std::optional<int64_t> counted;
  if (out.usage) {
    counted = out.usage->prompt_tokens;
  } else {
    // One count for all the texts (joined): a few separator tokens more than the sum at most.
    json texts = joined_texts(args["input"]);
    counted = co_await deps_.service.count_tokens(out.backend, model, std::move(texts));
    counted_by = counted ? "tokenize" : "hold";
  }
  if (counted) {
    tokens = *counted;
  } else {
    tokens = estimate_prompt_tokens(args) - kPerCallTokens;
  }
  json usage = json::object();
  usage["prompt_tokens"] = tokens;
  usage["total_tokens"] = tokens;
  usage["counted_by"] = counted_by;
  if (ctx.partial) ctx.partial(out.response);
  json saved;  // null unless save_to
  if (args.contains("save_to")) {
    const std::string uri = args["save_to"].get<std::string>();
    storage::Location where = std::get<storage::Location>(storage::parse_location(uri));  // checked above
    std::shared_ptr<const std::string> bytes = vectors_jsonl(v);
    std::variant<storage::WriteResult, Error> written =
        co_await deps_.areas->write(ctx.project, std::move(where), std::move(bytes));
    if (auto* e = std::get_if<Error>(&written)) {
      // The backend did the work: the tokens are charged even though the file was not written.
      ToolResult failed = ToolResult::failure(*e);
      failed.usage = token_usage(charged_to, tokens, -1);
      co_return failed;
    }
    saved = saved_json(uri, std::get<storage::WriteResult>(written));
  }
  const bool summary_only = args.value("summary_only", false);
  const bool fits = v.bytes <= deps_.config.max_inline_vectors_bytes;
  const bool inline_vectors = !summary_only && fits && saved.is_null();
  std::string note;
  if (!summary_only && !fits && saved.is_null()) {
    const std::string too_large = std::to_string(v.norms.size()) + " vectors of " + std::to_string(v.dimensions) +
                                  " dimensions are too large to return inline (limit " +
                                  std::to_string(deps_.config.max_inline_vectors_bytes) + " bytes)";
    // The caller asked for the vectors: they are kept where it can reach them, not dropped.
    std::string why_not;
    if (std::optional<std::string> uri = auto_save_uri(deps_.areas, ctx.project, model)) {
      storage::Location where = std::get<storage::Location>(storage::parse_location(*uri));
      std::shared_ptr<const std::string> bytes = vectors_jsonl(v);
      std::variant<storage::WriteResult, Error> written =
          co_await deps_.areas->write(ctx.project, std::move(where), std::move(bytes));
      if (auto* w = std::get_if<storage::WriteResult>(&written)) {
        saved = saved_json(*uri, *w);
        saved["auto"] = true;
        note = too_large + ", so they were written to " + *uri +
               " (JSON Lines: one array per input, in input order); read them with read_file or from a job. The file "
               "stays in the area, counted against its quota, until it is removed; pass save_to to choose the name";
      } else {
        why_not = "; saving them to " + *uri + " failed: " + std::get<Error>(written).message;
      }
    } else {
      why_not = "; the project has no storage area scigate may write them to";
    }
    if (note.empty())
      note = too_large + why_not +
             ". Pass save_to (e.g. area://scratch/embeddings.jsonl) to have them written to a storage area, embed "
             "fewer texts per call, or use the OpenAI-compatible /v1/embeddings endpoint";
  }
  json structured = embed_result(model, out.backend, v, inline_vectors, note, usage, saved);
  std::string text = "embedded " + std::to_string(structured["count"].get<std::size_t>()) + " input(s) with " + model +
                     " on " + out.backend + ": " + std::to_string(structured["dimensions"].get<std::size_t>()) +
                     " dimensions, " + std::to_string(tokens) + " tokens" + (note.empty() ? "" : "\n" + note);
  ctx.audit_fields = audit_facts(model, out, usage);
  ToolResult r = ToolResult::success(std::move(structured), std::move(text));
  r.usage = token_usage(charged_to, tokens, -1);
  co_return r;
}

}  // namespace scigate::tools
