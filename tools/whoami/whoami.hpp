#pragma once
#include "tools/tool.hpp"

namespace scigate::tools {

// Tells the caller who the gateway thinks it is: principal, projects, server version and the
// protocol era of the call. The first thing an agent should call when a permission looks wrong.
class WhoamiTool final : public Tool {
 public:
  explicit WhoamiTool(std::string server_name);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  std::string server_name_;
};

}  // namespace scigate::tools
