// OIDC bearer JWTs: verification against a JWKS, the refusals that matter (alg none, HS256
// confusion, alg/key mismatch, tampering, time claims, issuer, audience), JWKS refresh and its
// rate limit, and the mapping of claims to a Principal. Keys are generated here and tokens signed
// by tests/support/jwt_signer (the test plays the identity provider).
#include "server/auth/jwt.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "server/auth/authenticator.hpp"
#include "server/auth/claims.hpp"
#include "server/auth/jwks.hpp"
#include "server/common/crypto.hpp"
#include "support/jwt_signer.hpp"
#include "tests/support/files.hpp"

using namespace scigate;
using namespace scigate::auth;
using nlohmann::json;
using scigate::test::TestKey;

namespace {

const std::string kIss = "https://idp.example.org/realms/science";
const std::string kAud = "https://gw.example.org/mcp";

const TestKey& rsa_key() {
  static TestKey k = TestKey::rsa("rsa-1");
  return k;
}
const TestKey& ec_key() {
  static TestKey k = TestKey::ec("ec-1");
  return k;
}

KeySet both_keys() { return parse_jwks(test::jwks_of({rsa_key().jwk(), ec_key().jwk()}).dump()); }

JwtExpectations expectations() {
  JwtExpectations e;
  e.issuer = kIss;
  e.audiences = {kAud};
  e.clock_skew = std::chrono::seconds(60);
  return e;
}

JwtResult verify(const std::string& token, const KeySet& keys = both_keys()) {
  return verify_jwt(token, keys, expectations(), std::chrono::system_clock::now());
}

json good_claims() { return test::claims(kIss, kAud, "user-123"); }

// Replaces one segment of a compact token.
std::string with_segment(const std::string& token, int index, const std::string& value) {
  auto d1 = token.find('.'), d2 = token.find('.', d1 + 1);
  std::string parts[3] = {token.substr(0, d1), token.substr(d1 + 1, d2 - d1 - 1), token.substr(d2 + 1)};
  parts[index] = value;
  return parts[0] + "." + parts[1] + "." + parts[2];
}

ProjectConfig project(const std::string& id, std::vector<std::string> members) {
  ProjectConfig p;
  p.id = id;
  p.name = id;
  p.members = std::move(members);
  return p;
}

struct TempDir : scigate::test::TempDir {
  TempDir() : scigate::test::TempDir("jwt") {}
  void write(const std::string& name, const std::string& text) const { std::ofstream(path / name) << text; }
};

// A key store, an [oidc] config over a JWKS file and an authenticator with a clock the test
// moves by hand.
struct Fixture {
  explicit Fixture(std::chrono::seconds min_interval = std::chrono::seconds(30), std::vector<std::string> scopes = {}) {
    dir.write("jwks.json", test::jwks_of({rsa_key().jwk()}).dump());
    OidcConfig o;
    o.issuer = kIss;
    o.audience = {kAud};
    o.jwks_file = dir.path / "jwks.json";
    o.jwks_refresh_min_interval = min_interval;
    o.required_scopes = std::move(scopes);
    o.resource = kAud;
    o.authorization_servers = {kIss};
    config.oidc = o;
    config.projects.push_back(project("chem", {"alice"}));
    db = std::make_unique<state::Database>(dir.path / "db.sqlite");
    db->migrate(state::schema_migrations());
    keys = std::make_unique<ApiKeyStore>(*db, config, std::chrono::milliseconds(0));
    authn = std::make_unique<Authenticator>(config, *keys, [this] { return now; });
  }
  TempDir dir;
  Config config;
  std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now();
  std::unique_ptr<state::Database> db;
  std::unique_ptr<ApiKeyStore> keys;
  std::unique_ptr<Authenticator> authn;
};

}  // namespace

TEST_CASE("jwt: strict base64url") {
  CHECK(crypto::base64url_decode("QQ") == std::optional<std::string>("A"));
  CHECK(crypto::base64url_decode("_-8") == std::optional<std::string>("\xff\xef"));
  CHECK_FALSE(crypto::base64url_decode("QR"));    // non-zero unused bits: a second spelling of "A"
  CHECK_FALSE(crypto::base64url_decode("QQ=="));  // padding
  CHECK_FALSE(crypto::base64url_decode("Q"));     // impossible length
  CHECK_FALSE(crypto::base64url_decode("a+b/"));  // standard alphabet
  CHECK_FALSE(crypto::base64url_decode("ab cd"));
  CHECK(crypto::base64url_encode("\xff\xef") == "_-8");
}

