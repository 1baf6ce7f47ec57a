/*
 * gateway/reqlog.c - the access log (see reqlog.h for the contract).
 *
 * DESIGN
 * Workers never touch the file. mg_reqlog_write() formats the record into an 8 KiB stack buffer,
 * then copies it into a shared byte queue under a mutex held only for a memcpy. The writer thread
 * swaps the queue with its own (emptied) buffer, so the worker side keeps appending while it
 * write()s the batch, and one write(2) carries many lines.
 *
 * Batches are paced: the writer starts one at most every PACE_MS (sooner once PACE_BYTES are
 * queued), counted from the start of the previous one; lines queued meanwhile gather. The first
 * line after a quiet spell goes out at once. Without pacing it woke for every few lines: at
 * 70k requests/s on one core that was 13k batches a second, each a futex wake by the worker, two
 * context switches, and with the request log in MariaDB a spool append plus fdatasync (see
 * dblog.h), about a fifth of the gateway's CPU. A worker signals only when the writer sleeps on
 * an empty queue (writer_idle) or when the queue passes PACE_BYTES, so under load its only
 * logging syscalls are those and a contended mutex: 0.007 futex calls per request at 160k req/s
 * (0.39 before pacing). A line reaches the file at most PACE_MS after it was queued, or
 * once the previous batch is written if that took longer.
 *
 * The queue is bounded (MG_REQLOG_QUEUE_MAX): when the writer cannot keep up we drop whole lines
 * and count them rather than grow without limit or block a worker; the writer reports the count
 * at most once per second, so a flood of drops is loud but cannot flood the operator log.
 *
 * Two stages. The writer hands each batch to the sink (the request log's spool) and then to a
 * second thread, which alone writes the file. A file that blocks (a stdout nobody reads, a
 * stalled log collector's pipe) stalls only that thread: the sink still gets every line, and the
 * batches wait in the file stage's own bounded queue, past which they are dropped from the
 * access log only, counted and said. The order holds: a line reaches the file only after the
 * sink had it.
 *
 * Rotation: mg_reqlog_reopen() only stores an atomic flag, because it runs in signal handlers
 * where neither the mutex nor the condvar may be touched. The file thread therefore never sleeps
 * for longer than WAKE_MS: it sees the flag at the latest then, or right away with the next batch
 * (it checks the flag after taking a batch and before writing it, so every line queued after
 * mg_reqlog_reopen() returned goes to the new file). If the reopen fails (directory gone, EMFILE)
 * the old descriptor stays in use, so no line is lost, and it retries every WAKE_MS.
 *
 * Every line is valid JSON whatever the input: strings are escaped here (control characters as
 * \u00XX, invalid UTF-8 bytes as \ufffd), and when a record would not fit the buffer the longest
 * string fields are cut at an escape boundary and end with TRUNC_MARK.
 */
#include "gateway/reqlog.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/hex.h"
#include "common/log.h"
#include "common/thread.h"

#define MG_REQLOG_LINE_MAX 8192                 /* worker-side stack buffer, one record */
#define MG_REQLOG_QUEUE_MAX (64u * 1024 * 1024) /* queued bytes beyond which lines are dropped */
#define MG_REQLOG_QUEUE_MIN 65536               /* first allocation of a queue buffer */
#define MG_REQLOG_KEEP_MAX                                                                         \
    (1024u * 1024)   /* writer frees a batch buffer above this after a                             \
                        burst, so memory returns to normal */
#define WAKE_MS 1000 /* longest writer sleep: bounds reopen latency and drop-report delay */
#define PACE_MS 10   /* queued lines wait at most this long for more to join them */
#define PACE_BYTES (256u * 1024) /* ... or until this many bytes are queued */
#define FILE_CLOSE_MS 1000       /* close waits this long for a file that takes nothing */

#define TRUNC_MARK "...[truncated]"
#define TRUNC_MARK_LEN (sizeof(TRUNC_MARK) - 1)

/* mg_reqlog_reopen() must be async-signal-safe; that holds only for lock-free atomics. */
static_assert(ATOMIC_INT_LOCK_FREE == 2, "reqlog needs a lock-free atomic_int");

typedef struct qbuf {
    char *data;
    size_t len; /* len <= cap <= MG_REQLOG_QUEUE_MAX */
    size_t cap;
} qbuf_t;

