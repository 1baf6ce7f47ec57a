/*
 * tests/unit/test_healthcheck.c - the active health checker against real servers, started as
 * child processes on free 127.0.0.1 ports:
 *   tests/e2e/backend.py     HTTP/1.1 and h2c; /health follows a flag file (--health-file),
 *                            /slow?ms=N answers late;
 *   nghttpd                  h2c from a docroot (file present: 200, removed: 404);
 *   modelgate-runtime        /readyz (503 until a model is loaded) and /v1/status versions;
 * plus, in this process, a listener that never accepts (connects, never answers) and a reserved
 * port nobody listens on (refused).
 *
 * Environment (set by tests/CMakeLists.txt): MG_BACKEND_PY, MG_RUNTIME_BIN, MG_TEST_MODELS.
 * A missing one fails the test, never skips it. Every wait is bounded; every child is started
 * with PR_SET_PDEATHSIG (it dies with this process, even on a crash) and is stopped by its pid in
 * the teardown, which CMocka runs after a failed test too.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/log.h"
#include "routing/healthcheck.h"

#define MAX_KIDS 4
#define MAX_PORTS 4
#define WAIT_MS 8000 /* upper bound of any state wait; a pass takes far less */

typedef struct fix {
    struct event_base *base;
    mg_hc_t *hc;
    char dir[64]; /* private temp directory: logs, flag files, docroot, models */
    pid_t kids[MAX_KIDS];
    char kid_log[MAX_KIDS][128];
    size_t nkids;
    char port_files[MAX_PORTS][96]; /* our port reservations, removed at teardown */
    size_t nports;
    int never_answers_fd; /* a listener that never accepts, or -1 */
    /* what the callback saw */
    unsigned changes;
    char last_pod[MG_HC_MAX_NAME + 1];
    mg_hc_state_t last_state;
    char last_reason[256];
    bool unwatch_in_cb; /* the callback unwatches the pod it reports */
    bool free_in_cb;    /* the callback frees the checker */
} fix_t;

/* libevent arms a timer from its loop's cached clock, which may be a few ms older than a
 * reading taken just before: "at least D ms" is checked as D - CLOCK_SLACK_MS */
#define CLOCK_SLACK_MS 20

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *env_or_fail(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        fail_msg("%s is not set (tests/CMakeLists.txt sets it; run through ctest)", name);
    return v;
}

static void on_change(void *ud, const char *pod, mg_hc_state_t state, const char *reason)
{
    fix_t *f = ud;
    f->changes++;
    snprintf(f->last_pod, sizeof(f->last_pod), "%s", pod);
    f->last_state = state;
    snprintf(f->last_reason, sizeof(f->last_reason), "%s", reason);
    if (f->unwatch_in_cb)
        mg_hc_unwatch(f->hc, pod);
    if (f->free_in_cb) {
        mg_hc_free(f->hc);
        f->hc = NULL;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* ports: the scheme of tests/e2e/conftest.py free_port(), so parallel tests never collide   */

static void port_range(int *lo, int *hi)
{
    int eph_lo = 32768, eph_hi = 60999;
    FILE *fp = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (fp) {
        if (fscanf(fp, "%d %d", &eph_lo, &eph_hi) != 2)
            eph_lo = 32768;
        fclose(fp);
    }
    *hi = eph_lo; /* below the ephemeral range: no outgoing connection can take it meanwhile */
    *lo = eph_lo - 12000 > 1024 ? eph_lo - 12000 : 1024;
}

/* Takes the reservation file of |port| (shared with the e2e harness); false if someone has it. */
static bool reserve_port(fix_t *f, int port)
{
    char dir[64], path[96];
    snprintf(dir, sizeof(dir), "/tmp/modelgate-test-ports-%d", (int)getuid());
    mkdir(dir, 0755);
    snprintf(path, sizeof(path), "%s/%d", dir, port);
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            dprintf(fd, "%d", (int)getpid());
            close(fd);
            assert_true(f->nports < MAX_PORTS);
            snprintf(f->port_files[f->nports++], sizeof(f->port_files[0]), "%s", path);
            return true;
        }
        FILE *fp = fopen(path, "r");
        int owner = 0;
        if (fp == NULL || fscanf(fp, "%d", &owner) != 1) {
            if (fp)
                fclose(fp);
            return false; /* being written right now */
        }
        fclose(fp);
        if (owner == getpid() || kill(owner, 0) == 0 || errno != ESRCH)
            return false;
        unlink(path); /* stale: its owner died */
    }
    return false;
}