TEST_CASE("jwt: valid RS256 and ES256 tokens are accepted") {
  auto rs = verify(rsa_key().sign(good_claims()));
  REQUIRE(rs.ok());
  CHECK(rs.claims["sub"] == "user-123");
  CHECK(rs.kid == "rsa-1");
  auto es = verify(ec_key().sign(good_claims()));
  REQUIRE(es.ok());
  CHECK(es.claims["sub"] == "user-123");
  CHECK(looks_like_jwt(rsa_key().sign(good_claims())));
}

TEST_CASE("jwt: exp, nbf and iat with clock skew") {
  auto c = good_claims();
  c["exp"] = test::now_s() - 120;
  auto r = verify(rsa_key().sign(c));
  CHECK(r.error == JwtError::kExpired);
  CHECK(r.detail.find("ago") != std::string::npos);

  c["exp"] = test::now_s() - 30;  // expired, but within the 60 s skew
  CHECK(verify(rsa_key().sign(c)).ok());

  c = good_claims();
  c.erase("exp");
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kBadClaim);
  c["exp"] = "tomorrow";
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kBadClaim);

  c = good_claims();
  c["nbf"] = test::now_s() + 300;
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kNotYetValid);
  c["nbf"] = test::now_s() + 30;
  CHECK(verify(rsa_key().sign(c)).ok());

  c = good_claims();
  c["iat"] = test::now_s() + 600;
  CHECK(verify(ec_key().sign(c)).error == JwtError::kIssuedInFuture);
  c["iat"] = "yesterday";
  CHECK(verify(ec_key().sign(c)).error == JwtError::kBadClaim);
}

TEST_CASE("jwt: issuer, audience and subject") {
  auto c = good_claims();
  c["iss"] = "https://evil.example.org";
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kWrongIssuer);
  c.erase("iss");
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kWrongIssuer);

  c = good_claims();
  c["aud"] = "https://other.example.org/mcp";
  auto wrong = verify(rsa_key().sign(c));
  CHECK(wrong.error == JwtError::kWrongAudience);
  CHECK(wrong.detail.find("other.example.org") != std::string::npos);
  c["aud"] = json::array({"account", kAud});
  CHECK(verify(rsa_key().sign(c)).ok());
  c["aud"] = json::array({"account", "broker"});
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kWrongAudience);
  c.erase("aud");
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kWrongAudience);

  c = good_claims();
  c["sub"] = "";
  CHECK(verify(rsa_key().sign(c)).error == JwtError::kBadClaim);
}

TEST_CASE("jwt: alg none, HS256 key confusion and alg/key mismatches are refused") {
  auto none = verify(test::unsigned_token(good_claims()));
  CHECK(none.error == JwtError::kAlgNone);
  CHECK(looks_like_jwt(test::unsigned_token(good_claims())));
  json h = json::object();
  h["alg"] = "nOnE";
  h["kid"] = "rsa-1";
  CHECK(verify(with_segment(rsa_key().sign(h, good_claims()), 2, "")).error == JwtError::kAlgNone);

  // The classic: HS256 "verified" with the RSA public key as the HMAC secret.
  json hs = json::object();
  hs["alg"] = "HS256";
  hs["kid"] = "rsa-1";
  auto confused = verify(test::sign_hs256(hs, good_claims(), rsa_key().public_pem()));
  CHECK(confused.error == JwtError::kAlgNotAccepted);
  hs["alg"] = "PS256";
  CHECK(verify(test::sign_hs256(hs, good_claims(), "x")).error == JwtError::kAlgNotAccepted);

  // ES256 claimed for the RSA key's kid, even with a valid EC signature.
  json es = json::object();
  es["alg"] = "ES256";
  es["kid"] = "rsa-1";
  auto mismatch = verify(ec_key().sign(es, good_claims()));
  CHECK(mismatch.error == JwtError::kAlgKeyMismatch);
  // And RS256 for the EC key's kid.
  json rs = json::object();
  rs["alg"] = "RS256";
  rs["kid"] = "ec-1";
  CHECK(verify(rsa_key().sign(rs, good_claims())).error == JwtError::kAlgKeyMismatch);

  // A key whose own alg says otherwise is not used at all.
  auto keys = parse_jwks(test::jwks_of({rsa_key().jwk({{"alg", "RS512"}})}).dump());
  CHECK(keys.keys.empty());
  CHECK(verify(rsa_key().sign(good_claims()), keys).error == JwtError::kUnknownKid);

  json crit = json::object();
  crit["alg"] = "RS256";
  crit["kid"] = "rsa-1";
  crit["crit"] = json::array({"exp"});
  CHECK(verify(rsa_key().sign(crit, good_claims())).error == JwtError::kCritical);
}

