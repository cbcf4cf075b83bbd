#include <catch2/catch.hpp>

#include <string>

#include "server/observability/metrics.hpp"

using scigate::Metrics;

TEST_CASE("metrics: only protocol method names become labels, whatever clients send first") {
  Metrics m;
  // Junk first: 70 distinct long names used to take the label slots (2 MiB each).
  for (int i = 0; i < 70; ++i) m.record_rpc("m" + std::to_string(i) + std::string(4096, 'x'));
  m.record_rpc("tools/list");
  m.record_rpc("tools/call");
  m.record_rpc("tools/call");
  const std::string out = m.render();
  CHECK(out.find("scigate_rpc_requests_total{method=\"other\"} 70") != std::string::npos);
  CHECK(out.find("scigate_rpc_requests_total{method=\"tools/list\"} 1") != std::string::npos);
  CHECK(out.find("scigate_rpc_requests_total{method=\"tools/call\"} 2") != std::string::npos);
  CHECK(out.find("xxxx") == std::string::npos);
  CHECK(out.size() < 4096);
}