static int free_port(fix_t *f)
{
    int lo, hi;
    port_range(&lo, &hi);
    for (int i = 0; i < 500; i++) {
        int port = lo + rand() % (hi - lo);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
        close(fd);
        if (ok && reserve_port(f, port))
            return port;
    }
    fail_msg("no free loopback port");
    return -1;
}

static struct sockaddr_in loopback(int port)
{
    return (struct sockaddr_in){.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
}

/* ---------------------------------------------------------------------------------------- */
/* children                                                                                 */

/* Starts |argv| with stdout and stderr in <dir>/<logname>.log; it dies with this process. */
static pid_t spawn(fix_t *f, const char *logname, char *const argv[])
{
    assert_true(f->nkids < MAX_KIDS);
    char *log = f->kid_log[f->nkids];
    snprintf(log, sizeof(f->kid_log[0]), "%s/%s.log", f->dir, logname);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127); /* the parent is already gone */
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    f->kids[f->nkids++] = pid;
    return pid;
}

static void dump_logs(const fix_t *f)
{
    for (size_t i = 0; i < f->nkids; i++) {
        char buf[4096];
        FILE *fp = fopen(f->kid_log[i], "r");
        size_t n = fp ? fread(buf, 1, sizeof(buf) - 1, fp) : 0;
        buf[n] = '\0';
        if (fp)
            fclose(fp);
        fprintf(stderr, "---- %s ----\n%s\n", f->kid_log[i], buf);
    }
}

static bool log_contains(const fix_t *f, size_t kid, const char *needle)
{
    char buf[65536];
    FILE *fp = fopen(f->kid_log[kid], "r");
    size_t n = fp ? fread(buf, 1, sizeof(buf) - 1, fp) : 0;
    buf[n] = '\0';
    if (fp)
        fclose(fp);
    return strstr(buf, needle) != NULL;
}

/* Waits (blocking: the checker's loop is not running) until 127.0.0.1:|port| accepts. */
static void wait_port(fix_t *f, int port)
{
    int64_t end = now_ms() + 10000;
    while (now_ms() < end) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin = loopback(port);
        int ok = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
        close(fd);
        if (ok)
            return;
        for (size_t i = 0; i < f->nkids; i++)
            if (waitpid(f->kids[i], NULL, WNOHANG) == f->kids[i]) {
                f->kids[i] = -1;
                dump_logs(f);
                fail_msg("a child exited before it listened on port %d", port);
            }
        usleep(20000);
    }
    dump_logs(f);
    fail_msg("nothing listens on 127.0.0.1:%d after 10 s", port);
}

static void stop_kids(fix_t *f)
{
    for (size_t i = 0; i < f->nkids; i++)
        if (f->kids[i] > 0)
            kill(f->kids[i], SIGTERM);
    int64_t end = now_ms() + 5000;
    for (size_t i = 0; i < f->nkids; i++) {
        while (f->kids[i] > 0) {
            if (waitpid(f->kids[i], NULL, WNOHANG) == f->kids[i]) {
                f->kids[i] = -1;
            } else if (now_ms() > end) {
                kill(f->kids[i], SIGKILL);
                waitpid(f->kids[i], NULL, 0);
                f->kids[i] = -1;
            } else {
                usleep(10000);
            }
        }
    }
    f->nkids = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the loop                                                                                 */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until |pod| is in |want| or |ms| pass; true when it got there. */
static bool run_until_state(fix_t *f, const char *pod, mg_hc_state_t want, int ms)
{
    struct event *tick = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 20000};
    event_add(tick, &tv);
    int64_t end = now_ms() + ms;
    while (f->hc && mg_hc_state(f->hc, pod) != want && now_ms() < end)
        event_base_loop(f->base, EVLOOP_ONCE);
    event_free(tick);
    return f->hc && mg_hc_state(f->hc, pod) == want;
}

static void wait_state(fix_t *f, const char *pod, mg_hc_state_t want)
{
    if (!run_until_state(f, pod, want, WAIT_MS)) {
        dump_logs(f);
        fail_msg("pod %s: not %s after %d ms (state %s; last callback: %s, \"%s\")", pod,
                 mg_hc_state_name(want), WAIT_MS,
                 f->hc ? mg_hc_state_name(mg_hc_state(f->hc, pod)) : "(freed)",
                 mg_hc_state_name(f->last_state), f->last_reason);
    }
}

