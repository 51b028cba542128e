#include "engine/event.hpp"

#include <cstdio>

namespace aloft {

json to_json(const event& e) {
  auto j = json::object();
  j.set("seq", static_cast<long long>(e.seq));
  j.set("at_ms", e.at_ms);
  if (!e.session.empty())
    j.set("session", e.session);
  j.set("kind", e.kind);
  if (!e.state.empty())
    j.set("state", e.state);
  if (!e.message.empty())
    j.set("message", e.message);
  if (!e.data.empty())
    j.set("data", e.data);
  if (e.kind == "output")
    j.set("offset", static_cast<long long>(e.offset));
  return j;
}

event event_from_json(const json& j) {
  event e;
  e.seq = static_cast<uint64_t>(j.get_int("seq"));
  e.at_ms = j.get_int("at_ms");
  e.session = j.get_string("session");
  e.kind = j.get_string("kind");
  e.state = j.get_string("state");
  e.message = j.get_string("message");
  e.data = j.get_string("data");
  e.offset = static_cast<uint64_t>(j.get_int("offset"));
  return e;
}

std::string event_key(uint64_t seq) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(seq));
  return buf;
}

} // namespace aloft
