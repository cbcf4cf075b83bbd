#pragma once
#include <string>
#include <vector>

namespace scigate::cli {
// Entry point for the `scigate` command; returns the process exit code.
int run(const std::vector<std::string>& args);
}  // namespace scigate::cli
