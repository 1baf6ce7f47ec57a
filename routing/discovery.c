/*
 * routing/discovery.c - DNS discovery (see discovery.h for the contract).
 *
 * DESIGN
 * One c-ares channel per discoverer, with the given nameserver (or /etc/resolv.conf), driven by
 * the caller's event_base: c-ares says which sockets to watch (on_sock_state) and when its next
 * timeout is (arm_timeout); we call ares_process_fd from those events. c-ares retries a
 * truncated UDP answer over TCP, so a name with more pods than a UDP answer holds resolves.
 *
 * Each watch owns a timer; when it fires, a "round" starts: one query per family (A, AAAA),
 * each with a small query object that points back at the watch. A round ends when its last
 * query answers; its outcome (a new set, or a failure that keeps the old one) is applied, and
 * the timer is re-armed for interval_ms later. So the period is interval + query time and one
 * watch never has two rounds in flight.
 *
 * c-ares runs a query's callback exactly once: later, from ares_process_fd, or at once from
 * ares_search (an early failure), or from ares_destroy (ARES_EDESTRUCTION). It cancels only
 * whole channels, so abandoning a round detaches its queries (q->w = NULL): they finish on
 * their own and their callback only frees them. A watch can thus be freed or replaced at any
 * time.
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

#include <arpa/nameser.h>
#include <netdb.h>
#include <pthread.h>

#include <ares.h>
#include <event2/event.h>
#include <event2/util.h>

#include "common/log.h"

#define LOG_MOD "discovery"
#define DEFAULT_TIMEOUT_MS 2000
#define DEFAULT_ATTEMPTS 2
#define RESOLV_CONF "/etc/resolv.conf"

typedef struct watch watch_t;

typedef struct query {
    watch_t *w;         /* NULL once detached: the callback then only frees this */
    bool ipv6;          /* an AAAA query (else A) */
    struct query *next; /* in w->queries */
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
    size_t round_dropped;     /* addresses we could not keep */
    struct sockaddr_storage round[MG_DISC_MAX_ADDRS * 2];

    /* what the owner was told */
    bool answered;
    size_t nknown; /* nknown <= MG_DISC_MAX_ADDRS */
    struct sockaddr_storage known[MG_DISC_MAX_ADDRS];
    unsigned failures; /* consecutive failed rounds */
    const char *last_err;
    uint64_t answers;
};

/* A socket c-ares wants watched, and its event. */
typedef struct sock {
    ares_socket_t fd;
    short what; /* EV_READ and/or EV_WRITE */
    struct event *ev;
    struct sock *next;
} sock_t;

