/*
 * features/fsource.h - the source of truth: MariaDB lookups and writes on their own threads,
 * Redis write-back, and the cross-worker side of request coalescing.
 *
 * One mg_fsource_t per process. MariaDB is used through the blocking Connector/C API on
 * |mariadb.threads| threads of this module (never on an event loop); each thread also keeps a
 * blocking Redis connection for the cache-aside write-back (features read from MariaDB are
 * written to Redis with a TTL before the waiting workers hear about them).
 *
 * Lookups are coalesced across workers: while a lookup of (app, user) is queued or running,
 * more requests for it join it; its result is kept for one second after it completes (requests
 * that missed Redis just before the write-back landed then need no second query). Writes
 * (admin API) drop that kept result, and then, once Redis has the change, have every sink
 * evict the users written from its worker's cache: a write completes after every worker of
 * the process dropped its copies (or after 1 s, when one did not get to it).
 *
 * Completions: a worker gets lookup results through its sink (mg_fsink_new): a queue and a pipe
 * watched by an event on the worker's base, so a result is handled on the worker's own thread
 * (worker bases are NOLOCK; nothing from another thread may touch them). Write jobs complete on
 * a locking base (the admin thread's) through event_base_once.
 *
 * Ownership and shutdown: mg_fsource_stop joins the threads (queued writes complete with an
 * error); sinks are freed by their owners before mg_fsource_free.
 */
#ifndef MG_FEATURES_FSOURCE_H
#define MG_FEATURES_FSOURCE_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <jansson.h>

#include "common/err.h"
#include "features/fconf.h"
#include "features/fmetrics.h"
#include "features/fvalue.h"

typedef struct mg_fsource mg_fsource_t;
typedef struct mg_fsink mg_fsink_t;

typedef enum mg_fdb_result {
    MG_FDB_HIT = 0,   /* the user has a row: |val| */
    MG_FDB_MISS = 1,  /* no row (an unknown user), or a row without features ({}) */
    MG_FDB_ERROR = 2, /* MariaDB failed or is not configured */
} mg_fdb_result_t;

/* |conf| must outlive the source. Starts the MariaDB threads (they connect on first use).
 * NULL with a reason in |err| when the threads cannot start. */
mg_fsource_t *mg_fsource_new(const mg_fconf_t *conf, unsigned nworkers, char *err, size_t errlen);
void mg_fsource_stop(mg_fsource_t *s); /* joins the threads; idempotent; NULL is fine */
void mg_fsource_free(mg_fsource_t *s); /* stops first; NULL is fine */

const mg_fconf_t *mg_fsource_conf(const mg_fsource_t *s);
/* Worker |i|'s counters (i < nworkers). */
mg_fmetrics_t *mg_fsource_metrics(mg_fsource_t *s, unsigned i);
/* An admin page (mg_admin_page_fn): the Prometheus text of all counters. */
int mg_fsource_metrics_page(void *ud, const char *query, struct evbuffer *out,
                            const char **content_type);

/* Called on the sink's thread for each lookup result; |val| is borrowed (NULL unless HIT). */
typedef void (*mg_fsink_fn)(void *ud, void *tag, mg_fdb_result_t r, mg_fval_t *val);
/* Called on the sink's thread after a PUT or DELETE of the |n| |users| of |app| (borrowed,
 * valid during the call): the worker drops what it holds of them. It comes after the results
 * of every lookup that may have read the old features, in the sink's order. */
typedef void (*mg_fsink_evict_fn)(void *ud, const mg_fapp_t *app, const char *const *users,
                                  size_t n);

/* A completion queue delivered on |base| (created and used by that base's thread). NULL when
 * out of memory or out of file descriptors. */
mg_fsink_t *mg_fsink_new(mg_fsource_t *s, struct event_base *base, mg_fsink_fn fn,
                         mg_fsink_evict_fn evict, void *ud);
/* Drops the results and evictions not yet delivered and every pending delivery to this sink
 * (a write waiting for its evictions no longer waits for this sink's). */
void mg_fsink_free(mg_fsink_t *k);

/* Looks (app, user) up in MariaDB; the result reaches |k|'s function with |tag|, exactly once
 * (unless the sink is freed first). MG_OK, or MG_E_UPSTREAM when MariaDB is not configured or
 * the source is stopped, MG_E_LIMIT when too many lookups are queued (no callback then). */
mg_err_t mg_fsource_lookup(mg_fsource_t *s, mg_fsink_t *k, const mg_fapp_t *app, const char *user,
                           void *tag);

/* ---- writes (admin API) ---- */

typedef enum mg_fwrite_op {
    MG_FW_PUT = 0,    /* upsert rows: users[i] -> docs[i] (normalized) */
    MG_FW_DELETE = 1, /* users[0] */
    MG_FW_GET = 2,    /* users[0]: the stored text into |got| */
} mg_fwrite_op_t;

/* Whether a PUT or DELETE reached Redis too (MariaDB is the truth; Redis is refreshed after). */
typedef enum mg_fwrite_redis {
    MG_FW_REDIS_OFF = 0,   /* no Redis configured */
    MG_FW_REDIS_REFRESHED, /* Redis has the change */
    MG_FW_REDIS_FAILED,    /* Redis may still serve the previous features until their TTL */
} mg_fwrite_redis_t;

typedef struct mg_fwrite {
    /* in: set by the caller; users and docs are owned by the job (mg_fwrite_free) */
    const mg_fapp_t *app;
    mg_fwrite_op_t op;
    size_t n;
    char **users;
    json_t **docs;
    struct event_base *base; /* a locking base: |done| runs there */
    void (*done)(struct mg_fwrite *w);
    void *ud;
    /* out */
    mg_err_t err; /* MG_OK, MG_E_UPSTREAM (MariaDB failed: errmsg says why) */
    bool refused; /* MG_E_UPSTREAM: the table refused a row (narrower than schema.sql...) */
    bool unknown; /* MG_E_UPSTREAM, but MariaDB may have taken the change (it did not answer):
                   * Redis's and the workers' copies of these users were dropped */
    char errmsg[256];
    size_t affected;         /* rows written, deleted or found */
    char *got;               /* GET: the stored features text (malloc), NULL when absent */
    mg_fwrite_redis_t redis; /* PUT, DELETE: after MariaDB took the change */
    char redis_errmsg[160];  /* MG_FW_REDIS_FAILED: why */
    struct mg_fwrite *_next;
} mg_fwrite_t;

/* A job with room for |cap| rows (n = 0), or NULL. */
mg_fwrite_t *mg_fwrite_new(const mg_fapp_t *app, mg_fwrite_op_t op, size_t cap);
void mg_fwrite_free(mg_fwrite_t *w);

/* Queues |w|; w->done(w) runs later on w->base, which then owns |w| again. MG_OK, or
 * MG_E_UPSTREAM when MariaDB is not configured or the source is stopped (no callback). */
mg_err_t mg_fsource_write(mg_fsource_t *s, mg_fwrite_t *w);

#endif /* MG_FEATURES_FSOURCE_H */
