/*
 * tests/unit/test_features_lru.c - the workers' local feature cache (features/lru.h): TTL,
 * stale-while-revalidate, negative entries, LRU eviction, and that every value is dropped
 * exactly once (replace, evict, expire, free).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "features/lru.h"

static int drops;

static void drop(void *v)
{
    drops++;
    free(v);
}

static char *val(const char *s)
{
    return strdup(s);
}

#define K(s) (s), strlen(s)

static int setup(void **state)
{
    drops = 0;
    *state = mg_flru_new(3, drop);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    mg_flru_free(*state);
    return 0;
}

static void fresh_then_stale_then_gone(void **state)
{
    mg_flru_t *l = *state;
    void *v = NULL;
    assert_int_equal(mg_flru_get(l, K("digits\0u1"), 0, &v), MG_FLRU_ABSENT);
    assert_int_equal(mg_flru_put(l, K("u1"), val("a"), 100, 200), MG_OK);
    assert_int_equal(mg_flru_get(l, K("u1"), 0, &v), MG_FLRU_FRESH);
    assert_string_equal(v, "a");
    assert_int_equal(mg_flru_get(l, K("u1"), 99, &v), MG_FLRU_FRESH);
    assert_int_equal(mg_flru_get(l, K("u1"), 100, &v), MG_FLRU_STALE);
    assert_string_equal(v, "a");
    assert_int_equal(mg_flru_get(l, K("u1"), 199, &v), MG_FLRU_STALE);
    assert_int_equal(drops, 0);
    assert_int_equal(mg_flru_get(l, K("u1"), 200, &v), MG_FLRU_ABSENT); /* expired: removed */
    assert_int_equal(drops, 1);
    assert_int_equal(mg_flru_size(l), 0);
}

static void negative_entries(void **state)
{
    mg_flru_t *l = *state;
    void *v = (void *)1;
    assert_int_equal(mg_flru_put(l, K("ghost"), NULL, 50, 50), MG_OK);
    assert_int_equal(mg_flru_get(l, K("ghost"), 10, &v), MG_FLRU_FRESH);
    assert_null(v);
    assert_int_equal(mg_flru_get(l, K("ghost"), 50, &v), MG_FLRU_ABSENT); /* no stale window */
    assert_int_equal(drops, 0); /* nothing to drop for a negative entry */
}

static void replace_drops_the_old_value(void **state)
{
    mg_flru_t *l = *state;
    void *v;
    mg_flru_put(l, K("u1"), val("old"), 100, 100);
    mg_flru_put(l, K("u1"), val("new"), 300, 400);
    assert_int_equal(drops, 1);
    assert_int_equal(mg_flru_size(l), 1);
    assert_int_equal(mg_flru_get(l, K("u1"), 350, &v), MG_FLRU_STALE);
    assert_string_equal(v, "new");
    mg_flru_put(l, K("u1"), NULL, 500, 500); /* a user deleted: becomes negative */
    assert_int_equal(drops, 2);
}

static void least_recently_used_is_evicted(void **state)
{
    mg_flru_t *l = *state;
    void *v;
    mg_flru_put(l, K("a"), val("A"), 1000, 1000);
    mg_flru_put(l, K("b"), val("B"), 1000, 1000);
    mg_flru_put(l, K("c"), val("C"), 1000, 1000);
    assert_int_equal(mg_flru_get(l, K("a"), 0, &v), MG_FLRU_FRESH); /* a is now the newest */
    mg_flru_put(l, K("d"), val("D"), 1000, 1000);                   /* evicts b */
    assert_int_equal(mg_flru_size(l), 3);
    assert_int_equal(drops, 1);
    assert_int_equal(mg_flru_get(l, K("b"), 0, &v), MG_FLRU_ABSENT);
    assert_int_equal(mg_flru_get(l, K("a"), 0, &v), MG_FLRU_FRESH);
    assert_int_equal(mg_flru_get(l, K("c"), 0, &v), MG_FLRU_FRESH);
    assert_int_equal(mg_flru_get(l, K("d"), 0, &v), MG_FLRU_FRESH);
}

static void keys_are_bytes(void **state)
{
    mg_flru_t *l = *state;
    void *v;
    /* "app\0user": the NUL separates app and user; "ab\0c" and "a\0bc" are different keys */
    mg_flru_put(l, "ab\0c", 4, val("1"), 100, 100);
    mg_flru_put(l, "a\0bc", 4, val("2"), 100, 100);
    assert_int_equal(mg_flru_get(l, "ab\0c", 4, 0, &v), MG_FLRU_FRESH);
    assert_string_equal(v, "1");
    assert_int_equal(mg_flru_get(l, "a\0bc", 4, 0, &v), MG_FLRU_FRESH);
    assert_string_equal(v, "2");
    assert_int_equal(mg_flru_get(l, "ab", 2, 0, &v), MG_FLRU_ABSENT);
    mg_flru_del(l, "ab\0c", 4);
    assert_int_equal(mg_flru_get(l, "ab\0c", 4, 0, &v), MG_FLRU_ABSENT);
    assert_int_equal(drops, 1);
}

static void free_drops_everything(void **state)
{
    mg_flru_t *l = mg_flru_new(1000, drop);
    char k[16];
    for (int i = 0; i < 2500; i++) { /* 1500 evictions on the way */
        int n = snprintf(k, sizeof(k), "user%d", i);
        assert_int_equal(mg_flru_put(l, k, (size_t)n, val("x"), 10, 20), MG_OK);
    }
    assert_int_equal(mg_flru_size(l), 1000);
    assert_int_equal(drops, 1500);
    void *v;
    assert_int_equal(mg_flru_get(l, K("user2499"), 0, &v), MG_FLRU_FRESH);
    assert_int_equal(mg_flru_get(l, K("user1499"), 0, &v), MG_FLRU_ABSENT);
    mg_flru_free(l);
    assert_int_equal(drops, 2500);
    (void)state;
}

static void stale_until_never_before_fresh(void **state)
{
    mg_flru_t *l = *state;
    void *v;
    mg_flru_put(l, K("u"), val("v"), 100, 10); /* a stale bound below the fresh one is raised */
    assert_int_equal(mg_flru_get(l, K("u"), 99, &v), MG_FLRU_FRESH);
    assert_int_equal(mg_flru_get(l, K("u"), 100, &v), MG_FLRU_ABSENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(fresh_then_stale_then_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(negative_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(replace_drops_the_old_value, setup, teardown),
        cmocka_unit_test_setup_teardown(least_recently_used_is_evicted, setup, teardown),
        cmocka_unit_test_setup_teardown(keys_are_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(free_drops_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(stale_until_never_before_fresh, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
