/*
 * features/features.c - a worker's feature lookups (see features.h).
 *
 * DESIGN
 * A fetch is the one lookup in flight for a key "app\0user" on this worker: requests that miss
 * the local cache while it runs join it as waiters. One timer per fetch fires at the earliest
 * waiter's deadline (routes of one app may have different budgets) and lets the expired
 * waiters go on with "timeout"; a waiter that joins touches the timer only when its deadline
 * is earlier than the one armed, so joining costs O(1). The fetch itself goes on until its
 * store answers, then fills the local cache and settles whoever still waits, all with one
 * clock reading: the latency histogram ends a lookup when its answer is in. Redis is asked with one
 * pipeline per fetch: GET of the user's marker key, then one read per group; hiredis answers in
 * order (building each reply in the worker's pool, rreply.h, not with a malloc per element),
 * and the fetch decides when the last reply is in. Each group's reply is written at once as
 * its fragment of the canonical text (see "Snapshot text" below), so a hit builds no JSON tree. A
 * Redis miss (no marker) passes the fetch to MariaDB through the shared source, whose answer
 * comes back on this thread through the worker's sink. Redis state: DOWN -> CONNECTING -> UP;
 * a connection is UP once Redis answered its handshake (AUTH, SELECT, or a PING) without an
 * error, within redis.connect_timeout_ms; lookups are sent only when UP, so no request ever
 * waits for a (re)connect; reconnects back off exponentially with jitter, and a handshake
 * refused (a wrong password) is logged once per cause and retried with the same backoff. A
 * connection whose oldest pipeline waits for its replies longer than redis.reply_timeout_ms is
 * dropped (on_rwatch: one timer per connection, re-armed at most once per bound; the
 * pipelines are queued in the order sent, with the clock reading their request made).
 *
 * Snapshot text: the bytes must be exactly those of mg_fval_from_json (features/fvalue.h) for
 * the same document, since a training pipeline recomputes the hash. jansson prints, with
 * JSON_COMPACT | JSON_ENSURE_ASCII | JSON_SORT_KEYS (and \u escapes lowercased): groups sorted by
 * name, hash fields sorted bytewise, strings with \" \\ \b \f \n \r \t, other bytes below
 * 0x20 and 0x7f as \u00xx (mg_fval_canonical escapes the DEL jansson leaves raw), everything else
 * as is. write_string does the same for replies
 * that are plain (every element a string, ASCII only, hash fields without NUL, so that a
 * bytewise sort orders them as jansson does); any other reply, and every
 * "json" group, goes through jansson as before (group_json), so rare cases keep their old bytes.
 * A group whose value is empty (mg_fval_is_empty) is left out, as from MariaDB's copy: a plain
 * reply has elements, so only group_json has to check.
 */
#include "features/features.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <event2/event_struct.h> /* struct event, embedded (rwatch) */

#include "common/clock.h"
#include "common/log.h"
#include "common/ptimer.h"
#include "features/lru.h"
#include "features/rloop.h"
#include "features/rreply.h"

#define NFETCH_BUCKETS 1024
#define NSENT 1024 /* snapshot hashes remembered per worker, to tell a repeat */
#define MAX_GROUPS MG_FCONF_MAX_GROUPS

enum { R_DOWN, R_CONNECTING, R_UP };

typedef struct fetch fetch_t;

typedef struct rcmd {
    fetch_t *fx;
    int idx; /* 0 = marker, i = group i - 1 */
} rcmd_t;

typedef struct frag {
    size_t off, len; /* a group's canonical text in the fetch's buffer; len 0 = no value */
} frag_t;

struct fetch {
    fetch_t *hnext;
    mg_features_t *f;
    const mg_fapp_t *app;
    const char *user; /* inside key */
    size_t klen;
    mg_features_ticket_t *head, *tail;
    mg_ptimer_t timer; /* on f->timers: a budget of a few ms must end on time */
    int64_t timer_at;  /* the deadline it is armed for; INT64_MAX when idle */
    int redis_pending;
    bool redis_failed, in_db;
    /* an admin write of the user came in while it ran (on_evict): it may have read the old
     * features, so it settles its waiters but caches nothing, and it is off the map (a new
     * request starts a new fetch rather than join it), on f->outdated by hnext instead */
    bool outdated;
    bool in_rq;                 /* on f's queue of pipelines sent (while replies are due) */
    fetch_t *rq_prev, *rq_next; /* that queue, oldest first: Redis answers in order */
    int64_t sent_us;            /* when the pipeline was queued */
    /* why a key of this user is not in the documented layout (a writer outside the gateway
     * broke it): MariaDB answers instead, and its write-back repairs the keys; NULL = fine */
    const char *redis_broken; /* how a key of the user breaks the layout, or NULL */
    const char *broken_group; /* whose key: a group's name, NULL for the marker */
    bool group_key_seen;  /* Redis holds a key of one of the user's groups (empty or not) */
    bool text_oom;        /* a fragment could not be written: the lookup ends "unavailable" */
    size_t raw;           /* bytes of the groups' strings in Redis (reply_bytes) */
    int marker;           /* -1 absent, 0 user without features, 1 features in the groups */
    char *text;           /* the groups' fragments (malloc), then the assembled snapshot text */
    size_t tlen, tcap;
    frag_t frag[MAX_GROUPS];
    rcmd_t rc[MAX_GROUPS + 1];
    char key[];
};

struct mg_features {
    struct event_base *base;
    mg_fsource_t *src;
    const mg_fconf_t *conf;
    mg_fmetrics_t *m;
    mg_flru_t *lru;
    mg_fsink_t *sink;
    redisAsyncContext *ac;
    mg_rreply_pool_t *rpool; /* ac's replies are built here (rreply.h) */
    mg_ptimers_t *timers;    /* the fetches' (one each: at most MG_FCONF_MAX_FETCHES) */
    int rstate;
    struct event *rtimer; /* reconnect backoff, or connect timeout while CONNECTING */
    unsigned backoff_ms;
    uint64_t rng;
    fetch_t *map[NFETCH_BUCKETS];
    fetch_t *outdated; /* fetches taken off the map by on_evict, still running; rare */
    size_t nfetches;
    size_t nwaiting_db; /* fetches waiting on MariaDB (at most mariadb.max_waiting) */
    uint64_t sent[NSENT]; /* hashes of snapshots that went out, by their low bits */
    bool closing;
    mg_log_limit_t loglimit;
    mg_log_limit_t errlog;         /* error replies to lookups: a line every few seconds */
    mg_log_limit_t unitlog;        /* requests whose unit header is ambiguous */
    /* the pipelines sent on the connection whose replies are due, oldest first, and the one
     * timer that drops the connection when the oldest has waited longer than the bound */
    fetch_t *rq_head, *rq_tail;
    struct event rwatch;
    mg_log_limit_t droplog;
    unsigned hello_pending;        /* handshake replies still expected while CONNECTING */
    unsigned long failed_attempts; /* connection attempts failed since the last one up */
    mg_log_cause_t connlog;        /* why the connection attempts fail */
};

static uint32_t key_hash(const char *k, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h & (NFETCH_BUCKETS - 1);
}

static void drop_val(void *v)
{
    mg_fval_unref(v);
}

