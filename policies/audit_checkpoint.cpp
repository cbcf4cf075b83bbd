#include "policies/audit_checkpoint.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "policies/canonical_json.hpp"
#include "server/common/crypto.hpp"

namespace scigate::audit {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string errno_text() { return std::strerror(errno); }

std::shared_ptr<EVP_PKEY> wrap(EVP_PKEY* k) { return std::shared_ptr<EVP_PKEY>(k, EVP_PKEY_free); }

std::string key_id_of(EVP_PKEY* k) {
  unsigned char raw[32];
  size_t len = sizeof raw;
  if (EVP_PKEY_get_raw_public_key(k, raw, &len) != 1 || len != 32)
    throw std::runtime_error("cannot read the Ed25519 public key");
  return crypto::sha256_hex(std::string_view(reinterpret_cast<const char*>(raw), len)).substr(0, 16);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_all(int fd, std::string_view data, const fs::path& p) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot write " + p.string() + ": " + errno_text());
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

void sync_directory(const fs::path& file) {
  fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d >= 0) {
    ::fsync(d);
    ::close(d);
  }
}

// Holds an exclusive flock while alive.
struct FileLock {
  explicit FileLock(int fd) : fd(fd) {
    while (::flock(fd, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  ~FileLock() { ::flock(fd, LOCK_UN); }
  int fd;
};

// The last `max` bytes of an open file (or all of it), starting at a line boundary when cut.
std::string read_tail(int fd, off_t size, off_t max, off_t* start_out) {
  off_t start = size > max ? size - max : 0;
  std::string tail(static_cast<std::size_t>(size - start), '\0');
  ssize_t n = ::pread(fd, tail.data(), tail.size(), start);
  if (n < 0) n = 0;
  tail.resize(static_cast<std::size_t>(n));
  if (start_out) *start_out = start;
  return tail;
}

json checkpoint_object(const Checkpoint& c) {
  json j = json::object();
  j["hash"] = c.hash;
  j["key_id"] = c.key_id;
  j["seq"] = c.seq;
  j["time_ms"] = c.time_ms;
  j["type"] = std::string(kCheckpointType);
  return j;
}

std::optional<Checkpoint> parse_line(const std::string& line, int line_no, std::string& problem) {
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    problem = "line " + std::to_string(line_no) + ": not JSON";
    return std::nullopt;
  }
  auto str = [&](const char* k) { return j.contains(k) && j[k].is_string(); };
  auto num = [&](const char* k) { return j.contains(k) && j[k].is_number_integer(); };
  if (!str("hash") || !str("key_id") || !str("sig") || !num("seq") || !num("time_ms") || !str("type") ||
      j["type"] != std::string(kCheckpointType)) {
    problem = "line " + std::to_string(line_no) + ": not a " + std::string(kCheckpointType) + " checkpoint";
    return std::nullopt;
  }
  Checkpoint c;
  c.seq = j["seq"].get<int64_t>();
  c.hash = j["hash"].get<std::string>();
  c.time_ms = j["time_ms"].get<int64_t>();
  c.key_id = j["key_id"].get<std::string>();
  c.signature = j["sig"].get<std::string>();
  c.line = line_no;
  return c;
}

}  // namespace

// --- SigningKey ------------------------------------------------------------------------------

SigningKey SigningKey::from_pem(std::string_view pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  SigningKey k;
  if (EVP_PKEY* p = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr)) {
    k.pkey_ = wrap(p);
    k.private_ = true;
  } else {
    bio.reset(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    if (EVP_PKEY* q = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr)) k.pkey_ = wrap(q);
  }
  if (!k.pkey_) throw std::runtime_error("not a PEM public or private key");
  if (EVP_PKEY_get_base_id(k.pkey_.get()) != EVP_PKEY_ED25519) throw std::runtime_error("the key is not an Ed25519 key");
  k.key_id_ = key_id_of(k.pkey_.get());
  return k;
}

SigningKey SigningKey::load(const fs::path& path) {
  try {
    return from_pem(read_file(path));
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path.string() + ": " + e.what());
  }
}

SigningKey SigningKey::load_or_create(const fs::path& path, bool* created) {
  if (created) *created = false;
  if (fs::exists(path)) return load(path);
  std::shared_ptr<EVP_PKEY> key = wrap(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  if (!key) throw std::runtime_error("cannot generate an Ed25519 key");
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1)
    throw std::runtime_error("cannot encode the Ed25519 key");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  // O_EXCL: two processes starting at once must not both write a key; the loser reads the
  // winner's.
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return load(path);
    throw std::runtime_error("cannot create " + path.string() + ": " + errno_text());
  }
  try {
    write_all(fd, std::string_view(data, static_cast<std::size_t>(len)), path);
    if (::fsync(fd) != 0) throw std::runtime_error("cannot sync " + path.string() + ": " + errno_text());
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  sync_directory(path);
  if (created) *created = true;
  SigningKey k;
  k.pkey_ = key;
  k.private_ = true;
  k.key_id_ = key_id_of(key.get());
  return k;
}

