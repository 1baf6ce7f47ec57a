/*
 * tests/fuzz/fuzz_host.c - request hosts and configured addresses from arbitrary bytes.
 *
 * Feeds the same bytes to mg_host_check and mg_host_parse (as an :authority, not
 * NUL-terminated), to mg_routes_match (over a fixed snapshot) and, NUL-terminated, to
 * mg_host_split_port and mg_host_is_valid_name, and checks what each promises about its output
 * (a host that routes is a valid one).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "routing/host.h"
#include "routing/routes.h"
#include "check.h"

static const char *const envs[] = {"development", "staging", "sandbox",
                                   "production",  "eu-prod", "prod"};
#define NENVS (sizeof(envs) / sizeof(envs[0]))

static mg_routes_t *snapshot;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_t *doc = json_pack("{s:s,s:[s,s,s],s:{s:{s:[s]},s:{s:[s,s]}},s:[{s:s,s:s,s:s},"
                            "{s:s,s:s,s:s}],s:s}",
                            "domain", "modelgate.local", "envs", "staging", "prod", "eu-prod",
                            "services", "a", "pods", "127.0.0.1:1", "b", "pods", "127.0.0.1:2",
                            "[::1]:3", "routes", "app", "digits", "env", "prod", "service", "a",
                            "app", "x-y", "env", "eu-prod", "service", "b", "default_service", "b");
    char *errors = NULL;
    snapshot = mg_routes_from_json(doc, "init", &errors);
    json_decref(doc);
    if (snapshot == NULL) {
        fprintf(stderr, "fuzz_host: bad built-in document:\n%s\n", errors);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *host = (const char *)data;
    mg_host_t h;
    mg_err_t err = mg_host_parse(host, size, "modelgate.local", envs, NENVS, &h);
    CHECK(err == MG_OK || err == MG_E_NOTFOUND || err == MG_E_PROTO);
    const char *reason = NULL;
    mg_err_t valid = mg_host_check(host, size, &reason);
    CHECK(valid == MG_OK ? reason == NULL
                         : valid == MG_E_PROTO && reason != NULL && *reason != '\0');
    if (err == MG_OK) {
        CHECK(valid == MG_OK);
        CHECK(h.app == host && h.app_len > 0 && h.app_len + 1 + h.env_len < size);
        CHECK(host[h.app_len] == '-');
        CHECK(strncasecmp(host + h.app_len + 1, h.env, h.env_len) == 0);
        size_t i = 0;
        while (i < NENVS && envs[i] != h.env)
            i++;
        CHECK(i < NENVS && strlen(h.env) == h.env_len);
    }

    char app[16], env[16];
    mg_service_t *s = mg_routes_match(snapshot, host, size, app, env, sizeof(app));
    CHECK(s == &snapshot->services[0] || s == &snapshot->services[1]);
    CHECK(strlen(app) < sizeof(app) && strlen(env) < sizeof(env));

    char *z = malloc(size + 1);
    if (z == NULL)
        return 0;
    memcpy(z, data, size);
    z[size] = '\0';
    char hostbuf[64];
    unsigned port = 0;
    const char *why = NULL;
    if (mg_host_split_port(z, hostbuf, sizeof(hostbuf), &port, &why) == MG_OK) {
        CHECK(port >= 1 && port <= 65535 && strlen(hostbuf) < sizeof(hostbuf));
        CHECK(strstr(z, hostbuf) != NULL);
    } else {
        CHECK(why != NULL && *why != '\0');
    }
    (void)mg_host_is_valid_name(z, strlen(z));
    free(z);
    return 0;
}
