/*
 * tests/unit/test_reqlog.c - access log: JSON shape and escaping (every line must parse), the
 * truncation bound, the writer thread (no line lost or duplicated under concurrency), rotation,
 * queue overflow accounting, and open failures.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "capture.h"
#include "gateway/reqlog.h"
#include "sample_rec.h"
#include "thread_policy.h"

#define MARK "...[truncated]"

/* Parses one formatted line; fails the test unless it is exactly one JSON object plus '\n'. */
static json_t *parse_line(const char *buf, size_t n)
{
    assert_true(n > 1);
    assert_int_equal(buf[n - 1], '\n');
    assert_null(memchr(buf, '\n', n - 1));
    json_error_t err;
    json_t *j = json_loadb(buf, n, 0, &err);
    if (j == NULL)
        fail_msg("invalid JSON (%s at %d): %s", err.text, err.position, buf);
    assert_true(json_is_object(j));
    return j;
}

static json_t *format_parse(const mg_reqlog_rec_t *r, size_t cap, char *buf)
{
    size_t n = mg_reqlog_format(r, buf, cap);
    assert_true(n > 0 && n < cap);
    assert_int_equal(strlen(buf), n);
    return parse_line(buf, n);
}

static void assert_str_field(json_t *j, const char *key, const char *want)
{
    json_t *v = json_object_get(j, key);
    assert_non_null(v);
    if (want == NULL) {
        assert_true(json_is_null(v));
        return;
    }
    assert_true(json_is_string(v));
    assert_int_equal(json_string_length(v), strlen(want));
    assert_memory_equal(json_string_value(v), want, strlen(want));
}

static void format_every_field(void **state)
{
    (void)state;
    static const char *const order[] = {
        "time",      "id",         "request_id", "client",      "proto",    "method", "host",
        "path",      "app",        "env",         "service",  "pod",    "features",
        "features_hash", "status", "req_bytes", "resp_bytes", "fallback", "retries",
        "upstream_us", "total_us", "error",
    };
    char buf[8192];
    mg_reqlog_rec_t r = mg_test_sample_rec();
    r.error = "upstream_timeout";
    r.fallback = true;
    r.retries = 2;
    r.features = "hit";
    r.features_hash = "9f3a0c11";
    json_t *j = format_parse(&r, sizeof(buf), buf);

    /* jansson keeps insertion order: the keys must come in the documented order */
    size_t i = 0;
    for (void *it = json_object_iter(j); it; it = json_object_iter_next(j, it), i++) {
        assert_true(i < sizeof(order) / sizeof(order[0]));
        assert_string_equal(json_object_iter_key(it), order[i]);
    }
    assert_int_equal(i, sizeof(order) / sizeof(order[0]));

    assert_str_field(j, "time", "2023-11-14T22:13:20.123456Z");
    assert_str_field(j, "id", "00112233445566770000000000000001");
    assert_str_field(j, "request_id", "r-1");
    assert_str_field(j, "client", "127.0.0.1:5555");
    assert_str_field(j, "proto", "h2");
    assert_str_field(j, "method", "POST");
    assert_str_field(j, "host", "digits-production.example");
    assert_str_field(j, "path", "/v1/predict");
    assert_str_field(j, "app", "digits");
    assert_str_field(j, "env", "production");
    assert_str_field(j, "service", "digits-production-v3");
    assert_str_field(j, "pod", "10.0.0.7:8500");
    assert_str_field(j, "error", "upstream_timeout");
    assert_str_field(j, "features", "hit");
    assert_str_field(j, "features_hash", "9f3a0c11");
    assert_true(json_is_true(json_object_get(j, "fallback")));
    assert_int_equal(json_integer_value(json_object_get(j, "retries")), 2);
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
    assert_int_equal(json_integer_value(json_object_get(j, "req_bytes")), 84);
    assert_int_equal(json_integer_value(json_object_get(j, "upstream_us")), 1234);
    assert_int_equal(json_integer_value(json_object_get(j, "resp_bytes")), 95);
    assert_int_equal(json_integer_value(json_object_get(j, "total_us")), 2345);
    assert_null(json_object_get(j, "peer")); /* written only when the client is another's */
    json_decref(j);

    /* behind trusted proxies: the connection's address follows, last */
    r.client = "203.0.113.9";
    r.peer = "[2001:db8::1]:443";
    j = format_parse(&r, sizeof(buf), buf);
    assert_str_field(j, "client", "203.0.113.9");
    assert_str_field(j, "peer", "[2001:db8::1]:443");
    assert_non_null(
        strstr(buf, ",\"error\":\"upstream_timeout\",\"peer\":\"[2001:db8::1]:443\"}\n"));
    json_decref(j);
    r.client = "127.0.0.1:5555";
    r.peer = NULL;

    /* jansson stops at INT64_MAX, so the uint64 extreme is checked in the text */
    r.resp_bytes = UINT64_MAX;
    assert_true(mg_reqlog_format(&r, buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, "\"resp_bytes\":18446744073709551615,"));
    r.total_us = INT64_MIN;
    r.upstream_us = INT64_MAX;
    r.retries = UINT_MAX;
    r.status = 0;
    r.fallback = false;
    assert_true(mg_reqlog_format(&r, buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, ",\"status\":0,"));
    assert_non_null(strstr(buf, ",\"fallback\":false,\"retries\":4294967295,"));
    assert_non_null(strstr(buf, ",\"upstream_us\":9223372036854775807,"));
    assert_non_null(strstr(buf, ",\"total_us\":-9223372036854775808,"));

    /* the widest numbers together: the previous formatter cut this run at 63 bytes, which made
     * the line invalid JSON (...,"resp_by,"fallback":...) */
    r.status = INT_MIN;
    r.req_bytes = UINT64_MAX;
    r.resp_bytes = UINT64_MAX;
    assert_true(mg_reqlog_format(&r, buf, sizeof(buf)) > 0);
    assert_non_null(strstr(buf, ",\"status\":-2147483648,\"req_bytes\":18446744073709551615,"
                                "\"resp_bytes\":18446744073709551615,\"fallback\":false,"));
}

