/*
 * gateway/proxy.c - one exchange per client request: route, pick, forward, stream, log.
 *
 * DESIGN
 * An exchange (exch_t) ties a server stream (client side) to at most one upstream stream at a
 * time. Request body bytes go into |body|, an evbuffer the upstream drains as the pod accepts
 * them; they are acknowledged to the client (mg_srv_consume) only while |body| holds less than
 * MG_SRV_HIGH, so a slow pod slows the client instead of filling memory. Response bytes go the
 * other way with mg_srv_pending/mg_up_consume. A failed attempt whose body bytes never left
 * |body| (connect refused or timed out, stream refused) is replayed on the next pod.
 * Timeouts share one timer per exchange, re-armed to the nearest deadline only when it fires.
 * Any mg_srv_* call may end the stream synchronously (on_close), so the exchange is pinned
 * with hold/release around such calls and freed only when released.
 */
#include "gateway/proxy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include <event2/buffer.h>

#include "common/log.h"
#include "features/features.h"
#include "gateway/upstream.h"

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
    uint64_t rid_state; /* xorshift state for request ids */
};

struct exch {
    mg_proxy_t *p;
    exch_t *next_free;
    mg_srv_stream_t *s;
    mg_routes_t *routes;
    mg_service_t *svc;
    int pod;
    uint64_t tried;
    mg_up_stream_t *up;
    struct evbuffer *body;
    struct event *timer;
    mg_up_req_t upreq;
    mg_features_ticket_t feat; /* user features (step 5); settled before the first attempt */
    const mg_hdr_t *req_trailers;
    size_t nreq_trailers;
    int busy;
    bool closed, req_ended, resp_started, finished, body_sent_upstream;
    size_t srv_unconsumed, up_unconsumed;
    uint64_t req_bytes, resp_bytes;
    int64_t t_wall, t_start, t_up_start, t_up_headers, t_activity;
    int64_t resp_cl; /* the response's content-length, -1 when not given */
    int status;
    const char *error;
    const char *method, *host, *path, *proto, *client;
    char request_id[64];
    char app[64], env[32];
};

static const mg_up_cbs_t up_cbs;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
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

