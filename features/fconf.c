/*
 * features/fconf.c - the "features" section of gateway.json (see fconf.h).
 *
 * Every key is checked and every problem reported (with the path inside the section) before
 * the caller refuses to start, like the rest of gateway.json. Unknown keys are errors.
 */
#include "features/fconf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonerr.h"
#include "common/secretfile.h"

#define MAX_PASSWORD 511 /* bytes in a password_file */

typedef struct pctx {
    mg_jerr_t *e; /* where problems go; its path is the section's ("features") on entry */
    const char *dir;
    bool no_secrets; /* mg_fconf_dup: the copy takes the secrets already read, not the files */
} pctx_t;

/* An integer key in [lo, hi]; *out keeps its default when the key is absent. */
static void get_uint(pctx_t *p, const json_t *obj, const char *key, unsigned lo, unsigned hi,
                     const char *what, unsigned *out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(p->e, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        mg_jerr_f(p->e, "expected an integer %u-%u (%s)", lo, hi, what);
    else
        *out = (unsigned)json_integer_value(v);
    mg_jerr_pop(p->e, old);
}

/* A non-empty string key; *out is replaced (malloc'ed) when present. */
static void get_str(pctx_t *p, const json_t *obj, const char *key, char **out)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t old = mg_jerr_key(p->e, key);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 255) {
        mg_jerr_f(p->e, "expected a non-empty string of at most 255 bytes");
    } else {
        free(*out);
        *out = strdup(json_string_value(v));
        if (*out == NULL)
            mg_jerr_f(p->e, "out of memory");
    }
    mg_jerr_pop(p->e, old);
}

/* Reads the password in the file named by |key|, relative to the config's directory; the file
 * holds one line (common/secretfile.h). */
static void get_secret(pctx_t *p, const json_t *obj, const char *key, char **out)
{
    char *file = NULL, path[4096], msg[480];
    get_str(p, obj, key, &file);
    if (file == NULL || p->no_secrets) {
        free(file);
        return;
    }
    size_t old = mg_jerr_key(p->e, key);
    if (file[0] == '/' || p->dir == NULL)
        snprintf(path, sizeof(path), "%s", file);
    else
        snprintf(path, sizeof(path), "%s/%s", p->dir, file);
    /* no key in the message: the report's path names it ("features.redis.password_file") */
    if (mg_secretfile_read(path, NULL, MG_SECRET_PASSWORD, MAX_PASSWORD, out, msg, sizeof(msg)) !=
        MG_OK)
        mg_jerr_f(p->e, "%s", msg);
    mg_jerr_pop(p->e, old);
    free(file);
}

static bool is_group_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

