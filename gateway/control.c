/*
 * gateway/control.c - routing documents, health checks and DNS discovery (see control.h).
 *
 * State kept between snapshots: the last good routing document (JSON), the addresses each DNS
 * service resolved to, and the set of pods under active checks. A health verdict is written to
 * the pod's shared state (routing/podstate) by the checker's callback; a DNS change rebuilds
 * the snapshot from the kept document, which picks up the same pod states by name.
 *
 * A reloaded snapshot waiting for its checks' first results (offer) runs the checks that differ
 * from those in force under keys of its own, WARMING_MARK + key, whose verdicts touch no pod
 * state: the routes in force share the pod states and go on following their own checks. At
 * takeover each such key hands its verdict to the real one (mg_hc_watch's twin rule).
 */
#include "gateway/control.h"

#include <inttypes.h>
#include <jansson.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/jsonerr.h"
#include "common/log.h"
#include "common/stats.h"
#include "routing/discovery.h"
#include "routing/healthcheck.h"
#include "routing/podstate.h"

typedef struct dns_entry {
    char *service;
    struct sockaddr_storage addrs[MG_DISC_MAX_ADDRS];
    size_t n;
    bool seen; /* still named by the current document */
    struct dns_entry *next;
} dns_entry_t;

typedef struct watched {
    char *key; /* "service/host:port" */
    bool seen;
    struct watched *next;
} watched_t;

/* Check keys, listed, and in a tsearch tree by key: a reload of thousands of pods marks each
 * of them seen */
typedef struct keyset {
    watched_t *head;
    void *tree;
} keyset_t;

struct mg_control {
    struct event_base *base;
    mg_control_install_fn install;
    void *ud;
    char *path;
    json_t *doc;           /* the last good routing document */
    json_t *doc_in_force;  /* the one the routes in force come from (doc, unless a reload waits) */
    mg_routes_t *in_force; /* those routes (a reference: DNS rebuilds them during a wait) */
    mg_hc_t *hc;
    mg_disc_t *disc; /* NULL until a document names a DNS service */
    char *nameserver;
    dns_entry_t *dns;
    keyset_t watched;
    keyset_t warming;       /* the pending snapshot's own checks: WARMING_MARK keys */
    mg_routes_t *pending;   /* a reloaded snapshot waiting for its new checks' first results */
    uint64_t warm_until_ms; /* ... at most until then */
    size_t warm_from;       /* ... and the pods before this one (flat index) have theirs */
    uint32_t wait_max_ms;   /* and never longer than this after its reload */
    struct event *warm;     /* polls those checks while there is a pending snapshot */
};

/* How often a pending snapshot's checks are looked at, and the slack past their own bound
 * (first check within interval_ms / 10, over within timeout_ms) before it takes over anyway. */
#define WARM_POLL_MS 5
#define WARM_SLACK_MS 250
/* how long a DNS watch's first answer may take: discovery's 2 s timeout and 2 attempts, the
 * second with twice the timeout (c-ares) */
#define WARM_DNS_MS 6000
/* Starts the check key of a pending snapshot's own check; no service name has it */
#define WARMING_MARK '+'

/* ---------- health ---------- */

static void on_health(void *ud, const char *key, mg_hc_state_t state, const char *reason)
{
    bool warming = key[0] == WARMING_MARK;
    key += warming;
    const char *slash = strchr(key, '/');
    if (slash == NULL)
        return;
    char service[256];
    snprintf(service, sizeof(service), "%.*s", (int)(slash - key), key);
    if (warming) { /* the routes in force do not run this check: their pod state stays */
        MG_LOG(MG_LOG_INFO, "health",
               "service %s pod %s is %s (%s) by the new check of the reload waiting to take over",
               service, slash + 1, mg_hc_state_name(state), reason ? reason : "");
        return;
    }
    /* a checked pod is in the routes in force, which hold its state: this finds it (and had it
     * gone, the new state would go with the reference dropped here) */
    mg_podstate_t *ps = mg_podstate_get(service, slash + 1);
    if (ps == NULL)
        return;
    mg_pod_health_t h = state == MG_HC_HEALTHY     ? MG_POD_HEALTH_HEALTHY
                        : state == MG_HC_UNHEALTHY ? MG_POD_HEALTH_UNHEALTHY
                                                   : MG_POD_HEALTH_UNKNOWN;
    mg_podstate_set_health(ps, h);
    mg_podstate_unref(ps);
    MG_LOG(h == MG_POD_HEALTH_HEALTHY ? MG_LOG_INFO : MG_LOG_WARN, "health",
           "service %s pod %s is %s (%s)", service, slash + 1, mg_hc_state_name(state),
           reason ? reason : "");
}

