#pragma once
// A storage area on a POSIX file system (a home, scratch, archive or shared dataset directory).
//
// Confinement rests on sandbox/confine: directories are opened with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_MAGICLINKS) from the root's descriptor (an O_NOFOLLOW walk on kernels without
// openat2), so a symlink leading out of the root is refused by the kernel at the moment of use,
// also one swapped in after any check. Leaves are never followed: a file is first opened with
// O_PATH | O_NOFOLLOW, checked (a regular file, one link unless allowed), and only then
// reopened for reading through that very descriptor, so no device or FIFO is ever opened and
// the file checked is the file read. Writes go to a temporary name in the destination's
// directory, held open by descriptor until the rename.
#include <mutex>

#include "connectors/storage/storage.hpp"
#include "server/config/config.hpp"

namespace scigate::storage {

class PosixStorage final : public Storage {
 public:
  explicit PosixStorage(AreaConfig config);
  ~PosixStorage() override;

  std::string kind() const override { return "posix"; }
  bool writable() const override { return config_.writable; }
  const AreaConfig& config() const { return config_; }

  FileInfo stat(const std::string& path) override;
  ListPage list(const std::string& path, const std::string& after, std::size_t limit) override;
  void walk(const std::string& path, const std::function<Walk(const FileInfo&)>& visit) override;
  std::unique_ptr<Reader> open_read(const std::string& path) override;
  std::unique_ptr<Writer> open_write(const std::string& path, const std::string& tag, bool resume) override;
  std::unique_ptr<Directory> open_directory(const std::string& path, bool create) override;
  std::unique_ptr<Reader> open_read_in(Directory& dir, const std::string& name) override;
  std::unique_ptr<Writer> open_write_in(Directory& dir, const std::string& name, const std::string& tag,
                                        bool resume) override;
  void discard_temp(const std::string& path, const std::string& tag) override;
  void discard_temps(const std::string& path, const std::string& tag) override;
  void make_dirs(const std::string& path) override;
  AreaUsage usage() override;

  // The name a write of `leaf` tagged `tag` uses until it is committed (hidden from list()).
  static std::string temp_name(const std::string& leaf, const std::string& tag);
  static bool is_temp_name(const std::string& name);
  // "area://<id>/<rel>", for messages.
  std::string uri(const std::string& rel) const;

 private:
  int root_fd();
  std::string relative(const std::string& path) const;
  int open_dir(const std::string& rel);  // an O_DIRECTORY fd beneath the root, or throws
  [[noreturn]] void fail(int err, const std::string& rel, const std::string& doing) const;

  AreaConfig config_;
  std::mutex mutex_;
  int root_fd_ = -1;
};

// The caller's message for an errno met while `doing` something to `uri` (for connectors and
// tools that touch areas).
Error storage_error(int err, const std::string& uri, const std::string& doing);

}  // namespace scigate::storage
