#include "connectors/storage/http_source.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "server/common/crypto.hpp"

namespace scigate::storage {

namespace {

struct UrlHandle {
  CURLU* h = curl_url();
  ~UrlHandle() { curl_url_cleanup(h); }
  std::string get(CURLUPart part, unsigned flags = 0) const {
    char* out = nullptr;
    if (curl_url_get(h, part, &out, flags) != CURLUE_OK || !out) return {};
    std::string s(out);
    curl_free(out);
    return s;
  }
};

std::variant<Url, Error> from_handle(const UrlHandle& u, const std::string& text) {
  Url url;
  url.scheme = u.get(CURLUPART_SCHEME);
  if (url.scheme != "http" && url.scheme != "https")
    return Error::invalid_arguments("\"" + text + "\" is not an http:// or https:// URL");
  if (!u.get(CURLUPART_USER).empty() || !u.get(CURLUPART_PASSWORD).empty())
    return Error::invalid_arguments("URLs with user:password@ are refused",
                                    "credentials for a source are configured by the site ([[data.sources]])");
  url.host = u.get(CURLUPART_HOST);
  if (url.host.size() > 2 && url.host.front() == '[' && url.host.back() == ']')
    url.host = url.host.substr(1, url.host.size() - 2);
  for (auto& c : url.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (url.host.empty()) return Error::invalid_arguments("\"" + text + "\" names no host");
  std::string port = u.get(CURLUPART_PORT, CURLU_DEFAULT_PORT);
  url.port = port.empty() ? 0 : std::atoi(port.c_str());
  url.path = u.get(CURLUPART_PATH);
  std::string query = u.get(CURLUPART_QUERY);
  if (!query.empty()) url.path += "?" + query;
  std::string decoded = u.get(CURLUPART_PATH, CURLU_URLDECODE);
  auto slash = decoded.rfind('/');
  url.last_segment = slash == std::string::npos ? decoded : decoded.substr(slash + 1);
  // The fragment never goes to the server.
  char* clean = nullptr;
  CURLU* copy = curl_url_dup(u.h);
  curl_url_set(copy, CURLUPART_FRAGMENT, nullptr, 0);
  if (curl_url_get(copy, CURLUPART_URL, &clean, 0) == CURLUE_OK && clean) {
    url.url = clean;
    curl_free(clean);
  }
  curl_url_cleanup(copy);
  return url;
}

bool in_block(const unsigned char* a, const unsigned char* b, int prefix) {
  int full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(a, b, static_cast<std::size_t>(full)) != 0) return false;
  if (rest == 0) return true;
  unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

std::optional<std::string> classify_v4(const unsigned char* a) {
  uint32_t v = (uint32_t(a[0]) << 24) | (uint32_t(a[1]) << 16) | (uint32_t(a[2]) << 8) | a[3];
  auto in = [&](uint32_t net, int prefix) { return prefix == 0 || (v >> (32 - prefix)) == (net >> (32 - prefix)); };
  if (v == 0xA9FEA9FE) return "a cloud metadata address";           // 169.254.169.254
  if (v == 0x64646400 + 200) return "a cloud metadata address";      // 100.100.100.200
  if (in(0x00000000, 8)) return "an unspecified (\"this network\") address";
  if (in(0x7F000000, 8)) return "a loopback address";
  if (in(0x0A000000, 8) || in(0xAC100000, 12) || in(0xC0A80000, 16)) return "a private address";
  if (in(0x64400000, 10)) return "a shared (carrier-grade NAT) address";
  if (in(0xA9FE0000, 16)) return "a link-local address";
  if (in(0xC0000000, 24)) return "an IETF protocol address";
  if (in(0xC0000200, 24) || in(0xC6336400, 24) || in(0xCB007100, 24)) return "a documentation address";
  if (in(0xC6120000, 15)) return "a benchmarking address";
  if (in(0xE0000000, 4)) return "a multicast address";
  if (in(0xF0000000, 4)) return "a reserved address";
  return std::nullopt;
}

std::optional<std::string> classify_v6(const unsigned char* a) {
  static const unsigned char zero[16] = {};
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const unsigned char nat64[12] = {0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  static const unsigned char ec2_metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
  if (std::memcmp(a, ec2_metadata, 16) == 0) return "a cloud metadata address";
  if (std::memcmp(a, mapped, 12) == 0 || std::memcmp(a, nat64, 12) == 0) return classify_v4(a + 12);
  if (std::memcmp(a, zero, 15) == 0 && a[15] == 0) return "an unspecified address";
  if (std::memcmp(a, zero, 15) == 0 && a[15] == 1) return "a loopback address";
  if (std::memcmp(a, zero, 12) == 0) return "an IPv4-compatible address";
  if ((a[0] & 0xfe) == 0xfc) return "a private (unique-local) address";
  if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) return "a link-local address";
  if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0) return "a site-local address";
  if (a[0] == 0xff) return "a multicast address";
  if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8) return "a documentation address";
  return std::nullopt;
}

std::string read_secret(const std::filesystem::path& p, bool* ok) {
  std::ifstream in(p);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

std::variant<Url, Error> parse_url(const std::string& text) {
  UrlHandle u;
  if (!u.h) throw std::bad_alloc();
  if (curl_url_set(u.h, CURLUPART_URL, text.c_str(), CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK)
    return Error::invalid_arguments("\"" + text + "\" is not a valid URL");
  return from_handle(u, text);
}

std::variant<Url, Error> resolve_redirect(const std::string& base, const std::string& location) {
  UrlHandle u;
  if (curl_url_set(u.h, CURLUPART_URL, base.c_str(), 0) != CURLUE_OK ||
      curl_url_set(u.h, CURLUPART_URL, location.c_str(), CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK)
    return Error{ErrorCode::kBackendRejected, "the server redirected to an invalid URL", {}, location};
  return from_handle(u, location);
}

AddressPolicy::AddressPolicy(const std::vector<std::string>& allowed_networks) {
  for (const auto& net : allowed_networks) {
    auto slash = net.find('/');
    std::string addr = net.substr(0, slash);
    Block b{};
    if (::inet_pton(AF_INET, addr.c_str(), b.bytes) == 1) {
      b.family = AF_INET;
      b.prefix = 32;
    } else if (::inet_pton(AF_INET6, addr.c_str(), b.bytes) == 1) {
      b.family = AF_INET6;
      b.prefix = 128;
    } else {
      continue;  // the config loader refused it already
    }
    if (slash != std::string::npos) b.prefix = std::atoi(net.c_str() + slash + 1);
    allowed_.push_back(b);
  }
}

std::optional<std::string> AddressPolicy::refuse(const sockaddr* sa) const {
  const unsigned char* bytes = nullptr;
  int family = sa->sa_family;
  if (family == AF_INET) bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<const sockaddr_in*>(sa)->sin_addr);
  else if (family == AF_INET6)
    bytes = reinterpret_cast<const unsigned char*>(&reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
  else return "not an IP address";
  for (const auto& b : allowed_)
    if (b.family == family && in_block(bytes, b.bytes, b.prefix)) return std::nullopt;
  return family == AF_INET ? classify_v4(bytes) : classify_v6(bytes);
}

std::optional<std::string> AddressPolicy::refuse(const std::string& numeric) const {
  sockaddr_in6 s6{};
  sockaddr_in s4{};
  if (::inet_pton(AF_INET, numeric.c_str(), &s4.sin_addr) == 1) {
    s4.sin_family = AF_INET;
    return refuse(reinterpret_cast<const sockaddr*>(&s4));
  }
  if (::inet_pton(AF_INET6, numeric.c_str(), &s6.sin6_addr) == 1) {
    s6.sin6_family = AF_INET6;
    return refuse(reinterpret_cast<const sockaddr*>(&s6));
  }
  return "not an IP address";
}

bool host_allowed(const std::vector<std::string>& patterns, const std::string& host) {
  for (std::string p : patterns) {
    for (auto& c : p) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (p.size() > 2 && p.front() == '[' && p.back() == ']') p = p.substr(1, p.size() - 2);
    if (p == host) return true;
    if (p.rfind("*.", 0) == 0) {
      std::string suffix = p.substr(1);  // ".example.org"
      if (host.size() > suffix.size() && host.compare(host.size() - suffix.size(), suffix.size(), suffix) == 0)
        return true;
    }
  }
  return false;
}

std::variant<CheckedTarget, Error> check_target(const Url& url, const DataHttpConfig& config,
                                                const AddressPolicy& policy) {
  if (!host_allowed(config.allowed_hosts, url.host))
    return Error{ErrorCode::kPolicyDenied, "the host " + url.host + " is not one this site lets data come from or go to",
                 config.allowed_hosts.empty() ? "this server reaches no HTTP hosts; ask the site's operators"
                                              : "ask the site's operators to allow it ([data.http] allowed_hosts)",
                 {}};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(url.host.c_str(), std::to_string(url.port).c_str(), &hints, &res);
  if (rc != 0)
    return Error{ErrorCode::kBackendUnavailable, "the host " + url.host + " could not be resolved", "check the URL",
                 gai_strerror(rc)};
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, ::freeaddrinfo);
  std::string why;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    const void* src = ai->ai_family == AF_INET
                          ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
                          : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr);
    ::inet_ntop(ai->ai_family, src, buf, sizeof buf);
    if (auto refused = policy.refuse(ai->ai_addr)) {
      if (why.empty()) why = std::string(buf) + " is " + *refused;
      continue;
    }
    CheckedTarget t;
    t.url = url;
    t.address = buf;
    std::string pinned = ai->ai_family == AF_INET6 ? "[" + t.address + "]" : t.address;
    t.resolve_entry = url.host + ":" + std::to_string(url.port) + ":" + pinned;
    return t;
  }
  return Error{ErrorCode::kPolicyDenied, "the host " + url.host + " resolves to an address this site does not reach (" + why + ")",
               "only public addresses are reached unless the site allows a network ([data.http] allowed_networks)", {}};
}

namespace {
// Whether `url` lies under a [[data.sources]] `prefix`, at a boundary: "https://data.example"
// covers https://data.example/x but not https://data.example.evil/x (nor its credentials).
bool under_source(const std::string& url, const std::string& prefix) {
  if (prefix.empty() || url.rfind(prefix, 0) != 0) return false;
  if (url.size() == prefix.size() || prefix.back() == '/') return true;
  char next = url[prefix.size()];
  return next == '/' || next == '?' || next == '#';
}
}  // namespace

SourceHeaders source_headers(const DataConfig& config, const std::string& project, const std::string& url) {
  SourceHeaders out;
  for (const auto& s : config.sources) {
    if (!under_source(url, s.url)) continue;
    bool member = s.projects.empty();
    for (const auto& p : s.projects) member = member || p == "*" || p == project;
    if (!member) continue;
    out.upload_allowed = out.upload_allowed || s.allow_upload;
    bool ok = true;
    if (!s.bearer_token_file.empty()) {
      std::string token = read_secret(s.bearer_token_file, &ok);
      if (ok) out.headers.push_back("Authorization: Bearer " + token);
    }
    if (ok && !s.basic_auth_file.empty()) {
      std::string pair = read_secret(s.basic_auth_file, &ok);
      if (ok) out.headers.push_back("Authorization: Basic " + crypto::base64_encode(pair));
    }
    if (ok && !s.headers_file.empty()) {
      std::string text = read_secret(s.headers_file, &ok);
      std::stringstream ss(text);
      std::string line;
      while (ok && std::getline(ss, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty() || line[0] == '#') continue;
        if (line.find(':') == std::string::npos) continue;
        out.headers.push_back(line);
      }
    }
    if (!ok) {
      out.error = Error{ErrorCode::kBackendUnavailable, "the credentials configured for this source cannot be read",
                        "ask the site's operators", "a secret file of [[data.sources]] " + s.url + " is unreadable"};
      return out;
    }
    break;  // the first matching source
  }
  return out;
}

}  // namespace scigate::storage
