/*
 * routing/host.c - "{app}-{env}.{domain}" host parsing and address syntax checks.
 *
 * Everything here runs per request (mg_host_parse) or at config load (the rest), touches only
 * caller memory and never allocates. Character classes are spelled out instead of using
 * <ctype.h>: a host name is ASCII whatever the process locale is.
 */
#include "routing/host.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A port suffix after ':' as RFC 3986 allows it (*DIGIT, may be empty), at most 65535: at most
 * 5 digits, which bounds the scan. */
static bool is_port_suffix(const char *p, const char *end)
{
    if (end - p > 5)
        return false;
    unsigned v = 0;
    for (; p < end; p++) {
        if (!is_digit((unsigned char)*p))
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    return v <= 65535;
}

/* A reg-name byte of RFC 3986 3.2.2 other than '%': unreserved or sub-delims. */
static bool is_reg_name_char(unsigned char c)
{
    return is_alnum(c) || (c != '\0' && strchr("-._~!$&'()*+,;=", c) != NULL);
}

static mg_err_t bad(const char **why, const char *reason)
{
    if (why != NULL)
        *why = reason;
    return MG_E_PROTO;
}

/* Reg-name bytes of RFC 3986 3.2.2 other than '%' (unreserved and sub-delims): the bytes of
 * every host the fast path of mg_host_check takes. */
static const bool reg_name_byte[256] = {
    ['a' ... 'z'] = true, ['A' ... 'Z'] = true, ['0' ... '9'] = true, ['-'] = true, ['.'] = true,
    ['_'] = true,         ['~'] = true,         ['!'] = true,         ['$'] = true, ['&'] = true,
    ['\''] = true,        ['('] = true,         [')'] = true,         ['*'] = true, ['+'] = true,
    [','] = true,         [';'] = true,         ['='] = true,
};

static mg_err_t host_diagnose(const char *host, size_t len, const char **why);

/* Runs per request: the hosts clients send (name, then maybe ":port") take one table look-up a
 * byte; anything else (an IP literal, a %XX escape, a problem) goes to host_diagnose, which
 * says what is wrong. */
mg_err_t mg_host_check(const char *host, size_t len, const char **why)
{
    const unsigned char *p = (const unsigned char *)host, *end = p + len;
    if (host != NULL && len > 0) {
        while (p < end && reg_name_byte[*p])
            p++;
        if (p == end)
            return MG_OK;
        if (*p == ':' && p != (const unsigned char *)host &&
            is_port_suffix((const char *)p + 1, (const char *)end))
            return MG_OK;
    }
    return host_diagnose(host, len, why);
}

static mg_err_t host_diagnose(const char *host, size_t len, const char **why)
{
    if (host == NULL || len == 0)
        return bad(why, "the host is empty");
    const char *end = host + len, *p = host;
    /* the characters that would make it more than a host: say which, whatever comes first */
    if (memchr(host, '@', len) != NULL)
        return bad(why, "user info ('name@') is not allowed before the host (RFC 9113 8.3.1, "
                        "RFC 9110 4.2.4)");
    for (const char *q = host; q < end; q++)
        if (*q == '/' || *q == '?' || *q == '#' || *q == '\\')
            return bad(why, "a host has no path, query or fragment ('/', '\\', '?' or '#' in it)");
    if (*p == '[') {
        const char *rb = memchr(p, ']', len);
        char lit[48];
        unsigned char bin[16];
        size_t n = rb != NULL ? (size_t)(rb - p - 1) : 0;
        if (rb == NULL || n == 0 || n >= sizeof(lit))
            return bad(why, "malformed IP literal (expected an IPv6 address in brackets)");
        memcpy(lit, p + 1, n);
        lit[n] = '\0';
        if (inet_pton(AF_INET6, lit, bin) != 1)
            return bad(why, "malformed IP literal (expected an IPv6 address in brackets)");
        p = rb + 1;
    } else {
        for (; p < end && *p != ':'; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '%' && end - p >= 3 && is_hex((unsigned char)p[1]) &&
                is_hex((unsigned char)p[2]))
                p += 2;
            else if (!is_reg_name_char(c))
                return bad(why, "a character no host name has (letters, digits, \"-._~\", "
                                "\"!$&'()*+,;=\" and %XX escapes only)");
        }
        if (p == host)
            return bad(why, "the host is empty (only a port)");
    }
    if (p == end)
        return MG_OK;
    if (*p != ':' || !is_port_suffix(p + 1, end))
        return bad(why, "the port must be a number from 0 to 65535");
    return MG_OK;
}

