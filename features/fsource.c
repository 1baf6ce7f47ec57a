/*
 * features/fsource.c - MariaDB threads, Redis write-back, cross-worker coalescing (see
 * fsource.h).
 *
 * DESIGN
 * One mutex guards everything shared: the lookup map (key "app\0user" -> job), the queue of
 * lookups, the queue of writes, the list of jobs kept after completion ("linger") and the
 * sinks' result queues. Threads take lookups before writes, so a bulk load never delays a
 * request's lookup behind it by more than one batch. A job's waiters are (sink, tag) pairs;
 * completing a job appends one result per waiter to its sink's queue and writes one byte to
 * the sink's pipe (a full pipe already holds a wake-up).
 *
 * A PUT or DELETE that MariaDB took is announced to every sink once Redis has it (an eviction:
 * the app and a copy of the users, one node per sink, counted in |pending|): each worker drops
 * its local copies of those users on its own thread, so the workers of this process never
 * serve the old features (or the old "unknown user") after the write's answer. The MariaDB
 * thread waits for the count to reach 0 before the write completes, at most EVICT_WAIT_MS (a
 * worker that left its loop, or one stuck that long, drops them when it gets to them).
 *
 * A thread that fails to connect to MariaDB fails its jobs at once for the next 500 ms instead
 * of blocking each of them for the connect timeout; a broken connection is reopened once per
 * job. Redis write-back failures are counted and logged (rate-limited; a connect or handshake
 * that keeps failing, once per cause), never fatal: the next lookup simply misses Redis again.
 */
#include "features/fsource.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <errmsg.h>
#include <event2/buffer.h>
#include <hiredis/hiredis.h>
#include <mysql.h>

#include "common/dberr.h"
#include "common/log.h"
#include "common/thread.h"
#include "features/rreply.h"

#define NBUCKETS 4096
#define LINGER_MS 1000
#define MAX_QUEUED 100000
#define CONNECT_BACKOFF_MS 500
#define EVICT_WAIT_MS 1000 /* conf/README.md "Admin API" says it */

typedef struct waiter {
    struct waiter *next;
    mg_fsink_t *sink;
    void *tag;
} waiter_t;

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

typedef struct ljob {
    struct ljob *hnext; /* map chain */
    struct ljob *qnext; /* lookup queue while queued, linger list once done */
    const mg_fapp_t *app;
    char *user;
    char *key;
    size_t klen;
    waiter_t *waiters;
    int state;
    mg_fdb_result_t result;
    mg_fval_t *val;
    int64_t done_ms;
} ljob_t;

/* Users a write changed, for every sink to drop from its worker's cache. Under s->lock:
 * |refs| (the writing thread's and one per node) and |pending| (nodes not handled yet). */
typedef struct evict {
    size_t refs, pending;
    const mg_fapp_t *app;
    size_t n;
    const char *users[]; /* n pointers, then the strings they point to */
} evict_t;

typedef struct rnode {
    struct rnode *next;
    void *tag;
    mg_fdb_result_t result;
    mg_fval_t *val;
    evict_t *evict; /* not NULL: an eviction, not a lookup result */
} rnode_t;

struct mg_fsink {
    mg_fsource_t *s;
    mg_fsink_t *next;
    int pipe[2];
    struct event *ev;
    rnode_t *head, *tail; /* under s->lock */
    mg_fsink_fn fn;
    mg_fsink_evict_fn evict;
    void *ud;
};

typedef struct dbthread {
    mg_fsource_t *s;
    pthread_t tid;
    MYSQL *db;
    int64_t db_retry_ms; /* no connect attempt before this */
    redisContext *redis;
    int64_t redis_retry_ms;
    char redis_why[224];   /* why the last connect failed (no connect before redis_retry_ms) */
    mg_log_cause_t rcause; /* the write-back's connect failures, once per cause */
    mg_log_limit_t loglimit;
    unsigned db_errno; /* the last failed query's MariaDB error, 0 when it was the connection */
} dbthread_t;

/* A FIFO of write jobs, linked by their _next (the writes to run; the stale Redis copies). */
typedef struct wqueue {
    mg_fwrite_t *head, *tail;
} wqueue_t;

static void wq_push(wqueue_t *q, mg_fwrite_t *w)
{
    w->_next = NULL;
    if (q->tail)
        q->tail->_next = w;
    else
        q->head = w;
    q->tail = w;
}

/* Puts |w| back first (a job taken with wq_pop that did not go through). */
static void wq_push_front(wqueue_t *q, mg_fwrite_t *w)
{
    w->_next = q->head;
    q->head = w;
    if (q->tail == NULL)
        q->tail = w;
}

static mg_fwrite_t *wq_pop(wqueue_t *q)
{
    mg_fwrite_t *w = q->head;
    if (w && (q->head = w->_next) == NULL)
        q->tail = NULL;
    return w;
}