static exch_t *exch_new(mg_proxy_t *p)
{
    exch_t *e = p->free_exch;
    struct evbuffer *body = NULL;
    struct event *timer = NULL;
    if (e) {
        p->free_exch = e->next_free;
        p->nfree--;
        body = e->body;
        timer = e->timer;
    } else {
        e = malloc(sizeof(*e));
        if (e == NULL)
            return NULL;
        body = evbuffer_new();
        timer = evtimer_new(p->base, on_timer, e);
        if (body == NULL || timer == NULL) {
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
    e->timer = timer;
    e->pod = -1;
    e->resp_cl = -1;
    p->inflight++;
    return e;
}

static void exch_free(exch_t *e)
{
    mg_proxy_t *p = e->p;
    evtimer_del(e->timer);
    evbuffer_drain(e->body, evbuffer_get_length(e->body));
    if (e->routes)
        mg_routes_unref(e->routes);
    p->inflight--;
    if (p->nfree < 1024) {
        e->next_free = p->free_exch;
        p->free_exch = e;
        p->nfree++;
    } else {
        evbuffer_free(e->body);
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

/* Connection-specific fields (RFC 9110 7.6.1, RFC 9113 8.2.2): never forwarded. */
static bool hop_by_hop(const mg_hdr_t *h)
{
    switch (h->name_len) {
    case 2:
        return memcmp(h->name, "te", 2) == 0;
    case 7:
        return memcmp(h->name, "upgrade", 7) == 0;
    case 10:
        return memcmp(h->name, "connection", 10) == 0 || memcmp(h->name, "keep-alive", 10) == 0;
    case 16:
        return memcmp(h->name, "proxy-connection", 16) == 0;
    case 17:
        return memcmp(h->name, "transfer-encoding", 17) == 0;
    default:
        return false;
    }
}

/* Is |h| named in a Connection header's comma-separated list? */
static bool named_by_connection(const mg_hdr_t *h, const char *conn_value)
{
    if (conn_value == NULL)
        return false;
    const char *p = conn_value;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        if ((size_t)(p - start) == h->name_len && strncasecmp(start, h->name, h->name_len) == 0)
            return true;
    }
    return false;
}

static const char *find_conn_value(const mg_hdr_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (name_is(&h[i], "connection", 10))
            return h[i].value;
    return NULL;
}

static void make_request_id(mg_proxy_t *p, char *out, size_t cap)
{
    uint64_t x = p->rid_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p->rid_state = x;
    uint64_t y = x * 0x2545F4914F6CDD1DULL ^ (uint64_t)now_us();
    static const char hex[] = "0123456789abcdef";
    if (cap < 33)
        return;
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(x >> (60 - 4 * i)) & 15];
        out[16 + i] = hex[(y >> (60 - 4 * i)) & 15];
    }
    out[32] = '\0';
}

static void write_log(exch_t *e)
{
    mg_proxy_t *p = e->p;
    if (p->log == NULL)
        return;
    const mg_pod_t *pod = e->svc && e->pod >= 0 ? &e->svc->pods[e->pod] : NULL;
    int64_t now = now_us();
    mg_reqlog_rec_t rec = {
        .time_us = e->t_wall,
        .request_id = e->request_id,
        .client = e->client,
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
        .resp_bytes = e->resp_bytes,
        .upstream_us = e->t_up_headers ? e->t_up_headers - e->t_up_start : -1,
        .total_us = now - e->t_start,
        .error = e->error,
        .features = mg_features_status(&e->feat),
        .features_hash = mg_features_hash(&e->feat),
    };
    mg_reqlog_write(p->log, &rec);
}

/* Answers with a JSON error when nothing was sent yet, else aborts the stream. */
static void fail(exch_t *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(exch_t *e, int status, const char *code, const char *fmt, ...)
{
    if (e->up) {
        mg_up_cancel(e->up);
        e->up = NULL;
    }
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
        /* the request body is not wanted any more: let the client finish sending it */
        if (e->srv_unconsumed) {
            mg_srv_consume(e->s, e->srv_unconsumed);
            e->srv_unconsumed = 0;
        }
        if (!e->closed)
            mg_srv_error(e->s, status, code, msg, e->request_id, NULL, 0);
    } else if (!e->closed) {
        mg_srv_reset(e->s);
    }
    release(e);
}

static void arm_timer(exch_t *e)
{
    const mg_conf_t *c = e->p->conf;
    int64_t now = now_us(), next = INT64_MAX;
    if (c->timeouts_ms.total)
        next = e->t_start + (int64_t)c->timeouts_ms.total * 1000;
    if (e->up && !e->resp_started && c->timeouts_ms.first_byte) {
        int64_t d = e->t_up_start + (int64_t)c->timeouts_ms.first_byte * 1000;
        next = d < next ? d : next;
    }
    if (c->timeouts_ms.idle) { /* t_activity is loop time: convert the deadline */
        int64_t d = now + (e->t_activity + (int64_t)c->timeouts_ms.idle * 1000 - loop_us(e->p));
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
    const mg_conf_t *c = e->p->conf;
    int64_t now = now_us();
    if (e->finished)
        return;
    if (c->timeouts_ms.total && now >= e->t_start + (int64_t)c->timeouts_ms.total * 1000)
        fail(e, 504, "request_timeout", "the request took longer than %u ms",
             c->timeouts_ms.total);
    else if (e->up && !e->resp_started && c->timeouts_ms.first_byte &&
             now >= e->t_up_start + (int64_t)c->timeouts_ms.first_byte * 1000)
        fail(e, 504, "upstream_timeout", "pod %s sent no response within %u ms",
             e->svc->pods[e->pod].name, c->timeouts_ms.first_byte);
    else if (c->timeouts_ms.idle &&
             loop_us(e->p) >= e->t_activity + (int64_t)c->timeouts_ms.idle * 1000)
        fail(e, 504, "upstream_idle_timeout", "no data moved for %u ms", c->timeouts_ms.idle);
    else
        arm_timer(e);
}

/* ---------- attempts ---------- */

/* Starts the request on the next untried pod. Returns false when every pod was tried. */
static bool attempt(exch_t *e)
{
    for (;;) {
        int idx = mg_service_pick(e->svc, e->tried);
        if (idx < 0)
            return false;
        e->tried |= 1ULL << idx;
        e->pod = idx;
        e->t_up_start = now_us();
        e->up = mg_up_start(e->p->ups, &e->svc->pods[idx], e->svc->proto, &e->upreq, &up_cbs, e);
        if (e->up == NULL)
            continue;
        if (e->req_ended)
            mg_up_body_end(e->up, e->req_trailers, e->nreq_trailers);
        else if (evbuffer_get_length(e->body))
            mg_up_body_more(e->up);
        arm_timer(e);
        return true;
    }
}

/* Adds the user-features fields to the upstream head (room for 2 more was reserved) and
 * starts the first attempt. */
static void forward(exch_t *e)
{
    mg_hdr_t *h = (mg_hdr_t *)e->upreq.hdrs;
    e->upreq.nhdrs = mg_features_headers(&e->feat, h, e->upreq.nhdrs);
    if (!attempt(e))
        fail(e, 502, "upstream_unavailable", "service '%s' has no pod that can take a request",
             e->svc->name);
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

static void up_on_headers(void *ctx, int status, const mg_hdr_t *h, size_t n, bool end)
{
    exch_t *e = ctx;
    if (end)
        e->up = NULL; /* trailers-only response: the upstream stream is gone */
    if (e->finished)
        return;
    e->resp_started = true;
    e->t_up_headers = now_us();
    e->t_activity = loop_us(e->p);
    e->status = status;
    mg_arena_t *a = mg_srv_arena(e->s);
    mg_hdr_t *out = mg_arena_alloc(a, sizeof(mg_hdr_t) * (n + 2));
    if (out == NULL) {
        fail(e, 502, "upstream_headers_too_large", "the pod's response head is too large");
        return;
    }
    const char *conn = find_conn_value(h, n);
    size_t k = 0;
    bool has_rid = false;
    for (size_t i = 0; i < n; i++) {
        if (hop_by_hop(&h[i]) || named_by_connection(&h[i], conn))
            continue;
        if (name_is(&h[i], "x-request-id", 12))
            has_rid = true;
        else if (name_is(&h[i], "content-length", 14))
            e->resp_cl = strtoll(h[i].value, NULL, 10);
        out[k++] = h[i];
    }
    if (!has_rid)
        out[k++] = (mg_hdr_t){"x-request-id", e->request_id, 12, strlen(e->request_id), true};
    hold(e);
    if (end) {
        e->finished = true;
        evtimer_del(e->timer);
        if (e->srv_unconsumed && !e->req_ended) {
            mg_srv_consume(e->s, e->srv_unconsumed);
            e->srv_unconsumed = 0;
        }
    }
    if (!e->closed)
        mg_srv_respond(e->s, status, out, k, end);
    /* the timer stays as armed: when it fires early (first_byte no longer applies), on_timer
     * re-arms to the next real deadline */
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
    if (e->finished)
        return;
    e->finished = true;
    evtimer_del(e->timer);
    hold(e);
    if (e->srv_unconsumed && !e->req_ended) { /* answered early: drain the rest */
        mg_srv_consume(e->s, e->srv_unconsumed);
        e->srv_unconsumed = 0;
    }
    if (!e->closed)
        mg_srv_end(e->s, trailers, n);
    release(e);
}

static void up_on_error(void *ctx, mg_up_fail_t why, bool sent)
{
    exch_t *e = ctx;
    e->up = NULL;
    if (e->finished)
        return;
    const char *pod = e->svc->pods[e->pod].name;
    if (!sent && !e->resp_started) {
        hold(e);
        bool again = attempt(e);
        release(e);
        if (again)
            return;
    }
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
    case MG_UP_REFUSED:
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
        mg_srv_consume(e->s, n);
        release(e);
    }
}

static const mg_up_cbs_t up_cbs = {
    .on_headers = up_on_headers,
    .on_data = up_on_data,
    .on_end = up_on_end,
    .on_error = up_on_error,
    .on_drain = up_on_drain,
};

/* ---------- server (client side) callbacks ---------- */

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
    e->t_start = now_us();
    e->t_activity = loop_us(p);
    e->t_wall = wall_us();
    e->method = req->method;
    e->host = req->authority;
    e->path = req->path;
    e->proto = req->proto;
    e->client = req->client;
    e->req_ended = !req->has_body;
    const mg_conf_t *conf = p->conf;
    hold(e);

    const char *rid = NULL;
    for (size_t i = 0; i < req->nhdrs; i++)
        if (name_is(&req->hdrs[i], "x-request-id", 12) && req->hdrs[i].value_len > 0 &&
            req->hdrs[i].value_len < sizeof(e->request_id))
            rid = req->hdrs[i].value;
    if (rid)
        snprintf(e->request_id, sizeof(e->request_id), "%s", rid);
    else
        make_request_id(p, e->request_id, sizeof(e->request_id));

    e->routes = p->routes;
    mg_routes_ref(e->routes);
    e->svc = mg_routes_match(e->routes, req->authority, strlen(req->authority), e->app, e->env,
                             sizeof(e->env) < sizeof(e->app) ? sizeof(e->env) : sizeof(e->app));
    if (e->svc == NULL) {
        fail(e, 404, "unknown_host",
             "no route for host '%.100s' (expected {app}-{env}.{domain} of a configured route)",
             req->authority);
        goto out;
    }
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
    const char *conn = find_conn_value(req->hdrs, req->nhdrs);
    const char *xff = NULL;
    size_t n = 0;
    for (size_t i = 0; i < req->nhdrs; i++) {
        const mg_hdr_t *f = &req->hdrs[i];
        if (name_is(f, "te", 2) && f->value_len == 8 && strncasecmp(f->value, "trailers", 8) == 0) {
            h[n++] = *f; /* the one TE value HTTP/2 allows; gRPC needs it */
            continue;
        }
        if (hop_by_hop(f) || named_by_connection(f, conn))
            continue;
        if (name_is(f, "x-forwarded-for", 15)) {
            xff = f->value;
            continue;
        }
        if (name_is(f, "x-forwarded-proto", 17) || name_is(f, "x-request-id", 12))
            continue;
        h[n++] = *f;
    }
    char *xffv = xff ? mg_arena_alloc(a, strlen(xff) + strlen(req->client_ip) + 3) : NULL;
    if (xffv)
        sprintf(xffv, "%s, %s", xff, req->client_ip);
    else
        xffv = (char *)req->client_ip;
    h[n++] = (mg_hdr_t){"x-forwarded-for", xffv, 15, strlen(xffv), false};
    h[n++] = (mg_hdr_t){"x-forwarded-proto", req->scheme, 17, strlen(req->scheme), false};
    h[n++] = (mg_hdr_t){"x-request-id", e->request_id, 12, strlen(e->request_id), true};
    e->upreq = (mg_up_req_t){
        .method = req->method,
        .scheme = req->scheme,
        .authority = req->authority,
        .path = req->path,
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
    if (evbuffer_get_length(e->body) < MG_SRV_HIGH)
        mg_srv_consume(s, len);
    else
        e->srv_unconsumed += len; /* the pod is slower: hold the client's window */
    if (e->up)
        mg_up_body_more(e->up);
}

static void on_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    exch_t *e = mg_srv_data(s);
    e->req_ended = true;
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
    /* a client may close as soon as it has content-length bytes, before the pod's END_STREAM
     * reached us: that response was delivered whole */
    bool delivered = e->resp_cl >= 0 && e->resp_bytes == (uint64_t)e->resp_cl && e->status;
    if (!complete && !delivered && e->error == NULL)
        e->error = e->finished ? "client_aborted_response" : "client_aborted";
    write_log(e);
    mg_features_release(&e->feat);
    e->closed = true;
    e->finished = true;
    evtimer_del(e->timer);
    mg_srv_set_data(s, NULL);
    if (e->busy == 0)
        exch_free(e);
}

static void on_reject(void *ud, const mg_srv_req_t *req, int status, const char *code, char *rid,
                      size_t cap)
{
    mg_proxy_t *p = ud;
    make_request_id(p, rid, cap);
    if (p->log == NULL)
        return;
    mg_reqlog_rec_t rec = {
        .time_us = wall_us(),
        .request_id = rid,
        .client = req->client,
        .proto = req->proto,
        .method = req->method,
        .host = req->authority,
        .path = req->path,
        .status = status,
        .upstream_us = -1,
        .error = code,
    };
    mg_reqlog_write(p->log, &rec);
}

static const mg_srv_handler_t handler = {
    .on_reject = on_reject,
    .on_request = on_request,
    .on_body = on_body,
    .on_end = on_end,
    .on_drain = on_drain,
    .on_close = on_close,
};

const mg_srv_handler_t *mg_proxy_handler(void)
{
    return &handler;
}

/* ---------- proxy ---------- */

mg_proxy_t *mg_proxy_new(struct event_base *base, const mg_conf_t *conf, mg_reqlog_t *log)
{
    mg_proxy_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->base = base;
    p->conf = conf;
    p->log = log;
    p->rid_state = (uint64_t)wall_us() ^ ((uint64_t)(uintptr_t)p << 16) ^ 0x9E3779B97F4A7C15ULL;
    mg_up_conf_t uc = {
        .connect_timeout_ms = conf->timeouts_ms.connect,
        .max_streams_per_conn = conf->upstream.max_streams_per_conn,
        .max_idle_conns_per_pod = conf->upstream.max_idle_conns_per_pod,
        .idle_conn_ms = 60000,
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
}

void mg_proxy_set_features(mg_proxy_t *p, mg_features_t *f)
{
    p->features = f;
}

size_t mg_proxy_inflight(const mg_proxy_t *p)
{
    return p->inflight;
}

void mg_proxy_free(mg_proxy_t *p)
{
    if (p == NULL)
        return;
    mg_upstreams_free(p->ups);
    while (p->free_exch) {
        exch_t *e = p->free_exch;
        p->free_exch = e->next_free;
        evbuffer_free(e->body);
        event_free(e->timer);
        free(e);
    }
    if (p->routes)
        mg_routes_unref(p->routes);
    free(p);
}
