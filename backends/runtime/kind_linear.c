/*
 * backends/runtime/kind_linear.c - the `linear` kind: linear and logistic regression from a
 * JSON file of coefficients (written by tools/export_linear.py from scikit-learn).
 *
 * File (tools/README.md has the full description):
 *   {"format": "mg-linear", "version": 1, "kind": "linear",
 *    "type": "regression" | "logistic" | "multinomial",
 *    "n_features": D, "coef": [[D numbers] x K], "intercept": [K numbers],
 *    "classes": [labels]}                      (logistic: 2 labels when K = 1, else K)
 *   Optional: "feature_names": [D strings], "description": "...".
 * For one input x (D numbers) the kind computes z = coef . x + intercept with cblas_dgemv in
 * double precision, as scikit-learn does, then:
 *   regression   output z (K = 1) or [z1, ..., zK], score z1
 *   logistic     K = 1: p1 = 1 / (1 + exp(-z)), probabilities [1 - p1, p1], label classes[z > 0]
 *                K > 1 (one-vs-rest): p_j = sigmoid(z_j) / sum_k sigmoid(z_k)
 *   multinomial  p = softmax(z)
 *   classifiers: output = the label of the largest probability (the first on ties, like
 *   numpy's argmax), score = its probability, values = all probabilities.
 * The model is read-only after load and each call keeps its vectors in the caller's scratch,
 * so predict is reentrant. No load options (an options object with keys is refused).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "backends/runtime/model.h"

typedef enum lin_type { LIN_REGRESSION, LIN_LOGISTIC, LIN_MULTINOMIAL } lin_type_t;

typedef struct linear {
    lin_type_t type;
    size_t d;          /* features */
    size_t k;          /* coefficient rows */
    double *coef;      /* k x d, row-major */
    double *intercept; /* k */
    size_t n_classes;  /* classifiers: 2 when k == 1, else k; regression: 0 */
    char **classes;    /* n_classes compact JSON fragments */
} linear_t;

static void linear_free(void *impl)
{
    linear_t *l = impl;
    if (l == NULL)
        return;
    for (size_t i = 0; l->classes != NULL && i < l->n_classes; i++)
        free(l->classes[i]);
    free(l->classes);
    free(l->coef);
    free(l->intercept);
    free(l);
}

/* Reads a list of exactly |n| finite numbers (n = 0: any length >= 1, stored in *n). */
static mg_err_t read_numbers(const json_t *a, double *out, size_t *n, const char *path,
                             const char *what, char *err, size_t errlen)
{
    if (!json_is_array(a) || json_array_size(a) == 0) {
        snprintf(err, errlen, "linear model '%s': %s: expected a non-empty list of numbers", path,
                 what);
        return MG_E_CONFIG;
    }
    if (*n != 0 && json_array_size(a) != *n) {
        snprintf(err, errlen, "linear model '%s': %s: expected %zu numbers, got %zu", path, what,
                 *n, json_array_size(a));
        return MG_E_CONFIG;
    }
    *n = json_array_size(a);
    for (size_t i = 0; i < *n; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_number(v) || !isfinite(json_number_value(v))) {
            snprintf(err, errlen, "linear model '%s': %s[%zu]: expected a number", path, what, i);
            return MG_E_CONFIG;
        }
        if (out != NULL)
            out[i] = json_number_value(v);
    }
    return MG_OK;
}

