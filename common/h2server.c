/*
 * common/h2server.c - HTTP/2 and HTTP/1.1 server sessions over libevent bufferevents.
 *
 * DESIGN
 * A connection starts in DETECT (cleartext: the first bytes are compared with the HTTP/2 client
 * preface) or in TLS handshake (ALPN decides). It then runs one of two engines:
 *  - HTTP/2: an nghttp2 server session fed with nghttp2_session_mem_recv and drained with
 *    nghttp2_session_mem_send into the bufferevent. Automatic WINDOW_UPDATEs are off: request
 *    body bytes are acknowledged only when the handler consumes them, which is what bounds
 *    memory when the upstream is slower than the client.
 *  - HTTP/1.1: llhttp. One request at a time: the parser pauses at the end of each message and
 *    resumes once its response is complete, so pipelined requests are answered in order.
 * Re-entrancy: handler calls (mg_srv_write, mg_srv_end...) may come from inside our own
 * callbacks or from another connection's. A connection is freed only when no call frame is
 * using it (|busy| == 0); nghttp2_session_mem_send is never called from inside mem_recv.
 */
#include "common/h2server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/outq.h"
#include "common/proxyproto.h"
#include "common/smalloc.h"

#define OUT_HIGH (64 * 1024) /* socket output above which HTTP/2 frames stop being produced */
#define OUT_LOW (16 * 1024)
#define MAX_LISTENERS 16

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN 24

typedef enum { P_DETECT, P_H2, P_H1 } conn_proto_t;

typedef struct conn conn_t;

struct mg_srv_stream {
    conn_t *c;
    int32_t id;
    void *data;
    const mg_srv_handler_t *h; /* the server's, or one set by mg_srv_set_handler */
    mg_srv_stream_t *next_in_conn, *prev_in_conn;
    mg_srv_stream_t *drain_next;
    mg_arena_t arena;

    mg_hdr_t *hdrs;
    size_t nhdrs, hdrs_cap;
    mg_hdr_t *trailers;
    size_t ntrailers, trailers_cap;
    /* field lines received in the head [0] and the trailers [1], pseudo-headers aside: those
     * the gateway takes itself (Host, Expect) or drops (a Host trailer) count too */
    size_t nfields[2];
    const char *method, *scheme, *authority, *path, *host;
    bool authority_sensitive, path_sensitive, host_sensitive; /* sent never-indexed */
    size_t hdr_bytes;
    int bad_status; /* 431 etc.: answered by us, never shown to the handler */
    bool handled;   /* the handler saw on_request: it gets on_close */
    bool dispatched; /* its head was whole and went to dispatch_request (answered there or not) */
    bool req_ended;
    bool head;      /* HEAD request: no response body */
    size_t unconsumed; /* body bytes handed over and credited to neither window */
    size_t kept;       /* ... credited to the stream's window, held by the handler (mg_srv_keep) */

    struct evbuffer *out; /* HTTP/2 response body queue */
    bool responded, out_ended, deferred, want_drain, in_drain_list;
    bool h1_chunked, h1_nobody;
    bool expect_100; /* Expect: 100-continue: said once the handler takes the request */
    bool continued;  /* HTTP/1.1: that 100 Continue was written */
    bool expect_unmet;  /* an Expect other than 100-continue: EXPECT_UNMET */
    uint8_t ninterim;   /* interim heads sent (mg_srv_interim), <= MG_SRV_MAX_INTERIM */
    bool reset_by_us;   /* HTTP/2: the handler reset it (mg_srv_reset): not a premature close */
    bool reset_counted; /* HTTP/2: counted by premature_close when its reset was decided */
    bool trailers_refused; /* HTTP/2: its trailers are over the limits (refuse_request) */
    const char *close_why; /* see mg_srv_close_why */
    uint64_t body_sent;    /* see mg_srv_body_sent */
    nghttp2_nv *resp_trailers;
    size_t nresp_trailers;
};

struct conn {
    mg_srv_t *srv;
    struct bufferevent *bev; /* what the connection reads and writes: TLS, the filter over |lower| */
    struct bufferevent *lower; /* TLS: the socket's bufferevent (the filter frees it), or NULL */
    conn_t *prev, *next;
    conn_proto_t proto;
    bool tls;
    int busy;
    size_t pinned; /* HTTP/2: request body bytes its streams hold from the window (conn_credit) */
    bool dead, in_recv, need_flush, flushing, close_when_flushed;
    mg_outq_item_t outq; /* frames produced and written at the end of the turn; EV_READ goes
                          * through it: mg_outq_enable/_disable */
    bool lingering;      /* closed by us, still reading what the client sends: see linger */
    size_t lingered;     /* bytes read and dropped while lingering */
    struct event *idle_timer;
    nghttp2_mem mem;  /* the session's allocator: ud = this connection */
    void *framebuf;   /* nghttp2's frame buffer (a zframe run), NULL until allocated */
    bool trim_due;    /* the idle timer is in its short first phase: trim, then wait */
    int64_t idle_at_us; /* when on_idle ends the idle period idle_arm began (monotonic); 0:
                         * never (client_idle 0). A trim scheduled within it keeps it. */
    bool trimmed;       /* the frame buffer is released since the last frame written */
    bool tls_used;      /* a TLS record read or written since the last tls_sweep */
    bool streamed;      /* a stream opened since the last tls_sweep */
    bool tls_freed;     /* OpenSSL's record buffers given back, and not used since */
    char client[64];
    char client_ip[48];
    uint8_t client_addr[16]; /* client_ip as bytes, IPv4 as IPv4-mapped IPv6 */
    mg_srv_stream_t *streams;
    size_t nstreams;
    size_t out_bytes; /* HTTP/2: response bytes queued in all streams' out (connection_buffer) */
    /* HTTP/2 */
    nghttp2_session *h2;
    mg_srv_stream_t *drain_list;
    mg_srv_stream_t *hdr_stream; /* the stream whose header block is being decoded */
    /* a request's header block has begun and not ended: the client may send nothing else until
     * it does (RFC 9113 6.10), so the idle timer runs, whatever other streams are open */
    bool head_open;
    bool head_armed; /* the idle timer runs for that head (armed once: trickling bytes of it
                      * must not push the deadline out) */
    uint32_t resets_left;        /* premature stream closes allowed now: see RESET_BURST */
    int64_t resets_at_s;         /* when resets_left was last refilled (monotonic seconds) */
    uint32_t empty_run;          /* DATA frames in a row that carried nothing: see EMPTY_MAX */
    uint8_t flood;               /* a FLOOD_*: cut once nghttp2 has the frames before it */
    uint64_t heads;              /* HEADERS frames read: see IDLE_PER_STREAM */
    uint64_t idle_frames;        /* PRIORITY and PING ACK frames read */
    uint64_t window_updates;     /* WINDOW_UPDATE frames read */
    uint64_t data_sent;          /* DATA frames sent */
    uint32_t scan_skip;          /* bytes of the preface or of a frame's payload to pass */
    uint8_t scan_hdr[10];        /* the frame header being read, and a DATA frame's pad length */
    uint8_t scan_have;           /* bytes of it read */
    bool recv_stop;              /* dead, or cut for abuse: mg_h2_recv reads no further */
    /* HTTP/1.1 */
    llhttp_t parser;
    mg_srv_stream_t *h1s;
    bool h1_wait;       /* parser paused after a message, waiting for its response */
    bool h1_close;      /* close after the current response */
    bool h1_discard;    /* answered before the request's body ended: dropping the rest of it */
    bool h1_headers_done;
    bool h1_read_off;
    bool h1_eof; /* the client ended its input (a half-close): see h1_half_closed */
    bool h1_err_too_large;
    bool h1_err_in_target;   /* ... while reading the request target: 414, not 431 */
    int h1_refused;          /* a request we refuse at its head: the status (see h1_refuse) */
    const char *h1_refused_code, *h1_refused_msg;
    char *h1_scratch; /* field and value being accumulated */
    uint8_t h1_head_scan; /* where h1_scan_head is in the head or trailers (head_scan_t) */
    bool h1_scan_cr;      /* ... and whether the last byte it read was a CR */
    const char *h1_head_problem; /* ... and what it found wrong, or NULL */
    bool h1_at_trailers; /* the parser paused where a chunked body's trailer section starts */
    size_t h1_fld_len, h1_val_len, h1_hdr_bytes;
    size_t h1_ext_bytes; /* chunk extension bytes of the chunk being read */
};

/*
 * Zero pages for nghttp2. A server session allocates, at start, its stream map (256 buckets =
 * one 4 KiB page, zeroed) and its 16 KiB frame buffer. With malloc every idle connection keeps
 * the map page and two pages of the buffer resident (glibc writes chunk headers at both ends)
 * although it uses neither. Served from anonymous mappings, the map stays out of RSS until the
 * first stream and the buffer costs only the page the frames are written to. A freed run is
 * given back with MADV_DONTNEED (zero again, non-resident) and reused.
 */
#define ZPAGE 4096
#define ZSLAB_BYTES (2u << 20)

typedef struct zpool {
    size_t run; /* bytes per allocation: a multiple of ZPAGE */
    char **slabs;
    size_t nslabs, slab_used; /* bytes used of the last slab */
    void **free; /* freed runs (the list lives outside them: never touch a run) */
    size_t nfree, cap_free;
} zpool_t;

#define FINAL_GOAWAY_MS 1000 /* from the shutdown notice to the GOAWAY with the last stream */

struct mg_srv {
    struct event_base *base;
    mg_srv_conf_t conf;
    const mg_srv_handler_t *h;
    void *ud;
    SSL_CTX *tls;
    struct evconnlistener *listeners[MAX_LISTENERS];
    size_t nlisteners;
    conn_t *conns;
    atomic_size_t nconns; /* written by the loop's thread only; read by scrapes (relaxed) */
    uint64_t accepted;    /* connections ever accepted (the loop's thread only) */
    bool shutting_down;
    bool at_conn_limit;         /* listeners off: conf.max_conns held (see accepting_update) */
    struct event *accept_pause; /* listeners off after accept() failed: see on_accept_error */
    struct event *tls_sweep;    /* gives quiet TLS connections' record buffers back */
    struct event *final_goaway; /* shutdown: the GOAWAY that follows the notice (on_final_goaway) */
    mg_log_limit_t accept_log;
    mg_log_limit_t limit_log;
    mg_log_limit_t abuse_log; /* HTTP/2 connections cut for floods (premature_close, h2_recv) */
    atomic_ulong pauses_limit, pauses_error; /* for metrics, as nconns */
    atomic_ulong tls_full, tls_resumed, tls_failed; /* TLS handshakes, as nconns */
    mg_srv_stream_t *free_streams;
    size_t nfree;
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    zpool_t zmap;   /* 1-page runs: stream maps */
    zpool_t zframe; /* 5-page runs: frame buffers */
    zpool_t zring;  /* 1 KiB runs, four to a page: HPACK entry rings */
    struct pp_wait *pp_waits; /* connections waiting for their PROXY header */
    mg_smalloc_t *small; /* every other nghttp2 allocation of this worker's sessions */
    mg_outq_t *outq;     /* the connections' end-of-turn output (common/outq.h) */
    llhttp_settings_t h1settings;
};

static bool zpool_owns(const zpool_t *z, const void *p)
{
    for (size_t i = 0; i < z->nslabs; i++)
        if ((const char *)p >= z->slabs[i] && (const char *)p < z->slabs[i] + ZSLAB_BYTES)
            return true;
    return false;
}

static void *zpool_get(zpool_t *z)
{
    if (z->nfree)
        return z->free[--z->nfree];
    if (z->nslabs == 0 || z->slab_used + z->run > ZSLAB_BYTES) {
        char **slabs = realloc(z->slabs, sizeof(char *) * (z->nslabs + 1));
        if (slabs == NULL)
            return NULL;
        z->slabs = slabs;
        void *m = mmap(NULL, ZSLAB_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        z->slabs[z->nslabs++] = m;
        z->slab_used = 0;
    }
    void *p = z->slabs[z->nslabs - 1] + z->slab_used;
    z->slab_used += z->run;
    return p;
}

static void zpool_put(zpool_t *z, void *p)
{
    if (z->run % ZPAGE == 0)
        madvise(p, z->run, MADV_DONTNEED); /* zero-filled and non-resident again */
    else
        memset(p, 0, z->run); /* a part of a page: zero it by hand (runs must be zero) */
    if (z->nfree == z->cap_free) {
        size_t cap = z->cap_free ? z->cap_free * 2 : 64;
        void **f = realloc(z->free, sizeof(void *) * cap);
        if (f == NULL)
            return; /* the run is lost until the server is freed, nothing worse */
        z->free = f;
        z->cap_free = cap;
    }
    z->free[z->nfree++] = p;
}

static void zpool_clear(zpool_t *z)
{
    for (size_t i = 0; i < z->nslabs; i++)
        munmap(z->slabs[i], ZSLAB_BYTES);
    free(z->slabs);
    free(z->free);
}

/* The pool that serves |size|-byte allocations, or NULL for malloc. */
static zpool_t *zpool_for(mg_srv_t *srv, size_t size)
{
    if (size == ZPAGE)
        return &srv->zmap;
    if (size > 4 * ZPAGE && size <= 5 * ZPAGE)
        return &srv->zframe;
    if (size == 1024)
        return &srv->zring; /* the two HPACK tables' entry rings: unwritten while idle */
    return NULL;
}

static zpool_t *zpool_of(mg_srv_t *srv, const void *p)
{
    if (p == NULL)
        return NULL;
    if (zpool_owns(&srv->zmap, p))
        return &srv->zmap;
    if (zpool_owns(&srv->zframe, p))
        return &srv->zframe;
    if (zpool_owns(&srv->zring, p))
        return &srv->zring;
    return NULL;
}

/* The pool for a |size|-byte block of |c|'s session. Only the frame buffer, the first block of
 * that size (nghttp2 makes it with the session), comes from zframe and is c->framebuf, which
 * idle connections trim: a later block of the same size (the buffer of a long header field
 * being decoded) comes from malloc, or trimming it would zero it under nghttp2's feet. */
static zpool_t *zpool_for_conn(conn_t *c, size_t size)
{
    zpool_t *z = zpool_for(c->srv, size);
    return z == &c->srv->zframe && c->framebuf != NULL ? NULL : z;
}

/* The allocator of one connection's nghttp2 session (|ud| is the connection). */
static void *zmem_malloc(size_t size, void *ud)
{
    conn_t *c = ud;
    zpool_t *z = zpool_for_conn(c, size);
    void *p = z ? zpool_get(z) : NULL;
    if (p && z == &c->srv->zframe)
        c->framebuf = p; /* one per session: trimmed while the connection idles */
    return p ? p : mg_smalloc_get(c->srv->small, size);
}

static void *zmem_calloc(size_t n, size_t size, void *ud)
{
    conn_t *c = ud;
    zpool_t *z = zpool_for_conn(c, n * size);
    void *p = z ? zpool_get(z) : NULL; /* runs are zero */
    if (p && z == &c->srv->zframe)
        c->framebuf = p;
    return p ? p : mg_smalloc_zget(c->srv->small, n, size);
}

static void zmem_free(void *p, void *ud)
{
    conn_t *c = ud;
    zpool_t *z = zpool_of(c->srv, p);
    if (p && p == c->framebuf)
        c->framebuf = NULL;
    if (z)
        zpool_put(z, p);
    else
        mg_smalloc_put(c->srv->small, p);
}

static void *zmem_realloc(void *p, size_t size, void *ud)
{
    conn_t *c = ud;
    zpool_t *from = zpool_of(c->srv, p);
    if (from == NULL && p != NULL)
        return mg_smalloc_reget(c->srv->small, p, size);
    void *n = zmem_malloc(size, ud);
    if (n == NULL || p == NULL)
        return n;
    memcpy(n, p, size < from->run ? size : from->run);
    zmem_free(p, ud);
    return n;
}

static void conn_close(conn_t *c);
static void conn_flush(conn_t *c);
static void flush_now(conn_t *c);
static void h1_process(conn_t *c);
static void h1_finish(conn_t *c);
static bool h1_next(conn_t *c);
static void stream_close(mg_srv_stream_t *s, bool complete);

/* ---------- connection lifetime ---------- */

static void accepting_update(mg_srv_t *srv);

/* The loop's thread alone writes the count; scrapes read it (relaxed) */
static void nconns_add(mg_srv_t *srv, int d)
{
    atomic_store_explicit(&srv->nconns,
                          atomic_load_explicit(&srv->nconns, memory_order_relaxed) + (size_t)d,
                          memory_order_relaxed);
}

static void conn_free(conn_t *c)
{
    mg_srv_t *srv = c->srv;
    while (c->streams)
        stream_close(c->streams, false);
    if (c->h2)
        nghttp2_session_del(c->h2);
    mg_outq_detach(&c->outq);
    if (c->bev) {
        SSL *ssl = c->tls ? bufferevent_openssl_get_ssl(c->bev) : NULL;
        if (ssl)
            SSL_set_shutdown(ssl, SSL_RECEIVED_SHUTDOWN); /* no close_notify wait */
        bufferevent_free(c->bev);
    }
    if (c->idle_timer)
        event_free(c->idle_timer);
    free(c->h1_scratch);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    nconns_add(srv, -1);
    free(c);
    accepting_update(srv);
}

static void enter(conn_t *c)
{
    c->busy++;
}

static void leave(conn_t *c)
{
    if (--c->busy == 0 && c->dead)
        conn_free(c);
}

static void conn_close(conn_t *c)
{
    if (c->dead)
        return;
    c->dead = true;
    c->recv_stop = true;
    if (c->bev)
        mg_outq_disable(&c->outq, c->bev, EV_READ | EV_WRITE);
    if (c->busy == 0)
        conn_free(c);
}

/*
 * Lingering close, as nginx's lingering_close: an HTTP/1.1 connection we close after
 * our last byte (an answer before the request body, Connection: close) may still receive what
 * the client was sending. Closing a socket with unread input makes the kernel answer with a
 * reset, and a reset can reach the client before it has read our answer, which it then loses
 * ("connection reset by peer" instead of the 503). So we send our FIN and read and drop input
 * until the client closes too, for at most LINGER_MS and LINGER_MAX bytes. The same holds for
 * the GOAWAY that closes an HTTP/2 connection over a protocol error or an idle timeout: a
 * client still sending frames would get a reset instead of the error code.
 */
#define LINGER_MS 2000
#define LINGER_MAX (1u << 20)

#define TLS_OUT_PIECE 4000 /* see h2_flush; with libevent's chain header, one 4 KiB block */
static void on_linger_read(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    c->lingered += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (c->lingered > LINGER_MAX)
        conn_close(c);
}

static void on_linger_event(struct bufferevent *bev, short events, void *arg)
{
    (void)bev, (void)events; /* EOF, error: the client is done */
    conn_close(arg);
}

/* Has everything we wrote left for the kernel? TLS: the records the filter sealed too. */
static bool out_empty(const conn_t *c)
{
    return evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 &&
           (c->lower == NULL || evbuffer_get_length(bufferevent_get_output(c->lower)) == 0);
}

/* The close we decide once our last byte left: lingers (see LINGER_MS). A shutdown too: a
 * download still in the kernel's send queue when its last stream ends would be thrown away
 * by the reset that closing over the client's WINDOW_UPDATEs causes (seen with curl at 4 MB/s
 * and SIGTERM: 17 of 20 MB arrived). Over TLS without a FIN of ours (the TLS layer would need
 * its own close first): the client has the whole answer, with its length, and Connection:
 * close (or our GOAWAY), so it closes first. */
static void conn_close_flushed(conn_t *c)
{
    if (c->dead || c->lingering) /* a flush that ends in a callback may get here twice */
        return;
    int fd = c->lower ? bufferevent_getfd(c->lower) : c->bev ? bufferevent_getfd(c->bev) : -1;
    if ((c->proto != P_H1 && c->proto != P_H2) || fd < 0 ||
        (!c->tls && shutdown(fd, SHUT_WR) != 0)) {
        conn_close(c);
        return;
    }
    c->lingering = true; /* the session takes no more input and sends nothing more */
    while (c->streams) /* what the session still held is over: its pods' requests too */
        stream_close(c->streams, false);
    if (c->dead)
        return;
    bufferevent_setcb(c->bev, on_linger_read, NULL, on_linger_event, c);
    bufferevent_disable(c->bev, EV_WRITE);
    mg_outq_enable(&c->outq, c->bev, EV_READ);
    struct timeval tv = {LINGER_MS / 1000, (LINGER_MS % 1000) * 1000};
    evtimer_add(c->idle_timer, &tv); /* on_idle closes a lingering connection */
}

#define TRIM_AFTER_MS 50 /* an HTTP/2 connection idle this long gives its frame buffer back */

/* Arms the idle timer. An HTTP/2 connection whose frame buffer holds written pages first waits
 * TRIM_AFTER_MS, gives the buffer's pages back (nghttp2 copied every frame out already, and
 * rewrites the buffer from its start for the next one), then waits the rest of client_idle. */
static void idle_arm(conn_t *c)
{
    uint32_t ms = c->srv->conf.client_idle_ms;
    c->idle_at_us = ms ? mg_mono_us() + (int64_t)ms * 1000 : 0;
    c->trim_due = c->framebuf && !c->trimmed && (ms == 0 || ms > TRIM_AFTER_MS);
    if (c->trim_due)
        ms = TRIM_AFTER_MS;
    if (ms == 0)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->idle_timer, &tv);
}

