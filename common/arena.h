/*
 * common/arena.h - bump allocator for one stream.
 *
 * Everything request-scoped (header names and values, paths, log fields) is allocated here and
 * dies at mg_arena_clear(); never free() it, never keep it past stream close. The first chunk is
 * embedded in the arena, so a typical request does no heap allocation for its headers. A hard
 * cap makes allocation fail (NULL) rather than grow without bound; only that stream is reset.
 * Heap chunks of the standard size (4 KiB) go back to the thread's block cache
 * (common/evmem.h) for its next arena.
 * Not thread-safe: a stream lives on one worker thread.
 */
#ifndef MG_COMMON_ARENA_H
#define MG_COMMON_ARENA_H

#include <stddef.h>

#define MG_ARENA_INLINE 2048

typedef struct mg_arena_chunk mg_arena_chunk_t;

typedef struct mg_arena {
    mg_arena_chunk_t *_chunks; /* extra heap chunks, newest first */
    size_t _off;               /* used bytes of the current chunk */
    size_t _cap;               /* size of the current chunk */
    char *_cur;                /* current chunk's memory */
    size_t _total;             /* bytes handed out so far; _total <= _limit, always */
    size_t _limit;
    _Alignas(16) char _inline[MG_ARENA_INLINE];
} mg_arena_t;

void mg_arena_init(mg_arena_t *a, size_t limit);
void mg_arena_clear(mg_arena_t *a); /* frees the heap chunks; the arena can be reused */

/* Returns |size| bytes aligned to 8, or NULL once the limit would be exceeded. */
void *mg_arena_alloc(mg_arena_t *a, size_t size);

/* Copies |len| bytes of |s| and a NUL; NULL when the limit would be exceeded. */
char *mg_arena_strndup(mg_arena_t *a, const char *s, size_t len);

#endif /* MG_COMMON_ARENA_H */
