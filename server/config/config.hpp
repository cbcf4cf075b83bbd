#pragma once
// The server's configuration, read from one TOML file. Relative paths are resolved against the
// file's directory. Loading never half-succeeds: it returns a Config or throws ConfigError that
// names file, line and column.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace scigate {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A project: who belongs to it and in which role, its policy and its credit account. Entries of
// members/managers/auditors/admins are user names or "group:NAME"; service_accounts name
// principals of kind "service" (API keys created with --service), which act as members.
struct ProjectConfig {
  std::string id;
  std::string name;
  std::vector<std::string> members;
  std::vector<std::string> managers;
  std::vector<std::string> auditors;
  std::vector<std::string> admins;
  std::vector<std::string> service_accounts;
  std::filesystem::path policy;  // per-project policy file; empty: the built-in membership policy
  std::string credit_account;    // defaults to the project id
  double credit_line = 0;        // post-paid credit line in credits: the balance may go this far below 0
};

// Per-user facts the identity provider does not carry (API-key users have no token claims).
struct UserConfig {
  std::string name;
  std::vector<std::string> groups;
  std::string default_project;
};

struct HttpConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8750;
  std::vector<std::string> allowed_origins = {"http://localhost", "http://127.0.0.1", "https://localhost",
                                              "https://127.0.0.1", "http://[::1]"};
  std::size_t max_body_bytes = 4 * 1024 * 1024;
  std::size_t max_header_bytes = 16 * 1024;
  std::chrono::seconds header_timeout{10};
  std::chrono::seconds body_timeout{30};
  std::chrono::seconds idle_timeout{120};
  std::chrono::seconds session_idle_timeout{3600};
  std::chrono::seconds shutdown_grace{30};
  std::size_t max_connections = 20000;
  std::size_t max_sessions = 100000;
  std::string tls_cert;  // PEM chain; TLS is on when both are set
  std::string tls_key;
};

// The audit trail's signed checkpoints (docs/AUDIT.md). Paths are relative to the config file.
struct AuditConfig {
  std::filesystem::path signing_key = "audit-signing-key.pem";  // Ed25519 private key, created if missing
  std::filesystem::path checkpoint_file = "audit-checkpoints.jsonl";
  int64_t checkpoint_every_records = 1000;  // 0: not by count
  std::chrono::seconds checkpoint_every{60};  // 0: not by time
};

struct Config {
  std::filesystem::path path;       // the file this came from (empty for built-in defaults)
  std::filesystem::path base_dir;   // relative paths resolve here
  std::string server_name = "scigate";
  std::filesystem::path database = "scigate.db";
  std::string log_level = "info";
  std::string log_format = "json";  // json | text
  int threads = 0;                  // 0: one per core, at least 2
  std::size_t max_message_bytes = 4 * 1024 * 1024;
  int max_depth = 64;
  std::chrono::seconds tool_timeout{300};
  std::string stdio_principal;      // principal for stdio callers without SCIGATE_API_KEY
  bool demo_tools = false;          // register the echo and sleep tools
  std::string instructions;
  HttpConfig http;
  AuditConfig audit;
  std::vector<ProjectConfig> projects;
  std::vector<UserConfig> users;

  const ProjectConfig* project(const std::string& id) const;
  const UserConfig* user(const std::string& name) const;
  // Projects where the user (by name, ignoring groups) holds any role, in config order.
  std::vector<std::string> projects_of(const std::string& principal) const;
};

Config load_config(const std::filesystem::path& file);
Config parse_config(std::string_view toml_text, const std::filesystem::path& base_dir, const std::string& source_name);

}  // namespace scigate
