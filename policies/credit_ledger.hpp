#pragma once
// The SQLite credit ledger (docs/CREDITS.md): two-phase charging with holds, in integer
// micro-credits, durable before the caller resumes.
//
// Group commit: one writer thread owns a connection (WAL) and executes the queued operations
// in arrival order, many per BEGIN IMMEDIATE … COMMIT. Each operation checks and updates the
// balances in turn inside that transaction, so concurrent calls can never overspend; each
// caller's coroutine resumes on its own executor once the transaction has committed — and for
// a settle (a charge) once a WalSyncer has fsynced the WAL after it, so a charge the caller was
// told of survives power loss. Holds need no fsync: restart recovery voids them all anyway. If
// the database refuses the batch, it is rolled back and its operations are retried one per
// transaction, so one bad operation fails alone.
//
// Free calls stay off the writer: a hold whose worst case prices to zero and carries no
// idempotency key returns at once, and its settle and release do nothing.
//
// Thread-safety: every method may be called from any thread. reserve/settle/release/usage are
// not cancellable: once submitted, an operation completes (the pipeline relies on this to
// release what it held).
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "policies/credit_store.hpp"
#include "policies/credits.hpp"
#include "policies/ledger.hpp"
#include "server/state/database.hpp"
#include "server/state/wal_checkpointer.hpp"
#include "server/state/wal_syncer.hpp"

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
  state::WalCheckpointer* checkpointer = nullptr;  // set: it checkpoints the WAL, not our commits
};

class SqliteLedger final : public Ledger {
 public:
  // Opens its own connection to `db_path` (the schema must be migrated already) and records the
  // configured accounts and rates.
  SqliteLedger(const std::filesystem::path& db_path, CreditLedgerOptions options);
  ~SqliteLedger() override;  // completes every queued operation first

  boost::asio::awaitable<ReserveResult> reserve(HoldRequest request) override;
  boost::asio::awaitable<MicroCredits> settle(Hold hold, Usage actual, nlohmann::json result) override;
  boost::asio::awaitable<void> release(Hold hold) override;
  boost::asio::awaitable<UsageReport> usage(std::string project, std::string user) override;

  // Restart recovery, for a server about to serve: every open hold whose process is gone (the
  // previous server, killed) is voided (reason "restart"), then a sweep runs. Holds of another
  // live server on the same database are left alone. Returns how many were voided. Not in the
  // constructor, so that CLI commands that build the App (scigate key ...) do no recovery.
  int recover_after_restart();
  // Runs a sweep now and waits for it (tests and operators; the writer also sweeps every
  // sweep_interval).
  credits::SweepCounts sweep_now();
  // Blocks until every operation enqueued so far is complete: its caller resumed, or queued on
  // its executor. The server calls it once its I/O threads have stopped and before their
  // io_context is destroyed, so that no completion is posted to a dead executor.
  void flush();
  const credits::RateTable& rates() const { return rates_; }

  struct Stats {
    uint64_t operations = 0, transactions = 0, retried_batches = 0, failed_operations = 0, reloads = 0;
    uint64_t busy_waits = 0;  // waits for the write lock (held by the audit writer or the CLI)
    uint64_t syncs = 0;       // WAL fsyncs, each covering every charge committed before it
  };
  Stats stats() const;

  // Tests: hold the writer so that operations queue up (and commit together on resume()).
  void pause();
  void resume();

 private:
  struct Op;
  boost::asio::awaitable<void> submit(std::shared_ptr<Op> op);
  void enqueue(std::shared_ptr<Op> op);
  void run();
  void process(std::vector<std::shared_ptr<Op>>& ops, std::size_t begin, std::size_t end);
  void apply(Op& op);
  void complete(Op& op);
  void note_unpriced(const Usage& usage) const;

  CreditLedgerOptions options_;
  credits::RateTable rates_;
  state::Database db_;
  credits::CreditStore store_;  // writer thread only (and the constructor, before it starts)
  bool needs_reload_ = false;
  std::unique_ptr<state::WalSyncer> syncer_;  // when durable; outlives the writer thread

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Op>> queue_;
  bool stop_ = false;
  bool paused_ = false;
  std::mutex idle_mutex_;  // guards outstanding_ (complete() also runs on the syncer's thread)
  std::condition_variable idle_cv_;
  int64_t outstanding_ = 0;  // enqueued, not yet completed
  std::atomic<uint64_t> operations_{0}, transactions_{0}, retried_{0}, failed_{0}, reloads_{0};
  std::thread writer_;
};

}  // namespace scigate
