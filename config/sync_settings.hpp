#pragma once

// Bounds on what a sync moves: `sync` in settings.json, and what the sync
// code checks (`sync::limits` is this type). An error at a bound names its
// key (`sync.max_upload_bytes`), so a person knows what to raise.

#include <cstdint>

namespace aloft {

struct sync_settings {
  uint64_t max_upload_bytes = 2ull << 30;   // a sync up's snapshot
  uint64_t max_download_bytes = 2ull << 30; // a pack from a VM
  uint64_t max_file_bytes = 1ull << 30;     // any one blob from a VM
  uint64_t max_files = 1'000'000;           // entries in a VM's tree
  uint64_t max_tree_bytes = 8ull << 30;     // all blobs of a VM's tree, as
                                            // written out (a tree can name
                                            // one big blob many times)
};

bool operator==(const sync_settings& x, const sync_settings& y);
inline bool operator!=(const sync_settings& x, const sync_settings& y) {
  return !(x == y);
}

} // namespace aloft