/* ---------- tickets ---------- */

/* Gives |t| its outcome, known at |now| (one clock read serves every waiter of a fetch). */
static void settle(mg_features_t *f, mg_features_ticket_t *t, mg_fstatus_t st, mg_fval_t *val,
                   int64_t now)
{
    if (st == MG_FS_HIT && val && val->len > f->conf->max_header_bytes) {
        st = MG_FS_TOO_LARGE;
        unsigned long skipped;
        if (mg_log_limit_pass(&f->loglimit, &skipped))
            MG_LOG(MG_LOG_WARN, "features",
                   "features of %zu bytes exceed features.max_header_bytes (%zu); sent without "
                   "them (%lu similar suppressed)",
                   val->len, f->conf->max_header_bytes, skipped);
    }
    if (st == MG_FS_HIT && val) {
        mg_fval_ref(val);
        t->_val = val;
        /* the same text went out from this worker before: another request of a shared
         * lookup, the worker's cache, a new lookup of the user or a refresh */
        uint64_t *seen = &f->sent[val->hash64 & (NSENT - 1)];
        t->_repeat = *seen == val->hash64;
        *seen = val->hash64;
    }
    t->_status = (int)st + 1;
    mg_fmetrics_observe(f->m, st, now - t->_start_us);
}

/* Caches the fetch's answer |val| (NULL: unknown user), known at |now_at| (us). */
static void lru_store(mg_features_t *f, const fetch_t *fx, mg_fval_t *val, int64_t now_at)
{
    const mg_fconf_t *c = f->conf;
    int64_t now = now_at / 1000;
    if (fx->outdated)
        return;
    if (val && c->local.ttl_ms) {
        mg_fval_ref(val);
        mg_flru_put(f->lru, fx->key, fx->klen, val, now + c->local.ttl_ms,
                    now + c->local.ttl_ms + c->local.stale_ms);
    } else if (val == NULL && c->local.negative_ttl_ms) {
        mg_flru_put(f->lru, fx->key, fx->klen, NULL, now + c->local.negative_ttl_ms,
                    now + c->local.negative_ttl_ms);
    }
}

/* Arms the fetch's timer for |deadline| (a timerfd's: on time, where libevent's coarse clock
 * would be up to 4 ms late). Joining waiters call it only when their deadline is earlier than
 * the armed one (rare: routes of an app with other budgets), so a join costs no walk and no
 * timer update. */
static void arm_fetch_timer(fetch_t *fx, int64_t deadline)
{
    /* never full: it holds at most one timer per fetch, and there are at most as many fetches */
    mg_ptimer_arm(fx->f->timers, &fx->timer, deadline);
    fx->timer_at = deadline;
}

static void unlink_waiter(fetch_t *fx, mg_features_ticket_t *t)
{
    if (t->_prev)
        t->_prev->_next = t->_next;
    else
        fx->head = t->_next;
    if (t->_next)
        t->_next->_prev = t->_prev;
    else
        fx->tail = t->_prev;
    t->_next = t->_prev = NULL;
    t->_fetch = NULL;
}

/* Lets waiter |t| go with |st| at |now|; its callback may release any other ticket. */
static void wake(fetch_t *fx, mg_features_ticket_t *t, mg_fstatus_t st, mg_fval_t *val, int64_t now)
{
    unlink_waiter(fx, t);
    settle(fx->f, t, st, val, now);
    if (t->_done) /* NULL while mg_features_start runs: it reports the outcome itself */
        t->_done(t->_ud);
}

/* Times out the expired waiters, then re-arms for the earliest deadline left. It may fire
 * early (its waiter was released): then it only re-arms. */
static void on_fetch_timer(void *arg)
{
    fetch_t *fx = arg;
    int64_t now = mg_mono_us();
    fx->timer_at = INT64_MAX;
    for (;;) { /* from the head again after each wake: a callback may release others */
        mg_features_ticket_t *t = fx->head;
        while (t && t->_deadline_us > now)
            t = t->_next;
        if (t == NULL)
            break;
        mg_fmetrics_observe_late(fx->f->m, now - t->_deadline_us);
        wake(fx, t, MG_FS_TIMEOUT, NULL, now);
    }
    int64_t first = INT64_MAX;
    for (mg_features_ticket_t *t = fx->head; t; t = t->_next)
        first = t->_deadline_us < first ? t->_deadline_us : first;
    if (first != INT64_MAX)
        arm_fetch_timer(fx, first);
}

/* ---------- fetches ---------- */

