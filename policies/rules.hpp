#pragma once
// One project's policy file (docs/POLICY.md), parsed and compiled: [[rules]] that permit or
// forbid calls by principal, tool, conditions on the validated arguments and the time of the
// call, and [[rate_limits]] (token buckets).
//
// Decision order: a matching forbid beats every permit; otherwise the first permit whose
// conditions all hold grants the call, subject to the rate limits; otherwise the call is denied
// (default deny), naming the permit that came nearest and what it required. Any error while
// evaluating (an argument of the wrong type, a path with "..") denies.
//
// A Policy is immutable once built and safe to share between threads. It never names a
// project: the engine consults it only for calls for the project whose config entry points at
// the file, so a rule can never widen access in another project.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "policies/policy.hpp"
#include "policies/rate_limiter.hpp"

namespace scigate {

// A policy file that cannot be used; what() is "FILE:LINE:COLUMN: what is wrong" (or
// "FILE: ..." when the problem has no position, like an unreadable file).
struct PolicyError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace policy {

struct Position {
  int line = 0;
  int column = 0;
};

// An entry of `principals`: role:R, group:G, user:NAME, service:NAME, user:*, service:*.
struct PrincipalPattern {
  enum class Kind { kRole, kGroup, kUser, kService } kind;
  std::string name;  // "*" for any user / any service account
  bool matches(const Principal& p, const std::string& project) const;
};

// How a condition reads numbers: plain numbers, Slurm walltimes (seconds) or byte sizes.
enum class Unit { kNone, kNumber, kWalltime, kBytes };

struct Bound {
  double value = 0;  // seconds for walltimes, bytes for sizes
  std::string text;  // as the policy wrote it, for messages
};

// One entry of [rules.when]: a dotted path into the arguments and the tests its value must
// pass (all of them). For a permit the condition must hold; a forbid fires when all of its
// conditions hold. Arrays on the path are checked element by element: a permit needs every
// element to pass, a forbid fires when any element does.
struct Condition {
  std::string path_text;
  std::vector<std::string> path;
  Unit unit = Unit::kNone;
  std::optional<Bound> max, min, above, below;
  std::vector<nlohmann::json> in, not_in;
  std::vector<std::string> prefix, not_prefix;  // normalised, without a trailing "/"
  std::vector<std::string> prefix_text, not_prefix_text;
  bool optional = false;                        // a missing value (no default) passes a permit
  std::optional<nlohmann::json> default_value;  // for a missing argument whose schema declares no default
  Position pos;
};

// [rules.context]: when the rule applies, in the file's utc_offset.
struct TimeWindow {
  bool all_day = true;
  int start_minute = 0, end_minute = 0;  // [start, end); end < start wraps past midnight
  uint8_t days = 0x7f;                   // bit 0 = Monday
  std::string text;                      // "08:00-20:00 on mon, tue (UTC+01:00)"
};

struct RateLimit {
  enum class Per { kPrincipal, kProject, kTool, kPrincipalTool } per = Per::kPrincipal;
  std::string id;
  std::string description;
  std::vector<PrincipalPattern> principals;
  std::vector<std::string> tools;
  double count = 0;       // `count` calls per `period_s` seconds
  double period_s = 1;
  std::string period_name;  // "second", "minute", ...
  double burst = 0;
  // The numeric argument (or derived fact) whose value a call takes from the bucket instead of
  // one: "tokens" makes a tokens-per-minute limit of call_inference. Empty: one per call.
  std::string cost;
  std::string bucket_prefix;  // id plus settings: a bucket survives a reload only if they are unchanged
  Position pos;
};

struct Rule {
  std::string id;
  bool permit = true;
  std::string description;
  std::string hint;  // given to the caller when this rule denies; generated when empty
  std::vector<PrincipalPattern> principals;  // empty: anyone acting for the project
  std::vector<std::string> tools;            // globs; empty: every tool
  std::vector<Condition> when;
  std::optional<TimeWindow> context;
  // [rules.context] rate: a permit grants at most this many calls per period (per principal or
  // project); once they are used up it no longer holds, and later permits are tried.
  std::optional<RateLimit> quota;
  Position pos;
};


class Policy {
 public:
  // Throws PolicyError ("SOURCE:LINE:COLUMN: ...") on a syntax error or anything this version
  // does not understand: unknown keys, operators or effects, bad literals, missing or duplicate
  // ids, and any attempt to name a project.
  static Policy parse(std::string_view text, const std::string& source);
  static Policy load(const std::filesystem::path& file);

