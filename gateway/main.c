/*
 * gateway/main.c - modelgate: start-up, worker threads, signals, reload and drain.
 *
 * DESIGN
 * The main thread parses the configuration, binds one SO_REUSEPORT socket per listener per
 * worker (so bind errors are reported before anything starts), then runs N worker threads,
 * each with its own event_base, server (client connections), proxy and upstream pools. The
 * kernel spreads accepted connections across the workers' sockets; a connection stays on the
 * worker that accepted it. The main thread keeps an event_base for signals only:
 *  - SIGHUP: load and validate the routing document (blocking file I/O is fine here, no
 *    request is served on this thread), then hand the new snapshot to every worker through its
 *    command event; a bad document is refused and the old one stays. The TLS certificate and
 *    key are read again too, and a new context goes to the workers the same way when they
 *    changed; each of the two is refused or taken on its own.
 *  - SIGTERM/SIGINT: workers stop accepting and send GOAWAY; each exits its loop when its
 *    last connection is gone, or at the drain deadline.
 *  - SIGUSR1: the access log reopens its file.
 * The database request log (request_log_db) rides on the access log: its writer thread hands
 * every batch to mg_dblog_sink, so it opens after the access log and closes after it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "common/asan.h"
#include "common/evmem.h"
#include "common/h2server.h"
#include "common/listen.h"
#include "common/log.h"
#include "common/secretfile.h"
#include "common/stats.h"
#include "common/tlstickets.h"
#include "features/fadmin.h"
#include "features/features.h"
#include "features/fsource.h"
#include "gateway/admin.h"
#include "gateway/conf.h"
#include "gateway/control.h"
#include "gateway/dblog.h"
#include "gateway/metrics.h"
#include "gateway/proxy.h"
#include "gateway/reqlog.h"
#include "routing/podstate.h"
#include "routing/routes.h"

typedef struct worker {
    unsigned id;
    pthread_t thread;
    struct event_base *base;
    mg_srv_t *srv;
    mg_proxy_t *proxy;
    mg_features_t *features; /* NULL when features are off */
    struct event *cmd;   /* readable when the main thread wrote to |pipe| */
    int pipe[2];         /* main -> worker wake-ups: one byte each */
    struct event *check; /* while draining: is everything done? */
    struct event *trim;  /* gives freed memory back to the system once the worker is idle */
    uint64_t started_seen, trimmed_at; /* mg_proxy_started at the last tick, the last trim */
    uint64_t accepted_at;              /* mg_srv_accepted at the last trim */
    pthread_mutex_t lock;
    mg_routes_t *next_routes; /* under |lock|: the snapshot to switch to */
    SSL_CTX *next_tls;        /* under |lock|: the TLS context for new connections */
    atomic_bool drain;
    atomic_bool stop_now; /* drain deadline passed: leave the loop at once */
} worker_t;

static const mg_conf_t *g_conf;
static mg_reqlog_t *g_log;
static mg_dblog_t *g_dblog; /* NULL when request_log_db is off */
static mg_admin_t *g_admin; /* NULL when no admin listener is configured */
static mg_control_t *g_control;

static mg_fsource_t *g_fsource; /* user features' shared part; NULL when features are off */
static mg_fadmin_t *g_fadmin;
static worker_t *g_workers;
static unsigned g_nworkers;
static mg_routes_t *g_routes;
static SSL_CTX *g_tls;                 /* NULL without TLS listeners */
static mg_tls_tickets_t *g_tickets;    /* every TLS context's session ticket keys */
static unsigned char g_tls_digest[32]; /* of the certificate and key files g_tls was made of */
static _Atomic int64_t g_tls_not_after; /* g_tls's certificate's notAfter, for /metrics */
static unsigned char g_ticket_digest[32]; /* of tls.ticket_key_file's keys in use */
static struct event_base *g_main_base;
static bool g_draining;

static void worker_metrics(void *ud, unsigned i, mg_metrics_worker_t *out)
{
    (void)ud;
    *out = (mg_metrics_worker_t){0};
    if (g_workers && i < g_nworkers && g_workers[i].srv) {
        out->conns = mg_srv_nconns(g_workers[i].srv);
        mg_srv_accept_pauses(g_workers[i].srv, &out->limit_pauses, &out->error_pauses);
        mg_srv_tls_handshakes(g_workers[i].srv, &out->tls_full, &out->tls_resumed,
                              &out->tls_failed);
    }
}

static mg_metrics_src_t g_metrics_src = {.worker = worker_metrics,
                                         .tls_not_after = &g_tls_not_after};

/* ---------- workers ---------- */

static void worker_maybe_done(worker_t *w)
{
    if (atomic_load(&w->drain) && mg_srv_nconns(w->srv) == 0 && mg_proxy_inflight(w->proxy) == 0)
        event_base_loopexit(w->base, NULL);
}

static void on_check(evutil_socket_t fd, short what, void *arg)
{
    worker_maybe_done(arg);
}

