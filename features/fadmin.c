/*
 * features/fadmin.c - admin endpoints for user features (see fadmin.h).
 */
#include "features/fadmin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "common/hex.h"
#include "common/log.h"
#include "features/fsource.h"

#define PREFIX "/v1/features"
#define MAX_BODY (1 << 20) /* one user's features */
#define MAX_LINE (64 * 1024)
#define BATCH_ROWS 500
/* Features text per batch. MariaDB's escaping at most doubles it, so one INSERT stays near
 * 2 MiB, far under max_allowed_packet (16 MiB by default; 500 rows of the largest features,
 * 64 KiB each, would be 32 MiB and the server refuses the whole batch). */
#define BATCH_BYTES (1 << 20)
#define MAX_ERRORS 20
/* A group or field named twice is refused ("duplicate object key"): which copy would count is
 * the parser's choice, and the caller surely meant one of them */
#define JSON_FLAGS JSON_REJECT_DUPLICATES

struct mg_fadmin {
    mg_fsource_t *src;
    struct event_base *base;
};

mg_fadmin_t *mg_fadmin_new(mg_fsource_t *src, struct event_base *admin_base)
{
    mg_fadmin_t *a = calloc(1, sizeof(*a));
    if (a) {
        a->src = src;
        a->base = admin_base;
    }
    return a;
}

void mg_fadmin_free(mg_fadmin_t *a)
{
    free(a);
}

enum { M_GET, M_PUT, M_DELETE, M_BULK };

typedef struct areq {
    mg_fsource_t *src;
    mg_srv_stream_t *s; /* NULL once the stream closed */
    struct event_base *base;
    const mg_fapp_t *app;
    char user[129];
    int method;
    struct evbuffer *in;
    size_t received, unconsumed;
    bool ended, busy, replied;
    int pins; /* > 0 while a function of this file uses it: a reply may close the stream */
    /* bulk */
    size_t line_no, accepted, rejected;
    size_t redis_failed; /* accepted rows whose Redis refresh failed */
    char redis_err[160]; /* the last reason */
    bool db_failed;
    size_t unknown; /* rows of batches MariaDB did not answer: stored or not */
    char dberr[256];
    json_t *errors;
    mg_fwrite_t *batch;
    size_t batch_bytes;               /* features text in |batch| */
    size_t batch_first, batch_last;   /* lines of the first and last row of |batch| */
    size_t flight_first, flight_last; /* the same for the batch being stored */
    /* the range error the last batch added (add_range_error), which the next failed batch
     * extends when MariaDB said the same; NULL once a batch is stored */
    json_t *open_range;
    size_t open_rows;
    bool open_unknown;
    char open_err[256];
    bool skipping;                    /* dropping the rest of a line longer than MAX_LINE */
} areq_t;

static void areq_free(areq_t *r)
{
    if (r->in)
        evbuffer_free(r->in);
    json_decref(r->errors);
    mg_fwrite_free(r->batch);
    free(r);
}

static void pin(areq_t *r)
{
    r->pins++;
}

/* Frees |r| when nothing uses it any more: no caller, no job, no stream. */
static void unpin(areq_t *r)
{
    if (--r->pins == 0 && r->s == NULL && !r->busy)
        areq_free(r);
}

static void reply_json(areq_t *r, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    r->replied = true;
    if (r->s == NULL) {
        free(text);
        return;
    }
    if (r->unconsumed) { /* let the client finish sending */
        mg_srv_consume(r->s, r->unconsumed);
        r->unconsumed = 0;
    }
    if (text == NULL) {
        mg_srv_error(r->s, 500, "out_of_memory", "cannot format the answer", NULL, NULL, 0);
        return;
    }
    char clen[24];
    snprintf(clen, sizeof(clen), "%zu", strlen(text));
    mg_hdr_t h[] = {
        {"content-type", "application/json", 12, 16, false},
        {"content-length", clen, 14, strlen(clen), false},
    };
    mg_srv_respond(r->s, status, h, 2, false);
    mg_srv_write(r->s, text, strlen(text));
    mg_srv_end(r->s, NULL, 0);
    free(text);
}

