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

/* libevent's chains, header included, are powers of two from 1 KiB (MIN_BUFFER_SIZE): a
 * class per size up to 64 KiB (a TLS filter's chains are 4 and 8 KiB, the queue's reader
 * reads into 64 KiB ones). Each class keeps at most MG_EVMEM_CACHE 1 KiB blocks, or
 * CLASS_BYTES' worth of a larger size. */
#define MIN_CHAIN 1024
#define NCLASSES 7
#define CLASS_BYTES (256 * 1024)

typedef struct block {
    struct block *next;
} block_t;

static _Thread_local block_t *cache[NCLASSES];
static _Thread_local size_t ncached[NCLASSES];
static _Thread_local bool registered; /* the exit destructor knows this thread */
static size_t usable[NCLASSES];       /* malloc_usable_size of each class's block */
static pthread_key_t exit_key;

static size_t class_max(int k)
{
    return k == 0 ? MG_EVMEM_CACHE : CLASS_BYTES / ((size_t)MIN_CHAIN << k);
}

/* The class of a request of |size| bytes, or -1: exactly a chain's size, for a smaller object
 * (a bufferevent) would waste the rest of the block for as long as it lives, and idle
 * connections hold such objects. */
static int class_of(size_t size)
{
    if (size < MIN_CHAIN || size > ((size_t)MIN_CHAIN << (NCLASSES - 1)) || (size & (size - 1)))
        return -1;
    return __builtin_ctzl(size) - __builtin_ctzl(MIN_CHAIN);
}

void *mg_evmem_alloc(size_t size)
{
    int k = class_of(size);
    if (k >= 0 && cache[k] != NULL) {
        block_t *b = cache[k];
        cache[k] = b->next;
        ncached[k]--;
        MG_UNPOISON(b, size);
        return b;
    }
    return malloc(size);
}

void mg_evmem_free(void *p)
{
    if (p == NULL)
        return;
    /* any block as large as a class's can serve as one: libevent asks for exactly that size */
    size_t n = malloc_usable_size(p);
    int k = 0;
    while (k < NCLASSES && usable[k] != n)
        k++;
    if (k == NCLASSES || ncached[k] >= class_max(k)) {
        free(p);
        return;
    }
    if (!registered) { /* so that the blocks are freed when the thread ends */
        registered = true;
        pthread_setspecific(exit_key, &registered);
    }
    block_t *b = p;
    b->next = cache[k];
    cache[k] = b;
    ncached[k]++;
    MG_POISON((char *)b + sizeof(*b), n - sizeof(*b));
}

void mg_evmem_flush(void)
{
    for (int k = 0; k < NCLASSES; k++) {
        while (cache[k] != NULL) {
            block_t *b = cache[k];
            cache[k] = b->next;
            MG_UNPOISON(b, usable[k]);
            free(b);
        }
        ncached[k] = 0;
    }
}

size_t mg_evmem_cached(void)
{
    size_t n = 0;
    for (int k = 0; k < NCLASSES; k++)
        n += ncached[k];
    return n;
}

static void on_thread_exit(void *unused)
{
    (void)unused;
    mg_evmem_flush();
    registered = false; /* a later destructor's frees register again, and glibc calls us again */
}

void mg_evmem_install(void)
{
    if (pthread_key_create(&exit_key, on_thread_exit) != 0)
        return; /* libevent keeps plain malloc */
    for (int k = 0; k < NCLASSES; k++) {
        void *probe = malloc((size_t)MIN_CHAIN << k);
        if (probe == NULL)
            return;
        usable[k] = malloc_usable_size(probe);
        free(probe);
    }
    event_set_mem_functions(mg_evmem_alloc, realloc,
                            mg_evmem_free); /* a cached block is malloc's */
}
