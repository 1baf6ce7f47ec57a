/*
 * common/thread.c - background scheduling for helper threads (see thread.h).
 */
#include "common/thread.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

bool mg_thread_background(void)
{
#ifdef SCHED_BATCH
    int policy;
    struct sched_param sp;
    /* a process run under a real-time policy keeps it: batch would rank these threads below
     * its workers, which could starve them */
    if (pthread_getschedparam(pthread_self(), &policy, &sp) != 0 || policy != SCHED_OTHER)
        return false;
    sp.sched_priority = 0;
    int rc = pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
    if (rc == 0)
        return true;
    MG_LOG(MG_LOG_INFO, "thread",
           "cannot make a log thread a background one (SCHED_BATCH): %s; it stays a normal "
           "thread (a seccomp filter without sched_setscheduler?)",
           strerror(rc));
#endif
    return false;
}

bool mg_thread_cond_init(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return false;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
    return rc == 0;
}

struct timespec mg_thread_deadline(clockid_t clock, unsigned ms)
{
    struct timespec dl;
    clock_gettime(clock, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000;
    dl.tv_sec += dl.tv_nsec / 1000000000, dl.tv_nsec %= 1000000000;
    return dl;
}

bool mg_thread_join_within(pthread_t t, unsigned ms)
{
    struct timespec dl = mg_thread_deadline(CLOCK_REALTIME, ms); /* pthread_timedjoin_np's */
    return pthread_timedjoin_np(t, NULL, &dl) == 0;
}
