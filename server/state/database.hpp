#pragma once
// A thin RAII layer over one SQLite connection, plus versioned schema migrations.
//
// Thread-safety: a Database serialises all use of its connection with an internal mutex; take
// `lock()` around a multi-statement transaction. SQLite calls are short (local file, WAL), but
// they still block: callers on I/O threads keep them to indexed point queries.
#include <sqlite3.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace scigate::state {

struct DbError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Statement {
 public:
  Statement(sqlite3* db, std::string_view sql);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, std::string_view value);
  Statement& bind(int index, int64_t value);
  Statement& bind_null(int index);
  // true while a row is available.
  bool step();
  void reset();
  int64_t column_int(int index) const;
  std::string column_text(int index) const;
  bool column_is_null(int index) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

struct Migration {
  int version;
  const char* sql;
};

class Database {
 public:
  explicit Database(const std::filesystem::path& path);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  std::unique_lock<std::recursive_mutex> lock() { return std::unique_lock(mutex_); }
  sqlite3* handle() { return db_; }
  void exec(std::string_view sql);
  // Applies, in order and each in its own transaction, the migrations newer than the stored
  // user_version. Safe to call from several processes at once.
  void migrate(const std::vector<Migration>& migrations);
  int schema_version();
  // How often this connection waited for another's write lock (contention, for benchmarks).
  uint64_t busy_waits() const { return busy_waits_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> busy_waits_{0};
  std::recursive_mutex mutex_;
  sqlite3* db_ = nullptr;
};

// All migrations of the server's own tables, in order. Later issues append to this list.
const std::vector<Migration>& schema_migrations();

}  // namespace scigate::state
