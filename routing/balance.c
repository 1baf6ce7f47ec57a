/*
 * routing/balance.c - pod selection policies (see balance.h for the contract).
 *
 * DESIGN
 * Every pick starts the same way: the candidate mask (usable, untried, weight > 0, below n) and
 * each candidate's effective weight (its weight after slow start, in thousandths so that the
 * ramp has resolution even for weight 1). Then:
 *   - round robin runs nginx's smooth weighted round robin over the candidates on the calling
 *     worker's own row of current weights. Scaling every weight by 1000 leaves the sequence
 *     unchanged (the algorithm only compares and adds), so {5,1,1} still gives a a b a c a a.
 *   - least request draws two distinct candidates with probability proportional to their
 *     effective weights and keeps the one with fewer in-flight requests per unit of weight.
 *     Drawing by weight makes weights hold even when every pod is idle (the tie then goes to
 *     the first drawn); comparing load per weight makes them hold under load.
 *   - consistent hash binary-searches the ring for the mixed key and walks forward, visiting
 *     each pod once, to the first candidate under its load bound. The bound is
 *     ceil(c * (L + 1) * w / W), with L and W the in-flight sum and weight sum of the
 *     candidates: the capacities then add up to more than L, so some candidate is always
 *     under its bound, and a pod never holds more than its share of c * (L + 1).
 * Arithmetic stays in 64 bits: effective weights are <= 1e9 (< 2^30), c is kept in percent
 * (<= 1000) and L + 1 is clamped at 2^23 in the bound, so c% * (L + 1) * w < 2^63.
 */
#include "routing/balance.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CACHE_LINE 64
#define MAX_WORKERS 1024
#define DEFAULT_POINTS 160
#define MAX_POINTS 1024
#define DEFAULT_LOAD_PCT 125
#define MIN_RAMP_PERMILLE 100 /* slow start never goes below 1/10 of the weight */
#define LOAD_CLAMP ((uint64_t)1 << 23)
#define GOLDEN 0x9e3779b97f4a7c15ull

typedef struct inflight {
    _Alignas(CACHE_LINE) atomic_uint v; /* one cache line per pod: workers hammer these */
} inflight_t;

typedef struct ring_point {
    uint64_t pos;
    uint32_t pod;
} ring_point_t;

struct mg_balance {
    mg_balance_policy_t policy;
    size_t n;          /* 1..64 */
    uint64_t all;      /* bits 0..n-1 */
    uint64_t weighted; /* bits of pods with weight > 0 */
    uint32_t weights[MG_BALANCE_MAX_PODS];
    uint32_t slow_start_ms;
    uint32_t load_pct;    /* c * 100, in (100, 1000] */
    unsigned workers;     /* >= 1 */
    size_t wrr_stride;    /* int64_t per round-robin row: n rounded up to a cache line */
    int64_t *wrr;         /* workers rows of current weights; row w is only touched by worker w */
    inflight_t *inflight; /* n counters of our own, unless opts->inflight gave them */
    atomic_uint *ctr[MG_BALANCE_MAX_PODS]; /* the counters in use: ours or the caller's */
    ring_point_t *ring;   /* sorted by (pos, pod); NULL unless consistent hash */
    size_t nring;
};

/* ---------- hashing and random numbers ---------- */

/* splitmix64's finalizer: a bijection with full avalanche, so sequential keys spread. */
static uint64_t mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

static _Thread_local uint64_t tls_rng;
static atomic_uint_fast64_t seed_seq;

static uint64_t new_seed(const void *where)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t s = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    s ^= (uint64_t)(uintptr_t)where;
    s += atomic_fetch_add_explicit(&seed_seq, 1, memory_order_relaxed) * GOLDEN;
    s = mix64(s);
    return s ? s : GOLDEN;
}

static uint64_t *rng_of(const mg_pick_ctx_t *ctx)
{
    uint64_t *s = ctx->rng ? ctx->rng : &tls_rng;
    if (*s == 0)
        *s = new_seed(s);
    return s;
}

/* xorshift64* (Vigna): the state is never 0, the output's high bits are the good ones. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* ---------- construction ---------- */

static int cmp_point(const void *a, const void *b)
{
    const ring_point_t *x = a, *y = b;
    if (x->pos != y->pos)
        return x->pos < y->pos ? -1 : 1;
    return x->pod < y->pod ? -1 : x->pod > y->pod;
}

