/*
 * routing/discovery.c - DNS discovery (see discovery.h for the contract).
 *
 * DESIGN
 * One evdns_base per discoverer, with the given nameserver (or /etc/resolv.conf). Each watch
 * owns a timer; when it fires, a "round" starts: one query per family (A, AAAA), each with a
 * small query object that points back at the watch. A round ends when its last query answers;
 * its outcome (a new set, or a failure that keeps the old one) is applied, and the timer is
 * re-armed for interval_ms later. So the period is interval + query time and one watch never
 * has two rounds in flight.
 *
 * evdns always runs a query's callback exactly once and always later (from a deferred
 * callback on the base), also after evdns_cancel_request (with DNS_ERR_CANCEL). Hence the query
 * objects are separate from the watch: cancelling detaches them (q->w = NULL) and their
 * callback frees them whenever it comes, so a watch can be freed or replaced at any time. A
 * query leaves its watch's list as soon as its callback starts, because evdns frees its
 * request handle right after: cancelling it then would be a use after free.
 *
 * The user callback may call mg_disc_watch/mg_disc_unwatch. The next round is armed before the
 * callback runs (a replacement re-arms it), and an unwatch of the watch being reported only
 * unlinks it and marks it dead; it is freed when the callback returns.
 */
#include "routing/discovery.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "common/log.h"

#define LOG_MOD "discovery"
#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_ATTEMPTS 2
#define RESOLV_CONF "/etc/resolv.conf"

typedef struct watch watch_t;

typedef struct query {
    watch_t *w;                /* NULL once cancelled: the callback then only frees this */
    struct evdns_request *req; /* evdns' handle; valid until the callback starts */
    bool ipv6;                 /* an AAAA query (else A) */
    struct query *next;        /* in w->queries */
} query_t;

struct watch {
    mg_disc_t *d;
    char *key;
    char *host;
    uint16_t port;
    uint32_t interval_ms; /* >= MG_DISC_MIN_INTERVAL_MS */
    struct event *timer;
    bool literal;       /* host is an IP address: its set is itself, resolved once */
    bool in_cb;         /* the user callback is running for this watch */
    bool dead;          /* unwatched during in_cb: free when the callback returns */
    struct watch *next; /* in d->watches (not when dead) */

    /* the round in flight */
    query_t *queries;         /* unanswered queries of this round */
    int pending;              /* queries not yet answered (+1 while issuing) */
    const char *round_err;    /* first failure of this round, or NULL */
    const char *round_err_rr; /* its record type: "A" or "AAAA" */
    size_t nround;            /* nround <= MG_DISC_MAX_ADDRS * 2 */
    size_t round_dropped;     /* addresses evdns or we could not keep */
    struct sockaddr_storage round[MG_DISC_MAX_ADDRS * 2];

    /* what the owner was told */
    bool answered;
    size_t nknown; /* nknown <= MG_DISC_MAX_ADDRS */
    struct sockaddr_storage known[MG_DISC_MAX_ADDRS];
    unsigned failures; /* consecutive failed rounds */
    const char *last_err;
    uint64_t answers;
};

struct mg_disc {
    struct event_base *base;
    struct evdns_base *dns;
    char nameserver[64]; /* for log lines: "127.0.0.1:5353" or "resolv.conf" */
    mg_disc_cb cb;
    void *ud;
    unsigned families; /* MG_DISC_IPV4 | MG_DISC_IPV6 */
    watch_t *watches;
};

/* ---------- address sets ---------- */

static int cmp_bytes(const void *a, const void *b, size_t n)
{
    int c = memcmp(a, b, n);
    return c < 0 ? -1 : c > 0;
}

static int cmp_port(in_port_t a, in_port_t b)
{
    return ntohs(a) < ntohs(b) ? -1 : ntohs(a) > ntohs(b);
}

