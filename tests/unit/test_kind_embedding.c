/* tests/unit/test_kind_embedding.c - the embedding kind against numpy's top-K. */
#include "test_kind_common.c"

static void digits_cosine_matches_numpy(void **state)
{
    (void)state;
    check_python("embedding_digits", NULL, NULL); /* k = 5 from the index header */
}

static void random_dot_matches_numpy(void **state)
{
    (void)state;
    check_python("embedding_random", NULL, NULL); /* k = 10, string ids */
}

static void describes_itself(void **state)
{
    (void)state;
    mg_model_t *m = load_named(expected_model("embedding_random"), NULL);
    assert_string_equal(m->kind->name, "embedding");
    assert_int_equal(m->desc.input, MG_INPUT_FLOATS);
    assert_int_equal(m->desc.input_len, 16);
    assert_true(m->desc.input_optional);
    assert_int_equal(m->desc.output, MG_OUTPUT_RANKING);
    assert_true(m->desc.uses_option);
    assert_true(m->desc.uses_features);
    assert_true(m->desc.thread_safe);
    char err[256];
    assert_int_equal(mg_model_warmup(m, 2, err, sizeof(err)), MG_OK);
    mg_model_unref(m);
}

static void option_k(void **state)
{
    (void)state;
    const json_t *m = expected_model("embedding_random");
    mg_model_t *model = load_named(m, NULL);
    json_t *body;
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t o;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&o);
    view_of(model, expected_inputs(m), false, &body, &buf, &v);
    json_t *opt = json_pack("{si}", "k", 3);
    assert_int_equal(mg_model_predict(model, &v, opt, NULL, &o), MG_OK);
    const json_t *want = json_array_get(json_object_get(m, "outputs"), 0);
    char expect[128];
    snprintf(expect, sizeof(expect), "[\"%s\",\"%s\",\"%s\"]",
             json_string_value(json_array_get(want, 0)), json_string_value(json_array_get(want, 1)),
             json_string_value(json_array_get(want, 2)));
    assert_string_equal(mg_output_json(&o, 0), expect);
    assert_int_equal(o.items[0].n_values, 3);
    json_decref(opt);

    opt = json_pack("{si}", "k", 0);
    assert_int_equal(mg_model_predict(model, &v, opt, NULL, &o), MG_E_PROTO);
    assert_string_equal(o.err, "option.k: expected an integer from 1 to 500");
    json_decref(opt);
    opt = json_pack("{si}", "k", 501);
    assert_int_equal(mg_model_predict(model, &v, opt, NULL, &o), MG_E_PROTO);
    json_decref(opt);
    opt = json_pack("{si}", "topk", 3);
    assert_int_equal(mg_model_predict(model, &v, opt, NULL, &o), MG_E_PROTO);
    assert_string_equal(o.err, "option: unknown key 'topk'; valid: k");
    json_decref(opt);
    opt = json_pack("{ss}", "k", "3");
    assert_int_equal(mg_model_predict(model, &v, opt, NULL, &o), MG_E_PROTO);
    json_decref(opt);
    json_decref(body);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
}

/* Without an input the user's vector comes from the features; an item that has neither is
   refused alone. */
static void user_features(void **state)
{
    (void)state;
    const json_t *m = expected_model("embedding_random");
    mg_model_t *model = load_named(m, NULL);
    const json_t *q0 = json_array_get(expected_inputs(m), 0);
    char err[256] = "";
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t o;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&o);
    json_t *features = json_pack("{sOs[iii]}", "user_vector", q0, "last_viewed", 1, 2, 3);

    /* no "input" at all */
    json_t *body = json_pack("{s{si}}", "option", "k", 10);
    assert_int_equal(mg_input_from_json(&model->desc, body, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(v.n, 1);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_NONE);
    assert_int_equal(mg_model_predict(model, &v, NULL, features, &o), MG_OK);
    assert_int_equal(o.items[0].err, MG_OK);
    char *joined = json_dumps(json_array_get(json_object_get(m, "outputs"), 0), JSON_COMPACT);
    assert_string_equal(mg_output_json(&o, 0), joined);
    free(joined);
    json_decref(body);

    /* a batch: [input, null, []] with features -> all answered; without -> 2 refused */
    body = json_pack("{s[O,n,[]]}", "inputs", q0);
    assert_int_equal(mg_input_from_json(&model->desc, body, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(v.n, 3);
    assert_int_equal(mg_model_predict(model, &v, NULL, features, &o), MG_OK);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(o.items[i].err, MG_OK);
        assert_string_equal(mg_output_json(&o, i), mg_output_json(&o, 0));
    }
    assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &o), MG_OK);
    assert_int_equal(o.items[0].err, MG_OK);
    assert_int_equal(o.items[1].err, MG_E_PROTO);
    assert_string_equal(mg_output_json(&o, 1), "inputs[1]: expected 16 numbers, or user features "
                                               "with \"user_vector\"; got neither");
    assert_int_equal(o.items[2].err, MG_E_PROTO);
    json_t *short_features = json_pack("{s[ff]}", "user_vector", 1.0, 2.0);
    assert_int_equal(mg_model_predict(model, &v, NULL, short_features, &o), MG_OK);
    assert_string_equal(mg_output_json(&o, 2),
                        "inputs[2]: user features \"user_vector\": expected 16 numbers, got 2");
    json_decref(short_features);
    json_decref(body);

    /* a wrong-length input is still a 400 at parse time */
    body = json_pack("{s[fff]}", "input", 1.0, 2.0, 3.0);
    assert_int_equal(mg_input_from_json(&model->desc, body, &buf, &v, err, sizeof(err)),
                     MG_E_PROTO);
    assert_string_equal(err, "input: expected 16 numbers, got 3");
    json_decref(body);
    json_decref(features);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
}

