/*
 * common/err.h - the one error type of Modelgate.
 *
 * Every fallible function returns an mg_err_t: MG_OK (0) or a negative code. Messages for users
 * are logged where the error is detected (with the object and the fix); the code only tells the
 * caller what class of failure happened. HTTP statuses are mapped in mg_err_http_status() alone.
 */
#ifndef MG_COMMON_ERR_H
#define MG_COMMON_ERR_H

typedef enum mg_err {
    MG_OK = 0,
    MG_E_NOMEM = -1,    /* allocation failed or a per-stream limit was reached */
    MG_E_CONFIG = -2,   /* config rejected; details already logged with file:path */
    MG_E_IO = -3,       /* a system call on a file or socket failed */
    MG_E_TIMEOUT = -4,  /* a deadline passed */
    MG_E_UPSTREAM = -5, /* no healthy or working backend */
    MG_E_DENIED = -6,   /* not allowed */
    MG_E_LIMIT = -7,    /* a configured limit was exceeded */
    MG_E_PROTO = -8,    /* the peer broke the protocol */
    MG_E_AGAIN = -9,    /* would block; try later */
    MG_E_NOTFOUND = -10 /* no such route, file or object */
} mg_err_t;

/* Returns a static, human-readable description of |e|. */
const char *mg_strerror(mg_err_t e);

/* Returns the HTTP status that a request failing with |e| answers with. */
int mg_err_http_status(mg_err_t e);

#endif /* MG_COMMON_ERR_H */