/* The check key of |pod| of |svc|: "service/host:port". */
static void check_key(char *key, size_t cap, const mg_service_t *svc, const mg_pod_t *pod)
{
    snprintf(key, cap, "%s/%s", svc->name, pod->name);
}

static int by_key(const void *a, const void *b)
{
    return strcmp(((const watched_t *)a)->key, ((const watched_t *)b)->key);
}

/* Marks |key| seen in |set|, adding it if new (out of memory: left out, as if unseen). */
static void see_key(keyset_t *set, const char *key)
{
    const watched_t probe = {.key = (char *)key};
    watched_t *const *found = tfind(&probe, &set->tree, by_key);
    watched_t *w = found ? *found : NULL;
    if (w == NULL) {
        if ((w = calloc(1, sizeof(*w))) == NULL || (w->key = strdup(key)) == NULL ||
            tsearch(w, &set->tree, by_key) == NULL) {
            if (w)
                free(w->key);
            free(w);
            return;
        }
        w->next = set->head;
        set->head = w;
    }
    w->seen = true;
}

/* Stops the checks of |set| not seen since their marks were cleared, and forgets them. */
static void unwatch_unseen(mg_control_t *c, keyset_t *set)
{
    for (watched_t **wp = &set->head; *wp;) {
        watched_t *w = *wp;
        if (w->seen) {
            wp = &w->next;
            continue;
        }
        mg_hc_unwatch(c->hc, w->key);
        *wp = w->next;
        tdelete(w, &set->tree, by_key);
        free(w->key);
        free(w);
    }
}

static void unsee_all(keyset_t *set)
{
    for (watched_t *w = set->head; w; w = w->next)
        w->seen = false;
}

static void free_keys(keyset_t *set)
{
    for (watched_t *w = set->head; w; w = w->next)
        tdelete(w, &set->tree, by_key);
    while (set->head) {
        watched_t *w = set->head;
        set->head = w->next;
        free(w->key);
        free(w);
    }
}

static mg_hc_conf_t check_conf(const mg_service_t *svc)
{
    return (mg_hc_conf_t){
        .path = svc->health.path,
        .interval_ms = svc->health.interval_ms,
        .timeout_ms = svc->health.timeout_ms,
        .healthy_threshold = svc->health.healthy_threshold,
        .unhealthy_threshold = svc->health.unhealthy_threshold,
        .expect_version = svc->model_version,
    };
}

/* Watches every pod of every service of |r| (the snapshot in force) with a health check and
 * gives each pod the standing its check implies. Checks |r| does not name stay until
 * unwatch_unseen. */
static void watch_checks(mg_control_t *c, const mg_routes_t *r)
{
    unsee_all(&c->watched);
    for (size_t i = 0; i < r->nservices; i++) {
        const mg_service_t *svc = &r->services[i];
        if (svc->health.path == NULL) { /* judged by passive detection alone (again) */
            for (size_t k = 0; k < svc->npods; k++)
                if (atomic_load(&svc->pods[k].state->health) != MG_POD_HEALTH_UNCHECKED)
                    mg_podstate_set_health(svc->pods[k].state, MG_POD_HEALTH_UNCHECKED);
            continue;
        }
        mg_hc_conf_t hc = check_conf(svc);
        for (size_t k = 0; k < svc->npods; k++) {
            const mg_pod_t *pod = &svc->pods[k];
            char key[512];
            check_key(key, sizeof(key), svc, pod);
            if (mg_hc_watch(c->hc, key, (const struct sockaddr *)&pod->addr, pod->addrlen,
                            svc->proto, &hc) != MG_OK) {
                /* refused (logged by the checker): judge the pod without active checks rather
                 * than keep it out for good */
                mg_podstate_set_health(pod->state, MG_POD_HEALTH_UNCHECKED);
                continue;
            }
            see_key(&c->watched, key);
            /* A check restarted by a changed path or version, or added to a pod that served
             * without one, has no verdict yet: a pod the routes in force use keeps the standing
             * it had until the new check reaches its own (on_health), so a reload never takes
             * a serving service out at once. A pod they do not use (never routed to, or back
             * in a service it left) has no standing to keep and waits for its first check. */
            mg_hc_state_t st = mg_hc_state(c->hc, key);
            int cur = atomic_load(&pod->state->health);
            mg_pod_health_t h = st == MG_HC_HEALTHY     ? MG_POD_HEALTH_HEALTHY
                                : st == MG_HC_UNHEALTHY ? MG_POD_HEALTH_UNHEALTHY
                                                        : MG_POD_HEALTH_UNKNOWN;
            if (h == MG_POD_HEALTH_UNKNOWN && cur != MG_POD_HEALTH_UNKNOWN &&
                mg_podstate_in_routing(pod->state))
                continue;
            if (cur != (int)h)
                mg_podstate_set_health(pod->state, h);
        }
    }
}