static void batch_equals_single(void **state)
{
    (void)state;
    check_batch_equals_single("embedding_digits");
    check_batch_equals_single("embedding_random");
}

static void concurrent_equals_serial(void **state)
{
    (void)state;
    check_concurrent("embedding_digits", 200);
    check_concurrent("embedding_random", 200);
}

/* Writes an index like tools/write_embedding.py: header JSON |hdr|, n x d floats, then |ids|
   (already in their binary form) of |ids_len| bytes. */
static void write_index(const char *path, const char *hdr, const float *m, size_t n, size_t d,
                        const void *ids, size_t ids_len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint32_t h = (uint32_t)strlen(hdr);
    unsigned char len[4] = {h & 255, (h >> 8) & 255, (h >> 16) & 255, h >> 24};
    fwrite("MGEMBED1", 1, 8, f);
    fwrite(len, 1, 4, f);
    fwrite(hdr, 1, h, f);
    for (size_t pad = (64 - (12 + h) % 64) % 64; pad > 0; pad--)
        fputc(0, f);
    fwrite(m, sizeof(float), n * d, f);
    fwrite(ids, 1, ids_len, f);
    fclose(f);
}

/* String ids that need escaping come out as valid JSON; ties rank the lower row first. */
static void string_ids_are_escaped_and_ties_stable(void **state)
{
    (void)state;
    char path[256], err[512] = "";
    tmp_path(path, sizeof(path), "ids.mgemb");
    const float m[3 * 2] = {1, 0, 0, 1, 1, 0}; /* rows 0 and 2 tie */
    const char *ids[3] = {"a\"b", "tab\there", "caf\xc3\xa9"};
    unsigned char blob[8 * 4 + 64];
    uint64_t off = 0;
    size_t p = 0;
    for (int i = 0; i <= 3; i++) {
        for (int b = 0; b < 8; b++)
            blob[p++] = (unsigned char)(off >> (8 * b));
        if (i < 3)
            off += strlen(ids[i]);
    }
    for (int i = 0; i < 3; i++) {
        memcpy(blob + p, ids[i], strlen(ids[i]));
        p += strlen(ids[i]);
    }
    write_index(path, "{\"count\":3,\"dim\":2,\"metric\":\"dot\",\"ids\":\"string\",\"k\":3}", m, 3,
                2, blob, p);
    mg_model_t *model = NULL;
    assert_int_equal(mg_model_load("embedding", path, "t", "1", NULL, &model, err, sizeof(err)),
                     MG_OK);
    assert_false(model->desc.input_optional); /* no user_feature in this header */
    json_t *body = json_loads("{\"input\": [2, 1]}", 0, NULL);
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_outputs_t o;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&o);
    assert_int_equal(mg_input_from_json(&model->desc, body, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(mg_model_predict(model, &v, NULL, NULL, &o), MG_OK);
    assert_string_equal(mg_output_json(&o, 0), "[\"a\\\"b\",\"caf\xc3\xa9\",\"tab\\u0009here\"]");
    json_t *parsed = json_loads(mg_output_json(&o, 0), JSON_DECODE_ANY, NULL);
    assert_non_null(parsed);
    assert_string_equal(json_string_value(json_array_get(parsed, 2)), "tab\there");
    json_decref(parsed);
    assert_true(o.items[0].score == 2.0);
    json_decref(body);
    mg_outputs_clear(&o);
    mg_input_buf_clear(&buf);
    mg_model_unref(model);
    unlink(path);
}

static void expect_index_error(const char *path, const char *want)
{
    char err[1024] = "";
    mg_model_t *m = NULL;
    mg_err_t e = mg_model_load("embedding", path, "t", "1", NULL, &m, err, sizeof(err));
    assert_int_equal(e, MG_E_CONFIG);
    assert_null(m);
    if (strstr(err, want) == NULL)
        fail_msg("error '%s' does not contain '%s'", err, want);
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "embedding index '%s'", path);
    assert_non_null(strstr(err, prefix));
}

