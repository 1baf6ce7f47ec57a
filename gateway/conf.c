/*
 * gateway/conf.c - bootstrap configuration: defaults, gateway.json, command-line flags, checks.
 *
 * DESIGN: three layers are merged in order - defaults, the --config file, the flags - and the
 * result is checked as a whole (listeners, TLS files, routes vs --backend), because most
 * mistakes are only visible after the merge. Every problem becomes one line in an error list
 * and checking goes on, so one run shows everything to fix. mg_conf_load is transactional: it
 * parses into a copy and only replaces the caller's config when the whole file is valid.
 */
#include "gateway/conf.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/util.h> /* evutil_parse_sockaddr_port */
#include <openssl/crypto.h> /* OPENSSL_cleanse */
#include <openssl/ssl.h>

#include "common/h2server.h" /* mg_srv_tls_ctx_new */
#include "common/jsonerr.h"
#include "common/listen.h"
#include "common/log.h"
#include "common/secretfile.h"
#include "common/tlstickets.h"
#include "gateway/admin.h" /* MG_ADMIN_TOKEN_MAX */
#include "routing/discovery.h"
#include "routing/host.h"

#define MAX_WORKERS 1024

/* ------------------------------------------------------------------------------------------ */
/* Errors: common/jsonerr.h, with these additions                                               */

