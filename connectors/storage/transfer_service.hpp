#pragma once
// The transfer ledger: every stage_data transfer, its progress, its credits (docs/DATA.md).
//
// stage() plans a transfer inline (resolves both ends beneath their areas, walks a source
// directory with include/exclude globs, asks an HTTP source for its size), checks the
// destination area's quota, holds the transfer's credits (a detached hold, owner
// "transfer:<id>", for the announced size), commits the row (QUEUED) and returns: the caller has
// a transfer id at once. The data moves in the background, at most data.max_concurrent
// transfers at a time (the rest wait in order).
//
// Each file is written under a temporary name beside its destination, hashed (SHA-256) while it
// is copied, checked (length, the source unchanged, the expected checksum), recorded in
// transfer_files and only then renamed into place. A failure or a cancellation removes the
// temporary file; nothing partial ever appears under a final name. The hold is settled once,
// by the bytes moved, when the transfer ends.
//
// Restart: rows left QUEUED or ACTIVE are resumed at start (files already recorded are not
// copied again; a temporary file's bytes are re-hashed and the copy goes on from there) or,
// after data.max_attempts, failed cleanly; ended transfers not yet settled are settled.
//
// Threads: public methods may be called from any I/O thread. File system work runs on the
// transfer pool (one thread per running transfer), hashing on the hash pool, SQLite on the
// service's DbWorker; coroutines run on the io_context given to start().
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "connectors/storage/areas.hpp"
#include "policies/ledger.hpp"
#include "server/config/config.hpp"
#include "server/state/db_worker.hpp"

namespace scigate::http {
class CurlClient;
}

namespace scigate::storage {
class AddressPolicy;
class BlockWriter;
}

namespace scigate::storage {

enum class TransferState { kQueued, kActive, kCompleted, kFailed, kCanceled };
std::string_view to_string(TransferState s);
std::optional<TransferState> parse_transfer_state(std::string_view s);
inline bool is_final(TransferState s) {
  return s == TransferState::kCompleted || s == TransferState::kFailed || s == TransferState::kCanceled;
}

enum class OverwritePolicy { kNever, kAlways, kSkip };

struct TransferFile {
  std::string path;  // relative to the transfer's source ("" for a single file)
  int64_t bytes = 0;
  std::string sha256;
  bool skipped = false;
};

struct TransferRecord {
  std::string id;  // x-<12 hex>
  std::string project, principal, request_id;
  std::string source, destination;
  nlohmann::json options;  // recursive, include, exclude, overwrite, sha256
  TransferState state = TransferState::kQueued;
  std::string error_code, error_message;
  bool directory = false;
  std::optional<int64_t> bytes_total;  // announced; nullopt when the source did not say
  int64_t files_total = 0;
  int64_t bytes_done = 0, files_done = 0, files_skipped = 0;
  std::string sha256;  // a single file's
  nlohmann::json resume;
  int attempts = 1;
  int64_t created_ms = 0;
  std::optional<int64_t> start_ms, end_ms;
  std::string hold_id;
  MicroCredits held = 0;
  std::optional<MicroCredits> cost;
  bool settled = false;
  double rate_bytes_per_s = 0;  // recent rate while ACTIVE (not stored)
  std::vector<TransferFile> files;  // filled by get(..., with_files)
};

struct StageRequest {
  std::string project, principal, request_id;
  std::string source, destination;
  bool recursive = false;
  std::vector<std::string> include, exclude;  // fnmatch globs on paths relative to the source
  OverwritePolicy overwrite = OverwritePolicy::kNever;
  std::string expected_sha256;  // lower-case hex, single files only
};

struct TransferFilter {
  std::optional<TransferState> state;
  std::optional<std::pair<int64_t, std::string>> before;  // keyset paging, newest first
  std::size_t limit = 50;
};

// The credits of a transfer: "gb_staged" per 10^9 bytes.
Usage transfer_usage(int64_t bytes);
// Whether `rel` (a path relative to a directory transfer's source) is selected by the globs:
// included when `include` is empty or one matches, and no `exclude` matches. A pattern without
// '/' matches the name alone, one with '/' the whole relative path.
bool selected(const std::string& rel, const std::vector<std::string>& include, const std::vector<std::string>& exclude);

class TransferService {
 public:
  TransferService(const Config& config, const std::filesystem::path& db_path, Ledger& ledger, Areas& areas);
  ~TransferService();

