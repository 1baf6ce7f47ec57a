/* tests/unit/test_conf.c - bootstrap config: defaults, gateway.json, flags, merged checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/log.h"
#include "gateway/conf.h"

/* Each test gets a fresh temp directory (|*state|) with a valid routes.json and TLS files. */
typedef struct fx {
    char dir[64];
    char files[16][128];
    size_t nfiles;
} fx_t;

static const char *put(fx_t *f, const char *name, const char *content)
{
    char *path = f->files[f->nfiles++], dir[sizeof(f->dir)];
    memcpy(dir, f->dir, sizeof(dir)); /* a copy: GCC's -Wrestrict sees both inside |f| */
    snprintf(path, sizeof(f->files[0]), "%s/%s", dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    /* ' stands for " so documents stay readable in C strings */
    for (const char *p = content; *p; p++)
        fputc(*p == '\'' ? '"' : *p, fp);
    fclose(fp);
    return path;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/test_conf_XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    put(f, "routes.json", "{'domain':'x.com','services':{'a':{'pods':['127.0.0.1:9001']}}}");
    put(f, "cert.pem", "not really a certificate: the config only checks it is readable\n");
    put(f, "key.pem", "not really a key\n");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    for (size_t i = f->nfiles; i-- > 0;) /* newest first: files before their directories */
        remove(f->files[i]);
    rmdir(f->dir);
    free(f);
    return 0;
}

#define ARGV(...) ((char *[]){"modelgate", __VA_ARGS__, NULL})

static int argc_of(char **argv)
{
    int n = 0;
    while (argv[n] != NULL)
        n++;
    return n;
}

/* Runs mg_conf_from_args and returns its errors (caller frees); NULL when it succeeded. */
static char *run(char **argv, int argc, mg_conf_t *c, mg_conf_action_t *action)
{
    char *errors = (char *)"untouched";
    mg_conf_action_t a;
    mg_err_t err = mg_conf_from_args(argc, argv, c, action != NULL ? action : &a, &errors);
    if (err == MG_OK) {
        assert_null(errors);
        return NULL;
    }
    assert_int_equal(err, MG_E_CONFIG);
    assert_non_null(errors);
    return errors;
}

#define RUN_OK(c, ...)                                                                             \
    do {                                                                                           \
        char **v_ = ARGV(__VA_ARGS__);                                                             \
        char *e_ = run(v_, argc_of(v_), (c), NULL);                                                \
        if (e_ != NULL)                                                                            \
            fail_msg("unexpected errors:\n%s", e_);                                                \
    } while (0)

static char *run_fail(mg_conf_t *c, char **argv)
{
    char *e = run(argv, argc_of(argv), c, NULL);
    if (e == NULL)
        fail_msg("expected errors");
    /* on error nothing is left for the caller to free */
    assert_null(c->routes_path);
    assert_int_equal(c->nlisten, 0);
    return e;
}

static size_t count_lines(const char *s)
{
    size_t n = 1;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void expect_line(const char *errors, const char *line)
{
    if (strstr(errors, line) == NULL)
        fail_msg("missing error line:\n  %s\nin:\n%s", line, errors);
}

/* |errors| holds exactly |lines|, each as "FILE: line"; frees |errors|. */
static void expect_file_errors(char *errors, const char *file, const char *const *lines, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char want[512];
        snprintf(want, sizeof(want), "%s: %s", file, lines[i]);
        expect_line(errors, want);
    }
    assert_int_equal(count_lines(errors), n);
    free(errors);
}

/* ---- defaults ---- */

static void defaults(void **state)
{
    (void)state;
    mg_conf_t c;
    memset(&c, 0xab, sizeof(c));
    mg_conf_defaults(&c);
    assert_int_equal(c.nlisten, 0);
    assert_int_equal(c.ntls_listen, 0);
    assert_null(c.tls_cert);
    assert_null(c.tls_key);
    assert_int_equal(c.tls_reload_check_ms, 60000);
    assert_int_equal(c.tls_ticket_key_rotation_ms, 3600000);
    assert_int_equal(c.workers, 0);
    assert_null(c.routes_path);
    assert_null(c.backends);
    assert_int_equal(c.backend_proto, MG_UP_H2C);
    assert_null(c.access_log);
    assert_int_equal(c.log_level, MG_LOG_INFO);
    assert_int_equal(c.limits.max_concurrent_streams, 100);
    assert_int_equal(c.limits.max_header_list_size, 65536);
    assert_int_equal(c.limits.max_headers, 100);
    assert_int_equal(c.limits.stream_window, 1048576);
    assert_int_equal(c.limits.connection_window, 4194304);
    assert_int_equal(c.limits.connection_buffer, 4194304);
    assert_int_equal(c.limits.max_request_body, 0);
    assert_int_equal(c.limits.max_client_conns, 0);
    assert_int_equal(c.timeouts_ms.connect, 2000);
    assert_int_equal(c.timeouts_ms.first_byte, 30000);
    assert_int_equal(c.timeouts_ms.idle, 60000);
    assert_int_equal(c.timeouts_ms.total, 0);
    assert_int_equal(c.timeouts_ms.client_idle, 120000);
    assert_int_equal(c.timeouts_ms.client_write, 30000);
    assert_int_equal(c.timeouts_ms.drain, 10000);
    assert_int_equal(c.timeouts_ms.reload_wait, 30000);
    assert_int_equal(c.upstream.max_streams_per_conn, 100);
    assert_int_equal(c.upstream.max_idle_conns_per_pod, 64);
    assert_int_equal(c.upstream.max_conns_per_pod, 1024);
    assert_int_equal(c.upstream.max_pending_per_pod, 1024);
    assert_int_equal(c.upstream.stream_window, 262144);
    assert_int_equal(c.upstream.connection_window, 16777216);
    assert_true(c.generate_request_id); /* as Envoy's generate_request_id */
    assert_false(c.request_id_in_response);
    assert_false(c.proxy_protocol);
    mg_conf_clear(&c);
}

static void quick_start_flags(void **state)
{
    (void)state;
    mg_conf_t c;
    mg_conf_action_t action = MG_CONF_HELP;
    char **argv = ARGV("--listen", "127.0.0.1:8080", "--listen", "[::1]:8080", "--backend",
                       "127.0.0.1:9001,127.0.0.1:9002", "--backend-proto", "http1", "--access-log",
                       "-", "--log-level", "debug");
    assert_null(run(argv, argc_of(argv), &c, &action));
    assert_int_equal(action, MG_CONF_RUN);
    assert_int_equal(c.nlisten, 2);
    assert_string_equal(c.listen[1], "[::1]:8080");
    assert_string_equal(c.backends, "127.0.0.1:9001,127.0.0.1:9002");
    assert_int_equal(c.backend_proto, MG_UP_H1);
    assert_null(c.routes_path);
    assert_string_equal(c.access_log, "-");
    assert_int_equal(c.log_level, MG_LOG_DEBUG);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(c.workers, cores < 1 ? 1 : cores); /* 0 resolved */
    mg_conf_clear(&c);
    mg_conf_clear(&c); /* idempotent */

    /* --backend given again adds pods, as nghttpx's -b does (the last one used to win) */
    argv = ARGV("--listen", "127.0.0.1:8080", "--backend", "127.0.0.1:9001", "--backend",
                "127.0.0.1:9002,127.0.0.1:9003");
    assert_null(run(argv, argc_of(argv), &c, &action));
    assert_string_equal(c.backends, "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003");
    mg_conf_clear(&c);
}

/* Listeners that bind would find taken: a name that resolves to another's address, or a
 * wildcard on another's port ("Address already in use" at start-up, OK from --check-config). */
static void listeners_that_overlap(void **state)
{
    (void)state;
    mg_conf_t c;
    char *e = run_fail(&c, ARGV("--listen", "127.0.0.1:18080", "--listen", "localhost:18080",
                                "--backend", "127.0.0.1:9001"));
    expect_line(e, "--listen: \"localhost:18080\" takes the address of another --listen "
                   "(\"127.0.0.1:18080\")");
    free(e);
    e = run_fail(&c, ARGV("--listen", "0.0.0.0:18081", "--listen", "127.0.0.1:18081", "--backend",
                          "127.0.0.1:9001"));
    expect_line(e, "--listen: \"127.0.0.1:18081\" takes the address of another --listen");
    free(e);
    e = run_fail(&c, ARGV("--listen", "[::]:18082", "--listen", "127.0.0.1:18082", "--backend",
                          "127.0.0.1:9001"));
    expect_line(e, "takes the address of another --listen");
    free(e);
    RUN_OK(&c, "--listen", "127.0.0.1:18083", "--listen", "127.0.0.2:18083", "--listen",
           "127.0.0.1:18084", "--backend", "127.0.0.1:9001");
    mg_conf_clear(&c);
}

/* ---- the file, and flags over it ---- */

/* A listener given twice is named as it was given: the flag, or the key of the file. Two
 * --listen flags were said as "FILE: listen[1]: ... is listen[0] too" of a file with one. */
static void listeners_named_as_given(void **state)
{
    fx_t *f = *state;
    mg_conf_t c;
    const char *cfg = put(f, "only.json",
                          "{'listen':['127.0.0.1:18090'],'admin':{'listen':'127.0.0.1:18091'},"
                          "'routes':'routes.json'}");
    char *e = run_fail(&c, ARGV("--config", (char *)cfg, "--listen", "127.0.0.1:18092", "--listen",
                                "127.0.0.1:18092"));
    assert_string_equal(e, "--listen: \"127.0.0.1:18092\" given twice (expected each address "
                           "once)");
    free(e);
    e = run_fail(&c, ARGV("--config", (char *)cfg, "--listen", "127.0.0.1:18091", "--tls-listen",
                          "127.0.0.1:18091", "--cert", "cert.pem", "--key", "key.pem"));
    char want[512];
    snprintf(want, sizeof(want),
             "--tls-listen: \"127.0.0.1:18091\" is --listen too (expected each address once)\n"
             "%s: admin.listen: \"127.0.0.1:18091\" is --listen too (expected each address "
             "once)",
             cfg);
    expect_line(e, want);
    free(e);
}

static void file_then_flags(void **state)
{
    fx_t *f = *state;
    const char *cfg = put(f, "gateway.json",
                          "{'listen':['127.0.0.1:8080'],'workers':2,'routes':'routes.json',"
                          "'log_level':'warn','access_log':'access.log',"
                          "'limits':{'max_concurrent_streams':50,'max_request_body':10000000000,"
                          "'max_client_conns':5000},"
                          "'timeouts_ms':{'connect':100,'total':5000,'reload_wait':0},"
                          "'upstream':{'max_idle_conns_per_pod':0},'request_id_in_response':true,"
                          "'generate_request_id':false,'proxy_protocol':true}");
    mg_conf_t c;
    RUN_OK(&c, "--config", (char *)cfg);
    assert_true(c.request_id_in_response);
    assert_false(c.generate_request_id);
    assert_true(c.proxy_protocol);
    assert_int_equal(c.nlisten, 1);
    assert_string_equal(c.listen[0], "127.0.0.1:8080");
    assert_int_equal(c.workers, 2);
    assert_int_equal(c.log_level, MG_LOG_WARN);
    assert_int_equal(c.limits.max_concurrent_streams, 50);
    assert_int_equal(c.limits.max_request_body, 10000000000ull);
    assert_int_equal(c.limits.max_client_conns, 5000);
    assert_int_equal(c.limits.max_headers, 100); /* untouched keys keep their defaults */
    assert_int_equal(c.timeouts_ms.connect, 100);
    assert_int_equal(c.timeouts_ms.total, 5000);
    assert_int_equal(c.timeouts_ms.reload_wait, 0);
    assert_int_equal(c.timeouts_ms.idle, 60000);
    assert_int_equal(c.upstream.max_idle_conns_per_pod, 0);
    char want[256];
    snprintf(want, sizeof(want), "%s/routes.json", f->dir);
    assert_string_equal(c.routes_path, want);
    mg_conf_clear(&c);

    /* flags win; a --listen replaces the file's list rather than adding to it */
    RUN_OK(&c, "-c", (char *)cfg, "--workers", "3", "--listen", "0.0.0.0:9000", "--log-level",
           "error", "--access-log", "", "--routes", "/etc/other.json");
    assert_int_equal(c.workers, 3);
    assert_int_equal(c.nlisten, 1);
    assert_string_equal(c.listen[0], "0.0.0.0:9000");
    assert_int_equal(c.log_level, MG_LOG_ERROR);
    assert_null(c.access_log);
    assert_string_equal(c.routes_path, "/etc/other.json");
    assert_int_equal(c.limits.max_concurrent_streams, 50);
    mg_conf_clear(&c);
}

static void relative_paths(void **state)
{
    fx_t *f = *state;
    char *sub = f->files[f->nfiles++];
    memcpy(sub, f->dir, sizeof(f->dir));
    strcat(sub, "/sub");
    assert_int_equal(mkdir(sub, 0700), 0);
    /* relative paths follow the file; an absolute one (the key) stays as it is */
    char keypath[128], text[512];
    snprintf(keypath, sizeof(keypath), "%s/key.pem", f->dir);
    snprintf(text, sizeof(text),
             "{'tls':{'listen':['127.0.0.1:8443'],'cert':'../cert.pem','key':'%s',"
             "'reload_check_ms':0,'ticket_key_file':'t.keys'},"
             "'routes':'../routes.json','access_log':'logs/a.log'}",
             keypath);
    const char *cfg = put(f, "sub/gateway.json", text);

    mg_conf_t c;
    RUN_OK(&c, "--config", (char *)cfg);
    char want[256];
    snprintf(want, sizeof(want), "%s/sub/../cert.pem", f->dir);
    assert_string_equal(c.tls_cert, want);
    assert_string_equal(c.tls_key, keypath);
    snprintf(want, sizeof(want), "%s/sub/../routes.json", f->dir);
    assert_string_equal(c.routes_path, want);
    snprintf(want, sizeof(want), "%s/sub/logs/a.log", f->dir);
    assert_string_equal(c.access_log, want);
    assert_int_equal(c.ntls_listen, 1);
    assert_int_equal(c.tls_reload_check_ms, 0);
    snprintf(want, sizeof(want), "%s/sub/t.keys", f->dir);
    assert_string_equal(c.tls_ticket_key_file, want);
    mg_conf_clear(&c);

    /* "-" is stdout, not a file next to the config; a flag path is relative to the cwd */
    put(f, "sub/gateway.json", "{'listen':['127.0.0.1:1'],'routes':'r.json','access_log':'-'}");
    mg_conf_defaults(&c);
    assert_int_equal(mg_conf_load(cfg, &c, NULL), MG_OK);
    assert_string_equal(c.access_log, "-");
    mg_conf_clear(&c);
    RUN_OK(&c, "--listen", "127.0.0.1:1", "--routes", "r.json", "--access-log", "x.log");
    assert_string_equal(c.routes_path, "r.json");
    assert_string_equal(c.access_log, "x.log");
    mg_conf_clear(&c);

    /* a file in the working directory: paths stay relative to it */
    mg_conf_defaults(&c);
    char cwd[256];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f->dir), 0);
    put(f, "g2.json", "{'routes':'routes.json','access_log':null}");
    assert_int_equal(mg_conf_load("g2.json", &c, NULL), MG_OK);
    assert_int_equal(chdir(cwd), 0);
    assert_string_equal(c.routes_path, "routes.json");
    assert_null(c.access_log);
    mg_conf_clear(&c);
}