/* AF_INET first, then AF_INET6, then the rest by family number. */
static int family_rank(sa_family_t f)
{
    return f == AF_INET ? 0 : f == AF_INET6 ? 1 : 2 + (int)f;
}

int mg_disc_addr_cmp(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    int ra = family_rank(a->ss_family), rb = family_rank(b->ss_family);
    if (ra != rb)
        return ra < rb ? -1 : 1;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        int c = cmp_bytes(&x->sin_addr, &y->sin_addr, sizeof(x->sin_addr));
        return c ? c : cmp_port(x->sin_port, y->sin_port);
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        int c = cmp_bytes(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr));
        if (c == 0)
            c = x->sin6_scope_id < y->sin6_scope_id ? -1 : x->sin6_scope_id > y->sin6_scope_id;
        return c ? c : cmp_port(x->sin6_port, y->sin6_port);
    }
    return 0; /* unknown families have no address we understand: equal */
}

static int qsort_cmp(const void *a, const void *b)
{
    return mg_disc_addr_cmp(a, b);
}

size_t mg_disc_addrs_normalize(struct sockaddr_storage *a, size_t n, size_t cap, size_t *dropped)
{
    if (n > 1)
        qsort(a, n, sizeof(*a), qsort_cmp);
    size_t out = 0;
    for (size_t i = 0; i < n; i++)
        if (out == 0 || mg_disc_addr_cmp(&a[out - 1], &a[i]) != 0)
            a[out++] = a[i];
    if (dropped != NULL)
        *dropped = out > cap ? out - cap : 0;
    return out > cap ? cap : out;
}

bool mg_disc_addrs_equal(const struct sockaddr_storage *a, size_t na,
                         const struct sockaddr_storage *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (mg_disc_addr_cmp(&a[i], &b[i]) != 0)
            return false;
    return true;
}

char *mg_disc_addr_format(const struct sockaddr_storage *a, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    if (len == 0)
        return buf;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)a;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(s->sin_port));
    } else if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)a;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(s->sin6_port));
    } else {
        snprintf(buf, len, "?");
    }
    return buf;
}

/* ---------- watches ---------- */

static watch_t *find_watch(const mg_disc_t *d, const char *key)
{
    for (watch_t *w = d->watches; w != NULL; w = w->next)
        if (strcmp(w->key, key) == 0)
            return w;
    return NULL;
}

