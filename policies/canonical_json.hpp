#pragma once
// The canonical JSON form the audit log hashes and signs: RFC 8785, the JSON Canonicalization
// Scheme (JCS). One value has exactly one encoding, so an auditor can re-create the bytes with
// any JCS library (Python `rfc8785`, Go `gowebpki/jcs`, JavaScript `canonicalize`) and check the
// hashes without trusting this code. docs/AUDIT.md states the rules.
//
//   - no whitespace outside strings;
//   - object members sorted by key, comparing keys as UTF-16 code units (for keys without
//     characters above U+FFFF this is the same as comparing their UTF-8 bytes);
//   - strings: `"` and `\` escaped, U+0000..U+001F as \b \t \n \f \r or \u00xx (lower-case hex),
//     everything else as UTF-8 literally; invalid UTF-8 is replaced by U+FFFD;
//   - numbers as ECMAScript's Number.prototype.toString writes the IEEE double: shortest
//     round-trip digits, `1e+21`/`1e-7` outside [1e-6, 1e21), no `.0`, `-0` as `0`. Integers
//     beyond ±2^53 are first rounded to a double (as JCS requires); NaN and infinities, which
//     JSON cannot carry, are written as null.
//
// Canonicalising canonical text (parse, then dump) gives the same bytes.
//
// Thread-safety: plain functions over their arguments.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace scigate::canonical {

std::string dump(const nlohmann::json& value);
void append(std::string& out, const nlohmann::json& value);
// A JSON string literal (with quotes) for `text`, escaped as above.
void append_string(std::string& out, std::string_view text);
void append_int(std::string& out, int64_t value);
void append_double(std::string& out, double value);

}  // namespace scigate::canonical
