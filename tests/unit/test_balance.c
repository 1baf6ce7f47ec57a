/*
 * tests/unit/test_balance.c - pod selection policies: smooth weighted round robin, P2C least
 * request, consistent hashing with bounded loads, slow start, and concurrent accounting.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "routing/balance.h"

#define ALL ((uint64_t)-1)

static mg_pick_ctx_t ctx_all(uint64_t *rng)
{
    return (mg_pick_ctx_t){.usable = ALL, .rng = rng};
}

/* The tests' own data generator (independent of the module's). */
static uint64_t trand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static int pick_key(mg_balance_t *b, uint64_t key, uint64_t usable)
{
    mg_pick_ctx_t c = {.usable = usable, .key = key, .has_key = true};
    return mg_balance_pick(b, &c);
}

/* ---------- round robin ---------- */

static void wrr_exact_sequence_5_1_1(void **state)
{
    (void)state;
    const uint32_t w[] = {5, 1, 1};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, 3, NULL);
    assert_non_null(b);
    mg_pick_ctx_t c = ctx_all(NULL);
    char seq[22] = {0};
    for (int i = 0; i < 21; i++)
        seq[i] = (char)('a' + mg_balance_pick(b, &c));
    assert_string_equal(seq, "aabacaaaabacaaaabacaa"); /* nginx's a a b a c a a, three times */
    mg_balance_free(b);
}

static void wrr_workers_have_their_own_sequence(void **state)
{
    (void)state;
    const uint32_t w[] = {5, 1, 1};
    mg_balance_opts_t o = {.workers = 3};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, 3, &o);
    assert_non_null(b);
    char seq[3][8] = {{0}};
    mg_pick_ctx_t c = ctx_all(NULL);
    for (int i = 0; i < 7; i++) /* interleaved: worker 0, 1, 2, 0, 1, 2, ... */
        for (unsigned k = 0; k < 3; k++) {
            c.worker = k;
            seq[k][i] = (char)('a' + mg_balance_pick(b, &c));
        }
    for (int k = 0; k < 3; k++)
        assert_string_equal(seq[k], "aabacaa");
    c.worker = 3; /* out of range: refused, not shared */
    assert_int_equal(mg_balance_pick(b, &c), -1);
    mg_balance_free(b);
}

static void wrr_counts_for_random_weights(void **state)
{
    (void)state;
    uint64_t g = 0x5eed;
    for (int round = 0; round < 50; round++) {
        size_t n = 1 + trand(&g) % 16;
        uint32_t w[16];
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++) {
            w[i] = (uint32_t)(trand(&g) % 5 == 0 ? 0 : 1 + trand(&g) % 50);
            total += w[i];
        }
        if (total == 0)
            w[0] = 1, total = 1;
        mg_balance_t *b = mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, n, NULL);
        assert_non_null(b);
        mg_pick_ctx_t c = ctx_all(NULL);
        static int seq[10000];
        unsigned cnt[16] = {0}, win[16] = {0};
        for (int k = 0; k < 10000; k++) {
            seq[k] = mg_balance_pick(b, &c);
            assert_in_range(seq[k], 0, (int)n - 1);
            cnt[seq[k]]++;
        }
        /* Every window of |total| picks from the start holds exactly w[i] picks of pod i ... */
        size_t q = 10000 / total, r = 10000 % total;
        for (size_t k = 0; k < q * total; k++) {
            win[seq[k]]++;
            if ((k + 1) % total == 0) {
                for (size_t i = 0; i < n; i++)
                    assert_int_equal(win[i], w[i]);
                memset(win, 0, sizeof(win));
            }
        }
        /* ... so the counts are q * w[i] plus the first r picks of a cycle, which keeps them
         * close to the exact share (within about one pick; 2 is a safe margin). */
        for (size_t k = 0; k < r; k++)
            assert_int_equal(seq[q * total + k], seq[k]);
        unsigned head[16] = {0};
        for (size_t k = 0; k < r; k++)
            head[seq[k]]++;
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(cnt[i], q * w[i] + head[i]);
            double exact = 10000.0 * w[i] / (double)total;
            assert_true(fabs(cnt[i] - exact) < 2.0);
            if (w[i] == 0)
                assert_int_equal(cnt[i], 0);
        }
        if (round == 0) {
            printf("wrr: weights");
            for (size_t i = 0; i < n; i++)
                printf(" %u", w[i]);
            printf(" -> counts over 10000 picks");
            for (size_t i = 0; i < n; i++)
                printf(" %u", cnt[i]);
            printf("\n");
        }
        mg_balance_free(b);
    }
    /* and one by hand: sum 10 divides 10000 */
    const uint32_t w[] = {3, 2, 0, 5};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, 4, NULL);
    mg_pick_ctx_t c = ctx_all(NULL);
    unsigned cnt[4] = {0};
    for (int k = 0; k < 10000; k++)
        cnt[mg_balance_pick(b, &c)]++;
    assert_int_equal(cnt[0], 3000);
    assert_int_equal(cnt[1], 2000);
    assert_int_equal(cnt[2], 0);
    assert_int_equal(cnt[3], 5000);
    mg_balance_free(b);
}

