/*
 * gateway/upstream.c - pooled HTTP/2 and HTTP/1.1 client connections to pods.
 *
 * DESIGN
 * A pool per (pod, protocol) in a small hash table per worker. Connections are bufferevents;
 * an HTTP/2 connection runs an nghttp2 client session (mem_recv/mem_send, automatic window
 * updates off so the gateway only acknowledges response bytes its client has taken), an
 * HTTP/1.1 connection runs llhttp in response mode and carries one exchange at a time.
 * Streams are recycled through a free list; response header fields live in the stream's arena.
 * A response head or trailer section that does not fit (more than MG_UP_MAX_FIELDS fields, or
 * the arena is full) is never passed on cut: the stream fails with MG_UP_HEADERS, as Envoy and
 * nghttpx answer 502 to such a response, and the pod's stream is reset or its connection closed.
 * A connection is freed only when no call frame uses it (|busy| == 0), like the server side.
 *
 * Circuit breaking (upstream.max_conns_per_pod, max_pending_per_pod; Envoy's cluster
 * max_connections and max_pending_requests): a pool opens another connection only while the
 * pod's connection gauge, which every worker shares, is below the cap. At the cap a request
 * waits in its pool's FIFO (qhead..qtail) for a free connection (HTTP/1.1: one that finished
 * its exchange; HTTP/2: a stream slot), counted in the pod's shared |queued| gauge; with that
 * gauge at max_pending_per_pod, mg_up_start refuses it at once (MG_E_LIMIT). Whatever frees a
 * connection or a slot (a stream closing, a connection closing, new SETTINGS) kicks the pool,
 * and the kick serves the queue at the next loop turn, oldest first, outside any callback. A
 * new request queues behind waiting ones even when it could go at once: nobody overtakes. A
 * worker with no usable connection to the pod may open one over the cap (as Envoy does), else
 * its queue could wait for ever on connections other workers hold. A queued stream is on no
 * connection (|c| NULL); mg_up_cancel unlinks and frees it, so it is never sent.
 *
 * Pool lifetime: a pool holds a reference to its pod's state (routing/podstate.h) for its
 * gauges. A pool whose pod the routing retired (gone from DNS or from the document) is freed
 * by the worker's reaper (on_reap), a slow timer armed when the routes change or a pool is
 * made: it closes the pool's connections that carry no stream, and frees the pool once it has
 * no connection and no queued request, which drops its reference. Nothing else points to a
 * pool (a connection or a queued stream would), so pool_get never finds a freed one; a request
 * still routed to the pod by an old snapshot just makes a new pool, reaped in turn.
 */
#include "gateway/upstream.h"

#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

#include "common/arena.h"
#include "common/asan.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/outq.h"
#include "common/smalloc.h"
#include "routing/podstate.h"

#define OUT_HIGH (64 * 1024)
#define OUT_LOW (16 * 1024)
#define NBUCKETS 64
#define STREAM_MEMORY (256 * 1024)
#define UP_HPACK_TABLE_MAX (64 * 1024) /* of the HPACK table a pod offers, the most used */
/* released streams kept for the next requests, as many as a busy worker has in flight, until
 * it idles (mg_upstreams_trim); none under ASan, so that it sees a use of a released stream */
#define STREAM_CACHE 1024
/* how often the reaper looks for pools of retired pods while there may be some */
#define REAP_MS 1000

typedef struct pool pool_t;
typedef struct up_conn up_conn_t;

struct mg_up_stream {
    up_conn_t *c;                  /* NULL while queued */
    pool_t *queued;                /* the pool whose queue holds it, or NULL */
    const mg_up_req_t *req;        /* while queued: the caller's (see mg_up_start) */
    mg_up_stream_t *qnext, *qprev; /* in the pool's queue */
    int64_t dequeued_us;           /* when it left the queue (CLOCK_MONOTONIC), 0: never queued */
    int32_t id;
    const mg_up_cbs_t *cbs;
    void *ctx;
    mg_up_stream_t *next; /* in the connection's list, or the free list */
    mg_up_stream_t *prev;
    mg_up_stream_t *drain_next;
    struct evbuffer *body;
    bool body_ended, cancelled, done, deferred, want_drain, in_drain_list, sent, head;
    bool misframed; /* HTTP/1.1: a 204 or 304 with framing fields: its connection is not reused */
    bool headers_done, skip_1xx;
    bool req_sent_all; /* the whole request body left |body| for the pod (and its end) */
    bool body_gone;    /* answered before that: |body| is the caller's no more, never read it */
    int status;
    size_t unconsumed;
    mg_hdr_t *hdrs;
    size_t nhdrs, hdrs_cap;
    mg_hdr_t *trailers;
    size_t ntrailers, trailers_cap;
    nghttp2_nv *req_trailers;
    size_t nreq_trailers;
    bool h1_chunked; /* HTTP/1.1 request body framing */
    char *h1_scratch;
    size_t h1_fld_len, h1_val_len;
    mg_arena_t arena;
};

struct up_conn {
    pool_t *pool;
    up_conn_t *next, *prev;
    struct bufferevent *bev;
    struct event *timer; /* connect timeout, then idle close */
    nghttp2_session *h2;
    llhttp_t parser;
    bool connected, dead, goaway, in_recv, flushing, need_flush, idle, read_off;
    bool settled; /* h2: the pod's SETTINGS arrived, so its stream limit is known */
    int busy;
    mg_outq_item_t outq; /* once connected: written at the end of the turn and read by its
                          * reader (common/outq.h): EV_READ through mg_outq_enable/_disable */
    size_t nstreams;
    uint32_t nsubmitted; /* HTTP/2 requests submitted (h2_submit: when to index names) */
    mg_up_stream_t *streams;
    mg_up_stream_t *drain_list;
    mg_up_stream_t *hdr_stream; /* the stream whose header block is being decoded */
    char h1_why[96]; /* why a callback failed the HTTP/1.1 parse: llhttp's own reason then
                      * only says "User callback error" */
    size_t h1_ext_bytes; /* chunk extension bytes of the chunk being read */
};

struct pool {
    mg_upstreams_t *u;
    pool_t *next;
    uint32_t bucket; /* its index in u->buckets */
    char *key;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    mg_upstream_proto_t proto;
    up_conn_t *conns;
    size_t nconns, nidle;
    mg_log_limit_t log_limit; /* connect errors repeat per request */
    mg_log_limit_t head_log_limit; /* so do oversized or misframed response heads */
    mg_podstate_t *state; /* the pod's shared state (a reference): its gauges; may be NULL */
    mg_up_stream_t *qhead, *qtail; /* requests waiting for a connection, oldest first */
    size_t nqueued;
    struct event *kick; /* serves the queue at the next loop turn (on_kick) */
};

struct mg_upstreams {
    struct event_base *base;
    mg_up_conf_t conf;
    pool_t *buckets[NBUCKETS];
    size_t npools;
    struct event *reap; /* frees the pools of retired pods (on_reap) */
    mg_up_stream_t *free_streams;
    size_t nfree, nconns;
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    mg_smalloc_t *small; /* the sessions' small allocations (common/smalloc.h) */
    mg_outq_t *outq;     /* writes the connections */
    nghttp2_mem mem;
    llhttp_settings_t h1settings;
};

/* nghttp2's allocator for the worker's upstream sessions */
static void *mem_get(size_t size, void *ud)
{
    return mg_smalloc_get(ud, size);
}
static void mem_put(void *p, void *ud)
{
    mg_smalloc_put(ud, p);
}
static void *mem_zget(size_t n, size_t size, void *ud)
{
    return mg_smalloc_zget(ud, n, size);
}
static void *mem_reget(void *p, size_t size, void *ud)
{
    return mg_smalloc_reget(ud, p, size);
}

static void conn_close(up_conn_t *c, mg_up_fail_t why);
static void conn_flush(up_conn_t *c);
static void h1_pump(up_conn_t *c);
static void pool_kick(pool_t *p);

/* ---------- streams ---------- */

static mg_up_stream_t *stream_alloc(mg_upstreams_t *u)
{
    mg_up_stream_t *s = u->free_streams;
    if (s) {
        u->free_streams = s->next;
        u->nfree--;
    } else {
        s = malloc(sizeof(*s));
        if (s == NULL)
            return NULL;
        /* the response head (STREAM_MEMORY), and the request head's copy (h2_submit) */
        mg_arena_init(&s->arena, STREAM_MEMORY + (u->conf.max_header_block > 65536
                                                      ? u->conf.max_header_block
                                                      : 65536));
    }
    memset(s, 0, offsetof(mg_up_stream_t, arena));
    return s;
}

