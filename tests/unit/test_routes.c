/* tests/unit/test_routes.c - routing document validation, matching, round robin, refcount. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <jansson.h>
#include <netinet/in.h>

#include "routing/routes.h"

/* JSON in tests is written with ' for " so it stays readable inside C strings. */
static json_t *doc(const char *text)
{
    char *s = strdup(text);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t jerr;
    json_t *d = json_loads(s, JSON_REJECT_DUPLICATES, &jerr);
    if (d == NULL)
        fail_msg("bad test JSON: %s: %s", jerr.text, s);
    free(s);
    return d;
}

static mg_routes_t *from(const char *text, char **errors)
{
    json_t *d = doc(text);
    mg_routes_t *r = mg_routes_from_json(d, "t.json", errors);
    json_decref(d);
    return r;
}

/* Asserts that |text| is rejected with exactly the lines of |expected| (NULL-terminated). */
static void expect_errors(const char *text, const char *const *expected)
{
    char *errors = NULL;
    mg_routes_t *r = from(text, &errors);
    assert_null(r);
    assert_non_null(errors);
    char want[8192] = "";
    for (size_t i = 0; expected[i] != NULL; i++) {
        if (i > 0)
            strcat(want, "\n");
        strcat(want, expected[i]);
    }
    assert_string_equal(errors, want);
    free(errors);
}

#define EXPECT_ERRORS(text, ...)                                                                   \
    do {                                                                                           \
        const char *const exp_[] = {__VA_ARGS__, NULL};                                            \
        expect_errors((text), exp_);                                                               \
    } while (0)

/* Valid documents are built from these pieces. */
#define SVC "'digits-production':{'protocol':'h2c','pods':['127.0.0.1:9001','127.0.0.1:9002']}"
#define ROUTE "{'app':'digits','env':'production','service':'digits-production'}"
#define VALID "{'domain':'modelgate.local','services':{" SVC "},'routes':[" ROUTE "]}"

static void write_file(char *path_template, const char *content)
{
    int fd = mkstemp(path_template);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
}

/* ---- valid documents ---- */

static void example_document_loads(void **state)
{
    (void)state;
    char *errors = (char *)"untouched";
    mg_routes_t *r = mg_routes_load("../../conf/routes.json", &errors);
    assert_null(errors);
    assert_non_null(r);
    assert_string_equal(r->domain, "modelgate.local");
    assert_int_equal(r->nenvs, 4);
    assert_string_equal(r->envs[3], "production");
    assert_int_equal(r->nservices, 3);
    mg_service_t *s = &r->services[0];
    assert_string_equal(s->name, "digits-production-v1");
    assert_int_equal(s->proto, MG_UP_H2C);
    assert_int_equal(s->npods, 2);
    assert_string_equal(s->pods[1].name, "127.0.0.1:9002");
    assert_int_equal(s->pods[1].weight, 2);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&s->pods[1].addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 9002);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);
    assert_int_equal(s->pods[1].addrlen, sizeof(struct sockaddr_in));
    assert_string_equal(s->health.path, "/readyz");
    assert_string_equal(r->services[1].model_version, "2");
    assert_string_equal(r->services[2].dns_name, "digits.staging.svc.cluster.local");
    assert_int_equal(r->nroutes, 2);
    assert_string_equal(r->routes[0].app, "digits");
    assert_string_equal(r->routes[0].env, "production");
    assert_ptr_equal(r->routes[0].service, s);
    assert_int_equal(r->routes[0].nsplit, 2);
    assert_ptr_equal(r->routes[0].split_services[1], &r->services[1]);
    assert_string_equal(r->routes[0].sticky_header, "x-user-id");
    assert_ptr_equal(r->routes[1].service, &r->services[2]);
    assert_null(r->default_service);
    mg_routes_unref(r);
}

static void defaults_and_options(void **state)
{
    (void)state;
    char *errors = NULL;
    mg_routes_t *r =
        from("{'domain':'Example.COM.','services':{'a':{'protocol':'http1','pods':["
             "'[::1]:80','localhost:81']},'b':{'pods':['10.0.0.1:1']}},'default_service':'b'}",
             &errors);
    assert_null(errors);
    assert_non_null(r);
    assert_string_equal(r->domain, "example.com"); /* canonical: lowercase, no trailing dot */
    assert_int_equal(r->nenvs, 4);                 /* default envs */
    assert_string_equal(r->envs[0], "development");
    assert_string_equal(r->envs[1], "staging");
    assert_string_equal(r->envs[2], "sandbox");
    assert_string_equal(r->envs[3], "production");
    assert_int_equal(r->services[0].proto, MG_UP_H1);
    assert_int_equal(r->services[1].proto, MG_UP_H2C); /* default protocol */
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&r->services[0].pods[0].addr;
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(sin6->sin6_port), 80);
    /* a host name is resolved at load */
    int fam = r->services[0].pods[1].addr.ss_family;
    assert_true(fam == AF_INET || fam == AF_INET6);
    assert_int_equal(r->nroutes, 0);
    assert_ptr_equal(r->default_service, &r->services[1]);
    mg_routes_unref(r);
}

