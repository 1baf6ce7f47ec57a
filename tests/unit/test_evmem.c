/* tests/unit/test_evmem.c - libevent's chains from the per-thread cache (common/evmem.c; under
 * ASan too, where cached blocks are poisoned). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <pthread.h>
#include <string.h>

#include "common/evmem.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ASAN_BUILD 1
#endif

static const char body[] = "{\"inputs\":[[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0]]}";

/* What a request body does to its stream's buffer: one small add, then drained by the reader.
 * The chain goes to the cache and the next request's add takes it back. */
static void drained_chain_is_reused(void **state)
{
    (void)state;
    mg_evmem_flush();
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    assert_int_equal(evbuffer_add(b, body, sizeof(body)), 0);
    assert_int_equal(mg_evmem_cached(), 0);
    struct evbuffer_iovec v;
    assert_int_equal(evbuffer_peek(b, -1, NULL, &v, 1), 1);
    const char *data = v.iov_base; /* inside the chain's block */
    (void)data;
    char out[sizeof(body)];
    assert_int_equal(evbuffer_remove(b, out, sizeof(out)), (int)sizeof(body));
    assert_memory_equal(out, body, sizeof(body));
    assert_int_equal(mg_evmem_cached(), 1); /* the emptied chain */
#ifdef ASAN_BUILD
    /* a cached chain is poisoned: a use after libevent freed it is still caught */
    assert_true(__asan_address_is_poisoned(data));
#endif
    assert_int_equal(evbuffer_add(b, body, sizeof(body)), 0);
    assert_int_equal(mg_evmem_cached(), 0); /* ... taken again */
    assert_int_equal(evbuffer_remove(b, out, sizeof(out)), (int)sizeof(body));
    assert_memory_equal(out, body, sizeof(body));
    evbuffer_free(b); /* the evbuffer itself is smaller than a chain: not cached */
    assert_int_equal(mg_evmem_cached(), 1);
    mg_evmem_flush();
    assert_int_equal(mg_evmem_cached(), 0);
}

/* Hundreds of streams in flight free hundreds of chains at once: the cache keeps MG_EVMEM_CACHE
 * and frees the rest. */
static void cache_is_bounded(void **state)
{
    (void)state;
    enum { N = MG_EVMEM_CACHE + 100 };
    static struct evbuffer *b[N];
    mg_evmem_flush();
    for (int i = 0; i < N; i++) {
        b[i] = evbuffer_new();
        assert_non_null(b[i]);
        assert_int_equal(evbuffer_add(b[i], body, sizeof(body)), 0);
    }
    for (int i = 0; i < N; i++)
        evbuffer_free(b[i]);
    assert_int_equal(mg_evmem_cached(), MG_EVMEM_CACHE);
    mg_evmem_flush();
}

/* libevent's allocator as libevent calls it: exported by Debian's libevent_core, though not in
 * its headers; a libevent built without memory-function replacement lacks them and this test
 * does not link, which says at once that common/evmem.c cannot work there either. */
void *event_mm_malloc_(size_t sz);
void event_mm_free_(void *p);

/* Only libevent's exact chain size is served from the cache: a smaller object (a bufferevent,
 * ~600 bytes) would hold a whole 1 KiB block for as long as its idle connection lives. */
static void only_chains_come_from_the_cache(void **state)
{
    (void)state;
    mg_evmem_flush();
    void *chain = event_mm_malloc_(1024);
    assert_non_null(chain);
    event_mm_free_(chain);
    assert_int_equal(mg_evmem_cached(), 1);
    void *smaller[3];
    const size_t sizes[3] = {600, 1000, 1023};
    for (int i = 0; i < 3; i++) {
        smaller[i] = event_mm_malloc_(sizes[i]);
        assert_non_null(smaller[i]);
        assert_ptr_not_equal(smaller[i], chain);
        assert_int_equal(mg_evmem_cached(), 1); /* still there */
        memset(smaller[i], 0, sizes[i]);
    }
    void *again = event_mm_malloc_(1024);
    assert_ptr_equal(again, chain); /* the chain's own size takes it */
    assert_int_equal(mg_evmem_cached(), 0);
    memset(again, 0, 1024); /* unpoisoned again under ASan */
    event_mm_free_(again);
    for (int i = 0; i < 3; i++)
        event_mm_free_(smaller[i]);
    mg_evmem_flush();
}

/* libevent's larger chains (the TLS filter's 4 and 8 KiB, the 64 KiB a read goes into) come
 * back from the cache too, each size up to 256 KiB of blocks; larger ones are malloc's. */
static void larger_chains_are_reused_and_bounded(void **state)
{
    (void)state;
    mg_evmem_flush();
    for (size_t size = 2048; size <= 65536; size *= 2) {
        void *chain = event_mm_malloc_(size);
        assert_non_null(chain);
        event_mm_free_(chain);
        assert_int_equal(mg_evmem_cached(), 1);
        void *again = event_mm_malloc_(size);
        assert_ptr_equal(again, chain); /* the same block */
        assert_int_equal(mg_evmem_cached(), 0);
        memset(again, 0, size); /* unpoisoned again under ASan */
        event_mm_free_(again);
        mg_evmem_flush();
    }
    enum { N = 40 }; /* 8 KiB blocks: 32 make 256 KiB */
    void *c[N];
    for (int i = 0; i < N; i++)
        assert_non_null(c[i] = event_mm_malloc_(8192));
    for (int i = 0; i < N; i++)
        event_mm_free_(c[i]);
    assert_int_equal(mg_evmem_cached(), 32);
    void *huge = event_mm_malloc_(131072);
    assert_non_null(huge);
    event_mm_free_(huge);
    assert_int_equal(mg_evmem_cached(), 32); /* 128 KiB: not cached */
    static char big[8000];
    memset(big, 'x', sizeof(big));
    struct evbuffer *large = evbuffer_new();
    assert_int_equal(evbuffer_add(large, big, sizeof(big)), 0);
    assert_int_equal(mg_evmem_cached(), 31); /* an 8 KiB chain, from the cache */
    evbuffer_free(large);
    mg_evmem_flush();
    assert_int_equal(mg_evmem_cached(), 0);
}

static void *thread_main(void *arg)
{
    size_t *seen = arg;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, sizeof(body));
    evbuffer_free(b);
    *seen = mg_evmem_cached();
    return NULL; /* its cached chain is freed at exit (ASan's leak check would say otherwise) */
}

/* Each thread has its own cache: a chain freed on another thread does not show up here. */
static void caches_are_per_thread(void **state)
{
    (void)state;
    mg_evmem_flush();
    size_t seen = 0;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, thread_main, &seen), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(seen, 1);
    assert_int_equal(mg_evmem_cached(), 0);
}

int main(void)
{
    mg_evmem_install();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(drained_chain_is_reused),
        cmocka_unit_test(cache_is_bounded),
        cmocka_unit_test(only_chains_come_from_the_cache),
        cmocka_unit_test(larger_chains_are_reused_and_bounded),
        cmocka_unit_test(caches_are_per_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