static void stream_release(mg_upstreams_t *u, mg_up_stream_t *s)
{
    mg_arena_clear(&s->arena);
    if (!MG_ASAN && u->nfree < STREAM_CACHE) {
        s->next = u->free_streams;
        u->free_streams = s;
        u->nfree++;
    } else {
        free(s);
    }
}

static void stream_unlink(up_conn_t *c, mg_up_stream_t *s)
{
    if (c->hdr_stream == s)
        c->hdr_stream = NULL;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->in_drain_list) {
        mg_up_stream_t **pp = &c->drain_list;
        while (*pp && *pp != s)
            pp = &(*pp)->drain_next;
        if (*pp)
            *pp = s->drain_next;
    }
    c->nstreams--;
}

static void fail_stream(mg_up_stream_t *s, mg_up_fail_t why, bool sent)
{
    if (s->done || s->cancelled)
        return;
    s->done = true;
    s->cbs->on_error(s->ctx, why, sent);
}

/* RFC 9110 15: a status code is three digits, 100 to 599; anything else cannot be passed on
 * (llhttp takes "HTTP/1.1 20 OK" as 20, and nghttp2 any three digits). */
static bool valid_status(int64_t st)
{
    return st >= 100 && st <= 599;
}

/* |end|: the head ends the response (HTTP/2 trailers-only, as gRPC errors are sent). */
static void deliver_headers(mg_up_stream_t *s, bool end)
{
    s->headers_done = true;
    if (s->cancelled || s->done)
        return;
    if (end)
        s->done = true;
    s->cbs->on_headers(s->ctx, s->status, s->hdrs, s->nhdrs, end);
}

/* An interim response whose fields are in |hdrs|: passed on, then forgotten, so that the
 * final response's fields start afresh (their copies stay in the arena until the stream ends). */
static void deliver_interim(mg_up_stream_t *s)
{
    if (!s->cancelled && !s->done && s->status != 101 && s->cbs->on_interim)
        s->cbs->on_interim(s->ctx, s->status, s->hdrs, s->nhdrs);
    s->nhdrs = 0;
}

static void deliver_end(mg_up_stream_t *s)
{
    if (s->cancelled || s->done)
        return;
    s->done = true;
    s->cbs->on_end(s->ctx, s->trailers, s->ntrailers);
}

/* False when the field does not fit (MG_UP_MAX_FIELDS reached, or the arena is full): the
 * caller fails the stream with fields_overflow, never drops the field. */
static bool push_hdr(mg_up_stream_t *s, bool trailer, const char *n, size_t nl, const char *v,
                     size_t vl, bool sensitive)
{
    if (trailer && mg_trailer_forbidden(n, nl))
        return true;
    bool lower = s->c->pool->proto == MG_UP_H1; /* nghttp2 checked that h2c names are */
    if (trailer)
        return mg_hdrs_push(&s->arena, &s->trailers, &s->ntrailers, &s->trailers_cap,
                            MG_UP_MAX_FIELDS, n, nl, v, vl, lower, sensitive);
    return mg_hdrs_push(&s->arena, &s->hdrs, &s->nhdrs, &s->hdrs_cap, MG_UP_MAX_FIELDS, n, nl, v,
                        vl, lower, sensitive);
}

#define STR_(x) #x
#define STR(x) STR_(x)
#define OVERFLOW_WHY "more than " STR(MG_UP_MAX_FIELDS) " fields, or more than the stream's memory"

/* The response head (|trailer|: trailer section) of |s| did not fit: the stream fails; the
 * caller resets it (HTTP/2) or closes the connection (HTTP/1.1, whose h1_recv logs why). */
static void fields_overflow(mg_up_stream_t *s, bool trailer)
{
    if (s->done || s->cancelled)
        return;
    pool_t *p = s->c->pool;
    unsigned long skipped;
    if (s->c->h2 && mg_log_limit_pass(&p->head_log_limit, &skipped))
        MG_LOG(MG_LOG_WARN, "upstream",
               "pod %s: response %s with " OVERFLOW_WHY ": not passed on (%lu similar suppressed)",
               p->key, trailer ? "trailers" : "head", skipped);
    fail_stream(s, MG_UP_HEADERS, true);
}

/* ---------- connection lifetime ---------- */

static void conn_free(up_conn_t *c)
{
    pool_t *p = c->pool;
    mg_upstreams_t *u = p->u;
    while (c->streams) {
        mg_up_stream_t *s = c->streams;
        stream_unlink(c, s);
        stream_release(u, s);
    }
    if (c->h2)
        nghttp2_session_del(c->h2);
    mg_outq_detach(&c->outq);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->timer)
        event_free(c->timer);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->idle)
        p->nidle--;
    p->nconns--;
    u->nconns--;
    if (p->state)
        atomic_fetch_sub_explicit(&p->state->conns, 1, memory_order_relaxed);
    free(c);
    pool_kick(p); /* below the cap again: a waiting request may open a connection */
}

static void enter(up_conn_t *c)
{
    c->busy++;
}

static void leave(up_conn_t *c)
{
    if (--c->busy == 0 && c->dead)
        conn_free(c);
}

static void fail_queue(pool_t *p, mg_up_fail_t why);
static bool handshaken(const up_conn_t *c);

/* Fails every live stream of |c| and frees it (when unused). A connection that dies before it
 * could carry a request (refused, timed out, closed or broken before the pod's SETTINGS) also
 * fails the pod's queue over, unless another connection of the pod may still take it: the
 * requests waiting there were sent nothing (an h2c request waits in the queue for its
 * connection's SETTINGS), and would otherwise wait for the next connection, and the next. */
static void conn_close(up_conn_t *c, mg_up_fail_t why)
{
    if (c->dead)
        return;
    c->dead = true;
    bool early = !c->connected || !handshaken(c);
    if (c->bev)
        mg_outq_disable(&c->outq, c->bev, EV_READ | EV_WRITE);
    enter(c);
    for (mg_up_stream_t *s = c->streams; s; s = s->next) {
        /* before the connection is up no byte left |body|: the request can be replayed */
        fail_stream(s, why, c->connected ? true : s->sent);
    }
    pool_t *p = c->pool;
    bool orphaned = early;
    for (up_conn_t *o = p->conns; o && orphaned; o = o->next)
        orphaned = o->dead || o->goaway;
    if (orphaned)
        fail_queue(p, why);
    leave(c);
}

/* An h2c connection is ready once the pod's SETTINGS arrived (its stream limit is known); the
 * connect timeout bounds that wait too: a pod that accepts and says nothing is down. */
static bool handshaken(const up_conn_t *c)
{
    return c->pool->proto != MG_UP_H2C || c->settled;
}

