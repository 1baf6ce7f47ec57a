/*
 * backends/runtime/model.c - kind table, input parsing and checks, output buffers, model
 * loading, reference counting and predict dispatch.
 *
 * DESIGN
 * Inputs are parsed in two passes: the first walks the JSON (or the tensor), checks every item
 * against the model's description and counts what must be stored; then the caller's
 * mg_input_buf_t grows once to that size and the second pass fills it. Pointers into the
 * buffer are therefore taken only after the last allocation, and a batch of numbers ends up as
 * one contiguous row-major array that the kinds can hand to XGBoost or BLAS as it is.
 * Outputs are appended to the caller's mg_outputs_t, whose buffers keep their memory from one
 * batch to the next. A model's predict runs under its own mutex only when its kind says it is
 * not reentrant; reference counts are C11 atomics, and the last unref frees the kind's state.
 */
#include "backends/runtime/model.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/log.h"

/* ---------------------------------------------------------------------------------------- */
/* Kinds                                                                                     */

static const mg_model_kind_t *const kinds[] = {&mg_kind_xgboost, &mg_kind_linear,
                                               &mg_kind_embedding, &mg_kind_text};
#define NKINDS (sizeof(kinds) / sizeof(kinds[0]))
static const char *const kind_names[NKINDS + 1] = {"xgboost", "linear", "embedding", "text", NULL};

const mg_model_kind_t *mg_model_kind_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < NKINDS; i++)
        if (strcmp(kinds[i]->name, name) == 0)
            return kinds[i];
    return NULL;
}

const char *const *mg_model_kind_names(void)
{
    return kind_names;
}

const char *mg_model_kind_list(char *buf, size_t cap)
{
    size_t n = 0;
    if (cap > 0)
        buf[0] = '\0';
    for (const char *const *k = kind_names; *k && n < cap; k++) {
        int w = snprintf(buf + n, cap - n, " %s", *k);
        n += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

const char *mg_input_type_name(mg_input_type_t t)
{
    switch (t) {
    case MG_INPUT_FLOATS:
        return "floats";
    case MG_INPUT_INTS:
        return "ints";
    case MG_INPUT_STRING:
        return "string";
    case MG_INPUT_BYTES:
        return "bytes";
    case MG_INPUT_STRINGS:
        return "strings";
    }
    return "unknown";
}

const char *mg_output_kind_name(mg_output_kind_t k)
{
    switch (k) {
    case MG_OUTPUT_LABEL:
        return "label";
    case MG_OUTPUT_VALUE:
        return "value";
    case MG_OUTPUT_RANKING:
        return "ranking";
    }
    return "unknown";
}

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                             */

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Grows *p to hold |need| elements of |size| bytes; keeps the contents. */
static mg_err_t grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap && *p != NULL)
        return MG_OK;
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > SIZE_MAX / 2 / size)
            return MG_E_NOMEM;
        n *= 2;
    }
    void *q = realloc(*p, n * size);
    if (q == NULL)
        return MG_E_NOMEM;
    *p = q;
    *cap = n;
    return MG_OK;
}

static size_t dtype_size(mg_dtype_t t)
{
    switch (t) {
    case MG_DTYPE_F32:
    case MG_DTYPE_I32:
        return 4;
    case MG_DTYPE_F64:
    case MG_DTYPE_I64:
        return 8;
    case MG_DTYPE_STRS:
        return sizeof(mg_bytes_t);
    case MG_DTYPE_NONE:
    case MG_DTYPE_STR:
    case MG_DTYPE_BYTES:
        return 1;
    }
    return 1;
}

static bool dtype_is_number(mg_dtype_t t)
{
    return t == MG_DTYPE_F32 || t == MG_DTYPE_F64 || t == MG_DTYPE_I32 || t == MG_DTYPE_I64;
}

static double number_at(mg_dtype_t t, const void *data, size_t i)
{
    switch (t) {
    case MG_DTYPE_F32:
        return ((const float *)data)[i];
    case MG_DTYPE_F64:
        return ((const double *)data)[i];
    case MG_DTYPE_I32:
        return ((const int32_t *)data)[i];
    case MG_DTYPE_I64:
        return (double)((const int64_t *)data)[i];
    default:
        return 0;
    }
}