/* Starts the checks of a pending snapshot |r| that the routes in force do not run (a new pod
 * or service, another path, version or protocol) under WARMING_MARK keys, and stops those of
 * a pending snapshot it replaces that |r| does not run. A check the routes in force run is
 * left as it is, its timing too, until |r| takes over. */
static void warm_checks(mg_control_t *c, const mg_routes_t *r)
{
    unsee_all(&c->warming);
    for (size_t i = 0; i < r->nservices; i++) {
        const mg_service_t *svc = &r->services[i];
        if (svc->health.path == NULL)
            continue;
        mg_hc_conf_t hc = check_conf(svc);
        for (size_t k = 0; k < svc->npods; k++) {
            const mg_pod_t *pod = &svc->pods[k];
            const struct sockaddr *sa = (const struct sockaddr *)&pod->addr;
            char key[512];
            key[0] = WARMING_MARK;
            check_key(key + 1, sizeof(key) - 1, svc, pod);
            if (!mg_hc_runs(c->hc, key + 1, sa, pod->addrlen, svc->proto, &hc) &&
                mg_hc_watch(c->hc, key, sa, pod->addrlen, svc->proto, &hc) == MG_OK)
                see_key(&c->warming, key);
        }
    }
    unwatch_unseen(c, &c->warming);
}

/* Ends the pending snapshot's own checks: each real key restarts, and takes its verdict from
 * its warming twin when the routes in force next run it (watch_checks). */
static void hand_over_checks(mg_control_t *c)
{
    for (watched_t *w = c->warming.head; w; w = w->next)
        mg_hc_unwatch(c->hc, w->key + 1);
}

static void drop_warming(mg_control_t *c)
{
    unsee_all(&c->warming);
    unwatch_unseen(c, &c->warming);
}

/* ---------- DNS ---------- */

static dns_entry_t *find_dns(mg_control_t *c, const char *service)
{
    dns_entry_t *d = c->dns;
    while (d && strcmp(d->service, service) != 0)
        d = d->next;
    return d;
}

static size_t dns_pods(void *ud, const char *service, struct sockaddr_storage *out, size_t cap)
{
    const dns_entry_t *d = find_dns(ud, service);
    size_t n = d ? d->n : 0;
    if (n > cap)
        n = cap;
    if (n)
        memcpy(out, d->addrs, n * sizeof(*out));
    return n;
}

static mg_routes_t *build(mg_control_t *c, const json_t *doc, const char *source, char **errors)
{
    return mg_routes_build(doc, source, dns_pods, c, errors);
}

static void apply(mg_control_t *c, const mg_routes_t *r);
static void offer(mg_control_t *c, mg_routes_t *r);
static void take_over(mg_control_t *c, mg_routes_t *r);

static const mg_service_t *find_service(const mg_routes_t *r, const char *name)
{
    for (size_t i = 0; r && i < r->nservices; i++)
        if (strcmp(r->services[i].name, name) == 0)
            return &r->services[i];
    return NULL;
}

/* Whether |svc| (of the routes in force) takes its pods from its watch as it is now, which
 * |now| (the same service in the waiting snapshot) set: not from a name or port the waiting
 * reload changed or dropped. */
