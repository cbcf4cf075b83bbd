#pragma once
// The file tools (docs/DATA.md): list_files, stat_file and read_file look into the caller's
// project's storage areas (and the shared datasets it may read) by area:// URIs. Read-only,
// bounded (a page of entries, 64 KiB of text), charged only the flat call fee. Every path is
// resolved beneath its area's root by the storage connector; another project's area is "not
// found".
#include "connectors/storage/areas.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

class ListFilesTool final : public Tool {
 public:
  static constexpr std::size_t kMaxLimit = 1000;
  explicit ListFilesTool(storage::Areas& areas);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  storage::Areas& areas_;
};

class StatFileTool final : public Tool {
 public:
  explicit StatFileTool(storage::Areas& areas);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  storage::Areas& areas_;
};

class ReadFileTool final : public Tool {
 public:
  static constexpr int64_t kMaxBytes = 64 * 1024;
  explicit ReadFileTool(storage::Areas& areas);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  storage::Areas& areas_;
};

// The JSON an agent sees of one entry ("uri", "type", "size", "modified", ...).
json file_info_json(const std::string& area, const storage::FileInfo& f);

}  // namespace scigate::tools
