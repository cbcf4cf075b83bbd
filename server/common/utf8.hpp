#pragma once
// Bytes from a file shown to a model as text (job output, read_file).
#include <cstddef>
#include <string>
#include <string_view>

namespace scigate {

// Trims a UTF-8 sequence split at either end of `bytes` (the next read starts there) and reports
// whether the rest is valid UTF-8 without NUL bytes; otherwise it is returned with U+FFFD in
// place of invalid bytes and *binary is set. *trimmed_front: bytes dropped at the start.
std::string utf8_safe(std::string_view bytes, bool* binary, std::size_t* trimmed_front);

// At most `max_bytes` of valid UTF-8 `s`, cut at a character boundary (a client-given name kept
// for the audit or a log, where the whole of it could be megabytes).
std::string utf8_prefix(std::string_view s, std::size_t max_bytes);
// How much of a client-given tool or client name an audit record keeps.
inline constexpr std::size_t kMaxAuditedName = 128;

}  // namespace scigate