static void format_nulls_and_edges(void **state)
{
    (void)state;
    char buf[8192];
    mg_reqlog_rec_t r = {.time_us = -1, .upstream_us = -1, .total_us = 0};
    json_t *j = format_parse(&r, sizeof(buf), buf);
    /* microseconds are floored, so a time before the epoch still prints a valid timestamp */
    assert_str_field(j, "time", "1969-12-31T23:59:59.999999Z");
    static const char *const strs[] = {"request_id", "client", "proto",   "method", "host", "path",
                                       "app",        "env",    "service", "pod",    "error"};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        assert_true(json_is_null(json_object_get(j, strs[i])));
    assert_true(json_is_null(json_object_get(j, "upstream_us")));
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 0);
    json_decref(j);

    r.time_us = 0;
    r.upstream_us = 0; /* 0 is a measurement, not "none" */
    r.path = "";
    j = format_parse(&r, sizeof(buf), buf);
    assert_str_field(j, "time", "1970-01-01T00:00:00.000000Z");
    assert_int_equal(json_integer_value(json_object_get(j, "upstream_us")), 0);
    assert_str_field(j, "path", "");
    json_decref(j);
}

static void format_escapes(void **state)
{
    (void)state;
    char buf[8192];
    mg_reqlog_rec_t r = mg_test_sample_rec();
    r.path = "/a\"b\\c\nd\te\x01\x1f\x7f/";
    r.host = "caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80"; /* é € 😀: valid, kept as is */
    /* invalid: lone 0xff, truncated 2-byte, overlong '/', UTF-16 surrogate, above U+10FFFF */
    r.method = "a\xff"
               "b\xc3"
               "c\xc0\xaf"
               "d\xed\xa0\x80"
               "e\xf4\x90\x80\x80"
               "f";
    r.client = "\xe2\x82"; /* sequence cut by the end of the string */
    json_t *j = format_parse(&r, sizeof(buf), buf);
    assert_str_field(j, "path", "/a\"b\\c\nd\te\x01\x1f\x7f/");
    assert_str_field(j, "host", "caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80");
#define RC "\xef\xbf\xbd" /* U+FFFD in UTF-8: one per invalid byte */
    assert_str_field(j, "method", "a" RC "b" RC "c" RC RC "d" RC RC RC "e" RC RC RC RC "f");
    assert_str_field(j, "client", RC RC);
    json_decref(j);
    /* control characters take the \u00XX form; no raw control byte reaches the file */
    assert_non_null(strstr(buf, "c\\u000ad\\u0009e\\u0001\\u001f"));
    for (const char *p = buf; *p != '\n'; p++)
        assert_true((unsigned char)*p >= 0x20);
}