struct mg_fsource {
    const mg_fconf_t *conf;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_cond_t lookup_done; /* broadcast when a running lookup finishes */
    pthread_cond_t evicted;     /* broadcast when an eviction's last node was handled */
    ljob_t *map[NBUCKETS];
    ljob_t *lq_head, *lq_tail;         /* queued lookups */
    ljob_t *linger_head, *linger_tail; /* done lookups, oldest first */
    wqueue_t wq;
    /* users whose Redis copies are older than MariaDB, whose keys are dropped once Redis
     * answers again (stale_add): jobs of their own, taken when due at |stale_at_ms| */
    wqueue_t stale;
    size_t nstale;       /* users in them */
    int64_t stale_at_ms; /* monotonic ms of the next attempt */
    size_t queued;
    mg_fsink_t *sinks;
    bool stopping, stopped;
    dbthread_t *threads;
    unsigned nthreads, started;
    mg_fmetrics_t *wm; /* per worker */
    unsigned nworkers;
    mg_fdb_metrics_t dbm;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t key_hash(const char *k, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h & (NBUCKETS - 1);
}

/* ---------- sinks ---------- */

/* Under s->lock: one node of |e| was handled (or dropped with its sink). */
static void evict_done(mg_fsource_t *s, evict_t *e)
{
    if (--e->pending == 0)
        pthread_cond_broadcast(&s->evicted);
    if (--e->refs == 0)
        free(e);
}

static void on_sink(evutil_socket_t fd, short what, void *arg)
{
    mg_fsink_t *k = arg;
    char buf[256];
    while (read(fd, buf, sizeof(buf)) > 0) /* wake-ups carry no data */
        ;
    pthread_mutex_lock(&k->s->lock);
    rnode_t *r = k->head;
    k->head = k->tail = NULL;
    pthread_mutex_unlock(&k->s->lock);
    while (r) {
        rnode_t *next = r->next;
        if (r->evict) { /* in queue order: after the lookup results posted before the write */
            k->evict(k->ud, r->evict->app, r->evict->users, r->evict->n);
            pthread_mutex_lock(&k->s->lock);
            evict_done(k->s, r->evict);
            pthread_mutex_unlock(&k->s->lock);
        } else {
            k->fn(k->ud, r->tag, r->result, r->val);
            mg_fval_unref(r->val);
        }
        free(r);
        r = next;
    }
}

mg_fsink_t *mg_fsink_new(mg_fsource_t *s, struct event_base *base, mg_fsink_fn fn,
                         mg_fsink_evict_fn evict, void *ud)
{
    mg_fsink_t *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    k->s = s;
    k->fn = fn;
    k->evict = evict;
    k->ud = ud;
    if (pipe2(k->pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        free(k);
        return NULL;
    }
    k->ev = event_new(base, k->pipe[0], EV_READ | EV_PERSIST, on_sink, k);
    if (k->ev == NULL || event_add(k->ev, NULL) != 0) {
        if (k->ev)
            event_free(k->ev);
        close(k->pipe[0]);
        close(k->pipe[1]);
        free(k);
        return NULL;
    }
    pthread_mutex_lock(&s->lock);
    k->next = s->sinks;
    s->sinks = k;
    pthread_mutex_unlock(&s->lock);
    return k;
}

void mg_fsink_free(mg_fsink_t *k)
{
    if (k == NULL)
        return;
    mg_fsource_t *s = k->s;
    pthread_mutex_lock(&s->lock);
    for (mg_fsink_t **pp = &s->sinks; *pp; pp = &(*pp)->next)
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    for (size_t b = 0; b < NBUCKETS; b++) /* shutdown only: a full scan is fine */
        for (ljob_t *j = s->map[b]; j; j = j->hnext)
            for (waiter_t **wp = &j->waiters; *wp;) {
                if ((*wp)->sink == k) {
                    waiter_t *w = *wp;
                    *wp = w->next;
                    free(w);
                } else {
                    wp = &(*wp)->next;
                }
            }
    rnode_t *r = k->head;
    k->head = k->tail = NULL;
    for (rnode_t *x = r; x; x = x->next) /* a writer may wait for them: it need not */
        if (x->evict)
            evict_done(s, x->evict);
    pthread_mutex_unlock(&s->lock);
    while (r) {
        rnode_t *next = r->next;
        mg_fval_unref(r->val);
        free(r);
        r = next;
    }
    event_free(k->ev);
    close(k->pipe[0]);
    close(k->pipe[1]);
    free(k);
}

/* Under s->lock: queues a lookup result, or with |evict| an eviction, to |k|. False when out
 * of memory. */
static bool post_node(mg_fsink_t *k, void *tag, mg_fdb_result_t result, mg_fval_t *val,
                      evict_t *evict)
{
    rnode_t *r = malloc(sizeof(*r));
    if (r == NULL)
        return false;
    r->next = NULL;
    r->tag = tag;
    r->result = result;
    r->val = val;
    r->evict = evict;
    if (val)
        mg_fval_ref(val);
    if (k->tail)
        k->tail->next = r;
    else
        k->head = r;
    k->tail = r;
    ssize_t n = write(k->pipe[1], "!", 1);
    (void)n;
    return true;
}

/* Under s->lock. When out of memory the worker's request times out: the budget bounds it. */
static void post(mg_fsink_t *k, void *tag, mg_fdb_result_t result, mg_fval_t *val)
{
    (void)post_node(k, tag, result, val, NULL);
}

/* ---------- the lookup map ---------- */

static ljob_t **map_slot(mg_fsource_t *s, const char *key, size_t klen)
{
    ljob_t **pp = &s->map[key_hash(key, klen)];
    while (*pp && !((*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void job_free(ljob_t *j)
{
    while (j->waiters) {
        waiter_t *w = j->waiters;
        j->waiters = w->next;
        free(w);
    }
    mg_fval_unref(j->val);
    free(j->key);
    free(j);
}

/* Under s->lock: removes the job from the map (it is on no queue). */
static void map_remove(mg_fsource_t *s, ljob_t *j)
{
    ljob_t **pp = map_slot(s, j->key, j->klen);
    if (*pp == j)
        *pp = j->hnext;
}

/* Under s->lock: drops kept results older than LINGER_MS. */
static void purge_linger(mg_fsource_t *s, int64_t now)
{
    while (s->linger_head && now - s->linger_head->done_ms >= LINGER_MS) {
        ljob_t *j = s->linger_head;
        s->linger_head = j->qnext;
        if (s->linger_head == NULL)
            s->linger_tail = NULL;
        map_remove(s, j);
        job_free(j);
    }
}

/* Under s->lock: forgets the kept result of |key| (it was just written). */
static void forget(mg_fsource_t *s, const char *key, size_t klen)
{
    ljob_t *j = *map_slot(s, key, klen);
    if (j == NULL || j->state != JOB_DONE)
        return;
    map_remove(s, j);
    ljob_t **pp = &s->linger_head, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (*pp) {
        *pp = j->qnext;
        if (s->linger_tail == j)
            s->linger_tail = prev;
    }
    job_free(j);
}

static char *make_key(const mg_fapp_t *app, const char *user, size_t *klen)
{
    size_t al = strlen(app->name), ul = strlen(user);
    char *k = malloc(al + 1 + ul + 1);
    if (k) {
        memcpy(k, app->name, al + 1);
        memcpy(k + al + 1, user, ul + 1);
    }
    *klen = al + 1 + ul;
    return k;
}

mg_err_t mg_fsource_lookup(mg_fsource_t *s, mg_fsink_t *k, const mg_fapp_t *app, const char *user,
                           void *tag)
{
    if (!s->conf->mariadb.on)
        return MG_E_UPSTREAM;
    size_t klen;
    char *key = make_key(app, user, &klen);
    waiter_t *w = malloc(sizeof(*w));
    if (key == NULL || w == NULL) {
        free(key);
        free(w);
        return MG_E_NOMEM;
    }
    w->sink = k;
    w->tag = tag;
    w->next = NULL;
    mg_err_t err = MG_OK;
    pthread_mutex_lock(&s->lock);
    purge_linger(s, now_ms());
    ljob_t *j = *map_slot(s, key, klen);
    if (s->stopping) {
        err = MG_E_UPSTREAM;
    } else if (j && j->state == JOB_DONE) { /* answered moments ago */
        post(k, tag, j->result, j->val);
        MG_FM_INC(s->dbm.coalesced);
    } else if (j) { /* queued or running: join it */
        w->next = j->waiters;
        j->waiters = w;
        w = NULL;
        MG_FM_INC(s->dbm.coalesced);
    } else if (s->queued >= MAX_QUEUED) {
        err = MG_E_LIMIT;
    } else if ((j = calloc(1, sizeof(*j))) == NULL) {
        err = MG_E_NOMEM;
    } else {
        j->app = app;
        j->key = key;
        j->klen = klen;
        j->user = key + strlen(app->name) + 1;
        key = NULL;
        j->waiters = w;
        w = NULL;
        j->state = JOB_QUEUED;
        ljob_t **pp = map_slot(s, j->key, j->klen);
        *pp = j;
        if (s->lq_tail)
            s->lq_tail->qnext = j;
        else
            s->lq_head = j;
        s->lq_tail = j;
        s->queued++;
        pthread_cond_signal(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    free(key);
    free(w);
    return err;
}

/* ---------- MariaDB ---------- */

static void db_close(dbthread_t *t)
{
    if (t->db)
        mysql_close(t->db);
    t->db = NULL;
}

/* Redis keys tell user ids apart by case; a case-insensitive collation (utf8mb4's default)
 * would make "Ann" and "ann" one row, each write replacing the other's features. Said once per
 * process: the fix is the operator's (an ALTER TABLE). */
static void check_collation(MYSQL *db, const char *table)
{
    static atomic_bool said;
    char sql[200];
    /* SHOW, not a SELECT on information_schema: lookups are the only SELECTs (tests count them) */
    snprintf(sql, sizeof(sql), "SHOW FULL COLUMNS FROM `%s`", table);
    MYSQL_RES *r = NULL;
    if (mysql_real_query(db, sql, strlen(sql)) != 0 || (r = mysql_store_result(db)) == NULL)
        return;
    MYSQL_ROW row;
    while ((row = mysql_fetch_row(r)) != NULL && mysql_num_fields(r) >= 3) {
        const char *name = row[0], *coll = row[2]; /* Field, Type, Collation, ... */
        size_t n = coll ? strlen(coll) : 0;
        /* case-sensitive: binary (utf8mb4_bin) or "case sensitive" (utf8mb4_uca1400_as_cs) */
        bool cs = (n >= 4 && strcmp(coll + n - 4, "_bin") == 0) ||
                  (n >= 3 && strcmp(coll + n - 3, "_cs") == 0);
        if (name == NULL || (strcmp(name, "app") != 0 && strcmp(name, "user_id") != 0) || n == 0 ||
            cs)
            continue;
        if (!atomic_exchange(&said, true))
            MG_LOG(MG_LOG_ERROR, "features",
                   "MariaDB table %s: column %s has the case-insensitive collation %s, so user "
                   "ids that differ only in case share one row (each write replaces the other's "
                   "features); run ALTER TABLE `%s` CONVERT TO CHARACTER SET utf8mb4 COLLATE "
                   "utf8mb4_bin",
                   table, name, coll, table);
        break;
    }
    mysql_free_result(r);
}

/* Connects (and creates the table when missing) unless a recent attempt failed. */
static bool db_ready(dbthread_t *t, char *why, size_t cap)
{
    const mg_fconf_t *c = t->s->conf;
    if (t->db)
        return true;
    if (now_ms() < t->db_retry_ms) {
        snprintf(why, cap, "MariaDB %s:%u is unreachable (retrying shortly)", c->mariadb.host,
                 c->mariadb.port);
        return false;
    }
    MYSQL *db = mysql_init(NULL);
    if (db == NULL) {
        snprintf(why, cap, "out of memory");
        return false;
    }
    unsigned to = c->mariadb.timeout_s;
    mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &to);
    mysql_options(db, MYSQL_OPT_READ_TIMEOUT, &to);
    mysql_options(db, MYSQL_OPT_WRITE_TIMEOUT, &to);
    mysql_options(db, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (mysql_real_connect(db, c->mariadb.host, c->mariadb.user, c->mariadb.password,
                           c->mariadb.database, c->mariadb.port, NULL, 0) == NULL) {
        snprintf(why, cap, "cannot connect to MariaDB %s:%u as %s, database %s (%s)",
                 c->mariadb.host, c->mariadb.port, c->mariadb.user, c->mariadb.database,
                 mysql_error(db));
        mysql_close(db);
        t->db_retry_ms = now_ms() + CONNECT_BACKOFF_MS;
        unsigned long skipped;
        if (mg_log_limit_pass(&t->loglimit, &skipped))
            MG_LOG(MG_LOG_WARN, "features", "%s (%lu similar suppressed)", why, skipped);
        return false;
    }
    char sql[600];
    snprintf(sql, sizeof(sql),
             "CREATE TABLE IF NOT EXISTS `%s` (app VARCHAR(64) NOT NULL, user_id VARCHAR(128) "
             "NOT NULL, features LONGTEXT NOT NULL CHECK (JSON_VALID(features)), updated_at "
             "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), "
             "PRIMARY KEY (app, user_id)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 "
             "COLLATE=utf8mb4_bin",
             c->mariadb.table);
    if (mysql_real_query(db, sql, strlen(sql)) != 0)
        MG_LOG(MG_LOG_WARN, "features", "MariaDB: cannot create table %s (%s); assuming it exists",
               c->mariadb.table, mysql_error(db));
    check_collation(db, c->mariadb.table);
    t->db = db;
    return true;
}

/* Runs |sql|; reconnects and retries once when the connection was lost (server restarted).
 * On failure, *|maybe_done| (when not NULL) says whether the statement may have been carried
 * out all the same: it was sent and the connection was lost before the answer (a server that
 * hangs past mariadb.timeout_s, then resumes, has done it). */
static bool db_query(dbthread_t *t, const char *sql, size_t len, char *why, size_t cap,
                     bool *maybe_done)
{
    t->db_errno = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!db_ready(t, why, cap))
            return false;
        if (mysql_real_query(t->db, sql, len) == 0)
            return true;
        unsigned e = mysql_errno(t->db);
        t->db_errno = e;
        snprintf(why, cap, "MariaDB query failed: %s", mysql_error(t->db));
        bool lost = e == CR_SERVER_GONE_ERROR || e == CR_SERVER_LOST || e == 1927 /* killed */;
        /* "gone away" is a send that failed: the server never had the whole statement */
        if (lost && e != CR_SERVER_GONE_ERROR && maybe_done)
            *maybe_done = true;
        db_close(t);
        if (!lost)
            return false;
    }
    return false;
}

/* Appends 'escaped' to |b|. */
static void add_quoted(dbthread_t *t, struct evbuffer *b, const char *s)
{
    size_t n = strlen(s);
    char *tmp = malloc(2 * n + 3);
    if (tmp == NULL)
        return;
    tmp[0] = '\'';
    unsigned long m = mysql_real_escape_string(t->db, tmp + 1, s, n);
    tmp[m + 1] = '\'';
    evbuffer_add(b, tmp, m + 2);
    free(tmp);
}

/* ---------- Redis write-back ---------- */

/* Connects the write-back connection unless a recent attempt failed. The handshake's replies
 * are read: a refused AUTH (a wrong password) or SELECT fails the connect like a refused TCP
 * connect, and is logged once per cause with Redis's message (never the password); for
 * CONNECT_BACKOFF_MS, writes then fail at once with the same cause. False with the reason in
 * |why| (|whylen| bytes). */
static bool redis_ready(dbthread_t *t, char *why, size_t whylen)
{
    const mg_fconf_t *c = t->s->conf;
    if (t->redis)
        return true;
    if (!c->redis.on) {
        snprintf(why, whylen, "no Redis configured");
        return false;
    }
    if (now_ms() < t->redis_retry_ms) {
        snprintf(why, whylen, "%s (retrying shortly)", t->redis_why);
        return false;
    }
    struct timeval tv = {c->redis.connect_timeout_ms / 1000,
                         (c->redis.connect_timeout_ms % 1000) * 1000};
    redisContext *r = redisConnectWithTimeout(c->redis.host, (int)c->redis.port, tv);
    char cause[192];
    if (r == NULL || r->err) {
        snprintf(cause, sizeof(cause), "cannot connect (%s)", r ? r->errstr : "out of memory");
    } else {
        struct timeval reply = {c->redis.reply_timeout_ms / 1000,
                                (c->redis.reply_timeout_ms % 1000) * 1000};
        redisSetTimeout(r, reply);
        const char *step = c->redis.password ? "AUTH" : "SELECT";
        redisReply *rep = c->redis.password ? redisCommand(r, "AUTH %s", c->redis.password)
                                            : redisCommand(r, "SELECT %u", c->redis.db);
        if (rep && rep->type != REDIS_REPLY_ERROR && c->redis.password) {
            freeReplyObject(rep);
            step = "SELECT";
            rep = redisCommand(r, "SELECT %u", c->redis.db);
        }
        if (rep && rep->type != REDIS_REPLY_ERROR) {
            freeReplyObject(rep);
            t->redis = r;
            if (t->redis_why[0])
                MG_LOG(MG_LOG_INFO, "features", "write-back: Redis %s:%u: connected", c->redis.host,
                       c->redis.port);
            t->redis_why[0] = '\0';
            mg_log_cause_reset(&t->rcause);
            return true;
        }
        char msg[160];
        if (rep)
            mg_rreply_text(rep, msg, sizeof(msg));
        snprintf(cause, sizeof(cause), "%s %s (%s)", step, rep ? "refused" : "got no reply",
                 rep            ? msg
                 : r->errstr[0] ? r->errstr
                                : "closed");
        freeReplyObject(rep);
    }
    if (r)
        redisFree(r);
    t->redis_retry_ms = now_ms() + CONNECT_BACKOFF_MS;
    snprintf(t->redis_why, sizeof(t->redis_why), "Redis %s:%u: %s", c->redis.host, c->redis.port,
             cause);
    snprintf(why, whylen, "%s", t->redis_why);
    unsigned long repeats;
    if (!mg_log_cause_pass(&t->rcause, cause, 60, &repeats))
        return false;
    char again[64];
    MG_LOG(MG_LOG_WARN, "features",
           "write-back: %s%s; features read from MariaDB and admin writes do not reach Redis%s",
           t->redis_why, mg_rreply_hint(cause), mg_log_repeats(again, sizeof(again), repeats));
    return false;
}

typedef struct cmd {
    const char **argv;
    size_t *lens;
    int argc, cap;
} cmd_t;

static void cmd_add(cmd_t *c, const char *s, size_t len)
{
    if (c->argc == c->cap) {
        int ncap = c->cap ? c->cap * 2 : 16;
        const char **na = realloc(c->argv, sizeof(*na) * (size_t)ncap);
        size_t *nl = na ? realloc(c->lens, sizeof(*nl) * (size_t)ncap) : NULL;
        if (na)
            c->argv = na;
        if (nl == NULL)
            return;
        c->lens = nl;
        c->cap = ncap;
    }
    c->argv[c->argc] = s;
    c->lens[c->argc++] = len;
}

#define CMD_S(c, s) cmd_add((c), (s), strlen(s))

/* The Redis key of (app, user)'s marker (|g| NULL) or of its group |g| (conf/README.md
 * "features"), NUL-terminated; its length. The app (<= 64), user (<= 128) and group (<= 32)
 * names fit. */
#define KEY_BYTES 256
static size_t user_key(char out[KEY_BYTES], const mg_fapp_t *app, const char *user,
                       const mg_fgroup_t *g)
{
    int n = g ? snprintf(out, KEY_BYTES, "mgf:v1:%s:%s:%s", app->name, user, g->name)
              : snprintf(out, KEY_BYTES, "mgf:v1:%s:%s", app->name, user);
    return n < KEY_BYTES ? (size_t)n : KEY_BYTES - 1;
}

/* Appends to the pipeline the commands that make Redis hold |doc| (normalized; NULL: the user
 * is unknown) for (app, user); returns how many replies to read. Layout: conf/README.md
 * "features". A user without features (NULL, or a |doc| without groups: empty ones were left
 * out) gets the marker 0, for redis.negative_ttl_s when MariaDB has no row, else for ttl_s.
 * With |forget|, every key of the user goes, the marker too: the next lookup reads MariaDB. */
static int append_user(redisContext *r, const mg_fconf_t *c, const mg_fapp_t *app, const char *user,
                       const json_t *doc, bool forget)
{
    char base[KEY_BYTES], key[KEY_BYTES], ttl[16];
    user_key(base, app, user, NULL);
    int n = 0;
    redisAppendCommand(r, "MULTI");
    n++;
    for (size_t i = 0; i < app->ngroups; i++) {
        const mg_fgroup_t *g = &app->groups[i];
        user_key(key, app, user, g);
        redisAppendCommand(r, "DEL %s", key);
        n++;
        const json_t *v = doc ? json_object_get(doc, g->name) : NULL;
        if (v == NULL)
            continue;
        cmd_t cmd = {0};
        char *json = NULL;
        if (g->type == MG_FGROUP_HASH) {
            CMD_S(&cmd, "HSET");
            CMD_S(&cmd, key);
            const char *f;
            json_t *x;
            json_object_foreach((json_t *)v, f, x)
            {
                CMD_S(&cmd, f);
                cmd_add(&cmd, json_string_value(x), json_string_length(x));
            }
        } else if (g->type == MG_FGROUP_LIST) {
            CMD_S(&cmd, "RPUSH"); /* the array is newest first; RPUSH keeps that order */
            CMD_S(&cmd, key);
            for (size_t k = 0; k < json_array_size(v); k++)
                cmd_add(&cmd, json_string_value(json_array_get(v, k)),
                        json_string_length(json_array_get(v, k)));
        } else {
            json =
                json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII | JSON_SORT_KEYS);
            CMD_S(&cmd, "SET");
            CMD_S(&cmd, key);
            if (json)
                CMD_S(&cmd, json);
        }
        if (cmd.argc >= 3 && cmd.argv && cmd.lens) {
            redisAppendCommandArgv(r, cmd.argc, cmd.argv, cmd.lens);
            redisAppendCommand(r, "EXPIRE %s %u", key, c->redis.ttl_s);
            n += 2;
        }
        free(json);
        free(cmd.argv);
        free(cmd.lens);
    }
    snprintf(ttl, sizeof(ttl), "%u", doc ? c->redis.ttl_s : c->redis.negative_ttl_s);
    if (forget)
        redisAppendCommand(r, "DEL %s", base);
    else
        redisAppendCommand(r, "SET %s %s EX %s", base, json_object_size(doc) > 0 ? "1" : "0", ttl);
    redisAppendCommand(r, "EXEC");
    return n + 2;
}

/* Counts a write-back that did not happen and says why (|what|; rate-limited). */
static void writeback_failed(dbthread_t *t, const char *what)
{
    MG_FM_INC(t->s->dbm.writeback_error);
    unsigned long skipped;
    if (mg_log_limit_pass(&t->loglimit, &skipped))
        MG_LOG(MG_LOG_WARN, "features",
               "write-back %s; lookups will miss Redis until it works (%lu similar suppressed)",
               what, skipped);
}

/* Whether a failed read or write on |r| (|e|: its errno) means Redis closed the connection
 * (EOF, reset, broken pipe): not a timeout, and not an error reply. */
static bool conn_was_closed(const redisContext *r, int e)
{
    return r->err == REDIS_ERR_EOF || (r->err == REDIS_ERR_IO && e != EAGAIN && e != EWOULDBLOCK);
}

/* Why the write-back connection failed, in words: hiredis gives a reply that did not come within
 * its timeout as strerror(EAGAIN), "Resource temporarily unavailable". */
static const char *redis_failure(const dbthread_t *t, char *buf, size_t cap)
{
    const redisContext *r = t->redis;
    if (r->err == REDIS_ERR_IO && strcmp(r->errstr, strerror(EAGAIN)) == 0) {
        snprintf(buf, cap, "no reply within redis.reply_timeout_ms (%u ms)",
                 t->s->conf->redis.reply_timeout_ms);
        return buf;
    }
    return r->errstr;
}

/* Before a lookup reads MariaDB: WATCH the user's keys (the marker and every group key) on
 * the write-back connection. A write of any of them that lands between now and the
 * write-back's EXEC (an admin write of any gateway, a pipeline's, another lookup's write-back;
 * an expiry or eviction too) makes Redis drop the write-back: a copy read before that write
 * never replaces it. False with the reason in |why| when Redis cannot take the WATCH (the
 * caller counts the write-back as failed when it would have come). A connection that Redis
 * closed since its last use is replaced once, as in redis_write. */
static bool redis_watch(dbthread_t *t, const mg_fapp_t *app, const char *user, char *why,
                        size_t whylen)
{
    mg_fsource_t *s = t->s;
    char keys[1 + MG_FCONF_MAX_GROUPS][KEY_BYTES]; /* fconf.c: at most that many groups */
    const char *argv[2 + MG_FCONF_MAX_GROUPS] = {"WATCH"};
    size_t lens[2 + MG_FCONF_MAX_GROUPS] = {5};
    int argc = 1;
    for (size_t i = 0; i <= app->ngroups; i++, argc++) {
        lens[argc] = user_key(keys[i], app, user, i ? &app->groups[i - 1] : NULL);
        argv[argc] = keys[i];
    }
    for (int attempt = 0;; attempt++) {
        bool reused = t->redis != NULL;
        if (!redis_ready(t, why, whylen)) /* logged there, once per cause */
            return false;
        redisReply *rep = redisCommandArgv(t->redis, argc, argv, lens);
        if (rep && rep->type == REDIS_REPLY_STATUS) {
            freeReplyObject(rep);
            return true;
        }
        bool closed = rep == NULL && conn_was_closed(t->redis, errno);
        char err[160], failed[96];
        if (rep)
            mg_rreply_text(rep, err, sizeof(err));
        else
            snprintf(err, sizeof(err), "%s", redis_failure(t, failed, sizeof(failed)));
        freeReplyObject(rep);
        redisFree(t->redis);
        t->redis = NULL;
        if (closed && reused && attempt == 0)
            continue;
        snprintf(why, whylen, "skipped: Redis %s:%u: WATCH failed (%s)", s->conf->redis.host,
                 s->conf->redis.port, err);
        return false;
    }
}

/* Ends a WATCH that no write-back follows (the lookup failed), so that it cannot abort the
 * connection's next transaction; a connection that does not answer is dropped instead. */
static void redis_unwatch(dbthread_t *t)
{
    redisReply *rep = t->redis ? redisCommand(t->redis, "UNWATCH") : NULL;
    if (t->redis && (rep == NULL || rep->type != REDIS_REPLY_STATUS)) {
        redisFree(t->redis);
        t->redis = NULL;
    }
    freeReplyObject(rep);
}

/* Sends the commands for |n| users and reads every reply; false when Redis failed, then with
 * *conn_closed when Redis closed the connection (EOF, reset, broken pipe: not a timeout, and
 * not an error reply). */
static bool redis_write_once(dbthread_t *t, const mg_fapp_t *app, char *const *users,
                             json_t *const *docs, size_t n, bool forget, bool *conn_closed,
                             bool *aborted, char *err, size_t errlen)
{
    int replies = 0;
    for (size_t i = 0; i < n; i++)
        replies += append_user(t->redis, t->s->conf, app, users[i], docs ? docs[i] : NULL, forget);
    bool ok = true;
    *conn_closed = false;
    *aborted = false;
    for (int i = 0; i < replies; i++) {
        void *rep = NULL;
        if (redisGetReply(t->redis, &rep) != REDIS_OK) {
            *conn_closed = conn_was_closed(t->redis, errno);
            return false;
        }
        if (((redisReply *)rep)->type == REDIS_REPLY_ERROR && ok) {
            ok = false; /* the first error says why; the others follow from it (EXECABORT) */
            mg_rreply_text(rep, err, errlen);
        }
        if (((redisReply *)rep)->type == REDIS_REPLY_NIL) /* only EXEC's can be: WATCH fired */
            *aborted = true;
        freeReplyObject(rep);
    }
    return ok;
}

/* Writes |n| users to Redis (which is configured) in one round trip; false with |why| when it
 * failed. A connection that was open already may have been closed by Redis since its last use
 * (its idle timeout, a restart, CLIENT KILL): then the write is sent again once on a new one -
 * each user's commands are one MULTI/EXEC of idempotent commands - rather than leaving Redis
 * with the old features of a user who was just written. A timeout is not retried: the write
 * would only wait twice as long. A |watched| write (a lookup's write-back, see redis_watch)
 * is not sent again either, since its WATCH went with the connection; when Redis drops it
 * because the user was written meanwhile, that is no failure (counted as superseded). With
 * |forget| (and no |docs|), every key of the users is deleted instead (append_user). */
static bool redis_write(dbthread_t *t, const mg_fapp_t *app, char *const *users,
                        json_t *const *docs, size_t n, bool forget, bool watched, char *why,
                        size_t whylen)
{
    mg_fsource_t *s = t->s;
    for (int attempt = 0;; attempt++) {
        bool reused = t->redis != NULL;
        if (!redis_ready(t, why, whylen)) { /* logged there, once per cause */
            MG_FM_INC(s->dbm.writeback_error);
            return false;
        }
        bool closed, aborted;
        char err[160] = "";
        bool ok =
            redis_write_once(t, app, users, docs, n, forget, &closed, &aborted, err, sizeof(err));
        if (ok && aborted && !watched) { /* no WATCH of ours may be left (redis_unwatch) */
            snprintf(err, sizeof(err), "EXEC aborted by a WATCH left on the connection");
            ok = false;
        }
        if (ok) {
            if (aborted)
                MG_FM_INC(s->dbm.writeback_superseded);
            else
                MG_FM_INC(s->dbm.writeback_ok);
            return true;
        }
        char failed[96];
        snprintf(why, whylen, "Redis %s:%u: %s", s->conf->redis.host, s->conf->redis.port,
                 t->redis->err ? redis_failure(t, failed, sizeof(failed))
                 : err[0]      ? err
                               : "error reply");
        redisFree(t->redis); /* replies may be out of step now */
        t->redis = NULL;
        if (closed && reused && attempt == 0 && !watched)
            continue;
        char what[600];
        snprintf(what, sizeof(what), "failed (%s)", why);
        writeback_failed(t, what);
        return false;
    }
}

/* ---------- jobs ---------- */

static void run_lookup(dbthread_t *t, ljob_t *j)
{
    mg_fsource_t *s = t->s;
    char why[512];
    MG_FM_INC(s->dbm.lookups);
    j->result = MG_FDB_ERROR;
    struct evbuffer *q = evbuffer_new();
    if (q == NULL || !db_ready(t, why, sizeof(why))) {
        MG_FM_INC(s->dbm.error);
        if (q)
            evbuffer_free(q);
        return;
    }
    evbuffer_add_printf(q, "SELECT features FROM `%s` WHERE app=", s->conf->mariadb.table);
    add_quoted(t, q, j->app->name);
    evbuffer_add_printf(q, " AND user_id=");
    add_quoted(t, q, j->user);
    /* before the read: a write of the user from now on wins over this copy in Redis */
    char watch_why[512] = "";
    bool watched =
        s->conf->redis.on && redis_watch(t, j->app, j->user, watch_why, sizeof(watch_why));
    size_t len = evbuffer_get_length(q);
    bool ok = db_query(t, (const char *)evbuffer_pullup(q, -1), len, why, sizeof(why), NULL);
    evbuffer_free(q);
    MYSQL_RES *res = ok ? mysql_store_result(t->db) : NULL;
    if (res == NULL) {
        MG_FM_INC(s->dbm.error);
        unsigned long skipped;
        if (mg_log_limit_pass(&t->loglimit, &skipped))
            MG_LOG(MG_LOG_WARN, "features", "lookup of %s/%s: %s (%lu similar suppressed)",
                   j->app->name, j->user, ok ? mysql_error(t->db) : why, skipped);
        if (watched)
            redis_unwatch(t);
        return;
    }
    MYSQL_ROW row = mysql_fetch_row(res);
    unsigned long *lens = row ? mysql_fetch_lengths(res) : NULL;
    json_t *doc = NULL;
    if (row && row[0]) {
        json_error_t jerr;
        json_t *raw = json_loadb(row[0], lens[0], 0, &jerr);
        doc = raw ? mg_fval_normalize(j->app, raw, false, why, sizeof(why)) : NULL;
        json_decref(raw);
        if (doc == NULL)
            MG_LOG(MG_LOG_WARN, "features",
                   "%s/%s: stored features are not a JSON object; "
                   "treated as no features",
                   j->app->name, j->user);
    }
    mysql_free_result(res);
    if (doc && json_object_size(doc) > 0) {
        j->val = mg_fval_from_json(doc);
        j->result = j->val ? MG_FDB_HIT : MG_FDB_ERROR;
        MG_FM_INC(s->dbm.hit);
    } else { /* no row, or one whose groups are all empty ({}): the user has no features */
        j->result = MG_FDB_MISS;
        MG_FM_INC(s->dbm.miss);
    }
    /* cache-aside: Redis first, so that the next request of any worker finds it there */
    /* a failure is logged by redis_write (rate-limited); the lookup's answer stands */
    if (j->result != MG_FDB_ERROR && watched)
        redis_write(t, j->app, &j->user, doc ? &doc : NULL, 1, false, true, why, sizeof(why));
    else if (watched)
        redis_unwatch(t);
    else if (j->result != MG_FDB_ERROR && s->conf->redis.on)
        writeback_failed(t, watch_why); /* the WATCH failed: no write-back */
    json_decref(doc);
}

/* Under s->lock: delivers |j|'s result and keeps it (or drops it, on error). */
static void finish_lookup(mg_fsource_t *s, ljob_t *j)
{
    pthread_cond_broadcast(&s->lookup_done); /* a write may wait for it (run_write) */
    for (waiter_t *w = j->waiters; w; w = w->next)
        post(w->sink, w->tag, j->result, j->val);
    while (j->waiters) {
        waiter_t *w = j->waiters;
        j->waiters = w->next;
        free(w);
    }
    if (j->result == MG_FDB_ERROR) { /* errors are not remembered */
        map_remove(s, j);
        job_free(j);
        return;
    }
    j->state = JOB_DONE;
    j->done_ms = now_ms();
    j->qnext = NULL;
    if (s->linger_tail)
        s->linger_tail->qnext = j;
    else
        s->linger_head = j;
    s->linger_tail = j;
}

/* An eviction of |w|'s users (copied: a worker may handle it after |w| completed) with the
 * writing thread's reference; NULL when out of memory. */
static evict_t *evict_new(const mg_fwrite_t *w)
{
    size_t bytes = sizeof(evict_t) + w->n * sizeof(char *);
    for (size_t i = 0; i < w->n; i++)
        bytes += strlen(w->users[i]) + 1;
    evict_t *e = malloc(bytes);
    if (e == NULL)
        return NULL;
    e->refs = 1;
    e->pending = 0;
    e->app = w->app;
    e->n = w->n;
    char *p = (char *)&e->users[w->n];
    for (size_t i = 0; i < w->n; i++) {
        size_t len = strlen(w->users[i]) + 1;
        e->users[i] = memcpy(p, w->users[i], len);
        p += len;
    }
    return e;
}

/* Has every worker drop its local copies of |w|'s users, and waits (at most EVICT_WAIT_MS)
 * until they all did, so that the write's answer comes after: a request the caller sends
 * then reads the new features on any worker of this process. Other processes are not told
 * (conf/README.md "Admin API": their copies expire). */
static void evict_everywhere(dbthread_t *t, const mg_fwrite_t *w)
{
    mg_fsource_t *s = t->s;
    evict_t *e = evict_new(w);
    bool lost = e == NULL;
    pthread_mutex_lock(&s->lock);
    for (mg_fsink_t *k = s->sinks; e && k; k = k->next)
        if (post_node(k, NULL, MG_FDB_MISS, NULL, e)) {
            e->refs++;
            e->pending++;
        } else {
            lost = true;
        }
    struct timespec until = mg_thread_deadline(CLOCK_MONOTONIC, EVICT_WAIT_MS);
    int rc = 0;
    while (e && e->pending && !s->stopping && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&s->evicted, &s->lock, &until);
    bool late = e && e->pending && !s->stopping; /* stopping: nobody will ask any more */
    if (e && --e->refs == 0)
        free(e);
    pthread_mutex_unlock(&s->lock);
    unsigned long skipped;
    if (!(lost || late) || !mg_log_limit_pass(&t->loglimit, &skipped))
        return;
    if (lost)
        MG_LOG(MG_LOG_WARN, "features",
               "write of %zu user(s) of app %s: out of memory telling the workers to drop their "
               "cached copies; they serve them until they expire (features.local) (%lu similar "
               "suppressed)",
               w->n, w->app->name, skipped);
    else
        MG_LOG(MG_LOG_WARN, "features",
               "write of %zu user(s) of app %s: a worker did not drop its cached copies within "
               "%d ms (busy or stopping); answered anyway, it drops them when it gets to it "
               "(%lu similar suppressed)",
               w->n, w->app->name, EVICT_WAIT_MS, skipped);
}

/* A kept lookup result of |w|'s users is outdated now. A lookup still running may have read
 * the row before this write: it writes its copy back to Redis before it finishes, so wait for
 * it, or that old copy would land after ours and stay for redis.ttl_s. */
static void forget_lookups(mg_fsource_t *s, const mg_fwrite_t *w)
{
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < w->n; i++) {
        size_t klen;
        char *key = make_key(w->app, w->users[i], &klen);
        if (key == NULL)
            continue;
        ljob_t *j;
        while ((j = *map_slot(s, key, klen)) != NULL && j->state == JOB_RUNNING)
            pthread_cond_wait(&s->lookup_done, &s->lock);
        forget(s, key, klen);
        free(key);
    }
    pthread_mutex_unlock(&s->lock);
}

/*
 * Stale Redis copies. A write that MariaDB stored (or may have) but whose Redis refresh failed
 * (Redis away or stalled) leaves Redis with the users' previous features, served until
 * redis.ttl_s (an hour by default). Their keys are dropped instead as soon as Redis answers
 * again, so the next lookups read MariaDB: a retry every STALE_RETRY_MS by an idle database
 * thread. At most STALE_MAX users wait; past that, the loss of freshness is said.
 */
#define STALE_MAX 100000
#define STALE_RETRY_MS 1000

static void stale_add(dbthread_t *t, const mg_fwrite_t *w)
{
    mg_fsource_t *s = t->s;
    mg_fwrite_t *st = mg_fwrite_new(w->app, MG_FW_DELETE, w->n);
    for (size_t i = 0; st && i < w->n; i++)
        if ((st->users[st->n] = strdup(w->users[i])) != NULL)
            st->n++;
    pthread_mutex_lock(&s->lock);
    bool kept = st && st->n == w->n && s->nstale + st->n <= STALE_MAX;
    if (kept) {
        wq_push(&s->stale, st);
        if (s->nstale == 0)
            s->stale_at_ms = now_ms() + STALE_RETRY_MS;
        s->nstale += st->n;
    }
    pthread_mutex_unlock(&s->lock);
    if (kept)
        return;
    mg_fwrite_free(st);
    unsigned long skipped;
    if (mg_log_limit_pass(&t->loglimit, &skipped))
        MG_LOG(MG_LOG_ERROR, "features",
               "Redis copies of %zu user(s) of app %s are older than MariaDB and cannot wait "
               "to be dropped (%d users wait already, or out of memory): Redis may serve them "
               "until redis.ttl_s (%lu similar suppressed)",
               w->n, w->app->name, STALE_MAX, skipped);
}

/* Under s->lock, with a stale job due: drops its users' Redis copies (and the workers'), or
 * puts it back for the next attempt. */
static void stale_retry(dbthread_t *t)
{
    mg_fsource_t *s = t->s;
    mg_fwrite_t *st = wq_pop(&s->stale);
    pthread_mutex_unlock(&s->lock);
    char why[512];
    bool ok = redis_write(t, st->app, st->users, NULL, st->n, true, false, why, sizeof(why));
    if (ok) {
        forget_lookups(s, st);
        evict_everywhere(t, st);
        MG_LOG(MG_LOG_INFO, "features",
               "Redis answers again: dropped its outdated copies of %zu user(s) of app %s", st->n,
               st->app->name);
    }
    pthread_mutex_lock(&s->lock);
    if (ok) {
        s->nstale -= st->n;
        mg_fwrite_free(st);
        return;
    }
    wq_push_front(&s->stale, st); /* first again, in order */
    s->stale_at_ms = now_ms() + STALE_RETRY_MS;
}

/* Deletes |w|'s users from Redis (every group key and the marker, so that the next lookup
 * reads MariaDB) and from the workers' caches: after a write whose outcome is unknown. */
static void drop_copies(dbthread_t *t, const mg_fwrite_t *w)
{
    mg_fsource_t *s = t->s;
    forget_lookups(s, w);
    char why[512];
    if (s->conf->redis.on &&
        !redis_write(t, w->app, w->users, NULL, w->n, true, false, why, sizeof(why))) {
        MG_LOG(MG_LOG_WARN, "features",
               "a write of %zu user(s) of app %s has an unknown outcome and their Redis copies "
               "could not be dropped (%s): they are dropped once Redis answers again",
               w->n, w->app->name, why);
        stale_add(t, w);
    }
    evict_everywhere(t, w);
}

static void run_write(dbthread_t *t, mg_fwrite_t *w)
{
    mg_fsource_t *s = t->s;
    const char *table = s->conf->mariadb.table;
    w->err = MG_E_UPSTREAM;
    if (!db_ready(t, w->errmsg, sizeof(w->errmsg)))
        return;
    struct evbuffer *q = evbuffer_new();
    if (q == NULL) {
        snprintf(w->errmsg, sizeof(w->errmsg), "out of memory");
        return;
    }
    if (w->op == MG_FW_PUT) {
        evbuffer_add_printf(q, "INSERT INTO `%s` (app, user_id, features) VALUES ", table);
        for (size_t i = 0; i < w->n; i++) {
            char *text = json_dumps(w->docs[i], JSON_COMPACT | JSON_ENSURE_ASCII | JSON_SORT_KEYS);
            evbuffer_add_printf(q, "%s(", i ? "," : "");
            add_quoted(t, q, w->app->name);
            evbuffer_add(q, ",", 1);
            add_quoted(t, q, w->users[i]);
            evbuffer_add(q, ",", 1);
            add_quoted(t, q, text ? text : "{}");
            evbuffer_add(q, ")", 1);
            free(text);
        }
        evbuffer_add_printf(q, " ON DUPLICATE KEY UPDATE features=VALUES(features)");
    } else {
        evbuffer_add_printf(q,
                            w->op == MG_FW_GET ? "SELECT features FROM `%s` WHERE app="
                                               : "DELETE FROM `%s` WHERE app=",
                            table);
        add_quoted(t, q, w->app->name);
        evbuffer_add_printf(q, " AND user_id=");
        add_quoted(t, q, w->users[0]);
    }
    size_t len = evbuffer_get_length(q);
    bool maybe_done = false;
    bool ok = db_query(t, (const char *)evbuffer_pullup(q, -1), len, w->errmsg, sizeof(w->errmsg),
                       &maybe_done);
    evbuffer_free(q);
    if (!ok && mg_db_value_refused(t->db_errno)) {
        /* the table cannot hold these features (a column narrower than schema.sql's, an
         * operator's CHECK): sending again will not help, unlike a server away */
        char why[128];
        snprintf(why, sizeof(why), "%.127s", w->errmsg);
        snprintf(w->errmsg, sizeof(w->errmsg),
                 "MariaDB table %.48s refused the row (%s); compare it with features/schema.sql",
                 table, why);
        w->refused = true;
    }
    if (!ok && maybe_done && w->op != MG_FW_GET) {
        /* MariaDB may hold the change, or not: whatever Redis and the workers keep of these
         * users may be outdated either way, so it goes, and the next lookup reads MariaDB */
        char why[256];
        snprintf(why, sizeof(why), "%s", w->errmsg);
        snprintf(w->errmsg, sizeof(w->errmsg),
                 "MariaDB did not answer, so the write may or may not be stored: send it again "
                 "(%.160s)",
                 why);
        w->unknown = true;
        drop_copies(t, w);
    }
    if (!ok)
        return;
    if (w->op == MG_FW_GET) {
        MYSQL_RES *res = mysql_store_result(t->db);
        MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
        if (row && row[0]) {
            w->got = strdup(row[0]);
            w->affected = 1;
        }
        if (res)
            mysql_free_result(res);
        w->err = MG_OK;
        return;
    }
    w->err = MG_OK;
    my_ulonglong aff = mysql_affected_rows(t->db);
    w->affected = w->op == MG_FW_PUT ? w->n : (size_t)aff;
    atomic_fetch_add(w->op == MG_FW_PUT ? &s->dbm.rows_written : &s->dbm.rows_deleted,
                     (unsigned long long)w->affected);
    forget_lookups(s, w);
    if (!s->conf->redis.on)
        w->redis = MG_FW_REDIS_OFF;
    else if (redis_write(t, w->app, w->users, w->op == MG_FW_PUT ? w->docs : NULL, w->n, false,
                         false, w->redis_errmsg, sizeof(w->redis_errmsg)))
        w->redis = MG_FW_REDIS_REFRESHED;
    else
        w->redis = MG_FW_REDIS_FAILED;
    if (w->redis == MG_FW_REDIS_FAILED)
        stale_add(t, w);
    /* last: a worker's lookup that starts once its copy is gone reads Redis as written */
    evict_everywhere(t, w);
}

static void on_write_done(evutil_socket_t fd, short what, void *arg)
{
    mg_fwrite_t *w = arg;
    w->done(w);
}

static void complete_write(mg_fwrite_t *w)
{
    struct timeval zero = {0, 0};
    if (event_base_once(w->base, -1, EV_TIMEOUT, on_write_done, w, &zero) != 0)
        MG_LOG(MG_LOG_ERROR, "features",
               "cannot schedule a write completion; one admin "
               "request will time out");
}

static void *db_main(void *arg)
{
    dbthread_t *t = arg;
    mg_fsource_t *s = t->s;
    char name[16];
    snprintf(name, sizeof(name), "mg-features-db");
    pthread_setname_np(pthread_self(), name);
    mysql_thread_init();
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->stopping && s->lq_head == NULL && s->wq.head == NULL) {
            int64_t left = s->stale.head ? s->stale_at_ms - now_ms() : 0;
            if (s->stale.head == NULL) {
                pthread_cond_wait(&s->cond, &s->lock);
            } else if (left <= 0) {
                break;
            } else {
                struct timespec until = mg_thread_deadline(CLOCK_MONOTONIC, (unsigned)left);
                pthread_cond_timedwait(&s->cond, &s->lock, &until);
            }
        }
        if (s->stopping)
            break;
        if (s->stale.head && s->stale_at_ms <= now_ms()) { /* due: before jobs, which may
                                                            * never stop coming */
            stale_retry(t);
        } else if (s->lq_head) {
            ljob_t *j = s->lq_head;
            s->lq_head = j->qnext;
            if (s->lq_head == NULL)
                s->lq_tail = NULL;
            s->queued--;
            j->state = JOB_RUNNING;
            pthread_mutex_unlock(&s->lock);
            run_lookup(t, j);
            pthread_mutex_lock(&s->lock);
            finish_lookup(s, j);
        } else {
            mg_fwrite_t *w = wq_pop(&s->wq);
            pthread_mutex_unlock(&s->lock);
            run_write(t, w);
            complete_write(w);
            pthread_mutex_lock(&s->lock);
        }
    }
    pthread_mutex_unlock(&s->lock);
    db_close(t);
    if (t->redis)
        redisFree(t->redis);
    t->redis = NULL;
    mysql_thread_end();
    return NULL;
}

/* ---------- writes ---------- */

mg_fwrite_t *mg_fwrite_new(const mg_fapp_t *app, mg_fwrite_op_t op, size_t cap)
{
    mg_fwrite_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->app = app;
    w->op = op;
    w->users = calloc(cap ? cap : 1, sizeof(char *));
    w->docs = calloc(cap ? cap : 1, sizeof(json_t *));
    if (w->users == NULL || w->docs == NULL) {
        mg_fwrite_free(w);
        return NULL;
    }
    return w;
}

void mg_fwrite_free(mg_fwrite_t *w)
{
    if (w == NULL)
        return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->users[i]);
        json_decref(w->docs[i]);
    }
    free(w->users);
    free(w->docs);
    free(w->got);
    free(w);
}

