// The SQLite credit ledger against a real database file in a temp directory.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <random>
#include <thread>

#include "policies/audit_store.hpp"
#include "policies/credit_ledger.hpp"
#include "policies/credit_store.hpp"
#include "server/common/crypto.hpp"
#include "tools/usage/usage_tool.hpp"

using namespace scigate;
namespace asio = boost::asio;
using nlohmann::json;

namespace {

constexpr MicroCredits C = kMicroPerCredit;  // one credit
constexpr int64_t kPico = 1'000'000'000'000;   // one credit per unit, in pico-credits

struct TempDb {
  TempDb() : path(std::filesystem::temp_directory_path() / ("scigate-ledger-" + crypto::random_hex(6) + ".db")) {
    state::Database db(path);
    db.migrate(state::schema_migrations());
  }
  ~TempDb() {
    std::error_code ec;
    for (auto suffix : {"", "-wal", "-shm", "-ledger.lock"}) std::filesystem::remove(path.string() + suffix, ec);
  }
  int64_t scalar(const std::string& sql) {
    state::Database db(path);
    state::Statement st(db.handle(), sql);
    st.step();
    return st.column_int(0);
  }
  credits::Verification verify(int64_t now_ms) {
    state::Database db(path);
    db.exec("BEGIN");
    auto v = credits::verify(db.handle(), now_ms);
    db.exec("ROLLBACK");
    return v;
  }
  std::filesystem::path path;
};

// Time the test moves by hand.
struct TestClock {
  std::atomic<int64_t> ms{1'800'000'000'000};
  credits::Clock fn() {
    return [this] { return ms.load(); };
  }
  void advance(std::chrono::milliseconds d) { ms += d.count(); }
};

CreditLedgerOptions make_options(TestClock& clock) {
  CreditLedgerOptions o;
  o.projects = {{"P", "acct-p", 0}, {"L", "L", 50 * C}, {"Q", "Q", 0}};
  o.rates = {{"gpu_hour:a100", 1'500'000'000'000, "GPU-h"},
             {"call:gpu_job", kPico / 2, "call"},
             {"call:job", kPico / 10, "call"},
             {"unit", kPico, "unit"},
             {"tokens_in:m", 200'000, "token"},
             {"free:thing", 0, "thing"}};
  o.clock = clock.fn();
  return o;
}

// A grant as `scigate credits grant` makes it: another connection, then the epoch bump.
int64_t grant(TempDb& db, TestClock& clock, const std::string& account, MicroCredits amount,
              std::optional<int64_t> expires_ms = std::nullopt, const std::string& user = "") {
  state::Database conn(db.path);
  credits::CreditStore store(conn.handle(), make_options(clock).projects, clock.fn());
  store.begin();
  store.load();
  store.ensure_accounts();
  int64_t id = store.grant(account, user, amount, expires_ms, "tester", "");
  store.flush();
  store.bump_epoch();
  store.commit();
  return id;
}

// Runs coroutines on a thread of its own.
struct Runner {
  Runner() : work(asio::make_work_guard(io)), thread([this] { io.run(); }) {}
  ~Runner() {
    work.reset();
    thread.join();
  }
  template <class T>
  T run(asio::awaitable<T> aw) {
    return asio::co_spawn(io, std::move(aw), asio::use_future).get();
  }
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::thread thread;
};

HoldRequest request(const std::string& project, Usage worst, const std::string& user = "alice",
                    const std::string& tool = "job") {
  static std::atomic<int> n{0};
  HoldRequest r;
  r.project = project;
  r.principal = user;
  r.tool = tool;
  r.request_id = "req-" + std::to_string(++n);
  r.worst_case = std::move(worst);
  return r;
}

Usage units(double n) { return Usage().add("unit", n); }

// The ledger's invariants (credits::verify) hold on the committed rows; the problems if not.
void check_books(TempDb& db, int64_t now_ms) {
  auto v = db.verify(now_ms);
  CHECK(v.ok);
  for (const auto& p : v.problems) WARN(p);
}

// Makes inserting a row of tool "poison" into `table` fail, so that its batch rolls back.
void poison(TempDb& db, const std::string& table) {
  state::Database conn(db.path);
  conn.exec("CREATE TRIGGER poison BEFORE INSERT ON " + table +
            " WHEN NEW.tool = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END");
}

}  // namespace

TEST_CASE("credit ledger: pricing is exact integer arithmetic, rounded up once per call") {
  credits::RateTable rates({{"gpu_hour:a100", 1'500'000'000'000, "GPU-h"},
                            {"unit", kPico, "unit"},
                            {"tokens_in:m", 200'000, "token"},
                            {"zero", 0, "z"}});
  CHECK(rates.price(Usage().add("gpu_hour:a100", 8, "2 GPU × 4 h")) == 12 * C);
  // 0.1 + 0.2 + 0.3 units: 0.6 credits exactly, not 0.6000000000000001 rounded up.
  CHECK(rates.price(Usage().add("unit", 0.1).add("unit", 0.2).add("unit", 0.3)) == 600'000);
  // 1,234,567 tokens at 0.0000002: 0.2469134 credits; the fraction of a micro-credit is charged.
  CHECK(rates.price(Usage().add("tokens_in:m", 1'234'567)) == 246'914);
  // Fractions are summed before rounding: two 0.5 micro-credit lines make one micro-credit.
  CHECK(rates.price(Usage().add("tokens_in:m", 2.5).add("tokens_in:m", 2.5)) == 1);
  CHECK(rates.price(Usage().add("unpriced", 1e9).add("zero", 5).add("unit", -3).add("unit", std::nan(""))) == 0);
  CHECK(rates.price(Usage().add("unit", 1e300)) == credits::RateTable::kTooMuch);
  CHECK(rates.explain(Usage().add("gpu_hour:a100", 8, "2 GPU × 4 h").add("unit", 0.25).add("free", 1)) ==
        "2 GPU × 4 h × 1.5/GPU-h + 0.25 unit × 1/unit");
  CHECK(rates.unpriced(Usage().add("free", 1).add("unit", 1)) == std::vector<std::string>{"free"});
  CHECK(credits::format(12 * C + C / 2) == "12.5");
  CHECK(credits::format_rate(200'000) == "0.0000002");
}

TEST_CASE("credit ledger: GPUs of no particular type cost the dearest typed GPU rate, unless they have a rate") {
  credits::RateTable typed({{"gpu_hour:a100", 1'500'000'000'000, "GPU-h"},
                            {"gpu_hour:h100", 3 * kPico, "GPU-h"},
                            {"gpu_hour:t4", kPico / 2, "GPU-h"}});
  // A job asking for 2 GPUs of any type for 1 h may get H100s: it holds for them.
  CHECK(typed.price(Usage().add("gpu_hour", 2)) == 6 * C);
  CHECK(typed.unpriced(Usage().add("gpu_hour", 2)).empty());
  CHECK(typed.price(Usage().add("gpu_hour:t4", 2)) == 1 * C);  // a typed line keeps its own rate
  CHECK(typed.price(Usage().add("gpu_hour:v100", 2)) == 0);     // an unknown type is not guessed
  credits::RateTable own({{"gpu_hour", kPico, "GPU-h"}, {"gpu_hour:h100", 3 * kPico, "GPU-h"}});
  CHECK(own.price(Usage().add("gpu_hour", 2)) == 2 * C);
}

TEST_CASE("credit ledger: a refusal says what the call needs, how that was priced and what is available") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 3 * C + C / 5);  // 3.2
  SqliteLedger ledger(db.path, make_options(clock));
  Runner r;
  Usage worst;
  worst.add("gpu_hour:a100", 8, "2 GPU × 4 h").add("call:gpu_job", 1);
  auto res = r.run(ledger.reserve(request("P", worst, "alice", "gpu_job")));
  REQUIRE(res.error);
  CHECK(res.error->code == ErrorCode::kInsufficientCredits);
  CHECK(res.error->message ==
        "gpu_job needs 12.5 credits (2 GPU × 4 h × 1.5/GPU-h + 1 call × 0.5/call), 3.2 available in project P; "
        "a manager can grant more with `scigate credits grant`");
  CHECK(res.error->hint.find("scigate credits grant --project P AMOUNT") != std::string::npos);
  CHECK(res.hold.id.empty());

  // A project without an account has nothing: priced calls are refused the same way.
  auto none = r.run(ledger.reserve(request("nowhere", Usage().add("call:job", 1))));
  REQUIRE(none.error);
  CHECK(none.error->message ==
        "job needs 0.1 credits (1 call × 0.1/call), 0 available in project nowhere; a manager can grant more with "
        "`scigate credits grant`");
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds") == 0);
}

TEST_CASE("credit ledger: hold, settle and release, and settle never posts more than the hold") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  SqliteLedger ledger(db.path, make_options(clock));
  Runner r;

  auto h1 = r.run(ledger.reserve(request("P", units(10))));
  REQUIRE_FALSE(h1.error);
  CHECK_FALSE(h1.hold.id.empty());
  CHECK(h1.hold.amount == 10 * C);
  auto u = r.run(ledger.usage("P", "alice", true));
  CHECK(u.metered);
  CHECK(u.account == "acct-p");
  CHECK(u.balance == 100 * C);
  CHECK(u.held == 10 * C);
  CHECK(u.available == 90 * C);
  REQUIRE(u.holds.size() == 1);
  CHECK(u.holds[0].id == h1.hold.id);

  CHECK(r.run(ledger.settle(h1.hold, units(4.25), json::object())) == 4'250'000);
  u = r.run(ledger.usage("P", "alice", true));
  CHECK(u.balance == 95'750'000);
  CHECK(u.held == 0);
  REQUIRE(u.recent_charges.size() == 1);
  CHECK(u.recent_charges[0].amount == 4'250'000);

  SECTION("settle posts at most the hold") {
    auto h2 = r.run(ledger.reserve(request("P", units(10))));
    CHECK(r.run(ledger.settle(h2.hold, units(50), json::object())) == 10 * C);
    CHECK(r.run(ledger.usage("P", "alice", true)).balance == 85'750'000);
  }
  SECTION("release voids the hold and charges nothing; a second release or settle does nothing") {
    auto h2 = r.run(ledger.reserve(request("P", units(10))));
    r.run(ledger.release(h2.hold));
    CHECK(r.run(ledger.usage("P", "alice", true)).available == 95'750'000);
    r.run(ledger.release(h2.hold));
    CHECK(r.run(ledger.settle(h2.hold, units(1), json::object())) == 0);
    CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'voided' AND void_reason = 'released'") == 1);
  }
  SECTION("free calls never reach the database") {
    auto before = ledger.stats().operations;
    auto f = r.run(ledger.reserve(request("P", Usage().add("unpriced", 5).add("free:thing", 3))));
    REQUIRE_FALSE(f.error);
    CHECK(f.hold.id.empty());
    CHECK(f.hold.amount == 0);
    CHECK(r.run(ledger.settle(f.hold, units(5), json::object())) == 0);  // nothing held, nothing posted
    r.run(ledger.release(f.hold));
    CHECK(ledger.stats().operations == before);
    CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds") == 1);
  }
  ledger.sweep_now();
  check_books(db, clock.ms);
}

TEST_CASE("credit ledger: idempotency keys charge once, replay the result, and refuse conflicts") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  auto opts = make_options(clock);
  opts.idempotency_ttl = std::chrono::hours(24);
  SqliteLedger ledger(db.path, opts);
  Runner r;
  auto keyed = [&](const std::string& args_hash, Usage worst = units(5)) {
    auto q = request("P", std::move(worst));
    q.idempotency_key = "key-1";
    q.arguments_hash = args_hash;
    return q;
  };
  auto first = r.run(ledger.reserve(keyed("A")));
  REQUIRE_FALSE(first.error);
  REQUIRE_FALSE(first.hold.replay);

  auto running = r.run(ledger.reserve(keyed("A")));
  REQUIRE(running.error);
  CHECK(running.error->code == ErrorCode::kConflict);
  CHECK(running.error->message == "a call with this idempotency key is still running; retry later");
  CHECK(running.error->retry_after_ms > 0);

  json result;
  result["content"] = json::array();
  result["isError"] = false;
  result["structuredContent"]["answer"] = 42;
  CHECK(r.run(ledger.settle(first.hold, units(3), result)) == 3 * C);

  auto replay = r.run(ledger.reserve(keyed("A")));
  REQUIRE_FALSE(replay.error);
  REQUIRE(replay.hold.replay);
  CHECK(*replay.hold.replay == result);
  CHECK(replay.hold.id.empty());
  CHECK(r.run(ledger.usage("P", "alice", true)).balance == 97 * C);  // charged once

  auto other = r.run(ledger.reserve(keyed("B")));
  REQUIRE(other.error);
  CHECK(other.error->code == ErrorCode::kConflict);
  CHECK(other.error->message.find("other arguments") != std::string::npos);

  SECTION("a stored result that is not valid UTF-8 is still stored, and the call charged") {
    auto q = keyed("A");
    q.idempotency_key = "key-utf8";
    auto h = r.run(ledger.reserve(q));
    json bad = json::object();
    bad["text"] = std::string("\xff\xfe broken");
    CHECK(r.run(ledger.settle(h.hold, units(2), bad)) == 2 * C);
    auto again = r.run(ledger.reserve(q));
    REQUIRE(again.hold.replay);
    CHECK((*again.hold.replay)["text"].get<std::string>().find("broken") != std::string::npos);
  }
  SECTION("a keyed call charged for what it used but never answered (cancelled) runs again") {
    auto q = keyed("A");
    q.idempotency_key = "key-cut";
    auto h = r.run(ledger.reserve(q));
    REQUIRE_FALSE(h.error);
    CHECK(r.run(ledger.settle(h.hold, units(2), json())) == 2 * C);  // no result to replay
    auto retry = r.run(ledger.reserve(q));
    REQUIRE_FALSE(retry.error);
    CHECK_FALSE(retry.hold.replay);
    CHECK(r.run(ledger.settle(retry.hold, units(1), result)) == 1 * C);
    auto replay = r.run(ledger.reserve(q));
    REQUIRE(replay.hold.replay);  // the answered one is what a later retry gets
    CHECK(*replay.hold.replay == result);
  }
  SECTION("another caller's key of the same name is another key: not replayed to it, not a conflict") {
    auto q = keyed("A");
    REQUIRE(q.principal != "bob");
    q.principal = "bob";
    auto res = r.run(ledger.reserve(q));
    REQUIRE_FALSE(res.error);
    CHECK_FALSE(res.hold.replay);  // alice's stored result stays hers
    CHECK(r.run(ledger.settle(res.hold, units(1), result)) == 1 * C);
  }
  SECTION("the same key in another project is another key") {
    auto q = keyed("B");
    q.project = "Q";
    q.worst_case = Usage();  // free, but keyed: recorded all the same
    auto res = r.run(ledger.reserve(q));
    REQUIRE_FALSE(res.error);
    CHECK_FALSE(res.hold.id.empty());
    json small = json::object();
    small["ok"] = true;
    CHECK(r.run(ledger.settle(res.hold, Usage(), small)) == 0);
    auto again = r.run(ledger.reserve(q));
    REQUIRE(again.hold.replay);
    CHECK(*again.hold.replay == small);
  }
  SECTION("keys expire") {
    clock.advance(std::chrono::hours(25));
    auto fresh = r.run(ledger.reserve(keyed("B")));
    REQUIRE_FALSE(fresh.error);
    CHECK_FALSE(fresh.hold.replay);
    ledger.sweep_now();  // forgets the stored result
    CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE result IS NOT NULL") == 0);
  }
  SECTION("a key whose call failed (released) may run again") {
    auto q = request("P", units(1));
    q.idempotency_key = "key-2";
    q.arguments_hash = "A";
    auto a = r.run(ledger.reserve(q));
    r.run(ledger.release(a.hold));
    auto b = r.run(ledger.reserve(q));
    REQUIRE_FALSE(b.error);
    CHECK_FALSE(b.hold.replay);
    CHECK_FALSE(b.hold.id.empty());
  }
}

TEST_CASE("credit ledger: grants expire, charges draw from the earliest-expiring grant, remainders lapse") {
  TempDb db;
  TestClock clock;
  const int64_t t0 = clock.ms;
  grant(db, clock, "acct-p", 10 * C, t0 + 3'600'000);  // expires in an hour
  grant(db, clock, "acct-p", 10 * C);                  // never
  auto opts = make_options(clock);
  opts.hold_timeout = std::chrono::hours(10);
  SqliteLedger ledger(db.path, opts);
  Runner r;

  auto h = r.run(ledger.reserve(request("P", units(4))));
  CHECK(r.run(ledger.settle(h.hold, units(4), json::object())) == 4 * C);
  auto u = r.run(ledger.usage("P", "alice", true));
  REQUIRE(u.grants.size() == 2);
  CHECK(u.grants[0].remaining == 6 * C);  // the expiring grant paid
  CHECK(u.grants[1].remaining == 10 * C);

  // A hold made before the expiry keeps what it needs of the expiring grant: its settle draws
  // on that grant first (charges go in expiry order), so all of the grant's 6 are needed by a
  // hold of 15, and the outcome is the same whether the sweep comes before the settle or after.
  auto held = r.run(ledger.reserve(request("P", units(15))));
  REQUIRE_FALSE(held.error);
  clock.advance(std::chrono::hours(2));
  auto swept = ledger.sweep_now();
  CHECK(swept.voided == 0);
  u = r.run(ledger.usage("P", "alice", true));
  CHECK(u.balance == 16 * C);  // nothing lapsed yet
  CHECK(u.available == 1 * C);  // 16 − 15 held: the permanent grant's last credit
  // Refused now: the expired credits are not available to new calls (1.5 would need 0.5 of them).
  CHECK(r.run(ledger.reserve(request("P", units(1.5)))).error);

  CHECK(r.run(ledger.settle(held.hold, units(2), json::object())) == 2 * C);
  ledger.sweep_now();  // what the hold kept of the expired grant now lapses
  u = r.run(ledger.usage("P", "alice", true));
  CHECK(u.balance == 10 * C);
  REQUIRE(u.grants.size() == 1);
  CHECK(u.grants[0].remaining == 10 * C);
  CHECK(u.grants[0].expires_ms == std::nullopt);

  // grants − charges − lapses == balance, exactly
  CHECK(db.scalar("SELECT SUM(amount) FROM credit_grants WHERE account = 'acct-p'") == 20 * C);
  CHECK(db.scalar("SELECT -SUM(amount) FROM credit_postings WHERE account = 'acct-p' AND kind = 'charge'") == 6 * C);
  CHECK(db.scalar("SELECT -SUM(amount) FROM credit_postings WHERE account = 'acct-p' AND kind = 'lapse'") == 4 * C);
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 10 * C);
  CHECK(db.verify(clock.ms).ok);
}

TEST_CASE("credit ledger: an expired grant backs the holds made before its expiry, whatever came in since") {
  TempDb db;
  TestClock clock;
  const int64_t t0 = clock.ms;
  grant(db, clock, "acct-p", 100 * C, t0 + 3'600'000);
  grant(db, clock, "L", 100 * C, t0 + 3'600'000);  // project L also has a credit line of 50
  auto opts = make_options(clock);
  opts.hold_timeout = std::chrono::hours(10);
  SqliteLedger ledger(db.path, opts);
  Runner r;
  auto job = r.run(ledger.reserve(request("P", units(100))));
  auto lined = r.run(ledger.reserve(request("L", units(100))));
  REQUIRE_FALSE(job.error);
  REQUIRE_FALSE(lined.error);
  clock.advance(std::chrono::hours(2));  // both grants expire with their holds open
  grant(db, clock, "acct-p", 100 * C);   // the monthly renewal arrives
  ledger.sweep_now();                     // (used to lapse P's expired grant: the renewal "covered" the hold)
  CHECK(r.run(ledger.settle(job.hold, units(100), json::object())) == 100 * C);
  CHECK(r.run(ledger.settle(lined.hold, units(100), json::object())) == 100 * C);
  ledger.sweep_now();
  CHECK(r.run(ledger.usage("P", "alice", true)).balance == 100 * C);  // the renewal is intact
  CHECK(r.run(ledger.usage("L", "alice", true)).balance == 0);         // no debt on the line
  CHECK(db.scalar("SELECT debt FROM credit_accounts WHERE account = 'L'") == 0);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_postings WHERE kind = 'lapse'") == 0);
  CHECK(db.verify(clock.ms).ok);
}

TEST_CASE("credit ledger: a user's sub-budget limits that user even when the project has credits") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  grant(db, clock, "acct-p", 5 * C, std::nullopt, "alice");
  SqliteLedger ledger(db.path, make_options(clock));
  Runner r;

