/*
 * tests/fuzz/fuzz_proxyproto.c - the PROXY protocol header parser from arbitrary bytes.
 *
 * Checks what mg_proxyproto_parse promises: a header's length within its version's limits
 * (version 1: within the bytes given); a printable address when it names one; the same answer
 * for the bytes up to the header's end as with the connection's own bytes after them; and, for
 * version 1, MORE for a line without its end.
 */
#include <stdbool.h>
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
    bool v1 = data[0] == 'P';
    CHECK(v1 ? pp.len >= 8 && pp.len <= 107 && pp.len <= size
             : pp.len >= 16 && pp.len <= 16 + 65535);
    if (pp.has_addr) {
        CHECK(pp.family == AF_INET || pp.family == AF_INET6);
        CHECK(memchr(pp.ip, '\0', sizeof(pp.ip)) != NULL && pp.ip[0] != '\0');
    }
    /* the bytes up to the header's end read the same (version 2: its TLVs need not have come) */
    size_t upto = pp.len < size ? pp.len : size;
    CHECK(mg_proxyproto_parse(data, upto, &again) == MG_PROXYPROTO_DONE);
    CHECK(again.len == pp.len && again.has_addr == pp.has_addr && again.port == pp.port &&
          strcmp(again.ip, pp.ip) == 0);
    if (v1) /* a line without its end asks for more */
        CHECK(mg_proxyproto_parse(data, pp.len - 1, &again) == MG_PROXYPROTO_MORE);
    return 0;
}
