/*
 * tests/unit/test_proxyproto.c - the PROXY protocol header: versions 1 and 2, cut anywhere,
 * and what must be refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "common/proxyproto.h"

/* |h| whole gives DONE; every shorter prefix gives MORE. */
static mg_proxyproto_t parse_whole(const uint8_t *h, size_t n)
{
    mg_proxyproto_t pp;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(mg_proxyproto_parse(h, i, &pp), MG_PROXYPROTO_MORE);
    assert_int_equal(mg_proxyproto_parse(h, n, &pp), MG_PROXYPROTO_DONE);
    assert_int_equal(pp.len, n);
    return pp;
}

static void v1_tcp4_and_tcp6(void **state)
{
    (void)state;
    const char *h = "PROXY TCP4 203.0.113.7 198.51.100.1 56324 443\r\n";
    uint8_t buf[128];
    size_t n = strlen(h);
    memcpy(buf, h, n);
    memcpy(buf + n, "GET / HTTP/1.1\r\n", 16); /* the connection's own bytes follow */
    mg_proxyproto_t pp = parse_whole(buf, n);
    assert_int_equal(mg_proxyproto_parse(buf, n + 16, &pp), MG_PROXYPROTO_DONE);
    assert_int_equal(pp.len, n);
    assert_int_equal(pp.has_addr, 1);
    assert_int_equal(pp.family, AF_INET);
    assert_string_equal(pp.ip, "203.0.113.7");
    assert_int_equal(pp.port, 56324);

    h = "PROXY TCP6 2001:db8:0:0::1 2001:db8::2 65535 443\r\n";
    pp = parse_whole((const uint8_t *)h, strlen(h));
    assert_int_equal(pp.family, AF_INET6);
    assert_string_equal(pp.ip, "2001:db8::1");
    assert_int_equal(pp.port, 65535);

    h = "PROXY UNKNOWN\r\n";
    pp = parse_whole((const uint8_t *)h, strlen(h));
    assert_int_equal(pp.has_addr, 0);
}

static void v1_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mg_proxyproto_t pp;
        if (mg_proxyproto_parse((const uint8_t *)bad[i], strlen(bad[i]), &pp) !=
            MG_PROXYPROTO_INVALID) {
            /* a line without CRLF is MORE until it is too long for one */
            uint8_t line[200];
            memset(line, 'x', sizeof(line));
            memcpy(line, bad[i], strlen(bad[i]));
            assert_int_equal(mg_proxyproto_parse(line, sizeof(line), &pp), MG_PROXYPROTO_INVALID);
        }
    }
}

/* A version 2 header: signature, version 2 with |cmd|, |fam|, then |len| bytes of |body|. */
static size_t v2(uint8_t *out, uint8_t cmd, uint8_t fam, const uint8_t *body, size_t len)
{
    static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
    memcpy(out, sig, 12);
    out[12] = (uint8_t)(0x20 | cmd);
    out[13] = fam;
    out[14] = (uint8_t)(len >> 8);
    out[15] = (uint8_t)len;
    memcpy(out + 16, body, len);
    return 16 + len;
}

static void v2_addresses_local_and_tlvs(void **state)
{
    (void)state;
    static const uint8_t addr4[12] = {203, 0, 113, 7, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb};
    uint8_t h[600];
    mg_proxyproto_t pp = parse_whole(h, v2(h, 1, 0x11, addr4, 12));
    assert_int_equal(pp.has_addr, 1);
    assert_string_equal(pp.ip, "203.0.113.7");
    assert_int_equal(pp.port, 56324);
    /* TLVs after the addresses (here 1,000 bytes: more than is looked at) are counted in len
     * and may come later: the addresses are enough */
    static uint8_t big[16 + 1012];
    memcpy(big, h, 16 + 12);
    big[14] = (uint8_t)(1012 >> 8);
    big[15] = (uint8_t)(1012 & 0xff);
    for (size_t i = 0; i < 28; i++)
        assert_int_equal(mg_proxyproto_parse(big, i, &pp), MG_PROXYPROTO_MORE);
    assert_int_equal(mg_proxyproto_parse(big, 28, &pp), MG_PROXYPROTO_DONE);
    assert_int_equal(pp.len, 16 + 1012);
    assert_string_equal(pp.ip, "203.0.113.7");

    uint8_t addr6[36] = {0x20, 0x01, 0x0d, 0xb8};
    addr6[15] = 1;
    addr6[32] = 0x01;
    addr6[33] = 0xbb;
    pp = parse_whole(h, v2(h, 1, 0x21, addr6, 36));
    assert_int_equal(pp.family, AF_INET6);
    assert_string_equal(pp.ip, "2001:db8::1");
    assert_int_equal(pp.port, 443);

    /* LOCAL (health checks) and UNSPEC take no address: done at the fixed part, the rest of
     * their length dropped */
    v2(h, 0, 0x11, addr4, 12);
    assert_int_equal(mg_proxyproto_parse(h, 15, &pp), MG_PROXYPROTO_MORE);
    assert_int_equal(mg_proxyproto_parse(h, 16, &pp), MG_PROXYPROTO_DONE);
    assert_int_equal(pp.len, 28);
    assert_int_equal(pp.has_addr, 0);
    pp = parse_whole(h, v2(h, 1, 0x00, addr4, 0));
    assert_int_equal(pp.has_addr, 0);
}

static void v2_refused(void **state)
{
    (void)state;
    uint8_t h[1200], body[600] = {0};
    mg_proxyproto_t pp;
    size_t n = v2(h, 1, 0x12, body, 12); /* UDP over IPv4 */
    assert_int_equal(mg_proxyproto_parse(h, n, &pp), MG_PROXYPROTO_INVALID);
    n = v2(h, 1, 0x11, body, 8); /* too short for two addresses and ports */
    assert_int_equal(mg_proxyproto_parse(h, n, &pp), MG_PROXYPROTO_INVALID);
    n = v2(h, 2, 0x11, body, 12); /* command 2 */
    assert_int_equal(mg_proxyproto_parse(h, n, &pp), MG_PROXYPROTO_INVALID);
    n = v2(h, 1, 0x11, body, 12);
    h[12] = 0x11; /* version 1 in a version 2 header */
    assert_int_equal(mg_proxyproto_parse(h, n, &pp), MG_PROXYPROTO_INVALID);
    h[3] = 0x0b; /* a broken signature */
    assert_int_equal(mg_proxyproto_parse(h, 16, &pp), MG_PROXYPROTO_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(v1_tcp4_and_tcp6),
        cmocka_unit_test(v1_refused),
        cmocka_unit_test(v2_addresses_local_and_tlvs),
        cmocka_unit_test(v2_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
