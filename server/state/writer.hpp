#pragma once
// One thread and one SQLite connection for a database's governance writes — the credit ledger's
// and the audit log's (DESIGN.md: "SQLite writes go through one writer").
//
// Queued items run in arrival order, many per BEGIN IMMEDIATE … COMMIT (group commit). A call's
// settle and its audit record, queued one after the other, therefore share a transaction and a
// hand-off, and the record sees what the settle posted; the two never wait for each other's
// write lock or invalidate each other's page cache, as two connections on one file do.
//
// Participants are the components whose in-memory state lives in these transactions (the
// credit store's mirror, the audit chain's head). The writer tells a participant where a
// transaction begins, commits or rolls back — only for transactions in which one of its items
// ran — and gives it a tick for periodic work (a sweep, a checkpoint).
//
// Failure: a batch that throws (in an item, or at COMMIT) is rolled back and each of its items
// runs again in a transaction of its own, so one bad item fails alone (Item::failed) and the
// others commit.
//
// Answers: an item is answered (Item::answer, exactly once) after the COMMIT that made it
// durable against a crash of the process; with `sync` and needs_sync(), only after the WAL
// fsync that covers that COMMIT (power loss; the fsync runs outside the write lock, WalSyncer);
// with answer_before_commit(), as soon as every item of its batch has run (a credit hold is
// decided under the write lock and needs no durability). An item answered before a COMMIT that
// then failed is told so (Item::lost) and not run again.
//
// The journal: with open_journal(), an item that can describe itself (Item::journal_entry) is
// written to an append-only file as it is enqueued (enqueue_journaled) and may be relied on at
// once, before its COMMIT: a crash of the process loses nothing that was journaled, because
// the next open_journal() replays every entry past the highest sequence number committed (kept
// in the database, in the same transactions as the items: table state_journal). Items commit in
// journal order; one that fails alone is journaled again with a new number and retried (a few
// times) behind the others, so "the highest committed" never passes an entry still needed. The
// journal is two files used in turn: once the active one passes 1 MiB the other takes the
// appends, and the full one is emptied when everything in it is committed. This is how a
// tool call is answered without waiting for the writer in `durability = "commit"`.
//
// Thread-safety: enqueue(), enqueue_journaled(), flush(), pause(), resume(), add(), remove() and
// stats() from any thread. Participant callbacks and Item::apply/failed/lost run on the writer thread with the
// connection's lock held (tick and after_batch without it); Item::answer runs on the writer
// thread or, for synced items, on the syncer's.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "server/state/database.hpp"
#include "server/state/journal.hpp"
#include "server/state/spin_policy.hpp"
#include "server/state/wal_checkpointer.hpp"
#include "server/state/wal_syncer.hpp"

namespace scigate::state {

class Writer {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  class Item;

  class Participant {
   public:
    virtual ~Participant() = default;
    // In a transaction, before the first of this participant's items in it.
    virtual void begin() {}
    // In the transaction, after its last item, before COMMIT. May throw (the batch fails).
    virtual void before_commit() {}
    virtual void committed() {}
    virtual void rolled_back() noexcept {}
    // Outside the transaction, after a batch with its items was committed and answered.
    virtual void after_batch() {}
    // Periodic work, outside any transaction: called when due (and once after add()); returns
    // when it is next due (TimePoint::max(): not until after the next batch). May enqueue.
    virtual TimePoint tick(TimePoint now) {
      (void)now;
      return TimePoint::max();
    }
    // The journal (open_journal): a participant whose items have journal entries names them
    // with a tag of its own (not 0) and turns an entry's payload back into its item at replay
    // (nullptr: nothing to do). Throws when the payload does not parse (the entry is skipped,
    // and logged).
    virtual char journal_tag() const { return 0; }
    virtual std::shared_ptr<Item> decode(std::string_view payload) {
      (void)payload;
      return nullptr;
    }
  };

  class Item {
   public:
    explicit Item(Participant* owner) : owner_(owner) {}
    virtual ~Item() = default;
    // In the transaction; throws to fail.
    virtual void apply() = 0;
    // Asked after apply().
    virtual bool answer_before_commit() const { return false; }
    virtual bool needs_sync() const { return false; }
    // It threw alone in its own transaction; answer() follows.
    virtual void failed(const std::string& what) = 0;
    // It was answered before a COMMIT that failed: its changes are gone.
    virtual void lost(const std::string& what) { (void)what; }
    virtual void answer() = 0;
    // Appends what replaying this item after a crash needs (its owner's decode() reads it) and
    // returns true; false: it has no journal entry (enqueue_journaled() then refuses it).
    // Distinct items must make distinct entries (replay takes entries with the same bytes as
    // one item journaled again after a failure).
    virtual bool journal_entry(std::string& out) const {
      (void)out;
      return false;
    }

