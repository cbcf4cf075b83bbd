#pragma once
// Exact decimal <-> scaled-integer conversion for money and rates. Amounts are integers in a
// fixed unit (micro-credits, pico-credits per unit); people write them as decimals. Going
// through double would turn 0.1 into 0.1000000000000000055..., so text is parsed digit by digit
// and printed from the integer, never through floating point.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace scigate::decimal {

// Parses a decimal ("12.5", "-3", "0.000001", "2e-07", "1.5E3") as an integer count of
// 10^-scale units: parse("12.5", 6) == 12'500'000. Fails (nullopt, with *why set when given)
// on syntax errors, values needing more than `scale` decimal places, and int64 overflow.
std::optional<int64_t> parse(std::string_view text, int scale, std::string* why = nullptr);

// The shortest decimal text that reads back as `v` ("0.1" for 0.1, "2e-07" for 2e-7): what
// the person most likely wrote in a TOML file before the parser made it a double.
std::string shortest(double v);

// `v` units of 10^-scale as a decimal with no trailing zeros: format(12'500'000, 6) == "12.5",
// format(-1, 6) == "-0.000001", format(0, 6) == "0".
std::string format(int64_t v, int scale);

}  // namespace scigate::decimal
