/*
 * features/fadmin.h - the admin API for user features: one user's features, and bulk loads.
 *
 *   GET    /v1/features/{app}/{user}   200 {"app","user","features","hash"} or 404
 *   PUT    /v1/features/{app}/{user}   body: the features object {"GROUP": value, ...}
 *   DELETE /v1/features/{app}/{user}   200 {"deleted": true} or 404
 *   POST   /v1/features/{app}          body: JSON lines {"user": "...", "features": {...}}
 *        -> 200 {"accepted": N, "rejected": M, "errors": [{"line", "error"}...]} (first 20)
 *           503 with the same counts when MariaDB failed part of the load; then errors also
 *           hold {"line", "last_line", "error"}: the lines of each batch it did not store
 *
 * Writes go to MariaDB (the source of truth), then refresh Redis (mgf:v1 layout, conf/README.md)
 * with the TTL; then every worker of this process drops its cached copies of the users written,
 * before the answer (fsource.h); other gateways' copies expire (conf/README.md "Admin API"). PUT
 * and DELETE answers say "redis": "refreshed", "off" or "not_refreshed" (+ "redis_error"); a bulk
 * load counts the stored rows Redis missed in "redis_not_refreshed" (+ "redis_error"). Bodies are
 * validated against the app's groups (unknown group, wrong type, a list over max_items, over
 * max_header_bytes: the row is refused with the reason; in a bulk load, so is a line over
 * 64 KiB, and the load goes on).
 * The bulk load is streamed: rows go to MariaDB in batches of 500 (or 1 MiB of features) and
 * the request body is read no faster than they are stored (flow control), so any size loads in
 * bounded memory.
 *
 * Threading: the handler runs on the admin thread (mount it with mg_admin_mount, the handler
 * mg_fadmin_handler() and |ud| = the mg_fadmin_t); MariaDB work runs on the source's threads
 * and completes on the admin base (a locking base, as the completions need).
 */
#ifndef MG_FEATURES_FADMIN_H
#define MG_FEATURES_FADMIN_H

#include <event2/event.h>

#include "common/h2server.h"
#include "features/fsource.h"

typedef struct mg_fadmin mg_fadmin_t;

/* The API over |src| on the admin thread's |admin_base|; both must outlive it. */
mg_fadmin_t *mg_fadmin_new(mg_fsource_t *src, struct event_base *admin_base);
void mg_fadmin_free(mg_fadmin_t *a); /* NULL is fine */

const mg_srv_handler_t *mg_fadmin_handler(void);

#endif /* MG_FEATURES_FADMIN_H */
