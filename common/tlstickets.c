/*
 * common/tlstickets.c - TLS session ticket keys that rotate (see tlstickets.h).
 *
 * The tickets are made as OpenSSL makes its own: AES-256-CBC and HMAC-SHA256, a 16-byte key
 * name in front, through SSL_CTX_set_tlsext_ticket_key_evp_cb.
 */
#include "common/tlstickets.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/secretfile.h"

/* nginx's ssl_session_ticket_key layout, which a key file holds too */
typedef struct ticket_key {
    unsigned char name[16];
    unsigned char hmac[32];
    unsigned char aes[32];
} ticket_key_t;

struct mg_tls_tickets {
    EVP_CIPHER *cipher; /* AES-256-CBC, fetched once: see mg_tls_tickets_new */
    pthread_rwlock_t lock;
    ticket_key_t keys[MG_TLS_TICKET_KEYS_MAX]; /* keys[0] encrypts; all n decrypt */
    size_t n;
};

static int ex_index = -1; /* the SSL_CTX ex_data slot that points to the set */
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;

static void ex_init(void)
{
    ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static bool make_key(ticket_key_t *k)
{
    return RAND_bytes(k->name, sizeof(k->name)) == 1 &&
           RAND_priv_bytes(k->aes, sizeof(k->aes)) == 1 &&
           RAND_priv_bytes(k->hmac, sizeof(k->hmac)) == 1;
}

/* OpenSSL's ticket callback: |enc| 1 sets up a new ticket (name, IV, keys), 0 looks the
 * presented one's key up. Returns 1, 2 (decrypted with the previous key: issue a new ticket),
 * 0 (unknown key: full handshake) or -1 (error). */
static int on_ticket(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    mg_tls_tickets_t *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index);
    if (t == NULL)
        return -1;
    const EVP_CIPHER *cipher = t->cipher;
    int rv = 0;
    pthread_rwlock_rdlock(&t->lock);
    const ticket_key_t *k = NULL;
    if (enc) {
        k = &t->keys[0];
        memcpy(name, k->name, sizeof(k->name));
        rv = RAND_bytes(iv, EVP_CIPHER_get_iv_length(cipher)) == 1 ? 1 : -1;
    } else {
        for (size_t i = 0; i < t->n && k == NULL; i++)
            if (memcmp(name, t->keys[i].name, 16) == 0) {
                k = &t->keys[i];
                rv = i == 0 ? 1 : 2;
            }
    }
    if (k != NULL && rv > 0) {
        /* both copy the keys: the lock can go after them */
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_end(),
        };
        if (EVP_MAC_CTX_set_params(hctx, params) != 1 ||
            EVP_CipherInit_ex(cctx, cipher, NULL, k->aes, iv, enc) != 1)
            rv = -1;
    }
    pthread_rwlock_unlock(&t->lock);
    return rv;
}

mg_tls_tickets_t *mg_tls_tickets_new(void)
{
    pthread_once(&ex_once, ex_init);
    if (ex_index < 0)
        return NULL;
    mg_tls_tickets_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    /* Fetched here, once, on the main thread before any worker handshakes: EVP_aes_256_cbc()
     * is an implicit fetch at every ticket (a lock and a lookup in OpenSSL 3.0's code), and the
     * workers' first tickets would construct it at once. The HMAC and SHA-256 that libssl and
     * the MAC fetch by name per ticket are warmed in its cache too. (One LeakSanitizer report
     * of 96 bytes inside libcrypto pointed here; it was not reproduced, so that this removes
     * it is reasoning, not shown.) */
    t->cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    bool fetched = t->cipher && mac && md;
    EVP_MAC_free(mac);
    EVP_MD_free(md);
    if (!fetched) {
        EVP_CIPHER_free(t->cipher);
        free(t);
        return NULL;
    }
    /* a writer first: glibc's default lets a flood of handshakes hold a rotation back */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&t->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0) {
        EVP_CIPHER_free(t->cipher);
        free(t);
        return NULL;
    }
    if (!make_key(&t->keys[0])) {
        mg_tls_tickets_free(t);
        return NULL;
    }
    t->n = 1;
    return t;
}

