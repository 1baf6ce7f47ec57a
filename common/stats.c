/*
 * common/stats.c - per-worker request counters (see stats.h).
 */
#include "common/stats.h"

#include <pthread.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>

const int64_t mg_stats_lat_bounds_us[MG_STATS_LAT_BUCKETS] = {
    500,    1000,   2000,    5000,    10000,   25000,   50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned g_workers = 1;
static mg_stats_t *g_head[MG_STATS_NKINDS], *g_tail[MG_STATS_NKINDS];
static size_t g_count;                     /* series in the lists */
static void *g_by_labels[MG_STATS_NKINDS]; /* the same series in tsearch trees by labels: a
                                            * routing document of thousands of pods looks up
                                            * each one's when it is built */

static int by_labels(const void *a, const void *b)
{
    return strcmp(((const mg_stats_t *)a)->labels, ((const mg_stats_t *)b)->labels);
}

static void keep_node(void *node)
{
    (void)node; /* the series are freed from the lists */
}

void mg_stats_init(unsigned workers)
{
    g_workers = workers ? workers : 1;
}

unsigned mg_stats_workers(void)
{
    return g_workers;
}

mg_stats_t *mg_stats_get(mg_stats_kind_t kind, const char *labels)
{
    if ((unsigned)kind >= MG_STATS_NKINDS)
        return NULL;
    pthread_mutex_lock(&g_lock);
    const mg_stats_t key = {.labels = (char *)labels};
    mg_stats_t *const *found = tfind(&key, &g_by_labels[kind], by_labels);
    mg_stats_t *s = found ? *found : NULL;
    if (s != NULL) {
        s->_refs++;
    } else if ((s = calloc(1, sizeof(*s))) != NULL) {
        s->kind = kind;
        s->labels = strdup(labels);
        s->w = aligned_alloc(64, sizeof(mg_stat_block_t) * g_workers);
        if (s->labels == NULL || s->w == NULL ||
            tsearch(s, &g_by_labels[kind], by_labels) == NULL) {
            free(s->labels);
            free(s->w);
            free(s);
            s = NULL;
        } else {
            memset(s->w, 0, sizeof(mg_stat_block_t) * g_workers); /* all-zero atomics are 0 */
            s->_refs = 1;
            s->_prev = g_tail[kind];
            if (g_tail[kind])
                g_tail[kind]->next = s;
            else
                g_head[kind] = s;
            g_tail[kind] = s;
            g_count++;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return s;
}

static void series_free(mg_stats_t *s)
{
    free(s->labels);
    free(s->w);
    free(s);
}

void mg_stats_release(mg_stats_t *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&g_lock);
    if (--s->_refs == 0) {
        mg_stats_kind_t k = s->kind;
        tdelete(s, &g_by_labels[k], by_labels);
        if (s->_prev)
            s->_prev->next = s->next;
        else
            g_head[k] = s->next;
        if (s->next)
            s->next->_prev = s->_prev;
        else
            g_tail[k] = s->_prev;
        g_count--;
        series_free(s);
    }
    pthread_mutex_unlock(&g_lock);
}

size_t mg_stats_count(void)
{
    pthread_mutex_lock(&g_lock);
    size_t n = g_count;
    pthread_mutex_unlock(&g_lock);
    return n;
}

void mg_stats_each(mg_stats_kind_t kind, void (*fn)(void *ud, const mg_stats_t *s), void *ud)
{
    if ((unsigned)kind >= MG_STATS_NKINDS)
        return;
    pthread_mutex_lock(&g_lock);
    for (const mg_stats_t *s = g_head[kind]; s; s = s->next)
        if (!atomic_load_explicit(&s->retired, memory_order_relaxed))
            fn(ud, s);
    pthread_mutex_unlock(&g_lock);
}

void mg_stats_mark_current(mg_stats_kind_t kind, mg_stats_t *const *current, size_t n)
{
    if ((unsigned)kind >= MG_STATS_NKINDS)
        return;
    pthread_mutex_lock(&g_lock);
    for (mg_stats_t *s = g_head[kind]; s; s = s->next)
        atomic_store_explicit(&s->retired, true, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        if (current[i])
            atomic_store_explicit(&current[i]->retired, false, memory_order_relaxed);
    pthread_mutex_unlock(&g_lock);
}

void mg_stats_sum(const mg_stats_t *s, mg_stat_block_t *out)
{
    memset(out, 0, sizeof(*out));
    size_t nfields = offsetof(mg_stat_block_t, ejections) / sizeof(atomic_uint_fast64_t) + 1;
    for (unsigned w = 0; w < g_workers; w++) {
        const atomic_uint_fast64_t *src = (const atomic_uint_fast64_t *)&s->w[w];
        atomic_uint_fast64_t *dst = (atomic_uint_fast64_t *)out;
        for (size_t i = 0; i < nfields; i++)
            atomic_store_explicit(&dst[i],
                                  atomic_load_explicit(&dst[i], memory_order_relaxed) +
                                      atomic_load_explicit(&src[i], memory_order_relaxed),
                                  memory_order_relaxed);
    }
}

static void bump(atomic_uint_fast64_t *c, uint64_t by)
{
    /* one writer per block: a load and a store, no locked instruction */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

void mg_stats_record(mg_stats_t *s, unsigned worker, int status, int64_t us)
{
    if (s == NULL || worker >= g_workers)
        return;
    mg_stat_block_t *b = &s->w[worker];
    int cls = status >= 100 && status < 600 ? status / 100 : 0;
    bump(&b->status[cls], 1);
    size_t i = 0;
    while (i < MG_STATS_LAT_BUCKETS && us > mg_stats_lat_bounds_us[i])
        i++;
    bump(&b->lat[i], 1);
    bump(&b->lat_sum_us, us > 0 ? (uint64_t)us : 0);
}

void mg_stats_inc(mg_stats_t *s, unsigned worker, size_t field)
{
    if (s == NULL || worker >= g_workers || field >= sizeof(mg_stat_block_t))
        return;
    bump((atomic_uint_fast64_t *)((char *)&s->w[worker] + field), 1);
}

void mg_stats_label_value(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; s && *s && o + 3 < cap; s++) {
        if (*s == '\\' || *s == '"')
            out[o++] = '\\', out[o++] = *s;
        else if (*s == '\n')
            out[o++] = '\\', out[o++] = 'n';
        else
            out[o++] = *s;
    }
    if (cap)
        out[o] = '\0';
}

void mg_stats_free_all(void)
{
    pthread_mutex_lock(&g_lock);
    for (int k = 0; k < MG_STATS_NKINDS; k++) {
        tdestroy(g_by_labels[k], keep_node);
        g_by_labels[k] = NULL;
        mg_stats_t *s = g_head[k];
        while (s) {
            mg_stats_t *next = s->next;
            series_free(s);
            s = next;
        }
        g_head[k] = g_tail[k] = NULL;
    }
    g_count = 0;
    pthread_mutex_unlock(&g_lock);
}
