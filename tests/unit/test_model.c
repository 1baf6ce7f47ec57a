/* tests/unit/test_model.c - the model interface: kind registry, input parsing and its 400
 * messages, v2 tensors, output buffers, loading (sha256, errors), reference counts, and the
 * serialisation of kinds that are not thread-safe. Uses fake kinds; no trained models. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "backends/runtime/model.h"

/* JSON in tests is written with ' for " so it stays readable inside C strings. */
static json_t *doc(const char *text)
{
    char *s = strdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t jerr;
    json_t *d = json_loads(s, JSON_DECODE_ANY, &jerr);
    if (d == NULL)
        fail_msg("bad test JSON: %s: %s", jerr.text, s);
    free(s);
    return d;
}

static const mg_model_desc_t floats4 = {.input = MG_INPUT_FLOATS, .input_len = 4};

/* Parses |body| against |d|; returns the error and the message in |err|. */
static mg_err_t parse(const mg_model_desc_t *d, const char *body, mg_input_buf_t *buf,
                      mg_input_view_t *v, char *err, size_t errlen, json_t **keep)
{
    json_t *b = doc(body);
    err[0] = '\0';
    mg_err_t e = mg_input_from_json(d, b, buf, v, err, errlen);
    if (keep != NULL)
        *keep = b;
    else
        json_decref(b);
    return e;
}

#define EXPECT_400(d, body, msg)                                                                   \
    do {                                                                                           \
        char err_[256];                                                                            \
        mg_input_buf_t b_;                                                                         \
        mg_input_view_t v_;                                                                        \
        mg_input_buf_init(&b_, 4);                                                                 \
        mg_err_t e_ = parse((d), (body), &b_, &v_, err_, sizeof(err_), NULL);                      \
        assert_int_equal(e_, MG_E_PROTO);                                                          \
        assert_string_equal(err_, (msg));                                                          \
        mg_input_buf_clear(&b_);                                                                   \
    } while (0)

static void kind_registry(void **state)
{
    (void)state;
    const char *const *names = mg_model_kind_names();
    char list[128], tiny[6];
    assert_string_equal(mg_model_kind_list(list, sizeof(list)), " xgboost linear embedding text");
    assert_string_equal(mg_model_kind_list(tiny, sizeof(tiny)), " xgbo"); /* cut, still a string */
    size_t n = 0;
    for (; names[n] != NULL; n++) {
        const mg_model_kind_t *k = mg_model_kind_find(names[n]);
        assert_non_null(k);
        assert_string_equal(k->name, names[n]);
        assert_non_null(k->load);
        assert_non_null(k->describe);
        assert_non_null(k->predict);
        assert_non_null(k->free);
    }
    assert_int_equal(n, 4);
    assert_ptr_equal(mg_model_kind_find("xgboost"), &mg_kind_xgboost);
    assert_ptr_equal(mg_model_kind_find("linear"), &mg_kind_linear);
    assert_ptr_equal(mg_model_kind_find("embedding"), &mg_kind_embedding);
    assert_ptr_equal(mg_model_kind_find("text"), &mg_kind_text);
    assert_null(mg_model_kind_find("XGBoost"));
    assert_null(mg_model_kind_find(""));
    assert_null(mg_model_kind_find(NULL));
    assert_string_equal(mg_input_type_name(MG_INPUT_STRINGS), "strings");
    assert_string_equal(mg_output_kind_name(MG_OUTPUT_RANKING), "ranking");
}

