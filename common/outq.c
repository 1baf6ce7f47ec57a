/* common/outq.c - a socket's output written at the end of the loop turn, its input read in one
 * readv per readable event, TLS sealed at the end of the turn (see outq.h) */
#include "common/outq.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

/*
 * The queue runs from an event made active when the list gets its first item. libevent runs
 * it after the callbacks already active in that loop turn (the I/O of one epoll_wait), in the
 * same turn: a connection's write carries what all of them added, as many responses per
 * write() under load as when the bufferevent waited for EPOLLOUT, without the two epoll_ctl
 * calls, and a lone request costs no extra epoll_wait. (A timer due at once runs in the next
 * turn, after an epoll_wait that returns nothing: two more system calls per request when one
 * request is in flight.) What on_turn_end's own writes make queued is written before it
 * returns: no second run.
 */
struct mg_outq {
    struct event *ev;
    mg_outq_item_t *head, *tail;
    bool draining; /* on_turn_end runs: what is queued now is written in the same call */
};

/* The queue writes while the bufferevent does not: its EV_WRITE says which (no flag of our own
 * to fall out of step with it). */
static bool direct(const mg_outq_item_t *it)
{
    return it->q && it->bev && !(bufferevent_get_enabled(it->bev) & EV_WRITE);
}

static void unlink_item(mg_outq_item_t *it)
{
    mg_outq_t *q = it->q;
    if (it->prev)
        it->prev->next = it->next;
    else
        q->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        q->tail = it->prev;
    it->prev = it->next = NULL;
    it->queued = false;
}

/*
 * TLS: the filter seals what its output holds into records, into the socket's output, whenever
 * its EV_WRITE is on and something is added. While the queue writes (direct), EV_WRITE stays
 * off and the frames a turn adds pile up; sealed all at once at the end of the turn, they make
 * as few records as when the socket's writability paced the filter (about 4 KiB each, one per
 * chain of its output), and the client decrypts no more of them. While the socket's
 * bufferevent writes by itself (the socket was full), EV_WRITE is on, so that each drain of
 * the socket seals more.
 */
static void seal(mg_outq_item_t *it)
{
    if (it->top && direct(it) && evbuffer_get_length(bufferevent_get_output(it->top)) > 0) {
        bufferevent_enable(it->top, EV_WRITE);
        bufferevent_disable(it->top, EV_WRITE);
    }
}

static void call_written(mg_outq_item_t *it)
{
    if (it->top == NULL) {
        it->written(it->bev, it->arg);
        return;
    }
    /* TLS: the socket took the sealed records: seal more. With nothing left to seal the filter
     * calls nobody, yet the connection may be waiting for its last byte to leave (a close once
     * flushed): call its write callback as the filter would */
    if (evbuffer_get_length(bufferevent_get_output(it->top)) > 0) {
        seal(it); /* the filter calls the connection's write callback (deferred) */
        return;
    }
    bufferevent_data_cb on_write;
    void *cbarg;
    bufferevent_getcb(it->top, NULL, &on_write, NULL, &cbarg);
    if (on_write)
        on_write(it->top, cbarg); /* may free the connection */
}

/* Writes |it|'s output in one writev. What the socket does not take, and errors, go back to
 * the bufferevent: it writes the rest when the socket drains, or reports the error. */
static void write_out(mg_outq_item_t *it)
{
    struct evbuffer *out = bufferevent_get_output(it->bev);
    if (evbuffer_get_length(out) == 0)
        return;
    evbuffer_unfreeze(out, 1); /* a bufferevent keeps its output's start frozen but for writes */
    int n = evbuffer_write(out, bufferevent_getfd(it->bev));
    evbuffer_freeze(out, 1);
    size_t left = evbuffer_get_length(out), low = 0;
    if (left > 0) {
        bufferevent_enable(it->bev, EV_WRITE);
        if (it->top)
            bufferevent_enable(it->top, EV_WRITE);
    }
    bufferevent_getwatermark(it->bev, EV_WRITE, &low, NULL);
    if (n > 0 && left <= low)
        call_written(it); /* may free the connection and |it| */
}

