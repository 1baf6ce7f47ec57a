/*
 * routing/host.h - "{app}-{env}.{domain}" host parsing.
 *
 * Pure functions over caller-owned memory; no allocation, safe from any thread.
 */
#ifndef MG_ROUTING_HOST_H
#define MG_ROUTING_HOST_H

#include <stddef.h>

#include "common/err.h"

typedef struct mg_host {
    const char *app; /* points into the parsed host; not NUL-terminated */
    size_t app_len;
    const char *env; /* points into |envs|[i] (NUL-terminated) */
    size_t env_len;
} mg_host_t;

/*
 * Splits |host| (an :authority or Host value, |len| bytes, optional ":port" suffix, optional
 * trailing dot, any case) into app and env. The first label must be "{app}-{env}" where env is
 * one of |envs| (the longest that matches wins, so an env may itself contain '-') and app is
 * non-empty (it may contain '-'); the rest must equal |domain| (case-insensitive).
 * Returns MG_OK, or MG_E_NOTFOUND when the host does not have that shape, MG_E_PROTO when
 * |host| is empty or has characters a host name cannot have.
 */
mg_err_t mg_host_parse(const char *host, size_t len, const char *domain, const char *const *envs,
                       size_t nenvs, mg_host_t *out);

#endif /* MG_ROUTING_HOST_H */