/*
 * glibc keeps what a worker frees in its arena and gives back only the top of it: after a
 * burst (slow clients each holding up to connection_buffer plus their streams' windows, large
 * bodies) the process kept its peak RSS for good, 125 MB of 150 MB after 5 slow clients had
 * gone. A worker idle for a whole tick (no request started, none in flight) after some work
 * returns the free pages of every arena (malloc_trim, ~0.2 ms after such a burst). It never
 * runs under load, so no request waits for it.
 */
#define TRIM_EVERY_MS 1000

static void on_trim(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    worker_t *w = arg;
    uint64_t started = mg_proxy_started(w->proxy);
    bool idle = started == w->started_seen && mg_proxy_inflight(w->proxy) == 0;
    w->started_seen = started;
    if (!idle)
        return;
    /* chains and streams kept for the next requests go back to malloc, also when only
     * connections came and went (idle connections' handshakes fill the chain cache too) */
    mg_evmem_flush();
    mg_srv_trim(w->srv);
    mg_proxy_trim(w->proxy);
    /* also after connections alone: their handshakes' TLS buffers, freed when they went quiet,
     * are holes in the heap that only malloc_trim gives back */
    uint64_t accepted = mg_srv_accepted(w->srv);
    if (started != w->trimmed_at || accepted != w->accepted_at) {
        w->trimmed_at = started;
        w->accepted_at = accepted;
#if !MG_ASAN
        /* under ASan glibc's malloc holds nothing to trim, and is not even set up: the first
         * malloc_trim initialises it, which is not thread-safe (two workers trimming in the same
         * tick aborted the gateway at exit, "a->attached_threads > 0") */
        malloc_trim(0);
#endif
    }
}

static void on_cmd(evutil_socket_t fd, short what, void *arg)
{
    worker_t *w = arg;
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0) /* wake-ups carry no data */
        ;
    pthread_mutex_lock(&w->lock);
    mg_routes_t *r = w->next_routes;
    SSL_CTX *tls = w->next_tls;
    w->next_routes = NULL;
    w->next_tls = NULL;
    pthread_mutex_unlock(&w->lock);
    if (r) {
        mg_proxy_set_routes(w->proxy, r);
        mg_routes_unref(r); /* the proxy took its own reference */
    }
    if (tls) {
        mg_srv_set_tls(w->srv, tls);
        SSL_CTX_free(tls); /* the server took its own reference */
    }
    if (atomic_load(&w->stop_now)) {
        event_base_loopbreak(w->base);
        return;
    }
    if (atomic_load(&w->drain) && !event_pending(w->check, EV_TIMEOUT, NULL)) {
        mg_srv_shutdown(w->srv);
        struct timeval tv = {0, 20000};
        event_add(w->check, &tv);
        worker_maybe_done(w);
    }
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "mg-worker-%u", w->id);
    pthread_setname_np(pthread_self(), name);
    event_base_dispatch(w->base);
    return NULL;
}

/* Hands |r| and |tls| (each may be NULL; each gets its own reference) to |w| and wakes it, also
 * with neither (to see a stop or drain flag). One not taken yet is replaced by the newer. */
static void worker_post(worker_t *w, mg_routes_t *r, SSL_CTX *tls)
{
    if (r)
        mg_routes_ref(r);
    if (tls)
        SSL_CTX_up_ref(tls);
    pthread_mutex_lock(&w->lock);
    if (r) {
        if (w->next_routes)
            mg_routes_unref(w->next_routes);
        w->next_routes = r;
    }
    if (tls) {
        SSL_CTX_free(w->next_tls);
        w->next_tls = tls;
    }
    pthread_mutex_unlock(&w->lock);
    ssize_t n = write(w->pipe[1], "!", 1); /* a full pipe already holds a wake-up */
    (void)n;
}

/* ---------- signals ---------- */

/* Hands |r| (one reference, ours) to every worker and makes it the current snapshot. */
static void install_routes(void *ud, mg_routes_t *r)
{
    for (unsigned i = 0; i < g_nworkers; i++)
        worker_post(&g_workers[i], r, NULL);
    mg_routes_unref(g_routes);
    g_routes = r;
}

/* SHA-256 of the certificate file then the key file; false when either cannot be read (making
 * the context then says which and why). */
