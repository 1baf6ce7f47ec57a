/*
 * common/stats.h - request counters per route, service and pod, one block per worker thread.
 *
 * A series (mg_stats_t) is named by its kind and labels ("route", "app=\"digits\",env=\"prod\"")
 * and is reference-counted: each mg_stats_get takes a reference, mg_stats_release drops one and
 * the last frees the series. Routing snapshots come and go (reloads, DNS changes) but a series
 * found again by the same name while it lives keeps counting, as Prometheus counters must; one
 * found again after its last release starts from zero (a counter reset, which Prometheus's
 * rate() handles). Route and service series are never released; a pod's is released with its
 * state (routing/podstate.h), so pods that come and go do not grow the registry. Each worker
 * writes only its own block (index = worker id), so the hot path takes no lock and shares no
 * cache line; the admin thread sums the blocks on scrape. Counters are relaxed atomics: a worker
 * is the only writer of its block, the scraper only reads.
 */
#ifndef MG_COMMON_STATS_H
#define MG_COMMON_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MG_STATS_LAT_BUCKETS 14 /* upper bounds in mg_stats_lat_bounds_us, then +Inf */

typedef enum mg_stats_kind {
    MG_STATS_ROUTE = 0,
    MG_STATS_SERVICE = 1,
    MG_STATS_POD = 2,
    MG_STATS_NKINDS = 3,
} mg_stats_kind_t;

typedef struct mg_stat_block {
    _Alignas(64) atomic_uint_fast64_t status[6]; /* [0] no response, [1..5] = 1xx..5xx */
    atomic_uint_fast64_t lat[MG_STATS_LAT_BUCKETS + 1]; /* per bucket (not cumulative) */
    atomic_uint_fast64_t lat_sum_us;
    atomic_uint_fast64_t retries;          /* attempts after the first */
    atomic_uint_fast64_t budget_exhausted; /* retries refused by the retry budget */
    atomic_uint_fast64_t fallbacks;        /* split requests sent to another service */
    atomic_uint_fast64_t overflows;        /* refused by a circuit-breaker limit */
    atomic_uint_fast64_t failures;         /* attempts that failed (connect, 5xx, timeout) */
    atomic_uint_fast64_t ejections;        /* times the pod was ejected */
    /* not counters: the worker's retry-budget window for a service (mg_stats_sum skips them) */
    atomic_uint_fast64_t budget_second, budget_requests, budget_retries;
} mg_stat_block_t;

typedef struct mg_stats {
    mg_stats_kind_t kind;
    atomic_bool retired; /* no longer in the routing (a pod gone from DNS): left out of scrapes */
    char *labels;       /* Prometheus label list without braces, e.g. service="a",pod="b" */
    mg_stat_block_t *w; /* mg_stats_workers() blocks */
    size_t _refs;       /* mg_stats_get calls not released yet; under the registry's lock */
    struct mg_stats *next, *_prev;
} mg_stats_t;

/* Sets the number of worker blocks per series; call once at start, before any mg_stats_get.
 * Default 1. */
void mg_stats_init(unsigned workers);
unsigned mg_stats_workers(void);
/* The series of |kind| with |labels| (copied), created zeroed the first time, with one more
 * reference. NULL when out of memory. Thread-safe (a mutex: call it when building snapshots, not
 * per request). */
mg_stats_t *mg_stats_get(mg_stats_kind_t kind, const char *labels);
/* Drops the reference of one mg_stats_get on |s| (NULL: nothing); the last removes the series
 * from the registry (scrapes no longer list it) and frees it, so nobody may record into it
 * after that. Thread-safe (the registry's mutex). */
void mg_stats_release(mg_stats_t *s);
/* Series alive (not yet released as often as got), of every kind. */
size_t mg_stats_count(void);
/* Calls |fn| for every series of |kind| that is not retired, in creation order, under the
 * registry's lock. */
void mg_stats_each(mg_stats_kind_t kind, void (*fn)(void *ud, const mg_stats_t *s), void *ud);
/* Retires every series of |kind| but the |n| of |current| (those the routes in force name):
 * mg_stats_each leaves a retired series out until a snapshot names it again, its counts
 * kept. */
void mg_stats_mark_current(mg_stats_kind_t kind, mg_stats_t *const *current, size_t n);
/* The sum of every worker's block. */
void mg_stats_sum(const mg_stats_t *s, mg_stat_block_t *out);

/* Records one finished request on |worker|'s block: its status (0 = none) and duration. */
void mg_stats_record(mg_stats_t *s, unsigned worker, int status, int64_t us);
/* Adds 1 to the counter at |field| (e.g. offsetof(mg_stat_block_t, retries)). */
void mg_stats_inc(mg_stats_t *s, unsigned worker, size_t field);

/* The latency buckets' upper bounds in microseconds (MG_STATS_LAT_BUCKETS of them). */
extern const int64_t mg_stats_lat_bounds_us[MG_STATS_LAT_BUCKETS];

/* Writes |s| as a Prometheus label value (backslash, quote and newline escaped) into |out|,
 * cut to fit |cap| bytes. */
void mg_stats_label_value(char *out, size_t cap, const char *s);

/* Frees every series (at exit, when no thread uses them any more). */
void mg_stats_free_all(void);

#endif /* MG_COMMON_STATS_H */