static void errors_may_be_null(void **state)
{
    (void)state;
    json_t *d = doc("{'domain':5}");
    assert_null(mg_routes_from_json(d, "t.json", NULL));
    json_decref(d);
    assert_null(mg_routes_load("/nonexistent/routes.json", NULL));
}

/* ---- errors, each with its exact path ---- */

static void error_pod_port(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'modelgate.local','services':{'digits-production':{'pods':["
                  "'127.0.0.1:9001','127.0.0.1:99999']}}}",
                  "t.json: services.digits-production.pods[1]: invalid address "
                  "\"127.0.0.1:99999\" (port must be 1-65535)");
}

static void error_domain(void **state)
{
    (void)state;
    EXPECT_ERRORS("{}", "t.json: domain: missing (expected the domain that hosts are under, e.g. "
                        "\"example.com\")");
    EXPECT_ERRORS("{'domain':5}",
                  "t.json: domain: wrong type (got number 5; expected string, a domain name "
                  "such as \"example.com\")");
    EXPECT_ERRORS("{'domain':''}",
                  "t.json: domain: empty (expected a domain name such as \"example.com\")");
    EXPECT_ERRORS("{'domain':'a_b.com'}",
                  "t.json: domain: invalid domain \"a_b.com\" (expected dot-separated labels of "
                  "letters, digits and '-', such as \"example.com\")");
}

static void error_not_object(void **state)
{
    (void)state;
    EXPECT_ERRORS("[1]", "t.json: wrong type (got an array; expected object with keys domain, "
                         "envs, services, routes, default_service)");
}

static void error_unknown_keys(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','servics':{}}",
                  "t.json: servics: unknown key (valid keys: domain, envs, services, routes, "
                  "default_service)");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'protcol':'h2c'}}}",
                  "t.json: services.a.protcol: unknown key (valid keys: protocol, pods, dns, "
                  "policy, hash_key, slow_start_ms, health_check, model_version, outlier, retry, "
                  "limits)");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5']}},'routes':[{'app':'"
                  "x','env':'staging','service':'a','weight':1}]}",
                  "t.json: routes[0].weight: unknown key (valid keys: app, env, service, split, "
                  "sticky_header, retry_post, replay_max_bytes, timeouts_ms)");
}

static void error_envs(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','envs':[]}",
                  "t.json: envs: empty (expected at least one env, e.g. [\"production\"])");
    EXPECT_ERRORS("{'domain':'x.com','envs':'prod'}",
                  "t.json: envs: wrong type (got string \"prod\"; expected array of env names, "
                  "e.g. [\"staging\", \"production\"])");
    EXPECT_ERRORS("{'domain':'x.com','envs':['prod','',3,'prod','Prod','p.q']}",
                  "t.json: envs[1]: empty env name (expected lowercase letters, digits and '-')",
                  "t.json: envs[2]: wrong type (got number 3; expected string)",
                  "t.json: envs[3]: duplicate env \"prod\" (same as envs[0]; expected each once)",
                  "t.json: envs[4]: invalid env \"Prod\" (expected lowercase: hosts are matched "
                  "lowercased)",
                  "t.json: envs[5]: invalid env \"p.q\" (expected lowercase letters, digits and "
                  "'-' only)");
}

static void error_services(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','services':[]}",
                  "t.json: services: wrong type (got an array; expected object mapping service "
                  "names to {protocol, pods})");
    EXPECT_ERRORS(
        "{'domain':'x.com','services':{'a':{'protocol':'h3','pods':[]},'b':{},'c':5,"
        "'d':{'pods':'1.2.3.4:5'},'e f':{'pods':[1,'1.2.3.4:5','1.2.3.4:5']},"
        "'g':{'protocol':2,'pods':['1.2.3.4:5']}}}",
        "t.json: services.a.protocol: unknown protocol \"h3\" (expected \"h2c\" or \"http1\")",
        "t.json: services.a.pods: no pods (got 0 pods; expected 1-64)",
        "t.json: services.b.pods: missing (expected an array of 1-64 \"host:port\" strings, or "
        "a dns object)",
        "t.json: services.c: wrong type (got number 5; expected object with keys protocol, pods)",
        "t.json: services.d.pods: wrong type (got string \"1.2.3.4:5\"; expected array of "
        "\"host:port\" strings or {address, weight} objects)",
        "t.json: services.e f: invalid service name \"e f\" (expected 1-128 letters, digits, '-' "
        "or '_')",
        "t.json: services.e f.pods[0]: wrong type (got number 1; expected string \"host:port\" "
        "or {address, weight})",
        "t.json: services.e f.pods[2]: duplicate pod \"1.2.3.4:5\" (same as pods[1]; expected "
        "each pod once)",
        "t.json: services.g.protocol: wrong type (got number 2; expected string \"h2c\" or "
        "\"http1\")");
}

