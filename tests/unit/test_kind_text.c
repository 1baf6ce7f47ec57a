/*
 * tests/unit/test_kind_text.c - the text kind against scikit-learn's predictions.
 *
 * The models and expected_text.json come from backends/runtime/tools/train_text.py (run by the
 * build into MG_TEST_MODELS, beside the digits models). Inputs go through mg_input_from_json as
 * a client writes them: a text, a list of tokens, or {"b64": "..."} for UTF-8 bytes.
 */
#include "test_kind_common.c"

#include <malloc.h>

#define TEXT_TOL 1e-9 /* "matches sklearn predict_proba/predict to 1e-9" */

/* expected_text.json replaces expected.json as g_expected: the common helpers then serve the
   text models (expected_setup, the digits' loader, is not needed here). */
static int text_setup(void **state)
{
    (void)state;
    (void)expected_setup;
    mg_log_level = MG_LOG_WARN;
    json_error_t jerr;
    char path[4096];
    snprintf(path, sizeof(path), "%s/expected_text.json", models_dir());
    g_expected = json_load_file(path, 0, &jerr);
    if (g_expected == NULL) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return -1;
    }
    return 0;
}

static void check_sklearn(const char *name)
{
    check_python(name, NULL, NULL);
    if (g_maxdev > TEXT_TOL)
        fail_msg("%s: largest difference from scikit-learn %.3g > %g", name, g_maxdev, TEXT_TOL);
}

static void sentiment_matches_sklearn(void **state)
{
    (void)state;
    check_sklearn("text_sentiment"); /* tf-idf, bigrams, sublinear tf, binary logistic */
}

static void intent_matches_sklearn(void **state)
{
    (void)state;
    check_sklearn("text_intent"); /* tf without idf, l2, multinomial */
}

static void intent_ovr_matches_sklearn(void **state)
{
    (void)state;
    check_sklearn("text_intent_ovr"); /* counts -> TfidfTransformer(l1), one-vs-rest */
}

static void rating_matches_sklearn(void **state)
{
    (void)state;
    check_sklearn("text_rating"); /* binary counts, no norm, LinearRegression */
}

static mg_model_t *load_text(const char *name)
{
    return load_named(expected_model(name), NULL);
}

static void describes_itself(void **state)
{
    (void)state;
    mg_model_t *m = load_text("text_sentiment");
    assert_string_equal(m->kind->name, "text");
    assert_ptr_equal(mg_model_kind_find("text"), &mg_kind_text);
    assert_int_equal(m->desc.input, MG_INPUT_STRING);
    assert_int_equal(m->desc.input_len, 0);
    assert_int_equal(m->desc.accepts, MG_ACCEPT_BYTES | MG_ACCEPT_STRINGS);
    assert_int_equal(m->desc.output, MG_OUTPUT_LABEL);
    assert_int_equal(m->desc.n_classes, 2);
    assert_string_equal(m->desc.classes[0], "\"negative\"");
    assert_string_equal(m->desc.classes[1], "\"positive\"");
    assert_true(m->desc.thread_safe);
    assert_false(m->desc.uses_option);
    assert_false(m->desc.uses_features);
    char err[256];
    assert_int_equal(mg_model_warmup(m, 2, err, sizeof(err)), MG_OK); /* an empty string */
    mg_model_unref(m);
    m = load_text("text_intent");
    assert_int_equal(m->desc.n_classes, 3);
    assert_string_equal(m->desc.classes[2], "\"refund\"");
    mg_model_unref(m);
    m = load_text("text_rating");
    assert_int_equal(m->desc.output, MG_OUTPUT_VALUE);
    assert_int_equal(m->desc.n_classes, 0);
    assert_null(m->desc.classes);
    assert_int_equal(mg_model_warmup(m, 1, err, sizeof(err)), MG_OK);
    mg_model_unref(m);
}

