#pragma once
// The audit stage: one record per tools/call, whatever its outcome (including denied, failed,
// malformed and unauthenticated calls).
//
// Thread-safety: append() may be called concurrently and must not block for long; an
// implementation that writes to disk queues to one writer.
#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "server/auth/principal.hpp"

namespace scigate {

struct AuditRecord {
  int64_t time_ms = 0;         // unix time the request reached the gateway
  std::string request_id;
  std::string principal;       // empty when unauthenticated
  std::string project;
  std::string tool;
  // ok | tool_error | denied | invalid | unauthenticated | rate_limited | replayed | cancelled |
  // timeout | internal; requests refused at the edge also unavailable (503)
  std::string outcome;
  std::string error_code;
  std::string decision_rules;  // comma-separated rule ids
  int64_t cost = 0;            // micro-credits posted
  // Set: `cost` is what a settle queued before this record on the same writer posted
  // (Ledger::settle_queued), read when the record is written.
  std::shared_ptr<const int64_t> cost_posted;
  int64_t duration_us = 0;
  nlohmann::json details = nlohmann::json::object();
};

namespace state {
class Writer;
}

class AuditLog {
 public:
  virtual ~AuditLog() = default;
  // The writer records go through (nullptr: none); see Ledger::writer().
  virtual const state::Writer* writer() const { return nullptr; }
  virtual void append(AuditRecord record) = 0;
  // Appends and resumes once the record is durable, so that a call is acknowledged only after
  // its audit record can survive a crash. The default does not wait.
  virtual boost::asio::awaitable<void> append_durable(AuditRecord record) {
    append(std::move(record));
    co_return;
  }
};

// A request refused before the tool pipeline — by a transport (HTTP status, malformed JSON-RPC)
// or by the dispatcher (unknown method, unsupported version) — described for its audit record.
struct EdgeRefusal {
  int http_status = 0;       // 0 over stdio
  int rpc_code = 0;          // the JSON-RPC error code sent, 0 when none
  std::string reason;        // the message the caller got
  std::string transport;     // "http" | "stdio"
  std::string method, path;  // HTTP request line, when one was read
  std::string remote;        // peer address
  std::string rpc_method;    // the JSON-RPC method, when the body was parsed that far
  std::string tool;          // params.name of a tools/call, when parsed
  std::string project;       // a project the caller asked for and belongs to
  const Principal* principal = nullptr;  // null when unauthenticated
};

// The record for an edge refusal: outcome from the status (401 unauthenticated, 403 denied,
// 5xx internal or unavailable, else invalid), error_code from the JSON-RPC code or the status
// (parse_error, header_mismatch, payload_too_large, ...), the facts in details.
AuditRecord edge_refusal_record(const EdgeRefusal& refusal);

// Writes each record as one structured log line (event "audit"), whatever the log level. Not
// tamper-evident; the hash-chained store replaces it.
class LogAuditLog final : public AuditLog {
 public:
  void append(AuditRecord record) override;
};

}  // namespace scigate
