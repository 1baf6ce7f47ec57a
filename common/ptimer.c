/*
 * common/ptimer.c - timers that fire on time (see ptimer.h).
 *
 * The timerfd counts in absolute CLOCK_MONOTONIC time, the clock mg_mono_us reads, so a
 * deadline is given to it as is. |set_at| is the deadline it is set for (INT64_MAX: not set,
 * or it fired). While the queue fires, arming leaves the timerfd alone: it is set once, for
 * the earliest deadline left, when the due timers have run.
 */
#include "common/ptimer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/clock.h"
#include "common/log.h"

struct mg_ptimers {
    struct event *ev; /* the timerfd's, EV_READ | EV_PERSIST */
    int fd;
    int64_t set_at;
    bool firing;
    uint32_t n, cap;
    unsigned long sets;
    mg_ptimer_t *heap[]; /* heap[0] is the earliest */
};

static void place(mg_ptimers_t *q, uint32_t i, mg_ptimer_t *t)
{
    q->heap[i] = t;
    t->idx = i;
}

static void sift_up(mg_ptimers_t *q, uint32_t i)
{
    mg_ptimer_t *t = q->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (q->heap[parent]->at <= t->at)
            break;
        place(q, i, q->heap[parent]);
        i = parent;
    }
    place(q, i, t);
}

static void sift_down(mg_ptimers_t *q, uint32_t i)
{
    mg_ptimer_t *t = q->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= q->n)
            break;
        if (c + 1 < q->n && q->heap[c + 1]->at < q->heap[c]->at)
            c++;
        if (t->at <= q->heap[c]->at)
            break;
        place(q, i, q->heap[c]);
        i = c;
    }
    place(q, i, t);
}

static void set_fd(mg_ptimers_t *q, int64_t at)
{
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    if (at < 1)
        at = 1; /* a zero it_value would disarm it */
    its.it_value.tv_sec = at / 1000000;
    its.it_value.tv_nsec = (long)(at % 1000000) * 1000;
    q->sets++;
    if (timerfd_settime(q->fd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
        MG_LOG(MG_LOG_ERROR, "ptimer", "timerfd_settime: %s", strerror(errno));
        return;
    }
    q->set_at = at;
}

static void on_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    mg_ptimers_t *q = arg;
    uint64_t expirations;
    if (read(fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        MG_LOG(MG_LOG_ERROR, "ptimer", "timerfd read: %s", strerror(errno));
    q->set_at = INT64_MAX; /* one-shot: it is not set any more */
    q->firing = true;
    int64_t now = mg_mono_us();
    while (q->n > 0 && q->heap[0]->at <= now) {
        mg_ptimer_t *t = q->heap[0];
        mg_ptimer_cancel(q, t);
        t->fn(t->arg); /* may arm or cancel any timer, this one too */
    }
    q->firing = false;
    if (q->n > 0)
        set_fd(q, q->heap[0]->at);
}

mg_err_t mg_ptimers_new(struct event_base *base, uint32_t capacity, mg_ptimers_t **out)
{
    *out = NULL;
    mg_ptimers_t *q = calloc(1, sizeof(*q) + (size_t)capacity * sizeof(q->heap[0]));
    if (q == NULL)
        return MG_E_NOMEM;
    q->cap = capacity;
    q->set_at = INT64_MAX;
    q->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (q->fd < 0) {
        MG_LOG(MG_LOG_ERROR, "ptimer", "cannot create a timerfd: %s", strerror(errno));
        free(q);
        return MG_E_IO;
    }
    q->ev = event_new(base, q->fd, EV_READ | EV_PERSIST, on_fire, q);
    if (q->ev == NULL || event_add(q->ev, NULL) < 0) {
        mg_ptimers_free(q);
        return MG_E_NOMEM;
    }
    *out = q;
    return MG_OK;
}

void mg_ptimers_free(mg_ptimers_t *q)
{
    if (q == NULL)
        return;
    while (q->n > 0)
        mg_ptimer_cancel(q, q->heap[0]);
    if (q->ev)
        event_free(q->ev);
    close(q->fd);
    free(q);
}

unsigned long mg_ptimers_sets(const mg_ptimers_t *q)
{
    return q->sets;
}

void mg_ptimer_init(mg_ptimer_t *t, mg_ptimer_fn fn, void *arg)
{
    t->at = 0;
    t->idx = MG_PTIMER_IDLE;
    t->fn = fn;
    t->arg = arg;
}

mg_err_t mg_ptimer_arm(mg_ptimers_t *q, mg_ptimer_t *t, int64_t at)
{
    if (t->idx == MG_PTIMER_IDLE) {
        if (q->n == q->cap)
            return MG_E_LIMIT;
        t->at = at;
        place(q, q->n++, t);
        sift_up(q, t->idx);
    } else {
        bool earlier = at < t->at;
        t->at = at;
        if (earlier)
            sift_up(q, t->idx);
        else
            sift_down(q, t->idx);
    }
    if (!q->firing && at < q->set_at)
        set_fd(q, at);
    return MG_OK;
}

void mg_ptimer_cancel(mg_ptimers_t *q, mg_ptimer_t *t)
{
    uint32_t i = t->idx;
    if (i == MG_PTIMER_IDLE)
        return;
    t->idx = MG_PTIMER_IDLE;
    mg_ptimer_t *last = q->heap[--q->n];
    if (i == q->n)
        return;
    place(q, i, last);
    sift_down(q, i);
    sift_up(q, last->idx);
}
