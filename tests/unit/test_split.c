/*
 * tests/unit/test_split.c - weighted traffic split: random and sticky picks, the bucket layout
 * across weight changes, fallback when a service is down, and the SipHash underneath.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "canary/split.h"

#define NUNITS 100000

static int unit_name(char *buf, size_t cap, unsigned i)
{
    return snprintf(buf, cap, "user-%u", i);
}

/* ---------- the hash ---------- */

static void siphash_reference_vectors(void **state)
{
    (void)state;
    /* key 00..0f, message 00 01 .. (len - 1): the reference implementation's vectors.h */
    static const uint64_t want[] = {
        0x726fdb47dd0e0e31ull, 0x74f839c593dc67fdull, 0x0d6c8009d9a94f5aull, 0x85676696d7fb7e2dull,
        0xcf2794e0277187b7ull, 0x18765564cd99a68dull, 0xcbc9466e58fee3ceull, 0xab0200f58b01d137ull,
        0x93f5f5799a932462ull, 0x9e0082df0ba9e4b0ull, 0x7a5dbbc594ddb9f3ull,
    };
    uint8_t key[16], msg[16];
    for (int i = 0; i < 16; i++)
        key[i] = msg[i] = (uint8_t)i;
    for (size_t len = 0; len < sizeof(want) / sizeof(want[0]); len++)
        assert_int_equal(mg_split_siphash24(key, msg, len), want[len]);
    assert_int_equal(mg_split_siphash24(key, msg, 15), 0xa129ca6149be45e5ull); /* the paper's */
}

/* ---------- layout ---------- */

static void bucket_layout(void **state)
{
    (void)state;
    uint32_t lo, hi;
    mg_split_t *s = mg_split_new((const uint32_t[]){90, 10}, 2, "x");
    assert_true(mg_split_range(s, 0, &lo, &hi));
    assert_int_equal(lo, 0);
    assert_int_equal(hi, 9000);
    assert_true(mg_split_range(s, 1, &lo, &hi));
    assert_int_equal(lo, 9000);
    assert_int_equal(hi, 10000);
    assert_false(mg_split_range(s, 2, &lo, &hi));
    assert_int_equal(mg_split_owner(s, 0), 0);
    assert_int_equal(mg_split_owner(s, 8999), 0);
    assert_int_equal(mg_split_owner(s, 9000), 1);
    assert_int_equal(mg_split_owner(s, 9999), 1);
    assert_int_equal(mg_split_owner(s, 10000), -1);
    assert_int_equal(mg_split_nservices(s), 2);
    mg_split_free(s);

    s = mg_split_new((const uint32_t[]){1, 1, 1}, 3, "x");
    const uint32_t b3[] = {0, 3333, 6666, 10000};
    for (size_t i = 0; i < 3; i++) {
        assert_true(mg_split_range(s, i, &lo, &hi));
        assert_int_equal(lo, b3[i]);
        assert_int_equal(hi, b3[i + 1]);
    }
    mg_split_free(s);

    /* a zero weight is an empty range that owns nothing */
    s = mg_split_new((const uint32_t[]){0, 3, 0, 1, 0}, 5, "x");
    assert_true(mg_split_range(s, 0, &lo, &hi));
    assert_int_equal(lo, hi);
    assert_true(mg_split_range(s, 2, &lo, &hi));
    assert_int_equal(lo, 7500);
    assert_int_equal(hi, 7500);
    for (uint32_t b = 0; b < MG_SPLIT_BUCKETS; b++)
        assert_int_equal(mg_split_owner(s, b), b < 7500 ? 1 : 3);
    mg_split_free(s);

    /* any total: 99/1, and weights far above 10000 */
    s = mg_split_new((const uint32_t[]){99, 1}, 2, "x");
    assert_true(mg_split_range(s, 1, &lo, &hi));
    assert_int_equal(lo, 9900);
    mg_split_free(s);
    s = mg_split_new((const uint32_t[]){4000000000u, 4000000000u, 4000000000u}, 3, "x");
    assert_int_equal(mg_split_owner(s, 3332), 0);
    assert_int_equal(mg_split_owner(s, 3333), 1);
    assert_int_equal(mg_split_owner(s, 6666), 2);
    mg_split_free(s);
}