TEST_CASE("jwt: tampering, truncation, garbage and size") {
  std::string token = rsa_key().sign(good_claims());
  auto c = good_claims();
  c["sub"] = "admin";
  std::string tampered = with_segment(token, 1, test::b64url(c.dump()));
  CHECK(verify(tampered).error == JwtError::kBadSignature);

  // Truncated signatures (re-encoded, so it is the bytes that are short, not the encoding).
  auto truncated = [](const std::string& t) {
    auto sig = *crypto::base64url_decode(t.substr(t.rfind('.') + 1));
    return with_segment(t, 2, test::b64url(sig.substr(0, sig.size() - 3)));
  };
  CHECK(verify(truncated(token)).error == JwtError::kBadSignature);
  std::string es_token = ec_key().sign(good_claims());
  CHECK(verify(truncated(es_token)).error == JwtError::kBadSignature);
  // Cut in the middle of a base64url quantum: an impossible length, or stray bits.
  CHECK(verify(token.substr(0, token.size() - 1)).error != JwtError::kNone);
  // A DER signature where JWS wants r||s.
  CHECK(verify(with_segment(es_token, 2, test::b64url(std::string(70, '\x30')))).error == JwtError::kBadSignature);

  CHECK(verify("not a token").error == JwtError::kMalformed);
  CHECK(verify("a.b").error == JwtError::kMalformed);
  CHECK(verify("a.b.c.d").error == JwtError::kMalformed);
  CHECK(verify("!!!.???.***").error == JwtError::kMalformed);
  CHECK(verify(with_segment(token, 0, test::b64url("[1,2]"))).error == JwtError::kMalformed);
  CHECK(verify(with_segment(token, 0, test::b64url(std::string(5000, '[')))).error == JwtError::kMalformed);
  CHECK(verify(with_segment(token, 0, token.substr(0, token.find('.')) + "=")).error == JwtError::kMalformed);
  CHECK_FALSE(looks_like_jwt("sgk_0123456789ab_secret"));
  CHECK_FALSE(looks_like_jwt("a.b.c.d"));
  CHECK_FALSE(looks_like_jwt(".b.c"));

  auto big = good_claims();
  big["pad"] = std::string(kMaxTokenBytes, 'x');
  auto r = verify(rsa_key().sign(big));
  CHECK(r.error == JwtError::kTooLarge);
}

TEST_CASE("jwt: JWKS parsing keeps only usable signature keys") {
  auto ec = ec_key().jwk();
  auto off_curve = ec;
  off_curve["kid"] = "bad-point";
  off_curve["y"] = ec["x"];  // (x, x) is not on P-256
  json doc = test::jwks_of({rsa_key().jwk(), ec, rsa_key().jwk({{"kid", "enc"}, {"use", "enc"}}),
                            rsa_key().jwk({{"kid", "ops"}, {"key_ops", json::array({"encrypt"})}}),
                            json{{"kty", "oct"}, {"kid", "hmac"}, {"k", "c2VjcmV0"}},
                            ec_key().jwk({{"kid", "p384"}, {"crv", "P-384"}}), off_curve,
                            TestKey::rsa("short", 1024).jwk(), rsa_key().jwk({{"kid", "no-alg"}, {"alg", nullptr}})});
  auto set = parse_jwks(doc.dump());
  std::vector<std::string> kids;
  for (const auto& k : set.keys) kids.push_back(k.kid);
  CHECK(kids == std::vector<std::string>{"rsa-1", "ec-1", "no-alg"});
  CHECK(set.skipped.size() == 6);
  CHECK_THROWS(parse_jwks("{\"nokeys\":[]}"));
  CHECK_THROWS(parse_jwks("not json"));
}

