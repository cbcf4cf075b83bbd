#pragma once
// State of a 2025-11-25-era MCP session: one per stdio process, or one per Mcp-Session-Id on
// Streamable HTTP. The 2026-07-28 era has no sessions; its requests carry everything in _meta.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "server/common/utf8.hpp"
#include "server/auth/principal.hpp"
#include "server/common/json_util.hpp"

namespace scigate::mcp {

using nlohmann::json;
using Notifier = std::function<void(const json&)>;

class LegacySession {
 public:
  explicit LegacySession(std::string id) : id_(std::move(id)) { touch(); }

  const std::string& id() const { return id_; }

  // Set once by initialize; read by every later request. Only what later requests use is
  // kept (the client's name, for the audit, at most kMaxClientName bytes): a session lives for
  // hours, and initialize's clientInfo and capabilities can be as large as a request body.
  static constexpr std::size_t kMaxClientName = kMaxAuditedName;
  void initialize(std::string version, std::string client_name) {
    std::lock_guard g(mutex_);
    version_ = std::move(version);
    client_name_ = utf8_prefix(client_name, kMaxClientName);
  }
  bool initialized() const {
    std::lock_guard g(mutex_);
    return !version_.empty();
  }
  std::string version() const {
    std::lock_guard g(mutex_);
    return version_;
  }
  std::string client_name() const {
    std::lock_guard g(mutex_);
    return client_name_;
  }

  // The principal that created the session; later requests must present the same one.
  std::optional<Principal> owner;

  // Server-initiated messages (list_changed) go here: the GET SSE stream on HTTP, stdout on
  // stdio. Empty while no such stream is open.
  void set_outlet(Notifier n) {
    std::lock_guard g(mutex_);
    outlet_ = std::move(n);
    outlet_id_ = 0;
  }
  bool has_outlet() const {
    std::lock_guard g(mutex_);
    return static_cast<bool>(outlet_);
  }
  // The GET stream's outlet, only when none is open (checked and set at once: two GETs racing
  // on one session get one stream and one 409); 0 when one is. The number closes it.
  uint64_t open_outlet(Notifier n) {
    std::lock_guard g(mutex_);
    if (outlet_) return 0;
    outlet_ = std::move(n);
    return outlet_id_ = ++outlets_opened_;
  }
  // Ends the outlet `id` opened, not one opened after it.
  void close_outlet(uint64_t id) {
    std::lock_guard g(mutex_);
    if (id != 0 && id == outlet_id_) {
      outlet_ = nullptr;
      outlet_id_ = 0;
    }
  }
  bool send(const json& message) {
    Notifier n;
    {
      std::lock_guard g(mutex_);
      n = outlet_;
    }
    if (!n) return false;
    n(message);
    return true;
  }

  void touch() {
    last_used_.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  }
  std::chrono::steady_clock::time_point last_used() const {
    return std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(last_used_.load()));
  }

 private:
  const std::string id_;
  mutable std::mutex mutex_;
  std::string version_;
  std::string client_name_;
  Notifier outlet_;
  uint64_t outlet_id_ = 0, outlets_opened_ = 0;
  std::atomic<std::chrono::steady_clock::rep> last_used_{0};
};

// The HTTP transport's sessions, by id. Thread-safe.
class SessionStore {
 public:
  // At most `max_sessions` in all, and `per_principal` of any one principal's.
  explicit SessionStore(std::size_t max_sessions, std::size_t per_principal = 1000)
      : max_(max_sessions), per_principal_(std::max<std::size_t>(1, per_principal)) {}
  // A new session owned by `owner`. A principal at its limit loses its least recently used
  // session (its client gets 404 and initializes again, as after an expiry), so one caller
  // cannot fill the store for the others; nullptr when the store is full of others'.
  std::shared_ptr<LegacySession> create(const Principal& owner);
  std::shared_ptr<LegacySession> find(const std::string& id);
  bool erase(const std::string& id);
  // Ends sessions idle for longer than `idle`; returns how many.
  std::size_t expire(std::chrono::steady_clock::duration idle);
  std::size_t size() const;
  // Every open session (for broadcasting list_changed).
  std::vector<std::shared_ptr<LegacySession>> all() const;

 private:
  void forget_locked(const LegacySession& s);

  std::size_t max_, per_principal_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<LegacySession>> sessions_;
  std::unordered_map<std::string, std::size_t> per_owner_;  // Principal::owner_id() -> sessions
};

}  // namespace scigate::mcp
