/*
 * common/listen.h - listening sockets for the gateway's and the runtime's workers.
 *
 * Every worker binds its own socket to the same address with SO_REUSEPORT and the kernel
 * spreads connections across them. Because SO_REUSEPORT would just as well let an unrelated
 * process (a second modelgate) share the port and silently take part of its traffic, the first
 * bind of an address is probed without the option: "address in use" is then an error.
 */
#ifndef MG_COMMON_LISTEN_H
#define MG_COMMON_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Returns a non-blocking, listening socket bound to |addr| ("host:port", "[v6]:port", or
 * ":port" for every address), or -1 with a message in |err| ("cannot listen on ADDR: Address
 * already in use (another process listens there)"). |first|: probe that no other socket holds
 * the address (the first worker's bind).
 */
int mg_listen_bind(const char *addr, bool first, char *err, size_t errlen);

struct sockaddr;
/* An IPv4 127/8 or IPv6 ::1 address (what only this machine reaches). */
bool mg_sockaddr_is_loopback(const struct sockaddr *sa);

/* Would listeners on |a| and |b| ("host:port") take the same address: the same one after
 * resolving, as mg_listen_bind does, or a wildcard and another on its port? Port 0 never. */
bool mg_listen_overlap(const char *a, const char *b);

#endif /* MG_COMMON_LISTEN_H */