static void reply_error(areq_t *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_error(areq_t *r, int status, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    r->replied = true;
    if (r->s == NULL)
        return;
    if (r->unconsumed) {
        mg_srv_consume(r->s, r->unconsumed);
        r->unconsumed = 0;
    }
    mg_srv_error(r->s, status, code, msg, NULL, NULL, 0);
}

/* ---------- single user ---------- */

/* What a PUT or DELETE did to Redis, in its answer: MariaDB has the change either way (the
 * answer is 200), but a Redis that kept the old copy serves it until the key's TTL ends, and
 * the caller may want to retry or flush it. */
static void add_redis(json_t *body, mg_fwrite_redis_t redis, const char *why)
{
    if (body == NULL)
        return;
    static const char *const names[] = {"off", "refreshed", "not_refreshed"};
    json_object_set_new(body, "redis", json_string(names[redis]));
    if (redis == MG_FW_REDIS_FAILED)
        json_object_set_new(body, "redis_error", json_string(why));
}

static void on_done_single(mg_fwrite_t *w)
{
    areq_t *r = w->ud;
    pin(r);
    r->busy = false;
    if (r->s == NULL) { /* the client left */
    } else if (w->err != MG_OK && w->refused) {
        reply_error(r, 500, "features_table_refused", "%s", w->errmsg);
    } else if (w->err != MG_OK && w->unknown) {
        reply_error(r, 504, "write_outcome_unknown", "%s", w->errmsg);
    } else if (w->err != MG_OK) {
        reply_error(r, 503, "features_unavailable", "%s", w->errmsg);
    } else if (w->op == MG_FW_PUT) {
        /* no group with a value ({}, or only empty ones): the user has no features, nothing
         * is sent for them (miss), so there is no snapshot to name */
        mg_fval_t *v = json_object_size(w->docs[0]) ? mg_fval_from_json(w->docs[0]) : NULL;
        json_t *body = json_pack("{s:s,s:s,s:s?,s:I}", "app", r->app->name, "user", r->user, "hash",
                                 v ? v->hash : NULL, "bytes", (json_int_t)(v ? v->len : 0));
        add_redis(body, w->redis, w->redis_errmsg);
        reply_json(r, 200, body);
        mg_fval_unref(v);
    } else if (w->affected == 0) {
        reply_error(r, 404, "not_found", "app %s has no features for user %s", r->app->name,
                    r->user);
    } else if (w->op == MG_FW_DELETE) {
        json_t *body =
            json_pack("{s:s,s:s,s:b}", "app", r->app->name, "user", r->user, "deleted", 1);
        add_redis(body, w->redis, w->redis_errmsg);
        reply_json(r, 200, body);
    } else {
        json_error_t jerr;
        char why[256];
        json_t *raw = json_loads(w->got, 0, &jerr);
        json_t *doc = raw ? mg_fval_normalize(r->app, raw, false, why, sizeof(why)) : NULL;
        mg_fval_t *v = json_object_size(doc) ? mg_fval_from_json(doc) : NULL;
        reply_json(r, 200,
                   json_pack("{s:s,s:s,s:o?,s:s?}", "app", r->app->name, "user", r->user,
                             "features", raw ? json_incref(raw) : NULL, "hash",
                             v ? v->hash : NULL));
        mg_fval_unref(v);
        json_decref(doc);
        json_decref(raw);
    }
    mg_fwrite_free(w);
    unpin(r);
}

static void submit(areq_t *r, mg_fwrite_t *w, void (*done)(mg_fwrite_t *))
{
    w->base = r->base;
    w->done = done;
    w->ud = r;
    if (mg_fsource_write(r->src, w) != MG_OK) {
        mg_fwrite_free(w);
        reply_error(r, 503, "features_unavailable",
                    "feature writes need features.mariadb in gateway.json (or the gateway is "
                    "stopping)");
        return;
    }
    r->busy = true;
}

/* Validates one user's features; NULL with |why| when refused. |*bytes| (when not NULL) is
 * the size of the stored text. */
static json_t *validate(areq_t *r, const json_t *doc, char *why, size_t cap, size_t *bytes)
{
    json_t *n = mg_fval_normalize(r->app, doc, true, why, cap);
    if (n == NULL)
        return NULL;
    char *text = json_dumps(n, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_SORT_KEYS);
    size_t len = text ? strlen(text) : 0;
    free(text);
    size_t max = mg_fsource_conf(r->src)->max_header_bytes;
    if (len > max) {
        snprintf(why, cap, "features of %zu bytes exceed features.max_header_bytes (%zu)", len,
                 max);
        json_decref(n);
        return NULL;
    }
    if (bytes)
        *bytes = len;
    return n;
}

static void single_end(areq_t *r)
{
    mg_fwrite_op_t op = r->method == M_GET   ? MG_FW_GET
                        : r->method == M_PUT ? MG_FW_PUT
                                             : MG_FW_DELETE;
    mg_fwrite_t *w = mg_fwrite_new(r->app, op, 1);
    if (w == NULL) {
        reply_error(r, 503, "out_of_memory", "out of memory");
        return;
    }
    if (op == MG_FW_PUT) {
        json_error_t jerr;
        char why[300];
        size_t len = evbuffer_get_length(r->in);
        if (len == 0) { /* jansson would say "wrong arguments" */
            mg_fwrite_free(w);
            reply_error(r, 400, "bad_json",
                        "empty body: expected the features object {\"GROUP\": value, ...}");
            return;
        }
        json_t *doc = json_loadb((const char *)evbuffer_pullup(r->in, -1), len, JSON_FLAGS, &jerr);
        json_t *n = doc ? validate(r, doc, why, sizeof(why), NULL) : NULL;
        json_decref(doc);
        if (n == NULL) {
            mg_fwrite_free(w);
            if (doc == NULL)
                reply_error(r, 400, "bad_json", "body: %d:%d: %s", jerr.line, jerr.column,
                            jerr.text);
            else
                reply_error(r, 400, "bad_features", "%s", why);
            return;
        }
        w->docs[0] = n;
    }
    w->users[0] = strdup(r->user);
    w->n = w->users[0] ? 1 : 0;
    if (w->n == 0) {
        json_decref(w->docs[0]);
        mg_fwrite_free(w);
        reply_error(r, 503, "out_of_memory", "out of memory");
        return;
    }
    submit(r, w, on_done_single);
}

/* ---------- bulk ---------- */

static void bulk_reject(areq_t *r, const char *why)
{
    r->rejected++;
    if (json_array_size(r->errors) < MAX_ERRORS)
        json_array_append_new(r->errors,
                              json_pack("{s:I,s:s}", "line", (json_int_t)r->line_no, "error", why));
}

static void bulk_line(areq_t *r, const char *line, size_t len)
{
    r->line_no++;
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    if (len == 0)
        return; /* blank lines are allowed */
    json_error_t jerr;
    char why[300];
    json_t *row = json_loadb(line, len, JSON_FLAGS, &jerr);
    const json_t *user = row ? json_object_get(row, "user") : NULL;
    const json_t *feats = row ? json_object_get(row, "features") : NULL;
    if (row == NULL) {
        snprintf(why, sizeof(why), "not JSON (column %d: %s)", jerr.column, jerr.text);
        bulk_reject(r, why);
    } else if (!json_is_object(row) || json_object_size(row) != 2 || !json_is_string(user) ||
               feats == NULL) {
        bulk_reject(r, "expected {\"user\": \"ID\", \"features\": {...}}");
    } else if (!mg_fconf_is_user_id(json_string_value(user), json_string_length(user))) {
        bulk_reject(r, "user: expected 1-128 of [A-Za-z0-9_.@-]");
    } else {
        size_t bytes = 0;
        json_t *n = validate(r, feats, why, sizeof(why), &bytes);
        char *u = n ? strdup(json_string_value(user)) : NULL;
        if (n == NULL) {
            bulk_reject(r, why);
        } else if (u == NULL) {
            json_decref(n);
            bulk_reject(r, "out of memory");
        } else {
            r->batch->users[r->batch->n] = u;
            if (r->batch->n == 0)
                r->batch_first = r->line_no;
            r->batch_last = r->line_no;
            r->batch->docs[r->batch->n++] = n;
            r->batch_bytes += bytes;
        }
    }
    json_decref(row);
}

static void bulk_flush(areq_t *r);

static void bulk_reply(areq_t *r)
{
    json_t *body =
        json_pack("{s:s,s:I,s:I,s:O}", "app", r->app->name, "accepted", (json_int_t)r->accepted,
                  "rejected", (json_int_t)r->rejected, "errors", r->errors);
    if (r->db_failed && body)
        json_object_set_new(body, "database_error", json_string(r->dberr));
    if (r->unknown && body) /* sent, never answered: their Redis copies were dropped */
        json_object_set_new(body, "unknown", json_integer((json_int_t)r->unknown));
    if (r->redis_failed && body) { /* stored, but Redis may serve their old copies until TTL */
        json_object_set_new(body, "redis_not_refreshed", json_integer((json_int_t)r->redis_failed));
        json_object_set_new(body, "redis_error", json_string(r->redis_err));
    }
    reply_json(r, r->db_failed ? 503 : 200, body);
}

/* Gives the client back the window of |used| bytes of body taken from r->in. */
static void bulk_consume(areq_t *r, size_t used)
{
    if (r->s && r->unconsumed) { /* the client may send as much again */
        size_t c = used < r->unconsumed ? used : r->unconsumed;
        mg_srv_consume(r->s, c);
        r->unconsumed -= c;
    }
}

static void bulk_too_long(areq_t *r)
{
    char why[96];
    r->line_no++;
    snprintf(why, sizeof(why), "longer than %d bytes (one user's features per line)", MAX_LINE);
    bulk_reject(r, why);
}

/* Drops what is buffered of a too long line; true once its end (newline or body end) went. */
static bool bulk_skip(areq_t *r)
{
    struct evbuffer_ptr eol = evbuffer_search(r->in, "\n", 1, NULL);
    size_t n = eol.pos < 0 ? evbuffer_get_length(r->in) : (size_t)eol.pos + 1;
    evbuffer_drain(r->in, n);
    bulk_consume(r, n);
    return eol.pos >= 0 || r->ended;
}

/* Turns buffered lines into rows until a batch is in flight. A line longer than MAX_LINE is
 * one rejected line however it arrives (whole, or in pieces dropped as they come), so the
 * rows around it are stored and counted all the same. */
static void bulk_pump(areq_t *r)
{
    while (!r->busy && !r->replied) {
        if (r->batch == NULL && (r->batch = mg_fwrite_new(r->app, MG_FW_PUT, BATCH_ROWS)) == NULL) {
            reply_error(r, 503, "out_of_memory", "out of memory");
            return;
        }
        if (r->skipping) {
            if (!bulk_skip(r))
                return; /* the rest of the line is still to come */
            r->skipping = false;
            bulk_too_long(r);
            continue;
        }
        size_t len;
        char *line = evbuffer_readln(r->in, &len, EVBUFFER_EOL_LF);
        if (line == NULL && evbuffer_get_length(r->in) > MAX_LINE) {
            r->skipping = true; /* no newline in sight, or none at the body's end */
            continue;
        }
        if (line == NULL && r->ended && evbuffer_get_length(r->in)) { /* no final newline */
            len = evbuffer_get_length(r->in);
            line = malloc(len + 1);
            if (line) {
                evbuffer_remove(r->in, line, len);
                line[len] = '\0';
            }
        }
        if (line == NULL) {
            if (r->ended) {
                if (r->batch->n)
                    bulk_flush(r);
                else
                    bulk_reply(r);
            }
            return;
        }
        size_t used = len + (r->ended && evbuffer_get_length(r->in) == 0 ? 0 : 1);
        if (len > MAX_LINE)
            bulk_too_long(r);
        else
            bulk_line(r, line, len);
        free(line);
        bulk_consume(r, used);
        if (r->batch->n == BATCH_ROWS || r->batch_bytes >= BATCH_BYTES)
            bulk_flush(r);
    }
}

/* Names the lines of the batch in flight that MariaDB did not store, so the client can send
 * them again (rows that were rejected in that range are rejected again, harmlessly). The
 * entry goes in line order among the rejected lines already listed. Consecutive batches that
 * failed alike make one range, and ranges are always listed, past the first MAX_ERRORS
 * entries too: a client that sends again what the answer names must get every row back (an
 * outage of a minute fails a hundred batches). */
static void add_range_error(areq_t *r, size_t rows, bool unknown, const char *dberr)
{
    char why[400];
    bool extend = r->open_range && r->open_unknown == unknown && strcmp(r->open_err, dberr) == 0;
    r->open_rows = extend ? r->open_rows + rows : rows;
    snprintf(why, sizeof(why), "%zu rows in these lines %s: %s", r->open_rows,
             unknown ? "may or may not be stored" : "not stored", dberr);
    if (extend) {
        json_object_set_new(r->open_range, "last_line", json_integer((json_int_t)r->flight_last));
        json_object_set_new(r->open_range, "error", json_string(why));
        return;
    }
    json_t *e = json_pack("{s:I,s:I,s:s}", "line", (json_int_t)r->flight_first, "last_line",
                          (json_int_t)r->flight_last, "error", why);
    r->open_range = e;
    r->open_unknown = unknown;
    snprintf(r->open_err, sizeof(r->open_err), "%s", dberr);
    if (e == NULL)
        return;
    size_t i = json_array_size(r->errors);
    while (i > 0 && json_integer_value(json_object_get(json_array_get(r->errors, i - 1), "line")) >
                        (json_int_t)r->flight_first)
        i--;
    json_array_insert_new(r->errors, i, e); /* the array holds it while the request lives */
}

static void on_done_batch(mg_fwrite_t *w)
{
    areq_t *r = w->ud;
    pin(r);
    r->busy = false;
    if (w->err == MG_OK) {
        r->open_range = NULL; /* stored: a later failure starts a range of its own */
        r->accepted += w->n;
        if (w->redis == MG_FW_REDIS_FAILED) {
            r->redis_failed += w->n;
            snprintf(r->redis_err, sizeof(r->redis_err), "%s", w->redis_errmsg);
        }
    } else {
        r->db_failed = true;
        snprintf(r->dberr, sizeof(r->dberr), "%s", w->errmsg);
        if (w->unknown)
            r->unknown += w->n;
        else
            r->rejected += w->n;
        add_range_error(r, w->n, w->unknown, w->errmsg);
    }
    mg_fwrite_free(w);
    if (r->s)
        bulk_pump(r);
    unpin(r);
}

static void bulk_flush(areq_t *r)
{
    mg_fwrite_t *w = r->batch;
    r->batch = NULL;
    r->batch_bytes = 0;
    r->flight_first = r->batch_first, r->flight_last = r->batch_last;
    submit(r, w, on_done_batch);
}

/* ---------- handler ---------- */

static void on_request_route(areq_t *r, const mg_srv_req_t *req, const char *app, const char *rest);

static void on_request(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud)
{
    mg_fadmin_t *fa = ud;
    mg_fsource_t *src = fa->src;
    areq_t *r = calloc(1, sizeof(*r));
    if (r == NULL || (r->in = evbuffer_new()) == NULL || (r->errors = json_array()) == NULL) {
        if (r)
            areq_free(r);
        mg_srv_set_data(s, NULL);
        mg_srv_error(s, 503, "out_of_memory", "out of memory", NULL, NULL, 0);
        return;
    }
    r->src = src;
    r->s = s;
    r->pins = 1; /* this function's */
    r->ended = !req->has_body;
    mg_srv_set_data(s, r);
    r->base = fa->base; /* this stream's base: write completions come back here */
    const char *p = req->path + strlen(PREFIX);
    char app[65] = "";
    size_t alen = strcspn(p + (*p == '/'), "/?");
    const char *ap = p + (*p == '/');
    const char *rest = ap + alen;
    if (*p == '/' && alen > 0 && alen < sizeof(app))
        memcpy(app, ap, alen), app[alen] = '\0';
    on_request_route(r, req, app, rest);
    unpin(r);
}

/* Decodes the %XX escapes of |s| (|len| bytes) into |out| (NUL-terminated); the decoded length,
 * or -1 when an escape is malformed or the result does not fit in |cap|. Clients escape '@'
 * (urllib.parse.quote, encodeURIComponent), and an escaped id is the same user. */
static long unescape(const char *s, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++, n++) {
        if (n + 1 >= cap)
            return -1;
        if (s[i] != '%') {
            out[n] = s[i];
            continue;
        }
        int hi = i + 2 < len ? mg_hex_digit(s[i + 1]) : -1;
        int lo = hi >= 0 ? mg_hex_digit(s[i + 2]) : -1;
        if (lo < 0)
            return -1;
        out[n] = (char)(hi << 4 | lo);
        i += 2;
    }
    out[n] = '\0';
    return (long)n;
}