static void example_config_loads(void **state)
{
    (void)state;
    mg_conf_t c;
    mg_conf_defaults(&c);
    char *errors = (char *)"untouched";
    assert_int_equal(mg_conf_load("../../conf/gateway.json", &c, &errors), MG_OK);
    assert_null(errors);
    assert_int_equal(c.nlisten, 1);
    assert_string_equal(c.listen[0], "127.0.0.1:8080");
    assert_int_equal(c.ntls_listen, 1);
    assert_string_equal(c.tls_listen[0], "127.0.0.1:8443");
    assert_string_equal(c.tls_cert, "../../conf/tls/cert.pem");
    assert_string_equal(c.tls_key, "../../conf/tls/key.pem");
    assert_string_equal(c.routes_path, "../../conf/routes.json");
    mg_conf_clear(&c);
}

static void load_is_all_or_nothing(void **state)
{
    fx_t *f = *state;
    const char *cfg = put(f, "bad.json",
                          "{'listen':['127.0.0.1:1'],'workers':2,'limits':"
                          "{'max_headers':0}}");
    mg_conf_t c;
    mg_conf_defaults(&c);
    c.workers = 7;
    char *errors = NULL;
    assert_int_equal(mg_conf_load(cfg, &c, &errors), MG_E_CONFIG);
    assert_int_equal(c.workers, 7);
    assert_int_equal(c.nlisten, 0);
    free(errors);
    mg_conf_clear(&c);
}

