#include "server/common/decimal.hpp"

#include <charconv>
#include <cmath>
#include <limits>

namespace scigate::decimal {

std::optional<int64_t> parse(std::string_view s, int scale, std::string* why) {
  auto fail = [&](const char* reason) -> std::optional<int64_t> {
    if (why) *why = reason;
    return std::nullopt;
  };
  std::size_t i = 0;
  bool negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  std::string digits;
  int frac = 0;
  bool dot = false, any = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c >= '0' && c <= '9') {
      any = true;
      if (!(digits.empty() && c == '0')) digits += c;  // leading zeros carry nothing
      if (dot) ++frac;
    } else if (c == '.' && !dot) {
      dot = true;
    } else if (c == '_') {
      continue;  // TOML-style digit separators
    } else {
      break;
    }
  }
  if (!any) return fail("not a number");
  long exp = 0;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool eneg = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) eneg = s[i++] == '-';
    if (i >= s.size()) return fail("not a number");
    for (; i < s.size(); ++i) {
      if (s[i] < '0' || s[i] > '9') return fail("not a number");
      exp = exp * 10 + (s[i] - '0');
      if (exp > 1000) return fail("out of range");
    }
    if (eneg) exp = -exp;
  }
  if (i != s.size()) return fail("not a number");
  // value = digits * 10^(exp - frac); in units of 10^-scale: digits * 10^(exp - frac + scale).
  long shift = exp - frac + scale;
  if (shift < 0) {
    std::size_t drop = static_cast<std::size_t>(-shift);
    std::size_t keep = drop >= digits.size() ? 0 : digits.size() - drop;
    if (digits.find_first_not_of('0', keep) != std::string::npos) return fail("too many decimal places");
    digits.erase(keep);
    shift = 0;
  }
  __int128 v = 0;
  constexpr __int128 kMax = std::numeric_limits<int64_t>::max();
  for (char c : digits) {
    v = v * 10 + (c - '0');
    if (v > kMax) return fail("too large");
  }
  for (long k = 0; k < shift && v != 0; ++k) {
    v *= 10;
    if (v > kMax) return fail("too large");
  }
  return static_cast<int64_t>(negative ? -v : v);
}

std::string shortest(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string format(int64_t v, int scale) {
  bool negative = v < 0;
  // Through unsigned so that INT64_MIN does not overflow.
  uint64_t u = negative ? uint64_t(0) - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  std::string digits = std::to_string(u);
  if (scale > 0) {
    if (digits.size() <= static_cast<std::size_t>(scale))
      digits.insert(0, static_cast<std::size_t>(scale) + 1 - digits.size(), '0');
    digits.insert(digits.size() - static_cast<std::size_t>(scale), ".");
    while (digits.back() == '0') digits.pop_back();
    if (digits.back() == '.') digits.pop_back();
  }
  return (negative && digits != "0" ? "-" : "") + digits;
}

}  // namespace scigate::decimal