static void numbers_messages(void **state)
{
    (void)state;
    const mg_model_desc_t d64 = {.input = MG_INPUT_FLOATS, .input_len = 64};
    char body[1024] = "{'input': [";
    for (int i = 0; i < 63; i++)
        strcat(body, i ? ",1" : "1");
    strcat(body, "]}");
    EXPECT_400(&d64, body, "input: expected 64 numbers, got 63");
    EXPECT_400(&floats4, "{'inputs': [[1,2,3,4], [1,2,3,4], 'abc']}",
               "inputs[2]: expected a list of numbers, got a string");
    EXPECT_400(&floats4, "{'input': [1, 2, 'x', 4]}", "input[2]: expected a number, got a string");
    EXPECT_400(&floats4, "{'inputs': [[1,2,3,4], [1,2,null,4]]}",
               "inputs[1][2]: expected a number, got null");
    EXPECT_400(&floats4, "{'input': {'a': 1}}", "input: expected a list of numbers, got an object");
    EXPECT_400(&floats4, "{'input': []}", "input: expected 4 numbers, got 0");
    EXPECT_400(&floats4, "{'input': null}", "input: expected a list of numbers, got null");
    EXPECT_400(&floats4, "{'inputs': [[1,2,3,4,5]]}", "inputs[0]: expected 4 numbers, got 5");
    EXPECT_400(&floats4, "{}",
               "body: expected \"input\" (a list of numbers) or \"inputs\" (a list "
               "of them)");
    EXPECT_400(&floats4, "{'input': [1,2,3,4], 'inputs': []}",
               "body: expected \"input\" or \"inputs\", not both");
    EXPECT_400(&floats4, "{'inputs': []}",
               "inputs: expected at least one input, got an empty list");
    EXPECT_400(&floats4, "{'inputs': [1,2,3,4]}",
               "inputs[0]: expected a list of numbers, got a number");
    EXPECT_400(&floats4, "{'inputs': 'x'}", "inputs: expected a list of inputs, got a string");
    EXPECT_400(&floats4, "[1,2,3,4]", "body: expected a JSON object, got a list");
    /* max_items = 4 as in EXPECT_400: too many items is MG_E_LIMIT (a 413), not a 400 */
    {
        char err[256];
        mg_input_buf_t b;
        mg_input_view_t v;
        mg_input_buf_init(&b, 4);
        mg_err_t e = parse(&floats4, "{'inputs': [[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}",
                           &b, &v, err, sizeof(err), NULL);
        assert_int_equal(e, MG_E_LIMIT);
        assert_string_equal(err, "inputs: at most 4 inputs per request, got 5");
        mg_input_buf_clear(&b);
    }
    const mg_model_desc_t ints = {.input = MG_INPUT_INTS, .input_len = 3};
    EXPECT_400(&ints, "{'input': [1, 2.5, 3]}", "input[1]: expected an integer, got 2.5");
    EXPECT_400(&ints, "{'input': [1, 2]}", "input: expected 3 integers, got 2");
    const mg_model_desc_t any = {.input = MG_INPUT_FLOATS};
    EXPECT_400(&any, "{'input': []}", "input: expected a list of numbers, got an empty list");
    /* past float32: infinity in every kind but linear, and a 200 with null or garbage */
    EXPECT_400(&any, "{'input': [1, 1e39]}",
               "input[1]: expected a number within float32's range (-3.4e38 to 3.4e38), got "
               "1e+39");
    EXPECT_400(&any, "{'inputs': [[0], [-1e300]]}",
               "inputs[1][0]: expected a number within float32's range (-3.4e38 to 3.4e38), got "
               "-1e+300");
}

static void numbers_parse_dense(void **state)
{
    (void)state;
    char err[256];
    mg_input_buf_t buf;
    mg_input_view_t v;
    json_t *keep;
    mg_input_buf_init(&buf, 0);
    assert_int_equal(parse(&floats4, "{'inputs': [[1,2,3,4], [5,6.5,7,8], [0,0,0,-3e38]]}", &buf,
                           &v, err, sizeof(err), &keep),
                     MG_OK);
    assert_int_equal(v.n, 3);
    assert_true(v.batch);
    assert_non_null(v.dense);
    assert_int_equal(v.dense_dtype, MG_DTYPE_F64);
    assert_int_equal(v.dense_width, 4);
    const double *x = v.dense;
    assert_true(x[5] == 6.5 && x[11] == -3e38 && x[0] == 1);
    json_decref(keep);
    /* a single input: batch flag off, ints accepted as numbers */
    assert_int_equal(parse(&floats4, "{'input': [1,2,3,4], 'option': {'k': 3}}", &buf, &v, err,
                           sizeof(err), &keep),
                     MG_OK);
    assert_false(v.batch);
    assert_int_equal(v.n, 1);
    char where[32];
    assert_string_equal(mg_input_where(&v, 0, where, sizeof(where)), "input");
    json_decref(keep);
    /* ints model: I64, 3.0 accepted as an integer */
    const mg_model_desc_t ints = {.input = MG_INPUT_INTS, .input_len = 3};
    assert_int_equal(
        parse(&ints, "{'input': [1, 3.0, -9007199254740993]}", &buf, &v, err, sizeof(err), &keep),
        MG_OK);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_I64);
    const int64_t *iv = v.items[0].data;
    assert_true(iv[1] == 3 && iv[2] == -9007199254740993LL);
    json_decref(keep);
    mg_input_buf_clear(&buf);
}