mg_err_t mg_host_parse(const char *host, size_t len, const char *domain, const char *const *envs,
                       size_t nenvs, mg_host_t *out)
{
    if (host == NULL || len == 0)
        return MG_E_PROTO;
    const char *end = host + len;

    /* An IP literal is a legal authority but can never carry an app-env label. */
    if (host[0] == '[') {
        const char *rb = memchr(host, ']', len);
        if (rb == NULL)
            return MG_E_PROTO;
        for (const char *p = host + 1; p < rb; p++)
            if (!is_hex((unsigned char)*p) && *p != ':' && *p != '.')
                return MG_E_PROTO;
        if (rb + 1 < end && (rb[1] != ':' || !is_port_suffix(rb + 2, end)))
            return MG_E_PROTO;
        return MG_E_NOTFOUND;
    }

    const char *colon = memchr(host, ':', len);
    if (colon != NULL) {
        if (!is_port_suffix(colon + 1, end)) /* also rejects a second ':' */
            return MG_E_PROTO;
        end = colon;
    }
    if (end > host && end[-1] == '.') /* "a-b.example.com." is the same name, fully qualified */
        end--;
    if (end == host)
        return MG_E_PROTO;

    const char *dot = NULL; /* first '.' */
    for (const char *p = host; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '.') {
            if (p == host || p[-1] == '.' || p + 1 == end) /* empty label */
                return MG_E_PROTO;
            if (dot == NULL)
                dot = p;
        } else if (!is_alnum(c) && c != '-') {
            return MG_E_PROTO;
        }
    }

    size_t dlen = domain != NULL ? strlen(domain) : 0;
    if (dlen > 0 && domain[dlen - 1] == '.')
        dlen--;
    const char *label_end = dot != NULL ? dot : end;
    if (dlen == 0) {
        if (dot != NULL) /* no domain configured: the host must be the bare label */
            return MG_E_NOTFOUND;
    } else {
        if (dot == NULL || (size_t)(end - (dot + 1)) != dlen ||
            strncasecmp(dot + 1, domain, dlen) != 0)
            return MG_E_NOTFOUND;
    }

    /* Longest env that leaves a non-empty app wins, so "sandbox-eu" beats "eu". */
    size_t label_len = (size_t)(label_end - host);
    size_t best_len = 0;
    const char *best = NULL;
    for (size_t i = 0; i < nenvs; i++) {
        size_t el = strlen(envs[i]);
        if (el == 0 || el <= best_len || label_len < el + 2)
            continue;
        if (label_end[-(ptrdiff_t)el - 1] == '-' && strncasecmp(label_end - el, envs[i], el) == 0) {
            best = envs[i];
            best_len = el;
        }
    }
    if (best == NULL)
        return MG_E_NOTFOUND;
    out->app = host;
    out->app_len = label_len - best_len - 1;
    out->env = best;
    out->env_len = best_len;
    return MG_OK;
}

bool mg_host_is_valid_name(const char *name, size_t len)
{
    if (name == NULL || len == 0)
        return false;
    if (name[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '.') {
            if (label == 0 || name[i - 1] == '-')
                return false;
            label = 0;
        } else if (is_alnum(c) || c == '-') {
            if (c == '-' && label == 0)
                return false;
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return name[len - 1] != '-';
}

static mg_err_t fail(const char **why, const char *reason)
{
    if (why != NULL)
        *why = reason;
    return MG_E_CONFIG;
}

/* Parses the port text of a configured address; unlike a request's authority it must be there. */
static bool parse_port(const char *p, unsigned *port)
{
    unsigned v = 0;
    if (*p == '\0')
        return false;
    for (; *p != '\0'; p++) {
        if (!is_digit((unsigned char)*p) || v > 65535)
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v < 1 || v > 65535)
        return false;
    *port = v;
    return true;
}

mg_err_t mg_host_split_port(const char *addr, char *host, size_t cap, unsigned *port,
                            const char **why)
{
    const char *h, *hend, *p;
    if (addr == NULL || *addr == '\0')
        return fail(why, "empty address; expected host:port");
    if (strstr(addr, "://") != NULL) /* a URL's "http://h:p" read as an IPv6 address */
        return fail(why, "a URL, not an address: give host:port, without the scheme");
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (rb == NULL)
            return fail(why, "missing ']' after the IPv6 address");
        if (rb[1] != ':')
            return fail(why, "missing :port after ']'");
        h = addr + 1;
        hend = rb;
        p = rb + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (colon == NULL)
            return fail(why, "missing :port");
        if (memchr(addr, ':', (size_t)(colon - addr)) != NULL)
            return fail(why, "IPv6 addresses need brackets, e.g. [::1]:8080");
        h = addr;
        hend = colon;
        p = colon + 1;
    }
    size_t hlen = (size_t)(hend - h);
    if (hlen == 0)
        return fail(why, "missing host before :port");
    if (!parse_port(p, port))
        return fail(why, "port must be 1-65535");
    if (hlen >= cap)
        return fail(why, "host name too long");
    memcpy(host, h, hlen);
    host[hlen] = '\0';

    unsigned char bin[16];
    if (addr[0] == '[') {
        if (inet_pton(AF_INET6, host, bin) != 1)
            return fail(why, "invalid IPv6 address");
        return MG_OK;
    }
    /* All digits and dots: the operator meant an IPv4 address, so "10.0.0.300" must not be
     * passed on to DNS as a name. */
    if (strspn(host, "0123456789.") == hlen) {
        if (inet_pton(AF_INET, host, bin) != 1)
            return fail(why, "invalid IPv4 address");
        return MG_OK;
    }
    if (!mg_host_is_valid_name(host, hlen))
        return fail(why, "invalid host name (letters, digits, '-' and '.' only)");
    return MG_OK;
}
