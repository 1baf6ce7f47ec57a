/*
 * backends/runtime/kind_xgboost.c - the `xgboost` kind: models saved by XGBoost
 * (Booster.save_model / XGBClassifier.save_model to .json or .ubj), run through libxgboost's
 * C API (Debian: libxgboost-dev, 1.7).
 *
 * Load: XGBoosterLoadModel for files named *.json or *.ubj (libxgboost picks the format by
 * extension); any other name is read into memory and given to XGBoosterLoadModelFromBuffer,
 * which recognises JSON and UBJSON by their first bytes. The objective comes from
 * XGBoosterSaveJsonConfig (learner.objective.name), the number of features from
 * XGBoosterGetNumFeature, the booster type (gbtree, dart, gblinear) from the same config.
 *   binary:logistic  classification, 2 classes: label = p > 0.5, score = the label's
 *                    probability (p or 1 - p), values = [1 - p, p]
 *   binary:hinge     the same with p in {0, 1}
 *   multi:softprob   classification, num_class classes: label = argmax (first on ties),
 *                    score = its probability, values = all probabilities
 *   multi:softmax    the same, from the margins (predict type 1) through a softmax
 *   anything else    regression (reg:*, count:*, survival:*, rank:*, binary:logitraw):
 *                    output = score = the prediction
 * Labels are class indices (XGBoost trains on 0..K-1) unless the load option "classes" gives
 * the K labels. Load options: {"nthread": N (default 1), "classes": [labels]}.
 *
 * Predict: XGBoosterPredictFromDense (in-place prediction) on the batch as one row-major
 * matrix, with config {"type": 0 (1 for multi:softmax), "training": false, "strict_shape":
 * true, "missing": NaN, ...}. The input numbers are handed over in the client's precision
 * (float64 from JSON, float32/int from v2 tensors): libxgboost converts them exactly as the
 * Python package does for numpy arrays. gblinear boosters have no in-place prediction: they
 * get a float32 DMatrix per call (XGDMatrixCreateFromMat + XGBoosterPredictFromDMatrix), which
 * is what Python's predict does for them. Results are copied out at once: libxgboost keeps them
 * in a per-thread buffer of the booster that the next call on the same thread overwrites.
 *
 * Threading: since XGBoost 1.4 prediction is thread-safe for gbtree and dart boosters as long
 * as nothing modifies the booster meanwhile (doc/prediction.rst, "Thread Safety"). We pass no
 * proxy DMatrix, so libxgboost makes one per call (a shared proxy would be mutated by
 * concurrent calls), set nthread only at load, and run one warm-up prediction at load so that
 * the booster's lazy configuration happens before any concurrent use. gblinear is not covered
 * by that guarantee: such models are described as not thread-safe and mg_model_predict
 * serialises them.
 * Global state: loading and predicting set nothing process-wide. libxgboost 1.7 configures a
 * booster lazily under the booster's own lock; that step seeds XGBoost's global training RNG
 * the first time (irrelevant to prediction) and does not call omp_set_num_threads. We never
 * call XGBSetGlobalConfig or register a log callback.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xgboost/c_api.h>

#include "backends/runtime/model.h"
#include "backends/runtime/ubj.h"

/* XGBoost's last error without its multi-line "Stack trace:" tail: one line for logs and for
 * /v1/status. Thread-local, like XGBGetLastError's own buffer. */
static const char *xgb_error(void)
{
    static _Thread_local char buf[512];
    const char *e = XGBGetLastError();
    size_t n = strcspn(e, "\n");
    if (n >= sizeof(buf))
        n = sizeof(buf) - 1;
    memcpy(buf, e, n);
    buf[n] = '\0';
    return buf;
}

typedef enum xgb_task { XGB_REGRESSION, XGB_BINARY, XGB_MULTI_PROB, XGB_MULTI_MARGIN } xgb_task_t;

typedef struct xgb {
    BoosterHandle h;
    size_t n_features;
    xgb_task_t task;
    size_t n_classes; /* 0 for regression */
    char **classes;   /* n_classes JSON fragments */
    bool thread_safe; /* gbtree or dart */
    bool inplace;     /* in-place prediction (not gblinear: it predicts from a DMatrix) */
    char objective[64];
    char booster[32];
} xgb_t;

