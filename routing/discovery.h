/*
 * routing/discovery.h - pods of a service from DNS, re-resolved periodically.
 *
 * A discoverer watches DNS names (a Kubernetes headless Service answers one A/AAAA record per
 * ready pod) and tells its owner whenever a name's set of addresses changes, so pods appear and
 * disappear without a reload. It only reports sets: what to do with requests in flight to a pod
 * that left (let them finish) is the caller's business, typically by building a new immutable
 * snapshot from the set and leaving the old one to the requests that hold it.
 *
 * Resolution is asynchronous (c-ares, driven by the caller's event_base); nothing here blocks
 * except reading /etc/resolv.conf once in mg_disc_new. Each watch resolves its name at once,
 * then again interval_ms after each answer or failure (queries of one watch never overlap). The
 * DNS TTL is ignored: the interval is the refresh period.
 *
 * What an answer means for the set of a watch (A and AAAA answers are merged):
 *   - records             -> the set is those addresses (sorted, duplicates removed, at most
 *                            MG_DISC_MAX_ADDRS; the rest is dropped and logged), port = the
 *                            watch's port in every sockaddr;
 *   - NXDOMAIN or no data -> the set is empty: the service has no pods (n = 0);
 *   - timeout, SERVFAIL, REFUSED, a refused connection, a malformed answer, or any
 *     other failure of either query -> the last set is kept, one warning is logged per failure
 *     streak (and one info line when the name resolves again), and the watch retries at its
 *     interval.
 * The callback runs for the first answer of a watch (even an empty one) and then for every
 * answer whose set differs from the last one reported. Before its first answer a watch has no
 * set and the callback has not run.
 *
 * A name with more pods than a 512-byte UDP answer holds (about 29 A records) gets a truncated
 * answer over UDP; c-ares then asks again over TCP, so every pod (up to MG_DISC_MAX_ADDRS) is
 * found.
 *
 * Threading and ownership: a discoverer belongs to the thread that runs |base| (the admin or
 * main thread, not a worker); every call, and every callback, happens on that thread. Strings
 * passed in are copied. The addresses given to the callback belong to the discoverer and are
 * valid only during the call. The callback may call mg_disc_watch and mg_disc_unwatch (also
 * for its own key) but must not call mg_disc_free.
 */
#ifndef MG_ROUTING_DISCOVERY_H
#define MG_ROUTING_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/err.h"

struct event_base;

/* addresses per watch, as many as a service may have pods; more are dropped (and logged) */
#define MG_DISC_MAX_ADDRS 64
#define MG_DISC_MIN_INTERVAL_MS 100 /* shorter intervals are raised to this */
#define MG_DISC_MAX_HOSTNAME 253    /* the longest DNS name */

/* Query families (mg_disc_set_families). */
#define MG_DISC_IPV4 1u /* A records */
#define MG_DISC_IPV6 2u /* AAAA records */

typedef struct mg_disc mg_disc_t; /* opaque: fields live in discovery.c */

/* Called with the new set of |key|: |n| addresses (0 = no pods), sorted (IPv4 first, then by
 * address and port), distinct, each with the watch's port. */
typedef void (*mg_disc_cb)(void *ud, const char *key, const struct sockaddr_storage *addrs,
                           size_t n);

/* Parses a nameserver as mg_disc_new takes it ("IP" or "IP:port", "[v6]:port") into |ss|
 * (port 0 when absent); false when it is not one. gateway.json's check uses it too, so a bad
 * one is refused before start, not when discovery starts. */
bool mg_disc_parse_nameserver(const char *nameserver, struct sockaddr_storage *ss);

/*
 * Creates a discoverer on |base|. |nameserver| is "IP" or "IP:port" ("127.0.0.1:5353",
 * "[::1]:53"; port 53 when absent), or NULL for the nameservers, search list and options of
 * /etc/resolv.conf. Queries time out after 2 s with 2 attempts (mg_disc_set_timeout) and ask
 * for A and AAAA (mg_disc_set_families). Returns NULL with a message in |err| (when errlen > 0)
 * when |base| or |cb| is NULL, the nameserver is not an IP address with an optional port,
 * /etc/resolv.conf is missing, unreadable or lists no nameserver, or memory runs out.
 */
