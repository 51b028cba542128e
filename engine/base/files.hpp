#pragma once

// Whole-file reads and writes on POSIX descriptors, and the atomic
// replacement of a file.
//
// Why: settings.json, the credentials file and the local provider's sandbox
// files must never be seen half written, and a crash (or a power cut) must
// leave either the old file or the new one. The sequence that ensures it
// (temporary file, fsync, rename over, fsync of the directory) and the loops
// over EINTR and short reads and writes live here once.
//
// Errors carry the path and the errno text ("cannot write <path>: No space
// left on device"), with the codes of `from_errno`.
//
// Concurrency: every function is safe to call from any thread. Two
// concurrent `write_file_atomically` calls on one path each leave a whole
// file (the last rename wins); keeping a read-modify-write consistent is the
// caller's business.

#include <sys/types.h>

#include <functional>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace aloft::files {

/// Reads `fd` from its current offset to the end; the descriptor stays
/// open. Errors: "cannot read <what>: <errno text>".
caf::expected<std::string> read_all(int fd, const std::string& what);

/// The whole contents of `path`. Errors: "cannot read <path>: <errno text>"
/// (also when it cannot be opened: not_found when it does not exist).
caf::expected<std::string> read_file(const std::string& path);

/// Writes all of `data` to `fd`, resuming after EINTR and short writes.
/// Errors: "cannot write <what>: <errno text>"; part of `data` may have
/// been written.
caf::error write_all(int fd, std::string_view data, const std::string& what);

/// Replaces `path` with `data`, mode exactly `mode` (whatever the umask):
/// writes `<path>.tmp-<pid>-<n>-<random>`, fsyncs it, calls `before_rename`
/// when set, renames it over `path`, fsyncs the directory. On an error
/// before the rename, `path` is untouched and the temporary file removed.
/// Errors name the failing step and file ("cannot rename <tmp> to <path>:
/// ..."). REQUIRES: the directory of `path` exists.
///
/// `before_rename` is a seam for tests that kill the process at that point.
caf::error write_file_atomically(const std::string& path, std::string_view data,
                                 mode_t mode,
                                 const std::function<void()>& before_rename = nullptr);

} // namespace aloft::files