/* Predicts one JSON body ({"input": ...} or {"inputs": [...]}, ' for ") into |o|. */
static void predict_body(mg_model_t *m, const char *text, mg_outputs_t *o)
{
    char *s = strdup(text), err[256] = "";
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t jerr;
    json_t *body = json_loads(s, 0, &jerr);
    if (body == NULL)
        fail_msg("bad test body %s: %s", s, jerr.text);
    free(s);
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_input_buf_init(&buf, 0);
    if (mg_input_from_json(&m->desc, body, &buf, &v, err, sizeof(err)) != MG_OK)
        fail_msg("input refused: %s", err);
    if (mg_model_predict(m, &v, NULL, NULL, o) != MG_OK)
        fail_msg("predict: %s", o->err);
    json_decref(body);
    mg_input_buf_clear(&buf);
}

/* Item |i| of |a| and item |j| of |b| are the same answer, bit for bit. */
static bool same_item(const mg_outputs_t *a, size_t i, const mg_outputs_t *b, size_t j)
{
    return a->items[i].err == MG_OK && b->items[j].err == MG_OK &&
           strcmp(mg_output_json(a, i), mg_output_json(b, j)) == 0 &&
           memcmp(&a->items[i].score, &b->items[j].score, sizeof(double)) == 0 &&
           a->items[i].n_values == b->items[j].n_values &&
           memcmp(mg_output_values(a, i), mg_output_values(b, j),
                  a->items[i].n_values * sizeof(double)) == 0;
}

static void string_bytes_and_tokens_agree(void **state)
{
    (void)state;
    mg_model_t *m = load_text("text_sentiment");
    mg_outputs_t o, one;
    mg_outputs_init(&o);
    mg_outputs_init(&one);
    /* "Great product, works well" as a text, as base64 bytes, as tokens; then case and
       punctuation that the tokenizer drops */
    predict_body(m,
                 "{'inputs': ['Great product, works well', "
                 "{'b64': 'R3JlYXQgcHJvZHVjdCwgd29ya3Mgd2VsbA=='}, "
                 "['great', 'product', 'works', 'well'], "
                 "'  GREAT -- product!!! works... WELL?', "
                 "{'b64': 'Z3JlYXQgcHJvZHVjdCB3b3JrcyB3ZWxs'}]}",
                 &o);
    assert_int_equal(o.n, 5);
    for (size_t i = 1; i < 5; i++)
        if (!same_item(&o, 0, &o, i))
            fail_msg("item %zu: %s, want %s as item 0", i, mg_output_json(&o, i),
                     mg_output_json(&o, 0));
    assert_string_equal(mg_output_json(&o, 0), "\"positive\"");
    /* tokens are used as they are: not lowercased, not split */
    predict_body(m, "{'inputs': [['GREAT', 'product'], 'product', ['great product'], 'great']}",
                 &o);
    assert_true(same_item(&o, 0, &o, 1));  /* "GREAT" and "GREAT product" are unknown */
    assert_false(same_item(&o, 0, &o, 2)); /* one token "great product": the bigram's column */
    assert_false(same_item(&o, 2, &o, 3));
    predict_body(m, "{'input': 'great product'}", &one); /* great, product, "great product" */
    assert_false(same_item(&o, 2, &one, 0));
    /* a v2 BYTES tensor of shape [n] is n texts */
    json_t *t = json_loads("{\"name\": \"text\", \"shape\": [2], \"datatype\": \"BYTES\", "
                           "\"data\": [\"Great product, works well\", \"\"]}",
                           0, NULL);
    char err[256];
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_input_buf_init(&buf, 0);
    assert_int_equal(mg_input_from_v2_json(&m->desc, t, "inputs[0]", &buf, &v, err, sizeof(err)),
                     MG_OK);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_STR);
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &one), MG_OK);
    predict_body(m, "{'inputs': ['Great product, works well', '']}", &o);
    assert_true(same_outputs(&one, &o));
    /* a hand-built view (a batcher's, a gRPC BYTES element) with raw bytes and tokens */
    const mg_bytes_t toks[4] = {{"great", 5}, {"product", 7}, {"works", 5}, {"well", 4}};
    const mg_input_item_t items[3] = {{MG_DTYPE_BYTES, "great product works well", 24},
                                      {MG_DTYPE_STRS, toks, 4},
                                      {MG_DTYPE_STR, "Great product, works well", 25}};
    v = (mg_input_view_t){.n = 3, .items = items, .batch = true};
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_OK);
    assert_true(same_item(&o, 0, &o, 1));
    assert_true(same_item(&o, 0, &o, 2));
    json_decref(t);
    mg_input_buf_clear(&buf);
    mg_outputs_clear(&o);
    mg_outputs_clear(&one);
    mg_model_unref(m);
}