/* Arms the idle timer for an HTTP/2 request head being read: it must come whole within
 * client_idle_ms, as over HTTP/1.1 (on_idle). The connection is busy: no trim phase. */
static void head_arm(conn_t *c)
{
    uint32_t ms = c->srv->conf.client_idle_ms;
    c->trim_due = false;
    if (ms == 0 || c->idle_timer == NULL)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->idle_timer, &tv);
}

/* Schedules a trim for the frame buffer an idle connection wrote again (a PING's answer)
 * without moving the end of its idle period: what opens no stream is no activity for
 * client_idle, or a client sending a frame now and then would keep its connection for ever. */
static void trim_arm(conn_t *c)
{
    if (c->trim_due || c->trimmed || c->lingering || c->nstreams || c->idle_timer == NULL)
        return;
    if (c->idle_at_us && c->idle_at_us - mg_mono_us() <= TRIM_AFTER_MS * 1000)
        return; /* closed before it would trim */
    c->trim_due = true;
    struct timeval tv = {0, TRIM_AFTER_MS * 1000};
    evtimer_add(c->idle_timer, &tv);
}

/* Releases the frame buffer's pages when nothing is queued in it. */
static void trim(conn_t *c)
{
    if (c->framebuf && c->h2 && !nghttp2_session_want_write(c->h2)) {
        madvise(c->framebuf, c->srv->zframe.run, MADV_DONTNEED);
        c->trimmed = true;
    }
}

/*
 * OpenSSL's record buffers, 16 KiB each way: with SSL_MODE_RELEASE_BUFFERS they were freed
 * after every record and allocated again for the next, malloc's slow path 0.32 times a request
 * under load. A connection keeps them now while it reads or writes, and gives them back once
 * a sweep every TLS_SWEEP_MS finds it quiet (no record since the previous sweep): idle, or
 * waiting on a slow answer with streams open. SSL_free_buffers refuses while a record is half
 * read or half written; before OpenSSL 3.0.14, 3.1.6, 3.2.2 and 3.3.1 it did not check
 * (CVE-2024-4741), and those keep SSL_MODE_RELEASE_BUFFERS instead.
 */
#define TLS_SWEEP_MS 100

static bool tls_keep_buffers; /* set once (keep_buffers_once), by mg_srv_tls_ctx_new */
static pthread_once_t keep_buffers_once = PTHREAD_ONCE_INIT;

bool mg_srv_free_buffers_safe(unsigned long v)
{
    static const unsigned fixed[] = {14, 6, 2, 1}; /* 3.0.14, 3.1.6, 3.2.2, 3.3.1 */
    unsigned major = (unsigned)(v >> 28), minor = (unsigned)(v >> 20) & 0xff;
    unsigned patch = (unsigned)(v >> 4) & 0xff;
    return major > 3 || (major == 3 && (minor > 3 || patch >= fixed[minor]));
}

static void tls_sweep_arm(mg_srv_t *srv)
{
    if (tls_keep_buffers && srv->tls_sweep && !evtimer_pending(srv->tls_sweep, NULL)) {
        struct timeval tv = {0, TLS_SWEEP_MS * 1000};
        evtimer_add(srv->tls_sweep, &tv);
    }
}

/* A TLS connection read or wrote a record: its buffers are in use again. One that has had no
 * stream since the last sweep (a PING, a WINDOW_UPDATE, the SETTINGS after the handshake)
 * gives them back at once, as SSL_MODE_RELEASE_BUFFERS would: it is not busy, and an idle
 * connection's memory counts. One between two batches of requests keeps them. */
static void tls_used(conn_t *c)
{
    if (tls_keep_buffers && c->nstreams == 0 && !c->streamed && !c->dead &&
        SSL_free_buffers(bufferevent_openssl_get_ssl(c->bev)) == 1) {
        c->tls_freed = true;
        return;
    }
    c->tls_used = true;
    if (c->tls_freed) {
        c->tls_freed = false;
        tls_sweep_arm(c->srv);
    }
}

static void on_tls_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    mg_srv_t *srv = arg;
    bool held = false;
    for (conn_t *c = srv->conns; c; c = c->next) {
        if (!c->tls || c->dead || c->tls_freed || c->bev == NULL)
            continue;
        if (c->tls_used || c->streamed)
            c->tls_used = c->streamed = false;
        else
            c->tls_freed = SSL_free_buffers(bufferevent_openssl_get_ssl(c->bev)) == 1;
        held |= !c->tls_freed;
    }
    if (held)
        tls_sweep_arm(srv);
}

/* ---------- streams ---------- */

/*
 * The connection's flow-control window is credited here, not by nghttp2's consumption, which
 * sends a WINDOW_UPDATE only once half the window has been consumed: streams holding more
 * than half of it (uploads to pods that stopped reading) would then starve the connection's
 * other streams below that mark, with the rest of the window unused. Every byte received and
 * not held by a stream (|pinned|: not yet consumed, or kept by the handler, mg_srv_keep) is
 * credited once CREDIT_STEP of them are due, or at once when the client has less than that
 * left to send. Padding and DATA nobody wants are credited too: they are received bytes no
 * stream holds.
 */
#define CREDIT_STEP (32 * 1024)

static void conn_credit(conn_t *c)
{
    if (c->dead || c->h2 == NULL)
        return;
    int32_t received = nghttp2_session_get_effective_recv_data_length(c->h2);
    if (received <= 0 || (size_t)received <= c->pinned)
        return;
    size_t due = (size_t)received - c->pinned;
    int32_t window = nghttp2_session_get_effective_local_window_size(c->h2);
    if (due < CREDIT_STEP && window - received >= CREDIT_STEP)
        return;
    nghttp2_submit_window_update(c->h2, NGHTTP2_FLAG_NONE, 0, (int32_t)due);
    conn_flush(c);
}

/*
 * connection_buffer: the response bytes one HTTP/2 connection holds for its client across all
 * its streams. Past it, every stream writing more is told to pause (mg_srv_pending reports it
 * full, and it waits for on_drain) even when its own queue is short, so a client that reads
 * slowly on many streams at once holds connection_buffer plus what its pods may still send
 * within their windows, not MG_SRV_HIGH per stream. The paused streams resume once the
 * connection is back under half the limit.
 */
static bool conn_over(const conn_t *c)
{
    uint32_t limit = c->srv->conf.connection_buffer;
    return limit && c->out_bytes >= limit;
}

static void drain_list_add(conn_t *c, mg_srv_stream_t *s)
{
    s->want_drain = false;
    s->in_drain_list = true;
    s->drain_next = c->drain_list;
    c->drain_list = s;
}

/* |n| bytes left the streams' queues (to the socket, or dropped with a stream). */
static void out_taken(conn_t *c, size_t n)
{
    uint32_t half = c->srv->conf.connection_buffer / 2;
    bool was_above = c->out_bytes >= half;
    c->out_bytes -= n;
    if (half == 0 || !was_above || c->out_bytes >= half)
        return;
    for (mg_srv_stream_t *s = c->streams; s; s = s->next_in_conn) /* rare: on the crossing */
        if (s->want_drain && !s->in_drain_list && evbuffer_get_length(s->out) < MG_SRV_LOW)
            drain_list_add(c, s);
}

/* Released streams kept for the next ones: as many as a busy worker has in flight (50
 * connections of 10 streams took malloc's slow path for half of their streams at 256), given
 * back when the worker idles (mg_srv_trim). */
#define STREAM_CACHE 1024

static mg_srv_stream_t *stream_new(conn_t *c, int32_t id)
{
    mg_srv_t *srv = c->srv;
    c->streamed = true;
    mg_srv_stream_t *s = srv->free_streams;
    if (s) {
        srv->free_streams = s->next_in_conn;
        srv->nfree--;
    } else {
        s = malloc(sizeof(*s));
        if (s == NULL)
            return NULL;
        mg_arena_init(&s->arena, srv->conf.stream_memory);
        s->out = NULL;
    }
    struct evbuffer *out = s->out;
    memset(s, 0, offsetof(mg_srv_stream_t, arena));
    memset(&s->hdrs, 0, sizeof(*s) - offsetof(mg_srv_stream_t, hdrs));
    s->out = out;
    s->c = c;
    s->id = id;
    if (c->proto == P_H2 && s->out == NULL)
        s->out = evbuffer_new();
    s->next_in_conn = c->streams;
    if (c->streams)
        c->streams->prev_in_conn = s;
    c->streams = s;
    if (c->nstreams++ == 0 && c->idle_timer)
        evtimer_del(c->idle_timer);
    return s;
}

/* Unlinks |s|, tells the handler, and recycles it. */
static void stream_close(mg_srv_stream_t *s, bool complete)
{
    conn_t *c = s->c;
    mg_srv_t *srv = c->srv;
    if (s->handled) {
        s->handled = false;
        s->h->on_close(s, complete);
    }
    if (c->h2 && s->unconsumed + s->kept) {
        c->pinned -= s->unconsumed + s->kept;
        conn_credit(c);
    }
    if (s->prev_in_conn)
        s->prev_in_conn->next_in_conn = s->next_in_conn;
    else
        c->streams = s->next_in_conn;
    if (s->next_in_conn)
        s->next_in_conn->prev_in_conn = s->prev_in_conn;
    if (s->in_drain_list) { /* rare: unlink from the drain list */
        mg_srv_stream_t **pp = &c->drain_list;
        while (*pp && *pp != s)
            pp = &(*pp)->drain_next;
        if (*pp)
            *pp = s->drain_next;
    }
    if (c->h1s == s)
        c->h1s = NULL;
    if (c->hdr_stream == s) {
        c->hdr_stream = NULL;
        c->head_open = false;
    }
    if (--c->nstreams == 0 && !c->dead && c->idle_timer)
        idle_arm(c);
    mg_arena_clear(&s->arena);
    if (s->out && evbuffer_get_length(s->out)) {
        size_t left = evbuffer_get_length(s->out);
        evbuffer_drain(s->out, left);
        out_taken(c, left);
    }
    if (srv->nfree < STREAM_CACHE) {
        s->next_in_conn = srv->free_streams;
        srv->free_streams = s;
        srv->nfree++;
    } else {
        if (s->out)
            evbuffer_free(s->out);
        free(s);
    }
}

void mg_srv_set_data(mg_srv_stream_t *s, void *data)
{
    s->data = data;
}

void mg_srv_set_handler(mg_srv_stream_t *s, const mg_srv_handler_t *h)
{
    s->h = h;
}

void *mg_srv_data(const mg_srv_stream_t *s)
{
    return s->data;
}

mg_arena_t *mg_srv_arena(mg_srv_stream_t *s)
{
    return &s->arena;
}

uint64_t mg_srv_body_sent(const mg_srv_stream_t *s)
{
    return s->body_sent;
}

const char *mg_srv_close_why(const mg_srv_stream_t *s)
{
    return s->close_why;
}

bool mg_srv_responded(const mg_srv_stream_t *s)
{
    return s->responded;
}

bool mg_hdrs_push(mg_arena_t *a, mg_hdr_t **arr, size_t *n, size_t *cap, size_t max,
                  const char *name, size_t nlen, const char *value, size_t vlen, bool lower,
                  bool sensitive)
{
    if (*n >= max)
        return false;
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        mg_hdr_t *na = mg_arena_alloc(a, sizeof(mg_hdr_t) * ncap);
        if (na == NULL)
            return false;
        if (*n)
            memcpy(na, *arr, sizeof(mg_hdr_t) * *n); /* the old array stays in the arena */
        *arr = na;
        *cap = ncap;
    }
    char *nm = mg_arena_alloc(a, nlen + vlen + 2);
    if (nm == NULL)
        return false;
    char *v = nm + nlen + 1;
    memcpy(nm, name, nlen);
    nm[nlen] = '\0';
    memcpy(v, value, vlen);
    v[vlen] = '\0';
    if (lower)
        for (size_t i = 0; i < nlen; i++)
            if ((unsigned)((unsigned char)name[i] - 'A') < 26u)
                nm[i] = (char)(name[i] + 32);
    (*arr)[(*n)++] = (mg_hdr_t){nm, v, nlen, vlen, sensitive ? MG_HPACK_SENSITIVE : MG_HPACK_INDEX};
    return true;
}

bool mg_nv_copy(mg_arena_t *a, nghttp2_nv *nv, const char *name, size_t nlen, const char *value,
                size_t vlen, bool never_index)
{
    char *p = mg_arena_alloc(a, nlen + vlen + 2);
    if (p == NULL)
        return false;
    memcpy(p, name, nlen);
    p[nlen] = '\0';
    memcpy(p + nlen + 1, value, vlen);
    p[nlen + 1 + vlen] = '\0';
    *nv = (nghttp2_nv){(uint8_t *)p, (uint8_t *)p + nlen + 1, nlen, vlen,
                       NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE |
                           (never_index ? NGHTTP2_NV_FLAG_NO_INDEX : 0)};
    return true;
}

nghttp2_nv *mg_nv_copy_hdrs(mg_arena_t *a, const mg_hdr_t *h, size_t n)
{
    nghttp2_nv *nv = mg_arena_alloc(a, sizeof(nghttp2_nv) * (n ? n : 1));
    for (size_t i = 0; nv && i < n; i++)
        if (!mg_nv_copy(a, &nv[i], h[i].name, h[i].name_len, h[i].value, h[i].value_len,
                        mg_hdr_no_index(&h[i])))
            return NULL;
    return nv;
}

bool mg_field_connection_specific(const char *name, size_t len)
{
    switch (len) {
    case 2:
        return strncasecmp(name, "te", 2) == 0;
    case 7:
        return strncasecmp(name, "upgrade", 7) == 0;
    case 10:
        return strncasecmp(name, "connection", 10) == 0 ||
               strncasecmp(name, "keep-alive", 10) == 0;
    case 16:
        return strncasecmp(name, "proxy-connection", 16) == 0;
    case 17:
        return strncasecmp(name, "transfer-encoding", 17) == 0;
    default:
        return false;
    }
}

bool mg_trailer_forbidden(const char *name, size_t len)
{
    return (len > 0 && name[0] == ':') || mg_field_connection_specific(name, len) ||
           (len == 14 && strncasecmp(name, "content-length", 14) == 0) ||
           (len == 4 && strncasecmp(name, "host", 4) == 0) ||
           (len == 6 && strncasecmp(name, "expect", 6) == 0) || /* met or refused at the head */
           (len == 7 && strncasecmp(name, "trailer", 7) == 0);
}

/* Keeps a field of the head or of the trailers; false when it is over max_headers (or the
 * stream's memory): the head is then answered 431, trailers abort the request (the callers). */
static bool hdr_push(mg_srv_stream_t *s, bool trailer, const char *name, size_t nlen,
                     const char *value, size_t vlen, bool sensitive)
{
    if (trailer && mg_trailer_forbidden(name, nlen))
        return true;
    bool lower = s->c->h2 == NULL; /* HTTP/2 names are lowercase (nghttp2 checks) */
    bool ok =
        trailer
            ? mg_hdrs_push(&s->arena, &s->trailers, &s->ntrailers, &s->trailers_cap,
                           s->c->srv->conf.max_headers, name, nlen, value, vlen, lower, sensitive)
            : mg_hdrs_push(&s->arena, &s->hdrs, &s->nhdrs, &s->hdrs_cap,
                           s->c->srv->conf.max_headers, name, nlen, value, vlen, lower, sensitive);
    if (!ok && !trailer)
        s->bad_status = 431;
    return ok;
}

