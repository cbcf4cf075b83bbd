#include "policies/rules.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>

#include <boost/container/small_vector.hpp>

#include "policies/toml_util.hpp"
#include "server/common/crypto.hpp"

namespace scigate::policy {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------- literals and text helpers

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::optional<int64_t> parse_uint(std::string_view s) {
  if (s.empty() || s.size() > 12) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  for (;;) {
    auto p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) return out;
    start = p + 1;
  }
}

std::string format_number(double v) {
  if (std::isinf(v)) return "unlimited";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string s;
  for (const auto& x : v) {
    if (!s.empty()) s += sep;
    s += x;
  }
  return s;
}

// A caller-supplied value in a message: bounded, so a huge argument cannot bloat the reason.
std::string shown(const json& v, bool quote_strings) {
  std::string s = (v.is_string() && !quote_strings) ? v.get<std::string>() : v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) {
    std::size_t cut = 77;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
    s = s.substr(0, cut) + "...";
  }
  return s;
}

std::string set_text(const std::vector<json>& set) {
  std::vector<std::string> parts;
  for (const auto& v : set) parts.push_back(shown(v, true));
  return join(parts, ", ");
}

bool valid_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':')) return false;
  return true;
}

bool valid_tool_glob(std::string_view g) {
  if (g.empty() || g.size() > 128) return false;
  for (char c : g)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '*' || c == '?'))
      return false;
  return true;
}

const char* kDayNames[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};

int day_index(std::string_view s) {
  for (int i = 0; i < 7; ++i)
    if (s == kDayNames[i]) return i;
  return -1;
}

std::optional<int> parse_hhmm(std::string_view s) {
  auto parts = split(s, ':');
  if (parts.size() != 2 || parts[0].size() != 2 || parts[1].size() != 2) return std::nullopt;
  auto h = parse_uint(parts[0]), m = parse_uint(parts[1]);
  if (!h || !m || *m > 59 || *h > 24 || (*h == 24 && *m != 0)) return std::nullopt;
  return static_cast<int>(*h * 60 + *m);
}

std::string offset_text(int minutes) {
  if (minutes == 0) return "UTC";
  char buf[16];
  int a = std::abs(minutes);
  std::snprintf(buf, sizeof buf, "UTC%c%02d:%02d", minutes < 0 ? '-' : '+', a / 60, a % 60);
  return buf;
}

// ---------------------------------------------------------------- evaluation helpers

struct LocalTime {
  int weekday;  // 0 = Monday
  int minute;   // of the day
};

LocalTime local_time(std::chrono::system_clock::time_point now, int offset_minutes) {
  int64_t s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count() + offset_minutes * 60;
  int64_t days = s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
  int64_t sod = s - days * 86400;
  int64_t wd = (days + 3) % 7;  // 1970-01-01 was a Thursday
  if (wd < 0) wd += 7;
  return LocalTime{static_cast<int>(wd), static_cast<int>(sod / 60)};
}

std::string local_text(const LocalTime& t) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s %02d:%02d", kDayNames[t.weekday], t.minute / 60, t.minute % 60);
  return buf;
}

bool in_window(const TimeWindow& w, const LocalTime& t) {
  if (!(w.days & (1u << t.weekday))) return false;
  if (w.all_day) return true;
  if (w.start_minute < w.end_minute) return t.minute >= w.start_minute && t.minute < w.end_minute;
  return t.minute >= w.start_minute || t.minute < w.end_minute;
}

using Values = boost::container::small_vector<const json*, 4>;

// Every value the path reaches. Arrays anywhere on the path fan out; a member that is absent
// (or null) is one missing value. A scalar where the path needs an object is an error.
bool collect(const json& node, const std::vector<std::string>& path, std::size_t i, Values& out, bool& missing,
             std::string& err) {
  if (node.is_array()) {
    for (const auto& e : node)
      if (!collect(e, path, i, out, missing, err)) return false;
    return true;
  }
  if (i == path.size()) {
    if (node.is_null())
      missing = true;
    else
      out.push_back(&node);
    return true;
  }
  if (node.is_null()) {
    missing = true;
    return true;
  }
  if (!node.is_object()) {
    std::string prefix;
    for (std::size_t k = 0; k < i; ++k) prefix += (k ? "." : "") + path[k];
    err = (prefix.empty() ? std::string("the arguments") : prefix) + " is " + shown(node, true) +
          ", not an object with \"" + path[i] + "\"";
    return false;
  }
  auto it = node.find(path[i]);
  if (it == node.end()) {
    missing = true;
    return true;
  }
  return collect(*it, path, i + 1, out, missing, err);
}

enum Op { kMax, kMin, kAbove, kBelow, kIn, kNotIn, kPrefix, kNotPrefix, kOpCount };

