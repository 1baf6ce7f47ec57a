/*
 * canary/split.c - weighted traffic split (see split.h for the contract and the bucket layout).
 *
 * DESIGN
 * A split keeps two views of the same weights: the exact cumulative weights, which random picks
 * draw from (so 1/1/1 is exactly a third each, not 3333/3333/3334 in ten thousandths), and the
 * bucket boundaries, which sticky picks look up. Both are laid out in service order, and the
 * boundaries depend only on the cumulative weights, which is what keeps a unit on its service
 * when an unrelated part of the weights changes. A fallback is a second, independent draw over
 * the services that are up, so the traffic of a down service spreads over the others in
 * proportion to their weights and the others' own traffic does not move.
 */
#include "canary/split.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GOLDEN 0x9e3779b97f4a7c15ull

struct mg_split {
    size_t n;          /* 1..64 */
    uint64_t weighted; /* bits of services with weight > 0 */
    uint32_t weights[MG_SPLIT_MAX_SERVICES];
    uint64_t total;                            /* sum of weights, > 0 */
    uint32_t bound[MG_SPLIT_MAX_SERVICES + 1]; /* service i owns buckets [bound[i], bound[i+1]);
                                                  bound[0] = 0, bound[n] = MG_SPLIT_BUCKETS */
    uint8_t key[16];                           /* SipHash key derived from the salt */
};

/* ---------- SipHash-2-4 ---------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* One 8-byte load where the machine is little-endian (the byte loop cost SipHash about half
 * its time: it hashes every feature snapshot). */
static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t mg_split_siphash24(const uint8_t key[16], const void *data, size_t len)
{
    const uint8_t *in = data;
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ull ^ k0;
    uint64_t v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0;
    uint64_t v3 = 0x7465646279746573ull ^ k1;
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = load_le64(in + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        b |= (uint64_t)in[whole + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---------- random numbers ---------- */

static uint64_t mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static _Thread_local uint64_t tls_rng;
static atomic_uint_fast64_t seed_seq;

static uint64_t *rng_of(uint64_t *rng)
{
    uint64_t *s = rng != NULL ? rng : &tls_rng;
    if (*s == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        x ^= (uint64_t)(uintptr_t)s;
        x += atomic_fetch_add_explicit(&seed_seq, 1, memory_order_relaxed) * GOLDEN;
        x = mix64(x);
        *s = x ? x : GOLDEN;
    }
    return s;
}

/* xorshift64* (Vigna) */
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

mg_split_t *mg_split_new(const uint32_t *weights, size_t n, const char *salt)
{
    if (weights == NULL || n == 0 || n > MG_SPLIT_MAX_SERVICES)
        return NULL;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += weights[i];
    if (total == 0)
        return NULL;
    mg_split_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->n = n;
    s->total = total;
    uint64_t cum = 0;
    for (size_t i = 0; i < n; i++) {
        s->weights[i] = weights[i];
        if (weights[i] > 0)
            s->weighted |= (uint64_t)1 << i;
        s->bound[i] = (uint32_t)(cum * MG_SPLIT_BUCKETS / total); /* cum < 2^38: no overflow */
        cum += weights[i];
    }
    s->bound[n] = MG_SPLIT_BUCKETS;

    static const uint8_t k0[16] = "modelgate:split0", k1[16] = "modelgate:split1";
    if (salt == NULL)
        salt = "";
    store_le64(s->key, mg_split_siphash24(k0, salt, strlen(salt)));
    store_le64(s->key + 8, mg_split_siphash24(k1, salt, strlen(salt)));
    return s;
}

void mg_split_free(mg_split_t *s)
{
    free(s);
}

size_t mg_split_nservices(const mg_split_t *s)
{
    return s != NULL ? s->n : 0;
}

bool mg_split_range(const mg_split_t *s, size_t i, uint32_t *lo, uint32_t *hi)
{
    if (s == NULL || i >= s->n)
        return false;
    if (lo != NULL)
        *lo = s->bound[i];
    if (hi != NULL)
        *hi = s->bound[i + 1];
    return true;
}

int mg_split_owner(const mg_split_t *s, uint32_t bucket)
{
    if (s == NULL || bucket >= MG_SPLIT_BUCKETS)
        return -1;
    /* the last i with bound[i] <= bucket; an empty range [b, b) never wins because the next
     * service's bound[i + 1] = b is also <= bucket */
    size_t lo = 0, hi = s->n; /* answer in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->bound[mid] <= bucket)
            lo = mid;
        else
            hi = mid;
    }
    return (int)lo;
}

/* ---------- picks ---------- */

/* The service among |mask| that |t| in [0, sum of their weights) falls on, in service order. */
static int weighted_draw(const mg_split_t *s, uint64_t mask, uint64_t t)
{
    int last = -1;
    for (uint64_t m = mask; m; m &= m - 1) {
        last = __builtin_ctzll(m);
        if (t < s->weights[last])
            return last;
        t -= s->weights[last];
    }
    return last; /* not reached when t is in range */
}

/* |choice| is the no-outage answer; |draw| is a second value for the fallback draw. */
static int settle(const mg_split_t *s, int choice, uint64_t down, uint64_t draw, bool *fallback)
{
    if (fallback != NULL)
        *fallback = false;
    if ((down & ((uint64_t)1 << choice)) == 0)
        return choice;
    uint64_t up = s->weighted & ~down, sum = 0;
    if (up == 0)
        return -1;
    for (uint64_t m = up; m; m &= m - 1)
        sum += s->weights[__builtin_ctzll(m)];
    if (fallback != NULL)
        *fallback = true;
    return weighted_draw(s, up, draw % sum);
}

int mg_split_pick(const mg_split_t *s, uint64_t down, uint64_t *rng, bool *fallback)
{
    if (fallback != NULL)
        *fallback = false;
    if (s == NULL)
        return -1;
    uint64_t *r = rng_of(rng);
    int choice = weighted_draw(s, s->weighted, rng_next(r) % s->total);
    uint64_t draw = (down >> choice) & 1 ? rng_next(r) : 0; /* the second draw only if needed */
    return settle(s, choice, down, draw, fallback);
}

uint32_t mg_split_bucket(const mg_split_t *s, const void *unit, size_t len)
{
    if (s == NULL)
        return 0;
    return (uint32_t)(mg_split_siphash24(s->key, unit, len) % MG_SPLIT_BUCKETS);
}

int mg_split_pick_sticky(const mg_split_t *s, const void *unit, size_t len, uint64_t down,
                         bool *fallback)
{
    if (fallback != NULL)
        *fallback = false;
    if (s == NULL || (unit == NULL && len > 0))
        return -1;
    uint64_t h = mg_split_siphash24(s->key, unit, len);
    int choice = mg_split_owner(s, (uint32_t)(h % MG_SPLIT_BUCKETS));
    return settle(s, choice, down, mix64(h ^ GOLDEN), fallback);
}
