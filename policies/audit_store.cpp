#include "policies/audit_store.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <sqlite3.h>

#include <fcntl.h>
#include <unistd.h>

#include <openssl/sha.h>

#include <cerrno>
#include <cstring>

#include <stdexcept>

#include "policies/audit_checkpoint.hpp"
#include "policies/audit_time.hpp"
#include "policies/canonical_json.hpp"
#include "server/observability/log.hpp"

namespace scigate {
namespace {

// SHA-256 through OpenSSL's low-level interface: per record, EVP's provider dispatch and
// context set-up cost about as much as hashing the record itself, and verifying a large log is
// mostly hashing. (Deprecated in OpenSSL 3 in favour of EVP, still supported; same code path
// for the digest itself, SHA-NI included.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
class Sha256 {
 public:
  Sha256() { SHA256_Init(&ctx_); }
  void update(std::string_view data) { SHA256_Update(&ctx_, data.data(), data.size()); }
  std::string hex() {
    static constexpr char kDigits[] = "0123456789abcdef";
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256_Final(md, &ctx_);
    std::string out(64, '\0');
    for (unsigned i = 0; i < 32; ++i) {
      out[2 * i] = kDigits[md[i] >> 4];
      out[2 * i + 1] = kDigits[md[i] & 0xf];
    }
    return out;
  }

 private:
  SHA256_CTX ctx_;
};
#pragma GCC diagnostic pop

// The record's members from outcome to tool, in canonical order, each after a comma: shared
// by the canonical text and the log mirror's line (which puts its own keys around them).
void append_outcome_to_tool(std::string& out, const AuditRowView& r) {
  out += ",\"outcome\":";
  canonical::append_string(out, r.outcome);
  out += ",\"prev_hash\":";
  canonical::append_string(out, r.prev_hash);
  out += ",\"principal\":";
  canonical::append_string(out, r.principal);
  out += ",\"project\":";
  canonical::append_string(out, r.project);
  out += ",\"request_id\":";
  canonical::append_string(out, r.request_id);
  out += ",\"rules\":";
  canonical::append_string(out, r.rules);
  out += ",\"seq\":";
  canonical::append_int(out, r.seq);
  out += ",\"time_ms\":";
  canonical::append_int(out, r.time_ms);
  out += ",\"tool\":";
  canonical::append_string(out, r.tool);
}

// The record's members after details, in canonical order (see append_audit_message).
void append_after_details(std::string& out, const AuditRowView& r, bool with_hash) {
  out += ",\"duration_us\":";
  canonical::append_int(out, r.duration_us);
  out += ",\"error_code\":";
  canonical::append_string(out, r.error_code);
  if (with_hash) {
    out += ",\"hash\":";
    canonical::append_string(out, r.hash);
  }
  append_outcome_to_tool(out, r);
  out += '}';
}

nlohmann::json to_json(const AuditRecord& r, int64_t seq) {
  nlohmann::json j{{"time_ms", r.time_ms},       {"request_id", r.request_id}, {"principal", r.principal},
                   {"project", r.project},       {"tool", r.tool},             {"outcome", r.outcome},
                   {"error_code", r.error_code}, {"rules", r.decision_rules},  {"cost", r.cost},
                   {"duration_us", r.duration_us}, {"details", r.details}};
  if (seq > 0) j["seq"] = seq;
  return j;
}

AuditRowView view_of(const AuditRecord& r, int64_t seq, std::string_view details, std::string_view prev_hash) {
  AuditRowView v;
  v.seq = seq;
  v.time_ms = r.time_ms;
  v.request_id = r.request_id;
  v.principal = r.principal;
  v.project = r.project;
  v.tool = r.tool;
  v.outcome = r.outcome;
  v.error_code = r.error_code;
  v.rules = r.decision_rules;
  v.cost = r.cost;
  v.duration_us = r.duration_us;
  v.details = details;
  v.prev_hash = prev_hash;
  return v;
}

// The log mirror's line: the record's members (the export line's, with hash and prev_hash)
// and the log's event, level and ts, all in key order like every JSON log line.
void append_audit_log_line(std::string& out, const AuditRowView& r, std::string_view ts) {
  out += "{\"cost\":";
  canonical::append_int(out, r.cost);
  out += ",\"details\":";
  out += r.details;
  out += ",\"duration_us\":";
  canonical::append_int(out, r.duration_us);
  out += ",\"error_code\":";
  canonical::append_string(out, r.error_code);
  out += ",\"event\":\"audit\",\"hash\":";
  canonical::append_string(out, r.hash);
  out += ",\"level\":\"info\"";
  append_outcome_to_tool(out, r);
  out += ",\"ts\":";
  canonical::append_string(out, ts);
  out += '}';
}

}  // namespace

void append_audit_message(std::string& out, const AuditRowView& r, bool with_hash) {
  // Members in RFC 8785 order (by key); details is canonical JSON text already.
  out += "{\"cost\":";
  canonical::append_int(out, r.cost);
  out += ",\"details\":";
  out += r.details;
  append_after_details(out, r, with_hash);
}

std::string audit_row_hash(const AuditRowView& r) {
  // The same bytes as append_audit_message(r, false), hashed in pieces so that the details,
  // the bulk of a record, are not copied.
  thread_local std::string buf;
  Sha256 h;
  buf = "{\"cost\":";
  canonical::append_int(buf, r.cost);
  buf += ",\"details\":";
  h.update(buf);
  h.update(r.details);
  buf.clear();
  append_after_details(buf, r, false);
  h.update(buf);
  return h.hex();
}

std::string audit_export_line(const AuditRowView& r) {
  std::string out;
  append_audit_message(out, r, true);
  return out;
}

std::string audit_record_hash(const std::string& prev_hash, int64_t seq, const AuditRecord& r,
                              const std::string& details_json) {
  return audit_row_hash(view_of(r, seq, details_json, prev_hash));
}

struct SqliteAuditLog::Item final : state::Writer::Item {
  Item(SqliteAuditLog* l, AuditRecord r) : state::Writer::Item(l), log(l), record(std::move(r)) {}
  SqliteAuditLog* log;
  AuditRecord record;
  int64_t seq = 0;  // once written, with its canonical details and its chain links
  std::string details, prev_hash, hash;
  // append_durable's caller (emplaced, never assigned: see SqliteLedger::Op).
  boost::asio::any_io_executor executor;
  std::optional<boost::asio::any_completion_handler<void()>> handler;