  // Loads the ledger, settles what ended unsettled, resumes (or fails) what was in flight.
  void start(boost::asio::io_context& io);
  // Stops moving data (transfers in flight stay ACTIVE, to be resumed by the next start) and
  // waits for the worker threads; call once the I/O threads have stopped, before the io_context
  // goes. Harmless twice.
  void stop();

  boost::asio::awaitable<std::variant<TransferRecord, Error>> stage(StageRequest request);
  std::optional<TransferRecord> get(const std::string& project, const std::string& id, bool with_files = false) const;
  std::vector<TransferRecord> list(const std::string& project, const TransferFilter& filter, bool* more) const;
  boost::asio::awaitable<std::variant<TransferRecord, Error>> cancel(std::string project, std::string id);

  static std::string new_id();
  // For tests: how many transfers move data now.
  std::size_t running() const;

 private:
  struct Live;
  struct Plan;
  struct Probe;
  struct Work;
  boost::asio::awaitable<void> run(std::string id);
  // HTTP: the source's size and validators (HEAD, redirects checked hop by hop).
  boost::asio::awaitable<std::variant<Probe, Error>> probe(std::string project, std::string url);
  boost::asio::awaitable<std::optional<Error>> download(std::string id, std::shared_ptr<Live> live,
                                                        std::shared_ptr<Plan> plan);
  boost::asio::awaitable<std::optional<Error>> fetch(std::shared_ptr<Live> live, std::shared_ptr<Plan> plan,
                                                     std::shared_ptr<BlockWriter> blocks);
  boost::asio::awaitable<std::optional<Error>> upload(std::string id, std::shared_ptr<Live> live,
                                                      std::shared_ptr<Plan> plan);
  boost::asio::awaitable<std::optional<Error>> send(std::shared_ptr<Live> live, std::shared_ptr<Plan> plan);
  boost::asio::awaitable<void> ticker();
  boost::asio::awaitable<void> finish(std::string id, TransferState state, std::optional<Error> error);
  boost::asio::awaitable<void> settle(std::string id);
  boost::asio::awaitable<void> on_db(std::function<void(state::Database&)> fn);
  void start_next_locked();
  void launch(const std::string& id);
  void load();
  std::variant<Plan, Error> plan(const TransferRecord& rec, const Location& src, const Location& dst, bool resuming);
  // Blocking, on the transfer pool: the files of an area-to-area transfer.
  void execute(const std::string& id, std::shared_ptr<Live> live, std::shared_ptr<Plan> plan);
  void work_items(const std::string& id, Live& live, Plan& plan, Work& work);
  static void write_row(state::Database& db, const TransferRecord& r);

  const Config& config_;
  Ledger& ledger_;
  Areas& areas_;
  state::DbWorker db_;
  boost::asio::thread_pool transfer_pool_;
  boost::asio::thread_pool hash_pool_;
  std::unique_ptr<http::CurlClient> curl_;
  std::unique_ptr<AddressPolicy> address_policy_;
  mutable std::mutex mutex_;
  std::map<std::string, TransferRecord> transfers_;
  std::map<std::string, std::shared_ptr<Live>> live_;  // running transfers
  std::deque<std::string> queue_;                      // waiting, oldest first
  std::map<std::string, std::shared_ptr<Plan>> plans_;  // planned by stage(), taken by run()
  std::map<std::string, std::string> claims_;  // transfer id -> "project/area/path" it writes
  std::atomic<bool> stopping_{false};
  boost::asio::io_context* io_ = nullptr;
  bool stopped_ = false;
};

}  // namespace scigate::storage