static mg_err_t linear_parse(const char *path, const json_t *doc, linear_t *l, char *err,
                             size_t errlen)
{
    static const char *const keys[] = {"format",        "version",     "kind",      "type",
                                       "n_features",    "coef",        "intercept", "classes",
                                       "feature_names", "description", NULL};
    char where[512];
    snprintf(where, sizeof(where), "linear model '%s'", path);
    if (!json_is_object(doc)) {
        snprintf(err, errlen, "%s: expected a JSON object", where);
        return MG_E_CONFIG;
    }
    if (mg_kind_check_keys(doc, keys, where, err, errlen) != MG_OK)
        return MG_E_CONFIG;
    const json_t *v = json_object_get(doc, "format");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), "mg-linear") != 0)) {
        snprintf(err, errlen, "%s: format: expected \"mg-linear\"", where);
        return MG_E_CONFIG;
    }
    v = json_object_get(doc, "version");
    if (v != NULL && (!json_is_integer(v) || json_integer_value(v) != 1)) {
        snprintf(err, errlen, "%s: version: expected 1 (this runtime reads version 1)", where);
        return MG_E_CONFIG;
    }
    v = json_object_get(doc, "kind");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), "linear") != 0)) {
        snprintf(err, errlen, "%s: kind: expected \"linear\"", where);
        return MG_E_CONFIG;
    }
    const char *type = json_string_value(json_object_get(doc, "type"));
    if (type != NULL && strcmp(type, "regression") == 0)
        l->type = LIN_REGRESSION;
    else if (type != NULL && strcmp(type, "logistic") == 0)
        l->type = LIN_LOGISTIC;
    else if (type != NULL && strcmp(type, "multinomial") == 0)
        l->type = LIN_MULTINOMIAL;
    else {
        snprintf(err, errlen, "%s: type: expected \"regression\", \"logistic\" or \"multinomial\"",
                 where);
        return MG_E_CONFIG;
    }
    const json_t *coef = json_object_get(doc, "coef");
    if (!json_is_array(coef) || json_array_size(coef) == 0 ||
        !json_is_array(json_array_get(coef, 0))) {
        snprintf(err, errlen, "%s: coef: expected a non-empty list of rows of numbers", where);
        return MG_E_CONFIG;
    }
    l->k = json_array_size(coef);
    l->d = json_array_size(json_array_get(coef, 0));
    v = json_object_get(doc, "n_features");
    if (v != NULL && (!json_is_integer(v) || json_integer_value(v) != (json_int_t)l->d)) {
        snprintf(err, errlen, "%s: n_features: expected %zu (the length of coef[0])", where, l->d);
        return MG_E_CONFIG;
    }
    if (l->d == 0 || l->k > SIZE_MAX / l->d / sizeof(double) ||
        (l->coef = malloc(l->k * l->d * sizeof(double))) == NULL ||
        (l->intercept = malloc(l->k * sizeof(double))) == NULL) {
        snprintf(err, errlen, "%s: coef: %s", where, l->d == 0 ? "empty rows" : "out of memory");
        return l->d == 0 ? MG_E_CONFIG : MG_E_NOMEM;
    }
    for (size_t r = 0; r < l->k; r++) {
        char what[32];
        snprintf(what, sizeof(what), "coef[%zu]", r);
        size_t n = l->d;
        if (read_numbers(json_array_get(coef, r), l->coef + r * l->d, &n, path, what, err,
                         errlen) != MG_OK)
            return MG_E_CONFIG;
    }
    size_t nk = l->k;
    if (read_numbers(json_object_get(doc, "intercept"), l->intercept, &nk, path, "intercept", err,
                     errlen) != MG_OK)
        return MG_E_CONFIG;
    const json_t *classes = json_object_get(doc, "classes");
    if (l->type == LIN_REGRESSION) {
        if (classes != NULL) {
            snprintf(err, errlen, "%s: classes: not used by type \"regression\"; remove it", where);
            return MG_E_CONFIG;
        }
        return MG_OK;
    }
    l->n_classes = l->type == LIN_LOGISTIC && l->k == 1 ? 2 : l->k;
    if (l->n_classes < 2) {
        snprintf(err, errlen, "%s: coef: a multinomial model needs at least 2 rows", where);
        return MG_E_CONFIG;
    }
    if (!json_is_array(classes) || json_array_size(classes) != l->n_classes) {
        snprintf(err, errlen,
                 "%s: classes: expected a list of %zu labels for %zu coefficient "
                 "row(s) of type \"%s\"",
                 where, l->n_classes, l->k, type);
        return MG_E_CONFIG;
    }
    if ((l->classes = calloc(l->n_classes, sizeof(char *))) == NULL) {
        snprintf(err, errlen, "%s: out of memory", where);
        return MG_E_NOMEM;
    }
    for (size_t i = 0; i < l->n_classes; i++) {
        const json_t *c = json_array_get(classes, i);
        if (!json_is_string(c) && !json_is_number(c) && !json_is_boolean(c)) {
            snprintf(err, errlen, "%s: classes[%zu]: expected a number or a string", where, i);
            return MG_E_CONFIG;
        }
        if ((l->classes[i] = json_dumps(c, JSON_ENCODE_ANY | JSON_COMPACT)) == NULL) {
            snprintf(err, errlen, "%s: out of memory", where);
            return MG_E_NOMEM;
        }
    }
    return MG_OK;
}

