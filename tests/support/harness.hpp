#pragma once
// In-process wiring of the dispatcher and pipeline for unit tests, with small implementations
// of the governance interfaces that record what the pipeline asked of them.
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <catch2/catch.hpp>

#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "server/auth/directory.hpp"
#include "server/protocol/mcp_dispatcher.hpp"
#include "tests/support/run_blocking.hpp"
#include "tools/builtin.hpp"

namespace scigate::test {

namespace asio = boost::asio;

class RecordingAudit : public AuditLog {
 public:
  void append(AuditRecord r) override {
    std::lock_guard g(mutex);
    records.push_back(std::move(r));
  }
  std::mutex mutex;
  std::vector<AuditRecord> records;
};

// Permits everything except calls to `denied_tool`, which it forbids with rule "test-deny".
class ScriptedPolicy : public PolicyEngine {
 public:
  Decision decide(const PolicyQuery& q) const override {
    Decision d;
    if (q.tool == limited_tool) {
      d.rule_ids = {"test-rate"};
      d.reason = "rate limit test-rate: 1 call per minute";
      d.retry_after = std::chrono::milliseconds(4200);
    } else if (q.tool == denied_tool) {
      d.rule_ids = {"test-deny"};
      d.reason = "calls to " + q.tool + " are forbidden here";
      d.hint = "use another tool";
    } else {
      d.effect = Decision::Effect::kPermit;
      d.rule_ids = {"test-permit"};
    }
    return d;
  }
  bool may_list(const Principal&, const std::string& tool) const override { return tool != hidden_tool; }
  std::string denied_tool;
  std::string hidden_tool;
  std::string limited_tool;
};

// Prices usage with `rates` (micro-credits per unit; unpriced resources are free); holds
// succeed while `balance` covers them; records settle/release calls.
class CountingLedger : public Ledger {
 public:
  MicroCredits price(const Usage& u) {
    double total = 0;
    for (const auto& l : u.lines)
      if (auto it = rates.find(l.resource); it != rates.end()) total += l.quantity * static_cast<double>(it->second);
    return static_cast<MicroCredits>(total);
  }
  asio::awaitable<ReserveResult> reserve(HoldRequest r) override {
    std::lock_guard g(mutex);
    if (fail_reserve) throw std::runtime_error("disk I/O error in /var/lib/scigate/state.db");
    ReserveResult out;
    if (!r.idempotency_key.empty()) {
      if (auto it = done.find(r.idempotency_key); it != done.end()) {
        out.hold.replay = it->second;
        co_return out;
      }
    }
    MicroCredits amount = price(r.worst_case);
    if (amount > balance) {
      out.error = Error{ErrorCode::kInsufficientCredits, "not enough credits", "top up", {}};
      co_return out;
    }
    balance -= amount;
    out.hold = Hold{"h" + std::to_string(++holds), amount, r.project, std::nullopt};
    if (!r.idempotency_key.empty()) keys[out.hold.id] = r.idempotency_key;
    co_return out;
  }
  asio::awaitable<MicroCredits> settle(Hold h, Usage actual, json result) override {
    std::lock_guard g(mutex);
    if (auto it = keys.find(h.id); it != keys.end()) done[it->second] = std::move(result);
    MicroCredits posted = std::min(price(actual), h.amount);
    balance += h.amount - posted;
    ++settled;
    co_return posted;
  }
  asio::awaitable<void> release(Hold h) override {
    std::lock_guard g(mutex);
    balance += h.amount;
    ++released;
    co_return;
  }
  std::mutex mutex;
  std::map<std::string, MicroCredits> rates;
  std::map<std::string, std::string> keys;  // hold id -> idempotency key
  std::map<std::string, json> done;         // idempotency key -> stored result
  MicroCredits balance = 1'000'000;
  int holds = 0, settled = 0, released = 0;
  bool fail_reserve = false;  // reserve() throws, as a ledger whose database fails would
};

struct Harness {
  explicit Harness(std::chrono::seconds tool_timeout = std::chrono::seconds(30)) : pipeline_timeout(tool_timeout) {
    config.demo_tools = true;
    config.projects.push_back(ProjectConfig{"demo", "Demo", {"alice"}});
    config.projects.push_back(ProjectConfig{"other", "Other", {"alice"}});
    registry = tools::make_registry(config);
    pipeline = std::make_unique<ToolCallPipeline>(registry, policy, ledger, audit, metrics, pipeline_timeout);
    dispatcher = std::make_unique<mcp::Dispatcher>(config, *pipeline, registry, policy, metrics);
    alice.name = "alice";
    alice.auth_method = "api_key";
    auth::assign_projects(alice, config);
  }

  static json modern_meta() {
    return json{{mcp::kMetaProtocolVersion, mcp::kModernVersion}, {mcp::kMetaClientCapabilities, json::object()}};
  }
  static json request(json id, const std::string& method, json params = json::object()) {
    return json{{"jsonrpc", "2.0"}, {"id", std::move(id)}, {"method", method}, {"params", std::move(params)}};
  }
  static json modern(json id, const std::string& method, json params = json::object()) {
    params["_meta"] = modern_meta();
    return request(std::move(id), method, std::move(params));
  }

  mcp::Inbound inbound(const json& message, mcp::Transport t = mcp::Transport::kStdio) {
    auto parsed = jsonrpc::parse(message.dump(), {});
    REQUIRE(parsed.message);
    mcp::Inbound in;
    in.message = *parsed.message;
    in.transport = t;
    in.principal = alice;
    in.session = session;
    in.channel = "stdio";
    return in;
  }

  mcp::Outbound call(const json& message) { return run_blocking(io, dispatcher->handle(inbound(message))); }

  json initialize(const std::string& version = "2025-11-25") {
    auto out = call(request(0, "initialize", {{"protocolVersion", version}, {"capabilities", json::object()},
                                              {"clientInfo", {{"name", "t"}, {"version", "1"}}}}));
    return *out.response;
  }

  asio::io_context io;
  Config config;
  ToolRegistry registry;
  ScriptedPolicy policy;
  CountingLedger ledger;
  RecordingAudit audit;
  Metrics metrics;
  std::chrono::seconds pipeline_timeout;
  std::unique_ptr<ToolCallPipeline> pipeline;
  std::unique_ptr<mcp::Dispatcher> dispatcher;
  std::shared_ptr<mcp::LegacySession> session = std::make_shared<mcp::LegacySession>("stdio");
  Principal alice;
};

}  // namespace scigate::test
