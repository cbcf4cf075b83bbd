#pragma once
// Process metrics in Prometheus text format (/metrics). Counters and histograms are keyed by a
// small, bounded label set (tool names come from the registry, outcomes from a fixed list).
//
// Thread-safety: all methods may be called from any thread.
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace scigate {

class Metrics {
 public:
  void record_call(const std::string& tool, const std::string& outcome, double seconds);
  void record_http(int status);
  void record_rpc(const std::string& method);

  std::atomic<int64_t> sessions{0};
  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> connections{0};

  // Lines another component renders itself at each scrape (the state writer's counters): whole
  // series with their # HELP and # TYPE. Register before serving; what a collector reads must
  // outlive the last render().
  void add_collector(std::function<std::string()> collector);

  std::string render() const;

 private:
  static constexpr std::array<double, 14> kBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                      0.025,  0.05,    0.1,    0.5,   1,      5,     30};
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> buckets{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, uint64_t> calls_;
  std::map<std::string, Histogram> latency_;
  std::map<int, uint64_t> http_;
  std::map<std::string, uint64_t> rpc_;
  std::vector<std::function<std::string()>> collectors_;
};

}  // namespace scigate
