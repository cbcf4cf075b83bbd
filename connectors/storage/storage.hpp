#pragma once
// A storage area: a tree of files that tools reach by paths relative to its root (docs/DATA.md).
//
// Every path is resolved beneath the area's root by the implementation, at the moment of use:
// "..", absolute paths, and links that lead out are refused whatever the caller checked
// before, and so are device files, FIFOs and sockets. A file is read through a Reader and
// written through a Writer on a temporary name that commit() renames into place, so a reader
// of the area never sees a partial file under its final name.
//
// Failures the caller can act on (not found, refused, read-only, exists, full) are thrown as
// ErrorException carrying an Error for the caller; anything else is a bug.
//
// Threads: every call blocks (file system calls) and must run on a worker pool, never on an
// I/O thread. A Storage may be used from several threads at once; a Reader or Writer from one
// thread at a time.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/common/error.hpp"

namespace scigate::storage {

enum class FileType { kFile, kDirectory, kSymlink, kOther };
const char* to_string(FileType t);

struct FileInfo {
  std::string path;  // relative to the area's root ("" for the root itself)
  std::string name;  // the last component
  FileType type = FileType::kOther;
  int64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint32_t mode = 0;   // permission bits
  uint64_t nlink = 0;
  uint64_t device = 0, inode = 0;  // identity: a resumed copy checks the source is still the same file
};

struct ListPage {
  std::vector<FileInfo> entries;  // sorted by name
  bool more = false;              // entries after the last one exist
  int64_t scanned = 0;            // directory entries read to answer
};

// What an area holds, as measured by a walk (quotas).
struct AreaUsage {
  int64_t bytes = 0;  // allocated size of regular files
  int64_t files = 0;  // regular files, directories and links
  // False when part of the area could not be walked (directories nested deeper than
  // kMaxUsageDepth, or one that could not be opened): a quota is then not enforceable.
  bool complete = true;
};
constexpr int kMaxUsageDepth = 256;

class Reader {
 public:
  virtual ~Reader() = default;
  virtual const FileInfo& info() const = 0;
  // Up to n bytes at `offset`; 0 at end of file.
  virtual std::size_t read_at(char* buf, std::size_t n, int64_t offset) = 0;
  // The open file as it is now (size, times): a copy checks it was not modified while read.
  virtual FileInfo current() = 0;
};

// Overwrite policy for commit().
enum class Overwrite { kNever, kAlways };

class Writer {
 public:
  virtual ~Writer() = default;
  // Bytes already in the temporary file (a resumed write keeps what an earlier attempt wrote).
  virtual int64_t existing_size() const = 0;
  // Whether the temporary file was there before (a resumed write found it).
  virtual bool existed() const = 0;
  virtual void write_at(const char* buf, std::size_t n, int64_t offset) = 0;
  virtual void truncate(int64_t size) = 0;
  // Reads back what the temporary file holds (to re-hash it before resuming).
  virtual std::size_t read_back(char* buf, std::size_t n, int64_t offset) = 0;
  // Renames the temporary file to its final name (after flushing it when the area says so).
  // kNever: an existing file of that name is left alone and commit fails with kConflict.
  virtual void commit(Overwrite overwrite) = 0;
  // Removes the temporary file (a failed or cancelled write). Harmless after commit.
  virtual void discard() = 0;
};

// An open directory of an area (resolved beneath the root when it was opened, held by
// descriptor): the files of one directory are opened and created in it without resolving the
// path again for each.
class Directory {
 public:
  virtual ~Directory() = default;
  virtual const std::string& path() const = 0;  // relative to the area's root
};

class Storage {
 public:
  virtual ~Storage() = default;
  virtual std::string kind() const = 0;
  virtual bool writable() const = 0;

  // The file or directory at `path`; a final symlink is described, never followed.
  virtual FileInfo stat(const std::string& path) = 0;
  // One page of the directory at `path`: entries whose names sort after `after`.
  virtual ListPage list(const std::string& path, const std::string& after, std::size_t limit) = 0;
  // Every entry beneath the directory at `path`, depth first, names sorted; symlinks are
  // reported and not followed. `visit` says whether to go on, to leave out a directory's
  // contents, or to stop.
  enum class Walk { kNext, kPrune, kStop };
  virtual void walk(const std::string& path, const std::function<Walk(const FileInfo&)>& visit) = 0;
  // A regular file for reading (refused: directories, links, devices, FIFOs, sockets and, unless
  // the area allows them, files with more than one hard link).
  virtual std::unique_ptr<Reader> open_read(const std::string& path) = 0;
  // A writer for `path` whose data goes to a temporary name beside it, tagged with `tag` (the
  // transfer id) so that a resumed transfer finds its own temporary file. Creates missing parent
  // directories. `resume`: keep what the temporary file holds; else start empty.
  virtual std::unique_ptr<Writer> open_write(const std::string& path, const std::string& tag, bool resume) = 0;
  // The directory at `path`; `create`: make it (and its parents) when missing (writable areas).
  virtual std::unique_ptr<Directory> open_directory(const std::string& path, bool create) = 0;
  // open_read and open_write for the entry `name` (one component) of an open directory.
  virtual std::unique_ptr<Reader> open_read_in(Directory& dir, const std::string& name) = 0;
  virtual std::unique_ptr<Writer> open_write_in(Directory& dir, const std::string& name, const std::string& tag,
                                                bool resume) = 0;
  // Removes a temporary file left by `tag` for `path`, if there is one.
  virtual void discard_temp(const std::string& path, const std::string& tag) = 0;
  // Removes every temporary file `tag` left beneath the directory `path` (a directory transfer
  // that ended without resuming).
  virtual void discard_temps(const std::string& path, const std::string& tag) = 0;
  // Creates the directory `path` and its parents.
  virtual void make_dirs(const std::string& path) = 0;
  // What the area holds now (a walk of the whole tree).
  virtual AreaUsage usage() = 0;
};

}  // namespace scigate::storage
