#include "policies/redact.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <vector>

#include "policies/canonical_json.hpp"
#include "server/common/crypto.hpp"

namespace scigate {
namespace {

using nlohmann::json;

constexpr int kMaxSchemaDepth = 16;  // $ref chains and nested combinators

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }
bool is_alnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }
bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }
bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The ASCII lower-case copy of a value, made once per looks_like_secret(): case-insensitive
// searches are then plain finds of lower-case needles in it (same positions as in the value).
// A find per needle over the copy is memchr/memcmp work; the byte-by-byte tolower comparison it
// replaces was a tenth of the redaction's cost for a chat's messages.
struct Lowered {
  std::string_view text;  // the value as given
  std::string lower;      // its ASCII lower-case copy, position for position
  explicit Lowered(std::string_view v) : text(v), lower(v) {
    for (char& c : lower)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  // `needle` must be lower case.
  std::size_t ifind(std::string_view needle, std::size_t from = 0) const {
    return std::string_view(lower).find(needle, from);
  }
};

// --- token formats ---------------------------------------------------------------------------

enum class Chars {
  kAlnum,     // A-Z a-z 0-9
  kKey,       // and _ -
  kJwt,       // and _ - .
  kBase64,    // and _ - . ~ + / =  (bearer tokens)
};

bool in_class(char c, Chars k) {
  if (is_alnum(c)) return true;
  switch (k) {
    case Chars::kAlnum: return false;
    case Chars::kKey: return c == '_' || c == '-';
    case Chars::kJwt: return c == '_' || c == '-' || c == '.';
    case Chars::kBase64: return c == '_' || c == '-' || c == '.' || c == '~' || c == '+' || c == '/' || c == '=';
  }
  return false;
}

struct TokenFormat {
  std::string_view prefix;
  std::size_t min_run;  // characters of the class needed after the prefix
  Chars chars;
  bool mixed = false;   // the run must mix upper case, lower case and digits (random, not a word)
  bool ignore_case = false;
};

constexpr TokenFormat kFormats[] = {
    {"sgk_", 20, Chars::kKey},                       // scigate API keys
    {"eyJ", 20, Chars::kJwt},                        // JWT (checked for two dots below)
    {"bearer ", 16, Chars::kBase64, false, true},    // Authorization header values
    {"sk-", 20, Chars::kKey, true},                  // OpenAI, Anthropic
    {"sk_", 20, Chars::kKey, true},                  // Stripe
    {"rk_live_", 20, Chars::kAlnum},                 // Stripe restricted
    {"ghp_", 30, Chars::kAlnum},  {"gho_", 30, Chars::kAlnum}, {"ghs_", 30, Chars::kAlnum},
    {"ghu_", 30, Chars::kAlnum},  {"ghr_", 30, Chars::kAlnum},  // GitHub
    {"github_pat_", 30, Chars::kKey},
    {"glpat-", 20, Chars::kKey},                     // GitLab
    {"AKIA", 16, Chars::kAlnum},  {"ASIA", 16, Chars::kAlnum},  // AWS access key ids
    {"AIza", 35, Chars::kKey},                       // Google API keys
    {"hf_", 30, Chars::kAlnum},                      // Hugging Face
    {"xoxb-", 20, Chars::kKey},   {"xoxp-", 20, Chars::kKey},   {"xoxa-", 20, Chars::kKey},
    {"xoxr-", 20, Chars::kKey},   {"xoxs-", 20, Chars::kKey},   // Slack
    {"npm_", 36, Chars::kAlnum},
};

bool matches_format(const Lowered& l, const TokenFormat& f) {
  std::string_view v = l.text;
  for (std::size_t pos = f.ignore_case ? l.ifind(f.prefix) : v.find(f.prefix); pos != std::string_view::npos;
       pos = f.ignore_case ? l.ifind(f.prefix, pos + 1) : v.find(f.prefix, pos + 1)) {
    if (pos > 0 && is_alnum(v[pos - 1])) continue;  // "task-...", "disk_..." are not "sk-"
    std::size_t start = pos + f.prefix.size(), n = 0;
    while (start + n < v.size() && in_class(v[start + n], f.chars)) ++n;
    if (n < f.min_run) continue;
    std::string_view run = v.substr(start, n);
    if (f.prefix == "eyJ" && std::count(run.begin(), run.end(), '.') < 2) continue;
    if (f.prefix == "AKIA" || f.prefix == "ASIA") {
      // Exactly 16 upper-case letters or digits.
      if (!std::all_of(run.begin(), run.begin() + 16, [](char c) { return is_upper(c) || is_digit(c); })) continue;
    }
    if (f.mixed) {
      bool up = std::any_of(run.begin(), run.end(), is_upper), lo = std::any_of(run.begin(), run.end(), is_lower),
           dg = std::any_of(run.begin(), run.end(), is_digit);
      if (!(up && lo && dg)) continue;
    }
    return true;
  }
  return false;
}

// "scheme://user:password@host": a password in a URL.
bool url_with_password(std::string_view v) {
  for (auto pos = v.find("://"); pos != std::string_view::npos; pos = v.find("://", pos + 3)) {
    std::size_t start = pos + 3, end = start;
    while (end < v.size() && v[end] != '/' && v[end] != '?' && v[end] != '#' && v[end] != ' ' && v[end] != '"' &&
           v[end] != '\'' && v[end] != '\n')
      ++end;
    std::string_view authority = v.substr(start, end - start);
    auto at = authority.rfind('@');
    if (at == std::string_view::npos) continue;
    auto colon = authority.substr(0, at).find(':');
    if (colon != std::string_view::npos && at > colon + 1) return true;
  }
  return false;
}

// name=value in a query string, a connection string or a command line.
bool secret_parameter(const Lowered& l) {
  std::string_view v = l.text;
  struct Param {
    std::string_view name;
    std::size_t min_value;
  };
  static constexpr Param kParams[] = {
      {"password=", 4},         {"passwd=", 4},         {"pwd=", 4},           {"secret=", 8},
      {"client_secret=", 8},    {"token=", 8},          {"access_token=", 8},  {"refresh_token=", 8},
      {"id_token=", 8},         {"api_key=", 8},        {"apikey=", 8},        {"api-key=", 8},
      {"key=", 16},             {"sig=", 16},           {"signature=", 16},    {"x-amz-signature=", 16},
      {"x-amz-security-token=", 16}, {"x-goog-signature=", 16},
  };
  for (const auto& p : kParams) {
    for (auto pos = l.ifind(p.name); pos != std::string_view::npos; pos = l.ifind(p.name, pos + 1)) {
      // A parameter starts the string or follows a separator (not "monkey=", "my_token=").
      if (pos > 0) {
        char b = v[pos - 1];
        if (!(b == '?' || b == '&' || b == ';' || b == ' ' || b == '\t' || b == '"' || b == '\'' || b == ',' || b == '-')) continue;
      }
      std::size_t start = pos + p.name.size(), n = 0;
      while (start + n < v.size() && v[start + n] != '&' && v[start + n] != ';' && v[start + n] != ' ' &&
             v[start + n] != '"' && v[start + n] != '\'' && v[start + n] != '\n')
        ++n;
      if (n >= p.min_value) return true;
    }
  }
  return false;
}

// "Authorization: <anything>" or "X-Api-Key: <anything>" as header text.
bool header_with_credentials(const Lowered& l) {
  std::string_view v = l.text;
  for (std::string_view h : {std::string_view("authorization:"), std::string_view("x-api-key:"),
                             std::string_view("proxy-authorization:")}) {
    auto pos = l.ifind(h);
    if (pos == std::string_view::npos) continue;
    std::size_t i = pos + h.size();
    while (i < v.size() && v[i] == ' ') ++i;
    std::size_t n = 0;
    while (i + n < v.size() && v[i + n] != '\n' && v[i + n] != '"' && v[i + n] != '\'') ++n;
    if (n >= 8) return true;
  }
  return false;
}

// --- schemas ---------------------------------------------------------------------------------

struct SchemaContext {
  const json& root;
};

const json* resolve(const json* schema, const SchemaContext& ctx, int depth = 0) {
  while (schema && schema->is_object() && depth++ < kMaxSchemaDepth) {
    auto ref = schema->find("$ref");
    if (ref == schema->end() || !ref->is_string()) return schema;
    const std::string& r = ref->get_ref<const std::string&>();
    if (r == "#") {
      schema = &ctx.root;
      continue;
    }
    if (r.rfind("#/", 0) != 0) return schema;  // remote refs: not followed
    try {
      json::json_pointer ptr(r.substr(1));
      if (!ctx.root.contains(ptr)) return schema;
      schema = &ctx.root.at(ptr);
    } catch (const std::exception&) {
      return schema;
    }
  }
  return schema;
}

template <class Fn>
void each_branch(const json& schema, Fn fn) {
  for (const char* k : {"allOf", "anyOf", "oneOf"})
    if (auto it = schema.find(k); it != schema.end() && it->is_array())
      for (const auto& b : *it) fn(b);
}

bool sensitive(const json* schema, const SchemaContext& ctx, int depth = 0) {
  schema = resolve(schema, ctx);
  if (!schema || !schema->is_object() || depth > kMaxSchemaDepth) return false;
  auto flag = [&](const char* k) {
    auto it = schema->find(k);
    return it != schema->end() && it->is_boolean() && it->get<bool>();
  };
  if (flag("writeOnly") || flag("x-sensitive")) return true;
  if (auto f = schema->find("format"); f != schema->end() && f->is_string() && *f == "password") return true;
  bool any = false;
  each_branch(*schema, [&](const json& b) { any = any || sensitive(&b, ctx, depth + 1); });
  return any;
}

const json* child_schema(const json* schema, const std::string& key, const SchemaContext& ctx, int depth = 0) {
  schema = resolve(schema, ctx);
  if (!schema || !schema->is_object() || depth > kMaxSchemaDepth) return nullptr;
  if (auto props = schema->find("properties"); props != schema->end() && props->is_object())
    if (auto it = props->find(key); it != props->end()) return &*it;
  const json* found = nullptr;
  each_branch(*schema, [&](const json& b) {
    if (!found) found = child_schema(&b, key, ctx, depth + 1);
  });
  if (found) return found;
  if (auto ap = schema->find("additionalProperties"); ap != schema->end() && ap->is_object()) return &*ap;
  return nullptr;
}

const json* item_schema(const json* schema, std::size_t index, const SchemaContext& ctx, int depth = 0) {
  schema = resolve(schema, ctx);
  if (!schema || !schema->is_object() || depth > kMaxSchemaDepth) return nullptr;
  if (auto it = schema->find("items"); it != schema->end()) {
    if (it->is_object()) return &*it;
    if (it->is_array()) {  // draft 7 tuple form
      if (index < it->size()) return &(*it)[index];
      if (auto extra = schema->find("additionalItems"); extra != schema->end() && extra->is_object()) return &*extra;
      return nullptr;
    }
  }
  const json* found = nullptr;
  each_branch(*schema, [&](const json& b) {
    if (!found) found = item_schema(&b, index, ctx, depth + 1);
  });
  return found;
}

json hashed_text(std::string_view text) {
  return "[sha256:" + crypto::sha256_hex(text) + ", " + std::to_string(text.size()) + " bytes]";
}

json walk(const json& v, const json* schema, const SchemaContext& ctx, const RedactOptions& o) {
  if (sensitive(schema, ctx)) return "[redacted]";
  if (v.is_object()) {
    json out = json::object();
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (secret_member_name(it.key()) && !it.value().is_null() && !it.value().is_boolean()) {
        out[it.key()] = "[redacted]";
        continue;
      }
      out[it.key()] = walk(it.value(), child_schema(schema, it.key(), ctx), ctx, o);
    }
    return out;
  }
  if (v.is_array()) {
    json out = json::array();
    std::size_t i = 0;
    for (const auto& e : v) out.push_back(walk(e, item_schema(schema, i++, ctx), ctx, o));
    return out;
  }
  if (v.is_string()) {
    const auto& str = v.get_ref<const std::string&>();
    if (looks_like_secret(str)) return "[redacted]";
    if (str.size() > o.max_string_bytes) return hashed_text(str);
  }
  return v;
}

}  // namespace