static void bad_arguments(void **state)
{
    (void)state;
    assert_null(mg_split_new(NULL, 2, "x"));
    assert_null(mg_split_new((const uint32_t[]){1}, 0, "x"));
    assert_null(mg_split_new((const uint32_t[]){0, 0}, 2, "x"));
    assert_null(mg_split_new((const uint32_t[65]){1}, 65, "x"));
    mg_split_t *s = mg_split_new((const uint32_t[64]){[63] = 1}, 64, NULL);
    assert_non_null(s);
    bool fb = true;
    assert_int_equal(mg_split_pick(s, 0, NULL, &fb), 63);
    assert_false(fb);
    assert_int_equal(mg_split_pick_sticky(s, "", 0, 0, NULL), 63);
    assert_int_equal(mg_split_pick_sticky(s, NULL, 3, 0, &fb), -1);
    mg_split_free(s);
    mg_split_free(NULL);
    assert_int_equal(mg_split_pick(NULL, 0, NULL, &fb), -1);
    assert_int_equal(mg_split_pick_sticky(NULL, "a", 1, 0, &fb), -1);
}

/* ---------- random picks ---------- */

static void random_shares(const uint32_t *w, size_t n, double *share, uint64_t seed)
{
    mg_split_t *s = mg_split_new(w, n, "random");
    assert_non_null(s);
    unsigned cnt[8] = {0};
    uint64_t rng = seed;
    for (int k = 0; k < NUNITS; k++) {
        bool fb = true;
        int i = mg_split_pick(s, 0, &rng, &fb);
        assert_in_range(i, 0, (int)n - 1);
        assert_false(fb);
        cnt[i]++;
    }
    for (size_t i = 0; i < n; i++)
        share[i] = cnt[i] / (double)NUNITS;
    mg_split_free(s);
}

static void random_pick_follows_weights(void **state)
{
    (void)state;
    double sh[8];
    random_shares((const uint32_t[]){90, 10}, 2, sh, 1);
    printf("split 90/10, 100000 random picks: %.2f%% / %.2f%%\n", sh[0] * 100, sh[1] * 100);
    assert_true(fabs(sh[0] - 0.90) < 0.01);
    assert_true(fabs(sh[1] - 0.10) < 0.01);

    random_shares((const uint32_t[]){99, 1}, 2, sh, 2);
    printf("split 99/1: %.2f%% / %.2f%%\n", sh[0] * 100, sh[1] * 100);
    assert_true(fabs(sh[1] - 0.01) < 0.002);

    random_shares((const uint32_t[]){1, 1, 1}, 3, sh, 3);
    printf("split 1/1/1: %.2f%% / %.2f%% / %.2f%%\n", sh[0] * 100, sh[1] * 100, sh[2] * 100);
    for (int i = 0; i < 3; i++)
        assert_true(fabs(sh[i] - 1 / 3.0) < 0.01);

    random_shares((const uint32_t[]){0, 50, 0, 50}, 4, sh, 4);
    assert_true(sh[0] == 0 && sh[2] == 0);
    assert_true(fabs(sh[1] - 0.5) < 0.01);

    /* a thread-local generator when the caller has none */
    mg_split_t *s = mg_split_new((const uint32_t[]){1, 1}, 2, "t");
    unsigned cnt[2] = {0};
    for (int k = 0; k < 10000; k++)
        cnt[mg_split_pick(s, 0, NULL, NULL)]++;
    assert_true(cnt[0] > 4500 && cnt[1] > 4500);
    mg_split_free(s);
}