struct mg_disc {
    struct event_base *base;
    ares_channel ch;
    struct event *timeout; /* c-ares' next timeout */
    sock_t *socks;
    uint32_t timeout_ms;
    unsigned attempts;
    char servers[80];    /* for ares_set_servers_ports_csv; empty: /etc/resolv.conf's */
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
        q->w = NULL; /* its callback frees it */
        q->next = NULL;
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
            if (strcmp(w->round_err_rr, "AAAA") == 0)
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

static const char *dns_err_name(int status)
{
    switch (status) {
    case ARES_ETIMEOUT:
        return "timeout";
    case ARES_ESERVFAIL:
        return "server failure";
    case ARES_EREFUSED:
        return "refused";
    case ARES_EFORMERR:
        return "format error";
    case ARES_ENOTIMP:
        return "not implemented by the server";
    case ARES_EBADRESP:
        return "malformed answer";
    case ARES_ECONNREFUSED: /* c-ares skips a server answering SERVFAIL, NOTIMP or REFUSED,
                             * then ends as if every skipped one had refused the connection */
        return "connection refused, or SERVFAIL, NOTIMP or REFUSED from every server";
    case ARES_ENOMEM:
        return "out of memory";
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return "resolver shut down";
    default:
        return ares_strerror(status);
    }
}

/* Adds the addresses of |h| (one family) to the round. */
static void add_addresses(watch_t *w, const struct hostent *h)
{
    size_t cap = sizeof(w->round) / sizeof(w->round[0]);
    for (char **a = h->h_addr_list; a && *a; a++) {
        if (w->nround == cap) {
            w->round_dropped++;
            continue;
        }
        struct sockaddr_storage *ss = &w->round[w->nround++];
        memset(ss, 0, sizeof(*ss)); /* callers may memcmp whole sockaddrs */
        if (h->h_addrtype == AF_INET) {
            struct sockaddr_in *s = (void *)ss;
            s->sin_family = AF_INET;
            s->sin_port = htons(w->port);
            memcpy(&s->sin_addr, *a, 4);
        } else {
            struct sockaddr_in6 *s = (void *)ss;
            s->sin6_family = AF_INET6;
            s->sin6_port = htons(w->port);
            memcpy(&s->sin6_addr, *a, 16);
        }
    }
}

static void query_done(watch_t *w)
{
    if (--w->pending == 0)
        finish_round(w);
}

/* The records of one answer: ARES_ENODATA when it has none of the family asked for. */
static int parse_answer(watch_t *w, bool ipv6, const unsigned char *abuf, int alen)
{
    struct hostent *h = NULL;
    struct ares_addrttl t4[1]; /* the hostent has every address; these only satisfy the API */
    struct ares_addr6ttl t6[1];
    int n = 1;
    int rc = ipv6 ? ares_parse_aaaa_reply(abuf, alen, &h, t6, &n)
                  : ares_parse_a_reply(abuf, alen, &h, t4, &n);
    if (rc == ARES_SUCCESS && h != NULL && h->h_addrtype == (ipv6 ? AF_INET6 : AF_INET))
        add_addresses(w, h);
    if (h != NULL)
        ares_free_hostent(h);
    return rc;
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    query_t *q = arg;
    watch_t *w = q->w;
    (void)timeouts;
    if (w != NULL)
        for (query_t **p = &w->queries; *p != NULL; p = &(*p)->next)
            if (*p == q) {
                *p = q->next;
                break;
            }
    bool ipv6 = q->ipv6;
    free(q);
    if (w == NULL)
        return; /* detached: its round was abandoned */
    if (status == ARES_SUCCESS)
        status = parse_answer(w, ipv6, abuf, alen);
    /* NXDOMAIN and no data: no pods, not a failure (the TTL is ignored: the interval rules) */
    if (status != ARES_SUCCESS && status != ARES_ENOTFOUND && status != ARES_ENODATA &&
        w->round_err == NULL) {
        w->round_err = dns_err_name(status);
        w->round_err_rr = ipv6 ? "AAAA" : "A";
    }
    query_done(w);
}

/* ---------- c-ares on the event loop ---------- */

static void arm_timeout(mg_disc_t *d)
{
    struct timeval tv, *next = ares_timeout(d->ch, NULL, &tv);
    if (next != NULL)
        evtimer_add(d->timeout, next);
    else
        evtimer_del(d->timeout);
}

static void on_ares_timeout(evutil_socket_t fd, short events, void *arg)
{
    mg_disc_t *d = arg;
    (void)fd, (void)events;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_timeout(d);
}

static void on_sock(evutil_socket_t fd, short events, void *arg)
{
    mg_disc_t *d = arg;
    /* may free this event (on_sock_state): libevent allows it from its own callback */
    ares_process_fd(d->ch, (events & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (events & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    arm_timeout(d);
}

static void sock_free(sock_t *s)
{
    if (s->ev != NULL)
        event_free(s->ev);
    free(s);
}

/* c-ares opens, closes and changes interest in its sockets (UDP, and TCP for big answers). */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    mg_disc_t *d = data;
    sock_t **p = &d->socks;
    while (*p != NULL && (*p)->fd != fd)
        p = &(*p)->next;
    sock_t *s = *p;
    short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    if (what == 0) {
        if (s != NULL) {
            *p = s->next;
            sock_free(s);
        }
        return;
    }
    if (s != NULL && s->what == what)
        return;
    if (s == NULL) {
        if ((s = calloc(1, sizeof(*s))) == NULL)
            return; /* its queries time out: a failed round, retried */
        s->fd = fd;
        s->next = d->socks;
        d->socks = s;
    } else if (s->ev != NULL) {
        event_free(s->ev);
    }
    s->what = what;
    s->ev = event_new(d->base, fd, what | EV_PERSIST, on_sock, d);
    if (s->ev != NULL)
        event_add(s->ev, NULL);
}

static void issue(watch_t *w, bool ipv6)
{
    query_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        if (w->round_err == NULL) {
            w->round_err = "out of memory";
            w->round_err_rr = ipv6 ? "AAAA" : "A";
        }
        return;
    }
    /* linked and counted first: c-ares may answer (fail) inside ares_search */
    q->w = w;
    q->ipv6 = ipv6;
    q->next = w->queries;
    w->queries = q;
    w->pending++;
    ares_search(w->d->ch, w->host, ns_c_in, ipv6 ? ns_t_aaaa : ns_t_a, on_answer, q);
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
    mg_disc_t *d = w->d;
    w->pending = 1; /* held while issuing, so an early answer cannot end the round */
    if (d->families & MG_DISC_IPV4)
        issue(w, false);
    if (d->families & MG_DISC_IPV6)
        issue(w, true);
    query_done(w); /* may free |w| (unwatched from the callback) */
    arm_timeout(d);
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

static pthread_once_t g_ares_once = PTHREAD_ONCE_INIT;
static int g_ares_init = ARES_ENOTINITIALIZED;

static void ares_init_once(void)
{
    g_ares_init = ares_library_init(ARES_LIB_INIT_ALL);
}

/* A channel with the discoverer's nameserver, timeout and attempts, on its event loop. */
static int open_channel(mg_disc_t *d)
{
    struct ares_options o;
    memset(&o, 0, sizeof(o));
    o.sock_state_cb = on_sock_state;
    o.sock_state_cb_data = d;
    o.timeout = (int)d->timeout_ms;
    o.tries = (int)d->attempts;
    int rc =
        ares_init_options(&d->ch, &o, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        d->ch = NULL;
        return rc;
    }
    if (d->servers[0] != '\0' &&
        (rc = ares_set_servers_ports_csv(d->ch, d->servers)) != ARES_SUCCESS) {
        ares_destroy(d->ch);
        d->ch = NULL;
    }
    return rc;
}

/* Destroys the channel: queries still running answer ARES_EDESTRUCTION to their (detached)
 * query objects, which frees them; c-ares closes its sockets (on_sock_state). */
static void close_channel(mg_disc_t *d)
{
    if (d->ch != NULL)
        ares_destroy(d->ch);
    d->ch = NULL;
    while (d->socks != NULL) { /* should be none left */
        sock_t *s = d->socks;
        d->socks = s->next;
        sock_free(s);
    }
    evtimer_del(d->timeout);
}

mg_err_t mg_disc_set_timeout(mg_disc_t *d, uint32_t timeout_ms, unsigned attempts)
{
    if (timeout_ms == 0 || timeout_ms > INT32_MAX || attempts < 1 || attempts > 255)
        return MG_E_CONFIG;
    if (d->ch != NULL && d->timeout_ms == timeout_ms && d->attempts == attempts)
        return MG_OK;
    d->timeout_ms = timeout_ms;
    d->attempts = attempts;
    if (d->ch == NULL)
        return MG_OK;
    /* c-ares takes these at init only: a new channel, and the rounds in flight start again */
    for (watch_t *w = d->watches; w != NULL; w = w->next)
        if (w->queries != NULL || w->pending > 0) {
            cancel_round(w);
            schedule(w, 0);
        }
    close_channel(d);
    return open_channel(d) == ARES_SUCCESS ? MG_OK : MG_E_NOMEM;
}

mg_err_t mg_disc_set_families(mg_disc_t *d, unsigned families)
{
    if (families == 0 || (families & ~(MG_DISC_IPV4 | MG_DISC_IPV6)) != 0)
        return MG_E_CONFIG;
    d->families = families;
    return MG_OK;
}

/* c-ares quietly falls back to 127.0.0.1 without a usable resolv.conf: refuse that instead. */
static const char *resolv_conf_problem(void)
{
    FILE *f = fopen(RESOLV_CONF, "r");
    if (f == NULL)
        return "cannot open it";
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, "nameserver", 10) == 0 && (p[10] == ' ' || p[10] == '\t')) {
            p += 10;
            while (*p == ' ' || *p == '\t')
                p++;
            found = *p != '\0' && *p != '\n' && *p != '#' && *p != ';';
        }
    }
    bool bad = ferror(f);
    fclose(f);
    return bad ? "cannot read it" : found ? NULL : "it lists no nameserver";
}

