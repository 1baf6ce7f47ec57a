/*
 * common/asan.h - MG_ASAN: 1 in AddressSanitizer builds (GCC's and clang's), else 0. The caches
 * of freed blocks (smalloc, evmem, the upstream streams, the Redis reply pool) consult it, so
 * that ASan keeps seeing each block's life.
 */
#ifndef MG_COMMON_ASAN_H
#define MG_COMMON_ASAN_H

#if defined(__SANITIZE_ADDRESS__)
#define MG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MG_ASAN 1
#endif
#endif
#ifndef MG_ASAN
#define MG_ASAN 0
#endif

/* A cache's kept block is poisoned until it is handed out again, so that ASan reports a use
 * after its owner freed it as it would without the cache; no-ops in other builds. */
#if MG_ASAN
#include <sanitizer/asan_interface.h>
#define MG_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define MG_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define MG_POISON(p, n) ((void)(p), (void)(n))
#define MG_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#endif /* MG_COMMON_ASAN_H */
