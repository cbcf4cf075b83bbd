#pragma once
// MCP over stdio: newline-delimited JSON-RPC on stdin/stdout. Only MCP messages go to stdout
// (logs go to stderr). Requests start in order and run concurrently. On EOF, subscriptions end,
// calls still running are cancelled, and the transport returns once they have unwound.
#include <boost/asio/io_context.hpp>

#include <chrono>

#include "policies/audit.hpp"
#include "server/protocol/mcp_dispatcher.hpp"

namespace scigate::transport {

struct StdioOptions {
  int in_fd = 0;
  int out_fd = 1;
  std::size_t max_message_bytes = 4 * 1024 * 1024;
  int max_depth = 64;
  AuditLog* audit = nullptr;  // lines refused before the dispatcher (malformed JSON-RPC) are recorded here
};

// Runs until EOF on in_fd (or io is stopped). Blocks the calling thread; `io` must be run by
// other threads meanwhile (the caller's pool).
void run_stdio(boost::asio::io_context& io, mcp::Dispatcher& dispatcher, const Principal& principal,
               const StdioOptions& options);

}  // namespace scigate::transport
