#pragma once
// Signed checkpoints of the audit chain, kept outside the database.
//
// The hash chain shows any edit, deletion, insertion or reordering of records, but not the
// removal of the newest ones (the shorter chain is still a valid chain), and someone who can
// write the database could recompute every hash after an edit. So every N records or T seconds
// (and at a clean stop) the audit writer appends a checkpoint — the last record's seq and hash,
// signed with an Ed25519 key — to a JSONL file beside the config. A verifier holding the public
// key then knows those records existed with exactly those hashes.
//
// One line per checkpoint, canonical JSON (RFC 8785), members in this order:
//   {"hash":"<hex>","key_id":"<16 hex>","seq":N,"sig":"<base64>","time_ms":N,
//    "type":"scigate.audit.checkpoint.v1"}
// `sig` is the Ed25519 signature over the canonical JSON of the same object without `sig`.
// `key_id` is the first 16 hex digits of SHA-256 over the raw 32-byte public key.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef struct evp_pkey_st EVP_PKEY;

namespace scigate::audit {

inline constexpr std::string_view kCheckpointType = "scigate.audit.checkpoint.v1";

// An Ed25519 key: the private key (signs and verifies) or only the public one (verifies).
// Immutable after loading; safe to share between threads.
class SigningKey {
 public:
  // Loads the PEM private key at `path`, or creates one there (PKCS#8 PEM, mode 0600, in a
  // directory that must exist) when the file does not exist. `created` says which happened.
  // Throws std::runtime_error on an unreadable file, or a key that is not Ed25519.
  static SigningKey load_or_create(const std::filesystem::path& path, bool* created = nullptr);
  // A PEM file holding an Ed25519 public key ("BEGIN PUBLIC KEY") or private key.
  static SigningKey load(const std::filesystem::path& path);
  static SigningKey from_pem(std::string_view pem);

  bool can_sign() const { return private_; }
  std::string sign(std::string_view message) const;  // the 64-byte signature
  bool verify(std::string_view message, std::string_view signature) const;
  std::string public_pem() const;  // "-----BEGIN PUBLIC KEY-----..."
  const std::string& key_id() const { return key_id_; }

 private:
  std::shared_ptr<EVP_PKEY> pkey_;
  bool private_ = false;
  std::string key_id_;
};

struct Checkpoint {
  int64_t seq = 0;
  std::string hash;
  int64_t time_ms = 0;
  std::string key_id;
  std::string signature;  // base64 of the raw signature
  int line = 0;           // 1-based line in the file it was read from
};

// What the signature covers (canonical JSON of the checkpoint without "sig").
std::string checkpoint_message(const Checkpoint& c);
// The file line (canonical JSON, no newline).
std::string checkpoint_line(const Checkpoint& c);
Checkpoint make_checkpoint(const SigningKey& key, int64_t seq, std::string hash, int64_t time_ms);
bool checkpoint_signature_ok(const SigningKey& key, const Checkpoint& c);

struct CheckpointFile {
  bool exists = false;
  std::vector<Checkpoint> checkpoints;  // in file order
  std::vector<std::string> problems;    // lines that are not checkpoints ("line 7: ...")
  bool torn_tail = false;               // the last line has no newline (a write cut short): ignored
};
// Reads every checkpoint in `path`; a missing file is an empty result with exists = false.
CheckpointFile read_checkpoints(const std::filesystem::path& path);
// The newest complete checkpoint line of `path` (reads only the end of the file).
std::optional<Checkpoint> read_last_checkpoint(const std::filesystem::path& path);

// Appends checkpoints to the file and makes each durable (fdatasync) before returning. Opening
// repairs a line torn by a crash mid-write (cuts it off) and finds the last checkpoint. Each
// step holds an exclusive flock on the file, so processes sharing it never interleave or cut
// off each other's lines. Thread-safety: one thread at a time (the audit writer's).
class CheckpointWriter {
 public:
  CheckpointWriter(std::filesystem::path path, SigningKey key);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  const std::optional<Checkpoint>& last() const { return last_; }
  const SigningKey& key() const { return key_; }
  const std::filesystem::path& path() const { return path_; }
  // Throws std::runtime_error when the write or sync fails.
  void write(int64_t seq, const std::string& hash, int64_t time_ms);

 private:
  std::filesystem::path path_;
  SigningKey key_;
  int fd_ = -1;
  std::optional<Checkpoint> last_;
};

}  // namespace scigate::audit
