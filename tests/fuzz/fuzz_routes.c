/*
 * tests/fuzz/fuzz_routes.c - routing documents from arbitrary bytes.
 *
 * Beyond "no crash, no leak, no UB", it checks the contract: a document is either accepted with
 * no errors, or rejected with at least one error line naming its source; and every route of an
 * accepted document is reachable through its own host name.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/stats.h"
#include "routing/podstate.h"
#include "routing/routes.h"
#include "check.h"

static void check_accepted(mg_routes_t *r)
{
    for (size_t i = 0; i < r->nroutes; i++) {
        const mg_route_t *rt = &r->routes[i];
        char host[512], app[64], env[64];
        int n = snprintf(host, sizeof(host), "%s-%s.%s", rt->app, rt->env, r->domain);
        CHECK(n > 0 && (size_t)n < sizeof(host));
        if (n > 255)
            continue; /* too long for a host: the matcher does not look it up, by design */
        CHECK(mg_routes_match(r, host, (size_t)n, app, env, sizeof(app)) == rt->service);
        CHECK(mg_routes_match_route(r, host, (size_t)n, NULL, NULL, 0) == rt);
        CHECK(rt->split == NULL || (rt->nsplit >= 1 && rt->service == rt->split_services[0]));
        CHECK(strcmp(app, rt->app) == 0 && strcmp(env, rt->env) == 0);
    }
    for (size_t i = 0; i < r->nservices; i++) {
        mg_service_t *s = &r->services[i];
        if (s->dns_name) { /* pods come later, from DNS */
            CHECK(s->npods == 0 && s->lb == NULL && mg_service_pick(s, 0) == -1);
            continue;
        }
        CHECK(s->npods >= 1 && s->npods <= 64 && s->lb != NULL);
        int p = mg_service_pick(s, 0);
        CHECK(p >= 0 && (size_t)p < s->npods);
        CHECK(mg_service_pick(s, UINT64_MAX) == -1);
        for (size_t k = 0; k < s->npods; k++)
            CHECK(s->pods[k].state != NULL);
    }
    mg_routes_ref(r);
    mg_routes_unref(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL)
        return 0;
    char *errors = (char *)"untouched";
    mg_routes_t *r = mg_routes_from_json(doc, "fuzz.json", &errors);
    json_decref(doc);
    if (r != NULL) {
        CHECK(errors == NULL);
        check_accepted(r);
        mg_routes_unref(r);
    } else {
        CHECK(errors != NULL && strncmp(errors, "fuzz.json: ", 11) == 0);
        CHECK(errors[strlen(errors) - 1] != '\n');
        free(errors);
    }
    /* the registries outlive snapshots in the gateway; here each input starts afresh */
    mg_podstate_free_all();
    mg_stats_free_all();
    return 0;
}
