/*
 * common/smalloc.h - a cache of small blocks for one thread's nghttp2 sessions.
 *
 * nghttp2 allocates and frees a dozen small objects per stream (stream, outbound item, header
 * copies, one refcounted buffer per decoded header field). Under load those bursts overflow
 * glibc's per-thread cache and land in its slow path (_int_malloc, _int_free, unlink_chunk:
 * about 5% of a worker's CPU). Blocks up to MG_SMALLOC_MAX bytes are served here instead, from
 * per-size-class free lists carved out of 64 KiB slabs; larger ones go to malloc. Every block
 * carries a 16-byte header naming its class, so any pointer from here can be freed here.
 *
 * Memory is kept, not returned: an instance keeps its peak of small blocks until mg_smalloc_free,
 * up to MG_SMALLOC_SLAB_CAP bytes of slabs; past that, new blocks come from malloc too (freed
 * ones are still reused), so a burst of clients cannot pin more than that for good.
 * Not thread-safe: one instance per event loop. In AddressSanitizer builds every block comes
 * from malloc (the header logic still runs), so ASan keeps seeing each block's bounds.
 */
#ifndef MG_COMMON_SMALLOC_H
#define MG_COMMON_SMALLOC_H

#include <stddef.h>

/* Larger blocks come from malloc. 1 KiB holds the field array nghttp2 copies for a request of
 * up to 25 fields. */
#define MG_SMALLOC_MAX 1024
#define MG_SMALLOC_SLAB_CAP (16u << 20)

typedef struct mg_smalloc mg_smalloc_t;

mg_smalloc_t *mg_smalloc_new(void);
/* Frees every slab. Blocks still handed out become invalid. NULL is fine. */
void mg_smalloc_free(mg_smalloc_t *a);

void *mg_smalloc_get(mg_smalloc_t *a, size_t size);            /* NULL when out of memory */
void *mg_smalloc_zget(mg_smalloc_t *a, size_t n, size_t size); /* zeroed, like calloc */
void *mg_smalloc_reget(mg_smalloc_t *a, void *p, size_t size); /* like realloc */
void mg_smalloc_put(mg_smalloc_t *a, void *p);                 /* NULL is fine */

/* Bytes of slabs |a| holds: what it keeps until mg_smalloc_free. */
size_t mg_smalloc_slab_bytes(const mg_smalloc_t *a);

#endif /* MG_COMMON_SMALLOC_H */
