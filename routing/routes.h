/*
 * routing/routes.h - the routing document: services, their pods, and (app, env) routes.
 *
 * A snapshot is built once from a JSON file (or from the quick-start flags) and is immutable
 * afterwards, so every worker thread matches against it without locks. Snapshots are
 * reference-counted with atomic counts: a worker holds one ref on the current snapshot and each
 * in-flight request holds one on the snapshot it was routed with, so a reload (SIGHUP) never
 * frees a service or pod that a request still uses. What changes while a snapshot is in use
 * (pod health, load, ejections, counters) lives outside it, in routing/podstate.h and
 * common/stats.h, shared by every snapshot that names the same pod or service.
 *
 * Document shape (every key documented in conf/README.md):
 *   { "domain": "example.com",
 *     "envs": ["development", "staging", "sandbox", "production"],
 *     "services": { "NAME": {
 *         "protocol": "h2c" | "http1",
 *         "pods": ["ADDR:PORT" | {"address": "ADDR:PORT", "weight": 3}, ...]
 *           or "dns": {"name": "pods.svc.local", "port": 9000, "interval_ms": 5000},
 *         "policy": "least_request" | "round_robin" | "consistent_hash",
 *         "hash_key": "header:x-user-id" | "client_ip", "slow_start_ms": 0,
 *         "health_check": {"path", "interval_ms", "timeout_ms", "healthy_threshold",
 *                          "unhealthy_threshold"}, "model_version": "v3",
 *         "outlier": {"consecutive_failures", "base_ejection_ms", "max_ejection_ms",
 *                     "max_ejected_percent"},
 *         "retry": {"attempts", "budget_percent", "min_per_second", "on": ["5xx", "reset"]},
 *         "limits": {"max_requests_per_pod", "max_pending_per_pod"} } },
 *     "routes": [ { "app": "digits", "env": "production",
 *                   "service": "NAME"  or  "split": [{"service": "NAME", "weight": 90}, ...],
 *                   "sticky_header": "x-user-id", "retry_post": false,
 *                   "replay_max_bytes": 65536,
 *                   "timeouts_ms": {"first_byte", "idle", "total"} } ],
 *     "default_service": "NAME" }            (optional: hosts that match no route go there)
 */
#ifndef MG_ROUTING_ROUTES_H
#define MG_ROUTING_ROUTES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/err.h"

typedef enum mg_upstream_proto {
    MG_UP_H2C = 0, /* HTTP/2 over cleartext TCP, prior knowledge */
    MG_UP_H1 = 1,  /* HTTP/1.1 with keep-alive */
} mg_upstream_proto_t;

typedef struct mg_pod {
    char *name; /* "host:port" as written in the document; used in logs and pool keys */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t weight;          /* >= 0; 0 = drained: never picked */
    struct mg_podstate *state; /* shared with later snapshots (routing/podstate.h) */
} mg_pod_t;

/* Where a consistent-hash policy takes its key. */
typedef enum mg_hash_on {
    MG_HASH_HEADER = 0,    /* a request header (hash_header) */
    MG_HASH_CLIENT_IP = 1, /* the client's address */
} mg_hash_on_t;

typedef struct mg_health_conf {
    char *path; /* GET this; NULL = no active checks */
    uint32_t interval_ms, timeout_ms;
    unsigned healthy_threshold, unhealthy_threshold;
} mg_health_conf_t;

typedef struct mg_outlier_conf {
    unsigned consecutive_failures; /* 0 = passive ejection off */
    uint32_t base_ejection_ms;     /* first ejection; each further one is longer */
    uint32_t max_ejection_ms;
    unsigned max_ejected_percent;  /* of the service's pods at once */
} mg_outlier_conf_t;

typedef struct mg_retry_conf {
    unsigned attempts;         /* retries after the first attempt; 0 = none */
    unsigned budget_percent;   /* retries may add at most this share of live requests */
    unsigned min_per_second;   /* ... but this many per second (per worker) are always allowed */
    bool on_5xx;               /* retry 502/503 answers (before any byte reached the client) */
    bool on_reset;             /* retry a reset or a lost connection */
} mg_retry_conf_t;

typedef struct mg_service {
    char *name;
    mg_upstream_proto_t proto;
    mg_pod_t *pods;
    size_t npods; /* <= 64; 0 only for a DNS service with nothing discovered */
    atomic_uint _rr; /* round-robin cursor shared by workers (mg_service_pick) */
    struct mg_balance *lb;     /* NULL when npods == 0 */
    int policy;                /* mg_balance_policy_t */
    mg_hash_on_t hash_on;
    char *hash_header; /* lowercase; consistent hash on it (mg_field_single) */
    uint32_t slow_start_ms;
    mg_health_conf_t health;
    char *model_version;       /* pods must report this in /v1/status; NULL = any */
    mg_outlier_conf_t outlier;
    mg_retry_conf_t retry;
    unsigned max_requests_per_pod; /* circuit breaker: 0 = unlimited */
    unsigned max_pending_per_pod;  /* requests without a response head yet; 0 = unlimited */
    char *dns_name;            /* pods come from DNS (routing/discovery); NULL = static list */
    uint16_t dns_port;
    uint32_t dns_interval_ms;
    struct mg_stats *stats;
} mg_service_t;

