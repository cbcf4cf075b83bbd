// The OpenAI wire format as vLLM and llama.cpp write it: event streams cut anywhere, the three
// error shapes, usage, and rebuilding a non-streamed answer from chunks.
#include <catch2/catch.hpp>

#include "connectors/inference/openai_wire.hpp"

using namespace scigate::inference;

TEST_CASE("inference wire: SSE events survive any split, CRLF, comments and multi-line data") {
  const std::string stream =
      ": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    SseParser p;
    std::vector<SseEvent> events;
    REQUIRE(p.feed(std::string_view(stream).substr(0, cut), &events));
    REQUIRE(p.feed(std::string_view(stream).substr(cut), &events));
    REQUIRE(events.size() == 3);
    CHECK(events[0].data == "{\"a\":1}");
    CHECK(events[1].data == "line1\nline2");
    CHECK(events[2].data == "[DONE]");
    CHECK_FALSE(events[0].error);
    CHECK_FALSE(p.partial());
  }
  {
    // llama.cpp reports an error found after the stream began in an `error:` field.
    SseParser p;
    std::vector<SseEvent> events;
    p.feed("error: {\"code\":400,\"message\":\"too long\"}\n\ndata: [DONE]\n\n", &events);
    REQUIRE(events.size() == 2);
    CHECK(events[0].error);
    CHECK(parse_error_text(events[0].data)->message == "too long");
    CHECK(events[1].data == "[DONE]");
  }
  {
    // Lines ended by a lone CR (the SSE spec allows it), fed whole and a byte at a time.
    const std::string cr = "data: one\r\rdata: two\rdata: three\r\r\r\ndata: [DONE]\r\n\r\n";
    for (bool bytewise : {false, true}) {
      SseParser p;
      std::vector<SseEvent> events;
      if (bytewise)
        for (char c : cr) REQUIRE(p.feed(std::string_view(&c, 1), &events));
      else
        REQUIRE(p.feed(cr, &events));
      REQUIRE(events.size() == 3);
      CHECK(events[0].data == "one");
      CHECK(events[1].data == "two\nthree");
      CHECK(events[2].data == "[DONE]");
      CHECK_FALSE(p.partial());
    }
  }
  SseParser p;
  std::vector<SseEvent> events;
  p.feed("data: {\"cut\": tr", &events);
  CHECK(events.empty());
  CHECK(p.partial());  // a stream cut mid-event is visible
  SseParser small(16);
  CHECK_FALSE(small.feed("data: " + std::string(64, 'x'), &events));
}

TEST_CASE("inference wire: vLLM flat and nested errors, llama.cpp's, and non-errors") {
  auto flat = parse_error_text(
      R"({"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400})");
  REQUIRE(flat);
  CHECK(flat->message == "This model's maximum context length is 4096 tokens.");
  CHECK(flat->type == "BadRequestError");
  CHECK(flat->code == 400);
  auto nested = parse_error_text(R"({"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}})");
  REQUIRE(nested);
  CHECK(nested->code == 404);
  CHECK(nested->type == "NotFoundError");
  auto llama = parse_error_text(R"({"error":{"code":503,"message":"Loading model","type":"unavailable_error"}})");
  REQUIRE(llama);
  CHECK(llama->message == "Loading model");
  CHECK(parse_error_text(R"({"error":"bad gateway"})")->message == "bad gateway");
  CHECK_FALSE(parse_error_text(R"({"id":"x","choices":[]})"));
  CHECK_FALSE(parse_error_text("<html>502</html>"));
}

TEST_CASE("inference wire: usage and deltas from chunks and answers") {
  auto u = parse_usage(nlohmann::json::parse(R"({"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}})"));
  REQUIRE(u);
  CHECK(u->prompt_tokens == 12);
  CHECK(u->completion_tokens == 5);
  CHECK(parse_usage(nlohmann::json::parse(R"({"usage":{"prompt_tokens":7,"total_tokens":7}})"))->completion_tokens == 0);
  CHECK_FALSE(parse_usage(nlohmann::json::parse(R"({"usage":null})")));
  auto d = chunk_delta(nlohmann::json::parse(R"({"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]})"));
  CHECK(d.text == "hi");
  CHECK(d.has_content);
  CHECK(chunk_delta(nlohmann::json::parse(R"({"choices":[{"index":0,"delta":{"role":"assistant"}}]})")).has_content == false);
  CHECK(chunk_delta(nlohmann::json::parse(R"({"choices":[{"delta":{"tool_calls":[{"index":0}]}}]})")).has_content);
  // Reasoning is generated output: a stream cut while the model thinks pays for the thinking.
  auto thinking = chunk_delta(nlohmann::json::parse(R"({"choices":[{"delta":{"reasoning_content":"Let me see"}}]})"));
  CHECK(thinking.has_content);
  CHECK(thinking.text.empty());  // (not part of the answer's text)
  CHECK(chunk_delta(nlohmann::json::parse(R"({"choices":[{"delta":{"reasoning":"hm"}}]})")).has_content);
  CHECK_FALSE(chunk_delta(nlohmann::json::parse(R"({"choices":[{"delta":{"reasoning_content":""}}]})")).has_content);
  CHECK(chunk_delta(nlohmann::json::parse(R"({"choices":[],"usage":{"prompt_tokens":1}})")).text.empty());
  auto a = answer_delta(nlohmann::json::parse(R"({"choices":[{"message":{"content":"done"},"finish_reason":"stop"}]})"));
  CHECK(a.text == "done");
  CHECK(a.finish_reason == "stop");
}

TEST_CASE("inference wire: a streamed answer rebuilt for a non-streaming client") {
  CompletionBuilder b;
  for (const char* c : {
           R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})",
           R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"Hel"}}]})",
           R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"lo"}}]})",
           R"({"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_","arguments":"{\"a\":"}}]}}]})",
           R"({"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"weather","arguments":"1}"}}]},"finish_reason":"tool_calls"}]})",
           R"({"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}})"})
    b.add(nlohmann::json::parse(c));
  auto r = b.build();
  CHECK(r["id"] == "chatcmpl-1");
  CHECK(r["object"] == "chat.completion");
  CHECK(r["created"] == 7);
  CHECK(r["model"] == "m");
  REQUIRE(r["choices"].size() == 1);
  const auto& msg = r["choices"][0]["message"];
  CHECK(msg["role"] == "assistant");
  CHECK(msg["content"] == "Hello");
  CHECK(msg["tool_calls"][0]["id"] == "call_1");
  CHECK(msg["tool_calls"][0]["function"]["name"] == "get_weather");
  CHECK(msg["tool_calls"][0]["function"]["arguments"] == "{\"a\":1}");
  CHECK(r["choices"][0]["finish_reason"] == "tool_calls");
  CHECK(r["usage"]["total_tokens"] == 13);
  CHECK(b.tool_calls().size() == 1);
  // Everything generated, for a tokenizer when the backend reports no usage.
  CHECK(b.generated_text() == "Hello\nget_weather {\"a\":1}");

  // A choice index a backend should not send (a string, negative) is skipped, not a crash.
  CompletionBuilder odd;
  odd.add(nlohmann::json::parse(R"({"choices":[{"index":"0","delta":{"content":"x"}}]})"));
  odd.add(nlohmann::json::parse(R"({"choices":[{"index":-1,"delta":{"content":"y"}}]})"));
  odd.add(nlohmann::json::parse(R"({"choices":[{"index":0,"delta":{"content":"z","tool_calls":[{"index":"1"}]}}]})"));
  CHECK(odd.build()["choices"][0]["message"]["content"] == "z");
  CHECK(odd.tool_calls().empty());
}
