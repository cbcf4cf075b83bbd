#include "policies/canonical_json.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace scigate::canonical {
namespace {

using nlohmann::json;

constexpr int64_t kMaxSafeInteger = 9007199254740992;  // 2^53

// Length of the valid UTF-8 sequence starting at s[i] (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF), or 0 when it is not one.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  auto cont = [&](std::size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
  unsigned char c = b(i);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (i + 1 >= s.size()) return 0;
    unsigned char c1 = b(i + 1);
    if (c == 0xE0 && c1 < 0xA0) return 0;
    if (c == 0xED && c1 > 0x9F) return 0;  // UTF-16 surrogates
    return cont(i + 1) && cont(i + 2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (i + 1 >= s.size()) return 0;
    unsigned char c1 = b(i + 1);
    if (c == 0xF0 && c1 < 0x90) return 0;
    if (c == 0xF4 && c1 > 0x8F) return 0;
    return cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  }
  return 0;
}

bool all_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

// Valid UTF-8 (invalid bytes replaced) to UTF-16 code units, for JCS member ordering.
std::u16string utf16(std::string_view s) {
  std::u16string out;
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = utf8_sequence(s, i);
    char32_t cp;
    auto b = [&](std::size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
    switch (n) {
      case 1: cp = b(i); break;
      case 2: cp = ((b(i) & 0x1F) << 6) | (b(i + 1) & 0x3F); break;
      case 3: cp = ((b(i) & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F); break;
      case 4:
        cp = ((b(i) & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
        break;
      default: cp = 0xFFFD; n = 1;
    }
    i += n;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      out.push_back(static_cast<char16_t>(0xD800 + (cp >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + (cp & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(cp));
    }
  }
  return out;
}

}  // namespace

// Bytes that cannot be copied as they are: controls, '"', '\\', and the start of anything
// beyond ASCII (which must be checked for valid UTF-8).
struct Special {
  bool table[256] = {};
  constexpr Special() {
    for (int c = 0; c < 0x20; ++c) table[c] = true;
    table[static_cast<unsigned char>('"')] = true;
    table[static_cast<unsigned char>('\\')] = true;
    for (int c = 0x80; c < 0x100; ++c) table[c] = true;
  }
};
constexpr Special kSpecial;

void append_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the pending literal run
  for (std::size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (!kSpecial.table[c]) {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (std::size_t n = utf8_sequence(s, i)) {
        i += n;
        continue;
      }
    }
    out.append(s.data() + run, i - run);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out += "\xEF\xBF\xBD";  // an invalid byte: U+FFFD
        }
    }
    ++i;
    run = i;
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

void append_int(std::string& out, int64_t v) {
  if (v > kMaxSafeInteger || v < -kMaxSafeInteger) {
    append_double(out, static_cast<double>(v));
    return;
  }
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_double(std::string& out, double d) {
  if (!std::isfinite(d)) {
    out += "null";
    return;
  }
  if (d == 0) {
    out.push_back('0');  // also -0
    return;
  }
  // Shortest round-trip digits, in scientific form: [-]d[.ddd]e(+|-)XX.
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string_view s(buf, static_cast<std::size_t>(r.ptr - buf));
  if (s.front() == '-') {
    out.push_back('-');
    s.remove_prefix(1);
  }
  auto e = s.find('e');
  std::string digits(1, s[0]);
  if (e > 1) digits.append(s.substr(2, e - 2));
  int exp = std::atoi(std::string(s.substr(e + 1)).c_str());
  const int k = static_cast<int>(digits.size());
  const int n = exp + 1;  // the decimal point sits after n digits
  if (k <= n && n <= 21) {
    out += digits;
    out.append(static_cast<std::size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {
    out.append(digits, 0, static_cast<std::size_t>(n));
    out.push_back('.');
    out.append(digits, static_cast<std::size_t>(n));
  } else if (-6 < n && n <= 0) {
    out += "0.";
    out.append(static_cast<std::size_t>(-n), '0');
    out += digits;
  } else {
    out.push_back(digits[0]);
    if (k > 1) {
      out.push_back('.');
      out.append(digits, 1);
    }
    out.push_back('e');
    out.push_back(n - 1 < 0 ? '-' : '+');
    out += std::to_string(std::abs(n - 1));
  }
}

void append(std::string& out, const json& v) {
  switch (v.type()) {
    case json::value_t::null:
    case json::value_t::discarded: out += "null"; return;
    case json::value_t::boolean: out += v.get<bool>() ? "true" : "false"; return;
    case json::value_t::number_integer: append_int(out, v.get<int64_t>()); return;
    case json::value_t::number_unsigned: {
      uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(kMaxSafeInteger)) append_double(out, static_cast<double>(u));
      else append_int(out, static_cast<int64_t>(u));
      return;
    }
    case json::value_t::number_float: append_double(out, v.get<double>()); return;
    case json::value_t::string: append_string(out, v.get_ref<const std::string&>()); return;
    case json::value_t::binary: out += "null"; return;  // not produced by parsing; JSON has no bytes
    case json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : v) {
        if (!first) out.push_back(',');
        first = false;
        append(out, e);
      }
      out.push_back(']');
      return;
    }
    case json::value_t::object: {
      out.push_back('{');
      // nlohmann keeps members in a std::map: UTF-8 byte order, which is JCS order unless a
      // key has characters beyond ASCII (then compare as UTF-16, after replacing bad UTF-8).
      bool ascii = true;
      for (auto it = v.begin(); it != v.end() && ascii; ++it) ascii = all_ascii(it.key());
      if (ascii) {
        bool first = true;
        for (auto it = v.begin(); it != v.end(); ++it) {
          if (!first) out.push_back(',');
          first = false;
          append_string(out, it.key());
          out.push_back(':');
          append(out, it.value());
        }
      } else {
        std::vector<std::pair<std::u16string, json::const_iterator>> members;
        for (auto it = v.begin(); it != v.end(); ++it) members.emplace_back(utf16(it.key()), it);
        std::stable_sort(members.begin(), members.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        bool first = true;
        for (const auto& [key, it] : members) {
          if (!first) out.push_back(',');
          first = false;
          append_string(out, it.key());
          out.push_back(':');
          append(out, it.value());
        }
      }
      out.push_back('}');
      return;
    }
  }
}

std::string dump(const json& v) {
  std::string out;
  append(out, v);
  return out;
}

}  // namespace scigate::canonical