static void build_req(mg_srv_stream_t *s, mg_srv_req_t *r)
{
    conn_t *c = s->c;
    r->method = s->method ? s->method : "";
    r->scheme = c->tls ? "https" : "http";
    r->authority = s->authority ? s->authority : s->host ? s->host : "";
    r->authority_absent = s->authority == NULL && s->host == NULL;
    r->host_field = c->proto == P_H1 && s->authority ? s->host : NULL;
    r->path = s->path ? s->path : "";
    bool authority_sensitive = s->authority ? s->authority_sensitive : s->host_sensitive;
    r->authority_hpack = authority_sensitive ? MG_HPACK_SENSITIVE : MG_HPACK_INDEX;
    r->path_hpack = s->path_sensitive ? MG_HPACK_SENSITIVE : MG_HPACK_INDEX;
    r->hdrs = s->hdrs;
    r->nhdrs = s->nhdrs;
    r->head_whole = true;
    r->content_length = -1;
    for (size_t i = 0; i < s->nhdrs; i++)
        if (s->hdrs[i].name_len == 14 && memcmp(s->hdrs[i].name, "content-length", 14) == 0)
            r->content_length = mg_parse_decimal(s->hdrs[i].value, s->hdrs[i].value_len);
    r->has_body = !s->req_ended;
    r->proto = c->proto == P_H2                                  ? (c->tls ? "h2" : "h2c")
               : c->h1_headers_done && c->parser.http_minor == 0 ? "http/1.0"
                                                                 : "http/1.1";
    r->client = c->client;
    r->client_ip = c->client_ip;
    r->client_addr = c->client_addr;
    s->head = strcmp(r->method, "HEAD") == 0;
}

/*
 * Why a request's target cannot go on to a pod as its :path, or NULL when it can. Over HTTP/2
 * a :path is the origin form ("/p?q"), or "*" for OPTIONS alone (RFC 9113 8.3.1, RFC 9112
 * 3.2.4), and an HTTP/2 pod resets a stream whose :path is anything else: a client's mistake
 * would then be answered 502 and count as the pod's failure, until the pod is ejected. No form
 * has a fragment: a client strips it (RFC 9112 3.2, RFC 9113 8.3.1), and a pod would take it
 * for part of the path. |path| is an HTTP/2 :path, or an HTTP/1.1 target that has been through
 * h1_absolute_form; |method| is the request's.
 */
static const char *target_problem(const char *method, const char *path)
{
    if (path[0] == '*' && path[1] == '\0')
        return strcmp(method, "OPTIONS") == 0
                   ? NULL
                   : "the request target '*' (asterisk form) is for OPTIONS only (RFC 9112 3.2.4)";
    if (path[0] != '/')
        return "the request target must be a path ('/...'), an http:// or https:// URI, or '*' "
               "for OPTIONS";
    if (strchr(path, '#') != NULL)
        return "the request target has a fragment ('#...'), which clients must not send "
               "(RFC 9112 3.2)";
    return NULL;
}

/* ---------- HTTP/2 ---------- */

/* An expectation the gateway cannot meet, of an Expect field (RFC 9110 10.1.1 allows the 417);
 * 100-continue it meets itself (dispatch_request), so no Expect goes on to a pod. */
static const char EXPECT_UNMET[] =
    "the only expectation met here is Expect: 100-continue (RFC 9110 10.1.1)";

/* Takes an Expect field's value, a list (RFC 9110 10.1.1, 5.6.1: empty elements do not count):
 * sets *|expect_100| when it holds "100-continue", or returns -1 when it holds any other
 * expectation. An empty one expects nothing. */
static int expect_is_100(bool *expect_100, const char *v, size_t len)
{
    const char *end = v + len, *el;
    size_t n;
    while (mg_field_list_next(&v, end, &el, &n))
        if (n == 12 && strncasecmp(el, "100-continue", 12) == 0)
            *expect_100 = true;
        else if (n > 0)
            return -1;
    return 0;
}

static int on_begin_headers(nghttp2_session *sess, const nghttp2_frame *f, void *ud)
{
    conn_t *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (f->headers.cat == NGHTTP2_HCAT_HEADERS) {
        /* trailers hold the connection as a head does until their block ends: they too must
         * come whole within client_idle */
        mg_srv_stream_t *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
        if (s != NULL) {
            c->hdr_stream = s;
            c->head_open = true;
            c->head_armed = false;
        }
        return 0;
    }
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (c->recv_stop) /* cut (premature_close): above the GOAWAY's last_stream_id */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    mg_srv_stream_t *s = stream_new(c, f->hd.stream_id);
    if (s == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(sess, f->hd.stream_id, s);
    c->hdr_stream = s;
    c->head_open = true;
    c->head_armed = false; /* h2_recv arms the timer if the head is not whole after the read */
    return 0;
}

static int on_header(nghttp2_session *sess, const nghttp2_frame *f, nghttp2_rcbuf *name,
                     nghttp2_rcbuf *value, uint8_t flags, void *ud)
{
    conn_t *c = ud;
    /* a header block is never interleaved with other frames: skip the stream map per field */
    mg_srv_stream_t *s = c->hdr_stream;
    if (s == NULL || s->id != f->hd.stream_id)
        s = c->hdr_stream = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
    if (s == NULL || s->bad_status)
        return 0;
    nghttp2_vec n = nghttp2_rcbuf_get_buf(name), v = nghttp2_rcbuf_get_buf(value);
    s->hdr_bytes += n.len + v.len + 32; /* RFC 9113 6.5.2 size accounting */
    bool trailers = f->headers.cat == NGHTTP2_HCAT_HEADERS;
    bool sensitive = (flags & NGHTTP2_NV_FLAG_NO_INDEX) != 0;
    /* Over the limits, the rest of the block is not looked at: a head is answered 431 once it
     * ends (dispatch_request), trailers end their request (refuse_request: a 431 too, unless
     * its answer started) */
    bool pseudo = n.len > 0 && n.base[0] == ':';
    if (s->trailers_refused)
        return 0;
    if (s->hdr_bytes > s->c->srv->conf.max_header_list_size ||
        (!pseudo && ++s->nfields[trailers] > s->c->srv->conf.max_headers)) {
        if (trailers)
            s->trailers_refused = true;
        else
            s->bad_status = 431;
        return 0;
    }
    if (trailers)
        return hdr_push(s, true, (const char *)n.base, n.len, (const char *)v.base, v.len,
                        sensitive)
                   ? 0
                   : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    const char *nm = (const char *)n.base;
    if (pseudo) {
        const char **slot = NULL;
        if (n.len == 7 && memcmp(nm, ":method", 7) == 0) {
            slot = &s->method;
        } else if (n.len == 5 && memcmp(nm, ":path", 5) == 0) {
            slot = &s->path;
            s->path_sensitive = sensitive;
        } else if (n.len == 7 && memcmp(nm, ":scheme", 7) == 0) {
            slot = &s->scheme;
        } else if (n.len == 10 && memcmp(nm, ":authority", 10) == 0) {
            slot = &s->authority;
            s->authority_sensitive = sensitive;
        }
        if (slot && (*slot = mg_arena_strndup(&s->arena, (const char *)v.base, v.len)) == NULL)
            s->bad_status = 431;
        return 0;
    }
    if (n.len == 4 && memcmp(nm, "host", 4) == 0) {
        s->host = mg_arena_strndup(&s->arena, (const char *)v.base, v.len);
        s->host_sensitive = sensitive;
        return 0;
    }
    if (n.len == 6 && memcmp(nm, "expect", 6) == 0) { /* answered here, as over HTTP/1.1 */
        if (expect_is_100(&s->expect_100, (const char *)v.base, v.len) != 0)
            s->expect_unmet = true; /* see dispatch_request */
        return 0;
    }
    hdr_push(s, false, nm, n.len, (const char *)v.base, v.len, sensitive);
    return 0;
}

static void stream_request_end(mg_srv_stream_t *s)
{
    if (s->req_ended)
        return;
    s->req_ended = true;
    if (s->handled)
        s->h->on_end(s, s->trailers, s->ntrailers);
}

/* Lets the handler log a request we answer ourselves; returns the request id it chose
 * (in the stream's arena), or NULL. |whole|: every field of the head was read. */
static size_t error_answer_len(const mg_srv_stream_t *s, const char *code, const char *message,
                               const char *request_id);

/* Logs a request the server answers itself (|message|: the error answer's, NULL when it gets
 * none) and returns the request id the answer quotes. The answer's length is known before it
 * is written, so the log says what the client is sent. */
static const char *report_reject(mg_srv_stream_t *s, int status, const char *code, bool whole,
                                 const char *message)
{
    mg_srv_t *srv = s->c->srv;
    if (srv->h->on_reject == NULL)
        return NULL;
    mg_srv_req_t req;
    build_req(s, &req);
    req.head_whole = whole;
    if (req.authority_absent)
        req.authority = NULL; /* not read, unlike an empty Host: the log says null */
    char *rid = srv->h->request_id ? mg_arena_alloc(&s->arena, 64) : NULL;
    if (rid) {
        rid[0] = '\0';
        srv->h->request_id(srv->ud, rid, 64);
        if (rid[0] == '\0')
            rid = NULL;
    }
    size_t bytes = message ? error_answer_len(s, code, message, rid) : 0;
    srv->h->on_reject(srv->ud, &req, status, code, rid, bytes);
    return rid;
}

/* Why the head (|trailers| false) or the trailer section of |s| (NULL: no stream) is too
 * large: over max_headers fields, else over max_header_list_size bytes (or the stream's
 * memory). Each section is counted apart. */
static void too_large_why(char *msg, size_t cap, const mg_srv_t *srv, const mg_srv_stream_t *s,
                          bool trailers)
{
    if (s && s->nfields[trailers] > srv->conf.max_headers)
        snprintf(msg, cap, "more %s fields than limits.max_headers (%u)",
                 trailers ? "trailer" : "header", (unsigned)srv->conf.max_headers);
    else
        snprintf(msg, cap, "request %s fields over limits.max_header_list_size (%u bytes)",
                 trailers ? "trailer" : "header", (unsigned)srv->conf.max_header_list_size);
}

/*
 * The server will read no more of a request it may have handed over already (a malformed
 * chunked body, trailers over the limits): it ends as one request. A handler that took it
 * answers it (or resets it, once its answer started) and logs it with its own request id
 * (on_refused); else it is told with on_close, and the refusal is answered and logged here.
 * False when its answer had started and the handler was not there to end it: the caller
 * resets the stream (HTTP/2) or closes the connection (HTTP/1.1). |whole|: as report_reject.
 */
static bool refuse_request(mg_srv_stream_t *s, int status, const char *code, const char *msg,
                           bool whole)
{
    s->req_ended = true;
    if (s->handled && s->h->on_refused) {
        s->h->on_refused(s, status, code, msg);
        return true;
    }
    if (s->responded)
        return false;
    if (s->handled) { /* the handler's request is void: tell it now */
        s->handled = false;
        s->h->on_close(s, false);
    }
    const char *rid = report_reject(s, status, code, whole, msg);
    mg_srv_error(s, status, code, msg, rid, NULL, 0);
    return true;
}

static void dispatch_request(mg_srv_stream_t *s, bool end_stream)
{
    conn_t *c = s->c;
    s->dispatched = true;
    if (end_stream)
        s->req_ended = true;
    if (s->bad_status) {
        if (c->proto == P_H1)
            c->h1_close = true; /* as for the other requests we refuse to read (h1_reject) */
        char msg[160];
        too_large_why(msg, sizeof(msg), c->srv, s, 0);
        const char *rid = report_reject(s, s->bad_status, "headers_too_large", false, msg);
        mg_srv_error(s, s->bad_status, "headers_too_large", msg, rid, NULL, 0);
        return;
    }
    if (c->proto == P_H2 && s->authority && s->host && strcasecmp(s->authority, s->host) != 0) {
        /* which one would route, which one would the pod see? RFC 9113 8.3.1 */
        const char *msg = ":authority and host differ";
        const char *rid = report_reject(s, 400, "bad_request", true, msg);
        mg_srv_error(s, 400, "bad_request", msg, rid, NULL, 0);
        return;
    }
    if (s->expect_unmet) { /* HTTP/2's; HTTP/1.1 refuses at the field (h1_on_value_complete) */
        const char *rid = report_reject(s, 417, "expectation_failed", true, EXPECT_UNMET);
        mg_srv_error(s, 417, "expectation_failed", EXPECT_UNMET, rid, NULL, 0);
        return;
    }
    if (c->proto == P_H2 && s->method && strcmp(s->method, "CONNECT") == 0) {
        /* a tunnel through the gateway: refused, as HTTP/1.1's (h1_on_headers_complete) */
        const char *msg = "CONNECT is not supported";
        const char *rid = report_reject(s, 501, "not_implemented", true, msg);
        mg_srv_error(s, 501, "not_implemented", msg, rid, NULL, 0);
        return;
    }
    if (c->proto == P_H2) {
        /* nghttp2 holds the :path of an http or https request to a path or OPTIONS '*', but
         * lets a fragment through, and any :path with another :scheme ("ftp", ":path: x"),
         * which would go on under our own scheme for the pod to reset (target_problem) */
        char msg[160];
        const char *why = NULL;
        if (s->scheme == NULL ||
            (strcasecmp(s->scheme, "http") != 0 && strcasecmp(s->scheme, "https") != 0)) {
            snprintf(msg, sizeof(msg), ":scheme '%.32s' is not served here (http and https only)",
                     s->scheme ? s->scheme : "");
            why = msg;
        } else {
            why = target_problem(s->method ? s->method : "", s->path ? s->path : "");
        }
        if (why != NULL) {
            const char *rid = report_reject(s, 400, "bad_request", true, why);
            mg_srv_error(s, 400, "bad_request", why, rid, NULL, 0);
            return;
        }
    }
    mg_srv_req_t req;
    build_req(s, &req);
    s->handled = true;
    s->h = c->srv->h;
    if (c->idle_timer)
        evtimer_del(c->idle_timer);
    c->srv->h->on_request(s, &req, c->srv->ud);
    /* Expect: 100-continue: the client may send its body now that the handler took the
     * request; one answered at once (404, 401, 429) makes the client skip the body instead.
     * The pod's own 100 is not forwarded (gateway/proxy.c drops it), so the gateway says it. */
    if (c->proto == P_H1 && c->h1s == s && !c->dead && s->expect_100 && !s->responded &&
        !s->req_ended) {
        bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        s->continued = true;
    } else if (c->proto == P_H2 && !c->dead && s->c == c && s->expect_100 && !s->responded &&
               !s->req_ended && s->id > 0) {
        static const nghttp2_nv cont[] = {{(uint8_t *)":status", (uint8_t *)"100", 7, 3,
                                           NGHTTP2_NV_FLAG_NO_COPY_NAME |
                                               NGHTTP2_NV_FLAG_NO_COPY_VALUE}};
        nghttp2_submit_headers(c->h2, NGHTTP2_FLAG_NONE, s->id, NULL, cont, 1, NULL);
        conn_flush(c);
    }
    if (end_stream && s->handled && s->c == c)
        s->h->on_end(s, NULL, 0);
}

/* Our response ended while the client's request has not: RST_STREAM NO_ERROR tells the client
 * to stop sending it (RFC 9113 8.1, as nghttpx does). Without it the stream stayed half-open,
 * the client uploading into a body nobody reads, the connection held for good. */
static int on_frame_send(nghttp2_session *sess, const nghttp2_frame *f, void *ud)
{
    ((conn_t *)ud)->data_sent += f->hd.type == NGHTTP2_DATA; /* see WU_PER_DATA */
    if (f->hd.type == NGHTTP2_RST_STREAM && f->rst_stream.error_code != NGHTTP2_NO_ERROR) {
        /* not the handler's (mg_srv_reset): nghttp2 reset a stream the client broke (a body
         * longer or shorter than its content-length, DATA past the window...) */
        mg_srv_stream_t *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
        if (s && !s->reset_by_us && s->close_why == NULL)
            s->close_why = "client_protocol_error";
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        nghttp2_session_get_stream_remote_close(sess, f->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(sess, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}

static void premature_close(conn_t *c);
static void cut_for_abuse(conn_t *c, const char *why, const char *attack);

/*
 * What a callback of nghttp2_session_mem_recv returns once the connection is cut for abuse
 * (cut_for_abuse) or closed: a failure, so that nghttp2 stops within the buffer it is reading
 * (h2_recv then sends the GOAWAY and closes). Returning 0 is not enough: the GOAWAY of
 * nghttp2_session_terminate_session2 sets nghttp2 to ignore its input, but nghttp2 (1.52)
 * resets that state at the end of some frames (an empty DATA frame, when the empty frames cut
 * was made there) and goes on parsing the frames behind it; one with a bad length (a PING of
 * 0 bytes) then fails nghttp2's assert(iframe->state == NGHTTP2_IB_IGN_ALL), which aborts the
 * process. The rapid reset cut is made from these callbacks.
 */
static int recv_result(const conn_t *c)
{
    return c->recv_stop ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/*
 * Empty frames flood (CVE-2019-9518): DATA frames that carry no data and do not end their
 * stream cost a frame's work each and move nothing, so a client could send them for ever.
 * More than EMPTY_MAX of them in a row on a connection (any other frame ends the run) cut it
 * with GOAWAY ENHANCE_YOUR_CALM. Envoy allows 1 (max_consecutive_inbound_frames_with_empty_
 * payload); nghttp2 and nghttpx none. An empty DATA frame that ends its stream is not one.
 * The frame headers are read here, before nghttp2 takes the bytes: it drops DATA frames of
 * closed streams without a callback, and those would never count.
 */
#define EMPTY_MAX 10

/*
 * Frames that do nothing (CVE-2019-9513's family), bounded as Envoy bounds them:
 *  - PRIORITY frames: ignored here (SETTINGS_NO_RFC7540_PRIORITIES), yet each is read and
 *    parsed, ~70 ns for 14 bytes. A client writing them over and over from one buffer kept a
 *    worker's core busy with a twentieth of its own. At most IDLE_PER_STREAM for the
 *    connection and as many per stream the client opens (Envoy's
 *    max_inbound_priority_frames_per_stream, 100). PING ACKs count with them: the gateway
 *    sends no PING, so each one answers nothing; so do frames of types it does not use
 *    (PRIORITY_UPDATE, extensions): a client writing 9-byte ones of an unknown type kept a
 *    worker's core busy, as nghttpx's.
 *  - WINDOW_UPDATE frames: clients send them for the data they receive. At most
 *    5 + 2 * (streams opened + WU_PER_DATA * DATA frames sent), Envoy's formula
 *    (max_inbound_window_update_frames_per_data_frame_sent, 10).
 * Counted over the connection's life, as Envoy does. Past either bound the connection is cut
 * as for the empty frames. PINGs and SETTINGS are answered, so they cost the client a read
 * each; nghttp2 cuts a client that does not read them (max_outbound_ack).
 */
#define IDLE_PER_STREAM 100
#define WU_PER_DATA 10

enum { FLOOD_NONE, FLOOD_EMPTY, FLOOD_IDLE, FLOOD_WINDOW_UPDATE };

/* Counts the frame whose header is |h|; returns the FLOOD_* it completes. */
static uint8_t count_frame(conn_t *c, const uint8_t *h, bool empty)
{
    c->empty_run = empty ? c->empty_run + 1 : 0;
    if (c->empty_run > EMPTY_MAX)
        return FLOOD_EMPTY;
    switch (h[3]) {
    case NGHTTP2_HEADERS:
        c->heads++;
        return FLOOD_NONE;
    case NGHTTP2_PING:
        if (!(h[4] & NGHTTP2_FLAG_ACK))
            return FLOOD_NONE;
        /* fall through */
    case NGHTTP2_PRIORITY:
        return ++c->idle_frames > IDLE_PER_STREAM * (1 + c->heads) ? FLOOD_IDLE : FLOOD_NONE;
    case NGHTTP2_WINDOW_UPDATE:
        return ++c->window_updates > 5 + 2 * (c->heads + WU_PER_DATA * c->data_sent)
                   ? FLOOD_WINDOW_UPDATE
                   : FLOOD_NONE;
    default:
        if (h[3] <= NGHTTP2_CONTINUATION)
            return FLOOD_NONE;
        /* a type the gateway does not use (RFC 9218's PRIORITY_UPDATE, an extension's),
         * which RFC 9113 5.5 says to ignore: it does nothing, as a PRIORITY */
        return ++c->idle_frames > IDLE_PER_STREAM * (1 + c->heads) ? FLOOD_IDLE : FLOOD_NONE;
    }
}

/* A DATA frame with PADDED set has its pad length in the first payload byte. */
static bool data_padded(const uint8_t *h)
{
    return h[3] == NGHTTP2_DATA && (h[4] & NGHTTP2_FLAG_PADDED) && (h[0] | h[1] | h[2]);
}

/* Reads the frame headers in |p| (|n| bytes) that follow the ones already seen. Returns |n|,
 * or where the frame that makes a flood starts (c->flood set): nghttp2 gets the frames before
 * it, then h2_recv cuts the connection. */
static size_t scan_frames(void *arg, const uint8_t *p, size_t n)
{
    conn_t *c = arg;
    const uint8_t *from = p;
    while (n > 0) {
        if (c->scan_skip > 0) { /* the preface, or a frame's payload */
            size_t k = n < c->scan_skip ? n : c->scan_skip;
            c->scan_skip -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        const uint8_t *h = p, *start = c->scan_have == 0 ? p : from; /* where the frame began */
        size_t taken; /* bytes of the header (and pad length) this call took */
        if (c->scan_have == 0 && n >= 10) { /* the usual case: a whole header in this read */
            taken = data_padded(h) ? 10 : 9;
        } else { /* a header cut by the end of a read: gathered across reads */
            h = c->scan_hdr;
            size_t need = c->scan_have >= 9 && data_padded(h) ? 10 : 9;
            while (c->scan_have < need && n > 0) {
                c->scan_hdr[c->scan_have++] = *p++;
                n--;
                if (c->scan_have == 9 && data_padded(h))
                    need = 10;
            }
            if (c->scan_have < need)
                return (size_t)(p - from); /* the rest comes with the next read */
            c->scan_have = 0;
            taken = 0; /* taken above */
        }
        uint32_t len = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
        bool padded = data_padded(h);
        bool empty = h[3] == NGHTTP2_DATA && !(h[4] & NGHTTP2_FLAG_END_STREAM) &&
                     len == (padded ? 1u + h[9] : 0u);
        if ((c->flood = count_frame(c, h, empty)) != FLOOD_NONE)
            return (size_t)(start - from);
        c->scan_skip = len - (padded ? 1 : 0);
        p += taken;
        n -= taken;
    }
    return (size_t)(p - from);
}

static int on_frame_recv(nghttp2_session *sess, const nghttp2_frame *f, void *ud)
{
    mg_srv_stream_t *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
    if (f->hd.type == NGHTTP2_DATA)
        conn_credit(ud); /* its padding, which no stream holds */
    if (f->hd.type == NGHTTP2_HEADERS)
        ((conn_t *)ud)->head_open = false;  /* the block ended */
    if (f->hd.type == NGHTTP2_RST_STREAM) { /* before nghttp2 closes the stream */
        if (s)
            s->reset_counted = true;
        premature_close(ud);
        return recv_result(ud);
    }
    if (s == NULL || ((conn_t *)ud)->recv_stop)
        return recv_result(ud);
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
            dispatch_request(s, end);
        } else if (s->trailers_refused) {
            char msg[160];
            too_large_why(msg, sizeof(msg), s->c->srv, s, true);
            if (!refuse_request(s, 431, "headers_too_large", msg, true))
                mg_srv_reset(s);
        } else if (end) {
            stream_request_end(s);
        }
        break;
    case NGHTTP2_DATA:
        if (end)
            stream_request_end(s);
        break;
    default:
        break;
    }
    return recv_result(ud);
}

static int on_data_chunk(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    mg_srv_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    if (s == NULL || !s->handled) {
        nghttp2_session_consume_stream(sess, id, len); /* nobody wants it: the client goes on */
        conn_credit(ud);
        return 0;
    }
    s->unconsumed += len;
    ((conn_t *)ud)->pinned += len;
    s->h->on_body(s, data, len);
    return 0;
}

/*
 * Rapid reset (CVE-2023-44487) and MadeYouReset (CVE-2025-8671): a client that opens streams
 * and has them closed before their answers end, by its own RST_STREAM or by a stream error it
 * provokes (a WINDOW_UPDATE past the stream's window, DATA beyond its content-length), makes
 * the gateway route, log and start a request at a pod each time, and max_concurrent_streams
 * never binds. Debian's nghttp2 1.52 (with its CVE-2023-44487 patch, as upstream 1.57) cuts a
 * connection past 1000 of the client's RST_STREAMs, then 33 a second, but does not count the
 * resets it sends for the client's stream errors (upstream counts them since 1.66), and its
 * GOAWAY lets the streams that follow in the same read through. So every RST_STREAM of the
 * client counts here, and so does every other stream closed before its answer ended unless
 * the handler reset it (a pod failed: not the client's doing), against the same budget;
 * nghttp2's own limit is set above it (mg_srv_new). Once the budget is spent the connection
 * gets GOAWAY ENHANCE_YOUR_CALM, and nothing the client sent after it is processed.
 */
#define RESET_BURST 1000
#define RESET_RATE 33 /* a second */

/* Ends a connection that floods: GOAWAY ENHANCE_YOUR_CALM, nothing read after it processed,
 * one warning (rate-limited across connections) saying |why| and naming the |attack|. */
static void cut_for_abuse(conn_t *c, const char *why, const char *attack)
{
    if (c->recv_stop)
        return;
    c->recv_stop = true;
    unsigned long skipped;
    if (mg_log_limit_pass(&c->srv->abuse_log, &skipped))
        MG_LOG(MG_LOG_WARN, "h2server",
               "conn=%s: %s: closing with ENHANCE_YOUR_CALM (%s) (%lu similar suppressed)",
               c->client, why, attack, skipped);
    nghttp2_session_terminate_session2(c->h2, nghttp2_session_get_last_proc_stream_id(c->h2),
                                       NGHTTP2_ENHANCE_YOUR_CALM);
    c->close_when_flushed = true;
    conn_flush(c);
}

static void premature_close(conn_t *c)
{
    int64_t now = mg_mono_us() / 1000000;
    if (now > c->resets_at_s) {
        uint64_t left = (uint64_t)(now - c->resets_at_s) * RESET_RATE + c->resets_left;
        c->resets_left = left > RESET_BURST ? RESET_BURST : (uint32_t)left;
        c->resets_at_s = now;
    }
    if (c->resets_left > 0) {
        c->resets_left--;
        return;
    }
    char why[96];
    snprintf(why, sizeof(why),
             "more than %u streams closed before their answers (%u a second after)", RESET_BURST,
             RESET_RATE);
    cut_for_abuse(c, why, "rapid reset");
}

/* A frame that breaks the protocol: nghttp2 resets its stream (or closes the connection). The
 * reset is counted now, not when it is sent and the stream closes at the end of the turn, so
 * that a flood of them is cut within the read that spends the budget. (nghttp2 says nothing of
 * some, such as DATA beyond content-length: those count at the close, and the read that spends
 * the budget may have opened max_concurrent_streams more.) */
static int on_invalid_frame(nghttp2_session *sess, const nghttp2_frame *f, int lib_error, void *ud)
{
    (void)lib_error;
    mg_srv_stream_t *s =
        f->hd.stream_id ? nghttp2_session_get_stream_user_data(sess, f->hd.stream_id) : NULL;
    if (s == NULL || s->reset_counted || s->out_ended)
        return 0;
    s->reset_counted = true;
    premature_close(ud);
    return recv_result(ud);
}

static int on_stream_close(nghttp2_session *sess, int32_t id, uint32_t error_code, void *ud)
{
    mg_srv_stream_t *s = nghttp2_session_get_stream_user_data(sess, id);
    if (s == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(sess, id, NULL);
    if (!s->out_ended && !s->reset_by_us && !s->reset_counted)
        premature_close(s->c);
    /* A stream closed before its head was whole is one nghttp2 reset for a malformed head (an
     * uppercase or connection-specific field, a :path an http request cannot have, no
     * :authority): a request all the same, logged as HTTP/1.1's are (h1_reject), with what
     * was read of it. Its resets count toward the rapid reset cut, which bounds the lines. */
    if (!s->dispatched)
        report_reject(s, 400, "malformed_request", false, NULL);
    stream_close(s, error_code == NGHTTP2_NO_ERROR && s->out_ended);
    return 0;
}

static ssize_t h2_read_body(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    mg_srv_stream_t *s = src->ptr;
    conn_t *c = ud;
    size_t avail = evbuffer_get_length(s->out);
    if (avail == 0 && !s->out_ended) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    int n = evbuffer_remove(s->out, buf, len);
    if (n < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->body_sent += (size_t)n;
    if (s->out_ended && evbuffer_get_length(s->out) == 0)
        mg_h2_end_data(sess, id, flags, s->resp_trailers, s->nresp_trailers);
    out_taken(c, (size_t)n);
    if (s->want_drain && !s->in_drain_list && evbuffer_get_length(s->out) < MG_SRV_LOW &&
        !conn_over(c))
        drain_list_add(c, s);
    return n;
}

static mg_err_t h2_init(conn_t *c)
{
    mg_srv_t *srv = c->srv;
    c->proto = P_H2;
    c->mem = (nghttp2_mem){c, zmem_malloc, zmem_free, zmem_calloc, zmem_realloc};
    if (nghttp2_session_server_new3(&c->h2, srv->cbs, c, srv->opt, &c->mem) != 0)
        return MG_E_NOMEM;
    c->resets_left = RESET_BURST;
    c->resets_at_s = mg_mono_us() / 1000000;
    c->scan_skip = H2_PREFACE_LEN; /* the client's preface comes first */
    nghttp2_settings_entry iv[5] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, srv->conf.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, srv->conf.stream_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, srv->conf.max_header_list_size},
        /* RFC 9218: no RFC 7540 priority tree to maintain per stream */
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    size_t niv = 4;
    if (srv->conf.header_table_size)
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_HEADER_TABLE_SIZE,
                                             srv->conf.header_table_size};
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, niv);
    if (srv->conf.connection_window > 65535)
        nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)srv->conf.connection_window);
    if (srv->shutting_down)
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    return MG_OK;
}

/* Feeds every buffered input byte to nghttp2. */
void mg_h2_end_data(nghttp2_session *h2, int32_t id, uint32_t *flags, const nghttp2_nv *trailers,
                    size_t n)
{
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (n) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_submit_trailer(h2, id, trailers, n);
    }
}

