/*
 * common/proxyproto.c - the PROXY protocol header (see proxyproto.h), after HAProxy's
 * specification (doc/proxy-protocol.txt).
 */
#include "common/proxyproto.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
#define V1_MAX 107 /* "PROXY TCP6 " + two addresses + two ports + "\r\n" */

/* Whether the |n| bytes of |p| could start |prefix| (or hold all of it). */
static bool starts(const uint8_t *p, size_t n, const void *prefix, size_t len)
{
    return memcmp(p, prefix, n < len ? n : len) == 0;
}

static bool parse_port(const char *s, uint16_t *port)
{
    if (*s == '\0' || strlen(s) > 5 || (s[0] == '0' && s[1] != '\0'))
        return false;
    unsigned v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (unsigned)(*s - '0');
    }
    if (v > 65535)
        return false;
    *port = (uint16_t)v;
    return true;
}

/* "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n", or "PROXY UNKNOWN ...\r\n". */
static mg_proxyproto_result_t parse_v1(const uint8_t *p, size_t n, mg_proxyproto_t *out)
{
    const uint8_t *crlf = NULL;
    for (size_t i = 0; i + 1 < n && i + 1 < V1_MAX; i++)
        if (p[i] == '\r' && p[i + 1] == '\n') {
            crlf = p + i;
            break;
        }
    if (crlf == NULL)
        return n >= V1_MAX ? MG_PROXYPROTO_INVALID : MG_PROXYPROTO_MORE;
    char line[V1_MAX];
    size_t len = (size_t)(crlf - p);
    memcpy(line, p, len);
    line[len] = '\0';
    out->len = len + 2;
    if (strncmp(line, "PROXY UNKNOWN", 13) == 0 && (line[13] == '\0' || line[13] == ' ')) {
        out->has_addr = 0;
        return MG_PROXYPROTO_DONE;
    }
    if (memchr(line, '\0', len) != NULL)
        return MG_PROXYPROTO_INVALID;
    /* six fields, one space between each (the specification's single spaces) */
    char *f[6], *q = line;
    int k = 0;
    for (;;) {
        if (k == 6)
            return MG_PROXYPROTO_INVALID; /* a seventh field, or a space at the end */
        f[k++] = q;
        char *sp = strchr(q, ' ');
        if (sp == NULL)
            break;
        *sp = '\0';
        q = sp + 1;
    }
    for (int i = 0; i < k; i++)
        if (f[i][0] == '\0')
            return MG_PROXYPROTO_INVALID;
    if (k != 6 || strcmp(f[0], "PROXY") != 0)
        return MG_PROXYPROTO_INVALID;
    int family = strcmp(f[1], "TCP4") == 0 ? AF_INET : strcmp(f[1], "TCP6") == 0 ? AF_INET6 : 0;
    unsigned char a[16];
    uint16_t dport;
    if (family == 0 || inet_pton(family, f[2], a) != 1 || inet_pton(family, f[3], a) != 1 ||
        !parse_port(f[4], &out->port) || !parse_port(f[5], &dport))
        return MG_PROXYPROTO_INVALID;
    /* the source address again, written as inet_ntop writes it */
    inet_pton(family, f[2], a);
    inet_ntop(family, a, out->ip, sizeof(out->ip));
    out->family = family;
    out->has_addr = 1;
    return MG_PROXYPROTO_DONE;
}

/* Done once the addresses have come: out->len then counts the TLVs after them too, which may
 * not have come yet (the caller drops them). */
static mg_proxyproto_result_t parse_v2(const uint8_t *p, size_t n, mg_proxyproto_t *out)
{
    if (n < 16)
        return MG_PROXYPROTO_MORE;
    uint8_t ver_cmd = p[12], fam = p[13];
    size_t len = 16 + ((size_t)p[14] << 8 | p[15]);
    if ((ver_cmd >> 4) != 2 || (ver_cmd & 0x0f) > 1)
        return MG_PROXYPROTO_INVALID;
    out->len = len;
    if ((ver_cmd & 0x0f) == 0) { /* LOCAL: the load balancer's own connection */
        out->has_addr = 0;
        return MG_PROXYPROTO_DONE;
    }
    size_t need = fam == 0x11 ? 12 : fam == 0x21 ? 36 : 0;
    if (need && len >= 16 + need && n < 16 + need)
        return MG_PROXYPROTO_MORE;
    if (fam == 0x11 && len >= 16 + 12) { /* TCP over IPv4: src, dst, src port, dst port */
        inet_ntop(AF_INET, p + 16, out->ip, sizeof(out->ip));
        out->port = (uint16_t)(p[24] << 8 | p[25]);
        out->family = AF_INET;
    } else if (fam == 0x21 && len >= 16 + 36) { /* TCP over IPv6 */
        inet_ntop(AF_INET6, p + 16, out->ip, sizeof(out->ip));
        out->port = (uint16_t)(p[48] << 8 | p[49]);
        out->family = AF_INET6;
    } else if (fam == 0x00) { /* UNSPEC: no address to take */
        out->has_addr = 0;
        return MG_PROXYPROTO_DONE;
    } else { /* UDP, UNIX sockets, or too short for its addresses */
        return MG_PROXYPROTO_INVALID;
    }
    out->has_addr = 1;
    return MG_PROXYPROTO_DONE;
}

mg_proxyproto_result_t mg_proxyproto_parse(const uint8_t *p, size_t n, mg_proxyproto_t *out)
{
    memset(out, 0, sizeof(*out));
    if (n == 0)
        return MG_PROXYPROTO_MORE;
    if (starts(p, n, v2_sig, sizeof(v2_sig)))
        return n < sizeof(v2_sig) ? MG_PROXYPROTO_MORE : parse_v2(p, n, out);
    if (starts(p, n, "PROXY ", 6))
        return n < 6 ? MG_PROXYPROTO_MORE : parse_v1(p, n, out);
    return MG_PROXYPROTO_INVALID;
}
