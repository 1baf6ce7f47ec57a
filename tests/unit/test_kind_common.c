/*
 * tests/unit/test_kind_common.c - shared by test_kind_xgboost.c, test_kind_linear.c and
 * test_kind_embedding.c (#included, not a test of its own).
 *
 * The models and expected.json come from backends/runtime/tools/train_digits.py, run by the
 * build into the directory that CTest passes as MG_TEST_MODELS. Every check goes through
 * model.h: load, JSON input parsing, predict, output buffers.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "backends/runtime/model.h"
#include "common/log.h"

#define TOL 1e-6 /* "the Python library's predictions to 1e-6" */

static json_t *g_expected; /* expected.json, loaded once per test binary */

static const char *models_dir(void)
{
    const char *d = getenv("MG_TEST_MODELS");
    if (d == NULL || d[0] == '\0')
        fail_msg("MG_TEST_MODELS is not set: run this test through ctest (it points at the "
                 "models trained by backends/runtime/tools/train_digits.py)");
    return d;
}

static char *model_path(const char *file)
{
    static char buf[4096];
    snprintf(buf, sizeof(buf), "%s/%s", models_dir(), file);
    return buf;
}

static int expected_setup(void **state)
{
    (void)state;
    mg_log_level = MG_LOG_WARN; /* no "loaded model" lines around every check */
    json_error_t jerr;
    char path[4096];
    snprintf(path, sizeof(path), "%s/expected.json", models_dir());
    g_expected = json_load_file(path, 0, &jerr);
    if (g_expected == NULL) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return -1;
    }
    return 0;
}

static int expected_teardown(void **state)
{
    (void)state;
    json_decref(g_expected);
    return 0;
}

static const json_t *expected_model(const char *name)
{
    const json_t *m = json_object_get(json_object_get(g_expected, "models"), name);
    if (m == NULL)
        fail_msg("expected.json has no model '%s'", name);
    return m;
}

/* The inputs of a model: its own "inputs", else the shared digits rows. */
static const json_t *expected_inputs(const json_t *m)
{
    const json_t *in = json_object_get(m, "inputs");
    return in ? in : json_object_get(g_expected, "inputs");
}

static mg_model_t *load_named(const json_t *m, const char *options)
{
    char err[512] = "";
    mg_model_t *model = NULL;
    const char *kind = json_string_value(json_object_get(m, "kind"));
    const char *file = json_string_value(json_object_get(m, "file"));
    mg_err_t e =
        mg_model_load(kind, model_path(file), "digits", "1", options, &model, err, sizeof(err));
    if (e != MG_OK)
        fail_msg("load %s: %s (%s)", file, err, mg_strerror(e));
    return model;
}

/* Parses {"inputs": inputs} (batch) or {"input": inputs[0]} into a view. */
static void view_of(const mg_model_t *m, const json_t *inputs, bool batch, json_t **body,
                    mg_input_buf_t *buf, mg_input_view_t *v)
{
    char err[256] = "";
    *body = batch ? json_pack("{sO}", "inputs", inputs)
                  : json_pack("{sO}", "input", json_array_get(inputs, 0));
    assert_non_null(*body);
    mg_err_t e = mg_input_from_json(&m->desc, *body, buf, v, err, sizeof(err));
    if (e != MG_OK)
        fail_msg("input rejected: %s", err);
}

static double g_maxdev; /* largest |C - Python| seen by the current check_python */

static bool near(double a, double b)
{
    if (fabs(a - b) > g_maxdev)
        g_maxdev = fabs(a - b);
    return fabs(a - b) <= TOL;
}

