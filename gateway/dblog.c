/*
 * gateway/dblog.c - the request log in MariaDB (see dblog.h for the contract).
 *
 * DESIGN
 * Two threads touch a dblog. The access log's writer thread calls mg_dblog_sink, which only
 * appends to the spool (disk, fsync) and never waits for the network. The database thread owns
 * the MariaDB connection (the blocking client API is fine here: this thread serves no request)
 * and loops: read up to batch_rows lines from the committed spool position, scan each into its
 * row's values in place (gateway/dbrow.h), bind them column-wise to one prepared
 * "INSERT ... VALUES (?,...) ON DUPLICATE KEY UPDATE id = id" and run it as one bulk execution
 * (MariaDB's array binding), then commit the new position. The values travel as bytes: no SQL
 * text per row, no escaping, and the server parses the statement once per connection, not 22
 * literals per row. Duplicates are recognised by the primary key (time, id), so whatever happens
 * between the INSERT and the commit (crash, lost connection, kill -9) a replay adds nothing
 * twice; "ON DUPLICATE KEY" rather than INSERT IGNORE because IGNORE would also silently swallow
 * every other row error. A batch that MariaDB refuses for a record's value (data_error) is
 * retried row by row, so one bad record is rejected and counted, not the whole batch, and never
 * blocks the spool; any other refusal is retried later, whole.
 *
 * After a partial batch (the spool is drained) the thread waits flush_ms before reading again,
 * so under light load rows go in every flush_ms in one statement, and under heavy load batches
 * are full and go back to back. When MariaDB is away, connection attempts back off from 100 ms
 * to 2 s; meanwhile the spool grows up to its cap.
 */
#include "gateway/dblog.h"

#include <ctype.h>
#include <errmsg.h>
#include <errno.h>
#include <inttypes.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dberr.h"
#include "common/log.h"
#include "common/secretfile.h"
#include "common/thread.h"
#include "gateway/dbrow.h"
#include "gateway/spool.h"

#define RBUF_CAP (2u * 1024 * 1024) /* spool bytes read per batch, at most */
#define READ_MIN (64u * 1024)        /* and at least (a line is at most 8 KiB) */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define WAIT_MAX_MS 1000         /* longest sleep: bounds the loss-report delay */
#define CLOSE_DRAIN_MS 2000      /* how long close may keep inserting */
#define CLOSE_GRACE_MS 1000      /* and then wait for a call into MariaDB to return */
#define MAINT_INTERVAL_S 3600    /* partition check */
#define PARTITIONS_AHEAD 7       /* days of partitions kept ready */
#define DOWN_LOG_INTERVAL_S 60   /* repeat "still cannot connect" at most this often */
#define TO_DAYS_EPOCH 719528     /* TO_DAYS('1970-01-01') */

/* Parameters of the INSERT: id, time, then the columns of gateway/dbrow.h. */
#define P_ID 0
#define P_TIME 1
#define P_COL 2
#define NPARAMS (P_COL + MG_DBROW_NCOLS)

/* The bulk INSERT's parameters, bound column-wise: row i of parameter j is ptr[i]/len[i]
 * (strings) or num[i] (numbers), with ind[i] saying NULL or not. batch_rows entries each,
 * allocated once at open. */
typedef struct param {
    char **ptr;
    unsigned long *len;
    long long *num;
    char *ind;
} param_t;

struct mg_dblog {
    mg_dblog_conf_t c; /* own copies of the strings */
    char *password;
    mg_spool_t *spool;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; signalled on close */
    bool stopping;       /* under mu */

    atomic_uint_least64_t spooled, inserted, duplicates, lost, rejected;
    atomic_int lost_cause;           /* the last loss's LOST_* */
    atomic_uint_least64_t unspooled; /* dropped before the spool (mg_dblog_lost); stats add it to
                                      * lost, the access log says it */
    atomic_bool connected;

