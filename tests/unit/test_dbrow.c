/*
 * tests/unit/test_dbrow.c - access-log lines to request_log rows (gateway/dbrow.h): every field
 * of a record written by mg_reqlog_format comes back as the bytes MariaDB must store (quotes,
 * backslashes, control characters, invalid UTF-8, long fields cut at a character), what is no
 * record is refused, the values agree with jansson's reading of the same line, and a spool
 * written by the previous version (JSON lines, read back with jansson) replays line for line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/dbrow.h"
#include "gateway/reqlog.h"
#include "gateway/spool.h"
#include "sample_rec.h"

/* The shared sample, with the fields only the database row has to get right set too. */
static mg_reqlog_rec_t base_rec(void)
{
    mg_reqlog_rec_t r = mg_test_sample_rec();
    r.id = "00112233445566770000000000000abc";
    r.upstream_us = -1;
    r.fallback = true;
    r.retries = 2;
    r.features = "hit";
    return r;
}

/* Formats |r| as reqlog does and parses it; |line| must outlive |row|. */
static void row_of(const mg_reqlog_rec_t *r, char *line, size_t cap, mg_dbrow_t *row)
{
    size_t n = mg_reqlog_format(r, line, cap);
    assert_true(n > 0);
    assert_int_equal(mg_dbrow_parse(line, n - 1, row), MG_OK);
}

static void assert_val(const mg_dbrow_t *row, int col, const char *want)
{
    const mg_dbrow_val_t *v = &row->v[col];
    if (want == NULL) {
        assert_true(v->null);
        assert_null(v->s);
        return;
    }
    assert_false(v->null);
    assert_int_equal(v->len, strlen(want));
    assert_memory_equal(v->s, want, v->len);
}

static void assert_num(const mg_dbrow_t *row, int col, int64_t want)
{
    assert_false(row->v[col].null);
    assert_int_equal(row->v[col].n, want);
}

static void record_fields(void **state)
{
    (void)state;
    char line[8192];
    mg_dbrow_t row;
    mg_reqlog_rec_t b = base_rec();
    row_of(&b, line, sizeof(line), &row);
    static const uint8_t id[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                   0,    0,    0,    0,    0,    0,    0x0a, 0xbc};
    assert_memory_equal(row.id, id, 16);
    assert_memory_equal(row.time, "2023-11-14 22:13:20.123456", MG_DBROW_TIME_LEN);
    assert_val(&row, MG_DBROW_REQUEST_ID, "r-1");
    assert_val(&row, MG_DBROW_CLIENT, "127.0.0.1:5555");
    assert_val(&row, MG_DBROW_PROTO, "h2");
    assert_val(&row, MG_DBROW_METHOD, "POST");
    assert_val(&row, MG_DBROW_HOST, "digits-production.example");
    assert_val(&row, MG_DBROW_PATH, "/v1/predict");
    assert_val(&row, MG_DBROW_APP, "digits");
    assert_val(&row, MG_DBROW_ENV, "production");
    assert_val(&row, MG_DBROW_SERVICE, "digits-production-v3");
    assert_val(&row, MG_DBROW_POD, "10.0.0.7:8500");
    assert_num(&row, MG_DBROW_STATUS, 200);
    assert_num(&row, MG_DBROW_REQ_BYTES, 84);
    assert_num(&row, MG_DBROW_RESP_BYTES, 95);
    assert_true(row.v[MG_DBROW_UPSTREAM_US].null); /* -1: no upstream answered */
    assert_num(&row, MG_DBROW_TOTAL_US, 2345);
    assert_val(&row, MG_DBROW_ERROR, NULL);
    assert_num(&row, MG_DBROW_FALLBACK, 1);
    assert_num(&row, MG_DBROW_RETRIES, 2);
    assert_val(&row, MG_DBROW_FEATURES, "hit");
    assert_val(&row, MG_DBROW_FEATURES_HASH, NULL);
}