/* Compares a JSON output with the expected value: numbers to TOL, the rest exactly. */
static void assert_json_near(const json_t *got, const json_t *want, const char *what, size_t i)
{
    if (json_is_number(want)) {
        if (!json_is_number(got) || !near(json_number_value(got), json_number_value(want)))
            fail_msg("%s[%zu]: got %.17g, want %.17g", what, i,
                     json_is_number(got) ? json_number_value(got) : NAN, json_number_value(want));
        if (json_is_integer(want) && !json_is_integer(got))
            fail_msg("%s[%zu]: got a real, want the integer label %lld", what, i,
                     (long long)json_integer_value(want));
        return;
    }
    if (json_is_array(want)) {
        if (!json_is_array(got) || json_array_size(got) != json_array_size(want))
            fail_msg("%s[%zu]: got a list of %zu, want %zu", what, i, json_array_size(got),
                     json_array_size(want));
        for (size_t j = 0; j < json_array_size(want); j++)
            assert_json_near(json_array_get(got, j), json_array_get(want, j), what, i);
        return;
    }
    if (!json_equal((json_t *)got, (json_t *)want)) {
        char *g = json_dumps(got, JSON_ENCODE_ANY), *w = json_dumps(want, JSON_ENCODE_ANY);
        fail_msg("%s[%zu]: got %s, want %s", what, i, g, w);
    }
}

/* Predicts the model's expected inputs (as one batch) and compares with Python's answers. */
static void check_python(const char *name, const char *options, const json_t *option)
{
    const json_t *m = expected_model(name);
    mg_model_t *model = load_named(m, options);
    const json_t *inputs = expected_inputs(m);
    const json_t *outs = json_object_get(m, "outputs"), *scores = json_object_get(m, "scores");
    const json_t *values = json_object_get(m, "values");
    json_t *body;
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t o;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&o);
    g_maxdev = 0;
    view_of(model, inputs, true, &body, &buf, &v);
    assert_int_equal(v.n, json_array_size(inputs));
    mg_err_t e = mg_model_predict(model, &v, option, NULL, &o);
    if (e != MG_OK)
        fail_msg("predict: %s", o.err);
    assert_int_equal(o.n, v.n);
    for (size_t i = 0; i < o.n; i++) {
        assert_int_equal(o.items[i].err, MG_OK);
        json_error_t jerr;
        json_t *got = json_loads(mg_output_json(&o, i), JSON_DECODE_ANY, &jerr);
        if (got == NULL)
            fail_msg("output %zu is not JSON: %s", i, mg_output_json(&o, i));
        assert_json_near(got, json_array_get(outs, i), "output", i);
        json_decref(got);
        double ws = json_number_value(json_array_get(scores, i));
        if (!near(o.items[i].score, ws))
            fail_msg("score[%zu]: got %.17g, want %.17g", i, o.items[i].score, ws);
        const json_t *wv = json_is_array(values) ? json_array_get(values, i) : NULL;
        assert_int_equal(o.items[i].n_values, wv ? json_array_size(wv) : 0);
        for (size_t j = 0; wv && j < json_array_size(wv); j++) {
            double a = mg_output_values(&o, i)[j], b = json_number_value(json_array_get(wv, j));
            if (!near(a, b))
                fail_msg("values[%zu][%zu]: got %.17g, want %.17g", i, j, a, b);
        }
    }
    printf("%-20s %zu items match Python; largest difference %.3g\n", name, o.n, g_maxdev);
    json_decref(body);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
}

/* One batch of all inputs answers exactly (same bytes, same bits) as each input alone. */
static void check_batch_equals_single(const char *name)
{
    const json_t *m = expected_model(name);
    mg_model_t *model = load_named(m, NULL);
    const json_t *inputs = expected_inputs(m);
    json_t *body;
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t batch, one;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&batch);
    mg_outputs_init(&one);
    view_of(model, inputs, true, &body, &buf, &v);
    assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &batch), MG_OK);
    json_decref(body);
    for (size_t i = 0; i < json_array_size(inputs); i++) {
        json_t *single = json_pack("[O]", json_array_get(inputs, i));
        view_of(model, single, false, &body, &buf, &v);
        assert_false(v.batch);
        assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &one), MG_OK);
        assert_int_equal(one.n, 1);
        assert_string_equal(mg_output_json(&one, 0), mg_output_json(&batch, i));
        assert_memory_equal(&one.items[0].score, &batch.items[i].score, sizeof(double));
        assert_int_equal(one.items[0].n_values, batch.items[i].n_values);
        if (one.items[0].n_values)
            assert_memory_equal(mg_output_values(&one, 0), mg_output_values(&batch, i),
                                one.items[0].n_values * sizeof(double));
        json_decref(body);
        json_decref(single);
    }
    mg_outputs_clear(&batch);
    mg_outputs_clear(&one);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
}

