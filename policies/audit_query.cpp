#include "policies/audit_query.hpp"

#include <sqlite3.h>

#include <boost/asio/async_result.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "policies/audit_time.hpp"
#include "server/state/database.hpp"

namespace scigate::audit {
namespace asio = boost::asio;
using nlohmann::json;

namespace {

std::string_view column(sqlite3_stmt* st, int i) {
  auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, i));
  return p ? std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(st, i))) : std::string_view();
}

struct Stmt {
  Stmt(sqlite3* db, const std::string& sql) : db(db) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
      throw state::DbError(std::string("prepare failed: ") + sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(st); }
  bool step() {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw state::DbError(std::string("reading the audit log failed: ") + sqlite3_errmsg(db));
  }
  sqlite3* db;
  sqlite3_stmt* st = nullptr;
};

}  // namespace

AuditRowView StoredRecord::view() const {
  AuditRowView v;
  v.seq = seq;
  v.time_ms = time_ms;
  v.request_id = request_id;
  v.principal = principal;
  v.project = project;
  v.tool = tool;
  v.outcome = outcome;
  v.error_code = error_code;
  v.rules = rules;
  v.cost = cost;
  v.duration_us = duration_us;
  v.details = details;
  v.prev_hash = prev_hash;
  v.hash = hash;
  return v;
}

AuditReader::AuditReader(const std::filesystem::path& db_path) {
  if (sqlite3_open_v2(db_path.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw state::DbError("cannot open database " + db_path.string() + " for reading: " + msg);
  }
  sqlite3_busy_timeout(db_, 5000);
}

AuditReader::~AuditReader() { sqlite3_close(db_); }

void AuditReader::scan(const EventFilter& f, const std::function<bool(const AuditRowView&)>& fn) {
  if (f.projects && f.projects->empty()) return;
  std::string sql =
      "SELECT seq, time_ms, request_id, principal, project, tool, outcome, error_code, rules, cost, duration_us, "
      "details, prev_hash, hash FROM audit_log WHERE 1";
  // Bound in the order they are added.
  std::vector<std::string> texts;
  std::vector<int64_t> ints;
  std::vector<std::pair<bool, std::size_t>> order;  // (is_text, index)
  auto text = [&](const std::string& clause, const std::string& v) {
    sql += clause;
    order.emplace_back(true, texts.size());
    texts.push_back(v);
  };
  auto integer = [&](const std::string& clause, int64_t v) {
    sql += clause;
    order.emplace_back(false, ints.size());
    ints.push_back(v);
  };
  if (f.projects) {
    sql += " AND project IN (";
    for (std::size_t i = 0; i < f.projects->size(); ++i) {
      sql += i ? ",?" : "?";
      order.emplace_back(true, texts.size());
      texts.push_back((*f.projects)[i]);
    }
    sql += ")";
  }
  if (!f.principal.empty()) text(" AND principal = ?", f.principal);
  if (!f.tool.empty()) text(" AND tool = ?", f.tool);
  if (!f.outcome.empty()) text(" AND outcome = ?", f.outcome);
  if (f.since_ms) integer(" AND time_ms >= ?", *f.since_ms);
  if (f.until_ms) integer(" AND time_ms < ?", *f.until_ms);
  if (f.from_seq) integer(" AND seq >= ?", *f.from_seq);
  if (f.to_seq) integer(" AND seq <= ?", *f.to_seq);
  if (f.cursor) integer(f.descending ? " AND seq < ?" : " AND seq > ?", *f.cursor);
  sql += f.descending ? " ORDER BY seq DESC" : " ORDER BY seq";
  if (f.limit > 0) integer(" LIMIT ?", f.limit);

  Stmt st(db_, sql);
  for (std::size_t i = 0; i < order.size(); ++i) {
    int idx = static_cast<int>(i + 1);
    if (order[i].first) {
      const auto& s = texts[order[i].second];
      sqlite3_bind_text(st.st, idx, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
    } else {
      sqlite3_bind_int64(st.st, idx, ints[order[i].second]);
    }
  }
  while (st.step()) {
    AuditRowView r;
    r.seq = sqlite3_column_int64(st.st, 0);
    r.time_ms = sqlite3_column_int64(st.st, 1);
    r.request_id = column(st.st, 2);
    r.principal = column(st.st, 3);
    r.project = column(st.st, 4);
    r.tool = column(st.st, 5);
    r.outcome = column(st.st, 6);
    r.error_code = column(st.st, 7);
    r.rules = column(st.st, 8);
    r.cost = sqlite3_column_int64(st.st, 9);
    r.duration_us = sqlite3_column_int64(st.st, 10);
    r.details = column(st.st, 11);
    r.prev_hash = column(st.st, 12);
    r.hash = column(st.st, 13);
    if (!fn(r)) break;
  }
}

AuditPage AuditReader::page(const EventFilter& filter) {
  EventFilter f = filter;
  const int64_t limit = f.limit > 0 ? f.limit : kDefaultPageSize;
  f.limit = limit + 1;  // one more tells whether there is a next page
  AuditPage out;
  scan(f, [&](const AuditRowView& r) {
    if (static_cast<int64_t>(out.events.size()) == limit) {
      out.next_cursor = out.events.back().seq;
      return false;
    }
    StoredRecord s;
    s.seq = r.seq;
    s.time_ms = r.time_ms;
    s.cost = r.cost;
    s.duration_us = r.duration_us;
    s.request_id = r.request_id;
    s.principal = r.principal;
    s.project = r.project;
    s.tool = r.tool;
    s.outcome = r.outcome;
    s.error_code = r.error_code;
    s.rules = r.rules;
    s.details = r.details;
    s.prev_hash = r.prev_hash;
    s.hash = r.hash;
    out.events.push_back(std::move(s));
    return true;
  });
  return out;
}

int64_t AuditReader::last_seq() {
  Stmt st(db_, "SELECT COALESCE(MAX(seq), 0) FROM audit_log");
  st.step();
  return sqlite3_column_int64(st.st, 0);
}

std::optional<int64_t> AuditReader::first_seq_since(int64_t time_ms) {
  Stmt st(db_, "SELECT MIN(seq) FROM audit_log WHERE time_ms >= ?");
  sqlite3_bind_int64(st.st, 1, time_ms);
  if (!st.step() || sqlite3_column_type(st.st, 0) == SQLITE_NULL) return std::nullopt;
  return sqlite3_column_int64(st.st, 0);
}

std::optional<int64_t> AuditReader::last_seq_before(int64_t time_ms) {
  Stmt st(db_, "SELECT MAX(seq) FROM audit_log WHERE time_ms < ?");
  sqlite3_bind_int64(st.st, 1, time_ms);
  if (!st.step() || sqlite3_column_type(st.st, 0) == SQLITE_NULL) return std::nullopt;
  return sqlite3_column_int64(st.st, 0);
}

void AuditReader::begin_snapshot() { sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr); }
void AuditReader::end_snapshot() { sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr); }