bool secret_member_name(std::string_view name) {
  std::string n;
  n.reserve(name.size());
  for (char c : name) n.push_back(c == '-' ? '_' : lower(c));
  static const char* const kExact[] = {
      "password",      "passwd",        "passphrase",   "pwd",          "secret",           "client_secret",
      "api_key",       "apikey",        "api_token",    "access_token", "refresh_token",    "id_token",
      "auth_token",    "token",         "bearer_token", "authorization", "private_key",     "secret_key",
      "secret_access_key", "aws_secret_access_key", "session_token", "credentials", "credential", "cookie",
      "set_cookie",    "x_api_key",
  };
  for (const char* e : kExact)
    if (n == e) return true;
  for (std::string_view suffix : {"_password", "_passwd", "_secret", "_token", "_api_key", "_apikey", "_private_key"})
    if (n.size() > suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) return true;
  return false;
}

bool looks_like_secret(std::string_view value) {
  if (value.size() < 8) return false;
  // One pass first, for what each detector cannot do without: every token format is a run of
  // at least 16 characters of the bearer class (its prefix included, or after "bearer "), a
  // parameter has '=', a URL's password and a header have ':'. Prose has none of the three,
  // and a long prompt is then read once instead of once per needle (~45 finds).
  static const auto kShape = [] {
    std::array<unsigned char, 256> t{};
    for (int c = 0; c < 256; ++c) {
      const char ch = static_cast<char>(c);
      t[c] = static_cast<unsigned char>((in_class(ch, Chars::kBase64) ? 1 : 0) | (ch == '=' ? 2 : 0) | (ch == ':' ? 4 : 0));
    }
    return t;
  }();
  std::size_t run = 0;
  unsigned seen = 0;  // 1: a run of 16, 2: '=', 4: ':'
  for (char c : value) {
    const unsigned f = kShape[static_cast<unsigned char>(c)];
    run = (f & 1) ? run + 1 : 0;
    seen |= (f & 6) | (run >= 16 ? 1 : 0);
  }
  if (value.find("PRIVATE KEY-----") != std::string_view::npos) return true;
  if (seen == 0) return false;
  const Lowered l(value);
  if (seen & 1)
    for (const auto& f : kFormats)
      if (matches_format(l, f)) return true;
  return ((seen & 4) && (url_with_password(value) || header_with_credentials(l))) || ((seen & 2) && secret_parameter(l));
}

json redact_arguments(const json& arguments, const json& input_schema, const RedactOptions& o) {
  SchemaContext ctx{input_schema};
  json out = walk(arguments, &input_schema, ctx, o);
  std::string text = canonical::dump(out);
  if (text.size() <= o.max_total_bytes) return out;
  // Too big: hash the largest members first, keeping the small ones readable.
  if (out.is_object()) {
    std::vector<std::pair<std::size_t, std::string>> sizes;
    for (auto it = out.begin(); it != out.end(); ++it) sizes.emplace_back(canonical::dump(it.value()).size(), it.key());
    std::sort(sizes.begin(), sizes.end(), std::greater<>());
    std::size_t total = text.size();
    for (const auto& [size, key] : sizes) {
      if (total <= o.max_total_bytes) break;
      json h = hashed_text(canonical::dump(out[key]));
      total = total - size + canonical::dump(h).size();
      out[key] = std::move(h);
    }
    if (total <= o.max_total_bytes) return out;
  }
  return hashed_text(text);
}

}  // namespace scigate
