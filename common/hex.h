/*
 * common/hex.h - a 64-bit number as 16 lowercase hex digits (ids, hashes), without printf.
 */
#ifndef MG_COMMON_HEX_H
#define MG_COMMON_HEX_H

#include <stdint.h>

/* Writes exactly 16 digits to |out|, most significant first; no NUL. */
static inline void mg_hex64(uint64_t v, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = digits[v & 15];
}

#endif /* MG_COMMON_HEX_H */
