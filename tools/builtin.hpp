#pragma once
#include "server/config/config.hpp"
#include "tools/registry.hpp"

namespace scigate::tools {
// The explicit list of tools this build offers. Adding a tool is one line in builtin.cpp.
ToolRegistry make_registry(const Config& config);
}  // namespace scigate::tools
