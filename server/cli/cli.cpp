#include "server/cli/cli.hpp"

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <sys/stat.h>
#include <unistd.h>
#include <map>
#include <optional>

#include "policies/policy_tests.hpp"
#include "policies/project_policies.hpp"
#include "scigate/demo_models.hpp"
#include "scigate/version.hpp"
#include "server/app.hpp"
#include "server/auth/directory.hpp"
#include "server/cli/credits_cli.hpp"
#include "server/cli/models_cli.hpp"
#include "policies/audit_checkpoint.hpp"
#include "server/cli/audit_cli.hpp"
#include "server/observability/log.hpp"
#include "tools/builtin.hpp"

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
  scigate policy check [--config FILE] [--project P] --as NAME [--kind user|service] [--group G]...
                       --tool TOOL [--args JSON] [--at 2025-01-06T10:00:00Z]
                                   explain the decision on one call (exit 0 allow, 1 deny)
  scigate policy test FILE...      run policy test cases (exit 1 if any fails)
  scigate policy validate FILE...  check policy files; the first error with line:column
  scigate credits grant --project P AMOUNT [--expires DATE | --days N] [--note TEXT] [--user U]
  scigate credits balance [--project P] [--format text|json]
  scigate credits statement --project P [--since DATE] [--format text|jsonl]
  scigate credits rates [--history]
  scigate credits verify                 check the ledger's invariants
  scigate models import [--config FILE] MANIFEST...   add or update models from manifests (docs/MODELS.md)
  scigate models list [--config FILE] [--format text|json] [--modality M] [--text WORDS] [--served]
                      [--project P --as NAME [--kind user|service] [--group G]...]
                                   the catalog; with --as, only what NAME sees in project P
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

[credits]
# Calls are charged in credits (docs/CREDITS.md); `scigate init` grants the demo project 1000.
# A resource without a rate is free (echo, whoami, get_usage here).
hold_timeout_s = 0        # 0: a hold lives as long as the call may (tool timeout + 60 s)

[credits.rates]
"call:sleep" = 0.1                           # flat, per call
"sleep_second" = { credits = 1, unit = "s" } # per second asked for (held) and slept (charged)
"cpu_core_hour" = 10                         # jobs: held for cpus x walltime, charged for what ran
"call:submit_job" = 0.01
"quantum_sim_qubit_gate" = 0.0001           # run_quantum_circuit: per qubit x gate simulated
"tokens_in:llama-3.1-8b-instruct" = 0.000001  # call_inference: per prompt token
"tokens_out:llama-3.1-8b-instruct" = 0.000003 # per generated token (max_tokens held, usage charged)
"tokens_in:bge-m3" = 0.0000002                # embed: per input token
"gb_staged" = 0.01                           # stage_data: held for the announced size, charged per GB moved

[quantum]
# run_quantum_circuit on the embedded state-vector simulator (docs/QUANTUM.md). Memory grows
# as 2^qubits x 16 bytes: 512 MiB holds 25 qubits.
enabled = true
max_memory_mb = 512

# GPU inference (docs/INFERENCE.md): OpenAI-compatible servers such as vLLM or llama.cpp's
# llama-server. With a backend, call_inference, embed and /v1/chat/completions appear.
# [[inference.backends]]
# id = "gpu01"
# url = "http://gpu01.example.org:8000"
# flavor = "vllm"                      # vllm | llamacpp | openai
# api_key_file = "secrets/gpu01.key"   # the backend's key; agents never see it
[data]
# Storage areas the file tools and stage_data reach as area://<id>/<path> (docs/DATA.md). Every
# path is resolved beneath the area's root; links out of it, devices and FIFOs are refused.
max_concurrent = 4

[[data.areas]]
id = "scratch"
project = "demo"
root = "data/demo/scratch"   # relative to this file; created on first use
mode = "rw"
quota_bytes = 10737418240    # 10 GiB
quota_files = 100000

[data.http]
# Downloads (stage_data from https://...) reach only these hosts; loopback, private, link-local
# and cloud metadata addresses are refused after DNS unless allowed_networks lists them.
allowed_hosts = []

