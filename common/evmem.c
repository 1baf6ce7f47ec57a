/*
 * common/evmem.c - libevent's memory functions with a per-thread chain cache (see evmem.h).
 */
#include "common/evmem.h"

#include <event2/event.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#if defined(MG_EVMEM_FORCE_CACHE) /* its unit test exercises the cache under ASan too */
#define EVMEM_PASSTHROUGH 0
#elif defined(__SANITIZE_ADDRESS__)
#define EVMEM_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EVMEM_PASSTHROUGH 1
#endif
#endif
#ifndef EVMEM_PASSTHROUGH
#define EVMEM_PASSTHROUGH 0
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
        return b;
    }
    return malloc(size);
}

static void *ev_realloc(void *p, size_t size)
{
    return realloc(p, size);
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
        return;
    }
    free(p);
}

void mg_evmem_flush(void)
{
    while (cache != NULL) {
        block_t *b = cache;
        cache = b->next;
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
    if (EVMEM_PASSTHROUGH)
        return;
    void *probe = malloc(CHAIN_BYTES);
    if (probe == NULL || pthread_key_create(&exit_key, on_thread_exit) != 0) {
        free(probe);
        return; /* libevent keeps plain malloc */
    }
    chain_usable = malloc_usable_size(probe);
    free(probe);
    event_set_mem_functions(ev_malloc, ev_realloc, ev_free);
}
