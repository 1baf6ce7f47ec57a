/*
 * common/log.h - diagnostic logging to stderr.
 *
 * Thread-safe: each line is formatted into a stack buffer and written with one write(2), so lines
 * from different workers never interleave. The level is checked before any formatting. This is
 * the operator's log; the per-request access log is gateway/reqlog.h.
 */
#ifndef MG_COMMON_LOG_H
#define MG_COMMON_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum mg_log_level {
    MG_LOG_DEBUG = 0,
    MG_LOG_INFO = 1,
    MG_LOG_WARN = 2,
    MG_LOG_ERROR = 3,
} mg_log_level_t;

extern mg_log_level_t mg_log_level;

#define MG_LOG(lvl, mod, ...)                                                                      \
    do {                                                                                           \
        if ((lvl) >= mg_log_level)                                                                 \
            mg_log_emit((lvl), (mod), __VA_ARGS__);                                                \
    } while (0)

void mg_log_emit(mg_log_level_t lvl, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* At most one line a second for an error that can repeat per request (h2o error reporter).
 * Not thread-safe: keep one per worker object. */
typedef struct mg_log_limit {
    long long _last_s;
    unsigned long _suppressed;
} mg_log_limit_t;

/* True when a line may be written now; then *suppressed receives how many were skipped since
 * the last one. */
bool mg_log_limit_pass(mg_log_limit_t *l, unsigned long *suppressed);

/* The same, at most one line every |period_s| seconds (>= 1): for errors that may come with
 * every request of a busy worker, where one line a second is still a flood. */
bool mg_log_limit_every(mg_log_limit_t *l, unsigned period_s, unsigned long *suppressed);

/*
 * A failure that repeats with each retry (a reconnect that keeps being refused) logged once
 * per cause: a line when |cause| differs from the cause last logged, then the same cause again
 * at most once every |period_s| seconds, saying how often it came back in between. Causes are
 * compared on their first 127 bytes. Not thread-safe: keep one per object that retries.
 */
typedef struct mg_log_cause {
    char _last[128]; /* the cause last logged, NUL-terminated, cut to fit */
    long long _last_s;
    unsigned long _repeats;
} mg_log_cause_t;

/* True when a line about |cause| may be written now; then *repeats receives how many times
 * the same cause was seen since its last line (0 for a new cause). */
bool mg_log_cause_pass(mg_log_cause_t *l, const char *cause, unsigned period_s,
                       unsigned long *repeats);

/* Forgets the cause last logged (the failure is over): the next one is logged at once. */
void mg_log_cause_reset(mg_log_cause_t *l);

/* " (N more since the last line)" into |buf| for a cause that came back |repeats| times, or ""
 * for a new one; returns |buf|. */
const char *mg_log_repeats(char *buf, size_t cap, unsigned long repeats);

/* Parses "debug", "info", "warn" or "error"; returns -1 for anything else. */
int mg_log_level_parse(const char *s);

#endif /* MG_COMMON_LOG_H */
