/*
 * routing/podstate.c - the process-wide registry of pod states (see podstate.h).
 */
#include "routing/podstate.h"

#include <pthread.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_podstate_t *g_states;
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
    if (ps == NULL && (ps = aligned_alloc(64, sizeof(*ps))) != NULL) {
        memset(ps, 0, sizeof(*ps)); /* all-zero atomics are 0: UNCHECKED, not ejected */
        ps->service = strdup(service);
        ps->pod = strdup(pod);
        char sv[300], pv[300], labels[700];
        mg_stats_label_value(sv, sizeof(sv), service);
        mg_stats_label_value(pv, sizeof(pv), pod);
        snprintf(labels, sizeof(labels), "service=\"%s\",pod=\"%s\"", sv, pv);
        ps->stats = mg_stats_get(MG_STATS_POD, labels);
        if (ps->service == NULL || ps->pod == NULL || ps->stats == NULL ||
            tsearch(ps, &g_by_name, by_name) == NULL) {
            free(ps->service);
            free(ps->pod);
            free(ps);
            ps = NULL;
        } else {
            ps->next = g_states;
            g_states = ps;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return ps;
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
    pthread_mutex_unlock(&g_lock);
}
