#include <catch2/catch.hpp>

#include "server/config/config.hpp"

using namespace scigate;

TEST_CASE("config [inference]: backends, defaults, paths and strict keys") {
  Config d = parse_config("", "/etc/scigate", "test.toml");
  CHECK(d.inference.backends.empty());
  CHECK(d.inference.default_max_tokens == 1024);

  Config c = parse_config(R"([inference]
retries = 3
breaker_failures = 2
breaker_cooldown_ms = 500
default_max_tokens = 256
[[inference.backends]]
id = "gpu01"
url = "http://10.0.0.5:8000/v1/"
api_key_file = "secrets/vllm.key"
models = ["llama-3.1-8b-instruct"]
gpu_type = "a100"
max_concurrency = 8
first_token_timeout_ms = 1500
[[inference.backends]]
id = "cpu-llama"
url = "https://llama.example.org"
flavor = "llamacpp"
api_key_env = "LLAMA_KEY"
)",
                          "/etc/scigate", "test.toml");
  REQUIRE(c.inference.backends.size() == 2);
  const auto& a = c.inference.backends[0];
  CHECK(a.url == "http://10.0.0.5:8000");  // /v1 and the slash are the client's business
  CHECK(a.api_key_file == std::filesystem::path("/etc/scigate/secrets/vllm.key"));
  CHECK(a.flavor == "vllm");
  CHECK(a.models == std::vector<std::string>{"llama-3.1-8b-instruct"});
  CHECK(a.max_concurrency == 8);
  CHECK(a.first_token_timeout == std::chrono::milliseconds(1500));
  CHECK(c.inference.backends[1].flavor == "llamacpp");
  CHECK(c.inference.backends[1].api_key_env == "LLAMA_KEY");
  CHECK(c.inference.retries == 3);
  CHECK(c.inference.breaker_cooldown == std::chrono::milliseconds(500));
  CHECK(c.inference.default_max_tokens == 256);

  auto refused = [](const std::string& text, const std::string& expect) {
    try {
      parse_config(text, "/x", "inf.toml");
      FAIL("expected ConfigError for " << text);
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Catch::Contains(expect));
    }
  };
  refused("[[inference.backends]]\nid = \"a\"\nurl = \"ftp://x\"\n", "needs a url starting http");
  refused("[[inference.backends]]\nid = \"a\"\nurl = \"http://x\"\nflavor = \"tgi\"\n", "flavor must be");
  refused("[[inference.backends]]\nid = \"a\"\nurl = \"http://x\"\napi_key = \"sk-1\"\n", "unknown key \"api_key\"");
  refused("[[inference.backends]]\nid = \"a\"\nurl = \"http://x\"\napi_key_file = \"k\"\napi_key_env = \"K\"\n", "not both");
  refused("[[inference.backends]]\nid = \"a\"\nurl = \"http://x\"\n[[inference.backends]]\nid = \"a\"\nurl = \"http://y\"\n",
          "defined twice");
  refused("[[inference.backends]]\nid = \"a b\"\nurl = \"http://x\"\n", "needs an \"id\"");
  refused("[inference]\nfirst_token_timeout_ms = 5\n", "unknown key");
  refused("[[inference.backends]]\nid = \"a\"\nurl = \"http://x\"\nmax_concurrency = 0\n", "max_concurrency must be >= 1");
}