/* ---------- every policy: weight 0, usable, tried ---------- */

static const mg_balance_policy_t policies[] = {MG_BALANCE_ROUND_ROBIN, MG_BALANCE_LEAST_REQUEST,
                                               MG_BALANCE_CONSISTENT_HASH};

static void zero_weight_never_picked(void **state)
{
    (void)state;
    const uint32_t w[] = {0, 3, 0, 1, 0};
    for (size_t p = 0; p < 3; p++) {
        mg_balance_t *b = mg_balance_new(policies[p], w, 5, NULL);
        assert_non_null(b);
        uint64_t rng = 7;
        for (uint64_t k = 0; k < 5000; k++) {
            mg_pick_ctx_t c = {.usable = ALL, .rng = &rng, .key = k, .has_key = k % 2};
            int i = mg_balance_pick(b, &c);
            assert_true(i == 1 || i == 3);
        }
        /* only zero-weight pods usable: nothing to pick */
        mg_pick_ctx_t c = {.usable = 0x15, .rng = &rng, .key = 1, .has_key = true};
        assert_int_equal(mg_balance_pick(b, &c), -1);
        mg_balance_free(b);
    }
    const uint32_t z[] = {0, 0};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_CONSISTENT_HASH, z, 2, NULL);
    assert_non_null(b);
    assert_int_equal(pick_key(b, 1, ALL), -1);
    mg_balance_free(b);
}

static void unusable_and_tried_are_skipped(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 2, 3, 4, 5, 6};
    for (size_t p = 0; p < 3; p++) {
        mg_balance_t *b = mg_balance_new(policies[p], w, 6, NULL);
        assert_non_null(b);
        uint64_t rng = 99, g = 1;
        unsigned seen[6] = {0};
        for (uint64_t k = 0; k < 20000; k++) {
            uint64_t usable = trand(&g) & 0x3f, tried = trand(&g) & 0x3f;
            mg_pick_ctx_t c = {.usable = usable | ~(uint64_t)0x3f, /* bits >= n are ignored */
                               .tried = tried,
                               .rng = &rng,
                               .key = trand(&g),
                               .has_key = true};
            int i = mg_balance_pick(b, &c);
            if ((usable & ~tried) == 0) {
                assert_int_equal(i, -1);
                continue;
            }
            assert_in_range(i, 0, 5);
            assert_true(usable & (1u << i));
            assert_false(tried & (1u << i));
            seen[i]++;
        }
        for (int i = 0; i < 6; i++)
            assert_true(seen[i] > 0);
        /* nothing usable, or everything tried: -1 */
        mg_pick_ctx_t c = {.usable = 0, .rng = &rng, .key = 5, .has_key = true};
        assert_int_equal(mg_balance_pick(b, &c), -1);
        c.usable = ALL;
        c.tried = 0x3f;
        assert_int_equal(mg_balance_pick(b, &c), -1);
        /* a retry loop visits every pod once, then gives up */
        c.tried = 0;
        for (int k = 0; k < 6; k++) {
            int i = mg_balance_pick(b, &c);
            assert_in_range(i, 0, 5);
            c.tried |= (uint64_t)1 << i;
        }
        assert_int_equal(c.tried, 0x3f);
        assert_int_equal(mg_balance_pick(b, &c), -1);
        mg_balance_free(b);
    }
}