bool mg_fconf_is_user_id(const char *s, size_t len)
{
    if (len == 0 || len > 128)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

static void parse_group(pctx_t *p, const json_t *g, mg_fgroup_t *out)
{
    static const char *const keys[] = {"name", "type", "max_items", NULL};
    out->max_items = 50;
    if (!json_is_object(g)) {
        mg_jerr_f(p->e, "expected an object {\"name\", \"type\": \"hash\"|\"list\"|\"json\"}");
        return;
    }
    mg_jerr_keys(p->e, g, keys);
    const json_t *name = json_object_get(g, "name"), *type = json_object_get(g, "type");
    size_t old = mg_jerr_key(p->e, "name");
    if (!json_is_string(name) || !is_group_name(json_string_value(name)))
        mg_jerr_f(p->e, "expected 1-32 of [a-z0-9_]");
    else if ((out->name = strdup(json_string_value(name))) == NULL)
        mg_jerr_f(p->e, "out of memory");
    mg_jerr_pop(p->e, old);
    old = mg_jerr_key(p->e, "type");
    const char *t = json_is_string(type) ? json_string_value(type) : "";
    if (strcmp(t, "hash") == 0)
        out->type = MG_FGROUP_HASH;
    else if (strcmp(t, "list") == 0)
        out->type = MG_FGROUP_LIST;
    else if (strcmp(t, "json") == 0)
        out->type = MG_FGROUP_JSON;
    else
        mg_jerr_f(p->e, "expected \"hash\", \"list\" or \"json\"");
    mg_jerr_pop(p->e, old);
    if (json_object_get(g, "max_items") && out->type != MG_FGROUP_LIST) {
        old = mg_jerr_key(p->e, "max_items");
        mg_jerr_f(p->e, "only a \"list\" group has max_items");
        mg_jerr_pop(p->e, old);
    }
    get_uint(p, g, "max_items", 1, 10000, "items kept, newest first", &out->max_items);
}

static void parse_app(pctx_t *p, const char *name, const json_t *a, mg_fapp_t *out)
{
    static const char *const keys[] = {"timeout_ms", "timeout_ms_by_env", "groups", NULL};
    out->timeout_ms = 5;
    if ((out->name = strdup(name)) == NULL) {
        mg_jerr_f(p->e, "out of memory");
        return;
    }
    if (!json_is_object(a)) {
        mg_jerr_f(p->e, "expected an object {\"timeout_ms\", \"groups\"}");
        return;
    }
    mg_jerr_keys(p->e, a, keys);
    get_uint(p, a, "timeout_ms", 1, 60000, "ms a request waits for its features", &out->timeout_ms);
    const json_t *by = json_object_get(a, "timeout_ms_by_env");
    if (by != NULL) {
        size_t o2 = mg_jerr_key(p->e, "timeout_ms_by_env");
        size_t n = json_is_object(by) ? json_object_size(by) : 0;
        if (!json_is_object(by)) {
            mg_jerr_f(p->e, "expected an object {\"ENV\": ms, ...}");
        } else if (n && ((out->envs = calloc(n, sizeof(char *))) == NULL ||
                         (out->env_timeout_ms = calloc(n, sizeof(unsigned))) == NULL)) {
            mg_jerr_f(p->e, "out of memory");
        } else {
            const char *k;
            json_t *v;
            json_object_foreach((json_t *)by, k, v)
            {
                unsigned ms = out->timeout_ms;
                get_uint(p, by, k, 1, 60000, "ms a request to this env waits for its features",
                         &ms);
                if ((out->envs[out->nenvs] = strdup(k)) == NULL) {
                    mg_jerr_f(p->e, "out of memory");
                    break;
                }
                out->env_timeout_ms[out->nenvs++] = ms;
            }
        }
        mg_jerr_pop(p->e, o2);
    }
    const json_t *gs = json_object_get(a, "groups");
    size_t old = mg_jerr_key(p->e, "groups");
    if (!json_is_array(gs) || json_array_size(gs) == 0 ||
        json_array_size(gs) > MG_FCONF_MAX_GROUPS) {
        mg_jerr_f(p->e, "expected an array of 1-%d groups", MG_FCONF_MAX_GROUPS);
    } else if ((out->groups = calloc(json_array_size(gs), sizeof(*out->groups))) == NULL) {
        mg_jerr_f(p->e, "out of memory");
    } else {
        out->ngroups = json_array_size(gs);
        for (size_t i = 0; i < out->ngroups; i++) {
            size_t o2 = mg_jerr_index(p->e, i);
            parse_group(p, json_array_get(gs, i), &out->groups[i]);
            for (size_t j = 0; j < i && out->groups[i].name; j++)
                if (out->groups[j].name && strcmp(out->groups[j].name, out->groups[i].name) == 0)
                    mg_jerr_f(p->e, "group \"%s\" given twice", out->groups[i].name);
            mg_jerr_pop(p->e, o2);
        }
    }
    mg_jerr_pop(p->e, old);
}

static void defaults(mg_fconf_t *c)
{
    c->max_header_bytes = 8192;
    c->redis.port = 6379;
    c->redis.ttl_s = 3600;
    c->redis.negative_ttl_s = 60;
    c->redis.connect_timeout_ms = 1000;
    c->redis.reply_timeout_ms = 1000;
    c->redis.reconnect_max_ms = 2000;
    c->mariadb.port = 3306;
    c->mariadb.threads = 2;
    c->mariadb.timeout_s = 2;
    c->mariadb.max_waiting = MG_FCONF_MAX_FETCHES / 2;
    c->local.ttl_ms = 1000;
    c->local.stale_ms = 10000;
    c->local.negative_ttl_ms = 5000;
    c->local.max_entries = 10000;
}

static void parse_redis(pctx_t *p, const json_t *r, mg_fconf_t *c)
{
    static const char *const keys[] = {"host",
                                       "port",
                                       "db",
                                       "password_file",
                                       "ttl_s",
                                       "negative_ttl_s",
                                       "connect_timeout_ms",
                                       "reply_timeout_ms",
                                       "reconnect_max_ms",
                                       NULL};
    size_t old = mg_jerr_key(p->e, "redis");
    if (!json_is_object(r)) {
        mg_jerr_f(p->e, "expected an object {\"host\", \"port\", ...}");
    } else {
        c->redis.on = true;
        mg_jerr_keys(p->e, r, keys);
        get_str(p, r, "host", &c->redis.host);
        get_uint(p, r, "port", 1, 65535, "TCP port", &c->redis.port);
        get_uint(p, r, "db", 0, 255, "database index", &c->redis.db);
        get_secret(p, r, "password_file", &c->redis.password);
        get_uint(p, r, "ttl_s", 1, 30 * 86400, "seconds a user's features stay in Redis",
                 &c->redis.ttl_s);
        get_uint(p, r, "negative_ttl_s", 1, 86400, "seconds an unknown user stays known as such",
                 &c->redis.negative_ttl_s);
        get_uint(p, r, "connect_timeout_ms", 10, 60000, "ms", &c->redis.connect_timeout_ms);
        get_uint(p, r, "reply_timeout_ms", 10, 60000, "ms, the longest wait for a reply",
                 &c->redis.reply_timeout_ms);
        get_uint(p, r, "reconnect_max_ms", 10, 600000, "ms, the longest reconnect backoff",
                 &c->redis.reconnect_max_ms);
        if (c->redis.host == NULL && (c->redis.host = strdup("127.0.0.1")) == NULL)
            mg_jerr_f(p->e, "out of memory");
    }
    mg_jerr_pop(p->e, old);
}

static void parse_mariadb(pctx_t *p, const json_t *m, mg_fconf_t *c)
{
    static const char *const keys[] = {"host",  "port",    "user",      "password_file", "database",
                                       "table", "threads", "timeout_s", "max_waiting",   NULL};
    size_t old = mg_jerr_key(p->e, "mariadb");
    if (!json_is_object(m)) {
        mg_jerr_f(p->e, "expected an object {\"host\", \"port\", \"user\", \"database\", ...}");
    } else {
        c->mariadb.on = true;
        mg_jerr_keys(p->e, m, keys);
        get_str(p, m, "host", &c->mariadb.host);
        get_uint(p, m, "port", 1, 65535, "TCP port", &c->mariadb.port);
        get_str(p, m, "user", &c->mariadb.user);
        get_secret(p, m, "password_file", &c->mariadb.password);
        get_str(p, m, "database", &c->mariadb.database);
        get_str(p, m, "table", &c->mariadb.table);
        get_uint(p, m, "threads", 1, 64, "lookup threads", &c->mariadb.threads);
        get_uint(p, m, "timeout_s", 1, 600, "connect/read/write timeout, seconds",
                 &c->mariadb.timeout_s);
        get_uint(p, m, "max_waiting", 1, MG_FCONF_MAX_FETCHES / 2,
                 "lookups a worker keeps waiting on MariaDB", &c->mariadb.max_waiting);
        if (c->mariadb.host == NULL)
            c->mariadb.host = strdup("127.0.0.1");
        if (c->mariadb.user == NULL)
            c->mariadb.user = strdup("modelgate");
        if (c->mariadb.database == NULL)
            c->mariadb.database = strdup("modelgate");
        if (c->mariadb.table == NULL)
            c->mariadb.table = strdup("user_features");
        const char *t = c->mariadb.table ? c->mariadb.table : "";
        for (size_t i = 0; t[i]; i++)
            if (!((t[i] >= 'a' && t[i] <= 'z') || (t[i] >= '0' && t[i] <= '9') || t[i] == '_')) {
                size_t o2 = mg_jerr_key(p->e, "table");
                mg_jerr_f(p->e, "expected [a-z0-9_]+ (got \"%.64s\")", t);
                mg_jerr_pop(p->e, o2);
                break;
            }
    }
    mg_jerr_pop(p->e, old);
}

static void parse_local(pctx_t *p, const json_t *l, mg_fconf_t *c)
{
    static const char *const keys[] = {"ttl_ms", "stale_ms", "negative_ttl_ms", "max_entries",
                                       NULL};
    size_t old = mg_jerr_key(p->e, "local");
    if (!json_is_object(l)) {
        mg_jerr_f(p->e, "expected an object {\"ttl_ms\", \"stale_ms\", ...}");
    } else {
        mg_jerr_keys(p->e, l, keys);
        get_uint(p, l, "ttl_ms", 0, 3600000, "ms an entry is fresh, 0 = no local cache",
                 &c->local.ttl_ms);
        get_uint(p, l, "stale_ms", 0, 3600000,
                 "ms past ttl_ms an entry is still served while it is refreshed",
                 &c->local.stale_ms);
        get_uint(p, l, "negative_ttl_ms", 0, 3600000, "ms an unknown user is remembered",
                 &c->local.negative_ttl_ms);
        get_uint(p, l, "max_entries", 1, 10000000, "entries per worker", &c->local.max_entries);
    }
    mg_jerr_pop(p->e, old);
}

static void parse_into(pctx_t *p, const json_t *obj, mg_fconf_t *c)
{
    static const char *const keys[] = {
        "user_header", "max_header_bytes", "redis", "mariadb", "local", "apps", NULL};
    defaults(c);
    if (!json_is_object(obj)) {
        mg_jerr_f(p->e, "expected an object {\"redis\", \"mariadb\", \"local\", \"apps\", ...}");
        return;
    }
    mg_jerr_keys(p->e, obj, keys);
    get_str(p, obj, "user_header", &c->user_header);
    if (c->user_header == NULL)
        c->user_header = strdup("x-user-id");
    if (c->user_header) {
        for (char *s = c->user_header; *s; s++)
            if (*s >= 'A' && *s <= 'Z')
                *s = (char)(*s - 'A' + 'a');
        c->user_header_len = strlen(c->user_header);
    }
    unsigned mhb = (unsigned)c->max_header_bytes;
    get_uint(p, obj, "max_header_bytes", 64, 65536, "bytes of x-user-features", &mhb);
    c->max_header_bytes = mhb;
    if (json_object_get(obj, "redis"))
        parse_redis(p, json_object_get(obj, "redis"), c);
    if (json_object_get(obj, "mariadb"))
        parse_mariadb(p, json_object_get(obj, "mariadb"), c);
    if (json_object_get(obj, "local"))
        parse_local(p, json_object_get(obj, "local"), c);
    if (!c->redis.on && !c->mariadb.on)
        mg_jerr_f(p->e, "neither \"redis\" nor \"mariadb\" is configured (expected at least one)");
    const json_t *apps = json_object_get(obj, "apps");
    size_t old = mg_jerr_key(p->e, "apps");
    if (!json_is_object(apps) || json_object_size(apps) == 0) {
        mg_jerr_f(
            p->e,
            "expected an object {\"APP\": {\"timeout_ms\", \"groups\"}} with at least one app");
    } else if ((c->apps = calloc(json_object_size(apps), sizeof(*c->apps))) == NULL) {
        mg_jerr_f(p->e, "out of memory");
    } else {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)apps, k, v)
        {
            size_t o2 = mg_jerr_key(p->e, k);
            parse_app(p, k, v, &c->apps[c->napps++]);
            mg_jerr_pop(p->e, o2);
        }
    }
    mg_jerr_pop(p->e, old);
}

