/*
 * tests/unit/test_features_value.c - feature snapshots (features/fvalue.h): normalization
 * against an app's groups (strict for writes, lenient for reads), the canonical text and its
 * documented hash, and the "features" config section (features/fconf.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "features/fconf.h"
#include "features/fvalue.h"

static char reported[2048]; /* the problems of the last conf_of, "features: path: message" lines */

static mg_fconf_t *conf_of(const char *text)
{
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    assert_non_null(doc);
    mg_jerr_t e = {.source = "features"};
    mg_fconf_t *c = mg_fconf_parse(doc, NULL, &e);
    json_decref(doc);
    snprintf(reported, sizeof(reported), "%s", e.buf ? e.buf : "");
    assert_true(c == NULL || e.count == 0);
    free(e.buf);
    return c;
}

static const char *APP = "{\"redis\": {}, \"apps\": {\"digits\": {\"groups\": ["
                         "{\"name\": \"profile\", \"type\": \"hash\"},"
                         "{\"name\": \"recent\", \"type\": \"list\", \"max_items\": 3},"
                         "{\"name\": \"vec\", \"type\": \"json\"}]}}}";

static char *normalized(const mg_fapp_t *a, const char *doc_text, bool strict, char *why)
{
    json_error_t jerr;
    json_t *doc = json_loads(doc_text, 0, &jerr);
    assert_non_null(doc);
    json_t *n = mg_fval_normalize(a, doc, strict, why, 256);
    json_decref(doc);
    if (n == NULL)
        return NULL;
    mg_fval_t *v = mg_fval_from_json(n);
    json_decref(n);
    char *s = strdup(v->text);
    mg_fval_unref(v);
    return s;
}

static void canonical_text(void **state)
{
    mg_fconf_t *c = conf_of(APP);
    assert_non_null(c);
    const mg_fapp_t *a = mg_fconf_app(c, "digits");
    char why[256];
    char *s = normalized(a,
                         "{\"vec\": [0.5, 2], \"recent\": [\"a\", 7, true, \"d\"],"
                         " \"profile\": {\"z\": 1, \"a\": \"x\", \"caf\\u00e9\": \"ol\\u00e9\"}}",
                         false, why);
    assert_non_null(s);
    /* keys sorted, compact, ASCII; scalars as strings; a read cuts a list to max_items */
    assert_string_equal(s, "{\"profile\":{\"a\":\"x\",\"caf\\u00e9\":\"ol\\u00e9\",\"z\":\"1\"},"
                           "\"recent\":[\"a\",\"7\",\"true\"],\"vec\":[0.5,2]}");
    free(s);
    s = normalized(a, "{\"profile\": {}, \"recent\": []}", true, why); /* empty groups dropped */
    assert_string_equal(s, "{}");
    free(s);
    mg_fconf_free(c);
}

static void strict_and_lenient(void **state)
{
    mg_fconf_t *c = conf_of(APP);
    const mg_fapp_t *a = mg_fconf_app(c, "digits");
    char why[256];
    assert_null(normalized(a, "{\"other\": 1}", true, why));
    assert_non_null(strstr(why, "unknown group \"other\""));
    assert_null(normalized(a, "{\"recent\": \"x\"}", true, why));
    assert_null(normalized(a, "{\"profile\": {\"a\": [1]}}", true, why));
    /* a write of more items than max_items (3) is refused, naming the group and the counts */
    assert_null(normalized(a, "{\"recent\": [\"a\", \"b\", \"c\", \"d\"]}", true, why));
    assert_string_equal(why, "group \"recent\" has 4 items, more than its max_items (3); send at "
                             "most 3, newest first");
    char *three = normalized(a, "{\"recent\": [\"a\", \"b\", \"c\"]}", true, why);
    assert_string_equal(three, "{\"recent\":[\"a\",\"b\",\"c\"]}");
    free(three);
    char *s = normalized(a,
                         "{\"other\": 1, \"recent\": \"x\", \"profile\": {\"a\": [1], "
                         "\"b\": 2}}",
                         false, why);
    assert_string_equal(s, "{\"profile\":{\"b\":\"2\"}}");
    free(s);
    mg_fconf_free(c);
}