/* Runs the loop for |ms| whatever happens. */
static void run_for(fix_t *f, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

static mg_hc_conf_t conf(const char *path, unsigned healthy, unsigned unhealthy)
{
    return (mg_hc_conf_t){.path = path,
                          .interval_ms = 100,
                          .timeout_ms = 1000,
                          .healthy_threshold = healthy,
                          .unhealthy_threshold = unhealthy};
}

static void watch(fix_t *f, const char *pod, int port, mg_upstream_proto_t proto,
                  const mg_hc_conf_t *c)
{
    struct sockaddr_in sin = loopback(port);
    assert_int_equal(mg_hc_watch(f->hc, pod, (struct sockaddr *)&sin, sizeof(sin), proto, c),
                     MG_OK);
}

static void pod_name(char *buf, size_t cap, int port)
{
    snprintf(buf, cap, "127.0.0.1:%d", port);
}

/* backend.py on a free port; |health_file| may be NULL. Returns the port. */
static int start_backend(fix_t *f, const char *proto, const char *health_file)
{
    int port = free_port(f);
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    char *argv[] = {"/usr/bin/python3",
                    (char *)env_or_fail("MG_BACKEND_PY"),
                    "--listen",
                    listen,
                    "--name",
                    "pod-a",
                    "--proto",
                    (char *)proto,
                    health_file ? "--health-file" : NULL,
                    (char *)health_file,
                    NULL};
    spawn(f, "backend", argv);
    wait_port(f, port);
    return port;
}

static void touch(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    close(fd);
}

/* Writes |text| to |path| atomically (temp file + rename), as an operator's tool would. */
static void write_file(const char *path, const char *text)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static void copy_file(const char *from, const char *to)
{
    char tmp[256], buf[65536];
    snprintf(tmp, sizeof(tmp), "%s.tmp", to);
    FILE *in = fopen(from, "rb"), *out = fopen(tmp, "wb");
    assert_non_null(in);
    assert_non_null(out);
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(rename(tmp, to), 0);
}

/* ---------------------------------------------------------------------------------------- */
/* setup                                                                                    */

static int setup(void **state)
{
    fix_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/mg-hc-test-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->never_answers_fd = -1;
    f->base = event_base_new();
    f->hc = f->base ? mg_hc_new(f->base, on_change, f) : NULL;
    srand((unsigned)(now_ms() ^ getpid()));
    *state = f;
    return f->hc ? 0 : -1;
}

static int teardown(void **state)
{
    fix_t *f = *state;
    mg_hc_free(f->hc); /* with checks in flight: ASan reports anything left behind */
    stop_kids(f);
    if (f->never_answers_fd >= 0)
        close(f->never_answers_fd);
    for (size_t i = 0; i < f->nports; i++)
        unlink(f->port_files[i]);
    event_base_free(f->base);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* tests: protocols and thresholds                                                          */

static void healthy_pod(fix_t *f, const char *proto_arg, mg_upstream_proto_t proto,
                        const char *logline)
{
    int port = start_backend(f, proto_arg, NULL);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/healthz", 2, 2);
    watch(f, pod, port, proto, &c);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN);
    wait_state(f, pod, MG_HC_HEALTHY);
    /* the first pass is enough from UNKNOWN, whatever healthy_threshold says */
    assert_int_equal(f->changes, 1);
    assert_string_equal(f->last_pod, pod);
    assert_string_equal(f->last_reason, "HTTP 200");
    /* the backend speaks only |proto_arg| and logs what it served */
    assert_true(log_contains(f, 0, logline));
    run_for(f, 350); /* more passes change nothing */
    assert_int_equal(f->changes, 1);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_HEALTHY);
}

static void h1_pod_goes_healthy(void **state)
{
    healthy_pod(*state, "http1", MG_UP_H1, "req http/1.1 GET /healthz");
}

static void h2c_pod_goes_healthy(void **state)
{
    healthy_pod(*state, "h2c", MG_UP_H2C, "req h2c GET /healthz");
}

/* Nothing listens: three refused connects in a row, then UNHEALTHY. The callback unwatches the
 * pod it reports (re-entrancy) and nothing is reported after that. */
static void refused_port_goes_unhealthy_after_threshold(void **state)
{
    fix_t *f = *state;
    int port = free_port(f); /* reserved, never bound */
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/readyz", 1, 3);
    f->unwatch_in_cb = true;
    int64_t t0 = now_ms();
    assert_true(mg_hc_has_result(f->hc, pod)); /* not watched: nothing to wait for */
    watch(f, pod, port, MG_UP_H1, &c);
    assert_false(mg_hc_has_result(f->hc, pod));
    /* the first failure is a result, though the state stays UNKNOWN (1 of 3) */
    while (!mg_hc_has_result(f->hc, pod) && now_ms() - t0 < WAIT_MS)
        run_for(f, 5);
    assert_true(mg_hc_has_result(f->hc, pod));
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN);
    assert_int_equal(f->changes, 0);
    while (f->changes == 0 && now_ms() - t0 < WAIT_MS)
        run_for(f, 20);
    assert_int_equal(f->changes, 1);
    assert_int_equal(f->last_state, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "connect refused");
    /* three checks: the first, then two more at least one interval apart each */
    assert_true(now_ms() - t0 >= 2 * 100 - CLOCK_SLACK_MS);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN); /* unwatched */
    run_for(f, 300);
    assert_int_equal(f->changes, 1);
}