static void xgb_free(void *impl)
{
    xgb_t *x = impl;
    if (x == NULL)
        return;
    if (x->h != NULL)
        XGBoosterFree(x->h);
    for (size_t i = 0; x->classes != NULL && i < x->n_classes; i++)
        free(x->classes[i]);
    free(x->classes);
    free(x);
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool is_whole_ubj(const char *path, const char *buf, size_t size, char *err, size_t errlen)
{
    char why[128];
    if (mg_ubj_check((const unsigned char *)buf, size, why, sizeof(why)))
        return true;
    snprintf(err, errlen, "xgboost model '%s': not a whole UBJSON model (%s): a copy cut short?",
             path, why);
    return false;
}

static mg_err_t load_booster(const char *path, BoosterHandle h, char *err, size_t errlen)
{
    /* libxgboost's JSON reader checks its bounds; its UBJSON reader does not (ubj.h): UBJSON
     * is read here and checked first, whatever the name */
    if (has_suffix(path, ".json")) {
        if (XGBoosterLoadModel(h, path) != 0) {
            snprintf(err, errlen, "xgboost model '%s': %s", path, xgb_error());
            return MG_E_CONFIG;
        }
        return MG_OK;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "xgboost model '%s': %s", path, strerror(errno));
        return errno == ENOENT ? MG_E_NOTFOUND : MG_E_IO;
    }
    mg_err_t e = MG_OK;
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        snprintf(err, errlen, "xgboost model '%s': %s", path, strerror(errno));
        e = MG_E_IO;
    } else if (size == 0) {
        snprintf(err, errlen, "xgboost model '%s': the file is empty", path);
        e = MG_E_CONFIG;
    } else if ((buf = malloc((size_t)size)) == NULL) {
        snprintf(err, errlen, "xgboost model '%s': out of memory (%ld bytes)", path, size);
        e = MG_E_NOMEM;
    } else if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        snprintf(err, errlen, "xgboost model '%s': short read", path);
        e = MG_E_IO;
    } else if (buf[0] != '{' || size < 2) {
        /* The legacy binary format loads from a buffer too, but is deprecated and carries no
           feature count we can trust: ask for JSON or UBJSON. */
        snprintf(err, errlen,
                 "xgboost model '%s': not a JSON or UBJSON model; save it with "
                 "save_model(\"model.json\") or save_model(\"model.ubj\")",
                 path);
        e = MG_E_CONFIG;
    } else if (buf[1] != '"' && !is_whole_ubj(path, buf, (size_t)size, err, errlen)) {
        e = MG_E_CONFIG; /* libxgboost takes anything but '"' after the '{' for UBJSON */
    } else if (XGBoosterLoadModelFromBuffer(h, buf, (bst_ulong)size) != 0) {
        snprintf(err, errlen, "xgboost model '%s': %s", path, xgb_error());
        e = MG_E_CONFIG;
    }
    free(buf);
    fclose(f);
    return e;
}

/* The booster's configuration (|model| false) or whole model (true) as libxgboost writes them
 * in JSON, parsed; NULL with |err| saying which could not be had. */
