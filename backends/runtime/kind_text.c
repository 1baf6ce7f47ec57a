/*
 * backends/runtime/kind_text.c - the `text` kind: a bag-of-words linear model over tokens, as
 * scikit-learn's CountVectorizer / TfidfVectorizer followed by LogisticRegression or a linear
 * regressor computes it (a JSON file written by tools/export_text.py).
 *
 * File (tools/README.md has the full description; every key is checked, unknown keys refused):
 *   {"format": "mg-text", "version": 1, "type": "logistic" | "multinomial" | "regression",
 *    "lowercase": true, "token_pattern": "word", "ngram_range": [1, 2],
 *    "binary": false, "sublinear_tf": false,
 *    "vocabulary": {"token": column, ...}, "idf": [V numbers] (optional), "norm": "l2"|"l1"|null,
 *    "coef": [[V numbers] x K], "intercept": [K numbers], "classes": [labels],
 *    "description": "..."}
 *
 * One input item is a text (MG_DTYPE_STR), UTF-8 text as bytes (MG_DTYPE_BYTES: {"b64": ...}
 * in JSON) or a list of tokens (MG_DTYPE_STRS, used as they are: no splitting, no lowercasing).
 * Tokenizer ("token_pattern": "word"): scikit-learn's default (?u)\b\w\w+\b, approximated on
 * UTF-8 bytes: a token is a run of 2 or more word characters, where a word character is an
 * ASCII letter, digit or '_' or any non-ASCII character (characters are counted, not bytes);
 * with "lowercase", A-Z are lowercased (ASCII only). This is exact for ASCII text and for
 * non-ASCII letters that are already lower case; scikit-learn also lowercases non-ASCII upper
 * case and splits at non-ASCII punctuation (export_text.check_tokenizer finds such texts). A
 * text or bytes item that is not valid UTF-8 is refused alone (scikit-learn's default
 * decode_error="strict").
 * Features: unigrams and/or bigrams ("tok1 tok2", as scikit-learn joins them) looked up in the
 * vocabulary; counts -> 1 when "binary" -> 1 + ln(tf) when "sublinear_tf" -> * idf -> / norm.
 * Then z = coef . x + intercept and the answer is the linear kind's: regression z (a list when
 * K > 1); logistic K = 1 sigmoid, K > 1 one-vs-rest; multinomial softmax; label = argmax
 * (first on ties), score = its probability, values = every class's probability.
 *
 * DESIGN
 * The vocabulary is one open-addressing hash table built at load (FNV-1a over the token bytes,
 * Fibonacci-hashed into a power-of-two table at most half full, linear probing); tokens are
 * hashed and compared straight from the request, lowercasing on the fly, so a lookup copies
 * nothing. The coefficients are stored transposed (V x K) so that one column's K weights are
 * contiguous. Per item, the columns found are accumulated in a small table keyed by column,
 * sized from the item's length (at most twice its possible features, never more than twice
 * the vocabulary) in the caller's scratch: predict allocates nothing, whatever the text's
 * length, and its cost is linear in the text plus the features found, not in V. The features
 * are sorted by column before the weighting and the dot product, the order scikit-learn's
 * sparse rows use, so the sums are done in the same order. The model is read-only after load:
 * predict is reentrant.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/runtime/model.h"

typedef enum txt_type { TXT_REGRESSION, TXT_LOGISTIC, TXT_MULTINOMIAL } txt_type_t;
typedef enum txt_norm { TXT_NORM_NONE, TXT_NORM_L2, TXT_NORM_L1 } txt_norm_t;

#define EMPTY UINT32_MAX /* a free vocabulary slot (col) or accumulator slot (index) */

typedef struct vslot {
    uint32_t tag; /* high half of the token's hash: most mismatches cost no memcmp */
    uint32_t col; /* EMPTY when free */
    uint32_t off; /* the token: keys + off, len bytes */
    uint32_t len;
} vslot_t;

