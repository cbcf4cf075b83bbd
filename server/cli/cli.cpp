#include "server/cli/cli.hpp"

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>

#include "scigate/version.hpp"
#include "server/app.hpp"
#include "policies/audit_checkpoint.hpp"
#include "server/cli/audit_cli.hpp"
#include "server/observability/log.hpp"

namespace scigate::cli {
namespace fs = std::filesystem;
namespace {

constexpr const char* kUsage = R"(scigate — an MCP tool server for research computing

usage:
  scigate serve [--config FILE] [--stdio | --http HOST:PORT] [--port-file FILE]
  scigate init DIR                 create DIR/scigate.toml, the database, a demo project and key
  scigate key create [--config FILE] --principal NAME [--kind user|service] [--description TEXT]
  scigate key list   [--config FILE]
  scigate key revoke [--config FILE] KEY_ID
  scigate audit verify [--config FILE] [--pubkey FILE]   check the audit chain and its signed checkpoints
  scigate audit verify --export FILE [--checkpoints FILE] [--pubkey FILE]   the same, offline
  scigate audit export [--since TIME] [--until TIME] [--project P] [--output FILE]
  scigate audit tail [-n N] [--follow] [--format jsonl|text]
  scigate audit pubkey             print the public key that verifies the checkpoints
  scigate version

--config defaults to $SCIGATE_CONFIG, then ./scigate.toml.
)";

constexpr const char* kDemoConfig = R"(# scigate configuration, created by `scigate init`. Reference: docs/CONFIG.md
[server]
name = "scigate"
database = "scigate.db"   # relative to this file
log_format = "json"       # json | text (logs go to stderr)
log_level = "info"

[http]
listen = "127.0.0.1:8750"
allowed_origins = ["http://localhost", "http://127.0.0.1"]

[stdio]
# Who stdio clients are, unless SCIGATE_API_KEY names a key.
principal = "demo"

[tools]
# echo and sleep: for trying things out and for tests.
demo = true

[audit]
# Signed checkpoints of the audit log, kept outside the database (docs/AUDIT.md). The Ed25519
# key is created on first start; give auditors its public key (scigate audit pubkey).
signing_key = "audit-signing-key.pem"
checkpoint_file = "audit-checkpoints.jsonl"

[[projects]]
id = "demo"
name = "Demo project"
members = ["demo", "lab-controller"]
)";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  std::vector<std::string> flags;
  bool has_flag(const std::string& f) const { return std::find(flags.begin(), flags.end(), f) != flags.end(); }
  std::string opt(const std::string& k, const std::string& d = "") const {
    auto it = options.find(k);
    return it == options.end() ? d : it->second;
  }
};

Args parse_args(const std::vector<std::string>& a, std::size_t from, const std::vector<std::string>& with_value) {
  Args out;
  for (std::size_t i = from; i < a.size(); ++i) {
    const std::string& s = a[i];
    if (s.rfind("--", 0) == 0) {
      auto eq = s.find('=');
      std::string key = s.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      if (eq != std::string::npos) {
        out.options[key] = s.substr(eq + 1);
      } else if (std::find(with_value.begin(), with_value.end(), key) != with_value.end()) {
        if (i + 1 >= a.size()) throw std::invalid_argument("--" + key + " needs a value");
        out.options[key] = a[++i];
      } else {
        out.flags.push_back(key);
      }
    } else {
      out.positional.push_back(s);
    }
  }
  return out;
}

fs::path config_path(const Args& args) {
  if (auto c = args.opt("config"); !c.empty()) return c;
  if (const char* e = std::getenv("SCIGATE_CONFIG"); e && *e) return e;
  return "scigate.toml";
}

int cmd_serve(const Args& args) {
  Config cfg = load_config(config_path(args));
  log::init(cfg.log_format, cfg.log_level);
  App app(std::move(cfg));
  if (args.has_flag("stdio")) return app.serve_stdio();
  std::string host = app.config().http.host;
  uint16_t port = app.config().http.port;
  if (auto listen = args.opt("http"); !listen.empty()) {
    Config tmp = parse_config("[http]\nlisten = \"" + listen + "\"\n", ".", "--http");
    host = tmp.http.host;
    port = tmp.http.port;
  }
  return app.serve_http(host, port, args.opt("port-file"));
}

