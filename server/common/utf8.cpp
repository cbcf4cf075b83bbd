#include "server/common/utf8.hpp"

namespace scigate {

std::string utf8_safe(std::string_view b, bool* binary, std::size_t* trimmed_front) {
  std::size_t start = 0;
  while (start < b.size() && start < 3 && (static_cast<unsigned char>(b[start]) & 0xC0) == 0x80) ++start;
  // A sequence cut at the end: drop it (the next read starts there).
  std::size_t end = b.size();
  for (std::size_t back = 1; back <= 3 && back <= end - start; ++back) {
    unsigned char c = static_cast<unsigned char>(b[end - back]);
    if ((c & 0xC0) == 0x80) continue;
    std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (need > back) end -= back;
    break;
  }
  if (trimmed_front) *trimmed_front = start;
  std::string out;
  *binary = false;
  std::size_t i = start;
  while (i < end) {
    unsigned char c = static_cast<unsigned char>(b[i]);
    std::size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    bool ok = n > 0 && i + n <= end && !(n == 2 && c < 0xC2);
    for (std::size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(b[i + k]) & 0xC0) == 0x80;
    if (ok && n == 3) {
      unsigned cp = ((c & 0x0F) << 12) | ((static_cast<unsigned char>(b[i + 1]) & 0x3F) << 6);
      ok = cp >= 0x800 && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (ok && n == 4) {
      unsigned cp = ((c & 0x07) << 18) | ((static_cast<unsigned char>(b[i + 1]) & 0x3F) << 12);
      ok = cp >= 0x10000 && cp <= 0x10FFFF;
    }
    if (!ok || c == 0) {
      *binary = true;
      out += "\xEF\xBF\xBD";
      i += 1;
      continue;
    }
    out.append(b.substr(i, n));
    i += n;
  }
  return out;
}

std::string utf8_prefix(std::string_view s, std::size_t max_bytes) {
  if (s.size() <= max_bytes) return std::string(s);
  std::size_t n = max_bytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // s[n] continues a character
  return std::string(s.substr(0, n));
}

}  // namespace scigate