  auto refused = r.run(ledger.reserve(request("P", units(6), "alice")));
  REQUIRE(refused.error);
  CHECK(refused.error->code == ErrorCode::kInsufficientCredits);
  CHECK(refused.error->message ==
        "job needs 6 credits (6 unit × 1/unit), 5 available in alice's sub-budget in project P; a manager can raise "
        "it with `scigate credits grant --user alice`");
  CHECK(refused.error->hint.find("--project P --user alice") != std::string::npos);

  auto bob = r.run(ledger.reserve(request("P", units(6), "bob")));  // no sub-budget: the project's credits
  REQUIRE_FALSE(bob.error);
  auto alice = r.run(ledger.reserve(request("P", units(5), "alice")));
  REQUIRE_FALSE(alice.error);
  auto u = r.run(ledger.usage("P", "alice", true));
  REQUIRE(u.sub_budget);
  CHECK(u.sub_budget->available == 0);
  CHECK(u.available == 89 * C);
  CHECK(r.run(ledger.settle(alice.hold, units(3), json::object())) == 3 * C);
  u = r.run(ledger.usage("P", "alice", true));
  CHECK(u.sub_budget->balance == 2 * C);
  CHECK(u.balance == 97 * C);
  CHECK_FALSE(r.run(ledger.usage("P", "bob", true)).sub_budget);
  r.run(ledger.release(bob.hold));
  CHECK(db.verify(clock.ms).ok);
}

