#include "policies/audit_store.hpp"

#include "server/common/crypto.hpp"
#include "server/observability/log.hpp"
#include "server/protocol/jsonrpc.hpp"

namespace scigate {
namespace {
constexpr const char* kGenesis = "0000000000000000000000000000000000000000000000000000000000000000";

nlohmann::json to_json(const AuditRecord& r) {
  return nlohmann::json{{"time_ms", r.time_ms},       {"request_id", r.request_id}, {"principal", r.principal},
                        {"project", r.project},       {"tool", r.tool},             {"outcome", r.outcome},
                        {"error_code", r.error_code}, {"rules", r.decision_rules},  {"cost", r.cost},
                        {"duration_us", r.duration_us}, {"details", r.details}};
}
}  // namespace

std::string audit_record_hash(const std::string& prev_hash, int64_t seq, const AuditRecord& r,
                              const std::string& details_json) {
  // A JSON array in a fixed order is an unambiguous encoding of the fields.
  nlohmann::json canonical = nlohmann::json::array(
      {seq, r.time_ms, r.request_id, r.principal, r.project, r.tool, r.outcome, r.error_code, r.decision_rules,
       r.cost, r.duration_us, details_json});
  return crypto::sha256_hex(prev_hash + "\n" + jsonrpc::dump(canonical));
}

SqliteAuditLog::SqliteAuditLog(const std::filesystem::path& db_path, bool also_log)
    : db_(db_path), also_log_(also_log) {
  state::Statement st(db_.handle(), "SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1");
  last_hash_ = st.step() ? st.column_text(0) : kGenesis;
  writer_ = std::thread([this] { run(); });
}

SqliteAuditLog::~SqliteAuditLog() {
  {
    std::lock_guard g(mutex_);
    stop_ = true;
  }
  cv_.notify_one();
  writer_.join();
}

void SqliteAuditLog::append(AuditRecord record) { enqueue(std::move(record)); }

uint64_t SqliteAuditLog::enqueue(AuditRecord record) {
  bool wake;
  uint64_t seq;
  {
    std::lock_guard g(mutex_);
    // The writer only sleeps on an empty queue, so only the first record of a batch wakes it:
    // under load the writer drains big batches instead of being woken once per call.
    wake = queue_.empty();
    queue_.push_back(std::move(record));
    seq = ++appended_;
  }
  if (wake) cv_.notify_one();
  return seq;
}

boost::asio::awaitable<void> SqliteAuditLog::append_durable(AuditRecord record) {
  uint64_t seq = enqueue(std::move(record));
  co_await waiters_.wait(seq);
}

void SqliteAuditLog::flush() {
  std::unique_lock l(mutex_);
  uint64_t target = appended_;
  drained_.wait(l, [&] { return committed_ >= target; });
}

void SqliteAuditLog::run() {
  std::unique_lock l(mutex_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty() && stop_) return;
    std::deque<AuditRecord> batch;
    batch.swap(queue_);
    l.unlock();
    std::size_t n = batch.size();
    try {
      write_batch(batch);
    } catch (const std::exception& e) {
      // The database is unusable (disk full, removed): say so loudly, and keep the records in
      // the log at least, whether or not the log mirror is on.
      log::error("audit_write_failed", {{"detail", e.what()}, {"records", n}});
      std::vector<nlohmann::json> lines;
      for (const auto& r : batch) lines.push_back(to_json(r));
      log::audit_batch(lines);
    }
    l.lock();
    committed_ += n;
    drained_.notify_all();
    waiters_.notify(committed_);
  }
}

void SqliteAuditLog::write_batch(std::deque<AuditRecord>& batch) {
  auto lock = db_.lock();
  db_.exec("BEGIN IMMEDIATE");
  std::string hash = last_hash_;
  try {
    state::Statement last(db_.handle(), "SELECT COALESCE(MAX(seq), 0) FROM audit_log");
    last.step();
    int64_t seq = last.column_int(0);
    if (!insert_)
      insert_.emplace(db_.handle(),
                      "INSERT INTO audit_log(seq, time_ms, request_id, principal, project, tool, outcome, "
                      "error_code, rules, cost, duration_us, details, prev_hash, hash) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    auto& ins = *insert_;
    for (const auto& r : batch) {
      ++seq;
      std::string details = jsonrpc::dump(r.details.is_null() ? nlohmann::json::object() : r.details);
      std::string next = audit_record_hash(hash, seq, r, details);
      ins.reset();
      ins.bind(1, seq).bind(2, r.time_ms).bind(3, r.request_id).bind(4, r.principal).bind(5, r.project);
      ins.bind(6, r.tool).bind(7, r.outcome).bind(8, r.error_code).bind(9, r.decision_rules).bind(10, r.cost);
      ins.bind(11, r.duration_us).bind(12, details).bind(13, hash).bind(14, next);
      ins.step();
      hash = next;
    }
    db_.exec("COMMIT");
  } catch (...) {
    db_.exec("ROLLBACK");
    throw;
  }
  last_hash_ = hash;
  if (also_log_) {
    std::vector<nlohmann::json> lines;
    lines.reserve(batch.size());
    for (const auto& r : batch) lines.push_back(to_json(r));
    log::audit_batch(lines);
  }
}

AuditVerification verify_audit_chain(state::Database& db) {
  AuditVerification v;
  auto lock = db.lock();
  state::Statement st(db.handle(),
                      "SELECT seq, time_ms, request_id, principal, project, tool, outcome, error_code, rules, cost, "
                      "duration_us, details, prev_hash, hash FROM audit_log ORDER BY seq");
  std::string prev = kGenesis;
  int64_t expected_seq = 1;
  while (st.step()) {
    int64_t seq = st.column_int(0);
    AuditRecord r;
    r.time_ms = st.column_int(1);
    r.request_id = st.column_text(2);
    r.principal = st.column_text(3);
    r.project = st.column_text(4);
    r.tool = st.column_text(5);
    r.outcome = st.column_text(6);
    r.error_code = st.column_text(7);
    r.decision_rules = st.column_text(8);
    r.cost = st.column_int(9);
    r.duration_us = st.column_int(10);
    std::string details = st.column_text(11);
    auto fail = [&](std::string why) {
      v.ok = false;
      v.first_bad_seq = seq;
      v.detail = std::move(why);
    };
    if (seq != expected_seq) fail("record " + std::to_string(expected_seq) + " is missing");
    else if (st.column_text(12) != prev) fail("prev_hash does not match the previous record's hash");
    else if (audit_record_hash(prev, seq, r, details) != st.column_text(13)) fail("the record does not match its hash");
    if (!v.ok) return v;
    prev = st.column_text(13);
    ++expected_seq;
    ++v.records;
  }
  return v;
}

}  // namespace scigate