static bool same_watch(const mg_service_t *svc, const mg_service_t *now)
{
    return svc && now && svc->dns_name && now->dns_name &&
           strcasecmp(svc->dns_name, now->dns_name) == 0 && svc->dns_port == now->dns_port;
}

/* The pods of a DNS service of the routes in force while a reload waits: its watch's, unless
 * the reload changed or dropped the watch; then the pods it has (their name answers no more). */
static size_t dns_pods_in_force(void *ud, const char *service, struct sockaddr_storage *out,
                                size_t cap)
{
    mg_control_t *c = ud;
    const mg_service_t *svc = find_service(c->in_force, service);
    if (same_watch(svc, find_service(c->pending, service)))
        return dns_pods(c, service, out, cap);
    size_t n = svc ? svc->npods : 0;
    if (n > cap)
        n = cap;
    for (size_t k = 0; k < n; k++)
        memcpy(&out[k], &svc->pods[k].addr, sizeof(out[k]));
    return n;
}

/* Makes |r| (ours) the routes in force: they serve from now on. */
static void install_in_force(mg_control_t *c, mg_routes_t *r)
{
    mg_routes_ref(r);
    mg_routes_unref(c->in_force);
    c->in_force = r;
    c->install(c->ud, r);
}

static void on_dns(void *ud, const char *service, const struct sockaddr_storage *addrs, size_t n)
{
    mg_control_t *c = ud;
    dns_entry_t *d = find_dns(c, service);
    if (d == NULL || c->doc == NULL)
        return;
    if (n > MG_DISC_MAX_ADDRS)
        n = MG_DISC_MAX_ADDRS;
    memcpy(d->addrs, addrs, n * sizeof(*addrs));
    d->n = n;
    MG_LOG(MG_LOG_INFO, "control", "service %s: %zu pod(s) from DNS", service, n);
    char *errors = NULL;
    /* While a reload waits, both snapshots follow DNS: the routes in force when they use this
     * watch (their document is kept for that), and the waiting one, whose new pods then wait
     * for their checks too. */
    if (c->pending &&
        same_watch(find_service(c->in_force, service), find_service(c->pending, service))) {
        mg_routes_t *r = mg_routes_build(c->doc_in_force, c->path, dns_pods_in_force, c, &errors);
        if (r) {
            apply(c, r);
            install_in_force(c, r);
        }
    }
    mg_routes_t *r =
        errors ? NULL : build(c, c->doc, c->path ? c->path : "routing document", &errors);
    if (r == NULL) { /* the documents were good a moment ago: only memory can fail here */
        MG_LOG(MG_LOG_ERROR, "control", "cannot rebuild the routes after a DNS change: %s",
               errors ? errors : "?");
        free(errors);
        return;
    }
    if (c->pending) {
        mg_routes_unref(c->pending);
        c->pending = r;
        warm_checks(c, r);
        c->warm_from = 0;
        return;
    }
    apply(c, r);
    install_in_force(c, r);
}

static void apply_dns(mg_control_t *c, const mg_routes_t *r)
{
    for (dns_entry_t *d = c->dns; d; d = d->next)
        d->seen = false;
    for (size_t i = 0; i < r->nservices; i++) {
        const mg_service_t *svc = &r->services[i];
        if (svc->dns_name == NULL)
            continue;
        if (c->disc == NULL) {
            char err[256];
            c->disc = mg_disc_new(c->base, c->nameserver, on_dns, c, err, sizeof(err));
            if (c->disc == NULL) {
                MG_LOG(MG_LOG_ERROR, "control", "DNS discovery cannot start: %s", err);
                return;
            }
        }
        dns_entry_t *d = find_dns(c, svc->name);
        if (d == NULL && (d = calloc(1, sizeof(*d))) != NULL) {
            if ((d->service = strdup(svc->name)) == NULL) {
                free(d);
                continue;
            }
            d->next = c->dns;
            c->dns = d;
        }
        if (d == NULL)
            continue;
        d->seen = true;
        mg_disc_watch(c->disc, svc->name, svc->dns_name, svc->dns_port, svc->dns_interval_ms);
    }
    for (dns_entry_t **dp = &c->dns; *dp;) {
        dns_entry_t *d = *dp;
        if (d->seen) {
            dp = &d->next;
            continue;
        }
        if (c->disc)
            mg_disc_unwatch(c->disc, d->service);
        *dp = d->next;
        free(d->service);
        free(d);
    }
}

