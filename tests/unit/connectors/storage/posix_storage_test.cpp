// The POSIX storage connector on real directories: confinement (traversal, symlinks out,
// links swapped in, hard links, devices and FIFOs), temporary names and commit, listing.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <variant>

#include "connectors/storage/file_copy.hpp"
#include "connectors/storage/posix_storage.hpp"
#include "server/common/crypto.hpp"
#include "tests/support/files.hpp"

using namespace scigate;
using namespace scigate::storage;
namespace fs = std::filesystem;

using scigate::test::slurp;
using scigate::test::write_file;

namespace {

struct TempDir : scigate::test::TempDir {
  TempDir() : scigate::test::TempDir("storage") {}
};

AreaConfig area(const fs::path& root, bool writable = true) {
  AreaConfig a;
  a.id = "scratch";
  a.project = "p";
  a.root = root;
  a.writable = writable;
  return a;
}

ErrorCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ErrorException& e) {
    return e.error().code;
  }
  FAIL("no error");
  return ErrorCode::kInternal;
}

std::string read_all(Reader& r) {
  std::string out(static_cast<std::size_t>(r.info().size) + 16, '\0');
  std::size_t n = r.read_at(out.data(), out.size(), 0);
  out.resize(n);
  return out;
}

}  // namespace

TEST_CASE("posix storage: stat, read and list files beneath the root", "[storage]") {
  TempDir root;
  write_file(root.path / "run1" / "input.txt", "hello");
  write_file(root.path / "top.txt", "top");
  PosixStorage s(area(root.path));
  auto info = s.stat("run1/input.txt");
  CHECK(info.type == FileType::kFile);
  CHECK(info.size == 5);
  CHECK(info.path == "run1/input.txt");
  CHECK(s.stat("run1").type == FileType::kDirectory);
  CHECK(s.stat("").type == FileType::kDirectory);
  CHECK(s.stat("./run1//input.txt").path == "run1/input.txt");
  auto r = s.open_read("run1/input.txt");
  CHECK(read_all(*r) == "hello");
  // An absolute path beneath the root is accepted as the same file.
  CHECK(s.stat((root.path / "top.txt").string()).size == 3);
  CHECK(code_of([&] { s.stat("missing"); }) == ErrorCode::kNotFound);
  CHECK(code_of([&] { s.open_read("run1"); }) == ErrorCode::kInvalidArguments);
  auto page = s.list("", "", 10);
  REQUIRE(page.entries.size() == 2);
  CHECK(page.entries[0].name == "run1");
  CHECK(page.entries[1].name == "top.txt");
  CHECK_FALSE(page.more);
}

TEST_CASE("posix storage: traversal with .. and absolute paths elsewhere is refused", "[storage]") {
  TempDir base;
  fs::create_directories(base.path / "area");
  write_file(base.path / "secret.txt", "secret");
  PosixStorage s(area(base.path / "area"));
  for (std::string p : std::vector<std::string>{"../secret.txt", "a/../../secret.txt", "/etc/passwd",
                                               (base.path / "secret.txt").string(), "..", "x/.."}) {
    INFO(p);
    CHECK(code_of([&] { s.open_read(p); }) == ErrorCode::kForbidden);
    CHECK(code_of([&] { s.stat(p); }) == ErrorCode::kForbidden);
    CHECK(code_of([&] { s.open_write(p, "t1", false); }) == ErrorCode::kForbidden);
  }
  CHECK(code_of([&] { s.open_read(std::string("a\nb")); }) == ErrorCode::kForbidden);
}

TEST_CASE("posix storage: symlinks out of the area are refused, links are never followed at the leaf", "[storage]") {
  TempDir root, outside;
  write_file(outside.path / "secret.txt", "secret");
  write_file(root.path / "real" / "data.txt", "data");
  fs::create_directory_symlink(outside.path, root.path / "out");
  fs::create_symlink(outside.path / "secret.txt", root.path / "leak.txt");
  fs::create_symlink("real/data.txt", root.path / "inside-link.txt");
  fs::create_directory_symlink("real", root.path / "alias");
  fs::create_directory_symlink("../../", root.path / "real" / "up");
  PosixStorage s(area(root.path));

  CHECK(code_of([&] { s.open_read("out/secret.txt"); }) == ErrorCode::kForbidden);
  CHECK(code_of([&] { s.stat("out/secret.txt"); }) == ErrorCode::kForbidden);
  CHECK(code_of([&] { s.list("out", "", 10); }) == ErrorCode::kForbidden);
  CHECK(code_of([&] { s.open_read("real/up/secret.txt"); }) == ErrorCode::kForbidden);
  CHECK(code_of([&] { s.open_read("leak.txt"); }) == ErrorCode::kForbidden);
  // A link at the leaf is described, not followed, even when it stays inside.
  CHECK(s.stat("leak.txt").type == FileType::kSymlink);
  CHECK(code_of([&] { s.open_read("inside-link.txt"); }) == ErrorCode::kForbidden);
  // A directory link that stays inside the area resolves (the kernel keeps it beneath the root).
  auto r = s.open_read("alias/data.txt");
  CHECK(read_all(*r) == "data");
  // Writing through a link out is refused, and nothing lands outside.
  CHECK(code_of([&] { s.open_write("out/new.txt", "t1", false); }) == ErrorCode::kForbidden);
  CHECK_FALSE(fs::exists(outside.path / "new.txt"));
  // The walk lists links and does not descend into them.
  std::set<std::string> seen;
  s.walk("", [&](const FileInfo& f) {
    seen.insert(f.path);
    return Storage::Walk::kNext;
  });
  CHECK(seen.count("out"));
  CHECK_FALSE(seen.count("out/secret.txt"));
  CHECK(seen.count("real/data.txt"));
  CHECK_FALSE(seen.count("alias/data.txt"));
}

