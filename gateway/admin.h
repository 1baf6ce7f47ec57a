/*
 * gateway/admin.h - the admin listener: /metrics and the admin API, off the request path.
 *
 * One listener (HTTP/1.1 and h2c prior knowledge, like the cleartext front door) served by its
 * own thread and event_base, so a slow scrape or a bulk load never takes a worker's time.
 * Requests are dispatched by path prefix to mounted handlers; each mount is a full mg_srv
 * handler (streaming bodies both ways) or a page (a function that fills a buffer).
 *
 * Access: with a token file, every request but GET /healthz must carry
 * "Authorization: Bearer <token>" (compared in constant time; 401 otherwise). Without one, the
 * listener must be a loopback address: mg_admin_new refuses anything else, so an unprotected
 * admin API is never reachable from the network by mistake.
 *
 * Threading: mount before mg_admin_start; handlers run on the admin thread. mg_admin_free stops
 * the thread and closes the listener.
 */
#ifndef MG_GATEWAY_ADMIN_H
#define MG_GATEWAY_ADMIN_H
#include <event2/buffer.h>
#include <event2/event.h>

#include "common/h2server.h"

typedef struct mg_admin mg_admin_t;

/* Fills |out| for a GET (or HEAD) of the page; returns the status (200...). |query| is what
 * follows '?' in the path, or "". Runs on the admin thread. */
typedef int (*mg_admin_page_fn)(void *ud, const char *query, struct evbuffer *out,
                                const char **content_type);

/* Binds |listen| ("host:port") and reads |token_file| (NULL = none). NULL with a message naming
 * the address or file and the reason in |err| on failure. */
#define MG_ADMIN_TOKEN_MAX 511 /* bytes in admin.token_file */

mg_admin_t *mg_admin_new(const char *listen, const char *token_file, char *err, size_t errlen);
/* Requests whose path is |prefix| or starts with |prefix| followed by '/' or '?' go to |h| (its
 * on_request gets |ud|). The longest matching prefix wins. */
void mg_admin_mount(mg_admin_t *a, const char *prefix, const mg_srv_handler_t *h, void *ud);
/* GET/HEAD of exactly |path| (query string allowed) answers what |fn| writes. */
void mg_admin_page(mg_admin_t *a, const char *path, mg_admin_page_fn fn, void *ud);
/* Starts the admin thread. MG_OK, or MG_E_IO when the thread cannot start. */
mg_err_t mg_admin_start(mg_admin_t *a);
/* Reads |token_file| again (SIGHUP: a token rotated in place) and hands the token to the
 * admin thread; a file that cannot be taken is logged and the previous token stays. Does
 * nothing when the listener started without a token. */
void mg_admin_reload_token(mg_admin_t *a, const char *token_file);
/* The admin thread's event base (for timers of mounted modules); valid until mg_admin_free. */
struct event_base *mg_admin_base(mg_admin_t *a);
/* The bound port (useful with port 0). */
unsigned mg_admin_port(const mg_admin_t *a);
/* Stops the thread (closing open admin connections) and frees everything. NULL is fine. */
void mg_admin_free(mg_admin_t *a);

/* For handlers: answers |status| with |body| (|len| bytes, copied) and ends the stream. */
void mg_admin_reply(mg_srv_stream_t *s, int status, const char *content_type, const void *body,
                    size_t len);

#endif /* MG_GATEWAY_ADMIN_H */
