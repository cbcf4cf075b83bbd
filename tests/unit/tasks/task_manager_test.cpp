// The task manager against a real SQLite file: lifecycle, owner binding, cancellation,
// limits, restart and shutdown. The work is a coroutine the test controls.
#include <catch2/catch.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <future>
#include <set>
#include <thread>

#include "tests/support/eventually.hpp"
#include "server/state/database.hpp"
#include "server/tasks/task_manager.hpp"

using namespace scigate;
using namespace scigate::tasks;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  fs::path dir = fs::temp_directory_path() / ("scigate-tasks-" + std::to_string(::getpid()) + "-" +
                                              std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  fs::path db;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard = asio::make_work_guard(io);
  std::thread thread;

  Fixture() {
    fs::create_directories(dir);
    db = dir / "t.db";
    state::Database d(db);
    d.migrate(state::schema_migrations());
    thread = std::thread([this] { io.run(); });
  }
  ~Fixture() {
    guard.reset();
    io.stop();
    thread.join();
    fs::remove_all(dir);
  }
  template <class T>
  T run(asio::awaitable<T> aw) {
    return asio::co_spawn(io, std::move(aw), asio::use_future).get();
  }
};

// Work that ends when `release` is set (or the task is cancelled), with a result naming `text`.
struct Gate {
  std::atomic<bool> release{false};
  std::atomic<bool> saw_cancel{false};
  std::atomic<int> started{0};
};

TaskManager::Work gated(std::shared_ptr<Gate> gate, std::string text) {
  return [gate, text](std::string, std::shared_ptr<CancellationFlag> cancel,
                      std::function<void(std::string)> message) -> asio::awaitable<TaskOutcome> {
    gate->started++;
    message("half way");
    asio::steady_timer t(co_await asio::this_coro::executor);
    // Both ways of stopping must arrive: the flag, and the cancellation of awaited operations.
    bool aborted = false;
    // A cancellation that lands between two waits (the timer had fired, its completion was
    // queued) is not an aborted wait: the coroutine's next co_await throws it instead.
    while (!gate->release.load() && !aborted) {
      t.expires_after(std::chrono::milliseconds(5));
      try {
        auto [ec] = co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
        aborted = ec == asio::error::operation_aborted;
      } catch (const boost::system::system_error& e) {
        aborted = e.code() == asio::error::operation_aborted;
        if (!aborted) throw;
      }
    }
    if (aborted && cancel->cancelled()) gate->saw_cancel = true;
    TaskOutcome o;
    o.result = nlohmann::json::object();
    o.result["content"] = nlohmann::json::array({{{"type", "text"}, {"text", text}}});
    o.result["isError"] = false;
    co_return o;
  };
}

TaskRecord create_ok(Fixture& f, TaskManager& m, const std::string& owner, TaskManager::Work work,
                     std::optional<int64_t> ttl = std::nullopt) {
  auto r = f.run(m.create(f.io.get_executor(), owner, "demo", "wait_job", "req-1", ttl, std::move(work), nullptr));
  REQUIRE(std::holds_alternative<TaskRecord>(r));
  return std::get<TaskRecord>(r);
}

using scigate::test::eventually;

}  // namespace

