#pragma once
// Path confinement beneath a root directory, for job working directories and output files.
//
// Two layers: `confine_relative` is a lexical check (no "..", no absolute path outside the
// root, no control characters) that gives the caller a clear message; `open_beneath` opens the
// directory with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), so a symlink that points out
// of the root — or one swapped in after the lexical check — is refused by the kernel at the
// moment of use. Where openat2 is missing (kernels before 5.6) it walks the path one component
// at a time with O_NOFOLLOW.
#include <filesystem>
#include <optional>
#include <string>

namespace scigate::sandbox {

// `path` relative to `root` (or absolute and beneath it), normalised: "a/./b//c" -> "a/b/c";
// "" or "." -> "". nullopt with *why for "..", absolute paths elsewhere, NUL or control bytes.
// `area` names the root in that message ("the project's job area", "area scratch").
std::optional<std::string> confine_relative(const std::filesystem::path& root, const std::string& path,
                                            std::string* why, const std::string& area = "the project's job area");

// Opens directory `rel` (from confine_relative) beneath the directory open at `root_fd`,
// refusing every symlink that would leave it. Returns an O_DIRECTORY fd or -1 (errno set).
// Async-signal-safe when `rel` is a C string prepared before a fork (no allocation).
int open_beneath(int root_fd, const char* rel);

// Opens file `rel` beneath the directory open at `root_fd` with `flags` (O_RDONLY, O_WRONLY |
// O_CREAT | O_EXCL, ...; `mode` for O_CREAT), resolved as open_beneath resolves directories, and
// refusing a final symlink (O_NOFOLLOW: ELOOP) wherever it points. -1 with errno otherwise.
int open_file_beneath(int root_fd, const char* rel, int flags, unsigned mode = 0);

// Creates the directories of `rel` beneath `root` (mkdirat component by component, never
// following a symlink) and returns 0, or an errno value.
int make_dirs_beneath(const std::filesystem::path& root, const std::string& rel, unsigned mode);
// The same beneath the directory open at `root_fd`; on success, when `out_fd` is given, it
// receives an O_DIRECTORY fd of the last directory (the caller closes it). With `owner`, each
// directory it creates is given to that uid:gid (fchown on the opened directory, so a symlink
// swapped in never redirects it); directories that existed keep their owner.
struct DirOwner {
  unsigned uid = 0;
  unsigned gid = 0;
};
int make_dirs_at(int root_fd, const std::string& rel, unsigned mode, int* out_fd = nullptr,
                 const DirOwner* owner = nullptr);

}  // namespace scigate::sandbox