/* The first intercept of a model file, read back with jansson. */
static double file_intercept(const char *name, size_t r)
{
    json_t *doc = json_load_file(
        model_path(json_string_value(json_object_get(expected_model(name), "file"))), 0, NULL);
    assert_non_null(doc);
    double b = json_real_value(json_array_get(json_object_get(doc, "intercept"), r));
    json_decref(doc);
    return b;
}

static void unknown_tokens_answer_the_intercept(void **state)
{
    (void)state;
    mg_model_t *m = load_text("text_sentiment");
    mg_outputs_t o;
    mg_outputs_init(&o);
    predict_body(m,
                 "{'inputs': ['zzz qqq xyzzy', '', 'a b c I x', '!!! ... ?!?', [], ['zzz'], "
                 "{'b64': ''}, '\\u00e9 \\u00fc']}",
                 &o);
    double b = file_intercept("text_sentiment", 0), p1 = 1.0 / (1.0 + exp(-b));
    for (size_t i = 0; i < o.n; i++) {
        assert_int_equal(o.items[i].err, MG_OK);
        assert_int_equal(o.items[i].n_values, 2);
        assert_true(fabs(mg_output_values(&o, i)[1] - p1) < 1e-15);
        assert_true(fabs(mg_output_values(&o, i)[0] - (1 - p1)) < 1e-15);
        assert_string_equal(mg_output_json(&o, i), p1 > 0.5 ? "\"positive\"" : "\"negative\"");
        assert_true(same_item(&o, 0, &o, i));
    }
    mg_model_unref(m);
    /* regression: the value is the intercept itself */
    m = load_text("text_rating");
    predict_body(m, "{'inputs': ['', 'nothing known here']}", &o);
    assert_true(o.items[0].score == file_intercept("text_rating", 0));
    assert_true(same_item(&o, 0, &o, 1));
    mg_outputs_clear(&o);
    mg_model_unref(m);
}

static void empty_string_is_a_text(void **state)
{
    (void)state;
    mg_model_t *m = load_text("text_intent");
    mg_outputs_t o;
    mg_outputs_init(&o);
    predict_body(m, "{'input': ''}", &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.items[0].err, MG_OK);
    assert_int_equal(o.items[0].n_values, 3);
    /* multinomial with x = 0: softmax of the intercepts */
    double z[3], mx = -INFINITY, sum = 0;
    for (size_t r = 0; r < 3; r++)
        mx = fmax(mx, z[r] = file_intercept("text_intent", r));
    for (size_t r = 0; r < 3; r++)
        sum += exp(z[r] - mx);
    for (size_t r = 0; r < 3; r++)
        assert_true(fabs(mg_output_values(&o, 0)[r] - exp(z[r] - mx) / sum) < 1e-15);
    mg_outputs_clear(&o);
    mg_model_unref(m);
}

/* A 1 MB text: answers (the same as its one sentence, for models where repeating a text does
   not change its features) and, once warm, predicting it again grows no buffer and no heap. */