TEST_CASE("a task is durable before its id is returned, runs, and keeps its result") {
  Fixture f;
  TasksConfig cfg;
  auto gate = std::make_shared<Gate>();
  std::string id;
  {
    TaskManager m(cfg, f.db);
    m.recover();
    TaskRecord rec = create_ok(f, m, "alice", gated(gate, "done!"));
    id = rec.id;
    CHECK(rec.id.rfind("t-", 0) == 0);
    CHECK(rec.id.size() == 34);  // 128 random bits
    CHECK(rec.status == Status::kWorking);
    CHECK(rec.expires_ms - rec.created_ms == 3600 * 1000);
    // Already in the database: another connection sees it.
    {
      state::Database d(f.db);
      state::Statement st(d.handle(), "SELECT status, owner FROM tasks WHERE id = ?");
      st.bind(1, id);
      REQUIRE(st.step());
      CHECK(st.column_text(0) == "working");
      CHECK(st.column_text(1) == "alice");
    }
    REQUIRE(eventually([&] { return m.get("alice", id) && m.get("alice", id)->status_message == "half way"; }));
    CHECK(m.running() == 1);
    gate->release = true;
    REQUIRE(eventually([&] { return m.get("alice", id)->status == Status::kCompleted; }));
    // Once stored, the result lives in the database only; fetch() reads it.
    REQUIRE(eventually([&] { return m.get("alice", id)->result.is_null(); }));
    auto done = *f.run(m.fetch("alice", id));
    CHECK(done.result["content"][0]["text"] == "done!");
    CHECK(done.result_bytes > 0);
    CHECK(eventually([&] { return m.running() == 0; }));
    m.join();
  }
  // A new process serves the finished task from the database.
  TaskManager again(cfg, f.db);
  again.recover();
  auto r = f.run(again.fetch("alice", id));
  REQUIRE(r);
  CHECK(r->status == Status::kCompleted);
  CHECK(r->result["content"][0]["text"] == "done!");
  CHECK_FALSE(r->result_is_error);
  CHECK_FALSE(f.run(again.fetch("mallory", id)));
}

TEST_CASE("a task is visible to its owner only") {
  Fixture f;
  TaskManager m(TasksConfig{}, f.db);
  m.recover();
  auto gate = std::make_shared<Gate>();
  TaskRecord rec = create_ok(f, m, "alice", gated(gate, "x"));
  CHECK_FALSE(m.get("mallory", rec.id));
  bool more = true;
  CHECK(m.list("mallory", std::nullopt, 10, &more).empty());
  CHECK(m.list("alice", std::nullopt, 10, &more).size() == 1);
  CHECK_FALSE(more);
  auto c = f.run(m.cancel("mallory", rec.id));
  REQUIRE(std::holds_alternative<Error>(c));
  CHECK(std::get<Error>(c).code == ErrorCode::kNotFound);
  CHECK(m.get("alice", rec.id)->status == Status::kWorking);  // untouched
  gate->release = true;
  REQUIRE(eventually([&] { return m.running() == 0; }));
  m.join();
}

TEST_CASE("tasks/list pages continue after the last task shown, whatever was created between pages") {
  Fixture f;
  TaskManager m(TasksConfig{}, f.db);
  m.recover();
  auto gate = std::make_shared<Gate>();
  std::set<std::string> created;
  for (int i = 0; i < 5; ++i) created.insert(create_ok(f, m, "alice", gated(gate, "x")).id);
  bool more = false;
  auto first = m.list("alice", std::nullopt, 2, &more);
  REQUIRE(first.size() == 2);
  CHECK(more);
  // Newer tasks arrive between pages: an offset cursor would show first[1] again on page two.
  // (2 ms later, so they do not share a created_ms with the first five and sort after the cursor.)
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  for (int i = 0; i < 3; ++i) create_ok(f, m, "alice", gated(gate, "y"));
  std::vector<std::string> seen = {first[0].id, first[1].id};
  std::optional<TaskManager::PageKey> after = TaskManager::PageKey{first.back().created_ms, first.back().id};
  while (more) {
    auto page = m.list("alice", after, 2, &more);
    REQUIRE(!page.empty());
    for (const auto& r : page) seen.push_back(r.id);
    after = TaskManager::PageKey{page.back().created_ms, page.back().id};
  }
  // Every task of the first five shown exactly once, in the order of the first page's sort.
  std::set<std::string> unique(seen.begin(), seen.end());
  CHECK(unique.size() == seen.size());
  for (const auto& id : created) CHECK(unique.count(id) == 1);
  CHECK(seen.size() == 5);  // the three newer ones sort before the cursor: the next first page shows them
  for (std::size_t i = 1; i < seen.size(); ++i) {
    auto a = *m.get("alice", seen[i - 1]), b = *m.get("alice", seen[i]);
    CHECK((a.created_ms > b.created_ms || (a.created_ms == b.created_ms && a.id < b.id)));
  }
  gate->release = true;
  REQUIRE(eventually([&] { return m.running() == 0; }));
  m.join();
}

