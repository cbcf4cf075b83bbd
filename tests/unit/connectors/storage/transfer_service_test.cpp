// The transfer ledger between real directories: checksums, temporary names, overwrite, quotas,
// credits held and settled once, cancellation, claims, and restart with resume.
#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "connectors/storage/posix_storage.hpp"
#include "connectors/storage/transfer_service.hpp"
#include "server/common/crypto.hpp"
#include "server/state/database.hpp"
#include "tests/support/eventually.hpp"
#include "tests/support/files.hpp"
#include "tests/support/harness.hpp"

using namespace scigate;
using namespace scigate::storage;
namespace asio = boost::asio;
namespace fs = std::filesystem;
using scigate::test::eventually;

using scigate::test::random_bytes;
using scigate::test::slurp;
using scigate::test::write_file;

namespace {

int count_temp_files(const fs::path& root) {
  int n = 0;
  for (auto& e : fs::recursive_directory_iterator(root))
    if (PosixStorage::is_temp_name(e.path().filename().string())) ++n;
  return n;
}

struct Fixture {
  fs::path dir;
  Config config;
  test::CountingLedger ledger;
  std::unique_ptr<Areas> areas;
  explicit Fixture(const std::string& extra = "") {
    char tmpl[] = "/tmp/scigate-transfers-XXXXXX";
    dir = ::mkdtemp(tmpl);
    config = parse_config(R"(
[[projects]]
id = "p"
members = ["alice"]
[[projects]]
id = "q"
members = ["bob"]
[data]
max_concurrent = 2
)" + extra + R"(
[[data.areas]]
id = "scratch"
project = "*"
root = "areas/{project}/scratch"
[[data.areas]]
id = "small"
project = "p"
root = "areas/p/small"
quota_bytes = 100000
quota_files = 5
[[data.areas]]
id = "ro"
project = "p"
root = "areas/p/ro"
mode = "ro"
)",
                          dir, "t.toml");
    state::Database db(dir / "db");
    db.migrate(state::schema_migrations());
    ledger.rates["gb_staged"] = 1'000'000;  // one credit per GB
    ledger.balance = 1'000'000'000;
    areas = std::make_unique<Areas>(config.data);
  }
  ~Fixture() { fs::remove_all(dir); }
  fs::path scratch(const std::string& project = "p") { return dir / "areas" / project / "scratch"; }
  std::unique_ptr<TransferService> service() {
    return std::make_unique<TransferService>(config, dir / "db", ledger, *areas);
  }
};

struct Running {
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
  std::thread thread;
  TransferService& svc;
  explicit Running(TransferService& s) : svc(s) {
    svc.start(io);
    thread = std::thread([this] { io.run(); });
  }
  ~Running() {
    work.reset();
    io.stop();
    thread.join();
    svc.stop();
  }
  std::variant<TransferRecord, Error> stage(StageRequest req) {
    return asio::co_spawn(io, svc.stage(std::move(req)), asio::use_future).get();
  }
  std::variant<TransferRecord, Error> cancel(const std::string& id) {
    return asio::co_spawn(io, svc.cancel("p", id), asio::use_future).get();
  }
};

StageRequest request(const std::string& src, const std::string& dst) {
  StageRequest r;
  r.project = "p";
  r.principal = "alice";
  r.source = src;
  r.destination = dst;
  return r;
}

TransferRecord staged(Running& r, StageRequest req) {
  auto v = r.stage(std::move(req));
  if (auto* e = std::get_if<Error>(&v)) FAIL(e->message);
  return std::get<TransferRecord>(v);
}

TransferRecord wait_final(TransferService& svc, const std::string& id, std::chrono::seconds limit = std::chrono::seconds(30)) {
  REQUIRE(eventually([&] { return is_final(svc.get("p", id)->state); }, limit));
  // The settlement follows the final state.
  REQUIRE(eventually([&] { return svc.get("p", id)->settled; }));
  return *svc.get("p", id, true);
}

Error error_of(const std::variant<TransferRecord, Error>& v) {
  REQUIRE(std::holds_alternative<Error>(v));
  return std::get<Error>(v);
}

}  // namespace

