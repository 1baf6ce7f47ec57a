/*
 * tests/fuzz/fuzz_rreply.c - Redis replies from arbitrary bytes, built in the feature cache's
 * reply pool (features/rreply.h), against hiredis's own reply objects.
 *
 * The bytes go, in the same chunks, to two readers: one with hiredis's default object
 * functions, one attached to a pool. Every reply either yields must be the same tree (type,
 * integer, string bytes and length, elements, recursively), and a protocol error must come from
 * both at the same input. Chunks are cut where the input's first byte says, so replies arrive
 * split at every kind of place, as they do from a socket.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <hiredis/read.h>

#include "check.h"
#include "features/rreply.c" /* for nested_ok: the trees compared may nest */

/* RESP2: the reply types of Debian 12's hiredis (0.14) */
static void same_reply(const redisReply *a, const redisReply *b)
{
    CHECK(a->type == b->type);
    switch (a->type) {
    case REDIS_REPLY_INTEGER:
        CHECK(a->integer == b->integer);
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        CHECK(a->len == b->len);
        CHECK(memcmp(a->str, b->str, a->len) == 0);
        CHECK(b->str[b->len] == '\0');
        break;
    case REDIS_REPLY_ARRAY:
        CHECK(a->elements == b->elements);
        for (size_t i = 0; i < a->elements; i++)
            same_reply(a->element[i], b->element[i]);
        break;
    default: /* REDIS_REPLY_NIL */
        break;
    }
}

/* Does a "*N" in |data| ask for more than 100000 elements? hiredis's own reader would allocate
 * them at once (libFuzzer's malloc limit), while the pool refuses counts beyond its cap (the
 * unit test covers that): such inputs are left out, whatever else they hold. */
static bool has_huge_count(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if (data[i] != '*')
            continue;
        size_t j = i + 1;
        if (j < size && (data[j] == '-' || data[j] == '+'))
            j++;
        unsigned long long v = 0;
        for (; j < size && data[j] >= '0' && data[j] <= '9' && v <= 100000; j++)
            v = v * 10 + (unsigned)(data[j] - '0');
        if (v > 100000)
            return true;
    }
    return false;
}

static mg_rreply_pool_t *pool;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (pool == NULL) {
        CHECK((pool = mg_rreply_pool_new()) != NULL);
        pool->nested_ok = true; /* hiredis's own objects nest: build the same trees */
    }
    if (size == 0 || has_huge_count(data, size))
        return 0;
    size_t chunk = (size_t)(data[0] % 16) + 1; /* 1..16 bytes per feed */
    data++, size--;
    redisReader *plain = redisReaderCreate(), *pooled = redisReaderCreate();
    CHECK(plain != NULL && pooled != NULL);
    mg_rreply_attach(pooled, pool);
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        CHECK(redisReaderFeed(plain, (const char *)data + off, n) == REDIS_OK);
        CHECK(redisReaderFeed(pooled, (const char *)data + off, n) == REDIS_OK);
        for (;;) {
            void *a = NULL, *b = NULL;
            int ra = redisReaderGetReply(plain, &a), rb = redisReaderGetReply(pooled, &b);
            CHECK(ra == rb);
            CHECK((a == NULL) == (b == NULL));
            if (ra != REDIS_OK) { /* a protocol error: both readers are done */
                off = size;
                break;
            }
            if (a == NULL)
                break; /* both need more bytes */
            same_reply(a, b);
            /* as hiredis's async API does once the callback has run */
            plain->fn->freeObject(a);
            pooled->fn->freeObject(b);
        }
    }
    redisReaderFree(plain);
    redisReaderFree(pooled);
    return 0;
}
