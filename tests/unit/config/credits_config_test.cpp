#include <catch2/catch.hpp>

#include "server/common/decimal.hpp"
#include "server/config/config.hpp"

using namespace scigate;

TEST_CASE("decimal: exact text to scaled integers and back") {
  CHECK(decimal::parse("12.5", 6) == 12'500'000);
  CHECK(decimal::parse("0.1", 6) == 100'000);
  CHECK(decimal::parse("-3", 6) == -3'000'000);
  CHECK(decimal::parse("0.000001", 6) == 1);
  CHECK(decimal::parse("2e-07", 12) == 200'000);
  CHECK(decimal::parse("1.5E3", 6) == 1'500'000'000);
  CHECK(decimal::parse("1_000", 0) == 1000);
  CHECK(decimal::parse("0.1000000", 6) == 100'000);  // trailing zeros beyond the scale are fine
  std::string why;
  CHECK_FALSE(decimal::parse("0.0000001", 6, &why));
  CHECK(why == "too many decimal places");
  CHECK_FALSE(decimal::parse("1e30", 6, &why));
  CHECK(why == "too large");
  CHECK_FALSE(decimal::parse("abc", 6));
  CHECK_FALSE(decimal::parse("", 6));
  CHECK_FALSE(decimal::parse("1.2.3", 6));
  CHECK_FALSE(decimal::parse("1e", 6));

  CHECK(decimal::format(12'500'000, 6) == "12.5");
  CHECK(decimal::format(3'200'000, 6) == "3.2");
  CHECK(decimal::format(1, 6) == "0.000001");
  CHECK(decimal::format(-1, 6) == "-0.000001");
  CHECK(decimal::format(0, 6) == "0");
  CHECK(decimal::format(1'000'000'000, 6) == "1000");
  CHECK(decimal::format(std::numeric_limits<int64_t>::min(), 6) == "-9223372036854.775808");
  CHECK(decimal::format(200'000, 12) == "0.0000002");

  // What a TOML float becomes: the decimal the person wrote, not 0.1000000000000000055...
  CHECK(decimal::shortest(0.1) == "0.1");
  CHECK(decimal::parse(decimal::shortest(0.1), 12) == 100'000'000'000);
  CHECK(decimal::parse(decimal::shortest(2e-7), 12) == 200'000);
}

TEST_CASE("config: [credits] with rates as numbers, strings and tables with units") {
  Config c = parse_config(R"(
[credits]
hold_timeout_s = 120
sweep_interval_s = 5
idempotency_ttl_s = 3600
[credits.rates]
"gpu_hour:a100" = { credits = 1.5, unit = "GPU-h" }
"tokens_in:llama-3-8b" = 0.0000002
"call:sleep" = "0.1"
cpu_core_hour = 2
"gb_staged" = { credits = 0.01 }
"odd:thing" = 3
)",
                          "/x", "t.toml");
  CHECK(c.credits.enabled);
  CHECK(c.credits.hold_timeout == std::chrono::seconds(120));
  CHECK(c.credits.sweep_interval == std::chrono::seconds(5));
  CHECK(c.credits.idempotency_ttl == std::chrono::seconds(3600));
  REQUIRE(c.credits.rates.size() == 6);
  auto rate = [&](const std::string& r) -> const CreditRateConfig& {
    for (const auto& x : c.credits.rates)
      if (x.resource == r) return x;
    FAIL("no rate " << r);
    throw;
  };
  CHECK(rate("gpu_hour:a100").pico_per_unit == 1'500'000'000'000);
  CHECK(rate("gpu_hour:a100").unit == "GPU-h");
  CHECK(rate("tokens_in:llama-3-8b").pico_per_unit == 200'000);
  CHECK(rate("tokens_in:llama-3-8b").unit == "token");  // from the resource's kind
  CHECK(rate("call:sleep").pico_per_unit == 100'000'000'000);
  CHECK(rate("call:sleep").unit == "call");
  CHECK(rate("cpu_core_hour").pico_per_unit == 2'000'000'000'000);
  CHECK(rate("cpu_core_hour").unit == "core-h");
  CHECK(rate("gb_staged").unit == "GB");
  CHECK(rate("odd:thing").unit == "unit");

  Config d = parse_config("", "/x", "t.toml");
  CHECK(d.credits.enabled);
  CHECK(d.credits.rates.empty());
  CHECK(d.credits.hold_timeout == std::chrono::seconds(0));
  CHECK_FALSE(parse_config("[credits]\nenabled = false\n", "/x", "t.toml").credits.enabled);
}

TEST_CASE("config: bad credit settings are refused with their place") {
  CHECK_THROWS_WITH(parse_config("[credits.rates]\n\"gpu_hour\" = -1.5\n", "/x", "t.toml"),
                    Catch::Contains("t.toml:2:14") && Catch::Contains("zero or more"));
  CHECK_THROWS_WITH(parse_config("[credits.rates]\n\"gpu_hour\" = nan\n", "/x", "t.toml"),
                    Catch::Contains("t.toml:2:14") && Catch::Contains("finite"));
  CHECK_THROWS_WITH(parse_config("[credits.rates]\n\"gpu_hour\" = inf\n", "/x", "t.toml"),
                    Catch::Contains("finite"));
  CHECK_THROWS_WITH(parse_config("[credits.rates]\nx = \"0.0000000000001\"\n", "/x", "t.toml"),
                    Catch::Contains("t.toml:2:5") && Catch::Contains("decimal places"));
  CHECK_THROWS_WITH(parse_config("[credits.rates]\nx = \"cheap\"\n", "/x", "t.toml"), Catch::Contains("not a number"));
  CHECK_THROWS_WITH(parse_config("[credits.rates]\nx = true\n", "/x", "t.toml"), Catch::Contains("must be a number"));
  CHECK_THROWS_WITH(parse_config("[credits.rates]\nx = { unit = \"h\" }\n", "/x", "t.toml"),
                    Catch::Contains("needs \"credits\""));
  CHECK_THROWS_WITH(parse_config("[credits.rates]\nx = { credits = 1, units = \"h\" }\n", "/x", "t.toml"),
                    Catch::Contains("unknown key \"units\""));
  CHECK_THROWS_WITH(parse_config("[credits]\nhold_timeout = 5\n", "/x", "t.toml"),
                    Catch::Contains("unknown key \"hold_timeout\"") && Catch::Contains("hold_timeout_s"));
  CHECK_THROWS_WITH(parse_config("[credits]\nsweep_interval_s = 0\n", "/x", "t.toml"), Catch::Contains("at least 1"));
  CHECK_THROWS_WITH(parse_config("[credits]\nrates = 3\n", "/x", "t.toml"), Catch::Contains("must be a table"));
  CHECK_THROWS_WITH(parse_config("[[projects]]\nid = \"a\"\ncredit_line = 0.0000001\n", "/x", "t.toml"),
                    Catch::Contains("t.toml:3:15") && Catch::Contains("decimal places"));
  CHECK_THROWS_WITH(parse_config("[[projects]]\nid = \"a\"\ncredit_account = \"shared\"\ncredit_line = 5\n"
                                 "[[projects]]\nid = \"b\"\ncredit_account = \"shared\"\n",
                                 "/x", "t.toml"),
                    Catch::Contains("different credit lines"));
}
