#pragma once
// The tamper-evident audit log: every record is a row in SQLite whose hash covers the record,
// its sequence number and the previous row's hash, so editing, deleting, inserting or
// reordering any row breaks the chain from that row on, and `scigate audit verify` finds it
// without trusting the server. Signed checkpoints (audit_checkpoint.hpp), written outside the
// database, add what a chain alone cannot show: that newer records were cut off, or that the
// whole chain was recomputed. docs/AUDIT.md describes the format for outside auditors.
//
// Thread-safety: append() may be called from any thread and never waits for the disk; one writer
// thread, with its own SQLite connection, commits records in batches in arrival order and writes
// the checkpoints.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "policies/audit.hpp"
#include "server/common/commit_waiters.hpp"
#include "server/state/database.hpp"
#include "server/state/wal_checkpointer.hpp"
#include "server/state/wal_syncer.hpp"

namespace scigate {

namespace audit {
class CheckpointWriter;
class SigningKey;
struct Checkpoint;
}

// prev_hash of the first record.
inline constexpr std::string_view kAuditGenesisHash =
    "0000000000000000000000000000000000000000000000000000000000000000";

// One stored record as the hash sees it. `details` is the canonical JSON text of the details
// object, exactly as stored. Views: valid as long as what they point into.
struct AuditRowView {
  int64_t seq = 0;
  int64_t time_ms = 0;
  std::string_view request_id, principal, project, tool, outcome, error_code, rules;
  int64_t cost = 0;
  int64_t duration_us = 0;
  std::string_view details;
  std::string_view prev_hash;
  std::string_view hash;  // the stored hash (not part of what is hashed)
};

// Appends the canonical JSON (RFC 8785) of the record: an object with the members cost, details,
// duration_us, error_code, [hash,] outcome, prev_hash, principal, project, request_id, rules, seq,
// time_ms, tool. Without `hash` these are the bytes the record's hash is taken over; with it, the
// line `scigate audit export` writes.
void append_audit_message(std::string& out, const AuditRowView& r, bool with_hash);
// hex(SHA-256(message without hash)).
std::string audit_row_hash(const AuditRowView& r);
// The export line (canonical JSON with hash; no newline).
std::string audit_export_line(const AuditRowView& r);

struct AuditLogOptions {
  bool also_log = true;  // mirror each record to the structured log as an `audit` event
  // Checkpoints: off when checkpoint_file is empty. The key is created when missing.
  std::filesystem::path signing_key;
  std::filesystem::path checkpoint_file;
  int64_t checkpoint_every_records = 1000;  // 0: not by count
  std::chrono::seconds checkpoint_every{60};  // 0: not by time
  // append_durable() returns once the record's commit is fsynced (it survives power loss), not
  // merely committed (it survives a crash of the process). One fsync covers every commit on the
  // database before it, the ledger's included ([server] durability, docs/OPERATIONS.md).
  bool sync_before_answer = false;
  state::WalCheckpointer* checkpointer = nullptr;  // set: it checkpoints the WAL, not our commits
};

class SqliteAuditLog final : public AuditLog {
 public:
  // Opens its own connection to `db_path` (the schema must be migrated already). Throws when the
  // database, the signing key or the checkpoint file cannot be opened.
  SqliteAuditLog(const std::filesystem::path& db_path, AuditLogOptions options);
  explicit SqliteAuditLog(const std::filesystem::path& db_path, bool also_log = true);
  ~SqliteAuditLog() override;  // drains the queue, then writes a last checkpoint

  void append(AuditRecord record) override;
  boost::asio::awaitable<void> append_durable(AuditRecord record) override;
  // Blocks until every record appended so far is committed.
  void flush();
  uint64_t syncs() const { return syncer_ ? syncer_->syncs() : 0; }  // fsyncs taken for answers
  // Loads the signing key, creating it when missing, and compares the newest checkpoint with
  // the log (logging audit_log_truncated/rewritten). The server calls this at start so that a
  // key it cannot create stops it there; without the call the key is loaded at the first
  // checkpoint, and a process that appends nothing (scigate key ...) never creates one.
  // Throws std::runtime_error when the key cannot be read or created.
  void prepare_checkpoints();
  // The key id checkpoints are signed with (empty before the key is loaded, or without
  // checkpoints).
  std::string checkpoint_key_id();

 private:
  uint64_t enqueue(AuditRecord record);
  void run();
  std::vector<int64_t> write_batch(std::deque<AuditRecord>& batch);  // the records' seqs
  void maybe_checkpoint(bool force);
  void check_checkpoint_against_log();
  const audit::SigningKey* signing_key();  // loads or creates it
  int64_t checkpointed_seq() const;
  void sync_files();

  state::Database db_;
  std::filesystem::path db_path_;
  AuditLogOptions options_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::condition_variable drained_;
  std::deque<AuditRecord> queue_;
  uint64_t appended_ = 0, committed_ = 0;
  uint64_t notified_ = 0;  // waiters released up to here (after the fsync when syncing)
  bool stop_ = false;
  CommitWaiters waiters_;
  std::optional<state::Statement> insert_;  // prepared once, used by the writer thread only
  std::optional<state::Statement> last_;
  // Writer thread only: the newest committed record, and checkpoint bookkeeping.
  int64_t last_seq_ = 0;
  std::string last_hash_;
  // Checkpoints: the key is loaded (or created) at start; the file is opened for writing only
  // when this process first writes a checkpoint, so that commands which never append (scigate
  // key ...) leave a running server's file alone.
  std::mutex key_mutex_;
  std::unique_ptr<audit::SigningKey> key_;  // under key_mutex_
  std::unique_ptr<audit::Checkpoint> last_checkpoint_;  // as read at start
  std::unique_ptr<audit::CheckpointWriter> checkpoints_;
  std::chrono::steady_clock::time_point last_checkpoint_time_ = std::chrono::steady_clock::now();
  std::unique_ptr<state::WalSyncer> syncer_;  // with sync_before_answer; outlives writer_
  std::thread writer_;
};

// The hash of a record given the previous one (hex SHA-256 of its canonical form with
// `details_json` as the details text); exposed for tests and auditors.
std::string audit_record_hash(const std::string& prev_hash, int64_t seq, const AuditRecord& r,
                              const std::string& details_json);

}  // namespace scigate
