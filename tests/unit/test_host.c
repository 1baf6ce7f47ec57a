/* tests/unit/test_host.c - "{app}-{env}.{domain}" parsing and address syntax. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "routing/host.h"

static const char *const envs[] = {"development", "staging", "sandbox",
                                   "production",  "eu-prod", "prod"};
#define NENVS (sizeof(envs) / sizeof(envs[0]))
#define DOMAIN "modelgate.local"

static mg_err_t parse(const char *host, mg_host_t *h)
{
    memset(h, 0, sizeof(*h));
    return mg_host_parse(host, strlen(host), DOMAIN, envs, NENVS, h);
}

static void expect_host(const char *host, const char *app, const char *env)
{
    mg_host_t h;
    assert_int_equal(parse(host, &h), MG_OK);
    assert_int_equal(h.app_len, strlen(app));
    assert_memory_equal(h.app, app, h.app_len);
    assert_string_equal(h.env, env);
    assert_int_equal(h.env_len, strlen(env));
}

static void simple(void **state)
{
    (void)state;
    expect_host("digits-production.modelgate.local", "digits", "production");
    expect_host("digits-staging.modelgate.local", "digits", "staging");
}

static void app_with_dashes(void **state)
{
    (void)state;
    expect_host("my-cool-app-sandbox.modelgate.local", "my-cool-app", "sandbox");
    /* "-development" only belongs to the env when it is the last part */
    expect_host("development-app-staging.modelgate.local", "development-app", "staging");
}

static void env_longest_match(void **state)
{
    (void)state;
    /* "eu-prod" and "prod" both match the end; the longer env wins */
    expect_host("digits-eu-prod.modelgate.local", "digits", "eu-prod");
    expect_host("digits-prod.modelgate.local", "digits", "prod");
    /* ... unless it would leave no app: "eu-prod" alone is app "eu", env "prod" */
    expect_host("eu-prod.modelgate.local", "eu", "prod");
}

static void env_points_into_envs(void **state)
{
    (void)state;
    mg_host_t h;
    assert_int_equal(parse("x-staging.modelgate.local", &h), MG_OK);
    assert_ptr_equal(h.env, envs[1]);
}

static void port_suffix(void **state)
{
    (void)state;
    expect_host("digits-production.modelgate.local:8443", "digits", "production");
    expect_host("digits-production.modelgate.local:", "digits", "production"); /* RFC 3986 */
    mg_host_t h;
    assert_int_equal(parse("digits-production.modelgate.local:84x3", &h), MG_E_PROTO);
    assert_int_equal(parse("digits-production.modelgate.local:123456", &h), MG_E_PROTO);
    assert_int_equal(parse("digits-production.modelgate.local:80:80", &h), MG_E_PROTO);
    /* five digits, but no TCP port: it was routed, and went on to the pod with that port */
    expect_host("digits-production.modelgate.local:65535", "digits", "production");
    assert_int_equal(parse("digits-production.modelgate.local:65536", &h), MG_E_PROTO);
    assert_int_equal(parse("digits-production.modelgate.local:99999", &h), MG_E_PROTO);
    assert_int_equal(parse("[::1]:99999", &h), MG_E_PROTO);
}

static void uppercase(void **state)
{
    (void)state;
    expect_host("Digits-PRODUCTION.ModelGate.LOCAL", "Digits", "production");
}

static void trailing_dot(void **state)
{
    (void)state;
    expect_host("digits-production.modelgate.local.", "digits", "production");
    expect_host("digits-production.modelgate.local.:443", "digits", "production");
    mg_host_t h;
    assert_int_equal(parse("digits-production.modelgate.local..", &h), MG_E_PROTO);
}

