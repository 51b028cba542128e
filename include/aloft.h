/* aloft.h - the C ABI of the Aloft engine, for Swift and other non-C++ hosts.
 *
 * One `aloft_engine` per home directory. Requests are the same JSON objects
 * the daemon's socket takes (docs/protocol.md), e.g.
 *   {"id":1,"op":"list","args":{}}
 * and replies are the same JSON objects, e.g.
 *   {"id":1,"ok":true,"result":{"sessions":[...]}}
 * Streaming (`follow`) is socket-only; here, events arrive through
 * aloft_subscribe instead.
 *
 * Threads: every function may be called from any thread, except that
 * aloft_close must not race with other calls on the same engine and must not
 * be called from inside a subscriber callback. Callbacks run on engine
 * threads: they must return quickly and must not call aloft_close.
 *
 * Memory: strings returned by this library are allocated by it; release them
 * with aloft_free. Strings passed in are only read during the call.
 */
#ifndef ALOFT_H
#define ALOFT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol version of docs/protocol.md that aloft_call speaks. */
#define ALOFT_PROTOCOL_VERSION 3

typedef struct aloft_engine aloft_engine;

/* Opens the engine for `home` (NULL or "": $ALOFT_HOME, else the XDG
 * directories). On failure returns NULL and, when `error` is not NULL, sets
 * *error to a message the caller frees with aloft_free. */
aloft_engine* aloft_open(const char* home, char** error);

/* Ends every subscription of `engine` and closes it. NULL is ignored. */
void aloft_close(aloft_engine* engine);

/* Answers one JSON request (a NUL-terminated UTF-8 string). Always returns a
 * JSON reply (errors are replies with "ok":false), or NULL only when memory
 * ran out. The caller frees the reply with aloft_free. */
char* aloft_call(aloft_engine* engine, const char* request_json);

/* Called with each event as a JSON object (docs/protocol.md, "Events"). The
 * string is valid only during the call. */
typedef void (*aloft_event_fn)(const char* event_json, void* ctx);

/* Calls `fn(event_json, ctx)` for every event from now on. Returns a handle
 * for aloft_unsubscribe, or 0 when `engine` or `fn` is NULL. */
uint64_t aloft_subscribe(aloft_engine* engine, aloft_event_fn fn, void* ctx);

/* Ends a subscription; once it returns, `fn` is not called again for it.
 * Unknown handles are ignored. */
void aloft_unsubscribe(aloft_engine* engine, uint64_t handle);

/* Frees a string returned by this library. NULL is ignored. */
void aloft_free(void* p);

#ifdef __cplusplus
}
#endif

#endif /* ALOFT_H */
