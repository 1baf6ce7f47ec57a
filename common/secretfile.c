/*
 * common/secretfile.c - one-line secret files (see secretfile.h for the rule).
 */
#include "common/secretfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Writes "[key: ]" and the formatted problem (which names the file) to |err|; returns |e|. */
static mg_err_t errorf(mg_err_t e, char *err, size_t errlen, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static mg_err_t errorf(mg_err_t e, char *err, size_t errlen, const char *key, const char *fmt, ...)
{
    if (errlen == 0)
        return e;
    int n = key ? snprintf(err, errlen, "%s: ", key) : 0;
    size_t o = n < 0 ? 0 : (size_t)n < errlen ? (size_t)n : errlen - 1; /* a cut key: no room */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + o, errlen - o, fmt, ap);
    va_end(ap);
    return e;
}

ssize_t mg_secretfile_read_upto(int fd, void *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(fd, (char *)buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        n += (size_t)r;
    }
    return (ssize_t)n;
}

mg_err_t mg_secretfile_read(const char *path, const char *key, mg_secret_kind_t kind, size_t max,
                            char **out, char *err, size_t errlen)
{
    const bool token = kind == MG_SECRET_TOKEN;
    const char *what = token ? "token" : "password";
    /* the secret, "\r\n", and one byte more, which proves the file too long */
    const size_t cap = max + 3;
    mg_err_t rc;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return errorf(MG_E_IO, err, errlen, key, "cannot read \"%s\" (%s)", path, strerror(errno));
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return errorf(MG_E_NOMEM, err, errlen, key, "\"%s\": out of memory", path);
    }
    ssize_t got = mg_secretfile_read_upto(fd, buf, cap);
    int read_errno = errno;
    close(fd);
    if (got < 0) {
        rc = errorf(MG_E_IO, err, errlen, key, "cannot read \"%s\" (%s)", path,
                    strerror(read_errno));
        goto fail;
    }
    size_t n = (size_t)got, len = n;
    if (n < cap && len > 0 && buf[len - 1] == '\n') { /* the whole file: drop its final newline */
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0) {
        rc = errorf(MG_E_CONFIG, err, errlen, key,
                    "\"%s\" is empty (expected one line with the %s)", path, what);
        goto fail;
    }
    /* within |max| only: past it the file is too long, wherever its newline is */
    for (size_t i = 0; i < len && i < max; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\n' || c == '\r') {
            rc = errorf(MG_E_CONFIG, err, errlen, key,
                        "\"%s\" has more than one line (byte 0x%02x at offset %zu; expected one "
                        "line with the %s)",
                        path, c, i, what);
            goto fail;
        }
        if (c < 0x20 || c == 0x7f || (token && c == ' ')) {
            rc = errorf(MG_E_CONFIG, err, errlen, key,
                        "\"%s\": expected one line with the %s, without %s (found byte 0x%02x at "
                        "offset %zu)",
                        path, what, token ? "spaces or control characters" : "control characters",
                        c, i);
            goto fail;
        }
    }
    if (len > max) {
        rc = errorf(MG_E_CONFIG, err, errlen, key,
                    "\"%s\" is longer than %zu bytes (the longest %s accepted)", path, max, what);
        goto fail;
    }
    buf[len] = '\0';
    *out = buf;
    return MG_OK;
fail:
    explicit_bzero(buf, cap);
    free(buf);
    return rc;
}

void mg_secretfile_free(char *secret)
{
    if (secret != NULL)
        explicit_bzero(secret, strlen(secret));
    free(secret);
}