static mg_fconf_t *parse(const json_t *obj, const char *dir, mg_jerr_t *e, bool no_secrets)
{
    pctx_t p = {.e = e, .dir = dir, .no_secrets = no_secrets};
    size_t problems = e->count;
    mg_fconf_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        mg_jerr_f(e, "out of memory");
        return NULL;
    }
    c->_src = json_deep_copy(obj);
    c->_dir = dir ? strdup(dir) : NULL;
    if (c->_src == NULL || (dir && c->_dir == NULL))
        mg_jerr_f(e, "out of memory");
    parse_into(&p, obj, c);
    if (e->count > problems || e->nomem) {
        mg_fconf_free(c);
        return NULL;
    }
    return c;
}

mg_fconf_t *mg_fconf_parse(const json_t *obj, const char *dir, mg_jerr_t *e)
{
    return parse(obj, dir, e, false);
}

static bool copy_secret(char **dst, const char *src)
{
    return src == NULL || (*dst = strdup(src)) != NULL;
}

/* The section is parsed again, but its password files are not read again: they may have
 * changed since (a rotation), and the copy must hold what was checked. So it fails only for
 * want of memory. */
mg_fconf_t *mg_fconf_dup(const mg_fconf_t *c)
{
    if (c == NULL)
        return NULL;
    mg_jerr_t e = {.source = "features"}; /* parsed before: only memory can fail */
    mg_fconf_t *d = parse(c->_src, c->_dir, &e, true);
    free(e.buf);
    if (d && (!copy_secret(&d->redis.password, c->redis.password) ||
              !copy_secret(&d->mariadb.password, c->mariadb.password))) {
        mg_fconf_free(d);
        return NULL;
    }
    return d;
}