static json_t *booster_json(const char *path, BoosterHandle h, bool model, char *err, size_t errlen)
{
    bst_ulong len = 0;
    const char *text = NULL;
    const char *what = model ? "the model read back" : "its configuration";
    if ((model ? XGBoosterSaveModelToBuffer(h, "{\"format\": \"json\"}", &len, &text)
               : XGBoosterSaveJsonConfig(h, &len, &text)) != 0) {
        snprintf(err, errlen, "xgboost model '%s': cannot read %s: %s", path, what, xgb_error());
        return NULL;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(text, (size_t)len, 0, &jerr);
    if (doc == NULL)
        snprintf(err, errlen, "xgboost model '%s': %s is not JSON: %s", path, what, jerr.text);
    return doc;
}

/* Reads objective, booster and num_class from the booster's configuration. */
static mg_err_t read_config(const char *path, xgb_t *x, size_t *num_class, char *err, size_t errlen)
{
    json_t *doc = booster_json(path, x->h, false, err, errlen);
    if (doc == NULL)
        return MG_E_CONFIG;
    const json_t *learner = json_object_get(doc, "learner");
    const char *obj =
        json_string_value(json_object_get(json_object_get(learner, "objective"), "name"));
    const char *booster =
        json_string_value(json_object_get(json_object_get(learner, "gradient_booster"), "name"));
    const char *nc = json_string_value(
        json_object_get(json_object_get(learner, "learner_model_param"), "num_class"));
    if (obj == NULL || booster == NULL) {
        snprintf(err, errlen, "xgboost model '%s': configuration has no objective or booster",
                 path);
        json_decref(doc);
        return MG_E_CONFIG;
    }
    snprintf(x->objective, sizeof(x->objective), "%s", obj);
    snprintf(x->booster, sizeof(x->booster), "%s", booster);
    *num_class = nc ? (size_t)strtoul(nc, NULL, 10) : 0;
    json_decref(doc);
    return MG_OK;
}

static mg_err_t read_options(const char *path, const json_t *options, int *nthread,
                             const json_t **classes, char *err, size_t errlen)
{
    static const char *const keys[] = {"nthread", "classes", NULL};
    char where[512];
    snprintf(where, sizeof(where), "xgboost model '%s': load options", path);
    if (mg_kind_check_keys(options, keys, where, err, errlen) != MG_OK)
        return MG_E_CONFIG;
    const json_t *v = json_object_get(options, "nthread");
    *nthread = 1;
    if (v != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 256) {
            snprintf(err, errlen, "%s: nthread: expected an integer from 0 (all cores) to 256",
                     where);
            return MG_E_CONFIG;
        }
        *nthread = (int)json_integer_value(v);
    }
    *classes = json_object_get(options, "classes");
    if (*classes != NULL && !json_is_array(*classes)) {
        snprintf(err, errlen, "%s: classes: expected a list of labels", where);
        return MG_E_CONFIG;
    }
    return MG_OK;
}

static mg_err_t set_classes(const char *path, xgb_t *x, const json_t *labels, char *err,
                            size_t errlen)
{
    if (x->n_classes == 0) {
        if (labels != NULL) {
            snprintf(err, errlen,
                     "xgboost model '%s': load options: classes: the objective %s is not a "
                     "classification",
                     path, x->objective);
            return MG_E_CONFIG;
        }
        return MG_OK;
    }
    if (labels != NULL && json_array_size(labels) != x->n_classes) {
        snprintf(err, errlen,
                 "xgboost model '%s': load options: classes: expected %zu labels, got %zu", path,
                 x->n_classes, json_array_size(labels));
        return MG_E_CONFIG;
    }
    if ((x->classes = calloc(x->n_classes, sizeof(char *))) == NULL)
        goto nomem;
    for (size_t i = 0; i < x->n_classes; i++) {
        if (labels == NULL) {
            char b[24];
            snprintf(b, sizeof(b), "%zu", i);
            x->classes[i] = strdup(b);
        } else {
            const json_t *c = json_array_get(labels, i);
            if (!json_is_string(c) && !json_is_number(c) && !json_is_boolean(c)) {
                snprintf(err, errlen,
                         "xgboost model '%s': load options: classes[%zu]: expected a number or "
                         "a string",
                         path, i);
                return MG_E_CONFIG;
            }
            x->classes[i] = json_dumps(c, JSON_ENCODE_ANY | JSON_COMPACT);
        }
        if (x->classes[i] == NULL)
            goto nomem;
    }
    return MG_OK;
nomem:
    snprintf(err, errlen, "xgboost model '%s': out of memory", path);
    return MG_E_NOMEM;
}

/* A JSON array of |n| integers, each in [lo, hi); false when it is not one. */
static bool ints_in(const json_t *a, size_t n, json_int_t lo, json_int_t hi)
{
    if (!json_is_array(a) || json_array_size(a) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) >= hi)
            return false;
    }
    return true;
}