static mg_err_t linear_load(const char *path, const json_t *options, void **impl, char *err,
                            size_t errlen)
{
    static const char *const no_keys[] = {NULL};
    char where[512];
    snprintf(where, sizeof(where), "linear model '%s': load options", path);
    if (mg_kind_check_keys(options, no_keys, where, err, errlen) != MG_OK)
        return MG_E_CONFIG;
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        snprintf(err, errlen, "linear model '%s':%d:%d: %s", path, jerr.line, jerr.column,
                 jerr.text);
        return MG_E_CONFIG;
    }
    linear_t *l = calloc(1, sizeof(*l));
    mg_err_t e = l ? linear_parse(path, doc, l, err, errlen) : MG_E_NOMEM;
    json_decref(doc);
    if (e != MG_OK) {
        if (l == NULL)
            snprintf(err, errlen, "linear model '%s': out of memory", path);
        linear_free(l);
        return e;
    }
    *impl = l;
    return MG_OK;
}

static void linear_describe(const void *impl, mg_model_desc_t *d)
{
    const linear_t *l = impl;
    memset(d, 0, sizeof(*d));
    d->input = MG_INPUT_FLOATS;
    d->input_len = l->d;
    d->output = l->type == LIN_REGRESSION ? MG_OUTPUT_VALUE : MG_OUTPUT_LABEL;
    d->n_classes = l->n_classes;
    d->classes = (const char *const *)l->classes;
    d->thread_safe = true;
}

/* p[] = probabilities of the n_classes classes from the decision values z[]. */
static void probabilities(const linear_t *l, const double *z, double *p)
{
    if (l->type == LIN_MULTINOMIAL) {
        double mx = z[0], sum = 0;
        for (size_t j = 1; j < l->k; j++)
            mx = z[j] > mx ? z[j] : mx;
        for (size_t j = 0; j < l->k; j++)
            sum += p[j] = exp(z[j] - mx);
        for (size_t j = 0; j < l->k; j++)
            p[j] /= sum;
    } else if (l->k == 1) {
        p[1] = 1.0 / (1.0 + exp(-z[0]));
        p[0] = 1.0 - p[1];
    } else {
        double sum = 0;
        for (size_t j = 0; j < l->k; j++)
            sum += p[j] = 1.0 / (1.0 + exp(-z[j]));
        for (size_t j = 0; j < l->k; j++)
            p[j] /= sum;
    }
}

static mg_err_t linear_predict(const void *impl, const mg_input_view_t *in, const json_t *option,
                               const json_t *features, mg_outputs_t *out)
{
    const linear_t *l = impl;
    mg_err_t e;
    if ((e = mg_out_begin(out, in->n)) != MG_OK)
        return e;
    const double *x = mg_input_matrix(in, MG_DTYPE_F64, l->d, out);
    double *z = mg_out_scratch(out, (l->k + l->n_classes) * sizeof(double));
    if (x == NULL || z == NULL)
        return mg_out_error(out, MG_E_NOMEM, "linear: out of memory for a batch of %zu", in->n);
    double *p = z + l->k;
    for (size_t i = 0; i < in->n; i++) {
        /* One dgemv per item, not one dgemm per batch: an item's answer must not depend on
           the batch it was coalesced into (BLAS-3 kernels may sum in another order). */
        memcpy(z, l->intercept, l->k * sizeof(double));
        cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)l->k, (int)l->d, 1.0, l->coef, (int)l->d,
                    x + i * l->d, 1, 1.0, z, 1);
        if (l->type == LIN_REGRESSION) {
            if (l->k == 1) {
                e = mg_out_double(out, z[0]);
            } else {
                e = mg_out_write(out, "[", 1);
                for (size_t j = 0; j < l->k && e == MG_OK; j++)
                    if ((j == 0 || (e = mg_out_write(out, ",", 1)) == MG_OK))
                        e = mg_out_double(out, z[j]);
                if (e == MG_OK)
                    e = mg_out_write(out, "]", 1);
            }
            if (e != MG_OK || (e = mg_out_end(out, i, z[0])) != MG_OK)
                return e;
            continue;
        }
        probabilities(l, z, p);
        size_t best = 0;
        for (size_t j = 1; j < l->n_classes; j++)
            if (p[j] > p[best])
                best = j;
        if ((e = mg_out_write(out, l->classes[best], strlen(l->classes[best]))) != MG_OK ||
            (e = mg_out_values(out, p, l->n_classes)) != MG_OK ||
            (e = mg_out_end(out, i, p[best])) != MG_OK)
            return e;
    }
    return MG_OK;
}

const mg_model_kind_t mg_kind_linear = {
    .name = "linear",
    .load = linear_load,
    .describe = linear_describe,
    .predict = linear_predict,
    .free = linear_free,
};
