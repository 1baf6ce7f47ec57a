/*
 * tests/unit/test_stats.c - the series registry: one series per name while it is referenced,
 * released series leave scrapes and memory, and a name got again afterwards starts from zero.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/stats.h"

static int setup(void **state)
{
    (void)state;
    mg_stats_init(4);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mg_stats_free_all();
    return 0;
}

typedef struct seen {
    size_t n;
    char labels[4][64];
} seen_t;

static void on_series(void *ud, const mg_stats_t *s)
{
    seen_t *seen = ud;
    if (seen->n < 4)
        snprintf(seen->labels[seen->n], sizeof(seen->labels[0]), "%s", s->labels);
    seen->n++;
}

static seen_t listed(mg_stats_kind_t kind)
{
    seen_t seen = {0};
    mg_stats_each(kind, on_series, &seen);
    return seen;
}

static void a_series_lives_until_its_last_release(void **state)
{
    (void)state;
    mg_stats_t *a = mg_stats_get(MG_STATS_POD, "pod=\"a\"");
    assert_non_null(a);
    assert_ptr_equal(mg_stats_get(MG_STATS_POD, "pod=\"a\""), a);
    mg_stats_t *svc = mg_stats_get(MG_STATS_SERVICE, "pod=\"a\""); /* another kind */
    assert_non_null(svc);
    assert_ptr_not_equal(svc, a);
    assert_int_equal(mg_stats_count(), 2);
    mg_stats_release(a);
    assert_int_equal(mg_stats_count(), 2); /* one reference left */
    assert_int_equal(listed(MG_STATS_POD).n, 1);
    mg_stats_release(a);
    assert_int_equal(mg_stats_count(), 1);
    assert_int_equal(listed(MG_STATS_POD).n, 0);
    assert_int_equal(listed(MG_STATS_SERVICE).n, 1);
    mg_stats_release(NULL); /* nothing */
    mg_stats_release(svc);
    assert_int_equal(mg_stats_count(), 0);
}

static void released_series_leave_the_middle_and_ends_of_the_list(void **state)
{
    (void)state;
    mg_stats_t *s[4];
    const char *names[4] = {"pod=\"0\"", "pod=\"1\"", "pod=\"2\"", "pod=\"3\""};
    for (int i = 0; i < 4; i++)
        assert_non_null(s[i] = mg_stats_get(MG_STATS_POD, names[i]));
    mg_stats_release(s[1]); /* middle */
    mg_stats_release(s[3]); /* tail */
    mg_stats_release(s[0]); /* head */
    seen_t seen = listed(MG_STATS_POD);
    assert_int_equal(seen.n, 1);
    assert_string_equal(seen.labels[0], names[2]);
    /* appended after the survivor: the tail was kept right */
    mg_stats_t *again = mg_stats_get(MG_STATS_POD, names[0]);
    assert_non_null(again);
    seen = listed(MG_STATS_POD);
    assert_int_equal(seen.n, 2);
    assert_string_equal(seen.labels[0], names[2]);
    assert_string_equal(seen.labels[1], names[0]);
    mg_stats_release(again);
    mg_stats_release(s[2]);
    assert_int_equal(listed(MG_STATS_POD).n, 0);
    assert_int_equal(mg_stats_count(), 0);
}

static void a_name_got_again_after_its_release_starts_from_zero(void **state)
{
    (void)state;
    mg_stats_t *a = mg_stats_get(MG_STATS_POD, "pod=\"a\"");
    assert_non_null(a);
    mg_stats_record(a, 3, 503, 700);
    mg_stats_inc(a, 1, offsetof(mg_stat_block_t, failures));
    mg_stat_block_t sum;
    mg_stats_sum(a, &sum);
    assert_int_equal(atomic_load(&sum.status[5]), 1);
    assert_int_equal(atomic_load(&sum.failures), 1);
    mg_stats_release(a);
    mg_stats_t *b = mg_stats_get(MG_STATS_POD, "pod=\"a\"");
    assert_non_null(b);
    mg_stats_sum(b, &sum);
    assert_int_equal(atomic_load(&sum.status[5]), 0);
    assert_int_equal(atomic_load(&sum.failures), 0);
    assert_int_equal(atomic_load(&sum.lat_sum_us), 0);
    assert_false(atomic_load(&b->retired));
    mg_stats_release(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(a_series_lives_until_its_last_release, setup, teardown),
        cmocka_unit_test_setup_teardown(released_series_leave_the_middle_and_ends_of_the_list,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(a_name_got_again_after_its_release_starts_from_zero, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
