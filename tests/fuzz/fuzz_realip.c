/*
 * tests/fuzz/fuzz_realip.c - x-forwarded-for values from arbitrary bytes, behind trusted
 * proxies (10.0.0.0/8 and 2001:db8::/32, the peer 10.0.0.1).
 *
 * Checks what gateway/realip.h promises: a client found is an address as inet_ntop writes it,
 * which parses back to itself; it is the nearest untrusted entry, so a chain of that address
 * alone finds it again; and the value split into two fields at any comma finds the same one.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "gateway/realip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mg_cidr_t nets[2];
    static uint8_t peer[16];
    static bool ready;
    const char *why;
    if (!ready) {
        CHECK(mg_cidr_parse("10.0.0.0/8", &nets[0], &why) == MG_OK);
        CHECK(mg_cidr_parse("2001:db8::/32", &nets[1], &why) == MG_OK);
        CHECK(mg_ip_parse("10.0.0.1", 8, peer));
        ready = true;
    }
    uint8_t ip[16];
    (void)mg_ip_parse((const char *)data, size, ip);

    const char *v = (const char *)data;
    mg_hdr_t h = {"x-forwarded-for", v, 15, size, MG_HPACK_INDEX};
    char out[MG_REALIP_TEXT], again[MG_REALIP_TEXT];
    if (!mg_realip(nets, 2, peer, &h, 1, out))
        return 0;
    size_t n = strnlen(out, sizeof(out));
    CHECK(n > 0 && n < sizeof(out));
    CHECK(mg_ip_parse(out, n, ip));
    mg_hdr_t one = {"x-forwarded-for", out, 15, n, MG_HPACK_INDEX};
    CHECK(mg_realip(nets, 2, peer, &one, 1, again) && strcmp(out, again) == 0);
    const char *comma = memchr(v, ',', size);
    if (comma) { /* "a, b" as two fields "a" and " b" */
        mg_hdr_t two[2] = {
            {"x-forwarded-for", v, 15, (size_t)(comma - v), MG_HPACK_INDEX},
            {"x-forwarded-for", comma + 1, 15, size - (size_t)(comma - v) - 1, MG_HPACK_INDEX}};
        CHECK(mg_realip(nets, 2, peer, two, 2, again) && strcmp(out, again) == 0);
    }
    return 0;
}
