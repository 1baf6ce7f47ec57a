/*
 * common/outq.h - a socket's output written at the end of the loop turn, and its input read in
 * one readv per readable event; for TLS, under a bufferevent_openssl filter
 * (mg_outq_attach_filter).
 *
 * A bufferevent writes its output when epoll says the socket is writable: adding to an empty
 * output registers EPOLLOUT (epoll_ctl), the next turn writes, and the drained buffer
 * unregisters it (epoll_ctl again): two system calls per write. Attached to a queue, a
 * connection's output is written by the queue instead, once per turn, after the
 * callbacks of that turn have added their frames (see outq.c); EPOLLOUT is only used while the
 * socket is full.
 *
 * A bufferevent also reads at most 4 KiB per readable event (libevent 2.1's EVBUFFER_MAX_READ),
 * each time after an ioctl(FIONREAD): a busy connection is read 4 KiB per loop turn, at two
 * system calls a read. An attached connection is read by the queue's reader instead: one readv
 * of up to MG_OUTQ_READ_MAX bytes into the bufferevent's input, then the bufferevent's read
 * callback, as the bufferevent would call it. Its EV_READ is then the reader's: enable,
 * disable and test it with mg_outq_enable/mg_outq_disable/mg_outq_get_enabled, never with the
 * bufferevent_* calls. A TLS filter over such a socket reads and writes through it the same
 * way. One queue per event loop; not thread-safe.
 */
#ifndef MG_COMMON_OUTQ_H
#define MG_COMMON_OUTQ_H

#include <stdbool.h>

struct bufferevent;
struct event;
struct event_base;
struct evbuffer_cb_entry;

typedef struct mg_outq mg_outq_t;
typedef struct mg_outq_item mg_outq_item_t;

/* What the bufferevent's write callback does: called after a write left the output at or
 * below the write low-water mark. It may free the connection (after mg_outq_detach). */
typedef void (*mg_outq_written_fn)(struct bufferevent *bev, void *arg);

/* Produces the connection's output (an HTTP/2 session's frames) at the end of the turn, just
 * before the queue writes it. Returns false when the connection is gone (it may free it, after
 * mg_outq_detach). */
typedef bool (*mg_outq_prepare_fn)(void *arg);

/* Lives in the connection; zeroed = not attached. */
struct mg_outq_item {
    mg_outq_t *q;
    mg_outq_item_t *prev, *next;
    struct bufferevent *bev; /* NULL: prepare only (mg_outq_attach_prepare) */
    struct bufferevent *top; /* a TLS filter over |bev| (mg_outq_attach_filter), or NULL */
    struct evbuffer_cb_entry *top_cb;
    struct evbuffer_cb_entry *cb;
    struct event *rd; /* the reader (EV_READ | EV_PERSIST on the socket); pending = reading */
    mg_outq_written_fn written;
    mg_outq_prepare_fn prepare;
    void *arg;
    bool queued;
    bool want_prepare;
};

mg_outq_t *mg_outq_new(struct event_base *base); /* NULL when out of memory */
/* Items still attached must be detached first (their connections freed). NULL is fine. */
void mg_outq_free(mg_outq_t *q);

/* Hands the writing and reading of |bev| (a connected socket bufferevent) to |q|; |written| is
 * called as the bufferevent's write callback would be. Reading goes on if the bufferevent read
 * (its EV_READ), now by the queue's reader, which calls the bufferevent's read and event
 * callbacks of the moment (bufferevent_setcb): a read callback after each read that added
 * bytes, the event callback with BEV_EVENT_READING | BEV_EVENT_EOF at end of stream or
 * BEV_EVENT_READING | BEV_EVENT_ERROR (errno set) on an error, reading stopped before either.
 * The input's read watermarks are not applied. Returns false when out of memory: the
 * bufferevent then goes on reading and writing by itself. */
bool mg_outq_attach(mg_outq_t *q, mg_outq_item_t *it, struct bufferevent *bev,
                    mg_outq_written_fn written, void *arg);
/* With |prepare| set, mg_outq_defer may leave the producing of output to the end of the turn. */
void mg_outq_set_prepare(mg_outq_item_t *it, mg_outq_prepare_fn prepare);
/* TLS: mg_outq_attach for |sock|, the socket under |filter|, a bufferevent_openssl filter
 * through which the connection reads and writes (|arg|: for the prepare callback). The queue
 * has the filter seal what its output holds into |sock|'s at the end of the turn (see seal in
 * outq.c), at most 64 KiB ahead of the socket, and writes that; the reader reads |sock| and
 * calls its callbacks, which are the filter's. |filter|'s EV_WRITE is the queue's: never
 * enable it. Its EV_READ goes with the reader: mg_outq_enable/disable on |filter| start and
 * stop the reader too (else the socket would be read into |sock|'s input without bound while
 * |filter| pauses). False when out of memory, with nothing changed: the filter and |sock| go
 * on by themselves. */
bool mg_outq_attach_filter(mg_outq_t *q, mg_outq_item_t *it, struct bufferevent *sock,
                           struct bufferevent *filter, void *arg);
/* For a connection whose bufferevent writes by itself (a TLS connection whose attach failed):
 * the queue only runs |prepare| at the end of the turn when mg_outq_defer asks; it never
 * writes. Always succeeds. */
bool mg_outq_attach_prepare(mg_outq_t *q, mg_outq_item_t *it, mg_outq_prepare_fn prepare,
                            void *arg);
/* An HTTP/2 session asked to send serializes its frames once per turn instead of at every
 * call that queued one (a request's HEADERS, DATA, END_STREAM and window updates come from
 * different callbacks of the same turn): when the queue writes |it|, asks for its prepare
 * callback at the end of the turn and returns true. Otherwise (not attached, no prepare, the
 * socket full and the bufferevent writing) returns false: the caller produces them now. */
bool mg_outq_defer(mg_outq_item_t *it);
/* Before the bufferevent is freed; the reader stops (the bufferevent does not read again by
 * itself). Safe from the read callback the reader called. A zeroed item is fine. */
void mg_outq_detach(mg_outq_item_t *it);
/* From the bufferevent's own write callback (the socket took enough to go below the
 * low-water mark): the queue writes again, starting with what is left. */
void mg_outq_bev_written(mg_outq_item_t *it);

/* bufferevent_enable/_disable/_get_enabled for a connection's bufferevent |bev| whose item is
 * |it|: EV_READ is the reader's while |it| is attached with a bufferevent (and the TLS
 * filter's as well, for the filter), the bufferevent's otherwise (a zeroed item, attach
 * failed); EV_WRITE is always the bufferevent's. */
void mg_outq_enable(mg_outq_item_t *it, struct bufferevent *bev, short what);
void mg_outq_disable(mg_outq_item_t *it, struct bufferevent *bev, short what);
short mg_outq_get_enabled(const mg_outq_item_t *it, struct bufferevent *bev);

/* Most bytes one readable event reads. */
#define MG_OUTQ_READ_MAX (64 * 1024)

#endif
