/*
 * features/lru.c - LRU with TTL and negative entries (see lru.h).
 *
 * DESIGN: a chained hash table (power-of-two buckets, at least 2 per allowed entry, so chains
 * stay short without resizing) plus a doubly-linked recency list whose head is the most
 * recently used entry. Every operation is O(1) on average. Expired entries are removed when
 * they are looked up or when they reach the tail; no timer sweeps the table.
 */
#include "features/lru.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* recency list */
    uint64_t hash;
    void *value;
    int64_t fresh_until, stale_until; /* fresh_until <= stale_until */
    size_t klen;
    unsigned char key[];
} entry_t;

struct mg_flru {
    entry_t **buckets;
    size_t mask;
    entry_t *head, *tail;
    size_t size, max;
    void (*drop)(void *);
};

static uint64_t hash_key(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: keys are short user ids */
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

mg_flru_t *mg_flru_new(size_t max_entries, void (*drop)(void *value))
{
    if (max_entries == 0)
        return NULL;
    mg_flru_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    size_t n = 16;
    while (n < max_entries * 2)
        n *= 2;
    if ((l->buckets = calloc(n, sizeof(*l->buckets))) == NULL) {
        free(l);
        return NULL;
    }
    l->mask = n - 1;
    l->max = max_entries;
    l->drop = drop;
    return l;
}

static void unlink_list(mg_flru_t *l, entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        l->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        l->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_head(mg_flru_t *l, entry_t *e)
{
    e->prev = NULL;
    e->next = l->head;
    if (l->head)
        l->head->prev = e;
    l->head = e;
    if (l->tail == NULL)
        l->tail = e;
}

static entry_t **find_slot(mg_flru_t *l, const void *key, size_t klen, uint64_t h)
{
    entry_t **pp = &l->buckets[h & l->mask];
    while (*pp && !((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void remove_entry(mg_flru_t *l, entry_t *e)
{
    entry_t **pp = &l->buckets[e->hash & l->mask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    unlink_list(l, e);
    if (l->drop && e->value)
        l->drop(e->value);
    free(e);
    l->size--;
}

void mg_flru_free(mg_flru_t *l)
{
    if (l == NULL)
        return;
    while (l->head)
        remove_entry(l, l->head);
    free(l->buckets);
    free(l);
}

mg_flru_state_t mg_flru_get(mg_flru_t *l, const void *key, size_t klen, int64_t now, void **value)
{
    entry_t *e = *find_slot(l, key, klen, hash_key(key, klen));
    if (e == NULL)
        return MG_FLRU_ABSENT;
    if (now >= e->stale_until) {
        remove_entry(l, e);
        return MG_FLRU_ABSENT;
    }
    unlink_list(l, e);
    push_head(l, e);
    *value = e->value;
    return now < e->fresh_until ? MG_FLRU_FRESH : MG_FLRU_STALE;
}

mg_err_t mg_flru_put(mg_flru_t *l, const void *key, size_t klen, void *value, int64_t fresh_until,
                     int64_t stale_until)
{
    uint64_t h = hash_key(key, klen);
    entry_t **pp = find_slot(l, key, klen, h);
    entry_t *e = *pp;
    if (stale_until < fresh_until)
        stale_until = fresh_until;
    if (e) { /* replace in place: no allocation */
        if (l->drop && e->value)
            l->drop(e->value);
        e->value = value;
        e->fresh_until = fresh_until;
        e->stale_until = stale_until;
        unlink_list(l, e);
        push_head(l, e);
        return MG_OK;
    }
    if ((e = malloc(sizeof(*e) + klen)) == NULL) {
        if (l->drop && value)
            l->drop(value);
        return MG_E_NOMEM;
    }
    e->hash = h;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->value = value;
    e->fresh_until = fresh_until;
    e->stale_until = stale_until;
    e->hnext = *pp;
    *pp = e;
    push_head(l, e);
    l->size++;
    if (l->size > l->max)
        remove_entry(l, l->tail);
    return MG_OK;
}

void mg_flru_del(mg_flru_t *l, const void *key, size_t klen)
{
    entry_t *e = *find_slot(l, key, klen, hash_key(key, klen));
    if (e)
        remove_entry(l, e);
}

size_t mg_flru_size(const mg_flru_t *l)
{
    return l->size;
}
