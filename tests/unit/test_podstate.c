/*
 * tests/unit/test_podstate.c - the pod state registry: references, freeing, retirement, and a
 * get racing the last unref.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/stats.h"
#include "routing/podstate.h"
#include "routing/routes.h"

static int teardown(void **state)
{
    (void)state;
    mg_podstate_free_all();
    mg_stats_free_all();
    return 0;
}

static void count_pod_series(void *ud, const mg_stats_t *s)
{
    (void)s;
    (*(size_t *)ud)++;
}

static size_t listed_pod_series(void)
{
    size_t n = 0;
    mg_stats_each(MG_STATS_POD, count_pod_series, &n);
    return n;
}

static void count_state(void *ud, mg_podstate_t *ps)
{
    (void)ps;
    (*(size_t *)ud)++;
}

static void freed_after_the_last_unref(void **state)
{
    (void)state;
    mg_podstate_t *a = mg_podstate_get("svc", "10.0.0.1:80");
    assert_non_null(a);
    assert_ptr_equal(mg_podstate_get("svc", "10.0.0.1:80"), a); /* a second reference */
    mg_podstate_ref(a);                                         /* a third (a pool's) */
    assert_int_equal(mg_podstate_count(), 1);
    assert_int_equal(mg_stats_count(), 1);
    mg_podstate_unref(a);
    mg_podstate_unref(a);
    assert_int_equal(mg_podstate_count(), 1); /* one reference left */
    assert_int_equal(atomic_load(&a->_refs), 1);
    mg_podstate_unref(a);
    assert_int_equal(mg_podstate_count(), 0);
    assert_int_equal(mg_stats_count(), 0); /* its series went with it */
    assert_int_equal(listed_pod_series(), 0);
    mg_podstate_unref(NULL); /* nothing */
}

static void a_get_after_the_free_starts_afresh(void **state)
{
    (void)state;
    mg_podstate_t *a = mg_podstate_get("svc", "10.0.0.1:80");
    assert_non_null(a);
    mg_podstate_set_health(a, MG_POD_HEALTH_UNHEALTHY);
    atomic_store(&a->ejected_until_ms, UINT64_MAX);
    atomic_store(&a->conns, 3);
    mg_stats_record(a->stats, 0, 200, 1000);
    mg_podstate_mark_current(&a, 1);
    assert_false(mg_podstate_is_retired(a));
    assert_true(mg_podstate_in_routing(a));
    mg_podstate_unref(a);
    assert_int_equal(mg_podstate_count(), 0);

    mg_podstate_t *b = mg_podstate_get("svc", "10.0.0.1:80");
    assert_non_null(b);
    assert_int_equal(mg_podstate_count(), 1);
    assert_int_equal(atomic_load(&b->_refs), 1);
    assert_int_equal(atomic_load(&b->health), MG_POD_HEALTH_UNCHECKED);
    assert_true(mg_podstate_usable(b, mg_podstate_now_ms()));
    assert_int_equal(atomic_load(&b->conns), 0);
    assert_false(mg_podstate_in_routing(b)); /* not marked with a routing yet */
    assert_false(mg_podstate_is_retired(b));
    assert_string_equal(b->stats->labels, "service=\"svc\",pod=\"10.0.0.1:80\"");
    mg_stat_block_t sum;
    mg_stats_sum(b->stats, &sum);
    assert_int_equal(atomic_load(&sum.status[2]), 0); /* the counters start from zero */
    assert_int_equal(mg_stats_count(), 1);
    mg_podstate_unref(b);
    assert_int_equal(mg_podstate_count(), 0);
    assert_int_equal(mg_stats_count(), 0);
}

