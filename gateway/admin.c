/*
 * gateway/admin.c - the admin listener (see admin.h).
 *
 * The listener is an ordinary mg_srv_t on the admin thread's base; its handler checks the
 * token, finds the mount for the path, and hands the stream to the mount's handler with
 * mg_srv_set_handler, so mounted modules see a plain mg_srv stream. Pages are a built-in mount
 * kind: the request body (if any) is consumed and dropped, the page function fills a buffer.
 */
#include "gateway/admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/listen.h"
#include "common/log.h"
#include "common/secretfile.h"

#define MAX_MOUNTS 32

typedef struct mount {
    char *prefix;
    size_t len;
    const mg_srv_handler_t *h; /* NULL for a page */
    void *ud;
    mg_admin_page_fn page;
} mount_t;

struct mg_admin {
    struct event_base *base;
    mg_srv_t *srv;
    int fd;         /* until mg_admin_start hands it to srv */
    unsigned port;
    char *token;      /* from admin.token_file; NULL = none. Wiped before it is freed */
    size_t token_len; /* 0 = no token */
    bool has_token;   /* set at start, never changed: any thread may read it */
    mount_t mounts[MAX_MOUNTS];
    size_t nmounts;
    pthread_t thread;
    bool running;
    struct event *stop_ev;
};

/* ---------- replies ---------- */

void mg_admin_reply(mg_srv_stream_t *s, int status, const char *content_type, const void *body,
                    size_t len)
{
    char clen[24];
    snprintf(clen, sizeof(clen), "%zu", len);
    mg_hdr_t h[] = {
        {"content-type", content_type, 12, strlen(content_type), false},
        {"content-length", clen, 14, strlen(clen), false},
    };
    mg_srv_respond(s, status, h, 2, false);
    if (len)
        mg_srv_write(s, body, len);
    mg_srv_end(s, NULL, 0);
}

/* ---------- pages ---------- */

static void page_body(mg_srv_stream_t *s, const uint8_t *data, size_t len)
{
    mg_srv_consume(s, len); /* a page takes no body */
}
static void page_end(mg_srv_stream_t *s, const mg_hdr_t *t, size_t n) {}
static void page_drain(mg_srv_stream_t *s) {}
static void page_close(mg_srv_stream_t *s, bool complete) {}

static const mg_srv_handler_t page_handler = {
    .on_body = page_body, .on_end = page_end, .on_drain = page_drain, .on_close = page_close,
};

static void serve_page(mg_srv_stream_t *s, const mg_srv_req_t *req, const mount_t *m)
{
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        mg_hdr_t allow = {"allow", "GET, HEAD", 5, 9, MG_HPACK_INDEX};
        mg_srv_error(s, 405, "method_not_allowed", "this admin page answers GET and HEAD only",
                     NULL, &allow, 1);
        return;
    }
    const char *q = strchr(req->path, '?');
    struct evbuffer *out = evbuffer_new();
    if (out == NULL) {
        mg_srv_error(s, 503, "out_of_memory", "cannot build the page", NULL, NULL, 0);
        return;
    }
    const char *type = "text/plain; charset=utf-8";
    int status = m->page(m->ud, q ? q + 1 : "", out, &type);
    size_t len = evbuffer_get_length(out);
    mg_admin_reply(s, status, type, evbuffer_pullup(out, -1), len);
    evbuffer_free(out);
}

/* ---------- dispatch ---------- */

static const mount_t *find_mount(const mg_admin_t *a, const char *path)
{
    const mount_t *best = NULL;
    for (size_t i = 0; i < a->nmounts; i++) {
        const mount_t *m = &a->mounts[i];
        if (strncmp(path, m->prefix, m->len) != 0) /* first: path may be shorter than prefix */
            continue;
        char next = path[m->len];
        bool exact = next == '\0' || next == '?';
        if ((exact || (next == '/' && m->h != NULL)) && (best == NULL || m->len > best->len))
            best = m; /* pages answer their exact path only; mounts their subtree too */
    }
    return best;
}

