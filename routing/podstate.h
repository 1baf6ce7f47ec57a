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
 * self-contained fact, none publishes other memory.
 *
 * Ownership: a state is reference-counted. mg_podstate_get returns a reference (each snapshot
 * holds one per pod, routing/routes.c), mg_podstate_ref adds one to a state the caller already
 * holds (each worker's upstream pool to the pod, gateway/upstream.c), and mg_podstate_unref
 * drops one. The last unref frees the state and its request series (common/stats.h) once no
 * snapshot and no pool names the pod any more: a cluster whose pods take new addresses on each
 * rollout keeps only the states of its live pods (and of those still finishing requests). The
 * last reference is dropped under the registry's lock, where mg_podstate_get takes its
 * references, so a get never finds a state being freed. A pod that comes back while its state
 * lives gets the same state (health, ejection and counters); one that comes back after it was
 * freed starts afresh: unchecked, not ejected, its counters from zero.
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
    atomic_uint _refs;                     /* references; 0 only while it is being freed */
    unsigned _magic; /* MG_PODSTATE_MAGIC while alive; checked in debug builds */
    char *service, *pod;
    mg_stats_t *stats; /* the pod's request series: one reference, released with the state */
    bool retired; /* under the registry's lock */
    bool routed;  /* named by a routing marked current before; under the registry's lock */
    struct mg_podstate *next, *_prev; /* in the registry; under its lock */
} mg_podstate_t;

#define MG_PODSTATE_MAGIC 0x6d677073u /* "mgps" */

/* The state of |pod| in |service|, with one more reference (the caller's, for
 * mg_podstate_unref), created the first time (health UNCHECKED, counters zero). NULL when out of
 * memory. Thread-safe; takes a mutex, so call it when building snapshots only. */
mg_podstate_t *mg_podstate_get(const char *service, const char *pod);
/* Adds a reference to |ps|, which the caller holds one on already (a snapshot's). No lock. */
void mg_podstate_ref(mg_podstate_t *ps);
/* Drops a reference to |ps| (NULL: nothing). The last frees it with its series: nobody may use
 * it after that. Takes the registry's mutex only for the last one. */
void mg_podstate_unref(mg_podstate_t *ps);
/* States alive (referenced by a snapshot, a pool or a caller), retired ones included. */
size_t mg_podstate_count(void);
/* Calls |fn| on every state that is in the current routing (see mg_podstate_mark_current),
 * under the registry's lock. */
void mg_podstate_each(void (*fn)(void *ud, mg_podstate_t *ps), void *ud);
/*
 * The routing now names exactly the |n| states of |current|: the others (pods gone from DNS or
 * from the document) are retired from /metrics with their request series, so a cluster's
 * rolling updates do not grow the scrape forever; a pod that comes back while its state lives
 * is listed again with its counters. A retired state is freed when its last reference goes (an
 * old snapshot still in use, or an upstream pool with connections, keeps it until then). One
 * critical section, so a scrape never sees a half-marked registry.
 */
void mg_podstate_mark_current(mg_podstate_t *const *current, size_t n);
/* Is |ps| named by the routing last marked current (the one a reload replaces)? A state made
 * for the document being built is not, until it is marked. */
bool mg_podstate_in_routing(mg_podstate_t *ps);
/* Was |ps| taken out of the routing (mg_podstate_mark_current named it before, or named
 * others)? A state no routing was marked with yet is not retired. */
bool mg_podstate_is_retired(mg_podstate_t *ps);
/* Monotonic milliseconds (the clock of ejected_until_ms and usable_since_ms). */
uint64_t mg_podstate_now_ms(void);
/* Can the pod take a request now (health and ejection; limits are the caller's)? */
bool mg_podstate_usable(const mg_podstate_t *ps, uint64_t now_ms);
/* Sets the active-check verdict; stamps usable_since_ms when the pod becomes usable. */
void mg_podstate_set_health(mg_podstate_t *ps, mg_pod_health_t h);
/* Frees every state, referenced or not (at exit, when no thread uses them any more); their
 * series are left to mg_stats_free_all. */
void mg_podstate_free_all(void);

#endif /* MG_ROUTING_PODSTATE_H */