  // Rules, then (when permitted and `limiter` is given) rate limits. The caller has already
  // established that the principal acts for query.project. `input_schema`, the tool's, gives
  // the defaults for arguments the call leaves out.
  Decision decide(const PolicyQuery& query, RateLimiter* limiter, const nlohmann::json* input_schema = nullptr) const;
  // Whether some call of `tool` could be permitted to the principal in `project`: a permit
  // matches principal and tool, and no forbid matches them unconditionally. Argument
  // conditions and time windows are not looked at.
  bool could_permit(const Principal& principal, const std::string& project, const std::string& tool) const;
  // The same question with some arguments fixed (top-level members of `fixed`): a permit could
  // grant when every condition on a fixed argument holds (conditions on other arguments and
  // time windows are left open); a forbid excludes when it has no time window and all its
  // conditions are on fixed arguments and fire. A condition that cannot be evaluated on a fixed
  // argument (wrong type) counts as failing a permit and firing a forbid, as decide() would.
  bool could_permit_with(const Principal& principal, const std::string& project, const std::string& tool,
                         const nlohmann::json& fixed, const nlohmann::json* input_schema = nullptr) const;

  // What this policy lets the principal do in `project`, for get_usage: the rules that match
  // the principal (permits with what they require, forbids with when they fire, time windows)
  // and the rate limits that count its calls, with the tokens left now in its buckets (from
  // `limiter`, when given). Conditions are described, not evaluated.
  nlohmann::json limits_for(const Principal& principal, const std::string& project, const RateLimiter* limiter,
                            std::chrono::system_clock::time_point now) const;

  const std::string& source() const { return source_; }
  const std::string& hash() const { return hash_; }  // hex SHA-256 of the file's bytes
  const std::vector<Rule>& rules() const { return rules_; }
  const std::vector<RateLimit>& rate_limits() const { return rate_limits_; }
  int utc_offset_minutes() const { return utc_offset_minutes_; }

 private:
  // A token a permit's quota gave the call, returned if a rate limit refuses it after all.
  struct QuotaToken {
    std::string key;
    double burst = 1;
  };
  Decision decide_rules(const PolicyQuery& query, const nlohmann::json* input_schema, RateLimiter* limiter,
                        std::optional<QuotaToken>* taken) const;
  void apply_rate_limits(const PolicyQuery& query, RateLimiter& limiter, Decision& d) const;
  static std::string bucket_key(const RateLimit& l, const std::string& project, const Principal& principal,
                                const std::string& tool);

  std::string source_;
  std::string hash_;
  int utc_offset_minutes_ = 0;
  std::string utc_offset_text_ = "UTC";
  std::vector<Rule> rules_;
  std::vector<RateLimit> rate_limits_;
};

// Literal parsers, shared with tests and the CLI. nullopt when the text is not one.
// Slurm's time forms: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"; "UNLIMITED"/"INFINITE"
// are +infinity. Result in seconds.
std::optional<double> parse_walltime(std::string_view text);
// "512", "10GiB", "1.5 GB", "4M" (single letters K/M/G/T/P are binary, as in Slurm). Bytes.
std::optional<double> parse_bytes(std::string_view text);
// "area://scratch/a/./b//c" -> "area://scratch/a/b/c". nullopt (with *why) for ".." segments,
// percent-encoded ".", "/" or "\\", backslashes and control characters.
std::optional<std::string> normalise_path(std::string_view path, std::string* why = nullptr);
// Shell-style glob with * and ?.
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace policy
}  // namespace scigate