/* Like mg_jerr_f, but with an explicit source (a flag name) and no JSON path. */
static void flagf(mg_jerr_t *e, const char *flag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void flagf(mg_jerr_t *e, const char *flag, const char *fmt, ...)
{
    char msg[1024], line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(line, sizeof(line), "%s: %s", flag, msg);
    mg_jerr_text(e, line);
}

#define QUOTE_MAX 200 /* bytes of a value quoted in a message */
#define ESC(buf, s) mg_jerr_esc((buf), sizeof(buf), (s), QUOTE_MAX)

/* Hands the errors to the caller (or frees them). */
static void errors_out(mg_jerr_t *e, char **errors)
{
    if (e->nomem) {
        free(e->buf);
        e->buf = strdup("out of memory while reading the configuration");
    }
    if (errors != NULL)
        *errors = e->buf;
    else
        free(e->buf);
    e->buf = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The config struct                                                                            */

void mg_conf_defaults(mg_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    c->workers = 0;
    c->backend_proto = MG_UP_H2C;
    c->log_level = MG_LOG_INFO;
    c->generate_request_id = true;
    c->limits.max_concurrent_streams = 100;
    c->limits.max_header_list_size = 65536;
    c->limits.max_headers = 100;
    c->limits.stream_window = 1048576;
    c->limits.connection_window = 4194304;
    c->limits.connection_buffer = 4194304;
    c->limits.max_request_body = 0;
    c->tls_reload_check_ms = 60000;
    c->tls_ticket_key_rotation_ms = 3600000; /* nghttpx's hour */
    c->timeouts_ms.connect = 2000;
    c->timeouts_ms.first_byte = 30000;
    c->timeouts_ms.idle = 60000;
    c->timeouts_ms.total = 0;
    c->timeouts_ms.client_idle = 120000;
    c->timeouts_ms.client_write = 30000;
    c->timeouts_ms.drain = 10000;
    c->timeouts_ms.reload_wait = 30000;
    c->upstream.max_streams_per_conn = 100;
    c->upstream.max_idle_conns_per_pod = 64;
    /* Envoy's defaults (cluster max_connections, max_pending_requests): far above what a
     * healthy pod needs from one gateway, yet a pod that stalls can no longer take thousands
     * of sockets and file descriptors, nor queue requests without bound */
    c->upstream.max_conns_per_pod = 1024;
    c->upstream.max_pending_per_pod = 1024;
    c->upstream.stream_window = 262144;
    c->upstream.connection_window = 16777216;
    mg_dblog_conf_defaults(&c->request_log_db);
}

static void dblog_conf_clear(mg_dblog_conf_t *d)
{
    free(d->host);
    free(d->user);
    free(d->password_file);
    free(d->database);
    free(d->table);
    free(d->spool_dir);
    d->host = d->user = d->password_file = d->database = d->table = d->spool_dir = NULL;
}

void mg_conf_clear(mg_conf_t *c)
{
    for (size_t i = 0; i < c->nlisten && i < MG_CONF_MAX_LISTEN; i++)
        free(c->listen[i]);
    for (size_t i = 0; i < c->ntls_listen && i < MG_CONF_MAX_LISTEN; i++)
        free(c->tls_listen[i]);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tls_ticket_key_file);
    free(c->routes_path);
    free(c->backends);
    free(c->access_log);
    free(c->admin_listen);
    free(c->admin_token_file);
    free(c->dns_nameserver);
    dblog_conf_clear(&c->request_log_db);
    mg_fconf_free(c->features);
    memset(c, 0, sizeof(*c));
}

static bool dup_str(char **dst, const char *src)
{
    *dst = NULL;
    return src == NULL || (*dst = strdup(src)) != NULL;
}

/* Deep copy, so a file can be applied to a copy and thrown away when it has errors. */
static bool conf_dup(mg_conf_t *dst, const mg_conf_t *src)
{
    *dst = *src;
    bool ok = true;
    for (size_t i = 0; i < src->nlisten; i++)
        ok &= dup_str(&dst->listen[i], src->listen[i]);
    for (size_t i = 0; i < src->ntls_listen; i++)
        ok &= dup_str(&dst->tls_listen[i], src->tls_listen[i]);
    ok &= dup_str(&dst->tls_cert, src->tls_cert);
    ok &= dup_str(&dst->tls_key, src->tls_key);
    ok &= dup_str(&dst->tls_ticket_key_file, src->tls_ticket_key_file);
    ok &= dup_str(&dst->routes_path, src->routes_path);
    ok &= dup_str(&dst->backends, src->backends);
    ok &= dup_str(&dst->access_log, src->access_log);
    ok &= dup_str(&dst->admin_listen, src->admin_listen);
    ok &= dup_str(&dst->admin_token_file, src->admin_token_file);
    ok &= dup_str(&dst->dns_nameserver, src->dns_nameserver);
    const mg_dblog_conf_t *sd = &src->request_log_db;
    mg_dblog_conf_t *dd = &dst->request_log_db;
    ok &= dup_str(&dd->host, sd->host);
    ok &= dup_str(&dd->user, sd->user);
    ok &= dup_str(&dd->password_file, sd->password_file);
    ok &= dup_str(&dd->database, sd->database);
    ok &= dup_str(&dd->table, sd->table);
    ok &= dup_str(&dd->spool_dir, sd->spool_dir);
    dst->features = mg_fconf_dup(src->features);
    ok &= src->features == NULL || dst->features != NULL;
    if (!ok)
        mg_conf_clear(dst);
    return ok;
}

/* Replaces *slot with a copy of |s| (NULL allowed); false when out of memory. */
static bool set_str(mg_jerr_t *e, char **slot, const char *s)
{
    char *n = NULL;
    if (s != NULL && (n = strdup(s)) == NULL) {
        e->nomem = true;
        return false;
    }
    free(*slot);
    *slot = n;
    return true;
}

/* |p| relative to |dir| (NULL = as is): paths in gateway.json are relative to that file, so a
 * config directory can be moved or mounted anywhere as a unit. */
static bool set_path(mg_jerr_t *e, char **slot, const char *dir, const char *p)
{
    if (dir == NULL || p[0] == '/')
        return set_str(e, slot, p);
    size_t dl = strlen(dir), pl = strlen(p);
    char *n = malloc(dl + 1 + pl + 1);
    if (n == NULL) {
        e->nomem = true;
        return false;
    }
    memcpy(n, dir, dl);
    n[dl] = '/';
    memcpy(n + dl + 1, p, pl + 1);
    free(*slot);
    *slot = n;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* gateway.json                                                                                 */

typedef struct numkey {
    const char *key;
    uint64_t min, max;
    size_t off;       /* offsetof in mg_conf_t */
    unsigned size;    /* 4 or 8 */
    const char *hint; /* what the number means, for messages */
    uint64_t floor;   /* when set: 0 (off), or at least this (below it, work for nothing) */
    const char *off_means; /* ... and what 0 means */
} numkey_t;

#define NUM32(section, name, lo, hi, what)                                                         \
    {                                                                                              \
        .key = #name, .min = (lo), .max = (hi), .off = offsetof(mg_conf_t, section.name),          \
        .size = 4, .hint = (what)                                                                  \
    }

static const numkey_t limit_keys[] = {
    NUM32(limits, max_concurrent_streams, 1, 100000, "streams per client connection"),
    NUM32(limits, max_header_list_size, 1024, 16777216, "bytes"),
    NUM32(limits, max_headers, 1, 10000, "header fields"),
    NUM32(limits, stream_window, 65535, 2147483647, "bytes"),
    NUM32(limits, connection_window, 65535, 2147483647, "bytes"),
    NUM32(limits, connection_buffer, 65536, 2147483647, "bytes"),
    {"max_request_body", 0, (uint64_t)INT64_MAX, offsetof(mg_conf_t, limits.max_request_body), 8,
     "bytes, 0 = unlimited", 0, NULL},
    NUM32(limits, max_client_conns, 0, 100000000, "client connections, 0 = unlimited"),
    {NULL, 0, 0, 0, 0, NULL, 0, NULL},
};

static const numkey_t timeout_keys[] = {
    NUM32(timeouts_ms, connect, 0, 3600000, "ms, 0 = none"),
    NUM32(timeouts_ms, first_byte, 0, 3600000, "ms, 0 = none"),
    NUM32(timeouts_ms, idle, 0, 3600000, "ms, 0 = none"),
    NUM32(timeouts_ms, total, 0, 3600000, "ms, 0 = none"),
    NUM32(timeouts_ms, client_idle, 0, 3600000, "ms, 0 = none"),
    NUM32(timeouts_ms, client_write, 0, 3600000, "ms, 0 = none"),
    NUM32(timeouts_ms, drain, 0, 3600000, "ms, 0 = none"),
    NUM32(timeouts_ms, reload_wait, 0, 3600000, "ms, 0 = take over at once"),
    {NULL, 0, 0, 0, 0, NULL, 0, NULL},
};

static const numkey_t upstream_keys[] = {
    NUM32(upstream, max_streams_per_conn, 1, 100000, "streams per upstream connection"),
    NUM32(upstream, max_idle_conns_per_pod, 0, 10000, "connections"),
    NUM32(upstream, max_conns_per_pod, 0, 1000000, "connections, 0 = unlimited"),
    NUM32(upstream, max_pending_per_pod, 0, 1000000, "requests, 0 = unlimited"),
    NUM32(upstream, stream_window, 65535, 2147483647, "bytes"),
    NUM32(upstream, connection_window, 65535, 2147483647, "bytes"),
    {NULL, 0, 0, 0, 0, NULL, 0, NULL},
};

/* Checks |v| against |k| and stores it; errors are reported at the current path. */
static void set_number(mg_jerr_t *e, const json_t *v, const numkey_t *k, mg_conf_t *c)
{
    char exp[128];
    snprintf(exp, sizeof(exp), "integer %llu-%llu (%s)", (unsigned long long)k->min,
             (unsigned long long)k->max, k->hint);
    if (!json_is_integer(v)) {
        mg_jerr_type(e, v, exp);
        return;
    }
    json_int_t n = json_integer_value(v);
    if (n < 0 || (uint64_t)n < k->min || (uint64_t)n > k->max) {
        mg_jerr_f(e, "out of range (got %" JSON_INTEGER_FORMAT "; expected %s)", n, exp);
        return;
    }
    if (k->floor && n != 0 && (uint64_t)n < k->floor) {
        mg_jerr_f(e, "too small (got %" JSON_INTEGER_FORMAT "; expected 0 (%s) or %llu-%llu)", n,
                  k->off_means, (unsigned long long)k->floor, (unsigned long long)k->max);
        return;
    }
    if (k->size == 8)
        *(uint64_t *)((char *)c + k->off) = (uint64_t)n;
    else
        *(uint32_t *)((char *)c + k->off) = (uint32_t)n;
}

/* A section of numbers: "limits", "timeouts_ms", "upstream". */
static void parse_numbers(mg_jerr_t *e, const json_t *doc, const char *section,
                          const numkey_t *keys, mg_conf_t *c)
{
    const json_t *obj = json_object_get(doc, section);
    if (obj == NULL)
        return;
    size_t old = mg_jerr_key(e, section);
    if (!json_is_object(obj)) {
        mg_jerr_type(e, obj, "object");
    } else {
        const char *names[16];
        size_t n = 0;
        for (; keys[n].key != NULL; n++)
            names[n] = keys[n].key;
        names[n] = NULL;
        mg_jerr_keys(e, obj, names);
        for (size_t i = 0; keys[i].key != NULL; i++) {
            const json_t *v = json_object_get(obj, keys[i].key);
            if (v == NULL)
                continue;
            size_t o2 = mg_jerr_key(e, keys[i].key);
            set_number(e, v, &keys[i], c);
            mg_jerr_pop(e, o2);
        }
    }
    mg_jerr_pop(e, old);
}

/* An array of listener addresses into |out|/|n|; replaces what was there. */
static void parse_listen(mg_jerr_t *e, const json_t *obj, const char *key, char **out, size_t *n)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(e, key);
    char q[300], host[256];
    if (!json_is_array(v)) {
        mg_jerr_type(e, v, "array of \"host:port\" strings, e.g. [\"127.0.0.1:8080\"]");
    } else if (json_array_size(v) > MG_CONF_MAX_LISTEN) {
        mg_jerr_f(e, "too many addresses (got %zu; expected at most %d)", json_array_size(v),
                  MG_CONF_MAX_LISTEN);
    } else {
        for (size_t i = 0; i < *n; i++) {
            free(out[i]);
            out[i] = NULL;
        }
        *n = 0;
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *a = json_array_get(v, i);
            size_t o2 = mg_jerr_push(e, "[%zu]", i);
            unsigned port;
            const char *why;
            if (!json_is_string(a))
                mg_jerr_type(e, a, "string \"host:port\"");
            else if (mg_host_split_port(json_string_value(a), host, sizeof(host), &port, &why) !=
                     MG_OK)
                mg_jerr_f(e, "invalid address \"%s\" (%s)", ESC(q, json_string_value(a)), why);
            else if (set_str(e, &out[*n], json_string_value(a)))
                (*n)++;
            mg_jerr_pop(e, o2);
        }
    }
    mg_jerr_pop(e, old);
}