/* upstream.max_conns_per_pod and max_pending_per_pod: 0 (unlimited) to 1000000, integers only;
 * each error names the file, the key's path and what is accepted, and a typo lists both keys */
static void upstream_conn_limits(void **state)
{
    fx_t *f = *state;
    const char *ok = put(f, "ok.json",
                         "{'listen':['127.0.0.1:8080'],'routes':'routes.json',"
                         "'upstream':{'max_conns_per_pod':0,'max_pending_per_pod':1000000}}");
    mg_conf_t c;
    RUN_OK(&c, "--config", (char *)ok);
    assert_int_equal(c.upstream.max_conns_per_pod, 0);
    assert_int_equal(c.upstream.max_pending_per_pod, 1000000);
    assert_int_equal(c.upstream.max_streams_per_conn, 100); /* the others keep their defaults */
    mg_conf_clear(&c);

    const char *bad = put(f, "bad.json",
                          "{'listen':['127.0.0.1:8080'],'routes':'routes.json',"
                          "'upstream':{'max_conns_per_pod':1000001,'max_pending_per_pod':'many',"
                          "'max_conn_per_pod':4}}");
    char *e = run_fail(&c, ARGV("--config", (char *)bad));
    const char *lines[] = {
        "upstream.max_conn_per_pod: unknown key (valid keys: max_streams_per_conn, "
        "max_idle_conns_per_pod, max_conns_per_pod, max_pending_per_pod, stream_window, "
        "connection_window)",
        "upstream.max_conns_per_pod: out of range (got 1000001; expected integer 0-1000000 "
        "(connections, 0 = unlimited))",
        "upstream.max_pending_per_pod: wrong type (got string \"many\"; expected integer "
        "0-1000000 (requests, 0 = unlimited))",
    };
    expect_file_errors(e, bad, lines, sizeof(lines) / sizeof(lines[0]));

    const char *neg = put(f, "neg.json",
                          "{'listen':['127.0.0.1:8080'],'routes':'routes.json',"
                          "'upstream':{'max_pending_per_pod':-1}}");
    const char *neg_line[] = {"upstream.max_pending_per_pod: out of range (got -1; expected "
                              "integer 0-1000000 (requests, 0 = unlimited))"};
    expect_file_errors(run_fail(&c, ARGV("--config", (char *)neg)), neg, neg_line, 1);
}

