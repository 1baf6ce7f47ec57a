/*
 * tests/unit/test_h2server.c - mg_srv_t through its header, over real loopback sockets.
 *
 * No threads: each test starts a server on 127.0.0.1 (port 0) and a client socket in the same
 * thread, and a pump loop alternates event_base_loop(EVLOOP_NONBLOCK) with non-blocking reads
 * and writes on the client side until the condition under test holds (or 5 s pass). HTTP/1.1
 * is written and read as raw bytes; HTTP/2 uses nghttp2's client session, so frames are real.
 *
 * The handler records what it sees in the test's fixture and answers as the test asks
 * (fixture.answer): at once with a content-length, at once streamed, after the request body
 * (echoing its size and its trailers), or not at all.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/util.h>
#include <nghttp2/nghttp2.h>

#include "common/h2server.h"
#include "common/log.h"

#define TIMEOUT_MS 5000

typedef enum {
    A_NOW,    /* 200, content-length, body "<method> <path>\n", in on_request */
    A_STREAM, /* 200 without content-length, body written in two pieces, in on_request */
    A_AFTER,  /* in on_end: 200, body "<n> bytes\n", trailer x-seen (HTTP/2: as a trailer) */
    A_HOLD,   /* never: the test drives the stream itself */
} answer_t;

typedef struct h2client h2client_t;

typedef struct client {
    int fd;
    char *buf; /* HTTP/1.1: everything received, NUL-terminated */
    size_t len, cap;
    bool eof;
    h2client_t *h2; /* HTTP/2: received bytes go to nghttp2 instead */
} client_t;

typedef struct fixture {
    struct event_base *base;
    mg_srv_t *srv;
    mg_srv_conf_t conf;
    answer_t answer;
    bool consume; /* on_body consumes at once */
    int sndbuf;   /* when set: the accepted sockets' SO_SNDBUF (start) */
    /* what the handler saw */
    int nrequests, nends, ncloses, ncomplete, nrejects;
    int reject_status;
    char reject_code[64];
    char reject_method[16], reject_path[64], reject_client[64], reject_rid[64];
    uint64_t reject_bytes;
    char paths[8][64];
    char method[16], proto[16], authority[64];
    int64_t content_length;
    char body[4096];      /* the first bytes of the request body */
    size_t body_len;      /* all of them */
    char trailers[256];   /* "name=value;" for each request trailer */
    mg_srv_stream_t *cur; /* the open stream, until on_close */
} fixture_t;

static fixture_t *fx;

/* ---------- handler ---------- */

static void answer(mg_srv_stream_t *s, int status, const char *body, bool content_length)
{
    char len[24];
    snprintf(len, sizeof(len), "%zu", strlen(body));
    mg_hdr_t h[2] = {
        {"content-type", "text/plain", 12, 10, MG_HPACK_INDEX},
        {"content-length", len, 14, strlen(len), MG_HPACK_INDEX},
    };
    assert_int_equal(mg_srv_respond(s, status, h, content_length ? 2 : 1, false), MG_OK);
    mg_srv_write(s, body, strlen(body));
}

static void on_request(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud)
{
    fixture_t *f = ud;
    assert_ptr_equal(f, fx);
    if (f->nrequests < 8)
        snprintf(f->paths[f->nrequests], sizeof(f->paths[0]), "%s", req->path);
    f->nrequests++;
    snprintf(f->method, sizeof(f->method), "%s", req->method);
    snprintf(f->proto, sizeof(f->proto), "%s", req->proto);
    snprintf(f->authority, sizeof(f->authority), "%s", req->authority);
    f->content_length = req->content_length;
    f->cur = s;
    char body[128];
    switch (f->answer) {
    case A_NOW:
        snprintf(body, sizeof(body), "%s %s\n", req->method, req->path);
        answer(s, 200, body, true);
        mg_srv_end(s, NULL, 0);
        break;
    case A_STREAM:
        answer(s, 200, "streamed ", false);
        mg_srv_write(s, "body\n", 5);
        mg_srv_end(s, NULL, 0);
        break;
    default:
        break;
    }
}

static void on_body(mg_srv_stream_t *s, const uint8_t *data, size_t len)
{
    assert_ptr_equal(s, fx->cur);
    if (fx->body_len < sizeof(fx->body)) {
        size_t n = sizeof(fx->body) - fx->body_len < len ? sizeof(fx->body) - fx->body_len : len;
        memcpy(fx->body + fx->body_len, data, n);
    }
    fx->body_len += len;
    if (fx->consume)
        mg_srv_consume(s, len);
}

static void on_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    assert_ptr_equal(s, fx->cur);
    fx->nends++;
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(fx->trailers);
        snprintf(fx->trailers + used, sizeof(fx->trailers) - used, "%s=%s;", trailers[i].name,
                 trailers[i].value);
    }
    if (fx->answer == A_AFTER) {
        char body[64];
        snprintf(body, sizeof(body), "%zu bytes\n", fx->body_len);
        answer(s, 200, body, false);
        mg_hdr_t t[1] = {{"x-seen", fx->trailers, 6, strlen(fx->trailers), MG_HPACK_INDEX}};
        mg_srv_end(s, t, 1);
    }
}

static void on_drain(mg_srv_stream_t *s)
{
    (void)s;
}

static void on_close(mg_srv_stream_t *s, bool complete)
{
    assert_ptr_equal(s, fx->cur);
    fx->cur = NULL;
    fx->ncloses++;
    fx->ncomplete += complete;
}

static void reject_id(void *ud, char *rid, size_t cap)
{
    snprintf(rid, cap, "rid-%d", ((fixture_t *)ud)->nrejects + 1);
}

static void on_reject(void *ud, const mg_srv_req_t *req, int status, const char *code,
                      const char *rid, uint64_t resp_bytes)
{
    fixture_t *f = ud;
    f->reject_bytes = resp_bytes;
    snprintf(f->reject_rid, sizeof(f->reject_rid), "%s", rid ? rid : "");
    assert_non_null(req->method);
    f->nrejects++;
    f->reject_status = status;
    snprintf(f->reject_code, sizeof(f->reject_code), "%s", code);
    snprintf(f->reject_method, sizeof(f->reject_method), "%s", req->method);
    snprintf(f->reject_path, sizeof(f->reject_path), "%s", req->path);
    snprintf(f->reject_client, sizeof(f->reject_client), "%s", req->client);
}

static const mg_srv_handler_t handler = {
    .on_request = on_request,
    .on_body = on_body,
    .on_end = on_end,
    .on_drain = on_drain,
    .on_close = on_close,
    .on_reject = on_reject,
    .request_id = reject_id,
};

/* ---------- server and client plumbing ---------- */

static int fx_port;

static int setup(void **state)
{
    fixture_t *f = test_calloc(1, sizeof(*f));
    f->conf = (mg_srv_conf_t){
        .max_concurrent_streams = 7,
        .max_header_list_size = 4096,
        .max_headers = 50,
        .stream_window = 65535,
        .connection_window = 1 << 20,
        .client_idle_ms = 0,
    };
    f->consume = true;
    fx = f;
    *state = f;
    return 0;
}

/* Starts the server with f->conf on 127.0.0.1 and an ephemeral port (fx_port). */
static void start(fixture_t *f)
{
    f->base = event_base_new();
    assert_non_null(f->base);
    f->srv = mg_srv_new(f->base, &f->conf, &handler, f, NULL);
    assert_non_null(f->srv);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* small kernel buffers (accepted sockets inherit them): backpressure shows within a few
     * hundred KiB instead of the megabytes loopback autotuning would absorb */
    int small = 64 * 1024;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    if (f->sndbuf)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &f->sndbuf, sizeof(f->sndbuf)), 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    fx_port = ntohs(sin.sin_port);
    assert_int_equal(evutil_make_socket_nonblocking(fd), 0);
    assert_int_equal(mg_srv_listen(f->srv, fd, false), MG_OK);
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->srv)
        mg_srv_free(f->srv);
    if (f->base)
        event_base_free(f->base);
    test_free(f);
    fx = NULL;
    return 0;
}

