/*
 * tests/unit/test_realip.c - networks, addresses in x-forwarded-for entries, and the walk that
 * finds the client behind trusted proxies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/realip.h"

static void networks_parse(void **state)
{
    (void)state;
    mg_cidr_t c;
    const char *why = NULL;
    assert_int_equal(mg_cidr_parse("10.0.0.0/8", &c, &why), MG_OK);
    assert_int_equal(c.bits, 96 + 8);
    assert_int_equal(mg_cidr_parse("192.0.2.7", &c, &why), MG_OK);
    assert_int_equal(c.bits, 128);
    assert_int_equal(mg_cidr_parse("2001:db8::/32", &c, &why), MG_OK);
    assert_int_equal(c.bits, 32);
    assert_int_equal(mg_cidr_parse("0.0.0.0/0", &c, &why), MG_OK);
    assert_int_equal(c.bits, 96);
    assert_int_equal(mg_cidr_parse("::/0", &c, &why), MG_OK);
    assert_int_equal(c.bits, 0);

    const char *bad[] = {"",           "10.0.0.0/33", "10.0.0.0/",   "10.0.0.0/8x",
                         "10.0.0.1/8", "10.0.0/8",    "example.com", "::1/129",
                         "/8",         "10.0.0.0/-1", "fe80::1/10"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        assert_int_equal(mg_cidr_parse(bad[i], &c, &why), MG_E_CONFIG);
        assert_non_null(why);
    }
    assert_int_equal(mg_cidr_parse("10.0.0.1/8", &c, &why), MG_E_CONFIG);
    assert_non_null(strstr(why, "host bits"));
}

static bool ip(const char *s, uint8_t out[16])
{
    return mg_ip_parse(s, strlen(s), out);
}

static void addresses_parse(void **state)
{
    (void)state;
    uint8_t a[16], b[16];
    assert_true(ip("203.0.113.9", a));
    assert_true(ip(" 203.0.113.9\t", b));
    assert_memory_equal(a, b, 16);
    assert_true(ip("203.0.113.9:5123", b));
    assert_memory_equal(a, b, 16);
    assert_true(ip("2001:db8::9", a));
    assert_true(ip("[2001:db8::9]", b));
    assert_memory_equal(a, b, 16);
    assert_true(ip("[2001:db8::9]:443", b));
    assert_memory_equal(a, b, 16);

    const char *bad[] = {"",
                         "unknown",
                         "203.0.113.9:",
                         "203.0.113.9:123456",
                         "[1.2.3.4]",
                         "[2001:db8::9",
                         "[2001:db8::9]x",
                         "203.0.113.9:80:80",
                         "_hidden",
                         "203.0.113.9 x",
                         "2001:db8::9:",
                         "203.0.113.9:0",
                         "203.0.113.9:65536",
                         "[2001:db8::9]:99999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(ip(bad[i], a));
}

static void networks_match(void **state)
{
    (void)state;
    mg_cidr_t nets[3];
    const char *why;
    assert_int_equal(mg_cidr_parse("10.0.0.0/8", &nets[0], &why), MG_OK);
    assert_int_equal(mg_cidr_parse("2001:db8:1::/48", &nets[1], &why), MG_OK);
    assert_int_equal(mg_cidr_parse("192.0.2.128/25", &nets[2], &why), MG_OK);
    uint8_t a[16];
    const char *in[] = {"10.0.0.1",    "10.255.255.255", "2001:db8:1:ffff::1",
                        "192.0.2.128", "192.0.2.255",    "::ffff:10.1.2.3"};
    const char *out[] = {"11.0.0.1",    "9.255.255.255", "2001:db8:2::1",
                         "192.0.2.127", "::1",           "::a01:203"};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        assert_true(ip(in[i], a));
        assert_true(mg_cidr_match(nets, 3, a));
    }
    for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++) {
        assert_true(ip(out[i], a));
        assert_false(mg_cidr_match(nets, 3, a));
    }
    /* an IPv6 network never covers IPv4 peers, which are held as mapped addresses */
    mg_cidr_t any6, mapped;
    assert_int_equal(mg_cidr_parse("::/0", &any6, &why), MG_OK);
    assert_int_equal(mg_cidr_parse("::ffff:0:0/96", &mapped, &why), MG_OK);
    assert_true(ip("2001:db8::1", a));
    assert_true(mg_cidr_match(&any6, 1, a));
    assert_false(mg_cidr_match(&mapped, 1, a));
    assert_true(ip("203.0.113.1", a));
    assert_false(mg_cidr_match(&any6, 1, a));
    assert_true(mg_cidr_match(&mapped, 1, a)); /* written as IPv4-mapped: an IPv4 network */
    assert_int_equal(mg_cidr_parse("::/64", &any6, &why), MG_OK);
    assert_false(mg_cidr_match(&any6, 1, a));
}

