#include "server/state/writer.hpp"
#include "server/common/thread_name.hpp"

#include <sched.h>
#include <sqlite3.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <unordered_set>

#include "server/common/crypto.hpp"
#include "server/observability/log.hpp"

namespace scigate::state {
namespace {
inline void cpu_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
}  // namespace

int SpinPolicy::allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 2;
  return CPU_COUNT(&set);
}

Writer::Writer(const std::filesystem::path& db_path, Options options)
    : db_(db_path),
      options_(options),
      begin_(db_.handle(), "BEGIN IMMEDIATE"),
      commit_(db_.handle(), "COMMIT") {
  if (options_.checkpointer) options_.checkpointer->watch(db_.handle());
  if (options_.sync) syncer_ = std::make_unique<WalSyncer>(db_path);
  thread_ = std::thread([this] {
    name_this_thread("sg-writer");
    run();
  });
}

Writer::~Writer() {
  {
    std::lock_guard g(mutex_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
  syncer_.reset();  // a last sync, then the answers still waiting for one
  // Everything is committed: a clean stop leaves an empty journal.
  if (journal_ && journal_committed_ == journal_seq_) {
    try {
      journal_->clear();
      spare_->clear();
    } catch (const std::exception& e) {
      log::warn("state_journal_write_failed", {{"detail", e.what()}});
    }
  }
}

void Writer::add(Participant* p) {
  {
    std::lock_guard g(mutex_);
    participants_.push_back(p);
    fresh_.push_back(p);
  }
  cv_.notify_one();
}

void Writer::remove(Participant* p) {
  std::unique_lock l(mutex_);
  participants_.erase(std::remove(participants_.begin(), participants_.end(), p), participants_.end());
  fresh_.erase(std::remove(fresh_.begin(), fresh_.end(), p), fresh_.end());
  if (std::this_thread::get_id() == thread_.get_id()) return;
  idle_cv_.wait(l, [&] { return !busy_; });
}

void Writer::tick_now(Participant* p) {
  {
    std::lock_guard g(mutex_);
    if (std::find(participants_.begin(), participants_.end(), p) == participants_.end()) return;
    if (std::find(fresh_.begin(), fresh_.end(), p) == fresh_.end()) fresh_.push_back(p);
  }
  cv_.notify_one();
}

bool Writer::push(std::shared_ptr<Item> item, bool wake_writer, bool journaled) {
  ++outstanding_;
  ++pushed_;
  // The writer only sleeps on an empty queue (or one of unwoken or lingered items), so only
  // the first item of a batch wakes it: under load it drains big batches instead of being
  // woken once per call.
  bool taken = !queue_.empty() && !unwoken_;  // what is queued will be taken (woken or lingered)
  bool wake = (!taken || lingered_) && wake_writer;  // (lingered: woken once there are enough)
  unwoken_ = !taken && !wake_writer;
  if (wake && journaled && lingering_ && queue_.size() + 1 < options_.linger_items) {
    wake = false;  // it comes for it by itself (Options::linger)
    lingered_ = true;
  } else if (wake) {
    lingered_ = false;
  }
  queue_.push_back(std::move(item));
  if (wake) wakes_.fetch_add(1, std::memory_order_release);
  return wake;
}

void Writer::wake_now() {
  if (!unwoken_ && !lingered_) return;
  unwoken_ = false;
  lingered_ = false;
  cv_.notify_one();
}

void Writer::enqueue(std::shared_ptr<Item> item, bool wake_writer) {
  bool wake;
  {
    std::lock_guard g(mutex_);
    wake = push(std::move(item), wake_writer);
  }
  if (wake) cv_.notify_one();
}

namespace {
// Journaled items the writer may be behind by before enqueue_journaled() refuses (the callers
// then wait for their commits, which lets it catch up), and the file size past which a journal
// whose entries are all committed is emptied (and at which, not yet emptied, it refuses).
constexpr int64_t kJournalBacklog = 8192;
constexpr uint64_t kJournalClearBytes = 1u << 20;
constexpr uint64_t kJournalMaxBytes = 256u << 20;
constexpr int kJournalRetries = 3;  // a journaled item that fails alone is retried this often
}  // namespace

// Without the queue's lock: every call asks (settle_queued, the audit record), in fsync mode
// too; enqueue_journaled() decides under the lock.
bool Writer::journaling() const { return journal_on_.load(std::memory_order_relaxed); }

bool Writer::journal_locked(Item& item, bool write) {
  thread_local std::string payload;
  payload.clear();
  if (!item.journal_entry(payload)) return false;
  // The active file is full and the other one empty: turn to it. The full one is emptied once
  // everything in it is committed (maybe_clear_journal).
  if (spare_ && spare_last_ == 0 && journal_->size() >= kJournalClearBytes) {
    std::swap(journal_, spare_);
    spare_last_ = journal_seq_;
  }
  uint64_t seq = journal_seq_ + 1;
  Journal::frame(journal_pending_, seq, item.owner_->journal_tag(), payload);
  if (write) {
    int err = journal_->write(journal_pending_);
    journal_pending_.clear();
    if (err) {
      journal_on_ = false;
      log::error("state_journal_write_failed",
                 {{"path", journal_->path().string()},
                  {"detail", std::strerror(err)},
                  {"effect", "answers wait for their commit until the server restarts"}});
      return false;
    }
  }
  journal_seq_ = seq;
  item.journal_seq_ = seq;
  return true;
}

bool Writer::enqueue_journaled(std::shared_ptr<Item> item, bool wake_writer) {
  bool wake;
  {
    std::lock_guard g(mutex_);
    if (!journal_on_ || outstanding_ >= kJournalBacklog || journal_->size() >= kJournalMaxBytes ||
        !journal_locked(*item, wake_writer)) {
      journal_refused_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    wake = push(std::move(item), wake_writer, /*journaled=*/true);
  }
  journaled_.fetch_add(1, std::memory_order_relaxed);
  if (wake) cv_.notify_one();
  return true;
}

bool Writer::rejournal(const std::shared_ptr<Item>& item) {
  std::lock_guard g(mutex_);
  if (!journal_ || !journal_locked(*item, true)) return false;
  ++item->journal_retries_;
  item->requeued_ = true;
  queue_.push_back(item);  // (still outstanding: not counted again there)
  ++pushed_;                // (but an entry of the queue again)
  return true;
}

std::size_t Writer::open_journal(const std::filesystem::path& path, bool append) {
  auto journal = std::make_unique<Journal>(path);
  auto other = path;
  other += ".2";
  auto spare = std::make_unique<Journal>(other);
  if (!journal->locked() || !spare->locked()) {
    int err = journal->locked() ? spare->lock_error() : journal->lock_error();
    bool busy = err == EAGAIN || err == EACCES;
    log::warn("state_journal_busy",
              {{"path", path.string()},
               {"detail", busy ? std::string("another process holds it; this one answers after each commit")
                               : "cannot lock it (" + std::string(std::strerror(err)) +
                                     "): no journal, answers wait for each commit"}});
    return 0;
  }
  uint64_t applied = 0;
  {
    auto lock = db_.lock();
    Statement st(db_.handle(), "SELECT applied FROM state_journal WHERE id = 1");
    if (st.step()) applied = static_cast<uint64_t>(st.column_int(0));
    st.reset();
    journal_mark_.emplace(db_.handle(), "UPDATE state_journal SET applied = ?1 WHERE id = 1 AND applied < ?1");
  }
  Journal::Contents contents;
  for (const Journal* file : {journal.get(), spare.get()}) {
    Journal::Contents c = file->read();
    if (c.dropped_bytes > 0)
      log::warn("state_journal_torn_tail", {{"path", file->path().string()},
                                            {"bytes", c.dropped_bytes},
                                            {"detail", "an entry cut off by a crash while it was written (never answered)"}});
    for (auto& e : c.entries) contents.entries.push_back(std::move(e));
  }
  std::sort(contents.entries.begin(), contents.entries.end(),
            [](const Journal::Entry& a, const Journal::Entry& b) { return a.seq < b.seq; });
  std::vector<Participant*> participants;
  {
    std::lock_guard g(mutex_);
    participants = participants_;
  }
  uint64_t top = applied;
  std::vector<std::shared_ptr<Item>> items;
  // An item whose transaction failed is journaled again under a later number (rejournal), and
  // its earlier entries stay in the file: one item, several entries with the same bytes. Each
  // is replayed once (a settle posted twice would charge twice). Distinct items never have the
  // same entry: a settle names its hold, an audit record its request and time.
  std::unordered_set<std::string> seen;
  std::size_t duplicates = 0;
  for (auto& e : contents.entries) {
    top = std::max(top, e.seq);
    if (e.seq <= applied) continue;  // committed before the crash
    if (!seen.insert(std::string(1, e.tag) + crypto::sha256_hex(e.payload)).second) {
      ++duplicates;
      continue;
    }
    auto owner = std::find_if(participants.begin(), participants.end(),
                              [&](Participant* p) { return p->journal_tag() == e.tag; });
    try {
      if (owner == participants.end()) throw std::runtime_error(std::string("no component reads entries tagged '") + e.tag + "'");
      auto item = (*owner)->decode(e.payload);
      if (!item) continue;
      item->journal_seq_ = e.seq;
      items.push_back(std::move(item));
    } catch (const std::exception& ex) {
      log::error("state_journal_entry_skipped", {{"path", path.string()}, {"seq", e.seq}, {"detail", ex.what()}});
    }
  }
  {
    // Installed before the replay, appends still off: an entry that fails is journaled again.
    std::lock_guard g(mutex_);
    journal_ = std::move(journal);
    spare_ = std::move(spare);
    spare_last_ = 0;
    journal_seq_ = top;
    journal_committed_ = applied;
  }
  std::size_t replayed = items.size();
  uint64_t failed_before = failed_.load();
  for (auto& item : items) enqueue(std::move(item));
  flush();
  if (failed_.load() != failed_before)
    throw std::runtime_error("replaying " + path.string() + ": " + std::to_string(failed_.load() - failed_before) +
                             " entries could not be committed (see the log); the journal is kept for the next start");
  if (replayed > 0 || duplicates > 0)
    log::warn("state_journal_replayed", {{"path", path.string()},
                                         {"entries", replayed},
                                         {"retried_copies_skipped", duplicates},
                                         {"detail", "answered before the server stopped, committed now"}});
  std::lock_guard g(mutex_);
  journal_->clear();
  spare_->clear();
  journal_committed_ = journal_seq_;
  journal_on_ = append;
  return replayed;
}

bool Writer::catch_up(std::chrono::milliseconds limit) {
  std::unique_lock l(mutex_);
  // Both: an item journaled again after failing alone is queued behind later ones (done_
  // passes it), and journal_committed_ says nothing of unjournaled items.
  const uint64_t journaled = journal_seq_, pushed = pushed_;
  auto caught_up = [&] { return journal_committed_ >= journaled && done_ >= pushed; };
  if (caught_up()) return true;
  wake_now();  // (a settle whose audit record has not come yet, or items it lingers over)
  return idle_cv_.wait_for(l, limit, caught_up);
}

void Writer::maybe_clear_journal() {
  // The full file's entries are all committed (or journaled again, after a failure, in the
  // active one): they are no longer needed.
  if (!spare_ || spare_last_ == 0 || journal_committed_ < spare_last_) return;
  try {
    spare_->clear();
    spare_last_ = 0;
  } catch (const std::exception& e) {
    journal_on_ = false;
    log::error("state_journal_write_failed", {{"detail", e.what()},
                                              {"effect", "answers wait for their commit until the server restarts"}});
  }
}

void Writer::flush() {
  std::unique_lock l(mutex_);
  wake_now();
  // And the batch done: its participants' after_batch (log mirror, checkpoint) has run too.
  idle_cv_.wait(l, [&] { return outstanding_ == 0 && !busy_; });
}

void Writer::pause() {
  std::lock_guard g(mutex_);
  paused_ = true;
}

void Writer::resume() {
  {
    std::lock_guard g(mutex_);
    paused_ = false;
  }
  cv_.notify_one();
}

Writer::Stats Writer::stats() const {
  Stats s{items_.load(),        transactions_.load(), retried_.load(),
          failed_.load(),       db_.busy_waits(),     syncer_ ? syncer_->syncs() : 0,
          spins_.load(),        spin_hits_.load()};
  s.journaled = journaled_.load();
  s.journal_refused = journal_refused_.load();
  std::lock_guard g(mutex_);
  s.journal_bytes = journal_ ? journal_->size() + spare_->size() : 0;
  return s;
}

void Writer::run() {
  using steady = std::chrono::steady_clock;
  // When each participant's tick is next due (writer thread only; entries of removed
  // participants are skipped).
  std::vector<std::pair<Participant*, TimePoint>> ticks;
  std::vector<std::shared_ptr<Item>> batch;
  SpinPolicy spin(options_.spin);
  std::optional<TimePoint> idle_since;  // when the queue was last found empty (for SpinPolicy)
  std::optional<TimePoint> last_journaled;  // when it last took a journaled item
  std::unique_lock l(mutex_);
  for (;;) {
    // Periodic work first, outside any transaction and without the queue's lock.
    for (Participant* p : fresh_) {  // added, or asked to tick now
      auto it = std::find_if(ticks.begin(), ticks.end(), [&](const auto& t) { return t.first == p; });
      if (it == ticks.end()) ticks.emplace_back(p, TimePoint::min());
      else it->second = TimePoint::min();
    }
    fresh_.clear();
    ticks.erase(std::remove_if(ticks.begin(), ticks.end(),
                               [&](const auto& t) {
                                 return std::find(participants_.begin(), participants_.end(), t.first) ==
                                        participants_.end();
                               }),
                ticks.end());
    auto now = steady::now();
    if (std::any_of(ticks.begin(), ticks.end(), [&](const auto& t) { return t.second <= now; })) {
      busy_ = true;
      l.unlock();
      for (auto& t : ticks)
        if (t.second <= now) t.second = t.first->tick(now);
      l.lock();
      busy_ = false;
      idle_cv_.notify_all();
      continue;  // a participant removed meanwhile is dropped above before anything else runs
    }
    TimePoint wake = TimePoint::max();
    for (const auto& t : ticks) wake = std::min(wake, t.second);
    auto ready = [&] { return stop_ || !fresh_.empty() || (!paused_ && !queue_.empty() && !unwoken_); };
    // Journaled work of late: it is found at a deadline, not woken for (Options::linger).
    bool linger = options_.linger.count() > 0 && journal_on_.load(std::memory_order_relaxed) &&
                  last_journaled && now - *last_journaled < std::chrono::seconds(1);
    if (!ready() && !linger) {
      if (!idle_since) idle_since = now;
      // Poll a little before sleeping: the next call's items usually come sooner than a
      // sleeping thread wakes (SpinPolicy says when that is a loss).
      if (auto budget = spin.budget(now); budget.count() > 0) {
        uint64_t seen = wakes_.load(std::memory_order_acquire);
        l.unlock();
        auto until = std::min(wake, steady::now() + budget);
        while (wakes_.load(std::memory_order_acquire) == seen && steady::now() < until) cpu_pause();
        bool hit = wakes_.load(std::memory_order_acquire) != seen;
        spin.polled(hit);
        spins_.fetch_add(1, std::memory_order_relaxed);
        if (hit) spin_hits_.fetch_add(1, std::memory_order_relaxed);
        l.lock();
      } else {
        spin.slept();
      }
    }
    if (linger) {
      wake = std::min(wake, now + options_.linger);
      lingering_ = true;
    }
    if (wake == TimePoint::max()) cv_.wait(l, ready);
    else cv_.wait_until(l, wake, ready);
    lingering_ = false;
    if (stop_ && queue_.empty()) return;
    if ((paused_ && !stop_) || queue_.empty()) continue;
    unwoken_ = false;
    lingered_ = false;
    if (idle_since) {
      spin.idle_ended(std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - *idle_since));
      idle_since.reset();
    }
    bool journaled = false;
    while (!queue_.empty() && batch.size() < options_.max_batch) {
      journaled = journaled || queue_.front()->journal_seq_ > 0;
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    if (journaled) last_journaled = steady::now();
    busy_ = true;
    l.unlock();
    process(batch, 0, batch.size());
    items_ += batch.size();
    answer_all(batch);
    std::vector<Participant*> owners;
    for (const auto& item : batch)
      if (std::find(owners.begin(), owners.end(), item->owner_) == owners.end()) owners.push_back(item->owner_);
    for (Participant* p : owners) p->after_batch();
    const std::size_t taken = batch.size();
    batch.clear();
    l.lock();
    done_ += taken;
    if (committed_seq_ > journal_committed_) journal_committed_ = committed_seq_;
    maybe_clear_journal();
    busy_ = false;
    idle_cv_.notify_all();
  }
}

void Writer::run_cached(Statement& st) {
  struct Reset {
    Statement& st;
    ~Reset() { st.reset(); }
  } reset{st};
  st.step();
}

void Writer::process(std::vector<std::shared_ptr<Item>>& batch, std::size_t begin, std::size_t end) {
  std::vector<Item*> early;  // answered before this attempt's COMMIT
  try {
    auto lock = db_.lock();
    run_cached(begin_);
    std::vector<Participant*> begun;
    try {
      for (std::size_t i = begin; i < end; ++i) {
        Item& item = *batch[i];
        if (item.answered_) continue;  // answered early in a batch whose COMMIT then failed
        if (std::find(begun.begin(), begun.end(), item.owner_) == begun.end()) {
          begun.push_back(item.owner_);
          item.owner_->begin();
        }
        item.apply();
      }
      for (Participant* p : begun) p->before_commit();
      uint64_t top = 0;  // the journal's highest entry in this transaction, recorded with it
      for (std::size_t i = begin; i < end; ++i)
        if (!batch[i]->answered_) top = std::max(top, batch[i]->journal_seq_);
      if (top > 0 && journal_mark_) {
        journal_mark_->bind(1, static_cast<int64_t>(top));
        run_cached(*journal_mark_);
      }
      for (std::size_t i = begin; i < end; ++i) {
        Item& item = *batch[i];
        if (!item.answered_ && item.answer_before_commit()) {
          early.push_back(&item);
          answer(item);
        }
      }
      run_cached(commit_);
    } catch (...) {
      sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);  // (a failed COMMIT may have ended it)
      for (Participant* p : begun) p->rolled_back();
      throw;
    }
    for (Participant* p : begun) p->committed();
    for (std::size_t i = begin; i < end; ++i) committed_seq_ = std::max(committed_seq_, batch[i]->journal_seq_);
    ++transactions_;
  } catch (const std::exception& e) {
    std::string what = e.what();
    for (Item* item : early) item->lost(what);
    if (end - begin == 1) {
      Item& item = *batch[begin];
      if (!item.answered_) {
        // A journaled item was relied on already: journaled again and retried behind the
        // others (whose commits may now pass its old number), a few times before it fails.
        if (item.journal_seq_ > 0 && item.journal_retries_ < kJournalRetries && rejournal(batch[begin])) {
          log::warn("state_journal_retry", {{"seq", item.journal_seq_}, {"detail", what}});
          return;
        }
        item.failed(what);
        ++failed_;
      }
      return;
    }
    // Do not lose the others: one transaction each, so only the bad one fails.
    ++retried_;
    log::warn("db_batch_retried", {{"items", end - begin}, {"detail", what}});
    for (std::size_t i = begin; i < end; ++i)
      if (!batch[i]->answered_) process(batch, i, i + 1);
  }
}

void Writer::answer(Item& item) {
  item.answered_ = true;
  item.answer();
  std::lock_guard g(mutex_);
  if (--outstanding_ == 0) idle_cv_.notify_all();
}

void Writer::answer_all(std::vector<std::shared_ptr<Item>>& batch) {
  std::vector<std::shared_ptr<Item>> after_sync;
  for (auto& item : batch) {
    if (item->requeued_) {  // answered when its retry has run
      item->requeued_ = false;
      continue;
    }
    if (item->answered_) continue;
    if (syncer_ && item->needs_sync()) after_sync.push_back(item);
    else answer(*item);
  }
  if (after_sync.empty()) return;
  syncer_->after_commit([this, items = std::move(after_sync)](bool ok) {
    if (!ok) log::error("db_fsync_failed", {{"items", items.size()}});
    for (const auto& item : items) answer(*item);
  });
}

}  // namespace scigate::state
