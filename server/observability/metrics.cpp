#include "server/observability/metrics.hpp"

#include <set>
#include <sstream>

namespace scigate {
namespace {
std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '\\' || c == '"') o += '\\';
    if (c == '\n') { o += "\\n"; continue; }
    o += c;
  }
  return o;
}
}  // namespace

void Metrics::record_call(const std::string& tool, const std::string& outcome, double seconds) {
  std::lock_guard g(mutex_);
  ++calls_[{tool, outcome}];
  auto& h = latency_[tool];
  for (std::size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) ++h.buckets[i];
  ++h.count;
  h.sum += seconds;
}

void Metrics::record_http(int status) {
  std::lock_guard g(mutex_);
  ++http_[status];
}

void Metrics::record_rpc(const std::string& method) {
  // Only the protocol's own method names are labels: any other string a client sends (2 MiB
  // long, or 65 of them sent first so real methods fell into "other") is counted as "other".
  static const std::set<std::string, std::less<>> kKnown = {
      "initialize", "notifications/initialized", "ping", "server/discover", "tools/list", "tools/call",
      "resources/list", "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
      "prompts/list", "prompts/get", "completion/complete", "logging/setLevel", "subscriptions/listen",
      "tasks/get", "tasks/list", "tasks/result", "tasks/cancel", "tasks/update", "notifications/cancelled",
      "notifications/progress", "notifications/roots/list_changed"};
  std::lock_guard g(mutex_);
  ++rpc_[kKnown.count(method) ? method : std::string("other")];
}

void Metrics::add_collector(std::function<std::string()> collector) {
  std::lock_guard g(mutex_);
  collectors_.push_back(std::move(collector));
}

std::string Metrics::render() const {
  std::ostringstream o;
  std::lock_guard g(mutex_);
  o << "# HELP scigate_tool_calls_total Tool calls by tool and outcome.\n# TYPE scigate_tool_calls_total counter\n";
  for (const auto& [k, v] : calls_)
    o << "scigate_tool_calls_total{tool=\"" << escape(k.first) << "\",outcome=\"" << escape(k.second) << "\"} " << v
      << "\n";
  o << "# HELP scigate_tool_call_duration_seconds Tool call latency.\n"
       "# TYPE scigate_tool_call_duration_seconds histogram\n";
  for (const auto& [tool, h] : latency_) {
    for (std::size_t i = 0; i < kBuckets.size(); ++i)
      o << "scigate_tool_call_duration_seconds_bucket{tool=\"" << escape(tool) << "\",le=\"" << kBuckets[i] << "\"} "
        << h.buckets[i] << "\n";
    o << "scigate_tool_call_duration_seconds_bucket{tool=\"" << escape(tool) << "\",le=\"+Inf\"} " << h.count << "\n";
    o << "scigate_tool_call_duration_seconds_sum{tool=\"" << escape(tool) << "\"} " << h.sum << "\n";
    o << "scigate_tool_call_duration_seconds_count{tool=\"" << escape(tool) << "\"} " << h.count << "\n";
  }
  o << "# HELP scigate_rpc_requests_total JSON-RPC messages by method.\n# TYPE scigate_rpc_requests_total counter\n";
  for (const auto& [m, v] : rpc_) o << "scigate_rpc_requests_total{method=\"" << escape(m) << "\"} " << v << "\n";
  o << "# HELP scigate_http_responses_total HTTP responses by status.\n# TYPE scigate_http_responses_total counter\n";
  for (const auto& [s, v] : http_) o << "scigate_http_responses_total{status=\"" << s << "\"} " << v << "\n";
  o << "# HELP scigate_sessions Open MCP sessions (2025-11-25 era).\n# TYPE scigate_sessions gauge\n"
    << "scigate_sessions " << sessions.load() << "\n";
  o << "# HELP scigate_tool_calls_in_flight Tool calls being handled.\n# TYPE scigate_tool_calls_in_flight gauge\n"
    << "scigate_tool_calls_in_flight " << in_flight.load() << "\n";
  o << "# HELP scigate_http_connections Open HTTP connections.\n# TYPE scigate_http_connections gauge\n"
    << "scigate_http_connections " << connections.load() << "\n";
  for (const auto& c : collectors_) o << c();
  return o.str();
}

}  // namespace scigate
