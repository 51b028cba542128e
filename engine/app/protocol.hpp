// The daemon's JSON-lines protocol: requests, replies and the one dispatcher.
//
// Every request is one line holding a JSON object
//   {"id":N,"op":"launch","args":{...}}
// and gets one reply line
//   {"id":N,"ok":true,"result":...}   or
//   {"id":N,"ok":false,"error":{"code":"not_found","message":"..."}}
// where `code` is the name of an `errc`. Streaming ops (`logs` and `events`
// with `follow`) first send items {"id":N,"ok":true,"more":true,"result":...}
// and end, if they end, with an ordinary reply. Long ops (`sync_up`,
// `sync_down`, `sync_state`: a second to minutes) answer like plain ones,
// but the daemon
// runs them off its poll loop, so their reply may come after replies to
// later requests. docs/protocol.md is the reference; `protocol_version` is
// the number written there.
//
// Everything that arrives here is untrusted (it comes from a socket or from a
// foreign caller through the C ABI): every field is checked for presence,
// type and range, and errors name the field and what was expected. Nothing
// here throws or aborts on bad input.
//
// `handle_request` is used by both the daemon and the C ABI, so that the two
// answer identically. It is thread-safe as far as the engine is (the engine's
// calls are); the remaining functions are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "engine/app/api.hpp"
#include "engine/base/json.hpp"