TEST_CASE("posix storage: hard links, FIFOs and devices are not read", "[storage]") {
  TempDir root, outside;
  write_file(outside.path / "secret.txt", "secret");
  REQUIRE(::link((outside.path / "secret.txt").c_str(), (root.path / "hard.txt").c_str()) == 0);
  REQUIRE(::mkfifo((root.path / "fifo").c_str(), 0644) == 0);
  bool have_device = ::mknod((root.path / "null").c_str(), S_IFCHR | 0644, makedev(1, 3)) == 0;
  PosixStorage s(area(root.path));
  CHECK(code_of([&] { s.open_read("hard.txt"); }) == ErrorCode::kForbidden);
  CHECK(s.stat("hard.txt").nlink == 2);
  // A FIFO is refused without blocking (nobody writes to it).
  CHECK(code_of([&] { s.open_read("fifo"); }) == ErrorCode::kForbidden);
  CHECK(s.stat("fifo").type == FileType::kOther);
  if (have_device) CHECK(code_of([&] { s.open_read("null"); }) == ErrorCode::kForbidden);

  AreaConfig lenient = area(root.path);
  lenient.allow_hard_links = true;
  PosixStorage l(lenient);
  auto r = l.open_read("hard.txt");
  CHECK(read_all(*r) == "secret");
}

TEST_CASE("posix storage: writes land under a temporary name and are renamed into place", "[storage]") {
  TempDir root;
  PosixStorage s(area(root.path));
  auto w = s.open_write("out/sub/result.bin", "x-1", false);
  CHECK(w->existing_size() == 0);
  w->write_at("abc", 3, 0);
  w->write_at("def", 3, 3);
  // Before the commit: no file under the final name, and list() hides the temporary one.
  CHECK_FALSE(fs::exists(root.path / "out" / "sub" / "result.bin"));
  CHECK(s.list("out/sub", "", 10).entries.empty());
  int files = 0;
  for (auto& e : fs::directory_iterator(root.path / "out" / "sub")) files += e.is_regular_file();
  CHECK(files == 1);
  w->commit(Overwrite::kNever);
  CHECK(slurp(root.path / "out" / "sub" / "result.bin") == "abcdef");
  CHECK(s.list("out/sub", "", 10).entries.size() == 1);

  // kNever leaves an existing file alone; kAlways replaces it.
  auto w2 = s.open_write("out/sub/result.bin", "x-2", false);
  w2->write_at("new", 3, 0);
  CHECK(code_of([&] { w2->commit(Overwrite::kNever); }) == ErrorCode::kConflict);
  CHECK(slurp(root.path / "out" / "sub" / "result.bin") == "abcdef");
  w2->discard();
  auto w3 = s.open_write("out/sub/result.bin", "x-3", false);
  w3->write_at("new", 3, 0);
  w3->commit(Overwrite::kAlways);
  CHECK(slurp(root.path / "out" / "sub" / "result.bin") == "new");
  files = 0;
  for (auto& e : fs::directory_iterator(root.path / "out" / "sub")) files += e.is_regular_file();
  CHECK(files == 1);  // no temporary file left behind

  // A resumed write finds what the earlier attempt wrote; discard removes it.
  {
    auto part = s.open_write("resume.bin", "x-4", false);
    part->write_at("12345", 5, 0);
  }
  auto again = s.open_write("resume.bin", "x-4", true);
  CHECK(again->existing_size() == 5);
  char buf[8] = {};
  CHECK(again->read_back(buf, sizeof buf, 0) == 5);
  again->discard();
  CHECK(s.list("", "", 10).entries.size() == 1);  // out/
  auto fresh = s.open_write("resume.bin", "x-4", true);
  CHECK(fresh->existing_size() == 0);
  fresh->discard();
  s.discard_temp("resume.bin", "x-4");
}