void mg_fconf_free(mg_fconf_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->napps; i++) {
        for (size_t j = 0; j < c->apps[i].ngroups; j++)
            free(c->apps[i].groups[j].name);
        free(c->apps[i].groups);
        free(c->apps[i].name);
        for (size_t j = 0; j < c->apps[i].nenvs; j++)
            free(c->apps[i].envs[j]);
        free(c->apps[i].envs);
        free(c->apps[i].env_timeout_ms);
    }
    free(c->apps);
    free(c->user_header);
    free(c->redis.host);
    mg_secretfile_free(c->redis.password);
    free(c->mariadb.host);
    free(c->mariadb.user);
    mg_secretfile_free(c->mariadb.password);
    free(c->mariadb.database);
    free(c->mariadb.table);
    json_decref(c->_src);
    free(c->_dir);
    free(c);
}

const mg_fapp_t *mg_fconf_app(const mg_fconf_t *c, const char *app)
{
    for (size_t i = 0; c && i < c->napps; i++)
        if (strcmp(c->apps[i].name, app) == 0)
            return &c->apps[i];
    return NULL;
}

unsigned mg_fconf_timeout_ms(const mg_fapp_t *a, const char *env)
{
    for (size_t i = 0; env && i < a->nenvs; i++)
        if (strcmp(a->envs[i], env) == 0)
            return a->env_timeout_ms[i];
    return a->timeout_ms;
}