bool mg_h2_answered_in_h1(const void *first, size_t n)
{
    return n >= 5 && memcmp(first, "HTTP/", 5) == 0;
}

int mg_h2_recv(nghttp2_session *h2, struct evbuffer *in, const bool *stop, mg_h2_scan_fn scan,
               void *arg)
{
    while (evbuffer_get_length(in) > 0 && !*stop) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        /* nghttp2 takes every byte it is given (no callback pauses it) */
        size_t len = scan ? scan(arg, v.iov_base, v.iov_len) : v.iov_len;
        ssize_t n = len ? nghttp2_session_mem_recv(h2, v.iov_base, len) : 0;
        if (n < 0) {
            evbuffer_drain(in, evbuffer_get_length(in));
            return (int)n;
        }
        evbuffer_drain(in, (size_t)n);
        if (len < v.iov_len)
            break; /* |scan| stopped it */
    }
    return 0;
}

static void h2_recv(conn_t *c)
{
    c->in_recv = true;
    int rv = mg_h2_recv(c->h2, bufferevent_get_input(c->bev), &c->recv_stop, scan_frames, c);
    c->in_recv = false;
    /* a head that did not come whole in this read (a HEADERS frame without END_HEADERS, or
     * whose payload stopped half way) must come whole within client_idle; the usual one-read
     * head costs no timer operation */
    if (c->head_open && !c->head_armed && !c->dead) {
        c->head_armed = true;
        head_arm(c);
    }
    if (rv == 0 && c->flood != FLOOD_NONE) {
        char why[128];
        if (c->flood == FLOOD_EMPTY)
            snprintf(why, sizeof(why), "more than %u empty DATA frames in a row", EMPTY_MAX);
        else if (c->flood == FLOOD_IDLE)
            snprintf(why, sizeof(why),
                     "PRIORITY, PING ACK and unused-type frames over %u x (1 + %" PRIu64
                     " streams)",
                     IDLE_PER_STREAM, c->heads);
        else
            snprintf(why, sizeof(why),
                     "WINDOW_UPDATE frames over 5 + 2 x (%" PRIu64 " streams + %u x %" PRIu64
                     " DATA frames sent)",
                     c->heads, WU_PER_DATA, c->data_sent);
        cut_for_abuse(c, why,
                      c->flood == FLOOD_EMPTY ? "empty frames flood" : "control frames flood");
        return;
    }
    if (rv == NGHTTP2_ERR_CALLBACK_FAILURE && c->recv_stop)
        return; /* cut for abuse (said then, GOAWAY queued) or closed from a callback */
    if (rv != 0) {
        /* a flood nghttp2 stopped (CONTINUATION frames without end, PING or SETTINGS whose
         * answers the client does not read) is someone's attack: said once, not per frame;
         * other errors are a client's bugs */
        unsigned long skipped;
        bool flood = rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ||
                     rv == NGHTTP2_ERR_TOO_MANY_SETTINGS;
        if (flood) /* nghttp2 queues no GOAWAY for these: say why the connection ends */
            nghttp2_session_terminate_session(c->h2, NGHTTP2_ENHANCE_YOUR_CALM);
        if (flood && mg_log_limit_pass(&c->srv->abuse_log, &skipped))
            MG_LOG(MG_LOG_WARN, "h2server", "conn=%s: %s: closing (%lu similar suppressed)",
                   c->client, nghttp2_strerror(rv), skipped);
        else
            MG_LOG(MG_LOG_DEBUG, "h2server", "conn=%s: HTTP/2 error: %s", c->client,
                   nghttp2_strerror(rv));
        c->close_when_flushed = true; /* nghttp2 queued a GOAWAY when it could: send it first */
    }
}

static void h2_flush(conn_t *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t before = evbuffer_get_length(out);
    for (;;) {
        /* TLS: the filter seals each piece (chain) of its output in a record of its own (see
         * seal in common/outq.c): frames added through one turn share a piece */
        if (mg_h2_send(c->h2, c->bev, OUT_HIGH, c->tls ? TLS_OUT_PIECE : 0) < 0) {
            conn_close(c);
            return;
        }
        if (evbuffer_get_length(out) != before)
            c->trimmed = false; /* frames were written into the frame buffer again */
        mg_srv_stream_t *d = c->drain_list;
        c->drain_list = NULL;
        if (d == NULL)
            break;
        while (d) { /* tell producers to go on; they may write more (need_flush) */
            mg_srv_stream_t *next = d->drain_next;
            d->in_drain_list = false;
            if (d->handled)
                d->h->on_drain(d);
            d = next;
        }
        if (c->dead)
            return;
    }
    if (c->close_when_flushed ||
        (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2))) {
        c->close_when_flushed = true;
        if (out_empty(c))
            conn_close_flushed(c);
        return;
    }
    /* idle with freshly written pages (the handshake, a PING answer): schedule the trim */
    trim_arm(c);
}

int mg_h2_send(nghttp2_session *h2, struct bufferevent *bev, size_t high, size_t piece)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    uint8_t buf[16384];
    size_t used = 0, queued = evbuffer_get_length(out);
    int rv = 0;
    while (queued + used < high) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h2, &data);
        if (n <= 0) {
            rv = (int)n;
            break;
        }
        if (used + (size_t)n > sizeof(buf)) {
            evbuffer_add(out, buf, used);
            queued += used;
            used = 0;
        }
        if ((size_t)n > sizeof(buf)) {
            evbuffer_add(out, data, (size_t)n);
            queued += (size_t)n;
        } else {
            memcpy(buf + used, data, (size_t)n);
            used += (size_t)n;
        }
    }
    if (used) {
        if (queued == 0 && piece > used) /* only with data: an idle connection keeps none */
            evbuffer_expand(out, piece);
        evbuffer_add(out, buf, used);
    }
    return rv;
}

/* ---------- HTTP/1.1 ---------- */

static conn_t *parser_conn(llhttp_t *p)
{
    return p->data;
}

static int h1_on_message_begin(llhttp_t *p)
{
    conn_t *c = parser_conn(p);
    c->h1_headers_done = false;
    c->h1_fld_len = c->h1_val_len = c->h1_hdr_bytes = c->h1_ext_bytes = 0;
    c->h1s = stream_new(c, 0);
    if (c->h1s)
        idle_arm(c); /* the head must arrive within client_idle_ms */
    return c->h1s ? 0 : -1;
}

/* Refuses the request being parsed: h1_process answers |status| and closes. */
static int h1_refuse(conn_t *c, int status, const char *code, const char *msg)
{
    c->h1_refused = status;
    c->h1_refused_code = code;
    c->h1_refused_msg = msg;
    return -1;
}

const mg_hdr_t *mg_field_single(const mg_hdr_t *h, size_t n, const char *name, size_t len,
                                bool *ambiguous)
{
    const mg_hdr_t *one = NULL;
    bool many = false;
    for (size_t i = 0; i < n && !many; i++)
        if (h[i].name_len == len && memcmp(h[i].name, name, len) == 0) {
            many = one != NULL;
            one = &h[i];
        }
    if (one && !many && one->value_len > 0 && memchr(one->value, ',', one->value_len) != NULL)
        many = true;
    if (ambiguous)
        *ambiguous = many;
    return many ? NULL : one;
}

bool mg_field_is_chunked(const char *v, size_t n)
{
    mg_field_trim(&v, &n);
    return n == 7 && strncasecmp(v, "chunked", 7) == 0;
}