static void error_unresolvable_pod(void **state)
{
    (void)state;
    char *errors = NULL;
    assert_null(
        from("{'domain':'x.com','services':{'g':{'pods':['nohost.invalid:80']}}}", &errors));
    /* the resolver's own words vary (no DNS vs NXDOMAIN); the rest is ours */
    const char *want = "t.json: services.g.pods[0]: cannot resolve \"nohost.invalid:80\" (";
    assert_memory_equal(errors, want, strlen(want));
    assert_non_null(strstr(errors, "; expected a resolvable host name or an IP address)"));
    free(errors);
}

static void error_too_many_pods(void **state)
{
    (void)state;
    char text[4096] = "{'domain':'x.com','services':{'a':{'pods':[";
    for (int i = 0; i < 65; i++)
        sprintf(text + strlen(text), "%s'10.0.0.%d:80'", i ? "," : "", i);
    strcat(text, "]}}}");
    EXPECT_ERRORS(text, "t.json: services.a.pods: too many pods (got 65 pods; expected 1-64)");
    /* 64 is fine */
    char *last = strstr(text, ",'10.0.0.64:80'");
    memmove(last, last + strlen(",'10.0.0.64:80'"), strlen(last + strlen(",'10.0.0.64:80'")) + 1);
    char *errors = NULL;
    mg_routes_t *r = from(text, &errors);
    assert_null(errors);
    assert_int_equal(r->services[0].npods, 64);
    mg_routes_unref(r);
}

static void error_routes(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5']}},'routes':{}}",
                  "t.json: routes: wrong type (got an object; expected array of {app, env, "
                  "service} objects)");
    EXPECT_ERRORS(
        "{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5']}},'routes':["
        "{'app':'Digits','env':'staging','service':'a'},"
        "{'app':'dig_its','env':'staging','service':'a'},"
        "{'app':'','env':'staging','service':'a'},"
        "{'app':'x','env':'qa','service':'a'},"
        "{'app':'x','env':'staging','service':'nope'},"
        "{'app':'x','env':'staging'},"
        "{'app':5,'env':'staging','service':'a'},"
        "'x',"
        "{'app':'ok','env':'staging','service':'a'},"
        "{'app':'ok','env':'staging','service':'a'}]}",
        "t.json: routes[0].app: invalid app \"Digits\" (expected lowercase: hosts are matched "
        "lowercased)",
        "t.json: routes[1].app: invalid app \"dig_its\" (expected lowercase letters, digits and "
        "'-' only)",
        "t.json: routes[2].app: empty app name (expected lowercase letters, digits and '-')",
        "t.json: routes[3].env: unknown env \"qa\" (expected one of: development, staging, "
        "sandbox, production)",
        "t.json: routes[4].service: unknown service \"nope\" (expected one of: a)",
        "t.json: routes[5].service: missing (expected string, a key of services (or a split))",
        "t.json: routes[6].app: wrong type (got number 5; expected string, an app name such as "
        "\"digits\")",
        "t.json: routes[7]: wrong type (got string \"x\"; expected object with keys app, env, "
        "service)",
        "t.json: routes[9]: duplicate route for app \"ok\", env \"staging\" (same as routes[8]; "
        "expected one route per app and env)");
}

#define A10 "aaaaaaaaaa"
#define A60 A10 A10 A10 A10 A10 A10
static void error_route_unreachable_and_long(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','envs':['prod','eu-prod'],'services':{'a':{'pods':["
                  "'1.2.3.4:5']}},'routes':[{'app':'x-eu','env':'prod','service':'a'},"
                  "{'app':'x','env':'eu-prod','service':'a'},"
                  "{'app':'" A60 "',"
                  "'env':'prod','service':'a'}]}",
                  "t.json: routes[0]: unreachable: host \"x-eu-prod.<domain>\" parses as app "
                  "\"x\", env \"eu-prod\" (the longest env wins; rename the app or the env)",
                  "t.json: routes[2]: host label \"" A60 "-prod\" is longer than 63 bytes (DNS "
                  "limit; shorten the app name)");
}

static void error_default_service(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5']},'b':{'pods':["
                  "'1.2.3.4:6']}},'default_service':'c'}",
                  "t.json: default_service: unknown service \"c\" (expected one of: a, b)");
    EXPECT_ERRORS("{'domain':'x.com','default_service':true}",
                  "t.json: default_service: wrong type (got true; expected string, a key of "
                  "services)");
}

/* Three independent problems: three lines, in document order, and no cascade from them. */
static void all_errors_in_one_pass(void **state)
{
    (void)state;
    char *errors = NULL;
    mg_routes_t *r = from("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:0']}},'routes':["
                          "{'app':'x','env':'qa','service':'a'},"
                          "{'app':'y','env':'staging','service':'b'}]}",
                          &errors);
    assert_null(r);
    assert_non_null(errors);
    size_t lines = 1;
    for (const char *p = errors; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 3);
    assert_non_null(strstr(errors, "services.a.pods[0]: invalid address"));
    assert_non_null(strstr(errors, "routes[0].env: unknown env \"qa\""));
    assert_non_null(strstr(errors, "routes[1].service: unknown service \"b\""));
    free(errors);
}