mg_err_t mg_fsource_write(mg_fsource_t *s, mg_fwrite_t *w)
{
    if (!s->conf->mariadb.on)
        return MG_E_UPSTREAM;
    pthread_mutex_lock(&s->lock);
    bool stopping = s->stopping;
    if (!stopping) {
        wq_push(&s->wq, w);
        pthread_cond_signal(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return stopping ? MG_E_UPSTREAM : MG_OK;
}

/* ---------- lifecycle ---------- */

mg_fsource_t *mg_fsource_new(const mg_fconf_t *conf, unsigned nworkers, char *err, size_t errlen)
{
    mg_fsource_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "features: out of memory");
        return NULL;
    }
    s->conf = conf;
    s->nworkers = nworkers;
    pthread_mutex_init(&s->lock, NULL);
    mg_thread_cond_init(&s->cond); /* the stale retries wait with a monotonic deadline */
    pthread_cond_init(&s->lookup_done, NULL);
    mg_thread_cond_init(&s->evicted); /* waited for with a monotonic deadline */
    s->wm = calloc(nworkers ? nworkers : 1, sizeof(*s->wm));
    if (s->wm == NULL) {
        snprintf(err, errlen, "features: out of memory");
        goto fail;
    }
    if (conf->mariadb.on) {
        s->nthreads = conf->mariadb.threads;
        s->threads = calloc(s->nthreads, sizeof(*s->threads));
        if (s->threads == NULL) {
            snprintf(err, errlen, "features: out of memory");
            goto fail;
        }
        mysql_library_init(0, NULL, NULL);
        for (unsigned i = 0; i < s->nthreads; i++) {
            s->threads[i].s = s;
            if (pthread_create(&s->threads[i].tid, NULL, db_main, &s->threads[i]) != 0) {
                snprintf(err, errlen, "features: cannot start a MariaDB thread (%s)",
                         strerror(errno));
                goto fail;
            }
            s->started++;
        }
    }
    return s;
fail:
    mg_fsource_free(s);
    return NULL;
}