int cmd_init(const Args& args) {
  if (args.positional.size() != 1) throw std::invalid_argument("usage: scigate init DIR");
  fs::path dir = args.positional[0];
  fs::path cfg_file = dir / "scigate.toml";
  if (fs::exists(cfg_file)) {
    std::cerr << "scigate init: " << cfg_file.string()
              << " already exists; nothing changed. Create another key with: scigate key create --config "
              << cfg_file.string() << " --principal demo\n";
    return 3;
  }
  fs::create_directories(dir);
  {
    std::ofstream out(cfg_file);
    out << kDemoConfig;
    if (!out) throw std::runtime_error("cannot write " + cfg_file.string());
  }
  Config cfg = load_config(cfg_file);
  log::init("text", "warn");
  App app(cfg);
  auto key = app.keys().create("demo", "user", "demo key created by scigate init");
  auto lab = app.keys().create("lab-controller", "service", "demo service key created by scigate init");
  auto audit_key = audit::SigningKey::load_or_create(cfg.audit.signing_key);
  std::cout << "Initialised " << fs::absolute(dir).string() << "\n"
            << "  config:   " << fs::absolute(cfg_file).string() << "\n"
            << "  database: " << cfg.database.string() << "\n"
            << "  audit:    checkpoints signed with " << cfg.audit.signing_key.string() << " (key id "
            << audit_key.key_id() << "; public key: scigate audit pubkey)\n"
            << "  project:  demo (members: demo, lab-controller)\n\n"
            << "Demo API key for user 'demo' (shown once, keep it):\n  " << key.token << "\n"
            << "Service key for 'lab-controller' (shown once):\n  " << lab.token << "\n";
  return 0;
}

int cmd_key(const std::vector<std::string>& a) {
  if (a.size() < 3) throw std::invalid_argument("usage: scigate key create|list|revoke ...");
  const std::string sub = a[2];
  Args args = parse_args(a, 3, {"config", "principal", "kind", "description"});
  Config cfg = load_config(config_path(args));
  log::init("text", "warn");
  App app(cfg);
  if (sub == "create") {
    std::string principal = args.opt("principal");
    if (principal.empty()) throw std::invalid_argument("key create needs --principal NAME");
    auto k = app.keys().create(principal, args.opt("kind", "user"), args.opt("description"));
    std::cerr << "Created key " << k.info.key_id << " for " << k.info.kind << " '" << principal
              << "'. The token below is shown once:\n";
    std::cout << k.token << "\n";
    if (cfg.projects_of(principal).empty())
      std::cerr << "note: '" << principal << "' is not a member of any project in " << cfg.path.string() << "\n";
    return 0;
  }
  if (sub == "list") {
    for (const auto& k : app.keys().list()) {
      std::cout << k.key_id << "\t" << k.kind << "\t" << k.principal << "\t"
                << (k.revoked_at ? "revoked" : "active") << "\t" << k.description << "\n";
    }
    return 0;
  }
  if (sub == "revoke") {
    if (args.positional.size() != 1) throw std::invalid_argument("usage: scigate key revoke KEY_ID");
    if (!app.keys().revoke(args.positional[0])) {
      std::cerr << "no active key " << args.positional[0] << "\n";
      return 1;
    }
    std::cerr << "revoked " << args.positional[0] << " (running servers stop accepting it within 5 s)\n";
    return 0;
  }
  throw std::invalid_argument("unknown key command: " + sub);
}

}  // namespace

int run(const std::vector<std::string>& a) {
  try {
    if (a.size() < 2 || a[1] == "--help" || a[1] == "-h" || a[1] == "help") {
      std::cout << kUsage;
      return a.size() < 2 ? 2 : 0;
    }
    const std::string& cmd = a[1];
    if (cmd == "version" || cmd == "--version") {
      std::cout << "scigate " << kVersion << "\n";
      return 0;
    }
    if (cmd == "serve") return cmd_serve(parse_args(a, 2, {"config", "http", "port-file"}));
    if (cmd == "init") return cmd_init(parse_args(a, 2, {}));
    if (cmd == "key") return cmd_key(a);
    if (cmd == "audit") return run_audit(a);
    std::cerr << "scigate: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  } catch (const ConfigError& e) {
    std::cerr << "scigate: config error: " << e.what() << "\n";
    return 2;
  } catch (const std::invalid_argument& e) {
    std::cerr << "scigate: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "scigate: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace scigate::cli