TEST_CASE("cancel marks the task cancelled at once, stops its work, and cannot be undone") {
  Fixture f;
  TaskManager m(TasksConfig{}, f.db);
  m.recover();
  auto gate = std::make_shared<Gate>();
  TaskRecord rec = create_ok(f, m, "alice", gated(gate, "late result"));
  REQUIRE(eventually([&] { return gate->started.load() == 1; }));
  auto c = f.run(m.cancel("alice", rec.id));
  REQUIRE(std::holds_alternative<TaskRecord>(c));
  CHECK(std::get<TaskRecord>(c).status == Status::kCancelled);
  REQUIRE(eventually([&] { return gate->saw_cancel.load(); }));
  REQUIRE(eventually([&] { return m.running() == 0; }));
  // The work's own result came later and did not replace the cancellation.
  auto r = m.get("alice", rec.id);
  CHECK(r->status == Status::kCancelled);
  CHECK(r->result.is_null());
  auto again = f.run(m.cancel("alice", rec.id));
  REQUIRE(std::holds_alternative<Error>(again));
  CHECK(std::get<Error>(again).message.find("already in terminal status 'cancelled'") != std::string::npos);
  m.join();
}

TEST_CASE("a principal may run only so many tasks at once") {
  Fixture f;
  TasksConfig cfg;
  cfg.max_running_per_principal = 2;
  TaskManager m(cfg, f.db);
  m.recover();
  auto gate = std::make_shared<Gate>();
  create_ok(f, m, "alice", gated(gate, "1"));
  create_ok(f, m, "alice", gated(gate, "2"));
  auto third = f.run(m.create(f.io.get_executor(), "alice", "demo", "wait_job", "r", std::nullopt, gated(gate, "3"), nullptr));
  REQUIRE(std::holds_alternative<Error>(third));
  CHECK(std::get<Error>(third).code == ErrorCode::kRateLimited);
  CHECK(std::get<Error>(third).message.find("already runs 2 tasks") != std::string::npos);
  create_ok(f, m, "bob", gated(gate, "b"));  // others are not affected
  gate->release = true;
  REQUIRE(eventually([&] { return m.running() == 0; }));
  create_ok(f, m, "alice", gated(gate, "4"));  // finished tasks do not count
  REQUIRE(eventually([&] { return m.running() == 0; }));
  m.join();
}

TEST_CASE("tasks a previous process left running are failed at restart, with a reason") {
  Fixture f;
  auto gate = std::make_shared<Gate>();
  // The first "process" keeps running its task; the second starts on the same database, as a
  // restarted server would after the first died.
  TaskManager first(TasksConfig{}, f.db);
  first.recover();
  std::string id = create_ok(f, first, "alice", gated(gate, "never")).id;
  TaskManager second(TasksConfig{}, f.db);
  second.recover();
  auto r = second.get("alice", id);
  REQUIRE(r);
  CHECK(r->status == Status::kFailed);
  CHECK(r->error["code"] == -32603);
  CHECK(r->status_message.find("the server restarted") != std::string::npos);
  CHECK(second.running() == 0);
  gate->release = true;
  REQUIRE(eventually([&] { return first.running() == 0; }));
  first.join();
}

