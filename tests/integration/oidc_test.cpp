// OIDC bearer JWTs against the real server: the RFC 9728 metadata document, the 401/403
// challenges MCP clients follow, tokens that reach tools/call, refusals that are audited, and a
// JWKS served by a real HTTP server (python3 -m http.server) that is re-fetched on key rotation.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <random>
#include <thread>

#include "server_process.hpp"
#include "support/jwt_signer.hpp"

using namespace scigate::itest;
using http::verb;
using scigate::test::TestKey;

namespace {

const std::string kIss = "https://idp.test/realms/science";

const TestKey& rsa_key() {
  static TestKey k = TestKey::rsa("it-rsa");
  return k;
}
const TestKey& ec_key() {
  static TestKey k = TestKey::ec("it-ec");
  return k;
}

void write_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p.string() + ".tmp") << text;
  std::filesystem::rename(p.string() + ".tmp", p);  // readers never see half a file
}

// The server reads jwks.json from its directory; the audience is left to its default, the
// resource, which is the URL the server listens on.
struct OidcServer {
  explicit OidcServer(const std::string& extra = "") : s("", false) {
    write_file(s.dir() / "jwks.json", scigate::test::jwks_of({rsa_key().jwk(), ec_key().jwk()}).dump());
    s.merge_config("[server]\nlog_level = \"warn\"\n[oidc]\nissuer = \"" + kIss +
                   "\"\njwks_file = \"jwks.json\"\nrequired_scopes = [\"mcp:tools\"]\n" + extra);
    s.start();
  }
  std::string resource() const { return "http://127.0.0.1:" + std::to_string(s.port()) + "/mcp"; }
  std::string metadata_url() const {
    return "http://127.0.0.1:" + std::to_string(s.port()) + "/.well-known/oauth-protected-resource/mcp";
  }
  json claims(const std::string& user, const std::string& scope = "openid mcp:tools") const {
    json c = scigate::test::claims(kIss, resource(), "sub-" + user);
    c["preferred_username"] = user;
    c["scope"] = scope;
    c["groups"] = json::array({"lab"});
    return c;
  }
  ServerProcess s;
};

Reply call_whoami(uint16_t port, const std::string& token) {
  Client c(port);
  auto req = modern_request(1, "tools/call", {{"name", "whoami"}});
  return c.request(verb::post, "/mcp", modern_headers(token, "tools/call", "whoami"), req.dump());
}

// python3 -m http.server on `dir`, port 0; its request log goes to `log`.
struct StaticHttpServer {
  StaticHttpServer(const std::filesystem::path& dir, const std::filesystem::path& log) {
    int out[2];
    REQUIRE(pipe(out) == 0);
    pid = fork();
    if (pid == 0) {
      dup2(out[1], 1);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 2);
      close(out[0]);
      execlp("python3", "python3", "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir.c_str(), "0",
             nullptr);
      _exit(127);
    }
    close(out[1]);
    // "Serving HTTP on 127.0.0.1 port 43017 (http://127.0.0.1:43017/) ..."
    std::string line;
    char ch;
    while (read(out[0], &ch, 1) == 1 && ch != '\n') line.push_back(ch);
    close(out[0]);
    auto p = line.find(" port ");
    REQUIRE(p != std::string::npos);
    port = static_cast<uint16_t>(std::stoi(line.substr(p + 6)));
  }
  ~StaticHttpServer() {
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
  }
  pid_t pid = -1;
  uint16_t port = 0;
};

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("oidc: protected resource metadata and the 401 challenge that points to it") {
  OidcServer o;
  Client c(o.s.port());
  for (std::string path : {"/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"}) {
    INFO(path);
    auto r = c.request(verb::get, path, {});
    CHECK(r.status == 200);
    CHECK(r.header("content-type") == "application/json");
    auto j = r.json_body();
    CHECK(j["resource"] == o.resource());
    CHECK(j["authorization_servers"] == json::array({kIss}));
    CHECK(j["scopes_supported"] == json::array({"mcp:tools"}));
    CHECK(j["bearer_methods_supported"] == json::array({"header"}));
    CHECK(j["resource_name"] == "scigate");
  }
  CHECK(c.request(verb::post, "/.well-known/oauth-protected-resource", {}).status == 405);
  CHECK(c.request(verb::get, "/.well-known/oauth-protected-resource/elsewhere", {}).status == 404);

  auto h = modern_headers("", "tools/list");
  h.erase("Authorization");
  auto r = c.request(verb::post, "/mcp", h, modern_request(1, "tools/list").dump());
  CHECK(r.status == 401);
  std::string challenge = r.header("www-authenticate");
  CHECK(challenge.rfind("Bearer ", 0) == 0);
  CHECK(challenge.find("resource_metadata=\"" + o.metadata_url() + "\"") != std::string::npos);
  CHECK(challenge.find("scope=\"mcp:tools\"") != std::string::npos);
  CHECK(challenge.find("error=") == std::string::npos);  // no token, no error code (RFC 6750 3.1)
  CHECK(r.json_body()["error"]["message"].get<std::string>().find("Authorization: Bearer") != std::string::npos);
  // The URL in the challenge is one this server answers.
  auto path = o.metadata_url().substr(o.metadata_url().find("/.well-known"));
  CHECK(c.request(verb::get, path, {}).json_body()["resource"] == o.resource());
}