static const char *json_what(const json_t *v)
{
    if (v == NULL)
        return "nothing";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return json_array_size(v) ? "a list" : "an empty list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

/* "a list of 64 numbers" style phrases for messages. */
static const char *type_phrase(mg_input_type_t t)
{
    switch (t) {
    case MG_INPUT_FLOATS:
        return "a list of numbers";
    case MG_INPUT_INTS:
        return "a list of integers";
    case MG_INPUT_STRING:
        return "a string";
    case MG_INPUT_BYTES:
        return "a base64 string";
    case MG_INPUT_STRINGS:
        return "a list of strings";
    }
    return "an input";
}

/* The same for a model: a string model may take other forms too (desc.accepts). */
static const char *desc_phrase(const mg_model_desc_t *d)
{
    if (d->input != MG_INPUT_STRING)
        return type_phrase(d->input);
    switch (d->accepts & (MG_ACCEPT_BYTES | MG_ACCEPT_STRINGS)) {
    case MG_ACCEPT_BYTES:
        return "a string or {\"b64\": \"<base64>\"}";
    case MG_ACCEPT_STRINGS:
        return "a string or a list of strings";
    case MG_ACCEPT_BYTES | MG_ACCEPT_STRINGS:
        return "a string, a list of strings or {\"b64\": \"<base64>\"}";
    }
    return "a string";
}

static const char *elem_plural(mg_input_type_t t)
{
    switch (t) {
    case MG_INPUT_FLOATS:
        return "numbers";
    case MG_INPUT_INTS:
        return "integers";
    case MG_INPUT_STRINGS:
        return "strings";
    case MG_INPUT_STRING:
    case MG_INPUT_BYTES:
        return "bytes";
    }
    return "values";
}

static bool is_list_type(mg_input_type_t t)
{
    return t == MG_INPUT_FLOATS || t == MG_INPUT_INTS || t == MG_INPUT_STRINGS;
}

const char *mg_input_where(const mg_input_view_t *in, size_t i, char *buf, size_t len)
{
    if (in->batch)
        snprintf(buf, len, "inputs[%zu]", i);
    else
        snprintf(buf, len, "input");
    return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* Input buffers                                                                             */

void mg_input_buf_init(mg_input_buf_t *b, size_t max_items)
{
    memset(b, 0, sizeof(*b));
    b->max_items = max_items;
}

void mg_input_buf_clear(mg_input_buf_t *b)
{
    free(b->_items);
    free(b->_data);
    size_t max = b->max_items;
    memset(b, 0, sizeof(*b));
    b->max_items = max;
}

/* Makes room for |nitems| items and |nbytes| bytes of data; both contents are discarded. */
static mg_err_t buf_reserve(mg_input_buf_t *b, size_t nitems, size_t nbytes)
{
    if (grow((void **)&b->_items, &b->_items_cap, nitems ? nitems : 1, sizeof(mg_input_item_t)))
        return MG_E_NOMEM;
    if (grow((void **)&b->_data, &b->_data_cap, nbytes ? nbytes : 1, 1))
        return MG_E_NOMEM;
    return MG_OK;
}

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* ---------------------------------------------------------------------------------------- */
/* base64 (RFC 4648, standard or URL-safe alphabet, padding optional)                        */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Validates |s| and returns the decoded length, or -1 with *bad = the offending offset. */
static long long b64_decoded_len(const char *s, size_t len, size_t *bad)
{
    while (len > 0 && s[len - 1] == '=')
        len--;
    for (size_t i = 0; i < len; i++)
        if (b64_value((unsigned char)s[i]) < 0) {
            *bad = i;
            return -1;
        }
    if (len % 4 == 1) {
        *bad = len;
        return -1;
    }
    return (long long)(len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0));
}

static void b64_decode(const char *s, size_t len, unsigned char *out)
{
    while (len > 0 && s[len - 1] == '=')
        len--;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 6) | (uint32_t)b64_value((unsigned char)s[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *out++ = (unsigned char)(acc >> bits);
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Input from a /v1/predict body                                                             */

typedef struct json_pass {
    const mg_model_desc_t *d;
    char *err;
    size_t errlen;
    size_t nums;  /* numbers to store (8 bytes each) */
    size_t strs;  /* mg_bytes_t to store (strings lists) */
    size_t bytes; /* decoded base64 bytes */
} json_pass_t;

static bool absent(const json_t *x)
{
    return x == NULL || json_is_null(x) || (json_is_array(x) && json_array_size(x) == 0);
}

/* Every kind but linear computes in float32 (libxgboost too): a number past its range became
 * infinity there, and answers of null or garbage with a 200 */
#define FLOAT32_RANGE "expected a number within float32's range (-3.4e38 to 3.4e38)"

/* Pass 1 for one item: checks it and counts its storage. */
static mg_err_t json_item_check(json_pass_t *p, const json_t *x, const char *where)
{
    const mg_model_desc_t *d = p->d;
    if (d->input_optional && absent(x))
        return MG_OK;
    if (is_list_type(d->input)) {
        if (!json_is_array(x)) {
            errf(p->err, p->errlen, "%s: expected %s, got %s", where, type_phrase(d->input),
                 json_what(x));
            return MG_E_PROTO;
        }
        size_t n = json_array_size(x);
        for (size_t i = 0; i < n; i++) {
            const json_t *v = json_array_get(x, i);
            if (d->input == MG_INPUT_STRINGS) {
                if (!json_is_string(v)) {
                    errf(p->err, p->errlen, "%s[%zu]: expected a string, got %s", where, i,
                         json_what(v));
                    return MG_E_PROTO;
                }
            } else if (!json_is_number(v)) {
                errf(p->err, p->errlen, "%s[%zu]: expected %s, got %s", where, i,
                     d->input == MG_INPUT_INTS ? "an integer" : "a number", json_what(v));
                return MG_E_PROTO;
            } else if (d->input == MG_INPUT_FLOATS && !mg_in_float32_range(json_number_value(v))) {
                errf(p->err, p->errlen, "%s[%zu]: %s, got %g", where, i, FLOAT32_RANGE,
                     json_number_value(v));
                return MG_E_PROTO;
            } else if (d->input == MG_INPUT_INTS && json_is_real(v)) {
                double r = json_real_value(v);
                if (r != floor(r) || fabs(r) > 9007199254740992.0) {
                    errf(p->err, p->errlen, "%s[%zu]: expected an integer, got %.17g", where, i, r);
                    return MG_E_PROTO;
                }
            }
        }
        if (d->input_len != 0 && n != d->input_len) {
            errf(p->err, p->errlen, "%s: expected %zu %s, got %zu", where, d->input_len,
                 elem_plural(d->input), n);
            return MG_E_PROTO;
        }
        if (n == 0) {
            errf(p->err, p->errlen, "%s: expected %s, got an empty list", where,
                 type_phrase(d->input));
            return MG_E_PROTO;
        }
        if (d->input == MG_INPUT_STRINGS)
            p->strs += n;
        else
            p->nums += n;
        return MG_OK;
    }
    bool b64 = d->input == MG_INPUT_BYTES;
    char b64where[48];
    if (d->input == MG_INPUT_STRING && (d->accepts & MG_ACCEPT_STRINGS) && json_is_array(x)) {
        for (size_t i = 0; i < json_array_size(x); i++)
            if (!json_is_string(json_array_get(x, i))) {
                errf(p->err, p->errlen, "%s[%zu]: expected a string, got %s", where, i,
                     json_what(json_array_get(x, i)));
                return MG_E_PROTO;
            }
        p->strs += json_array_size(x);
        return MG_OK;
    }
    if (d->input == MG_INPUT_STRING && (d->accepts & MG_ACCEPT_BYTES) && json_is_object(x)) {
        const json_t *s = json_object_get(x, "b64");
        if (s == NULL || json_object_size(x) != 1) {
            errf(p->err, p->errlen, "%s: expected {\"b64\": \"<base64>\"} (bytes), got %s", where,
                 s == NULL ? "an object without \"b64\"" : "an object with other keys");
            return MG_E_PROTO;
        }
        snprintf(b64where, sizeof(b64where), "%s.b64", where);
        where = b64where;
        x = s; /* whether it is a string is checked just below */
        b64 = true;
    }
    if (!json_is_string(x)) {
        errf(p->err, p->errlen, "%s: expected %s, got %s", where,
             where == b64where ? "a base64 string" : desc_phrase(d), json_what(x));
        return MG_E_PROTO;
    }
    if (b64) {
        size_t bad = 0;
        long long n = b64_decoded_len(json_string_value(x), json_string_length(x), &bad);
        if (n < 0) {
            errf(p->err, p->errlen,
                 "%s: expected base64-encoded bytes, got a string that is not base64 "
                 "(at character %zu)",
                 where, bad);
            return MG_E_PROTO;
        }
        p->bytes += align8((size_t)n);
    }
    return MG_OK;
}

typedef struct json_fill {
    unsigned char *nums;  /* cursor: numbers */
    unsigned char *strs;  /* cursor: mg_bytes_t */
    unsigned char *bytes; /* cursor: decoded bytes */
} json_fill_t;

static void json_item_fill(const mg_model_desc_t *d, const json_t *x, json_fill_t *f,
                           mg_input_item_t *it)
{
    memset(it, 0, sizeof(*it));
    if (d->input_optional && absent(x)) {
        it->dtype = MG_DTYPE_NONE;
        return;
    }
    mg_input_type_t t = d->input;
    if (t == MG_INPUT_STRING && json_is_array(x)) { /* desc.accepts, checked in pass 1 */
        t = MG_INPUT_STRINGS;
    } else if (t == MG_INPUT_STRING && json_is_object(x)) {
        t = MG_INPUT_BYTES;
        x = json_object_get(x, "b64");
    }
    switch (t) {
    case MG_INPUT_FLOATS: {
        double *v = (double *)f->nums;
        size_t n = json_array_size(x);
        for (size_t i = 0; i < n; i++)
            v[i] = json_number_value(json_array_get(x, i));
        *it = (mg_input_item_t){MG_DTYPE_F64, v, n};
        f->nums += n * sizeof(double);
        break;
    }
    case MG_INPUT_INTS: {
        int64_t *v = (int64_t *)f->nums;
        size_t n = json_array_size(x);
        for (size_t i = 0; i < n; i++) {
            const json_t *e = json_array_get(x, i);
            v[i] =
                json_is_integer(e) ? (int64_t)json_integer_value(e) : (int64_t)json_real_value(e);
        }
        *it = (mg_input_item_t){MG_DTYPE_I64, v, n};
        f->nums += n * sizeof(int64_t);
        break;
    }
    case MG_INPUT_STRINGS: {
        mg_bytes_t *v = (mg_bytes_t *)f->strs;
        size_t n = json_array_size(x);
        for (size_t i = 0; i < n; i++) {
            const json_t *e = json_array_get(x, i);
            v[i] = (mg_bytes_t){json_string_value(e), json_string_length(e)};
        }
        *it = (mg_input_item_t){MG_DTYPE_STRS, v, n};
        f->strs += n * sizeof(mg_bytes_t);
        break;
    }
    case MG_INPUT_STRING:
        *it = (mg_input_item_t){MG_DTYPE_STR, json_string_value(x), json_string_length(x)};
        break;
    case MG_INPUT_BYTES: {
        size_t bad = 0;
        size_t n = (size_t)b64_decoded_len(json_string_value(x), json_string_length(x), &bad);
        b64_decode(json_string_value(x), json_string_length(x), f->bytes);
        *it = (mg_input_item_t){MG_DTYPE_BYTES, f->bytes, n};
        f->bytes += align8(n);
        break;
    }
    }
}

/* Sets out->dense when the numeric items lie back to back with one width. */
static void set_dense(mg_input_view_t *out)
{
    out->dense = NULL;
    out->dense_dtype = MG_DTYPE_NONE;
    out->dense_width = 0;
    const mg_input_item_t *it = out->items;
    if (out->n == 0 || !dtype_is_number(it[0].dtype) || it[0].len == 0)
        return;
    size_t w = it[0].len, es = dtype_size(it[0].dtype);
    for (size_t i = 1; i < out->n; i++)
        if (it[i].dtype != it[0].dtype || it[i].len != w ||
            (const char *)it[i].data != (const char *)it[0].data + i * w * es)
            return;
    out->dense = it[0].data;
    out->dense_dtype = it[0].dtype;
    out->dense_width = w;
}

mg_err_t mg_input_from_json(const mg_model_desc_t *d, const json_t *body, mg_input_buf_t *buf,
                            mg_input_view_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(body)) {
        errf(err, errlen, "body: expected a JSON object, got %s", json_what(body));
        return MG_E_PROTO;
    }
    const json_t *input = json_object_get(body, "input");
    const json_t *inputs = json_object_get(body, "inputs");
    if (input != NULL && inputs != NULL) {
        errf(err, errlen, "body: expected \"input\" or \"inputs\", not both");
        return MG_E_PROTO;
    }
    if (input == NULL && inputs == NULL && !d->input_optional) {
        errf(err, errlen, "body: expected \"input\" (%s) or \"inputs\" (a list of them)",
             desc_phrase(d));
        return MG_E_PROTO;
    }
    size_t n = 1;
    if (inputs != NULL) {
        if (!json_is_array(inputs)) {
            errf(err, errlen, "inputs: expected a list of inputs, got %s", json_what(inputs));
            return MG_E_PROTO;
        }
        n = json_array_size(inputs);
        if (n == 0) {
            errf(err, errlen, "inputs: expected at least one input, got an empty list");
            return MG_E_PROTO;
        }
        if (buf->max_items != 0 && n > buf->max_items) {
            errf(err, errlen, "inputs: at most %zu inputs per request, got %zu", buf->max_items, n);
            return MG_E_LIMIT; /* as documented: the runtime answers 413 */
        }
    }
    json_pass_t p = {.d = d, .err = err, .errlen = errlen};
    char where[32];
    mg_err_t e;
    for (size_t i = 0; i < n; i++) {
        const json_t *x = inputs ? json_array_get(inputs, i) : input;
        if (inputs)
            snprintf(where, sizeof(where), "inputs[%zu]", i);
        else
            snprintf(where, sizeof(where), "input");
        if ((e = json_item_check(&p, x, where)) != MG_OK)
            return e;
    }
    size_t nums_sz = align8(p.nums * 8), strs_sz = align8(p.strs * sizeof(mg_bytes_t));
    if (buf_reserve(buf, n, nums_sz + strs_sz + p.bytes) != MG_OK) {
        errf(err, errlen, "input: out of memory");
        return MG_E_NOMEM;
    }
    json_fill_t f = {buf->_data, buf->_data + nums_sz, buf->_data + nums_sz + strs_sz};
    for (size_t i = 0; i < n; i++)
        json_item_fill(d, inputs ? json_array_get(inputs, i) : input, &f, &buf->_items[i]);
    out->n = n;
    out->items = buf->_items;
    out->batch = inputs != NULL;
    set_dense(out);
    return MG_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Input from Open Inference Protocol v2 tensors                                             */

typedef enum v2type { V2_NONE, V2_FP32, V2_FP64, V2_INT32, V2_INT64, V2_BYTES } v2type_t;

static v2type_t v2_parse_type(const char *s)
{
    static const struct {
        const char *name;
        v2type_t t;
    } map[] = {{"FP32", V2_FP32},
               {"FP64", V2_FP64},
               {"INT32", V2_INT32},
               {"INT64", V2_INT64},
               {"BYTES", V2_BYTES}};
    for (size_t i = 0; s != NULL && i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].name, s) == 0)
            return map[i].t;
    return V2_NONE;
}

static bool v2_type_ok(const mg_model_desc_t *d, v2type_t t, const char **expected)
{
    switch (d->input) {
    case MG_INPUT_FLOATS:
        *expected = "FP32, FP64, INT32 or INT64";
        return t == V2_FP32 || t == V2_FP64 || t == V2_INT32 || t == V2_INT64;
    case MG_INPUT_INTS:
        *expected = "INT32 or INT64";
        return t == V2_INT32 || t == V2_INT64;
    case MG_INPUT_STRING:
    case MG_INPUT_BYTES:
    case MG_INPUT_STRINGS:
        *expected = "BYTES";
        return t == V2_BYTES;
    }
    *expected = "?";
    return false;
}

static void shape_str(const int64_t *shape, size_t ndim, char *buf, size_t len)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, len - off, "[");
    for (size_t i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (off < len)
        snprintf(buf + off, len - off, "]");
}