[audit]
# Signed checkpoints of the audit log, kept outside the database (docs/AUDIT.md). The Ed25519
# key is created on first start; give auditors its public key (scigate audit pubkey).
signing_key = "audit-signing-key.pem"
checkpoint_file = "audit-checkpoints.jsonl"

[[projects]]
id = "demo"
name = "Demo project"
members = ["demo"]
# Lab automation controllers act through service accounts (API keys created with --kind service).
service_accounts = ["lab-controller"]
# Who may call what, with which arguments: docs/POLICY.md. Reloaded when the file changes.
policy = "policies/demo.toml"
)";

constexpr const char* kDemoPolicy = R"(# Policy of the demo project, written by `scigate init`. Reference: docs/POLICY.md
#
# Default deny: a call runs only when a permit rule matches it and no forbid rule does.
# A running server reloads this file within a second of a change (and on SIGHUP); a broken
# file is refused with its line and column, and the previous policy stays in force.
#
#   scigate policy check --project demo --as demo --tool sleep --args '{"seconds": 900}'
#   scigate policy test policies/demo.test.toml

[[rules]]
id = "members-introspect-and-echo"
effect = "permit"
description = "Members may call whoami, echo and get_usage"
principals = ["role:member"]
tools = ["whoami", "echo", "get_usage"]

[[rules]]
id = "auditors-read-the-trail"
effect = "permit"
description = "Auditors (and admins) may read the project's audit trail"
principals = ["role:auditor"]
tools = ["query_audit_log", "whoami"]

[[rules]]
id = "members-sleep-10-min"
effect = "permit"
description = "Members may sleep for up to ten minutes"
principals = ["role:member"]
tools = ["sleep"]
[rules.when]
seconds = { max = 600 }

[[rules]]
id = "members-run-jobs"
effect = "permit"
description = "Members run jobs of up to an hour and two CPUs on the local site"
principals = ["role:member"]
tools = ["submit_job"]
[rules.when]
"resources.walltime" = { max = "01:00:00" }
"resources.nodes" = { max = 1, optional = true }          # absent: submit_job's default, 1
"resources.tasks" = { max = 2, optional = true }
"resources.cpus_per_task" = { max = 2, optional = true }

[[rules]]
id = "members-follow-jobs"
effect = "permit"
description = "Members follow, read and cancel their project's jobs"
principals = ["role:member"]
tools = ["get_job", "list_jobs", "wait_job", "read_job_output", "cancel_job"]

[[rules]]
id = "members-use-data"
effect = "permit"
description = "Members look into their storage areas and stage data between them"
principals = ["role:member"]
tools = ["list_files", "stat_file", "read_file", "stage_data", "get_transfer", "list_transfers", "cancel_transfer"]

[[rules]]
id = "members-simulate-circuits"
description = "Members simulate circuits of up to 20 qubits and 100000 shots"
effect = "permit"
principals = ["role:member"]
tools = ["run_quantum_circuit"]
[rules.when]
qubits = { max = 20 }       # counted from the parsed circuit, not an argument
shots = { max = 100000, optional = true }                  # absent: the tool's default, 1024
backend = { in = ["statevector"], optional = true }        # absent: statevector

[[rules]]
id = "members-find-models"
effect = "permit"
description = "Members search the model registry"
principals = ["role:member"]
tools = ["query_model_registry", "get_model"]

# The registry shows a project only the models its inference rules name (docs/MODELS.md):
# here the example catalog's small models, not the larger vision model.
[[rules]]
id = "members-small-models"
effect = "permit"
description = "Members use the small text, OCR, embedding and speech models"
principals = ["role:member"]
tools = ["call_inference", "embed"]
[rules.when]
model = { in = ["llama-3.1-8b-instruct", "got-ocr-2.0", "bge-m3", "nomic-embed-text-v1.5", "whisper-large-v3"] }
max_tokens = { max = 4096, optional = true }  # absent: [inference] default_max_tokens
prompt_tokens = { max = 32000 }               # estimated from the messages, not an argument

