#include "engine/app/c_api.hpp"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <new>
#include <string>

#include "engine/app/protocol.hpp"
#include "engine/base/error.hpp"

// aloft.h is C and cannot include protocol.hpp; this keeps the two numbers
// one.
static_assert(ALOFT_PROTOCOL_VERSION == aloft::protocol_version,
              "bump ALOFT_PROTOCOL_VERSION in include/aloft.h with protocol_version");

namespace {

// One subscription. The engine may still be running a callback when
// unsubscribe returns; this gate makes aloft.h's promise hold: once
// aloft_unsubscribe returns, `fn` is not called again. The mutex is
// recursive so a callback may unsubscribe itself.
struct subscription_gate {
  std::recursive_mutex mtx;
  bool active = true;
  aloft_event_fn fn;
  void* ctx;
};

char* copy_out(const std::string& s) {
  auto p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p)
    std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

std::string reply_text(const aloft::json& reply) {
  auto line = aloft::encode_line(reply);
  line.pop_back(); // the newline that ends a socket line
  return line;
}

} // namespace

struct aloft_engine {
  std::unique_ptr<aloft::engine> engine;
  std::mutex mtx; // guards subscriptions
  std::map<uint64_t, std::shared_ptr<subscription_gate>> subscriptions;
};

aloft_engine* aloft_wrap_engine(std::unique_ptr<aloft::engine> e) {
  if (!e)
    return nullptr;
  auto h = new (std::nothrow) aloft_engine;
  if (h)
    h->engine = std::move(e);
  return h;
}

extern "C" {

void aloft_close(aloft_engine* h) {
  if (!h)
    return;
  std::map<uint64_t, std::shared_ptr<subscription_gate>> subs;
  {
    std::lock_guard<std::mutex> guard{h->mtx};
    subs.swap(h->subscriptions);
  }
  for (auto& [handle, gate] : subs) {
    h->engine->unsubscribe(handle);
    std::lock_guard<std::recursive_mutex> guard{gate->mtx};
    gate->active = false;
  }
  delete h;
}

char* aloft_call(aloft_engine* h, const char* request_json) {
  // Nothing may escape into C: an exception here would be undefined
  // behaviour in the caller.
  try {
    if (!h)
      return copy_out(reply_text(aloft::make_error_reply(
        aloft::json{}, aloft::make_error(aloft::errc::invalid_argument,
                                         "aloft_call: the engine is NULL"))));
    if (!request_json)
      return copy_out(reply_text(aloft::make_error_reply(
        aloft::json{}, aloft::make_error(aloft::errc::invalid_argument,
                                         "aloft_call: the request is NULL"))));
    return copy_out(reply_text(aloft::handle_request_line(*h->engine, request_json)));
  } catch (...) {
    return nullptr;
  }
}

uint64_t aloft_subscribe(aloft_engine* h, aloft_event_fn fn, void* ctx) {
  if (!h || !fn)
    return 0;
  try {
    auto gate = std::make_shared<subscription_gate>();
    gate->fn = fn;
    gate->ctx = ctx;
    auto handle = h->engine->subscribe([gate](const aloft::event& ev) {
      auto text = reply_text(aloft::to_json(ev));
      std::lock_guard<std::recursive_mutex> guard{gate->mtx};
      if (gate->active)
        gate->fn(text.c_str(), gate->ctx);
    });
    std::lock_guard<std::mutex> guard{h->mtx};
    h->subscriptions[handle] = gate;
    return handle;
  } catch (...) {
    return 0;
  }
}

void aloft_unsubscribe(aloft_engine* h, uint64_t handle) {
  if (!h)
    return;
  std::shared_ptr<subscription_gate> gate;
  {
    std::lock_guard<std::mutex> guard{h->mtx};
    auto i = h->subscriptions.find(handle);
    if (i == h->subscriptions.end())
      return;
    gate = i->second;
    h->subscriptions.erase(i);
  }
  h->engine->unsubscribe(handle);
  std::lock_guard<std::recursive_mutex> guard{gate->mtx};
  gate->active = false;
}

void aloft_free(void* p) {
  std::free(p);
}

} // extern "C"
