/*
 * backends/runtime/slot.h - the model a runtime serves, and switching it in-process.
 *
 * A slot owns the current model and a loader thread. Loading, warming up and hashing run on
 * that thread (at a lower CPU priority), never on the event loop or the inference workers, so
 * serving goes on at full speed while a new model loads beside the old one. When the new model
 * answered its warm-up it is swapped in under a mutex held for two pointer moves; requests that
 * hold the old model (mg_slot_get took a reference) finish on it, and it is freed when the last
 * one ends. A model that fails to load or to warm up is refused: the old one keeps serving and
 * the failure is logged and kept for /v1/status and /metrics.
 *
 * What to load comes from a source: a model file and kind given on the command line, or a
 * descriptor JSON file ({"file", "kind", "name", "version", "options", "warmup"}). The loader
 * re-checks the source every |watch_ms| (stat of the descriptor and of the model file it names,
 * following symlinks) and switches when either changed; mg_slot_reload (SIGHUP) switches now.
 * A later driver (the model registry) can call mg_slot_switch_to with its own source.
 *
 * Thread-safety: every function may be called from any thread.
 */
#ifndef MG_BACKENDS_RUNTIME_SLOT_H
#define MG_BACKENDS_RUNTIME_SLOT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "backends/runtime/model.h"
#include "common/err.h"

typedef struct mg_slot mg_slot_t;

typedef struct mg_slot_source {
    const char *descriptor; /* path of a descriptor JSON, or NULL */
    const char *file;       /* without descriptor: the model file */
    const char *kind;       /* without descriptor: its kind */
    const char *name;       /* without descriptor: reported name/version (may be NULL) */
    const char *version;
} mg_slot_source_t;

typedef struct mg_slot_stats {
    bool loading;            /* a load is in progress */
    uint64_t loads_ok, loads_failed;
    double last_load_ms;     /* load + warm-up of the last successful switch */
    double last_switch_ms;   /* from the decision to load until the swap */
    int64_t last_failure_ms; /* Unix ms of the last failure, 0 = none */
    char last_error[512];    /* the last failure's message, "" = none */
} mg_slot_stats_t;

/* Creates a slot; copies |src|. |warmup_rounds| synthetic predictions run when the source gives
 * no warm-up samples. Nothing is loaded until mg_slot_start. */
mg_slot_t *mg_slot_new(const mg_slot_source_t *src, unsigned watch_ms, unsigned warmup_rounds);

/* Starts the loader thread, which loads the first model at once. */
mg_err_t mg_slot_start(mg_slot_t *s);

/* The current model with a reference (the caller unrefs it), or NULL before the first load. */
mg_model_t *mg_slot_get(mg_slot_t *s);

/* Asks the loader to load the source again now (SIGHUP). Async-signal-unsafe; cheap. */
void mg_slot_reload(mg_slot_t *s);

/* Replaces the source (a registry assignment) and loads it. Copies |src|. */
void mg_slot_switch_to(mg_slot_t *s, const mg_slot_source_t *src);

void mg_slot_stats(mg_slot_t *s, mg_slot_stats_t *out);

/* Stops the loader and drops the current model. */
void mg_slot_free(mg_slot_t *s);

/*
 * Reads a descriptor file. Returns MG_OK with the parts (malloc'ed strings, file resolved
 * relative to the descriptor's directory; *warmup an array of JSON inputs or NULL, options
 * text or NULL), or MG_E_CONFIG / MG_E_NOTFOUND with a message naming the path and the key.
 */
mg_err_t mg_slot_read_descriptor(const char *path, char **file, char **kind, char **name,
                                 char **version, char **options, json_t **warmup, char *err,
                                 size_t errlen);

#endif /* MG_BACKENDS_RUNTIME_SLOT_H */
