/*
 * tests/fuzz/fuzz_dbrow.c - access-log lines to request_log rows (gateway/dbrow.h) from
 * arbitrary bytes.
 *
 * Beyond "no crash, no overread, no UB" (the input sits in a buffer of its exact size), it
 * checks the row against jansson, the reader the database log used before: a line the scanner
 * accepts is JSON that jansson reads to the same values (strings cut to their column, in whole
 * characters), and a flat object that jansson reads, with a valid id and time, is accepted
 * (unless it holds a raw NUL byte, which jansson skips between tokens).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/dbrow.h"
#include "check.h"

static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

/* jansson refuses a few things the scanner has no reason to: a huge real (no column takes a
 * real), a repeated unknown key, NUL in a key. */
static bool jansson_only_quirk(const json_error_t *e)
{
    return json_error_code(e) == json_error_duplicate_key || strstr(e->text, "real number") ||
           strstr(e->text, "NUL byte in object key");
}

static bool valid_id(const json_t *v)
{
    const char *s = json_string_value(v);
    if (s == NULL || json_string_length(v) != 32)
        return false;
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool valid_time(const json_t *v)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    const char *t = json_string_value(v);
    if (t == NULL || json_string_length(v) != sizeof(shape) - 1)
        return false;
    for (size_t i = 0; i < sizeof(shape) - 1; i++)
        if (shape[i] == 'd' ? (t[i] < '0' || t[i] > '9') : t[i] != shape[i])
            return false;
    return true;
}

static bool is_flat_record(const json_t *j)
{
    const char *k;
    const json_t *v;
    if (!json_is_object(j))
        return false;
    json_object_foreach((json_t *)j, k, v)
    {
        if (json_is_object(v) || json_is_array(v))
            return false;
    }
    return valid_id(json_object_get(j, "id")) && valid_time(json_object_get(j, "time"));
}

static void check_same(const mg_dbrow_t *row, const json_t *j, const char *buf, size_t size)
{
    for (int i = 0; i < MG_DBROW_NCOLS; i++) {
        const mg_dbrow_col_t *c = &mg_dbrow_cols[i];
        const mg_dbrow_val_t *r = &row->v[i];
        const json_t *v = json_object_get(j, c->name);
        if (c->type == MG_DBROW_STR) {
            CHECK(json_is_string(v) == !r->null);
            if (r->null)
                continue;
            CHECK(r->s >= buf && r->s + r->len <= buf + size);
            size_t full = json_string_length(v);
            CHECK(r->len <= full && memcmp(r->s, json_string_value(v), r->len) == 0);
            CHECK(utf8_chars(r->s, r->len) == (utf8_chars(json_string_value(v), full) < c->maxlen
                                                   ? utf8_chars(json_string_value(v), full)
                                                   : c->maxlen));
        } else if (c->type == MG_DBROW_BOOL) {
            CHECK(r->n == (json_is_true(v) ? 1 : 0));
        } else if (json_is_integer(v)) {
            json_int_t x = json_integer_value(v);
            CHECK(!r->null && r->n == (c->type == MG_DBROW_UINT && x < 0 ? 0 : x));
        } else {
            CHECK(r->n == 0 && r->null == (c->nullable && (v == NULL || json_is_null(v))));
        }
    }
    CHECK(memcmp(row->time + 10, " ", 1) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    mg_dbrow_t row;
    mg_err_t rc = mg_dbrow_parse(buf, size, &row);
    json_error_t jerr;
    json_t *j =
        json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (rc == MG_OK) {
        CHECK(j != NULL || jansson_only_quirk(&jerr));
        if (j != NULL)
            check_same(&row, j, buf, size);
    } else {
        CHECK(rc == MG_E_PROTO);
        /* jansson reads a raw NUL byte between tokens as nothing at all; JSON does not */
        CHECK(j == NULL || !is_flat_record(j) || memchr(data, 0, size) != NULL);
    }
    json_decref(j);
    free(buf);
    return 0;
}