struct mg_reqlog {
    char *path; /* NULL for stdout ("-"), which is never reopened or closed */
    int fd;     /* owned by the file thread after open */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; see mg_reqlog_write() for when it is signalled */
    qbuf_t queue;        /* guarded by mu: what workers append to */
    bool stopping;       /* guarded by mu */
    bool writer_idle;    /* guarded by mu: the writer sleeps on an empty queue, wake it */
    atomic_int reopen;   /* set by mg_reqlog_reopen(), consumed by the file thread */
    atomic_uint_least64_t dropped; /* lines refused because the queue was full */
    char boot_hex[16];             /* random, drawn at open, in hex: the first half of every id */
    atomic_uint_least64_t seq;     /* the second half: records written since open */
    mg_reqlog_sink_fn sink;        /* guarded by mu; taken with each batch */
    mg_reqlog_lost_fn sink_lost;
    void *sink_ud;

    /* the file stage (see DESIGN) */
    pthread_t file_thread;
    pthread_mutex_t fmu;
    pthread_cond_t fcond; /* CLOCK_MONOTONIC; signalled when fqueue stops being empty */
    qbuf_t fqueue;        /* guarded by fmu: batches the sink had, for the file */
    bool fstopping;       /* guarded by fmu */
    atomic_uint_least64_t file_dropped; /* lines the file stage had no room for */
    atomic_uint_least64_t lost;         /* lines lost to write errors (disk full, EIO) */
    atomic_int lost_errno;              /* the last write error, for the report */

    /* file thread only */
    qbuf_t fbatch;
    bool reopen_pending; /* a reopen failed; retried every WAKE_MS */
    bool torn; /* the file ends with a piece of a line that could not be cut off (write_batch) */
    struct timespec last_reopen;

    /* writer thread only */
    qbuf_t batch;
    uint64_t dropped_reported, file_dropped_reported, lost_reported;
    uint64_t dropped_told; /* drops passed on to sink_lost */
    struct timespec last_warn;
    struct timespec next_take; /* CLOCK_MONOTONIC: the earliest start of the next paced batch */
};

/* ---------------------------------------------------------------- JSON formatting */

/* Output cursor. |len| counts every byte asked for, even past |cap|, so one pass both formats and
 * measures; bytes are copied only while they fit. cap == 0 measures only. */
typedef struct out {
    char *buf;
    size_t cap;
    size_t len;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->len + n <= o->cap)
        memcpy(o->buf + o->len, s, n);
    o->len += n;
}

#define put_lit(o, lit) put((o), (lit), sizeof(lit) - 1)

/* Length of the valid UTF-8 sequence starting at |s| (2..4), or 0 when the bytes there are not
 * one (truncated, overlong, surrogate, above U+10FFFF). |s| is NUL-terminated, and NUL is never a
 * continuation byte, so we never read past the end. Ranges from RFC 3629, section 4. */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned char c = s[0];
#define CONT(b) ((b) >= 0x80 && (b) <= 0xbf)
    if (c >= 0xc2 && c <= 0xdf)
        return CONT(s[1]) ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        return s[1] >= lo && s[1] <= hi && CONT(s[2]) ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        return s[1] >= lo && s[1] <= hi && CONT(s[2]) && CONT(s[3]) ? 4 : 0;
    }
#undef CONT
    return 0;
}

/* Writes the JSON-escaped content of |s| (no quotes), stopping before the first escape unit that
 * would take the content past |room| bytes. Units are never split, so a cut string stays valid
 * UTF-8 and valid JSON. Returns the number of content bytes asked for. */
