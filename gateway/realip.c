/*
 * gateway/realip.c - the client's address behind trusted proxies (see realip.h).
 */
#include "gateway/realip.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* |s| (NUL-terminated) as an IPv4 or IPv6 address; true when it is one. */
static bool parse_plain(const char *s, uint8_t out[16], bool *v4)
{
    struct in_addr a4;
    if (inet_pton(AF_INET, s, &a4) == 1) {
        memcpy(out, V4_MAPPED, 12);
        memcpy(out + 12, &a4, 4);
        *v4 = true;
        return true;
    }
    *v4 = false;
    return inet_pton(AF_INET6, s, out) == 1;
}

static bool is_port(const char *s, size_t n)
{
    if (n == 0 || n > 5)
        return false;
    unsigned port = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        port = port * 10 + (unsigned)(s[i] - '0');
    }
    return port >= 1 && port <= 65535;
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t')
            return false;
    return true;
}

static bool is_v4(const uint8_t ip[16])
{
    return memcmp(ip, V4_MAPPED, 12) == 0;
}

bool mg_ip_parse(const char *s, size_t len, uint8_t out[16])
{
    while (len && (*s == ' ' || *s == '\t'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    char buf[64];
    bool v4;
    if (len && s[0] == '[') { /* "[v6]" or "[v6]:port" */
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return false;
        size_t in = (size_t)(close - s - 1), rest = len - in - 2;
        if (in >= sizeof(buf) || (rest && (close[1] != ':' || !is_port(close + 2, rest - 1))))
            return false;
        memcpy(buf, s + 1, in);
        buf[in] = '\0';
        return parse_plain(buf, out, &v4) && !v4;
    }
    if (len >= sizeof(buf))
        return false;
    const char *colon = memchr(s, ':', len);
    if (colon && memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) == NULL) {
        /* one colon: "a.b.c.d:port" */
        if (!is_port(colon + 1, len - (size_t)(colon - s) - 1))
            return false;
        len = (size_t)(colon - s);
        memcpy(buf, s, len);
        buf[len] = '\0';
        return parse_plain(buf, out, &v4) && v4;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    return parse_plain(buf, out, &v4);
}

mg_err_t mg_cidr_parse(const char *s, mg_cidr_t *out, const char **why)
{
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    char buf[64];
    bool v4;
    if (alen == 0 || alen >= sizeof(buf)) {
        *why = "not an address";
        return MG_E_CONFIG;
    }
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    if (!parse_plain(buf, out->addr, &v4)) {
        *why = "not an IPv4 or IPv6 address";
        return MG_E_CONFIG;
    }
    unsigned max = v4 ? 32 : 128, bits = max;
    if (slash) {
        char *end;
        unsigned long b = strtoul(slash + 1, &end, 10);
        if (slash[1] < '0' || slash[1] > '9' || *end != '\0' || b > max) {
            *why = v4 ? "prefix length must be 0-32" : "prefix length must be 0-128";
            return MG_E_CONFIG;
        }
        bits = (unsigned)b;
    }
    out->bits = (uint8_t)(bits + (v4 ? 96 : 0));
    /* "::ffff:10.0.0.0/104" is an IPv4 network too; "::/0" is not one */
    out->v4 = out->bits >= 96 && is_v4(out->addr);
    for (unsigned i = out->bits; i < 128; i++)
        if (out->addr[i / 8] & (0x80u >> (i % 8))) {
            *why = "host bits set past the prefix length (a typo for another network?)";
            return MG_E_CONFIG;
        }
    return MG_OK;
}

bool mg_cidr_match(const mg_cidr_t *nets, size_t n, const uint8_t ip[16])
{
    bool v4 = is_v4(ip);
    for (size_t k = 0; k < n; k++) {
        const mg_cidr_t *c = &nets[k];
        if (c->v4 != v4) /* an IPv6 network never covers IPv4 peers (mapped addresses) */
            continue;
        unsigned full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(c->addr, ip, full) != 0)
            continue;
        if (rest == 0 || ((c->addr[full] ^ ip[full]) & (uint8_t)(0xff00u >> rest)) == 0)
            return true;
    }
    return false;
}

static bool is_xff(const mg_hdr_t *h)
{
    return h->name_len == 15 && memcmp(h->name, "x-forwarded-for", 15) == 0;
}

bool mg_realip(const mg_cidr_t *nets, size_t n, const uint8_t peer[16], const mg_hdr_t *hdrs,
               size_t nhdrs, char out[MG_REALIP_TEXT])
{
    if (n == 0 || !mg_cidr_match(nets, n, peer))
        return false;
    uint8_t ip[16];
    memcpy(ip, peer, 16);
    bool taken = false;
    /* right to left: the last field's last entry is the one the nearest proxy appended */
    for (size_t i = nhdrs; i-- > 0;) {
        if (!is_xff(&hdrs[i]))
            continue;
        const char *v = hdrs[i].value;
        size_t end = hdrs[i].value_len;
        for (;;) {
            size_t start = end;
            while (start > 0 && v[start - 1] != ',')
                start--;
            uint8_t e[16];
            if (blank(v + start, end - start)) {
                /* "a,,b", "a, ": nothing to take, nothing to stop at (as nginx) */
            } else if (!mg_ip_parse(v + start, end - start, e)) {
                goto done; /* not an address: whoever wrote it is not to be followed */
            } else {
                memcpy(ip, e, 16);
                taken = true;
                if (!mg_cidr_match(nets, n, ip))
                    goto done;
            }
            if (start == 0)
                break;
            end = start - 1;
        }
    }
done:
    if (!taken)
        return false;
    if (is_v4(ip))
        inet_ntop(AF_INET, ip + 12, out, MG_REALIP_TEXT);
    else
        inet_ntop(AF_INET6, ip, out, MG_REALIP_TEXT);
    return true;
}