static bool tls_files_digest(const mg_conf_t *conf, unsigned char out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    const char *paths[] = {conf->tls_cert, conf->tls_key};
    for (size_t i = 0; ok && i < 2; i++) {
        FILE *f = fopen(paths[i], "rb");
        char buf[4096];
        size_t n;
        ok = f != NULL;
        while (ok && (n = fread(buf, 1, sizeof(buf), f)) > 0)
            ok = EVP_DigestUpdate(md, buf, n) == 1;
        ok = ok && !ferror(f);
        if (f)
            fclose(f);
        OPENSSL_cleanse(buf, sizeof(buf)); /* the key's bytes */
    }
    ok = ok && EVP_DigestFinal_ex(md, out, NULL) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

static void log_certificate(const char *what)
{
    char desc[512];
    int64_t not_after;
    bool expired = mg_srv_tls_ctx_describe(g_tls, desc, sizeof(desc), &not_after);
    atomic_store(&g_tls_not_after, not_after);
    MG_LOG(expired ? MG_LOG_WARN : MG_LOG_INFO, "main", "TLS certificate %s %s: %s%s", what,
           g_conf->tls_cert, desc, expired ? " (EXPIRED)" : "");
}

/* What a periodic reload last refused, so that the same cause is said once, not at every
 * check: the files' digest, or the error when they could not be read. */
typedef struct refusal {
    unsigned char cause[32]; /* SHA-256 */
    bool set;
} refusal_t;

static void cause_of(const void *p, size_t n, unsigned char out[32])
{
    EVP_Digest(p, n, out, NULL, EVP_sha256(), NULL);
}

/* Records |cause|; true when it differs from the last one refused. */
static bool refusal_is_new(refusal_t *r, const unsigned char cause[32])
{
    bool same = r->set && memcmp(r->cause, cause, 32) == 0;
    memcpy(r->cause, cause, 32);
    r->set = true;
    return !same;
}

/* tls.ticket_key_file again, when it changed: the keys every gateway sharing it uses. An error
 * is said once per cause (again on SIGHUP); the keys in use stay. */
static void reload_ticket_keys(bool on_signal)
{
    static refusal_t refused;
    unsigned char buf[MG_TLS_TICKET_FILE_MAX + 1], digest[32];
    char err[320];
    size_t len =
        mg_tls_tickets_read_file(g_conf->tls_ticket_key_file, buf, digest, err, sizeof(err));
    if (len == 0) {
        cause_of(err, strlen(err), digest);
        if (refusal_is_new(&refused, digest) || on_signal)
            MG_LOG(MG_LOG_ERROR, "main", "%s; the ticket keys in use stay", err);
    } else if (memcmp(digest, g_ticket_digest, sizeof(digest)) != 0 &&
               mg_tls_tickets_set(g_tickets, buf, len)) {
        memcpy(g_ticket_digest, digest, sizeof(digest));
        refused.set = false;
        MG_LOG(MG_LOG_INFO, "main", "TLS session ticket keys reloaded from %s (%zu)",
               g_conf->tls_ticket_key_file, len / MG_TLS_TICKET_KEY_LEN);
    }
    OPENSSL_cleanse(buf, sizeof(buf));
}

/* How often ticket keys rotate: keys from a file rotate when the file does (0: no timer, and
 * sessions keep OpenSSL's timeout). */
static uint32_t ticket_rotation_ms(const mg_conf_t *conf)
{
    return conf->tls_ticket_key_file ? 0 : conf->tls_ticket_key_rotation_ms;
}

/* A TLS context for the listeners, with the process's ticket keys: tickets outlive a reload.
 * NULL with |err| set when the files do not load. */
static SSL_CTX *tls_ctx_new(const mg_conf_t *conf, char *err, size_t errlen)
{
    SSL_CTX *tls = mg_srv_tls_ctx_new(conf->tls_cert, conf->tls_key, err, errlen);
    if (tls && !mg_tls_tickets_attach(g_tickets, tls, ticket_rotation_ms(conf))) {
        snprintf(err, errlen, "cannot set the TLS session ticket keys");
        SSL_CTX_free(tls);
        return NULL;
    }
    return tls;
}

/* The certificate and key files again (a renewed certificate): new connections get them,
 * open ones keep theirs. Unchanged files make no new context. A pair that does not load, or
 * files that cannot be read, are refused once per cause: the checks pass over the same pair
 * quietly until the files change, and a SIGHUP tries it again. */
static void reload_tls(bool on_signal)
{
    static refusal_t refused;
    unsigned char digest[32];
    bool read = tls_files_digest(g_conf, digest);
    if (read && memcmp(digest, g_tls_digest, sizeof(digest)) == 0) {
        MG_LOG(MG_LOG_DEBUG, "main", "TLS certificate and key unchanged");
        return;
    }
    if (read && !on_signal && refused.set && memcmp(digest, refused.cause, 32) == 0)
        return; /* said when it was refused */
    char err[512];
    SSL_CTX *tls = tls_ctx_new(g_conf, err, sizeof(err));
    if (tls == NULL) {
        if (!read) /* no digest of the files: the reason they could not be read is the cause */
            cause_of(err, strlen(err), digest);
        if (refusal_is_new(&refused, digest) || on_signal)
            MG_LOG(MG_LOG_ERROR, "main", "TLS reload refused, the previous certificate stays: %s",
                   err);
        return;
    }
    refused.set = false;
    for (unsigned i = 0; i < g_nworkers; i++)
        worker_post(&g_workers[i], NULL, tls);
    SSL_CTX_free(g_tls);
    g_tls = tls;
    /* the context read the files a second time: if they changed in between (or could not be
     * read for the digest), no digest is kept, and the next check loads them again */
    unsigned char after[32];
    if (read && tls_files_digest(g_conf, after) && memcmp(after, digest, sizeof(after)) == 0)
        memcpy(g_tls_digest, digest, sizeof(digest));
    else
        memset(g_tls_digest, 0, sizeof(g_tls_digest));
    log_certificate("reloaded from");
}

/* A certificate renewed in place (a Kubernetes Secret volume, certbot) needs no SIGHUP: the
 * files are read every tls.reload_check_ms and taken as SIGHUP takes them. */
static void on_tls_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (g_draining)
        return;
    reload_tls(false);
    if (g_conf->tls_ticket_key_file)
        reload_ticket_keys(false);
}

