#include <catch2/catch.hpp>

#include "server/auth/directory.hpp"

using namespace scigate;

namespace {

Config org() {
  return parse_config(R"(
[[projects]]
id = "chem"
members = ["alice", "group:chemists"]
managers = ["bob"]
auditors = ["carol"]
service_accounts = ["robot-1"]

[[projects]]
id = "bio"
members = ["alice", "bob"]
admins = ["group:ops"]

[[users]]
name = "alice"
default_project = "bio"

[[users]]
name = "dave"
groups = ["chemists"]
)",
                      ".", "org.toml");
}

Principal user(std::string name, std::vector<std::string> groups = {}, std::string kind = "user") {
  Principal p;
  p.name = std::move(name);
  p.kind = std::move(kind);
  p.groups = std::move(groups);
  return p;
}

}  // namespace

TEST_CASE("directory: roles come from names and groups, the configured default project comes first") {
  Config c = org();
  Principal alice = user("alice");
  auth::assign_projects(alice, c);
  CHECK(alice.projects == std::vector<std::string>{"bio", "chem"});
  CHECK(alice.has_role("chem", "member"));
  CHECK_FALSE(alice.has_role("chem", "manager"));

  Principal bob = user("bob");
  auth::assign_projects(bob, c);
  CHECK(bob.projects == std::vector<std::string>{"chem", "bio"});
  CHECK(bob.has_role("chem", "manager"));
  CHECK(bob.has_role("chem", "member"));  // a manager may also call tools
  CHECK_FALSE(bob.has_role("chem", "auditor"));

  // Groups from a token's claims, or from [[users]] for API-key users.
  Principal erin = user("erin", {"ops"});
  auth::assign_projects(erin, c);
  CHECK(erin.projects == std::vector<std::string>{"bio"});
  CHECK(erin.has_role("bio", "auditor"));  // admin implies every role
  Principal dave = user("dave");
  auth::assign_projects(dave, c);
  CHECK(dave.projects == std::vector<std::string>{"chem"});
  CHECK(dave.groups == std::vector<std::string>{"chemists"});
}

TEST_CASE("directory: an auditor-only principal belongs to the project but cannot call tools there") {
  Principal carol = user("carol");
  auth::assign_projects(carol, org());
  CHECK(carol.projects == std::vector<std::string>{"chem"});
  CHECK(carol.has_role("chem", "auditor"));
  CHECK_FALSE(carol.has_role("chem", "member"));
  CHECK(carol.has_role_anywhere("auditor"));
}

TEST_CASE("directory: service accounts match only service principals, and only as service accounts") {
  Config c = org();
  Principal robot = user("robot-1", {}, "service");
  auth::assign_projects(robot, c);
  CHECK(robot.projects == std::vector<std::string>{"chem"});
  CHECK(robot.has_role("chem", "member"));

  // A user (a JWT, say) named like the robot gets nothing from service_accounts.
  Principal impostor = user("robot-1");
  auth::assign_projects(impostor, c);
  CHECK(impostor.projects.empty());

  // A service key named like a user does not inherit the user's memberships.
  Principal fake_alice = user("alice", {}, "service");
  auth::assign_projects(fake_alice, c);
  CHECK(fake_alice.projects.empty());
}

TEST_CASE("directory: unknown principals belong nowhere, recomputing replaces stale memberships") {
  Config c = org();
  Principal eve = user("eve");
  eve.projects = {"chem"};  // whatever came before must not survive
  eve.roles["chem"] = {"admin"};
  auth::assign_projects(eve, c);
  CHECK(eve.projects.empty());
  CHECK(eve.roles.empty());
}

TEST_CASE("directory: a group: entry matches groups only, never a principal named like it") {
  Config c = org();
  // An IdP username can be any string: one spelled "group:ops" is not in group ops.
  Principal spoof = user("group:ops");
  auth::assign_projects(spoof, c);
  CHECK(spoof.projects.empty());
  CHECK_FALSE(spoof.has_role("bio", "admin"));
  // The group itself still works.
  Principal erin = user("erin", {"ops"});
  auth::assign_projects(erin, c);
  CHECK(erin.has_role("bio", "admin"));
}