static void timer_arm(up_conn_t *c, uint32_t ms)
{
    if (ms == 0)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* A stream of |c| ended: its slot, or the whole connection, may take a waiting request (the
 * kick runs later, from the loop); with no stream left, |c| is kept for reuse within the
 * pool's limits. */
static void conn_unused(up_conn_t *c)
{
    pool_t *p = c->pool;
    if (c->dead) /* conn_free kicks the pool */
        return;
    pool_kick(p);
    if (c->nstreams > 0)
        return;
    if (c->pool->proto == MG_UP_H1) {
        /* a request waiting for a connection takes this one at the kick, whatever the idle cap */
        if (p->nidle >= p->u->conf.max_idle_conns_per_pod && p->qhead == NULL) {
            conn_close(c, MG_UP_RESET);
            return;
        }
        c->idle = true;
        p->nidle++;
    }
    timer_arm(c, p->u->conf.idle_conn_ms);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    up_conn_t *c = arg;
    enter(c);
    if (!c->connected || !handshaken(c)) {
        unsigned long skipped;
        if (mg_log_limit_pass(&c->pool->log_limit, &skipped))
            MG_LOG(MG_LOG_WARN, "upstream", "pod %s: %s within %u ms (%lu similar suppressed)",
                   c->pool->key,
                   c->connected ? "connected, but no HTTP/2 SETTINGS" : "no connection",
                   c->pool->u->conf.connect_timeout_ms, skipped);
        conn_close(c, MG_UP_CONNECT_TIMEOUT);
        /* the requests waiting for this pod would each wait as long again, in turn: they
         * go elsewhere now (nothing of theirs was sent) */
        fail_queue(c->pool, MG_UP_CONNECT_TIMEOUT);
    } else if (c->nstreams == 0) {
        conn_close(c, MG_UP_RESET); /* idle too long */
    }
    leave(c);
}

/* ---------- HTTP/2 client ---------- */

static int h2_on_header(nghttp2_session *sess, const nghttp2_frame *f, nghttp2_rcbuf *name,
                        nghttp2_rcbuf *value, uint8_t flags, void *ud)
{
    up_conn_t *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    /* a header block is never interleaved with other frames: skip the stream map per field */
    mg_up_stream_t *s = c->hdr_stream;
    if (s == NULL || s->id != f->hd.stream_id)
        s = c->hdr_stream = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
    if (s == NULL)
        return 0;
    nghttp2_vec n = nghttp2_rcbuf_get_buf(name), v = nghttp2_rcbuf_get_buf(value);
    bool sensitive = (flags & NGHTTP2_NV_FLAG_NO_INDEX) != 0;
    /* a field that does not fit fails the stream; TEMPORAL_CALLBACK_FAILURE resets it
     * (INTERNAL_ERROR) and skips the rest of the block */
    if (f->headers.cat == NGHTTP2_HCAT_HEADERS && s->headers_done) {
        if (push_hdr(s, true, (const char *)n.base, n.len, (const char *)v.base, v.len, sensitive))
            return 0;
        fields_overflow(s, true);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (n.len == 7 && memcmp(n.base, ":status", 7) == 0) {
        int64_t st = mg_parse_decimal((const char *)v.base, v.len); /* nghttp2: 3 digits */
        if (!valid_status(st)) {
            fail_stream(s, MG_UP_PROTO, true); /* then reset: nothing of it is passed on */
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        s->status = (int)st;
        return 0;
    }
    if (push_hdr(s, false, (const char *)n.base, n.len, (const char *)v.base, v.len, sensitive))
        return 0;
    fields_overflow(s, false);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

/* A frame nghttp2 refused on a stream (a response head that breaks RFC 9113 8.3, such as
 * :status 101): the pod broke the protocol. nghttp2 resets the stream, which would otherwise be
 * reported as the pod's reset, one a caller may retry. */
static int h2_on_invalid_frame(nghttp2_session *sess, const nghttp2_frame *f, int lib_error,
                               void *ud)
{
    (void)lib_error, (void)ud;
    mg_up_stream_t *s =
        f->hd.stream_id ? nghttp2_session_get_stream_user_data(sess, f->hd.stream_id) : NULL;
    if (s != NULL)
        fail_stream(s, MG_UP_PROTO, true);
    return 0;
}

/* What nghttp2 found wrong in a pod's frames (a response field HTTP/2 forbids, a bad :status, a
 * pod that does not speak h2c...), for the operator: rate-limited, as it repeats per request,
 * and without the field's value, which may be a secret. */
static int h2_on_error(nghttp2_session *sess, int lib_error, const char *msg, size_t len, void *ud)
{
    (void)sess, (void)lib_error;
    up_conn_t *c = ud;
    const char *cut = memmem(msg, len, ", value: [", 10);
    size_t show = cut ? (size_t)(cut - msg) : len < 300 ? len : 300;
    unsigned long skipped;
    if (mg_log_limit_pass(&c->pool->head_log_limit, &skipped))
        MG_LOG(MG_LOG_WARN, "upstream", "pod %s: %.*s (%lu similar suppressed)", c->pool->key,
               (int)show, msg, skipped);
    return 0;
}

static int h2_on_frame_recv(nghttp2_session *sess, const nghttp2_frame *f, void *ud)
{
    up_conn_t *c = ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        c->goaway = true; /* streams above last_stream_id close with REFUSED_STREAM */
        return 0;
    }
    if (f->hd.type == NGHTTP2_SETTINGS) {
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK)) {
            if (!c->settled) { /* the handshake deadline is over: the idle one, if idle */
                c->settled = true;
                evtimer_del(c->timer);
                if (c->nstreams == 0)
                    timer_arm(c, c->pool->u->conf.idle_conn_ms);
            }
        }
        pool_kick(c->pool); /* MAX_CONCURRENT_STREAMS may have grown */
        return 0;
    }
    mg_up_stream_t *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
    if (s == NULL)
        return 0;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (!s->headers_done) {
            if (s->status >= 100 && s->status < 200) {
                deliver_interim(s); /* nghttp2 took none with END_STREAM (RFC 9113 8.1) */
                return 0;
            }
            deliver_headers(s, end);
        } else if (end) {
            deliver_end(s);
        }
    } else if (f->hd.type == NGHTTP2_DATA && end) {
        deliver_end(s);
    }
    /* Answered in full before the whole request body went out (the client may have sent
     * all of it: what the pod's window held back is still in |body|): the exchange is over,
     * and its body buffer goes back to the caller with it. The stream is reset (NO_ERROR,
     * RFC 9113 8.1) instead of staying open, holding one of the connection's streams, and
     * reading a buffer since reused for another request; an END_STREAM after part of the
     * body would tell the pod a shorter request than the client sent. */
    if (end && !s->req_sent_all && !s->cancelled) {
        s->body_gone = true;
        nghttp2_submit_rst_stream(sess, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int h2_on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *ud)
{
    mg_up_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    /* The connection's window reopens at once: what a slow client has not taken yet holds
     * its own stream's window only, not the window every other stream on this connection
     * (other clients' requests) shares. */
    nghttp2_session_consume_connection(sess, len);
    if (s == NULL || s->cancelled || s->done) {
        nghttp2_session_consume_stream(sess, id, len);
        return 0;
    }
    s->unconsumed += len;
    s->cbs->on_data(s->ctx, data, len);
    return 0;
}

static int h2_on_stream_close(nghttp2_session *sess, int32_t id, uint32_t code, void *ud)
{
    up_conn_t *c = ud;
    mg_up_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    if (s == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(sess, id, NULL);
    if (!s->done && !s->cancelled) {
        if (code == NGHTTP2_REFUSED_STREAM) /* not processed: safe to replay if body intact */
            fail_stream(s, MG_UP_REFUSED, s->sent);
        else
            fail_stream(s, MG_UP_RESET, true);
    }
    stream_unlink(c, s);
    stream_release(c->pool->u, s);
    conn_unused(c); /* a stream slot is free */
    return 0;
}

static ssize_t h2_read_body(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    up_conn_t *c = ud;
    mg_up_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    if (s == NULL || s->cancelled)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (s->body_gone)
        return NGHTTP2_ERR_DEFERRED; /* its RST_STREAM is queued: nothing more goes out */
    size_t avail = evbuffer_get_length(s->body);
    if (avail == 0 && !s->body_ended) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    int n = evbuffer_remove(s->body, buf, len);
    if (n < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->sent = true;
    if (s->body_ended && evbuffer_get_length(s->body) == 0) {
        mg_h2_end_data(sess, id, flags, s->req_trailers, s->nreq_trailers);
        s->req_sent_all = true;
    }
    if (s->want_drain && !s->in_drain_list && evbuffer_get_length(s->body) < MG_SRV_LOW) {
        s->want_drain = false;
        s->in_drain_list = true;
        s->drain_next = c->drain_list;
        c->drain_list = s;
    }
    return n;
}

static void run_drains(up_conn_t *c)
{
    while (c->drain_list && !c->dead) {
        mg_up_stream_t *d = c->drain_list;
        c->drain_list = NULL;
        while (d) {
            mg_up_stream_t *next = d->drain_next;
            d->in_drain_list = false;
            if (!d->cancelled && !d->done)
                d->cbs->on_drain(d->ctx);
            d = next;
        }
    }
}

static void h2_flush(up_conn_t *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    do {
        if (mg_h2_send(c->h2, c->bev, OUT_HIGH, 0) < 0) {
            conn_close(c, MG_UP_PROTO);
            return;
        }
        run_drains(c);
    } while (c->need_flush && !c->dead && (c->need_flush = false, true) &&
             evbuffer_get_length(out) < OUT_HIGH);
    if (!c->dead && !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2))
        conn_close(c, MG_UP_RESET);
}

/* Produces the session's frames, and runs the drain callbacks they make room for. */
static void flush_now(up_conn_t *c)
{
    c->flushing = true;
    enter(c);
    do {
        c->need_flush = false;
        h2_flush(c);
    } while (c->need_flush && !c->dead);
    c->flushing = false;
    leave(c);
}

static void conn_flush(up_conn_t *c)
{
    if (c->dead || !c->connected)
        return;
    if (c->pool->proto == MG_UP_H1) {
        h1_pump(c);
        return;
    }
    if (c->in_recv || c->flushing) {
        c->need_flush = true;
        return;
    }
    if (mg_outq_defer(&c->outq)) /* once, at the end of the turn (conn_prepare) */
        return;
    flush_now(c);
}

static bool conn_prepare(void *arg)
{
    up_conn_t *c = arg;
    enter(c);
    if (!c->dead && !c->flushing)
        flush_now(c);
    bool alive = !c->dead;
    leave(c);
    return alive;
}

static void h2_recv(up_conn_t *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!c->settled && evbuffer_get_length(in) >= 5) {
        char first[5];
        evbuffer_copyout(in, first, 5);
        if (mg_h2_answered_in_h1(first, sizeof(first))) {
            unsigned long skipped;
            if (mg_log_limit_pass(&c->pool->log_limit, &skipped))
                MG_LOG(MG_LOG_WARN, "upstream",
                       "pod %s " MG_H2_ANSWERED_IN_H1 " (%lu similar suppressed)", c->pool->key,
                       skipped);
            conn_close(c, MG_UP_PROTO);
            return;
        }
    }
    c->in_recv = true;
    int rv = mg_h2_recv(c->h2, in, &c->dead, NULL, NULL);
    c->in_recv = false;
    if (rv != 0) {
        MG_LOG(MG_LOG_WARN, "upstream", "pod %s: HTTP/2 error: %s", c->pool->key,
               nghttp2_strerror(rv));
        conn_close(c, MG_UP_PROTO);
    }
}

#define SEED_EVERY 256 /* requests per connection between two indexed MG_HPACK_UNIQUE fields */

/* The HPACK table the encoder uses on |c|: what the pod offers, up to UP_HPACK_TABLE_MAX. */
static size_t table_size(const up_conn_t *c)
{
    uint32_t offered =
        nghttp2_session_get_remote_settings(c->h2, NGHTTP2_SETTINGS_HEADER_TABLE_SIZE);
    return offered < UP_HPACK_TABLE_MAX ? offered : UP_HPACK_TABLE_MAX;
}

/* What a request without a host (HTTP/1.0 lets clients send none) names as the pod's authority:
 * the pod's own "host:port", as nghttpx does. HTTP/2 pods refuse a request without :authority
 * or Host (RFC 9113 8.3.1, nghttp2 and h2 enforce it), and HTTP/1.1 ones may refuse an empty
 * Host. */
static const char *pod_authority(const up_conn_t *c, const mg_up_req_t *r)
{
    return r->authority[0] != '\0' ? r->authority : c->pool->key;
}

/* The fields are copied into the stream's arena, which lives until nghttp2 closes the stream:
 * the request's own (the client's stream, the exchange) may go first, with the HEADERS still
 * queued (a connection still connecting, a client reset); nghttp2 then copies nothing. */
static mg_err_t h2_submit(up_conn_t *c, mg_up_stream_t *s, const mg_up_req_t *r)
{
    nghttp2_nv *nv = mg_arena_alloc(&s->arena, sizeof(nghttp2_nv) * (r->nhdrs + 4));
    if (nv == NULL)
        return MG_E_NOMEM;
    mg_arena_t *a = &s->arena;
    const char *authority = pod_authority(c, r);
    bool ok = mg_nv_copy(a, &nv[0], ":method", 7, r->method, strlen(r->method), false) &&
              mg_nv_copy(a, &nv[1], ":scheme", 7, r->scheme, strlen(r->scheme), false) &&
              mg_nv_copy(a, &nv[2], ":authority", 10, authority, strlen(authority),
                         r->authority_hpack == MG_HPACK_SENSITIVE) &&
              mg_nv_copy(a, &nv[3], ":path", 5, r->path, strlen(r->path),
                         r->path_hpack == MG_HPACK_SENSITIVE);
    /* An MG_HPACK_UNIQUE field carries a value unique per request (the request id, features
     * on their first request): indexed, it would only push the fields that repeat out of the pod's
     * HPACK table. Its name repeats though, and nghttp2 finds a name in the table for never-indexed
     * fields too: one request in SEED_EVERY sends such fields indexed (those whose entry takes
     * at most a quarter of the table), and the others then send each name as a table index
     * instead of a literal the pod Huffman-decodes. An MG_HPACK_REPEAT field (features that went
     * out before) is indexed when its entry takes at most a quarter of the table: a larger one
     * would empty it of the fields that repeat. A field its sender marked never-indexed
     * (MG_HPACK_SENSITIVE) is never indexed. */
    size_t quarter = table_size(c) / 4;
    bool seed = (c->nsubmitted++ % SEED_EVERY) == 0;
    size_t n = 4;
    for (size_t i = 0; ok && i < r->nhdrs; i++, n++) {
        const mg_hdr_t *h = &r->hdrs[i];
        bool small = h->name_len + h->value_len + 32 <= quarter;
        bool never_index = h->hpack == MG_HPACK_SENSITIVE ||
                           (h->hpack == MG_HPACK_UNIQUE && !(seed && small)) ||
                           (h->hpack == MG_HPACK_REPEAT && !small);
        ok = mg_nv_copy(a, &nv[n], h->name, h->name_len, h->value, h->value_len, never_index);
    }
    if (!ok)
        return MG_E_NOMEM;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = h2_read_body};
    int32_t id = nghttp2_submit_request(c->h2, NULL, nv, n, r->has_body ? &prd : NULL, s);
    if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
        /* 2^30 requests on this connection: it takes no more (as after a GOAWAY) and closes
         * once idle; the caller opens another */
        c->goaway = true;
        return MG_E_AGAIN;
    }
    if (id < 0)
        return MG_E_PROTO;
    s->id = id;
    if (!r->has_body)
        s->body_ended = s->req_sent_all = true;
    return MG_OK;
}

