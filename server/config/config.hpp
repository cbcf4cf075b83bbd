#pragma once
// The server's configuration, read from one TOML file. Relative paths are resolved against the
// file's directory. Loading never half-succeeds: it returns a Config or throws ConfigError that
// names file, line and column.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
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
                                 // (at most 6 decimals; loading checks it converts exactly)
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
  // Events queued for one response stream (an OpenAI stream, an MCP SSE stream) that the client
  // has not read yet; beyond it the client is taken for gone (a reader that stopped, or trickles
  // while the backend generates) and the call is cancelled as on a disconnect.
  std::size_t stream_backlog_bytes = 8u << 20;
  std::chrono::seconds idle_timeout{120};
  std::chrono::seconds session_idle_timeout{3600};
  std::chrono::seconds shutdown_grace{30};
  std::size_t max_connections = 20000;
  std::size_t max_sessions = 100000;
  std::size_t max_sessions_per_principal = 1000;  // beyond it, the principal's least recently used ends
  std::string tls_cert;  // PEM chain; TLS is on when both are set
  std::string tls_key;
};

// [oidc]: bearer JWTs from an OpenID Connect provider, and the RFC 9728 metadata that tells
// MCP clients where to get them. Present only when the file has an [oidc] table.
struct OidcConfig {
  std::string issuer;                           // required; the token's iss must equal it
  std::vector<std::string> audience;            // the token's aud must contain one; default: [resource]
  std::filesystem::path jwks_file;              // exactly one of jwks_file and jwks_url
  std::string jwks_url;
  std::string username_claim = "preferred_username";  // falls back to sub when absent
  std::string groups_claim = "groups";
  std::chrono::seconds clock_skew{60};
  std::chrono::seconds jwks_refresh_min_interval{30};  // at most one JWKS fetch per interval
  std::chrono::seconds jwks_cache_ttl{600};             // keys are re-fetched this often
  std::vector<std::string> required_scopes;      // all must be granted, else 403 insufficient_scope
  std::string resource;                          // empty: the MCP endpoint URL the server listens on
  std::vector<std::string> authorization_servers;  // default: [issuer]
};

// One entry of [credits.rates]: what one unit of a resource costs. Rates are kept in
// pico-credits per unit (1 credit = 10^12) so that per-token prices below a micro-credit are
// exact; charges are rounded up to whole micro-credits per call.
struct CreditRateConfig {
  std::string resource;        // "gpu_hour:a100", "call:sleep", ...
  int64_t pico_per_unit = 0;
  std::string unit;            // label for people: "GPU-h", "token", "s"
};

// [credits]: the SQLite credit ledger (docs/CREDITS.md).
struct CreditsConfig {
  bool enabled = true;
  std::chrono::seconds hold_timeout{0};         // least life of a hold; 0: tool_timeout_s + 60
  std::chrono::seconds sweep_interval{30};      // how often expired holds and grants are swept
  std::chrono::seconds idempotency_ttl{86400};  // how long a settled key replays its result
  std::vector<CreditRateConfig> rates;          // in file order
};

// The audit trail's signed checkpoints (docs/AUDIT.md). Paths are relative to the config file.
struct AuditConfig {
  std::filesystem::path signing_key = "audit-signing-key.pem";  // Ed25519 private key, created if missing
  std::filesystem::path checkpoint_file = "audit-checkpoints.jsonl";
  int64_t checkpoint_every_records = 1000;  // 0: not by count
  std::chrono::seconds checkpoint_every{60};  // 0: not by time
  // Each committed record also written to the log as an `audit` event (for a SIEM); the
  // database holds the chain either way.
  bool log_mirror = true;
};

// [sites.slurm]: how a Slurm site is reached (connectors/scheduler/slurm). Kept as given.
struct SlurmSiteConfig {
  std::string mode = "cli";  // cli | rest
  std::string rest_url;      // slurmrestd over TCP (JWT)
  std::filesystem::path rest_socket;     // slurmrestd on a unix socket (rest_auth/local)
  std::filesystem::path jwt_token_file;  // the token for rest_url
  std::string user;          // the Slurm user jobs are submitted as
  std::filesystem::path slurm_conf;      // SLURM_CONF for the CLI (and sacct); "" = Slurm's default
};