static void on_ticket_rotation(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    mg_tls_tickets_rotate(g_tickets);
    MG_LOG(MG_LOG_DEBUG, "main", "TLS session ticket key rotated");
}

/* A persistent timer on the main loop every |ms| (none when 0 or without TLS); NULL then. */
static struct event *main_every(uint32_t ms, event_callback_fn fn)
{
    struct event *ev = g_tls && ms > 0 ? event_new(g_main_base, -1, EV_PERSIST, fn, NULL) : NULL;
    if (ev) {
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        event_add(ev, &tv);
    }
    return ev;
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    if (g_tls)
        reload_tls(true);
    if (g_tls && g_conf->tls_ticket_key_file)
        reload_ticket_keys(true);
    mg_admin_reload_token(g_admin, g_conf->admin_token_file);
    if (g_conf->routes_path == NULL) {
        MG_LOG(MG_LOG_INFO, "main", "SIGHUP: no routing document to reload (--backend mode)");
        return;
    }
    char *errors = NULL;
    if (!mg_control_reload(g_control, g_conf->routes_path, &errors)) {
        /* a log line per problem, each with its time and level (log collectors split on
         * newlines) */
        const char *p = errors ? errors : "(no detail)";
        /* a reload waiting for its checks or DNS is not the one refused: it still takes over */
        const char *stays = mg_control_waiting(g_control)
                                ? "the reload waiting for its health checks and DNS answers "
                                  "still takes over"
                                : "the previous routes stay in force";
        do {
            const char *nl = strchr(p, '\n');
            int len = nl ? (int)(nl - p) : (int)strlen(p);
            MG_LOG(MG_LOG_ERROR, "main", "reload refused, %s: %.*s", stays, len, p);
            p = nl ? nl + 1 : NULL;
        } while (p && *p);
        free(errors);
    }
}

static void on_sigusr1(evutil_socket_t sig, short what, void *arg)
{
    if (g_log)
        mg_reqlog_reopen(g_log);
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    MG_LOG(MG_LOG_WARN, "main", "drain deadline of %u ms passed; closing what is left",
           g_conf->timeouts_ms.drain);
    for (unsigned i = 0; i < g_nworkers; i++) {
        atomic_store(&g_workers[i].stop_now, true);
        worker_post(&g_workers[i], NULL, NULL);
    }
}

static void on_sigterm(evutil_socket_t sig, short what, void *arg)
{
    if (g_draining) {
        MG_LOG(MG_LOG_WARN, "main", "second signal: stopping now");
        on_drain_deadline(-1, 0, NULL);
        return;
    }
    g_draining = true;
    MG_LOG(MG_LOG_INFO, "main", "signal %d: draining (deadline %u ms)", (int)sig,
           g_conf->timeouts_ms.drain);
    for (unsigned i = 0; i < g_nworkers; i++) {
        atomic_store(&g_workers[i].drain, true);
        worker_post(&g_workers[i], NULL, NULL);
    }
    if (g_conf->timeouts_ms.drain) {
        struct timeval tv = {g_conf->timeouts_ms.drain / 1000,
                             (g_conf->timeouts_ms.drain % 1000) * 1000};
        event_base_once(g_main_base, -1, EV_TIMEOUT, on_drain_deadline, NULL, &tv);
    }
}

static void *joiner(void *arg)
{
    for (unsigned i = 0; i < g_nworkers; i++)
        pthread_join(g_workers[i].thread, NULL);
    event_base_loopbreak(g_main_base);
    return NULL;
}

/* ---------- main ---------- */

/* What the access log could not write must be seen too, not only said in the log. */
static void access_log_metrics(void *ud, struct evbuffer *out)
{
    mg_reqlog_stats_t st;
    mg_reqlog_stats(ud, &st);
    evbuffer_add_printf(out,
                        "# HELP modelgate_access_log_dropped_total Access log lines not written: "
                        "a queue was full (the file, or the request log's spool, slower than "
                        "requests).\n"
                        "# TYPE modelgate_access_log_dropped_total counter\n"
                        "modelgate_access_log_dropped_total %" PRIu64 "\n"
                        "# HELP modelgate_access_log_lost_total Access log lines a write error "
                        "lost (disk full, I/O error).\n"
                        "# TYPE modelgate_access_log_lost_total counter\n"
                        "modelgate_access_log_lost_total %" PRIu64 "\n",
                        st.dropped, st.lost);
}

/* GET /stats/dblog on the admin listener: the database request log's counters. */
static int dblog_page(void *ud, const char *query, struct evbuffer *out, const char **ctype)
{
    mg_dblog_stats_t st;
    mg_dblog_stats(ud, &st);
    *ctype = "application/json";
    evbuffer_add_printf(out,
                        "{\"spooled\":%" PRIu64 ",\"inserted\":%" PRIu64 ",\"duplicates\":%" PRIu64
                        ",\"lost\":%" PRIu64 ",\"rejected\":%" PRIu64 ",\"spool_bytes\":%" PRIu64
                        ",\"pending_bytes\":%" PRIu64 ",\"connected\":%s}\n",
                        st.spooled, st.inserted, st.duplicates, st.lost, st.rejected,
                        st.spool_bytes, st.pending_bytes, st.connected ? "true" : "false");
    return 200;
}

