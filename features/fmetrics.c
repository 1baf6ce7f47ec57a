/*
 * features/fmetrics.c - lookup counters and their Prometheus exposition (see fmetrics.h).
 */
#include "features/fmetrics.h"

#include <event2/buffer.h>

static const char *const status_names[MG_FS_COUNT] = {"hit",         "miss", "timeout",
                                                      "unavailable", "none", "too_large"};
/* seconds; a local hit is in the first bucket, a Redis round trip in the next few */
static const double bounds[MG_FM_BUCKETS] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                             0.005,   0.01,   0.025,   0.05,   0.1,   0.5};
/* seconds; a timer on libevent's coarse clock (a 4 ms tick) would spread over all of them */
static const double late_bounds[MG_FM_LATE_BUCKETS] = {0.0001, 0.00025, 0.0005,
                                                       0.001,  0.002,   0.004};

const char *mg_fstatus_name(mg_fstatus_t s)
{
    return (unsigned)s < MG_FS_COUNT ? status_names[s] : "unknown";
}

/* Counts |us| in the histogram of upper bounds |b| (|nb| of them, then +Inf). */
static void observe(const double *b, size_t nb, atomic_ullong *bucket, atomic_ullong *sum_us,
                    atomic_ullong *count, int64_t us)
{
    size_t i = 0;
    while (i < nb && (double)us / 1e6 > b[i])
        i++;
    MG_FM_INC(bucket[i]);
    atomic_fetch_add_explicit(sum_us, (unsigned long long)(us < 0 ? 0 : us), memory_order_relaxed);
    MG_FM_INC(*count);
}

void mg_fmetrics_observe(mg_fmetrics_t *m, mg_fstatus_t s, int64_t us)
{
    MG_FM_INC(m->status[s]);
    if (s != MG_FS_NONE) /* else no lookup happened */
        observe(bounds, MG_FM_BUCKETS, m->lat_bucket, &m->lat_sum_us, &m->lat_count, us);
}

void mg_fmetrics_observe_late(mg_fmetrics_t *m, int64_t us)
{
    observe(late_bounds, MG_FM_LATE_BUCKETS, m->late_bucket, &m->late_sum_us, &m->late_count, us);
}

/* A Prometheus histogram: |counts| holds each bucket's own count (|nb| bounds, then +Inf). */
static void render_histogram(struct evbuffer *out, const char *name, const char *help,
                             const double *b, size_t nb, const unsigned long long *counts,
                             unsigned long long sum_us, unsigned long long count)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long cum = 0;
    for (size_t i = 0; i <= nb; i++) {
        cum += counts[i];
        if (i < nb)
            evbuffer_add_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, b[i], cum);
        else
            evbuffer_add_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, cum);
    }
    evbuffer_add_printf(out, "%s_sum %.6f\n%s_count %llu\n", name, (double)sum_us / 1e6, name,
                        count);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define SUM(field)                                                                                 \
    ({                                                                                             \
        unsigned long long s_ = 0;                                                                 \
        for (size_t i_ = 0; i_ < n; i_++)                                                          \
            s_ += LOAD(w[i_].field);                                                               \
        s_;                                                                                        \
    })

static double ratio(unsigned long long hit, unsigned long long all)
{
    return all ? (double)hit / (double)all : 0.0;
}