static fetch_t **fetch_slot(mg_features_t *f, const char *key, size_t klen)
{
    fetch_t **pp = &f->map[key_hash(key, klen)];
    while (*pp && !((*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

/* Takes |fx| off the queue of pipelines whose replies are due (its last reply is in, or it
 * is freed). */
static void rq_unlink(fetch_t *fx)
{
    mg_features_t *f = fx->f;
    if (!fx->in_rq)
        return;
    if (fx->rq_prev)
        fx->rq_prev->rq_next = fx->rq_next;
    else
        f->rq_head = fx->rq_next;
    if (fx->rq_next)
        fx->rq_next->rq_prev = fx->rq_prev;
    else
        f->rq_tail = fx->rq_prev;
    fx->rq_prev = fx->rq_next = NULL;
    fx->in_rq = false;
}

static void fetch_free(fetch_t *fx)
{
    mg_features_t *f = fx->f;
    fetch_t **pp = fx->outdated ? &f->outdated : fetch_slot(f, fx->key, fx->klen);
    while (*pp && *pp != fx) /* on the map, fetch_slot found it already */
        pp = &(*pp)->hnext;
    if (*pp == fx)
        *pp = fx->hnext;
    f->nfetches--;
    rq_unlink(fx);
    if (fx->in_db) /* the worker shuts down before MariaDB answered */
        f->nwaiting_db--;
    while (fx->head) { /* only when the worker shuts down: nobody waits any more */
        mg_features_ticket_t *t = fx->head;
        unlink_waiter(fx, t);
    }
    mg_ptimer_cancel(fx->f->timers, &fx->timer);
    free(fx->text);
    free(fx);
}

/* The fetch has its answer: settle every waiter, then free it. */
static void fetch_finish(fetch_t *fx, mg_fstatus_t st, mg_fval_t *val, int64_t now)
{
    if (!fx->f->closing) {
        mg_ptimer_cancel(fx->f->timers, &fx->timer);
        while (fx->head)
            wake(fx, fx->head, st, val, now);
    }
    fetch_free(fx);
}

/* The local cache's and the fetch map's key of (app, user): app NUL user, NUL-terminated, into
 * |key|; its length, or 0 when the app name or the user id is too long to have one (such a
 * request is never looked up). */
#define KEY_MAX (64 + 1 + 128 + 1)
static size_t cache_key(char key[KEY_MAX], const char *app, const char *user, size_t ulen)
{
    size_t alen = strlen(app);
    if (alen > 64 || ulen > 128)
        return 0;
    memcpy(key, app, alen + 1);
    memcpy(key + alen + 1, user, ulen);
    key[alen + 1 + ulen] = '\0';
    return alen + 1 + ulen;
}

/* An admin write of |users| of |app| took effect (fsource.h, mg_fsink_evict_fn): drop the
 * worker's copies, positive or negative, and keep a fetch already running for one of them from
 * caching what it read before. Runs on the worker's thread, off the request path. */
static void on_evict(void *ud, const mg_fapp_t *app, const char *const *users, size_t n)
{
    mg_features_t *f = ud;
    char key[KEY_MAX];
    for (size_t i = 0; i < n; i++) {
        size_t klen = cache_key(key, app->name, users[i], strlen(users[i]));
        if (klen == 0) /* never looked up (mg_features_start) */
            continue;
        mg_flru_del(f->lru, key, klen);
        fetch_t **pp = fetch_slot(f, key, klen);
        fetch_t *fx = *pp;
        if (fx) {
            *pp = fx->hnext;
            fx->hnext = f->outdated;
            f->outdated = fx;
            fx->outdated = true;
        }
    }
}

static void on_db_result(void *ud, void *tag, mg_fdb_result_t r, mg_fval_t *val)
{
    fetch_t *fx = tag;
    int64_t now = mg_mono_us();
    fx->in_db = false;
    fx->f->nwaiting_db--;
    if (r == MG_FDB_HIT) {
        lru_store(fx->f, fx, val, now);
        fetch_finish(fx, MG_FS_HIT, val, now);
    } else if (r == MG_FDB_MISS) {
        lru_store(fx->f, fx, NULL, now);
        fetch_finish(fx, MG_FS_MISS, NULL, now);
    } else {
        fetch_finish(fx, MG_FS_UNAVAILABLE, NULL, now);
    }
}

static void to_db(fetch_t *fx, int64_t now)
{
    mg_features_t *f = fx->f;
    if (!f->conf->mariadb.on) { /* Redis only: absent means no features */
        lru_store(f, fx, NULL, now);
        fetch_finish(fx, MG_FS_MISS, NULL, now);
        return;
    }
    /* A slow or hung MariaDB keeps its lookups (their requests went on at their budget, the
     * fetch stays to fill the caches): without a cap of their own they would take every fetch
     * of the worker, and even users Redis has would get "unavailable". */
    if (f->nwaiting_db >= f->conf->mariadb.max_waiting) {
        MG_FM_INC(f->m->db_refused);
        fetch_finish(fx, MG_FS_UNAVAILABLE, NULL, now);
        return;
    }
    fx->in_db = true;
    f->nwaiting_db++;
    if (mg_fsource_lookup(f->src, f->sink, fx->app, fx->user, fx) != MG_OK) {
        fx->in_db = false;
        f->nwaiting_db--;
        fetch_finish(fx, MG_FS_UNAVAILABLE, NULL, now);
    }
}

/*
 * Features that far over max_header_bytes cannot be sent: past this many bytes of strings in
 * Redis, a user's groups are not parsed nor made canonical, which on the worker's loop took
 * about a second for a value of 16 MB that a pipeline wrote, and stalled every request of the
 * worker. Hash and list values only grow as text (quoted, escaped); a JSON value may lose its
 * blanks and escapes, so up to 8 times the cap is still read.
 */
#define RAW_MAX(f) (8 * (f)->conf->max_header_bytes)

/* Bytes of the strings in reply |r| (a string, or an array of them). */
static size_t reply_bytes(const redisReply *r)
{
    if (r->type == REDIS_REPLY_STRING)
        return r->len;
    size_t n = 0;
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            n += r->element[i]->type == REDIS_REPLY_STRING ? r->element[i]->len : 0;
    return n;
}

static mg_fval_t *snapshot(fetch_t *fx);

/* True when a group of the pipeline's replies has a value (a fragment of the snapshot). */
static bool has_group(const fetch_t *fx)
{
    for (size_t i = 0; i < fx->app->ngroups; i++)
        if (fx->frag[i].len)
            return true;
    return false;
}

/* All of the pipeline's replies are in. */
static void redis_done(fetch_t *fx)
{
    mg_features_t *f = fx->f;
    if (f->closing) {
        fetch_free(fx);
        return;
    }
    int64_t now = mg_mono_us();
    if (fx->redis_failed || (fx->redis_broken && !f->conf->mariadb.on)) {
        MG_FM_INC(f->m->redis_error);
        fetch_finish(fx, MG_FS_UNAVAILABLE, NULL, now);
    } else if (fx->redis_broken) {
        /* Redis holds a key of this user that breaks the layout (a pipeline that wrote it
         * wrong): MariaDB has the truth, and its write-back replaces every key of the user,
         * which repairs them */
        MG_FM_INC(f->m->redis_miss);
        unsigned long skipped;
        if (mg_log_limit_pass(&f->loglimit, &skipped))
            MG_LOG(MG_LOG_WARN, "features",
                   "Redis: the %s%s key of a user of app %s %s; read from MariaDB, whose "
                   "write-back rewrites the user's keys (%lu similar suppressed)",
                   fx->broken_group ? fx->broken_group : "marker",
                   fx->broken_group ? " group's" : "", fx->app->name, fx->redis_broken, skipped);
        to_db(fx, now);
    } else if (fx->marker == 1 && (fx->raw > RAW_MAX(f) || fx->text_oom || has_group(fx))) {
        MG_FM_INC(f->m->redis_hit);
        /* far too large to be sent: not even parsed (mg_fval_oversize) */
        mg_fval_t *val = fx->raw > RAW_MAX(f) ? mg_fval_oversize(fx->raw) : snapshot(fx);
        if (val == NULL) {
            fetch_finish(fx, MG_FS_UNAVAILABLE, NULL, now);
            return;
        }
        lru_store(f, fx, val, now);
        fetch_finish(fx, MG_FS_HIT, val, now);
        mg_fval_unref(val);
    } else if (fx->marker == 0 || (fx->marker == 1 && fx->group_key_seen)) {
        /* 0, or 1 whose group keys hold only empty values: the user has no features, as a
         * MariaDB row without any (conf/README.md "What the pod receives") */
        MG_FM_INC(f->m->redis_negative);
        lru_store(f, fx, NULL, now);
        fetch_finish(fx, MG_FS_MISS, NULL, now);
    } else {
        /* no marker, or 1 with every group key gone, which no writer leaves (a user without
         * features gets 0): the keys expired or were evicted (maxmemory) before the marker.
         * MariaDB answers, and its write-back puts them back. */
        MG_FM_INC(f->m->redis_miss);
        to_db(fx, now);
    }
}

/* ---------- snapshot text (see "Snapshot text" above) ---------- */

/* Room for |n| more bytes of text; false (and text_oom) when memory ran out. */
static bool text_reserve(fetch_t *fx, size_t n)
{
    if (fx->tlen + n <= fx->tcap)
        return true;
    if (fx->text_oom)
        return false;
    size_t cap = fx->tcap ? fx->tcap : 1024;
    while (cap < fx->tlen + n)
        cap *= 2;
    char *p = realloc(fx->text, cap);
    if (p == NULL) {
        fx->text_oom = true;
        return false;
    }
    fx->text = p;
    fx->tcap = cap;
    return true;
}

static void text_add(fetch_t *fx, const char *s, size_t n)
{
    if (text_reserve(fx, n)) {
        memcpy(fx->text + fx->tlen, s, n);
        fx->tlen += n;
    }
}

/* Whether one of the 8 bytes of |w| is one JSON escapes: below 0x20, '"' or '\\'. The tests
 * ("has a byte below n", "has a zero byte") are exact as to whether any byte is; a byte of
 * 0x80 or more can only make them answer yes, and the caller then looks byte by byte. */
static inline bool word_has_escape(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\'), d = w ^ (ones * 0x7f);
    return (((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b) | ((d - ones) & ~d)) &
           highs;
}

/* |s| (|n| bytes of ASCII, NULs allowed) as a JSON string, escaped as jansson does it. A
 * snapshot is mostly plain text: 8 bytes at a time while none needs escaping. */
static void write_string(fetch_t *fx, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (!text_reserve(fx, 6 * n + 2))
        return;
    char *o = fx->text + fx->tlen;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        uint64_t w;
        if (i + 8 <= n && (memcpy(&w, s + i, 8), !word_has_escape(w))) {
            memcpy(o, &w, 8);
            o += 8;
            i += 7;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
        case '\\':
            *o++ = (char)c;
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            memcpy(o, "u00", 3);
            o[3] = hex[c >> 4];
            o[4] = hex[c & 15];
            o += 5;
        }
    }
    *o++ = '"';
    fx->tlen = (size_t)(o - fx->text);
}

static bool is_ascii(const char *s, size_t n)
{
    unsigned char any = 0;
    for (size_t i = 0; i < n; i++)
        any |= (unsigned char)s[i];
    return any < 0x80;
}

/* True when write_string and a bytewise sort give jansson's exact text for this hash or list
 * reply (an array). */
static bool is_plain(const mg_fgroup_t *g, const redisReply *r)
{
    if (g->type == MG_FGROUP_HASH && r->elements % 2 != 0)
        return false;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !is_ascii(e->str, (size_t)e->len))
            return false;
        if (g->type == MG_FGROUP_HASH && i % 2 == 0 && memchr(e->str, '\0', (size_t)e->len) != NULL)
            return false;
    }
    return true;
}

static int cmp_field(const void *a, const void *b)
{
    const redisReply *const *x = a, *const *y = b;
    return strcmp(x[0]->str, y[0]->str); /* NUL-terminated by hiredis; no NUL inside here */
}

/* A plain hash reply [f1, v1, f2, v2...] as {"f1":"v1",...}, fields sorted. False, with
 * nothing written, when a field comes twice (never from HGETALL; jansson would keep the last). */
static bool write_hash(fetch_t *fx, const redisReply *r)
{
    redisReply *stack[64], **pairs = stack; /* pairs[2i], pairs[2i + 1]: field, value */
    size_t n = r->elements / 2;
    if (r->elements > sizeof(stack) / sizeof(stack[0]) &&
        (pairs = malloc(r->elements * sizeof(*pairs))) == NULL) {
        fx->text_oom = true;
        return true;
    }
    memcpy(pairs, r->element, r->elements * sizeof(*pairs));
    qsort(pairs, n, 2 * sizeof(*pairs), cmp_field); /* moves each field with its value */
    bool unique = true;
    for (size_t i = 1; i < n && unique; i++)
        unique = strcmp(pairs[2 * i - 2]->str, pairs[2 * i]->str) != 0;
    if (unique) {
        text_add(fx, "{", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                text_add(fx, ",", 1);
            write_string(fx, pairs[2 * i]->str, (size_t)pairs[2 * i]->len);
            text_add(fx, ":", 1);
            write_string(fx, pairs[2 * i + 1]->str, (size_t)pairs[2 * i + 1]->len);
        }
        text_add(fx, "}", 1);
    }
    if (pairs != stack)
        free(pairs);
    return unique;
}

/* The group's value as jansson builds it from the reply (NULL: the group is left out): the
 * reference for the replies that are not plain. An empty value ({} or [], however a pipeline
 * spaced it) is left out too, as mg_fval_normalize leaves it out of MariaDB's copy. A json
 * text that does not parse, or a string that is not UTF-8 (no JSON string can hold it), breaks
 * the layout: NULL, with *|broken| (when not NULL) saying how. */
static json_t *group_json(const mg_fgroup_t *g, const redisReply *r, const char **broken)
{
    json_t *v = NULL;
    if (g->type == MG_FGROUP_JSON) {
        if (r->type == REDIS_REPLY_STRING) {
            json_error_t jerr;
            v = json_loadb(r->str, (size_t)r->len, JSON_DECODE_ANY, &jerr);
            if (v == NULL && broken)
                *broken = "is not JSON";
        }
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
        v = g->type == MG_FGROUP_HASH ? json_object() : json_array();
        for (size_t i = 0; v && i < r->elements; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_STRING)
                continue;
            const redisReply *val = NULL;
            if (g->type == MG_FGROUP_HASH) {
                if (i + 1 == r->elements || r->element[i + 1]->type != REDIS_REPLY_STRING)
                    continue;
                val = r->element[++i];
            }
            json_t *s = json_stringn(val ? val->str : e->str, (size_t)(val ? val->len : e->len));
            /* a hash field whole, as MariaDB's copy has it: a cut name would change the
             * snapshot's bytes and hash between the two stores */
            int rc = s == NULL ? -1
                     : val     ? json_object_setn_new(v, e->str, (size_t)e->len, s)
                               : json_array_append_new(v, s);
            if (rc != 0) { /* not UTF-8 (or out of memory): served partly, it would mislead */
                if (broken)
                    *broken = "holds a string that is not UTF-8";
                json_decref(v);
                return NULL;
            }
        }
    }
    if (v && mg_fval_is_empty(v)) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

/* Writes group |gi|'s reply as its fragment of the snapshot text. The reply is owned by
 * hiredis (valid during this call only). */
static void add_group(fetch_t *fx, size_t gi, const redisReply *r)
{
    const mg_fgroup_t *g = &fx->app->groups[gi];
    size_t start = fx->tlen;
    /* Redis holds no empty hash or list: an empty array is a missing key; a json key is there
     * when GET returns a string, even "{}" */
    if (r->type == REDIS_REPLY_STRING || (r->type == REDIS_REPLY_ARRAY && r->elements > 0))
        fx->group_key_seen = true;
    bool plain = g->type != MG_FGROUP_JSON && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                 is_plain(g, r);
    if (plain) {
        if (g->type == MG_FGROUP_HASH) {
            plain = write_hash(fx, r);
        } else {
            text_add(fx, "[", 1);
            for (size_t i = 0; i < r->elements; i++) {
                if (i)
                    text_add(fx, ",", 1);
                write_string(fx, r->element[i]->str, (size_t)r->element[i]->len);
            }
            text_add(fx, "]", 1);
        }
    }
    if (!plain) {
        const char *broken = NULL;
        json_t *v = group_json(g, r, &broken);
        if (broken) {
            fx->redis_broken = broken;
            fx->broken_group = g->name;
        }
        if (v == NULL)
            return;
        size_t len;
        char *s = mg_fval_canonical(v, &len);
        json_decref(v);
        if (s == NULL) {
            fx->text_oom = true;
            return;
        }
        text_add(fx, s, len);
        free(s);
    }
    if (!fx->text_oom)
        fx->frag[gi] = (frag_t){start, fx->tlen - start};
}

/* The snapshot of a known user with a group that has a value (has_group): {"group":fragment,
 * ...}, groups sorted by name (names are [a-z0-9_]: nothing to escape). NULL when out of
 * memory. */
static mg_fval_t *snapshot(fetch_t *fx)
{
    const mg_fapp_t *a = fx->app;
    size_t order[MAX_GROUPS], n = 0;
    for (size_t i = 0; i < a->ngroups; i++) { /* insertion sort: at most 16 groups */
        if (fx->frag[i].len == 0)
            continue;
        size_t j = n++;
        for (; j > 0 && strcmp(a->groups[order[j - 1]].name, a->groups[i].name) > 0; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    size_t need = 2;
    for (size_t k = 0; k < n; k++)
        need += strlen(a->groups[order[k]].name) + 4 + fx->frag[order[k]].len;
    if (fx->text_oom || !text_reserve(fx, need)) /* one reserve: fragments stay where they are */
        return NULL;
    size_t start = fx->tlen;
    text_add(fx, "{", 1);
    for (size_t k = 0; k < n; k++) {
        const mg_fgroup_t *g = &a->groups[order[k]];
        if (k)
            text_add(fx, ",", 1);
        text_add(fx, "\"", 1);
        text_add(fx, g->name, strlen(g->name));
        text_add(fx, "\":", 2);
        text_add(fx, fx->text + fx->frag[order[k]].off, fx->frag[order[k]].len);
    }
    text_add(fx, "}", 1);
    return mg_fval_new(fx->text + start, fx->tlen - start);
}

/* Error replies to lookups (NOPERM after an ACL change, OOM, LOADING, MISCONF...) come with
 * every request while the cause lasts: one line per this many seconds, with the count. */
#define REPLY_LOG_PERIOD_S 5

/* Logs error reply |r| to command |rc| (rate-limited). */
static void log_error_reply(fetch_t *fx, const rcmd_t *rc, const redisReply *r)
{
    mg_features_t *f = fx->f;
    unsigned long skipped;
    if (!mg_log_limit_every(&f->errlog, REPLY_LOG_PERIOD_S, &skipped))
        return;
    char msg[160], more[64] = "";
    mg_rreply_text(r, msg, sizeof(msg));
    if (skipped)
        snprintf(more, sizeof(more), " (%lu more error replies since the last line)", skipped);
    MG_LOG(MG_LOG_WARN, "features",
           "Redis %s:%u: error reply reading %s%s of a user of app %s (%s); such lookups "
           "answer unavailable%s",
           f->conf->redis.host, f->conf->redis.port, rc->idx ? "group " : "the marker",
           rc->idx ? fx->app->groups[rc->idx - 1].name : "", fx->app->name, msg, more);
}

static void on_redis_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    rcmd_t *rc = priv;
    fetch_t *fx = rc->fx;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ERROR && r->len >= 9 && memcmp(r->str, "WRONGTYPE", 9) == 0) {
        fx->redis_broken = "has the wrong type (WRONGTYPE)";
        fx->broken_group = rc->idx ? fx->app->groups[rc->idx - 1].name : NULL;
    } else if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        if (r)
            log_error_reply(fx, rc, r);
        fx->redis_failed = true;
    } else if (rc->idx == 0) {
        /* "1" or "0" (conf/README.md); anything else is a marker written wrong, not an
         * unknown user: MariaDB answers, as for a key of the wrong type */
        if (r->type == REDIS_REPLY_NIL)
            fx->marker = -1;
        else if (r->type == REDIS_REPLY_STRING && r->len == 1 &&
                 (r->str[0] == '1' || r->str[0] == '0'))
            fx->marker = r->str[0] - '0';
        else
            fx->redis_broken = "is neither \"1\" nor \"0\"";
    } else if (!fx->redis_failed) {
        fx->raw += reply_bytes(r);
        if (fx->raw <= RAW_MAX(fx->f))
            add_group(fx, (size_t)rc->idx - 1, r);
    }
    if (--fx->redis_pending == 0) {
        rq_unlink(fx);
        redis_done(fx);
    }
}

/* Writes |n| in decimal at |o| (printf cost more than the rest of the pipeline); returns the
 * new end. */
static char *put_dec(char *o, size_t n)
{
    char tmp[20];
    size_t k = 0;
    do
        tmp[k++] = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    while (k)
        *o++ = tmp[--k];
    return o;
}

/* Writes a RESP length line: |c| ('*' or '$'), |n|, CRLF. */
static char *resp_len(char *o, char c, size_t n)
{
    *o++ = c;
    o = put_dec(o, n);
    memcpy(o, "\r\n", 2);
    return o + 2;
}

/* Appends |s| (|n| bytes) as a RESP bulk string at |o|; returns the new end. */
static char *resp_bulk(char *o, const char *s, size_t n)
{
    o = resp_len(o, '$', n);
    memcpy(o, s, n);
    memcpy(o + n, "\r\n", 2);
    return o + n + 2;
}

/* Sends the pipeline: GET marker, then one read per group. The commands are written in RESP
 * here rather than formatted by hiredis; keys fit: "mgf:v1:" + app (<= 64, checked by
 * mg_features_start) + ':' + user (<= 128) + ':' + group (<= 32). */
static void redis_send(fetch_t *fx, int64_t now)
{
    mg_features_t *f = fx->f;
    char key[256], cmd[512];
    size_t alen = strlen(fx->app->name), ulen = fx->klen - alen - 1;
    size_t blen = 7 + alen + 1 + ulen; /* "mgf:v1:app:user" */
    memcpy(key, "mgf:v1:", 7);
    memcpy(key + 7, fx->app->name, alen);
    key[7 + alen] = ':';
    memcpy(key + 8 + alen, fx->user, ulen);
    MG_FM_INC(f->m->redis_lookups);
    fx->rc[0] = (rcmd_t){fx, 0};
    char *o = resp_bulk(resp_len(cmd, '*', 2), "GET", 3);
    o = resp_bulk(o, key, blen);
    int sent = redisAsyncFormattedCommand(f->ac, on_redis_reply, &fx->rc[0], cmd,
                                          (size_t)(o - cmd)) == REDIS_OK;
    for (size_t i = 0; sent == (int)i + 1 && i < fx->app->ngroups; i++) {
        const mg_fgroup_t *g = &fx->app->groups[i];
        size_t glen = strlen(g->name), klen = blen + 1 + glen;
        key[blen] = ':';
        memcpy(key + blen + 1, g->name, glen);
        fx->rc[i + 1] = (rcmd_t){fx, (int)i + 1};
        if (g->type == MG_FGROUP_HASH) {
            o = resp_bulk(resp_len(cmd, '*', 2), "HGETALL", 7);
            o = resp_bulk(o, key, klen);
        } else if (g->type == MG_FGROUP_LIST) {
            o = resp_bulk(resp_len(cmd, '*', 4), "LRANGE", 6);
            o = resp_bulk(o, key, klen);
            o = resp_bulk(o, "0", 1);
            char last[20];
            o = resp_bulk(o, last, (size_t)(put_dec(last, g->max_items - 1) - last));
        } else {
            o = resp_bulk(resp_len(cmd, '*', 2), "GET", 3);
            o = resp_bulk(o, key, klen);
        }
        sent += redisAsyncFormattedCommand(f->ac, on_redis_reply, &fx->rc[i + 1], cmd,
                                           (size_t)(o - cmd)) == REDIS_OK;
    }
    fx->redis_pending = sent;
    if (sent != (int)fx->app->ngroups + 1)
        fx->redis_failed = true; /* the replies already queued still arrive (maybe NULL) */
    if (sent == 0) {
        redis_done(fx);
        return;
    }
    /* its replies are due: the connection's watchdog covers it (armed when idle) */
    fx->sent_us = now;
    fx->in_rq = true;
    fx->rq_prev = f->rq_tail;
    if (f->rq_tail)
        f->rq_tail->rq_next = fx;
    else
        f->rq_head = fx;
    f->rq_tail = fx;
    if (!evtimer_pending(&f->rwatch, NULL)) {
        unsigned ms = f->conf->redis.reply_timeout_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(&f->rwatch, &tv);
    }
}

/* A new fetch for |key| with |first| (may be NULL) as its waiter, not started yet; NULL when
 * out of memory. */
static fetch_t *fetch_new(mg_features_t *f, const mg_fapp_t *app, const char *key, size_t klen,
                          size_t alen, mg_features_ticket_t *first)
{
    fetch_t *fx = calloc(1, sizeof(*fx) + klen + 1);
    if (fx == NULL)
        return NULL;
    fx->f = f;
    fx->app = app;
    fx->klen = klen;
    memcpy(fx->key, key, klen);
    fx->user = fx->key + alen + 1;
    fx->marker = -1;
    mg_ptimer_init(&fx->timer, on_fetch_timer, fx);
    fetch_t **pp = fetch_slot(f, key, klen);
    fx->hnext = *pp;
    *pp = fx;
    f->nfetches++;
    fx->timer_at = INT64_MAX;
    if (first) {
        first->_fetch = fx;
        fx->head = fx->tail = first;
        arm_fetch_timer(fx, first->_deadline_us);
    }
    return fx;
}

/* Starts |fx| at |now|; it may settle (and be freed) before this returns. */
static void fetch_go(fetch_t *fx, int64_t now)
{
    if (fx->f->conf->redis.on)
        redis_send(fx, now);
    else
        to_db(fx, now);
}

/* ---------- Redis connection ---------- */

/* A failure that repeats with each reconnect is logged when its cause changes, then at most
 * once per this many seconds (with the count). */
#define CAUSE_PERIOD_S 60

/* The handshake of a connection, sent before any lookup: AUTH when a password is configured,
 * SELECT when the db is not 0, PING when neither is (a server that takes the TCP connection
 * but does not answer, stopped or hung, is then not taken for up). */
enum { HELLO_AUTH = 0, HELLO_SELECT, HELLO_PING };
static const char *const hello_names[] = {"AUTH", "SELECT", "PING"};

static void redis_connect(mg_features_t *f);

static void schedule_reconnect(mg_features_t *f)
{
    f->rstate = R_DOWN;
    unsigned max = f->conf->redis.reconnect_max_ms;
    f->backoff_ms = f->backoff_ms ? f->backoff_ms * 2 : 50;
    if (f->backoff_ms > max)
        f->backoff_ms = max;
    f->rng ^= f->rng << 13, f->rng ^= f->rng >> 7, f->rng ^= f->rng << 17;
    unsigned wait = f->backoff_ms * 3 / 4 + (unsigned)(f->rng % (f->backoff_ms / 2 + 1));
    struct timeval tv = {wait / 1000, (wait % 1000) * 1000};
    evtimer_add(f->rtimer, &tv);
}

/* A connection attempt failed with |cause|; |hint| ("" or "; check ...") says what to fix.
 * Counted, and logged once per cause (then every CAUSE_PERIOD_S while it repeats). The
 * caller drops the connection and schedules the reconnect. */
static void connect_failed(mg_features_t *f, const char *cause, const char *hint)
{
    MG_FM_INC(f->m->redis_connect_failures);
    f->failed_attempts++;
    unsigned long repeats;
    if (!mg_log_cause_pass(&f->connlog, cause, CAUSE_PERIOD_S, &repeats))
        return;
    char again[64];
    MG_LOG(MG_LOG_WARN, "features",
           "Redis %s:%u: %s%s; requests go on without features (unavailable), retrying with "
           "backoff%s",
           f->conf->redis.host, f->conf->redis.port, cause, hint,
           mg_log_repeats(again, sizeof(again), repeats));
}

/* Drops the connection (hiredis sees nothing wrong with it: an error reply to the handshake,
 * or no reply in time) and schedules the reconnect with backoff. The callbacks of the
 * commands still pending run inside with a NULL reply: their fetches end "unavailable". When
 * called from one of the connection's reply callbacks, hiredis frees it once that returns. */
static void redis_drop(mg_features_t *f)
{
    redisAsyncContext *ac = f->ac;
    f->ac = NULL; /* on_disconnect and on_hello then know it was dropped on purpose */
    if (f->rstate == R_UP) {
        MG_FM_INC(f->m->redis_disconnects);
        atomic_store(&f->m->redis_up, 0);
    }
    schedule_reconnect(f); /* R_DOWN first: nothing is sent on |ac| from the callbacks */
    redisAsyncFree(ac);
}

static void set_up(mg_features_t *f)
{
    evtimer_del(f->rtimer);
    f->rstate = R_UP;
    f->backoff_ms = 0; /* only now: a refused handshake keeps backing off */
    MG_FM_INC(f->m->redis_connects);
    atomic_store(&f->m->redis_up, 1);
    if (f->failed_attempts)
        MG_LOG(MG_LOG_INFO, "features", "Redis %s:%u: connected after %lu failed attempts",
               f->conf->redis.host, f->conf->redis.port, f->failed_attempts);
    f->failed_attempts = 0;
    mg_log_cause_reset(&f->connlog);
}

/* A reply to the handshake: the connection is up once the last one is in, and every one was
 * a success. An error reply (a wrong password, a db out of range, NOAUTH from a Redis that
 * wants a password) fails the attempt: every lookup on that connection would fail the same
 * way, silently. */
static void on_hello(redisAsyncContext *ac, void *reply, void *priv)
{
    mg_features_t *f = ac->data;
    redisReply *r = reply;
    const char *step = hello_names[(uintptr_t)priv];
    if (ac != f->ac || r == NULL) /* dropped already, or lost: on_disconnect follows */
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        char msg[160], cause[200];
        mg_rreply_text(r, msg, sizeof(msg));
        snprintf(cause, sizeof(cause), "%s refused (%s)", step, msg);
        connect_failed(f, cause, mg_rreply_hint(cause));
        redis_drop(f);
        return;
    }
    if (--f->hello_pending == 0)
        set_up(f);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    mg_features_t *f = ac->data;
    if (status != REDIS_OK) { /* hiredis frees the context after this */
        f->ac = NULL;
        char cause[200];
        snprintf(cause, sizeof(cause), "cannot connect (%s)", ac->errstr);
        connect_failed(f, cause, "");
        schedule_reconnect(f);
    }
    /* connected: up once the handshake's replies are in (on_hello) */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    mg_features_t *f = ac->data;
    if (ac != f->ac) /* dropped on purpose (redis_drop, shutdown): handled there */
        return;
    f->ac = NULL;
    const char *refused = mg_rreply_refused(f->rpool); /* hiredis says "Out of memory" */
    const char *why = refused ? refused : ac->errstr[0] ? ac->errstr : "closed";
    if (f->rstate == R_UP) {
        MG_FM_INC(f->m->redis_disconnects);
        atomic_store(&f->m->redis_up, 0);
        if (!f->closing)
            MG_LOG(MG_LOG_WARN, "features", "Redis %s:%u: connection lost (%s); reconnecting",
                   f->conf->redis.host, f->conf->redis.port, why);
    } else {
        char cause[200];
        snprintf(cause, sizeof(cause), "connection closed during the handshake (%s)", why);
        connect_failed(f, cause, "");
    }
    if (!f->closing)
        schedule_reconnect(f);
}

