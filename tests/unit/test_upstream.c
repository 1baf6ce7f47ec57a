/*
 * tests/unit/test_upstream.c - the pod side (gateway/upstream.c) against a real HTTP/2 server
 * (common/h2server.c as the pod) on 127.0.0.1, both on one event loop.
 *
 * upstream.c is compiled into this test, so that a test can reach a connection's nghttp2
 * session: 2^30 requests to wear out a connection's stream ids are skipped with
 * nghttp2_session_set_next_stream_id.
 */
#include "gateway/upstream.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <unistd.h>

#include "common/h2server.h"

/* ---------- the pod: answers every request with 200 "ok" ---------- */

/* With pod_interims, the pod tries interim heads first (see interims_pass_through), and what
 * mg_srv_interim returned lands in pod_interim_errs. */
#define POD_INTERIM_TRIES 13
static bool pod_interims;
static mg_err_t pod_interim_errs[POD_INTERIM_TRIES];

static void pod_send_interims(mg_srv_stream_t *s)
{
    mg_hdr_t hint[2] = {{"link", "</a.css>; rel=preload", 4, 21, MG_HPACK_INDEX},
                        {"content-length", "0", 14, 1, MG_HPACK_INDEX}};
    pod_interim_errs[0] = mg_srv_interim(s, 100, NULL, 0);
    pod_interim_errs[1] = mg_srv_interim(s, 101, NULL, 0);
    for (int i = 2; i < POD_INTERIM_TRIES - 1; i++)
        pod_interim_errs[i] = mg_srv_interim(s, 103, hint, 2);
}

static void pod_on_request(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud)
{
    (void)req, (void)ud;
    mg_hdr_t h[1] = {{"content-type", "text/plain", 12, 10, MG_HPACK_INDEX}};
    if (pod_interims)
        pod_send_interims(s);
    mg_srv_respond(s, 200, h, 1, false);
    if (pod_interims)
        pod_interim_errs[POD_INTERIM_TRIES - 1] = mg_srv_interim(s, 103, h, 1);
    mg_srv_write(s, "ok", 2);
    mg_srv_end(s, NULL, 0);
}
static void pod_on_body(mg_srv_stream_t *s, const uint8_t *d, size_t n)
{
    (void)d;
    mg_srv_consume(s, n);
}
static void pod_on_end(mg_srv_stream_t *s, const mg_hdr_t *t, size_t n)
{
    (void)s, (void)t, (void)n;
}
static void pod_on_drain(mg_srv_stream_t *s)
{
    (void)s;
}
static void pod_on_close(mg_srv_stream_t *s, bool complete)
{
    (void)s, (void)complete;
}
static const mg_srv_handler_t pod_handler = {.on_request = pod_on_request,
                                             .on_body = pod_on_body,
                                             .on_end = pod_on_end,
                                             .on_drain = pod_on_drain,
                                             .on_close = pod_on_close};

/* ---------- one exchange's outcome ---------- */

typedef struct result {
    int status;
    size_t body;
    bool done, failed;
    mg_up_fail_t why;
    int ninterim;      /* on_interim calls, each before on_headers */
    bool interim_fine; /* ... and each was a 103 with the link field only */
} result_t;

static void r_headers(void *ctx, int status, const mg_hdr_t *h, size_t n, bool end)
{
    (void)h, (void)n;
    result_t *r = ctx;
    r->status = status;
    r->done = end;
}
static void r_data(void *ctx, const uint8_t *d, size_t n)
{
    (void)d;
    ((result_t *)ctx)->body += n;
}
static void r_end(void *ctx, const mg_hdr_t *t, size_t n)
{
    (void)t, (void)n;
    ((result_t *)ctx)->done = true;
}
static void r_error(void *ctx, mg_up_fail_t why, bool sent)
{
    (void)sent;
    result_t *r = ctx;
    r->failed = r->done = true;
    r->why = why;
}
static void r_drain(void *ctx)
{
    (void)ctx;
}
static void r_interim(void *ctx, int status, const mg_hdr_t *h, size_t n)
{
    result_t *r = ctx;
    bool fine = r->status == 0 && status == 103 && n == 1 && strcmp(h[0].name, "link") == 0 &&
                h[0].value_len == 21 && memcmp(h[0].value, "</a.css>; rel=preload", 21) == 0;
    r->interim_fine = (r->ninterim++ == 0 || r->interim_fine) && fine;
}
static const mg_up_cbs_t cbs = {r_headers, r_data, r_end, r_error, r_drain, r_interim};

