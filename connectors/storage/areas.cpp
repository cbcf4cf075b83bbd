#include "connectors/storage/areas.hpp"
#include "server/common/thread_name.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <optional>

#include "connectors/storage/blocking.hpp"
#include "connectors/storage/posix_storage.hpp"
#include "sandbox/confine.hpp"
#include "server/common/crypto.hpp"
#include "server/common/time_format.hpp"

namespace scigate::storage {

std::string human_bytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

namespace {

bool valid_area_id(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (unsigned char c : id)
    if (!(std::isalnum(c) || c == '_' || c == '-')) return false;
  return true;
}

}  // namespace

namespace {
// Why `host` (lower-cased, from `authority`) is not in the one form libcurl would connect to
// as written; nullopt when it is.
std::optional<std::string> noncanonical_host(const std::string& host, const std::string& authority) {
  if (authority.find('%') != std::string::npos) return std::string("is percent-encoded");
  if (!authority.empty() && authority.front() == '[') {
    in6_addr a6{};
    if (::inet_pton(AF_INET6, host.c_str(), &a6) != 1) return std::string("is not an IPv6 address");
    return std::nullopt;
  }
  for (unsigned char c : host)
    if (!(std::isalnum(c) || c == '-' || c == '.' || c == '_'))
      return std::string("has a character outside ASCII letters, digits, '-', '_' and '.'");
  if (host.back() == '.' || host.find("..") != std::string::npos) return std::string("has an empty label");
  in_addr a4{};
  // inet_aton takes the legacy forms (127.1, 0x7f.0.0.1, 2130706433) that libcurl resolves the
  // same way; inet_pton only the dotted quad.
  if (::inet_aton(host.c_str(), &a4) == 1 && ::inet_pton(AF_INET, host.c_str(), &a4) != 1)
    return std::string("is an IPv4 address in a shorthand form");
  return std::nullopt;
}
}  // namespace

std::variant<Location, Error> parse_location(const std::string& uri) {
  Location l;
  for (unsigned char c : uri)
    if (c < 0x20 || c == 0x7f) return Error::invalid_arguments("the location \"" + uri + "\" holds a control character");
  if (uri.rfind("area://", 0) == 0) {
    std::string rest = uri.substr(7);
    auto slash = rest.find('/');
    l.kind = Location::Kind::kArea;
    l.area = rest.substr(0, slash);
    l.path = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (!valid_area_id(l.area))
      return Error::invalid_arguments("\"" + uri + "\" does not name an area",
                                      "write area://<area>/<path>; list_files without a uri lists the project's areas");
    // A path is relative to its area. "area://a//x" would otherwise reach storage as the
    // absolute path /x (read beneath the root when it names it) while a policy's prefix rule
    // sees area://a/x: the two must read a location the same way.
    if (!l.path.empty() && l.path.front() == '/')
      return Error::invalid_arguments("\"" + uri + "\" has a path starting with '/': paths are relative to the area",
                                      "write area://" + l.area + "/<path relative to the area>");
    return l;
  }
  if (uri.rfind("https://", 0) == 0 || uri.rfind("http://", 0) == 0) {
    l.kind = Location::Kind::kHttp;
    l.url = uri;
    std::string authority = uri.substr(uri.find("://") + 3);
    authority = authority.substr(0, authority.find_first_of("/?#"));
    if (auto at = authority.rfind('@'); at != std::string::npos) authority = authority.substr(at + 1);
    if (!authority.empty() && authority.front() == '[') {
      auto close = authority.find(']');
      l.host = authority.substr(1, close == std::string::npos ? std::string::npos : close - 1);
    } else {
      l.host = authority.substr(0, authority.find(':'));
    }
    for (auto& c : l.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (l.host.empty()) return Error::invalid_arguments("\"" + uri + "\" names no host");
    // The host a policy sees (source_host, destination_host) must be the one libcurl connects
    // to: libcurl decodes percent-escapes in a host, reads "127.1" or "0x7f.0.0.1" as
    // 127.0.0.1, and converts international names. Only the plain form is accepted.
    if (auto why = noncanonical_host(l.host, authority))
      return Error::invalid_arguments("the host of \"" + uri + "\" " + *why,
                                      "write the host in its plain form: a lower-case DNS name or a dotted IPv4 / "
                                      "bracketed IPv6 address, without percent-escapes");
    return l;
  }
  return Error::invalid_arguments("\"" + uri + "\" is not a location this server knows",
                                  "write area://<area>/<path> for the project's storage, or an https:// URL");
}

std::string to_uri(const Location& l) {
  if (l.kind == Location::Kind::kHttp) return l.url;
  return "area://" + l.area + "/" + l.path;
}

Areas::Areas(const DataConfig& config, int file_threads) : config_(config), pool_(std::max(1, file_threads)) {
  name_pool_threads(pool_, static_cast<std::size_t>(std::max(1, file_threads)), "sg-files");
  for (const auto& a : config_.areas) {
    storages_.emplace(key(a), std::make_shared<PosixStorage>(a));
    if (a.quota_bytes > 0 || a.quota_files > 0) quotas_.emplace(key(a), std::make_unique<Quota>());
  }
}

Areas::~Areas() { pool_.join(); }

std::variant<AreaHandle, Error> Areas::open(const std::string& project, const std::string& id, Access access) const {
  const AreaConfig* a = config_.area_for(project, id);
  if (!a) {
    std::string known;
    for (const auto& v : visible(project)) known += (known.empty() ? "" : ", ") + v.config->id;
    return Error{ErrorCode::kNotFound, "project " + project + " has no area \"" + id + "\"",
                 known.empty() ? "this project has no storage areas; ask the site's operators"
                               : "use one of: " + known,
                 {}};
  }
  AreaHandle h;
  h.config = a;
  h.storage = storages_.at(key(*a));
  h.may_write = a->project == project && a->writable;
  if (access == Access::kWrite && !h.may_write) {
    std::string why = a->project != project ? "is shared with project " + project + " for reading only"
                                            : "is read-only";
    return Error{ErrorCode::kForbidden, "area \"" + id + "\" " + why, "write to one of the project's writable areas", {}};
  }
  return h;
}

std::vector<AreaHandle> Areas::visible(const std::string& project) const {
  std::vector<AreaHandle> out;
  for (const auto& a : config_.areas) {
    bool reader = false;
    for (const auto& r : a.readers) reader = reader || r == "*" || r == project;
    if (a.project != project && !reader) continue;
    // A project's own area hides a shared one of the same id (config refuses that clash).
    AreaHandle h;
    h.config = &a;
    h.storage = storages_.at(key(a));
    h.may_write = a.project == project && a.writable;
    out.push_back(std::move(h));
  }
  return out;
}

namespace {

std::variant<AreaHandle, Error> open_for(const Areas& areas, const std::string& project, const Location& where) {
  if (where.kind != Location::Kind::kArea)
    return Error::invalid_arguments("this tool reads storage areas; " + where.url + " is a URL",
                                    "stage it into an area with stage_data first");
  return areas.open(project, where.area, Access::kRead);
}

}  // namespace

boost::asio::awaitable<std::variant<StatResult, Error>> Areas::stat(std::string project, Location where, bool sha256,
                                                                   std::shared_ptr<CancellationFlag> cancel) {
  auto opened = open_for(*this, project, where);
  if (auto* e = std::get_if<Error>(&opened)) co_return *e;
  auto area = std::get<AreaHandle>(std::move(opened));
  std::function<StatResult()> work = [area, where, sha256, cancel]() {
    StatResult r;
    r.info = area.storage->stat(where.path);
    if (sha256 && r.info.type == FileType::kFile) {
      auto reader = area.storage->open_read(where.path);
      r.info = reader->info();
      crypto::Sha256 h;
      std::vector<char> buf(1 << 20);
      int64_t off = 0;
      for (;;) {
        if (cancel && cancel->cancelled())
          throw ErrorException(Error{ErrorCode::kCancelled, "cancelled while hashing", {}, {}});
        std::size_t n = reader->read_at(buf.data(), buf.size(), off);
        if (n == 0) break;
        h.update(buf.data(), n);
        off += static_cast<int64_t>(n);
      }
      r.sha256 = h.final_hex();
      r.info.size = off;
    }
    return r;
  };
  co_return co_await on_pool(pool_, std::move(work));
}

boost::asio::awaitable<std::variant<ListPage, Error>> Areas::list(std::string project, Location where, std::string after,
                                                                 std::size_t limit) {
  auto opened = open_for(*this, project, where);
  if (auto* e = std::get_if<Error>(&opened)) co_return *e;
  auto area = std::get<AreaHandle>(std::move(opened));
  std::function<ListPage()> work = [area, where, after, limit]() {
    return area.storage->list(where.path, after, limit);
  };
  co_return co_await on_pool(pool_, std::move(work));
}

boost::asio::awaitable<std::variant<ReadResult, Error>> Areas::read(std::string project, Location where, int64_t offset,
                                                                   int64_t length, int64_t tail) {
  auto opened = open_for(*this, project, where);
  if (auto* e = std::get_if<Error>(&opened)) co_return *e;
  auto area = std::get<AreaHandle>(std::move(opened));
  std::function<ReadResult()> work = [area, where, offset, length, tail]() {
    auto reader = area.storage->open_read(where.path);
    ReadResult r;
    r.info = reader->info();
    int64_t off = offset, len = length;
    if (tail > 0) {
      off = std::max<int64_t>(0, r.info.size - tail);
      len = tail;
    }
    r.offset = off;
    if (off < r.info.size && len > 0) {
      r.bytes.resize(static_cast<std::size_t>(std::min(len, r.info.size - off)));
      std::size_t got = 0;
      while (got < r.bytes.size()) {
        std::size_t n = reader->read_at(r.bytes.data() + got, r.bytes.size() - got, off + static_cast<int64_t>(got));
        if (n == 0) break;
        got += n;
      }
      r.bytes.resize(got);
    }
    return r;
  };
  co_return co_await on_pool(pool_, std::move(work));
}

std::optional<Error> Areas::check_write(const std::string& project, const Location& where) const {
  if (where.kind != Location::Kind::kArea)
    return Error::invalid_arguments("a file can be written only to a storage area, not to " + where.url,
                                    "name a location such as area://scratch/results/out.jsonl");
  auto opened = open(project, where.area, Access::kWrite);
  if (auto* e = std::get_if<Error>(&opened)) return *e;
  std::string why;
  auto rel = sandbox::confine_relative(std::get<AreaHandle>(opened).config->root, where.path, &why, "area " + where.area);
  if (!rel)
    return Error{ErrorCode::kForbidden, "the path \"" + where.path + "\" " + why,
                 "name a path inside the area, relative to its root", {}};
  if (rel->empty()) return Error::invalid_arguments("name a file, not the area's root", "e.g. area://" + where.area + "/out.jsonl");
  return std::nullopt;
}

boost::asio::awaitable<std::variant<WriteResult, Error>> Areas::write(std::string project, Location where,
                                                                     std::shared_ptr<const std::string> bytes) {
  if (auto refused = check_write(project, where)) co_return *refused;
  auto area = std::get<AreaHandle>(open(project, where.area, Access::kWrite));  // checked just above
  std::function<WriteResult()> work = [this, area, where, bytes]() {
    const auto size = static_cast<int64_t>(bytes->size());
    Reservation reserved;
    if (auto e = reserve(area, size, 1, &reserved)) throw ErrorException(*e);
    std::unique_ptr<Writer> writer;
    try {
      writer = area.storage->open_write(where.path, "w" + crypto::random_hex(4), false);
      writer->write_at(bytes->data(), bytes->size(), 0);
      writer->commit(Overwrite::kNever);
    } catch (...) {
      if (writer) writer->discard();
      release(reserved, 0, 0);
      throw;
    }
    release(reserved, size, 1);
    crypto::Sha256 h;
    h.update(bytes->data(), bytes->size());
    return WriteResult{size, h.final_hex()};
  };
  co_return co_await on_pool(pool_, std::move(work));
}

Areas::Quota* Areas::quota(const std::string& k) {
  auto it = quotas_.find(k);
  return it == quotas_.end() ? nullptr : it->second.get();
}

std::optional<Error> Areas::reserve(const AreaHandle& area, int64_t bytes, int64_t files, Reservation* out) {
  *out = Reservation{};
  const AreaConfig& a = *area.config;
  Quota* q = quota(key(a));
  if (!q) return std::nullopt;
  int64_t now = unix_now_ms();
  bool stale;
  {
    std::lock_guard g(q->m);
    stale = q->measured_ms == 0 || now - q->measured_ms > config_.quota_scan_interval.count() * 1000;
  }
  if (stale) {
    AreaUsage u = area.storage->usage();  // the walk, outside the lock
    std::lock_guard g(q->m);
    q->measured = u;
    q->measured_ms = now;
  }
  std::lock_guard g(q->m);
  if (!q->measured.complete)
    return Error{ErrorCode::kQuotaExceeded,
                 "area " + a.id + " has a quota, and part of it could not be measured (directories nested deeper than " +
                     std::to_string(kMaxUsageDepth) + " levels, or one that cannot be opened): nothing more is written to it",
                 "remove the deeply nested directories from the area (or ask the operators to), or choose another area", {}};
  int64_t used_bytes = q->measured.bytes + q->reserved_bytes;
  int64_t used_files = q->measured.files + q->reserved_files;
  if (a.quota_bytes > 0 && used_bytes + bytes > a.quota_bytes) {
    int64_t left = std::max<int64_t>(0, a.quota_bytes - used_bytes);
    return Error{ErrorCode::kQuotaExceeded,
                 "area " + a.id + " has " + human_bytes(left) + " left of its " + human_bytes(a.quota_bytes) +
                     " quota (in use or reserved: " + human_bytes(used_bytes) + "); this transfer needs " +
                     human_bytes(bytes),
                 "remove files from the area, stage less, or choose another area", {}};
  }
  if (a.quota_files > 0 && used_files + files > a.quota_files) {
    int64_t left = std::max<int64_t>(0, a.quota_files - used_files);
    return Error{ErrorCode::kQuotaExceeded,
                 "area " + a.id + " may hold " + std::to_string(left) + " more files of its quota of " +
                     std::to_string(a.quota_files) + "; this transfer needs " + std::to_string(files),
                 "remove files from the area, stage fewer, or choose another area", {}};
  }
  q->reserved_bytes += bytes;
  q->reserved_files += files;
  out->area_key = key(a);
  out->bytes = bytes;
  out->files = files;
  return std::nullopt;
}

std::optional<Error> Areas::grow(Reservation& r, int64_t bytes, int64_t files) {
  if (r.area_key.empty()) return std::nullopt;
  Quota* q = quota(r.area_key);
  const AreaConfig* a = nullptr;
  for (const auto& x : config_.areas)
    if (key(x) == r.area_key) a = &x;
  if (!q || !a) return std::nullopt;
  std::lock_guard g(q->m);
  int64_t used_bytes = q->measured.bytes + q->reserved_bytes;
  int64_t used_files = q->measured.files + q->reserved_files;
  if ((a->quota_bytes > 0 && used_bytes + bytes > a->quota_bytes) ||
      (a->quota_files > 0 && used_files + files > a->quota_files))
    return Error{ErrorCode::kQuotaExceeded,
                 "area " + a->id + " reached its quota during the transfer (" + human_bytes(a->quota_bytes) + ", " +
                     std::to_string(a->quota_files) + " files); more data arrived than was announced",
                 "free space in the area and stage again", {}};
  q->reserved_bytes += bytes;
  q->reserved_files += files;
  r.bytes += bytes;
  r.files += files;
  return std::nullopt;
}

void Areas::release(Reservation& r, int64_t bytes_written, int64_t files_written) {
  if (r.area_key.empty()) return;
  if (Quota* q = quota(r.area_key)) {
    std::lock_guard g(q->m);
    q->reserved_bytes -= r.bytes;
    q->reserved_files -= r.files;
    if (q->measured_ms != 0) {
      q->measured.bytes += bytes_written;
      q->measured.files += files_written;
    }
  }
  r = Reservation{};
}

std::optional<AreaUsage> Areas::usage_estimate(const AreaHandle& area) {
  Quota* q = quota(key(*area.config));
  if (!q) return std::nullopt;
  std::lock_guard g(q->m);
  if (q->measured_ms == 0) return std::nullopt;
  return AreaUsage{q->measured.bytes + q->reserved_bytes, q->measured.files + q->reserved_files};
}

}  // namespace scigate::storage
