/*
 * features/rloop.c - hiredis on libevent with persistent reads and timer-driven writes (see
 * rloop.h).
 */
#include "features/rloop.h"

#include <stdbool.h>
#include <stdlib.h>

#include <event2/event_struct.h> /* embedded events: one allocation per connection */

typedef struct rloop {
    redisAsyncContext *ac;
    struct event rd;    /* EV_READ | EV_PERSIST, while hiredis wants to read */
    struct event wr;    /* EV_WRITE | EV_PERSIST, only while connecting or blocked */
    struct event flush; /* no fd: a zero timer that writes what was queued, one pass later */
    bool rd_on, wr_on;
    bool flushing; /* inside on_flush: a write that would block needs wr */
    bool dead;     /* hiredis freed the context inside on_flush: free this on the way out */
} rloop_t;

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    rloop_t *e = arg;
    (void)fd, (void)what;
    redisAsyncHandleRead(e->ac);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    rloop_t *e = arg;
    (void)fd, (void)what;
    redisAsyncHandleWrite(e->ac);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    rloop_t *e = arg;
    (void)fd, (void)what;
    e->flushing = true;
    redisAsyncHandleWrite(e->ac); /* a write error frees the context, and cleanup runs */
    if (e->dead) {
        free(e);
        return;
    }
    e->flushing = false;
}

static void add_read(void *d)
{
    rloop_t *e = d;
    if (!e->rd_on)
        e->rd_on = event_add(&e->rd, NULL) == 0;
}

static void del_read(void *d)
{
    rloop_t *e = d;
    if (e->rd_on)
        event_del(&e->rd);
    e->rd_on = false;
}

/* hiredis calls this for every command queued, and again when a write left bytes behind. */
static void add_write(void *d)
{
    rloop_t *e = d;
    static const struct timeval next_pass = {0, 0};
    if ((e->ac->c.flags & REDIS_CONNECTED) && !e->flushing && !e->wr_on) {
        if (!event_pending(&e->flush, EV_TIMEOUT, NULL))
            event_add(&e->flush, &next_pass);
    } else if (!e->wr_on) {
        e->wr_on = event_add(&e->wr, NULL) == 0;
    }
}

static void del_write(void *d)
{
    rloop_t *e = d;
    if (e->wr_on)
        event_del(&e->wr);
    e->wr_on = false;
}

static void cleanup(void *d)
{
    rloop_t *e = d;
    event_del(&e->rd);
    event_del(&e->wr);
    event_del(&e->flush); /* pending or active */
    if (e->flushing)
        e->dead = true;
    else
        free(e);
}

mg_err_t mg_rloop_attach(redisAsyncContext *ac, struct event_base *base)
{
    rloop_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return MG_E_NOMEM;
    e->ac = ac;
    int fd = ac->c.fd;
    if (event_assign(&e->rd, base, fd, EV_READ | EV_PERSIST, on_read, e) != 0 ||
        event_assign(&e->wr, base, fd, EV_WRITE | EV_PERSIST, on_write, e) != 0 ||
        event_assign(&e->flush, base, -1, 0, on_flush, e) != 0) {
        free(e);
        return MG_E_NOMEM;
    }
    ac->ev.data = e;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    add_read(e); /* as hiredis's adapter: read and wait for the connect to complete */
    add_write(e);
    return MG_OK;
}
