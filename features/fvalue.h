/*
 * features/fvalue.h - one user's feature snapshot: the exact x-user-features text and its hash.
 *
 * A snapshot is immutable and reference-counted with atomic counts: the MariaDB threads build
 * it, the workers' caches and in-flight requests share it. The text is compact JSON with sorted
 * keys and ASCII only ({"profile":{"age":"31"},"recent":["i9","i7"]}; non-ASCII and DEL as \u00e9
 * and \u007f, lowercase hex, reals as jansson prints them (conf/README.md), i.e. what Python's
 * json.dumps(doc, sort_keys=True, separators=(",", ":")) prints except for reals), produced by one
 * function (mg_fval_from_json) from the normalized document, whichever store it came from, so the
 * same features always give the same bytes and the same hash.
 *
 * Hash: SipHash-2-4 with the 16-byte key "modelgate:featv1" over the exact text, written as 16
 * lowercase hex digits. A training pipeline recomputes it from the features it used to check
 * training/serving skew (the access log records it per request).
 *
 * Normalization (mg_fval_normalize) keeps the app's configured groups only: hash = a flat object
 * whose values become strings (numbers and booleans as their JSON text), list = an array of such
 * strings, at most max_items (a write with more is refused; a read keeps the first ones, the
 * newest, as Redis's LRANGE does), json = any value. A group whose
 * value is empty (mg_fval_is_empty: {} or [], whatever the group's type) is dropped: Redis
 * cannot store an empty hash or list, and features.c applies the same rule to what Redis holds
 * (a json key of "{}" or " [ ]"), so every store gives the same text.
 */
#ifndef MG_FEATURES_FVALUE_H
#define MG_FEATURES_FVALUE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "features/fconf.h"

typedef struct mg_fval {
    atomic_int _refs;
    size_t len;        /* strlen(text) */
    uint64_t hash64;   /* the same, as a number */
    char hash[17];     /* 16 hex digits */
    char text[];   /* NUL-terminated */
} mg_fval_t;

/* A snapshot of |len| bytes of |text| (copied) with one reference; NULL when out of memory. */
mg_fval_t *mg_fval_new(const char *text, size_t len);
/* A stand-in for features far over features.max_header_bytes that were not read (their |len|
 * bytes in the store): its text and hash are those of "", and only len > the cap counts (the
 * request goes on "too_large": the text is never sent). One reference; NULL when out of
 * memory. */
mg_fval_t *mg_fval_oversize(size_t len);
/* The snapshot of a normalized document (the canonical text); NULL when out of memory. */
mg_fval_t *mg_fval_from_json(const json_t *doc);

/* |v| (any JSON value) as the snapshot text prints it, malloc'd, its length in *|text_len|;
 * NULL when out of memory. */
char *mg_fval_canonical(const json_t *v, size_t *text_len);
void mg_fval_ref(mg_fval_t *v);
void mg_fval_unref(mg_fval_t *v); /* NULL is fine; frees at zero */

/* The hash of |len| bytes as 16 hex digits + NUL into |out|; returns it as a number. */
uint64_t mg_fval_hash(const char *text, size_t len, char out[17]);

/* True when |v|, a group's value, is empty: an object without members or an array without
 * elements. Such a group is left out of the snapshot, whichever store holds it; null, "", 0 and
 * false are values. Allocates nothing. */
bool mg_fval_is_empty(const json_t *v);

/*
 * Normalizes |doc| ({group: value}) for |app|. |strict| (writes): an unknown group, a wrong
 * type, a nested value or a list of more than max_items is an error (NULL, reason in |why|);
 * otherwise (reads of data written by others) such groups and values are skipped and lists
 * cut. Returns a new object (caller decrefs).
 */
json_t *mg_fval_normalize(const mg_fapp_t *app, const json_t *doc, bool strict, char *why,
                          size_t cap);

#endif /* MG_FEATURES_FVALUE_H */
