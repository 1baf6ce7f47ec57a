#include "common/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mg_arena_chunk {
    mg_arena_chunk_t *next;
    _Alignas(16) char mem[];
};

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
        free(c);
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
        size_t cap = size > 4096 ? size : 4096;
        mg_arena_chunk_t *c = malloc(sizeof(*c) + cap);
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
