// call_inference and embed without a backend: the estimate the hold is made with, fitting
// max_tokens to a hold, argument rules, and how the OpenAI-compatible endpoint maps requests
// and answers.
#include <catch2/catch.hpp>

#include "connectors/inference/inference_service.hpp"
#include "server/openai/openai_api.hpp"
#include "tools/inference/inference_tools.hpp"

using namespace scigate;
using nlohmann::json;

namespace {
constexpr int64_t kPico = 1'000'000'000'000;  // one credit per unit

struct Fixture {
  InferenceConfig config;
  inference::InferenceService service{config, nullptr};
  tools::CallInferenceTool chat{tools::InferenceToolDeps{service, config, nullptr}};
  tools::EmbedTool embed{tools::InferenceToolDeps{service, config, nullptr}};
};
}  // namespace

TEST_CASE("call_inference: the prompt estimate errs high and counts every part") {
  json small = json::parse(R"({"model":"m","messages":[{"role":"user","content":"Hello there"}]})");
  int64_t n = tools::estimate_prompt_tokens(small);
  CHECK(n == 16 + 8 + 4);  // frame + one message + ceil(11 bytes / 3)
  json longer = small;
  longer["messages"].push_back(json{{"role", "assistant"}, {"content", std::string(300, 'a')}});
  CHECK(tools::estimate_prompt_tokens(longer) == n + 8 + 100);
  json image = json::parse(
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"abc"},{"type":"image_url","image_url":{"url":"data:..."}}]}]})");
  CHECK(tools::estimate_prompt_tokens(image) == 16 + 8 + 1 + 1600);
  json cjk = json::parse(R"({"model":"m","prompt":"日本語のテキスト"})");  // 8 characters, 24 bytes
  CHECK(tools::estimate_prompt_tokens(cjk) == 16 + 8);
  json tools_extra = small;
  tools_extra["extra"]["tools"] = json::array({json{{"type", "function"}, {"function", {{"name", "f"}}}}});
  CHECK(tools::estimate_prompt_tokens(tools_extra) > n);
}

TEST_CASE("call_inference: the hold's bound covers images, video and audio up to the context, and every message field") {
  // Text: one token per byte, plus the frame and the message.
  json text = json::parse(R"({"model":"m","messages":[{"role":"user","content":"abc"}]})");
  CHECK(tools::prompt_token_bound(text) == 16 + 8 + 3);
  // A video is frames x an image's tokens, an image at a VLM's default resolution up to 16,384:
  // neither is a flat 1,600 (the estimate's allowance); without a known context each such part
  // is held at kMediaBoundTokens, with one at the context length.
  json media = json::parse(R"({"model":"m","messages":[{"role":"user","content":[
      {"type":"text","text":"describe"},
      {"type":"video_url","video_url":{"url":"https://h/v.mp4"}},
      {"type":"input_audio","input_audio":{"data":"UklGR","format":"wav"}},
      {"type":"image_url","image_url":{"url":"https://h/i.png"}}]}]})");
  CHECK(tools::prompt_token_bound(media) == 16 + 8 + 8 + 3 * tools::kMediaBoundTokens);
  CHECK(tools::prompt_token_bound(media, 32768) == 16 + 8 + 8 + 3 * 32768);
  CHECK(tools::estimate_prompt_tokens(media) == 16 + 8 + 3 + 3 * 1600);
  // A part of any type with a text string is text (vLLM reads input_text, output_text as text);
  // any other part is never less than its bytes (a megabyte of base64 audio is not 1,600).
  json input_text = json::parse(R"({"model":"m","messages":[{"role":"user","content":[{"type":"input_text","text":"abc"}]}]})");
  CHECK(tools::prompt_token_bound(input_text) == 16 + 8 + 3);
  CHECK(tools::estimate_prompt_tokens(input_text) == 16 + 8 + 1);
  json big_audio = json::parse(R"({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"format":"wav"}}]}]})");
  big_audio["messages"][0]["content"][0]["input_audio"]["data"] = std::string(300000, 'A');
  CHECK(tools::prompt_token_bound(big_audio) >= 16 + 8 + 300000);
  CHECK(tools::estimate_prompt_tokens(big_audio) >= 16 + 8 + 100000);
  // A refusal part is text.
  json refusal = json::parse(R"({"model":"m","messages":[{"role":"assistant","content":[{"type":"refusal","refusal":"no"}]}]})");
  CHECK(tools::prompt_token_bound(refusal) < 100);
  // Fields besides content that a chat template renders (an assistant's reasoning_content, a
  // tool message's name) are in the bound, byte for byte.
  json reasoning = text;
  reasoning["messages"].push_back(json{{"role", "assistant"}, {"content", "ok"}, {"reasoning_content", std::string(3000, 'r')}});
  CHECK(tools::prompt_token_bound(reasoning) >= 16 + 8 + 3 + 8 + 2 + 3000);
  CHECK(tools::estimate_prompt_tokens(reasoning) < 100);  // the estimate reads content and tool calls
}