/* The client of a request from |peer| with x-forwarded-for fields |xff| (NULL-ended), behind
 * 10.0.0.0/8 and 2001:db8::/32; NULL when the peer is the client. */
static const char *client(const char *peer, const char *const *xff)
{
    static char out[MG_REALIP_TEXT];
    mg_cidr_t nets[2];
    const char *why;
    assert_int_equal(mg_cidr_parse("10.0.0.0/8", &nets[0], &why), MG_OK);
    assert_int_equal(mg_cidr_parse("2001:db8::/32", &nets[1], &why), MG_OK);
    mg_hdr_t h[8];
    size_t n = 0;
    h[n++] = (mg_hdr_t){"accept", "*/*", 6, 3, MG_HPACK_INDEX};
    for (; xff && *xff; xff++)
        h[n++] = (mg_hdr_t){"x-forwarded-for", *xff, 15, strlen(*xff), MG_HPACK_INDEX};
    h[n++] = (mg_hdr_t){"x-forwarded-foo", "198.51.100.99", 15, 13, MG_HPACK_INDEX};
    uint8_t addr[16];
    assert_true(mg_ip_parse(peer, strlen(peer), addr));
    return mg_realip(nets, 2, addr, h, n, out) ? out : NULL;
}

#define XFF(...) ((const char *const[]){__VA_ARGS__, NULL})

static void client_behind_trusted_proxies(void **state)
{
    (void)state;
    /* the nearest untrusted entry, not the leftmost one the client may have forged */
    assert_string_equal(client("10.0.0.2", XFF("1.1.1.1, 203.0.113.9")), "203.0.113.9");
    assert_string_equal(client("10.0.0.2", XFF("1.1.1.1, 203.0.113.9, 10.9.9.9")), "203.0.113.9");
    /* several fields are one list, in order */
    assert_string_equal(client("10.0.0.2", XFF("1.1.1.1", "203.0.113.9,10.0.0.7", "10.3.3.3")),
                        "203.0.113.9");
    /* every entry trusted: the leftmost */
    assert_string_equal(client("10.0.0.2", XFF("10.1.1.1,10.2.2.2")), "10.1.1.1");
    /* ports and brackets, IPv6 peers and clients, written as inet_ntop does */
    assert_string_equal(client("2001:db8::1", XFF("[2001:DB8:0::7]:443, 203.0.113.9:5123")),
                        "203.0.113.9");
    assert_string_equal(client("10.0.0.2", XFF("2001:0db8:0:0::1, 2600::1")), "2600::1");
    /* an entry that is not an address ends the walk at the last one taken */
    assert_string_equal(client("10.0.0.2", XFF("203.0.113.9, unknown, 10.4.4.4")), "10.4.4.4");
    assert_null(client("10.0.0.2", XFF("unknown")));
    /* empty entries are skipped */
    assert_string_equal(client("10.0.0.2", XFF("203.0.113.9, ")), "203.0.113.9");
    assert_string_equal(client("10.0.0.2", XFF("203.0.113.9,, 10.0.0.3,")), "203.0.113.9");
    assert_null(client("10.0.0.2", XFF(" , ")));
    /* an untrusted peer is the client, whatever it says; no field: the peer too */
    assert_null(client("203.0.113.50", XFF("1.2.3.4")));
    assert_null(client("10.0.0.2", NULL));
    /* IPv4-mapped peers (a dual-stack listener) are IPv4 */
    assert_string_equal(client("::ffff:10.0.0.2", XFF("203.0.113.9")), "203.0.113.9");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(networks_parse),
        cmocka_unit_test(addresses_parse),
        cmocka_unit_test(networks_match),
        cmocka_unit_test(client_behind_trusted_proxies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