/* From a checked shape, the number of items and elements per item; checks them against |d|. */
static mg_err_t v2_items(const mg_model_desc_t *d, const int64_t *shape, size_t ndim,
                         const char *where, size_t max_items, size_t *n, size_t *w, char *err,
                         size_t errlen)
{
    char s[128];
    shape_str(shape, ndim, s, sizeof(s));
    if (ndim == 0) {
        errf(err, errlen, "%s.shape: expected at least one dimension, got []", where);
        return MG_E_PROTO;
    }
    if (d->input == MG_INPUT_STRING || d->input == MG_INPUT_BYTES) {
        if (ndim > 2 || (ndim == 2 && shape[1] != 1)) {
            errf(err, errlen, "%s.shape: expected [n] (one %s per item), got %s", where,
                 d->input == MG_INPUT_STRING ? "string" : "bytes element", s);
            return MG_E_PROTO;
        }
        *n = (size_t)shape[0];
        *w = 1;
    } else if (ndim == 1) {
        *n = 1;
        *w = (size_t)shape[0];
    } else {
        *n = (size_t)shape[0];
        *w = 1;
        for (size_t i = 1; i < ndim; i++)
            *w *= (size_t)shape[i];
    }
    if (*n == 0) {
        errf(err, errlen, "%s.shape: expected at least one item, got %s", where, s);
        return MG_E_PROTO;
    }
    if (max_items != 0 && *n > max_items) {
        errf(err, errlen, "%s.shape: at most %zu items per request, got %zu", where, max_items, *n);
        return MG_E_LIMIT; /* as documented: the runtime answers 413 */
    }
    if (is_list_type(d->input) && d->input_len != 0 && *w != d->input_len &&
        !(d->input_optional && *w == 0)) {
        errf(err, errlen, "%s.shape: expected [n, %zu], got %s", where, d->input_len, s);
        return MG_E_PROTO;
    }
    if (is_list_type(d->input) && *w == 0 && !d->input_optional) {
        errf(err, errlen, "%s.shape: expected [n, %s], got %s", where, d->input_len ? "" : "width",
             s);
        return MG_E_PROTO;
    }
    return MG_OK;
}

