#include "persistence/store.hpp"

#include <future>

#include "engine/base/error.hpp"
#include "engine/base/ids.hpp"

namespace aloft {

const char* to_string(family f) {
  switch (f) {
    case family::meta: return "meta";
    case family::sessions: return "sessions";
    case family::accounts: return "accounts";
    case family::sync_jobs: return "sync_jobs";
    case family::events: return "events";
    case family::quarantine: return "quarantine";
  }
  return "unknown";
}

caf::error store::commit_and_wait(write_batch batch) {
  std::promise<caf::error> done;
  auto result = done.get_future();
  commit(std::move(batch), [&done](caf::error err) { done.set_value(std::move(err)); });
  return result.get();
}

caf::expected<std::string> open_meta(store& s) {
  auto version = s.get(family::meta, "schema_version");
  if (version) {
    int v = std::atoi(version->c_str());
    if (v > schema_version)
      return make_error(errc::failed_precondition,
                        "the store was written by a newer Aloft (schema "
                          + *version + ", this build reads up to "
                          + std::to_string(schema_version) + "): upgrade Aloft");
  } else if (code_of(version.error()) != errc::not_found) {
    return version.error();
  }
  auto id = s.get(family::meta, "installation_id");
  if (id && version && std::atoi(version->c_str()) == schema_version)
    return *id;
  if (!id && code_of(id.error()) != errc::not_found)
    return id.error();
  // First open, or an older schema: write the current version (records are
  // upgraded as they are read) and keep an existing installation id.
  std::string installation = id ? *id : make_installation_id();
  write_batch batch;
  batch.push_back({family::meta, "schema_version", std::to_string(schema_version)});
  batch.push_back({family::meta, "installation_id", installation});
  if (auto err = s.commit_and_wait(std::move(batch)))
    return err;
  return installation;
}

} // namespace aloft
