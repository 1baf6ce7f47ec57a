/*
 * tests/unit/test_features_reply.c - Redis replies built in the worker's pool (features/rreply.h)
 * and the snapshot text written from them (features/features.c, "Snapshot text").
 *
 * Differential: random replies of every type (nested arrays, nil, integers, status, errors,
 * strings with quotes, control bytes, NUL, 0x7f, UTF-8 and invalid bytes), each fed to the
 * pool's reader in random pieces (a reply split across reads), must build the same tree as
 * hiredis's own functions; and random reply sets for an app's groups must give the very bytes
 * of the jansson path (mg_fval_from_json of what group_json builds from hiredis's tree).
 * Includes features.c for its static snapshot and RESP functions, and rreply.c with the pool forced
 * on, so that the pool itself is what runs under ASan here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MG_RREPLY_FORCE_POOL
#include "features/features.c"
#include "features/rreply.c"

/* ---------- random RESP ---------- */

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static unsigned rnd(unsigned n)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (unsigned)(rng % n);
}

typedef struct out {
    char *b;
    size_t n, cap;
} out_t;

static void put(out_t *o, const void *s, size_t n)
{
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2;
        o->b = realloc(o->b, o->cap);
        assert_non_null(o->b);
    }
    memcpy(o->b + o->n, s, n);
    o->n += n;
}

static void putf(out_t *o, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    put(o, tmp, (size_t)n);
}

static void bulk(out_t *o, const char *s, size_t n)
{
    putf(o, "$%zu\r\n", n);
    put(o, s, n);
    put(o, "\r\n", 2);
}

/* Up to |max| bytes: mostly a short word, now and then with what JSON has to escape; when
 * |any|, also NUL and bytes that are not ASCII (UTF-8 or not). */
static size_t some_bytes(char *buf, size_t max, bool any)
{
    static const char *const odd[] = {"\"",
                                      "\\",
                                      "\n",
                                      "\t",
                                      "\b",
                                      "\f",
                                      "\r",
                                      "\x01",
                                      "\x1f",
                                      "\x7f",
                                      "/",
                                      "\\u00e9", /* ASCII up to here */
                                      "\xc3\xa9",
                                      "\xe2\x82\xac",
                                      "\xf0\x9f\x98\x80",
                                      "\xff",
                                      "\xc3"};
    size_t n = 0, want = rnd(4) == 0 ? rnd((unsigned)max) : rnd(12);
    while (n < want) {
        if (rnd(8) == 0) {
            const char *s = any && rnd(20) == 0 ? "\0" : odd[rnd(any ? 17 : 12)];
            size_t k = s[0] ? strlen(s) : 1;
            if (n + k > max)
                break;
            memcpy(buf + n, s, k);
            n += k;
        } else {
            buf[n++] = "abcdefghijklmnopqrstuvwxyz0123456789_ -:.ABCZ"[rnd(45)];
        }
    }
    return n;
}

static void any_reply(out_t *o, int depth)
{
    char s[300];
    switch (rnd(depth < 3 ? 8 : 6)) {
    case 0:
        put(o, "$-1\r\n", 5);
        break;
    case 1:
        putf(o, ":%lld\r\n", rnd(3) == 0 ? -(long long)rnd(1000000) : (long long)rnd(1000));
        break;
    case 2:
        putf(o, "%s", rnd(2) ? "+OK\r\n" : "+QUEUED\r\n");
        break;
    case 3:
        putf(o, "%s", "-WRONGTYPE Operation against a key\r\n");
        break;
    case 4:
    case 5:
        bulk(o, s, some_bytes(s, sizeof(s), true));
        break;
    case 6:
        putf(o, "%s", rnd(2) ? "*-1\r\n" : "*0\r\n");
        break;
    default: {
        unsigned n = 1 + rnd(6);
        putf(o, "*%u\r\n", n);
        for (unsigned i = 0; i < n; i++)
            any_reply(o, depth + 1);
    }
    }
}

/* A reply as Redis might give it to the group's read: mostly a well-formed one (HGETALL,
 * LRANGE, GET), often with one element of another kind, sometimes anything at all. */