static void long_text_uses_only_scratch(void **state)
{
    (void)state;
    static const char sentence[] = "Where is my ORDER? package delivery status, zzz unknown. ";
    const size_t len = 1 << 20, sl = sizeof(sentence) - 1;
    char *text = malloc(len);
    assert_non_null(text);
    size_t n = 0;
    for (; n + sl <= len; n += sl)
        memcpy(text + n, sentence, sl);
    memset(text + n, ' ', len - n);
    mg_outputs_t o, one;
    mg_outputs_init(&o);
    mg_outputs_init(&one);
    const char *names[] = {"text_intent", "text_rating", "text_sentiment"};
    for (size_t k = 0; k < 3; k++) {
        mg_model_t *m = load_text(names[k]);
        const mg_input_item_t item = {MG_DTYPE_STR, text, len},
                              short_item = {MG_DTYPE_STR, sentence, sl};
        const mg_input_view_t v = {.n = 1, .items = &item}, vs = {.n = 1, .items = &short_item};
        assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_OK);
        assert_int_equal(o.items[0].err, MG_OK);
        size_t caps[MG_OUT_SCRATCH_SLOTS + 3];
        for (size_t s = 0; s < MG_OUT_SCRATCH_SLOTS; s++) {
            caps[s] = o._scratch_cap[s];
            /* bounded by the vocabulary, not by the text: 317 tokens at most here */
            assert_true(caps[s] <= 64 * 1024);
        }
        caps[MG_OUT_SCRATCH_SLOTS] = o._json_cap;
        caps[MG_OUT_SCRATCH_SLOTS + 1] = o._values_cap;
        caps[MG_OUT_SCRATCH_SLOTS + 2] = o._items_cap;
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
        struct mallinfo2 before = mallinfo2();
#endif
        assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_OK);
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
        struct mallinfo2 after = mallinfo2();
        assert_int_equal(after.uordblks, before.uordblks); /* no heap growth per request */
#endif
        for (size_t s = 0; s < MG_OUT_SCRATCH_SLOTS; s++)
            assert_int_equal(o._scratch_cap[s], caps[s]);
        assert_int_equal(o._json_cap, caps[MG_OUT_SCRATCH_SLOTS]);
        assert_int_equal(o._values_cap, caps[MG_OUT_SCRATCH_SLOTS + 1]);
        assert_int_equal(o._items_cap, caps[MG_OUT_SCRATCH_SLOTS + 2]);
        assert_int_equal(mg_model_predict(m, &vs, NULL, NULL, &one), MG_OK);
        if (k < 2) { /* l2-normalised term frequencies / binary counts: repetition is a no-op */
            assert_string_equal(mg_output_json(&o, 0), mg_output_json(&one, 0));
            assert_true(fabs(o.items[0].score - one.items[0].score) < 1e-12);
        }
        mg_model_unref(m);
    }
    free(text);
    mg_outputs_clear(&o);
    mg_outputs_clear(&one);
}

static void invalid_utf8_is_refused_alone(void **state)
{
    (void)state;
    mg_model_t *m = load_text("text_sentiment");
    mg_outputs_t o;
    mg_outputs_init(&o);
    /* "ok \xff" and an overlong "/" (0xc0 0xaf) as bytes, between two good texts */
    predict_body(m, "{'inputs': ['great', {'b64': 'b2sg/w=='}, {'b64': 'wK8='}, 'bad']}", &o);
    assert_int_equal(o.n, 4);
    assert_int_equal(o.items[0].err, MG_OK);
    assert_int_equal(o.items[1].err, MG_E_PROTO);
    assert_string_equal(mg_output_json(&o, 1),
                        "inputs[1]: expected UTF-8 text, got a byte that is not UTF-8 at offset 3");
    assert_int_equal(o.items[2].err, MG_E_PROTO);
    assert_string_equal(mg_output_json(&o, 2),
                        "inputs[2]: expected UTF-8 text, got a byte that is not UTF-8 at offset 0");
    assert_int_equal(o.items[3].err, MG_OK);
    /* a surrogate (ED A0 80) and a truncated sequence in raw tensor bytes */
    const mg_input_item_t items[2] = {{MG_DTYPE_STR, "ab\xed\xa0\x80", 5},
                                      {MG_DTYPE_STR, "abc \xe2\x82", 6}};
    const mg_input_view_t v = {.n = 2, .items = items, .batch = true};
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_OK);
    assert_string_equal(mg_output_json(&o, 0),
                        "inputs[0]: expected UTF-8 text, got a byte that is not UTF-8 at offset 2");
    assert_string_equal(mg_output_json(&o, 1),
                        "inputs[1]: expected UTF-8 text, got a byte that is not UTF-8 at offset 4");
    mg_outputs_clear(&o);
    mg_model_unref(m);
}