TEST_CASE("credit ledger: a credit line lets the balance go negative down to the limit, not beyond") {
  TempDb db;
  TestClock clock;
  SqliteLedger ledger(db.path, make_options(clock));  // project L: credit line 50, no grants
  Runner r;
  auto a = r.run(ledger.reserve(request("L", units(30))));
  REQUIRE_FALSE(a.error);
  CHECK(r.run(ledger.settle(a.hold, units(30), json::object())) == 30 * C);
  auto refused = r.run(ledger.reserve(request("L", units(25))));
  REQUIRE(refused.error);
  CHECK(refused.error->message.find("20 available in project L") != std::string::npos);
  auto b = r.run(ledger.reserve(request("L", units(20))));
  REQUIRE_FALSE(b.error);
  CHECK(r.run(ledger.settle(b.hold, units(20), json::object())) == 20 * C);
  auto u = r.run(ledger.usage("L", "alice", true));
  CHECK(u.balance == -50 * C);
  CHECK(u.available == 0);
  CHECK(u.credit_line == 50 * C);
  CHECK(r.run(ledger.reserve(request("L", Usage().add("tokens_in:m", 5)))).error);  // 1 micro-credit: no
  CHECK(db.scalar("SELECT debt FROM credit_accounts WHERE account = 'L'") == 50 * C);

  grant(db, clock, "L", 80 * C);  // settles the debt first
  u = r.run(ledger.usage("L", "alice", true));
  CHECK(u.balance == 30 * C);
  CHECK(u.available == 80 * C);
  CHECK(db.scalar("SELECT debt FROM credit_accounts WHERE account = 'L'") == 0);
  REQUIRE(u.grants.size() == 1);
  CHECK(u.grants[0].remaining == 30 * C);
  CHECK(db.verify(clock.ms).ok);
}