TEST_CASE("shutdown fails running tasks, stops their work and then reports done") {
  Fixture f;
  TaskManager m(TasksConfig{}, f.db);
  m.recover();
  auto gate = std::make_shared<Gate>();
  TaskRecord rec = create_ok(f, m, "alice", gated(gate, "never"));
  REQUIRE(eventually([&] { return gate->started.load() == 1; }));
  std::promise<void> done;
  m.shutdown(f.io.get_executor(), std::chrono::seconds(5), [&] { done.set_value(); });
  REQUIRE(done.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(gate->saw_cancel.load());
  CHECK(m.running() == 0);
  auto r = m.get("alice", rec.id);
  CHECK(r->status == Status::kFailed);
  CHECK(r->status_message.find("shut down") != std::string::npos);
  auto refused = f.run(m.create(f.io.get_executor(), "alice", "demo", "wait_job", "r", std::nullopt, gated(gate, "x"), nullptr));
  CHECK(std::holds_alternative<Error>(refused));
  m.join();
}

TEST_CASE("a finished task expires after its ttl, but not before a minimum retention") {
  Fixture f;
  TasksConfig cfg;
  cfg.min_retention = std::chrono::seconds(1);
  TaskManager m(cfg, f.db);
  m.recover();
  auto gate = std::make_shared<Gate>();
  gate->release = true;
  TaskRecord rec = create_ok(f, m, "alice", gated(gate, "quick"), 1);  // clamped up to 1 s
  CHECK(rec.expires_ms - rec.created_ms == 1000);
  REQUIRE(eventually([&] { auto r = m.get("alice", rec.id); return r && r->status == Status::kCompleted; }));
  CHECK(m.get("alice", rec.id));
  REQUIRE(eventually([&] { return !m.get("alice", rec.id); }, std::chrono::milliseconds(4000)));
  m.join();
}

TEST_CASE("wait returns the finished task, or nothing when the waiter gives up") {
  Fixture f;
  TaskManager m(TasksConfig{}, f.db);
  m.recover();
  auto gate = std::make_shared<Gate>();
  TaskRecord rec = create_ok(f, m, "alice", gated(gate, "awaited"));
  auto abandon = std::make_shared<CancellationFlag>();
  auto waiting = asio::co_spawn(f.io, m.wait("alice", rec.id, abandon), asio::use_future);
  CHECK(waiting.wait_for(std::chrono::milliseconds(100)) == std::future_status::timeout);
  abandon->cancel();
  CHECK_FALSE(waiting.get());
  auto finished = asio::co_spawn(f.io, m.wait("alice", rec.id, nullptr), asio::use_future);
  gate->release = true;
  auto r = finished.get();
  REQUIRE(r);
  CHECK(r->result["content"][0]["text"] == "awaited");
  CHECK_FALSE(f.run(m.wait("mallory", rec.id, nullptr)));
  m.join();
}

namespace {
// Work that ends at once with a result of about `bytes` bytes (isError when asked).
TaskManager::Work sized(std::size_t bytes, bool is_error = false) {
  return [bytes, is_error](std::string, std::shared_ptr<CancellationFlag>,
                           std::function<void(std::string)>) -> asio::awaitable<TaskOutcome> {
    TaskOutcome o;
    o.result = nlohmann::json::object();
    o.result["content"] = nlohmann::json::array({{{"type", "text"}, {"text", std::string(bytes, 'q')}}});
    o.result["isError"] = is_error;
    co_return o;
  };
}

int64_t rows(const fs::path& db, const std::string& owner) {
  state::Database d(db);
  state::Statement st(d.handle(), "SELECT count(*) FROM tasks WHERE owner = ?");
  st.bind(1, owner);
  st.step();
  return st.column_int(0);
}

// Creates a task and waits until it is finished and stored (its result dropped from memory).
std::string finished(Fixture& f, TaskManager& m, const std::string& owner, TaskManager::Work work) {
  std::string id = create_ok(f, m, owner, std::move(work)).id;
  REQUIRE(eventually([&] {
    auto r = m.get(owner, id);
    return r && is_terminal(r->status) && r->result_bytes > 0 && m.running() == 0;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(2));  // distinct end times: a defined "oldest"
  return id;
}
}  // namespace

TEST_CASE("finished tasks beyond the retention count are discarded oldest first, and a lookup says why") {
  Fixture f;
  TasksConfig cfg;
  cfg.max_retained_per_principal = 3;
  TaskManager m(cfg, f.db);
  m.recover();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(finished(f, m, "alice", sized(100)));
  std::string bobs = finished(f, m, "bob", sized(100));
  // The two oldest of alice's are gone from memory and the database; the three newest stay.
  CHECK_FALSE(m.get("alice", ids[0]));
  CHECK_FALSE(m.get("alice", ids[1]));
  for (int i = 2; i < 5; ++i) CHECK(f.run(m.fetch("alice", ids[i]))->result["content"][0]["text"].get<std::string>().size() == 100);
  REQUIRE(eventually([&] { return rows(f.db, "alice") == 3; }));
  CHECK(rows(f.db, "bob") == 1);  // another principal's tasks are not displaced
  CHECK(m.get("bob", bobs));
  auto why = m.why_missing("alice", ids[0]);
  REQUIRE(why);
  CHECK(why->find("discarded before its ttl") != std::string::npos);
  CHECK(why->find("max_retained_per_principal") != std::string::npos);
  CHECK_FALSE(m.why_missing("mallory", ids[0]));  // the reason is the owner's to read
  CHECK_FALSE(m.why_missing("alice", ids[2]));
  m.join();
}

TEST_CASE("finished tasks beyond the retained result bytes are discarded, but never the one that just ended") {
  Fixture f;
  TasksConfig cfg;
  cfg.max_retained_result_mb_per_principal = 1;
  TaskManager m(cfg, f.db);
  m.recover();
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(finished(f, m, "alice", sized(400'000)));
  // Three results of ~400 kB are 1.2 MB, over 1 MiB: the oldest went, the other two stay.
  CHECK_FALSE(m.get("alice", ids[0]));
  CHECK(m.get("alice", ids[1]));
  CHECK(m.get("alice", ids[2]));
  CHECK(m.why_missing("alice", ids[0])->find("1 MB of results") != std::string::npos);
  // A single result larger than the whole allowance is still kept: it is what the caller waits for.
  std::string big = finished(f, m, "alice", sized(2'000'000));
  auto r = f.run(m.fetch("alice", big));
  REQUIRE(r);
  CHECK(r->result["content"][0]["text"].get<std::string>().size() == 2'000'000);
  CHECK_FALSE(m.get("alice", ids[1]));
  CHECK_FALSE(m.get("alice", ids[2]));
  REQUIRE(eventually([&] { return rows(f.db, "alice") == 1; }));
  m.join();
}

TEST_CASE("a restart reads task states without their results, and applies lowered retention limits") {
  Fixture f;
  std::vector<std::string> ids;
  {
    TaskManager m(TasksConfig{}, f.db);
    m.recover();
    for (int i = 0; i < 4; ++i) ids.push_back(finished(f, m, "alice", sized(1000, i == 3)));
    m.join();
  }
  TasksConfig lower;
  lower.max_retained_per_principal = 2;
  TaskManager again(lower, f.db);
  again.recover();
  CHECK_FALSE(again.get("alice", ids[0]));
  CHECK_FALSE(again.get("alice", ids[1]));
  CHECK(again.why_missing("alice", ids[1]));
  CHECK(rows(f.db, "alice") == 2);
  auto meta = again.get("alice", ids[3]);
  REQUIRE(meta);
  CHECK(meta->result.is_null());       // not loaded at start
  CHECK(meta->result_is_error);        // but known, for 2025-11-25's "failed"
  CHECK(meta->result_bytes > 1000);
  auto full = f.run(again.fetch("alice", ids[3]));
  REQUIRE(full);
  CHECK(full->result["isError"] == true);
  CHECK_FALSE(again.get("alice", ids[2])->result_is_error);
  again.join();
}
