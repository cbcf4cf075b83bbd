#pragma once
// What a tool handler sees of the call it serves. Built by the ToolCallPipeline; lives for the
// duration of one tools/call. Not shared between threads: the handler runs on the call's
// executor.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "policies/ledger.hpp"
#include "server/auth/principal.hpp"

namespace scigate {

using nlohmann::json;

// Sends notifications/progress for the call when the caller asked for them (a progressToken);
// otherwise a no-op. Progress must increase; the reporter drops values that do not.
class ProgressReporter {
 public:
  using Sink = std::function<void(double progress, std::optional<double> total, const std::string& message)>;
  ProgressReporter() = default;
  explicit ProgressReporter(Sink sink) : sink_(std::move(sink)) {}
  bool enabled() const { return static_cast<bool>(sink_); }
  void report(double progress, std::optional<double> total = std::nullopt, const std::string& message = {}) {
    if (!sink_ || progress <= last_) return;
    last_ = progress;
    sink_(progress, total, message);
  }

 private:
  Sink sink_;
  double last_ = -1;
};

// Set when the caller cancels (notifications/cancelled, closed stream, deadline, shutdown).
// Asio operations awaited by the handler are cancelled through the coroutine's cancellation
// slot; this flag is for work that is not an Asio operation (CPU loops, blocking calls on a
// worker pool), which should poll it.
class CancellationFlag {
 public:
  void cancel() { flag_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return flag_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> flag_{false};
};

struct CallContext {
  Principal principal;
  std::string project;            // the project this call is for (may be empty for whoami)
  std::string request_id;         // correlation id, in logs and audit records
  std::string protocol_version;   // the MCP version the call was made under
  std::string era;                // "2026-07-28" (stateless) or "2025-11-25" (session) era
  std::string client_name;        // from clientInfo, for display and logs
  std::chrono::steady_clock::time_point deadline;
  std::string task_id;            // set when the call runs as a task (the caller is not waiting)
  ProgressReporter progress;
  std::shared_ptr<CancellationFlag> cancellation = std::make_shared<CancellationFlag>();
  json audit_fields = json::object();  // tool-specific facts for the audit record

  // The credit hold: what it took, and whether a ledger meters this call at all (false when
  // credits are off or the call is free). A tool with a minimum_usage() may have been given
  // less than its worst case and fits its work to `held` (an inference call's max_tokens).
  MicroCredits held = 0;
  bool metered = false;
  // What the tool has used so far. When the call ends without a result (cancelled, deadline),
  // this is charged instead of releasing the hold: tokens a backend generated before the caller
  // hung up are paid for. Tools that use nothing until they return leave it empty.
  Usage incurred;
  // Set by a transport that relays partial output as it is produced (the OpenAI-compatible
  // endpoint's event stream); tools that produce output incrementally hand each piece here, in
  // their own wire format. Empty otherwise. Called on the call's executor.
  std::function<void(const json& piece)> partial;

  bool cancelled() const { return cancellation->cancelled(); }
};

}  // namespace scigate
