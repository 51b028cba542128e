// The engine's composition root: the one place that builds the actor system,
// the store, the transports and the providers and wires them together.
//
// `open_engine` (api.hpp) is `open_engine_with` without overrides. The
// overrides let tests and the bench harness put fake providers (and no SSH
// agent) behind the real actor graph and store.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "config/account.hpp"
#include "engine/app/api.hpp"
#include "persistence/store.hpp"
#include "providers/provider.hpp"

namespace aloft {

struct engine_overrides {
  /// Accounts with their provider clients, used instead of the built-in
  /// `local` account.
  std::vector<std::pair<account, std::shared_ptr<provider>>> accounts;
  /// Run no agent (no SSH): sessions are running once the VM is up.
  bool no_agent = false;
  int status_interval_s = 5;
  int64_t retry_delay_ms = 5000;
};

caf::expected<std::unique_ptr<engine>> open_engine_with(const engine_options& opts,
                                                        engine_overrides overrides);

/// The commit counters (batches, fsyncs) of the store of an engine made by
/// `open_engine_with` or `open_engine`, for the bench harness; zeros for
/// any other engine.
store_stats store_stats_of(engine& e);

} // namespace aloft
