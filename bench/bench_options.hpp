#pragma once
// The benchmarks' command lines: "--name value" options (and value-less flags) after `first`
// positional arguments. --help or -h prints the usage and exits 0. An unknown name, a name
// without its value or a value the setter cannot convert prints why and the usage and exits 2:
// a typo must not run a benchmark of minutes with the defaults.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <set>
#include <string>

namespace scigate::bench {

// set(name, value) returns false for a name it does not know and may throw for a bad value;
// a flag's value is "1".
inline void parse_options(int argc, char** argv, int first, const std::string& usage,
                          const std::function<bool(const std::string& name, const std::string& value)>& set,
                          const std::set<std::string>& flags = {}) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: %s\n", usage.c_str());
      std::exit(0);
    }
  }
  auto fail = [&](const std::string& why) {
    std::fprintf(stderr, "%s\nusage: %s\n", why.c_str(), usage.c_str());
    std::exit(2);
  };
  for (int i = first; i < argc; ++i) {
    std::string name = argv[i], value = "1";
    if (!flags.count(name)) {
      if (i + 1 >= argc) fail("option " + name + " needs a value");
      value = argv[++i];
    }
    bool known = false;
    try {
      known = set(name, value);
    } catch (const std::exception&) {
      fail("bad value for " + name + ": " + value);
    }
    if (!known) fail("unknown option " + name);
  }
}

}  // namespace scigate::bench
