/*
 * common/smalloc.c - size-class free lists for small blocks (see smalloc.h).
 */
#include "common/smalloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/asan.h"

#if defined(MG_SMALLOC_FORCE_CACHE) /* its unit test exercises the cache under ASan too */
#define SMALLOC_PASSTHROUGH 0
#else
#define SMALLOC_PASSTHROUGH MG_ASAN
#endif

#define HDR 16                         /* keeps blocks 16-byte aligned, like malloc's */
#define GRAIN 16
#define NCLASS (MG_SMALLOC_MAX / GRAIN) /* class i holds blocks of (i + 1) * GRAIN bytes */
#define LARGE 0xffffu
#define SLAB_BYTES (64 * 1024)

typedef struct hdr {
    uint32_t cls;  /* class index, or LARGE */
    uint32_t size; /* LARGE: the block's size, for reget */
    uint64_t pad;
} hdr_t;

typedef struct free_block {
    struct free_block *next;
} free_block_t;

typedef struct slab {
    struct slab *next;
    size_t used;
    _Alignas(16) char mem[];
} slab_t;

struct mg_smalloc {
    free_block_t *free[NCLASS];
    slab_t *slabs;
    size_t slab_bytes;
};

_Static_assert(sizeof(hdr_t) == HDR, "the header keeps blocks aligned");

mg_smalloc_t *mg_smalloc_new(void)
{
    return calloc(1, sizeof(mg_smalloc_t));
}

void mg_smalloc_free(mg_smalloc_t *a)
{
    if (a == NULL)
        return;
    while (a->slabs) {
        slab_t *s = a->slabs;
        a->slabs = s->next;
        free(s);
    }
    free(a);
}

static void *large(size_t size)
{
    if (size > UINT32_MAX - HDR)
        return NULL;
    hdr_t *h = malloc(HDR + size);
    if (h == NULL)
        return NULL;
    h->cls = LARGE;
    h->size = (uint32_t)size;
    return (char *)h + HDR;
}

void *mg_smalloc_get(mg_smalloc_t *a, size_t size)
{
    if (SMALLOC_PASSTHROUGH || size == 0 || size > MG_SMALLOC_MAX)
        return large(size);
    unsigned cls = (unsigned)((size - 1) / GRAIN);
    free_block_t *b = a->free[cls];
    if (b != NULL) {
        a->free[cls] = b->next;
        return b; /* the header before it still names its class */
    }
    size_t need = HDR + (size_t)(cls + 1) * GRAIN;
    slab_t *s = a->slabs;
    if (s == NULL || s->used + need > SLAB_BYTES - sizeof(slab_t)) {
        if (a->slab_bytes + SLAB_BYTES > MG_SMALLOC_SLAB_CAP)
            return large(size);
        if ((s = malloc(SLAB_BYTES)) == NULL)
            return NULL;
        s->next = a->slabs;
        s->used = 0;
        a->slabs = s;
        a->slab_bytes += SLAB_BYTES;
    }
    hdr_t *h = (hdr_t *)(s->mem + s->used);
    s->used += need;
    h->cls = cls;
    h->size = 0;
    return (char *)h + HDR;
}

void *mg_smalloc_zget(mg_smalloc_t *a, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = mg_smalloc_get(a, n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

size_t mg_smalloc_slab_bytes(const mg_smalloc_t *a)
{
    return a->slab_bytes;
}

static size_t block_size(const void *p)
{
    const hdr_t *h = (const hdr_t *)((const char *)p - HDR);
    return h->cls == LARGE ? h->size : (size_t)(h->cls + 1) * GRAIN;
}

void mg_smalloc_put(mg_smalloc_t *a, void *p)
{
    if (p == NULL)
        return;
    hdr_t *h = (hdr_t *)((char *)p - HDR);
    if (h->cls == LARGE) {
        free(h);
        return;
    }
    free_block_t *b = p;
    b->next = a->free[h->cls];
    a->free[h->cls] = b;
}

void *mg_smalloc_reget(mg_smalloc_t *a, void *p, size_t size)
{
    if (p == NULL)
        return mg_smalloc_get(a, size);
    size_t old = block_size(p);
    if (size <= old && (old <= MG_SMALLOC_MAX || size > old / 2))
        return p; /* still fits its block (and a large block is not kept far too big) */
    void *n = mg_smalloc_get(a, size);
    if (n == NULL)
        return NULL;
    memcpy(n, p, old < size ? old : size);
    mg_smalloc_put(a, p);
    return n;
}
