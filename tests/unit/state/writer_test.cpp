#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server/common/crypto.hpp"
#include "server/state/database.hpp"
#include "server/state/writer.hpp"

using namespace scigate;
namespace fs = std::filesystem;

namespace {

struct TempDb {
  fs::path path = fs::temp_directory_path() / ("scigate-writer-" + crypto::random_hex(6) + ".db");
  TempDb() {
    state::Database db(path);
    // parent/child with a deferred foreign key: a child without its parent fails at COMMIT.
    db.exec("CREATE TABLE t(x TEXT); CREATE TABLE parent(id INTEGER PRIMARY KEY);"
            "CREATE TABLE child(p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)");
  }
  ~TempDb() {
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(path.string() + suffix);
  }
  std::vector<std::string> rows() {
    state::Database db(path);
    state::Statement st(db.handle(), "SELECT x FROM t ORDER BY rowid");
    std::vector<std::string> out;
    while (st.step()) out.push_back(st.column_text(0));
    return out;
  }
};

// Records what the writer told it, in order.
struct Recorder final : state::Writer::Participant {
  explicit Recorder(std::string n) : name(std::move(n)) {}
  std::string name;
  std::mutex mutex;
  std::vector<std::string> events;
  void note(const std::string& e) {
    std::lock_guard g(mutex);
    events.push_back(name + ":" + e);
  }
  void begin() override { note("begin"); }
  void before_commit() override { note("before_commit"); }
  void committed() override { note("committed"); }
  void rolled_back() noexcept override { note("rolled_back"); }
  void after_batch() override { note("after_batch"); }
  int count(const std::string& e) {
    std::lock_guard g(mutex);
    return static_cast<int>(std::count(events.begin(), events.end(), name + ":" + e));
  }
};

// Inserts `value` into t (or a child without a parent: fails at COMMIT), or throws in apply.
struct Row final : state::Writer::Item {
  enum class Kind { kInsert, kThrow, kOrphan };
  Row(state::Writer& w, Recorder& r, std::string v, Kind k = Kind::kInsert, bool early_answer = false,
      bool sync = false)
      : Item(&r), writer(w), recorder(r), value(std::move(v)), kind(k), early(early_answer), synced(sync) {}
  state::Writer& writer;
  Recorder& recorder;
  std::string value;
  Kind kind;
  bool early, synced;
  int applied = 0, answers = 0;
  std::string failure, lost_because;
  std::thread::id answered_on;
  std::promise<void> done;

  void apply() override {
    ++applied;
    recorder.note("apply " + value);
    if (kind == Kind::kThrow) throw std::runtime_error("bad item " + value);
    if (kind == Kind::kOrphan) {
      writer.db().exec("INSERT INTO child(p) VALUES (42)");
      return;
    }
    state::Statement st(writer.db().handle(), "INSERT INTO t(x) VALUES (?)");
    st.bind(1, value);
    st.step();
  }
  bool answer_before_commit() const override { return early; }
  bool needs_sync() const override { return synced; }
  void failed(const std::string& what) override { failure = what; }
  void lost(const std::string& what) override { lost_because = what; }
  void answer() override {
    answered_on = std::this_thread::get_id();
    if (++answers == 1) done.set_value();
  }
};

}  // namespace

TEST_CASE("writer: two participants' items share one transaction, and each hears only of its own transactions") {
  TempDb db;
  state::Writer w(db.path, {});
  Recorder ledger("ledger"), audit("audit");
  w.add(&ledger);
  w.add(&audit);
  w.pause();  // queue them, so that they go in one batch
  auto a1 = std::make_shared<Row>(w, ledger, "settle 1");
  auto b1 = std::make_shared<Row>(w, audit, "record 1");
  auto a2 = std::make_shared<Row>(w, ledger, "settle 2");
  for (auto& item : {a1, b1, a2}) w.enqueue(item);
  w.resume();
  w.flush();
  CHECK(w.stats().transactions == 1);
  CHECK(db.rows() == std::vector<std::string>{"settle 1", "record 1", "settle 2"});  // arrival order
  CHECK(ledger.events == std::vector<std::string>{"ledger:begin", "ledger:apply settle 1", "ledger:apply settle 2",
                                                  "ledger:before_commit", "ledger:committed", "ledger:after_batch"});
  CHECK(audit.events ==
        std::vector<std::string>{"audit:begin", "audit:apply record 1", "audit:before_commit", "audit:committed",
                                 "audit:after_batch"});
  for (auto& item : {a1, b1, a2}) CHECK(item->answers == 1);

  // A transaction with only audit items: the ledger hears nothing of it.
  auto b2 = std::make_shared<Row>(w, audit, "record 2");
  w.enqueue(b2);
  w.flush();
  CHECK(ledger.count("begin") == 1);
  CHECK(audit.count("begin") == 2);
  w.remove(&ledger);
  w.remove(&audit);
}

