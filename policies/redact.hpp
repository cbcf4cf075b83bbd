#pragma once
// What of a call's arguments goes into the audit record. Secrets never do:
//   - members the tool's input schema marks sensitive — "writeOnly": true, "x-sensitive": true
//     or "format": "password" — at any depth, found through properties, additionalProperties,
//     items (also tuple items), allOf/anyOf/oneOf branches and local "$ref"s;
//   - members whose name says they hold a secret (password, token, api_key, client_secret,
//     authorization, private_key, ..._token, ..._secret; see secret_member_name);
//   - string values that look like credentials (looks_like_secret)
// are replaced by "[redacted]". Strings longer than max_string_bytes are replaced by
// "[sha256:<hex of their bytes>, N bytes]", so the record stays small but still proves what
// was sent; if the redacted arguments are still over max_total_bytes, their largest top-level
// members are replaced by the hash of their canonical JSON until they fit (and the whole
// object, if that is not enough).
#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace scigate {

struct RedactOptions {
  std::size_t max_string_bytes = 1024;  // longer strings are replaced by their hash
  std::size_t max_total_bytes = 8192;   // the redacted arguments are cut down to this
};

nlohmann::json redact_arguments(const nlohmann::json& arguments, const nlohmann::json& input_schema,
                                const RedactOptions& options = {});

// Whether a string value looks like a credential: a known token format (scigate keys sgk_,
// JWTs, "Bearer ...", PEM private keys, GitHub ghp_/github_pat_, GitLab glpat-, AWS AKIA/ASIA,
// OpenAI/Stripe sk-/sk_, Hugging Face hf_, Slack xox?-, Google AIza, npm_), a URL with a
// password, a query or connection-string parameter such as token=/password=/X-Amz-Signature=,
// or an "Authorization:" header. Plain scans, no regular expressions; tuned so that paths,
// UUIDs and hex checksums (a SHA-256 is 64 hex digits) are not taken for secrets.
bool looks_like_secret(std::string_view value);

// Whether a member with this name holds a secret whatever its value (case and - / _ ignored).
bool secret_member_name(std::string_view name);

}  // namespace scigate
