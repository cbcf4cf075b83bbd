#pragma once
// The tamper-evident audit log: every record is a row in SQLite whose hash covers the record and
// the previous row's hash, so editing, deleting or reordering any row breaks the chain from that
// row on, and `scigate audit verify` finds it without trusting the server.
//
// Thread-safety: append() may be called from any thread and never waits for the disk; one writer
// thread, with its own SQLite connection, commits records in batches in arrival order.
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "policies/audit.hpp"
#include "server/common/commit_waiters.hpp"
#include "server/state/database.hpp"

namespace scigate {

class SqliteAuditLog final : public AuditLog {
 public:
  // Opens its own connection to `db_path` (the schema must be migrated already). `also_log`
  // mirrors each record to the structured log as well.
  explicit SqliteAuditLog(const std::filesystem::path& db_path, bool also_log = true);
  ~SqliteAuditLog() override;  // drains the queue

  void append(AuditRecord record) override;
  boost::asio::awaitable<void> append_durable(AuditRecord record) override;
  // Blocks until every record appended so far is committed.
  void flush();

 private:
  uint64_t enqueue(AuditRecord record);
  void run();
  void write_batch(std::deque<AuditRecord>& batch);

  state::Database db_;
  bool also_log_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::condition_variable drained_;
  std::deque<AuditRecord> queue_;
  uint64_t appended_ = 0, committed_ = 0;
  bool stop_ = false;
  std::string last_hash_;
  CommitWaiters waiters_;
  std::optional<state::Statement> insert_;  // prepared once, used by the writer thread only
  std::thread writer_;
};

struct AuditVerification {
  bool ok = true;
  int64_t records = 0;
  std::optional<int64_t> first_bad_seq;
  std::string detail;
};

// Recomputes the whole chain from the stored rows.
AuditVerification verify_audit_chain(state::Database& db);

// The hash of one record given the previous one (hex SHA-256); exposed for tests and auditors.
std::string audit_record_hash(const std::string& prev_hash, int64_t seq, const AuditRecord& r,
                              const std::string& details_json);

}  // namespace scigate