static void wrong_domain(void **state)
{
    (void)state;
    mg_host_t h;
    assert_int_equal(parse("digits-production.example.com", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("digits-production.xmodelgate.local", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("digits-production.modelgate.local.evil.com", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("a.digits-production.modelgate.local", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("modelgate.local", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("digits-production", &h), MG_E_NOTFOUND);
}

static void missing_env(void **state)
{
    (void)state;
    mg_host_t h;
    assert_int_equal(parse("digits.modelgate.local", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("digits-qa.modelgate.local", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("digitsproduction.modelgate.local", &h), MG_E_NOTFOUND);
}

static void empty_app(void **state)
{
    (void)state;
    mg_host_t h;
    assert_int_equal(parse("-production.modelgate.local", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("production.modelgate.local", &h), MG_E_NOTFOUND);
}

static void bad_chars(void **state)
{
    (void)state;
    mg_host_t h;
    assert_int_equal(mg_host_parse("", 0, DOMAIN, envs, NENVS, &h), MG_E_PROTO);
    assert_int_equal(parse("dig its-production.modelgate.local", &h), MG_E_PROTO);
    assert_int_equal(parse("digits_x-production.modelgate.local", &h), MG_E_PROTO);
    assert_int_equal(parse("digits-production.modelgate.local/x", &h), MG_E_PROTO);
    assert_int_equal(parse("a..b", &h), MG_E_PROTO);
    assert_int_equal(parse(".modelgate.local", &h), MG_E_PROTO);
    assert_int_equal(parse(":443", &h), MG_E_PROTO);
    /* a NUL inside the length is a bad character, not the end of the string */
    assert_int_equal(mg_host_parse("a-prod\0.modelgate.local", 23, DOMAIN, envs, NENVS, &h),
                     MG_E_PROTO);
    /* IP literals are valid authorities but never an app route */
    assert_int_equal(parse("[::1]:8443", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("127.0.0.1:8080", &h), MG_E_NOTFOUND);
    assert_int_equal(parse("[::1", &h), MG_E_PROTO);
    assert_int_equal(parse("[::g]", &h), MG_E_PROTO);
}

static void length_is_honoured(void **state)
{
    (void)state;
    /* not NUL-terminated at |len|: the parser must stop there */
    const char *buf = "digits-production.modelgate.localXXXX";
    mg_host_t h;
    assert_int_equal(mg_host_parse(buf, strlen(DOMAIN) + 18, DOMAIN, envs, NENVS, &h), MG_OK);
    assert_int_equal(h.app_len, 6);
}

static void empty_domain(void **state)
{
    (void)state;
    mg_host_t h;
    assert_int_equal(mg_host_parse("digits-prod", 11, "", envs, NENVS, &h), MG_OK);
    assert_int_equal(mg_host_parse("digits-prod.x", 13, "", envs, NENVS, &h), MG_E_NOTFOUND);
    assert_int_equal(mg_host_parse("digits-prod", 11, DOMAIN, envs, 0, &h), MG_E_NOTFOUND);
}

static void valid_names(void **state)
{
    (void)state;
    assert_true(mg_host_is_valid_name("example.com", 11));
    assert_true(mg_host_is_valid_name("example.com.", 12));
    assert_true(mg_host_is_valid_name("a", 1));
    assert_true(mg_host_is_valid_name("x-1.y-2", 7));
    assert_false(mg_host_is_valid_name("", 0));
    assert_false(mg_host_is_valid_name(".", 1));
    assert_false(mg_host_is_valid_name("-a.com", 6));
    assert_false(mg_host_is_valid_name("a-.com", 6));
    assert_false(mg_host_is_valid_name("a..com", 6));
    assert_false(mg_host_is_valid_name("a_b.com", 7));
    char label[70];
    memset(label, 'a', 64);
    assert_true(mg_host_is_valid_name(label, 63));
    assert_false(mg_host_is_valid_name(label, 64));
}

static void host_ok(const char *host)
{
    const char *why = "unset";
    assert_int_equal(mg_host_check(host, strlen(host), &why), MG_OK);
    assert_string_equal(why, "unset"); /* left alone */
}

static void host_bad(const char *host, size_t len, const char *reason)
{
    const char *why = NULL;
    assert_int_equal(mg_host_check(host, len, &why), MG_E_PROTO);
    assert_non_null(why);
    if (strstr(why, reason) == NULL)
        fail_msg("mg_host_check(\"%.*s\"): \"%s\" does not say \"%s\"", (int)len, host, why,
                 reason);
}

#define CHECK_FAILS(host, reason) host_bad((host), strlen(host), (reason))

/* Hosts a request may carry, routed or not: 404 at worst. */
static void check_accepts_hosts(void **state)
{
    (void)state;
    host_ok("digits-production.modelgate.local");
    host_ok("Digits-Production.ModelGate.Local.:8443");
    host_ok("digits-production.modelgate.local:"); /* empty port (RFC 3986 3.2.3) */
    host_ok("digits-production.modelgate.local:0");
    host_ok("digits-production.modelgate.local:65535");
    host_ok("localhost");
    host_ok("127.0.0.1:8080");
    host_ok("[::1]");
    host_ok("[2001:db8::7]:443");
    host_ok("[::ffff:10.0.0.1]:80");
    host_ok("under_score.example");             /* no DNS name, but a reg-name */
    host_ok("a%41-production.modelgate.local"); /* percent-encoded */
    host_ok("a~b!c$d&e'f(g)h*i+j,k;l=m");
    assert_int_equal(mg_host_check("a", 1, NULL), MG_OK);
}

/* Hosts that are no host: 400 (RFC 9112 3.2), whatever the routes. */
static void check_refuses_bad_hosts(void **state)
{
    (void)state;
    host_bad("", 0, "empty");
    CHECK_FAILS(":8080", "empty");
    CHECK_FAILS("u@digits-production.modelgate.local", "user info");
    CHECK_FAILS("u:p@digits-production.modelgate.local:80", "user info");
    CHECK_FAILS("digits-production.modelgate.local/evil", "no path");
    CHECK_FAILS("digits-production.modelgate.local?x", "no path, query");
    CHECK_FAILS("digits-production.modelgate.local#x", "fragment");
    CHECK_FAILS("digits-production.modelgate.local\\x", "no path");
    CHECK_FAILS("digits-production.modelgate.local:abc", "port");
    CHECK_FAILS("digits-production.modelgate.local:99999", "port");
    CHECK_FAILS("digits-production.modelgate.local:65536", "port");
    CHECK_FAILS("digits-production.modelgate.local:080080", "port");
    CHECK_FAILS("digits-production.modelgate.local:-1", "port");
    CHECK_FAILS("a:80:80", "port");
    CHECK_FAILS("[::1]:99999", "port");
    CHECK_FAILS("[::1]x", "port");
    CHECK_FAILS("[::1", "IP literal");
    CHECK_FAILS("[]", "IP literal");
    CHECK_FAILS("[::g]", "IP literal");
    CHECK_FAILS("[v1.x]", "IP literal");
    CHECK_FAILS("a b.example", "character");
    CHECK_FAILS("a%4.example", "character"); /* a broken escape */
    CHECK_FAILS("a\"b", "character");
    CHECK_FAILS("a[b]", "character");
    CHECK_FAILS("caf\xc3\xa9.example", "character");
    host_bad("a\0b", 3, "character"); /* |len| counts, not the NUL */
    assert_int_equal(mg_host_check("a b", 3, NULL), MG_E_PROTO);
    /* not NUL-terminated at |len|: the check stops there */
    const char *why = NULL;
    assert_int_equal(mg_host_check("example.com/path", 11, &why), MG_OK);
    assert_int_equal(mg_host_check("example.com:80/path", 14, &why), MG_OK);
}

static void expect_split(const char *addr, const char *host, unsigned port)
{
    char h[64];
    unsigned p = 0;
    const char *why = NULL;
    assert_int_equal(mg_host_split_port(addr, h, sizeof(h), &p, &why), MG_OK);
    assert_string_equal(h, host);
    assert_int_equal(p, port);
}

static void expect_split_fails(const char *addr, const char *reason)
{
    char h[64];
    unsigned p = 0;
    const char *why = NULL;
    assert_int_equal(mg_host_split_port(addr, h, sizeof(h), &p, &why), MG_E_CONFIG);
    assert_non_null(why);
    assert_non_null(strstr(why, reason));
}

static void split_port(void **state)
{
    (void)state;
    expect_split("127.0.0.1:9001", "127.0.0.1", 9001);
    expect_split("[::1]:8443", "::1", 8443);
    expect_split("runtime-0.digits.svc:1", "runtime-0.digits.svc", 1);
    expect_split("localhost:65535", "localhost", 65535);
    expect_split_fails("127.0.0.1:99999", "port must be 1-65535");
    expect_split_fails("127.0.0.1:0", "port must be 1-65535");
    expect_split_fails("127.0.0.1:", "port must be 1-65535");
    expect_split_fails("127.0.0.1:8o", "port must be 1-65535");
    expect_split_fails("127.0.0.1", "missing :port");
    expect_split_fails("", "empty");
    expect_split_fails(":80", "missing host");
    expect_split_fails("::1:80", "brackets");
    /* it said "IPv6 addresses need brackets" */
    expect_split_fails("http://127.0.0.1:8080", "a URL, not an address: give host:port");
    expect_split_fails("[::1]", "missing :port");
    expect_split_fails("[::1:80", "missing ']'");
    expect_split_fails("[nope]:80", "invalid IPv6");
    expect_split_fails("10.0.0.300:80", "invalid IPv4");
    expect_split_fails("bad_host:80", "invalid host name");
    char h[4];
    unsigned p;
    const char *why;
    assert_int_equal(mg_host_split_port("abcdef:1", h, sizeof(h), &p, &why), MG_E_CONFIG);
    assert_int_equal(mg_host_split_port("abc:1", h, sizeof(h), &p, NULL), MG_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(simple),
        cmocka_unit_test(app_with_dashes),
        cmocka_unit_test(env_longest_match),
        cmocka_unit_test(env_points_into_envs),
        cmocka_unit_test(port_suffix),
        cmocka_unit_test(uppercase),
        cmocka_unit_test(trailing_dot),
        cmocka_unit_test(wrong_domain),
        cmocka_unit_test(missing_env),
        cmocka_unit_test(empty_app),
        cmocka_unit_test(bad_chars),
        cmocka_unit_test(length_is_honoured),
        cmocka_unit_test(empty_domain),
        cmocka_unit_test(valid_names),
        cmocka_unit_test(split_port),
        cmocka_unit_test(check_accepts_hosts),
        cmocka_unit_test(check_refuses_bad_hosts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
