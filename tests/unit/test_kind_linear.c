/* tests/unit/test_kind_linear.c - the linear kind against scikit-learn's predictions. */
#include "test_kind_common.c"

static void multinomial_matches_sklearn(void **state)
{
    (void)state;
    check_python("linear_multinomial", NULL, NULL);
}

static void binary_matches_sklearn(void **state)
{
    (void)state;
    check_python("linear_binary", NULL, NULL);
}

static void one_vs_rest_matches_sklearn(void **state)
{
    (void)state;
    check_python("linear_ovr", NULL, NULL);
}

static void regression_matches_sklearn(void **state)
{
    (void)state;
    check_python("linear_regression", NULL, NULL);
}

static void describes_itself(void **state)
{
    (void)state;
    mg_model_t *m = load_named(expected_model("linear_multinomial"), NULL);
    assert_string_equal(m->kind->name, "linear");
    assert_int_equal(m->desc.input, MG_INPUT_FLOATS);
    assert_int_equal(m->desc.input_len, 64);
    assert_int_equal(m->desc.output, MG_OUTPUT_LABEL);
    assert_int_equal(m->desc.n_classes, 10);
    assert_string_equal(m->desc.classes[9], "9");
    assert_true(m->desc.thread_safe);
    assert_false(m->desc.uses_option);
    assert_false(m->desc.uses_features);
    mg_model_unref(m);
    m = load_named(expected_model("linear_binary"), NULL);
    assert_int_equal(m->desc.n_classes, 2);
    mg_model_unref(m);
    m = load_named(expected_model("linear_regression"), NULL);
    assert_int_equal(m->desc.output, MG_OUTPUT_VALUE);
    assert_int_equal(m->desc.n_classes, 0);
    char err[256];
    assert_int_equal(mg_model_warmup(m, 2, err, sizeof(err)), MG_OK);
    mg_model_unref(m);
}

static void batch_equals_single(void **state)
{
    (void)state;
    check_batch_equals_single("linear_multinomial");
    check_batch_equals_single("linear_ovr");
    check_batch_equals_single("linear_regression");
}

static void concurrent_equals_serial(void **state)
{
    (void)state;
    check_concurrent("linear_multinomial", 500);
}

/* v2 INT64 tensor in JSON (the digits are integers) answers like the JSON float batch. */
static void v2_ints_match_floats(void **state)
{
    (void)state;
    const json_t *m = expected_model("linear_multinomial");
    mg_model_t *model = load_named(m, NULL);
    const json_t *inputs = expected_inputs(m);
    json_t *rows = json_array(); /* the 7 integer rows (the 8th has fractions) */
    for (size_t i = 0; i < 7; i++)
        json_array_append(rows, json_array_get(inputs, i));
    json_t *ints = json_array();
    for (size_t i = 0; i < 7; i++)
        for (size_t j = 0; j < 64; j++)
            json_array_append_new(ints, json_integer((json_int_t)json_number_value(
                                            json_array_get(json_array_get(rows, i), j))));
    json_t *tensor = json_pack("{s:s, s:[i,i], s:s, s:o}", "name", "x", "shape", 7, 64, "datatype",
                               "INT64", "data", ints);
    char err[256] = "";
    mg_input_buf_t buf, buf2;
    mg_input_view_t v, v2;
    mg_outputs_t o, o2;
    json_t *body;
    mg_input_buf_init(&buf, 0);
    mg_input_buf_init(&buf2, 0);
    mg_outputs_init(&o);
    mg_outputs_init(&o2);
    assert_int_equal(
        mg_input_from_v2_json(&model->desc, tensor, "inputs[0]", &buf, &v, err, sizeof(err)),
        MG_OK);
    assert_int_equal(v.n, 7);
    assert_int_equal(v.dense_dtype, MG_DTYPE_I64);
    assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &o), MG_OK);
    view_of(model, rows, true, &body, &buf2, &v2);
    assert_int_equal(mg_model_predict(model, &v2, NULL, NULL, &o2), MG_OK);
    assert_true(same_outputs(&o, &o2));
    json_decref(body);
    json_decref(tensor);
    json_decref(rows);
    mg_outputs_clear(&o);
    mg_outputs_clear(&o2);
    mg_input_buf_clear(&buf);
    mg_input_buf_clear(&buf2);
    mg_model_unref(model);
}

/* Writes |text| (with ' for ") to a temp file and expects the load to fail with |want| in the
   message. */
static void expect_load_error(const char *text, const char *want)
{
    char path[256], err[1024] = "";
    tmp_path(path, sizeof(path), "linear.json");
    char *s = strdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    write_file(path, s, strlen(s));
    free(s);
    mg_model_t *m = NULL;
    mg_err_t e = mg_model_load("linear", path, "t", "1", NULL, &m, err, sizeof(err));
    unlink(path);
    assert_int_equal(e, MG_E_CONFIG);
    assert_null(m);
    if (strstr(err, want) == NULL)
        fail_msg("error '%s' does not contain '%s'", err, want);
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "linear model '%s'", path);
    assert_non_null(strstr(err, prefix)); /* names the file */
}