static void sixty_four_pods(void **state)
{
    (void)state;
    uint32_t w[64];
    for (int i = 0; i < 64; i++)
        w[i] = 1;
    for (size_t p = 0; p < 3; p++) {
        mg_balance_t *b = mg_balance_new(policies[p], w, 64, NULL);
        assert_non_null(b);
        uint64_t rng = 3;
        mg_pick_ctx_t c = {.usable = (uint64_t)1 << 63, .rng = &rng, .key = 42, .has_key = true};
        assert_int_equal(mg_balance_pick(b, &c), 63);
        c.usable = ALL;
        c.tried = ~((uint64_t)1 << 63);
        assert_int_equal(mg_balance_pick(b, &c), 63);
        mg_balance_free(b);
    }
    assert_null(mg_balance_new(MG_BALANCE_ROUND_ROBIN, (uint32_t[65]){0}, 65, NULL));
}

static void bad_arguments(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 1};
    assert_null(mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, 0, NULL));
    assert_null(mg_balance_new(MG_BALANCE_ROUND_ROBIN, NULL, 2, NULL));
    assert_null(mg_balance_new((mg_balance_policy_t)7, w, 2, NULL));
    const uint32_t big[] = {1, MG_BALANCE_MAX_WEIGHT + 1};
    assert_null(mg_balance_new(MG_BALANCE_ROUND_ROBIN, big, 2, NULL));
    mg_balance_opts_t o = {.hash_load_factor = 1.0};
    assert_null(mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w, 2, &o));
    o.hash_load_factor = NAN;
    assert_null(mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w, 2, &o));
    o.hash_load_factor = 11;
    assert_null(mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w, 2, &o));
    o = (mg_balance_opts_t){.workers = 5000};
    assert_null(mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, 2, &o));
    const char *names[] = {"a", NULL};
    o = (mg_balance_opts_t){.names = names};
    assert_null(mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w, 2, &o));
    assert_int_equal(mg_balance_pick(NULL, NULL), -1);
    mg_balance_free(NULL);

    mg_balance_t *b = mg_balance_new(MG_BALANCE_LEAST_REQUEST, w, 2, NULL);
    assert_non_null(b);
    assert_int_equal(mg_balance_npods(b), 2);
    assert_int_equal(mg_balance_policy(b), MG_BALANCE_LEAST_REQUEST);
    mg_balance_release(b, 0); /* a stray release does not wrap the counter */
    assert_int_equal(mg_balance_inflight(b, 0), 0);
    mg_balance_acquire(b, 2); /* out of range: ignored */
    mg_balance_acquire(b, -1);
    assert_int_equal(mg_balance_inflight(b, 2), 0);
    mg_balance_acquire(b, 1);
    mg_balance_acquire(b, 1);
    assert_int_equal(mg_balance_inflight(b, 1), 2);
    mg_balance_release(b, 1);
    assert_int_equal(mg_balance_inflight(b, 1), 1);
    mg_balance_free(b);

    for (size_t p = 0; p < 3; p++) {
        mg_balance_policy_t back;
        assert_true(mg_balance_policy_parse(mg_balance_policy_name(policies[p]), &back));
        assert_int_equal(back, policies[p]);
    }
    assert_string_equal(mg_balance_policy_name(MG_BALANCE_LEAST_REQUEST), "least_request");
    assert_false(mg_balance_policy_parse("random", NULL));
    assert_false(mg_balance_policy_parse(NULL, NULL));
}

