/*
 * canary/split.h - weighted traffic split of one route across services (a canary: 90/10).
 *
 * A split divides the traffic of one (app, env) across services 0..n-1 (n <= 64) by integer
 * weights with any total (90/10, 99/1, 50/50, 1/1/1; 0 = the service gets nothing). A request
 * goes to a service either
 *   - at random (mg_split_pick): service i with probability w[i] / sum(w), exactly; or
 *   - sticky by a unit key (mg_split_pick_sticky), a string such as a user id: the same unit
 *     gets the same service on every gateway, machine and restart, as long as the salt and the
 *     weights are the same.
 *
 * Sticky assignment. bucket(unit) = SipHash-2-4(k, unit) mod 10000, where the 128-bit key k is
 * derived from the split's salt: k = LE64(SipHash-2-4(K0, salt)) || LE64(SipHash-2-4(K1, salt))
 * with K0 = the 16 ASCII bytes "modelgate:split0" and K1 = "modelgate:split1". The salt should
 * be a stable name of the split (e.g. "digits-production"): the same user then lands in
 * independent buckets on different routes, and changing the salt reshuffles everyone.
 * Bucket layout: the buckets [0, 10000) are cut into contiguous ranges in service order; service
 * i owns [B(i), B(i+1)) with B(i) = floor(10000 * (w[0] + ... + w[i-1]) / sum(w)). 90/10 is
 * [0, 9000) and [9000, 10000); 1/1/1 is [0, 3333), [3333, 6666), [6666, 10000). A unit in
 * bucket b keeps its service across a weight change unless b falls in another service's range
 * afterwards: 90/10 -> 50/50 moves exactly the units of buckets [5000, 9000) to service 1, and
 * nobody else. With two services (a canary) that is the least movement possible; with more,
 * growing a service also shifts the ranges after it (1/1/1 -> 2/1/1 moves [3333, 5000) to
 * service 0 and [6666, 7500) from service 2 to service 1). Sticky shares are multiples of
 * 1/10000: a service whose share is below 0.01% may own no bucket at all.
 *
 * Fallback. |down| has bit i set when service i cannot serve (all its pods are down). A request
 * whose service is down goes to one of the others that is up, chosen by their weights (sticky:
 * by a second value derived from the unit's hash, so the unit stays put for the outage), and
 * *fallback is set; requests whose service is up are unaffected and *fallback is false. Both
 * picks return -1 when every service with weight > 0 is down.
 *
 * Threading and ownership: a split is built at config load and immutable afterwards; any number
 * of threads may pick concurrently. Random picks use the caller's xorshift state |rng| (owned by
 * the calling thread; 0 is replaced by a seed), or a thread-local one when |rng| is NULL. Picks
 * allocate nothing. mg_split_free must not race with a pick.
 */
#ifndef MG_CANARY_SPLIT_H
#define MG_CANARY_SPLIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MG_SPLIT_BUCKETS 10000u
#define MG_SPLIT_MAX_SERVICES 64

typedef struct mg_split mg_split_t; /* opaque: fields live in split.c */

/*
 * Builds a split over |n| services with |weights| (copied) and |salt| (hashed, not kept; NULL
 * is ""). Returns NULL when n is 0 or above 64, every weight is 0, or memory runs out.
 */
mg_split_t *mg_split_new(const uint32_t *weights, size_t n, const char *salt);
void mg_split_free(mg_split_t *s); /* NULL is fine */

/* A random service index in [0, n), or -1 (see Fallback above). |fallback| may be NULL. */
int mg_split_pick(const mg_split_t *s, uint64_t down, uint64_t *rng, bool *fallback);

/* The service of |unit| (|len| bytes, need not be NUL-terminated), or -1. |fallback| may be
 * NULL. */
int mg_split_pick_sticky(const mg_split_t *s, const void *unit, size_t len, uint64_t down,
                         bool *fallback);

/* The bucket of |unit| in [0, MG_SPLIT_BUCKETS): depends on the salt only, not the weights. */
uint32_t mg_split_bucket(const mg_split_t *s, const void *unit, size_t len);

/* The service owning |bucket| (-1 when bucket >= MG_SPLIT_BUCKETS). */
int mg_split_owner(const mg_split_t *s, uint32_t bucket);

/* Service |i|'s bucket range [*lo, *hi) (empty when lo == hi); false when i >= n. */
bool mg_split_range(const mg_split_t *s, size_t i, uint32_t *lo, uint32_t *hi);

size_t mg_split_nservices(const mg_split_t *s);

/* SipHash-2-4 (Aumasson and Bernstein) of |len| bytes with the 16-byte |key|. */
uint64_t mg_split_siphash24(const uint8_t key[16], const void *data, size_t len);

#endif /* MG_CANARY_SPLIT_H */
