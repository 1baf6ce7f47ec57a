/*
 * routing/routes.c - routing document validation, snapshots, host matching and round robin.
 *
 * DESIGN: validation and construction are one walk over the document. Every check that fails
 * appends one line to an error list and the walk goes on with the next value, so an operator
 * sees every problem of a document at once; the half-built snapshot is then thrown away, so a
 * bad document never becomes visible to a worker. Checks that depend on another part (a route's
 * env, its service) are skipped when that part was itself invalid, so one mistake yields one
 * line, not a cascade.
 *
 * A finished snapshot is read-only except for the per-service round-robin cursors. Matching
 * lowercases the host into a stack buffer and probes an open-addressing index keyed by
 * (app, env) that is built during validation (where it also finds duplicate routes), so the
 * per-request path allocates nothing and costs one hash, not a scan of every route.
 */
#include "routing/routes.h"

#include <arpa/inet.h>
#include <assert.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canary/split.h"
#include "common/jsonerr.h"
#include "common/stats.h"
#include "routing/balance.h"
#include "routing/host.h"
#include "routing/podstate.h"

/* Fuzz builds define this as AI_NUMERICHOST so pod names never reach the network. */
#ifndef MG_ROUTES_RESOLVE_FLAGS
#define MG_ROUTES_RESOLVE_FLAGS 0
#endif

#define MAX_PODS 64  /* mg_service_pick's |tried| has one bit per pod */
#define MAX_ENVS 64  /* mg_host_parse scans envs per request */
#define MAX_LABEL 63 /* DNS label limit: "{app}-{env}" must fit in one */
#define MAX_SERVICE_NAME 128
#define MAX_HOST 255 /* longer hosts cannot be DNS names; mg_routes_match does not look them up */

static const char *const default_envs[] = {"development", "staging", "sandbox", "production"};

/* ------------------------------------------------------------------------------------------ */
/* Errors: common/jsonerr.h, with these additions                                               */

static void nomem(mg_jerr_t *e)
{
    e->nomem = true;
}

#define ESC(buf, s) mg_jerr_esc((buf), sizeof(buf), (s), 80)

/* ------------------------------------------------------------------------------------------ */
/* Snapshot memory                                                                              */

static unsigned g_workers = 1;

void mg_routes_set_workers(unsigned workers)
{
    g_workers = workers ? workers : 1;
}

static void service_clear(mg_service_t *s)
{
    free(s->name);
    mg_balance_free(s->lb); /* before the states: it points to their |inflight| */
    if (s->pods != NULL)
        for (size_t i = 0; i < s->npods; i++) {
            free(s->pods[i].name);
            mg_podstate_unref(s->pods[i].state); /* the last frees a pod gone for good */
        }
    free(s->pods);
    free(s->hash_header);
    free(s->health.path);
    free(s->model_version);
    free(s->dns_name);
}

static void routes_free(mg_routes_t *r)
{
    if (r == NULL)
        return;
    free(r->domain);
    if (r->envs != NULL)
        for (size_t i = 0; i < r->nenvs; i++)
            free(r->envs[i]);
    free(r->envs);
    if (r->services != NULL)
        for (size_t i = 0; i < r->nservices; i++)
            service_clear(&r->services[i]);
    free(r->services);
    if (r->routes != NULL)
        for (size_t i = 0; i < r->nroutes; i++) {
            free(r->routes[i].app);
            free(r->routes[i].env);
            mg_split_free(r->routes[i].split);
            free(r->routes[i].split_services);
            free(r->routes[i].sticky_header);
        }
    free(r->routes);
    free(r->default_route);
    free(r->_slots);
    r->_magic = 0; /* a use after free now trips the magic check instead of reading garbage */
    free(r);
}

static mg_routes_t *routes_new(void)
{
    mg_routes_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    atomic_init(&r->_refs, 1);
    r->_magic = MG_ROUTES_MAGIC;
    return r;
}

