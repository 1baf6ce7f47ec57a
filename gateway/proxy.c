/*
 * gateway/proxy.c - one exchange per client request: route, pick, forward, stream, log.
 *
 * DESIGN
 * An exchange (exch_t) ties a server stream (client side) to at most one upstream stream at a
 * time. Request body bytes go into |body|, an evbuffer the upstream drains as the pod accepts
 * them; they are acknowledged to the client's stream (mg_srv_keep) only while |body| holds
 * less than MG_SRV_HIGH, and to its connection as they leave |body| (body_taken), so a slow pod
 * slows the client instead of filling memory. Response bytes go the
 * other way with mg_srv_pending/mg_up_consume. A failed attempt whose body bytes never left
 * |body| (connect refused or timed out, stream refused) is replayed on the next pod. A small
 * body is also copied to |kept| until the response starts, whatever the method: a stream the
 * pod refused unprocessed (REFUSED_STREAM, or above a GOAWAY's last_stream_id: RFC 9113 8.7) is
 * replayed from it even after its bytes left, like a connect failure, outside the retry budget.
 * Timeouts share one timer per exchange, re-armed to the nearest deadline only when it fires.
 * Any mg_srv_* call may end the stream synchronously (on_close), so the exchange is pinned
 * with hold/release around such calls and freed only when released.
 */
#include "gateway/proxy.h"
#include "gateway/realip.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include <event2/buffer.h>

#include "canary/split.h"
#include "common/clock.h"
#include "common/hex.h"
#include "common/log.h"
#include "common/stats.h"
#include "features/features.h"
#include "gateway/upstream.h"
#include "routing/balance.h"
#include "routing/host.h"
#include "routing/podstate.h"

typedef struct exch exch_t;

struct mg_proxy {
    struct event_base *base;
    const mg_conf_t *conf;
    mg_reqlog_t *log;
    mg_routes_t *routes;
    mg_upstreams_t *ups;
    mg_features_t *features; /* NULL = features off */
    exch_t *free_exch;
    size_t nfree, inflight;
    uint64_t started; /* requests ever started: see mg_proxy_started */
    uint64_t rid_state; /* xorshift state for request ids */
    uint64_t rng;       /* xorshift state for splits and balancing */
    unsigned worker;    /* this worker's index: its row in balancers and counters */
};

/* How an attempt on a pod ended, for passive outlier detection. */
typedef enum outcome {
    OUTCOME_OK,      /* the pod answered (any status but 502/503/504) */
    OUTCOME_FAILED,  /* connect error, reset, 502/503/504, timeout */
    OUTCOME_NEUTRAL, /* cancelled by us or the client: says nothing about the pod */
} outcome_t;

struct exch {
    mg_proxy_t *p;
    exch_t *next_free;
    mg_srv_stream_t *s;
    mg_routes_t *routes;
    const mg_route_t *route;
    mg_service_t *svc;
    int pod;
    uint64_t tried;
    mg_up_stream_t *up;
    struct evbuffer *body;
    uint8_t *kept; /* a copy of the request body for replays: kept with |e| when it is
                    * recycled, so a small body costs no allocation once warm */
    size_t kept_len, kept_cap;
    struct event *timer;
    mg_up_req_t upreq;
    mg_features_ticket_t feat; /* user features (step 5); settled before the first attempt */
    const mg_hdr_t *req_trailers;
    size_t nreq_trailers;
    int busy;
    bool closed, req_ended, resp_started, finished, body_sent_upstream;
    bool attempt_live;    /* an attempt holds the pod's in-flight count */
    bool attempt_waiting; /* ... and its pending count (no response head yet) */
    bool attempt_bad;     /* its answer was 502/503/504: a failure when it ends */
    bool replayable;      /* |kept| holds the whole body so far (or there is none) */
    bool retry_sent_ok;   /* the method or the route allows repeating a processed request */
    bool same_pod_again;  /* a refused request went back to a pod it had tried (once only) */
    bool fallback;
    bool interims_capped; /* a pod's interim past MG_SRV_MAX_INTERIM was dropped (logged once) */
    bool has_key;
    uint64_t hash_key;
    unsigned retries;      /* every attempt after the first (logged) */
    unsigned sent_retries; /* of those, after a failure that reached a pod (capped) */
    uint32_t to_first_byte, to_idle, to_total; /* ms, this route's */
    size_t srv_unconsumed, up_unconsumed;
    uint64_t req_bytes, resp_bytes;
    int64_t t_wall, t_start, t_up_start, t_up_headers, t_activity;
    int64_t t_fb_start; /* the first-byte window's start: the attempt's, or its leaving the queue */
    int64_t resp_cl; /* the response's content-length, -1 when not given */
    int status;
    const char *error;
    const char *method, *host, *path, *proto, *client;
    const char *peer; /* the connection's address when |client| is the one behind proxies */
    char real_client[MG_REALIP_TEXT]; /* the client behind trusted proxies, when |client| */
    char request_id[64];
    mg_hpack_t rid_hpack; /* UNIQUE, or SENSITIVE when the client sent its id never-indexed */
    bool rid_sent;        /* the pod gets x-request-id: the client's, or one made here */
    char app[64], env[32];
};

static const mg_up_cbs_t up_cbs;

/* The client behind trusted_proxies into |out|, when x-forwarded-for names it. */
static bool client_behind_proxies(const mg_conf_t *conf, const mg_srv_req_t *req,
                                  char out[MG_REALIP_TEXT])
{
    return conf->ntrusted_proxies && mg_realip(conf->trusted_proxies, conf->ntrusted_proxies,
                                               req->client_addr, req->hdrs, req->nhdrs, out);
}

/* Time of the current loop turn (libevent's cache): cheap enough to stamp every body chunk;
 * used for the idle timeout only, which needs no finer grain. */