static int h1_limit(conn_t *c, size_t len)
{
    c->h1_hdr_bytes += len;
    if (c->h1_hdr_bytes > c->srv->conf.max_header_list_size) {
        c->h1_err_too_large = true;
        return -1;
    }
    return 0;
}

static int h1_on_url(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = parser_conn(p);
    if (h1_limit(c, len)) {
        c->h1_err_in_target = true;
        return -1;
    }
    memcpy(c->h1_scratch + c->h1_fld_len, at, len); /* the limit keeps it in the scratch */
    c->h1_fld_len += len;
    return 0;
}

/* The method is known from here on, so a request refused later (its target, its fields) is
 * logged with it. */
static int h1_on_method_complete(llhttp_t *p)
{
    parser_conn(p)->h1s->method = llhttp_method_name(llhttp_get_method(p));
    return 0;
}

/* An absolute-form target (GET http://host/path): its authority is the host, whatever Host
 * says (RFC 9112 3.2.2), and the path goes on in origin form. The Host field stays in s->host,
 * to be checked all the same (RFC 9112 3.2: required in HTTP/1.1, and valid). A target that is no
 * http or https URI is left as it is, for target_problem to refuse. */
static int h1_absolute_form(mg_srv_stream_t *s, bool options)
{
    const char *t = s->path;
    size_t skip = strncasecmp(t, "http://", 7) == 0    ? 7
                  : strncasecmp(t, "https://", 8) == 0 ? 8
                                                       : 0;
    if (skip == 0)
        return 0;
    const char *auth = t + skip, *end = auth + strcspn(auth, "/?#");
    if (end == auth || memchr(auth, '@', (size_t)(end - auth)) != NULL)
        return -1; /* userinfo is an error (RFC 9110 4.2.4): "a@b" would be the host */
    s->authority = mg_arena_strndup(&s->arena, auth, (size_t)(end - auth));
    if (*end == '/')
        s->path = mg_arena_strndup(&s->arena, end, strlen(end));
    else if (*end == '\0' && options) /* the server as a whole: RFC 9112 3.2.4 */
        s->path = "*";
    else { /* "http://h?q" -> "/?q", "http://h" -> "/" */
        size_t n = strlen(end);
        char *path = mg_arena_alloc(&s->arena, n + 2);
        if (path != NULL) {
            path[0] = '/';
            memcpy(path + 1, end, n + 1);
        }
        s->path = path;
    }
    return s->authority && s->path ? 0 : -1;
}

static int h1_on_url_complete(llhttp_t *p)
{
    conn_t *c = parser_conn(p);
    c->h1s->path = mg_arena_strndup(&c->h1s->arena, c->h1_scratch, c->h1_fld_len);
    c->h1_fld_len = 0;
    if (c->h1s->path == NULL)
        return -1;
    /* now, so that a request refused at one of its fields is logged with the target's host */
    if (h1_absolute_form(c->h1s, llhttp_get_method(p) == HTTP_OPTIONS) != 0)
        return h1_refuse(c, 400, "bad_request",
                         "malformed absolute request target (no host, or a user name in it)");
    return 0;
}

static int h1_on_field(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = parser_conn(p);
    if (h1_limit(c, len))
        return -1;
    memcpy(c->h1_scratch + c->h1_fld_len, at, len);
    c->h1_fld_len += len;
    return 0;
}

static const char OBS_FOLD[] = "obsolete line folding (a field line that starts with whitespace) "
                               "is not accepted (RFC 9112 5.2)";
static const char BARE_LF[] = "a line of the request head or trailers ends with LF alone: lines "
                              "end with CRLF here (RFC 9112 2.2)";

/* Where h1_scan_head is: before the request line, in a line, at the start of one, after a CR
 * there (the empty line that ends the head, or a faulty one), or past the head. */
typedef enum { HS_START = 0, HS_LINE, HS_LINE_START, HS_CR, HS_DONE } head_scan_t;

/*
 * Follows the lines of a request's head across reads, ahead of llhttp, for what a peer in
 * front could frame otherwise; h1_on_headers_complete refuses the head, h1_process a chunked
 * body's trailer section (scanned from its start, found by h1_on_chunk_header):
 *  - a field line that starts with SP or HT. llhttp 8.1 drops the blank ones after an empty
 *    value ("X-A:\r\n \r\n") without a callback, where a proxy in front may end the head;
 *  - a line that ends with LF alone. llhttp 8.1 takes it after the request line and as the
 *    head's last line but refuses it after a field: one rule for every line instead.
 * It splits lines only: llhttp judges them. Stops at the empty line that ends the head, so a
 * body is never read; starts again with each message (h1_on_message_complete).
 */
static void h1_scan_head(conn_t *c, const char *b, size_t n)
{
    const char *from = b, *end = b + n;
    head_scan_t st = c->h1_head_scan;
    while (b < end && st != HS_DONE) {
        switch (st) {
        case HS_START: /* empty lines before the request line may be skipped: RFC 9112 2.2 */
            if (*b == '\r' || *b == '\n')
                b++;
            else
                st = HS_LINE;
            break;
        case HS_LINE: {
            const char *lf = memchr(b, '\n', (size_t)(end - b));
            if (lf != NULL && !(lf > from ? lf[-1] == '\r' : c->h1_scan_cr))
                c->h1_head_problem = BARE_LF;
            b = lf ? lf + 1 : end;
            st = c->h1_head_problem ? HS_DONE : lf ? HS_LINE_START : HS_LINE;
            break;
        }
        case HS_LINE_START:
            if (*b == ' ' || *b == '\t' || *b == '\n')
                c->h1_head_problem = *b == '\n' ? BARE_LF : OBS_FOLD;
            st = c->h1_head_problem ? HS_DONE : *b == '\r' ? HS_CR : HS_LINE;
            b += st == HS_CR;
            break;
        case HS_CR: /* a CR not before LF is llhttp's to refuse */
            st = *b == '\n' ? HS_DONE : HS_LINE;
            break;
        case HS_DONE:
            break;
        }
    }
    c->h1_head_scan = (uint8_t)st;
    c->h1_scan_cr = end > from && end[-1] == '\r';
}

static int h1_on_value(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = parser_conn(p);
    if (h1_limit(c, len))
        return -1;
    memcpy(c->h1_scratch + c->h1_fld_len + c->h1_val_len, at, len);
    c->h1_val_len += len;
    return 0;
}

static int h1_on_field_complete(llhttp_t *p)
{
    return 0;
}

static int h1_on_value_complete(llhttp_t *p)
{
    conn_t *c = parser_conn(p);
    mg_srv_stream_t *s = c->h1s;
    if (h1_limit(c, 32)) /* each field's overhead, as RFC 9113 6.5.2 counts over HTTP/2 */
        return -1;
    const char *name = c->h1_scratch, *value = c->h1_scratch + c->h1_fld_len;
    size_t nlen = c->h1_fld_len, vlen = c->h1_val_len;
    c->h1_fld_len = c->h1_val_len = 0;
    mg_field_trim(&value, &vlen);
    if (s == NULL)
        return 0; /* answered and closed before its trailers */
    if (nlen == 0) /* ": v" (llhttp takes it): a field name is a token (RFC 9110 5.1) */
        return h1_refuse(c, 400, "bad_request", "header field without a name");
    if (++s->nfields[c->h1_headers_done] > c->srv->conf.max_headers) {
        if (!c->h1_headers_done) {
            s->bad_status = 431; /* answered once the head is whole (dispatch_request) */
            return 0;
        }
        c->h1_err_too_large = true;
        return -1;
    }
    if (c->h1_headers_done) { /* chunked trailer section: over the limits is a 431 (or a
                               * close, once answered) */
        if (hdr_push(s, true, name, nlen, value, vlen, false))
            return 0;
        c->h1_err_too_large = true; /* out of the stream's memory */
        return -1;
    }
    if (nlen == 4 && strncasecmp(name, "host", 4) == 0) {
        if (s->host != NULL) /* which one would route? RFC 9112 3.2 */
            return h1_refuse(c, 400, "bad_request", "more than one Host header");
        s->host = mg_arena_strndup(&s->arena, value, vlen);
        return 0;
    }
    if (nlen == 6 && strncasecmp(name, "expect", 6) == 0) {
        if (c->parser.http_minor == 0) /* an HTTP/1.0 client's is ignored (RFC 9110 10.1.1) */
            return 0;
        if (expect_is_100(&s->expect_100, value, vlen) != 0) /* see dispatch_request */
            return h1_refuse(c, 417, "expectation_failed", EXPECT_UNMET);
        return 0;
    }
    if (nlen == 17 && strncasecmp(name, "transfer-encoding", 17) == 0 &&
        !mg_field_is_chunked(value, vlen))
        return h1_refuse(c, 501, "not_implemented",
                         "transfer codings other than chunked are not supported");
    hdr_push(s, false, name, nlen, value, vlen, false);
    return 0;
}

static int h1_on_headers_complete(llhttp_t *p)
{
    conn_t *c = parser_conn(p);
    mg_srv_stream_t *s = c->h1s;
    c->h1_headers_done = true;
    if (c->h1_head_problem)
        return h1_refuse(c, 400, "bad_request", c->h1_head_problem);
    if (p->http_major != 1) /* llhttp also takes "HTTP/2.0" and HTTP/0.9's "GET /" */
        return h1_refuse(c, 505, "http_version_not_supported",
                         "HTTP/1.0 and HTTP/1.1 only here; HTTP/2 starts with its connection "
                         "preface (prior knowledge) or ALPN h2");
    if (llhttp_get_method(p) == HTTP_CONNECT)
        return h1_refuse(c, 501, "not_implemented", "CONNECT is not supported");
    const char *why = target_problem(s->method, s->path);
    if (why != NULL)
        return h1_refuse(c, 400, "bad_request", why);
    if (p->http_minor >= 1 && s->host == NULL && !s->bad_status)
        return h1_refuse(c, 400, "bad_request", "HTTP/1.1 request without a Host header");
    /* An http URI has a host (RFC 9110 4.2.1), so a Host field must name it (RFC 9112 3.2);
     * the handler checks a non-empty one, but cannot tell an empty one from none (HTTP/1.0) */
    if (s->host != NULL && s->host[0] == '\0')
        return h1_refuse(c, 400, "invalid_host", "empty Host header: the host is required");
    /* Upgrade (h2c from curl --http2, websocket) is not supported: the request is answered as
     * plain HTTP/1.1, which RFC 9110 7.8 allows (the proxy drops Upgrade as hop-by-hop) */
    p->upgrade = 0;
    bool body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length);
    if (!llhttp_should_keep_alive(p))
        c->h1_close = true;
    if (c->srv->shutting_down)
        c->h1_close = true;
    if ((p->flags & F_TRANSFER_ENCODING) && p->http_minor == 0)
        c->h1_close = true; /* HTTP/1.0 framing with a transfer coding is faulty: RFC 9112 6.1 */
    dispatch_request(s, !body);
    return 0;
}

static int h1_on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = parser_conn(p);
    mg_srv_stream_t *s = c->h1s;
    if (s == NULL || !s->handled)
        return 0;
    s->unconsumed += len;
    s->h->on_body(s, (const uint8_t *)at, len);
    if (c->h1s == s && s->unconsumed > MG_SRV_HIGH && !c->h1_read_off) {
        c->h1_read_off = true; /* backpressure: the handler's sink is full */
        mg_outq_disable(&c->outq, c->bev, EV_READ);
    }
    return 0;
}

/* Chunk extensions mean nothing to the gateway and count toward no limit (not the body's):
 * past MG_H1_MAX_CHUNK_EXT bytes in one chunk, the request is refused, as Node does. */
static int h1_on_chunk_ext(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = parser_conn(p);
    (void)at;
    c->h1_ext_bytes += len;
    if (c->h1_ext_bytes > MG_H1_MAX_CHUNK_EXT)
        return h1_refuse(c, 400, "bad_request", "chunk extensions over 16384 bytes in one chunk");
    return 0;
}

static int h1_on_chunk_header(llhttp_t *p)
{
    conn_t *c = parser_conn(p);
    c->h1_ext_bytes = 0;
    if (p->content_length > 0)
        return 0;
    /* the last chunk's line was read: the trailer section starts here, and only llhttp knows
     * where; a pause tells h1_process, which scans it as a head */
    c->h1_head_scan = HS_LINE_START;
    c->h1_scan_cr = false;
    c->h1_at_trailers = true;
    return HPE_PAUSED;
}

static int h1_on_message_complete(llhttp_t *p)
{
    conn_t *c = parser_conn(p);
    mg_srv_stream_t *s = c->h1s;
    if (s)
        stream_request_end(s);
    c->h1_head_scan = HS_START; /* the next message's head starts where the parser pauses */
    c->h1_head_problem = NULL;
    c->h1_wait = true;
    return HPE_PAUSED;
}

static mg_err_t h1_init(conn_t *c)
{
    c->proto = P_H1;
    c->h1_scratch = malloc(c->srv->conf.max_header_list_size + 1);
    if (c->h1_scratch == NULL)
        return MG_E_NOMEM;
    llhttp_init(&c->parser, HTTP_REQUEST, &c->srv->h1settings);
    c->parser.data = c;
    return MG_OK;
}

/* A request we answer ourselves, before or instead of the handler (parse errors). */
static void h1_reject(conn_t *c, int status, const char *code, const char *msg)
{
    c->h1_close = true;
    if (c->h1s == NULL)
        c->h1s = stream_new(c, 0);
    if (c->h1s == NULL) {
        conn_close(c);
        return;
    }
    /* An answer that started is cut by a close. The handler that took the request learns why
     * first (on_refused: it logs the refusal's code, and resets the answer, which closes once
     * what is queued before it is out); else it learns it with on_close. */
    enter(c);
    bool started = c->h1s->responded;
    if ((!refuse_request(c->h1s, status, code, msg, false) || started) && !c->close_when_flushed)
        conn_close(c);
    leave(c);
}

/* A request whose head began and went to no one (neither the handler nor a refusal): the
 * client closed in the middle of it. Logged once, with what was read of it, as the client's
 * abort; the handler logs those it took when they close. */
static void h1_head_cut(conn_t *c)
{
    mg_srv_stream_t *s = c->h1s;
    if (s && !s->handled && !s->dispatched && !s->responded && !c->close_when_flushed)
        report_reject(s, 0, "client_aborted", false, NULL);
}

/*
 * After the client's EOF (h1_half_closed), once the parser has taken every byte it got and
 * waits for more: a request it has begun (head or body) will never end, and is the client's
 * abort, as with a close (the handler's on_close(false) calls its pod's stream off). The
 * connection then closes once the earlier requests' answers are out (the write timeout bounds
 * a client that stops reading them). Does nothing while an answer is due.
 */
static void h1_input_over(conn_t *c)
{
    if (c->h1_wait || c->close_when_flushed || c->lingering ||
        evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        return; /* h1_next comes back through h1_process */
    mg_srv_stream_t *s = c->h1s;
    if (s) {
        h1_head_cut(c);
        c->h1s = NULL;
        stream_close(s, false);
        if (c->dead)
            return;
    }
    c->close_when_flushed = true;
    if (out_empty(c))
        conn_close_flushed(c);
}

static void h1_process(conn_t *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
again:
    c->in_recv = true;
    while (!c->dead && !c->h1_wait && !c->close_when_flushed && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (c->h1_head_scan != HS_DONE) {
            h1_scan_head(c, v.iov_base, v.iov_len);
            if (c->h1_head_problem && c->h1_headers_done) { /* in the trailer section */
                evbuffer_drain(in, evbuffer_get_length(in));
                h1_reject(c, 400, "bad_request", c->h1_head_problem);
                break;
            }
        }
        llhttp_errno_t err = llhttp_execute(&c->parser, v.iov_base, v.iov_len);
        if (err == HPE_OK) {
            evbuffer_drain(in, v.iov_len);
            continue;
        }
        if (err == HPE_PAUSED) { /* at the trailer section, or at a message's end: the next
                                  * starts with its request line */
            evbuffer_drain(in, (size_t)(llhttp_get_error_pos(&c->parser) - (char *)v.iov_base));
            if (!c->h1_at_trailers)
                break;
            c->h1_at_trailers = false;
            llhttp_resume(&c->parser);
            continue;
        }
        evbuffer_drain(in, evbuffer_get_length(in));
        if (c->h1_err_too_large && c->h1_err_in_target) {
            char msg[160];
            snprintf(msg, sizeof(msg),
                     "request target longer than limits.max_header_list_size (%u bytes)",
                     (unsigned)c->srv->conf.max_header_list_size);
            h1_reject(c, 414, "uri_too_long", msg);
        } else if (c->h1_err_too_large) {
            char msg[160];
            too_large_why(msg, sizeof(msg), c->srv, c->h1s, c->h1_headers_done);
            h1_reject(c, 431, "headers_too_large", msg);
        } else if (c->h1_refused)
            h1_reject(c, c->h1_refused, c->h1_refused_code, c->h1_refused_msg);
        else if (err == HPE_PAUSED_UPGRADE || err == HPE_PAUSED_H2_UPGRADE)
            h1_reject(c, 400, "bad_request", "protocol upgrade is not supported");
        else {
            char msg[160];
            snprintf(msg, sizeof(msg), "malformed HTTP/1.1 request: %s",
                     llhttp_get_error_reason(&c->parser));
            h1_reject(c, 400, "bad_request", msg);
        }
        break;
    }
    c->in_recv = false;
    if (c->h1_wait && !c->h1_read_off && evbuffer_get_length(in) > MG_SRV_HIGH) {
        c->h1_read_off = true; /* pipelined input waits in the socket, not here */
        mg_outq_disable(&c->outq, c->bev, EV_READ);
    }
    /* the response may have completed while we were parsing: the next exchange, in this
     * frame (a call per pipelined request would grow the stack without bound) */
    if (!c->dead && c->h1s && c->h1s->out_ended && c->h1s->req_ended && h1_next(c))
        goto again;
    if (!c->dead && c->h1_discard && c->h1_wait) { /* the dropped body ended */
        c->h1_discard = false;
        if (h1_next(c))
            goto again;
    }
    if (!c->dead && c->h1_eof)
        h1_input_over(c);
}

/* Reading resumes after backpressure, unless the client's input has ended: the reader would
 * only meet the EOF again. */
static void h1_read_on(conn_t *c)
{
    c->h1_read_off = false;
    if (!c->h1_eof)
        mg_outq_enable(&c->outq, c->bev, EV_READ);
}

/* The current exchange is over (response ended and request read): next request or close. */
static void h1_finish(conn_t *c)
{
    if (h1_next(c))
        h1_process(c);
}

/* Closes the current exchange; true when the parser resumed for the next one. */
static bool h1_next(conn_t *c)
{
    mg_srv_stream_t *s = c->h1s;
    if (s) {
        c->h1s = NULL;
        stream_close(s, true);
    }
    if (c->dead)
        return false;
    if (c->h1_close || c->srv->shutting_down) {
        c->close_when_flushed = true;
        if (out_empty(c))
            conn_close_flushed(c);
        return false;
    }
    c->h1_wait = false;
    llhttp_resume(&c->parser);
    if (c->h1_read_off)
        h1_read_on(c);
    return true;
}

static const char *reason(int status)
{
    /* the IANA registry (RFC 9110 15 and the codes other RFCs added) */
    // clang-format off
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default: return "Status";
    }
    // clang-format on
}

