#pragma once
// The SQLite credit ledger (docs/CREDITS.md): two-phase charging with holds, in integer
// micro-credits, durable before the caller resumes.
//
// Every operation is an item of a state::Writer (one thread, one connection, group commit):
// the server's, shared with the audit log so that a call's settle and its audit record share a
// transaction, or one of the ledger's own (tests, tools). Each operation checks and updates the
// balances in turn inside the writer's BEGIN IMMEDIATE transaction, so concurrent calls can
// never overspend; each caller's coroutine resumes on its own executor once the transaction has
// committed — and, with `durable` on a syncing writer, for a settle (a charge) once the WAL is
// fsynced after it, so a charge the caller was told of survives power loss. A hold is answered
// before the COMMIT (decided under the write lock; restart recovery voids holds anyway). If
// the database refuses a batch, its operations are retried one per transaction, so one bad
// operation fails alone.
//
// Free calls stay off the writer: a hold whose worst case prices to zero and carries no
// idempotency key returns at once, and its settle and release do nothing.
//
// Holds in memory (claim(), docs/CREDITS.md): a server that owns the database alone decides a
// plain hold in its caller's thread, against the mirror under a mutex shared with the writer,
// and writes nothing for it; the call's settle then writes its charge in the same transaction
// as its audit record — one transaction per call, and no hand-off before the tool runs. The
// owner holds an exclusive open-file-description lock on "<database>-ledger.lock"; another
// server's claim() takes it shared, which it gets once the owner, asked through the epoch, has
// written its in-memory holds out as rows and gone back to one row per hold. An owner alone
// again (the other server gone) takes the lock back. A ledger that never claims writes a row for
// every hold, so it must not spend beside a claimed one (the CLI never spends).
//
// Thread-safety: every method may be called from any thread. reserve/settle/release/usage are
// not cancellable: once submitted, an operation completes (the pipeline relies on this to
// release what it held).
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "policies/credit_store.hpp"
#include "policies/credits.hpp"
#include "policies/ledger.hpp"
#include "server/state/database.hpp"
#include "server/state/wal_checkpointer.hpp"
#include "server/state/writer.hpp"

namespace scigate {

struct CreditLedgerOptions {
  std::vector<credits::ProjectAccount> projects;
  std::vector<credits::Rate> rates;
  std::chrono::seconds hold_timeout{0};          // least life of a hold (the request's timeout if longer)
  std::chrono::seconds sweep_interval{30};       // expired holds voided, expired grants lapsed
  std::chrono::seconds idempotency_ttl{86400};   // a settled key replays its result this long
  credits::Clock clock;                          // unix ms; tests inject one
  std::size_t max_batch = 1024;                  // operations per transaction at most
  bool durable = true;                           // charges survive power loss (fsync before the answer)
  // With a writer of its own (the first constructor): set, it checkpoints the WAL, not our commits.
  state::WalCheckpointer* checkpointer = nullptr;
  // Holds in memory (claim()): how long an owner that shared the database waits before it
  // tries to own it alone again, and how often an owner looks for a server that wants to share.
  std::chrono::milliseconds reclaim_after{1000};
  std::chrono::milliseconds contender_poll{50};
};

class SqliteLedger final : public Ledger, private state::Writer::Participant {
 public:
  // With a writer of its own on `db_path` (the schema must be migrated already); it fsyncs when
  // `durable`. Records the configured accounts and rates.
  SqliteLedger(const std::filesystem::path& db_path, CreditLedgerOptions options);
  // On a shared writer (the server's, with the audit log): `durable` holds only if it syncs.
  SqliteLedger(state::Writer& writer, CreditLedgerOptions options);
  ~SqliteLedger() override;  // completes every queued operation first

  boost::asio::awaitable<ReserveResult> reserve(HoldRequest request) override;
  boost::asio::awaitable<MicroCredits> settle(Hold hold, Usage actual, nlohmann::json result) override;
  boost::asio::awaitable<void> release(Hold hold) override;
  boost::asio::awaitable<bool> extend(Hold hold, std::chrono::seconds timeout) override;
  boost::asio::awaitable<UsageReport> usage(std::string project, std::string user, bool whole_project) override;
  const state::Writer* writer() const override { return writer_; }
  std::optional<MicroCredits> settle_queued(Hold hold, Usage actual, nlohmann::json result,
                                           std::shared_ptr<MicroCredits> posted) override;
  void release_queued(Hold hold) override;

  // Restart recovery, for a server about to serve: every open hold whose process is gone (the
  // previous server, killed) is voided (reason "restart"), then a sweep runs. Holds of another
  // live server on the same database are left alone. Returns how many were voided. Not in the
  // constructor, so that CLI commands that build the App (scigate key ...) do no recovery.
  int recover_after_restart();
  // For a server about to serve: joins the owners of this database's ledger (holds in memory
  // while it is the only one; see the top of this file). `db_path` names the lock beside it.
  // Waits up to `wait` for an owner to share; throws if it does not (a stopped process).
  void claim(const std::filesystem::path& db_path, std::chrono::milliseconds wait = std::chrono::seconds(30));
  // Whether holds are decided in memory now (tests, stats).
  bool owns_alone() const;
  // Runs a sweep now and waits for it (tests and operators; the writer also sweeps every
  // sweep_interval).
  credits::SweepCounts sweep_now();
  // Blocks until every operation enqueued so far is complete: its caller resumed, or queued on
  // its executor. The server calls it once its I/O threads have stopped and before their
  // io_context is destroyed, so that no completion is posted to a dead executor.
  void flush() { writer_->flush(); }
  const credits::RateTable& rates() const { return rates_; }