typedef struct fixture {
    struct event_base *base;
    mg_srv_t *pod;
    mg_upstreams_t *ups;
    mg_pod_t target;
    struct evbuffer *body;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = test_calloc(1, sizeof(*f));
    f->base = event_base_new();
    assert_non_null(f->base);
    mg_srv_conf_t sc = {.max_concurrent_streams = 100, .max_header_list_size = 65536,
                        .max_headers = 100, .stream_window = 65535,
                        .connection_window = 1 << 20};
    f->pod = mg_srv_new(f->base, &sc, &pod_handler, NULL, NULL);
    assert_non_null(f->pod);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    assert_int_equal(evutil_make_socket_nonblocking(fd), 0);
    assert_int_equal(mg_srv_listen(f->pod, fd, false), MG_OK);
    memcpy(&f->target.addr, &sin, sizeof(sin));
    f->target.addrlen = sizeof(sin);
    f->target.name = "127.0.0.1:pod";
    f->target.weight = 1;
    mg_up_conf_t uc = {.connect_timeout_ms = 2000, .max_streams_per_conn = 100,
                       .max_idle_conns_per_pod = 4, .idle_conn_ms = 60000};
    f->ups = mg_upstreams_new(f->base, &uc);
    assert_non_null(f->ups);
    f->body = evbuffer_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    mg_upstreams_free(f->ups);
    mg_srv_free(f->pod);
    evbuffer_free(f->body);
    event_base_free(f->base);
    test_free(f);
    return 0;
}

/* Sends GET / to the pod over |proto| and runs the loop until it is answered (or 5 s pass). */
static mg_up_stream_t *get_over(fixture_t *f, result_t *r, mg_upstream_proto_t proto)
{
    mg_up_req_t req = {.method = "GET", .scheme = "http", .authority = "pod", .path = "/",
                       .content_length = -1, .has_body = false, .body = f->body};
    *r = (result_t){0};
    mg_err_t err;
    mg_up_stream_t *s = mg_up_start(f->ups, &f->target, proto, &req, &cbs, r, &err);
    if (s == NULL)
        return NULL;
    for (int i = 0; i < 5000 && !r->done; i++) {
        struct timeval tv = {0, 1000};
        event_base_loopexit(f->base, &tv);
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    return s;
}

static mg_up_stream_t *get(fixture_t *f, result_t *r)
{
    return get_over(f, r, MG_UP_H2C);
}

static up_conn_t *the_conn(fixture_t *f)
{
    pool_t *p = pool_get(f->ups, &f->target, MG_UP_H2C);
    assert_non_null(p);
    return p->conns;
}

/* A connection whose stream ids are used up (2^31 - 1 was its last) takes no more requests:
 * the next goes on a new connection, and the old one is left to close once idle. Before, the
 * request failed at once, and every later one chose the same connection again. */
static void stream_ids_used_up_open_a_new_connection(void **state)
{
    fixture_t *f = *state;
    result_t r;
    assert_non_null(get(f, &r));
    assert_true(r.done && !r.failed);
    assert_int_equal(r.status, 200);
    up_conn_t *first = the_conn(f);
    assert_int_equal(nghttp2_session_set_next_stream_id(first->h2, INT32_MAX), 0);

    assert_non_null(get(f, &r)); /* stream 2^31 - 1: the last one */
    assert_true(r.done && !r.failed);
    assert_int_equal(r.status, 200);
    assert_ptr_equal(the_conn(f), first);

    for (int i = 0; i < 3; i++) {
        assert_non_null(get(f, &r));
        assert_true(r.done && !r.failed);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body, 2);
    }
    assert_true(first->goaway);
    pool_t *p = pool_get(f->ups, &f->target, MG_UP_H2C);
    int n = 0;
    for (up_conn_t *c = p->conns; c; c = c->next)
        n++;
    assert_int_equal(n, 2);
}

/* A pod's interim heads (mg_srv_interim, server side) reach on_interim before the final head,
 * over HTTP/2 and HTTP/1.1: at most MG_SRV_MAX_INTERIM of them, without content-length; the
 * server sends no 100 (its own, for Expect) or 101 that way, nor one after the final head. */
static void interims_pass_through(void **state)
{
    fixture_t *f = *state;
    const mg_upstream_proto_t protos[] = {MG_UP_H2C, MG_UP_H1};
    pod_interims = true;
    for (size_t p = 0; p < sizeof(protos) / sizeof(protos[0]); p++) {
        result_t r;
        memset(pod_interim_errs, 0x7f, sizeof(pod_interim_errs));
        assert_non_null(get_over(f, &r, protos[p]));
        assert_true(r.done && !r.failed);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body, 2);
        assert_int_equal(r.ninterim, MG_SRV_MAX_INTERIM);
        assert_true(r.interim_fine);
        for (int i = 0; i < POD_INTERIM_TRIES; i++) {
            mg_err_t want = i < 2 || i == POD_INTERIM_TRIES - 1 ? MG_E_PROTO
                            : i < 2 + MG_SRV_MAX_INTERIM       ? MG_OK
                                                               : MG_E_LIMIT;
            assert_int_equal(pod_interim_errs[i], want);
        }
    }
    pod_interims = false;
}

