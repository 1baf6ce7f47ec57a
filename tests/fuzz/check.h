/*
 * tests/fuzz/check.h - the fuzz targets' invariant check: a failed one aborts, which libFuzzer
 * reports as a crash with the input that caused it.
 */
#ifndef MG_TESTS_FUZZ_CHECK_H
#define MG_TESTS_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