static void on_turn_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    mg_outq_t *q = arg;
    q->draining = true;
    while (q->head) { /* prepare() and written() may queue more, or detach others */
        mg_outq_item_t *it = q->head;
        unlink_item(it);
        if (it->want_prepare) {
            it->want_prepare = false;
            if (!it->prepare(it->arg))
                continue; /* the connection is gone */
            if (it->queued) /* its new output queued it again: written now */
                unlink_item(it);
        }
        if (direct(it)) {
            seal(it);
            if (it->queued) /* the records it sealed queued it again: written now */
                unlink_item(it);
            write_out(it);
        }
    }
    q->draining = false;
}

static void enqueue(mg_outq_item_t *it)
{
    mg_outq_t *q = it->q;
    it->queued = true;
    it->prev = q->tail;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    if (q->head == it && !q->draining)
        event_active(q->ev, EV_TIMEOUT, 0);
}

static void on_output(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)buf;
    mg_outq_item_t *it = arg;
    if (info->n_added && !it->queued && direct(it))
        enqueue(it);
}

/* What the reader reserves: libevent rounds a new chain, its 48-byte header included, up to a
 * power of two, so asking for all of MG_OUTQ_READ_MAX would allocate 128 KiB; this is one 64 KiB
 * chain (65,488 bytes of room). */
#define READ_ASK (MG_OUTQ_READ_MAX - 1024)

/* The reader: what bufferevent_readcb does, without its ioctl(FIONREAD) and its 4 KiB cap. The
 * callbacks are the bufferevent's of the moment (a lingering close swaps them). */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    mg_outq_item_t *it = arg;
    struct bufferevent *bev = it->bev;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    evbuffer_unfreeze(in, 0); /* a bufferevent keeps its input's end frozen but for reads */
    int nv = evbuffer_reserve_space(in, READ_ASK, v, 2);
    ssize_t n = -1;
    if (nv > 0) {
        size_t room = MG_OUTQ_READ_MAX; /* two chains' room may be more */
        for (int i = 0; i < nv; i++) {
            size_t len = v[i].iov_len < room ? v[i].iov_len : room;
            iov[i] = (struct iovec){v[i].iov_base, len};
            room -= len;
        }
        n = readv(fd, iov, nv);
        size_t left = n > 0 ? (size_t)n : 0;
        for (int i = 0; i < nv; i++) {
            v[i].iov_len = iov[i].iov_len < left ? iov[i].iov_len : left;
            left -= v[i].iov_len;
        }
        int saved = errno;
        evbuffer_commit_space(in, v, n > 0 ? nv : 0);
        errno = saved;
    } else {
        errno = ENOMEM;
    }
    evbuffer_freeze(in, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return; /* level-triggered: the next turn tries again */
    bufferevent_data_cb on_read;
    bufferevent_event_cb on_event;
    void *cbarg;
    bufferevent_getcb(bev, &on_read, NULL, &on_event, &cbarg);
    if (n > 0) {
        if (on_read)
            on_read(bev, cbarg); /* may free the connection, |it| and |bev| with it */
        return;
    }
    int saved = errno;
    event_del(it->rd); /* as the bufferevent: no reading after end of stream or an error */
    errno = saved;
    if (on_event)
        on_event(bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), cbarg);
}

mg_outq_t *mg_outq_new(struct event_base *base)
{
    mg_outq_t *q = calloc(1, sizeof(*q));
    if (q == NULL || (q->ev = evtimer_new(base, on_turn_end, q)) == NULL) {
        free(q);
        return NULL;
    }
    return q;
}

void mg_outq_free(mg_outq_t *q)
{
    if (q == NULL)
        return;
    event_free(q->ev);
    free(q);
}

bool mg_outq_attach(mg_outq_t *q, mg_outq_item_t *it, struct bufferevent *bev,
                    mg_outq_written_fn written, void *arg)
{
    *it = (mg_outq_item_t){.q = q, .bev = bev, .written = written, .arg = arg};
    it->rd = event_new(bufferevent_get_base(bev), bufferevent_getfd(bev), EV_READ | EV_PERSIST,
                       on_readable, it);
    if (it->rd)
        it->cb = evbuffer_add_cb(bufferevent_get_output(bev), on_output, it);
    if (it->cb == NULL) {
        if (it->rd)
            event_free(it->rd);
        *it = (mg_outq_item_t){0};
        return false;
    }
    mg_outq_bev_written(it);
    if (bufferevent_get_enabled(bev) & EV_READ) { /* the reader reads from now on */
        bufferevent_disable(bev, EV_READ);
        event_add(it->rd, NULL);
    }
    return true;
}