static void corrupt_indexes_are_refused(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof(path), "bad.mgemb");
    const float m[4] = {1, 2, 3, 4};
    const int64_t ids[2] = {7, 8};
    write_file(path, "not an index at all", 19);
    expect_index_error(path, "does not start with MGEMBED1");
    write_index(path, "{\"count\":2,\"dim\":2,\"metric\":\"dot\",\"ids\":\"int64\"}", m, 2, 2, ids,
                8); /* one id short */
    expect_index_error(path, "expected 16 bytes of int64 ids after the matrix, got 8");
    write_index(path, "{\"count\":5,\"dim\":2,\"metric\":\"dot\",\"ids\":\"int64\"}", m, 2, 2, ids,
                16); /* 5 rows claimed, 2 written */
    expect_index_error(path, "expected 5 x 2 float32 at offset 64, the file is 96 bytes");
    write_index(path, "{\"count\":2,\"dim\":2,\"metric\":\"l2\",\"ids\":\"int64\"}", m, 2, 2, ids,
                16);
    expect_index_error(path, "metric: expected \"dot\" or \"cosine\"");
    write_index(path, "{\"count\":2,\"dim\":2,\"metric\":\"dot\",\"ids\":\"int64\",\"kk\":1}", m, 2,
                2, ids, 16);
    expect_index_error(path, "header: unknown key 'kk'; valid: version, count, dim");
    write_index(path, "{\"count\":2,", m, 2, 2, ids, 16);
    expect_index_error(path, "header: ");
    const float nan_m[4] = {1, NAN, 3, 4};
    write_index(path, "{\"count\":2,\"dim\":2,\"metric\":\"dot\",\"ids\":\"int64\"}", nan_m, 2, 2,
                ids, 16);
    expect_index_error(path, "row 0 has a value that is not finite");
    /* ids that repeat: an answer could not tell the items apart (loaded before) */
    const float m3[6] = {1, 2, 3, 4, 5, 6};
    const int64_t dup[3] = {7, 8, 7};
    write_index(path, "{\"count\":3,\"dim\":2,\"metric\":\"dot\",\"ids\":\"int64\"}", m3, 3, 2, dup,
                24);
    expect_index_error(path, "ids: rows 0 and 2 have the same id (ids must be distinct)");
    unsigned char sblob[4 * 8 + 5] = {0};
    const uint64_t offs[4] = {0, 2, 3, 5}; /* "ab", "c", "ab" */
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 8; b++)
            sblob[8 * i + b] = (unsigned char)(offs[i] >> (8 * b));
    memcpy(sblob + 32, "abcab", 5);
    write_index(path, "{\"count\":3,\"dim\":2,\"metric\":\"dot\",\"ids\":\"string\"}", m3, 3, 2,
                sblob, sizeof(sblob));
    expect_index_error(path, "ids: rows 0 and 2 have the same id");
    write_index(path, "{\"count\":2,\"dim\":2,\"metric\":\"dot\",\"ids\":\"int64\"}", m, 2, 2, ids,
                16);
    char err[512];
    mg_model_t *ok = NULL;
    assert_int_equal(mg_model_load("embedding", path, "t", "1", NULL, &ok, err, sizeof(err)),
                     MG_OK);
    mg_model_unref(ok);
    unlink(path);
}

static void latency(void **state)
{
    (void)state;
    report_latency("embedding_digits");
    report_latency("embedding_random");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(digits_cosine_matches_numpy),
        cmocka_unit_test(random_dot_matches_numpy),
        cmocka_unit_test(describes_itself),
        cmocka_unit_test(option_k),
        cmocka_unit_test(user_features),
        cmocka_unit_test(batch_equals_single),
        cmocka_unit_test(concurrent_equals_serial),
        cmocka_unit_test(string_ids_are_escaped_and_ties_stable),
        cmocka_unit_test(corrupt_indexes_are_refused),
        cmocka_unit_test(latency),
    };
    return cmocka_run_group_tests(tests, expected_setup, expected_teardown);
}
