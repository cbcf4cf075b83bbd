#pragma once
// Streamable HTTP transport on Boost.Beast: POST /mcp for both MCP eras (JSON or SSE answers),
// GET/DELETE /mcp for 2025-11-25 sessions, GET /audit/events for auditors, the OpenAI-compatible
// /v1/chat/completions, /v1/embeddings and /v1/models (server/openai), /healthz, /readyz,
// /metrics and (with [oidc]) the RFC 9728 metadata under /.well-known/oauth-protected-resource.
// Origin allow-list, bearer authentication (API keys, OIDC JWTs) through auth::Authenticator,
// header/body/idle timeouts, optional TLS, graceful shutdown. Every refused request (other than
// to the probes and the metadata) leaves one audit record.
//
// Thread-safety: one strand per connection; the server object itself is used from the
// io_context's threads and from shutdown(), which is thread-safe.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <functional>
#include <memory>

#include "policies/audit.hpp"
#include "server/auth/authenticator.hpp"
#include "server/config/config.hpp"
#include "server/observability/metrics.hpp"
#include "server/protocol/mcp_dispatcher.hpp"
#include "server/protocol/mcp_session.hpp"

namespace scigate::audit {
class AuditQueryService;
}
namespace scigate::openai {
class OpenAiApi;
}

namespace scigate::transport {

struct HttpDeps {
  const Config& config;
  mcp::Dispatcher& dispatcher;
  mcp::SessionStore& sessions;
  auth::Authenticator& auth;    // bearer token -> Principal or refusal; RFC 9728 metadata
  Metrics& metrics;
  AuditLog& audit;              // requests refused before the pipeline are recorded here
  std::function<bool()> ready;  // for /readyz
  audit::AuditQueryService* audit_query = nullptr;  // GET /audit/events (404 when null)
  openai::OpenAiApi* openai = nullptr;  // /v1/chat/completions, /v1/embeddings, /v1/models (404 when null)
};

class HttpServer {
 public:
  HttpServer(boost::asio::io_context& io, HttpDeps deps);
  ~HttpServer();

  // Binds and listens; throws std::system_error when the address is unusable.
  boost::asio::ip::tcp::endpoint listen(const std::string& host, uint16_t port);
  void start();
  // Stops accepting, closes idle connections and streams, lets in-flight requests finish for up
  // to the configured grace, then calls `done` (on an io thread).
  void shutdown(std::function<void()> done);

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace scigate::transport
