/* tests/unit/test_kind_xgboost.c - the xgboost kind against XGBoost's own Python predictions. */
#include "test_kind_common.c"

static void multi_json_matches_python(void **state)
{
    (void)state;
    check_python("xgb_multi", NULL, NULL);
}

static void multi_ubj_matches_python(void **state)
{
    (void)state;
    check_python("xgb_multi_ubj", NULL, NULL);
}

static void binary_matches_python(void **state)
{
    (void)state;
    check_python("xgb_binary", NULL, NULL);
}

static void regression_matches_python(void **state)
{
    (void)state;
    check_python("xgb_reg", NULL, NULL);
}

static void softmax_matches_python(void **state)
{
    (void)state;
    check_python("xgb_softmax", NULL, NULL); /* labels; probabilities = softmax(margins) */
}

/* gblinear: no in-place prediction (a DMatrix per call) and no thread-safety guarantee, so
   the model is described as not thread-safe and mg_model_predict serialises it. */
static void gblinear_matches_python_serialised(void **state)
{
    (void)state;
    check_python("xgb_gblinear", NULL, NULL);
    mg_model_t *m = load_named(expected_model("xgb_gblinear"), NULL);
    assert_false(m->desc.thread_safe);
    assert_int_equal(m->desc.output, MG_OUTPUT_VALUE);
    mg_model_unref(m);
    check_batch_equals_single("xgb_gblinear");
    check_concurrent("xgb_gblinear", 50);
}

static void describes_itself(void **state)
{
    (void)state;
    mg_model_t *m = load_named(expected_model("xgb_multi"), NULL);
    assert_string_equal(m->kind->name, "xgboost");
    assert_int_equal(m->desc.input, MG_INPUT_FLOATS);
    assert_int_equal(m->desc.input_len, 64);
    assert_false(m->desc.input_optional);
    assert_int_equal(m->desc.output, MG_OUTPUT_LABEL);
    assert_int_equal(m->desc.n_classes, 10);
    assert_string_equal(m->desc.classes[3], "3");
    assert_true(m->desc.thread_safe); /* gbtree */
    assert_int_equal(strlen(m->sha256), 64);
    assert_true(m->size > 0);
    mg_model_unref(m);

    m = load_named(expected_model("xgb_reg"), NULL);
    assert_int_equal(m->desc.output, MG_OUTPUT_VALUE);
    assert_int_equal(m->desc.n_classes, 0);
    assert_null(m->desc.classes);
    mg_model_unref(m);

    m = load_named(expected_model("xgb_binary"), NULL);
    assert_int_equal(m->desc.n_classes, 2);
    char err[256];
    assert_int_equal(mg_model_warmup(m, 3, err, sizeof(err)), MG_OK);
    mg_model_unref(m);
}

static void batch_equals_single(void **state)
{
    (void)state;
    check_batch_equals_single("xgb_multi");
    check_batch_equals_single("xgb_binary");
    check_batch_equals_single("xgb_reg");
}

static void concurrent_equals_serial(void **state)
{
    (void)state;
    check_concurrent("xgb_multi", 200);
    check_concurrent("xgb_reg", 200);
}

/* Copies a model file to a name without a known extension (a model store may name files by
   hash): the kind then loads it from a buffer, and must answer the same. */
