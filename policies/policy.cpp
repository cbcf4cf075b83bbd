#include "policies/policy.hpp"

#include <algorithm>

namespace scigate {

Decision MembershipPolicy::decide(const PolicyQuery& q) const {
  Decision d;
  d.rule_ids = {"builtin-membership"};
  const auto& ps = q.principal.projects;
  if (q.project.empty() || q.principal.has_role(q.project, "member")) {
    d.effect = Decision::Effect::kPermit;
    d.reason = "member of the project";
  } else {
    d.reason = q.principal.member_of(q.project)
                   ? q.principal.name + " holds no role in project " + q.project + " that may call tools"
                   : q.principal.name + " is not a member of project " + q.project;
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