TEST_CASE("jwt: the JWKS cache refreshes at most once per interval") {
  int fetches = 0;
  std::string text = test::jwks_of({rsa_key().jwk()}).dump();
  auto now = std::chrono::steady_clock::now();
  JwksCache cache(
      [&] {
        ++fetches;
        return text;
      },
      std::chrono::seconds(30), std::chrono::seconds(600), [&] { return now; });
  CHECK(cache.keys()->keys.empty());
  CHECK(cache.refresh_possible());
  CHECK(cache.refresh() == JwksCache::Refresh::kRefreshed);
  CHECK(cache.keys()->keys.size() == 1);
  CHECK(cache.refresh() == JwksCache::Refresh::kRateLimited);
  CHECK_FALSE(cache.refresh_possible());
  now += std::chrono::seconds(29);
  CHECK(cache.refresh() == JwksCache::Refresh::kRateLimited);
  CHECK(fetches == 1);
  now += std::chrono::seconds(2);
  text = "garbage";
  CHECK(cache.refresh() == JwksCache::Refresh::kFailed);
  CHECK(cache.keys()->keys.size() == 1);  // a failed fetch keeps the keys it had
  CHECK_FALSE(cache.last_error().empty());
  CHECK(cache.generation() == 2);
  CHECK(cache.next_due() == now + std::chrono::seconds(30));
  now += std::chrono::seconds(30);
  text = test::jwks_of({rsa_key().jwk(), ec_key().jwk()}).dump();
  CHECK(cache.refresh() == JwksCache::Refresh::kRefreshed);
  CHECK(cache.keys()->keys.size() == 2);
  CHECK(cache.next_due() == now + std::chrono::seconds(600));
  CHECK(cache.refresh(true) == JwksCache::Refresh::kRefreshed);  // start-up ignores the limit
  CHECK(fetches == 4);

  bool called = false;
  cache.on_refresh_after(cache.generation() - 1, [&] { called = true; });  // already happened
  CHECK(called);
  called = false;
  auto id = cache.on_refresh_after(cache.generation(), [&] { called = true; });
  cache.forget(id);
  CHECK(cache.refresh(true) == JwksCache::Refresh::kRefreshed);
  CHECK_FALSE(called);
}

TEST_CASE("jwt: an unknown kid refreshes the JWKS file, within the rate limit") {
  Fixture f(std::chrono::seconds(60));
  auto first = f.authn->authenticate_token(rsa_key().sign(test::claims(kIss, kAud, "alice")));
  REQUIRE(first.ok());
  CHECK(first.principal->name == "alice");

  // The IdP rotates: the file now also holds the EC key. The first token with its kid is
  // accepted after a refresh, though the last fetch was moments ago... only if the interval
  // has passed. Here it has not: refused, and the file is not read again.
  f.dir.write("jwks.json", test::jwks_of({rsa_key().jwk(), ec_key().jwk()}).dump());
  std::string ec_token = ec_key().sign(test::claims(kIss, kAud, "alice"));
  auto limited = f.authn->authenticate_token(ec_token);
  CHECK(limited.status == AuthResult::Status::kUnauthenticated);
  CHECK(limited.reason.find("unknown_kid") != std::string::npos);
  CHECK(limited.reason.find("rate-limited") != std::string::npos);

  f.now += std::chrono::seconds(61);
  auto rotated = f.authn->authenticate_token(ec_token);
  REQUIRE(rotated.ok());
  CHECK(rotated.principal->auth_method == "jwt");

  // A flood of made-up kids right after costs no fetch at all.
  f.dir.write("jwks.json", "this would fail to parse");
  for (int i = 0; i < 20; ++i) {
    json h = json::object();
    h["alg"] = "RS256";
    h["kid"] = "random-" + std::to_string(i);
    auto r = f.authn->authenticate_token(rsa_key().sign(h, test::claims(kIss, kAud, "alice")));
    CHECK(r.reason.find("rate-limited") != std::string::npos);
  }
  CHECK(f.authn->authenticate_token(ec_token).ok());  // keys kept
}