/* Water-filling: short fields stay whole, long ones are cut with the marker, the line fits. */
static void format_truncates(void **state)
{
    (void)state;
    char buf[8192];
    static char path[20000], host[10001], pod[3001];
    memset(path, 'a', sizeof(path) - 1);
    memset(host, '"', sizeof(host) - 1);            /* escapes to twice its size */
    for (size_t i = 0; i + 3 < sizeof(pod); i += 3) /* "€" repeated: cuts must not split it */
        memcpy(pod + i, "\xe2\x82\xac", 3);
    mg_reqlog_rec_t r = mg_test_sample_rec();
    r.path = path, r.host = host, r.pod = pod;
    r.peer = "10.0.0.2:40000"; /* never cut: it counts with the keys */
    r.service = "\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01"
                "\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01";
    json_t *j = format_parse(&r, sizeof(buf), buf);
    assert_true(strlen(buf) > sizeof(buf) - 200); /* the space is used, not wasted */

    const char *p = json_string_value(json_object_get(j, "path"));
    size_t pl = strlen(p);
    assert_true(pl > 1000 && pl < sizeof(buf));
    assert_string_equal(p + pl - strlen(MARK), MARK);
    for (size_t i = 0; i < pl - strlen(MARK); i++)
        assert_int_equal(p[i], 'a');
    const char *h = json_string_value(json_object_get(j, "host"));
    assert_string_equal(h + strlen(h) - strlen(MARK), MARK);
    const char *po = json_string_value(json_object_get(j, "pod"));
    assert_string_equal(po + strlen(po) - strlen(MARK), MARK);
    assert_int_equal((strlen(po) - strlen(MARK)) % 3, 0);
    /* fields that fit are untouched */
    assert_str_field(j, "request_id", "r-1");
    assert_str_field(j, "app", "digits");
    assert_int_equal(json_string_length(json_object_get(j, "service")), 40);
    assert_int_equal(json_integer_value(json_object_get(j, "total_us")), 2345);
    assert_str_field(j, "peer", "10.0.0.2:40000");
    json_decref(j);
}

/* The result is exact at the boundary, shrinks when cut, and is 0 only when nothing can fit. */
static void format_capacity(void **state)
{
    (void)state;
    char full[8192], buf[8192];
    mg_reqlog_rec_t r = mg_test_sample_rec();
    r.path = "/v1/predict/this-is-a-rather-long-path-that-can-be-cut";
    size_t n = mg_reqlog_format(&r, full, sizeof(full));
    assert_true(n > 0);
    assert_int_equal(mg_reqlog_format(&r, buf, n + 1), n); /* line + NUL */
    assert_string_equal(buf, full);
    size_t m = mg_reqlog_format(&r, buf, n); /* one byte short: a field is cut */
    assert_true(m > 0 && m < n);
    json_decref(parse_line(buf, m));
    assert_non_null(strstr(buf, MARK));
    assert_int_equal(mg_reqlog_format(&r, buf, 64), 0);
    assert_int_equal(mg_reqlog_format(&r, buf, 0), 0);
}

