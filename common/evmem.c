/*
 * common/evmem.c - libevent's memory functions with a per-thread chain cache (see evmem.h).
 */
#include "common/evmem.h"

#include "common/asan.h"

#include <event2/event.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

/* Under AddressSanitizer the cache stays on, so the sanitized tests run it, and a cached block
 * is poisoned (all but its link) until it is handed out again: a use after libevent freed a
 * chain is reported as it would be without the cache. */
#if MG_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define CHAIN_BYTES 1024 /* libevent's smallest chain (MIN_BUFFER_SIZE), header included */

typedef struct block {
    struct block *next;
} block_t;

static _Thread_local block_t *cache;
static _Thread_local size_t ncached;
static _Thread_local bool registered; /* the exit destructor knows this thread */
static size_t chain_usable;           /* malloc_usable_size of a CHAIN_BYTES block */
static pthread_key_t exit_key;

static void *ev_malloc(size_t size)
{
    /* exactly a chain's size: a smaller object (a bufferevent) would waste the rest of the
     * block for as long as it lives, and idle connections hold such objects */
    if (size == CHAIN_BYTES && cache != NULL) {
        block_t *b = cache;
        cache = b->next;
        ncached--;
        UNPOISON(b, size);
        return b;
    }
    return malloc(size);
}

static void ev_free(void *p)
{
    /* any block as large as a chain's can serve as one: libevent asks for exactly that size */
    if (p != NULL && ncached < MG_EVMEM_CACHE && malloc_usable_size(p) == chain_usable) {
        if (!registered) { /* so that the blocks are freed when the thread ends */
            registered = true;
            pthread_setspecific(exit_key, &registered);
        }
        block_t *b = p;
        b->next = cache;
        cache = b;
        ncached++;
        POISON((char *)b + sizeof(*b), chain_usable - sizeof(*b));
        return;
    }
    free(p);
}

void mg_evmem_flush(void)
{
    while (cache != NULL) {
        block_t *b = cache;
        cache = b->next;
        UNPOISON(b, chain_usable);
        free(b);
    }
    ncached = 0;
}

size_t mg_evmem_cached(void)
{
    return ncached;
}

static void on_thread_exit(void *unused)
{
    (void)unused;
    mg_evmem_flush();
    registered = false; /* a later destructor's frees register again, and glibc calls us again */
}

void mg_evmem_install(void)
{
    void *probe = malloc(CHAIN_BYTES);
    if (probe == NULL || pthread_key_create(&exit_key, on_thread_exit) != 0) {
        free(probe);
        return; /* libevent keeps plain malloc */
    }
    chain_usable = malloc_usable_size(probe);
    free(probe);
    event_set_mem_functions(ev_malloc, realloc, ev_free); /* a cached block is malloc's */
}
