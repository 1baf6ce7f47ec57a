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
 * renewal), so a client that comes back at least once per period keeps resuming. A ticket is
 * accepted for one to two rotation periods after it was issued, then the client makes a full
 * handshake. mg_tls_tickets_attach also sets the contexts' session timeout to two periods.
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

/* A first key, made now; NULL when out of memory or randomness. */
mg_tls_tickets_t *mg_tls_tickets_new(void);

/* Makes a new current key; the key before the previous current one is wiped. */
void mg_tls_tickets_rotate(mg_tls_tickets_t *t);

/* |ctx| takes its ticket keys from |t| from now on (|t| must outlive |ctx|), and keeps sessions
 * for two periods of |rotate_ms|. Returns false when OpenSSL refuses the callback. */
bool mg_tls_tickets_attach(mg_tls_tickets_t *t, SSL_CTX *ctx, uint32_t rotate_ms);

/* Wipes the keys and frees |t| (NULL is fine), after every context using it is gone. */
void mg_tls_tickets_free(mg_tls_tickets_t *t);

#endif