/* Random bytes in every field and random capacities: whatever comes out must parse. */
static void format_random_is_valid_json(void **state)
{
    (void)state;
    static const unsigned char alphabet[] = {'a',  '"',  '\\', '\n', 0x01, 0x7f, 0x80, 0xbf,
                                             0xc2, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xed, 0xa0,
                                             0xf0, 0x9f, 0x98, 0xf4, 0x90, 0xff, '/',  ' '};
    static char strs[11][600];
    char buf[8192];
    unsigned seed = 12345;
    for (int iter = 0; iter < 3000; iter++) {
        for (int f = 0; f < 11; f++) {
            size_t len = (size_t)(rand_r(&seed) % (iter % 10 == 0 ? 599 : 40));
            for (size_t i = 0; i < len; i++)
                strs[f][i] = (char)alphabet[rand_r(&seed) % sizeof(alphabet)];
            strs[f][len] = '\0';
        }
        mg_reqlog_rec_t r = {
            .time_us = (int64_t)rand_r(&seed) * 1000003,
            .request_id = strs[0],
            .client = strs[1],
            .proto = strs[2],
            .method = strs[3],
            .host = strs[4],
            .path = strs[5],
            .app = strs[6],
            .env = strs[7],
            .service = strs[8],
            .pod = strs[9],
            .error = strs[10],
            .status = rand_r(&seed) % 600,
            .upstream_us = rand_r(&seed) % 3 - 1,
        };
        size_t cap = iter % 2 ? sizeof(buf) : (size_t)(rand_r(&seed) % 2000) + 1;
        size_t n = mg_reqlog_format(&r, buf, cap);
        if (n == 0)
            continue; /* allowed only when even cut fields cannot fit */
        assert_true(n < cap);
        json_decref(parse_line(buf, n));
    }
}

/* ---------------------------------------------------------------- writer thread */

static char tmpdir[64];

static int tmp_setup(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/mg-test-reqlog-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int tmp_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *d = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            d = realloc(d, cap + 1);
            assert_non_null(d);
        }
        r = fread(d + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    fclose(f);
    d[n] = '\0';
    *len = n;
    return d;
}

/* Counts lines and checks each parses; |prefix| (if set) must start every request_id. */
static size_t check_file(const char *path, const char *prefix)
{
    size_t len, lines = 0;
    char *d = slurp(path, &len);
    if (d == NULL)
        return 0;
    for (char *p = d, *nl; p < d + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(d + len - p));
        assert_non_null(nl); /* no partial last line */
        json_t *j = parse_line(p, (size_t)(nl - p) + 1);
        if (prefix) {
            const char *id = json_string_value(json_object_get(j, "request_id"));
            assert_non_null(id);
            assert_memory_equal(id, prefix, strlen(prefix));
        }
        json_decref(j);
        lines++;
    }
    free(d);
    return lines;
}