typedef struct text {
    txt_type_t type;
    bool lowercase, binary, sublinear;
    unsigned ngram_min, ngram_max; /* 1 <= min <= max <= 2 */
    txt_norm_t norm;
    size_t v;          /* vocabulary size = coefficient columns */
    size_t k;          /* coefficient rows */
    double *coef_t;    /* v x k: column c's k weights at coef_t + c * k */
    double *intercept; /* k */
    double *idf;       /* v, or NULL */
    char *keys;        /* the tokens, back to back */
    vslot_t *slots;    /* 1 << bits slots, at most half used */
    unsigned bits;
    size_t n_classes; /* classifiers: 2 when k == 1, else k; regression: 0 */
    char **classes;   /* n_classes compact JSON fragments */
} text_t;

/* One feature of the item being predicted. */
typedef struct feat {
    uint32_t col;
    double v;
} feat_t;

static void text_free(void *impl)
{
    text_t *t = impl;
    if (t == NULL)
        return;
    for (size_t i = 0; t->classes != NULL && i < t->n_classes; i++)
        free(t->classes[i]);
    free(t->classes);
    free(t->coef_t);
    free(t->intercept);
    free(t->idf);
    free(t->keys);
    free(t->slots);
    free(t);
}

/* ---------------------------------------------------------------------------------------- */
/* Hashing and lookup                                                                        */

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static inline unsigned char fold(unsigned char c, bool lower)
{
    return lower && c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static inline uint64_t fnv(uint64_t h, const unsigned char *p, size_t n, bool lower)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ fold(p[i], lower)) * FNV_PRIME;
    return h;
}

static inline size_t slot_of(uint64_t h, unsigned bits)
{
    return (size_t)((h * 0x9e3779b97f4a7c15ull) >> (64 - bits));
}

/* Is the token at |key| (|klen| bytes) the text a (+ ' ' + b when b != NULL), folded? */
static bool key_equals(const char *key, size_t klen, const unsigned char *a, size_t alen,
                       const unsigned char *b, size_t blen, bool lower)
{
    if (klen != alen + (b != NULL ? 1 + blen : 0))
        return false;
    const unsigned char *k = (const unsigned char *)key;
    for (size_t i = 0; i < alen; i++)
        if (k[i] != fold(a[i], lower))
            return false;
    if (b == NULL)
        return true;
    if (k[alen] != ' ')
        return false;
    for (size_t i = 0; i < blen; i++)
        if (k[alen + 1 + i] != fold(b[i], lower))
            return false;
    return true;
}