mg_disc_t *mg_disc_new(struct event_base *base, const char *nameserver, mg_disc_cb cb, void *ud,
                       char *err, size_t errlen);

/*
 * Frees every watch and the resolver, with its sockets and events. No callback runs
 * afterwards; queries still in flight are cancelled at once. NULL is fine. Must not be called
 * from the callback.
 */
void mg_disc_free(mg_disc_t *d);

/*
 * Watches |hostname| (a DNS name, or an IP literal, which is its own one-address set and is
 * never re-resolved) for |key| (e.g. the service name), with |port| in every address, resolving
 * every |interval_ms| (raised to MG_DISC_MIN_INTERVAL_MS). Idempotent: the same key with the
 * same hostname (ignoring case) and port only takes the new interval (from the next
 * resolution on). The same key with another hostname or port replaces the watch: the last set
 * stays until the new name's first answer, which is always reported. Resolution starts on the
 * next loop turn; this call never runs the callback. Returns MG_OK; MG_E_CONFIG (logged) when
 * |key| is empty, |hostname| is empty, longer than MG_DISC_MAX_HOSTNAME or not a valid name, or
 * |port| is 0; MG_E_NOMEM.
 */
mg_err_t mg_disc_watch(mg_disc_t *d, const char *key, const char *hostname, uint16_t port,
                       uint32_t interval_ms);

/* Stops watching |key| (its in-flight queries are cancelled, no callback runs for it any
 * more). Unknown keys are ignored. */
void mg_disc_unwatch(mg_disc_t *d, const char *key);

/*
 * Per-query timeout and number of attempts (1..255); a failure is reported after about
 * timeout_ms * attempts. The resolver is rebuilt with them, and resolutions in flight start
 * again. Not from the callback. Returns MG_OK, MG_E_CONFIG when timeout_ms is 0 or attempts
 * is out of range, or MG_E_NOMEM.
 */
mg_err_t mg_disc_set_timeout(mg_disc_t *d, uint32_t timeout_ms, unsigned attempts);

/* Which records to ask for from the next resolution on: MG_DISC_IPV4, MG_DISC_IPV6 or both
 * (the default). Returns MG_E_CONFIG for any other value. */
mg_err_t mg_disc_set_families(mg_disc_t *d, unsigned families);

/* What a watch knows now, for the admin API and metrics. */
typedef struct mg_disc_status {
    bool answered;     /* a first answer arrived (naddrs is meaningful) */
    size_t naddrs;     /* addresses in the last reported set */
    unsigned failures; /* consecutive failed resolutions (0 = the last one succeeded) */
    const char *error; /* the last failure ("timeout", ...), static, or NULL */
    uint64_t answers;  /* successful resolutions so far */
} mg_disc_status_t;

/* Fills |out| and returns true, or returns false when |key| is not watched. */
bool mg_disc_status(const mg_disc_t *d, const char *key, mg_disc_status_t *out);

/* ---------- address sets: pure helpers ---------- */

/* Orders by family (AF_INET before AF_INET6), then address bytes, then port; other families
 * last, by family number. Only those fields count, never the padding. */
int mg_disc_addr_cmp(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* Sorts |a| in place, removes duplicates and keeps at most |cap| addresses (the lowest ones).
 * Returns the new count; *dropped (when not NULL) receives how many distinct addresses did
 * not fit. */
size_t mg_disc_addrs_normalize(struct sockaddr_storage *a, size_t n, size_t cap, size_t *dropped);

/* True when the two sets hold the same addresses in the same order (mg_disc_addr_cmp). */
bool mg_disc_addrs_equal(const struct sockaddr_storage *a, size_t na,
                         const struct sockaddr_storage *b, size_t nb);

/* Writes "10.0.0.7:9000" or "[fd00::7]:9000" into |buf| (always terminated when len > 0) and
 * returns buf; "?" for an unknown family. 48 bytes always suffice. */
char *mg_disc_addr_format(const struct sockaddr_storage *a, char *buf, size_t len);

#endif /* MG_ROUTING_DISCOVERY_H */