static void on_rtimer(evutil_socket_t fd, short what, void *arg)
{
    mg_features_t *f = arg;
    if (f->rstate == R_CONNECTING && f->ac) { /* the connect or its handshake took too long */
        char cause[200];
        if (f->ac->c.flags & REDIS_CONNECTED)
            snprintf(cause, sizeof(cause),
                     "connected, but no reply to the handshake within %u ms (stopped or "
                     "overloaded?)",
                     f->conf->redis.connect_timeout_ms);
        else
            snprintf(cause, sizeof(cause), "connect did not complete within %u ms",
                     f->conf->redis.connect_timeout_ms);
        connect_failed(f, cause, "; features.redis.connect_timeout_ms is the bound");
        redis_drop(f);
        return;
    }
    redis_connect(f);
}

/* The connection's watchdog: Redis answers in order, so when the oldest pipeline whose
 * replies are due has waited longer than redis.reply_timeout_ms, Redis is stopped, hung or
 * too slow to be of use: the connection is dropped (its lookups end "unavailable", requests
 * went on at their budget already) and reconnected with backoff, and lookups answer at once
 * meanwhile instead of piling up. Otherwise it re-arms for the oldest's deadline: it runs at
 * most once per bound while the connection is busy, and not at all when idle. */
static void on_rwatch(evutil_socket_t fd, short what, void *arg)
{
    mg_features_t *f = arg;
    fetch_t *oldest = f->rq_head;
    if (oldest == NULL || f->rstate != R_UP || f->ac == NULL)
        return;
    unsigned ms = f->conf->redis.reply_timeout_ms;
    int64_t now = mg_mono_us(), due = oldest->sent_us + (int64_t)ms * 1000;
    if (now < due) {
        struct timeval tv = {(due - now) / 1000000, (due - now) % 1000000};
        evtimer_add(&f->rwatch, &tv);
        return;
    }
    size_t waiting = 0;
    for (fetch_t *fx = oldest; fx; fx = fx->rq_next)
        waiting++;
    MG_FM_INC(f->m->redis_reply_timeouts);
    unsigned long skipped;
    if (mg_log_limit_pass(&f->droplog, &skipped))
        MG_LOG(MG_LOG_WARN, "features",
               "Redis %s:%u: no reply for %lld ms (bound: features.redis.reply_timeout_ms = "
               "%u), %zu lookups waiting; dropping the connection and reconnecting (Redis "
               "stopped, hung or overloaded?) (%lu similar suppressed)",
               f->conf->redis.host, f->conf->redis.port, (long long)(now - oldest->sent_us) / 1000,
               ms, waiting, skipped);
    redis_drop(f);
}

