/*
 * backends/runtime/kind_embedding.c - the `embedding` kind: top-K retrieval over a matrix of
 * float32 item vectors (an .mgemb index written by tools/write_embedding.py).
 *
 * File layout (little-endian; tools/README.md has the full description):
 *   "MGEMBED1" | uint32 H | H bytes of JSON header | zero padding to a multiple of 64 |
 *   N x D float32 row-major | ids: N int64, or N+1 uint64 offsets + UTF-8 bytes | end of file
 * Header: {"count": N, "dim": D, "metric": "dot"|"cosine", "ids": "int64"|"string",
 *          "k": default K, "user_feature": "field", "description": "...", "version": 1}
 *
 * Input: a list of D numbers (the user's vector), or -- when the input is absent, null or empty
 * and the index names a "user_feature" -- the list of D numbers found under that name in the
 * user features (the gateway's x-user-features JSON). Option: {"k": K} (1..N; default: the
 * header's k).
 * Output: output = [id, ...] the K best items, best first (ties: lower row first); score = the
 * best item's score; values = the K scores. Scores are float32 dot products of the query with
 * every row (cblas_sgemv), cosine = the same on rows normalised at load and a normalised query
 * (cblas_snrm2 + cblas_sscal); the K best are kept in a min-heap while scanning the N scores
 * (O(N log K)).
 *
 * Memory: the file is mapped while loading and everything is copied out of it (a cosine
 * index normalises its rows in the copy), so a file rewritten in place while its model serves
 * cannot change or crash the serving model. Ids are copied out of the map (int64) or
 * pre-escaped as JSON strings at load. Predict is reentrant: per-call vectors live in the
 * caller's scratch.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>

#include "backends/runtime/model.h"

#define EMB_MAGIC "MGEMBED1"
#define EMB_ALIGN 64

typedef struct emb {
    size_t n, d;
    bool cosine;
    size_t k_default;
    char *user_feature; /* NULL when the index takes no features */
    const float *m;     /* n x d: into the map (dot) or into |owned| (cosine) */
    float *owned;
    void *map;
    size_t map_len;
    int64_t *int_ids; /* n, or NULL for string ids */
    char *str_json;   /* string ids as JSON strings, back to back */
    size_t *str_off;  /* n + 1 offsets into str_json */
} emb_t;

typedef struct hent {
    float s;
    uint32_t i;
} hent_t;

static void emb_free(void *impl)
{
    emb_t *e = impl;
    if (e == NULL)
        return;
    if (e->map != NULL)
        munmap(e->map, e->map_len);
    free(e->owned);
    free(e->int_ids);
    free(e->str_json);
    free(e->str_off);
    free(e->user_feature);
    free(e);
}

static uint64_t rd_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* True when s[0..len) is valid UTF-8 (no overlongs, no surrogates). */
static bool utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= len || (s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        i += k + 1;
    }
    return true;
}

/* Appends s as a JSON string literal to out (out must have room for 6 * len + 2 bytes). */
static size_t json_escape(const unsigned char *s, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            out[o++] = '\\';
            out[o++] = 'u';
            out[o++] = '0';
            out[o++] = '0';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    return o;
}

static mg_err_t bad(char *err, size_t errlen, const char *path, const char *what)
{
    snprintf(err, errlen, "embedding index '%s': %s", path, what);
    return MG_E_CONFIG;
}