/* /health answers 503 without the flag file: UNHEALTHY; with it, HEALTHY again only after
 * healthy_threshold (3) passes in a row; without it again, UNHEALTHY after 2 failures. */
static void flapping_pod(fix_t *f, mg_upstream_proto_t proto)
{
    char flag[128];
    snprintf(flag, sizeof(flag), "%s/healthy", f->dir);
    int port = start_backend(f, "both", flag);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/health", 3, 2);
    watch(f, pod, port, proto, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_int_equal(f->changes, 1);
    assert_string_equal(f->last_reason, "HTTP 503");

    int64_t t0 = now_ms();
    touch(flag);
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_true(now_ms() - t0 >= 2 * 100 - CLOCK_SLACK_MS); /* three passes: two intervals */
    assert_int_equal(f->changes, 2);
    assert_string_equal(f->last_reason, "HTTP 200");

    assert_int_equal(unlink(flag), 0);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_int_equal(f->changes, 3);
    assert_string_equal(f->last_reason, "HTTP 503");
}

static void h1_pod_503_goes_unhealthy_and_recovers(void **state)
{
    flapping_pod(*state, MG_UP_H1);
}

static void h2c_pod_503_goes_unhealthy_and_recovers(void **state)
{
    flapping_pod(*state, MG_UP_H2C);
}

/* A listener that never accepts: the kernel completes the handshake, nobody ever answers. */
static void h1_silent_pod_times_out(void **state)
{
    fix_t *f = *state;
    int port = free_port(f);
    f->never_answers_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = loopback(port);
    int one = 1;
    setsockopt(f->never_answers_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    assert_int_equal(bind(f->never_answers_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(f->never_answers_fd, 64), 0);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/readyz", 1, 1);
    c.timeout_ms = 200;
    int64_t t0 = now_ms();
    watch(f, pod, port, MG_UP_H1, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "timeout");
    assert_true(now_ms() - t0 >= 200 - CLOCK_SLACK_MS);
}

/* h2c: the server takes the request and answers after 10 s. */
static void h2c_slow_pod_times_out(void **state)
{
    fix_t *f = *state;
    int port = start_backend(f, "h2c", NULL);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/slow?ms=10000", 1, 1);
    c.timeout_ms = 300;
    watch(f, pod, port, MG_UP_H2C, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "timeout");
    assert_true(log_contains(f, 0, "req h2c GET /slow?ms=10000"));
}

/* nghttpd: another HTTP/2 server implementation (it sends its own SETTINGS, checks ours). A file
 * of the docroot is 200, a missing one 404. (Removing the file would not do: nghttpd keeps the
 * files it served open and goes on serving them for a while.) */
static void h2c_nghttpd_docroot(void **state)
{
    fix_t *f = *state;
    char docroot[128], file[160];
    snprintf(docroot, sizeof(docroot), "%s/www", f->dir);
    assert_int_equal(mkdir(docroot, 0755), 0);
    snprintf(file, sizeof(file), "%s/ready", docroot);
    write_file(file, "ok\n");
    int port = free_port(f);
    char portarg[16];
    snprintf(portarg, sizeof(portarg), "%d", port);
    char *argv[] = {
        "/usr/sbin/nghttpd", "--no-tls", "-a", "127.0.0.1", "-d", docroot, portarg, NULL};
    spawn(f, "nghttpd", argv);
    wait_port(f, port);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/ready", 1, 1);
    watch(f, pod, port, MG_UP_H2C, &c);
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_string_equal(f->last_reason, "HTTP 200");
    c.path = "/missing";
    watch(f, pod, port, MG_UP_H2C, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "HTTP 404");
}

/* Watching again with the same target keeps the state; new timing keeps it too; a new path
 * restarts from UNKNOWN without a callback; unwatch forgets the pod and stops the callbacks. */
static void watch_is_idempotent_and_restarts_on_change(void **state)
{
    fix_t *f = *state;
    int port = start_backend(f, "both", NULL);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/healthz", 1, 1);
    watch(f, pod, port, MG_UP_H1, &c);
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_int_equal(f->changes, 1);

    watch(f, pod, port, MG_UP_H1, &c);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_HEALTHY);
    c.interval_ms = 50;
    c.timeout_ms = 500;
    c.unhealthy_threshold = 5;
    watch(f, pod, port, MG_UP_H1, &c);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_HEALTHY);
    run_for(f, 200);
    assert_int_equal(f->changes, 1);

    c.path = "/other";
    watch(f, pod, port, MG_UP_H1, &c);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN);
    assert_int_equal(f->changes, 1); /* no callback from mg_hc_watch */
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_int_equal(f->changes, 2);
    assert_true(log_contains(f, 0, "req http/1.1 GET /other"));

    watch(f, pod, port, MG_UP_H2C, &c); /* another protocol is another target, too */
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN);
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_true(log_contains(f, 0, "req h2c GET /other"));

    mg_hc_unwatch(f->hc, pod);
    mg_hc_unwatch(f->hc, pod); /* no-op */
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN);
    unsigned seen = f->changes;
    run_for(f, 200);
    assert_int_equal(f->changes, seen);
}

