// What reaches the audit record of a call's arguments: never a secret, but everything else that
// helps an auditor, and proof (a hash) of what was too large to keep.
#include <catch2/catch.hpp>

#include "policies/canonical_json.hpp"
#include "policies/redact.hpp"
#include "server/common/crypto.hpp"

using namespace scigate;
using nlohmann::json;

namespace {
const json kNoSchema = json::object();
json redact(const json& args, const json& schema = kNoSchema, RedactOptions o = {}) {
  return redact_arguments(args, schema, o);
}
}  // namespace

TEST_CASE("redact: members the schema marks sensitive, at any depth") {
  json schema = json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string"},
      "login": {"type": "object", "properties": {
        "user": {"type": "string"},
        "pin": {"type": "string", "writeOnly": true}}},
      "hosts": {"type": "array", "items": {"type": "object", "properties": {
        "host": {"type": "string"},
        "otp": {"type": "string", "x-sensitive": true}}}},
      "env": {"type": "object", "additionalProperties": {"type": "string", "x-sensitive": true}},
      "pair": {"type": "array", "items": [{"type": "string"}, {"type": "string", "format": "password"}]},
      "choice": {"anyOf": [{"type": "string", "writeOnly": true}, {"type": "null"}]},
      "ref": {"$ref": "#/definitions/vault"},
      "merged": {"allOf": [{"properties": {"code": {"type": "string", "writeOnly": true}}}]}
    },
    "definitions": {"vault": {"type": "object", "properties": {"unlock": {"type": "string", "writeOnly": true}}}}
  })");
  json args = json::parse(R"({
    "name": "run-7",
    "login": {"user": "alice", "pin": "1234"},
    "hosts": [{"host": "node1", "otp": "998877"}, {"host": "node2", "otp": "112233"}],
    "env": {"A": "one", "B": "two"},
    "pair": ["visible", "hidden"],
    "choice": "very private",
    "ref": {"unlock": "open sesame", "label": "kept"},
    "merged": {"code": "4242", "other": "kept"}
  })");
  json out = redact(args, schema);
  CHECK(out["name"] == "run-7");
  CHECK(out["login"]["user"] == "alice");
  CHECK(out["login"]["pin"] == "[redacted]");
  CHECK(out["hosts"][0]["host"] == "node1");
  CHECK(out["hosts"][0]["otp"] == "[redacted]");
  CHECK(out["hosts"][1]["otp"] == "[redacted]");
  CHECK(out["env"]["A"] == "[redacted]");
  CHECK(out["env"]["B"] == "[redacted]");
  CHECK(out["pair"][0] == "visible");
  CHECK(out["pair"][1] == "[redacted]");
  CHECK(out["choice"] == "[redacted]");
  CHECK(out["ref"]["unlock"] == "[redacted]");
  CHECK(out["ref"]["label"] == "kept");
  CHECK(out["merged"]["code"] == "[redacted]");
  CHECK(out["merged"]["other"] == "kept");
  // A whole sensitive object goes, not only its strings.
  json whole = json::parse(R"({"properties": {"creds": {"type": "object", "writeOnly": true}}})");
  CHECK(redact(json::parse(R"({"creds": {"a": 1, "b": [2]}})"), whole)["creds"] == "[redacted]");
  // A $ref loop does not hang.
  json loop = json::parse(R"({"$ref": "#/definitions/a", "definitions": {"a": {"$ref": "#/definitions/a"}}})");
  CHECK(redact(json::parse(R"({"x": "y"})"), loop)["x"] == "y");
}

TEST_CASE("redact: members whose name says secret, whatever the schema") {
  json out = redact(json::parse(R"({
    "password": "hunter2", "DB-Password": "pw", "client_secret": 12345, "api_key": "abc",
    "nested": {"github_token": "x", "Authorization": "Basic dXNlcjpwYXNz", "private_key": {"pem": "..."}},
    "max_tokens": 100, "token_count": 7, "secret_santa": "bob", "keyword": "catalyst", "use_password": false
  })"));
  CHECK(out["password"] == "[redacted]");
  CHECK(out["DB-Password"] == "[redacted]");
  CHECK(out["client_secret"] == "[redacted]");
  CHECK(out["api_key"] == "[redacted]");
  CHECK(out["nested"]["github_token"] == "[redacted]");
  CHECK(out["nested"]["Authorization"] == "[redacted]");
  CHECK(out["nested"]["private_key"] == "[redacted]");
  CHECK(out["max_tokens"] == 100);
  CHECK(out["token_count"] == 7);
  CHECK(out["secret_santa"] == "bob");
  CHECK(out["keyword"] == "catalyst");
  CHECK(out["use_password"] == false);  // a flag, not a secret
}