static size_t escape(out_t *o, const char *str, size_t room)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t used = 0;
    while (*s) {
        /* fast path: a run of printable ASCII that needs no escaping */
        const unsigned char *run = s;
        while (*s >= 0x20 && *s < 0x80 && *s != '"' && *s != '\\')
            s++;
        if (s > run) {
            size_t n = (size_t)(s - run);
            if (n > room - used)
                n = room - used;
            put(o, (const char *)run, n);
            used += n;
            if (run + n < s)
                return used;
            continue;
        }
        if (*s == 0)
            break;
        char unit[6];
        size_t n, adv = 1;
        if (*s == '"' || *s == '\\') {
            unit[0] = '\\', unit[1] = (char)*s, n = 2;
        } else if (*s < 0x20) {
            memcpy(unit, "\\u00", 4);
            unit[4] = hex[*s >> 4], unit[5] = hex[*s & 15], n = 6;
        } else if ((adv = utf8_seq(s)) != 0) {
            memcpy(unit, s, adv), n = adv;
        } else {
            /* one replacement per invalid byte: simple, and resynchronises on the next byte */
            memcpy(unit, "\\ufffd", 6), n = 6, adv = 1;
        }
        if (n > room - used)
            return used;
        put(o, unit, n);
        used += n;
        s += adv;
    }
    return used;
}

static size_t escaped_len(const char *s)
{
    out_t m = {NULL, 0, 0};
    return escape(&m, s, SIZE_MAX);
}

/* Writes |s| as a JSON string (or null) whose content takes at most |limit| bytes; SIZE_MAX means
 * no limit. A cut string ends with TRUNC_MARK, so a reader sees that it was cut. The caller keeps
 * |limit| >= TRUNC_MARK_LEN. */
static void put_str(out_t *o, const char *s, size_t limit)
{
    if (s == NULL) {
        put_lit(o, "null");
        return;
    }
    put(o, "\"", 1);
    if (limit != SIZE_MAX && escaped_len(s) > limit) {
        escape(o, s, limit - TRUNC_MARK_LEN);
        put(o, TRUNC_MARK, TRUNC_MARK_LEN);
    } else {
        escape(o, s, SIZE_MAX);
    }
    put(o, "\"", 1);
}

/* Numbers by hand: printf's machinery (format parsing, locale) was a twentieth of a worker's
 * CPU in a gateway that only proxies and logs. */
static void put_u64(out_t *o, uint64_t v)
{
    char b[20];
    size_t i = sizeof(b);
    do
        b[--i] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    put(o, b + i, sizeof(b) - i);
}

static void put_i64(out_t *o, int64_t v)
{
    if (v < 0) {
        put(o, "-", 1);
        put_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(o, (uint64_t)v);
    }
}

/* "YYYY-MM-DDTHH:MM:SS" of |sec|, formatted once per second and thread: gmtime_r takes glibc's
 * time zone lock, and a busy worker logs thousands of records within one second. */
static void put_second(out_t *o, int64_t sec)
{
    static _Thread_local int64_t cached_sec = INT64_MIN;
    static _Thread_local char cached[48];
    static _Thread_local size_t cached_len;
    if (sec != cached_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL)
            memset(&tm, 0, sizeof(tm)); /* year out of range: 1900-00-00, still valid JSON */
        int n = snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        cached_len = n > 0 ? (size_t)n : 0;
        cached_sec = sec;
    }
    put(o, cached, cached_len);
}

enum { NSTR = 14 }; /* string fields, in output order; error is formatted separately */

static void string_fields(const mg_reqlog_rec_t *r, const char *f[NSTR])
{
    f[0] = r->id, f[1] = r->request_id, f[2] = r->client, f[3] = r->proto, f[4] = r->method;
    f[5] = r->host, f[6] = r->path, f[7] = r->app, f[8] = r->env, f[9] = r->service;
    f[10] = r->pod, f[11] = r->features, f[12] = r->features_hash, f[13] = r->error;
}

