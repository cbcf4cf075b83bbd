#pragma once
// Reading members of untrusted JSON without exceptions: nlohmann's value() throws when the
// member exists with another type, which a hostile client can arrange at will.
#include <nlohmann/json.hpp>

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

}  // namespace scigate