static void group_reply(out_t *o, const mg_fgroup_t *g)
{
    static const char *const docs[] = {"[0.5,2,-1e-3]",
                                       "{\"b\":1,\"a\":[true,null]}",
                                       "\"caf\\u00e9\"",
                                       "\"caf\xc3\xa9\"",
                                       "{\"k\":\"\\u0001\\\"\"}",
                                       "[1,",
                                       "not json",
                                       "7",
                                       "{\"z\":{\"y\":[{}]}}",
                                       "\"\xff\""};
    char s[300];
    if (rnd(10) == 0) {
        any_reply(o, 0);
        return;
    }
    bool any = rnd(3) == 0; /* else only ASCII: the direct path's case */
    if (g->type == MG_FGROUP_JSON) {
        const char *d = docs[rnd(sizeof(docs) / sizeof(docs[0]))];
        bulk(o, d, strlen(d));
        return;
    }
    unsigned n = rnd(8) == 0 ? 0 : 1 + rnd(g->type == MG_FGROUP_HASH ? 12 : 50);
    if (g->type == MG_FGROUP_HASH)
        n = 2 * n - (n && rnd(20) == 0); /* now and then an odd count */
    putf(o, "*%u\r\n", n);
    size_t last = 0;
    char prev[300];
    for (unsigned i = 0; i < n; i++) {
        unsigned k = rnd(40);
        if (k == 0 && any) {
            any_reply(o, 1);
        } else if (k == 1 && g->type == MG_FGROUP_HASH && i % 2 == 0 && i > 0) {
            bulk(o, prev, last); /* a field twice */
        } else if (k == 2 && any && g->type == MG_FGROUP_HASH) {
            memset(s, 'f', 260); /* a field name jansson's path cuts at 255 bytes */
            s[259] = (char)('a' + rnd(3));
            bulk(o, s, 255 + rnd(6));
        } else {
            size_t m = some_bytes(s, 40, any);
            if (i % 2 == 0) {
                memcpy(prev, s, m);
                last = m;
            }
            bulk(o, s, m);
        }
    }
}

/* ---------- parsing ---------- */

