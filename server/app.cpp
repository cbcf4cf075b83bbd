#include "server/app.hpp"
#include "server/common/thread_name.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include <cstdlib>
#include <fstream>
#include <future>
#include <thread>

#include "connectors/quantum/ibm/ibm_runtime.hpp"
#include "connectors/scheduler/local/local_scheduler.hpp"
#include "connectors/scheduler/slurm/slurm_cli.hpp"
#include "connectors/scheduler/slurm/slurm_rest.hpp"
#include "server/auth/directory.hpp"
#include "server/common/crypto.hpp"
#include "server/common/decimal.hpp"
#include "server/common/time_format.hpp"
#include "server/observability/log.hpp"
#include "server/transport/http_server.hpp"
#include "server/transport/stdio_transport.hpp"
#include "tools/builtin.hpp"

namespace scigate {
namespace asio = boost::asio;

namespace {
state::Database& migrated(state::Database& db) {
  db.migrate(state::schema_migrations());
  return db;
}

std::unique_ptr<Ledger> make_ledger(const Config& config, state::Writer& writer, SqliteLedger** sqlite) {
  if (!config.credits.enabled) return std::make_unique<UnmeteredLedger>();
  auto ledger = std::make_unique<SqliteLedger>(writer, credit_ledger_options(config));
  *sqlite = ledger.get();
  return ledger;
}

// The scheduler of each [[sites]] entry: the embedded local executor, or Slurm through its CLI
// or slurmrestd ([sites.slurm] mode), or a quantum device behind IBM's Qiskit Runtime.
std::unique_ptr<jobs::Scheduler> make_scheduler(const SiteConfig& site) {
  if (site.scheduler == "local") {
    jobs::LocalSchedulerOptions o;
    o.jobs_root = site.jobs_root;
    o.run_as = site.run_as;
    o.slots_cpus = site.slots_cpus;
    o.slots_memory_mb = site.slots_memory_mb;
    o.allow_network = site.allow_network;
    if (const char* b = std::getenv("SCIGATE_NO_BWRAP"); b && *b == '1') o.use_bwrap = false;
    return std::make_unique<jobs::LocalScheduler>(std::move(o));
  }
  if (site.scheduler == "slurm") {
    const SlurmSiteConfig slurm = site.slurm.value_or(SlurmSiteConfig{});
    jobs::SlurmCliOptions cli;
    cli.slurm_conf = slurm.slurm_conf;
    if (slurm.mode == "rest") {
      jobs::SlurmRestOptions rest;
      rest.unix_socket = slurm.rest_socket;
      rest.url = slurm.rest_url;
      rest.user_name = slurm.user;
      rest.token_file = slurm.jwt_token_file;
      rest.sacct = cli;  // jobs slurmctld has forgotten: sacct -c
      return std::make_unique<jobs::SlurmRestScheduler>(std::move(rest));
    }
    return std::make_unique<jobs::SlurmCliScheduler>(std::move(cli));
  }
  if (site.scheduler == "ibm-runtime" && site.ibm_runtime)
    return std::make_unique<quantum::IbmRuntimeScheduler>(*site.ibm_runtime);
  return nullptr;
}

// A policy reload that changed a project's policy, or refused its broken file: the policy that
// decides every later call is part of the trail an auditor reads (docs/AUDIT.md).
AuditRecord policy_reload_record(const ProjectPolicies::ReloadEvent& e) {
  AuditRecord r;
  r.time_ms = unix_now_ms();
  r.request_id = "policy-" + crypto::random_hex(8);
  r.project = e.project;
  r.outcome = e.accepted ? "ok" : "invalid";
  if (!e.accepted) r.error_code = "policy_invalid";
  r.details = {{"event", "policy_reload"}, {"trigger", e.trigger}, {"file", e.file.string()}, {"policy_hash", e.hash}};
  if (e.accepted)
    r.details["previous_policy_hash"] = e.previous_hash;
  else
    r.details["reason"] = e.error.substr(0, 500);
  return r;
}

AuditLogOptions audit_options(const Config& c) {
  AuditLogOptions o{true, c.audit.signing_key, c.audit.checkpoint_file, c.audit.checkpoint_every_records,
                    c.audit.checkpoint_every};
  o.sync_before_answer = c.durability == "fsync";
  o.also_log = c.audit.log_mirror;
  return o;
}

// One unlabelled Prometheus sample with its HELP and TYPE lines.
void sample(std::string& o, const char* type, const char* name, const char* help, uint64_t v) {
  o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
       std::to_string(v) + "\n";
}

// The state writer's counters for /metrics (docs/OPERATIONS.md lists them).
std::string writer_metrics(const state::Writer::Stats& s) {
  std::string o;
  auto counter = [&](const char* name, const char* help, uint64_t v) { sample(o, "counter", name, help, v); };
  counter("scigate_state_items_total", "Writes (holds, settles, audit records) the state writer has committed.", s.items);
  counter("scigate_state_transactions_total", "Transactions the state writer has committed.", s.transactions);
  counter("scigate_state_retried_batches_total", "Batches rolled back and retried item by item after a failure.",
          s.retried_batches);
  counter("scigate_state_failed_items_total", "Writes that failed (their callers got an error).", s.failed_items);
  counter("scigate_state_lock_waits_total", "Waits for the database write lock held by another connection.",
          s.busy_waits);
  counter("scigate_state_fsyncs_total", "WAL fsyncs (durability = fsync).", s.syncs);
  counter("scigate_state_polls_total", "Polls for the next write before the idle writer sleeps.", s.spins);
  counter("scigate_state_poll_hits_total", "Polls that found a write before their budget ran out.", s.spin_hits);
  counter("scigate_state_journaled_total",
          "Writes answered from the journal before their commit (durability = commit).", s.journaled);
  counter("scigate_state_journal_refused_total",
          "Writes that waited for their commit because the journal was off, behind or failing.", s.journal_refused);
  sample(o, "gauge", "scigate_state_journal_bytes", "Size of the journal file now.", s.journal_bytes);
  return o;
}

// The credit ledger's mode and counters for /metrics.
std::string ledger_metrics(const SqliteLedger& ledger) {
  auto s = ledger.stats();
  std::string o;
  sample(o, "counter", "scigate_credit_memory_holds_total",
         "Holds decided in memory (the server owned the ledger alone).", s.memory_holds);
  sample(o, "counter", "scigate_credit_yields_total",
         "Times the server wrote its holds out to share the ledger (a CLI grant, a second server).", s.yields);
  sample(o, "counter", "scigate_credit_reloads_total",
         "Times the server reloaded the ledger after another process wrote to it.", s.reloads);
  sample(o, "gauge", "scigate_credit_ledger_alone",
         "1 while holds are decided in memory, 0 while every hold is a row.", ledger.owns_alone() ? 1 : 0);
  return o;
}
}  // namespace

CreditLedgerOptions credit_ledger_options(const Config& config) {
  CreditLedgerOptions o;
  for (const auto& p : config.projects)
    o.projects.push_back(credits::ProjectAccount{
        p.id, p.credit_account, decimal::parse(decimal::shortest(p.credit_line), 6).value_or(0)});  // checked at load
  for (const auto& r : config.credits.rates) o.rates.push_back(credits::Rate{r.resource, r.pico_per_unit, r.unit});
  o.hold_timeout = config.credits.hold_timeout;
  o.sweep_interval = config.credits.sweep_interval;
  o.idempotency_ttl = config.credits.idempotency_ttl;
  // The ledger does not fsync on its own: the pipeline answers a call only once its audit
  // record is durable, and that record is committed after the call's settle (on the same
  // writer, in the same transaction or a later one). The audit's fsync ([server] durability =
  // "fsync") therefore covers the charge too: one fsync per batch of calls instead of two per
  // call. The WAL replays a prefix of commits, never a later one without an earlier one.
  o.durable = false;
  return o;
}

App::App(Config config)
    : config_(std::move(config)),
      db_(config_.database),
      checkpointer_(config_.database),
      keys_(migrated(db_), config_),
      authenticator_(config_, keys_),
      // fsync mode: the writer fsyncs before answering an audit record; its commits never
      // checkpoint (checkpointer_ does).
      writer_(config_.database, state::Writer::Options{config_.durability == "fsync", 1024, &checkpointer_, config_.writer_poll,
                                                         config_.writer_linger}),
      ledger_(make_ledger(config_, writer_, &sqlite_ledger_)),
      audit_query_(std::make_unique<audit::AuditQueryService>(config_.database)),
      jobs_(std::make_unique<jobs::JobService>(config_, config_.database, *ledger_, make_scheduler)),
      models_(std::make_unique<registry::ModelRegistry>(config_.database)),
      areas_(std::make_unique<storage::Areas>(config_.data)),
      transfers_(std::make_unique<storage::TransferService>(config_, config_.database, *ledger_, *areas_)),
      inference_(config_.inference.backends.empty()
                     ? nullptr
                     : std::make_unique<inference::InferenceService>(config_.inference, models_.get())),
      // &policy_ before policy_ is built: the model tools keep the reference and use it only in calls.
      registry_(tools::make_registry(
          config_, tools::ToolServices{ledger_.get(), audit_query_.get(), jobs_.get(), models_.get(), &policy_,
                                       sqlite_ledger_ ? &sqlite_ledger_->rates() : nullptr, areas_.get(),
                                       transfers_.get(), inference_.get()})),
      policy_(ProjectPolicies::sources_from(config_)),
      audit_(writer_, audit_options(config_)),
      pipeline_(registry_, policy_, *ledger_, audit_, metrics_, config_.tool_timeout),
      openai_(inference_ ? std::make_unique<openai::OpenAiApi>(pipeline_, policy_, *inference_) : nullptr),
      tasks_(config_.tasks.enabled ? std::make_unique<tasks::TaskManager>(config_.tasks, config_.database) : nullptr),
      dispatcher_(config_, pipeline_, registry_, policy_, metrics_, tasks_.get()) {
  if (sqlite_ledger_)
    jobs_->set_pricer([ledger = sqlite_ledger_](const Usage& u) { return ledger->rates().price(u); });
  metrics_.add_collector([this] { return writer_metrics(writer_.stats()); });
  if (sqlite_ledger_) metrics_.add_collector([ledger = sqlite_ledger_] { return ledger_metrics(*ledger); });
  // An auditor's query reads every call answered before it, journaled or committed.
  audit_query_->before_read([this] { writer_.catch_up(std::chrono::seconds(2)); });
  policy_.set_reload_observer([this](const std::vector<ProjectPolicies::ReloadEvent>& events) {
    for (const auto& e : events) audit_.append(policy_reload_record(e));
  });
  policy_.set_schema_lookup([this](const std::string& tool) -> const json* {
    const Tool* t = registry_.find(tool);
    return t ? &t->descriptor().input_schema : nullptr;
  });
  // Without inference backends no health poller keeps availability current: what backends of an
  // earlier configuration served would stay "served now" in the registry for ever.
  if (!inference_) {
    try {
      if (auto n = models_->retain_backends_now({}))
        log::info("inference_registry_forgot_backends", {{"rows", n}, {"detail", "no inference backends configured"}});
    } catch (const std::exception& e) {
      log::warn("inference_registry_sync_failed", {{"detail", e.what()}});
    }
  }
}

App::~App() { policy_.stop_watching(); }  // the watcher reports reloads to audit_, destroyed first

void App::reload_policies() {
  // A broken file keeps the policy in force (ProjectPolicies logs why); clients re-list tools
  // only when something was loaded.
  if (!policy_.reload_from("sighup")) dispatcher_.broadcast_tools_changed();
}

void App::watch_policies(asio::io_context& io) {
  // The watcher thread only posts: notifications are sent from the I/O threads, as for SIGHUP.
  policy_.watch(std::chrono::seconds(1), [this, &io] { asio::post(io, [this] { dispatcher_.broadcast_tools_changed(); }); });
}

void App::drain_writers() {
  // Coroutines may still be parked on the audit writer or the ledger (a call cut short by the
  // stop). Their completions must reach the stopped io_context before it is destroyed; posted
  // to a dead one they would touch freed strands.
  jobs_->stop();  // pollers end; queued database work finishes and posts back
  if (inference_) inference_->stop();  // its HTTP client's last completions go to the stopped io_context
  if (tasks_) tasks_->join();
  models_->join();
  transfers_->stop();  // data stops moving; transfers in flight resume at the next start
  areas_->join();
  writer_.flush();  // the audit log's and the ledger's
}

void App::stop_tasks(asio::io_context& io, std::function<void()> done) {
  if (!tasks_) {
    asio::post(io, std::move(done));
    return;
  }
  tasks_->shutdown(io.get_executor(), config_.http.shutdown_grace, std::move(done));
}

int App::thread_count() const {
  if (config_.threads > 0) return config_.threads;
  return std::max(2u, std::thread::hardware_concurrency());
}

void App::prepare_to_serve() {
  // The journal first: what a crashed server answered but never committed (charges and audit
  // records) is committed before anything else reads the ledger or the log. It is kept in
  // `commit` mode only; a server in `fsync` mode replays one left by an earlier run.
  auto journal = config_.database;
  journal += "-writer.journal";
  bool append = config_.durability == "commit";
  if (append || std::filesystem::exists(journal)) writer_.open_journal(journal, append);
  if (sqlite_ledger_) {
    sqlite_ledger_->claim(config_.database);  // holds in memory while no other server shares the file
    sqlite_ledger_->recover_after_restart();
  }
  if (tasks_) tasks_->recover();
  audit_.prepare_checkpoints();
}

int App::serve_http(const std::string& host, uint16_t port, const std::string& port_file) {
  prepare_to_serve();
  asio::io_context io;
  mcp::SessionStore sessions(config_.http.max_sessions, config_.http.max_sessions_per_principal);
  dispatcher_.on_tools_changed_legacy = [&sessions] {
    for (auto& s : sessions.all()) s->send(jsonrpc::make_notification("notifications/tools/list_changed", nullptr));
  };
  transport::HttpServer server(io, transport::HttpDeps{config_, dispatcher_, sessions, authenticator_, metrics_, audit_,
                                                       [this] {
                                                         try {
                                                           db_.schema_version();
                                                           return true;
                                                         } catch (...) {
                                                           return false;
                                                         }
                                                       },
                                                       audit_query_.get(), openai_.get()});
  asio::ip::tcp::endpoint ep;
  try {
    ep = server.listen(host, port);
  } catch (const std::exception& e) {
    log::error("listen_failed", {{"host", host}, {"port", port}, {"detail", e.what()}});
    return 1;
  }
  std::string scheme = config_.http.tls_cert.empty() ? "http" : "https";
  std::string url = scheme + "://" + (ep.address().is_v6() ? "[" + ep.address().to_string() + "]" : ep.address().to_string()) +
                    ":" + std::to_string(ep.port()) + "/mcp";
  if (authenticator_.oidc_enabled()) {
    authenticator_.set_endpoint_url(url);
    // The JWKS is fetched here, before serving, and then refreshed by a thread of its own, so no
    // I/O thread ever waits on the IdP. An unreachable jwks_url is survivable (API keys still
    // work, JWTs are refused until a refresh succeeds); an unreadable jwks_file is a mistake.
    if (!authenticator_.start_background_refresh() && !config_.oidc->jwks_file.empty()) return 1;
    if (config_.oidc->resource.empty())
      log::warn("oidc_resource_derived",
                {{"resource", authenticator_.resource()},
                 {"detail", "[oidc] resource is not set; using the listen address (set it to the public URL)"}});
  }
  jobs_->start(io);
  transfers_->start(io);
  if (inference_) inference_->start(io);
  server.start();
  log::info("listening", {{"url", url}, {"threads", thread_count()}, {"tools", registry_.tools().size()}});
  if (!port_file.empty()) {
    std::ofstream(port_file + ".tmp") << ep.port() << "\n";
    std::filesystem::rename(port_file + ".tmp", port_file);
  }

  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    log::info("shutting_down", {{"signal", sig}, {"grace_s", config_.http.shutdown_grace.count()}});
    // Tasks first: their calls are stopped and settled, and tasks/result waiters answered,
    // while connections still drain.
    stop_tasks(io, [&server, &io] { server.shutdown([&io] { io.stop(); }); });
  });
  asio::signal_set hup(io, SIGHUP);
  std::function<void()> wait_hup = [&] {
    hup.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      log::info("sighup", {{"detail", "reloading policies"}});
      reload_policies();
      wait_hup();
    });
  };
  wait_hup();
  watch_policies(io);

  std::vector<std::thread> threads;
  for (int i = 1; i < thread_count(); ++i)
    threads.emplace_back([&io, i] {
      name_this_thread("sg-io-" + std::to_string(i));
      io.run();
    });
  io.run();
  for (auto& t : threads) t.join();
  drain_writers();
  authenticator_.stop_background_refresh();
  policy_.stop_watching();
  log::info("stopped", {});
  return 0;
}

