#include "connectors/storage/file_copy.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <cstring>
#include <future>
#include <vector>

namespace scigate::storage {

namespace {
Error cancelled() { return Error{ErrorCode::kCancelled, "the transfer was cancelled", {}, {}}; }
}  // namespace

// Hashes pieces in order on the hash pool (on a strand of it: one piece at a time, in order)
// while the caller reads and writes the next ones. Up to kSlots pieces may wait, so a hashing
// thread that is descheduled for a moment does not stop the copy. The caller fills slot i's
// buffer only after slot_ready(i).
class PipelinedHash {
 public:
  static constexpr int kSlots = 4;
  PipelinedHash(crypto::Sha256& h, boost::asio::thread_pool& pool) : h_(h), strand_(boost::asio::make_strand(pool)) {}
  ~PipelinedHash() { wait(); }
  void slot_ready(int i) {
    if (done_[i].valid()) done_[i].get();
  }
  void submit(int i, const char* p, std::size_t n) {
    slot_ready(i);
    auto done = std::make_shared<std::promise<void>>();
    done_[i] = done->get_future();
    boost::asio::post(strand_, [this, p, n, done] {
      h_.update(p, n);
      done->set_value();
    });
  }
  void wait() {
    for (auto& f : done_)
      if (f.valid()) f.get();
  }