/*
 * An answer that comes before the whole request (an error at the head, an upstream's early
 * answer) keeps the connection when the rest of the body is small and of known length: it is
 * read and dropped, as nginx discards a body, so a client that gets a 429 or a 401 for its POST
 * keeps its connection (and its TLS session). Anything else is answered with Connection: close,
 * since the decision must be in the response head.
 */
#define H1_DISCARD_MAX (1u << 20)

static bool h1_can_discard(const conn_t *c, const mg_srv_stream_t *s)
{
    /* a client told no 100 Continue may never send the body (RFC 9110 10.1.1): its next
     * request would be read as that body */
    return c->h1_headers_done && !(c->parser.flags & F_CHUNKED) &&
           c->parser.content_length <= H1_DISCARD_MAX && !(s->expect_100 && !s->continued);
}

/* The response ended before the request: drop the rest of the body and go on with the next
 * request, or close once flushed when h1_respond said so. */
static void h1_end_early(conn_t *c, mg_srv_stream_t *s)
{
    c->h1s = NULL;
    stream_close(s, true);
    if (c->dead)
        return;
    if (c->h1_close || c->srv->shutting_down) {
        c->close_when_flushed = true;
        if (out_empty(c) && !c->in_recv)
            conn_close_flushed(c);
        return;
    }
    c->h1_discard = true;
    if (c->h1_read_off)
        h1_read_on(c);
    if (!c->in_recv)
        h1_process(c);
}

/* A Content-Length on a 1xx or 204 (a pod's, passed on) is never sent: RFC 9110 8.6 forbids it,
 * and an HTTP/2 client resets a 204 whose content-length is not 0 as malformed. */
static bool length_forbidden(int status, const mg_hdr_t *h)
{
    return (status == 204 || status < 200) && h->name_len == 14 &&
           strncasecmp(h->name, "content-length", 14) == 0;
}

/* Writes the status line and the fields of a head (not its closing CRLF) to |out|. Returns
 * whether a content-length went with them. */
static bool h1_add_head(struct evbuffer *out, int status, const mg_hdr_t *h, size_t n)
{
    bool has_cl = false;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status, reason(status));
    for (size_t i = 0; i < n; i++) {
        if (length_forbidden(status, &h[i]))
            continue;
        if (h[i].name_len == 14 && strncasecmp(h[i].name, "content-length", 14) == 0)
            has_cl = true;
        evbuffer_add(out, h[i].name, h[i].name_len);
        evbuffer_add(out, ": ", 2);
        evbuffer_add(out, h[i].value, h[i].value_len);
        evbuffer_add(out, "\r\n", 2);
    }
    return has_cl;
}

static void h1_respond(mg_srv_stream_t *s, int status, const mg_hdr_t *h, size_t n, bool end)
{
    conn_t *c = s->c;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    bool has_cl = h1_add_head(out, status, h, n);
    s->h1_nobody = s->head || status == 204 || status == 304 || (status >= 100 && status < 200);
    if (!s->h1_nobody && !has_cl) {
        if (end)
            evbuffer_add(out, "content-length: 0\r\n", 19);
        else if (c->parser.http_major == 1 && c->parser.http_minor >= 1) {
            evbuffer_add(out, "transfer-encoding: chunked\r\n", 28);
            s->h1_chunked = true;
        } else
            c->h1_close = true; /* HTTP/1.0: the body ends with the connection */
    }
    /* said now: a client told keep-alive would send its next request. A 408 answers a client
     * that stopped sending its body: what it sends next is a new request, not the rest */
    if (!s->req_ended && (status == 408 || !h1_can_discard(c, s)))
        c->h1_close = true;
    if (c->h1_close || c->srv->shutting_down)
        evbuffer_add(out, "connection: close\r\n", 19);
    else if (c->parser.http_minor == 0) /* HTTP/1.0 closes unless told otherwise */
        evbuffer_add(out, "connection: keep-alive\r\n", 24);
    evbuffer_add(out, "\r\n", 2);
}

/* ---------- the handler API ---------- */

/* The three digits of |status|, NUL-terminated, into |st|. */
static void status_text(char st[4], int status)
{
    st[0] = (char)('0' + status / 100 % 10);
    st[1] = (char)('0' + status / 10 % 10);
    st[2] = (char)('0' + status % 10);
    st[3] = '\0';
}

/* |hdrs| less a content-length |status| forbids into nv[1..], uncopied (nghttp2 copies them);
 * returns how many. */
static size_t head_fields(nghttp2_nv *nv, int status, const mg_hdr_t *hdrs, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!length_forbidden(status, &hdrs[i]))
            nv[++k] = (nghttp2_nv){(uint8_t *)hdrs[i].name, (uint8_t *)hdrs[i].value,
                                   hdrs[i].name_len, hdrs[i].value_len,
                                   mg_hdr_no_index(&hdrs[i]) ? NGHTTP2_NV_FLAG_NO_INDEX
                                                             : NGHTTP2_NV_FLAG_NONE};
    return k;
}

/* A response head for nghttp2: :status, then |hdrs| less a content-length the status forbids;
 * *|m| receives the count. The fields are copied into the stream's arena: the caller's may be
 * gone (a pod's stream ended) before the frame leaves; nghttp2 then copies nothing. A head too
 * big for the arena (it holds the request's too) is left to nghttp2 to copy. NULL when the
 * arena cannot hold even the array. */
static nghttp2_nv *h2_head_nv(mg_srv_stream_t *s, int status, const mg_hdr_t *hdrs, size_t n,
                              size_t *m)
{
    nghttp2_nv *nv = mg_arena_alloc(&s->arena, sizeof(nghttp2_nv) * (n + 1));
    char *st = mg_arena_alloc(&s->arena, 4);
    if (nv == NULL || st == NULL)
        return NULL;
    bool copied = true;
    size_t k = 0; /* fields kept: nv[1..k] */
    for (size_t i = 0; copied && i < n; i++)
        if (!length_forbidden(status, &hdrs[i]))
            copied = mg_nv_copy(&s->arena, &nv[++k], hdrs[i].name, hdrs[i].name_len, hdrs[i].value,
                                hdrs[i].value_len, mg_hdr_no_index(&hdrs[i]));
    if (!copied)
        k = head_fields(nv, status, hdrs, n);
    status_text(st, status);
    nv[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)st, 7, 3,
                         NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
    *m = k + 1;
    return nv;
}

mg_err_t mg_srv_interim(mg_srv_stream_t *s, int status, const mg_hdr_t *hdrs, size_t n)
{
    conn_t *c = s->c;
    if (s->responded || status < 102 || status > 199)
        return MG_E_PROTO;
    if (s->ninterim >= MG_SRV_MAX_INTERIM)
        return MG_E_LIMIT;
    if (c->dead)
        return MG_OK; /* nobody to tell: on_close follows */
    if (c->proto == P_H1) {
        /* RFC 9110 15.2: never to an HTTP/1.0 client. And only for the exchange being
         * answered: a head for a later pipelined request would go out ahead of the earlier
         * answer. No such request reaches a handler today (the parser waits for each response
         * to end), so the second test only guards that: such an interim would be dropped. */
        if (c->parser.http_major != 1 || c->parser.http_minor == 0 || c->h1s != s)
            return MG_E_PROTO;
        s->ninterim++;
        struct evbuffer *out = bufferevent_get_output(c->bev);
        h1_add_head(out, status, hdrs, n);
        evbuffer_add(out, "\r\n", 2);
        return MG_OK;
    }
    /* Not from the stream's arena (h2_head_nv): stream_memory holds the request's head and
     * one response head, and up to MG_SRV_MAX_INTERIM interims copied there could leave too
     * little of it for the final head, which would then be replaced by RST_STREAM. nghttp2
     * copies these fields (no NO_COPY flag) and frees its copy once the frame is sent. */
    nghttp2_nv stack[16];
    nghttp2_nv *nv = n < 16 ? stack : malloc(sizeof(nghttp2_nv) * (n + 1));
    if (nv == NULL)
        return MG_E_NOMEM;
    char st[4];
    status_text(st, status);
    nv[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)st, 7, 3, NGHTTP2_NV_FLAG_NONE};
    size_t k = head_fields(nv, status, hdrs, n);
    enter(c);
    /* a HEADERS frame without END_STREAM, as the 100 Continue of dispatch_request; nghttp2
     * refuses it for a stream the client closed meanwhile */
    int rv = nghttp2_submit_headers(c->h2, NGHTTP2_FLAG_NONE, s->id, NULL, nv, k + 1, NULL);
    if (nv != stack)
        free(nv);
    if (rv == 0) {
        s->ninterim++;
        conn_flush(c);
    }
    leave(c);
    return rv == 0 ? MG_OK : rv == NGHTTP2_ERR_NOMEM ? MG_E_NOMEM : MG_E_PROTO;
}

mg_err_t mg_srv_respond(mg_srv_stream_t *s, int status, const mg_hdr_t *hdrs, size_t n, bool end)
{
    conn_t *c = s->c;
    if (s->responded)
        return MG_E_PROTO;
    s->responded = true;
    if (end)
        s->out_ended = true;
    enter(c);
    if (c->proto == P_H2) {
        size_t m;
        nghttp2_nv *nv = h2_head_nv(s, status, hdrs, n, &m);
        if (nv == NULL) {
            s->reset_by_us = true;
            nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        } else {
            nghttp2_data_provider prd = {.source.ptr = s, .read_callback = h2_read_body};
            nghttp2_submit_response(c->h2, s->id, nv, m, end || s->head ? NULL : &prd);
            if (s->head)
                s->out_ended = true;
        }
        conn_flush(c);
    } else {
        h1_respond(s, status, hdrs, n, end);
        if (end && s->req_ended && !c->in_recv)
            h1_finish(c);
        else if (end && !s->req_ended)
            h1_end_early(c, s);
    }
    leave(c);
    return MG_OK;
}

mg_err_t mg_srv_write(mg_srv_stream_t *s, const void *data, size_t len)
{
    conn_t *c = s->c;
    if (!s->responded || s->out_ended)
        return MG_E_PROTO;
    if (len == 0)
        return MG_OK;
    enter(c);
    if (c->proto == P_H2) {
        evbuffer_add(s->out, data, len);
        c->out_bytes += len;
        if (evbuffer_get_length(s->out) >= MG_SRV_HIGH || conn_over(c))
            s->want_drain = true;
        if (s->deferred) {
            s->deferred = false;
            nghttp2_session_resume_data(c->h2, s->id);
        }
        conn_flush(c);
    } else if (!s->h1_nobody) {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (s->h1_chunked)
            evbuffer_add_printf(out, "%zx\r\n", len);
        evbuffer_add(out, data, len);
        s->body_sent += len;
        if (s->h1_chunked)
            evbuffer_add(out, "\r\n", 2);
        if (evbuffer_get_length(out) >= MG_SRV_HIGH)
            s->want_drain = true;
    }
    leave(c);
    return MG_OK;
}

mg_err_t mg_srv_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    conn_t *c = s->c;
    if (!s->responded || s->out_ended)
        return MG_E_PROTO;
    s->out_ended = true;
    enter(c);
    if (c->proto == P_H2) {
        if (n && !s->head) {
            s->resp_trailers = mg_nv_copy_hdrs(&s->arena, trailers, n);
            s->nresp_trailers = s->resp_trailers ? n : 0;
        }
        if (s->deferred) {
            s->deferred = false;
            nghttp2_session_resume_data(c->h2, s->id);
        }
        conn_flush(c);
    } else {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (s->h1_chunked) {
            evbuffer_add(out, "0\r\n", 3);
            for (size_t i = 0; i < n; i++) {
                evbuffer_add(out, trailers[i].name, trailers[i].name_len);
                evbuffer_add(out, ": ", 2);
                evbuffer_add(out, trailers[i].value, trailers[i].value_len);
                evbuffer_add(out, "\r\n", 2);
            }
            evbuffer_add(out, "\r\n", 2);
        } else if (c->h1_close && !s->h1_nobody) {
            c->close_when_flushed = true; /* close-delimited body */
        }
        if (!s->req_ended) { /* the client is still sending */
            h1_end_early(c, s);
        } else if (!c->in_recv) {
            h1_finish(c);
        }
    }
    leave(c);
    return MG_OK;
}

size_t mg_srv_pending(const mg_srv_stream_t *s)
{
    if (s->c->proto == P_H2) {
        size_t n = evbuffer_get_length(s->out);
        return n < MG_SRV_HIGH && conn_over(s->c) ? MG_SRV_HIGH : n;
    }
    return evbuffer_get_length(bufferevent_get_output(s->c->bev));
}

void mg_srv_consume(mg_srv_stream_t *s, size_t n)
{
    conn_t *c = s->c;
    if (n > s->unconsumed)
        n = s->unconsumed;
    if (n == 0)
        return;
    s->unconsumed -= n;
    enter(c);
    if (c->proto == P_H2) {
        nghttp2_session_consume_stream(c->h2, s->id, n);
        c->pinned -= n;
        conn_credit(c);
        conn_flush(c);
    } else if (c->h1_read_off && s->unconsumed < MG_SRV_LOW) {
        h1_read_on(c);
        if (!c->in_recv)
            h1_process(c);
    }
    leave(c);
}

void mg_srv_keep(mg_srv_stream_t *s, size_t n)
{
    conn_t *c = s->c;
    if (c->proto != P_H2) {
        mg_srv_consume(s, n); /* one stream at a time: its own bound is the connection's */
        return;
    }
    if (n > s->unconsumed)
        n = s->unconsumed;
    if (n == 0)
        return;
    s->unconsumed -= n;
    s->kept += n;
    enter(c);
    nghttp2_session_consume_stream(c->h2, s->id, n);
    conn_flush(c);
    leave(c);
}

void mg_srv_kept(mg_srv_stream_t *s, size_t held)
{
    conn_t *c = s->c;
    if (held >= s->kept)
        return;
    size_t n = s->kept - held;
    s->kept = held;
    enter(c);
    c->pinned -= n;
    conn_credit(c); /* flushes what it submits */
    leave(c);
}

void mg_srv_reset(mg_srv_stream_t *s)
{
    conn_t *c = s->c;
    enter(c);
    if (c->proto == P_H2) {
        /* what the stream's answer already queued goes first (flushes are deferred to the
         * end of the turn, and the reset would drop them): a head and part of a body the
         * client then sees cut, as the access log says */
        if (s->responded && !c->dead && !c->in_recv && !c->flushing)
            flush_now(c);
        s->reset_by_us = true;
        nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        conn_flush(c);
    } else if (!c->dead && !out_empty(c)) {
        /* HTTP/1.1 cuts an answer by closing. What is still queued for a client that reads
         * slowly leaves first: earlier pipelined answers, whole, then this one's start, which
         * the close then cuts. No more requests are read. */
        c->close_when_flushed = true;
        mg_outq_disable(&c->outq, c->bev, EV_READ);
    } else {
        conn_close(c);
    }
    leave(c);
}

static size_t json_escape(char *dst, size_t cap, const char *s)
{
    size_t o = 0;
    for (; s && *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", ch);
        } else {
            dst[o++] = (char)ch;
        }
    }
    dst[o] = '\0';
    return o;
}

/* A gRPC call: HTTP/2 with content-type application/grpc, alone or with a +format or
 * parameters (gRPC-Web, which carries its status in the body, is not one). */
static bool is_grpc(const mg_srv_stream_t *s)
{
    if (s->c->proto != P_H2)
        return false;
    for (size_t i = 0; i < s->nhdrs; i++) {
        const mg_hdr_t *f = &s->hdrs[i];
        if (f->name_len == 12 && memcmp(f->name, "content-type", 12) == 0)
            return f->value_len >= 16 && strncasecmp(f->value, "application/grpc", 16) == 0 &&
                   (f->value_len == 16 || f->value[16] == '+' || f->value[16] == ';');
    }
    return false;
}

/* gRPC's mapping of HTTP statuses (doc/http-grpc-status-mapping.md), which Envoy uses for its
 * own answers too; a body or header section too large is RESOURCE_EXHAUSTED, as gRPC servers
 * say of a message too large. */
static int grpc_status_of(int status)
{
    switch (status) {
    case 400:
        return 13; /* INTERNAL */
    case 401:
        return 16; /* UNAUTHENTICATED */
    case 403:
        return 7; /* PERMISSION_DENIED */
    case 404:
    case 501:
        return 12; /* UNIMPLEMENTED */
    case 413:
    case 431:
        return 8; /* RESOURCE_EXHAUSTED */
    case 429:
    case 502:
    case 503:
    case 504:
        return 14; /* UNAVAILABLE */
    default:
        return 2; /* UNKNOWN */
    }
}

/* |text| percent-encoded for grpc-message: bytes outside 0x20-0x7e, and '%'. */
static size_t grpc_percent_encode(char *dst, size_t cap, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p && o + 4 <= cap; p++) {
        if (*p < 0x20 || *p > 0x7e || *p == '%') {
            dst[o++] = '%';
            dst[o++] = hex[*p >> 4];
            dst[o++] = hex[*p & 15];
        } else {
            dst[o++] = (char)*p;
        }
    }
    dst[o] = '\0';
    return o;
}

/* The error of mg_srv_error for a gRPC client, which reads no JSON body: a Trailers-Only
 * answer (HTTP 200, grpc-status, grpc-message "<code>: <message> (request id <id>)"), as
 * Envoy answers gRPC calls itself. Without it the client saw only "Received http2 header with
 * status: 502". */
static mg_err_t grpc_error(mg_srv_stream_t *s, int status, const char *code, const char *message,
                           const char *request_id, const mg_hdr_t *extra, size_t nextra)
{
    char text[768], msg[2304], st[8];
    snprintf(text, sizeof(text), request_id ? "%s: %s (request id %s)" : "%s: %s", code, message,
             request_id);
    size_t n = grpc_percent_encode(msg, sizeof(msg), text);
    snprintf(st, sizeof(st), "%d", grpc_status_of(status));
    mg_hdr_t h[16];
    size_t nh = 0;
    h[nh++] = (mg_hdr_t){"content-type", "application/grpc", 12, 16, MG_HPACK_INDEX};
    h[nh++] = (mg_hdr_t){"grpc-status", st, 11, strlen(st), MG_HPACK_INDEX};
    h[nh++] = (mg_hdr_t){"grpc-message", msg, 12, n, MG_HPACK_UNIQUE};
    for (size_t i = 0; i < nextra && nh < 16; i++)
        h[nh++] = extra[i];
    return mg_srv_respond(s, 200, h, nh, true);
}

