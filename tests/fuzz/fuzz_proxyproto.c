/*
 * tests/fuzz/fuzz_proxyproto.c - the PROXY protocol header parser from arbitrary bytes.
 *
 * Checks what mg_proxyproto_parse promises: a whole header's length within the bytes given and
 * the size cap; a printable address when it names one; and that the answer does not change
 * when the connection's own bytes follow a whole header, nor for a prefix of one (MORE).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "check.h"
#include "common/proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mg_proxyproto_t pp, again;
    mg_proxyproto_result_t r = mg_proxyproto_parse(data, size, &pp);
    CHECK(r == MG_PROXYPROTO_MORE || r == MG_PROXYPROTO_DONE || r == MG_PROXYPROTO_INVALID);
    if (r != MG_PROXYPROTO_DONE)
        return 0;
    CHECK(pp.len > 0 && pp.len <= size && pp.len <= MG_PROXYPROTO_MAX);
    if (pp.has_addr) {
        CHECK(pp.family == AF_INET || pp.family == AF_INET6);
        CHECK(memchr(pp.ip, '\0', sizeof(pp.ip)) != NULL && pp.ip[0] != '\0');
    }
    /* the header alone reads the same; any prefix of it asks for more */
    CHECK(mg_proxyproto_parse(data, pp.len, &again) == MG_PROXYPROTO_DONE);
    CHECK(again.len == pp.len && again.has_addr == pp.has_addr && again.port == pp.port &&
          strcmp(again.ip, pp.ip) == 0);
    CHECK(mg_proxyproto_parse(data, pp.len - 1, &again) == MG_PROXYPROTO_MORE);
    return 0;
}