void mg_tls_tickets_rotate(mg_tls_tickets_t *t)
{
    ticket_key_t k;
    if (!make_key(&k)) /* the current key stays: better than no tickets */
        return;
    pthread_rwlock_wrlock(&t->lock);
    t->keys[1] = t->keys[0]; /* the one before the previous is gone */
    t->keys[0] = k;
    t->n = 2;
    OPENSSL_cleanse(&t->keys[2], sizeof(t->keys) - 2 * sizeof(t->keys[0]));
    pthread_rwlock_unlock(&t->lock);
    OPENSSL_cleanse(&k, sizeof(k));
}

bool mg_tls_tickets_set(mg_tls_tickets_t *t, const unsigned char *bytes, size_t len)
{
    size_t n = len / MG_TLS_TICKET_KEY_LEN;
    if (len % MG_TLS_TICKET_KEY_LEN != 0 || n < 1 || n > MG_TLS_TICKET_KEYS_MAX)
        return false;
    _Static_assert(sizeof(ticket_key_t) == MG_TLS_TICKET_KEY_LEN, "a key is 80 bytes");
    pthread_rwlock_wrlock(&t->lock);
    OPENSSL_cleanse(t->keys, sizeof(t->keys));
    memcpy(t->keys, bytes, len);
    t->n = n;
    pthread_rwlock_unlock(&t->lock);
    return true;
}

bool mg_tls_tickets_attach(mg_tls_tickets_t *t, SSL_CTX *ctx, uint32_t rotate_ms)
{
    if (SSL_CTX_set_ex_data(ctx, ex_index, t) != 1 ||
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket) != 1)
        return false;
    if (rotate_ms > 0) { /* a session outlives its ticket's key by nothing */
        long s = (long)((2 * (uint64_t)rotate_ms + 999) / 1000);
        SSL_CTX_set_timeout(ctx, s);
    }
    return true;
}

void mg_tls_tickets_free(mg_tls_tickets_t *t)
{
    if (t == NULL)
        return;
    pthread_rwlock_destroy(&t->lock);
    OPENSSL_cleanse(t->keys, sizeof(t->keys));
    EVP_CIPHER_free(t->cipher);
    free(t);
}

size_t mg_tls_tickets_read_file(const char *path, unsigned char *buf, unsigned char digest[32],
                                char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "tls.ticket_key_file: cannot open \"%s\": %s", path, strerror(errno));
        return 0;
    }
    unsigned char extra;
    ssize_t n = mg_secretfile_read_upto(fd, buf, MG_TLS_TICKET_FILE_MAX);
    if (n == MG_TLS_TICKET_FILE_MAX)
        n = mg_secretfile_read_upto(fd, &extra, 1) == 1 ? n + 1 : n; /* one more: "too long" */
    int read_errno = errno;
    close(fd);
    size_t len = n > 0 ? (size_t)n : 0;
    if (n < 0) {
        snprintf(err, errlen, "tls.ticket_key_file: cannot read \"%s\": %s", path,
                 strerror(read_errno));
        return 0;
    }
    if (len == 0 || len % MG_TLS_TICKET_KEY_LEN != 0 || len > MG_TLS_TICKET_FILE_MAX) {
        bool over = len > MG_TLS_TICKET_FILE_MAX;
        snprintf(err, errlen,
                 "tls.ticket_key_file: \"%s\" has %s%zu bytes (expected 1 to %d keys of %d "
                 "bytes each: openssl rand %d > FILE)",
                 path, over ? "over " : "", over ? len - 1 : len, MG_TLS_TICKET_KEYS_MAX,
                 MG_TLS_TICKET_KEY_LEN, MG_TLS_TICKET_KEY_LEN);
        return 0;
    }
    EVP_Digest(buf, len, digest, NULL, EVP_sha256(), NULL);
    return len;
}