/* "trusted_proxies": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"] */
static void parse_trusted(mg_jerr_t *e, const json_t *doc, mg_conf_t *c)
{
    const json_t *v = json_object_get(doc, "trusted_proxies");
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(e, "trusted_proxies");
    char q[300];
    if (!json_is_array(v)) {
        mg_jerr_type(e, v, "array of networks, e.g. [\"10.0.0.0/8\", \"2001:db8::/32\"]");
    } else if (json_array_size(v) > MG_CONF_MAX_TRUSTED) {
        mg_jerr_f(e, "too many networks (got %zu; expected at most %d)", json_array_size(v),
                  MG_CONF_MAX_TRUSTED);
    } else {
        c->ntrusted_proxies = 0;
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *a = json_array_get(v, i);
            size_t o2 = mg_jerr_push(e, "[%zu]", i);
            const char *why;
            if (!json_is_string(a))
                mg_jerr_type(e, a, "string \"address/prefix\" or \"address\"");
            else if (mg_cidr_parse(json_string_value(a), &c->trusted_proxies[c->ntrusted_proxies],
                                   &why) != MG_OK)
                mg_jerr_f(e, "invalid network \"%s\" (%s)", ESC(q, json_string_value(a)), why);
            else
                c->ntrusted_proxies++;
            mg_jerr_pop(e, o2);
        }
    }
    mg_jerr_pop(e, old);
}

/* A file path relative to |dir|; "" and null mean off when |off_ok|, else are errors. */
static void parse_path(mg_jerr_t *e, const json_t *obj, const char *key, const char *dir,
                       bool off_ok, char **slot)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(e, key);
    if (json_is_null(v) && off_ok) {
        set_str(e, slot, NULL);
    } else if (!json_is_string(v)) {
        mg_jerr_type(e, v,
                     off_ok ? "string (a path, \"-\" for stdout, \"\" for off) or null"
                            : "string, a file path");
    } else if (json_string_value(v)[0] == '\0') {
        if (off_ok)
            set_str(e, slot, NULL);
        else
            mg_jerr_f(e, "empty (expected a file path)");
    } else if (strcmp(json_string_value(v), "-") == 0 && off_ok) {
        set_str(e, slot, "-");
    } else {
        set_path(e, slot, dir, json_string_value(v));
    }
    mg_jerr_pop(e, old);
}

static const numkey_t tls_keys[] = {
    /* below the floors, work for nothing: a file read or a key a millisecond */
    {"reload_check_ms", 0, 86400000, offsetof(mg_conf_t, tls_reload_check_ms), 4,
     "ms between file checks, 0 = only on SIGHUP", 100, "only on SIGHUP"},
    {"ticket_key_rotation_ms", 0, 604800000, offsetof(mg_conf_t, tls_ticket_key_rotation_ms), 4,
     "ms between new ticket keys, 0 = never", 1000, "never"},
    {NULL, 0, 0, 0, 0, NULL, 0, NULL},
};

static void parse_tls(mg_jerr_t *e, const json_t *doc, const char *dir, mg_conf_t *c)
{
    static const char *const keys[] = {
        "listen",          "cert", "key", "reload_check_ms", "ticket_key_rotation_ms",
        "ticket_key_file", NULL};
    const json_t *tls = json_object_get(doc, "tls");
    if (tls == NULL)
        return;
    size_t old = mg_jerr_key(e, "tls");
    if (!json_is_object(tls)) {
        mg_jerr_type(e, tls,
                     "object with keys listen, cert, key, reload_check_ms, ticket_key_rotation_ms, "
                     "ticket_key_file");
    } else {
        mg_jerr_keys(e, tls, keys);
        parse_listen(e, tls, "listen", c->tls_listen, &c->ntls_listen);
        parse_path(e, tls, "cert", dir, false, &c->tls_cert);
        parse_path(e, tls, "key", dir, false, &c->tls_key);
        parse_path(e, tls, "ticket_key_file", dir, false, &c->tls_ticket_key_file);
        for (const numkey_t *k = tls_keys; k->key != NULL; k++) {
            const json_t *v = json_object_get(tls, k->key);
            if (v == NULL)
                continue;
            size_t o2 = mg_jerr_key(e, k->key);
            set_number(e, v, k, c);
            mg_jerr_pop(e, o2);
        }
    }
    mg_jerr_pop(e, old);
}

/* "admin": {"listen": "127.0.0.1:9901", "token_file": "admin.token"} */
/* Without a token the admin listener must be a loopback one. An IP literal is judged here, so
 * --check-config refuses what start-up would; a name is judged once bound (gateway/admin.c). */
static void admin_needs_loopback(mg_jerr_t *e, const char *listen)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof(ss);
    if (evutil_parse_sockaddr_port(listen, (struct sockaddr *)&ss, &len) == 0 &&
        !mg_sockaddr_is_loopback((struct sockaddr *)&ss)) {
        size_t o = mg_jerr_key(e, "listen");
        mg_jerr_f(e,
                  "%s is not a loopback address and admin.token_file is not set (set a token "
                  "file, or listen on 127.0.0.1)",
                  listen);
        mg_jerr_pop(e, o);
    }
}

static void parse_admin(mg_jerr_t *e, const json_t *doc, const char *dir, mg_conf_t *c)
{
    static const char *const keys[] = {"listen", "token_file", NULL};
    const json_t *admin = json_object_get(doc, "admin");
    if (admin == NULL || json_is_null(admin))
        return;
    size_t old = mg_jerr_key(e, "admin");
    if (!json_is_object(admin)) {
        mg_jerr_type(e, admin, "object with keys listen, token_file");
    } else {
        mg_jerr_keys(e, admin, keys);
        const json_t *v = json_object_get(admin, "listen");
        if (v != NULL) {
            size_t o2 = mg_jerr_key(e, "listen");
            char host[256], q[300];
            unsigned port;
            const char *why;
            if (!json_is_string(v))
                mg_jerr_type(e, v, "string \"host:port\"");
            else if (mg_host_split_port(json_string_value(v), host, sizeof(host), &port, &why) !=
                     MG_OK)
                mg_jerr_f(e, "invalid address \"%s\" (%s)", ESC(q, json_string_value(v)), why);
            else
                set_str(e, &c->admin_listen, json_string_value(v));
            mg_jerr_pop(e, o2);
        }
        parse_path(e, admin, "token_file", dir, false, &c->admin_token_file);
        if (c->admin_listen && c->admin_token_file == NULL && !json_object_get(admin, "token_file"))
            admin_needs_loopback(e, c->admin_listen);
    }
    mg_jerr_pop(e, old);
}

static const numkey_t dblog_keys[] = {
    NUM32(request_log_db, port, 1, 65535, "TCP port of the MariaDB server"),
    NUM32(request_log_db, spool_max_mb, 1, 1048576, "MiB of disk for records waiting for MariaDB"),
    NUM32(request_log_db, batch_rows, 1, 10000, "rows per INSERT"),
    NUM32(request_log_db, flush_ms, 1, 60000, "ms before a partial batch is inserted"),
    NUM32(request_log_db, retention_days, 0, 36500, "days of partitions kept, 0 = all"),
    {NULL, 0, 0, 0, 0, NULL, 0, NULL},
};