TEST_CASE("credit ledger: restart recovery voids the holds of calls that died with the process") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  {
    SqliteLedger ledger(db.path, make_options(clock));
    Runner r;
    REQUIRE_FALSE(r.run(ledger.reserve(request("P", units(10)))).error);
    REQUIRE_FALSE(r.run(ledger.reserve(request("P", units(20)))).error);
    auto done = r.run(ledger.reserve(request("P", units(1))));
    r.run(ledger.settle(done.hold, units(1), json::object()));
  }  // "crash": two holds left open
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'open'") == 2);
  {
    // Two more: one of a live process (PID 1 always exists), one of a process long gone.
    state::Database conn(db.path);
    conn.exec("INSERT INTO credit_holds(account, project, user, tool, request_id, amount, created_ms, expires_ms, "
              "state, owner) VALUES ('acct-p', 'P', 'bob', 'job', 'r-live', 5000000, 0, 9000000000000, 'open', "
              "'1/other-server'), ('acct-p', 'P', 'bob', 'job', 'r-dead', 7000000, 0, 9000000000000, 'open', "
              "'2147483000/gone')");
  }
  SqliteLedger again(db.path, make_options(clock));
  Runner r;
  CHECK(r.run(again.usage("P", "alice", true)).held == 42 * C);
  CHECK(again.recover_after_restart() == 3);
  auto u = r.run(again.usage("P", "alice", true));
  CHECK(u.held == 5 * C);  // the live server's hold stays
  CHECK(u.balance == 99 * C);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'voided' AND void_reason = 'restart'") == 3);
  CHECK(db.scalar("SELECT state = 'open' FROM credit_holds WHERE request_id = 'r-live'") == 1);
  CHECK(db.verify(clock.ms).ok);
}

TEST_CASE("credit ledger: a detached job hold survives restart recovery and is settled once afterwards") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  Hold job_hold;
  {
    SqliteLedger ledger(db.path, make_options(clock));
    Runner r;
    auto req = request("P", units(30));
    req.owner = "job:j-0123456789ab";
    req.timeout = std::chrono::hours(24 * 14);
    auto held = r.run(ledger.reserve(std::move(req)));
    REQUIRE_FALSE(held.error);
    job_hold = held.hold;
    REQUIRE_FALSE(r.run(ledger.reserve(request("P", units(10)))).error);  // an ordinary call's
  }  // "crash"
  SqliteLedger again(db.path, make_options(clock));
  Runner r;
  CHECK(again.recover_after_restart() == 1);  // the call's hold only
  CHECK(r.run(again.usage("P", "alice", true)).held == 30 * C);
  CHECK(db.scalar("SELECT owner = 'job:j-0123456789ab' FROM credit_holds WHERE state = 'open'") == 1);
  CHECK(r.run(again.settle(job_hold, units(12), json::object())) == 12 * C);
  CHECK(r.run(again.settle(job_hold, units(12), json::object())) == 0);  // never twice
  auto u = r.run(again.usage("P", "alice", true));
  CHECK(u.held == 0);
  CHECK(u.balance == 88 * C);
  CHECK(db.verify(clock.ms).ok);
}

TEST_CASE("credit ledger: two ledgers writing one database (two servers) never overspend together") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 50 * C);
  SqliteLedger a(db.path, make_options(clock));
  SqliteLedger b(db.path, make_options(clock));
  asio::io_context io;
  std::atomic<MicroCredits> told{0};
  std::atomic<int> held{0}, refused{0};
  std::vector<std::future<void>> done;
  for (int c = 0; c < 16; ++c)
    done.push_back(asio::co_spawn(
        io,
        [&, c]() -> asio::awaitable<void> {
          SqliteLedger& ledger = c % 2 ? a : b;
          for (int i = 0; i < 20; ++i) {
            auto res = co_await ledger.reserve(request("P", units(0.5 + (c + i) % 3)));
            if (res.error) {
              ++refused;
              continue;
            }
            ++held;
            told += co_await ledger.settle(res.hold, units(0.5 + (c + i) % 3), json::object());
          }
        },
        asio::use_future));
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) threads.emplace_back([&] { io.run(); });
  for (auto& f : done) f.get();
  for (auto& t : threads) t.join();
  CHECK(refused > 0);
  CHECK(held > 0);
  MicroCredits balance = db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'");
  CHECK(balance >= 0);
  CHECK(balance == 50 * C - told.load());
  CHECK(db.verify(clock.ms).ok);
  CHECK(a.stats().reloads + b.stats().reloads > 0);  // each saw the other's writes
}

TEST_CASE("credit ledger: the sweeper voids holds past their timeout, and a late settle posts nothing") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  SqliteLedger ledger(db.path, make_options(clock));
  Runner r;
  auto q = request("P", units(10));
  q.timeout = std::chrono::seconds(60);
  auto h = r.run(ledger.reserve(q));
  REQUIRE_FALSE(h.error);
  clock.advance(std::chrono::seconds(59));
  CHECK(ledger.sweep_now().voided == 0);
  clock.advance(std::chrono::seconds(2));
  CHECK(db.verify(clock.ms).problems.size() == 1);  // an open hold past its timeout
  CHECK(ledger.sweep_now().voided == 1);
  CHECK(db.verify(clock.ms).ok);
  CHECK(r.run(ledger.settle(h.hold, units(5), json::object())) == 0);
  CHECK(r.run(ledger.usage("P", "alice", true)).balance == 100 * C);
  CHECK(db.scalar("SELECT void_reason = 'timeout' FROM credit_holds") == 1);
}

TEST_CASE("credit ledger: extending a detached hold keeps it past its first timeout, never shortens it") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  SqliteLedger ledger(db.path, make_options(clock));
  Runner r;
  auto q = request("P", units(10));
  q.owner = "job:j-0123456789ab";  // a batch job's: a row, never in memory
  q.timeout = std::chrono::seconds(60);
  auto h = r.run(ledger.reserve(q));
  REQUIRE_FALSE(h.error);
  clock.advance(std::chrono::seconds(50));
  CHECK(r.run(ledger.extend(h.hold, std::chrono::seconds(600))));
  const int64_t extended = db.scalar("SELECT expires_ms FROM credit_holds");
  CHECK(extended == clock.ms + 600'000);
  CHECK(r.run(ledger.extend(h.hold, std::chrono::seconds(5))));  // shorter: left as it is
  CHECK(db.scalar("SELECT expires_ms FROM credit_holds") == extended);
  clock.advance(std::chrono::seconds(60));  // past the first timeout
  CHECK(ledger.sweep_now().voided == 0);
  CHECK(db.verify(clock.ms).ok);
  // Still the same hold: settled against what it held.
  CHECK(r.run(ledger.settle(h.hold, units(4), json::object())) == 4 * C);
  CHECK_FALSE(r.run(ledger.extend(h.hold, std::chrono::seconds(600))));  // settled: not open
  // A hold that did time out cannot be brought back.
  auto late = r.run(ledger.reserve(q));
  clock.advance(std::chrono::seconds(61));
  CHECK(ledger.sweep_now().voided == 1);
  CHECK_FALSE(r.run(ledger.extend(late.hold, std::chrono::seconds(600))));
  CHECK(r.run(ledger.usage("P", "alice", true)).balance == 96 * C);
}

