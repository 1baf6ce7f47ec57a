/*
 * routing/healthcheck.h - active health checks of runtime pods.
 *
 * A checker probes each watched pod on its own schedule: a GET of a configured path (e.g. the
 * runtime's /readyz) over a fresh non-blocking TCP connection, in HTTP/1.1 ("Connection:
 * close") or HTTP/2 with prior knowledge (h2c), as the pod's service speaks. A check passes when
 * the answer is 2xx; with conf->expect_version, a passing answer is followed by a GET of
 * /v1/status (a second fresh connection, same deadline) whose "model.version" must equal it, so
 * a pod that still serves, or already serves, another model version gets no traffic until it
 * matches. Connect, request(s) and response(s) together must finish within timeout_ms.
 *
 * States (mg_hc_state_t):
 *   UNKNOWN   - no verdict yet: a new pod (unless another key runs the same check: see
 *               mg_hc_watch), or one whose check target changed.
 *               Route only to HEALTHY pods: a runtime that has not loaded its first model must
 *               get no traffic, and UNKNOWN is the state it is in at first.
 *   HEALTHY   - from UNKNOWN after the first passing check (as Envoy treats a new host), from
 *               UNHEALTHY after healthy_threshold consecutive passes.
 *   UNHEALTHY - from UNKNOWN or HEALTHY after unhealthy_threshold consecutive failures.
 * The callback runs on every change of state, with the reason of the check that caused it:
 * "HTTP 200" for a pass ("HTTP 200, version 2" with expect_version); for a failure
 * "connect refused", "connect failed: <errno text>", "timeout", "HTTP 503",
 * "connection closed before the response", "HTTP/2: <error>", "bad response: <parser error>",
 * "/v1/status: HTTP 404", "/v1/status: no model loaded", "/v1/status: body over 65536 bytes",
 * "/v1/status: not JSON: <error>",
 * "version 1 != 2" (the version served != the version expected), ...
 *
 * Schedule: the first check of a pod starts after a random delay in [0, interval/10]; each next
 * one interval_ms (+ a random 0..10% so that checks of many pods drift apart) after the previous
 * one ended. Checks of one pod never overlap, so timeout_ms may exceed interval_ms.
 *
 * Threading: a checker belongs to one event loop thread (|base|) and every function must be
 * called on that thread. Nothing blocks: connects, writes and reads are driven by |base|.
 * The callback runs on that thread from the loop and may call any function of this module on
 * the same checker (mg_hc_unwatch and mg_hc_free included).
 *
 * Ownership: the checker copies everything it is given (pod name, address, conf strings).
 * Memory per pod is allocated in mg_hc_watch; each check allocates its connection (bufferevent,
 * parser or nghttp2 session) and, for /v1/status, its body (at most 64 KiB), freed when the
 * check ends. Pods are kept in a list: watch, unwatch and state are O(pods).
 */
#ifndef MG_ROUTING_HEALTHCHECK_H
#define MG_ROUTING_HEALTHCHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/err.h"
#include "routing/routes.h" /* mg_upstream_proto_t */

struct event_base;

typedef enum mg_hc_state {
    MG_HC_UNKNOWN = 0,
    MG_HC_HEALTHY = 1,
    MG_HC_UNHEALTHY = 2,
} mg_hc_state_t;

/* Largest /v1/status body read for the version check; a larger one fails the check. */
#define MG_HC_MAX_BODY (64 * 1024)
/* Longest pod name ("host:port") accepted by mg_hc_watch. */
#define MG_HC_MAX_NAME 512

typedef struct mg_hc_conf {
    const char *path;             /* request target, must start with '/', e.g. "/readyz" */
    uint32_t interval_ms;         /* pause between the end of a check and the next, >= 1 */
    uint32_t timeout_ms;          /* deadline of one check (connect to last byte), >= 1 */
    unsigned healthy_threshold;   /* passes in a row that make an UNHEALTHY pod HEALTHY, >= 1 */
    unsigned unhealthy_threshold; /* failures in a row that make a pod UNHEALTHY, >= 1 */
    const char *expect_version;   /* NULL = any; else a pass also needs /v1/status
                                     "model.version" == this string */
} mg_hc_conf_t;

/* Called on every state change of |pod|. |pod| and |reason| are valid during the call only. */
typedef void (*mg_hc_cb)(void *ud, const char *pod, mg_hc_state_t state, const char *reason);

typedef struct mg_hc mg_hc_t;

/* Creates a checker on |base| that reports to |cb| with |ud|; NULL when out of memory. */
mg_hc_t *mg_hc_new(struct event_base *base, mg_hc_cb cb, void *ud);

/*
 * Starts or updates the checks of |pod| ("host:port": the key, and the :authority/Host sent) at
 * |addr| (|len| bytes, IPv4 or IPv6), speaking |proto| (MG_UP_H2C or MG_UP_H1), as |conf| says.
 * |pod| is the key: "host:port", or "anything/host:port" to check one pod for several services
 * (the Host / :authority sent is the part after the last '/').
 * Idempotent: watching a pod again with the same address, protocol, path and expect_version
 * keeps its state, its counters and its schedule; new interval, timeout or thresholds apply from
 * the next check. A different address, protocol, path or expect_version restarts the pod: the
 * check in flight is dropped and the state goes back to UNKNOWN without a callback (the caller
 * made the change; it reads mg_hc_state if it keeps its own copy). A key watched for the first
 * time whose check another key already runs (same address, protocol, path and expect_version,
 * with a result: preferably a verdict) starts from that key's state and counters (a service
 * renamed by a reload, a reload's waiting check handing over).
 * Never calls the callback.
 * Returns MG_OK, MG_E_NOMEM, or MG_E_CONFIG (logged) when |conf| or |addr| is invalid: a path
 * not starting with '/' or with control characters or spaces, a zero interval, timeout or
 * threshold, an empty expect_version, a name longer than MG_HC_MAX_NAME, an address family
 * other than AF_INET/AF_INET6, an unknown protocol. On error, a pod already watched is left as
 * it was.
 */
mg_err_t mg_hc_watch(mg_hc_t *hc, const char *pod, const struct sockaddr *addr, socklen_t len,
                     mg_upstream_proto_t proto, const mg_hc_conf_t *conf);

/* Whether |pod| is watched with this address, protocol, path and expect_version: the check a
 * mg_hc_watch with them would keep going (see above). */
bool mg_hc_runs(const mg_hc_t *hc, const char *pod, const struct sockaddr *addr, socklen_t len,
                mg_upstream_proto_t proto, const mg_hc_conf_t *conf);

/* Stops checking |pod| and forgets it (a check in flight is dropped, no callback). No-op for a
 * pod that is not watched. */
void mg_hc_unwatch(mg_hc_t *hc, const char *pod);

/* The current state of |pod|; MG_HC_UNKNOWN for a pod that is not watched. */
mg_hc_state_t mg_hc_state(const mg_hc_t *hc, const char *pod);

/* Whether |pod|'s check has had a result since it (re)started: a pass or a failure (which may
 * leave it UNKNOWN, short of unhealthy_threshold), or a result taken from a twin. True for a
 * pod that is not watched: there is nothing to wait for. */
bool mg_hc_has_result(const mg_hc_t *hc, const char *pod);

/* "unknown", "healthy" or "unhealthy". */
const char *mg_hc_state_name(mg_hc_state_t state);

/* Stops every check and frees the checker. NULL is a no-op. */
void mg_hc_free(mg_hc_t *hc);

#endif /* MG_ROUTING_HEALTHCHECK_H */
