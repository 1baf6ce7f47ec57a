/*
 * tests/fuzz/fuzz_h2server.c - a real mg_srv_t fed arbitrary client bytes.
 *
 * Each input runs one connection from start to end: a fresh event_base and mg_srv_t, one end of
 * a socketpair handed to the server as an accepted cleartext client, the input written to the
 * other end (in chunks, with the loop run between them), the loop run with EVLOOP_NONBLOCK until
 * it is quiet while everything the server answers is read and dropped, then the client closes
 * and everything is freed. Both engines are reached: inputs that start with the HTTP/2 preface
 * run nghttp2, the others llhttp.
 *
 * The handler answers in many ways, picked per request by its path ("/m<digit>..." picks the
 * mode, any other path a hash of it): at once, while or after reading the body, from a timer
 * (outside any server callback), from another stream's callback, with mg_srv_error, with
 * mg_srv_reset, or never. Before its answer a request may get interim heads (mg_srv_interim:
 * 102 to 199, some refused on purpose), as many as its "x-interims" field says (one digit), else
 * the fifth character of a "/m..." path, else a hash of the path (0 to 3). It checks what
 * h2server.h promises: one on_close per on_request, nothing after on_close, on_end at most once
 * and never followed by on_body, valid request fields, mg_srv_interim's answers. A broken
 * promise aborts; ASan/UBSan and LeakSanitizer catch the rest.
 *
 * Input: byte 0 holds flags (below), the rest is what the client sends.
 *   bits 0-2  chunk size: all at once, 1, 2, 5, 13, 64, 512 or 4096 bytes (at most 64 chunks)
 *   bit 3     mg_srv_shutdown() halfway through the input
 *   bit 4     shutdown(SHUT_WR) the client before closing (the server sees EOF first)
 *   bit 5     the client reads nothing until the end (the server's output backs up)
 *   bit 6     prepend the HTTP/2 client preface (so mutations keep it)
 *   bit 7     small limits: 512-byte header lists, 8 headers, 4096-byte stream window
 *
 * FZ_DUMP=1 in the environment copies what the server sends to stderr, to read a reproducer.
 *
 * The server's static on_accept is reached by including h2server.c (STYLE.md section 8), so no
 * listening socket and no TCP port is used: a socketpair costs no ephemeral port or TIME_WAIT.
 *
 *   build-fuzz/tests/fuzz/fuzz_h2server -dict=tests/fuzz/h2server.dict -max_len=16384 \
 *       tests/fuzz/corpus_h2server/h1 tests/fuzz/corpus_h2server/h2
 */
#include "common/h2server.c"
#include "check.h"

#include <fcntl.h>
#include <signal.h>

#define F_CHUNK 0x07
#define F_SHUTDOWN 0x08
#define F_HALF_CLOSE 0x10
#define F_NO_READ 0x20
#define F_PREFACE 0x40
#define F_SMALL 0x80

#define FZ_MAGIC 0x66a5e1u
#define MAX_PASSES 400 /* loop passes per pump: ends a livelock, should one exist */

typedef enum {
    M_NOW,        /* answer in on_request (variant: no body, content-length, streamed+trailers) */
    M_ECHO,       /* head in on_request, echo each body chunk, end in on_end with trailers */
    M_AFTER,      /* consume the body, answer in on_end */
    M_ERROR,      /* mg_srv_error in on_request */
    M_RESET,      /* mg_srv_reset in on_request */
    M_RESET_BODY, /* mg_srv_reset on the first body chunk (or in on_end) */
    M_ASYNC,      /* answer from a zero timer after on_end, possibly a large body via on_drain */
    M_NOCONSUME,  /* never consume: flow control stops the client; answer if on_end comes */
    M_PARK,       /* answer from another stream's on_request, or after the loop went quiet */
    M_ERROR_BODY, /* mg_srv_error on the first body chunk, before the request ended */
    M_COUNT
} fz_mode_t;

/* Any mg_srv_* call may close the stream synchronously (on_close inside the call), so every
 * function that calls one pins the state and checks |closed| after each call. */
typedef struct fz_stream {
    uint32_t magic;
    mg_srv_stream_t *s;
    fz_mode_t mode;
    unsigned variant;
    int pins;
    bool closed;    /* on_close seen; freed when the last pin goes */
    size_t body;    /* request body bytes seen */
    size_t to_send; /* M_ASYNC: response body bytes still to write */
    bool ended;     /* on_end seen */
    bool acted;     /* the one-shot action (reset, error) was taken */
    bool finished;  /* we ended the response */
    /* interim heads still to send before the answer; an HTTP/1.0 client (refused them) */
    unsigned interims;
    bool http10;
    struct event *timer;
    struct fz_stream *park_next;
} fz_stream_t;