/* libxgboost 1.7 loads a model whose parts disagree (num_class edited to 3 on a 10-class
 * model, a split on feature 80 of 64) and then reads and writes past its buffers when it
 * predicts: the heap is corrupted, or the pod aborts. What prediction relies on is checked
 * here, on the model as libxgboost holds it (saved to JSON, whatever the file's format). */
static mg_err_t check_parts(const char *path, const xgb_t *x, size_t num_class, char *err,
                            size_t errlen)
{
    json_t *doc = booster_json(path, x->h, true, err, errlen);
    if (doc == NULL)
        return MG_E_CONFIG;
    const json_t *gb = json_object_get(json_object_get(doc, "learner"), "gradient_booster");
    json_int_t groups = num_class > 1 ? (json_int_t)num_class : 1;
    json_int_t nf = (json_int_t)x->n_features;
    const char *bad = NULL;
    char what[160] = "";
    if (strcmp(x->booster, "gblinear") == 0) {
        const json_t *w = json_object_get(json_object_get(gb, "model"), "weights");
        if (json_array_size(w) != (size_t)((nf + 1) * groups))
            bad = "its weights are not (num_feature + 1) x num_class";
    } else {
        const json_t *m = strcmp(x->booster, "dart") == 0
                              ? json_object_get(json_object_get(gb, "gbtree"), "model")
                              : json_object_get(gb, "model");
        const json_t *trees = json_object_get(m, "trees"), *info = json_object_get(m, "tree_info");
        size_t ntrees = json_array_size(trees);
        if (!json_is_array(trees) || !ints_in(info, ntrees, 0, groups))
            bad = "tree_info names a class past num_class (or is not one entry per tree)";
        for (size_t i = 0; bad == NULL && i < ntrees; i++) {
            const json_t *t = json_array_get(trees, i);
            const json_t *left = json_object_get(t, "left_children");
            size_t n = json_array_size(left);
            snprintf(what, sizeof(what), " (tree %zu)", i);
            if (n == 0 || !ints_in(left, n, -1, (json_int_t)n) ||
                !ints_in(json_object_get(t, "right_children"), n, -1, (json_int_t)n))
                bad = "a node's child is past the tree's nodes";
            else if (!ints_in(json_object_get(t, "split_indices"), n, 0, nf))
                bad = "a split is on a feature past num_feature";
        }
    }
    json_decref(doc);
    if (bad == NULL)
        return MG_OK;
    snprintf(err, errlen,
             "xgboost model '%s': its parts disagree: %s%s (num_class %zu, num_feature %zu); "
             "edited by hand, or damaged?",
             path, bad, what, num_class, x->n_features);
    return MG_E_CONFIG;
}

/* Runs one prediction; on success *res points to libxgboost's per-thread buffer of
   rows x cols floats (valid until this thread's next call on this booster). */
static int run(const xgb_t *x, const void *data, mg_dtype_t dtype, size_t rows, const float **res,
               size_t *cols)
{
    const char *typestr = dtype == MG_DTYPE_F32   ? "<f4"
                          : dtype == MG_DTYPE_F64 ? "<f8"
                          : dtype == MG_DTYPE_I32 ? "<i4"
                                                  : "<i8";
    char array[256], config[192];
    snprintf(array, sizeof(array),
             "{\"data\":[%llu,true],\"shape\":[%zu,%zu],\"typestr\":\"%s\",\"version\":3}",
             (unsigned long long)(uintptr_t)data, rows, x->n_features, typestr);
    snprintf(config, sizeof(config),
             "{\"type\":%d,\"training\":false,\"iteration_begin\":0,\"iteration_end\":0,"
             "\"strict_shape\":true,\"missing\":NaN,\"cache_id\":0}",
             x->task == XGB_MULTI_MARGIN ? 1 : 0);
    const bst_ulong *shape = NULL;
    bst_ulong dim = 0;
    *res = NULL;
    if (!x->inplace) {
        /* gblinear: a DMatrix per call (float32 rows, as Python's DMatrix(numpy) makes) */
        DMatrixHandle dm = NULL;
        if (dtype != MG_DTYPE_F32 ||
            XGDMatrixCreateFromMat(data, (bst_ulong)rows, (bst_ulong)x->n_features, NAN, &dm) != 0)
            return -1;
        int rc = XGBoosterPredictFromDMatrix(x->h, dm, config, &shape, &dim, res);
        XGDMatrixFree(dm); /* the result lives in the booster's per-thread buffer, not here */
        if (rc != 0)
            return -1;
    } else if (XGBoosterPredictFromDense(x->h, array, config, NULL, &shape, &dim, res) != 0) {
        return -1;
    }
    if (dim != 2 || shape[0] != rows)
        return -2;
    *cols = (size_t)shape[1];
    return 0;
}

