/*
 * features/fconf.h - the "features" section of gateway.json: stores, caches, per-app groups.
 *
 * Parsed once at start-up (gateway/conf.c hands this module its section, so the section's rules
 * live next to the code that uses them) and immutable afterwards: every worker and the MariaDB
 * threads read it without locks. Secrets (passwords) come from files named in the section, never
 * from the JSON itself. Shape and defaults are documented in conf/README.md ("features").
 *
 * Ownership: mg_fconf_parse returns a heap object owned by the caller (mg_conf_t); mg_fconf_dup
 * makes an independent copy; mg_fconf_free frees either.
 */
#ifndef MG_FEATURES_FCONF_H
#define MG_FEATURES_FCONF_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "common/jsonerr.h"

typedef enum mg_fgroup_type {
    MG_FGROUP_HASH = 0, /* Redis hash: a flat object of string values */
    MG_FGROUP_LIST = 1, /* Redis list: an array of strings, newest first, at most max_items */
    MG_FGROUP_JSON = 2, /* Redis string holding any JSON value (e.g. a user vector) */
} mg_fgroup_type_t;

typedef struct mg_fgroup {
    char *name; /* [a-z0-9_]{1,32} */
    mg_fgroup_type_t type;
    unsigned max_items; /* lists only */
} mg_fgroup_t;

#define MG_FCONF_MAX_GROUPS 16 /* per app */

typedef struct mg_fapp {
    char *name;
    unsigned timeout_ms; /* the lookup budget of a request to this app */
    char **envs;         /* per-route budgets: envs[i] -> env_timeout_ms[i] */
    unsigned *env_timeout_ms;
    size_t nenvs;
    mg_fgroup_t *groups;
    size_t ngroups;
} mg_fapp_t;

/* Lookups a worker runs at once (features.c); beyond, they answer "unavailable". At most half
 * of them may wait on MariaDB (mariadb.max_waiting), so a hung MariaDB leaves room for Redis. */
#define MG_FCONF_MAX_FETCHES 10000

typedef struct mg_fconf {
    char *user_header; /* lowercase request header carrying the unit id */
    size_t user_header_len;
    size_t max_header_bytes; /* x-user-features larger than this is not sent ("too_large") */
    struct {
        bool on;
        char *host;
        unsigned port, db;
        char *password; /* read from password_file; NULL = no AUTH */
        unsigned ttl_s, negative_ttl_s, connect_timeout_ms, reconnect_max_ms;
        unsigned reply_timeout_ms; /* the longest wait for a reply before the connection goes */
    } redis;
    struct {
        bool on;
        char *host, *user, *password, *database, *table;
        unsigned port, threads, timeout_s;
        unsigned max_waiting; /* per worker: lookups waiting on MariaDB at once */
    } mariadb;
    struct {
        unsigned ttl_ms, stale_ms, negative_ttl_ms, max_entries;
    } local;
    mg_fapp_t *apps;
    size_t napps;
    json_t *_src; /* the section as given, for mg_fconf_dup */
    char *_dir;   /* the config file's directory (relative password files) */
} mg_fconf_t;

/* Parses the section |obj|; |dir| (may be NULL) resolves relative paths. Every problem goes
 * to |e|, at its path below the one |e| holds ("features" + ".apps.digits.timeout_ms"); NULL
 * when there was any (or memory ran out). */
mg_fconf_t *mg_fconf_parse(const json_t *obj, const char *dir, mg_jerr_t *e);

/* An independent copy: the section is parsed again, and the secrets already read are copied
 * (their files are not read again). NULL when |c| is NULL or out of memory. */
mg_fconf_t *mg_fconf_dup(const mg_fconf_t *c);

void mg_fconf_free(mg_fconf_t *c); /* NULL is fine */

/* The app's settings, or NULL when the app has no features. */
const mg_fapp_t *mg_fconf_app(const mg_fconf_t *c, const char *app);

/* The budget of a request to the route (app, |env|): the env's own, else the app's. */
unsigned mg_fconf_timeout_ms(const mg_fapp_t *a, const char *env);

/* True when |s| (|len| bytes) may be a unit id: 1-128 of [A-Za-z0-9_.@-]. ':' is excluded
 * because it separates the parts of the Redis keys. */
bool mg_fconf_is_user_id(const char *s, size_t len);

#endif /* MG_FEATURES_FCONF_H */