static struct event_base *base;
static long open_streams;   /* on_request minus on_close */
static fz_stream_t *parked; /* M_PARK streams waiting for an answer */
static int ud_token;
static uint8_t pattern[16384];
static bool dump; /* FZ_DUMP=1 in the environment: copy the server's output to stderr */

static void pin(fz_stream_t *st)
{
    st->pins++;
}

static void unpin(fz_stream_t *st)
{
    if (--st->pins == 0 && st->closed) {
        st->magic = 0;
        free(st);
    }
}

static void park_remove(fz_stream_t *st)
{
    for (fz_stream_t **pp = &parked; *pp; pp = &(*pp)->park_next)
        if (*pp == st) {
            *pp = st->park_next;
            return;
        }
}

static fz_stream_t *stream_of(mg_srv_stream_t *s)
{
    fz_stream_t *st = mg_srv_data(s);
    CHECK(st != NULL); /* a callback after on_close, or for a stream never shown to us */
    CHECK(st->magic == FZ_MAGIC && st->s == s && !st->closed);
    return st;
}

/* Each returns false once the stream is closed: the caller must stop using it. */

/* Sends the stream's interim heads (before its answer), then one after it, which is refused.
 * Statuses cycle through valid and refused ones; the fields carry a content-length (left out)
 * and a never-indexed field, and the request's path (client bytes) past the first. */
static bool send_interims(fz_stream_t *st, const char *path)
{
    static const int statuses[] = {103, 102, 100, 103, 199, 101, 150, 103, 200, 103, 103, 103};
    unsigned oks = 0;
    bool had = mg_srv_responded(st->s);
    for (unsigned i = 0; i < st->interims && !st->closed; i++) {
        int status = statuses[i % (sizeof(statuses) / sizeof(statuses[0]))];
        mg_hdr_t h[4] = {
            {"link", "</style.css>; rel=preload; as=style", 4, 35, MG_HPACK_INDEX},
            {"content-length", "12", 14, 2, MG_HPACK_INDEX},
            {"x-secret", "s3cr3t", 8, 6, MG_HPACK_SENSITIVE},
            {"x-path", path ? path : "", 6, path ? strlen(path) : 0, MG_HPACK_UNIQUE},
        };
        mg_err_t err = mg_srv_interim(st->s, status, h, path && i > 0 ? 4 : 3);
        if (had || status < 102 || status > 199)
            CHECK(err == MG_E_PROTO);
        else if (err == MG_E_LIMIT)
            CHECK(oks >= MG_SRV_MAX_INTERIM);
        else if (st->http10)
            CHECK(err == MG_E_PROTO);
        else
            CHECK(err == MG_OK || err == MG_E_NOMEM || err == MG_E_PROTO);
        oks += err == MG_OK;
    }
    st->interims = 0;
    return !st->closed;
}

static bool respond(fz_stream_t *st, int status, bool end)
{
    static const char *const modes = "0123456789";
    mg_hdr_t h[2] = {
        {"content-type", "text/plain", 12, 10, MG_HPACK_INDEX},
        {"x-mode", modes + st->mode, 6, 1, (st->variant & 1) ? MG_HPACK_UNIQUE : MG_HPACK_INDEX},
    };
    if (!send_interims(st, NULL))
        return false;
    bool had = mg_srv_responded(st->s);
    if (end)
        st->finished = true;
    mg_err_t err = mg_srv_respond(st->s, status, h, 2, end);
    CHECK(had ? err == MG_E_PROTO : err == MG_OK);
    /* the arena keeps room for the final head, whatever interims went before: it is not
     * replaced by RST_STREAM INTERNAL_ERROR */
    CHECK(had || st->closed || !st->s->reset_by_us);
    if (!st->closed && !had) { /* the final head is out: no interim may follow */
        mg_hdr_t late[1] = {{"link", "</late>", 4, 7, MG_HPACK_INDEX}};
        CHECK(mg_srv_interim(st->s, 103, late, 1) == MG_E_PROTO);
    }
    return !st->closed;
}

static bool write_body(fz_stream_t *st, const void *data, size_t len)
{
    mg_srv_write(st->s, data, len);
    return !st->closed;
}