TEST_CASE("credit ledger: a grant made while the server runs applies to the next call") {
  TempDb db;
  TestClock clock;
  SqliteLedger ledger(db.path, make_options(clock));
  Runner r;
  CHECK(r.run(ledger.reserve(request("Q", units(1)))).error);
  grant(db, clock, "Q", 2 * C);
  auto h = r.run(ledger.reserve(request("Q", units(1))));
  CHECK_FALSE(h.error);
  CHECK(ledger.stats().reloads >= 1);
}

TEST_CASE("credit ledger: one failing operation in a batch fails alone") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 1000 * C);
  poison(db, "credit_holds");  // a row of tool "poison" fails its insert
  SqliteLedger ledger(db.path, make_options(clock));
  asio::io_context io;
  ledger.pause();  // let them queue, so that they share a transaction
  std::vector<std::future<ReserveResult>> results;
  for (int i = 0; i < 20; ++i)
    results.push_back(asio::co_spawn(io, ledger.reserve(request("P", units(1), "alice", i == 7 ? "poison" : "job")),
                                     asio::use_future));
  io.poll();  // each reaches the queue
  ledger.resume();
  std::thread t([&] { io.run(); });
  int held = 0;
  for (int i = 0; i < 20; ++i) {
    auto res = results[static_cast<std::size_t>(i)].get();
    if (i == 7) {
      REQUIRE(res.error);
      CHECK(res.error->code == ErrorCode::kInternal);
      CHECK(res.error->detail.find("poisoned") != std::string::npos);
    } else {
      CHECK_FALSE(res.error);
      held += res.error ? 0 : 1;
    }
  }
  t.join();
  CHECK(held == 19);
  CHECK(ledger.stats().retried_batches >= 1);
  CHECK(ledger.stats().failed_operations == 1);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'open'") == 19);
  Runner r;
  CHECK(r.run(ledger.usage("P", "alice", true)).held == 19 * C);  // the mirror agrees after the rollback
}

