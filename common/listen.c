#include "common/listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Binds |ai| once without SO_REUSEPORT: fails when another process already listens there. */
static bool address_is_free(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    bool ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
              bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    errno = saved;
    return ok;
}

/* "host:port" or "[v6]:port" into host (no brackets) and port text. */
static bool split(const char *addr, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon;
    size_t hlen;
    if (addr[0] == '[') {
        const char *close_br = strchr(addr, ']');
        if (close_br == NULL || close_br[1] != ':')
            return false;
        hlen = (size_t)(close_br - addr - 1);
        colon = close_br + 1;
        addr++;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL)
            return false;
        hlen = (size_t)(colon - addr);
    }
    if (hlen >= hcap || strlen(colon + 1) == 0 || strlen(colon + 1) >= pcap)
        return false;
    memcpy(host, addr, hlen);
    host[hlen] = '\0';
    strcpy(port, colon + 1);
    return true;
}

/* What bind() gets for |host| ("" = every address) and |port|: getaddrinfo's answer. */
static int resolve(const char *host, const char *port, struct addrinfo **ai)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    return getaddrinfo(host[0] ? host : NULL, port, &hints, ai);
}

bool mg_sockaddr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return false;
}

int mg_listen_bind(const char *addr, bool first, char *err, size_t errlen)
{
    char host[256], port[16];
    if (!split(addr, host, sizeof(host), port, sizeof(port))) {
        snprintf(err, errlen, "listen address '%s': expected host:port or [v6]:port", addr);
        return -1;
    }
    /* getaddrinfo takes "99999" and binds port 99999 mod 65536: the process would listen
     * where nobody expects it, and say it listens on the address it was given */
    char *end;
    errno = 0;
    unsigned long pn = strtoul(port, &end, 10);
    if (port[0] < '0' || port[0] > '9' || *end != '\0' || errno != 0 || pn > 65535) {
        snprintf(err, errlen, "listen address '%s': port '%s' is not a number from 0 to 65535",
                 addr, port);
        return -1;
    }
    struct addrinfo *ai = NULL;
    int rc = resolve(host, port, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "listen address '%s': %s", addr, gai_strerror(rc));
        return -1;
    }
    if (first && !address_is_free(ai)) {
        snprintf(err, errlen, "cannot listen on %s: %s%s", addr, strerror(errno),
                 errno == EADDRINUSE ? " (another process listens there)" : "");
        freeaddrinfo(ai);
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

/* The address bind() would get for |addr|, as mg_listen_bind resolves it (the first result). */
static bool bind_addr(const char *addr, struct sockaddr_storage *out)
{
    char host[256], port[16];
    if (!split(addr, host, sizeof(host), port, sizeof(port)))
        return false;
    struct addrinfo *ai = NULL;
    if (resolve(host, port, &ai) != 0)
        return false;
    memcpy(out, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return true;
}

bool mg_listen_overlap(const char *a, const char *b)
{
    struct sockaddr_storage x, y;
    if (!bind_addr(a, &x) || !bind_addr(b, &y))
        return false;
    const struct sockaddr_in *x4 = (void *)&x, *y4 = (void *)&y;
    const struct sockaddr_in6 *x6 = (void *)&x, *y6 = (void *)&y;
    in_port_t px = x.ss_family == AF_INET ? x4->sin_port : x6->sin6_port;
    in_port_t py = y.ss_family == AF_INET ? y4->sin_port : y6->sin6_port;
    if (px != py || px == 0)
        return false;
    bool any_x = x.ss_family == AF_INET ? x4->sin_addr.s_addr == htonl(INADDR_ANY)
                                        : IN6_IS_ADDR_UNSPECIFIED(&x6->sin6_addr);
    bool any_y = y.ss_family == AF_INET ? y4->sin_addr.s_addr == htonl(INADDR_ANY)
                                        : IN6_IS_ADDR_UNSPECIFIED(&y6->sin6_addr);
    if (x.ss_family != y.ss_family) /* [::] takes IPv4 too (Linux's bindv6only 0) */
        return (x.ss_family == AF_INET6 && any_x) || (y.ss_family == AF_INET6 && any_y);
    if (any_x || any_y)
        return true;
    return x.ss_family == AF_INET ? x4->sin_addr.s_addr == y4->sin_addr.s_addr
                                  : memcmp(&x6->sin6_addr, &y6->sin6_addr, 16) == 0;
}
