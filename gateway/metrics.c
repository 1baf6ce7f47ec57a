/*
 * gateway/metrics.c - the Prometheus page (see metrics.h).
 */
#include "gateway/metrics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/stats.h"
#include "routing/podstate.h"

typedef struct page {
    struct evbuffer *out;
    const char *prefix; /* metric name prefix of the kind: modelgate_route, _service, _pod */
} page_t;

static const char *const kind_prefix[MG_STATS_NKINDS] = {
    "modelgate_route", "modelgate_service", "modelgate_pod"};

static uint64_t val(const atomic_uint_fast64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

static void requests(void *ud, const mg_stats_t *s)
{
    page_t *pg = ud;
    mg_stat_block_t b;
    mg_stats_sum(s, &b);
    static const char *const cls[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int i = 0; i < 6; i++)
        evbuffer_add_printf(pg->out, "%s_requests_total{%s,code=\"%s\"} %" PRIu64 "\n",
                            pg->prefix, s->labels, cls[i], val(&b.status[i]));
}

static void latency(void *ud, const mg_stats_t *s)
{
    page_t *pg = ud;
    mg_stat_block_t b;
    mg_stats_sum(s, &b);
    uint64_t cum = 0;
    for (int i = 0; i < MG_STATS_LAT_BUCKETS; i++) {
        cum += val(&b.lat[i]);
        evbuffer_add_printf(pg->out, "%s_request_duration_seconds_bucket{%s,le=\"%g\"} %" PRIu64
                                     "\n",
                            pg->prefix, s->labels, mg_stats_lat_bounds_us[i] / 1e6, cum);
    }
    cum += val(&b.lat[MG_STATS_LAT_BUCKETS]);
    evbuffer_add_printf(pg->out,
                        "%s_request_duration_seconds_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n"
                        "%s_request_duration_seconds_sum{%s} %.6f\n"
                        "%s_request_duration_seconds_count{%s} %" PRIu64 "\n",
                        pg->prefix, s->labels, cum, pg->prefix, s->labels,
                        val(&b.lat_sum_us) / 1e6, pg->prefix, s->labels, cum);
}

typedef struct counter {
    page_t *pg;
    const char *name;
    size_t field;
} counter_t;

static void one_counter(void *ud, const mg_stats_t *s)
{
    counter_t *c = ud;
    mg_stat_block_t b;
    mg_stats_sum(s, &b);
    evbuffer_add_printf(c->pg->out, "%s{%s} %" PRIu64 "\n", c->name, s->labels,
                        val((const atomic_uint_fast64_t *)((const char *)&b + c->field)));
}

static void counter(page_t *pg, mg_stats_kind_t kind, const char *name, const char *help,
                    size_t field)
{
    counter_t c = {pg, name, field};
    evbuffer_add_printf(pg->out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    mg_stats_each(kind, one_counter, &c);
}

typedef struct gauge {
    page_t *pg;
    int which;
    uint64_t now;
} gauge_t;

static void pod_gauge(void *ud, mg_podstate_t *ps)
{
    gauge_t *g = ud;
    uint64_t v = 0;
    int h = atomic_load_explicit(&ps->health, memory_order_relaxed);
    switch (g->which) {
    case 0:
        v = h == MG_POD_HEALTH_UNCHECKED || h == MG_POD_HEALTH_HEALTHY;
        break;
    case 1:
        v = atomic_load_explicit(&ps->ejected_until_ms, memory_order_relaxed) > g->now;
        break;
    case 2:
        v = atomic_load_explicit(&ps->inflight, memory_order_relaxed);
        break;
    case 3:
        v = atomic_load_explicit(&ps->waiting, memory_order_relaxed);
        break;
    case 4:
        v = atomic_load_explicit(&ps->conns, memory_order_relaxed);
        break;
    case 5:
        v = atomic_load_explicit(&ps->queued, memory_order_relaxed);
        break;
    }
    static const char *const names[] = {
        "modelgate_pod_healthy",         "modelgate_pod_ejected",
        "modelgate_pod_active_requests", "modelgate_pod_pending_requests",
        "modelgate_pod_connections",     "modelgate_pod_queued_requests"};
    evbuffer_add_printf(g->pg->out, "%s{%s} %" PRIu64 "\n", names[g->which], ps->stats->labels,
                        v);
}

/* Per worker, the TLS handshakes; and the certificate's end of validity (|not_after|). */
static void tls_samples(struct evbuffer *out, const mg_metrics_src_t *src, unsigned nworkers,
                        int64_t not_after)
{
    evbuffer_add_printf(out, "# HELP modelgate_worker_tls_handshakes_total TLS handshakes per "
                             "worker: a new session (result=\"full\"), a resumed one "
                             "(\"resumed\"), or an error before it ended (\"failed\": "
                             "not TLS, a bad record, a reset).\n"
                             "# TYPE modelgate_worker_tls_handshakes_total counter\n");
    static const char *const results[3] = {"full", "resumed", "failed"};
    for (unsigned w = 0; w < nworkers; w++) {
        mg_metrics_worker_t ws;
        src->worker(src->ud, w, &ws);
        unsigned long n[3] = {ws.tls_full, ws.tls_resumed, ws.tls_failed};
        for (int i = 0; i < 3; i++)
            evbuffer_add_printf(out,
                                "modelgate_worker_tls_handshakes_total{worker=\"%u\","
                                "result=\"%s\"} %lu\n",
                                w, results[i], n[i]);
    }
    if (not_after == 0) /* unknown: no sample rather than a date that would alert */
        return;
    evbuffer_add_printf(out,
                        "# HELP modelgate_tls_certificate_expiry_timestamp_seconds End of "
                        "validity (notAfter) of the TLS certificate in use, Unix time.\n"
                        "# TYPE modelgate_tls_certificate_expiry_timestamp_seconds gauge\n"
                        "modelgate_tls_certificate_expiry_timestamp_seconds %" PRId64 "\n",
                        not_after);
}

int mg_metrics_page(void *ud, const char *query, struct evbuffer *out, const char **content_type)
{
    const mg_metrics_src_t *src = ud;
    *content_type = "text/plain; version=0.0.4; charset=utf-8";
    page_t pg = {.out = out};
    static const char *const what[MG_STATS_NKINDS] = {"route (app, env)", "service", "pod"};
    for (int k = 0; k < MG_STATS_NKINDS; k++) {
        pg.prefix = kind_prefix[k];
        evbuffer_add_printf(out,
                            "# HELP %s_requests_total Requests per %s by status class (none = "
                            "no response sent).\n# TYPE %s_requests_total counter\n",
                            pg.prefix, what[k], pg.prefix);
        mg_stats_each((mg_stats_kind_t)k, requests, &pg);
        evbuffer_add_printf(out,
                            "# HELP %s_request_duration_seconds Request duration per %s, from "
                            "request head to the end of the response.\n"
                            "# TYPE %s_request_duration_seconds histogram\n",
                            pg.prefix, what[k], pg.prefix);
        mg_stats_each((mg_stats_kind_t)k, latency, &pg);
    }
    counter(&pg, MG_STATS_SERVICE, "modelgate_service_retries_total",
            "Attempts on another pod after the first.", offsetof(mg_stat_block_t, retries));
    counter(&pg, MG_STATS_SERVICE, "modelgate_service_retry_budget_exhausted_total",
            "Retries refused because the retry budget was spent.",
            offsetof(mg_stat_block_t, budget_exhausted));
    counter(&pg, MG_STATS_SERVICE, "modelgate_service_split_fallbacks_total",
            "Requests a split sent to this service because their own service had no pod up.",
            offsetof(mg_stat_block_t, fallbacks));
    counter(&pg, MG_STATS_SERVICE, "modelgate_service_overflows_total",
            "Requests refused because every pod was at its concurrency limit.",
            offsetof(mg_stat_block_t, overflows));
    counter(&pg, MG_STATS_POD, "modelgate_pod_failures_total",
            "Attempts that failed: connect errors, resets, 502/503/504, timeouts.",
            offsetof(mg_stat_block_t, failures));
    counter(&pg, MG_STATS_POD, "modelgate_pod_overflows_total",
            "Requests the pod could not queue: its connections busy and "
            "upstream.max_pending_per_pod requests waiting.",
            offsetof(mg_stat_block_t, overflows));
    counter(&pg, MG_STATS_POD, "modelgate_pod_ejections_total",
            "Times passive outlier detection ejected the pod.",
            offsetof(mg_stat_block_t, ejections));

    static const char *const gauges[][2] = {
        {"modelgate_pod_healthy", "1 when the pod passes its active checks (or has none)."},
        {"modelgate_pod_ejected", "1 while passive outlier detection keeps the pod out."},
        {"modelgate_pod_active_requests", "Requests on the pod now, every worker."},
        {"modelgate_pod_pending_requests", "Requests on the pod still without a response head."},
        {"modelgate_pod_connections", "Upstream connections open to the pod's address."},
        {"modelgate_pod_queued_requests",
         "Requests waiting for a connection to the pod (upstream.max_conns_per_pod reached)."},
    };
    for (int i = 0; i < 6; i++) {
        gauge_t g = {&pg, i, mg_podstate_now_ms()};
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", gauges[i][0], gauges[i][1],
                            gauges[i][0]);
        mg_podstate_each(pod_gauge, &g);
    }
    evbuffer_add_printf(out,
                        "# HELP modelgate_pod_states Pod states in memory: the pods of the "
                        "routing, and those gone from it that an old routing snapshot or an "
                        "upstream connection still uses.\n# TYPE modelgate_pod_states gauge\n"
                        "modelgate_pod_states %zu\n",
                        mg_podstate_count());
    unsigned nworkers = src && src->worker ? src->workers : 0;
    mg_metrics_worker_t ws;
    evbuffer_add_printf(out, "# HELP modelgate_worker_connections Open client connections per "
                             "worker thread.\n# TYPE modelgate_worker_connections gauge\n");
    for (unsigned w = 0; w < nworkers; w++) {
        src->worker(src->ud, w, &ws);
        evbuffer_add_printf(out, "modelgate_worker_connections{worker=\"%u\"} %zu\n", w,
                            ws.conns);
    }
    evbuffer_add_printf(out, "# HELP modelgate_worker_accept_pauses_total Times the worker "
                             "stopped accepting connections: at limits.max_client_conns "
                             "(reason=\"limit\"), or for 100 ms after accept() failed, out of "
                             "descriptors or memory (reason=\"error\").\n"
                             "# TYPE modelgate_worker_accept_pauses_total counter\n");
    for (unsigned w = 0; w < nworkers; w++) {
        src->worker(src->ud, w, &ws);
        evbuffer_add_printf(out,
                            "modelgate_worker_accept_pauses_total{worker=\"%u\",reason=\"limit\"} "
                            "%lu\nmodelgate_worker_accept_pauses_total{worker=\"%u\",reason="
                            "\"error\"} %lu\n",
                            w, ws.limit_pauses, w, ws.error_pauses);
    }
    if (src && src->tls)
        tls_samples(out, src, nworkers, atomic_load(src->tls_not_after));
    for (size_t i = 0; src && i + 1 < sizeof(src->more) / sizeof(src->more[0]) && src->more[i]; i++)
        src->more[i](src->more_ud[i], out);
    return 200;
}