/* A broken section does not make every reference to it an error too. */
static void no_cascade(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','envs':5,'services':7,'routes':[{'app':'x','env':'qa',"
                  "'service':'zz'}],'default_service':'zz'}",
                  "t.json: envs: wrong type (got number 5; expected array of env names, e.g. "
                  "[\"staging\", \"production\"])",
                  "t.json: services: wrong type (got number 7; expected object mapping service "
                  "names to {protocol, pods})");
}

static void syntax_and_duplicate_keys(void **state)
{
    (void)state;
    char path[] = "/tmp/test_routes_XXXXXX";
    write_file(path, "{\n  \"domain\": \"a.com\",\n  \"domain\": \"b.com\"\n}\n");
    char *errors = NULL;
    assert_null(mg_routes_load(path, &errors));
    assert_non_null(errors);
    char want[256];
    snprintf(want, sizeof(want), "%s:3:", path);
    assert_memory_equal(errors, want, strlen(want)); /* FILE:LINE:COL: */
    assert_non_null(strstr(errors, "duplicate object key"));
    assert_null(strchr(errors, '\n'));
    free(errors);
    unlink(path);

    write_file(strcpy(path, "/tmp/test_routes_XXXXXX"), "{\"domain\": \"a.com\",}");
    assert_null(mg_routes_load(path, &errors));
    snprintf(want, sizeof(want), "%s:1:20: ", path);
    assert_memory_equal(errors, want, strlen(want));
    free(errors);
    unlink(path);

    assert_null(mg_routes_load("/nonexistent/routes.json", &errors));
    assert_non_null(strstr(errors, "/nonexistent/routes.json: unable to open"));
    free(errors);
}

static void semantic_errors_name_the_file(void **state)
{
    (void)state;
    char path[] = "/tmp/test_routes_XXXXXX";
    write_file(path, "{\"domain\": \"a.com\", \"default_service\": \"x\"}");
    char *errors = NULL;
    assert_null(mg_routes_load(path, &errors));
    char want[256];
    snprintf(want, sizeof(want), "%s: default_service: unknown service \"x\"", path);
    assert_memory_equal(errors, want, strlen(want));
    free(errors);
    unlink(path);
}

/* ---- matching ---- */

static void match_by_host(void **state)
{
    (void)state;
    mg_routes_t *r = from("{'domain':'modelgate.local','services':{" SVC
                          ",'other':{'pods':['127.0.0.1:9100']}},'routes':[" ROUTE
                          ",{'app':'digits','env':'staging','service':'other'}"
                          ",{'app':'my-app','env':'sandbox','service':'other'}]}",
                          NULL);
    assert_non_null(r);
    char app[32], env[32];
    const char *h = "digits-production.modelgate.local";
    mg_service_t *s = mg_routes_match(r, h, strlen(h), app, env, sizeof(app));
    assert_ptr_equal(s, &r->services[0]);
    assert_string_equal(app, "digits");
    assert_string_equal(env, "production");

    h = "DIGITS-Staging.ModelGate.Local:8443";
    assert_ptr_equal(mg_routes_match(r, h, strlen(h), app, env, sizeof(app)), &r->services[1]);
    assert_string_equal(app, "digits"); /* lowercased */
    assert_string_equal(env, "staging");

    h = "my-app-sandbox.modelgate.local.";
    assert_ptr_equal(mg_routes_match(r, h, strlen(h), NULL, NULL, 0), &r->services[1]);

    /* right shape, no route: NULL, but the parts are still reported (for the 404 and the log) */
    h = "digits-sandbox.modelgate.local";
    assert_null(mg_routes_match(r, h, strlen(h), app, env, sizeof(app)));
    assert_string_equal(app, "digits");
    assert_string_equal(env, "sandbox");

    h = "digits-production.example.com";
    assert_null(mg_routes_match(r, h, strlen(h), app, env, sizeof(app)));
    assert_string_equal(app, "");
    assert_string_equal(env, "");

    /* truncation to |cap| */
    char small[4];
    h = "digits-production.modelgate.local";
    assert_non_null(mg_routes_match(r, h, strlen(h), small, env, sizeof(small)));
    assert_string_equal(small, "dig");
    assert_string_equal(env, "pro");

    assert_null(mg_routes_match(r, "", 0, app, env, sizeof(app)));
    assert_null(mg_routes_match(NULL, h, strlen(h), app, env, sizeof(app)));
    mg_routes_unref(r);
}

static void match_many_routes(void **state)
{
    (void)state;
    /* enough routes to exercise probing in the index */
    json_t *d = doc("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5']},"
                    "'b':{'pods':['1.2.3.4:6']}}}");
    json_t *routes = json_array();
    for (int i = 0; i < 200; i++) {
        char app[16];
        snprintf(app, sizeof(app), "app%d", i);
        json_array_append_new(routes, json_pack("{s:s,s:s,s:s}", "app", app, "env",
                                                i % 2 ? "staging" : "production", "service",
                                                i % 3 ? "a" : "b"));
    }
    json_object_set_new(d, "routes", routes);
    char *errors = NULL;
    mg_routes_t *r = mg_routes_from_json(d, "t.json", &errors);
    json_decref(d);
    assert_null(errors);
    assert_int_equal(r->nroutes, 200);
    for (int i = 0; i < 200; i++) {
        char host[64];
        int n = snprintf(host, sizeof(host), "app%d-%s.x.com", i, i % 2 ? "staging" : "production");
        mg_service_t *s = mg_routes_match(r, host, (size_t)n, NULL, NULL, 0);
        assert_ptr_equal(s, &r->services[i % 3 ? 0 : 1]);
        n = snprintf(host, sizeof(host), "app%d-%s.x.com", i, i % 2 ? "production" : "staging");
        assert_null(mg_routes_match(r, host, (size_t)n, NULL, NULL, 0));
    }
    mg_routes_unref(r);
}

