#include "common/arena.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/asan.h"

/* Under AddressSanitizer the spares stay on, so the sanitized tests run them, and a spare's
 * memory is poisoned until an arena takes it again: a use after mg_arena_clear is reported as
 * it would be without them. */

#define CHUNK_BYTES 4096 /* a heap chunk's size, unless one allocation needs more */

struct mg_arena_chunk {
    mg_arena_chunk_t *next;
    size_t cap;
    _Alignas(16) char mem[];
};

/* Cleared arenas leave their CHUNK_BYTES chunks to the next arena of the thread, up to
 * MG_ARENA_SPARES of them. A request whose headers outgrow the inline chunk (a 1 KB
 * x-user-features does) would otherwise malloc and free 4 KiB each time, past glibc's
 * per-thread cache (1 KiB), in its slow path. The list is freed when its thread exits. */
static _Thread_local struct {
    mg_arena_chunk_t *head;
    size_t n;
    bool registered; /* with spares_key, whose destructor frees the list at thread exit */
} spares;
static pthread_key_t spares_key;
static pthread_once_t spares_once = PTHREAD_ONCE_INIT;
static bool spares_key_ok;

static void free_list(mg_arena_chunk_t *c)
{
    while (c) {
        mg_arena_chunk_t *next = c->next;
        MG_UNPOISON(c->mem, c->cap);
        free(c);
        c = next;
    }
}

void mg_arena_flush_spares(void)
{
    free_list(spares.head);
    spares.head = NULL;
    spares.n = 0;
}

static void spares_at_thread_exit(void *unused)
{
    (void)unused;
    mg_arena_flush_spares();
}

static void spares_key_create(void)
{
    spares_key_ok = pthread_key_create(&spares_key, spares_at_thread_exit) == 0;
}

/* Keeps |c| as a spare, or frees it. */
static void chunk_put(mg_arena_chunk_t *c)
{
    if (c->cap != CHUNK_BYTES || spares.n >= MG_ARENA_SPARES) {
        free(c);
        return;
    }
    if (!spares.registered) { /* once per thread: the destructor needs a non-NULL value */
        pthread_once(&spares_once, spares_key_create);
        if (!spares_key_ok || pthread_setspecific(spares_key, &spares) != 0) {
            free(c);
            return;
        }
        spares.registered = true;
    }
    MG_POISON(c->mem, c->cap);
    c->next = spares.head;
    spares.head = c;
    spares.n++;
}

static mg_arena_chunk_t *chunk_get(size_t cap)
{
    mg_arena_chunk_t *c = spares.head;
    if (cap == CHUNK_BYTES && c) {
        spares.head = c->next;
        spares.n--;
        MG_UNPOISON(c->mem, c->cap);
        return c;
    }
    if ((c = malloc(sizeof(*c) + cap)) != NULL)
        c->cap = cap;
    return c;
}

size_t mg_arena_spares(void)
{
    return spares.n;
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
        chunk_put(c);
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