/* What the old text INSERT had to escape now travels as bytes: each must come back as is. */
static void awkward_bytes(void **state)
{
    (void)state;
    char line[8192];
    mg_dbrow_t row;
    mg_reqlog_rec_t r = base_rec();
    r.path = "/v1/it's \"quoted\" \\here\\' x";
    r.client = "a\x01\t\n\r\x1a\x7f"
               "b";
    r.host = "bad\xff\xfeutf8\xc3"; /* invalid bytes: reqlog writes U+FFFD for each */
    r.pod = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"; /* e-acute, euro, emoji: kept */
    r.error = "'; DROP TABLE request_log; --";
    r.upstream_us = 0;
    row_of(&r, line, sizeof(line), &row);
    assert_val(&row, MG_DBROW_PATH, "/v1/it's \"quoted\" \\here\\' x");
    assert_val(&row, MG_DBROW_CLIENT,
               "a\x01\t\n\r\x1a\x7f"
               "b");
    assert_val(&row, MG_DBROW_HOST, "bad\xef\xbf\xbd\xef\xbf\xbdutf8\xef\xbf\xbd");
    assert_val(&row, MG_DBROW_POD, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    assert_val(&row, MG_DBROW_ERROR, "'; DROP TABLE request_log; --");
    assert_num(&row, MG_DBROW_UPSTREAM_US, 0);

    /* NUL cannot come from reqlog (C strings), but \u0000 is JSON: it is a byte like another */
    char esc[] = "{\"id\":\"00112233445566770000000000000abc\",\"time\":\"2023-11-14T22:13:20."
                 "123456Z\",\"path\":\"a\\u0000b\\/c\\b\\f\\u00e9\\ud83d\\ude00\\\"\"}";
    assert_int_equal(mg_dbrow_parse(esc, strlen(esc), &row), MG_OK);
    assert_int_equal(row.v[MG_DBROW_PATH].len, 14);
    assert_memory_equal(row.v[MG_DBROW_PATH].s, "a\0b/c\b\f\xc3\xa9\xf0\x9f\x98\x80\"", 14);
}

/* Strings are cut to their column's length in characters, never inside a character. */
static void long_fields(void **state)
{
    (void)state;
    static char path[3000], err[400], line[8192];
    mg_dbrow_t row;
    mg_reqlog_rec_t r = base_rec();
    memset(path, 'a', sizeof(path) - 1);
    memcpy(path + 2046, "\xc3\xa9\xc3\xa9", 4); /* characters 2047 and 2048 take 2 bytes each */
    memset(err, 'e', sizeof(err) - 1);
    r.path = path;
    r.error = err;
    row_of(&r, line, sizeof(line), &row);
    assert_int_equal(row.v[MG_DBROW_PATH].len, 2046 + 4); /* VARCHAR(2048) */
    assert_memory_equal(row.v[MG_DBROW_PATH].s + 2046, "\xc3\xa9\xc3\xa9", 4);
    assert_int_equal(row.v[MG_DBROW_ERROR].len, 255);

    /* longer than reqlog's 8 KiB line: reqlog cuts the longest fields, the row follows */
    static char huge[20000];
    memset(huge, 'h', sizeof(huge) - 1);
    r.path = huge, r.host = huge, r.error = NULL;
    row_of(&r, line, sizeof(line), &row);
    assert_int_equal(row.v[MG_DBROW_PATH].len, 2048);
    assert_int_equal(row.v[MG_DBROW_HOST].len, 255);
    assert_val(&row, MG_DBROW_APP, "digits");
}

/* Lines of other shapes, e.g. written by other versions: any key order, unknown keys, missing
 * or mistyped values take the column's default, as the jansson-based reader did. */
static void defaults_and_other_shapes(void **state)
{
    (void)state;
    mg_dbrow_t row;
    char min[] = " { \"time\" : \"2023-11-14T22:13:20.000001Z\" , \"id\":"
                 "\"ffffffffffffffffffffffffffffffff\" } \r";
    assert_int_equal(mg_dbrow_parse(min, strlen(min), &row), MG_OK);
    for (int i = 0; i < MG_DBROW_NCOLS; i++) {
        if (mg_dbrow_cols[i].type == MG_DBROW_STR || i == MG_DBROW_UPSTREAM_US)
            assert_true(row.v[i].null);
        else
            assert_num(&row, i, 0); /* NOT NULL columns */
    }
    char odd[] = "{\"status\":\"200\",\"req_bytes\":-5,\"fallback\":1,\"upstream_us\":1.5e3,"
                 "\"new_key\":{\"nested\":[1,2]},\"path\":7,\"total_us\":-3,\"retries\":null,"
                 "\"id\":\"00112233445566770000000000000abc\",\"app\":\"\","
                 "\"time\":\"2023-11-14T22:13:20.123456Z\"}";
    assert_int_equal(mg_dbrow_parse(odd, strlen(odd), &row), MG_E_PROTO); /* nested value */
    char odd2[] = "{\"status\":\"200\",\"req_bytes\":-5,\"fallback\":1,\"upstream_us\":1.5e3,"
                  "\"new_key\":\"x\",\"path\":7,\"total_us\":-3,\"retries\":null,"
                  "\"id\":\"00112233445566770000000000000abc\",\"app\":\"\","
                  "\"time\":\"2023-11-14T22:13:20.123456Z\"}";
    assert_int_equal(mg_dbrow_parse(odd2, strlen(odd2), &row), MG_OK);
    assert_num(&row, MG_DBROW_STATUS, 0);    /* a string is no number */
    assert_num(&row, MG_DBROW_REQ_BYTES, 0); /* unsigned */
    assert_num(&row, MG_DBROW_FALLBACK, 0);  /* only true is true */
    assert_num(&row, MG_DBROW_UPSTREAM_US, 0);
    assert_val(&row, MG_DBROW_PATH, NULL);
    assert_num(&row, MG_DBROW_TOTAL_US, -3);
    assert_num(&row, MG_DBROW_RETRIES, 0);
    assert_val(&row, MG_DBROW_APP, "");
    /* behind trusted proxies the access log adds "peer" last: not a column, skipped */
    char peer[] = "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":"
                  "\"00112233445566770000000000000abc\",\"client\":\"203.0.113.9\","
                  "\"error\":null,\"peer\":\"10.0.0.2:40000\"}";
    assert_int_equal(mg_dbrow_parse(peer, strlen(peer), &row), MG_OK);
    assert_val(&row, MG_DBROW_CLIENT, "203.0.113.9");
}

/* Keys are first matched as the bytes the access log writes ("name":), then read as JSON:
 * near misses are other keys, an escaped key is still its column, and a column is still
 * refused twice whichever way it was read. */
static void keys_read_either_way(void **state)
{
    (void)state;
    mg_dbrow_t row;
    char near[] =
        "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":\"00112233445566770000000000000abc\","
        "\"requestid\":\"b\",\"request_idx\":\"c\",\"request_id\":\"a\",\"client\" :\"d\","
        "\"pr\\u006fto\":\"h2\",\"features_hash\":\"f\",\"features_has\":\"g\"}";
    assert_int_equal(mg_dbrow_parse(near, strlen(near), &row), MG_OK);
    assert_val(&row, MG_DBROW_REQUEST_ID, "a");
    assert_val(&row, MG_DBROW_CLIENT, "d");
    assert_val(&row, MG_DBROW_PROTO, "h2");
    assert_val(&row, MG_DBROW_FEATURES_HASH, "f");
    /* near misses of the widest key (16 bytes: both words compared whole) where it is next */
    char wide[] =
        "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":\"00112233445566770000000000000abc\","
        "\"features\":\"hit\",\"features_hasx\":\"g\",\"features_hash \":\"h\","
        "\"features_hash\":\"f\",\"status\":200}";
    assert_int_equal(mg_dbrow_parse(wide, strlen(wide), &row), MG_OK);
    assert_val(&row, MG_DBROW_FEATURES, "hit");
    assert_val(&row, MG_DBROW_FEATURES_HASH, "f");
    assert_num(&row, MG_DBROW_STATUS, 200);
    char twice[] =
        "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":\"00112233445566770000000000000abc\","
        "\"client\":\"x\",\"cli\\u0065nt\":\"y\"}";
    assert_int_equal(mg_dbrow_parse(twice, strlen(twice), &row), MG_E_PROTO);
}

/* Strings are scanned 8 bytes at a time: an escape, a quote or a UTF-8 sequence at any offset
 * of a word ends the plain run exactly there. */
static void special_byte_at_every_offset(void **state)
{
    (void)state;
    static const struct {
        const char *json, *bytes;
    } special[] = {{"\\n", "\n"},           {"\\\"", "\""},
                   {"\\\\", "\\"},          {"\xc3\xa9", "\xc3\xa9"},
                   {"\\u00e9", "\xc3\xa9"}, {"", ""}};
    for (size_t k = 0; k < sizeof(special) / sizeof(special[0]); k++) {
        for (int at = 0; at < 20; at++) {
            char plain[32], line[256], want[64];
            memset(plain, 'p', sizeof(plain));
            snprintf(line, sizeof(line),
                     "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":"
                     "\"00112233445566770000000000000abc\",\"path\":\"%.*s%s%.*s\"}",
                     at, plain, special[k].json, 19 - at, plain);
            snprintf(want, sizeof(want), "%.*s%s%.*s", at, plain, special[k].bytes, 19 - at, plain);
            mg_dbrow_t row;
            assert_int_equal(mg_dbrow_parse(line, strlen(line), &row), MG_OK);
            assert_val(&row, MG_DBROW_PATH, want);
        }
    }
    /* raw control characters are no JSON wherever they are; DEL is a plain byte */
    static const struct {
        char byte;
        mg_err_t rc;
    } raw[] = {{'\x01', MG_E_PROTO}, {'\x1f', MG_E_PROTO}, {'\x7f', MG_OK}};
    for (size_t k = 0; k < sizeof(raw) / sizeof(raw[0]); k++) {
        for (int at = 0; at < 20; at++) {
            char value[32], line[256];
            memset(value, 'p', 20);
            value[at] = raw[k].byte, value[20] = '\0';
            snprintf(line, sizeof(line),
                     "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":"
                     "\"00112233445566770000000000000abc\",\"path\":\"%s\"}",
                     value);
            mg_dbrow_t row;
            assert_int_equal(mg_dbrow_parse(line, strlen(line), &row), raw[k].rc);
        }
    }
}

static void rejects_what_is_no_record(void **state)
{
    (void)state;
#define REC "\"id\":\"00112233445566770000000000000abc\",\"time\":\"2023-11-14T22:13:20.123456Z\""
    static const char *const bad[] = {
        "",
        "not json",
        "[1,2]",
        "{}",
        "{\"time\":\"2023-11-14T22:13:20.123456Z\"}",
        "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":\"xyz\"}",
        "{\"time\":\"2023-11-14 22:13:20\",\"id\":\"00112233445566770000000000000abc\"}",
        "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"id\":\"00112233445566770000000000000ABC\"}",
        "{" REC,                                   /* torn: no closing brace */
        "{" REC ",\"path\":\"/v1/pre",             /* torn inside a string */
        "{" REC "} x",                             /* something after the object */
        "{" REC ",}",                              /* trailing comma */
        "{" REC ",\"status\":200,\"status\":201}", /* a column twice */
        "{" REC ",\"id\":\"00112233445566770000000000000abd\"}",
        "{" REC ",\"path\":\"a\x01"
        "b\"}", /* raw control character */
        "{" REC ",\"path\":\"a\xff"
        "b\"}",                                     /* raw invalid UTF-8 */
        "{" REC ",\"path\":\"a\xed\xa0\x80\"}",     /* a surrogate encoded as UTF-8 */
        "{" REC ",\"path\":\"\\ud83d\"}",           /* lone high surrogate */
        "{" REC ",\"path\":\"\\ude00\"}",           /* lone low surrogate */
        "{" REC ",\"path\":\"\\ud83d\\%de00\"}",    /* high surrogate, then no \\u escape */
        "{" REC ",\"path\":\"\\x41\"}",             /* not a JSON escape */
        "{" REC ",\"status\":9223372036854775808}", /* beyond int64 */
        "{" REC ",\"status\":01}",
        "{" REC ",\"status\":1.}",
        "{" REC ",\"status\":tru}",
        "{" REC ",\"path\":[\"a\"]}",
    };
#undef REC
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char buf[512];
        mg_dbrow_t row;
        size_t n = strlen(bad[i]);
        memcpy(buf, bad[i], n);
        if (mg_dbrow_parse(buf, n, &row) != MG_E_PROTO)
            fail_msg("accepted bad line %zu: %s", i, bad[i]);
    }
    char edge[] = "{\"id\":\"00112233445566770000000000000abc\",\"time\":\"2023-11-14T22:13:20."
                  "123456Z\",\"status\":-9223372036854775808}";
    mg_dbrow_t row;
    assert_int_equal(mg_dbrow_parse(edge, strlen(edge), &row), MG_OK);
    assert_int_equal(row.v[MG_DBROW_STATUS].n, INT64_MIN);
}