void mg_outq_set_prepare(mg_outq_item_t *it, mg_outq_prepare_fn prepare)
{
    it->prepare = prepare;
}

/* TLS records the filter seals ahead of the socket; the rest waits in its own output, which
 * the connection's limits count */
#define SEALED_MAX (64 * 1024)

bool mg_outq_attach_filter(mg_outq_t *q, mg_outq_item_t *it, struct bufferevent *sock,
                           struct bufferevent *filter, void *arg)
{
    struct evbuffer_cb_entry *top_cb =
        evbuffer_add_cb(bufferevent_get_output(filter), on_output, it);
    if (top_cb == NULL)
        return false;
    if (!mg_outq_attach(q, it, sock, NULL, arg)) { /* written: see call_written */
        evbuffer_remove_cb_entry(bufferevent_get_output(filter), top_cb);
        return false;
    }
    it->top = filter;
    it->top_cb = top_cb;
    bufferevent_disable(filter, EV_WRITE); /* the queue seals (see seal) */
    bufferevent_setwatermark(sock, EV_WRITE, 0, SEALED_MAX);
    return true;
}

bool mg_outq_attach_prepare(mg_outq_t *q, mg_outq_item_t *it, mg_outq_prepare_fn prepare,
                            void *arg)
{
    *it = (mg_outq_item_t){.q = q, .prepare = prepare, .arg = arg};
    return true;
}

bool mg_outq_defer(mg_outq_item_t *it)
{
    if (it->q == NULL || it->prepare == NULL || (it->bev && !direct(it)))
        return false;
    it->want_prepare = true;
    if (!it->queued)
        enqueue(it);
    return true;
}

void mg_outq_detach(mg_outq_item_t *it)
{
    if (it->q == NULL)
        return;
    if (it->queued)
        unlink_item(it);
    if (it->top)
        evbuffer_remove_cb_entry(bufferevent_get_output(it->top), it->top_cb);
    if (it->bev) {
        evbuffer_remove_cb_entry(bufferevent_get_output(it->bev), it->cb);
        event_free(it->rd);
        it->rd = NULL;
    }
    it->q = NULL;
}

void mg_outq_bev_written(mg_outq_item_t *it)
{
    if (it->q == NULL || it->bev == NULL || direct(it))
        return;
    /* the socket drained: the queue writes from now on, including what the write callback
     * just added (under load there always is some, and the bufferevent would keep the turn) */
    bufferevent_disable(it->bev, EV_WRITE);
    bool more = evbuffer_get_length(bufferevent_get_output(it->bev)) > 0;
    if (it->top) {
        bufferevent_disable(it->top, EV_WRITE);
        more = more || evbuffer_get_length(bufferevent_get_output(it->top)) > 0;
    }
    if (more && !it->queued)
        enqueue(it);
}

/* Whether the reader has |bev|'s EV_READ (see outq.h). */
static bool reader_of(const mg_outq_item_t *it, const struct bufferevent *bev)
{
    return it->q && it->bev == bev && it->rd;
}

/* Whether |bev| is the TLS filter whose socket the reader reads. */
static bool top_of(const mg_outq_item_t *it, const struct bufferevent *bev)
{
    return it->q && it->top == bev && it->rd;
}

void mg_outq_enable(mg_outq_item_t *it, struct bufferevent *bev, short what)
{
    bool reader = reader_of(it, bev);
    if ((what & EV_READ) && (reader || top_of(it, bev))) {
        event_add(it->rd, NULL);
        if (reader)
            what &= (short)~EV_READ;
    }
    if (what) /* a filter's enable also reads what its socket's input already holds */
        bufferevent_enable(bev, what);
}

void mg_outq_disable(mg_outq_item_t *it, struct bufferevent *bev, short what)
{
    bool reader = reader_of(it, bev);
    if ((what & EV_READ) && (reader || top_of(it, bev))) {
        event_del(it->rd);
        if (reader)
            what &= (short)~EV_READ;
    }
    if (what)
        bufferevent_disable(bev, what);
}

short mg_outq_get_enabled(const mg_outq_item_t *it, struct bufferevent *bev)
{
    short on = bufferevent_get_enabled(bev);
    if (reader_of(it, bev))
        on = (short)((on & ~EV_READ) | (event_pending(it->rd, EV_READ, NULL) ? EV_READ : 0));
    return on;
}