static void bad_files_are_refused(void **state)
{
    (void)state;
    expect_load_error("{'type': 'regression', 'coef': [[1, 2]], 'intercept': [0]", ":1:57: ");
    expect_load_error("{'type': 'regresion', 'coef': [[1, 2]], 'intercept': [0]}",
                      "type: expected \"regression\", \"logistic\" or \"multinomial\"");
    expect_load_error("{'type': 'regression', 'coef': [[1, 2]], 'intercept': [0], 'bias': 1}",
                      "unknown key 'bias'; valid: format, version, kind, type");
    expect_load_error("{'type': 'regression', 'coef': [[1, 2], [3]], 'intercept': [0, 1]}",
                      "coef[1]: expected 2 numbers, got 1");
    expect_load_error("{'type': 'regression', 'coef': [[1, 2]], 'intercept': [0, 1]}",
                      "intercept: expected 1 numbers, got 2");
    expect_load_error("{'type': 'multinomial', 'coef': [[1, 2], [3, 4]], 'intercept': [0, 1], "
                      "'classes': ['a']}",
                      "classes: expected a list of 2 labels");
    expect_load_error("{'type': 'logistic', 'coef': [[1, 2]], 'intercept': [0], "
                      "'classes': [0, 1, 2]}",
                      "classes: expected a list of 2 labels for 1 coefficient row(s)");
    expect_load_error("{'type': 'regression', 'coef': [[1, 'x']], 'intercept': [0]}",
                      "coef[0][1]: expected a number");
    expect_load_error("{'type': 'regression', 'coef': [[1, 2]], 'intercept': [0], "
                      "'version': 2}",
                      "version: expected 1");
    expect_load_error("[1, 2]", "expected a JSON object");
}

static void string_labels_and_multi_output(void **state)
{
    (void)state;
    char path[256], err[512] = "";
    tmp_path(path, sizeof(path), "labels.json");
    const char *doc = "{\"type\": \"logistic\", \"coef\": [[1, -1]], \"intercept\": [0.5], "
                      "\"classes\": [\"no\", \"yes \\\"really\\\"\"]}";
    write_file(path, doc, strlen(doc));
    mg_model_t *m = NULL;
    assert_int_equal(mg_model_load("linear", path, "t", "1", NULL, &m, err, sizeof(err)), MG_OK);
    json_t *body = json_loads("{\"inputs\": [[2, 1], [0, 3]]}", 0, NULL);
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t o;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&o);
    assert_int_equal(mg_input_from_json(&m->desc, body, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_OK);
    /* z = 2 - 1 + 0.5 = 1.5 > 0: "yes"; z = -3 + 0.5 < 0: "no" */
    assert_string_equal(mg_output_json(&o, 0), "\"yes \\\"really\\\"\"");
    assert_true(near(o.items[0].score, 1.0 / (1.0 + exp(-1.5))));
    assert_string_equal(mg_output_json(&o, 1), "\"no\"");
    assert_true(near(o.items[1].score, 1.0 - 1.0 / (1.0 + exp(2.5))));
    mg_model_unref(m);
    json_decref(body);

    doc = "{\"type\": \"regression\", \"coef\": [[1, 0], [0, 2], [1, 1]], "
          "\"intercept\": [0, 0.25, -1]}";
    write_file(path, doc, strlen(doc));
    assert_int_equal(mg_model_load("linear", path, "t", "1", NULL, &m, err, sizeof(err)), MG_OK);
    body = json_loads("{\"input\": [3, 0.5]}", 0, NULL);
    assert_int_equal(mg_input_from_json(&m->desc, body, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_OK);
    assert_string_equal(mg_output_json(&o, 0), "[3,1.25,2.5]");
    assert_true(o.items[0].score == 3.0);
    mg_model_unref(m);
    json_decref(body);
    unlink(path);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf);
}

static void latency(void **state)
{
    (void)state;
    report_latency("linear_multinomial");
    report_latency("linear_regression");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(multinomial_matches_sklearn),
        cmocka_unit_test(binary_matches_sklearn),
        cmocka_unit_test(one_vs_rest_matches_sklearn),
        cmocka_unit_test(regression_matches_sklearn),
        cmocka_unit_test(describes_itself),
        cmocka_unit_test(batch_equals_single),
        cmocka_unit_test(concurrent_equals_serial),
        cmocka_unit_test(v2_ints_match_floats),
        cmocka_unit_test(bad_files_are_refused),
        cmocka_unit_test(string_labels_and_multi_output),
        cmocka_unit_test(latency),
    };
    return cmocka_run_group_tests(tests, expected_setup, expected_teardown);
}