[[rules]]
id = "robots-sleep-1-min"
effect = "forbid"
description = "Service accounts sleep for a minute at most"
principals = ["service:*"]
tools = ["sleep"]
[rules.when]
seconds = { above = 60 }

[[rate_limits]]
id = "tokens-per-minute"
description = "Inference tokens per project: prompt estimate + max_tokens, taken as a call starts"
tools = ["call_inference", "embed"]
per = "project"
rate = "200000/minute"
cost = "tokens"

[[rate_limits]]
id = "sleep-rate"
description = "Sleep calls per principal"
tools = ["sleep"]
per = "principal"
rate = "120/minute"
burst = 60
)";

constexpr const char* kDemoPolicyTests = R"(# Tests for demo.toml:  scigate policy test policies/demo.test.toml
policy = "demo.toml"
project = "demo"

[[cases]]
name = "a member may echo"
principal = "demo"
tool = "echo"
args = { text = "hello" }
expect = "allow"
rule = "members-introspect-and-echo"

[[cases]]
name = "a member may sleep five minutes"
principal = "demo"
tool = "sleep"
args = { seconds = 300 }
expect = "allow"

[[cases]]
name = "a member may not sleep an hour"
principal = "demo"
tool = "sleep"
args = { seconds = 3600 }
expect = "deny"
rule = "members-sleep-10-min"
reason_contains = "exceeds the limit 600"

[[cases]]
name = "the lab controller may not sleep two minutes"
principal = "lab-controller"
kind = "service"
tool = "sleep"
args = { seconds = 120 }
expect = "deny"
rule = "robots-sleep-1-min"

[[cases]]
name = "a member may run a ten-minute job"
principal = "demo"
tool = "submit_job"
args = { script = "echo hi", resources = { walltime = "00:10:00" } }
expect = "allow"
rule = "members-run-jobs"

[[cases]]
name = "a member may not run a two-hour job"
principal = "demo"
tool = "submit_job"
args = { script = "echo hi", resources = { walltime = "02:00:00" } }
expect = "deny"
reason_contains = "exceeds the limit"

[[cases]]
name = "a member may simulate a 5-qubit circuit"
principal = "demo"
tool = "run_quantum_circuit"
args = { source = "qreg q[5];", qubits = 5, shots = 1000 }
expect = "allow"
rule = "members-simulate-circuits"

[[cases]]
name = "a member may not simulate 30 qubits"
principal = "demo"
tool = "run_quantum_circuit"
args = { source = "qreg q[30];", qubits = 30 }
expect = "deny"
reason_contains = "qubits"

[[cases]]
name = "an auditor may read the audit trail"
principal = "ada"
roles = ["auditor"]
tool = "query_audit_log"
args = {}
expect = "allow"
rule = "auditors-read-the-trail"

[[cases]]
name = "a member may not read the audit trail"
principal = "demo"
tool = "query_audit_log"
args = {}
expect = "deny"

[[cases]]
name = "a member may search the model registry"
principal = "demo"
tool = "query_model_registry"
args = { text = "embedding" }
expect = "allow"
rule = "members-find-models"

[[cases]]
name = "a member may embed with bge-m3"
principal = "demo"
tool = "embed"
args = { model = "bge-m3", prompt_tokens = 120 }   # prompt_tokens: what the tool derives
expect = "allow"
rule = "members-small-models"

[[cases]]
name = "a member may not ask the small model for more than 4096 tokens"
principal = "demo"
tool = "call_inference"
args = { model = "llama-3.1-8b-instruct", max_tokens = 10000, prompt_tokens = 50 }
expect = "deny"
rule = "members-small-models"

[[cases]]
name = "a member may not use the vision model"
principal = "demo"
tool = "call_inference"
args = { model = "qwen2.5-vl-7b-instruct" }
expect = "deny"
rule = "members-small-models"

