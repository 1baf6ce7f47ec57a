/*
 * gateway/dbrow.h - one access-log line (reqlog.h) turned into the values of one request_log row.
 *
 * The database thread (dblog.c) reads the spool back as JSON lines and binds each line's values
 * to a prepared INSERT. This module is the only parser it needs: a scanner for flat JSON
 * objects (string, number, true/false/null values), much cheaper than building a jansson tree
 * per line and looking every column up in it. It accepts any flat JSON object, in any key
 * order, so spools written by earlier versions replay as they are; unknown keys are skipped and
 * missing columns take the defaults below. Strings are unescaped in place (an escape is never
 * shorter than what it stands for), checked to be valid UTF-8 (a strict utf8mb4 server refuses
 * anything else) and cut to their column's length at a character boundary.
 *
 * Threading: none; pure functions. Ownership: the row points into the caller's line buffer.
 */
#ifndef MG_GATEWAY_DBROW_H
#define MG_GATEWAY_DBROW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* The columns after (id, time), in table order (conf/request_log.sql). */
enum {
    MG_DBROW_REQUEST_ID,
    MG_DBROW_CLIENT,
    MG_DBROW_PROTO,
    MG_DBROW_METHOD,
    MG_DBROW_HOST,
    MG_DBROW_PATH,
    MG_DBROW_APP,
    MG_DBROW_ENV,
    MG_DBROW_SERVICE,
    MG_DBROW_POD,
    MG_DBROW_STATUS,
    MG_DBROW_REQ_BYTES,
    MG_DBROW_RESP_BYTES,
    MG_DBROW_UPSTREAM_US,
    MG_DBROW_TOTAL_US,
    MG_DBROW_ERROR,
    MG_DBROW_FALLBACK,
    MG_DBROW_RETRIES,
    MG_DBROW_FEATURES,
    MG_DBROW_FEATURES_HASH,
    MG_DBROW_NCOLS
};

typedef enum mg_dbrow_type {
    MG_DBROW_STR,
    MG_DBROW_INT,
    MG_DBROW_UINT,
    MG_DBROW_BOOL
} mg_dbrow_type_t;

typedef struct mg_dbrow_col {
    const char *name;
    size_t namelen;
    mg_dbrow_type_t type;
    unsigned maxlen; /* characters, for strings */
    bool nullable;   /* numbers only: a missing or null value is NULL rather than 0 */
} mg_dbrow_col_t;

/* The column table, indexed by MG_DBROW_*. */
extern const mg_dbrow_col_t mg_dbrow_cols[MG_DBROW_NCOLS];

#define MG_DBROW_TIME_LEN 26

typedef struct mg_dbrow_val {
    const char *s; /* strings: the unescaped bytes (not NUL-terminated), or NULL for SQL NULL */
    size_t len;
    int64_t n; /* numbers and booleans */
    bool null; /* SQL NULL (strings: s == NULL too) */
} mg_dbrow_val_t;

typedef struct mg_dbrow {
    uint8_t id[16];   /* the record's id, decoded from its 32 hex digits */
    const char *time; /* MG_DBROW_TIME_LEN bytes "YYYY-MM-DD hh:mm:ss.uuuuuu", UTC, in the line */
    mg_dbrow_val_t v[MG_DBROW_NCOLS];
} mg_dbrow_t;

/*
 * Parses the JSON object in |line| (|len| bytes, no '\n' needed) into |row|, unescaping its
 * strings in place: |line| is modified and |row| points into it. Missing or null columns are
 * NULL (strings, upstream_us) or 0 (the other numbers); a value of the wrong type counts as
 * missing, a negative number in an unsigned column as 0. Returns MG_OK, or MG_E_PROTO when the
 * line is not a record: not a flat JSON object, a known key twice, invalid UTF-8, an integer
 * out of int64 range, or no valid "id" (32 lower-case hex digits) and "time".
 */
mg_err_t mg_dbrow_parse(char *line, size_t len, mg_dbrow_t *row);

/* Length of the longest prefix of |s| (|n| bytes of valid UTF-8) that ends on a character
 * boundary and holds at most |max_chars| characters and |max_bytes| bytes. */
size_t mg_dbrow_utf8_prefix(const char *s, size_t n, unsigned max_chars, size_t max_bytes);

#endif /* MG_GATEWAY_DBROW_H */
