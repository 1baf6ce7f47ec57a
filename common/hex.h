/*
 * common/hex.h - hex digits: a 64-bit number as 16 lowercase digits (ids, hashes) without printf,
 * and one digit's value (escapes: JSON's \uXXXX, a URL's %XX).
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

/* The value of the hex digit |c| (either case); -1 when it is none. */
static inline int mg_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#endif /* MG_COMMON_HEX_H */
