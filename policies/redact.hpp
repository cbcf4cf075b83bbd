#pragma once
// What of a call's arguments goes into the audit record. Secrets never do: members the tool's
// input schema marks sensitive (`"writeOnly": true` or `"x-sensitive": true`) and string values
// that look like credentials are replaced by "[redacted]"; large values are replaced by their
// SHA-256, so the record stays small but still proves what was sent.
#include <nlohmann/json.hpp>

#include <cstddef>

namespace scigate {

struct RedactOptions {
  std::size_t max_string_bytes = 1024;  // longer strings are replaced by their hash
  std::size_t max_total_bytes = 8192;   // a larger argument object is replaced by its hash
};

nlohmann::json redact_arguments(const nlohmann::json& arguments, const nlohmann::json& input_schema,
                                const RedactOptions& options = {});

// Whether a string value looks like a credential (API key, JWT, bearer token, PEM key, ...).
bool looks_like_secret(const std::string& value);

}  // namespace scigate