/* A body the model's description refuses, with the exact client message. */
static void expect_input_error(const mg_model_t *m, const char *text, const char *want)
{
    char *s = strdup(text), err[256] = "";
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_t *body = json_loads(s, 0, NULL);
    assert_non_null(body);
    free(s);
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_input_buf_init(&buf, 0);
    assert_int_equal(mg_input_from_json(&m->desc, body, &buf, &v, err, sizeof(err)), MG_E_PROTO);
    assert_string_equal(err, want);
    json_decref(body);
    mg_input_buf_clear(&buf);
}

static void input_messages(void **state)
{
    (void)state;
    mg_model_t *m = load_text("text_intent");
    expect_input_error(m, "{'input': 3}",
                       "input: expected a string, a list of strings or {\"b64\": \"<base64>\"}, "
                       "got a number");
    expect_input_error(m, "{}",
                       "body: expected \"input\" (a string, a list of strings or {\"b64\": "
                       "\"<base64>\"}) or \"inputs\" (a list of them)");
    expect_input_error(m, "{'inputs': ['hi', ['a', 1]]}",
                       "inputs[1][1]: expected a string, got a number");
    expect_input_error(m, "{'input': {'b64': 'aGk*'}}",
                       "input.b64: expected base64-encoded bytes, got a string that is not "
                       "base64 (at character 3)");
    expect_input_error(m, "{'input': {'b64': 7}}",
                       "input.b64: expected a base64 string, got a number");
    expect_input_error(m, "{'input': {'text': 'hi'}}",
                       "input: expected {\"b64\": \"<base64>\"} (bytes), got an object without "
                       "\"b64\"");
    expect_input_error(m, "{'inputs': [{'b64': 'aGk=', 'x': 1}]}",
                       "inputs[0]: expected {\"b64\": \"<base64>\"} (bytes), got an object with "
                       "other keys");
    /* a view built by other means is checked too */
    const double x[2] = {1, 2};
    const mg_input_item_t item = {MG_DTYPE_F64, x, 2};
    const mg_input_view_t v = {.n = 1, .items = &item};
    mg_outputs_t o;
    mg_outputs_init(&o);
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_E_PROTO);
    assert_string_equal(o.err, "input: expected a string, a list of strings or {\"b64\": "
                               "\"<base64>\"}, got a list of numbers");
    mg_outputs_clear(&o);
    mg_model_unref(m);
    /* the model layer alone: each MG_ACCEPT_* bit opens one form, 0 keeps a plain string */
    mg_model_t fake = {.desc = {.input = MG_INPUT_STRING, .accepts = MG_ACCEPT_STRINGS}};
    expect_input_error(&fake, "{'input': {'b64': 'aGk='}}",
                       "input: expected a string or a list of strings, got an object");
    fake.desc.accepts = MG_ACCEPT_BYTES;
    expect_input_error(&fake, "{'input': ['hi']}",
                       "input: expected a string or {\"b64\": \"<base64>\"}, got a list");
    fake.desc.accepts = 0;
    expect_input_error(&fake, "{'input': ['hi']}", "input: expected a string, got a list");
    expect_input_error(&fake, "{'input': {'b64': 'aGk='}}",
                       "input: expected a string, got an object");
}

/* Writes |text| (with ' for ") to a temp file and expects the load to fail with |want| in the
   message, which names the file. */
static void expect_load_error(const char *text, const char *want)
{
    char path[256], err[1024] = "";
    tmp_path(path, sizeof(path), "text.json");
    char *s = strdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    write_file(path, s, strlen(s));
    free(s);
    mg_model_t *m = NULL;
    mg_err_t e = mg_model_load("text", path, "t", "1", NULL, &m, err, sizeof(err));
    unlink(path);
    assert_int_equal(e, MG_E_CONFIG);
    assert_null(m);
    if (strstr(err, want) == NULL)
        fail_msg("error '%s' does not contain '%s'", err, want);
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "text model '%s'", path);
    assert_non_null(strstr(err, prefix));
}

#define HEAD "'format': 'mg-text', 'version': 1, "