static client_t *client_new(void)
{
    client_t *c = test_calloc(1, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    int small = 64 * 1024;
    assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx_port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* the kernel completes a loopback connect before the server accepts */
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(evutil_make_socket_nonblocking(c->fd), 0);
    c->cap = 1 << 16;
    c->buf = test_malloc(c->cap);
    c->buf[0] = '\0';
    return c;
}

static void client_free(client_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    test_free(c->buf);
    test_free(c);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void h2_feed(h2client_t *h, const uint8_t *data, size_t len);
static bool h2_flush(h2client_t *h);

/* Reads what is there; returns true when something arrived. */
static bool client_read(client_t *c)
{
    bool got = false;
    while (!c->eof) {
        char tmp[16384];
        ssize_t n = read(c->fd, tmp, sizeof(tmp));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            c->eof = true; /* closed (or reset) by the server */
            return true;
        }
        if (n < 0)
            return got;
        got = true;
        if (c->h2) {
            h2_feed(c->h2, (const uint8_t *)tmp, (size_t)n);
            continue;
        }
        if (c->len + (size_t)n + 1 > c->cap) {
            size_t cap = (c->len + (size_t)n + 1) * 2;
            char *nb = test_malloc(cap);
            memcpy(nb, c->buf, c->len);
            test_free(c->buf);
            c->buf = nb;
            c->cap = cap;
        }
        memcpy(c->buf + c->len, tmp, (size_t)n);
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
    }
    return got;
}

/* One round: the server's loop once, then the client side. Returns true when anything moved. */
static bool step(fixture_t *f, client_t *c)
{
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    bool moved = false;
    if (c) {
        if (c->h2)
            moved |= h2_flush(c->h2);
        moved |= client_read(c);
    }
    return moved;
}

typedef bool (*cond_fn)(fixture_t *f, client_t *c, const void *arg);

/* Pumps until |cond| holds; false after TIMEOUT_MS. */
static bool run_until(fixture_t *f, client_t *c, cond_fn cond, const void *arg)
{
    long deadline = now_ms() + TIMEOUT_MS;
    while (!cond(f, c, arg)) {
        if (now_ms() > deadline)
            return false;
        if (!step(f, c)) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
    return true;
}

/* Pumps until nothing has moved for |quiet_ms|. */
static void run_quiet(fixture_t *f, client_t *c, long quiet_ms)
{
    long last = now_ms();
    while (now_ms() - last < quiet_ms) {
        if (step(f, c))
            last = now_ms();
        else {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
}

static void client_send(fixture_t *f, client_t *c, const void *data, size_t len)
{
    const char *p = data;
    long deadline = now_ms() + TIMEOUT_MS;
    while (len > 0) {
        ssize_t n = write(c->fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else {
            assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
            assert_true(now_ms() < deadline);
            step(f, c);
        }
    }
}

static void client_sends(fixture_t *f, client_t *c, const char *s)
{
    client_send(f, c, s, strlen(s));
}

static bool has_text(fixture_t *f, client_t *c, const void *text)
{
    (void)f;
    return strstr(c->buf, text) != NULL;
}

typedef struct count_arg {
    const char *text;
    int n;
} count_arg_t;

/* |text| appears at least |n| times. */
static bool has_count(fixture_t *f, client_t *c, const void *arg)
{
    const count_arg_t *a = arg;
    int n = 0;
    for (const char *p = c->buf; (p = strstr(p, a->text)) != NULL; p++)
        n++;
    (void)f;
    return n >= a->n;
}

static bool is_eof(fixture_t *f, client_t *c, const void *arg)
{
    (void)f;
    (void)arg;
    return c->eof;
}

static bool got_request(fixture_t *f, client_t *c, const void *arg)
{
    (void)c;
    (void)arg;
    return f->nrequests > 0;
}

static bool no_conns(fixture_t *f, client_t *c, const void *arg)
{
    (void)c;
    (void)arg;
    return mg_srv_nconns(f->srv) == 0;
}

/* ---------- HTTP/1.1 ---------- */

/* Three requests in one write: three responses, in order, on one kept-alive connection. */
static void h1_pipelining_in_order(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "GET /one HTTP/1.1\r\nHost: a.example\r\n\r\n"
                 "GET /two HTTP/1.1\r\nHost: a.example\r\n\r\n"
                 "GET /three HTTP/1.1\r\nHost: a.example\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /three\n"));
    const char *one = strstr(c->buf, "GET /one\n"), *two = strstr(c->buf, "GET /two\n"),
               *three = strstr(c->buf, "GET /three\n");
    assert_non_null(one);
    assert_non_null(two);
    assert_true(one < two && two < three);
    assert_int_equal(f->nrequests, 3);
    assert_string_equal(f->paths[0], "/one");
    assert_string_equal(f->paths[2], "/three");
    assert_string_equal(f->authority, "a.example");
    assert_string_equal(f->proto, "http/1.1");
    assert_null(strstr(c->buf, "connection: close"));
    assert_int_equal(f->ncloses, 3);
    assert_int_equal(f->ncomplete, 3);

    /* still open: a fourth request on the same connection */
    client_sends(f, c, "GET /four HTTP/1.1\r\nHost: a.example\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /four\n"));
    assert_false(c->eof);
    assert_int_equal(mg_srv_nconns(f->srv), 1);
    client_free(c);
    assert_true(run_until(f, NULL, no_conns, NULL));
}

/* At max_conns the server stops accepting: a third client waits in the listen queue, unserved,
 * until one of the two it holds closes; then it is accepted and answered. */
static void conn_limit_pauses_accepting(void **state)
{
    fixture_t *f = *state;
    f->conf.max_conns = 2;
    start(f);
    client_t *a = client_new(), *b = client_new(), *c = client_new();
    client_sends(f, c, "GET /third HTTP/1.1\r\nHost: a.example\r\n\r\n");
    run_quiet(f, c, 200);
    assert_int_equal(mg_srv_nconns(f->srv), 2);
    assert_int_equal(f->nrequests, 0);
    assert_int_equal(c->len, 0);
    unsigned long at_limit, on_error;
    mg_srv_accept_pauses(f->srv, &at_limit, &on_error);
    assert_int_equal(at_limit, 1);
    assert_int_equal(on_error, 0);

    client_free(a);
    assert_true(run_until(f, c, has_text, "GET /third\n"));
    assert_int_equal(f->nrequests, 1);
    assert_int_equal(mg_srv_nconns(f->srv), 2); /* b and c: full again */
    mg_srv_accept_pauses(f->srv, &at_limit, &on_error);
    assert_int_equal(at_limit, 2);

    /* below the limit for good: accepting goes on */
    client_free(b);
    client_t *d = client_new();
    client_sends(f, d, "GET /fourth HTTP/1.1\r\nHost: a.example\r\n\r\n");
    assert_true(run_until(f, d, has_text, "GET /fourth\n"));
    client_free(c);
    client_free(d);
    assert_true(run_until(f, NULL, no_conns, NULL));
}

/* A chunked body reaches on_body byte for byte; its trailers reach on_end. */
static void h1_chunked_body_and_trailers(void **state)
{
    fixture_t *f = *state;
    f->answer = A_AFTER;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n");
    assert_true(run_until(f, c, got_request, NULL));
    run_quiet(f, c, 50);
    assert_int_equal(f->nrequests, 1);
    assert_int_equal(f->nends, 0);
    assert_int_equal(f->content_length, -1);
    /* fields that have no place in trailers are dropped (mg_trailer_forbidden) */
    client_sends(f, c, "6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\nConnection: x\r\n"
                       "Host: elsewhere\r\nX-Other: 2\r\n\r\n");
    assert_true(run_until(f, c, has_text, "\r\n0\r\n"));
    assert_int_equal(f->body_len, 11);
    assert_memory_equal(f->body, "hello world", 11);
    assert_int_equal(f->nends, 1);
    assert_string_equal(f->trailers, "x-checksum=abc;x-other=2;");
    /* the response was streamed with chunked framing and a trailer of its own */
    assert_non_null(strstr(c->buf, "transfer-encoding: chunked\r\n"));
    assert_non_null(
        strstr(c->buf, "\r\n9\r\n11 bytes\n\r\n0\r\nx-seen: x-checksum=abc;x-other=2;\r\n\r\n"));
    assert_false(c->eof);
    client_free(c);
}

/* HEAD: headers (content-length kept) and no body; the next response follows directly. */
static void h1_head_has_no_body(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"
                 "GET /g HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /g\n"));
    assert_string_equal(c->buf, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                                "content-length: 8\r\n\r\n"
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                                "content-length: 7\r\n\r\nGET /g\n");

    /* streamed (no content-length): no chunked framing either */
    f->answer = A_STREAM;
    c->len = 0;
    c->buf[0] = '\0';
    client_sends(f, c,
                 "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"
                 "GET /g HTTP/1.1\r\nHost: a\r\n\r\n");
    count_arg_t two = {"HTTP/1.1 200", 2};
    assert_true(run_until(f, c, has_count, &two));
    assert_true(run_until(f, c, has_text, "0\r\n\r\n"));
    const char *second = strstr(c->buf + 1, "HTTP/1.1 200");
    assert_null(memmem(c->buf, (size_t)(second - c->buf), "streamed", 8));
    assert_null(memmem(c->buf, (size_t)(second - c->buf), "chunked", 7));
    assert_non_null(strstr(second, "transfer-encoding: chunked\r\n"));
    assert_non_null(strstr(second, "streamed "));
    assert_false(c->eof);
    client_free(c);
}

/* HTTP/1.0 without keep-alive: a streamed body ends with the connection (no chunked
 * framing, which 1.0 does not know); a content-length body keeps its length. */
static void h1_http10_response_framing(void **state)
{
    fixture_t *f = *state;
    f->answer = A_STREAM;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "GET /old HTTP/1.0\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_null(strstr(c->buf, "chunked"));
    assert_null(strstr(c->buf, "content-length"));
    assert_non_null(strstr(c->buf, "connection: close\r\n"));
    const char *body = strstr(c->buf, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "streamed body\n");
    client_free(c);

    f->answer = A_NOW;
    c = client_new();
    client_sends(f, c, "GET /old HTTP/1.0\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_non_null(strstr(c->buf, "content-length: 9\r\n"));
    assert_non_null(strstr(c->buf, "\r\n\r\nGET /old\n"));
    client_free(c);
    assert_int_equal(f->nrequests, 2);
}

/* Expect: 100-continue gets the interim response before the client sends the body. */
static void h1_expect_100_continue(void **state)
{
    fixture_t *f = *state;
    f->answer = A_AFTER;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                 "Expect: 100-continue\r\n\r\n");
    assert_true(run_until(f, c, has_text, "HTTP/1.1 100 Continue\r\n\r\n"));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 100 Continue\r\n\r\n", 25), 0);
    assert_int_equal(f->content_length, 5);
    assert_null(strstr(c->buf, "200"));
    client_sends(f, c, "abcde");
    assert_true(run_until(f, c, has_text, "5 bytes\n"));
    assert_non_null(strstr(c->buf + 25, "HTTP/1.1 200 OK\r\n"));
    assert_memory_equal(f->body, "abcde", 5);
    client_free(c);
}

/* Header fields over max_header_list_size: 431 in JSON, logged through on_reject, never
 * shown to on_request, and the connection closes. */
static void h1_header_too_large(void **state)
{
    fixture_t *f = *state;
    f->conf.max_header_list_size = 1024;
    start(f);
    client_t *c = client_new();
    char req[4096];
    char big[2001];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    snprintf(req, sizeof(req), "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n", big);
    client_sends(f, c, req);
    assert_true(run_until(f, c, is_eof, NULL));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 431 ", 13), 0);
    assert_non_null(strstr(c->buf, "content-type: application/json\r\n"));
    assert_non_null(strstr(c->buf, "connection: close\r\n"));
    assert_non_null(strstr(c->buf, "{\"error\":{\"code\":\"headers_too_large\""));
    assert_non_null(strstr(c->buf, "\"request_id\":\"rid-1\"}}"));
    assert_string_equal(f->reject_rid, "rid-1");
    /* the log is told the answer's body length, written after it: what the client got */
    const char *cl = strstr(c->buf, "content-length: ");
    assert_non_null(cl);
    assert_int_equal(f->reject_bytes, strtoull(cl + 16, NULL, 10));
    assert_true(f->reject_bytes > 50);
    assert_int_equal(f->nrequests, 0);
    assert_int_equal(f->ncloses, 0);
    assert_int_equal(f->nrejects, 1);
    assert_int_equal(f->reject_status, 431);
    assert_string_equal(f->reject_code, "headers_too_large");
    client_free(c);
    assert_true(run_until(f, NULL, no_conns, NULL));
}

/* More fields than max_headers: the same 431, even with a body still on its way. */
static void h1_too_many_headers(void **state)
{
    fixture_t *f = *state;
    f->conf.max_headers = 4;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /many HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nA: 1\r\nB: 2\r\n"
                 "C: 3\r\nD: 4\r\n\r\nabc");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 431 ", 13), 0);
    assert_int_equal(f->nrequests, 0);
    assert_int_equal(f->reject_status, 431);
    client_free(c);
}