/* The reader before this one was jansson: on every line it accepts, the values must agree. */
/* A value is cut for a table whose column is narrower than ours: whole characters only, within
 * both the column's characters and its bytes (a VARBINARY column counts bytes). */
static void prefixes_end_on_characters(void **state)
{
    (void)state;
    const char *s = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z"; /* a é € 😀 z: 11 bytes, 5 chars */
    size_t n = strlen(s);
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 100, SIZE_MAX), n);
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 2, SIZE_MAX), 3);
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 4, SIZE_MAX), 10);
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 0, SIZE_MAX), 0);
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 100, 5), 3); /* not half of the € */
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 100, 6), 6);
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 100, 9), 6); /* not 3/4 of the 😀 */
    assert_int_equal(mg_dbrow_utf8_prefix(s, n, 3, 4), 3);   /* the smaller bound wins */
    assert_int_equal(mg_dbrow_utf8_prefix("abc", 3, 100, 2), 2);
    assert_int_equal(mg_dbrow_utf8_prefix("\xc3\xa9", 2, 100, 1), 0);
}

static void check_like_jansson(const char *text)
{
    char line[8192];
    size_t n = strlen(text);
    assert_true(n < sizeof(line));
    memcpy(line, text, n);
    mg_dbrow_t row;
    assert_int_equal(mg_dbrow_parse(line, n, &row), MG_OK);
    json_error_t jerr;
    json_t *j = json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    assert_non_null(j);
    for (int i = 0; i < MG_DBROW_NCOLS; i++) {
        const json_t *v = json_object_get(j, mg_dbrow_cols[i].name);
        if (mg_dbrow_cols[i].type == MG_DBROW_STR && json_is_string(v)) {
            size_t len = json_string_length(v);
            assert_true(row.v[i].len <= len);
            assert_memory_equal(row.v[i].s, json_string_value(v), row.v[i].len);
        } else if (mg_dbrow_cols[i].type == MG_DBROW_STR) {
            assert_true(row.v[i].null);
        } else if (json_is_integer(v) && mg_dbrow_cols[i].type != MG_DBROW_BOOL) {
            json_int_t x = json_integer_value(v);
            assert_int_equal(row.v[i].n, mg_dbrow_cols[i].type == MG_DBROW_UINT && x < 0 ? 0 : x);
        }
    }
    json_decref(j);
}