/* ---------- least request, power of two choices ---------- */

static void p2c_prefers_less_loaded(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 1, 1, 1};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_LEAST_REQUEST, w, 4, NULL);
    assert_non_null(b);
    for (int k = 0; k < 100; k++)
        mg_balance_acquire(b, 0);
    for (int i = 1; i < 4; i++)
        for (int k = 0; k < 10; k++)
            mg_balance_acquire(b, i);
    /* pod 0 holds 10x the others; picks come and go (acquire, then release) */
    uint64_t rng = 12345;
    mg_pick_ctx_t c = ctx_all(&rng);
    unsigned cnt[4] = {0};
    for (int k = 0; k < 10000; k++) {
        int i = mg_balance_pick(b, &c);
        cnt[i]++;
        mg_balance_acquire(b, i);
        mg_balance_release(b, i);
    }
    printf("p2c: pod with 10x in-flight got %u of 10000 picks (others %u %u %u)\n", cnt[0], cnt[1],
           cnt[2], cnt[3]);
    assert_true(cnt[0] < 1000);
    for (int i = 1; i < 4; i++)
        assert_true(cnt[i] > 2500);

    /* with load held, in-flight counts even out: the busy pod gets nothing until the others
     * catch up with it */
    for (int k = 0; k < 270; k++)
        mg_balance_acquire(b, mg_balance_pick(b, &c));
    assert_in_range(mg_balance_inflight(b, 0), 100, 102); /* ties may go either way */
    for (int i = 1; i < 4; i++)
        assert_in_range(mg_balance_inflight(b, i), 95, 102);
    mg_balance_free(b);
}

static void p2c_respects_weights(void **state)
{
    (void)state;
    const uint32_t w[] = {4, 3, 2, 1};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_LEAST_REQUEST, w, 4, NULL);
    assert_non_null(b);
    uint64_t rng = 777;
    mg_pick_ctx_t c = ctx_all(&rng);
    /* idle pods (released at once): the weighted draw alone decides */
    unsigned cnt[4] = {0};
    for (int k = 0; k < 100000; k++) {
        int i = mg_balance_pick(b, &c);
        cnt[i]++;
        mg_balance_acquire(b, i);
        mg_balance_release(b, i);
    }
    printf("p2c idle, weights 4/3/2/1: %u %u %u %u of 100000\n", cnt[0], cnt[1], cnt[2], cnt[3]);
    for (int i = 0; i < 4; i++)
        assert_true(fabs(cnt[i] / 100000.0 - w[i] / 10.0) < 0.01);
    /* held load: in-flight per weight evens out */
    for (int k = 0; k < 10000; k++)
        mg_balance_acquire(b, mg_balance_pick(b, &c));
    printf("p2c loaded, weights 4/3/2/1: in-flight %u %u %u %u\n", mg_balance_inflight(b, 0),
           mg_balance_inflight(b, 1), mg_balance_inflight(b, 2), mg_balance_inflight(b, 3));
    for (int i = 0; i < 4; i++)
        assert_true(fabs(mg_balance_inflight(b, i) - 1000.0 * w[i]) <= 20);
    mg_balance_free(b);
}