bool mg_disc_parse_nameserver(const char *nameserver, struct sockaddr_storage *ss)
{
    int len = (int)sizeof(*ss);
    memset(ss, 0, sizeof(*ss));
    return evutil_parse_sockaddr_port(nameserver, (struct sockaddr *)ss, &len) == 0 &&
           (ss->ss_family == AF_INET || ss->ss_family == AF_INET6);
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
    pthread_once(&g_ares_once, ares_init_once);
    if (g_ares_init != ARES_SUCCESS) {
        snprintf(err, errlen, "DNS: c-ares did not initialise: %s", ares_strerror(g_ares_init));
        return NULL;
    }
    if ((d = calloc(1, sizeof(*d))) == NULL)
        goto nomem;
    d->base = base;
    d->cb = cb;
    d->ud = ud;
    d->families = MG_DISC_IPV4 | MG_DISC_IPV6;
    d->timeout_ms = DEFAULT_TIMEOUT_MS;
    d->attempts = DEFAULT_ATTEMPTS;
    if ((d->timeout = evtimer_new(base, on_ares_timeout, d)) == NULL)
        goto nomem;
    if (nameserver != NULL) {
        struct sockaddr_storage ss;
        if (!mg_disc_parse_nameserver(nameserver, &ss)) {
            snprintf(err, errlen,
                     "DNS nameserver \"%s\": not an IP address with an optional port; expected "
                     "e.g. \"127.0.0.1:5353\", \"10.96.0.10\" or \"[::1]:53\"",
                     nameserver);
            goto fail;
        }
        char ip[INET6_ADDRSTRLEN];
        const struct sockaddr_in *s4 = (const void *)&ss;
        const struct sockaddr_in6 *s6 = (const void *)&ss;
        unsigned port = ntohs(ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port);
        inet_ntop(ss.ss_family,
                  ss.ss_family == AF_INET ? (const void *)&s4->sin_addr
                                          : (const void *)&s6->sin6_addr,
                  ip, sizeof(ip));
        snprintf(d->servers, sizeof(d->servers), ss.ss_family == AF_INET ? "%s:%u" : "[%s]:%u", ip,
                 port ? port : 53);
        snprintf(d->nameserver, sizeof(d->nameserver), "%s", nameserver);
    } else {
        const char *problem = resolv_conf_problem();
        if (problem != NULL) {
            snprintf(err, errlen, "DNS: cannot use %s (%s); give a nameserver explicitly",
                     RESOLV_CONF, problem);
            goto fail;
        }
        snprintf(d->nameserver, sizeof(d->nameserver), "%s", "the resolv.conf nameservers");
    }
    int rc = open_channel(d);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "DNS: cannot set up the resolver for %s: %s", d->nameserver,
                 ares_strerror(rc));
        goto fail;
    }
    return d;
nomem:
    snprintf(err, errlen, "discovery: out of memory");
fail:
    if (d != NULL) {
        if (d->timeout != NULL)
            event_free(d->timeout);
        free(d);
    }
    return NULL;
}

void mg_disc_free(mg_disc_t *d)
{
    if (d == NULL)
        return;
    while (d->watches != NULL) {
        watch_t *w = d->watches;
        d->watches = w->next;
        free_watch(w); /* detaches its queries: ares_destroy's callbacks only free them */
    }
    close_channel(d);
    event_free(d->timeout);
    free(d);
}
