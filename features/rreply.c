/*
 * features/rreply.c - Redis replies built in a reusable buffer (see rreply.h).
 *
 * A reply and everything below it are bump-allocated: the first FIRST_BYTES from the pool's
 * own buffer, kept between replies; beyond that from extra chunks, freed with the reply. Each
 * node is one allocation: the redisReply, then its string bytes or its element vector. The
 * root is preceded by a pointer to the pool, since hiredis's freeObject gets the root only.
 * In AddressSanitizer builds every node is a chunk of its own, so that ASan sees its bounds
 * (the unit test forces the pool to test it under ASan too).
 */
#include "features/rreply.h"

#include <assert.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "common/asan.h"

#if defined(MG_RREPLY_FORCE_POOL)
#define PASSTHROUGH 0
#else
#define PASSTHROUGH MG_ASAN
#endif

#define FIRST_BYTES 8192 /* a 50-item list of short strings takes about 4 KB */
#define MAX_ELEMENTS (1 << 20) /* per array reply (an 8 MiB element vector) */
#define ALIGN alignof(max_align_t)

typedef struct chunk {
    struct chunk *next;
    size_t cap, used; /* used <= cap */
    alignas(max_align_t) char data[];
} chunk_t;

struct mg_rreply_pool {
    chunk_t *extra; /* newest first */
    size_t used;    /* used <= FIRST_BYTES */
    bool nested_ok; /* tests that compare trees with hiredis's: build nested arrays too */
    char refused[96]; /* why the last reply was refused ("" when none): see mg_rreply_refused */
    alignas(max_align_t) char first[FIRST_BYTES];
};

static void pool_reset(mg_rreply_pool_t *p)
{
    while (p->extra) {
        chunk_t *c = p->extra;
        p->extra = c->next;
        free(c);
    }
    p->used = 0;
}

static void *pool_alloc(mg_rreply_pool_t *p, size_t n)
{
    if (!PASSTHROUGH)
        n = (n + ALIGN - 1) & ~(ALIGN - 1);
    if (!PASSTHROUGH && n <= FIRST_BYTES - p->used) {
        void *o = p->first + p->used;
        p->used += n;
        return o;
    }
    chunk_t *c = p->extra;
    if (PASSTHROUGH || c == NULL || n > c->cap - c->used) {
        size_t cap = PASSTHROUGH || n > FIRST_BYTES ? n : FIRST_BYTES;
        if ((c = malloc(sizeof(*c) + cap)) == NULL)
            return NULL;
        c->next = p->extra;
        c->cap = cap;
        c->used = 0;
        p->extra = c;
    }
    void *o = c->data + c->used;
    c->used += n;
    return o;
}

/* A zeroed reply of |type| with |extra| bytes after it, linked into its parent as hiredis
 * links it; NULL when out of memory (hiredis then fails the reader, freeing the root). */
static redisReply *new_reply(const redisReadTask *task, int type, size_t extra)
{
    mg_rreply_pool_t *p = task->privdata;
    size_t head = 0;
    if (task->parent == NULL) { /* a new reply: hiredis has freed the previous one */
        assert(p->used == 0 && p->extra == NULL);
        pool_reset(p); /* drops what a root that failed half-way left behind */
        head = ALIGN;
    }
    char *m = pool_alloc(p, head + sizeof(redisReply) + extra);
    if (m == NULL)
        return NULL;
    if (head)
        memcpy(m, &p, sizeof(p));
    redisReply *r = (redisReply *)(m + head);
    memset(r, 0, sizeof(*r));
    r->type = type;
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    return r;
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
    redisReply *r = new_reply(task, task->type, len + 1);
    if (r == NULL)
        return NULL;
    r->str = (char *)(r + 1);
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = len;
    return r;
}

static void *create_array(const redisReadTask *task, int elements)
{
    /* A feature lookup's replies hold a list of max_items and a hash's fields: a count beyond
     * MAX_ELEMENTS, or an array inside an array, is a broken or hostile server. Refused
     * (hiredis then fails the connection with "Out of memory"), rather than zeroing gigabytes
     * of element vectors for it (8 levels of 2^20 would be 2^23 vectors). */
    mg_rreply_pool_t *p = task->privdata;
    if (elements > MAX_ELEMENTS) {
        snprintf(p->refused, sizeof(p->refused),
                 "refused a reply: an array of %d elements (at most %d)", elements, MAX_ELEMENTS);
        return NULL;
    }
    if (task->parent != NULL && !p->nested_ok) {
        /* GET, HGETALL and LRANGE replies are flat: nesting is a broken server */
        snprintf(p->refused, sizeof(p->refused), "refused a reply: an array inside an array");
        return NULL;
    }
    size_t n = elements > 0 ? (size_t)elements : 0;
    redisReply *r = new_reply(task, REDIS_REPLY_ARRAY, n * sizeof(redisReply *));
    if (r == NULL)
        return NULL;
    if (n) {
        r->element = (redisReply **)(r + 1);
        memset(r->element, 0, n * sizeof(redisReply *));
    }
    r->elements = n;
    return r;
}

static void *create_integer(const redisReadTask *task, long long value)
{
    redisReply *r = new_reply(task, REDIS_REPLY_INTEGER, 0);
    if (r)
        r->integer = value;
    return r;
}

static void *create_nil(const redisReadTask *task)
{
    return new_reply(task, REDIS_REPLY_NIL, 0);
}

/* hiredis frees roots only: the whole reply goes at once. */
static void free_reply(void *obj)
{
    if (obj == NULL)
        return;
    mg_rreply_pool_t *p;
    memcpy(&p, (char *)obj - ALIGN, sizeof(p));
    pool_reset(p);
}

static redisReplyObjectFunctions pool_fns = {create_string, create_array, create_integer,
                                             create_nil, free_reply};

mg_rreply_pool_t *mg_rreply_pool_new(void)
{
    mg_rreply_pool_t *p = malloc(sizeof(*p));
    if (p) {
        p->extra = NULL;
        p->used = 0;
        p->nested_ok = false;
        p->refused[0] = '\0';
    }
    return p;
}

void mg_rreply_pool_free(mg_rreply_pool_t *p)
{
    if (p) {
        pool_reset(p);
        free(p);
    }
}

const char *mg_rreply_refused(mg_rreply_pool_t *p)
{
    static _Thread_local char last[sizeof(p->refused)];
    if (p->refused[0] == '\0')
        return NULL;
    memcpy(last, p->refused, sizeof(last));
    p->refused[0] = '\0';
    return last;
}

void mg_rreply_attach(redisReader *r, mg_rreply_pool_t *p)
{
    r->fn = &pool_fns;
    r->privdata = p;
}

void mg_rreply_text(const redisReply *r, char *out, size_t cap)
{
    bool text = r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STRING ||
                r->type == REDIS_REPLY_STATUS;
    size_t n = text && r->str && r->len > 0 ? (size_t)r->len : 0, k = 0;
    for (; k < n && k + 1 < cap; k++) {
        unsigned char c = (unsigned char)r->str[k];
        out[k] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[k] = '\0';
}

const char *mg_rreply_hint(const char *cause)
{
    if (strncmp(cause, "AUTH", 4) == 0)
        return "; check features.redis.password_file";
    if (strncmp(cause, "SELECT", 6) == 0)
        return "; check features.redis.db";
    if (strstr(cause, "NOAUTH") != NULL)
        return "; Redis wants a password: set features.redis.password_file";
    return "";
}
