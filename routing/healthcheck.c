/*
 * routing/healthcheck.c - active health checks of runtime pods (see healthcheck.h).
 *
 * DESIGN
 * Each watched pod has two timers: |timer| starts the next check, |deadline| bounds the check in
 * flight. A check is one or two probes; a probe is one fresh TCP connection carrying one GET:
 *   health probe  GET conf.path; decided as soon as the final status line/HEADERS arrive (the
 *                 body of a readiness answer says nothing more, and a server that streams one
 *                 forever must not hold the check);
 *   status probe  only with expect_version, after a 2xx health probe: GET /v1/status, read the
 *                 whole body (<= MG_HC_MAX_BODY) and compare "model.version".
 * The connect is done by hand (non-blocking connect, then SO_ERROR) so that a refused connection
 * is reported as such; the connected socket then goes to a bufferevent. HTTP/1.1 answers are
 * parsed with llhttp, HTTP/2 is an nghttp2 client session (preface, SETTINGS, one stream).
 *
 * Re-entrancy: every way a check ends goes through check_done(), which frees the probe, re-arms
 * the pod's timer, updates the state and calls the user's callback as its very last step. The
 * callback may unwatch the pod or free the checker, so check_done() is always a tail call:
 * nothing touches the pod, the probe or the checker after it. Parser callbacks (llhttp, nghttp2)
 * never end a check themselves; they only record what they saw (status, body, error, done) and
 * the read/event callback decides once the parser has returned.
 */
#include "routing/healthcheck.h"

#include <errno.h>
#include <netinet/in.h>
#include <search.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <jansson.h>
#include <llhttp.h>
#include <nghttp2/nghttp2.h>

#include "common/h2server.h"
#include "common/log.h"

#define STATUS_PATH "/v1/status"
#define USER_AGENT "modelgate-healthcheck/" MG_VERSION

typedef struct hc_pod hc_pod_t;

typedef enum probe_kind {
    PROBE_HEALTH, /* GET conf.path: the status decides */
    PROBE_STATUS, /* GET /v1/status: the body's model.version decides */
} probe_kind_t;

/* One connection with one GET. Owned by its pod (pod->probe) while in flight. */
typedef struct probe {
    hc_pod_t *pod;
    probe_kind_t kind;
    int fd;                   /* owned here until |bev| exists, then by |bev| */
    struct event *connecting; /* EV_WRITE while the connect is in progress */
    struct bufferevent *bev;  /* the connected socket */
    llhttp_t h1;              /* MG_UP_H1 */
    nghttp2_session *h2;      /* MG_UP_H2C */
    bool h2_fed;              /* ... has had bytes from the pod */
    int32_t stream_id;
    int status; /* final status, 0 until known */
    bool done;  /* the answer is complete enough to decide */
    char *body; /* PROBE_STATUS only; body_len <= MG_HC_MAX_BODY, always */
    size_t body_len, body_cap;
    char err[192]; /* why the probe failed; "" = no failure (yet) */
} probe_t;

struct hc_pod {
    hc_pod_t *next, **pprev; /* in mg_hc.pods; *pprev points here */
    /* the checks of the same target (by_target): the first is the tree's key, the others
     * follow it; twin_pprev is NULL for the first */
    hc_pod_t *twin_next, **twin_pprev;
    bool in_targets; /* in by_target (false only when memory ran out) */
    mg_hc_t *hc;
    char *name; /* "host:port": the key, and the Host / :authority sent */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    mg_upstream_proto_t proto;
    char *path;           /* copied from the conf */
    char *expect_version; /* copied from the conf; NULL = any */
    uint32_t interval_ms, timeout_ms;
    unsigned healthy_threshold, unhealthy_threshold;
    mg_hc_state_t state;
    unsigned passes, fails; /* consecutive results; at most one of them is non-zero */
    bool has_result;        /* a check ended (or a twin's verdict came) since the (re)start */
    int health_status;      /* status of this check's health probe, for the pass reason */
    struct event *timer;    /* starts the next check; pending iff no check is in flight */
    struct event *deadline; /* pending iff a check is in flight */
    probe_t *probe;         /* the probe in flight, or NULL */
};