TEST_CASE("credit ledger: 64 concurrent callers never overspend, and the books balance exactly") {
  TempDb db;
  TestClock clock;
  // P covers part of the calls; L has no grants, only a credit line of 50.
  grant(db, clock, "acct-p", 300 * C);
  grant(db, clock, "acct-p", 7 * C, std::nullopt, "user-3");  // one caller on a tight sub-budget
  auto opts = make_options(clock);
  SqliteLedger ledger(db.path, opts);
  // Both ways: a hold row per hold, and holds in memory (the ledger owns the database alone).
  const bool alone = GENERATE(false, true);
  if (alone) ledger.claim(db.path);
  CHECK(ledger.owns_alone() == alone);

  asio::io_context io;
  constexpr int kCallers = 64, kCalls = 25;
  std::atomic<MicroCredits> told_posted_p{0}, told_posted_l{0};
  std::atomic<int> refused{0}, settled{0}, released{0}, unexpected{0};
  std::vector<std::future<void>> done;
  for (int c = 0; c < kCallers; ++c) {
    done.push_back(asio::co_spawn(
        io,
        [&, c]() -> asio::awaitable<void> {
          std::mt19937_64 rng(static_cast<uint64_t>(c) * 7919 + 1);
          std::string project = c % 4 == 0 ? "L" : "P";
          std::string user = "user-" + std::to_string(c);
          for (int i = 0; i < kCalls; ++i) {
            // Worst cases with micro-credit fractions: 0.000001 .. 3 credits.
            double worst = static_cast<double>(rng() % 3'000'000 + 1) / 1e6;
            auto res = co_await ledger.reserve(request(project, units(worst), user));
            if (res.error) {
              // No Catch assertions off the test's thread: count, check afterwards.
              if (res.error->code != ErrorCode::kInsufficientCredits) ++unexpected;
              ++refused;
              continue;
            }
            if (rng() % 5 == 0) {
              co_await ledger.release(res.hold);
              ++released;
              continue;
            }
            double actual = worst * static_cast<double>(rng() % 130) / 100.0;  // sometimes more than held
            MicroCredits posted = co_await ledger.settle(res.hold, units(actual), json::object());
            if (posted > res.hold.amount || posted < 0) ++unexpected;
            (project == "L" ? told_posted_l : told_posted_p) += posted;
            ++settled;
          }
        },
        asio::use_future));
  }
  // While they run, another connection checks the limits on committed states.
  std::atomic<bool> running{true};
  std::atomic<int> checks{0}, violations{0};
  std::thread monitor([&] {
    state::Database conn(db.path);
    while (running) {
      conn.exec("BEGIN");
      auto v = credits::verify(conn.handle(), clock.ms);
      conn.exec("ROLLBACK");
      if (!v.ok) {
        ++violations;
        for (const auto& p : v.problems) WARN(p);
      }
      ++checks;
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&] { io.run(); });
  for (auto& f : done) f.get();
  running = false;
  monitor.join();
  for (auto& t : threads) t.join();

  CHECK(unexpected == 0);
  CHECK(violations == 0);
  CHECK(checks > 0);
  CHECK(refused > 0);  // the balance covered only part of the calls
  CHECK(settled > 100);
  CHECK((ledger.stats().memory_holds > 0) == alone);
  INFO("refused " << refused << ", settled " << settled << ", released " << released << ", transactions "
                  << ledger.stats().transactions << " for " << ledger.stats().operations << " operations");

  MicroCredits posted_p = db.scalar("SELECT -COALESCE(SUM(amount), 0) FROM credit_postings WHERE account = 'acct-p' AND kind = 'charge'");
  MicroCredits posted_l = db.scalar("SELECT -COALESCE(SUM(amount), 0) FROM credit_postings WHERE account = 'L' AND kind = 'charge'");
  CHECK(posted_p == told_posted_p.load());
  CHECK(posted_l == told_posted_l.load());
  MicroCredits balance_p = db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'");
  MicroCredits balance_l = db.scalar("SELECT balance FROM credit_accounts WHERE account = 'L'");
  CHECK(balance_p == 300 * C - posted_p);  // grants − posted, exactly
  CHECK(balance_l == -posted_l);
  CHECK(balance_p >= 0);
  CHECK(balance_l >= -50 * C);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'open'") == 0);
  // user-3 spent at most its sub-budget
  CHECK(db.scalar("SELECT -COALESCE(SUM(amount), 0) FROM credit_postings WHERE user = 'user-3' AND kind = 'charge'") <=
        7 * C);
  check_books(db, clock.ms);
  // Group commit happened: fewer transactions than operations.
  CHECK(ledger.stats().transactions < ledger.stats().operations);
}

TEST_CASE("get_usage: the report as the tool returns it, amounts exact") {
  UsageReport r;
  r.metered = true;
  r.project = "P";
  r.account = "acct-p";
  r.balance = 999'700'000;
  r.held = 300'000;
  r.available = 999'400'000;
  r.rates.push_back({"tokens_in:m", "token", 200'000});
  r.recent_charges.push_back({1'800'000'000'000, "alice", "sleep", "req-1", 300'000});
  r.sub_budget = UsageReport::SubBudget{"alice", 5 * C, 0, 5 * C};
  json j = tools::UsageTool::to_json(r);
  CHECK(j["balance"].dump() == "999.7");
  CHECK(j["held"].dump() == "0.3");
  CHECK(j["available"].dump() == "999.4");
  CHECK(j["rates"][0]["credits_per_unit"].dump() == "2e-07");
  CHECK(j["recent_charges"][0]["time"] == "2027-01-15T08:00:00Z");
  CHECK(j["sub_budget"]["available"] == 5.0);
  CHECK(tools::UsageTool::to_text(r).find("balance 999.7 credits, 0.3 held") != std::string::npos);
  UsageReport off;
  off.project = "P";
  CHECK(tools::UsageTool::to_json(off)["metered"] == false);
}

// Not run by ctest ([.]): `scigate_unit_tests "[bench]"`. Prints the ledger's cost per call.
// LEDGER_BENCH_AUDIT=1 also appends a durable audit record per call (the audit writer on the
// same file); LEDGER_BENCH_NO_FSYNC=1 leaves the fsync out.
TEST_CASE("credit ledger: benchmark", "[.][bench]") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 1'000'000'000 * C);
  auto opts = make_options(clock);
  opts.clock = nullptr;
  bool durable = std::getenv("LEDGER_BENCH_NO_FSYNC") == nullptr;
  opts.durable = durable;
  SqliteLedger ledger(db.path, opts);
  std::unique_ptr<SqliteAuditLog> audit;
  if (std::getenv("LEDGER_BENCH_AUDIT")) audit = std::make_unique<SqliteAuditLog>(db.path, false);

  auto percentile = [](std::vector<double>& v, double p) {
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
  };
  for (int callers : {1, 16, 64}) {
    asio::io_context io;
    const int per = callers == 1 ? 3000 : 20000 / callers;
    std::vector<std::vector<double>> lat(static_cast<std::size_t>(callers));
    auto start = std::chrono::steady_clock::now();
    for (int c = 0; c < callers; ++c)
      asio::co_spawn(
          io,
          [&, c]() -> asio::awaitable<void> {
            for (int i = 0; i < per; ++i) {
              auto t0 = std::chrono::steady_clock::now();
              auto res = co_await ledger.reserve(request("P", units(1)));
              co_await ledger.settle(res.hold, units(0.5), json::object());
              if (audit) {
                AuditRecord rec;
                rec.request_id = "r";
                co_await audit->append_durable(std::move(rec));
              }
              using us = std::chrono::duration<double, std::micro>;
              lat[static_cast<std::size_t>(c)].push_back(us(std::chrono::steady_clock::now() - t0).count());
            }
          },
          asio::detached);
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) threads.emplace_back([&] { io.run(); });
    for (auto& t : threads) t.join();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<double> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    WARN(callers << " callers" << (durable ? " (charges fsync'd)" : " (no fsync)")
                 << (audit ? " + audit append" : "") << ": reserve+settle median " << percentile(all, 0.5)
                 << " us, p99 " << percentile(all, 0.99) << " us, " << static_cast<double>(all.size()) / secs
                 << " calls/s (" << 2 * static_cast<double>(all.size()) / secs << " ledger ops/s)");
  }
  auto s = ledger.stats();
  WARN("transactions " << s.transactions << " and fsyncs " << s.syncs << " for " << s.operations
                        << " operations; " << s.busy_waits << " waits for the write lock");
  // The same with free calls: no database at all.
  {
    auto t0 = std::chrono::steady_clock::now();
    asio::io_context io;
    int n = 200000;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          for (int i = 0; i < n; ++i) {
            auto res = co_await ledger.reserve(request("P", Usage().add("call:echo", 1)));
            co_await ledger.settle(res.hold, Usage().add("call:echo", 1), json::object());
          }
        },
        asio::detached);
    io.run();
    using ns = std::chrono::duration<double, std::nano>;
    double per_call = ns(std::chrono::steady_clock::now() - t0).count() / n;
    WARN("free call reserve+settle: " << per_call << " ns");
  }
}

TEST_CASE("credit ledger: a flexible hold takes what is available, down to its minimum, and no more") {
  TempDb db;
  TestClock clock;
  SqliteLedger ledger(db.path, make_options(clock));
  grant(db, clock, "acct-p", 10 * C);
  Runner r;
  // The worst case (30) is not there, the minimum (4) is: everything available is held.
  HoldRequest flexible = request("P", units(30));
  flexible.minimum = units(4);
  auto a = r.run(ledger.reserve(flexible));
  REQUIRE_FALSE(a.error);
  CHECK(a.hold.amount == 10 * C);
  CHECK(r.run(ledger.usage("P", "alice", true)).available == 0);
  // Nothing left: even the minimum is refused, with the usual message.
  HoldRequest second = request("P", units(30));
  second.minimum = units(1);
  auto refused = r.run(ledger.reserve(second));
  REQUIRE(refused.error);
  CHECK(refused.error->code == ErrorCode::kInsufficientCredits);
  CHECK(r.run(ledger.settle(a.hold, units(7), json::object())) == 7 * C);
  // When the worst case fits, a flexible hold is an ordinary one.
  HoldRequest fits = request("P", units(2));
  fits.minimum = units(1);
  auto b = r.run(ledger.reserve(fits));
  REQUIRE_FALSE(b.error);
  CHECK(b.hold.amount == 2 * C);
  r.run(ledger.release(b.hold));
  CHECK(r.run(ledger.usage("P", "alice", true)).available == 3 * C);
  CHECK(db.verify(clock.ms).ok);
}

namespace {
template <class F>
bool eventually(F f, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!f()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

CreditLedgerOptions quick_options(TestClock& clock) {
  auto o = make_options(clock);
  o.reclaim_after = std::chrono::milliseconds(20);
  o.contender_poll = std::chrono::milliseconds(5);
  return o;
}
}  // namespace

TEST_CASE("credit ledger: alone on its database, a hold is decided in memory and only its charge is written") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 10 * C);
  SqliteLedger ledger(db.path, quick_options(clock));
  ledger.claim(db.path);
  REQUIRE(ledger.owns_alone());
  Runner r;
  auto before = ledger.stats();
  auto res = r.run(ledger.reserve(request("P", units(3))));
  REQUIRE_FALSE(res.error);
  CHECK(res.hold.id.front() == '-');  // in-memory ids are negative, rows' positive
  CHECK(res.hold.amount == 3 * C);
  CHECK(ledger.stats().transactions == before.transactions);  // no writer round trip
  CHECK(ledger.stats().memory_holds == 1);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds") == 0);
  auto u = r.run(ledger.usage("P", "alice", true));
  CHECK(u.held == 3 * C);
  REQUIRE(u.holds.size() == 1);
  CHECK(u.holds[0].id == res.hold.id);

  // More than the mirror can grant goes to the writer, which refuses it with the numbers.
  auto refused = r.run(ledger.reserve(request("P", units(8))));
  REQUIRE(refused.error);
  CHECK(refused.error->code == ErrorCode::kInsufficientCredits);
  CHECK(refused.error->message.find("7 available") != std::string::npos);

  CHECK(r.run(ledger.settle(res.hold, units(2), json::object())) == 2 * C);
  CHECK(r.run(ledger.settle(res.hold, units(2), json::object())) == 0);  // never twice
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds") == 0);
  CHECK(db.scalar("SELECT hold_id FROM credit_postings WHERE kind = 'charge'") == std::stoll(res.hold.id));
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 8 * C);

  // Released, and timed out: neither leaves a trace, and a late settle posts nothing.
  auto released = r.run(ledger.reserve(request("P", units(1))));
  r.run(ledger.release(released.hold));
  auto late = request("P", units(1));
  late.timeout = std::chrono::seconds(60);
  auto timed_out = r.run(ledger.reserve(late));
  REQUIRE_FALSE(timed_out.error);
  CHECK(r.run(ledger.usage("P", "alice", true)).held == 1 * C);
  clock.advance(std::chrono::seconds(61));
  CHECK(ledger.sweep_now().voided == 1);
  CHECK(r.run(ledger.settle(timed_out.hold, units(1), json::object())) == 0);
  CHECK(r.run(ledger.usage("P", "alice", true)).held == 0);
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 8 * C);

  // A grant made elsewhere a moment ago (`scigate credits grant`): a hold the mirror could not
  // yet cover is decided by the writer, which sees the grant; the owner shares for a moment
  // (the grant moved the epoch) and then owns the database alone again.
  grant(db, clock, "acct-p", 10 * C);
  auto big = r.run(ledger.reserve(request("P", units(15))));
  REQUIRE_FALSE(big.error);
  CHECK(big.hold.amount == 15 * C);
  CHECK(ledger.stats().yields == 1);
  CHECK(eventually([&] { return ledger.owns_alone(); }));
  CHECK(r.run(ledger.settle(big.hold, units(15), json::object())) == 15 * C);
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 3 * C);
  check_books(db, clock.ms);
}

