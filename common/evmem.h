/*
 * common/evmem.h - libevent's memory, with a per-thread cache of buffer chains.
 *
 * Every small evbuffer_add to an empty buffer allocates a 1 KiB chain, and draining the buffer
 * frees it: a request body and a response body cost two such pairs per request. glibc's
 * per-thread cache holds only 7 blocks of a size, so with hundreds of streams in flight most of
 * them took malloc's slow path (_int_malloc, _int_free, unlink_chunk); the larger chains (a TLS
 * filter's 4 and 8 KiB, the 64 KiB a read goes into) always take it. Here each thread keeps,
 * for its next chains, up to MG_EVMEM_CACHE blocks of 1 KiB and up to 256 KiB of each larger
 * size up to 64 KiB. Every block is a plain malloc block, so any thread may free any of them,
 * and memory libevent hands out may still go to free().
 *
 * A thread keeps its blocks until mg_evmem_flush() or its end: the gateway's workers flush on
 * every idle second; other threads (the main and admin threads, the runtime's) keep up to
 * 2 MiB each.
 *
 * mg_evmem_install() must run before the first libevent call that allocates. In AddressSanitizer
 * builds cached blocks are poisoned, so a use of a freed chain is still reported.
 */
#ifndef MG_COMMON_EVMEM_H
#define MG_COMMON_EVMEM_H

#include <stddef.h>

#define MG_EVMEM_CACHE 512 /* cached 1 KiB chains per thread, at most (512 KiB) */

void mg_evmem_install(void);

/* The same cache for the project's own blocks of a chain's size (an arena's 4 KiB chunks):
 * a block of exactly 1 KiB, 2 KiB ... 64 KiB comes from the thread's cache when it has one,
 * anything else from malloc; any block may go to mg_evmem_free, which keeps it (within the
 * class's bound) or frees it. Before mg_evmem_install they are malloc and free. */
void *mg_evmem_alloc(size_t size);
void mg_evmem_free(void *p);

/* Frees the calling thread's cached blocks (its idle trim, and thread exit). */
void mg_evmem_flush(void);

/* Blocks the calling thread holds now, for tests. */
size_t mg_evmem_cached(void);

#endif /* MG_COMMON_EVMEM_H */
