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
std::optional<std::string> confine_relative(const std::filesystem::path& root, const std::string& path,
                                            std::string* why);

// Opens directory `rel` (from confine_relative) beneath the directory open at `root_fd`,
// refusing every symlink that would leave it. Returns an O_DIRECTORY fd or -1 (errno set).
// Async-signal-safe when `rel` is a C string prepared before a fork (no allocation).
int open_beneath(int root_fd, const char* rel);

// Creates the directories of `rel` beneath `root` (mkdirat component by component, never
// following a symlink) and returns 0, or an errno value.
int make_dirs_beneath(const std::filesystem::path& root, const std::string& rel, unsigned mode);

}  // namespace scigate::sandbox