TEST_CASE("credit ledger: a change made under a LedgerVisit binds an owner's very next hold") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 10 * C);
  auto o = quick_options(clock);
  // The owner looks at the epoch only this often when idle: without the visit, a hold decided
  // in memory this soon after the change would still see the old limits.
  o.contender_poll = std::chrono::milliseconds(300);
  SqliteLedger ledger(db.path, o);
  ledger.claim(db.path);
  REQUIRE(ledger.owns_alone());
  Runner r;
  auto before = r.run(ledger.reserve(request("P", units(2), "bob")));
  REQUIRE_FALSE(before.error);
  CHECK(before.hold.id.front() == '-');  // in memory
  int signals = 0;
  {
    LedgerVisit visit(
        db.path,
        [&] {
          ++signals;
          state::Database conn(db.path);
          credits::CreditStore store(conn.handle(), make_options(clock).projects, clock.fn());
          store.begin();
          store.bump_epoch();
          store.commit();
        },
        std::chrono::seconds(5));
    REQUIRE(visit.shared());
    CHECK(signals >= 1);
    CHECK_FALSE(ledger.owns_alone());
    CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'open'") == 1);  // written out
    // A new sub-budget tightens bob's limit to 1 credit: his next hold is refused at once.
    grant(db, clock, "acct-p", 1 * C, std::nullopt, "bob");
    auto refused = r.run(ledger.reserve(request("P", units(2), "bob")));
    REQUIRE(refused.error);
    CHECK(refused.error->code == ErrorCode::kInsufficientCredits);
    CHECK(refused.error->message.find("bob's sub-budget") != std::string::npos);
    // A second visitor while the owner shares gets the lock at once, without asking.
    int second_signals = 0;
    LedgerVisit again(db.path, [&] { ++second_signals; }, std::chrono::seconds(5));
    CHECK(again.shared());
    CHECK(second_signals == 0);
  }
  // The visits over, the owner takes the database back and holds in memory again.
  CHECK(eventually([&] { return ledger.owns_alone(); }));
  auto after = r.run(ledger.reserve(request("P", units(1))));
  REQUIRE_FALSE(after.error);
  CHECK(after.hold.id.front() == '-');
  CHECK(r.run(ledger.settle(before.hold, units(2), json::object())) == 2 * C);
  r.run(ledger.release(after.hold));
  check_books(db, clock.ms);
}

TEST_CASE("credit ledger: a visitor takes the lock at once with no owner, and gives up on one that never shares") {
  TempDb db;
  int signals = 0;
  std::string lock_path = db.path.string() + "-ledger.lock";
  {
    // No server ever claimed this database: no lock file, and the visit makes none.
    LedgerVisit visit(db.path, [&] { ++signals; }, std::chrono::seconds(5));
    CHECK(visit.shared());
    CHECK(signals == 0);
    CHECK_FALSE(std::filesystem::exists(lock_path));
  }
  // An owner that holds the lock and never answers (a stopped server): asked again every
  // 250 ms, then the visit gives up at its deadline and says so.
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  REQUIRE(::fcntl(fd, F_OFD_SETLK, &fl) == 0);
  auto t0 = std::chrono::steady_clock::now();
  LedgerVisit stuck(db.path, [&] { ++signals; }, std::chrono::milliseconds(600));
  auto waited = std::chrono::steady_clock::now() - t0;
  CHECK_FALSE(stuck.shared());
  CHECK(stuck.problem().find("did not share the ledger within 600 ms") != std::string::npos);
  // A signal that fails (the database busy past its timeout) is a warning, not an exception.
  LedgerVisit failing(db.path, [] { throw std::runtime_error("database is locked"); }, std::chrono::seconds(5));
  CHECK_FALSE(failing.shared());
  CHECK(failing.problem().find("database is locked") != std::string::npos);
  CHECK(signals >= 2);  // at 0, 250 and 500 ms (a stalled machine may skip the last)
  CHECK(waited >= std::chrono::milliseconds(600));
  CHECK(waited < std::chrono::seconds(5));
  ::close(fd);
}

TEST_CASE("credit ledger: a second server makes the owner write its holds out, and neither overspends") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 10 * C);
  Runner r;
  auto b_opts = quick_options(clock);
  std::optional<SqliteLedger> a(std::in_place, db.path, quick_options(clock));
  a->claim(db.path);
  REQUIRE(a->owns_alone());
  auto held_by_a = r.run(a->reserve(request("P", units(8))));
  REQUIRE_FALSE(held_by_a.error);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds") == 0);

  SqliteLedger b(db.path, b_opts);
  b.claim(db.path);  // returns once `a` has written its hold out and shares
  CHECK_FALSE(a->owns_alone());
  CHECK_FALSE(b.owns_alone());
  CHECK(a->stats().yields == 1);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'open'") == 1);
  CHECK(db.scalar("SELECT id FROM credit_holds") == std::stoll(held_by_a.hold.id));

  auto refused = r.run(b.reserve(request("P", units(5))));  // 2 left beside a's 8
  REQUIRE(refused.error);
  CHECK(refused.error->code == ErrorCode::kInsufficientCredits);
  CHECK(r.run(a->settle(held_by_a.hold, units(8), json::object())) == 8 * C);
  auto by_b = r.run(b.reserve(request("P", units(2))));
  REQUIRE_FALSE(by_b.error);
  CHECK(by_b.hold.id.front() != '-');  // shared: a row
  CHECK(r.run(b.settle(by_b.hold, units(2), json::object())) == 2 * C);
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 0);

  // Shared, `a` writes rows; it dies with one open, and b's restart recovery voids it.
  grant(db, clock, "acct-p", 5 * C);
  auto left_open = r.run(a->reserve(request("P", units(1))));
  REQUIRE_FALSE(left_open.error);
  CHECK(left_open.hold.id.front() != '-');
  a.reset();
  CHECK(b.recover_after_restart() == 1);
  // Alone again, b takes the database back and holds in memory.
  CHECK(eventually([&] { return b.owns_alone(); }));
  auto again = r.run(b.reserve(request("P", units(1))));
  CHECK(again.hold.id.front() == '-');
  CHECK(r.run(b.settle(again.hold, units(1), json::object())) == 1 * C);
  check_books(db, clock.ms);
}

TEST_CASE("credit ledger: a settle sharing its transaction with the owner's reclaim is kept whole") {
  // The reclaim reloads the mirror inside the transaction: a charge applied before it in the
  // same batch must reach the account, not only the postings.
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 10 * C);
  Runner r;
  SqliteLedger a(db.path, quick_options(clock));
  a.claim(db.path);
  std::optional<SqliteLedger> b(std::in_place, db.path, quick_options(clock));
  b->claim(db.path);  // a shares: its next hold is a row
  REQUIRE_FALSE(a.owns_alone());
  auto held = r.run(a.reserve(request("P", units(4))));
  REQUIRE_FALSE(held.error);
  REQUIRE(held.hold.id.front() != '-');
  asio::io_context io;
  a.pause();  // the settle waits in the queue for the reclaim
  auto settled = asio::co_spawn(io, a.settle(held.hold, units(3), json::object()), asio::use_future);
  io.poll();
  b.reset();  // the other server goes: a's tick queues its kClaim behind the settle
  // a takes the lock file exclusive as it queues the kClaim (F_OFD_GETLK only looks).
  int fd = ::open((db.path.string() + "-ledger.lock").c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  CHECK(eventually([&] {
    struct flock fl {};
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    return ::fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_WRLCK;
  }));
  ::close(fd);
  a.resume();
  std::thread t([&] { io.run(); });
  CHECK(settled.get() == 3 * C);
  t.join();
  CHECK(eventually([&] { return a.owns_alone(); }));
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 7 * C);
  check_books(db, clock.ms);
  // Alone again, its mirror agrees with the books: 6 of the 7 left can be held in memory.
  auto next = r.run(a.reserve(request("P", units(6))));
  REQUIRE_FALSE(next.error);
  CHECK(next.hold.id.front() == '-');
  CHECK(r.run(a.reserve(request("P", units(2)))).error);
}