/* A MariaDB identifier we splice into SQL: letters, digits, '_' and '$', 1-64 bytes. */
static void parse_ident(mg_jerr_t *e, const json_t *obj, const char *key, char **slot)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(e, key);
    char q[300];
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (s == NULL)
        mg_jerr_type(e, v, "string, a MariaDB name (letters, digits, _ and $, 1-64 bytes)");
    else if (*s == '\0' || strlen(s) > 64 ||
             strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$") !=
                 strlen(s))
        mg_jerr_f(e, "invalid name \"%s\" (expected letters, digits, _ and $, 1-64 bytes)",
                  ESC(q, s));
    else
        set_str(e, slot, s);
    mg_jerr_pop(e, old);
}

/* "request_log_db": {...} (see conf.h); null = off. */
static void parse_request_log_db(mg_jerr_t *e, const json_t *doc, const char *dir, mg_conf_t *c)
{
    static const char *const keys[] = {"host",       "port",         "user",       "password_file",
                                       "database",   "table",        "spool_dir",  "spool_max_mb",
                                       "batch_rows", "flush_ms",     "retention_days", NULL};
    const json_t *obj = json_object_get(doc, "request_log_db");
    mg_dblog_conf_t *d = &c->request_log_db;
    if (obj == NULL)
        return;
    if (json_is_null(obj)) {
        dblog_conf_clear(d);
        mg_dblog_conf_defaults(d);
        return;
    }
    size_t old = mg_jerr_key(e, "request_log_db");
    if (!json_is_object(obj)) {
        mg_jerr_type(e, obj,
                     "object with keys host, port, user, password_file, database, table, "
                     "spool_dir, ... (conf/README.md), or null");
        mg_jerr_pop(e, old);
        return;
    }
    mg_jerr_keys(e, obj, keys);
    const struct {
        const char *key;
        char **slot;
        size_t max;
    } strs[] = {{"host", &d->host, 255}, {"user", &d->user, 80}};
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(obj, strs[i].key);
        if (v == NULL)
            continue;
        size_t o2 = mg_jerr_key(e, strs[i].key);
        const char *s = json_is_string(v) ? json_string_value(v) : NULL;
        if (s == NULL)
            mg_jerr_type(e, v, "string");
        else if (*s == '\0' || strlen(s) > strs[i].max)
            mg_jerr_f(e, "expected 1-%zu bytes (got %zu)", strs[i].max, strlen(s));
        else
            set_str(e, strs[i].slot, s);
        mg_jerr_pop(e, o2);
    }
    parse_ident(e, obj, "database", &d->database);
    parse_ident(e, obj, "table", &d->table);
    parse_path(e, obj, "password_file", dir, false, &d->password_file);
    if (json_object_get(obj, "password_file") != NULL && d->password_file != NULL &&
        access(d->password_file, R_OK) != 0) {
        char q[300];
        size_t o2 = mg_jerr_key(e, "password_file");
        mg_jerr_f(e, "cannot read \"%s\" (%s)", ESC(q, d->password_file), strerror(errno));
        mg_jerr_pop(e, o2);
    }
    parse_path(e, obj, "spool_dir", dir, false, &d->spool_dir);
    for (size_t i = 0; dblog_keys[i].key != NULL; i++) {
        const json_t *v = json_object_get(obj, dblog_keys[i].key);
        if (v == NULL)
            continue;
        size_t o2 = mg_jerr_key(e, dblog_keys[i].key);
        set_number(e, v, &dblog_keys[i], c);
        mg_jerr_pop(e, o2);
    }
    if (json_object_get(obj, "host") == NULL)
        mg_jerr_f(e, "host: missing (expected the MariaDB server, e.g. \"127.0.0.1\"; or set "
                     "request_log_db to null for no database log)");
    if (json_object_get(obj, "spool_dir") == NULL)
        mg_jerr_f(e, "spool_dir: missing (expected a directory where records wait while MariaDB is "
                     "away, e.g. \"spool\"; each gateway needs its own)");
    mg_jerr_pop(e, old);
}

/* "features": parsed by the features module (the rules live next to their use) */
static void parse_features(mg_jerr_t *e, const json_t *doc, const char *dir, mg_conf_t *c)
{
    const json_t *v = json_object_get(doc, "features");
    if (v == NULL || json_is_null(v))
        return;
    size_t old = mg_jerr_key(e, "features");
    mg_fconf_t *f = mg_fconf_parse(v, dir, e);
    if (f != NULL) {
        mg_fconf_free(c->features);
        c->features = f;
    }
    mg_jerr_pop(e, old);
}

static void apply_doc(mg_jerr_t *e, const json_t *doc, const char *dir, mg_conf_t *c)
{
    static const char *const keys[] = {"listen",
                                       "tls",
                                       "workers",
                                       "routes",
                                       "access_log",
                                       "log_level",
                                       "limits",
                                       "timeouts_ms",
                                       "upstream",
                                       "admin",
                                       "dns_nameserver",
                                       "request_log_db",
                                       "features",
                                       "generate_request_id",
                                       "request_id_in_response",
                                       "proxy_protocol",
                                       "answer_half_closed",
                                       "trusted_proxies",
                                       NULL};
    char q[300];
    if (!json_is_object(doc)) {
        mg_jerr_type(e, doc, "object");
        return;
    }
    if (json_object_get(doc, "services") || json_is_array(json_object_get(doc, "routes"))) {
        /* one line that says what to do, not a line per routing key */
        mg_jerr_f(e, "this is a routing document, not the gateway's config: name it in "
                     "gateway.json's \"routes\" or pass it with --routes FILE");
        return;
    }
    mg_jerr_keys(e, doc, keys);
    parse_listen(e, doc, "listen", c->listen, &c->nlisten);
    parse_tls(e, doc, dir, c);
    parse_admin(e, doc, dir, c);
    const json_t *ns = json_object_get(doc, "dns_nameserver");
    if (ns != NULL) {
        size_t old = mg_jerr_key(e, "dns_nameserver");
        struct sockaddr_storage ss;
        if (!json_is_string(ns) || json_string_value(ns)[0] == '\0')
            mg_jerr_type(e, ns, "string \"ip\", \"ip:port\" or \"[v6]:port\"");
        else if (!mg_disc_parse_nameserver(json_string_value(ns), &ss))
            mg_jerr_f(e,
                      "\"%.100s\" is not an IP address with an optional port (1-65535); "
                      "expected e.g. \"127.0.0.1:5353\", \"10.96.0.10\" or \"[::1]:53\"",
                      json_string_value(ns));
        else
            set_str(e, &c->dns_nameserver, json_string_value(ns));
        mg_jerr_pop(e, old);
    }
    parse_features(e, doc, dir, c);

    const json_t *v = json_object_get(doc, "workers");
    if (v != NULL) {
        size_t old = mg_jerr_key(e, "workers");
        if (!json_is_integer(v))
            mg_jerr_type(e, v, "integer 0-1024 (0 = one per core)");
        else if (json_integer_value(v) < 0 || json_integer_value(v) > MAX_WORKERS)
            mg_jerr_f(
                e, "out of range (got %" JSON_INTEGER_FORMAT "; expected 0-%d, 0 = one per core)",
                json_integer_value(v), MAX_WORKERS);
        else
            c->workers = (unsigned)json_integer_value(v);
        mg_jerr_pop(e, old);
    }

    parse_path(e, doc, "routes", dir, false, &c->routes_path);
    parse_path(e, doc, "access_log", dir, true, &c->access_log);

    mg_jerr_bool(e, doc, "generate_request_id", &c->generate_request_id);
    mg_jerr_bool(e, doc, "request_id_in_response", &c->request_id_in_response);
    mg_jerr_bool(e, doc, "proxy_protocol", &c->proxy_protocol);
    mg_jerr_bool(e, doc, "answer_half_closed", &c->answer_half_closed);
    parse_trusted(e, doc, c);

    if ((v = json_object_get(doc, "log_level")) != NULL) {
        size_t old = mg_jerr_key(e, "log_level");
        int lvl;
        if (!json_is_string(v))
            mg_jerr_type(e, v, "string: debug, info, warn or error");
        else if ((lvl = mg_log_level_parse(json_string_value(v))) < 0)
            mg_jerr_f(e, "unknown level \"%s\" (expected debug, info, warn or error)",
                      ESC(q, json_string_value(v)));
        else
            c->log_level = lvl;
        mg_jerr_pop(e, old);
    }

    parse_numbers(e, doc, "limits", limit_keys, c);
    parse_numbers(e, doc, "timeouts_ms", timeout_keys, c);
    parse_numbers(e, doc, "upstream", upstream_keys, c);
    parse_request_log_db(e, doc, dir, c);
}

