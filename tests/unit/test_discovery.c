/*
 * tests/unit/test_discovery.c - DNS discovery against a real resolver: Debian's dnsmasq on a
 * free 127.0.0.1 port, answering from a hosts file that the tests rewrite (then SIGHUP), the
 * way a Kubernetes headless Service's records change. Also the pure address-set helpers.
 *
 * --local=/svc.test/ makes dnsmasq answer for svc.test the way cluster DNS answers for
 * cluster.local: NXDOMAIN for an unknown name and "no data" for a missing type. Without it, a
 * dnsmasq with no upstream answers REFUSED to both, which discovery rightly treats as a
 * failure (the last set is kept), so "all pods gone" could never be observed.
 *
 * Every wait is bounded (event_base_loopexit), and teardown always stops dnsmasq by its PID.
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "routing/discovery.h"

#define DNSMASQ "/usr/sbin/dnsmasq"
#define INTERVAL_MS 100
#define WAIT_MS 5000 /* upper bound for any expected update */

/* ---------- a private dnsmasq ---------- */

typedef struct dns_server {
    pid_t pid; /* 0 when not running */
    uint16_t port;
    char dir[64];
    char hosts[128];
    char pidfile[128];
    char log[128];
    char addr[32]; /* "127.0.0.1:PORT" */
} dns_server_t;

/* A port free for both UDP and TCP on 127.0.0.1 right now (dnsmasq listens on both). */
static uint16_t free_port(void)
{
    for (int tries = 0; tries < 50; tries++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);
        int u = socket(AF_INET, SOCK_DGRAM, 0), t = socket(AF_INET, SOCK_STREAM, 0);
        uint16_t port = 0;
        if (u >= 0 && t >= 0 && bind(u, (struct sockaddr *)&a, sizeof(a)) == 0 &&
            getsockname(u, (struct sockaddr *)&a, &len) == 0 &&
            bind(t, (struct sockaddr *)&a, sizeof(a)) == 0)
            port = ntohs(a.sin_port);
        if (u >= 0)
            close(u);
        if (t >= 0)
            close(t);
        if (port != 0)
            return port;
    }
    fail_msg("no free port on 127.0.0.1");
    return 0;
}

static void write_hosts(dns_server_t *s, const char *content)
{
    char tmp[160];
    snprintf(tmp, sizeof(tmp), "%s.tmp", s->hosts);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(content, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, s->hosts), 0); /* dnsmasq never reads half a file */
}

static bool tcp_accepts(uint16_t port)
{
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void print_log(const dns_server_t *s)
{
    char line[512];
    FILE *f = fopen(s->log, "r");
    if (f == NULL)
        return;
    fprintf(stderr, "---- dnsmasq log (%s) ----\n", s->log);
    while (fgets(line, sizeof(line), f) != NULL)
        fputs(line, stderr);
    fclose(f);
}

/* Starts dnsmasq on s->port; fails the test when it is not answering within 5 s. */
static void dns_start(dns_server_t *s)
{
    char port_arg[32], hosts_arg[160], pid_arg[160];
    snprintf(port_arg, sizeof(port_arg), "--port=%u", (unsigned)s->port);
    snprintf(hosts_arg, sizeof(hosts_arg), "--addn-hosts=%s", s->hosts);
    snprintf(pid_arg, sizeof(pid_arg), "--pid-file=%s", s->pidfile);
    char *const argv[] = {DNSMASQ,
                          "--keep-in-foreground",
                          "--no-daemon",
                          "--conf-file=/dev/null",
                          "--no-resolv",
                          "--no-hosts",
                          "--no-poll",
                          hosts_arg,
                          "--listen-address=127.0.0.1",
                          "--bind-interfaces",
                          port_arg,
                          "--local-ttl=1",
                          "--cache-size=0",
                          "--user=root",
                          pid_arg,
                          "--log-facility=-",
                          "--local=/svc.test/",
                          NULL};
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(DNSMASQ, argv);
        _exit(127);
    }
    s->pid = pid;
    for (int i = 0; i < 500; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            s->pid = 0;
            print_log(s);
            fail_msg("dnsmasq exited at start-up (status %d)", status);
        }
        if (tcp_accepts(s->port))
            return;
        sleep_ms(10);
    }
    print_log(s);
    fail_msg("dnsmasq is not answering on port %u after 5 s", (unsigned)s->port);
}

