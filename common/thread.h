/*
 * common/thread.h - how the gateway's helper threads ask the kernel to treat them.
 */
#ifndef MG_COMMON_THREAD_H
#define MG_COMMON_THREAD_H

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

/*
 * Makes the calling thread a background one (Linux SCHED_BATCH): it still gets its fair share
 * of the CPU, but waking up does not preempt the thread running there. For threads that batch
 * their work (the access log's writer, the request log's database thread), so that their
 * wake-ups wait for an event loop to go idle instead of cutting into its requests. Best effort:
 * a thread under a real-time policy is left as it is, and a refusal (a seccomp filter) is
 * logged at info and leaves the thread as it was. True when the thread is now SCHED_BATCH.
 */
bool mg_thread_background(void);

/* pthread_cond_init on CLOCK_MONOTONIC, so that a wall-clock step does not stretch a timed wait;
 * false when it failed. */
bool mg_thread_cond_init(pthread_cond_t *c);

/* |ms| from now on |clock|: the deadline of a timed wait (CLOCK_MONOTONIC for a condvar made
 * by mg_thread_cond_init, CLOCK_REALTIME for pthread_timedjoin_np). */
struct timespec mg_thread_deadline(clockid_t clock, unsigned ms);

/* Joins |t| if it ends within |ms|; false when it did not (it is left running: for a thread
 * stuck in a blocking call at shutdown, whose process is about to exit). */
bool mg_thread_join_within(pthread_t t, unsigned ms);

#endif /* MG_COMMON_THREAD_H */
