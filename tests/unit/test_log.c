/*
 * tests/unit/test_log.c - level names, the limiters (one line a second, one every few seconds,
 * once per cause) and the line format.
 *
 * The limiter counts whole seconds of CLOCK_MONOTONIC, so the tests start right after a second
 * begins: the calls that must be suppressed then all fall inside one second. mg_log_emit is
 * checked by pointing stderr at a pipe for the duration of one call.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "capture.h"
#include "common/log.h"

static long long mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* Returns once a new CLOCK_MONOTONIC second has just begun. */
static void wait_next_second(void)
{
    long long s = mono_s();
    while (mono_s() == s) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

static void level_parse(void **state)
{
    (void)state;
    assert_int_equal(mg_log_level_parse("debug"), MG_LOG_DEBUG);
    assert_int_equal(mg_log_level_parse("info"), MG_LOG_INFO);
    assert_int_equal(mg_log_level_parse("warn"), MG_LOG_WARN);
    assert_int_equal(mg_log_level_parse("error"), MG_LOG_ERROR);
    assert_int_equal(mg_log_level_parse(""), -1);
    assert_int_equal(mg_log_level_parse("DEBUG"), -1); /* names are exact, as in the config */
    assert_int_equal(mg_log_level_parse("warning"), -1);
    assert_int_equal(mg_log_level_parse("err"), -1);
    assert_int_equal(mg_log_level_parse("info "), -1);
    assert_int_equal(mg_log_level_parse("fatal"), -1);
}

/* A zeroed limiter lets the first line through with nothing suppressed. */
static void limit_first_passes(void **state)
{
    (void)state;
    mg_log_limit_t l = {0};
    unsigned long sup = 12345;
    assert_true(mg_log_limit_pass(&l, &sup));
    assert_int_equal(sup, 0);
}

/* Within one second only the first call passes; the next second's first call reports how
 * many were skipped, and the count starts again from zero. */
static void limit_counts_suppressed(void **state)
{
    (void)state;
    mg_log_limit_t l = {0};
    unsigned long sup = 99;
    wait_next_second();
    long long start = mono_s();
    assert_true(mg_log_limit_pass(&l, &sup));
    assert_int_equal(sup, 0);
    for (int i = 0; i < 5; i++) {
        sup = 99;
        assert_false(mg_log_limit_pass(&l, &sup));
        assert_int_equal(sup, 99); /* untouched when the line is suppressed */
    }
    assert_int_equal(mono_s(), start); /* else the calls above were not in one second */

    wait_next_second();
    assert_true(mg_log_limit_pass(&l, &sup));
    assert_int_equal(sup, 5);
    assert_false(mg_log_limit_pass(&l, &sup));
    wait_next_second();
    assert_true(mg_log_limit_pass(&l, &sup));
    assert_int_equal(sup, 1);
}

/* Two limiters are independent (one per worker object). */
static void limits_are_independent(void **state)
{
    (void)state;
    mg_log_limit_t a = {0}, b = {0};
    unsigned long sup;
    wait_next_second();
    assert_true(mg_log_limit_pass(&a, &sup));
    assert_false(mg_log_limit_pass(&a, &sup));
    assert_true(mg_log_limit_pass(&b, &sup));
    assert_int_equal(sup, 0);
}

/* A limiter with a period of 2 s: one line, then nothing for the rest of that second and the
 * next; the line after reports all that were skipped. */
static void limit_every_period(void **state)
{
    (void)state;
    mg_log_limit_t l = {0};
    unsigned long sup = 99;
    wait_next_second();
    assert_true(mg_log_limit_every(&l, 2, &sup));
    assert_int_equal(sup, 0);
    assert_false(mg_log_limit_every(&l, 2, &sup));
    wait_next_second();
    assert_false(mg_log_limit_every(&l, 2, &sup)); /* one second later: still inside */
    assert_false(mg_log_limit_every(&l, 2, &sup));
    wait_next_second();
    assert_true(mg_log_limit_every(&l, 2, &sup));
    assert_int_equal(sup, 3);
}

/* One line per cause: a repeat of the cause last logged is skipped (and counted) within the
 * period, a new cause passes at once, and so does the old one coming back after it. */
static void cause_once_per_cause(void **state)
{
    (void)state;
    mg_log_cause_t l = {0};
    unsigned long rep = 99;
    wait_next_second();
    assert_true(mg_log_cause_pass(&l, "AUTH refused (WRONGPASS)", 60, &rep));
    assert_int_equal(rep, 0);
    for (int i = 0; i < 3; i++)
        assert_false(mg_log_cause_pass(&l, "AUTH refused (WRONGPASS)", 60, &rep));
    assert_true(mg_log_cause_pass(&l, "cannot connect (refused)", 60, &rep));
    assert_int_equal(rep, 0);
    assert_false(mg_log_cause_pass(&l, "cannot connect (refused)", 60, &rep));
    assert_true(mg_log_cause_pass(&l, "AUTH refused (WRONGPASS)", 60, &rep));
    assert_int_equal(rep, 0);
}

/* The same cause passes again once its period is over, with the count of its repeats; after
 * a reset it passes at once. Causes differing after their 127th byte are one cause. */
static void cause_period_and_reset(void **state)
{
    (void)state;
    mg_log_cause_t l = {0};
    unsigned long rep = 99;
    char a[300], b[300];
    memset(a, 'c', sizeof(a) - 1);
    a[sizeof(a) - 1] = '\0';
    memcpy(b, a, sizeof(b));
    b[200] = 'd';
    wait_next_second();
    assert_true(mg_log_cause_pass(&l, a, 1, &rep));
    assert_false(mg_log_cause_pass(&l, b, 1, &rep));
    assert_false(mg_log_cause_pass(&l, a, 1, &rep));
    wait_next_second();
    assert_true(mg_log_cause_pass(&l, a, 1, &rep));
    assert_int_equal(rep, 2);
    mg_log_cause_reset(&l);
    assert_true(mg_log_cause_pass(&l, a, 1, &rep));
    assert_int_equal(rep, 0);
}

static void emit_short(void)
{
    MG_LOG(MG_LOG_WARN, "health", "backend '%s' ejected after %u failed checks", "models-a", 3u);
}

static void emit_long(void)
{
    static char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    MG_LOG(MG_LOG_ERROR, "test", "%s", big);
}

static void emit_filtered(void)
{
    MG_LOG(MG_LOG_DEBUG, "test", "not written at level info");
}

/* "2024-01-02T03:04:05.678Z warn health: message\n", written as one line. */
static void emit_format(void **state)
{
    (void)state;
    char out[8192];
    mg_log_level = MG_LOG_INFO;
    size_t len = mg_test_capture_stderr(emit_short, out, sizeof(out));
    const char *want = " warn health: backend 'models-a' ejected after 3 failed checks\n";
    assert_true(len == 24 + strlen(want));
    assert_string_equal(out + 24, want);
    assert_int_equal(out[4], '-');
    assert_int_equal(out[10], 'T');
    assert_int_equal(out[19], '.');
    assert_int_equal(out[23], 'Z');
}

/* A long message is cut, still one line ending in a newline, within the 2 KiB buffer. */
static void emit_truncates(void **state)
{
    (void)state;
    char out[8192];
    mg_log_level = MG_LOG_INFO;
    size_t len = mg_test_capture_stderr(emit_long, out, sizeof(out));
    assert_true(len > 1000 && len <= 2047);
    assert_int_equal(out[len - 1], '\n');
    assert_ptr_equal(strchr(out, '\n'), out + len - 1);
    assert_non_null(strstr(out, " error test: xxxx"));
}

static void level_filters(void **state)
{
    (void)state;
    char out[256];
    mg_log_level = MG_LOG_INFO;
    assert_int_equal(mg_test_capture_stderr(emit_filtered, out, sizeof(out)), 0);
    mg_log_level = MG_LOG_DEBUG;
    assert_true(mg_test_capture_stderr(emit_filtered, out, sizeof(out)) > 0);
    assert_non_null(strstr(out, " debug test: not written at level info\n"));
    mg_log_level = MG_LOG_ERROR;
    assert_int_equal(mg_test_capture_stderr(emit_short, out, sizeof(out)), 0);
    mg_log_level = MG_LOG_INFO;
}

static void repeats_suffix(void **state)
{
    (void)state;
    char b[64];
    assert_string_equal(mg_log_repeats(b, sizeof(b), 0), "");
    assert_string_equal(mg_log_repeats(b, sizeof(b), 3), " (3 more since the last line)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(level_parse),
        cmocka_unit_test(limit_first_passes),
        cmocka_unit_test(limit_counts_suppressed),
        cmocka_unit_test(limits_are_independent),
        cmocka_unit_test(limit_every_period),
        cmocka_unit_test(cause_once_per_cause),
        cmocka_unit_test(cause_period_and_reset),
        cmocka_unit_test(emit_format),
        cmocka_unit_test(emit_truncates),
        cmocka_unit_test(level_filters),
        cmocka_unit_test(repeats_suffix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