TEST_CASE("redact: credential-looking strings, wherever they are") {
  const std::string jwt =
      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0."
      "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMDEyMzQ1Njc4OQ";
  const char* secrets[] = {
      "sgk_0123456789ab_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5",
      "Bearer abcdefghijklmnopqrstuvwxyz012345",
      "authorization: bearer abcdefghijklmnop0123",
      "curl -H 'Authorization: Token 9f8e7d6c5b4a39281706' https://api.example.org",
      "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
      "-----BEGIN RSA PRIVATE KEY-----",
      "ghp_0123456789abcdefghijABCDEFGHIJ012345",
      "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
      "glpat-AbCdEfGhIjKlMnOpQrSt",
      "AKIAIOSFODNN7EXAMPLE",
      "export AWS_ACCESS_KEY_ID=ASIAY34FZKBOKMUTVV7A",
      "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv",
      "sk_live_51HabcDEFghiJKLmno123456",
      "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh",
      "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
      "AIzaSyA-1234567890abcdefghijklmnopqrstu",
      "npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
      "https://alice:s3cr3t@data.example.org/run/7",
      "postgres://svc:correct-horse@db:5432/jobs",
      "https://bucket.s3.amazonaws.com/f.h5?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0123456789abcdef0123",
      "https://files.example.org/get?file=a.nc&access_token=AbC123dEf456",
      "https://x.blob.core.windows.net/c/f?sv=2021-08-06&sig=AbCdEfGh0123456789%2Fxyz",
      "host=db user=jobs password=hunter22 dbname=runs",
      "--password=hunter22",
      // Names and schemes in any case.
      "HOST=db USER=jobs PASSWORD=hunter22",
      "BEARER ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
      "X-API-KEY: 0123456789abcdef",
      "https://files.example.org/get?Access_Token=AbC123dEf456",
  };
  for (const char* s : secrets) {
    INFO(s);
    CHECK(looks_like_secret(s));
  }
  CHECK(looks_like_secret(jwt));
  CHECK(looks_like_secret("token: " + jwt));
  json out = redact(json{{"cmd", std::string("deploy --with ") + secrets[0]}, {"list", {"ok", jwt}}});
  CHECK(out["cmd"] == "[redacted]");
  CHECK(out["list"][0] == "ok");
  CHECK(out["list"][1] == "[redacted]");
}

TEST_CASE("redact: a credential is found anywhere in a long text, at the shortest length each form needs") {
  // looks_like_secret reads a value once for the shape a secret needs (a 16-character token run,
  // '=', ':') before searching for each form: a secret at the end of a long prompt, and one just
  // long enough, must still be found.
  std::string prose;
  while (prose.size() < 20000) prose += "The sample was annealed at 450 degrees for two hours, then cooled slowly. ";
  const char* shortest[] = {
      "Bearer abcdefghijklmnop",                   // 16 characters after the scheme
      "AKIAIOSFODNN7EXAMPLE",                      // the prefix and 16
      "password=abcd",                             // a 4-character value
      "X-Api-Key: 12345678",                       // an 8-character header value
      "https://u:p@h",                             // a password in a URL
      "-----BEGIN EC PRIVATE KEY-----",
  };
  for (const char* s : shortest) {
    INFO(s);
    CHECK(looks_like_secret(s));
    CHECK(looks_like_secret(prose + s));
    CHECK(looks_like_secret(s + (" " + prose)));
  }
  // One character short of each: kept, alone and inside the prose.
  const char* almost[] = {"Bearer abcdefghijklmno", "AKIAIOSFODNN7EXAMPL", "password=abc", "X-Api-Key: 1234567",
                          "https://u:@h"};
  for (const char* s : almost) {
    INFO(s);
    CHECK_FALSE(looks_like_secret(s));
    CHECK_FALSE(looks_like_secret(prose + s));
  }
  CHECK_FALSE(looks_like_secret(prose));
}

