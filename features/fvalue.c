/*
 * features/fvalue.c - feature snapshots: canonical text, hash, normalization (see fvalue.h).
 */
#include "features/fvalue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canary/split.h"
#include "common/hex.h"

uint64_t mg_fval_hash(const char *text, size_t len, char out[17])
{
    static const uint8_t key[16] = {'m', 'o', 'd', 'e', 'l', 'g', 'a', 't',
                                    'e', ':', 'f', 'e', 'a', 't', 'v', '1'};
    uint64_t h = mg_split_siphash24(key, text, len);
    mg_hex64(h, out);
    out[16] = '\0';
    return h;
}

mg_fval_t *mg_fval_new(const char *text, size_t len)
{
    mg_fval_t *v = malloc(sizeof(*v) + len + 1);
    if (v == NULL)
        return NULL;
    atomic_init(&v->_refs, 1);
    v->len = len;
    memcpy(v->text, text, len);
    v->text[len] = '\0';
    v->hash64 = mg_fval_hash(v->text, len, v->hash);
    return v;
}

mg_fval_t *mg_fval_oversize(size_t len)
{
    mg_fval_t *v = mg_fval_new("", 0);
    if (v != NULL)
        v->len = len;
    return v;
}

char *mg_fval_canonical(const json_t *v, size_t *text_len)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII | JSON_SORT_KEYS);
    if (s == NULL)
        return NULL;
    size_t len = 0, dels = 0;
    for (; s[len]; len++)
        dels += s[len] == 0x7f;
    /* \u escapes in lowercase hex, as most JSON writers (Python's json) print them, so that a
     * pipeline can rebuild the same bytes and hash */
    for (char *p = s; *p; p++)
        if (*p == '\\' && *++p == 'u')
            for (int i = 0; i < 4 && p[1]; i++, p++)
                if (p[1] >= 'A' && p[1] <= 'F')
                    p[1] = (char)(p[1] - 'A' + 'a');
    *text_len = len + 5 * dels;
    if (dels == 0)
        return s;
    /* DEL (0x7f), which jansson leaves raw, is no field-value byte (RFC 9110 5.5): pods refuse
     * the field. Python's json escapes it too. */
    char *out = malloc(len + 5 * dels + 1);
    if (out) {
        char *o = out;
        for (const char *p = s; *p; p++)
            if (*p == 0x7f)
                o += sprintf(o, "\\u007f");
            else
                *o++ = *p;
        *o = '\0';
    }
    free(s);
    return out;
}

mg_fval_t *mg_fval_from_json(const json_t *doc)
{
    size_t len;
    char *s = mg_fval_canonical(doc, &len);
    if (s == NULL)
        return NULL;
    mg_fval_t *v = mg_fval_new(s, len);
    free(s);
    return v;
}

void mg_fval_ref(mg_fval_t *v)
{
    atomic_fetch_add_explicit(&v->_refs, 1, memory_order_relaxed);
}

void mg_fval_unref(mg_fval_t *v)
{
    if (v && atomic_fetch_sub_explicit(&v->_refs, 1, memory_order_acq_rel) == 1)
        free(v);
}

/* A scalar as the string Redis would hold; NULL for null, objects and arrays. */
static json_t *as_string(const json_t *v)
{
    if (json_is_string(v))
        return json_incref((json_t *)v);
    if (!json_is_number(v) && !json_is_boolean(v))
        return NULL;
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    json_t *out = s ? json_string(s) : NULL;
    free(s);
    return out;
}

bool mg_fval_is_empty(const json_t *v)
{
    return (json_is_object(v) && json_object_size(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0);
}

static bool bad(char *why, size_t cap, const char *fmt, const char *a)
{
    snprintf(why, cap, fmt, a);
    return false;
}

/* Normalizes one group's value into |out| under its name; false (with |why|) on a strict
 * error. */
static bool group_value(const mg_fgroup_t *g, const json_t *v, bool strict, json_t *out, char *why,
                        size_t cap)
{
    json_t *n = NULL;
    switch (g->type) {
    case MG_FGROUP_HASH: {
        if (!json_is_object(v))
            return strict ? bad(why, cap, "group \"%s\" must be an object (a hash)", g->name)
                          : true;
        n = json_object();
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            json_t *s = as_string(x);
            if (s == NULL && strict) {
                json_decref(n);
                return bad(why, cap,
                           "group \"%s\": hash values must be strings, numbers or "
                           "booleans",
                           g->name);
            }
            if (s)
                json_object_set_new(n, k, s);
        }
        break;
    }
    case MG_FGROUP_LIST: {
        if (!json_is_array(v))
            return strict ? bad(why, cap, "group \"%s\" must be an array (a list)", g->name) : true;
        /* A write of more items than the group keeps is refused, not cut: which ones the
         * gateway kept would be a guess at what the writer meant, and the stored snapshot
         * (and its hash) would differ from what was sent. Reads keep the first max_items,
         * as LRANGE 0 max_items-1 does on Redis. */
        if (strict && json_array_size(v) > g->max_items) {
            snprintf(why, cap,
                     "group \"%s\" has %zu items, more than its max_items (%u); send at most "
                     "%u, newest first",
                     g->name, json_array_size(v), g->max_items, g->max_items);
            return false;
        }
        n = json_array();
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *s = as_string(json_array_get(v, i));
            if (s == NULL && strict) {
                json_decref(n);
                return bad(why, cap,
                           "group \"%s\": list items must be strings, numbers or "
                           "booleans",
                           g->name);
            }
            if (s && json_array_size(n) < g->max_items)
                json_array_append_new(n, s);
            else
                json_decref(s);
        }
        break;
    }
    case MG_FGROUP_JSON:
        n = json_incref((json_t *)v);
        break;
    }
    if (n == NULL)
        return bad(why, cap, "out of memory normalizing group \"%s\"", g->name);
    if (!mg_fval_is_empty(n))
        json_object_set(out, g->name, n);
    json_decref(n);
    return true;
}

json_t *mg_fval_normalize(const mg_fapp_t *app, const json_t *doc, bool strict, char *why,
                          size_t cap)
{
    if (!json_is_object(doc)) {
        snprintf(why, cap, "features must be a JSON object {\"GROUP\": value, ...}");
        return NULL;
    }
    json_t *out = json_object();
    if (out == NULL) {
        snprintf(why, cap, "out of memory");
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)doc, k, v)
    {
        const mg_fgroup_t *g = NULL;
        for (size_t i = 0; i < app->ngroups && g == NULL; i++)
            if (strcmp(app->groups[i].name, k) == 0)
                g = &app->groups[i];
        if (g == NULL) {
            if (!strict)
                continue;
            char valid[256] = "";
            size_t o = 0;
            for (size_t i = 0; i < app->ngroups && o < sizeof(valid); i++)
                o += (size_t)snprintf(valid + o, sizeof(valid) - o, "%s%s", i ? ", " : "",
                                      app->groups[i].name);
            snprintf(why, cap, "unknown group \"%.64s\" (app %s has: %s)", k, app->name, valid);
            json_decref(out);
            return NULL;
        }
        if (!group_value(g, v, strict, out, why, cap)) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}
