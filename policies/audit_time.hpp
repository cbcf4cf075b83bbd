#pragma once
// Times in the audit trail: records carry Unix milliseconds; people and the APIs use RFC 3339.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace scigate::audit {

int64_t now_ms();
// "2026-11-21T18:14:54.579Z" (UTC, milliseconds).
std::string format_time(int64_t unix_ms);
// Accepts RFC 3339 ("2026-11-21T18:14:54Z", fractions and +hh:mm offsets allowed; no offset
// means UTC), a date ("2026-11-21", midnight UTC), Unix milliseconds ("1795284894579"), or a
// duration before `now_ms` ("90s", "15m", "24h", "7d"). nullopt when it is none of these.
std::optional<int64_t> parse_time(std::string_view text, int64_t now_ms);

}  // namespace scigate::audit
