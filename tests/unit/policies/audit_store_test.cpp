#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <thread>

#include "policies/audit_store.hpp"
#include "policies/audit_verify.hpp"
#include "server/common/crypto.hpp"

using namespace scigate;

namespace {
struct TempDb {
  TempDb() : path(std::filesystem::temp_directory_path() / ("scigate-audit-" + crypto::random_hex(6) + ".db")) {
    state::Database db(path);
    db.migrate(state::schema_migrations());
  }
  ~TempDb() {
    std::error_code ec;
    for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix, ec);
  }
  std::filesystem::path path;
};

AuditRecord record(int i) {
  AuditRecord r;
  r.time_ms = 1000 + i;
  r.request_id = "req-" + std::to_string(i);
  r.principal = "alice";
  r.project = "demo";
  r.tool = "echo";
  r.outcome = "ok";
  r.details = {{"i", i}};
  return r;
}
}  // namespace

TEST_CASE("audit store: concurrent appends form one verified chain that survives a restart") {
  TempDb tmp;
  {
    SqliteAuditLog log(tmp.path, false);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 50; ++i) log.append(record(t * 1000 + i));
      });
    for (auto& th : threads) th.join();
    log.flush();
  }
  state::Database db(tmp.path);
  auto v = verify_audit_chain(db);
  CHECK(v.ok);
  CHECK(v.records == 200);
  {
    SqliteAuditLog again(tmp.path, false);  // a restarted server continues the chain
    again.append(record(9999));
  }
  auto v2 = verify_audit_chain(db);
  CHECK(v2.ok);
  CHECK(v2.records == 201);
}

TEST_CASE("audit store: the log refuses edits, and edits made behind its back are found") {
  TempDb tmp;
  {
    SqliteAuditLog log(tmp.path, false);
    for (int i = 0; i < 10; ++i) log.append(record(i));
  }
  state::Database db(tmp.path);
  CHECK_THROWS(db.exec("UPDATE audit_log SET outcome = 'denied' WHERE seq = 4"));
  CHECK_THROWS(db.exec("DELETE FROM audit_log WHERE seq = 4"));

  SECTION("a changed field") {
    db.exec("DROP TRIGGER audit_log_no_update");
    db.exec("UPDATE audit_log SET cost = 0, principal = 'mallory' WHERE seq = 4");
    auto v = verify_audit_chain(db);
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 4);
    CHECK(v.records == 3);
  }
  SECTION("a changed field with its hash recomputed breaks the next link") {
    db.exec("DROP TRIGGER audit_log_no_update");
    db.exec("UPDATE audit_log SET hash = 'ff' WHERE seq = 6");
    auto v = verify_audit_chain(db);
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 6);
  }
  SECTION("a deleted record") {
    db.exec("DROP TRIGGER audit_log_no_delete");
    db.exec("DELETE FROM audit_log WHERE seq = 7");
    auto v = verify_audit_chain(db);
    CHECK_FALSE(v.ok);
    CHECK(v.first_bad_seq == 7);
    CHECK(v.detail.find("record 7 is missing") != std::string::npos);
  }
}

TEST_CASE("audit store: with sync_before_answer, a durable append waits for an fsync") {
  for (bool sync : {false, true}) {
    TempDb tmp;
    AuditLogOptions o;
    o.also_log = false;
    o.sync_before_answer = sync;
    SqliteAuditLog log(tmp.path, o);
    boost::asio::io_context io;
    auto done = boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          for (int i = 0; i < 5; ++i) co_await log.append_durable(record(i));
        },
        boost::asio::use_future);
    io.run();
    done.get();
    INFO("sync_before_answer " << sync);
    // Each append waited for its own record; with syncing, each wait ended after an fsync (the
    // syncer counts a flush after running its callbacks, so the last may not be counted yet).
    if (sync) CHECK(log.syncs() >= 4u);
    else CHECK(log.syncs() == 0u);
    state::Database db(tmp.path);
    CHECK(verify_audit_chain(db).records == 5);
  }
}
