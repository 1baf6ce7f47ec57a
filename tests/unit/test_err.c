#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "common/err.h"

/* Every code has a message and a status: a new code without them fails here. */
static void every_code_has_message_and_status(void **state)
{
    (void)state;
    for (int e = MG_OK; e >= MG_E_NOTFOUND; e--) {
        assert_string_not_equal(mg_strerror((mg_err_t)e), "unknown error");
        int st = mg_err_http_status((mg_err_t)e);
        assert_true(st >= 200 && st <= 599);
    }
    assert_string_equal(mg_strerror((mg_err_t)-1000), "unknown error");
    assert_int_equal(mg_err_http_status(MG_E_TIMEOUT), 504);
    assert_int_equal(mg_err_http_status(MG_E_UPSTREAM), 502);
    assert_int_equal(mg_err_http_status(MG_E_NOTFOUND), 404);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_code_has_message_and_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