/* One formatting pass with every string content capped at |limit| bytes. */
static void format_line(out_t *o, const mg_reqlog_rec_t *r, size_t limit)
{
    static const char *const keys[NSTR - 1] = {
        "\",\"id\":",  ",\"request_id\":", ",\"client\":",   ",\"proto\":",
        ",\"method\":", ",\"host\":",       ",\"path\":",     ",\"app\":",
        ",\"env\":",    ",\"service\":",    ",\"pod\":",      ",\"features\":",
        ",\"features_hash\":",
    };
    const char *f[NSTR];
    string_fields(r, f);

    /* time_us may predate the epoch in tests; floor so the microseconds stay in [0, 1e6) */
    int64_t sec = r->time_us / 1000000, usec = r->time_us % 1000000;
    if (usec < 0)
        sec -= 1, usec += 1000000;
    char frac[8] = {'.'};
    for (int i = 6; i >= 1; i--, usec /= 10)
        frac[i] = (char)('0' + usec % 10);
    frac[7] = 'Z';
    put_lit(o, "{\"time\":\"");
    put_second(o, sec);
    put(o, frac, sizeof(frac));
    for (int i = 0; i < NSTR - 1; i++) {
        put(o, keys[i], strlen(keys[i]));
        put_str(o, f[i], limit);
    }
    put_lit(o, ",\"status\":");
    put_i64(o, r->status);
    put_lit(o, ",\"req_bytes\":");
    put_u64(o, r->req_bytes);
    put_lit(o, ",\"resp_bytes\":");
    put_u64(o, r->resp_bytes);
    if (r->fallback)
        put_lit(o, ",\"fallback\":true,\"retries\":");
    else
        put_lit(o, ",\"fallback\":false,\"retries\":");
    put_u64(o, r->retries);
    if (r->upstream_us < 0) {
        put_lit(o, ",\"upstream_us\":null");
    } else {
        put_lit(o, ",\"upstream_us\":");
        put_i64(o, r->upstream_us);
    }
    put_lit(o, ",\"total_us\":");
    put_i64(o, r->total_us);
    put_lit(o, ",\"error\":");
    put_str(o, f[NSTR - 1], limit);
    if (r->peer) { /* short (an address): never cut, counted with the keys */
        put_lit(o, ",\"peer\":");
        put_str(o, r->peer, SIZE_MAX);
    }
    put_lit(o, "}\n");
}

/* Content bytes that the string fields take when each is capped at |limit|. */
static size_t capped_total(const size_t len[NSTR], size_t limit)
{
    size_t t = 0;
    for (int i = 0; i < NSTR; i++)
        t += len[i] < limit ? len[i] : limit;
    return t;
}

size_t mg_reqlog_format(const mg_reqlog_rec_t *rec, char *buf, size_t cap)
{
    /* the result is a C string: |cap| must hold the line and its NUL */
    out_t o = {buf, cap, 0};
    format_line(&o, rec, SIZE_MAX);
    if (o.len < cap)
        goto out;

    /* Too long: find the largest per-field cap that fits ("water-filling"), so short fields stay
     * whole and only the longest ones are cut, each by as little as possible. */
    const char *f[NSTR];
    size_t len[NSTR], content = 0, max = 0;
    string_fields(rec, f);
    for (int i = 0; i < NSTR; i++) {
        len[i] = f[i] ? escaped_len(f[i]) : 0;
        content += len[i];
        max = len[i] > max ? len[i] : max;
    }
    size_t fixed = o.len - content; /* keys, numbers, quotes, nulls */
    if (fixed + capped_total(len, TRUNC_MARK_LEN) >= cap)
        return 0;
    size_t lo = TRUNC_MARK_LEN, hi = max; /* capped_total(lo) fits, capped_total(hi) does not */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (fixed + capped_total(len, mid) < cap)
            lo = mid;
        else
            hi = mid;
    }
    o.len = 0;
    format_line(&o, rec, lo);
    if (o.len >= cap) /* cannot happen: cut fields take at most |lo| bytes each */
        return 0;
out:
    buf[o.len] = '\0';
    return o.len;
}

/* ---------------------------------------------------------------- writer thread */

static int open_path(const char *path)
{
    /* O_APPEND: safe next to other appenders, and works with logrotate's copytruncate */
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0644);
}

