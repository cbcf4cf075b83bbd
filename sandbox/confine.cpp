#include "sandbox/confine.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <string_view>
#include <vector>

namespace scigate::sandbox {

std::optional<std::string> confine_relative(const std::filesystem::path& root, const std::string& path,
                                            std::string* why, const std::string& area) {
  auto fail = [&](std::string w) -> std::optional<std::string> {
    if (why) *why = std::move(w);
    return std::nullopt;
  };
  for (unsigned char c : path)
    if (c < 0x20 || c == 0x7f) return fail("contains a control character");
  std::string rel = path;
  if (!rel.empty() && rel.front() == '/') {
    std::string r = root.lexically_normal().string();
    while (r.size() > 1 && r.back() == '/') r.pop_back();
    if (rel == r) return std::string();
    if (rel.rfind(r + "/", 0) != 0) return fail("is an absolute path outside " + area);  // (not where that is)
    rel = rel.substr(r.size() + 1);
  }
  // Split by hand (this runs for every file of a transfer; a stringstream costs more than the
  // check).
  std::string out;
  out.reserve(rel.size());
  std::size_t i = 0;
  while (i <= rel.size()) {
    std::size_t j = rel.find('/', i);
    if (j == std::string::npos) j = rel.size();
    std::string_view part(rel.data() + i, j - i);
    if (part == "..") return fail("contains \"..\"");
    if (!part.empty() && part != ".") {
      if (!out.empty()) out += '/';
      out.append(part);
    }
    i = j + 1;
  }
  return out;
}

namespace {
// Walks `rel` from root_fd one component at a time with O_NOFOLLOW; the last component is
// opened with `last_flags` (and `mode`), the others as directories.
int open_walk(int root_fd, const char* rel, int last_flags, unsigned mode) {
  int fd = ::dup(root_fd);
  if (fd < 0) return -1;
  const char* p = rel;
  char part[256];
  while (*p) {
    while (*p == '/') ++p;
    if (!*p) break;
    std::size_t n = 0;
    while (p[n] && p[n] != '/') ++n;
    if (n >= sizeof(part)) {
      ::close(fd);
      errno = ENAMETOOLONG;
      return -1;
    }
    std::memcpy(part, p, n);
    part[n] = 0;
    p += n;
    if (std::strcmp(part, "..") == 0) {
      ::close(fd);
      errno = EXDEV;
      return -1;
    }
    while (*p == '/') ++p;
    bool last = *p == 0;
    int next = last ? ::openat(fd, part, last_flags | O_NOFOLLOW | O_CLOEXEC, mode)
                    : ::openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    ::close(fd);
    if (next < 0) return -1;
    fd = next;
  }
  return fd;
}
}  // namespace

int open_beneath(int root_fd, const char* rel) {
  struct open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  const char* path = (rel && *rel) ? rel : ".";
  long fd = ::syscall(SYS_openat2, root_fd, path, &how, sizeof how);
  if (fd >= 0) return static_cast<int>(fd);
  if (errno == ENOSYS) return open_walk(root_fd, path, O_RDONLY | O_DIRECTORY, 0);
  return -1;
}

int open_file_beneath(int root_fd, const char* rel, int flags, unsigned mode) {
  struct open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = static_cast<uint64_t>(flags | O_NOFOLLOW | O_CLOEXEC);
  if (flags & O_CREAT) how.mode = mode;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  if (!rel || !*rel) {
    errno = EISDIR;
    return -1;
  }
  long fd = ::syscall(SYS_openat2, root_fd, rel, &how, sizeof how);
  if (fd >= 0) return static_cast<int>(fd);
  if (errno == ENOSYS) return open_walk(root_fd, rel, flags, mode);
  return -1;
}

int make_dirs_beneath(const std::filesystem::path& root, const std::string& rel, unsigned mode) {
  int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int e = make_dirs_at(fd, rel, mode);
  ::close(fd);
  return e;
}

int make_dirs_at(int root_fd, const std::string& rel, unsigned mode, int* out_fd, const DirOwner* owner) {
  int fd = ::fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return errno;
  std::stringstream ss(rel);
  std::string part;
  while (std::getline(ss, part, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      ::close(fd);
      return EXDEV;
    }
    const bool created = ::mkdirat(fd, part.c_str(), mode) == 0;
    if (!created && errno != EEXIST) {
      int e = errno;
      ::close(fd);
      return e;
    }
    int next = ::openat(fd, part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    struct stat st{};
    // A symlink (ELOOP, or ENOTDIR with O_DIRECTORY) might lead out of the root: refused as such.
    if (next < 0 && ::fstatat(fd, part.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) e = EXDEV;
    ::close(fd);
    if (next < 0) return e == ELOOP ? EXDEV : e;
    if (created && owner && ::fchown(next, owner->uid, owner->gid) != 0) {
      e = errno;
      ::close(next);
      return e;
    }
    fd = next;
  }
  if (out_fd) *out_fd = fd;
  else ::close(fd);
  return 0;
}

}  // namespace scigate::sandbox
