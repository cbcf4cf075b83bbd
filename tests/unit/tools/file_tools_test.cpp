// list_files, stat_file and read_file against real directories: what an agent sees, and what
// it is refused (another project's area, traversal, links out, binary and truncated files).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "server/common/crypto.hpp"
#include "tests/support/run_blocking.hpp"
#include "tools/data/file_tools.hpp"

using namespace scigate;
using namespace scigate::tools;
namespace fs = std::filesystem;
using scigate::test::run_blocking;

namespace {

struct Fixture {
  fs::path dir;
  Config config;
  std::unique_ptr<storage::Areas> areas;
  Fixture() {
    char tmpl[] = "/tmp/scigate-filetools-XXXXXX";
    dir = ::mkdtemp(tmpl);
    config = parse_config(R"(
[[projects]]
id = "p"
members = ["alice"]
[[projects]]
id = "q"
members = ["bob"]
[[data.areas]]
id = "scratch"
project = "*"
root = "areas/{project}"
quota_bytes = 1000000
[[data.areas]]
id = "datasets"
root = "shared"
mode = "ro"
readers = ["p"]
create = false
)",
                          dir, "t.toml");
    fs::create_directories(dir / "shared");
    fs::create_directories(dir / "areas" / "p" / "run");
    fs::create_directories(dir / "areas" / "q");
    std::ofstream(dir / "areas" / "p" / "run" / "log.txt") << "line one\nline two\n";
    std::ofstream(dir / "areas" / "q" / "private.txt") << "q's data";
    std::ofstream(dir / "shared" / "ref.txt") << "reference";
    std::string bin("\x01\x02\x00\xff\xfe text", 10);
    std::ofstream(dir / "areas" / "p" / "bin.dat", std::ios::binary) << bin;
    std::ofstream(dir / "areas" / "p" / "big.txt") << std::string(70000, 'a');
    fs::create_symlink(dir / "areas" / "q" / "private.txt", dir / "areas" / "p" / "peek.txt");
    areas = std::make_unique<storage::Areas>(config.data);
  }
  ~Fixture() { fs::remove_all(dir); }

  ToolResult call(Tool& t, json args, const std::string& project = "p") {
    CallContext ctx;
    ctx.project = project;
    ctx.deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    return run_blocking(t.call(args, ctx));
  }
};

std::string code(const ToolResult& r) { return r.error ? std::string(to_string(r.error->code)) : ""; }

}  // namespace

TEST_CASE("file tools: list the project's areas, then a directory page by page", "[data][tools]") {
  Fixture f;
  ListFilesTool list(*f.areas);
  auto areas = f.call(list, json::object());
  REQUIRE_FALSE(areas.error);
  REQUIRE(areas.structured["areas"].size() == 2);
  CHECK(areas.structured["areas"][0]["uri"] == "area://scratch/");
  CHECK(areas.structured["areas"][0]["mode"] == "rw");
  CHECK(areas.structured["areas"][1]["uri"] == "area://datasets/");
  CHECK(areas.structured["areas"][1]["mode"] == "ro");
  CHECK(areas.structured["areas"][1]["shared"] == true);
  // Project q does not see the shared dataset.
  CHECK(f.call(list, json::object(), "q").structured["areas"].size() == 1);

  auto page = f.call(list, {{"uri", "area://scratch/"}, {"limit", 2}});
  REQUIRE_FALSE(page.error);
  REQUIRE(page.structured["entries"].size() == 2);
  CHECK(page.structured["entries"][0]["name"] == "big.txt");
  CHECK(page.structured["entries"][0]["size"] == 70000);
  CHECK(page.structured["entries"][1]["name"] == "bin.dat");
  REQUIRE(page.structured["next_cursor"].is_string());
  auto next = f.call(list, {{"uri", "area://scratch"}, {"limit", 2}, {"cursor", page.structured["next_cursor"]}});
  REQUIRE(next.structured["entries"].size() == 2);
  CHECK(next.structured["entries"][0]["name"] == "peek.txt");
  CHECK(next.structured["entries"][0]["type"] == "symlink");
  CHECK(next.structured["entries"][1]["uri"] == "area://scratch/run/");
  CHECK(next.structured["next_cursor"].is_null());
}

TEST_CASE("file tools: another project's area is not found, traversal and links out are refused", "[data][tools]") {
  Fixture f;
  ListFilesTool list(*f.areas);
  StatFileTool stat(*f.areas);
  ReadFileTool read(*f.areas);
  CHECK(code(f.call(list, {{"uri", "area://archive/"}})) == "not_found");
  CHECK(code(f.call(read, {{"uri", "area://datasets/ref.txt"}}, "q")) == "not_found");
  CHECK(code(f.call(read, {{"uri", "area://scratch/../q/private.txt"}})) == "forbidden");
  // An absolute path after the area (area://scratch//…): refused before storage sees it.
  CHECK(code(f.call(read, {{"uri", "area://scratch/" + (f.dir / "areas" / "q" / "private.txt").string()}})) ==
        "invalid_arguments");
  auto peek = f.call(read, {{"uri", "area://scratch/peek.txt"}});
  CHECK(code(peek) == "forbidden");
  CHECK(peek.error->message.find("symbolic link") != std::string::npos);
  CHECK(code(f.call(read, {{"uri", "https://example.org/x"}})) == "invalid_arguments");
  CHECK(code(f.call(read, {{"uri", "file:///etc/passwd"}})) == "invalid_arguments");
  CHECK(code(f.call(read, {{"uri", "area://scratch/missing.txt"}})) == "not_found");
  // The shared dataset is readable by its reader project.
  auto ref = f.call(read, {{"uri", "area://datasets/ref.txt"}});
  REQUIRE_FALSE(ref.error);
  CHECK(ref.structured["text"] == "reference");
}

TEST_CASE("file tools: stat with SHA-256, read head, tail, binary and truncated files", "[data][tools]") {
  Fixture f;
  StatFileTool stat(*f.areas);
  ReadFileTool read(*f.areas);
  auto s = f.call(stat, {{"uri", "area://scratch/run/log.txt"}, {"sha256", true}});
  REQUIRE_FALSE(s.error);
  CHECK(s.structured["size"] == 18);
  CHECK(s.structured["type"] == "file");
  CHECK(s.structured["sha256"] == crypto::sha256_hex("line one\nline two\n"));
  CHECK(s.structured["links"] == 1);
  auto dir = f.call(stat, {{"uri", "area://scratch/run"}});
  CHECK(dir.structured["type"] == "directory");

  auto head = f.call(read, {{"uri", "area://scratch/run/log.txt"}, {"length", 5}});
  REQUIRE_FALSE(head.error);
  CHECK(head.structured["text"] == "line ");
  CHECK(head.structured["truncated"] == true);
  CHECK(head.structured["next_offset"] == 5);
  CHECK(head.text.find("[truncated: 13 more bytes") != std::string::npos);
  auto tail = f.call(read, {{"uri", "area://scratch/run/log.txt"}, {"tail", 9}});
  CHECK(tail.structured["text"] == "line two\n");

  auto big = f.call(read, {{"uri", "area://scratch/big.txt"}});
  CHECK(big.structured["bytes"] == 65536);
  CHECK(big.structured["truncated"] == true);
  auto bin = f.call(read, {{"uri", "area://scratch/bin.dat"}});
  CHECK(bin.structured["binary"] == true);
  CHECK(bin.text.find("not UTF-8 text") != std::string::npos);
}
