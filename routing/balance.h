/*
 * routing/balance.h - pod selection policies for one service.
 *
 * A balancer picks one of a service's pods 0..n-1 (n <= 64) for a request. It knows the pods'
 * integer weights (0 = drained: never picked) and, per pick, what the caller knows about them
 * right now, as bitmasks with bit i = pod i:
 *   usable - the pod may take traffic (healthy, not ejected, under its limits);
 *   tried  - this request already tried the pod (retries skip it).
 * Pods outside 0..n-1 are ignored in both masks. A pick returns a pod index, or -1 when no pod
 * has weight > 0, is usable and is untried.
 *
 * Policies:
 *   MG_BALANCE_ROUND_ROBIN     smooth weighted round robin, exactly nginx's
 *                              (ngx_http_upstream_get_peer): every candidate's current weight
 *                              grows by its effective weight, the largest wins (the first one
 *                              on a tie) and loses the total. Weights {5,1,1} give a a b a c a a,
 *                              and any sum(w) consecutive picks from the start give pod i
 *                              exactly w[i] times.
 *   MG_BALANCE_LEAST_REQUEST   power of two choices: two distinct candidates drawn at random in
 *                              proportion to their weights; the one with fewer in-flight
 *                              requests per unit of weight wins (the first drawn on a tie).
 *   MG_BALANCE_CONSISTENT_HASH a hash ring with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
 *                              "Consistent Hashing with Bounded Loads", 2017; the algorithm of
 *                              HAProxy's hash-balance-factor): the key's point on the ring, then
 *                              forward to the first pod that is a candidate and whose in-flight
 *                              count is below ceil(c * (in-flight of all candidates + 1) * its
 *                              weight share). c = 1.25 by default. A pick without a key falls
 *                              back to MG_BALANCE_LEAST_REQUEST.
 *
 * Why a ring (and not Maglev or jump hash): jump hash can only add or remove the last bucket, so
 * removing a pod in the middle would move most keys; Maglev lookups are O(1) but its tables
 * move somewhat more than 1/N of keys on a change and walking a Maglev table does not preserve
 * the "only the keys of the missing pod move" property as cleanly. A ring moves about 1/N of the
 * keys when a pod joins, moves exactly the keys of a pod that leaves or becomes unusable (they
 * go to the next pods on the ring, everyone else stays), and is the structure the bounded-load
 * algorithm is defined on. Lookups are a binary search over ~160 points per pod, O(log N).
 * The ring is built once in mg_balance_new from the pod identities (opts->names: points are
 * hashed from a pod's name, not its index, so a pod keeps its points when others are removed
 * and the indices shift) and weights; health, retries and load never rebuild it, they are
 * skipped at lookup. Points per pod are proportional to weight / mean weight (ketama's rule),
 * so adding a pod of average weight leaves everyone else's points in place; changing one pod's
 * weight also moves a few keys between the other pods.
 *
 * Slow start (opts->slow_start_ms > 0 and ctx->became_usable_ms given): a pod that became usable
 * at t gets weight * max(1/10, (now - t) / window) until the window has passed; it applies to
 * every policy (round-robin effective weight, P2C draw and load ratio, hash load bound).
 *
 * Threading: a balancer is built at config load and is immutable afterwards except for
 *   - the in-flight counters (atomics, shared by every worker): the caller calls
 *     mg_balance_acquire when a request starts on a pod and mg_balance_release exactly once
 *     when it ends, on the same balancer (a request holds the snapshot it was routed with, so
 *     a reload never loses a release);
 *   - the round-robin state, which is per worker: ctx->worker selects a row of its own (a
 *     cache line apart from the others), so picks are lock-free and each worker runs nginx's
 *     sequence on its own, as nginx's worker processes do. Two threads must never pick with
 *     the same worker index at the same time; worker >= opts->workers makes the pick fail (-1).
 * Picks allocate nothing, take no lock and make no system call, except that the first pick on
 * a thread without ctx->rng seeds a thread-local generator from the monotonic clock once.
 * mg_balance_free must not race with any other call on the balancer.
 */
