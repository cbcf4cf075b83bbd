#pragma once
#include "policies/ledger.hpp"
#include "server/config/config.hpp"
#include "tools/registry.hpp"

namespace scigate::tools {

// The server's components that tools may use, owned by App (the composition root). A tool whose
// service is missing is not registered.
struct ToolServices {
  Ledger* ledger = nullptr;  // get_usage
};

// The explicit list of tools this build offers. Adding a tool is one line in builtin.cpp.
ToolRegistry make_registry(const Config& config, const ToolServices& services = {});
}  // namespace scigate::tools