TEST_CASE("jwt: HTTP path waits for the background refresh without blocking its thread") {
  Fixture f(std::chrono::seconds(0));
  REQUIRE(f.authn->start_background_refresh());
  f.dir.write("jwks.json", test::jwks_of({ec_key().jwk()}).dump());
  boost::asio::io_context io;
  auto strand = boost::asio::make_strand(io);
  std::optional<AuthResult> got;
  std::string header = "Bearer " + ec_key().sign(test::claims(kIss, kAud, "alice"));
  boost::asio::co_spawn(strand, f.authn->authenticate_async(header),
                        [&](std::exception_ptr, AuthResult r) { got = std::move(r); });
  auto start = std::chrono::steady_clock::now();
  io.run();
  REQUIRE(got);
  CHECK(got->ok());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  // The RSA key is gone from the new file.
  io.restart();
  got.reset();
  boost::asio::co_spawn(strand,
                        f.authn->authenticate_async("Bearer " + rsa_key().sign(test::claims(kIss, kAud, "alice"))),
                        [&](std::exception_ptr, AuthResult r) { got = std::move(r); });
  io.run();
  REQUIRE(got);
  CHECK(got->reason.find("unknown_kid") != std::string::npos);
  f.authn->stop_background_refresh();
}

TEST_CASE("jwt: claims map to a principal") {
  Config cfg;
  cfg.oidc = OidcConfig{};
  cfg.projects.push_back(project("chem", {"alice"}));
  cfg.projects.push_back(project("bio", {"f81d4fae"}));
  json c = test::claims(kIss, kAud, "f81d4fae");
  c["preferred_username"] = "alice";
  c["groups"] = json::array({"chemists", 7, "admins", "chemists"});
  c["scope"] = "openid  mcp:tools profile";
  auto p = principal_from_claims(c, cfg);
  CHECK(p.name == "alice");
  CHECK(p.subject == "f81d4fae");
  CHECK(p.kind == "user");
  CHECK(p.auth_method == "jwt");
  CHECK(p.groups == std::vector<std::string>{"chemists", "admins"});
  CHECK(p.scopes == std::vector<std::string>{"openid", "mcp:tools", "profile"});
  CHECK(p.projects == std::vector<std::string>{"chem"});

  // Membership through a group the token carries.
  ProjectConfig lab;
  lab.id = "lab";
  lab.managers = {"group:admins"};
  cfg.projects.push_back(lab);
  p = principal_from_claims(c, cfg);
  CHECK(p.projects == std::vector<std::string>{"chem", "lab"});
  CHECK(p.has_role("lab", "manager"));
  cfg.projects.pop_back();

  // No username claim: the name is sub (and so are the projects).
  c.erase("preferred_username");
  c.erase("scope");
  c["scp"] = json::array({"read", "write"});
  p = principal_from_claims(c, cfg);
  CHECK(p.name == "f81d4fae");
  CHECK(p.projects == std::vector<std::string>{"bio"});
  CHECK(p.scopes == std::vector<std::string>{"read", "write"});
  c["preferred_username"] = "";
  CHECK(principal_from_claims(c, cfg).name == "f81d4fae");
  c["scp"] = "a b";  // Entra ID sends scp as one string
  CHECK(principal_from_claims(c, cfg).scopes == std::vector<std::string>{"a", "b"});

  // Other claim names, a nested groups claim (Keycloak realm roles).
  cfg.oidc->username_claim = "email";
  cfg.oidc->groups_claim = "realm_access.roles";
  c["email"] = "alice@example.org";
  c["realm_access"] = json{{"roles", json::array({"physicist"})}};
  p = principal_from_claims(c, cfg);
  CHECK(p.name == "alice@example.org");
  CHECK(p.groups == std::vector<std::string>{"physicist"});
  cfg.oidc->groups_claim = "group";
  c["group"] = "solo";
  CHECK(principal_from_claims(c, cfg).groups == std::vector<std::string>{"solo"});
}