struct mg_hc {
    struct event_base *base;
    mg_hc_cb cb;
    void *ud;
    hc_pod_t *pods;
    void *by_name; /* the same pods in a tsearch tree by name: a reload waiting for thousands
                    * of checks looks each up every few ms (gateway/control.c) */
    void *by_target; /* and by what they check (address, protocol, path, version), one node
                      * per target: each new name looks for its twins (take_twin_verdict) */
    uint64_t rng; /* jitter only; any non-zero seed will do */
    llhttp_settings_t h1settings;
    nghttp2_session_callbacks *h2cbs;
};

static void start_probe(hc_pod_t *pod, probe_kind_t kind);

/* ---------------------------------------------------------------------------------------- */
/* schedule and state                                                                       */

static uint64_t next_rand(mg_hc_t *hc)
{
    uint64_t x = hc->rng; /* xorshift64*: jitter needs spread, not secrecy */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    hc->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* Arms |pod|'s timer: the first check comes after 0..interval/10 ms, later ones after interval
 * plus 0..interval/10 ms, so that pods watched at the same moment do not stay in step. */
static void schedule(hc_pod_t *pod, bool first)
{
    uint64_t spread = pod->interval_ms / 10 + 1;
    uint64_t ms = (first ? 0 : pod->interval_ms) + next_rand(pod->hc) % spread;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(pod->timer, &tv);
}

const char *mg_hc_state_name(mg_hc_state_t state)
{
    switch (state) {
    case MG_HC_UNKNOWN:
        return "unknown";
    case MG_HC_HEALTHY:
        return "healthy";
    case MG_HC_UNHEALTHY:
        return "unhealthy";
    }
    return "unknown";
}

static void probe_free(probe_t *p)
{
    if (p == NULL)
        return;
    if (p->connecting)
        event_free(p->connecting);
    if (p->bev)
        bufferevent_free(p->bev); /* closes p->fd (BEV_OPT_CLOSE_ON_FREE) */
    else if (p->fd >= 0)
        close(p->fd);
    nghttp2_session_del(p->h2);
    free(p->body);
    free(p);
}

/* The new state after one more result of |pod|'s checks. */
static mg_hc_state_t next_state(hc_pod_t *pod, bool pass)
{
    if (pass) {
        pod->fails = 0;
        pod->passes++;
        /* A new pod is healthy after its first pass (Envoy); a failed one must prove itself. */
        if (pod->state == MG_HC_UNKNOWN || pod->passes >= pod->healthy_threshold)
            return MG_HC_HEALTHY;
    } else {
        pod->passes = 0;
        pod->fails++;
        if (pod->fails >= pod->unhealthy_threshold)
            return MG_HC_UNHEALTHY;
    }
    return pod->state;
}

/* Ends |pod|'s check in flight with |pass| and |reason|: frees the probe, schedules the next
 * check and reports a change of state. Always the caller's last step (the callback may free
 * the pod and the checker). */
static void check_done(hc_pod_t *pod, bool pass, const char *reason)
{
    char why[sizeof(((probe_t *)0)->err)];
    snprintf(why, sizeof(why), "%s", reason); /* |reason| may live in the probe freed below */
    probe_free(pod->probe);
    pod->probe = NULL;
    evtimer_del(pod->deadline);
    schedule(pod, false);
    pod->has_result = true;

    mg_hc_state_t old = pod->state, now = next_state(pod, pass);
    if (now == old && now == MG_HC_UNKNOWN) /* no verdict, so no callback: say it here */
        MG_LOG(MG_LOG_WARN, "health",
               "%s: check failed (%s), %u of %u failures before it is unhealthy; no verdict yet",
               pod->name, why, pod->fails, pod->unhealthy_threshold);
    if (now == old)
        return;
    pod->state = now;
    /* debug: the callback's owner says it at info, with the service's words */
    MG_LOG(MG_LOG_DEBUG, "health", "pod %s: %s -> %s (%s)", pod->name, mg_hc_state_name(old),
           mg_hc_state_name(now), why);
    char name[MG_HC_MAX_NAME + 1];
    snprintf(name, sizeof(name), "%s", pod->name); /* the callback may unwatch the pod */
    mg_hc_t *hc = pod->hc;
    hc->cb(hc->ud, name, now, why);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    hc_pod_t *pod = arg;
    struct timeval tv = {.tv_sec = pod->timeout_ms / 1000,
                         .tv_usec = (suseconds_t)(pod->timeout_ms % 1000) * 1000};
    evtimer_add(pod->deadline, &tv);
    start_probe(pod, PROBE_HEALTH);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    check_done(arg, false, "timeout");
}

/* ---------------------------------------------------------------------------------------- */
/* probe results                                                                            */

/* Records why |p| failed; the first reason wins (later ones are consequences). */
static void __attribute__((format(printf, 2, 3))) probe_fail(probe_t *p, const char *fmt, ...)
{
    if (p->err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
    if (p->err[0] == '\0')
        snprintf(p->err, sizeof(p->err), "failed");
}

static bool body_append(probe_t *p, const uint8_t *data, size_t len)
{
    if (len > MG_HC_MAX_BODY - p->body_len) {
        probe_fail(p, STATUS_PATH ": body over %d bytes", MG_HC_MAX_BODY);
        return false;
    }
    if (p->body_len + len > p->body_cap) {
        size_t cap = p->body_cap ? p->body_cap * 2 : 4096;
        while (cap < p->body_len + len)
            cap *= 2;
        if (cap > MG_HC_MAX_BODY)
            cap = MG_HC_MAX_BODY;
        char *b = realloc(p->body, cap);
        if (b == NULL) {
            probe_fail(p, "out of memory");
            return false;
        }
        p->body = b;
        p->body_cap = cap;
    }
    memcpy(p->body + p->body_len, data, len);
    p->body_len += len;
    return true;
}

/* Checks the /v1/status body of |p| against the expected version; fills |why| on failure. */
static bool version_matches(const probe_t *p, const char *want, char *why, size_t cap)
{
    json_error_t jerr;
    json_t *doc = json_loadb(p->body ? p->body : "", p->body_len, 0, &jerr);
    if (doc == NULL) {
        snprintf(why, cap, STATUS_PATH ": not JSON: %s", jerr.text);
        return false;
    }
    bool ok = false;
    json_t *model = json_object_get(doc, "model");
    const char *got = json_string_value(json_object_get(model, "version"));
    if (!json_is_object(model))
        snprintf(why, cap, STATUS_PATH ": no model loaded");
    else if (got == NULL)
        snprintf(why, cap, STATUS_PATH ": model.version missing or not a string");
    else if (strcmp(got, want) != 0)
        snprintf(why, cap, "version %.60s != %.60s", got, want);
    else
        ok = true;
    json_decref(doc);
    return ok;
}

/* Decides after the parser returned: |p| failed, answered, or still waits for bytes. May end
 * the check (tail call: the caller returns right after). */
static void probe_settle(probe_t *p)
{
    hc_pod_t *pod = p->pod;
    if (!p->done) {
        if (p->err[0])
            check_done(pod, false, p->err);
        return;
    }
    char why[sizeof(p->err)];
    bool is_2xx = p->status >= 200 && p->status <= 299;
    if (p->kind == PROBE_HEALTH) {
        pod->health_status = p->status;
        if (!is_2xx) {
            snprintf(why, sizeof(why), "HTTP %d", p->status);
            check_done(pod, false, why);
        } else if (pod->expect_version) {
            probe_free(p); /* the version is read on a fresh connection, same deadline */
            pod->probe = NULL;
            start_probe(pod, PROBE_STATUS);
        } else {
            snprintf(why, sizeof(why), "HTTP %d", p->status);
            check_done(pod, true, why);
        }
        return;
    }
    if (!is_2xx) {
        snprintf(why, sizeof(why), STATUS_PATH ": HTTP %d", p->status);
        check_done(pod, false, why);
    } else if (!version_matches(p, pod->expect_version, why, sizeof(why))) {
        check_done(pod, false, why);
    } else {
        snprintf(why, sizeof(why), "HTTP %d, version %.60s", pod->health_status,
                 pod->expect_version);
        check_done(pod, true, why);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* HTTP/1.1 (llhttp)                                                                        */

static int h1_on_headers_complete(llhttp_t *parser)
{
    probe_t *p = parser->data;
    int status = llhttp_get_status_code(parser);
    if (status >= 100 && status <= 199 && status != 101)
        return 0; /* interim answer: the final one follows */
    p->status = status;
    if (p->kind == PROBE_HEALTH)
        p->done = true; /* the status decides; the body is not needed */
    return 0;
}

static int h1_on_body(llhttp_t *parser, const char *at, size_t len)
{
    probe_t *p = parser->data;
    if (p->kind != PROBE_STATUS || p->status == 0)
        return 0;
    return body_append(p, (const uint8_t *)at, len) ? 0 : -1;
}

static int h1_on_message_complete(llhttp_t *parser)
{
    probe_t *p = parser->data;
    if (p->status == 0)
        return 0; /* end of an interim answer */
    p->done = true;
    return HPE_PAUSED; /* anything after the answer is of no interest */
}

static void h1_feed(probe_t *p, const char *data, size_t len)
{
    llhttp_errno_t e = llhttp_execute(&p->h1, data, len);
    if (e != HPE_OK && e != HPE_PAUSED && !p->done)
        probe_fail(p, "bad response: %s", llhttp_get_error_reason(&p->h1));
}

/* A pod key may be "service/host:port" (the same pod checked for two services): the Host sent
 * is the host:port part. */
static const char *authority_of(const char *name)
{
    const char *slash = strrchr(name, '/');
    return slash ? slash + 1 : name;
}

static void h1_send_request(probe_t *p)
{
    hc_pod_t *pod = p->pod;
    llhttp_init(&p->h1, HTTP_RESPONSE, &pod->hc->h1settings);
    p->h1.data = p;
    const char *path = p->kind == PROBE_HEALTH ? pod->path : STATUS_PATH;
    if (evbuffer_add_printf(bufferevent_get_output(p->bev),
                            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: " USER_AGENT
                            "\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                            path, authority_of(pod->name)) < 0)
        probe_fail(p, "out of memory");
}

/* ---------------------------------------------------------------------------------------- */
/* HTTP/2 with prior knowledge (nghttp2 client)                                             */

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud)
{
    probe_t *p = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->hd.stream_id != p->stream_id || namelen != 7 ||
        memcmp(name, ":status", 7) != 0)
        return 0;
    int status = 0;
    for (size_t i = 0; i < valuelen && i < 3; i++)
        status = status * 10 + (value[i] - '0');
    if (valuelen == 3 && status >= 200) /* 1xx is interim; nghttp2 has checked the digits */
        p->status = status;
    return 0;
}

static int h2_on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    probe_t *p = ud;
    if (f->hd.type == NGHTTP2_HEADERS && f->hd.stream_id == p->stream_id && p->status &&
        p->kind == PROBE_HEALTH)
        p->done = true; /* the status decides; the body is not needed */
    return 0;
}

static int h2_on_data(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                      size_t len, void *ud)
{
    probe_t *p = ud;
    if (stream_id != p->stream_id || p->kind != PROBE_STATUS)
        return 0;
    return body_append(p, data, len) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int h2_on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *ud)
{
    probe_t *p = ud;
    if (stream_id != p->stream_id || p->done)
        return 0;
    if (error_code != NGHTTP2_NO_ERROR)
        probe_fail(p, "HTTP/2: stream reset (%s)", nghttp2_http2_strerror(error_code));
    else if (p->status == 0)
        probe_fail(p, "HTTP/2: stream closed without a status");
    else
        p->done = true;
    return 0;
}

/* Moves what nghttp2 wants to send into the bufferevent. */
static void h2_flush(probe_t *p)
{
    struct evbuffer *out = bufferevent_get_output(p->bev);
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(p->h2, &data);
        if (n < 0) {
            probe_fail(p, "HTTP/2: %s", nghttp2_strerror((int)n));
            return;
        }
        if (n == 0)
            return;
        if (evbuffer_add(out, data, (size_t)n) != 0) {
            probe_fail(p, "out of memory");
            return;
        }
    }
}

static void h2_feed(probe_t *p, const char *data, size_t len)
{
    if (!p->h2_fed && mg_h2_answered_in_h1(data, len)) { /* its first bytes */
        probe_fail(p, "the pod " MG_H2_ANSWERED_IN_H1);
        return;
    }
    p->h2_fed = true;
    ssize_t n = nghttp2_session_mem_recv(p->h2, (const uint8_t *)data, len);
    if (n < 0)
        probe_fail(p, "HTTP/2: %s", nghttp2_strerror((int)n));
}

static void h2_send_request(probe_t *p)
{
    hc_pod_t *pod = p->pod;
    if (nghttp2_session_client_new(&p->h2, pod->hc->h2cbs, p) != 0) {
        probe_fail(p, "out of memory");
        return;
    }
    const char *path = p->kind == PROBE_HEALTH ? pod->path : STATUS_PATH;
#define NV(n, v)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE                 \
    }
    const nghttp2_nv nv[] = {NV(":method", "GET"), NV(":scheme", "http"),
                             NV(":authority", authority_of(pod->name)), NV(":path", path),
                             NV("user-agent", USER_AGENT)};
#undef NV
    /* no server push; the client preface ("PRI * ...") is sent by nghttp2 itself */
    const nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    if (nghttp2_submit_settings(p->h2, NGHTTP2_FLAG_NONE, settings, 1) != 0 ||
        (p->stream_id =
             nghttp2_submit_request(p->h2, NULL, nv, sizeof(nv) / sizeof(nv[0]), NULL, NULL)) < 0) {
        probe_fail(p, "out of memory");
        return;
    }
    h2_flush(p);
}

/* ---------------------------------------------------------------------------------------- */
/* connection                                                                               */

static void on_read(struct bufferevent *bev, void *arg)
{
    probe_t *p = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (evbuffer_get_length(in) > 0 && !p->done && !p->err[0]) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(in, -1, NULL, v, 8);
        size_t used = 0;
        for (int i = 0; i < n && i < 8 && !p->done && !p->err[0]; i++) {
            if (p->h2)
                h2_feed(p, v[i].iov_base, v[i].iov_len);
            else
                h1_feed(p, v[i].iov_base, v[i].iov_len);
            used += v[i].iov_len;
        }
        evbuffer_drain(in, used);
    }
    if (p->h2 && !p->done && !p->err[0]) {
        h2_flush(p); /* SETTINGS ack, WINDOW_UPDATE */
        if (!nghttp2_session_want_read(p->h2) && !nghttp2_session_want_write(p->h2))
            probe_fail(p, "HTTP/2: the server ended the session (GOAWAY)");
    }
    probe_settle(p);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    probe_t *p = arg;
    if (what & BEV_EVENT_EOF) {
        if (p->h2 == NULL && !p->done && !p->err[0]) {
            llhttp_errno_t e = llhttp_finish(&p->h1); /* a body that ends at EOF ends here */
            if (e != HPE_OK && e != HPE_PAUSED && !p->done)
                probe_fail(p, "bad response: %s", llhttp_get_error_reason(&p->h1));
        }
        if (!p->done)
            probe_fail(p, "connection closed before the response");
    } else if (what & BEV_EVENT_ERROR) {
        int e = EVUTIL_SOCKET_ERROR();
        if (!p->done)
            probe_fail(p, "connection error: %s", e ? strerror(e) : "unknown");
    }
    probe_settle(p);
}