/* Parses and checks the JSON header; fills e's scalar fields. */
static mg_err_t parse_header(const char *path, const char *h, size_t hlen, emb_t *e,
                             bool *string_ids, char *err, size_t errlen)
{
    static const char *const keys[] = {"version", "count",        "dim",         "metric", "ids",
                                       "k",       "user_feature", "description", NULL};
    char where[512], msg[256];
    json_error_t jerr;
    json_t *doc = json_loadb(h, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL || !json_is_object(doc)) {
        snprintf(msg, sizeof(msg), "header: %s", doc ? "expected a JSON object" : jerr.text);
        json_decref(doc);
        return bad(err, errlen, path, msg);
    }
    snprintf(where, sizeof(where), "embedding index '%s': header", path);
    mg_err_t rc = MG_E_CONFIG;
    if (mg_kind_check_keys(doc, keys, where, err, errlen) != MG_OK)
        goto out;
    const json_t *v = json_object_get(doc, "version");
    const json_t *cnt = json_object_get(doc, "count"), *dim = json_object_get(doc, "dim");
    const char *metric = json_string_value(json_object_get(doc, "metric"));
    const char *ids = json_string_value(json_object_get(doc, "ids"));
    const json_t *k = json_object_get(doc, "k"), *uf = json_object_get(doc, "user_feature");
    if (v != NULL && (!json_is_integer(v) || json_integer_value(v) != 1)) {
        rc = bad(err, errlen, path, "header: version: expected 1");
        goto out;
    }
    if (!json_is_integer(cnt) || json_integer_value(cnt) < 1 ||
        json_integer_value(cnt) > UINT32_MAX) {
        rc = bad(err, errlen, path, "header: count: expected an integer from 1 to 2^32-1");
        goto out;
    }
    if (!json_is_integer(dim) || json_integer_value(dim) < 1 || json_integer_value(dim) > 65536) {
        rc = bad(err, errlen, path, "header: dim: expected an integer from 1 to 65536");
        goto out;
    }
    e->n = (size_t)json_integer_value(cnt);
    e->d = (size_t)json_integer_value(dim);
    if (metric == NULL || (strcmp(metric, "dot") != 0 && strcmp(metric, "cosine") != 0)) {
        rc = bad(err, errlen, path, "header: metric: expected \"dot\" or \"cosine\"");
        goto out;
    }
    e->cosine = strcmp(metric, "cosine") == 0;
    if (ids == NULL || (strcmp(ids, "int64") != 0 && strcmp(ids, "string") != 0)) {
        rc = bad(err, errlen, path, "header: ids: expected \"int64\" or \"string\"");
        goto out;
    }
    *string_ids = strcmp(ids, "string") == 0;
    e->k_default = e->n < 10 ? e->n : 10;
    if (k != NULL) {
        if (!json_is_integer(k) || json_integer_value(k) < 1 ||
            (size_t)json_integer_value(k) > e->n) {
            snprintf(msg, sizeof(msg), "header: k: expected an integer from 1 to %zu", e->n);
            rc = bad(err, errlen, path, msg);
            goto out;
        }
        e->k_default = (size_t)json_integer_value(k);
    }
    if (uf != NULL && !json_is_null(uf)) {
        if (!json_is_string(uf) || json_string_length(uf) == 0) {
            rc = bad(err, errlen, path, "header: user_feature: expected a field name");
            goto out;
        }
        if ((e->user_feature = strdup(json_string_value(uf))) == NULL) {
            rc = bad(err, errlen, path, "out of memory");
            rc = MG_E_NOMEM;
            goto out;
        }
    }
    rc = MG_OK;
out:
    json_decref(doc);
    return rc;
}

typedef struct id_order {
    const int64_t *ints;    /* int ids, or NULL */
    const unsigned char *p; /* string ids: the offsets, then the bytes at |blob| */
    const unsigned char *blob;
} id_order_t;

static int cmp_ids(const void *a, const void *b, void *arg)
{
    const id_order_t *o = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (o->ints)
        return o->ints[i] < o->ints[j] ? -1 : o->ints[i] > o->ints[j];
    uint64_t ia = rd_le64(o->p + 8 * i), ib = rd_le64(o->p + 8 * (i + 1));
    uint64_t ja = rd_le64(o->p + 8 * j), jb = rd_le64(o->p + 8 * (j + 1));
    size_t li = (size_t)(ib - ia), lj = (size_t)(jb - ja);
    int c = memcmp(o->blob + ia, o->blob + ja, li < lj ? li : lj);
    return c ? c : (li > lj) - (li < lj);
}