static bool finish(fz_stream_t *st, bool trailers)
{
    mg_hdr_t t[1] = {{"x-body-bytes", "42", 12, 2, MG_HPACK_INDEX}};
    st->finished = true;
    mg_srv_end(st->s, trailers ? t : NULL, trailers ? 1 : 0);
    return !st->closed;
}

static bool consume(fz_stream_t *st, size_t n)
{
    mg_srv_consume(st->s, n);
    return !st->closed;
}

/* Writes the rest of an M_ASYNC body until the stream's queue passes MG_SRV_HIGH. */
static void async_produce(fz_stream_t *st)
{
    while (st->to_send > 0 && mg_srv_pending(st->s) < MG_SRV_HIGH) {
        size_t n = st->to_send < sizeof(pattern) ? st->to_send : sizeof(pattern);
        st->to_send -= n;
        if (!write_body(st, pattern, n))
            return;
    }
    if (st->to_send == 0 && !st->finished)
        finish(st, st->variant & 2);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    fz_stream_t *st = arg;
    static const size_t sizes[] = {0, 1000, 70000, 300000};
    CHECK(st->magic == FZ_MAGIC && !st->closed);
    pin(st);
    st->to_send = sizes[st->variant & 3];
    if (respond(st, 200, false))
        async_produce(st);
    unpin(st);
}

/* Answers a parked stream; called from another stream's callback or from outside the loop. */
static void unpark(fz_stream_t *st)
{
    park_remove(st);
    pin(st);
    if ((mg_srv_responded(st->s) || respond(st, 200, false)) && write_body(st, "parked\n", 7))
        finish(st, st->variant & 1);
    unpin(st);
}

static void check_hdrs(const mg_hdr_t *h, size_t n)
{
    CHECK(n == 0 || h != NULL);
    for (size_t i = 0; i < n; i++) {
        CHECK(h[i].name[h[i].name_len] == '\0' && h[i].value[h[i].value_len] == '\0');
        for (size_t k = 0; k < h[i].name_len; k++)
            CHECK(!(h[i].name[k] >= 'A' && h[i].name[k] <= 'Z'));
    }
}

static void answer_request(fz_stream_t *st, const char *path)
{
    mg_srv_stream_t *s = st->s;
    if (st->mode != M_PARK && st->mode != M_NOCONSUME && st->mode != M_ASYNC &&
        !send_interims(st, path))
        return; /* the others send theirs later, from respond() */
    switch (st->mode) {
    case M_NOW:
        switch (st->variant % 4) {
        case 0:
            respond(st, 204, true);
            break;
        case 1: {
            mg_hdr_t cl[1] = {{"content-length", "3", 14, 1, MG_HPACK_INDEX}};
            CHECK(mg_srv_respond(s, 200, cl, 1, false) == MG_OK);
            if (!st->closed && write_body(st, "ok\n", 3))
                finish(st, false);
            break;
        }
        case 2:
            if (respond(st, 200, false) && write_body(st, path, strlen(path)))
                finish(st, true);
            break;
        default:
            respond(st, 304, true);
            break;
        }
        break;
    case M_ECHO:
        respond(st, 200, false);
        break;
    case M_ERROR: {
        mg_hdr_t extra[1] = {{"retry-after", "1", 11, 1, MG_HPACK_INDEX}};
        static const int statuses[] = {400, 404, 429, 503};
        st->finished = true;
        mg_srv_error(s, statuses[st->variant % 4], "fuzz", "a \"quoted\"\n message", path,
                     st->variant & 4 ? extra : NULL, st->variant & 4 ? 1 : 0);
        break;
    }
    case M_RESET:
        st->acted = true;
        mg_srv_reset(s);
        break;
    case M_PARK:
        st->park_next = parked;
        parked = st;
        break;
    default:
        break;
    }
}