/* Points per pod: points * weight / mean weight of the weighted pods, at least 1. */
static bool build_ring(mg_balance_t *b, const mg_balance_opts_t *opts, unsigned points)
{
    uint64_t wsum = 0, nnz = 0;
    for (size_t i = 0; i < b->n; i++) {
        wsum += b->weights[i];
        nnz += b->weights[i] > 0;
    }
    if (nnz == 0)
        return true; /* every pick is -1; no ring needed */
    uint64_t cnt[MG_BALANCE_MAX_PODS], total = 0;
    for (size_t i = 0; i < b->n; i++) {
        cnt[i] = 0;
        if (b->weights[i] > 0) {
            cnt[i] = ((uint64_t)points * nnz * b->weights[i] + wsum / 2) / wsum;
            if (cnt[i] == 0)
                cnt[i] = 1;
        }
        total += cnt[i];
    }
    b->ring = malloc(total * sizeof(*b->ring));
    if (b->ring == NULL)
        return false;
    size_t k = 0;
    for (size_t i = 0; i < b->n; i++) {
        uint64_t id;
        if (opts != NULL && opts->names != NULL) {
            id = fnv1a64(opts->names[i]);
        } else {
            char buf[8] = {'#', (char)('0' + i / 10), (char)('0' + i % 10), 0};
            id = fnv1a64(buf);
        }
        for (uint64_t r = 0; r < cnt[i]; r++)
            b->ring[k++] = (ring_point_t){mix64(id + (r + 1) * GOLDEN), (uint32_t)i};
    }
    qsort(b->ring, total, sizeof(*b->ring), cmp_point);
    b->nring = total;
    return true;
}