static void bad_files_are_refused(void **state)
{
    (void)state;
    /* a good one first: the cases below each break one thing */
    char path[256], err[512] = "";
    tmp_path(path, sizeof(path), "good.json");
    const char *good = "{\"format\": \"mg-text\", \"type\": \"logistic\", \"vocabulary\": "
                       "{\"good\": 0, \"bad\": 1}, \"coef\": [[2, -2]], \"intercept\": [0], "
                       "\"classes\": [0, 1], \"norm\": null}";
    write_file(path, good, strlen(good));
    mg_model_t *m = NULL;
    assert_int_equal(mg_model_load("text", path, "t", "1", NULL, &m, err, sizeof(err)), MG_OK);
    mg_outputs_t o;
    mg_outputs_init(&o);
    predict_body(m, "{'inputs': ['good good bad', 'BAD']}", &o);
    assert_string_equal(mg_output_json(&o, 0), "1"); /* z = 2 * 2 - 2 = 2 */
    assert_true(fabs(o.items[0].score - 1 / (1 + exp(-2.0))) < 1e-15);
    assert_string_equal(mg_output_json(&o, 1), "0");
    mg_outputs_clear(&o);
    mg_model_unref(m);
    unlink(path);

    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'a': 0}, 'coef': [[1]], "
                      "'intercept': [0]",
                      ":1:");
    expect_load_error("[1]", "expected a JSON object");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0], 'stop_words': []}",
                      "unknown key 'stop_words'; valid: format, version, type, lowercase");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0, 'cd': 2}, "
                      "'coef': [[1, 2]], 'intercept': [0]}",
                      "vocabulary['cd']: expected a column 0..1 (coef rows have 2 numbers), got "
                      "one out of range");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0, 'cd': 'x'}, "
                      "'coef': [[1, 2]], 'intercept': [0]}",
                      "vocabulary['cd']: expected a column 0..1");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 1, 'cd': 1}, "
                      "'coef': [[1, 2]], 'intercept': [0]}",
                      "vocabulary['cd'] and vocabulary['ab']: both use column 1");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, "
                      "'coef': [[1, 2]], 'intercept': [0]}",
                      "vocabulary: 1 tokens for 2 coefficient columns");
    expect_load_error("{" HEAD "'type': 'multinomial', 'vocabulary': {'ab': 0, 'cd': 1}, "
                      "'coef': [[1, 2], [3, 4, 5]], 'intercept': [0, 0], 'classes': ['x', 'y']}",
                      "coef[1]: expected 2 numbers (one per vocabulary column, like coef[0]), "
                      "got 3");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0, 1]}",
                      "intercept: expected 1 numbers (one per coef row), got 2");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0, 'cd': 1}, "
                      "'coef': [[1, 2]], 'intercept': [0], 'idf': [1.5]}",
                      "idf: expected 2 numbers (one per vocabulary column), got 1");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [['x']], "
                      "'intercept': [0]}",
                      "coef[0][0]: expected a finite number");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'': 0}, 'coef': [[1]], "
                      "'intercept': [0]}",
                      "vocabulary: the empty string is not a token");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {}, 'coef': [[1]], "
                      "'intercept': [0]}",
                      "vocabulary: expected an object {\"token\": column, ...}");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0], 'ngram_range': [1, 3]}",
                      "ngram_range: expected [min, max] with 1 <= min <= max <= 2");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0], 'token_pattern': '\\\\w+'}",
                      "token_pattern: expected \"word\"");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0], 'norm': 'max'}",
                      "norm: expected \"l2\", \"l1\" or null");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0], 'lowercase': 'yes'}",
                      "lowercase: expected true or false");
    expect_load_error("{" HEAD "'type': 'logistic', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0], 'classes': ['a', 'b', 'c']}",
                      "classes: expected a list of 2 labels for 1 coefficient row(s)");
    expect_load_error("{" HEAD "'type': 'regression', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0], 'classes': ['a']}",
                      "classes: not used by type \"regression\"");
    expect_load_error("{'format': 'mg-linear', 'type': 'regression', 'coef': [[1]], "
                      "'intercept': [0]}",
                      "format: expected \"mg-text\" (this is a linear model file: load it with "
                      "kind \"linear\")");
    expect_load_error("{" HEAD "'type': 'ranking', 'vocabulary': {'ab': 0}, 'coef': [[1]], "
                      "'intercept': [0]}",
                      "type: expected \"regression\", \"logistic\" or \"multinomial\"");
    expect_load_error("{'format': 'mg-text', 'version': 2, 'type': 'regression', "
                      "'vocabulary': {'ab': 0}, 'coef': [[1]], 'intercept': [0]}",
                      "version: expected 1");
    /* load options: there are none */
    tmp_path(path, sizeof(path), "good.json");
    write_file(path, good, strlen(good));
    assert_int_equal(
        mg_model_load("text", path, "t", "1", "{\"lowercase\": false}", &m, err, sizeof(err)),
        MG_E_CONFIG);
    assert_non_null(strstr(err, "load options: unknown key 'lowercase'"));
    unlink(path);
}

