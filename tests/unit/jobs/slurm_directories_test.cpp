// prepare_job_directories runs as root for Slurm sites: the directories of a job are made
// beneath the site's job root and given to the job account, never through a symlink that the
// job account (which owns the project's directory) planted there.
#include <catch2/catch.hpp>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "connectors/scheduler/slurm/slurm_common.hpp"
#include "server/common/error.hpp"
#include "tests/support/files.hpp"

using namespace scigate;
namespace fs = std::filesystem;

namespace {
struct TempDir : scigate::test::TempDir {
  TempDir() : scigate::test::TempDir("slurmdirs") {}
};

jobs::JobSpec spec_in(const fs::path& root, const std::string& workdir) {
  jobs::JobSpec s;
  s.jobs_root = root / "jobs";
  s.working_directory = s.jobs_root / "demo" / workdir;
  s.stdout_path = s.jobs_root / "demo" / "j-000000000001" / "stdout";
  s.stderr_path = s.stdout_path.parent_path() / "stderr";
  s.run_as = "nobody";
  return s;
}
}  // namespace

TEST_CASE("slurm job directories are created beneath the job root and given to the job account") {
  TempDir t;
  auto s = spec_in(t.path, "run/one");
  jobs::slurm::prepare_job_directories(s);
  CHECK(fs::is_directory(s.working_directory));
  CHECK(fs::is_directory(s.stdout_path.parent_path()));
  if (::geteuid() == 0) {
    struct passwd* pw = ::getpwnam("nobody");
    REQUIRE(pw);
    struct stat st{};
    REQUIRE(::stat(s.working_directory.c_str(), &st) == 0);
    CHECK(st.st_uid == pw->pw_uid);
    REQUIRE(::stat((s.jobs_root / "demo").c_str(), &st) == 0);
    CHECK(st.st_uid == pw->pw_uid);  // the project's directory: the job writes there
    REQUIRE(::stat(s.jobs_root.c_str(), &st) == 0);
    CHECK(st.st_uid == 0);  // the site's root stays the operator's
  }
  // Running again is fine (everything exists).
  CHECK_NOTHROW(jobs::slurm::prepare_job_directories(s));
}

TEST_CASE("slurm job directories never follow a symlink planted in the project's directory") {
  TempDir t;
  fs::create_directories(t.path / "jobs" / "demo");
  fs::create_directories(t.path / "outside");
  // What a job running as the job account can do in its own project's directory.
  fs::create_directory_symlink(t.path / "outside", t.path / "jobs" / "demo" / "evil");
  auto s = spec_in(t.path, "evil/systemd-like.d");
  CHECK_THROWS_AS(jobs::slurm::prepare_job_directories(s), ErrorException);
  CHECK_FALSE(fs::exists(t.path / "outside" / "systemd-like.d"));
  // A path that leaves the job root lexically is refused too.
  auto out = spec_in(t.path, "x");
  out.working_directory = t.path / "outside" / "y";
  CHECK_THROWS_AS(jobs::slurm::prepare_job_directories(out), ErrorException);
  CHECK_FALSE(fs::exists(t.path / "outside" / "y"));
}