void mg_fmetrics_render(const mg_fmetrics_t *w, size_t n, const mg_fdb_metrics_t *db,
                        struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP modelgate_features_requests_total Requests to apps with "
                             "features, by outcome (x-modelgate-features).\n"
                             "# TYPE modelgate_features_requests_total counter\n");
    for (int s = 0; s < MG_FS_COUNT; s++)
        evbuffer_add_printf(out, "modelgate_features_requests_total{status=\"%s\"} %llu\n",
                            status_names[s], SUM(status[s]));
    unsigned long long lf = SUM(local_fresh), ls = SUM(local_stale), ln = SUM(local_negative),
                       la = SUM(local_absent);
    unsigned long long rl = SUM(redis_lookups), rh = SUM(redis_hit), rn = SUM(redis_negative),
                       rm = SUM(redis_miss), re = SUM(redis_error);
    unsigned long long dl = LOAD(db->lookups), dh = LOAD(db->hit), dm = LOAD(db->miss),
                       de = LOAD(db->error);
    evbuffer_add_printf(
        out,
        "# HELP modelgate_features_layer_total Lookups per layer and result (negative = a user "
        "known to have no features).\n"
        "# TYPE modelgate_features_layer_total counter\n"
        "modelgate_features_layer_total{layer=\"local\",result=\"hit\"} %llu\n"
        "modelgate_features_layer_total{layer=\"local\",result=\"stale\"} %llu\n"
        "modelgate_features_layer_total{layer=\"local\",result=\"negative\"} %llu\n"
        "modelgate_features_layer_total{layer=\"local\",result=\"miss\"} %llu\n"
        "modelgate_features_layer_total{layer=\"redis\",result=\"hit\"} %llu\n"
        "modelgate_features_layer_total{layer=\"redis\",result=\"negative\"} %llu\n"
        "modelgate_features_layer_total{layer=\"redis\",result=\"miss\"} %llu\n"
        "modelgate_features_layer_total{layer=\"redis\",result=\"error\"} %llu\n"
        "modelgate_features_layer_total{layer=\"mariadb\",result=\"hit\"} %llu\n"
        "modelgate_features_layer_total{layer=\"mariadb\",result=\"miss\"} %llu\n"
        "modelgate_features_layer_total{layer=\"mariadb\",result=\"error\"} %llu\n"
        "# HELP modelgate_features_hit_ratio Answered by the layer (hit or negative) / looked up "
        "in it, since start.\n"
        "# TYPE modelgate_features_hit_ratio gauge\n"
        "modelgate_features_hit_ratio{layer=\"local\"} %.6f\n"
        "modelgate_features_hit_ratio{layer=\"redis\"} %.6f\n"
        "modelgate_features_hit_ratio{layer=\"mariadb\"} %.6f\n",
        lf, ls, ln, la, rh, rn, rm, re, dh, dm, de, ratio(lf + ls + ln, lf + ls + ln + la),
        ratio(rh + rn, rl), ratio(dh + dm, dl));
    evbuffer_add_printf(out,
                        "# HELP modelgate_features_timeouts_total Requests that went on without "
                        "features because the app's budget passed.\n"
                        "# TYPE modelgate_features_timeouts_total counter\n"
                        "modelgate_features_timeouts_total %llu\n"
                        "# HELP modelgate_features_coalesced_total Lookups that joined one "
                        "already in flight for the same user (worker, then MariaDB).\n"
                        "# TYPE modelgate_features_coalesced_total counter\n"
                        "modelgate_features_coalesced_total{layer=\"worker\"} %llu\n"
                        "modelgate_features_coalesced_total{layer=\"mariadb\"} %llu\n"
                        "# TYPE modelgate_features_redis_up gauge\n"
                        "modelgate_features_redis_up %llu\n"
                        "# TYPE modelgate_features_redis_connects_total counter\n"
                        "modelgate_features_redis_connects_total %llu\n"
                        "# TYPE modelgate_features_redis_disconnects_total counter\n"
                        "modelgate_features_redis_disconnects_total %llu\n"
                        "# HELP modelgate_features_redis_connect_failures_total Connection "
                        "attempts to Redis that failed (refused, timed out, or an error reply "
                        "to AUTH, SELECT or PING).\n"
                        "# TYPE modelgate_features_redis_connect_failures_total counter\n"
                        "modelgate_features_redis_connect_failures_total %llu\n"
                        "# HELP modelgate_features_redis_reply_timeouts_total Connections to "
                        "Redis dropped because a reply was due for longer than "
                        "redis.reply_timeout_ms (Redis stopped, hung or overloaded).\n"
                        "# TYPE modelgate_features_redis_reply_timeouts_total counter\n"
                        "modelgate_features_redis_reply_timeouts_total %llu\n"
                        "# TYPE modelgate_features_writeback_total counter\n"
                        "modelgate_features_writeback_total{result=\"ok\"} %llu\n"
                        "modelgate_features_writeback_total{result=\"error\"} %llu\n"
                        "modelgate_features_writeback_total{result=\"superseded\"} %llu\n"
                        "# TYPE modelgate_features_rows_written_total counter\n"
                        "modelgate_features_rows_written_total %llu\n"
                        "# TYPE modelgate_features_rows_deleted_total counter\n"
                        "modelgate_features_rows_deleted_total %llu\n"
                        "# HELP modelgate_features_mariadb_refused_total Redis misses that went "
                        "on without asking MariaDB: the worker had mariadb.max_waiting lookups "
                        "waiting on it.\n"
                        "# TYPE modelgate_features_mariadb_refused_total counter\n"
                        "modelgate_features_mariadb_refused_total %llu\n",
                        SUM(status[MG_FS_TIMEOUT]), SUM(coalesced), LOAD(db->coalesced), ({
                            unsigned long long up = 0;
                            for (size_t i = 0; i < n; i++)
                                up += (unsigned long long)atomic_load(&w[i].redis_up);
                            up;
                        }),
                        SUM(redis_connects), SUM(redis_disconnects), SUM(redis_connect_failures),
                        SUM(redis_reply_timeouts), LOAD(db->writeback_ok),
                        LOAD(db->writeback_error), LOAD(db->writeback_superseded),
                        LOAD(db->rows_written), LOAD(db->rows_deleted),
                        SUM(db_refused));
    unsigned long long lat[MG_FM_BUCKETS + 1], late[MG_FM_LATE_BUCKETS + 1];
    for (size_t b = 0; b <= MG_FM_BUCKETS; b++)
        lat[b] = SUM(lat_bucket[b]);
    for (size_t b = 0; b <= MG_FM_LATE_BUCKETS; b++)
        late[b] = SUM(late_bucket[b]);
    render_histogram(out, "modelgate_features_lookup_seconds",
                     "Time a request waited for its features.", bounds, MG_FM_BUCKETS, lat,
                     SUM(lat_sum_us), SUM(lat_count));
    render_histogram(out, "modelgate_features_timeout_late_seconds",
                     "How long after its features budget ended a timed-out request went on.",
                     late_bounds, MG_FM_LATE_BUCKETS, late, SUM(late_sum_us), SUM(late_count));
}