/* Stops dnsmasq (by its PID) and reaps it; SIGKILL when SIGTERM takes over 2 s. */
static void dns_stop(dns_server_t *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 200; i++) {
        if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
            s->pid = 0;
            return;
        }
        sleep_ms(10);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

/* New records: dnsmasq re-reads --addn-hosts files on SIGHUP. */
static void dns_set_hosts(dns_server_t *s, const char *content)
{
    write_hosts(s, content);
    assert_int_equal(kill(s->pid, SIGHUP), 0);
}

/* ---------- fixture: an event base, a discoverer and a dnsmasq ---------- */

typedef struct fixture {
    struct event_base *base;
    mg_disc_t *d;
    dns_server_t dns;
    /* what the callback saw */
    unsigned calls;
    char key[64];
    size_t n;
    struct sockaddr_storage addrs[MG_DISC_MAX_ADDRS];
    /* when the loop stops early: a call with want_n addresses (SIZE_MAX = any call) */
    size_t want_n;
    bool hit;
    bool unwatch_in_cb; /* the callback unwatches its own key */
} fixture_t;

static void on_update(void *ud, const char *key, const struct sockaddr_storage *addrs, size_t n)
{
    fixture_t *f = ud;
    f->calls++;
    snprintf(f->key, sizeof(f->key), "%s", key);
    assert_true(n <= MG_DISC_MAX_ADDRS);
    memcpy(f->addrs, addrs, n * sizeof(*addrs));
    f->n = n;
    if (f->unwatch_in_cb)
        mg_disc_unwatch(f->d, key);
    if (f->want_n == SIZE_MAX || n == f->want_n) {
        f->hit = true;
        event_base_loopbreak(f->base);
    }
}

static void on_deadline(evutil_socket_t fd, short events, void *arg)
{
    (void)fd;
    (void)events;
    event_base_loopbreak(arg);
}

/* Runs the loop for at most |ms|. A timer of our own, not event_base_loopexit: a loopexit
 * left pending by an early break would end the next run at once. */
static void run_loop(fixture_t *f, long ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    struct event *deadline = evtimer_new(f->base, on_deadline, f->base);
    assert_non_null(deadline);
    evtimer_add(deadline, &tv);
    event_base_dispatch(f->base);
    event_free(deadline);
}

/* Runs the loop until a callback with |n| addresses (SIZE_MAX: any callback) or |ms| pass. */
static bool run_until(fixture_t *f, size_t n, long ms)
{
    f->want_n = n;
    f->hit = false;
    run_loop(f, ms);
    return f->hit;
}

/* Runs the loop until |calls| callbacks happened in all (one pass may report several
 * watches: their answers arrive together), or |ms| pass. */
static bool run_until_calls(fixture_t *f, unsigned calls, long ms)
{
    long slices = ms / 50 + 1;
    while (f->calls < calls && slices-- > 0)
        run_until(f, SIZE_MAX, 50);
    return f->calls >= calls;
}

/* Runs the loop for |ms| and returns how many callbacks happened meanwhile. */
static unsigned run_for(fixture_t *f, long ms)
{
    unsigned before = f->calls;
    f->want_n = SIZE_MAX - 1; /* never matches: run the whole time */
    run_loop(f, ms);
    return f->calls - before;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dns.dir, sizeof(f->dns.dir), "/tmp/mg-disc-XXXXXX");
    assert_non_null(mkdtemp(f->dns.dir));
    snprintf(f->dns.hosts, sizeof(f->dns.hosts), "%s/hosts", f->dns.dir);
    snprintf(f->dns.pidfile, sizeof(f->dns.pidfile), "%s/dnsmasq.pid", f->dns.dir);
    snprintf(f->dns.log, sizeof(f->dns.log), "%s/dnsmasq.log", f->dns.dir);
    f->dns.port = free_port();
    snprintf(f->dns.addr, sizeof(f->dns.addr), "127.0.0.1:%u", (unsigned)f->dns.port);
    write_hosts(&f->dns, "");
    f->base = event_base_new();
    assert_non_null(f->base);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    dns_stop(&f->dns);
    mg_disc_free(f->d);
    event_base_loop(f->base, EVLOOP_NONBLOCK); /* lets cancelled queries finish and free */
    event_base_free(f->base);
    unlink(f->dns.hosts);
    unlink(f->dns.pidfile);
    unlink(f->dns.log);
    rmdir(f->dns.dir);
    free(f);
    return 0;
}