bool under(const std::string& path, const std::string& prefix) {
  if (path.size() < prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  if (path.size() == prefix.size()) return true;
  return prefix.back() == '/' || path[prefix.size()] == '/';
}

struct Leaf {
  explicit Leaf(const json* v) : value(v) {}
  const json* value;
  double number = 0;  // in the condition's unit
  std::string path;   // normalised, when the condition has path tests
  int prefix_hit = -1, not_prefix_hit = -1;
};

// Reads the leaf as the condition needs it. False (with err/err_hint) when it cannot.
bool prepare(const Condition& c, Leaf& leaf, std::string& err, std::string& err_hint) {
  const json& v = *leaf.value;
  bool numeric = c.max || c.min || c.above || c.below;
  if (numeric) {
    switch (c.unit) {
      case Unit::kNumber:
        if (!v.is_number()) {
          err = c.path_text + " is " + shown(v, true) + ", not a number";
          err_hint = "give " + c.path_text + " as a number";
          return false;
        }
        leaf.number = v.get<double>();
        break;
      case Unit::kWalltime: {
        std::optional<double> s;
        if (v.is_number() && v.get<double>() >= 0) s = v.get<double>() * 60.0;  // Slurm: plain numbers are minutes
        else if (v.is_string()) s = parse_walltime(v.get<std::string>());
        if (!s) {
          err = c.path_text + " " + shown(v, true) + " is not a walltime";
          err_hint = "give " + c.path_text + " as HH:MM:SS, D-HH:MM:SS or a number of minutes";
          return false;
        }
        leaf.number = *s;
        break;
      }
      case Unit::kBytes: {
        std::optional<double> b;
        if (v.is_number() && v.get<double>() >= 0) b = v.get<double>();
        else if (v.is_string()) b = parse_bytes(v.get<std::string>());
        if (!b) {
          err = c.path_text + " " + shown(v, true) + " is not a size in bytes";
          err_hint = "give " + c.path_text + " as a number of bytes or a size like \"10GiB\"";
          return false;
        }
        leaf.number = *b;
        break;
      }
      case Unit::kNone:
        break;
    }
  }
  if (!c.prefix.empty() || !c.not_prefix.empty()) {
    if (!v.is_string()) {
      err = c.path_text + " is " + shown(v, true) + ", not a path";
      err_hint = "give " + c.path_text + " as a string";
      return false;
    }
    std::string why;
    auto norm = normalise_path(v.get<std::string>(), &why);
    if (!norm) {
      err = c.path_text + " " + shown(v, true) + " " + why + ", which policies refuse";
      err_hint = "give " + c.path_text + " as a plain path without \"..\" segments, backslashes or percent-encoded characters";
      return false;
    }
    leaf.path = std::move(*norm);
    for (std::size_t i = 0; i < c.prefix.size() && leaf.prefix_hit < 0; ++i)
      if (under(leaf.path, c.prefix[i])) leaf.prefix_hit = static_cast<int>(i);
    for (std::size_t i = 0; i < c.not_prefix.size() && leaf.not_prefix_hit < 0; ++i)
      if (under(leaf.path, c.not_prefix[i])) leaf.not_prefix_hit = static_cast<int>(i);
  }
  return true;
}

bool op_present(const Condition& c, int op) {
  switch (op) {
    case kMax: return c.max.has_value();
    case kMin: return c.min.has_value();
    case kAbove: return c.above.has_value();
    case kBelow: return c.below.has_value();
    case kIn: return !c.in.empty();
    case kNotIn: return !c.not_in.empty();
    case kPrefix: return !c.prefix.empty();
    case kNotPrefix: return !c.not_prefix.empty();
  }
  return false;
}

bool json_in(const json& v, const std::vector<json>& set) {
  for (const auto& s : set)
    if (s == v) return true;
  return false;
}

bool op_holds(const Condition& c, int op, const Leaf& l) {
  switch (op) {
    case kMax: return l.number <= c.max->value;
    case kMin: return l.number >= c.min->value;
    case kAbove: return l.number > c.above->value;
    case kBelow: return l.number < c.below->value;
    case kIn: return json_in(*l.value, c.in);
    case kNotIn: return !json_in(*l.value, c.not_in);
    case kPrefix: return l.prefix_hit >= 0;
    case kNotPrefix: return l.not_prefix_hit < 0;
  }
  return false;
}

// -1 when every test of the condition holds, else the first that does not.
int first_failing(const Condition& c, const Leaf& l) {
  for (int op = 0; op < kOpCount; ++op)
    if (op_present(c, op) && !op_holds(c, op, l)) return op;
  return -1;
}

std::string value_text(const Condition& c, const Leaf& l, int op) {
  bool numeric_op = op <= kBelow;
  if (numeric_op && c.unit == Unit::kWalltime && l.value->is_number()) return shown(*l.value, false) + " minutes";
  return shown(*l.value, !numeric_op);
}

std::string list_text(const std::vector<std::string>& v) {
  return v.size() == 1 ? v[0] : "one of " + join(v, ", ");
}

// What makes the test pass ("at most 24:00:00") and what makes it fail ("above 24:00:00").
std::string pass_phrase(const Condition& c, int op) {
  switch (op) {
    case kMax: return "at most " + c.max->text;
    case kMin: return "at least " + c.min->text;
    case kAbove: return "above " + c.above->text;
    case kBelow: return "below " + c.below->text;
    case kIn: return c.in.size() == 1 ? shown(c.in[0], true) : "one of " + set_text(c.in);
    case kNotIn: return "none of " + set_text(c.not_in);
    case kPrefix: return "under " + list_text(c.prefix_text);
    case kNotPrefix: return "outside " + join(c.not_prefix_text, " and ");
  }
  return {};
}

std::string fail_phrase(const Condition& c, int op) {
  switch (op) {
    case kMax: return "above " + c.max->text;
    case kMin: return "below " + c.min->text;
    case kAbove: return "at most " + c.above->text;
    case kBelow: return "at least " + c.below->text;
    case kIn: return "none of " + set_text(c.in);
    case kNotIn: return c.not_in.size() == 1 ? shown(c.not_in[0], true) : "one of " + set_text(c.not_in);
    case kPrefix: return "outside " + join(c.prefix_text, " and ");
    case kNotPrefix: return "under " + list_text(c.not_prefix_text);
  }
  return {};
}

// "walltime at most 24:00:00" / "gpus at least 1 and at most 4"
std::string pass_advice(const Condition& c) {
  std::vector<std::string> parts;
  for (int op = 0; op < kOpCount; ++op)
    if (op_present(c, op)) parts.push_back(pass_phrase(c, op));
  return c.path_text + " " + join(parts, " and ");
}

std::string fail_advice(const Condition& c) {
  std::vector<std::string> parts;
  for (int op = 0; op < kOpCount; ++op)
    if (op_present(c, op)) parts.push_back(fail_phrase(c, op));
  return c.path_text + " " + join(parts, " or ");
}

// Why a permit's test failed: "walltime 48:00:00 exceeds the limit 24:00:00".
std::string failed_fact(const Condition& c, int op, const Leaf& l) {
  std::string v = c.path_text + " " + value_text(c, l, op);
  switch (op) {
    case kMax: return v + " exceeds the limit " + c.max->text;
    case kMin: return v + " is below the minimum " + c.min->text;
    case kAbove: return v + " is not above " + c.above->text;
    case kBelow: return v + " is not below " + c.below->text;
    case kIn: return v + " is not " + pass_phrase(c, kIn);
    case kNotIn: return v + " is excluded";
    case kPrefix: return v + " is not under " + list_text(c.prefix_text);
    case kNotPrefix: return v + " is under " + c.not_prefix_text[static_cast<std::size_t>(l.not_prefix_hit)];
  }
  return v;
}

// What a forbid saw: "walltime 48:00:00 is above 24:00:00".
std::string holding_fact(const Condition& c, const Leaf& l) {
  std::vector<std::string> parts;
  int first_op = -1;
  for (int op = 0; op < kOpCount; ++op) {
    if (!op_present(c, op)) continue;
    if (first_op < 0) first_op = op;
    if (op == kPrefix)
      parts.push_back("under " + c.prefix_text[static_cast<std::size_t>(l.prefix_hit)]);
    else if (op == kIn)
      parts.push_back("one of " + set_text(c.in));
    else
      parts.push_back(pass_phrase(c, op));
  }
  return c.path_text + " " + value_text(c, l, first_op) + " is " + join(parts, " and ");
}

// The default the tool's input schema declares for the path (through "properties", and
// "items" for arrays), or null.
const json* schema_default(const json* schema, const std::vector<std::string>& path) {
  const json* node = schema;
  for (const auto& seg : path) {
    while (node && node->is_object() && !node->contains("properties") && node->contains("items")) node = &(*node)["items"];
    if (!node || !node->is_object()) return nullptr;
    auto props = node->find("properties");
    if (props == node->end() || !props->is_object()) return nullptr;
    auto it = props->find(seg);
    if (it == props->end()) return nullptr;
    node = &*it;
  }
  if (!node || !node->is_object()) return nullptr;
  auto d = node->find("default");
  return d == node->end() || d->is_null() ? nullptr : &*d;
}

// What stands in for a missing value: the tool's schema default (what the tool will do), else
// the condition's own `default` (what the backend will do), else nothing.
const json* fill_in(const Condition& c, const json* schema) {
  if (const json* d = schema_default(schema, c.path)) return d;
  return c.default_value ? &*c.default_value : nullptr;
}

// What the explanation of a decision collects.
struct Explain {
  std::vector<std::string> facts;  // permit: what failed; forbid: what matched
  std::vector<std::string> asks;   // "walltime at most 24:00:00": what a call should ask for instead
  std::vector<std::string> other;  // other advice ("call during ...")
  std::string error, error_hint;
};

enum class Eval { kHolds, kFails, kError };

// Permit semantics: holds when every value the path reaches passes every test; a missing value
// (with no default) passes only when the condition is optional.
Eval permit_condition(const Condition& c, const json& args, const json* schema, Explain* ex, std::string& err,
                      std::string& err_hint) {
  Values values;
  bool missing = false;
  if (!collect(args, c.path, 0, values, missing, err)) {
    err_hint = "give the arguments the shape the tool's schema describes";
    return Eval::kError;
  }
  if (missing) {
    if (const json* d = fill_in(c, schema))
      values.push_back(d);
    else if (!c.optional) {
      if (ex) {
        ex->facts.push_back("the call does not set " + c.path_text + ", which the rule requires");
        ex->asks.push_back(pass_advice(c));
      }
      return Eval::kFails;
    }
  }
  for (const json* v : values) {
    Leaf leaf{v};
    if (!prepare(c, leaf, err, err_hint)) return Eval::kError;
    int op = first_failing(c, leaf);
    if (op >= 0) {
      if (ex) {
        ex->facts.push_back(failed_fact(c, op, leaf));
        ex->asks.push_back(pass_advice(c));
      }
      return Eval::kFails;
    }
  }
  return Eval::kHolds;
}

// Forbid semantics: holds (the forbid fires) when some value the path reaches passes every
// test. A missing value stands for its default (the tool schema's, else the condition's), and
// without one it does not fire the forbid: the call does not ask for the forbidden thing.
Eval forbid_condition(const Condition& c, const json& args, const json* schema, Explain* ex, std::string& err,
                      std::string& err_hint) {
  Values values;
  bool missing = false;
  if (!collect(args, c.path, 0, values, missing, err)) {
    err_hint = "give the arguments the shape the tool's schema describes";
    return Eval::kError;
  }
  if (missing)
    if (const json* d = fill_in(c, schema)) values.push_back(d);
  bool fired = false;
  for (const json* v : values) {
    Leaf leaf{v};
    if (!prepare(c, leaf, err, err_hint)) return Eval::kError;
    if (!fired && first_failing(c, leaf) < 0) {
      fired = true;
      if (ex) {
        ex->facts.push_back(holding_fact(c, leaf));
        ex->asks.push_back(fail_advice(c));
      }
    }
  }
  return fired ? Eval::kHolds : Eval::kFails;
}

struct RuleEval {
  Eval result = Eval::kHolds;
  int failed = 0;     // conditions (and the time window) that did not hold
  int satisfied = 0;  // conditions that held
};

// Evaluates a rule's time window and conditions. With `all`, goes on after the first failure
// (to explain a denial); otherwise stops there.
RuleEval evaluate(const Rule& r, const json& args, const json* schema, const LocalTime& t, bool all, Explain* ex) {
  RuleEval out;
  if (r.context) {
    bool inside = in_window(*r.context, t);
    if (r.permit && !inside) {
      ++out.failed;
      out.result = Eval::kFails;
      if (ex) {
        ex->facts.push_back("calls are permitted only " + r.context->text + ", and it is " + local_text(t));
        ex->other.push_back("call again " + r.context->text);
      }
      if (!all) return out;
    } else if (!r.permit && !inside) {
      out.result = Eval::kFails;
      return out;
    } else if (!r.permit && ex) {
      ex->facts.push_back("it is " + local_text(t) + ", within " + r.context->text);
      ex->other.push_back("call again outside " + r.context->text);
    }
  }
  for (const Condition& c : r.when) {
    std::string err, err_hint;
    Eval e = r.permit ? permit_condition(c, args, schema, ex, err, err_hint)
                      : forbid_condition(c, args, schema, ex, err, err_hint);
    if (e == Eval::kError) {
      if (ex) {
        ex->error = err;
        ex->error_hint = err_hint;
      }
      out.result = Eval::kError;
      return out;
    }
    if (e == Eval::kHolds) {
      ++out.satisfied;
      continue;
    }
    ++out.failed;
    out.result = Eval::kFails;
    if (!all) return out;
  }
  return out;
}

bool tool_matches(const std::vector<std::string>& globs, const std::string& tool) {
  if (globs.empty()) return true;
  for (const auto& g : globs)
    if (glob_match(g, tool)) return true;
  return false;
}

bool principal_matches(const std::vector<PrincipalPattern>& pats, const Principal& p, const std::string& project) {
  if (pats.empty()) return true;
  for (const auto& pat : pats)
    if (pat.matches(p, project)) return true;
  return false;
}

std::string principal_text(const PrincipalPattern& p) {
  switch (p.kind) {
    case PrincipalPattern::Kind::kRole: return "role:" + p.name;
    case PrincipalPattern::Kind::kGroup: return "group:" + p.name;
    case PrincipalPattern::Kind::kUser: return "user:" + p.name;
    case PrincipalPattern::Kind::kService: return "service:" + p.name;
  }
  return p.name;
}

std::string hint_from(const Explain& ex) {
  std::vector<std::string> parts;
  if (!ex.asks.empty()) parts.push_back("ask for " + join(ex.asks, " and "));
  for (const auto& o : ex.other) parts.push_back(o);
  return join(parts, "; ");
}

// "4.2 s", "12 min", "3.5 h".
std::string wait_text(std::chrono::milliseconds wait) {
  double s = static_cast<double>(wait.count()) / 1000.0;
  char buf[32];
  if (s < 120)
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  else if (s < 7200)
    std::snprintf(buf, sizeof buf, "%.0f min", std::ceil(s / 60));
  else
    std::snprintf(buf, sizeof buf, "%.1f h", s / 3600);
  return buf;
}

// "10 calls per minute per principal", "200000 tokens per minute per project".
std::string rate_text(const RateLimit& l) {
  static const char* kPer[] = {"per principal", "per project", "per tool", "per principal and tool"};
  return format_number(l.count) + " " + (l.cost.empty() ? std::string("calls") : l.cost) + " per " + l.period_name + " " +
         kPer[static_cast<int>(l.per)];
}

// ---------------------------------------------------------------- parsing

struct Parser {
  const std::string& source;

  [[noreturn]] void fail(const toml::source_region& r, const std::string& what) const { fail_at(r, source, what); }

  std::vector<std::string> strings(const toml::node& n, std::string_view key) const {
    const toml::array* a = n.as_array();
    if (!a) fail(n.source(), "\"" + std::string(key) + "\" must be an array of strings");
    if (a->empty()) fail(n.source(), "\"" + std::string(key) + "\" must not be empty (leave it out to mean any)");
    std::vector<std::string> out;
    for (const auto& e : *a) {
      auto s = e.value<std::string>();
      if (!s) fail(e.source(), "\"" + std::string(key) + "\" must hold strings");
      out.push_back(*s);
    }
    return out;
  }

  PrincipalPattern principal(const toml::node& n, const std::string& text) const {
    auto colon = text.find(':');
    std::string kind = colon == std::string::npos ? "" : text.substr(0, colon);
    std::string name = colon == std::string::npos ? "" : text.substr(colon + 1);
    PrincipalPattern p;
    p.name = name;
    if (kind == "role") {
      p.kind = PrincipalPattern::Kind::kRole;
      const auto& roles = known_roles();
      if (std::find(roles.begin(), roles.end(), name) == roles.end())
        fail(n.source(), "unknown role \"" + name + "\" in \"" + text + "\" (known: " + join(roles, ", ") + ")");
    } else if (kind == "group") {
      p.kind = PrincipalPattern::Kind::kGroup;
    } else if (kind == "user") {
      p.kind = PrincipalPattern::Kind::kUser;
    } else if (kind == "service") {
      p.kind = PrincipalPattern::Kind::kService;
    } else {
      fail(n.source(), "unknown principal \"" + text +
                           "\": write user:NAME, service:NAME, group:NAME or role:ROLE (user:* and service:* match any)");
    }
    if (name.empty()) fail(n.source(), "principal \"" + text + "\" has no name after the colon");
    if (name == "*" && (kind == "role" || kind == "group"))
      fail(n.source(), "\"" + text + "\": only user:* and service:* may use a wildcard");
    return p;
  }

  std::vector<PrincipalPattern> principals(const toml::node& n) const {
    std::vector<PrincipalPattern> out;
    auto list = strings(n, "principals");
    const toml::array* a = n.as_array();
    for (std::size_t i = 0; i < list.size(); ++i) out.push_back(principal(*a->get(i), list[i]));
    return out;
  }

  std::vector<std::string> tools(const toml::node& n) const {
    auto list = strings(n, "tools");
    const toml::array* a = n.as_array();
    for (std::size_t i = 0; i < list.size(); ++i)
      if (!valid_tool_glob(list[i]))
        fail(a->get(i)->source(), "\"" + list[i] + "\" is not a tool name or glob (letters, digits, - _ . and the wildcards * ?)");
    return list;
  }

  // A bound's literal; sets *unit from the literal when the condition did not name one.
  Bound bound(const toml::node& n, std::string_view op, Unit& unit, bool unit_given, const std::string& path) const {
    Bound b;
    if (auto i = n.as_integer()) {
      b.value = static_cast<double>(i->get());
      b.text = std::to_string(i->get());
    } else if (auto f = n.as_floating_point()) {
      b.value = f->get();
      b.text = format_number(f->get());
    } else if (auto s = n.as_string()) {
      b.text = s->get();
      Unit literal = Unit::kNone;
      if (unit_given && unit == Unit::kNumber)
        fail(n.source(), "\"" + std::string(op) + "\" for " + path + " must be a number (unit = \"number\")");
      if (unit_given) {
        literal = unit;
      } else if (b.text.find_first_of(":-") != std::string::npos || lower(b.text) == "unlimited" ||
                 lower(b.text) == "infinite") {
        literal = Unit::kWalltime;
      } else if (!b.text.empty() && std::isalpha(static_cast<unsigned char>(b.text.back()))) {
        literal = Unit::kBytes;
      } else {
        fail(n.source(), "\"" + b.text + "\" for " + path +
                             " is ambiguous: write a number, a walltime like \"24:00:00\", a size like \"10GiB\", or set unit");
      }
      std::optional<double> v = literal == Unit::kWalltime ? parse_walltime(b.text) : parse_bytes(b.text);
      if (!v)
        fail(n.source(), literal == Unit::kWalltime
                             ? "bad walltime \"" + b.text + "\" for " + path +
                                   " (use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
                             : "bad byte size \"" + b.text + "\" for " + path + " (use e.g. 512, \"4KiB\", \"10GiB\", \"1.5TB\")");
      b.value = *v;
      if (!unit_given) {
        if (unit != Unit::kNone && unit != literal)
          fail(n.source(), "the bounds for " + path + " mix units; write them alike or set unit");
        unit = literal;
      }
      return b;
    } else {
      fail(n.source(), "\"" + std::string(op) + "\" for " + path + " must be a number or a walltime/size string");
    }
    // A plain number.
    if (unit_given) {
      if (unit == Unit::kWalltime) b.value *= 60.0;  // minutes, as Slurm reads a bare number
    } else {
      if (unit != Unit::kNone && unit != Unit::kNumber)
        fail(n.source(), "the bounds for " + path + " mix units; write them alike or set unit");
      unit = Unit::kNumber;
    }
    return b;
  }

  std::vector<json> value_set(const toml::node& n, std::string_view op, const std::string& path) const {
    const toml::array* a = n.as_array();
    if (!a || a->empty()) fail(n.source(), "\"" + std::string(op) + "\" for " + path + " must be a non-empty array");
    std::vector<json> out;
    for (const auto& e : *a) {
      if (!(e.is_string() || e.is_integer() || e.is_floating_point() || e.is_boolean()))
        fail(e.source(), "\"" + std::string(op) + "\" for " + path + " must hold strings, numbers or booleans");
      out.push_back(toml_to_json(e));
    }
    return out;
  }

  void prefixes(const toml::node& n, std::string_view op, const std::string& path, std::vector<std::string>& norm,
                std::vector<std::string>& text) const {
    const toml::array* a = n.as_array();
    if (!a || a->empty()) fail(n.source(), "\"" + std::string(op) + "\" for " + path + " must be a non-empty array of paths");
    for (const auto& e : *a) {
      auto s = e.value<std::string>();
      if (!s || s->empty()) fail(e.source(), "\"" + std::string(op) + "\" for " + path + " must hold non-empty strings");
      std::string why;
      auto p = normalise_path(*s, &why);
      if (!p) fail(e.source(), "prefix \"" + *s + "\" " + why);
      text.push_back(*s);
      norm.push_back(*p);
    }
  }

  Condition condition(const toml::key& key, const toml::node& n) const {
    Condition c;
    c.path_text = std::string(key.str());
    c.pos = Position{static_cast<int>(key.source().begin.line), static_cast<int>(key.source().begin.column)};
    for (auto seg : split(c.path_text, '.')) {
      if (seg.empty()) fail(key.source(), "bad argument path \"" + c.path_text + "\" (empty segment)");
      c.path.emplace_back(seg);
    }
    const toml::table* t = n.as_table();
    if (!t)
      fail(n.source(), "the condition on " + c.path_text +
                           " must be a table of tests, e.g. { max = 4 }, { in = [\"a\"] } or { prefix = [\"area://scratch/\"] }");
    reject_unknown(*t, {"max", "min", "above", "below", "in", "not_in", "prefix", "not_prefix", "unit", "optional", "default"},
                   "the condition on " + c.path_text + " (tests: max, min, above, below, in, not_in, prefix, not_prefix)",
                   source);
    bool unit_given = false;
    if (const toml::node* u = t->get("unit")) {
      auto s = u->value<std::string>();
      if (s && *s == "number") c.unit = Unit::kNumber;
      else if (s && *s == "walltime") c.unit = Unit::kWalltime;
      else if (s && *s == "bytes") c.unit = Unit::kBytes;
      else fail(u->source(), "unit must be \"number\", \"walltime\" or \"bytes\"");
      unit_given = true;
    }
    auto b = [&](std::string_view op, std::optional<Bound>& into) {
      if (const toml::node* v = t->get(op)) into = bound(*v, op, c.unit, unit_given, c.path_text);
    };
    b("max", c.max);
    b("min", c.min);
    b("above", c.above);
    b("below", c.below);
    if (const toml::node* v = t->get("in")) c.in = value_set(*v, "in", c.path_text);
    if (const toml::node* v = t->get("not_in")) c.not_in = value_set(*v, "not_in", c.path_text);
    if (const toml::node* v = t->get("prefix")) prefixes(*v, "prefix", c.path_text, c.prefix, c.prefix_text);
    if (const toml::node* v = t->get("not_prefix")) prefixes(*v, "not_prefix", c.path_text, c.not_prefix, c.not_prefix_text);
    if (const toml::node* v = t->get("optional")) {
      auto o = v->value<bool>();
      if (!o) fail(v->source(), "\"optional\" must be true or false");
      c.optional = *o;
    }
    if (const toml::node* v = t->get("default")) {
      c.default_value = toml_to_json(*v);
      // The default must itself be readable by the tests, or every call without the argument
      // would fail to evaluate.
      Leaf leaf{&*c.default_value};
      std::string err, err_hint;
      if (!prepare(c, leaf, err, err_hint)) fail(v->source(), "default: " + err);
    }
    bool any = false;
    for (int op = 0; op < kOpCount; ++op) any = any || op_present(c, op);
    if (!any) fail(n.source(), "the condition on " + c.path_text + " has no test (max, min, above, below, in, not_in, prefix or not_prefix)");
    if (c.optional && c.default_value) fail(n.source(), "the condition on " + c.path_text + " sets both optional and default");
    return c;
  }

  TimeWindow context(const toml::node& n, int offset_minutes) const {
    const toml::table* t = n.as_table();
    if (!t) fail(n.source(), "context must be a table");
    reject_unknown(*t, {"hours", "days", "rate", "per", "burst"}, "[rules.context]", source);
    TimeWindow w;
    std::string hours_text, days_text;
    if (const toml::node* h = t->get("hours")) {
      auto s = h->value<std::string>();
      auto parts = s ? split(*s, '-') : std::vector<std::string_view>{};
      std::optional<int> a, b;
      if (parts.size() == 2) {
        a = parse_hhmm(parts[0]);
        b = parse_hhmm(parts[1]);
      }
      if (!a || !b || *a == 24 * 60) fail(h->source(), "hours must be \"HH:MM-HH:MM\", e.g. \"08:00-20:00\" or \"22:00-06:00\"");
      if (*a == *b) fail(h->source(), "hours \"" + *s + "\" is an empty window");
      w.all_day = *a == 0 && *b == 24 * 60;
      w.start_minute = *a;
      w.end_minute = *b % (24 * 60);
      hours_text = *s;
    }
    if (const toml::node* d = t->get("days")) {
      const toml::array* a = d->as_array();
      if (!a || a->empty()) fail(d->source(), "days must be a non-empty array like [\"mon-fri\"] or [\"sat\", \"sun\"]");
      w.days = 0;
      std::vector<std::string> names;
      for (const auto& e : *a) {
        auto s = e.value<std::string>();
        std::string v = s ? lower(*s) : "";
        auto range = split(v, '-');
        int from = range.size() <= 2 ? day_index(range[0]) : -1;
        int to = range.size() == 2 ? day_index(range[1]) : from;
        if (from < 0 || to < 0) fail(e.source(), "bad day \"" + v + "\" (mon, tue, wed, thu, fri, sat, sun, or a range like mon-fri)");
        for (int i = from;; i = (i + 1) % 7) {
          w.days |= static_cast<uint8_t>(1u << i);
          if (i == to) break;
        }
        names.push_back(v);
      }
      days_text = join(names, ", ");
    }
    if (hours_text.empty() && days_text.empty()) fail(n.source(), "context needs hours, days or both");
    w.text = (hours_text.empty() ? "" : hours_text) + (days_text.empty() ? "" : (hours_text.empty() ? "on " : " on ") + days_text) +
             " (" + offset_text(offset_minutes) + ")";
    return w;
  }

  static void refuse_project_key(const toml::table& t, const std::string& src) {
    for (auto&& [key, node] : t)
      if (key.str() == "project" || key.str() == "projects")
        fail_at(key.source(), src,
                "a policy file cannot name a project: it governs only the project whose [[projects]] entry points at it");
  }

  std::string rule_id(const toml::table& t, const toml::source_region& owner, const char* what) const {
    const toml::node* n = t.get("id");
    if (!n) fail(owner, std::string(what) + " needs an \"id\"");
    auto id = n->value<std::string>();
    if (!id || !valid_id(*id))
      fail(n->source(), "\"id\" must be a string of letters, digits and - _ . : (at most 128)");
    if (id->rfind("builtin-", 0) == 0 || *id == "default-deny")
      fail(n->source(), "the id \"" + *id + "\" is reserved for the server's own decisions");
    return *id;
  }

  Rule rule(const toml::table& t, int offset_minutes) const {
    refuse_project_key(t, source);
    reject_unknown(t, {"id", "effect", "description", "hint", "principals", "tools", "when", "context"}, "[[rules]]", source);
    Rule r;
    r.pos = Position{static_cast<int>(t.source().begin.line), static_cast<int>(t.source().begin.column)};
    r.id = rule_id(t, t.source(), "a rule");
    const toml::node* e = t.get("effect");
    if (!e) fail(t.source(), "rule \"" + r.id + "\" needs an \"effect\" (permit or forbid)");
    auto effect = e->value<std::string>();
    if (!effect || (*effect != "permit" && *effect != "forbid"))
      fail(e->source(), "unknown effect" + (effect ? " \"" + *effect + "\"" : std::string()) + " in rule \"" + r.id +
                            "\" (permit or forbid)");
    r.permit = *effect == "permit";
    r.description = optional_string(t, "description", source);
    r.hint = optional_string(t, "hint", source);
    if (const toml::node* p = t.get("principals")) r.principals = principals(*p);
    if (const toml::node* p = t.get("tools")) r.tools = tools(*p);
    if (const toml::node* w = t.get("when")) {
      const toml::table* wt = w->as_table();
      if (!wt) fail(w->source(), "when must be a table of conditions ([rules.when])");
      refuse_project_key(*wt, source);
      for (auto&& [k, v] : *wt) r.when.push_back(condition(k, v));
      // toml++ keeps a table's keys sorted; evaluate (and explain) in the order of the file.
      std::sort(r.when.begin(), r.when.end(), [](const Condition& a, const Condition& b) {
        return std::tie(a.pos.line, a.pos.column) < std::tie(b.pos.line, b.pos.column);
      });
    }
    if (const toml::node* c = t.get("context")) {
      const toml::table* ct = c->as_table();
      if (!ct) fail(c->source(), "context must be a table");
      reject_unknown(*ct, {"hours", "days", "rate", "per", "burst"}, "[rules.context]", source);
      if (ct->get("hours") || ct->get("days")) r.context = context(*c, offset_minutes);
      if (const toml::node* rn = ct->get("rate")) {
        if (!r.permit)
          fail(rn->source(), "a forbid cannot have a rate (it refuses whatever the rate); to refuse calls beyond a rate, "
                             "use [[rate_limits]]");
        RateLimit q;
        q.id = r.id;
        rate(*ct, "the context of rule \"" + r.id + "\"", q);
        q.bucket_prefix = "rule:" + r.id + "|" + std::to_string(static_cast<int>(q.per)) + "|" + format_number(q.count) +
                          "/" + format_number(q.period_s) + "|" + format_number(q.burst);
        r.quota = std::move(q);
      } else if (const toml::node* x = ct->get("per") ? ct->get("per") : ct->get("burst")) {
        fail(x->source(), "per and burst in [rules.context] need a rate, e.g. rate = \"5/day\"");
      }
      if (!r.context && !r.quota) fail(c->source(), "context needs hours, days, a rate, or several of them");
    }
    return r;
  }

  // `rate` (required), `per` and `burst` of a [[rate_limits]] entry or a rule's [rules.context].
  void rate(const toml::table& t, const std::string& what, RateLimit& l) const {
    std::string per = optional_string(t, "per", source);
    if (per.empty() || per == "principal") l.per = RateLimit::Per::kPrincipal;
    else if (per == "project") l.per = RateLimit::Per::kProject;
    else if (per == "tool") l.per = RateLimit::Per::kTool;
    else if (per == "principal+tool") l.per = RateLimit::Per::kPrincipalTool;
    else fail(t.get("per")->source(), "per must be \"principal\", \"project\", \"tool\" or \"principal+tool\"");
    std::string rate = required_string(t, "rate", t.source(), what, source);
    const toml::node* rn = t.get("rate");
    auto slash = rate.find('/');
    std::optional<double> count;
    if (slash != std::string::npos) {
      std::string num = rate.substr(0, slash);
      char* end = nullptr;
      double v = std::strtod(num.c_str(), &end);
      if (!num.empty() && end && *end == '\0' && v > 0 && std::isfinite(v)) count = v;
      std::string unit = lower(rate.substr(slash + 1));
      if (unit == "s" || unit == "sec" || unit == "second") l.period_s = 1, l.period_name = "second";
      else if (unit == "min" || unit == "minute") l.period_s = 60, l.period_name = "minute";
      else if (unit == "h" || unit == "hour") l.period_s = 3600, l.period_name = "hour";
      else if (unit == "d" || unit == "day") l.period_s = 86400, l.period_name = "day";
      else count.reset();
    }
    if (!count) fail(rn->source(), "rate must be \"N/second\", \"N/minute\", \"N/hour\" or \"N/day\" (also N/s, N/min, N/h, N/d)");
    l.count = *count;
    l.burst = std::max(1.0, std::ceil(l.count));
    if (const toml::node* b = t.get("burst")) {
      auto v = b->value<double>();
      if (!v || *v < 1 || !std::isfinite(*v)) fail(b->source(), "burst must be a number of calls, 1 or more");
      l.burst = *v;
    }
  }

  RateLimit rate_limit(const toml::table& t) const {
    refuse_project_key(t, source);
    reject_unknown(t, {"id", "description", "principals", "tools", "per", "rate", "burst", "cost"}, "[[rate_limits]]",
                   source);
    RateLimit l;
    l.pos = Position{static_cast<int>(t.source().begin.line), static_cast<int>(t.source().begin.column)};
    l.id = rule_id(t, t.source(), "a rate limit");
    l.description = optional_string(t, "description", source);
    if (const toml::node* p = t.get("principals")) l.principals = principals(*p);
    if (const toml::node* p = t.get("tools")) l.tools = tools(*p);
    rate(t, "rate limit \"" + l.id + "\"", l);
    l.cost = optional_string(t, "cost", source);
    if (t.get("cost") && (l.cost.empty() || l.cost.find_first_of(" \t") != std::string::npos))
      fail(t.get("cost")->source(), "cost must name a numeric argument, such as \"tokens\"");
    l.bucket_prefix = l.id + "|" + std::to_string(static_cast<int>(l.per)) + "|" + format_number(l.count) + "/" +
                      format_number(l.period_s) + "|" + format_number(l.burst) + "|" + l.cost;
    return l;
  }
};

int parse_offset(const toml::node& n, const std::string& source) {
  auto s = n.value<std::string>();
  if (s && (*s == "Z" || *s == "UTC")) return 0;
  if (s && s->size() == 6 && ((*s)[0] == '+' || (*s)[0] == '-') && (*s)[3] == ':') {
    auto h = parse_uint(s->substr(1, 2)), m = parse_uint(s->substr(4, 2));
    if (h && m && *h <= 14 && *m < 60) return static_cast<int>(((*s)[0] == '-' ? -1 : 1) * (*h * 60 + *m));
  }
  fail_at(n.source(), source, "utc_offset must be \"+HH:MM\", \"-HH:MM\" or \"UTC\" (named time zones are not supported)");
}

}  // namespace

