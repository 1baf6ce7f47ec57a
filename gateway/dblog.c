/*
 * gateway/dblog.c - the request log in MariaDB (see dblog.h for the contract).
 *
 * DESIGN
 * Two threads touch a dblog. The access log's writer thread calls mg_dblog_sink, which only
 * appends to the spool (disk, fsync) and never waits for the network. The database thread owns
 * the MariaDB connection (the blocking client API is fine here: this thread serves no request)
 * and loops: read up to batch_rows lines from the committed spool position, turn them into one
 * "INSERT ... VALUES (...),(...) ON DUPLICATE KEY UPDATE id = id", run it, then commit the new
 * position. Duplicates are recognised by the primary key (time, id), so whatever happens between
 * the INSERT and the commit (crash, lost connection, kill -9) a replay adds nothing twice;
 * "ON DUPLICATE KEY" rather than INSERT IGNORE because IGNORE would also silently swallow every
 * other row error. A batch that MariaDB refuses for a reason other than the connection (a bad
 * value) is retried row by row, so one bad record is rejected and counted, not the whole batch,
 * and never blocks the spool.
 *
 * After a partial batch (the spool is drained) the thread waits flush_ms before reading again,
 * so under light load rows go in every flush_ms in one statement, and under heavy load batches
 * are full and go back to back. When MariaDB is away, connection attempts back off from 100 ms
 * to 2 s; meanwhile the spool grows up to its cap.
 */
#include "gateway/dblog.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <mysql.h>
#include <errmsg.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "gateway/spool.h"

#define RBUF_CAP (2u * 1024 * 1024) /* spool bytes read per batch, at most */
#define ROW_ROOM (64u * 1024)        /* room kept free in the query for one more row */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define WAIT_MAX_MS 1000         /* longest sleep: bounds the loss-report delay */
#define CLOSE_DRAIN_MS 2000      /* how long close may keep inserting */
#define MAINT_INTERVAL_S 3600    /* partition check */
#define PARTITIONS_AHEAD 7       /* days of partitions kept ready */
#define DOWN_LOG_INTERVAL_S 60   /* repeat "still cannot connect" at most this often */
#define TO_DAYS_EPOCH 719528     /* TO_DAYS('1970-01-01') */

/* Columns in table order, with their length in characters (0 = not a string). Strings longer
 * than that are cut at a UTF-8 boundary, so a strict-mode server never refuses a row for it. */
typedef enum { C_STR, C_INT, C_UINT, C_BOOL } ctype_t;
static const struct col {
    const char *name;
    ctype_t type;
    unsigned maxlen;
} cols[] = {
    {"request_id", C_STR, 64}, {"client", C_STR, 64},     {"proto", C_STR, 16},
    {"method", C_STR, 16},     {"host", C_STR, 255},      {"path", C_STR, 2048},
    {"app", C_STR, 64},        {"env", C_STR, 64},        {"service", C_STR, 128},
    {"pod", C_STR, 255},       {"status", C_INT, 0},      {"req_bytes", C_UINT, 0},
    {"resp_bytes", C_UINT, 0}, {"upstream_us", C_INT, 0}, {"total_us", C_INT, 0},
    {"error", C_STR, 255},     {"fallback", C_BOOL, 0},   {"retries", C_UINT, 0},
    {"features", C_STR, 16},   {"features_hash", C_STR, 64},
};
#define NCOLS (sizeof(cols) / sizeof(cols[0]))

struct mg_dblog {
    mg_dblog_conf_t c; /* own copies of the strings */
    char *password;
    mg_spool_t *spool;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; signalled on close */
    bool stopping;       /* under mu */

    atomic_uint_least64_t spooled, inserted, duplicates, lost, rejected;
    atomic_bool connected;

    /* database thread only */
    MYSQL *m;
    char *rbuf;
    char *q; /* the statement being built */
    size_t qlen, qcap;
    char *insert_head; /* "INSERT INTO `db`.`t` (cols) VALUES " */
    uint64_t lost_reported, rejected_reported;
    struct timespec last_report;
    time_t next_maint;
    time_t last_down_log;
    bool was_down;     /* a connection failed since the last success */
    bool maint_warned; /* "table not partitioned" said once */
};