static void p2c_single_candidate_and_thread_local_rng(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 1, 1};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_LEAST_REQUEST, w, 3, NULL);
    mg_pick_ctx_t c = {.usable = 0x2, .rng = NULL};
    for (int k = 0; k < 10; k++) {
        mg_balance_acquire(b, 1);
        assert_int_equal(mg_balance_pick(b, &c), 1);
    }
    c.usable = ALL; /* thread-local generator: still valid picks, both others reached */
    unsigned cnt[3] = {0};
    for (int k = 0; k < 1000; k++)
        cnt[mg_balance_pick(b, &c)]++;
    assert_int_equal(cnt[1], 0);
    assert_true(cnt[0] > 300 && cnt[2] > 300);
    uint64_t zero = 0; /* a zero state is replaced by a seed, not stuck at zero */
    c.rng = &zero;
    assert_true(mg_balance_pick(b, &c) >= 0);
    assert_true(zero != 0);
    mg_balance_free(b);
}

/* ---------- consistent hash ---------- */

static const char *const names5[] = {"10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000",
                                     "10.0.0.4:9000", "10.0.0.5:9000"};

static mg_balance_t *ring_of(const char *const *names, size_t n)
{
    uint32_t w[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    mg_balance_opts_t o = {.names = names};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w, n, &o);
    assert_non_null(b);
    return b;
}

static void hash_same_key_same_pod(void **state)
{
    (void)state;
    mg_balance_t *a = ring_of(names5, 4), *b = ring_of(names5, 4);
    unsigned cnt[4] = {0};
    for (uint64_t k = 0; k < 10000; k++) {
        int i = pick_key(a, k, ALL);
        assert_in_range(i, 0, 3);
        assert_int_equal(pick_key(a, k, ALL), i); /* again */
        assert_int_equal(pick_key(b, k, ALL), i); /* another gateway, same document */
        cnt[i]++;
    }
    printf("hash: 10000 keys over 4 pods: %u %u %u %u\n", cnt[0], cnt[1], cnt[2], cnt[3]);
    for (int i = 0; i < 4; i++)
        assert_true(cnt[i] > 1800 && cnt[i] < 3200); /* 160 points each: within ~25% */
    mg_balance_free(a);
    mg_balance_free(b);
}

static void hash_adding_a_pod_moves_about_a_fifth(void **state)
{
    (void)state;
    mg_balance_t *four = ring_of(names5, 4), *five = ring_of(names5, 5);
    unsigned moved = 0;
    for (uint64_t k = 0; k < 10000; k++) {
        int before = pick_key(four, k, ALL), after = pick_key(five, k, ALL);
        if (before != after) {
            moved++;
            assert_int_equal(after, 4); /* keys only move to the new pod */
        }
    }
    printf("hash: adding a 5th pod to 4 moved %u of 10000 keys (%.1f%%)\n", moved, moved / 100.0);
    assert_true(moved >= 1500 && moved <= 2500);
    mg_balance_free(four);
    mg_balance_free(five);
}

static void hash_removing_a_pod_moves_only_its_keys(void **state)
{
    (void)state;
    /* pod "10.0.0.3:9000" leaves the document: the pods after it change index */
    const char *const rest[] = {names5[0], names5[1], names5[3], names5[4]};
    mg_balance_t *all = ring_of(names5, 5), *less = ring_of(rest, 4);
    unsigned moved = 0, owned = 0;
    for (uint64_t k = 0; k < 10000; k++) {
        const char *before = names5[pick_key(all, k, ALL)];
        const char *after = rest[pick_key(less, k, ALL)];
        if (before == names5[2]) {
            owned++;
            assert_ptr_not_equal(after, names5[2]);
        } else {
            assert_ptr_equal(after, before);
        }
        moved += before != after;
    }
    printf("hash: removing 1 of 5 pods moved %u keys, exactly the %u it owned\n", moved, owned);
    assert_int_equal(moved, owned);

    /* the same when the pod stays in the document but is unusable, or tried */
    unsigned moved2 = 0;
    for (uint64_t k = 0; k < 10000; k++) {
        int before = pick_key(all, k, ALL), after = pick_key(all, k, ALL & ~(uint64_t)4);
        mg_pick_ctx_t c = {.usable = ALL, .tried = 4, .key = k, .has_key = true};
        assert_int_equal(mg_balance_pick(all, &c), after);
        if (before != 2)
            assert_int_equal(after, before);
        else
            assert_int_not_equal(after, 2);
        moved2 += before != after;
    }
    assert_int_equal(moved2, owned);
    mg_balance_free(all);
    mg_balance_free(less);
}

