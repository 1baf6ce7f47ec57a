/*
 * tests/unit/capture.h - runs a function with stderr pointed at a pipe and returns what it
 * wrote, so that tests can check what the gateway logs (test_log.c, test_reqlog.c).
 */
#ifndef MG_TESTS_CAPTURE_H
#define MG_TESTS_CAPTURE_H

#include <stdio.h>
#include <unistd.h>

/* Runs |fn| with stderr pointed at a pipe; returns what it wrote (NUL-terminated). |fn| must
 * write less than a pipe holds (64 KiB) or it blocks. */
static inline size_t mg_test_capture_stderr(void (*fn)(void), char *out, size_t cap)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(p[1], STDERR_FILENO) >= 0);
    fn();
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    close(p[1]);
    size_t len = 0;
    ssize_t n;
    while (len + 1 < cap && (n = read(p[0], out + len, cap - 1 - len)) > 0)
        len += (size_t)n;
    close(p[0]);
    out[len] = '\0';
    return len;
}

#endif /* MG_TESTS_CAPTURE_H */
