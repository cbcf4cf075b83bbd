#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "server/common/crypto.hpp"
#include "server/state/database.hpp"
#include "server/state/wal_checkpointer.hpp"

using namespace scigate;
namespace fs = std::filesystem;

namespace {

struct TempPath {
  fs::path path = fs::temp_directory_path() / ("scigate-ckpt-" + crypto::random_hex(6) + ".db");
  ~TempPath() {
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(path.string() + suffix);
  }
};

// 1,500 transactions of ~4 KB each, in bursts of 50 (a server's writers wait for work between
// batches), on a connection the checkpointer watches
// (or on one with SQLite's autocheckpoint off, when `checkpointer` is null). Returns the WAL
// file's size at the end: its high-water mark, since SQLite reuses the file from its start.
std::uintmax_t write(const fs::path& path, state::WalCheckpointer* checkpointer) {
  state::Database db(path);
  if (checkpointer) checkpointer->watch(db.handle());
  else sqlite3_wal_autocheckpoint(db.handle(), 0);
  db.exec("CREATE TABLE IF NOT EXISTS t(x TEXT)");
  std::string insert = "INSERT INTO t VALUES ('" + std::string(4000, 'x') + "')";
  for (int i = 0; i < 1500; ++i) {
    db.exec(insert);
    if (i % 50 == 49) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::error_code ec;
  return fs::file_size(path.string() + "-wal", ec);
}

}  // namespace

TEST_CASE("wal checkpointer: watched commits leave checkpoints to its thread, yet the WAL stays bounded") {
  // Control: without checkpoints the WAL holds everything written (~18 MB here).
  TempPath unchecked;
  std::uintmax_t grown = write(unchecked.path, nullptr);
  CHECK(grown > 8u << 20);

  TempPath checked;
  { state::Database create(checked.path); }
  state::WalCheckpointer checkpointer(checked.path, /*threshold_frames=*/64);
  std::uintmax_t bounded = write(checked.path, &checkpointer);
  CHECK(checkpointer.checkpoints() > 0);
  // One checkpoint per threshold's worth of new frames (~1500 × 2–3 frames / 64 here), not one
  // per commit while a WAL that busy writers keep from starting over stays long: that spun a
  // core in the server at 2 million checkpoints per 40,000 calls (bench/governance).
  INFO(checkpointer.checkpoints() << " checkpoints, " << checkpointer.restarts() << " restarts");
  CHECK(checkpointer.checkpoints() < 200);
  // The writer's bursts leave PASSIVE little chance to finish everything; the RESTART past 16
  // thresholds (~4 MB of frames here) bounds the WAL all the same, and should the thread be
  // starved (CI under load once let the WAL reach 9.4 MB), commits checkpoint past 24 (~6 MB).
  INFO(checkpointer.backstop_checkpoints() << " checkpoints by commits");
  CHECK(bounded < grown / 2);
  state::Database db(checked.path);
  state::Statement st(db.handle(), "SELECT COUNT(*) FROM t");
  REQUIRE(st.step());
  CHECK(st.column_int(0) == 1500);  // nothing lost to the checkpoints
}

TEST_CASE("wal checkpointer: a commit checkpoints itself once the thread has fallen far behind") {
  // A threshold never reached stands for a thread that never gets to run: only the backstop
  // (128 frames) checkpoints, so the bound below holds whatever the scheduler does.
  TempPath path;
  { state::Database create(path.path); }
  constexpr int backstop = 128;
  state::WalCheckpointer checkpointer(path.path, /*threshold_frames=*/1 << 30, backstop);
  std::uintmax_t high_water = write(path.path, &checkpointer);
  CHECK(checkpointer.checkpoints() == 0);
  CHECK(checkpointer.backstop_checkpoints() > 0);
  // The commit that reaches the backstop checkpoints; the next one starts the WAL over. A
  // frame is a 4 KiB page and its 24-byte header; a transaction here writes 2–3 of them.
  constexpr std::uintmax_t frame = 4096 + 24;
  INFO(checkpointer.backstop_checkpoints() << " checkpoints by commits");
  CHECK(high_water <= 32 + (backstop + 8) * frame);
  state::Database db(path.path);
  state::Statement st(db.handle(), "SELECT COUNT(*) FROM t");
  REQUIRE(st.step());
  CHECK(st.column_int(0) == 1500);
}
