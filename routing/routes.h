/*
 * routing/routes.h - the routing document: services, their pods, and (app, env) routes.
 *
 * A snapshot is built once from a JSON file (or from the quick-start flags) and is immutable
 * afterwards, so every worker thread matches against it without locks. Snapshots are
 * reference-counted with atomic counts: a worker holds one ref on the current snapshot and each
 * in-flight request holds one on the snapshot it was routed with, so a reload (SIGHUP) never
 * frees a service or pod that a request still uses. The only mutable field is the per-service
 * round-robin cursor, which is atomic.
 *
 * Document shape (documented in conf/README.md):
 *   { "domain": "example.com",
 *     "envs": ["development", "staging", "sandbox", "production"],
 *     "services": { "NAME": { "protocol": "h2c" | "http1", "pods": ["ADDR:PORT", ...] } },
 *     "routes": [ { "app": "digits", "env": "production", "service": "NAME" } ],
 *     "default_service": "NAME" }            (optional: hosts that match no route go there)
 */
#ifndef MG_ROUTING_ROUTES_H
#define MG_ROUTING_ROUTES_H

#include <stdatomic.h>
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
} mg_pod_t;

typedef struct mg_service {
    char *name;
    mg_upstream_proto_t proto;
    mg_pod_t *pods;
    size_t npods; /* >= 1, <= 64 */
    atomic_uint _rr; /* round-robin cursor shared by workers */
} mg_service_t;

typedef struct mg_route {
    char *app;
    char *env;
    mg_service_t *service; /* points into the snapshot's services */
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
    mg_service_t *default_service; /* NULL unless the document names one */
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

/*
 * The load-balancing seam: picks a pod of |svc| by round robin, skipping pods whose bit is set
 * in |tried| (bit i = pods[i]). Returns the pod index, or -1 when every pod was tried.
 */
int mg_service_pick(mg_service_t *svc, uint64_t tried);

#endif /* MG_ROUTING_ROUTES_H */
