// The database file itself: who may read it.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "server/state/database.hpp"

using namespace scigate;
namespace fs = std::filesystem;

namespace {
unsigned mode_of(const fs::path& p) {
  struct stat st{};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 0777;
}
}  // namespace

TEST_CASE("database: a new database and its WAL are readable by their owner only, an existing one keeps its mode") {
  char tmpl[] = "/tmp/scigate-db-XXXXXX";
  fs::path dir = ::mkdtemp(tmpl);
  ::umask(022);  // the usual umask, under which SQLite alone would make 0644 files
  {
    state::Database db(dir / "new.db");
    db.exec("CREATE TABLE t(x); INSERT INTO t VALUES (1);");
    CHECK(mode_of(dir / "new.db") == 0600);
    CHECK(mode_of(dir / "new.db-wal") == 0600);
  }
  {
    state::Database db(dir / "shared.db");
    db.exec("CREATE TABLE t(x);");
  }
  fs::permissions(dir / "shared.db", fs::perms(0640));  // an operator's choice
  {
    state::Database db(dir / "shared.db");
    db.exec("INSERT INTO t VALUES (1);");
  }
  CHECK(mode_of(dir / "shared.db") == 0640);
  fs::remove_all(dir);
}