static void agrees_with_jansson(void **state)
{
    (void)state;
    char line[8192];
    mg_reqlog_rec_t r = base_rec();
    r.path = "/v1/it's \"quoted\" \\here";
    r.client = "a\x01\t\n\x1a"
               "b";
    r.host = "bad\xff\xfeutf8";
    r.error = "upstream_timeout";
    r.features_hash = "abcd";
    assert_true(mg_reqlog_format(&r, line, sizeof(line)) > 0);
    check_like_jansson(line);
    check_like_jansson("{\"id\":\"00112233445566770000000000000abc\",\"time\":\"2023-11-14T22:13:"
                       "20.123456Z\",\"path\":\"a\\u0000b\\/c\\b\\f\\u00e9\\ud83d\\ude00\"}");
}

/* A spool as the previous version left it (these lines are its output, byte for byte): it
 * replays after the upgrade, every line a row with the values jansson read from it. */
static void previous_version_spool_replays(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "{\"time\":\"2026-11-25T22:01:05.519213Z\",\"id\":\"6c1e3f0d9b2a47e1000000000000002a\","
        "\"request_id\":\"6c1e3f0d9b2a47e1-42\",\"client\":\"127.0.0.1:40312\",\"proto\":\"h2c\","
        "\"method\":\"POST\",\"host\":\"bench-production.modelgate.local\",\"path\":\"/v1/"
        "predict\",\"app\":\"bench\",\"env\":\"production\",\"service\":\"svc\",\"pod\":\"127.0.0."
        "1:19601\",\"features\":null,\"features_hash\":null,\"status\":200,\"req_bytes\":71,"
        "\"resp_bytes\":96,\"fallback\":false,\"retries\":0,\"upstream_us\":412,\"total_us\":520,"
        "\"error\":null}",
        "{\"time\":\"2026-11-25T22:01:05.519999Z\",\"id\":\"6c1e3f0d9b2a47e1000000000000002b\","
        "\"request_id\":\"it's \\\"x\\\" \\\\ \\u0001\\ufffd\",\"client\":\"[::1]:1\",\"proto\":"
        "\"http/1.1\",\"method\":\"GET\",\"host\":null,\"path\":\"/\\u00e9t\\u00e9\",\"app\":null,"
        "\"env\":null,\"service\":null,\"pod\":null,\"features\":\"off\",\"features_hash\":null,"
        "\"status\":404,\"req_bytes\":0,\"resp_bytes\":17,\"fallback\":false,\"retries\":0,"
        "\"upstream_us\":null,\"total_us\":31,\"error\":\"no_route\"}",
    };
    char dir[] = "/tmp/mg-test-dbrow-XXXXXX", path[128], err[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/00000000000000000001.spool", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < 2; i++)
        fprintf(f, "%s\n", lines[i]);
    fclose(f);

    mg_spool_t *s = mg_spool_open(dir, 1 << 20, err, sizeof(err));
    assert_non_null(s);
    mg_spool_pos_t pos = mg_spool_committed(s), next;
    static char buf[1 << 16];
    size_t len, n;
    assert_int_equal(mg_spool_read(s, &pos, buf, sizeof(buf), 500, &len, &n, &next, NULL), MG_OK);
    assert_int_equal(n, 2);
    char *p = buf;
    for (size_t i = 0; i < 2; i++) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        assert_non_null(nl);
        assert_int_equal((size_t)(nl - p), strlen(lines[i]));
        check_like_jansson(lines[i]);
        mg_dbrow_t row;
        assert_int_equal(mg_dbrow_parse(p, (size_t)(nl - p), &row), MG_OK);
        p = nl + 1;
        if (i == 1) {
            assert_val(&row, MG_DBROW_REQUEST_ID, "it's \"x\" \\ \x01\xef\xbf\xbd");
            assert_val(&row, MG_DBROW_PATH, "/\xc3\xa9t\xc3\xa9");
            assert_true(row.v[MG_DBROW_UPSTREAM_US].null);
            assert_num(&row, MG_DBROW_STATUS, 404);
        }
    }
    assert_int_equal(mg_spool_commit(s, next), MG_OK);
    mg_spool_close(s);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(record_fields),
        cmocka_unit_test(awkward_bytes),
        cmocka_unit_test(long_fields),
        cmocka_unit_test(defaults_and_other_shapes),
        cmocka_unit_test(keys_read_either_way),
        cmocka_unit_test(special_byte_at_every_offset),
        cmocka_unit_test(rejects_what_is_no_record),
        cmocka_unit_test(agrees_with_jansson),
        cmocka_unit_test(previous_version_spool_replays),
        cmocka_unit_test(prefixes_end_on_characters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