/* The column of the unigram a, or of the bigram "a b" (b != NULL); EMPTY when unknown. */
static uint32_t vocab_find(const text_t *t, const unsigned char *a, size_t alen,
                           const unsigned char *b, size_t blen, bool lower)
{
    uint64_t h = fnv(FNV_OFFSET, a, alen, lower);
    if (b != NULL) {
        h = (h ^ ' ') * FNV_PRIME;
        h = fnv(h, b, blen, lower);
    }
    uint32_t tag = (uint32_t)(h >> 32);
    size_t mask = ((size_t)1 << t->bits) - 1;
    for (size_t i = slot_of(h, t->bits);; i = (i + 1) & mask) {
        const vslot_t *s = &t->slots[i];
        if (s->col == EMPTY)
            return EMPTY;
        if (s->tag == tag && key_equals(t->keys + s->off, s->len, a, alen, b, blen, lower))
            return s->col;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Loading                                                                                   */

typedef struct ctx {
    const char *path;
    char *err;
    size_t errlen;
} ctx_t;

static mg_err_t fail(const ctx_t *c, mg_err_t e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static mg_err_t fail(const ctx_t *c, mg_err_t e, const char *fmt, ...)
{
    int n = snprintf(c->err, c->errlen, "text model '%s': ", c->path);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return e;
}

/* Reads a list of exactly |n| finite numbers into out[i * stride]. */
static mg_err_t read_numbers(const ctx_t *c, const json_t *a, size_t n, double *out, size_t stride,
                             const char *what, const char *why)
{
    if (!json_is_array(a))
        return fail(c, MG_E_CONFIG, "%s: expected a list of %zu numbers%s", what, n, why);
    if (json_array_size(a) != n)
        return fail(c, MG_E_CONFIG, "%s: expected %zu numbers%s, got %zu", what, n, why,
                    json_array_size(a));
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return fail(c, MG_E_CONFIG, "%s[%zu]: expected a finite number", what, i);
        out[i * stride] = json_number_value(v);
    }
    return MG_OK;
}

static mg_err_t parse_bool(const ctx_t *c, const json_t *doc, const char *key, bool def, bool *out)
{
    const json_t *v = json_object_get(doc, key);
    if (v == NULL) {
        *out = def;
        return MG_OK;
    }
    if (!json_is_boolean(v))
        return fail(c, MG_E_CONFIG, "%s: expected true or false", key);
    *out = json_is_true(v);
    return MG_OK;
}

/* The header keys: everything but the vocabulary and the numbers. */
static mg_err_t parse_header(const ctx_t *c, const json_t *doc, text_t *t)
{
    const json_t *v = json_object_get(doc, "format");
    const char *fmt = json_string_value(v);
    if (fmt == NULL || strcmp(fmt, "mg-text") != 0)
        return fail(c, MG_E_CONFIG, "format: expected \"mg-text\"%s",
                    fmt != NULL && strcmp(fmt, "mg-linear") == 0
                        ? " (this is a linear model file: load it with kind \"linear\")"
                        : " (write the file with tools/export_text.py)");
    v = json_object_get(doc, "version");
    if (v != NULL && (!json_is_integer(v) || json_integer_value(v) != 1))
        return fail(c, MG_E_CONFIG, "version: expected 1 (this runtime reads version 1)");
    const char *type = json_string_value(json_object_get(doc, "type"));
    if (type != NULL && strcmp(type, "regression") == 0)
        t->type = TXT_REGRESSION;
    else if (type != NULL && strcmp(type, "logistic") == 0)
        t->type = TXT_LOGISTIC;
    else if (type != NULL && strcmp(type, "multinomial") == 0)
        t->type = TXT_MULTINOMIAL;
    else
        return fail(c, MG_E_CONFIG,
                    "type: expected \"regression\", \"logistic\" or \"multinomial\"");
    if (parse_bool(c, doc, "lowercase", true, &t->lowercase) != MG_OK ||
        parse_bool(c, doc, "binary", false, &t->binary) != MG_OK ||
        parse_bool(c, doc, "sublinear_tf", false, &t->sublinear) != MG_OK)
        return MG_E_CONFIG;
    v = json_object_get(doc, "token_pattern");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), "word") != 0))
        return fail(c, MG_E_CONFIG,
                    "token_pattern: expected \"word\" (scikit-learn's default "
                    "(?u)\\b\\w\\w+\\b); other patterns are not supported");
    t->ngram_min = t->ngram_max = 1;
    v = json_object_get(doc, "ngram_range");
    if (v != NULL) {
        const json_t *lo = json_array_get(v, 0), *hi = json_array_get(v, 1);
        if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(lo) ||
            !json_is_integer(hi) || json_integer_value(lo) < 1 ||
            json_integer_value(lo) > json_integer_value(hi) || json_integer_value(hi) > 2)
            return fail(c, MG_E_CONFIG,
                        "ngram_range: expected [min, max] with 1 <= min <= max <= 2");
        t->ngram_min = (unsigned)json_integer_value(lo);
        t->ngram_max = (unsigned)json_integer_value(hi);
    }
    v = json_object_get(doc, "norm");
    if (v == NULL || json_is_null(v))
        t->norm = TXT_NORM_NONE;
    else if (json_is_string(v) && strcmp(json_string_value(v), "l2") == 0)
        t->norm = TXT_NORM_L2;
    else if (json_is_string(v) && strcmp(json_string_value(v), "l1") == 0)
        t->norm = TXT_NORM_L1;
    else
        return fail(c, MG_E_CONFIG, "norm: expected \"l2\", \"l1\" or null");
    v = json_object_get(doc, "description");
    if (v != NULL && !json_is_string(v))
        return fail(c, MG_E_CONFIG, "description: expected a string");
    return MG_OK;
}