static void path_in_tmp(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

enum { NTHREADS = 4, PER_THREAD = 2500 };

typedef struct {
    mg_reqlog_t *log;
    int id;
    int count;
} worker_arg_t;

static void *worker(void *p)
{
    worker_arg_t *a = p;
    char id[32];
    for (int i = 0; i < a->count; i++) {
        snprintf(id, sizeof(id), "t%d-%d", a->id, i);
        mg_reqlog_rec_t r = mg_test_sample_rec();
        r.id = NULL; /* the log assigns one */
        r.request_id = id;
        r.status = i;
        mg_reqlog_write(a->log, &r);
    }
    return NULL;
}

static void run_workers(mg_reqlog_t *log, int nthreads, int per_thread)
{
    pthread_t t[16];
    worker_arg_t a[16];
    for (int i = 0; i < nthreads; i++) {
        a[i] = (worker_arg_t){log, i, per_thread};
        assert_int_equal(pthread_create(&t[i], NULL, worker, &a[i]), 0);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
}

static void threads_write_every_line_once(void **state)
{
    (void)state;
    char path[128];
    path_in_tmp(path, sizeof(path), "access.log");
    mg_reqlog_t *log = mg_reqlog_open(path);
    assert_non_null(log);
    run_workers(log, NTHREADS, PER_THREAD);
    assert_int_equal(mg_reqlog_dropped(log), 0);
    mg_reqlog_close(log);

    assert_int_equal(check_file(path, "t"), NTHREADS * PER_THREAD);
    /* every (thread, i) exactly once */
    size_t len;
    char *d = slurp(path, &len);
    static unsigned char seen[NTHREADS][PER_THREAD];
    memset(seen, 0, sizeof(seen));
    static const char key[] = "\"request_id\":\"t";
    for (char *p = d, *nl; p < d + len; p = nl + 1) { /* line by line: strstr is O(n) each */
        nl = memchr(p, '\n', (size_t)(d + len - p));
        assert_non_null(nl);
        char *k = memmem(p, (size_t)(nl - p), key, sizeof(key) - 1);
        assert_non_null(k);
        int t, i;
        assert_int_equal(sscanf(k, "\"request_id\":\"t%d-%d\"", &t, &i), 2);
        assert_true(t >= 0 && t < NTHREADS && i >= 0 && i < PER_THREAD);
        seen[t][i]++;
    }
    for (int t = 0; t < NTHREADS; t++)
        for (int i = 0; i < PER_THREAD; i++)
            assert_int_equal(seen[t][i], 1);

    /* every line got its own id: one boot prefix, counters 0..N-1 each once */
    static unsigned char seq_seen[NTHREADS * PER_THREAD];
    memset(seq_seen, 0, sizeof(seq_seen));
    char boot[17] = "";
    static const char idkey[] = "\"id\":\"";
    for (char *p = d, *nl; p < d + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(d + len - p));
        char *k = memmem(p, (size_t)(nl - p), idkey, sizeof(idkey) - 1);
        assert_non_null(k);
        k += sizeof(idkey) - 1;
        assert_int_equal(strspn(k, "0123456789abcdef"), 32);
        if (boot[0] == '\0')
            memcpy(boot, k, 16);
        assert_memory_equal(k, boot, 16);
        unsigned long long seq = strtoull(k + 16, NULL, 16);
        assert_true(seq < NTHREADS * PER_THREAD);
        seq_seen[seq]++;
    }
    for (size_t i = 0; i < NTHREADS * PER_THREAD; i++)
        assert_int_equal(seq_seen[i], 1);
    free(d);
}

static void write_n(mg_reqlog_t *log, const char *id, int n)
{
    mg_reqlog_rec_t r = mg_test_sample_rec();
    r.request_id = id;
    for (int i = 0; i < n; i++)
        mg_reqlog_write(log, &r);
}

/* Waits (bounded) until the writer has put |want| lines into |path|. Counts newlines only: the
 * writer may be in the middle of a write(2), so the last line may still be partial. */
static void wait_lines(const char *path, size_t want)
{
    for (int i = 0; i < 5000; i++) {
        size_t len, lines = 0;
        char *d = slurp(path, &len);
        for (size_t k = 0; d && k < len; k++)
            lines += d[k] == '\n';
        free(d);
        if (lines >= want)
            return;
        usleep(1000);
    }
    fail_msg("%s: %zu lines expected within 5 s", path, want);
}

static void reopen_after_rename(void **state)
{
    (void)state;
    char path[128], rotated[128];
    path_in_tmp(path, sizeof(path), "rot.log");
    path_in_tmp(rotated, sizeof(rotated), "rot.log.1");
    mg_reqlog_t *log = mg_reqlog_open(path);
    assert_non_null(log);
    write_n(log, "old", 100);
    wait_lines(path, 100);
    assert_int_equal(rename(path, rotated), 0);
    mg_reqlog_reopen(log); /* what the SIGUSR1 handler calls */
    write_n(log, "new", 50);
    wait_lines(path, 50); /* the writer reopened without waiting for close */
    write_n(log, "new", 50);
    mg_reqlog_close(log);
    assert_int_equal(check_file(rotated, "old"), 100);
    assert_int_equal(check_file(path, "new"), 100);
}

/* A reopen that fails (directory gone) keeps writing to the old file, so no line is lost, and is
 * retried until it succeeds. */
static void reopen_failure_keeps_old_file(void **state)
{
    (void)state;
    char dir[128], path[128], moved[128], moved_path[128];
    path_in_tmp(dir, sizeof(dir), "d");
    path_in_tmp(moved, sizeof(moved), "d2");
    path_in_tmp(path, sizeof(path), "d/x.log");
    path_in_tmp(moved_path, sizeof(moved_path), "d2/x.log");
    assert_int_equal(mkdir(dir, 0755), 0);
    mg_reqlog_t *log = mg_reqlog_open(path);
    assert_non_null(log);
    write_n(log, "a", 10);
    assert_int_equal(rename(dir, moved), 0);
    mg_reqlog_reopen(log);
    write_n(log, "a", 10);
    wait_lines(moved_path, 20); /* the reopen failed, so they went to the old file */

    /* once the directory is back, the writer's retry (every second) opens the new file */
    assert_int_equal(mkdir(dir, 0755), 0);
    struct stat st;
    for (int i = 0; i < 500 && stat(path, &st) != 0; i++)
        usleep(10000);
    assert_int_equal(stat(path, &st), 0);
    write_n(log, "b", 10);
    mg_reqlog_close(log);
    assert_int_equal(check_file(moved_path, "a"), 20);
    assert_int_equal(check_file(path, "b"), 10);
}

/* The writer batches (every 10 ms at most): it runs as a background thread, so its wake-ups
 * do not preempt an event loop in the middle of its requests. */
static void writer_is_a_background_thread(void **state)
{
    (void)state;
    if (!mg_test_batch_allowed())
        skip(); /* this environment refuses SCHED_BATCH: nothing to check */
    char path[128];
    path_in_tmp(path, sizeof(path), "bg.log");
    mg_reqlog_t *log = mg_reqlog_open(path);
    assert_non_null(log);
    write_n(log, "a", 1);
    wait_lines(path, 1); /* the writer has run */
    assert_int_equal(mg_test_thread_policy("mg-reqlog", SCHED_BATCH), SCHED_BATCH);
    mg_reqlog_close(log);
}

static void open_missing_directory_fails(void **state)
{
    (void)state;
    char path[128];
    path_in_tmp(path, sizeof(path), "no/such/dir/access.log");
    assert_null(mg_reqlog_open(path));
    assert_null(mg_reqlog_open(""));
    assert_null(mg_reqlog_open(NULL));
}

/* Write errors (disk full) lose the batch, are reported, and never hang close. */
static void write_error_does_not_hang(void **state)
{
    (void)state;
    mg_reqlog_t *log = mg_reqlog_open("/dev/full");
    assert_non_null(log);
    write_n(log, "x", 100);
    mg_reqlog_close(log);
}

typedef struct {
    int fd;
    atomic_size_t lines;
} reader_arg_t;

static void *reader(void *p)
{
    reader_arg_t *a = p;
    char buf[65536];
    ssize_t n;
    while ((n = read(a->fd, buf, sizeof(buf))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        size_t k = 0;
        for (ssize_t i = 0; i < n; i++)
            k += buf[i] == '\n';
        atomic_fetch_add(&a->lines, k);
    }
    return NULL;
}

typedef struct {
    atomic_int batches;
    atomic_int lines;
} batch_count_t;

static void count_batch(void *ud, const char *lines, size_t len)
{
    batch_count_t *c = ud;
    if (len == 0)
        return; /* an idle tick */
    int n = 0;
    for (size_t i = 0; i < len; i++)
        n += lines[i] == '\n';
    atomic_fetch_add(&c->batches, 1);
    atomic_fetch_add(&c->lines, n);
}

/* Opens a log on a pipe whose read end (*|read_end|) nobody reads, with |sunk| as its sink,
 * writes |n| lines with a |pad_len|-byte path and waits until the writer has handed on every
 * one (to the sink, or dropped before it). */
static mg_reqlog_t *fill_log_on_unread_pipe(int *read_end, batch_count_t *sunk, int n,
                                            size_t pad_len)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", pfd[1]);
    mg_reqlog_t *log = mg_reqlog_open(path);
    assert_non_null(log);
    close(pfd[1]); /* the log holds its own descriptor of the pipe */
    *read_end = pfd[0];
    mg_reqlog_set_sink(log, count_batch, NULL, sunk);

    char *pad = malloc(pad_len + 1);
    assert_non_null(pad);
    memset(pad, 'p', pad_len);
    pad[pad_len] = '\0';
    mg_reqlog_rec_t r = mg_test_sample_rec();
    r.path = pad;
    for (int i = 0; i < n; i++)
        mg_reqlog_write(log, &r);
    free(pad); /* written lines are formatted copies */
    for (int i = 0; i < 3000 && atomic_load(&sunk->lines) + (int)mg_reqlog_dropped(log) < n; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&sunk->lines) + (int)mg_reqlog_dropped(log), n);
    return log;
}