int App::serve_stdio() {
  Principal principal;
  if (const char* key = std::getenv("SCIGATE_API_KEY"); key && *key) {
    // An API key or, with [oidc], a JWT; checked once, at start (it may fetch the JWKS here).
    auto r = authenticator_.authenticate_token(key);
    if (!r.ok()) {
      log::error("stdio_auth_failed", {{"detail", "SCIGATE_API_KEY is not accepted: " + r.reason}});
      return 2;
    }
    principal = *r.principal;
  } else if (!config_.stdio_principal.empty()) {
    principal.name = config_.stdio_principal;
    principal.kind = "user";
    principal.auth_method = "stdio";
    auth::assign_projects(principal, config_);
  } else {
    log::error("stdio_no_principal",
               {{"detail", "set [stdio] principal in the config, or SCIGATE_API_KEY in the environment"}});
    return 2;
  }
  prepare_to_serve();
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  jobs_->start(io);
  transfers_->start(io);
  if (inference_) inference_->start(io);
  // SIGHUP must not kill a stdio server; it reloads the policies, as over HTTP.
  asio::signal_set hup(io, SIGHUP);
  std::function<void()> wait_hup = [&] {
    hup.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      log::info("sighup", {{"detail", "reloading policies"}});
      reload_policies();
      wait_hup();
    });
  };
  wait_hup();
  watch_policies(io);
  std::vector<std::thread> threads;
  for (int i = 0; i < thread_count(); ++i)
    threads.emplace_back([&io, i] {
      name_this_thread("sg-io-" + std::to_string(i));
      io.run();
    });
  transport::StdioOptions opts;
  opts.max_message_bytes = config_.max_message_bytes;
  opts.max_depth = config_.max_depth;
  opts.audit = &audit_;
  log::info("stdio_ready", {{"principal", principal.name}, {"tools", registry_.tools().size()}});
  transport::run_stdio(io, dispatcher_, principal, opts);
  {
    std::promise<void> stopped;
    stop_tasks(io, [&stopped] { stopped.set_value(); });
    stopped.get_future().wait();
  }
  hup.cancel();
  policy_.stop_watching();
  work.reset();
  io.stop();
  for (auto& t : threads) t.join();
  drain_writers();
  return 0;
}

}  // namespace scigate
