/*
 * tests/unit/test_arena.c - the per-stream bump allocator: its cap, alignment, copies, reuse
 * after mg_arena_clear and allocations larger than a chunk. Run under ASan (Sanitize build),
 * every byte handed out is also written, so an allocation shorter than asked shows up there.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/arena.h"

static mg_arena_t arena; /* static: test_malloc aligns to 8 only, the arena needs 16 */

static int setup(void **state)
{
    mg_arena_init(&arena, 1 << 20);
    *state = &arena;
    return 0;
}

static int teardown(void **state)
{
    mg_arena_clear(*state);
    return 0;
}

/* Allocations succeed up to the limit, exactly, then fail; a failure changes nothing. */
static void limit_is_honoured(void **state)
{
    (void)state;
    mg_arena_t a;
    mg_arena_init(&a, 100);
    for (int i = 0; i < 12; i++) /* 12 * 8 = 96 */
        assert_non_null(mg_arena_alloc(&a, 8));
    assert_null(mg_arena_alloc(&a, 8));
    assert_null(mg_arena_alloc(&a, 1)); /* rounded up to 8: 104 > 100 */
    assert_non_null(mg_arena_alloc(&a, 0));
    mg_arena_clear(&a);

    mg_arena_init(&a, 64);
    assert_non_null(mg_arena_alloc(&a, 64));
    assert_null(mg_arena_alloc(&a, 1));
    mg_arena_clear(&a);

    mg_arena_init(&a, 0);
    assert_null(mg_arena_alloc(&a, 1));
    assert_null(mg_arena_strndup(&a, "", 0)); /* the NUL needs a byte too */
    mg_arena_clear(&a);
}

/* The limit spans heap chunks: the sum handed out never exceeds it. */
static void limit_spans_chunks(void **state)
{
    (void)state;
    mg_arena_t a;
    size_t limit = 100000, total = 0;
    mg_arena_init(&a, limit);
    for (;;) {
        char *p = mg_arena_alloc(&a, 1000);
        if (p == NULL)
            break;
        memset(p, 0xab, 1000);
        total += 1000;
    }
    assert_int_equal(total, 100000); /* 1000 is a multiple of 8: nothing lost to rounding */
    assert_null(mg_arena_alloc(&a, 1));
    mg_arena_clear(&a);

    mg_arena_init(&a, 5000);
    assert_non_null(mg_arena_alloc(&a, 3000));
    assert_null(mg_arena_alloc(&a, 3000)); /* a new chunk would fit the heap, not the limit */
    assert_non_null(mg_arena_alloc(&a, 2000));
    mg_arena_clear(&a);
}

static void alignment(void **state)
{
    mg_arena_t *a = *state;
    for (size_t size = 0; size < 64; size++) {
        char *p = mg_arena_alloc(a, size);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 8, 0);
        memset(p, 0x5a, size);
    }
    for (size_t size = 4000; size < 4200; size += 13) { /* each may open a heap chunk */
        char *p = mg_arena_alloc(a, size);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 8, 0);
        memset(p, 0x5a, size);
    }
    /* after a clear, the inline chunk starts aligned for anything */
    mg_arena_clear(a);
    void *p = mg_arena_alloc(a, 24);
    assert_int_equal((uintptr_t)p % 16, 0);
}

/* Blocks never overlap: each keeps the pattern written into it. */
static void blocks_do_not_overlap(void **state)
{
    mg_arena_t *a = *state;
    enum { N = 400 };
    unsigned char *p[N];
    size_t len[N];
    for (int i = 0; i < N; i++) {
        len[i] = (size_t)(i * 37) % 700 + 1;
        p[i] = mg_arena_alloc(a, len[i]);
        assert_non_null(p[i]);
        memset(p[i], i & 0xff, len[i]);
    }
    for (int i = 0; i < N; i++)
        for (size_t k = 0; k < len[i]; k++)
            assert_int_equal(p[i][k], i & 0xff);
}