    /* database thread only */
    MYSQL *m;
    MYSQL_STMT *stmt; /* the prepared insert_sql, while connected */
    char *rbuf;
    size_t read_size; /* bytes asked of the spool per batch: READ_MIN..read_max */
    size_t read_max;  /* RBUF_CAP, or half the server's max_allowed_packet (packet_limit) */
    char *q; /* a maintenance statement being built */
    size_t qlen, qcap;
    char *insert_sql; /* "INSERT INTO `t` (cols) VALUES (?,...) ON DUPLICATE KEY UPDATE id = id" */
    param_t p[NPARAMS];
    uint8_t (*ids)[16]; /* the id bytes that p[P_ID] points at */
    const char **line;  /* each row's spool line (unescaped in place), for messages */
    size_t *line_len;
    void *pmem; /* the one block holding all of the above arrays */
    pthread_mutex_t report_mu; /* report() runs on the database and the writer thread */
    uint64_t lost_reported, rejected_reported; /* under report_mu */
    struct timespec last_report;
    time_t next_maint;
    time_t last_down_log;
    time_t last_up_log; /* of the "connected; replaying" line */
    bool was_down;     /* a connection failed since the last success */
    bool maint_warned; /* "table not partitioned" said once */
    mg_log_cause_t refused_row; /* "MariaDB refused a record": one line per cause a minute */
    mg_log_cause_t table_refused;       /* why the table is refused: said once a minute */
    mg_log_cause_t insert_failed;       /* why batches are retried: said once a minute */
    unsigned max_chars[MG_DBROW_NCOLS]; /* the table's text column lengths (check_table) */
    size_t max_bytes[MG_DBROW_NCOLS];
};

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
    struct timespec dl = mg_thread_deadline(CLOCK_MONOTONIC, (unsigned)ms);
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
    if (d->stmt) {
        mysql_stmt_close(d->stmt);
        d->stmt = NULL;
    }
    if (d->m) {
        mysql_close(d->m);
        d->m = NULL;
    }
    atomic_store(&d->connected, false);
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
/* p_old holds the rows of days before the table was made (a spool replayed into a new table,
 * an operator's import). It cannot be dropped, being the first range, but once its bound is
 * past retention_days every row in it is expired: it is emptied, when it holds any. */
static void expire_old(mg_dblog_t *d)
{
    d->qlen = 0;
    q_fmt(d, "SELECT 1 FROM `%s` PARTITION (p_old) LIMIT 1", d->c.table);
    MYSQL_RES *r = NULL;
    if (mysql_real_query(d->m, d->q, d->qlen) != 0 || (r = mysql_store_result(d->m)) == NULL)
        return;
    bool rows = mysql_num_rows(r) > 0;
    mysql_free_result(r);
    d->qlen = 0;
    q_fmt(d, "ALTER TABLE `%s` TRUNCATE PARTITION p_old", d->c.table);
    if (rows && run(d, d->q, false))
        MG_LOG(MG_LOG_INFO, "dblog",
               "table %s: emptied p_old, whose rows are all older than %u "
               "days",
               d->c.table, d->c.retention_days);
}

/* Is a partition of |method| over |expr| (information_schema's PARTITION_METHOD and
 * PARTITION_EXPRESSION) one of ours: RANGE over TO_DAYS(time)? Bounds are then day numbers;
 * under any other scheme (RANGE COLUMNS over dates, YEAR(time)) they are not, and reading
 * them as days would drop current partitions. */
static bool by_to_days(const char *method, const char *expr)
{
    if (method == NULL || expr == NULL || strcmp(method, "RANGE") != 0)
        return false;
    static const char want[] = "to_days(time)";
    size_t k = 0;
    for (const char *p = expr; *p; p++) {
        if (*p == '`' || *p == ' ')
            continue;
        if (k == sizeof(want) - 1 || tolower((unsigned char)*p) != want[k])
            return false;
        k++;
    }
    return k == sizeof(want) - 1;
}

