/*
 * backends/runtime/slot.c - model slot and loader thread.
 *
 * DESIGN
 * The loader thread sleeps on a condition variable with a |watch_ms| timeout. Each wake-up it
 * reads the source's identity (device, inode, size and mtime of the descriptor and of the
 * model file, symlinks followed); on a change, on a reload request, or before the first model,
 * it loads the model (mg_model_load: hash + parse), warms it up, and swaps it in. Identities are
 * recorded even when a load fails, so a broken file is tried once, not every tick; writing a
 * fixed file (new mtime) or SIGHUP tries again.
 */
#include "backends/runtime/slot.h"

#include <errno.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

#define STOP_WAIT_S 5 /* at exit, the longest wait for a load in progress */

typedef struct ident {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool present;
} ident_t;

struct mg_slot {
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t wake;
    pthread_t thread;
    bool started, stop, reload;
    mg_model_t *current;
    char *descriptor, *file, *kind, *name, *version;
    ident_t id_desc, id_file;
    bool tried; /* a load was attempted for the current identities */
    unsigned watch_ms, warmup_rounds;
    mg_slot_stats_t stats;
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static ident_t ident_of(const char *path)
{
    ident_t id = {0};
    struct stat st;
    if (path && stat(path, &st) == 0) { /* stat follows symlinks: a re-pointed link counts */
        id.dev = st.st_dev;
        id.ino = st.st_ino;
        id.size = st.st_size;
        id.mtime = st.st_mtim;
        id.present = true;
    }
    return id;
}

static bool ident_eq(const ident_t *a, const ident_t *b)
{
    return a->present == b->present && a->dev == b->dev && a->ino == b->ino &&
           a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec;
}

mg_err_t mg_slot_read_descriptor(const char *path, char **file, char **kind, char **name,
                                 char **version, char **options, json_t **warmup, char *err,
                                 size_t errlen)
{
    json_error_t jerr;
    *file = *kind = *name = *version = *options = NULL;
    *warmup = NULL;
    struct stat st; /* a FIFO would hold the loader until a writer came (mg_model_load) */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "model descriptor '%s': not a regular file", path);
        return MG_E_CONFIG;
    }
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        if (jerr.line < 0 && access(path, R_OK) != 0) {
            snprintf(err, errlen, "model descriptor '%s': %s", path, strerror(errno));
            return MG_E_NOTFOUND;
        }
        snprintf(err, errlen, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        return MG_E_CONFIG;
    }
    mg_err_t rc = MG_E_CONFIG;
    static const char *const keys[] = {"file", "kind", "name", "version", "options", "warmup",
                                       NULL};
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v)
    {
        bool known = false;
        for (int i = 0; keys[i]; i++)
            known = known || strcmp(k, keys[i]) == 0;
        if (!known) {
            int n = snprintf(err, errlen,
                             "%s: unknown key '%s'; valid: file, kind, name, version, options, "
                             "warmup",
                             path, k);
            /* a model file given without --kind is read as a descriptor: say so */
            char kinds[128];
            if (json_object_get(doc, "file") == NULL && n > 0 && (size_t)n < errlen)
                snprintf(err + n, errlen - (size_t)n,
                         " (with no \"file\" key, this looks like a model file rather than a "
                         "descriptor: give its kind with --kind, one of%s)",
                         mg_model_kind_list(kinds, sizeof(kinds)));
            goto out;
        }
    }
    const char *f = json_string_value(json_object_get(doc, "file"));
    const char *kd = json_string_value(json_object_get(doc, "kind"));
    if (f == NULL || f[0] == '\0') {
        snprintf(err, errlen, "%s: file: expected the model file's path (a string)", path);
        goto out;
    }
    if (kd == NULL) {
        snprintf(err, errlen, "%s: kind: expected a string (one of the model kinds)", path);
        goto out;
    }
    json_t *nm = json_object_get(doc, "name"), *ver = json_object_get(doc, "version");
    json_t *opt = json_object_get(doc, "options"), *wu = json_object_get(doc, "warmup");
    if ((nm && !json_is_string(nm)) || (ver && !json_is_string(ver) && !json_is_integer(ver))) {
        snprintf(err, errlen, "%s: name and version: expected strings", path);
        goto out;
    }
    if (opt && !json_is_object(opt)) {
        snprintf(err, errlen, "%s: options: expected an object", path);
        goto out;
    }
    if (wu && !json_is_array(wu)) {
        snprintf(err, errlen, "%s: warmup: expected an array of inputs", path);
        goto out;
    }
    if (f[0] == '/') {
        *file = strdup(f);
    } else {
        char *copy = strdup(path);
        const char *dir = copy ? dirname(copy) : ".";
        size_t n = strlen(dir) + strlen(f) + 2;
        *file = malloc(n);
        if (*file)
            snprintf(*file, n, "%s/%s", dir, f);
        free(copy);
    }
    *kind = strdup(kd);
    *name = dup_or_null(json_string_value(nm));
    if (json_is_integer(ver)) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(ver));
        *version = strdup(buf);
    } else {
        *version = dup_or_null(json_string_value(ver));
    }
    *options = opt ? json_dumps(opt, JSON_COMPACT) : NULL;
    *warmup = wu ? json_incref(wu) : NULL;
    rc = MG_OK;