/* A stuck file (a pipe nobody reads) fills the file stage's 64 MiB: further lines are dropped
 * from the file and counted, workers never block, and written + dropped == submitted once the
 * reader drains. The sink (the request log's spool) still gets every line: the stuck file
 * holds back only the thread that writes it. */
static void full_queue_drops_and_counts(void **state)
{
    (void)state;
    enum { N = 150000 }; /* ~700 bytes each: 100 MB, well past 64 MiB */
    int read_end;
    batch_count_t sunk = {0, 0};
    mg_reqlog_t *log = fill_log_on_unread_pipe(&read_end, &sunk, N, 399);

    /* Now read the pipe: every line is either read or dropped once the file thread caught up.
     * Close only after that, since it gives up on a file that takes longer than FILE_CLOSE_MS
     * (and the reader would then wait for an end that never comes): draining 64 MiB under
     * ASan, with other tests running, can take longer. The writer's last drops may come just
     * after the sink saw the last batch, so the count is read in the same loop. */
    reader_arg_t ra = {read_end, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader, &ra), 0);
    mg_reqlog_stats_t st;
    for (int i = 0; i < 3000; i++, usleep(10000)) {
        mg_reqlog_stats(log, &st);
        if (atomic_load(&ra.lines) + st.dropped == N)
            break;
    }
    assert_true(st.dropped > 0);
    assert_int_equal(atomic_load(&ra.lines) + st.dropped, N);
    mg_reqlog_close(log); /* nothing left to write: the pipe's end comes at once */
    pthread_join(t, NULL);
    close(read_end);
    assert_int_equal(atomic_load(&ra.lines) + st.dropped, N);
    /* the sink got far more than the stuck file took (with the file written on the writer's
     * thread, the sink got what the file took, no more) */
    assert_true(atomic_load(&sunk.lines) >= (int)atomic_load(&ra.lines) + N / 10);
}

