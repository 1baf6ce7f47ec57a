/*
 * tests/unit/test_api.c - the runtime's answers, formatted as the HTTP layer sends them.
 *
 * Includes backends/runtime/api.c to reach its static formatting and parsing helpers (STYLE 8).
 * The end-to-end suite (tests/e2e/test_runtime.py) drives the same code over real sockets; these
 * cases cover what a real model cannot be made to do on demand, such as failing at predict time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backends/runtime/api.c"

static mg_model_t model = {.name = "digits", .version = "1"};

static void req_init(rt_req_t *r)
{
    memset(r, 0, sizeof(*r));
}

/* A model that fails at predict time answers 500 with the model's message; nothing else. */
static void model_failure_is_500(void **state)
{
    (void)state;
    rt_req_t r;
    req_init(&r);
    mg_outputs_t out;
    mg_outputs_init(&out);
    snprintf(out.err, sizeof(out.err), "xgboost: prediction failed: out of luck");
    mg_input_item_t it = {.dtype = MG_DTYPE_F64, .len = 0};
    mg_job_t job = {.model = &model, .view = {.n = 1, .items = &it}, .ctx = &r};
    finish_v1(&job, MG_E_IO, &out, 0);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(r.resp, "\"code\":\"model_error\""));
    assert_non_null(strstr(r.resp, "xgboost: prediction failed: out of luck"));
    finish_v2(&job, MG_E_IO, &out, 0);
    assert_int_equal(r.status, 500);
    mg_outputs_clear(&out);
    free(r.resp);
}

static void single_and_batch_answers(void **state)
{
    (void)state;
    rt_req_t r;
    req_init(&r);
    mg_outputs_t out;
    mg_outputs_init(&out);
    assert_int_equal(mg_out_begin(&out, 2), MG_OK);
    mg_out_printf(&out, "7");
    mg_out_end(&out, 0, 0.5);
    mg_out_printf(&out, "3");
    mg_out_end(&out, 1, 0.25);
    mg_input_item_t items[2] = {{.dtype = MG_DTYPE_F64}, {.dtype = MG_DTYPE_F64}};
    mg_job_t one = {.model = &model, .view = {.n = 1, .items = items}, .ctx = &r};
    finish_v1(&one, MG_OK, &out, 1); /* its item is the second of the merged batch */
    assert_int_equal(r.status, 200);
    assert_string_equal(r.resp,
                        "{\"output\":3,\"score\":0.25,\"model\":{\"name\":\"digits\",\"version\":\"1\"}}\n");
    mg_job_t both = {.model = &model, .view = {.n = 2, .items = items, .batch = true}, .ctx = &r};
    finish_v1(&both, MG_OK, &out, 0);
    assert_string_equal(r.resp, "{\"outputs\":[{\"output\":7,\"score\":0.5},{\"output\":3,"
                                "\"score\":0.25}],\"model\":{\"name\":\"digits\",\"version\":\"1\"}}\n");
    mg_outputs_clear(&out);
    free(r.resp);
}

/* An item refused inside a merged batch is named by its index in the client's own request. */
static void refused_item_keeps_client_index(void **state)
{
    (void)state;
    rt_req_t r;
    req_init(&r);
    mg_outputs_t out;
    mg_outputs_init(&out);
    mg_input_item_t items[3] = {{.dtype = MG_DTYPE_F64}, {.dtype = MG_DTYPE_F64},
                                {.dtype = MG_DTYPE_F64}};
    mg_input_view_t merged = {.n = 3, .items = items, .batch = true};
    assert_int_equal(mg_out_begin(&out, 3), MG_OK);
    mg_out_printf(&out, "1");
    mg_out_end(&out, 0, 1);
    mg_out_printf(&out, "2");
    mg_out_end(&out, 1, 1);
    mg_out_fail(&out, &merged, 2, "expected a user vector");
    mg_job_t job = {.model = &model, .view = {.n = 1, .items = items + 2}, .ctx = &r};
    finish_v1(&job, MG_OK, &out, 2);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.resp, "\"message\":\"input: expected a user vector\""));
    mg_outputs_clear(&out);
    free(r.resp);
}

/* Text from elsewhere that is not UTF-8 still makes valid JSON. */
static void strings_are_valid_json(void **state)
{
    (void)state;
    rt_req_t r;
    req_init(&r);
    out_jstr(&r, "bad \x98\xfe byte, \"quote\", tab\t, é");
    assert_string_equal(r.resp, "\"bad \\ufffd\\ufffd byte, \\\"quote\\\", tab\\u0009, é\"");
    free(r.resp);
}

static void paths(void **state)
{
    (void)state;
    char name[128], ver[128];
    assert_int_equal(classify("/v1/predict", name, sizeof(name), ver, sizeof(ver)), PK_PREDICT);
    assert_int_equal(classify("/v2/models/digits/infer", name, sizeof(name), ver, sizeof(ver)),
                     PK_INFER);
    assert_string_equal(name, "digits");
    assert_string_equal(ver, "");
    assert_int_equal(
        classify("/v2/models/digits/versions/2/ready", name, sizeof(name), ver, sizeof(ver)),
        PK_MODEL_READY);
    assert_string_equal(ver, "2");
    assert_int_equal(classify("/v2/models/digits", name, sizeof(name), ver, sizeof(ver)),
                     PK_MODEL_META);
    assert_int_equal(classify("/v2/models//infer", name, sizeof(name), ver, sizeof(ver)),
                     PK_UNKNOWN);
    assert_int_equal(classify("/nope", name, sizeof(name), ver, sizeof(ver)), PK_UNKNOWN);
}

/* The numeric fast path takes only JSON numbers and only the one body shape. */
static void fast_path_shapes(void **state)
{
    (void)state;
    mg_rt_t rt = {.conf = {.max_body = 4096}};
    rt_req_t r;
    req_init(&r);
    r.rt = &rt;
    assert_int_equal(fast_numbers(&r, " {\"input\" : [1, -2.5, 3e2, 0, 0.125] } "), 5);
    assert_true(r.fast[2] == 300.0 && r.fast[1] == -2.5);
    assert_int_equal(fast_numbers(&r, "{\"input\": [01]}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": [1.]}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": [.5]}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": [1e]}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": [inf]}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": [1e999]}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": []}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": [1], \"option\": {}}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"inputs\": [[1]]}"), -1);
    assert_int_equal(fast_numbers(&r, "{\"input\": [1]} x"), -1);
    free(r.fast);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(model_failure_is_500),
        cmocka_unit_test(single_and_batch_answers),
        cmocka_unit_test(refused_item_keeps_client_index),
        cmocka_unit_test(strings_are_valid_json),
        cmocka_unit_test(paths),
        cmocka_unit_test(fast_path_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
