#pragma once
#include "tools/tool.hpp"

namespace scigate::audit {
class AuditQueryService;
}

namespace scigate::tools {

// Lets an auditor (a model acting for one) read the audit trail of the projects where it holds
// the auditor role: the same query as GET /audit/events, in a compact form. Listed only to
// principals holding the auditor role somewhere (ToolDescriptor::required_role).
class QueryAuditLogTool final : public Tool {
 public:
  explicit QueryAuditLogTool(audit::AuditQueryService& service);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  audit::AuditQueryService& service_;
};

}  // namespace scigate::tools