/* The ids must be distinct (tools/README.md): an answer naming an item twice, or two items
 * by one name, cannot be told apart. Sorts row numbers by id (n log n, once per load). */
static mg_err_t check_distinct(const char *path, const emb_t *e, const unsigned char *p,
                               const unsigned char *blob, char *err, size_t errlen)
{
    size_t *rows = malloc(e->n * sizeof(size_t));
    if (rows == NULL)
        return MG_E_NOMEM;
    for (size_t i = 0; i < e->n; i++)
        rows[i] = i;
    id_order_t o = {e->int_ids, p, blob};
    qsort_r(rows, e->n, sizeof(size_t), cmp_ids, &o);
    for (size_t i = 1; i < e->n; i++)
        if (cmp_ids(&rows[i - 1], &rows[i], &o) == 0) {
            char msg[160];
            size_t a = rows[i - 1] < rows[i] ? rows[i - 1] : rows[i];
            size_t b = rows[i - 1] < rows[i] ? rows[i] : rows[i - 1];
            snprintf(msg, sizeof(msg),
                     "ids: rows %zu and %zu have the same id (ids must be "
                     "distinct)",
                     a, b);
            free(rows);
            return bad(err, errlen, path, msg);
        }
    free(rows);
    return MG_OK;
}

static mg_err_t read_ids(const char *path, const unsigned char *p, size_t avail, bool string_ids,
                         emb_t *e, char *err, size_t errlen)
{
    char msg[256];
    if (!string_ids) {
        if (avail != e->n * 8) {
            snprintf(msg, sizeof(msg), "expected %zu bytes of int64 ids after the matrix, got %zu",
                     e->n * 8, avail);
            return bad(err, errlen, path, msg);
        }
        if ((e->int_ids = malloc(e->n * sizeof(int64_t))) == NULL)
            return MG_E_NOMEM;
        for (size_t i = 0; i < e->n; i++)
            e->int_ids[i] = (int64_t)rd_le64(p + 8 * i);
        return check_distinct(path, e, NULL, NULL, err, errlen);
    }
    size_t offs_len = (e->n + 1) * 8;
    if (avail < offs_len) {
        snprintf(msg, sizeof(msg), "string ids: expected %zu offsets after the matrix", e->n + 1);
        return bad(err, errlen, path, msg);
    }
    const unsigned char *blob = p + offs_len;
    size_t blob_len = avail - offs_len;
    if (rd_le64(p) != 0 || rd_le64(p + 8 * e->n) != blob_len) {
        snprintf(msg, sizeof(msg),
                 "string ids: offsets must start at 0 and end at the %zu bytes that follow them",
                 blob_len);
        return bad(err, errlen, path, msg);
    }
    if (blob_len > (SIZE_MAX - 2 * e->n) / 6 ||
        (e->str_json = malloc(blob_len * 6 + 2 * e->n + 1)) == NULL ||
        (e->str_off = malloc((e->n + 1) * sizeof(size_t))) == NULL)
        return MG_E_NOMEM;
    size_t o = 0;
    for (size_t i = 0; i < e->n; i++) {
        uint64_t a = rd_le64(p + 8 * i), b = rd_le64(p + 8 * (i + 1));
        if (b < a || b > blob_len) {
            snprintf(msg, sizeof(msg), "string ids: offset %zu is out of order or range", i + 1);
            return bad(err, errlen, path, msg);
        }
        if (!utf8_valid(blob + a, (size_t)(b - a))) {
            snprintf(msg, sizeof(msg), "string ids: id %zu is not valid UTF-8", i);
            return bad(err, errlen, path, msg);
        }
        e->str_off[i] = o;
        o += json_escape(blob + a, (size_t)(b - a), e->str_json + o);
    }
    e->str_off[e->n] = o;
    return check_distinct(path, e, p, blob, err, errlen);
}

