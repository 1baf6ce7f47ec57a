/*
 * tests/unit/test_arena_chunks.c - an arena's 4 KiB heap chunks go through the thread's block
 * cache (common/evmem.h): a cleared arena's chunk serves the next arena, poisoned in between
 * in the sanitizer build; a chunk opened for one large allocation is not kept.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/arena.h"
#include "common/asan.h"
#include "common/evmem.h"

#if MG_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* arenas are static: test_malloc aligns to 8 only, the arena needs 16 */
static mg_arena_t arenas[2];

/* Overflows |a|'s inline chunk: returns the first block of its heap chunk. */
static char *overflow(mg_arena_t *a)
{
    mg_arena_init(a, 1 << 20);
    assert_non_null(mg_arena_alloc(a, MG_ARENA_INLINE));
    char *p = mg_arena_alloc(a, 1000);
    assert_non_null(p);
    memset(p, 0x5a, 1000);
    return p;
}

/* A cleared arena's chunk serves the next arena's overflow: no malloc in between. */
static void chunk_goes_to_the_next_arena(void **state)
{
    (void)state;
    mg_evmem_flush();
    char *p = overflow(&arenas[0]);
    assert_int_equal(mg_evmem_cached(), 0);
    mg_arena_clear(&arenas[0]);
    assert_int_equal(mg_evmem_cached(), 1);
#if MG_ASAN
    assert_true(__asan_address_is_poisoned(p)); /* a use after the clear is reported */
#endif
    char *q = overflow(&arenas[1]);
    assert_ptr_equal(q, p); /* the very chunk */
    assert_int_equal(mg_evmem_cached(), 0);
    /* the whole chunk is usable again: 4 KiB less its header, from its start */
    assert_non_null(mg_arena_alloc(&arenas[1], 4096 - 16 - 1000));
    memset(q, 1, 1000);
    mg_arena_clear(&arenas[1]);
    mg_evmem_flush();
}

/* A chunk opened for one large allocation goes back to malloc: the cache keeps 4 KiB ones. */
static void large_chunks_are_not_kept(void **state)
{
    (void)state;
    mg_evmem_flush();
    mg_arena_t *a = &arenas[0];
    mg_arena_init(a, 1 << 20);
    char *big = mg_arena_alloc(a, 100000);
    assert_non_null(big);
    memset(big, 2, 100000);
    mg_arena_clear(a);
    assert_int_equal(mg_evmem_cached(), 0);
}

int main(void)
{
    mg_evmem_install(); /* as the gateway's and the runtime's main() do */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chunk_goes_to_the_next_arena),
        cmocka_unit_test(large_chunks_are_not_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