/* When close gives up on a file that takes nothing, it still says every line the file lost:
 * the last "DROPPED" line's total is the whole count. Lines dropped after the once-a-second
 * report went unsaid when close returned before its final report. */
static struct {
    mg_reqlog_t *log; /* close leaves it to its blocked file thread, which the exit ends */
    uint64_t dropped; /* as counted before close */
} blocked;

static void fill_and_close_a_blocked_log(void)
{
    /* 16,000 lines of about 4.5 KB (72 MB, past the 64 MiB file queue) in well under the
     * second between two reports, so that drops come after the first report; the read end
     * stays open and unread, so the file thread stays blocked */
    int read_end;
    static batch_count_t sunk = {0, 0};
    mg_reqlog_t *log = fill_log_on_unread_pipe(&read_end, &sunk, 16000, 4399);
    blocked.log = log;
    mg_reqlog_close(log); /* gives up on the pipe after FILE_CLOSE_MS */
    /* The count to compare with is the final one: the writer hands the sink's last batch to
     * the file queue (and drops) after the sink saw it, so a count read before close can be
     * short. Close joined the writer, the only thread that drops, and left |log| to the file
     * thread, blocked for good on the unread pipe: its counts can be read and no longer move. */
    mg_reqlog_stats_t st;
    mg_reqlog_stats(log, &st);
    blocked.dropped = st.dropped;
}