static mg_err_t xgb_load(const char *path, const json_t *options, void **impl, char *err,
                         size_t errlen)
{
    xgb_t *x = calloc(1, sizeof(*x));
    int nthread;
    const json_t *labels;
    size_t num_class = 0;
    bst_ulong nf = 0;
    mg_err_t e;
    if (x == NULL) {
        snprintf(err, errlen, "xgboost model '%s': out of memory", path);
        return MG_E_NOMEM;
    }
    if ((e = read_options(path, options, &nthread, &labels, err, errlen)) != MG_OK)
        goto fail;
    e = MG_E_CONFIG;
    if (XGBoosterCreate(NULL, 0, &x->h) != 0) {
        snprintf(err, errlen, "xgboost model '%s': cannot create a booster: %s", path,
                 xgb_error());
        goto fail;
    }
    if ((e = load_booster(path, x->h, err, errlen)) != MG_OK)
        goto fail;
    char nt[16];
    snprintf(nt, sizeof(nt), "%d", nthread);
    if (XGBoosterSetParam(x->h, "nthread", nt) != 0 ||
        (e = read_config(path, x, &num_class, err, errlen)) != MG_OK) {
        if (e == MG_OK)
            snprintf(err, errlen, "xgboost model '%s': %s", path, xgb_error());
        e = MG_E_CONFIG;
        goto fail;
    }
    if (XGBoosterGetNumFeature(x->h, &nf) != 0 || nf == 0) {
        snprintf(err, errlen, "xgboost model '%s': cannot tell its number of features%s%s", path,
                 nf == 0 ? "" : ": ", nf == 0 ? "" : xgb_error());
        e = MG_E_CONFIG;
        goto fail;
    }
    x->n_features = (size_t)nf;
    x->thread_safe = strcmp(x->booster, "gbtree") == 0 || strcmp(x->booster, "dart") == 0;
    x->inplace = strcmp(x->booster, "gblinear") != 0;
    if (strcmp(x->objective, "binary:logistic") == 0 || strcmp(x->objective, "binary:hinge") == 0) {
        x->task = XGB_BINARY;
        x->n_classes = 2;
    } else if (strcmp(x->objective, "multi:softprob") == 0 ||
               strcmp(x->objective, "multi:softmax") == 0) {
        x->task = strcmp(x->objective, "multi:softprob") == 0 ? XGB_MULTI_PROB : XGB_MULTI_MARGIN;
        x->n_classes = num_class;
        if (num_class < 2) {
            snprintf(err, errlen, "xgboost model '%s': objective %s with num_class %zu", path,
                     x->objective, num_class);
            e = MG_E_CONFIG;
            goto fail;
        }
    } else {
        x->task = XGB_REGRESSION;
    }
    if ((e = set_classes(path, x, labels, err, errlen)) != MG_OK ||
        (e = check_parts(path, x, num_class, err, errlen)) != MG_OK)
        goto fail;
    /* Warm-up on this thread: finishes the booster's lazy configuration before concurrent use
       and checks the output shape once. */
    float *zeros = calloc(x->n_features, sizeof(float));
    const float *res;
    size_t cols = 0;
    int rc = zeros ? run(x, zeros, MG_DTYPE_F32, 1, &res, &cols) : -3;
    free(zeros);
    size_t want = x->task == XGB_REGRESSION || x->task == XGB_BINARY ? 1 : x->n_classes;
    if (rc != 0 || cols != want) {
        snprintf(err, errlen, "xgboost model '%s': test prediction failed: %s", path,
                 rc == -1   ? xgb_error()
                 : rc == -3 ? "out of memory"
                            : "unexpected output shape");
        e = rc == -3 ? MG_E_NOMEM : MG_E_CONFIG;
        goto fail;
    }
    *impl = x;
    return MG_OK;
fail:
    xgb_free(x);
    return e;
}

