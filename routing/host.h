/*
 * routing/host.h - "{app}-{env}.{domain}" host parsing.
 *
 * Pure functions over caller-owned memory; no allocation, safe from any thread.
 */
#ifndef MG_ROUTING_HOST_H
#define MG_ROUTING_HOST_H

#include <stdbool.h>
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
 * |host| is empty, has characters a host name cannot have or a port over 65535.
 */
mg_err_t mg_host_parse(const char *host, size_t len, const char *domain, const char *const *envs,
                       size_t nenvs, mg_host_t *out);

/*
 * Checks the syntax of |host| (|len| bytes), a request's :authority or Host value: a host (a
 * reg-name of RFC 3986 3.2.2: letters, digits, "-._~", "!$&'()*+,;=" and %XX escapes, or an
 * IPv6 literal in brackets) and an optional ":port" of at most 5 digits, 65535 at most (an
 * empty port is allowed, RFC 3986 3.2.3). A request whose host fails this is answered 400
 * (RFC 9112 3.2, RFC 9113 8.3.1); one that passes but is no route's is a 404.
 * Returns MG_OK, or MG_E_PROTO and sets *why (if |why| is not NULL) to a static reason for
 * the message: the host is empty, has user info ('@'), a path, query or fragment, a bad port,
 * a malformed IP literal or a character no host name has.
 */
mg_err_t mg_host_check(const char *host, size_t len, const char **why);

/*
 * True when |name| (|len| bytes) is a DNS host name: dot-separated labels of ASCII letters, digits
 * and '-' (1-63 bytes each, not starting or ending with '-'), at most 253 bytes, one optional
 * trailing dot. Used to validate configured domains and pod host names.
 */
bool mg_host_is_valid_name(const char *name, size_t len);

/*
 * Checks and splits a configured address |addr| (NUL-terminated): "host:port", "a.b.c.d:port" or
 * "[v6]:port", port 1-65535, host a valid name (see above) or an IP literal. On MG_OK, |host|
 * (|cap| bytes) receives the host without brackets (an IPv6 literal is the one that contains
 * ':') and *port the port. Otherwise returns MG_E_CONFIG and, if |why| is not NULL, sets *why to
 * a static reason for the message, e.g. "port must be 1-65535".
 */
mg_err_t mg_host_split_port(const char *addr, char *host, size_t cap, unsigned *port,
                            const char **why);

#endif /* MG_ROUTING_HOST_H */