mg_balance_t *mg_balance_new(mg_balance_policy_t policy, const uint32_t *weights, size_t n,
                             const mg_balance_opts_t *opts)
{
    if (n == 0 || n > MG_BALANCE_MAX_PODS || weights == NULL)
        return NULL;
    if (policy != MG_BALANCE_ROUND_ROBIN && policy != MG_BALANCE_LEAST_REQUEST &&
        policy != MG_BALANCE_CONSISTENT_HASH)
        return NULL;
    unsigned workers = 1, points = DEFAULT_POINTS;
    uint32_t load_pct = DEFAULT_LOAD_PCT;
    if (opts != NULL) {
        if (opts->workers > MAX_WORKERS || opts->hash_points > MAX_POINTS)
            return NULL;
        if (opts->hash_load_factor != 0 &&
            !(opts->hash_load_factor > 1.0 && opts->hash_load_factor <= 10.0))
            return NULL; /* also refuses NaN */
        if (opts->workers)
            workers = opts->workers;
        if (opts->hash_points)
            points = opts->hash_points;
        if (opts->hash_load_factor != 0)
            load_pct = (uint32_t)(opts->hash_load_factor * 100.0 + 0.5);
        if (load_pct <= 100)
            load_pct = 101; /* c = 1.001 still has to bound something */
        if (opts->names != NULL)
            for (size_t i = 0; i < n; i++)
                if (opts->names[i] == NULL)
                    return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (weights[i] > MG_BALANCE_MAX_WEIGHT)
            return NULL;

    mg_balance_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->policy = policy;
    b->n = n;
    b->all = n == 64 ? UINT64_MAX : ((uint64_t)1 << n) - 1;
    for (size_t i = 0; i < n; i++) {
        b->weights[i] = weights[i];
        if (weights[i] > 0)
            b->weighted |= (uint64_t)1 << i;
    }
    b->slow_start_ms = opts != NULL ? opts->slow_start_ms : 0;
    b->load_pct = load_pct;
    b->workers = workers;
    b->wrr_stride = (n + CACHE_LINE / sizeof(int64_t) - 1) & ~(CACHE_LINE / sizeof(int64_t) - 1);
    if (policy == MG_BALANCE_ROUND_ROBIN) {
        size_t sz = workers * b->wrr_stride * sizeof(int64_t); /* a multiple of CACHE_LINE */
        if ((b->wrr = aligned_alloc(CACHE_LINE, sz)) == NULL)
            goto fail;
        memset(b->wrr, 0, sz);
    }
    if (opts != NULL && opts->inflight != NULL) {
        for (size_t i = 0; i < n; i++)
            if ((b->ctr[i] = opts->inflight[i]) == NULL)
                goto fail;
    } else {
        if ((b->inflight = aligned_alloc(CACHE_LINE, n * sizeof(inflight_t))) == NULL)
            goto fail;
        for (size_t i = 0; i < n; i++) {
            atomic_init(&b->inflight[i].v, 0);
            b->ctr[i] = &b->inflight[i].v;
        }
    }
    if (policy == MG_BALANCE_CONSISTENT_HASH && !build_ring(b, opts, points))
        goto fail;
    return b;
fail:
    mg_balance_free(b);
    return NULL;
}

void mg_balance_free(mg_balance_t *b)
{
    if (b == NULL)
        return;
    free(b->wrr);
    free(b->inflight);
    free(b->ring);
    free(b);
}

/* ---------- accounting ---------- */

/* Relaxed everywhere: the counters steer load, they publish no other memory. */
static unsigned load_of(const mg_balance_t *b, int i)
{
    return atomic_load_explicit(b->ctr[i], memory_order_relaxed);
}

void mg_balance_acquire(mg_balance_t *b, int i)
{
    if (b != NULL && i >= 0 && (size_t)i < b->n)
        atomic_fetch_add_explicit(b->ctr[i], 1, memory_order_relaxed);
}

void mg_balance_release(mg_balance_t *b, int i)
{
    if (b == NULL || i < 0 || (size_t)i >= b->n)
        return;
    /* A release without its acquire would wrap the counter to 4e9 and starve the pod for
     * good; refuse to go below zero instead. */
    unsigned cur = atomic_load_explicit(b->ctr[i], memory_order_relaxed);
    while (cur > 0 &&
           !atomic_compare_exchange_weak_explicit(b->ctr[i], &cur, cur - 1,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

unsigned mg_balance_inflight(const mg_balance_t *b, int i)
{
    if (b == NULL || i < 0 || (size_t)i >= b->n)
        return 0;
    return load_of(b, i);
}

static uint64_t effective_weight(const mg_balance_t *b, size_t i, uint64_t now_ms,
                                 uint64_t became_ms)
{
    uint64_t full = (uint64_t)b->weights[i] * MG_BALANCE_WEIGHT_UNIT;
    if (b->slow_start_ms == 0 || became_ms == 0 || full == 0)
        return full;
    uint64_t elapsed = now_ms > became_ms ? now_ms - became_ms : 0;
    if (elapsed >= b->slow_start_ms)
        return full;
    uint64_t permille = elapsed * MG_BALANCE_WEIGHT_UNIT / b->slow_start_ms;
    if (permille < MIN_RAMP_PERMILLE)
        permille = MIN_RAMP_PERMILLE;
    return (uint64_t)b->weights[i] * permille;
}

uint64_t mg_balance_weight_at(const mg_balance_t *b, int i, uint64_t now_ms,
                              uint64_t became_usable_ms)
{
    if (b == NULL || i < 0 || (size_t)i >= b->n)
        return 0;
    return effective_weight(b, (size_t)i, now_ms, became_usable_ms);
}

size_t mg_balance_npods(const mg_balance_t *b)
{
    return b != NULL ? b->n : 0;
}

mg_balance_policy_t mg_balance_policy(const mg_balance_t *b)
{
    return b != NULL ? b->policy : MG_BALANCE_ROUND_ROBIN;
}

/* ---------- picks ---------- */

/* Fills ew[i] for every candidate (other entries are left alone); returns their sum. */
static uint64_t candidate_weights(const mg_balance_t *b, const mg_pick_ctx_t *ctx, uint64_t cand,
                                  uint64_t *ew)
{
    uint64_t total = 0;
    for (uint64_t m = cand; m; m &= m - 1) {
        int i = __builtin_ctzll(m);
        uint64_t since = ctx->became_usable_ms != NULL ? ctx->became_usable_ms[i] : 0;
        ew[i] = effective_weight(b, (size_t)i, ctx->now_ms, since);
        total += ew[i];
    }
    return total;
}

static int pick_round_robin(mg_balance_t *b, const mg_pick_ctx_t *ctx, uint64_t cand,
                            const uint64_t *ew)
{
    if (ctx->worker >= b->workers)
        return -1;
    int64_t *cw = b->wrr + (size_t)ctx->worker * b->wrr_stride;
    int64_t total = 0;
    int best = -1;
    for (uint64_t m = cand; m; m &= m - 1) {
        int i = __builtin_ctzll(m);
        cw[i] += (int64_t)ew[i];
        total += (int64_t)ew[i];
        if (best < 0 || cw[i] > cw[best])
            best = i;
    }
    cw[best] -= total;
    return best;
}

/* The candidate that |t| in [0, total) falls on, walking candidates in index order. */
static int weighted_draw(uint64_t cand, const uint64_t *ew, uint64_t t)
{
    int last = -1;
    for (uint64_t m = cand; m; m &= m - 1) {
        last = __builtin_ctzll(m);
        if (t < ew[last])
            return last;
        t -= ew[last];
    }
    return last; /* not reached when t < total */
}

static int pick_least_request(mg_balance_t *b, const mg_pick_ctx_t *ctx, uint64_t cand,
                              const uint64_t *ew, uint64_t total)
{
    if ((cand & (cand - 1)) == 0)
        return __builtin_ctzll(cand); /* a single candidate: no choice to make */
    uint64_t *rng = rng_of(ctx);
    int x = weighted_draw(cand, ew, rng_next(rng) % total);
    uint64_t rest = cand & ~((uint64_t)1 << x);
    int y = weighted_draw(rest, ew, rng_next(rng) % (total - ew[x]));
    /* load(y) / ew(y) < load(x) / ew(x), cross-multiplied: < 2^32 * 2^30 each side */
    if ((uint64_t)load_of(b, y) * ew[x] < (uint64_t)load_of(b, x) * ew[y])
        return y;
    return x;
}

static size_t ring_lower_bound(const mg_balance_t *b, uint64_t pos)
{
    size_t lo = 0, hi = b->nring;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->ring[mid].pos < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == b->nring ? 0 : lo; /* past the last point: wrap to the first */
}

static int pick_hash(mg_balance_t *b, const mg_pick_ctx_t *ctx, uint64_t cand, const uint64_t *ew,
                     uint64_t total)
{
    uint64_t load = 0;
    for (uint64_t m = cand; m; m &= m - 1)
        load += load_of(b, __builtin_ctzll(m));
    uint64_t balls = load + 1 < LOAD_CLAMP ? load + 1 : LOAD_CLAMP;
    uint64_t den = (uint64_t)100 * total;
    size_t at = ring_lower_bound(b, mix64(ctx->key));
    uint64_t seen = 0;
    int first = -1;
    for (size_t k = 0; k < b->nring && (seen & cand) != cand; k++) {
        int p = (int)b->ring[(at + k) % b->nring].pod;
        uint64_t bit = (uint64_t)1 << p;
        if (seen & bit)
            continue;
        seen |= bit;
        if ((cand & bit) == 0)
            continue;
        if (first < 0)
            first = p;
        uint64_t cap = (b->load_pct * balls * ew[p] + den - 1) / den;
        if (load_of(b, p) < cap)
            return p;
    }
    /* Only reachable when other threads moved the counters during the walk: the key's own
     * candidate is still the best answer. */
    return first;
}

int mg_balance_pick(mg_balance_t *b, const mg_pick_ctx_t *ctx)
{
    if (b == NULL || ctx == NULL)
        return -1;
    uint64_t cand = ctx->usable & ~ctx->tried & b->weighted & b->all;
    if (cand == 0)
        return -1;
    uint64_t ew[MG_BALANCE_MAX_PODS];
    uint64_t total = candidate_weights(b, ctx, cand, ew);
    switch (b->policy) {
    case MG_BALANCE_ROUND_ROBIN:
        return pick_round_robin(b, ctx, cand, ew);
    case MG_BALANCE_LEAST_REQUEST:
        return pick_least_request(b, ctx, cand, ew, total);
    case MG_BALANCE_CONSISTENT_HASH:
        if (!ctx->has_key || b->ring == NULL)
            return pick_least_request(b, ctx, cand, ew, total);
        return pick_hash(b, ctx, cand, ew, total);
    }
    return -1;
}

/* ---------- names ---------- */

static const char *const policy_names[] = {
    [MG_BALANCE_ROUND_ROBIN] = "round_robin",
    [MG_BALANCE_LEAST_REQUEST] = "least_request",
    [MG_BALANCE_CONSISTENT_HASH] = "consistent_hash",
};

const char *mg_balance_policy_name(mg_balance_policy_t p)
{
    if ((unsigned)p < sizeof(policy_names) / sizeof(policy_names[0]))
        return policy_names[p];
    return "unknown";
}

bool mg_balance_policy_parse(const char *name, mg_balance_policy_t *out)
{
    if (name == NULL)
        return false;
    for (size_t i = 0; i < sizeof(policy_names) / sizeof(policy_names[0]); i++) {
        if (strcmp(name, policy_names[i]) == 0) {
            if (out != NULL)
                *out = (mg_balance_policy_t)i;
            return true;
        }
    }
    return false;
}
