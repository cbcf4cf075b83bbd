#pragma once
#include "policies/ledger.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

// get_usage: what the caller's project has to spend and what it costs — balance, holds, recent
// charges, rates, the credit line and the caller's sub-budget. Read-only; the ledger answers
// from its writer thread, so the figures include every call committed before this one.
class UsageTool final : public Tool {
 public:
  explicit UsageTool(Ledger& ledger);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

  // The structured result and its one-paragraph text (exposed for tests).
  static json to_json(const UsageReport& r);
  static std::string to_text(const UsageReport& r);

 private:
  ToolDescriptor descriptor_;
  Ledger& ledger_;
};

}  // namespace scigate::tools