static void redis_connect(mg_features_t *f)
{
    const mg_fconf_t *c = f->conf;
    redisAsyncContext *ac = redisAsyncConnect(c->redis.host, (int)c->redis.port);
    if (ac == NULL || ac->err) {
        char cause[200];
        snprintf(cause, sizeof(cause), "cannot connect (%s)", ac ? ac->errstr : "out of memory");
        connect_failed(f, cause, "");
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect(f);
        return;
    }
    ac->data = f;
    mg_rreply_attach(ac->c.reader, f->rpool);
    if (mg_rloop_attach(ac, f->base) != MG_OK) {
        redisAsyncFree(ac);
        schedule_reconnect(f);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    int err = REDIS_OK;
    if (c->redis.password)
        err |= redisAsyncCommand(ac, on_hello, (void *)(uintptr_t)HELLO_AUTH, "AUTH %s",
                                 c->redis.password);
    if (c->redis.db)
        err |= redisAsyncCommand(ac, on_hello, (void *)(uintptr_t)HELLO_SELECT, "SELECT %u",
                                 c->redis.db);
    if (!c->redis.password && !c->redis.db)
        err |= redisAsyncCommand(ac, on_hello, (void *)(uintptr_t)HELLO_PING, "PING");
    f->hello_pending = (c->redis.password ? 1u : 0u) + (c->redis.db ? 1u : 0u) +
                       (!c->redis.password && !c->redis.db ? 1u : 0u);
    f->ac = ac;
    if (err != REDIS_OK) { /* out of memory */
        f->rstate = R_CONNECTING;
        redis_drop(f);
        return;
    }
    f->rstate = R_CONNECTING;
    struct timeval tv = {c->redis.connect_timeout_ms / 1000,
                         (c->redis.connect_timeout_ms % 1000) * 1000};
    evtimer_add(f->rtimer, &tv);
}

/* ---------- public ---------- */

mg_features_t *mg_features_new(mg_fsource_t *src, struct event_base *base, unsigned worker)
{
    mg_features_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->base = base;
    f->src = src;
    f->conf = mg_fsource_conf(src);
    f->m = mg_fsource_metrics(src, worker);
    f->rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)worker << 32) ^ (uint64_t)mg_mono_us();
    f->lru = mg_flru_new(f->conf->local.max_entries, drop_val);
    f->sink = mg_fsink_new(src, base, on_db_result, on_evict, f);
    f->rtimer = evtimer_new(base, on_rtimer, f);
    evtimer_assign(&f->rwatch, base, on_rwatch, f);
    f->rpool = mg_rreply_pool_new();
    mg_err_t terr = mg_ptimers_new(base, MG_FCONF_MAX_FETCHES, &f->timers);
    if (f->lru == NULL || f->sink == NULL || f->rtimer == NULL || f->rpool == NULL ||
        terr != MG_OK) {
        mg_features_free(f);
        return NULL;
    }
    if (f->conf->redis.on)
        redis_connect(f);
    return f;
}

