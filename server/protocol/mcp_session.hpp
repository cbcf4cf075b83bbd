#pragma once
// State of a 2025-11-25-era MCP session: one per stdio process, or one per Mcp-Session-Id on
// Streamable HTTP. The 2026-07-28 era has no sessions; its requests carry everything in _meta.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "server/auth/principal.hpp"
#include "server/common/json_util.hpp"

namespace scigate::mcp {

using nlohmann::json;
using Notifier = std::function<void(const json&)>;

class LegacySession {
 public:
  explicit LegacySession(std::string id) : id_(std::move(id)) { touch(); }

  const std::string& id() const { return id_; }

  // Set once by initialize; read by every later request.
  void initialize(std::string version, json client_capabilities, json client_info) {
    std::lock_guard g(mutex_);
    version_ = std::move(version);
    client_capabilities_ = std::move(client_capabilities);
    client_info_ = std::move(client_info);
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
    return string_member(client_info_, "name");
  }

  // The principal that created the session; later requests must present the same one.
  std::optional<Principal> owner;

  // Server-initiated messages (list_changed) go here: the GET SSE stream on HTTP, stdout on
  // stdio. Empty while no such stream is open.
  void set_outlet(Notifier n) {
    std::lock_guard g(mutex_);
    outlet_ = std::move(n);
  }
  bool has_outlet() const {
    std::lock_guard g(mutex_);
    return static_cast<bool>(outlet_);
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
  json client_capabilities_;
  json client_info_;
  Notifier outlet_;
  std::atomic<std::chrono::steady_clock::rep> last_used_{0};
};

// The HTTP transport's sessions, by id. Thread-safe.
class SessionStore {
 public:
  explicit SessionStore(std::size_t max_sessions) : max_(max_sessions) {}
  // nullptr when the store is full.
  std::shared_ptr<LegacySession> create();
  std::shared_ptr<LegacySession> find(const std::string& id);
  bool erase(const std::string& id);
  // Ends sessions idle for longer than `idle`; returns how many.
  std::size_t expire(std::chrono::steady_clock::duration idle);
  std::size_t size() const;
  // Every open session (for broadcasting list_changed).
  std::vector<std::shared_ptr<LegacySession>> all() const;

 private:
  std::size_t max_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<LegacySession>> sessions_;
};

}  // namespace scigate::mcp
