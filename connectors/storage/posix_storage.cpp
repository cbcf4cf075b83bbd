#include "connectors/storage/posix_storage.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <queue>

#include "sandbox/confine.hpp"
#include "server/common/crypto.hpp"

namespace scigate::storage {

const char* to_string(FileType t) {
  switch (t) {
    case FileType::kFile: return "file";
    case FileType::kDirectory: return "directory";
    case FileType::kSymlink: return "symlink";
    case FileType::kOther: return "other";
  }
  return "other";
}

namespace {

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd = o.fd;
      o.fd = -1;
    }
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

FileType type_of(mode_t m) {
  if (S_ISREG(m)) return FileType::kFile;
  if (S_ISDIR(m)) return FileType::kDirectory;
  if (S_ISLNK(m)) return FileType::kSymlink;
  return FileType::kOther;
}

FileInfo info_of(const struct stat& st, const std::string& rel, const std::string& name) {
  FileInfo f;
  f.path = rel;
  f.name = name;
  f.type = type_of(st.st_mode);
  f.size = static_cast<int64_t>(st.st_size);
  f.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  f.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
  f.mode = st.st_mode & 07777;
  f.nlink = st.st_nlink;
  f.device = st.st_dev;
  f.inode = st.st_ino;
  return f;
}

std::string join(const std::string& dir, const std::string& name) { return dir.empty() ? name : dir + "/" + name; }

std::pair<std::string, std::string> split(const std::string& rel) {
  auto slash = rel.rfind('/');
  if (slash == std::string::npos) return {"", rel};
  return {rel.substr(0, slash), rel.substr(slash + 1)};
}

// Directory entries' names, without "." and "..". Consumes `fd`.
std::vector<std::string> read_names(int fd, const std::function<void(const char*)>& each = {}) {
  std::vector<std::string> names;
  DIR* d = ::fdopendir(fd);
  if (!d) {
    int e = errno;
    ::close(fd);
    throw ErrorException(storage_error(e, "a directory", "read"));
  }
  while (dirent* de = ::readdir(d)) {
    if (std::strcmp(de->d_name, ".") == 0 || std::strcmp(de->d_name, "..") == 0) continue;
    if (each) each(de->d_name);
    else names.emplace_back(de->d_name);
  }
  ::closedir(d);
  return names;
}

class PosixReader final : public Reader {
 public:
  PosixReader(Fd fd, FileInfo info, std::string uri) : fd_(std::move(fd)), info_(std::move(info)), uri_(std::move(uri)) {
    if (info_.size > (1 << 20)) ::posix_fadvise(fd_.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  const FileInfo& info() const override { return info_; }
  std::size_t read_at(char* buf, std::size_t n, int64_t offset) override {
    for (;;) {
      ssize_t r = ::pread(fd_.fd, buf, n, offset);
      if (r >= 0) return static_cast<std::size_t>(r);
      if (errno == EINTR) continue;
      throw ErrorException(storage_error(errno, uri_, "read"));
    }
  }
  FileInfo current() override {
    struct stat st{};
    if (::fstat(fd_.fd, &st) != 0) throw ErrorException(storage_error(errno, uri_, "stat"));
    return info_of(st, info_.path, info_.name);
  }

 private:
  Fd fd_;
  FileInfo info_;
  std::string uri_;
};

class PosixWriter final : public Writer {
 public:
  PosixWriter(std::shared_ptr<Fd> dir, Fd file, std::string leaf, std::string temp, std::string uri, int64_t existing,
              bool existed, bool fsync)
      : dir_(std::move(dir)), file_(std::move(file)), leaf_(std::move(leaf)), temp_(std::move(temp)),
        uri_(std::move(uri)), existing_(existing), existed_(existed), fsync_(fsync) {}
  // An uncommitted temporary file stays for a resumed attempt; the transfer ledger removes it
  // (discard) when it gives up.
  int64_t existing_size() const override { return existing_; }
  bool existed() const override { return existed_; }
  void write_at(const char* buf, std::size_t n, int64_t offset) override {
    while (n > 0) {
      ssize_t w = ::pwrite(file_.fd, buf, n, offset);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw ErrorException(storage_error(errno, uri_, "write"));
      }
      buf += w;
      n -= static_cast<std::size_t>(w);
      offset += w;
    }
  }
  void truncate(int64_t size) override {
    if (::ftruncate(file_.fd, size) != 0) throw ErrorException(storage_error(errno, uri_, "truncate"));
    existing_ = std::min(existing_, size);
  }
  std::size_t read_back(char* buf, std::size_t n, int64_t offset) override {
    for (;;) {
      ssize_t r = ::pread(file_.fd, buf, n, offset);
      if (r >= 0) return static_cast<std::size_t>(r);
      if (errno == EINTR) continue;
      throw ErrorException(storage_error(errno, uri_, "read back"));
    }
  }
  void commit(Overwrite overwrite) override {
    if (fsync_ && ::fsync(file_.fd) != 0) throw ErrorException(storage_error(errno, uri_, "flush"));
    file_.reset();
    unsigned flags = overwrite == Overwrite::kNever ? RENAME_NOREPLACE : 0;
    int rc = ::renameat2(dir_->fd, temp_.c_str(), dir_->fd, leaf_.c_str(), flags);
    if (rc != 0 && errno == EINVAL && flags != 0) {
      // A file system without RENAME_NOREPLACE: link() refuses an existing name just as atomically.
      rc = ::linkat(dir_->fd, temp_.c_str(), dir_->fd, leaf_.c_str(), 0);
      if (rc == 0) ::unlinkat(dir_->fd, temp_.c_str(), 0);
    }
    if (rc != 0) {
      int e = errno;
      if (e == EEXIST || e == ENOTEMPTY || e == EISDIR) {
        throw ErrorException(Error{ErrorCode::kConflict, uri_ + " already exists",
                                   "choose another destination, or pass overwrite \"always\" to replace it", {}});
      }
      throw ErrorException(storage_error(e, uri_, "rename into place"));
    }
    committed_ = true;
    if (fsync_) ::fsync(dir_->fd);
  }
  void discard() override {
    if (committed_ || discarded_) return;
    file_.reset();
    ::unlinkat(dir_->fd, temp_.c_str(), 0);
    discarded_ = true;
  }

 private:
  std::shared_ptr<Fd> dir_;
  Fd file_;
  std::string leaf_, temp_, uri_;
  int64_t existing_ = 0;
  bool existed_ = false;
  bool fsync_ = false;
  bool committed_ = false, discarded_ = false;
};

class PosixDirectory final : public Directory {
 public:
  PosixDirectory(std::shared_ptr<Fd> fd, std::string path) : fd(std::move(fd)), path_(std::move(path)) {}
  const std::string& path() const override { return path_; }
  std::shared_ptr<Fd> fd;

