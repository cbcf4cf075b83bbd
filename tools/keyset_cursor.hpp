#pragma once
// The page cursor of list_jobs and list_transfers: "<created_ms>.<id>" of the last row of a page,
// the next page starting below it (newest first). The tools' input schemas check its shape, so
// parse() sees only well-formed cursors.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace scigate::tools {

inline std::pair<int64_t, std::string> parse_keyset_cursor(const std::string& c) {
  auto dot = c.find('.');
  return {std::stoll(c.substr(0, dot)), c.substr(dot + 1)};
}

// The next page's cursor, or null when this page was the last.
template <class Row>
nlohmann::json next_keyset_cursor(const std::vector<Row>& page, bool more) {
  if (!more || page.empty()) return nullptr;
  return std::to_string(page.back().created_ms) + "." + page.back().id;
}

}  // namespace scigate::tools