/* Builds items over numbers stored row-major at |base| (n rows of w elements of |t|). */
static void numeric_items(mg_input_buf_t *buf, size_t n, size_t w, mg_dtype_t t, const void *base,
                          mg_input_view_t *out)
{
    size_t es = dtype_size(t);
    for (size_t i = 0; i < n; i++)
        buf->_items[i] = w ? (mg_input_item_t){t, (const char *)base + i * w * es, w}
                           : (mg_input_item_t){MG_DTYPE_NONE, NULL, 0};
    out->n = n;
    out->items = buf->_items;
    set_dense(out);
}

/* Builds items over |n * w| strings (elems). */
static void string_items(const mg_model_desc_t *d, mg_input_buf_t *buf, size_t n, size_t w,
                         const mg_bytes_t *elems, mg_input_view_t *out)
{
    for (size_t i = 0; i < n; i++) {
        if (d->input == MG_INPUT_STRINGS)
            buf->_items[i] = (mg_input_item_t){MG_DTYPE_STRS, elems + i * w, w};
        else
            buf->_items[i] =
                (mg_input_item_t){d->input == MG_INPUT_BYTES ? MG_DTYPE_BYTES : MG_DTYPE_STR,
                                  elems[i].p, elems[i].len};
    }
    out->n = n;
    out->items = buf->_items;
}

typedef struct v2_walk {
    v2type_t t;
    size_t count; /* leaves seen */
    size_t cap;   /* leaves that fit in out (pass 2) */
    void *out;    /* NULL in pass 1 */
    const char *where;
    char *err;
    size_t errlen;
} v2_walk_t;

/* Walks |data| (nested lists allowed), checking leaf types; stores leaves when w->out. */
static mg_err_t v2_walk(v2_walk_t *w, const json_t *data, int depth)
{
    if (json_is_array(data)) {
        if (depth > 32) {
            errf(w->err, w->errlen, "%s.data: nested too deeply", w->where);
            return MG_E_PROTO;
        }
        for (size_t i = 0; i < json_array_size(data); i++) {
            mg_err_t e = v2_walk(w, json_array_get(data, i), depth + 1);
            if (e != MG_OK)
                return e;
        }
        return MG_OK;
    }
    size_t k = w->count++;
    if (w->t == V2_BYTES) {
        if (!json_is_string(data)) {
            errf(w->err, w->errlen, "%s.data[%zu]: expected a string, got %s", w->where, k,
                 json_what(data));
            return MG_E_PROTO;
        }
        if (w->out && k < w->cap)
            ((mg_bytes_t *)w->out)[k] =
                (mg_bytes_t){json_string_value(data), json_string_length(data)};
        return MG_OK;
    }
    if (!json_is_number(data)) {
        errf(w->err, w->errlen, "%s.data[%zu]: expected a number, got %s", w->where, k,
             json_what(data));
        return MG_E_PROTO;
    }
    double v = json_number_value(data);
    if (w->t == V2_INT32 || w->t == V2_INT64) {
        bool integral = json_is_integer(data) || v == floor(v);
        long long iv = json_is_integer(data) ? (long long)json_integer_value(data) : (long long)v;
        if (!integral || (w->t == V2_INT32 && (iv < INT32_MIN || iv > INT32_MAX))) {
            errf(w->err, w->errlen, "%s.data[%zu]: expected an %s, got %.17g", w->where, k,
                 w->t == V2_INT32 ? "INT32" : "INT64", v);
            return MG_E_PROTO;
        }
        if (w->out && k < w->cap)
            ((int64_t *)w->out)[k] = iv;
        return MG_OK;
    }
    if (!mg_in_float32_range(v)) {
        errf(w->err, w->errlen, "%s.data[%zu]: %s, got %g", w->where, k, FLOAT32_RANGE, v);
        return MG_E_PROTO;
    }
    if (w->out && k < w->cap) {
        if (w->t == V2_FP32)
            ((float *)w->out)[k] = (float)v;
        else
            ((double *)w->out)[k] = v;
    }
    return MG_OK;
}

/* Checks "shape" and returns the element count; fills shape[] (up to 8 dims). */
static mg_err_t v2_shape(const json_t *js, const char *where, int64_t *shape, size_t *ndim,
                         size_t *total, char *err, size_t errlen)
{
    if (!json_is_array(js) || json_array_size(js) > 8) {
        errf(err, errlen, "%s.shape: expected a list of at most 8 non-negative integers, got %s",
             where, json_what(js));
        return MG_E_PROTO;
    }
    *ndim = json_array_size(js);
    *total = 1;
    for (size_t i = 0; i < *ndim; i++) {
        const json_t *v = json_array_get(js, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > (1LL << 40)) {
            errf(err, errlen, "%s.shape[%zu]: expected a non-negative integer, got %s", where, i,
                 json_is_integer(v) ? "a negative or huge number" : json_what(v));
            return MG_E_PROTO;
        }
        shape[i] = json_integer_value(v);
        if (shape[i] != 0 && *total > ((size_t)1 << 40) / (size_t)shape[i]) {
            errf(err, errlen, "%s.shape: too many elements", where);
            return MG_E_PROTO;
        }
        *total *= (size_t)shape[i];
    }
    return MG_OK;
}

