// Who may read which audit records, and the times auditors write.
#include <catch2/catch.hpp>

#include "policies/audit_query.hpp"
#include "policies/audit_time.hpp"

using namespace scigate;

TEST_CASE("audit scope: auditors read their projects, admins too, members nothing") {
  Principal ann;
  ann.name = "ann";
  ann.projects = {"chem", "phys", "bio"};
  ann.roles = {{"chem", {"member"}}, {"phys", {"auditor"}}, {"bio", {"admin"}}};
  CHECK(audit::auditable_projects(ann) == std::vector<std::string>{"phys", "bio"});

  audit::EventFilter all;
  CHECK_FALSE(audit::restrict_to_auditor(ann, "", all));
  CHECK(*all.projects == std::vector<std::string>{"phys", "bio"});

  audit::EventFilter one;
  CHECK_FALSE(audit::restrict_to_auditor(ann, "bio", one));
  CHECK(*one.projects == std::vector<std::string>{"bio"});

  audit::EventFilter chem;
  auto refused = audit::restrict_to_auditor(ann, "chem", chem);
  REQUIRE(refused);
  CHECK(refused->find("auditor role in project chem") != std::string::npos);
  CHECK_FALSE(chem.projects);  // nothing was opened up

  Principal bob;
  bob.name = "bob";
  bob.projects = {"chem"};
  bob.roles = {{"chem", {"member", "manager"}}};
  audit::EventFilter none;
  REQUIRE(audit::restrict_to_auditor(bob, "", none));
  CHECK_FALSE(none.projects);
}

TEST_CASE("audit time: RFC 3339, dates, Unix milliseconds and spans back from now") {
  const int64_t now = 1'795'291'467'247;  // 2026-11-21T20:04:27.247Z
  CHECK(audit::format_time(now) == "2026-11-21T20:04:27.247Z");
  CHECK(audit::format_time(0) == "1970-01-01T00:00:00.000Z");
  CHECK(audit::parse_time("2026-11-21T20:04:27.247Z", 0) == now);
  CHECK(audit::parse_time("2026-11-21T21:04:27.247+01:00", 0) == now);
  CHECK(audit::parse_time("2026-11-21 20:04:27.247", 0) == now);
  CHECK(audit::parse_time("2026-11-21T20:04Z", 0) == now - 27'247);
  CHECK(audit::parse_time("2026-11-21", 0) == now - (20 * 3600 + 4 * 60 + 27) * 1000 - 247);
  CHECK(audit::parse_time("1795291467247", 0) == now);
  CHECK(audit::parse_time("90s", now) == now - 90'000);
  CHECK(audit::parse_time("15m", now) == now - 900'000);
  CHECK(audit::parse_time("24h", now) == now - 86'400'000);
  CHECK(audit::parse_time("7d", now) == now - 7 * 86'400'000LL);
  for (const char* bad : {"", "yesterday", "2026-13-01", "2026-11-21T25:00Z", "2026-11-21T20:04:27Zjunk", "5y",
                          "2026/11/21", "-5m"}) {
    INFO(bad);
    CHECK_FALSE(audit::parse_time(bad, now));
  }
}
