#include "common/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/evmem.h"

/* A heap chunk, header included, is 4 KiB: a size common/evmem.c's per-thread cache keeps, so
 * a cleared arena's chunk serves the thread's next arena without malloc (a request whose
 * headers outgrow the inline chunk, as a 1 KB x-user-features does, would otherwise malloc
 * and free 4 KiB each time, past glibc's per-thread cache, in its slow path). The cache bounds
 * what a thread keeps, frees it on the worker's idle trim and at thread exit, and poisons it
 * in ASan builds. */
#define CHUNK_BLOCK 4096

struct mg_arena_chunk {
    mg_arena_chunk_t *next;
    size_t cap;
    _Alignas(16) char mem[];
};

#define CHUNK_BYTES (CHUNK_BLOCK - sizeof(mg_arena_chunk_t)) /* a chunk's room, usually */

static mg_arena_chunk_t *chunk_get(size_t cap)
{
    mg_arena_chunk_t *c = mg_evmem_alloc(sizeof(*c) + cap);
    if (c != NULL)
        c->cap = cap;
    return c;
}

void mg_arena_init(mg_arena_t *a, size_t limit)
{
    a->_chunks = NULL;
    a->_off = 0;
    a->_cap = sizeof(a->_inline);
    a->_cur = a->_inline;
    a->_total = 0;
    a->_limit = limit;
}

void mg_arena_clear(mg_arena_t *a)
{
    mg_arena_chunk_t *c = a->_chunks;
    while (c) {
        mg_arena_chunk_t *next = c->next;
        mg_evmem_free(c);
        c = next;
    }
    mg_arena_init(a, a->_limit);
}

void *mg_arena_alloc(mg_arena_t *a, size_t size)
{
    if (size > SIZE_MAX - 7) /* the rounding below would wrap to a tiny size */
        return NULL;
    size = (size + 7) & ~(size_t)7;
    if (size > a->_limit - a->_total)
        return NULL;
    if (size > a->_cap - a->_off) {
        size_t cap = size > CHUNK_BYTES ? size : CHUNK_BYTES;
        mg_arena_chunk_t *c = chunk_get(cap);
        if (c == NULL)
            return NULL;
        c->next = a->_chunks;
        a->_chunks = c;
        a->_cur = c->mem;
        a->_cap = cap;
        a->_off = 0;
    }
    void *p = a->_cur + a->_off;
    a->_off += size;
    a->_total += size;
    return p;
}

char *mg_arena_strndup(mg_arena_t *a, const char *s, size_t len)
{
    char *p = mg_arena_alloc(a, len + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