/* ---------- HTTP/1.1 client ---------- */

static mg_up_stream_t *h1_cur(up_conn_t *c)
{
    return c->streams;
}

/* Says why the parse fails (for h1_recv's log line); the caller then returns -1. */
static void h1_why(llhttp_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void h1_why(llhttp_t *p, const char *fmt, ...)
{
    up_conn_t *c = p->data;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->h1_why, sizeof(c->h1_why), fmt, ap);
    va_end(ap);
}

/* Whether |len| more bytes of a field fit the 64 KiB scratch (one field's name and value). */
static bool h1_field_fits(llhttp_t *p, const mg_up_stream_t *s, size_t len)
{
    if (s->h1_fld_len + s->h1_val_len + len <= 65536)
        return true;
    h1_why(p, "a response field over 64 KiB");
    return false;
}

static int h1_on_field(llhttp_t *p, const char *at, size_t len)
{
    mg_up_stream_t *s = h1_cur(p->data);
    if (s == NULL || !h1_field_fits(p, s, len))
        return -1;
    memcpy(s->h1_scratch + s->h1_fld_len, at, len);
    s->h1_fld_len += len;
    return 0;
}

static int h1_on_value(llhttp_t *p, const char *at, size_t len)
{
    mg_up_stream_t *s = h1_cur(p->data);
    if (s == NULL || !h1_field_fits(p, s, len))
        return -1;
    memcpy(s->h1_scratch + s->h1_fld_len + s->h1_val_len, at, len);
    s->h1_val_len += len;
    return 0;
}

static int h1_on_value_complete(llhttp_t *p)
{
    mg_up_stream_t *s = h1_cur(p->data);
    if (s == NULL)
        return -1;
    const char *name = s->h1_scratch, *value = s->h1_scratch + s->h1_fld_len;
    size_t vlen = s->h1_val_len;
    mg_field_trim(&value, &vlen);
    if (s->h1_fld_len == 0) { /* ": v", which llhttp takes: not a field, never passed on */
        h1_why(p, "header field without a name");
        return -1;
    }
    if (!s->headers_done && s->h1_fld_len == 17 &&
        strncasecmp(name, "transfer-encoding", 17) == 0 && !mg_field_is_chunked(value, vlen)) {
        /* gzip and the like: the body would reach clients still coded, as if it were not */
        h1_why(p, "transfer coding other than chunked");
        return -1;
    }
    bool ok = push_hdr(s, s->headers_done, name, s->h1_fld_len, value, vlen, false);
    s->h1_fld_len = s->h1_val_len = 0;
    if (ok)
        return 0;
    fields_overflow(s, s->headers_done);
    h1_why(p, s->headers_done ? "trailers with " OVERFLOW_WHY : "head with " OVERFLOW_WHY);
    return -1; /* h1_recv closes the connection */
}