  void apply() override { log->write(*this); }
  // The record as its canonical message without a chain (seq 0, no prev_hash): the chain is
  // the writer's to extend, at replay as at the first attempt.
  bool journal_entry(std::string& out) const override {
    append_audit_message(out, view_of(record, 0, details, ""), false);
    return true;
  }
  bool needs_sync() const override { return handler && log->options_.sync_before_answer; }
  void failed(const std::string& what) override {
    // The database is unusable (disk full, removed): say so loudly, and keep the record in the
    // log at least, whether or not the log mirror is on.
    log::error("audit_write_failed", {{"detail", what}, {"request_id", record.request_id}});
    std::vector<nlohmann::json> lines;
    lines.push_back(to_json(record, 0));
    log::audit_batch(lines);
  }
  void answer() override {
    if (!handler) return;
    auto ex = executor;
    boost::asio::post(ex, std::move(*handler));
    handler.reset();
  }
};

SqliteAuditLog::SqliteAuditLog(const std::filesystem::path& db_path, bool also_log)
    : SqliteAuditLog(db_path, AuditLogOptions{also_log, {}, {}, 0, std::chrono::seconds(0)}) {}

SqliteAuditLog::SqliteAuditLog(const std::filesystem::path& db_path, AuditLogOptions options)
    : SqliteAuditLog(std::make_unique<state::Writer>(
                         db_path, state::Writer::Options{options.sync_before_answer, 1024, options.checkpointer}),
                     nullptr, std::move(options)) {}

SqliteAuditLog::SqliteAuditLog(state::Writer& writer, AuditLogOptions options)
    : SqliteAuditLog(nullptr, &writer, std::move(options)) {}

SqliteAuditLog::SqliteAuditLog(std::unique_ptr<state::Writer> own, state::Writer* writer, AuditLogOptions options)
    : options_(std::move(options)),
      own_writer_(std::move(own)),
      writer_(writer ? writer : own_writer_.get()),
      db_path_(sqlite3_db_filename(writer_->db().handle(), "main")) {
  {
    auto lock = writer_->db().lock();
    state::Statement st(writer_->db().handle(), "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1");
    if (st.step()) {
      last_seq_ = st.column_int(0);
      last_hash_ = st.column_text(1);
    } else {
      last_hash_ = kAuditGenesisHash;
    }
  }
  if (!options_.checkpoint_file.empty())
    if (auto last = audit::read_last_checkpoint(options_.checkpoint_file))
      last_checkpoint_ = std::make_unique<audit::Checkpoint>(std::move(*last));
  writer_->add(this);
}

SqliteAuditLog::~SqliteAuditLog() {
  writer_->flush();
  writer_->remove(this);
  maybe_checkpoint(true);  // a clean stop leaves a checkpoint at the very last record
}

std::string SqliteAuditLog::checkpoint_key_id() {
  std::lock_guard g(key_mutex_);
  return key_ ? key_->key_id() : "";
}

const audit::SigningKey* SqliteAuditLog::signing_key() {
  std::lock_guard g(key_mutex_);
  if (!key_ && !options_.checkpoint_file.empty()) {
    bool created = false;
    try {
      key_ = std::make_unique<audit::SigningKey>(audit::SigningKey::load_or_create(options_.signing_key, &created));
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("audit signing key: ") + e.what() +
                               " (set [audit] signing_key to a path the server can read and write; docs/CONFIG.md)");
    }
    if (created)
      log::info("audit_key_created", {{"path", options_.signing_key.string()}, {"key_id", key_->key_id()}});
  }
  return key_.get();
}