TEST_CASE("redact: ordinary values that look a little like secrets are kept") {
  const std::string sha256 = crypto::sha256_hex("some data");
  const char* plain[] = {
      "/home/alice/.ssh/known_hosts",
      "/scratch/sk-project-alpha-beta-gamma-2024/input.dat",
      "/data/hf_cache/models/llama-3-8b/weights.safetensors",
      "/proj/chem-042/runs/task-1234567890123456789012/out.log",
      "disk_usage_report_for_project_chem_2024_q3.csv",
      "550e8400-e29b-41d4-a716-446655440000",
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      "da39a3ee5e6b4b0d3255bfef95601890afd80709",
      "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      "https://data.example.org/run/7?format=hdf5&page=2",
      "https://user@example.org/repo.git",
      "The bearer of this note is welcome.",
      "AKIA is a prefix AWS uses",
      "xoxoxoxoxoxoxoxoxoxoxoxoxoxo",
      "monkey=banana&donkey=carrot",
      "eyJhbGciOiJIUzI1NiJ9 is base64 of a JSON header, without a payload or signature",
      "OPENQASM 2.0; include \"qelib1.inc\"; qreg q[2]; h q[0]; cx q[0],q[1];",
      "#SBATCH --partition=gpu --time=04:00:00",
  };
  for (const char* s : plain) {
    INFO(s);
    CHECK_FALSE(looks_like_secret(s));
  }
  CHECK_FALSE(looks_like_secret(sha256));
  json args = {{"checksum", sha256}, {"path", plain[0]}, {"id", plain[5]}, {"n", 3}, {"f", 2.5}, {"ok", true},
               {"none", nullptr}};
  CHECK(redact(args) == args);
}

TEST_CASE("redact: large strings become their hash, oversize arguments are cut down to the cap") {
  RedactOptions o;
  o.max_string_bytes = 100;
  o.max_total_bytes = 400;
  std::string script(150, 'x');
  json out = redact(json{{"script", script}, {"partition", "gpu"}}, kNoSchema, o);
  CHECK(out["partition"] == "gpu");
  CHECK(out["script"] == "[sha256:" + crypto::sha256_hex(script) + ", 150 bytes]");

  // Many small values: the largest members are hashed first, the small ones stay readable.
  json big = {{"partition", "gpu"}, {"walltime", "01:00:00"}};
  json samples = json::array();
  for (int i = 0; i < 200; ++i) samples.push_back(i);
  big["samples"] = samples;
  json cut = redact(big, kNoSchema, o);
  CHECK(cut["partition"] == "gpu");
  CHECK(cut["walltime"] == "01:00:00");
  CHECK(cut["samples"] == "[sha256:" + crypto::sha256_hex(canonical::dump(samples)) + ", " +
                              std::to_string(canonical::dump(samples).size()) + " bytes]");
  CHECK(canonical::dump(cut).size() <= o.max_total_bytes);

  // Too many members to fit even hashed: the whole (redacted) object is replaced by its hash.
  json wide = json::object();
  for (int i = 0; i < 60; ++i) wide["k" + std::to_string(i)] = "value " + std::to_string(i);
  wide["password"] = "hunter2";
  json h = redact(wide, kNoSchema, o);
  REQUIRE(h.is_string());
  json redacted_wide = wide;
  redacted_wide["password"] = "[redacted]";
  std::string text = canonical::dump(redacted_wide);
  CHECK(h == "[sha256:" + crypto::sha256_hex(text) + ", " + std::to_string(text.size()) + " bytes]");

  // A secret inside a large string is redacted, not hashed.
  CHECK(redact(json{{"s", std::string(200, 'y') + " Bearer abcdefghijklmnopqrstuvwxyz"}}, kNoSchema, o)["s"] ==
        "[redacted]");
}