static double since(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static size_t count_lines(const char *p, size_t n)
{
    size_t c = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        c++;
    return c;
}

/* A write that failed part way through a line (a full disk, the file size limit) left its
 * first |part| bytes at the end of the file: they are cut off a regular file, else the next
 * write ends them with a newline first (log->torn), so the line after is whole JSON and not
 * glued to them. */
static void cut_torn(mg_reqlog_t *log, size_t part)
{
    struct stat st;
    if (part == 0)
        return;
    if (fstat(log->fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size >= part &&
        ftruncate(log->fd, st.st_size - (off_t)part) == 0)
        return;
    log->torn = true;
}

/* Writes the whole batch, across short writes, EINTR and a non-blocking stdout. On a hard error
 * the rest of the batch is counted as lost: retrying forever would stall the queue behind a full
 * disk and turn one problem into unbounded memory. report() tells the operator. */
static void write_batch(mg_reqlog_t *log, qbuf_t *b)
{
    const char *p = b->data;
    size_t left = b->len;
    if (log->torn && left > 0) { /* the newline goes first, as the first byte of the batch */
        static const char nl = '\n';
        p = &nl, left = 1;
    }
    while (left > 0) {
        ssize_t n = write(log->fd, p, left);
        if (n > 0 && log->torn) { /* the torn line is ended: now the batch */
            log->torn = false;
            p = b->data, left = b->len;
            continue;
        }
        if (n > 0) {
            p += n, left -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = log->fd, .events = POLLOUT};
            poll(&pfd, 1, WAKE_MS);
            continue;
        }
        atomic_store(&log->lost_errno, n < 0 ? errno : EIO);
        if (log->torn) { /* not even its newline went: the whole batch is lost */
            atomic_fetch_add(&log->lost, count_lines(b->data, b->len));
            break;
        }
        atomic_fetch_add(&log->lost, count_lines(p, left));
        const char *line = p; /* where the line that was cut starts */
        while (line > b->data && line[-1] != '\n')
            line--;
        cut_torn(log, (size_t)(p - line));
        break;
    }
    b->len = 0;
}

static void do_reopen(mg_reqlog_t *log)
{
    if (log->path == NULL)
        return; /* stdout: nothing to reopen */
    clock_gettime(CLOCK_MONOTONIC, &log->last_reopen);
    int fd = open_path(log->path);
    if (fd < 0) {
        if (!log->reopen_pending)
            MG_LOG(MG_LOG_ERROR, "reqlog",
                   "cannot reopen %s: %s; still writing to the old file, retrying every %d ms",
                   log->path, strerror(errno), WAKE_MS);
        log->reopen_pending = true;
        return;
    }
    if (log->reopen_pending)
        MG_LOG(MG_LOG_INFO, "reqlog", "reopened %s", log->path);
    log->reopen_pending = false;
    log->torn = false; /* the piece stays in the old file */
    close(log->fd);
    log->fd = fd;
}

/* Appends |n| bytes to |q|; false when it is at its bound or cannot grow. */
static bool qbuf_append(qbuf_t *q, const char *data, size_t n)
{
    if (q->len + n > MG_REQLOG_QUEUE_MAX)
        return false;
    if (q->len + n > q->cap) {
        size_t cap = q->cap ? q->cap : MG_REQLOG_QUEUE_MIN;
        while (cap < q->len + n)
            cap *= 2;
        if (cap > MG_REQLOG_QUEUE_MAX)
            cap = MG_REQLOG_QUEUE_MAX;
        char *d = realloc(q->data, cap);
        if (d == NULL)
            return false;
        q->data = d, q->cap = cap;
    }
    memcpy(q->data + q->len, data, n);
    q->len += n;
    return true;
}

/* The writer's batch, which the sink had, goes to the file stage: handed over whole when that
 * stage is idle (no copy), else appended, else, when the file is that far behind, dropped from
 * the access log only. */
static void hand_to_file(mg_reqlog_t *log)
{
    qbuf_t *b = &log->batch;
    if (b->len == 0)
        return;
    bool refused = false;
    pthread_mutex_lock(&log->fmu);
    if (log->fqueue.len == 0) {
        qbuf_t t = log->fqueue;
        log->fqueue = *b;
        *b = t;
        pthread_cond_signal(&log->fcond);
    } else {
        refused = !qbuf_append(&log->fqueue, b->data, b->len);
    }
    pthread_mutex_unlock(&log->fmu);
    if (refused)
        atomic_fetch_add(&log->file_dropped, count_lines(b->data, b->len));
    b->len = 0;
}

/* A failed reopen is retried at most once per WAKE_MS, not once per batch: under load a batch
 * goes out every PACE_MS, and each try is an open(2) plus path lookup. */
static void retry_reopen(mg_reqlog_t *log)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (since(&log->last_reopen, &now) >= WAKE_MS / 1000.0)
        do_reopen(log);
}

/* Loud, rate-limited loss reports: the operator must learn that lines are missing, but a disk
 * that stays slow or full must not turn into one message per request. |force| reports whatever is
 * pending (at close). */