TEST_CASE("posix storage: a directory swapped for a link during a write keeps the data inside", "[storage]") {
  TempDir root, outside;
  PosixStorage s(area(root.path));
  auto w = s.open_write("d/f.txt", "x-9", false);
  w->write_at("data", 4, 0);
  // The attacker moves d away and puts a link to the outside in its place.
  fs::rename(root.path / "d", root.path / "moved");
  fs::create_directory_symlink(outside.path, root.path / "d");
  w->commit(Overwrite::kNever);
  CHECK(fs::is_empty(outside.path));
  CHECK(slurp(root.path / "moved" / "f.txt") == "data");
  // A new write through the link is refused.
  CHECK(code_of([&] { s.open_write("d/g.txt", "x-10", false); }) == ErrorCode::kForbidden);
  CHECK(fs::is_empty(outside.path));
}

TEST_CASE("posix storage: read-only areas, usage and paged listing", "[storage]") {
  TempDir root;
  for (int i = 0; i < 250; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "f%03d", i);
    write_file(root.path / "many" / name, std::string(10, 'x'));
  }
  PosixStorage ro(area(root.path, false));
  CHECK(code_of([&] { ro.open_write("x", "t", false); }) == ErrorCode::kForbidden);
  CHECK(code_of([&] { ro.make_dirs("x"); }) == ErrorCode::kForbidden);
  auto u = ro.usage();
  CHECK(u.bytes == 2500);
  CHECK(u.files == 251);
  CHECK(u.complete);
  // Measured again (the quota's periodic scan), it finds the same: the walk does not use up
  // the area's kept root descriptor.
  auto again = ro.usage();
  CHECK(again.bytes == 2500);
  CHECK(again.files == 251);
  // Nested deeper than the walk goes: the figure is marked incomplete (a quota then refuses
  // writes) rather than silently leaving out what lies below.
  std::filesystem::path deep = root.path;
  for (int i = 0; i <= kMaxUsageDepth + 1; ++i) deep /= "d";
  write_file(deep / "below.bin", std::string(100, 'x'));
  auto nested = PosixStorage(area(root.path, false)).usage();
  CHECK_FALSE(nested.complete);
  std::vector<std::string> names;
  std::string after;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = ro.list("many", after, 100);
    for (auto& e : page.entries) names.push_back(e.name);
    if (!page.more) break;
    after = page.entries.back().name;
  }
  REQUIRE(names.size() == 250);
  CHECK(names.front() == "f000");
  CHECK(names.back() == "f249");
  CHECK(std::is_sorted(names.begin(), names.end()));
}

TEST_CASE("posix storage: discard_temps removes one transfer's temporary files beneath a directory", "[storage]") {
  TempDir root;
  PosixStorage s(area(root.path));
  { auto w = s.open_write("out/a/x.bin", "x-1", false); w->write_at("1", 1, 0); }
  { auto w = s.open_write("out/b/c/y.bin", "x-1", false); w->write_at("2", 1, 0); }
  { auto w = s.open_write("out/a/z.bin", "x-2", false); w->write_at("3", 1, 0); }
  write_file(root.path / "out" / "a" / "kept.txt", "k");
  auto temps = [&] {
    int n = 0;
    for (auto& e : fs::recursive_directory_iterator(root.path))
      if (PosixStorage::is_temp_name(e.path().filename().string())) ++n;
    return n;
  };
  REQUIRE(temps() == 3);
  s.discard_temps("out", "x-1");
  CHECK(temps() == 1);  // x-2's stays
  CHECK(fs::exists(root.path / "out" / "a" / "kept.txt"));
  s.discard_temps("out", "x-2");
  CHECK(temps() == 0);
}

TEST_CASE("posix storage: an upload's source sends exactly its planned length, or fails if the file changed", "[storage]") {
  TempDir root;
  write_file(root.path / "log.txt", std::string(3000, 'a'));
  PosixStorage st(area(root.path, false));
  auto send = [&](int64_t planned) -> std::variant<std::string, Error> {
    auto reader = st.open_read("log.txt");
    crypto::Sha256 hash;
    ChunkSource source(*reader, hash, 1 << 20, planned);
    std::string got;
    try {
      source.run(CopyHooks{});
    } catch (const ErrorException& e) {
      return e.error();
    }
    char buf[4096];
    for (long n; (n = source.take(buf, sizeof buf)) > 0;) got.append(buf, static_cast<std::size_t>(n));
    return got;
  };
  auto exact = send(3000);
  REQUIRE(std::holds_alternative<std::string>(exact));
  CHECK(std::get<std::string>(exact).size() == 3000);
  // Planned at 1000 bytes, 3000 now (a log still being written): not 1000 bytes sent and the
  // hash of 3000 recorded, nor a reader that fills its buffer and waits forever.
  auto grew = send(1000);
  REQUIRE(std::holds_alternative<Error>(grew));
  CHECK_THAT(std::get<Error>(grew).message, Catch::Contains("grew past the 1000 bytes"));
  auto shrank = send(5000);
  REQUIRE(std::holds_alternative<Error>(shrank));
  CHECK_THAT(std::get<Error>(shrank).message, Catch::Contains("shrank to 3000"));
}
