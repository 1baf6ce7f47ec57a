/* tests/unit/test_smalloc.c - the small-block cache (common/smalloc.c, compiled into this test with
 * MG_SMALLOC_FORCE_CACHE so the cache itself runs under ASan too). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/smalloc.h"

static void blocks_are_aligned_and_reused_per_class(void **state)
{
    (void)state;
    mg_smalloc_t *a = mg_smalloc_new();
    assert_non_null(a);
    void *p = mg_smalloc_get(a, 24), *q = mg_smalloc_get(a, 24);
    assert_non_null(p);
    assert_non_null(q);
    assert_ptr_not_equal(p, q);
    assert_int_equal((uintptr_t)p % 16, 0);
    assert_int_equal((uintptr_t)q % 16, 0);
    memset(p, 0xab, 24);
    memset(q, 0xcd, 32); /* the class of 24 is 32 bytes: all of it is the caller's */
    mg_smalloc_put(a, p);
    assert_ptr_equal(mg_smalloc_get(a, 20), p); /* same class (17-32): the freed block again */
    void *other = mg_smalloc_get(a, 100);
    assert_ptr_not_equal(other, p); /* another class: not that block */
    mg_smalloc_put(a, other);
    mg_smalloc_put(a, p);
    mg_smalloc_put(a, q);
    mg_smalloc_free(a);
}

/* nghttp2_submit_request copies the field array, 40 bytes a field (nghttp2_nv, names and
 * values NO_COPY): a request forwarded with 13 or more fields (a browser's, or one with user
 * features) needs over 512 bytes, and still must not cost a malloc and a free. */
static void a_request_field_array_comes_from_the_cache(void **state)
{
    (void)state;
    for (size_t fields = 13; fields <= 25; fields++) {
        mg_smalloc_t *a = mg_smalloc_new();
        size_t nv_bytes = fields * 40;
        void *p = mg_smalloc_get(a, nv_bytes);
        assert_non_null(p);
        assert_int_equal(mg_smalloc_slab_bytes(a), 64 * 1024); /* carved from a slab */
        memset(p, 0x5a, nv_bytes);
        mg_smalloc_put(a, p);
        assert_ptr_equal(mg_smalloc_get(a, nv_bytes), p); /* kept for the next one */
        mg_smalloc_put(a, p);
        mg_smalloc_free(a);
    }
    mg_smalloc_t *a = mg_smalloc_new(); /* the limit: 1024 bytes cached, 1025 malloc'd */
    void *at = mg_smalloc_get(a, MG_SMALLOC_MAX);
    assert_int_equal(mg_smalloc_slab_bytes(a), 64 * 1024);
    mg_smalloc_free(a);
    a = mg_smalloc_new();
    void *past = mg_smalloc_get(a, MG_SMALLOC_MAX + 1);
    assert_int_equal(mg_smalloc_slab_bytes(a), 0);
    mg_smalloc_put(a, past);
    mg_smalloc_free(a);
    (void)at;
}

/* Slabs are never given back, so their total is capped: past MG_SMALLOC_SLAB_CAP new blocks
 * come from malloc (and go back to it), while blocks already carved are still reused. */
static void slabs_stop_at_the_cap(void **state)
{
    (void)state;
    mg_smalloc_t *a = mg_smalloc_new();
    size_t n = 0, cap = 40000;
    void **blocks = calloc(cap, sizeof(void *));
    while (n < cap && mg_smalloc_slab_bytes(a) + 64 * 1024 <= MG_SMALLOC_SLAB_CAP)
        blocks[n++] = mg_smalloc_get(a, 1000);
    for (size_t i = 0; i < 200; i++) /* what the last slab still had, then malloc */
        blocks[n++] = mg_smalloc_get(a, 1000);
    assert_int_equal(mg_smalloc_slab_bytes(a), MG_SMALLOC_SLAB_CAP);
    void *freed = blocks[0];
    mg_smalloc_put(a, freed);
    assert_ptr_equal(mg_smalloc_get(a, 1000), freed); /* a carved block: reused at the cap */
    for (size_t i = 0; i < n; i++) {
        assert_non_null(blocks[i]);
        memset(blocks[i], 1, 1000);
        mg_smalloc_put(a, blocks[i]);
    }
    assert_int_equal(mg_smalloc_slab_bytes(a), MG_SMALLOC_SLAB_CAP);
    free(blocks);
    mg_smalloc_free(a);
}