/* Reports a JSON load failure as "PATH:LINE:COL: text" (or "PATH: text" without a position). */
static void syntax_error(mg_jerr_t *e, const char *path, const json_error_t *jerr)
{
    char line[2048];
    if (jerr->line > 0)
        snprintf(line, sizeof(line), "%s:%d:%d: %s", path, jerr->line, jerr->column, jerr->text);
    else
        snprintf(line, sizeof(line), "%s: %s", path, jerr->text);
    mg_jerr_text(e, line);
}

/* mg_conf_load; with |keep_partial|, a file with errors still leaves in |c| every setting it
 * gave without one, so that the files it names can be checked in the same run. */
static mg_err_t load_file(const char *path, mg_conf_t *c, char **errors, bool keep_partial)
{
    mg_jerr_t e = {.source = path, .quote_max = QUOTE_MAX};
    json_error_t jerr;
    mg_conf_t tmp;
    char *dir = NULL;
    if (errors != NULL)
        *errors = NULL;
    json_t *doc = mg_json_load_file(path, &jerr);
    if (doc == NULL) {
        syntax_error(&e, path, &jerr);
        errors_out(&e, errors);
        return MG_E_CONFIG;
    }
    const char *slash = strrchr(path, '/');
    if (slash != NULL && (dir = strndup(path, slash == path ? 1 : (size_t)(slash - path))) == NULL)
        e.nomem = true;
    if (dir != NULL && strcmp(dir, "/") == 0)
        dir[0] = '\0'; /* "/gateway.json": join as "" + "/" + p */
    if (!e.nomem && !conf_dup(&tmp, c))
        e.nomem = true;
    if (!e.nomem) {
        apply_doc(&e, doc, dir, &tmp);
        if ((e.count == 0 || keep_partial) && !e.nomem) {
            mg_conf_clear(c);
            *c = tmp;
        } else {
            mg_conf_clear(&tmp);
        }
    }
    json_decref(doc);
    free(dir);
    if (e.count == 0 && !e.nomem) {
        free(e.buf);
        return MG_OK;
    }
    errors_out(&e, errors);
    return e.count > 0 ? MG_E_CONFIG : MG_E_NOMEM;
}

mg_err_t mg_conf_load(const char *path, mg_conf_t *c, char **errors)
{
    return load_file(path, c, errors, false);
}

/* ------------------------------------------------------------------------------------------ */
/* Command line                                                                                 */

enum {
    OPT_CHECK = 256,
    OPT_LISTEN,
    OPT_TLS_LISTEN,
    OPT_CERT,
    OPT_KEY,
    OPT_ROUTES,
    OPT_BACKEND,
    OPT_BACKEND_PROTO,
    OPT_WORKERS,
    OPT_ACCESS_LOG,
    OPT_LOG_LEVEL,
};

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"check-config", required_argument, NULL, OPT_CHECK},
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"tls-listen", required_argument, NULL, OPT_TLS_LISTEN},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"routes", required_argument, NULL, OPT_ROUTES},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"backend-proto", required_argument, NULL, OPT_BACKEND_PROTO},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"access-log", required_argument, NULL, OPT_ACCESS_LOG},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

const char *mg_conf_usage(void)
{
    return "usage: modelgate [--config FILE | --check-config FILE] [options]\n"
           "\n"
           "Flags override the same settings of the config file (conf/README.md lists them).\n"
           "  -c, --config FILE        read gateway.json FILE (paths in it are relative to it)\n"
           "      --check-config FILE  validate FILE and its routing document, then exit\n"
           "      --listen ADDR        cleartext listener host:port or [v6]:port (repeatable)\n"
           "      --tls-listen ADDR    TLS listener host:port or [v6]:port (repeatable)\n"
           "      --cert FILE          TLS certificate chain (PEM)\n"
           "      --key FILE           TLS private key (PEM)\n"
           "      --routes FILE        routing document (JSON)\n"
           "      --backend H:P[,H:P]  quick start: every host to these pods (no routes; "
           "repeatable)\n"
           "      --backend-proto P    protocol to the --backend pods: h2c (default) or http1\n"
           "      --workers N          worker threads, 0-1024 (0 = one per core, the default)\n"
           "      --access-log PATH    access log file, \"-\" for stdout, \"\" for off\n"
           "      --log-level LEVEL    debug, info (default), warn or error\n"
           "  -h, --help               print this help and exit\n"
           "  -V, --version            print the version and exit\n";
}

/* The flags as given, before they are applied over the file. Strings point into argv. */
typedef struct flags {
    const char *config;
    bool check;
    const char *listen[MG_CONF_MAX_LISTEN];
    size_t nlisten;
    bool listen_set;
    const char *tls_listen[MG_CONF_MAX_LISTEN];
    size_t ntls_listen;
    bool tls_listen_set;
    const char *cert, *key, *routes, *backend, *backend_proto, *workers, *access_log, *log_level;
    bool help, version;
    char backends[8192]; /* every --backend, joined with commas (nghttpx's -b adds, too) */
} flags_t;