/* ---- errors in the file ---- */

static void file_errors_all_in_one_pass(void **state)
{
    fx_t *f = *state;
    const char *cfg =
        put(f, "gateway.json",
            "{'listen':['127.0.0.1:8080','127.0.0.1:99999',5],'lisen':[],"
            "'tls':{'listen':'x','crt':'a','reload_check_ms':86400001,"
            "'ticket_key_rotation_ms':999},'workers':-1,'routes':'','access_log':5,"
            "'log_level':'loud','limits':{'max_concurrent_streams':0,'stream_window':65534,"
            "'connection_window':2147483648,'max_headers':1.5,'max_header_list_size':'big',"
            "'max_request_body':-1,'x':1},'timeouts_ms':{'idle':3600001,'drain':-5,"
            "'reload_wait':'30s'},"
            "'upstream':{'max_streams_per_conn':0,'max_idle_conns_per_pod':10001},"
            "'request_id_in_response':'yes','generate_request_id':0}");
    mg_conf_t c;
    char *e = run_fail(&c, ARGV("--config", (char *)cfg));
    const char *lines[] = {
        "lisen: unknown key (valid keys: listen, tls, workers, routes, access_log, log_level, "
        "limits, timeouts_ms, upstream, admin, dns_nameserver, request_log_db, features, "
        "generate_request_id, request_id_in_response, proxy_protocol, answer_half_closed, "
        "trusted_proxies)",
        "listen[1]: invalid address \"127.0.0.1:99999\" (port must be 1-65535)",
        "listen[2]: wrong type (got number 5; expected string \"host:port\")",
        "tls.crt: unknown key (valid keys: listen, cert, key, reload_check_ms, "
        "ticket_key_rotation_ms, ticket_key_file)",
        "tls.listen: wrong type (got string \"x\"; expected array of \"host:port\" strings, e.g. "
        "[\"127.0.0.1:8080\"])",
        "tls.reload_check_ms: out of range (got 86400001; expected integer 0-86400000 (ms "
        "between file checks, 0 = only on SIGHUP))",
        "tls.ticket_key_rotation_ms: too small (got 999; expected 0 (never) or 1000-604800000)",
        "workers: out of range (got -1; expected 0-1024, 0 = one per core)",
        "routes: empty (expected a file path)",
        "access_log: wrong type (got number 5; expected string (a path, \"-\" for stdout, \"\" "
        "for off) or null)",
        "log_level: unknown level \"loud\" (expected debug, info, warn or error)",
        "limits.x: unknown key (valid keys: max_concurrent_streams, max_header_list_size, "
        "max_headers, stream_window, connection_window, connection_buffer, max_request_body, "
        "max_client_conns)",
        "limits.max_concurrent_streams: out of range (got 0; expected integer 1-100000 (streams "
        "per client connection))",
        "limits.max_header_list_size: wrong type (got string \"big\"; expected integer "
        "1024-16777216 (bytes))",
        "limits.max_headers: wrong type (got number 1.5; expected integer 1-10000 (header "
        "fields))",
        "limits.stream_window: out of range (got 65534; expected integer 65535-2147483647 "
        "(bytes))",
        "limits.connection_window: out of range (got 2147483648; expected integer "
        "65535-2147483647 (bytes))",
        "limits.max_request_body: out of range (got -1; expected integer 0-9223372036854775807 "
        "(bytes, 0 = unlimited))",
        "timeouts_ms.idle: out of range (got 3600001; expected integer 0-3600000 (ms, 0 = none))",
        "timeouts_ms.drain: out of range (got -5; expected integer 0-3600000 (ms, 0 = none))",
        "timeouts_ms.reload_wait: wrong type (got string \"30s\"; expected integer 0-3600000 (ms, "
        "0 = take over at once))",
        "upstream.max_streams_per_conn: out of range (got 0; expected integer 1-100000 (streams "
        "per upstream connection))",
        "upstream.max_idle_conns_per_pod: out of range (got 10001; expected integer 0-10000 "
        "(connections))",
        "generate_request_id: wrong type (got number 0; expected true or false)",
        "request_id_in_response: wrong type (got string \"yes\"; expected true or false)",
    };
    /* nothing else: in particular no "no listener" noise after a failed file */
    expect_file_errors(e, cfg, lines, sizeof(lines) / sizeof(lines[0]));
}