/* ---------------------------------------------------------------- rows */

typedef struct out {
    char *p;
    size_t cap, len;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->len + n <= o->cap)
        memcpy(o->p + o->len, s, n);
    o->len += n;
}

#define put_lit(o, lit) put((o), (lit), sizeof(lit) - 1)

/* Length of the prefix of |s| (|n| bytes, valid UTF-8 from jansson) holding at most |max|
 * characters; never splits a character. */
static size_t utf8_prefix(const char *s, size_t n, unsigned max)
{
    size_t i = 0;
    for (unsigned chars = 0; i < n && chars < max; chars++) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xc0) == 0x80)
            i++;
    }
    return i;
}

/* A quoted SQL string. The session runs without NO_BACKSLASH_ESCAPES (db_connect sets
 * sql_mode), and utf8mb4 has no multibyte character containing '\\' or '\'', so escaping those,
 * NUL and the line breaks is complete. */
static void put_sql_str(out_t *o, const char *s, size_t n, unsigned maxlen)
{
    n = utf8_prefix(s, n, maxlen);
    put_lit(o, "'");
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        const char *esc = NULL;
        switch (s[i]) {
        case '\0': esc = "\\0"; break;
        case '\'': esc = "\\'"; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case 0x1a: esc = "\\Z"; break;
        default: continue;
        }
        put(o, s + run, i - run);
        put(o, esc, 2);
        run = i + 1;
    }
    put(o, s + run, n - run);
    put_lit(o, "'");
}

static bool is_hex32(const char *s)
{
    if (strlen(s) != 32)
        return false;
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* "2023-11-14T22:13:20.123456Z" -> "2023-11-14 22:13:20.123456"; false if not that shape. */
static bool sql_time(const char *t, char out[27])
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    if (strlen(t) != sizeof(shape) - 1)
        return false;
    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        if (shape[i] == 'd' ? (t[i] < '0' || t[i] > '9') : t[i] != shape[i])
            return false;
    }
    memcpy(out, t, 26);
    out[10] = ' ';
    out[26] = '\0';
    return true;
}

mg_err_t mg_dblog_row(const char *line, size_t len, char *buf, size_t cap, size_t *outlen)
{
    json_error_t jerr;
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *id = j ? json_string_value(json_object_get(j, "id")) : NULL;
    const char *t = j ? json_string_value(json_object_get(j, "time")) : NULL;
    char when[27];
    if (!json_is_object(j) || id == NULL || !is_hex32(id) || t == NULL || !sql_time(t, when)) {
        json_decref(j);
        return MG_E_PROTO;
    }
    out_t o = {buf, cap, 0};
    put_lit(&o, "(x'");
    put(&o, id, 32);
    put_lit(&o, "','");
    put(&o, when, 26);
    put_lit(&o, "'");
    for (size_t i = 0; i < NCOLS; i++) {
        const json_t *v = json_object_get(j, cols[i].name);
        char num[32];
        put_lit(&o, ",");
        if (v == NULL || json_is_null(v)) {
            /* NOT NULL numbers get 0: a record from an older line format still goes in */
            if (cols[i].type == C_STR || strcmp(cols[i].name, "upstream_us") == 0)
                put_lit(&o, "NULL");
            else
                put_lit(&o, "0");
            continue;
        }
        switch (cols[i].type) {
        case C_STR:
            if (json_is_string(v))
                put_sql_str(&o, json_string_value(v), json_string_length(v), cols[i].maxlen);
            else
                put_lit(&o, "NULL");
            break;
        case C_INT:
        case C_UINT: {
            json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
            if (cols[i].type == C_UINT && n < 0)
                n = 0;
            int k = snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, n);
            put(&o, num, (size_t)k);
            break;
        }
        case C_BOOL:
            put(&o, json_is_true(v) ? "1" : "0", 1);
            break;
        }
    }
    put_lit(&o, ")");
    json_decref(j);
    *outlen = o.len;
    return o.len <= cap ? MG_OK : MG_E_LIMIT;
}

/* ---------------------------------------------------------------- query buffer */