static void scan_args(mg_jerr_t *e, int argc, char **argv, flags_t *f)
{
    char q[300];
    optind = 0; /* glibc: 0 re-initialises getopt completely, so this can run more than once */
    opterr = 0; /* we report problems ourselves, all of them, in our format */
    int opt;
    unsigned nconfig = 0, ncheck = 0;
    while ((opt = getopt_long(argc, argv, "+:c:hV", long_opts, NULL)) != -1) {
        const char *a = optarg;
        switch (opt) {
        case 'c':
        case OPT_CHECK:
            (*(opt == 'c' ? &nconfig : &ncheck))++;
            f->config = a;
            f->check |= opt == OPT_CHECK;
            break;
        case OPT_LISTEN:
        case OPT_TLS_LISTEN: {
            const char **list = opt == OPT_LISTEN ? f->listen : f->tls_listen;
            size_t *n = opt == OPT_LISTEN ? &f->nlisten : &f->ntls_listen;
            *(opt == OPT_LISTEN ? &f->listen_set : &f->tls_listen_set) = true;
            if (*n == MG_CONF_MAX_LISTEN)
                flagf(e, opt == OPT_LISTEN ? "--listen" : "--tls-listen",
                      "given too often (expected at most %d)", MG_CONF_MAX_LISTEN);
            else
                list[(*n)++] = a;
            break;
        }
        case OPT_CERT:
            f->cert = a;
            break;
        case OPT_KEY:
            f->key = a;
            break;
        case OPT_ROUTES:
            f->routes = a;
            break;
        case OPT_BACKEND: {
            size_t used = strlen(f->backends);
            int n = snprintf(f->backends + used, sizeof(f->backends) - used, "%s%s",
                             used ? "," : "", a);
            if (n < 0 || (size_t)n >= sizeof(f->backends) - used)
                flagf(e, "--backend", "given too often (more than %zu bytes in all)",
                      sizeof(f->backends) - 1);
            f->backend = f->backends;
            break;
        }
        case OPT_BACKEND_PROTO:
            f->backend_proto = a;
            break;
        case OPT_WORKERS:
            f->workers = a;
            break;
        case OPT_ACCESS_LOG:
            f->access_log = a;
            break;
        case OPT_LOG_LEVEL:
            f->log_level = a;
            break;
        case 'h':
            f->help = true;
            break;
        case 'V':
            f->version = true;
            break;
        case ':': {
            const char *name = argv[optind - 1];
            flagf(e, ESC(q, name), "missing value (see --help)");
            break;
        }
        default: /* '?': unknown or ambiguous */
            if (optopt != 0 && optopt < 256) {
                char s[3] = {'-', (char)optopt, '\0'};
                flagf(e, s, "unknown option (see --help)");
            } else {
                flagf(e, ESC(q, argv[optind - 1]), "unknown option (see --help)");
            }
            break;
        }
    }
    for (int i = optind; i < argc; i++)
        flagf(e, ESC(q, argv[i]), "unexpected argument (flags take their value as --flag VALUE)");
    /* said after the scan, so that each line names the flag that was repeated */
    const char *once = "(expected one of --config or --check-config, once)";
    if (nconfig > 1)
        flagf(e, "--config", "given more than once %s", once);
    if (ncheck > 1)
        flagf(e, "--check-config", "given more than once %s", once);
    if (nconfig > 0 && ncheck > 0)
        flagf(e, "--check-config", "given with --config %s", once);
}

static void check_addr(mg_jerr_t *e, const char *flag, const char *addr)
{
    char host[256], q[300];
    unsigned port;
    const char *why;
    if (mg_host_split_port(addr, host, sizeof(host), &port, &why) != MG_OK)
        flagf(e, flag, "invalid address \"%s\" (%s)", ESC(q, addr), why);
}

/* Applies the flags over |c|: each flag replaces the setting of the file. Returns false when
 * --backend was given with errors (said here: the pods are not resolved then, which would say
 * them again). */
static bool apply_flags(mg_jerr_t *e, const flags_t *f, mg_conf_t *c)
{
    char q[300];
    size_t before = e->count;
    bool backends_ok = true;
    if (f->listen_set) {
        for (size_t i = 0; i < c->nlisten; i++) {
            free(c->listen[i]);
            c->listen[i] = NULL;
        }
        c->nlisten = 0;
        for (size_t i = 0; i < f->nlisten; i++) {
            check_addr(e, "--listen", f->listen[i]);
            if (set_str(e, &c->listen[c->nlisten], f->listen[i]))
                c->nlisten++;
        }
    }
    if (f->tls_listen_set) {
        for (size_t i = 0; i < c->ntls_listen; i++) {
            free(c->tls_listen[i]);
            c->tls_listen[i] = NULL;
        }
        c->ntls_listen = 0;
        for (size_t i = 0; i < f->ntls_listen; i++) {
            check_addr(e, "--tls-listen", f->tls_listen[i]);
            if (set_str(e, &c->tls_listen[c->ntls_listen], f->tls_listen[i]))
                c->ntls_listen++;
        }
    }
    if (f->cert != NULL)
        set_str(e, &c->tls_cert, f->cert);
    if (f->key != NULL)
        set_str(e, &c->tls_key, f->key);
    if (f->routes != NULL) {
        if (*f->routes == '\0')
            flagf(e, "--routes", "empty (expected a file path)");
        else
            set_str(e, &c->routes_path, f->routes);
    }
    if (f->backend != NULL) {
        /* Syntax only here; pods are resolved when the snapshot is built (mg_routes_catchall). */
        char item[300];
        const char *p = f->backend;
        size_t n = 0;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
            while (len > 0 && (*p == ' ' || *p == '\t')) {
                p++;
                len--;
            }
            while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
                len--;
            if (len == 0 || len >= sizeof(item)) {
                flagf(e, "--backend", "%s pod in \"%s\" (expected H:P[,H:P...])",
                      len ? "too long a" : "empty", ESC(q, f->backend));
            } else {
                memcpy(item, p, len);
                item[len] = '\0';
                check_addr(e, "--backend", item);
            }
            n++;
            if (comma == NULL)
                break;
            p = comma + 1;
        }
        if (n > 64)
            flagf(e, "--backend", "too many pods (got %zu; expected at most 64)", n);
        set_str(e, &c->backends, f->backend);
        backends_ok = e->count == before;
    }
    if (f->backend_proto != NULL) {
        if (strcmp(f->backend_proto, "h2c") == 0)
            c->backend_proto = MG_UP_H2C;
        else if (strcmp(f->backend_proto, "http1") == 0)
            c->backend_proto = MG_UP_H1;
        else
            flagf(e, "--backend-proto", "unknown protocol \"%s\" (expected h2c or http1)",
                  ESC(q, f->backend_proto));
    }
    if (f->workers != NULL) {
        char *end;
        errno = 0;
        unsigned long w = strtoul(f->workers, &end, 10);
        if (f->workers[0] < '0' || f->workers[0] > '9' || *end != '\0' || errno != 0 ||
            w > MAX_WORKERS)
            flagf(e, "--workers",
                  "invalid value \"%s\" (expected an integer 0-%d, 0 = one per core)",
                  ESC(q, f->workers), MAX_WORKERS);
        else
            c->workers = (unsigned)w;
    }
    if (f->access_log != NULL)
        set_str(e, &c->access_log, *f->access_log ? f->access_log : NULL);
    if (f->log_level != NULL) {
        int lvl = mg_log_level_parse(f->log_level);
        if (lvl < 0)
            flagf(e, "--log-level", "unknown level \"%s\" (expected debug, info, warn or error)",
                  ESC(q, f->log_level));
        else
            c->log_level = lvl;
    }
    return backends_ok;
}

/* Two listeners on one address: the second bind would fail at start with "Address already in
 * use", which reads as another process's fault. Said by --check-config too. Each is named as
 * the user wrote it: a key of |f|'s config file, or the flag that replaced the file's list. */
