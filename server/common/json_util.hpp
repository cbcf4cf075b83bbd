#pragma once
// Reading members of untrusted JSON without exceptions: nlohmann's value() throws when the
// member exists with another type, which a hostile client can arrange at will.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

namespace scigate {

inline std::string string_member(const nlohmann::json& obj, const char* key, std::string fallback = {}) {
  if (!obj.is_object()) return fallback;
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : fallback;
}

inline bool bool_member(const nlohmann::json& obj, const char* key, bool fallback = false) {
  if (!obj.is_object()) return fallback;
  auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

inline nlohmann::json object_member(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return nlohmann::json::object();
  auto it = obj.find(key);
  return it != obj.end() && it->is_object() ? *it : nlohmann::json::object();
}

// JSON Schema 2020-12 (MCP's tool schemas) counts 2.0 as an integer; nlohmann reads it as a
// float and valijson would refuse it where an integer is asked. Floats with no fraction
// within +-2^53 (exact as doubles) become integers, in place; anything else stays as it is.
inline void integral_floats_to_integers(nlohmann::json& j) {
  if (j.is_number_float()) {
    const double v = j.get<double>();
    if (std::isfinite(v) && std::trunc(v) == v && std::fabs(v) <= 9007199254740992.0)
      j = static_cast<int64_t>(v);
  } else if (j.is_structured()) {
    for (auto& child : j) integral_floats_to_integers(child);
  }
}

// Where an integer too large for int64 (how tools read integers) sits, as a JSON pointer:
// nlohmann keeps it unsigned and valijson reads it as a negative number.
inline std::optional<std::string> oversized_integer(const nlohmann::json& j, const std::string& at = "") {
  if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return at.empty() ? std::string("/") : at;
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (auto p = oversized_integer(it.value(), at + "/" + it.key())) return p;
  } else if (j.is_array()) {
    for (std::size_t i = 0; i < j.size(); ++i)
      if (auto p = oversized_integer(j[i], at + "/" + std::to_string(i))) return p;
  }
  return std::nullopt;
}

}  // namespace scigate
