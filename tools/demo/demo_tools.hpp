#pragma once
// Two small tools for demos, client tests and benchmarks, registered only when the config
// says `[tools] demo = true`:
//   echo  returns its text unchanged (the no-op the benchmarks call);
//   sleep waits, reporting progress once per step, and stops at once when cancelled. It uses
//         "sleep_second" (one unit per second asked for), so a rates table can price it: the
//         demo config does, to show holds (the seconds asked) and charges (the seconds slept).
#include "tools/tool.hpp"

namespace scigate::tools {

class EchoTool final : public Tool {
 public:
  EchoTool();
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
};

class SleepTool final : public Tool {
 public:
  SleepTool();
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  Usage worst_case_usage(const json& args) const override;
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
};

}  // namespace scigate::tools
