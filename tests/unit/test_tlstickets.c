/*
 * tests/unit/test_tlstickets.c - session ticket keys that rotate: real OpenSSL handshakes, in
 * memory (a BIO pair), TLS 1.2 and 1.3.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/tlstickets.h"

typedef struct fx {
    EVP_PKEY *key;
    X509 *cert;
    SSL_CTX *client;
    mg_tls_tickets_t *tickets;
    int version; /* TLS1_2_VERSION or TLS1_3_VERSION */
} fx_t;

static X509 *self_signed(EVP_PKEY *key)
{
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"tickets", -1, -1, 0);
    X509_set_issuer_name(x, n);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    return x;
}

static int setup(void **state, int version)
{
    fx_t *f = test_calloc(1, sizeof(*f));
    f->version = version;
    f->key = EVP_EC_gen("P-256");
    assert_non_null(f->key);
    f->cert = self_signed(f->key);
    f->client = SSL_CTX_new(TLS_client_method());
    assert_non_null(f->client);
    SSL_CTX_set_min_proto_version(f->client, version);
    SSL_CTX_set_max_proto_version(f->client, version);
    f->tickets = mg_tls_tickets_new();
    assert_non_null(f->tickets);
    *state = f;
    return 0;
}

static int setup12(void **state)
{
    return setup(state, TLS1_2_VERSION);
}

static int setup13(void **state)
{
    return setup(state, TLS1_3_VERSION);
}

static int teardown(void **state)
{
    fx_t *f = *state;
    SSL_CTX_free(f->client);
    X509_free(f->cert);
    EVP_PKEY_free(f->key);
    mg_tls_tickets_free(f->tickets);
    test_free(f);
    return 0;
}

/* A server context as the gateway makes one: its ticket keys from |t| (NULL: OpenSSL's own). */
static SSL_CTX *server_ctx(fx_t *f, mg_tls_tickets_t *t)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate(ctx, f->cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, f->key), 1);
    if (t)
        assert_true(mg_tls_tickets_attach(t, ctx, 3600000));
    return ctx;
}

/* One handshake with |srv|, offering |sess| (may be NULL); returns whether it resumed. *next:
 * the session to offer next time (the new ticket), the caller frees it. */
