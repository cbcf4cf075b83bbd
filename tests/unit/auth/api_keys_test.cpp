#include <catch2/catch.hpp>

#include <filesystem>

#include "server/auth/api_keys.hpp"
#include "server/common/crypto.hpp"

using namespace scigate;

namespace {
struct TempDb {
  TempDb() : path(std::filesystem::temp_directory_path() / ("scigate-test-" + crypto::random_hex(6) + ".db")) {}
  ~TempDb() {
    std::error_code ec;
    for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix, ec);
  }
  std::filesystem::path path;
};
}  // namespace

TEST_CASE("api keys: created, authenticated, listed and revoked against a real SQLite file") {
  TempDb tmp;
  state::Database db(tmp.path);
  db.migrate(state::schema_migrations());
  CHECK(db.schema_version() == state::schema_migrations().back().version);
  Config cfg;
  ProjectConfig p1;
  p1.id = "p1";
  p1.service_accounts = {"carol"};  // a service key gets memberships only as a service account
  cfg.projects.push_back(p1);
  auth::ApiKeyStore keys(db, cfg, std::chrono::milliseconds(0));

  auto k = keys.create("carol", "service", "robot arm");
  CHECK(k.token.rfind("sgk_" + k.info.key_id + "_", 0) == 0);
  auto p = keys.authenticate(k.token);
  REQUIRE(p);
  CHECK(p->name == "carol");
  CHECK(p->kind == "service");
  CHECK(p->projects == std::vector<std::string>{"p1"});

  // Only the hash is stored.
  state::Statement st(db.handle(), "SELECT secret_hash FROM api_keys");
  REQUIRE(st.step());
  CHECK(st.column_text(0) == crypto::sha256_hex(k.token));
  CHECK(st.column_text(0).find(k.token.substr(20)) == std::string::npos);

  CHECK_FALSE(keys.authenticate(k.token + "x"));
  CHECK_FALSE(keys.authenticate(""));
  CHECK_FALSE(keys.authenticate("Bearer " + k.token));
  CHECK_FALSE(keys.authenticate("sgk_" + k.info.key_id + "_wrongsecretwrongsecretwrongsecretwrongsec"));

  auto list = keys.list();
  REQUIRE(list.size() == 1);
  CHECK(list[0].description == "robot arm");
  CHECK_FALSE(list[0].revoked_at);

  CHECK(keys.revoke(k.info.key_id));
  CHECK_FALSE(keys.revoke(k.info.key_id));
  CHECK_FALSE(keys.authenticate(k.token));
  CHECK(keys.list()[0].revoked_at);
}

TEST_CASE("api keys: migrations are idempotent") {
  TempDb tmp;
  state::Database db(tmp.path);
  db.migrate(state::schema_migrations());
  db.migrate(state::schema_migrations());
  state::Database again(tmp.path);
  again.migrate(state::schema_migrations());
  CHECK(again.schema_version() == state::schema_migrations().back().version);
}
