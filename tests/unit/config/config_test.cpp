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
  // (4294967296 once narrowed to 0 inside the HTTP parser: every request got 431.)
  CHECK_THROWS_WITH(parse_config("[http]\nmax_header_bytes = 4294967296\n", "/x", "t"),
                    Catch::Contains("max_header_bytes must be between 1024 and 1048576"));
  CHECK_THROWS_AS(parse_config("[http]\nmax_header_bytes = 100\n", "/x", "t"), ConfigError);
  CHECK(parse_config("[http]\nmax_header_bytes = 65536\n", "/x", "t").http.max_header_bytes == 65536);
  CHECK(parse_config("", "/x", "t").http.stream_backlog_bytes == 8u << 20);
  CHECK(parse_config("[http]\nstream_backlog_bytes = 65536\n", "/x", "t").http.stream_backlog_bytes == 65536);
  CHECK_THROWS_WITH(parse_config("[http]\nstream_backlog_bytes = 1000\n", "/x", "t"),
                    Catch::Contains("stream_backlog_bytes must be at least 65536"));
  CHECK_THROWS_AS(parse_config("[http]\nmax_sessions_per_principal = 0\n", "/x", "t"), ConfigError);
  CHECK(parse_config("[http]\nmax_sessions_per_principal = 5\n", "/x", "t").http.max_sessions_per_principal == 5);
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

TEST_CASE("config: projects carry roles, service accounts, policy and credit settings, users their defaults") {
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

TEST_CASE("config: [oidc]") {
  Config none = parse_config("", "/etc/scigate", "t.toml");
  CHECK_FALSE(none.oidc);

  Config c = parse_config(R"(
[oidc]
issuer = "https://idp.example.org/realms/science"
jwks_file = "keys/jwks.json"
)",
                          "/etc/scigate", "t.toml");
  REQUIRE(c.oidc);
  CHECK(c.oidc->jwks_file == std::filesystem::path("/etc/scigate/keys/jwks.json"));
  CHECK(c.oidc->audience.empty());  // the resource, decided when the server knows its URL
  CHECK(c.oidc->username_claim == "preferred_username");
  CHECK(c.oidc->groups_claim == "groups");
  CHECK(c.oidc->clock_skew == std::chrono::seconds(60));
  CHECK(c.oidc->jwks_refresh_min_interval == std::chrono::seconds(30));
  CHECK(c.oidc->jwks_cache_ttl == std::chrono::seconds(600));
  CHECK(c.oidc->required_scopes.empty());
  CHECK(c.oidc->authorization_servers == std::vector<std::string>{"https://idp.example.org/realms/science"});

  c = parse_config(R"(
[oidc]
issuer = "https://idp.example.org"
audience = ["https://gw.example.org/mcp", "scigate"]
jwks_url = "https://idp.example.org/certs"
username_claim = "email"
groups_claim = "realm_access.roles"
clock_skew_s = 5
jwks_refresh_min_interval_s = 10
jwks_cache_ttl_s = 300
required_scopes = ["mcp:tools"]
resource = "https://gw.example.org/mcp"
authorization_servers = ["https://idp.example.org", "https://backup.example.org"]
)",
                   "/x", "t.toml");
  CHECK(c.oidc->audience == std::vector<std::string>{"https://gw.example.org/mcp", "scigate"});
  CHECK(c.oidc->jwks_url == "https://idp.example.org/certs");
  CHECK(c.oidc->clock_skew == std::chrono::seconds(5));
  CHECK(c.oidc->required_scopes == std::vector<std::string>{"mcp:tools"});
  CHECK(c.oidc->authorization_servers.size() == 2);
  const std::string base = "[oidc]\nissuer = \"https://i\"\njwks_file = \"j\"\n";
  CHECK(parse_config(base + "audience = \"one\"\n", "/x", "t").oidc->audience == std::vector<std::string>{"one"});

  auto error_of = [](const std::string& text) {
    try {
      parse_config(text, "/x", "o.toml");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto has = [](const std::string& error, const std::string& part) { return error.find(part) != std::string::npos; };
  CHECK(error_of(base + "issuerr = 1\n").rfind("o.toml:4:11: unknown key \"issuerr\" in [oidc]", 0) == 0);
  CHECK(has(error_of("[oidc]\njwks_file = \"j\"\n"), "oidc.issuer is required"));
  CHECK(error_of("[oidc]\nissuer = \"idp\"\njwks_file = \"j\"\n").rfind("o.toml:2:10: oidc.issuer must be", 0) == 0);
  CHECK(has(error_of("[oidc]\nissuer = \"https://i\"\n"), "set exactly one"));
  CHECK(has(error_of(base + "jwks_url = \"https://x\"\n"), "set exactly one"));
  CHECK(error_of("[oidc]\nissuer = \"https://i\"\njwks_url = \"file:///etc/passwd\"\n")
            .rfind("o.toml:3:12: oidc.jwks_url", 0) == 0);
  CHECK(has(error_of(base + "audience = 3\n"), "string or an array"));
  CHECK(has(error_of(base + "required_scopes = [\"a b\"]\n"), "not one OAuth scope"));
  CHECK(has(error_of(base + "clock_skew_s = -1\n"), "must be zero or more"));
  CHECK(has(error_of(base + "resource = \"gw/mcp\"\n"), "oidc.resource"));
  CHECK(has(error_of(base + "jwks_cache_ttl_s = 0\n"), "at least 1"));
  CHECK(has(error_of(base + "authorization_servers = []\n"), "at least one"));
  CHECK(error_of("oidc = 1\n").find("[oidc] must be a table") != std::string::npos);
}

TEST_CASE("config: [server] durability is fsync by default, commit on request, nothing else") {
  CHECK(parse_config("", "/x", "t.toml").durability == "fsync");
  CHECK(parse_config("[server]\ndurability = \"commit\"\n", "/x", "t.toml").durability == "commit");
  try {
    parse_config("[server]\ndurability = \"sometimes\"\n", "/x", "t.toml");
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("server.durability must be \"fsync\"") != std::string::npos);
  }
}