static void match_default_service(void **state)
{
    (void)state;
    mg_routes_t *r = from("{'domain':'modelgate.local','services':{" SVC
                          ",'fallback':{'pods':['127.0.0.1:9100']}},'routes':[" ROUTE
                          "],'default_service':'fallback'}",
                          NULL);
    assert_non_null(r);
    mg_service_t *fb = &r->services[1];
    const char *h = "digits-production.modelgate.local";
    assert_ptr_equal(mg_routes_match(r, h, strlen(h), NULL, NULL, 0), &r->services[0]);
    h = "other-staging.modelgate.local";
    assert_ptr_equal(mg_routes_match(r, h, strlen(h), NULL, NULL, 0), fb);
    h = "elsewhere.example.com";
    assert_ptr_equal(mg_routes_match(r, h, strlen(h), NULL, NULL, 0), fb);
    h = "bad host!";
    assert_ptr_equal(mg_routes_match(r, h, strlen(h), NULL, NULL, 0), fb);
    /* longer than 255 bytes: never a route, still the default */
    char longhost[300];
    memset(longhost, 'a', sizeof(longhost));
    memcpy(longhost, "digits-production.modelgate.local", 33);
    assert_ptr_equal(mg_routes_match(r, longhost, sizeof(longhost), NULL, NULL, 0), fb);
    mg_routes_unref(r);
}

/* ---- round robin ---- */

static void pick_round_robin(void **state)
{
    (void)state;
    mg_routes_t *r = mg_routes_catchall("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", MG_UP_H2C, NULL);
    assert_non_null(r);
    mg_service_t *s = r->default_service;
    for (int i = 0; i < 9; i++)
        assert_int_equal(mg_service_pick(s, 0), i % 3);
    /* pod 1 tried: the cursor still advances, pod 1 is skipped to the next one */
    assert_int_equal(mg_service_pick(s, 1u << 1), 0);
    assert_int_equal(mg_service_pick(s, 1u << 1), 2);
    assert_int_equal(mg_service_pick(s, 1u << 1), 2);
    assert_int_equal(mg_service_pick(s, 1u << 1), 0);
    /* only pod 2 left */
    for (int i = 0; i < 4; i++)
        assert_int_equal(mg_service_pick(s, 0x3), 2);
    /* all tried; bits above npods do not matter */
    assert_int_equal(mg_service_pick(s, 0x7), -1);
    assert_int_equal(mg_service_pick(s, UINT64_MAX), -1);
    /* refused picks do not move the cursor: it is at 17, 17 % 3 = 2 */
    assert_int_equal(mg_service_pick(s, 0xF0), 2);
    assert_int_equal(mg_service_pick(NULL, 0), -1);
    mg_routes_unref(r);
}

static void pick_64_pods(void **state)
{
    (void)state;
    char list[64 * 16] = "";
    for (int i = 0; i < 64; i++)
        sprintf(list + strlen(list), "%s10.0.0.%d:80", i ? "," : "", i + 1);
    mg_routes_t *r = mg_routes_catchall(list, MG_UP_H1, NULL);
    assert_non_null(r);
    mg_service_t *s = r->default_service;
    assert_int_equal(s->npods, 64);
    assert_int_equal(mg_service_pick(s, UINT64_MAX), -1);
    assert_int_equal(mg_service_pick(s, UINT64_MAX >> 1), 63);
    assert_int_equal(mg_service_pick(s, ~(uint64_t)1), 0);
    mg_routes_unref(r);
}

/* ---- catch-all and refcount ---- */