TEST_CASE("writer: a bad item fails alone, the batch is rolled back and the others commit one by one") {
  TempDb db;
  state::Writer w(db.path, {});
  Recorder p("p");
  w.add(&p);
  w.pause();
  auto good1 = std::make_shared<Row>(w, p, "good 1");
  auto bad = std::make_shared<Row>(w, p, "bad", Row::Kind::kThrow);
  auto good2 = std::make_shared<Row>(w, p, "good 2");
  for (auto& item : {good1, bad, good2}) w.enqueue(item);
  w.resume();
  w.flush();
  CHECK(db.rows() == std::vector<std::string>{"good 1", "good 2"});
  CHECK(bad->failure == "bad item bad");
  CHECK(good1->failure.empty());
  CHECK(good2->failure.empty());
  for (auto& item : {good1, bad, good2}) CHECK(item->answers == 1);
  CHECK(good1->applied == 2);  // in the failed batch, then alone
  auto s = w.stats();
  CHECK(s.retried_batches == 1);
  CHECK(s.failed_items == 1);
  CHECK(s.transactions == 2);  // good 1 and good 2, each alone
  CHECK(p.count("rolled_back") == 2);  // the batch, then the bad item alone
  w.remove(&p);
}

TEST_CASE("writer: an item answered before a COMMIT that fails is told it is lost and is not run again") {
  TempDb db;
  state::Writer w(db.path, {});
  Recorder p("p");
  w.add(&p);
  w.pause();
  auto hold = std::make_shared<Row>(w, p, "hold", Row::Kind::kInsert, /*early_answer=*/true);
  auto orphan = std::make_shared<Row>(w, p, "orphan", Row::Kind::kOrphan);  // the COMMIT fails
  auto settle = std::make_shared<Row>(w, p, "settle");
  for (auto& item : {hold, orphan, settle}) w.enqueue(item);
  w.resume();
  w.flush();
  CHECK(hold->answers == 1);
  CHECK(hold->applied == 1);
  CHECK(hold->lost_because.find("FOREIGN KEY") != std::string::npos);
  CHECK(orphan->failure.find("FOREIGN KEY") != std::string::npos);
  CHECK(orphan->lost_because.empty());
  CHECK(settle->failure.empty());
  CHECK(db.rows() == std::vector<std::string>{"settle"});  // the hold went with its batch
  w.remove(&p);
}

TEST_CASE("writer: with sync, an item that needs it is answered after an fsync, the others at the commit") {
  TempDb db;
  state::Writer w(db.path, state::Writer::Options{true, 1024, nullptr});
  Recorder p("p");
  w.add(&p);
  auto plain = std::make_shared<Row>(w, p, "plain");
  auto durable = std::make_shared<Row>(w, p, "durable", Row::Kind::kInsert, false, /*sync=*/true);
  w.enqueue(plain);
  w.flush();
  auto writer_thread = plain->answered_on;
  CHECK(w.stats().syncs == 0);
  w.enqueue(durable);
  w.flush();
  CHECK(durable->answers == 1);
  CHECK(w.stats().syncs >= 1);
  CHECK(durable->answered_on != writer_thread);  // on the syncer's thread, after its fsync
  w.remove(&p);
}

