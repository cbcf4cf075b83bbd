#include "connectors/storage/transfer_service.hpp"
#include "connectors/storage/posix_storage.hpp"
#include "server/common/thread_name.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fnmatch.h>

#include <algorithm>
#include <random>
#include <condition_variable>
#include <set>
#include <tuple>
#include <sstream>
#include <thread>

#include "connectors/http/curl_client.hpp"
#include "connectors/storage/blocking.hpp"
#include "connectors/storage/file_copy.hpp"
#include "connectors/storage/http_source.hpp"
#include "server/common/time_format.hpp"
#include "server/observability/log.hpp"

namespace scigate::storage {
namespace asio = boost::asio;
using nlohmann::json;

std::string_view to_string(TransferState s) {
  switch (s) {
    case TransferState::kQueued: return "QUEUED";
    case TransferState::kActive: return "ACTIVE";
    case TransferState::kCompleted: return "COMPLETED";
    case TransferState::kFailed: return "FAILED";
    case TransferState::kCanceled: return "CANCELED";
  }
  return "FAILED";
}

std::optional<TransferState> parse_transfer_state(std::string_view s) {
  for (auto st : {TransferState::kQueued, TransferState::kActive, TransferState::kCompleted, TransferState::kFailed,
                  TransferState::kCanceled})
    if (to_string(st) == s) return st;
  return std::nullopt;
}

Usage transfer_usage(int64_t bytes) {
  Usage u;
  if (bytes > 0) u.add("gb_staged", static_cast<double>(bytes) / 1e9, human_bytes(bytes) + " staged");
  return u;
}

bool selected(const std::string& rel, const std::vector<std::string>& include, const std::vector<std::string>& exclude) {
  auto slash = rel.rfind('/');
  std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
  auto matches = [&](const std::string& pattern) {
    const std::string& subject = pattern.find('/') == std::string::npos ? name : rel;
    return ::fnmatch(pattern.c_str(), subject.c_str(), FNM_PERIOD) == 0;
  };
  for (const auto& p : exclude)
    if (matches(p)) return false;
  if (include.empty()) return true;
  for (const auto& p : include)
    if (matches(p)) return true;
  return false;
}

// What a running transfer shares between its coroutine, its worker thread and the ticker.
struct TransferService::Live {
  std::atomic<bool> cancel{false};
  std::atomic<bool> shutdown{false};  // stopped by stop(): the row stays for the next start
  std::atomic<int64_t> bytes{0}, files{0}, skipped{0};
  std::mutex m;
  std::string sha256;
  Reservation reservation;
  int64_t tick_bytes = 0;
  std::chrono::steady_clock::time_point tick_time = std::chrono::steady_clock::now();
  double rate = 0;
  asio::any_io_executor strand;           // the transfer's coroutine runs here
  asio::cancellation_signal http_cancel;  // emitted on `strand`: stops a request in flight
  std::shared_ptr<ChunkSource> source;    // an upload's (under m)
};

struct TransferService::Probe {
  std::optional<int64_t> size;
  std::string etag, last_modified;
  std::string name;  // the URL's last path segment (decoded)
};

struct TransferService::Plan {
  Location src, dst;
  AreaHandle src_area, dst_area;
  bool directory = false;
  struct Item {
    std::string rel;  // relative to the source ("" for a single file)
    int64_t size = 0;
    bool dir = false;
  };
  std::vector<Item> items;
  std::string dst_path;          // a single file's destination path; a directory's destination
  int64_t bytes = 0, files = 0;  // to move (files only)
  int64_t links_skipped = 0;     // symlinks, devices and FIFOs in a source directory
  bool nothing_to_do = false;    // a single file that overwrite = "skip" leaves alone
  FileInfo src_info;             // a single area file as planned
  std::set<std::string> done;    // resumed: paths recorded already
  int64_t done_bytes = 0;        // resumed: their bytes
  int64_t next_batch = 0;        // the number of the next transfer_files batch
  bool resuming = false;         // a restart's attempt: temporary files may hold data
  Reservation reservation;       // in the destination area's quota
  // Runs of items in one directory (at most 256): the unit a worker takes, so that two workers
  // seldom create files in one directory at once (its lock is the bottleneck).
  std::vector<std::pair<std::size_t, std::size_t>> groups;
  OverwritePolicy overwrite = OverwritePolicy::kNever;
  std::string expected_sha256;
  json identity;                 // a single source file as first planned (a resume checks it)
  // HTTP ends.
  Url url;                          // the source or destination URL
  std::optional<int64_t> announced;  // the source's size as it announced it
  std::string etag, last_modified;   // validators: a Range resume asks for the same version
  std::string project;               // whose credentials ([[data.sources]]) apply
};

namespace {

constexpr long kMaxDestinationDepth = 64;  // directories a destination path may go down

std::string overwrite_name(OverwritePolicy p) {
  return p == OverwritePolicy::kAlways ? "always" : p == OverwritePolicy::kSkip ? "skip" : "never";
}

OverwritePolicy overwrite_from(const json& options) {
  std::string o = options.is_object() && options.contains("overwrite") && options["overwrite"].is_string()
                      ? options["overwrite"].get<std::string>()
                      : "never";
  return o == "always" ? OverwritePolicy::kAlways : o == "skip" ? OverwritePolicy::kSkip : OverwritePolicy::kNever;
}

std::vector<std::string> strings_of(const json& options, const char* key) {
  std::vector<std::string> out;
  if (options.is_object() && options.contains(key) && options[key].is_array())
    for (const auto& v : options[key])
      if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

std::pair<std::string, std::string> split_path(const std::string& rel) {
  auto slash = rel.rfind('/');
  if (slash == std::string::npos) return {"", rel};
  return {rel.substr(0, slash), rel.substr(slash + 1)};
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return a.back() == '/' ? a + b : a + "/" + b;
}

// Components compared: "run1" contains "run1/x" but not "run10".
bool path_within(const std::string& inner, const std::string& outer) {
  if (outer.empty()) return true;
  return inner == outer || (inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
                            inner[outer.size()] == '/');
}

std::string normal(const std::string& p) {
  std::string out;
  std::string part;
  std::stringstream ss(p);
  while (std::getline(ss, part, '/'))
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
  return out;
}

json options_json(const StageRequest& r) {
  json o = json::object();
  o["recursive"] = r.recursive;
  o["include"] = r.include;
  o["exclude"] = r.exclude;
  o["overwrite"] = overwrite_name(r.overwrite);
  if (!r.expected_sha256.empty()) o["sha256"] = r.expected_sha256;
  return o;
}

Error cancelled_error() { return Error{ErrorCode::kCancelled, "the transfer was cancelled", {}, {}}; }

// "bytes 100-199/1000" -> {100, 199, 1000}; total -1 for "*".
bool parse_content_range(const std::string& v, int64_t* first, int64_t* last, int64_t* total) {
  long long a = 0, b = 0, t = -1;
  if (std::sscanf(v.c_str(), "bytes %lld-%lld/%lld", &a, &b, &t) == 3 ||
      std::sscanf(v.c_str(), "bytes %lld-%lld/*", &a, &b) == 2) {
    *first = a;
    *last = b;
    *total = t;
    return a >= 0 && b >= a;
  }
  return false;
}

std::optional<int64_t> content_length(const std::map<std::string, std::string>& h) {
  auto it = h.find("content-length");
  if (it == h.end() || it->second.empty() || it->second.find_first_not_of("0123456789") != std::string::npos ||
      it->second.size() > 18)
    return std::nullopt;
  return std::stoll(it->second);
}

std::string header_of(const std::map<std::string, std::string>& h, const char* name) {
  auto it = h.find(name);
  return it == h.end() ? std::string() : it->second;
}

// What an HTTP status means to the caller of stage_data.
Error http_status_error(long status, const std::string& url) {
  std::string what = "the server answered HTTP " + std::to_string(status) + " for " + url;
  if (status == 404 || status == 410) return Error{ErrorCode::kNotFound, what, "check the URL", {}};
  if (status == 401 || status == 403)
    return Error{ErrorCode::kForbidden, what, "the site has no credentials for it, or they are refused", {}};
  if (status == 416) return Error{ErrorCode::kBackendRejected, what, "stage the file again", {}};
  if (status >= 500) return Error{ErrorCode::kBackendUnavailable, what, "retry later", {}};
  return Error{ErrorCode::kBackendRejected, what, {}, {}};
}

void log_transfer(const TransferRecord& r) {
  log::info("transfer_state", {{"transfer", r.id},
                               {"project", r.project},
                               {"state", std::string(to_string(r.state))},
                               {"bytes", r.bytes_done},
                               {"files", r.files_done},
                               {"error", r.error_message}});
}
void log_started(const TransferRecord& r) {
  log::info("transfer_started",
            {{"transfer", r.id}, {"project", r.project}, {"source", r.source}, {"destination", r.destination}});
}
void log_settled(const std::string& id, MicroCredits posted) {
  log::info("transfer_settled", {{"transfer", id}, {"cost", posted}});
}
void log_recovered(const std::string& id, const std::string& what) {
  log::info("transfer_recovered", {{"transfer", id}, {"action", what}});
}

json files_json(const std::vector<TransferFile>& files) {
  json arr = json::array();
  for (const auto& f : files) {
    json e = json::array();
    e.push_back(f.path);
    e.push_back(f.bytes);
    e.push_back(f.sha256);
    e.push_back(f.skipped);
    arr.push_back(std::move(e));
  }
  return arr;
}

std::vector<TransferFile> files_from(const std::string& text) {
  std::vector<TransferFile> out;
  json arr = json::parse(text, nullptr, false);
  if (!arr.is_array()) return out;
  for (const auto& e : arr)
    if (e.is_array() && e.size() == 4 && e[0].is_string() && e[1].is_number_integer())
      out.push_back(TransferFile{e[0].get<std::string>(), e[1].get<int64_t>(),
                                 e[2].is_string() ? e[2].get<std::string>() : std::string(),
                                 e[3].is_boolean() && e[3].get<bool>()});
  return out;
}

// One batch of verified files (replaces the batch's row; an empty batch removes it).
void record_files(state::Database& db, const std::string& id, int64_t batch, const std::vector<TransferFile>& files) {
  auto lk = db.lock();
  if (files.empty()) {
    state::Statement st(db.handle(), "DELETE FROM transfer_files WHERE transfer_id = ? AND batch = ?");
    st.bind(1, id).bind(2, batch);
    st.step();
    return;
  }
  state::Statement st(db.handle(), "INSERT OR REPLACE INTO transfer_files(transfer_id, batch, files) VALUES (?, ?, ?)");
  st.bind(1, id).bind(2, batch).bind(3, files_json(files).dump());
  st.step();
}

}  // namespace

std::string TransferService::new_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  uint64_t v = rng();
  std::string id = "x-";
  for (int i = 0; i < 12; ++i) id += kHex[(v >> (i * 4)) & 0xf];
  return id;
}

namespace {
// One thread per running transfer, plus the extra workers one transfer may use.
std::size_t transfer_threads(const DataConfig& d) {
  return static_cast<std::size_t>(d.max_concurrent + d.workers_per_transfer - 1);
}
}  // namespace

TransferService::TransferService(const Config& config, const std::filesystem::path& db_path, Ledger& ledger,
                                 Areas& areas)
    : config_(config), ledger_(ledger), areas_(areas), db_(db_path),
      transfer_pool_(transfer_threads(config.data)),
      hash_pool_(static_cast<std::size_t>(config.data.hash_threads)),
      address_policy_(std::make_unique<AddressPolicy>(config.data.http.allowed_networks)) {
  name_pool_threads(transfer_pool_, transfer_threads(config.data), "sg-transfer");
  name_pool_threads(hash_pool_, static_cast<std::size_t>(config.data.hash_threads), "sg-hash");
}

TransferService::~TransferService() { stop(); }

std::size_t TransferService::running() const {
  std::lock_guard g(mutex_);
  return live_.size();
}

void TransferService::stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_ = true;
  {
    std::lock_guard g(mutex_);
    for (auto& [id, live] : live_) {
      live->shutdown = true;
      live->cancel = true;
      // An upload waiting for data holds libcurl's thread: free it before the client goes.
      std::lock_guard lg(live->m);
      Error e{ErrorCode::kBackendUnavailable, "the server is stopping", {}, {}};
      if (live->source) live->source->abort(e);
    }
  }
  curl_.reset();  // completes what is in flight (cancelled) while the io_context still exists
  transfer_pool_.join();
  hash_pool_.join();
  db_.join();
  // Each Live holds a strand of the io_context, which the caller destroys after stop() (its
  // threads have returned by now): let go of them while that context still exists. Coroutine
  // frames still queued on it keep theirs until it destroys them.
  std::lock_guard g(mutex_);
  live_.clear();
}