[[cases]]
name = "someone outside the project may not echo"
principal = "mallory"
roles = []
tool = "echo"
args = { text = "hi" }
expect = "deny"
)";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  std::map<std::string, std::vector<std::string>> all;  // every value of a repeated option
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
        out.all[key].push_back(out.options[key]);
      } else if (std::find(with_value.begin(), with_value.end(), key) != with_value.end()) {
        if (i + 1 >= a.size()) throw std::invalid_argument("--" + key + " needs a value");
        out.options[key] = a[++i];
        out.all[key].push_back(out.options[key]);
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

// Whether every directory from / down to `dir` lets other users through (o+x): as root, local
// jobs run as an unprivileged account that must reach the jobs root.
bool reachable_by_others(const fs::path& dir) {
  fs::path p;
  for (const auto& part : fs::absolute(dir).lexically_normal()) {
    p /= part;
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0 || !(st.st_mode & S_IXOTH)) return false;
  }
  return true;
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
  fs::create_directories(dir / "policies");
  auto write = [](const fs::path& f, const char* text) {
    std::ofstream out(f);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + f.string());
  };
  write(dir / "policies" / "demo.toml", kDemoPolicy);
  write(dir / "policies" / "demo.test.toml", kDemoPolicyTests);
  write(cfg_file, kDemoConfig);
  // The local job site. As root, jobs run as `nobody`, which must reach the jobs root: beside the
  // config when it can (not under root's 0700 home), else under /var/lib/scigate.
  // Without [[sites]] the config has one local site with its jobs in DIR/jobs.
  if (::geteuid() == 0 && !reachable_by_others(dir)) {
    fs::path jobs_root =
        fs::path("/var/lib/scigate") / (fs::absolute(dir).lexically_normal().filename().string() + "-jobs");
    fs::create_directories(jobs_root);
    fs::permissions(jobs_root, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                   fs::perms::others_read | fs::perms::others_exec);
    std::ofstream out(cfg_file, std::ios::app);
    out << "\n[[sites]]\n# Jobs run on this machine (docs/JOBS.md) as run_as, which cannot reach this directory.\n"
           "id = \"local\"\nscheduler = \"local\"\njobs_root = \""
        << jobs_root.string() << "\"\nrun_as = \"nobody\"\n";
  }
  Config cfg = load_config(cfg_file);
  log::init("text", "warn");
  App app(cfg);
  auto key = app.keys().create("demo", "user", "demo key created by scigate init");
  auto lab = app.keys().create("lab-controller", "service", "demo service key created by scigate init");
  grant_credits(cfg, "demo", "", 1000 * kMicroPerCredit, std::nullopt, "scigate init", "demo credits");
  std::size_t models = import_models_text(cfg, kDemoModels, "examples/models/manifest.toml");
  auto audit_key = audit::SigningKey::load_or_create(cfg.audit.signing_key);
  std::cout << "Initialised " << fs::absolute(dir).string() << "\n"
            << "  config:   " << fs::absolute(cfg_file).string() << "\n"
            << "  database: " << cfg.database.string() << "\n"
            << "  audit:    checkpoints signed with " << cfg.audit.signing_key.string() << " (key id "
            << audit_key.key_id() << "; public key: scigate audit pubkey)\n"
            << "  project:  demo (member: demo; service account: lab-controller)\n"
            << "  policy:   " << fs::absolute(dir / "policies" / "demo.toml").string() << " (tests: demo.test.toml beside it)\n"
            << "  jobs:     local executor, job directories in " << cfg.sites.front().jobs_root.string() << "\n"
            << "  data:     area://scratch/ in " << (cfg.data.areas.empty() ? std::string("-") : cfg.data.areas.front().root.string())
            << " (list_files, read_file, stage_data)\n"
            << "  credits:  1000 granted to project demo (scigate credits balance --config "
            << fs::absolute(cfg_file).string() << ")\n"
            << "  models:   " << models << " example models in the registry (scigate models list --config "
            << fs::absolute(cfg_file).string() << ")\n\n"
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
    Principal who;
    who.name = principal;
    who.kind = k.info.kind;
    auth::assign_projects(who, cfg);
    if (who.projects.empty())
      std::cerr << "note: '" << principal << "' belongs to no project in " << cfg.path.string()
                << (who.kind == "service" ? " (list it in a project's service_accounts)" : "") << "\n";
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

