/*
 * gateway/control.h - the control loop: routing documents, active health checks, DNS discovery.
 *
 * Runs on the main thread's event base, which serves no request: it loads the routing document
 * (at start and on SIGHUP), keeps the last good one, runs the active health checks of every pod
 * whose service asks for them (their verdicts go to the pods' shared state, read by workers on
 * every pick), and re-resolves DNS services; when a service's addresses change it rebuilds the
 * snapshot from the kept document with the new pods and hands it to |install|, exactly as a
 * reload does. Workers never wait for any of it.
 */
#ifndef MG_GATEWAY_CONTROL_H
#define MG_GATEWAY_CONTROL_H

#include <stdbool.h>

#include <event2/event.h>

#include "routing/routes.h"

typedef struct mg_control mg_control_t;

/* Called with every new snapshot (one reference for the callee to keep or drop). */
typedef void (*mg_control_install_fn)(void *ud, mg_routes_t *routes);

/* |nameserver|: "ip:port" for DNS services, or NULL for the system's resolver. |wait_max_ms|:
 * the longest a reload waits for the first results of the checks it starts
 * (timeouts_ms.reload_wait; 0: it takes over at once, its pods without a result served once
 * they pass). */
mg_control_t *mg_control_new(struct event_base *base, const char *nameserver, uint32_t wait_max_ms,
                             mg_control_install_fn install, void *ud);
/*
 * Loads the routing document at |path|; on success starts the checks and DNS watches it needs
 * and returns the snapshot (one reference, not installed: the caller installs the first one);
 * on failure returns NULL with *errors (caller frees) and changes nothing.
 */
mg_routes_t *mg_control_load(mg_control_t *c, const char *path, char **errors);
/*
 * Loads the routing document at |path| again (SIGHUP). On failure returns false with *errors
 * (caller frees) and changes nothing. On success the new snapshot goes to |install| once the
 * health checks it starts have a first result (a service it adds, or pods it moves under a
 * different check, would otherwise answer 503 until then), and once the DNS names it starts
 * to watch have a first answer, at most interval_ms / 10 + timeout_ms plus a little (plus the
 * DNS timeout), and never longer than |wait_max_ms|; the snapshot in force serves meanwhile,
 * and both follow DNS answers. Logs when it takes over.
 */
bool mg_control_reload(mg_control_t *c, const char *path, char **errors);
/* Whether a reloaded snapshot is waiting for its checks' first results (it takes over then, a
 * later reload refused or not). */
bool mg_control_waiting(const mg_control_t *c);
/* Starts the checks of a snapshot built elsewhere (the --backend quick start). */
void mg_control_adopt(mg_control_t *c, const mg_routes_t *routes);
void mg_control_free(mg_control_t *c);

#endif /* MG_GATEWAY_CONTROL_H */