static int h1_on_headers_complete(llhttp_t *p)
{
    up_conn_t *c = p->data;
    mg_up_stream_t *s = h1_cur(c);
    if (s == NULL)
        return -1;
    if (!valid_status(p->status_code)) {
        h1_why(p, "status code %d outside 100-599", (int)p->status_code);
        return -1; /* h1_recv closes the connection: the pod broke the protocol */
    }
    if (p->status_code == 101) { /* the gateway never asks for an upgrade (it drops Upgrade) */
        h1_why(p, "101 Switching Protocols to a request that asked for no upgrade");
        return -1;
    }
    s->status = p->status_code;
    if (s->status >= 100 && s->status < 200) {
        s->skip_1xx = true; /* its message end is not the exchange's */
        deliver_interim(s);
        /* it has no content (RFC 9110 15.2), whatever framing fields it carries: the final
         * response starts right after its head (llhttp would read a body for it) */
        return 1;
    }
    /* A 204 with Transfer-Encoding or a non-zero Content-Length, or a 304 with
     * Transfer-Encoding (RFC 9112 6.1, RFC 9110 8.6), comes from a pod that frames wrongly: the
     * body it meant may still come, in a later segment, and must not be read as the answer to
     * the next request on the connection */
    s->misframed = (s->status == 204 || s->status == 304) &&
                   ((p->flags & F_TRANSFER_ENCODING) ||
                    (s->status == 204 && (p->flags & F_CONTENT_LENGTH) && p->content_length > 0));
    unsigned long skipped;
    if (s->misframed && mg_log_limit_pass(&c->pool->head_log_limit, &skipped))
        MG_LOG(MG_LOG_WARN, "upstream",
               "pod %s: %d with %s: its connection is closed after it, not reused (%lu similar "
               "suppressed)",
               c->pool->key, s->status,
               (p->flags & F_TRANSFER_ENCODING) ? "Transfer-Encoding" : "a Content-Length",
               skipped);
    deliver_headers(s, false);
    return s->head || s->status == 204 || s->status == 304 ? 1 : 0;
}

static int h1_on_body(llhttp_t *p, const char *at, size_t len)
{
    up_conn_t *c = p->data;
    mg_up_stream_t *s = h1_cur(c);
    if (s == NULL || s->cancelled || s->done)
        return 0;
    s->unconsumed += len;
    s->cbs->on_data(s->ctx, (const uint8_t *)at, len);
    if (!c->dead && s->unconsumed > MG_SRV_HIGH && !c->read_off) {
        c->read_off = true;
        mg_outq_disable(&c->outq, c->bev, EV_READ);
    }
    return 0;
}

/* A pod's chunk extensions are bounded as a client's are (h2server.c): they count toward no
 * limit, and the gateway drops them. */
static int h1_on_chunk_ext(llhttp_t *p, const char *at, size_t len)
{
    up_conn_t *c = p->data;
    (void)at;
    c->h1_ext_bytes += len;
    if (c->h1_ext_bytes <= MG_H1_MAX_CHUNK_EXT)
        return 0;
    h1_why(p, "chunk extensions over %d bytes in one chunk", MG_H1_MAX_CHUNK_EXT);
    return -1;
}

static int h1_on_chunk_header(llhttp_t *p)
{
    ((up_conn_t *)p->data)->h1_ext_bytes = 0;
    return 0;
}

static int h1_on_message_complete(llhttp_t *p)
{
    up_conn_t *c = p->data;
    mg_up_stream_t *s = h1_cur(c);
    if (s == NULL)
        return -1;
    if (s->skip_1xx) {
        s->skip_1xx = false;
        return HPE_PAUSED; /* h1_recv resets the parser: the final response starts afresh */
    }
    /* a request the pod did not get whole (answered early) leaves the connection
     * mid-message: the rest would be read as the next request */
    bool reusable = llhttp_should_keep_alive(p) && s->req_sent_all && !s->misframed;
    if (c->read_off) { /* paused for this exchange's consumer, which is done with it now */
        c->read_off = false;
        mg_outq_enable(&c->outq, c->bev, EV_READ);
    }
    deliver_end(s);
    stream_unlink(c, s);
    stream_release(c->pool->u, s);
    if (!reusable)
        conn_close(c, MG_UP_RESET);
    else
        conn_unused(c);
    return HPE_PAUSED; /* one exchange per call; the rest of the input is garbage or nothing */
}

static void h1_recv(up_conn_t *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    c->in_recv = true;
    /* read_off: the consumer is full; what is buffered waits too (mg_up_consume resumes) */
    while (evbuffer_get_length(in) > 0 && !c->dead && !c->read_off) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (c->streams == NULL) { /* bytes with no request: the pod broke the protocol */
            c->in_recv = false;
            conn_close(c, MG_UP_PROTO);
            return;
        }
        llhttp_errno_t err = llhttp_execute(&c->parser, v.iov_base, v.iov_len);
        if (err == HPE_OK) {
            evbuffer_drain(in, v.iov_len);
            continue;
        }
        if (err == HPE_PAUSED) { /* a message ended (h1_on_message_complete) */
            evbuffer_drain(in, (size_t)(llhttp_get_error_pos(&c->parser) - (char *)v.iov_base));
            /* the next one starts from a clean state: after a 1xx that said "Connection: close"
             * (or came as HTTP/1.0), resuming would leave llhttp in its closed state, which
             * swallows the final response; after a final response on a kept connection the
             * two are the same */
            llhttp_reset(&c->parser);
            continue;
        }
        MG_LOG(MG_LOG_WARN, "upstream", "pod %s: bad HTTP/1.1 response: %s", c->pool->key,
               c->h1_why[0] ? c->h1_why : llhttp_get_error_reason(&c->parser));
        c->in_recv = false;
        conn_close(c, MG_UP_PROTO);
        return;
    }
    c->in_recv = false;
}

/* Moves request body bytes into the socket while it has room. */
static void h1_pump(up_conn_t *c)
{
    mg_up_stream_t *s = h1_cur(c);
    if (s == NULL || c->dead || !c->connected || s->cancelled)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t room = evbuffer_get_length(out) < OUT_HIGH ? OUT_HIGH - evbuffer_get_length(out) : 0;
    size_t avail = evbuffer_get_length(s->body);
    size_t n = avail < room ? avail : room;
    if (n > 0) {
        if (s->h1_chunked)
            evbuffer_add_printf(out, "%zx\r\n", n);
        evbuffer_remove_buffer(s->body, out, n);
        if (s->h1_chunked)
            evbuffer_add(out, "\r\n", 2);
        s->sent = true;
    }
    if (s->body_ended && evbuffer_get_length(s->body) == 0 && s->h1_chunked) {
        evbuffer_add(out, "0\r\n", 3);
        for (size_t i = 0; i < s->nreq_trailers; i++) {
            evbuffer_add(out, s->req_trailers[i].name, s->req_trailers[i].namelen);
            evbuffer_add(out, ": ", 2);
            evbuffer_add(out, s->req_trailers[i].value, s->req_trailers[i].valuelen);
            evbuffer_add(out, "\r\n", 2);
        }
        evbuffer_add(out, "\r\n", 2);
        s->h1_chunked = false; /* terminator written once */
    }
    if (s->body_ended && evbuffer_get_length(s->body) == 0 && !s->h1_chunked)
        s->req_sent_all = true;
    if (s->want_drain && evbuffer_get_length(s->body) < MG_SRV_LOW) {
        s->want_drain = false;
        if (!s->done)
            s->cbs->on_drain(s->ctx);
    }
}