 private:
  crypto::Sha256& h_;
  boost::asio::strand<boost::asio::thread_pool::executor_type> strand_;
  std::future<void> done_[kSlots];
};

namespace {

void check_growth(const CopyHooks& hooks, int64_t total) {
  if (hooks.grew && total > hooks.reserved)
    if (auto e = hooks.grew(total)) throw ErrorException(*e);
}

}  // namespace

int64_t rehash_existing(Writer& writer, int64_t n, crypto::Sha256& hash) {
  std::vector<char> buf(1 << 20);
  int64_t off = 0;
  while (off < n) {
    std::size_t want = static_cast<std::size_t>(std::min<int64_t>(static_cast<int64_t>(buf.size()), n - off));
    std::size_t got = writer.read_back(buf.data(), want, off);
    if (got == 0) break;
    hash.update(buf.data(), got);
    off += static_cast<int64_t>(got);
  }
  return off;
}

int64_t copy_file_data(Reader& reader, Writer& writer, int64_t offset, crypto::Sha256& hash,
                       boost::asio::thread_pool& hash_pool, const CopyHooks& hooks) {
  const int64_t expected = reader.info().size;
  if (expected - offset <= static_cast<int64_t>(kCopyPiece)) {
    // One piece: hashing inline costs less than handing it over.
    // One byte more than expected: a short read is the end, no second read needed to see it.
    std::string buf(static_cast<std::size_t>(std::max<int64_t>(expected - offset, 0)) + 1, '\0');
    int64_t off = offset;
    for (;;) {
      if (hooks.cancel && hooks.cancel->load()) throw ErrorException(cancelled());
      std::size_t n = reader.read_at(buf.data(), buf.size(), off);
      if (n == 0) break;
      check_growth(hooks, off + static_cast<int64_t>(n));
      hash.update(buf.data(), n);
      writer.write_at(buf.data(), n, off);
      off += static_cast<int64_t>(n);
      if (hooks.progress) hooks.progress(static_cast<int64_t>(n));
      if (n < buf.size() && off >= expected) break;
    }
    return off;
  }
  std::vector<char> bufs[PipelinedHash::kSlots];
  PipelinedHash hasher(hash, hash_pool);
  int64_t off = offset;
  for (int k = 0;; k = (k + 1) % PipelinedHash::kSlots) {
    if (hooks.cancel && hooks.cancel->load()) throw ErrorException(cancelled());
    hasher.slot_ready(k);  // its last piece is hashed
    if (bufs[k].empty()) bufs[k].resize(kCopyPiece);
    std::size_t n = reader.read_at(bufs[k].data(), kCopyPiece, off);
    if (n == 0) break;
    check_growth(hooks, off + static_cast<int64_t>(n));
    hasher.submit(k, bufs[k].data(), n);
    writer.write_at(bufs[k].data(), n, off);
    off += static_cast<int64_t>(n);
    if (hooks.progress) hooks.progress(static_cast<int64_t>(n));
  }
  hasher.wait();
  return off;
}

// --- BlockWriter -------------------------------------------------------------------------------

BlockWriter::BlockWriter(Writer& writer, crypto::Sha256& hash, boost::asio::thread_pool& hash_pool, int64_t offset,
                         CopyHooks hooks)
    : writer_(writer), hash_(hash), hasher_(std::make_unique<PipelinedHash>(hash, hash_pool)), hooks_(std::move(hooks)),
      written_(offset), position_(offset) {
  blocks_[0].reserve(kBlock);
}

BlockWriter::~BlockWriter() { hasher_->wait(); }

void BlockWriter::write_block() {
  std::string& b = blocks_[k_];
  if (b.empty()) return;
  if (hooks_.cancel && hooks_.cancel->load()) throw ErrorException(cancelled());
  check_growth(hooks_, written_ + static_cast<int64_t>(b.size()));
  hasher_->submit(k_, b.data(), b.size());
  writer_.write_at(b.data(), b.size(), written_);
  written_ += static_cast<int64_t>(b.size());
  if (hooks_.progress) hooks_.progress(static_cast<int64_t>(b.size()));
  // The next slot gathers once its last block is hashed.
  k_ = (k_ + 1) % kSlots;
  hasher_->slot_ready(k_);
  blocks_[k_].clear();
  if (blocks_[k_].capacity() < kBlock) blocks_[k_].reserve(kBlock);
}

void BlockWriter::append(std::string_view data) {
  while (!data.empty()) {
    std::string& b = blocks_[k_];
    std::size_t take = std::min(data.size(), kBlock - b.size());
    b.append(data.data(), take);
    data.remove_prefix(take);
    position_ += static_cast<int64_t>(take);
    if (b.size() == kBlock) write_block();
  }
}

void BlockWriter::restart() {
  hasher_->wait();
  hash_.reset();
  writer_.truncate(0);
  for (auto& b : blocks_) b.clear();
  written_ = position_ = 0;
}

int64_t BlockWriter::finish() {
  write_block();
  hasher_->wait();
  return written_;
}

// --- ChunkSource -------------------------------------------------------------------------------

ChunkSource::ChunkSource(Reader& reader, crypto::Sha256& hash, std::size_t max_buffered, int64_t length)
    : reader_(reader), hash_(hash), max_buffered_(max_buffered), length_(length) {}

int64_t ChunkSource::run(const CopyHooks& hooks) {
  int64_t off = 0;
  const std::size_t piece = 1u << 20;
  try {
    for (;;) {
      if (hooks.cancel && hooks.cancel->load()) throw ErrorException(cancelled());
      std::size_t want = piece;
      if (length_ >= 0) {
        // At the planned length: one byte more must not be there (a file still growing).
        want = static_cast<std::size_t>(std::min<int64_t>(piece, length_ - off));
        if (want == 0) {
          char extra;
          if (reader_.read_at(&extra, 1, off) != 0)
            throw ErrorException(Error{ErrorCode::kConflict,
                                       "the file grew past the " + std::to_string(length_) +
                                           " bytes it had when the transfer was planned (still being written?)",
                                       "stage it again once it is complete", {}});
        }
      }
      std::string buf(want, '\0');
      std::size_t n = want == 0 ? 0 : reader_.read_at(buf.data(), want, off);
      buf.resize(n);
      if (n == 0 && length_ >= 0 && off < length_)
        throw ErrorException(Error{ErrorCode::kConflict,
                                   "the file shrank to " + std::to_string(off) + " of the " + std::to_string(length_) +
                                       " bytes it had when the transfer was planned",
                                   "stage it again", {}});
      if (n > 0) hash_.update(buf.data(), n);
      std::unique_lock lk(m_);
      if (n == 0) {
        done_ = true;
        cv_.notify_all();
        break;
      }
      cv_.wait(lk, [&] { return buffered_ < max_buffered_ || failed_; });
      if (failed_) throw ErrorException(*failed_);
      buffered_ += n;
      queue_.push_back(std::move(buf));
      cv_.notify_all();
      lk.unlock();
      off += static_cast<int64_t>(n);
      if (hooks.progress) hooks.progress(static_cast<int64_t>(n));
    }
  } catch (const ErrorException& e) {
    abort(e.error());
    throw;
  }
  return off;
}

long ChunkSource::take(char* buf, std::size_t n) {
  std::unique_lock lk(m_);
  cv_.wait(lk, [&] { return !queue_.empty() || done_ || failed_; });
  if (failed_) return -1;
  if (queue_.empty()) return 0;
  std::string& front = queue_.front();
  std::size_t k = std::min(n, front.size() - front_offset_);
  std::memcpy(buf, front.data() + front_offset_, k);
  front_offset_ += k;
  buffered_ -= k;
  if (front_offset_ == front.size()) {
    queue_.pop_front();
    front_offset_ = 0;
  }
  cv_.notify_all();
  return static_cast<long>(k);
}

void ChunkSource::abort(Error why) {
  std::lock_guard g(m_);
  if (!failed_) failed_ = std::move(why);
  cv_.notify_all();
}

std::optional<Error> ChunkSource::failure() const {
  std::lock_guard g(m_);
  return failed_;
}

}  // namespace scigate::storage