// ---------------------------------------------------------------- public helpers

bool PrincipalPattern::matches(const Principal& p, const std::string& project) const {
  switch (kind) {
    case Kind::kRole: return p.has_role(project, name);
    case Kind::kGroup: return std::find(p.groups.begin(), p.groups.end(), name) != p.groups.end();
    case Kind::kUser: return p.kind == "user" && (name == "*" || p.name == name);
    case Kind::kService: return p.kind == "service" && (name == "*" || p.name == name);
  }
  return false;
}

std::optional<double> parse_walltime(std::string_view t) {
  // On the hot path for every walltime argument: no allocation.
  auto iequals = [](std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(a[i])) != b[i]) return false;
    return true;
  };
  if (iequals(t, "unlimited") || iequals(t, "infinite")) return std::numeric_limits<double>::infinity();
  if (t.empty()) return std::nullopt;
  int64_t days = 0;
  bool has_days = false;
  if (auto dash = t.find('-'); dash != std::string_view::npos) {
    auto d = parse_uint(t.substr(0, dash));
    if (!d) return std::nullopt;
    days = *d;
    t = t.substr(dash + 1);
    has_days = true;
  }
  int64_t n[3] = {0, 0, 0};
  std::size_t count = 0;
  for (;;) {
    if (count == 3) return std::nullopt;
    auto colon = t.find(':');
    auto v = parse_uint(t.substr(0, colon));
    if (!v) return std::nullopt;
    n[count++] = *v;
    if (colon == std::string_view::npos) break;
    t = t.substr(colon + 1);
  }
  int64_t h = 0, m = 0, s = 0;
  if (has_days) {  // D-H, D-H:M, D-H:M:S
    h = n[0];
    m = n[1];
    s = n[2];
  } else if (count == 1) {  // minutes
    m = n[0];
  } else if (count == 2) {  // minutes:seconds
    m = n[0];
    s = n[1];
  } else {  // hours:minutes:seconds
    h = n[0];
    m = n[1];
    s = n[2];
  }
  // Hours are bounded only after a day count ("48:00:00" is fine, "1-48" is not).
  if (s > 59 || (m > 59 && (has_days || count == 3)) || (has_days && h > 23)) return std::nullopt;
  return static_cast<double>(((days * 24 + h) * 60 + m) * 60 + s);
}