mg_err_t mg_input_from_v2_json(const mg_model_desc_t *d, const json_t *tensor, const char *where,
                               mg_input_buf_t *buf, mg_input_view_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->batch = true;
    if (where == NULL)
        where = "inputs[0]";
    if (!json_is_object(tensor)) {
        errf(err, errlen,
             "%s: expected a tensor {\"name\", \"shape\", \"datatype\", \"data\"}, got %s", where,
             json_what(tensor));
        return MG_E_PROTO;
    }
    const json_t *jt = json_object_get(tensor, "datatype");
    v2type_t t = v2_parse_type(json_string_value(jt));
    const char *expected;
    if (!v2_type_ok(d, t, &expected)) {
        if (json_is_string(jt))
            errf(err, errlen, "%s.datatype: expected %s, got \"%s\"", where, expected,
                 json_string_value(jt));
        else
            errf(err, errlen, "%s.datatype: expected %s, got %s", where, expected, json_what(jt));
        return MG_E_PROTO;
    }
    int64_t shape[8];
    size_t ndim, total, n, w;
    mg_err_t e =
        v2_shape(json_object_get(tensor, "shape"), where, shape, &ndim, &total, err, errlen);
    if (e != MG_OK)
        return e;
    if ((e = v2_items(d, shape, ndim, where, buf->max_items, &n, &w, err, errlen)) != MG_OK)
        return e;
    const json_t *data = json_object_get(tensor, "data");
    if (!json_is_array(data)) {
        errf(err, errlen, "%s.data: expected a list, got %s", where, json_what(data));
        return MG_E_PROTO;
    }
    v2_walk_t walk = {.t = t, .where = where, .err = err, .errlen = errlen};
    if ((e = v2_walk(&walk, data, 0)) != MG_OK)
        return e;
    if (walk.count != total) {
        char s[128];
        shape_str(shape, ndim, s, sizeof(s));
        errf(err, errlen, "%s.data: expected %zu values for shape %s, got %zu", where, total, s,
             walk.count);
        return MG_E_PROTO;
    }
    size_t es = t == V2_FP32 ? 4 : t == V2_BYTES ? sizeof(mg_bytes_t) : 8;
    if (buf_reserve(buf, n, total * es) != MG_OK) {
        errf(err, errlen, "%s: out of memory", where);
        return MG_E_NOMEM;
    }
    walk.count = 0;
    walk.cap = total;
    walk.out = buf->_data;
    if ((e = v2_walk(&walk, data, 0)) != MG_OK)
        return e;
    if (t == V2_BYTES) {
        string_items(d, buf, n, w, (const mg_bytes_t *)buf->_data, out);
        return mg_input_check(d, out, err, errlen);
    }
    mg_dtype_t dt = t == V2_FP32 ? MG_DTYPE_F32 : t == V2_FP64 ? MG_DTYPE_F64 : MG_DTYPE_I64;
    numeric_items(buf, n, w, dt, buf->_data, out);
    return mg_input_check(d, out, err, errlen);
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

mg_err_t mg_input_from_tensor(const mg_model_desc_t *d, const char *datatype, const int64_t *shape,
                              size_t ndim, const void *data, size_t nbytes, const char *where,
                              mg_input_buf_t *buf, mg_input_view_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->batch = true;
    if (where == NULL)
        where = "inputs[0]";
    v2type_t t = v2_parse_type(datatype);
    const char *expected;
    if (!v2_type_ok(d, t, &expected)) {
        errf(err, errlen, "%s.datatype: expected %s, got \"%s\"", where, expected,
             datatype ? datatype : "");
        return MG_E_PROTO;
    }
    size_t total = 1, n, w;
    if (ndim > 8) {
        errf(err, errlen, "%s.shape: expected at most 8 dimensions, got %zu", where, ndim);
        return MG_E_PROTO;
    }
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] < 0 || shape[i] > (1LL << 40) ||
            (shape[i] != 0 && total > ((size_t)1 << 40) / (size_t)shape[i])) {
            errf(err, errlen, "%s.shape[%zu]: expected a non-negative integer, got %lld", where, i,
                 (long long)shape[i]);
            return MG_E_PROTO;
        }
        total *= (size_t)shape[i];
    }
    mg_err_t e = v2_items(d, shape, ndim, where, buf->max_items, &n, &w, err, errlen);
    if (e != MG_OK)
        return e;
    char s[128];
    shape_str(shape, ndim, s, sizeof(s));
    if (t != V2_BYTES) {
        size_t es = t == V2_FP32 || t == V2_INT32 ? 4 : 8;
        if (nbytes != total * es) {
            errf(err, errlen, "%s: expected %zu bytes of %s data for shape %s, got %zu", where,
                 total * es, datatype, s, nbytes);
            return MG_E_PROTO;
        }
        if (buf_reserve(buf, n, ((uintptr_t)data % es) ? nbytes : 0) != MG_OK) {
            errf(err, errlen, "%s: out of memory", where);
            return MG_E_NOMEM;
        }
        if ((uintptr_t)data % es) { /* misaligned: one copy, then the same as aligned */
            memcpy(buf->_data, data, nbytes);
            data = buf->_data;
        }
        mg_dtype_t dt = t == V2_FP32    ? MG_DTYPE_F32
                        : t == V2_FP64  ? MG_DTYPE_F64
                        : t == V2_INT32 ? MG_DTYPE_I32
                                        : MG_DTYPE_I64;
        numeric_items(buf, n, w, dt, data, out);
        return mg_input_check(d, out, err, errlen);
    }
    /* BYTES: each element is a 4-byte little-endian length and that many bytes. */
    if (buf_reserve(buf, n, total * sizeof(mg_bytes_t)) != MG_OK) {
        errf(err, errlen, "%s: out of memory", where);
        return MG_E_NOMEM;
    }
    mg_bytes_t *elems = (mg_bytes_t *)buf->_data;
    const unsigned char *p = data, *end = p + nbytes;
    size_t k = 0;
    while (p < end) {
        if (end - p < 4 || le32(p) > (size_t)(end - p - 4)) {
            errf(err, errlen, "%s: BYTES element %zu runs past the end of the data", where, k);
            return MG_E_PROTO;
        }
        uint32_t len = le32(p);
        if (k < total)
            elems[k] = (mg_bytes_t){(const char *)p + 4, len};
        k++;
        p += 4 + len;
    }
    if (k != total) {
        errf(err, errlen, "%s: expected %zu BYTES elements for shape %s, got %zu", where, total, s,
             k);
        return MG_E_PROTO;
    }
    string_items(d, buf, n, w, elems, out);
    return mg_input_check(d, out, err, errlen);
}

/* ---------------------------------------------------------------------------------------- */
/* Input checks                                                                              */

static const char *dtype_phrase(mg_dtype_t t)
{
    switch (t) {
    case MG_DTYPE_NONE:
        return "nothing";
    case MG_DTYPE_F32:
    case MG_DTYPE_F64:
        return "a list of numbers";
    case MG_DTYPE_I32:
    case MG_DTYPE_I64:
        return "a list of integers";
    case MG_DTYPE_STR:
        return "a string";
    case MG_DTYPE_BYTES:
        return "bytes";
    case MG_DTYPE_STRS:
        return "a list of strings";
    }
    return "something else";
}