TEST_CASE("credit ledger: a server joining an owner that spends in memory under load never overspends with it") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 60 * C);
  SqliteLedger a(db.path, quick_options(clock));
  a.claim(db.path);
  std::optional<SqliteLedger> b;
  std::atomic<bool> b_ready{false};
  asio::io_context io;
  std::atomic<MicroCredits> told{0};
  std::atomic<int> held{0}, refused{0}, unexpected{0};
  std::vector<std::future<void>> done;
  for (int c = 0; c < 16; ++c)
    done.push_back(asio::co_spawn(
        io,
        [&, c]() -> asio::awaitable<void> {
          for (int i = 0; i < 40; ++i) {
            SqliteLedger& ledger = (c % 2 && b_ready) ? *b : a;
            auto res = co_await ledger.reserve(request("P", units(0.25 + (c + i) % 4 * 0.25)));
            if (res.error) {
              if (res.error->code != ErrorCode::kInsufficientCredits) ++unexpected;
              ++refused;
              continue;
            }
            ++held;
            told += co_await ledger.settle(res.hold, units(0.25 + (c + i) % 3 * 0.25), json::object());
          }
        },
        asio::use_future));
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) threads.emplace_back([&] { io.run(); });
  // Join once `a` has spent some of it in memory.
  REQUIRE(eventually([&] { return a.stats().memory_holds >= 20; }));
  b.emplace(db.path, quick_options(clock));
  b->claim(db.path);
  b_ready = true;
  for (auto& f : done) f.get();
  for (auto& t : threads) t.join();
  CHECK(unexpected == 0);
  CHECK(refused > 0);
  CHECK(held > 0);
  CHECK(a.stats().yields >= 1);
  MicroCredits balance = db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'");
  CHECK(balance >= 0);
  CHECK(balance == 60 * C - told.load());
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_holds WHERE state = 'open'") == 0);
  check_books(db, clock.ms);
}

TEST_CASE("credit ledger: another user's expired allowance is lapsed in the writer's transaction, not beside an in-memory hold") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 100 * C);
  grant(db, clock, "acct-p", 10 * C, clock.ms + 3'600'000, "carol");  // carol's allowance, expiring
  SqliteLedger ledger(db.path, quick_options(clock));
  ledger.claim(db.path);
  Runner r;
  clock.advance(std::chrono::hours(2));  // expired; no sweep yet
  auto h = r.run(ledger.reserve(request("P", units(1), "alice")));
  REQUIRE_FALSE(h.error);
  CHECK(h.hold.id.front() != '-');  // through the writer: it has a lapse to write
  // A hold is answered before its transaction's COMMIT (Op::answer_before_commit): wait for it.
  ledger.flush();
  // What is committed now (a crash here keeps just this) is consistent: the lapse posting and
  // carol's sub-budget row together.
  CHECK(db.verify(clock.ms).ok);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_postings WHERE kind = 'allowance_lapse'") == 1);
  CHECK(r.run(ledger.settle(h.hold, units(1), json::object())) == 1 * C);
  ledger.sweep_now();
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_postings WHERE kind = 'allowance_lapse'") == 1);  // once
  CHECK(db.verify(clock.ms).ok);
}

TEST_CASE("credit ledger: a hold written out and settled in a transaction that fails is settled by the retry") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 10 * C);
  poison(db, "credit_postings");  // a row of tool "poison" fails its insert
  SqliteLedger ledger(db.path, quick_options(clock));
  ledger.claim(db.path);
  Runner r;
  auto good = r.run(ledger.reserve(request("P", units(3))));
  auto bad = r.run(ledger.reserve(request("P", units(2), "alice", "poison")));
  REQUIRE_FALSE(good.error);
  REQUIRE_FALSE(bad.error);
  REQUIRE(good.hold.id.front() == '-');  // in memory
  asio::io_context io;
  ledger.pause();
  // A grant from the CLI: the next transaction yields, writing the in-memory holds out as rows,
  // and settles both in it; the poisoned charge makes it roll back, rows and all.
  grant(db, clock, "acct-p", 10 * C);
  auto good_settle = asio::co_spawn(io, ledger.settle(good.hold, units(3), json::object()), asio::use_future);
  auto bad_settle = asio::co_spawn(io, ledger.settle(bad.hold, units(2), json::object()), asio::use_future);
  io.poll();
  ledger.resume();
  std::thread t([&] { io.run(); });
  CHECK(good_settle.get() == 3 * C);  // (was 0: "settle without hold", the call never charged)
  CHECK(bad_settle.get() == 0);
  t.join();
  CHECK(ledger.stats().yields >= 1);
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_postings WHERE kind = 'charge'") == 1);
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 17 * C);
}

TEST_CASE("credit ledger: an in-memory hold whose settle's transaction fails is settled by the retry, once") {
  TempDb db;
  TestClock clock;
  grant(db, clock, "acct-p", 10 * C);
  poison(db, "credit_postings");  // a row of tool "poison" fails its insert
  SqliteLedger ledger(db.path, quick_options(clock));
  ledger.claim(db.path);
  Runner r;
  auto bad = r.run(ledger.reserve(request("P", units(2), "alice", "poison")));
  auto good = r.run(ledger.reserve(request("P", units(3))));
  REQUIRE_FALSE(bad.error);
  REQUIRE_FALSE(good.error);
  CHECK(bad.hold.id.front() == '-');
  CHECK(good.hold.id.front() == '-');
  asio::io_context io;
  ledger.pause();  // both settles in one transaction, which the poisoned one makes fail
  auto bad_settle = asio::co_spawn(io, ledger.settle(bad.hold, units(2), json::object()), asio::use_future);
  auto good_settle = asio::co_spawn(io, ledger.settle(good.hold, units(3), json::object()), asio::use_future);
  io.poll();
  ledger.resume();
  std::thread t([&] { io.run(); });
  CHECK(good_settle.get() == 3 * C);
  CHECK(bad_settle.get() == 0);
  t.join();
  CHECK(ledger.stats().retried_batches >= 1);
  // The good one was charged once; the bad one's hold is open again, until its timeout.
  CHECK(db.scalar("SELECT COUNT(*) FROM credit_postings WHERE kind = 'charge'") == 1);
  CHECK(db.scalar("SELECT balance FROM credit_accounts WHERE account = 'acct-p'") == 7 * C);
  CHECK(r.run(ledger.usage("P", "alice", true)).held == 2 * C);
  clock.advance(std::chrono::hours(2));
  CHECK(ledger.sweep_now().voided == 1);
  CHECK(r.run(ledger.usage("P", "alice", true)).held == 0);
  // And holds are decided in memory again once the mirror has been reloaded.
  auto next = r.run(ledger.reserve(request("P", units(1))));
  CHECK(next.hold.id.front() == '-');
  CHECK(r.run(ledger.settle(next.hold, units(1), json::object())) == 1 * C);
  check_books(db, clock.ms);
}