static void maintain(mg_dblog_t *d)
{
    long today = server_today(d);
    if (today < 0)
        return;
    d->qlen = 0;
    q_fmt(d,
          "SELECT PARTITION_NAME, PARTITION_DESCRIPTION, PARTITION_METHOD, PARTITION_EXPRESSION "
          "FROM information_schema.PARTITIONS "
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
    long max_bound = -1, old_bound = -1;
    bool future = false;
    char drop[4096] = "";
    size_t dl = 0;
    MYSQL_ROW row;
    const char *scheme = NULL; /* set when the table is not partitioned as ours are */
    char scheme_buf[160];
    while ((row = mysql_fetch_row(r)) != NULL) {
        if (row[0] == NULL || row[1] == NULL)
            continue;
        if (!by_to_days(row[2], row[3])) {
            snprintf(scheme_buf, sizeof(scheme_buf), "%.20s (%.120s)", row[2] ? row[2] : "?",
                     row[3] ? row[3] : "?");
            scheme = scheme_buf;
            break;
        }
        if (strcmp(row[0], "p_future") == 0) {
            future = true;
            continue;
        }
        char *end;
        long bound = strtol(row[1], &end, 10);
        if (end == row[1] || *end != '\0')
            continue;
        max_bound = bound > max_bound ? bound : max_bound;
        if (strcmp(row[0], "p_old") == 0)
            old_bound = bound;
        /* day partitions (never p_old) of a day D < today - retention_days; bound = D + 1, and
         * the name says D: a partition an operator added otherwise is not ours to drop */
        char day[16];
        part_name(day, sizeof(day), bound - 1);
        if (d->c.retention_days > 0 && strcmp(row[0], day) == 0 &&
            bound <= today - (long)d->c.retention_days && dl + strlen(row[0]) + 2 < sizeof(drop))
            dl += (size_t)snprintf(drop + dl, sizeof(drop) - dl, "%s`%s`", dl ? "," : "", row[0]);
    }
    mysql_free_result(r);
    if (scheme) {
        if (!d->maint_warned)
            MG_LOG(MG_LOG_WARN, "dblog",
                   "table %s.%s is partitioned by %s, not RANGE (TO_DAYS(time)) as "
                   "conf/request_log.sql makes it: day partitions and retention are not managed",
                   d->c.database, d->c.table, scheme);
        d->maint_warned = true;
        return;
    }
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
    if (d->c.retention_days > 0 && old_bound >= 0 && old_bound <= today - (long)d->c.retention_days)
        expire_old(d);
    if (dl > 0) {
        d->qlen = 0;
        q_fmt(d, "ALTER TABLE `%s` DROP PARTITION %s", d->c.table, drop);
        if (run(d, d->q, false))
            MG_LOG(MG_LOG_INFO, "dblog", "table %s: dropped partitions older than %u days: %s",
                   d->c.table, d->c.retention_days, drop);
    }
}

/* The rows of |sql| (a query on information_schema about our table), or NULL (said). */
static MYSQL_RES *table_info(mg_dblog_t *d, const char *what, const char *sql)
{
    d->qlen = 0;
    q_fmt(d, sql, d->c.database, d->c.table);
    MYSQL_RES *r = NULL;
    if (mysql_real_query(d->m, d->q, d->qlen) != 0 || (r = mysql_store_result(d->m)) == NULL)
        MG_LOG(MG_LOG_WARN, "dblog", "MariaDB %s:%u: cannot read the %s of %s: %s", d->c.host,
               d->c.port, what, d->c.table, mysql_error(d->m));
    return r;
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
    /* a table that exists needs no CREATE, which a least-privilege user (INSERT and SELECT on
     * the table) is denied even with IF NOT EXISTS */
    MYSQL_RES *r = table_info(d, "existence",
                              "SELECT 1 FROM information_schema.TABLES WHERE "
                              "TABLE_SCHEMA = '%s' AND TABLE_NAME = '%s'");
    bool exists = r && mysql_num_rows(r) > 0;
    if (r)
        mysql_free_result(r);
    if (exists)
        return true;
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

/* Whether the comma-separated column list |list| holds |name| exactly ("id(8)" is not "id"). */
static bool cols_have(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p != NULL; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* The table's text column lengths, in characters and bytes, into d->max_chars and
 * d->max_bytes (values are cut to them, never refused for them). */
static bool read_lengths(mg_dblog_t *d)
{
    MYSQL_ROW row;
    MYSQL_RES *r =
        table_info(d, "columns",
                   "SELECT COLUMN_NAME, LEAST(CHARACTER_MAXIMUM_LENGTH, 1000000), "
                   "LEAST(CHARACTER_OCTET_LENGTH, 1000000) FROM information_schema.COLUMNS "
                   "WHERE TABLE_SCHEMA = '%s' AND TABLE_NAME = '%s' AND "
                   "CHARACTER_MAXIMUM_LENGTH IS NOT NULL");
    if (r == NULL)
        return false;
    for (size_t k = 0; k < MG_DBROW_NCOLS; k++)
        d->max_chars[k] = mg_dbrow_cols[k].maxlen, d->max_bytes[k] = SIZE_MAX;
    while ((row = mysql_fetch_row(r)) != NULL && row[0] && row[1] && row[2]) {
        unsigned chars = (unsigned)strtoul(row[1], NULL, 10);
        for (size_t k = 0; k < MG_DBROW_NCOLS; k++) {
            if (mg_dbrow_cols[k].type != MG_DBROW_STR || strcmp(mg_dbrow_cols[k].name, row[0]))
                continue;
            if (chars < d->max_chars[k])
                d->max_chars[k] = chars;
            d->max_bytes[k] = (size_t)strtoul(row[2], NULL, 10);
        }
    }
    mysql_free_result(r);
    return true;
}

/* A table an operator created may differ from ours. Two differences matter:
 * - Exactly-once rests on a unique key of (time, id) or (id): without one a replay after a
 *   crash inserts records twice; and a unique key without id (say on request_id, which clients
 *   choose, or on a prefix of id, listed as "id(8)") would merge distinct records into one
 *   ("ON DUPLICATE KEY"). Either is refused, and
 *   records wait in the spool until the table is fixed.
 * - Narrower text columns: values are cut to the table's lengths, not refused. */
static bool check_table(mg_dblog_t *d)
{
    MYSQL_RES *r = table_info(d, "keys",
                              "SELECT INDEX_NAME, GROUP_CONCAT(CONCAT(COLUMN_NAME, IF(SUB_PART "
                              "IS NULL, '', CONCAT('(', SUB_PART, ')'))) ORDER BY SEQ_IN_INDEX) "
                              "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '%s' AND "
                              "TABLE_NAME = '%s' AND NON_UNIQUE = 0 GROUP BY INDEX_NAME");
    if (r == NULL)
        return false;
    bool idempotent = false;
    char why[400] = ""; /* the first problem found */
    MYSQL_ROW row;
    while ((row = mysql_fetch_row(r)) != NULL && row[0] && row[1]) {
        const char *cols = row[1];
        if (!cols_have(cols, "id") && !*why)
            snprintf(why, sizeof(why),
                     "unique key %s (%.100s) would merge distinct request "
                     "records into one row; make it a plain KEY",
                     row[0], cols);
        else if (strcmp(cols, "time,id") == 0 || strcmp(cols, "id,time") == 0 ||
                 strcmp(cols, "id") == 0)
            idempotent = true;
    }
    mysql_free_result(r);
    if (!idempotent && !*why)
        snprintf(why, sizeof(why),
                 "has no PRIMARY KEY (time, id): a replay after a crash would "
                 "insert records twice; add it (conf/request_log.sql)");
    if (*why) { /* said when new, then once a minute while the connection is retried */
        unsigned long again;
        char more[64];
        if (mg_log_cause_pass(&d->table_refused, why, DOWN_LOG_INTERVAL_S, &again))
            MG_LOG(MG_LOG_ERROR, "dblog", "table %s: %s. Records wait in spool %s%s", d->c.table,
                   why, d->c.spool_dir, mg_log_repeats(more, sizeof(more), again));
        return false;
    }
    mg_log_cause_reset(&d->table_refused);

    return read_lengths(d);
}

/* Array binding (COM_STMT_BULK_EXECUTE) is MariaDB's, from 10.2.6 on: without it every batch
 * would fail, so say so at connect instead. */
static bool bulk_supported(mg_dblog_t *d)
{
    unsigned long v = mysql_get_server_version(d->m);
    if (mariadb_connection(d->m) && v >= 100206)
        return true;
    MG_LOG(MG_LOG_ERROR, "dblog", "MariaDB %s:%u is %s %s: the request log needs MariaDB 10.2.6 "
           "or later (bulk inserts); records wait in spool %s", d->c.host, d->c.port,
           mariadb_connection(d->m) ? "MariaDB" : "not MariaDB", mysql_get_server_info(d->m),
           d->c.spool_dir);
    return false;
}

/* A batch's INSERT must fit the server's max_allowed_packet: past it MariaDB refuses it (error
 * 1153, or it just closes the connection) and the same batch came back for ever. A row takes
 * fewer bytes in the INSERT than its line in the spool, so reads stop at half of it (at least
 * 16 KiB: a line is at most 8 KiB). */
static bool packet_limit(mg_dblog_t *d)
{
    if (mysql_query(d->m, "SELECT @@max_allowed_packet") != 0) {
        MG_LOG(MG_LOG_WARN, "dblog", "MariaDB %s:%u: SELECT @@max_allowed_packet: %s (error %u)",
               d->c.host, d->c.port, mysql_error(d->m), mysql_errno(d->m));
        return false;
    }
    MYSQL_RES *r = mysql_store_result(d->m);
    MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
    unsigned long long half = row && row[0] ? strtoull(row[0], NULL, 10) / 2 : RBUF_CAP;
    if (r)
        mysql_free_result(r);
    d->read_max = half < 16 * 1024 ? 16 * 1024 : half > RBUF_CAP ? RBUF_CAP : (size_t)half;
    if (d->read_size > d->read_max)
        d->read_size = d->read_max;
    return true;
}

static bool prepare_insert(mg_dblog_t *d)
{
    if ((d->stmt = mysql_stmt_init(d->m)) != NULL &&
        mysql_stmt_prepare(d->stmt, d->insert_sql, strlen(d->insert_sql)) == 0)
        return true;
    MG_LOG(MG_LOG_WARN, "dblog", "MariaDB %s:%u: cannot prepare the insert into %s: %s",
           d->c.host, d->c.port, d->c.table, d->stmt ? mysql_stmt_error(d->stmt) : "no memory");
    return false;
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
                   mg_spool_pending(d->spool));
            d->last_down_log = now;
        }
        d->was_down = true;
        disconnect(d);
        return false;
    }
    /* strict values (a bad one is refused, not mangled), UTC for DATETIME */
    if (!run(d,
             "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', "
             "time_zone = '+00:00'",
             false) ||
        !bulk_supported(d) || !packet_limit(d) || !ensure_schema(d) || !check_table(d) ||
        !prepare_insert(d)) {
        d->was_down = true;
        d->last_down_log = time(NULL);
        disconnect(d);
        return false;
    }
    /* once a minute at most: a server that refuses every batch is reconnected to each time */
    time_t now = time(NULL);
    if (d->was_down && now - d->last_up_log >= DOWN_LOG_INTERVAL_S) {
        MG_LOG(MG_LOG_INFO, "dblog",
               "connected to MariaDB %s:%u; replaying %" PRIu64 " spooled bytes", d->c.host,
               d->c.port, mg_spool_pending(d->spool));
        d->last_up_log = now;
    }
    d->was_down = false;
    atomic_store(&d->connected, true);
    d->next_maint = 0;
    return true;
}