asio::awaitable<void> TransferService::on_db(std::function<void(state::Database&)> fn) {
  co_await db_.run(std::move(fn));
}

// --- rows ------------------------------------------------------------------------------------

void TransferService::write_row(state::Database& db, const TransferRecord& r) {
  state::Statement st(db.handle(),
                      "INSERT OR REPLACE INTO transfers(id, project, principal, request_id, source, destination, options, "
                      "state, error_code, error_message, directory, bytes_total, files_total, bytes_done, files_done, "
                      "files_skipped, sha256, resume, attempts, created_ms, start_ms, end_ms, hold_id, held, cost, "
                      "settled) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  int i = 0;
  auto text = [&](std::string_view v) { st.bind(++i, v); };
  auto num = [&](int64_t v) { st.bind(++i, v); };
  auto opt = [&](const std::optional<int64_t>& v) {
    if (v) st.bind(++i, *v);
    else st.bind_null(++i);
  };
  text(r.id);
  text(r.project);
  text(r.principal);
  text(r.request_id);
  text(r.source);
  text(r.destination);
  text(r.options.dump());
  text(to_string(r.state));
  text(r.error_code);
  text(r.error_message);
  num(r.directory ? 1 : 0);
  opt(r.bytes_total);
  num(r.files_total);
  num(r.bytes_done);
  num(r.files_done);
  num(r.files_skipped);
  text(r.sha256);
  if (r.resume.is_null()) st.bind_null(++i);
  else text(r.resume.dump());
  num(r.attempts);
  num(r.created_ms);
  opt(r.start_ms);
  opt(r.end_ms);
  text(r.hold_id);
  num(r.held);
  opt(r.cost);
  num(r.settled ? 1 : 0);
  st.step();
}

void TransferService::load() {
  auto& db = db_.db();
  auto lk = db.lock();
  state::Statement st(db.handle(),
                      "SELECT id, project, principal, request_id, source, destination, options, state, error_code, "
                      "error_message, directory, bytes_total, files_total, bytes_done, files_done, files_skipped, "
                      "sha256, resume, attempts, created_ms, start_ms, end_ms, hold_id, held, cost, settled "
                      "FROM transfers");
  std::lock_guard g(mutex_);
  while (st.step()) {
    TransferRecord r;
    int i = 0;
    r.id = st.column_text(i++);
    r.project = st.column_text(i++);
    r.principal = st.column_text(i++);
    r.request_id = st.column_text(i++);
    r.source = st.column_text(i++);
    r.destination = st.column_text(i++);
    r.options = json::parse(st.column_text(i++), nullptr, false);
    r.state = parse_transfer_state(st.column_text(i++)).value_or(TransferState::kFailed);
    r.error_code = st.column_text(i++);
    r.error_message = st.column_text(i++);
    r.directory = st.column_int(i++) != 0;
    if (!st.column_is_null(i)) r.bytes_total = st.column_int(i);
    ++i;
    r.files_total = st.column_int(i++);
    r.bytes_done = st.column_int(i++);
    r.files_done = st.column_int(i++);
    r.files_skipped = st.column_int(i++);
    r.sha256 = st.column_text(i++);
    if (!st.column_is_null(i)) r.resume = json::parse(st.column_text(i), nullptr, false);
    ++i;
    r.attempts = static_cast<int>(st.column_int(i++));
    r.created_ms = st.column_int(i++);
    if (!st.column_is_null(i)) r.start_ms = st.column_int(i);
    ++i;
    if (!st.column_is_null(i)) r.end_ms = st.column_int(i);
    ++i;
    r.hold_id = st.column_text(i++);
    r.held = st.column_int(i++);
    if (!st.column_is_null(i)) r.cost = st.column_int(i);
    ++i;
    r.settled = st.column_int(i++) != 0;
    transfers_.emplace(r.id, std::move(r));
  }
}

// --- start, queue ----------------------------------------------------------------------------

void TransferService::start(asio::io_context& io) {
  io_ = &io;
  curl_ = std::make_unique<http::CurlClient>();
  load();
  std::vector<std::string> unsettled, resumed, failed;
  {
    std::lock_guard g(mutex_);
    std::vector<const TransferRecord*> open;
    for (auto& [id, r] : transfers_) {
      if (is_final(r.state)) {
        if (!r.settled) unsettled.push_back(id);
        continue;
      }
      open.push_back(&r);
    }
    std::sort(open.begin(), open.end(), [](auto* a, auto* b) { return a->created_ms < b->created_ms; });
    for (auto* r : open) {
      TransferRecord& m = transfers_[r->id];
      ++m.attempts;
      if (m.attempts > config_.data.max_attempts) {
        failed.push_back(m.id);
      } else {
        m.state = TransferState::kQueued;
        resumed.push_back(m.id);
      }
    }
  }
  for (const auto& id : failed) {
    log_recovered(id, "failed");
    Error e{ErrorCode::kBackendUnavailable,
            "the transfer was interrupted by a server restart after " + std::to_string(config_.data.max_attempts) +
                " attempt(s) and is not resumed again",
            "stage the data again", {}};
    asio::co_spawn(io, finish(id, TransferState::kFailed, e), asio::detached);
  }
  for (const auto& id : unsettled) asio::co_spawn(io, settle(id), asio::detached);
  {
    std::lock_guard g(mutex_);
    for (const auto& id : resumed) {
      log_recovered(id, "resumed");
      const TransferRecord& r = transfers_[id];
      auto dst = parse_location(r.destination);
      if (auto* l = std::get_if<Location>(&dst); l && r.resume.is_object() && r.resume.contains("destination"))
        claims_[id] = r.project + "/" + l->area + "/" + r.resume["destination"].get<std::string>();
      queue_.push_back(id);
    }
    start_next_locked();
  }
  asio::co_spawn(io, ticker(), asio::detached);
}

void TransferService::start_next_locked() {
  if (!io_ || stopping_) return;
  while (!queue_.empty() && live_.size() < static_cast<std::size_t>(config_.data.max_concurrent)) {
    std::string id = queue_.front();
    queue_.pop_front();
    auto it = transfers_.find(id);
    if (it == transfers_.end() || is_final(it->second.state)) continue;
    auto live = std::make_shared<Live>();
    live->strand = asio::make_strand(*io_);
    live_[id] = live;
    // Posted, never run inline: co_spawn may start the coroutine at once, and it takes mutex_.
    asio::post(live->strand, [this, id, strand = live->strand] { asio::co_spawn(strand, run(id), asio::detached); });
  }
}

void TransferService::launch(const std::string& id) {
  std::lock_guard g(mutex_);
  queue_.push_back(id);
  start_next_locked();
}

// --- planning --------------------------------------------------------------------------------

std::variant<TransferService::Plan, Error> TransferService::plan(const TransferRecord& rec, const Location& src,
                                                                 const Location& dst, bool resuming) {
  Plan p;
  p.src = src;
  p.dst = dst;
  p.project = rec.project;
  p.resuming = resuming;
  const json& o = rec.options;
  bool recursive = o.is_object() && o.contains("recursive") && o["recursive"].is_boolean() && o["recursive"].get<bool>();
  auto include = strings_of(o, "include");
  auto exclude = strings_of(o, "exclude");
  OverwritePolicy overwrite = overwrite_from(o);
  p.overwrite = overwrite;
  if (o.is_object() && o.contains("sha256") && o["sha256"].is_string()) p.expected_sha256 = o["sha256"].get<std::string>();
  p.identity = rec.resume;
  const json& rs = rec.resume;

  FileInfo si;  // the single source file (area or HTTP)
  if (src.kind == Location::Kind::kHttp) {
    auto u = parse_url(src.url);
    if (auto* e = std::get_if<Error>(&u)) return *e;
    p.url = std::get<Url>(u);
    if (rs.is_object() && rs.contains("size") && rs["size"].is_number_integer()) p.announced = rs["size"].get<int64_t>();
    if (rs.is_object()) {
      p.etag = rs.value("etag", std::string());
      p.last_modified = rs.value("last_modified", std::string());
    }
    si.name = rs.is_object() ? rs.value("name", std::string()) : std::string();
    si.size = p.announced.value_or(0);
    si.type = FileType::kFile;
  } else {
    auto sa = areas_.open(rec.project, src.area, Access::kRead);
    if (auto* e = std::get_if<Error>(&sa)) return *e;
    p.src_area = std::get<AreaHandle>(sa);
    si = p.src_area.storage->stat(src.path);
    if (si.type == FileType::kSymlink)
      return Error{ErrorCode::kForbidden, to_uri(src) + " is a symbolic link; links are not followed",
                   "name the file or directory it points to", {}};
    if (si.type == FileType::kOther)
      return Error{ErrorCode::kForbidden, to_uri(src) + " is not a regular file or directory (a device, FIFO or socket)",
                   {}, {}};
  }

  if (dst.kind == Location::Kind::kHttp) {
    // An upload: one file, to a URL a [[data.sources]] entry opens for uploads.
    if (si.type == FileType::kDirectory)
      return Error::invalid_arguments("directories cannot be uploaded to a URL", "upload the files one at a time");
    auto u = parse_url(dst.url);
    if (auto* e = std::get_if<Error>(&u)) return *e;
    p.url = std::get<Url>(u);
    auto sh = source_headers(config_.data, rec.project, p.url.url);
    if (sh.error) return *sh.error;
    if (!sh.upload_allowed)
      return Error{ErrorCode::kForbidden, "this site does not upload to " + p.url.url,
                   "uploads go only to URLs the site's operators opened for them ([[data.sources]] allow_upload)", {}};
    p.src_info = si;
    p.items.push_back(Plan::Item{"", si.size, false});
    p.bytes = si.size;
    p.files = 1;
    if (p.bytes > config_.data.max_transfer_bytes)
      return Error::invalid_arguments(to_uri(src) + " holds " + human_bytes(p.bytes) + "; one transfer may move at most " +
                                          human_bytes(config_.data.max_transfer_bytes),
                                      "stage it in parts");
    return p;
  }

  auto da = areas_.open(rec.project, dst.area, Access::kWrite);
  if (auto* e = std::get_if<Error>(&da)) return *e;
  p.dst_area = std::get<AreaHandle>(da);
  std::string src_norm = src.kind == Location::Kind::kArea ? normal(si.path) : std::string();
  std::string dst_norm = normal(dst.path);
  // A name of the form scigate gives a transfer's temporary file is not a destination: another
  // transfer's temporary could be replaced under it before its rename. And a destination at
  // most kMaxDestinationDepth directories deep: the directories a transfer creates are not
  // counted by the quota's reservation (only by its next scan), nor walked by it past 256.
  if (std::count(dst_norm.begin(), dst_norm.end(), '/') >= kMaxDestinationDepth)
    return Error::invalid_arguments(to_uri(dst) + " lies deeper than " + std::to_string(kMaxDestinationDepth) +
                                        " directories",
                                    "choose a shallower destination");
  for (std::size_t at = 0; at <= dst_norm.size();) {
    std::size_t end = dst_norm.find('/', at);
    if (end == std::string::npos) end = dst_norm.size();
    if (PosixStorage::is_temp_name(dst_norm.substr(at, end - at)))
      return Error::invalid_arguments(to_uri(dst) + " has a name of the form scigate uses for files in transfer",
                                      "choose another name");
    at = end + 1;
  }
  if (si.type == FileType::kDirectory) {
    if (!recursive)
      return Error::invalid_arguments(to_uri(src) + " is a directory", "pass recursive = true to stage it with its contents");
    if (p.src_area.config == p.dst_area.config && path_within(dst_norm, src_norm))
      return Error::invalid_arguments("the destination " + to_uri(dst) + " lies inside the source " + to_uri(src),
                                      "choose a destination outside the source directory");
    p.directory = true;
    p.dst_path = dst_norm;
    bool over = false;
    int64_t max_files = config_.data.max_transfer_files;
    std::string base = src_norm;
    p.src_area.storage->walk(src_norm, [&](const FileInfo& f) {
      std::string rel = base.empty() ? f.path : f.path.substr(base.size() + 1);
      if (f.type == FileType::kDirectory) {
        for (const auto& x : exclude)
          if (::fnmatch(x.c_str(), f.name.c_str(), FNM_PERIOD) == 0 ||
              (x.find('/') != std::string::npos && ::fnmatch(x.c_str(), rel.c_str(), FNM_PERIOD) == 0))
            return Storage::Walk::kPrune;
        return Storage::Walk::kNext;
      }
      if (!selected(rel, include, exclude)) return Storage::Walk::kNext;
      if (f.type != FileType::kFile) {
        ++p.links_skipped;
        return Storage::Walk::kNext;
      }
      if (static_cast<int64_t>(p.items.size()) >= max_files) {
        over = true;
        return Storage::Walk::kStop;
      }
      p.items.push_back(Plan::Item{rel, f.size, false});
      return Storage::Walk::kNext;
    });
    if (over)
      return Error::invalid_arguments(to_uri(src) + " holds more than " + std::to_string(max_files) +
                                          " files selected for staging",
                                      "stage it in parts (include/exclude globs, or subdirectories)");
  } else {
    p.src_info = si;
    p.dst_path = dst_norm;
    bool into_dir = dst.path.empty() || dst.path.back() == '/';
    if (!into_dir) {
      try {
        into_dir = p.dst_area.storage->stat(dst_norm).type == FileType::kDirectory;
      } catch (const ErrorException& e) {
        if (e.error().code != ErrorCode::kNotFound) throw;
      }
    }
    if (into_dir) {
      if (si.name.empty() || si.name == "." || si.name == ".." || si.name.find('/') != std::string::npos)
        return Error::invalid_arguments("the source's name cannot be told from " + to_uri(src),
                                        "name the destination file: area://<area>/<path>/<name>");
      p.dst_path = join_path(dst_norm, si.name);
    }
    if (p.dst_path.empty())
      return Error::invalid_arguments("name the destination file", "write area://<area>/<path>/<name>");
    if (p.src_area.config && p.src_area.config == p.dst_area.config && normal(p.dst_path) == src_norm)
      return Error::invalid_arguments("the source and the destination are the same file");
    p.items.push_back(Plan::Item{"", si.size, false});
    if (!resuming) {
      try {
        FileInfo existing = p.dst_area.storage->stat(p.dst_path);
        if (existing.type == FileType::kDirectory)
          return Error::invalid_arguments("area://" + dst.area + "/" + p.dst_path + " is a directory",
                                          "name a file inside it, or end the destination with '/'");
        if (overwrite == OverwritePolicy::kNever)
          return Error{ErrorCode::kConflict, "area://" + dst.area + "/" + p.dst_path + " already exists",
                       "choose another destination, or pass overwrite \"always\" (replace) or \"skip\"", {}};
        if (overwrite == OverwritePolicy::kSkip) p.nothing_to_do = true;
      } catch (const ErrorException& e) {
        if (e.error().code != ErrorCode::kNotFound) throw;
      }
    }
  }
  if (resuming) {
    auto& db = db_.db();
    auto lk = db.lock();
    state::Statement st(db.handle(), "SELECT batch, files FROM transfer_files WHERE transfer_id = ?");
    st.bind(1, rec.id);
    while (st.step()) {
      p.next_batch = std::max(p.next_batch, st.column_int(0) + 1);
      for (const auto& f : files_from(st.column_text(1))) {
        p.done.insert(f.path);
        p.done_bytes += f.bytes;
      }
    }
  }
  for (const auto& it : p.items) {
    if (p.done.count(it.rel)) continue;
    p.bytes += it.size;
    ++p.files;
  }
  auto parent = [](const std::string& rel) {
    auto slash = rel.rfind('/');
    return slash == std::string::npos ? std::string() : rel.substr(0, slash);
  };
  for (std::size_t i = 0; i < p.items.size();) {
    std::size_t j = i + 1;
    std::string dir = parent(p.items[i].rel);
    while (j < p.items.size() && j - i < 256 && parent(p.items[j].rel) == dir) ++j;
    p.groups.emplace_back(i, j);
    i = j;
  }
  if (p.bytes > config_.data.max_transfer_bytes)
    return Error::invalid_arguments(to_uri(src) + " holds " + human_bytes(p.bytes) + "; one transfer may move at most " +
                                        human_bytes(config_.data.max_transfer_bytes),
                                    "stage it in parts");
  if (!p.nothing_to_do)
    if (auto e = areas_.reserve(p.dst_area, p.bytes, p.files, &p.reservation)) return *e;
  return p;
}

// --- stage -----------------------------------------------------------------------------------

asio::awaitable<std::variant<TransferRecord, Error>> TransferService::stage(StageRequest req) {
  if (stopping_) co_return Error{ErrorCode::kBackendUnavailable, "the server is shutting down", "retry later", {}};
  auto sp = parse_location(req.source);
  if (auto* e = std::get_if<Error>(&sp)) co_return *e;
  auto dp = parse_location(req.destination);
  if (auto* e = std::get_if<Error>(&dp)) co_return *e;
  Location src = std::get<Location>(sp), dst = std::get<Location>(dp);
  if (src.kind == Location::Kind::kHttp && dst.kind == Location::Kind::kHttp)
    co_return Error::invalid_arguments("both ends are URLs; one end must be an area", "stage into an area first");
  if (!req.expected_sha256.empty() && req.recursive)
    co_return Error::invalid_arguments("sha256 checks a single file; it cannot go with recursive = true");

  TransferRecord rec;
  rec.id = new_id();
  rec.project = req.project;
  rec.principal = req.principal;
  rec.request_id = req.request_id;
  rec.source = req.source;
  rec.destination = req.destination;
  rec.options = options_json(req);
  rec.created_ms = unix_now_ms();
  if (src.kind == Location::Kind::kHttp) {
    // The announced size (the hold, the quota) and the validators a Range resume asks for.
    auto probed = co_await probe(req.project, src.url);
    if (auto* e = std::get_if<Error>(&probed)) co_return *e;
    const Probe& pr = std::get<Probe>(probed);
    json seed = json::object();
    if (pr.size) seed["size"] = *pr.size;
    seed["etag"] = pr.etag;
    seed["last_modified"] = pr.last_modified;
    seed["name"] = pr.name;
    rec.resume = std::move(seed);
  }

  // The plan (and the quota reservation) on the file pool: stat, walk.
  std::function<std::shared_ptr<Plan>()> work = [this, rec, src, dst]() {
    auto p = plan(rec, src, dst, false);
    if (auto* e = std::get_if<Error>(&p)) throw ErrorException(*e);
    return std::make_shared<Plan>(std::get<Plan>(std::move(p)));
  };
  auto planned = co_await on_pool(areas_.pool(), std::move(work));
  if (auto* e = std::get_if<Error>(&planned)) co_return *e;
  auto plan_ptr = std::get<std::shared_ptr<Plan>>(std::move(planned));
  rec.directory = plan_ptr->directory;
  const bool unknown_size = src.kind == Location::Kind::kHttp && !plan_ptr->announced;
  if (!unknown_size) rec.bytes_total = plan_ptr->bytes;
  rec.files_total = plan_ptr->files;
  rec.files_skipped = plan_ptr->links_skipped;
  {
    // What a resumed attempt checks: the single source file is still the one planned (an area
    // file's identity, an HTTP source's validators).
    json resume = rec.resume.is_object() ? rec.resume : json::object();
    resume["destination"] = plan_ptr->dst_path;
    if (!plan_ptr->directory && src.kind == Location::Kind::kArea) {
      resume["mtime_ns"] = plan_ptr->src_info.mtime_ns;
      resume["size"] = plan_ptr->src_info.size;
      resume["inode"] = plan_ptr->src_info.inode;
    }
    rec.resume = std::move(resume);
    plan_ptr->identity = rec.resume;
  }

  // Claims: two transfers never write to the same destination at once (one inside the other).
  std::string claim = req.project + "/" + dst.area + "/" + plan_ptr->dst_path;
  if (dst.kind == Location::Kind::kHttp) claim = req.project + "/" + plan_ptr->url.url + "/";
  {
    std::optional<Error> clash;
    std::lock_guard g(mutex_);
    for (const auto& [id, theirs] : claims_) {
      std::string prefix = req.project + "/" + dst.area + "/";
      if (theirs.compare(0, prefix.size(), prefix) != 0) continue;
      std::string their_path = theirs.substr(prefix.size());
      if (path_within(plan_ptr->dst_path, their_path) || path_within(their_path, plan_ptr->dst_path)) {
        clash = Error{ErrorCode::kConflict, "transfer " + id + " is writing to area://" + dst.area + "/" + their_path + " now",
                      "wait for it (get_transfer), cancel it, or choose another destination", {}};
        break;
      }
    }
    if (clash) {
      areas_.release(plan_ptr->reservation, 0, 0);
      co_return *clash;
    }
    claims_[rec.id] = claim;
  }

  // The transfer's own hold: the announced size, detached from this call.
  HoldRequest hr;
  hr.project = req.project;
  hr.principal = req.principal;
  hr.tool = "transfer";
  hr.request_id = req.request_id;
  // A source that does not say its size is held for the most one transfer may move.
  int64_t limit = config_.data.http.max_bytes > 0 ? std::min(config_.data.http.max_bytes, config_.data.max_transfer_bytes)
                                                  : config_.data.max_transfer_bytes;
  hr.worst_case = transfer_usage(unknown_size ? limit : plan_ptr->bytes);
  hr.owner = "transfer:" + rec.id;
  hr.timeout = std::chrono::hours(24 * 14);
  auto reserved = co_await ledger_.reserve(std::move(hr));
  if (reserved.error) {
    std::lock_guard g(mutex_);
    claims_.erase(rec.id);
    areas_.release(plan_ptr->reservation, 0, 0);
    co_return *reserved.error;
  }
  rec.hold_id = reserved.hold.id;
  rec.held = reserved.hold.amount;
  {
    std::lock_guard g(mutex_);
    transfers_.emplace(rec.id, rec);
  }
  {
    std::function<void(state::Database&)> op = [rec](state::Database& db) { write_row(db, rec); };
    co_await on_db(std::move(op));
  }
  log_started(rec);
  if (plan_ptr->nothing_to_do) {
    {
      std::lock_guard g(mutex_);
      auto& m = transfers_[rec.id];
      m.files_skipped = 1;
    }
    co_await finish(rec.id, TransferState::kCompleted, std::nullopt);
  } else {
    {
      std::lock_guard g(mutex_);
      plans_[rec.id] = plan_ptr;
    }
    launch(rec.id);
  }
  auto now = get(rec.project, rec.id);
  co_return now ? *now : rec;
}


// --- running ---------------------------------------------------------------------------------

namespace {

Error integrity(std::string message, std::string hint = "stage the data again") {
  return Error{ErrorCode::kIntegrityFailed, std::move(message), std::move(hint), {}};
}

}  // namespace

// The items of one transfer, taken one at a time by its workers (the transfer's own thread and,
// for a large directory, helpers on the transfer pool).
struct TransferService::Work {
  std::atomic<std::size_t> next{0};
  std::atomic<bool> stop{false};
  std::atomic<int64_t> next_batch{0};
  std::atomic<int64_t> moved{0};  // bytes, for the bandwidth limit
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::mutex m;
  std::condition_variable cv;
  int active = 0;      // workers inside work_items
  bool closed = false;  // the transfer's thread is done: helpers that start late do nothing
  std::exception_ptr error;
};

void TransferService::execute(const std::string& id, std::shared_ptr<Live> live, std::shared_ptr<Plan> p) {
  Storage& dst = *p->dst_area.storage;
  const Overwrite commit_mode = p->overwrite == OverwritePolicy::kAlways ? Overwrite::kAlways : Overwrite::kNever;
  // A resumed transfer: files verified and recorded before the interruption may still wait under
  // their temporary names.
  for (const auto& rel : p->done) {
    auto w = dst.open_write(p->directory ? join_path(p->dst_path, rel) : p->dst_path, id, true);
    if (w->existed()) w->commit(commit_mode);
    else w->discard();
  }
  auto work = std::make_shared<Work>();
  work->next_batch = p->next_batch;
  // Many small files are bound by per-file system calls, not bandwidth: helpers take files from
  // the same list. A helper that gets no thread before the list is done does nothing.
  int helpers = p->directory && p->items.size() > 64 && p->groups.size() > 1 ? config_.data.workers_per_transfer - 1 : 0;
  for (int h = 0; h < helpers; ++h)
    asio::post(transfer_pool_, [this, id, live, p, work] {
      {
        std::lock_guard g(work->m);
        if (work->closed || work->stop || work->next >= p->groups.size()) return;
        ++work->active;
      }
      work_items(id, *live, *p, *work);
    });
  {
    std::lock_guard g(work->m);
    ++work->active;
  }
  work_items(id, *live, *p, *work);
  std::unique_lock lk(work->m);
  work->cv.wait(lk, [&] { return work->active == 0; });
  work->closed = true;
  p->next_batch = work->next_batch;
  if (work->error) std::rethrow_exception(work->error);
}

void TransferService::work_items(const std::string& id, Live& live, Plan& p, Work& work) {
  Storage& src = *p.src_area.storage;
  Storage& dst = *p.dst_area.storage;
  const Overwrite commit_mode = p.overwrite == OverwritePolicy::kAlways ? Overwrite::kAlways : Overwrite::kNever;
  const std::string src_base = normal(p.src.path);
  auto dst_of = [&](const std::string& rel) { return p.directory ? join_path(p.dst_path, rel) : p.dst_path; };
  auto src_of = [&](const std::string& rel) { return p.directory ? join_path(src_base, rel) : src_base; };

  struct Pending {
    std::unique_ptr<Writer> writer;  // null for a skipped file
    TransferFile file;
  };
  std::vector<Pending> batch;
  int64_t batch_bytes = 0;
  auto batch_started = std::chrono::steady_clock::now();
  std::unique_ptr<Writer> current;
  std::unique_ptr<Directory> src_dir, dst_dir;

  // Verified files are recorded first and renamed after: a crash in between leaves records whose
  // temporary files the next attempt renames (execute), never a file that is not recorded.
  auto flush = [&]() {
    if (batch.empty()) return;
    std::vector<TransferFile> files;
    for (const auto& b : batch) files.push_back(b.file);
    const int64_t number = work.next_batch.fetch_add(1);
    record_files(db_.db(), id, number, files);
    std::size_t i = 0;
    try {
      for (; i < batch.size(); ++i) {
        if (batch[i].writer) batch[i].writer->commit(commit_mode);
        if (batch[i].file.skipped) live.skipped += 1;
        else live.files += 1;
      }
    } catch (...) {
      // The batch's record keeps only what was renamed.
      for (std::size_t k = i; k < batch.size(); ++k)
        if (batch[k].writer) batch[k].writer->discard();
      files.resize(i);
      record_files(db_.db(), id, number, files);
      batch.clear();
      throw;
    }
    batch.clear();
    batch_bytes = 0;
    batch_started = std::chrono::steady_clock::now();
  };

  int64_t reserved_for_file = 0;
  CopyHooks hooks;
  hooks.cancel = &live.cancel;
  // The bandwidth limit ([data] max_bytes_per_s), over all workers: sleep off what runs ahead.
  const int64_t limit = config_.data.max_bytes_per_s;
  hooks.progress = [&live, &work, limit](int64_t n) {
    live.bytes += n;
    if (limit <= 0) return;
    int64_t moved = work.moved.fetch_add(n) + n;
    auto due = work.started + std::chrono::microseconds(moved * 1'000'000 / limit);
    while (std::chrono::steady_clock::now() < due && !live.cancel)
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(due - std::chrono::steady_clock::now(),
                                                                               std::chrono::milliseconds(50)));
  };
  hooks.grew = [&](int64_t total) -> std::optional<Error> {
    int64_t more = total - reserved_for_file;
    if (more <= 0) return std::nullopt;
    if (auto e = areas_.grow(live.reservation, more, 0)) return e;
    reserved_for_file = total;
    return std::nullopt;
  };

  try {
    std::size_t index = 0, group_end = 0;
    for (;;) {
      if (live.cancel) throw ErrorException(cancelled_error());
      if (work.stop) break;  // another worker failed
      if (index == group_end) {
        const std::size_t g = work.next.fetch_add(1);
        if (g >= p.groups.size()) break;
        std::tie(index, group_end) = p.groups[g];
      }
      const auto& item = p.items[index++];
      if (p.done.count(item.rel)) continue;
      const std::string src_rel = src_of(item.rel);
      const std::string dst_rel = dst_of(item.rel);
      // Files of one directory come one after another: its two directories are resolved once.
      auto [src_parent, src_name] = split_path(src_rel);
      auto [dst_parent, dst_name] = split_path(dst_rel);
      if (!src_dir || src_dir->path() != src_parent) src_dir = src.open_directory(src_parent, false);
      if (!dst_dir || dst_dir->path() != dst_parent) dst_dir = dst.open_directory(dst_parent, true);
      // "never" is enforced by the rename (RENAME_NOREPLACE); "skip" needs to look first.
      if (p.directory && p.overwrite == OverwritePolicy::kSkip) {
        bool exists = true;
        try {
          dst.stat(dst_rel);
        } catch (const ErrorException& e) {
          if (e.error().code != ErrorCode::kNotFound) throw;
          exists = false;
        }
        if (exists) {
          batch.push_back(Pending{nullptr, TransferFile{item.rel, 0, "", true}});
          continue;
        }
      }
      auto reader = src.open_read_in(*src_dir, src_name);
      const FileInfo before = reader->info();
      current = dst.open_write_in(*dst_dir, dst_name, id, p.resuming);
      crypto::Sha256 hash;
      int64_t start = 0;
      if (current->existing_size() > 0) {
        // Resume only a single file that is provably the one planned, and not longer than it.
        const json& idn = p.identity;
        bool same = !p.directory && idn.is_object() && idn.value("size", int64_t(-1)) == before.size &&
                    idn.value("mtime_ns", int64_t(-1)) == before.mtime_ns &&
                    idn.value("inode", uint64_t(0)) == before.inode && current->existing_size() <= before.size;
        if (same) start = rehash_existing(*current, current->existing_size(), hash);
        if (start != current->existing_size() || !same) {
          current->truncate(0);
          hash.reset();
          start = 0;
        }
        live.bytes += start;
      }
      reserved_for_file = item.size;
      hooks.reserved = item.size;
      int64_t total = copy_file_data(*reader, *current, start, hash, hash_pool_, hooks);
      // The source must not have changed while it was read: a copy of a file being written is not
      // a copy of anything. (Renamed away or replaced meanwhile is fine: the inode read is whole.)
      FileInfo after = reader->current();
      if (after.size != before.size || after.mtime_ns != before.mtime_ns || total != before.size)
        throw ErrorException(integrity("area://" + p.src.area + "/" + src_rel + " changed while it was copied",
                                       "stage it again once whatever writes it has finished"));
      std::string sha = hash.final_hex();
      if (!p.expected_sha256.empty() && sha != p.expected_sha256)
        throw ErrorException(integrity("the SHA-256 of area://" + p.src.area + "/" + src_rel + " is " + sha +
                                           ", not the expected " + p.expected_sha256,
                                       "check the expected checksum, or the source"));
      if (!p.directory) {
        std::lock_guard g(live.m);
        live.sha256 = sha;
      }
      batch.push_back(Pending{std::move(current), TransferFile{item.rel, total, sha, false}});
      batch_bytes += total;
      if (batch.size() >= 64 || batch_bytes >= (256 << 20) ||
          std::chrono::steady_clock::now() - batch_started > std::chrono::milliseconds(500))
        flush();
    }
    flush();
  } catch (...) {
    // Cancelled or failed: no temporary file stays. Stopped for a restart: the one being written
    // stays, for the next attempt to resume.
    if (current && !live.shutdown) current->discard();
    for (auto& b : batch)
      if (b.writer) b.writer->discard();
    std::lock_guard g(work.m);
    if (!work.error) work.error = std::current_exception();
    work.stop = true;
  }
  std::lock_guard g(work.m);
  --work.active;
  work.cv.notify_all();
}

