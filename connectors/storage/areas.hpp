#pragma once
// The storage areas of every project (docs/DATA.md), the locations tools name, and area quotas.
//
// A location is a URI: area://<area>/<path> for a file in one of the caller's areas (the path is
// taken literally, no %-decoding), or an http(s):// URL. An area id names the project's own area
// of that id, else a shared dataset the project may read; another project's area is "not found".
//
// Quotas (bytes and files per area) are checked against the area's usage, measured by a walk at
// most every quota_scan_interval, plus what transfers in flight have reserved. A transfer
// reserves its announced size before it starts and grows its reservation when more arrives;
// release() adds what it wrote to the measured usage, so the next check counts it at once.
//
// Threads: open/visible/quota methods may be called from any thread. The file operations are
// coroutines that run their file system calls on the file pool (never on an I/O thread) and
// resume on the caller's executor.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "connectors/storage/storage.hpp"
#include "server/config/config.hpp"
#include "server/pipeline/call_context.hpp"

namespace scigate::storage {

struct Location {
  enum class Kind { kArea, kHttp };
  Kind kind = Kind::kArea;
  std::string area;  // kArea: the area id
  std::string path;  // kArea: the path inside it, as given
  std::string url;   // kHttp
  std::string host;  // kHttp: the host name or address, lower case, without port or brackets
};
std::variant<Location, Error> parse_location(const std::string& uri);
// "area://scratch/a/b" for an area location (path as given), the URL for HTTP.
std::string to_uri(const Location& l);

enum class Access { kRead, kWrite };

// "12.3 MiB", for messages.
std::string human_bytes(int64_t bytes);

struct AreaHandle {
  const AreaConfig* config = nullptr;
  std::shared_ptr<Storage> storage;
  bool may_write = false;  // the caller's project owns the area and it is writable
};

// What a transfer holds against a destination area's quota.
struct Reservation {
  std::string area_key;  // "" when the area has no quota
  int64_t bytes = 0, files = 0;
};

struct StatResult {
  FileInfo info;
  std::string sha256;  // when asked for and the entry is a file
};

struct WriteResult {
  int64_t bytes = 0;
  std::string sha256;
};

struct ReadResult {
  FileInfo info;
  int64_t offset = 0;
  std::string bytes;
};

class Areas {
 public:
  explicit Areas(const DataConfig& config, int file_threads = 2);
  ~Areas();
  Areas(const Areas&) = delete;
  Areas& operator=(const Areas&) = delete;

  // The area `id` as `project` sees it; kNotFound for an unknown one (or another project's),
  // kForbidden for writing to one the project may only read.
  std::variant<AreaHandle, Error> open(const std::string& project, const std::string& id, Access access) const;
  // The areas `project` owns or may read, in config order.
  std::vector<AreaHandle> visible(const std::string& project) const;

  boost::asio::awaitable<std::variant<StatResult, Error>> stat(std::string project, Location where, bool sha256,
                                                              std::shared_ptr<CancellationFlag> cancel);
  boost::asio::awaitable<std::variant<ListPage, Error>> list(std::string project, Location where, std::string after,
                                                            std::size_t limit);
  // Up to `length` bytes at `offset`, or the last `tail` bytes when tail > 0.
  boost::asio::awaitable<std::variant<ReadResult, Error>> read(std::string project, Location where, int64_t offset,
                                                              int64_t length, int64_t tail);

  // Writes `bytes` as a new file at `where` (parent directories created), counted against the
  // area's quota: under a temporary name, renamed into place when complete. kConflict when a
  // file of that name exists, kForbidden for an area the project may not write.
  boost::asio::awaitable<std::variant<WriteResult, Error>> write(std::string project, Location where,
                                                                std::shared_ptr<const std::string> bytes);
  // What write() would refuse without touching the disk: not an area, an area the project may
  // not write, a path that leaves the area ("..", absolute elsewhere). For a tool that checks
  // before it spends anything.
  std::optional<Error> check_write(const std::string& project, const Location& where) const;

  // Quotas. Blocking (may walk the area): call on a worker pool. Reserves `bytes` and `files` in
  // the destination area or returns kQuotaExceeded saying how much is left.
  std::optional<Error> reserve(const AreaHandle& area, int64_t bytes, int64_t files, Reservation* out);
  // Grows a reservation (more arrived than announced); kQuotaExceeded when that passes the
  // quota. Never blocks on a walk.
  std::optional<Error> grow(Reservation& r, int64_t bytes, int64_t files);
  // Ends a reservation; what was written joins the measured usage.
  void release(Reservation& r, int64_t bytes_written, int64_t files_written);
  // Measured usage plus reservations (for list_files' area summary); nullopt without quotas.
  std::optional<AreaUsage> usage_estimate(const AreaHandle& area);

  boost::asio::thread_pool& pool() { return pool_; }
  // Waits for queued work (App::drain_writers). Harmless twice.
  void join() { pool_.join(); }
  const DataConfig& config() const { return config_; }

 private:
  struct Quota {
    std::mutex m;
    AreaUsage measured;
    int64_t measured_ms = 0;  // 0: never
    int64_t reserved_bytes = 0, reserved_files = 0;
  };
  static std::string key(const AreaConfig& a) { return a.project + "/" + a.id; }
  Quota* quota(const std::string& key);

  const DataConfig& config_;
  std::map<std::string, std::shared_ptr<Storage>> storages_;  // key(area) -> storage
  std::map<std::string, std::unique_ptr<Quota>> quotas_;      // areas with a quota
  boost::asio::thread_pool pool_;
};

}  // namespace scigate::storage
