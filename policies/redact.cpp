#include "policies/redact.hpp"

#include <algorithm>
#include <cctype>
#include <string_view>

#include "server/common/crypto.hpp"
#include "server/protocol/jsonrpc.hpp"

namespace scigate {
namespace {

using nlohmann::json;

bool sensitive(const json& schema) {
  if (!schema.is_object()) return false;
  auto flag = [&](const char* k) {
    auto it = schema.find(k);
    return it != schema.end() && it->is_boolean() && it->get<bool>();
  };
  return flag("writeOnly") || flag("x-sensitive");
}

const json* child_schema(const json& schema, const std::string& key) {
  if (!schema.is_object()) return nullptr;
  if (auto props = schema.find("properties"); props != schema.end() && props->is_object())
    if (auto it = props->find(key); it != props->end()) return &*it;
  if (auto ap = schema.find("additionalProperties"); ap != schema.end() && ap->is_object()) return &*ap;
  return nullptr;
}

const json* item_schema(const json& schema) {
  if (!schema.is_object()) return nullptr;
  if (auto it = schema.find("items"); it != schema.end() && it->is_object()) return &*it;
  return nullptr;
}

json hashed(const std::string& text) { return "[sha256:" + crypto::sha256_hex(text) + ", " + std::to_string(text.size()) + " bytes]"; }

json walk(const json& v, const json* schema, const RedactOptions& o) {
  static const json kNoSchema = json::object();
  const json& s = schema ? *schema : kNoSchema;
  if (sensitive(s)) return "[redacted]";
  if (v.is_object()) {
    json out = json::object();
    for (auto it = v.begin(); it != v.end(); ++it) out[it.key()] = walk(it.value(), child_schema(s, it.key()), o);
    return out;
  }
  if (v.is_array()) {
    json out = json::array();
    for (const auto& e : v) out.push_back(walk(e, item_schema(s), o));
    return out;
  }
  if (v.is_string()) {
    const auto& str = v.get_ref<const std::string&>();
    if (looks_like_secret(str)) return "[redacted]";
    if (str.size() > o.max_string_bytes) return hashed(str);
  }
  return v;
}

}  // namespace

bool looks_like_secret(const std::string& value) {
  // Plain scans, not std::regex: this runs on every string argument of every call.
  if (value.size() < 16) return false;
  auto token_char = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == '~' || c == '+' ||
           c == '/' || c == '=';
  };
  auto run = [&](std::size_t pos) {
    std::size_t n = 0;
    while (pos + n < value.size() && token_char(value[pos + n])) ++n;
    return n;
  };
  auto preceded_ok = [&](std::size_t pos) { return pos == 0 || !std::isalnum(static_cast<unsigned char>(value[pos - 1])); };
  struct Prefix {
    std::string_view text;
    std::size_t min_run;  // token characters needed after the prefix
  };
  static constexpr Prefix kPrefixes[] = {
      {"sgk_", 20},  {"eyJ", 20},  {"Bearer ", 16}, {"bearer ", 16}, {"sk-", 20}, {"sk_", 20}, {"ghp_", 30},
      {"gho_", 30},  {"ghs_", 30}, {"ghu_", 30},    {"github_pat_", 30}, {"AKIA", 16}, {"hf_", 30}, {"xox", 20},
  };
  for (const auto& p : kPrefixes) {
    for (auto pos = value.find(p.text); pos != std::string::npos; pos = value.find(p.text, pos + 1)) {
      if (!preceded_ok(pos)) continue;
      std::size_t n = run(pos + p.text.size());
      if (n < p.min_run) continue;
      if (p.text == "eyJ" && std::count(value.begin() + pos, value.begin() + pos + 3 + n, '.') < 2) continue;
      return true;
    }
  }
  return value.find("PRIVATE KEY-----") != std::string::npos;
}

json redact_arguments(const json& arguments, const json& input_schema, const RedactOptions& o) {
  json out = walk(arguments, &input_schema, o);
  std::string text = jsonrpc::dump(out);
  if (text.size() > o.max_total_bytes) return hashed(jsonrpc::dump(arguments));
  return out;
}

}  // namespace scigate
