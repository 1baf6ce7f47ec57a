/*
 * gateway/conf.h - the gateway's bootstrap configuration: listeners, TLS, workers, limits,
 * timeouts, logs, and where the routing document lives.
 *
 * Built once at start-up from defaults, then the --config file (gateway.json), then command-line
 * flags (flags win). Immutable afterwards and read by every worker without locks. SIGHUP reloads
 * only the routing document (routing/routes.h), never this.
 *
 * gateway.json shape (every key optional; documented in conf/README.md):
 *   { "listen": ["127.0.0.1:8080"],                 cleartext: h2c prior knowledge + HTTP/1.1
 *     "tls": { "listen": ["127.0.0.1:8443"], "cert": "cert.pem", "key": "key.pem",
 *              "reload_check_ms": 60000, "ticket_key_rotation_ms": 3600000,
 *              "ticket_key_file": "ticket.keys" },
 *     "workers": 0,                                   0 = number of cores
 *     "routes": "routes.json",                        relative paths are relative to this file
 *     "access_log": "access.log",                     "-" = stdout, "" or null = off
 *     "log_level": "info",
 *     "limits": { "max_concurrent_streams": 100, "max_header_list_size": 65536,
 *                 "max_headers": 100, "stream_window": 1048576, "connection_window": 4194304,
 *                 "connection_buffer": 4194304, "max_request_body": 0,
 *                 "max_client_conns": 0 },                    0 = unlimited
 *     "timeouts_ms": { "connect": 2000, "first_byte": 30000, "idle": 60000, "total": 0,
 *                      "client_idle": 120000, "client_write": 30000, "drain": 10000,
 *                      "reload_wait": 30000 },  0 = none (reload_wait: take over at once)
 *     "upstream": { "max_streams_per_conn": 100, "max_idle_conns_per_pod": 64,
 *                   "max_conns_per_pod": 1024, "max_pending_per_pod": 1024,   0 = unlimited
 *                   "stream_window": 262144, "connection_window": 16777216 },
 *     "admin": { "listen": "127.0.0.1:9901", "token_file": "admin.token" },   no admin = off
 *     "dns_nameserver": "10.96.0.10:53",          DNS services' resolver; default resolv.conf
 *     "request_log_db": { "host": "127.0.0.1", "port": 3306, "user": "modelgate",
 *                         "password_file": "db.password", "database": "modelgate",
 *                         "table": "request_log", "spool_dir": "spool", "spool_max_mb": 1024,
 *                         "batch_rows": 500, "flush_ms": 200, "retention_days": 90 },
 *                                                     no request_log_db = off; needs access_log
 *     "features": { "redis": {...}, "mariadb": {...}, "apps": {...} } }   features/fconf.h
 */
#ifndef MG_GATEWAY_CONF_H
#define MG_GATEWAY_CONF_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "features/fconf.h"
#include "gateway/dblog.h"
#include "gateway/realip.h"
#include "routing/routes.h"

#define MG_CONF_MAX_LISTEN 8
#define MG_CONF_MAX_TRUSTED 64