/* The rest of on_request: |r| is pinned by the caller. */
static void on_request_route(areq_t *r, const mg_srv_req_t *req, const char *app, const char *rest)
{
    mg_srv_stream_t *s = r->s;
    bool has_user = false;
    if (*rest == '/') {
        size_t ulen = strcspn(rest + 1, "/?");
        long n = rest[1 + ulen] == '/' ? -1 : unescape(rest + 1, ulen, r->user, sizeof(r->user));
        if (n < 0 || !mg_fconf_is_user_id(r->user, (size_t)n)) {
            reply_error(r, 400, "bad_user",
                        "the path must be " PREFIX "/{app}/{user} with a user id of 1-128 of "
                        "[A-Za-z0-9_.@-] (%%-escapes allowed)");
            return;
        }
        has_user = true;
    }
    if (app[0] == '\0') {
        reply_error(r, 404, "not_found",
                    "expected " PREFIX "/{app}/{user} (GET, PUT, DELETE) or " PREFIX
                    "/{app} (POST: bulk load of JSON lines)");
        return;
    }
    if ((r->app = mg_fconf_app(mg_fsource_conf(r->src), app)) == NULL) {
        reply_error(r, 404, "unknown_app",
                    "app '%s' has no features (add it to features.apps in gateway.json)", app);
        return;
    }
    const char *m = req->method;
    if (has_user && strcmp(m, "GET") == 0)
        r->method = M_GET;
    else if (has_user && strcmp(m, "PUT") == 0)
        r->method = M_PUT;
    else if (has_user && strcmp(m, "DELETE") == 0)
        r->method = M_DELETE;
    else if (!has_user && strcmp(m, "POST") == 0)
        r->method = M_BULK;
    else {
        mg_hdr_t allow = {"allow", has_user ? "GET, PUT, DELETE" : "POST", 5, has_user ? 16 : 4,
                          MG_HPACK_INDEX};
        r->replied = true;
        mg_srv_error(s, 405, "method_not_allowed",
                     has_user ? "a user's features answer GET, PUT and DELETE"
                              : "an app's features take POST (bulk load of JSON lines)",
                     NULL, &allow, 1);
        return;
    }
    if (r->ended) {
        if (r->method == M_BULK)
            bulk_pump(r);
        else
            single_end(r);
    }
}

