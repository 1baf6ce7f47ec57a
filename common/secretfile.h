/*
 * common/secretfile.h - one-line secret files: the admin token, the MariaDB and Redis passwords.
 *
 * Secrets never sit in gateway.json; a config key names a file that holds one. Every such file
 * follows one rule, checked here for all of them: it holds one line, the secret's bytes,
 * optionally followed by one final "\n" or "\r\n" (what editors and `echo` add). Anything else
 * is refused with a message naming the config key, the file and what is wrong, never repaired
 * or cut silently: an empty file, a second line (any other '\n' or '\r'), a control byte (below
 * 0x20, tab and NUL included, or 0x7f) anywhere, a secret longer than the caller's maximum.
 * Passwords may hold spaces (MariaDB and Redis accept them), but not control bytes either: such
 * a byte in a password file is almost always a mistake (a stray tab or escape from an editor, a
 * password pasted with its line break), and a login failing at run time because of it is much
 * harder to diagnose than a refusal at start-up. A token is sent by clients in a header
 * ("Authorization: Bearer ..."), which cannot carry spaces or tabs inside: a token with one
 * would answer 401 to everyone, so those are refused too.
 *
 * The file is read with read(2), not stdio, so no library buffer keeps a copy; the buffer is
 * wiped before it is freed on every error path. Blocking file I/O: call at start-up or reload,
 * never on an event loop.
 */
#ifndef MG_COMMON_SECRETFILE_H
#define MG_COMMON_SECRETFILE_H

#include <stddef.h>
#include <sys/types.h>

#include "common/err.h"

typedef enum mg_secret_kind {
    MG_SECRET_PASSWORD = 0, /* spaces allowed inside */
    MG_SECRET_TOKEN = 1,    /* sent in a header: no space inside either */
} mg_secret_kind_t;

/* Reads the secret in the file |path| into *out: a malloc'ed, NUL-terminated string of 1 to
 * |max| bytes (|max| >= 1), without its final newline. The caller owns it and frees it with
 * mg_secretfile_free. |key| is the config key naming the file ("admin.token_file"),
 * which starts the message; NULL when the caller's own prefix names it already.
 *
 * Returns MG_OK; MG_E_IO when the file cannot be opened or read; MG_E_CONFIG when it breaks the
 * rule above; MG_E_NOMEM. On error *out is NULL and |err| says what is wrong, e.g.
 * admin.token_file: "/etc/modelgate/admin.token" has more than one line (...). */
mg_err_t mg_secretfile_read(const char *path, const char *key, mg_secret_kind_t kind, size_t max,
                            char **out, char *err, size_t errlen);

/* Reads up to |cap| bytes of |fd| into |buf|, short reads and EINTR retried: fewer only at the
 * end of the file; -1 on error (errno set). For secret files of other shapes (binary keys). */
ssize_t mg_secretfile_read_upto(int fd, void *buf, size_t cap);

/* Wipes a secret mg_secretfile_read returned, then frees it. NULL is fine. */
void mg_secretfile_free(char *secret);

#endif /* MG_COMMON_SECRETFILE_H */
