#include "policies/policy.hpp"

#include <algorithm>

namespace scigate {

Decision MembershipPolicy::decide(const PolicyQuery& q) const {
  Decision d;
  d.rule_ids = {"builtin-membership"};
  const auto& ps = q.principal.projects;
  // Any role in the project will do: the pipeline has already checked that the caller holds
  // the tool's own required role there (member for most tools, auditor for query_audit_log).
  if (q.project.empty() || q.principal.member_of(q.project)) {
    d.effect = Decision::Effect::kPermit;
    d.reason = "member of the project";
  } else {
    d.reason = q.principal.name + " is not a member of project " + q.project;
    d.hint = ps.empty() ? "ask an administrator to add you to a project"
                        : "use one of your projects: " + [&] {
                            std::string s;
                            for (const auto& p : ps) s += (s.empty() ? "" : ", ") + p;
                            return s;
                          }();
  }
  return d;
}

}  // namespace scigate