static void connect_failed(probe_t *p, int e)
{
    if (e == ECONNREFUSED)
        probe_fail(p, "connect refused");
    else
        probe_fail(p, "connect failed: %s", strerror(e));
    check_done(p->pod, false, p->err);
}

/* The socket is connected: hand it to a bufferevent and send the request. */
static void probe_connected(probe_t *p)
{
    hc_pod_t *pod = p->pod;
    p->bev = bufferevent_socket_new(pod->hc->base, p->fd, BEV_OPT_CLOSE_ON_FREE);
    if (p->bev == NULL) {
        probe_fail(p, "out of memory");
        check_done(pod, false, p->err);
        return;
    }
    bufferevent_setcb(p->bev, on_read, NULL, on_event, p);
    if (pod->proto == MG_UP_H2C)
        h2_send_request(p);
    else
        h1_send_request(p);
    if (!p->err[0] && bufferevent_enable(p->bev, EV_READ | EV_WRITE) != 0)
        probe_fail(p, "cannot watch the socket");
    if (p->err[0])
        check_done(pod, false, p->err);
}

static void on_connect(evutil_socket_t fd, short what, void *arg)
{
    probe_t *p = arg;
    int e = 0;
    socklen_t elen = sizeof(e);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) != 0)
        e = errno;
    event_free(p->connecting);
    p->connecting = NULL;
    if (e != 0)
        connect_failed(p, e);
    else
        probe_connected(p);
}