static bool dtype_fits(const mg_model_desc_t *d, mg_dtype_t t)
{
    switch (d->input) {
    case MG_INPUT_FLOATS:
        return dtype_is_number(t);
    case MG_INPUT_INTS:
        return t == MG_DTYPE_I32 || t == MG_DTYPE_I64;
    case MG_INPUT_STRING:
        return t == MG_DTYPE_STR || (t == MG_DTYPE_BYTES && (d->accepts & MG_ACCEPT_BYTES)) ||
               (t == MG_DTYPE_STRS && (d->accepts & MG_ACCEPT_STRINGS));
    case MG_INPUT_BYTES:
        return t == MG_DTYPE_BYTES || t == MG_DTYPE_STR;
    case MG_INPUT_STRINGS:
        return t == MG_DTYPE_STRS;
    }
    return false;
}

mg_err_t mg_input_check(const mg_model_desc_t *d, const mg_input_view_t *in, char *err,
                        size_t errlen)
{
    char where[32];
    if (in->n == 0 || in->items == NULL) {
        errf(err, errlen, "inputs: expected at least one input, got none");
        return MG_E_PROTO;
    }
    for (size_t i = 0; i < in->n; i++) {
        const mg_input_item_t *it = &in->items[i];
        if (it->dtype == MG_DTYPE_NONE || (it->len == 0 && is_list_type(d->input))) {
            if (d->input_optional)
                continue;
            mg_input_where(in, i, where, sizeof(where));
            if (d->input_len && is_list_type(d->input))
                errf(err, errlen, "%s: expected %zu %s, got none", where, d->input_len,
                     elem_plural(d->input));
            else if (is_list_type(d->input))
                errf(err, errlen, "%s: expected %s, got an empty list", where,
                     type_phrase(d->input));
            else if (it->dtype == MG_DTYPE_NONE)
                errf(err, errlen, "%s: expected %s, got nothing", where, type_phrase(d->input));
            else
                continue; /* an empty string is a string */
            return MG_E_PROTO;
        }
        if (!dtype_fits(d, it->dtype)) {
            errf(err, errlen, "%s: expected %s, got %s",
                 mg_input_where(in, i, where, sizeof(where)), desc_phrase(d),
                 dtype_phrase(it->dtype));
            return MG_E_PROTO;
        }
        if (is_list_type(d->input) && d->input_len != 0 && it->len != d->input_len) {
            errf(err, errlen, "%s: expected %zu %s, got %zu",
                 mg_input_where(in, i, where, sizeof(where)), d->input_len, elem_plural(d->input),
                 it->len);
            return MG_E_PROTO;
        }
        if (it->len != 0 && it->data == NULL) {
            errf(err, errlen, "%s: no data", mg_input_where(in, i, where, sizeof(where)));
            return MG_E_PROTO;
        }
    }
    return MG_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Outputs                                                                                   */

void mg_outputs_init(mg_outputs_t *o)
{
    memset(o, 0, sizeof(*o));
}

void mg_outputs_clear(mg_outputs_t *o)
{
    free(o->items);
    free(o->json);
    free(o->values);
    for (size_t i = 0; i < MG_OUT_SCRATCH_SLOTS; i++)
        free(o->_scratch[i]);
    memset(o, 0, sizeof(*o));
}

mg_err_t mg_out_begin(mg_outputs_t *o, size_t n)
{
    o->n = 0;
    o->err[0] = '\0';
    o->_json_len = o->_values_len = o->_cur_json = o->_cur_values = 0;
    o->_scratch_used = 0;
    if (grow((void **)&o->items, &o->_items_cap, n ? n : 1, sizeof(*o->items)) ||
        grow((void **)&o->json, &o->_json_cap, 256, 1) ||
        grow((void **)&o->values, &o->_values_cap, 16, sizeof(double)))
        return MG_E_NOMEM;
    memset(o->items, 0, n * sizeof(*o->items));
    o->json[0] = '\0';
    o->n = n;
    return MG_OK;
}

mg_err_t mg_out_write(mg_outputs_t *o, const char *s, size_t len)
{
    if (grow((void **)&o->json, &o->_json_cap, o->_json_len + len + 1, 1))
        return MG_E_NOMEM;
    memcpy(o->json + o->_json_len, s, len);
    o->_json_len += len;
    o->json[o->_json_len] = '\0';
    return MG_OK;
}

static mg_err_t out_vprintf(mg_outputs_t *o, const char *fmt, va_list ap)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (grow((void **)&o->json, &o->_json_cap, o->_json_len + 64, 1))
            return MG_E_NOMEM;
        size_t room = o->_json_cap - o->_json_len;
        va_list aq;
        va_copy(aq, ap);
        int k = vsnprintf(o->json + o->_json_len, room, fmt, aq);
        va_end(aq);
        if (k < 0)
            return MG_E_IO;
        if ((size_t)k < room) {
            o->_json_len += (size_t)k;
            return MG_OK;
        }
        if (grow((void **)&o->json, &o->_json_cap, o->_json_len + (size_t)k + 1, 1))
            return MG_E_NOMEM;
    }
    return MG_E_NOMEM;
}

mg_err_t mg_out_printf(mg_outputs_t *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mg_err_t e = out_vprintf(o, fmt, ap);
    va_end(ap);
    return e;
}

mg_err_t mg_out_double(mg_outputs_t *o, double v)
{
    if (!isfinite(v))
        return mg_out_write(o, "null", 4); /* JSON has no NaN or infinity */
    char b[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(b, sizeof(b), "%.*g", prec, v);
        if (prec == 17 || strtod(b, NULL) == v)
            break;
    }
    return mg_out_write(o, b, strlen(b));
}

mg_err_t mg_out_values(mg_outputs_t *o, const double *v, size_t n)
{
    if (grow((void **)&o->values, &o->_values_cap, o->_values_len + n, sizeof(double)))
        return MG_E_NOMEM;
    memcpy(o->values + o->_values_len, v, n * sizeof(double));
    o->_values_len += n;
    return MG_OK;
}

mg_err_t mg_out_end(mg_outputs_t *o, size_t i, double score)
{
    if (i >= o->n)
        return MG_E_IO;
    if (grow((void **)&o->json, &o->_json_cap, o->_json_len + 1, 1))
        return MG_E_NOMEM;
    o->json[o->_json_len] = '\0';
    o->items[i] = (mg_output_item_t){.err = MG_OK,
                                     .json_off = o->_cur_json,
                                     .json_len = o->_json_len - o->_cur_json,
                                     .score = score,
                                     .values_off = o->_cur_values,
                                     .n_values = o->_values_len - o->_cur_values};
    o->_json_len++; /* keep the NUL */
    o->_cur_json = o->_json_len;
    o->_cur_values = o->_values_len;
    return MG_OK;
}

mg_err_t mg_out_fail(mg_outputs_t *o, const mg_input_view_t *in, size_t i, const char *fmt, ...)
{
    char where[32];
    o->_json_len = o->_cur_json; /* drop whatever the item had written */
    o->_values_len = o->_cur_values;
    mg_err_t e = mg_out_printf(o, "%s: ", mg_input_where(in, i, where, sizeof(where)));
    if (e != MG_OK)
        return e;
    size_t where_len = o->_json_len - o->_cur_json;
    va_list ap;
    va_start(ap, fmt);
    e = out_vprintf(o, fmt, ap);
    va_end(ap);
    if (e != MG_OK || (e = mg_out_end(o, i, 0)) != MG_OK)
        return e;
    o->items[i].err = MG_E_PROTO;
    o->items[i].where_len = where_len;
    return MG_OK;
}

