#pragma once
#include <string>
#include <vector>

namespace scigate::cli {
// `scigate audit verify|export|tail|pubkey ...`; `args` is the whole command line. Returns the
// exit code; throws std::invalid_argument for usage errors (exit 2 in the caller).
int run_audit(const std::vector<std::string>& args);
}  // namespace scigate::cli
