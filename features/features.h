/*
 * features/features.h - a worker's user-feature lookups (DESIGN.md "One request", step 5).
 *
 * For a request to an app with features, the unit id (the configured header, x-user-id by
 * default) selects the user's features, looked up in order in
 *   1. the worker's local LRU (fresh, or stale: served while refreshed in the background;
 *      negative entries remember unknown users; an admin write of a user drops the entry of
 *      every worker of the process before it answers: fsource.h),
 *   2. Redis, in one pipelined round trip for all the app's groups (hiredis async on the
 *      worker's base; reconnects with backoff; a connection whose replies are overdue by
 *      redis.reply_timeout_ms is dropped; while it is down, lookups fail at once),
 *   3. MariaDB (features/fsource.h: off the loop, written back to Redis).
 * The request waits at most the route's budget (the app's timeout_ms, or its env's); whatever
 * happens, it then goes on, with x-user-features (compact JSON) when features were found and
 * x-modelgate-features saying what happened: hit, miss, timeout, unavailable, none (no unit id,
 * or an ambiguous one: the header twice, or a list - mg_field_single), too_large. A lookup that
 * outlives its requests still completes and fills the caches. Concurrent lookups of one user share
 * one fetch (and one MariaDB query across workers).
 *
 * Threading: one mg_features_t per worker, used on that worker's thread only. Ownership: a
 * ticket is embedded in the caller's request object (zeroed memory is a valid idle ticket);
 * after mg_features_start the caller must call mg_features_release once, which cancels a
 * pending lookup (the callback is then never called) and drops the snapshot the ticket holds.
 * Strings returned for a ticket are valid until its release.
 */
#ifndef MG_FEATURES_FEATURES_H
#define MG_FEATURES_FEATURES_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "common/err.h"
#include "common/h2server.h"
#include "features/fsource.h"

typedef struct mg_features mg_features_t;
typedef void (*mg_features_done_fn)(void *ud);

typedef struct mg_features_ticket {
    struct mg_features_ticket *_next, *_prev; /* the fetch's waiters, oldest first */
    void *_fetch;                             /* NULL once settled */
    mg_features_done_fn _done;
    void *_ud;
    int64_t _start_us, _deadline_us;
    mg_fval_t *_val; /* one reference, when features are attached */
    int _status;     /* mg_fstatus_t + 1; 0 = the app has no features (nothing to say) */
    bool _strip;     /* features are on: client-sent feature headers are never forwarded */
    bool _repeat;    /* _val went out on an earlier request too */
} mg_features_ticket_t;

/* Worker |worker|'s lookups on |base|; connects to Redis (asynchronously). NULL when out of
 * memory. */
mg_features_t *mg_features_new(mg_fsource_t *src, struct event_base *base, unsigned worker);
/* Cancels everything in flight (no callback is called). NULL is fine. */
void mg_features_free(mg_features_t *f);

/*
 * Starts the lookup for a request to the route (|app|, |env|) with request fields |hdrs|. |f|
 * may be NULL (features off). Returns MG_OK when the outcome is known already, or MG_E_AGAIN when
 * done(ud) will be called later on this thread, once, within the app's timeout.
 */
mg_err_t mg_features_start(mg_features_t *f, mg_features_ticket_t *t, const char *app,
                           const char *env, const mg_hdr_t *hdrs, size_t n,
                           mg_features_done_fn done, void *ud);

/* Rewrites the upstream request fields |h| (n used, room for n + 2): removes any
 * x-user-features / x-modelgate-features the client sent (when features are on) and appends
 * the gateway's. Returns the new count. */
size_t mg_features_headers(const mg_features_ticket_t *t, mg_hdr_t *h, size_t n);

/* Removes from |h| (n fields: request trailers) any x-user-features / x-modelgate-features
 * when features are on: only the gateway says what a user's features are, in trailers too.
 * Returns the new count. */
size_t mg_features_strip(const mg_features_ticket_t *t, mg_hdr_t *h, size_t n);

/* For the access log: "hit", "miss", ... or NULL when the app has no features; the snapshot's
 * short hash or NULL when none was sent. */
const char *mg_features_status(const mg_features_ticket_t *t);
const char *mg_features_hash(const mg_features_ticket_t *t);

/* Cancels a pending lookup and drops the snapshot. Idempotent; a zeroed ticket is fine. */
void mg_features_release(mg_features_ticket_t *t);

#endif /* MG_FEATURES_FEATURES_H */