static void catchall(void **state)
{
    (void)state;
    char *errors = NULL;
    mg_routes_t *r = mg_routes_catchall("127.0.0.1:9001, [::1]:9002", MG_UP_H1, &errors);
    assert_null(errors);
    assert_non_null(r);
    assert_string_equal(r->domain, "");
    assert_int_equal(r->nenvs, 0);
    assert_int_equal(r->nroutes, 0);
    assert_int_equal(r->nservices, 1);
    assert_ptr_equal(r->default_service, &r->services[0]);
    assert_string_equal(r->services[0].name, "default");
    assert_int_equal(r->services[0].proto, MG_UP_H1);
    assert_int_equal(r->services[0].npods, 2);
    assert_string_equal(r->services[0].pods[1].name, "[::1]:9002");
    char app[8] = "x", env[8] = "y";
    const char *h = "digits-production.modelgate.local";
    assert_ptr_equal(mg_routes_match(r, h, strlen(h), app, env, sizeof(app)), &r->services[0]);
    assert_string_equal(app, "");
    assert_string_equal(env, "");
    mg_routes_unref(r);

    assert_null(mg_routes_catchall("127.0.0.1:0,,x", MG_UP_H2C, &errors));
    assert_string_equal(errors,
                        "--backend: invalid address \"127.0.0.1:0\" (port must be 1-65535)\n"
                        "--backend: empty pod in \"127.0.0.1:0,,x\" (expected H:P[,H:P...])\n"
                        "--backend: invalid address \"x\" (missing :port)");
    free(errors);
    assert_null(mg_routes_catchall("", MG_UP_H2C, &errors));
    assert_string_equal(errors, "--backend: empty pod in \"\" (expected H:P[,H:P...])");
    free(errors);
    assert_null(mg_routes_catchall("1.2.3.4:5,1.2.3.4:5", MG_UP_H2C, &errors));
    assert_string_equal(errors, "--backend: duplicate pod \"1.2.3.4:5\" (expected each pod once)");
    free(errors);
}

static void refcount(void **state)
{
    (void)state;
    mg_routes_t *r = from(VALID, NULL);
    assert_non_null(r);
    assert_int_equal(atomic_load(&r->_refs), 1);
    mg_routes_ref(r);
    mg_routes_ref(r);
    assert_int_equal(atomic_load(&r->_refs), 3);
    mg_routes_unref(r);
    mg_routes_unref(r);
    /* still alive with the last reference: a request routed with it can use it */
    assert_int_equal(atomic_load(&r->_refs), 1);
    assert_string_equal(r->routes[0].service->pods[0].name, "127.0.0.1:9001");
    mg_routes_unref(r); /* frees; ASan in the Sanitize build reports a leak otherwise */
    mg_routes_unref(NULL);
}

/* ---------- balancing, splits and resilience keys ---------- */

#define SVC_A "'a':{'pods':['1.2.3.4:5']}"
#define SVC_B "'b':{'pods':['1.2.3.5:5']}"

static void service_options_parse(void **state)
{
    (void)state;
    char *errors = NULL;
    mg_routes_t *r = from(
        "{'domain':'x.com','services':{'a':{'protocol':'http1','pods':[{'address':'1.2.3.4:5',"
        "'weight':3},'1.2.3.4:6',{'address':'1.2.3.4:7','weight':0}],'policy':'consistent_hash',"
        "'hash_key':'header:X-User-Id','slow_start_ms':5000,'health_check':{'path':'/readyz',"
        "'interval_ms':500,'healthy_threshold':2},'model_version':'v3','outlier':{"
        "'consecutive_failures':7},'retry':{'attempts':3,'on':['reset']},'limits':{"
        "'max_requests_per_pod':9}}}}",
        &errors);
    assert_null(errors);
    assert_non_null(r);
    const mg_service_t *s = &r->services[0];
    assert_int_equal(s->npods, 3);
    assert_int_equal(s->pods[0].weight, 3);
    assert_int_equal(s->pods[1].weight, 1);
    assert_int_equal(s->pods[2].weight, 0);
    assert_non_null(s->pods[0].state);
    assert_non_null(s->lb);
    assert_int_equal(s->policy, 2); /* MG_BALANCE_CONSISTENT_HASH */
    assert_int_equal(s->hash_on, MG_HASH_HEADER);
    assert_string_equal(s->hash_header, "x-user-id");
    assert_int_equal(s->slow_start_ms, 5000);
    assert_string_equal(s->health.path, "/readyz");
    assert_int_equal(s->health.interval_ms, 500);
    assert_int_equal(s->health.timeout_ms, 1000); /* default */
    assert_int_equal(s->health.healthy_threshold, 2);
    assert_string_equal(s->model_version, "v3");
    assert_int_equal(s->outlier.consecutive_failures, 7);
    assert_int_equal(s->outlier.max_ejected_percent, 50); /* default */
    assert_int_equal(s->retry.attempts, 3);
    assert_true(s->retry.on_reset);
    assert_false(s->retry.on_5xx);
    assert_int_equal(s->max_requests_per_pod, 9);
    assert_int_equal(s->max_pending_per_pod, 0);
    mg_routes_unref(r);
}

/* Every ejection would last max_ejection_ms when it is below the first one's length. */
static void outlier_max_below_base_is_refused(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'outlier':{"
                  "'base_ejection_ms':60000,'max_ejection_ms':1000}}}}",
                  "t.json: services.a.outlier: max_ejection_ms (1000) is below "
                  "base_ejection_ms (60000) (expected a longest ejection at least as long as "
                  "the first)");
}

/* The same pod under two names would get two shares of the traffic. */
static void pod_named_twice_is_refused(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['[::1]:5','[0:0:0:0:0:0:0:1]:5']}}}",
                  "t.json: services.a.pods[1]: pod \"[0:0:0:0:0:0:0:1]:5\" is pods[0] "
                  "(\"[::1]:5\") too, once resolved (expected each pod once: it would get both "
                  "shares)");
}