static void file_syntax_errors(void **state)
{
    fx_t *f = *state;
    const char *cfg = put(f, "gateway.json", "{\n 'workers': 1,\n 'workers': 2\n}");
    mg_conf_t c;
    char *e = run_fail(&c, ARGV("--config", (char *)cfg));
    char want[256];
    snprintf(want, sizeof(want), "%s:3:", cfg);
    assert_memory_equal(e, want, strlen(want));
    expect_line(e, "duplicate object key");
    assert_int_equal(count_lines(e), 1);
    free(e);

    cfg = put(f, "gateway2.json", "{'workers': 1");
    e = run_fail(&c, ARGV("--config", (char *)cfg));
    snprintf(want, sizeof(want), "%s:1:", cfg);
    assert_memory_equal(e, want, strlen(want));
    free(e);

    e = run_fail(&c, ARGV("--config", "/nonexistent/gateway.json"));
    expect_line(e, "/nonexistent/gateway.json: unable to open");
    free(e);

    cfg = put(f, "gateway3.json", "[]");
    e = run_fail(&c, ARGV("--config", (char *)cfg));
    snprintf(want, sizeof(want), "%s: wrong type (got an array; expected object)", cfg);
    assert_string_equal(e, want);
    free(e);

    /* a NUL in a string: jansson alone said "... without JSON_ALLOW_NUL", its own flag */
    cfg = put(f, "gateway5.json", "{'routes':'r\\u0000.json'}");
    e = run_fail(&c, ARGV("--config", (char *)cfg));
    snprintf(want, sizeof(want), "%s:1:", cfg);
    assert_memory_equal(e, want, strlen(want));
    expect_line(e, ": strings may not contain NUL (\\u0000) near '");
    if (strstr(e, "JSON_ALLOW_NUL") != NULL)
        fail_msg("jansson's flag named:\n%s", e);
    assert_int_equal(count_lines(e), 1);
    free(e);

    /* a directory: jansson alone said "'[' or '{' expected near end of file" */
    e = run_fail(&c, ARGV("--config", "/tmp"));
    assert_string_equal(e, "/tmp: a directory, not a JSON file");
    free(e);

    /* an integer written as a real reads as one: "got number 1; expected integer" was a riddle */
    cfg = put(f, "gateway4.json", "{'listen':['127.0.0.1:8080'],'workers':1e0}");
    e = run_fail(&c, ARGV("--config", (char *)cfg));
    snprintf(want, sizeof(want),
             "%s: workers: wrong type (got number 1, written with a fraction or an exponent; "
             "expected integer 0-1024 (0 = one per core))",
             cfg);
    assert_string_equal(e, want);
    free(e);
}

/* The routing document passed as the config, and the config as the routing document: one
 * line that says which file goes where, not a line per key of the other document. */
static void documents_swapped(void **state)
{
    fx_t *f = *state;
    mg_conf_t c;
    mg_conf_action_t a = MG_CONF_RUN;
    const char *routes =
        put(f, "routes.json",
            "{'domain':'x.com','envs':['prod'],'services':{'a':{'pods':"
            "['127.0.0.1:1']}},'routes':[{'app':'m','env':'prod','service':'a'}]}");
    char *e = run_fail(&c, ARGV("--check-config", (char *)routes));
    char want[512];
    snprintf(want, sizeof(want),
             "%s: this is a routing document, not the gateway's config: name it in "
             "gateway.json's \"routes\" or pass it with --routes FILE",
             routes);
    assert_string_equal(e, want);
    free(e);

    const char *cfg = put(f, "gateway.json", "{'listen':['127.0.0.1:8080'],'routes':'gw2.json'}");
    put(f, "gw2.json", "{'listen':['127.0.0.1:8080'],'workers':1}");
    char **argv = ARGV("--check-config", (char *)cfg);
    e = run(argv, argc_of(argv), &c, &a);
    assert_non_null(e);
    expect_line(e, "gw2.json: this is the gateway's config (gateway.json), not a routing "
                   "document: pass it with --config FILE");
    assert_int_equal(count_lines(e), 1);
    free(e);
}

static void too_many_listeners(void **state)
{
    fx_t *f = *state;
    const char *cfg = put(f, "gateway.json",
                          "{'listen':['a:1','a:2','a:3','a:4','a:5','a:6','a:7','a:8','a:9']}");
    mg_conf_t c;
    char *e = run_fail(&c, ARGV("--config", (char *)cfg));
    char want[256];
    snprintf(want, sizeof(want), "%s: listen: too many addresses (got 9; expected at most 8)", cfg);
    assert_string_equal(e, want);
    free(e);
    e = run_fail(&c, ARGV("--listen", "a:1", "--listen", "a:2", "--listen", "a:3", "--listen",
                          "a:4", "--listen", "a:5", "--listen", "a:6", "--listen", "a:7",
                          "--listen", "a:8", "--listen", "a:9", "--backend", "127.0.0.1:1"));
    assert_string_equal(e, "--listen: given too often (expected at most 8)");
    free(e);
}

/* ---- flag errors ---- */