/* The JSON error body (DESIGN.md's contract) into |body| (ERROR_BODY_MAX); returns its length. */
#define ERROR_BODY_MAX 900
static int error_body(char *body, const char *code, const char *message, const char *request_id)
{
    char msg[512], rid[160];
    json_escape(msg, sizeof(msg), message);
    json_escape(rid, sizeof(rid), request_id);
    int n;
    if (request_id)
        n = snprintf(body, ERROR_BODY_MAX,
                     "{\"error\":{\"code\":\"%s\",\"message\":\"%s\",\"request_id\":\"%s\"}}\n",
                     code, msg, rid);
    else
        n = snprintf(body, ERROR_BODY_MAX, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                     code, msg);
    if (n < 0 || n >= ERROR_BODY_MAX)
        n = (int)strlen(body);
    return n;
}

/* The body mg_srv_error would send |s|: none for gRPC (a Trailers-Only answer) or HEAD. */
static size_t error_answer_len(const mg_srv_stream_t *s, const char *code, const char *message,
                               const char *request_id)
{
    if (is_grpc(s) || s->head)
        return 0;
    char body[ERROR_BODY_MAX];
    return (size_t)error_body(body, code, message, request_id);
}

mg_err_t mg_srv_error(mg_srv_stream_t *s, int status, const char *code, const char *message,
                      const char *request_id, const mg_hdr_t *extra, size_t nextra)
{
    if (is_grpc(s))
        return grpc_error(s, status, code, message, request_id, extra, nextra);
    char body[ERROR_BODY_MAX], len[24];
    int n = error_body(body, code, message, request_id);
    snprintf(len, sizeof(len), "%d", n);
    mg_hdr_t h[16];
    size_t nh = 0;
    h[nh++] = (mg_hdr_t){"content-type", "application/json", 12, 16, MG_HPACK_INDEX};
    h[nh++] = (mg_hdr_t){"content-length", len, 14, strlen(len), MG_HPACK_INDEX};
    for (size_t i = 0; i < nextra && nh < 16; i++)
        h[nh++] = extra[i];
    conn_t *c = s->c;
    enter(c);
    /* headers are copied by nghttp2 and by the HTTP/1.1 writer */
    mg_err_t err = mg_srv_respond(s, status, h, nh, false);
    if (err == MG_OK && !c->dead)
        mg_srv_write(s, body, (size_t)n);
    if (err == MG_OK && !c->dead)
        err = mg_srv_end(s, NULL, 0);
    leave(c);
    return err;
}

/* ---------- I/O callbacks ---------- */

/* Produces the session's frames, and runs the drain callbacks they make room for. */
static void flush_now(conn_t *c)
{
    if (c->lingering) /* closed: the session sends nothing more */
        return;
    c->flushing = true;
    enter(c);
    do {
        c->need_flush = false;
        h2_flush(c);
    } while (c->need_flush && !c->dead);
    c->flushing = false;
    leave(c);
}

static void conn_flush(conn_t *c)
{
    if (c->dead || c->proto != P_H2)
        return;
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
    conn_t *c = arg;
    enter(c);
    if (!c->dead && !c->flushing)
        flush_now(c);
    bool alive = !c->dead;
    leave(c);
    return alive;
}

/* A metrics counter (relaxed: scrapes read it from another thread). */
static void count(atomic_ulong *n)
{
    atomic_fetch_add_explicit(n, 1, memory_order_relaxed);
}

/* TLS, once the handshake is done: ALPN picks the engine. The TLS filter may hand over the
 * first application bytes (which came with the client's Finished) before it reports the
 * handshake done (BEV_EVENT_CONNECTED): whichever comes first starts it. False when the
 * connection is closed. */
static bool tls_start(conn_t *c)
{
    if (c->proto != P_DETECT)
        return true;
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    count(SSL_session_reused(ssl) ? &c->srv->tls_resumed : &c->srv->tls_full);
    const unsigned char *alpn = NULL;
    unsigned int alen = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alen);
    bool h2 = alen == 2 && memcmp(alpn, "h2", 2) == 0;
    if ((h2 ? h2_init(c) : h1_init(c)) != MG_OK) {
        conn_close(c);
        return false;
    }
    if (h2)
        conn_flush(c); /* our SETTINGS */
    return true;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    enter(c);
    if (c->tls && !tls_start(c))
        goto out;
    if (c->proto == P_DETECT) {
        struct evbuffer *in = bufferevent_get_input(bev);
        size_t len = evbuffer_get_length(in);
        size_t cmp = len < H2_PREFACE_LEN ? len : H2_PREFACE_LEN;
        unsigned char *head = evbuffer_pullup(in, (ssize_t)cmp); /* at most 24 bytes, once */
        bool h2 = memcmp(head, H2_PREFACE, cmp) == 0;
        if (h2 && len < H2_PREFACE_LEN)
            goto out; /* wait for the rest of the preface */
        if ((h2 ? h2_init(c) : h1_init(c)) != MG_OK) {
            conn_close(c);
            goto out;
        }
    }
    if (c->proto == P_H2) {
        h2_recv(c);
        conn_flush(c);
    } else {
        h1_process(c);
    }
out:
    if (c->tls)
        tls_used(c);
    leave(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    conn_t *c = arg;
    enter(c);
    if (c->tls)
        tls_used(c);
    if (c->proto == P_H2) {
        conn_flush(c);
    } else if (c->proto == P_H1) {
        mg_srv_stream_t *s = c->h1s;
        if (s && s->want_drain &&
            evbuffer_get_length(bufferevent_get_output(bev)) < MG_SRV_LOW) {
            s->want_drain = false;
            if (s->handled)
                s->h->on_drain(s);
        }
    }
    if (!c->dead && c->close_when_flushed && out_empty(c))
        conn_close_flushed(c);
    if (!c->dead)
        mg_outq_bev_written(&c->outq);
    leave(c);
}

/*
 * The client ended its input: a half-close (shutdown(SHUT_WR): nc -N, load balancers' probes,
 * HTTP/1.0-style clients) or a close, which looks the same until a write fails. With
 * conf.h1_answer_half_closed, cleartext HTTP/1.1 answers the requests that came whole, in
 * order, and then closes, as HAProxy does without abortonclose; nothing more is read
 * (h1_read_on). A client that closed for good makes the first of those writes fail (EPIPE, a
 * reset), which closes the connection. The cost: a client that gave up and closed while its
 * pod works has that pod's stream called off only when its answer fails to go out, not at
 * once, which is why the gateway leaves it off by default (as Envoy, nghttpx and nginx call
 * the request off at the EOF).
 * TLS closes at once: a client that half-closes after its close_notify is rare, and the TLS
 * filter would have to write after the peer's close. HTTP/2 too: it has no half-closed
 * connection (a client done with one sends GOAWAY, and waits for its answers before its FIN).
 */
static void h1_half_closed(conn_t *c)
{
    c->h1_eof = true;
    h1_process(c);
}

static void on_event(struct bufferevent *bev, short events, void *arg)
{
    conn_t *c = arg;
    enter(c);
    if (events & BEV_EVENT_CONNECTED) { /* TLS handshake done */
        tls_start(c);
        leave(c);
        return;
    }
    if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        /* an error before the handshake ended; not a probe that connected and closed */
        if (c->tls && c->proto == P_DETECT && (events & BEV_EVENT_ERROR))
            count(&c->srv->tls_failed);
        if (events & BEV_EVENT_TIMEOUT) {
            for (mg_srv_stream_t *s = c->streams; s; s = s->next_in_conn)
                s->close_why = "client_write_timeout";
            MG_LOG(MG_LOG_INFO, "h2server",
                   "conn=%s: client took nothing of %zu queued bytes for %u ms: closing",
                   c->client, evbuffer_get_length(bufferevent_get_output(bev)),
                   c->srv->conf.client_write_ms);
        }
        if ((events & BEV_EVENT_EOF) && !(events & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) &&
            c->proto == P_H1 && !c->tls && c->srv->conf.h1_answer_half_closed) {
            if (!c->h1_eof) /* once: the reader stopped at it */
                h1_half_closed(c);
            leave(c);
            return;
        }
        if (c->proto == P_H1 && (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
            h1_head_cut(c);
        if (events & BEV_EVENT_ERROR) {
            unsigned long e = c->tls ? bufferevent_get_openssl_error(bev) : 0;
            if (e) {
                char buf[200];
                ERR_error_string_n(e, buf, sizeof(buf));
                MG_LOG(MG_LOG_DEBUG, "h2server", "conn=%s: TLS error: %s", c->client, buf);
            }
        }
        conn_close(c);
    }
    leave(c);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    conn_t *c = arg;
    if (c->lingering) {
        conn_close(c);
        return;
    }
    enter(c);
    if (c->trim_due) { /* first phase: trim, then wait for the real idle timeout */
        trim(c);
        c->trim_due = false;
        if (c->idle_at_us) {
            int64_t left = c->idle_at_us - mg_mono_us();
            left = left > 0 ? left : 0;
            struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
            evtimer_add(c->idle_timer, &tv);
        }
        leave(c);
        return;
    }
    if (c->proto == P_H1 && c->h1s && !c->h1s->handled && !c->h1s->responded) {
        /* a head begun and not finished: answered and logged, as nginx's client_header_timeout
         * does, so a slow client (or a slowloris) leaves a trace */
        char msg[120];
        snprintf(msg, sizeof(msg), "the request head did not come whole within %u ms",
                 (unsigned)c->srv->conf.client_idle_ms);
        h1_reject(c, 408, "client_timeout", msg);
    } else if (c->proto == P_H2 && c->head_open) {
        /* a header block begun and not ended holds the connection (no other frame may come
         * until it ends): logged as a 408, then closed with GOAWAY, as nghttpx's read timeout.
         * Trailers end a request the handler has: it logs it as it closes, with the reason,
         * and so do the handlers of the other streams the close cuts (not client_aborted). */
        if (c->hdr_stream && !c->hdr_stream->handled)
            report_reject(c->hdr_stream, 408, "client_timeout", false, NULL);
        for (mg_srv_stream_t *s = c->streams; s; s = s->next_in_conn)
            if (s->close_why == NULL)
                s->close_why = "client_timeout";
        c->head_open = false;
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->h2), NGHTTP2_NO_ERROR,
                              NULL, 0);
        c->close_when_flushed = true;
        conn_flush(c);
    } else if (c->nstreams == 0) {
        if (c->proto == P_H2) {
            nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(c->h2),
                                  NGHTTP2_NO_ERROR, NULL, 0);
            c->close_when_flushed = true;
            conn_flush(c);
        } else {
            if (c->tls && c->proto == P_DETECT) /* a handshake that stalled: it failed */
                count(&c->srv->tls_failed);
            conn_close(c);
        }
    }
    leave(c);
}

/* Marks a socket bufferevent that no TLS filter has taken yet (on_accept); never called. */
static void lower_untaken(struct bufferevent *bev, short what, void *arg)
{
    (void)bev, (void)what, (void)arg;
}

/*
 * PROXY protocol (conf.proxy_protocol): a connection waits here, not yet a conn_t, until its
 * header has come whole; then the connection starts as any other, with the client's address.
 * Bytes are looked at with MSG_PEEK and taken off the socket only as far as they are the
 * header's, so what follows it (a TLS ClientHello, the HTTP/2 preface) stays in the socket for
 * the connection. While the header is incomplete every byte so far is the header's: those are
 * read into the wait's buffer, so the socket does not stay readable for them, and a client
 * that leaves shows at once. A version 2 header's TLVs past the addresses are read and
 * dropped. No whole, valid header within PP_TIMEOUT_MS, or anything that is not one: closed,
 * never served.
 */
#define PP_TIMEOUT_MS 10000

typedef struct pp_wait {
    mg_srv_t *srv;
    int fd;
    bool tls;
    struct event *readable; /* with the deadline as its timeout */
    int64_t deadline_us;
    uint8_t buf[MG_PROXYPROTO_MAX];
    size_t have;        /* header bytes read into |buf| */
    size_t skip;        /* version 2 TLV bytes still to read and drop */
    mg_proxyproto_t pp; /* the header, once its addresses are known */
    char client[64], client_ip[48];
    struct pp_wait *prev, *next;
} pp_wait_t;

static void conn_start(mg_srv_t *srv, int fd, bool tls, const char *client, const char *ip);

/* "ip:port", or "[v6]:port": how a connection's peer is named in logs. */
static void client_text(char *out, size_t cap, int family, const char *ip, unsigned port)
{
    snprintf(out, cap, family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
}

/* Ends the wait; closes the socket unless it goes on to a connection (|keep|). */
static void pp_end(pp_wait_t *w, bool keep)
{
    mg_srv_t *srv = w->srv;
    if (w->prev)
        w->prev->next = w->next;
    else
        srv->pp_waits = w->next;
    if (w->next)
        w->next->prev = w->prev;
    if (w->readable)
        event_free(w->readable);
    if (!keep)
        close(w->fd);
    nconns_add(srv, -1);
    accepting_update(srv); /* conn_start counts a kept one again */
    free(w);
}

static void pp_refuse(pp_wait_t *w, const char *why)
{
    unsigned long skipped;
    if (mg_log_limit_pass(&w->srv->abuse_log, &skipped))
        MG_LOG(MG_LOG_WARN, "h2server",
               "conn=%s: %s: closing (proxy_protocol is on) (%lu similar suppressed)", w->client,
               why, skipped);
    pp_end(w, false);
}

/* Waits for more bytes until the deadline; refuses the wait (freed) once it has passed. */
static void pp_arm(pp_wait_t *w)
{
    int64_t left = w->deadline_us - mg_mono_us();
    if (left <= 0) {
        pp_refuse(w, "no whole PROXY protocol header within 10 s");
        return;
    }
    struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
    event_add(w->readable, &tv);
}

static bool gone(ssize_t n)
{
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void on_pp(evutil_socket_t fd, short what, void *arg)
{
    pp_wait_t *w = arg;
    (void)what;
    if (w->skip == 0) {
        ssize_t n = recv(fd, w->buf + w->have, sizeof(w->buf) - w->have, MSG_PEEK);
        if (gone(n)) {
            pp_end(w, false); /* left before its header */
            return;
        }
        size_t got = n > 0 ? (size_t)n : 0, total = w->have + got;
        mg_proxyproto_result_t r = mg_proxyproto_parse(w->buf, total, &w->pp);
        if (r == MG_PROXYPROTO_INVALID) {
            pp_refuse(w, "not a PROXY protocol header");
            return;
        }
        /* the header's bytes of those seen: all of them while it is incomplete */
        size_t mine = r == MG_PROXYPROTO_MORE ? total : w->pp.len < total ? w->pp.len : total;
        if (mine > w->have &&
            recv(fd, w->buf + w->have, mine - w->have, 0) != (ssize_t)(mine - w->have)) {
            pp_end(w, false);
            return;
        }
        w->have = mine;
        if (r == MG_PROXYPROTO_MORE) {
            pp_arm(w);
            return;
        }
        w->skip = w->pp.len - mine;
    } else {
        uint8_t drop[1024];
        ssize_t n = recv(fd, drop, w->skip < sizeof(drop) ? w->skip : sizeof(drop), 0);
        if (gone(n)) {
            pp_end(w, false);
            return;
        }
        w->skip -= n > 0 ? (size_t)n : 0;
    }
    if (w->skip > 0) {
        pp_arm(w);
        return;
    }
    if (w->pp.has_addr) {
        client_text(w->client, sizeof(w->client), w->pp.family, w->pp.ip, w->pp.port);
        snprintf(w->client_ip, sizeof(w->client_ip), "%s", w->pp.ip);
    }
    mg_srv_t *srv = w->srv;
    bool tls = w->tls;
    char client[64], ip[48];
    memcpy(client, w->client, sizeof(client));
    memcpy(ip, w->client_ip, sizeof(ip));
    pp_end(w, true);
    conn_start(srv, fd, tls, client, ip);
}

static void pp_start(mg_srv_t *srv, int fd, bool tls, const char *client, const char *ip)
{
    pp_wait_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        close(fd);
        return;
    }
    w->srv = srv;
    w->fd = fd;
    w->tls = tls;
    w->deadline_us = mg_mono_us() + PP_TIMEOUT_MS * 1000LL;
    snprintf(w->client, sizeof(w->client), "%s", client);
    snprintf(w->client_ip, sizeof(w->client_ip), "%s", ip);
    w->next = srv->pp_waits;
    if (w->next)
        w->next->prev = w;
    srv->pp_waits = w;
    nconns_add(srv, 1);
    accepting_update(srv);
    w->readable = event_new(srv->base, fd, EV_READ, on_pp, w);
    if (w->readable == NULL) {
        pp_end(w, false);
        return;
    }
    pp_arm(w);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    mg_srv_t *srv = arg;
    srv->accepted++;
    bool tls = false; /* the listener's slot tells: odd slots are TLS */
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i] == l)
            tls = (i & 1) != 0;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char ip[INET6_ADDRSTRLEN] = "?", client[64] = "";
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        client_text(client, sizeof(client), AF_INET, ip, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        client_text(client, sizeof(client), AF_INET6, ip, ntohs(in6->sin6_port));
    }
    (void)salen;
    if (srv->conf.proxy_protocol)
        pp_start(srv, fd, tls, client, ip);
    else
        conn_start(srv, fd, tls, client, ip);
}