static void on_request(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud)
{
    CHECK(ud == &ud_token);
    CHECK(mg_srv_data(s) == NULL); /* a recycled stream starts clean */
    CHECK(req->method && req->scheme && req->authority && req->path && req->proto);
    CHECK(req->client && req->client_ip);
    CHECK(strcmp(req->scheme, "http") == 0);
    CHECK(strcmp(req->proto, "h2c") == 0 || strcmp(req->proto, "http/1.1") == 0 ||
          strcmp(req->proto, "http/1.0") == 0);
    CHECK(!req->authority_absent || req->authority[0] == '\0'); /* absent: "" to the router */
    check_hdrs(req->hdrs, req->nhdrs);
    CHECK(mg_arena_alloc(mg_srv_arena(s), 8) != NULL); /* the arena is usable */

    fz_stream_t *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        mg_srv_reset(s);
        return;
    }
    open_streams++;
    st->magic = FZ_MAGIC;
    st->s = s;
    const char *p = req->path;
    unsigned h = 5381;
    for (const char *q = p; *q; q++)
        h = h * 33 + (unsigned char)*q;
    if (p[0] == '/' && p[1] == 'm' && p[2] >= '0' && p[2] <= '9') {
        st->mode = (fz_mode_t)(p[2] - '0');
        st->variant = p[3] >= '0' && p[3] <= '9' ? (unsigned)(p[3] - '0') : 0;
        st->interims = p[3] && p[4] >= '0' && p[4] <= '9' ? (unsigned)(p[4] - '0') : 0;
    } else {
        st->mode = (fz_mode_t)(h % M_COUNT);
        st->variant = (h / M_COUNT) % 8;
        st->interims = (h / M_COUNT / 8) % 4;
    }
    for (size_t i = 0; i < req->nhdrs; i++)
        if (req->hdrs[i].name_len == 10 && memcmp(req->hdrs[i].name, "x-interims", 10) == 0 &&
            req->hdrs[i].value_len == 1 && req->hdrs[i].value[0] >= '0' &&
            req->hdrs[i].value[0] <= '9')
            st->interims = (unsigned)(req->hdrs[i].value[0] - '0');
    st->http10 = s->c->proto == P_H1 && s->c->parser.http_minor == 0; /* h2server.c's own */
    mg_srv_set_data(s, st);
    pin(st);
    /* an earlier parked stream is answered from this one's callback (same connection) */
    if (parked != NULL && st->mode != M_PARK)
        unpark(parked);
    if (!st->closed)
        answer_request(st, p);
    unpin(st);
}

static void on_body(mg_srv_stream_t *s, const uint8_t *data, size_t len)
{
    fz_stream_t *st = stream_of(s);
    CHECK(!st->ended);
    CHECK(len == 0 || data != NULL);
    st->body += len;
    pin(st);
    switch (st->mode) {
    case M_ECHO:
        if ((st->finished || write_body(st, data, len)))
            consume(st, len);
        break;
    case M_RESET_BODY:
        if (!st->acted) {
            st->acted = true;
            mg_srv_reset(s);
        }
        break;
    case M_NOCONSUME:
        break;
    case M_ERROR_BODY:
        if (!st->acted) {
            st->acted = true;
            st->finished = true;
            mg_srv_error(s, 413, "too_large", "body refused", NULL, NULL, 0);
        }
        if (!st->closed)
            consume(st, len);
        break;
    default:
        /* consume half now and the rest at once, or all at once */
        if (st->variant & 4 && len > 1) {
            if (consume(st, len / 2))
                consume(st, len - len / 2);
        } else {
            consume(st, len);
        }
        break;
    }
    unpin(st);
}

static void on_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    fz_stream_t *st = stream_of(s);
    CHECK(!st->ended);
    st->ended = true;
    check_hdrs(trailers, n);
    pin(st);
    switch (st->mode) {
    case M_ECHO:
        if (!st->finished)
            finish(st, true);
        break;
    case M_AFTER:
    case M_NOCONSUME:
    case M_ERROR_BODY:
        if (!mg_srv_responded(s) && respond(st, 200, false) && write_body(st, "done\n", 5))
            finish(st, st->variant & 1);
        break;
    case M_RESET_BODY:
        if (!st->acted) {
            st->acted = true;
            mg_srv_reset(s);
        }
        break;
    case M_ASYNC:
        if (st->timer == NULL && (st->timer = evtimer_new(base, on_timer, st)) != NULL) {
            struct timeval zero = {0, 0};
            evtimer_add(st->timer, &zero);
        }
        break;
    default:
        break;
    }
    unpin(st);
}

static void on_drain(mg_srv_stream_t *s)
{
    fz_stream_t *st = stream_of(s);
    pin(st);
    if (st->mode == M_ASYNC && mg_srv_responded(s) && !st->finished)
        async_produce(st);
    unpin(st);
}

static void on_close(mg_srv_stream_t *s, bool complete)
{
    fz_stream_t *st = stream_of(s);
    CHECK(!complete || mg_srv_responded(s)); /* a finished exchange had a response */
    park_remove(st);
    if (st->timer)
        event_free(st->timer);
    st->timer = NULL;
    st->closed = true;
    mg_srv_set_data(s, NULL);
    open_streams--;
    CHECK(open_streams >= 0);
    pin(st);
    unpin(st); /* frees it unless a caller up the stack still holds it */
}

