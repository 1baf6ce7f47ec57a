/*
 * common/thread.c - background scheduling for helper threads (see thread.h).
 */
#include "common/thread.h"

#include <pthread.h>
#include <sched.h>

void mg_thread_background(void)
{
#ifdef SCHED_BATCH
    struct sched_param sp = {.sched_priority = 0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
}