/* ---------------------------------------------------------------- inserting */

static void set_param(param_t *p, size_t i, const char *s, size_t len, long long n, bool null)
{
    p->ptr[i] = (char *)s; /* the library only reads it */
    p->len[i] = (unsigned long)len;
    p->num[i] = n;
    p->ind[i] = null ? STMT_INDICATOR_NULL : STMT_INDICATOR_NONE;
}

/* Row |i| of the next bulk INSERT: |r| points into rbuf, which stays put until the batch is
 * committed, so only the id bytes are copied. */
static void put_row(mg_dblog_t *d, size_t i, const mg_dbrow_t *r)
{
    memcpy(d->ids[i], r->id, sizeof(r->id));
    set_param(&d->p[P_ID], i, (const char *)d->ids[i], sizeof(r->id), 0, false);
    set_param(&d->p[P_TIME], i, r->time, MG_DBROW_TIME_LEN, 0, false);
    for (size_t k = 0; k < MG_DBROW_NCOLS; k++) {
        const mg_dbrow_val_t *v = &r->v[k];
        size_t len = v->len;
        if (v->s && (len > d->max_chars[k] || len > d->max_bytes[k])) /* a narrower column */
            len = mg_dbrow_utf8_prefix(v->s, len, d->max_chars[k], d->max_bytes[k]);
        set_param(&d->p[P_COL + k], i, v->s, len, v->n, v->null);
    }
}

