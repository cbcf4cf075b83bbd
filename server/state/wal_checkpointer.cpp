#include "server/state/wal_checkpointer.hpp"
#include "server/common/thread_name.hpp"

#include <thread>

#include "server/observability/log.hpp"

namespace scigate::state {

WalCheckpointer::WalCheckpointer(std::filesystem::path db_path, int threshold_frames, int backstop_frames)
    : db_path_(std::move(db_path)),
      threshold_(threshold_frames),
      backstop_frames_(backstop_frames > 0 ? backstop_frames : 24 * threshold_frames) {
  if (sqlite3_open_v2(db_path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    log::warn("wal_checkpointer_unavailable", {{"path", db_path_.string()}, {"detail", msg}});
    return;  // watch() then leaves connections to checkpoint on their own
  }
  sqlite3_busy_timeout(db_, 0);  // a busy database is tried again at the next request
  thread_ = std::thread([this] {
    name_this_thread("sg-checkpoint");
    run();
  });
}

WalCheckpointer::~WalCheckpointer() {
  if (thread_.joinable()) {
    {
      std::lock_guard g(mutex_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  if (db_) sqlite3_close(db_);
}

void WalCheckpointer::watch(sqlite3* db) {
  if (!db_) return;
  sqlite3_wal_hook(db, &WalCheckpointer::on_commit, this);  // replaces the autocheckpoint hook
}

int WalCheckpointer::on_commit(void* p, sqlite3* db, const char* schema, int frames) {
  // Runs inside the writer's COMMIT: an atomic store and, once per threshold, a wake-up.
  auto* self = static_cast<WalCheckpointer*>(p);
  self->frames_.store(frames, std::memory_order_relaxed);
  if (frames >= self->backstop_frames_) {
    // The thread has fallen far behind (starved, or busy with a checkpoint): this commit
    // checkpoints, as SQLite's own hook does (the write lock is already released here). BUSY
    // (the thread is checkpointing right now) is fine: the next commit asks again.
    int wal = 0, copied = 0;
    if (sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, &wal, &copied) == SQLITE_OK) {
      if (self->backstop_runs_.fetch_add(1, std::memory_order_relaxed) == 0)
        log::warn("wal_checkpoint_backstop", {{"path", self->db_path_.string()},
                                              {"frames", frames},
                                              {"detail", "the checkpoint thread fell behind; a commit checkpointed"}});
      self->mark_.store(wal, std::memory_order_relaxed);
    }
    return SQLITE_OK;
  }
  // Counted from the WAL's size at the last checkpoint (0 once the WAL has started over): a
  // WAL that busy writers never let restart stays long, and every commit would ask again.
  int mark = self->mark_.load(std::memory_order_relaxed);
  if (frames < mark) self->mark_.store(mark = 0, std::memory_order_relaxed);
  if (frames - mark >= self->threshold_ && !self->signalled_.exchange(true)) {
    { std::lock_guard g(self->mutex_); }
    self->cv_.notify_one();
  }
  return SQLITE_OK;
}

void WalCheckpointer::run() {
  std::unique_lock l(mutex_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || signalled_.load(); });
    if (stop_) return;
    l.unlock();
    bool done = checkpoint();
    signalled_.store(false);
    // Commits during the checkpoint may already have added a threshold's worth; a RESTART
    // that found the writers busy is tried again after a breath.
    if (!done || frames_.load(std::memory_order_relaxed) - mark_.load(std::memory_order_relaxed) >= threshold_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(done ? 0 : 2));
      signalled_.store(true);
    }
    l.lock();
  }
}

bool WalCheckpointer::checkpoint() {
  int frames = 0, copied = 0;
  int rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied);
  if (rc == SQLITE_OK && frames < 0) {
    // This connection has not opened the WAL (it had not read since the WAL appeared), and a
    // checkpoint through it does nothing: a read opens it.
    sqlite3_exec(db_, "SELECT count(*) FROM sqlite_master", nullptr, nullptr, nullptr);
    rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied);
  }
  if (rc == SQLITE_OK && frames > 16 * threshold_) {
    sqlite3_busy_timeout(db_, 50);
    rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_RESTART, &frames, &copied);
    sqlite3_busy_timeout(db_, 0);
    if (rc == SQLITE_OK) ++restarts_;
  }
  if (rc == SQLITE_OK) {
    ++checkpoints_;
    mark_.store(frames, std::memory_order_relaxed);  // (after a RESTART: the next commit starts over)
    return true;
  }
  if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) return false;
  log::warn("wal_checkpoint_failed", {{"detail", sqlite3_errmsg(db_)}});
  return true;  // not retried at once: the next threshold asks again
}

}  // namespace scigate::state