static void service_defaults_apply(void **state)
{
    (void)state;
    mg_routes_t *r = from("{'domain':'x.com','services':{" SVC_A "}}", NULL);
    assert_non_null(r);
    const mg_service_t *s = &r->services[0];
    assert_int_equal(s->policy, 1); /* least_request: model pods' latency varies */
    assert_null(s->health.path);
    assert_int_equal(s->outlier.consecutive_failures, 5);
    assert_int_equal(s->retry.attempts, 1);
    assert_true(s->retry.on_5xx && s->retry.on_reset);
    assert_int_equal(s->retry.budget_percent, 20);
    mg_routes_unref(r);
}

static void split_routes_parse(void **state)
{
    (void)state;
    char *errors = NULL;
    mg_routes_t *r = from("{'domain':'x.com','envs':['prod'],'services':{" SVC_A "," SVC_B "},"
                          "'routes':[{'app':'d','env':'prod','split':[{'service':'a','weight':90},"
                          "{'service':'b','weight':10}],'sticky_header':'X-User-Id',"
                          "'retry_post':true,'replay_max_bytes':1000,'timeouts_ms':{"
                          "'first_byte':250}}]}",
                          &errors);
    assert_null(errors);
    const mg_route_t *rt = mg_routes_match_route(r, "d-prod.x.com", 12, NULL, NULL, 0);
    assert_non_null(rt);
    assert_int_equal(rt->nsplit, 2);
    assert_non_null(rt->split);
    assert_string_equal(rt->split_services[0]->name, "a");
    assert_string_equal(rt->split_services[1]->name, "b");
    assert_ptr_equal(rt->service, rt->split_services[0]);
    assert_string_equal(rt->sticky_header, "x-user-id");
    assert_true(rt->retry_post);
    assert_int_equal(rt->replay_max_bytes, 1000);
    assert_int_equal(rt->timeouts.first_byte, 250);
    assert_int_equal(rt->timeouts.total, 0);
    assert_non_null(rt->stats);
    mg_routes_unref(r);
}

static void dns_service_starts_empty(void **state)
{
    (void)state;
    char *errors = NULL;
    mg_routes_t *r = from("{'domain':'x.com','services':{'a':{'dns':{'name':'pods.ns.svc.local',"
                          "'port':9000}}}}",
                          &errors);
    assert_null(errors);
    assert_string_equal(r->services[0].dns_name, "pods.ns.svc.local");
    assert_int_equal(r->services[0].dns_port, 9000);
    assert_int_equal(r->services[0].dns_interval_ms, 5000);
    assert_int_equal(r->services[0].npods, 0); /* nothing resolved yet */
    assert_null(r->services[0].lb);
    mg_routes_unref(r);
}

static size_t two_addrs(void *ud, const char *service, struct sockaddr_storage *out, size_t cap)
{
    (void)ud;
    assert_string_equal(service, "a");
    assert_true(cap >= 2);
    memset(out, 0, 2 * sizeof(*out));
    for (int i = 0; i < 2; i++) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out[i];
        sin->sin_family = AF_INET;
        sin->sin_port = htons(9000);
        sin->sin_addr.s_addr = htonl(0x0a000001 + i);
    }
    return 2;
}

static void dns_service_takes_discovered_pods(void **state)
{
    (void)state;
    json_t *d = doc("{'domain':'x.com','services':{'a':{'dns':{'name':'p.svc','port':9000}}}}");
    char *errors = NULL;
    mg_routes_t *r = mg_routes_build(d, "t.json", two_addrs, NULL, &errors);
    json_decref(d);
    assert_null(errors);
    assert_int_equal(r->services[0].npods, 2);
    assert_string_equal(r->services[0].pods[0].name, "10.0.0.1:9000");
    assert_string_equal(r->services[0].pods[1].name, "10.0.0.2:9000");
    assert_non_null(r->services[0].lb);
    mg_routes_unref(r);
}

static void error_balancing_keys(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'policy':'random'}}}",
                  "t.json: services.a.policy: unknown policy \"random\" (expected least_request, "
                  "round_robin or consistent_hash)");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],"
                  "'policy':'consistent_hash'}}}",
                  "t.json: services.a.hash_key: missing (policy consistent_hash needs "
                  "\"header:NAME\" or \"client_ip\")");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'hash_key':'cookie'}}}",
                  "t.json: services.a.hash_key: invalid hash key \"cookie\" (expected "
                  "\"header:NAME\" or \"client_ip\")",
                  "t.json: services.a.hash_key: hash_key is only used by policy consistent_hash "
                  "(policy is least_request)");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':[{'address':'1.2.3.4:5',"
                  "'weight':-1},{'weight':2}]}}}",
                  "t.json: services.a.pods[0].weight: out of range (got -1; expected 0-1000000, "
                  "0 = drained)",
                  "t.json: services.a.pods[1].address: missing (expected \"host:port\")");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'dns':{'name':'a.b',"
                  "'port':1}}}}",
                  "t.json: services.a: both pods and dns given (expected one: a static list or a "
                  "DNS name)");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'dns':{'name':'a b'}}}}",
                  "t.json: services.a.dns.name: invalid DNS name \"a b\"",
                  "t.json: services.a.dns.port: missing (expected the pods' port, 1-65535)");
}