typedef struct conc {
    mg_model_t *model;
    const mg_input_view_t *v;
    const mg_outputs_t *serial;
    int rounds;
    int mismatches;
} conc_t;

static bool same_outputs(const mg_outputs_t *a, const mg_outputs_t *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(mg_output_json(a, i), mg_output_json(b, i)) != 0 ||
            memcmp(&a->items[i].score, &b->items[i].score, sizeof(double)) != 0 ||
            a->items[i].n_values != b->items[i].n_values ||
            memcmp(mg_output_values(a, i), mg_output_values(b, i),
                   a->items[i].n_values * sizeof(double)) != 0)
            return false;
    return true;
}

static void *conc_main(void *arg)
{
    conc_t *c = arg;
    mg_outputs_t o;
    mg_outputs_init(&o);
    for (int r = 0; r < c->rounds; r++)
        if (mg_model_predict(c->model, c->v, NULL, NULL, &o) != MG_OK ||
            !same_outputs(&o, c->serial))
            c->mismatches++;
    mg_outputs_clear(&o);
    return NULL;
}

/* 4 threads predicting the same batch on one model all get the serial answer. */
static void check_concurrent(const char *name, int rounds)
{
    const json_t *m = expected_model(name);
    mg_model_t *model = load_named(m, NULL);
    json_t *body;
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t serial;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&serial);
    view_of(model, expected_inputs(m), true, &body, &buf, &v);
    assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &serial), MG_OK);
    pthread_t t[4];
    conc_t c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = (conc_t){mg_model_ref(model), &v, &serial, rounds, 0};
        assert_int_equal(pthread_create(&t[i], NULL, conc_main, &c[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(c[i].mismatches, 0);
        mg_model_unref(c[i].model);
    }
    assert_int_equal(mg_model_refs(model), 1);
    json_decref(body);
    mg_outputs_clear(&serial);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
}

/* A per-process temporary file name (parallel test runs do not collide). */
static const char *tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "/tmp/mg-test-%d-%s", (int)getpid(), name);
    return buf;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prints the predict latency per item, one item per call and in batches of 32 (information
   for the report, not a threshold). Includes input checking, not JSON parsing. */
static void report_latency(const char *name)
{
    const json_t *m = expected_model(name);
    mg_model_t *model = load_named(m, NULL);
    const json_t *inputs = expected_inputs(m);
    json_t *many = json_array();
    for (size_t i = 0; i < 32; i++)
        json_array_append(many, json_array_get(inputs, i % json_array_size(inputs)));
    json_t *b1, *b32;
    mg_input_buf_t buf1, buf32;
    mg_input_view_t v1, v32;
    mg_outputs_t o;
    mg_input_buf_init(&buf1, 0);
    mg_input_buf_init(&buf32, 0);
    mg_outputs_init(&o);
    view_of(model, inputs, false, &b1, &buf1, &v1);
    view_of(model, many, true, &b32, &buf32, &v32);
    const mg_input_view_t *views[2] = {&v1, &v32};
    double per_item[2];
    for (int k = 0; k < 2; k++) {
        size_t calls = 0;
        double t0 = now_s(), t;
        do {
            for (int r = 0; r < 20; r++, calls++)
                assert_int_equal(mg_model_predict(model, views[k], NULL, NULL, &o), MG_OK);
            t = now_s() - t0;
        } while (t < 0.25);
        per_item[k] = t / (double)(calls * views[k]->n) * 1e6;
    }
    printf("latency %-20s %8.2f us/item (batch 1)  %8.2f us/item (batch 32)\n", name, per_item[0],
           per_item[1]);
    json_decref(b1);
    json_decref(b32);
    json_decref(many);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf1);
    mg_input_buf_clear(&buf32);
    mg_model_unref(model);
}