static void unlink_watch(mg_disc_t *d, watch_t *w)
{
    for (watch_t **p = &d->watches; *p != NULL; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    w->next = NULL;
}

/* Abandons the round in flight: its queries finish later, detached, and change nothing. */
static void cancel_round(watch_t *w)
{
    query_t *q = w->queries;
    w->queries = NULL;
    while (q != NULL) {
        query_t *next = q->next;
        q->w = NULL;
        q->next = NULL;
        evdns_cancel_request(w->d->dns, q->req); /* its callback (CANCEL) frees q later */
        q = next;
    }
    w->pending = 0;
    w->round_err = NULL;
    w->nround = 0;
    w->round_dropped = 0;
}

static void free_watch(watch_t *w)
{
    if (w == NULL)
        return;
    cancel_round(w);
    if (w->timer != NULL)
        event_free(w->timer);
    free(w->key);
    free(w->host);
    free(w);
}

/* Arms the next round |ms| from now. */
static void schedule(watch_t *w, uint32_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(w->timer, &tv);
}

/* Applies the outcome of a round: a failure keeps the last set, an answer may report a new one. */
static void finish_round(watch_t *w)
{
    mg_disc_t *d = w->d;
    const char *err = w->round_err;
    if (!w->literal)
        schedule(w, w->interval_ms); /* before the callback: a replacement in it re-arms */
    if (err != NULL) {
        w->failures++;
        w->last_err = err;
        if (w->failures == 1) { /* once per streak: a dead DNS must not flood the log */
            char kept[64];
            const char *hint = "";
            if (w->answered)
                snprintf(kept, sizeof(kept), "keeping the last %zu address(es)", w->nknown);
            else
                snprintf(kept, sizeof(kept), "no address known yet");
            if (strcmp(err, "truncated answer") == 0)
                hint = "; the answer does not fit a UDP packet (about 29 A records), which this "
                       "resolver cannot fetch over TCP: use fewer pods per name";
            else if (strcmp(w->round_err_rr, "AAAA") == 0)
                hint = "; if this DNS server does not serve AAAA records, ask for IPv4 only";
            MG_LOG(MG_LOG_WARN, LOG_MOD,
                   "service '%s': resolving '%s' via %s failed (%s query: %s); %s, retrying "
                   "every %u ms%s",
                   w->key, w->host, d->nameserver, w->round_err_rr, err, kept, w->interval_ms,
                   hint);
        }
        w->nround = 0;
        w->round_dropped = 0;
        w->round_err = NULL;
        return;
    }
    if (w->failures > 0)
        MG_LOG(MG_LOG_INFO, LOG_MOD, "service '%s': '%s' resolves again after %u failure(s)",
               w->key, w->host, w->failures);
    w->failures = 0;
    w->answers++;

    size_t dropped = 0;
    size_t n = mg_disc_addrs_normalize(w->round, w->nround, MG_DISC_MAX_ADDRS, &dropped);
    w->nround = 0;
    dropped += w->round_dropped;
    w->round_dropped = 0;
    bool changed = !w->answered || !mg_disc_addrs_equal(w->round, n, w->known, w->nknown);
    if (!changed)
        return;
    if (dropped > 0) /* logged per change, not per round: a steady big set says it once */
        MG_LOG(MG_LOG_WARN, LOG_MOD,
               "service '%s': '%s' has more addresses than discovery keeps; using %zu, dropped "
               "%zu (limit %d per service)",
               w->key, w->host, n, dropped, MG_DISC_MAX_ADDRS);
    MG_LOG(MG_LOG_INFO, LOG_MOD, "service '%s': '%s' now has %zu address(es)%s", w->key, w->host, n,
           w->answered ? "" : " (first answer)");
    memcpy(w->known, w->round, n * sizeof(w->known[0]));
    w->nknown = n;
    w->answered = true;

    w->in_cb = true;
    d->cb(d->ud, w->key, w->known, w->nknown);
    w->in_cb = false;
    if (w->dead)
        free_watch(w);
}

static const char *dns_err_name(int result)
{
    switch (result) {
    case DNS_ERR_TIMEOUT:
        return "timeout";
    case DNS_ERR_SERVERFAILED:
        return "server failure";
    case DNS_ERR_REFUSED:
        return "refused";
    case DNS_ERR_TRUNCATED:
        return "truncated answer";
    case DNS_ERR_FORMAT:
        return "format error";
    case DNS_ERR_NOTIMPL:
        return "not implemented by the server";
    case DNS_ERR_SHUTDOWN:
        return "resolver shut down";
    default:
        return "unknown DNS error";
    }
}

static void add_addresses(watch_t *w, char type, int count, const void *addrs)
{
    for (int i = 0; i < count; i++) {
        if (w->nround == sizeof(w->round) / sizeof(w->round[0])) {
            w->round_dropped += (size_t)(count - i);
            return;
        }
        struct sockaddr_storage *ss = &w->round[w->nround++];
        memset(ss, 0, sizeof(*ss)); /* callers may memcmp whole sockaddrs */
        if (type == DNS_IPv4_A) {
            struct sockaddr_in *s = (void *)ss;
            s->sin_family = AF_INET;
            s->sin_port = htons(w->port);
            memcpy(&s->sin_addr, (const char *)addrs + 4 * (size_t)i, 4);
        } else {
            struct sockaddr_in6 *s = (void *)ss;
            s->sin6_family = AF_INET6;
            s->sin6_port = htons(w->port);
            memcpy(&s->sin6_addr, (const char *)addrs + 16 * (size_t)i, 16);
        }
    }
}

static void query_done(watch_t *w)
{
    if (--w->pending == 0)
        finish_round(w);
}

static void on_dns_answer(int result, char type, int count, int ttl, void *addresses, void *arg)
{
    query_t *q = arg;
    watch_t *w = q->w;
    (void)ttl; /* the interval, not the TTL, sets the refresh period */
    if (w != NULL)
        for (query_t **p = &w->queries; *p != NULL; p = &(*p)->next)
            if (*p == q) {
                *p = q->next;
                break;
            }
    bool ipv6 = q->ipv6;
    free(q);
    if (w == NULL || result == DNS_ERR_CANCEL)
        return;
    if (result == DNS_ERR_NONE)
        add_addresses(w, type, count, addresses);
    else if (result != DNS_ERR_NOTEXIST && result != DNS_ERR_NODATA && w->round_err == NULL) {
        w->round_err = dns_err_name(result); /* NXDOMAIN and no data: no pods, not a failure */
        w->round_err_rr = ipv6 ? "AAAA" : "A";
    }
    query_done(w);
}

static void issue(watch_t *w, bool ipv6)
{
    query_t *q = calloc(1, sizeof(*q));
    if (q != NULL) {
        q->w = w;
        q->ipv6 = ipv6;
        q->req = ipv6 ? evdns_base_resolve_ipv6(w->d->dns, w->host, 0, on_dns_answer, q)
                      : evdns_base_resolve_ipv4(w->d->dns, w->host, 0, on_dns_answer, q);
    }
    if (q == NULL || q->req == NULL) {
        free(q);
        if (w->round_err == NULL) {
            w->round_err = "could not start it (out of memory or no nameserver)";
            w->round_err_rr = ipv6 ? "AAAA" : "A";
        }
        return;
    }
    q->next = w->queries;
    w->queries = q;
    w->pending++;
}

static void on_timer(evutil_socket_t fd, short events, void *arg)
{
    watch_t *w = arg;
    (void)fd;
    (void)events;
    cancel_round(w); /* none expected: a round re-arms the timer only when it ends */
    if (w->literal) {
        struct sockaddr_storage *ss = &w->round[0];
        int len = (int)sizeof(*ss);
        memset(ss, 0, sizeof(*ss));
        evutil_parse_sockaddr_port(w->host, (struct sockaddr *)ss, &len);
        if (ss->ss_family == AF_INET)
            ((struct sockaddr_in *)ss)->sin_port = htons(w->port);
        else
            ((struct sockaddr_in6 *)ss)->sin6_port = htons(w->port);
        w->nround = 1;
        finish_round(w);
        return;
    }
    w->pending = 1; /* held while issuing, so an early answer cannot end the round */
    if (w->d->families & MG_DISC_IPV4)
        issue(w, false);
    if (w->d->families & MG_DISC_IPV6)
        issue(w, true);
    query_done(w);
}

/* A DNS name (letters, digits, '-', '_', labels of 1..63, an optional final dot) or an IP. */
static bool is_ip_literal(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static bool is_valid_hostname(const char *s)
{
    size_t len = strlen(s), label = 0;
    if (len == 0 || len > MG_DISC_MAX_HOSTNAME || s[0] == '.')
        return false;
    for (const char *p = s; *p; p++) {
        if (*p == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (isalnum((unsigned char)*p) || *p == '-' || *p == '_') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return true;
}

mg_err_t mg_disc_watch(mg_disc_t *d, const char *key, const char *hostname, uint16_t port,
                       uint32_t interval_ms)
{
    if (key == NULL || key[0] == '\0') {
        MG_LOG(MG_LOG_ERROR, LOG_MOD, "watch: empty service key");
        return MG_E_CONFIG;
    }
    if (hostname == NULL || (!is_ip_literal(hostname) && !is_valid_hostname(hostname))) {
        MG_LOG(MG_LOG_ERROR, LOG_MOD,
               "service '%s': '%s' is not a DNS name (letters, digits, '-', '_', dot-separated "
               "labels of at most 63, at most %d in all) nor an IP address",
               key, hostname ? hostname : "(null)", MG_DISC_MAX_HOSTNAME);
        return MG_E_CONFIG;
    }
    if (port == 0) {
        MG_LOG(MG_LOG_ERROR, LOG_MOD, "service '%s': port 0 for '%s'; give the pods' port", key,
               hostname);
        return MG_E_CONFIG;
    }
    if (interval_ms < MG_DISC_MIN_INTERVAL_MS)
        interval_ms = MG_DISC_MIN_INTERVAL_MS;

    watch_t *w = find_watch(d, key);
    if (w != NULL && w->port == port && strcasecmp(w->host, hostname) == 0) {
        w->interval_ms = interval_ms; /* same watch: the next round uses the new interval */
        return MG_OK;
    }
    if (w != NULL) { /* replace: new name, same watch object, the old set stays meanwhile */
        char *host = strdup(hostname);
        if (host == NULL)
            return MG_E_NOMEM;
        cancel_round(w);
        free(w->host);
        w->host = host;
        w->port = port;
        w->interval_ms = interval_ms;
        w->literal = is_ip_literal(hostname);
        w->answered = false; /* the new name's first answer is always reported */
        w->failures = 0;
        w->last_err = NULL;
        schedule(w, 0);
        return MG_OK;
    }

    w = calloc(1, sizeof(*w));
    if (w == NULL)
        return MG_E_NOMEM;
    w->d = d;
    w->port = port;
    w->interval_ms = interval_ms;
    w->literal = is_ip_literal(hostname);
    w->key = strdup(key);
    w->host = strdup(hostname);
    w->timer = evtimer_new(d->base, on_timer, w);
    if (w->key == NULL || w->host == NULL || w->timer == NULL) {
        free_watch(w);
        return MG_E_NOMEM;
    }
    w->next = d->watches;
    d->watches = w;
    schedule(w, 0); /* the first round runs from the loop, never inside this call */
    return MG_OK;
}

void mg_disc_unwatch(mg_disc_t *d, const char *key)
{
    watch_t *w = find_watch(d, key);
    if (w == NULL)
        return;
    unlink_watch(d, w);
    if (w->in_cb) { /* finish_round is on the stack with this watch: it frees it */
        cancel_round(w);
        evtimer_del(w->timer);
        w->dead = true;
        return;
    }
    free_watch(w);
}

bool mg_disc_status(const mg_disc_t *d, const char *key, mg_disc_status_t *out)
{
    const watch_t *w = find_watch(d, key);
    if (w == NULL)
        return false;
    *out = (mg_disc_status_t){.answered = w->answered,
                              .naddrs = w->nknown,
                              .failures = w->failures,
                              .error = w->last_err,
                              .answers = w->answers};
    return true;
}

/* ---------- the discoverer ---------- */

/* evdns' own lines ("Nameserver ... has failed", every flap) would go to stderr unformatted;
 * each watch already warns once per failure streak, so they are debug detail. The hook is
 * process-wide, which is fine: this module is the only evdns user. */
static void on_evdns_log(int is_warn, const char *msg)
{
    (void)is_warn;
    MG_LOG(MG_LOG_DEBUG, "evdns", "%s", msg);
}

mg_err_t mg_disc_set_timeout(mg_disc_t *d, uint32_t timeout_ms, unsigned attempts)
{
    char t[32], a[16];
    if (timeout_ms == 0 || attempts < 1 || attempts > 255)
        return MG_E_CONFIG;
    snprintf(t, sizeof(t), "%u.%03u", timeout_ms / 1000, timeout_ms % 1000);
    snprintf(a, sizeof(a), "%u", attempts);
    if (evdns_base_set_option(d->dns, "timeout:", t) != 0 ||
        evdns_base_set_option(d->dns, "attempts:", a) != 0)
        return MG_E_CONFIG;
    return MG_OK;
}

mg_err_t mg_disc_set_families(mg_disc_t *d, unsigned families)
{
    if (families == 0 || (families & ~(MG_DISC_IPV4 | MG_DISC_IPV6)) != 0)
        return MG_E_CONFIG;
    d->families = families;
    return MG_OK;
}

static const char *resolv_conf_error(int r)
{
    switch (r) {
    case 1:
        return "cannot open it";
    case 2:
        return "cannot stat it";
    case 3:
        return "it is too large";
    case 4:
        return "out of memory";
    case 5:
        return "short read";
    case 6:
        return "it lists no nameserver";
    default:
        return "unknown error";
    }
}

mg_disc_t *mg_disc_new(struct event_base *base, const char *nameserver, mg_disc_cb cb, void *ud,
                       char *err, size_t errlen)
{
    mg_disc_t *d = NULL;
    if (errlen > 0)
        err[0] = '\0';
    if (base == NULL || cb == NULL) {
        snprintf(err, errlen, "discovery needs an event base and a callback");
        return NULL;
    }
    if ((d = calloc(1, sizeof(*d))) == NULL)
        goto nomem;
    d->base = base;
    d->cb = cb;
    d->ud = ud;
    d->families = MG_DISC_IPV4 | MG_DISC_IPV6;
    evdns_set_log_fn(on_evdns_log);
    /* DISABLE_WHEN_INACTIVE: an idle resolver holds no event, so it never keeps a loop alive. */
    if ((d->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE)) == NULL)
        goto nomem;
    if (nameserver != NULL) {
        struct sockaddr_storage ss;
        int len = (int)sizeof(ss);
        memset(&ss, 0, sizeof(ss));
        if (evutil_parse_sockaddr_port(nameserver, (struct sockaddr *)&ss, &len) != 0) {
            snprintf(err, errlen,
                     "DNS nameserver \"%s\": not an IP address with an optional port; expected "
                     "e.g. \"127.0.0.1:5353\", \"10.96.0.10\" or \"[::1]:53\"",
                     nameserver);
            goto fail;
        }
        if (evdns_base_nameserver_sockaddr_add(d->dns, (struct sockaddr *)&ss, (socklen_t)len, 0) !=
            0) {
            snprintf(err, errlen, "DNS nameserver \"%s\": cannot open a UDP socket to it",
                     nameserver);
            goto fail;
        }
        snprintf(d->nameserver, sizeof(d->nameserver), "%s", nameserver);
    } else {
        int r = evdns_base_resolv_conf_parse(d->dns, DNS_OPTIONS_ALL, RESOLV_CONF);
        if (r != 0) {
            snprintf(err, errlen, "DNS: cannot use %s (%s); give a nameserver explicitly",
                     RESOLV_CONF, resolv_conf_error(r));
            goto fail;
        }
        snprintf(d->nameserver, sizeof(d->nameserver), "%s", "the resolv.conf nameservers");
    }
    if (mg_disc_set_timeout(d, DEFAULT_TIMEOUT_MS, DEFAULT_ATTEMPTS) != MG_OK) {
        snprintf(err, errlen, "DNS: cannot set the query timeout");
        goto fail;
    }
    return d;
nomem:
    snprintf(err, errlen, "discovery: out of memory");
fail:
    if (d != NULL && d->dns != NULL)
        evdns_base_free(d->dns, 0);
    free(d);
    return NULL;
}

void mg_disc_free(mg_disc_t *d)
{
    if (d == NULL)
        return;
    while (d->watches != NULL) {
        watch_t *w = d->watches;
        d->watches = w->next;
        free_watch(w); /* cancels: the CANCEL callbacks find q->w == NULL */
    }
    evdns_base_free(d->dns, 0);
    free(d);
}