/* A malformed request line: 400 in JSON and the connection closes. */
static void h1_malformed_request_line(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\nTHIS IS NOT HTTP\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    const char *bad = strstr(c->buf, "HTTP/1.1 400 Bad Request\r\n");
    assert_non_null(bad);
    assert_true(strstr(c->buf, "GET /ok\n") < bad); /* the good one first, in order */
    assert_non_null(strstr(bad, "connection: close\r\n"));
    assert_non_null(strstr(bad, "\"code\":\"bad_request\""));
    assert_int_equal(f->nrequests, 1);
    assert_int_equal(f->nrejects, 1);
    assert_int_equal(f->reject_status, 400);
    client_free(c);

    c = client_new();
    client_sends(f, c, "GET / HTTP/1.1 trailing\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 400 ", 13), 0);
    client_free(c);
    assert_int_equal(f->nrequests, 1);
}

/* Writes |data| while the loop runs, until all is written or neither the socket took bytes
 * nor the handler saw body bytes for 300 ms; returns how much the socket took. */
static size_t write_stalled(fixture_t *f, client_t *c, const char *data, size_t len)
{
    size_t off = 0, seen = f->body_len;
    long last = now_ms(), deadline = last + 2 * TIMEOUT_MS;
    while (off < len && now_ms() - last < 300 && now_ms() < deadline) {
        ssize_t n = write(c->fd, data + off, len - off);
        if (n > 0) {
            off += (size_t)n;
            last = now_ms();
        }
        if (!step(f, c) && n <= 0) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
        if (f->body_len != seen) {
            seen = f->body_len;
            last = now_ms();
        }
    }
    run_quiet(f, c, 50);
    return off;
}

static bool body_grew(fixture_t *f, client_t *c, const void *arg)
{
    (void)c;
    return f->body_len > *(const size_t *)arg;
}

static bool request_ended(fixture_t *f, client_t *c, const void *arg)
{
    (void)c;
    (void)arg;
    return f->nends > 0;
}

/* HTTP/1.1 flow control: reading stops once more than MG_SRV_HIGH body bytes are unconsumed
 * (what was already read still arrives), and mg_srv_consume resumes it. */
static void h1_backpressure(void **state)
{
    fixture_t *f = *state;
    enum { BODY = 2 * 1024 * 1024, SLACK = 256 * 1024 };
    f->answer = A_AFTER;
    f->consume = false;
    start(f);
    client_t *c = client_new();
    char head[128];
    snprintf(head, sizeof(head), "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n",
             (int)BODY);
    client_sends(f, c, head);
    char *body = test_malloc(BODY);
    memset(body, 'b', BODY);
    size_t off = write_stalled(f, c, body, BODY);
    assert_true(off < BODY); /* the client was stopped */
    assert_true(f->body_len > MG_SRV_HIGH);
    assert_true(f->body_len <= MG_SRV_HIGH + SLACK);

    size_t consumed = 0;
    long deadline = now_ms() + TIMEOUT_MS;
    while (f->nends == 0 && now_ms() < deadline) {
        if (f->cur && f->body_len > consumed) {
            mg_srv_consume(f->cur, f->body_len - consumed);
            consumed = f->body_len;
        }
        if (off < BODY) {
            ssize_t n = write(c->fd, body + off, BODY - off);
            if (n > 0)
                off += (size_t)n;
        }
        step(f, c);
    }
    assert_true(run_until(f, c, request_ended, NULL));
    assert_int_equal(f->body_len, BODY);
    assert_true(run_until(f, c, has_text, "2097152 bytes\n"));
    test_free(body);
    client_free(c);
}

/* The handler keeps the stream: mg_srv_shutdown closes the connection after the response. */
static void h1_shutdown_after_response(void **state)
{
    fixture_t *f = *state;
    f->answer = A_HOLD;
    start(f);
    client_t *idle = client_new();
    client_t *c = client_new();
    client_sends(f, c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(run_until(f, c, got_request, NULL));
    run_quiet(f, idle, 20);
    assert_int_equal(f->nrequests, 1);
    assert_int_equal(mg_srv_nconns(f->srv), 2);
    mg_srv_shutdown(f->srv);
    assert_true(run_until(f, idle, is_eof, NULL)); /* idle: closed at once */
    assert_false(c->eof);
    answer(f->cur, 200, "late\n", true);
    mg_srv_end(f->cur, NULL, 0);
    assert_true(run_until(f, c, is_eof, NULL));
    assert_non_null(strstr(c->buf, "connection: close\r\n"));
    assert_non_null(strstr(c->buf, "\r\n\r\nlate\n"));
    assert_int_equal(f->ncomplete, 1);
    client_free(idle);
    client_free(c);
}

/*
 * Regressions: each of these failed (or crashed) before its fix in common/h2server.c.
 */

/* Answered before its chunked body ended, a request's trailers are parsed with c->h1s NULL:
 * h1_on_value_complete -> hdr_push(NULL, ...) dereferences it (SIGSEGV). */
static void h1_trailers_after_early_answer(void **state)
{
    fixture_t *f = *state;
    start(f); /* A_NOW: the handler answers in on_request */
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /early HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_non_null(strstr(c->buf, "POST /early\n"));
    client_free(c);
}

/* Answered at once (A_NOW) while a body of unknown length is still coming: the answer says
 * Connection: close, the client goes on sending, as clients do, and must still get the answer
 * and a clean end of stream. Closed with unread input, the socket would answer the late body
 * with a reset: the client's writes fail and it may lose the answer (lingering close,
 * conn_close_flushed). */
static void h1_early_answer_then_late_body(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "POST /early HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    long until = now_ms() + 100; /* the server answers and closes; the client reads nothing yet */
    while (now_ms() < until) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    static char body[300000 + 32];
    size_t n = (size_t)snprintf(body, sizeof(body), "%x\r\n", 300000);
    memset(body + n, 'b', 300000);
    memcpy(body + n + 300000, "\r\n0\r\n\r\n", 7);
    client_send(f, c, body, n + 300000 + 7); /* asserts that no write fails */
    assert_true(run_until(f, c, is_eof, NULL));
    assert_non_null(strstr(c->buf, "POST /early\n"));
    assert_non_null(strstr(c->buf, "connection: close\r\n"));
    assert_true(run_until(f, c, no_conns, NULL)); /* it ends once the client is done */
    client_free(c);
}

/* The lingering close drops at most 1 MiB (LINGER_MAX) of what the client goes on sending: a
 * client that keeps sending is cut off then, not after the 2 s of LINGER_MS. */
static void h1_linger_stops_after_a_mebibyte(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "POST /early HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_true(run_until(f, c, has_text, "connection: close\r\n"));
    static char chunk[65536 + 16];
    size_t head = (size_t)snprintf(chunk, sizeof(chunk), "%x\r\n", 65536);
    memset(chunk + head, 'b', 65536);
    memcpy(chunk + head + 65536, "\r\n", 2);
    size_t len = head + 65536 + 2, sent = 0;
    long start_ms = now_ms();
    while (mg_srv_nconns(f->srv) > 0 && sent < (64u << 20) && now_ms() - start_ms < 1500) {
        ssize_t n = send(c->fd, chunk, len, MSG_NOSIGNAL);
        if (n > 0)
            sent += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            break; /* reset by the server: it gave up on us */
        event_base_loop(f->base, EVLOOP_NONBLOCK);
    }
    assert_true(run_until(f, NULL, no_conns, NULL));
    assert_true(now_ms() - start_ms < 1500); /* LINGER_MS would have been 2000 */
    assert_true(sent > (1u << 20));
    client_free(c);
}

/* An HTTP/2 client that breaks the protocol while it still has frames on the way gets our
 * GOAWAY (PROTOCOL_ERROR), then a clean end of stream: the server reads and drops what was
 * in flight instead of closing over unread input, which would answer it with a reset that
 * fails the client's writes and can beat the GOAWAY to it. */
static void h2_goaway_lingers_for_what_the_client_was_sending(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    client_send(f, c, preface, sizeof(preface) - 1);
    static const uint8_t settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
    client_send(f, c, settings, sizeof(settings));
    /* WINDOW_UPDATE of 0 on the connection: a connection error (RFC 9113 6.9) */
    static const uint8_t bad[13] = {0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    client_send(f, c, bad, sizeof(bad));
    /* then PING frames, as a busy client would have in flight: 256 KiB of them */
    static uint8_t pings[17 * 3855];
    for (size_t k = 0; k < sizeof(pings); k += 17) {
        const uint8_t ping[9] = {0, 0, 8, 6, 0, 0, 0, 0, 0};
        memcpy(pings + k, ping, 9);
        memset(pings + k + 9, (int)(k & 0xff), 8);
    }
    size_t total = 4 * sizeof(pings), sent = 0;
    int send_err = 0;
    long start_ms = now_ms();
    while (sent < total && now_ms() - start_ms < TIMEOUT_MS) {
        size_t off = sent % sizeof(pings);
        ssize_t n = send(c->fd, pings + off, sizeof(pings) - off, MSG_NOSIGNAL);
        if (n > 0)
            sent += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            send_err = errno; /* reset by the server */
            break;
        }
        event_base_loop(f->base, EVLOOP_NONBLOCK);
    }
    assert_int_equal(send_err, 0);
    assert_int_equal(sent, total);
    /* what came back: SETTINGS, maybe a SETTINGS ACK, the GOAWAY; then the server's FIN */
    uint8_t got[4096];
    size_t len = 0;
    int read_err = 0;
    bool eof = false;
    start_ms = now_ms();
    while (!eof && !read_err && now_ms() - start_ms < TIMEOUT_MS) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        ssize_t n = read(c->fd, got + len, sizeof(got) - len);
        if (n == 0)
            eof = true;
        else if (n > 0)
            len += (size_t)n;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            read_err = errno;
        assert_true(len < sizeof(got));
    }
    assert_int_equal(read_err, 0);
    assert_true(eof);
    bool goaway = false;
    for (size_t k = 0; k + 9 <= len;) {
        size_t flen = (size_t)got[k] << 16 | (size_t)got[k + 1] << 8 | got[k + 2];
        if (got[k + 3] == NGHTTP2_GOAWAY && flen >= 8 && k + 9 + flen <= len) {
            const uint8_t *e = got + k + 9 + 4;
            goaway = ((uint32_t)e[0] << 24 | (uint32_t)e[1] << 16 | (uint32_t)e[2] << 8 | e[3]) ==
                     NGHTTP2_PROTOCOL_ERROR;
        }
        k += 9 + flen;
    }
    assert_true(goaway);
    close(c->fd);
    c->fd = -1;
    assert_true(run_until(f, NULL, no_conns, NULL));
    client_free(c);
}