std::string SigningKey::sign(std::string_view message) const {
  if (!private_) throw std::logic_error("signing needs the private key");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  std::string sig(64, '\0');
  size_t len = sig.size();
  // Ed25519 hashes internally: no digest here, and one-shot signing.
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, pkey_.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1)
    throw std::runtime_error("Ed25519 signing failed");
  sig.resize(len);
  return sig;
}

bool SigningKey::verify(std::string_view message, std::string_view signature) const {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey_.get()) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                          reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
}

std::string SigningKey::public_pem() const {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (PEM_write_bio_PUBKEY(bio.get(), pkey_.get()) != 1) throw std::runtime_error("cannot encode the public key");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

// --- checkpoints -----------------------------------------------------------------------------

std::string checkpoint_message(const Checkpoint& c) { return canonical::dump(checkpoint_object(c)); }

std::string checkpoint_line(const Checkpoint& c) {
  json j = checkpoint_object(c);
  j["sig"] = c.signature;
  return canonical::dump(j);
}

Checkpoint make_checkpoint(const SigningKey& key, int64_t seq, std::string hash, int64_t time_ms) {
  Checkpoint c;
  c.seq = seq;
  c.hash = std::move(hash);
  c.time_ms = time_ms;
  c.key_id = key.key_id();
  c.signature = crypto::base64_encode(key.sign(checkpoint_message(c)));
  return c;
}

bool checkpoint_signature_ok(const SigningKey& key, const Checkpoint& c) {
  if (c.key_id != key.key_id()) return false;
  auto sig = crypto::base64_decode(c.signature);
  return sig && key.verify(checkpoint_message(c), *sig);
}

CheckpointFile read_checkpoints(const fs::path& path) {
  CheckpointFile out;
  if (!fs::exists(path)) return out;
  out.exists = true;
  std::string text = read_file(path);
  std::size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    ++line_no;
    if (nl == std::string::npos) {
      out.torn_tail = true;  // a write cut short by a crash: never acknowledged, never synced
      break;
    }
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) continue;
    std::string problem;
    if (auto c = parse_line(line, line_no, problem)) out.checkpoints.push_back(std::move(*c));
    else out.problems.push_back(problem);
  }
  return out;
}

static std::optional<Checkpoint> last_complete_line(const std::string& tail) {
  // The last line that ends with a newline.
  auto end = tail.rfind('\n');
  if (end == std::string::npos || end == 0) return std::nullopt;
  auto prev = tail.rfind('\n', end - 1);
  std::string line = tail.substr(prev == std::string::npos ? 0 : prev + 1, end - (prev == std::string::npos ? 0 : prev + 1));
  std::string problem;
  return parse_line(line, 0, problem);
}

std::optional<Checkpoint> read_last_checkpoint(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  std::optional<Checkpoint> out;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out = last_complete_line(read_tail(fd, st.st_size, 65536, nullptr));
  ::close(fd);
  return out;
}

CheckpointWriter::CheckpointWriter(fs::path path, SigningKey key) : path_(std::move(path)), key_(std::move(key)) {
  bool existed = fs::exists(path_);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error("cannot open " + path_.string() + ": " + errno_text());
  if (!existed) sync_directory(path_);
  FileLock lock(fd_);
  // Cut a torn last line (a crash during the write it belonged to), so the next line starts
  // clean; then remember the last checkpoint.
  struct stat st {};
  if (::fstat(fd_, &st) == 0 && st.st_size > 0) {
    off_t start = 0;
    std::string tail = read_tail(fd_, st.st_size, 65536, &start);
    if (!tail.empty() && tail.back() != '\n') {
      auto nl = tail.rfind('\n');
      off_t keep = nl == std::string::npos ? start : start + static_cast<off_t>(nl) + 1;
      if (::ftruncate(fd_, keep) == 0) ::fsync(fd_);
      tail.resize(nl == std::string::npos ? 0 : nl + 1);
    }
    // Only a checkpoint of ours counts as the last one written: a line forged or signed by
    // another key would otherwise decide when this writer checkpoints next.
    last_ = last_complete_line(tail);
    if (last_ && (last_->key_id != key_.key_id() || !checkpoint_signature_ok(key_, *last_))) last_.reset();
  }
}

CheckpointWriter::~CheckpointWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void CheckpointWriter::write(int64_t seq, const std::string& hash, int64_t time_ms) {
  Checkpoint c = make_checkpoint(key_, seq, hash, time_ms);
  FileLock lock(fd_);
  write_all(fd_, checkpoint_line(c) + "\n", path_);
  if (::fdatasync(fd_) != 0) throw std::runtime_error("cannot sync " + path_.string() + ": " + errno_text());
  last_ = std::move(c);
}

}  // namespace scigate::audit
