/*
 * gateway/realip.h - the client's address behind trusted proxies.
 *
 * Behind an HTTP load balancer (a cloud L7 balancer, a CDN, an nginx) every connection comes
 * from the balancer, which names the client in x-forwarded-for. That field is whatever the
 * client sent plus what each proxy appended, so only the entries appended by proxies the
 * operator trusts can be believed. As nginx's real_ip module with real_ip_recursive on: when
 * the connection's peer is trusted, the entries are walked from the right, past every trusted
 * address; the first one that is not trusted is the client. When all are trusted, the
 * leftmost is. Empty entries are skipped; an entry that is not an address ends the walk at
 * the last one taken.
 */
#ifndef MG_GATEWAY_REALIP_H
#define MG_GATEWAY_REALIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/h2server.h"

#define MG_REALIP_TEXT 48 /* an address as inet_ntop writes it, with its NUL */

/* A network: IPv4 addresses are held as IPv4-mapped IPv6 (::ffff:a.b.c.d), prefix + 96. An
 * IPv6 network never covers IPv4 addresses: "::/0" trusts every IPv6 peer, no IPv4 one. */
typedef struct mg_cidr {
    uint8_t addr[16]; /* host bits cleared */
    uint8_t bits;     /* prefix length over the 16 bytes */
    bool v4;          /* covers IPv4 addresses, and only those */
} mg_cidr_t;

/* "10.0.0.0/8", "2001:db8::/32", or one address ("192.0.2.1", "::1"). Host bits set past the
 * prefix are an error ("10.0.0.1/8"), as a typo for another network would otherwise widen
 * trust silently. MG_E_CONFIG with |*why| when it is not one. */
mg_err_t mg_cidr_parse(const char *s, mg_cidr_t *out, const char **why);

/* |len| bytes of |s| as an address into |out|: "a.b.c.d", an IPv6 address, "[v6]", and any
 * of them with ":port" ("a.b.c.d:port", "[v6]:port", port 1-65535), surrounding spaces
 * ignored. */
bool mg_ip_parse(const char *s, size_t len, uint8_t out[16]);

bool mg_cidr_match(const mg_cidr_t *nets, size_t n, const uint8_t ip[16]);

/*
 * The client of a request that came from |peer| (the connection's address, as mg_ip_parse
 * gives it) with fields |hdrs|, when |peer| is in one of |nets|: writes the client's address
 * into |out| and returns true. False when the peer is not trusted or x-forwarded-for names no
 * address (the peer is the client then).
 */
bool mg_realip(const mg_cidr_t *nets, size_t n, const uint8_t peer[16], const mg_hdr_t *hdrs,
               size_t nhdrs, char out[MG_REALIP_TEXT]);

#endif