/* Sends |data| one byte a loop turn: the server reads each byte on its own. */
static void client_send_bytewise(fixture_t *f, client_t *c, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        client_send(f, c, data + i, 1);
        run_quiet(f, NULL, 1);
    }
}

/* Scans the raw HTTP/2 frames in |got| (|len| bytes) for a GOAWAY: its error code, its last
 * stream id; false when there is none. */
static bool raw_goaway(const uint8_t *got, size_t len, uint32_t *error, uint32_t *last)
{
    bool found = false;
    for (size_t k = 0; k + 9 <= len;) {
        size_t flen = (size_t)got[k] << 16 | (size_t)got[k + 1] << 8 | got[k + 2];
        if (got[k + 3] == NGHTTP2_GOAWAY && flen >= 8 && k + 9 + flen <= len) {
            const uint8_t *p = got + k + 9;
            *last = ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]) &
                    0x7fffffff;
            *error = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
            found = true;
        }
        k += 9 + flen;
    }
    return found;
}

/* The empty DATA frames counted from the frame headers (common/h2server.c, scan_frames) when
 * every header, and a padded frame's pad length, comes cut over many reads: a run of 10 empty
 * frames among data is served, the 11th in a row gets GOAWAY ENHANCE_YOUR_CALM. */
static void h2_empty_data_run_cut_across_reads(void **state)
{
    fixture_t *f = *state;
    f->answer = A_HOLD;
    start(f);
    client_t *c = client_new();
    static const uint8_t head[] = {
        'P', 'R', 'I', ' ', '*', ' ', 'H', 'T', 'T', 'P', '/', '2', '.', '0', '\r', '\n', '\r',
        '\n', 'S', 'M', '\r', '\n', '\r', '\n', 0, 0, 0, 4, 0, 0, 0, 0, 0, /* SETTINGS */
        /* HEADERS, END_HEADERS, stream 1: POST http / with :authority "a" */
        0, 0, 6, 1, 4, 0, 0, 0, 1, 0x83, 0x86, 0x84, 0x01, 0x01, 'a'};
    client_send_bytewise(f, c, head, sizeof(head));
    static const uint8_t empty[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    static const uint8_t padded[13] = {0, 0, 4, 0, 8, 0, 0, 0, 1, 3, 0, 0, 0}; /* padding only */
    static const uint8_t data[10] = {0, 0, 1, 0, 0, 0, 0, 0, 1, 'x'};
    for (int run = 0; run < 3; run++) { /* runs of 10: served */
        for (int i = 0; i < 5; i++) {
            client_send_bytewise(f, c, empty, sizeof(empty));
            client_send_bytewise(f, c, padded, sizeof(padded));
        }
        client_send_bytewise(f, c, data, sizeof(data));
    }
    run_quiet(f, NULL, 50);
    assert_int_equal(mg_srv_nconns(f->srv), 1);
    for (int i = 0; i < 11; i++) /* the 11th in a row */
        client_send_bytewise(f, c, i % 2 ? padded : empty, i % 2 ? sizeof(padded) : sizeof(empty));
    uint8_t got[4096];
    size_t len = 0;
    long start_ms = now_ms();
    bool eof = false;
    while (!eof && now_ms() - start_ms < TIMEOUT_MS) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        ssize_t n = read(c->fd, got + len, sizeof(got) - len);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            eof = true;
        else if (n > 0)
            len += (size_t)n;
        assert_true(len < sizeof(got));
    }
    assert_true(eof);
    uint32_t error = 0, last = 0;
    assert_true(raw_goaway(got, len, &error, &last));
    assert_int_equal(error, NGHTTP2_ENHANCE_YOUR_CALM);
    close(c->fd);
    c->fd = -1;
    assert_true(run_until(f, NULL, no_conns, NULL));
    client_free(c);
}

/* The same when the GOAWAY's last bytes leave through the bufferevent (the client read slowly
 * and the socket was full): the write callback that sees the output drained starts the linger,
 * and must not close the connection over the client's unread frames at once. */
static void h2_goaway_lingers_after_a_full_socket(void **state)
{
    fixture_t *f = *state;
    f->answer = A_HOLD;
    f->sndbuf = 4096; /* the socket takes less than the bufferevent's 16 KiB writes */
    start(f);
    client_t *c = client_new();
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    client_send(f, c, preface, sizeof(preface) - 1);
    /* SETTINGS_INITIAL_WINDOW_SIZE 2^31-1 and a connection WINDOW_UPDATE: no flow control
     * stops the answer, only the socket does */
    static const uint8_t settings[15] = {0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff};
    static const uint8_t wu[13] = {0, 0, 4, 8, 0, 0, 0, 0, 0, 0x7f, 0xff, 0, 0};
    /* HEADERS, stream 1, END_STREAM | END_HEADERS: GET http / with :authority "a" */
    static const uint8_t get[15] = {0, 0, 6, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 1, 'a'};
    client_send(f, c, settings, sizeof(settings));
    client_send(f, c, wu, sizeof(wu));
    client_send(f, c, get, sizeof(get));
    assert_true(run_until(f, c, got_request, NULL));
    assert_int_equal(mg_srv_respond(f->cur, 200, NULL, 0, false), MG_OK);
    /* the answer fills the socket: the client reads nothing for now */
    static uint8_t chunk[65536];
    size_t last = 0;
    long quiet_since = now_ms(), start_ms = now_ms();
    while (now_ms() - quiet_since < 100 && now_ms() - start_ms < TIMEOUT_MS) {
        while (f->cur && mg_srv_pending(f->cur) < MG_SRV_HIGH)
            mg_srv_write(f->cur, chunk, sizeof(chunk));
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        size_t pending = f->cur ? mg_srv_pending(f->cur) : 0;
        if (pending != last)
            quiet_since = now_ms();
        last = pending;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_true(last >= MG_SRV_HIGH); /* stuck: the socket is full */
    /* WINDOW_UPDATE of 0 on the connection: a connection error, GOAWAY(PROTOCOL_ERROR) */
    static const uint8_t bad[13] = {0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(send(c->fd, bad, sizeof(bad), MSG_NOSIGNAL), (ssize_t)sizeof(bad));
    /* the client reads slowly, a PING after each read, as a busy client keeps sending */
    static const uint8_t ping[17] = {0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t hdr[9];
    size_t hlen = 0, skip = 0;
    bool goaway = false, eof = false;
    int read_err = 0, send_err = 0;
    start_ms = now_ms();
    while (!eof && !read_err && !send_err && now_ms() - start_ms < 2 * TIMEOUT_MS) {
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        uint8_t rb[1024];
        ssize_t n = read(c->fd, rb, sizeof(rb));
        if (n == 0)
            eof = true;
        else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            read_err = errno;
        for (ssize_t k = 0; k < n;) { /* frame headers only: types, lengths skipped */
            if (skip) {
                size_t t = (size_t)(n - k) < skip ? (size_t)(n - k) : skip;
                skip -= t;
                k += (ssize_t)t;
                continue;
            }
            hdr[hlen++] = rb[k++];
            if (hlen == 9) {
                skip = (size_t)hdr[0] << 16 | (size_t)hdr[1] << 8 | hdr[2];
                goaway |= hdr[3] == NGHTTP2_GOAWAY;
                hlen = 0;
            }
        }
        if (!eof && !read_err && send(c->fd, ping, sizeof(ping), MSG_NOSIGNAL) < 0 &&
            errno != EAGAIN && errno != EWOULDBLOCK)
            send_err = errno;
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(read_err, 0);
    assert_int_equal(send_err, 0);
    assert_true(eof);
    assert_true(goaway);
    /* lingering: what the client still sends is read and dropped, never answered by a reset */
    for (int i = 0; i < 100 && !send_err; i++) {
        if (send(c->fd, ping, sizeof(ping), MSG_NOSIGNAL) < 0 && errno != EAGAIN &&
            errno != EWOULDBLOCK)
            send_err = errno;
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(send_err, 0);
    uint8_t rb[16];
    assert_int_equal(read(c->fd, rb, sizeof(rb)), 0); /* still the FIN, no reset */
    assert_int_equal(mg_srv_nconns(f->srv), 1);
    close(c->fd);
    c->fd = -1;
    assert_true(run_until(f, NULL, no_conns, NULL));
    client_free(c);
}

static bool got_two_requests(fixture_t *f, client_t *c, const void *arg)
{
    (void)c;
    (void)arg;
    return f->nrequests >= 2;
}

/* A pipelined request's answer reset midway (its pod failed) closes the connection, but the
 * earlier answer, complete and still queued for a client that reads slowly, leaves first:
 * the client gets all of it, then the reset one cut by the close. */
static void h1_reset_keeps_earlier_answers(void **state)
{
    fixture_t *f = *state;
    f->answer = A_HOLD;
    f->sndbuf = 4096; /* the socket takes little: the answers wait in the bufferevent */
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(run_until(f, NULL, got_request, NULL));
    enum { BIG = 300000 };
    static char big[BIG];
    memset(big, 'a', sizeof(big));
    const mg_hdr_t len_a = {"content-length", "300000", 14, 6, MG_HPACK_INDEX};
    assert_int_equal(mg_srv_respond(f->cur, 200, &len_a, 1, false), MG_OK);
    mg_srv_write(f->cur, big, sizeof(big));
    mg_srv_end(f->cur, NULL, 0);
    assert_true(run_until(f, NULL, got_two_requests, NULL)); /* /b, while /a waits to leave */
    const mg_hdr_t len_b = {"content-length", "100", 14, 3, MG_HPACK_INDEX};
    assert_int_equal(mg_srv_respond(f->cur, 200, &len_b, 1, false), MG_OK);
    mg_srv_write(f->cur, "0123456789", 10);
    mg_srv_reset(f->cur);
    assert_true(run_until(f, c, is_eof, NULL));
    const char *body = strstr(c->buf, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    assert_true(c->len >= (size_t)(body - c->buf) + BIG); /* all of /a */
    for (size_t i = 0; i < BIG; i++)
        if (body[i] != 'a')
            fail_msg("byte %zu of /a's body is %d", i, body[i]);
    assert_non_null(strstr(body + BIG, "content-length: 100")); /* then /b's head, cut */
    client_free(c);
    assert_true(run_until(f, NULL, no_conns, NULL));
}

/* Answered at once while a body of known, modest length is still coming (a 429 or a 401 for a
 * POST): the rest of the body is dropped and the connection serves the next request. A
 * response that kept quiet about closing and then closed would make the client send its next
 * request into a closed connection ("server disconnected without sending a response"). */
static void h1_early_answer_keeps_connection(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n");
    assert_true(run_until(f, c, has_text, "POST /early\n"));
    assert_null(strstr(c->buf, "connection: close"));
    static char body[300000];
    memset(body, 'b', sizeof(body));
    /* a body that looks like a request must not be taken for one */
    static const char smuggled[] = "GET /smuggled HTTP/1.1\r\n\r\n";
    memcpy(body, smuggled, sizeof(smuggled) - 1);
    client_send(f, c, body, sizeof(body));
    client_sends(f, c, "GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /next\n"));
    assert_null(strstr(c->buf, "/smuggled"));
    assert_int_equal(f->nrequests, 2);
    assert_null(strstr(c->buf, "connection: close"));
    assert_false(c->eof);
    client_free(c);
}

/* The same early answer with more body still to come than is worth reading to drop it:
 * Connection: close in the answer, not a silent close after it. */
static void h1_early_answer_big_body_closes(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_non_null(strstr(c->buf, "POST /early\n"));
    assert_non_null(strstr(c->buf, "connection: close\r\n"));
    client_free(c);
}

/* CONNECT would make the gateway an open tunnel: refused (501) before any handler sees it. */
static void h1_connect_is_refused(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 501 ", 13), 0);
    assert_int_equal(f->nrequests, 0);
    client_free(c);
}

/* An Upgrade (curl --http2 sends Upgrade: h2c) is ignored: the request is answered as plain
 * HTTP/1.1 and the connection goes on. llhttp used to pause after it, and the next request
 * got a 400 and was dropped. */
static void h1_upgrade_is_ignored(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
                 "GET /y HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /y\n"));
    assert_non_null(strstr(c->buf, "GET /x\n"));
    assert_null(strstr(c->buf, " 400 "));
    assert_null(strstr(c->buf, " 101 "));
    assert_int_equal(f->nrequests, 2);
    client_free(c);
}

/* A transfer coding other than chunked (gzip here) would reach the handler as if it were the
 * body: 501, as nginx answers. */
static void h1_transfer_coding_other_than_chunked_is_refused(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /z HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                 "3\r\nabc\r\n0\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 501 ", 13), 0);
    assert_int_equal(f->nrequests, 0);
    client_free(c);
}

/* HTTP/1.0 with Transfer-Encoding: faulty framing (RFC 9112 6.1), the connection closes after
 * the answer even with keep-alive; and an HTTP/1.0 client gets no 100 Continue (RFC 9110
 * 10.1.1). */
static void h1_http10_transfer_coding_closes(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /a HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.0\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_non_null(strstr(c->buf, "POST /a\n"));
    assert_null(strstr(c->buf, "GET /b"));
    assert_null(strstr(c->buf, "100 Continue"));
    client_free(c);
}

/* Expect: 100-continue on a request answered at once (a 404, 401 or 429): no 100 before
 * the answer, so the client skips its body instead of sending it for nothing. */
static void h1_expect_100_not_for_an_early_answer(void **state)
{
    fixture_t *f = *state;
    start(f); /* A_NOW */
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                 "Expect: 100-continue\r\n\r\n");
    assert_true(run_until(f, c, has_text, "POST /e\n"));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 200 ", 13), 0);
    assert_null(strstr(c->buf, "100 Continue"));
    client_free(c);
}

/* RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is a 400 (with two, the one
 * that routes and the one the pod sees could differ); so is an empty Host, HTTP/1.0's too (an
 * http URI has a host). HTTP/1.0 without Host goes on, with "" for its authority. */
static void h1_host_required_and_single(void **state)
{
    fixture_t *f = *state;
    start(f);
    static const char *const bad[] = {
        "GET /a HTTP/1.1\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost:\r\n\r\n",
        "GET /a HTTP/1.0\r\nHost:  \r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        client_t *c = client_new();
        client_sends(f, c, bad[i]);
        assert_true(run_until(f, c, is_eof, NULL));
        assert_int_equal(strncmp(c->buf + 5, "1.1 400 ", 8), 0);
        if (i >= 2)
            assert_string_equal(f->reject_code, "invalid_host");
        client_free(c);
    }
    assert_int_equal(f->nrequests, 0);
    client_t *c = client_new();
    client_sends(f, c, "GET /old HTTP/1.0\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /old\n"));
    assert_string_equal(f->authority, "");
    client_free(c);
}

/* An absolute-form target: its authority routes (not Host), its path goes on in origin form;
 * and an HTTP/1.0 client that asked for keep-alive is told it got it. */
static void h1_absolute_form_and_http10_keep_alive(void **state)
{
    fixture_t *f = *state;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "GET http://b.example?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /?q=1\n"));
    assert_string_equal(f->authority, "b.example");
    client_sends(f, c, "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_true(run_until(f, c, has_text, "GET /old\n"));
    assert_non_null(strstr(c->buf, "connection: keep-alive\r\n"));
    assert_false(c->eof);
    client_free(c);
}

/* Targets an HTTP/2 pod would reset as a :path (RFC 9113 8.3.1) get 400 here, logged through
 * on_reject, and never reach the handler: '*' but for OPTIONS, a URI of another scheme, a
 * fragment. OPTIONS '*' goes on, and so does OPTIONS with an absolute URI of no path, as '*'
 * (RFC 9112 3.2.4). */
static void h1_targets_a_pod_cannot_take_are_400(void **state)
{
    fixture_t *f = *state;
    start(f);
    static const char *const bad[] = {
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /p#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/p?q#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        "DELETE https://a/#top HTTP/1.1\r\nHost: a\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        client_t *c = client_new();
        client_sends(f, c, bad[i]);
        assert_true(run_until(f, c, is_eof, NULL));
        assert_int_equal(strncmp(c->buf, "HTTP/1.1 400 ", 13), 0);
        assert_non_null(strstr(c->buf, "\"code\":\"bad_request\""));
        assert_non_null(strstr(c->buf, i < 2   ? "for OPTIONS only"
                                       : i < 3 ? "must be a path"
                                               : "fragment"));
        assert_int_equal(f->nrejects, (int)i + 1);
        assert_int_equal(f->reject_status, 400);
        client_free(c);
    }
    assert_int_equal(f->nrequests, 0);

    client_t *c = client_new();
    client_sends(f, c,
                 "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
                 "OPTIONS http://b.example:8080 HTTP/1.1\r\nHost: a\r\n\r\n"
                 "OPTIONS http://b.example?q HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(run_until(f, c, has_text, "OPTIONS /?q\n"));
    assert_int_equal(f->nrequests, 3);
    assert_string_equal(f->paths[0], "*");
    assert_string_equal(f->paths[1], "*");
    assert_string_equal(f->authority, "b.example");
    assert_false(c->eof);
    client_free(c);
}

/* A chunked trailer section of more fields than max_headers is a 431, as a head would be,
 * not a request ended with its trailers cut. */
static void h1_trailers_over_max_headers_are_431(void **state)
{
    fixture_t *f = *state;
    f->answer = A_AFTER;
    f->conf.max_headers = 3;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\nabc\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 431 ", 13), 0);
    assert_int_equal(f->nrequests, 1);
    assert_int_equal(f->nends, 0);
    assert_int_equal(f->ncloses, 1);
    client_free(c);
}

/* The same crash without any handler involvement: more fields than max_headers (431). */
static void h1_trailers_after_431(void **state)
{
    fixture_t *f = *state;
    f->conf.max_headers = 2;
    start(f);
    client_t *c = client_new();
    client_sends(f, c,
                 "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
                 "3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n");
    assert_true(run_until(f, c, is_eof, NULL));
    assert_int_equal(strncmp(c->buf, "HTTP/1.1 431 ", 13), 0);
    client_free(c);
}

/* client_idle_ms stops applying once a request has begun: a client that sends part of a
 * request head and then nothing holds its connection forever (slowloris). */
static void h1_partial_head_times_out(void **state)
{
    fixture_t *f = *state;
    f->conf.client_idle_ms = 100;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ");
    assert_true(run_until(f, c, is_eof, NULL)); /* times out: still open after 5 s */
    client_free(c);
}

/* While a request waits for its response, the server keeps reading whatever the client
 * pipelines behind it, without bound (and later answers it all in one recursive call chain,
 * h1_finish -> h1_process -> h1_finish, one level per request). */
static void h1_pipelined_input_is_bounded(void **state)
{
    fixture_t *f = *state;
    enum { LIMIT = 4 * 1024 * 1024 };
    f->answer = A_HOLD;
    start(f);
    client_t *c = client_new();
    client_sends(f, c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_true(run_until(f, c, got_request, NULL));
    static const char one[] = "GET / HTTP/1.1\r\n\r\n";
    char block[18 * 1000];
    for (size_t i = 0; i < sizeof(block); i += 18)
        memcpy(block + i, one, 18);
    char *input = test_malloc(LIMIT);
    for (size_t i = 0; i < LIMIT; i += sizeof(block))
        memcpy(input + i, block, LIMIT - i < sizeof(block) ? LIMIT - i : sizeof(block));
    assert_true(write_stalled(f, c, input, LIMIT) < LIMIT);
    test_free(input);
    client_free(c);
}

/* ---------- HTTP/2 (nghttp2 client session) ---------- */

struct h2client {
    nghttp2_session *s;
    client_t *c;
    uint8_t *pending; /* bytes nghttp2 produced that the socket did not take yet */
    size_t npending;
    bool got_settings;
    bool got_goaway;
    uint32_t goaway_error;
    int32_t goaway_first, goaway_last; /* last_stream_id of the first GOAWAY and of the latest */
    int status;
    int ninterim; /* 1xx heads received */
    char body[8192];
    size_t body_len;
    char trailers[256]; /* response trailers, "name=value;" */
    char head[512];     /* the final head's regular fields, "name=value;" */
    bool closed;
    uint32_t close_error;
    /* request body */
    const uint8_t *req_body;
    size_t req_len, req_off;
    bool req_trailers;
    const char *req_ctype; /* content-type of the next request, or NULL */
};

static int h2_on_frame_recv(nghttp2_session *s, const nghttp2_frame *fr, void *ud)
{
    h2client_t *h = ud;
    (void)s;
    if (fr->hd.type == NGHTTP2_SETTINGS && !(fr->hd.flags & NGHTTP2_FLAG_ACK))
        h->got_settings = true;
    if (fr->hd.type == NGHTTP2_GOAWAY) {
        if (!h->got_goaway)
            h->goaway_first = fr->goaway.last_stream_id;
        h->got_goaway = true;
        h->goaway_error = fr->goaway.error_code;
        h->goaway_last = fr->goaway.last_stream_id;
    }
    return 0;
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *fr, const uint8_t *name,
                        size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    h2client_t *h = ud;
    (void)s;
    (void)flags;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0 && vlen == 3 && value[0] == '1') {
        h->ninterim++; /* an interim head; the final one's :status may come as HCAT_HEADERS */
    } else if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
        h->status = atoi((const char *)value);
    } else {
        char *to = fr->headers.cat == NGHTTP2_HCAT_HEADERS ? h->trailers : h->head;
        size_t cap =
            fr->headers.cat == NGHTTP2_HCAT_HEADERS ? sizeof(h->trailers) : sizeof(h->head);
        size_t used = strlen(to);
        snprintf(to + used, cap - used, "%.*s=%.*s;", (int)nlen, name, (int)vlen, value);
    }
    return 0;
}

