/* tests/unit/test_secretfile.c - the one rule for one-line secret files (common/secretfile.h). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/secretfile.h"

#define PW MG_SECRET_PASSWORD
#define TOKEN MG_SECRET_TOKEN

/* Each test gets a fresh temp directory with one file, "secret", rewritten by put(). */
typedef struct fx {
    char dir[64];
    char path[96];
    char err[512];
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/test_secretfile_XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/secret", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Writes exactly |len| bytes (NULs included) to the file. */
static void put(fx_t *f, const char *bytes, size_t len)
{
    FILE *fp = fopen(f->path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bytes, 1, len, fp), len);
    fclose(fp);
}
#define PUT(f, lit) put((f), (lit), sizeof(lit) - 1)

/* The file holds |want| as a secret of kind |kind| with maximum |max|. */
static void read_ok(fx_t *f, mg_secret_kind_t kind, size_t max, const char *want)
{
    char *got = (char *)"untouched";
    f->err[0] = '\0';
    mg_err_t e = mg_secretfile_read(f->path, "test.key", kind, max, &got, f->err, sizeof(f->err));
    if (e != MG_OK)
        fail_msg("expected \"%s\", got error %d: %s", want, e, f->err);
    assert_string_equal(got, want);
    assert_string_equal(f->err, "");
    mg_secretfile_free(got);
}

/* The file is refused with |code|; returns the message (in f->err). */
static const char *read_fail(fx_t *f, mg_secret_kind_t kind, size_t max, mg_err_t code)
{
    char *got = (char *)"untouched";
    mg_err_t e = mg_secretfile_read(f->path, "test.key", kind, max, &got, f->err, sizeof(f->err));
    if (e == MG_OK)
        fail_msg("expected error %d, got the secret \"%s\"", code, got);
    assert_int_equal(e, code);
    assert_null(got);
    return f->err;
}

/* The file holding the bytes of literal |lit| is refused (MG_E_CONFIG) for a secret of |kind|
 * and maximum |max|, with |needle| in the message. */
#define REFUSED(f, lit, kind, max, needle)                                                         \
    do {                                                                                           \
        PUT((f), lit);                                                                             \
        const char *msg_ = read_fail((f), (kind), (max), MG_E_CONFIG);                             \
        if (strstr(msg_, (needle)) == NULL)                                                        \
            fail_msg("\"%s\" not in \"%s\"", (needle), msg_);                                      \
    } while (0)

/* |msg| is "test.key: \"<path>\"" followed by |rest|. */
static void assert_msg(fx_t *f, const char *msg, const char *rest)
{
    char want[512];
    snprintf(want, sizeof(want), "test.key: \"%s\"%s", f->path, rest);
    assert_string_equal(msg, want);
}

static void one_line_with_or_without_final_newline(void **state)
{
    fx_t *f = *state;
    PUT(f, "s3cret");
    read_ok(f, PW, 64, "s3cret");
    PUT(f, "s3cret\n");
    read_ok(f, PW, 64, "s3cret");
    PUT(f, "s3cret\r\n");
    read_ok(f, PW, 64, "s3cret");
    read_ok(f, TOKEN, 64, "s3cret");
}

static void empty_is_refused(void **state)
{
    fx_t *f = *state;
    PUT(f, "");
    assert_msg(f, read_fail(f, PW, 64, MG_E_CONFIG),
               " is empty (expected one line with the password)");
    PUT(f, "\n");
    assert_msg(f, read_fail(f, TOKEN, 64, MG_E_CONFIG),
               " is empty (expected one line with the token)");
    PUT(f, "\r\n");
    read_fail(f, PW, 64, MG_E_CONFIG);
    assert_non_null(strstr(f->err, "is empty"));
}

/* The old request-log reader took the first line of these and dropped the rest. */
static void second_line_is_refused(void **state)
{
    fx_t *f = *state;
    PUT(f, "pass\nsecond");
    assert_msg(f, read_fail(f, PW, 64, MG_E_CONFIG),
               " has more than one line (byte 0x0a at offset 4; expected one line with the "
               "password)");
    REFUSED(f, "pass\nsecond\n", PW, 64, "more than one line");
    /* one newline too many: a blank second line */
    REFUSED(f, "pass\n\n", PW, 64, "byte 0x0a at offset 4");
    REFUSED(f, "pass\r\nsecond\r\n", PW, 64, "byte 0x0d at offset 4");
    /* a blank first line is no password either */
    REFUSED(f, "\nsecond\n", TOKEN, 64, "byte 0x0a at offset 0");
}

static void carriage_return_inside_or_alone_at_the_end_is_refused(void **state)
{
    fx_t *f = *state;
    PUT(f, "pa\rss\n");
    assert_msg(f, read_fail(f, PW, 64, MG_E_CONFIG),
               " has more than one line (byte 0x0d at offset 2; expected one line with the "
               "password)");
    /* only "\n" and "\r\n" end the line */
    REFUSED(f, "pass\r", PW, 64, "byte 0x0d at offset 4");
    REFUSED(f, "pass\r\r\n", PW, 64, "byte 0x0d at offset 4");
}