void SqliteAuditLog::prepare_checkpoints() {
  if (options_.checkpoint_file.empty()) return;
  signing_key();
  check_checkpoint_against_log();
}

int64_t SqliteAuditLog::checkpointed_seq() const {
  int64_t seq = checkpoints_ ? (checkpoints_->last() ? checkpoints_->last()->seq : 0)
                             : (last_checkpoint_ ? last_checkpoint_->seq : 0);
  // A checkpoint beyond the newest record (records removed, an older database restored) covers
  // nothing here: checkpointing goes on from the log's head (that checkpoint stays in the file
  // as the evidence `audit verify` reports).
  return seq > last_seq_ ? 0 : seq;
}

// A checkpoint beyond the newest record, or one that disagrees with it, means records were
// removed or rewritten while the server was down. Say so loudly; serving goes on (refusing to
// start would let whoever can delete rows stop the gateway), and `scigate audit verify` keeps
// reporting it.
void SqliteAuditLog::check_checkpoint_against_log() {
  auto& cp = last_checkpoint_;
  if (!cp) return;
  {
    std::lock_guard g(key_mutex_);
    if (key_ && (cp->key_id != key_->key_id() || !audit::checkpoint_signature_ok(*key_, *cp))) {
      log::error("audit_checkpoint_untrusted",
                 {{"detail", "the newest line of the checkpoint file is not a checkpoint signed by this server's key: "
                             "it is ignored, and checkpoints go on from the log's head; run scigate audit verify"},
                  {"line", cp->line},
                  {"key_id", cp->key_id}});
      cp.reset();
      return;
    }
  }
  int64_t last_seq = 0;
  {
    auto lock = writer_->db().lock();
    state::Statement st(writer_->db().handle(), "SELECT COALESCE(MAX(seq), 0) FROM audit_log");
    st.step();
    last_seq = st.column_int(0);
  }
  if (cp->seq > last_seq) {
    log::error("audit_log_truncated", {{"detail", "the newest checkpoint is beyond the newest audit record: records "
                                                  "were removed; run scigate audit verify"},
                                       {"checkpoint_seq", cp->seq},
                                       {"last_seq", last_seq}});
    return;
  }
  auto lock = writer_->db().lock();
  state::Statement st(writer_->db().handle(), "SELECT hash FROM audit_log WHERE seq = ?");
  st.bind(1, cp->seq);
  if (!st.step() || st.column_text(0) != cp->hash)
    log::error("audit_log_rewritten", {{"detail", "the audit record at the newest checkpoint does not match it; run "
                                                  "scigate audit verify"},
                                       {"checkpoint_seq", cp->seq}});
}

