/*
 * features/lru.h - a worker's local feature cache: LRU with TTL, stale-while-revalidate and
 * negative entries.
 *
 * Each entry maps a key (bytes) to a value (an opaque pointer; NULL records a negative entry:
 * "this user has no features") and two instants: until |fresh_until| the entry is FRESH; until
 * |stale_until| it is STALE - still served, but the caller should refresh it in the background;
 * after that it is gone. The least recently used entry is evicted when the cache is full.
 *
 * Threading: none - one cache per worker, used from its thread only, so no locks (the point of
 * a per-worker cache). Ownership: the cache keeps a copy of each key and owns one reference on
 * each value, released with the |drop| function given at creation (on replace, eviction, expiry
 * and free). Values returned by mg_flru_get are borrowed: valid until the next call on the cache.
 */
#ifndef MG_FEATURES_LRU_H
#define MG_FEATURES_LRU_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct mg_flru mg_flru_t;

typedef enum mg_flru_state {
    MG_FLRU_ABSENT = 0, /* no entry, or it expired (then it was removed) */
    MG_FLRU_FRESH = 1,
    MG_FLRU_STALE = 2, /* serve it, and refresh it */
} mg_flru_state_t;

/* A cache of at most |max_entries| (>= 1) entries; |drop| (may be NULL) releases a value. */
mg_flru_t *mg_flru_new(size_t max_entries, void (*drop)(void *value));
void mg_flru_free(mg_flru_t *l); /* NULL is fine */

/* Looks |key| up at |now| (any monotonic unit, the same as the put's). On FRESH or STALE,
 * *value receives the entry's value (NULL for a negative entry) and the entry becomes the most
 * recently used. */
mg_flru_state_t mg_flru_get(mg_flru_t *l, const void *key, size_t klen, int64_t now, void **value);

/* Inserts or replaces |key|: the cache takes over the caller's reference on |value| (NULL =
 * negative entry), also on failure (then the value is dropped). Evicts the least recently used
 * entry when full. MG_OK, or MG_E_NOMEM. */
mg_err_t mg_flru_put(mg_flru_t *l, const void *key, size_t klen, void *value, int64_t fresh_until,
                     int64_t stale_until);

/* Removes |key| if present. */
void mg_flru_del(mg_flru_t *l, const void *key, size_t klen);

size_t mg_flru_size(const mg_flru_t *l);

#endif /* MG_FEATURES_LRU_H */