static mg_err_t h1_submit(up_conn_t *c, mg_up_stream_t *s, const mg_up_req_t *r)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    s->h1_scratch = mg_arena_alloc(&s->arena, 65536);
    if (s->h1_scratch == NULL)
        return MG_E_NOMEM;
    evbuffer_add_printf(out, "%s %s HTTP/1.1\r\nhost: %s\r\n", r->method, r->path,
                        pod_authority(c, r));
    /* Trailers go only in a chunked body: a request that announces them (a Trailer field, RFC
     * 9110 6.6.2) is sent chunked, without its content-length, or they would be dropped */
    bool announced = false, has_cl = false;
    for (size_t i = 0; i < r->nhdrs && r->has_body; i++) {
        const mg_hdr_t *h = &r->hdrs[i];
        announced |= h->name_len == 7 && memcmp(h->name, "trailer", 7) == 0;
        has_cl |= h->name_len == 14 && memcmp(h->name, "content-length", 14) == 0;
    }
    has_cl &= !announced;
    bool cookie_done = false;
    for (size_t i = 0; i < r->nhdrs; i++) {
        const mg_hdr_t *h = &r->hdrs[i];
        if (h->name_len == 2 && memcmp(h->name, "te", 2) == 0)
            continue; /* "te: trailers" means nothing to an HTTP/1.1 pod */
        if (announced && h->name_len == 14 && memcmp(h->name, "content-length", 14) == 0)
            continue;
        if (h->name_len == 6 && memcmp(h->name, "cookie", 6) == 0) {
            if (cookie_done)
                continue;
            /* HTTP/2 may split cookies into many fields; HTTP/1.1 wants one (RFC 9113 8.2.3) */
            cookie_done = true;
            evbuffer_add(out, "cookie: ", 8);
            const char *sep = "";
            for (size_t k = i; k < r->nhdrs; k++) {
                if (r->hdrs[k].name_len == 6 && memcmp(r->hdrs[k].name, "cookie", 6) == 0) {
                    evbuffer_add(out, sep, strlen(sep));
                    evbuffer_add(out, r->hdrs[k].value, r->hdrs[k].value_len);
                    sep = "; ";
                }
            }
            evbuffer_add(out, "\r\n", 2);
            continue;
        }
        evbuffer_add(out, h->name, h->name_len);
        evbuffer_add(out, ": ", 2);
        evbuffer_add(out, h->value, h->value_len);
        evbuffer_add(out, "\r\n", 2);
    }
    if (r->has_body && !has_cl) {
        if (r->content_length >= 0 && !announced) {
            evbuffer_add_printf(out, "content-length: %lld\r\n", (long long)r->content_length);
        } else {
            evbuffer_add(out, "transfer-encoding: chunked\r\n", 28);
            s->h1_chunked = true;
        }
    }
    evbuffer_add(out, "\r\n", 2);
    if (!r->has_body)
        s->body_ended = s->req_sent_all = true;
    llhttp_init(&c->parser, HTTP_RESPONSE, &c->pool->u->h1settings);
    c->parser.data = c;
    return MG_OK;
}

/* ---------- I/O callbacks ---------- */

static void on_read(struct bufferevent *bev, void *arg)
{
    up_conn_t *c = arg;
    enter(c);
    if (c->pool->proto == MG_UP_H2C) {
        h2_recv(c);
        conn_flush(c);
    } else if (!c->idle) {
        h1_recv(c);
    } else {
        conn_close(c, MG_UP_RESET); /* an idle HTTP/1.1 connection has nothing to say */
    }
    leave(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    up_conn_t *c = arg;
    enter(c);
    conn_flush(c);
    if (!c->dead)
        mg_outq_bev_written(&c->outq);
    leave(c);
}

static void on_event(struct bufferevent *bev, short events, void *arg)
{
    up_conn_t *c = arg;
    enter(c);
    if (events & BEV_EVENT_CONNECTED) {
        c->connected = true;
        if (handshaken(c)) /* else the connect deadline goes on until the pod's SETTINGS */
            evtimer_del(c->timer);
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* from now on the queue writes and its reader reads (the bufferevent read until now) */
        if (mg_outq_attach(c->pool->u->outq, &c->outq, bev, on_write, c))
            mg_outq_set_prepare(&c->outq, conn_prepare);
        conn_flush(c);
    } else if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (!c->connected) {
            int e = EVUTIL_SOCKET_ERROR();
            unsigned long skipped;
            if (mg_log_limit_pass(&c->pool->log_limit, &skipped))
                MG_LOG(MG_LOG_WARN, "upstream",
                       "pod %s: cannot connect (%s); is the pod running? (%lu similar suppressed)",
                       c->pool->key, evutil_socket_error_to_string(e), skipped);
            conn_close(c, MG_UP_CONNECT_REFUSED);
        } else if (!handshaken(c)) { /* closed before its SETTINGS: it never took a request */
            conn_close(c, MG_UP_CONNECT_REFUSED);
        } else {
            if (c->pool->proto == MG_UP_H1 && (events & BEV_EVENT_EOF) && c->streams &&
                llhttp_message_needs_eof(&c->parser)) {
                llhttp_finish(&c->parser); /* close-delimited body ends here */
            }
            conn_close(c, MG_UP_RESET);
        }
    }
    leave(c);
}

/* ---------- pools ---------- */

static uint32_t hash_key(const char *s, mg_upstream_proto_t proto)
{
    uint32_t h = 2166136261u ^ (uint32_t)proto;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void on_kick(evutil_socket_t fd, short what, void *arg);

static void reap_later(mg_upstreams_t *u)
{
    static const struct timeval tv = {REAP_MS / 1000, (REAP_MS % 1000) * 1000};
    if (u->reap && !evtimer_pending(u->reap, NULL))
        evtimer_add(u->reap, &tv);
}

static pool_t *pool_get(mg_upstreams_t *u, const mg_pod_t *pod, mg_upstream_proto_t proto)
{
    uint32_t b = hash_key(pod->name, proto) % NBUCKETS;
    for (pool_t *p = u->buckets[b]; p; p = p->next)
        if (p->proto == proto && p->addrlen == pod->addrlen &&
            memcmp(&p->addr, &pod->addr, pod->addrlen) == 0 && strcmp(p->key, pod->name) == 0)
            return p;
    pool_t *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->key = strdup(pod->name)) == NULL ||
        (p->kick = event_new(u->base, -1, 0, on_kick, p)) == NULL) {
        if (p)
            free(p->key);
        free(p);
        return NULL;
    }
    p->u = u;
    p->bucket = b;
    p->proto = proto;
    p->state = pod->state; /* ours until pool_free: the caller's snapshot holds it now */
    if (p->state) {
        mg_podstate_ref(p->state);
        reap_later(u); /* its pod may be retired already (a request of an old snapshot) */
    }
    p->addr = pod->addr;
    p->addrlen = pod->addrlen;
    p->next = u->buckets[b];
    u->buckets[b] = p;
    u->npools++;
    return p;
}

/* Unlinks |p| (no connection, nothing queued) and frees it with its reference to the state. */
static void pool_free(pool_t *p)
{
    mg_upstreams_t *u = p->u;
    pool_t **pp = &u->buckets[p->bucket];
    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    u->npools--;
    if (p->kick)
        event_free(p->kick);
    mg_podstate_unref(p->state);
    free(p->key);
    free(p);
}

/* Frees the pools of pods the routing retired, after closing their connections that carry no
 * stream (the idle timer would keep them for idle_conn_ms; only a retry routed by an old
 * snapshot could still want them). Runs again while such a pool still has streams or queued
 * requests. */
static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    mg_upstreams_t *u = arg;
    (void)fd, (void)what;
    bool again = false;
    for (int b = 0; b < NBUCKETS; b++)
        for (pool_t *p = u->buckets[b], *next; p; p = next) {
            next = p->next;
            if (p->state == NULL || !mg_podstate_is_retired(p->state))
                continue;
            if (p->qhead) { /* its connections are the queue's: kept, and fail it when closed */
                again = true;
                continue;
            }
            for (up_conn_t *c = p->conns, *cn; c; c = cn) {
                cn = c->next;
                if (!c->dead && c->busy == 0 && c->nstreams == 0)
                    conn_close(c, MG_UP_RESET); /* frees it: nothing uses it */
            }
            if (p->conns == NULL)
                pool_free(p);
            else
                again = true;
        }
    if (again)
        reap_later(u);
}