static mg_err_t emb_load(const char *path, const json_t *options, void **impl, char *err,
                         size_t errlen)
{
    static const char *const no_keys[] = {NULL};
    char where[512], msg[256];
    snprintf(where, sizeof(where), "embedding index '%s': load options", path);
    if (mg_kind_check_keys(options, no_keys, where, err, errlen) != MG_OK)
        return MG_E_CONFIG;
    emb_t *e = calloc(1, sizeof(*e));
    mg_err_t rc = MG_E_NOMEM;
    int fd = -1;
    if (e == NULL)
        goto fail;
    struct stat st;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st) != 0) {
        int en = errno;
        snprintf(err, errlen, "embedding index '%s': %s", path, strerror(en));
        rc = en == ENOENT ? MG_E_NOTFOUND : MG_E_IO;
        goto fail;
    }
    if (st.st_size < 12 + 2) {
        rc = bad(err, errlen, path, "too short to be an index (no MGEMBED1 header)");
        goto fail;
    }
    e->map_len = (size_t)st.st_size;
    e->map = mmap(NULL, e->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (e->map == MAP_FAILED) {
        e->map = NULL;
        snprintf(err, errlen, "embedding index '%s': mmap: %s", path, strerror(errno));
        rc = MG_E_IO;
        goto fail;
    }
    const unsigned char *p = e->map;
    if (memcmp(p, EMB_MAGIC, 8) != 0) {
        rc = bad(err, errlen, path,
                 "not an embedding index (the file does not start with "
                 "MGEMBED1; write it with tools/write_embedding.py)");
        goto fail;
    }
    size_t hlen = (size_t)p[8] | (size_t)p[9] << 8 | (size_t)p[10] << 16 | (size_t)p[11] << 24;
    if (hlen > e->map_len - 12) {
        rc = bad(err, errlen, path, "header length runs past the end of the file");
        goto fail;
    }
    bool string_ids = false;
    if ((rc = parse_header(path, (const char *)p + 12, hlen, e, &string_ids, err, errlen)) != MG_OK)
        goto fail;
    size_t moff = (12 + hlen + EMB_ALIGN - 1) / EMB_ALIGN * EMB_ALIGN;
    if (e->n > (SIZE_MAX / 8) / e->d || moff + e->n * e->d * 4 > e->map_len) {
        snprintf(msg, sizeof(msg),
                 "expected %zu x %zu float32 at offset %zu, the file is %zu bytes", e->n, e->d,
                 moff, e->map_len);
        rc = bad(err, errlen, path, msg);
        goto fail;
    }
    size_t mbytes = e->n * e->d * 4;
    rc = read_ids(path, p + moff + mbytes, e->map_len - moff - mbytes, string_ids, e, err, errlen);
    if (rc != MG_OK) {
        if (rc == MG_E_NOMEM)
            bad(err, errlen, path, "out of memory for the ids");
        goto fail;
    }
    const float *m = (const float *)(p + moff);
    for (size_t i = 0; i < e->n * e->d; i++)
        if (!isfinite(m[i])) {
            snprintf(msg, sizeof(msg), "row %zu has a value that is not finite", i / e->d);
            rc = bad(err, errlen, path, msg);
            goto fail;
        }
    /* Copied, never served from the map: an operator who rewrites the file in place (cp over
     * it) would otherwise make the serving model read a truncated map (SIGBUS) or new data. */
    if ((e->owned = malloc(mbytes)) == NULL) {
        rc = MG_E_NOMEM;
        bad(err, errlen, path, "out of memory for the matrix");
        goto fail;
    }
    memcpy(e->owned, m, mbytes);
    if (e->cosine) {
        for (size_t i = 0; i < e->n; i++) {
            float *row = e->owned + i * e->d;
            float nrm = cblas_snrm2((int)e->d, row, 1);
            if (nrm > 0)
                cblas_sscal((int)e->d, 1.0f / nrm, row, 1);
        }
    }
    e->m = e->owned;
    munmap(e->map, e->map_len); /* everything else was copied too */
    e->map = NULL;
    close(fd);
    *impl = e;
    return MG_OK;
fail:
    if (rc == MG_E_NOMEM && e == NULL)
        snprintf(err, errlen, "embedding index '%s': out of memory", path);
    if (fd >= 0)
        close(fd);
    emb_free(e);
    return rc;
}