/* Constant time in the token's length, whatever the client sent. */
static bool token_ok(const mg_admin_t *a, const mg_srv_req_t *req)
{
    const char *got = NULL;
    size_t got_len = 0;
    for (size_t i = 0; i < req->nhdrs; i++)
        if (strcmp(req->hdrs[i].name, "authorization") == 0) {
            got = req->hdrs[i].value;
            got_len = req->hdrs[i].value_len;
        }
    if (got == NULL || got_len < 7 || strncasecmp(got, "Bearer ", 7) != 0)
        return false;
    got += 7, got_len -= 7;
    unsigned diff = got_len != a->token_len;
    for (size_t i = 0; i < a->token_len; i++)
        diff |= (unsigned)(uint8_t)a->token[i] ^ (unsigned)(uint8_t)(i < got_len ? got[i] : 0);
    return diff == 0;
}

static void on_request(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud)
{
    mg_admin_t *a = ud;
    mg_srv_set_handler(s, &page_handler); /* until a mount takes it: drops any body */
    if (strcmp(req->path, "/healthz") == 0 &&
        (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0)) {
        mg_admin_reply(s, 200, "text/plain; charset=utf-8", "ok\n", 3);
        return;
    }
    if (a->token_len && !token_ok(a, req)) {
        static const char realm[] = "Bearer realm=\"modelgate-admin\"";
        mg_hdr_t h = {"www-authenticate", realm, 16, sizeof(realm) - 1, MG_HPACK_INDEX};
        mg_srv_error(s, 401, "unauthorized",
                     "the admin API needs \"Authorization: Bearer <token>\" with the token of "
                     "admin.token_file",
                     NULL, &h, 1);
        return;
    }
    const mount_t *m = find_mount(a, req->path);
    if (m == NULL) {
        mg_srv_error(s, 404, "not_found", "no admin endpoint at this path", NULL, NULL, 0);
        return;
    }
    if (m->h == NULL) {
        serve_page(s, req, m);
        return;
    }
    mg_srv_set_handler(s, m->h);
    m->h->on_request(s, req, m->ud);
}

static void unused_body(mg_srv_stream_t *s, const uint8_t *d, size_t n) {}
static void unused_end(mg_srv_stream_t *s, const mg_hdr_t *t, size_t n) {}
static void unused_drain(mg_srv_stream_t *s) {}
static void unused_close(mg_srv_stream_t *s, bool c) {}

/* on_request switches every stream to another handler at once; the rest is never called */
static const mg_srv_handler_t admin_handler = {
    .on_request = on_request, .on_body = unused_body, .on_end = unused_end,
    .on_drain = unused_drain, .on_close = unused_close,
};

/* ---------- lifecycle ---------- */

static bool is_loopback(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    return getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
           mg_sockaddr_is_loopback((struct sockaddr *)&ss);
}

static unsigned bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

mg_admin_t *mg_admin_new(const char *listen, const char *token_file, char *err, size_t errlen)
{
    mg_admin_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "admin listener: out of memory");
        return NULL;
    }
    a->fd = -1;
    /* a client cannot send a space or a control byte inside the token (and a header value
     * loses its leading spaces): MG_SECRET_TOKEN refuses a token that would 401 everyone */
    if (token_file && mg_secretfile_read(token_file, "admin.token_file", MG_SECRET_TOKEN,
                                         MG_ADMIN_TOKEN_MAX, &a->token, err, errlen) != MG_OK)
        goto fail;
    a->token_len = a->token ? strlen(a->token) : 0;
    a->has_token = a->token_len > 0;
    a->fd = mg_listen_bind(listen, true, err, errlen);
    if (a->fd < 0)
        goto fail;
    if (a->token_len == 0 && !is_loopback(a->fd)) {
        snprintf(err, errlen,
                 "admin listener %s is not a loopback address and admin.token_file is not set "
                 "(set a token file, or listen on 127.0.0.1)",
                 listen);
        goto fail;
    }
    a->port = bound_port(a->fd);
    /* a locking base (unlike the workers'): mg_admin_free stops it from another thread */
    a->base = event_base_new();
    mg_srv_conf_t sc = {.max_concurrent_streams = 100,
                        .max_header_list_size = 65536,
                        .max_headers = 100,
                        .stream_window = 1 << 20,
                        .connection_window = 1 << 24,
                        .connection_buffer = 1 << 22,
                        .client_idle_ms = 60000,
                        .client_write_ms = 30000};
    a->srv = a->base ? mg_srv_new(a->base, &sc, &admin_handler, a, NULL) : NULL;
    if (a->srv == NULL) {
        snprintf(err, errlen, "admin listener: out of memory");
        goto fail;
    }
    return a;