// [[sites]]: where jobs run (docs/CONFIG.md#sites). Without any, one local site "local".
// [sites.ibm_runtime]: a quantum device behind IBM's Qiskit Runtime REST API (docs/QUANTUM.md).
struct IbmRuntimeSiteConfig {
  std::string url = "https://quantum.cloud.ibm.com/api";  // /v1/... is appended
  std::string iam_url = "https://iam.cloud.ibm.com";      // /identity/token is appended
  std::filesystem::path api_key_file;  // the IBM Cloud API key (never in this file, never shown)
  std::string service_crn;             // the Qiskit Runtime instance (Service-CRN header)
  std::string backend;                 // the device's name at IBM ("ibm_kingston"); default: the site id
  std::string api_version = "2025-05-01";  // IBM-API-Version header
  int64_t max_shots = 100'000;
  std::chrono::milliseconds request_timeout{30'000};
};

struct SiteConfig {
  std::string id;
  std::string scheduler = "local";       // local | slurm | ibm-runtime (a quantum device)
  std::filesystem::path jobs_root;       // each project's jobs live in <jobs_root>/<project>/
  std::chrono::milliseconds poll_interval{250};  // default 250 ms local, 2000 ms slurm
  std::string default_partition;
  std::vector<std::string> partitions;   // empty: any the scheduler accepts
  std::string run_as = "nobody";         // local jobs' account when scigate runs as root
  int slots_cpus = 0;                    // local: CPUs shared by running jobs (0: nproc)
  int64_t slots_memory_mb = 0;           // local: memory shared by running jobs (0: unlimited)
  bool allow_network = false;            // local: jobs get the network (else bwrap --unshare-net)
  std::optional<SlurmSiteConfig> slurm;  // [sites.slurm], for scheduler = "slurm"
  std::optional<IbmRuntimeSiteConfig> ibm_runtime;  // [sites.ibm_runtime], for scheduler = "ibm-runtime"
};

// The MCP tasks extension (docs/PROTOCOL.md "Tasks"): tool calls that run in the background
// and are followed with tasks/get.
struct TasksConfig {
  bool enabled = true;
  std::chrono::seconds default_ttl{3600};        // retention from creation, when the client asks for none
  std::chrono::seconds max_ttl{7 * 86400};       // the most a client may ask for
  std::chrono::seconds min_retention{600};       // a finished task stays at least this long after it ends
  std::chrono::milliseconds poll_interval{1000}; // suggested to clients
  std::size_t max_running_per_principal = 32;
  // Finished tasks kept per principal (their results are in SQLite, not memory); beyond either
  // bound the oldest finished ones are discarded before their ttl.
  std::size_t max_retained_per_principal = 1000;
  uint64_t max_retained_result_mb_per_principal = 256;
  std::chrono::seconds max_duration{86400};      // a task's tool call is cut after this (not tool_timeout_s)
};

// [quantum]: the run_quantum_circuit tool and its embedded simulator (docs/QUANTUM.md).
struct QuantumConfig {
  bool enabled = false;
  uint64_t max_memory_mb = 1024;     // per simulation: the state (and its per-shot copy)
  int threads = 0;                   // per simulation; 0: one per core
  int concurrency = 1;               // simulations at once (the pool's threads); more wait
  bool fusion = true;
  int max_fused_qubits = 4;          // 2..5
  int max_statevector_qubits = 20;   // return_statevector up to this many qubits
  int64_t max_shots = 1'000'000;
  int max_qubits = 34;               // the parser's bound; memory usually binds first
};

// [[data.areas]]: a storage area (docs/DATA.md): a directory tree that tools reach as
// area://<id>/<path>, every path resolved beneath `root`. Loading expands project = "*" into one
// area per project.
struct AreaConfig {
  std::string id;                     // [A-Za-z0-9_-]{1,64}: the host part of area:// URIs
  std::string project;                // the owning project; "" for a shared dataset (read-only)
  std::vector<std::string> readers;   // further projects that may read it ("*": every project)
  std::string site;                   // where jobs see the same files (a label; may be empty)
  std::filesystem::path root;         // "{project}" replaced by the project id
  bool writable = true;               // mode = "rw" (the owner writes) | "ro"
  int64_t quota_bytes = 0;            // 0: no byte quota
  int64_t quota_files = 0;            // 0: no file-count quota
  bool allow_hard_links = false;      // read regular files with st_nlink > 1 (refused by default)
  bool fsync = false;                 // flush each file to disk before it is renamed into place
  bool create = true;                 // create root when missing (owned areas only)
};

// [[data.sources]]: what the gateway adds to requests under a URL prefix (credentials, uploads).
// Secrets live in files, never in this one and never in tool arguments.
struct DataSourceConfig {
  std::string url;                         // prefix: "https://data.example.org/project-x/"
  std::vector<std::string> projects;       // who may use it; empty: every project
  std::filesystem::path bearer_token_file; // Authorization: Bearer <file contents>
  std::filesystem::path basic_auth_file;   // "user:password" -> Authorization: Basic
  std::filesystem::path headers_file;      // "Name: value" lines
  bool allow_upload = false;               // stage_data may PUT files here
};

// [data.http]: outbound HTTP(S) for stage_data. Nothing is reachable until allowed_hosts says so.
struct DataHttpConfig {
  std::vector<std::string> allowed_hosts;     // "data.example.org", "*.example.org", "127.0.0.1"
  std::vector<std::string> allowed_networks;  // CIDRs exempt from the private-address refusal
  std::chrono::seconds connect_timeout{10};
  std::chrono::seconds timeout{6 * 3600};     // one download or upload, retries included
  std::chrono::seconds stall_timeout{60};     // fail when under 1 KiB/s for this long
  int max_redirects = 5;
  int retries = 3;                            // resumed with Range after a broken connection
  int64_t max_bytes = 0;                      // per file; 0: data.max_transfer_bytes
  std::string proxy;                          // "" : no proxy (the environment's is ignored)
};

// [data]: storage areas and data staging (docs/DATA.md).
struct DataConfig {
  std::vector<AreaConfig> areas;
  std::vector<DataSourceConfig> sources;
  DataHttpConfig http;
  int max_concurrent = 4;                     // transfers moving data at once; more queue
  int hash_threads = 2;                       // SHA-256 workers shared by all transfers
  int64_t max_transfer_bytes = int64_t(1) << 40;  // per transfer (1 TiB)
  int64_t max_transfer_files = 100'000;       // per directory transfer
  std::chrono::seconds quota_scan_interval{30};   // how old an area's measured usage may be
  int max_attempts = 3;                       // restarts of one transfer before it fails
  int64_t max_bytes_per_s = 0;                // bandwidth of one transfer; 0: unlimited
  int workers_per_transfer = 2;               // threads copying the files of one large directory