 private:
  std::string path_;
};

bool valid_name(const std::string& n) { return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos; }

}  // namespace

Error storage_error(int err, const std::string& uri, const std::string& doing) {
  std::string detail = doing + " " + uri + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return Error{ErrorCode::kNotFound, uri + " does not exist", "list_files shows what the area holds", detail};
    case ENOTDIR:
      return Error{ErrorCode::kInvalidArguments, uri + ": a component of the path is not a directory", {}, detail};
    case EISDIR:
      return Error{ErrorCode::kInvalidArguments, uri + " is a directory",
                   "name a file, or stage the directory with recursive = true", detail};
    case EXDEV:
    case ELOOP:
      return Error{ErrorCode::kForbidden, uri + " leads through a symbolic link (or \"..\") out of its area, or is a link",
                   "name the file itself, inside the area", detail};
    case EACCES:
    case EPERM:
      return Error{ErrorCode::kForbidden, "the gateway may not " + doing + " " + uri,
                   "ask the site's operators about the file's permissions", detail};
    case ENOSPC:
      return Error{ErrorCode::kQuotaExceeded, "the file system holding " + uri + " is full",
                   "free space in the area or choose another destination", detail};
    case EDQUOT:
      return Error{ErrorCode::kQuotaExceeded, "the file system quota for " + uri + " is exhausted",
                   "free space in the area or choose another destination", detail};
    case ENAMETOOLONG:
      return Error{ErrorCode::kInvalidArguments, uri + ": the name is too long", {}, detail};
    case EROFS:
      return Error{ErrorCode::kForbidden, uri + " is on a read-only file system", {}, detail};
    default:
      return Error{ErrorCode::kBackendUnavailable, "cannot " + doing + " " + uri, "retry later", detail};
  }
}

PosixStorage::PosixStorage(AreaConfig config) : config_(std::move(config)) {}

PosixStorage::~PosixStorage() {
  if (root_fd_ >= 0) ::close(root_fd_);
}

std::string PosixStorage::uri(const std::string& rel) const { return "area://" + config_.id + "/" + rel; }

