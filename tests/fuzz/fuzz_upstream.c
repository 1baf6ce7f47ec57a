/*
 * tests/fuzz/fuzz_upstream.c - the pod side of the gateway (gateway/upstream.c) fed arbitrary
 * pod bytes.
 *
 * Each input runs one exchange from start to end: a fresh event_base and mg_upstreams_t, one
 * request (GET, or POST with a 5-byte body) to a "pod" that is a loopback socket this target
 * accepts itself, the input written back as everything the pod says (in chunks, with the loop
 * run between them), then the pod closes or stays silent, and everything is freed. What the
 * gateway sends is read and dropped. Both engines are reached: HTTP/1.1 (llhttp, response
 * mode) and h2c (nghttp2 client session), the response head's and trailers' conversion, 1xx
 * interim heads (on_interim), flow control and the failure paths.
 *
 * Checks what upstream.h promises: interim heads (1xx, never 101) only before the head, at most
 * one head, data and end only after it, exactly one end of the exchange (on_headers with |end|,
 * on_end, on_error, or our cancel when the pod goes silent), nothing after it; every field's
 * bytes readable; no more than MG_UP_MAX_FIELDS. ASan, UBSan and LeakSanitizer catch the rest.
 *
 * Input: byte 0 holds flags, the rest is what the pod sends.
 *   bit 0     h2c (else HTTP/1.1)
 *   bits 1-3  chunk size: all at once, 1, 2, 5, 13, 64, 512 or 4096 bytes
 *   bit 4     POST with a body (else GET)
 *   bit 5     the pod stays open after its input (the exchange is cancelled), else it closes
 *   bit 6     the caller cancels from inside on_headers (as the proxy does when its client left)
 *   bit 7     the caller cancels from inside on_data
 *   bits 6+7  both: the caller cancels from inside the first on_interim instead (the proxy's
 *             client may leave while it is told of an interim head)
 *
 * One listening socket on 127.0.0.1 (an ephemeral port) serves every input.
 *   build-fuzz/tests/fuzz/fuzz_upstream <scratch dir> tests/fuzz/corpus_upstream
 */
#include "check.h"
#include "gateway/upstream.c"

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#define F_H2C 0x01
#define F_CHUNK 0x0e
#define F_POST 0x10
#define F_STAY_OPEN 0x20
#define F_CANCEL_IN_HEAD 0x40
#define F_CANCEL_IN_DATA 0x80

#define MAX_PASSES 200 /* loop passes per step: ends a livelock, should one exist */

static int listen_fd = -1;
static mg_pod_t pod;

typedef struct exchange {
    mg_up_stream_t *s;
    uint8_t flags;
    bool headers, over;
    size_t body;
    unsigned interims; /* on_interim calls */
    int status;
    const char *how; /* how it ended, for FZ_DUMP */
} exchange_t;

static bool dump; /* FZ_DUMP=1: each input's outcome on stderr, to read a reproducer */

static void touch(const mg_hdr_t *h, size_t n)
{
    CHECK(n <= MG_UP_MAX_FIELDS);
    volatile unsigned sum = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(h[i].name != NULL && h[i].value != NULL);
        for (size_t j = 0; j < h[i].name_len; j++)
            sum += (unsigned char)h[i].name[j];
        for (size_t j = 0; j < h[i].value_len; j++)
            sum += (unsigned char)h[i].value[j];
    }
    (void)sum;
}

static void x_interim(void *ctx, int status, const mg_hdr_t *h, size_t n)
{
    exchange_t *x = ctx;
    CHECK(!x->over && !x->headers);
    CHECK(status >= 100 && status <= 199 && status != 101);
    touch(h, n);
    x->interims++;
    if ((x->flags & F_CANCEL_IN_HEAD) && (x->flags & F_CANCEL_IN_DATA)) {
        mg_up_cancel(x->s); /* no callback may follow, as after a cancel in on_headers */
        x->over = true;
        x->how = "cancelled in on_interim";
    }
}

static void x_headers(void *ctx, int status, const mg_hdr_t *h, size_t n, bool end)
{
    exchange_t *x = ctx;
    CHECK(!x->over && !x->headers);
    CHECK(status >= 200 && status <= 599); /* 1xx heads go to on_interim, others are refused */
    touch(h, n);
    x->headers = true;
    x->status = status;
    x->over = end;
    x->how = end ? "head without body" : NULL;
    if (!end && (x->flags & F_CANCEL_IN_HEAD)) {
        mg_up_cancel(x->s); /* no callback may follow, on this stream or from its release */
        x->over = true;
        x->how = "cancelled in on_headers";
    }
}

static void x_data(void *ctx, const uint8_t *d, size_t n)
{
    exchange_t *x = ctx;
    CHECK(!x->over && x->headers);
    volatile unsigned sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += d[i];
    (void)sum;
    x->body += n;
    if (x->flags & F_CANCEL_IN_DATA) {
        mg_up_cancel(x->s);
        x->over = true;
        x->how = "cancelled in on_data";
        return;
    }
    mg_up_consume(x->s, n);
}

static void x_end(void *ctx, const mg_hdr_t *t, size_t n)
{
    exchange_t *x = ctx;
    CHECK(!x->over && x->headers);
    touch(t, n);
    x->over = true;
    x->how = "end";
}