static void xgb_describe(const void *impl, mg_model_desc_t *d)
{
    const xgb_t *x = impl;
    memset(d, 0, sizeof(*d));
    d->input = MG_INPUT_FLOATS;
    d->input_len = x->n_features;
    d->output = x->task == XGB_REGRESSION ? MG_OUTPUT_VALUE : MG_OUTPUT_LABEL;
    d->n_classes = x->n_classes;
    d->classes = (const char *const *)x->classes;
    d->thread_safe = x->thread_safe;
}

static mg_err_t xgb_predict(const void *impl, const mg_input_view_t *in, const json_t *option,
                            const json_t *features, mg_outputs_t *out)
{
    const xgb_t *x = impl;
    mg_err_t e;
    if ((e = mg_out_begin(out, in->n)) != MG_OK)
        return e;
    const void *data = in->dense;
    mg_dtype_t dtype = in->dense_dtype;
    if (data == NULL || in->dense_width != x->n_features ||
        (!x->inplace && dtype != MG_DTYPE_F32)) {
        data = mg_input_matrix(in, MG_DTYPE_F32, x->n_features, out);
        dtype = MG_DTYPE_F32;
    }
    size_t nc = x->n_classes ? x->n_classes : 1;
    double *p = mg_out_scratch(out, nc * sizeof(double));
    if (data == NULL || p == NULL)
        return mg_out_error(out, MG_E_NOMEM, "xgboost: out of memory for a batch of %zu", in->n);
    const float *res;
    size_t cols = 0;
    int rc = run(x, data, dtype, in->n, &res, &cols);
    size_t want = x->task == XGB_REGRESSION || x->task == XGB_BINARY ? 1 : x->n_classes;
    if (rc != 0 || cols != want)
        return mg_out_error(out, MG_E_IO, "xgboost: prediction failed: %s",
                            rc == -1 ? xgb_error() : "unexpected output shape");
    for (size_t i = 0; i < in->n; i++) {
        const float *r = res + i * cols;
        size_t best = 0;
        switch (x->task) {
        case XGB_REGRESSION:
            if ((e = mg_out_double(out, (double)r[0])) != MG_OK ||
                (e = mg_out_end(out, i, (double)r[0])) != MG_OK)
                return e;
            continue;
        case XGB_BINARY:
            p[1] = (double)r[0];
            p[0] = 1.0 - p[1];
            best = r[0] > 0.5f ? 1 : 0;
            break;
        case XGB_MULTI_PROB:
            for (size_t j = 0; j < nc; j++) {
                p[j] = (double)r[j];
                if (r[j] > r[best])
                    best = j;
            }
            break;
        case XGB_MULTI_MARGIN: {
            double mx = r[0], sum = 0;
            for (size_t j = 1; j < nc; j++)
                mx = r[j] > mx ? r[j] : mx;
            for (size_t j = 0; j < nc; j++)
                sum += p[j] = exp((double)r[j] - mx);
            for (size_t j = 0; j < nc; j++) {
                p[j] /= sum;
                if (r[j] > r[best])
                    best = j;
            }
            break;
        }
        }
        if ((e = mg_out_write(out, x->classes[best], strlen(x->classes[best]))) != MG_OK ||
            (e = mg_out_values(out, p, nc)) != MG_OK || (e = mg_out_end(out, i, p[best])) != MG_OK)
            return e;
    }
    return MG_OK;
}

const mg_model_kind_t mg_kind_xgboost = {
    .name = "xgboost",
    .load = xgb_load,
    .describe = xgb_describe,
    .predict = xgb_predict,
    .free = xgb_free,
};
