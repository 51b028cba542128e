// aloft_open: the one function of the C ABI that opens the real engine. It
// sits in its own file so that everything else in c_api.cpp links (and is
// tested) without the engine's implementation.
#include "engine/app/c_api.hpp"

#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/base/error.hpp"

extern "C" aloft_engine* aloft_open(const char* home, char** error) {
  auto report = [error](const std::string& message) -> aloft_engine* {
    if (error) {
      *error = static_cast<char*>(std::malloc(message.size() + 1));
      if (*error)
        std::memcpy(*error, message.c_str(), message.size() + 1);
    }
    return nullptr;
  };
  if (error)
    *error = nullptr;
  try {
    aloft::engine_options opts;
    opts.home = home ? home : "";
    auto e = aloft::open_engine(opts);
    if (!e)
      return report(aloft::describe(e.error()));
    auto h = aloft_wrap_engine(std::move(*e));
    if (!h)
      return report("out of memory");
    return h;
  } catch (const std::exception& ex) {
    return report(std::string{"internal: "} + ex.what());
  } catch (...) {
    return report("internal: unknown exception");
  }
}