out:
    json_decref(doc);
    return rc;
}

/* Warm-up with the descriptor's samples: each must parse and answer. */
static mg_err_t warm_with_samples(mg_model_t *m, json_t *samples, char *err, size_t errlen)
{
    mg_input_buf_t buf;
    mg_outputs_t out;
    mg_input_buf_init(&buf, 0);
    mg_outputs_init(&out);
    mg_err_t rc = MG_OK;
    size_t i;
    json_t *x;
    json_array_foreach(samples, i, x)
    {
        json_t *body = json_pack("{sO}", "input", x);
        mg_input_view_t view;
        char msg[256];
        rc = body ? mg_input_from_json(&m->desc, body, &buf, &view, msg, sizeof(msg)) : MG_E_NOMEM;
        if (rc == MG_OK)
            rc = mg_model_predict(m, &view, NULL, NULL, &out);
        if (rc == MG_OK && out.n > 0 && out.items[0].err != MG_OK)
            rc = MG_E_PROTO;
        json_decref(body);
        if (rc != MG_OK) {
            snprintf(err, errlen, "warm-up sample %zu failed: %s", i,
                     rc == MG_E_PROTO && out.n ? mg_output_json(&out, 0)
                                               : (out.err[0] ? out.err : msg));
            break;
        }
    }
    mg_input_buf_clear(&buf);
    mg_outputs_clear(&out);
    return rc;
}

/* One load attempt from the slot's source; swaps on success. Runs on the loader thread. */
static void load_once(mg_slot_t *s)
{
    char err[512] = "";
    double t0 = mono_ms();
    pthread_mutex_lock(&s->lock);
    char *descriptor = dup_or_null(s->descriptor);
    char *file = dup_or_null(s->file), *kind = dup_or_null(s->kind);
    char *name = dup_or_null(s->name), *version = dup_or_null(s->version);
    s->stats.loading = true;
    pthread_mutex_unlock(&s->lock);

    char *options = NULL;
    json_t *warmup = NULL;
    mg_model_t *m = NULL;
    mg_err_t rc = MG_OK;
    if (descriptor) {
        free(file);
        free(kind);
        free(name);
        free(version);
        rc = mg_slot_read_descriptor(descriptor, &file, &kind, &name, &version, &options,
                                     &warmup, err, sizeof(err));
    }
    if (rc == MG_OK)
        rc = mg_model_load(kind, file, name, version, options, &m, err, sizeof(err));
    double t_loaded = mono_ms();
    if (rc == MG_OK) {
        char werr[400];
        rc = warmup ? warm_with_samples(m, warmup, werr, sizeof(werr))
                    : mg_model_warmup(m, s->warmup_rounds, werr, sizeof(werr));
        if (rc != MG_OK) {
            snprintf(err, sizeof(err), "model '%s' (%s) loaded but refused: %s", file, kind,
                     werr);
            mg_model_unref(m);
            m = NULL;
        }
    }
    double t1 = mono_ms();
    mg_model_t *old = NULL;
    pthread_mutex_lock(&s->lock);
    s->stats.loading = false;
    if (m) {
        old = s->current;
        s->current = m; /* the swap: new requests take |m| from now on */
        s->stats.loads_ok++;
        s->stats.last_load_ms = t1 - t0;
        s->stats.last_switch_ms = t1 - t0;
    } else {
        s->stats.loads_failed++;
        s->stats.last_failure_ms = now_ms();
        snprintf(s->stats.last_error, sizeof(s->stats.last_error), "%s", err);
    }
    pthread_mutex_unlock(&s->lock);
    if (m)
        MG_LOG(MG_LOG_INFO, "slot",
               "serving model %s version %s (%s, %s, sha256 %.12s) after %.1f ms load + %.1f ms "
               "warm-up%s",
               m->name[0] ? m->name : "-", m->version[0] ? m->version : "-", m->kind->name,
               m->path, m->sha256, t_loaded - t0, t1 - t_loaded,
               old ? "; the previous model is freed when its last request ends" : "");
    else
        MG_LOG(MG_LOG_ERROR, "slot", "%s: %s",
               old || s->current ? "model switch refused; the previous model keeps serving"
                                 : "model load refused; no model serves yet (/readyz answers 503)",
               err);
    mg_model_unref(old); /* freed now, or by the last request that still holds it */
    free(descriptor);
    free(file);
    free(kind);
    free(name);
    free(version);
    free(options);
    json_decref(warmup);
}