/* Thousands of names (a reload waiting for every pod of a large fleet looks each up every few
 * ms): each is found by name after others came and went, in any order. */
static void many_names_come_and_go(void **state)
{
    fix_t *f = *state;
    enum { N = 3000 };
    mg_hc_conf_t c = conf("/healthz", 1, 1);
    c.interval_ms = 3600000; /* no check comes due while the loop does not run */
    struct sockaddr_in sin = loopback(9);
    char name[64];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "svc-%d/127.0.0.1:9", i);
        assert_int_equal(
            mg_hc_watch(f->hc, name, (struct sockaddr *)&sin, sizeof(sin), MG_UP_H1, &c), MG_OK);
    }
    for (int i = N - 1; i >= 0; i -= 3) { /* the newest first, then the oldest first */
        snprintf(name, sizeof(name), "svc-%d/127.0.0.1:9", i);
        mg_hc_unwatch(f->hc, name);
    }
    for (int i = 1; i < N; i += 3) {
        snprintf(name, sizeof(name), "svc-%d/127.0.0.1:9", i);
        mg_hc_unwatch(f->hc, name);
    }
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "svc-%d/127.0.0.1:9", i);
        bool kept = i % 3 != (N - 1) % 3 && i % 3 != 1;
        assert_int_equal(
            mg_hc_runs(f->hc, name, (struct sockaddr *)&sin, sizeof(sin), MG_UP_H1, &c), kept);
        assert_int_equal(mg_hc_has_result(f->hc, name), !kept); /* gone: nothing to wait for */
    }
    snprintf(name, sizeof(name), "svc-%d/127.0.0.1:9", N - 1);
    assert_int_equal(mg_hc_watch(f->hc, name, (struct sockaddr *)&sin, sizeof(sin), MG_UP_H1, &c),
                     MG_OK);
    assert_false(mg_hc_has_result(f->hc, name));
}

/* A second key for the same check (a service renamed by a reload) starts from the verdict the
 * first one reached; another path is another check and starts UNKNOWN. */
static void new_key_for_a_running_check_takes_its_verdict(void **state)
{
    fix_t *f = *state;
    int port = start_backend(f, "both", NULL);
    char pod[32], old_key[64], new_key[64], other_key[64];
    pod_name(pod, sizeof(pod), port);
    snprintf(old_key, sizeof(old_key), "svc-a/%s", pod);
    snprintf(new_key, sizeof(new_key), "svc-b/%s", pod);
    snprintf(other_key, sizeof(other_key), "svc-c/%s", pod);
    mg_hc_conf_t c = conf("/healthz", 1, 1);
    watch(f, old_key, port, MG_UP_H1, &c);
    wait_state(f, old_key, MG_HC_HEALTHY);

    /* mg_hc_runs: the check a watch would keep, and no other */
    struct sockaddr_in sin = loopback(port), elsewhere = loopback(port + 1);
    const struct sockaddr *sa = (struct sockaddr *)&sin;
    assert_true(mg_hc_runs(f->hc, old_key, sa, sizeof(sin), MG_UP_H1, &c));
    assert_false(mg_hc_runs(f->hc, new_key, sa, sizeof(sin), MG_UP_H1, &c)); /* not watched */
    assert_false(mg_hc_runs(f->hc, old_key, sa, sizeof(sin), MG_UP_H2C, &c));
    assert_false(
        mg_hc_runs(f->hc, old_key, (struct sockaddr *)&elsewhere, sizeof(sin), MG_UP_H1, &c));
    mg_hc_conf_t c2 = c;
    c2.interval_ms = c.interval_ms + 1; /* timing is no part of the check */
    assert_true(mg_hc_runs(f->hc, old_key, sa, sizeof(sin), MG_UP_H1, &c2));
    c2.path = "/readyz";
    assert_false(mg_hc_runs(f->hc, old_key, sa, sizeof(sin), MG_UP_H1, &c2));
    c2 = c, c2.expect_version = "7";
    assert_false(mg_hc_runs(f->hc, old_key, sa, sizeof(sin), MG_UP_H1, &c2));

    watch(f, new_key, port, MG_UP_H1, &c); /* no loop turn between: no check of its own ran */
    assert_int_equal(mg_hc_state(f->hc, new_key), MG_HC_HEALTHY);
    assert_true(mg_hc_has_result(f->hc, new_key));
    mg_hc_unwatch(f->hc, old_key);
    assert_int_equal(mg_hc_state(f->hc, new_key), MG_HC_HEALTHY);

    c.path = "/other";
    watch(f, other_key, port, MG_UP_H1, &c);
    assert_int_equal(mg_hc_state(f->hc, other_key), MG_HC_UNKNOWN);
    assert_false(mg_hc_has_result(f->hc, other_key));
    wait_state(f, other_key, MG_HC_HEALTHY);
    assert_true(mg_hc_has_result(f->hc, other_key));
    watch(f, other_key, port, MG_UP_H2C, &c); /* a restart: no result of the new check yet */
    assert_int_equal(mg_hc_state(f->hc, other_key), MG_HC_UNKNOWN);
    assert_false(mg_hc_has_result(f->hc, other_key));
}

