/*
 * common/jsonerr.h - the errors found in a JSON document being checked: "SOURCE: json.path:
 * problem" lines, all of them, in document order, so that an operator fixes a file in one go.
 *
 * The checker walks the document and keeps the path of the value it looks at: each push
 * returns the length to restore with mg_jerr_pop. Values quoted in messages are escaped (they
 * come from operators' files, and fuzzers, and end up on terminals) and cut.
 */
#ifndef MG_COMMON_JSONERR_H
#define MG_COMMON_JSONERR_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

typedef struct mg_jerr {
    const char *source; /* the file, flag or document the lines start with */
    char *buf;          /* '\n'-separated lines, no trailing newline; the caller frees it */
    size_t len, cap;
    size_t count;     /* problems found */
    bool nomem;       /* an allocation failed: the result is "out of memory", whatever else */
    size_t quote_max; /* bytes of a value quoted in a type error before "..." (0: 80) */
    char path[512];
    size_t plen; /* strlen(path), always */
} mg_jerr_t;

/* json_load_file with duplicate keys refused, and a directory named as a directory (jansson
 * reads one as an empty file: "'[' or '{' expected near end of file"). */
json_t *mg_json_load_file(const char *path, json_error_t *err);

/* One problem at the current path: "source: path: message" (no path at the root). */
void mg_jerr_f(mg_jerr_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One problem already formatted (possibly several lines), as it is. */
void mg_jerr_text(mg_jerr_t *e, const char *text);

/* Appends ".key" ("key" at the root), "[i]" or any text to the path; each returns the length
 * that mg_jerr_pop restores. */
size_t mg_jerr_key(mg_jerr_t *e, const char *key);
size_t mg_jerr_index(mg_jerr_t *e, size_t i);
size_t mg_jerr_push(mg_jerr_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mg_jerr_pop(mg_jerr_t *e, size_t len);

/* "wrong type (got <what |v| is>; expected <expected>)" at the current path. */
void mg_jerr_type(mg_jerr_t *e, const json_t *v, const char *expected);
/* Every key of |obj| not in the NULL-terminated |keys| is a problem, listing the valid ones. */
void mg_jerr_keys(mg_jerr_t *e, const json_t *obj, const char *const *keys);
/* |obj|.|key| into |out| when present: true or false, else a problem; absent leaves |out|. */
void mg_jerr_bool(mg_jerr_t *e, const json_t *obj, const char *key, bool *out);

/* |s| into |dst| with control characters, quotes and backslashes escaped, cut after |max|
 * input bytes with "..."; returns |dst|. */
const char *mg_jerr_esc(char *dst, size_t cap, const char *s, size_t max);

#endif
