#pragma once
// The tamper-evident audit log: every record is a row in SQLite whose hash covers the record,
// its sequence number and the previous row's hash, so editing, deleting, inserting or
// reordering any row breaks the chain from that row on, and `scigate audit verify` finds it
// without trusting the server. Signed checkpoints (audit_checkpoint.hpp), written outside the
// database, add what a chain alone cannot show: that newer records were cut off, or that the
// whole chain was recomputed. docs/AUDIT.md describes the format for outside auditors.
//
// Thread-safety: append() may be called from any thread and never waits for the disk. Records
// are items of a state::Writer (one thread, one connection, batches in arrival order): the
// server's, shared with the credit ledger, or one of the log's own. The writer thread also
// writes the checkpoints.
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
#include "server/state/database.hpp"
#include "server/state/wal_checkpointer.hpp"
#include "server/state/writer.hpp"

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
  // database before it, the ledger's included ([server] durability, docs/OPERATIONS.md). On a
  // shared writer it takes effect only if the writer syncs.
  bool sync_before_answer = false;
  // With a writer of its own: set, it checkpoints the WAL, not our commits.
  state::WalCheckpointer* checkpointer = nullptr;
};

class SqliteAuditLog final : public AuditLog, private state::Writer::Participant {
 public:
  // With a writer of its own on `db_path` (the schema must be migrated already). Throws when the
  // database, the signing key or the checkpoint file cannot be opened.
  SqliteAuditLog(const std::filesystem::path& db_path, AuditLogOptions options);
  explicit SqliteAuditLog(const std::filesystem::path& db_path, bool also_log = true);
  // On a shared writer (the server's, with the credit ledger).
  SqliteAuditLog(state::Writer& writer, AuditLogOptions options);
  ~SqliteAuditLog() override;  // answers what is queued, then writes a last checkpoint

  void append(AuditRecord record) override;
  boost::asio::awaitable<void> append_durable(AuditRecord record) override;
  const state::Writer* writer() const override { return writer_; }
  // Blocks until every record appended so far is committed (and everything else queued on the
  // writer before it).
  void flush() { writer_->flush(); }
  uint64_t syncs() const { return writer_->stats().syncs; }  // fsyncs taken for answers
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
  struct Item;
  SqliteAuditLog(std::unique_ptr<state::Writer> own, state::Writer* writer, AuditLogOptions options);
  void write(Item& item);  // in the writer's transaction
  void maybe_checkpoint(bool force);
  void check_checkpoint_against_log();
  const audit::SigningKey* signing_key();  // loads or creates it
  int64_t checkpointed_seq() const;
  void sync_files();

  // state::Writer::Participant, on the writer thread.
  void begin() override;
  void committed() override;
  void rolled_back() noexcept override;
  void after_batch() override;
  state::Writer::TimePoint tick(state::Writer::TimePoint now) override;
  char journal_tag() const override { return 'A'; }
  std::shared_ptr<state::Writer::Item> decode(std::string_view payload) override;
  bool append_journaled(const std::shared_ptr<Item>& item);

  AuditLogOptions options_;
  std::unique_ptr<state::Writer> own_writer_;  // the first constructors'
  state::Writer* writer_;
  std::filesystem::path db_path_;
  // Writer thread only: prepared statements, the chain's head as committed and inside the
  // current transaction, the records of the transaction and of the batch (for the log mirror).
  std::optional<state::Statement> insert_;
  std::optional<state::Statement> last_;
  int64_t last_seq_ = 0;
  std::string last_hash_;
  int64_t head_seq_ = 0;
  std::string head_hash_;
  std::vector<const Item*> in_transaction_, in_batch_;
  // Checkpoints: the key is loaded (or created) at start; the file is opened for writing only
  // when this process first writes a checkpoint, so that commands which never append (scigate
  // key ...) leave a running server's file alone.
  std::mutex key_mutex_;
  std::unique_ptr<audit::SigningKey> key_;  // under key_mutex_
  std::unique_ptr<audit::Checkpoint> last_checkpoint_;  // as read at start
  std::unique_ptr<audit::CheckpointWriter> checkpoints_;
  std::chrono::steady_clock::time_point last_checkpoint_time_ = std::chrono::steady_clock::now();
};

// The hash of a record given the previous one (hex SHA-256 of its canonical form with
// `details_json` as the details text); exposed for tests and auditors.
std::string audit_record_hash(const std::string& prev_hash, int64_t seq, const AuditRecord& r,
                              const std::string& details_json);

}  // namespace scigate