static void error_resilience_keys(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'health_check':{"
                  "'path':'readyz','interval_ms':5}}}}",
                  "t.json: services.a.health_check.path: invalid path (expected a string "
                  "starting with '/', printable ASCII without spaces, e.g. \"/readyz\")",
                  "t.json: services.a.health_check.interval_ms: out of range (got 5; expected "
                  "100-3600000, time between checks)");
    /* a path the checker could not send would keep every pod out: refused here */
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'health_check':{"
                  "'path':'/health check'}}}}",
                  "t.json: services.a.health_check.path: invalid path (expected a string "
                  "starting with '/', printable ASCII without spaces, e.g. \"/readyz\")");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'model_version':'2'}}}",
                  "t.json: services.a.model_version: model_version needs health_check (pods' "
                  "versions are read by the checks)");
    EXPECT_ERRORS("{'domain':'x.com','services':{'a':{'pods':['1.2.3.4:5'],'retry':{'on':["
                  "'timeout']},'limits':{'max_requests':1}}}}",
                  "t.json: services.a.retry.on[0]: unknown retry condition \"timeout\" (expected "
                  "\"5xx\" or \"reset\"; connect failures are always retried)",
                  "t.json: services.a.limits.max_requests: unknown key (valid keys: "
                  "max_requests_per_pod, max_pending_per_pod)");
}

static void error_split_keys(void **state)
{
    (void)state;
    EXPECT_ERRORS("{'domain':'x.com','envs':['prod'],'services':{" SVC_A "},'routes':[{'app':"
                  "'d','env':'prod','service':'a','split':[{'service':'a','weight':1}]}]}",
                  "t.json: routes[0]: both service and split given (expected one of them)");
    EXPECT_ERRORS("{'domain':'x.com','envs':['prod'],'services':{" SVC_A "},'routes':[{'app':"
                  "'d','env':'prod','split':[{'service':'a','weight':0},{'service':'zz',"
                  "'weight':1},{'service':'a'}]}]}",
                  "t.json: routes[0].split[1].service: unknown service \"zz\" (expected one of: a)",
                  "t.json: routes[0].split[2].weight: missing (expected an integer weight, e.g. "
                  "90; any total)",
                  "t.json: routes[0].split[2].service: service \"a\" appears twice (same as "
                  "split[0])");
    EXPECT_ERRORS("{'domain':'x.com','envs':['prod'],'services':{" SVC_A "},'routes':[{'app':"
                  "'d','env':'prod','split':[{'service':'a','weight':0}]}]}",
                  "t.json: routes[0].split: every weight is 0 (expected at least one service "
                  "with weight > 0)");
    EXPECT_ERRORS("{'domain':'x.com','envs':['prod'],'services':{" SVC_A "},'routes':[{'app':"
                  "'d','env':'prod','service':'a','sticky_header':'x-user-id','replay_max_bytes'"
                  ":-5}]}",
                  "t.json: routes[0].sticky_header: sticky_header needs a split (a single "
                  "service has nothing to stick to)",
                  "t.json: routes[0].replay_max_bytes: out of range (got -5; expected "
                  "0-16777216, request bodies kept for a replay)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(example_document_loads),
        cmocka_unit_test(defaults_and_options),
        cmocka_unit_test(errors_may_be_null),
        cmocka_unit_test(error_pod_port),
        cmocka_unit_test(error_domain),
        cmocka_unit_test(error_not_object),
        cmocka_unit_test(error_unknown_keys),
        cmocka_unit_test(error_envs),
        cmocka_unit_test(error_services),
        cmocka_unit_test(error_unresolvable_pod),
        cmocka_unit_test(error_too_many_pods),
        cmocka_unit_test(error_routes),
        cmocka_unit_test(error_route_unreachable_and_long),
        cmocka_unit_test(error_default_service),
        cmocka_unit_test(all_errors_in_one_pass),
        cmocka_unit_test(no_cascade),
        cmocka_unit_test(syntax_and_duplicate_keys),
        cmocka_unit_test(semantic_errors_name_the_file),
        cmocka_unit_test(match_by_host),
        cmocka_unit_test(match_many_routes),
        cmocka_unit_test(match_default_service),
        cmocka_unit_test(pick_round_robin),
        cmocka_unit_test(pick_64_pods),
        cmocka_unit_test(catchall),
        cmocka_unit_test(refcount),
        cmocka_unit_test(service_options_parse),
        cmocka_unit_test(outlier_max_below_base_is_refused),
        cmocka_unit_test(pod_named_twice_is_refused),
        cmocka_unit_test(service_defaults_apply),
        cmocka_unit_test(split_routes_parse),
        cmocka_unit_test(dns_service_starts_empty),
        cmocka_unit_test(dns_service_takes_discovered_pods),
        cmocka_unit_test(error_balancing_keys),
        cmocka_unit_test(error_resilience_keys),
        cmocka_unit_test(error_split_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
