/*
 * common/tlstickets.h - TLS session ticket keys that rotate.
 *
 * A session ticket is the session's secrets, encrypted with the server's ticket key and kept by
 * the client. OpenSSL makes one key per SSL_CTX and keeps it for the process's life: whoever
 * reads that key from a gateway's memory one day can decrypt every ticket recorded since it
 * started, and so every TLS 1.2 session resumed with one (TLS 1.3 resumptions add a fresh key
 * exchange, which keeps theirs). nghttpx makes a new key every hour and keeps the previous
 * ones for a while; this does the same. One set of keys serves every context of the process
 * (the certificate reload makes new contexts), so tickets outlive a reload.
 *
 * Keys: the current one encrypts new tickets; it and the one before it decrypt. A ticket
 * decrypted with the one before is replaced by a new one in the same handshake (OpenSSL's
 * renewal). mg_tls_tickets_attach also sets the contexts' session timeout to two periods. So
 * a TLS 1.3 client that comes back at least once per period keeps resuming (each resumption
 * is a new session), while a TLS 1.2 session lasts at most two periods from its full handshake:
 * a renewed TLS 1.2 ticket keeps the session's start time. Either way no ticket outlives the
 * key after the next.
 * Keys may come from a file instead (mg_tls_tickets_set), shared by several gateways; whoever
 * writes the file rotates them then.
 *
 * Threads: workers' handshakes read the keys (a read lock each, only on handshakes that issue
 * or present a ticket); the main thread rotates them.
 */
#ifndef MG_COMMON_TLSTICKETS_H
#define MG_COMMON_TLSTICKETS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct mg_tls_tickets mg_tls_tickets_t;

#define MG_TLS_TICKET_KEY_LEN 80 /* name 16, HMAC key 32, AES key 32: nginx's key file layout */
#define MG_TLS_TICKET_KEYS_MAX 4
#define MG_TLS_TICKET_FILE_MAX (MG_TLS_TICKET_KEYS_MAX * MG_TLS_TICKET_KEY_LEN)

/* Reads a ticket key file (tls.ticket_key_file) into |buf| (MG_TLS_TICKET_FILE_MAX bytes) and
 * its SHA-256 into |digest|: returns its length, or 0 with |err| saying what is wrong (cannot
 * open, cannot read, or a size that is not 1 to 4 keys). The caller wipes |buf|. */
size_t mg_tls_tickets_read_file(const char *path, unsigned char *buf, unsigned char digest[32],
                                char *err, size_t errlen);

/* A first key, made now; NULL when out of memory or randomness. */
mg_tls_tickets_t *mg_tls_tickets_new(void);

/* Makes a new current key; the current one becomes the previous one, and any other is wiped. */
void mg_tls_tickets_rotate(mg_tls_tickets_t *t);

/* Replaces the keys with |len| / 80 keys (1 to 4) laid out as nginx's ticket key files: the
 * first encrypts, every one decrypts. For gateways that share keys (a file every replica
 * reads), so that a client resumes on whichever replica it reaches. False when |len| is not a
 * multiple of 80 in 80-320; the keys then stay. */
bool mg_tls_tickets_set(mg_tls_tickets_t *t, const unsigned char *bytes, size_t len);

/* |ctx| takes its ticket keys from |t| from now on (|t| must outlive |ctx|), and keeps sessions
 * for two periods of |rotate_ms|. Returns false when OpenSSL refuses the callback. */
bool mg_tls_tickets_attach(mg_tls_tickets_t *t, SSL_CTX *ctx, uint32_t rotate_ms);

/* Wipes the keys and frees |t| (NULL is fine), after every context using it is gone. */
void mg_tls_tickets_free(mg_tls_tickets_t *t);

#endif