TEST_CASE("oidc: a valid JWT reaches tools/call as its principal, API keys still work") {
  OidcServer o;
  auto r = call_whoami(o.s.port(), rsa_key().sign(o.claims("demo")));
  REQUIRE(r.status == 200);
  auto who = r.json_body()["result"]["structuredContent"];
  CHECK(who["principal"] == "demo");
  CHECK(who["auth_method"] == "jwt");
  CHECK(who["subject"] == "sub-demo");
  CHECK(who["projects"] == json::array({"demo"}));
  CHECK(who["groups"] == json::array({"lab"}));
  CHECK(who["scopes"] == json::array({"openid", "mcp:tools"}));

  // ES256, and a tool that needs a project.
  Client c(o.s.port());
  auto req = modern_request(2, "tools/call", {{"name", "echo"}, {"arguments", {{"text", "signed"}}}});
  auto echo =
      c.request(verb::post, "/mcp", modern_headers(ec_key().sign(o.claims("demo")), "tools/call", "echo"), req.dump());
  REQUIRE(echo.status == 200);
  CHECK(echo.json_body()["result"]["structuredContent"]["text"] == "signed");

  // A user the IdP knows but no project lists: authenticated, in no project.
  auto stranger = call_whoami(o.s.port(), rsa_key().sign(o.claims("stranger")));
  REQUIRE(stranger.status == 200);
  CHECK(stranger.json_body()["result"]["structuredContent"]["projects"] == json::array());

  auto by_key = call_whoami(o.s.port(), o.s.user_key());
  REQUIRE(by_key.status == 200);
  CHECK(by_key.json_body()["result"]["structuredContent"]["auth_method"] == "api_key");
}

TEST_CASE("oidc: expired, forged and unsigned tokens get 401 invalid_token and are audited") {
  OidcServer o;
  auto expired_claims = o.claims("demo");
  expired_claims["exp"] = scigate::test::now_s() - 3600;
  std::string expired = rsa_key().sign(expired_claims);
  TestKey impostor = TestKey::rsa("it-rsa");  // same kid, another key
  std::string forged = impostor.sign(o.claims("demo"));
  auto wrong_aud_claims = o.claims("demo");
  wrong_aud_claims["aud"] = "https://some-other-server.example/mcp";
  std::string wrong_aud = ec_key().sign(wrong_aud_claims);
  std::string unsigned_token = scigate::test::unsigned_token(o.claims("demo"));

  struct Case {
    std::string token, description, reason;
  };
  std::vector<Case> cases = {
      {expired, "the token has expired", "jwt expired: "},
      {forged, "the token's signature is not valid", "jwt bad_signature: "},
      {wrong_aud, "the token is not meant for this resource (audience)", "jwt wrong_audience: "},
      {unsigned_token, "unsigned tokens (alg none) are not accepted", "jwt alg_none: "},
  };
  for (const auto& k : cases) {
    INFO(k.reason);
    auto r = call_whoami(o.s.port(), k.token);
    CHECK(r.status == 401);
    std::string challenge = r.header("www-authenticate");
    CHECK(challenge.find("error=\"invalid_token\"") != std::string::npos);
    CHECK(challenge.find("error_description=\"" + k.description + "\"") != std::string::npos);
    CHECK(challenge.find("resource_metadata=\"" + o.metadata_url() + "\"") != std::string::npos);
    CHECK(r.body.find(k.token.substr(0, 20)) == std::string::npos);
    CHECK(o.s.wait_for_log(k.reason));
  }
  std::string log = o.s.log();
  CHECK(count(log, R"("outcome":"unauthenticated")") >= cases.size());
  // Never the token: not its signature, not its payload.
  for (const auto& k : cases) {
    auto d1 = k.token.find('.'), d2 = k.token.rfind('.');
    CHECK(log.find(k.token.substr(d1 + 1, d2 - d1 - 1)) == std::string::npos);
    if (d2 + 1 < k.token.size()) CHECK(log.find(k.token.substr(d2 + 1)) == std::string::npos);
  }
}

TEST_CASE("oidc: a valid token without the required scope gets 403 insufficient_scope") {
  OidcServer o;
  auto r = call_whoami(o.s.port(), rsa_key().sign(o.claims("demo", "openid profile")));
  CHECK(r.status == 403);
  std::string challenge = r.header("www-authenticate");
  CHECK(challenge.rfind(
            "Bearer error=\"insufficient_scope\", scope=\"mcp:tools\", resource_metadata=\"" + o.metadata_url() + "\"",
            0) == 0);
  CHECK(r.json_body()["error"]["message"].get<std::string>().find("mcp:tools") != std::string::npos);
  CHECK(o.s.wait_for_log("jwt insufficient_scope: missing mcp:tools"));
  // One audit record: a 403 is a denial, the code says which kind.
  CHECK(o.s.wait_for_log(R"("error_code":"forbidden","event":"audit")"));
  CHECK(o.s.log().find(R"("outcome":"denied")") != std::string::npos);
  CHECK(o.s.log().find(R"("principal":"demo")") != std::string::npos);
}

