#pragma once
// The decision stage of the pipeline. An engine answers "may this principal, acting for this
// project, call this tool with these (validated) arguments?" and names the rules that decided.
//
// Thread-safety: decide() and may_list() are called concurrently from any thread.
#include <nlohmann/json.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "server/auth/principal.hpp"

namespace scigate {

struct PolicyQuery {
  const Principal& principal;
  const std::string& project;
  const std::string& tool;
  const nlohmann::json& arguments;
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
  // False when explaining a decision (scigate policy check): rate limits are looked at but no
  // token is taken from a bucket.
  bool consume = true;
};

struct Decision {
  enum class Effect { kPermit, kDeny } effect = Effect::kDeny;
  std::vector<std::string> rule_ids;
  std::string reason;  // for the caller: what was wrong and the limit that applies
  std::string hint;    // what the caller can do instead
  // Set when the denial is a rate limit: when a retry can succeed.
  std::optional<std::chrono::milliseconds> retry_after;
  std::string policy_hash;  // hex SHA-256 of the policy text that decided (for the audit)

  bool permitted() const { return effect == Effect::kPermit; }
};

class PolicyEngine {
 public:
  virtual ~PolicyEngine() = default;
  virtual Decision decide(const PolicyQuery& query) const = 0;
  // Whether the tool may appear in the principal's tools/list (some call could be permitted).
  virtual bool may_list(const Principal& principal, const std::string& tool) const = 0;
  // Whether some call of `tool` for `project` whose arguments include `fixed` (a partial
  // argument object, e.g. {"model": "bge-m3"}) could be permitted: an argument-partial decision.
  // Conditions on arguments `fixed` does not set, time windows and rate limits never deny here;
  // a forbid denies only when it fires on `fixed` alone. The model registry asks it to show a
  // project only the models it may call (docs/MODELS.md). The default: members may.
  virtual bool could_permit(const Principal& principal, const std::string& project, const std::string& tool,
                            const nlohmann::json& fixed) const {
    return principal.member_of(project);
  }
  // What the project's policy lets the principal do, for get_usage: the matching rules and the
  // rate limits with the tokens left (Policy::limits_for); null where the project has no policy
  // file (its members may call every tool, without rate limits).
  virtual nlohmann::json limits_for(const Principal&, const std::string& /*project*/) const { return nullptr; }
  // Re-reads policy sources; on any error the previous policy stays in force and the error
  // (file:line:column: what) is returned. The built-in engine has nothing to reload.
  virtual std::optional<std::string> reload() { return std::nullopt; }
};

// The built-in policy for projects without a policy file: a principal holding a role in the
// project may call every tool for it whose required role it holds (the pipeline checks that).
class MembershipPolicy final : public PolicyEngine {
 public:
  Decision decide(const PolicyQuery& query) const override;
  bool may_list(const Principal&, const std::string&) const override { return true; }
};

}  // namespace scigate