/* A connection of |fd| from |client| ("ip:port", |ip| alone), on a TLS listener or not. */
static void conn_start(mg_srv_t *srv, int fd, bool tls, const char *client, const char *ip)
{
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->srv = srv;
    c->tls = tls;
    snprintf(c->client, sizeof(c->client), "%s", client);
    snprintf(c->client_ip, sizeof(c->client_ip), "%s", ip);
    struct in_addr a4; /* parsed once here, not per request by whoever needs the bytes */
    if (inet_pton(AF_INET, ip, &a4) == 1) {
        c->client_addr[10] = c->client_addr[11] = 0xff;
        memcpy(c->client_addr + 12, &a4, 4);
    } else if (inet_pton(AF_INET6, ip, c->client_addr) != 1) {
        memset(c->client_addr, 0, sizeof(c->client_addr));
    }
    if (tls) {
        /* a filter over a socket bufferevent, which the queue reads and writes as a cleartext
         * connection's (common/outq.h): one readv per readable event, and the records of a
         * turn written with one writev at its end. Over the socket directly, the filter read
         * each record with two read()s and a third that failed, and wrote in the next turn,
         * after registering EPOLLOUT (an epoll_ctl) and before unregistering it (another) */
        SSL *ssl = SSL_new(srv->tls);
        c->lower = ssl ? bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
        /* A filter that fails after taking the socket bufferevent (SSL_clear out of memory)
         * frees it itself, which clears its callbacks; one that fails before leaves it to us.
         * A marker callback tells which (refcounts cannot: the filter drops its own later). */
        if (c->lower)
            bufferevent_setcb(c->lower, NULL, NULL, lower_untaken, NULL);
        c->bev = c->lower ? bufferevent_openssl_filter_new(srv->base, c->lower, ssl,
                                                           BUFFEREVENT_SSL_ACCEPTING,
                                                           BEV_OPT_CLOSE_ON_FREE)
                          : NULL;
        if (c->bev) {
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        } else if (c->lower) { /* the failed filter freed |ssl|; freeing this closes |fd| */
            bufferevent_event_cb still_ours = NULL;
            bufferevent_getcb(c->lower, NULL, NULL, &still_ours, NULL);
            if (still_ours == lower_untaken)
                bufferevent_free(c->lower);
            c->lower = NULL;
            fd = -1;
        } else if (ssl) {
            SSL_free(ssl);
        }
    } else {
        c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    c->idle_timer = evtimer_new(srv->base, on_idle, c);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    nconns_add(srv, 1);
    accepting_update(srv);
    if (c->bev == NULL || c->idle_timer == NULL) {
        if (c->bev == NULL && fd >= 0)
            close(fd);
        conn_close(c);
        return;
    }
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
    struct bufferevent *sock = c->lower ? c->lower : c->bev;
    if (srv->conf.client_write_ms) {
        /* a client that stops reading while output waits: the timer runs while the socket's
         * bufferevent waits to write, restarts with every write that makes progress, and
         * fires on_event(BEV_EVENT_TIMEOUT) (through the TLS filter, which passes it on) */
        struct timeval wt = {srv->conf.client_write_ms / 1000,
                             (srv->conf.client_write_ms % 1000) * 1000};
        bufferevent_set_timeouts(sock, NULL, &wt);
    }
    /* the queue writes and its reader reads (common/outq.h); attached first, the socket
     * bufferevent's own EV_READ and EV_WRITE are never switched on (an epoll_ctl each) */
    bool attached = tls ? mg_outq_attach_filter(srv->outq, &c->outq, c->lower, c->bev, c)
                        : mg_outq_attach(srv->outq, &c->outq, c->bev, on_write, c);
    if (attached)
        mg_outq_set_prepare(&c->outq, conn_prepare);
    else if (tls)
        mg_outq_attach_prepare(srv->outq, &c->outq, conn_prepare, c);
    mg_outq_enable(&c->outq, c->bev, attached ? EV_READ : EV_READ | EV_WRITE);
    idle_arm(c); /* also bounds how long a silent client may hold a handshake */
    if (tls)
        tls_sweep_arm(srv); /* the handshake's buffers */
}

/* ---------- server ---------- */

/*
 * accept() failing for want of a descriptor or of memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
 * leaves the connection in the listen queue, so the listener is readable again at once: a
 * loop that kept accepting would spin at 100% CPU, starving its connections, and (libevent's
 * default) write a warning per attempt, hundreds of thousands of lines a second. Like nginx,
 * the worker stops accepting for ACCEPT_PAUSE_MS instead, and says so at most once a second.
 */
#define ACCEPT_PAUSE_MS 100

static void listeners_enable(mg_srv_t *srv, bool on)
{
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i])
            (on ? evconnlistener_enable : evconnlistener_disable)(srv->listeners[i]);
}

/*
 * The connection limit (conf.max_conns; HAProxy's maxconn, nghttpx's
 * worker-frontend-connections): at the limit the worker stops accepting, and connections
 * beyond it wait in the kernel's listen queue, unanswered, instead of each costing a
 * descriptor and memory here. Accepting resumes when one closes. Called whenever the count
 * changes.
 */
static void accepting_update(mg_srv_t *srv)
{
    if (srv->conf.max_conns == 0 || srv->shutting_down)
        return;
    bool full = mg_srv_nconns(srv) >= srv->conf.max_conns;
    if (full == srv->at_conn_limit)
        return;
    srv->at_conn_limit = full;
    if (full) {
        listeners_enable(srv, false);
        count(&srv->pauses_limit);
        unsigned long skipped;
        if (mg_log_limit_pass(&srv->limit_log, &skipped))
            MG_LOG(MG_LOG_WARN, "h2server",
                   "%zu client connections on this worker, its limit (limits.max_client_conns): "
                   "not accepting until one closes (%lu more such pauses not logged)",
                   mg_srv_nconns(srv), skipped);
    } else if (!evtimer_pending(srv->accept_pause, NULL)) {
        listeners_enable(srv, true);
    }
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    mg_srv_t *srv = arg;
    if (!srv->at_conn_limit)
        listeners_enable(srv, true);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    mg_srv_t *srv = arg;
    int err = EVUTIL_SOCKET_ERROR();
    listeners_enable(srv, false);
    count(&srv->pauses_error);
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
    evtimer_add(srv->accept_pause, &tv);
    unsigned long skipped;
    if (mg_log_limit_pass(&srv->accept_log, &skipped)) {
        struct rlimit rl = {0, 0};
        getrlimit(RLIMIT_NOFILE, &rl);
        MG_LOG(MG_LOG_WARN, "h2server",
               "accept: %s (open-files limit %llu, %zu client connections on this worker): not "
               "accepting for %d ms (%lu more such pauses not logged)",
               strerror(err), (unsigned long long)rl.rlim_cur, mg_srv_nconns(srv),
               ACCEPT_PAUSE_MS, skipped);
    }
}

static void on_final_goaway(evutil_socket_t fd, short what, void *arg);

mg_srv_t *mg_srv_new(struct event_base *base, const mg_srv_conf_t *conf,
                     const mg_srv_handler_t *h, void *ud, SSL_CTX *tls)
{
    mg_srv_t *srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return NULL;
    srv->base = base;
    srv->conf = *conf;
    if (srv->conf.max_headers == 0)
        srv->conf.max_headers = 100;
    if (srv->conf.stream_memory == 0)
        srv->conf.stream_memory = srv->conf.max_header_list_size * 2 + 16384;
    srv->h = h;
    srv->ud = ud;
    if ((srv->tls = tls) != NULL)
        SSL_CTX_up_ref(tls);
    srv->zmap.run = ZPAGE;
    srv->zframe.run = 5 * ZPAGE;
    srv->zring.run = 1024;
    if ((srv->small = mg_smalloc_new()) == NULL || (srv->outq = mg_outq_new(base)) == NULL ||
        (srv->accept_pause = evtimer_new(base, on_accept_resume, srv)) == NULL ||
        (srv->tls_sweep = evtimer_new(base, on_tls_sweep, srv)) == NULL ||
        (srv->final_goaway = evtimer_new(base, on_final_goaway, srv)) == NULL ||
        nghttp2_session_callbacks_new(&srv->cbs) != 0 || nghttp2_option_new(&srv->opt) != 0) {
        mg_srv_free(srv);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(srv->cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback2(srv->cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(srv->cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(srv->cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(srv->cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(srv->cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(srv->cbs, on_invalid_frame);
    nghttp2_option_set_no_auto_window_update(srv->opt, 1);
    nghttp2_option_set_no_closed_streams(srv->opt, 1); /* closed streams serve no priority */
    nghttp2_option_set_max_send_header_block_length(srv->opt, 256 * 1024);
    /* premature_close counts what this counts, and more, and cuts first */
    nghttp2_option_set_stream_reset_rate_limit(srv->opt, 2 * RESET_BURST, 2 * RESET_RATE);

    llhttp_settings_init(&srv->h1settings);
    srv->h1settings.on_message_begin = h1_on_message_begin;
    srv->h1settings.on_url = h1_on_url;
    srv->h1settings.on_method_complete = h1_on_method_complete;
    srv->h1settings.on_url_complete = h1_on_url_complete;
    srv->h1settings.on_header_field = h1_on_field;
    srv->h1settings.on_header_value = h1_on_value;
    srv->h1settings.on_header_field_complete = h1_on_field_complete;
    srv->h1settings.on_header_value_complete = h1_on_value_complete;
    srv->h1settings.on_headers_complete = h1_on_headers_complete;
    srv->h1settings.on_body = h1_on_body;
    srv->h1settings.on_chunk_extension_name = h1_on_chunk_ext;
    srv->h1settings.on_chunk_extension_value = h1_on_chunk_ext;
    srv->h1settings.on_chunk_header = h1_on_chunk_header;
    srv->h1settings.on_message_complete = h1_on_message_complete;
    return srv;
}

mg_err_t mg_srv_listen(mg_srv_t *srv, int fd, bool tls)
{
    /* even slots are cleartext, odd slots TLS: on_accept reads the kind from the slot */
    size_t slot = srv->nlisteners;
    if ((slot & 1) != (tls ? 1u : 0u))
        srv->listeners[slot++] = NULL;
    if (slot >= MAX_LISTENERS || (tls && srv->tls == NULL))
        return MG_E_CONFIG;
    /* backlog 0: |fd| listens already, with the backlog its opener chose (common/listen.c:
     * 4096); -1 would make libevent call listen(fd, 128) again and shrink it */
    struct evconnlistener *l = evconnlistener_new(
        srv->base, on_accept, srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
    if (l == NULL)
        return MG_E_IO;
    evconnlistener_set_error_cb(l, on_accept_error);
    srv->listeners[slot] = l;
    srv->nlisteners = slot + 1;
    return MG_OK;
}

/* The last GOAWAY of a graceful shutdown, with the last stream the connection took: streams
 * the client opened before it are served, later ones it may retry elsewhere. */
static void on_final_goaway(evutil_socket_t fd, short what, void *arg)
{
    mg_srv_t *srv = arg;
    conn_t *next;
    (void)fd, (void)what;
    for (conn_t *c = srv->conns; c; c = next) {
        next = c->next;
        if (c->proto != P_H2 || c->dead)
            continue;
        enter(c);
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->h2), NGHTTP2_NO_ERROR,
                              NULL, 0);
        conn_flush(c);
        leave(c);
    }
}

void mg_srv_shutdown(mg_srv_t *srv)
{
    srv->shutting_down = true;
    evtimer_del(srv->accept_pause);
    while (srv->pp_waits) /* not connections yet: nothing of theirs was read */
        pp_end(srv->pp_waits, false);
    for (size_t i = 0; i < srv->nlisteners; i++) {
        if (srv->listeners[i])
            evconnlistener_free(srv->listeners[i]);
        srv->listeners[i] = NULL;
    }
    conn_t *next;
    for (conn_t *c = srv->conns; c; c = next) {
        next = c->next;
        enter(c);
        if (c->proto == P_H2) {
            /* RFC 9113 6.8: first a GOAWAY naming stream 2^31-1, so that requests already on
             * their way are served rather than lost in the race; the real last stream goes out
             * a round trip (FINAL_GOAWAY_MS, as nghttpx) later */
            nghttp2_submit_shutdown_notice(c->h2);
            conn_flush(c);
        } else if (c->proto == P_DETECT || c->h1s == NULL) {
            conn_close(c);
        } else {
            c->h1_close = true;
        }
        leave(c);
    }
    struct timeval tv = {FINAL_GOAWAY_MS / 1000, (FINAL_GOAWAY_MS % 1000) * 1000};
    evtimer_add(srv->final_goaway, &tv);
}

uint64_t mg_srv_accepted(const mg_srv_t *srv)
{
    return srv->accepted;
}

size_t mg_srv_nconns(const mg_srv_t *srv)
{
    return atomic_load_explicit(&srv->nconns, memory_order_relaxed);
}

void mg_srv_accept_pauses(const mg_srv_t *srv, unsigned long *at_limit, unsigned long *on_error)
{
    *at_limit = atomic_load_explicit(&srv->pauses_limit, memory_order_relaxed);
    *on_error = atomic_load_explicit(&srv->pauses_error, memory_order_relaxed);
}

void mg_srv_tls_handshakes(const mg_srv_t *srv, unsigned long *full, unsigned long *resumed,
                           unsigned long *failed)
{
    *full = atomic_load_explicit(&srv->tls_full, memory_order_relaxed);
    *resumed = atomic_load_explicit(&srv->tls_resumed, memory_order_relaxed);
    *failed = atomic_load_explicit(&srv->tls_failed, memory_order_relaxed);
}

void mg_srv_free(mg_srv_t *srv)
{
    if (srv == NULL)
        return;
    srv->shutting_down = true; /* no accepting_update while the connections go */
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i])
            evconnlistener_free(srv->listeners[i]);
    if (srv->accept_pause)
        event_free(srv->accept_pause);
    if (srv->tls_sweep)
        event_free(srv->tls_sweep);
    if (srv->final_goaway)
        event_free(srv->final_goaway);
    while (srv->pp_waits)
        pp_end(srv->pp_waits, false);
    while (srv->conns) {
        conn_t *c = srv->conns;
        /* the gateway cuts what is left (the drain deadline passed): not the client's doing */
        for (mg_srv_stream_t *s = c->streams; s; s = s->next_in_conn)
            if (s->close_why == NULL)
                s->close_why = "shutdown";
        c->busy = 0;
        c->dead = true;
        conn_free(c);
    }
    mg_srv_trim(srv);
    if (srv->cbs)
        nghttp2_session_callbacks_del(srv->cbs);
    if (srv->opt)
        nghttp2_option_del(srv->opt);
    zpool_clear(&srv->zmap);
    zpool_clear(&srv->zframe);
    zpool_clear(&srv->zring);
    mg_smalloc_free(srv->small); /* after the sessions: they gave their blocks back */
    mg_outq_free(srv->outq);     /* after the connections: they left it */
    SSL_CTX_free(srv->tls);      /* after the connections: each SSL holds its own reference */
    free(srv);
}

void mg_srv_set_tls(mg_srv_t *srv, SSL_CTX *tls)
{
    SSL_CTX_up_ref(tls);
    SSL_CTX_free(srv->tls);
    srv->tls = tls;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x02h2\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no ALPN match: HTTP/1.1 */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

void mg_srv_trim(mg_srv_t *srv)
{
    while (srv->free_streams) {
        mg_srv_stream_t *s = srv->free_streams;
        srv->free_streams = s->next_in_conn;
        if (s->out)
            evbuffer_free(s->out);
        free(s);
    }
    srv->nfree = 0;
}

static void set_keep_buffers(void)
{
    tls_keep_buffers = mg_srv_free_buffers_safe(OpenSSL_version_num());
}

/* Why OpenSSL refused a file, in an operator's words where its own say little ("no start
 * line", or "unsupported" from the decoder in front of it); the queue is cleared, so no later
 * TLS call on this thread reads it as its own. */
static const char *tls_file_why(char *buf, size_t len)
{
    unsigned long first = ERR_peek_error(), e;
    const char *known = NULL;
    while (known == NULL && (e = ERR_get_error()) != 0) {
        int reason = ERR_GET_REASON(e);
        if (ERR_SYSTEM_ERROR(e))
            known = strerror(reason);
        else if (ERR_GET_LIB(e) == ERR_LIB_PEM && reason == PEM_R_NO_START_LINE)
            known = "not PEM, or not the right kind (no matching \"-----BEGIN\" line)";
        else if (ERR_GET_LIB(e) == ERR_LIB_X509 && reason == X509_R_KEY_VALUES_MISMATCH)
            known = "not the key of the certificate";
        else if (ERR_GET_LIB(e) == ERR_LIB_OSSL_DECODER && reason == ERR_R_UNSUPPORTED)
            known = "nothing in it reads as one (PEM expected)";
    }
    ERR_clear_error();
    if (known == NULL)
        known = first && ERR_reason_error_string(first) ? ERR_reason_error_string(first)
                                                        : "unknown OpenSSL error";
    snprintf(buf, len, "%s", known);
    return buf;
}

/* An encrypted key is refused, never prompted for: OpenSSL's default asks the terminal (a
 * start-up, or --check-config, would wait on it) or fails with "processing error". */
static int no_passphrase(char *buf, int size, int rwflag, void *asked)
{
    (void)buf, (void)size, (void)rwflag;
    *(bool *)asked = true;
    return 0;
}

SSL_CTX *mg_srv_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* TLS 1.2: forward secrecy and AEAD only (Mozilla "intermediate"). TLS 1.3: AES-128-GCM
     * first (OpenSSL's default order puts AES-256 first, and with server preference every
     * client would pay for the longer key schedule and 14 rounds for no practical gain) */
    SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                  "TLS_CHACHA20_POLY1305_SHA256");
    /* once: a reload makes contexts on the main thread while the workers read the flag */
    pthread_once(&keep_buffers_once, set_keep_buffers); /* see TLS_SWEEP_MS */
    if (!tls_keep_buffers)
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    char why[160];
    bool asked = false;
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, &asked);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errlen, "TLS certificate '%s': %s", cert, tls_file_why(why, sizeof(why)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    bool loaded = SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1;
    if (!loaded || SSL_CTX_check_private_key(ctx) != 1) {
        tls_file_why(why, sizeof(why));
        /* a key of another type (RSA for an EC certificate) loads, and OpenSSL then says
         * "no certificate assigned", which points the wrong way */
        if (loaded)
            snprintf(err, errlen,
                     "TLS key '%s': not the key of the certificate '%s' (a key of another type)",
                     key, cert);
        else
            snprintf(err, errlen, "TLS key '%s': %s", key,
                     asked ? "encrypted with a passphrase, which is not read: give the key "
                             "unencrypted (openssl pkey -in KEY -out PLAIN)"
                           : why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL); /* |asked| goes out of scope */
    SSL_CTX_set_default_passwd_cb(ctx, NULL);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    return ctx;
}

bool mg_srv_tls_ctx_describe(SSL_CTX *ctx, char *buf, size_t len, int64_t *not_after)
{
    *not_after = 0;
    X509 *x = SSL_CTX_get0_certificate(ctx);
    BIO *b = BIO_new(BIO_s_mem());
    if (x == NULL || b == NULL) {
        BIO_free(b);
        snprintf(buf, len, "(no certificate)");
        return false;
    }
    X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
    BIO_puts(b, ", valid until ");
    ASN1_TIME_print(b, X509_get0_notAfter(x));
    char *text;
    long n = BIO_get_mem_data(b, &text);
    snprintf(buf, len, "%.*s", (int)n, text);
    BIO_free(b);
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
        *not_after = (int64_t)timegm(&tm);
    return X509_cmp_current_time(X509_get0_notAfter(x)) < 0;
}