TEST_CASE("oidc: without [oidc] there is no metadata and no resource_metadata in challenges") {
  ServerProcess s;
  Client c(s.port());
  CHECK(c.request(verb::get, "/.well-known/oauth-protected-resource", {}).status == 404);
  auto r = call_whoami(s.port(), rsa_key().sign(scigate::test::claims(kIss, "x", "demo")));
  CHECK(r.status == 401);
  CHECK(r.header("www-authenticate").find("resource_metadata") == std::string::npos);
}

TEST_CASE("oidc: a JWKS from a real HTTP server, re-fetched when a token names a new key") {
  auto web_root = std::filesystem::temp_directory_path() / ("scigate-jwks-" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(web_root);
  write_file(web_root / "jwks.json", scigate::test::jwks_of({rsa_key().jwk()}).dump());
  StaticHttpServer idp(web_root, web_root.string() + ".log");
  std::string url = "http://127.0.0.1:" + std::to_string(idp.port) + "/jwks.json";
  {
    ServerProcess s("", false);
    s.merge_config("[oidc]\nissuer = \"" + kIss + "\"\njwks_url = \"" + url +
                   "\"\naudience = \"scigate-it\"\njwks_refresh_min_interval_s = 0\n");
    s.start();
    auto claims = scigate::test::claims(kIss, "scigate-it", "sub-demo");
    claims["preferred_username"] = "demo";
    auto first = call_whoami(s.port(), rsa_key().sign(claims));
    REQUIRE(first.status == 200);
    CHECK(first.json_body()["result"]["structuredContent"]["auth_method"] == "jwt");

    // Rotation: the IdP publishes the EC key; the first token signed with it triggers a fetch
    // and is accepted in the same request.
    write_file(web_root / "jwks.json", scigate::test::jwks_of({ec_key().jwk()}).dump());
    auto rotated = call_whoami(s.port(), ec_key().sign(claims));
    CHECK(rotated.status == 200);
    std::ifstream in(web_root.string() + ".log");
    std::string requests((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(count(requests, "GET /jwks.json") == 2);
    // The old key is gone with the new document.
    CHECK(call_whoami(s.port(), rsa_key().sign(claims)).status == 401);
  }
  std::error_code ec;
  std::filesystem::remove_all(web_root, ec);
  std::filesystem::remove(web_root.string() + ".log", ec);
}

TEST_CASE("oidc: an unreachable jwks_url does not stop the server, JWTs are refused, API keys work") {
  // A port that was free a moment ago: connection refused.
  uint16_t dead_port;
  {
    asio::io_context io;
    tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    dead_port = a.local_endpoint().port();
  }
  ServerProcess s("", false);
  s.merge_config("[oidc]\nissuer = \"" + kIss + "\"\njwks_url = \"http://127.0.0.1:" + std::to_string(dead_port) +
                 "/jwks.json\"\naudience = \"scigate-it\"\n");
  s.start();
  CHECK(s.wait_for_log("jwks_unavailable"));
  CHECK(call_whoami(s.port(), s.user_key()).status == 200);
  auto r = call_whoami(s.port(), rsa_key().sign(scigate::test::claims(kIss, "scigate-it", "demo")));
  CHECK(r.status == 401);
  CHECK(s.wait_for_log("no JWKS keys loaded"));
}

TEST_CASE("oidc: stdio accepts a JWT in SCIGATE_API_KEY") {
  ServerProcess s("", false);
  write_file(s.dir() / "jwks.json", scigate::test::jwks_of({ec_key().jwk()}).dump());
  s.merge_config("[oidc]\nissuer = \"" + kIss + "\"\njwks_file = \"jwks.json\"\naudience = \"scigate-it\"\n");
  auto claims = scigate::test::claims(kIss, "scigate-it", "sub-lab");
  claims["preferred_username"] = "lab-controller";
  std::string input = modern_request(1, "tools/call", {{"name", "whoami"}}).dump() + "\n";
  setenv("SCIGATE_API_KEY", ec_key().sign(claims).c_str(), 1);
  std::string out;
  CHECK(run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, input) == 0);
  auto j = json::parse(out.substr(0, out.find('\n')), nullptr, false);
  CHECK(j["result"]["structuredContent"]["principal"] == "lab-controller");
  CHECK(j["result"]["structuredContent"]["auth_method"] == "jwt");
  claims["aud"] = "elsewhere";
  setenv("SCIGATE_API_KEY", ec_key().sign(claims).c_str(), 1);
  CHECK(run_command({binary(), "serve", "--config", s.config_path(), "--stdio"}, &out, input) == 2);
  unsetenv("SCIGATE_API_KEY");
}