static void close_on_a_blocked_file_says_every_drop(void **state)
{
    (void)state;
    static char out[16384];
    mg_test_capture_stderr(fill_and_close_a_blocked_log, out, sizeof(out));
    assert_true(blocked.dropped > 0);
    /* lines dropped before the sink ("the queue is full") and those the file could not take
     * ("is written slower") are said apart, each with its running total: the last totals of
     * both must add up to every line dropped */
    unsigned long long said[2] = {0, 0};
    for (const char *p = out; (p = strstr(p, "DROPPED ")) != NULL; p++) {
        unsigned long long n, total;
        assert_int_equal(sscanf(p, "DROPPED %llu access log lines (%llu in total)", &n, &total), 2);
        const char *eol = strchr(p, '\n');
        const char *slow = strstr(p, "is written slower");
        said[slow != NULL && (eol == NULL || slow < eol)] = total;
    }
    assert_true(said[1] > 0);
    assert_int_equal(said[0] + said[1], blocked.dropped);
}

/* The writer starts a batch at most every 10 ms (PACE_MS), so a burst of 1000 lines (a few ms of
 * formatting, under ASan too) reaches the file and the sink in a handful of batches: the first
 * line at once, the rest together, one more per 10 ms the burst took and per 256 KiB. When the
 * writer took whatever was queued each time a worker woke it, the same burst went out in
 * hundreds of batches (644-815 on two idle cores): under load, a wake-up, two context switches
 * and, with the request log in MariaDB, a spool fdatasync every few requests. */
static void burst_goes_out_in_few_batches(void **state)
{
    (void)state;
    char path[128];
    path_in_tmp(path, sizeof(path), "paced.log");
    unlink(path);
    mg_reqlog_t *log = mg_reqlog_open(path);
    assert_non_null(log);
    batch_count_t c = {0, 0};
    mg_reqlog_set_sink(log, count_batch, NULL, &c);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    write_n(log, "burst", 1000);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    wait_lines(path, 1000);
    mg_reqlog_close(log);
    size_t len;
    char *d = slurp(path, &len);
    free(d);
    unlink(path);
    long burst_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    long bound = 3 + burst_ms / 10 + (long)(len / (256 * 1024)); /* one spare: a spurious wake */
    assert_int_equal(atomic_load(&c.lines), 1000);
    int batches = atomic_load(&c.batches);
    if (batches > bound)
        fail_msg("1000 lines (%zu bytes, written in %ld ms) went out in %d batches, expected at "
                 "most %ld",
                 len, burst_ms, batches, bound);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(format_every_field),
        cmocka_unit_test(format_nulls_and_edges),
        cmocka_unit_test(format_escapes),
        cmocka_unit_test(format_truncates),
        cmocka_unit_test(format_capacity),
        cmocka_unit_test(format_random_is_valid_json),
        cmocka_unit_test(threads_write_every_line_once),
        cmocka_unit_test(reopen_after_rename),
        cmocka_unit_test(reopen_failure_keeps_old_file),
        cmocka_unit_test(writer_is_a_background_thread),
        cmocka_unit_test(open_missing_directory_fails),
        cmocka_unit_test(write_error_does_not_hang),
        cmocka_unit_test(full_queue_drops_and_counts),
        cmocka_unit_test(close_on_a_blocked_file_says_every_drop),
        cmocka_unit_test(burst_goes_out_in_few_batches),
    };
    return cmocka_run_group_tests(tests, tmp_setup, tmp_teardown);
}