static void report(mg_reqlog_t *log, bool has_sink, bool force)
{
    const char *name = log->path ? log->path : "stdout";
    uint64_t dropped = atomic_load(&log->dropped), fdropped = atomic_load(&log->file_dropped);
    uint64_t lost = atomic_load(&log->lost);
    if (dropped == log->dropped_reported && fdropped == log->file_dropped_reported &&
        lost == log->lost_reported)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!force && since(&log->last_warn, &now) < WAKE_MS / 1000.0)
        return;
    if (dropped != log->dropped_reported)
        MG_LOG(has_sink ? MG_LOG_ERROR : MG_LOG_WARN, "reqlog",
               "DROPPED %" PRIu64 " access log lines (%" PRIu64 " in total): the queue is full "
               "(%u MiB) because lines are %s slower than requests arrive%s",
               dropped - log->dropped_reported, dropped, MG_REQLOG_QUEUE_MAX >> 20,
               has_sink ? "spooled" : "written",
               has_sink ? "; they are in neither the access log nor the request log" : "");
    if (fdropped != log->file_dropped_reported)
        MG_LOG(MG_LOG_WARN, "reqlog",
               "DROPPED %" PRIu64 " access log lines (%" PRIu64 " in total): %s is written slower "
               "than requests arrive (a full disk, or a pipe nobody reads?)%s",
               fdropped - log->file_dropped_reported, fdropped, name,
               has_sink ? "; the request log has them" : "");
    if (lost != log->lost_reported)
        MG_LOG(MG_LOG_ERROR, "reqlog",
               "LOST %" PRIu64 " access log lines (%" PRIu64 " in total): write to %s failed: %s",
               lost - log->lost_reported, lost, name, strerror(atomic_load(&log->lost_errno)));
    log->dropped_reported = dropped;
    log->file_dropped_reported = fdropped;
    log->lost_reported = lost;
    log->last_warn = now;
}

static void *writer_main(void *arg)
{
    mg_reqlog_t *log = arg;
    mg_thread_background();
    pthread_mutex_lock(&log->mu);
    for (;;) {
        if (log->queue.len == 0 && !log->stopping) { /* callers re-check after any wake */
            struct timespec dl = mg_thread_deadline(CLOCK_MONOTONIC, WAKE_MS);
            log->writer_idle = true;
            pthread_cond_timedwait(&log->cond, &log->mu, &dl);
            log->writer_idle = false;
        }
        /* pacing: batches start at most every PACE_MS, counted from the last one's start, so
         * a slow write does not add its time to the next wait; a worker wakes us early past
         * PACE_BYTES, close too. A deadline already past returns at once. */
        if (log->queue.len > 0 && log->queue.len < PACE_BYTES && !log->stopping)
            pthread_cond_timedwait(&log->cond, &log->mu, &log->next_take);
        log->next_take = mg_thread_deadline(CLOCK_MONOTONIC, PACE_MS);
        qbuf_t t = log->batch;
        log->batch = log->queue;
        log->queue = t;
        bool stop = log->stopping;
        mg_reqlog_sink_fn sink = log->sink;
        mg_reqlog_lost_fn sink_lost = log->sink_lost;
        void *sink_ud = log->sink_ud;
        pthread_mutex_unlock(&log->mu);

        bool idle = log->batch.len == 0;
        /* the sink (the database log's fsync'ed spool) first: a record in the access log is
         * then never one the request log lost */
        if (sink != NULL) /* also when idle: the sink reports its losses from here too */
            sink(sink_ud, log->batch.data, log->batch.len);
        uint64_t dropped = atomic_load(&log->dropped);
        if (sink_lost != NULL && dropped != log->dropped_told)
            sink_lost(sink_ud, dropped - log->dropped_told);
        log->dropped_told = dropped;
        hand_to_file(log);
        if (log->batch.cap > MG_REQLOG_KEEP_MAX) {
            free(log->batch.data);
            log->batch = (qbuf_t){NULL, 0, 0};
        }
        report(log, sink != NULL, false);
        if (stop && idle)
            break; /* stopping and the queue was already empty: all went to the file stage */
        pthread_mutex_lock(&log->mu);
    }
    return NULL; /* mg_reqlog_close reports last, once the file thread is done too */
}

