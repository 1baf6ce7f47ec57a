/*
 * common/jsonerr.c - the errors found in a JSON document being checked (see jsonerr.h).
 */
#include "common/jsonerr.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void buf_append(mg_jerr_t *e, const char *s, size_t n)
{
    if (e->nomem)
        return;
    if (e->len + n + 1 > e->cap) {
        size_t ncap = e->cap ? e->cap : 256;
        while (ncap < e->len + n + 1)
            ncap *= 2;
        char *nb = realloc(e->buf, ncap);
        if (nb == NULL) {
            e->nomem = true;
            return;
        }
        e->buf = nb;
        e->cap = ncap;
    }
    memcpy(e->buf + e->len, s, n);
    e->len += n;
    e->buf[e->len] = '\0';
}

void mg_jerr_text(mg_jerr_t *e, const char *text)
{
    if (text == NULL || *text == '\0')
        return;
    e->count++;
    if (e->len > 0)
        buf_append(e, "\n", 1);
    buf_append(e, text, strlen(text));
}

void mg_jerr_f(mg_jerr_t *e, const char *fmt, ...)
{
    char msg[1024], line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->plen > 0)
        snprintf(line, sizeof(line), "%s: %s: %s", e->source, e->path, msg);
    else
        snprintf(line, sizeof(line), "%s: %s", e->source, msg);
    mg_jerr_text(e, line);
}

const char *mg_jerr_esc(char *dst, size_t cap, const char *s, size_t max)
{
    size_t o = 0, i = 0;
    for (; s[i] != '\0' && i < max && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
        } else if (c == '"' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else {
            dst[o++] = (char)c;
        }
    }
    if (s[i] != '\0' && o + 4 <= cap) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}

void mg_jerr_pop(mg_jerr_t *e, size_t len)
{
    e->plen = len;
    e->path[len] = '\0';
}

size_t mg_jerr_push(mg_jerr_t *e, const char *fmt, ...)
{
    size_t old = e->plen, room = sizeof(e->path) - e->plen;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->path + e->plen, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        e->plen += (size_t)n < room ? (size_t)n : room - 1;
    return old;
}

size_t mg_jerr_key(mg_jerr_t *e, const char *key)
{
    char k[160];
    return mg_jerr_push(e, "%s%s", e->plen ? "." : "", mg_jerr_esc(k, sizeof(k), key, 64));
}

size_t mg_jerr_index(mg_jerr_t *e, size_t i)
{
    return mg_jerr_push(e, "[%zu]", i);
}

static const char *describe(const mg_jerr_t *e, const json_t *v, char *out, size_t cap)
{
    char s[300];
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        snprintf(out, cap, "string \"%s\"",
                 mg_jerr_esc(s, sizeof(s), json_string_value(v), e->quote_max ? e->quote_max : 80));
        return out;
    case JSON_INTEGER:
        snprintf(out, cap, "number %" JSON_INTEGER_FORMAT, json_integer_value(v));
        return out;
    case JSON_REAL: {
        /* "1e0" or "1.0" where an integer goes would read "got number 1" without the remark */
        double x = json_real_value(v);
        bool whole = x > -1e15 && x < 1e15 && (double)(long long)x == x;
        snprintf(out, cap, "number %g%s", x,
                 whole ? ", written with a fraction or an exponent" : "");
        return out;
    }
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

void mg_jerr_type(mg_jerr_t *e, const json_t *v, const char *expected)
{
    char d[400];
    mg_jerr_f(e, "wrong type (got %s; expected %s)", describe(e, v, d, sizeof(d)), expected);
}

void mg_jerr_keys(mg_jerr_t *e, const json_t *obj, const char *const *keys)
{
    char valid[512] = "";
    size_t o = 0;
    for (size_t i = 0; keys[i] != NULL && o < sizeof(valid); i++)
        o += (size_t)snprintf(valid + o, sizeof(valid) - o, "%s%s", i ? ", " : "", keys[i]);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        size_t i = 0;
        while (keys[i] != NULL && strcmp(keys[i], k) != 0)
            i++;
        if (keys[i] == NULL) {
            size_t old = mg_jerr_key(e, k);
            mg_jerr_f(e, "unknown key (valid keys: %s)", valid);
            mg_jerr_pop(e, old);
        }
    }
}

void mg_jerr_bool(mg_jerr_t *e, const json_t *obj, const char *key, bool *out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(e, key);
    if (!json_is_boolean(v))
        mg_jerr_type(e, v, "true or false");
    else
        *out = json_is_true(v);
    mg_jerr_pop(e, old);
}

json_t *mg_json_load_file(const char *path, json_error_t *err)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        memset(err, 0, sizeof(*err));
        err->line = err->column = -1;
        snprintf(err->text, sizeof(err->text), "a directory, not a JSON file");
        return NULL;
    }
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, err);
    /* jansson names its own flag ("\\u0000 is not allowed without JSON_ALLOW_NUL near ..."),
     * which no file can set: say what the file may not hold, and keep where */
    static const char nul[] = "\\u0000 is not allowed without JSON_ALLOW_NUL";
    static const char say[] = "strings may not contain NUL (\\u0000)"; /* shorter than |nul| */
    if (doc == NULL && strncmp(err->text, nul, sizeof(nul) - 1) == 0) {
        size_t rest = strlen(err->text + sizeof(nul) - 1) + 1; /* " near '...'" and its NUL */
        memmove(err->text + sizeof(say) - 1, err->text + sizeof(nul) - 1, rest);
        memcpy(err->text, say, sizeof(say) - 1);
    }
    return doc;
}