static void emb_describe(const void *impl, mg_model_desc_t *d)
{
    const emb_t *e = impl;
    memset(d, 0, sizeof(*d));
    d->input = MG_INPUT_FLOATS;
    d->input_len = e->d;
    d->input_optional = e->user_feature != NULL;
    d->output = MG_OUTPUT_RANKING;
    d->string_ids = e->int_ids == NULL;
    d->uses_option = true;
    d->uses_features = e->user_feature != NULL;
    d->thread_safe = true;
}

/* a ranks before b: higher score, then lower row. */
static inline bool better(hent_t a, hent_t b)
{
    return a.s > b.s || (a.s == b.s && a.i < b.i);
}

/* Min-heap on "better": h[0] is the worst of the kept items. */
static void sift_down(hent_t *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(h[w], h[l]))
            w = l;
        if (r < n && better(h[w], h[r]))
            w = r;
        if (w == i)
            return;
        hent_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void sift_up(hent_t *h, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!better(h[p], h[i]))
            return;
        hent_t t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

/* The k best of s[0..n) into h, sorted best first. O(n log k). */
static void top_k(const float *s, size_t n, size_t k, hent_t *h)
{
    size_t len = 0;
    for (size_t j = 0; j < n; j++) {
        hent_t c = {isnan(s[j]) ? -INFINITY : s[j], (uint32_t)j};
        if (len < k) {
            h[len] = c;
            sift_up(h, len++);
        } else if (better(c, h[0])) {
            h[0] = c;
            sift_down(h, k, 0);
        }
    }
    /* heap sort: pop the worst to the end */
    for (size_t m = len; m > 1; m--) {
        hent_t t = h[0];
        h[0] = h[m - 1];
        h[m - 1] = t;
        sift_down(h, m - 1, 0);
    }
}

static mg_err_t read_option(const emb_t *e, const json_t *option, size_t *k, mg_outputs_t *out)
{
    static const char *const keys[] = {"k", NULL};
    *k = e->k_default;
    if (option == NULL || json_is_null(option))
        return MG_OK;
    if (!json_is_object(option))
        return mg_out_error(out, MG_E_PROTO, "option: expected an object");
    if (mg_kind_check_keys(option, keys, "option", out->err, sizeof(out->err)) != MG_OK)
        return MG_E_PROTO;
    const json_t *v = json_object_get(option, "k");
    if (v == NULL)
        return MG_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || (size_t)json_integer_value(v) > e->n)
        return mg_out_error(out, MG_E_PROTO, "option.k: expected an integer from 1 to %zu", e->n);
    *k = (size_t)json_integer_value(v);
    return MG_OK;
}

