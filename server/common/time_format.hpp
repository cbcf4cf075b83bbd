#pragma once
// Times for people and JSON answers: RFC 3339 in UTC, to the second ("2026-11-21T18:14:54Z").
// The audit trail keeps milliseconds (policies/audit_time.hpp).
#include <cstdint>
#include <ctime>
#include <string>

namespace scigate {

inline std::string rfc3339_seconds(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace scigate