static void x_error(void *ctx, mg_up_fail_t why, bool sent)
{
    exchange_t *x = ctx;
    (void)sent;
    CHECK(!x->over);
    CHECK(why >= MG_UP_CONNECT_REFUSED && why <= MG_UP_HEADERS);
    static const char *const whys[] = {"",      "connect refused", "connect timeout", "refused",
                                       "reset", "protocol",        "headers"};
    x->over = true;
    x->how = whys[why];
}

static void x_drain(void *ctx)
{
    CHECK(!((exchange_t *)ctx)->over);
}

static const mg_up_cbs_t cbs = {x_headers, x_data, x_end, x_error, x_drain, x_interim};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN);
    dump = getenv("FZ_DUMP") != NULL;
    mg_log_level = (mg_log_level_t)(MG_LOG_ERROR + 1); /* quiet: the pod is wrong on purpose */
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(listen_fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    CHECK(listen(listen_fd, 64) == 0);
    socklen_t sl = sizeof(sin);
    CHECK(getsockname(listen_fd, (struct sockaddr *)&sin, &sl) == 0);
    CHECK(evutil_make_socket_nonblocking(listen_fd) == 0);
    memcpy(&pod.addr, &sin, sizeof(sin));
    pod.addrlen = sizeof(sin);
    pod.name = "127.0.0.1:fuzz";
    pod.weight = 1;
    return 0;
}

/* Runs the loop until it has nothing ready, reading and dropping what the gateway sent. */
static void pump(struct event_base *base, int fd)
{
    char sink[16384];
    for (int i = 0; i < MAX_PASSES; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ssize_t r = fd >= 0 ? read(fd, sink, sizeof(sink)) : -1;
        if (r <= 0 && i > 2)
            break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunks[8] = {0, 1, 2, 5, 13, 64, 512, 4096};
    if (size == 0)
        return 0;
    uint8_t flags = data[0];
    data++, size--;
    size_t chunk = chunks[(flags & F_CHUNK) >> 1];
    if (chunk == 0)
        chunk = size ? size : 1;

    /* connections an earlier input's gateway opened and never used (it was freed while one
     * waited for SETTINGS) would be taken for this input's */
    for (int stale; (stale = accept(listen_fd, NULL, NULL)) >= 0;)
        close(stale);
    struct event_base *base = event_base_new();
    CHECK(base != NULL);
    mg_up_conf_t uc = {.connect_timeout_ms = 2000,
                       .max_streams_per_conn = 100,
                       .max_idle_conns_per_pod = 4,
                       .idle_conn_ms = 60000};
    mg_upstreams_t *ups = mg_upstreams_new(base, &uc);
    CHECK(ups != NULL);
    struct evbuffer *body = evbuffer_new();
    bool post = flags & F_POST;
    if (post)
        evbuffer_add(body, "hello", 5);
    static const mg_hdr_t hdrs[] = {{"x-request-id", "0123456789abcdef", 12, 16, false}};
    mg_up_req_t req = {.method = post ? "POST" : "GET",
                       .scheme = "http",
                       .authority = "digits-production.modelgate.local",
                       .path = "/v1/predict",
                       .hdrs = hdrs,
                       .nhdrs = 1,
                       .content_length = post ? 5 : -1,
                       .has_body = post,
                       .body = body};
    exchange_t x = {.flags = flags};
    mg_err_t err;
    x.s = mg_up_start(ups, &pod, flags & F_H2C ? MG_UP_H2C : MG_UP_H1, &req, &cbs, &x, &err);
    CHECK(x.s != NULL);
    if (post)
        mg_up_body_end(x.s, NULL, 0);

    int fd = -1;
    for (int i = 0; i < 1000 && fd < 0; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        fd = accept(listen_fd, NULL, NULL);
    }
    CHECK(fd >= 0);
    CHECK(evutil_make_socket_nonblocking(fd) == 0);
    pump(base, fd);

    /* the pod's bytes; a chunk the gateway does not take (flow control) ends the input */
    for (size_t off = 0; off < size && !x.over;) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t w = write(fd, data + off, n);
        if (w <= 0)
            break;
        off += (size_t)w;
        pump(base, fd);
    }
    if (!(flags & F_STAY_OPEN)) {
        close(fd);
        fd = -1;
        pump(base, fd);
        /* a request the pod never took (a GOAWAY before it was sent: nothing goes out before
         * the pod's SETTINGS) waits for a new connection: the pod is gone, so each one it
         * opens is closed at once, before SETTINGS, which fails the request over */
        for (int i = 0; i < 4 && !x.over; i++) {
            int again = accept(listen_fd, NULL, NULL);
            if (again >= 0)
                close(again);
            pump(base, -1);
        }
        CHECK(x.over); /* the pod is gone: the exchange must have ended, one way or another */
    }
    if (!x.over) { /* a pod that says no more: the caller gives up, as a timeout would */
        mg_up_cancel(x.s);
        x.over = true;
        x.how = "cancelled";
    }
    if (dump)
        fprintf(stderr, "%s %s: %u interim, status %d, %zu body bytes, %s\n",
                flags & F_H2C ? "h2c" : "http/1.1", post ? "POST" : "GET", x.interims, x.status,
                x.body, x.how);
    pump(base, fd);
    if (fd >= 0)
        close(fd);
    mg_upstreams_free(ups);
    evbuffer_free(body);
    event_base_free(base);
    return 0;
}