/* Twins are found through an index by target: after the first of them leaves (its successor
 * keys the index), after others move to another target, and never once the last has gone. */
static void twins_are_found_as_checks_come_go_and_move(void **state)
{
    fix_t *f = *state;
    int port = start_backend(f, "both", NULL);
    char pod[32], key[6][64];
    pod_name(pod, sizeof(pod), port);
    for (int i = 0; i < 6; i++)
        snprintf(key[i], sizeof(key[i]), "svc-%c/%s", 'a' + i, pod);
    mg_hc_conf_t c = conf("/healthz", 1, 1);
    watch(f, key[0], port, MG_UP_H1, &c);
    wait_state(f, key[0], MG_HC_HEALTHY);
    c.interval_ms = 3600000; /* from now on no check comes due while we look */
    watch(f, key[0], port, MG_UP_H1, &c);
    mg_hc_conf_t moved = c;
    moved.path = "/other";
    watch(f, key[1], port, MG_UP_H1, &c);
    watch(f, key[2], port, MG_UP_H1, &c);
    assert_int_equal(mg_hc_state(f->hc, key[1]), MG_HC_HEALTHY);
    assert_int_equal(mg_hc_state(f->hc, key[2]), MG_HC_HEALTHY);
    mg_hc_unwatch(f->hc, key[0]); /* the first leaves, two stay */
    watch(f, key[3], port, MG_UP_H1, &c);
    assert_int_equal(mg_hc_state(f->hc, key[3]), MG_HC_HEALTHY);
    watch(f, key[1], port, MG_UP_H1, &moved); /* two move: they start over */
    watch(f, key[2], port, MG_UP_H1, &moved);
    assert_int_equal(mg_hc_state(f->hc, key[2]), MG_HC_UNKNOWN);
    watch(f, key[4], port, MG_UP_H1, &moved); /* their twin has no result yet */
    assert_false(mg_hc_has_result(f->hc, key[4]));
    watch(f, key[4], port, MG_UP_H1, &c); /* moved back: key[3] is its twin */
    assert_int_equal(mg_hc_state(f->hc, key[4]), MG_HC_UNKNOWN); /* a restart keeps no verdict */
    mg_hc_unwatch(f->hc, key[3]);
    mg_hc_unwatch(f->hc, key[4]);
    watch(f, key[5], port, MG_UP_H1, &c); /* the last twin has gone */
    assert_false(mg_hc_has_result(f->hc, key[5]));
    watch(f, key[0], port, MG_UP_H1, &moved);
    assert_false(mg_hc_has_result(f->hc, key[0]));
}

/* A twin that has a result but no verdict yet (one failure of two) hands its count over: the
 * new key has a result at once, and its own next failure is the second. Before, it started
 * from nothing, and a reload's waiting check lost its failures at takeover. */
