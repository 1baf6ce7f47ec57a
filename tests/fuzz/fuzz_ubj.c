/*
 * tests/fuzz/fuzz_ubj.c - the UBJSON bounds check (backends/runtime/ubj.c) from arbitrary
 * bytes, which libFuzzer hands over in a buffer of exactly their size: ASan catches any read
 * past it.
 *
 * Checks what ubj.h promises: a refusal says why; and an accepted document ends where its
 * bytes end, so the same bytes less the last one (when it is not a no-op 'N') are refused.
 */
#include <stdint.h>
#include <string.h>

#include "backends/runtime/ubj.h"
#include "check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[128] = "";
    if (!mg_ubj_check(data, size, why, sizeof(why))) {
        CHECK(why[0] != '\0' && memchr(why, '\0', sizeof(why)) != NULL);
        return 0;
    }
    CHECK(size > 0);
    if (data[size - 1] != 'N')
        CHECK(!mg_ubj_check(data, size - 1, why, sizeof(why)));
    return 0;
}