static void any_file_name_loads_from_buffer(void **state)
{
    (void)state;
    const char *srcs[] = {"xgb_digits.json", "xgb_digits.ubj"};
    for (size_t k = 0; k < 2; k++) {
        char src[4096], dst[] = "/tmp/mg-test-xgb-XXXXXX";
        snprintf(src, sizeof(src), "%s", model_path(srcs[k]));
        int fd = mkstemp(dst);
        assert_true(fd >= 0);
        FILE *in = fopen(src, "rb"), *out = fdopen(fd, "wb");
        char b[65536];
        size_t n;
        while ((n = fread(b, 1, sizeof(b), in)) > 0)
            fwrite(b, 1, n, out);
        fclose(in);
        fclose(out);
        char err[512] = "";
        mg_model_t *a = NULL, *ref = NULL;
        assert_int_equal(mg_model_load("xgboost", dst, "d", "1", NULL, &a, err, sizeof(err)),
                         MG_OK);
        assert_int_equal(mg_model_load("xgboost", src, "d", "1", NULL, &ref, err, sizeof(err)),
                         MG_OK);
        assert_string_equal(a->sha256, ref->sha256);
        json_t *body;
        mg_input_buf_t buf;
        mg_input_view_t v;
        mg_outputs_t oa, oref;
        mg_input_buf_init(&buf, 0);
        mg_outputs_init(&oa);
        mg_outputs_init(&oref);
        view_of(a, json_object_get(g_expected, "inputs"), true, &body, &buf, &v);
        assert_int_equal(mg_model_predict(a, &v, NULL, NULL, &oa), MG_OK);
        assert_int_equal(mg_model_predict(ref, &v, NULL, NULL, &oref), MG_OK);
        assert_true(same_outputs(&oa, &oref));
        json_decref(body);
        mg_outputs_clear(&oa);
        mg_outputs_clear(&oref);
        mg_input_buf_clear(&buf);
        mg_model_unref(a);
        mg_model_unref(ref);
        unlink(dst);
    }
}

static void class_labels_from_options(void **state)
{
    (void)state;
    const json_t *m = expected_model("xgb_multi");
    mg_model_t *model = load_named(
        m, "{\"classes\": [\"zero\", \"one\", \"two\", \"three\", \"four\", \"five\", \"six\", "
           "\"seven\", \"eight\", \"nine\"], \"nthread\": 2}");
    json_t *body;
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t o;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&o);
    view_of(model, expected_inputs(m), true, &body, &buf, &v);
    assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &o), MG_OK);
    static const char *const names[] = {"\"zero\"",  "\"one\"",  "\"two\"", "\"three\"",
                                        "\"four\"",  "\"five\"", "\"six\"", "\"seven\"",
                                        "\"eight\"", "\"nine\""};
    const json_t *want = json_object_get(m, "outputs");
    for (size_t i = 0; i < o.n; i++)
        assert_string_equal(mg_output_json(&o, i),
                            names[json_integer_value(json_array_get(want, i))]);
    json_decref(body);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
}