/* Picks |m| keys with acquire and no release; checks the bound after every pick. */
static unsigned held_load_run(mg_balance_t *b, size_t n, unsigned m, uint64_t (*key)(uint64_t *))
{
    uint64_t g = 2024;
    unsigned worst = 0;
    for (unsigned k = 1; k <= m; k++) {
        int i = pick_key(b, key(&g), ALL);
        assert_true(i >= 0);
        mg_balance_acquire(b, i);
        unsigned bound = (unsigned)ceil(1.25 * k / (double)n) + 1;
        for (size_t p = 0; p < n; p++) {
            unsigned l = mg_balance_inflight(b, (int)p);
            assert_true(l <= bound);
            if (k == m && l > worst)
                worst = l;
        }
    }
    return worst;
}

static uint64_t uniform_key(uint64_t *g)
{
    return trand(g);
}

static uint64_t hot_key(uint64_t *g)
{
    uint64_t r = trand(g);
    return r % 10 < 9 ? 42 : r; /* 90% of the requests share one key */
}

static void hash_bounded_load(void **state)
{
    (void)state;
    mg_balance_t *b = ring_of(names5, 4);
    unsigned worst = held_load_run(b, 4, 10000, uniform_key);
    printf("hash bounded load, uniform keys: max in-flight %u, ceil(1.25 * avg) = %u\n", worst,
           (unsigned)ceil(1.25 * 10000 / 4));
    mg_balance_free(b);

    b = ring_of(names5, 4);
    worst = held_load_run(b, 4, 10000, hot_key);
    printf("hash bounded load, 90%% one key: max in-flight %u, ceil(1.25 * avg) = %u\n", worst,
           (unsigned)ceil(1.25 * 10000 / 4));
    assert_true(worst >= 3100); /* the bound is what stops the hot key's pod, not luck */
    /* once the load is gone, the hot key is back on its own pod */
    int home = pick_key(b, 42, ALL);
    for (int p = 0; p < 4; p++)
        while (mg_balance_inflight(b, p) > 0)
            mg_balance_release(b, p);
    assert_int_equal(pick_key(b, 42, ALL), home);
    mg_balance_free(b);

    /* weights scale the bound: 3/1 with one hot key fills pod shares 3:1 */
    const uint32_t w[] = {3, 1};
    b = mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w, 2, NULL);
    for (int k = 0; k < 4000; k++)
        mg_balance_acquire(b, pick_key(b, 7, ALL));
    printf("hash bounded load, weights 3/1, one key: in-flight %u %u\n", mg_balance_inflight(b, 0),
           mg_balance_inflight(b, 1));
    assert_true(mg_balance_inflight(b, 0) <= (unsigned)ceil(1.25 * 4000 * 3 / 4) + 1);
    assert_true(mg_balance_inflight(b, 1) <= (unsigned)ceil(1.25 * 4000 / 4) + 1);
    mg_balance_free(b);

    /* a larger c lets the hot pod take more before spilling */
    mg_balance_opts_t o = {.names = names5, .hash_load_factor = 2.0};
    const uint32_t w4[] = {1, 1, 1, 1};
    b = mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w4, 4, &o);
    assert_int_equal(pick_key(b, 42, ALL), home); /* same names, same ring */
    for (int k = 0; k < 4000; k++)
        mg_balance_acquire(b, pick_key(b, 42, ALL));
    unsigned hot = mg_balance_inflight(b, home);
    printf("hash bounded load, c = 2, one key: its pod holds %u of 4000\n", hot);
    assert_true(hot >= 1999 && hot <= 2001);
    mg_balance_free(b);
}

