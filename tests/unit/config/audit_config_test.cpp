#include <catch2/catch.hpp>

#include "server/config/config.hpp"

using namespace scigate;

TEST_CASE("config [audit]: defaults beside the config, values, and strict keys") {
  Config d = parse_config("", "/etc/scigate", "test.toml");
  CHECK(d.audit.signing_key == std::filesystem::path("/etc/scigate/audit-signing-key.pem"));
  CHECK(d.audit.checkpoint_file == std::filesystem::path("/etc/scigate/audit-checkpoints.jsonl"));
  CHECK(d.audit.checkpoint_every_records == 1000);
  CHECK(d.audit.checkpoint_every == std::chrono::seconds(60));
  CHECK(d.audit.log_mirror);

  Config c = parse_config(R"([audit]
signing_key = "/var/lib/scigate/k.pem"
checkpoint_file = "cp/audit.jsonl"
checkpoint_every_records = 0
checkpoint_every_s = 15
log_mirror = false
)",
                          "/etc/scigate", "test.toml");
  CHECK(c.audit.signing_key == std::filesystem::path("/var/lib/scigate/k.pem"));
  CHECK(c.audit.checkpoint_file == std::filesystem::path("/etc/scigate/cp/audit.jsonl"));
  CHECK(c.audit.checkpoint_every_records == 0);
  CHECK(c.audit.checkpoint_every == std::chrono::seconds(15));
  CHECK_FALSE(c.audit.log_mirror);

  auto refused = [](const std::string& text, const std::string& expect) {
    try {
      parse_config(text, "/x", "audit.toml");
      FAIL("expected ConfigError for " << text);
    } catch (const ConfigError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(expect) != std::string::npos);
    }
  };
  refused("[audit]\ncheckpoint_every = 5\n", "unknown key \"checkpoint_every\" in [audit]");
  refused("[audit]\ncheckpoint_every_s = -1\n", "must be zero or more");
  refused("[audit]\ncheckpoint_every_records = \"many\"\n", "wrong type");
  refused("[audit]\nsigning_key = \"\"\n", "must not be empty");
  refused("[audit]\nlog_mirror = \"no\"\n", "wrong type");
  refused("audit = 1\n", "[audit] must be a table");
}