static void strndup_copies(void **state)
{
    mg_arena_t *a = *state;
    const char src[] = "content-type: text/plain";
    char *s = mg_arena_strndup(a, src, 12);
    assert_non_null(s);
    assert_string_equal(s, "content-type");
    assert_ptr_not_equal(s, src);

    char *e = mg_arena_strndup(a, "abc", 0);
    assert_non_null(e);
    assert_string_equal(e, "");

    /* not NUL-terminated input, and an embedded NUL: exactly |len| bytes are copied */
    const char bin[4] = {'x', '\0', 'y', 'z'};
    char *b = mg_arena_strndup(a, bin, 4);
    assert_memory_equal(b, bin, 4);
    assert_int_equal(b[4], '\0');

    /* a copy that would pass the limit fails cleanly and the arena stays usable */
    mg_arena_t small;
    mg_arena_init(&small, 16);
    assert_null(mg_arena_strndup(&small, "0123456789abcdef", 16)); /* 17 bytes */
    assert_string_equal(mg_arena_strndup(&small, "0123456789abcde", 15), "0123456789abcde");
    mg_arena_clear(&small);
}

/* mg_arena_clear frees the heap chunks and gives the whole limit back. */
static void reuse_after_clear(void **state)
{
    (void)state;
    mg_arena_t a;
    mg_arena_init(&a, 10000);
    void *first = mg_arena_alloc(&a, 16);
    for (int round = 0; round < 3; round++) {
        size_t got = 16;
        while (mg_arena_alloc(&a, 496) != NULL)
            got += 496;
        assert_true(got > 10000 - 496 && got <= 10000);
        mg_arena_clear(&a);
        void *again = mg_arena_alloc(&a, 16);
        assert_ptr_equal(again, first); /* the inline chunk again */
    }
    mg_arena_clear(&a);
    mg_arena_clear(&a); /* twice is harmless */
    assert_non_null(mg_arena_alloc(&a, 10000));
    mg_arena_clear(&a);
}

/* Larger than the inline chunk and than a heap chunk: one chunk of its own, fully usable,
 * and smaller allocations keep working around it. */
static void large_allocations(void **state)
{
    mg_arena_t *a = *state;
    char *small1 = mg_arena_alloc(a, 100);
    char *big = mg_arena_alloc(a, 300000);
    assert_non_null(big);
    memset(big, 1, 300000);
    char *small2 = mg_arena_alloc(a, 100);
    assert_non_null(small1);
    assert_non_null(small2);
    memset(small2, 2, 100);
    char *inl = mg_arena_alloc(a, MG_ARENA_INLINE);
    assert_non_null(inl);
    memset(inl, 3, MG_ARENA_INLINE);
    assert_int_equal(big[0], 1);
    assert_int_equal(big[299999], 1);

    /* the rest of the limit in one piece, then nothing */
    size_t used = 104 + 300000 + 104 + MG_ARENA_INLINE;
    char *rest = mg_arena_alloc(a, (1 << 20) - used);
    assert_non_null(rest);
    memset(rest, 4, (1 << 20) - used);
    assert_null(mg_arena_alloc(a, 1));
}

/* A typical request: 30 header copies stay within the inline chunk (no heap). */
static void headers_fit_inline(void **state)
{
    mg_arena_t *a = *state;
    char *lo = NULL, *hi = NULL;
    for (int i = 0; i < 30; i++) {
        char *p = mg_arena_strndup(a, "x-request-header: value", 23);
        assert_non_null(p);
        if (lo == NULL || p < lo)
            lo = p;
        if (hi == NULL || p > hi)
            hi = p;
    }
    assert_true(hi - lo < MG_ARENA_INLINE); /* one contiguous chunk */
}

/* Sizes near SIZE_MAX must fail, not wrap to a tiny block (regression). */
static void huge_sizes_fail(void **state)
{
    mg_arena_t a;
    (void)state;
    mg_arena_init(&a, SIZE_MAX);
    assert_null(mg_arena_alloc(&a, SIZE_MAX));
    assert_null(mg_arena_alloc(&a, SIZE_MAX - 3));
    assert_non_null(mg_arena_alloc(&a, 16));
    mg_arena_clear(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(limit_is_honoured),
        cmocka_unit_test(limit_spans_chunks),
        cmocka_unit_test_setup_teardown(alignment, setup, teardown),
        cmocka_unit_test_setup_teardown(blocks_do_not_overlap, setup, teardown),
        cmocka_unit_test_setup_teardown(strndup_copies, setup, teardown),
        cmocka_unit_test(reuse_after_clear),
        cmocka_unit_test_setup_teardown(large_allocations, setup, teardown),
        cmocka_unit_test_setup_teardown(headers_fit_inline, setup, teardown),
        cmocka_unit_test(huge_sizes_fail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
