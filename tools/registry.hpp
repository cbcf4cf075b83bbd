#pragma once
// The set of tools a server offers, fixed at start-up. Tools are kept sorted by name so
// tools/list is deterministic; each tool's schemas are compiled once here.
//
// Thread-safety: immutable after construction; safe to share between threads.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tools/tool.hpp"

namespace scigate {

class CompiledSchema;

class ToolRegistry {
 public:
  ToolRegistry();
  ~ToolRegistry();
  ToolRegistry(ToolRegistry&&) noexcept;
  ToolRegistry& operator=(ToolRegistry&&) noexcept;

  // Throws std::invalid_argument for a duplicate name, a bad schema or an oversize description:
  // those are programming errors caught at start-up.
  void add(std::unique_ptr<Tool> tool);

  const std::vector<Tool*>& tools() const { return ordered_; }
  Tool* find(const std::string& name) const;

  // The first problem with `args` for `tool`, phrased for the caller (nullopt when valid).
  std::optional<Error> validate_arguments(const Tool& tool, const json& args) const;
  // Whether `structured` matches the tool's outputSchema (a server bug when it does not).
  std::optional<std::string> validate_output(const Tool& tool, const json& structured) const;

  // The Tool object as tools/list sends it.
  static json to_wire(const ToolDescriptor& d);

 private:
  struct Entry {
    std::unique_ptr<Tool> tool;
    std::unique_ptr<CompiledSchema> input;
    std::unique_ptr<CompiledSchema> output;
  };
  std::map<std::string, Entry> entries_;
  std::vector<Tool*> ordered_;
};

}  // namespace scigate
