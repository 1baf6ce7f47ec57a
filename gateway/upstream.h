/*
 * gateway/upstream.h - connections to pods: pooled, multiplexed HTTP/2 (h2c prior knowledge)
 * and keep-alive HTTP/1.1, behind one streaming interface.
 *
 * One mg_upstreams_t per worker thread, on that worker's event_base; pools are keyed by pod
 * address and protocol. An HTTP/2 pool reuses a connection while it has fewer active streams
 * than max_streams_per_conn (and than the pod's SETTINGS_MAX_CONCURRENT_STREAMS), else opens
 * another. An HTTP/1.1 pool keeps up to max_idle_conns_per_pod idle connections.
 * Circuit breaking: at most max_conns_per_pod connections to a pod (every worker's, counted in
 * its mg_podstate_t); at the cap a request waits in its pool's FIFO for a free connection or
 * stream slot, and with max_pending_per_pod requests waiting already it is refused at once.
 *
 * Request bodies: the caller owns the evbuffer |req->body| and appends to it; the upstream
 * drains it as the pod accepts data (HTTP/2 flow control, or socket writability) and calls
 * on_drain once it fell below MG_SRV_LOW after mg_up_body_more saw it above MG_SRV_HIGH.
 * Because bytes leave |body| only when they are sent, a request that failed before any byte
 * was sent still has its whole body there and can be replayed on another pod.
 * Response bodies: on_data bytes count against the pod's window (HTTP/2) or pause reading
 * (HTTP/1.1) until the caller calls mg_up_consume.
 *
 * Lifetime: after on_end, on_error or on_headers with |end| the stream is gone; the caller
 * must not use it again.
 * mg_up_cancel stops all callbacks at once (and resets the stream on the wire; a request still
 * waiting for its connection or for a stream slot is dropped unsent).
 */
#ifndef MG_GATEWAY_UPSTREAM_H
#define MG_GATEWAY_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/err.h"
#include "common/h2server.h"
#include "routing/routes.h"

typedef struct mg_upstreams mg_upstreams_t;
typedef struct mg_up_stream mg_up_stream_t;

typedef enum mg_up_fail {
    MG_UP_CONNECT_REFUSED = 1, /* connect(2) failed: nothing was sent */
    MG_UP_CONNECT_TIMEOUT,     /* no connection within timeouts.connect: nothing was sent */
    MG_UP_REFUSED,             /* the pod refused the stream (GOAWAY, REFUSED_STREAM) */
    MG_UP_RESET,               /* stream reset or connection lost after sending */
    MG_UP_PROTO,               /* the pod broke the protocol */
    MG_UP_HEADERS,             /* the pod's head or trailers do not fit MG_UP_MAX_FIELDS or the
                                * stream's memory: never passed cut, the stream fails instead */
} mg_up_fail_t;

/* Header fields of one response head or trailer section the gateway passes on, at most. */
#define MG_UP_MAX_FIELDS 128

typedef struct mg_up_cbs {
    /* |end|: the response has no body and no trailers; no on_end follows */
    void (*on_headers)(void *ctx, int status, const mg_hdr_t *h, size_t n, bool end);
    void (*on_data)(void *ctx, const uint8_t *data, size_t len);
    void (*on_end)(void *ctx, const mg_hdr_t *trailers, size_t n);
    /* |sent|: some request byte may have reached the pod (a retry may repeat it) */
    void (*on_error)(void *ctx, mg_up_fail_t why, bool sent);
    void (*on_drain)(void *ctx);
    /* Optional (NULL: dropped): an interim response (1xx: 100, 102, 103...; never 101) that
     * came before the final head, any number of times. |h| is valid during the call only. */
    void (*on_interim)(void *ctx, int status, const mg_hdr_t *h, size_t n);
} mg_up_cbs_t;

typedef struct mg_up_req {
    const char *method;
    const char *scheme;
    const char *authority; /* "": none (HTTP/1.0), and the pod's own "host:port" goes instead */
    const char *path;
    mg_hpack_t authority_hpack, path_hpack; /* SENSITIVE: kept never-indexed (RFC 7541 6.2.3) */
    const mg_hdr_t *hdrs; /* regular fields to send, already filtered */
    size_t nhdrs;
    int64_t content_length; /* -1 = unknown (HTTP/1.1 upstream: chunked) */
    bool has_body;
    struct evbuffer *body; /* caller-owned, see above */
} mg_up_req_t;