mg_err_t mg_out_error(mg_outputs_t *o, mg_err_t e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->err, sizeof(o->err), fmt, ap);
    va_end(ap);
    return e;
}

void *mg_out_scratch(mg_outputs_t *o, size_t size)
{
    if (o->_scratch_used >= MG_OUT_SCRATCH_SLOTS)
        return NULL;
    unsigned k = o->_scratch_used;
    if (size == 0)
        size = 1;
    if (o->_scratch_cap[k] < size || o->_scratch[k] == NULL) {
        size_t cap = o->_scratch_cap[k] ? o->_scratch_cap[k] : 4096;
        while (cap < size) {
            if (cap > SIZE_MAX / 2)
                return NULL;
            cap *= 2;
        }
        void *p = NULL;
        if (posix_memalign(&p, 64, cap) != 0)
            return NULL;
        free(o->_scratch[k]);
        o->_scratch[k] = p;
        o->_scratch_cap[k] = cap;
    }
    o->_scratch_used++;
    return o->_scratch[k];
}

const void *mg_input_matrix(const mg_input_view_t *in, mg_dtype_t dtype, size_t width,
                            mg_outputs_t *o)
{
    if (dtype != MG_DTYPE_F32 && dtype != MG_DTYPE_F64)
        return NULL;
    if (in->dense != NULL && in->dense_dtype == dtype && in->dense_width == width)
        return in->dense;
    if (width != 0 && in->n > SIZE_MAX / width / 8)
        return NULL;
    void *m = mg_out_scratch(o, in->n * width * dtype_size(dtype));
    if (m == NULL)
        return NULL;
    for (size_t i = 0; i < in->n; i++) {
        const mg_input_item_t *it = &in->items[i];
        for (size_t j = 0; j < width; j++) {
            double v =
                j < it->len && dtype_is_number(it->dtype) ? number_at(it->dtype, it->data, j) : 0.0;
            if (dtype == MG_DTYPE_F32)
                ((float *)m)[i * width + j] = (float)v;
            else
                ((double *)m)[i * width + j] = v;
        }
    }
    return m;
}

mg_err_t mg_kind_check_keys(const json_t *obj, const char *const *valid, const char *where,
                            char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        bool ok = false;
        for (size_t i = 0; valid[i] != NULL && !ok; i++)
            ok = strcmp(valid[i], key) == 0;
        if (ok)
            continue;
        char list[256] = "";
        for (size_t i = 0; valid[i] != NULL; i++)
            snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                     valid[i]);
        errf(err, errlen, "%s: unknown key '%s'; valid: %s", where, key, list);
        return MG_E_CONFIG;
    }
    return MG_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Models                                                                                    */

static double now_ms(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Hashes the file at |path|; the error names the path. */
static mg_err_t sha256_file(const char *path, char hex[65], uint64_t *size, char *err,
                            size_t errlen)
{
    /* O_NONBLOCK: a FIFO's open would wait for a writer for ever, and with it the loader
     * and the drain at SIGTERM; only a regular file has an end to read to (not /dev/zero) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        errf(err, errlen, "model file '%s': %s", path, strerror(e));
        if (fd >= 0)
            close(fd);
        return e == ENOENT || e == ENOTDIR ? MG_E_NOTFOUND : MG_E_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        errf(err, errlen, "model file '%s': not a regular file (a %s)", path,
             S_ISFIFO(st.st_mode)   ? "FIFO"
             : S_ISDIR(st.st_mode)  ? "directory"
             : S_ISCHR(st.st_mode)  ? "character device"
             : S_ISSOCK(st.st_mode) ? "socket"
                                    : "special file");
        close(fd);
        return MG_E_CONFIG;
    }
    FILE *f = fcntl(fd, F_SETFL, 0) == 0 ? fdopen(fd, "rb") : NULL;
    if (f == NULL) {
        errf(err, errlen, "model file '%s': %s", path, strerror(errno));
        close(fd);
        return MG_E_IO;
    }
    mg_err_t rc = MG_OK;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        errf(err, errlen, "model file '%s': cannot start sha256 (OpenSSL)", path);
        rc = MG_E_NOMEM;
        goto out;
    }
    unsigned char chunk[65536];
    size_t k;
    *size = 0;
    while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        EVP_DigestUpdate(ctx, chunk, k);
        *size += k;
    }
    if (ferror(f)) {
        errf(err, errlen, "model file '%s': %s", path, strerror(errno ? errno : EIO));
        rc = MG_E_IO;
        goto out;
    }
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    for (unsigned i = 0; i < mdlen && i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    hex[64] = '\0';
out:
    EVP_MD_CTX_free(ctx);
    fclose(f);
    return rc;
}

/* A model's name and version go into URL paths (/v2/models/NAME/versions/V), log lines and
 * Prometheus labels: letters, digits and . _ - (and + in a version), at most 128 bytes. A
 * newline in one wrote a raw line into the log and a label Prometheus cannot read. */
static bool label_ok(const char *s, bool version)
{
    size_t n = strlen(s);
    if (n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || (version && c == '+')))
            return false;
    }
    return true;
}