/* The file thread: writes what the writer handed over, and reopens the file on request. */
static void *file_main(void *arg)
{
    mg_reqlog_t *log = arg;
    mg_thread_background();
    for (;;) {
        pthread_mutex_lock(&log->fmu);
        if (log->fqueue.len == 0 && !log->fstopping) {
            struct timespec dl = mg_thread_deadline(CLOCK_MONOTONIC, WAKE_MS);
            pthread_cond_timedwait(&log->fcond, &log->fmu, &dl);
        }
        qbuf_t t = log->fbatch;
        log->fbatch = log->fqueue;
        log->fqueue = t;
        bool stop = log->fstopping;
        pthread_mutex_unlock(&log->fmu);

        /* after taking the batch: lines queued after a reopen request go to the new file */
        if (atomic_exchange(&log->reopen, 0))
            do_reopen(log);
        else if (log->reopen_pending)
            retry_reopen(log);
        bool idle = log->fbatch.len == 0;
        write_batch(log, &log->fbatch);
        if (log->fbatch.cap > MG_REQLOG_KEEP_MAX) {
            free(log->fbatch.data);
            log->fbatch = (qbuf_t){NULL, 0, 0};
        }
        if (stop && idle)
            break;
    }
    return NULL;
}

/* ---------------------------------------------------------------- public API */

/* After the writer is gone: the file thread writes what it still holds, then ends. A file that
 * takes nothing (a pipe nobody reads) would hold the exit for ever: past FILE_CLOSE_MS it is
 * left behind, blocked, and false is returned (its lines are in the sink). */
static bool stop_file_thread(mg_reqlog_t *log)
{
    pthread_mutex_lock(&log->fmu);
    log->fstopping = true;
    pthread_cond_signal(&log->fcond);
    pthread_mutex_unlock(&log->fmu);
    return mg_thread_join_within(log->file_thread, FILE_CLOSE_MS);
}

mg_reqlog_t *mg_reqlog_open(const char *path)
{
    mg_reqlog_t *log = NULL;
    bool mu = false, cond = false, fmu = false, fcond = false, file_thread = false;
    sigset_t all, old;

    if (path == NULL || *path == '\0') {
        MG_LOG(MG_LOG_ERROR, "reqlog", "no access log path given (use \"-\" for stdout)");
        return NULL;
    }
    if ((log = calloc(1, sizeof(*log))) == NULL)
        goto nomem;
    log->fd = -1;
    if (strcmp(path, "-") == 0) {
        log->fd = STDOUT_FILENO;
    } else {
        if ((log->path = strdup(path)) == NULL)
            goto nomem;
        if ((log->fd = open_path(path)) < 0) {
            MG_LOG(MG_LOG_ERROR, "reqlog", "cannot open access log %s: %s", path, strerror(errno));
            goto fail;
        }
    }
    if (pthread_mutex_init(&log->mu, NULL) != 0)
        goto nomem;
    mu = true;
    if (!(cond = mg_thread_cond_init(&log->cond)))
        goto nomem;
    if (pthread_mutex_init(&log->fmu, NULL) != 0)
        goto nomem;
    fmu = true;
    if (!(fcond = mg_thread_cond_init(&log->fcond)))
        goto nomem;
    atomic_init(&log->reopen, 0);
    atomic_init(&log->file_dropped, 0);
    atomic_init(&log->lost, 0);
    atomic_init(&log->lost_errno, 0);
    atomic_init(&log->dropped, 0);
    atomic_init(&log->seq, 0);
    uint64_t boot;
    if (getrandom(&boot, sizeof(boot), 0) != sizeof(boot)) {
        /* no entropy source: still distinct per start and per host in practice */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        boot = ((uint64_t)now.tv_sec << 32) ^ (uint64_t)now.tv_nsec ^ ((uint64_t)getpid() << 48) ^
               (uint64_t)(uintptr_t)log;
    }
    mg_hex64(boot, log->boot_hex);
    clock_gettime(CLOCK_MONOTONIC, &log->last_warn);
    log->last_warn.tv_sec -= 1 + WAKE_MS / 1000; /* the first drop is reported at once */

    /* The writer takes no signals: SIGUSR1/SIGTERM belong to the main thread's event loop. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&log->file_thread, NULL, file_main, log);
    file_thread = rc == 0;
    if (rc == 0)
        rc = pthread_create(&log->thread, NULL, writer_main, log);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        MG_LOG(MG_LOG_ERROR, "reqlog", "cannot start the access log threads: %s", strerror(rc));
        goto fail;
    }
    pthread_setname_np(log->thread, "mg-reqlog");
    pthread_setname_np(log->file_thread, "mg-accesslog");
    return log;

nomem:
    MG_LOG(MG_LOG_ERROR, "reqlog", "out of memory opening access log %s", path);
fail:
    if (log) {
        if (file_thread)
            stop_file_thread(log);
        if (fcond)
            pthread_cond_destroy(&log->fcond);
        if (fmu)
            pthread_mutex_destroy(&log->fmu);
        if (cond)
            pthread_cond_destroy(&log->cond);
        if (mu)
            pthread_mutex_destroy(&log->mu);
        if (log->fd >= 0 && log->path)
            close(log->fd);
        free(log->path);
        free(log);
    }
    return NULL;
}

void mg_reqlog_write(mg_reqlog_t *log, const mg_reqlog_rec_t *rec)
{
    char line[MG_REQLOG_LINE_MAX], id[33];
    mg_reqlog_rec_t r = *rec;
    if (r.id == NULL) {
        memcpy(id, log->boot_hex, 16);
        mg_hex64(atomic_fetch_add(&log->seq, 1), id + 16);
        id[32] = '\0';
        r.id = id;
    }
    size_t n = mg_reqlog_format(&r, line, sizeof(line));
    if (n == 0) { /* only if the fixed fields alone overflowed 8 KiB: impossible today */
        atomic_fetch_add(&log->dropped, 1);
        return;
    }
    pthread_mutex_lock(&log->mu);
    size_t before = log->queue.len;
    bool ok = qbuf_append(&log->queue, line, n);
    /* only when the writer would not come by itself: idle, or a big batch is ready */
    if (ok && ((before == 0 && log->writer_idle) ||
               (before < PACE_BYTES && log->queue.len >= PACE_BYTES)))
        pthread_cond_signal(&log->cond);
    pthread_mutex_unlock(&log->mu);
    if (!ok)
        atomic_fetch_add(&log->dropped, 1);
}