static int h2_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *ud)
{
    h2client_t *h = ud;
    (void)s;
    (void)flags;
    (void)id;
    size_t room = sizeof(h->body) - 1 - h->body_len;
    memcpy(h->body + h->body_len, data, len < room ? len : room);
    h->body_len += len < room ? len : room;
    h->body[h->body_len] = '\0';
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t id, uint32_t error, void *ud)
{
    h2client_t *h = ud;
    (void)s;
    (void)id;
    h->closed = true;
    h->close_error = error;
    return 0;
}

static ssize_t h2_read_req(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    h2client_t *h = ud;
    (void)src;
    size_t n = h->req_len - h->req_off < len ? h->req_len - h->req_off : len;
    memcpy(buf, h->req_body + h->req_off, n);
    h->req_off += n;
    if (h->req_off == h->req_len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (h->req_trailers) {
            static const nghttp2_nv t[] = {
                {(uint8_t *)"x-req-trailer", (uint8_t *)"42", 13, 2, NGHTTP2_NV_FLAG_NONE}};
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            assert_int_equal(nghttp2_submit_trailer(s, id, t, 1), 0);
        }
    }
    return (ssize_t)n;
}

static void h2_feed(h2client_t *h, const uint8_t *data, size_t len)
{
    assert_int_equal(nghttp2_session_mem_recv(h->s, data, len), (ssize_t)len);
}

/* Moves what nghttp2 has to send into the socket; returns true when bytes were written. */
static bool h2_flush(h2client_t *h)
{
    bool wrote = false;
    for (;;) {
        if (h->npending == 0) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(h->s, &data);
            assert_true(n >= 0);
            if (n == 0)
                return wrote;
            h->pending = test_realloc(h->pending, (size_t)n);
            memcpy(h->pending, data, (size_t)n);
            h->npending = (size_t)n;
        }
        ssize_t w = write(h->c->fd, h->pending, h->npending);
        if (w <= 0)
            return wrote; /* full: the next step retries */
        wrote = true;
        memmove(h->pending, h->pending + w, h->npending - (size_t)w);
        h->npending -= (size_t)w;
    }
}

static bool h2_has_settings(fixture_t *f, client_t *c, const void *arg)
{
    (void)f;
    (void)arg;
    return c->h2->got_settings;
}

static bool h2_stream_closed(fixture_t *f, client_t *c, const void *arg)
{
    (void)f;
    (void)arg;
    return c->h2->closed;
}

/* Connects, sends the preface and SETTINGS, and waits for the server's SETTINGS (and so
 * acknowledges them before any request: the server's windows then apply to our streams). */
static client_t *h2_connect(fixture_t *f)
{
    client_t *c = client_new();
    h2client_t *h = test_calloc(1, sizeof(*h));
    h->c = c;
    c->h2 = h;
    nghttp2_session_callbacks *cb;
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    assert_int_equal(nghttp2_session_client_new(&h->s, cb, h), 0);
    nghttp2_session_callbacks_del(cb);
    assert_int_equal(nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, NULL, 0), 0);
    assert_true(run_until(f, c, h2_has_settings, NULL));
    h2_flush(h); /* our ACK */
    run_quiet(f, c, 20);
    return c;
}

static void h2_free(client_t *c)
{
    nghttp2_session_del(c->h2->s);
    test_free(c->h2->pending);
    test_free(c->h2);
    client_free(c);
}

static int32_t h2_request(client_t *c, const char *method, const char *path, const void *body,
                          size_t len, bool trailers)
{
    h2client_t *h = c->h2;
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)method, 7, strlen(method), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)"a.example", 10, 9, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)h->req_ctype, 12,
         h->req_ctype ? strlen(h->req_ctype) : 0, NGHTTP2_NV_FLAG_NONE},
    };
    h->req_body = body;
    h->req_len = len;
    h->req_off = 0;
    h->req_trailers = trailers;
    nghttp2_data_provider prd = {.read_callback = h2_read_req};
    int32_t id =
        nghttp2_submit_request(h->s, NULL, nv, h->req_ctype ? 6 : 5, body ? &prd : NULL, NULL);
    assert_true(id > 0);
    return id;
}

/* Submits a request without body of the |n| fields in |kv| (name, value, name, value...), sent
 * as they are: not copied (|kv| must outlive the frame), so nghttp2 does not lowercase them. */
static void h2_request_fields(client_t *c, const char *const *kv, size_t n)
{
    nghttp2_nv nv[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++)
        nv[i] = (nghttp2_nv){(uint8_t *)kv[2 * i], (uint8_t *)kv[2 * i + 1], strlen(kv[2 * i]),
                             strlen(kv[2 * i + 1]),
                             NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
    assert_true(nghttp2_submit_request(c->h2->s, NULL, nv, n, NULL, NULL) > 0);
}

/* Cleartext HTTP/2 is told from HTTP/1.1 by the preface; the server's SETTINGS carry the
 * configured limits. */
static void h2_preface_and_settings(void **state)
{
    fixture_t *f = *state;
    f->conf.stream_window = 32768;
    f->conf.header_table_size = 16384;
    start(f);
    client_t *c = h2_connect(f);
    nghttp2_session *s = c->h2->s;
    assert_int_equal(
        nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS), 7);
    assert_int_equal(nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_HEADER_TABLE_SIZE),
                     16384);
    assert_int_equal(nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE),
                     32768);
    assert_int_equal(nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE),
                     4096);
    /* the connection window was opened to connection_window */
    assert_int_equal(nghttp2_session_get_remote_window_size(s), 1 << 20);

    h2_request(c, "GET", "/x?y=1", NULL, 0, false);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_int_equal(c->h2->status, 200);
    assert_string_equal(c->h2->body, "GET /x?y=1\n");
    assert_int_equal(c->h2->close_error, NGHTTP2_NO_ERROR);
    assert_string_equal(f->proto, "h2c");
    assert_string_equal(f->authority, "a.example");
    assert_int_equal(f->nends, 1);
    assert_int_equal(f->ncomplete, 1);
    h2_free(c);
}

/* Request trailers reach on_end; the response's trailers reach the client. */
static void h2_trailers_both_ways(void **state)
{
    fixture_t *f = *state;
    f->answer = A_AFTER;
    start(f);
    client_t *c = h2_connect(f);
    h2_request(c, "POST", "/t", "hello", 5, true);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_int_equal(f->body_len, 5);
    assert_memory_equal(f->body, "hello", 5);
    assert_string_equal(f->trailers, "x-req-trailer=42;");
    assert_int_equal(c->h2->status, 200);
    assert_string_equal(c->h2->body, "5 bytes\n");
    assert_string_equal(c->h2->trailers, "x-seen=x-req-trailer=42;;");
    assert_int_equal(c->h2->close_error, NGHTTP2_NO_ERROR);
    assert_int_equal(f->ncomplete, 1);
    h2_free(c);
}

/* Request trailers over max_header_list_size arrive after the request went on: the stream is
 * reset (INTERNAL_ERROR) and the handler gets on_close, not an on_end with the trailers cut. */
static void h2_trailers_over_the_limit_are_431(void **state)
{
    fixture_t *f = *state;
    f->answer = A_AFTER;
    f->conf.max_header_list_size = 240; /* the head is 218 bytes as counted, its trailer 47 */
    start(f);
    client_t *c = h2_connect(f);
    h2_request(c, "POST", "/t", "hello", 5, true);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    /* no answer had started: the handler's request is called off (on_close, not complete) and
     * the refusal answered and logged by the server, as for a head over the limits */
    assert_int_equal(f->nrequests, 1);
    assert_int_equal(f->nends, 0);
    assert_int_equal(f->ncloses, 1);
    assert_int_equal(f->ncomplete, 0);
    assert_int_equal(f->nrejects, 1);
    assert_int_equal(f->reject_status, 431);
    assert_int_equal(c->h2->status, 431);
    assert_non_null(strstr(c->h2->body, "request trailer fields over limits.max_header_list_size"));
    assert_int_equal(c->h2->close_error, 0);
    h2_free(c);
}

/* A :path nghttp2 lets through that an HTTP/2 pod would reset is a 400, as over HTTP/1.1: one
 * of a :scheme other than http and https (nghttp2 checks only theirs), and a fragment. Before,
 * ":scheme: ftp" with ":path: x" went on under the connection's scheme. OPTIONS '*' goes on. */