// --- the service -----------------------------------------------------------------------------

AuditQueryService::AuditQueryService(std::filesystem::path db_path) : db_path_(std::move(db_path)) {}

AuditQueryService::~AuditQueryService() {
  pool_.stop();
  pool_.join();
}

AuditPage AuditQueryService::run(const EventFilter& filter) {
  if (before_read_) before_read_();
  if (!reader_) reader_ = std::make_unique<AuditReader>(db_path_);
  return reader_->page(filter);
}

asio::awaitable<AuditPage> AuditQueryService::query(EventFilter filter) {
  // Posted to the pool and posted back, rather than co_spawn onto the pool: the query must not
  // touch the caller's cancellation slot from the pool's thread (a query is short and is not
  // cancelled; its caller may be).
  return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, AuditPage)>(
      [this](auto handler, EventFilter f) {
        asio::post(pool_, [this, f = std::move(f), handler = std::move(handler)]() mutable {
          std::exception_ptr error;
          AuditPage page;
          try {
            page = run(f);
          } catch (...) {
            error = std::current_exception();
          }
          auto ex = asio::get_associated_executor(handler);
          asio::post(ex, [handler = std::move(handler), error, page = std::move(page)]() mutable {
            std::move(handler)(error, std::move(page));
          });
        });
      },
      asio::use_awaitable, std::move(filter));
}

// --- who may read what -----------------------------------------------------------------------

std::vector<std::string> auditable_projects(const Principal& p) {
  std::vector<std::string> out;
  for (const auto& project : p.projects)
    if (p.has_role(project, "auditor")) out.push_back(project);
  return out;
}

std::optional<std::string> restrict_to_auditor(const Principal& p, const std::string& project, EventFilter& f) {
  if (!project.empty()) {
    if (!p.has_role(project, "auditor"))
      return p.name + " does not hold the auditor role in project " + project;
    f.projects = std::vector<std::string>{project};
    return std::nullopt;
  }
  auto mine = auditable_projects(p);
  if (mine.empty()) return p.name + " does not hold the auditor role in any project";
  f.projects = std::move(mine);
  return std::nullopt;
}

// --- JSON for readers ------------------------------------------------------------------------

json event_json(const StoredRecord& r) {
  json j = json::object();
  j["seq"] = r.seq;
  j["time_ms"] = r.time_ms;
  j["time"] = format_time(r.time_ms);
  j["request_id"] = r.request_id;
  j["principal"] = r.principal;
  j["project"] = r.project;
  j["tool"] = r.tool;
  j["outcome"] = r.outcome;
  j["error_code"] = r.error_code;
  j["rules"] = r.rules;
  j["cost"] = r.cost;
  j["duration_us"] = r.duration_us;
  json d = json::parse(r.details, nullptr, false);
  j["details"] = d.is_discarded() ? json(r.details) : std::move(d);
  j["prev_hash"] = r.prev_hash;
  j["hash"] = r.hash;
  return j;
}

json compact_event_json(const StoredRecord& r, bool with_details) {
  json j = json::object();
  j["seq"] = r.seq;
  j["time"] = format_time(r.time_ms);
  if (!r.principal.empty()) j["principal"] = r.principal;
  if (!r.project.empty()) j["project"] = r.project;
  if (!r.tool.empty()) j["tool"] = r.tool;
  j["outcome"] = r.outcome;
  if (!r.error_code.empty()) j["error_code"] = r.error_code;
  if (!r.rules.empty()) j["rules"] = r.rules;
  if (r.cost != 0) j["cost"] = r.cost;
  j["duration_ms"] = static_cast<double>(r.duration_us / 100) / 10.0;
  j["request_id"] = r.request_id;
  if (with_details) {
    json d = json::parse(r.details, nullptr, false);
    j["details"] = d.is_discarded() ? json(r.details) : std::move(d);
  }
  return j;
}

}  // namespace scigate::audit