static void reject_id(void *ud, char *rid, size_t cap)
{
    CHECK(ud == &ud_token);
    snprintf(rid, cap, "fuzz-rid");
}

static void on_reject(void *ud, const mg_srv_req_t *req, int status, const char *code,
                      const char *rid, uint64_t resp_bytes)
{
    CHECK(ud == &ud_token);
    CHECK(req->method && req->path && code); /* authority: NULL when no host was read */
    CHECK(req->authority == NULL || strlen(req->authority) < 1u << 20);
    CHECK(status >= 400 && status <= 599);
    CHECK(rid != NULL && strcmp(rid, "fuzz-rid") == 0);
    CHECK(resp_bytes < 900); /* a JSON error body, or none */
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

/* Reads and drops whatever the server sent; returns the number of bytes. */
static size_t drain_client(int fd)
{
    static uint8_t buf[65536];
    size_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            return total;
        if (dump)
            fwrite(buf, 1, (size_t)n, stderr);
        total += (size_t)n;
    }
}

/* Runs the loop until |quiet| passes in a row neither produce output nor have work left. */
static void pump(int fd, bool read_out, int quiet)
{
    int idle = 0;
    for (int i = 0; i < MAX_PASSES && idle < quiet; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        size_t n = read_out && fd >= 0 ? drain_client(fd) : 0;
        idle = n ? 0 : idle + 1;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    mg_log_level = MG_LOG_ERROR;
    dump = getenv("FZ_DUMP") != NULL;
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = (uint8_t)('a' + i % 26);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunks[] = {0, 1, 2, 5, 13, 64, 512, 4096};
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    data++;
    size--;

    bool small = flags & F_SMALL;
    mg_srv_conf_t conf = {
        .max_concurrent_streams = 8,
        .max_header_list_size = small ? 512 : 8192,
        .max_headers = small ? 8 : 64,
        .stream_window = small ? 4096 : 65535,
        .connection_window = small ? 65535 : 1 << 20,
        .client_idle_ms = 60000, /* armed and disarmed; fired by hand below, not by the clock */
        .stream_memory = 0,      /* the default, derived from max_header_list_size */
    };
    base = event_base_new();
    CHECK(base != NULL);
    mg_srv_t *srv = mg_srv_new(base, &conf, &handler, &ud_token, NULL);
    CHECK(srv != NULL);

    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK(evutil_make_socket_nonblocking(sv[0]) == 0 && evutil_make_socket_nonblocking(sv[1]) == 0);
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    on_accept(NULL, sv[1], (struct sockaddr *)&peer, sizeof(peer), srv); /* owns sv[1] now */
    CHECK(mg_srv_nconns(srv) == 1);
    int fd = sv[0];
    bool read_out = !(flags & F_NO_READ);

    /* the client's bytes: optional preface, then the input, in chunks */
    size_t chunk = chunks[flags & F_CHUNK];
    if (chunk == 0 || chunk < size / 64)
        chunk = chunk == 0 ? (size ? size : 1) : size / 64 + 1;
    if (flags & F_PREFACE)
        CHECK(write(fd, H2_PREFACE, H2_PREFACE_LEN) == H2_PREFACE_LEN);
    bool shut = false;
    int stalls = 0;
    for (size_t off = 0; off < size;) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t w = write(fd, data + off, n);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            break; /* the server closed the connection */
        if (w > 0)
            off += (size_t)w;
        pump(fd, read_out, w > 0 ? 2 : 3);
        if (w <= 0 && (!read_out || ++stalls > 8))
            break; /* the server stopped reading (flow control): the rest cannot move */
        if ((flags & F_SHUTDOWN) && !shut && off >= size / 2) {
            shut = true;
            mg_srv_shutdown(srv);
        }
    }
    pump(fd, read_out, 3);

    /* what an upstream would do later: answer the parked streams from outside any callback */
    while (parked != NULL)
        unpark(parked);
    pump(fd, true, 3);

    /* the idle timer fires: called here rather than left to the clock, so runs repeat */
    for (conn_t *c = srv->conns, *next; c != NULL; c = next) {
        next = c->next;
        on_idle(-1, EV_TIMEOUT, c);
    }
    pump(fd, true, 3);

    if (flags & F_HALF_CLOSE) {
        shutdown(fd, SHUT_WR);
        pump(fd, true, 3);
    }
    close(fd);
    pump(-1, false, 3);

    mg_srv_free(srv);
    event_base_free(base);
    base = NULL;
    CHECK(open_streams == 0); /* every on_request had its on_close */
    CHECK(parked == NULL);
    return 0;
}
