#include "server/state/wal_syncer.hpp"
#include "server/common/thread_name.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace scigate::state {

WalSyncer::WalSyncer(std::filesystem::path db_path) : wal_path_(db_path.string() + "-wal") {
  thread_ = std::thread([this] {
    name_this_thread("sg-walsync");
    run();
  });
}

WalSyncer::~WalSyncer() {
  {
    std::lock_guard g(mutex_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
  if (fd_ >= 0) ::close(fd_);
}

void WalSyncer::after_commit(std::function<void(bool)> done) {
  bool wake;
  {
    std::lock_guard g(mutex_);
    wake = pending_.empty();
    pending_.push_back(std::move(done));
  }
  if (wake) cv_.notify_one();
}

uint64_t WalSyncer::syncs() const {
  std::lock_guard g(mutex_);
  return syncs_;
}

bool WalSyncer::sync() {
  struct stat by_path {};
  if (::stat(wal_path_.c_str(), &by_path) != 0) {
    // No WAL file: the last connection checkpointed and removed it, syncing the database.
    bool gone = errno == ENOENT;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    return gone;
  }
  if (fd_ < 0 || inode_ != static_cast<unsigned long>(by_path.st_ino)) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = ::open(wal_path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return errno == ENOENT;  // removed since the stat: checkpointed, as above
    struct stat by_fd {};
    if (::fstat(fd_, &by_fd) != 0) return false;
    inode_ = static_cast<unsigned long>(by_fd.st_ino);
  }
  return ::fdatasync(fd_) == 0;
}

void WalSyncer::run() {
  std::unique_lock l(mutex_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !pending_.empty(); });
    if (pending_.empty() && stop_) return;
    std::vector<std::function<void(bool)>> batch;
    batch.swap(pending_);
    l.unlock();
    bool ok = sync();
    l.lock();
    ++syncs_;  // counted before the callbacks run: one may look (tests, stats)
    l.unlock();
    for (auto& done : batch) done(ok);
    l.lock();
  }
}

}  // namespace scigate::state
