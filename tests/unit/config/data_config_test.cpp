#include <catch2/catch.hpp>

#include "server/config/config.hpp"

using namespace scigate;

namespace {
const char* kProjects = R"(
[[projects]]
id = "a"
members = ["alice"]
[[projects]]
id = "b"
members = ["bob"]
)";

std::string error_of(const std::string& text) {
  try {
    parse_config(std::string(kProjects) + text, "/etc/scigate", "t.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("config [data]: areas per project, for every project, shared datasets, http and sources") {
  Config c = parse_config(std::string(kProjects) + R"(
[data]
max_concurrent = 2
[[data.areas]]
id = "scratch"
project = "*"
root = "/scratch/{project}"
quota_bytes = 1000
quota_files = 10
[[data.areas]]
id = "archive"
project = "a"
root = "archive"
mode = "ro"
[[data.areas]]
id = "datasets"
root = "/datasets"
mode = "ro"
readers = ["*"]
[data.http]
allowed_hosts = ["data.example.org", "*.zenodo.org"]
allowed_networks = ["127.0.0.1/32", "fd00::/8"]
retries = 5
[[data.sources]]
url = "https://data.example.org/a/"
projects = ["a"]
bearer_token_file = "secrets/a.token"
allow_upload = true
)",
                          "/etc/scigate", "t.toml");
  CHECK(c.data.max_concurrent == 2);
  REQUIRE(c.data.areas.size() == 4);
  CHECK(c.data.areas[0].project == "a");
  CHECK(c.data.areas[0].root == "/scratch/a");
  CHECK(c.data.areas[1].project == "b");
  CHECK(c.data.areas[1].root == "/scratch/b");
  CHECK(c.data.areas[1].quota_bytes == 1000);
  CHECK(c.data.areas[2].root == "/etc/scigate/archive");
  CHECK_FALSE(c.data.areas[2].writable);
  CHECK(c.data.area_for("a", "scratch")->root == "/scratch/a");
  CHECK(c.data.area_for("b", "scratch")->root == "/scratch/b");
  CHECK(c.data.area_for("b", "archive") == nullptr);  // another project's area
  CHECK(c.data.area_for("b", "datasets")->project.empty());
  CHECK(c.data.http.allowed_hosts.size() == 2);
  CHECK(c.data.http.retries == 5);
  REQUIRE(c.data.sources.size() == 1);
  CHECK(c.data.sources[0].bearer_token_file == "/etc/scigate/secrets/a.token");
  CHECK(c.data.sources[0].allow_upload);
}

TEST_CASE("config [data]: mistakes are refused with the reason") {
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nproject = \"a\"\n").find("needs a \"root\"") != std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x y\"\nproject = \"a\"\nroot = \"r\"\n").find("\"id\"") != std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nproject = \"zz\"\nroot = \"r\"\n").find("not configured") !=
        std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nroot = \"r\"\nmode = \"ro\"\n").find("readers") != std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nroot = \"r\"\nreaders = [\"a\"]\n").find("mode = \"ro\"") !=
        std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nproject = \"*\"\nroot = \"r\"\n").find("{project}") != std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nproject = \"a\"\nroot = \"r\"\n[[data.areas]]\nid = \"x\"\nproject = "
                 "\"a\"\nroot = \"s\"\n")
            .find("defined twice") != std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nproject = \"a\"\nroot = \"r\"\n[[data.areas]]\nid = \"x\"\nroot = "
                 "\"s\"\nmode = \"ro\"\nreaders = [\"b\"]\n")
            .find("defined twice") != std::string::npos);
  CHECK(error_of("[[data.areas]]\nid = \"x\"\nproject = \"a\"\nroot = \"r\"\nquota = 5\n").find("unknown key") !=
        std::string::npos);
  CHECK(error_of("[data.http]\nallowed_networks = [\"10.0.0.0/33\"]\n").find("CIDR") != std::string::npos);
  CHECK(error_of("[data.http]\nallowed_hosts = [\"https://x.org/\"]\n").find("not a host name") != std::string::npos);
  CHECK(error_of("[[data.sources]]\nurl = \"https://u:p@x.org/\"\n").find("no user:password@") != std::string::npos);
}
