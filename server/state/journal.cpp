#include "server/state/journal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace scigate::state {
namespace {

constexpr char kMagic[4] = {'S', 'G', 'J', '1'};
constexpr std::size_t kHeader = 32;  // magic 4, length 4, seq 8, checksum 8, tag 1, zero 7
constexpr uint32_t kMaxPayload = 64u << 20;

// FNV-1a, 64 bits: finds a torn or overwritten entry; it is not a defence against tampering
// (the audit chain and its signed checkpoints are).
uint64_t fnv1a(uint64_t h, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t checksum(uint64_t seq, char tag, std::string_view payload) {
  uint64_t h = 14695981039346656037ull;
  h = fnv1a(h, &seq, sizeof seq);
  h = fnv1a(h, &tag, 1);
  return fnv1a(h, payload.data(), payload.size());
}

}  // namespace

Journal::Journal(std::filesystem::path path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd_ < 0) throw std::runtime_error("cannot open " + path_.string() + ": " + std::strerror(errno));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  locked_ = ::fcntl(fd_, F_OFD_SETLK, &fl) == 0;
  if (!locked_) lock_error_ = errno;
  struct stat st {};
  if (::fstat(fd_, &st) == 0) size_ = static_cast<uint64_t>(st.st_size);
}

Journal::~Journal() {
  if (fd_ >= 0) ::close(fd_);
}

Journal::Contents Journal::read() const {
  Contents out;
  std::string data;
  data.resize(size_);
  std::size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::pread(fd_, data.data() + got, data.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  data.resize(got);
  std::size_t at = 0;
  while (data.size() - at >= kHeader) {
    const char* h = data.data() + at;
    uint32_t len;
    uint64_t seq, check;
    std::memcpy(&len, h + 4, 4);
    std::memcpy(&seq, h + 8, 8);
    std::memcpy(&check, h + 16, 8);
    char tag = h[24];
    if (std::memcmp(h, kMagic, 4) != 0 || len > kMaxPayload || data.size() - at - kHeader < len) break;
    std::string_view payload(h + kHeader, len);
    if (checksum(seq, tag, payload) != check) break;
    out.entries.push_back(Entry{seq, tag, std::string(payload)});
    at += kHeader + len;
  }
  out.dropped_bytes = data.size() - at;
  return out;
}

void Journal::frame(std::string& buffer, uint64_t seq, char tag, std::string_view payload) {
  char h[kHeader] = {};
  auto len = static_cast<uint32_t>(payload.size());
  uint64_t check = checksum(seq, tag, payload);
  std::memcpy(h, kMagic, 4);
  std::memcpy(h + 4, &len, 4);
  std::memcpy(h + 8, &seq, 8);
  std::memcpy(h + 16, &check, 8);
  h[24] = tag;
  buffer.append(h, kHeader);
  buffer.append(payload);
}

int Journal::write(std::string_view buffer) {
  std::size_t done = 0;
  int err = 0;
  while (done < buffer.size()) {
    ssize_t n = ::write(fd_, buffer.data() + done, buffer.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : ENOSPC;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (err == 0) {
    size_ += buffer.size();
    return 0;
  }
  // Leave whole entries only: later appends must not follow a torn one.
  if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) err = errno ? errno : err;
  return err;
}

void Journal::clear() {
  if (::ftruncate(fd_, 0) != 0)
    throw std::runtime_error("cannot empty " + path_.string() + ": " + std::strerror(errno));
  size_ = 0;
}

}  // namespace scigate::state
