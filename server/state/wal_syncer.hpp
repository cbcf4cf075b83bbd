#pragma once
// Group commit for SQLite writers in WAL mode, with the fsync taken out of the write lock.
//
// A writer commits with synchronous=NORMAL (SQLite writes the WAL frames but does not fsync
// them), then calls after_commit(). The syncer thread fdatasyncs the WAL file and then runs
// every callback queued before that fsync began: at that point everything any connection had
// committed is on disk. While one fsync runs, callbacks for later commits queue up and share
// the next one, and no writer holds the database's write lock during an fsync, so writers on
// the same file (the credit ledger, the audit log) stop waiting for each other's disk.
//
// Why this is sound: WAL frames are appended in commit order and recovery replays a prefix of
// complete commits, so a synced WAL holds every commit before the sync. A commit that a
// checkpoint has already moved into the database file was synced by that checkpoint (with
// synchronous=NORMAL SQLite syncs the WAL before a checkpoint and the database after it). The
// WAL file is reopened if it was replaced (compared by inode).
//
// Thread-safety: after_commit() may be called from any thread; callbacks run on the syncer
// thread, in the order they were queued, and must be quick (post a completion, say).
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace scigate::state {

class WalSyncer {
 public:
  // `db_path`: the database file; its WAL is db_path + "-wal".
  explicit WalSyncer(std::filesystem::path db_path);
  ~WalSyncer();  // runs the callbacks still queued, after a last sync
  WalSyncer(const WalSyncer&) = delete;
  WalSyncer& operator=(const WalSyncer&) = delete;

  // `done(ok)` runs once what was committed before this call is durable; ok is false when the
  // fsync failed (the data may not survive power loss).
  void after_commit(std::function<void(bool ok)> done);

  uint64_t syncs() const;

 private:
  void run();
  bool sync();

  std::filesystem::path wal_path_;
  int fd_ = -1;
  unsigned long inode_ = 0;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::function<void(bool)>> pending_;
  bool stop_ = false;
  uint64_t syncs_ = 0;
  std::thread thread_;
};

}  // namespace scigate::state
