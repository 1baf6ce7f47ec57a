/*
 * gateway/dblog.h - the request log in MariaDB: every access-log record also becomes a row.
 *
 * The access log's writer thread hands each batch of JSON lines to mg_dblog_sink (installed with
 * mg_reqlog_set_sink) before it writes them to the file; the sink appends them to a write-ahead
 * spool on disk and fsyncs it
 * (gateway/spool.h); workers never see any of this. A database thread of this module reads the
 * spool in order, turns each line into a row's values (gateway/dbrow.h), inserts them with one
 * prepared bulk INSERT per batch (MariaDB's array binding: no SQL text per row, nothing to
 * escape) and then commits the spool position. The table's key holds the record's id (reqlog.h), and duplicates are ignored, so a
 * batch replayed after a crash or a lost connection lands exactly once.
 *
 * When MariaDB is slow or down, records wait in the spool (the DB thread reconnects with
 * backoff) and go in, in order, when it is back; after a restart the spool is replayed too. When
 * the spool reaches its cap, new records are counted as lost (mg_dblog_stats) and an ERROR line
 * says how many, once a second: the gateway keeps serving and the loss is never silent.
 *
 * At connect the thread creates the database (when allowed) and the table (conf/request_log.sql
 * shows its layout), keeps day partitions a week ahead and drops the ones older than
 * retention_days; it checks again every hour.
 *
 * Memory: one spool read buffer (2 MiB) and the batch's parameter arrays (about 600 bytes per
 * batch_rows), whatever the backlog. Threading:
 * mg_dblog_sink runs on the access log's writer thread, mg_dblog_stats anywhere, open and close
 * on the main thread. Ownership: mg_dblog_open copies what it needs from |conf|.
 */
#ifndef MG_GATEWAY_DBLOG_H
#define MG_GATEWAY_DBLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct mg_dblog mg_dblog_t;

/* The "request_log_db" section of gateway.json (conf/README.md). Strings NULL = the default. */
typedef struct mg_dblog_conf {
    char *host;          /* required: NULL means the database log is off */
    uint32_t port;       /* 3306 */
    char *user;          /* "modelgate" */
    char *password_file; /* one line, the password (common/secretfile.h); NULL = none */
    char *database;      /* "modelgate" */
    char *table;         /* "request_log" */
    char *spool_dir;     /* required with host */
    uint32_t spool_max_mb;   /* 1024 */
    uint32_t batch_rows;     /* 500: rows per INSERT, at most */
    uint32_t flush_ms;       /* 200: longest wait before a partial batch goes in */
    uint32_t retention_days; /* 90; 0 = never drop partitions */
} mg_dblog_conf_t;

typedef struct mg_dblog_stats {
    uint64_t spooled;     /* records appended to the spool */
    uint64_t inserted;    /* rows inserted */
    uint64_t duplicates;  /* replayed records the table already had (not inserted twice) */
    uint64_t lost;        /* records not kept: spool full or not writable */
    uint64_t rejected;    /* spool lines that were not a record, or rows MariaDB refused */
    uint64_t spool_bytes; /* bytes of spool on disk (against spool_max_mb) */
    uint64_t pending_bytes; /* of those, not in MariaDB yet: the backlog */
    bool connected;
} mg_dblog_stats_t;

/* Sets the numeric defaults above; strings stay NULL. */
void mg_dblog_conf_defaults(mg_dblog_conf_t *c);

/* Opens the spool (replaying what a previous run left), reads the password file and starts the
 * database thread; MariaDB need not be up. NULL on failure, logged with the path and reason. */
#define MG_DBLOG_PASSWORD_MAX 1023 /* bytes in request_log_db.password_file */

mg_dblog_t *mg_dblog_open(const mg_dblog_conf_t *conf);

/* A mg_reqlog_sink_fn: spools |len| bytes of whole lines; |ud| is the mg_dblog_t. */
void mg_dblog_sink(void *ud, const char *lines, size_t len);
/* A mg_reqlog_lost_fn: |records| never reached the spool; counted as lost. */
void mg_dblog_lost(void *ud, uint64_t records);

/* Counters since open. Thread-safe. */
void mg_dblog_stats(mg_dblog_t *d, mg_dblog_stats_t *out);

/* Stops the database thread after a last attempt (at most about 2 s, and only while MariaDB
 * answers) to insert what is spooled; the rest stays in the spool for the next start. Returns
 * within about 3 s even when MariaDB hangs: then the thread is left running and |d| is not
 * freed (the process is exiting). Call it after mg_reqlog_close, so the last lines reach the
 * spool. NULL is fine. */
void mg_dblog_close(mg_dblog_t *d);

#endif /* MG_GATEWAY_DBLOG_H */