TEST_CASE("transfers: a file is copied, checksummed, renamed into place and charged by bytes", "[data][transfers]") {
  Fixture f;
  std::string data = random_bytes(9'000'000);  // more than two 4 MiB pieces: the pipelined path
  write_file(f.scratch() / "in" / "big.bin", data);
  auto svc = f.service();
  Running r(*svc);
  auto req = request("area://scratch/in/big.bin", "area://scratch/out/");
  req.expected_sha256 = crypto::sha256_hex(data);
  auto t = staged(r, req);
  CHECK(t.id.rfind("x-", 0) == 0);
  CHECK(t.bytes_total == 9'000'000);
  CHECK(t.held == 9'000);  // 0.009 GB x 1 credit
  auto done = wait_final(*svc, t.id);
  CHECK(done.state == TransferState::kCompleted);
  CHECK(done.sha256 == crypto::sha256_hex(data));
  CHECK(done.bytes_done == 9'000'000);
  CHECK(done.files_done == 1);
  CHECK(slurp(f.scratch() / "out" / "big.bin") == data);
  CHECK(count_temp_files(f.scratch()) == 0);
  CHECK(done.cost == 9'000);
  CHECK(f.ledger.settled == 1);

  // A small file through the one-piece path, to a named destination.
  write_file(f.scratch() / "in" / "small.txt", "hello");
  auto s = wait_final(*svc, staged(r, request("area://scratch/in/small.txt", "area://scratch/renamed.txt")).id);
  CHECK(s.sha256 == crypto::sha256_hex("hello"));
  CHECK(slurp(f.scratch() / "renamed.txt") == "hello");
}

TEST_CASE("transfers: directories with include and exclude globs, links skipped", "[data][transfers]") {
  Fixture f;
  write_file(f.scratch() / "run" / "a.h5", "aaa");
  write_file(f.scratch() / "run" / "b.txt", "bb");
  write_file(f.scratch() / "run" / "sub" / "c.h5", "c");
  write_file(f.scratch() / "run" / ".git" / "config", "x");
  write_file(f.scratch() / "run" / "tmp" / "d.h5", "d");
  fs::create_symlink("/etc/passwd", f.scratch() / "run" / "link.h5");
  auto svc = f.service();
  Running r(*svc);
  auto req = request("area://scratch/run", "area://scratch/copy");
  req.recursive = true;
  req.include = {"*.h5"};
  req.exclude = {"tmp", ".git"};
  auto t = staged(r, req);
  CHECK(t.directory);
  CHECK(t.files_total == 2);
  auto done = wait_final(*svc, t.id);
  INFO(done.error_message);
  CHECK(done.state == TransferState::kCompleted);
  CHECK(done.files_done == 2);
  CHECK(done.files_skipped == 1);  // the link
  CHECK(slurp(f.scratch() / "copy" / "a.h5") == "aaa");
  CHECK(slurp(f.scratch() / "copy" / "sub" / "c.h5") == "c");
  CHECK_FALSE(fs::exists(f.scratch() / "copy" / "b.txt"));
  CHECK_FALSE(fs::exists(f.scratch() / "copy" / "tmp"));
  CHECK_FALSE(fs::exists(f.scratch() / "copy" / "link.h5"));
  REQUIRE(done.files.size() == 2);
  CHECK(done.files[0].path == "a.h5");
  CHECK(done.files[0].sha256 == crypto::sha256_hex("aaa"));

  // Without recursive a directory is refused; into itself too.
  CHECK(error_of(r.stage(request("area://scratch/run", "area://scratch/x"))).code == ErrorCode::kInvalidArguments);
  auto inside = request("area://scratch/run", "area://scratch/run/deeper");
  inside.recursive = true;
  CHECK(error_of(r.stage(inside)).message.find("inside the source") != std::string::npos);

  // Again with overwrite = skip: everything is already there.
  auto again = req;
  again.overwrite = OverwritePolicy::kSkip;
  auto skipped = wait_final(*svc, staged(r, again).id);
  CHECK(skipped.state == TransferState::kCompleted);
  CHECK(skipped.files_skipped == 3);
  // And with never: the first existing file fails it.
  auto conflict = wait_final(*svc, staged(r, req).id);
  CHECK(conflict.state == TransferState::kFailed);
  CHECK(conflict.error_code == "conflict");
}

TEST_CASE("transfers: overwrite policy, checksum mismatch, refused ends", "[data][transfers]") {
  Fixture f;
  write_file(f.scratch() / "a.txt", "new");
  write_file(f.scratch() / "b.txt", "old");
  auto svc = f.service();
  Running r(*svc);
  CHECK(error_of(r.stage(request("area://scratch/a.txt", "area://scratch/b.txt"))).code == ErrorCode::kConflict);
  auto skip = request("area://scratch/a.txt", "area://scratch/b.txt");
  skip.overwrite = OverwritePolicy::kSkip;
  auto s = wait_final(*svc, staged(r, skip).id);
  CHECK(s.state == TransferState::kCompleted);
  CHECK(s.files_skipped == 1);
  CHECK(slurp(f.scratch() / "b.txt") == "old");
  auto always = request("area://scratch/a.txt", "area://scratch/b.txt");
  always.overwrite = OverwritePolicy::kAlways;
  CHECK(wait_final(*svc, staged(r, always).id).state == TransferState::kCompleted);
  CHECK(slurp(f.scratch() / "b.txt") == "new");

  auto bad = request("area://scratch/a.txt", "area://scratch/c.txt");
  bad.expected_sha256 = std::string(64, '0');
  auto m = wait_final(*svc, staged(r, bad).id);
  CHECK(m.state == TransferState::kFailed);
  CHECK(m.error_code == "integrity_failed");
  CHECK(m.error_message.find("not the expected") != std::string::npos);
  CHECK_FALSE(fs::exists(f.scratch() / "c.txt"));
  CHECK(count_temp_files(f.scratch()) == 0);

  CHECK(error_of(r.stage(request("area://scratch/../q/x", "area://scratch/y"))).code == ErrorCode::kForbidden);
  CHECK(error_of(r.stage(request("area://scratch/a.txt", "area://ro/a.txt"))).code == ErrorCode::kForbidden);
  CHECK(error_of(r.stage(request("area://nope/a.txt", "area://scratch/z"))).code == ErrorCode::kNotFound);
  CHECK(error_of(r.stage(request("area://scratch/missing", "area://scratch/z"))).code == ErrorCode::kNotFound);
  // A transfer's temporary name is not a destination (another transfer's file in flight).
  auto temp = error_of(r.stage(request("area://scratch/a.txt", "area://scratch/.scigate-t1-0123456789abcdef.part")));
  CHECK(temp.code == ErrorCode::kInvalidArguments);
  CHECK(temp.message.find("form scigate uses") != std::string::npos);
  std::string deep = "area://scratch";
  for (int i = 0; i < 70; ++i) deep += "/d";
  CHECK(error_of(r.stage(request("area://scratch/a.txt", deep + "/x"))).message.find("deeper than 64") != std::string::npos);
  fs::create_symlink(f.scratch() / "a.txt", f.scratch() / "link.txt");
  CHECK(error_of(r.stage(request("area://scratch/link.txt", "area://scratch/z"))).code == ErrorCode::kForbidden);
  // Project q cannot reach p's areas: its own scratch is another directory.
  auto q = request("area://scratch/a.txt", "area://scratch/z");
  q.project = "q";
  CHECK(error_of(r.stage(q)).code == ErrorCode::kNotFound);
}

TEST_CASE("transfers: quotas are checked before and credits refused before anything moves", "[data][transfers]") {
  Fixture f;
  write_file(f.scratch() / "big.bin", random_bytes(150'000));
  write_file(f.scratch() / "ok.bin", random_bytes(60'000));
  auto svc = f.service();
  Running r(*svc);
  auto over = error_of(r.stage(request("area://scratch/big.bin", "area://small/big.bin")));
  CHECK(over.code == ErrorCode::kQuotaExceeded);
  CHECK(over.message.find("quota") != std::string::npos);
  auto first = wait_final(*svc, staged(r, request("area://scratch/ok.bin", "area://small/one.bin")).id);
  CHECK(first.state == TransferState::kCompleted);
  // 60 kB used of 100 kB: a second 60 kB no longer fits.
  CHECK(error_of(r.stage(request("area://scratch/ok.bin", "area://small/two.bin"))).code == ErrorCode::kQuotaExceeded);

  f.ledger.balance = 0;
  auto broke = error_of(r.stage(request("area://scratch/big.bin", "area://scratch/copy.bin")));
  CHECK(broke.code == ErrorCode::kInsufficientCredits);
  CHECK_FALSE(fs::exists(f.scratch() / "copy.bin"));
}

TEST_CASE("transfers: cancel mid-transfer leaves no partial file and pays for what moved", "[data][transfers]") {
  Fixture f("max_bytes_per_s = 50000000\n");
  write_file(f.scratch() / "huge.bin", random_bytes(100'000'000));
  auto svc = f.service();
  Running r(*svc);
  auto t = staged(r, request("area://scratch/huge.bin", "area://scratch/copy.bin"));
  REQUIRE(eventually([&] { return svc->get("p", t.id)->bytes_done > 0; }));
  auto c = r.cancel(t.id);
  REQUIRE(std::holds_alternative<TransferRecord>(c));
  auto done = wait_final(*svc, t.id);
  CHECK(done.state == TransferState::kCanceled);
  CHECK_FALSE(fs::exists(f.scratch() / "copy.bin"));
  CHECK(count_temp_files(f.scratch()) == 0);
  CHECK(done.cost.value_or(-1) <= done.held);
  // Cancelling an ended transfer changes nothing; another project's is not found.
  CHECK(std::get<TransferRecord>(r.cancel(t.id)).state == TransferState::kCanceled);
  CHECK(error_of(asio::co_spawn(r.io, svc->cancel("q", t.id), asio::use_future).get()).code == ErrorCode::kNotFound);
}

TEST_CASE("transfers: two transfers never write one destination at once", "[data][transfers]") {
  Fixture f("max_bytes_per_s = 50000000\n");
  write_file(f.scratch() / "huge.bin", random_bytes(100'000'000));
  write_file(f.scratch() / "small.bin", "x");
  auto svc = f.service();
  Running r(*svc);
  auto t = staged(r, request("area://scratch/huge.bin", "area://scratch/dest/file.bin"));
  auto clash = error_of(r.stage(request("area://scratch/small.bin", "area://scratch/dest/file.bin")));
  CHECK(clash.code == ErrorCode::kConflict);
  CHECK(clash.message.find(t.id) != std::string::npos);
  // A directory transfer into the directory that holds it.
  write_file(f.scratch() / "srcdir" / "x.bin", "x");
  auto dir = request("area://scratch/srcdir", "area://scratch/dest");
  dir.recursive = true;
  CHECK(error_of(r.stage(dir)).code == ErrorCode::kConflict);
  // Elsewhere is fine.
  CHECK(wait_final(*svc, staged(r, request("area://scratch/small.bin", "area://scratch/other.bin")).id).state ==
        TransferState::kCompleted);
  r.cancel(t.id);
  wait_final(*svc, t.id);
  // Once it ended, the destination is free again.
  CHECK(wait_final(*svc, staged(r, request("area://scratch/small.bin", "area://scratch/dest/file.bin")).id).state ==
        TransferState::kCompleted);
}

TEST_CASE("transfers: a restart resumes a transfer in flight and settles its hold once", "[data][transfers]") {
  Fixture f("max_bytes_per_s = 50000000\n");
  std::string data = random_bytes(100'000'000, 7);
  write_file(f.scratch() / "huge.bin", data);
  std::string id;
  {
    auto svc = f.service();
    Running r(*svc);
    id = staged(r, request("area://scratch/huge.bin", "area://scratch/copy.bin")).id;
    REQUIRE(eventually([&] { return svc->get("p", id)->bytes_done > 20'000'000; }));
    // The server stops (Running's destructor calls stop()): the transfer stays in flight.
  }
  CHECK(count_temp_files(f.scratch()) == 1);
  CHECK(f.ledger.settled == 0);
  {
    state::Database db(f.dir / "db");
    state::Statement st(db.handle(), "SELECT state, attempts FROM transfers WHERE id = ?");
    st.bind(1, id);
    REQUIRE(st.step());
    CHECK(st.column_text(0) == "ACTIVE");
  }
  auto svc = f.service();
  Running r(*svc);
  auto done = wait_final(*svc, id, std::chrono::seconds(60));
  INFO(done.error_message);
  CHECK(done.state == TransferState::kCompleted);
  CHECK(done.attempts == 2);
  CHECK(done.sha256 == crypto::sha256_hex(data));
  CHECK(slurp(f.scratch() / "copy.bin") == data);
  CHECK(count_temp_files(f.scratch()) == 0);
  CHECK(f.ledger.settled == 1);
  CHECK(done.cost == done.held);
}

TEST_CASE("transfers: interrupted too often, a transfer fails cleanly at start", "[data][transfers]") {
  Fixture f("max_attempts = 1\nmax_bytes_per_s = 50000000\n");
  write_file(f.scratch() / "huge.bin", random_bytes(100'000'000, 3));
  std::string id;
  {
    auto svc = f.service();
    Running r(*svc);
    id = staged(r, request("area://scratch/huge.bin", "area://scratch/copy.bin")).id;
    REQUIRE(eventually([&] { return svc->get("p", id)->bytes_done > 0; }));
  }
  auto svc = f.service();
  Running r(*svc);
  auto done = wait_final(*svc, id);
  CHECK(done.state == TransferState::kFailed);
  CHECK(done.error_message.find("interrupted") != std::string::npos);
  CHECK_FALSE(fs::exists(f.scratch() / "copy.bin"));
  CHECK(count_temp_files(f.scratch()) == 0);
  CHECK(f.ledger.settled == 1);
}

TEST_CASE("transfers: glob selection", "[data][transfers]") {
  CHECK(selected("a/b/c.h5", {"*.h5"}, {}));
  CHECK_FALSE(selected("a/b/c.txt", {"*.h5"}, {}));
  CHECK(selected("a/b/c.txt", {}, {}));
  CHECK_FALSE(selected("a/b/c.h5", {"*.h5"}, {"c.*"}));
  CHECK(selected("data/x/y.h5", {"data/*"}, {}));
  CHECK_FALSE(selected("other/y.h5", {"data/*"}, {}));
  CHECK_FALSE(selected(".hidden", {"*"}, {}));  // a leading dot is matched only explicitly
}

TEST_CASE("transfers: migration 10 carries per-file rows of migration 9 over into batches", "[data][transfers]") {
  char tmpl[] = "/tmp/scigate-migrate-XXXXXX";
  fs::path dir = ::mkdtemp(tmpl);
  {
    state::Database db(dir / "db");
    auto all = state::schema_migrations();
    std::vector<state::Migration> upto9;
    for (const auto& m : all)
      if (m.version <= 9) upto9.push_back(m);
    db.migrate(upto9);
    db.exec("INSERT INTO transfers(id, project, principal, source, destination, options, state, created_ms) "
            "VALUES ('x-000000000001', 'p', 'alice', 'area://a/d', 'area://b/d', '{}', 'ACTIVE', 1)");
    db.exec("INSERT INTO transfer_files VALUES ('x-000000000001', 'b.txt', 2, 'bb', 'copied'), "
            "('x-000000000001', 'a.txt', 1, 'aa', 'copied'), ('x-000000000001', 'c.txt', 0, '', 'skipped')");
    db.migrate(all);
    state::Statement st(db.handle(), "SELECT batch, files FROM transfer_files ORDER BY batch");
    std::vector<std::string> rows;
    while (st.step()) rows.push_back(std::to_string(st.column_int(0)) + " " + st.column_text(1));
    REQUIRE(rows.size() == 3);
    CHECK(rows[0] == R"(0 [["a.txt",1,"aa",false]])");
    CHECK(rows[1] == R"(1 [["b.txt",2,"bb",false]])");
    CHECK(rows[2] == R"(2 [["c.txt",0,"",true]])");
  }
  fs::remove_all(dir);
}

// Areas::write, the one-shot write tools use (embed's save_to): the same confinement, quota and
// temporary-name rules as a transfer.
TEST_CASE("areas: write lands a whole file under its name, within quota, never over another", "[data]") {
  Fixture f;
  asio::io_context io;
  auto write = [&](const std::string& project, const std::string& uri, std::string bytes) {
    auto where = std::get<Location>(parse_location(uri));
    auto fut = asio::co_spawn(io, f.areas->write(project, where, std::make_shared<const std::string>(std::move(bytes))),
                              asio::use_future);
    io.restart();
    io.run();
    return fut.get();
  };
  auto ok = write("p", "area://scratch/out/a.jsonl", "[1,2]\n");
  REQUIRE(std::holds_alternative<WriteResult>(ok));
  CHECK(std::get<WriteResult>(ok).bytes == 6);
  CHECK(std::get<WriteResult>(ok).sha256 == crypto::sha256_hex("[1,2]\n"));
  CHECK(slurp(f.scratch() / "out" / "a.jsonl") == "[1,2]\n");
  // The same name again: a conflict, the file as it was, no temporary left behind.
  auto again = write("p", "area://scratch/out/a.jsonl", "other");
  REQUIRE(std::holds_alternative<Error>(again));
  CHECK(std::get<Error>(again).code == ErrorCode::kConflict);
  CHECK(slurp(f.scratch() / "out" / "a.jsonl") == "[1,2]\n");
  CHECK(count_temp_files(f.scratch()) == 0);
  // Over the area's quota (100,000 bytes): refused, nothing written.
  auto big = write("p", "area://small/big.bin", std::string(150'000, 'x'));
  REQUIRE(std::holds_alternative<Error>(big));
  CHECK(std::get<Error>(big).code == ErrorCode::kQuotaExceeded);
  CHECK_FALSE(fs::exists(f.dir / "areas" / "p" / "small" / "big.bin"));
  // Read-only area, a path out of the area, a URL: refused by check_write before any I/O.
  CHECK(std::get<Error>(write("p", "area://ro/x", "x")).code == ErrorCode::kForbidden);
  CHECK(std::get<Error>(write("p", "area://scratch/../../../etc/x", "x")).code == ErrorCode::kForbidden);
  CHECK(std::get<Error>(write("p", "https://example.org/x", "x")).code == ErrorCode::kInvalidArguments);
  CHECK(f.areas->check_write("q", std::get<Location>(parse_location("area://small/x"))).value().code ==
        ErrorCode::kNotFound);  // another project's area does not exist for q
  CHECK_FALSE(f.areas->check_write("p", std::get<Location>(parse_location("area://scratch/new/file"))).has_value());
}

TEST_CASE("locations: read one way by policy and by storage or libcurl, or refused") {
  auto error_of = [](const std::string& uri) {
    auto r = parse_location(uri);
    return std::holds_alternative<Error>(r) ? std::get<Error>(r).message : std::string();
  };
  // A path that starts with '/' would be an absolute path to storage but area://a/x to a prefix rule.
  CHECK_THAT(error_of("area://scratch//tmp/secret"), Catch::Contains("relative to the area"));
  CHECK(std::get<Location>(parse_location("area://scratch/a//b")).path == "a//b");  // (normalised the same by both)
  // Hosts libcurl would rewrite before connecting: percent-escapes, IPv4 shorthands, odd bytes.
  CHECK_THAT(error_of("http://127.0.0.%31:8080/f"), Catch::Contains("percent-encoded"));
  CHECK_THAT(error_of("https://intern%61l.example.org/f"), Catch::Contains("percent-encoded"));
  CHECK_THAT(error_of("http://127.1/f"), Catch::Contains("shorthand"));
  CHECK_THAT(error_of("http://0x7f.0.0.1/f"), Catch::Contains("shorthand"));
  CHECK_THAT(error_of("http://2130706433/f"), Catch::Contains("shorthand"));
  CHECK_THAT(error_of("http://0177.0.0.1/f"), Catch::Contains("shorthand"));
  CHECK_THAT(error_of("https://internal.example.org./f"), Catch::Contains("empty label"));
  CHECK_THAT(error_of("https://b\xc3\xbc" "cher.example/f"), Catch::Contains("ASCII"));
  CHECK_THAT(error_of("http://[fe80::1%25eth0]/f"), Catch::Contains("percent-encoded"));
  CHECK_THAT(error_of("http://[nothex]/f"), Catch::Contains("IPv6"));
  // The plain forms pass, with the host a policy compares.
  CHECK(std::get<Location>(parse_location("http://127.0.0.1:8080/f")).host == "127.0.0.1");
  CHECK(std::get<Location>(parse_location("https://Data.Example.ORG/x?y=%41")).host == "data.example.org");
  CHECK(std::get<Location>(parse_location("http://[::1]:80/f")).host == "::1");
}
