#include "server/state/database.hpp"

namespace scigate::state {

Statement::Statement(sqlite3* db, std::string_view sql) : db_(db) {
  if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr) != SQLITE_OK)
    throw DbError(std::string("prepare failed: ") + sqlite3_errmsg(db));
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement& Statement::bind(int index, std::string_view value) {
  sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  return *this;
}

Statement& Statement::bind(int index, int64_t value) {
  sqlite3_bind_int64(stmt_, index, value);
  return *this;
}

Statement& Statement::bind_null(int index) {
  sqlite3_bind_null(stmt_, index);
  return *this;
}

bool Statement::step() {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  throw DbError(std::string("step failed: ") + sqlite3_errmsg(db_));
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int64_t Statement::column_int(int index) const { return sqlite3_column_int64(stmt_, index); }

std::string Statement::column_text(int index) const {
  auto* p = sqlite3_column_text(stmt_, index);
  return p ? std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(stmt_, index)))
           : std::string();
}

bool Statement::column_is_null(int index) const { return sqlite3_column_type(stmt_, index) == SQLITE_NULL; }

Database::Database(const std::filesystem::path& path) {
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw DbError("cannot open database " + path.string() + ": " + msg);
  }
  sqlite3_busy_timeout(db_, 5000);
  exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;");
}

Database::~Database() { sqlite3_close(db_); }

void Database::exec(std::string_view sql) {
  auto l = lock();
  char* err = nullptr;
  std::string s(sql);
  if (sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw DbError(msg);
  }
}

int Database::schema_version() {
  auto l = lock();
  Statement st(db_, "PRAGMA user_version");
  st.step();
  return static_cast<int>(st.column_int(0));
}

void Database::migrate(const std::vector<Migration>& migrations) {
  auto l = lock();
  for (const auto& m : migrations) {
    // BEGIN IMMEDIATE takes the write lock first, so two processes migrating at once serialise
    // and the second sees the first's user_version.
    exec("BEGIN IMMEDIATE");
    try {
      if (schema_version() < m.version) {
        exec(m.sql);
        exec("PRAGMA user_version = " + std::to_string(m.version));
      }
      exec("COMMIT");
    } catch (...) {
      exec("ROLLBACK");
      throw;
    }
  }
}

const std::vector<Migration>& schema_migrations() {
  static const std::vector<Migration> kMigrations = {
      {1, R"sql(
        CREATE TABLE api_keys (
          key_id      TEXT PRIMARY KEY,
          secret_hash TEXT NOT NULL,
          principal   TEXT NOT NULL,
          kind        TEXT NOT NULL CHECK (kind IN ('user', 'service')),
          description TEXT NOT NULL DEFAULT '',
          created_at  INTEGER NOT NULL,
          revoked_at  INTEGER
        );
        CREATE INDEX api_keys_principal ON api_keys(principal);
      )sql"},
      {2, R"sql(
        -- Append-only, hash-chained: hash = sha256(prev_hash || record), see policies/audit_store.cpp.
        CREATE TABLE audit_log (
          seq         INTEGER PRIMARY KEY,
          time_ms     INTEGER NOT NULL,
          request_id  TEXT NOT NULL,
          principal   TEXT NOT NULL,
          project     TEXT NOT NULL,
          tool        TEXT NOT NULL,
          outcome     TEXT NOT NULL,
          error_code  TEXT NOT NULL,
          rules       TEXT NOT NULL,
          cost        INTEGER NOT NULL,
          duration_us INTEGER NOT NULL,
          details     TEXT NOT NULL,
          prev_hash   TEXT NOT NULL,
          hash        TEXT NOT NULL
        );
        CREATE INDEX audit_log_time ON audit_log(time_ms);
        CREATE INDEX audit_log_project ON audit_log(project, time_ms);
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
          BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
          BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
      )sql"},
      {4, R"sql(
        -- Auditor queries page through one project's or one principal's records in seq order
        -- (GET /audit/events, query_audit_log); without these they would sort every matching row.
        CREATE INDEX audit_log_project_seq ON audit_log(project, seq);
        CREATE INDEX audit_log_principal_seq ON audit_log(principal, seq);
      )sql"},
  };
  return kMigrations;
}

}  // namespace scigate::state