static void on_body(mg_srv_stream_t *s, const uint8_t *data, size_t len)
{
    areq_t *r = mg_srv_data(s);
    if (r == NULL || r->replied) {
        mg_srv_consume(s, len);
        return;
    }
    r->received += len;
    if (r->method != M_BULK) {
        if (r->received > MAX_BODY) {
            r->unconsumed += len;
            reply_error(r, 413, "body_too_large", "one user's features are limited to %d bytes",
                        MAX_BODY);
            return;
        }
        evbuffer_add(r->in, data, len);
        mg_srv_consume(s, len);
        return;
    }
    evbuffer_add(r->in, data, len);
    r->unconsumed += len; /* consumed line by line as rows are taken */
    pin(r);
    bulk_pump(r);
    unpin(r);
}

static void on_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    areq_t *r = mg_srv_data(s);
    if (r == NULL || r->replied || r->ended) /* ended: a request without body started already */
        return;
    r->ended = true;
    pin(r);
    if (r->method == M_BULK)
        bulk_pump(r);
    else
        single_end(r);
    unpin(r);
}

static void on_drain(mg_srv_stream_t *s)
{
}

static void on_close(mg_srv_stream_t *s, bool complete)
{
    areq_t *r = mg_srv_data(s);
    if (r == NULL)
        return;
    mg_srv_set_data(s, NULL);
    r->s = NULL;
    if (r->method == M_BULK && !r->replied)
        /* the stored batches stay: the operator must know how far it got */
        MG_LOG(MG_LOG_WARN, "features",
               "bulk load of app %s cut short: the client closed or reset it after %zu lines, "
               "%zu rows stored%s; stored batches stay, send the rest again",
               r->app->name, r->line_no, r->accepted,
               r->busy ? " and one batch still being stored" : "");
    if (!r->busy && r->pins == 0) /* else the job's completion or the caller frees it */
        areq_free(r);
}

static const mg_srv_handler_t handler = {
    .on_request = on_request,
    .on_body = on_body,
    .on_end = on_end,
    .on_drain = on_drain,
    .on_close = on_close,
};

const mg_srv_handler_t *mg_fadmin_handler(void)
{
    return &handler;
}