asio::awaitable<void> TransferService::run(std::string id) {
  std::shared_ptr<Live> live;
  std::shared_ptr<Plan> planned;
  TransferRecord rec;
  {
    std::lock_guard g(mutex_);
    live = live_[id];
    if (auto it = plans_.find(id); it != plans_.end()) {
      planned = it->second;
      plans_.erase(it);
    }
    auto& m = transfers_[id];
    m.state = TransferState::kActive;
    if (!m.start_ms) m.start_ms = unix_now_ms();
    rec = m;
    live->bytes = m.bytes_done;
    live->files = m.files_done;
    live->skipped = m.files_skipped;
  }
  {
    std::function<void(state::Database&)> op = [rec](state::Database& db) { write_row(db, rec); };
    co_await on_db(std::move(op));
  }
  // The plan: stage()'s, or (resumed after a restart) made again on the file pool, leaving
  // out what is recorded.
  std::shared_ptr<Plan> p = planned;
  if (!p) {
    std::function<std::shared_ptr<Plan>()> replan = [this, rec, live]() {
      auto src = std::get<Location>(parse_location(rec.source));
      auto dst = std::get<Location>(parse_location(rec.destination));
      auto again = plan(rec, src, dst, true);
      if (auto* e = std::get_if<Error>(&again)) throw ErrorException(*e);
      auto made = std::make_shared<Plan>(std::get<Plan>(std::move(again)));
      live->bytes = made->done_bytes;
      live->files = static_cast<int64_t>(made->done.size());
      return made;
    };
    auto again = co_await on_pool(areas_.pool(), std::move(replan));
    if (auto* e = std::get_if<Error>(&again)) {
      if (live->shutdown) co_return;
      co_await finish(id, TransferState::kFailed, *e);
      co_return;
    }
    p = std::get<std::shared_ptr<Plan>>(std::move(again));
  }
  live->reservation = p->reservation;
  const int64_t bytes_before = live->bytes, files_before = live->files;
  std::optional<Error> failure;
  if (p->src.kind == Location::Kind::kHttp) {
    failure = co_await download(id, live, p);
  } else if (p->dst.kind == Location::Kind::kHttp) {
    failure = co_await upload(id, live, p);
  } else {
    std::function<int()> work = [this, id, live, p]() -> int {
      execute(id, live, p);
      return 0;
    };
    auto result = co_await on_pool(transfer_pool_, std::move(work));
    if (auto* e = std::get_if<Error>(&result)) failure = *e;
  }
  areas_.release(live->reservation, live->bytes - bytes_before, live->files - files_before);
  if (live->shutdown) co_return;  // stop(): the row stays ACTIVE for the next start to resume
  if (failure) {
    if (live->cancel || failure->code == ErrorCode::kCancelled) co_await finish(id, TransferState::kCanceled, std::nullopt);
    else co_await finish(id, TransferState::kFailed, *failure);
  } else {
    co_await finish(id, TransferState::kCompleted, std::nullopt);
  }
}