static void nul_and_control_bytes_are_refused(void **state)
{
    fx_t *f = *state;
    PUT(f, "pa\0ss\n");
    assert_msg(f, read_fail(f, PW, 64, MG_E_CONFIG),
               ": expected one line with the password, without control characters (found byte "
               "0x00 at offset 2)");
    REFUSED(f, "pass\0", PW, 64, "byte 0x00 at offset 4");
    REFUSED(f, "pa\tss\n", PW, 64, "byte 0x09 at offset 2");
    REFUSED(f, "pa\x1bss\n", PW, 64, "byte 0x1b at offset 2");
    REFUSED(f, "pass\x7f\n", PW, 64, "byte 0x7f at offset 4");
    REFUSED(f, "pa\tss\n", TOKEN, 64, "byte 0x09 at offset 2");
}

static void longer_than_the_maximum_is_refused_not_cut(void **state)
{
    fx_t *f = *state;
    PUT(f, "12345678");
    read_ok(f, PW, 8, "12345678");
    PUT(f, "12345678\r\n"); /* the newline does not count */
    read_ok(f, PW, 8, "12345678");
    PUT(f, "123456789");
    assert_msg(f, read_fail(f, PW, 8, MG_E_CONFIG),
               " is longer than 8 bytes (the longest password accepted)");
    PUT(f, "123456789\n");
    read_fail(f, TOKEN, 8, MG_E_CONFIG);
    assert_non_null(strstr(f->err, "is longer than 8 bytes (the longest token accepted)"));
    /* its newline lies past what fits: still too long, one line */
    REFUSED(f, "1234567890\r\n", PW, 8, "longer than 8 bytes");
    REFUSED(f, "123456789\nsecond\n", PW, 8, "longer than 8 bytes");

    /* far longer than what is read: still one message, about the length or the second line */
    size_t n = 100000;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'x', n);
    put(f, big, n);
    assert_non_null(strstr(read_fail(f, PW, 1023, MG_E_CONFIG), "longer than 1023 bytes"));
    memcpy(big, "pass\n", 5);
    put(f, big, n);
    assert_non_null(strstr(read_fail(f, PW, 8, MG_E_CONFIG), "more than one line"));
    free(big);
}

/* MariaDB and Redis passwords may hold spaces; a token travels in a header and may not. */
static void spaces_allowed_in_passwords_refused_in_tokens(void **state)
{
    fx_t *f = *state;
    PUT(f, "correct horse battery staple\n");
    read_ok(f, PW, 64, "correct horse battery staple");
    assert_msg(f, read_fail(f, TOKEN, 64, MG_E_CONFIG),
               ": expected one line with the token, without spaces or control characters (found "
               "byte 0x20 at offset 7)");
    PUT(f, " lead and trail \n"); /* kept as they are: never trimmed */
    read_ok(f, PW, 64, " lead and trail ");
    assert_non_null(strstr(read_fail(f, TOKEN, 64, MG_E_CONFIG), "byte 0x20 at offset 0"));
    REFUSED(f, "s3cret \n", TOKEN, 64, "byte 0x20 at offset 6");
    PUT(f, "s3cret-Token_1.2~+/=\n"); /* RFC 6750 b64token characters */
    read_ok(f, TOKEN, 64, "s3cret-Token_1.2~+/=");
}

static void missing_file_names_the_file_and_the_reason(void **state)
{
    fx_t *f = *state;
    char *got = (char *)"untouched";
    mg_err_t e =
        mg_secretfile_read(f->path, "admin.token_file", TOKEN, 64, &got, f->err, sizeof(f->err));
    assert_int_equal(e, MG_E_IO);
    assert_null(got);
    char want[512];
    snprintf(want, sizeof(want), "admin.token_file: cannot read \"%s\" (%s)", f->path,
             strerror(ENOENT));
    assert_string_equal(f->err, want);

    /* a directory opens but cannot be read */
    e = mg_secretfile_read(f->dir, "admin.token_file", TOKEN, 64, &got, f->err, sizeof(f->err));
    assert_int_equal(e, MG_E_IO);
    snprintf(want, sizeof(want), "admin.token_file: cannot read \"%s\" (%s)", f->dir,
             strerror(EISDIR));
    assert_string_equal(f->err, want);
}

/* Without a key (the caller's prefix names it) the message starts with the file; a short
 * buffer gets a cut, terminated message. */
static void message_without_key_and_in_a_short_buffer(void **state)
{
    fx_t *f = *state;
    char *got = NULL;
    PUT(f, "a\nb\n");
    assert_int_equal(mg_secretfile_read(f->path, NULL, PW, 64, &got, f->err, sizeof(f->err)),
                     MG_E_CONFIG);
    char want[512];
    snprintf(want, sizeof(want),
             "\"%s\" has more than one line (byte 0x0a at offset 1; expected one line with the "
             "password)",
             f->path);
    assert_string_equal(f->err, want);

    char small[12];
    memset(small, 'Z', sizeof(small));
    assert_int_equal(mg_secretfile_read(f->path, "test.key", PW, 64, &got, small, 8), MG_E_CONFIG);
    assert_string_equal(small, "test.ke");
    assert_int_equal(small[8], 'Z');
    assert_int_equal(mg_secretfile_read(f->path, "test.key", PW, 64, &got, small, 0), MG_E_CONFIG);
    assert_null(got);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(one_line_with_or_without_final_newline),
        T(empty_is_refused),
        T(second_line_is_refused),
        T(carriage_return_inside_or_alone_at_the_end_is_refused),
        T(nul_and_control_bytes_are_refused),
        T(longer_than_the_maximum_is_refused_not_cut),
        T(spaces_allowed_in_passwords_refused_in_tokens),
        T(missing_file_names_the_file_and_the_reason),
        T(message_without_key_and_in_a_short_buffer),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
