#include <catch2/catch.hpp>

#include "server/config/config.hpp"

using namespace scigate;

TEST_CASE("config: defaults and relative paths") {
  Config c = parse_config("", "/etc/scigate", "test.toml");
  CHECK(c.http.host == "127.0.0.1");
  CHECK(c.http.port == 8750);
  CHECK(c.database == std::filesystem::path("/etc/scigate/scigate.db"));
  CHECK(c.max_message_bytes == 4 * 1024 * 1024);
  CHECK_FALSE(c.demo_tools);
}

TEST_CASE("config: a full file") {
  Config c = parse_config(R"(
[server]
database = "/var/lib/scigate/db.sqlite"
threads = 4
[http]
listen = "[::1]:9000"
allowed_origins = ["https://portal.example.org"]
header_timeout_s = 3
[limits]
max_message_bytes = 1024
[tools]
demo = true
[[projects]]
id = "chem"
members = ["alice", "bob"]
[[projects]]
id = "bio"
members = ["bob"]
)",
                          "/x", "t.toml");
  CHECK(c.threads == 4);
  CHECK(c.http.host == "::1");
  CHECK(c.http.port == 9000);
  CHECK(c.http.header_timeout == std::chrono::seconds(3));
  CHECK(c.max_message_bytes == 1024);
  CHECK(c.http.max_body_bytes == 1024);
  CHECK(c.demo_tools);
  CHECK(c.projects_of("bob") == std::vector<std::string>{"chem", "bio"});
  CHECK(c.projects_of("alice") == std::vector<std::string>{"chem"});
  CHECK(c.projects_of("eve").empty());
}

TEST_CASE("config: errors name file, line and column") {
  try {
    parse_config("[server]\nthreads = \n", "/x", "bad.toml");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).rfind("bad.toml:2:", 0) == 0);
  }
  try {
    parse_config("[server]\nthreads = \"four\"\n", "/x", "bad.toml");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    std::string w = e.what();
    CHECK(w.find("bad.toml:2:") == 0);
    CHECK(w.find("threads") != std::string::npos);
  }
  CHECK_THROWS_AS(parse_config("[http]\nlisten = \"nohost\"\n", "/x", "t"), ConfigError);
  CHECK_THROWS_AS(parse_config("[http]\nlisten = \"h:99999\"\n", "/x", "t"), ConfigError);
  CHECK_THROWS_AS(parse_config("[http]\ntls_cert = \"a.pem\"\n", "/x", "t"), ConfigError);
  CHECK_THROWS_AS(parse_config("[[projects]]\nname = \"no id\"\n", "/x", "t"), ConfigError);
  CHECK_THROWS_AS(parse_config("[server]\nlog_level = \"verbose\"\n", "/x", "t"), ConfigError);
  CHECK_THROWS_AS(parse_config("[server]\nlog_format = \"xml\"\n", "/x", "t"), ConfigError);
}

TEST_CASE("config: typos and negative numbers are refused with their place") {
  try {
    parse_config("[server]\nname = \"x\"\n[htp]\nlisten = \"1\"\n", "/x", "typo.toml");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    std::string w = e.what();
    CHECK(w.find("typo.toml:3:") == 0);
    CHECK(w.find("unknown key \"htp\"") != std::string::npos);
  }
  try {
    parse_config("[http]\nheader_timeout = 5\n", "/x", "typo.toml");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("header_timeout_s") != std::string::npos);  // the list of known keys
  }
  try {
    parse_config("[server]\nthreads = -2\n", "/x", "neg.toml");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("must be zero or more") != std::string::npos);
  }
}

TEST_CASE("config: projects carry roles, service accounts, policy and credit settings; users their defaults") {
  Config c = parse_config(R"(
[[projects]]
id = "chem"
members = ["alice"]
managers = ["bob"]
service_accounts = ["robot-1"]
policy = "policies/chem.toml"
credit_line = 12.5

[[users]]
name = "alice"
groups = ["g1"]
default_project = "chem"
)",
                          "/etc/scigate", "t.toml");
  REQUIRE(c.projects.size() == 1);
  CHECK(c.projects[0].policy == std::filesystem::path("/etc/scigate/policies/chem.toml"));
  CHECK(c.projects[0].credit_account == "chem");
  CHECK(c.projects[0].credit_line == 12.5);
  CHECK(c.projects_of("bob") == std::vector<std::string>{"chem"});
  REQUIRE(c.user("alice"));
  CHECK(c.user("alice")->groups == std::vector<std::string>{"g1"});

  CHECK_THROWS_WITH(parse_config("[[projects]]\nid = \"a\"\n[[projects]]\nid = \"a\"\n", ".", "t.toml"),
                    Catch::Contains("defined twice"));
  CHECK_THROWS_WITH(parse_config("[[projects]]\nid = \"a\"\nservice_accounts = [\"group:x\"]\n", ".", "t.toml"),
                    Catch::Contains("not groups"));
  CHECK_THROWS_WITH(parse_config("[[users]]\nname = \"a\"\ndefault_project = \"nope\"\n", ".", "t.toml"),
                    Catch::Contains("t.toml:1:1: default_project \"nope\""));
  CHECK_THROWS_WITH(parse_config("[[projects]]\nid = \"a\"\ncredit_line = -1\n", ".", "t.toml"),
                    Catch::Contains("t.toml:3:15"));
}