typedef struct mg_conf {
    char *listen[MG_CONF_MAX_LISTEN]; /* "host:port" strings; [::1]:port for IPv6 */
    size_t nlisten;
    char *tls_listen[MG_CONF_MAX_LISTEN];
    size_t ntls_listen;
    char *tls_cert; /* PEM paths, absolute or relative to the working directory */
    char *tls_key;
    uint32_t tls_reload_check_ms; /* how often the two files are checked for a change; 0: never */
    uint32_t tls_ticket_key_rotation_ms; /* a new session ticket key this often; 0: never */
    char *tls_ticket_key_file; /* shared ticket keys (replaces the rotation); NULL: none */
    unsigned workers; /* resolved: never 0 after mg_conf_from_args */

    char *routes_path;      /* routing document; NULL in quick-start mode */
    char *backends;         /* quick start: "h:p,h:p" from --backend; NULL otherwise */
    mg_upstream_proto_t backend_proto; /* quick start: --backend-proto h2c|http1 */

    char *access_log; /* NULL = off, "-" = stdout */
    char *admin_listen;     /* admin listener "host:port" (metrics, admin API); NULL = none */
    char *admin_token_file; /* bearer token for the admin API; NULL = none (loopback only) */
    char *dns_nameserver;   /* "ip[:port]" for DNS services; NULL = /etc/resolv.conf */
    int log_level;    /* mg_log_level_t */
    mg_dblog_conf_t request_log_db; /* .host NULL = off; strings owned here */
    mg_fconf_t *features; /* user features (features/fconf.h); NULL = off; owned */
    bool generate_request_id;    /* an x-request-id made for requests that bring none */
    bool request_id_in_response; /* x-request-id on pods' answers that lack one */
    bool proxy_protocol;         /* client connections start with a PROXY protocol header */
    bool answer_half_closed;     /* an HTTP/1.1 client's EOF ends its input, not its requests */
    mg_cidr_t trusted_proxies[MG_CONF_MAX_TRUSTED]; /* whose x-forwarded-for names the client */
    size_t ntrusted_proxies;

    struct {
        uint32_t max_concurrent_streams;
        uint32_t max_header_list_size; /* bytes, HPACK-decoded, as RFC 9113 counts them */
        uint32_t max_headers;          /* header fields per request */
        uint32_t stream_window;        /* HTTP/2 initial stream window we advertise */
        uint32_t connection_window;    /* HTTP/2 connection window we advertise */
        uint32_t connection_buffer;    /* response bytes held for one client connection */
        uint64_t max_request_body;     /* bytes, 0 = unlimited */
        uint32_t max_client_conns;     /* the whole gateway's, split over the workers; 0 = none */
    } limits;
    struct {
        uint32_t connect, first_byte, idle, total, client_idle, client_write,
            drain; /* ms, 0 = none */
        uint32_t reload_wait; /* ms a reload may wait for its new checks; 0 = take over at once */
    } timeouts_ms;
    struct {
        uint32_t max_streams_per_conn;
        uint32_t max_idle_conns_per_pod;
        uint32_t max_conns_per_pod;   /* circuit breaker, every worker's: 0 = unlimited */
        uint32_t max_pending_per_pod; /* requests waiting for a connection: 0 = unlimited */
        uint32_t stream_window;     /* HTTP/2 initial stream window we advertise to pods */
        uint32_t connection_window; /* ... and connection window */
    } upstream;
} mg_conf_t;

typedef enum mg_conf_action {
    MG_CONF_RUN = 0,   /* start the gateway */
    MG_CONF_CHECK = 1, /* --check-config: validate and exit */
    MG_CONF_HELP = 2,  /* --help given: the caller prints mg_conf_usage() and exits 0 */
    MG_CONF_VERSION = 3, /* --version given: the caller prints MG_VERSION and exits 0 */
} mg_conf_action_t;

/* Fills |c| with the defaults listed above (no listeners). */
void mg_conf_defaults(mg_conf_t *c);

/*
 * Parses the command line into |c| (filled from scratch: defaults first, so |c| must not own
 * anything yet):
 *   --config FILE | --check-config FILE | --listen ADDR (repeatable) | --tls-listen ADDR
 *   --cert FILE --key FILE | --routes FILE | --backend H:P[,H:P...] | --backend-proto h2c|http1
 *   --workers N | --access-log PATH | --log-level LEVEL | --help | --version
 * --config/--check-config is loaded first, then the other flags override it. Checks the result
 * (at least one listener; TLS listener needs cert and key; exactly one of routes file or
 * --backend). --check-config also loads the files the result names: the routing document (or
 * the --backend pods), the TLS certificate and key, the ticket key file, the admin token and
 * request log password files, the access log's place; so does any run that
 * found errors already (the start is refused anyway: one run says everything), with what a
 * config file with errors still gave (a path whose key had an error is not known: not loaded).
 * Returns MG_OK with *action set, or MG_E_CONFIG with |c| cleared and *errors a malloc'ed string
 * of every problem, one per line ("FILE: json.path: problem" or "--flag: problem").
 */
mg_err_t mg_conf_from_args(int argc, char **argv, mg_conf_t *c, mg_conf_action_t *action,
                           char **errors);

/* Loads gateway.json at |path| over |c| (used by mg_conf_from_args; exposed for tests). */
mg_err_t mg_conf_load(const char *path, mg_conf_t *c, char **errors);

/* Frees the strings |c| owns and zeroes it. */
void mg_conf_clear(mg_conf_t *c);

/* Usage text for --help. */
const char *mg_conf_usage(void);

#endif /* MG_GATEWAY_CONF_H */