static int64_t loop_us(const mg_proxy_t *p)
{
    struct timeval tv;
    event_base_gettimeofday_cached(p->base, &tv);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static int64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* ---------- exchange lifetime ---------- */

static void on_timer(evutil_socket_t fd, short what, void *arg);

/* Body bytes left |body| (to the pod, or dropped): the client's connection may send as many
 * more (mg_srv_keep). */
static void body_taken(struct evbuffer *body, const struct evbuffer_cb_info *info, void *arg)
{
    exch_t *e = arg;
    if (info->n_deleted && !e->closed && e->s)
        mg_srv_kept(e->s, evbuffer_get_length(body));
}

static exch_t *exch_new(mg_proxy_t *p)
{
    exch_t *e = p->free_exch;
    struct evbuffer *body = NULL;
    uint8_t *kept = NULL;
    size_t kept_cap = 0;
    struct event *timer = NULL;
    if (e) {
        p->free_exch = e->next_free;
        p->nfree--;
        body = e->body;
        kept = e->kept;
        kept_cap = e->kept_cap;
        timer = e->timer;
    } else {
        e = malloc(sizeof(*e));
        if (e == NULL)
            return NULL;
        body = evbuffer_new();
        timer = evtimer_new(p->base, on_timer, e);
        if (body == NULL || timer == NULL || evbuffer_add_cb(body, body_taken, e) == NULL) {
            if (body)
                evbuffer_free(body);
            if (timer)
                event_free(timer);
            free(e);
            return NULL;
        }
    }
    memset(e, 0, sizeof(*e));
    e->p = p;
    e->body = body;
    e->kept = kept;
    e->kept_cap = kept_cap;
    e->timer = timer;
    e->pod = -1;
    e->resp_cl = -1;
    p->inflight++;
    p->started++;
    return e;
}

#define KEPT_RETAINED (64 * 1024) /* body copy capacity a recycled exchange holds on to */

static void exch_free(exch_t *e)
{
    mg_proxy_t *p = e->p;
    evtimer_del(e->timer);
    evbuffer_drain(e->body, evbuffer_get_length(e->body));
    if (e->kept_cap > KEPT_RETAINED) { /* a big body's copy is not kept for the next one */
        free(e->kept);
        e->kept = NULL;
        e->kept_cap = 0;
    }
    if (e->routes)
        mg_routes_unref(e->routes);
    p->inflight--;
    if (p->nfree < 1024) {
        e->next_free = p->free_exch;
        p->free_exch = e;
        p->nfree++;
    } else {
        evbuffer_free(e->body);
        free(e->kept);
        event_free(e->timer);
        free(e);
    }
}

static void hold(exch_t *e)
{
    e->busy++;
}

static void release(exch_t *e)
{
    if (--e->busy == 0 && e->closed)
        exch_free(e);
}

/* ---------- helpers ---------- */

static bool name_is(const mg_hdr_t *h, const char *name, size_t len)
{
    return h->name_len == len && memcmp(h->name, name, len) == 0;
}

/* The x-forwarded-proto the pod gets: a trusted proxy's (the scheme its client used, say
 * https before a TLS-terminating load balancer) when the connection comes from one of
 * trusted_proxies and names exactly one of "http" and "https", else the connection's own. */
static const char *forwarded_proto(const mg_conf_t *conf, const mg_srv_req_t *req)
{
    const char *sent = NULL;
    if (conf->ntrusted_proxies == 0 ||
        !mg_cidr_match(conf->trusted_proxies, conf->ntrusted_proxies, req->client_addr))
        return req->scheme;
    for (size_t i = 0; i < req->nhdrs; i++) {
        const mg_hdr_t *f = &req->hdrs[i];
        if (!name_is(f, "x-forwarded-proto", 17))
            continue;
        const char *v = f->value;
        size_t len = f->value_len;
        mg_field_trim(&v, &len);
        const char *known = len == 4 && strncasecmp(v, "http", 4) == 0    ? "http"
                            : len == 5 && strncasecmp(v, "https", 5) == 0 ? "https"
                                                                          : NULL;
        if (known == NULL || sent != NULL) /* a list, an unknown scheme, or two fields */
            return req->scheme;
        sent = known;
    }
    return sent ? sent : req->scheme;
}

/* Connection-specific fields, and the h2c upgrade's HTTP2-Settings (RFC 7540 3.2.1), which
 * belongs to the connection it came on even when Connection does not name it. */
static bool hop_by_hop(const mg_hdr_t *h)
{
    return mg_field_connection_specific(h->name, h->name_len) ||
           (h->name_len == 14 && strncasecmp(h->name, "http2-settings", 14) == 0);
}

/* Does the comma-separated list |v| (|len| bytes) hold |tok|? Elements are compared without
 * the whitespace around them, case-insensitively (field names, codings). */
static bool list_has(const char *v, size_t len, const char *tok, size_t toklen)
{
    const char *end = v + len, *el;
    size_t n;
    while (mg_field_list_next(&v, end, &el, &n))
        if (n == toklen && strncasecmp(el, tok, toklen) == 0)
            return true;
    return false;
}

/* The index of the first Connection field of |h|, |n| when there is none. */
static size_t find_conn(const mg_hdr_t *h, size_t n)
{
    size_t i = 0;
    while (i < n && !name_is(&h[i], "connection", 10))
        i++;
    return i;
}

/* Is |f| named by a Connection field of |h| (every one from |conn|, as find_conn found)? An
 * HTTP/1.1 message may carry several, each a list. */
static bool named_by_connection(const mg_hdr_t *f, const mg_hdr_t *h, size_t n, size_t conn)
{
    for (size_t i = conn; i < n; i++)
        if (name_is(&h[i], "connection", 10) &&
            list_has(h[i].value, h[i].value_len, f->name, f->name_len))
            return true;
    return false;
}

/* Copies to |out| (room for |n|) the fields of a pod's response head that go on to the client:
 * hop-by-hop ones (RFC 9110 7.6.1), x-modelgate-service and x-modelgate-features (ours to say)
 * stay behind. Sets
 * *|has_rid| when an x-request-id goes, *|cl| to the content-length (unchanged without one).
 * Returns the number of fields copied. */
static size_t pass_fields(const mg_hdr_t *h, size_t n, mg_hdr_t *out, bool *has_rid, int64_t *cl)
{
    size_t conn = find_conn(h, n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (hop_by_hop(&h[i]) || named_by_connection(&h[i], h, n, conn))
            continue;
        if (name_is(&h[i], "x-request-id", 12))
            *has_rid = true;
        else if (name_is(&h[i], "content-length", 14))
            *cl = mg_parse_decimal(h[i].value, h[i].value_len);
        else if (name_is(&h[i], "x-modelgate-service", 19) ||
                 name_is(&h[i], "x-modelgate-features", 20))
            continue;
        out[k++] = h[i];
    }
    return k;
}

/* |salt|: a clock reading the caller already has (ids must differ across restarts too) */
static void make_request_id(mg_proxy_t *p, char *out, size_t cap, int64_t salt)
{
    uint64_t x = p->rid_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p->rid_state = x;
    uint64_t y = x * 0x2545F4914F6CDD1DULL ^ (uint64_t)salt;
    if (cap < 33)
        return;
    mg_hex64(x, out);
    mg_hex64(y, out + 16);
    out[32] = '\0';
}

/* Counts the finished request on this worker's route, service and pod series. */
static void record_stats(exch_t *e, int64_t total_us)
{
    unsigned w = e->p->worker;
    if (e->route)
        mg_stats_record(e->route->stats, w, e->status, total_us);
    if (e->svc) {
        mg_stats_record(e->svc->stats, w, e->status, total_us);
        if (e->pod >= 0 && e->svc->pods[e->pod].state)
            mg_stats_record(e->svc->pods[e->pod].state->stats, w, e->status, total_us);
    }
}

static void write_log(exch_t *e)
{
    mg_proxy_t *p = e->p;
    int64_t now = mg_mono_us();
    record_stats(e, now - e->t_start);
    if (p->log == NULL)
        return;
    const mg_pod_t *pod = e->svc && e->pod >= 0 ? &e->svc->pods[e->pod] : NULL;
    mg_reqlog_rec_t rec = {
        .time_us = e->t_wall,
        .request_id = e->request_id,
        .client = e->client,
        .peer = e->peer,
        .proto = e->proto,
        .method = e->method,
        .host = e->host,
        .path = e->path,
        .app = e->app[0] ? e->app : NULL,
        .env = e->env[0] ? e->env : NULL,
        .service = e->svc ? e->svc->name : NULL,
        .pod = pod ? pod->name : NULL,
        .status = e->status,
        .req_bytes = e->req_bytes,
        .resp_bytes = mg_srv_body_sent(e->s), /* sent, not taken from the pod */
        .upstream_us = e->t_up_headers ? e->t_up_headers - e->t_up_start : -1,
        .total_us = now - e->t_start,
        .error = e->error,
        .fallback = e->fallback,
        .retries = e->retries,
        .features = mg_features_status(&e->feat),
        .features_hash = mg_features_hash(&e->feat),
    };
    mg_reqlog_write(p->log, &rec);
}

/* ---------- attempts: accounting, passive outlier detection ---------- */

/* Ejects pod |i| of |svc| after too many failures in a row, unless that would take out more
 * than max_ejected_percent of the service's pods (one pod may always be ejected). Each ejection
 * lasts base * (times ejected before), up to max. */
static void maybe_eject(exch_t *e, mg_service_t *svc, int i, uint64_t now)
{
    const mg_outlier_conf_t *oc = &svc->outlier;
    mg_podstate_t *ps = svc->pods[i].state;
    /* requests that were in flight when it was ejected still end as failures: no new ejection
     * (nor a longer one) for those */
    if (atomic_load_explicit(&ps->ejected_until_ms, memory_order_relaxed) > now) {
        atomic_store_explicit(&ps->consecutive_failures, 0, memory_order_relaxed);
        return;
    }
    size_t ejected = 0;
    for (size_t k = 0; k < svc->npods; k++)
        if (atomic_load_explicit(&svc->pods[k].state->ejected_until_ms, memory_order_relaxed) >
            now)
            ejected++;
    if (ejected > 0 && (ejected + 1) * 100 > (size_t)oc->max_ejected_percent * svc->npods)
        return;
    unsigned times = atomic_fetch_add_explicit(&ps->ejections, 1, memory_order_relaxed) + 1;
    uint64_t len = (uint64_t)oc->base_ejection_ms * times;
    if (len > oc->max_ejection_ms)
        len = oc->max_ejection_ms;
    atomic_store_explicit(&ps->ejected_until_ms, now + len, memory_order_relaxed);
    atomic_store_explicit(&ps->usable_since_ms, now + len, memory_order_relaxed);
    atomic_store_explicit(&ps->consecutive_failures, 0, memory_order_relaxed);
    mg_stats_inc(ps->stats, e->p->worker, offsetof(mg_stat_block_t, ejections));
    MG_LOG(MG_LOG_WARN, "proxy", "pod %s of service %s ejected for %llu ms (%u failures in a row)",
           svc->pods[i].name, svc->name, (unsigned long long)len, oc->consecutive_failures);
}

/* Ends the current attempt's hold on its pod: counters, then the pod's failure streak. */
static void attempt_done(exch_t *e, outcome_t how)
{
    if (!e->attempt_live)
        return;
    mg_service_t *svc = e->svc;
    mg_podstate_t *ps = svc->pods[e->pod].state;
    e->attempt_live = false;
    if (e->attempt_waiting) {
        e->attempt_waiting = false;
        atomic_fetch_sub_explicit(&ps->waiting, 1, memory_order_relaxed);
    }
    mg_balance_release(svc->lb, e->pod);
    if (how == OUTCOME_OK) {
        if (atomic_load_explicit(&ps->consecutive_failures, memory_order_relaxed))
            atomic_store_explicit(&ps->consecutive_failures, 0, memory_order_relaxed);
        /* a pod that stays good after its ejection earns its ejection count back */
        unsigned ej = atomic_load_explicit(&ps->ejections, memory_order_relaxed);
        if (ej) {
            uint64_t now = mg_podstate_now_ms();
            uint64_t until = atomic_load_explicit(&ps->ejected_until_ms, memory_order_relaxed);
            if (now > until + (uint64_t)svc->outlier.base_ejection_ms * ej)
                atomic_compare_exchange_strong(&ps->ejections, &ej, ej - 1);
        }
    } else if (how == OUTCOME_FAILED) {
        mg_stats_inc(ps->stats, e->p->worker, offsetof(mg_stat_block_t, failures));
        unsigned f = atomic_fetch_add_explicit(&ps->consecutive_failures, 1,
                                               memory_order_relaxed) + 1;
        if (svc->outlier.consecutive_failures && f >= svc->outlier.consecutive_failures)
            maybe_eject(e, svc, e->pod, mg_podstate_now_ms());
    }
}

/* Answers with a JSON error when nothing was sent yet, else aborts the stream. */
static void fail(exch_t *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The request body is not wanted any more (answered, or failed): the client may send the
 * rest at once, and what |body| holds stops counting against its connection's window. */
static void drop_body(exch_t *e)
{
    if (e->srv_unconsumed) {
        mg_srv_consume(e->s, e->srv_unconsumed);
        e->srv_unconsumed = 0;
    }
    evbuffer_drain(e->body, evbuffer_get_length(e->body));
}

static void fail(exch_t *e, int status, const char *code, const char *fmt, ...)
{
    if (e->up) {
        mg_up_cancel(e->up);
        e->up = NULL;
    }
    attempt_done(e, OUTCOME_NEUTRAL);
    if (e->error == NULL)
        e->error = code;
    if (e->finished || e->closed)
        return;
    e->finished = true;
    evtimer_del(e->timer);
    hold(e);
    if (!mg_srv_responded(e->s)) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        e->status = status;
        drop_body(e);
        mg_hdr_t svc_hdr = {"x-modelgate-service", e->svc ? e->svc->name : "", 19,
                            e->svc ? strlen(e->svc->name) : 0, MG_HPACK_INDEX};
        if (!e->closed)
            mg_srv_error(e->s, status, code, msg, e->request_id, &svc_hdr, e->svc ? 1 : 0);
    } else if (!e->closed) {
        mg_srv_reset(e->s);
    }
    release(e);
}

/* |now|: the monotonic clock in µs, as the caller just read it */
static void arm_timer(exch_t *e, int64_t now)
{
    int64_t next = INT64_MAX;
    if (e->to_total)
        next = e->t_start + (int64_t)e->to_total * 1000;
    /* the pod's first-byte window opens once it could answer: the client sent all of the
     * request (a slow upload is not the pod's delay; on_timer fails only then), or it left the
     * queue. Until then its deadline is a check point: on_end moves t_fb_start without a timer
     * operation of its own, and the check re-arms for the window from there. */
    if (e->up && !e->resp_started && e->to_first_byte) {
        int64_t d = e->t_fb_start + (int64_t)e->to_first_byte * 1000;
        if (d <= now && !e->req_ended && !mg_up_is_queued(e->up))
            d = now + (int64_t)e->to_first_byte * 1000; /* still uploading: check again later */
        next = d < next ? d : next;
    }
    if (e->to_idle) { /* t_activity is loop time: convert the deadline */
        int64_t d = now + (e->t_activity + (int64_t)e->to_idle * 1000 - loop_us(e->p));
        next = d < next ? d : next;
    }
    if (next == INT64_MAX)
        return;
    int64_t wait = next > now ? next - now : 0;
    struct timeval tv = {wait / 1000000, wait % 1000000};
    evtimer_add(e->timer, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    exch_t *e = arg;
    int64_t now = mg_mono_us();
    if (e->finished)
        return;
    int64_t sent = e->up && !e->resp_started ? mg_up_dequeued_us(e->up) : 0;
    if (sent > e->t_fb_start) {
        /* it left the per-pod queue since the timer was armed: the pod's first-byte window and
         * the idle clock start when the pod got the request (the wait itself is bounded by
         * first_byte, below, and is the gateway's, not the pod's) */
        int64_t sent_loop = loop_us(e->p) - (now - sent); /* t_activity is loop time */
        e->t_fb_start = sent;
        e->t_activity = sent_loop > e->t_activity ? sent_loop : e->t_activity;
    }
    if (e->to_total && now >= e->t_start + (int64_t)e->to_total * 1000) {
        fail(e, 504, "request_timeout", "the request took longer than %u ms", e->to_total);
    } else if (e->up && !e->resp_started && e->to_first_byte &&
               now >= e->t_fb_start + (int64_t)e->to_first_byte * 1000 && mg_up_is_queued(e->up)) {
        /* it never left the gateway: not the pod's failure */
        attempt_done(e, OUTCOME_NEUTRAL);
        if (mg_up_queued_for_setup(e->up)) /* first_byte set below connect */
            fail(e, 504, "upstream_timeout",
                 "no connection to pod %s was ready within %u ms: the one being set up had not "
                 "connected (timeouts_ms.connect %u) or had no SETTINGS from the pod yet",
                 e->svc->pods[e->pod].name, e->to_first_byte, e->p->conf->timeouts_ms.connect);
        else
            fail(e, 504, "upstream_timeout",
                 "no connection to pod %s was free within %u ms (upstream.max_conns_per_pod %u)",
                 e->svc->pods[e->pod].name, e->to_first_byte,
                 e->p->conf->upstream.max_conns_per_pod);
    } else if (e->up && !e->resp_started && e->to_first_byte && e->req_ended &&
               now >= e->t_fb_start + (int64_t)e->to_first_byte * 1000) {
        /* the pod had the whole request and did not answer: that counts against it */
        attempt_done(e, OUTCOME_FAILED);
        fail(e, 504, "upstream_timeout", "pod %s sent no response within %u ms",
             e->svc->pods[e->pod].name, e->to_first_byte);
    } else if (e->to_idle && loop_us(e->p) >= e->t_activity + (int64_t)e->to_idle * 1000) {
        if (!e->req_ended && !e->resp_started && e->srv_unconsumed == 0) {
            /* the gateway waits for more of the body and has room for it: the client stalled
             * (Envoy's stream idle timeout answers 408 too), not the pod */
            fail(e, 408, "client_timeout", "the client sent no more of its request for %u ms",
                 e->to_idle);
        } else if (e->up_unconsumed) {
            /* the pod's window is held because the client took none of what is queued for
             * it (a zero HTTP/2 window, a client that stopped reading): the client stalled */
            fail(e, 408, "client_timeout", "the client took none of the answer for %u ms",
                 e->to_idle);
        } else {
            fail(e, 504, "upstream_idle_timeout", "no data moved for %u ms", e->to_idle);
        }
    } else {
        arm_timer(e, now);
    }
}

/* ---------- choosing a service and a pod ---------- */

/* Why no pod could be picked: the 503's words. */
typedef struct pick_fail {
    unsigned unhealthy, unchecked, ejected, limited, drained, tried;
    unsigned overflowed; /* of |tried|, pods whose connection queue was full (this attempt) */
} pick_fail_t;

static bool service_up(const mg_service_t *svc, uint64_t now)
{
    for (size_t i = 0; i < svc->npods; i++)
        if (svc->pods[i].weight && mg_podstate_usable(svc->pods[i].state, now))
            return true;
    return false;
}

/* A pod of e->svc for the next attempt, or -1 with the reasons counted in |why|. */
static int pick_pod(exch_t *e, pick_fail_t *why, uint64_t now)
{
    mg_service_t *svc = e->svc;
    uint64_t usable = 0;
    uint64_t since[MG_BALANCE_MAX_PODS];
    memset(why, 0, sizeof(*why));
    for (size_t i = 0; i < svc->npods; i++) {
        const mg_podstate_t *ps = svc->pods[i].state;
        uint64_t bit = (uint64_t)1 << i;
        since[i] = atomic_load_explicit(&ps->usable_since_ms, memory_order_relaxed);
        if (svc->pods[i].weight == 0) {
            why->drained++;
        } else if (e->tried & bit) {
            why->tried++;
        } else if (!mg_podstate_usable(ps, now)) {
            int h = atomic_load_explicit(&ps->health, memory_order_relaxed);
            if (h == MG_POD_HEALTH_UNKNOWN) /* a new pod, or one short of a verdict */
                why->unchecked++;
            else if (h == MG_POD_HEALTH_UNHEALTHY)
                why->unhealthy++;
            else
                why->ejected++;
        } else if ((svc->max_requests_per_pod &&
                    atomic_load_explicit(&ps->inflight, memory_order_relaxed) >=
                        svc->max_requests_per_pod) ||
                   (svc->max_pending_per_pod &&
                    atomic_load_explicit(&ps->waiting, memory_order_relaxed) >=
                        svc->max_pending_per_pod)) {
            why->limited++;
        } else {
            usable |= bit;
        }
    }
    if (usable == 0)
        return -1;
    mg_pick_ctx_t ctx = {
        .usable = usable,
        .tried = e->tried,
        .key = e->hash_key,
        .has_key = e->has_key,
        .now_ms = now,
        .became_usable_ms = svc->slow_start_ms ? since : NULL,
        .worker = e->p->worker,
        .rng = &e->p->rng,
    };
    return mg_balance_pick(svc->lb, &ctx);
}

/* The retry budget of e->svc on this worker: retries of requests that reached a pod may add
 * budget_percent of the requests of the current second, or min_per_second, whichever is more.
 * (Connect failures reached no pod: they are not counted.) */
static bool budget_has_room(exch_t *e)
{
    mg_stat_block_t *b = &e->svc->stats->w[e->p->worker];
    const mg_retry_conf_t *rc = &e->svc->retry;
    uint64_t reqs = atomic_load_explicit(&b->budget_requests, memory_order_relaxed);
    uint64_t done = atomic_load_explicit(&b->budget_retries, memory_order_relaxed);
    uint64_t cap = reqs * rc->budget_percent / 100;
    if (cap < rc->min_per_second)
        cap = rc->min_per_second;
    if (done >= cap) {
        mg_stats_inc(e->svc->stats, e->p->worker, offsetof(mg_stat_block_t, budget_exhausted));
        return false;
    }
    return true;
}

static void budget_take(exch_t *e)
{
    mg_stat_block_t *b = &e->svc->stats->w[e->p->worker];
    atomic_store_explicit(&b->budget_retries,
                          atomic_load_explicit(&b->budget_retries, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static void budget_count_request(exch_t *e)
{
    mg_stat_block_t *b = &e->svc->stats->w[e->p->worker];
    uint64_t sec = (uint64_t)(loop_us(e->p) / 1000000);
    if (atomic_load_explicit(&b->budget_second, memory_order_relaxed) != sec) {
        atomic_store_explicit(&b->budget_second, sec, memory_order_relaxed);
        atomic_store_explicit(&b->budget_requests, 0, memory_order_relaxed);
        atomic_store_explicit(&b->budget_retries, 0, memory_order_relaxed);
    }
    atomic_store_explicit(&b->budget_requests,
                          atomic_load_explicit(&b->budget_requests, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/*
 * Starts the request on a pod it has not tried. Returns false when no pod can take it; then
 * *why says why (for the 503).
 */
static bool attempt(exch_t *e, pick_fail_t *why)
{
    /* one clock reading per attempt: the pick (ms, the pod states' clock) and the timers */
    int64_t now = mg_mono_us();
    unsigned overflowed = 0;
    for (;;) {
        int idx = pick_pod(e, why, (uint64_t)now / 1000);
        if (idx < 0) {
            why->overflowed = overflowed;
            return false;
        }
        mg_podstate_t *ps = e->svc->pods[idx].state;
        e->tried |= 1ULL << idx;
        e->pod = idx;
        e->t_up_start = e->t_fb_start = now;
        mg_balance_acquire(e->svc->lb, idx);
        atomic_fetch_add_explicit(&ps->waiting, 1, memory_order_relaxed);
        e->attempt_live = e->attempt_waiting = true;
        mg_err_t uerr;
        e->up =
            mg_up_start(e->p->ups, &e->svc->pods[idx], e->svc->proto, &e->upreq, &up_cbs, e, &uerr);
        if (e->up == NULL) {
            /* out of memory, or the pod's connections are all busy and its queue is full (an
             * overflow, Envoy's UO): nothing was sent and the pod did nothing wrong, so another
             * pod is tried at once, outside the retry budget, as for a pod at its limits */
            attempt_done(e, OUTCOME_NEUTRAL);
            if (uerr == MG_E_LIMIT) {
                overflowed++;
                mg_stats_inc(ps->stats, e->p->worker, offsetof(mg_stat_block_t, overflows));
            }
            continue;
        }
        if (e->req_ended)
            mg_up_body_end(e->up, e->req_trailers, e->nreq_trailers);
        else if (evbuffer_get_length(e->body))
            mg_up_body_more(e->up);
        arm_timer(e, now);
        return true;
    }
}

/* Puts the kept copy of the body back for another attempt (the last one drained |body|). */
static void rewind_body(exch_t *e)
{
    evbuffer_drain(e->body, evbuffer_get_length(e->body));
    if (e->kept_len)
        evbuffer_add(e->body, e->kept, e->kept_len);
}

/* Appends to the kept copy; false when it cannot (out of memory). */
static bool keep_body(exch_t *e, const uint8_t *data, size_t len)
{
    if (e->kept_len + len > e->kept_cap) {
        size_t cap = e->kept_cap ? e->kept_cap * 2 : 1024;
        while (cap < e->kept_len + len)
            cap *= 2;
        uint8_t *k = realloc(e->kept, cap);
        if (k == NULL)
            return false;
        e->kept = k;
        e->kept_cap = cap;
    }
    memcpy(e->kept + e->kept_len, data, len);
    e->kept_len += len;
    return true;
}

/* What a failed attempt did on its pod. */
typedef enum reached {
    REACHED_NOTHING,     /* the connection failed: nothing was sent */
    REACHED_UNPROCESSED, /* the pod refused the stream unprocessed */
    REACHED_POD,         /* the pod may have processed the request */
} reached_t;

/* After a failed attempt: try another pod if the request may be repeated. |sent|: body bytes
 * left |body| (the kept copy must replace them). Returns true when another attempt started. */
static bool retry(exch_t *e, reached_t reached, bool sent)
{
    if (e->finished || e->resp_started)
        return false;
    if (sent && !e->replayable)
        return false;
    /* what never reached a pod, or reached it unprocessed, may try every pod, outside the
     * budget (nothing was done twice); the others need the method's or the route's leave and
     * are capped by attempts and by the budget */
    bool counted = reached == REACHED_POD;
    if (counted && (!e->retry_sent_ok || e->sent_retries >= e->svc->retry.attempts ||
                    !budget_has_room(e)))
        return false;
    if (sent)
        rewind_body(e);
    pick_fail_t why;
    hold(e);
    bool again = attempt(e, &why);
    if (!again && reached == REACHED_UNPROCESSED && !e->same_pod_again && !e->finished) {
        /* every pod was tried: a pod that refused (GOAWAY when it restarts, REFUSED_STREAM
         * when it is full) may take the request once more, on a new connection after a GOAWAY */
        e->same_pod_again = true;
        e->tried &= ~((uint64_t)1 << e->pod);
        again = attempt(e, &why);
    }
    if (again) {
        e->retries++;
        if (counted) {
            e->sent_retries++;
            budget_take(e);
        }
        mg_stats_inc(e->svc->stats, e->p->worker, offsetof(mg_stat_block_t, retries));
    }
    release(e);
    return again;
}

static void fail_no_pod(exch_t *e, const struct pick_fail *why);

/* Adds the user-features fields to the upstream head (room for 2 more was reserved) and
 * starts the first attempt. */
static void forward(exch_t *e)
{
    mg_hdr_t *h = (mg_hdr_t *)e->upreq.hdrs;
    e->upreq.nhdrs = mg_features_headers(&e->feat, h, e->upreq.nhdrs);
    pick_fail_t why;
    if (!attempt(e, &why))
        fail_no_pod(e, &why);
}

/* The features lookup settled (found, or the app's budget passed): go on. */
static void on_features(void *ud)
{
    exch_t *e = ud;
    if (e->finished || e->closed)
        return;
    hold(e);
    forward(e);
    release(e);
}

/* ---------- upstream callbacks ---------- */

/* Is there a pod this request has not tried that could take it now? */
static bool other_pod_usable(const exch_t *e)
{
    uint64_t now = mg_podstate_now_ms();
    for (size_t i = 0; i < e->svc->npods; i++)
        if (!(e->tried & ((uint64_t)1 << i)) && e->svc->pods[i].weight &&
            mg_podstate_usable(e->svc->pods[i].state, now))
            return true;
    return false;
}

static bool retriable_status(const mg_service_t *svc, int status)
{
    return svc->retry.on_5xx && (status == 502 || status == 503);
}

static void up_on_headers(void *ctx, int status, const mg_hdr_t *h, size_t n, bool end)
{
    exch_t *e = ctx;
    mg_up_stream_t *up = e->up;
    if (end)
        e->up = NULL; /* trailers-only response: the upstream stream is gone */
    if (e->finished)
        return;
    bool bad = status == 502 || status == 503 || status == 504;
    if (bad && retriable_status(e->svc, status) && e->attempt_live && e->retry_sent_ok &&
        e->replayable && e->sent_retries < e->svc->retry.attempts && other_pod_usable(e)) {
        /* answered with a retriable status before any byte reached the client: another pod
         * may do better; this answer is dropped */
        if (up && !end) {
            mg_up_cancel(up);
            e->up = NULL;
        }
        attempt_done(e, OUTCOME_FAILED);
        e->up = NULL;
        if (retry(e, REACHED_POD, true))
            return;
        /* no retry: the client gets a gateway error naming the pod's answer */
        fail(e, status, status == 503 ? "upstream_unavailable" : "upstream_bad_gateway",
             "pod %s answered %d and the request could not be retried", e->svc->pods[e->pod].name,
             status);
        return;
    }
    if (e->attempt_waiting) {
        e->attempt_waiting = false;
        atomic_fetch_sub_explicit(&e->svc->pods[e->pod].state->waiting, 1, memory_order_relaxed);
    }
    e->attempt_bad = bad; /* forwarded, but it still counts against the pod */
    e->replayable = false; /* the response has started: nothing will be replayed any more */
    e->kept_len = 0;
    if (end)
        attempt_done(e, bad ? OUTCOME_FAILED : OUTCOME_OK);
    e->resp_started = true;
    e->t_up_headers = mg_mono_us();
    e->t_activity = loop_us(e->p);
    e->status = status;
    mg_arena_t *a = mg_srv_arena(e->s);
    mg_hdr_t *out = mg_arena_alloc(a, sizeof(mg_hdr_t) * (n + 3));
    if (out == NULL) {
        fail(e, 502, "upstream_headers_too_large", "the pod's response head is too large");
        return;
    }
    bool has_rid = false;
    size_t k = pass_fields(h, n, out, &has_rid, &e->resp_cl);
    if (!has_rid && e->rid_sent && e->p->conf->request_id_in_response)
        out[k++] =
            (mg_hdr_t){"x-request-id", e->request_id, 12, strlen(e->request_id), e->rid_hpack};
    out[k++] =
        (mg_hdr_t){"x-modelgate-service", e->svc->name, 19, strlen(e->svc->name), MG_HPACK_INDEX};
    const char *fst = mg_features_status(&e->feat); /* the client sees it too (DESIGN, step 5) */
    if (fst)
        out[k++] = (mg_hdr_t){"x-modelgate-features", fst, 20, strlen(fst), MG_HPACK_INDEX};
    hold(e);
    if (end) {
        e->finished = true;
        evtimer_del(e->timer);
        if (!e->req_ended)
            drop_body(e);
    }
    if (!e->closed)
        mg_srv_respond(e->s, status, out, k, end);
    /* the timer stays as armed: when it fires early (first_byte no longer applies), on_timer
     * re-arms to the next real deadline */
    release(e);
}

/* RFC 9110 15.2: a proxy forwards the 1xx responses it did not generate itself, such as 103
 * Early Hints, before the final one. A pod's 100 Continue is not: the gateway answered the
 * client's Expect itself (common/h2server.c, dispatch_request), and a second one would be
 * noise. Nothing of it reaches the request log, whose status is the final one. */
static void up_on_interim(void *ctx, int status, const mg_hdr_t *h, size_t n)
{
    exch_t *e = ctx;
    if (e->finished || e->closed || status == 100)
        return;
    mg_hdr_t out[MG_UP_MAX_FIELDS]; /* on the stack: mg_srv_interim copies what it keeps */
    bool has_rid = false;
    int64_t cl = -1;
    size_t k = pass_fields(h, n, out, &has_rid, &cl); /* n <= MG_UP_MAX_FIELDS */
    hold(e);
    mg_err_t err = mg_srv_interim(e->s, status, out, k);
    if (err == MG_E_LIMIT && !e->interims_capped) { /* a flood: the client gets the first ones */
        e->interims_capped = true;
        MG_LOG(MG_LOG_DEBUG, "proxy",
               "request %s: pod %s sent more than %d interim responses; the others are dropped",
               e->request_id, e->svc->pods[e->pod].name, MG_SRV_MAX_INTERIM);
    }
    release(e);
}

static void up_on_data(void *ctx, const uint8_t *data, size_t len)
{
    exch_t *e = ctx;
    if (e->finished)
        return;
    e->resp_bytes += len;
    e->t_activity = loop_us(e->p);
    hold(e);
    mg_srv_write(e->s, data, len);
    if (!e->closed && e->up) {
        if (mg_srv_pending(e->s) < MG_SRV_HIGH)
            mg_up_consume(e->up, len);
        else
            e->up_unconsumed += len; /* the client is slower: hold the pod's window */
    }
    release(e);
}

static void up_on_end(void *ctx, const mg_hdr_t *trailers, size_t n)
{
    exch_t *e = ctx;
    e->up = NULL;
    attempt_done(e, e->attempt_bad ? OUTCOME_FAILED : OUTCOME_OK);
    if (e->finished)
        return;
    e->finished = true;
    evtimer_del(e->timer);
    hold(e);
    if (!e->req_ended) /* answered early: drain the rest */
        drop_body(e);
    if (!e->closed)
        mg_srv_end(e->s, trailers, n);
    release(e);
}

static void up_on_error(void *ctx, mg_up_fail_t why, bool sent)
{
    exch_t *e = ctx;
    e->up = NULL;
    /* a refused stream (GOAWAY, REFUSED_STREAM) was not processed: the pod is leaving politely */
    attempt_done(e, why == MG_UP_REFUSED ? OUTCOME_NEUTRAL : OUTCOME_FAILED);
    if (e->finished)
        return;
    const char *pod = e->svc->pods[e->pod].name;
    if (why == MG_UP_REFUSED && retry(e, REACHED_UNPROCESSED, sent))
        return;
    if (why != MG_UP_REFUSED && !sent && retry(e, REACHED_NOTHING, false))
        return;
    if (sent && why == MG_UP_RESET && e->svc->retry.on_reset && retry(e, REACHED_POD, true))
        return;
    switch (why) {
    case MG_UP_CONNECT_REFUSED:
        fail(e, 502, "upstream_unavailable",
             "no pod of service '%s' accepted the connection (last tried: %s)", e->svc->name,
             pod);
        break;
    case MG_UP_CONNECT_TIMEOUT:
        fail(e, 504, "upstream_connect_timeout", "no pod of service '%s' connected within %u ms",
             e->svc->name, e->p->conf->timeouts_ms.connect);
        break;
    case MG_UP_PROTO:
        fail(e, 502, "upstream_protocol_error", "pod %s broke the protocol", pod);
        break;
    case MG_UP_HEADERS: /* once the head went out (trailers), fail resets the client's stream */
        fail(e, 502, "upstream_headers_too_large",
             "pod %s answered with more than %d header fields or a head too large to pass on", pod,
             MG_UP_MAX_FIELDS);
        break;
    case MG_UP_REFUSED:
        if (sent && !e->replayable)
            fail(e, 502, "upstream_refused",
                 "pod %s refused the request unprocessed after part of its body was sent; a "
                 "body over the route's replay_max_bytes (%u) is not kept for a replay",
                 pod, e->route->replay_max_bytes);
        else
            fail(e, 502, "upstream_refused",
                 "pod %s refused the request unprocessed and no pod of service '%s' took it",
                 pod, e->svc->name);
        break;
    case MG_UP_RESET:
        fail(e, 502, "upstream_reset", "pod %s reset the request", pod);
        break;
    }
}

static void up_on_drain(void *ctx)
{
    exch_t *e = ctx;
    if (e->srv_unconsumed && !e->closed) {
        size_t n = e->srv_unconsumed;
        e->srv_unconsumed = 0;
        hold(e);
        mg_srv_keep(e->s, n);
        release(e);
    }
}

static const mg_up_cbs_t up_cbs = {
    .on_headers = up_on_headers,
    .on_data = up_on_data,
    .on_end = up_on_end,
    .on_error = up_on_error,
    .on_drain = up_on_drain,
    .on_interim = up_on_interim,
};

/* ---------- server (client side) callbacks ---------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a; the balancer mixes it again */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static bool idempotent(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0 ||
           strcmp(m, "PUT") == 0 || strcmp(m, "DELETE") == 0 || strcmp(m, "TRACE") == 0;
}

/* Picks the route's service (a split's share, sticky or not, with fallback), then sets what
 * the attempts need: hash key, timeouts, replay. False when the request was answered. */
static bool choose_service(exch_t *e, const mg_srv_req_t *req)
{
    const mg_route_t *rt = e->route;
    e->svc = rt->service;
    if (rt->split) {
        uint64_t now = mg_podstate_now_ms(), down = 0;
        for (size_t i = 0; i < rt->nsplit; i++)
            if (!service_up(rt->split_services[i], now))
                down |= (uint64_t)1 << i;
        /* the unit as features see it (features.c): a header given twice, or as a list,
         * names no unit, and the request is split as one without the header */
        const mg_hdr_t *unit = rt->sticky_header
                                   ? mg_field_single(req->hdrs, req->nhdrs, rt->sticky_header,
                                                     strlen(rt->sticky_header), NULL)
                                   : NULL;
        int k = unit && unit->value_len
                    ? mg_split_pick_sticky(rt->split, unit->value, unit->value_len, down,
                                           &e->fallback)
                    : mg_split_pick(rt->split, down, &e->p->rng, &e->fallback);
        if (k >= 0) {
            e->svc = rt->split_services[k];
        } else { /* every service of the split is down: its own 503 says so */
            e->svc = rt->split_services[mg_split_pick(rt->split, 0, &e->p->rng, NULL)];
        }
        if (e->fallback)
            mg_stats_inc(e->svc->stats, e->p->worker, offsetof(mg_stat_block_t, fallbacks));
    }
    mg_service_t *svc = e->svc;
    budget_count_request(e);
    if (svc->policy == MG_BALANCE_CONSISTENT_HASH) {
        if (svc->hash_on == MG_HASH_CLIENT_IP) {
            const char *ip = e->peer ? e->client : req->client_ip;
            e->hash_key = hash_bytes(ip, strlen(ip));
            e->has_key = true;
        } else {
            /* the key by the same rule as the unit above: a header given twice, or as a
             * list, names no one key (either copy may be forged, and a hop may join them),
             * so the request is balanced as one without it, not pinned by its first copy */
            const mg_hdr_t *k = mg_field_single(req->hdrs, req->nhdrs, svc->hash_header,
                                                strlen(svc->hash_header), NULL);
            if (k && k->value_len) {
                e->hash_key = hash_bytes(k->value, k->value_len);
                e->has_key = true;
            }
        }
    }
    const mg_conf_t *c = e->p->conf;
    e->to_first_byte = rt->timeouts.first_byte ? rt->timeouts.first_byte
                                               : c->timeouts_ms.first_byte;
    e->to_idle = rt->timeouts.idle ? rt->timeouts.idle : c->timeouts_ms.idle;
    e->to_total = rt->timeouts.total ? rt->timeouts.total : c->timeouts_ms.total;
    e->retry_sent_ok = idempotent(req->method) || rt->retry_post;
    /* a small body is kept until the response starts, whatever the method: a refusal of the
     * stream says the pod did not process it, and then any request is replayed */
    e->replayable = !req->has_body ||
                    (rt->replay_max_bytes > 0 &&
                     (req->content_length < 0 ||
                      (uint64_t)req->content_length <= rt->replay_max_bytes));
    return true;
}

static void fail_no_pod(exch_t *e, const struct pick_fail *why)
{
    mg_service_t *svc = e->svc;
    if (svc->npods == 0) {
        if (svc->dns_name)
            fail(e, 503, "no_pods", "service '%s' has no pods: DNS gives no address for '%.200s'",
                 svc->name, svc->dns_name);
        else
            fail(e, 503, "no_pods", "service '%s' has no pods", svc->name);
    } else if (why->overflowed && !why->unhealthy && !why->unchecked && !why->ejected &&
               why->tried == why->overflowed) {
        const mg_conf_t *c = e->p->conf;
        mg_stats_inc(svc->stats, e->p->worker, offsetof(mg_stat_block_t, overflows));
        fail(e, 503, "upstream_overflow",
             "every pod of service '%s' has all its connections busy and a full queue "
             "(upstream.max_conns_per_pod %u, upstream.max_pending_per_pod %u)",
             svc->name, c->upstream.max_conns_per_pod, c->upstream.max_pending_per_pod);
    } else if (why->limited && !why->unhealthy && !why->unchecked && !why->ejected && !why->tried) {
        mg_stats_inc(svc->stats, e->p->worker, offsetof(mg_stat_block_t, overflows));
        fail(e, 503, "overloaded",
             "every pod of service '%s' is at its limit (max_requests_per_pod %u, "
             "max_pending_per_pod %u)",
             svc->name, svc->max_requests_per_pod, svc->max_pending_per_pod);
    } else {
        fail(e, 503, "no_healthy_pod",
             "service '%s' has no pod that can take the request (%zu pods: %u unhealthy, "
             "%u without a health check verdict yet, %u ejected, %u at their limit, %u drained)",
             svc->name, svc->npods, why->unhealthy, why->unchecked, why->ejected,
             why->limited + why->overflowed, why->drained);
    }
}

static void on_request(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud)
{
    mg_proxy_t *p = ud;
    exch_t *e = exch_new(p);
    if (e == NULL) {
        mg_srv_error(s, 503, "overloaded", "out of memory", NULL, NULL, 0);
        return;
    }
    mg_srv_set_data(s, e);
    e->s = s;
    e->t_start = mg_mono_us();
    e->t_activity = loop_us(p);
    e->t_wall = wall_us();
    e->method = req->method;
    e->host = req->authority_absent ? NULL : req->authority; /* as a refused one's (README) */
    e->path = req->path;
    e->proto = req->proto;
    const mg_conf_t *conf = p->conf;
    bool behind = client_behind_proxies(conf, req, e->real_client);
    e->client = behind ? e->real_client : req->client;
    e->peer = behind ? req->client : NULL;
    e->req_ended = !req->has_body;
    hold(e);

    const char *rid = NULL;
    e->rid_hpack = MG_HPACK_UNIQUE;
    size_t conn = find_conn(req->hdrs, req->nhdrs);
    for (size_t i = 0; i < req->nhdrs; i++) /* one named by Connection is not for us to keep */
        if (name_is(&req->hdrs[i], "x-request-id", 12) && req->hdrs[i].value_len > 0 &&
            req->hdrs[i].value_len < sizeof(e->request_id) &&
            !named_by_connection(&req->hdrs[i], req->hdrs, req->nhdrs, conn)) {
            rid = req->hdrs[i].value;
            e->rid_hpack =
                req->hdrs[i].hpack == MG_HPACK_SENSITIVE ? MG_HPACK_SENSITIVE : MG_HPACK_UNIQUE;
        }
    if (rid)
        snprintf(e->request_id, sizeof(e->request_id), "%s", rid);
    else /* made either way: the log and the gateway's own error answers carry it */
        make_request_id(p, e->request_id, sizeof(e->request_id), e->t_start);
    e->rid_sent = rid != NULL || conf->generate_request_id;

    e->routes = p->routes;
    mg_routes_ref(e->routes);
    /* A host that is none (user info, a path, a bad port) is the client's error, not a host
     * without a route: 400, never the default service (RFC 9112 3.2). An empty one is a
     * request without a host, HTTP/1.0's (h2server refuses an empty Host field). */
    const char *why = NULL;
    if (req->authority[0] != '\0' &&
        mg_host_check(req->authority, strlen(req->authority), &why) != MG_OK) {
        fail(e, 400, "invalid_host", "invalid host '%.100s': %s", req->authority, why);
        goto out;
    }
    if (req->host_field != NULL &&
        mg_host_check(req->host_field, strlen(req->host_field), &why) != MG_OK) {
        fail(e, 400, "invalid_host", "invalid Host header '%.100s': %s", req->host_field, why);
        goto out;
    }
    e->route = mg_routes_match_route(e->routes, req->authority, strlen(req->authority), e->app,
                                     e->env,
                                     sizeof(e->env) < sizeof(e->app) ? sizeof(e->env)
                                                                     : sizeof(e->app));
    if (e->route == NULL) {
        fail(e, 404, "unknown_host",
             "no route for host '%.100s' (expected {app}-{env}.{domain} of a configured route)",
             req->authority);
        goto out;
    }
    if (!choose_service(e, req))
        goto out;
    if (conf->limits.max_request_body && req->content_length >= 0 &&
        (uint64_t)req->content_length > conf->limits.max_request_body) {
        fail(e, 413, "body_too_large", "request body of %lld bytes exceeds the limit of %llu",
             (long long)req->content_length, (unsigned long long)conf->limits.max_request_body);
        goto out;
    }

    /* upstream request head: hop-by-hop fields out, forwarding fields in */
    mg_arena_t *a = mg_srv_arena(s);
    mg_hdr_t *h = mg_arena_alloc(a, sizeof(mg_hdr_t) * (req->nhdrs + 6));
    if (h == NULL) {
        fail(e, 431, "headers_too_large", "request head too large");
        goto out;
    }
    size_t xff_len = 0; /* every x-forwarded-for field, joined: a chain may come in several */
    mg_hpack_t xff_hpack = MG_HPACK_INDEX;
    bool te_trailers = false;
    size_t n = 0;
    const char *xfp = forwarded_proto(conf, req);
    for (size_t i = 0; i < req->nhdrs; i++) {
        const mg_hdr_t *f = &req->hdrs[i];
        if (name_is(f, "te", 2)) { /* an HTTP/1.1 client's "TE: trailers, gzip" counts too */
            te_trailers = te_trailers || list_has(f->value, f->value_len, "trailers", 8);
            continue;
        }
        if (hop_by_hop(f) || named_by_connection(f, req->hdrs, req->nhdrs, conn))
            continue;
        if (name_is(f, "x-forwarded-for", 15)) {
            xff_len += f->value_len + 2;
            if (f->hpack == MG_HPACK_SENSITIVE)
                xff_hpack = MG_HPACK_SENSITIVE;
            continue;
        }
        /* the client's id goes as e->request_id, once; one that could not be taken (empty, or
         * too long to log) passes untouched when the gateway makes none instead */
        if (name_is(f, "x-forwarded-proto", 17) || (name_is(f, "x-request-id", 12) && e->rid_sent))
            continue;
        h[n++] = *f;
    }
    char *xffv = xff_len ? mg_arena_alloc(a, xff_len + strlen(req->client_ip) + 1) : NULL;
    if (xffv) {
        char *w = xffv;
        for (size_t i = 0; i < req->nhdrs; i++)
            if (name_is(&req->hdrs[i], "x-forwarded-for", 15)) {
                memcpy(w, req->hdrs[i].value, req->hdrs[i].value_len);
                w += req->hdrs[i].value_len;
                *w++ = ',';
                *w++ = ' ';
            }
        strcpy(w, req->client_ip);
    } else {
        xffv = (char *)req->client_ip;
    }
    h[n++] = (mg_hdr_t){"x-forwarded-for", xffv, 15, strlen(xffv), xff_hpack};
    h[n++] = (mg_hdr_t){"x-forwarded-proto", xfp, 17, strlen(xfp), MG_HPACK_INDEX};
    if (te_trailers) /* the one TE value HTTP/2 allows; gRPC needs it */
        h[n++] = (mg_hdr_t){"te", "trailers", 2, 8, MG_HPACK_INDEX};
    if (e->rid_sent)
        h[n++] = (mg_hdr_t){"x-request-id", e->request_id, 12, strlen(e->request_id), e->rid_hpack};
    e->upreq = (mg_up_req_t){
        .method = req->method,
        .scheme = req->scheme,
        .authority = req->authority,
        .path = req->path,
        .authority_hpack = req->authority_hpack,
        .path_hpack = req->path_hpack,
        .hdrs = h,
        .nhdrs = n,
        .content_length = req->content_length,
        .has_body = req->has_body,
        .body = e->body,
    };
    /* step 5: the upstream attempt waits for the user's features, at most the app's budget */
    if (mg_features_start(p->features, &e->feat, e->app, e->env, req->hdrs, req->nhdrs,
                          on_features, e) == MG_OK)
        forward(e);
out:
    release(e);
}

static void on_body(mg_srv_stream_t *s, const uint8_t *data, size_t len)
{
    exch_t *e = mg_srv_data(s);
    e->req_bytes += len;
    e->t_activity = loop_us(e->p);
    const mg_conf_t *conf = e->p->conf;
    if (e->finished) { /* answered already: discard */
        mg_srv_consume(s, len);
        return;
    }
    if (conf->limits.max_request_body && e->req_bytes > conf->limits.max_request_body) {
        e->srv_unconsumed += len;
        fail(e, 413, "body_too_large", "request body exceeds the limit of %llu bytes",
             (unsigned long long)conf->limits.max_request_body);
        return;
    }
    evbuffer_add(e->body, data, len);
    if (e->replayable &&
        (e->kept_len + len > e->route->replay_max_bytes || !keep_body(e, data, len))) {
        e->replayable = false; /* too big to keep: it streams on, and cannot be repeated once
                                * sent */
        e->kept_len = 0;
    }
    if (evbuffer_get_length(e->body) < MG_SRV_HIGH)
        mg_srv_keep(s, len);
    else
        e->srv_unconsumed += len; /* the pod is slower: hold the client's window */
    if (e->up)
        mg_up_body_more(e->up);
}

static void on_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    exch_t *e = mg_srv_data(s);
    bool had_body = !e->req_ended; /* a request without one had its window open from the start */
    e->req_ended = true;
    /* the pod's window opens now; a request still queued keeps its queue deadline (its window
     * opens when it leaves the queue, see on_timer) */
    if (had_body && e->up && !e->resp_started && !e->finished && !mg_up_is_queued(e->up)) {
        int64_t now = mg_mono_us(); /* the armed check point is earlier: it re-arms from here */
        e->t_fb_start = now > e->t_fb_start ? now : e->t_fb_start;
    }
    if (n && e->feat._strip) { /* the server's fields are read-only: a copy, then stripped */
        mg_hdr_t *kept = mg_arena_alloc(mg_srv_arena(s), n * sizeof(*kept));
        if (kept == NULL) {
            fail(e, 431, "headers_too_large", "request trailers too large");
            return;
        }
        memcpy(kept, trailers, n * sizeof(*kept));
        n = mg_features_strip(&e->feat, kept, n);
        trailers = kept;
    }
    e->req_trailers = trailers;
    e->nreq_trailers = n;
    if (e->up && !e->finished)
        mg_up_body_end(e->up, trailers, n);
}

static void on_drain(mg_srv_stream_t *s)
{
    exch_t *e = mg_srv_data(s);
    if (e->up_unconsumed && e->up) {
        size_t n = e->up_unconsumed;
        e->up_unconsumed = 0;
        mg_up_consume(e->up, n);
    }
}

static void on_close(mg_srv_stream_t *s, bool complete)
{
    exch_t *e = mg_srv_data(s);
    if (e == NULL)
        return;
    if (e->up) {
        mg_up_cancel(e->up);
        e->up = NULL;
    }
    attempt_done(e, OUTCOME_NEUTRAL);
    /* a client may close as soon as it has content-length bytes, before the pod's END_STREAM
     * reached us: that response was delivered whole */
    bool delivered = e->resp_cl >= 0 && e->resp_bytes == (uint64_t)e->resp_cl && e->status;
    if (!complete && !delivered && e->error == NULL) {
        const char *why = mg_srv_close_why(s);
        e->error = why ? why : e->finished ? "client_aborted_response" : "client_aborted";
    }
    write_log(e);
    mg_features_release(&e->feat);
    e->closed = true;
    e->finished = true;
    evtimer_del(e->timer);
    mg_srv_set_data(s, NULL);
    if (e->busy == 0)
        exch_free(e);
}

/* The rest of the request was refused (a malformed chunked body, trailers over the limits): it
 * ends here as one request, answered with its own request id and logged once. */
static void on_refused(mg_srv_stream_t *s, int status, const char *code, const char *message)
{
    exch_t *e = mg_srv_data(s);
    if (e != NULL)
        fail(e, status, code, "%s", message);
}

static void reject_request_id(void *ud, char *rid, size_t cap)
{
    make_request_id(ud, rid, cap, mg_mono_us());
}

static void on_reject(void *ud, const mg_srv_req_t *req, int status, const char *code,
                      const char *rid, uint64_t resp_bytes)
{
    mg_proxy_t *p = ud;
    if (p->log == NULL)
        return;
    /* the x-forwarded-for a proxy appended may be among the fields not read */
    char client[MG_REALIP_TEXT];
    bool real = req->head_whole && client_behind_proxies(p->conf, req, client);
    mg_reqlog_rec_t rec = {
        .time_us = wall_us(),
        .request_id = rid,
        .client = real ? client : req->client,
        .peer = real ? req->client : NULL,
        .proto = req->proto,
        /* what was not read is unknown: null, not "" (README, Access log) */
        .method = *req->method ? req->method : NULL,
        .host = req->authority, /* NULL when no host was read; an empty Host is "" */
        .path = *req->path ? req->path : NULL,
        .status = status,
        .resp_bytes = resp_bytes,
        .upstream_us = -1,
        .error = code,
    };
    mg_reqlog_write(p->log, &rec);
}

static const mg_srv_handler_t handler = {
    .on_reject = on_reject,
    .request_id = reject_request_id,
    .on_request = on_request,
    .on_body = on_body,
    .on_end = on_end,
    .on_drain = on_drain,
    .on_close = on_close,
    .on_refused = on_refused,
};

const mg_srv_handler_t *mg_proxy_handler(void)
{
    return &handler;
}

/* ---------- proxy ---------- */

/* The largest request head the gateway may send a pod, as nghttp2 counts it (name + value + 12
 * per field): the largest head a client may send (max_header_list_size counts 32 per field over
 * HTTP/2; over HTTP/1.1 the fields' bytes only, so 12 more per field), the 4 pseudo-fields, and
 * what the gateway adds: x-forwarded-for/-proto, x-request-id, x-user-features and its status. */
static size_t upstream_header_block(const mg_conf_t *conf)
{
    size_t n = (size_t)conf->limits.max_header_list_size +
               12 * ((size_t)conf->limits.max_headers + 4 + 6) + 1024;
    if (conf->features)
        n += conf->features->max_header_bytes;
    return n;
}

mg_proxy_t *mg_proxy_new(struct event_base *base, const mg_conf_t *conf, mg_reqlog_t *log,
                         unsigned worker)
{
    mg_proxy_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->base = base;
    p->worker = worker;
    p->conf = conf;
    p->log = log;
    p->rid_state = (uint64_t)wall_us() ^ ((uint64_t)(uintptr_t)p << 16) ^ 0x9E3779B97F4A7C15ULL;
    p->rng = p->rid_state * 0xD1342543DE82EF95ULL + worker + 1;
    mg_up_conf_t uc = {
        .connect_timeout_ms = conf->timeouts_ms.connect,
        .max_streams_per_conn = conf->upstream.max_streams_per_conn,
        .max_idle_conns_per_pod = conf->upstream.max_idle_conns_per_pod,
        .max_conns_per_pod = conf->upstream.max_conns_per_pod,
        .max_pending_per_pod = conf->upstream.max_pending_per_pod,
        .idle_conn_ms = 60000,
        .stream_window = conf->upstream.stream_window,
        .connection_window = conf->upstream.connection_window,
        .max_header_block = upstream_header_block(conf),
    };
    p->ups = mg_upstreams_new(base, &uc);
    if (p->ups == NULL) {
        free(p);
        return NULL;
    }
    return p;
}

void mg_proxy_set_routes(mg_proxy_t *p, mg_routes_t *routes)
{
    mg_routes_ref(routes);
    if (p->routes)
        mg_routes_unref(p->routes);
    p->routes = routes;
    mg_upstreams_routes_changed(p->ups); /* the pools of pods it retired go */
}

void mg_proxy_set_features(mg_proxy_t *p, mg_features_t *f)
{
    p->features = f;
}

size_t mg_proxy_inflight(const mg_proxy_t *p)
{
    return p->inflight;
}

uint64_t mg_proxy_started(const mg_proxy_t *p)
{
    return p->started;
}

void mg_proxy_trim(mg_proxy_t *p)
{
    while (p->free_exch) {
        exch_t *e = p->free_exch;
        p->free_exch = e->next_free;
        evbuffer_free(e->body);
        free(e->kept);
        event_free(e->timer);
        free(e);
    }
    p->nfree = 0;
    mg_upstreams_trim(p->ups);
}

void mg_proxy_free(mg_proxy_t *p)
{
    if (p == NULL)
        return;
    mg_proxy_trim(p);
    mg_upstreams_free(p->ups);
    if (p->routes)
        mg_routes_unref(p->routes);
    free(p);
}