/* Builds the hash table over "vocabulary": every column 0..v-1 has exactly one token. */
static mg_err_t parse_vocabulary(const ctx_t *c, const json_t *vocab, text_t *t)
{
    if (!json_is_object(vocab) || json_object_size(vocab) == 0)
        return fail(c, MG_E_CONFIG, "vocabulary: expected an object {\"token\": column, ...}");
    if (json_object_size(vocab) != t->v)
        return fail(c, MG_E_CONFIG,
                    "vocabulary: %zu tokens for %zu coefficient columns (the length of "
                    "coef[0]); every column needs exactly one token",
                    json_object_size(vocab), t->v);
    if (t->v > UINT32_MAX / 4)
        return fail(c, MG_E_CONFIG, "vocabulary: too many tokens (%zu)", t->v);
    size_t total = 0;
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach((json_t *)vocab, key, klen, val)
    {
        total += klen;
    }
    if (total >= UINT32_MAX)
        return fail(c, MG_E_CONFIG, "vocabulary: tokens too long (%zu bytes)", total);
    t->bits = 2;
    while (((size_t)1 << t->bits) < 2 * t->v)
        t->bits++;
    size_t nslots = (size_t)1 << t->bits;
    uint32_t *owner = malloc(t->v * sizeof(*owner)); /* column -> slot, to name duplicates */
    if ((t->keys = malloc(total ? total : 1)) == NULL ||
        (t->slots = malloc(nslots * sizeof(*t->slots))) == NULL || owner == NULL) {
        free(owner);
        return fail(c, MG_E_NOMEM, "vocabulary: out of memory for %zu tokens", t->v);
    }
    for (size_t i = 0; i < nslots; i++)
        t->slots[i].col = EMPTY;
    for (size_t i = 0; i < t->v; i++)
        owner[i] = EMPTY;
    mg_err_t e = MG_OK;
    size_t off = 0;
    json_object_keylen_foreach((json_t *)vocab, key, klen, val)
    {
        if (klen == 0) {
            e = fail(c, MG_E_CONFIG, "vocabulary: the empty string is not a token");
            break;
        }
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            (uint64_t)json_integer_value(val) >= t->v) {
            e = fail(c, MG_E_CONFIG,
                     "vocabulary['%.64s']: expected a column 0..%zu (coef rows have %zu "
                     "numbers), got %s",
                     key, t->v - 1, t->v,
                     json_is_integer(val) ? "one out of range" : "something else");
            break;
        }
        uint32_t col = (uint32_t)json_integer_value(val);
        const unsigned char *k = (const unsigned char *)key;
        uint64_t h = fnv(FNV_OFFSET, k, klen, false);
        size_t i = slot_of(h, t->bits);
        while (t->slots[i].col != EMPTY) {
            const vslot_t *s = &t->slots[i];
            if (s->len == klen && memcmp(t->keys + s->off, key, klen) == 0)
                break; /* the same bytes twice: only possible with an embedded NUL */
            i = (i + 1) & (nslots - 1);
        }
        if (t->slots[i].col != EMPTY) {
            e = fail(c, MG_E_CONFIG, "vocabulary['%.64s']: the token appears twice", key);
            break;
        }
        if (owner[col] != EMPTY) {
            const vslot_t *o = &t->slots[owner[col]];
            e = fail(c, MG_E_CONFIG,
                     "vocabulary['%.64s'] and vocabulary['%.*s']: both use column %u; each "
                     "column must have exactly one token",
                     key, (int)(o->len > 64 ? 64 : o->len), t->keys + o->off, (unsigned)col);
            break;
        }
        memcpy(t->keys + off, key, klen);
        t->slots[i] = (vslot_t){(uint32_t)(h >> 32), col, (uint32_t)off, (uint32_t)klen};
        owner[col] = (uint32_t)i;
        off += klen;
    }
    free(owner);
    return e;
}