static bool q_reserve(mg_dblog_t *d, size_t more)
{
    if (d->qlen + more <= d->qcap)
        return true;
    size_t cap = d->qcap ? d->qcap : 256 * 1024;
    while (cap < d->qlen + more)
        cap *= 2;
    char *n = realloc(d->q, cap);
    if (n == NULL)
        return false;
    d->q = n, d->qcap = cap;
    return true;
}

static bool q_add(mg_dblog_t *d, const char *s)
{
    size_t n = strlen(s);
    if (!q_reserve(d, n + 1))
        return false;
    memcpy(d->q + d->qlen, s, n + 1);
    d->qlen += n;
    return true;
}

static void q_fmt(mg_dblog_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void q_fmt(mg_dblog_t *d, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    q_add(d, tmp);
}

/* ---------------------------------------------------------------- connection */

static void wait_ms(mg_dblog_t *d, long ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (ms % 1000) * 1000000;
    dl.tv_sec += dl.tv_nsec / 1000000000, dl.tv_nsec %= 1000000000;
    pthread_mutex_lock(&d->mu);
    if (!d->stopping)
        pthread_cond_timedwait(&d->cond, &d->mu, &dl);
    pthread_mutex_unlock(&d->mu);
}

static bool stopping(mg_dblog_t *d)
{
    pthread_mutex_lock(&d->mu);
    bool s = d->stopping;
    pthread_mutex_unlock(&d->mu);
    return s;
}

static void disconnect(mg_dblog_t *d)
{
    if (d->m) {
        mysql_close(d->m);
        d->m = NULL;
    }
    atomic_store(&d->connected, false);
}

/* Errors that say "the connection or the server is the problem": retry the same batch later,
 * on a new connection. Everything else is about the data. */
static bool transient(unsigned e)
{
    return (e >= 2000 && e < 3000) || e == ER_NO_SUCH_TABLE || e == ER_BAD_DB_ERROR ||
           e == ER_LOCK_WAIT_TIMEOUT || e == ER_LOCK_DEADLOCK || e == ER_SERVER_SHUTDOWN ||
           e == ER_CON_COUNT_ERROR || e == ER_CONNECTION_KILLED || e == ER_QUERY_INTERRUPTED ||
           e == ER_OPTION_PREVENTS_STATEMENT /* read_only during a fail-over */;
}

static bool run(mg_dblog_t *d, const char *sql, bool quiet)
{
    if (mysql_real_query(d->m, sql, strlen(sql)) == 0) {
        MYSQL_RES *r = mysql_store_result(d->m);
        if (r)
            mysql_free_result(r);
        return true;
    }
    if (!quiet)
        MG_LOG(MG_LOG_WARN, "dblog", "MariaDB %s:%u: %.80s...: %s (error %u)", d->c.host,
               d->c.port, sql, mysql_error(d->m), mysql_errno(d->m));
    return false;
}

/* TO_DAYS(day) as "pYYYYMMDD". */
static void part_name(char *out, size_t cap, long to_days)
{
    time_t t = (time_t)(to_days - TO_DAYS_EPOCH) * 86400;
    struct tm tm;
    gmtime_r(&t, &tm);
    /* unsigned and bounded, so the compiler can see it fits "pYYYYMMDD" */
    snprintf(out, cap, "p%04u%02u%02u", (unsigned)(tm.tm_year + 1900) % 10000u,
             (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u);
}

static long server_today(mg_dblog_t *d)
{
    long today = -1;
    if (mysql_query(d->m, "SELECT TO_DAYS(UTC_DATE())") != 0)
        return -1;
    MYSQL_RES *r = mysql_store_result(d->m);
    MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
    if (row && row[0])
        today = strtol(row[0], NULL, 10);
    if (r)
        mysql_free_result(r);
    return today;
}

/*
 * Day partitions: one per UTC day, "pYYYYMMDD" holding [day, day+1), between "p_old" (before
 * the table existed) and "p_future" (MAXVALUE, so no row is ever refused for its date). New days
 * are split off p_future, which is empty then, so that costs nothing; expired days are dropped,
 * which is instant whatever their size (unlike DELETE).
 */
static void maintain(mg_dblog_t *d)
{
    long today = server_today(d);
    if (today < 0)
        return;
    d->qlen = 0;
    q_fmt(d,
          "SELECT PARTITION_NAME, PARTITION_DESCRIPTION FROM information_schema.PARTITIONS "
          "WHERE TABLE_SCHEMA = '%s' AND TABLE_NAME = '%s' AND PARTITION_NAME IS NOT NULL",
          d->c.database, d->c.table);
    if (mysql_real_query(d->m, d->q, d->qlen) != 0) {
        MG_LOG(MG_LOG_WARN, "dblog", "cannot list the partitions of %s: %s", d->c.table,
               mysql_error(d->m));
        return;
    }
    MYSQL_RES *r = mysql_store_result(d->m);
    if (r == NULL)
        return;
    long max_bound = -1;
    bool future = false;
    char drop[4096] = "";
    size_t dl = 0;
    MYSQL_ROW row;
    while ((row = mysql_fetch_row(r)) != NULL) {
        if (row[0] == NULL || row[1] == NULL)
            continue;
        if (strcmp(row[0], "p_future") == 0) {
            future = true;
            continue;
        }
        long bound = strtol(row[1], NULL, 10);
        max_bound = bound > max_bound ? bound : max_bound;
        /* day partitions (never p_old) of a day D < today - retention_days; bound = D + 1 */
        if (d->c.retention_days > 0 && row[0][0] == 'p' && row[0][1] >= '0' &&
            row[0][1] <= '9' && bound <= today - (long)d->c.retention_days &&
            dl + strlen(row[0]) + 2 < sizeof(drop))
            dl += (size_t)snprintf(drop + dl, sizeof(drop) - dl, "%s`%s`", dl ? "," : "", row[0]);
    }
    mysql_free_result(r);
    if (!future) {
        if (!d->maint_warned)
            MG_LOG(MG_LOG_WARN, "dblog",
                   "table %s.%s has no partition p_future (not created by modelgate?): day "
                   "partitions and retention are not managed",
                   d->c.database, d->c.table);
        d->maint_warned = true;
        return;
    }
    d->qlen = 0;
    q_fmt(d, "ALTER TABLE `%s` REORGANIZE PARTITION p_future INTO (", d->c.table);
    int added = 0;
    for (long day = today; day <= today + PARTITIONS_AHEAD; day++) {
        if (day + 1 <= max_bound)
            continue;
        char name[16];
        part_name(name, sizeof(name), day);
        q_fmt(d, "PARTITION %s VALUES LESS THAN (%ld), ", name, day + 1);
        added++;
    }
    q_add(d, "PARTITION p_future VALUES LESS THAN MAXVALUE)");
    if (added > 0 && run(d, d->q, false))
        MG_LOG(MG_LOG_INFO, "dblog", "table %s: %d day partition(s) added", d->c.table, added);
    if (dl > 0) {
        d->qlen = 0;
        q_fmt(d, "ALTER TABLE `%s` DROP PARTITION %s", d->c.table, drop);
        if (run(d, d->q, false))
            MG_LOG(MG_LOG_INFO, "dblog", "table %s: dropped partitions older than %u days: %s",
                   d->c.table, d->c.retention_days, drop);
    }
}

static bool ensure_schema(mg_dblog_t *d)
{
    char sql[512];
    snprintf(sql, sizeof(sql), "CREATE DATABASE IF NOT EXISTS `%s`", d->c.database);
    run(d, sql, true); /* may be denied: then the database must already exist */
    if (mysql_select_db(d->m, d->c.database) != 0) {
        MG_LOG(MG_LOG_ERROR, "dblog", "MariaDB %s:%u: cannot use database %s: %s", d->c.host,
               d->c.port, d->c.database, mysql_error(d->m));
        return false;
    }
    long today = server_today(d);
    if (today < 0)
        return false;
    d->qlen = 0;
    q_fmt(d,
          "CREATE TABLE IF NOT EXISTS `%s` ("
          " id BINARY(16) NOT NULL COMMENT 'idempotency key: HEX(id) is the log line''s id',"
          " time DATETIME(6) NOT NULL COMMENT 'request start, UTC',"
          " request_id VARCHAR(64) NULL, client VARCHAR(64) NULL, proto VARCHAR(16) NULL,"
          " method VARCHAR(16) NULL, host VARCHAR(255) NULL, path VARCHAR(2048) NULL,",
          d->c.table);
    q_add(d, " app VARCHAR(64) NULL, env VARCHAR(64) NULL, service VARCHAR(128) NULL,"
             " pod VARCHAR(255) NULL, status SMALLINT NOT NULL,"
             " req_bytes BIGINT UNSIGNED NOT NULL, resp_bytes BIGINT UNSIGNED NOT NULL,"
             " upstream_us BIGINT NULL, total_us BIGINT NOT NULL, error VARCHAR(255) NULL,"
             " fallback BOOLEAN NOT NULL, retries INT UNSIGNED NOT NULL,"
             " features VARCHAR(16) NULL, features_hash VARCHAR(64) NULL,"
             " PRIMARY KEY (time, id),"
             " KEY app_env_time (app, env, time),"
             " KEY service_time (service, time)"
             ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
             " PARTITION BY RANGE (TO_DAYS(time)) (");
    q_fmt(d, "PARTITION p_old VALUES LESS THAN (%ld), "
             "PARTITION p_future VALUES LESS THAN MAXVALUE)", today);
    if (!run(d, d->q, false))
        return false;
    return true;
}

static bool db_connect(mg_dblog_t *d)
{
    unsigned connect_to = 2, io_to = 10;
    d->m = mysql_init(NULL);
    if (d->m == NULL)
        return false;
    mysql_options(d->m, MYSQL_OPT_CONNECT_TIMEOUT, &connect_to);
    mysql_options(d->m, MYSQL_OPT_READ_TIMEOUT, &io_to);
    mysql_options(d->m, MYSQL_OPT_WRITE_TIMEOUT, &io_to);
    mysql_options(d->m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (mysql_real_connect(d->m, d->c.host, d->c.user, d->password, NULL, d->c.port, NULL, 0) ==
        NULL) {
        time_t now = time(NULL);
        if (!d->was_down || now - d->last_down_log >= DOWN_LOG_INTERVAL_S) {
            MG_LOG(MG_LOG_WARN, "dblog",
                   "cannot connect to MariaDB %s:%u as %s: %s; records wait in spool %s "
                   "(%" PRIu64 " bytes) and go in when it is back",
                   d->c.host, d->c.port, d->c.user, mysql_error(d->m), d->c.spool_dir,
                   mg_spool_bytes(d->spool));
            d->last_down_log = now;
        }
        d->was_down = true;
        disconnect(d);
        return false;
    }
    /* backslash escapes on (put_sql_str relies on it), strict values, UTC for DATETIME */
    if (!run(d, "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', "
                "time_zone = '+00:00'",
             false) ||
        !ensure_schema(d)) {
        d->was_down = true;
        d->last_down_log = time(NULL);
        disconnect(d);
        return false;
    }
    if (d->was_down)
        MG_LOG(MG_LOG_INFO, "dblog", "connected to MariaDB %s:%u; replaying %" PRIu64
               " spooled bytes", d->c.host, d->c.port, mg_spool_bytes(d->spool));
    d->was_down = false;
    atomic_store(&d->connected, true);
    d->next_maint = 0;
    return true;
}

/* ---------------------------------------------------------------- inserting */

/* Adds the row of |line| to the statement; false (and counts nothing) when it is no record. */
static bool add_row(mg_dblog_t *d, const char *line, size_t len, bool first)
{
    size_t n;
    if (!q_reserve(d, ROW_ROOM + 2))
        return false;
    if (!first)
        d->q[d->qlen++] = ',';
    if (mg_dblog_row(line, len, d->q + d->qlen, d->qcap - d->qlen - 1, &n) != MG_OK) {
        if (!first)
            d->qlen--;
        return false;
    }
    d->qlen += n;
    d->q[d->qlen] = '\0';
    return true;
}

static void start_insert(mg_dblog_t *d)
{
    d->qlen = 0;
    q_add(d, d->insert_head);
}

static bool finish_insert(mg_dblog_t *d, size_t rows)
{
    if (!q_add(d, " ON DUPLICATE KEY UPDATE id = id"))
        return false;
    if (mysql_real_query(d->m, d->q, d->qlen) != 0)
        return false;
    my_ulonglong affected = mysql_affected_rows(d->m);
    affected = affected > rows ? rows : affected;
    atomic_fetch_add(&d->inserted, affected);
    atomic_fetch_add(&d->duplicates, rows - affected);
    return true;
}

static void reject(mg_dblog_t *d, const char *line, size_t len, const char *why)
{
    atomic_fetch_add(&d->rejected, 1);
    MG_LOG(MG_LOG_DEBUG, "dblog", "rejected record (%s): %.*s", why, (int)(len > 200 ? 200 : len),
           line);
}

/* The batch was refused for its data: insert row by row, rejecting only the bad ones. False on
 * a connection problem (the caller retries the whole batch; what went in is a duplicate then). */
static bool insert_rows_one_by_one(mg_dblog_t *d, const char *buf, size_t len)
{
    for (const char *p = buf, *end = buf + len, *nl; p < end; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            nl = end;
        start_insert(d);
        if (!add_row(d, p, (size_t)(nl - p), true))
            continue; /* counted already when the batch was built */
        if (finish_insert(d, 1))
            continue;
        unsigned e = mysql_errno(d->m);
        if (transient(e))
            return false;
        MG_LOG(MG_LOG_ERROR, "dblog", "MariaDB refused a record: %s (error %u): %.*s",
               mysql_error(d->m), e, (int)((nl - p) > 300 ? 300 : (nl - p)), p);
        atomic_fetch_add(&d->rejected, 1);
    }
    return true;
}

/* One round: the next batch from |*pos|. MG_OK with *nlines, MG_E_AGAIN when the spool is
 * drained, MG_E_IO when the database or the spool failed (disconnected when it was the
 * database). |*pos| advances only when the batch is committed. */
static mg_err_t insert_batch(mg_dblog_t *d, mg_spool_pos_t *pos, size_t *nlines)
{
    size_t len, n;
    mg_spool_pos_t next;
    *nlines = 0;
    mg_err_t rc = mg_spool_read(d->spool, pos, d->rbuf, RBUF_CAP, d->c.batch_rows, &len, &n,
                                &next);
    if (rc != MG_OK)
        return rc;
    start_insert(d);
    size_t rows = 0, bad = 0;
    for (const char *p = d->rbuf, *end = d->rbuf + len, *nl; p < end; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            nl = end;
        if (add_row(d, p, (size_t)(nl - p), rows == 0))
            rows++;
        else
            bad++, reject(d, p, (size_t)(nl - p), "not a request record");
    }
    if (rows > 0 && !finish_insert(d, rows)) {
        unsigned e = mysql_errno(d->m);
        if (transient(e) || !insert_rows_one_by_one(d, d->rbuf, len)) {
            MG_LOG(MG_LOG_WARN, "dblog", "MariaDB %s:%u: insert failed: %s (error %u); "
                   "retrying from the spool", d->c.host, d->c.port, mysql_error(d->m), e);
            atomic_fetch_sub(&d->rejected, bad); /* counted again on the retry */
            d->was_down = true;
            disconnect(d);
            return MG_E_IO;
        }
    }
    if (mg_spool_commit(d->spool, next) != MG_OK) {
        atomic_fetch_sub(&d->rejected, bad);
        return MG_E_IO; /* re-read and re-inserted as duplicates: nothing lost */
    }
    *pos = next;
    *nlines = n;
    return MG_OK;
}

/* ---------------------------------------------------------------- reports and thread */

static void report(mg_dblog_t *d, bool force)
{
    uint64_t lost = atomic_load(&d->lost), rej = atomic_load(&d->rejected);
    if (lost == d->lost_reported && rej <= d->rejected_reported)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!force && now.tv_sec - d->last_report.tv_sec < 1)
        return;
    if (lost != d->lost_reported)
        MG_LOG(MG_LOG_ERROR, "dblog",
               "LOST %" PRIu64 " request records (%" PRIu64 " in total): the spool %s is full "
               "(%u MiB) or not writable and MariaDB %s:%u %s; they are in the access log only",
               lost - d->lost_reported, lost, d->c.spool_dir, d->c.spool_max_mb, d->c.host,
               d->c.port, atomic_load(&d->connected) ? "is too slow" : "is unreachable");
    if (rej > d->rejected_reported)
        MG_LOG(MG_LOG_ERROR, "dblog",
               "REJECTED %" PRIu64 " request records (%" PRIu64 " in total): not a valid "
               "record or refused by MariaDB; they are in the access log only",
               rej - d->rejected_reported, rej);
    d->lost_reported = lost;
    d->rejected_reported = rej;
    d->last_report = now;
}

static double ms_since(const struct timespec *a)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - a->tv_sec) * 1e3 + (double)(now.tv_nsec - a->tv_nsec) / 1e6;
}

