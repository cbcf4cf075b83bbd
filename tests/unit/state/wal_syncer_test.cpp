#include <catch2/catch.hpp>

#include <filesystem>
#include <future>
#include <mutex>

#include "server/common/crypto.hpp"
#include "server/state/database.hpp"
#include "server/state/wal_syncer.hpp"

using namespace scigate;

TEST_CASE("wal syncer: callbacks run in order after a sync, several commits sharing one") {
  auto path = std::filesystem::temp_directory_path() / ("scigate-sync-" + crypto::random_hex(6) + ".db");
  {
    state::Database db(path);
    db.exec("CREATE TABLE t(x INTEGER)");
    state::WalSyncer syncer(path);
    std::mutex m;
    std::vector<int> order;
    std::vector<std::promise<bool>> done(50);
    for (int i = 0; i < 50; ++i) {
      db.exec("INSERT INTO t VALUES (" + std::to_string(i) + ")");  // autocommit, synchronous=NORMAL
      syncer.after_commit([&, i](bool ok) {
        {
          std::lock_guard g(m);
          order.push_back(i);
        }
        done[static_cast<std::size_t>(i)].set_value(ok);
      });
    }
    for (auto& d : done) CHECK(d.get_future().get());
    std::vector<int> expected(50);
    for (int i = 0; i < 50; ++i) expected[static_cast<std::size_t>(i)] = i;
    CHECK(order == expected);
    CHECK(syncer.syncs() >= 1);
    CHECK(syncer.syncs() <= 50);
  }
  {
    // Without a WAL file (the last connection checkpointed and removed it) there is nothing to
    // sync: the callback still runs, successfully.
    std::filesystem::remove(path.string() + "-wal");
    state::WalSyncer syncer(path);
    std::promise<bool> p;
    syncer.after_commit([&](bool ok) { p.set_value(ok); });
    CHECK(p.get_future().get());
  }
  std::error_code ec;
  for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix, ec);
}