static void hash_without_key_is_least_request(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 1};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_CONSISTENT_HASH, w, 2, NULL);
    for (int k = 0; k < 10; k++)
        mg_balance_acquire(b, 0);
    uint64_t rng = 5;
    mg_pick_ctx_t c = ctx_all(&rng);
    for (int k = 0; k < 100; k++)
        assert_int_equal(mg_balance_pick(b, &c), 1);
    mg_balance_free(b);
}

/* ---------- slow start ---------- */

static void slow_start_ramp(void **state)
{
    (void)state;
    const uint32_t w[] = {10, 10};
    mg_balance_opts_t o = {.slow_start_ms = 30000};
    mg_balance_t *b = mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, 2, &o);
    const uint64_t t0 = 1000000;
    assert_int_equal(mg_balance_weight_at(b, 1, t0, t0), 1000);         /* floor: 1/10 */
    assert_int_equal(mg_balance_weight_at(b, 1, t0 + 2999, t0), 1000);  /* still the floor */
    assert_int_equal(mg_balance_weight_at(b, 1, t0 + 6000, t0), 2000);  /* 20% */
    assert_int_equal(mg_balance_weight_at(b, 1, t0 + 15000, t0), 5000); /* half way */
    assert_int_equal(mg_balance_weight_at(b, 1, t0 + 29999, t0), 9990);
    assert_int_equal(mg_balance_weight_at(b, 1, t0 + 30000, t0), 10000); /* done */
    assert_int_equal(mg_balance_weight_at(b, 1, t0, 0), 10000);          /* 0 = usable for long */
    assert_int_equal(mg_balance_weight_at(b, 1, t0 - 5, t0), 1000);      /* clock behind */
    assert_int_equal(mg_balance_weight_at(b, 2, t0, t0), 0);

    /* round robin, pod 1 half way up: weights 10 : 5, exactly 2 : 1 */
    uint64_t since[2] = {0, t0};
    mg_pick_ctx_t c = {.usable = ALL, .now_ms = t0 + 15000, .became_usable_ms = since};
    unsigned cnt[2] = {0};
    for (int k = 0; k < 3000; k++)
        cnt[mg_balance_pick(b, &c)]++;
    assert_int_equal(cnt[0], 2000);
    assert_int_equal(cnt[1], 1000);
    /* just became usable: 10 : 1 */
    memset(cnt, 0, sizeof(cnt));
    c.now_ms = t0;
    for (int k = 0; k < 1100; k++)
        cnt[mg_balance_pick(b, &c)]++;
    assert_int_equal(cnt[1], 100);
    /* window passed: even */
    memset(cnt, 0, sizeof(cnt));
    c.now_ms = t0 + 60000;
    for (int k = 0; k < 1000; k++)
        cnt[mg_balance_pick(b, &c)]++;
    assert_int_equal(cnt[1], 500);
    mg_balance_free(b);

    /* without a window configured, became_usable_ms changes nothing */
    b = mg_balance_new(MG_BALANCE_ROUND_ROBIN, w, 2, NULL);
    assert_int_equal(mg_balance_weight_at(b, 1, t0, t0), 10000);
    mg_balance_free(b);

    /* P2C draws by the ramped weight too: a quarter of the way up, 1/4 of pod 0's share */
    b = mg_balance_new(MG_BALANCE_LEAST_REQUEST, w, 2, &o);
    uint64_t rng = 31;
    c = (mg_pick_ctx_t){.usable = ALL, .now_ms = t0 + 7500, .became_usable_ms = since, .rng = &rng};
    memset(cnt, 0, sizeof(cnt));
    for (int k = 0; k < 2000; k++)
        mg_balance_acquire(b, mg_balance_pick(b, &c));
    printf("slow start p2c at 25%%: in-flight %u %u\n", mg_balance_inflight(b, 0),
           mg_balance_inflight(b, 1));
    assert_in_range(mg_balance_inflight(b, 1), 395, 405);
    mg_balance_free(b);
}