static mg_err_t parse_classes(const ctx_t *c, const json_t *classes, text_t *t, const char *type)
{
    if (t->type == TXT_REGRESSION) {
        if (classes != NULL)
            return fail(c, MG_E_CONFIG, "classes: not used by type \"regression\"; remove it");
        return MG_OK;
    }
    t->n_classes = t->type == TXT_LOGISTIC && t->k == 1 ? 2 : t->k;
    if (t->n_classes < 2)
        return fail(c, MG_E_CONFIG, "coef: a multinomial model needs at least 2 rows");
    if (!json_is_array(classes) || json_array_size(classes) != t->n_classes)
        return fail(c, MG_E_CONFIG,
                    "classes: expected a list of %zu labels for %zu coefficient row(s) of type "
                    "\"%s\"",
                    t->n_classes, t->k, type);
    if ((t->classes = calloc(t->n_classes, sizeof(char *))) == NULL)
        return fail(c, MG_E_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n_classes; i++) {
        const json_t *v = json_array_get(classes, i);
        if (!json_is_string(v) && !json_is_number(v) && !json_is_boolean(v))
            return fail(c, MG_E_CONFIG, "classes[%zu]: expected a number or a string", i);
        if ((t->classes[i] = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT)) == NULL)
            return fail(c, MG_E_NOMEM, "out of memory");
    }
    return MG_OK;
}

static mg_err_t text_parse(const ctx_t *c, const json_t *doc, text_t *t)
{
    static const char *const keys[] = {
        "format",    "version",      "type",        "lowercase", "token_pattern", "ngram_range",
        "binary",    "sublinear_tf", "vocabulary",  "idf",       "norm",          "coef",
        "intercept", "classes",      "description", NULL};
    char where[512];
    snprintf(where, sizeof(where), "text model '%s'", c->path);
    if (!json_is_object(doc))
        return fail(c, MG_E_CONFIG, "expected a JSON object");
    if (mg_kind_check_keys(doc, keys, where, c->err, c->errlen) != MG_OK)
        return MG_E_CONFIG;
    mg_err_t e;
    if ((e = parse_header(c, doc, t)) != MG_OK)
        return e;
    /* coef fixes V and K; everything else is checked against them */
    const json_t *coef = json_object_get(doc, "coef");
    if (!json_is_array(coef) || json_array_size(coef) == 0 ||
        !json_is_array(json_array_get(coef, 0)) || json_array_size(json_array_get(coef, 0)) == 0)
        return fail(c, MG_E_CONFIG,
                    "coef: expected a non-empty list of rows of numbers (one number per "
                    "vocabulary column)");
    t->k = json_array_size(coef);
    t->v = json_array_size(json_array_get(coef, 0));
    if (t->k > SIZE_MAX / sizeof(double) / t->v)
        return fail(c, MG_E_CONFIG, "coef: too large");
    if ((t->coef_t = malloc(t->v * t->k * sizeof(double))) == NULL ||
        (t->intercept = malloc(t->k * sizeof(double))) == NULL)
        return fail(c, MG_E_NOMEM, "coef: out of memory for %zu x %zu numbers", t->k, t->v);
    for (size_t r = 0; r < t->k; r++) {
        char what[32];
        snprintf(what, sizeof(what), "coef[%zu]", r);
        if ((e = read_numbers(c, json_array_get(coef, r), t->v, t->coef_t + r, t->k, what,
                              r ? " (one per vocabulary column, like coef[0])" : "")) != MG_OK)
            return e;
    }
    if ((e = read_numbers(c, json_object_get(doc, "intercept"), t->k, t->intercept, 1, "intercept",
                          " (one per coef row)")) != MG_OK)
        return e;
    const json_t *idf = json_object_get(doc, "idf");
    if (idf != NULL && !json_is_null(idf)) {
        if ((t->idf = malloc(t->v * sizeof(double))) == NULL)
            return fail(c, MG_E_NOMEM, "idf: out of memory");
        if ((e = read_numbers(c, idf, t->v, t->idf, 1, "idf", " (one per vocabulary column)")) !=
            MG_OK)
            return e;
    }
    if ((e = parse_vocabulary(c, json_object_get(doc, "vocabulary"), t)) != MG_OK)
        return e;
    return parse_classes(c, json_object_get(doc, "classes"), t,
                         json_string_value(json_object_get(doc, "type")));
}