static void *db_main(void *arg)
{
    mg_dblog_t *d = arg;
    mysql_thread_init();
    mg_spool_pos_t pos = mg_spool_committed(d->spool);
    long backoff = BACKOFF_MIN_MS;
    struct timespec stop_at = {0, 0};
    bool stop = false;
    for (;;) {
        report(d, false);
        if (!stop && stopping(d)) {
            stop = true;
            clock_gettime(CLOCK_MONOTONIC, &stop_at);
        }
        if (stop && (d->m == NULL || ms_since(&stop_at) > CLOSE_DRAIN_MS))
            break;
        if (d->m == NULL) {
            if (!db_connect(d)) {
                wait_ms(d, backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            backoff = BACKOFF_MIN_MS;
        }
        if (time(NULL) >= d->next_maint && !stop) {
            maintain(d);
            d->next_maint = time(NULL) + MAINT_INTERVAL_S;
        }
        size_t n;
        mg_err_t rc = insert_batch(d, &pos, &n);
        if (rc == MG_OK && n >= d->c.batch_rows)
            continue; /* full batch: more is likely waiting */
        if (stop && rc != MG_OK)
            break;
        if (rc == MG_OK || rc == MG_E_AGAIN) {
            if (!stop)
                wait_ms(d, d->c.flush_ms);
        } else {
            wait_ms(d, backoff);
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        }
    }
    disconnect(d);
    report(d, true);
    mysql_thread_end();
    return NULL;
}

/* ---------------------------------------------------------------- public API */

void mg_dblog_conf_defaults(mg_dblog_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    c->port = 3306;
    c->spool_max_mb = 1024;
    c->batch_rows = 500;
    c->flush_ms = 200;
    c->retention_days = 90;
}

static char *read_password(const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        MG_LOG(MG_LOG_ERROR, "dblog", "cannot read the MariaDB password file %s: %s", path,
               strerror(errno));
        return NULL;
    }
    char buf[1024] = "";
    if (fgets(buf, sizeof(buf), f) == NULL)
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    char *p = strdup(buf);
    explicit_bzero(buf, sizeof(buf));
    return p;
}

static char *dup_or(const char *s, const char *dflt)
{
    return strdup(s ? s : dflt);
}

mg_dblog_t *mg_dblog_open(const mg_dblog_conf_t *conf)
{
    char err[512];
    mg_dblog_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        goto nomem;
    d->c = *conf;
    d->c.host = dup_or(conf->host, "127.0.0.1");
    d->c.user = dup_or(conf->user, "modelgate");
    d->c.password_file = NULL;
    d->c.database = dup_or(conf->database, "modelgate");
    d->c.table = dup_or(conf->table, "request_log");
    d->c.spool_dir = dup_or(conf->spool_dir, "request_log_spool");
    d->rbuf = malloc(RBUF_CAP);
    if (!d->c.host || !d->c.user || !d->c.database || !d->c.table || !d->c.spool_dir ||
        !d->rbuf)
        goto nomem;
    d->c.batch_rows = d->c.batch_rows ? d->c.batch_rows : 1;
    if (conf->password_file && (d->password = read_password(conf->password_file)) == NULL)
        goto fail;
    char head[1024];
    size_t o = (size_t)snprintf(head, sizeof(head), "INSERT INTO `%s` (id,time", d->c.table);
    for (size_t i = 0; i < NCOLS; i++)
        o += (size_t)snprintf(head + o, sizeof(head) - o, ",%s", cols[i].name);
    snprintf(head + o, sizeof(head) - o, ") VALUES ");
    if ((d->insert_head = strdup(head)) == NULL)
        goto nomem;

    d->spool = mg_spool_open(d->c.spool_dir, (uint64_t)d->c.spool_max_mb << 20, err,
                             sizeof(err));
    if (d->spool == NULL) {
        MG_LOG(MG_LOG_ERROR, "dblog", "%s", err);
        goto fail;
    }
    if (mysql_library_init(0, NULL, NULL) != 0) {
        MG_LOG(MG_LOG_ERROR, "dblog", "cannot initialise the MariaDB client library");
        goto fail;
    }
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cond, &ca);
    pthread_condattr_destroy(&ca);
    clock_gettime(CLOCK_MONOTONIC, &d->last_report);
    d->last_report.tv_sec -= 2;

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* signals belong to the main thread */
    int rc = pthread_create(&d->thread, NULL, db_main, d);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        MG_LOG(MG_LOG_ERROR, "dblog", "cannot start the database thread: %s", strerror(rc));
        pthread_cond_destroy(&d->cond);
        pthread_mutex_destroy(&d->mu);
        mysql_library_end();
        goto fail;
    }
    pthread_setname_np(d->thread, "mg-dblog");
    MG_LOG(MG_LOG_INFO, "dblog", "request log to MariaDB %s:%u %s.%s, spool %s (cap %u MiB)",
           d->c.host, d->c.port, d->c.database, d->c.table, d->c.spool_dir, d->c.spool_max_mb);
    return d;