static void check_listeners_distinct(mg_jerr_t *e, const flags_t *f, const mg_conf_t *c)
{
    struct {
        const char *addr;
        const char *flag; /* "--listen", "--tls-listen"; NULL: from the file */
        char key[48];     /* "listen[1]", "admin.listen"; the flag when from one */
    } all[2 * MG_CONF_MAX_LISTEN + 1];
    size_t n = 0;
    for (size_t i = 0; i < c->nlisten; i++, n++) {
        all[n].addr = c->listen[i];
        all[n].flag = f->listen_set ? "--listen" : NULL;
        snprintf(all[n].key, sizeof(all[n].key), "%s[%zu]", "listen", i);
    }
    for (size_t i = 0; i < c->ntls_listen; i++, n++) {
        all[n].addr = c->tls_listen[i];
        all[n].flag = f->tls_listen_set ? "--tls-listen" : NULL;
        snprintf(all[n].key, sizeof(all[n].key), "%s[%zu]", "tls.listen", i);
    }
    if (c->admin_listen) {
        all[n].addr = c->admin_listen;
        all[n].flag = NULL;
        snprintf(all[n++].key, sizeof(all[0].key), "admin.listen");
    }
    for (size_t i = 0; i < n; i++)
        if (all[i].flag != NULL)
            snprintf(all[i].key, sizeof(all[i].key), "%s", all[i].flag);
    for (size_t i = 0; i < n; i++) {
        char hi[256], hj[256], q[300], src[1200];
        unsigned pi, pj;
        const char *why;
        if (mg_host_split_port(all[i].addr, hi, sizeof(hi), &pi, &why) != MG_OK)
            continue; /* said where it was parsed */
        /* "FILE: listen[1]" or "--listen" */
        if (all[i].flag != NULL || f->config == NULL)
            snprintf(src, sizeof(src), "%s", all[i].key);
        else
            snprintf(src, sizeof(src), "%s: %s", f->config, all[i].key);
        for (size_t j = 0; j < i; j++) {
            if (mg_host_split_port(all[j].addr, hj, sizeof(hj), &pj, &why) != MG_OK || pi != pj)
                continue;
            bool same_flag = all[i].flag != NULL && all[i].flag == all[j].flag;
            if (strcasecmp(hi, hj) == 0) {
                if (same_flag)
                    flagf(e, src, "\"%s\" given twice (expected each address once)",
                          ESC(q, all[i].addr));
                else
                    flagf(e, src, "\"%s\" is %s too (expected each address once)",
                          ESC(q, all[i].addr), all[j].key);
                break;
            }
            if (mg_listen_overlap(all[i].addr, all[j].addr)) { /* bind would say in use */
                char qj[300];
                flagf(e, src,
                      "\"%s\" takes the address of %s%s (\"%s\") too: a name that resolves "
                      "to it, or a wildcard on its port (expected each address once)",
                      ESC(q, all[i].addr), same_flag ? "another " : "", all[j].key,
                      ESC(qj, all[j].addr));
                break;
            }
        }
    }
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The files the gateway writes must not be ones it reads: an access log named like the
 * routing document appends a JSON line to it per request, and the next reload is refused. */
static void check_log_paths(mg_jerr_t *e, const flags_t *f, const mg_conf_t *c)
{
    char q[300], src[1200];
    const char *file = f->config;
    struct stat log;
    if (f->access_log != NULL || file == NULL)
        snprintf(src, sizeof(src), "--access-log");
    else
        snprintf(src, sizeof(src), "%s: access_log", file);
    if (c->access_log != NULL && strcmp(c->access_log, "-") != 0 &&
        stat(c->access_log, &log) == 0) {
        const struct {
            const char *path, *what;
        } read[] = {{file, "the config file"},
                    {c->routes_path, "the routing document"},
                    {c->tls_cert, "the TLS certificate"},
                    {c->tls_key, "the TLS key"},
                    {c->tls_ticket_key_file, "tls.ticket_key_file"},
                    {c->admin_token_file, "admin.token_file"},
                    {c->request_log_db.password_file, "request_log_db.password_file"}};
        struct stat st;
        if (S_ISDIR(log.st_mode))
            flagf(e, src, "\"%s\" is a directory (expected a file path)", ESC(q, c->access_log));
        for (size_t i = 0; i < sizeof(read) / sizeof(read[0]); i++)
            if (read[i].path != NULL && stat(read[i].path, &st) == 0 && st.st_dev == log.st_dev &&
                st.st_ino == log.st_ino)
                flagf(e, src, "\"%s\" is %s (the gateway would write a line into it per request)",
                      ESC(q, c->access_log), read[i].what);
    }
    const char *spool = c->request_log_db.host ? c->request_log_db.spool_dir : NULL;
    struct stat st;
    if (spool != NULL && stat(spool, &st) == 0 && !S_ISDIR(st.st_mode))
        flagf(e, file != NULL ? file : "request_log_db",
              "request_log_db.spool_dir: \"%s\" is not a directory", ESC(q, spool));
}

/*
 * The TLS certificate and key a TLS listener needs: set, readable, files. With |file_ok| false
 * (the config file had errors, so a value it should have given may be missing for that reason)
 * only the paths that are known are checked. Returns true when both can be read.
 */
static bool check_tls_paths(mg_jerr_t *e, const flags_t *f, const mg_conf_t *c, bool file_ok)
{
    const char *file = f->config;
    char q[300];
    bool readable = true;
    const struct {
        const char *val, *flag, *key;
    } files[] = {{c->tls_cert, "--cert", "cert"}, {c->tls_key, "--key", "key"}};
    /* --tls-listen over a file without the pair: the flag asked for it, not the file */
    bool by_flag = f->tls_listen_set && file != NULL && file_ok;
    if (by_flag && (c->tls_cert == NULL || c->tls_key == NULL)) {
        bool both = c->tls_cert == NULL && c->tls_key == NULL;
        flagf(e, "--tls-listen", "needs %s (or %s in %s)",
              both                  ? "--cert and --key"
              : c->tls_cert == NULL ? "--cert"
                                    : "--key",
              both                  ? "tls.cert/tls.key"
              : c->tls_cert == NULL ? "tls.cert"
                                    : "tls.key",
              file);
    }
    for (size_t i = 0; i < 2; i++) {
        bool from_flag = i == 0 ? f->cert != NULL : f->key != NULL;
        char src[1200];
        if (from_flag || file == NULL)
            snprintf(src, sizeof(src), "%s", files[i].flag);
        else
            snprintf(src, sizeof(src), "%s: tls.%s", file, files[i].key);
        readable &= files[i].val != NULL;
        if (files[i].val == NULL) {
            if (file_ok && !by_flag)
                flagf(e, src,
                      "missing (a TLS listener needs a %s; expected tls.%s in the config "
                      "file or %s FILE)",
                      i == 0 ? "certificate" : "private key", files[i].key, files[i].flag);
        } else if (access(files[i].val, R_OK) != 0) {
            flagf(e, src, "cannot read \"%s\" (%s)", ESC(q, files[i].val), strerror(errno));
            readable = false;
        } else if (is_dir(files[i].val)) {
            flagf(e, src, "\"%s\" is a directory (expected a PEM file)", ESC(q, files[i].val));
            readable = false;
        }
    }
    return readable;
}

/*
 * Checks that need the merged result. |f| tells where a value came from, so the message points
 * at the flag or at the key of the file that set it.
 */
static void check_merged(mg_jerr_t *e, const flags_t *f, mg_conf_t *c)
{
    const char *file = f->config;
    char q[300];
    check_listeners_distinct(e, f, c);
    if (c->nlisten + c->ntls_listen == 0) {
        if (file != NULL)
            flagf(e, file,
                  "listen: no listener configured (expected at least one address in "
                  "listen or tls.listen, or --listen / --tls-listen)");
        else
            flagf(e, "--listen",
                  "no listener configured (expected --listen ADDR or "
                  "--tls-listen ADDR)");
    }
    check_log_paths(e, f, c);
    if (c->routes_path != NULL && c->backends != NULL) {
        flagf(e, "--backend",
              "cannot be combined with a routing document (routes \"%s\"; "
              "expected either a routing document or --backend)",
              ESC(q, c->routes_path));
    } else if (c->routes_path != NULL && f->backend_proto != NULL) {
        /* the routing document says each service's protocol: the flag would do nothing */
        flagf(e, "--backend-proto",
              "applies to --backend pods only (the routing document \"%s\" gives each "
              "service's \"protocol\")",
              ESC(q, c->routes_path));
    } else if (c->routes_path == NULL && c->backends == NULL) {
        flagf(e, file != NULL ? file : "--routes",
              "%sno routing document and no --backend (expected \"routes\" in the config file, "
              "--routes FILE, or --backend H:P[,H:P...])",
              file != NULL ? "routes: " : "");
    }
    if (c->request_log_db.host != NULL && c->access_log == NULL)
        flagf(e, f->access_log != NULL ? "--access-log" : file != NULL ? file : "--access-log",
              "%srequest_log_db needs the access log (its writer feeds the database); expected "
              "access_log set to a path or \"-\"",
              f->access_log == NULL && file != NULL ? "access_log: " : "");
    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
    }
}