static bool handshake(fx_t *f, SSL_CTX *srv, SSL_SESSION *sess, SSL_SESSION **next)
{
    SSL *s = SSL_new(srv), *c = SSL_new(f->client);
    BIO *bs, *bc;
    assert_int_equal(BIO_new_bio_pair(&bs, 0, &bc, 0), 1);
    SSL_set_bio(s, bs, bs);
    SSL_set_bio(c, bc, bc);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    if (sess)
        assert_int_equal(SSL_set_session(c, sess), 1);
    int rc = 0, rs = 0;
    for (int i = 0; i < 20 && (rc != 1 || rs != 1); i++) {
        if (rc != 1)
            rc = SSL_do_handshake(c);
        if (rs != 1)
            rs = SSL_do_handshake(s);
    }
    assert_int_equal(rc, 1);
    assert_int_equal(rs, 1);
    /* TLS 1.3 tickets come after the handshake: reading data takes them in */
    char b[4];
    assert_int_equal(SSL_write(s, "x", 1), 1);
    assert_int_equal(SSL_read(c, b, sizeof(b)), 1);
    bool reused = SSL_session_reused(c) == 1;
    *next = SSL_get1_session(c);
    assert_non_null(*next);
    /* closed as after close_notify: OpenSSL spoils the session of a connection cut short */
    SSL_set_shutdown(c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_set_shutdown(s, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(c);
    SSL_free(s);
    return reused;
}

/* A ticket resumes while its key is the current or the previous one (and the second case
 * issues a new ticket under the current key), and no longer two rotations after; a context
 * made later (a certificate reload) resumes the tickets of the one before. */
static void tickets_outlive_one_rotation_not_two(void **state)
{
    fx_t *f = *state;
    SSL_CTX *srv = server_ctx(f, f->tickets);
    SSL_SESSION *s0, *s1, *s2, *s3, *s4;
    assert_false(handshake(f, srv, NULL, &s0));
    assert_true(handshake(f, srv, s0, &s1)); /* current key */
    mg_tls_tickets_rotate(f->tickets);
    assert_true(handshake(f, srv, s1, &s2)); /* the previous key: renewed */
    mg_tls_tickets_rotate(f->tickets);
    assert_false(handshake(f, srv, s1, &s3)); /* its key is gone: a full handshake */
    SSL_CTX *reloaded = server_ctx(f, f->tickets);
    assert_true(handshake(f, reloaded, s2, &s4)); /* s2's key is the previous one now */
    SSL_SESSION_free(s4);
    SSL_CTX *plain = server_ctx(f, NULL); /* OpenSSL's own keys cannot read ours */
    assert_false(handshake(f, plain, s3, &s4));
    SSL_SESSION_free(s4);
    SSL_CTX_free(plain);
    SSL_CTX_free(reloaded);
    SSL_SESSION_free(s0);
    SSL_SESSION_free(s1);
    SSL_SESSION_free(s2);
    SSL_SESSION_free(s3);
    SSL_CTX_free(srv);
}

/* Keys from a file, as several gateways share them: a ticket one issued resumes on another;
 * after the file's owner rotates (a new key first, the old one second) the old tickets still
 * resume, and once the old key is dropped they do not. Sizes other than 80 to 320 by 80 are
 * refused and leave the keys. */
static void shared_keys_resume_on_every_gateway(void **state)
{
    fx_t *f = *state;
    unsigned char keys[2 * MG_TLS_TICKET_KEY_LEN];
    assert_int_equal(RAND_bytes(keys + MG_TLS_TICKET_KEY_LEN, MG_TLS_TICKET_KEY_LEN), 1);
    mg_tls_tickets_t *other = mg_tls_tickets_new();
    assert_non_null(other);
    assert_true(mg_tls_tickets_set(f->tickets, keys + MG_TLS_TICKET_KEY_LEN, 80));
    assert_true(mg_tls_tickets_set(other, keys + MG_TLS_TICKET_KEY_LEN, 80));
    SSL_CTX *a = server_ctx(f, f->tickets), *b = server_ctx(f, other);
    SSL_SESSION *s0, *s1, *s2, *s3;
    assert_false(handshake(f, a, NULL, &s0));
    assert_true(handshake(f, b, s0, &s1)); /* a's ticket, on b */
    assert_int_equal(RAND_bytes(keys, MG_TLS_TICKET_KEY_LEN), 1);
    assert_true(mg_tls_tickets_set(other, keys, sizeof(keys))); /* new key, then the old */
    assert_true(handshake(f, b, s0, &s2));
    assert_true(mg_tls_tickets_set(other, keys, 80)); /* the old one dropped */
    assert_false(handshake(f, b, s0, &s3));
    assert_false(mg_tls_tickets_set(other, keys, 79));
    assert_false(mg_tls_tickets_set(other, keys, 0));
    unsigned char five[5 * MG_TLS_TICKET_KEY_LEN] = {0};
    assert_false(mg_tls_tickets_set(other, five, sizeof(five)));
    SSL_SESSION_free(s0);
    SSL_SESSION_free(s1);
    SSL_SESSION_free(s2);
    SSL_SESSION_free(s3);
    SSL_CTX_free(a);
    SSL_CTX_free(b);
    mg_tls_tickets_free(other);
}

/* Before the first rotation only the one key made decrypts: a ticket made with keys of zero
 * bytes (what an unset slot holds) does not resume. */
static void no_ticket_from_an_empty_slot(void **state)
{
    fx_t *f = *state;
    static const unsigned char zeros[MG_TLS_TICKET_KEY_LEN];
    mg_tls_tickets_t *forger = mg_tls_tickets_new();
    assert_non_null(forger);
    assert_true(mg_tls_tickets_set(forger, zeros, sizeof(zeros)));
    SSL_CTX *forged = server_ctx(f, forger), *srv = server_ctx(f, f->tickets);
    SSL_SESSION *s0, *s1, *s2;
    assert_false(handshake(f, forged, NULL, &s0));
    assert_true(handshake(f, forged, s0, &s1)); /* the zero key works where it is the key */
    assert_false(handshake(f, srv, s0, &s2));
    SSL_SESSION_free(s0);
    SSL_SESSION_free(s1);
    SSL_SESSION_free(s2);
    SSL_CTX_free(forged);
    SSL_CTX_free(srv);
    mg_tls_tickets_free(forger);
}

/* Sessions last two rotation periods: the session timeout the contexts get. */
static void session_timeout_is_two_periods(void **state)
{
    fx_t *f = *state;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_true(mg_tls_tickets_attach(f->tickets, ctx, 3600000));
    assert_int_equal(SSL_CTX_get_timeout(ctx), 7200);
    assert_true(mg_tls_tickets_attach(f->tickets, ctx, 1500));
    assert_int_equal(SSL_CTX_get_timeout(ctx), 3);
    SSL_CTX_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(tickets_outlive_one_rotation_not_two, setup12, teardown),
        cmocka_unit_test_setup_teardown(tickets_outlive_one_rotation_not_two, setup13, teardown),
        cmocka_unit_test_setup_teardown(shared_keys_resume_on_every_gateway, setup12, teardown),
        cmocka_unit_test_setup_teardown(shared_keys_resume_on_every_gateway, setup13, teardown),
        cmocka_unit_test_setup_teardown(no_ticket_from_an_empty_slot, setup12, teardown),
        cmocka_unit_test_setup_teardown(no_ticket_from_an_empty_slot, setup13, teardown),
        cmocka_unit_test_setup_teardown(session_timeout_is_two_periods, setup13, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