mg_err_t mg_model_load_kind(const mg_model_kind_t *kind, const char *path, const char *name,
                            const char *version, const char *options_json, mg_model_t **out,
                            char *err, size_t errlen)
{
    *out = NULL;
    double t0 = now_ms(CLOCK_MONOTONIC);
    if (kind == NULL || path == NULL) {
        errf(err, errlen, "model: no kind or no path given");
        return MG_E_CONFIG;
    }
    json_t *opts = NULL;
    mg_model_t *m = NULL;
    mg_err_t e = MG_E_NOMEM;
    if (!label_ok(name ? name : "", false) || !label_ok(version ? version : "", true)) {
        errf(err, errlen,
             "model '%s': %s: expected letters, digits, '.', '_' and '-'%s, at most 128 of them",
             path, !label_ok(name ? name : "", false) ? "name" : "version",
             !label_ok(name ? name : "", false) ? "" : " (and '+')");
        return MG_E_CONFIG;
    }
    if (options_json != NULL && options_json[0] != '\0') {
        json_error_t jerr;
        opts = json_loads(options_json, JSON_REJECT_DUPLICATES, &jerr);
        if (opts == NULL || !json_is_object(opts)) {
            if (opts == NULL)
                errf(err, errlen, "model '%s': load options: %d:%d: %s", path, jerr.line,
                     jerr.column, jerr.text);
            else
                errf(err, errlen, "model '%s': load options: expected a JSON object, got %s", path,
                     json_what(opts));
            e = MG_E_CONFIG;
            goto fail;
        }
    } else if ((opts = json_object()) == NULL) {
        errf(err, errlen, "model '%s': out of memory", path);
        goto fail;
    }
    if ((m = calloc(1, sizeof(*m))) == NULL || (m->name = strdup(name ? name : "")) == NULL ||
        (m->version = strdup(version ? version : "")) == NULL || (m->path = strdup(path)) == NULL) {
        errf(err, errlen, "model '%s': out of memory", path);
        goto fail;
    }
    if ((e = sha256_file(path, m->sha256, &m->size, err, errlen)) != MG_OK)
        goto fail;
    if ((e = kind->load(path, opts, &m->_impl, err, errlen)) != MG_OK)
        goto fail;
    if (pthread_mutex_init(&m->_lock, NULL) != 0) {
        kind->free(m->_impl);
        m->_impl = NULL;
        errf(err, errlen, "model '%s': cannot create a mutex", path);
        e = MG_E_NOMEM;
        goto fail;
    }
    m->kind = kind;
    kind->describe(m->_impl, &m->desc);
    atomic_init(&m->_refs, 1);
    m->_magic = MG_MODEL_MAGIC;
    m->loaded_at_ms = (int64_t)now_ms(CLOCK_REALTIME);
    m->load_ms = now_ms(CLOCK_MONOTONIC) - t0;
    json_decref(opts);
    MG_LOG(MG_LOG_INFO, "model",
           "loaded %s model '%s' version '%s' from %s (%llu bytes, sha256 %.16s...) in %.1f ms: "
           "input %s[%zu], output %s%s",
           kind->name, m->name, m->version, path, (unsigned long long)m->size, m->sha256,
           m->load_ms, mg_input_type_name(m->desc.input), m->desc.input_len,
           mg_output_kind_name(m->desc.output), m->desc.thread_safe ? "" : " (serialised)");
    *out = m;
    return MG_OK;
fail:
    json_decref(opts);
    if (m != NULL) {
        free(m->name);
        free(m->version);
        free(m->path);
        free(m);
    }
    return e;
}

mg_err_t mg_model_load(const char *kind, const char *path, const char *name, const char *version,
                       const char *options_json, mg_model_t **out, char *err, size_t errlen)
{
    const mg_model_kind_t *k = mg_model_kind_find(kind);
    if (k == NULL) {
        *out = NULL;
        char valid[128] = "";
        for (size_t i = 0; kind_names[i] != NULL; i++)
            snprintf(valid + strlen(valid), sizeof(valid) - strlen(valid), "%s%s", i ? ", " : "",
                     kind_names[i]);
        errf(err, errlen, "unknown model kind '%s'; valid: %s", kind ? kind : "", valid);
        return MG_E_NOTFOUND;
    }
    return mg_model_load_kind(k, path, name, version, options_json, out, err, errlen);
}

mg_model_t *mg_model_ref(mg_model_t *m)
{
    assert(m->_magic == MG_MODEL_MAGIC);
    atomic_fetch_add_explicit(&m->_refs, 1, memory_order_relaxed);
    return m;
}

unsigned mg_model_refs(const mg_model_t *m)
{
    return atomic_load_explicit(&((mg_model_t *)m)->_refs, memory_order_relaxed);
}

void mg_model_unref(mg_model_t *m)
{
    if (m == NULL)
        return;
    assert(m->_magic == MG_MODEL_MAGIC);
    /* acq_rel: the freeing thread sees every write other holders made before their unref. */
    if (atomic_fetch_sub_explicit(&m->_refs, 1, memory_order_acq_rel) != 1)
        return;
    MG_LOG(MG_LOG_INFO, "model", "freeing %s model '%s' version '%s' (%s)", m->kind->name, m->name,
           m->version, m->path);
    m->kind->free(m->_impl);
    pthread_mutex_destroy(&m->_lock);
    m->_magic = 0;
    free(m->name);
    free(m->version);
    free(m->path);
    free(m);
}

mg_err_t mg_model_predict(mg_model_t *m, const mg_input_view_t *in, const json_t *option,
                          const json_t *features, mg_outputs_t *out)
{
    assert(m->_magic == MG_MODEL_MAGIC);
    out->n = 0;
    out->err[0] = '\0';
    mg_err_t e = mg_input_check(&m->desc, in, out->err, sizeof(out->err));
    if (e != MG_OK)
        return e;
    if (!m->desc.thread_safe)
        pthread_mutex_lock(&m->_lock);
    e = m->kind->predict(m->_impl, in, option, features, out);
    if (!m->desc.thread_safe)
        pthread_mutex_unlock(&m->_lock);
    if (e == MG_OK && out->n != in->n)
        e = mg_out_error(out, MG_E_IO, "model '%s': the %s kind answered %zu of %zu items", m->name,
                         m->kind->name, out->n, in->n);
    if (e != MG_OK && out->err[0] == '\0')
        snprintf(out->err, sizeof(out->err), "model '%s' (%s): %s", m->name, m->kind->name,
                 mg_strerror(e));
    return e;
}

mg_err_t mg_model_warmup(mg_model_t *m, unsigned rounds, char *err, size_t errlen)
{
    const mg_model_desc_t *d = &m->desc;
    size_t w = d->input_len ? d->input_len : 1;
    mg_input_item_t item = {0};
    double *nums = NULL;
    mg_bytes_t *strs = NULL;
    mg_outputs_t o;
    mg_outputs_init(&o);
    mg_err_t e = MG_E_NOMEM;
    switch (d->input) {
    case MG_INPUT_FLOATS:
    case MG_INPUT_INTS:
        if ((nums = calloc(w, sizeof(double))) == NULL)
            goto nomem;
        /* 8-byte zeros read the same as F64 0.0 and I64 0 */
        item =
            (mg_input_item_t){d->input == MG_INPUT_FLOATS ? MG_DTYPE_F64 : MG_DTYPE_I64, nums, w};
        break;
    case MG_INPUT_STRING:
    case MG_INPUT_BYTES:
        item =
            (mg_input_item_t){d->input == MG_INPUT_STRING ? MG_DTYPE_STR : MG_DTYPE_BYTES, "", 0};
        break;
    case MG_INPUT_STRINGS:
        if ((strs = calloc(w, sizeof(*strs))) == NULL)
            goto nomem;
        for (size_t i = 0; i < w; i++)
            strs[i] = (mg_bytes_t){"", 0};
        item = (mg_input_item_t){MG_DTYPE_STRS, strs, w};
        break;
    }
    mg_input_view_t in = {.n = 1, .items = &item};
    for (unsigned r = 0; r < (rounds ? rounds : 1); r++) {
        if ((e = mg_model_predict(m, &in, NULL, NULL, &o)) != MG_OK) {
            errf(err, errlen, "model '%s' (%s) failed its warm-up: %s", m->name, m->path, o.err);
            goto out;
        }
        if (o.items[0].err != MG_OK) {
            errf(err, errlen, "model '%s' (%s) failed its warm-up: %s", m->name, m->path,
                 mg_output_json(&o, 0));
            e = MG_E_IO;
            goto out;
        }
    }
    e = MG_OK;
    goto out;
nomem:
    errf(err, errlen, "model '%s': out of memory in warm-up", m->name);
out:
    free(nums);
    free(strs);
    mg_outputs_clear(&o);
    return e;
}