fail:
    mg_admin_free(a);
    return NULL;
}

static void add_mount(mg_admin_t *a, const char *prefix, const mg_srv_handler_t *h, void *ud,
                      mg_admin_page_fn page)
{
    if (a->nmounts == MAX_MOUNTS) {
        MG_LOG(MG_LOG_ERROR, "admin", "too many admin mounts; %s not served", prefix);
        return;
    }
    mount_t *m = &a->mounts[a->nmounts];
    if ((m->prefix = strdup(prefix)) == NULL)
        return;
    m->len = strlen(prefix);
    while (m->len > 1 && m->prefix[m->len - 1] == '/')
        m->prefix[--m->len] = '\0';
    m->h = h, m->ud = ud, m->page = page;
    a->nmounts++;
}

void mg_admin_mount(mg_admin_t *a, const char *prefix, const mg_srv_handler_t *h, void *ud)
{
    add_mount(a, prefix, h, ud, NULL);
}

void mg_admin_page(mg_admin_t *a, const char *path, mg_admin_page_fn fn, void *ud)
{
    add_mount(a, path, NULL, ud, fn);
}

static void *admin_main(void *arg)
{
    mg_admin_t *a = arg;
    pthread_setname_np(pthread_self(), "mg-admin");
    event_base_dispatch(a->base);
    return NULL;
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(((mg_admin_t *)arg)->base);
}

mg_err_t mg_admin_start(mg_admin_t *a)
{
    if (mg_srv_listen(a->srv, a->fd, false) != MG_OK)
        return MG_E_IO;
    a->fd = -1; /* the server owns it now */
    a->stop_ev = event_new(a->base, -1, 0, on_stop, a);
    if (a->stop_ev == NULL || pthread_create(&a->thread, NULL, admin_main, a) != 0)
        return MG_E_IO;
    a->running = true;
    MG_LOG(MG_LOG_INFO, "admin", "admin listener on port %u (%s)", a->port,
           a->token_len ? "bearer token required" : "loopback, no token");
    return MG_OK;
}

typedef struct token_swap {
    mg_admin_t *a;
    char *token;
} token_swap_t;

/* On the admin thread, which alone reads the token. */
static void swap_token(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    token_swap_t *t = arg;
    mg_admin_t *a = t->a;
    if (strcmp(a->token, t->token) != 0) {
        char *old = a->token;
        a->token = t->token;
        a->token_len = strlen(t->token);
        t->token = old;
        MG_LOG(MG_LOG_INFO, "admin", "admin.token_file reloaded: a new token is required");
    }
    mg_secretfile_free(t->token);
    free(t);
}

void mg_admin_reload_token(mg_admin_t *a, const char *token_file)
{
    if (a == NULL || token_file == NULL || !a->has_token) /* token_len is the admin thread's */
        return;
    char err[512];
    token_swap_t *t = malloc(sizeof(*t));
    if (t == NULL)
        return;
    t->a = a;
    if (mg_secretfile_read(token_file, "admin.token_file", MG_SECRET_TOKEN, MG_ADMIN_TOKEN_MAX,
                           &t->token, err, sizeof(err)) != MG_OK) {
        MG_LOG(MG_LOG_ERROR, "admin", "%s; the previous token stays", err);
        free(t);
        return;
    }
    if (event_base_once(a->base, -1, EV_TIMEOUT, swap_token, t, NULL) != 0) {
        mg_secretfile_free(t->token);
        free(t);
    }
}

struct event_base *mg_admin_base(mg_admin_t *a)
{
    return a->base;
}

unsigned mg_admin_port(const mg_admin_t *a)
{
    return a->port;
}

void mg_admin_free(mg_admin_t *a)
{
    if (a == NULL)
        return;
    if (a->running) {
        event_active(a->stop_ev, EV_TIMEOUT, 0);
        pthread_join(a->thread, NULL);
    }
    if (a->stop_ev)
        event_free(a->stop_ev);
    if (a->srv)
        mg_srv_free(a->srv);
    if (a->fd >= 0)
        close(a->fd);
    if (a->base)
        event_base_free(a->base);
    for (size_t i = 0; i < a->nmounts; i++)
        free(a->mounts[i].prefix);
    mg_secretfile_free(a->token);
    free(a);
}
