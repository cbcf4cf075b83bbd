#pragma once
// Outbound HTTP(S) for data staging (docs/DATA.md "HTTP sources"): which URLs may be reached,
// at which address, with which credentials.
//
// A URL is reached only when its host is in [data.http] allowed_hosts. Its name is resolved by
// the gateway itself (getaddrinfo, on a worker pool) and every address is classified; loopback,
// private (RFC 1918, CGNAT, unique-local), link-local, cloud metadata, multicast, reserved and
// unspecified addresses are refused unless an allowed_networks block holds them. The request is
// then pinned to the address checked (libcurl's CURLOPT_RESOLVE), so a second DNS answer cannot
// send it elsewhere, and no proxy is used unless configured. Redirects are not followed by
// libcurl: each hop is parsed, checked and pinned again here.
//
// Credentials come from [[data.sources]] (files read when used), for URLs under the source's
// prefix and projects it names; they never come from tool arguments and are never logged.
#include <netinet/in.h>
#include <sys/socket.h>

#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "server/common/error.hpp"
#include "server/config/config.hpp"

namespace scigate::storage {

struct Url {
  std::string url;      // normalised by libcurl's URL parser
  std::string scheme;   // http | https
  std::string host;     // lower case; IPv6 without brackets
  int port = 0;         // explicit or the scheme's
  std::string path;     // percent-encoded, with the query
  std::string last_segment;  // the path's last segment, %-decoded ("" for "/")
};
// Absolute http(s) URLs without user:password; nullopt with the reason otherwise.
std::variant<Url, Error> parse_url(const std::string& text);
// `location` (a Location header: absolute or relative) against `base`.
std::variant<Url, Error> resolve_redirect(const std::string& base, const std::string& location);

// Why an address may not be reached ("loopback", "private", "link-local", "metadata", ...);
// nullopt when it is a public address or inside one of the allowed networks.
class AddressPolicy {
 public:
  explicit AddressPolicy(const std::vector<std::string>& allowed_networks);
  std::optional<std::string> refuse(const sockaddr* addr) const;
  std::optional<std::string> refuse(const std::string& numeric) const;  // for tests

 private:
  struct Block {
    int family;
    unsigned char bytes[16];
    int prefix;
  };
  std::vector<Block> allowed_;
};

// Whether `host` matches one of the patterns ("example.org" exactly, "*.example.org" any
// subdomain, an address literally).
bool host_allowed(const std::vector<std::string>& patterns, const std::string& host);

struct CheckedTarget {
  Url url;
  std::string address;  // numeric, the one the request is pinned to
  std::string resolve_entry;  // "host:port:address" for CURLOPT_RESOLVE
};
// Checks the host against the allow-list, resolves it (blocking: call on a worker pool) and
// picks the first address the policy permits. Errors say what was refused and why.
std::variant<CheckedTarget, Error> check_target(const Url& url, const DataHttpConfig& config,
                                                const AddressPolicy& policy);

// The headers [[data.sources]] adds to a request for `url` from `project` (reads the secret
// files: blocking). `upload_allowed` tells whether a source there allows PUT.
struct SourceHeaders {
  std::vector<std::string> headers;
  bool upload_allowed = false;
  std::optional<Error> error;  // a configured secret file that cannot be read
};
SourceHeaders source_headers(const DataConfig& config, const std::string& project, const std::string& url);

}  // namespace scigate::storage
