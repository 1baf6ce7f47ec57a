/*
 * backends/runtime/ubj.h - a bounds check of a UBJSON document before libxgboost reads it.
 *
 * libxgboost 1.7's UBJSON reader trusts the lengths and counts in the bytes: a model file cut
 * short (a copy that stopped, a write not finished) makes it read past its buffer (ASan:
 * stack-buffer-underflow in UBJReader::DecodeStr) or allocate gigabytes, and the pod dies in
 * the middle of a model switch. mg_ubj_check walks the document as that reader would and says
 * whether every length, count and container stays inside the bytes, so a broken file is
 * refused with a reason instead.
 *
 * The subset is XGBoost's (src/common/json.cc): objects '{' with keys as a length and bytes,
 * ended by '}'; arrays '[' ended by ']', or counted ('#' n), or typed and counted ('$' t '#'
 * n); strings 'S'; integers 'i' 'U' 'I' 'l' 'L' (big-endian); floats 'd' 'D'; 'T' 'F' 'Z'
 * and the no-op 'N'. Anything else is refused.
 */
#ifndef MG_RUNTIME_UBJ_H
#define MG_RUNTIME_UBJ_H

#include <stdbool.h>
#include <stddef.h>

/* Whether the |n| bytes at |p| hold exactly one complete UBJSON value of the subset above,
 * nested at most 128 deep. When not, |why| (|whylen| bytes) says what and at which offset. */
bool mg_ubj_check(const unsigned char *p, size_t n, char *why, size_t whylen);

#endif /* MG_RUNTIME_UBJ_H */