std::string PosixStorage::temp_name(const std::string& leaf, const std::string& tag) {
  return ".scigate-" + tag + "-" + crypto::sha256_hex(leaf).substr(0, 16) + ".part";
}

bool PosixStorage::is_temp_name(const std::string& name) {
  return name.rfind(".scigate-", 0) == 0 && name.size() > 5 && name.compare(name.size() - 5, 5, ".part") == 0;
}

int PosixStorage::root_fd() {
  std::lock_guard g(mutex_);
  if (root_fd_ >= 0) return root_fd_;
  int fd = ::open(config_.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT && config_.create && !config_.project.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(config_.root, ec);
    fd = ::open(config_.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  if (fd < 0) {
    throw ErrorException(Error{ErrorCode::kBackendUnavailable, "area " + config_.id + " is unavailable",
                               "ask the site's operators; the area's directory cannot be opened",
                               "open " + config_.root.string() + ": " + std::strerror(errno)});
  }
  root_fd_ = fd;
  return root_fd_;
}

std::string PosixStorage::relative(const std::string& path) const {
  std::string why;
  auto rel = sandbox::confine_relative(config_.root, path, &why, "area " + config_.id);
  if (!rel)
    throw ErrorException(Error{ErrorCode::kForbidden, "the path \"" + path + "\" " + why,
                               "name a path inside the area, relative to its root", {}});
  if (rel->size() > 4000) throw ErrorException(Error::invalid_arguments("the path is too long"));
  return *rel;
}

void PosixStorage::fail(int err, const std::string& rel, const std::string& doing) const {
  throw ErrorException(storage_error(err, uri(rel), doing));
}

int PosixStorage::open_dir(const std::string& rel) {
  int fd = sandbox::open_beneath(root_fd(), rel.c_str());
  if (fd < 0) fail(errno, rel, "open");
  return fd;
}

FileInfo PosixStorage::stat(const std::string& path) {
  std::string rel = relative(path);
  struct stat st{};
  if (rel.empty()) {
    if (::fstat(root_fd(), &st) != 0) fail(errno, rel, "stat");
    return info_of(st, "", "");
  }
  auto [parent, leaf] = split(rel);
  Fd dir(open_dir(parent));
  if (::fstatat(dir.fd, leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) fail(errno, rel, "stat");
  return info_of(st, rel, leaf);
}

ListPage PosixStorage::list(const std::string& path, const std::string& after, std::size_t limit) {
  std::string rel = relative(path);
  Fd dir(open_dir(rel));
  struct stat dst{};
  if (::fstat(dir.fd, &dst) != 0) fail(errno, rel, "list");
  if (!S_ISDIR(dst.st_mode)) fail(ENOTDIR, rel, "list");
  // The `limit` smallest names after `after`, without sorting (or stat-ing) the whole directory.
  std::priority_queue<std::string> keep;  // a max-heap: its top is the first to drop
  ListPage page;
  int dup = ::fcntl(dir.fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) fail(errno, rel, "list");
  std::size_t beyond = 0;
  read_names(dup, [&](const char* name) {
    ++page.scanned;
    if (is_temp_name(name)) return;
    if (!after.empty() && std::strcmp(name, after.c_str()) <= 0) return;
    ++beyond;
    if (keep.size() < limit) {
      keep.emplace(name);
    } else if (!keep.empty() && keep.top() > name) {
      keep.pop();
      keep.emplace(name);
    }
  });
  page.more = beyond > keep.size();
  std::vector<std::string> names;
  while (!keep.empty()) {
    names.push_back(keep.top());
    keep.pop();
  }
  std::reverse(names.begin(), names.end());
  for (const auto& n : names) {
    struct stat st{};
    if (::fstatat(dir.fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // removed meanwhile
    page.entries.push_back(info_of(st, join(rel, n), n));
  }
  return page;
}

void PosixStorage::walk(const std::string& path, const std::function<Walk(const FileInfo&)>& visit) {
  std::string rel = relative(path);
  Fd top(open_dir(rel));
  // Depth first with one descriptor per level: a link swapped in for a directory is refused
  // by O_NOFOLLOW when it is opened, and a directory moved away keeps being read where it is.
  std::function<bool(int, const std::string&, int)> descend = [&](int fd, const std::string& prefix, int depth) {
    if (depth > 256) fail(ELOOP, prefix, "walk");
    int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) fail(errno, prefix, "walk");
    auto names = read_names(dup);
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      if (is_temp_name(n)) continue;
      struct stat st{};
      if (::fstatat(fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      FileInfo info = info_of(st, join(prefix, n), n);
      Walk next = visit(info);
      if (next == Walk::kStop) return false;
      if (S_ISDIR(st.st_mode) && next == Walk::kNext) {
        Fd child(::openat(fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (child.fd < 0) continue;  // replaced by a link or removed meanwhile
        if (!descend(child.fd, info.path, depth + 1)) return false;
      }
    }
    return true;
  };
  descend(top.fd, rel, 0);
}

std::unique_ptr<Directory> PosixStorage::open_directory(const std::string& path, bool create) {
  std::string rel = relative(path);
  int fd = sandbox::open_beneath(root_fd(), rel.c_str());
  if (fd < 0 && errno == ENOENT && create) {
    if (!config_.writable)
      throw ErrorException(Error{ErrorCode::kForbidden, "area " + config_.id + " is read-only", {}, {}});
    // The parent usually exists (many files into one directory): one openat2, and the mkdir
    // walk only when it does not.
    if (int e = sandbox::make_dirs_at(root_fd(), rel, 0777, &fd); e != 0) fail(e, rel, "create directory");
  } else if (fd < 0) {
    fail(errno, rel, "open");
  }
  return std::make_unique<PosixDirectory>(std::make_shared<Fd>(fd), rel);
}

std::unique_ptr<Reader> PosixStorage::open_read(const std::string& path) {
  std::string rel = relative(path);
  if (rel.empty()) fail(EISDIR, rel, "read");
  auto [parent, leaf] = split(rel);
  auto dir = open_directory(parent, false);
  return open_read_in(*dir, leaf);
}

std::unique_ptr<Reader> PosixStorage::open_read_in(Directory& d, const std::string& leaf) {
  auto& dir = static_cast<PosixDirectory&>(d);
  const std::string rel = join(dir.path(), leaf);
  if (!valid_name(leaf)) fail(EINVAL, rel, "open");
  // O_PATH opens nothing: no device driver, no FIFO. The checks below are on this very inode.
  Fd handle(::openat(dir.fd->fd, leaf.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (handle.fd < 0) fail(errno, rel, "open");
  struct stat st{};
  if (::fstat(handle.fd, &st) != 0) fail(errno, rel, "stat");
  if (S_ISLNK(st.st_mode))
    throw ErrorException(Error{ErrorCode::kForbidden, uri(rel) + " is a symbolic link; links are not followed",
                               "name the file it points to, inside the area", {}});
  if (S_ISDIR(st.st_mode)) fail(EISDIR, rel, "read");
  if (!S_ISREG(st.st_mode))
    throw ErrorException(Error{ErrorCode::kForbidden,
                               uri(rel) + " is not a regular file (a device, FIFO or socket); only files are read", {},
                               {}});
  if (st.st_nlink > 1 && !config_.allow_hard_links)
    throw ErrorException(Error{ErrorCode::kForbidden,
                               uri(rel) + " has " + std::to_string(st.st_nlink) +
                                   " hard links; files with more than one are not read here (one may lie outside the area)",
                               "copy the file to a new name first (a copy has one link)", {}});
  // Reopened through the O_PATH descriptor's magic link: the very inode checked, for reading.
  char proc[48];
  std::snprintf(proc, sizeof proc, "/proc/self/fd/%d", handle.fd);
  Fd fd(::open(proc, O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (fd.fd < 0 && errno == ENOENT) {
    // No /proc: open by name (still never a link), then make sure it is the inode checked.
    fd = Fd(::openat(dir.fd->fd, leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    struct stat again{};
    if (fd.fd >= 0 && (::fstat(fd.fd, &again) != 0 || again.st_dev != st.st_dev || again.st_ino != st.st_ino))
      throw ErrorException(Error{ErrorCode::kConflict, uri(rel) + " changed while it was opened", "retry", {}});
  }
  if (fd.fd < 0) fail(errno, rel, "open");
  return std::make_unique<PosixReader>(std::move(fd), info_of(st, rel, leaf), uri(rel));
}

std::unique_ptr<Writer> PosixStorage::open_write(const std::string& path, const std::string& tag, bool resume) {
  std::string rel = relative(path);
  if (!config_.writable)
    throw ErrorException(Error{ErrorCode::kForbidden, "area " + config_.id + " is read-only",
                               "stage data into a writable area of the project", {}});
  if (rel.empty()) fail(EISDIR, rel, "write");
  auto [parent, leaf] = split(rel);
  auto dir = open_directory(parent, true);
  return open_write_in(*dir, leaf, tag, resume);
}

std::unique_ptr<Writer> PosixStorage::open_write_in(Directory& d, const std::string& leaf, const std::string& tag,
                                                    bool resume) {
  auto& dir = static_cast<PosixDirectory&>(d);
  const std::string rel = join(dir.path(), leaf);
  if (!config_.writable)
    throw ErrorException(Error{ErrorCode::kForbidden, "area " + config_.id + " is read-only",
                               "stage data into a writable area of the project", {}});
  if (!valid_name(leaf)) fail(EINVAL, rel, "write");
  const int dfd = dir.fd->fd;
  std::string temp = temp_name(leaf, tag);
  Fd file;
  int64_t existing = 0;
  bool existed = false;
  if (resume) {
    file = Fd(::openat(dfd, temp.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
    if (file.fd >= 0) {
      struct stat ts{};
      if (::fstat(file.fd, &ts) != 0 || !S_ISREG(ts.st_mode) || ts.st_nlink != 1) {
        file.reset();
        ::unlinkat(dfd, temp.c_str(), 0);
      } else {
        existing = static_cast<int64_t>(ts.st_size);
        existed = true;
      }
    }
  }
  if (file.fd < 0) {
    const int flags = O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    file = Fd(::openat(dfd, temp.c_str(), flags, 0666));
    if (file.fd < 0 && errno == EEXIST) {  // an earlier attempt's, not to be resumed
      ::unlinkat(dfd, temp.c_str(), 0);
      file = Fd(::openat(dfd, temp.c_str(), flags, 0666));
    }
    if (file.fd < 0) {
      int e = errno;
      struct stat st{};
      if (::fstatat(dfd, leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) e = EISDIR;
      fail(e, rel, "create");
    }
  }
  return std::make_unique<PosixWriter>(dir.fd, std::move(file), leaf, temp, uri(rel), existing, existed, config_.fsync);
}

void PosixStorage::discard_temp(const std::string& path, const std::string& tag) {
  std::string rel = relative(path);
  auto [parent, leaf] = split(rel);
  int fd = sandbox::open_beneath(root_fd(), parent.c_str());
  if (fd < 0) return;
  ::unlinkat(fd, temp_name(leaf, tag).c_str(), 0);
  ::close(fd);
}

void PosixStorage::discard_temps(const std::string& path, const std::string& tag) {
  std::string rel = relative(path);
  int top = sandbox::open_beneath(root_fd(), rel.c_str());
  if (top < 0) return;
  Fd guard(top);
  const std::string prefix = ".scigate-" + tag + "-";
  std::function<void(int, int)> sweep = [&](int fd, int depth) {
    if (depth > 256) return;
    int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return;
    for (const auto& n : read_names(dup)) {
      if (n.rfind(prefix, 0) == 0 && is_temp_name(n)) {
        ::unlinkat(fd, n.c_str(), 0);
        continue;
      }
      Fd child(::openat(fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (child.fd >= 0) sweep(child.fd, depth + 1);
    }
  };
  sweep(top, 0);
}

void PosixStorage::make_dirs(const std::string& path) {
  std::string rel = relative(path);
  if (!config_.writable)
    throw ErrorException(Error{ErrorCode::kForbidden, "area " + config_.id + " is read-only", {}, {}});
  if (int e = sandbox::make_dirs_at(root_fd(), rel, 0777); e != 0) fail(e, rel, "create directory");
}

AreaUsage PosixStorage::usage() {
  AreaUsage u;
  // Temporary files count too: they hold space until they are renamed or removed.
  std::function<void(int, int)> descend = [&](int fd, int depth) {
    if (depth > kMaxUsageDepth) {
      u.complete = false;
      return;
    }
    // A new open of the directory, not a dup of `fd`: a dup shares its read position, and the
    // area's root descriptor (kept open) would be left at its end after the first walk, so every
    // later walk found an empty area and the quota was never enforced again.
    int dup = ::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dup < 0) {
      u.complete = false;
      return;
    }
    for (const auto& n : read_names(dup)) {
      struct stat st{};
      if (::fstatat(fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      ++u.files;
      if (S_ISREG(st.st_mode)) u.bytes += static_cast<int64_t>(st.st_size);
      if (S_ISDIR(st.st_mode)) {
        Fd child(::openat(fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (child.fd >= 0) descend(child.fd, depth + 1);
        else u.complete = false;
      }
    }
  };
  descend(root_fd(), 0);
  return u;
}

}  // namespace scigate::storage