/* Hands the collected errors to the caller (or drops them) and returns NULL for chaining. */
static mg_routes_t *fail_with(mg_jerr_t *e, mg_routes_t *r, char **errors)
{
    routes_free(r);
    if (e->nomem) {
        free(e->buf);
        e->buf = NULL;
        e->len = 0;
        e->nomem = false;
        e->count = 0;
        e->plen = 0;
        e->path[0] = '\0';
        mg_jerr_f(e, "out of memory while loading the routing document");
    }
    if (errors != NULL)
        *errors = e->buf; /* may be NULL if even that allocation failed */
    else
        free(e->buf);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Route index                                                                                  */

static uint32_t route_hash(const char *app, size_t alen, const char *env, size_t elen)
{
    uint32_t h = 2166136261u; /* FNV-1a: short keys, no need for anything stronger */
    for (size_t i = 0; i < alen; i++)
        h = (h ^ (unsigned char)app[i]) * 16777619u;
    h = (h ^ 0u) * 16777619u; /* separator: "a-b"+"c" and "a"+"b-c" hash apart */
    for (size_t i = 0; i < elen; i++)
        h = (h ^ (unsigned char)env[i]) * 16777619u;
    return h;
}

static bool route_is(const mg_route_t *rt, const char *app, size_t alen, const char *env,
                     size_t elen)
{
    return strncmp(rt->app, app, alen) == 0 && rt->app[alen] == '\0' &&
           strncmp(rt->env, env, elen) == 0 && rt->env[elen] == '\0';
}

/* Returns the slot that holds (app, env), or the empty slot where it would go. */
static uint32_t *slot_find(const mg_routes_t *r, const char *app, size_t alen, const char *env,
                           size_t elen)
{
    size_t mask = r->_nslots - 1;
    size_t i = route_hash(app, alen, env, elen) & mask;
    /* Terminates: the table is never more than half full. */
    while (r->_slots[i] != 0 && !route_is(&r->routes[r->_slots[i] - 1], app, alen, env, elen))
        i = (i + 1) & mask;
    return &r->_slots[i];
}

static const mg_route_t *route_find(const mg_routes_t *r, const char *app, size_t alen,
                                    const char *env, size_t elen)
{
    if (r->_slots != NULL) {
        uint32_t s = *slot_find(r, app, alen, env, elen);
        return s != 0 ? &r->routes[s - 1] : NULL;
    }
    for (size_t i = 0; i < r->nroutes; i++)
        if (route_is(&r->routes[i], app, alen, env, elen))
            return &r->routes[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Pods                                                                                         */

/*
 * Checks the address |s| and resolves it into |pod| (name copied). Errors name the address; the
 * caller has set the path. Returns false on any problem (already reported).
 */
static bool parse_pod(mg_jerr_t *e, const char *s, mg_pod_t *pod)
{
    char host[256], q[200];
    unsigned port;
    const char *why;
    if (mg_host_split_port(s, host, sizeof(host), &port, &why) != MG_OK) {
        mg_jerr_f(e, "invalid address \"%s\" (%s)", ESC(q, s), why);
        return false;
    }
    memset(&pod->addr, 0, sizeof(pod->addr));
    struct sockaddr_in *sin = (struct sockaddr_in *)&pod->addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&pod->addr;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        pod->addrlen = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        pod->addrlen = sizeof(*sin6);
    } else {
        /* A name: resolved once here; routing/discovery re-resolves headless Services. */
        struct addrinfo hints = {.ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_NUMERICSERV | MG_ROUTES_RESOLVE_FLAGS};
        struct addrinfo *ai = NULL;
        char ps[8];
        snprintf(ps, sizeof(ps), "%u", port);
        int rc = getaddrinfo(host, ps, &hints, &ai);
        if (rc != 0 || ai == NULL || ai->ai_addrlen > sizeof(pod->addr)) {
            mg_jerr_f(
                e, "cannot resolve \"%s\" (%s; expected a resolvable host name or an IP address)",
                ESC(q, s), rc != 0 ? gai_strerror(rc) : "no address");
            if (ai != NULL)
                freeaddrinfo(ai);
            return false;
        }
        memcpy(&pod->addr, ai->ai_addr, ai->ai_addrlen);
        pod->addrlen = ai->ai_addrlen;
        freeaddrinfo(ai);
    }
    if ((pod->name = strdup(s)) == NULL) {
        nomem(e);
        return false;
    }
    return true;
}

/* Reports pods[i] when it repeats an earlier pod: a duplicate would silently double its share. */
static bool pod_is_duplicate(mg_jerr_t *e, const mg_service_t *svc, size_t i)
{
    char q[200], qj[200];
    for (size_t j = 0; j < i; j++) {
        const mg_pod_t *a = &svc->pods[j], *b = &svc->pods[i];
        if (a->name != NULL && strcmp(a->name, b->name) == 0) {
            mg_jerr_f(e, "duplicate pod \"%s\" (same as pods[%zu]; expected each pod once)",
                      ESC(q, b->name), j);
            return true;
        }
        if (a->name != NULL && a->addrlen == b->addrlen && a->addrlen > 0 &&
            memcmp(&a->addr, &b->addr, a->addrlen) == 0) { /* "localhost:P" and "127.0.0.1:P" */
            mg_jerr_f(e,
                      "pod \"%s\" is pods[%zu] (\"%s\") too, once resolved (expected each pod "
                      "once: it would get both shares)",
                      ESC(q, b->name), j, ESC(qj, a->name));
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Document sections                                                                            */

static bool is_lower_name(const char *s, bool *upper)
{
    *upper = false;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 'A' && c <= 'Z')
            *upper = true;
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return !*upper;
}

static void parse_domain(mg_jerr_t *e, const json_t *doc, mg_routes_t *r)
{
    const json_t *v = json_object_get(doc, "domain");
    size_t old = mg_jerr_key(e, "domain");
    char q[200];
    if (v == NULL) {
        mg_jerr_f(e, "missing (expected the domain that hosts are under, e.g. \"example.com\")");
    } else if (!json_is_string(v)) {
        mg_jerr_type(e, v, "string, a domain name such as \"example.com\"");
    } else {
        const char *s = json_string_value(v);
        size_t n = strlen(s);
        if (n == 0) {
            mg_jerr_f(e, "empty (expected a domain name such as \"example.com\")");
        } else if (!mg_host_is_valid_name(s, n)) {
            mg_jerr_f(e,
                      "invalid domain \"%s\" (expected dot-separated labels of letters, digits "
                      "and '-', such as \"example.com\")",
                      ESC(q, s));
        } else if ((r->domain = strdup(s)) == NULL) {
            nomem(e);
        } else {
            /* Stored in canonical form: lowercase, no trailing dot, like the hosts we match. */
            for (char *p = r->domain; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p - 'A' + 'a');
            if (r->domain[n - 1] == '.')
                r->domain[n - 1] = '\0';
        }
    }
    mg_jerr_pop(e, old);
}

/* Returns true when r->envs is usable for checking routes. */
static bool parse_envs(mg_jerr_t *e, const json_t *doc, mg_routes_t *r)
{
    const json_t *v = json_object_get(doc, "envs");
    size_t n = v == NULL ? sizeof(default_envs) / sizeof(default_envs[0]) : 0;
    bool ok = true;
    size_t old = mg_jerr_key(e, "envs");
    char q[200];
    if (v != NULL) {
        if (!json_is_array(v)) {
            mg_jerr_type(e, v, "array of env names, e.g. [\"staging\", \"production\"]");
            ok = false;
        } else if ((n = json_array_size(v)) == 0) {
            mg_jerr_f(e, "empty (expected at least one env, e.g. [\"production\"])");
            ok = false;
        } else if (n > MAX_ENVS) {
            mg_jerr_f(e, "too many envs (got %zu; expected at most %d)", n, MAX_ENVS);
            ok = false;
        }
    }
    if (!ok) {
        mg_jerr_pop(e, old);
        return false;
    }
    if ((r->envs = calloc(n, sizeof(*r->envs))) == NULL) {
        nomem(e);
        mg_jerr_pop(e, old);
        return false;
    }
    r->nenvs = n;
    for (size_t i = 0; i < n; i++) {
        const char *s = default_envs[i < 4 ? i : 0];
        if (v != NULL) {
            const json_t *ev = json_array_get(v, i);
            size_t o2 = mg_jerr_index(e, i);
            bool upper, good = false;
            if (!json_is_string(ev)) {
                mg_jerr_type(e, ev, "string");
            } else if (*(s = json_string_value(ev)) == '\0') {
                mg_jerr_f(e, "empty env name (expected lowercase letters, digits and '-')");
            } else if (!is_lower_name(s, &upper)) {
                mg_jerr_f(e, "invalid env \"%s\" (expected %s)", ESC(q, s),
                          upper ? "lowercase: hosts are matched lowercased"
                                : "lowercase letters, digits and '-' only");
            } else if (strlen(s) > MAX_LABEL - 2) {
                mg_jerr_f(e, "env \"%s\" too long (expected at most %d bytes)", ESC(q, s),
                          MAX_LABEL - 2);
            } else {
                good = true;
                for (size_t j = 0; j < i; j++)
                    if (r->envs[j] != NULL && strcmp(r->envs[j], s) == 0) {
                        mg_jerr_f(e, "duplicate env \"%s\" (same as envs[%zu]; expected each once)",
                                  ESC(q, s), j);
                        good = false;
                        break;
                    }
            }
            mg_jerr_pop(e, o2);
            if (!good) {
                ok = false;
                continue;
            }
        }
        if ((r->envs[i] = strdup(s)) == NULL) {
            nomem(e);
            ok = false;
        }
    }
    mg_jerr_pop(e, old);
    return ok;
}

static bool is_service_name(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        unsigned char c = (unsigned char)s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return n >= 1 && n <= MAX_SERVICE_NAME;
}

/* ---------- optional values: absent keeps the default; a wrong one is reported ---------- */

static void opt_uint(mg_jerr_t *e, const json_t *obj, const char *key, uint64_t lo, uint64_t hi,
                     const char *meaning, uint64_t *out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(e, key);
    char exp[160];
    snprintf(exp, sizeof(exp), "an integer %" PRIu64 "-%" PRIu64 ", %s", lo, hi, meaning);
    if (!json_is_integer(v))
        mg_jerr_type(e, v, exp);
    else if (json_integer_value(v) < (json_int_t)lo || (uint64_t)json_integer_value(v) > hi)
        mg_jerr_f(
            e, "out of range (got %" JSON_INTEGER_FORMAT "; expected %" PRIu64 "-%" PRIu64 ", %s)",
            json_integer_value(v), lo, hi, meaning);
    else
        *out = (uint64_t)json_integer_value(v);
    mg_jerr_pop(e, old);
}

#define OPT_U32(e, obj, key, lo, hi, meaning, field)                                           \
    do {                                                                                       \
        uint64_t _v = (field);                                                                 \
        opt_uint((e), (obj), (key), (lo), (hi), (meaning), &_v);                               \
        (field) = (__typeof__(field))_v;                                                       \
    } while (0)

/* A header name (token characters), stored lowercase. */
static bool header_name(mg_jerr_t *e, const json_t *v, char **out)
{
    char q[200];
    if (!json_is_string(v)) {
        mg_jerr_type(e, v, "string, a header name such as \"x-user-id\"");
        return false;
    }
    const char *s = json_string_value(v);
    size_t n = strlen(s);
    bool ok = n > 0 && n <= 128;
    for (size_t i = 0; ok && i < n; i++)
        ok = strchr("!#$%&'*+-.^_`|~", s[i]) != NULL || (s[i] >= '0' && s[i] <= '9') ||
             (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z');
    if (!ok) {
        mg_jerr_f(
            e, "invalid header name \"%s\" (expected 1-128 token characters, e.g. \"x-user-id\")",
            ESC(q, s));
        return false;
    }
    if ((*out = strdup(s)) == NULL) {
        nomem(e);
        return false;
    }
    for (char *p = *out; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return true;
}

/* An object-valued key: NULL when absent; reported when not an object. */
static const json_t *opt_object(mg_jerr_t *e, const json_t *obj, const char *key,
                                const char *const *keys)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return NULL;
    size_t old = mg_jerr_key(e, key);
    if (!json_is_object(v)) {
        mg_jerr_type(e, v, "object");
        v = NULL;
    } else {
        mg_jerr_keys(e, v, keys);
    }
    mg_jerr_pop(e, old);
    return v;
}

/* Printable ASCII without spaces: what goes into a request line as is. */
static bool printable_token(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* ---------- services ---------- */

static void parse_pods(mg_jerr_t *e, const json_t *pods, mg_service_t *svc)
{
    static const char *const keys[] = {"address", "weight", NULL};
    size_t old = mg_jerr_key(e, "pods");
    size_t n = 0;
    if (!json_is_array(pods)) {
        mg_jerr_type(e, pods, "array of \"host:port\" strings or {address, weight} objects");
    } else if ((n = json_array_size(pods)) == 0 || n > MAX_PODS) {
        mg_jerr_f(e, "%s (got %zu pods; expected 1-%d)", n ? "too many pods" : "no pods", n,
                  MAX_PODS);
        n = 0;
    }
    if (n > 0 && (svc->pods = calloc(n, sizeof(*svc->pods))) == NULL) {
        nomem(e);
        n = 0;
    }
    svc->npods = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *pod = json_array_get(pods, i);
        size_t o2 = mg_jerr_index(e, i);
        const json_t *addr = pod;
        svc->pods[i].weight = 1;
        if (json_is_object(pod)) {
            mg_jerr_keys(e, pod, keys);
            addr = json_object_get(pod, "address");
            OPT_U32(e, pod, "weight", 0, MG_BALANCE_MAX_WEIGHT, "0 = drained", svc->pods[i].weight);
            if (addr == NULL) {
                mg_jerr_key(e, "address");
                mg_jerr_f(e, "missing (expected \"host:port\")");
            } else {
                mg_jerr_key(e, "address");
            }
        }
        if (addr != NULL) {
            if (!json_is_string(addr))
                mg_jerr_type(e, addr, "string \"host:port\" or {address, weight}");
            else if (parse_pod(e, json_string_value(addr), &svc->pods[i]))
                pod_is_duplicate(e, svc, i);
        }
        mg_jerr_pop(e, o2);
    }
    mg_jerr_pop(e, old);
}

static void parse_dns(mg_jerr_t *e, const json_t *v, mg_service_t *svc)
{
    static const char *const keys[] = {"name", "port", "interval_ms", NULL};
    size_t old = mg_jerr_key(e, "dns");
    char q[200];
    if (!json_is_object(v)) {
        mg_jerr_type(e, v, "object with keys name, port, interval_ms");
        mg_jerr_pop(e, old);
        return;
    }
    mg_jerr_keys(e, v, keys);
    const json_t *name = json_object_get(v, "name");
    size_t o2 = mg_jerr_key(e, "name");
    if (name == NULL)
        mg_jerr_f(e, "missing (expected the DNS name whose A records are the pods)");
    else if (!json_is_string(name))
        mg_jerr_type(e, name, "string, a DNS name");
    else if (!mg_host_is_valid_name(json_string_value(name), strlen(json_string_value(name))))
        mg_jerr_f(e, "invalid DNS name \"%s\"", ESC(q, json_string_value(name)));
    else if ((svc->dns_name = strdup(json_string_value(name))) == NULL)
        nomem(e);
    mg_jerr_pop(e, o2);
    uint64_t port = 0;
    if (json_object_get(v, "port") == NULL) {
        mg_jerr_key(e, "port");
        mg_jerr_f(e, "missing (expected the pods' port, 1-65535)");
        mg_jerr_pop(e, o2);
    }
    opt_uint(e, v, "port", 1, 65535, "the pods' port", &port);
    svc->dns_port = (uint16_t)port;
    svc->dns_interval_ms = 5000;
    OPT_U32(e, v, "interval_ms", 100, 3600000, "how often the name is resolved again",
            svc->dns_interval_ms);
    mg_jerr_pop(e, old);
}

static void parse_policy(mg_jerr_t *e, const json_t *v, mg_service_t *svc)
{
    char q[200];
    const json_t *p = json_object_get(v, "policy");
    size_t old = mg_jerr_key(e, "policy");
    mg_balance_policy_t pol = MG_BALANCE_LEAST_REQUEST;
    if (p != NULL) {
        if (!json_is_string(p))
            mg_jerr_type(e, p, "string: least_request, round_robin or consistent_hash");
        else if (!mg_balance_policy_parse(json_string_value(p), &pol))
            mg_jerr_f(e,
                      "unknown policy \"%s\" (expected least_request, round_robin or "
                      "consistent_hash)",
                      ESC(q, json_string_value(p)));
    }
    svc->policy = (int)pol;
    mg_jerr_pop(e, old);

    const json_t *k = json_object_get(v, "hash_key");
    old = mg_jerr_key(e, "hash_key");
    if (k != NULL) {
        const char *ks = json_is_string(k) ? json_string_value(k) : NULL;
        if (ks != NULL && strcmp(ks, "client_ip") == 0) {
            svc->hash_on = MG_HASH_CLIENT_IP;
        } else if (ks != NULL && strncmp(ks, "header:", 7) == 0) {
            json_t *h = json_string(ks + 7);
            if (h == NULL)
                nomem(e);
            else
                header_name(e, h, &svc->hash_header);
            json_decref(h);
            svc->hash_on = MG_HASH_HEADER;
        } else {
            mg_jerr_f(e, "invalid hash key %s%s%s (expected \"header:NAME\" or \"client_ip\")",
                      ks ? "\"" : "", ks ? ESC(q, ks) : "(not a string)", ks ? "\"" : "");
        }
        if (pol != MG_BALANCE_CONSISTENT_HASH)
            mg_jerr_f(e, "hash_key is only used by policy consistent_hash (policy is %s)",
                      mg_balance_policy_name(pol));
    } else if (pol == MG_BALANCE_CONSISTENT_HASH) {
        mg_jerr_f(e, "missing (policy consistent_hash needs \"header:NAME\" or \"client_ip\")");
    }
    mg_jerr_pop(e, old);
    OPT_U32(e, v, "slow_start_ms", 0, 3600000, "ramp-up window of a pod that became usable",
            svc->slow_start_ms);
}

static void parse_resilience(mg_jerr_t *e, const json_t *v, mg_service_t *svc)
{
    static const char *const hc_keys[] = {"path", "interval_ms", "timeout_ms",
                                          "healthy_threshold", "unhealthy_threshold", NULL};
    static const char *const out_keys[] = {"consecutive_failures", "base_ejection_ms",
                                           "max_ejection_ms", "max_ejected_percent", NULL};
    static const char *const retry_keys[] = {"attempts", "budget_percent", "min_per_second",
                                             "on", NULL};
    static const char *const limit_keys[] = {"max_requests_per_pod", "max_pending_per_pod",
                                             NULL};
    char q[200];
    const json_t *hc = opt_object(e, v, "health_check", hc_keys);
    if (hc != NULL) {
        size_t old = mg_jerr_key(e, "health_check");
        const json_t *p = json_object_get(hc, "path");
        size_t o2 = mg_jerr_key(e, "path");
        if (p == NULL)
            mg_jerr_f(e, "missing (expected the path to GET, e.g. \"/readyz\")");
        else if (!json_is_string(p) || json_string_value(p)[0] != '/' ||
                 !printable_token(json_string_value(p)))
            mg_jerr_f(e,
                      "invalid path (expected a string starting with '/', printable ASCII without "
                      "spaces, e.g. \"/readyz\")");
        else if ((svc->health.path = strdup(json_string_value(p))) == NULL)
            nomem(e);
        mg_jerr_pop(e, o2);
        OPT_U32(e, hc, "interval_ms", 100, 3600000, "time between checks", svc->health.interval_ms);
        OPT_U32(e, hc, "timeout_ms", 10, 600000, "limit of one check", svc->health.timeout_ms);
        OPT_U32(e, hc, "healthy_threshold", 1, 100, "passes in a row to become healthy",
                svc->health.healthy_threshold);
        OPT_U32(e, hc, "unhealthy_threshold", 1, 100, "failures in a row to become unhealthy",
                svc->health.unhealthy_threshold);
        mg_jerr_pop(e, old);
    }
    const json_t *mv = json_object_get(v, "model_version");
    if (mv != NULL) {
        size_t old = mg_jerr_key(e, "model_version");
        if (!json_is_string(mv) || json_string_value(mv)[0] == '\0')
            mg_jerr_type(e, mv, "non-empty string, the version pods must report in /v1/status");
        else if ((svc->model_version = strdup(json_string_value(mv))) == NULL)
            nomem(e);
        else if (hc == NULL)
            mg_jerr_f(e,
                      "model_version needs health_check (pods' versions are read by the checks)");
        mg_jerr_pop(e, old);
    }

    const json_t *od = opt_object(e, v, "outlier", out_keys);
    if (od != NULL) {
        size_t old = mg_jerr_key(e, "outlier");
        OPT_U32(e, od, "consecutive_failures", 0, 1000, "0 = passive ejection off",
                svc->outlier.consecutive_failures);
        OPT_U32(e, od, "base_ejection_ms", 100, 3600000, "first ejection's length",
                svc->outlier.base_ejection_ms);
        OPT_U32(e, od, "max_ejection_ms", 100, 86400000, "longest ejection",
                svc->outlier.max_ejection_ms);
        OPT_U32(e, od, "max_ejected_percent", 0, 100, "share of pods ejected at once",
                svc->outlier.max_ejected_percent);
        if (svc->outlier.max_ejection_ms < svc->outlier.base_ejection_ms)
            mg_jerr_f(e,
                      "max_ejection_ms (%u) is below base_ejection_ms (%u) (expected a longest "
                      "ejection at least as long as the first)",
                      (unsigned)svc->outlier.max_ejection_ms,
                      (unsigned)svc->outlier.base_ejection_ms);
        mg_jerr_pop(e, old);
    }

    const json_t *rt = opt_object(e, v, "retry", retry_keys);
    if (rt != NULL) {
        size_t old = mg_jerr_key(e, "retry");
        OPT_U32(e, rt, "attempts", 0, 10, "retries on other pods after the first attempt",
                svc->retry.attempts);
        OPT_U32(e, rt, "budget_percent", 0, 100, "retries as a share of live requests",
                svc->retry.budget_percent);
        OPT_U32(e, rt, "min_per_second", 0, 100000, "retries always allowed per second",
                svc->retry.min_per_second);
        const json_t *on = json_object_get(rt, "on");
        if (on != NULL) {
            size_t o2 = mg_jerr_key(e, "on");
            svc->retry.on_5xx = svc->retry.on_reset = false;
            if (!json_is_array(on)) {
                mg_jerr_type(e, on, "array of \"5xx\" and \"reset\"");
            } else {
                for (size_t i = 0; i < json_array_size(on); i++) {
                    const json_t *c = json_array_get(on, i);
                    const char *cs = json_is_string(c) ? json_string_value(c) : "";
                    if (strcmp(cs, "5xx") == 0)
                        svc->retry.on_5xx = true;
                    else if (strcmp(cs, "reset") == 0)
                        svc->retry.on_reset = true;
                    else {
                        size_t o3 = mg_jerr_index(e, i);
                        mg_jerr_f(e,
                                  "unknown retry condition %s%s%s (expected \"5xx\" or \"reset\"; "
                                  "connect failures are always retried)",
                                  json_is_string(c) ? "\"" : "",
                                  json_is_string(c) ? ESC(q, cs) : "(not a string)",
                                  json_is_string(c) ? "\"" : "");
                        mg_jerr_pop(e, o3);
                    }
                }
            }
            mg_jerr_pop(e, o2);
        }
        mg_jerr_pop(e, old);
    }

    const json_t *lim = opt_object(e, v, "limits", limit_keys);
    if (lim != NULL) {
        size_t old = mg_jerr_key(e, "limits");
        OPT_U32(e, lim, "max_requests_per_pod", 0, 1000000, "0 = unlimited",
                svc->max_requests_per_pod);
        OPT_U32(e, lim, "max_pending_per_pod", 0, 1000000, "0 = unlimited",
                svc->max_pending_per_pod);
        mg_jerr_pop(e, old);
    }
}

/* What a service gets for every key the document leaves out (conf/README.md lists them). */
static void service_defaults(mg_service_t *svc)
{
    svc->proto = MG_UP_H2C;
    svc->policy = MG_BALANCE_LEAST_REQUEST;
    svc->health = (mg_health_conf_t){NULL, 2000, 1000, 1, 2};
    svc->outlier = (mg_outlier_conf_t){5, 10000, 300000, 50};
    svc->retry = (mg_retry_conf_t){1, 20, 10, true, true};
}

static void parse_service(mg_jerr_t *e, const char *name, const json_t *v, mg_service_t *svc)
{
    static const char *const keys[] = {"protocol",     "pods",    "dns",      "policy",
                                       "hash_key",     "slow_start_ms", "health_check",
                                       "model_version", "outlier", "retry",    "limits",
                                       NULL};
    char q[200];
    service_defaults(svc);
    if (!is_service_name(name))
        mg_jerr_f(e, "invalid service name \"%s\" (expected 1-%d letters, digits, '-' or '_')",
                  ESC(q, name), MAX_SERVICE_NAME);
    if ((svc->name = strdup(name)) == NULL) {
        nomem(e);
        return;
    }
    if (!json_is_object(v)) {
        mg_jerr_type(e, v, "object with keys protocol, pods");
        return;
    }
    mg_jerr_keys(e, v, keys);

    const json_t *pv = json_object_get(v, "protocol");
    size_t old = mg_jerr_key(e, "protocol");
    if (pv != NULL) {
        if (!json_is_string(pv))
            mg_jerr_type(e, pv, "string \"h2c\" or \"http1\"");
        else if (strcmp(json_string_value(pv), "h2c") == 0)
            svc->proto = MG_UP_H2C;
        else if (strcmp(json_string_value(pv), "http1") == 0)
            svc->proto = MG_UP_H1;
        else
            mg_jerr_f(e, "unknown protocol \"%s\" (expected \"h2c\" or \"http1\")",
                      ESC(q, json_string_value(pv)));
    }
    mg_jerr_pop(e, old);

    const json_t *pods = json_object_get(v, "pods"), *dns = json_object_get(v, "dns");
    if (pods != NULL && dns != NULL) {
        mg_jerr_f(e, "both pods and dns given (expected one: a static list or a DNS name)");
    } else if (dns != NULL) {
        parse_dns(e, dns, svc);
    } else if (pods == NULL) {
        old = mg_jerr_key(e, "pods");
        mg_jerr_f(e, "missing (expected an array of 1-%d \"host:port\" strings, or a dns object)",
                  MAX_PODS);
        mg_jerr_pop(e, old);
    } else {
        parse_pods(e, pods, svc);
    }
    parse_policy(e, v, svc);
    parse_resilience(e, v, svc);
}

/* Builds r->services; *index maps each name to its position (for route lookups). Returns true
 * when the set of service names is known, even if some services have errors. */
static bool parse_services(mg_jerr_t *e, const json_t *doc, mg_routes_t *r, json_t **index)
{
    const json_t *v = json_object_get(doc, "services");
    size_t old = mg_jerr_key(e, "services");
    bool ok = false;
    if (v == NULL) {
        ok = true; /* no services: every host gets 404 (or the check of default_service fails) */
    } else if (!json_is_object(v)) {
        mg_jerr_type(e, v, "object mapping service names to {protocol, pods}");
    } else if ((*index = json_object()) == NULL ||
               (json_object_size(v) > 0 &&
                (r->services = calloc(json_object_size(v), sizeof(*r->services))) == NULL)) {
        nomem(e);
    } else {
        const char *name;
        json_t *sv;
        size_t i = 0;
        ok = true;
        json_object_foreach((json_t *)v, name, sv)
        {
            mg_service_t *svc = &r->services[i];
            atomic_init(&svc->_rr, 0);
            r->nservices = ++i;
            size_t o2 = mg_jerr_key(e, name);
            parse_service(e, name, sv, svc);
            mg_jerr_pop(e, o2);
            if (json_object_set_new(*index, name, json_integer((json_int_t)(i - 1))) != 0)
                nomem(e);
        }
    }
    mg_jerr_pop(e, old);
    return ok;
}

static mg_service_t *service_lookup(mg_routes_t *r, const json_t *index, const char *name)
{
    const json_t *i = index != NULL ? json_object_get(index, name) : NULL;
    return i != NULL ? &r->services[json_integer_value(i)] : NULL;
}

/* "a, b, c" of the valid names for a message; long lists end with "...". */
static const char *list_names(char *out, size_t cap, char *const *names, size_t n,
                              const mg_service_t *svcs)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        const char *s = names != NULL ? names[i] : svcs[i].name;
        if (s == NULL)
            continue;
        int w = snprintf(out + o, cap - o, "%s%s", o ? ", " : "", s);
        if (w < 0 || (size_t)w >= cap - o) {
            snprintf(out + (o < cap - 5 ? o : cap - 5), 5, "...");
            break;
        }
        o += (size_t)w;
    }
    return out;
}

static const char *get_route_string(mg_jerr_t *e, const json_t *obj, const char *key,
                                    const char *expected)
{
    const json_t *v = json_object_get(obj, key);
    const char *s = NULL;
    size_t old = mg_jerr_key(e, key);
    if (v == NULL)
        mg_jerr_f(e, "missing (expected %s)", expected);
    else if (!json_is_string(v))
        mg_jerr_type(e, v, expected);
    else
        s = json_string_value(v);
    mg_jerr_pop(e, old);
    return s;
}

typedef struct route_split {
    mg_service_t *svcs[MG_SPLIT_MAX_SERVICES];
    uint32_t weights[MG_SPLIT_MAX_SERVICES];
    size_t n;
} route_split_t;

/* "split": [{"service": "v1", "weight": 90}, {"service": "v2", "weight": 10}] */
static bool parse_split(mg_jerr_t *e, const json_t *v, mg_routes_t *r, bool services_ok,
                        const json_t *index, route_split_t *out)
{
    static const char *const keys[] = {"service", "weight", NULL};
    char q[200], list[512];
    size_t old = mg_jerr_key(e, "split");
    size_t n = json_is_array(v) ? json_array_size(v) : 0;
    bool ok = true;
    uint64_t total = 0;
    if (!json_is_array(v)) {
        mg_jerr_type(e, v, "array of {service, weight} objects");
        ok = false;
    } else if (n == 0 || n > MG_SPLIT_MAX_SERVICES) {
        mg_jerr_f(e, "%s (got %zu; expected 1-%d services)", n ? "too many services" : "empty", n,
                  MG_SPLIT_MAX_SERVICES);
        ok = false;
        n = 0;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *it = json_array_get(v, i);
        size_t o2 = mg_jerr_index(e, i);
        if (!json_is_object(it)) {
            mg_jerr_type(e, it, "object {service, weight}");
            ok = false;
            mg_jerr_pop(e, o2);
            continue;
        }
        mg_jerr_keys(e, it, keys);
        const char *name = get_route_string(e, it, "service", "string, a key of services");
        uint64_t w = UINT64_MAX;
        if (json_object_get(it, "weight") == NULL) {
            size_t o3 = mg_jerr_key(e, "weight");
            mg_jerr_f(e, "missing (expected an integer weight, e.g. 90; any total)");
            mg_jerr_pop(e, o3);
        }
        opt_uint(e, it, "weight", 0, 1000000, "any total", &w);
        mg_service_t *svc = NULL;
        if (name != NULL && services_ok && (svc = service_lookup(r, index, name)) == NULL) {
            size_t o3 = mg_jerr_key(e, "service");
            mg_jerr_f(e, "unknown service \"%s\" (expected one of: %s)", ESC(q, name),
                      r->nservices ? list_names(list, sizeof(list), NULL, r->nservices, r->services)
                                   : "(none: services is empty)");
            mg_jerr_pop(e, o3);
        }
        for (size_t j = 0; svc != NULL && j < i; j++)
            if (out->svcs[j] == svc) {
                size_t o3 = mg_jerr_key(e, "service");
                mg_jerr_f(e, "service \"%s\" appears twice (same as split[%zu])", ESC(q, name), j);
                mg_jerr_pop(e, o3);
                ok = false;
            }
        if (svc == NULL || w == UINT64_MAX)
            ok = false;
        out->svcs[i] = svc;
        out->weights[i] = w == UINT64_MAX ? 0 : (uint32_t)w;
        total += out->weights[i];
        mg_jerr_pop(e, o2);
    }
    if (ok && total == 0) {
        mg_jerr_f(e, "every weight is 0 (expected at least one service with weight > 0)");
        ok = false;
    }
    out->n = ok ? n : 0;
    mg_jerr_pop(e, old);
    return ok;
}

/*
 * One route. |envs_ok|/|services_ok| say whether those sections can be trusted; when not, the
 * checks against them are skipped (their own errors were reported already).
 */
static void parse_route(mg_jerr_t *e, const json_t *all, size_t index_in_doc, mg_routes_t *r,
                        bool envs_ok, bool services_ok, const json_t *index)
{
    const json_t *v = json_array_get(all, index_in_doc);
    static const char *const keys[] = {"app",        "env",        "service",
                                       "split",      "sticky_header", "retry_post",
                                       "replay_max_bytes", "timeouts_ms", NULL};
    static const char *const timeout_keys[] = {"first_byte", "idle", "total", NULL};
    char q[200], list[512];
    if (!json_is_object(v)) {
        mg_jerr_type(e, v, "object with keys app, env, service");
        return;
    }
    mg_jerr_keys(e, v, keys);
    const char *app = get_route_string(e, v, "app", "string, an app name such as \"digits\"");
    const char *env = get_route_string(e, v, "env", "string, one of envs");
    const char *svcname = NULL;
    route_split_t sp = {0};
    bool ok = app != NULL && env != NULL;
    if (json_object_get(v, "split") != NULL) {
        if (json_object_get(v, "service") != NULL) {
            mg_jerr_f(e, "both service and split given (expected one of them)");
            ok = false;
        }
        ok &= parse_split(e, json_object_get(v, "split"), r, services_ok, index, &sp);
    } else {
        svcname = get_route_string(e, v, "service", "string, a key of services (or a split)");
        ok &= svcname != NULL;
    }
    mg_route_t opts = {.replay_max_bytes = 65536};
    const json_t *sh = json_object_get(v, "sticky_header");
    if (sh != NULL) {
        size_t o2 = mg_jerr_key(e, "sticky_header");
        if (header_name(e, sh, &opts.sticky_header) && json_object_get(v, "split") == NULL)
            mg_jerr_f(e, "sticky_header needs a split (a single service has nothing to stick to)");
        mg_jerr_pop(e, o2);
    }
    mg_jerr_bool(e, v, "retry_post", &opts.retry_post);
    OPT_U32(e, v, "replay_max_bytes", 0, 16u << 20, "request bodies kept for a replay",
            opts.replay_max_bytes);
    const json_t *to = opt_object(e, v, "timeouts_ms", timeout_keys);
    if (to != NULL) {
        size_t o2 = mg_jerr_key(e, "timeouts_ms");
        OPT_U32(e, to, "first_byte", 0, 86400000, "0 = the gateway's", opts.timeouts.first_byte);
        OPT_U32(e, to, "idle", 0, 86400000, "0 = the gateway's", opts.timeouts.idle);
        OPT_U32(e, to, "total", 0, 86400000, "0 = the gateway's", opts.timeouts.total);
        mg_jerr_pop(e, o2);
    }

    size_t old;
    bool upper;
    if (app != NULL) {
        old = mg_jerr_key(e, "app");
        if (*app == '\0') {
            mg_jerr_f(e, "empty app name (expected lowercase letters, digits and '-')");
            ok = false;
        } else if (!is_lower_name(app, &upper)) {
            mg_jerr_f(e, "invalid app \"%s\" (expected %s)", ESC(q, app),
                      upper ? "lowercase: hosts are matched lowercased"
                            : "lowercase letters, digits and '-' only");
            ok = false;
        }
        mg_jerr_pop(e, old);
    }
    if (env != NULL && envs_ok) {
        size_t i = 0;
        while (i < r->nenvs && strcmp(r->envs[i], env) != 0)
            i++;
        if (i == r->nenvs) {
            old = mg_jerr_key(e, "env");
            mg_jerr_f(e, "unknown env \"%s\" (expected one of: %s)", ESC(q, env),
                      list_names(list, sizeof(list), r->envs, r->nenvs, NULL));
            mg_jerr_pop(e, old);
            ok = false;
        }
    }
    mg_service_t *svc = sp.n ? sp.svcs[0] : NULL;
    if (svcname != NULL && services_ok && (svc = service_lookup(r, index, svcname)) == NULL) {
        old = mg_jerr_key(e, "service");
        mg_jerr_f(e, "unknown service \"%s\" (expected one of: %s)", ESC(q, svcname),
                  r->nservices ? list_names(list, sizeof(list), NULL, r->nservices, r->services)
                               : "(none: services is empty)");
        mg_jerr_pop(e, old);
        ok = false;
    }
    if (!ok || !envs_ok) {
        free(opts.sticky_header);
        return;
    }

    size_t alen = strlen(app), elen = strlen(env);
    if (alen + 1 + elen > MAX_LABEL) {
        mg_jerr_f(e,
                  "host label \"%s-%s\" is longer than %d bytes (DNS limit; shorten the app name)",
                  ESC(q, app), env, MAX_LABEL);
        free(opts.sticky_header);
        return;
    }
    /* A route can be unreachable when envs overlap ("a-prod" and "prod"): the host parser
     * takes the longest env, so check it with the parser itself. */
    char label[MAX_LABEL + 1];
    mg_host_t h;
    memcpy(label, app, alen); /* fits: checked against MAX_LABEL above */
    label[alen] = '-';
    memcpy(label + alen + 1, env, elen + 1);
    if (mg_host_parse(label, alen + 1 + elen, "", (const char *const *)r->envs, r->nenvs, &h) !=
        MG_OK) {
        mg_jerr_f(e, "unreachable: host label \"%s\" cannot be parsed (rename the app)", label);
        free(opts.sticky_header);
        return;
    }
    if (h.env_len != elen || strcmp(h.env, env) != 0) {
        mg_jerr_f(e,
                  "unreachable: host \"%s.<domain>\" parses as app \"%.*s\", env \"%s\" (the "
                  "longest env wins; rename the app or the env)",
                  label, (int)h.app_len, h.app, h.env);
        free(opts.sticky_header);
        return;
    }

    uint32_t *slot = slot_find(r, app, alen, env, elen);
    if (*slot != 0) {
        /* Only valid routes are stored, so find the earlier JSON index by content. */
        size_t j = 0;
        for (; j < index_in_doc; j++) {
            const json_t *o = json_array_get(all, j);
            const json_t *a = json_object_get(o, "app"), *en = json_object_get(o, "env");
            if (json_is_string(a) && json_is_string(en) && strcmp(json_string_value(a), app) == 0 &&
                strcmp(json_string_value(en), env) == 0)
                break;
        }
        mg_jerr_f(e,
                  "duplicate route for app \"%s\", env \"%s\" (same as routes[%zu]; expected one "
                  "route per app and env)",
                  ESC(q, app), env, j);
        free(opts.sticky_header);
        return;
    }
    mg_route_t *rt = &r->routes[r->nroutes];
    *rt = opts;
    opts.sticky_header = NULL; /* the route owns it now */
    char salt[MAX_LABEL + 2];
    snprintf(salt, sizeof(salt), "%s-%s", app, env);
    if ((rt->app = strdup(app)) == NULL || (rt->env = strdup(env)) == NULL ||
        (sp.n && ((rt->split = mg_split_new(sp.weights, sp.n, salt)) == NULL ||
                  (rt->split_services = calloc(sp.n, sizeof(*rt->split_services))) == NULL))) {
        free(rt->app);
        free(rt->env);
        mg_split_free(rt->split);
        free(rt->sticky_header);
        memset(rt, 0, sizeof(*rt));
        nomem(e);
        return;
    }
    if (sp.n) {
        memcpy(rt->split_services, sp.svcs, sp.n * sizeof(*sp.svcs));
        rt->nsplit = sp.n;
    }
    rt->service = svc;
    *slot = (uint32_t)(++r->nroutes);
}

static void parse_routes(mg_jerr_t *e, const json_t *doc, mg_routes_t *r, bool envs_ok,
                         bool services_ok, const json_t *index)
{
    const json_t *v = json_object_get(doc, "routes");
    size_t old = mg_jerr_key(e, "routes");
    if (v == NULL) {
        mg_jerr_pop(e, old);
        return;
    }
    if (!json_is_array(v)) {
        mg_jerr_type(e, v, "array of {app, env, service} objects");
        mg_jerr_pop(e, old);
        return;
    }
    size_t n = json_array_size(v);
    size_t nslots = 8;
    while (nslots <= 2 * n) /* at most half full: probes stay short and always end */
        nslots *= 2;
    if (n > UINT32_MAX / 4 || (n > 0 && (r->routes = calloc(n, sizeof(*r->routes))) == NULL) ||
        (r->_slots = calloc(nslots, sizeof(*r->_slots))) == NULL) {
        nomem(e);
        mg_jerr_pop(e, old);
        return;
    }
    r->_nslots = nslots;
    for (size_t i = 0; i < n; i++) {
        size_t o2 = mg_jerr_index(e, i);
        parse_route(e, v, i, r, envs_ok, services_ok, index);
        mg_jerr_pop(e, o2);
    }
    mg_jerr_pop(e, old);
}

static void parse_default(mg_jerr_t *e, const json_t *doc, mg_routes_t *r, bool services_ok,
                          const json_t *index)
{
    const json_t *v = json_object_get(doc, "default_service");
    size_t old = mg_jerr_key(e, "default_service");
    char q[200], list[512];
    if (v == NULL || json_is_null(v)) {
        /* optional */
    } else if (!json_is_string(v)) {
        mg_jerr_type(e, v, "string, a key of services");
    } else if (services_ok &&
               (r->default_service = service_lookup(r, index, json_string_value(v))) == NULL) {
        mg_jerr_f(e, "unknown service \"%s\" (expected one of: %s)", ESC(q, json_string_value(v)),
                  r->nservices ? list_names(list, sizeof(list), NULL, r->nservices, r->services)
                               : "(none: services is empty)");
    }
    mg_jerr_pop(e, old);
}

/* ------------------------------------------------------------------------------------------ */
/* Finishing a valid snapshot: live state, balancers, counters                                  */

static bool dns_pods(mg_service_t *svc, mg_routes_dns_fn fn, void *ud)
{
    struct sockaddr_storage addrs[MAX_PODS];
    size_t n = fn ? fn(ud, svc->name, addrs, MAX_PODS) : 0;
    if (n > MAX_PODS)
        n = MAX_PODS;
    if (n == 0)
        return true;
    if ((svc->pods = calloc(n, sizeof(*svc->pods))) == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        mg_pod_t *pod = &svc->pods[i];
        char ip[INET6_ADDRSTRLEN], name[INET6_ADDRSTRLEN + 10];
        pod->addr = addrs[i];
        pod->weight = 1;
        if (addrs[i].ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&pod->addr;
            inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
            snprintf(name, sizeof(name), "[%s]:%u", ip, ntohs(a->sin6_port));
            pod->addrlen = sizeof(*a);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&pod->addr;
            inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
            snprintf(name, sizeof(name), "%s:%u", ip, ntohs(a->sin_port));
            pod->addrlen = sizeof(*a);
        }
        if ((pod->name = strdup(name)) == NULL)
            return false;
        svc->npods = i + 1;
    }
    return true;
}

static bool finish_service(mg_service_t *svc, mg_routes_dns_fn fn, void *ud)
{
    char sv[300], labels[400];
    mg_stats_label_value(sv, sizeof(sv), svc->name);
    snprintf(labels, sizeof(labels), "service=\"%s\"", sv);
    if ((svc->stats = mg_stats_get(MG_STATS_SERVICE, labels)) == NULL)
        return false;
    if (svc->dns_name && !dns_pods(svc, fn, ud))
        return false;
    if (svc->npods == 0)
        return true;
    uint32_t weights[MAX_PODS];
    const char *names[MAX_PODS];
    atomic_uint *inflight[MAX_PODS];
    for (size_t i = 0; i < svc->npods; i++) {
        mg_pod_t *pod = &svc->pods[i];
        /* its health follows the document once installed (gateway/control.c): a document
         * refused later in its build must leave the serving pods as they are. The snapshot
         * holds a reference until it is freed (service_clear). */
        if ((pod->state = mg_podstate_get(svc->name, pod->name)) == NULL)
            return false;
        weights[i] = pod->weight;
        names[i] = pod->name;
        inflight[i] = &pod->state->inflight;
    }
    mg_balance_opts_t bo = {.workers = g_workers,
                            .slow_start_ms = svc->slow_start_ms,
                            .inflight = inflight,
                            .names = names};
    svc->lb = mg_balance_new((mg_balance_policy_t)svc->policy, weights, svc->npods, &bo);
    return svc->lb != NULL;
}

static bool finish_route(mg_route_t *rt, const char *app, const char *env)
{
    char av[200], ev[200], labels[450];
    mg_stats_label_value(av, sizeof(av), app);
    mg_stats_label_value(ev, sizeof(ev), env);
    snprintf(labels, sizeof(labels), "app=\"%s\",env=\"%s\"", av, ev);
    return (rt->stats = mg_stats_get(MG_STATS_ROUTE, labels)) != NULL;
}

static bool finish(mg_routes_t *r, mg_routes_dns_fn fn, void *ud)
{
    for (size_t i = 0; i < r->nservices; i++)
        if (!finish_service(&r->services[i], fn, ud))
            return false;
    for (size_t i = 0; i < r->nroutes; i++)
        if (!finish_route(&r->routes[i], r->routes[i].app, r->routes[i].env))
            return false;
    if (r->default_service) {
        if ((r->default_route = calloc(1, sizeof(*r->default_route))) == NULL)
            return false;
        r->default_route->service = r->default_service;
        r->default_route->replay_max_bytes = 65536;
        if (!finish_route(r->default_route, "", "(default)"))
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Public API                                                                                   */

mg_routes_t *mg_routes_from_json(const json_t *doc, const char *source, char **errors)
{
    return mg_routes_build(doc, source, NULL, NULL, errors);
}

mg_routes_t *mg_routes_build(const json_t *doc, const char *source, mg_routes_dns_fn fn, void *ud,
                             char **errors)
{
    static const char *const keys[] = {"domain",          "envs", "services", "routes",
                                       "default_service", NULL};
    mg_jerr_t e = {.source = source != NULL ? source : "routing document"};
    json_t *index = NULL;
    if (errors != NULL)
        *errors = NULL;
    mg_routes_t *r = routes_new();
    if (r == NULL) {
        nomem(&e);
        return fail_with(&e, NULL, errors);
    }
    if (doc == NULL || !json_is_object(doc)) {
        if (doc == NULL)
            mg_jerr_f(&e, "no document (expected a JSON object)");
        else
            mg_jerr_type(&e, doc,
                         "object with keys domain, envs, services, routes, default_service");
        return fail_with(&e, r, errors);
    }
    if (json_object_get(doc, "listen") || json_object_get(doc, "tls") ||
        json_is_string(json_object_get(doc, "routes"))) {
        mg_jerr_f(&e, "this is the gateway's config (gateway.json), not a routing document: "
                      "pass it with --config FILE");
        return fail_with(&e, r, errors);
    }
    mg_jerr_keys(&e, doc, keys);
    parse_domain(&e, doc, r);
    bool envs_ok = parse_envs(&e, doc, r);
    bool services_ok = parse_services(&e, doc, r, &index);
    parse_routes(&e, doc, r, envs_ok, services_ok, index);
    parse_default(&e, doc, r, services_ok, index);
    json_decref(index);
    if (e.count == 0 && !e.nomem && !finish(r, fn, ud))
        nomem(&e);
    if (e.count > 0 || e.nomem)
        return fail_with(&e, r, errors);
    free(e.buf);
    return r;
}

mg_routes_t *mg_routes_load(const char *path, char **errors)
{
    json_error_t jerr;
    if (errors != NULL)
        *errors = NULL;
    json_t *doc = mg_json_load_file(path, &jerr);
    if (doc == NULL) {
        /* "PATH:LINE:COL: text", the way compilers print it, so editors can jump there. */
        char src[1100];
        if (jerr.line > 0)
            snprintf(src, sizeof(src), "%s:%d:%d", path, jerr.line, jerr.column);
        else
            snprintf(src, sizeof(src), "%s", path); /* e.g. "unable to open ...: No such file" */
        mg_jerr_t e = {.source = src};
        mg_jerr_f(&e, "%s", jerr.text);
        return fail_with(&e, NULL, errors);
    }
    mg_routes_t *r = mg_routes_from_json(doc, path, errors);
    json_decref(doc);
    return r;
}

mg_routes_t *mg_routes_catchall(const char *pods, mg_upstream_proto_t proto, char **errors)
{
    mg_jerr_t e = {.source = "--backend"};
    if (errors != NULL)
        *errors = NULL;
    mg_routes_t *r = routes_new();
    if (r == NULL || (r->domain = strdup("")) == NULL ||
        (r->services = calloc(1, sizeof(*r->services))) == NULL) {
        nomem(&e);
        return fail_with(&e, r, errors);
    }
    r->nservices = 1;
    mg_service_t *svc = &r->services[0];
    atomic_init(&svc->_rr, 0);
    service_defaults(svc);
    svc->policy = MG_BALANCE_ROUND_ROBIN; /* quick start: the even spread people expect */
    svc->proto = proto;
    if (proto != MG_UP_H2C && proto != MG_UP_H1)
        mg_jerr_f(&e, "unknown backend protocol %d (expected h2c or http1)", (int)proto);
    if ((svc->name = strdup("default")) == NULL ||
        (svc->pods = calloc(MAX_PODS, sizeof(*svc->pods))) == NULL) {
        nomem(&e);
        return fail_with(&e, r, errors);
    }
    if (pods == NULL)
        pods = "";
    size_t n = 0;
    const char *p = pods;
    char q[200];
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) { /* tolerate "a:1, b:2" */
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == 0) {
            mg_jerr_f(&e, "empty pod in \"%s\" (expected H:P[,H:P...])", ESC(q, pods));
        } else if (n == MAX_PODS) {
            mg_jerr_f(&e, "too many pods (expected at most %d)", MAX_PODS);
            break;
        } else {
            char one[300];
            if (len >= sizeof(one)) {
                mg_jerr_f(&e, "invalid address \"%.40s...\" (too long)", p);
            } else {
                memcpy(one, p, len);
                one[len] = '\0';
                svc->pods[n].weight = 1;
                if (parse_pod(&e, one, &svc->pods[n])) {
                    for (size_t j = 0; j < n; j++)
                        if (strcmp(svc->pods[j].name, one) == 0) {
                            mg_jerr_f(&e, "duplicate pod \"%s\" (expected each pod once)",
                                      ESC(q, one));
                            break;
                        }
                    n++;
                }
                svc->npods = n;
            }
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    if (e.count == 0 && n == 0)
        mg_jerr_f(&e, "no pods given (expected H:P[,H:P...])");
    if (e.count > 0 || e.nomem)
        return fail_with(&e, r, errors);
    r->default_service = svc;
    if (!finish(r, NULL, NULL)) {
        nomem(&e);
        return fail_with(&e, r, errors);
    }
    free(e.buf);
    return r;
}

void mg_routes_ref(mg_routes_t *r)
{
    assert(r->_magic == MG_ROUTES_MAGIC);
    atomic_fetch_add_explicit(&r->_refs, 1, memory_order_relaxed);
}

void mg_routes_unref(mg_routes_t *r)
{
    if (r == NULL)
        return;
    assert(r->_magic == MG_ROUTES_MAGIC);
    /* acq_rel: every use of the snapshot by other threads happens before the free. */
    if (atomic_fetch_sub_explicit(&r->_refs, 1, memory_order_acq_rel) == 1)
        routes_free(r);
}

static void copy_out(char *dst, size_t cap, const char *s, size_t n)
{
    if (dst == NULL || cap == 0)
        return;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

mg_service_t *mg_routes_match(const mg_routes_t *r, const char *host, size_t len, char *app,
                              char *env, size_t cap)
{
    const mg_route_t *rt = mg_routes_match_route(r, host, len, app, env, cap);
    return rt ? rt->service : NULL;
}

const mg_route_t *mg_routes_match_route(const mg_routes_t *r, const char *host, size_t len,
                                        char *app, char *env, size_t cap)
{
    copy_out(app, cap, "", 0);
    copy_out(env, cap, "", 0);
    if (r == NULL)
        return NULL;
    if (host == NULL || len == 0 || len > MAX_HOST || r->nenvs == 0)
        return r->default_route;
    char lower[MAX_HOST];
    for (size_t i = 0; i < len; i++) {
        char c = host[i];
        lower[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    mg_host_t h;
    if (mg_host_parse(lower, len, r->domain, (const char *const *)r->envs, r->nenvs, &h) != MG_OK)
        return r->default_route;
    copy_out(app, cap, h.app, h.app_len);
    copy_out(env, cap, h.env, h.env_len);
    const mg_route_t *rt = route_find(r, h.app, h.app_len, h.env, h.env_len);
    return rt != NULL ? rt : r->default_route;
}

int mg_service_pick(mg_service_t *svc, uint64_t tried)
{
    if (svc == NULL || svc->npods == 0 || svc->npods > MAX_PODS)
        return -1;
    size_t n = svc->npods;
    uint64_t all = n == 64 ? UINT64_MAX : ((uint64_t)1 << n) - 1;
    if ((tried & all) == all)
        return -1;
    /* Relaxed: the cursor only spreads load; no other memory is published through it. */
    size_t start = atomic_fetch_add_explicit(&svc->_rr, 1, memory_order_relaxed) % n;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if ((tried & ((uint64_t)1 << i)) == 0)
            return (int)i;
    }
    return -1; /* not reached: some bit below n is clear */
}
