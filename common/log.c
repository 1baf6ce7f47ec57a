#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

mg_log_level_t mg_log_level = MG_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void mg_log_emit(mg_log_level_t lvl, const char *mod, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[lvl], mod);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len); /* one write: lines never interleave */
    (void)w;
}

int mg_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

static long long mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec ? (long long)ts.tv_sec : 1; /* 0 means "never" in the limiters */
}

bool mg_log_limit_every(mg_log_limit_t *l, unsigned period_s, unsigned long *suppressed)
{
    long long now = mono_s();
    if (l->_last_s != 0 && now - l->_last_s < (long long)(period_s ? period_s : 1)) {
        l->_suppressed++;
        return false;
    }
    l->_last_s = now;
    *suppressed = l->_suppressed;
    l->_suppressed = 0;
    return true;
}

bool mg_log_limit_pass(mg_log_limit_t *l, unsigned long *suppressed)
{
    return mg_log_limit_every(l, 1, suppressed);
}

bool mg_log_cause_pass(mg_log_cause_t *l, const char *cause, unsigned period_s,
                       unsigned long *repeats)
{
    long long now = mono_s();
    if (l->_last_s != 0 && strncmp(l->_last, cause, sizeof(l->_last) - 1) == 0) {
        if (now - l->_last_s < (long long)(period_s ? period_s : 1)) {
            l->_repeats++;
            return false;
        }
        *repeats = l->_repeats;
    } else {
        snprintf(l->_last, sizeof(l->_last), "%s", cause);
        *repeats = 0;
    }
    l->_last_s = now;
    l->_repeats = 0;
    return true;
}

void mg_log_cause_reset(mg_log_cause_t *l)
{
    l->_last[0] = '\0';
    l->_last_s = 0;
    l->_repeats = 0;
}

const char *mg_log_repeats(char *buf, size_t cap, unsigned long repeats)
{
    if (repeats == 0)
        snprintf(buf, cap, "%s", "");
    else
        snprintf(buf, cap, " (%lu more since the last line)", repeats);
    return buf;
}
