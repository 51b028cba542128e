// Worktree sync as git objects: snapshots, packs, untrusted checks, merges.
//
// Sync moves git objects, so it works over any transport and sends only what
// the other side lacks. The local side uses the `git` command (spawned
// without a shell; about 1 ms a call), never touching the user's index,
// files or branches except where a function says so. The VM side is a set of
// shell commands (run through the session's transport) that use the `git`
// command on the VM.
//
// Refs in the user's repository (DESIGN.md, Decisions):
//   refs/aloft/sessions/<id>/up      the last synced-up snapshot
//   refs/aloft/sessions/<id>/down    the last synced-down snapshot
//   refs/aloft/sessions/<id>/local-<n> the local state saved before an apply
//   refs/aloft/safety/<id>           the snapshot taken before a timed destroy
//
// Everything that comes back from a VM is untrusted: a received pack is
// indexed into a quarantine object directory and checked
// (`receive_untrusted_pack`) before any of it enters the repository, and
// nothing from the VM (hooks, config) is ever run or honoured.
//
// All functions block (processes, files): call them from an executor, never
// from an actor. Thread-safe as long as two calls do not work on the same
// repository at once.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "config/sync_settings.hpp"

namespace aloft::sync {

using limits = sync_settings;

struct tree_stats {
  uint64_t files = 0;
  uint64_t bytes = 0;
  /// The largest paths, largest first (at most 10), for "too big" errors.
  std::vector<std::pair<std::string, uint64_t>> largest;
};

struct snapshot {
  std::string commit;
  std::string tree;
  tree_stats stats;
  std::string top;                // the repository's top-level directory
  std::vector<std::string> notes; // what is not synced (submodules, by path)
};

/// The ref names of a session.
std::string up_ref(const std::string& session);
std::string down_ref(const std::string& session);
std::string safety_ref(const std::string& session);

/// Checks that `worktree` can be synced. Returns the repository's top-level
/// directory. Errors: failed_precondition when it is not a git worktree
/// ("... is not a git repository: nothing would be synced; run `git init`").
/// Appends to `notes` what is not synced (submodules, by path).
caf::expected<std::string> check_worktree(const std::string& worktree,
                                          std::vector<std::string>& notes);

/// Captures HEAD, staged and unstaged changes and untracked files that are not
/// ignored (with executable bits, symlinks, binary and empty files) as a
/// commit whose parent is HEAD (none in a repository without commits), using
/// a temporary index: the user's index, files and branches are untouched.
/// Stores it under `ref` when `ref` is not empty. Its stats count the sizes
/// of the files on disk (what an upload would cost). Errors as
/// check_worktree's (failed_precondition, naming the worktree) when it
/// cannot be synced; its notes are check_worktree's, nested repositories
/// included.
caf::expected<snapshot> snapshot_worktree(const std::string& worktree,
                                          const std::string& ref,
                                          const std::string& message);

/// Size and file count of a commit's tree.
caf::expected<tree_stats> stats_of(const std::string& repo, const std::string& commit);

/// The tree id of `commit`.
caf::expected<std::string> tree_of(const std::string& repo, const std::string& commit);

/// Points `ref` at `commit` in the repository (git update-ref).
caf::error update_ref(const std::string& repo, const std::string& ref,
                      const std::string& commit);

/// Errors with `failed_precondition` (not retryable: the tree must shrink
/// or the limit rise) when `stats` exceed the upload limit,
/// naming the largest paths and the setting to change.
caf::error check_upload_size(const tree_stats& stats, const limits& lim);

/// A pack of the objects reachable from `want` and not from `have` (commits
/// the other side is known to hold; may be empty). Thin packs are allowed
/// when `have` is not empty.
caf::expected<std::string> make_pack(const std::string& repo, const std::string& want,
                                     const std::vector<std::string>& have);

/// A pack of every object reachable from `want` and the index (`.idx`) git
/// wrote for it while packing: a VM that has nothing yet installs both as
/// they are (vm_install_command) instead of indexing the pack, which would
/// hash every object again. Only for packs the engine makes: nothing from a
/// VM is ever taken without indexing and checking it.
struct indexed_pack {
  std::string name;     // "pack-<checksum>", the files' name in objects/pack
  std::string bytes;    // the pack, then its index
  uint64_t pack_bytes = 0;
  uint64_t index_bytes = 0;
};

caf::expected<indexed_pack> make_indexed_pack(const std::string& repo,
                                              const std::string& want);

/// Indexes an untrusted pack into a quarantine object directory, checks the
/// tree of `commit` there, and only then moves the objects into the
/// repository. On error nothing enters the repository.
///
/// The check rejects paths with `..` or absolute paths, any `.git` component
/// (including the case and alias variants git refuses: `.GIT`, `.git.`,
/// `git~1`, NTFS streams, HFS ignorables), gitlinks, symlinks pointing
/// outside the worktree, files under a symlinked directory (writes through a
/// symlink), and trees or blobs over the bounds. The rules and bounds judge
/// what the VM added or changed: entries identical to `base` (the snapshot
/// the VM's changes are relative to) came from the user and serve only as
/// context (a user's own symlink to /opt is fine; a new path through it is
/// not). Errors name the path: permission_denied for a refused path,
/// failed_precondition for a bound (naming its `sync.` key), data_loss for
/// missing or malformed objects.
caf::error receive_untrusted_pack(const std::string& repo, std::string_view pack,
                                  const std::string& commit, const std::string& base,
                                  const limits& lim);

/// One entry of `git ls-tree -r -l`: a file, symlink or gitlink.
struct tree_entry {
  uint32_t mode = 0; // as git writes it, octal: 0100644, 0120000, 0160000
  std::string type;  // blob, commit
  std::string object;
  uint64_t size = 0; // blob size, 0 otherwise
  std::string path;
};

/// The path rules of receive_untrusted_pack for one path: not empty, not
/// absolute, no empty, `.` or `..` component, no component git treats as
/// `.git` on any platform. The error (permission_denied) names the path and
/// the rule. Pure.
caf::error check_untrusted_path(std::string_view path);

/// All rules of receive_untrusted_pack over listed entries, with
/// `symlink_targets` mapping each symlink's path to its target. Pure.
caf::error
check_untrusted_entries(const std::vector<tree_entry>& entries,
                        const std::map<std::string, std::string>& symlink_targets,
                        const limits& lim);

enum class apply_mode { apply, branch, dry_run };

struct apply_result {
  std::vector<std::string> changed;   // paths written (apply) or that would be
  std::vector<std::string> conflicts; // paths left as they were locally
  std::string saved_ref;              // where the local state was saved
  std::string branch;                 // the branch created (branch mode)
  std::string diffstat;               // `git diff --stat` of base..theirs
};

/// The local worktree as an apply merges it and saves it: a snapshot, the
/// temporary index it was made with, and the ref it will be saved under.
/// Holds the temporary index until destroyed.
class local_state;

/// Takes the local state an apply of `session`'s snapshot (on top of `base`)
/// will merge into and save, before that snapshot is there: taken while the
/// VM snapshots its side, it costs the sync nothing. Nothing is stored under
/// a ref until the apply; the apply still refuses (aborted) to write over a
/// file changed since. Errors as apply_down's.
caf::expected<std::shared_ptr<const local_state>>
capture_local_state(const std::string& worktree, const std::string& session,
                    const std::string& base);

/// The snapshot `state` holds (the repository's top-level directory and the
/// notes included).
const snapshot& snapshot_of(const local_state& state);

/// Brings the VM's snapshot `theirs` (whose parent is `base`, the last
/// synced-up snapshot) into the local repository:
/// - dry_run: fills `diffstat` and `changed`, writes nothing;
/// - branch: creates `branch_name` at a commit holding the agent's changes on
///   top of `base`, with a message naming the session;
/// - apply: saves the local state under `refs/aloft/sessions/<id>/local-<n>`
///   first, then merges three ways (base, ours = the worktree now, theirs)
///   into the worktree files (never the index or branches). Conflicting
///   files are listed and left as they were; the agent's versions stay
///   reachable under the session's down ref. Also left as they are, and
///   listed with the conflicts: paths where a local symlink, an untracked or
///   ignored file stands in the way. Everything written is checked again as
///   untrusted; a worktree that changes during the apply aborts it (aborted)
///   before anything is written.
/// branch and apply set the session's down ref to `theirs`. `theirs` must
/// descend from `base` (failed_precondition otherwise); the merge uses `base`
/// as its merge base whatever the local HEAD is now.
/// `ours`, when set, is the local state to merge into and save, taken
/// beforehand by capture_local_state (for `session` and `base`); else the
/// apply takes it.
caf::expected<apply_result> apply_down(const std::string& worktree,
                                       const std::string& session,
                                       const std::string& base, const std::string& theirs,
                                       apply_mode mode, const std::string& branch_name,
                                       std::shared_ptr<const local_state> ours = nullptr);

// -- commands run on the VM through the transport ------------------------------

/// Prepares the VM's repository at `workdir` (git init if needed; hooks off).
std::string vm_prepare_command(const std::string& workdir);

/// Reads a pack on stdin, indexes it, and checks out `commit` into `workdir`:
/// with `base` empty a fresh checkout; else a two-tree update from `base`
/// that keeps the agent's own changes and fails on a conflict. Records
/// `commit` as the VM's base ref.
/// `vm_now`, when not empty, is the VM's own snapshot its worktree matched at
/// the last sync (a sync down after `base`): the update then starts from it.
std::string vm_receive_command(const std::string& workdir, const std::string& commit,
                               const std::string& base, const std::string& vm_now = {});

/// Reads an indexed_pack on stdin (`pack.pack_bytes` of pack, then its
/// index), installs both in the prepared VM repository at `workdir` as they
/// are and checks out `commit` afresh, as vm_receive_command does without a
/// base. For the first sync up. Uses `pack`'s name and sizes, not its bytes.
std::string vm_install_command(const std::string& workdir, const std::string& commit,
                               const indexed_pack& pack);

/// Where the VM's snapshot writes its new objects (a file each) until they
/// are packed: in memory where the VM has /dev/shm. When it cannot (no such
/// directory, or full) they go into the repository.
inline const char* const vm_object_scratch = "/dev/shm";

/// Snapshots the agent's worktree (temporary index; the agent's index and
/// branches untouched) as a commit whose parent is `base` and writes to
/// stdout one line "<commit> <pack bytes>\n" followed by a pack of the
/// objects not reachable from `base` (which stay in the VM's repository).
/// Exits non-zero with a message on stderr when the worktree is missing,
/// empty or not a repository. `scratch`: see vm_object_scratch; empty
/// writes the objects into the repository.
std::string vm_snapshot_command(const std::string& workdir, const std::string& base,
                                const std::string& scratch = vm_object_scratch);

/// Prints the tree id of the agent's worktree as a snapshot would take it
/// (same checks and errors), without keeping anything: for telling whether
/// the VM has changes not yet brought down.
std::string vm_tree_command(const std::string& workdir, const std::string& base,
                            const std::string& scratch = vm_object_scratch);

/// Parses the header line of `vm_snapshot_command`'s output. Untrusted.
caf::error parse_snapshot_header(const std::string& line, std::string& commit,
                                 uint64_t& pack_bytes);

} // namespace aloft::sync