static void *loader_main(void *arg)
{
    mg_slot_t *s = arg;
    /* loads compete with inference for the CPU: let inference win */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        /* copies: mg_slot_switch_to may replace the source while the lock is released */
        char *desc = dup_or_null(s->descriptor), *fpath = dup_or_null(s->file);
        pthread_mutex_unlock(&s->lock);
        ident_t d = ident_of(desc);
        char *file = NULL, *kind = NULL, *name = NULL, *version = NULL, *options = NULL;
        json_t *warmup = NULL;
        if (desc) { /* the file the descriptor names now */
            char err[256];
            if (mg_slot_read_descriptor(desc, &file, &kind, &name, &version, &options, &warmup,
                                        err, sizeof(err)) == MG_OK) {
                free(fpath);
                fpath = file;
                file = NULL;
            }
        }
        ident_t f = ident_of(fpath);
        pthread_mutex_lock(&s->lock);
        free(desc);
        free(fpath);
        free(file);
        free(kind);
        free(name);
        free(version);
        free(options);
        json_decref(warmup);
        bool changed = !ident_eq(&d, &s->id_desc) || !ident_eq(&f, &s->id_file);
        if (s->reload || !s->tried || (changed && (d.present || f.present))) {
            s->reload = false;
            s->tried = true;
            s->id_desc = d;
            s->id_file = f;
            pthread_mutex_unlock(&s->lock);
            load_once(s);
            pthread_mutex_lock(&s->lock);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += s->watch_ms / 1000;
        until.tv_nsec += (long)(s->watch_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (!s->stop && !s->reload)
            pthread_cond_timedwait(&s->wake, &s->lock, &until);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void set_source(mg_slot_t *s, const mg_slot_source_t *src)
{
    free(s->descriptor);
    free(s->file);
    free(s->kind);
    free(s->name);
    free(s->version);
    s->descriptor = dup_or_null(src->descriptor);
    s->file = dup_or_null(src->file);
    s->kind = dup_or_null(src->kind);
    s->name = dup_or_null(src->name);
    s->version = dup_or_null(src->version);
}

mg_slot_t *mg_slot_new(const mg_slot_source_t *src, unsigned watch_ms, unsigned warmup_rounds)
{
    mg_slot_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    set_source(s, src);
    s->watch_ms = watch_ms ? watch_ms : 1000;
    s->warmup_rounds = warmup_rounds;
    return s;
}

mg_err_t mg_slot_start(mg_slot_t *s)
{
    if (pthread_create(&s->thread, NULL, loader_main, s) != 0)
        return MG_E_NOMEM;
    pthread_setname_np(s->thread, "mg-loader");
    s->started = true;
    return MG_OK;
}

mg_model_t *mg_slot_get(mg_slot_t *s)
{
    pthread_mutex_lock(&s->lock);
    mg_model_t *m = s->current ? mg_model_ref(s->current) : NULL;
    pthread_mutex_unlock(&s->lock);
    return m;
}

void mg_slot_reload(mg_slot_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->reload = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

void mg_slot_switch_to(mg_slot_t *s, const mg_slot_source_t *src)
{
    pthread_mutex_lock(&s->lock);
    set_source(s, src);
    s->reload = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

void mg_slot_stats(mg_slot_t *s, mg_slot_stats_t *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    pthread_mutex_unlock(&s->lock);
}

void mg_slot_free(mg_slot_t *s)
{
    if (s == NULL)
        return;
    if (s->started) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        /* a load stuck in a read (a hung network file system) would hold the exit for ever:
         * the process goes without it, and the slot stays, in use by that thread */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += STOP_WAIT_S;
        if (pthread_timedjoin_np(s->thread, NULL, &until) != 0) {
            MG_LOG(MG_LOG_WARN, "runtime",
                   "the model loader is still busy after %d s (a read that does not end: a "
                   "hung file system?); exiting without it",
                   STOP_WAIT_S);
            return;
        }
    }
    mg_model_unref(s->current);
    mg_slot_source_t none = {0};
    set_source(s, &none);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    free(s);
}