nomem:
    MG_LOG(MG_LOG_ERROR, "dblog", "out of memory opening the database request log");
fail:
    if (d) {
        mg_spool_close(d->spool);
        if (d->password)
            explicit_bzero(d->password, strlen(d->password));
        free(d->password);
        free(d->insert_head);
        free(d->rbuf);
        free(d->c.host);
        free(d->c.user);
        free(d->c.database);
        free(d->c.table);
        free(d->c.spool_dir);
        free(d);
    }
    return NULL;
}

void mg_dblog_sink(void *ud, const char *lines, size_t len)
{
    mg_dblog_t *d = ud;
    uint64_t lost = 0;
    mg_spool_append(d->spool, lines, len, &lost);
    size_t n = 0;
    for (const char *p = lines, *e = lines + len; (p = memchr(p, '\n', (size_t)(e - p))); p++)
        n++;
    atomic_fetch_add(&d->spooled, n - lost);
    if (lost)
        atomic_fetch_add(&d->lost, lost); /* the database thread reports it within a second */
}

void mg_dblog_stats(mg_dblog_t *d, mg_dblog_stats_t *out)
{
    out->spooled = atomic_load(&d->spooled);
    out->inserted = atomic_load(&d->inserted);
    out->duplicates = atomic_load(&d->duplicates);
    out->lost = atomic_load(&d->lost);
    out->rejected = atomic_load(&d->rejected);
    out->spool_bytes = mg_spool_bytes(d->spool);
    out->connected = atomic_load(&d->connected);
}

void mg_dblog_close(mg_dblog_t *d)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->thread, NULL);
    mg_dblog_stats_t st;
    mg_dblog_stats(d, &st);
    MG_LOG(MG_LOG_INFO, "dblog",
           "closed: %" PRIu64 " records spooled, %" PRIu64 " inserted, %" PRIu64
           " duplicates skipped, %" PRIu64 " lost, %" PRIu64 " rejected; %" PRIu64
           " bytes left in the spool for the next start",
           st.spooled, st.inserted, st.duplicates, st.lost, st.rejected, st.spool_bytes);
    mg_spool_close(d->spool);
    mysql_library_end();
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->mu);
    if (d->password)
        explicit_bzero(d->password, strlen(d->password));
    free(d->password);
    free(d->insert_head);
    free(d->rbuf);
    free(d->q);
    free(d->c.host);
    free(d->c.user);
    free(d->c.database);
    free(d->c.table);
    free(d->c.spool_dir);
    free(d);
}