static void new_key_takes_a_twin_s_count_without_a_verdict(void **state)
{
    fix_t *f = *state;
    int port = free_port(f); /* reserved, never bound: every check fails */
    char pod[32], old_key[64], new_key[64];
    pod_name(pod, sizeof(pod), port);
    snprintf(old_key, sizeof(old_key), "+svc/%s", pod);
    snprintf(new_key, sizeof(new_key), "svc/%s", pod);
    mg_hc_conf_t c = conf("/readyz", 1, 2);
    c.interval_ms = 2000; /* first checks within 200 ms, second ones after 2 s */
    int64_t t0 = now_ms();
    watch(f, old_key, port, MG_UP_H1, &c);
    while (!mg_hc_has_result(f->hc, old_key) && now_ms() - t0 < WAIT_MS)
        run_for(f, 5);
    assert_true(mg_hc_has_result(f->hc, old_key));
    assert_int_equal(mg_hc_state(f->hc, old_key), MG_HC_UNKNOWN); /* 1 of 2 */
    watch(f, new_key, port, MG_UP_H1, &c);
    mg_hc_unwatch(f->hc, old_key);
    assert_true(mg_hc_has_result(f->hc, new_key));
    assert_int_equal(mg_hc_state(f->hc, new_key), MG_HC_UNKNOWN);
    /* its first check comes within interval_ms / 10, and is the second failure */
    wait_state(f, new_key, MG_HC_UNHEALTHY);
    assert_int_equal(f->changes, 1);
}

static void bad_conf_is_refused(void **state)
{
    fix_t *f = *state;
    struct sockaddr_in sin = loopback(9);
    const struct sockaddr *sa = (struct sockaddr *)&sin;
    mg_hc_conf_t good = conf("/readyz", 1, 1), c;
    mg_log_level_t lvl = mg_log_level;
    mg_log_level = MG_LOG_ERROR + 1; /* the refusals are logged; keep the output readable */

    c = good, c.path = "readyz";
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    c = good, c.path = "/a b";
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    c = good, c.path = NULL;
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    c = good, c.interval_ms = 0;
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    c = good, c.timeout_ms = 0;
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    c = good, c.healthy_threshold = 0;
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    c = good, c.unhealthy_threshold = 0;
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    c = good, c.expect_version = "";
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), MG_UP_H1, &c), MG_E_CONFIG);
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin), (mg_upstream_proto_t)7, &good),
                     MG_E_CONFIG);
    assert_int_equal(mg_hc_watch(f->hc, "p 1", sa, sizeof(sin), MG_UP_H1, &good), MG_E_CONFIG);
    assert_int_equal(mg_hc_watch(f->hc, "", sa, sizeof(sin), MG_UP_H1, &good), MG_E_CONFIG);
    assert_int_equal(mg_hc_watch(f->hc, "p:1", sa, sizeof(sin) - 1, MG_UP_H1, &good), MG_E_CONFIG);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    assert_int_equal(
        mg_hc_watch(f->hc, "p:1", (struct sockaddr *)&sun, sizeof(sun), MG_UP_H1, &good),
        MG_E_CONFIG);
    char longname[MG_HC_MAX_NAME + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(mg_hc_watch(f->hc, longname, sa, sizeof(sin), MG_UP_H1, &good), MG_E_CONFIG);
    mg_log_level = lvl;

    assert_int_equal(mg_hc_state(f->hc, "p:1"), MG_HC_UNKNOWN);
    assert_string_equal(mg_hc_state_name(MG_HC_HEALTHY), "healthy");
    assert_string_equal(mg_hc_state_name(MG_HC_UNHEALTHY), "unhealthy");
    assert_string_equal(mg_hc_state_name(MG_HC_UNKNOWN), "unknown");
    mg_hc_free(NULL);
}

/* The callback frees the whole checker, with another pod's check possibly in flight. */
static void free_in_callback(void **state)
{
    fix_t *f = *state;
    int refused = free_port(f), other = free_port(f);
    char pod[32], pod2[32];
    pod_name(pod, sizeof(pod), refused);
    pod_name(pod2, sizeof(pod2), other);
    mg_hc_conf_t c = conf("/readyz", 1, 1);
    f->free_in_cb = true;
    watch(f, pod, refused, MG_UP_H1, &c);
    watch(f, pod2, other, MG_UP_H2C, &c);
    int64_t t0 = now_ms();
    while (f->hc && now_ms() - t0 < WAIT_MS)
        run_for(f, 20);
    assert_null(f->hc);
    assert_int_equal(f->changes, 1);
    assert_string_equal(f->last_reason, "connect refused");
    run_for(f, 200); /* nothing of the checker is left on the loop */
    assert_int_equal(f->changes, 1);
}

/* A pod whose /v1/status has no "model" (backend.py answers its request summary there) is held
 * out when a version is expected, over either protocol. */
static void status_without_model_is_held_out(void **state)
{
    fix_t *f = *state;
    int port = start_backend(f, "both", NULL);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/healthz", 1, 1);
    c.expect_version = "1";
    watch(f, pod, port, MG_UP_H1, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "/v1/status: no model loaded");
    assert_true(log_contains(f, 0, "req http/1.1 GET /v1/status"));
    watch(f, pod, port, MG_UP_H2C, &c);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "/v1/status: no model loaded");
    assert_true(log_contains(f, 0, "req h2c GET /v1/status"));
}

