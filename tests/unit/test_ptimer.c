/* tests/unit/test_ptimer.c - timers on a timerfd of their own (common/ptimer.c), on a real
 * event base with libevent's coarse clock: they fire in deadline order and never before their
 * deadline, move and cancel, may be armed from a callback, and set the timerfd only for a
 * deadline earlier than the one it is set for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/ptimer.h"

#define MAXT 200

typedef struct fixture fixture_t;

typedef struct {
    fixture_t *f;
    mg_ptimer_t t;
    int64_t fired_at;
    int fires;
    int rearm; /* times the callback arms itself again, 1 ms later */
} item_t;

struct fixture {
    struct event_base *base;
    mg_ptimers_t *q;
    item_t items[MAXT];
    item_t *order[MAXT * 4]; /* in firing order */
    int nfired;
    int pending; /* fires still expected: the loop ends at 0 */
};

static void on_timer(void *arg)
{
    item_t *it = arg;
    fixture_t *f = it->f;
    it->fired_at = mg_mono_us();
    assert_true(it->fired_at >= it->t.at); /* never early */
    it->fires++;
    f->order[f->nfired++] = it;
    if (it->rearm > 0) {
        it->rearm--;
        assert_int_equal(mg_ptimer_arm(f->q, &it->t, it->t.at + 1000), MG_OK);
    } else if (--f->pending == 0) {
        event_base_loopbreak(f->base);
    }
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    f->base = event_base_new(); /* the default, coarse clock, as the workers' */
    assert_non_null(f->base);
    assert_int_equal(mg_ptimers_new(f->base, MAXT, &f->q), MG_OK);
    for (int i = 0; i < MAXT; i++) {
        f->items[i].f = f;
        mg_ptimer_init(&f->items[i].t, on_timer, &f->items[i]);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    mg_ptimers_free(f->q);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Runs the loop until every expected fire happened (a guard ends it after 5 s). */
static void run(fixture_t *f)
{
    struct timeval guard = {5, 0};
    event_base_loopexit(f->base, &guard);
    event_base_dispatch(f->base);
    assert_int_equal(f->pending, 0);
}

static void fire_in_deadline_order_never_early(void **state)
{
    fixture_t *f = *state;
    srand(7);
    int64_t now = mg_mono_us();
    for (int i = 0; i < 100; i++)
        assert_int_equal(mg_ptimer_arm(f->q, &f->items[i].t, now + 500 + rand() % 20000), MG_OK);
    f->pending = 100;
    run(f);
    assert_int_equal(f->nfired, 100);
    for (int i = 1; i < f->nfired; i++)
        assert_true(f->order[i - 1]->t.at <= f->order[i]->t.at);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(f->items[i].fires, 1);
        assert_false(mg_ptimer_armed(&f->items[i].t));
    }
}

static void moved_and_cancelled_timers(void **state)
{
    fixture_t *f = *state;
    item_t *a = &f->items[0], *b = &f->items[1], *c = &f->items[2], *d = &f->items[3];
    int64_t now = mg_mono_us();
    mg_ptimer_arm(f->q, &a->t, now + 2000);
    mg_ptimer_arm(f->q, &b->t, now + 4000);
    mg_ptimer_arm(f->q, &c->t, now + 6000);
    mg_ptimer_arm(f->q, &d->t, now + 3000);
    mg_ptimer_cancel(f->q, &a->t);
    mg_ptimer_cancel(f->q, &a->t);          /* twice is fine */
    mg_ptimer_arm(f->q, &c->t, now + 1000); /* earlier */
    mg_ptimer_arm(f->q, &d->t, now + 8000); /* later */
    assert_false(mg_ptimer_armed(&a->t));
    assert_true(mg_ptimer_armed(&b->t));
    f->pending = 3;
    run(f);
    assert_int_equal(f->nfired, 3);
    assert_ptr_equal(f->order[0], c);
    assert_ptr_equal(f->order[1], b);
    assert_ptr_equal(f->order[2], d);
    assert_int_equal(a->fires, 0);
}

/* The point of the queue: no system call for a deadline later than the one set, or for a
 * cancel. */
static void timerfd_set_only_for_an_earlier_deadline(void **state)
{
    fixture_t *f = *state;
    int64_t now = mg_mono_us();
    assert_int_equal(mg_ptimers_sets(f->q), 0);
    mg_ptimer_arm(f->q, &f->items[0].t, now + 50000);
    assert_int_equal(mg_ptimers_sets(f->q), 1);
    mg_ptimer_arm(f->q, &f->items[1].t, now + 60000);
    mg_ptimer_arm(f->q, &f->items[2].t, now + 55000);
    assert_int_equal(mg_ptimers_sets(f->q), 1);
    mg_ptimer_arm(f->q, &f->items[3].t, now + 40000);
    assert_int_equal(mg_ptimers_sets(f->q), 2);
    mg_ptimer_cancel(f->q, &f->items[3].t);
    mg_ptimer_cancel(f->q, &f->items[0].t);
    assert_int_equal(mg_ptimers_sets(f->q), 2);
    /* the timerfd wakes at +40 ms with nothing due: it is set once, for +55 ms */
    f->pending = 2;
    run(f);
    assert_int_equal(f->nfired, 2);
    assert_ptr_equal(f->order[0], &f->items[2]);
    assert_ptr_equal(f->order[1], &f->items[1]);
    /* +40 (woke with nothing due) -> set +55 -> fired -> set +60 -> fired: nothing left */
    assert_int_equal(mg_ptimers_sets(f->q), 4);
}

/* A callback arms its own timer again (as a fetch re-arms for its next waiter): armed while
 * the queue fires, the timerfd is set once after the due timers ran, not per arm. */
static void armed_again_from_its_callback(void **state)
{
    fixture_t *f = *state;
    int64_t now = mg_mono_us();
    for (int i = 0; i < 3; i++) {
        f->items[i].rearm = 2;
        mg_ptimer_arm(f->q, &f->items[i].t, now + 1000);
    }
    f->pending = 3;
    run(f);
    assert_int_equal(f->nfired, 9);
    for (int i = 0; i < 3; i++)
        assert_int_equal(f->items[i].fires, 3);
    assert_true(mg_ptimers_sets(f->q) <= 4); /* once at first, then at most once per wake-up */
}

static void full_queue_refuses_a_new_timer_only(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    mg_ptimers_t *q;
    assert_int_equal(mg_ptimers_new(base, 2, &q), MG_OK);
    mg_ptimer_t t[3];
    for (int i = 0; i < 3; i++)
        mg_ptimer_init(&t[i], NULL, NULL);
    int64_t now = mg_mono_us();
    assert_int_equal(mg_ptimer_arm(q, &t[0], now + 100000), MG_OK);
    assert_int_equal(mg_ptimer_arm(q, &t[1], now + 200000), MG_OK);
    assert_int_equal(mg_ptimer_arm(q, &t[2], now + 300000), MG_E_LIMIT);
    assert_false(mg_ptimer_armed(&t[2]));
    assert_int_equal(mg_ptimer_arm(q, &t[1], now + 50000), MG_OK); /* armed: it moves */
    mg_ptimer_cancel(q, &t[0]);
    assert_int_equal(mg_ptimer_arm(q, &t[2], now + 300000), MG_OK);
    mg_ptimers_free(q); /* armed ones are dropped */
    event_base_free(base);
}

/* Random arms, moves and cancels keep the heap in order: whatever is armed at the end fires
 * in deadline order, and nothing cancelled fires. */
static void random_operations_keep_the_order(void **state)
{
    fixture_t *f = *state;
    srand(11);
    int64_t now = mg_mono_us();
    for (int op = 0; op < 5000; op++) {
        item_t *it = &f->items[rand() % MAXT];
        if (rand() % 4 == 0)
            mg_ptimer_cancel(f->q, &it->t);
        else
            assert_int_equal(mg_ptimer_arm(f->q, &it->t, now + 1000 + rand() % 30000), MG_OK);
    }
    int armed = 0;
    for (int i = 0; i < MAXT; i++)
        armed += mg_ptimer_armed(&f->items[i].t);
    assert_true(armed > 0);
    f->pending = armed;
    run(f);
    assert_int_equal(f->nfired, armed);
    for (int i = 1; i < f->nfired; i++)
        assert_true(f->order[i - 1]->t.at <= f->order[i]->t.at);
    for (int i = 0; i < MAXT; i++)
        assert_true(f->items[i].fires <= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(fire_in_deadline_order_never_early, setup, teardown),
        cmocka_unit_test_setup_teardown(moved_and_cancelled_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(timerfd_set_only_for_an_earlier_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(armed_again_from_its_callback, setup, teardown),
        cmocka_unit_test(full_queue_refuses_a_new_timer_only),
        cmocka_unit_test_setup_teardown(random_operations_keep_the_order, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