static redisReply *parse_whole(const out_t *o)
{
    redisReader *r = redisReaderCreate();
    void *reply = NULL;
    assert_int_equal(redisReaderFeed(r, o->b, o->n), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    assert_non_null(reply);
    redisReaderFree(r);
    return reply;
}

/* The reply, fed to a pool reader in random pieces; the reader stays with the caller, who
 * frees the reply with pool_free_reply. */
static redisReply *parse_split(mg_rreply_pool_t *p, redisReader **rd, const out_t *o)
{
    redisReader *r = *rd = redisReaderCreate();
    mg_rreply_attach(r, p);
    void *reply = NULL;
    for (size_t off = 0; off < o->n;) {
        assert_null(reply); /* complete only with its last byte */
        size_t k = 1 + rnd(rnd(2) ? 8 : (unsigned)(o->n - off));
        k = k > o->n - off ? o->n - off : k;
        assert_int_equal(redisReaderFeed(r, o->b + off, k), REDIS_OK);
        off += k;
        assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    }
    assert_non_null(reply);
    return reply;
}

static void pool_free_reply(redisReader *r, redisReply *reply, const mg_rreply_pool_t *p)
{
    r->fn->freeObject(reply); /* what hiredis's async API does after the callback */
    redisReaderFree(r);
    assert_int_equal(p->used, 0);
    assert_null(p->extra);
}

static void same_tree(const redisReply *want, const redisReply *got)
{
    assert_int_equal(got->type, want->type);
    assert_true(got->integer == want->integer);
    assert_int_equal(got->len, want->len);
    if (want->str == NULL) {
        assert_null(got->str);
    } else {
        assert_non_null(got->str);
        assert_memory_equal(got->str, want->str, want->len);
        assert_int_equal(got->str[got->len], '\0');
    }
    assert_int_equal(got->elements, want->elements);
    assert_true((got->element == NULL) == (want->element == NULL));
    for (size_t i = 0; i < want->elements; i++)
        same_tree(want->element[i], got->element[i]);
}

/* ---------- tests ---------- */

static void trees_match_hiredis(void **state)
{
    (void)state;
    mg_rreply_pool_t *p = mg_rreply_pool_new();
    assert_non_null(p);
    p->nested_ok = true; /* any RESP2 tree, as hiredis builds it */
    for (int it = 0; it < 20000; it++) {
        out_t o = {0};
        any_reply(&o, 0);
        redisReply *want = parse_whole(&o);
        redisReader *r;
        redisReply *got = parse_split(p, &r, &o);
        same_tree(want, got);
        pool_free_reply(r, got, p);
        freeReplyObject(want);
        free(o.b);
    }
    mg_rreply_pool_free(p);
}

static void large_replies_and_partial_ones(void **state)
{
    (void)state;
    mg_rreply_pool_t *p = mg_rreply_pool_new();
    out_t o = {0};
    putf(&o, "*%u\r\n", 3000u); /* far beyond the pool's own buffer */
    for (unsigned i = 0; i < 3000; i++)
        bulk(&o, "item000123", 10);
    char *big = malloc(100000);
    memset(big, 'x', 100000);
    bulk(&o, big, 100000);
    free(big);
    redisReader *r = redisReaderCreate();
    mg_rreply_attach(r, p);
    void *reply = NULL;
    assert_int_equal(redisReaderFeed(r, o.b, o.n), REDIS_OK);
    for (int i = 0; i < 2; i++) { /* the array, then the big string: one at a time */
        assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
        redisReply *x = reply;
        assert_non_null(x);
        if (i == 0) {
            assert_int_equal(x->elements, 3000);
            assert_string_equal(x->element[2999]->str, "item000123");
        } else {
            assert_int_equal(x->len, 100000);
        }
        r->fn->freeObject(x);
        assert_null(p->extra);
    }
    /* a reply cut short is freed with its reader (no leak under ASan) */
    assert_int_equal(redisReaderFeed(r, "*3\r\n$2\r\nab\r\n:1\r\n", 16), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    assert_null(reply);
    redisReaderFree(r);
    assert_int_equal(p->used, 0);
    free(o.b);
    mg_rreply_pool_free(p);
}

/* An array count no feature lookup can need, or a nested array (a broken or hostile server),
 * fails the reader at once, before any element vector is allocated for it. */
static void absurd_array_count_is_refused(void **state)
{
    (void)state;
    mg_rreply_pool_t *p = mg_rreply_pool_new();
    redisReader *r = redisReaderCreate();
    mg_rreply_attach(r, p);
    void *reply = NULL;
    assert_null(mg_rreply_refused(p));
    assert_int_equal(redisReaderFeed(r, "*100000000\r\n", 12), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_ERR);
    assert_null(reply);
    assert_null(p->extra); /* nothing was allocated for it */
    /* the operator log says why, not hiredis's "Out of memory" */
    assert_string_equal(mg_rreply_refused(p),
                        "refused a reply: an array of 100000000 elements (at most 1048576)");
    assert_null(mg_rreply_refused(p)); /* asked once */
    redisReaderFree(r);
    /* nor is an array inside an array: no feature lookup's reply nests */
    r = redisReaderCreate();
    mg_rreply_attach(r, p);
    assert_int_equal(redisReaderFeed(r, "*1\r\n*1\r\n:1\r\n", 12), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_ERR);
    assert_null(reply);
    assert_string_equal(mg_rreply_refused(p), "refused a reply: an array inside an array");
    redisReaderFree(r);
    /* the largest count allowed still builds */
    r = redisReaderCreate();
    mg_rreply_attach(r, p);
    char head[32];
    int n = snprintf(head, sizeof(head), "*%d\r\n", MAX_ELEMENTS);
    assert_int_equal(redisReaderFeed(r, head, (size_t)n), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    assert_null(reply); /* waiting for its elements */
    redisReaderFree(r);
    mg_rreply_pool_free(p);
}

static const char *APP = "{\"redis\": {}, \"apps\": {\"digits\": {\"groups\": ["
                         "{\"name\": \"recent\", \"type\": \"list\", \"max_items\": 50},"
                         "{\"name\": \"profile\", \"type\": \"hash\"},"
                         "{\"name\": \"vec\", \"type\": \"json\"},"
                         "{\"name\": \"a_first\", \"type\": \"list\"}]}}}";

/* The features section of APP (the caller frees it). */
static mg_fconf_t *app_conf(void)
{
    json_error_t jerr;
    json_t *cdoc = json_loads(APP, 0, &jerr);
    mg_jerr_t e = {.source = "features"};
    mg_fconf_t *c = mg_fconf_parse(cdoc, NULL, &e);
    json_decref(cdoc);
    assert_non_null(c);
    assert_null(e.buf);
    return c;
}

static void snapshots_match_jansson(void **state)
{
    (void)state;
    mg_fconf_t *c = app_conf();
    const mg_fapp_t *a = mg_fconf_app(c, "digits");
    mg_rreply_pool_t *p = mg_rreply_pool_new();
    p->nested_ok = true; /* a server's odd shapes (a nested array where a list belongs) too */
    size_t plain = 0;
    for (int it = 0; it < 20000; it++) {
        fetch_t *fx = calloc(1, sizeof(*fx));
        fx->app = a;
        json_t *doc = json_object();
        for (size_t gi = 0; gi < a->ngroups; gi++) {
            out_t o = {0};
            group_reply(&o, &a->groups[gi]);
            redisReply *want = parse_whole(&o);
            redisReader *r;
            redisReply *got = parse_split(p, &r, &o);
            same_tree(want, got);
            if (want->type != REDIS_REPLY_ERROR) { /* an error fails the lookup instead */
                size_t before = fx->tlen;
                add_group(fx, gi, got);
                plain += a->groups[gi].type != MG_FGROUP_JSON && fx->tlen > before &&
                         got->type == REDIS_REPLY_ARRAY && is_plain(&a->groups[gi], got);
                json_t *v = group_json(&a->groups[gi], want, NULL);
                if (v)
                    json_object_set_new(doc, a->groups[gi].name, v);
            }
            pool_free_reply(r, got, p);
            freeReplyObject(want);
            free(o.b);
        }
        mg_fval_t *ref = mg_fval_from_json(doc), *val = snapshot(fx);
        assert_non_null(ref);
        assert_non_null(val);
        assert_string_equal(val->text, ref->text);
        assert_string_equal(val->hash, ref->hash);
        mg_fval_unref(ref);
        mg_fval_unref(val);
        json_decref(doc);
        free(fx->text);
        free(fx);
    }
    assert_true(plain > 20000); /* most groups took the direct path, not jansson's */
    mg_rreply_pool_free(p);
    mg_fconf_free(c);
}

/* The snapshot of |vec|, the text of the json key, written by a pipeline into Redis next to a
 * list of one item (the hash and the other list have no key: they read as empty). */
static mg_fval_t *redis_snapshot(const mg_fapp_t *a, const char *vec)
{
    fetch_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->app = a;
    for (size_t gi = 0; gi < a->ngroups; gi++) {
        out_t o = {0};
        const mg_fgroup_t *g = &a->groups[gi];
        if (g->type == MG_FGROUP_JSON)
            bulk(&o, vec, strlen(vec));
        else if (strcmp(g->name, "recent") == 0)
            putf(&o, "*1\r\n$1\r\na\r\n");
        else
            putf(&o, "*0\r\n"); /* HGETALL, LRANGE of a key that does not exist */
        redisReply *r = parse_whole(&o);
        add_group(fx, gi, r);
        freeReplyObject(r);
        free(o.b);
    }
    mg_fval_t *v = snapshot(fx);
    assert_non_null(v);
    free(fx->text);
    free(fx);
    return v;
}

/* The snapshot of a MariaDB row |row|, read (lenient) or written by the admin API (strict). */
static mg_fval_t *mariadb_snapshot(const mg_fapp_t *a, const char *row, bool strict)
{
    json_error_t jerr;
    char why[256];
    json_t *doc = json_loads(row, 0, &jerr);
    assert_non_null(doc);
    json_t *n = mg_fval_normalize(a, doc, strict, why, sizeof(why));
    assert_non_null(n);
    mg_fval_t *v = mg_fval_from_json(n);
    assert_non_null(v);
    json_decref(n);
    json_decref(doc);
    return v;
}

/* The same features give the same bytes from Redis as from MariaDB when a group is empty: a
 * json key of "{}" was sent as "vec":{} while MariaDB's copy left the group out (false
 * training/serving skew). */
static void empty_groups_read_as_from_mariadb(void **state)
{
    static const struct {
        const char *redis, *row_vec, *want;
    } cases[] = {
        {"{}", "{}", "{\"recent\":[\"a\"]}"},
        {"[]", "[]", "{\"recent\":[\"a\"]}"},
        {" { }\n", "{ }", "{\"recent\":[\"a\"]}"},
        {"\t[ ]\r\n", "[]", "{\"recent\":[\"a\"]}"},
        {"null", "null", "{\"recent\":[\"a\"],\"vec\":null}"},
        {"\"\"", "\"\"", "{\"recent\":[\"a\"],\"vec\":\"\"}"},
        {"0", "0", "{\"recent\":[\"a\"],\"vec\":0}"},
        {"false", "false", "{\"recent\":[\"a\"],\"vec\":false}"},
        {" [ {} ] ", "[{}]", "{\"recent\":[\"a\"],\"vec\":[{}]}"}, /* only the top level */
        {"{\"a\": []}", "{\"a\":[]}", "{\"recent\":[\"a\"],\"vec\":{\"a\":[]}}"},
    };
    (void)state;
    mg_fconf_t *c = app_conf();
    const mg_fapp_t *a = mg_fconf_app(c, "digits");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char row[256];
        snprintf(row, sizeof(row),
                 "{\"recent\": [\"a\"], \"profile\": {}, \"a_first\": [], \"vec\": %s}",
                 cases[i].row_vec);
        mg_fval_t *redis = redis_snapshot(a, cases[i].redis);
        mg_fval_t *db = mariadb_snapshot(a, row, false), *put = mariadb_snapshot(a, row, true);
        assert_string_equal(redis->text, cases[i].want);
        assert_string_equal(db->text, cases[i].want);
        assert_string_equal(put->text, cases[i].want);
        assert_string_equal(redis->hash, db->hash);
        mg_fval_unref(redis);
        mg_fval_unref(db);
        mg_fval_unref(put);
    }
    /* a json key that is not JSON (MariaDB cannot hold one) is left out, as before */
    mg_fval_t *v = redis_snapshot(a, "{not json");
    assert_string_equal(v->text, "{\"recent\":[\"a\"]}");
    mg_fval_unref(v);
    mg_fconf_free(c);
}

static void resp_without_printf(void **state)
{
    (void)state;
    static const size_t nums[] = {0, 7, 9, 10, 49, 100, 4294967295u, SIZE_MAX};
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        char got[64], want[64];
        *put_dec(got, nums[i]) = '\0';
        snprintf(want, sizeof(want), "%zu", nums[i]);
        assert_string_equal(got, want);
    }
    char cmd[64];
    char *e = resp_bulk(resp_len(cmd, '*', 12), "LRANGE", 6);
    assert_int_equal(e - cmd, 17);
    assert_memory_equal(cmd, "*12\r\n$6\r\nLRANGE\r\n", 17);
}

/* An error reply's text for a log line: cut to fit, control and non-ASCII bytes as '?'; and
 * what to check when a handshake step is refused. */
static void reply_text_is_printable(void **state)
{
    (void)state;
    assert_string_equal(mg_rreply_hint("AUTH refused (WRONGPASS invalid username-password pair)"),
                        "; check features.redis.password_file");
    assert_string_equal(mg_rreply_hint("SELECT refused (ERR DB index is out of range)"),
                        "; check features.redis.db");
    assert_string_equal(mg_rreply_hint("PING refused (NOAUTH Authentication required.)"),
                        "; Redis wants a password: set features.redis.password_file");
    assert_string_equal(mg_rreply_hint("cannot connect (Connection refused)"), "");
    redisReply r = {.type = REDIS_REPLY_ERROR};
    char out[32];
    r.str = "WRONGPASS bad\r\n\x01\xc3\xa9";
    r.len = strlen(r.str);
    mg_rreply_text(&r, out, sizeof(out));
    assert_string_equal(out, "WRONGPASS bad?????");
    mg_rreply_text(&r, out, 6);
    assert_string_equal(out, "WRONG");
    mg_rreply_text(&r, out, 1);
    assert_string_equal(out, "");
    r.type = REDIS_REPLY_INTEGER;
    mg_rreply_text(&r, out, sizeof(out));
    assert_string_equal(out, "");
    r.type = REDIS_REPLY_STATUS;
    r.str = "OK";
    r.len = 2;
    mg_rreply_text(&r, out, sizeof(out));
    assert_string_equal(out, "OK");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(trees_match_hiredis),
        cmocka_unit_test(large_replies_and_partial_ones),
        cmocka_unit_test(absurd_array_count_is_refused),
        cmocka_unit_test(snapshots_match_jansson),
        cmocka_unit_test(empty_groups_read_as_from_mariadb),
        cmocka_unit_test(resp_without_printf),
        cmocka_unit_test(reply_text_is_printable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
