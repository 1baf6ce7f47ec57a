/*
 * gateway/metrics.h - GET /metrics on the admin listener: Prometheus text format 0.0.4.
 *
 * Per route (app, env), service and pod: requests by status class and a latency histogram;
 * per service: retries, retry-budget exhaustion, split fallbacks, circuit-breaker overflows;
 * per pod: health, ejection, failures, ejections, requests and pending requests in flight;
 * per worker: open client connections, the pauses in accepting them, and TLS handshakes (full,
 * resumed, failed); the TLS certificate's end of validity. Counters are summed over the workers'
 * blocks at scrape time (common/stats.h); nothing on the request path takes a lock for them.
 */
#ifndef MG_GATEWAY_METRICS_H
#define MG_GATEWAY_METRICS_H

#include <event2/buffer.h>
#include <stdbool.h>
#include <stddef.h>

/* A worker's client side, read at scrape time from the admin thread. */
typedef struct mg_metrics_worker {
    size_t conns;                   /* open client connections */
    unsigned long limit_pauses;     /* accepting stopped at limits.max_client_conns */
    unsigned long error_pauses;     /* accepting stopped after accept() failed */
    unsigned long tls_full, tls_resumed, tls_failed; /* TLS handshakes (mg_srv_tls_handshakes) */
} mg_metrics_worker_t;
typedef void (*mg_metrics_worker_fn)(void *ud, unsigned worker, mg_metrics_worker_t *out);

/* More samples from other modules (the database request log...), appended to the page. */
typedef void (*mg_metrics_more_fn)(void *ud, struct evbuffer *out);

typedef struct mg_metrics_src {
    unsigned workers;
    bool tls;                             /* TLS listeners: their samples are on the page */
    const _Atomic int64_t *tls_not_after; /* the certificate's notAfter (Unix s); 0: unknown */
    mg_metrics_worker_fn worker;
    void *ud;
    mg_metrics_more_fn more[5]; /* NULL-terminated: 4 at most */
    void *more_ud[5];
} mg_metrics_src_t;

/* An mg_admin_page_fn: |ud| is a mg_metrics_src_t that outlives the admin listener. */
int mg_metrics_page(void *ud, const char *query, struct evbuffer *out, const char **content_type);

#endif /* MG_GATEWAY_METRICS_H */
