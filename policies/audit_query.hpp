#pragma once
// Reading the audit log: for auditors (GET /audit/events, the query_audit_log tool) and for the
// command line (export, tail). Reads use their own read-only SQLite connection, so they never
// hold up the audit writer (WAL: readers and the writer do not block each other).
#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "policies/audit_store.hpp"
#include "server/auth/principal.hpp"

struct sqlite3;

namespace scigate::audit {

struct EventFilter {
  // Only records of these projects; nullopt: every record (the command line, with file access).
  std::optional<std::vector<std::string>> projects;
  std::string principal, tool, outcome;  // exact matches; empty: any
  std::optional<int64_t> since_ms;       // time_ms >= since
  std::optional<int64_t> until_ms;       // time_ms < until
  std::optional<int64_t> from_seq, to_seq;  // inclusive
  std::optional<int64_t> cursor;            // continue after this seq (in the order asked for)
  bool descending = false;
  int64_t limit = 0;  // 0: no limit
};

// A record as stored, owning its text.
struct StoredRecord {
  int64_t seq = 0, time_ms = 0, cost = 0, duration_us = 0;
  std::string request_id, principal, project, tool, outcome, error_code, rules, details, prev_hash, hash;
  AuditRowView view() const;
};

struct AuditPage {
  std::vector<StoredRecord> events;
  std::optional<int64_t> next_cursor;  // set when more records may match
};

// One read-only connection. Thread-safety: one thread at a time.
class AuditReader {
 public:
  explicit AuditReader(const std::filesystem::path& db_path);
  ~AuditReader();
  AuditReader(const AuditReader&) = delete;
  AuditReader& operator=(const AuditReader&) = delete;

  // Calls `fn` for every matching record, in seq order (descending when asked), until it returns
  // false or `limit` records were passed. The view is valid during the call only.
  void scan(const EventFilter& filter, const std::function<bool(const AuditRowView&)>& fn);
  AuditPage page(const EventFilter& filter);
  int64_t last_seq();
  // The first record at or after a time, and the last one before a time (for seq ranges).
  std::optional<int64_t> first_seq_since(int64_t time_ms);
  std::optional<int64_t> last_seq_before(int64_t time_ms);
  // Between these, every read sees the same snapshot of the log (one read transaction).
  void begin_snapshot();
  void end_snapshot();

 private:
  sqlite3* db_ = nullptr;
};

// Runs queries on a thread of its own with its own AuditReader, so that an HTTP handler or a
// tool awaits them without blocking an I/O thread. Thread-safety: query() from any thread;
// queries run one at a time in arrival order.
class AuditQueryService {
 public:
  explicit AuditQueryService(std::filesystem::path db_path);
  ~AuditQueryService();
  // Resumes on the caller's executor. Throws state::DbError when the database is unreadable.
  boost::asio::awaitable<AuditPage> query(EventFilter filter);
  // Runs on the query's thread before each read: the server waits there (up to 2 s) for its
  // writer to commit what it answered from the journal or queued without waiting (the record
  // of a previous read), so that an auditor reads every call answered and every record appended
  // before the query (state::Writer::catch_up). Set before the first query.
  void before_read(std::function<void()> f) { before_read_ = std::move(f); }

 private:
  AuditPage run(const EventFilter& filter);

  std::function<void()> before_read_;
  std::filesystem::path db_path_;
  std::unique_ptr<AuditReader> reader_;  // opened on the pool's thread, used only there
  boost::asio::thread_pool pool_{1};
};

inline constexpr int64_t kDefaultPageSize = 100;
inline constexpr int64_t kMaxPageSize = 1000;

// The projects whose records `p` may read: those where it holds the auditor role (admins hold
// every role), in the principal's order.
std::vector<std::string> auditable_projects(const Principal& p);
// Limits `filter` to what `p` may read: `project` when named (the auditor role there is
// needed), else every project where it is an auditor. Returns the reason when it may read none.
std::optional<std::string> restrict_to_auditor(const Principal& p, const std::string& project, EventFilter& filter);

// The record as the auditor API returns it: every field, details as an object, time also as
// RFC 3339, seq, prev_hash and hash (so an auditor can check it against an export).
nlohmann::json event_json(const StoredRecord& r);
// The record in a few fields, for models: no hashes; details only when asked.
nlohmann::json compact_event_json(const StoredRecord& r, bool with_details);

}  // namespace scigate::audit