static void h2_targets_a_pod_cannot_take_are_400(void **state)
{
    fixture_t *f = *state;
    start(f);
    static const char *const bad[][8] = {
        {":method", "GET", ":scheme", "ftp", ":authority", "a.example", ":path", "x"},
        {":method", "GET", ":scheme", "ftp", ":authority", "a.example", ":path", "/x"},
        {":method", "GET", ":scheme", "http", ":authority", "a.example", ":path", "/p?q#frag"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        client_t *c = h2_connect(f);
        h2_request_fields(c, bad[i], 4);
        assert_true(run_until(f, c, h2_stream_closed, NULL));
        assert_int_equal(c->h2->status, 400);
        assert_non_null(strstr(c->h2->body, "\"code\":\"bad_request\""));
        assert_non_null(strstr(c->h2->body, i < 2 ? ":scheme 'ftp'" : "fragment"));
        assert_int_equal(f->nrejects, (int)i + 1);
        assert_int_equal(f->reject_status, 400);
        h2_free(c);
    }
    assert_int_equal(f->nrequests, 0);
    static const char *const options[8] = {":method",    "OPTIONS",   ":scheme", "http",
                                           ":authority", "a.example", ":path",   "*"};
    client_t *c = h2_connect(f);
    h2_request_fields(c, options, 4);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_int_equal(c->h2->status, 200);
    assert_string_equal(c->h2->body, "OPTIONS *\n");
    h2_free(c);
}

/* A request nghttp2 resets for a malformed head (PROTOCOL_ERROR), before the handler could see
 * it, still reaches on_reject once, with what was read of it: HTTP/1.1's malformed requests
 * were logged and these were not. The connection goes on. */
static void h2_malformed_requests_reach_on_reject(void **state)
{
    fixture_t *f = *state;
    start(f);
    static const char *const bad[][10] = {
        {":method", "GET", ":scheme", "http", ":authority", "a.example", ":path", "/upper", "X-Up",
         "v"},
        {":method", "POST", ":scheme", "http", ":authority", "a.example", ":path", "/conn",
         "connection", "close"},
        {":method", "GET", ":scheme", "http", ":authority", "a.example", ":path", "*"},
    };
    static const size_t nfields[] = {5, 5, 4};
    static const char *const method[] = {"GET", "POST", "GET"}, *const path[] = {"/upper", "/conn",
                                                                                 "*"};
    client_t *c = h2_connect(f);
    for (size_t i = 0; i < 3; i++) {
        c->h2->closed = false;
        h2_request_fields(c, bad[i], nfields[i]);
        assert_true(run_until(f, c, h2_stream_closed, NULL));
        assert_int_equal(c->h2->close_error, NGHTTP2_PROTOCOL_ERROR);
        assert_int_equal(f->nrejects, (int)i + 1);
        assert_int_equal(f->reject_status, 400);
        assert_string_equal(f->reject_code, "malformed_request");
        assert_string_equal(f->reject_method, method[i]);
        assert_string_equal(f->reject_path, path[i]);
        assert_non_null(strstr(f->reject_client, "127.0.0.1:"));
    }
    assert_int_equal(f->nrequests, 0);
    c->h2->closed = false;
    h2_request(c, "GET", "/after", NULL, 0, false);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_int_equal(c->h2->status, 200);
    assert_int_equal(f->nrejects, 3);
    h2_free(c);
}

static bool h2_final_goaway(fixture_t *f, client_t *c, const void *arg)
{
    (void)f;
    return c->h2->got_goaway && c->h2->goaway_last == *(const int32_t *)arg;
}

/* mg_srv_shutdown sends a GOAWAY notice (NO_ERROR, stream 2^31-1): a request that crossed it
 * on the wire is taken. A round trip later the GOAWAY with the last stream it processed
 * follows; once that stream is done the server closes. */
static void h2_shutdown_sends_goaway(void **state)
{
    fixture_t *f = *state;
    enum { WINDOW = 16384, BODY = 100000 };
    f->conf.stream_window = WINDOW;
    f->answer = A_AFTER;
    f->consume = false; /* the raced upload stays open (a client with no stream left stops
                         * reading, and would not see the second GOAWAY) */
    start(f);
    client_t *c = h2_connect(f);
    h2_request(c, "GET", "/before", NULL, 0, false);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    mg_srv_shutdown(f->srv);
    /* sent before the client read the notice: it crosses the notice on the wire */
    static uint8_t body[BODY];
    int32_t raced = h2_request(c, "POST", "/raced", body, BODY, false);
    assert_true(h2_flush(c->h2));
    assert_true(run_until(f, c, h2_final_goaway, &raced));
    assert_int_equal(c->h2->goaway_first, INT32_MAX);
    assert_int_equal(c->h2->goaway_error, NGHTTP2_NO_ERROR);
    assert_int_equal(f->nrequests, 2); /* the raced request reached the handler */
    h2_free(c);
    assert_true(run_until(f, NULL, no_conns, NULL));
}

/* Flow control: while the handler consumes nothing, the client cannot send more than the
 * stream window; each mg_srv_consume lets more in, until the whole body has arrived. */
static void h2_backpressure(void **state)
{
    fixture_t *f = *state;
    enum { WINDOW = 16384, BODY = 100000 };
    f->conf.stream_window = WINDOW;
    f->answer = A_AFTER;
    f->consume = false;
    start(f);
    client_t *c = h2_connect(f);
    uint8_t *body = test_malloc(BODY);
    for (size_t i = 0; i < BODY; i++)
        body[i] = (uint8_t)i;
    h2_request(c, "POST", "/upload", body, BODY, false);
    run_quiet(f, c, 200);
    assert_int_equal(f->nrequests, 1);
    assert_true(f->body_len > 0);
    assert_true(f->body_len <= WINDOW);
    assert_int_equal(f->nends, 0);

    size_t seen = f->body_len;
    mg_srv_consume(f->cur, seen);
    assert_true(run_until(f, c, body_grew, &seen));
    run_quiet(f, c, 100);
    assert_true(f->body_len <= seen + WINDOW); /* one window more, not the rest */

    long deadline = now_ms() + TIMEOUT_MS;
    size_t consumed = seen;
    while (f->nends == 0 && now_ms() < deadline) {
        if (f->cur && f->body_len > consumed) {
            mg_srv_consume(f->cur, f->body_len - consumed);
            consumed = f->body_len;
        }
        step(f, c);
    }
    assert_true(run_until(f, c, request_ended, NULL));
    assert_int_equal(f->body_len, BODY);
    assert_memory_equal(f->body, body, sizeof(f->body));
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_string_equal(c->h2->body, "100000 bytes\n");
    test_free(body);
    h2_free(c);
}

/* content-length and :status values, checked by the parsers before they get here */

/* More than 10 empty DATA frames in a row cut the connection (GOAWAY ENHANCE_YOUR_CALM), and
 * nothing behind them in the same read is processed: neither a PING of a bad length (nghttp2
 * 1.52, told to go on, aborted the process on it: assert(iframe->state == NGHTTP2_IB_IGN_ALL))
 * nor a request. */
static void h2_empty_data_cut_stops_reading_at_once(void **state)
{
    fixture_t *f = *state;
    f->answer = A_HOLD;
    start(f);
    client_t *c = client_new();
    uint8_t in[512];
    size_t n = 0;
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    memcpy(in, preface, sizeof(preface) - 1);
    n += sizeof(preface) - 1;
    static const uint8_t settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
    memcpy(in + n, settings, sizeof(settings));
    n += sizeof(settings);
    /* HEADERS (END_HEADERS) on stream 1: POST, http, :path /p, :authority a */
    static const uint8_t post[] = {0, 0, 9, 1, 4, 0, 0, 0, 1, /* frame header */
                                   0x83, 0x86, 0x04, 2, '/', 'p', 0x01, 1, 'a'};
    memcpy(in + n, post, sizeof(post));
    n += sizeof(post);
    static const uint8_t empty[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
    for (int i = 0; i < 11; i++, n += sizeof(empty))
        memcpy(in + n, empty, sizeof(empty));
    static const uint8_t bad_ping[9] = {0, 0, 0, 6, 0, 0, 0, 0, 0}; /* 0 bytes: FRAME_SIZE_ERROR */
    memcpy(in + n, bad_ping, sizeof(bad_ping));
    n += sizeof(bad_ping);
    static const uint8_t get[] = {0, 0, 6, 1, 5, 0, 0, 0, 3, 0x82, 0x86, 0x84, 0x01, 1, 'a'};
    memcpy(in + n, get, sizeof(get));
    n += sizeof(get);
    client_send(f, c, in, n); /* one write: the server reads it all at once */
    assert_true(run_until(f, c, is_eof, NULL));
    uint32_t error = 0, last = 0;
    assert_true(raw_goaway((const uint8_t *)c->buf, c->len, &error, &last));
    assert_int_equal(error, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_int_equal(last, 1);
    assert_int_equal(f->nrequests, 1); /* stream 3 was not read */
    client_free(c);
    assert_true(run_until(f, NULL, no_conns, NULL));
}

/* Writes |count| copies of the frame |fr| (|len| bytes) in one write. */
static void client_send_frames(fixture_t *f, client_t *c, const uint8_t *fr, size_t len,
                               size_t count)
{
    uint8_t buf[4096];
    assert_true(count * len <= sizeof(buf));
    for (size_t i = 0; i < count; i++)
        memcpy(buf + i * len, fr, len);
    client_send(f, c, buf, count * len);
}

/* The connection is cut with GOAWAY ENHANCE_YOUR_CALM whose last stream is |last|. */
static void assert_cut(fixture_t *f, client_t *c, uint32_t last)
{
    assert_true(run_until(f, c, is_eof, NULL));
    uint32_t error = 0, got_last = 0;
    assert_true(raw_goaway((const uint8_t *)c->buf, c->len, &error, &got_last));
    assert_int_equal(error, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_int_equal(got_last, last);
}

/* Frames that do nothing are bounded as Envoy bounds them: PRIORITY and PING ACK frames at 100
 * for the connection and 100 per stream, WINDOW_UPDATE frames at 5 + 2 x (streams + 10 x DATA
 * frames sent). Up to the bound the connection is served; one more cuts it. */
static void h2_control_frames_bounded(void **state)
{
    fixture_t *f = *state;
    f->answer = A_NOW; /* one DATA frame per answer */
    start(f);
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    static const uint8_t settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
    /* HEADERS, END_STREAM | END_HEADERS, stream 1: GET http / with :authority "a" */
    static const uint8_t get[15] = {0, 0, 6, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x01, 1, 'a'};
    static const uint8_t priority[14] = {0, 0, 5, 2, 0, 0, 0, 0, 101, 0, 0, 0, 0, 16};
    static const uint8_t ping_ack[17] = {0, 0, 8, 6, 1, 0, 0, 0, 0};
    static const uint8_t window_update[13] = {0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1};

    /* PRIORITY and PING ACK: 100, a stream, 100 more, then one too many */
    client_t *c = client_new();
    client_send(f, c, preface, sizeof(preface) - 1);
    client_send(f, c, settings, sizeof(settings));
    client_send_frames(f, c, priority, sizeof(priority), 60);
    client_send_frames(f, c, ping_ack, sizeof(ping_ack), 40);
    client_send(f, c, get, sizeof(get));
    client_send_frames(f, c, ping_ack, sizeof(ping_ack), 50);
    client_send_frames(f, c, priority, sizeof(priority), 50);
    run_quiet(f, c, 50);
    assert_int_equal(f->nrequests, 1);
    assert_int_equal(mg_srv_nconns(f->srv), 1);
    client_send_frames(f, c, priority, sizeof(priority), 1);
    assert_cut(f, c, 1);
    client_free(c);

    /* WINDOW_UPDATE: 5 at first; after a stream answered with 1 DATA frame, 5 + 2 x 11 */
    c = client_new();
    client_send(f, c, preface, sizeof(preface) - 1);
    client_send(f, c, settings, sizeof(settings));
    client_send_frames(f, c, window_update, sizeof(window_update), 5);
    client_send(f, c, get, sizeof(get));
    run_quiet(f, c, 50);
    assert_int_equal(f->nrequests, 2);
    client_send_frames(f, c, window_update, sizeof(window_update), 22);
    run_quiet(f, c, 50);
    assert_int_equal(mg_srv_nconns(f->srv), 1);
    client_send_frames(f, c, window_update, sizeof(window_update), 1);
    assert_cut(f, c, 1);
    client_free(c);
    assert_true(run_until(f, NULL, no_conns, NULL));
}

/* Interim heads take nothing of the stream's arena: MG_SRV_MAX_INTERIM of them with large
 * fields (more than stream_memory in all) still leave room for the final head, which reaches
 * the client instead of an RST_STREAM INTERNAL_ERROR (the arena cannot hold its field array). */
static void h2_interims_leave_room_for_the_final_head(void **state)
{
    fixture_t *f = *state;
    f->answer = A_HOLD;
    f->conf.max_header_list_size = 1024; /* stream_memory: 2 * 1024 + 16384 */
    start(f);
    client_t *c = h2_connect(f);
    h2_request(c, "GET", "/hints", NULL, 0, false);
    assert_true(run_until(f, c, got_request, NULL));
    static char big[3000];
    memset(big, 'v', sizeof(big));
    const mg_hdr_t hints[4] = {
        {"x-a", "12345678", 3, 8, MG_HPACK_INDEX},
        {"x-b", big, 3, 40, MG_HPACK_INDEX},
        {"link", big, 4, 200, MG_HPACK_SENSITIVE},
        {"x-c", big, 3, sizeof(big), MG_HPACK_INDEX},
    };
    for (int i = 0; i < MG_SRV_MAX_INTERIM; i++)
        assert_int_equal(mg_srv_interim(f->cur, 103, hints, 4), MG_OK);
    assert_int_equal(mg_srv_interim(f->cur, 103, hints, 4), MG_E_LIMIT);
    mg_hdr_t h[12];
    for (int i = 0; i < 12; i++)
        h[i] = (mg_hdr_t){"x-final", "1", 7, 1, MG_HPACK_INDEX};
    assert_int_equal(mg_srv_respond(f->cur, 200, h, 12, false), MG_OK);
    mg_srv_write(f->cur, "done\n", 5);
    mg_srv_end(f->cur, NULL, 0);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_int_equal(c->h2->ninterim, MG_SRV_MAX_INTERIM);
    assert_int_equal(c->h2->status, 200);
    assert_string_equal(c->h2->body, "done\n");
    assert_int_equal(c->h2->close_error, NGHTTP2_NO_ERROR);
    assert_int_equal(f->ncomplete, 1);
    h2_free(c);
}

/* The error of a gRPC call is a Trailers-Only answer: HTTP 200 and END_STREAM on the head,
 * grpc-status after gRPC's HTTP mapping, grpc-message percent-encoded with the code and the
 * request id. gRPC-Web, which reads its status from the body, gets the JSON error. */
static void h2_grpc_error_is_trailers_only(void **state)
{
    fixture_t *f = *state;
    f->answer = A_HOLD;
    start(f);
    client_t *c = h2_connect(f);
    c->h2->req_ctype = "application/grpc+proto";
    h2_request(c, "POST", "/pkg.Model/Predict", "x", 1, false);
    assert_true(run_until(f, c, got_request, NULL));
    assert_int_equal(mg_srv_error(f->cur, 504, "upstream_timeout",
                                  "100% of 5 ms \xe2\x80\x93 no answer", "r1", NULL, 0),
                     MG_OK);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_int_equal(c->h2->status, 200);
    assert_int_equal(c->h2->body_len, 0);
    assert_string_equal(c->h2->trailers, "");
    assert_string_equal(c->h2->head, "content-type=application/grpc;grpc-status=14;grpc-message="
                                     "upstream_timeout: 100%25 of 5 ms %E2%80%93 no answer "
                                     "(request id r1);");
    h2_free(c);

    c = h2_connect(f);
    c->h2->req_ctype = "application/grpc-web";
    f->nrequests = 0; /* got_request waits for this one */
    h2_request(c, "POST", "/pkg.Model/Predict", "x", 1, false);
    assert_true(run_until(f, c, got_request, NULL));
    assert_int_equal(mg_srv_error(f->cur, 404, "unknown_host", "no route", NULL, NULL, 0), MG_OK);
    assert_true(run_until(f, c, h2_stream_closed, NULL));
    assert_int_equal(c->h2->status, 404);
    assert_string_equal(c->h2->body,
                        "{\"error\":{\"code\":\"unknown_host\",\"message\":\"no route\"}}\n");
    h2_free(c);
}

/* The OpenSSL releases whose SSL_free_buffers checks for a half-read record (CVE-2024-4741):
 * only they keep their record buffers between requests. */
static void free_buffers_safe_from_the_fixed_releases(void **state)
{
    (void)state;
    static const struct {
        unsigned long version;
        bool safe;
    } cases[] = {
        {0x1010117fUL, false}, /* 1.1.1w */
        {0x300000d0UL, false}, /* 3.0.13 */
        {0x300000e0UL, true},  /* 3.0.14 */
        {0x30000130UL, true},  /* 3.0.19 */
        {0x30100050UL, false}, /* 3.1.5 */
        {0x30100060UL, true},  /* 3.1.6 */
        {0x30200010UL, false}, /* 3.2.1 */
        {0x30200020UL, true},  /* 3.2.2 */
        {0x30300000UL, false}, /* 3.3.0 */
        {0x30300010UL, true},  /* 3.3.1 */
        {0x30400000UL, true},  /* 3.4.0 */
        {0x40000000UL, true},  /* 4.0.0 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (mg_srv_free_buffers_safe(cases[i].version) != cases[i].safe)
            fail_msg("OpenSSL 0x%lx: expected %s", cases[i].version,
                     cases[i].safe ? "safe" : "unsafe");
}

static void parse_decimal(void **state)
{
    (void)state;
    assert_int_equal(mg_parse_decimal("95", 2), 95);
    assert_int_equal(mg_parse_decimal("0", 1), 0);
    assert_int_equal(mg_parse_decimal("200 ", 4), 200);  /* stops at the first non-digit */
    assert_int_equal(mg_parse_decimal("12345", 3), 123); /* reads |len| bytes only */
    assert_int_equal(mg_parse_decimal("", 0), -1);
    assert_int_equal(mg_parse_decimal("x1", 2), -1);
    assert_int_equal(mg_parse_decimal("9223372036854775807", 19), INT64_MAX);
    assert_int_equal(mg_parse_decimal("9223372036854775808", 19), -1);
    assert_int_equal(mg_parse_decimal("99999999999999999999", 20), -1);
}

/* mg_field_single: the one value of a field, NULL when absent or ambiguous (twice, or a list),
 * whatever the order and the other fields. */
static void field_single_refuses_two_values(void **state)
{
    (void)state;
    mg_hdr_t h[] = {
        {"accept", "*/*", 6, 3, MG_HPACK_INDEX},    {"x-user-id", "alice", 9, 5, MG_HPACK_INDEX},
        {"x-user-idx", "x", 10, 1, MG_HPACK_INDEX}, {"x-user-id", "bob", 9, 3, MG_HPACK_INDEX},
        {"x-other", "a, b", 7, 4, MG_HPACK_INDEX},  {"x-empty", "", 7, 0, MG_HPACK_INDEX}};
    bool amb = true;
    assert_ptr_equal(mg_field_single(h, 3, "x-user-id", 9, &amb), &h[1]);
    assert_false(amb);
    assert_null(mg_field_single(h, 4, "x-user-id", 9, &amb)); /* alice, then bob */
    assert_true(amb);
    assert_ptr_equal(mg_field_single(&h[2], 2, "x-user-id", 9, NULL), &h[3]); /* bob alone */
    assert_null(mg_field_single(h, 6, "x-other", 7, &amb)); /* a list in one line */
    assert_true(amb);
    assert_null(mg_field_single(h, 6, "x-none", 6, &amb));
    assert_false(amb);
    assert_ptr_equal(mg_field_single(h, 6, "x-empty", 7, &amb), &h[5]);
    assert_false(amb);
    assert_ptr_equal(mg_field_single(h, 6, "x-user-idx", 10, NULL), &h[2]);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    mg_log_level = MG_LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_decimal),
        cmocka_unit_test_setup_teardown(h1_pipelining_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_chunked_body_and_trailers, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_head_has_no_body, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_http10_response_framing, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_expect_100_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_expect_100_not_for_an_early_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_header_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_too_many_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_malformed_request_line, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_shutdown_after_response, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_preface_and_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_trailers_both_ways, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_targets_a_pod_cannot_take_are_400, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_malformed_requests_reach_on_reject, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_trailers_over_the_limit_are_431, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_shutdown_sends_goaway, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_partial_head_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(conn_limit_pauses_accepting, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_pipelined_input_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_trailers_after_431, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_trailers_over_max_headers_are_431, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_trailers_after_early_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_early_answer_then_late_body, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_reset_keeps_earlier_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_early_answer_keeps_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_connect_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_host_required_and_single, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_absolute_form_and_http10_keep_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_targets_a_pod_cannot_take_are_400, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_upgrade_is_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_transfer_coding_other_than_chunked_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(h1_http10_transfer_coding_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_linger_stops_after_a_mebibyte, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_empty_data_run_cut_across_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_control_frames_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_grpc_error_is_trailers_only, setup, teardown),
        cmocka_unit_test(free_buffers_safe_from_the_fixed_releases),
        cmocka_unit_test_setup_teardown(h2_goaway_lingers_for_what_the_client_was_sending, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(h2_goaway_lingers_after_a_full_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_early_answer_big_body_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_empty_data_cut_stops_reading_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(h2_interims_leave_room_for_the_final_head, setup, teardown),
        cmocka_unit_test(field_single_refuses_two_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
