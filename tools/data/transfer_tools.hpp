#pragma once
// The transfer tools (docs/DATA.md): stage_data starts a transfer between storage areas and
// HTTP(S) sources and returns its id at once (or waits for it: wait_s, or as a task, with
// progress); get_transfer, list_transfers and cancel_transfer follow it. A transfer of another
// project is "not found". The transfer's credits are its own detached hold (the announced
// size), settled by the bytes moved; the calls themselves cost only their flat fee.
#include "connectors/storage/transfer_service.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

// The JSON an agent sees of a transfer (compact unless `full`).
json transfer_to_json(const storage::TransferRecord& r, bool full);

class StageDataTool final : public Tool {
 public:
  explicit StageDataTool(storage::TransferService& transfers);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  // source_kind / destination_kind ("area" | "http"), source_area, destination_area,
  // source_host, destination_host: for policy conditions ("downloads only into scratch").
  std::variant<json, Error> derive_facts(const json& args) const override;
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  storage::TransferService& transfers_;
};

class GetTransferTool final : public Tool {
 public:
  explicit GetTransferTool(storage::TransferService& transfers);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  storage::TransferService& transfers_;
};

class ListTransfersTool final : public Tool {
 public:
  explicit ListTransfersTool(storage::TransferService& transfers);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  storage::TransferService& transfers_;
};

class CancelTransferTool final : public Tool {
 public:
  explicit CancelTransferTool(storage::TransferService& transfers);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  storage::TransferService& transfers_;
};

}  // namespace scigate::tools