std::optional<double> parse_bytes(std::string_view text) {
  std::string t(text);
  std::size_t i = 0;
  while (i < t.size() && (is_digit(t[i]) || t[i] == '.')) ++i;
  if (i == 0) return std::nullopt;
  char* end = nullptr;
  std::string num = t.substr(0, i);
  double v = std::strtod(num.c_str(), &end);
  if (!end || *end != '\0' || !std::isfinite(v)) return std::nullopt;
  std::string unit = lower(std::string_view(t).substr(i));
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},           {"b", 1},
      {"k", 1024.0},     {"kib", 1024.0},         {"kb", 1e3},
      {"m", 1048576.0},  {"mib", 1048576.0},      {"mb", 1e6},
      {"g", 1073741824.0}, {"gib", 1073741824.0}, {"gb", 1e9},
      {"t", 1099511627776.0}, {"tib", 1099511627776.0}, {"tb", 1e12},
      {"p", 1125899906842624.0}, {"pib", 1125899906842624.0}, {"pb", 1e15},
  };
  for (const auto& [name, factor] : kUnits)
    if (unit == name) return std::floor(v * factor);
  return std::nullopt;
}

std::optional<std::string> normalise_path(std::string_view path, std::string* why) {
  auto refuse = [&](const char* w) -> std::optional<std::string> {
    if (why) *why = w;
    return std::nullopt;
  };
  for (std::size_t i = 0; i < path.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(path[i]);
    if (c < 0x20 || c == 0x7f) return refuse("contains a control character");
    if (c == '\\') return refuse("contains a backslash");
    if (c == '%' && i + 2 < path.size()) {
      std::string hex = lower(path.substr(i + 1, 2));
      if (hex == "2e" || hex == "2f" || hex == "5c" || hex == "25")
        return refuse("contains a percent-encoded '.', '/', '\\' or '%'");
    }
  }
  std::string head;
  std::string_view rest = path;
  if (auto p = path.find("://"); p != std::string_view::npos && p > 0) {
    bool scheme = std::isalpha(static_cast<unsigned char>(path[0]));
    for (std::size_t i = 1; i < p && scheme; ++i) {
      char c = path[i];
      scheme = std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.';
    }
    if (scheme) {
      head = std::string(path.substr(0, p + 3));
      rest = path.substr(p + 3);
    }
  }
  if (head.empty() && !rest.empty() && rest.front() == '/') head = "/";
  std::string out = std::move(head);
  out.reserve(out.size() + rest.size());
  const std::size_t base = out.size();
  std::size_t start = 0;
  while (start <= rest.size()) {
    std::size_t end = rest.find('/', start);
    if (end == std::string_view::npos) end = rest.size();
    std::string_view seg = rest.substr(start, end - start);
    start = end + 1;
    if (seg.empty() || seg == ".") continue;
    if (seg == "..") return refuse("contains a \"..\" segment");
    if (out.size() > base) out += '/';
    out += seg;
  }
  if (out.empty()) return refuse("is empty");
  return out;
}

