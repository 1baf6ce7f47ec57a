/*
 * routing/podstate.h - what the gateway knows about one pod of one service right now.
 *
 * Routing snapshots are rebuilt on every reload and DNS change, but a pod's health, ejection and
 * load must survive them: a pod ejected a second ago stays ejected in the new snapshot, and the
 * requests still running on it under the old snapshot still count. So the state lives here, in a
 * process-wide registry keyed by (service, pod address), and snapshots point to it.
 *
 * Writers: workers (load counters, passive failures and ejections) and the control thread
 * (active health checks, which set |health|). Every field is a relaxed atomic: each is a
 * self-contained fact, none publishes other memory. States are never freed while the process
 * runs (a pod that disappears keeps a few hundred bytes; see mg_podstate_free_all).
 */
#ifndef MG_ROUTING_PODSTATE_H
#define MG_ROUTING_PODSTATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/stats.h"

typedef enum mg_pod_health {
    MG_POD_HEALTH_UNCHECKED = 0, /* no active check configured: usable */
    MG_POD_HEALTH_UNKNOWN = 1,   /* checked, no verdict yet: not usable */
    MG_POD_HEALTH_HEALTHY = 2,
    MG_POD_HEALTH_UNHEALTHY = 3,
} mg_pod_health_t;

typedef struct mg_podstate {
    _Alignas(64) atomic_uint inflight; /* requests on the pod now, every worker */
    atomic_uint waiting;               /* of those, still without a response head */
    atomic_uint conns;                 /* upstream connections open to it, every worker */
    atomic_uint queued; /* requests waiting for one of them (upstream.max_conns_per_pod) */
    _Alignas(64) atomic_int health;    /* mg_pod_health_t */
    atomic_uint consecutive_failures;  /* passive: reset by a success */
    atomic_uint ejections;             /* passive: grows each ejection's length, decays */
    atomic_uint_fast64_t ejected_until_ms; /* monotonic ms; 0 or past = not ejected */
    atomic_uint_fast64_t usable_since_ms;  /* when it last became usable (slow start) */
    char *service, *pod;
    mg_stats_t *stats;
    bool retired; /* under the registry's lock */
    bool routed;  /* named by a routing marked current before; under the registry's lock */
    struct mg_podstate *next;
} mg_podstate_t;

/* The state of |pod| in |service|, created the first time (health UNCHECKED). NULL when out of
 * memory. Thread-safe; takes a mutex, so call it when building snapshots only. */
mg_podstate_t *mg_podstate_get(const char *service, const char *pod);
/* Calls |fn| on every state that is in the current routing (see mg_podstate_mark_current),
 * under the registry's lock. */
void mg_podstate_each(void (*fn)(void *ud, mg_podstate_t *ps), void *ud);
/*
 * The routing now names exactly the |n| states of |current|: the others (pods gone from DNS or
 * from the document) are retired from /metrics with their request series, so a cluster's
 * rolling updates do not grow the scrape forever; a pod that comes back is listed again with
 * its counters. States are not freed (an old snapshot may still point to them). One critical
 * section, so a scrape never sees a half-marked registry.
 */
void mg_podstate_mark_current(mg_podstate_t *const *current, size_t n);
/* Is |ps| named by the routing last marked current (the one a reload replaces)? A state made
 * for the document being built is not, until it is marked. */
bool mg_podstate_in_routing(mg_podstate_t *ps);
/* Monotonic milliseconds (the clock of ejected_until_ms and usable_since_ms). */
uint64_t mg_podstate_now_ms(void);
/* Can the pod take a request now (health and ejection; limits are the caller's)? */
bool mg_podstate_usable(const mg_podstate_t *ps, uint64_t now_ms);
/* Sets the active-check verdict; stamps usable_since_ms when the pod becomes usable. */
void mg_podstate_set_health(mg_podstate_t *ps, mg_pod_health_t h);
/* Frees every state (at exit, when no thread uses them any more). */
void mg_podstate_free_all(void);

#endif /* MG_ROUTING_PODSTATE_H */
