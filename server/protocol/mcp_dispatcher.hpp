#pragma once
// MCP method dispatch for both protocol eras, chosen per request:
//  - a request whose params._meta carries io.modelcontextprotocol/protocolVersion is served
//    statelessly under 2026-07-28 (server/discover, per-request capabilities, resultType);
//  - anything else belongs to a 2025-11-25-era session (initialize, ping, ...).
// Transport-neutral: the stdio and HTTP transports build an Inbound and send what comes back.
//
// Thread-safety: handle() may run concurrently for many requests.
#include <boost/asio/awaitable.hpp>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "server/config/config.hpp"
#include "server/pipeline/tool_call_pipeline.hpp"
#include "server/protocol/jsonrpc.hpp"
#include "server/protocol/mcp_session.hpp"
#include "server/tasks/task_manager.hpp"

namespace scigate::mcp {

inline constexpr const char* kModernVersion = "2026-07-28";
inline constexpr const char* kLatestLegacyVersion = "2025-11-25";
inline constexpr const char* kMetaProtocolVersion = "io.modelcontextprotocol/protocolVersion";
inline constexpr const char* kMetaClientCapabilities = "io.modelcontextprotocol/clientCapabilities";
inline constexpr const char* kMetaClientInfo = "io.modelcontextprotocol/clientInfo";
inline constexpr const char* kMetaServerInfo = "io.modelcontextprotocol/serverInfo";
inline constexpr const char* kMetaSubscriptionId = "io.modelcontextprotocol/subscriptionId";
inline constexpr const char* kMetaProject = "io.scigate/project";
inline constexpr const char* kMetaIdempotencyKey = "io.scigate/idempotency_key";
inline constexpr const char* kMetaRelatedTask = "io.modelcontextprotocol/related-task";
inline constexpr const char* kTasksExtension = "io.modelcontextprotocol/tasks";

// MCP-specific JSON-RPC error codes (2026-07-28).
inline constexpr int kHeaderMismatch = -32020;
inline constexpr int kMissingRequiredClientCapability = -32021;
inline constexpr int kUnsupportedProtocolVersion = -32022;

// Every version this server speaks, newest first.
const std::vector<std::string>& supported_versions();
bool is_legacy_version(const std::string& v);

enum class Transport { kStdio, kHttp };

struct Inbound {
  jsonrpc::Message message;
  Transport transport = Transport::kStdio;
  std::optional<Principal> principal;        // already authenticated by the transport
  std::shared_ptr<LegacySession> session;    // the legacy session, when there is one
  std::string project_header;                // X-Scigate-Project, if sent
  std::string idempotency_header;            // Idempotency-Key, if sent
  std::string channel;                       // scope of request ids for notifications/cancelled
  Notifier notify;                           // request-scoped notifications; empty if none can be sent
  std::shared_ptr<CancellationFlag> cancellation = std::make_shared<CancellationFlag>();
  std::function<void()> cancel;              // cancels this request (flag + coroutine)
};

struct Outbound {
  std::optional<json> response;  // nothing for notifications and cancelled requests
  int http_status = 200;         // what Streamable HTTP should answer with
  // The tool pipeline wrote this request's audit record. Transports record the other error
  // answers themselves (one record per refused request).
  bool audited = false;
};

class Dispatcher {
 public:
  // `tasks` may be null: no task support ([tasks] enabled = false).
  Dispatcher(const Config& config, ToolCallPipeline& pipeline, const ToolRegistry& registry,
             const PolicyEngine& policy, Metrics& metrics, tasks::TaskManager* tasks = nullptr);

  // Never throws: a bug below answers -32603 with a correlation id (details go to the log).
  boost::asio::awaitable<Outbound> handle(Inbound in);

  // Ends every subscriptions/listen stream gracefully (server shutdown).
  void close_subscriptions();
  // Announces a changed tool list to every listener that asked for it.
  void broadcast_tools_changed();
  std::function<void()> on_tools_changed_legacy;  // set by the composition root

  std::size_t page_size = 50;

 private:
  boost::asio::awaitable<Outbound> route(Inbound& in);
  boost::asio::awaitable<Outbound> handle_modern(Inbound& in, const std::string& version, const json& meta);
  boost::asio::awaitable<Outbound> handle_legacy(Inbound& in);
  boost::asio::awaitable<Outbound> tools_call(Inbound& in, const std::string& version, const std::string& client_name,
                                              const json& meta);
  boost::asio::awaitable<Outbound> subscriptions_listen(Inbound& in, const json& meta);
  Outbound tools_list(const Inbound& in, bool modern);
  Outbound initialize(Inbound& in);
  json server_info() const;
  json capabilities(const std::string& version) const;

  // Tasks (mcp_tasks.cpp): both wire formats, 2025-11-25's experimental tasks and the 2026-07-28
  // tasks extension, over one TaskManager.
  boost::asio::awaitable<Outbound> start_task(Inbound& in, ToolCallRequest req, bool modern,
                                              std::optional<int64_t> ttl_ms, json progress_token);
  boost::asio::awaitable<tasks::TaskOutcome> run_task_call(ToolCallRequest req, json progress_token,
                                                           std::weak_ptr<LegacySession> session, std::string task_id,
                                                           std::shared_ptr<CancellationFlag> cancel,
                                                           std::function<void(std::string)> message);
  boost::asio::awaitable<Outbound> tasks_request(Inbound& in, bool modern);
  void notify_task_listeners(const tasks::TaskRecord& r);
  void cancel_request(const std::string& channel, const json& request_id);
  // Requests that last (tools/call, tasks/result, subscriptions/listen) are registered under
  // their channel and id while they run, so notifications/cancelled can reach them. track():
  // the key ("" without a channel), or nullopt when the id is already in use; the guard
  // unregisters it however the request ends.
  std::optional<std::string> track(const Inbound& in);
  struct InFlightGuard {
    Dispatcher& d;
    std::string key;
    ~InFlightGuard() {
      if (key.empty()) return;
      std::lock_guard g(d.in_flight_mutex_);
      d.in_flight_.erase(key);
    }
  };

  const Config& config_;
  ToolCallPipeline& pipeline_;
  const ToolRegistry& registry_;
  const PolicyEngine& policy_;
  Metrics& metrics_;
  tasks::TaskManager* tasks_;

  std::mutex in_flight_mutex_;
  std::unordered_map<std::string, std::function<void()>> in_flight_;  // channel + id -> cancel

  struct Listener {
    Notifier notify;
    json subscription_id;
    bool tools;
    std::function<void()> close;
    std::string owner;                  // the principal that listens (task notifications are its own)
    std::vector<std::string> task_ids;  // notifications/tasks for these
  };
  std::mutex listeners_mutex_;
  std::unordered_map<uint64_t, Listener> listeners_;
  uint64_t next_listener_ = 0;
};

}  // namespace scigate::mcp