void mg_features_free(mg_features_t *f)
{
    if (f == NULL)
        return;
    f->closing = true;
    if (f->ac) { /* calls the pending reply callbacks with NULL: their fetches are freed */
        redisAsyncContext *ac = f->ac;
        f->ac = NULL;
        redisAsyncFree(ac);
    }
    atomic_store(&f->m->redis_up, 0);
    evtimer_del(&f->rwatch);
    mg_fsink_free(f->sink); /* after it, no MariaDB answer can reach a fetch */
    for (size_t b = 0; b < NFETCH_BUCKETS; b++)
        while (f->map[b])
            fetch_free(f->map[b]);
    while (f->outdated)
        fetch_free(f->outdated);
    if (f->rtimer)
        event_free(f->rtimer);
    mg_ptimers_free(f->timers); /* after the fetches: each cancels its own */
    mg_flru_free(f->lru);
    mg_rreply_pool_free(f->rpool); /* after the context: freeing it may free a reply in it */
    free(f);
}

mg_err_t mg_features_start(mg_features_t *f, mg_features_ticket_t *t, const char *app,
                           const char *env, const mg_hdr_t *hdrs, size_t n,
                           mg_features_done_fn done, void *ud)
{
    memset(t, 0, sizeof(*t));
    if (f == NULL)
        return MG_OK;
    t->_strip = true;
    const mg_fapp_t *a = mg_fconf_app(f->conf, app);
    if (a == NULL)
        return MG_OK;
    t->_start_us = mg_mono_us();
    const mg_fconf_t *c = f->conf;
    /* The unit header given twice (or as a list, which any hop may make of the two) names no
     * one user: taking either copy could attach another user's features than the ones the
     * pod, or a sticky split reading the other copy, goes by. The request goes on with none. */
    bool ambiguous;
    const mg_hdr_t *uh = mg_field_single(hdrs, n, c->user_header, c->user_header_len, &ambiguous);
    const char *user = uh ? uh->value : NULL;
    size_t ulen = uh ? uh->value_len : 0;
    if (ambiguous) {
        unsigned long skipped;
        if (mg_log_limit_pass(&f->unitlog, &skipped))
            MG_LOG(MG_LOG_WARN, "features",
                   "a request to app %s has %s more than once or as a list: its unit id is "
                   "ambiguous, so it goes on without features (status none), and a sticky "
                   "split on that header picks at random (%lu similar suppressed)",
                   a->name, c->user_header, skipped);
    }
    if (user == NULL || !mg_fconf_is_user_id(user, ulen)) {
        settle(f, t, MG_FS_NONE, NULL, t->_start_us);
        return MG_OK;
    }
    char key[KEY_MAX];
    size_t klen = cache_key(key, a->name, user, ulen);
    if (klen == 0) {
        settle(f, t, MG_FS_NONE, NULL, t->_start_us);
        return MG_OK;
    }
    size_t alen = klen - 1 - ulen;

    void *cached = NULL;
    mg_flru_state_t st = mg_flru_get(f->lru, key, klen, t->_start_us / 1000, &cached);
    fetch_t *fx = st == MG_FLRU_ABSENT ? NULL : *fetch_slot(f, key, klen);
    if (st != MG_FLRU_ABSENT) {
        mg_fval_t *val = cached;
        if (val == NULL)
            MG_FM_INC(f->m->local_negative);
        else if (st == MG_FLRU_FRESH)
            MG_FM_INC(f->m->local_fresh);
        else
            MG_FM_INC(f->m->local_stale);
        if (val)
            mg_fval_ref(val); /* the background refresh below may replace the entry */
        settle(f, t, val ? MG_FS_HIT : MG_FS_MISS, val, t->_start_us);
        /* stale: refresh in the background, unless a fetch runs already or Redis is down */
        if (st == MG_FLRU_STALE && fx == NULL && f->nfetches < MG_FCONF_MAX_FETCHES &&
            (!c->redis.on || f->rstate == R_UP) &&
            (fx = fetch_new(f, a, key, klen, alen, NULL)) != NULL)
            fetch_go(fx, t->_start_us);
        mg_fval_unref(val);
        return MG_OK;
    }
    MG_FM_INC(f->m->local_absent);
    t->_done = done;
    t->_ud = ud;
    t->_deadline_us = t->_start_us + (int64_t)mg_fconf_timeout_ms(a, env) * 1000;
    if ((fx = *fetch_slot(f, key, klen)) != NULL) { /* coalesce */
        MG_FM_INC(f->m->coalesced);
        t->_fetch = fx;
        t->_prev = fx->tail;
        if (fx->tail)
            fx->tail->_next = t;
        else
            fx->head = t;
        fx->tail = t;
        if (t->_deadline_us < fx->timer_at) /* the timer runs for an earlier deadline already */
            arm_fetch_timer(fx, t->_deadline_us);
        return MG_E_AGAIN;
    }
    if ((c->redis.on && f->rstate != R_UP) || f->nfetches >= MG_FCONF_MAX_FETCHES) {
        settle(f, t, MG_FS_UNAVAILABLE, NULL, t->_start_us); /* never wait for a reconnect */
        return MG_OK;
    }
    t->_done = NULL; /* no callback while starting: a fetch that settles at once says MG_OK */
    if ((fx = fetch_new(f, a, key, klen, alen, t)) == NULL) {
        settle(f, t, MG_FS_UNAVAILABLE, NULL, t->_start_us);
        return MG_OK;
    }
    fetch_go(fx, t->_start_us);
    if (t->_fetch == NULL)
        return MG_OK;
    t->_done = done;
    return MG_E_AGAIN;
}