TEST_CASE("writer: ticks run when due and stop once the participant is removed") {
  TempDb db;
  state::Writer w(db.path, {});
  struct Ticker final : state::Writer::Participant {
    std::atomic<int> ticks{0};
    state::Writer::TimePoint tick(state::Writer::TimePoint now) override {
      ++ticks;
      return now + std::chrono::milliseconds(5);
    }
  } t;
  w.add(&t);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (t.ticks < 4 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(t.ticks >= 4);
  w.remove(&t);
  int after = t.ticks;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(t.ticks == after);
}

TEST_CASE("writer: an item enqueued without waking the writer waits for the one that belongs with it") {
  TempDb db;
  for (int spin_us : {0, 50}) {
    state::Writer::Options o;
    o.spin = std::chrono::microseconds(spin_us);
    state::Writer w(db.path, o);
    Recorder p("p");
    w.add(&p);
    w.flush();  // (the first tick)
    auto before = w.stats().transactions;
    // A call's settle, then (a little later) its audit record: one transaction for both.
    auto settle = std::make_shared<Row>(w, p, "settle " + std::to_string(spin_us));
    w.enqueue(settle, /*wake_writer=*/false);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(settle->applied == 0);  // not woken, not even by a spinning writer
    auto record = std::make_shared<Row>(w, p, "record " + std::to_string(spin_us));
    w.enqueue(record);
    CHECK(record->done.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
    CHECK(settle->answers == 1);
    CHECK(w.stats().transactions == before + 1);
    // One that nothing follows is still written by flush() (a server stopping).
    auto lone = std::make_shared<Row>(w, p, "lone " + std::to_string(spin_us));
    w.enqueue(lone, false);
    w.flush();
    CHECK(lone->answers == 1);
    w.remove(&p);
  }
  CHECK(db.rows() == std::vector<std::string>{"settle 0", "record 0", "lone 0", "settle 50", "record 50", "lone 50"});
}

TEST_CASE("writer: catch_up() waits until what was enqueued before it is committed, journaled or not") {
  TempDb db;
  state::Writer w(db.path, {});
  Recorder p("p");
  w.add(&p);
  w.flush();
  CHECK(w.catch_up(std::chrono::milliseconds(0)));  // nothing queued: at once
  // An audit record appended without waiting (no journal here): a reader on another connection
  // must see it once catch_up() returns.
  w.pause();
  auto record = std::make_shared<Row>(w, p, "record");
  w.enqueue(record);
  auto unwoken = std::make_shared<Row>(w, p, "unwoken");
  w.enqueue(unwoken, /*wake_writer=*/false);
  CHECK_FALSE(w.catch_up(std::chrono::milliseconds(50)));  // held: not committed
  CHECK(db.rows().empty());
  std::thread resume([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    w.resume();
  });
  CHECK(w.catch_up(std::chrono::seconds(5)));
  resume.join();
  CHECK(db.rows() == std::vector<std::string>{"record", "unwoken"});  // the unwoken one too: it was woken for
  // A failed item counts as done: catch_up() does not wait for it until the limit.
  w.enqueue(std::make_shared<Row>(w, p, "bad", Row::Kind::kThrow));
  auto t0 = std::chrono::steady_clock::now();
  CHECK(w.catch_up(std::chrono::seconds(5)));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  w.remove(&p);
}

namespace {

// A participant whose items are journaled rows: the payload is the row's text.
struct Journaled final : state::Writer::Participant {
  explicit Journaled(state::Writer& w) : writer(w) {}
  state::Writer& writer;
  char journal_tag() const override { return 'T'; }
  std::shared_ptr<state::Writer::Item> decode(std::string_view payload) override;
};

struct JournalRow final : state::Writer::Item {
  JournalRow(Journaled& owner, std::string v) : Item(&owner), writer(owner.writer), value(std::move(v)) {}
  state::Writer& writer;
  std::string value;
  int fail_first = 0;         // throws in its first applies
  bool die_on_retry = false;  // the process dies when it is applied again after failing
  std::string failure;
  void apply() override {
    if (fail_first > 0) {
      --fail_first;
      if (die_on_retry && fail_first == 0) {
        // Next time: die in the middle of the retry's transaction.
        fail_first = -1;
      }
      throw std::runtime_error("bad item " + value);
    }
    if (fail_first < 0) std::_Exit(0);
    state::Statement st(writer.db().handle(), "INSERT INTO t(x) VALUES (?)");
    st.bind(1, value);
    st.step();
  }
  bool journal_entry(std::string& out) const override {
    out += value;
    return true;
  }
  void failed(const std::string& what) override { failure = what; }
  void answer() override {}
};

std::shared_ptr<state::Writer::Item> Journaled::decode(std::string_view payload) {
  if (payload == "unreadable") throw std::runtime_error("not a row");
  return std::make_shared<JournalRow>(*this, std::string(payload));
}

struct JournalDb : TempDb {
  fs::path journal = path.string() + "-writer.journal";
  JournalDb() {
    state::Database db(path);
    db.exec("CREATE TABLE state_journal(id INTEGER PRIMARY KEY CHECK (id = 1), applied INTEGER NOT NULL);"
            "INSERT INTO state_journal VALUES (1, 0)");
  }
  ~JournalDb() {
    fs::remove(journal);
    fs::remove(journal.string() + ".2");
  }
};

// A writer on the database with a Journaled participant (removed before the writer stops).
struct JournalWriter {
  explicit JournalWriter(const fs::path& db, state::Writer::Options o = {}) : w(db, o), p(w) { w.add(&p); }
  ~JournalWriter() { w.remove(&p); }
  state::Writer w;
  Journaled p;
};

// Runs `body` in a child process, with a writer on `db` that has opened the journal; the
// child then dies without a word (as under SIGKILL), exit status 0 when `body` returned true.
void in_crashing_child(const JournalDb& db, const std::function<bool(state::Writer&, Journaled&)>& body) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    JournalWriter w_p(db.path);
    auto& w = w_p.w;
    auto& p = w_p.p;
    bool ok = w.open_journal(db.journal, true) == 0 && body(w, p);
    std::_Exit(ok ? 0 : 3);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

// Journals `committed` rows and waits for their commit, then journals `uncommitted` more with
// the writer held, and dies.
void crash_after_journaling(const JournalDb& db, std::vector<std::string> committed,
                            std::vector<std::string> uncommitted) {
  in_crashing_child(db, [&](state::Writer& w, Journaled& p) {
    bool ok = true;
    for (auto& v : committed) ok = ok && w.enqueue_journaled(std::make_shared<JournalRow>(p, v));
    w.flush();
    w.pause();
    for (auto& v : uncommitted) ok = ok && w.enqueue_journaled(std::make_shared<JournalRow>(p, v));
    return ok;
  });
}

}  // namespace

TEST_CASE("writer journal: what was journaled but never committed is replayed at the next open, once") {
  JournalDb db;
  crash_after_journaling(db, {"a", "b"}, {"c", "d", "e"});
  CHECK(db.rows() == std::vector<std::string>{"a", "b"});  // c, d, e died uncommitted
  {
    JournalWriter w_p(db.path);
    auto& w = w_p.w;
    auto& p = w_p.p;
    CHECK(w.open_journal(db.journal, true) == 3);  // not a and b again: committed before
    CHECK(w.journaling());
    CHECK(fs::file_size(db.journal) == 0);
    CHECK(db.rows() == std::vector<std::string>{"a", "b", "c", "d", "e"});
    // And it goes on journaling, from a sequence number above the old ones.
    CHECK(w.enqueue_journaled(std::make_shared<JournalRow>(p, "f")));
    w.flush();
    CHECK(fs::file_size(db.journal) > 0);
  }
  CHECK(fs::file_size(db.journal) == 0);  // a clean stop leaves it empty
  {
    JournalWriter w_p(db.path);
    auto& w = w_p.w;
    auto& p = w_p.p;
    CHECK(w.open_journal(db.journal, false) == 0);
    CHECK_FALSE(w.journaling());  // append false: replay only (a server in durability = fsync)
  }
  CHECK(db.rows() == std::vector<std::string>{"a", "b", "c", "d", "e", "f"});
}

TEST_CASE("writer journal: a torn last entry and an unreadable one are skipped, the others replayed") {
  JournalDb db;
  crash_after_journaling(db, {}, {"x", "unreadable", "y", "z"});
  // A crash inside the last write: cut the file in the middle of "z"'s entry.
  auto size = fs::file_size(db.journal);
  fs::resize_file(db.journal, size - 1);
  JournalWriter w_p(db.path);
  auto& w = w_p.w;
  auto& p = w_p.p;
  CHECK(w.open_journal(db.journal, true) == 2);
  CHECK(db.rows() == std::vector<std::string>{"x", "y"});
}

TEST_CASE("writer journal: a second writer on the same file goes without one, and without a journal nothing is journaled") {
  JournalDb db;
  JournalWriter first_p1(db.path);
  auto& first = first_p1.w;
  auto& p1 = first_p1.p;
  JournalWriter second_p2(db.path);
  auto& second = second_p2.w;
  auto& p2 = second_p2.p;
  CHECK_FALSE(second.enqueue_journaled(std::make_shared<JournalRow>(p2, "before open")));
  CHECK(first.open_journal(db.journal, true) == 0);
  CHECK(first.journaling());
  CHECK(second.open_journal(db.journal, true) == 0);
  CHECK_FALSE(second.journaling());  // locked by the first: it waits for its commits instead
  CHECK_FALSE(second.enqueue_journaled(std::make_shared<JournalRow>(p2, "refused")));
  CHECK(first.enqueue_journaled(std::make_shared<JournalRow>(p1, "journaled")));
  first.flush();
  CHECK(first.stats().journaled == 1);
  CHECK(db.rows() == std::vector<std::string>{"journaled"});
}

TEST_CASE("writer journal: a journaled item that fails alone is journaled again and retried behind the others") {
  JournalDb db;
  {
    JournalWriter w_p(db.path);
    auto& w = w_p.w;
    auto& p = w_p.p;
    w.open_journal(db.journal, true);
    w.pause();  // a, b and c in one batch; b throws: the batch is retried item by item
    auto b = std::make_shared<JournalRow>(p, "b");
    b->fail_first = 2;  // in the batch, and alone: journaled again, retried after c
    CHECK(w.enqueue_journaled(std::make_shared<JournalRow>(p, "a")));
    CHECK(w.enqueue_journaled(b));
    CHECK(w.enqueue_journaled(std::make_shared<JournalRow>(p, "c")));
    w.resume();
    w.flush();
    CHECK(b->failure.empty());
    CHECK(w.stats().failed_items == 0);
    CHECK(db.rows() == std::vector<std::string>{"a", "c", "b"});
    // One that keeps failing fails after its retries, and is reported.
    auto d = std::make_shared<JournalRow>(p, "d");
    d->fail_first = 100;
    CHECK(w.enqueue_journaled(d));
    w.flush();
    CHECK(w.stats().failed_items == 1);
    CHECK(d->failure.find("bad item d") != std::string::npos);
  }
  CHECK(db.rows() == std::vector<std::string>{"a", "c", "b"});
}

TEST_CASE("writer journal: an item that kept failing is replayed once at the next start, not once per retry") {
  JournalDb db;
  {
    JournalWriter w_p(db.path);
    w_p.w.open_journal(db.journal, true);
    auto d = std::make_shared<JournalRow>(w_p.p, "d");
    d->fail_first = 100;  // the database refuses it (locked from outside, I/O errors) every time
    CHECK(w_p.w.enqueue_journaled(d));
    w_p.w.flush();
    REQUIRE(w_p.w.stats().failed_items == 1);
  }
  CHECK(db.rows().empty());
  // Its entry and the copies journaled for each retry are all in the journal; one is the item.
  JournalWriter next(db.path);
  CHECK(next.w.open_journal(db.journal, true) == 1);
  CHECK(db.rows() == std::vector<std::string>{"d"});
}

TEST_CASE("writer journal: a crash before a failed item's retry commits replays it, though later items committed") {
  JournalDb db;
  in_crashing_child(db, [](state::Writer& w, Journaled& p) {
    w.pause();
    auto b = std::make_shared<JournalRow>(p, "b");
    b->fail_first = 2;
    b->die_on_retry = true;  // c commits (its number above b's), then the process dies: status 0
    w.enqueue_journaled(std::make_shared<JournalRow>(p, "a"));
    w.enqueue_journaled(b);
    w.enqueue_journaled(std::make_shared<JournalRow>(p, "c"));
    w.resume();
    w.flush();
    return false;  // (not reached)
  });
  CHECK(db.rows() == std::vector<std::string>{"a", "c"});
  JournalWriter w_p(db.path);
  CHECK(w_p.w.open_journal(db.journal, true) == 1);
  CHECK(db.rows() == std::vector<std::string>{"a", "c", "b"});
}

TEST_CASE("writer journal: past 1 MiB the appends turn to the other file, and the full one is emptied once committed") {
  JournalDb db;
  JournalWriter w_p(db.path);
  auto& w = w_p.w;
  auto& p = w_p.p;
  w.open_journal(db.journal, true);
  fs::path other = db.journal.string() + ".2";
  std::string big(4000, 'x');
  w.pause();  // nothing committed yet: the first file fills past 1 MiB, then the other takes over
  for (int i = 0; i < 300; ++i) REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, big)));
  CHECK(fs::file_size(db.journal) >= (1u << 20));
  CHECK(fs::file_size(other) > 0);
  CHECK(fs::file_size(db.journal) + fs::file_size(other) >= 300u * 4000u);
  w.resume();
  w.flush();
  CHECK(fs::file_size(db.journal) == 0);  // all of it committed: emptied
  CHECK(fs::file_size(other) > 0);        // the active one, kept
  CHECK(w.stats().journal_bytes == fs::file_size(other));
  CHECK(db.rows().size() == 300u);
  fs::remove(other);
}

