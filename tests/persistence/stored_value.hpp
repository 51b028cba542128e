// Reading one value in a test without risking a crash on a missing key:
// the failure shows up in the assertion text instead. Thread-safe as the
// store is.
#pragma once

#include <string>

#include "engine/base/error.hpp"
#include "persistence/store.hpp"

namespace aloft::test {

/// Returns the value of `f`/`key`, or "<error: ...>" describing why not.
inline std::string stored_value(store& s, family f, const std::string& key) {
  auto value = s.get(f, key);
  return value ? *value : "<error: " + describe(value.error()) + ">";
}

} // namespace aloft::test
