/*
 * gateway/reqlog.h - the access log: one JSON line per request, every request.
 *
 * Workers format a record into a stack buffer and append it to an in-memory queue under a short
 * mutex; a writer thread owns the file and does all I/O, so no worker ever blocks on disk. It
 * starts a batch at most every 10 ms (sooner past 256 KiB queued), so a line is in the file
 * within about 10 ms of its request's end while the disk keeps up. The queue is bounded
 * (64 MiB): past it, lines are counted as dropped and a loud warning says how many, never
 * silently. mg_reqlog_reopen() (SIGUSR1) makes the writer reopen the path after its
 * next batch, for log rotation. mg_reqlog_close() writes everything queued, then joins.
 *
 * Every line carries "id", the record's idempotency key: 32 hex digits, a 64-bit random number
 * drawn when the log is opened (one per process start) followed by a 64-bit counter. It is unique
 * across restarts and gateway instances, so a store fed from these lines (gateway/dblog.h) can
 * drop a replayed record instead of counting it twice.
 *
 * A sink (mg_reqlog_set_sink) sees every batch of lines on the writer thread before it goes to
 * the file: that is how the database log gets the same records without any work on the
 * workers. The file is written by a thread of its own, so a file that blocks (a stdout pipe
 * nobody reads) never holds the sink back: past 64 MiB waiting for the file, lines are dropped
 * from the access log only, counted and said.
 */
#ifndef MG_GATEWAY_REQLOG_H
#define MG_GATEWAY_REQLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct mg_reqlog mg_reqlog_t;

/* One record. Strings may be NULL (written as null) and are not retained after the call. */
typedef struct mg_reqlog_rec {
    int64_t time_us; /* wall-clock start of the request, microseconds since the epoch */
    const char *id;  /* idempotency key; mg_reqlog_write() sets it, callers leave it NULL */
    const char *request_id;
    const char *client; /* "ip:port", or the client's address behind trusted proxies */
    const char *peer;   /* the connection's "ip:port" when |client| is the one behind trusted
                         * proxies; NULL otherwise (then not written) */
    const char *proto;  /* "h2", "h2c", "http/1.1" */
    const char *method;
    const char *host;
    const char *path;
    const char *app;
    const char *env;
    const char *service;
    const char *pod;
    int status; /* 0 when no response was sent (client gone) */
    uint64_t req_bytes;  /* request body bytes received from the client */
    uint64_t resp_bytes; /* response body bytes sent to the client */
    int64_t upstream_us; /* from upstream request start to its response headers; -1 = none */
    int64_t total_us;    /* from request headers to the end of the stream */
    const char *error;   /* short reason ("upstream_timeout", "connect_failed"...), or NULL */
    bool fallback;       /* the route's split sent it to another service: its own was down */
    unsigned retries;    /* attempts on other pods after the first */
    const char *features;      /* "hit", "miss", "timeout", "unavailable", "off"; NULL = none */
    const char *features_hash; /* short hash of the features sent upstream, or NULL */
} mg_reqlog_rec_t;

/* Opens |path| for appending ("-" = stdout) and starts the writer thread. NULL on failure
 * (logged with the path and the reason). */
mg_reqlog_t *mg_reqlog_open(const char *path);

/* Formats |rec| as one JSON line and queues it. Never blocks on I/O. Thread-safe. */
void mg_reqlog_write(mg_reqlog_t *log, const mg_reqlog_rec_t *rec);

/* Formats |rec| as one JSON line (with '\n') into |buf|; returns its length, or 0 when it does
 * not fit in |cap| bytes. Exposed for tests and for other sinks. */
size_t mg_reqlog_format(const mg_reqlog_rec_t *rec, char *buf, size_t cap);

/* Called on the writer thread with whole lines (|len| bytes, each ending with '\n') before each
 * batch goes to the file: a line the file shows was handed to the sink first, even when the
 * process is killed in between, or the file's write blocks (a full pipe). It may block on its own
 * disk, never on the network. It is also called with no lines (|len| 0) at least once a second
 * while the log is idle. */
typedef void (*mg_reqlog_sink_fn)(void *ud, const char *lines, size_t len);
/* Called on the writer thread with the number of lines the sink will never see: dropped before
 * it because the queue was full (the sink itself too slow). */
typedef void (*mg_reqlog_lost_fn)(void *ud, uint64_t lines);

/* Installs |fn| and |lost| (NULL removes them). Set it before the first mg_reqlog_write: lines
 * written earlier are not replayed to it. Thread-safe. */
void mg_reqlog_set_sink(mg_reqlog_t *log, mg_reqlog_sink_fn fn, mg_reqlog_lost_fn lost, void *ud);

/* Asks the writer to reopen the file (after rotation). Async-signal-safe. */
void mg_reqlog_reopen(mg_reqlog_t *log);

/* Number of lines dropped because the queue was full. */
uint64_t mg_reqlog_dropped(const mg_reqlog_t *log);

typedef struct mg_reqlog_stats {
    uint64_t dropped; /* lines not in the file for want of room: either queue was full */
    uint64_t lost;    /* lines not in the file because a write failed (disk full, EIO) */
} mg_reqlog_stats_t;

void mg_reqlog_stats(mg_reqlog_t *log, mg_reqlog_stats_t *out); /* thread-safe */

/* Writes all queued lines, stops the writer thread, closes the file, frees |log|. */
void mg_reqlog_close(mg_reqlog_t *log);

#endif /* MG_GATEWAY_REQLOG_H */
