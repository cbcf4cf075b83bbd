#pragma once
// Files for tests: a directory removed with everything in it, write a file (parents created),
// read one whole, make reproducible random bytes. Binary-safe. No Catch dependency.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <system_error>

#include <stdlib.h>

namespace scigate::test {

// A fresh directory under /tmp (mkdtemp: unique, mode 0700), removed with its contents at the
// end of the scope. `label` names it for whoever finds one left behind.
struct TempDir {
  explicit TempDir(const std::string& label = "test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / ("scigate-" + label + "-XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp " + tmpl);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path path;
};

inline void write_file(const std::filesystem::path& p, const std::string& data) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// `n` bytes from a seeded generator: the same for the same seed, incompressible.
inline std::string random_bytes(std::size_t n, unsigned seed = 1) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<std::size_t>(8, n - i));
  }
  return s;
}

}  // namespace scigate::test