static mg_err_t text_load(const char *path, const json_t *options, void **impl, char *err,
                          size_t errlen)
{
    static const char *const no_keys[] = {NULL};
    const ctx_t c = {path, err, errlen};
    char where[512];
    snprintf(where, sizeof(where), "text model '%s': load options", path);
    if (mg_kind_check_keys(options, no_keys, where, err, errlen) != MG_OK)
        return MG_E_CONFIG;
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        snprintf(err, errlen, "text model '%s':%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        return MG_E_CONFIG;
    }
    text_t *t = calloc(1, sizeof(*t));
    mg_err_t e = t ? text_parse(&c, doc, t) : fail(&c, MG_E_NOMEM, "out of memory");
    json_decref(doc);
    if (e != MG_OK) {
        text_free(t);
        return e;
    }
    *impl = t;
    return MG_OK;
}

static void text_describe(const void *impl, mg_model_desc_t *d)
{
    const text_t *t = impl;
    memset(d, 0, sizeof(*d));
    d->input = MG_INPUT_STRING;
    d->input_len = 0;
    d->accepts = MG_ACCEPT_BYTES | MG_ACCEPT_STRINGS;
    d->output = t->type == TXT_REGRESSION ? MG_OUTPUT_VALUE : MG_OUTPUT_LABEL;
    d->n_classes = t->n_classes;
    d->classes = (const char *const *)t->classes;
    d->thread_safe = true;
}

/* ---------------------------------------------------------------------------------------- */
/* Predicting                                                                                */

/* The offset of the first byte that is not well-formed UTF-8 (RFC 3629: no overlong forms,
   no surrogates, nothing above U+10FFFF), or n when all is. */
static size_t utf8_bad_at(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
        if (b >= 0xc2 && b <= 0xdf)
            len = 2;
        else if (b >= 0xe0 && b <= 0xef) {
            len = 3;
            lo = b == 0xe0 ? 0xa0 : 0x80;
            hi = b == 0xed ? 0x9f : 0xbf;
        } else if (b >= 0xf0 && b <= 0xf4) {
            len = 4;
            lo = b == 0xf0 ? 0x90 : 0x80;
            hi = b == 0xf4 ? 0x8f : 0xbf;
        } else
            return i;
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t j = 2; j < len; j++)
            if ((s[i + j] & 0xc0) != 0x80)
                return i;
        i += len;
    }
    return n;
}