/* Bigrams, lowercase off, binary, sublinear tf and idf on a hand-written model whose answer is
   easy to compute by hand. */
static void options_by_hand(void **state)
{
    (void)state;
    char path[256], err[512] = "";
    tmp_path(path, sizeof(path), "hand.json");
    const char *doc = "{\"format\": \"mg-text\", \"type\": \"regression\", \"lowercase\": false, "
                      "\"ngram_range\": [2, 2], \"sublinear_tf\": true, \"idf\": [2, 3], "
                      "\"vocabulary\": {\"New York\": 0, \"york new\": 1}, "
                      "\"coef\": [[1, 10], [0, 1]], \"intercept\": [0.5, 0], \"norm\": null}";
    write_file(path, doc, strlen(doc));
    mg_model_t *m = NULL;
    assert_int_equal(mg_model_load("text", path, "t", "1", NULL, &m, err, sizeof(err)), MG_OK);
    mg_outputs_t o;
    mg_outputs_init(&o);
    /* "New York" twice: tf 2 -> 1 + ln 2 -> * idf 2; unigrams are not features; "new york"
       does not match (lowercase off) */
    predict_body(m, "{'inputs': ['New York, New York!', 'new york', ['york', 'new']]}", &o);
    double x = (1 + log(2.0)) * 2;
    json_t *got = json_loads(mg_output_json(&o, 0), JSON_DECODE_ANY, NULL);
    assert_true(fabs(json_number_value(json_array_get(got, 0)) - (x + 0.5)) < 1e-15);
    assert_true(json_number_value(json_array_get(got, 1)) == 0);
    json_decref(got);
    assert_string_equal(mg_output_json(&o, 1), "[0.5,0]");
    assert_string_equal(mg_output_json(&o, 2), "[30.5,3]"); /* tokens: "york new", idf 3 */
    mg_outputs_clear(&o);
    mg_model_unref(m);
    unlink(path);
}

static void batch_equals_single(void **state)
{
    (void)state;
    check_batch_equals_single("text_sentiment");
    check_batch_equals_single("text_intent_ovr");
    check_batch_equals_single("text_rating");
}

static void concurrent_equals_serial(void **state)
{
    (void)state;
    check_concurrent("text_sentiment", 300);
    check_concurrent("text_intent", 300);
}

static void latency(void **state)
{
    (void)state;
    report_latency("text_sentiment");
    report_latency("text_intent");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sentiment_matches_sklearn),
        cmocka_unit_test(intent_matches_sklearn),
        cmocka_unit_test(intent_ovr_matches_sklearn),
        cmocka_unit_test(rating_matches_sklearn),
        cmocka_unit_test(describes_itself),
        cmocka_unit_test(string_bytes_and_tokens_agree),
        cmocka_unit_test(unknown_tokens_answer_the_intercept),
        cmocka_unit_test(empty_string_is_a_text),
        cmocka_unit_test(long_text_uses_only_scratch),
        cmocka_unit_test(invalid_utf8_is_refused_alone),
        cmocka_unit_test(input_messages),
        cmocka_unit_test(bad_files_are_refused),
        cmocka_unit_test(options_by_hand),
        cmocka_unit_test(batch_equals_single),
        cmocka_unit_test(concurrent_equals_serial),
        cmocka_unit_test(latency),
    };
    return cmocka_run_group_tests(tests, text_setup, expected_teardown);
}