static void strings_and_bytes(void **state)
{
    (void)state;
    const mg_model_desc_t str = {.input = MG_INPUT_STRING};
    const mg_model_desc_t bytes = {.input = MG_INPUT_BYTES};
    const mg_model_desc_t strs = {.input = MG_INPUT_STRINGS, .input_len = 2};
    char err[256];
    mg_input_buf_t buf;
    mg_input_view_t v;
    json_t *keep;
    mg_input_buf_init(&buf, 0);
    EXPECT_400(&str, "{'input': ['a']}", "input: expected a string, got a list");
    EXPECT_400(&strs, "{'input': ['a', 1]}", "input[1]: expected a string, got a number");
    EXPECT_400(&strs, "{'inputs': [['a', 'b'], ['c']]}", "inputs[1]: expected 2 strings, got 1");
    EXPECT_400(&strs, "{'input': 'ab'}", "input: expected a list of strings, got a string");
    EXPECT_400(&bytes, "{'input': 'aGVsbG8*'}",
               "input: expected base64-encoded bytes, got a string that is not base64 (at "
               "character 7)");
    EXPECT_400(&bytes, "{'input': 3}", "input: expected a base64 string, got a number");

    assert_int_equal(parse(&str, "{'inputs': ['héllo', '']}", &buf, &v, err, sizeof(err), &keep),
                     MG_OK);
    assert_int_equal(v.n, 2);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_STR);
    assert_int_equal(v.items[0].len, 6);
    assert_memory_equal(v.items[0].data, "h\xc3\xa9llo", 6);
    assert_int_equal(v.items[1].len, 0);
    assert_null(v.dense);
    json_decref(keep);

    assert_int_equal(parse(&bytes, "{'inputs': ['aGVsbG8=', 'AAEC/w', '', 'YQ']}", &buf, &v, err,
                           sizeof(err), &keep),
                     MG_OK);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_BYTES);
    assert_int_equal(v.items[0].len, 5);
    assert_memory_equal(v.items[0].data, "hello", 5);
    assert_int_equal(v.items[1].len, 4);
    assert_memory_equal(v.items[1].data, "\x00\x01\x02\xff", 4);
    assert_int_equal(v.items[2].len, 0);
    assert_int_equal(v.items[3].len, 1);
    assert_memory_equal(v.items[3].data, "a", 1);
    json_decref(keep);

    assert_int_equal(
        parse(&strs, "{'inputs': [['a', 'bc'], ['d', '']]}", &buf, &v, err, sizeof(err), &keep),
        MG_OK);
    assert_int_equal(v.items[1].dtype, MG_DTYPE_STRS);
    const mg_bytes_t *s = v.items[1].data;
    assert_int_equal(v.items[1].len, 2);
    assert_memory_equal(s[0].p, "d", 1);
    assert_int_equal(s[1].len, 0);
    json_decref(keep);
    mg_input_buf_clear(&buf);
}

static void optional_input(void **state)
{
    (void)state;
    const mg_model_desc_t d = {.input = MG_INPUT_FLOATS, .input_len = 3, .input_optional = true};
    char err[256];
    mg_input_buf_t buf;
    mg_input_view_t v;
    json_t *keep;
    mg_input_buf_init(&buf, 0);
    assert_int_equal(parse(&d, "{'option': {}}", &buf, &v, err, sizeof(err), &keep), MG_OK);
    assert_int_equal(v.n, 1);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_NONE);
    json_decref(keep);
    assert_int_equal(
        parse(&d, "{'inputs': [[1,2,3], null, []]}", &buf, &v, err, sizeof(err), &keep), MG_OK);
    assert_int_equal(v.n, 3);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_F64);
    assert_int_equal(v.items[1].dtype, MG_DTYPE_NONE);
    assert_int_equal(v.items[2].dtype, MG_DTYPE_NONE);
    assert_null(v.dense);
    assert_int_equal(mg_input_check(&d, &v, err, sizeof(err)), MG_OK);
    json_decref(keep);
    EXPECT_400(&d, "{'input': [1, 2]}", "input: expected 3 numbers, got 2");
    mg_input_buf_clear(&buf);
}

static void check_merged_views(void **state)
{
    (void)state;
    char err[256];
    const double row[4] = {1, 2, 3, 4};
    const float frow[3] = {1, 2, 3};
    mg_input_item_t items[3] = {
        {MG_DTYPE_F64, row, 4}, {MG_DTYPE_F32, frow, 3}, {MG_DTYPE_STR, "abc", 3}};
    mg_input_view_t v = {.n = 2, .items = items, .batch = true};
    assert_int_equal(mg_input_check(&floats4, &v, err, sizeof(err)), MG_E_PROTO);
    assert_string_equal(err, "inputs[1]: expected 4 numbers, got 3");
    items[1] = items[2];
    assert_int_equal(mg_input_check(&floats4, &v, err, sizeof(err)), MG_E_PROTO);
    assert_string_equal(err, "inputs[1]: expected a list of numbers, got a string");
    items[1] = (mg_input_item_t){MG_DTYPE_NONE, NULL, 0};
    assert_int_equal(mg_input_check(&floats4, &v, err, sizeof(err)), MG_E_PROTO);
    assert_string_equal(err, "inputs[1]: expected 4 numbers, got none");
    v.n = 1;
    assert_int_equal(mg_input_check(&floats4, &v, err, sizeof(err)), MG_OK);
    v.n = 0;
    assert_int_equal(mg_input_check(&floats4, &v, err, sizeof(err)), MG_E_PROTO);
    const mg_model_desc_t ints = {.input = MG_INPUT_INTS, .input_len = 4};
    v = (mg_input_view_t){.n = 1, .items = items, .batch = false};
    assert_int_equal(mg_input_check(&ints, &v, err, sizeof(err)), MG_E_PROTO);
    assert_string_equal(err, "input: expected a list of integers, got a list of numbers");
}

