/*
 * gateway/proxy.h - forwarding one client request to a pod of its service.
 *
 * One mg_proxy_t per worker thread. It is the handler of that worker's mg_srv_t: for each
 * request it routes by host, picks the route's service (a canary split's share, sticky per
 * unit or not, falling back when a service has no pod up), picks a pod with the service's
 * policy among those that are healthy, not ejected and under their limits, retries on another
 * pod within the service's retry budget, streams the request and response bodies both ways with backpressure, passes
 * trailers, enforces the timeouts, answers errors as JSON and writes the access log record.
 *
 * Routing snapshots: the proxy holds one reference on its current snapshot and each request
 * holds one on the snapshot it was routed with, so mg_proxy_set_routes (SIGHUP) never
 * disturbs a request in flight. It also has the upstream pools of pods the new snapshot no
 * longer names freed once they are idle (mg_upstreams_routes_changed).
 */
#ifndef MG_GATEWAY_PROXY_H
#define MG_GATEWAY_PROXY_H

#include <event2/event.h>

#include "common/h2server.h"
#include "features/features.h"
#include "gateway/conf.h"
#include "gateway/reqlog.h"
#include "routing/routes.h"

typedef struct mg_proxy mg_proxy_t;

/* |conf| and |log| (may be NULL) must outlive the proxy. |worker| is the worker's index (its
 * row in balancers and counters: 0 <= worker < the workers given to mg_routes_set_workers and
 * mg_stats_init). */
mg_proxy_t *mg_proxy_new(struct event_base *base, const mg_conf_t *conf, mg_reqlog_t *log,
                         unsigned worker);

/* Takes a new reference on |routes| and drops the one on the previous snapshot. */
void mg_proxy_set_routes(mg_proxy_t *p, mg_routes_t *routes);

/* User features for this worker's requests (NULL = off); |f| must outlive the proxy. */
void mg_proxy_set_features(mg_proxy_t *p, mg_features_t *f);

/* The mg_srv_t handler; pass the proxy as its |ud|. */
const mg_srv_handler_t *mg_proxy_handler(void);

/* Requests in flight. */
size_t mg_proxy_inflight(const mg_proxy_t *p);

/* Requests started since the proxy was made (an activity mark: it changes when work came). */
uint64_t mg_proxy_started(const mg_proxy_t *p);

/* Frees the exchanges and upstream streams kept for reuse: the worker is idle. */
void mg_proxy_trim(mg_proxy_t *p);

void mg_proxy_free(mg_proxy_t *p);

#endif /* MG_GATEWAY_PROXY_H */
