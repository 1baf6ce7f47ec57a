/*
 * common/ptimer.h - timers that fire on time, on an event loop whose own clock is coarse.
 *
 * Workers' event bases run on libevent's default clock, CLOCK_MONOTONIC_COARSE (a 4 ms tick
 * here), on which a 5 ms timer fires up to 4 ms late. libevent's precise mode
 * (EVENT_BASE_FLAG_PRECISE_TIMER) reads CLOCK_MONOTONIC instead, but sets its timerfd before
 * every epoll_wait: two more system calls per request when one request is in flight, about
 * 3 us of added latency here. A queue is a min-heap of deadlines (mg_mono_us, common/clock.h)
 * behind one timerfd of its own: the timerfd is set only when a deadline earlier than the one
 * it is set for arrives, and once after it fired; a timer cancelled leaves it set (a wake-up
 * with nothing due is one read). Only the few timers that need milliseconds go here (a
 * request's features budget); seconds-long timeouts stay libevent timers.
 *
 * The heap holds at most |capacity| timers, given at creation, so arming never allocates.
 * One queue per event loop; not thread-safe.
 */
#ifndef MG_COMMON_PTIMER_H
#define MG_COMMON_PTIMER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

struct event_base;

typedef struct mg_ptimers mg_ptimers_t;
typedef void (*mg_ptimer_fn)(void *arg);

/* Lives in its owner; set up by mg_ptimer_init. */
typedef struct mg_ptimer {
    int64_t at;   /* the deadline, when armed */
    uint32_t idx; /* its place in the heap; MG_PTIMER_IDLE when not armed */
    mg_ptimer_fn fn;
    void *arg;
} mg_ptimer_t;

#define MG_PTIMER_IDLE UINT32_MAX

/* A queue on |base| for at most |capacity| armed timers. MG_E_IO (logged) when the timerfd
 * cannot be made, MG_E_NOMEM when out of memory. */
mg_err_t mg_ptimers_new(struct event_base *base, uint32_t capacity, mg_ptimers_t **out);
/* Armed timers are dropped without firing. NULL is fine. */
void mg_ptimers_free(mg_ptimers_t *q);
/* How many times the timerfd was set: what the queue costs in system calls (for tests). */
unsigned long mg_ptimers_sets(const mg_ptimers_t *q);

void mg_ptimer_init(mg_ptimer_t *t, mg_ptimer_fn fn, void *arg);
/* Arms |t| to call its function once, from the loop, as soon as the clock (mg_mono_us) reaches
 * |at|; an armed timer moves to |at|. A deadline already past fires in the next loop pass.
 * MG_E_LIMIT when |t| is not armed and the queue holds |capacity| timers already. */
mg_err_t mg_ptimer_arm(mg_ptimers_t *q, mg_ptimer_t *t, int64_t at);
/* Disarms |t|; a timer not armed is fine. */
void mg_ptimer_cancel(mg_ptimers_t *q, mg_ptimer_t *t);

static inline bool mg_ptimer_armed(const mg_ptimer_t *t)
{
    return t->idx != MG_PTIMER_IDLE;
}

#endif /* MG_COMMON_PTIMER_H */