/* ---------------------------------------------------------------------------------------- */
/* tests: the real runtime                                                                  */

static int start_runtime(fix_t *f, char *const extra[])
{
    int port = free_port(f);
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    char *argv[24] = {(char *)env_or_fail("MG_RUNTIME_BIN"),
                      "--listen",
                      listen,
                      "--threads",
                      "0",
                      "--watch-ms",
                      "50",
                      "--log-level",
                      "info"};
    size_t n = 9;
    for (size_t i = 0; extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    spawn(f, "runtime", argv);
    wait_port(f, port);
    return port;
}

/* A runtime without its model file answers /readyz 503: UNHEALTHY; once the file appears and
 * the model is loaded and warmed up, HEALTHY. Then a version expectation over HTTP/1.1. */
static void runtime_readiness(void **state)
{
    fix_t *f = *state;
    char model[160], src[256];
    snprintf(model, sizeof(model), "%s/model.json", f->dir);
    snprintf(src, sizeof(src), "%s/linear_binary.json", env_or_fail("MG_TEST_MODELS"));
    char *extra[] = {"--model",         model, "--kind", "linear", "--name", "digits",
                     "--model-version", "1",   NULL};
    int port = start_runtime(f, extra);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/readyz", 1, 1);
    watch(f, pod, port, MG_UP_H1, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "HTTP 503");
    run_for(f, 300); /* still no model: still out */
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNHEALTHY);

    copy_file(src, model);
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_string_equal(f->last_reason, "HTTP 200");

    c.expect_version = "1";
    watch(f, pod, port, MG_UP_H1, &c);
    assert_int_equal(mg_hc_state(f->hc, pod), MG_HC_UNKNOWN);
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_string_equal(f->last_reason, "HTTP 200, version 1");
    c.expect_version = "7";
    watch(f, pod, port, MG_UP_H1, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "version 1 != 7");
}

/* A service that expects version 2: the pod serving 1 is held out, the switch to 2 (the
 * descriptor changes, the runtime swaps in-process) lets it in, a switch to 3 takes it out. */
static void runtime_version_follows_switches(void **state)
{
    fix_t *f = *state;
    char desc[160], doc[512];
    const char *models = env_or_fail("MG_TEST_MODELS");
    snprintf(desc, sizeof(desc), "%s/digits.json", f->dir);
    const char *fmt = "{\"file\": \"%s/linear_binary.json\", \"kind\": \"linear\", "
                      "\"name\": \"digits\", \"version\": \"%s\"}\n";
    snprintf(doc, sizeof(doc), fmt, models, "1");
    write_file(desc, doc);
    char *extra[] = {"--model", desc, NULL};
    int port = start_runtime(f, extra);
    char pod[32];
    pod_name(pod, sizeof(pod), port);
    mg_hc_conf_t c = conf("/readyz", 2, 2);
    c.expect_version = "2";
    watch(f, pod, port, MG_UP_H2C, &c);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "version 1 != 2");

    snprintf(doc, sizeof(doc), fmt, models, "2");
    write_file(desc, doc);
    wait_state(f, pod, MG_HC_HEALTHY);
    assert_string_equal(f->last_reason, "HTTP 200, version 2");

    snprintf(doc, sizeof(doc), fmt, models, "3");
    write_file(desc, doc);
    wait_state(f, pod, MG_HC_UNHEALTHY);
    assert_string_equal(f->last_reason, "version 3 != 2");
    assert_true(log_contains(f, 0, "version 3"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(h1_pod_goes_healthy, setup, teardown),
        cmocka_unit_test_setup_teardown(h2c_pod_goes_healthy, setup, teardown),
        cmocka_unit_test_setup_teardown(refused_port_goes_unhealthy_after_threshold, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(h1_pod_503_goes_unhealthy_and_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(h2c_pod_503_goes_unhealthy_and_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(h1_silent_pod_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(h2c_slow_pod_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(h2c_nghttpd_docroot, setup, teardown),
        cmocka_unit_test_setup_teardown(watch_is_idempotent_and_restarts_on_change, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(new_key_for_a_running_check_takes_its_verdict, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(twins_are_found_as_checks_come_go_and_move, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(new_key_takes_a_twin_s_count_without_a_verdict, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(many_names_come_and_go, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_conf_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(free_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(status_without_model_is_held_out, setup, teardown),
        cmocka_unit_test_setup_teardown(runtime_readiness, setup, teardown),
        cmocka_unit_test_setup_teardown(runtime_version_follows_switches, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