std::string joined(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

void print_decision(const Decision& d) {
  std::cout << "decision: " << (d.permitted() ? "allow" : "deny") << "\n"
            << "rules:    " << (d.rule_ids.empty() ? "-" : joined(d.rule_ids)) << "\n"
            << "reason:   " << d.reason << "\n";
  if (!d.hint.empty()) std::cout << "hint:     " << d.hint << "\n";
  if (d.retry_after) std::cout << "retry after: " << d.retry_after->count() << " ms\n";
}

// scigate policy check: the pipeline's steps 2-4 (project and role, arguments, policy) for one
// call, without running it or taking a rate-limit token.
int policy_check(const Args& args) {
  Config cfg = load_config(config_path(args));
  log::init("text", "warn");
  Principal p;
  p.name = args.opt("as");
  if (p.name.empty()) throw std::invalid_argument("policy check needs --as NAME");
  p.kind = args.opt("kind", "user");
  if (p.kind != "user" && p.kind != "service") throw std::invalid_argument("--kind must be user or service");
  p.auth_method = "cli";
  if (auto it = args.all.find("group"); it != args.all.end()) p.groups = it->second;
  auth::assign_projects(p, cfg);
  std::string tool_name = args.opt("tool");
  if (tool_name.empty()) throw std::invalid_argument("policy check needs --tool TOOL");
  json arguments = json::parse(args.opt("args", "{}"), nullptr, false);
  if (arguments.is_discarded() || !arguments.is_object())
    throw std::invalid_argument("--args must be a JSON object, e.g. '{\"seconds\": 5}'");
  auto now = std::chrono::system_clock::now();
  if (auto at = args.opt("at"); !at.empty()) {
    auto t = policy::parse_time(at);
    if (!t) throw std::invalid_argument("--at must be a date-time like 2025-01-06T10:00:00Z");
    now = *t;
  }
  std::string project = args.opt("project", p.default_project());

  std::cout << "principal: " << p.name << " (" << p.kind;
  if (!p.groups.empty()) std::cout << "; groups " << joined(p.groups);
  if (auto it = p.roles.find(project); it != p.roles.end()) std::cout << "; roles in " << project << ": " << joined(it->second);
  std::cout << ")\n";
  auto deny = [](const std::string& stage, const std::string& reason, const std::string& hint) {
    std::cout << "decision: deny\nstage:    " << stage << "\nreason:   " << reason << "\n";
    if (!hint.empty()) std::cout << "hint:     " << hint << "\n";
    return 1;
  };

  ToolRegistry registry = tools::make_registry(cfg);
  Tool* tool = registry.find(tool_name);
  if (!tool) std::cerr << "note: no tool '" << tool_name << "' is registered with this config; the policy is checked anyway\n";
  if (project.empty()) {
    if (!tool || tool->descriptor().needs_project)
      return deny("project", p.name + " is not a member of any project", "add --project or a membership in the config");
  } else {
    if (!cfg.project(project)) return deny("project", "no project '" + project + "' in " + cfg.path.string(), "");
    if (!p.member_of(project)) return deny("membership", p.name + " is not a member of project " + project, "");
    if (tool && !p.has_role(project, tool->descriptor().required_role))
      return deny("role", tool_name + " needs the " + tool->descriptor().required_role + " role in project " + project, "");
  }
  if (tool) {
    if (auto e = registry.validate_arguments(*tool, arguments)) return deny("arguments", e->message, e->hint);
  }

  ProjectPolicies engine(ProjectPolicies::sources_from(cfg));
  engine.set_schema_lookup([&registry](const std::string& name) -> const json* {
    const Tool* t = registry.find(name);
    return t ? &t->descriptor().input_schema : nullptr;
  });
  PolicyQuery q{p, project, tool_name, arguments, now, false};
  Decision d = engine.decide(q);
  if (auto pol = engine.policy_for(project); pol && !project.empty())
    std::cout << "policy:   " << pol->source() << " (sha256 " << pol->hash() << ")\n";
  else
    std::cout << "policy:   built-in membership policy (project " << (project.empty() ? "none" : project) << " has no policy file)\n";
  print_decision(d);
  return d.permitted() ? 0 : 1;
}

int policy_test(const Args& args) {
  if (args.positional.empty()) throw std::invalid_argument("usage: scigate policy test FILE...");
  int passed = 0, failed = 0, errors = 0;
  for (const auto& file : args.positional) {
    try {
      auto r = policy::run_policy_tests(file);
      std::cout << r.file << " (policy " << r.policy_file << "):\n";
      for (const auto& c : r.cases) {
        if (c.passed) {
          ++passed;
          std::cout << "  PASS: " << c.name << "\n";
        } else {
          ++failed;
          std::cout << "  FAIL: " << c.name << " (line " << c.line << "): " << c.failure << "\n"
                    << "        decided by " << (c.decision.rule_ids.empty() ? "-" : joined(c.decision.rule_ids, ","))
                    << ": " << c.decision.reason << "\n";
        }
      }
    } catch (const PolicyError& e) {
      ++errors;
      std::cout << "ERROR: " << e.what() << "\n";
    }
  }
  std::cout << std::string(60, '-') << "\n"
            << "PASS: " << passed << "/" << (passed + failed) << "\n";
  if (failed) std::cout << "FAIL: " << failed << "/" << (passed + failed) << "\n";
  if (errors) std::cout << "ERROR: " << errors << " file(s) could not be run\n";
  return failed || errors ? 1 : 0;
}

int policy_validate(const Args& args) {
  if (args.positional.empty()) throw std::invalid_argument("usage: scigate policy validate FILE...");
  int bad = 0;
  for (const auto& file : args.positional) {
    try {
      auto p = policy::Policy::load(file);
      std::cout << file << ": ok (" << p.rules().size() << " rules, " << p.rate_limits().size()
                << " rate limits; sha256 " << p.hash() << ")\n";
    } catch (const PolicyError& e) {
      ++bad;
      std::cout << e.what() << "\n";
    }
  }
  return bad ? 1 : 0;
}

int cmd_policy(const std::vector<std::string>& a) {
  const char* usage = "usage: scigate policy check|test|validate ...";
  if (a.size() < 3) throw std::invalid_argument(usage);
  const std::string sub = a[2];
  if (sub == "check")
    return policy_check(parse_args(a, 3, {"config", "project", "as", "kind", "group", "tool", "args", "at"}));
  if (sub == "test") return policy_test(parse_args(a, 3, {}));
  if (sub == "validate") return policy_validate(parse_args(a, 3, {}));
  throw std::invalid_argument(usage);
}

int cmd_credits(const std::vector<std::string>& a) {
  if (a.size() < 3)
    throw std::invalid_argument("usage: scigate credits grant|balance|statement|rates|verify [--config FILE] ...");
  Args args = parse_args(a, 3, {"config", "project", "user", "expires", "days", "note", "by", "since", "format"});
  Config cfg = load_config(config_path(args));
  log::init("text", "warn");
  CreditsArgs c{a[2], args.positional, args.options, args.flags};
  c.options.erase("config");
  return credits_command(cfg, c, std::cout);
}

int cmd_models(const std::vector<std::string>& a) {
  if (a.size() < 3) throw std::invalid_argument("usage: scigate models import|list [--config FILE] ...");
  Args args = parse_args(a, 3, {"config", "format", "project", "as", "kind", "group", "modality", "text"});
  Config cfg = load_config(config_path(args));
  log::init("text", "warn");
  ModelsArgs m{a[2], args.positional, args.options, args.flags, {}};
  if (auto it = args.all.find("group"); it != args.all.end()) m.groups = it->second;
  m.options.erase("config");
  m.options.erase("group");
  return models_command(cfg, m, std::cout, std::cerr);
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
    if (cmd == "policy") return cmd_policy(a);
    if (cmd == "credits") return cmd_credits(a);
    if (cmd == "models") return cmd_models(a);
    std::cerr << "scigate: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  } catch (const ConfigError& e) {
    std::cerr << "scigate: config error: " << e.what() << "\n";
    return 2;
  } catch (const PolicyError& e) {
    std::cerr << "scigate: policy error: " << e.what() << "\n";
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