namespace aloft {

/// The protocol's version. Bumped on any change a client could notice;
/// additions of ops or optional fields bump it too, so a client can ask.
//   1: the first version.
//   2: adds `sync_up`, `sync_down` and `sync_state` (long ops) and `sync`
//      events.
//   3: adds the account ops (`account_list`, `account_add`,
//      `account_validate`, `account_set`, `account_enable`,
//      `account_disable`, `account_default`, `account_secret`,
//      `account_rm`), `reload`, and `launch`'s `profile`.
constexpr int protocol_version = 3;

/// The longest request line the daemon accepts (without its newline).
constexpr size_t max_request_bytes = size_t{1} << 20;

/// The largest `logs` chunk one reply carries, and the default.
constexpr size_t max_log_chunk_bytes = size_t{1} << 20;
constexpr size_t default_log_chunk_bytes = size_t{256} << 10;

/// The most events one `events` request returns.
constexpr int64_t max_events = 10000;

/// A request whose envelope has been checked (args not yet).
struct request {
  json id; // integer, string or null (absent)
  std::string op;
  json args; // always an object
};

/// Checks the envelope of a decoded request: an object with an optional `id`
/// (integer or string), a string `op` and an optional object `args`.
/// Errors: invalid_argument naming the field. On error `id_out` still holds
/// the id when it could be read, so the reply can carry it.
caf::expected<request> parse_request(const json& j, json* id_out = nullptr);

/// Decodes one request line: size cap, JSON, envelope.
caf::expected<request> parse_request_line(std::string_view line,
                                          json* id_out = nullptr);

/// Answers one request. Never fails: errors become error replies.
/// Streaming forms (`follow: true`) are refused with `unimplemented`: only
/// the daemon streams (see daemon.hpp); C ABI callers use aloft_subscribe.
json handle_request(engine& e, const json& request);

/// The same for a request whose envelope `parse_request` already checked.
json handle_request(engine& e, const request& req);

/// Parses `line` and answers it; a malformed or oversized line gets an error
/// reply with a null id.
json handle_request_line(engine& e, std::string_view line);

// -- replies ----------------------------------------------------------------

json make_reply(const json& id, json result);
json make_error_reply(const json& id, const caf::error& err);
/// One item of a streaming reply; the stream goes on after it.
json make_stream_item(const json& id, json item);

/// Serializes `j` as one protocol line (with its newline). Bytes that are not
/// UTF-8 (agent output may hold any) are replaced by U+FFFD, so the line is
/// always valid JSON for any reader.
std::string encode_line(const json& j);

/// Returns `s` with every invalid UTF-8 sequence replaced by U+FFFD.
std::string to_valid_utf8(std::string_view s);

// -- arguments shared with the daemon's streaming ops -----------------------

struct logs_args {
  std::string id;
  bool follow = false;
  uint64_t offset = 0;
  size_t max_bytes = default_log_chunk_bytes;
};
caf::expected<logs_args> read_logs_args(const json& args);

struct events_args {
  size_t n = 100;
  bool follow = false;
  bool include_output = false; // output events are many; off unless asked
  std::string session;         // empty: every session
};
caf::expected<events_args> read_events_args(const json& args);

/// Whether `ev` passes the filter of an `events` request.
bool event_matches(const events_args& a, const event& ev);

// -- long ops -----------------------------------------------------------------

/// How long an op may take, which says where the daemon runs it.
enum class op_pace {
  immediate, // well under a millisecond: on the poll loop
  seconds,   // a check that snapshots worktrees (`sync_state`)
  minutes,   // a transfer (`sync_up`, `sync_down`)
};

/// The pace of `op`; unknown ops are immediate (they are refused at once).
op_pace pace_of(std::string_view op);

/// Whether `op` is not immediate. The daemon runs such ops on worker pools
/// (one per pace, so a check never waits behind a transfer), never on its
/// poll loop; through `handle_request` (the C ABI) they block the caller
/// for as long as they run.
bool is_long_op(std::string_view op);

/// Checks the arguments of a long op without calling the engine, so a bad
/// request is refused at once even when every worker is busy. Errors:
/// invalid_argument naming the field; unimplemented for an op that is not
/// long.
caf::error check_long_op_args(const request& req);

/// `sync_up` args: `id`. Returns the session id.
caf::expected<std::string> read_sync_up_args(const json& args);

/// `sync_down` args: `id`, `mode` ("apply" (default), "branch", "dry_run"),
/// `branch` (required for mode branch, refused otherwise; checked with
/// `check_branch_name`).
caf::expected<sync_down_request> read_sync_down_args(const json& args);

/// Whether git would accept `name` as a new branch's name (the rules of
/// `git check-ref-format --branch`): not empty, at most 255 bytes of UTF-8,
/// no leading '-' or '/', no trailing '/' or '.', no "..", "//" or "@{", no
/// space, control character or any of ~ ^ : ? * [ \, no component that
/// starts with '.' or ends with ".lock", not "HEAD", and not "@" (which git
/// reads as HEAD). Errors: invalid_argument whose message names the broken
/// rule.
caf::error check_branch_name(const std::string& name);

/// The protocol's name of a sync_down mode ("apply", "branch", "dry_run").
const char* to_string(sync_down_mode m);

/// A piece of an agent's log file.
struct log_chunk {
  std::string data;
  uint64_t offset = 0;      // where `data` starts
  uint64_t next_offset = 0; // where the next read starts
  uint64_t size = 0;        // the file's size when it was read
  bool eof = false;         // next_offset reached the end of the file
};

/// Reads at most `max_bytes` of the file at `path` from `offset`. A missing
/// file reads as empty (no output yet). The chunk ends on a UTF-8 character
/// boundary unless the file ends there, so chunks decode one by one.
/// Errors: the file cannot be read (internal, naming it).
caf::expected<log_chunk> read_log_chunk(const std::string& path, uint64_t offset,
                                        size_t max_bytes);

json to_json(const log_chunk& c);

// -- result shapes, shared with the CLI's --json output ---------------------

json to_json(const session_view& v);
json to_json(const attach_info& a);
/// {"direction", "commit", "base", "ref", "bytes", "files", "changed",
///  "conflicts", "notes", "saved_ref", "branch", "diffstat"}; the ops add
/// "id" (and `sync_down` "mode").
json to_json(const sync_result& r);
/// {"local_changed", "vm_changed": true, false or null (unknown),
///  "local_note", "vm_note"}; the op adds "id".
json to_json(const sync_status& s);
/// The account's settings (as settings.json holds them) plus "default",
/// "built_in", "can_launch", "secrets" (masked), "store", "live_sessions",
/// "problem".
json to_json(const account_view& v);
/// {"added", "changed", "removed", "problems"}: arrays of strings.
json to_json(const reload_report& r);

} // namespace aloft