TEST_CASE("writer journal: journaled items do not wake a writer that had journaled work, it comes for them together") {
  JournalDb db;
  state::Writer::Options o;
  o.linger = std::chrono::seconds(1);  // long: nothing below happens by the deadline by chance
  JournalWriter w_p(db.path, o);
  auto& w = w_p.w;
  auto& p = w_p.p;
  w.open_journal(db.journal, true);
  using steady = std::chrono::steady_clock;
  auto committed_within = [&](std::size_t rows, std::chrono::milliseconds limit) {
    auto until = steady::now() + limit;
    while (db.rows().size() < rows && steady::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return db.rows().size() >= rows;
  };
  // The first after a quiet spell wakes it, as ever.
  REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, "first")));
  CHECK(committed_within(1, std::chrono::milliseconds(500)));
  w.flush();  // (the writer now sleeps until its deadline)
  auto before = w.stats().transactions;

  // Ten more: none wakes it; they wait for its deadline and commit in one transaction.
  for (int i = 0; i < 10; ++i) REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, "r" + std::to_string(i))));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(db.rows().size() == 1u);
  CHECK(committed_within(11, std::chrono::seconds(5)));
  CHECK(w.stats().transactions == before + 1);

  // An item someone waits for is taken at once, and what lingered before it with it.
  REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, "lingered")));
  auto t0 = steady::now();
  w.enqueue(std::make_shared<JournalRow>(p, "waited for"));
  CHECK(committed_within(13, std::chrono::seconds(5)));
  CHECK(steady::now() - t0 < std::chrono::milliseconds(500));

  // catch_up() does not wait for the deadline either.
  REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, "caught up")));
  t0 = steady::now();
  CHECK(w.catch_up(std::chrono::seconds(5)));
  CHECK(steady::now() - t0 < std::chrono::milliseconds(500));
  CHECK(db.rows().back() == "caught up");
}

TEST_CASE("writer journal: a lingering writer is woken once enough journaled items are queued") {
  JournalDb db;
  state::Writer::Options o;
  o.linger = std::chrono::seconds(1);
  o.linger_items = 4;
  JournalWriter w_p(db.path, o);
  auto& w = w_p.w;
  auto& p = w_p.p;
  w.open_journal(db.journal, true);
  REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, "first")));
  w.flush();  // committed; the writer now lingers
  REQUIRE(db.rows().size() == 1u);
  for (int i = 0; i < 3; ++i) REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, "r" + std::to_string(i))));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(db.rows().size() == 1u);  // three: it lingers on
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(w.enqueue_journaled(std::make_shared<JournalRow>(p, "r3")));  // the fourth wakes it
  while (db.rows().size() < 5u && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  CHECK(db.rows().size() == 5u);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(500));
}
