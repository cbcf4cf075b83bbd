#pragma once
// `scigate models import|list`: the operator's side of the model registry (docs/MODELS.md).
// They work on the database directly, whether or not a server is running; a running server
// sees an import at its next query (the catalog is read per call, nothing is cached).
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "server/config/config.hpp"

namespace scigate::cli {

struct ModelsArgs {
  std::string command;                         // import | list
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // without the leading "--"
  std::vector<std::string> flags;
  std::vector<std::string> groups;             // --group, repeatable (list --as)
};

// Runs one models command; returns the exit code (0 done, 1 a manifest or file was refused and
// nothing was imported). Throws std::invalid_argument for usage errors (exit 2).
int models_command(const Config& config, const ModelsArgs& args, std::ostream& out, std::ostream& err);

// Imports manifest text into the configured database (scigate init's demo catalog); returns how
// many models were added or updated. Throws registry::ManifestError.
std::size_t import_models_text(const Config& config, const std::string& text, const std::string& source);

}  // namespace scigate::cli
