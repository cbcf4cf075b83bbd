#include "server/config/config.hpp"

#include "server/common/decimal.hpp"

#include <toml++/toml.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

namespace scigate {
namespace {

std::string where(const toml::source_region& r, const std::string& source) {
  return source + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

template <typename T>
T get(const toml::table& t, std::string_view key, T fallback, const std::string& source) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  if constexpr (std::is_same_v<T, bool>) {
    if (auto v = n->value<bool>()) return *v;
  } else if constexpr (std::is_integral_v<T>) {
    if (auto v = n->value<int64_t>()) {
      if (*v < 0) throw ConfigError(where(n->source(), source) + ": \"" + std::string(key) + "\" must be zero or more");
      // A value the field cannot hold wrapped (max_qubits = 4294967306 became 10).
      if (static_cast<uint64_t>(*v) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        throw ConfigError(where(n->source(), source) + ": \"" + std::string(key) + "\" must be at most " +
                          std::to_string(std::numeric_limits<T>::max()));
      return static_cast<T>(*v);
    }
  } else {
    if (auto v = n->value<std::string>()) return *v;
  }
  throw ConfigError(where(n->source(), source) + ": \"" + std::string(key) + "\" has the wrong type");
}

std::vector<std::string> get_strings(const toml::table& t, std::string_view key, std::vector<std::string> fallback,
                                     const std::string& source) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  const toml::array* a = n->as_array();
  if (!a) throw ConfigError(where(n->source(), source) + ": \"" + std::string(key) + "\" must be an array of strings");
  std::vector<std::string> out;
  for (const auto& e : *a) {
    auto s = e.value<std::string>();
    if (!s) throw ConfigError(where(e.source(), source) + ": \"" + std::string(key) + "\" must hold strings");
    out.push_back(*s);
  }
  return out;
}

// A string or an array of strings (OAuth's "aud" shape).
std::vector<std::string> get_string_or_strings(const toml::table& t, std::string_view key,
                                               std::vector<std::string> fallback, const std::string& source) {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  if (auto v = n->value<std::string>()) return {*v};
  if (!n->is_array())
    throw ConfigError(where(n->source(), source) + ": \"" + std::string(key) +
                      "\" must be a string or an array of strings");
  return get_strings(t, key, fallback, source);
}

bool is_http_url(const std::string& s) { return s.rfind("https://", 0) == 0 || s.rfind("http://", 0) == 0; }

// Scopes are sent inside a quoted WWW-Authenticate parameter: RFC 6749 scope-token characters only.
bool is_scope_token(const std::string& s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (c < 0x21 || c == 0x22 || c == 0x5c || c > 0x7e) return false;
  return true;
}

// Typos must not pass silently: every key of a table must be one this version knows.
void reject_unknown(const toml::table& t, std::initializer_list<std::string_view> allowed, const std::string& table_name,
                    const std::string& source) {
  for (const auto& [key, node] : t) {
    bool known = false;
    for (auto a : allowed) known = known || key.str() == a;
    if (!known) {
      std::string list;
      for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      throw ConfigError(where(node.source(), source) + ": unknown key \"" + std::string(key.str()) + "\" in " +
                        table_name + " (known: " + list + ")");
    }
  }
}

const toml::table* section(const toml::table& root, std::string_view name, const std::string& source) {
  const toml::node* n = root.get(name);
  if (!n) return nullptr;
  if (!n->is_table()) throw ConfigError(where(n->source(), source) + ": [" + std::string(name) + "] must be a table");
  return n->as_table();
}

OidcConfig parse_oidc(const toml::table& s, const std::string& source) {
  reject_unknown(s,
                 {"issuer", "audience", "jwks_file", "jwks_url", "username_claim", "groups_claim", "clock_skew_s",
                  "jwks_refresh_min_interval_s", "jwks_cache_ttl_s", "required_scopes", "resource",
                  "authorization_servers"},
                 "[oidc]", source);
  OidcConfig o;
  auto fail = [&](std::string_view key, const std::string& why) {
    const toml::node* n = s.get(key);
    throw ConfigError((n ? where(n->source(), source) : source) + ": oidc." + std::string(key) + " " + why);
  };
  o.issuer = get<std::string>(s, "issuer", "", source);
  if (o.issuer.empty()) fail("issuer", "is required (the iss of the tokens to accept)");
  if (!is_http_url(o.issuer)) fail("issuer", "must be the issuer URL (https://...), as in the IdP's discovery");
  o.audience = get_string_or_strings(s, "audience", {}, source);
  for (const auto& a : o.audience)
    if (a.empty()) fail("audience", "must not hold an empty string");
  o.jwks_file = get<std::string>(s, "jwks_file", "", source);
  o.jwks_url = get<std::string>(s, "jwks_url", "", source);
  if (o.jwks_file.empty() == o.jwks_url.empty()) fail("jwks_url", "or oidc.jwks_file: set exactly one of the two");
  if (!o.jwks_url.empty() && !is_http_url(o.jwks_url)) fail("jwks_url", "must be an https:// (or http://) URL");
  o.username_claim = get<std::string>(s, "username_claim", o.username_claim, source);
  if (o.username_claim.empty()) fail("username_claim", "must not be empty");
  o.groups_claim = get<std::string>(s, "groups_claim", o.groups_claim, source);
  if (o.groups_claim.empty()) fail("groups_claim", "must not be empty");
  auto secs = [&](std::string_view k, std::chrono::seconds d) {
    return std::chrono::seconds(get<int64_t>(s, k, d.count(), source));
  };
  o.clock_skew = secs("clock_skew_s", o.clock_skew);
  o.jwks_refresh_min_interval = secs("jwks_refresh_min_interval_s", o.jwks_refresh_min_interval);
  o.jwks_cache_ttl = secs("jwks_cache_ttl_s", o.jwks_cache_ttl);
  if (o.jwks_cache_ttl.count() == 0) fail("jwks_cache_ttl_s", "must be at least 1");
  o.required_scopes = get_strings(s, "required_scopes", {}, source);
  for (const auto& sc : o.required_scopes)
    if (!is_scope_token(sc)) fail("required_scopes", "holds \"" + sc + "\", which is not one OAuth scope");
  o.resource = get<std::string>(s, "resource", "", source);
  if (!o.resource.empty() && (!is_http_url(o.resource) || o.resource.find('#') != std::string::npos))
    fail("resource", "must be an absolute https:// (or http://) URL without a fragment");
  o.authorization_servers = get_strings(s, "authorization_servers", {o.issuer}, source);
  if (o.authorization_servers.empty()) fail("authorization_servers", "must name at least one server");
  for (const auto& a : o.authorization_servers)
    if (!is_http_url(a)) fail("authorization_servers", "must hold https:// (or http://) URLs");
  return o;
}

void parse_listen(const std::string& listen, HttpConfig& http, const std::string& source) {
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) throw ConfigError(source + ": http.listen must be HOST:PORT, got \"" + listen + "\"");
  http.host = listen.substr(0, colon);
  if (http.host.size() > 2 && http.host.front() == '[' && http.host.back() == ']')
    http.host = http.host.substr(1, http.host.size() - 2);
  try {
    int port = std::stoi(listen.substr(colon + 1));
    if (port < 0 || port > 65535) throw std::out_of_range("port");
    http.port = static_cast<uint16_t>(port);
  } catch (const std::exception&) {
    throw ConfigError(source + ": http.listen has a bad port in \"" + listen + "\"");
  }
}

// A decimal amount from a TOML number or string, as an exact count of 10^-scale units. TOML
// floats arrive as doubles; their shortest round-trip text is what the file said.
int64_t exact_amount(const toml::node& n, int scale, const std::string& what, const std::string& source) {
  std::string text;
  if (auto i = n.as_integer()) {
    text = std::to_string(i->get());
  } else if (auto f = n.as_floating_point()) {
    if (!std::isfinite(f->get()))
      throw ConfigError(where(n.source(), source) + ": " + what + " must be a finite number");
    text = decimal::shortest(f->get());
  } else if (auto s = n.as_string()) {
    text = s->get();
  } else {
    throw ConfigError(where(n.source(), source) + ": " + what + " must be a number");
  }
  std::string why;
  auto v = decimal::parse(text, scale, &why);
  if (!v)
    throw ConfigError(where(n.source(), source) + ": " + what + " \"" + text + "\" is not usable (" + why +
                      "; at most " + std::to_string(scale) + " decimal places)");
  if (*v < 0) throw ConfigError(where(n.source(), source) + ": " + what + " must be zero or more");
  return *v;
}

// The unit label a rate gets when the file names none, from the resource's kind.
std::string default_unit(const std::string& resource) {
  std::string kind = resource.substr(0, resource.find(':'));
  static const std::map<std::string, std::string> kUnits = {
      {"cpu_core_hour", "core-h"}, {"gpu_hour", "GPU-h"},       {"tokens_in", "token"},
      {"tokens_out", "token"},     {"quantum_shot", "shot"},    {"qubit_second", "qubit-s"},
      {"gb_staged", "GB"},         {"call", "call"},            {"quantum_sim_qubit_gate", "qubit-gate"},
      {"quantum_sim_mamp_gate", "Mamp-gate"}};
  auto it = kUnits.find(kind);
  return it == kUnits.end() ? "unit" : it->second;
}

void parse_tasks(const toml::table& s, TasksConfig& c, const std::string& source) {
  reject_unknown(s,
                 {"enabled", "default_ttl_s", "max_ttl_s", "min_retention_s", "poll_interval_ms",
                  "max_running_per_principal", "max_duration_s", "max_retained_per_principal",
                  "max_retained_result_mb_per_principal"},
                 "[tasks]", source);
  c.enabled = get<bool>(s, "enabled", c.enabled, source);
  auto positive = [&](std::string_view k, int64_t d) {
    int64_t v = get<int64_t>(s, k, d, source);
    if (v <= 0) throw ConfigError(source + ": tasks." + std::string(k) + " must be greater than zero");
    return v;
  };
  c.default_ttl = std::chrono::seconds(positive("default_ttl_s", c.default_ttl.count()));
  c.max_ttl = std::chrono::seconds(positive("max_ttl_s", c.max_ttl.count()));
  c.min_retention = std::chrono::seconds(positive("min_retention_s", c.min_retention.count()));
  c.poll_interval = std::chrono::milliseconds(positive("poll_interval_ms", c.poll_interval.count()));
  c.max_running_per_principal =
      static_cast<std::size_t>(positive("max_running_per_principal", int64_t(c.max_running_per_principal)));
  c.max_duration = std::chrono::seconds(positive("max_duration_s", c.max_duration.count()));
  c.max_retained_per_principal =
      static_cast<std::size_t>(positive("max_retained_per_principal", int64_t(c.max_retained_per_principal)));
  c.max_retained_result_mb_per_principal = static_cast<uint64_t>(
      positive("max_retained_result_mb_per_principal", int64_t(c.max_retained_result_mb_per_principal)));
  if (c.max_retained_result_mb_per_principal > (uint64_t(1) << 30))
    throw ConfigError(source + ": tasks.max_retained_result_mb_per_principal must be at most 1073741824 (1 PiB)");
  if (c.default_ttl > c.max_ttl)
    throw ConfigError(source + ": tasks.default_ttl_s must not exceed tasks.max_ttl_s");
}

void parse_credits(const toml::table& s, CreditsConfig& c, const std::string& source) {
  reject_unknown(s, {"enabled", "hold_timeout_s", "sweep_interval_s", "idempotency_ttl_s", "rates"}, "[credits]",
                 source);
  c.enabled = get<bool>(s, "enabled", c.enabled, source);
  auto secs = [&](std::string_view k, std::chrono::seconds d) {
    return std::chrono::seconds(get<int64_t>(s, k, d.count(), source));
  };
  c.hold_timeout = secs("hold_timeout_s", c.hold_timeout);
  c.sweep_interval = secs("sweep_interval_s", c.sweep_interval);
  c.idempotency_ttl = secs("idempotency_ttl_s", c.idempotency_ttl);
  if (c.sweep_interval.count() == 0) {
    const toml::node* n = s.get("sweep_interval_s");
    throw ConfigError(where(n->source(), source) + ": \"sweep_interval_s\" must be at least 1");
  }
  const toml::node* rn = s.get("rates");
  if (!rn) return;
  const toml::table* rates = rn->as_table();
  if (!rates) throw ConfigError(where(rn->source(), source) + ": [credits.rates] must be a table");
  for (const auto& [key, node] : *rates) {
    CreditRateConfig r;
    r.resource = std::string(key.str());
    if (r.resource.empty() || r.resource.find_first_of(" \t\r\n") != std::string::npos)
      throw ConfigError(where(node.source(), source) + ": a rate's resource name must be non-empty, without spaces");
    std::string what = "the rate of \"" + r.resource + "\"";
    if (const toml::table* t = node.as_table()) {
      reject_unknown(*t, {"credits", "unit"}, "rate \"" + r.resource + "\"", source);
      const toml::node* amount = t->get("credits");
      if (!amount) throw ConfigError(where(node.source(), source) + ": " + what + " needs \"credits\" (per unit)");
      r.pico_per_unit = exact_amount(*amount, 12, what, source);
      r.unit = get<std::string>(*t, "unit", "", source);
    } else {
      r.pico_per_unit = exact_amount(node, 12, what, source);
    }
    if (r.unit.empty()) r.unit = default_unit(r.resource);
    c.rates.push_back(std::move(r));
  }
}

std::chrono::milliseconds get_ms(const toml::table& t, std::string_view key, std::chrono::milliseconds fallback,
                                 int64_t least, const std::string& source) {
  int64_t v = get<int64_t>(t, key, fallback.count(), source);
  if (v < least)
    throw ConfigError(where(t.get(key)->source(), source) + ": \"" + std::string(key) + "\" must be at least " +
                      std::to_string(least));
  return std::chrono::milliseconds(v);
}

InferenceBackendConfig parse_inference_backend(const toml::table& t, const toml::node& e, const std::string& source) {
  reject_unknown(t,
                 {"id", "url", "flavor", "api_key_file", "api_key_env", "models", "gpu_type", "max_concurrency",
                  "connect_timeout_ms", "first_token_timeout_ms", "request_timeout_ms"},
                 "[[inference.backends]]", source);
  InferenceBackendConfig b;
  b.id = get<std::string>(t, "id", "", source);
  if (b.id.empty() || b.id.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
                          std::string::npos)
    throw ConfigError(where(e.source(), source) + ": an inference backend needs an \"id\" of letters, digits, '.', '-' and '_'");
  b.url = get<std::string>(t, "url", "", source);
  while (!b.url.empty() && b.url.back() == '/') b.url.pop_back();
  if (b.url.size() > 3 && b.url.compare(b.url.size() - 3, 3, "/v1") == 0) b.url.resize(b.url.size() - 3);
  if (!is_http_url(b.url))
    throw ConfigError(where(e.source(), source) + ": inference backend \"" + b.id +
                      "\" needs a url starting http:// or https:// (the server's base, without /v1)");
  b.flavor = get<std::string>(t, "flavor", b.flavor, source);
  if (b.flavor != "vllm" && b.flavor != "llamacpp" && b.flavor != "openai")
    throw ConfigError(where(e.source(), source) + ": inference backend \"" + b.id +
                      "\": flavor must be \"vllm\", \"llamacpp\" or \"openai\"");
  b.api_key_file = get<std::string>(t, "api_key_file", "", source);
  b.api_key_env = get<std::string>(t, "api_key_env", "", source);
  if (!b.api_key_file.empty() && !b.api_key_env.empty())
    throw ConfigError(where(e.source(), source) + ": inference backend \"" + b.id +
                      "\": set api_key_file or api_key_env, not both");
  b.models = get_strings(t, "models", {}, source);
  b.gpu_type = get<std::string>(t, "gpu_type", "", source);
  b.max_concurrency = get<int>(t, "max_concurrency", b.max_concurrency, source);
  if (b.max_concurrency < 1)
    throw ConfigError(where(e.source(), source) + ": inference backend \"" + b.id + "\": max_concurrency must be >= 1");
  b.connect_timeout = get_ms(t, "connect_timeout_ms", b.connect_timeout, 10, source);
  b.first_token_timeout = get_ms(t, "first_token_timeout_ms", b.first_token_timeout, 10, source);
  b.request_timeout = get_ms(t, "request_timeout_ms", b.request_timeout, 10, source);
  return b;
}

void parse_inference(const toml::table& s, InferenceConfig& c, const std::string& source) {
  reject_unknown(s,
                 {"backends", "health_interval_ms", "retries", "retry_backoff_ms", "breaker_failures",
                  "breaker_cooldown_ms", "default_max_tokens", "max_embedding_inputs", "max_inline_vectors_bytes",
                  "queue_timeout_ms"},
                 "[inference]", source);
  c.health_interval = get_ms(s, "health_interval_ms", c.health_interval, 10, source);
  c.retries = get<int>(s, "retries", c.retries, source);
  c.retry_backoff = get_ms(s, "retry_backoff_ms", c.retry_backoff, 0, source);
  c.breaker_failures = get<int>(s, "breaker_failures", c.breaker_failures, source);
  c.breaker_cooldown = get_ms(s, "breaker_cooldown_ms", c.breaker_cooldown, 0, source);
  c.default_max_tokens = get<int64_t>(s, "default_max_tokens", c.default_max_tokens, source);
  c.max_embedding_inputs = get<int>(s, "max_embedding_inputs", c.max_embedding_inputs, source);
  c.max_inline_vectors_bytes = get<std::size_t>(s, "max_inline_vectors_bytes", c.max_inline_vectors_bytes, source);
  c.queue_timeout = get_ms(s, "queue_timeout_ms", c.queue_timeout, 0, source);
  if (c.breaker_failures < 1 || c.default_max_tokens < 1 || c.max_embedding_inputs < 1)
    throw ConfigError(source + ": [inference] needs breaker_failures >= 1, default_max_tokens >= 1 and "
                               "max_embedding_inputs >= 1");
  if (const toml::node* n = s.get("backends")) {
    const toml::array* a = n->as_array();
    if (!a) throw ConfigError(where(n->source(), source) + ": inference.backends must be an array of tables ([[inference.backends]])");
    for (const auto& e : *a) {
      const toml::table* t = e.as_table();
      if (!t) throw ConfigError(where(e.source(), source) + ": each [[inference.backends]] entry must be a table");
      InferenceBackendConfig b = parse_inference_backend(*t, e, source);
      for (const auto& other : c.backends)
        if (other.id == b.id)
          throw ConfigError(where(e.source(), source) + ": inference backend \"" + b.id + "\" is defined twice");
      c.backends.push_back(std::move(b));
    }
  }
}

SiteConfig parse_site(const toml::table& t, const toml::node& e, const std::string& source) {
  reject_unknown(t,
                 {"id", "scheduler", "jobs_root", "poll_interval_ms", "default_partition", "partitions", "run_as",
                  "slots_cpus", "slots_memory_mb", "allow_network", "slurm", "ibm_runtime"},
                 "[[sites]]", source);
  SiteConfig s;
  s.id = get<std::string>(t, "id", "", source);
  if (s.id.empty() || s.id.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
                          std::string::npos)
    throw ConfigError(where(e.source(), source) + ": a site needs an \"id\" of letters, digits, '-' and '_'");
  s.scheduler = get<std::string>(t, "scheduler", s.scheduler, source);
  if (s.scheduler != "local" && s.scheduler != "slurm" && s.scheduler != "ibm-runtime")
    throw ConfigError(where(e.source(), source) + ": site \"" + s.id +
                      "\": scheduler must be \"local\", \"slurm\" or \"ibm-runtime\"");
  s.jobs_root = get<std::string>(t, "jobs_root", "", source);
  s.poll_interval = std::chrono::milliseconds(
      get<int64_t>(t, "poll_interval_ms", s.scheduler == "slurm" ? 2000 : s.scheduler == "ibm-runtime" ? 5000 : 250, source));
  if (s.poll_interval.count() < 10)
    throw ConfigError(where(e.source(), source) + ": site \"" + s.id + "\": poll_interval_ms must be at least 10");
  s.default_partition = get<std::string>(t, "default_partition", "", source);
  s.partitions = get_strings(t, "partitions", {}, source);
  s.run_as = get<std::string>(t, "run_as", s.run_as, source);
  if (s.run_as.empty()) throw ConfigError(where(e.source(), source) + ": site \"" + s.id + "\": run_as must not be empty");
  s.slots_cpus = get<int>(t, "slots_cpus", 0, source);
  s.slots_memory_mb = get<int64_t>(t, "slots_memory_mb", 0, source);
  s.allow_network = get<bool>(t, "allow_network", false, source);
  if (const toml::node* n = t.get("slurm")) {
    const toml::table* st = n->as_table();
    if (!st) throw ConfigError(where(n->source(), source) + ": [sites.slurm] must be a table");
    reject_unknown(*st, {"mode", "rest_url", "rest_socket", "jwt_token_file", "user", "slurm_conf"}, "[sites.slurm]", source);
    SlurmSiteConfig sl;
    sl.mode = get<std::string>(*st, "mode", sl.mode, source);
    if (sl.mode != "cli" && sl.mode != "rest")
      throw ConfigError(where(n->source(), source) + ": sites.slurm.mode must be \"cli\" or \"rest\"");
    sl.rest_url = get<std::string>(*st, "rest_url", "", source);
    sl.rest_socket = get<std::string>(*st, "rest_socket", "", source);
    sl.jwt_token_file = get<std::string>(*st, "jwt_token_file", "", source);
    sl.user = get<std::string>(*st, "user", "", source);
    sl.slurm_conf = get<std::string>(*st, "slurm_conf", "", source);
    if (sl.mode == "rest" && sl.rest_url.empty() == sl.rest_socket.empty())
      throw ConfigError(where(n->source(), source) +
                        ": sites.slurm with mode = \"rest\" needs exactly one of rest_socket (rest_auth/local) and "
                        "rest_url (JWT, with jwt_token_file and user)");
    if (!sl.rest_url.empty() && (sl.jwt_token_file.empty() || sl.user.empty()))
      throw ConfigError(where(n->source(), source) + ": sites.slurm.rest_url needs jwt_token_file and user");
    s.slurm = std::move(sl);
  }
  if (const toml::node* n = t.get("ibm_runtime")) {
    const toml::table* it = n->as_table();
    if (!it) throw ConfigError(where(n->source(), source) + ": [sites.ibm_runtime] must be a table");
    reject_unknown(*it,
                   {"url", "iam_url", "api_key_file", "service_crn", "backend", "api_version", "max_shots",
                    "request_timeout_ms"},
                   "[sites.ibm_runtime]", source);
    IbmRuntimeSiteConfig q;
    q.url = get<std::string>(*it, "url", q.url, source);
    q.iam_url = get<std::string>(*it, "iam_url", q.iam_url, source);
    q.api_key_file = get<std::string>(*it, "api_key_file", "", source);
    q.service_crn = get<std::string>(*it, "service_crn", "", source);
    q.backend = get<std::string>(*it, "backend", s.id, source);
    q.api_version = get<std::string>(*it, "api_version", q.api_version, source);
    q.max_shots = get<int64_t>(*it, "max_shots", q.max_shots, source);
    q.request_timeout = std::chrono::milliseconds(get<int64_t>(*it, "request_timeout_ms", 30'000, source));
    if (q.api_key_file.empty() || q.service_crn.empty())
      throw ConfigError(where(n->source(), source) + ": site \"" + s.id +
                        "\": [sites.ibm_runtime] needs api_key_file and service_crn");
    if (q.max_shots < 1 || q.request_timeout.count() < 100)
      throw ConfigError(where(n->source(), source) + ": site \"" + s.id +
                        "\": max_shots must be >= 1 and request_timeout_ms >= 100");
    s.ibm_runtime = std::move(q);
  }
  if (s.scheduler == "ibm-runtime" && !s.ibm_runtime)
    throw ConfigError(where(e.source(), source) + ": site \"" + s.id +
                      "\" has scheduler = \"ibm-runtime\" but no [sites.ibm_runtime] table");
  return s;
}

bool valid_area_id(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (unsigned char c : id)
    if (!(std::isalnum(c) || c == '_' || c == '-')) return false;
  return true;
}

bool valid_cidr(const std::string& text) {
  auto slash = text.find('/');
  std::string addr = text.substr(0, slash);
  unsigned char buf[16];
  int max_bits = 0;
  if (::inet_pton(AF_INET, addr.c_str(), buf) == 1) max_bits = 32;
  else if (::inet_pton(AF_INET6, addr.c_str(), buf) == 1) max_bits = 128;
  else return false;
  if (slash == std::string::npos) return true;
  std::string bits = text.substr(slash + 1);
  if (bits.empty() || bits.size() > 3 || bits.find_first_not_of("0123456789") != std::string::npos) return false;
  return std::stoi(bits) <= max_bits;
}

// [data] after [[projects]]: areas name projects.
void parse_data(const toml::table& s, Config& c, const std::string& source) {
  reject_unknown(s,
                 {"areas", "sources", "http", "max_concurrent", "hash_threads", "max_transfer_bytes",
                  "max_transfer_files", "quota_scan_interval_s", "max_attempts", "max_bytes_per_s",
                  "workers_per_transfer"},
                 "[data]", source);
  DataConfig& d = c.data;
  d.max_concurrent = get<int>(s, "max_concurrent", d.max_concurrent, source);
  d.hash_threads = get<int>(s, "hash_threads", d.hash_threads, source);
  d.max_transfer_bytes = get<int64_t>(s, "max_transfer_bytes", d.max_transfer_bytes, source);
  d.max_transfer_files = get<int64_t>(s, "max_transfer_files", d.max_transfer_files, source);
  d.quota_scan_interval =
      std::chrono::seconds(get<int64_t>(s, "quota_scan_interval_s", d.quota_scan_interval.count(), source));
  d.max_attempts = get<int>(s, "max_attempts", d.max_attempts, source);
  d.max_bytes_per_s = get<int64_t>(s, "max_bytes_per_s", d.max_bytes_per_s, source);
  d.workers_per_transfer = get<int>(s, "workers_per_transfer", d.workers_per_transfer, source);
  if (d.max_concurrent < 1 || d.max_concurrent > 256 || d.hash_threads < 1 || d.hash_threads > 64 ||
      d.max_transfer_bytes < 1 || d.max_transfer_files < 1 || d.max_attempts < 1 || d.workers_per_transfer < 1 ||
      d.workers_per_transfer > 16)
    throw ConfigError(source + ": [data] needs max_concurrent 1..256, hash_threads 1..64, max_transfer_bytes >= 1, "
                               "max_transfer_files >= 1, max_attempts >= 1 and workers_per_transfer 1..16");
  auto known_project = [&](const std::string& p) { return p == "*" || c.project(p) != nullptr; };

  if (const toml::node* n = s.get("areas")) {
    const toml::array* a = n->as_array();
    if (!a) throw ConfigError(where(n->source(), source) + ": data.areas must be an array of tables ([[data.areas]])");
    for (const auto& e : *a) {
      const toml::table* t = e.as_table();
      if (!t) throw ConfigError(where(e.source(), source) + ": each [[data.areas]] entry must be a table");
      reject_unknown(*t,
                     {"id", "project", "readers", "site", "root", "mode", "quota_bytes", "quota_files",
                      "allow_hard_links", "fsync", "create"},
                     "[[data.areas]]", source);
      auto fail = [&](const std::string& why) { throw ConfigError(where(e.source(), source) + ": " + why); };
      AreaConfig ar;
      ar.id = get<std::string>(*t, "id", "", source);
      if (!valid_area_id(ar.id)) fail("an area needs an \"id\" of 1 to 64 letters, digits, '_' or '-'");
      ar.project = get<std::string>(*t, "project", "", source);
      ar.readers = get_strings(*t, "readers", {}, source);
      ar.site = get<std::string>(*t, "site", "", source);
      if (!ar.site.empty() && !c.site(ar.site) && !c.sites.empty())
        fail("area \"" + ar.id + "\" names site \"" + ar.site + "\", which is not configured");
      std::string root = get<std::string>(*t, "root", "", source);
      if (root.empty()) fail("area \"" + ar.id + "\" needs a \"root\" directory");
      std::string mode = get<std::string>(*t, "mode", "rw", source);
      if (mode != "rw" && mode != "ro") fail("area \"" + ar.id + "\": mode must be \"rw\" or \"ro\"");
      ar.writable = mode == "rw";
      ar.quota_bytes = get<int64_t>(*t, "quota_bytes", 0, source);
      ar.quota_files = get<int64_t>(*t, "quota_files", 0, source);
      ar.allow_hard_links = get<bool>(*t, "allow_hard_links", false, source);
      ar.fsync = get<bool>(*t, "fsync", false, source);
      ar.create = get<bool>(*t, "create", true, source);
      if (ar.project.empty()) {
        if (ar.readers.empty())
          fail("area \"" + ar.id + "\" has no project; a shared dataset needs \"readers\" (projects, or \"*\")");
        if (ar.writable) fail("area \"" + ar.id + "\" is a shared dataset (no project): it must have mode = \"ro\"");
        ar.create = false;
      } else if (!known_project(ar.project)) {
        fail("area \"" + ar.id + "\" names project \"" + ar.project + "\", which is not configured");
      }
      for (const auto& r : ar.readers)
        if (!known_project(r)) fail("area \"" + ar.id + "\" names reader \"" + r + "\", which is not a configured project");
      std::vector<std::string> owners;
      if (ar.project == "*") {
        if (root.find("{project}") == std::string::npos)
          fail("area \"" + ar.id + "\" is for every project (project = \"*\"): its root must contain {project}");
        for (const auto& p : c.projects) owners.push_back(p.id);
      } else {
        owners.push_back(ar.project);
      }
      for (const auto& owner : owners) {
        AreaConfig one = ar;
        one.project = owner;
        std::string r = root;
        for (auto pos = r.find("{project}"); pos != std::string::npos; pos = r.find("{project}"))
          r.replace(pos, 9, owner);
        std::filesystem::path rp(r);
        one.root = (rp.is_absolute() ? rp : c.base_dir / rp).lexically_normal();
        for (const auto& other : d.areas) {
          bool clash = other.id == one.id && (other.project == one.project || other.project.empty() || one.project.empty());
          if (clash)
            fail("area \"" + one.id + "\" is defined twice" +
                 (one.project.empty() ? std::string() : " for project \"" + one.project + "\"") +
                 " (a shared dataset's id must differ from every project's own areas)");
        }
        d.areas.push_back(std::move(one));
      }
    }
  }
  if (auto* h = section(s, "http", source)) {
    reject_unknown(*h,
                   {"allowed_hosts", "allowed_networks", "connect_timeout_s", "timeout_s", "stall_timeout_s",
                    "max_redirects", "retries", "max_bytes", "proxy"},
                   "[data.http]", source);
    auto& x = d.http;
    x.allowed_hosts = get_strings(*h, "allowed_hosts", {}, source);
    x.allowed_networks = get_strings(*h, "allowed_networks", {}, source);
    for (const auto& net : x.allowed_networks)
      if (!valid_cidr(net))
        throw ConfigError(source + ": data.http.allowed_networks: \"" + net + "\" is not an address or CIDR block");
    for (const auto& host : x.allowed_hosts)
      if (host.empty() || host.find_first_of("/:@ ") != std::string::npos)
        if (host.front() != '[')
          throw ConfigError(source + ": data.http.allowed_hosts: \"" + host +
                            "\" is not a host name (no scheme, port or path; \"*.example.org\" for subdomains)");
    x.connect_timeout = std::chrono::seconds(get<int64_t>(*h, "connect_timeout_s", x.connect_timeout.count(), source));
    x.timeout = std::chrono::seconds(get<int64_t>(*h, "timeout_s", x.timeout.count(), source));
    x.stall_timeout = std::chrono::seconds(get<int64_t>(*h, "stall_timeout_s", x.stall_timeout.count(), source));
    x.max_redirects = get<int>(*h, "max_redirects", x.max_redirects, source);
    x.retries = get<int>(*h, "retries", x.retries, source);
    x.max_bytes = get<int64_t>(*h, "max_bytes", x.max_bytes, source);
    x.proxy = get<std::string>(*h, "proxy", "", source);
    if (x.connect_timeout.count() < 1 || x.timeout.count() < 1 || x.stall_timeout.count() < 1 || x.max_redirects > 20)
      throw ConfigError(source + ": [data.http] needs connect_timeout_s, timeout_s and stall_timeout_s >= 1 and "
                                 "max_redirects <= 20");
  }
  if (const toml::node* n = s.get("sources")) {
    const toml::array* a = n->as_array();
    if (!a) throw ConfigError(where(n->source(), source) + ": data.sources must be an array of tables ([[data.sources]])");
    for (const auto& e : *a) {
      const toml::table* t = e.as_table();
      if (!t) throw ConfigError(where(e.source(), source) + ": each [[data.sources]] entry must be a table");
      reject_unknown(*t, {"url", "projects", "bearer_token_file", "basic_auth_file", "headers_file", "allow_upload"},
                     "[[data.sources]]", source);
      DataSourceConfig src;
      src.url = get<std::string>(*t, "url", "", source);
      if (!is_http_url(src.url) || src.url.find('@') != std::string::npos)
        throw ConfigError(where(e.source(), source) +
                          ": a data source needs a \"url\" prefix (http:// or https://, no user:password@)");
      src.projects = get_strings(*t, "projects", {}, source);
      for (const auto& p : src.projects)
        if (!known_project(p))
          throw ConfigError(where(e.source(), source) + ": data source names project \"" + p + "\", which is not configured");
      auto file = [&](const char* k) {
        std::filesystem::path f = get<std::string>(*t, k, "", source);
        return f.empty() || f.is_absolute() ? f : c.base_dir / f;
      };
      src.bearer_token_file = file("bearer_token_file");
      src.basic_auth_file = file("basic_auth_file");
      src.headers_file = file("headers_file");
      src.allow_upload = get<bool>(*t, "allow_upload", false, source);
      d.sources.push_back(std::move(src));
    }
  }
}

}  // namespace

const AreaConfig* DataConfig::area_for(const std::string& project, const std::string& id) const {
  const AreaConfig* shared = nullptr;
  for (const auto& a : areas) {
    if (a.id != id) continue;
    if (a.project == project) return &a;
    for (const auto& r : a.readers)
      if (r == "*" || r == project) shared = &a;
  }
  return shared;
}

const SiteConfig* Config::site(const std::string& id) const {
  for (const auto& s : sites)
    if (s.id == id) return &s;
  return nullptr;
}

const ProjectConfig* Config::project(const std::string& id) const {
  for (const auto& p : projects)
    if (p.id == id) return &p;
  return nullptr;
}

const UserConfig* Config::user(const std::string& name) const {
  for (const auto& u : users)
    if (u.name == name) return &u;
  return nullptr;
}

std::vector<std::string> Config::projects_of(const std::string& principal) const {
  std::vector<std::string> out;
  auto in = [&](const std::vector<std::string>& v) { return std::find(v.begin(), v.end(), principal) != v.end(); };
  for (const auto& p : projects)
    if (in(p.members) || in(p.managers) || in(p.auditors) || in(p.admins) || in(p.service_accounts))
      out.push_back(p.id);
  return out;
}

Config parse_config(std::string_view text, const std::filesystem::path& base_dir, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw ConfigError(where(e.source(), source) + ": " + std::string(e.description()));
  }
  Config c;
  c.base_dir = base_dir;
  reject_unknown(root, {"server", "limits", "http", "stdio", "tools", "tasks", "credits", "audit", "projects", "users",
                        "oidc", "sites", "quantum", "data", "inference"},
                 "the top level",
                 source);
  if (auto* s = section(root, "server", source)) {
    reject_unknown(*s, {"name", "database", "log_level", "log_format", "threads", "instructions", "durability",
                        "writer_poll_us", "writer_linger_us"},
                   "[server]", source);
    c.server_name = get<std::string>(*s, "name", c.server_name, source);
    c.database = get<std::string>(*s, "database", c.database.string(), source);
    c.log_level = get<std::string>(*s, "log_level", c.log_level, source);
    c.log_format = get<std::string>(*s, "log_format", c.log_format, source);
    c.threads = get<int>(*s, "threads", c.threads, source);
    c.instructions = get<std::string>(*s, "instructions", c.instructions, source);
    c.durability = get<std::string>(*s, "durability", c.durability, source);
    if (c.durability != "fsync" && c.durability != "commit")
      throw ConfigError(source + ": server.durability must be \"fsync\" (an answered call's charge and audit record "
                                 "survive power loss) or \"commit\" (they survive a crash of the server; faster)");
    int64_t poll = get<int64_t>(*s, "writer_poll_us", c.writer_poll.count(), source);
    if (poll > 10'000)  // (a negative value is refused by get(), with its line and column)
      throw ConfigError(source + ": server.writer_poll_us must be between 0 (never poll) and 10000 microseconds (got " +
                        std::to_string(poll) + ")");
    c.writer_poll = std::chrono::microseconds(poll);
    int64_t linger = get<int64_t>(*s, "writer_linger_us", c.writer_linger.count(), source);
    if (linger > 100'000)
      throw ConfigError(source + ": server.writer_linger_us must be between 0 (woken for every write) and 100000 "
                                 "microseconds (got " + std::to_string(linger) + ")");
    c.writer_linger = std::chrono::microseconds(linger);
  }
  static const std::vector<std::string> kLevels = {"trace", "debug", "info", "warn", "error", "off"};
  if (std::find(kLevels.begin(), kLevels.end(), c.log_level) == kLevels.end())
    throw ConfigError(source + ": server.log_level must be one of trace, debug, info, warn, error, off (got \"" +
                      c.log_level + "\")");
  if (c.log_format != "json" && c.log_format != "text")
    throw ConfigError(source + ": server.log_format must be json or text (got \"" + c.log_format + "\")");
  if (auto* s = section(root, "limits", source)) {
    reject_unknown(*s, {"max_message_bytes", "max_depth", "tool_timeout_s"}, "[limits]", source);
    c.max_message_bytes = get<std::size_t>(*s, "max_message_bytes", c.max_message_bytes, source);
    c.max_depth = get<int>(*s, "max_depth", c.max_depth, source);
    c.tool_timeout = std::chrono::seconds(get<int64_t>(*s, "tool_timeout_s", c.tool_timeout.count(), source));
  }
  c.http.max_body_bytes = c.max_message_bytes;
  if (auto* s = section(root, "http", source)) {
    reject_unknown(*s,
                   {"listen", "allowed_origins", "max_header_bytes", "header_timeout_s", "body_timeout_s",
                    "idle_timeout_s", "session_idle_timeout_s", "shutdown_grace_s", "max_connections", "max_sessions",
                    "max_sessions_per_principal", "stream_backlog_bytes",
                    "tls_cert", "tls_key"},
                   "[http]", source);
    if (auto listen = get<std::string>(*s, "listen", "", source); !listen.empty()) parse_listen(listen, c.http, source);
    c.http.allowed_origins = get_strings(*s, "allowed_origins", c.http.allowed_origins, source);
    c.http.max_header_bytes = get<std::size_t>(*s, "max_header_bytes", c.http.max_header_bytes, source);
    if (c.http.max_header_bytes < 1024 || c.http.max_header_bytes > (1u << 20))
      throw ConfigError(source + ": http.max_header_bytes must be between 1024 and 1048576 (got " +
                        std::to_string(c.http.max_header_bytes) + ")");
    auto secs = [&](std::string_view k, std::chrono::seconds d) {
      return std::chrono::seconds(get<int64_t>(*s, k, d.count(), source));
    };
    c.http.header_timeout = secs("header_timeout_s", c.http.header_timeout);
    c.http.body_timeout = secs("body_timeout_s", c.http.body_timeout);
    c.http.idle_timeout = secs("idle_timeout_s", c.http.idle_timeout);
    c.http.session_idle_timeout = secs("session_idle_timeout_s", c.http.session_idle_timeout);
    c.http.shutdown_grace = secs("shutdown_grace_s", c.http.shutdown_grace);
    c.http.max_connections = get<std::size_t>(*s, "max_connections", c.http.max_connections, source);
    c.http.max_sessions = get<std::size_t>(*s, "max_sessions", c.http.max_sessions, source);
    c.http.max_sessions_per_principal =
        get<std::size_t>(*s, "max_sessions_per_principal", c.http.max_sessions_per_principal, source);
    if (c.http.max_sessions_per_principal == 0)
      throw ConfigError(source + ": http.max_sessions_per_principal must be at least 1");
    c.http.stream_backlog_bytes = get<std::size_t>(*s, "stream_backlog_bytes", c.http.stream_backlog_bytes, source);
    if (c.http.stream_backlog_bytes < (64u << 10))
      throw ConfigError(source + ": http.stream_backlog_bytes must be at least 65536 (got " +
                        std::to_string(c.http.stream_backlog_bytes) + ")");
    c.http.tls_cert = get<std::string>(*s, "tls_cert", "", source);
    c.http.tls_key = get<std::string>(*s, "tls_key", "", source);
    if (c.http.tls_cert.empty() != c.http.tls_key.empty())
      throw ConfigError(source + ": http.tls_cert and http.tls_key must be set together");
  }
  if (auto* s = section(root, "stdio", source)) {
    reject_unknown(*s, {"principal"}, "[stdio]", source);
    c.stdio_principal = get<std::string>(*s, "principal", "", source);
  }
  if (auto* s = section(root, "tools", source)) {
    reject_unknown(*s, {"demo"}, "[tools]", source);
    c.demo_tools = get<bool>(*s, "demo", false, source);
  }
  if (auto* s = section(root, "tasks", source)) parse_tasks(*s, c.tasks, source);
  if (auto* s = section(root, "quantum", source)) {
    reject_unknown(*s,
                   {"enabled", "max_memory_mb", "threads", "concurrency", "fusion", "max_fused_qubits",
                    "max_statevector_qubits", "max_shots", "max_qubits"},
                   "[quantum]", source);
    auto& q = c.quantum;
    q.enabled = get<bool>(*s, "enabled", q.enabled, source);
    q.max_memory_mb = get<uint64_t>(*s, "max_memory_mb", q.max_memory_mb, source);
    q.threads = get<int>(*s, "threads", q.threads, source);
    q.concurrency = get<int>(*s, "concurrency", q.concurrency, source);
    q.fusion = get<bool>(*s, "fusion", q.fusion, source);
    q.max_fused_qubits = get<int>(*s, "max_fused_qubits", q.max_fused_qubits, source);
    q.max_statevector_qubits = get<int>(*s, "max_statevector_qubits", q.max_statevector_qubits, source);
    q.max_shots = get<int64_t>(*s, "max_shots", q.max_shots, source);
    q.max_qubits = get<int>(*s, "max_qubits", q.max_qubits, source);
    if (q.max_memory_mb < 1 || q.threads < 0 || q.concurrency < 1 || q.max_fused_qubits < 2 || q.max_fused_qubits > 5 ||
        q.max_statevector_qubits < 0 || q.max_statevector_qubits > 24 || q.max_shots < 1 || q.max_qubits < 1 ||
        q.max_qubits > 50)
      throw ConfigError(source + ": [quantum] needs max_memory_mb >= 1, threads >= 0, concurrency >= 1, "
                                 "max_fused_qubits 2..5, max_statevector_qubits 0..24, max_shots >= 1, max_qubits 1..50");
  }
  if (auto* s = section(root, "inference", source)) parse_inference(*s, c.inference, source);
  if (auto* s = section(root, "credits", source)) parse_credits(*s, c.credits, source);
  if (auto* s = section(root, "audit", source)) {
    reject_unknown(*s, {"signing_key", "checkpoint_file", "checkpoint_every_records", "checkpoint_every_s", "log_mirror"},
                   "[audit]", source);
    c.audit.log_mirror = get<bool>(*s, "log_mirror", c.audit.log_mirror, source);
    c.audit.signing_key = get<std::string>(*s, "signing_key", c.audit.signing_key.string(), source);
    c.audit.checkpoint_file = get<std::string>(*s, "checkpoint_file", c.audit.checkpoint_file.string(), source);
    c.audit.checkpoint_every_records =
        get<int64_t>(*s, "checkpoint_every_records", c.audit.checkpoint_every_records, source);
    c.audit.checkpoint_every =
        std::chrono::seconds(get<int64_t>(*s, "checkpoint_every_s", c.audit.checkpoint_every.count(), source));
    if (c.audit.signing_key.empty() || c.audit.checkpoint_file.empty())
      throw ConfigError(source + ": audit.signing_key and audit.checkpoint_file must not be empty");
  }
  if (const toml::node* n = root.get("projects")) {
    const toml::array* a = n->as_array();
    if (!a) throw ConfigError(where(n->source(), source) + ": projects must be an array of tables ([[projects]])");
    for (const auto& e : *a) {
      const toml::table* t = e.as_table();
      if (!t) throw ConfigError(where(e.source(), source) + ": each [[projects]] entry must be a table");
      reject_unknown(*t,
                     {"id", "name", "members", "managers", "auditors", "admins", "service_accounts", "policy",
                      "credit_account", "credit_line"},
                     "[[projects]]", source);
      ProjectConfig p;
      p.id = get<std::string>(*t, "id", "", source);
      if (p.id.empty()) throw ConfigError(where(e.source(), source) + ": a project needs an \"id\"");
      if (c.project(p.id)) throw ConfigError(where(e.source(), source) + ": project \"" + p.id + "\" is defined twice");
      p.name = get<std::string>(*t, "name", p.id, source);
      p.members = get_strings(*t, "members", {}, source);
      p.managers = get_strings(*t, "managers", {}, source);
      p.auditors = get_strings(*t, "auditors", {}, source);
      p.admins = get_strings(*t, "admins", {}, source);
      p.service_accounts = get_strings(*t, "service_accounts", {}, source);
      for (const auto& sa : p.service_accounts)
        if (sa.rfind("group:", 0) == 0)
          throw ConfigError(where(e.source(), source) + ": service_accounts name accounts, not groups (\"" + sa + "\")");
      p.policy = get<std::string>(*t, "policy", "", source);
      p.credit_account = get<std::string>(*t, "credit_account", p.id, source);
      if (const toml::node* cl = t->get("credit_line")) {
        auto v = cl->value<double>();
        if (!v || *v < 0)
          throw ConfigError(where(cl->source(), source) + ": \"credit_line\" must be a number of credits, zero or more");
        exact_amount(*cl, 6, "\"credit_line\"", source);  // whole micro-credits only
        p.credit_line = *v;
      }
      for (const auto& other : c.projects)
        if (other.credit_account == p.credit_account && other.credit_line != p.credit_line)
          throw ConfigError(where(e.source(), source) + ": projects \"" + other.id + "\" and \"" + p.id +
                            "\" share credit account \"" + p.credit_account + "\" but give it different credit lines");
      c.projects.push_back(std::move(p));
    }
  }
  if (const toml::node* n = root.get("users")) {
    const toml::array* a = n->as_array();
    if (!a) throw ConfigError(where(n->source(), source) + ": users must be an array of tables ([[users]])");
    for (const auto& e : *a) {
      const toml::table* t = e.as_table();
      if (!t) throw ConfigError(where(e.source(), source) + ": each [[users]] entry must be a table");
      reject_unknown(*t, {"name", "groups", "default_project"}, "[[users]]", source);
      UserConfig u;
      u.name = get<std::string>(*t, "name", "", source);
      if (u.name.empty()) throw ConfigError(where(e.source(), source) + ": a user needs a \"name\"");
      u.groups = get_strings(*t, "groups", {}, source);
      u.default_project = get<std::string>(*t, "default_project", "", source);
      if (!u.default_project.empty() && !c.project(u.default_project))
        throw ConfigError(where(e.source(), source) + ": default_project \"" + u.default_project +
                          "\" is not a configured project");
      c.users.push_back(std::move(u));
    }
  }
  if (auto* s = section(root, "oidc", source)) c.oidc = parse_oidc(*s, source);
  if (const toml::node* n = root.get("sites")) {
    const toml::array* a = n->as_array();
    if (!a) throw ConfigError(where(n->source(), source) + ": sites must be an array of tables ([[sites]])");
    for (const auto& e : *a) {
      const toml::table* t = e.as_table();
      if (!t) throw ConfigError(where(e.source(), source) + ": each [[sites]] entry must be a table");
      SiteConfig site = parse_site(*t, e, source);
      if (c.site(site.id)) throw ConfigError(where(e.source(), source) + ": site \"" + site.id + "\" is defined twice");
      c.sites.push_back(std::move(site));
    }
  }
  if (auto* s = section(root, "data", source)) parse_data(*s, c, source);
  if (c.sites.empty()) {
    SiteConfig local;
    local.id = "local";
    c.sites.push_back(std::move(local));
  }
  auto resolve = [&](std::filesystem::path p) { return p.is_absolute() ? p : base_dir / p; };
  c.database = resolve(c.database);
  c.audit.signing_key = resolve(c.audit.signing_key);
  c.audit.checkpoint_file = resolve(c.audit.checkpoint_file);
  for (auto& p : c.projects)
    if (!p.policy.empty()) p.policy = resolve(p.policy);
  if (c.oidc && !c.oidc->jwks_file.empty()) c.oidc->jwks_file = resolve(c.oidc->jwks_file);
  for (auto& site : c.sites) {
    site.jobs_root = site.jobs_root.empty() ? base_dir / "jobs" : resolve(site.jobs_root);
    if (site.slurm && !site.slurm->rest_socket.empty()) site.slurm->rest_socket = resolve(site.slurm->rest_socket);
    if (site.slurm && !site.slurm->jwt_token_file.empty())
      site.slurm->jwt_token_file = resolve(site.slurm->jwt_token_file);
    if (site.slurm && !site.slurm->slurm_conf.empty()) site.slurm->slurm_conf = resolve(site.slurm->slurm_conf);
    if (site.ibm_runtime) site.ibm_runtime->api_key_file = resolve(site.ibm_runtime->api_key_file);
  }
  for (auto& b : c.inference.backends)
    if (!b.api_key_file.empty()) b.api_key_file = resolve(b.api_key_file);
  if (!c.http.tls_cert.empty()) {
    c.http.tls_cert = resolve(c.http.tls_cert).string();
    c.http.tls_key = resolve(c.http.tls_key).string();
  }
  return c;
}

Config load_config(const std::filesystem::path& file) {
  // A directory opens as an empty stream: the server ran on defaults, its database beside it.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec))
    throw ConfigError("config file " + file.string() + (std::filesystem::exists(file, ec) ? " is not a regular file" : " does not exist"));
  std::ifstream in(file);
  if (!in) throw ConfigError("cannot read config file " + file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw ConfigError("cannot read config file " + file.string());
  auto abs = std::filesystem::absolute(file);
  Config c = parse_config(ss.str(), abs.parent_path(), file.string());
  c.path = abs;
  return c;
}

}  // namespace scigate
