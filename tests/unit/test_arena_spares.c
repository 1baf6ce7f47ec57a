/*
 * tests/unit/test_arena_spares.c - the heap chunks a thread keeps for its next arena: reused,
 * bounded, only of the standard size, and freed when the thread exits. In the sanitizer
 * build a kept chunk is poisoned, and LeakSanitizer sees a thread's spares left behind.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/arena.h"
#include "common/asan.h"

#if MG_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#endif

/* arenas are static: test_malloc aligns to 8 only, the arena needs 16 */
static mg_arena_t arenas[MG_ARENA_SPARES + 8];

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

static void drain(void)
{
    mg_arena_flush_spares();
    assert_int_equal(mg_arena_spares(), 0);
}

/* A cleared arena's chunk serves the next arena's overflow: no malloc in between. */
static void chunk_goes_to_the_next_arena(void **state)
{
    (void)state;
    drain();
    char *p = overflow(&arenas[0]);
    assert_int_equal(mg_arena_spares(), 0);
    mg_arena_clear(&arenas[0]);
    assert_int_equal(mg_arena_spares(), 1);
#if MG_ASAN
    assert_true(__asan_address_is_poisoned(p)); /* a use after the clear is reported */
#endif

    char *q = overflow(&arenas[1]);
    assert_ptr_equal(q, p); /* the very chunk */
    assert_int_equal(mg_arena_spares(), 0);
    /* the whole chunk is usable again: 4096 bytes from its start */
    assert_non_null(mg_arena_alloc(&arenas[1], 4096 - 1000));
    memset(q, 1, 1000);
    mg_arena_clear(&arenas[1]);
}

/* A thread keeps at most MG_ARENA_SPARES chunks; the rest are freed. A flush frees them all. */
static void spares_are_bounded(void **state)
{
    (void)state;
    drain();
    size_t n = sizeof(arenas) / sizeof(arenas[0]);
    for (size_t i = 0; i < n; i++)
        overflow(&arenas[i]);
    for (size_t i = 0; i < n; i++)
        mg_arena_clear(&arenas[i]);
    assert_int_equal(mg_arena_spares(), MG_ARENA_SPARES);
    mg_arena_flush_spares();
    assert_int_equal(mg_arena_spares(), 0);
}

/* A chunk opened for one large allocation is freed, not kept: spares are all 4 KiB. */
static void large_chunks_are_not_kept(void **state)
{
    (void)state;
    drain(); /* so that the bound cannot be what refuses it */
    mg_arena_t *a = &arenas[0];
    mg_arena_init(a, 1 << 20);
    char *big = mg_arena_alloc(a, 100000);
    assert_non_null(big);
    memset(big, 2, 100000);
    mg_arena_clear(a);
    assert_int_equal(mg_arena_spares(), 0);
}

static void *fill_spares(void *arg)
{
    (void)arg;
    static _Thread_local mg_arena_t a[4];
    for (int i = 0; i < 4; i++)
        overflow(&a[i]);
    for (int i = 0; i < 4; i++)
        mg_arena_clear(&a[i]);
    return (void *)(uintptr_t)mg_arena_spares();
}

/* A thread's spares are freed when it exits (LeakSanitizer finds them otherwise). */
static void spares_die_with_their_thread(void **state)
{
    (void)state;
    pthread_t t;
    void *kept = NULL;
    assert_int_equal(pthread_create(&t, NULL, fill_spares, NULL), 0);
    assert_int_equal(pthread_join(t, &kept), 0);
    assert_int_equal((uintptr_t)kept, 4); /* its own list, not this thread's */
#if MG_ASAN
    assert_int_equal(__lsan_do_recoverable_leak_check(), 0);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chunk_goes_to_the_next_arena),
        cmocka_unit_test(spares_are_bounded),
        cmocka_unit_test(large_chunks_are_not_kept),
        cmocka_unit_test(spares_die_with_their_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