static void large_blocks_and_edges(void **state)
{
    (void)state;
    mg_smalloc_t *a = mg_smalloc_new();
    char *big = mg_smalloc_get(a, 100000);
    assert_non_null(big);
    memset(big, 1, 100000);
    mg_smalloc_put(a, big);
    void *z = mg_smalloc_get(a, 0); /* like malloc(0): a freeable pointer */
    assert_non_null(z);
    mg_smalloc_put(a, z);
    mg_smalloc_put(a, NULL);
    assert_null(mg_smalloc_zget(a, SIZE_MAX / 2, 4)); /* n * size overflows */
    unsigned char *zz = mg_smalloc_zget(a, 10, 40);
    for (size_t i = 0; i < 400; i++)
        assert_int_equal(zz[i], 0);
    mg_smalloc_put(a, zz);
    mg_smalloc_free(a);
    mg_smalloc_free(NULL);
}

static void reget_keeps_the_bytes(void **state)
{
    (void)state;
    mg_smalloc_t *a = mg_smalloc_new();
    char *p = mg_smalloc_reget(a, NULL, 10);
    memcpy(p, "0123456789", 10);
    char *same = mg_smalloc_reget(a, p, 16); /* still fits its 16-byte block */
    assert_ptr_equal(same, p);
    char *grown = mg_smalloc_reget(a, p, 300);
    assert_memory_equal(grown, "0123456789", 10);
    char *large = mg_smalloc_reget(a, grown, 5000);
    assert_memory_equal(large, "0123456789", 10);
    memset(large + 10, 7, 4990);
    char *back = mg_smalloc_reget(a, large, 40); /* a large block shrunk: moved to a class */
    assert_memory_equal(back, "0123456789", 10);
    mg_smalloc_put(a, back);
    /* shrunk to less than half but still over MG_SMALLOC_MAX / 2: moved too, not kept at 8 KiB */
    char *big = mg_smalloc_reget(a, NULL, 8192);
    memcpy(big, "abc", 3);
    char *half = mg_smalloc_reget(a, big, MG_SMALLOC_MAX);
    assert_ptr_not_equal(half, big);
    assert_memory_equal(half, "abc", 3);
    mg_smalloc_put(a, half);
    mg_smalloc_free(a);
}

static void many_blocks_across_slabs(void **state)
{
    (void)state;
    mg_smalloc_t *a = mg_smalloc_new();
    enum { N = 20000 };
    void **p = calloc(N, sizeof(void *));
    for (size_t i = 0; i < N; i++) {
        size_t size = 1 + (i * 37) % MG_SMALLOC_MAX;
        p[i] = mg_smalloc_get(a, size);
        assert_non_null(p[i]);
        memset(p[i], (int)(i & 0xff), size);
    }
    for (size_t i = 0; i < N; i++) { /* nobody overwrote anybody */
        size_t size = 1 + (i * 37) % MG_SMALLOC_MAX;
        const unsigned char *b = p[i];
        assert_int_equal(b[0], i & 0xff);
        assert_int_equal(b[size - 1], i & 0xff);
    }
    for (size_t i = 0; i < N; i += 2)
        mg_smalloc_put(a, p[i]);
    for (size_t i = 0; i < N; i += 2) /* the freed ones come back, no new slab needed */
        p[i] = mg_smalloc_get(a, 1 + (i * 37) % MG_SMALLOC_MAX);
    for (size_t i = 0; i < N; i++)
        mg_smalloc_put(a, p[i]);
    free(p);
    mg_smalloc_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(blocks_are_aligned_and_reused_per_class),
        cmocka_unit_test(a_request_field_array_comes_from_the_cache),
        cmocka_unit_test(slabs_stop_at_the_cap),
        cmocka_unit_test(large_blocks_and_edges),
        cmocka_unit_test(reget_keeps_the_bytes),
        cmocka_unit_test(many_blocks_across_slabs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