static inline bool is_word(unsigned char c)
{
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

/* An upper bound of the distinct features of one item (never more than the vocabulary). */
static size_t features_bound(const text_t *t, const mg_input_item_t *it)
{
    /* a text of L bytes has at most (L + 1) / 3 tokens (2 bytes each, 1 between them) */
    size_t toks = it->dtype == MG_DTYPE_STRS ? it->len : (it->len + 1) / 3;
    size_t n = (t->ngram_min == 1 ? toks : 0) + (t->ngram_max == 2 ? toks : 0);
    return n < t->v ? n : t->v;
}

static size_t table_size(size_t bound)
{
    size_t n = 4;
    while (n < 2 * bound)
        n *= 2;
    return n;
}

/* The per-item accumulator: features found so far, and a table col -> index in feats. */
typedef struct acc {
    feat_t *feats;
    size_t n;
    uint32_t *table; /* mask + 1 entries, EMPTY when free */
    size_t mask;
    unsigned bits;
} acc_t;

static void acc_add(acc_t *a, uint32_t col)
{
    if (col == EMPTY)
        return;
    size_t i = (size_t)(((uint64_t)col * 0x9e3779b97f4a7c15ull) >> (64 - a->bits));
    for (;; i = (i + 1) & a->mask) {
        uint32_t j = a->table[i];
        if (j == EMPTY) {
            a->table[i] = (uint32_t)a->n;
            a->feats[a->n++] = (feat_t){col, 1.0};
            return;
        }
        if (a->feats[j].col == col) {
            a->feats[j].v += 1.0;
            return;
        }
    }
}

/* Looks up every n-gram of one item and counts the columns found into |a|. */
static void count_features(const text_t *t, const mg_input_item_t *it, acc_t *a)
{
    bool uni = t->ngram_min == 1, bi = t->ngram_max == 2;
    const unsigned char *prev = NULL;
    size_t prevlen = 0;
    if (it->dtype == MG_DTYPE_STRS) { /* tokens: as they are */
        const mg_bytes_t *tok = it->data;
        for (size_t j = 0; j < it->len; j++) {
            const unsigned char *p = (const unsigned char *)tok[j].p;
            if (uni)
                acc_add(a, vocab_find(t, p, tok[j].len, NULL, 0, false));
            if (bi && prev != NULL)
                acc_add(a, vocab_find(t, prev, prevlen, p, tok[j].len, false));
            prev = p;
            prevlen = tok[j].len;
        }
        return;
    }
    const unsigned char *s = it->data;
    size_t n = it->len, i = 0;
    while (i < n) {
        while (i < n && !is_word(s[i]))
            i++;
        size_t start = i, chars = 0;
        for (; i < n && is_word(s[i]); i++)
            chars += (s[i] & 0xc0) != 0x80; /* UTF-8 continuation bytes are not characters */
        if (chars < 2)
            continue;
        if (uni)
            acc_add(a, vocab_find(t, s + start, i - start, NULL, 0, t->lowercase));
        if (bi && prev != NULL)
            acc_add(a, vocab_find(t, prev, prevlen, s + start, i - start, t->lowercase));
        prev = s + start;
        prevlen = i - start;
    }
}

static void sift_down(feat_t *f, size_t r, size_t n)
{
    for (size_t ch; (ch = 2 * r + 1) < n; r = ch) {
        if (ch + 1 < n && f[ch + 1].col > f[ch].col)
            ch++;
        if (f[r].col >= f[ch].col)
            return;
        feat_t tmp = f[r];
        f[r] = f[ch];
        f[ch] = tmp;
    }
}

/* Sorts f[0..n) by column in place: a heapsort, because qsort may malloc a buffer per call. */
static void sort_by_col(feat_t *f, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(f, i, n);
    for (size_t end = n; end > 1;) {
        end--;
        feat_t tmp = f[0];
        f[0] = f[end];
        f[end] = tmp;
        sift_down(f, 0, end);
    }
}

/* Counts -> binary / sublinear tf -> idf -> norm, in scikit-learn's order. */
static void weigh(const text_t *t, feat_t *f, size_t n)
{
    sort_by_col(f, n);
    for (size_t j = 0; j < n; j++) {
        if (t->binary)
            f[j].v = 1.0;
        if (t->sublinear)
            f[j].v = 1.0 + log(f[j].v);
        if (t->idf != NULL)
            f[j].v *= t->idf[f[j].col];
    }
    if (t->norm == TXT_NORM_NONE)
        return;
    double s = 0;
    for (size_t j = 0; j < n; j++)
        s += t->norm == TXT_NORM_L2 ? f[j].v * f[j].v : fabs(f[j].v);
    if (t->norm == TXT_NORM_L2)
        s = sqrt(s);
    if (s == 0) /* scikit-learn leaves an all-zero row as it is */
        return;
    for (size_t j = 0; j < n; j++)
        f[j].v /= s;
}

/* p[] = probabilities of the n_classes classes from the decision values z[]. */
static void probabilities(const text_t *t, const double *z, double *p)
{
    if (t->type == TXT_MULTINOMIAL) {
        double mx = z[0], sum = 0;
        for (size_t j = 1; j < t->k; j++)
            mx = z[j] > mx ? z[j] : mx;
        for (size_t j = 0; j < t->k; j++)
            sum += p[j] = exp(z[j] - mx);
        for (size_t j = 0; j < t->k; j++)
            p[j] /= sum;
    } else if (t->k == 1) {
        p[1] = 1.0 / (1.0 + exp(-z[0]));
        p[0] = 1.0 - p[1];
    } else {
        double sum = 0;
        for (size_t j = 0; j < t->k; j++)
            sum += p[j] = 1.0 / (1.0 + exp(-z[j]));
        for (size_t j = 0; j < t->k; j++)
            p[j] /= sum;
    }
}

static mg_err_t write_answer(const text_t *t, const double *z, double *p, mg_outputs_t *out,
                             size_t i)
{
    mg_err_t e = MG_OK;
    if (t->type == TXT_REGRESSION) {
        if (t->k == 1) {
            e = mg_out_double(out, z[0]);
        } else {
            e = mg_out_write(out, "[", 1);
            for (size_t j = 0; j < t->k && e == MG_OK; j++)
                if (j == 0 || (e = mg_out_write(out, ",", 1)) == MG_OK)
                    e = mg_out_double(out, z[j]);
            if (e == MG_OK)
                e = mg_out_write(out, "]", 1);
        }
        return e != MG_OK ? e : mg_out_end(out, i, z[0]);
    }
    probabilities(t, z, p);
    size_t best = 0;
    for (size_t j = 1; j < t->n_classes; j++)
        if (p[j] > p[best])
            best = j;
    if ((e = mg_out_write(out, t->classes[best], strlen(t->classes[best]))) != MG_OK ||
        (e = mg_out_values(out, p, t->n_classes)) != MG_OK)
        return e;
    return mg_out_end(out, i, p[best]);
}

static mg_err_t text_predict(const void *impl, const mg_input_view_t *in, const json_t *option,
                             const json_t *features, mg_outputs_t *out)
{
    const text_t *t = impl;
    mg_err_t e;
    if ((e = mg_out_begin(out, in->n)) != MG_OK)
        return e;
    size_t maxf = 1;
    for (size_t i = 0; i < in->n; i++) {
        size_t b = features_bound(t, &in->items[i]);
        maxf = b > maxf ? b : maxf;
    }
    size_t cap = table_size(maxf);
    double *z = mg_out_scratch(out, (t->k + t->n_classes) * sizeof(double));
    feat_t *feats = mg_out_scratch(out, maxf * sizeof(feat_t) + cap * sizeof(uint32_t));
    if (z == NULL || feats == NULL)
        return mg_out_error(out, MG_E_NOMEM, "text: out of memory for a batch of %zu", in->n);
    double *p = z + t->k;
    for (size_t i = 0; i < in->n; i++) {
        const mg_input_item_t *it = &in->items[i];
        if (it->dtype == MG_DTYPE_STR || it->dtype == MG_DTYPE_BYTES) {
            size_t bad = utf8_bad_at(it->data, it->len);
            if (bad < it->len) {
                if ((e = mg_out_fail(out, in, i,
                                     "expected UTF-8 text, got a byte that is not UTF-8 at "
                                     "offset %zu",
                                     bad)) != MG_OK)
                    return e;
                continue;
            }
        }
        /* this item's own table: clearing it costs what its text may hold, not the batch's */
        acc_t a = {.feats = feats, .table = (uint32_t *)(feats + maxf)};
        size_t size = table_size(features_bound(t, it));
        a.mask = size - 1;
        for (a.bits = 0; ((size_t)1 << a.bits) < size; a.bits++)
            ;
        memset(a.table, 0xff, size * sizeof(uint32_t)); /* EMPTY */
        count_features(t, it, &a);
        weigh(t, a.feats, a.n);
        /* z = coef . x + intercept: the sum first, then the intercept, as scikit-learn */
        memset(z, 0, t->k * sizeof(double));
        for (size_t j = 0; j < a.n; j++) {
            const double *w = t->coef_t + (size_t)a.feats[j].col * t->k;
            for (size_t r = 0; r < t->k; r++)
                z[r] += a.feats[j].v * w[r];
        }
        for (size_t r = 0; r < t->k; r++)
            z[r] += t->intercept[r];
        if ((e = write_answer(t, z, p, out, i)) != MG_OK)
            return e;
    }
    return MG_OK;
}

const mg_model_kind_t mg_kind_text = {
    .name = "text",
    .load = text_load,
    .describe = text_describe,
    .predict = text_predict,
    .free = text_free,
};
