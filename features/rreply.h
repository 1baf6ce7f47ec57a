/*
 * features/rreply.h - Redis replies built in one reusable buffer, not one malloc per element.
 *
 * hiredis builds each reply as a tree of redisReply with two mallocs per string element (the
 * struct and its bytes): a 50-item LRANGE costs over 100 malloc/free pairs. A pool replaces
 * the reader's object functions (redisReplyObjectFunctions) with ones that build the very same
 * tree (every field as hiredis sets it, strings NUL-terminated) in the pool's buffer, and that
 * forget it all when hiredis frees the reply. That is enough because hiredis's async API has
 * one reply in the making at a time: it reads one, passes it to its callback, frees it, and
 * only then reads the next (a reply cut short is freed with its reader).
 *
 * Threading: a pool is used on the thread of the context it is attached to. Ownership: the
 * caller owns the pool; it must outlive every reader attached to it, and at most one of those
 * may be alive at a time. Replies stay valid until hiredis frees them (inside the callback
 * only, as before).
 */
#ifndef MG_FEATURES_RREPLY_H
#define MG_FEATURES_RREPLY_H

#include <hiredis/read.h>

typedef struct mg_rreply_pool mg_rreply_pool_t;

/* An empty pool; NULL when out of memory. */
mg_rreply_pool_t *mg_rreply_pool_new(void);
void mg_rreply_pool_free(mg_rreply_pool_t *p); /* NULL is fine */

/* Why the pool refused the last reply it was asked to build (an array of more than 2^20
 * elements, or an array inside an array: hiredis then fails the connection with "Out of
 * memory"), or NULL; asking clears it. The text stays valid until the thread asks again. */
const char *mg_rreply_refused(mg_rreply_pool_t *p);

/* Makes |r| (e.g. an async context's ac->c.reader, before its first reply) build its replies
 * in |p|. */
void mg_rreply_attach(redisReader *r, mg_rreply_pool_t *p);

/* The text of reply |r| (an error's message) for a log line or an error answer, into |out|
 * (|cap| >= 1 bytes): cut to fit, any byte that is not printable ASCII written as '?'. Any
 * reply works: the text of a string or status reply, "" for the others. */
struct redisReply;
void mg_rreply_text(const struct redisReply *r, char *out, size_t cap);

/* What to check when Redis refused a connection's handshake: |cause| is "STEP refused (Redis's
 * message)", STEP AUTH, SELECT or PING. "; check ..." or "". */
const char *mg_rreply_hint(const char *cause);

#endif /* MG_FEATURES_RREPLY_H */