static void flag_errors(void **state)
{
    (void)state;
    mg_conf_t c;
    char *e = run_fail(&c, ARGV("--listen", "127.0.0.1", "--tls-listen", "::1:443", "--workers",
                                "many", "--backend-proto", "h3", "--log-level", "loud", "--backend",
                                "127.0.0.1:0,,b:1", "--routes", "", "--bogus", "--cert"));
    const char *lines[] = {
        "--bogus: unknown option (see --help)",
        "--cert: missing value (see --help)",
        "--listen: invalid address \"127.0.0.1\" (missing :port)",
        ("--tls-listen: invalid address \"::1:443\" (IPv6 addresses need brackets, e.g. "
         "[::1]:8080)"),
        "--routes: empty (expected a file path)",
        "--backend: invalid address \"127.0.0.1:0\" (port must be 1-65535)",
        "--backend: empty pod in \"127.0.0.1:0,,b:1\" (expected H:P[,H:P...])",
        "--backend-proto: unknown protocol \"h3\" (expected h2c or http1)",
        "--workers: invalid value \"many\" (expected an integer 0-1024, 0 = one per core)",
        "--log-level: unknown level \"loud\" (expected debug, info, warn or error)",
    };
    size_t n = sizeof(lines) / sizeof(lines[0]);
    for (size_t i = 0; i < n; i++)
        expect_line(e, lines[i]);
    /* plus: the TLS listener has no cert/key (--cert had no value) */
    expect_line(e, "--cert: missing (a TLS listener needs a certificate; expected tls.cert in the "
                   "config file or --cert FILE)");
    expect_line(e, "--key: missing (a TLS listener needs a private key; expected tls.key in the "
                   "config file or --key FILE)");
    assert_int_equal(count_lines(e), n + 2);
    free(e);

    e = run_fail(&c, ARGV("--listen", "a:1", "--backend", "127.0.0.1:2", "stray", "-x"));
    expect_line(e, "stray: unexpected argument (flags take their value as --flag VALUE)");
    expect_line(e, "-x: unexpected argument");
    free(e);
    e = run_fail(&c, ARGV("-x", "--listen", "a:1", "--backend", "127.0.0.1:2"));
    assert_string_equal(e, "-x: unknown option (see --help)");
    free(e);
    e = run_fail(&c, ARGV("--workers", "1025", "--listen", "a:1", "--backend", "127.0.0.1:2"));
    assert_string_equal(
        e, "--workers: invalid value \"1025\" (expected an integer 0-1024, 0 = one per core)");
    free(e);
    e = run_fail(&c, ARGV("--workers", "-1", "--listen", "a:1", "--backend", "127.0.0.1:2"));
    expect_line(e, "--workers: invalid value \"-1\"");
    free(e);
    e = run_fail(&c, ARGV("--config", "a", "--check-config", "b"));
    expect_line(e, "--check-config: given with --config (expected one of --config or "
                   "--check-config, once)");
    free(e);
    /* each line names the flag that was repeated */
    e = run_fail(&c, ARGV("--config", "a", "--config", "b", "--check-config", "x"));
    expect_line(e, "--config: given more than once (expected one of --config or --check-config, "
                   "once)");
    expect_line(e, "--check-config: given with --config");
    if (strstr(e, "--check-config: given more than once") != NULL)
        fail_msg("--check-config was given once:\n%s", e);
    free(e);
    /* with a routing document the flag would do nothing: each service says its protocol */
    e = run_fail(&c, ARGV("--listen", "a:1", "--routes", "r.json", "--backend-proto", "http1"));
    expect_line(e, "--backend-proto: applies to --backend pods only (the routing document "
                   "\"r.json\" gives each service's \"protocol\")");
    free(e);
    e = run_fail(&c, ARGV("--check-config", "a", "--check-config", "b"));
    expect_line(e, "--check-config: given more than once");
    if (strstr(e, "--config:") != NULL)
        fail_msg("--config was not given:\n%s", e);
    free(e);
}

static void help_and_version(void **state)
{
    (void)state;
    mg_conf_t c;
    mg_conf_action_t a;
    /* --help wins over everything else on the line, even errors */
    char **argv = ARGV("--bogus", "--help");
    assert_null(run(argv, argc_of(argv), &c, &a));
    assert_int_equal(a, MG_CONF_HELP);
    mg_conf_clear(&c);
    argv = ARGV("-h");
    assert_null(run(argv, argc_of(argv), &c, &a));
    assert_int_equal(a, MG_CONF_HELP);
    mg_conf_clear(&c);
    argv = ARGV("--version");
    assert_null(run(argv, argc_of(argv), &c, &a));
    assert_int_equal(a, MG_CONF_VERSION);
    mg_conf_clear(&c);
}