/* /metrics lists the routes, services and pods of this snapshot only (routing/podstate.h,
 * common/stats.h); out of memory, the old listing stays */
static void mark_current(const mg_routes_t *r)
{
    size_t npods = 0;
    for (size_t i = 0; i < r->nservices; i++)
        npods += r->services[i].npods;
    mg_podstate_t **pods = calloc(npods + 1, sizeof(*pods));
    mg_stats_t **series = calloc(r->nservices + r->nroutes + 1, sizeof(*series));
    if (pods && series) {
        size_t k = 0;
        for (size_t i = 0; i < r->nservices; i++)
            for (size_t j = 0; j < r->services[i].npods; j++)
                pods[k++] = r->services[i].pods[j].state;
        mg_podstate_mark_current(pods, k);
        for (size_t i = 0; i < r->nservices; i++)
            series[i] = r->services[i].stats;
        mg_stats_mark_current(MG_STATS_SERVICE, series, r->nservices);
        for (size_t i = 0; i < r->nroutes; i++)
            series[i] = r->routes[i].stats;
        mg_stats_mark_current(MG_STATS_ROUTE, series, r->nroutes);
    }
    free(pods);
    free(series);
}

/* Makes |r| the snapshot the checks and /metrics follow (the caller installs it). */
static void apply(mg_control_t *c, const mg_routes_t *r)
{
    watch_checks(c, r);
    unwatch_unseen(c, &c->watched);
    mark_current(r);
}

/* ---------- reload ---------- */

/* Whether |pod| of |svc| (of a pending snapshot, with a check) waits for its check's first
 * result: a check new to it, with no standing to keep. */
static bool pod_unwarmed(mg_control_t *c, const mg_service_t *svc, const mg_pod_t *pod,
                         const mg_hc_conf_t *hc)
{
    char key[512];
    key[0] = WARMING_MARK;
    check_key(key + 1, sizeof(key) - 1, svc, pod);
    /* its own check, or the one in force it shares */
    bool own = !mg_hc_runs(c->hc, key + 1, (const struct sockaddr *)&pod->addr, pod->addrlen,
                           svc->proto, hc);
    if (mg_hc_has_result(c->hc, own ? key : key + 1))
        return false;
    /* a pod the routes in force use keeps its standing until then (watch_checks) */
    return !(mg_podstate_in_routing(pod->state) &&
             atomic_load(&pod->state->health) != MG_POD_HEALTH_UNKNOWN);
}

/* The pods of |r| (pending) that wait for their check's first result, and in *|bound_ms| the
 * longest such a result can take. */
static size_t unwarmed(mg_control_t *c, const mg_routes_t *r, uint32_t *bound_ms)
{
    size_t n = 0;
    *bound_ms = 0;
    for (size_t i = 0; i < r->nservices; i++) {
        const mg_service_t *svc = &r->services[i];
        if (svc->health.path == NULL)
            continue;
        uint32_t bound = svc->health.interval_ms / 10 + svc->health.timeout_ms;
        mg_hc_conf_t hc = check_conf(svc);
        for (size_t k = 0; k < svc->npods; k++) {
            if (!pod_unwarmed(c, svc, &svc->pods[k], &hc))
                continue;
            n++;
            if (bound > *bound_ms)
                *bound_ms = bound;
        }
    }
    return n;
}

/* The flat index (pods in service order) of the first pod of |r| from |from| on that waits
 * for its check's first result, or SIZE_MAX. A first result stays for the wait, so each poll
 * goes on where the last one stopped: thousands of checks cost no more than a few. */
static size_t first_unwarmed(mg_control_t *c, const mg_routes_t *r, size_t from)
{
    size_t base = 0;
    for (size_t i = 0; i < r->nservices; base += r->services[i++].npods) {
        const mg_service_t *svc = &r->services[i];
        if (svc->health.path == NULL || base + svc->npods <= from)
            continue;
        mg_hc_conf_t hc = check_conf(svc);
        for (size_t k = from > base ? from - base : 0; k < svc->npods; k++)
            if (pod_unwarmed(c, svc, &svc->pods[k], &hc))
                return base + k;
    }
    return SIZE_MAX;
}