TEST_CASE("call_inference: max_tokens is cut to what the hold covers, exactly") {
  // 1 credit per 1000 output tokens, 1 per 2000 input tokens, 0.1 per call.
  credits::RateTable rates({{"tokens_out:m", kPico / 1000, "token"},
                            {"tokens_in:m", kPico / 2000, "token"},
                            {"call:call_inference", kPico / 10, "call"}});
  const MicroCredits C = kMicroPerCredit;
  const inference::TokenResources m{"tokens_in:m", "tokens_out:m"};
  // 1000 prompt tokens (0.5) + call (0.1): 1.4 credits left for output = 1400 tokens.
  CHECK(tools::CallInferenceTool::affordable_max_tokens(rates, m, 1000, 4096, 2 * C) == 1400);
  CHECK(tools::CallInferenceTool::affordable_max_tokens(rates, m, 1000, 512, 2 * C) == 512);  // fits: unchanged
  CHECK(tools::CallInferenceTool::affordable_max_tokens(rates, m, 1000, 4096, 0) == 1);        // never below one
  // The answer is the largest n whose price fits: n + 1 does not.
  int64_t n = tools::CallInferenceTool::affordable_max_tokens(rates, m, 333, 100000, C + 7);
  auto price = [&](int64_t out) {
    Usage u;
    u.add("tokens_in:m", 333).add("tokens_out:m", static_cast<double>(out)).add("call:call_inference", 1);
    return rates.price(u);
  };
  CHECK(price(n) <= C + 7);
  CHECK(price(n + 1) > C + 7);
}

TEST_CASE("call_inference: argument rules and the facts policy sees") {
  Fixture f;
  auto facts = f.chat.derive_facts(json::parse(R"({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100})"));
  REQUIRE(std::holds_alternative<json>(facts));
  const json& j = std::get<json>(facts);
  CHECK(j["prompt_tokens"] == 16 + 8 + 1);
  CHECK(j["tokens"] == 16 + 8 + 1 + 100);
  // Without max_tokens the configured default counts.
  auto d = std::get<json>(f.chat.derive_facts(json::parse(R"({"model":"m","prompt":"hi"})")));
  CHECK(d["tokens"] == d["prompt_tokens"].get<int64_t>() + 1024);
  auto error_of = [&](const char* args) {
    auto r = f.chat.derive_facts(json::parse(args));
    REQUIRE(std::holds_alternative<Error>(r));
    return std::get<Error>(r).message;
  };
  CHECK(error_of(R"({"model":"m"})") == "give messages (or prompt)");
  CHECK(error_of(R"({"model":"m","prompt":"a","messages":[{"role":"user","content":"b"}]})") == "give messages or prompt, not both");
  CHECK(error_of(R"({"model":"m","prompt":"a","extra":{"stream":true}})") == "extra.stream is set by scigate");
  CHECK(error_of(R"({"model":"m","prompt":"a","extra":{"n":3}})") == "extra.n must be 1");
  CHECK(error_of(R"({"model":"m","prompt":"a","extra":{"n_cmpl":8}})") == "extra.n_cmpl must be 1");  // llama.cpp's name
  CHECK(std::holds_alternative<json>(f.chat.derive_facts(json::parse(R"({"model":"m","prompt":"a","extra":{"n_cmpl":1}})"))));
  // Other names for the output length (llama.cpp reads n_predict before max_tokens; -1 is "no
  // limit") and several-completion searches would make the backend do more than the hold covers.
  CHECK_THAT(error_of(R"({"model":"m","prompt":"a","max_tokens":5,"extra":{"n_predict":300}})"),
             Catch::Contains("extra.n_predict would set the output length"));
  CHECK_THAT(error_of(R"({"model":"m","prompt":"a","extra":{"n_predict":-1}})"), Catch::Contains("n_predict"));
  CHECK_THAT(error_of(R"({"model":"m","prompt":"a","extra":{"best_of":20}})"), Catch::Contains("several completions"));
  CHECK_THAT(error_of(R"({"model":"m","prompt":"a","extra":{"max_new_tokens":900}})"), Catch::Contains("max_new_tokens"));
  CHECK(std::holds_alternative<json>(f.chat.derive_facts(json::parse(R"({"model":"m","prompt":"a","extra":{"top_k":40,"seed":1}})"))));
  // The hold's prompt is a bound, not the estimate: 3,000 bytes of decimals are about 3,000
  // tokens for Llama-3 or Qwen2 tokenizers (a token never spans "0.1,"'s pieces), 3x the
  // bytes/3 estimate policies read; a settle posts at most the hold.
  std::string csv;
  while (csv.size() < 3000) csv += "0." + std::to_string(csv.size() % 97) + ",";
  json numeric = {{"model", "m"}, {"max_tokens", 1}, {"messages", {{{"role", "user"}, {"content", csv}}}}};
  auto nf = std::get<json>(f.chat.derive_facts(numeric));
  CHECK(nf["prompt_tokens"].get<int64_t>() < static_cast<int64_t>(csv.size()) / 2);  // the estimate
  CHECK(nf["prompt_tokens_bound"].get<int64_t>() >= static_cast<int64_t>(csv.size()));
  json decided_numeric = numeric;
  decided_numeric.update(nf);
  CHECK(f.chat.worst_case_usage(decided_numeric).lines[0].quantity >= static_cast<double>(csv.size()));
  // Worst case and minimum, as the pipeline holds them (args + facts).
  json decided = json::parse(R"({"model":"m","prompt":"a","max_tokens":500,"prompt_tokens":40})");
  Usage worst = f.chat.worst_case_usage(decided);
  REQUIRE(worst.lines.size() == 2);
  CHECK(worst.lines[0].resource == "tokens_in:m");
  CHECK(worst.lines[0].quantity == 40);
  CHECK(worst.lines[1].resource == "tokens_out:m");
  CHECK(worst.lines[1].quantity == 500);
  auto minimum = f.chat.minimum_usage(decided);
  REQUIRE(minimum);
  CHECK(minimum->lines[1].quantity == 16);
  CHECK(f.chat.descriptor().input_schema["properties"]["max_tokens"]["default"] == 1024);
}