/* ---------- sticky picks ---------- */

static void sticky_is_stable(void **state)
{
    (void)state;
    const uint32_t w[] = {90, 10};
    mg_split_t *a = mg_split_new(w, 2, "digits-production");
    mg_split_t *b = mg_split_new(w, 2, "digits-production"); /* another gateway, or a restart */
    mg_split_t *other = mg_split_new(w, 2, "digits-staging");
    unsigned cnt[2] = {0}, same_bucket = 0;
    char u[32];
    for (unsigned k = 0; k < NUNITS; k++) {
        int len = unit_name(u, sizeof(u), k);
        int i = mg_split_pick_sticky(a, u, (size_t)len, 0, NULL);
        assert_in_range(i, 0, 1);
        assert_int_equal(mg_split_pick_sticky(a, u, (size_t)len, 0, NULL), i);
        assert_int_equal(mg_split_pick_sticky(b, u, (size_t)len, 0, NULL), i);
        uint32_t bucket = mg_split_bucket(a, u, (size_t)len);
        assert_true(bucket < MG_SPLIT_BUCKETS);
        assert_int_equal(mg_split_owner(a, bucket), i);
        same_bucket += bucket == mg_split_bucket(other, u, (size_t)len);
        cnt[i]++;
    }
    printf("split 90/10, 100000 sticky units: %.2f%% / %.2f%%; %u units share a bucket on "
           "another salt\n",
           cnt[0] / 1000.0, cnt[1] / 1000.0, same_bucket);
    assert_true(fabs(cnt[0] / (double)NUNITS - 0.9) < 0.01);
    assert_true(same_bucket < 50); /* about 10 expected: salts are independent */

    /* pinned, and checked against OpenSSL's SIPHASH MAC with the documented key derivation:
     * the same buckets on every machine, forever */
    assert_int_equal(mg_split_bucket(a, "user-42", 7), 6893);
    assert_int_equal(mg_split_bucket(a, "", 0), 8849);
    assert_int_equal(mg_split_bucket(other, "user-42", 7), 6280);
    mg_split_free(a);
    mg_split_free(b);
    mg_split_free(other);
}

/* Counts units whose service changes from |wa| to |wb|; every mover must be in a bucket for
 * which |expect_move| says so, and every unit in such a bucket must move. */
static unsigned moved_units(const uint32_t *wa, const uint32_t *wb, size_t n,
                            bool (*expect_move)(uint32_t bucket))
{
    mg_split_t *a = mg_split_new(wa, n, "canary"), *b = mg_split_new(wb, n, "canary");
    unsigned moved = 0;
    char u[32];
    for (unsigned k = 0; k < NUNITS; k++) {
        size_t len = (size_t)unit_name(u, sizeof(u), k);
        uint32_t bucket = mg_split_bucket(a, u, len);
        assert_int_equal(bucket, mg_split_bucket(b, u, len)); /* weights do not move buckets */
        bool moves =
            mg_split_pick_sticky(a, u, len, 0, NULL) != mg_split_pick_sticky(b, u, len, 0, NULL);
        assert_int_equal(moves, expect_move(bucket));
        moved += moves;
    }
    mg_split_free(a);
    mg_split_free(b);
    return moved;
}

static bool in_5000_9000(uint32_t b)
{
    return b >= 5000 && b < 9000;
}

static bool in_2_1_1_moves(uint32_t b)
{
    return (b >= 3333 && b < 5000) || (b >= 6666 && b < 7500);
}