TEST_CASE("config: [server] writer_linger_us is 10000 by default, 0 turns it off, and is bounded") {
  CHECK(parse_config("", "/x", "t.toml").writer_linger == std::chrono::microseconds(10000));
  CHECK(parse_config("[server]\nwriter_linger_us = 0\n", "/x", "t.toml").writer_linger == std::chrono::microseconds(0));
  CHECK(parse_config("[server]\nwriter_linger_us = 5000\n", "/x", "t.toml").writer_linger ==
        std::chrono::microseconds(5000));
  for (auto [bad, says] :
       {std::pair{"-1", "t.toml:2:20: \"writer_linger_us\" must be zero or more"},
        std::pair{"100001", "server.writer_linger_us must be between 0 (woken for every write) and 100000"}}) {
    try {
      parse_config(std::string("[server]\nwriter_linger_us = ") + bad + "\n", "/x", "t.toml");
      FAIL("expected a ConfigError for " << bad);
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains(says));
    }
  }
}

TEST_CASE("config: [server] writer_poll_us is 200 by default, 0 turns polling off, and is bounded") {
  CHECK(parse_config("", "/x", "t.toml").writer_poll == std::chrono::microseconds(200));
  CHECK(parse_config("[server]\nwriter_poll_us = 0\n", "/x", "t.toml").writer_poll == std::chrono::microseconds(0));
  CHECK(parse_config("[server]\nwriter_poll_us = 75\n", "/x", "t.toml").writer_poll == std::chrono::microseconds(75));
  for (auto [bad, says] : {std::pair{"-1", "t.toml:2:18: \"writer_poll_us\" must be zero or more"},
                           std::pair{"10001", "server.writer_poll_us must be between 0 (never poll) and 10000"}}) {
    try {
      parse_config(std::string("[server]\nwriter_poll_us = ") + bad + "\n", "/x", "t.toml");
      FAIL("expected a ConfigError for " << bad);
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains(says));
    }
  }
}

TEST_CASE("config: the quantum table is off by default, read when present, and checked") {
  Config d = parse_config("", "/etc/scigate", "test.toml");
  CHECK_FALSE(d.quantum.enabled);
  CHECK(d.quantum.max_memory_mb == 1024);
  Config c = parse_config("[quantum]\nenabled = true\nmax_memory_mb = 512\nthreads = 2\nconcurrency = 3\nfusion = false\n"
                          "max_fused_qubits = 3\nmax_statevector_qubits = 12\nmax_shots = 5000\nmax_qubits = 28\n",
                          "/etc/scigate", "test.toml");
  CHECK(c.quantum.enabled);
  CHECK(c.quantum.max_memory_mb == 512);
  CHECK(c.quantum.threads == 2);
  CHECK(c.quantum.concurrency == 3);
  CHECK_FALSE(c.quantum.fusion);
  CHECK(c.quantum.max_fused_qubits == 3);
  CHECK(c.quantum.max_statevector_qubits == 12);
  CHECK(c.quantum.max_shots == 5000);
  CHECK(c.quantum.max_qubits == 28);
  CHECK_THROWS_WITH(parse_config("[quantum]\nmax_fused_qubits = 9\n", "/etc", "test.toml"), Catch::Contains("max_fused_qubits 2..5"));
  CHECK_THROWS_WITH(parse_config("[quantum]\nqubits = 9\n", "/etc", "test.toml"), Catch::Contains("qubits"));
}

TEST_CASE("config: numbers too large for their field are refused, not wrapped") {
  // 4294967306 = 2^32 + 10: it became 10 qubits, and max_depth 2^32 became 0.
  for (const char* text : {"[quantum]\nmax_qubits = 4294967306\n", "[limits]\nmax_depth = 4294967296\n"}) {
    try {
      parse_config(text, "/x", "big.toml");
      FAIL("expected ConfigError for " << text);
    } catch (const ConfigError& e) {
      CHECK(std::string(e.what()).find("must be at most 2147483647") != std::string::npos);
    }
  }
}

TEST_CASE("config: a directory given as the config file is refused") {
  auto dir = std::filesystem::temp_directory_path() / "scigate-config-dir-test";
  std::filesystem::create_directories(dir);
  CHECK_THROWS_WITH(load_config(dir), Catch::Contains("is not a regular file"));
  CHECK_THROWS_WITH(load_config(dir / "missing.toml"), Catch::Contains("does not exist"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("config: [tasks] retention limits have defaults, are read, and must be positive") {
  auto d = parse_config("", "/x", "t.toml");
  CHECK(d.tasks.max_retained_per_principal == 1000);
  CHECK(d.tasks.max_retained_result_mb_per_principal == 256);
  auto c = parse_config("[tasks]\nmax_retained_per_principal = 5\nmax_retained_result_mb_per_principal = 64\n", "/x",
                        "t.toml");
  CHECK(c.tasks.max_retained_per_principal == 5);
  CHECK(c.tasks.max_retained_result_mb_per_principal == 64);
  for (const char* bad : {"[tasks]\nmax_retained_per_principal = 0\n", "[tasks]\nmax_retained_result_mb_per_principal = -1\n",
                          "[tasks]\nmax_retained_result_mb_per_principal = 1073741825\n"}) {
    try {
      parse_config(bad, "/x", "t.toml");
      FAIL("expected a ConfigError for " << bad);
    } catch (const ConfigError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find("max_retained") != std::string::npos);
    }
  }
}