/* ---------- pools of retired pods ---------- */

static int podstate_setup(void **state)
{
    setup(state);
    fixture_t *f = *state;
    f->target.state = mg_podstate_get("svc", f->target.name); /* the "snapshot's" reference */
    assert_non_null(f->target.state);
    mg_podstate_mark_current(&f->target.state, 1);
    return 0;
}

static int podstate_teardown(void **state)
{
    teardown(state); /* the pools' references go with the upstreams */
    mg_podstate_free_all();
    mg_stats_free_all();
    return 0;
}

static void run_for_ms(fixture_t *f, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

/* A pool holds a reference to its pod's state. Once the routing retires the pod, the reaper
 * closes the pool's idle connection and frees the pool (not while a request waits in it), so the
 * state goes with the snapshot's last reference; a later request to the pod makes a new pool.
 * Before, pools and states stayed until the process ended. */
static void pools_of_retired_pods_are_freed(void **state)
{
    fixture_t *f = *state;
    mg_podstate_t *ps = f->target.state;
    result_t r;
    assert_non_null(get(f, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(mg_upstreams_npools(f->ups), 1);
    assert_int_equal(mg_upstreams_nconns(f->ups), 1);
    assert_int_equal(atomic_load(&ps->_refs), 2); /* the snapshot's and the pool's */
    /* in the routing: the reaper leaves the pool and its idle connection alone */
    mg_upstreams_routes_changed(f->ups);
    run_for_ms(f, REAP_MS + 200);
    assert_int_equal(mg_upstreams_npools(f->ups), 1);
    assert_int_equal(mg_upstreams_nconns(f->ups), 1);

    /* retired, with a request waiting in the pool (h2c: for the new connection's SETTINGS) */
    mg_podstate_mark_current(NULL, 0);
    pool_t *p = pool_get(f->ups, &f->target, MG_UP_H2C);
    p->conns->goaway = true; /* the next request needs a new connection */
    mg_up_req_t req = {.method = "GET",
                       .scheme = "http",
                       .authority = "pod",
                       .path = "/",
                       .content_length = -1,
                       .has_body = false,
                       .body = f->body};
    result_t r2 = {0};
    mg_err_t err;
    assert_non_null(mg_up_start(f->ups, &f->target, MG_UP_H2C, &req, &cbs, &r2, &err));
    assert_non_null(p->qhead);
    on_reap(-1, 0, f->ups);
    assert_int_equal(mg_upstreams_npools(f->ups), 1); /* kept for the waiting request */
    assert_non_null(p->qhead);
    for (int i = 0; i < 5000 && !r2.done; i++)
        run_for_ms(f, 1);
    assert_int_equal(r2.status, 200);
    assert_false(r2.failed);

    /* done: the next round closes both connections and frees the pool */
    mg_upstreams_routes_changed(f->ups);
    for (int i = 0; i < 30 && mg_upstreams_npools(f->ups) > 0; i++)
        run_for_ms(f, 100);
    assert_int_equal(mg_upstreams_npools(f->ups), 0);
    assert_int_equal(mg_upstreams_nconns(f->ups), 0);
    assert_int_equal(atomic_load(&ps->conns), 0);
    assert_int_equal(atomic_load(&ps->_refs), 1); /* the snapshot's only */
    assert_int_equal(mg_podstate_count(), 1);

    /* a request an old snapshot still routes there makes a new pool, freed in turn */
    assert_non_null(get(f, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(mg_upstreams_npools(f->ups), 1);
    assert_int_equal(atomic_load(&ps->_refs), 2);
    for (int i = 0; i < 30 && mg_upstreams_npools(f->ups) > 0; i++)
        run_for_ms(f, 100); /* armed by the new pool itself */
    assert_int_equal(mg_upstreams_npools(f->ups), 0);
    mg_podstate_unref(ps); /* the snapshot goes: so does the state, and its series */
    f->target.state = NULL;
    assert_int_equal(mg_podstate_count(), 0);
    assert_int_equal(mg_stats_count(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(stream_ids_used_up_open_a_new_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(interims_pass_through, setup, teardown),
        cmocka_unit_test_setup_teardown(pools_of_retired_pods_are_freed, podstate_setup,
                                        podstate_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