/* Adds one to the shared gauge |g| and returns true, unless it is at |max| (0 = no limit). */
static bool gauge_take(atomic_uint *g, uint32_t max)
{
    unsigned n = atomic_load_explicit(g, memory_order_relaxed);
    do {
        if (max && n >= max)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(g, &n, n + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    return true;
}

/* Takes a place for one more connection of |p| in the pod's gauge (every worker's connections)
 * and returns true, or returns false when max_conns_per_pod is reached. |live|: connections of
 * |p| that can still take requests; with none, one is opened over the cap (Envoy's rule), else
 * this worker's waiting requests could wait for ever on connections other workers hold. */
static bool conn_slot_take(pool_t *p, size_t live)
{
    uint32_t cap = p->u->conf.max_conns_per_pod;
    if (p->state == NULL) /* no shared state (tests): this worker's count */
        return cap == 0 || p->nconns < cap || live == 0;
    return gauge_take(&p->state->conns, live > 0 ? cap : 0);
}

/* Opens a connection; its place in the pod's gauge was taken (conn_slot_take), and conn_free
 * gives it back. */
static up_conn_t *conn_new(pool_t *p)
{
    mg_upstreams_t *u = p->u;
    up_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        if (p->state)
            atomic_fetch_sub_explicit(&p->state->conns, 1, memory_order_relaxed);
        return NULL;
    }
    c->pool = p;
    c->bev = bufferevent_socket_new(u->base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(u->base, on_timer, c);
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->nconns++;
    u->nconns++;
    if (c->bev == NULL || c->timer == NULL) {
        c->dead = true;
        conn_free(c);
        return NULL;
    }
    if (p->proto == MG_UP_H2C) {
        if (nghttp2_session_client_new3(&c->h2, u->cbs, c, u->opt, &u->mem) != 0) {
            c->dead = true;
            conn_free(c);
            return NULL;
        }
        /* The stream window bounds what a pod may send ahead for a client slower than it:
         * that is held in memory until the client takes it (with the client side's own
         * buffer, see MG_SRV_HIGH and connection_buffer). */
        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, u->conf.stream_window},
            {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
        };
        nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 3);
        nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)u->conf.connection_window);
    }
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
    mg_outq_enable(&c->outq, c->bev, EV_READ | EV_WRITE);
    timer_arm(c, u->conf.connect_timeout_ms);
    /* refusals are normally reported later through on_event; a synchronous failure (no socket)
     * may already have run on_event, and then the caller tries another pod */
    enter(c);
    int rc = bufferevent_socket_connect(c->bev, (struct sockaddr *)&p->addr, (int)p->addrlen);
    if (rc != 0 && !c->dead)
        conn_close(c, MG_UP_CONNECT_REFUSED);
    bool dead = c->dead;
    leave(c);
    return dead ? NULL : c;
}

/* A connection of |p| that takes a new stream now, else a new one if the pool may open it.
 * NULL with *at_cap set: max_conns_per_pod is reached, or the pod allows no stream at all on a
 * connection it has (SETTINGS_MAX_CONCURRENT_STREAMS 0: overloaded, or on its way out, and a
 * new connection would get the same answer), or an h2c connection waits for the pod's
 * SETTINGS (one just opened for this request, too), and the request must wait; NULL alone:
 * out of memory, or the connect failed at once. */
static up_conn_t *pick_conn(pool_t *p, bool *at_cap)
{
    uint32_t max = p->u->conf.max_streams_per_conn;
    size_t live = 0;
    bool none = false;      /* a connection of the pod's takes no stream at all */
    bool unsettled = false; /* one waits for the pod's SETTINGS */
    *at_cap = false;
    for (up_conn_t *c = p->conns; c; c = c->next) {
        if (c->dead || c->goaway)
            continue;
        live++;
        if (p->proto == MG_UP_H1) {
            if (c->idle)
                return c;
            continue;
        }
        /* Nothing goes out on a connection before the pod's SETTINGS (a round trip, once per
         * connection): a pod that accepts and then says nothing (stopped, hung) has been sent
         * nothing, so at the connect deadline the requests waiting for it go to other pods
         * (fail_queue). Sent, they could only have failed: the pod might process them later. */
        if (!c->settled) {
            unsettled = true;
            continue;
        }
        uint32_t remote =
            nghttp2_session_get_remote_settings(c->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (c->nstreams < max && c->nstreams < remote)
            return c;
        none |= remote == 0;
    }
    if (none || unsettled || !conn_slot_take(p, live)) {
        *at_cap = true;
        return NULL;
    }
    up_conn_t *c = conn_new(p);
    if (c != NULL && p->proto == MG_UP_H2C)
        *at_cap = true, c = NULL; /* the request waits in the queue for its SETTINGS */
    return c;
}

/* ---------- the pool's queue: requests waiting for a connection ---------- */

static void pool_kick(pool_t *p)
{
    if (p->qhead && p->kick)
        event_active(p->kick, EV_TIMEOUT, 0);
}

/* Appends |s| to the queue of |p|; false when max_pending_per_pod requests wait already. */
static bool queue_push(pool_t *p, mg_up_stream_t *s, const mg_up_req_t *req)
{
    uint32_t max = p->u->conf.max_pending_per_pod;
    if (p->state ? !gauge_take(&p->state->queued, max) : max && p->nqueued >= max)
        return false;
    s->queued = p;
    s->req = req;
    s->qnext = NULL;
    s->qprev = p->qtail;
    if (p->qtail)
        p->qtail->qnext = s;
    else
        p->qhead = s;
    p->qtail = s;
    p->nqueued++;
    return true;
}

static void queue_unlink(mg_up_stream_t *s)
{
    pool_t *p = s->queued;
    if (s->qprev)
        s->qprev->qnext = s->qnext;
    else
        p->qhead = s->qnext;
    if (s->qnext)
        s->qnext->qprev = s->qprev;
    else
        p->qtail = s->qprev;
    p->nqueued--;
    if (p->state)
        atomic_fetch_sub_explicit(&p->state->queued, 1, memory_order_relaxed);
    s->queued = NULL;
    s->req = NULL;
    s->qnext = s->qprev = NULL;
}

/*
 * Puts |s| (cbs, ctx, body and head set) on a connection of |p| and submits |req|; a queued
 * |s| leaves the queue. Returns MG_OK, or MG_E_AGAIN when it must wait (max_conns_per_pod),
 * MG_E_NOMEM when it cannot go (no memory, or the connect failed at once); then |s| is as it
 * was, and its arena may hold a copy of the head (cleared with the stream).
 */
static mg_err_t stream_attach(pool_t *p, mg_up_stream_t *s, const mg_up_req_t *req)
{
    mg_upstreams_t *u = p->u;
    for (;;) {
        bool at_cap;
        up_conn_t *c = pick_conn(p, &at_cap);
        if (c == NULL)
            return at_cap ? MG_E_AGAIN : MG_E_NOMEM;
        if (c->idle) {
            c->idle = false;
            p->nidle--;
        }
        if (c->connected && handshaken(c))
            evtimer_del(c->timer); /* the idle timer */
        else if (!evtimer_pending(c->timer, NULL))
            timer_arm(c, u->conf.connect_timeout_ms); /* the connect (or handshake) deadline */
        s->c = c;
        s->prev = NULL;
        s->next = c->streams;
        if (c->streams)
            c->streams->prev = s;
        c->streams = s;
        c->nstreams++;
        mg_err_t err = p->proto == MG_UP_H2C ? h2_submit(c, s, req) : h1_submit(c, s, req);
        if (err != MG_OK) {
            stream_unlink(c, s);
            s->c = NULL;
            s->next = s->prev = NULL;
            conn_unused(c);
            if (err == MG_E_AGAIN) /* that connection's stream ids are used up: skipped now */
                continue;
            return MG_E_NOMEM;
        }
        if (s->queued) { /* before the flush: its callbacks may cancel |s| */
            s->dequeued_us = mg_mono_us();
            queue_unlink(s);
        }
        enter(c);
        conn_flush(c);
        leave(c);
        return MG_OK;
    }
}

#define KICK_BATCH 64 /* queued requests started per loop turn, at most */

/* A connection or a stream slot of |p| may be free: starts waiting requests, oldest first,
 * until the pool is at its cap again. */
static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    pool_t *p = arg;
    (void)fd;
    (void)what;
    for (unsigned n = 0; p->qhead; n++) {
        if (n == KICK_BATCH) {
            event_active(p->kick, EV_TIMEOUT, 0); /* the rest at the next turn */
            return;
        }
        mg_up_stream_t *s = p->qhead;
        mg_err_t err = stream_attach(p, s, s->req);
        if (err == MG_E_AGAIN)
            return; /* at the cap again: the next freed connection or slot kicks */
        if (err != MG_OK) {
            /* nothing was sent: the caller may try another pod */
            queue_unlink(s);
            fail_stream(s, MG_UP_CONNECT_REFUSED, false);
            stream_release(p->u, s);
        }
    }
}

/* Fails every request waiting in |p|'s queue (none was sent: each may try another pod). The
 * queue is taken whole first: a caller's retry may queue on this pod again. */
static void fail_queue(pool_t *p, mg_up_fail_t why)
{
    mg_up_stream_t *waiting = NULL, **tail = &waiting;
    while (p->qhead) {
        mg_up_stream_t *s = p->qhead;
        queue_unlink(s);
        *tail = s;
        tail = &s->qnext;
    }
    while (waiting) {
        mg_up_stream_t *s = waiting;
        waiting = s->qnext;
        s->qnext = NULL;
        fail_stream(s, why, false);
        stream_release(p->u, s);
    }
}

