/*
 * common/proxyproto.h - the PROXY protocol header (HAProxy's, versions 1 and 2) that an L4
 * load balancer sends ahead of a connection's bytes to say whose connection it relays.
 *
 * Behind such a load balancer every client connection comes from the load balancer's address;
 * the header carries the client's. Only the source address and port are used. Version 2's
 * LOCAL command (the load balancer's own health checks) and version 1's UNKNOWN keep the
 * connection's own address. Anything else that is not a well-formed header is refused: a
 * listener that expects the header must never take a client's bytes for one, nor serve a
 * connection without it.
 */
#ifndef MG_COMMON_PROXYPROTO_H
#define MG_COMMON_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>

#define MG_PROXYPROTO_MAX 536 /* bytes to look at: v1's 107, v2's 16 + 36 of addresses */

typedef enum {
    MG_PROXYPROTO_MORE = 0,     /* a header's start: wait for more bytes */
    MG_PROXYPROTO_DONE = 1,     /* a whole header */
    MG_PROXYPROTO_INVALID = -1, /* not one, or one this does not take */
} mg_proxyproto_result_t;

typedef struct mg_proxyproto {
    size_t len;    /* the header's bytes, to consume before the connection's own; for version
                    * 2 this counts the TLVs after the addresses, which may not have come yet */
    int has_addr;  /* 0: LOCAL or UNKNOWN, keep the connection's address */
    int family;    /* AF_INET or AF_INET6 */
    char ip[48];   /* the client's address, as inet_ntop writes it */
    uint16_t port; /* the client's port */
} mg_proxyproto_t;

/* Reads the header at the start of |p| (|n| bytes received so far). */
mg_proxyproto_result_t mg_proxyproto_parse(const uint8_t *p, size_t n, mg_proxyproto_t *out);

#endif