static void bad_options_are_refused(void **state)
{
    (void)state;
    char err[512];
    mg_model_t *m = NULL;
    const char *path = model_path("xgb_digits.json");
    assert_int_equal(
        mg_model_load("xgboost", path, "d", "1", "{\"nthreads\": 2}", &m, err, sizeof(err)),
        MG_E_CONFIG);
    assert_null(m);
    assert_non_null(strstr(err, "load options: unknown key 'nthreads'; valid: nthread, classes"));
    assert_int_equal(mg_model_load("xgboost", path, "d", "1", "{\"classes\": [\"a\", \"b\"]}", &m,
                                   err, sizeof(err)),
                     MG_E_CONFIG);
    assert_non_null(strstr(err, "classes: expected 10 labels, got 2"));
    assert_int_equal(mg_model_load("xgboost", model_path("xgb_digits_reg.json"), "d", "1",
                                   "{\"classes\": [\"a\", \"b\"]}", &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_non_null(strstr(err, "reg:squarederror is not a classification"));
    assert_int_equal(
        mg_model_load("xgboost", path, "d", "1", "{\"nthread\": ", &m, err, sizeof(err)),
        MG_E_CONFIG);
    assert_non_null(strstr(err, "load options"));
}

static void corrupt_files_are_refused(void **state)
{
    (void)state;
    char err[1024], bad[256], cut[256], bin[256], prefix[320];
    mg_model_t *m = NULL;
    /* JSON that is not a model: libxgboost's own message is passed on */
    write_file(tmp_path(bad, sizeof(bad), "bad-model.json"), "{\"learner\": 12}", 15);
    assert_int_equal(mg_model_load("xgboost", bad, "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_null(m);
    snprintf(prefix, sizeof(prefix), "xgboost model '%s': ", bad);
    assert_non_null(strstr(err, prefix));
    assert_true(strlen(err) > strlen(prefix) + 5); /* followed by libxgboost's message */
    /* a truncated real model */
    FILE *f = fopen(model_path("xgb_digits.json"), "rb");
    char *b = malloc(5000);
    assert_int_equal(fread(b, 1, 5000, f), 5000);
    fclose(f);
    write_file(tmp_path(cut, sizeof(cut), "cut-model.json"), b, 5000);
    free(b);
    assert_int_equal(mg_model_load("xgboost", cut, "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    snprintf(prefix, sizeof(prefix), "xgboost model '%s': ", cut);
    assert_non_null(strstr(err, prefix));
    /* not JSON at all, under a name without extension */
    write_file(tmp_path(bin, sizeof(bin), "model-bin"), "\x00\x01garbage", 9);
    assert_int_equal(mg_model_load("xgboost", bin, "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_non_null(strstr(err, "not a JSON or UBJSON model"));
    unlink(bad);
    unlink(cut);
    unlink(bin);
}

/* A UBJSON model cut short: libxgboost 1.7 read past its buffer (ASan: stack-buffer-underflow
 * in UBJReader::DecodeStr at 2 bytes) or allocated gigabytes and crashed (100 bytes), killing
 * the pod mid-switch. Every prefix, and one damaged count, is refused with the reason. */
static void cut_ubj_models_are_refused(void **state)
{
    (void)state;
    FILE *f = fopen(model_path("xgb_digits.ubj"), "rb");
    assert_non_null(f);
    static char b[4 << 20];
    size_t size = fread(b, 1, sizeof(b), f);
    fclose(f);
    assert_true(size > 1000 && size < sizeof(b));
    char cut[256], err[1024];
    tmp_path(cut, sizeof(cut), "cut-model.ubj");
    size_t lens[] = {2, 3, 10, 57, 100, 1000, size / 2, size - 100, size - 1};
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        mg_model_t *m = NULL;
        write_file(cut, b, lens[k]);
        assert_int_equal(mg_model_load("xgboost", cut, "d", "1", NULL, &m, err, sizeof(err)),
                         MG_E_CONFIG);
        assert_null(m);
        if (strstr(err, "not a whole UBJSON model") == NULL)
            fail_msg("%zu of %zu bytes: %s", lens[k], size, err);
    }
    /* the same file whole loads */
    mg_model_t *m = NULL;
    write_file(cut, b, size);
    assert_int_equal(mg_model_load("xgboost", cut, "d", "1", NULL, &m, err, sizeof(err)), MG_OK);
    mg_model_unref(m);
    unlink(cut);
}

/* Loads xgb_digits.json, lets |edit| change it, saves it and loads that: returns the error. */
static mg_err_t load_edited(void (*edit)(json_t *learner), char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = json_load_file(model_path("xgb_digits.json"), 0, &jerr);
    assert_non_null(doc);
    edit(json_object_get(doc, "learner"));
    char path[256];
    tmp_path(path, sizeof(path), "edited-model.json");
    assert_int_equal(json_dump_file(doc, path, JSON_COMPACT), 0);
    json_decref(doc);
    mg_model_t *m = NULL;
    mg_err_t e = mg_model_load("xgboost", path, "d", "1", NULL, &m, err, errlen);
    mg_model_unref(m);
    unlink(path);
    return e;
}

static json_t *trees_of(json_t *learner)
{
    return json_object_get(json_object_get(json_object_get(learner, "gradient_booster"), "model"),
                           "trees");
}

static void three_classes(json_t *l)
{
    json_object_set_new(json_object_get(l, "learner_model_param"), "num_class", json_string("3"));
}

static void split_past_features(json_t *l)
{
    json_t *idx = json_object_get(json_array_get(trees_of(l), 7), "split_indices");
    json_array_set_new(idx, 0, json_integer(80)); /* of 64 */
}

static void child_past_nodes(json_t *l)
{
    json_t *left = json_object_get(json_array_get(trees_of(l), 3), "left_children");
    json_array_set_new(left, 0, json_integer(100000));
}

/* libxgboost loads a model whose parts disagree and corrupts the heap when it predicts (a
 * tester set num_class to "3" on the 10-class digits model: the pod aborted at the warm-up,
 * or served 3 "probabilities" while the heap was being corrupted). Refused at load. */
static void models_whose_parts_disagree_are_refused(void **state)
{
    (void)state;
    char err[1024];
    assert_int_equal(load_edited(three_classes, err, sizeof(err)), MG_E_CONFIG);
    assert_non_null(strstr(err, "tree_info names a class past num_class"));
    assert_non_null(strstr(err, "num_class 3"));
    assert_int_equal(load_edited(split_past_features, err, sizeof(err)), MG_E_CONFIG);
    assert_non_null(strstr(err, "a split is on a feature past num_feature (tree 7)"));
    assert_int_equal(load_edited(child_past_nodes, err, sizeof(err)), MG_E_CONFIG);
    assert_non_null(strstr(err, "a node's child is past the tree's nodes (tree 3)"));
}

/* A v2 FP32 tensor (binary, zero-copy) answers like the JSON batch. */
static void v2_tensor_matches_json(void **state)
{
    (void)state;
    const json_t *m = expected_model("xgb_multi");
    mg_model_t *model = load_named(m, NULL);
    const json_t *inputs = expected_inputs(m);
    size_t n = json_array_size(inputs);
    float *data = malloc(n * 64 * sizeof(float));
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < 64; j++)
            data[i * 64 + j] =
                (float)json_number_value(json_array_get(json_array_get(inputs, i), j));
    int64_t shape[2] = {(int64_t)n, 64};
    char err[256] = "";
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t o;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&o);
    assert_int_equal(mg_input_from_tensor(&model->desc, "FP32", shape, 2, data,
                                          n * 64 * sizeof(float), "inputs[0]", &buf, &v, err,
                                          sizeof(err)),
                     MG_OK);
    assert_ptr_equal(v.dense, data); /* no copy */
    assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &o), MG_OK);
    const json_t *want = json_object_get(m, "outputs");
    for (size_t i = 0; i < n; i++) {
        char b[16];
        snprintf(b, sizeof(b), "%lld", (long long)json_integer_value(json_array_get(want, i)));
        assert_string_equal(mg_output_json(&o, i), b);
        assert_true(near(o.items[i].score,
                         json_number_value(json_array_get(json_object_get(m, "scores"), i))));
    }
    /* the same shape with one feature short is a 400 with the shape in it */
    shape[1] = 63;
    assert_int_equal(mg_input_from_tensor(&model->desc, "FP32", shape, 2, data,
                                          n * 63 * sizeof(float), "inputs[0]", &buf, &v, err,
                                          sizeof(err)),
                     MG_E_PROTO);
    assert_string_equal(err, "inputs[0].shape: expected [n, 64], got [8, 63]");
    free(data);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
}

static void latency(void **state)
{
    (void)state;
    report_latency("xgb_multi");
    report_latency("xgb_reg");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(multi_json_matches_python),
        cmocka_unit_test(multi_ubj_matches_python),
        cmocka_unit_test(binary_matches_python),
        cmocka_unit_test(regression_matches_python),
        cmocka_unit_test(softmax_matches_python),
        cmocka_unit_test(gblinear_matches_python_serialised),
        cmocka_unit_test(describes_itself),
        cmocka_unit_test(batch_equals_single),
        cmocka_unit_test(concurrent_equals_serial),
        cmocka_unit_test(any_file_name_loads_from_buffer),
        cmocka_unit_test(class_labels_from_options),
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test(corrupt_files_are_refused),
        cmocka_unit_test(cut_ubj_models_are_refused),
        cmocka_unit_test(models_whose_parts_disagree_are_refused),
        cmocka_unit_test(v2_tensor_matches_json),
        cmocka_unit_test(latency),
    };
    return cmocka_run_group_tests(tests, expected_setup, expected_teardown);
}