TEST_CASE("OpenAI endpoint: a chat body becomes call_inference arguments, unknown parameters go to extra") {
  auto m = openai::OpenAiApi::map_chat(json::parse(R"({
    "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true,
    "stream_options": {"include_usage": true}, "max_completion_tokens": 64, "max_tokens": 9,
    "temperature": 0.5, "tools": [{"type": "function"}], "logprobs": true, "user": "u-1", "n": 1})"));
  REQUIRE(std::holds_alternative<openai::MappedCall>(m));
  const auto& call = std::get<openai::MappedCall>(m);
  CHECK(call.stream);
  CHECK(call.include_usage);
  CHECK(call.request.tool == "call_inference");
  const json& a = call.request.arguments;
  CHECK(a["max_tokens"] == 64);  // the newer name wins
  CHECK(a["temperature"] == 0.5);
  CHECK(a["extra"]["tools"].size() == 1);
  CHECK(a["extra"]["logprobs"] == true);
  CHECK_FALSE(a.contains("user"));
  CHECK_FALSE(a["extra"].contains("stream"));
  CHECK_FALSE(a["extra"].contains("n"));

  auto status_of = [](const char* body) {
    auto r = openai::OpenAiApi::map_chat(json::parse(body));
    REQUIRE(std::holds_alternative<openai::ApiAnswer>(r));
    return std::get<openai::ApiAnswer>(r).status;
  };
  CHECK(status_of(R"({"messages":[]})") == 400);
  CHECK(status_of(R"({"model":"m"})") == 400);
  CHECK(status_of(R"({"model":"m","messages":[],"n":2})") == 400);
  CHECK(status_of(R"({"model":"m","messages":[],"stream":"yes"})") == 400);
  // stream_options of the wrong type is the client's error, not a server fault.
  CHECK(status_of(R"({"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":"yes"}})") == 400);
  CHECK(status_of(R"({"model":"m","messages":[],"stream":true,"stream_options":"usage"})") == 400);
  auto b64 = openai::OpenAiApi::map_embeddings(json::parse(R"({"model":"e","input":["a","b"],"encoding_format":"base64"})"));
  REQUIRE(std::holds_alternative<openai::MappedCall>(b64));
  CHECK(std::get<openai::MappedCall>(b64).base64);
  // 1.0f is 00 00 80 3f little-endian.
  auto enc = openai::embeddings_as_base64(json::parse(R"({"data":[{"index":0,"embedding":[1.0]}]})"));
  CHECK(enc["data"][0]["embedding"] == "AACAPw==");
  auto e = openai::OpenAiApi::map_embeddings(json::parse(R"({"model":"e","input":["a","b"],"encoding_format":"int8"})"));
  REQUIRE(std::holds_alternative<openai::ApiAnswer>(e));
  CHECK(std::get<openai::ApiAnswer>(e).body["error"]["code"] == "unsupported_encoding_format");
}