/* ---------- threads ---------- */

typedef struct worker_arg {
    mg_balance_t *p2c, *rr;
    unsigned index;
    unsigned rr_counts[3];
} worker_arg_t;

static void *worker_main(void *p)
{
    worker_arg_t *a = p;
    uint64_t rng = 0x1234 + a->index;
    mg_pick_ctx_t c = {.usable = ALL, .worker = a->index, .rng = &rng};
    int held[16];
    size_t nheld = 0;
    for (int k = 0; k < 200000; k++) {
        int i = mg_balance_pick(a->p2c, &c);
        if (i < 0)
            return "p2c pick failed";
        mg_balance_acquire(a->p2c, i);
        if (nheld == 16) { /* hold up to 16 requests, then finish the oldest */
            mg_balance_release(a->p2c, held[0]);
            memmove(held, held + 1, sizeof(int) * 15);
            nheld--;
        }
        held[nheld++] = i;
        int r = mg_balance_pick(a->rr, &c);
        if (r < 0)
            return "rr pick failed";
        a->rr_counts[r]++;
    }
    while (nheld > 0)
        mg_balance_release(a->p2c, held[--nheld]);
    return NULL;
}

static void threads_pick_and_account_concurrently(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 2, 3, 4, 5};
    const uint32_t w3[] = {5, 1, 1};
    mg_balance_opts_t o = {.workers = 4};
    mg_balance_t *p2c = mg_balance_new(MG_BALANCE_LEAST_REQUEST, w, 5, NULL);
    mg_balance_t *rr = mg_balance_new(MG_BALANCE_ROUND_ROBIN, w3, 3, &o);
    pthread_t t[4];
    worker_arg_t args[4];
    for (unsigned k = 0; k < 4; k++) {
        args[k] = (worker_arg_t){.p2c = p2c, .rr = rr, .index = k};
        assert_int_equal(pthread_create(&t[k], NULL, worker_main, &args[k]), 0);
    }
    for (unsigned k = 0; k < 4; k++) {
        void *err = NULL;
        assert_int_equal(pthread_join(t[k], &err), 0);
        assert_null(err);
        /* per-worker round robin: every worker got nginx's exact split */
        assert_int_equal(args[k].rr_counts[0], 200000 / 7 * 5 + 2); /* 28571 cycles + "aab" */
        assert_int_equal(args[k].rr_counts[1], 200000 / 7 + 1);
        assert_int_equal(args[k].rr_counts[2], 200000 / 7);
    }
    for (int i = 0; i < 5; i++)
        assert_int_equal(mg_balance_inflight(p2c, i), 0);
    mg_balance_free(p2c);
    mg_balance_free(rr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(wrr_exact_sequence_5_1_1),
        cmocka_unit_test(wrr_workers_have_their_own_sequence),
        cmocka_unit_test(wrr_counts_for_random_weights),
        cmocka_unit_test(zero_weight_never_picked),
        cmocka_unit_test(unusable_and_tried_are_skipped),
        cmocka_unit_test(sixty_four_pods),
        cmocka_unit_test(bad_arguments),
        cmocka_unit_test(p2c_prefers_less_loaded),
        cmocka_unit_test(p2c_respects_weights),
        cmocka_unit_test(p2c_single_candidate_and_thread_local_rng),
        cmocka_unit_test(hash_same_key_same_pod),
        cmocka_unit_test(hash_adding_a_pod_moves_about_a_fifth),
        cmocka_unit_test(hash_removing_a_pod_moves_only_its_keys),
        cmocka_unit_test(hash_bounded_load),
        cmocka_unit_test(hash_without_key_is_least_request),
        cmocka_unit_test(slow_start_ramp),
        cmocka_unit_test(threads_pick_and_account_concurrently),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