// --- HTTP ------------------------------------------------------------------------------------

namespace {

struct Checked {
  CheckedTarget target;
  std::vector<std::string> headers;
};

// Resolving and reading secret files block: on a worker pool.
std::function<Checked()> check_work(const DataConfig& config, const AddressPolicy& policy, std::string project,
                                    std::string url) {
  return [&config, &policy, project, url]() {
    auto u = parse_url(url);
    if (auto* e = std::get_if<Error>(&u)) throw ErrorException(*e);
    auto t = check_target(std::get<Url>(u), config.http, policy);
    if (auto* e = std::get_if<Error>(&t)) throw ErrorException(*e);
    auto sh = source_headers(config, project, url);
    if (sh.error) throw ErrorException(*sh.error);
    return Checked{std::get<CheckedTarget>(std::move(t)), std::move(sh.headers)};
  };
}

http::Request base_request(const DataConfig& config, const Checked& c) {
  http::Request q;
  q.url = c.target.url.url;
  q.resolve = {c.target.resolve_entry};
  q.headers = c.headers;
  q.decode_content = false;
  q.proxy = config.http.proxy;  // "" : none, whatever the environment says
  q.connect_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(config.http.connect_timeout);
  q.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(config.http.timeout);
  q.low_speed_bytes_per_s = 1024;
  q.low_speed_time = config.http.stall_timeout;
  q.max_recv_bytes_per_s = config.max_bytes_per_s;
  q.buffer_size = 512 * 1024;
  return q;
}

Error redirect_error(const std::string& why) {
  return Error{ErrorCode::kPolicyDenied, why, "stage from the final URL, if the site allows it", {}};
}

// The next hop of a redirect, or why it is refused.
std::variant<std::string, Error> next_hop(const std::string& from, const std::string& location, int hops, int max) {
  if (location.empty()) return Error{ErrorCode::kBackendRejected, "the server redirected without a Location", {}, {}};
  if (hops > max) return redirect_error("more than " + std::to_string(max) + " redirects");
  auto u = resolve_redirect(from, location);
  if (auto* e = std::get_if<Error>(&u)) return *e;
  const Url& to = std::get<Url>(u);
  if (from.rfind("https://", 0) == 0 && to.scheme != "https")
    return redirect_error("the server redirected from https to " + to.scheme + " (" + to.url + "); refused");
  return to.url;
}

}  // namespace

