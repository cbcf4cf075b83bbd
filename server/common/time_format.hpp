#pragma once
// Times for people and JSON answers: RFC 3339 in UTC, to the second ("2026-11-21T18:14:54Z"),
// and the current time as records store it.
// The audit trail keeps milliseconds (policies/audit_time.hpp).
#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>

namespace scigate {

// Now, as Unix milliseconds (what records and rows store).
inline int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline std::string rfc3339_seconds(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace scigate