static void empty_values(void **state)
{
    static const char *const empty[] = {"{}", "[]", " { } ", "[\n]"};
    static const char *const values[] = {"null", "\"\"",       "0",   "false", "[{}]",
                                         "[[]]", "{\"a\":{}}", "[0]", "\" \""};
    json_error_t jerr;
    for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
        json_t *v = json_loads(empty[i], JSON_DECODE_ANY, &jerr);
        assert_non_null(v);
        assert_true(mg_fval_is_empty(v));
        json_decref(v);
    }
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        json_t *v = json_loads(values[i], JSON_DECODE_ANY, &jerr);
        assert_non_null(v);
        assert_false(mg_fval_is_empty(v));
        json_decref(v);
    }
}

/* {} and [] are left out whatever the group's type, in writes (strict) and reads; other
 * values of a json group are kept. */
static void empty_groups_are_left_out(void **state)
{
    mg_fconf_t *c = conf_of(APP);
    const mg_fapp_t *a = mg_fconf_app(c, "digits");
    char why[256];
    for (int strict = 0; strict < 2; strict++) {
        char *s = normalized(a, "{\"vec\": {}, \"recent\": [\"a\"]}", strict, why);
        assert_string_equal(s, "{\"recent\":[\"a\"]}");
        free(s);
        s = normalized(a, "{\"vec\": [], \"profile\": {}}", strict, why);
        assert_string_equal(s, "{}");
        free(s);
        s = normalized(a, "{\"vec\": null}", strict, why);
        assert_string_equal(s, "{\"vec\":null}");
        free(s);
        s = normalized(a, "{\"vec\": \"\"}", strict, why);
        assert_string_equal(s, "{\"vec\":\"\"}");
        free(s);
    }
    /* a read skips what a hash or list may not hold: nothing left is an empty group too */
    char *s = normalized(a, "{\"profile\": {\"a\": null}, \"recent\": [[1]]}", false, why);
    assert_string_equal(s, "{}");
    free(s);
    mg_fconf_free(c);
}

static void hash_is_siphash_of_the_text(void **state)
{
    mg_fval_t *v = mg_fval_new("{}", 2);
    char again[17];
    mg_fval_hash("{}", 2, again);
    assert_int_equal(strlen(v->hash), 16);
    assert_string_equal(v->hash, again);
    mg_fval_t *w = mg_fval_new("{\"a\":1}", 7);
    assert_string_not_equal(v->hash, w->hash);
    mg_fval_ref(w);
    mg_fval_unref(w);
    mg_fval_unref(w);
    mg_fval_unref(v);
    mg_fval_unref(NULL);
}

/* A copy (the configuration handed to each worker, a reload's) holds the passwords read at the
 * check: a password file rotated or broken since must not make the copy fail, which the gateway
 * reported as "out of memory". */