#ifndef MG_ROUTING_BALANCE_H
#define MG_ROUTING_BALANCE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MG_BALANCE_MAX_PODS 64         /* one bit per pod in the masks */
#define MG_BALANCE_MAX_WEIGHT 1000000u /* larger weights are refused by mg_balance_new */
#define MG_BALANCE_WEIGHT_UNIT 1000u   /* mg_balance_weight_at: full weight = w * this */

typedef enum mg_balance_policy {
    MG_BALANCE_ROUND_ROBIN = 0,
    MG_BALANCE_LEAST_REQUEST = 1,
    MG_BALANCE_CONSISTENT_HASH = 2,
} mg_balance_policy_t;

typedef struct mg_balance_opts {
    unsigned workers;         /* rows of round-robin state, one per worker thread; 0 = 1,
                                 at most 1024 */
    uint32_t slow_start_ms;   /* ramp window for newly usable pods; 0 = no slow start */
    double hash_load_factor;  /* c of the bounded-load hash: 0 = 1.25, else in (1, 10] */
    unsigned hash_points;     /* ring points of an average-weight pod: 0 = 160, else <= 1024 */
    atomic_uint *const *inflight; /* n in-flight counters to use instead of the balancer's own
                                     (so that load survives a rebuilt balancer); NULL = own */
    const char *const *names; /* pod identities for the ring (e.g. "10.0.0.7:9000"), n of them;
                                 NULL = the pod index (then removing a pod shifts the others'
                                 points); the strings are hashed, not kept */
} mg_balance_opts_t;

typedef struct mg_pick_ctx {
    uint64_t usable;                  /* bit i: pod i may take traffic */
    uint64_t tried;                   /* bit i: this request already tried pod i */
    uint64_t key;                     /* consistent hash key (any 64-bit value; it is mixed) */
    bool has_key;                     /* false: the hash policy picks like least_request */
    uint64_t now_ms;                  /* monotonic clock, for slow start */
    const uint64_t *became_usable_ms; /* n entries on the same clock (0 = usable for long), or
                                         NULL = no pod is slow-starting */
    unsigned worker;                  /* < opts.workers: selects the round-robin row */
    uint64_t *rng;                    /* xorshift state owned by the calling thread, or NULL
                                         for a thread-local one; 0 is replaced by a seed */
} mg_pick_ctx_t;

typedef struct mg_balance mg_balance_t; /* opaque: fields live in balance.c */

/*
 * Builds a balancer over |n| pods with |weights| (copied). Returns NULL when n is 0 or above 64,
 * a weight is above MG_BALANCE_MAX_WEIGHT, an option is out of range (opts may be NULL for the
 * defaults), or memory runs out. All weights 0 is valid: every pick then returns -1.
 */
mg_balance_t *mg_balance_new(mg_balance_policy_t policy, const uint32_t *weights, size_t n,
                             const mg_balance_opts_t *opts);
void mg_balance_free(mg_balance_t *b); /* NULL is fine */

/* Returns a pod index in [0, n), or -1 when no pod is a candidate (see the top). */
int mg_balance_pick(mg_balance_t *b, const mg_pick_ctx_t *ctx);

/* In-flight accounting for pod |i| (ignored when i is out of range). Thread-safe. */
void mg_balance_acquire(mg_balance_t *b, int i);
void mg_balance_release(mg_balance_t *b, int i);
unsigned mg_balance_inflight(const mg_balance_t *b, int i); /* 0 when i is out of range */

/*
 * Pod |i|'s weight after slow start, in units of 1/MG_BALANCE_WEIGHT_UNIT: w * 1000 when
 * became_usable_ms is 0, slow start is off or the window has passed, else
 * w * max(100, 1000 * (now - became) / window). 0 when i is out of range.
 */
uint64_t mg_balance_weight_at(const mg_balance_t *b, int i, uint64_t now_ms,
                              uint64_t became_usable_ms);

size_t mg_balance_npods(const mg_balance_t *b);
mg_balance_policy_t mg_balance_policy(const mg_balance_t *b);

/* "round_robin", "least_request", "consistent_hash"; and back (false when unknown). */
const char *mg_balance_policy_name(mg_balance_policy_t p);
bool mg_balance_policy_parse(const char *name, mg_balance_policy_t *out);

#endif /* MG_ROUTING_BALANCE_H */