/*
 * The files the configuration names, loaded as start-up loads them: here the routing snapshot
 * (or the --backend pods, unless |backends_ok| is false), then in check_tls_files the TLS
 * certificate and key when |tls_readable|, and the ticket key file. Each is skipped when its
 * path is not known (a file whose key had an error gave none). Run by --check-config, and
 * before refusing a start for other errors, so that one run says all.
 */
static void check_routes(mg_jerr_t *e, const mg_conf_t *c, bool backends_ok)
{
    char *rerr = NULL;
    mg_routes_t *r = NULL;
    if (c->routes_path != NULL && c->backends == NULL)
        r = mg_routes_load(c->routes_path, &rerr);
    else if (c->backends != NULL && c->routes_path == NULL && backends_ok)
        r = mg_routes_catchall(c->backends, c->backend_proto, &rerr);
    else
        return; /* unknown, or both (said by check_merged) */
    if (r == NULL)
        mg_jerr_text(e, rerr != NULL ? rerr : "routing document: out of memory");
    mg_routes_unref(r);
    free(rerr);
}

/* The TLS files, loaded as start-up loads them (see check_routes). */
static void check_tls_files(mg_jerr_t *e, const mg_conf_t *c, bool tls_readable)
{
    if (c->ntls_listen == 0)
        return; /* the files are not read (main.c warns) */
    char err[512];
    if (tls_readable) {
        SSL_CTX *tls = mg_srv_tls_ctx_new(c->tls_cert, c->tls_key, err, sizeof(err));
        if (tls == NULL)
            mg_jerr_text(e, err);
        SSL_CTX_free(tls);
    }
    if (c->tls_ticket_key_file != NULL) {
        unsigned char keys[MG_TLS_TICKET_FILE_MAX + 1], digest[32];
        if (mg_tls_tickets_read_file(c->tls_ticket_key_file, keys, digest, err, sizeof(err)) == 0)
            mg_jerr_text(e, err);
        OPENSSL_cleanse(keys, sizeof(keys));
    }
}

/* One secret file, read as start-up reads it. */
static void check_secret(mg_jerr_t *e, const char *path, const char *key, mg_secret_kind_t kind,
                         size_t max)
{
    char *secret = NULL, err[512];
    if (path == NULL)
        return;
    if (mg_secretfile_read(path, key, kind, max, &secret, err, sizeof(err)) != MG_OK)
        mg_jerr_text(e, err);
    mg_secretfile_free(secret);
}

/* The access log can be opened for appending: an existing file writable, or its directory
 * there and writable (nothing is created here). */
static void check_access_log(mg_jerr_t *e, const char *path)
{
    char line[8400], dir[4096];
    if (path == NULL || strcmp(path, "-") == 0)
        return;
    if (access(path, F_OK) == 0) {
        if (access(path, W_OK) == 0)
            return;
        snprintf(line, sizeof(line), "cannot open access log %s: %s", path, strerror(errno));
        mg_jerr_text(e, line);
        return;
    }
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path + (slash == path)) : 1,
             slash ? path : ".");
    if (access(dir, W_OK | X_OK) == 0)
        return;
    snprintf(line, sizeof(line), "cannot open access log %s: directory %s: %s", path, dir,
             strerror(errno));
    mg_jerr_text(e, line);
}

/* The other files start-up reads before it binds (see check_routes): the admin token, the
 * access log's place, the request log's password. */
static void check_other_files(mg_jerr_t *e, const mg_conf_t *c)
{
    check_secret(e, c->admin_token_file, "admin.token_file", MG_SECRET_TOKEN, MG_ADMIN_TOKEN_MAX);
    check_access_log(e, c->access_log);
    if (c->request_log_db.host != NULL)
        check_secret(e, c->request_log_db.password_file, "request_log_db.password_file",
                     MG_SECRET_PASSWORD, MG_DBLOG_PASSWORD_MAX);
}

mg_err_t mg_conf_from_args(int argc, char **argv, mg_conf_t *c, mg_conf_action_t *action,
                           char **errors)
{
    mg_jerr_t e = {.source = "modelgate", .quote_max = QUOTE_MAX};
    flags_t f = {0};
    if (errors != NULL)
        *errors = NULL;
    mg_conf_defaults(c);
    *action = MG_CONF_RUN;
    scan_args(&e, argc, argv, &f);
    if (f.help || f.version) {
        /* The caller prints mg_conf_usage() or the version: nothing else matters then. */
        *action = f.help ? MG_CONF_HELP : MG_CONF_VERSION;
        free(e.buf);
        return MG_OK;
    }
    bool file_ok = true;
    if (f.config != NULL) {
        char *ferr = NULL;
        /* a file with errors still gives the paths it names: their files are checked too */
        if (load_file(f.config, c, &ferr, true) != MG_OK) {
            mg_jerr_text(&e, ferr != NULL ? ferr : "out of memory");
            file_ok = false;
        }
        free(ferr);
    }
    bool backends_ok = apply_flags(&e, &f, c);
    /* A file with errors may lack what it meant to give; "no listener" and the like would
     * only be noise on top of its real errors. */
    if (file_ok)
        check_merged(&e, &f, c);
    bool tls_readable = c->ntls_listen > 0 && check_tls_paths(&e, &f, c, file_ok);
    if (f.check)
        *action = MG_CONF_CHECK;
    /* Errors refuse the start anyway: the files are loaded now, so that this one run says
     * what is wrong with them too. Otherwise start-up loads them (and says it). */
    if (f.check || e.count > 0) {
        check_routes(&e, c, backends_ok);
        check_tls_files(&e, c, tls_readable);
        check_other_files(&e, c);
    }
    if (e.count == 0 && !e.nomem) {
        free(e.buf);
        return MG_OK;
    }
    mg_conf_clear(c);
    errors_out(&e, errors);
    return MG_E_CONFIG;
}
