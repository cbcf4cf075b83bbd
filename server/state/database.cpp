#include "server/state/database.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace scigate::state {
namespace {

// Waiting for another connection's write lock (the audit writer, the ledger writer, a CLI
// command). SQLite's busy_timeout sleeps 1, 2, 5, 10 ... ms between tries, but these writers
// hold the lock for tens of microseconds per batch: a first sleep of a millisecond would be most
// of a call's latency. Try every 20 µs for 2 ms, then every millisecond, for about 5 s in all.
int busy_wait(void* counter, int tries) {
  static_cast<std::atomic<uint64_t>*>(counter)->fetch_add(1, std::memory_order_relaxed);
  if (tries < 100) std::this_thread::sleep_for(std::chrono::microseconds(20));
  else if (tries < 100 + 5000) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  else return 0;
  return 1;
}

}  // namespace

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
  // A new database is its owner's only (audit records, the ledger, key hashes): SQLite would
  // create it with the umask's mode, 0644 by default. Made here, empty (a valid database), with
  // 0600; its -wal and -shm files take the database's mode. An existing file keeps its mode.
  if (const std::string& p = path.native(); !p.empty() && p.front() != ':') {
    int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) ::close(fd);
  }
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw DbError("cannot open database " + path.string() + ": " + msg);
  }
  sqlite3_busy_handler(db_, busy_wait, &busy_waits_);
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
      {3, R"sql(
        -- The credit ledger (policies/credit_store.cpp, docs/CREDITS.md). Amounts are integer
        -- micro-credits; times unix milliseconds.
        -- Bumped by every transaction that changes credit state; a server's ledger reloads its
        -- in-memory mirror when the value moved under it (scigate credits grant, another server).
        CREATE TABLE credit_meta (id INTEGER PRIMARY KEY CHECK (id = 1), epoch INTEGER NOT NULL);
        INSERT INTO credit_meta VALUES (1, 0);
        -- balance = Σ grants − Σ charges − Σ lapses (= Σ credit_postings.amount of the account)
        --         = Σ credit_grants.remaining − debt; debt is the credit line in use.
        CREATE TABLE credit_accounts (
          account     TEXT PRIMARY KEY,
          balance     INTEGER NOT NULL DEFAULT 0,
          debt        INTEGER NOT NULL DEFAULT 0 CHECK (debt >= 0),
          credit_line INTEGER NOT NULL DEFAULT 0 CHECK (credit_line >= 0),
          created_ms  INTEGER NOT NULL
        );
        -- A user's sub-budget within an account: allowances (grants with a user) it may spend
        -- of the account's credits.
        CREATE TABLE credit_sub_budgets (
          account    TEXT NOT NULL,
          user       TEXT NOT NULL,
          balance    INTEGER NOT NULL DEFAULT 0,
          debt       INTEGER NOT NULL DEFAULT 0 CHECK (debt >= 0),
          created_ms INTEGER NOT NULL,
          PRIMARY KEY (account, user)
        );
        CREATE TABLE credit_grants (
          id         INTEGER PRIMARY KEY,
          account    TEXT NOT NULL,
          user       TEXT NOT NULL DEFAULT '',  -- '': credits for the account; else an allowance
          amount     INTEGER NOT NULL CHECK (amount > 0),
          remaining  INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
          granted_ms INTEGER NOT NULL,
          expires_ms INTEGER,                   -- NULL: never
          granted_by TEXT NOT NULL,
          note       TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX credit_grants_account ON credit_grants(account, user);
        -- Rate history: a row per change; the latest row per resource is in force.
        CREATE TABLE credit_rates (
          resource      TEXT NOT NULL,
          pico_per_unit INTEGER NOT NULL CHECK (pico_per_unit >= 0),  -- 10^-12 credits per unit
          unit          TEXT NOT NULL,
          effective_ms  INTEGER NOT NULL,
          PRIMARY KEY (resource, effective_ms)
        );
        CREATE TABLE credit_holds (
          id              INTEGER PRIMARY KEY,
          account         TEXT NOT NULL,
          project         TEXT NOT NULL,
          user            TEXT NOT NULL,
          tool            TEXT NOT NULL,
          request_id      TEXT NOT NULL,
          amount          INTEGER NOT NULL CHECK (amount >= 0),
          sub_budget      INTEGER NOT NULL DEFAULT 0,
          created_ms      INTEGER NOT NULL,
          expires_ms      INTEGER NOT NULL,
          state           TEXT NOT NULL CHECK (state IN ('open', 'settled', 'voided')),
          posted          INTEGER CHECK (posted IS NULL OR (posted >= 0 AND posted <= amount)),
          closed_ms       INTEGER,
          void_reason     TEXT,
          idempotency_key TEXT,
          args_hash       TEXT,
          result          TEXT,                 -- the CallToolResult a keyed call replays
          owner           TEXT NOT NULL DEFAULT ''  -- "PID/instance" of the ledger that holds it
        );
        CREATE INDEX credit_holds_open ON credit_holds(expires_ms) WHERE state = 'open';
        CREATE INDEX credit_holds_key ON credit_holds(project, idempotency_key) WHERE idempotency_key IS NOT NULL;
        CREATE INDEX credit_holds_results ON credit_holds(created_ms) WHERE result IS NOT NULL;
        -- Append-only: every settle of a priced hold (charge), grant, allowance and lapse.
        CREATE TABLE credit_postings (
          seq           INTEGER PRIMARY KEY,
          time_ms       INTEGER NOT NULL,
          account       TEXT NOT NULL,
          user          TEXT NOT NULL DEFAULT '',
          kind          TEXT NOT NULL CHECK (kind IN ('grant', 'charge', 'lapse', 'allowance', 'allowance_lapse')),
          amount        INTEGER NOT NULL,       -- signed change of the balance it names
          balance_after INTEGER NOT NULL,       -- the account's (allowance kinds: the sub-budget's)
          sub_budget    INTEGER NOT NULL DEFAULT 0,  -- a charge also drawn from the user's sub-budget
          hold_id       INTEGER,
          grant_id      INTEGER,
          tool          TEXT NOT NULL DEFAULT '',
          request_id    TEXT NOT NULL DEFAULT '',
          detail        TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX credit_postings_account ON credit_postings(account, kind, seq);
        CREATE TRIGGER credit_postings_no_update BEFORE UPDATE ON credit_postings
          BEGIN SELECT RAISE(ABORT, 'credit postings are append-only'); END;
        CREATE TRIGGER credit_postings_no_delete BEFORE DELETE ON credit_postings
          BEGIN SELECT RAISE(ABORT, 'credit postings are append-only'); END;
      )sql"},
      {4, R"sql(
        -- Auditor queries page through one project's or one principal's records in seq order
        -- (GET /audit/events, query_audit_log); without these they would sort every matching row.
        CREATE INDEX audit_log_project_seq ON audit_log(project, seq);
        CREATE INDEX audit_log_principal_seq ON audit_log(principal, seq);
      )sql"},
      {5, R"sql(
        -- The job ledger (connectors/scheduler/job_ledger.cpp, docs/JOBS.md): one row per job
        -- submitted through the gateway, whatever its site; state history in job_events.
        CREATE TABLE jobs (
          id           TEXT PRIMARY KEY,        -- gateway id, j-<12 hex>
          site         TEXT NOT NULL,
          native_id    TEXT NOT NULL DEFAULT '',
          project      TEXT NOT NULL,
          principal    TEXT NOT NULL,
          name         TEXT NOT NULL DEFAULT '',
          spec         TEXT NOT NULL,           -- the submitted spec as JSON
          state        TEXT NOT NULL CHECK (state IN ('NEW','QUEUED','ACTIVE','COMPLETED','FAILED','CANCELED')),
          native_state TEXT NOT NULL DEFAULT '',
          reason       TEXT NOT NULL DEFAULT '',
          exit_code    INTEGER,
          term_signal  INTEGER,
          created_ms   INTEGER NOT NULL,
          submit_ms    INTEGER,
          start_ms     INTEGER,
          end_ms       INTEGER,
          hold_id      TEXT NOT NULL DEFAULT '',  -- the job's own credit hold (owner job:<id>)
          held         INTEGER NOT NULL DEFAULT 0,
          cost         INTEGER,                   -- micro-credits posted at the end
          settled      INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_project ON jobs(project, created_ms);
        CREATE INDEX jobs_active ON jobs(site) WHERE state IN ('NEW','QUEUED','ACTIVE') OR settled = 0;
        CREATE TABLE job_events (
          seq          INTEGER PRIMARY KEY,
          job_id       TEXT NOT NULL REFERENCES jobs(id),
          time_ms      INTEGER NOT NULL,
          state        TEXT NOT NULL,
          native_state TEXT NOT NULL DEFAULT '',
          reason       TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX job_events_job ON job_events(job_id, seq);
      )sql"},
      {6, R"sql(
        -- MCP tasks (server/tasks/task_manager.cpp, docs/PROTOCOL.md "Tasks"): tool calls that run
        -- in the background, bound to the principal that started them. The call's own audit
        -- record names the task; this table holds what tasks/get answers.
        CREATE TABLE tasks (
          id             TEXT PRIMARY KEY,          -- t-<32 hex>, unguessable
          owner          TEXT NOT NULL,             -- principal kind:name: nobody else may see the task
          project        TEXT NOT NULL DEFAULT '',
          tool           TEXT NOT NULL,
          request_id     TEXT NOT NULL,             -- the tool call's correlation id (audit)
          status         TEXT NOT NULL CHECK (status IN ('working','input_required','completed','failed','cancelled')),
          status_message TEXT NOT NULL DEFAULT '',
          created_ms     INTEGER NOT NULL,
          updated_ms     INTEGER NOT NULL,
          expires_ms     INTEGER NOT NULL,          -- may be deleted after this, once terminal
          result         TEXT,                      -- CallToolResult JSON (completed)
          error          TEXT                       -- JSON-RPC error object (failed)
        );
        CREATE INDEX tasks_owner ON tasks(owner, created_ms);
        CREATE INDEX tasks_expiry ON tasks(expires_ms);
      )sql"},
      {7, R"sql(
        -- Jobs whose output is data rather than files (a remote QPU run's counts, connectors/
        -- quantum/ibm): what the site returned, as JSON, shown by get_job.
        ALTER TABLE jobs ADD COLUMN result TEXT;
      )sql"},
      {8, R"sql(
        -- The model registry (connectors/registry/, docs/MODELS.md): one row per model, imported
        -- from manifests and upserted by id. seq is an explicit rowid because the full-text index
        -- below refers to rows by rowid, which VACUUM may renumber unless it is declared.
        CREATE TABLE models (
          seq            INTEGER PRIMARY KEY,
          id             TEXT NOT NULL UNIQUE,
          revision       TEXT NOT NULL DEFAULT '',
          name           TEXT NOT NULL DEFAULT '',
          family         TEXT NOT NULL,
          modality       TEXT NOT NULL CHECK (modality IN ('text','vision','ocr','embedding','speech')),
          tasks          TEXT NOT NULL,             -- JSON array of strings
          parameters     INTEGER NOT NULL,
          context_length INTEGER NOT NULL,
          quantization   TEXT NOT NULL DEFAULT '',
          license        TEXT NOT NULL COLLATE NOCASE,
          source         TEXT NOT NULL DEFAULT '',
          weights_sha256 TEXT NOT NULL DEFAULT '',
          gpu_memory_mib INTEGER NOT NULL DEFAULT 0,
          description    TEXT NOT NULL DEFAULT '',
          rates          TEXT NOT NULL,             -- JSON object: usage kind -> credit resource
          imported_ms    INTEGER NOT NULL,
          updated_ms     INTEGER NOT NULL
        );
        CREATE INDEX models_modality ON models(modality, id);
        CREATE INDEX models_license ON models(license, id);
        CREATE INDEX models_parameters ON models(parameters);
        -- Which backends serve a model now; replaced per backend by the inference connector.
        CREATE TABLE model_backends (
          model_id TEXT NOT NULL,
          backend  TEXT NOT NULL,
          seen_ms  INTEGER NOT NULL,
          PRIMARY KEY (model_id, backend)
        );
        CREATE INDEX model_backends_backend ON model_backends(backend);
        -- Full-text search over what people search for; kept in sync by the triggers.
        CREATE VIRTUAL TABLE models_fts USING fts5(
          id, name, family, tasks, description,
          content='models', content_rowid='seq', tokenize='porter unicode61');
        CREATE TRIGGER models_fts_insert AFTER INSERT ON models BEGIN
          INSERT INTO models_fts(rowid, id, name, family, tasks, description)
            VALUES (new.seq, new.id, new.name, new.family, new.tasks, new.description);
        END;
        CREATE TRIGGER models_fts_delete AFTER DELETE ON models BEGIN
          INSERT INTO models_fts(models_fts, rowid, id, name, family, tasks, description)
            VALUES ('delete', old.seq, old.id, old.name, old.family, old.tasks, old.description);
        END;
        CREATE TRIGGER models_fts_update AFTER UPDATE ON models BEGIN
          INSERT INTO models_fts(models_fts, rowid, id, name, family, tasks, description)
            VALUES ('delete', old.seq, old.id, old.name, old.family, old.tasks, old.description);
          INSERT INTO models_fts(rowid, id, name, family, tasks, description)
            VALUES (new.seq, new.id, new.name, new.family, new.tasks, new.description);
        END;
      )sql"},
      {9, R"sql(
        -- The transfer ledger (connectors/storage/transfer_service.cpp, docs/DATA.md): one row per
        -- stage_data call that started a transfer; its credits are a detached hold (owner
        -- transfer:<id>) settled once by the bytes moved.
        CREATE TABLE transfers (
          id            TEXT PRIMARY KEY,         -- x-<12 hex>
          project       TEXT NOT NULL,
          principal     TEXT NOT NULL,
          request_id    TEXT NOT NULL DEFAULT '',
          source        TEXT NOT NULL,            -- URI as given
          destination   TEXT NOT NULL,
          options       TEXT NOT NULL,            -- JSON: recursive, include, exclude, overwrite, sha256
          state         TEXT NOT NULL CHECK (state IN ('QUEUED','ACTIVE','COMPLETED','FAILED','CANCELED')),
          error_code    TEXT NOT NULL DEFAULT '',
          error_message TEXT NOT NULL DEFAULT '',
          directory     INTEGER NOT NULL DEFAULT 0,
          bytes_total   INTEGER,                  -- NULL: not announced
          files_total   INTEGER NOT NULL DEFAULT 0,
          bytes_done    INTEGER NOT NULL DEFAULT 0,
          files_done    INTEGER NOT NULL DEFAULT 0,
          files_skipped INTEGER NOT NULL DEFAULT 0,
          sha256        TEXT NOT NULL DEFAULT '',  -- a single file's
          resume        TEXT,                      -- JSON: what a resumed attempt checks (validators, identity)
          attempts      INTEGER NOT NULL DEFAULT 1,
          created_ms    INTEGER NOT NULL,
          start_ms      INTEGER,
          end_ms        INTEGER,
          hold_id       TEXT NOT NULL DEFAULT '',
          held          INTEGER NOT NULL DEFAULT 0,
          cost          INTEGER,
          settled       INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX transfers_project ON transfers(project, created_ms);
        CREATE INDEX transfers_open ON transfers(state) WHERE state IN ('QUEUED','ACTIVE') OR settled = 0;
        -- Files of a transfer that were verified, recorded before they are renamed into place: a
        -- resumed transfer finishes their renames and copies only the rest.
        CREATE TABLE transfer_files (
          transfer_id TEXT NOT NULL REFERENCES transfers(id),
          path        TEXT NOT NULL,             -- relative to the transfer's source
          bytes       INTEGER NOT NULL,
          sha256      TEXT NOT NULL DEFAULT '',
          outcome     TEXT NOT NULL CHECK (outcome IN ('copied','skipped')),
          PRIMARY KEY (transfer_id, path)
        ) WITHOUT ROWID;
      )sql"},
      {10, R"sql(
        -- transfer_files: one row per batch of up to 64 verified files (JSON) instead of one per
        -- file, which cost more than copying a small file (bench/data). Rows of transfers that
        -- may still resume are carried over, one file per batch.
        CREATE TABLE transfer_file_batches (
          transfer_id TEXT NOT NULL REFERENCES transfers(id),
          batch       INTEGER NOT NULL,
          files       TEXT NOT NULL,             -- JSON [[path, bytes, sha256, skipped], ...]
          PRIMARY KEY (transfer_id, batch)
        ) WITHOUT ROWID;
        INSERT INTO transfer_file_batches(transfer_id, batch, files)
          SELECT transfer_id, ROW_NUMBER() OVER (PARTITION BY transfer_id ORDER BY path) - 1,
                 json_array(json_array(path, bytes, sha256,
                                       json(CASE WHEN outcome = 'skipped' THEN 'true' ELSE 'false' END)))
          FROM transfer_files;
        DROP TABLE transfer_files;
        ALTER TABLE transfer_file_batches RENAME TO transfer_files;
      )sql"},
      {11, R"sql(
        -- In-memory credit holds (policies/credit_ledger.cpp, docs/CREDITS.md "Holds in
        -- memory"): a server that owns the ledger alone keeps its calls' holds in memory, with
        -- negative ids taken in blocks below this floor, so that ids stay unique across
        -- servers and restarts (a charge's posting names its hold even when it never had a row).
        ALTER TABLE credit_meta ADD COLUMN hold_floor INTEGER NOT NULL DEFAULT 0;
      )sql"},
      {12, R"sql(
        -- The governance writer's journal (server/state/journal.hpp): the highest entry whose
        -- item is committed, written in the same transaction as the item. Entries above it
        -- are replayed at the next start.
        CREATE TABLE state_journal (id INTEGER PRIMARY KEY CHECK (id = 1), applied INTEGER NOT NULL);
        INSERT INTO state_journal(id, applied) VALUES (1, 0);
      )sql"},
      {13, R"sql(
        -- What the scheduler allocated to a job once it ran (JSON {nodes, cpus, gpus, gpu_type}),
        -- charged instead of what was asked for (connectors/scheduler/job_ledger.cpp).
        ALTER TABLE jobs ADD COLUMN alloc TEXT;
      )sql"},
      {14, R"sql(
        -- What a task's result weighs and whether it is an isError result, so that a start
        -- reads task states without reading (or parsing) their results (server/tasks/).
        -- NULL for rows written before: computed once at the next start.
        ALTER TABLE tasks ADD COLUMN result_bytes INTEGER;
        ALTER TABLE tasks ADD COLUMN result_is_error INTEGER;
      )sql"},
  };
  return kMigrations;
}

}  // namespace scigate::state