typedef struct mg_timeouts {
    uint32_t first_byte, idle, total; /* ms; 0 = the gateway's default */
} mg_timeouts_t;

typedef struct mg_route {
    char *app;
    char *env;
    mg_service_t *service; /* the only service, or the first of a split */
    struct mg_split *split; /* NULL unless the route splits traffic */
    mg_service_t **split_services; /* split's services in weight order (nsplit) */
    size_t nsplit;
    char *sticky_header;   /* lowercase: sticky split unit; NULL = a random pick per request */
    bool retry_post;       /* POST (and other non-idempotent) requests may be replayed */
    uint32_t replay_max_bytes; /* request bodies kept for a replay, at most this big */
    mg_timeouts_t timeouts;
    struct mg_stats *stats;
} mg_route_t;

typedef struct mg_routes {
    atomic_int _refs;
    char *domain;
    char **envs;
    size_t nenvs;
    mg_service_t *services;
    size_t nservices;
    mg_route_t *routes;
    size_t nroutes;
    mg_route_t *default_route; /* NULL unless the document names a default_service */
    mg_service_t *default_service;
    unsigned _magic;  /* MG_ROUTES_MAGIC while alive; checked in debug builds */
    uint32_t *_slots; /* open-addressing index over routes: 0 = empty, else route index + 1;
                         NULL makes mg_routes_match fall back to a linear scan */
    size_t _nslots;   /* a power of two, > 2 * nroutes */
} mg_routes_t;
#define MG_ROUTES_MAGIC 0x6d677274u /* "mgrt" */

/*
 * Loads and validates the routing document at |path|. All problems are found in one pass.
 * Returns a snapshot with one reference, or NULL; then, if |errors| is not NULL, *errors is a
 * malloc'ed string (caller frees) with one problem per line, each of the form
 * "PATH: JSON.PATH: problem (got ...; expected ...)" or "PATH:LINE:COL: json syntax error".
 * Pod host names are resolved here (blocking getaddrinfo: call it off the event loops).
 */
mg_routes_t *mg_routes_load(const char *path, char **errors);

/* The same from a parsed document; |source| names it in messages. Does not steal |doc|. */
struct json_t;
mg_routes_t *mg_routes_from_json(const struct json_t *doc, const char *source, char **errors);
/*
 * Pods of DNS services: mg_routes_build asks |fn| for the addresses discovered so far for a
 * service (by name); it writes up to 64 into |out| and returns how many (0 = none yet).
 */
typedef size_t (*mg_routes_dns_fn)(void *ud, const char *service, struct sockaddr_storage *out,
                                   size_t cap);
mg_routes_t *mg_routes_build(const struct json_t *doc, const char *source, mg_routes_dns_fn fn,
                             void *ud, char **errors);
/* Process-wide: worker threads (round-robin rows of the balancers). Set once at start. */
void mg_routes_set_workers(unsigned workers);

/*
 * Quick-start snapshot: one service "default" over |proto| with the pods of the comma-separated
 * |pods| list ("h:p,h:p"), used for every host. NULL with *errors set when a pod is invalid.
 */
mg_routes_t *mg_routes_catchall(const char *pods, mg_upstream_proto_t proto, char **errors);

void mg_routes_ref(mg_routes_t *r);
void mg_routes_unref(mg_routes_t *r); /* frees at zero */

/*
 * Returns the service for |host| (:authority / Host, |len| bytes): the route of its (app, env),
 * else the default service, else NULL. When |app|/|env| are not NULL they receive the parsed
 * parts (NUL-terminated, truncated to |cap| bytes; "" when the host has no app-env shape).
 */
mg_service_t *mg_routes_match(const mg_routes_t *r, const char *host, size_t len, char *app,
                              char *env, size_t cap);
/* The same, returning the route (the default route for the default service), or NULL. */
const mg_route_t *mg_routes_match_route(const mg_routes_t *r, const char *host, size_t len,
                                        char *app, char *env, size_t cap);

/*
 * The load-balancing seam: picks a pod of |svc| by round robin, skipping pods whose bit is set
 * in |tried| (bit i = pods[i]). Returns the pod index, or -1 when every pod was tried.
 */
int mg_service_pick(mg_service_t *svc, uint64_t tried);

#endif /* MG_ROUTING_ROUTES_H */