  // The area `id` as project `project` sees it (its own, else a shared one it may read).
  const AreaConfig* area_for(const std::string& project, const std::string& id) const;
};

// One OpenAI-compatible inference server ([[inference.backends]], docs/INFERENCE.md).
struct InferenceBackendConfig {
  std::string id;
  std::string url;                     // base URL, without /v1 ("http://gpu01:8000")
  std::string flavor = "vllm";         // vllm | llamacpp | openai: which quirks and /tokenize shape
  std::filesystem::path api_key_file;  // the backend's key (never shown to agents)
  std::string api_key_env;             // or an environment variable holding it
  std::vector<std::string> models;     // ids it serves; empty: whatever its /v1/models lists
  std::string gpu_type;                // for people and the registry ("a100", "h200")
  int max_concurrency = 64;            // calls in flight to it; more go elsewhere or wait
  std::chrono::milliseconds connect_timeout{2'000};
  std::chrono::milliseconds first_token_timeout{60'000};  // until the first byte of the answer
  std::chrono::milliseconds request_timeout{600'000};     // the whole call
};

// [inference]: call_inference, embed and the OpenAI-compatible endpoints.
struct InferenceConfig {
  std::vector<InferenceBackendConfig> backends;  // none: the inference tools are not offered
  std::chrono::milliseconds health_interval{10'000};  // GET /health and /v1/models per backend
  int retries = 2;                                // further attempts after a connection error or 5xx
  std::chrono::milliseconds retry_backoff{100};   // doubled each attempt, with jitter
  int breaker_failures = 5;                       // consecutive failures that open a backend's breaker
  std::chrono::milliseconds breaker_cooldown{30'000};  // then one trial call is let through
  int64_t default_max_tokens = 1024;              // when a call names none
  int max_embedding_inputs = 2048;
  std::size_t max_inline_vectors_bytes = 256 * 1024;  // larger embeddings come back as a summary
  std::chrono::milliseconds queue_timeout{2'000};     // wait for a free slot when every replica is full
};

struct Config {
  std::filesystem::path path;       // the file this came from (empty for built-in defaults)
  std::filesystem::path base_dir;   // relative paths resolve here
  std::string server_name = "scigate";
  std::filesystem::path database = "scigate.db";
  std::string log_level = "info";
  std::string log_format = "json";  // json | text
  // When an answered call's charge and audit record are safe: "fsync" (on disk: power loss) or
  // "commit" (in the WAL: a crash of the server process). docs/OPERATIONS.md "Durability".
  std::string durability = "fsync";
  // The state writer's longest poll for its next item before it sleeps (state::Writer::Options).
  std::chrono::microseconds writer_poll{200};
  // With durability = "commit": how long journaled writes may wait for the writer to come by
  // itself (state::Writer::Options::linger).
  std::chrono::microseconds writer_linger{10000};
  int threads = 0;                  // 0: one per core, at least 2
  std::size_t max_message_bytes = 4 * 1024 * 1024;
  int max_depth = 64;
  std::chrono::seconds tool_timeout{300};
  std::string stdio_principal;      // principal for stdio callers without SCIGATE_API_KEY
  bool demo_tools = false;          // register the echo and sleep tools
  std::string instructions;
  HttpConfig http;
  TasksConfig tasks;
  CreditsConfig credits;
  AuditConfig audit;
  std::vector<ProjectConfig> projects;
  std::vector<UserConfig> users;
  std::optional<OidcConfig> oidc;
  std::vector<SiteConfig> sites;    // never empty after loading
  QuantumConfig quantum;
  DataConfig data;
  InferenceConfig inference;

  const SiteConfig* site(const std::string& id) const;
  const ProjectConfig* project(const std::string& id) const;
  const UserConfig* user(const std::string& name) const;
  // Projects where the user (by name, ignoring groups) holds any role, in config order.
  std::vector<std::string> projects_of(const std::string& principal) const;
};

Config load_config(const std::filesystem::path& file);
Config parse_config(std::string_view toml_text, const std::filesystem::path& base_dir, const std::string& source_name);

}  // namespace scigate
