#pragma once
// The decision stage of the pipeline. An engine answers "may this principal, acting for this
// project, call this tool with these (validated) arguments?" and names the rules that decided.
//
// Thread-safety: decide() and may_list() are called concurrently from any thread.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "server/auth/principal.hpp"

namespace scigate {

struct PolicyQuery {
  const Principal& principal;
  const std::string& project;
  const std::string& tool;
  const nlohmann::json& arguments;
};

struct Decision {
  enum class Effect { kPermit, kDeny } effect = Effect::kDeny;
  std::vector<std::string> rule_ids;
  std::string reason;  // for the caller: what was wrong and the limit that applies
  std::string hint;    // what the caller can do instead

  bool permitted() const { return effect == Effect::kPermit; }
};

class PolicyEngine {
 public:
  virtual ~PolicyEngine() = default;
  virtual Decision decide(const PolicyQuery& query) const = 0;
  // Whether the tool may appear in the principal's tools/list (some call could be permitted).
  virtual bool may_list(const Principal& principal, const std::string& tool) const = 0;
};

// The core's built-in policy until per-project policies are configured: every authenticated
// principal may call every tool, for any project it is a member of.
class MembershipPolicy final : public PolicyEngine {
 public:
  Decision decide(const PolicyQuery& query) const override;
  bool may_list(const Principal&, const std::string&) const override { return true; }
};

}  // namespace scigate
