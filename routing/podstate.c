/*
 * routing/podstate.c - the process-wide registry of pod states (see podstate.h).
 */
#include "routing/podstate.h"

#include <assert.h>
#include <pthread.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_podstate_t *g_states;
static size_t g_count;  /* states in g_states */
static void *g_by_name; /* the same states in a tsearch tree by (service, pod): a routing
                         * document of thousands of pods looks each one up when it is built */

static int by_name(const void *a, const void *b)
{
    const mg_podstate_t *x = a, *y = b;
    int d = strcmp(x->service, y->service);
    return d != 0 ? d : strcmp(x->pod, y->pod);
}

static void keep_node(void *node)
{
    (void)node; /* the states are freed from the list */
}

uint64_t mg_podstate_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

mg_podstate_t *mg_podstate_get(const char *service, const char *pod)
{
    pthread_mutex_lock(&g_lock);
    mg_podstate_t key;
    key.service = (char *)service;
    key.pod = (char *)pod;
    mg_podstate_t *const *found = tfind(&key, &g_by_name, by_name);
    mg_podstate_t *ps = found ? *found : NULL;
    if (ps != NULL) {
        /* under the lock: the last unref, which frees, cannot run meanwhile */
        atomic_fetch_add_explicit(&ps->_refs, 1, memory_order_relaxed);
    } else if ((ps = aligned_alloc(64, sizeof(*ps))) != NULL) {
        memset(ps, 0, sizeof(*ps)); /* all-zero atomics are 0: UNCHECKED, not ejected */
        atomic_init(&ps->_refs, 1);
        ps->_magic = MG_PODSTATE_MAGIC;
        ps->service = strdup(service);
        ps->pod = strdup(pod);
        char sv[300], pv[300], labels[700];
        mg_stats_label_value(sv, sizeof(sv), service);
        mg_stats_label_value(pv, sizeof(pv), pod);
        snprintf(labels, sizeof(labels), "service=\"%s\",pod=\"%s\"", sv, pv);
        ps->stats = mg_stats_get(MG_STATS_POD, labels);
        if (ps->service == NULL || ps->pod == NULL || ps->stats == NULL ||
            tsearch(ps, &g_by_name, by_name) == NULL) {
            mg_stats_release(ps->stats);
            free(ps->service);
            free(ps->pod);
            free(ps);
            ps = NULL;
        } else {
            ps->next = g_states;
            if (g_states)
                g_states->_prev = ps;
            g_states = ps;
            g_count++;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return ps;
}

void mg_podstate_ref(mg_podstate_t *ps)
{
    assert(ps->_magic == MG_PODSTATE_MAGIC);
    atomic_fetch_add_explicit(&ps->_refs, 1, memory_order_relaxed);
}

/* Unlinks |ps| from the registry and frees it with its series; under g_lock. */
static void state_free(mg_podstate_t *ps)
{
    tdelete(ps, &g_by_name, by_name);
    if (ps->_prev)
        ps->_prev->next = ps->next;
    else
        g_states = ps->next;
    if (ps->next)
        ps->next->_prev = ps->_prev;
    g_count--;
    mg_stats_release(ps->stats);
    free(ps->service);
    free(ps->pod);
    ps->_magic = 0; /* a use after free now trips the magic check instead of reading garbage */
    free(ps);
}

void mg_podstate_unref(mg_podstate_t *ps)
{
    if (ps == NULL)
        return;
    assert(ps->_magic == MG_PODSTATE_MAGIC);
    /* Not the last reference: dropped without the lock. Release: this holder's uses of the
     * state happen before the free. */
    unsigned n = atomic_load_explicit(&ps->_refs, memory_order_relaxed);
    while (n > 1)
        if (atomic_compare_exchange_weak_explicit(&ps->_refs, &n, n - 1, memory_order_release,
                                                  memory_order_relaxed))
            return;
    /* Maybe the last: decided under the lock, where mg_podstate_get takes references (one may
     * have been taken since the load above: then this is not the last any more). */
    pthread_mutex_lock(&g_lock);
    if (atomic_fetch_sub_explicit(&ps->_refs, 1, memory_order_acq_rel) == 1)
        state_free(ps);
    pthread_mutex_unlock(&g_lock);
}

size_t mg_podstate_count(void)
{
    pthread_mutex_lock(&g_lock);
    size_t n = g_count;
    pthread_mutex_unlock(&g_lock);
    return n;
}

void mg_podstate_each(void (*fn)(void *ud, mg_podstate_t *ps), void *ud)
{
    pthread_mutex_lock(&g_lock);
    for (mg_podstate_t *ps = g_states; ps; ps = ps->next)
        if (!ps->retired)
            fn(ud, ps);
    pthread_mutex_unlock(&g_lock);
}

void mg_podstate_mark_current(mg_podstate_t *const *current, size_t n)
{
    pthread_mutex_lock(&g_lock);
    for (mg_podstate_t *ps = g_states; ps; ps = ps->next)
        ps->retired = true;
    for (size_t i = 0; i < n; i++)
        if (current[i])
            current[i]->retired = false, current[i]->routed = true;
    for (mg_podstate_t *ps = g_states; ps; ps = ps->next)
        atomic_store_explicit(&ps->stats->retired, ps->retired, memory_order_relaxed);
    pthread_mutex_unlock(&g_lock);
}

bool mg_podstate_in_routing(mg_podstate_t *ps)
{
    pthread_mutex_lock(&g_lock);
    bool in = ps->routed && !ps->retired;
    pthread_mutex_unlock(&g_lock);
    return in;
}

bool mg_podstate_is_retired(mg_podstate_t *ps)
{
    pthread_mutex_lock(&g_lock);
    bool retired = ps->retired;
    pthread_mutex_unlock(&g_lock);
    return retired;
}

bool mg_podstate_usable(const mg_podstate_t *ps, uint64_t now_ms)
{
    int h = atomic_load_explicit(&ps->health, memory_order_relaxed);
    if (h == MG_POD_HEALTH_UNKNOWN || h == MG_POD_HEALTH_UNHEALTHY)
        return false;
    return atomic_load_explicit(&ps->ejected_until_ms, memory_order_relaxed) <= now_ms;
}

void mg_podstate_set_health(mg_podstate_t *ps, mg_pod_health_t h)
{
    int old = atomic_exchange_explicit(&ps->health, (int)h, memory_order_relaxed);
    if (h == MG_POD_HEALTH_HEALTHY && old != MG_POD_HEALTH_HEALTHY)
        atomic_store_explicit(&ps->usable_since_ms, mg_podstate_now_ms(), memory_order_relaxed);
}

void mg_podstate_free_all(void)
{
    pthread_mutex_lock(&g_lock);
    tdestroy(g_by_name, keep_node);
    g_by_name = NULL;
    while (g_states) {
        mg_podstate_t *next = g_states->next;
        free(g_states->service);
        free(g_states->pod);
        free(g_states);
        g_states = next;
    }
    g_count = 0;
    pthread_mutex_unlock(&g_lock);
}
