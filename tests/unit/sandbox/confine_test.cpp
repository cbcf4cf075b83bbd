#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>

#include "sandbox/confine.hpp"
#include "tests/support/files.hpp"

using namespace scigate::sandbox;
namespace fs = std::filesystem;

namespace {
struct TempDir : scigate::test::TempDir {
  TempDir() : scigate::test::TempDir("confine") {}
};
}  // namespace

TEST_CASE("confine: lexical checks refuse .., absolute paths elsewhere and control characters") {
  std::string why;
  CHECK(confine_relative("/jobs/p", "a/./b//c", &why) == "a/b/c");
  CHECK(confine_relative("/jobs/p", "", &why) == "");
  CHECK(confine_relative("/jobs/p", "/jobs/p/x/y", &why) == "x/y");
  CHECK(confine_relative("/jobs/p", "/jobs/p", &why) == "");
  CHECK_FALSE(confine_relative("/jobs/p", "../q", &why));
  CHECK(why.find("..") != std::string::npos);
  CHECK_FALSE(confine_relative("/jobs/p", "a/../../q", &why));
  CHECK_FALSE(confine_relative("/jobs/p", "/etc", &why));
  CHECK(why.find("outside") != std::string::npos);
  CHECK_FALSE(confine_relative("/jobs/p", "/jobs/pq/x", &why));
  CHECK_FALSE(confine_relative("/jobs/p", "a\nb", &why));
}

TEST_CASE("confine: open_beneath refuses a symlink out of the root, also one swapped in after the check") {
  TempDir root, outside;
  fs::create_directories(root.path / "a" / "b");
  int rfd = ::open(root.path.c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(rfd >= 0);
  int ok = open_beneath(rfd, "a/b");
  CHECK(ok >= 0);
  if (ok >= 0) ::close(ok);

  fs::create_directory_symlink(outside.path, root.path / "out");
  CHECK(open_beneath(rfd, "out") < 0);
  fs::create_directory_symlink("../../", root.path / "a" / "up");
  CHECK(open_beneath(rfd, "a/up") < 0);
  CHECK(open_beneath(rfd, "../") < 0);
  // A symlink inside the root that stays inside is fine.
  fs::create_directory_symlink("a/b", root.path / "inside");
  int in = open_beneath(rfd, "inside");
  CHECK(in >= 0);
  if (in >= 0) ::close(in);

  // Swapped: the lexical check passes for "a/b", then "a/b" becomes a link outside.
  std::string why;
  auto rel = confine_relative(root.path, "a/b", &why);
  REQUIRE(rel);
  fs::remove_all(root.path / "a" / "b");
  fs::create_directory_symlink(outside.path, root.path / "a" / "b");
  CHECK(open_beneath(rfd, rel->c_str()) < 0);
  CHECK(make_dirs_beneath(root.path, "a/b/c", 0755) != 0);
  CHECK_FALSE(fs::exists(outside.path / "c"));
  CHECK(make_dirs_beneath(root.path, "new/dir", 0755) == 0);
  CHECK(fs::is_directory(root.path / "new" / "dir"));
  ::close(rfd);
}