/* The same counters in /metrics: what the database log could not keep must be seen. */
static void dblog_metrics(void *ud, struct evbuffer *out)
{
    mg_dblog_stats_t st;
    mg_dblog_stats(ud, &st);
    static const char *const help[][2] = {
        {"spooled", "Request records written to the spool."},
        {"inserted", "Rows inserted into MariaDB."},
        {"duplicates", "Replayed records MariaDB already had (not inserted twice)."},
        {"lost", "Records the database log could not keep (spool full or unwritable)."},
        {"rejected", "Records MariaDB refused or spool lines that were not records."},
    };
    const uint64_t v[] = {st.spooled, st.inserted, st.duplicates, st.lost, st.rejected};
    for (size_t i = 0; i < 5; i++)
        evbuffer_add_printf(out,
                            "# HELP modelgate_request_log_db_%s_total %s\n"
                            "# TYPE modelgate_request_log_db_%s_total counter\n"
                            "modelgate_request_log_db_%s_total %" PRIu64 "\n",
                            help[i][0], help[i][1], help[i][0], help[i][0], v[i]);
    evbuffer_add_printf(out,
                        "# HELP modelgate_request_log_db_spool_bytes Bytes of the spool's "
                        "segment files on disk (what spool_max_mb caps).\n"
                        "# TYPE modelgate_request_log_db_spool_bytes gauge\n"
                        "modelgate_request_log_db_spool_bytes %" PRIu64 "\n"
                        "# HELP modelgate_request_log_db_pending_bytes Spooled bytes not in "
                        "MariaDB yet.\n"
                        "# TYPE modelgate_request_log_db_pending_bytes gauge\n"
                        "modelgate_request_log_db_pending_bytes %" PRIu64 "\n"
                        "# HELP modelgate_request_log_db_connected 1 while connected to "
                        "MariaDB.\n"
                        "# TYPE modelgate_request_log_db_connected gauge\n"
                        "modelgate_request_log_db_connected %d\n",
                        st.spool_bytes, st.pending_bytes, st.connected ? 1 : 0);
}

/* The features' samples belong on /metrics too: one scrape sees everything. */
static void features_metrics(void *ud, struct evbuffer *out)
{
    const char *type;
    mg_fsource_metrics_page(ud, "", out, &type);
}

/* A file the configuration names refused, said as the configuration's own problems are: the
 * header once, then a line per problem. */