void SqliteAuditLog::append(AuditRecord record) { writer_->enqueue(std::make_shared<Item>(this, std::move(record))); }

std::shared_ptr<state::Writer::Item> SqliteAuditLog::decode(std::string_view payload) {
  auto j = nlohmann::json::parse(payload);
  AuditRecord r;
  r.time_ms = j.at("time_ms").get<int64_t>();
  r.request_id = j.at("request_id").get<std::string>();
  r.principal = j.at("principal").get<std::string>();
  r.project = j.at("project").get<std::string>();
  r.tool = j.at("tool").get<std::string>();
  r.outcome = j.at("outcome").get<std::string>();
  r.error_code = j.at("error_code").get<std::string>();
  r.decision_rules = j.at("rules").get<std::string>();
  r.cost = j.at("cost").get<int64_t>();
  r.duration_us = j.at("duration_us").get<int64_t>();
  r.details = std::move(j.at("details"));
  auto item = std::make_shared<Item>(this, std::move(r));
  canonical::append(item->details, item->record.details);
  return item;
}

bool SqliteAuditLog::append_journaled(const std::shared_ptr<Item>& item) {
  // Only a record whose cost is known now: one that reads a queued settle's posting
  // (cost_posted) must wait for that settle's commit, which its own covers.
  if (item->record.cost_posted || !writer_->journaling()) return false;
  canonical::append(item->details, item->record.details.is_object() ? item->record.details : nlohmann::json::object());
  if (writer_->enqueue_journaled(item)) return true;
  item->details.clear();
  return false;
}

boost::asio::awaitable<void> SqliteAuditLog::append_durable(AuditRecord record) {
  auto item = std::make_shared<Item>(this, std::move(record));
  // Journaled: it survives a crash of the server from now on; the caller need not wait.
  if (append_journaled(item)) return []() -> boost::asio::awaitable<void> { co_return; }();
  return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void()>(
      [this, item](auto handler) {
        item->executor = boost::asio::get_associated_executor(handler);
        item->handler.emplace(std::move(handler));
        writer_->enqueue(item);
      },
      boost::asio::use_awaitable);
}

void SqliteAuditLog::begin() {
  // The chain continues from what is committed, whoever wrote it (read inside the transaction).
  if (!last_) last_.emplace(writer_->db().handle(), "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1");
  last_->reset();
  head_seq_ = 0;
  head_hash_ = kAuditGenesisHash;
  if (last_->step()) {
    head_seq_ = last_->column_int(0);
    head_hash_ = last_->column_text(1);
  }
  last_->reset();
  in_transaction_.clear();
}