asio::awaitable<std::variant<TransferService::Probe, Error>> TransferService::probe(std::string project, std::string url) {
  Probe out;
  auto first = parse_url(url);
  if (auto* e = std::get_if<Error>(&first)) co_return *e;
  out.name = std::get<Url>(first).last_segment;
  std::string at = std::get<Url>(first).url;
  for (int hops = 0;; ++hops) {
    auto check = check_work(config_.data, *address_policy_, project, at);
    auto checked = co_await on_pool(areas_.pool(), std::move(check));
    if (auto* e = std::get_if<Error>(&checked)) co_return *e;
    http::Request q = base_request(config_.data, std::get<Checked>(checked));
    q.method = "HEAD";
    q.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(config_.data.http.connect_timeout) * 3;
    q.max_body = 0;
    auto r = co_await curl_->perform(std::move(q));
    if (!r.error.empty())
      co_return Error{ErrorCode::kBackendUnavailable, "the server of " + at + " could not be reached",
                      "check the URL, or retry later", r.error};
    if (r.status >= 300 && r.status < 400) {
      auto hop = next_hop(at, r.header("location"), hops + 1, config_.data.http.max_redirects);
      if (auto* e = std::get_if<Error>(&hop)) co_return *e;
      at = std::get<std::string>(hop);
      continue;
    }
    if (r.status == 405 || r.status == 501) co_return out;  // no HEAD: the size comes with the body
    if (r.status < 200 || r.status >= 300) co_return http_status_error(r.status, at);
    out.size = content_length(r.headers);
    out.etag = r.header("etag");
    out.last_modified = r.header("last-modified");
    if (!out.etag.empty() && out.etag.rfind("W/", 0) == 0) out.etag.clear();  // weak: not for If-Range
    co_return out;
  }
}