/* Binds rows [first, first + n) and runs the INSERT; counts inserted rows and duplicates. */
static bool execute_rows(mg_dblog_t *d, size_t first, size_t n)
{
    MYSQL_BIND b[NPARAMS];
    unsigned int size = (unsigned int)n;
    memset(b, 0, sizeof(b));
    for (size_t j = 0; j < NPARAMS; j++) {
        param_t *p = &d->p[j];
        bool str = j < P_COL || mg_dbrow_cols[j - P_COL].type == MG_DBROW_STR;
        b[j].u.indicator = p->ind + first;
        if (str) {
            /* the id is bytes (BLOB: no character set check); the rest is utf8mb4 text */
            b[j].buffer_type = j == P_ID ? MYSQL_TYPE_BLOB : MYSQL_TYPE_STRING;
            b[j].buffer = p->ptr + first;
            b[j].length = p->len + first;
        } else {
            b[j].buffer_type = MYSQL_TYPE_LONGLONG;
            b[j].buffer = p->num + first;
            b[j].is_unsigned = mg_dbrow_cols[j - P_COL].type == MG_DBROW_UINT;
        }
    }
    if (mysql_stmt_attr_set(d->stmt, STMT_ATTR_ARRAY_SIZE, &size) != 0 ||
        mysql_stmt_bind_param(d->stmt, b) != 0 || mysql_stmt_execute(d->stmt) != 0)
        return false;
    my_ulonglong affected = mysql_stmt_affected_rows(d->stmt);
    affected = affected > n ? n : affected;
    atomic_fetch_add(&d->inserted, affected);
    atomic_fetch_add(&d->duplicates, n - affected);
    return true;
}

static void reject(mg_dblog_t *d, const char *line, size_t len, const char *why)
{
    atomic_fetch_add(&d->rejected, 1);
    MG_LOG(MG_LOG_DEBUG, "dblog", "rejected record (%s): %.*s", why, (int)(len > 200 ? 200 : len),
           line);
}

/* The batch was refused for its data: insert row by row, rejecting only the bad ones (errors
 * about a row's own values, mg_db_value_refused; any other refusal is the server's state, and
 * the batch is retried after a backoff, waiting in the spool: a reason missing from that list
 * stalls the spool loudly rather than losing records). ROWS_FAILED on a connection problem
 * (the caller retries the whole batch; what went in is a duplicate then); ROWS_REBIND when a
 * 1406 showed the column lengths changed: they are read already, and the caller binds the
 * batch again with them, on the same connection. */
