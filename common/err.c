#include "common/err.h"

const char *mg_strerror(mg_err_t e)
{
    switch (e) { /* no default: -Wswitch reports a code without a message */
    case MG_OK:
        return "success";
    case MG_E_NOMEM:
        return "out of memory or per-stream memory limit reached";
    case MG_E_CONFIG:
        return "configuration rejected";
    case MG_E_IO:
        return "input/output error";
    case MG_E_TIMEOUT:
        return "timed out";
    case MG_E_UPSTREAM:
        return "no working backend";
    case MG_E_DENIED:
        return "denied";
    case MG_E_LIMIT:
        return "limit exceeded";
    case MG_E_PROTO:
        return "protocol error";
    case MG_E_AGAIN:
        return "try again";
    case MG_E_NOTFOUND:
        return "not found";
    }
    return "unknown error";
}

int mg_err_http_status(mg_err_t e)
{
    switch (e) {
    case MG_OK:
        return 200;
    case MG_E_NOMEM:
    case MG_E_LIMIT:
        return 503;
    case MG_E_CONFIG:
    case MG_E_IO:
        return 500;
    case MG_E_TIMEOUT:
        return 504;
    case MG_E_UPSTREAM:
        return 502;
    case MG_E_DENIED:
        return 403;
    case MG_E_PROTO:
        return 400;
    case MG_E_AGAIN:
        return 503;
    case MG_E_NOTFOUND:
        return 404;
    }
    return 500;
}
