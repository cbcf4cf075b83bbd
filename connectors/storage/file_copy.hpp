#pragma once
// Moving the bytes of one file with its SHA-256 computed on the way (docs/DATA.md "Integrity").
//
// The copy runs on a transfer worker thread (blocking reads and writes). Large files are hashed
// on the hash pool (in order, up to four pieces behind) while the worker reads and writes the
// next pieces, so a copy costs about max(read + write, hash) per piece, not their sum; files of one piece are hashed on the worker
// itself (posting would cost more than hashing). BlockWriter is the same for data that arrives
// from elsewhere (an HTTP body on libcurl's thread). ChunkSource is the reverse (an upload): a
// worker reads and hashes, the consumer (libcurl's thread) takes pieces.
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "connectors/storage/storage.hpp"
#include "server/common/crypto.hpp"

namespace scigate::storage {

// What the copy reports and asks while it runs (all called on the copying thread).
struct CopyHooks {
  const std::atomic<bool>* cancel = nullptr;  // checked between pieces: kCancelled
  std::function<void(int64_t bytes)> progress;  // bytes just written
  // The file grew past what was reserved for it: return an Error to stop (a quota).
  std::function<std::optional<Error>(int64_t total_written)> grew;
  int64_t reserved = 0;  // bytes reserved for this file; grew() is asked beyond it
};

constexpr std::size_t kCopyPiece = 4u << 20;

// Feeds the first `n` bytes the writer already holds into `hash` (a resumed copy); returns how
// many it could read back (less when the temporary file is shorter).
int64_t rehash_existing(Writer& writer, int64_t n, crypto::Sha256& hash);

// Copies the reader from `offset` to its end into the writer at the same offsets, hashing every
// byte into `hash` (which must already hold bytes [0, offset)). Returns the file's length. Throws
// ErrorException (read or write failures, cancellation, hooks' errors).
int64_t copy_file_data(Reader& reader, Writer& writer, int64_t offset, crypto::Sha256& hash,
                       boost::asio::thread_pool& hash_pool, const CopyHooks& hooks);

class PipelinedHash;

// Data that arrives in pieces on one thread at a time (an HTTP body, on libcurl's thread),
// gathered into blocks of kBlock bytes: each full block is written by that thread and hashed on
// the hash pool while the next ones gather, so the receiving thread never hashes, and at most
// kSlots blocks are held. The calls of one transfer come from one thread at a time (libcurl's
// while a request runs, a worker's after).
class BlockWriter {
 public:
  static constexpr std::size_t kBlock = 1u << 20;
  static constexpr int kSlots = 4;  // PipelinedHash::kSlots
  // `offset`: where the data starts in the file (a resumed download; `hash` holds what is before).
  BlockWriter(Writer& writer, crypto::Sha256& hash, boost::asio::thread_pool& hash_pool, int64_t offset, CopyHooks hooks);
  ~BlockWriter();  // waits for a hash in flight
  // Takes `data`; throws ErrorException (a write, a quota, a cancellation).
  void append(std::string_view data);
  // Drops what was taken and starts over at 0 (a server that ignored a Range).
  void restart();
  // Writes what is gathered and waits for the hash; returns the file's length.
  int64_t finish();
  // Bytes taken: the file's length once finished.
  int64_t position() const { return position_; }

 private:
  void write_block();
  Writer& writer_;
  crypto::Sha256& hash_;
  std::unique_ptr<PipelinedHash> hasher_;
  CopyHooks hooks_;
  std::string blocks_[kSlots];
  int k_ = 0;
  int64_t written_ = 0, position_ = 0;
};

// Pieces of a file read and hashed by one worker thread and taken in order by a consumer
// (libcurl's read callback for an upload).
class ChunkSource {
 public:
  // `length`: exactly this many bytes are read and sent (the size the transfer was planned and
  // announced with); a file that turns out shorter or longer fails the read. -1: to the end.
  ChunkSource(Reader& reader, crypto::Sha256& hash, std::size_t max_buffered, int64_t length = -1);
  // Worker side: reads to the end (returns the length) or throws; stops early on abort().
  int64_t run(const CopyHooks& hooks);
  // Consumer side: copies up to n bytes into buf; 0 at the end; blocks while nothing is ready.
  // -1 when the source failed or was aborted.
  long take(char* buf, std::size_t n);
  void abort(Error why);
  std::optional<Error> failure() const;

 private:
  Reader& reader_;
  crypto::Sha256& hash_;
  std::size_t max_buffered_;
  int64_t length_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::size_t front_offset_ = 0;  // consumed bytes of queue_.front()
  std::size_t buffered_ = 0;
  bool done_ = false;
  std::optional<Error> failed_;
};

}  // namespace scigate::storage