/* The DNS services of |r| (pending) whose watch waits for a first answer: a service the
 * reload adds, or one it points at another name or port. Their pods are not known yet, so
 * their checks have not started: without the wait they would answer 503 until both. In
 * *|bound_ms| the longest the answer and then those checks' first results can take; in
 * *|failed| those without an answer whose lookup failed (retried only at their interval, so
 * not waited for). */
static size_t unanswered(mg_control_t *c, const mg_routes_t *r, uint32_t *bound_ms, size_t *failed)
{
    size_t n = 0;
    *bound_ms = 0;
    *failed = 0;
    for (size_t i = 0; i < r->nservices; i++) {
        const mg_service_t *svc = &r->services[i];
        mg_disc_status_t st; /* not watched: discovery could not start (logged) */
        if (svc->dns_name == NULL || c->disc == NULL || !mg_disc_status(c->disc, svc->name, &st) ||
            st.answered)
            continue;
        if (st.failures > 0) {
            (*failed)++;
            continue;
        }
        uint32_t bound = WARM_DNS_MS;
        if (svc->health.path)
            bound += svc->health.interval_ms / 10 + svc->health.timeout_ms;
        n++;
        if (bound > *bound_ms)
            *bound_ms = bound;
    }
    return n;
}

static void take_over(mg_control_t *c, mg_routes_t *r)
{
    hand_over_checks(c);
    apply(c, r);
    drop_warming(c);
    json_incref(c->doc);
    json_decref(c->doc_in_force);
    c->doc_in_force = c->doc;
    install_in_force(c, r);
    MG_LOG(MG_LOG_INFO, "control", "routing document %s reloaded: %zu services, %zu routes",
           c->path, r->nservices, r->nroutes);
}

static void warm_later(mg_control_t *c)
{
    static const struct timeval poll = {0, WARM_POLL_MS * 1000};
    evtimer_add(c->warm, &poll);
}

static void on_warm(evutil_socket_t fd, short what, void *arg)
{
    mg_control_t *c = arg;
    (void)fd, (void)what;
    c->warm_from = first_unwarmed(c, c->pending, c->warm_from);
    uint32_t bound;
    size_t failed, ndns = unanswered(c, c->pending, &bound, &failed);
    if ((c->warm_from != SIZE_MAX || ndns > 0) && mg_podstate_now_ms() < c->warm_until_ms) {
        warm_later(c);
        return;
    }
    size_t n = c->warm_from == SIZE_MAX ? 0 : unwarmed(c, c->pending, &bound);
    if (n > 0)
        MG_LOG(MG_LOG_WARN, "control",
               "routing document %s: %zu pod(s) still have no health check result; it takes "
               "over all the same, and they get requests once they pass",
               c->path, n);
    if (ndns + failed > 0)
        MG_LOG(MG_LOG_WARN, "control",
               "routing document %s: %zu DNS service(s) still have no answer (%zu after a "
               "failed lookup); it takes over all the same, and they keep the pods they had "
               "(none for a service it adds) until DNS answers",
               c->path, ndns + failed, failed);
    mg_routes_t *r = c->pending;
    c->pending = NULL;
    take_over(c, r);
}

/* Installs a reloaded snapshot |r| (ours) once the checks it starts have their first results,
 * as Envoy warms a new cluster: a service the reload adds, or pods it moves under a different
 * check, would otherwise answer 503 until those results; the snapshot in force serves
 * meanwhile. A snapshot still waiting is replaced. */
