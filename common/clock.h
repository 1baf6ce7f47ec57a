/*
 * common/clock.h - the monotonic clock in microseconds, the one time base that request
 * deadlines, upstream streams and feature lookups compare with each other.
 */
#ifndef MG_COMMON_CLOCK_H
#define MG_COMMON_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t mg_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif /* MG_COMMON_CLOCK_H */
