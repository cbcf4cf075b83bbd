#pragma once
// Moving the bytes of one file with its SHA-256 computed on the way (docs/DATA.md "Integrity").
//
// The copy runs on a transfer worker thread (blocking reads and writes). Large files are hashed
// on the hash pool while the worker reads and writes the next piece, so a copy costs about
// max(read + write, hash) per piece, not their sum; files of one piece are hashed on the worker
// itself (posting would cost more than hashing). ChunkSink is the same for data that arrives
// from elsewhere (an HTTP body on libcurl's thread): the producer pushes pieces, a worker
// writes and hashes them in order. ChunkSource is the reverse (an upload): a worker reads and
// hashes, the consumer (libcurl's thread) takes pieces.
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
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

// Pieces pushed by a producer thread, written and hashed in order by one consumer thread.
class ChunkSink {
 public:
  // `offset`: where the pieces start in the file (a resumed download; `hash` holds what is before).
  ChunkSink(Writer& writer, crypto::Sha256& hash, boost::asio::thread_pool& hash_pool, std::size_t max_buffered,
            int64_t offset = 0);
  // Producer side. Blocks while more than max_buffered bytes wait; false once the sink failed or
  // was closed (the producer should stop).
  bool push(std::string piece);
  // Producer side: drops what was written (and what waits in the queue) and starts over at 0 (a
  // server that ignored a Range). Waits until the consumer has truncated the file.
  bool restart_from_zero();
  // Ends the input; the consumer finishes what is queued.
  void close();
  // Stops at once: the consumer discards what is queued and returns; push() returns false.
  void abort(Error why);
  // Consumer side: runs until close() (returns the file's length) or a failure (throws).
  int64_t run(const CopyHooks& hooks);
  int64_t written() const { return written_.load(); }
  std::optional<Error> failure() const;

 private:
  Writer& writer_;
  crypto::Sha256& hash_;
  boost::asio::thread_pool& hash_pool_;
  std::size_t max_buffered_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::size_t buffered_ = 0;
  bool closed_ = false;
  bool restart_ = false;
  bool busy_ = false;  // the consumer holds a piece
  std::optional<Error> failed_;
  std::atomic<int64_t> written_{0};
};

// Pieces of a file read and hashed by one worker thread and taken in order by a consumer
// (libcurl's read callback for an upload).
class ChunkSource {
 public:
  ChunkSource(Reader& reader, crypto::Sha256& hash, std::size_t max_buffered);
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
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::size_t front_offset_ = 0;  // consumed bytes of queue_.front()
  std::size_t buffered_ = 0;
  bool done_ = false;
  std::optional<Error> failed_;
};

}  // namespace scigate::storage