typedef struct mg_up_conf {
    uint32_t connect_timeout_ms;
    uint32_t max_streams_per_conn;
    uint32_t max_idle_conns_per_pod;
    uint32_t max_conns_per_pod;   /* every worker's connections to one pod; 0 = unlimited */
    uint32_t max_pending_per_pod; /* requests waiting for one of them; 0 = unlimited */
    uint32_t idle_conn_ms; /* close unused upstream connections after this */
    uint32_t stream_window;     /* HTTP/2 windows we advertise to pods (0 = 256 KiB, 16 MiB) */
    uint32_t connection_window;
    /* largest request head sent over HTTP/2, counted as nghttp2_hd_deflate_bound does (name +
     * value + 12 per field, + 12); up to 64 KiB (and 0): nghttp2's default of 64 KiB */
    size_t max_header_block;
} mg_up_conf_t;

mg_upstreams_t *mg_upstreams_new(struct event_base *base, const mg_up_conf_t *conf);
void mg_upstreams_free(mg_upstreams_t *u); /* closes everything; no callbacks */

/* Starts |req| on |pod|, or queues it when the pod has max_conns_per_pod connections and none
 * can take it now; a queued request leaves on the next free connection or stream slot, oldest
 * first. While it waits (mg_up_is_queued) |req| and everything it points to must stay valid;
 * mg_up_cancel drops it unsent. Returns the stream with *err MG_OK, or NULL with *err
 * MG_E_LIMIT when max_pending_per_pod requests wait for that pod already (nothing was sent: an
 * overflow, another pod may take it), MG_E_NOMEM when out of memory or the connect failed at
 * once. Other failures to connect are reported through on_error, never synchronously from this
 * call. */
mg_up_stream_t *mg_up_start(mg_upstreams_t *u, const mg_pod_t *pod, mg_upstream_proto_t proto,
                            const mg_up_req_t *req, const mg_up_cbs_t *cbs, void *ctx,
                            mg_err_t *err);

/* Is |s| still waiting for a connection (max_conns_per_pod)? Nothing of it was sent then. */
bool mg_up_is_queued(const mg_up_stream_t *s);

/* Is |s| queued while a connection of its pod is being set up (connecting, or an h2c pod's
 * SETTINGS not yet in)? It waits for that connection then, not for a busy one to free up. */
bool mg_up_queued_for_setup(const mg_up_stream_t *s);

/* When |s| left the queue for a connection (mg_mono_us()), or 0 when it never waited:
 * the pod has had it since then, not since mg_up_start. */
int64_t mg_up_dequeued_us(const mg_up_stream_t *s);

/* The caller appended to req->body. */
void mg_up_body_more(mg_up_stream_t *s);

/* The request body is complete; |trailers| (may be empty) are copied. */
void mg_up_body_end(mg_up_stream_t *s, const mg_hdr_t *trailers, size_t n);

/* The caller is done with |n| response body bytes. */
void mg_up_consume(mg_up_stream_t *s, size_t n);

/* No more callbacks; resets the stream (HTTP/2) or closes the connection (HTTP/1.1). */
void mg_up_cancel(mg_up_stream_t *s);

/* Frees the streams kept for reuse: the worker is idle. */
void mg_upstreams_trim(mg_upstreams_t *u);

/* Number of open upstream connections (for tests and metrics). */
size_t mg_upstreams_nconns(const mg_upstreams_t *u);
/* Number of pools (one per pod address and protocol this worker sent to, until reaped). */
size_t mg_upstreams_npools(const mg_upstreams_t *u);
/* The routing changed (call it after installing a snapshot on this worker): within about a
 * second, and then until they are gone, the pools of pods it retired (routing/podstate.h) lose
 * their connections that carry no stream, and are freed once they have none and no request
 * waits in them, which drops their reference to the pod's state. */
void mg_upstreams_routes_changed(mg_upstreams_t *u);

#endif /* MG_GATEWAY_UPSTREAM_H */