mg_up_stream_t *mg_up_start(mg_upstreams_t *u, const mg_pod_t *pod, mg_upstream_proto_t proto,
                            const mg_up_req_t *req, const mg_up_cbs_t *cbs, void *ctx,
                            mg_err_t *err)
{
    *err = MG_E_NOMEM;
    pool_t *p = pool_get(u, pod, proto);
    if (p == NULL)
        return NULL;
    mg_up_stream_t *s = stream_alloc(u);
    if (s == NULL)
        return NULL;
    s->cbs = cbs;
    s->ctx = ctx;
    s->body = req->body;
    s->head = strcmp(req->method, "HEAD") == 0;
    /* first come, first served: a new request never overtakes one already waiting */
    mg_err_t e = p->qhead ? MG_E_AGAIN : stream_attach(p, s, req);
    if (e == MG_E_AGAIN)
        e = queue_push(p, s, req) ? MG_OK : MG_E_LIMIT;
    if (e != MG_OK) {
        *err = e;
        stream_release(u, s);
        return NULL;
    }
    *err = MG_OK;
    return s;
}

void mg_up_body_more(mg_up_stream_t *s)
{
    up_conn_t *c = s->c;
    if (evbuffer_get_length(s->body) >= MG_SRV_HIGH)
        s->want_drain = true;
    if (c == NULL)
        return; /* queued: the body waits in |body| until a connection takes it */
    enter(c);
    if (s->deferred && c->h2) {
        s->deferred = false;
        nghttp2_session_resume_data(c->h2, s->id);
    }
    conn_flush(c);
    leave(c);
}

void mg_up_body_end(mg_up_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    if (n) {
        s->req_trailers = mg_nv_copy_hdrs(&s->arena, trailers, n);
        s->nreq_trailers = s->req_trailers ? n : 0;
    }
    s->body_ended = true;
    mg_up_body_more(s);
}

void mg_up_consume(mg_up_stream_t *s, size_t n)
{
    up_conn_t *c = s->c;
    if (n > s->unconsumed)
        n = s->unconsumed;
    if (n == 0 || c == NULL)
        return;
    s->unconsumed -= n;
    enter(c);
    if (c->h2) {
        nghttp2_session_consume_stream(c->h2, s->id, n); /* the connection's: h2_on_data */
        conn_flush(c);
    } else if (c->read_off && s->unconsumed < MG_SRV_LOW) {
        c->read_off = false;
        mg_outq_enable(&c->outq, c->bev, EV_READ);
        if (!c->in_recv && evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
            h1_recv(c);
    }
    leave(c);
}

void mg_up_cancel(mg_up_stream_t *s)
{
    up_conn_t *c = s->c;
    if (s->queued) { /* still waiting for a connection: it never leaves */
        mg_upstreams_t *u = s->queued->u;
        queue_unlink(s);
        stream_release(u, s);
        return;
    }
    if (s->cancelled)
        return;
    bool was_done = s->done;
    s->cancelled = true;
    enter(c);
    if (c->h2) {
        if (!c->dead) {
            /* No user data yet: the HEADERS still wait in nghttp2's queue (the connection is
             * connecting, or the pod's MAX_CONCURRENT_STREAMS is reached). RST_STREAM then
             * cancels them there, and the pod never sees the request; the stream closes
             * (h2_on_stream_close) when nghttp2 reaches it. */
            void *ud = s->id > 0 ? nghttp2_session_get_stream_user_data(c->h2, s->id) : NULL;
            if (s->id > 0 && (ud == s || ud == NULL))
                nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            conn_flush(c);
        }
    } else if (!was_done || h1_cur(c) == s) {
        conn_close(c, MG_UP_RESET); /* HTTP/1.1 cannot abandon an exchange and keep the conn */
    }
    leave(c);
}

bool mg_up_is_queued(const mg_up_stream_t *s)
{
    return s->queued != NULL;
}

bool mg_up_queued_for_setup(const mg_up_stream_t *s)
{
    if (s->queued == NULL)
        return false;
    for (const up_conn_t *c = s->queued->conns; c; c = c->next)
        if (!c->dead && !c->goaway && (!c->connected || !handshaken(c)))
            return true;
    return false;
}

int64_t mg_up_dequeued_us(const mg_up_stream_t *s)
{
    return s->dequeued_us;
}

void mg_upstreams_trim(mg_upstreams_t *u)
{
    while (u->free_streams) {
        mg_up_stream_t *s = u->free_streams;
        u->free_streams = s->next;
        free(s);
    }
    u->nfree = 0;
}

size_t mg_upstreams_nconns(const mg_upstreams_t *u)
{
    return u->nconns;
}

size_t mg_upstreams_npools(const mg_upstreams_t *u)
{
    return u->npools;
}

void mg_upstreams_routes_changed(mg_upstreams_t *u)
{
    reap_later(u);
}

mg_upstreams_t *mg_upstreams_new(struct event_base *base, const mg_up_conf_t *conf)
{
    mg_upstreams_t *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->base = base;
    u->conf = *conf;
    if (u->conf.max_streams_per_conn == 0)
        u->conf.max_streams_per_conn = 100;
    /* max_conns_per_pod and max_pending_per_pod: 0 = unlimited, as given */
    if (u->conf.stream_window == 0)
        u->conf.stream_window = 256 << 10;
    if (u->conf.connection_window == 0)
        u->conf.connection_window = 16 << 20;
    u->small = mg_smalloc_new();
    u->mem = (nghttp2_mem){u->small, mem_get, mem_put, mem_zget, mem_reget};
    u->outq = mg_outq_new(base);
    u->reap = evtimer_new(base, on_reap, u);
    if (u->small == NULL || u->outq == NULL || u->reap == NULL ||
        nghttp2_session_callbacks_new(&u->cbs) != 0 || nghttp2_option_new(&u->opt) != 0) {
        mg_upstreams_free(u);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_header_callback2(u->cbs, h2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(u->cbs, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(u->cbs, h2_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(u->cbs, h2_on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(u->cbs, h2_on_invalid_frame);
    nghttp2_session_callbacks_set_error_callback2(u->cbs, h2_on_error);
    nghttp2_option_set_no_auto_window_update(u->opt, 1);
    nghttp2_option_set_no_closed_streams(u->opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(u->opt, 100);
    /* nghttp2's encoder uses at most 4 KiB of HPACK table whatever a pod offers: up to 64 KiB
     * of what a pod offers (modelgate-runtime offers 64 KiB) keeps more users' repeating
     * x-user-features indexed */
    nghttp2_option_set_max_deflate_dynamic_table_size(u->opt, UP_HPACK_TABLE_MAX);
    /* a request head the gateway took from its client goes out whole, even over 64 KiB (else
     * NGHTTP2_ERR_FRAME_SIZE_ERROR closes the stream before the pod sees it) */
    if (u->conf.max_header_block > 65536)
        nghttp2_option_set_max_send_header_block_length(u->opt, u->conf.max_header_block);
    llhttp_settings_init(&u->h1settings);
    u->h1settings.on_header_field = h1_on_field;
    u->h1settings.on_header_value = h1_on_value;
    u->h1settings.on_header_value_complete = h1_on_value_complete;
    u->h1settings.on_headers_complete = h1_on_headers_complete;
    u->h1settings.on_body = h1_on_body;
    u->h1settings.on_chunk_extension_name = h1_on_chunk_ext;
    u->h1settings.on_chunk_extension_value = h1_on_chunk_ext;
    u->h1settings.on_chunk_header = h1_on_chunk_header;
    u->h1settings.on_message_complete = h1_on_message_complete;
    return u;
}

void mg_upstreams_free(mg_upstreams_t *u)
{
    if (u == NULL)
        return;
    for (int b = 0; b < NBUCKETS; b++) {
        pool_t *p = u->buckets[b];
        while (p) {
            pool_t *next = p->next;
            while (p->qhead) {
                mg_up_stream_t *s = p->qhead;
                queue_unlink(s);
                stream_release(u, s);
            }
            event_free(p->kick);
            p->kick = NULL; /* conn_free kicks no more */
            while (p->conns) {
                up_conn_t *c = p->conns;
                for (mg_up_stream_t *s = c->streams; s; s = s->next)
                    s->cancelled = true;
                c->busy = 0;
                c->dead = true;
                conn_free(c);
            }
            mg_podstate_unref(p->state);
            free(p->key);
            free(p);
            p = next;
        }
    }
    if (u->reap)
        event_free(u->reap);
    mg_upstreams_trim(u);
    if (u->cbs)
        nghttp2_session_callbacks_del(u->cbs);
    if (u->opt)
        nghttp2_option_del(u->opt);
    mg_smalloc_free(u->small); /* after the sessions: they gave their blocks back */
    mg_outq_free(u->outq);     /* after the connections: they left it */
    free(u);
}
