/*
 * features/rloop.h - a hiredis async context on a worker's libevent base.
 *
 * What hiredis's own libevent adapter does, without its epoll churn: its events are not
 * persistent, so every reply re-registers the socket for reading, and every pipeline first
 * registers it for writing and then waits one loop pass for epoll to say it is writable: four
 * epoll_ctl calls and an extra pass per lookup. Here the read event stays registered while the
 * connection lives, and commands queued while connected are written by a zero timer (no system
 * call to schedule it), in the next loop pass as with hiredis's adapter: the commands queued
 * in one pass, and by the I/O callbacks of the next, go out in one write, which costs Redis
 * less than a write per pass (measured: bench/README.md). The socket is registered for writing
 * only while connecting and while a write would block.
 *
 * Threading: the context is used on |base|'s thread only. Ownership: hiredis owns what this
 * attaches and frees it with the context (the cleanup hook).
 */
#ifndef MG_FEATURES_RLOOP_H
#define MG_FEATURES_RLOOP_H

#include <event2/event.h>
#include <hiredis/async.h>

#include "common/err.h"

/* Attaches |ac| (fresh from redisAsyncConnect) to |base|. Returns MG_OK, or MG_E_NOMEM (the
 * caller then frees |ac|). */
mg_err_t mg_rloop_attach(redisAsyncContext *ac, struct event_base *base);

#endif /* MG_FEATURES_RLOOP_H */