static void offer(mg_control_t *c, mg_routes_t *r)
{
    if (c->pending) {
        evtimer_del(c->warm);
        mg_routes_unref(c->pending);
        c->pending = NULL;
    }
    warm_checks(c, r);
    uint32_t bound, dns_bound;
    size_t failed, n = unwarmed(c, r, &bound), ndns = unanswered(c, r, &dns_bound, &failed);
    if (dns_bound > bound)
        bound = dns_bound;
    char what[160] = ""; /* what the wait waits for */
    int len = 0;
    if (n > 0)
        len = snprintf(what, sizeof(what),
                       "the new health checks of %zu pod(s) have a first result", n);
    if (ndns > 0)
        snprintf(what + len, sizeof(what) - (size_t)len,
                 "%s%zu DNS service(s) have a first answer (and their pods' checks a result)",
                 n > 0 ? " and " : "", ndns);
    if ((n > 0 || ndns > 0) && c->wait_max_ms == 0) /* the operator's choice: no wait, no warning */
        MG_LOG(MG_LOG_INFO, "control",
               "routing document %s: it would wait until %s; with timeouts_ms.reload_wait 0 it "
               "takes over at once, and they get requests once they pass",
               c->path, what);
    if ((n == 0 && ndns == 0) || c->wait_max_ms == 0) {
        take_over(c, r);
        return;
    }
    c->pending = r;
    uint64_t wait = (uint64_t)bound + WARM_SLACK_MS;
    char capped[96] = ""; /* a check with a long interval or timeout must not hold it */
    if (wait > c->wait_max_ms) {
        snprintf(capped, sizeof(capped),
                 " (timeouts_ms.reload_wait; their first results may take %" PRIu64 " ms)", wait);
        wait = c->wait_max_ms;
    }
    MG_LOG(MG_LOG_INFO, "control",
           "routing document %s: the previous routes serve until %s, at most %" PRIu64 " ms%s",
           c->path, what, wait, capped);
    c->warm_until_ms = mg_podstate_now_ms() + wait;
    c->warm_from = 0;
    warm_later(c);
}

/* ---------- API ---------- */

mg_control_t *mg_control_new(struct event_base *base, const char *nameserver, uint32_t wait_max_ms,
                             mg_control_install_fn install, void *ud)
{
    mg_control_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->base = base;
    c->install = install;
    c->ud = ud;
    c->wait_max_ms = wait_max_ms;
    c->hc = mg_hc_new(base, on_health, c);
    c->warm = evtimer_new(base, on_warm, c);
    if (c->hc == NULL || c->warm == NULL ||
        (nameserver && (c->nameserver = strdup(nameserver)) == NULL)) {
        mg_control_free(c);
        return NULL;
    }
    return c;
}

/* Reads and builds the routing document at |path|, keeps it, and starts its DNS watches. */
static mg_routes_t *load_doc(mg_control_t *c, const char *path, char **errors)
{
    json_error_t jerr;
    json_t *doc = mg_json_load_file(path, &jerr);
    if (doc == NULL) /* let the routes module word the syntax error as usual */
        return mg_routes_load(path, errors);
    mg_routes_t *r = build(c, doc, path, errors);
    if (r == NULL) {
        json_decref(doc);
        return NULL;
    }
    json_decref(c->doc);
    c->doc = doc;
    if (c->path == NULL || strcmp(c->path, path) != 0) {
        char *copy = strdup(path);
        if (copy) {
            free(c->path);
            c->path = copy;
        }
    }
    apply_dns(c, r);
    return r;
}

mg_routes_t *mg_control_load(mg_control_t *c, const char *path, char **errors)
{
    mg_routes_t *r = load_doc(c, path, errors);
    if (r == NULL)
        return NULL;
    apply(c, r);
    mg_routes_ref(r); /* the caller installs it */
    mg_routes_unref(c->in_force);
    c->in_force = r;
    json_incref(c->doc);
    json_decref(c->doc_in_force);
    c->doc_in_force = c->doc;
    return r;
}

bool mg_control_reload(mg_control_t *c, const char *path, char **errors)
{
    mg_routes_t *r = load_doc(c, path, errors);
    if (r)
        offer(c, r);
    return r != NULL;
}

bool mg_control_waiting(const mg_control_t *c)
{
    return c->pending != NULL;
}

void mg_control_adopt(mg_control_t *c, const mg_routes_t *routes)
{
    apply(c, routes);
}

void mg_control_free(mg_control_t *c)
{
    if (c == NULL)
        return;
    if (c->warm)
        event_free(c->warm);
    mg_routes_unref(c->pending);
    mg_routes_unref(c->in_force);
    json_decref(c->doc_in_force);
    if (c->disc)
        mg_disc_free(c->disc);
    if (c->hc)
        mg_hc_free(c->hc);
    while (c->dns) {
        dns_entry_t *d = c->dns;
        c->dns = d->next;
        free(d->service);
        free(d);
    }
    free_keys(&c->watched);
    free_keys(&c->warming);
    json_decref(c->doc);
    free(c->path);
    free(c->nameserver);
    free(c);
}