/* Starts dnsmasq with |hosts| and a discoverer using it (200 ms timeout, 1 attempt). */
static void start(fixture_t *f, const char *hosts)
{
    char err[256];
    write_hosts(&f->dns, hosts);
    dns_start(&f->dns);
    f->d = mg_disc_new(f->base, f->dns.addr, on_update, f, err, sizeof(err));
    assert_non_null(f->d);
    assert_int_equal(mg_disc_set_timeout(f->d, 200, 1), MG_OK);
}

static void assert_addr(const struct sockaddr_storage *a, const char *want)
{
    char buf[64];
    assert_string_equal(mg_disc_addr_format(a, buf, sizeof(buf)), want);
}

/* ---------- pure helpers ---------- */

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    s->sin_port = htons(port);
    assert_int_equal(inet_pton(AF_INET, ip, &s->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    assert_int_equal(inet_pton(AF_INET6, ip, &s->sin6_addr), 1);
    return ss;
}

static void normalize_sorts_dedups_and_caps(void **state)
{
    (void)state;
    struct sockaddr_storage a[] = {v6("fd00::1", 80),   v4("10.0.0.10", 80), v4("10.0.0.9", 80),
                                   v4("10.0.0.10", 80), v4("10.0.0.9", 79),  v6("::1", 80)};
    a[3].__ss_padding[100] = 7; /* padding never makes two equal addresses differ */
    size_t dropped = 99;
    size_t n = mg_disc_addrs_normalize(a, 6, 64, &dropped);
    assert_int_equal(n, 5);
    assert_int_equal(dropped, 0);
    assert_addr(&a[0], "10.0.0.9:79");
    assert_addr(&a[1], "10.0.0.9:80");
    assert_addr(&a[2], "10.0.0.10:80"); /* numeric, not textual, order */
    assert_addr(&a[3], "[::1]:80");
    assert_addr(&a[4], "[fd00::1]:80");

    struct sockaddr_storage b[] = {v4("10.0.0.3", 1), v4("10.0.0.1", 1), v4("10.0.0.2", 1),
                                   v4("10.0.0.1", 1)};
    n = mg_disc_addrs_normalize(b, 4, 2, &dropped);
    assert_int_equal(n, 2);
    assert_int_equal(dropped, 1); /* distinct addresses that did not fit */
    assert_addr(&b[0], "10.0.0.1:1");
    assert_addr(&b[1], "10.0.0.2:1");
    assert_int_equal(mg_disc_addrs_normalize(NULL, 0, 64, NULL), 0);
}

static void compare_and_format(void **state)
{
    (void)state;
    struct sockaddr_storage a[] = {v4("10.0.0.1", 8080), v6("fd00::7", 8080)};
    struct sockaddr_storage b[] = {v4("10.0.0.1", 8080), v6("fd00::7", 8080)};
    struct sockaddr_storage c[] = {v4("10.0.0.1", 8080), v6("fd00::7", 8081)};
    assert_true(mg_disc_addrs_equal(a, 2, b, 2));
    assert_false(mg_disc_addrs_equal(a, 2, c, 2));
    assert_false(mg_disc_addrs_equal(a, 2, b, 1));
    assert_true(mg_disc_addrs_equal(a, 0, NULL, 0));
    assert_true(mg_disc_addr_cmp(&a[0], &a[1]) < 0); /* IPv4 first */
    assert_true(mg_disc_addr_cmp(&c[1], &a[1]) > 0);
    assert_addr(&a[1], "[fd00::7]:8080");
    char small[6];
    assert_string_equal(mg_disc_addr_format(&a[0], small, sizeof(small)), "10.0.");
}

/* ---------- argument checks ---------- */

static void bad_nameserver_is_a_clear_error(void **state)
{
    fixture_t *f = *state;
    const char *bad[] = {"localhost:53", "127.0.0.1:99999", "", "10.0.0.1:", "dns.example"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "unchanged";
        assert_null(mg_disc_new(f->base, bad[i], on_update, f, err, sizeof(err)));
        assert_non_null(strstr(err, "not an IP address with an optional port"));
        assert_non_null(strstr(err, bad[i]));
    }
    char err[256];
    assert_null(mg_disc_new(f->base, "127.0.0.1:53", NULL, f, err, sizeof(err)));
    assert_non_null(strstr(err, "callback"));
    /* the accepted forms */
    const char *good[] = {"127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        mg_disc_t *d = mg_disc_new(f->base, good[i], on_update, f, err, sizeof(err));
        assert_non_null(d);
        assert_string_equal(err, "");
        mg_disc_free(d);
    }
}

static void bad_watch_arguments_are_refused(void **state)
{
    fixture_t *f = *state;
    char err[256], long_label[80];
    f->d = mg_disc_new(f->base, "127.0.0.1:53", on_update, f, err, sizeof(err));
    assert_non_null(f->d);
    memset(long_label, 'a', 64);
    long_label[64] = '\0';
    assert_int_equal(mg_disc_watch(f->d, "", "svc.test", 80, 1000), MG_E_CONFIG);
    assert_int_equal(mg_disc_watch(f->d, "s", "", 80, 1000), MG_E_CONFIG);
    assert_int_equal(mg_disc_watch(f->d, "s", "bad name", 80, 1000), MG_E_CONFIG);
    assert_int_equal(mg_disc_watch(f->d, "s", "a..b", 80, 1000), MG_E_CONFIG);
    assert_int_equal(mg_disc_watch(f->d, "s", long_label, 80, 1000), MG_E_CONFIG);
    assert_int_equal(mg_disc_watch(f->d, "s", "svc.test", 0, 1000), MG_E_CONFIG);
    assert_int_equal(mg_disc_set_timeout(f->d, 0, 1), MG_E_CONFIG);
    assert_int_equal(mg_disc_set_timeout(f->d, 100, 0), MG_E_CONFIG);
    assert_int_equal(mg_disc_set_families(f->d, 0), MG_E_CONFIG);
    assert_int_equal(mg_disc_set_families(f->d, 4), MG_E_CONFIG);
    mg_disc_status_t st;
    assert_false(mg_disc_status(f->d, "s", &st));
    assert_int_equal(run_for(f, 50), 0);
}

/* ---------- against dnsmasq ---------- */

static void pods_appear_and_disappear(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.10 digits.svc.test\n10.0.0.9 digits.svc.test\n10.0.0.5 other.svc.test\n");
    assert_int_equal(mg_disc_watch(f->d, "digits-production", "digits.svc.test", 9000, INTERVAL_MS),
                     MG_OK);
    assert_int_equal(f->calls, 0); /* never from inside mg_disc_watch */

    assert_true(run_until(f, 2, WAIT_MS));
    assert_int_equal(f->calls, 1);
    assert_string_equal(f->key, "digits-production");
    assert_addr(&f->addrs[0], "10.0.0.9:9000");
    assert_addr(&f->addrs[1], "10.0.0.10:9000");

    /* unchanged answers are not reported */
    assert_int_equal(run_for(f, 4 * INTERVAL_MS), 0);

    dns_set_hosts(&f->dns, "10.0.0.10 digits.svc.test\n10.0.0.9 digits.svc.test\n"
                           "10.0.0.11 digits.svc.test\n");
    assert_true(run_until(f, 3, WAIT_MS));
    assert_addr(&f->addrs[0], "10.0.0.9:9000");
    assert_addr(&f->addrs[1], "10.0.0.10:9000");
    assert_addr(&f->addrs[2], "10.0.0.11:9000");

    dns_set_hosts(&f->dns, "10.0.0.11 digits.svc.test\n10.0.0.9 digits.svc.test\n");
    assert_true(run_until(f, 2, WAIT_MS));
    assert_addr(&f->addrs[0], "10.0.0.9:9000");
    assert_addr(&f->addrs[1], "10.0.0.11:9000");

    /* the name is gone (NXDOMAIN): the service has no pods */
    unsigned before = f->calls;
    dns_set_hosts(&f->dns, "10.0.0.5 other.svc.test\n");
    assert_true(run_until(f, 0, WAIT_MS));
    assert_int_equal(f->calls, before + 1);
    mg_disc_status_t st;
    assert_true(mg_disc_status(f->d, "digits-production", &st));
    assert_true(st.answered);
    assert_int_equal(st.naddrs, 0);
    assert_int_equal(st.failures, 0);
    assert_null(st.error);

    /* and back */
    dns_set_hosts(&f->dns, "10.0.0.12 digits.svc.test\n");
    assert_true(run_until(f, 1, WAIT_MS));
    assert_addr(&f->addrs[0], "10.0.0.12:9000");
}

static void ipv6_records_follow_ipv4(void **state)
{
    fixture_t *f = *state;
    start(f, "fd00::2 dual.svc.test\n10.0.0.2 dual.svc.test\nfd00::1 dual.svc.test\n"
             "10.0.0.1 dual.svc.test\n");
    assert_int_equal(mg_disc_watch(f->d, "dual", "dual.svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 4, WAIT_MS));
    assert_addr(&f->addrs[0], "10.0.0.1:80");
    assert_addr(&f->addrs[1], "10.0.0.2:80");
    assert_addr(&f->addrs[2], "[fd00::1]:80");
    assert_addr(&f->addrs[3], "[fd00::2]:80");

    /* IPv4 only, from the next resolution on */
    assert_int_equal(mg_disc_set_families(f->d, MG_DISC_IPV4), MG_OK);
    assert_true(run_until(f, 2, WAIT_MS));
    assert_addr(&f->addrs[1], "10.0.0.2:80");
}

static void no_records_of_a_name_means_no_pods(void **state)
{
    fixture_t *f = *state;
    /* the name exists with AAAA only: the A query gets "no data", not NXDOMAIN */
    start(f, "fd00::1 v6only.svc.test\n");
    assert_int_equal(mg_disc_set_families(f->d, MG_DISC_IPV4), MG_OK);
    assert_int_equal(mg_disc_watch(f->d, "v6only", "v6only.svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 0, WAIT_MS)); /* the first answer is reported, even when empty */
    assert_int_equal(f->calls, 1);
    assert_int_equal(run_for(f, 3 * INTERVAL_MS), 0);
}

/* A nameserver that refuses the question (dnsmasq has no upstream for names outside its
 * domain): c-ares reports it as a refused connection, and the error says both. */
static void refused_answer_is_named(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.1 svc.test\n");
    assert_int_equal(mg_disc_watch(f->d, "elsewhere", "name.elsewhere.test", 80, INTERVAL_MS),
                     MG_OK);
    assert_int_equal(run_for(f, 500), 0); /* no answer: no callback */
    mg_disc_status_t st;
    assert_true(mg_disc_status(f->d, "elsewhere", &st));
    assert_false(st.answered);
    assert_true(st.failures >= 1);
    assert_string_equal(st.error, "connection refused, or SERVFAIL, NOTIMP or REFUSED from every "
                                  "server");
}

static void nameserver_down_keeps_the_set_then_resumes(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.1 svc.test\n10.0.0.2 svc.test\n");
    assert_int_equal(mg_disc_watch(f->d, "svc", "svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 2, WAIT_MS));

    dns_stop(&f->dns);
    /* refused at once on loopback (else timeouts of 200 ms, one attempt) every interval: no
     * callback, the set stays */
    assert_int_equal(run_for(f, 1500), 0);
    mg_disc_status_t st;
    assert_true(mg_disc_status(f->d, "svc", &st));
    assert_true(st.answered);
    assert_int_equal(st.naddrs, 2);
    assert_true(st.failures >= 2);
    assert_true(strncmp(st.error, "connection refused", 18) == 0 ||
                strcmp(st.error, "timeout") == 0);

    /* the same port again, with other records: updates resume */
    write_hosts(&f->dns, "10.0.0.1 svc.test\n10.0.0.2 svc.test\n10.0.0.3 svc.test\n");
    dns_start(&f->dns);
    assert_true(run_until(f, 3, WAIT_MS));
    assert_addr(&f->addrs[2], "10.0.0.3:80");
    assert_true(mg_disc_status(f->d, "svc", &st));
    assert_int_equal(st.failures, 0);
}

static void first_answer_waits_for_a_nameserver(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.1 svc.test\n");
    dns_stop(&f->dns); /* down before the first answer: nothing is reported, not even n = 0 */
    assert_int_equal(mg_disc_watch(f->d, "svc", "svc.test", 80, INTERVAL_MS), MG_OK);
    assert_int_equal(run_for(f, 700), 0);
    mg_disc_status_t st;
    assert_true(mg_disc_status(f->d, "svc", &st));
    assert_false(st.answered);
    assert_true(st.failures >= 1);
    dns_start(&f->dns);
    assert_true(run_until(f, 1, WAIT_MS));
}

static void unwatch_stops_callbacks(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.1 a.svc.test\n10.0.0.2 b.svc.test\n");
    assert_int_equal(mg_disc_watch(f->d, "a", "a.svc.test", 80, INTERVAL_MS), MG_OK);
    assert_int_equal(mg_disc_watch(f->d, "b", "b.svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until_calls(f, 2, WAIT_MS));
    assert_int_equal(f->calls, 2);

    mg_disc_unwatch(f->d, "a");
    mg_disc_unwatch(f->d, "nonexistent");
    mg_disc_status_t st;
    assert_false(mg_disc_status(f->d, "a", &st));
    dns_set_hosts(&f->dns, "10.0.0.1 a.svc.test\n10.0.0.3 a.svc.test\n10.0.0.2 b.svc.test\n"
                           "10.0.0.4 b.svc.test\n");
    assert_true(run_until(f, 2, WAIT_MS)); /* b still updates */
    assert_string_equal(f->key, "b");
    assert_int_equal(run_for(f, 5 * INTERVAL_MS), 0); /* and a never does */
}

static void unwatch_from_the_callback(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.1 svc.test\n");
    f->unwatch_in_cb = true;
    assert_int_equal(mg_disc_watch(f->d, "svc", "svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 1, WAIT_MS));
    dns_set_hosts(&f->dns, "10.0.0.2 svc.test\n");
    assert_int_equal(run_for(f, 5 * INTERVAL_MS), 0);
    mg_disc_status_t st;
    assert_false(mg_disc_status(f->d, "svc", &st));
}

static void watch_again_same_is_a_no_op_other_replaces(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.1 a.svc.test\n10.0.0.2 a.svc.test\n10.0.0.7 b.svc.test\n");
    assert_int_equal(mg_disc_watch(f->d, "svc", "a.svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 2, WAIT_MS));
    assert_int_equal(mg_disc_watch(f->d, "svc", "A.SVC.TEST", 80, 2 * INTERVAL_MS), MG_OK);
    assert_int_equal(run_for(f, 4 * INTERVAL_MS), 0);

    assert_int_equal(mg_disc_watch(f->d, "svc", "b.svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 1, WAIT_MS));
    assert_addr(&f->addrs[0], "10.0.0.7:80");

    /* another port is another set, even with the same name */
    assert_int_equal(mg_disc_watch(f->d, "svc", "b.svc.test", 81, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 1, WAIT_MS));
    assert_addr(&f->addrs[0], "10.0.0.7:81");
    assert_int_equal(f->calls, 3);
}

static void ip_literal_needs_no_dns(void **state)
{
    fixture_t *f = *state;
    char err[256];
    /* a nameserver that does not exist: a literal must not query it */
    f->d = mg_disc_new(f->base, "127.0.0.1:1", on_update, f, err, sizeof(err));
    assert_non_null(f->d);
    assert_int_equal(mg_disc_watch(f->d, "lit", "10.1.2.3", 9000, INTERVAL_MS), MG_OK);
    assert_int_equal(mg_disc_watch(f->d, "lit6", "fd00::9", 9000, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 1, WAIT_MS));
    assert_true(run_until(f, 1, WAIT_MS));
    assert_int_equal(run_for(f, 3 * INTERVAL_MS), 0);
    mg_disc_status_t st;
    assert_true(mg_disc_status(f->d, "lit", &st));
    assert_int_equal(st.naddrs, 1);
    assert_int_equal(st.answers, 1);
    assert_true(mg_disc_status(f->d, "lit6", &st));
    assert_int_equal(st.naddrs, 1);
}

static void interval_has_a_floor(void **state)
{
    fixture_t *f = *state;
    start(f, "10.0.0.1 svc.test\n");
    assert_int_equal(mg_disc_watch(f->d, "svc", "svc.test", 80, 1), MG_OK);
    run_for(f, 1000);
    mg_disc_status_t st;
    assert_true(mg_disc_status(f->d, "svc", &st));
    assert_true(st.answers >= 3);
    assert_true(st.answers <= 11); /* 1 s / 100 ms, plus the first */
}

/* More records than a 512-byte UDP answer holds (about 29 A records): the truncated answer is
 * fetched again over TCP, and every pod is there. */
static void many_records_come_over_tcp(void **state)
{
    fixture_t *f = *state;
    static char hosts[60 * 32];
    char line[64];
    start(f, "10.0.1.1 big.svc.test\n");
    assert_int_equal(mg_disc_set_families(f->d, MG_DISC_IPV4), MG_OK);
    assert_int_equal(mg_disc_watch(f->d, "big", "big.svc.test", 80, INTERVAL_MS), MG_OK);
    assert_true(run_until(f, 1, WAIT_MS));
    hosts[0] = '\0';
    for (int i = 1; i <= 60; i++) {
        snprintf(line, sizeof(line), "10.0.1.%d big.svc.test\n", i);
        strcat(hosts, line);
    }
    dns_set_hosts(&f->dns, hosts);
    assert_true(run_until(f, 60, WAIT_MS));
    assert_addr(&f->addrs[0], "10.0.1.1:80");
    assert_addr(&f->addrs[59], "10.0.1.60:80");
    mg_disc_status_t st;
    assert_true(mg_disc_status(f->d, "big", &st));
    assert_int_equal(st.naddrs, 60);
    assert_int_equal(st.failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(normalize_sorts_dedups_and_caps),
        cmocka_unit_test(compare_and_format),
        cmocka_unit_test_setup_teardown(bad_nameserver_is_a_clear_error, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_watch_arguments_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(pods_appear_and_disappear, setup, teardown),
        cmocka_unit_test_setup_teardown(ipv6_records_follow_ipv4, setup, teardown),
        cmocka_unit_test_setup_teardown(no_records_of_a_name_means_no_pods, setup, teardown),
        cmocka_unit_test_setup_teardown(refused_answer_is_named, setup, teardown),
        cmocka_unit_test_setup_teardown(nameserver_down_keeps_the_set_then_resumes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(first_answer_waits_for_a_nameserver, setup, teardown),
        cmocka_unit_test_setup_teardown(unwatch_stops_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(unwatch_from_the_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(watch_again_same_is_a_no_op_other_replaces, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(ip_literal_needs_no_dns, setup, teardown),
        cmocka_unit_test_setup_teardown(interval_has_a_floor, setup, teardown),
        cmocka_unit_test_setup_teardown(many_records_come_over_tcp, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
