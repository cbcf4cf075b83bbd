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

}  // namespace scigate