TEST_CASE("jwt: authenticator challenges, scopes and metadata") {
  Fixture f(std::chrono::seconds(30), {"mcp:tools", "hpc"});
  auto missing = f.authn->authenticate_header("");
  CHECK(missing.status == AuthResult::Status::kUnauthenticated);
  CHECK_FALSE(missing.token_sent);
  CHECK(missing.challenge ==
        "Bearer realm=\"scigate\", scope=\"mcp:tools hpc\", resource_metadata=\"https://gw.example.org/.well-known/"
        "oauth-protected-resource/mcp\"");
  CHECK(f.authn->authenticate_header("Basic dXNlcjpwYXNz").challenge.find("error=") == std::string::npos);

  auto c = test::claims(kIss, kAud, "alice");
  c["scope"] = "mcp:tools";
  auto lacking = f.authn->authenticate_header("Bearer " + rsa_key().sign(c));
  CHECK(lacking.status == AuthResult::Status::kInsufficientScope);
  REQUIRE(lacking.principal);
  CHECK(lacking.principal->name == "alice");
  CHECK(lacking.challenge.rfind("Bearer error=\"insufficient_scope\", scope=\"mcp:tools hpc\", resource_metadata=",
                                0) == 0);
  CHECK(lacking.message.find("hpc") != std::string::npos);

  c["scope"] = "hpc mcp:tools openid";
  CHECK(f.authn->authenticate_header("bearer  " + rsa_key().sign(c)).ok());

  c["exp"] = test::now_s() - 3600;
  std::string expired_token = rsa_key().sign(c);
  auto expired = f.authn->authenticate_header("Bearer " + expired_token);
  CHECK(expired.token_sent);
  CHECK(expired.challenge.find("error=\"invalid_token\", error_description=\"the token has expired\"") !=
        std::string::npos);
  CHECK(expired.reason.rfind("jwt expired: ", 0) == 0);
  for (const auto* s : {&expired.reason, &expired.message, &expired.challenge})
    CHECK(s->find(expired_token.substr(expired_token.rfind('.') + 1)) == std::string::npos);  // never echoed

  // API keys still go to the key store.
  auto key = f.keys->create("alice", "user", "");
  auto by_key = f.authn->authenticate_header("Bearer " + key.token);
  REQUIRE(by_key.ok());
  CHECK(by_key.principal->auth_method == "api_key");
  CHECK(f.authn->authenticate_header("Bearer sgk_000000000000_nope").challenge.find("invalid_token") !=
        std::string::npos);
  auto opaque = f.authn->authenticate_header("Bearer 8xLOxBtZp8");
  CHECK(opaque.status == AuthResult::Status::kUnauthenticated);
  CHECK(opaque.message.find("neither an API key nor a JWT") != std::string::npos);

  auto prm = f.authn->protected_resource_metadata();
  REQUIRE(prm);
  CHECK((*prm)["resource"] == kAud);
  CHECK((*prm)["authorization_servers"] == json::array({kIss}));
  CHECK((*prm)["scopes_supported"] == json::array({"mcp:tools", "hpc"}));
  CHECK((*prm)["bearer_methods_supported"] == json::array({"header"}));
  CHECK((*prm)["resource_name"] == "scigate");
  CHECK(f.authn->is_metadata_path("/.well-known/oauth-protected-resource"));
  CHECK(f.authn->is_metadata_path("/.well-known/oauth-protected-resource/mcp"));
  CHECK_FALSE(f.authn->is_metadata_path("/.well-known/oauth-protected-resource/other"));
}

TEST_CASE("jwt: without [oidc] a JWT is just an unknown key") {
  TempDir dir;
  Config cfg;
  state::Database db(dir.path / "db.sqlite");
  db.migrate(state::schema_migrations());
  ApiKeyStore keys(db, cfg);
  Authenticator a(cfg, keys);
  CHECK_FALSE(a.oidc_enabled());
  CHECK_FALSE(a.protected_resource_metadata());
  CHECK_FALSE(a.is_metadata_path("/.well-known/oauth-protected-resource"));
  auto r = a.authenticate_header("Bearer " + rsa_key().sign(good_claims()));
  CHECK(r.status == AuthResult::Status::kUnauthenticated);
  CHECK(r.reason.find("[oidc] is not configured") != std::string::npos);
  CHECK(r.challenge ==
        "Bearer realm=\"scigate\", error=\"invalid_token\", error_description=\"unknown, malformed or "
        "revoked API key\"");
  CHECK(a.challenge_for_missing_token() == "Bearer realm=\"scigate\"");
}

TEST_CASE("jwt: the metadata URL puts the well-known segment before the path") {
  CHECK(resource_metadata_url_for("https://gw.example.org/mcp") ==
        "https://gw.example.org/.well-known/oauth-protected-resource/mcp");
  CHECK(resource_metadata_url_for("https://gw.example.org") ==
        "https://gw.example.org/.well-known/oauth-protected-resource");
  CHECK(resource_metadata_url_for("https://gw.example.org/") ==
        "https://gw.example.org/.well-known/oauth-protected-resource");
  CHECK(resource_metadata_url_for("http://[::1]:8750/a/mcp") ==
        "http://[::1]:8750/.well-known/oauth-protected-resource/a/mcp");
}