void SqliteAuditLog::write(Item& item) {
  AuditRecord& r = item.record;
  if (r.cost_posted) r.cost = *r.cost_posted;  // the settle queued before it has run
  if (!insert_)
    insert_.emplace(writer_->db().handle(),
                    "INSERT INTO audit_log(seq, time_ms, request_id, principal, project, tool, outcome, "
                    "error_code, rules, cost, duration_us, details, prev_hash, hash) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  if (item.details.empty())  // (journaled records have theirs already)
    canonical::append(item.details, r.details.is_object() ? r.details : nlohmann::json::object());
  int64_t seq = head_seq_ + 1;
  item.prev_hash = head_hash_;
  item.hash = audit_row_hash(view_of(r, seq, item.details, head_hash_));
  auto& ins = *insert_;
  ins.reset();
  ins.bind(1, seq).bind(2, r.time_ms).bind(3, r.request_id).bind(4, r.principal).bind(5, r.project);
  ins.bind(6, r.tool).bind(7, r.outcome).bind(8, r.error_code).bind(9, r.decision_rules).bind(10, r.cost);
  ins.bind(11, r.duration_us).bind(12, item.details).bind(13, item.prev_hash).bind(14, item.hash);
  ins.step();
  ins.reset();
  head_seq_ = seq;
  head_hash_ = item.hash;
  item.seq = seq;
  in_transaction_.push_back(&item);
}

void SqliteAuditLog::committed() {
  last_seq_ = head_seq_;
  last_hash_ = head_hash_;
  in_batch_.insert(in_batch_.end(), in_transaction_.begin(), in_transaction_.end());
  in_transaction_.clear();
}

void SqliteAuditLog::rolled_back() noexcept { in_transaction_.clear(); }

void SqliteAuditLog::after_batch() {
  // The callers are answered; the log mirror and the checkpoint (a signature and a sync) run
  // after.
  if (options_.also_log && !in_batch_.empty()) {
    if (log::audit_json()) {
      // From the canonical text already made for the hash: no JSON tree per record.
      std::string lines, ts = log::audit_timestamp();
      for (const Item* item : in_batch_) {
        if (!lines.empty()) lines += '\n';
        AuditRowView v = view_of(item->record, item->seq, item->details, item->prev_hash);
        v.hash = item->hash;
        append_audit_log_line(lines, v, ts);
      }
      log::audit_lines(lines);
    } else {
      std::vector<nlohmann::json> lines;
      lines.reserve(in_batch_.size());
      for (const Item* item : in_batch_) lines.push_back(to_json(item->record, item->seq));
      log::audit_batch(lines);
    }
  }
  in_batch_.clear();
  maybe_checkpoint(false);
}

state::Writer::TimePoint SqliteAuditLog::tick(state::Writer::TimePoint now) {
  // Time-based checkpoints: records not yet covered get one when it is due.
  if (options_.checkpoint_file.empty() || options_.checkpoint_every.count() <= 0) return state::Writer::TimePoint::max();
  maybe_checkpoint(false);
  auto due = last_checkpoint_time_ + options_.checkpoint_every;
  return due > now ? due : now + options_.checkpoint_every;
}

void SqliteAuditLog::maybe_checkpoint(bool force) {
  if (options_.checkpoint_file.empty()) return;
  int64_t covered = checkpointed_seq();
  if (last_seq_ <= covered) return;
  auto now = std::chrono::steady_clock::now();
  bool due = force ||
             (options_.checkpoint_every_records > 0 && last_seq_ - covered >= options_.checkpoint_every_records) ||
             (options_.checkpoint_every.count() > 0 && now - last_checkpoint_time_ >= options_.checkpoint_every);
  if (!due) return;
  last_checkpoint_time_ = now;
  try {
    // Commits run with synchronous=NORMAL (WAL): they survive a crash of the process, not yet a
    // power loss. A checkpoint must never name a record that could still vanish, so the
    // database and its WAL go to disk first: two syncs per checkpoint rather than one per batch
    // (which would put a disk sync, milliseconds, into every call's latency).
    sync_files();
    if (!checkpoints_) checkpoints_ = std::make_unique<audit::CheckpointWriter>(options_.checkpoint_file, *signing_key());
    checkpoints_->write(last_seq_, last_hash_, audit::now_ms());
  } catch (const std::exception& e) {
    log::error("audit_checkpoint_failed", {{"detail", e.what()}, {"seq", last_seq_}});
  }
}

void SqliteAuditLog::sync_files() {
  for (const std::string& path : {db_path_.string(), db_path_.string() + "-wal"}) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // no WAL file: everything is in the database file
    int rc = ::fdatasync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) throw std::runtime_error("cannot sync " + path + ": " + std::strerror(err));
  }
}

}  // namespace scigate