void mg_fsource_stop(mg_fsource_t *s)
{
    if (s == NULL || s->stopped)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->cond);
    pthread_cond_broadcast(&s->evicted); /* a writer waiting for workers that have stopped */
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < s->started; i++)
        pthread_join(s->threads[i].tid, NULL);
    s->stopped = true;
    /* writes that never ran: their requesters still get an answer */
    mg_fwrite_t *w = s->wq.head;
    s->wq.head = s->wq.tail = NULL;
    while (w) {
        mg_fwrite_t *next = w->_next;
        w->err = MG_E_UPSTREAM;
        snprintf(w->errmsg, sizeof(w->errmsg), "the gateway is shutting down");
        complete_write(w);
        w = next;
    }
}

void mg_fsource_free(mg_fsource_t *s)
{
    if (s == NULL)
        return;
    mg_fsource_stop(s);
    for (size_t b = 0; b < NBUCKETS; b++)
        while (s->map[b]) {
            ljob_t *j = s->map[b];
            s->map[b] = j->hnext;
            job_free(j);
        }
    if (s->nstale)
        MG_LOG(MG_LOG_WARN, "features",
               "Redis copies of %zu user(s) are older than MariaDB and were not dropped before "
               "the exit: Redis may serve them until redis.ttl_s",
               s->nstale);
    for (mg_fwrite_t *st; (st = wq_pop(&s->stale)) != NULL;)
        mg_fwrite_free(st);
    if (s->started)
        mysql_library_end();
    free(s->threads);
    free(s->wm);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_cond_destroy(&s->lookup_done);
    pthread_cond_destroy(&s->evicted);
    free(s);
}

const mg_fconf_t *mg_fsource_conf(const mg_fsource_t *s)
{
    return s->conf;
}

mg_fmetrics_t *mg_fsource_metrics(mg_fsource_t *s, unsigned i)
{
    return &s->wm[i < s->nworkers ? i : 0];
}

int mg_fsource_metrics_page(void *ud, const char *query, struct evbuffer *out,
                            const char **content_type)
{
    mg_fsource_t *s = ud;
    *content_type = "text/plain; version=0.0.4; charset=utf-8";
    mg_fmetrics_render(s->wm, s->nworkers ? s->nworkers : 1, &s->dbm, out);
    return 200;
}
