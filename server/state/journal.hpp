#pragma once
// An append-only file of entries that a state::Writer has queued but perhaps not yet
// committed: the writer's write-ahead journal (docs/ARCHITECTURE.md "The journal").
//
// Each entry is one write(2) to a file opened O_APPEND: a 32-byte header (magic, payload
// length, the entry's sequence number, a checksum, the owner's tag) and the payload. A write
// that completes is in the page cache, so it survives SIGKILL or any crash of the process (not
// a power loss: nothing here fsyncs). A process killed inside a write can leave a torn last
// entry; read() stops at the first entry whose header or checksum does not hold and says how
// many bytes it dropped.
//
// The file is locked (an OFD write lock) by the one process that appends to it and replays
// it: a second server on the same database finds it locked and goes without a journal.
//
// Thread-safety: none; the writer calls it under its own mutex.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace scigate::state {

class Journal {
 public:
  struct Entry {
    uint64_t seq = 0;
    char tag = 0;
    std::string payload;
  };
  struct Contents {
    std::vector<Entry> entries;
    uint64_t dropped_bytes = 0;  // a torn or corrupt tail, not read
  };

  // Opens (creating) and locks `path`. locked() is false when another process holds it.
  // Throws std::runtime_error when the file cannot be opened.
  explicit Journal(std::filesystem::path path);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  bool locked() const { return locked_; }
  // Why not: EAGAIN/EACCES — another process holds it; another errno — no locks here.
  int lock_error() const { return lock_error_; }
  const std::filesystem::path& path() const { return path_; }
  // Every whole entry from the start of the file.
  Contents read() const;

  // Appends one framed entry to `buffer` (written later by write(), possibly with others).
  static void frame(std::string& buffer, uint64_t seq, char tag, std::string_view payload);
  // Writes `buffer` in one write(2). On failure (or a short write) the file is cut back to where
  // it was, so that no torn entry sits before later ones, and the error is returned (0: written).
  int write(std::string_view buffer);
  // Empties the file (every entry in it is committed to the database).
  void clear();
  uint64_t size() const { return size_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  bool locked_ = false;
  int lock_error_ = 0;
  uint64_t size_ = 0;
};

}  // namespace scigate::state