   private:
    friend class Writer;
    Participant* owner_;
    uint64_t journal_seq_ = 0;  // its journal entry's sequence number, 0: none
    int journal_retries_ = 0;   // times it failed alone and was journaled again
    bool requeued_ = false;     // failed alone and queued again: not answered with its batch
    bool answered_ = false;  // writer thread (and the syncer's, for synced items, after the writer is done with it)
  };

  struct Options {
    bool sync = false;  // a WalSyncer fsyncs the WAL before items that needs_sync() are answered
    std::size_t max_batch = 1024;  // items per transaction at most
    WalCheckpointer* checkpointer = nullptr;  // set: it checkpoints the WAL, not our commits
    // After a batch, how long the writer polls for the next item before it sleeps at most:
    // waking a sleeping thread costs tens of microseconds on a virtual machine (bench/governance:
    // 40 µs of a lone caller's 170), and a lone caller's next call comes ~75 µs after its answer.
    // SpinPolicy (spin_policy.hpp) polls for about the typical idle gap, less, or not at all
    // where that is a loss. 0: sleep at once. [server] writer_poll_us.
    std::chrono::microseconds spin{200};
    // With a journal: journaled items do not wake the writer while it has had journaled work in
    // the last second; it looks for them on its own at most this long after it went to sleep.
    // Nobody waits for a journaled item's commit (flush() and catch_up() cut the wait short),
    // so a tool call's request path never wakes the writer — on a busy core the woken writer
    // would run its transaction before the call's answer is sent — and calls arriving within
    // the window share a transaction (bench/governance, 500 calls/s: 1.0 → 0.22 transactions
    // and ~200 → ~87 µs of writer CPU per call). Another process reading the database sees a
    // call up to this much later. 0: woken for each, as without a journal.
    // [server] writer_linger_us.
    std::chrono::microseconds linger{10000};
    // ... or until this many items are queued: under load a window's worth would make one long
    // transaction, a burst of writer CPU that callers sharing the cores wait behind.
    std::size_t linger_items = 32;
  };

  struct Stats {
    uint64_t items = 0, transactions = 0, retried_batches = 0, failed_items = 0;
    uint64_t busy_waits = 0;  // waits for the write lock (another connection: CLI, a second server)
    uint64_t syncs = 0;       // WAL fsyncs, each covering every commit before it
    uint64_t spins = 0, spin_hits = 0;  // polls before sleeping; those that found an item
    uint64_t journaled = 0, journal_refused = 0;  // enqueue_journaled(): entries written; refused
    uint64_t journal_bytes = 0;  // the journal files' size now
  };

  Writer(const std::filesystem::path& db_path, Options options);
  ~Writer();  // answers every queued item, then stops; participants must be removed first
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // The connection. Others may use it under db().lock() for short reads.
  Database& db() { return db_; }
  bool syncs_answers() const { return syncer_ != nullptr; }

  // A participant's callbacks run until remove() returns; remove() waits for a batch in
  // progress and runs nothing of it afterwards (flush() first to answer its queued items).
  void add(Participant* p);
  void remove(Participant* p);
  // Runs `p`'s tick soon, not when it said it was next due (its periodic work has changed).
  void tick_now(Participant* p);

  // wake_writer false: the caller is about to enqueue the item that belongs with this one (a
  // call's settle, then its audit record) and only that one wakes the writer, so that the two
  // share a batch; flush() and ticks take such an item all the same.
  void enqueue(std::shared_ptr<Item> item, bool wake_writer = true);