enum { ROWS_DONE, ROWS_FAILED, ROWS_REBIND };
static int insert_rows_one_by_one(mg_dblog_t *d, size_t rows)
{
    size_t refused = 0; /* counted once the pass is through: a batch sent back counts nothing */
    bool reread = false;
    for (size_t i = 0; i < rows; i++) {
        if (execute_rows(d, i, 1))
            continue;
        unsigned e = mysql_stmt_errno(d->stmt);
        if (!mg_db_value_refused(e))
            return ROWS_FAILED;
        if (e == ER_DATA_TOO_LONG && !reread) {
            /* Values are cut to the column lengths read at connect: a column narrowed since
             * (ALTER TABLE) refuses them. When the lengths did change, the batch is bound again
             * with them; when not, the row is refused for another reason. */
            unsigned chars[MG_DBROW_NCOLS];
            size_t bytes[MG_DBROW_NCOLS];
            memcpy(chars, d->max_chars, sizeof(chars));
            memcpy(bytes, d->max_bytes, sizeof(bytes));
            reread = true;
            if (!read_lengths(d))
                return ROWS_FAILED;
            if (memcmp(chars, d->max_chars, sizeof(chars)) != 0 ||
                memcmp(bytes, d->max_bytes, sizeof(bytes)) != 0)
                return ROWS_REBIND;
        }
        /* one line per error number a minute, with the first record: 2000 rows an operator's
         * CHECK refuses are not 2000 lines (the REJECTED summary counts them once a second) */
        char cause[32], more[64];
        unsigned long again;
        snprintf(cause, sizeof(cause), "error %u", e);
        int n = (int)(d->line_len[i] > 300 ? 300 : d->line_len[i]);
        if (mg_log_cause_pass(&d->refused_row, cause, 60, &again))
            MG_LOG(MG_LOG_ERROR, "dblog", "MariaDB refused a record: %s (%s): %.*s%s",
                   mysql_stmt_error(d->stmt), cause, n, d->line[i],
                   mg_log_repeats(more, sizeof(more), again));
        refused++;
    }
    atomic_fetch_add(&d->rejected, refused);
    return ROWS_DONE;
}

/* Reads of the spool are sized for one batch (its lines' average size, with a margin) rather
 * than the whole buffer: under a backlog a 2 MiB read of which one batch is used copies several
 * times what goes in. */
static void size_bulk_read(mg_dblog_t *d, size_t len, size_t nlines)
{
    size_t want = len / nlines * d->c.batch_rows;
    want += want / 4 + READ_MIN;
    d->read_size = want > d->read_max ? d->read_max : want;
}

/* One round: the next batch from |*pos|. MG_OK with *nlines (and *cut: the read size, not the
 * spool's end, ended it), MG_E_AGAIN when the spool is drained, MG_E_IO when the database or the spool failed (disconnected when it was the
 * database). |*pos| advances only when the batch is committed. */