/* Opens the connection of a new probe of |pod|. May end the check at once (e.g. a refused
 * connect): a tail call. */
static void start_probe(hc_pod_t *pod, probe_kind_t kind)
{
    probe_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        check_done(pod, false, "out of memory");
        return;
    }
    p->pod = pod;
    p->kind = kind;
    pod->probe = p;
    p->fd = socket(pod->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        connect_failed(p, errno);
        return;
    }
    if (connect(p->fd, (const struct sockaddr *)&pod->addr, pod->addrlen) == 0) {
        probe_connected(p);
        return;
    }
    if (errno != EINPROGRESS) {
        connect_failed(p, errno);
        return;
    }
    p->connecting = event_new(pod->hc->base, p->fd, EV_WRITE, on_connect, p);
    if (p->connecting == NULL || event_add(p->connecting, NULL) != 0) {
        probe_fail(p, "out of memory");
        check_done(pod, false, p->err);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* API                                                                                      */

mg_hc_t *mg_hc_new(struct event_base *base, mg_hc_cb cb, void *ud)
{
    mg_hc_t *hc = calloc(1, sizeof(*hc));
    if (hc == NULL)
        return NULL;
    hc->base = base;
    hc->cb = cb;
    hc->ud = ud;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    hc->rng = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ (uintptr_t)hc;
    if (hc->rng == 0)
        hc->rng = 0x9e3779b97f4a7c15ull;
    llhttp_settings_init(&hc->h1settings);
    hc->h1settings.on_headers_complete = h1_on_headers_complete;
    hc->h1settings.on_body = h1_on_body;
    hc->h1settings.on_message_complete = h1_on_message_complete;
    if (nghttp2_session_callbacks_new(&hc->h2cbs) != 0) {
        free(hc);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_header_callback(hc->h2cbs, h2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(hc->h2cbs, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(hc->h2cbs, h2_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(hc->h2cbs, h2_on_stream_close);
    return hc;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const hc_pod_t *)a)->name, ((const hc_pod_t *)b)->name);
}

static hc_pod_t *find_pod(const mg_hc_t *hc, const char *name)
{
    const hc_pod_t key = {.name = (char *)name};
    hc_pod_t *const *found = tfind(&key, &hc->by_name, by_name);
    return found ? *found : NULL;
}

static int by_target(const void *a, const void *b)
{
    const hc_pod_t *x = a, *y = b;
    if (x->addrlen != y->addrlen)
        return x->addrlen < y->addrlen ? -1 : 1;
    int d = memcmp(&x->addr, &y->addr, x->addrlen);
    if (d != 0)
        return d;
    if (x->proto != y->proto)
        return x->proto < y->proto ? -1 : 1;
    if ((d = strcmp(x->path, y->path)) != 0)
        return d;
    if (x->expect_version == NULL || y->expect_version == NULL)
        return (x->expect_version != NULL) - (y->expect_version != NULL);
    return strcmp(x->expect_version, y->expect_version);
}

/* Adds |pod| (its target set) to the checks of its target. */
static void join_target(mg_hc_t *hc, hc_pod_t *pod)
{
    hc_pod_t **first = tsearch(pod, &hc->by_target, by_target);
    if (first == NULL) /* it only finds no twins then: it waits for its own first result */
        return;
    pod->in_targets = true;
    if (*first == pod) {
        pod->twin_next = NULL;
        pod->twin_pprev = NULL;
        return;
    }
    pod->twin_next = (*first)->twin_next;
    pod->twin_pprev = &(*first)->twin_next;
    if (pod->twin_next)
        pod->twin_next->twin_pprev = &pod->twin_next;
    (*first)->twin_next = pod;
}

/* Takes |pod| out of the checks of its target (before its target changes). */
static void leave_target(mg_hc_t *hc, hc_pod_t *pod)
{
    if (!pod->in_targets)
        return;
    pod->in_targets = false;
    hc_pod_t *next = pod->twin_next;
    if (pod->twin_pprev) {
        *pod->twin_pprev = next;
        if (next)
            next->twin_pprev = pod->twin_pprev;
        return;
    }
    if (next == NULL) {
        tdelete(pod, &hc->by_target, by_target);
        return;
    }
    /* the next one, with the same target, becomes the node's key: no allocation */
    hc_pod_t **first = tfind(pod, &hc->by_target, by_target);
    *first = next;
    next->twin_pprev = NULL;
}

static void unlink_pod(mg_hc_t *hc, hc_pod_t *pod)
{
    tdelete(pod, &hc->by_name, by_name);
    leave_target(hc, pod);
    *pod->pprev = pod->next;
    if (pod->next)
        pod->next->pprev = pod->pprev;
}

static void pod_free(hc_pod_t *pod)
{
    probe_free(pod->probe);
    if (pod->timer)
        event_free(pod->timer);
    if (pod->deadline)
        event_free(pod->deadline);
    free(pod->name);
    free(pod->path);
    free(pod->expect_version);
    free(pod);
}

/* A path or name goes into a request line or header: printable ASCII without spaces only. */
static bool is_token_text(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

static mg_err_t check_conf(const char *name, const struct sockaddr *addr, socklen_t len,
                           mg_upstream_proto_t proto, const mg_hc_conf_t *c)
{
    const char *bad = NULL;
    if (name == NULL || name[0] == '\0' || strlen(name) > MG_HC_MAX_NAME || !is_token_text(name))
        bad = "pod name: expected host:port in printable ASCII, at most 300 characters";
    else if (addr == NULL ||
             !((addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) ||
               (addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))) ||
             len > sizeof(struct sockaddr_storage))
        bad = "address: expected an IPv4 or IPv6 socket address";
    else if (proto != MG_UP_H2C && proto != MG_UP_H1)
        bad = "protocol: expected h2c or http/1.1";
    else if (c == NULL || c->path == NULL || c->path[0] != '/' || !is_token_text(c->path))
        bad = "path: must start with '/' and contain no spaces or control characters";
    else if (c->interval_ms == 0 || c->timeout_ms == 0)
        bad = "interval_ms and timeout_ms must be at least 1";
    else if (c->healthy_threshold == 0 || c->unhealthy_threshold == 0)
        bad = "healthy_threshold and unhealthy_threshold must be at least 1";
    else if (c->expect_version && c->expect_version[0] == '\0')
        bad = "expect_version: empty (leave it out to accept any version)";
    if (bad == NULL)
        return MG_OK;
    MG_LOG(MG_LOG_ERROR, "health", "health check of pod '%.300s' refused: %s",
           name ? name : "(null)", bad);
    return MG_E_CONFIG;
}

/* True when |pod| already checks what (addr, proto, path, version) the new conf asks for. */
static bool same_target(const hc_pod_t *pod, const struct sockaddr *addr, socklen_t len,
                        mg_upstream_proto_t proto, const mg_hc_conf_t *c)
{
    bool same_version =
        pod->expect_version == NULL
            ? c->expect_version == NULL
            : c->expect_version && strcmp(pod->expect_version, c->expect_version) == 0;
    return pod->addrlen == len && memcmp(&pod->addr, addr, len) == 0 && pod->proto == proto &&
           strcmp(pod->path, c->path) == 0 && same_version;
}

/* Points |*podp| (NULL: a new pod is created) at |conf|'s target and starts it over from
 * UNKNOWN. Everything that can fail comes before the pod is touched. */
static mg_err_t restart_pod(mg_hc_t *hc, hc_pod_t **podp, const char *name,
                            const struct sockaddr *addr, socklen_t len, mg_upstream_proto_t proto,
                            const mg_hc_conf_t *conf)
{
    hc_pod_t *pod = *podp, *fresh = NULL;
    char *path = strdup(conf->path);
    char *version = conf->expect_version ? strdup(conf->expect_version) : NULL;
    if (path == NULL || (conf->expect_version && version == NULL))
        goto nomem;
    if (pod == NULL) {
        if ((fresh = calloc(1, sizeof(*fresh))) == NULL || (fresh->name = strdup(name)) == NULL ||
            (fresh->timer = evtimer_new(hc->base, on_timer, fresh)) == NULL ||
            (fresh->deadline = evtimer_new(hc->base, on_deadline, fresh)) == NULL)
            goto nomem;
        fresh->hc = hc;
        if (tsearch(fresh, &hc->by_name, by_name) == NULL)
            goto nomem;
        fresh->next = hc->pods;
        fresh->pprev = &hc->pods;
        if (hc->pods)
            hc->pods->pprev = &fresh->next;
        hc->pods = pod = fresh;
    }
    probe_free(pod->probe); /* the check in flight asked the old question */
    pod->probe = NULL;
    evtimer_del(pod->deadline);
    leave_target(hc, pod);
    free(pod->path);
    free(pod->expect_version);
    pod->path = path;
    pod->expect_version = version;
    memcpy(&pod->addr, addr, len);
    pod->addrlen = len;
    pod->proto = proto;
    join_target(hc, pod);
    pod->state = MG_HC_UNKNOWN;
    pod->passes = pod->fails = 0;
    pod->has_result = false;
    pod->interval_ms = conf->interval_ms; /* the first delay depends on the new interval */
    schedule(pod, true);
    *podp = pod;
    return MG_OK;
nomem:
    free(path);
    free(version);
    if (fresh)
        pod_free(fresh);
    MG_LOG(MG_LOG_ERROR, "health", "health check of pod '%s': out of memory", name);
    return MG_E_NOMEM;
}

/*
 * A new name whose check is one another name already runs (same address, protocol, path and
 * version: a service renamed by a reload, or a pod two services share) starts from that
 * check's verdict and counts, not from UNKNOWN: the answer would be the same, and waiting for
 * it took a renamed service's pods out of rotation until their first check.
 */
static void take_twin_verdict(mg_hc_t *hc, hc_pod_t *pod)
{
    /* a twin with a verdict, else one with a result: its count of failures or passes goes on
     * (a reload's waiting check hands over one failure of two, and the next one decides) */
    const hc_pod_t *twin = NULL;
    hc_pod_t *const *first = pod->in_targets ? tfind(pod, &hc->by_target, by_target) : NULL;
    for (const hc_pod_t *t = first ? *first : NULL; t; t = t->twin_next) {
        if (t == pod || !t->has_result)
            continue;
        if (twin == NULL || (twin->state == MG_HC_UNKNOWN && t->state != MG_HC_UNKNOWN))
            twin = t;
    }
    if (twin == NULL)
        return;
    pod->state = twin->state;
    pod->passes = twin->passes;
    pod->fails = twin->fails;
    pod->has_result = true;
    MG_LOG(MG_LOG_INFO, "health", "%s starts %s, as %s (the same check)", pod->name,
           mg_hc_state_name(pod->state), twin->name);
}

mg_err_t mg_hc_watch(mg_hc_t *hc, const char *name, const struct sockaddr *addr, socklen_t len,
                     mg_upstream_proto_t proto, const mg_hc_conf_t *conf)
{
    mg_err_t err = check_conf(name, addr, len, proto, conf);
    if (err != MG_OK)
        return err;
    hc_pod_t *pod = find_pod(hc, name);
    bool created = pod == NULL;
    if (pod == NULL || !same_target(pod, addr, len, proto, conf)) {
        if ((err = restart_pod(hc, &pod, name, addr, len, proto, conf)) != MG_OK)
            return err;
    }
    if (created)
        take_twin_verdict(hc, pod);
    /* timing and thresholds apply from the next check, whatever the state; a first check
     * still to come is drawn again from the new interval (a reload may be waiting for it) */
    bool redraw = !pod->has_result && pod->probe == NULL && pod->interval_ms != conf->interval_ms;
    pod->interval_ms = conf->interval_ms;
    if (redraw) {
        evtimer_del(pod->timer);
        schedule(pod, true);
    }
    pod->timeout_ms = conf->timeout_ms;
    pod->healthy_threshold = conf->healthy_threshold;
    pod->unhealthy_threshold = conf->unhealthy_threshold;
    return MG_OK;
}

bool mg_hc_runs(const mg_hc_t *hc, const char *name, const struct sockaddr *addr, socklen_t len,
                mg_upstream_proto_t proto, const mg_hc_conf_t *conf)
{
    const hc_pod_t *pod = find_pod(hc, name);
    return pod != NULL && same_target(pod, addr, len, proto, conf);
}

void mg_hc_unwatch(mg_hc_t *hc, const char *name)
{
    hc_pod_t *pod = find_pod(hc, name);
    if (pod == NULL)
        return;
    unlink_pod(hc, pod);
    pod_free(pod);
}

mg_hc_state_t mg_hc_state(const mg_hc_t *hc, const char *name)
{
    const hc_pod_t *pod = find_pod(hc, name);
    return pod ? pod->state : MG_HC_UNKNOWN;
}

bool mg_hc_has_result(const mg_hc_t *hc, const char *name)
{
    const hc_pod_t *pod = find_pod(hc, name);
    return pod == NULL || pod->has_result;
}

void mg_hc_free(mg_hc_t *hc)
{
    if (hc == NULL)
        return;
    while (hc->pods) {
        hc_pod_t *pod = hc->pods;
        unlink_pod(hc, pod);
        pod_free(pod);
    }
    nghttp2_session_callbacks_del(hc->h2cbs);
    free(hc);
}