static void usage_lists_every_flag(void **state)
{
    (void)state;
    const char *u = mg_conf_usage();
    const char *flags[] = {"--config FILE",
                           "--check-config FILE",
                           "--listen ADDR",
                           "--tls-listen ADDR",
                           "--cert FILE",
                           "--key FILE",
                           "--routes FILE",
                           "--backend H:P",
                           "--backend-proto",
                           "--workers N",
                           "--access-log PATH",
                           "--log-level LEVEL",
                           "--help",
                           "--version"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (strstr(u, flags[i]) == NULL)
            fail_msg("usage does not mention %s", flags[i]);
    /* one line per flag */
    size_t dashes = 0;
    for (const char *p = u; (p = strstr(p, "\n  ")) != NULL; p++)
        dashes++;
    assert_int_equal(dashes, 14);
}

/* ---- checks after the merge ---- */

static void needs_a_listener(void **state)
{
    fx_t *f = *state;
    mg_conf_t c;
    char *e = run_fail(&c, ARGV("--backend", "127.0.0.1:1"));
    assert_string_equal(e, "--listen: no listener configured (expected --listen ADDR or "
                           "--tls-listen ADDR)");
    free(e);
    const char *cfg = put(f, "gateway.json", "{'routes':'routes.json'}");
    e = run_fail(&c, ARGV("--config", (char *)cfg));
    char want[512];
    snprintf(want, sizeof(want),
             "%s: listen: no listener configured (expected at least one address in listen or "
             "tls.listen, or --listen / --tls-listen)",
             cfg);
    assert_string_equal(e, want);
    free(e);
    /* a TLS listener alone is enough */
    char cert[128], key[128];
    snprintf(cert, sizeof(cert), "%s/cert.pem", f->dir);
    snprintf(key, sizeof(key), "%s/key.pem", f->dir);
    RUN_OK(&c, "--tls-listen", "[::1]:8443", "--cert", cert, "--key", key, "--backend", "a:1");
    assert_int_equal(c.ntls_listen, 1);
    assert_string_equal(c.tls_cert, cert);
    mg_conf_clear(&c);
}

static void tls_needs_readable_files(void **state)
{
    fx_t *f = *state;
    mg_conf_t c;
    const char *cfg = put(f, "gateway.json",
                          "{'tls':{'listen':['127.0.0.1:8443'],'cert':'missing.pem'},"
                          "'routes':'routes.json'}");
    char *e = run_fail(&c, ARGV("--config", (char *)cfg));
    char want[512];
    snprintf(want, sizeof(want),
             "%s: tls.cert: cannot read \"%s/missing.pem\" (No such file or directory)\n"
             "%s: tls.key: missing (a TLS listener needs a private key; expected tls.key in the "
             "config file or --key FILE)",
             cfg, f->dir, cfg);
    assert_string_equal(e, want);
    free(e);

    /* a TLS listener from the flags over a file without the pair: the flag is named */
    const char *plain =
        put(f, "plain.json", "{'listen':['127.0.0.1:8080'],'routes':'routes.json'}");
    e = run_fail(&c, ARGV("--config", (char *)plain, "--tls-listen", "127.0.0.1:8443"));
    snprintf(want, sizeof(want), "--tls-listen: needs --cert and --key (or tls.cert/tls.key in %s)",
             plain);
    assert_string_equal(e, want);
    free(e);
    e = run_fail(&c, ARGV("--config", (char *)plain, "--tls-listen", "127.0.0.1:8443", "--cert",
                          (char *)f->files[1]));
    snprintf(want, sizeof(want), "--tls-listen: needs --key (or tls.key in %s)", plain);
    assert_string_equal(e, want);
    free(e);

    /* the flags fix it, and the messages name the flags */
    char key[128];
    snprintf(key, sizeof(key), "%s/key.pem", f->dir);
    e = run_fail(&c, ARGV("--config", (char *)cfg, "--cert", "/nonexistent.pem", "--key", key));
    assert_string_equal(e, "--cert: cannot read \"/nonexistent.pem\" (No such file or directory)");
    free(e);
    char cert[128];
    snprintf(cert, sizeof(cert), "%s/cert.pem", f->dir);
    RUN_OK(&c, "--config", (char *)cfg, "--cert", cert, "--key", key);
    mg_conf_clear(&c);

    /* unreadable, not just missing (root reads everything, so only check as a user) */
    if (geteuid() != 0) {
        chmod(key, 0);
        e = run_fail(&c, ARGV("--config", (char *)cfg, "--cert", cert, "--key", key));
        snprintf(want, sizeof(want), "--key: cannot read \"%s\" (Permission denied)", key);
        assert_string_equal(e, want);
        free(e);
        chmod(key, 0600);
    }
}

static void routes_xor_backend(void **state)
{
    fx_t *f = *state;
    mg_conf_t c;
    char *e = run_fail(&c, ARGV("--listen", "a:1"));
    assert_string_equal(e, "--routes: no routing document and no --backend (expected \"routes\" "
                           "in the config file, --routes FILE, or --backend H:P[,H:P...])");
    free(e);
    const char *cfg = put(f, "gateway.json", "{'listen':['a:1']}");
    e = run_fail(&c, ARGV("--config", (char *)cfg));
    char want[512];
    snprintf(want, sizeof(want),
             "%s: routes: no routing document and no --backend (expected \"routes\" in the "
             "config file, --routes FILE, or --backend H:P[,H:P...])",
             cfg);
    assert_string_equal(e, want);
    free(e);
    e = run_fail(&c, ARGV("--listen", "a:1", "--routes", "r.json", "--backend", "b:1"));
    assert_string_equal(e, "--backend: cannot be combined with a routing document (routes "
                           "\"r.json\"; expected either a routing document or --backend)");
    free(e);
}

static void check_config_validates_routes(void **state)
{
    fx_t *f = *state;
    mg_conf_t c;
    mg_conf_action_t a = MG_CONF_RUN;
    const char *cfg =
        put(f, "gateway.json", "{'listen':['127.0.0.1:8080'],'routes':'routes.json'}");
    char **argv = ARGV("--check-config", (char *)cfg);
    assert_null(run(argv, argc_of(argv), &c, &a));
    assert_int_equal(a, MG_CONF_CHECK);
    mg_conf_clear(&c);

    /* the routing document's own errors come back with the config's */
    const char *routes = put(f, "bad-routes.json",
                             "{'domain':'x.com','services':{'a':{'pods':['127.0.0.1:0']}},"
                             "'default_service':'b'}");
    cfg = put(f, "gateway2.json", "{'listen':['127.0.0.1:8080','x'],'routes':'bad-routes.json'}");
    argv = ARGV("--check-config", (char *)cfg);
    char *e = run(argv, argc_of(argv), &c, &a);
    assert_non_null(e);
    char want[1024];
    /* the file failed, but its "routes" was well-formed: the document is checked all the same */
    snprintf(want, sizeof(want),
             "%s: listen[1]: invalid address \"x\" (missing :port)\n"
             "%s: services.a.pods[0]: invalid address \"127.0.0.1:0\" (port must be 1-65535)\n"
             "%s: default_service: unknown service \"b\" (expected one of: a)",
             cfg, routes, routes);
    assert_string_equal(e, want);
    free(e);

    cfg = put(f, "gateway3.json", "{'listen':['127.0.0.1:8080'],'routes':'bad-routes.json'}");
    argv = ARGV("--check-config", (char *)cfg);
    e = run(argv, argc_of(argv), &c, &a);
    assert_non_null(e);
    snprintf(want, sizeof(want),
             "%s: services.a.pods[0]: invalid address \"127.0.0.1:0\" (port must be 1-65535)\n"
             "%s: default_service: unknown service \"b\" (expected one of: a)",
             routes, routes);
    assert_string_equal(e, want);
    free(e);

    /* without --check-config the document is left to the gateway's start-up */
    argv = ARGV("--config", (char *)cfg);
    assert_null(run(argv, argc_of(argv), &c, &a));
    assert_int_equal(a, MG_CONF_RUN);
    mg_conf_clear(&c);

    /* --backend errors are said once: the pods are not resolved then (which says them too) */
    char many[65 * 16] = "";
    for (int i = 0; i < 65; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s127.0.0.1:%d", i ? "," : "",
                 9000 + i);
    const char *bad_backends[][2] = {
        {"", "--backend: empty pod in \"\" (expected H:P[,H:P...])"},
        {"127.0.0.1:1,", "--backend: empty pod in \"127.0.0.1:1,\" (expected H:P[,H:P...])"},
        {many, "--backend: too many pods (got 65; expected at most 64)"},
    };
    for (size_t i = 0; i < sizeof(bad_backends) / sizeof(bad_backends[0]); i++) {
        argv = ARGV("--check-config", (char *)put(f, "g5.json", "{'listen':['a:1']}"), "--backend",
                    (char *)bad_backends[i][0]);
        e = run(argv, argc_of(argv), &c, &a);
        assert_non_null(e);
        assert_string_equal(e, bad_backends[i][1]);
        free(e);
    }

    /* --check-config with --backend resolves the pods */
    argv = ARGV("--check-config", (char *)put(f, "g4.json", "{'listen':['a:1']}"), "--backend",
                "nohost.invalid:1");
    e = run(argv, argc_of(argv), &c, &a);
    assert_non_null(e);
    expect_line(e, "--backend: cannot resolve \"nohost.invalid:1\"");
    free(e);
}

/* A config file with errors does not hide the errors of the files it names: the routing
 * document, the TLS certificate and key, the ticket key file are loaded all the same, in
 * --check-config and at start-up (which is refused either way), when their paths are known. */
static void file_errors_do_not_hide_named_files(void **state)
{
    fx_t *f = *state;
    mg_conf_t c;
    mg_conf_action_t a;
    const char *routes =
        put(f, "env-routes.json",
            "{'domain':'x.com','envs':['production'],'services':{'s':{'pods':['127.0.0.1:1']}},"
            "'routes':[{'app':'a','env':'prod','service':'s'}]}");
    char env_err[512], want[2048];
    snprintf(env_err, sizeof(env_err),
             "%s: routes[0].env: unknown env \"prod\" (expected one of: production)", routes);
    const char *cfg = put(f, "window.json",
                          "{'listen':['127.0.0.1:8080'],'routes':'env-routes.json',"
                          "'limits':{'stream_window':1000}}");
    snprintf(want, sizeof(want),
             "%s: limits.stream_window: out of range (got 1000; expected integer "
             "65535-2147483647 (bytes))\n%s",
             cfg, env_err);
    const char *how[] = {"--check-config", "--config"};
    for (size_t i = 0; i < 2; i++) {
        char **argv = ARGV((char *)how[i], (char *)cfg);
        char *e = run(argv, argc_of(argv), &c, &a);
        assert_non_null(e);
        assert_string_equal(e, want);
        free(e);
    }

    /* TLS: the certificate (not PEM here) and a ticket key file of 79 bytes, behind an error
     * in tls itself */
    put(f, "tk79",
        "0123456789012345678901234567890123456789012345678901234567890123456789012345678");
    cfg = put(f, "tls.json",
              "{'routes':'env-routes.json','tls':{'listen':['127.0.0.1:8443'],"
              "'cert':'cert.pem','key':'key.pem','reload_check_ms':50,'ticket_key_file':'tk79'}}");
    for (size_t i = 0; i < 2; i++) {
        char **argv = ARGV((char *)how[i], (char *)cfg);
        char *e = run(argv, argc_of(argv), &c, &a);
        assert_non_null(e);
        snprintf(want, sizeof(want), "%s: tls.reload_check_ms: too small (got 50;", cfg);
        expect_line(e, want);
        expect_line(e, env_err);
        snprintf(want, sizeof(want), "TLS certificate '%s/cert.pem': not PEM", f->dir);
        expect_line(e, want);
        snprintf(want, sizeof(want), "tls.ticket_key_file: \"%s/tk79\" has 79 bytes", f->dir);
        expect_line(e, want);
        assert_int_equal(count_lines(e), 4);
        free(e);
    }

    /* a path whose own key is wrong is not known: nothing more is said (and with a syntax
     * error, nothing is known but the flags) */
    cfg = put(f, "badkey.json", "{'listen':['127.0.0.1:8080'],'routes':7}");
    char **argv = ARGV("--check-config", (char *)cfg);
    char *e = run(argv, argc_of(argv), &c, &a);
    assert_non_null(e);
    snprintf(want, sizeof(want),
             "%s: routes: wrong type (got number 7; expected string, a file path)", cfg);
    expect_line(e, want);
    assert_int_equal(count_lines(e), 1);
    free(e);
    cfg = put(f, "syntax.json", "{'listen':[}");
    argv = ARGV("--config", (char *)cfg, "--routes", (char *)routes);
    e = run(argv, argc_of(argv), &c, &a);
    assert_non_null(e);
    expect_line(e, env_err);
    assert_int_equal(count_lines(e), 2);
    free(e);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(defaults),
        T(quick_start_flags),
        T(file_then_flags),
        T(relative_paths),
        T(example_config_loads),
        T(load_is_all_or_nothing),
        T(file_errors_all_in_one_pass),
        T(upstream_conn_limits),
        T(file_syntax_errors),
        T(documents_swapped),
        T(listeners_that_overlap),
        T(listeners_named_as_given),
        T(too_many_listeners),
        T(flag_errors),
        T(help_and_version),
        T(usage_lists_every_flag),
        T(needs_a_listener),
        T(tls_needs_readable_files),
        T(routes_xor_backend),
        T(check_config_validates_routes),
        T(file_errors_do_not_hide_named_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