void mg_reqlog_set_sink(mg_reqlog_t *log, mg_reqlog_sink_fn fn, mg_reqlog_lost_fn lost, void *ud)
{
    pthread_mutex_lock(&log->mu);
    log->sink = fn;
    log->sink_lost = lost;
    log->sink_ud = ud;
    pthread_mutex_unlock(&log->mu);
}

void mg_reqlog_reopen(mg_reqlog_t *log)
{
    atomic_store(&log->reopen, 1); /* lock-free store: async-signal-safe */
}

uint64_t mg_reqlog_dropped(const mg_reqlog_t *log)
{
    return atomic_load(&log->dropped);
}

void mg_reqlog_stats(mg_reqlog_t *log, mg_reqlog_stats_t *out)
{
    out->dropped = atomic_load(&log->dropped) + atomic_load(&log->file_dropped);
    out->lost = atomic_load(&log->lost);
}

void mg_reqlog_close(mg_reqlog_t *log)
{
    if (log == NULL)
        return;
    pthread_mutex_lock(&log->mu);
    log->stopping = true;
    pthread_cond_signal(&log->cond);
    pthread_mutex_unlock(&log->mu);
    pthread_join(log->thread, NULL);
    if (!stop_file_thread(log)) {
        report(log, log->sink != NULL, true); /* the losses counted so far, before giving up */
        MG_LOG(MG_LOG_WARN, "reqlog",
               "access log %s takes no more lines (a pipe nobody reads?); "
               "closing without its last lines%s",
               log->path ? log->path : "stdout", log->sink ? ", which the request log has" : "");
        return; /* the file thread still uses |log|: the process's exit ends both */
    }
    report(log, log->sink != NULL, true);
    if (log->path)
        close(log->fd);
    pthread_cond_destroy(&log->cond);
    pthread_mutex_destroy(&log->mu);
    pthread_cond_destroy(&log->fcond);
    pthread_mutex_destroy(&log->fmu);
    free(log->queue.data);
    free(log->batch.data);
    free(log->fqueue.data);
    free(log->fbatch.data);
    free(log->path);
    free(log);
}
