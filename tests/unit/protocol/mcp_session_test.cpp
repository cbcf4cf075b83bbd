// The 2025-11-25 session store: limits per principal, what a session keeps, the GET outlet.
#include <catch2/catch.hpp>

#include <thread>

#include "server/protocol/mcp_session.hpp"

using namespace scigate;
using scigate::mcp::SessionStore;

namespace {
Principal principal(std::string name, std::string kind = "user") {
  Principal p;
  p.name = std::move(name);
  p.kind = std::move(kind);
  return p;
}
}  // namespace

TEST_CASE("sessions: a principal at its limit loses its least recently used session, others keep theirs") {
  SessionStore store(100, 3);
  auto bob = store.create(principal("bob"));
  REQUIRE(bob);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto s = store.create(principal("alice"));
    REQUIRE(s);
    ids.push_back(s->id());
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  REQUIRE(store.find(ids[0]));  // used now: the second is the least recently used
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto fourth = store.create(principal("alice"));
  REQUIRE(fourth);
  CHECK(store.size() == 4);
  CHECK(store.find(ids[0]));
  CHECK_FALSE(store.find(ids[1]));
  CHECK(store.find(ids[2]));
  CHECK(store.find(bob->id()));
  // A service account of the same name is another principal, with its own allowance.
  for (int i = 0; i < 3; ++i) CHECK(store.create(principal("alice", "service")));
  CHECK(store.size() == 7);
  // Erasing and expiring give the allowance back.
  CHECK(store.erase(fourth->id()));
  auto again = store.create(principal("alice"));
  REQUIRE(again);
  CHECK(store.find(ids[0]));
  CHECK(store.find(ids[2]));
}

TEST_CASE("sessions: the store's own limit still refuses when it is full of other principals' sessions") {
  SessionStore store(2, 10);
  CHECK(store.create(principal("a")));
  CHECK(store.create(principal("b")));
  CHECK_FALSE(store.create(principal("c")));
  CHECK(store.expire(std::chrono::seconds(-1)) == 2);
  CHECK(store.create(principal("c")));
}

TEST_CASE("sessions: initialize keeps only a bounded client name") {
  mcp::LegacySession s("x");
  s.initialize("2025-11-25", std::string(100000, 'n'));
  CHECK(s.client_name().size() == mcp::LegacySession::kMaxClientName);
  CHECK(s.version() == "2025-11-25");
}

TEST_CASE("sessions: one GET outlet at a time, and a stream closes only its own") {
  mcp::LegacySession s("x");
  int first = 0, second = 0;
  uint64_t a = s.open_outlet([&](const nlohmann::json&) { ++first; });
  REQUIRE(a != 0);
  CHECK(s.open_outlet([&](const nlohmann::json&) { ++second; }) == 0);  // the racing GET gets 409
  CHECK(s.send(nlohmann::json::object()));
  CHECK(first == 1);
  s.close_outlet(a);
  CHECK_FALSE(s.send(nlohmann::json::object()));
  uint64_t b = s.open_outlet([&](const nlohmann::json&) { ++second; });
  REQUIRE(b != 0);
  s.close_outlet(a);  // the first stream ending late does not close the second's
  CHECK(s.send(nlohmann::json::object()));
  CHECK(second == 1);
}