asio::awaitable<std::optional<Error>> TransferService::download(std::string id, std::shared_ptr<Live> live,
                                                                std::shared_ptr<Plan> p) {
  if (p->done.count("")) {
    // Verified and recorded before a restart: only the rename may be missing.
    std::function<int()> rename = [p, id]() {
      auto w = p->dst_area.storage->open_write(p->dst_path, id, true);
      if (w->existed()) w->commit(p->overwrite == OverwritePolicy::kAlways ? Overwrite::kAlways : Overwrite::kNever);
      else w->discard();
      return 0;
    };
    auto renamed = co_await on_pool(transfer_pool_, std::move(rename));
    if (auto* e = std::get_if<Error>(&renamed)) co_return *e;
    co_return std::nullopt;
  }
  struct Opened {
    std::shared_ptr<Writer> writer;
    std::shared_ptr<crypto::Sha256> hash;
    int64_t offset = 0;
  };
  // The temporary file; what an earlier attempt left in it is kept when a validator lets the
  // server confirm it still sends the same version (If-Range), re-hashed first.
  std::function<Opened()> open = [p, id]() {
    Opened o;
    o.writer = std::shared_ptr<Writer>(p->dst_area.storage->open_write(p->dst_path, id, true).release());
    o.hash = std::make_shared<crypto::Sha256>();
    int64_t have = o.writer->existing_size();
    bool resumable = !p->etag.empty() || !p->last_modified.empty();
    if (have > 0 && resumable && (!p->announced || have <= *p->announced)) {
      o.offset = rehash_existing(*o.writer, have, *o.hash);
      if (o.offset != have) {
        o.writer->truncate(0);
        o.hash->reset();
        o.offset = 0;
      }
    } else if (have > 0) {
      o.writer->truncate(0);
    }
    return o;
  };
  auto opened = co_await on_pool(transfer_pool_, std::move(open));
  if (auto* e = std::get_if<Error>(&opened)) co_return *e;
  Opened o = std::get<Opened>(std::move(opened));
  live->bytes += o.offset;
  // Quota: the announced size is reserved; data beyond it (an unannounced size) reserves more in
  // steps as it arrives.
  auto reserved = std::make_shared<int64_t>(p->announced.value_or(0));
  CopyHooks hooks;
  hooks.cancel = &live->cancel;
  hooks.progress = [live](int64_t n) { live->bytes += n; };
  hooks.reserved = *reserved;
  hooks.grew = [this, live, reserved](int64_t total) -> std::optional<Error> {
    int64_t more = total - *reserved;
    if (more <= 0) return std::nullopt;
    int64_t step = std::max<int64_t>(more, 64 << 20);
    if (areas_.grow(live->reservation, step, 0)) {
      if (auto e = areas_.grow(live->reservation, more, 0)) return e;
      step = more;
    }
    *reserved += step;
    return std::nullopt;
  };
  auto blocks = std::make_shared<BlockWriter>(*o.writer, *o.hash, hash_pool_, o.offset, std::move(hooks));
  std::optional<Error> failure = co_await fetch(live, p, blocks);
  std::shared_ptr<Writer> writer = o.writer;
  std::shared_ptr<crypto::Sha256> hash = o.hash;
  std::string sha;
  if (!failure) {
    // The tail, the last hash, the checks; recorded, then renamed into place.
    std::function<std::string()> commit = [this, p, writer, hash, blocks, id]() {
      int64_t total = blocks->finish();
      std::string digest = hash->final_hex();
      if (p->announced && total != *p->announced)
        throw ErrorException(Error{ErrorCode::kIntegrityFailed,
                                   "the server announced " + std::to_string(*p->announced) + " bytes and sent " +
                                       std::to_string(total),
                                   "stage it again; if it persists, the source is inconsistent", {}});
      if (!p->expected_sha256.empty() && digest != p->expected_sha256)
        throw ErrorException(Error{ErrorCode::kIntegrityFailed,
                                   "the SHA-256 of " + p->url.url + " is " + digest + ", not the expected " +
                                       p->expected_sha256,
                                   "check the expected checksum, or the source", {}});
      record_files(db_.db(), id, p->next_batch, {TransferFile{"", total, digest, false}});
      writer->commit(p->overwrite == OverwritePolicy::kAlways ? Overwrite::kAlways : Overwrite::kNever);
      return digest;
    };
    auto committed = co_await on_pool(transfer_pool_, std::move(commit));
    if (auto* e = std::get_if<Error>(&committed)) failure = *e;
    else sha = std::get<std::string>(committed);
  }
  blocks.reset();  // its hash in flight is waited for before the file goes
  if (failure) {
    if (!live->shutdown) {
      std::function<int()> drop = [writer]() {
        writer->discard();
        return 0;
      };
      co_await on_pool(transfer_pool_, std::move(drop));
    }
    co_return failure;
  }
  {
    std::lock_guard g(live->m);
    live->sha256 = sha;
  }
  live->files += 1;
  co_return std::nullopt;
}