static void dup_keeps_the_secrets_read(void **state)
{
    (void)state;
    char dir[] = "/tmp/mg-fconf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char file[64];
    snprintf(file, sizeof(file), "%s/redis.pw", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs("first-secret\n", f);
    fclose(f);
    json_error_t jerr;
    json_t *doc = json_loads("{\"redis\": {\"password_file\": \"redis.pw\"}, \"apps\": "
                             "{\"a\": {\"groups\": [{\"name\": \"g\", \"type\": \"json\"}]}}}",
                             0, &jerr);
    assert_non_null(doc);
    mg_jerr_t je = {.source = "features"};
    mg_fconf_t *c = mg_fconf_parse(doc, dir, &je);
    json_decref(doc);
    assert_non_null(c);
    assert_int_equal(je.count, 0);
    assert_string_equal(c->redis.password, "first-secret");
    f = fopen(file, "w"); /* now two lines: refused if it were read again */
    assert_non_null(f);
    fputs("a\nb\n", f);
    fclose(f);
    mg_fconf_t *d = mg_fconf_dup(c);
    assert_non_null(d);
    assert_string_equal(d->redis.password, "first-secret");
    assert_ptr_not_equal(d->redis.password, c->redis.password);
    unlink(file);
    mg_fconf_t *e = mg_fconf_dup(d); /* and gone */
    assert_non_null(e);
    assert_string_equal(e->redis.password, "first-secret");
    mg_fconf_free(e);
    mg_fconf_free(d);
    mg_fconf_free(c);
    rmdir(dir);
}

static void config_defaults_and_errors(void **state)
{
    mg_fconf_t *c = conf_of(APP);
    assert_non_null(c);
    assert_string_equal(c->user_header, "x-user-id");
    assert_int_equal(c->max_header_bytes, 8192);
    assert_true(c->redis.on);
    assert_false(c->mariadb.on);
    assert_string_equal(c->redis.host, "127.0.0.1");
    assert_int_equal(c->local.ttl_ms, 1000);
    const mg_fapp_t *a = mg_fconf_app(c, "digits");
    assert_int_equal(a->timeout_ms, 5);
    assert_int_equal(mg_fconf_timeout_ms(a, "production"), 5);
    assert_null(mg_fconf_app(c, "other"));
    mg_fconf_t *d = mg_fconf_dup(c);
    assert_non_null(d);
    assert_int_equal(mg_fconf_app(d, "digits")->ngroups, 3);
    mg_fconf_free(d);
    mg_fconf_free(c);

    c = conf_of("{\"user_header\": \"X-Unit\", \"mariadb\": {\"table\": \"t1\"}, \"apps\": "
                "{\"a\": {\"timeout_ms\": 7, \"timeout_ms_by_env\": {\"staging\": 40}, "
                "\"groups\": [{\"name\": \"g\", \"type\": \"json\"}]}}}");
    assert_non_null(c);
    assert_string_equal(c->user_header, "x-unit");
    assert_int_equal(mg_fconf_timeout_ms(mg_fconf_app(c, "a"), "staging"), 40);
    assert_int_equal(mg_fconf_timeout_ms(mg_fconf_app(c, "a"), "production"), 7);
    mg_fconf_free(c);

    assert_null(conf_of("{\"apps\": {\"a\": {\"groups\": [{\"name\": \"g\", \"type\": \"json\"}]}},"
                        " \"redis\": {\"port\": 0, \"bogus\": 1}}"));
    assert_non_null(strstr(reported, "redis.port: expected an integer 1-65535"));
    assert_non_null(strstr(reported, "redis.bogus: unknown key"));
    assert_null(conf_of("{\"apps\": {}}"));
    assert_non_null(strstr(reported, "neither \"redis\" nor \"mariadb\""));
    assert_non_null(strstr(reported, "apps: expected an object"));
    assert_null(conf_of("{\"redis\": {}, \"apps\": {\"a\": {\"groups\": [{\"name\": \"g\", "
                        "\"type\": \"hash\", \"max_items\": 2}, {\"name\": \"g\", \"type\": "
                        "\"list\"}]}}}"));
    assert_non_null(strstr(reported, "apps.a.groups[0].max_items: only a \"list\" group"));
    assert_non_null(strstr(reported, "apps.a.groups[1]: group \"g\" given twice"));
}

static void user_ids(void **state)
{
    assert_true(mg_fconf_is_user_id("user-1_a.b@c", 12));
    assert_false(mg_fconf_is_user_id("", 0));
    assert_false(mg_fconf_is_user_id("a:b", 3));
    assert_false(mg_fconf_is_user_id("a b", 3));
    char long_id[130];
    memset(long_id, 'u', sizeof(long_id));
    assert_true(mg_fconf_is_user_id(long_id, 128));
    assert_false(mg_fconf_is_user_id(long_id, 129));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(canonical_text),
        cmocka_unit_test(strict_and_lenient),
        cmocka_unit_test(empty_values),
        cmocka_unit_test(empty_groups_are_left_out),
        cmocka_unit_test(hash_is_siphash_of_the_text),
        cmocka_unit_test(config_defaults_and_errors),
        cmocka_unit_test(dup_keeps_the_secrets_read),
        cmocka_unit_test(user_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
