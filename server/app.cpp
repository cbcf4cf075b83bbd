#include "server/app.hpp"

#include <boost/asio/signal_set.hpp>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "server/auth/directory.hpp"
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

AuditLogOptions audit_options(const Config& c) {
  return AuditLogOptions{true, c.audit.signing_key, c.audit.checkpoint_file, c.audit.checkpoint_every_records,
                         c.audit.checkpoint_every};
}
}  // namespace

App::App(Config config)
    : config_(std::move(config)),
      db_(config_.database),
      keys_(migrated(db_), config_),
      audit_query_(std::make_unique<audit::AuditQueryService>(config_.database)),
      registry_(tools::make_registry(config_, tools::ToolServices{audit_query_.get()})),
      audit_(config_.database, audit_options(config_)),
      pipeline_(registry_, policy_, ledger_, audit_, metrics_, config_.tool_timeout),
      dispatcher_(config_, pipeline_, registry_, policy_, metrics_) {}

App::~App() = default;

int App::thread_count() const {
  if (config_.threads > 0) return config_.threads;
  return std::max(2u, std::thread::hardware_concurrency());
}

int App::serve_http(const std::string& host, uint16_t port, const std::string& port_file) {
  audit_.prepare_checkpoints();
  asio::io_context io;
  mcp::SessionStore sessions(config_.http.max_sessions);
  dispatcher_.on_tools_changed_legacy = [&sessions] {
    for (auto& s : sessions.all()) s->send(jsonrpc::make_notification("notifications/tools/list_changed", nullptr));
  };
  transport::HttpServer server(io, transport::HttpDeps{config_, dispatcher_, sessions, keys_, metrics_, audit_,
                                                       [this] {
                                                         try {
                                                           db_.schema_version();
                                                           return true;
                                                         } catch (...) {
                                                           return false;
                                                         }
                                                       },
                                                       audit_query_.get()});
  asio::ip::tcp::endpoint ep;
  try {
    ep = server.listen(host, port);
  } catch (const std::exception& e) {
    log::error("listen_failed", {{"host", host}, {"port", port}, {"detail", e.what()}});
    return 1;
  }
  server.start();
  std::string scheme = config_.http.tls_cert.empty() ? "http" : "https";
  std::string url = scheme + "://" + (ep.address().is_v6() ? "[" + ep.address().to_string() + "]" : ep.address().to_string()) +
                    ":" + std::to_string(ep.port()) + "/mcp";
  log::info("listening", {{"url", url}, {"threads", thread_count()}, {"tools", registry_.tools().size()}});
  if (!port_file.empty()) {
    std::ofstream(port_file + ".tmp") << ep.port() << "\n";
    std::filesystem::rename(port_file + ".tmp", port_file);
  }

  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    log::info("shutting_down", {{"signal", sig}, {"grace_s", config_.http.shutdown_grace.count()}});
    server.shutdown([&io] { io.stop(); });
  });
  asio::signal_set hup(io, SIGHUP);
  std::function<void()> wait_hup = [&] {
    hup.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      // Nothing is reloaded yet (policies will be); clients are told to re-list tools, which is
      // what a reload changes.
      log::info("sighup", {{"detail", "sending notifications/tools/list_changed"}});
      dispatcher_.broadcast_tools_changed();
      wait_hup();
    });
  };
  wait_hup();

  std::vector<std::thread> threads;
  for (int i = 1; i < thread_count(); ++i) threads.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : threads) t.join();
  log::info("stopped", {});
  return 0;
}

int App::serve_stdio() {
  audit_.prepare_checkpoints();
  Principal principal;
  if (const char* key = std::getenv("SCIGATE_API_KEY"); key && *key) {
    auto p = keys_.authenticate(key);
    if (!p) {
      log::error("stdio_auth_failed", {{"detail", "SCIGATE_API_KEY is not a valid key"}});
      return 2;
    }
    principal = *p;
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
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  // SIGHUP must not kill a stdio server; it announces a changed tool list, as over HTTP.
  asio::signal_set hup(io, SIGHUP);
  std::function<void()> wait_hup = [&] {
    hup.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      dispatcher_.broadcast_tools_changed();
      wait_hup();
    });
  };
  wait_hup();
  std::vector<std::thread> threads;
  for (int i = 0; i < thread_count(); ++i) threads.emplace_back([&io] { io.run(); });
  transport::StdioOptions opts;
  opts.max_message_bytes = config_.max_message_bytes;
  opts.max_depth = config_.max_depth;
  opts.audit = &audit_;
  log::info("stdio_ready", {{"principal", principal.name}, {"tools", registry_.tools().size()}});
  transport::run_stdio(io, dispatcher_, principal, opts);
  hup.cancel();
  work.reset();
  io.stop();
  for (auto& t : threads) t.join();
  return 0;
}

}  // namespace scigate
