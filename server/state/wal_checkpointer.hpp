#pragma once
// WAL checkpoints off the commit path.
//
// By default SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages: that
// commit copies the WAL into the database file and, with synchronous=NORMAL, fsyncs both —
// milliseconds on a busy disk, taken by whichever writer happened to commit, while the callers
// it serves wait. In the server that was the audit or the ledger writer, every few hundred
// calls: the p99 of a governed call was a checkpoint.
//
// A connection given to watch() no longer checkpoints on commit; its commits report the WAL's
// size to this object (sqlite3_wal_hook, the mechanism SQLite's own autocheckpoint uses), and
// once the WAL has grown by `threshold_frames` since the last checkpoint (or since it started
// over) this object's thread runs a PASSIVE checkpoint on a
// connection of its own. PASSIVE copies what no reader still needs without taking the write
// lock, so writers keep committing meanwhile; the WAL restarts from its beginning at the next
// commit after a complete checkpoint. Writers that never pause leave no such moment, so past
// 16 thresholds a RESTART checkpoint (which holds the write lock while it copies the little
// PASSIVE left) bounds the WAL. Connections not watched (CLI commands, the job and transfer
// ledgers) keep SQLite's autocheckpoint: correct, only slower for them.
//
// The thread can fall behind: on a loaded machine it may not be scheduled for tens of
// milliseconds while a writer commits hundreds of transactions. So that the WAL's bound does
// not depend on the scheduler, a watched commit that finds the WAL `backstop_frames` long
// (24 thresholds by default) runs the PASSIVE checkpoint itself, as SQLite's autocheckpoint
// would have: a slow commit now and then on a starved machine, instead of a WAL that grows
// without limit. backstop_checkpoints() counts them; on a healthy machine it stays 0.
//
// Thread-safety: watch() from any thread; the object must outlive the connections it watches.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <thread>

namespace scigate::state {

class WalCheckpointer {
 public:
  // backstop_frames 0: 24 × threshold_frames.
  explicit WalCheckpointer(std::filesystem::path db_path, int threshold_frames = 1000, int backstop_frames = 0);
  ~WalCheckpointer();  // the thread stops; the last connection to close checkpoints anyway
  WalCheckpointer(const WalCheckpointer&) = delete;
  WalCheckpointer& operator=(const WalCheckpointer&) = delete;

  // Moves `db`'s checkpoints to this object.
  void watch(sqlite3* db);

  uint64_t checkpoints() const { return checkpoints_.load(); }  // checkpoints run
  uint64_t restarts() const { return restarts_.load(); }        // of which RESTART
  uint64_t backstop_checkpoints() const { return backstop_runs_.load(); }  // run by a commit instead

 private:
  static int on_commit(void* self, sqlite3* db, const char* schema, int frames);
  void run();
  bool checkpoint();  // false: busy, try again soon

  std::filesystem::path db_path_;
  int threshold_;
  int backstop_frames_;
  sqlite3* db_ = nullptr;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<int> frames_{0};        // the WAL's size at the latest watched commit
  std::atomic<int> mark_{0};          // its size at the last checkpoint (0: it started over since)
  std::atomic<bool> signalled_{false};  // a checkpoint was asked for and has not run yet
  std::atomic<uint64_t> checkpoints_{0}, restarts_{0}, backstop_runs_{0};
  std::thread thread_;
};

}  // namespace scigate::state
