#include "server/openai/openai_api.hpp"

#include <map>

#include "connectors/inference/inference_service.hpp"
#include "connectors/registry/model_record.hpp"
#include "policies/policy.hpp"
#include "server/common/crypto.hpp"

#include <cstring>

namespace scigate::openai {

ApiAnswer api_error(int status, const std::string& type, const std::string& message, const std::string& code) {
  json e = json::object();
  e["message"] = message;
  e["type"] = type;
  e["param"] = nullptr;
  e["code"] = code.empty() ? json(nullptr) : json(code);
  json body = json::object();
  body["error"] = std::move(e);
  return ApiAnswer{status, std::move(body)};
}

namespace {

// The call_inference arguments scigate names; the rest of an OpenAI body goes to `extra`.
const char* const kNamed[] = {"model",           "messages",         "temperature",       "top_p",
                              "stop",            "seed",             "presence_penalty",  "frequency_penalty",
                              "response_format"};

std::optional<ApiAnswer> need_object(const json& body) {
  if (!body.is_object()) return api_error(400, "invalid_request_error", "the request body must be a JSON object");
  if (!body.contains("model") || !body["model"].is_string() || body["model"].get_ref<const std::string&>().empty())
    return api_error(400, "invalid_request_error", "you must provide a model parameter", "missing_model");
  return std::nullopt;
}

ToolCallRequest call_of(const std::string& tool, json arguments) {
  ToolCallRequest r;
  r.tool = tool;
  r.arguments = std::move(arguments);
  return r;
}

// OpenAI's status and error type for each scigate error code.
struct Mapping {
  int status;
  const char* type;
};
Mapping mapping_of(const std::string& code) {
  static const std::map<std::string, Mapping> kMap = {
      {"invalid_arguments", {400, "invalid_request_error"}},
      {"backend_rejected", {400, "invalid_request_error"}},
      {"not_found", {404, "not_found_error"}},
      {"policy_denied", {403, "permission_error"}},
      {"forbidden", {403, "permission_error"}},
      // 402, not OpenAI's 429 insufficient_quota: clients retry a 429, and waiting does not help.
      {"insufficient_credits", {402, "insufficient_quota"}},
      {"rate_limited", {429, "rate_limit_error"}},
      {"conflict", {409, "conflict_error"}},
      {"backend_unavailable", {503, "service_unavailable_error"}},
      {"timeout", {504, "timeout_error"}},
      {"cancelled", {499, "cancelled"}},
      {"unauthenticated", {401, "authentication_error"}},
  };
  auto it = kMap.find(code);
  return it == kMap.end() ? Mapping{500, "server_error"} : it->second;
}

const json* scigate_error(const ToolCallOutcome& outcome) {
  if (!outcome.result.is_object() || !outcome.result.value("isError", false)) return nullptr;
  auto meta = outcome.result.find("_meta");
  if (meta == outcome.result.end() || !meta->is_object()) return nullptr;
  auto it = meta->find("io.scigate/error");
  return it == meta->end() ? nullptr : &*it;
}

}  // namespace

std::variant<MappedCall, ApiAnswer> OpenAiApi::map_chat(const json& body) {
  if (auto bad = need_object(body)) return *bad;
  if (!body.contains("messages"))
    return api_error(400, "invalid_request_error", "you must provide messages (this endpoint is chat; a prompt goes in a user message)",
                     "missing_messages");
  MappedCall m;
  json args = json::object();
  json extra = json::object();
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& k = it.key();
    if (k == "stream") {
      if (!it->is_boolean() && !it->is_null()) return api_error(400, "invalid_request_error", "stream must be a boolean");
      m.stream = it->is_boolean() && it->get<bool>();
    } else if (k == "stream_options") {
      if (!it->is_object() && !it->is_null())
        return api_error(400, "invalid_request_error", "stream_options must be an object");
      if (it->is_object()) {
        auto u = it->find("include_usage");
        if (u != it->end() && !u->is_boolean() && !u->is_null())
          return api_error(400, "invalid_request_error", "stream_options.include_usage must be a boolean");
        m.include_usage = u != it->end() && u->is_boolean() && u->get<bool>();
      }
    } else if (k == "max_tokens" || k == "max_completion_tokens") {
      if (!it->is_null()) args["max_tokens"] = *it;  // the newer name wins when both are set (it comes later)
    } else if (k == "n") {
      if (!it->is_null() && *it != 1)
        return api_error(400, "invalid_request_error", "n must be 1 here; make one request per completion", "unsupported_n");
    } else if (k == "user") {
      continue;  // the caller's end-user id: scigate knows the caller
    } else if (std::find(std::begin(kNamed), std::end(kNamed), k) != std::end(kNamed)) {
      if (!it->is_null()) args[k] = *it;
    } else {
      extra[k] = *it;
    }
  }
  if (body.contains("max_completion_tokens") && body["max_completion_tokens"].is_number())
    args["max_tokens"] = body["max_completion_tokens"];
  if (!extra.empty()) args["extra"] = std::move(extra);
  m.request = call_of("call_inference", std::move(args));
  return m;
}

std::variant<MappedCall, ApiAnswer> OpenAiApi::map_embeddings(const json& body) {
  if (auto bad = need_object(body)) return *bad;
  if (!body.contains("input")) return api_error(400, "invalid_request_error", "you must provide input", "missing_input");
  bool base64 = false;
  if (auto f = body.find("encoding_format"); f != body.end() && !f->is_null()) {
    if (*f == "base64") base64 = true;
    else if (*f != "float")
      return api_error(400, "invalid_request_error", "encoding_format must be \"float\" or \"base64\"",
                       "unsupported_encoding_format");
  }
  json args = json::object();
  args["model"] = body["model"];
  args["input"] = body["input"];
  if (body.contains("dimensions") && !body["dimensions"].is_null()) args["dimensions"] = body["dimensions"];
  args["summary_only"] = true;  // the client gets the full answer from the endpoint, not from the tool result
  MappedCall m;
  m.request = call_of("embed", std::move(args));
  m.base64 = base64;
  return m;
}