  struct Stats {
    uint64_t operations = 0, transactions = 0, retried_batches = 0, failed_operations = 0, reloads = 0;
    uint64_t busy_waits = 0;  // waits for the write lock (held by another connection: the CLI)
    uint64_t syncs = 0;       // WAL fsyncs, each covering every charge committed before it
    uint64_t memory_holds = 0;  // holds decided in memory (no writer round trip, no row)
    uint64_t yields = 0;        // times this owner wrote its holds out for another server
  };
  // Operations and reloads are this ledger's; the rest its writer's (shared: the audit's too).
  Stats stats() const;

  // Tests: hold the writer so that operations queue up (and commit together on resume()).
  void pause() { writer_->pause(); }
  void resume() { writer_->resume(); }

 private:
  struct Op;
  SqliteLedger(std::unique_ptr<state::Writer> own, state::Writer* writer, CreditLedgerOptions options);
  boost::asio::awaitable<void> submit(std::shared_ptr<Op> op);
  void run_blocking(std::shared_ptr<Op> op);
  std::shared_ptr<Op> settle_op(const Hold& hold, const Usage& actual, nlohmann::json result);
  std::optional<MicroCredits> decide_settle(Op& op);
  void apply(Op& op);
  void note_unpriced(const Usage& usage) const;
  std::optional<ReserveResult> hold_in_memory(const HoldRequest& req, const credits::HoldSpec& spec);
  bool try_lock(short type);
  void claim_failed(const std::string& what);

  // state::Writer::Participant, on the writer thread.
  void begin() override;
  void before_commit() override;
  void committed() override;
  void rolled_back() noexcept override;
  state::Writer::TimePoint tick(state::Writer::TimePoint now) override;
  char journal_tag() const override { return 'L'; }
  std::shared_ptr<state::Writer::Item> decode(std::string_view payload) override;

  CreditLedgerOptions options_;
  credits::RateTable rates_;
  std::unique_ptr<state::Writer> own_writer_;  // the first constructor's
  state::Writer* writer_;
  // The mirror: the writer thread's, and callers' for in-memory holds, under mirror_.
  mutable std::mutex mirror_;
  credits::CreditStore store_;
  bool needs_reload_ = true;    // load the mirror at the next transaction
  bool loaded_ = false;         // loaded once (later loads are reloads)
  // Holds in memory, under mirror_.
  // What this ledger holds of the lock file (claim()). kClaiming: exclusive, its kClaim op not
  // yet committed. kExclusive with alone_ false: yielding (holds being written out).
  enum class Lock { kNone, kShared, kClaiming, kExclusive };
  Lock lock_ = Lock::kNone;
  bool alone_ = false;          // holds in memory now: exclusive lock, mirror current
  bool stale_ = false;          // a rollback left the mirror ahead of the database until reload
  bool claim_applied_ = false;  // a kClaim ran in the open transaction
  int64_t next_hold_id_ = 0, hold_id_end_ = 0;  // in-memory ids: next_hold_id_ down to > hold_id_end_
  int lock_fd_ = -1;
  state::Writer::TimePoint shared_since_{};    // when the lock went shared
  state::Writer::TimePoint next_sweep_;        // writer thread
  std::atomic<uint64_t> operations_{0}, reloads_{0}, memory_holds_{0}, yields_{0};
};

// For a process that changes the ledger without spending from it (`scigate credits grant`):
// holds the ledger's lock shared while it lives, after asking a server that owns the database
// alone (holds in memory, decided against its mirror) to write its holds out and share — the
// request a second server makes in claim(). While any process holds the lock shared, servers
// decide every hold in a transaction, which reloads what another connection committed: a
// change made under a LedgerVisit applies to every hold decided after its COMMIT. Without it,
// an owner would notice the change only at its next look at the epoch (contender_poll, ~50 ms)
// and could decide holds in that window against a limit the change had just tightened.
// (One window remains: no lock file yet — no server ever claimed this database — and a server
// starting for the first time at that very moment, whose claim loads the ledger before this
// process commits; it sees the change at its next look at the epoch, as before.)
class LedgerVisit {
 public:
  // `signal` moves credit_meta.epoch in a transaction of its own (an owner that sees it move
  // yields); it is repeated every 250 ms until the owner shares or `wait` passes.
  LedgerVisit(const std::filesystem::path& db_path, const std::function<void()>& signal,
              std::chrono::milliseconds wait);
  ~LedgerVisit();  // the lock goes: an owner takes the database back alone after reclaim_after
  LedgerVisit(const LedgerVisit&) = delete;
  LedgerVisit& operator=(const LedgerVisit&) = delete;
  // False when an owner did not share within `wait` (a stopped process), the lock file cannot
  // be opened (permissions) or `signal` threw: a server may then decide holds against the old
  // state until it next looks at the epoch. problem() says which. Never throws for these.
  bool shared() const { return shared_; }
  const std::string& problem() const { return problem_; }

 private:
  int fd_ = -1;
  bool shared_ = false;
  std::string problem_;
};

}  // namespace scigate
