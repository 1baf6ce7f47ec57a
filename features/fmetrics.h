/*
 * features/fmetrics.h - counters of the feature lookups, and their Prometheus text.
 *
 * One mg_fmetrics_t per worker (written by that worker only, read by the admin thread) and one
 * mg_fdb_metrics_t for the MariaDB threads: relaxed atomics, so a scrape costs the request
 * path nothing but the increments. mg_fmetrics_render sums the workers.
 */
#ifndef MG_FEATURES_FMETRICS_H
#define MG_FEATURES_FMETRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* Request outcomes, as sent in x-modelgate-features and logged. */
typedef enum mg_fstatus {
    MG_FS_HIT = 0,         /* features attached */
    MG_FS_MISS = 1,        /* the user has no features (unknown, or none has a value) */
    MG_FS_TIMEOUT = 2,     /* the app's budget passed first */
    MG_FS_UNAVAILABLE = 3, /* a store is down or failed */
    MG_FS_NONE = 4,        /* no (valid) unit id in the request */
    MG_FS_TOO_LARGE = 5,   /* the snapshot exceeds max_header_bytes: not sent */
    MG_FS_COUNT = 6
} mg_fstatus_t;

const char *mg_fstatus_name(mg_fstatus_t s);

#define MG_FM_BUCKETS 12     /* latency histogram: upper bounds in fmetrics.c, then +Inf */
#define MG_FM_LATE_BUCKETS 6 /* lateness of budget timeouts: likewise */

typedef struct mg_fmetrics {
    atomic_ullong status[MG_FS_COUNT];
    /* local cache: fresh hit, stale hit (served, refreshed), negative hit, absent */
    atomic_ullong local_fresh, local_stale, local_negative, local_absent;
    /* Redis: lookups sent, then found (known user), negative marker, absent, failed */
    atomic_ullong redis_lookups, redis_hit, redis_negative, redis_miss, redis_error;
    atomic_ullong redis_connects, redis_disconnects, coalesced;
    /* connection attempts that did not end up usable: refused, timed out, or an error reply
     * to the handshake (AUTH, SELECT, PING) */
    atomic_ullong redis_connect_failures;
    /* connections dropped because a reply was due for longer than redis.reply_timeout_ms */
    atomic_ullong redis_reply_timeouts;
    atomic_ullong db_refused; /* Redis misses not sent to MariaDB: max_waiting reached */
    atomic_int redis_up;
    atomic_ullong lat_bucket[MG_FM_BUCKETS + 1];
    atomic_ullong lat_sum_us, lat_count;
    /* how long after its deadline each timed-out request went on: the budget timer's delay */
    atomic_ullong late_bucket[MG_FM_LATE_BUCKETS + 1];
    atomic_ullong late_sum_us, late_count;
} mg_fmetrics_t;

typedef struct mg_fdb_metrics {
    atomic_ullong lookups, hit, miss, error, coalesced, writeback_ok, writeback_error;
    /* write-backs Redis dropped: a key of the user was written, expired or evicted since the
     * lookup's WATCH (fsource.c, redis_watch) */
    atomic_ullong writeback_superseded;
    atomic_ullong rows_written, rows_deleted;
} mg_fdb_metrics_t;

#define MG_FM_INC(field) atomic_fetch_add_explicit(&(field), 1, memory_order_relaxed)

/* Records one request's lookup: its outcome and its latency in microseconds. */
void mg_fmetrics_observe(mg_fmetrics_t *m, mg_fstatus_t s, int64_t us);

/* Records that a request whose features budget ended at its deadline went on |us|
 * microseconds after it. */
void mg_fmetrics_observe_late(mg_fmetrics_t *m, int64_t us);

/* Appends the Prometheus text of |n| workers' |w| and of |db| to |out|. */
void mg_fmetrics_render(const mg_fmetrics_t *w, size_t n, const mg_fdb_metrics_t *db,
                        struct evbuffer *out);

#endif /* MG_FEATURES_FMETRICS_H */