TEST_CASE("OpenAI endpoint: scigate's errors become OpenAI's statuses and error bodies") {
  auto outcome = [](const char* code, int64_t retry = 0) {
    ToolCallOutcome o;
    Error e{ErrorCode::kInternal, "msg", "do this", {}};
    o.result = ToolCallPipeline::error_result(e);
    o.result["_meta"]["io.scigate/error"]["code"] = code;
    if (retry) o.result["_meta"]["io.scigate/error"]["retry_after_ms"] = retry;
    return o;
  };
  auto a = openai::OpenAiApi::answer(outcome("insufficient_credits"), json(), "call_inference");
  CHECK(a.status == 402);
  CHECK(a.body["error"]["type"] == "insufficient_quota");
  CHECK(a.body["error"]["message"] == "msg (do this)");
  CHECK(openai::OpenAiApi::answer(outcome("policy_denied"), json(), "x").status == 403);
  CHECK(openai::OpenAiApi::answer(outcome("backend_rejected"), json(), "x").status == 400);
  CHECK(openai::OpenAiApi::answer(outcome("backend_unavailable"), json(), "x").status == 503);
  auto limited = openai::OpenAiApi::answer(outcome("rate_limited", 1500), json(), "x");
  CHECK(limited.status == 429);
  CHECK(limited.retry_after_ms == 1500);
  ToolCallOutcome unknown;
  unknown.protocol_error = jsonrpc::ProtocolError{-32602, "Unknown tool", nullptr, nullptr};
  CHECK(openai::OpenAiApi::answer(unknown, json(), "call_inference").status == 403);
  ToolCallOutcome ok;
  ok.result = json{{"isError", false}};
  CHECK(openai::OpenAiApi::answer(ok, json{{"id", "x"}}, "x").body["id"] == "x");
}

// A retry under an Idempotency-Key relays no chunks: the /v1 answer is rebuilt from the first
// call's result (integration: "inference: on /v1 ... Idempotency-Key charges once").
TEST_CASE("OpenAI endpoint: a replayed call_inference result becomes a chat.completion, or a stream of chunks") {
  json result = {{"isError", false},
                 {"structuredContent",
                  {{"text", "w0 w1"},
                   {"finish_reason", "length"},
                   {"model", "m"},
                   {"backend", "gpu01"},
                   {"max_tokens", 2},
                   {"tool_calls", json::array({json{{"index", 0}, {"id", "call_1"}, {"type", "function"}}})},
                   {"usage", {{"prompt_tokens", 8}, {"completion_tokens", 2}, {"total_tokens", 10}, {"counted_by", "backend"}}}}}};
  json c = openai::OpenAiApi::completion_from_result(result);
  CHECK(c["object"] == "chat.completion");
  CHECK(c["model"] == "m");
  CHECK(c["id"].get<std::string>().rfind("chatcmpl-", 0) == 0);
  CHECK(c["choices"][0]["message"]["role"] == "assistant");
  CHECK(c["choices"][0]["message"]["content"] == "w0 w1");
  CHECK(c["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1");
  CHECK(c["choices"][0]["finish_reason"] == "length");
  CHECK(c["usage"] == json{{"prompt_tokens", 8}, {"completion_tokens", 2}, {"total_tokens", 10}});  // no counted_by

  auto chunks = openai::OpenAiApi::chunks_from_result(result);
  REQUIRE(chunks.size() == 2);
  CHECK(chunks[0]["object"] == "chat.completion.chunk");
  CHECK(chunks[0]["choices"][0]["delta"]["content"] == "w0 w1");
  CHECK(chunks[0]["choices"][0]["finish_reason"] == "length");
  CHECK(chunks[1]["choices"].empty());
  CHECK(chunks[1]["usage"]["completion_tokens"] == 2);
  CHECK(chunks[0]["id"] == chunks[1]["id"]);

  // An unknown finish reason is OpenAI's null, and no usage means no usage chunk.
  result["structuredContent"]["finish_reason"] = "unknown";
  result["structuredContent"].erase("usage");
  CHECK(openai::OpenAiApi::completion_from_result(result)["choices"][0]["finish_reason"].is_null());
  CHECK(openai::OpenAiApi::chunks_from_result(result).size() == 1);
}