static mg_err_t insert_batch(mg_dblog_t *d, mg_spool_pos_t *pos, size_t *nlines, bool *cut)
{
    size_t len, n;
    mg_spool_pos_t next;
    bool rebound = false;
    *nlines = 0;
again:; /* the batch is read again (parsing decoded its strings in place) and bound again */
    mg_err_t rc =
        mg_spool_read(d->spool, pos, d->rbuf, d->read_size, d->c.batch_rows, &len, &n, &next, cut);
    if (rc != MG_OK)
        return rc;
    size_bulk_read(d, len, n);
    size_t rows = 0, bad = 0;
    for (char *p = d->rbuf, *end = d->rbuf + len, *nl; p < end; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            nl = end;
        mg_dbrow_t r;
        if (mg_dbrow_parse(p, (size_t)(nl - p), &r) != MG_OK) {
            bad++, reject(d, p, (size_t)(nl - p), "not a request record");
            continue;
        }
        d->line[rows] = p, d->line_len[rows] = (size_t)(nl - p);
        put_row(d, rows++, &r);
    }
    if (rows > 0 && !execute_rows(d, 0, rows)) {
        int done = mg_db_value_refused(mysql_stmt_errno(d->stmt)) ? insert_rows_one_by_one(d, rows)
                                                                  : ROWS_FAILED;
        if (done == ROWS_REBIND && !rebound) {
            atomic_fetch_sub(&d->rejected, bad); /* counted again on the second reading */
            rebound = true;
            goto again;
        }
        if (done != ROWS_DONE) {
            /* a cause that lasts (a trigger, a maintenance window) is said once a minute */
            char cause[300], more[64];
            unsigned long again;
            snprintf(cause, sizeof(cause), "%s (error %u)", mysql_stmt_error(d->stmt),
                     mysql_stmt_errno(d->stmt));
            if (mg_log_cause_pass(&d->insert_failed, cause, 60, &again))
                MG_LOG(MG_LOG_WARN, "dblog",
                       "MariaDB %s:%u: insert failed: %s; records wait "
                       "in the spool and the batch is retried%s",
                       d->c.host, d->c.port, cause, mg_log_repeats(more, sizeof(more), again));
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
    mg_log_cause_reset(&d->insert_failed);
    *pos = next;
    *nlines = n;
    return MG_OK;
}

/* ---------------------------------------------------------------- reports and thread */

/* Loud, at most once a second. It runs on the database thread and after each spool append on
 * the writer thread, so a loss is said promptly even while the database thread waits on a
 * MariaDB that hangs (up to its 10 s I/O timeout). */
enum { LOST_CAP, LOST_WRITE, LOST_REMOVED };

static void report(mg_dblog_t *d, bool force)
{
    pthread_mutex_lock(&d->report_mu);
    uint64_t lost = atomic_load(&d->lost), rej = atomic_load(&d->rejected);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((lost == d->lost_reported && rej <= d->rejected_reported) ||
        (!force && now.tv_sec - d->last_report.tv_sec < 1)) {
        pthread_mutex_unlock(&d->report_mu);
        return;
    }
    int cause = atomic_load(&d->lost_cause);
    if (lost != d->lost_reported && cause == LOST_REMOVED)
        MG_LOG(MG_LOG_ERROR, "dblog",
               "LOST %" PRIu64 " request records (%" PRIu64 " in total): their files in the "
               "spool %s were removed before MariaDB had them (the spool's error line says "
               "more); the access log has them, unless it could not write them either (its own "
               "LOST lines say so)",
               lost - d->lost_reported, lost, d->c.spool_dir);
    else if (lost != d->lost_reported && cause == LOST_WRITE)
        MG_LOG(MG_LOG_ERROR, "dblog",
               "LOST %" PRIu64 " request records (%" PRIu64 " in total): the spool %s cannot "
               "be written (a full disk? the spool's error line says why); the access log has "
               "them, unless it could not write them either (its own LOST lines say so)",
               lost - d->lost_reported, lost, d->c.spool_dir);
    else if (lost != d->lost_reported)
        MG_LOG(MG_LOG_ERROR, "dblog",
               "LOST %" PRIu64 " request records (%" PRIu64 " in total): the spool %s is full "
               "(%u MiB) and MariaDB %s:%u %s; the access log has them, unless it could not "
               "write them either (its own LOST lines say so)",
               lost - d->lost_reported, lost, d->c.spool_dir, d->c.spool_max_mb, d->c.host,
               d->c.port,
               atomic_load(&d->connected)
                   ? "takes them more slowly than they come"
                   : "has not taken any for a while (unreachable, or refusing the batches: the "
                     "dblog warnings say why)");
    if (rej > d->rejected_reported)
        MG_LOG(MG_LOG_ERROR, "dblog",
               "REJECTED %" PRIu64 " request records (%" PRIu64 " in total): not a valid "
               "record or refused by MariaDB; they are in the access log only",
               rej - d->rejected_reported, rej);
    d->lost_reported = lost;
    d->rejected_reported = rej;
    d->last_report = now;
    pthread_mutex_unlock(&d->report_mu);
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
    mg_thread_background();
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
        }
        if (time(NULL) >= d->next_maint && !stop) {
            maintain(d);
            d->next_maint = time(NULL) + MAINT_INTERVAL_S;
        }
        size_t n;
        bool cut;
        mg_err_t rc = insert_batch(d, &pos, &n, &cut);
        if (rc != MG_E_IO) /* a batch went in (or none was due): connecting is not enough, as a
                            * server that takes connections may refuse every insert */
            backoff = BACKOFF_MIN_MS;
        if (rc == MG_OK && (n >= d->c.batch_rows || cut))
            continue; /* full batch, or the read size ended it: more is waiting */
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

static char *dup_or(const char *s, const char *dflt)
{
    return strdup(s ? s : dflt);
}

/* "INSERT INTO `t` (id,time,request_id,...) VALUES (?,?,?,...) ON DUPLICATE KEY UPDATE id = id":
 * "ON DUPLICATE KEY" rather than IGNORE, which would also swallow every other row error. */
static char *insert_sql(const char *table)
{
    char sql[2048];
    size_t o = (size_t)snprintf(sql, sizeof(sql), "INSERT INTO `%.64s` (id,time", table);
    for (size_t i = 0; i < MG_DBROW_NCOLS; i++)
        o += (size_t)snprintf(sql + o, sizeof(sql) - o, ",%s", mg_dbrow_cols[i].name);
    o += (size_t)snprintf(sql + o, sizeof(sql) - o, ") VALUES (?");
    for (size_t i = 1; i < NPARAMS; i++)
        o += (size_t)snprintf(sql + o, sizeof(sql) - o, ",?");
    snprintf(sql + o, sizeof(sql) - o, ") ON DUPLICATE KEY UPDATE id = id");
    return strdup(sql);
}

/* One block for every per-row array, batch_rows long: 8-byte fields first, then bytes. */
static bool alloc_params(mg_dblog_t *d)
{
    size_t n = d->c.batch_rows;
    size_t words = NPARAMS * (sizeof(char *) + sizeof(unsigned long) + sizeof(long long)) +
                   sizeof(*d->line) + sizeof(*d->line_len);
    char *m = calloc(n, words + sizeof(*d->ids) + NPARAMS);
    if (m == NULL)
        return false;
    d->pmem = m;
    for (size_t j = 0; j < NPARAMS; j++) {
        d->p[j].ptr = (char **)(void *)m, m += n * sizeof(char *);
        d->p[j].len = (unsigned long *)(void *)m, m += n * sizeof(unsigned long);
        d->p[j].num = (long long *)(void *)m, m += n * sizeof(long long);
    }
    d->line = (const char **)(void *)m, m += n * sizeof(*d->line);
    d->line_len = (size_t *)(void *)m, m += n * sizeof(*d->line_len);
    d->ids = (uint8_t(*)[16])(void *)m, m += n * sizeof(*d->ids);
    for (size_t j = 0; j < NPARAMS; j++)
        d->p[j].ind = m, m += n;
    return true;
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
    d->read_size = d->read_max = RBUF_CAP;
    if (!d->c.host || !d->c.user || !d->c.database || !d->c.table || !d->c.spool_dir ||
        !d->rbuf)
        goto nomem;
    d->c.batch_rows = d->c.batch_rows ? d->c.batch_rows : 1;
    if (conf->password_file &&
        mg_secretfile_read(conf->password_file, "request_log_db.password_file", MG_SECRET_PASSWORD,
                           MG_DBLOG_PASSWORD_MAX, &d->password, err, sizeof(err)) != MG_OK) {
        MG_LOG(MG_LOG_ERROR, "dblog", "%s", err);
        goto fail;
    }
    if ((d->insert_sql = insert_sql(d->c.table)) == NULL || !alloc_params(d))
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
    pthread_mutex_init(&d->report_mu, NULL);
    mg_thread_cond_init(&d->cond);
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
        pthread_mutex_destroy(&d->report_mu);
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
        mg_secretfile_free(d->password);
        free(d->insert_sql);
        free(d->pmem);
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
    /* also when the writer is idle (len 0): the spool checks its directory is still there */
    mg_err_t rc = mg_spool_append(d->spool, lines, len, &lost);
    if (rc != MG_OK)
        atomic_store(&d->lost_cause, rc == MG_E_IO ? LOST_WRITE : LOST_CAP);
    size_t n = 0;
    for (const char *p = lines, *e = lines + len; len && (p = memchr(p, '\n', (size_t)(e - p)));
         p++)
        n++;
    atomic_fetch_add(&d->spooled, n - lost);
    uint64_t removed = mg_spool_take_removed(d->spool);
    if (removed)
        atomic_store(&d->lost_cause, LOST_REMOVED);
    if (lost + removed)
        atomic_fetch_add(&d->lost, lost + removed);
    report(d, false);
}

void mg_dblog_lost(void *ud, uint64_t records)
{
    mg_dblog_t *d = ud;
    atomic_fetch_add(&d->unspooled, records); /* said by the access log, which dropped them */
}

void mg_dblog_stats(mg_dblog_t *d, mg_dblog_stats_t *out)
{
    out->spooled = atomic_load(&d->spooled);
    out->inserted = atomic_load(&d->inserted);
    out->duplicates = atomic_load(&d->duplicates);
    out->lost = atomic_load(&d->lost) + atomic_load(&d->unspooled);
    out->rejected = atomic_load(&d->rejected);
    out->spool_bytes = mg_spool_bytes(d->spool);
    out->pending_bytes = mg_spool_pending(d->spool);
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
    /* The thread stops inserting after CLOSE_DRAIN_MS, but a call into the client library
     * can wait up to its I/O timeout (10 s) on a MariaDB that hangs: past a grace period the
     * process goes on without it. What it held is in the spool for the next start. */
    if (!mg_thread_join_within(d->thread, CLOSE_DRAIN_MS + CLOSE_GRACE_MS)) {
        MG_LOG(MG_LOG_WARN, "dblog",
               "MariaDB %s:%u did not answer within %d ms of the stop; the %" PRIu64
               " spooled bytes go in at the next start",
               d->c.host, d->c.port, CLOSE_DRAIN_MS + CLOSE_GRACE_MS, mg_spool_pending(d->spool));
        return; /* the thread still uses |d|: the process's exit ends both */
    }
    mg_dblog_stats_t st;
    mg_dblog_stats(d, &st);
    MG_LOG(MG_LOG_INFO, "dblog",
           "closed: %" PRIu64 " records spooled, %" PRIu64 " inserted, %" PRIu64
           " duplicates skipped, %" PRIu64 " lost, %" PRIu64 " rejected; %" PRIu64
           " bytes left in the spool for the next start",
           st.spooled, st.inserted, st.duplicates, st.lost, st.rejected, st.pending_bytes);
    mg_spool_close(d->spool);
    mysql_library_end();
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->mu);
    pthread_mutex_destroy(&d->report_mu);
    mg_secretfile_free(d->password);
    free(d->insert_sql);
    free(d->pmem);
    free(d->rbuf);
    free(d->q);
    free(d->c.host);
    free(d->c.user);
    free(d->c.database);
    free(d->c.table);
    free(d->c.spool_dir);
    free(d);
}
