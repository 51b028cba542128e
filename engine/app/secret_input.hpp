// Reading a secret (an API token) from the user for the CLI.
//
// At a terminal the secret is typed or pasted with echo turned off, so it
// never shows on screen or in a scrollback; otherwise (a pipe, a file) it is
// read from the descriptor, one line per secret, so a script can pipe
// several secrets in a row. The secret is never put in an argument, where
// other users could read it in the process table.
//
// Not for concurrent use on the same descriptor. While echo is off, SIGINT,
// SIGTERM, SIGHUP and SIGQUIT restore the terminal before their previous
// handling (the default: the process ends) takes place.
#pragma once

#include <ostream>
#include <string>

#include <caf/expected.hpp>

namespace aloft {

/// Reads one secret from `fd`. When `fd` is a terminal, writes `prompt` to
/// `err` and reads a line with echo off, restoring the terminal's settings
/// on every path out. Otherwise reads up to and including the next '\n',
/// one byte at a time, so the rest of the input stays unread for the next
/// call. Surrounding whitespace (and a trailing "\r\n") is trimmed.
/// Errors: invalid_argument for an empty secret or one over 64 KiB;
/// cancelled when a signal interrupted the read; an errno error otherwise.
caf::expected<std::string> read_secret(int fd, const std::string& prompt,
                                       std::ostream& err);

} // namespace aloft
