#include "tools/demo/demo_tools.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "server/common/decimal.hpp"

namespace scigate::tools {
namespace asio = boost::asio;

EchoTool::EchoTool() {
  descriptor_.name = "echo";
  descriptor_.title = "Echo";
  descriptor_.description = "Returns the given text unchanged. A no-op for testing connectivity and measuring overhead.";
  descriptor_.input_schema = json::parse(R"({
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 65536, "description": "Text to return"}},
    "required": ["text"],
    "additionalProperties": false
  })");
  descriptor_.output_schema = json::parse(R"({
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]
  })");
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
}

asio::awaitable<ToolResult> EchoTool::call(const json& args, CallContext&) {
  std::string text = args["text"].get<std::string>();
  co_return ToolResult::success(json{{"text", text}}, text);
}

SleepTool::SleepTool() {
  descriptor_.name = "sleep";
  descriptor_.title = "Sleep";
  descriptor_.description =
      "Waits for the given number of seconds, reporting progress after each step, and stops as soon "
      "as the call is cancelled. For testing progress, cancellation and timeouts.";
  descriptor_.input_schema = json::parse(R"({
    "type": "object",
    "properties": {
      "seconds": {"type": "number", "minimum": 0, "maximum": 3600, "description": "How long to wait"},
      "steps": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10, "description": "Progress reports"}
    },
    "required": ["seconds"],
    "additionalProperties": false
  })");
  descriptor_.output_schema = json::parse(R"({
    "type": "object", "properties": {"slept_seconds": {"type": "number"}}, "required": ["slept_seconds"]
  })");
  descriptor_.annotations = ToolAnnotations{.read_only = true, .destructive = false, .idempotent = true, .open_world = false};
}

namespace {
Usage sleep_usage(double seconds) {
  Usage u;
  u.add("sleep_second", seconds, decimal::shortest(seconds) + " s");
  return u;
}
}  // namespace

Usage SleepTool::worst_case_usage(const json& args) const {
  auto it = args.find("seconds");
  return sleep_usage(it != args.end() && it->is_number() ? it->get<double>() : 0);
}

asio::awaitable<ToolResult> SleepTool::call(const json& args, CallContext& ctx) {
  double seconds = args["seconds"].get<double>();
  int steps = args.value("steps", 10);
  asio::steady_timer timer(co_await asio::this_coro::executor);
  auto step = std::chrono::duration<double>(seconds / steps);
  for (int i = 1; i <= steps; ++i) {
    timer.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(step));
    co_await timer.async_wait(asio::use_awaitable);  // throws operation_aborted when cancelled
    ctx.progress.report(i, steps, "step " + std::to_string(i) + " of " + std::to_string(steps));
  }
  ToolResult result = ToolResult::success(json{{"slept_seconds", seconds}}, "slept " + std::to_string(seconds) + " s");
  result.usage = sleep_usage(seconds);
  co_return result;
}

}  // namespace scigate::tools
