// libFuzzer target over the message handler: bytes -> JSON-RPC framing -> MCP dispatch (both
// eras, legacy session state carried across inputs) -> pipeline -> tools. Any crash, sanitizer
// report, uncaught exception or response that is not valid JSON-RPC is a bug.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>

#include "server/protocol/mcp_dispatcher.hpp"
#include "tools/demo/demo_tools.hpp"
#include "tools/whoami/whoami.hpp"

using namespace scigate;

namespace {

class NullAudit : public AuditLog {
 public:
  void append(AuditRecord) override {}
};

struct World {
  World() {
    spdlog::set_level(spdlog::level::off);
    config.projects.push_back(ProjectConfig{"demo", "Demo", {"fuzzer"}});
    // No sleep tool: a fuzzer-chosen hour-long wait would only measure the clock.
    registry.add(std::make_unique<tools::WhoamiTool>("scigate"));
    registry.add(std::make_unique<tools::EchoTool>());
    pipeline = std::make_unique<ToolCallPipeline>(registry, policy, ledger, audit, metrics, std::chrono::seconds(1));
    dispatcher = std::make_unique<mcp::Dispatcher>(config, *pipeline, registry, policy, metrics);
    principal.name = "fuzzer";
    principal.auth_method = "api_key";
    principal.projects = {"demo"};
  }
  Config config;
  ToolRegistry registry;
  MembershipPolicy policy;
  UnmeteredLedger ledger;
  NullAudit audit;
  Metrics metrics;
  std::unique_ptr<ToolCallPipeline> pipeline;
  std::unique_ptr<mcp::Dispatcher> dispatcher;
  Principal principal;
  std::shared_ptr<mcp::LegacySession> session = std::make_shared<mcp::LegacySession>("fuzz");
  boost::asio::io_context io;
};

void check_wire(const json& message) {
  // What goes back must be JSON-RPC 2.0 and serialisable.
  if (message.value("jsonrpc", "") != "2.0") std::abort();
  (void)jsonrpc::dump(message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World w;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = jsonrpc::parse(text, {64 * 1024, 64});
  if (!parsed.message) {
    check_wire(jsonrpc::make_error(*parsed.error));
    return 0;
  }
  mcp::Inbound in;
  in.message = std::move(*parsed.message);
  in.transport = (size % 2) ? mcp::Transport::kStdio : mcp::Transport::kHttp;
  in.principal = w.principal;
  in.session = w.session;
  in.channel = "fuzz";
  in.notify = [](const json& n) { check_wire(n); };
  std::optional<mcp::Outbound> out;
  boost::asio::co_spawn(w.io, w.dispatcher->handle(std::move(in)), [&](std::exception_ptr ep, mcp::Outbound o) {
    if (ep) std::abort();  // exceptions must not escape the dispatcher
    out = std::move(o);
  });
  w.io.restart();
  w.io.run();
  if (!out) std::abort();
  if (out->response) check_wire(*out->response);
  return 0;
}