static void retired_states_are_freed_by_their_last_holder(void **state)
{
    (void)state;
    mg_podstate_t *s[3] = {mg_podstate_get("svc", "a:1"), mg_podstate_get("svc", "b:1"),
                           mg_podstate_get("other", "a:1")};
    for (int i = 0; i < 3; i++)
        assert_non_null(s[i]);
    assert_int_equal(mg_podstate_count(), 3);
    mg_podstate_mark_current(s, 3);
    mg_podstate_t *now[1] = {s[0]}; /* b:1 and other's a:1 leave the routing */
    mg_podstate_mark_current(now, 1);
    assert_true(mg_podstate_is_retired(s[1]));
    assert_true(mg_podstate_is_retired(s[2]));
    size_t listed = 0;
    mg_podstate_each(count_state, &listed);
    assert_int_equal(listed, 1);
    assert_int_equal(listed_pod_series(), 1);
    mg_podstate_unref(s[1]); /* the middle of the registry's list */
    assert_int_equal(mg_podstate_count(), 2);
    listed = 0;
    mg_podstate_each(count_state, &listed);
    assert_int_equal(listed, 1);
    /* the others are still found, the freed one is made anew */
    mg_podstate_t *again = mg_podstate_get("other", "a:1");
    assert_ptr_equal(again, s[2]);
    mg_podstate_unref(again);
    mg_podstate_t *b = mg_podstate_get("svc", "b:1");
    assert_non_null(b);
    assert_int_equal(mg_podstate_count(), 3);
    mg_podstate_unref(b);
    mg_podstate_unref(s[2]);
    mg_podstate_unref(s[0]);
    assert_int_equal(mg_podstate_count(), 0);
    assert_int_equal(mg_stats_count(), 0);
}

/* A snapshot holds one reference per pod: freeing the last snapshot that names a pod frees the
 * pod's state, and a state two snapshots share lives until both are gone. */
static void snapshots_hold_their_pods_states(void **state)
{
    (void)state;
    char *err = NULL;
    mg_routes_t *r1 = mg_routes_catchall("127.0.0.1:9001,127.0.0.1:9002", MG_UP_H1, &err);
    assert_non_null(r1);
    assert_int_equal(mg_podstate_count(), 2);
    mg_routes_t *r2 = mg_routes_catchall("127.0.0.1:9002,127.0.0.1:9003", MG_UP_H1, &err);
    assert_non_null(r2);
    assert_int_equal(mg_podstate_count(), 3);
    assert_ptr_equal(r1->services[0].pods[1].state, r2->services[0].pods[0].state);
    mg_routes_unref(r1);
    assert_int_equal(mg_podstate_count(), 2); /* 9001's went */
    mg_podstate_t *shared = r2->services[0].pods[0].state;
    assert_int_equal(atomic_load(&shared->_refs), 1);
    mg_routes_unref(r2);
    assert_int_equal(mg_podstate_count(), 0);
    /* the service series are not the pods' concern: only pod series went */
    assert_int_equal(listed_pod_series(), 0);
}

#define RACE_ROUNDS 20000

static void *get_unref_loop(void *arg)
{
    (void)arg;
    for (int i = 0; i < RACE_ROUNDS; i++) {
        mg_podstate_t *ps = mg_podstate_get("svc", "race:1");
        if (ps == NULL)
            return (void *)1;
        atomic_fetch_add(&ps->inflight, 1); /* a use: ASan reports it if |ps| was freed */
        mg_podstate_ref(ps);
        mg_podstate_unref(ps);
        atomic_fetch_sub(&ps->inflight, 1);
        mg_podstate_unref(ps);
    }
    return NULL;
}

/* Threads taking and dropping the only references to one pod: a get never returns a state
 * that the last unref frees (under ASan a use after free would abort), and nothing leaks. */
static void a_get_never_revives_a_state_being_freed(void **state)
{
    (void)state;
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, get_unref_loop, NULL), 0);
    for (int i = 0; i < 3; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(mg_podstate_count(), 0);
    assert_int_equal(mg_stats_count(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(freed_after_the_last_unref, teardown),
        cmocka_unit_test_teardown(a_get_after_the_free_starts_afresh, teardown),
        cmocka_unit_test_teardown(retired_states_are_freed_by_their_last_holder, teardown),
        cmocka_unit_test_teardown(snapshots_hold_their_pods_states, teardown),
        cmocka_unit_test_teardown(a_get_never_revives_a_state_being_freed, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