static void weight_change_moves_only_what_it_must(void **state)
{
    (void)state;
    unsigned moved =
        moved_units((const uint32_t[]){90, 10}, (const uint32_t[]){50, 50}, 2, in_5000_9000);
    printf("split 90/10 -> 50/50 moved %u of 100000 units (%.2f%%), all from buckets "
           "[5000, 9000)\n",
           moved, moved / 1000.0);
    assert_true(fabs(moved / (double)NUNITS - 0.40) < 0.01);

    moved =
        moved_units((const uint32_t[]){1, 1, 1}, (const uint32_t[]){2, 1, 1}, 3, in_2_1_1_moves);
    printf("split 1/1/1 -> 2/1/1 moved %u units (%.2f%%)\n", moved, moved / 1000.0);
    assert_true(fabs(moved / (double)NUNITS - 0.25) < 0.01);
}

/* ---------- fallback ---------- */

static void fallback_when_a_service_is_down(void **state)
{
    (void)state;
    const uint32_t w[] = {50, 30, 20};
    mg_split_t *s = mg_split_new(w, 3, "fallback");
    const uint64_t down0 = 1;

    /* random: service 0 gets nothing; its half is flagged and spread 60/40 */
    uint64_t rng = 9;
    unsigned cnt[3] = {0}, fbs = 0;
    for (int k = 0; k < NUNITS; k++) {
        bool fb = false;
        int i = mg_split_pick(s, down0, &rng, &fb);
        assert_in_range(i, 1, 2);
        cnt[i]++;
        fbs += fb;
    }
    double r1 = cnt[1] / (double)(cnt[1] + cnt[2]);
    printf("split 50/30/20, service 0 down, random: %u / %u (%.2f%% / %.2f%%), %u flagged "
           "fallback\n",
           cnt[1], cnt[2], r1 * 100, (1 - r1) * 100, fbs);
    assert_true(fabs(r1 - 0.6) < 0.01);
    assert_true(fabs(fbs / (double)NUNITS - 0.5) < 0.01);

    /* sticky: units of service 0 move (flagged) 60/40; nobody else moves or is flagged */
    unsigned moved[3] = {0}, owned0 = 0;
    char u[32];
    for (unsigned k = 0; k < NUNITS; k++) {
        size_t len = (size_t)unit_name(u, sizeof(u), k);
        bool fb = true, fb2 = true;
        int home = mg_split_pick_sticky(s, u, len, 0, &fb);
        assert_false(fb);
        int now = mg_split_pick_sticky(s, u, len, down0, &fb2);
        assert_int_equal(mg_split_pick_sticky(s, u, len, down0, NULL), now); /* still sticky */
        if (home == 0) {
            owned0++;
            assert_true(fb2);
            assert_in_range(now, 1, 2);
            moved[now]++;
        } else {
            assert_false(fb2);
            assert_int_equal(now, home);
        }
    }
    double m1 = moved[1] / (double)owned0;
    printf("split 50/30/20, service 0 down, sticky: its %u units went %.2f%% / %.2f%%\n", owned0,
           m1 * 100, (1 - m1) * 100);
    assert_true(fabs(m1 - 0.6) < 0.01);

    /* everything with weight down: -1, not a fallback */
    bool fb = true;
    assert_int_equal(mg_split_pick(s, 7, &rng, &fb), -1);
    assert_false(fb);
    assert_int_equal(mg_split_pick_sticky(s, "u", 1, 7 | (1ull << 40), &fb), -1);
    assert_false(fb);
    mg_split_free(s);

    /* a down service of weight 0 changes nothing */
    s = mg_split_new((const uint32_t[]){1, 0}, 2, "z");
    assert_int_equal(mg_split_pick(s, 2, &rng, &fb), 0);
    assert_false(fb);
    /* the only weighted service down: -1 */
    assert_int_equal(mg_split_pick_sticky(s, "u", 1, 1, &fb), -1);
    mg_split_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(siphash_reference_vectors),
        cmocka_unit_test(bucket_layout),
        cmocka_unit_test(bad_arguments),
        cmocka_unit_test(random_pick_follows_weights),
        cmocka_unit_test(sticky_is_stable),
        cmocka_unit_test(weight_change_moves_only_what_it_must),
        cmocka_unit_test(fallback_when_a_service_is_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