  // The write-ahead journal at `path` and `path` + ".2" (journal.hpp; docs/ARCHITECTURE.md "The
  // journal"). Locks the files; replays what its last owner journaled but never committed — each entry decoded by
  // the participant whose tag it carries, enqueued in journal order and committed before this
  // returns; then empties it and, with `append`, takes entries from enqueue_journaled(). Call
  // once, after the participants are added and before any enqueue_journaled(). Returns the
  // number of entries replayed; 0 and no journal when another process holds the file. Throws
  // when the file cannot be opened, or a replayed entry cannot be committed (the database is
  // unusable: the journal is kept for the next start).
  std::size_t open_journal(const std::filesystem::path& path, bool append);
  bool journaling() const;
  // enqueue() with the item's entry (Item::journal_entry) written to the journal first, so that
  // the item survives a crash of the process from now on, committed or not: its answer() is
  // not worth waiting for. With wake_writer false the entry waits in memory and goes out with
  // the next journaled enqueue's write (one write for a call's settle and its audit record);
  // should that write fail, the later item is refused and waits for its COMMIT, which covers
  // this one too. False, and nothing enqueued: no journal, no entry, too much journaled but not
  // yet committed (the writer is behind: the caller waits, which slows the callers down to what
  // the writer commits), or the write failed (the journal is then off until restart).
  bool enqueue_journaled(std::shared_ptr<Item> item, bool wake_writer = true);
  // Blocks (at most `limit`) until every item enqueued or journaled before the call has been
  // committed (or has failed), so that another connection reads what was answered from the
  // journal and what was appended without waiting (an auditor's own previous reads of the log).
  // False at the limit.
  bool catch_up(std::chrono::milliseconds limit);
  // Blocks until every item enqueued so far has been answered (its caller resumed, or queued
  // on its executor) and the writer is between batches (after_batch done). The server calls it
  // after its I/O threads have stopped and before their io_context is destroyed.
  void flush();
  // Tests: hold the writer so that items queue up (and commit together on resume()).
  void pause();
  void resume();
  Stats stats() const;

 private:
  void run();
  void process(std::vector<std::shared_ptr<Item>>& batch, std::size_t begin, std::size_t end);
  void answer(Item& item);
  void run_cached(Statement& st);  // steps a statement without rows, then resets it
  void answer_all(std::vector<std::shared_ptr<Item>>& batch);
  // Under mutex_; true: wake the writer. `journaled`: it may linger over it (Options::linger).
  bool push(std::shared_ptr<Item> item, bool wake_writer, bool journaled = false);
  void wake_now();  // under mutex_: the writer takes what is queued now (flush(), catch_up())
  void maybe_clear_journal();  // under mutex_
  // Under mutex_: frames `item`'s entry with the next sequence number and writes it (with what
  // is pending when `write`); false when that fails (the journal is then off).
  bool journal_locked(Item& item, bool write);
  // Writer thread: an item that failed alone, journaled again and queued behind the others.
  bool rejournal(const std::shared_ptr<Item>& item);

  Database db_;
  Options options_;
  // Prepared once: sqlite3_exec parses them again for every transaction.
  Statement begin_, commit_;
  std::unique_ptr<WalSyncer> syncer_;  // outlives the writer thread

  mutable std::mutex mutex_;
  std::condition_variable cv_;       // the writer waits for work
  std::condition_variable idle_cv_;  // flush() and remove() wait
  std::deque<std::shared_ptr<Item>> queue_;
  std::vector<Participant*> participants_;
  std::vector<Participant*> fresh_;  // added or tick_now(), not ticked since
  bool stop_ = false, paused_ = false, busy_ = false;
  bool unwoken_ = false;  // the queue holds only items enqueued without waking the writer
  bool lingering_ = false;  // the writer sleeps until a deadline at most Options::linger away
  bool lingered_ = false;   // the queue holds journaled items it was not woken for
  std::atomic<uint64_t> wakes_{0};  // enqueues that wake the writer (its spin watches this)
  int64_t outstanding_ = 0;  // enqueued, not yet answered
  // Entries put in the queue so far (items journaled again count again), and how many the
  // writer has taken from it and finished (committed, failed or journaled again): the queue is
  // FIFO, so the first `done_` entries are all finished (catch_up()).
  uint64_t pushed_ = 0, done_ = 0;
  std::atomic<uint64_t> items_{0}, transactions_{0}, retried_{0}, failed_{0};
  std::atomic<uint64_t> spins_{0}, spin_hits_{0};
  // The journal: the file, appends on, entries framed but not yet written, the last sequence
  // number given and the highest committed (under mutex_); the statement that records the
  // highest committed in the database, in each transaction with journaled items (writer thread).
  std::unique_ptr<Journal> journal_, spare_;  // appends go to journal_; spare_ is the other file
  uint64_t spare_last_ = 0;  // the last entry in spare_ (0: it is empty)
  std::atomic<bool> journal_on_{false};  // written under mutex_; journaling() reads it without
  std::string journal_pending_;
  uint64_t journal_seq_ = 0, journal_committed_ = 0;
  std::optional<Statement> journal_mark_;
  uint64_t committed_seq_ = 0;  // writer thread: the highest journaled item committed
  std::atomic<uint64_t> journaled_{0}, journal_refused_{0};
  std::thread thread_;
};

}  // namespace scigate::state