namespace {

// What the callbacks of one request saw (they run on libcurl's thread; read after it ended).
struct Exchange {
  long status = 0;
  std::string location;
  std::optional<int64_t> length;  // the body this response announced
  int64_t from = 0;               // where its body starts in the file
  std::string refused;            // why a callback stopped it
  ErrorCode refused_code = ErrorCode::kIntegrityFailed;
  std::optional<Error> failed;    // the file side failed (a write, the quota, a cancellation)
};

}  // namespace

asio::awaitable<std::optional<Error>> TransferService::fetch(std::shared_ptr<Live> live, std::shared_ptr<Plan> p,
                                                             std::shared_ptr<BlockWriter> blocks) {
  const DataHttpConfig& hc = config_.data.http;
  const int64_t limit = hc.max_bytes > 0 ? std::min(hc.max_bytes, config_.data.max_transfer_bytes)
                                         : config_.data.max_transfer_bytes;
  std::string at = p->url.url;
  int hops = 0, attempt = 0;
  std::optional<Error> failure;
  asio::steady_timer backoff(co_await asio::this_coro::executor);
  for (;;) {
    if (live->cancel) {
      failure = cancelled_error();
      break;
    }
    auto check = check_work(config_.data, *address_policy_, p->project, at);
    auto checked = co_await on_pool(areas_.pool(), std::move(check));
    if (auto* e = std::get_if<Error>(&checked)) {
      failure = *e;
      break;
    }
    auto ex = std::make_shared<Exchange>();
    ex->from = blocks->position();
    http::Request q = base_request(config_.data, std::get<Checked>(checked));
    if (ex->from > 0) {
      q.headers.push_back("Range: bytes=" + std::to_string(ex->from) + "-");
      if (!p->etag.empty()) q.headers.push_back("If-Range: " + p->etag);
      else if (!p->last_modified.empty()) q.headers.push_back("If-Range: " + p->last_modified);
    }
    auto announced = p->announced;
    q.on_headers = [ex, blocks, announced](long status, const std::map<std::string, std::string>& h) -> bool {
      ex->status = status;
      if (status >= 300 && status < 400) {
        ex->location = header_of(h, "location");
        return true;
      }
      if (status == 200) {
        // The whole body: a server that ignored the Range (or another version) starts over.
        if (ex->from > 0) {
          try {
            blocks->restart();
          } catch (const ErrorException& e) {
            ex->failed = e.error();
            return false;
          }
        }
        ex->from = 0;
        ex->length = content_length(h);
        if (announced && ex->length && *ex->length != *announced) {
          ex->refused = "the server announced " + std::to_string(*announced) + " bytes, then sent a body of " +
                        std::to_string(*ex->length);
          return false;
        }
        return true;
      }
      if (status == 206) {
        int64_t first = 0, last = 0, total = -1;
        if (!parse_content_range(header_of(h, "content-range"), &first, &last, &total) || first != ex->from ||
            (announced && total >= 0 && total != *announced)) {
          ex->refused = "the server answered a range request with another range (" + header_of(h, "content-range") + ")";
          return false;
        }
        // What is asked for runs to the end of the file: a part that stops short of it (or, when
        // nothing was asked for, of an unknown end) would be committed as the whole file.
        if (total >= 0 ? last + 1 != total : ex->from == 0) {
          ex->refused = "the server sent only part of the file (" + header_of(h, "content-range") + ")";
          return false;
        }
        ex->length = last - first + 1;
        return true;
      }
      return true;  // an error status: its body is not data
    };
    q.on_data = [ex, blocks, limit, announced](std::string_view d) -> bool {
      if (ex->status != 200 && ex->status != 206) return true;
      const int64_t end = blocks->position() + static_cast<int64_t>(d.size());
      if (announced && end > *announced) {
        // More than announced (a chunked body, say): stop now rather than at the end.
        ex->refused = "the server announced " + std::to_string(*announced) + " bytes and sends more";
        return false;
      }
      if (end > limit) {
        ex->refused = "the source is larger than " + human_bytes(limit) + ", the most one transfer may move";
        ex->refused_code = ErrorCode::kQuotaExceeded;
        return false;
      }
      try {
        blocks->append(d);  // writes on this thread; hashes on the pool
      } catch (const ErrorException& e) {
        ex->failed = e.error();
        return false;
      }
      return true;
    };
    auto op = curl_->perform(std::move(q));
    auto r = co_await asio::co_spawn(live->strand, std::move(op),
                                     asio::bind_cancellation_slot(live->http_cancel.slot(), asio::use_awaitable));
    if (live->cancel || r.cancelled) {
      failure = cancelled_error();
      break;
    }
    if (ex->failed) {
      failure = ex->failed->code == ErrorCode::kCancelled ? cancelled_error() : *ex->failed;
      break;
    }
    if (!ex->refused.empty()) {
      failure = Error{ex->refused_code, ex->refused, "stage it again; if it persists, the source is inconsistent", {}};
      break;
    }
    if (ex->status >= 300 && ex->status < 400) {
      auto hop = next_hop(at, ex->location, ++hops, hc.max_redirects);
      if (auto* e = std::get_if<Error>(&hop)) {
        failure = *e;
        break;
      }
      at = std::get<std::string>(hop);
      continue;
    }
    if (ex->status != 0 && (ex->status < 200 || ex->status >= 300)) {
      failure = http_status_error(ex->status, at);
      break;
    }
    int64_t got = blocks->position() - ex->from;
    if (!r.error.empty()) {
      // The connection broke (or stalled): resume with a Range, a few times.
      if (++attempt <= hc.retries) {
        backoff.expires_after(std::chrono::milliseconds(250 * attempt));
        co_await backoff.async_wait(asio::as_tuple(asio::use_awaitable));
        continue;
      }
      if (r.partial && ex->length)
        failure = Error{ErrorCode::kIntegrityFailed,
                        "the server announced " + std::to_string(ex->length.value_or(0) + ex->from) +
                            " bytes and the connection ended after " + std::to_string(ex->from + got) + " (" +
                            std::to_string(hc.retries) + " retries)",
                        "retry later; the source may be broken", r.error};
      else if (r.timed_out)
        failure = Error{ErrorCode::kTimeout, "the download from " + at + " stalled or took too long", "retry later",
                        r.error};
      else
        failure = Error{ErrorCode::kBackendUnavailable, "the download from " + at + " broke off", "retry later", r.error};
      break;
    }
    if (ex->length && got != *ex->length) {
      failure = Error{ErrorCode::kIntegrityFailed,
                      "the server announced " + std::to_string(*ex->length) + " bytes and sent " + std::to_string(got),
                      "stage it again; if it persists, the source is inconsistent", {}};
      break;
    }
    break;  // the whole body
  }
  co_return failure;
}

asio::awaitable<std::optional<Error>> TransferService::upload(std::string id, std::shared_ptr<Live> live,
                                                              std::shared_ptr<Plan> p) {
  using namespace asio::experimental::awaitable_operators;
  if (p->done.count("")) co_return std::nullopt;  // sent and recorded before a restart
  std::function<std::shared_ptr<Reader>()> open = [p]() {
    return std::shared_ptr<Reader>(p->src_area.storage->open_read(p->src.path).release());
  };
  auto opened = co_await on_pool(transfer_pool_, std::move(open));
  if (auto* e = std::get_if<Error>(&opened)) co_return *e;
  auto reader = std::get<std::shared_ptr<Reader>>(std::move(opened));
  // What is sent is what was planned (and announced as the upload's size): the file as it was
  // then, or an error.
  if (int64_t now = reader->info().size; now != p->src_info.size)
    co_return Error{ErrorCode::kConflict,
                    to_uri(p->src) + " is " + std::to_string(now) + " bytes now, " + std::to_string(p->src_info.size) +
                        " when the transfer was planned",
                    "stage it again", {}};
  auto hash = std::make_shared<crypto::Sha256>();
  auto source = std::make_shared<ChunkSource>(*reader, *hash, 16u << 20, p->src_info.size);
  {
    std::lock_guard g(live->m);
    live->source = source;
  }
  std::function<int64_t()> produce = [source, live, reader]() {
    CopyHooks hooks;
    hooks.cancel = &live->cancel;
    hooks.progress = [live](int64_t n) { live->bytes += n; };
    return source->run(hooks);
  };
  auto producer = on_pool(transfer_pool_, std::move(produce));
  auto consumer = send(live, p);
  auto results = co_await (std::move(producer) && std::move(consumer));
  {
    std::lock_guard g(live->m);
    live->source.reset();
  }
  std::optional<Error> failure = std::get<1>(results);
  if (!failure)
    if (auto* e = std::get_if<Error>(&std::get<0>(results))) failure = *e;
  if (failure) co_return failure;
  std::string sha = hash->final_hex();
  if (!p->expected_sha256.empty() && sha != p->expected_sha256)
    co_return Error{ErrorCode::kIntegrityFailed, "the SHA-256 of " + to_uri(p->src) + " is " + sha + ", not the expected " +
                                                     p->expected_sha256,
                    "the upload was sent; check the file at the destination", {}};
  std::function<int()> rec = [this, p, id, sha, size = std::get<int64_t>(std::get<0>(results))]() {
    record_files(db_.db(), id, p->next_batch, {TransferFile{"", size, sha, false}});
    return 0;
  };
  co_await on_pool(transfer_pool_, std::move(rec));
  {
    std::lock_guard g(live->m);
    live->sha256 = sha;
  }
  live->files += 1;
  co_return std::nullopt;
}

