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
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/host.h"

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
/* Error collection: "SOURCE: json.path: problem" lines, all of them, in document order.       */

typedef struct ectx {
    const char *source;
    char *buf; /* '\n'-separated lines, no trailing newline */
    size_t len, cap;
    size_t count;
    bool nomem; /* an allocation failed: the result is "out of memory", whatever else happened */
    char path[512];
    size_t plen; /* strlen(path), always */
} ectx_t;

static void buf_append(ectx_t *e, const char *s, size_t n)
{
    if (e->nomem)
        return;
    if (e->len + n + 1 > e->cap) {
        size_t ncap = e->cap ? e->cap : 256;
        while (ncap < e->len + n + 1)
            ncap *= 2;
        char *nb = realloc(e->buf, ncap);
        if (nb == NULL) {
            e->nomem = true;
            return;
        }
        e->buf = nb;
        e->cap = ncap;
    }
    memcpy(e->buf + e->len, s, n);
    e->len += n;
    e->buf[e->len] = '\0';
}

static void errf(ectx_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void errf(ectx_t *e, const char *fmt, ...)
{
    char msg[1024], line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int n = e->plen > 0 ? snprintf(line, sizeof(line), "%s: %s: %s", e->source, e->path, msg)
                        : snprintf(line, sizeof(line), "%s: %s", e->source, msg);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = (int)sizeof(line) - 1;
    e->count++;
    if (e->len > 0)
        buf_append(e, "\n", 1);
    buf_append(e, line, (size_t)n);
}

static void nomem(ectx_t *e)
{
    e->nomem = true;
}

/*
 * Copies |s| into |dst| with control characters, quotes and backslashes escaped, cut at
 * |max| input bytes with "...": values come from operators' files (and fuzzers) and end up on
 * terminals.
 */
static const char *esc(char *dst, size_t cap, const char *s, size_t max)
{
    size_t o = 0, i = 0;
    for (; s[i] != '\0' && i < max && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
        } else if (c == '"' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else {
            dst[o++] = (char)c;
        }
    }
    if (s[i] != '\0' && o + 4 <= cap) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}

#define ESC(buf, s) esc((buf), sizeof(buf), (s), 80)

static void path_set(ectx_t *e, size_t len)
{
    e->plen = len;
    e->path[len] = '\0';
}

/* Appends ".key" (or "key" at the root) to the path; returns the length to restore. */
static size_t path_key(ectx_t *e, const char *key)
{
    size_t old = e->plen;
    char k[160];
    esc(k, sizeof(k), key, 64);
    int n = snprintf(e->path + e->plen, sizeof(e->path) - e->plen, "%s%s", old ? "." : "", k);
    if (n > 0)
        e->plen +=
            (size_t)n < sizeof(e->path) - e->plen ? (size_t)n : sizeof(e->path) - e->plen - 1;
    return old;
}

static size_t path_index(ectx_t *e, size_t i)
{
    size_t old = e->plen;
    int n = snprintf(e->path + e->plen, sizeof(e->path) - e->plen, "[%zu]", i);
    if (n > 0)
        e->plen +=
            (size_t)n < sizeof(e->path) - e->plen ? (size_t)n : sizeof(e->path) - e->plen - 1;
    return old;
}

static const char *describe(const json_t *v, char *out, size_t cap)
{
    char s[200];
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        snprintf(out, cap, "string \"%s\"", ESC(s, json_string_value(v)));
        return out;
    case JSON_INTEGER:
        snprintf(out, cap, "number %" JSON_INTEGER_FORMAT, json_integer_value(v));
        return out;
    case JSON_REAL:
        snprintf(out, cap, "number %g", json_real_value(v));
        return out;
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

static void type_error(ectx_t *e, const json_t *v, const char *expected)
{
    char d[256];
    errf(e, "wrong type (got %s; expected %s)", describe(v, d, sizeof(d)), expected);
}

/* Reports every key of |obj| that is not in the NULL-terminated |keys|, listing the valid ones. */
static void check_keys(ectx_t *e, const json_t *obj, const char *const *keys)
{
    char valid[256] = "";
    size_t o = 0;
    for (size_t i = 0; keys[i] != NULL; i++)
        o += (size_t)snprintf(valid + o, sizeof(valid) - o, "%s%s", i ? ", " : "", keys[i]);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        size_t i = 0;
        while (keys[i] != NULL && strcmp(keys[i], k) != 0)
            i++;
        if (keys[i] == NULL) {
            size_t old = path_key(e, k);
            errf(e, "unknown key (valid keys: %s)", valid);
            path_set(e, old);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Snapshot memory                                                                              */

static void service_clear(mg_service_t *s)
{
    free(s->name);
    if (s->pods != NULL)
        for (size_t i = 0; i < s->npods; i++)
            free(s->pods[i].name);
    free(s->pods);
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
        }
    free(r->routes);
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
static mg_routes_t *fail_with(ectx_t *e, mg_routes_t *r, char **errors)
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
        errf(e, "out of memory while loading the routing document");
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
static bool parse_pod(ectx_t *e, const char *s, mg_pod_t *pod)
{
    char host[256], q[200];
    unsigned port;
    const char *why;
    if (mg_host_split_port(s, host, sizeof(host), &port, &why) != MG_OK) {
        errf(e, "invalid address \"%s\" (%s)", ESC(q, s), why);
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
            errf(e, "cannot resolve \"%s\" (%s; expected a resolvable host name or an IP address)",
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
static bool pod_is_duplicate(ectx_t *e, const mg_service_t *svc, size_t i)
{
    char q[200];
    for (size_t j = 0; j < i; j++)
        if (svc->pods[j].name != NULL && strcmp(svc->pods[j].name, svc->pods[i].name) == 0) {
            errf(e, "duplicate pod \"%s\" (same as pods[%zu]; expected each pod once)",
                 ESC(q, svc->pods[i].name), j);
            return true;
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

static void parse_domain(ectx_t *e, const json_t *doc, mg_routes_t *r)
{
    const json_t *v = json_object_get(doc, "domain");
    size_t old = path_key(e, "domain");
    char q[200];
    if (v == NULL) {
        errf(e, "missing (expected the domain that hosts are under, e.g. \"example.com\")");
    } else if (!json_is_string(v)) {
        type_error(e, v, "string, a domain name such as \"example.com\"");
    } else {
        const char *s = json_string_value(v);
        size_t n = strlen(s);
        if (n == 0) {
            errf(e, "empty (expected a domain name such as \"example.com\")");
        } else if (!mg_host_is_valid_name(s, n)) {
            errf(e,
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
    path_set(e, old);
}

/* Returns true when r->envs is usable for checking routes. */
static bool parse_envs(ectx_t *e, const json_t *doc, mg_routes_t *r)
{
    const json_t *v = json_object_get(doc, "envs");
    size_t n = v == NULL ? sizeof(default_envs) / sizeof(default_envs[0]) : 0;
    bool ok = true;
    size_t old = path_key(e, "envs");
    char q[200];
    if (v != NULL) {
        if (!json_is_array(v)) {
            type_error(e, v, "array of env names, e.g. [\"staging\", \"production\"]");
            ok = false;
        } else if ((n = json_array_size(v)) == 0) {
            errf(e, "empty (expected at least one env, e.g. [\"production\"])");
            ok = false;
        } else if (n > MAX_ENVS) {
            errf(e, "too many envs (got %zu; expected at most %d)", n, MAX_ENVS);
            ok = false;
        }
    }
    if (!ok) {
        path_set(e, old);
        return false;
    }
    if ((r->envs = calloc(n, sizeof(*r->envs))) == NULL) {
        nomem(e);
        path_set(e, old);
        return false;
    }
    r->nenvs = n;
    for (size_t i = 0; i < n; i++) {
        const char *s = default_envs[i < 4 ? i : 0];
        if (v != NULL) {
            const json_t *ev = json_array_get(v, i);
            size_t o2 = path_index(e, i);
            bool upper, good = false;
            if (!json_is_string(ev)) {
                type_error(e, ev, "string");
            } else if (*(s = json_string_value(ev)) == '\0') {
                errf(e, "empty env name (expected lowercase letters, digits and '-')");
            } else if (!is_lower_name(s, &upper)) {
                errf(e, "invalid env \"%s\" (expected %s)", ESC(q, s),
                     upper ? "lowercase: hosts are matched lowercased"
                           : "lowercase letters, digits and '-' only");
            } else if (strlen(s) > MAX_LABEL - 2) {
                errf(e, "env \"%s\" too long (expected at most %d bytes)", ESC(q, s),
                     MAX_LABEL - 2);
            } else {
                good = true;
                for (size_t j = 0; j < i; j++)
                    if (r->envs[j] != NULL && strcmp(r->envs[j], s) == 0) {
                        errf(e, "duplicate env \"%s\" (same as envs[%zu]; expected each once)",
                             ESC(q, s), j);
                        good = false;
                        break;
                    }
            }
            path_set(e, o2);
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
    path_set(e, old);
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

static void parse_service(ectx_t *e, const char *name, const json_t *v, mg_service_t *svc)
{
    static const char *const keys[] = {"protocol", "pods", NULL};
    char q[200];
    svc->proto = MG_UP_H2C;
    if (!is_service_name(name))
        errf(e, "invalid service name \"%s\" (expected 1-%d letters, digits, '-' or '_')",
             ESC(q, name), MAX_SERVICE_NAME);
    if ((svc->name = strdup(name)) == NULL) {
        nomem(e);
        return;
    }
    if (!json_is_object(v)) {
        type_error(e, v, "object with keys protocol, pods");
        return;
    }
    check_keys(e, v, keys);

    const json_t *pv = json_object_get(v, "protocol");
    size_t old = path_key(e, "protocol");
    if (pv != NULL) {
        if (!json_is_string(pv))
            type_error(e, pv, "string \"h2c\" or \"http1\"");
        else if (strcmp(json_string_value(pv), "h2c") == 0)
            svc->proto = MG_UP_H2C;
        else if (strcmp(json_string_value(pv), "http1") == 0)
            svc->proto = MG_UP_H1;
        else
            errf(e, "unknown protocol \"%s\" (expected \"h2c\" or \"http1\")",
                 ESC(q, json_string_value(pv)));
    }
    path_set(e, old);

    const json_t *pods = json_object_get(v, "pods");
    path_key(e, "pods");
    size_t n = 0;
    if (pods == NULL) {
        errf(e, "missing (expected an array of 1-%d \"host:port\" strings)", MAX_PODS);
    } else if (!json_is_array(pods)) {
        type_error(e, pods, "array of \"host:port\" strings");
    } else if ((n = json_array_size(pods)) == 0 || n > MAX_PODS) {
        errf(e, "%s (got %zu pods; expected 1-%d)", n ? "too many pods" : "no pods", n, MAX_PODS);
        n = 0;
    }
    if (n > 0) {
        if ((svc->pods = calloc(n, sizeof(*svc->pods))) == NULL) {
            nomem(e);
        } else {
            svc->npods = n;
            for (size_t i = 0; i < n; i++) {
                const json_t *pod = json_array_get(pods, i);
                size_t o2 = path_index(e, i);
                if (!json_is_string(pod))
                    type_error(e, pod, "string \"host:port\"");
                else if (parse_pod(e, json_string_value(pod), &svc->pods[i]))
                    pod_is_duplicate(e, svc, i);
                path_set(e, o2);
            }
        }
    }
    path_set(e, old);
}

/* Builds r->services; *index maps each name to its position (for route lookups). Returns true
 * when the set of service names is known, even if some services have errors. */
static bool parse_services(ectx_t *e, const json_t *doc, mg_routes_t *r, json_t **index)
{
    const json_t *v = json_object_get(doc, "services");
    size_t old = path_key(e, "services");
    bool ok = false;
    if (v == NULL) {
        ok = true; /* no services: every host gets 404 (or the check of default_service fails) */
    } else if (!json_is_object(v)) {
        type_error(e, v, "object mapping service names to {protocol, pods}");
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
            size_t o2 = path_key(e, name);
            parse_service(e, name, sv, svc);
            path_set(e, o2);
            if (json_object_set_new(*index, name, json_integer((json_int_t)(i - 1))) != 0)
                nomem(e);
        }
    }
    path_set(e, old);
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

static const char *get_route_string(ectx_t *e, const json_t *obj, const char *key,
                                    const char *expected)
{
    const json_t *v = json_object_get(obj, key);
    const char *s = NULL;
    size_t old = path_key(e, key);
    if (v == NULL)
        errf(e, "missing (expected %s)", expected);
    else if (!json_is_string(v))
        type_error(e, v, expected);
    else
        s = json_string_value(v);
    path_set(e, old);
    return s;
}

/*
 * One route. |envs_ok|/|services_ok| say whether those sections can be trusted; when not, the
 * checks against them are skipped (their own errors were reported already).
 */
static void parse_route(ectx_t *e, const json_t *all, size_t index_in_doc, mg_routes_t *r,
                        bool envs_ok, bool services_ok, const json_t *index)
{
    const json_t *v = json_array_get(all, index_in_doc);
    static const char *const keys[] = {"app", "env", "service", NULL};
    char q[200], list[512];
    if (!json_is_object(v)) {
        type_error(e, v, "object with keys app, env, service");
        return;
    }
    check_keys(e, v, keys);
    const char *app = get_route_string(e, v, "app", "string, an app name such as \"digits\"");
    const char *env = get_route_string(e, v, "env", "string, one of envs");
    const char *svcname = get_route_string(e, v, "service", "string, a key of services");
    bool ok = app != NULL && env != NULL && svcname != NULL;

    size_t old;
    bool upper;
    if (app != NULL) {
        old = path_key(e, "app");
        if (*app == '\0') {
            errf(e, "empty app name (expected lowercase letters, digits and '-')");
            ok = false;
        } else if (!is_lower_name(app, &upper)) {
            errf(e, "invalid app \"%s\" (expected %s)", ESC(q, app),
                 upper ? "lowercase: hosts are matched lowercased"
                       : "lowercase letters, digits and '-' only");
            ok = false;
        }
        path_set(e, old);
    }
    if (env != NULL && envs_ok) {
        size_t i = 0;
        while (i < r->nenvs && strcmp(r->envs[i], env) != 0)
            i++;
        if (i == r->nenvs) {
            old = path_key(e, "env");
            errf(e, "unknown env \"%s\" (expected one of: %s)", ESC(q, env),
                 list_names(list, sizeof(list), r->envs, r->nenvs, NULL));
            path_set(e, old);
            ok = false;
        }
    }
    mg_service_t *svc = NULL;
    if (svcname != NULL && services_ok && (svc = service_lookup(r, index, svcname)) == NULL) {
        old = path_key(e, "service");
        errf(e, "unknown service \"%s\" (expected one of: %s)", ESC(q, svcname),
             r->nservices ? list_names(list, sizeof(list), NULL, r->nservices, r->services)
                          : "(none: services is empty)");
        path_set(e, old);
        ok = false;
    }
    if (!ok || !envs_ok)
        return;

    size_t alen = strlen(app), elen = strlen(env);
    if (alen + 1 + elen > MAX_LABEL) {
        errf(e, "host label \"%s-%s\" is longer than %d bytes (DNS limit; shorten the app name)",
             ESC(q, app), env, MAX_LABEL);
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
        errf(e, "unreachable: host label \"%s\" cannot be parsed (rename the app)", label);
        return;
    }
    if (h.env_len != elen || strcmp(h.env, env) != 0) {
        errf(e,
             "unreachable: host \"%s.<domain>\" parses as app \"%.*s\", env \"%s\" (the "
             "longest env wins; rename the app or the env)",
             label, (int)h.app_len, h.app, h.env);
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
        errf(e,
             "duplicate route for app \"%s\", env \"%s\" (same as routes[%zu]; expected one "
             "route per app and env)",
             ESC(q, app), env, j);
        return;
    }
    mg_route_t *rt = &r->routes[r->nroutes];
    if ((rt->app = strdup(app)) == NULL || (rt->env = strdup(env)) == NULL) {
        free(rt->app);
        rt->app = NULL;
        nomem(e);
        return;
    }
    rt->service = svc;
    *slot = (uint32_t)(++r->nroutes);
}

static void parse_routes(ectx_t *e, const json_t *doc, mg_routes_t *r, bool envs_ok,
                         bool services_ok, const json_t *index)
{
    const json_t *v = json_object_get(doc, "routes");
    size_t old = path_key(e, "routes");
    if (v == NULL) {
        path_set(e, old);
        return;
    }
    if (!json_is_array(v)) {
        type_error(e, v, "array of {app, env, service} objects");
        path_set(e, old);
        return;
    }
    size_t n = json_array_size(v);
    size_t nslots = 8;
    while (nslots <= 2 * n) /* at most half full: probes stay short and always end */
        nslots *= 2;
    if (n > UINT32_MAX / 4 || (n > 0 && (r->routes = calloc(n, sizeof(*r->routes))) == NULL) ||
        (r->_slots = calloc(nslots, sizeof(*r->_slots))) == NULL) {
        nomem(e);
        path_set(e, old);
        return;
    }
    r->_nslots = nslots;
    for (size_t i = 0; i < n; i++) {
        size_t o2 = path_index(e, i);
        parse_route(e, v, i, r, envs_ok, services_ok, index);
        path_set(e, o2);
    }
    path_set(e, old);
}

static void parse_default(ectx_t *e, const json_t *doc, mg_routes_t *r, bool services_ok,
                          const json_t *index)
{
    const json_t *v = json_object_get(doc, "default_service");
    size_t old = path_key(e, "default_service");
    char q[200], list[512];
    if (v == NULL || json_is_null(v)) {
        /* optional */
    } else if (!json_is_string(v)) {
        type_error(e, v, "string, a key of services");
    } else if (services_ok &&
               (r->default_service = service_lookup(r, index, json_string_value(v))) == NULL) {
        errf(e, "unknown service \"%s\" (expected one of: %s)", ESC(q, json_string_value(v)),
             r->nservices ? list_names(list, sizeof(list), NULL, r->nservices, r->services)
                          : "(none: services is empty)");
    }
    path_set(e, old);
}

/* ------------------------------------------------------------------------------------------ */
/* Public API                                                                                   */

mg_routes_t *mg_routes_from_json(const json_t *doc, const char *source, char **errors)
{
    static const char *const keys[] = {"domain",          "envs", "services", "routes",
                                       "default_service", NULL};
    ectx_t e = {.source = source != NULL ? source : "routing document"};
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
            errf(&e, "no document (expected a JSON object)");
        else
            type_error(&e, doc, "object with keys domain, envs, services, routes, default_service");
        return fail_with(&e, r, errors);
    }
    check_keys(&e, doc, keys);
    parse_domain(&e, doc, r);
    bool envs_ok = parse_envs(&e, doc, r);
    bool services_ok = parse_services(&e, doc, r, &index);
    parse_routes(&e, doc, r, envs_ok, services_ok, index);
    parse_default(&e, doc, r, services_ok, index);
    json_decref(index);
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
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        /* "PATH:LINE:COL: text", the way compilers print it, so editors can jump there. */
        char src[1100];
        if (jerr.line > 0)
            snprintf(src, sizeof(src), "%s:%d:%d", path, jerr.line, jerr.column);
        else
            snprintf(src, sizeof(src), "%s", path); /* e.g. "unable to open ...: No such file" */
        ectx_t e = {.source = src};
        errf(&e, "%s", jerr.text);
        return fail_with(&e, NULL, errors);
    }
    mg_routes_t *r = mg_routes_from_json(doc, path, errors);
    json_decref(doc);
    return r;
}

mg_routes_t *mg_routes_catchall(const char *pods, mg_upstream_proto_t proto, char **errors)
{
    ectx_t e = {.source = "--backend"};
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
    svc->proto = proto;
    if (proto != MG_UP_H2C && proto != MG_UP_H1)
        errf(&e, "unknown backend protocol %d (expected h2c or http1)", (int)proto);
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
            errf(&e, "empty pod in \"%s\" (expected H:P[,H:P...])", ESC(q, pods));
        } else if (n == MAX_PODS) {
            errf(&e, "too many pods (expected at most %d)", MAX_PODS);
            break;
        } else {
            char one[300];
            if (len >= sizeof(one)) {
                errf(&e, "invalid address \"%.40s...\" (too long)", p);
            } else {
                memcpy(one, p, len);
                one[len] = '\0';
                if (parse_pod(&e, one, &svc->pods[n])) {
                    for (size_t j = 0; j < n; j++)
                        if (strcmp(svc->pods[j].name, one) == 0) {
                            errf(&e, "duplicate pod \"%s\" (expected each pod once)", ESC(q, one));
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
        errf(&e, "no pods given (expected H:P[,H:P...])");
    if (e.count > 0 || e.nomem)
        return fail_with(&e, r, errors);
    r->default_service = svc;
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
    copy_out(app, cap, "", 0);
    copy_out(env, cap, "", 0);
    if (r == NULL)
        return NULL;
    if (host == NULL || len == 0 || len > MAX_HOST || r->nenvs == 0)
        return r->default_service;
    char lower[MAX_HOST];
    for (size_t i = 0; i < len; i++) {
        char c = host[i];
        lower[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    mg_host_t h;
    if (mg_host_parse(lower, len, r->domain, (const char *const *)r->envs, r->nenvs, &h) != MG_OK)
        return r->default_service;
    copy_out(app, cap, h.app, h.app_len);
    copy_out(env, cap, h.env, h.env_len);
    const mg_route_t *rt = route_find(r, h.app, h.app_len, h.env, h.env_len);
    return rt != NULL ? rt->service : r->default_service;
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