size_t mg_features_strip(const mg_features_ticket_t *t, mg_hdr_t *h, size_t n)
{
    if (!t->_strip)
        return n;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) { /* only the gateway may say what the features are */
        if ((h[i].name_len == 15 && memcmp(h[i].name, "x-user-features", 15) == 0) ||
            (h[i].name_len == 20 && memcmp(h[i].name, "x-modelgate-features", 20) == 0))
            continue;
        h[k++] = h[i];
    }
    return k;
}

size_t mg_features_headers(const mg_features_ticket_t *t, mg_hdr_t *h, size_t n)
{
    if (!t->_strip)
        return n;
    size_t k = mg_features_strip(t, h, n);
    if (t->_status == 0)
        return k;
    if (t->_val)
        /* A value that went out before (the user's requests came together and shared a fetch,
         * or the worker's cache had it) is likely to go out again: indexed, the pod decodes it
         * once per upstream connection instead of per request. A first one is not indexed, so
         * one-off users do not push the fields that repeat out of the pod's HPACK table. */
        h[k++] = (mg_hdr_t){"x-user-features", t->_val->text, 15, t->_val->len,
                            t->_repeat ? MG_HPACK_REPEAT : MG_HPACK_UNIQUE};
    const char *st = mg_fstatus_name((mg_fstatus_t)(t->_status - 1));
    h[k++] = (mg_hdr_t){"x-modelgate-features", st, 20, strlen(st), MG_HPACK_INDEX};
    return k;
}

const char *mg_features_status(const mg_features_ticket_t *t)
{
    return t->_status ? mg_fstatus_name((mg_fstatus_t)(t->_status - 1)) : NULL;
}

const char *mg_features_hash(const mg_features_ticket_t *t)
{
    return t->_val ? t->_val->hash : NULL;
}

void mg_features_release(mg_features_ticket_t *t)
{
    if (t->_fetch)
        unlink_waiter(t->_fetch, t); /* the fetch's timer may fire early: it re-arms */
    t->_done = NULL;
    mg_fval_unref(t->_val);
    t->_val = NULL;
}