asio::awaitable<std::optional<Error>> TransferService::send(std::shared_ptr<Live> live, std::shared_ptr<Plan> p) {
  std::shared_ptr<ChunkSource> source;
  {
    std::lock_guard g(live->m);
    source = live->source;
  }
  std::optional<Error> failure;
  auto check = check_work(config_.data, *address_policy_, p->project, p->url.url);
  auto checked = co_await on_pool(areas_.pool(), std::move(check));
  if (auto* e = std::get_if<Error>(&checked)) {
    failure = *e;
  } else {
    http::Request q = base_request(config_.data, std::get<Checked>(checked));
    q.method = "PUT";
    q.upload_size = p->src_info.size;
    q.on_read = [source](char* buf, std::size_t n) { return source->take(buf, n); };
    q.max_body = 64 * 1024;
    auto op = curl_->perform(std::move(q));
    auto r = co_await asio::co_spawn(live->strand, std::move(op),
                                     asio::bind_cancellation_slot(live->http_cancel.slot(), asio::use_awaitable));
    if (live->cancel || r.cancelled) failure = cancelled_error();
    else if (auto f = source->failure()) failure = *f;
    else if (!r.error.empty())
      failure = Error{ErrorCode::kBackendUnavailable, "the upload to " + p->url.url + " broke off", "retry later", r.error};
    else if (r.status >= 300 && r.status < 400)
      failure = redirect_error("the server redirected the upload; uploads are not redirected");
    else if (r.status < 200 || r.status >= 300)
      failure = http_status_error(r.status, p->url.url);
  }
  if (failure) source->abort(*failure);
  co_return failure;
}

asio::awaitable<void> TransferService::ticker() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  while (!stopping_) {
    timer.expires_after(std::chrono::milliseconds(500));
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec || stopping_) break;
    std::vector<TransferRecord> changed;
    {
      std::lock_guard g(mutex_);
      auto now = std::chrono::steady_clock::now();
      for (auto& [id, live] : live_) {
        auto it = transfers_.find(id);
        if (it == transfers_.end() || is_final(it->second.state)) continue;
        TransferRecord& r = it->second;
        int64_t b = live->bytes.load();
        double dt = std::chrono::duration<double>(now - live->tick_time).count();
        if (dt > 0) {
          double inst = static_cast<double>(b - live->tick_bytes) / dt;
          live->rate = live->rate == 0 ? inst : 0.5 * live->rate + 0.5 * inst;
        }
        live->tick_bytes = b;
        live->tick_time = now;
        if (r.bytes_done != b || r.files_done != live->files.load() || r.files_skipped != live->skipped.load()) {
          r.bytes_done = b;
          r.files_done = live->files.load();
          r.files_skipped = live->skipped.load();
          changed.push_back(r);
        }
      }
    }
    if (!changed.empty()) {
      std::function<void(state::Database&)> op = [changed](state::Database& db) {
        for (const auto& r : changed) write_row(db, r);
      };
      co_await on_db(std::move(op));
    }
  }
}

asio::awaitable<void> TransferService::finish(std::string id, TransferState state, std::optional<Error> error) {
  TransferRecord rec;
  {
    std::lock_guard g(mutex_);
    auto it = transfers_.find(id);
    if (it == transfers_.end() || is_final(it->second.state)) co_return;
    TransferRecord& m = it->second;
    if (auto l = live_.find(id); l != live_.end()) {
      m.bytes_done = l->second->bytes.load();
      m.files_done = l->second->files.load();
      m.files_skipped = l->second->skipped.load();
      std::lock_guard lg(l->second->m);
      if (!l->second->sha256.empty()) m.sha256 = l->second->sha256;
      live_.erase(l);
    }
    m.state = state;
    m.end_ms = unix_now_ms();
    if (error) {
      m.error_code = std::string(scigate::to_string(error->code));
      m.error_message = error->message + (error->hint.empty() ? "" : " (" + error->hint + ")");
    }
    claims_.erase(id);
    plans_.erase(id);
    queue_.erase(std::remove(queue_.begin(), queue_.end(), id), queue_.end());
    rec = m;
    start_next_locked();
  }
  {
    std::function<void(state::Database&)> op = [rec](state::Database& db) { write_row(db, rec); };
    co_await on_db(std::move(op));
  }
  if (state != TransferState::kCompleted) {
    // Temporary files, whatever stopped the transfer (its workers remove theirs; a transfer
    // failed at start, or one stopped by a restart and not resumed, may have left some).
    auto dst = parse_location(rec.destination);
    auto* l = std::get_if<Location>(&dst);
    if (l && l->kind == Location::Kind::kArea && rec.resume.is_object() && rec.resume.contains("destination")) {
      auto area = areas_.open(rec.project, l->area, Access::kWrite);
      if (auto* h = std::get_if<AreaHandle>(&area)) {
        std::string path = rec.resume["destination"].get<std::string>();
        bool directory = rec.directory;
        std::function<int()> clean = [storage = h->storage, path, id, directory]() {
          if (directory) storage->discard_temps(path, id);  // one per worker may be left
          else storage->discard_temp(path, id);
          return 0;
        };
        co_await on_pool(areas_.pool(), std::move(clean));
      }
    }
  }
  log_transfer(rec);
  co_await settle(id);
}

asio::awaitable<void> TransferService::settle(std::string id) {
  TransferRecord r;
  {
    std::lock_guard g(mutex_);
    auto it = transfers_.find(id);
    if (it == transfers_.end() || !is_final(it->second.state) || it->second.settled) co_return;
    r = it->second;
  }
  MicroCredits posted = 0;
  if (!r.hold_id.empty()) {
    Hold h;
    h.id = r.hold_id;
    h.amount = r.held;
    h.project = r.project;
    json result = json::object();
    result["transfer"] = r.id;
    posted = co_await ledger_.settle(h, transfer_usage(r.bytes_done), std::move(result));
  }
  {
    std::lock_guard g(mutex_);
    auto it = transfers_.find(id);
    if (it == transfers_.end()) co_return;
    it->second.settled = true;
    it->second.cost = posted;
    r = it->second;
  }
  {
    std::function<void(state::Database&)> op = [r](state::Database& db) { write_row(db, r); };
    co_await on_db(std::move(op));
  }
  log_settled(id, posted);
}

// --- reading and cancelling ------------------------------------------------------------------

std::optional<TransferRecord> TransferService::get(const std::string& project, const std::string& id,
                                                   bool with_files) const {
  std::optional<TransferRecord> r;
  {
    std::lock_guard g(mutex_);
    auto it = transfers_.find(id);
    if (it == transfers_.end() || it->second.project != project) return std::nullopt;
    r = it->second;
    if (auto l = live_.find(id); l != live_.end() && !is_final(r->state)) {
      r->bytes_done = l->second->bytes.load();
      r->files_done = l->second->files.load();
      r->files_skipped = l->second->skipped.load();
      r->rate_bytes_per_s = l->second->rate;
    }
  }
  if (with_files) {
    auto& db = const_cast<state::DbWorker&>(db_).db();
    auto lk = db.lock();
    state::Statement st(db.handle(), "SELECT files FROM transfer_files WHERE transfer_id = ? ORDER BY batch");
    st.bind(1, id);
    while (r->files.size() < 100 && st.step())
      for (auto& f : files_from(st.column_text(0)))
        if (r->files.size() < 100) r->files.push_back(std::move(f));
  }
  return r;
}

std::vector<TransferRecord> TransferService::list(const std::string& project, const TransferFilter& f, bool* more) const {
  std::vector<const TransferRecord*> hits;
  std::lock_guard g(mutex_);
  for (const auto& [id, r] : transfers_) {
    if (r.project != project) continue;
    if (f.state && r.state != *f.state) continue;
    if (f.before && std::make_pair(r.created_ms, r.id) >= *f.before) continue;
    hits.push_back(&r);
  }
  std::sort(hits.begin(), hits.end(), [](auto* a, auto* b) {
    return a->created_ms != b->created_ms ? a->created_ms > b->created_ms : a->id > b->id;
  });
  std::vector<TransferRecord> out;
  for (std::size_t i = 0; i < hits.size() && out.size() < f.limit; ++i) {
    out.push_back(*hits[i]);
    if (auto l = live_.find(out.back().id); l != live_.end()) {
      out.back().bytes_done = l->second->bytes.load();
      out.back().files_done = l->second->files.load();
      out.back().rate_bytes_per_s = l->second->rate;
    }
  }
  if (more) *more = out.size() < hits.size();
  return out;
}

asio::awaitable<std::variant<TransferRecord, Error>> TransferService::cancel(std::string project, std::string id) {
  bool queued = false;
  {
    std::lock_guard g(mutex_);
    auto it = transfers_.find(id);
    if (it == transfers_.end() || it->second.project != project)
      co_return Error{ErrorCode::kNotFound, "no transfer " + id + " in project " + project,
                      "list_transfers shows this project's transfers", {}};
    if (is_final(it->second.state)) co_return it->second;
    if (auto l = live_.find(id); l != live_.end()) {
      l->second->cancel = true;
      auto live = l->second;
      {
        std::lock_guard lg(live->m);
        if (live->source) live->source->abort(cancelled_error());
      }
      asio::post(live->strand, [live] { live->http_cancel.emit(asio::cancellation_type::terminal); });
    } else {
      queued = true;
    }
  }
  if (queued) co_await finish(id, TransferState::kCanceled, std::nullopt);
  // The worker stops between two pieces: wait for it a little, to answer with the final state.
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (int i = 0; i < 250; ++i) {
    auto r = get(project, id);
    if (!r || is_final(r->state)) break;
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  auto r = get(project, id);
  if (!r) co_return Error{ErrorCode::kNotFound, "no transfer " + id, {}, {}};
  co_return *r;
}

}  // namespace scigate::storage