bool glob_match(std::string_view pat, std::string_view text) {
  std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pat.size() && (pat[p] == '?' || pat[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pat.size() && pat[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

// ---------------------------------------------------------------- Policy

Policy Policy::parse(std::string_view text, const std::string& source) {
  toml::table root = parse_toml(text, source);
  Parser ps{source};
  Policy p;
  p.source_ = source;
  p.hash_ = crypto::sha256_hex(text);
  Parser::refuse_project_key(root, source);
  reject_unknown(root, {"description", "utc_offset", "rules", "rate_limits"}, "the top level", source);
  optional_string(root, "description", source);
  if (const toml::node* o = root.get("utc_offset")) p.utc_offset_minutes_ = parse_offset(*o, source);
  p.utc_offset_text_ = offset_text(p.utc_offset_minutes_);

  std::map<std::string, Position> ids;
  auto unique = [&](const std::string& id, Position pos) {
    auto [it, fresh] = ids.emplace(id, pos);
    if (!fresh)
      throw PolicyError(source + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) + ": duplicate id \"" +
                        id + "\" (first used at line " + std::to_string(it->second.line) + ")");
  };
  auto tables = [&](std::string_view key, const char* what) {
    std::vector<const toml::table*> out;
    const toml::node* n = root.get(key);
    if (!n) return out;
    const toml::array* a = n->as_array();
    if (!a) fail_at(n->source(), source, std::string(key) + " must be an array of tables ([[" + std::string(key) + "]])");
    for (const auto& e : *a) {
      const toml::table* t = e.as_table();
      if (!t) fail_at(e.source(), source, std::string("each ") + what + " must be a table");
      out.push_back(t);
    }
    return out;
  };
  for (const toml::table* t : tables("rules", "[[rules]] entry")) {
    Rule r = ps.rule(*t, p.utc_offset_minutes_);
    const toml::node* idn = t->get("id");
    unique(r.id, Position{static_cast<int>(idn->source().begin.line), static_cast<int>(idn->source().begin.column)});
    p.rules_.push_back(std::move(r));
  }
  for (const toml::table* t : tables("rate_limits", "[[rate_limits]] entry")) {
    RateLimit l = ps.rate_limit(*t);
    const toml::node* idn = t->get("id");
    unique(l.id, Position{static_cast<int>(idn->source().begin.line), static_cast<int>(idn->source().begin.column)});
    p.rate_limits_.push_back(std::move(l));
  }
  return p;
}

Policy Policy::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw PolicyError(file.string() + ": cannot read the policy file");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw PolicyError(file.string() + ": cannot read the policy file");
  return parse(ss.str(), file.string());
}

bool Policy::could_permit(const Principal& principal, const std::string& project, const std::string& tool) const {
  bool permitted = false;
  for (const Rule& r : rules_) {
    if (!tool_matches(r.tools, tool) || !principal_matches(r.principals, principal, project)) continue;
    if (!r.permit && r.when.empty() && !r.context) return false;
    permitted = permitted || r.permit;
  }
  return permitted;
}

bool Policy::could_permit_with(const Principal& principal, const std::string& project, const std::string& tool,
                               const json& fixed, const json* schema) const {
  auto is_fixed = [&fixed](const Condition& c) { return fixed.is_object() && !c.path.empty() && fixed.contains(c.path[0]); };
  bool permitted = false;
  for (const Rule& r : rules_) {
    if (!tool_matches(r.tools, tool) || !principal_matches(r.principals, principal, project)) continue;
    if (!r.permit) {
      // Fires whatever the open arguments and the clock: only then does it exclude.
      if (r.context) continue;
      bool fires = true;
      for (const Condition& c : r.when) {
        if (!is_fixed(c)) {
          fires = false;
          break;
        }
        std::string err, err_hint;
        if (forbid_condition(c, fixed, schema, nullptr, err, err_hint) == Eval::kFails) {
          fires = false;
          break;
        }
      }
      if (fires) return false;
      continue;
    }
    if (permitted) continue;
    bool holds = true;
    for (const Condition& c : r.when) {
      if (!is_fixed(c)) continue;
      std::string err, err_hint;
      if (permit_condition(c, fixed, schema, nullptr, err, err_hint) != Eval::kHolds) {
        holds = false;
        break;
      }
    }
    permitted = holds;
  }
  return permitted;
}

Decision Policy::decide(const PolicyQuery& q, RateLimiter* limiter, const json* input_schema) const {
  std::optional<QuotaToken> quota;
  Decision d = decide_rules(q, input_schema, limiter, &quota);
  if (d.permitted() && limiter) {
    apply_rate_limits(q, *limiter, d);
    if (!d.permitted() && quota) limiter->refund(quota->key, quota->burst);  // a refused call uses no quota
  }
  return d;
}

Decision Policy::decide_rules(const PolicyQuery& q, const json* schema, RateLimiter* limiter,
                              std::optional<QuotaToken>* taken) const {
  Decision d;
  d.policy_hash = hash_;
  const LocalTime now = local_time(q.now, utc_offset_minutes_);
  auto applies = [&](const Rule& r) {
    return tool_matches(r.tools, q.tool) && principal_matches(r.principals, q.principal, q.project);
  };
  auto deny_error = [&](const Rule& r, const Explain& ex) {
    d.effect = Decision::Effect::kDeny;
    d.rule_ids = {r.id};
    d.reason = ex.error + " (rule " + r.id + ")";
    d.hint = ex.error_hint;
    return d;
  };

  // The rules for this principal and tool, in file order.
  boost::container::small_vector<const Rule*, 16> applicable;
  for (const Rule& r : rules_)
    if (applies(r)) applicable.push_back(&r);

  // 1. A forbid that fires decides, whatever the permits say.
  for (const Rule* rp : applicable) {
    const Rule& r = *rp;
    if (r.permit) continue;
    RuleEval ev = evaluate(r, q.arguments, schema, now, false, nullptr);
    if (ev.result == Eval::kFails) continue;
    Explain ex;
    evaluate(r, q.arguments, schema, now, false, &ex);
    if (ev.result == Eval::kError) return deny_error(r, ex);
    d.effect = Decision::Effect::kDeny;
    d.rule_ids = {r.id};
    std::string what = r.description.empty() ? "forbidden by the project's policy" : r.description;
    if (ex.facts.empty()) ex.facts.push_back(q.tool + " is forbidden to " + q.principal.name);
    d.reason = what + ": " + join(ex.facts, " and ") + " (rule " + r.id + ")";
    d.hint = !r.hint.empty() ? r.hint : hint_from(ex);
    if (d.hint.empty()) d.hint = "this call is not available to " + q.principal.name + " in project " + q.project;
    return d;
  }

  // 2. The first permit whose conditions all hold, and whose quota (if any) is not used up,
  // grants the call.
  bool any_applicable = false;
  const Rule* spent = nullptr;  // the first permit that held but had no quota left
  std::chrono::milliseconds spent_retry{0};
  for (const Rule* rp : applicable) {
    const Rule& r = *rp;
    if (!r.permit) continue;
    any_applicable = true;
    RuleEval ev = evaluate(r, q.arguments, schema, now, false, nullptr);
    if (ev.result == Eval::kHolds) {
      if (r.quota && limiter) {
        std::string key = bucket_key(*r.quota, q.project, q.principal, q.tool);
        auto got = limiter->acquire(key, r.quota->count / r.quota->period_s, r.quota->burst, q.now, q.consume);
        if (!got.allowed) {
          if (!spent) spent = &r, spent_retry = got.retry_after;
          continue;
        }
        if (q.consume) *taken = QuotaToken{std::move(key), r.quota->burst};
      }
      d.effect = Decision::Effect::kPermit;
      d.rule_ids = {r.id};
      d.reason = "permitted by rule " + r.id;
      return d;
    }
    if (ev.result == Eval::kError) {
      Explain ex;
      evaluate(r, q.arguments, schema, now, false, &ex);
      return deny_error(r, ex);
    }
  }

  // 3. Default deny, explained by the permit that came nearest: one that held but had used up
  // its quota is as near as a call can come, and waiting helps.
  d.effect = Decision::Effect::kDeny;
  if (spent) {
    const RateLimit& l = *spent->quota;
    d.rule_ids = {spent->id};
    d.reason = "rule " + spent->id + " permits at most " + rate_text(l) + ", and they are used up; retry in " +
               wait_text(spent_retry) + " (rule " + spent->id + ")";
    d.hint = !spent->hint.empty() ? spent->hint
                                  : "wait " + wait_text(spent_retry) + " before calling " + q.tool + " again";
    d.retry_after = spent_retry;
    return d;
  }
  if (any_applicable) {
    const Rule* best = nullptr;
    RuleEval best_ev;
    Explain best_ex;
    for (const Rule* rp : applicable) {
      const Rule& r = *rp;
      if (!r.permit) continue;
      Explain ex;
      RuleEval ev = evaluate(r, q.arguments, schema, now, true, &ex);
      if (ev.result == Eval::kError) return deny_error(r, ex);
      if (!best || ev.failed < best_ev.failed || (ev.failed == best_ev.failed && ev.satisfied > best_ev.satisfied)) {
        best = &r;
        best_ev = ev;
        best_ex = std::move(ex);
      }
    }
    d.rule_ids = {best->id};
    d.reason = join(best_ex.facts, "; ") + " (rule " + best->id + ")";
    d.hint = !best->hint.empty() ? best->hint : hint_from(best_ex);
    return d;
  }
  d.rule_ids = {"default-deny"};
  const Rule* other = nullptr;
  for (const Rule& r : rules_)
    if (r.permit && tool_matches(r.tools, q.tool)) {
      other = &r;
      break;
    }
  if (other) {
    std::vector<std::string> who;
    for (const auto& p : other->principals) who.push_back(principal_text(p));
    d.reason = "no rule permits " + q.principal.name + " to call " + q.tool + " in project " + q.project + "; rule " +
               other->id + " permits it only to " + join(who, ", ");
    d.hint = "ask an admin of project " + q.project + " for access";
  } else {
    d.reason = "no rule in project " + q.project + "'s policy permits " + q.tool;
    d.hint = "ask an admin of project " + q.project + " to permit " + q.tool;
  }
  if (q.principal.projects.size() > 1) {
    std::vector<std::string> others;
    for (const auto& p : q.principal.projects)
      if (p != q.project) others.push_back(p);
    d.hint += ", or act for another of your projects (" + join(others, ", ") + ")";
  }
  return d;
}

std::string Policy::bucket_key(const RateLimit& l, const std::string& project, const Principal& principal,
                               const std::string& tool) {
  std::string key;
  key.reserve(project.size() + l.bucket_prefix.size() + principal.name.size() + tool.size() + 16);
  key += project;
  key += '\x1f';
  key += l.bucket_prefix;
  key += '\x1f';
  if (l.per == RateLimit::Per::kPrincipal || l.per == RateLimit::Per::kPrincipalTool) {
    key += principal.kind;
    key += ':';
    key += principal.name;
    key += '\x1f';
  }
  if (l.per == RateLimit::Per::kTool || l.per == RateLimit::Per::kPrincipalTool) key += tool;
  return key;
}

json Policy::limits_for(const Principal& principal, const std::string& project, const RateLimiter* limiter,
                        std::chrono::system_clock::time_point now) const {
  auto tools_json = [](const std::vector<std::string>& tools) { return tools.empty() ? json("*") : json(tools); };
  // Tokens left in the caller's bucket of `l` for `tool` (to a thousandth, rounded down).
  auto left = [&](const RateLimit& l, const std::string& tool) {
    return std::floor(limiter->available(bucket_key(l, project, principal, tool), l.count / l.period_s, l.burst, now) * 1000) /
           1000;
  };
  auto one_bucket = [](const RateLimit& l) { return l.per == RateLimit::Per::kPrincipal || l.per == RateLimit::Per::kProject; };
  json rules = json::array();
  for (const Rule& r : rules_) {
    if (!principal_matches(r.principals, principal, project)) continue;
    json j = {{"id", r.id}, {"effect", r.permit ? "permit" : "forbid"}, {"tools", tools_json(r.tools)}};
    if (!r.description.empty()) j["description"] = r.description;
    // A permit's conditions are what a call must satisfy; a forbid's, when it refuses one.
    json conditions = json::array();
    for (const Condition& c : r.when) conditions.push_back(pass_advice(c) + (c.optional ? " (when given)" : ""));
    if (!conditions.empty()) j[r.permit ? "requires" : "refuses_when"] = std::move(conditions);
    if (r.context) j["window"] = r.context->text;
    if (r.quota) {
      j["quota"] = rate_text(*r.quota);
      if (limiter && one_bucket(*r.quota)) j["quota_left"] = left(*r.quota, "");
    }
    rules.push_back(std::move(j));
  }
  json limits = json::array();
  static const char* kPer[] = {"principal", "project", "tool", "principal+tool"};
  for (const RateLimit& l : rate_limits_) {
    if (!principal_matches(l.principals, principal, project)) continue;
    json j = {{"id", l.id}, {"tools", tools_json(l.tools)}, {"per", kPer[static_cast<int>(l.per)]},
              {"limit", rate_text(l)}, {"burst", l.burst}};
    if (!l.description.empty()) j["description"] = l.description;
    if (!l.cost.empty()) j["counts"] = l.cost;
    if (limiter) {
      // The caller's bucket; per tool there is one per tool, shown when the tools are named.
      if (one_bucket(l)) {
        j["available"] = left(l, "");
      } else if (!l.tools.empty() && std::none_of(l.tools.begin(), l.tools.end(), [](const std::string& t) {
                   return t.find_first_of("*?") != std::string::npos;
                 })) {
        json by_tool = json::object();
        for (const auto& t : l.tools)
          by_tool[t] = left(l, t);
        j["available"] = std::move(by_tool);
      }
    }
    limits.push_back(std::move(j));
  }
  return {{"policy_hash", hash_}, {"rules", std::move(rules)}, {"rate_limits", std::move(limits)}};
}

void Policy::apply_rate_limits(const PolicyQuery& q, RateLimiter& limiter, Decision& d) const {
  // Tokens taken from earlier limits are given back when a later one refuses: a refused call
  // must not count.
  struct Taken {
    std::string key;
    double burst, amount;
  };
  std::vector<Taken> taken;
  for (const RateLimit& l : rate_limits_) {
    if (!tool_matches(l.tools, q.tool) || !principal_matches(l.principals, q.principal, q.project)) continue;
    std::string key = bucket_key(l, q.project, q.principal, q.tool);
    double amount = 1.0;
    if (!l.cost.empty() && q.arguments.is_object())
      if (auto c = q.arguments.find(l.cost); c != q.arguments.end() && c->is_number()) amount = std::max(0.0, c->get<double>());
    auto r = limiter.acquire(key, l.count / l.period_s, l.burst, q.now, q.consume, amount);
    if (r.allowed) {
      if (q.consume) taken.push_back(Taken{std::move(key), l.burst, amount});
      continue;
    }
    for (const auto& t : taken) limiter.refund(t.key, t.burst, t.amount);
    const std::string unit = l.cost.empty() ? "calls" : l.cost;
    std::string rate = rate_text(l);
    d.effect = Decision::Effect::kDeny;
    d.rule_ids = {l.id};
    if (amount > l.burst) {
      // Waiting cannot help: the bucket never holds that much.
      d.reason = "rate limit " + l.id + ": this call takes " + format_number(amount) + " " + unit +
                 ", more than the limit allows at once (" + format_number(l.burst) + ")";
      d.hint = "make the call smaller: at most " + format_number(l.burst) + " " + unit;
      return;
    }
    std::string wait = wait_text(r.retry_after);
    d.reason = "rate limit " + l.id + ": " + rate + "; retry in " + wait;
    d.hint = "wait " + wait + " before calling " + q.tool + " again (at most " + rate + ", bursts of " +
             format_number(l.burst) + ")";
    d.retry_after = r.retry_after;
    return;
  }
}

}  // namespace scigate::policy
