#pragma once
#include "policies/ledger.hpp"
#include "policies/policy.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

// get_usage: what the caller's project has to spend and what it costs — balance, holds, recent
// charges (everyone's for a manager, else the caller's own), rates, the credit line, the
// caller's sub-budget — and the limits the project's policy sets on the caller. Read-only; the ledger answers
// from its writer thread, so the figures include every call committed before this one.
class UsageTool final : public Tool {
 public:
  // `policy` (may be null) supplies the limits that apply to the caller.
  UsageTool(Ledger& ledger, const PolicyEngine* policy);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

  // The structured result and its one-paragraph text (exposed for tests).
  static json to_json(const UsageReport& r);
  static std::string to_text(const UsageReport& r);
  // The sentence about the policy's limits (empty for none).
  static std::string policy_text(const json& limits);

 private:
  ToolDescriptor descriptor_;
  Ledger& ledger_;
  const PolicyEngine* policy_;
};

}  // namespace scigate::tools