static void conf_reject(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void conf_reject(const char *fmt, ...)
{
    static bool header_said;
    if (!header_said)
        fputs("modelgate: configuration rejected:\n", stderr);
    header_said = true;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* One secret file, read as start-up reads it; says why on stderr when start-up would refuse it. */
static bool check_secret(const char *path, const char *key, mg_secret_kind_t kind, size_t max)
{
    char *secret = NULL, err[512];
    if (path == NULL)
        return true;
    if (mg_secretfile_read(path, key, kind, max, &secret, err, sizeof(err)) != MG_OK) {
        conf_reject("%s", err);
        return false;
    }
    mg_secretfile_free(secret);
    return true;
}

/* TLS files no listener uses: most likely a listener meant for TLS went under "listen" (or
 * --listen). nghttpx ignores such files in silence; both start-up and --check-config say it. */
static const char *unused_tls_files(const mg_conf_t *conf)
{
    if (conf->ntls_listen > 0 ||
        (conf->tls_cert == NULL && conf->tls_key == NULL && conf->tls_ticket_key_file == NULL))
        return NULL;
    return "a TLS certificate, key or ticket key file is set (tls.cert, tls.key, "
           "tls.ticket_key_file, --cert, --key) but no listener uses TLS (tls.listen or "
           "--tls-listen): the files are not read, and every listener is cleartext";
}

/* --check-config, once mg_conf_from_args loaded every file the configuration names (as nginx
 * -t loads certificates: the routing document, the TLS files, the secret files, the access
 * log's place) and found them good: the warnings start-up would give, and the verdict. The
 * certificate is loaded again for its expiry. */
static int check_only(const mg_conf_t *conf)
{
    bool ok = true;
    if (conf->ntls_listen) {
        char err[512];
        SSL_CTX *tls = mg_srv_tls_ctx_new(conf->tls_cert, conf->tls_key, err, sizeof(err));
        if (tls == NULL)
            conf_reject("%s", err);
        char desc[512];
        int64_t not_after;
        if (tls && mg_srv_tls_ctx_describe(tls, desc, sizeof(desc), &not_after))
            fprintf(stderr,
                    "modelgate: warning: TLS certificate %s has EXPIRED: %s (start-up "
                    "serves it and warns too)\n",
                    conf->tls_cert, desc);
        ok = tls != NULL;
        SSL_CTX_free(tls);
    }
    const char *unused = unused_tls_files(conf);
    if (unused)
        fprintf(stderr, "modelgate: warning: %s\n", unused);
    if (!ok)
        return 1;
    printf("configuration OK: %zu listener(s), %zu TLS listener(s), %u worker(s), %s\n",
           conf->nlisten, conf->ntls_listen, conf->workers,
           conf->routes_path ? conf->routes_path : "quick-start backends");
    return 0;
}

/* Creates worker |i| (event base, proxy, server, command pipe) and binds its listeners.
 * On failure says why on stderr; whatever was made is freed by free_workers(). */
static int start_worker(unsigned i, const mg_conf_t *conf, const mg_srv_conf_t *sc, SSL_CTX *tls)
{
    worker_t *w = &g_workers[i];
    w->id = i;
    /* a worker's base is used by its own thread only (commands come through a pipe), so it
     * needs no lock on every event_add. Its clock is the coarse one: the timers that need
     * milliseconds (features budgets) have a timerfd of their own (common/ptimer.h), since
     * libevent's precise timers set theirs at every loop turn. */
    struct event_config *ec = event_config_new();
    if (ec)
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    w->base = ec ? event_base_new_with_config(ec) : NULL;
    if (ec)
        event_config_free(ec);
    w->proxy = w->base ? mg_proxy_new(w->base, conf, g_log, i) : NULL;
    w->srv = w->proxy ? mg_srv_new(w->base, sc, mg_proxy_handler(), w->proxy, tls) : NULL;
    if (pipe2(w->pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        w->pipe[0] = w->pipe[1] = -1;
        fprintf(stderr, "modelgate: pipe: %s\n", strerror(errno));
        return -1;
    }
    w->cmd = w->base ? event_new(w->base, w->pipe[0], EV_READ | EV_PERSIST, on_cmd, w) : NULL;
    w->check = w->base ? event_new(w->base, -1, EV_PERSIST, on_check, w) : NULL;
    w->trim = w->base ? event_new(w->base, -1, EV_PERSIST, on_trim, w) : NULL;
    struct timeval trim_every = {TRIM_EVERY_MS / 1000, (TRIM_EVERY_MS % 1000) * 1000};
    if (w->srv == NULL || w->cmd == NULL || w->check == NULL || w->trim == NULL ||
        event_add(w->cmd, NULL) || event_add(w->trim, &trim_every)) {
        fprintf(stderr, "modelgate: out of memory starting worker %u\n", i);
        return -1;
    }
    mg_proxy_set_routes(w->proxy, g_routes);
    if (g_fsource) {
        if ((w->features = mg_features_new(g_fsource, w->base, i)) == NULL) {
            fprintf(stderr, "modelgate: out of memory starting the features of worker %u\n", i);
            return -1;
        }
        mg_proxy_set_features(w->proxy, w->features);
    }
    for (int pass = 0; pass < 2; pass++) {
        size_t n = pass ? conf->ntls_listen : conf->nlisten;
        char *const *addrs = pass ? conf->tls_listen : conf->listen;
        for (size_t k = 0; k < n; k++) {
            char err[512];
            int fd = mg_listen_bind(addrs[k], i == 0, err, sizeof(err));
            if (fd < 0) {
                fprintf(stderr, "modelgate: %s\n", err);
                return -1;
            }
            if (mg_srv_listen(w->srv, fd, pass == 1) != MG_OK) {
                fprintf(stderr, "modelgate: cannot serve on %s\n", addrs[k]);
                return -1;
            }
        }
    }
    return 0;
}

static void free_workers(void)
{
    for (unsigned i = 0; g_workers && i < g_nworkers; i++) {
        worker_t *w = &g_workers[i];
        if (w->srv)
            mg_srv_free(w->srv);
        if (w->proxy)
            mg_proxy_free(w->proxy);
        mg_features_free(w->features); /* after the proxy: no request holds a ticket now */
        if (w->next_routes)
            mg_routes_unref(w->next_routes);
        SSL_CTX_free(w->next_tls);
        if (w->cmd)
            event_free(w->cmd);
        if (w->check)
            event_free(w->check);
        if (w->trim)
            event_free(w->trim);
        if (w->pipe[0] >= 0)
            close(w->pipe[0]);
        if (w->pipe[1] >= 0)
            close(w->pipe[1]);
        if (w->base)
            event_base_free(w->base);
        pthread_mutex_destroy(&w->lock);
    }
    free(g_workers);
    g_workers = NULL;
}

/* Runs the workers until they have all left their loops (drained or stopped). */
static void serve(const mg_conf_t *conf)
{
    struct event *sigs[] = {
        evsignal_new(g_main_base, SIGTERM, on_sigterm, NULL),
        evsignal_new(g_main_base, SIGINT, on_sigterm, NULL),
        evsignal_new(g_main_base, SIGHUP, on_sighup, NULL),
        evsignal_new(g_main_base, SIGUSR1, on_sigusr1, NULL),
    };
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        event_add(sigs[i], NULL);
    struct event *tls_check = main_every(conf->tls_reload_check_ms, on_tls_check);
    struct event *tls_rotation = main_every(ticket_rotation_ms(conf), on_ticket_rotation);

    /* workers must not take the process signals: block them before creating threads */
    sigset_t all, old; /* the asynchronous ones only: a crash must still crash loudly */
    sigemptyset(&all);
    sigaddset(&all, SIGTERM);
    sigaddset(&all, SIGINT);
    sigaddset(&all, SIGHUP);
    sigaddset(&all, SIGUSR1);
    sigaddset(&all, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (unsigned i = 0; i < g_nworkers; i++)
        pthread_create(&g_workers[i].thread, NULL, worker_main, &g_workers[i]);
    pthread_t j;
    pthread_create(&j, NULL, joiner, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    MG_LOG(MG_LOG_INFO, "main", "modelgate %s: %u worker(s); cleartext %s%s; TLS %s; %s",
           MG_VERSION, g_nworkers, conf->nlisten ? conf->listen[0] : "-",
           conf->nlisten > 1 ? " (+more)" : "", conf->ntls_listen ? conf->tls_listen[0] : "-",
           conf->routes_path ? conf->routes_path : "quick-start backends");

    event_base_dispatch(g_main_base);
    pthread_join(j, NULL);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        event_free(sigs[i]);
    if (tls_check)
        event_free(tls_check);
    if (tls_rotation)
        event_free(tls_rotation);
}

/* Every client and pod connection is a descriptor, and Debian's default soft limit (1024) is
 * far below what a gateway holds: take the hard limit, as HAProxy does (nginx asks for it with
 * worker_rlimit_nofile, nghttpx with rlimit-nofile). Returns the limit now in force. */
static unsigned long long raise_open_files_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (unsigned long long)rl.rlim_cur;
}

int main(int argc, char **argv)
{
    mg_evmem_install(); /* before libevent allocates anything */
    mg_conf_t conf;
    mg_conf_action_t action;
    char *errors = NULL;
    if (mg_conf_from_args(argc, argv, &conf, &action, &errors) != MG_OK) {
        fprintf(stderr, "modelgate: configuration rejected:\n%s", errors ? errors : "");
        if (errors && errors[0] && errors[strlen(errors) - 1] != '\n')
            fputc('\n', stderr);
        fprintf(stderr, "(modelgate --help lists the flags)\n");
        free(errors);
        return 1;
    }
    switch (action) {
    case MG_CONF_HELP:
        fputs(mg_conf_usage(), stdout);
        mg_conf_clear(&conf);
        return 0;
    case MG_CONF_VERSION:
        printf("modelgate %s\n", MG_VERSION);
        mg_conf_clear(&conf);
        return 0;
    case MG_CONF_CHECK: {
        int rc = check_only(&conf);
        mg_conf_clear(&conf);
        return rc;
    }
    case MG_CONF_RUN:
        break;
    }
    g_conf = &conf;
    mg_log_level = (mg_log_level_t)conf.log_level;
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    MG_LOG(MG_LOG_INFO, "main", "open-files limit %llu", raise_open_files_limit());
    const char *unused_tls = unused_tls_files(&conf);
    if (unused_tls)
        MG_LOG(MG_LOG_WARN, "main", "%s", unused_tls);

    int rc = 1;
    /* before any snapshot: balancers and counters get one row per worker */
    mg_stats_init(conf.workers);
    mg_routes_set_workers(conf.workers);
    /* the main thread's loop: signals, and the control work (health checks, DNS) */
    g_main_base = event_base_new();
    g_control = g_main_base ? mg_control_new(g_main_base, conf.dns_nameserver,
                                             conf.timeouts_ms.reload_wait, install_routes, NULL)
                            : NULL;
    if (g_control == NULL) {
        fprintf(stderr, "modelgate: out of memory\n");
        goto out;
    }
    g_routes = conf.routes_path ? mg_control_load(g_control, conf.routes_path, &errors)
                                : mg_routes_catchall(conf.backends, conf.backend_proto, &errors);
    if (g_routes && !conf.routes_path)
        mg_control_adopt(g_control, g_routes);
    /* a refused routing document does not stop the TLS files' checks: one start says all */
    bool refused = g_routes == NULL;
    if (refused) {
        fprintf(stderr, "modelgate: routing rejected:\n%s\n", errors ? errors : "");
        free(errors);
    }
    if (conf.ntls_listen) {
        char err[512];
        /* read before the context: a file changed in between is read again at the next check */
        tls_files_digest(&conf, g_tls_digest);
        if ((g_tickets = mg_tls_tickets_new()) == NULL) {
            fprintf(stderr, "modelgate: cannot make TLS session ticket keys\n");
            goto out;
        }
        if (conf.tls_ticket_key_file) {
            unsigned char keys[MG_TLS_TICKET_FILE_MAX + 1];
            size_t len = mg_tls_tickets_read_file(conf.tls_ticket_key_file, keys, g_ticket_digest,
                                                  err, sizeof(err));
            bool ok = len > 0 && mg_tls_tickets_set(g_tickets, keys, len);
            OPENSSL_cleanse(keys, sizeof(keys));
            if (!ok)
                conf_reject("%s", err);
            refused |= !ok;
        }
        g_tls = tls_ctx_new(&conf, err, sizeof(err));
        if (g_tls == NULL)
            conf_reject("%s", err);
        refused |= g_tls == NULL;
        if (!refused)
            log_certificate("from");
    }
    if (refused)
        goto out;
    if (conf.access_log) {
        g_log = mg_reqlog_open(conf.access_log);
        if (g_log == NULL)
            goto out; /* the reason is logged */
    }
    if (conf.request_log_db.host) { /* conf checked that the access log is on */
        g_dblog = mg_dblog_open(&conf.request_log_db);
        if (g_dblog == NULL)
            goto out; /* the reason is logged */
        mg_reqlog_set_sink(g_log, mg_dblog_sink, mg_dblog_lost, g_dblog);
    }
    if (conf.admin_listen) {
        char err[512];
        if (!check_secret(conf.admin_token_file, "admin.token_file", MG_SECRET_TOKEN,
                          MG_ADMIN_TOKEN_MAX))
            goto out; /* said as --check-config says it */
        g_admin = mg_admin_new(conf.admin_listen, conf.admin_token_file, err, sizeof(err));
        if (g_admin == NULL) {
            fprintf(stderr, "modelgate: %s\n", err);
            goto out;
        }
        if (g_dblog)
            mg_admin_page(g_admin, "/stats/dblog", dblog_page, g_dblog);
    }

    if (conf.features) {
        char err[512];
        g_fsource = mg_fsource_new(conf.features, conf.workers, err, sizeof(err));
        if (g_fsource == NULL) {
            fprintf(stderr, "modelgate: %s\n", err);
            goto out;
        }
        if (g_admin) {
            g_fadmin = mg_fadmin_new(g_fsource, mg_admin_base(g_admin));
            if (g_fadmin == NULL)
                goto out;
            mg_admin_mount(g_admin, "/v1/features", mg_fadmin_handler(), g_fadmin);
            mg_admin_page(g_admin, "/metrics/features", mg_fsource_metrics_page, g_fsource);
        }
    }

    mg_srv_conf_t sc = {
        .max_concurrent_streams = conf.limits.max_concurrent_streams,
        .max_header_list_size = conf.limits.max_header_list_size,
        .max_headers = conf.limits.max_headers,
        .stream_window = conf.limits.stream_window,
        .connection_window = conf.limits.connection_window,
        .connection_buffer = conf.limits.connection_buffer,
        .client_idle_ms = conf.timeouts_ms.client_idle,
        .client_write_ms = conf.timeouts_ms.client_write,
        .proxy_protocol = conf.proxy_protocol,
        .h1_answer_half_closed = conf.answer_half_closed,
        /* each worker its share, rounded up: SO_REUSEPORT spreads connections evenly */
        .max_conns = (conf.limits.max_client_conns + conf.workers - 1) / conf.workers,
    };
    g_nworkers = conf.workers;
    g_workers = calloc(g_nworkers, sizeof(worker_t));
    if (g_workers == NULL) {
        fprintf(stderr, "modelgate: out of memory\n");
        goto out;
    }
    for (unsigned i = 0; i < g_nworkers; i++) {
        g_workers[i].pipe[0] = g_workers[i].pipe[1] = -1;
        pthread_mutex_init(&g_workers[i].lock, NULL);
    }
    for (unsigned i = 0; i < g_nworkers; i++)
        if (start_worker(i, &conf, &sc, g_tls) != 0)
            goto out;
    g_metrics_src.workers = g_nworkers;
    g_metrics_src.tls = g_tls != NULL;
    int nmore = 0;
    if (g_log) {
        g_metrics_src.more[nmore] = access_log_metrics;
        g_metrics_src.more_ud[nmore++] = g_log;
    }
    if (g_dblog) {
        g_metrics_src.more[nmore] = dblog_metrics;
        g_metrics_src.more_ud[nmore++] = g_dblog;
    }
    if (g_fsource) {
        g_metrics_src.more[nmore] = features_metrics;
        g_metrics_src.more_ud[nmore++] = g_fsource;
    }
    if (g_admin)
        mg_admin_page(g_admin, "/metrics", mg_metrics_page, &g_metrics_src);
    if (g_admin && mg_admin_start(g_admin) != MG_OK) {
        fprintf(stderr, "modelgate: cannot start the admin listener's thread\n");
        goto out;
    }

    serve(&conf);
    rc = 0;
    MG_LOG(MG_LOG_INFO, "main", "stopped");
out:
    mg_fsource_stop(g_fsource); /* no MariaDB thread posts to a worker or the admin any more */
    mg_admin_free(g_admin); /* first: its pages read the workers' counters */
    mg_control_free(g_control);
    free_workers();
    mg_fadmin_free(g_fadmin);
    mg_fsource_free(g_fsource);
    if (g_routes)
        mg_routes_unref(g_routes);
    if (g_log)
        mg_reqlog_close(g_log); /* flushes its last batch into the spool too */
    mg_dblog_close(g_dblog);
    SSL_CTX_free(g_tls); /* after the workers' servers: new connections took it from them */
    g_tls = NULL;
    mg_tls_tickets_free(g_tickets); /* after the last context */
    g_tickets = NULL;
    if (g_main_base)
        event_base_free(g_main_base);
    mg_podstate_free_all();
    mg_stats_free_all();
    mg_conf_clear(&conf);
    mg_evmem_flush(); /* the main thread's chains (threads flush theirs as they end) */
    return rc;
}