json embeddings_as_base64(json response) {
  if (!response.is_object() || !response.contains("data") || !response["data"].is_array()) return response;
  for (auto& item : response["data"]) {
    if (!item.is_object() || !item.contains("embedding") || !item["embedding"].is_array()) continue;
    std::string bytes;
    bytes.reserve(item["embedding"].size() * 4);
    for (const auto& x : item["embedding"]) {
      float f = x.is_number() ? x.get<float>() : 0.0f;
      uint32_t u;
      std::memcpy(&u, &f, 4);
      for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((u >> (8 * i)) & 0xff));  // little-endian
    }
    item["embedding"] = crypto::base64_encode(bytes);
  }
  return response;
}

ApiAnswer OpenAiApi::answer(const ToolCallOutcome& outcome, const json& built, const std::string& tool) {
  if (outcome.protocol_error)
    return api_error(403, "permission_error", tool + " is not available to you in this project", "tool_not_available");
  if (const json* e = scigate_error(outcome)) {
    std::string code = e->value("code", "internal");
    std::string message = e->value("message", "the call failed");
    if (e->contains("hint")) message += " (" + (*e)["hint"].get<std::string>() + ")";
    Mapping m = mapping_of(code);
    ApiAnswer a = api_error(m.status, m.type, message, code);
    a.retry_after_ms = e->value("retry_after_ms", int64_t(0));
    return a;
  }
  if (!built.is_object() || built.empty())
    return api_error(502, "server_error", "the model server's answer was empty", "empty_answer");
  return ApiAnswer{200, built};
}

json OpenAiApi::stream_error(const ToolCallOutcome& outcome) {
  ApiAnswer a = answer(outcome, json(), "call_inference");
  return a.body;
}

namespace {

// The parts of call_inference's structuredContent an OpenAI answer is made of.
struct Replayed {
  json message = json::object();
  json finish_reason;
  std::string model;
  json usage;
};

Replayed replayed(const json& call_result) {
  Replayed r;
  const json sc = call_result.is_object() ? call_result.value("structuredContent", json::object()) : json::object();
  r.message["role"] = "assistant";
  r.message["content"] = sc.value("text", std::string());
  if (sc.contains("tool_calls") && sc["tool_calls"].is_array() && !sc["tool_calls"].empty())
    r.message["tool_calls"] = sc["tool_calls"];
  std::string fr = sc.value("finish_reason", std::string("stop"));
  r.finish_reason = fr == "unknown" ? json(nullptr) : json(fr);
  r.model = sc.value("model", std::string());
  if (sc.contains("usage") && sc["usage"].is_object()) {
    const json& u = sc["usage"];
    r.usage = json::object();
    r.usage["prompt_tokens"] = u.value("prompt_tokens", int64_t(0));
    r.usage["completion_tokens"] = u.value("completion_tokens", int64_t(0));
    r.usage["total_tokens"] = u.value("total_tokens", int64_t(0));
  }
  return r;
}

json answer_head(const std::string& object, const std::string& model) {
  json out = json::object();
  out["id"] = "chatcmpl-" + crypto::random_hex(12);
  out["object"] = object;
  out["created"] = 0;
  out["model"] = model;
  return out;
}

}  // namespace

json OpenAiApi::completion_from_result(const json& call_result) {
  Replayed r = replayed(call_result);
  json out = answer_head("chat.completion", r.model);
  json choice = json::object();
  choice["index"] = 0;
  choice["message"] = std::move(r.message);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = r.finish_reason;
  out["choices"] = json::array({std::move(choice)});
  if (!r.usage.is_null()) out["usage"] = r.usage;
  return out;
}

std::vector<json> OpenAiApi::chunks_from_result(const json& call_result) {
  Replayed r = replayed(call_result);
  json head = answer_head("chat.completion.chunk", r.model);
  std::vector<json> out;
  json chunk = head;
  json choice = json::object();
  choice["index"] = 0;
  choice["delta"] = std::move(r.message);
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = r.finish_reason;
  chunk["choices"] = json::array({std::move(choice)});
  out.push_back(std::move(chunk));
  if (!r.usage.is_null()) {
    json usage = head;
    usage["choices"] = json::array();
    usage["usage"] = r.usage;
    out.push_back(std::move(usage));
  }
  return out;
}

json OpenAiApi::models(const Principal& principal, const std::string& project) const {
  json data = json::array();
  for (const auto& id : service_.served_models()) {
    json fixed = json::object();
    fixed["model"] = id;
    // As the registry shows it: a catalogued model by the tool its modality needs; one no
    // manifest describes by either.
    const std::optional<std::string> modality = service_.modality(id);
    const bool usable = modality ? policy_.could_permit(principal, project,
                                                        std::string(registry::inference_tool_for(*modality)), fixed)
                                 : policy_.could_permit(principal, project, "call_inference", fixed) ||
                                       policy_.could_permit(principal, project, "embed", fixed);
    if (!usable) continue;
    json m = json::object();
    m["id"] = id;
    m["object"] = "model";
    m["created"] = 0;
    m["owned_by"] = "scigate";
    if (auto len = service_.max_model_len(id)) m["max_model_len"] = *len;
    data.push_back(std::move(m));
  }
  json out = json::object();
  out["object"] = "list";
  out["data"] = std::move(data);
  return out;
}

}  // namespace scigate::openai