/* The query of item i into q (d floats), normalised for cosine. MG_E_PROTO = item refused. */
static mg_err_t query(const emb_t *e, const mg_input_view_t *in, size_t i, const json_t *features,
                      float *q, mg_outputs_t *out)
{
    const mg_input_item_t *it = &in->items[i];
    if (it->dtype != MG_DTYPE_NONE && it->len == e->d) {
        for (size_t j = 0; j < e->d; j++) {
            switch (it->dtype) {
            case MG_DTYPE_F32:
                q[j] = ((const float *)it->data)[j];
                break;
            case MG_DTYPE_F64:
                q[j] = (float)((const double *)it->data)[j];
                break;
            case MG_DTYPE_I32:
                q[j] = (float)((const int32_t *)it->data)[j];
                break;
            default:
                q[j] = (float)((const int64_t *)it->data)[j];
                break;
            }
        }
    } else {
        const json_t *v = e->user_feature && json_is_object(features)
                              ? json_object_get(features, e->user_feature)
                              : NULL;
        if (v == NULL) {
            mg_out_fail(out, in, i,
                        "expected %zu numbers, or user features with \"%s\"; got neither", e->d,
                        e->user_feature ? e->user_feature : "?");
            return MG_E_PROTO;
        }
        if (!json_is_array(v) || json_array_size(v) != e->d) {
            mg_out_fail(out, in, i, "user features \"%s\": expected %zu numbers, got %s%zu",
                        e->user_feature, e->d, json_is_array(v) ? "" : "not a list, size ",
                        json_is_array(v) ? json_array_size(v) : (size_t)0);
            return MG_E_PROTO;
        }
        for (size_t j = 0; j < e->d; j++) {
            const json_t *x = json_array_get(v, j);
            if (!json_is_number(x)) {
                mg_out_fail(out, in, i, "user features \"%s\"[%zu]: expected a number",
                            e->user_feature, j);
                return MG_E_PROTO;
            }
            q[j] = (float)json_number_value(x);
        }
    }
    if (e->cosine) {
        float nrm = cblas_snrm2((int)e->d, q, 1);
        if (nrm > 0)
            cblas_sscal((int)e->d, 1.0f / nrm, q, 1);
    }
    return MG_OK;
}

static mg_err_t emb_predict(const void *impl, const mg_input_view_t *in, const json_t *option,
                            const json_t *features, mg_outputs_t *out)
{
    const emb_t *e = impl;
    mg_err_t rc;
    size_t k;
    if ((rc = mg_out_begin(out, in->n)) != MG_OK)
        return rc;
    if ((rc = read_option(e, option, &k, out)) != MG_OK)
        return rc;
    float *q = mg_out_scratch(out, e->d * sizeof(float));
    float *s = mg_out_scratch(out, e->n * sizeof(float));
    hent_t *h = mg_out_scratch(out, k * (sizeof(hent_t) + sizeof(double)));
    if (q == NULL || s == NULL || h == NULL)
        return mg_out_error(out, MG_E_NOMEM, "embedding: out of memory");
    double *vals = (double *)(h + k); /* hent_t is 8 bytes: vals stays aligned */
    for (size_t i = 0; i < in->n; i++) {
        if ((rc = query(e, in, i, features, q, out)) != MG_OK) {
            if (rc == MG_E_PROTO)
                continue; /* this item alone was refused */
            return rc;
        }
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)e->n, (int)e->d, 1.0f, e->m, (int)e->d, q, 1,
                    0.0f, s, 1);
        top_k(s, e->n, k, h);
        rc = mg_out_write(out, "[", 1);
        for (size_t j = 0; j < k && rc == MG_OK; j++) {
            if (j > 0)
                rc = mg_out_write(out, ",", 1);
            if (rc != MG_OK)
                break;
            if (e->int_ids != NULL)
                rc = mg_out_printf(out, "%lld", (long long)e->int_ids[h[j].i]);
            else
                rc = mg_out_write(out, e->str_json + e->str_off[h[j].i],
                                  e->str_off[h[j].i + 1] - e->str_off[h[j].i]);
            vals[j] = (double)h[j].s;
        }
        if (rc != MG_OK || (rc = mg_out_write(out, "]", 1)) != MG_OK ||
            (rc = mg_out_values(out, vals, k)) != MG_OK ||
            (rc = mg_out_end(out, i, vals[0])) != MG_OK)
            return rc;
    }
    return MG_OK;
}

const mg_model_kind_t mg_kind_embedding = {
    .name = "embedding",
    .load = emb_load,
    .describe = emb_describe,
    .predict = emb_predict,
    .free = emb_free,
};
