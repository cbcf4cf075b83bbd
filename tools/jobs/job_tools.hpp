#pragma once
// The job tools (docs/JOBS.md): submit_job, get_job, list_jobs, cancel_job, read_job_output,
// wait_job. All of them act on the caller's project only: a job of another project is
// "not found", never "forbidden", so ids of other projects leak nothing. State comes from the
// job ledger (jobs::JobService), never from a scheduler query per call.
#include "connectors/scheduler/job_ledger.hpp"
#include "tools/tool.hpp"

namespace scigate::tools {

// The JSON an agent sees of a job (compact: no events or spec unless `full`).
json job_to_json(const jobs::JobRecord& r, bool full);

class SubmitJobTool final : public Tool {
 public:
  explicit SubmitJobTool(jobs::JobService& jobs);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;
  // Parses validated arguments into a request (exposed for tests); an Error for what the schema
  // cannot say (a walltime of 0, a bad environment name, ...).
  static std::variant<jobs::SubmitRequest, Error> parse(const json& args);

 private:
  ToolDescriptor descriptor_;
  jobs::JobService& jobs_;
};

class GetJobTool final : public Tool {
 public:
  explicit GetJobTool(jobs::JobService& jobs);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  jobs::JobService& jobs_;
};

class ListJobsTool final : public Tool {
 public:
  explicit ListJobsTool(jobs::JobService& jobs);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  jobs::JobService& jobs_;
};

class CancelJobTool final : public Tool {
 public:
  explicit CancelJobTool(jobs::JobService& jobs);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  jobs::JobService& jobs_;
};

class ReadJobOutputTool final : public Tool {
 public:
  static constexpr std::size_t kMaxBytes = 64 * 1024;
  explicit ReadJobOutputTool(jobs::JobService& jobs);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;
  // Trims a split UTF-8 sequence at either end; reports whether the rest is valid UTF-8 without
  // NUL bytes (else it is returned with U+FFFD replacements and flagged binary).
  static std::string utf8_safe(std::string_view bytes, bool* binary, std::size_t* trimmed_front);

 private:
  ToolDescriptor descriptor_;
  jobs::JobService& jobs_;
};

class WaitJobTool final : public Tool {
 public:
  explicit WaitJobTool(jobs::JobService& jobs);
  const ToolDescriptor& descriptor() const override { return descriptor_; }
  boost::asio::awaitable<ToolResult> call(const json& args, CallContext& ctx) override;

 private:
  ToolDescriptor descriptor_;
  jobs::JobService& jobs_;
};

}  // namespace scigate::tools
