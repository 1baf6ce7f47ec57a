/*
 * tests/unit/thread_policy.h - the scheduling policy of one of this process's threads, found by
 * name (/proc/self/task/TID/comm), for the tests of the background threads (common/thread.h).
 */
#ifndef MG_TESTS_THREAD_POLICY_H
#define MG_TESTS_THREAD_POLICY_H

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The policy of the thread named |name| (SCHED_OTHER, SCHED_BATCH, ...), -1 when there is
 * none; waits up to a second for it to appear and to set its policy to |want|. */
static inline int mg_test_thread_policy(const char *name, int want)
{
    int policy = -1;
    for (int tries = 0; tries < 100 && policy != want; tries++) {
        if (tries)
            usleep(10000);
        policy = -1;
        DIR *d = opendir("/proc/self/task");
        if (d == NULL)
            return -1;
        for (struct dirent *e; policy < 0 && (e = readdir(d)) != NULL;) {
            char path[300], comm[64] = "";
            snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
            FILE *f = fopen(path, "r");
            if (f == NULL)
                continue;
            if (fgets(comm, sizeof(comm), f) != NULL && strcspn(comm, "\n") == strlen(name) &&
                strncmp(comm, name, strlen(name)) == 0)
                policy = sched_getscheduler((pid_t)atoi(e->d_name));
            fclose(f);
        }
        closedir(d);
    }
    return policy;
}

/* Can this process put a thread under SCHED_BATCH? (A seccomp filter may refuse it; the
 * tests then skip rather than fail.) */
static inline void *mg_test_batch_probe(void *ok)
{
    struct sched_param sp = {.sched_priority = 0};
    *(bool *)ok = pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp) == 0;
    return NULL;
}

static inline bool mg_test_batch_allowed(void)
{
    bool ok = false;
    pthread_t t;
    if (pthread_create(&t, NULL, mg_test_batch_probe, &ok) != 0)
        return false;
    pthread_join(t, NULL);
    return ok;
}

#endif