static void v2_json_tensors(void **state)
{
    (void)state;
    char err[256];
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_input_buf_init(&buf, 0);
    struct {
        const char *tensor;
        const char *msg;
    } bad[] = {
        {"{'name': 'x', 'shape': [2, 4], 'datatype': 'BYTES', 'data': ['a']}",
         "inputs[0].datatype: expected FP32, FP64, INT32 or INT64, got \"BYTES\""},
        {"{'name': 'x', 'shape': [2, 4], 'data': [1]}",
         "inputs[0].datatype: expected FP32, FP64, INT32 or INT64, got nothing"},
        {"{'name': 'x', 'shape': [2, 3], 'datatype': 'FP32', 'data': [1,2,3,4,5,6]}",
         "inputs[0].shape: expected [n, 4], got [2, 3]"},
        {"{'name': 'x', 'shape': [2, 4], 'datatype': 'FP32', 'data': [1,2,3,4,5,6,7]}",
         "inputs[0].data: expected 8 values for shape [2, 4], got 7"},
        {"{'name': 'x', 'shape': [1, 4], 'datatype': 'INT32', 'data': [1,2,3,4000000000]}",
         "inputs[0].data[3]: expected an INT32, got 4000000000"},
        {"{'name': 'x', 'shape': [1, 4], 'datatype': 'FP64', 'data': [1,2,'3',4]}",
         "inputs[0].data[2]: expected a number, got a string"},
        {"{'name': 'x', 'shape': [0, 4], 'datatype': 'FP64', 'data': []}",
         "inputs[0].shape: expected at least one item, got [0, 4]"},
        {"{'name': 'x', 'shape': [-1, 4], 'datatype': 'FP64', 'data': []}",
         "inputs[0].shape[0]: expected a non-negative integer, got a negative or huge number"},
        {"[1]", "inputs[0]: expected a tensor {\"name\", \"shape\", \"datatype\", \"data\"}, got a "
                "list"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *t = doc(bad[i].tensor);
        assert_int_equal(
            mg_input_from_v2_json(&floats4, t, "inputs[0]", &buf, &v, err, sizeof(err)),
            MG_E_PROTO);
        assert_string_equal(err, bad[i].msg);
        json_decref(t);
    }
    /* nested FP32 data, [2, 2, 2] = 2 items of 4 */
    json_t *t = doc("{'name': 'x', 'shape': [2, 2, 2], 'datatype': 'FP32', "
                    "'data': [[[1, 2], [3, 4]], [[5, 6], [7, 8.5]]]}");
    assert_int_equal(mg_input_from_v2_json(&floats4, t, NULL, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(v.n, 2);
    assert_int_equal(v.dense_dtype, MG_DTYPE_F32);
    assert_true(((const float *)v.dense)[7] == 8.5f);
    json_decref(t);
    /* [4] is one item */
    t = doc("{'name': 'x', 'shape': [4], 'datatype': 'INT32', 'data': [1, 2, 3, 4]}");
    assert_int_equal(mg_input_from_v2_json(&floats4, t, NULL, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(v.n, 1);
    assert_int_equal(v.items[0].dtype, MG_DTYPE_I64);
    json_decref(t);
    /* BYTES for a strings model */
    const mg_model_desc_t strs = {.input = MG_INPUT_STRINGS, .input_len = 2};
    t = doc("{'name': 'x', 'shape': [2, 2], 'datatype': 'BYTES', 'data': ['a', 'b', 'c', 'd']}");
    assert_int_equal(mg_input_from_v2_json(&strs, t, NULL, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(v.n, 2);
    assert_int_equal(v.items[1].dtype, MG_DTYPE_STRS);
    assert_memory_equal(((const mg_bytes_t *)v.items[1].data)[1].p, "d", 1);
    json_decref(t);
    const mg_model_desc_t str = {.input = MG_INPUT_STRING};
    t = doc("{'name': 'x', 'shape': [2, 2], 'datatype': 'BYTES', 'data': ['a', 'b', 'c', 'd']}");
    assert_int_equal(mg_input_from_v2_json(&str, t, NULL, &buf, &v, err, sizeof(err)), MG_E_PROTO);
    assert_string_equal(err, "inputs[0].shape: expected [n] (one string per item), got [2, 2]");
    json_decref(t);
    t = doc("{'name': 'x', 'shape': [3], 'datatype': 'BYTES', 'data': ['a', 'bb', '']}");
    assert_int_equal(mg_input_from_v2_json(&str, t, NULL, &buf, &v, err, sizeof(err)), MG_OK);
    assert_int_equal(v.n, 3);
    assert_int_equal(v.items[1].len, 2);
    json_decref(t);
    mg_input_buf_clear(&buf);
}

static void v2_binary_tensors(void **state)
{
    (void)state;
    char err[256];
    mg_input_buf_t buf;
    mg_input_view_t v;
    mg_input_buf_init(&buf, 0);
    double rows[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t shape[2] = {2, 4};
    assert_int_equal(mg_input_from_tensor(&floats4, "FP64", shape, 2, rows, sizeof(rows), NULL,
                                          &buf, &v, err, sizeof(err)),
                     MG_OK);
    assert_ptr_equal(v.dense, rows); /* zero copy */
    assert_int_equal(v.n, 2);
    assert_int_equal(mg_input_from_tensor(&floats4, "FP64", shape, 2, rows, sizeof(rows) - 8, NULL,
                                          &buf, &v, err, sizeof(err)),
                     MG_E_PROTO);
    assert_string_equal(err, "inputs[0]: expected 64 bytes of FP64 data for shape [2, 4], got 56");
    /* misaligned data is copied once */
    unsigned char raw[4 * 4 + 1];
    float f[4] = {1.5f, 2, 3, 4};
    memcpy(raw + 1, f, sizeof(f));
    int64_t one[1] = {4};
    assert_int_equal(mg_input_from_tensor(&floats4, "FP32", one, 1, raw + 1, sizeof(f), NULL, &buf,
                                          &v, err, sizeof(err)),
                     MG_OK);
    assert_ptr_not_equal(v.dense, raw + 1);
    assert_true(((const float *)v.dense)[0] == 1.5f);
    /* BYTES: 4-byte little-endian length prefixes */
    const mg_model_desc_t bytes = {.input = MG_INPUT_BYTES};
    const unsigned char b[] = {3, 0, 0, 0, 'a', 'b', 'c', 0, 0, 0, 0, 1, 0, 0, 0, 0xff};
    int64_t n3[1] = {3};
    assert_int_equal(mg_input_from_tensor(&bytes, "BYTES", n3, 1, b, sizeof(b), NULL, &buf, &v, err,
                                          sizeof(err)),
                     MG_OK);
    assert_int_equal(v.n, 3);
    assert_int_equal(v.items[0].len, 3);
    assert_int_equal(v.items[1].len, 0);
    assert_memory_equal(v.items[2].data, "\xff", 1);
    assert_int_equal(mg_input_from_tensor(&bytes, "BYTES", n3, 1, b, sizeof(b) - 1, NULL, &buf, &v,
                                          err, sizeof(err)),
                     MG_E_PROTO);
    assert_string_equal(err, "inputs[0]: BYTES element 2 runs past the end of the data");
    assert_int_equal(
        mg_input_from_tensor(&floats4, "UINT8", one, 1, b, 4, NULL, &buf, &v, err, sizeof(err)),
        MG_E_PROTO);
    assert_string_equal(err,
                        "inputs[0].datatype: expected FP32, FP64, INT32 or INT64, got \"UINT8\"");
    mg_input_buf_clear(&buf);
}

static void outputs_and_scratch(void **state)
{
    (void)state;
    mg_outputs_t o;
    mg_outputs_init(&o);
    const size_t n = 1000; /* enough to grow every buffer several times */
    assert_int_equal(mg_out_begin(&o, n), MG_OK);
    mg_input_view_t in = {.n = n, .batch = true};
    for (size_t i = 0; i < n; i++) {
        if (i == 7) {
            assert_int_equal(mg_out_printf(&o, "[partial"), MG_OK); /* dropped by the failure */
            assert_int_equal(mg_out_fail(&o, &in, i, "bad %s", "thing"), MG_OK);
            continue;
        }
        double vals[3] = {(double)i, 0.5, 1.0 / 3};
        assert_int_equal(mg_out_printf(&o, "{\"i\":%zu,\"x\":", i), MG_OK);
        assert_int_equal(mg_out_double(&o, (double)i / 7), MG_OK);
        assert_int_equal(mg_out_write(&o, "}", 1), MG_OK);
        assert_int_equal(mg_out_values(&o, vals, 3), MG_OK);
        assert_int_equal(mg_out_end(&o, i, (double)i * 2), MG_OK);
    }
    assert_int_equal(o.n, n);
    for (size_t i = 0; i < n; i++) {
        if (i == 7) {
            assert_int_equal(o.items[i].err, MG_E_PROTO);
            assert_string_equal(mg_output_json(&o, i), "inputs[7]: bad thing");
            assert_string_equal(mg_output_json(&o, i) + o.items[i].where_len, "bad thing");
            assert_int_equal(o.items[i].n_values, 0);
            continue;
        }
        json_t *j = json_loads(mg_output_json(&o, i), 0, NULL);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "i")), i);
        assert_true(json_real_value(json_object_get(j, "x")) == (double)i / 7 ||
                    json_number_value(json_object_get(j, "x")) == (double)i / 7);
        json_decref(j);
        assert_true(o.items[i].score == (double)i * 2);
        assert_int_equal(o.items[i].n_values, 3);
        assert_true(mg_output_values(&o, i)[0] == (double)i);
        assert_true(mg_output_values(&o, i)[2] == 1.0 / 3);
    }
    /* non-finite numbers are not JSON */
    assert_int_equal(mg_out_begin(&o, 1), MG_OK);
    assert_int_equal(mg_out_double(&o, NAN), MG_OK);
    assert_int_equal(mg_out_end(&o, 0, 0), MG_OK);
    assert_string_equal(mg_output_json(&o, 0), "null");
    assert_int_equal(mg_out_end(&o, 1, 0), MG_E_IO); /* beyond n */
    /* scratch: separate regions, a bounded number per call, reused */
    void *s[MG_OUT_SCRATCH_SLOTS];
    for (int i = 0; i < MG_OUT_SCRATCH_SLOTS; i++) {
        s[i] = mg_out_scratch(&o, 100000);
        assert_non_null(s[i]);
        assert_int_equal((uintptr_t)s[i] % 64, 0);
        memset(s[i], i, 100000);
        for (int k = 0; k < i; k++)
            assert_ptr_not_equal(s[i], s[k]);
    }
    assert_null(mg_out_scratch(&o, 1));
    assert_int_equal(mg_out_begin(&o, 1), MG_OK);
    assert_ptr_equal(mg_out_scratch(&o, 5000), s[0]); /* reused, no new allocation */
    assert_int_equal(mg_out_error(&o, MG_E_IO, "boom %d", 42), MG_E_IO);
    assert_string_equal(o.err, "boom 42");
    mg_outputs_clear(&o);
}

static void input_matrix(void **state)
{
    (void)state;
    const int32_t a[3] = {1, 2, 3};
    const double b[3] = {4.5, 5, 6};
    mg_input_item_t items[2] = {{MG_DTYPE_I32, a, 3}, {MG_DTYPE_F64, b, 3}};
    mg_input_view_t v = {.n = 2, .items = items};
    mg_outputs_t o;
    mg_outputs_init(&o);
    assert_int_equal(mg_out_begin(&o, 2), MG_OK);
    const float *f = mg_input_matrix(&v, MG_DTYPE_F32, 3, &o);
    assert_non_null(f);
    assert_true(f[0] == 1 && f[2] == 3 && f[3] == 4.5f && f[5] == 6);
    const double *d = mg_input_matrix(&v, MG_DTYPE_F64, 3, &o);
    assert_true(d[1] == 2 && d[3] == 4.5);
    const double dense[6] = {1, 2, 3, 4, 5, 6};
    v.dense = dense;
    v.dense_dtype = MG_DTYPE_F64;
    v.dense_width = 3;
    assert_ptr_equal(mg_input_matrix(&v, MG_DTYPE_F64, 3, &o), dense);
    assert_null(mg_input_matrix(&v, MG_DTYPE_I64, 3, &o));
    mg_outputs_clear(&o);
}

/* ---- fake kinds: loading, refcounts, sha256, serialisation ---- */

static atomic_int fake_frees, fake_inflight, fake_max_inflight;

static mg_err_t fake_load(const char *path, const json_t *options, void **impl, char *err,
                          size_t errlen)
{
    if (json_object_get(options, "fail") != NULL) {
        snprintf(err, errlen, "fake model '%s': refused as asked", path);
        return MG_E_CONFIG;
    }
    *impl = strdup("state");
    return *impl ? MG_OK : MG_E_NOMEM;
}

static void fake_describe(const void *impl, mg_model_desc_t *d)
{
    (void)impl;
    *d = (mg_model_desc_t){
        .input = MG_INPUT_FLOATS, .input_len = 2, .output = MG_OUTPUT_VALUE, .thread_safe = true};
}

static void unsafe_describe(const void *impl, mg_model_desc_t *d)
{
    fake_describe(impl, d);
    d->thread_safe = false;
}

static mg_err_t fake_predict(const void *impl, const mg_input_view_t *in, const json_t *option,
                             const json_t *features, mg_outputs_t *out)
{
    int now = atomic_fetch_add(&fake_inflight, 1) + 1;
    int mx = atomic_load(&fake_max_inflight);
    while (now > mx && !atomic_compare_exchange_weak(&fake_max_inflight, &mx, now))
        ;
    usleep(200);
    mg_err_t e = mg_out_begin(out, in->n);
    for (size_t i = 0; i < in->n && e == MG_OK; i++) {
        const double *x = in->items[i].data;
        double sum = x[0] + x[1];
        if ((e = mg_out_double(out, sum)) == MG_OK)
            e = mg_out_end(out, i, sum);
    }
    atomic_fetch_sub(&fake_inflight, 1);
    return e;
}

static void fake_free(void *impl)
{
    atomic_fetch_add(&fake_frees, 1);
    free(impl);
}

static const mg_model_kind_t fake_kind = {"fake", fake_load, fake_describe, fake_predict,
                                          fake_free};
static const mg_model_kind_t unsafe_kind = {"unsafe", fake_load, unsafe_describe, fake_predict,
                                            fake_free};

static char tmpfile_path[256];

static int with_abc_file(void **state)
{
    (void)state;
    snprintf(tmpfile_path, sizeof(tmpfile_path), "/tmp/mg-test-%d-abc", (int)getpid());
    FILE *f = fopen(tmpfile_path, "wb");
    if (f == NULL)
        return -1;
    fputs("abc", f);
    fclose(f);
    return 0;
}

static int remove_abc_file(void **state)
{
    (void)state;
    unlink(tmpfile_path);
    return 0;
}

static void load_hashes_and_refcounts(void **state)
{
    (void)state;
    char err[256];
    mg_model_t *m = NULL;
    atomic_store(&fake_frees, 0);
    assert_int_equal(
        mg_model_load_kind(&fake_kind, tmpfile_path, "digits", "7", NULL, &m, err, sizeof(err)),
        MG_OK);
    /* sha256("abc"), FIPS 180-2 test vector */
    assert_string_equal(m->sha256,
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(m->size, 3);
    assert_string_equal(m->name, "digits");
    assert_string_equal(m->version, "7");
    assert_string_equal(m->path, tmpfile_path);
    assert_ptr_equal(m->kind, &fake_kind);
    assert_true(m->loaded_at_ms > 1600000000000LL);
    assert_true(m->load_ms >= 0);
    assert_int_equal(m->desc.input_len, 2);
    assert_int_equal(mg_model_refs(m), 1);
    assert_ptr_equal(mg_model_ref(m), m);
    assert_ptr_equal(mg_model_ref(m), m);
    assert_int_equal(mg_model_refs(m), 3);
    mg_model_unref(m);
    mg_model_unref(m);
    assert_int_equal(atomic_load(&fake_frees), 0);
    assert_int_equal(mg_model_refs(m), 1);
    mg_model_unref(m); /* the last one frees */
    assert_int_equal(atomic_load(&fake_frees), 1);
    mg_model_unref(NULL);

    /* NULL name/version become "" */
    assert_int_equal(
        mg_model_load_kind(&fake_kind, tmpfile_path, NULL, NULL, "", &m, err, sizeof(err)), MG_OK);
    assert_string_equal(m->name, "");
    assert_string_equal(m->version, "");
    assert_int_equal(mg_model_warmup(m, 3, err, sizeof(err)), MG_OK);
    mg_model_unref(m);
}

static void load_errors(void **state)
{
    (void)state;
    char err[512];
    mg_model_t *m = (mg_model_t *)1;
    assert_int_equal(mg_model_load("xgboost", "/nonexistent/dir/model.json", "d", "1", NULL, &m,
                                   err, sizeof(err)),
                     MG_E_NOTFOUND);
    assert_null(m);
    assert_string_equal(err, "model file '/nonexistent/dir/model.json': No such file or directory");
    assert_int_equal(mg_model_load("linear", "/tmp", "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_string_equal(err, "model file '/tmp': not a regular file (a directory)");
    /* a FIFO held the loader (and the drain at SIGTERM) for ever, waiting for a writer;
     * /dev/zero kept it hashing for ever */
    char fifo[] = "/tmp/mg-test-fifo-XXXXXX";
    assert_non_null(mkdtemp(fifo));
    char fpath[64];
    snprintf(fpath, sizeof(fpath), "%s/model", fifo);
    assert_int_equal(mkfifo(fpath, 0600), 0);
    assert_int_equal(mg_model_load("linear", fpath, "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_non_null(strstr(err, "not a regular file (a FIFO)"));
    unlink(fpath);
    rmdir(fifo);
    /* a newline in a name wrote a raw line into the log and a label Prometheus cannot read */
    assert_int_equal(mg_model_load("linear", tmpfile_path, "a\nb", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_non_null(strstr(err, "': name: expected letters, digits, '.', '_' and '-', at most"));
    assert_int_equal(mg_model_load("linear", tmpfile_path, "d", "1 2", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_non_null(
        strstr(err, "': version: expected letters, digits, '.', '_' and '-' (and '+')"));
    assert_int_equal(mg_model_load("linear", "/dev/zero", "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_string_equal(err, "model file '/dev/zero': not a regular file (a character device)");
    assert_int_equal(mg_model_load("onnx", tmpfile_path, "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_NOTFOUND);
    assert_string_equal(err, "unknown model kind 'onnx'; valid: xgboost, linear, embedding, text");
    /* the kind's refusal is passed through, nothing leaks, nothing is freed twice */
    atomic_store(&fake_frees, 0);
    assert_int_equal(mg_model_load_kind(&fake_kind, tmpfile_path, "d", "1", "{\"fail\": true}", &m,
                                        err, sizeof(err)),
                     MG_E_CONFIG);
    assert_null(m);
    char want[512];
    snprintf(want, sizeof(want), "fake model '%s': refused as asked", tmpfile_path);
    assert_string_equal(err, want);
    assert_int_equal(atomic_load(&fake_frees), 0);
    /* options that are not a JSON object */
    assert_int_equal(
        mg_model_load_kind(&fake_kind, tmpfile_path, "d", "1", "[1]", &m, err, sizeof(err)),
        MG_E_CONFIG);
    assert_non_null(strstr(err, "load options: expected a JSON object, got a list"));
    assert_int_equal(
        mg_model_load_kind(&fake_kind, tmpfile_path, "d", "1", "{", &m, err, sizeof(err)),
        MG_E_CONFIG);
    assert_non_null(strstr(err, "load options: 1:"));
    /* a real kind given a file of another kind */
    assert_int_equal(mg_model_load("embedding", tmpfile_path, "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    assert_non_null(strstr(err, "too short to be an index"));
    assert_int_equal(mg_model_load("linear", tmpfile_path, "d", "1", NULL, &m, err, sizeof(err)),
                     MG_E_CONFIG);
    snprintf(want, sizeof(want), "linear model '%s':1:3: '[' or '{' expected near 'abc'",
             tmpfile_path);
    assert_non_null(strstr(err, want));
}

static void predict_checks_input(void **state)
{
    (void)state;
    char err[256];
    mg_model_t *m = NULL;
    assert_int_equal(
        mg_model_load_kind(&fake_kind, tmpfile_path, "d", "1", NULL, &m, err, sizeof(err)), MG_OK);
    const double x[3] = {1, 2, 3};
    mg_input_item_t item = {MG_DTYPE_F64, x, 3};
    mg_input_view_t v = {.n = 1, .items = &item};
    mg_outputs_t o;
    mg_outputs_init(&o);
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_E_PROTO);
    assert_string_equal(o.err, "input: expected 2 numbers, got 3");
    assert_int_equal(o.n, 0);
    item.len = 2;
    assert_int_equal(mg_model_predict(m, &v, NULL, NULL, &o), MG_OK);
    assert_string_equal(mg_output_json(&o, 0), "3");
    mg_outputs_clear(&o);
    mg_model_unref(m);
}

typedef struct worker {
    mg_model_t *m;
    int errors;
} worker_t;

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    const double x[2] = {1, 2};
    mg_input_item_t item = {MG_DTYPE_F64, x, 2};
    mg_input_view_t v = {.n = 1, .items = &item};
    mg_outputs_t o;
    mg_outputs_init(&o);
    for (int i = 0; i < 50; i++)
        if (mg_model_predict(w->m, &v, NULL, NULL, &o) != MG_OK ||
            strcmp(mg_output_json(&o, 0), "3") != 0)
            w->errors++;
    mg_outputs_clear(&o);
    mg_model_unref(w->m);
    return NULL;
}

/* A kind that is not thread-safe never runs two predicts at once; a thread-safe one does. */
static void unsafe_kinds_are_serialised(void **state)
{
    (void)state;
    const mg_model_kind_t *kinds[2] = {&unsafe_kind, &fake_kind};
    for (int k = 0; k < 2; k++) {
        char err[256];
        mg_model_t *m = NULL;
        assert_int_equal(
            mg_model_load_kind(kinds[k], tmpfile_path, "d", "1", NULL, &m, err, sizeof(err)),
            MG_OK);
        atomic_store(&fake_max_inflight, 0);
        pthread_t t[4];
        worker_t w[4];
        for (int i = 0; i < 4; i++) {
            w[i] = (worker_t){mg_model_ref(m), 0};
            assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
        }
        mg_model_unref(m); /* the workers hold the model now; the last one frees it */
        for (int i = 0; i < 4; i++) {
            pthread_join(t[i], NULL);
            assert_int_equal(w[i].errors, 0);
        }
        if (k == 0)
            assert_int_equal(atomic_load(&fake_max_inflight), 1);
        else
            assert_true(atomic_load(&fake_max_inflight) >= 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kind_registry),
        cmocka_unit_test(numbers_messages),
        cmocka_unit_test(numbers_parse_dense),
        cmocka_unit_test(strings_and_bytes),
        cmocka_unit_test(optional_input),
        cmocka_unit_test(check_merged_views),
        cmocka_unit_test(v2_json_tensors),
        cmocka_unit_test(v2_binary_tensors),
        cmocka_unit_test(outputs_and_scratch),
        cmocka_unit_test(input_matrix),
        cmocka_unit_test(load_hashes_and_refcounts),
        cmocka_unit_test(load_errors),
        cmocka_unit_test(predict_checks_input),
        cmocka_unit_test(unsafe_kinds_are_serialised),
    };
    return cmocka_run_group_tests(tests, with_abc_file, remove_abc_file);
}
