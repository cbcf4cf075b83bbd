#pragma once
// The audit stage: one record per tools/call, whatever its outcome (including denied, failed,
// malformed and unauthenticated calls).
//
// Thread-safety: append() may be called concurrently and must not block for long; an
// implementation that writes to disk queues to one writer.
#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace scigate {

struct AuditRecord {
  int64_t time_ms = 0;         // unix time the request reached the gateway
  std::string request_id;
  std::string principal;       // empty when unauthenticated
  std::string project;
  std::string tool;
  std::string outcome;         // ok | tool_error | denied | invalid | unauthenticated | cancelled | timeout | internal
  std::string error_code;
  std::string decision_rules;  // comma-separated rule ids
  int64_t cost = 0;            // micro-credits posted
  int64_t duration_us = 0;
  nlohmann::json details = nlohmann::json::object();
};

class AuditLog {
 public:
  virtual ~AuditLog() = default;
  virtual void append(AuditRecord record) = 0;
  // Appends and resumes once the record is durable, so that a call is acknowledged only after
  // its audit record can survive a crash. The default does not wait.
  virtual boost::asio::awaitable<void> append_durable(AuditRecord record) {
    append(std::move(record));
    co_return;
  }
};

// Writes each record as one structured log line (event "audit"), whatever the log level. Not
// tamper-evident; the hash-chained store replaces it.
class LogAuditLog final : public AuditLog {
 public:
  void append(AuditRecord record) override;
};

}  // namespace scigate
