#pragma once
// The keyset page cursor of list_jobs, list_transfers and tasks/list: "<created_ms>.<id>" of the
// last row of a page, the next page starting past it. The tools' input schemas check its shape,
// so parse_keyset_cursor() sees only well-formed cursors; tasks/list checks its own.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace scigate {

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

}  // namespace scigate
