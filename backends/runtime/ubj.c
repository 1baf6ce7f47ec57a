/*
 * backends/runtime/ubj.c - the UBJSON bounds check (see ubj.h).
 */
#include "backends/runtime/ubj.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

#define MAX_DEPTH 128

typedef struct walk {
    const unsigned char *p;
    size_t n, at;
    char *why;
    size_t whylen;
} walk_t;

static bool fail(walk_t *w, const char *what)
{
    snprintf(w->why, w->whylen, "%s at byte %zu of %zu", what, w->at, w->n);
    return false;
}

/* The size of a fixed-size value of type |t| (0: not one). */
static size_t fixed_size(unsigned char t)
{
    switch (t) {
    case 'i':
    case 'U':
        return 1;
    case 'I':
        return 2;
    case 'l':
    case 'd':
        return 4;
    case 'L':
    case 'D':
        return 8;
    case 'T':
    case 'F':
    case 'Z':
        return 0;
    default:
        return SIZE_MAX;
    }
}

/* An integer of type marker |t| at w->at, big-endian, into *v. */
static bool read_int(walk_t *w, unsigned char t, int64_t *v)
{
    size_t size = fixed_size(t);
    if (t != 'i' && t != 'U' && t != 'I' && t != 'l' && t != 'L')
        return fail(w, "a length or count that is not an integer");
    if (w->n - w->at < size)
        return fail(w, "an integer cut short");
    uint64_t u = 0;
    for (size_t k = 0; k < size; k++)
        u = u << 8 | w->p[w->at + k];
    w->at += size;
    if (t == 'U')
        *v = (int64_t)u;
    else if (t == 'i')
        *v = (int8_t)u;
    else if (t == 'I')
        *v = (int16_t)u;
    else if (t == 'l')
        *v = (int32_t)u;
    else
        *v = (int64_t)u;
    return true;
}

/* A length or count: its type marker, then the integer, >= 0 and at most |room| (what the
 * rest of the bytes can hold at |unit| bytes each). */
static bool read_len(walk_t *w, size_t unit, size_t *len)
{
    if (w->at >= w->n)
        return fail(w, "a length cut short");
    unsigned char t = w->p[w->at++];
    int64_t v;
    if (!read_int(w, t, &v))
        return false;
    if (v < 0)
        return fail(w, "a negative length or count");
    if (unit > 0 && (uint64_t)v > (w->n - w->at) / unit)
        return fail(w, "a length or count past the end of the file");
    *len = (size_t)v;
    return true;
}

static bool value(walk_t *w, unsigned char t, int depth);

/* Past the no-ops ('N') at w->at; true when a byte follows them. */
static bool skip_noops(walk_t *w)
{
    while (w->at < w->n && w->p[w->at] == 'N')
        w->at++;
    return w->at < w->n;
}

/* The value that starts at w->at (its type marker first), skipping no-ops. */
static bool next_value(walk_t *w, int depth)
{
    if (!skip_noops(w))
        return fail(w, "a value cut short");
    return value(w, w->p[w->at++], depth);
}

static bool array(walk_t *w, int depth)
{
    if (w->at < w->n && w->p[w->at] == '$') { /* typed: '$' t '#' n, then n bare values */
        w->at++;
        if (w->n - w->at < 2 || w->p[w->at + 1] != '#')
            return fail(w, "a typed array without its count");
        unsigned char t = w->p[w->at];
        size_t size = fixed_size(t), count;
        w->at += 2;
        if (size == SIZE_MAX)
            return fail(w, "a typed array of a type that is not fixed-size");
        if (!read_len(w, size, &count))
            return false;
        w->at += size * count;
        return true;
    }
    if (w->at < w->n && w->p[w->at] == '#') { /* counted: n values, no ']' */
        w->at++;
        size_t count;
        if (!read_len(w, 1, &count)) /* each value takes at least its marker */
            return false;
        for (size_t k = 0; k < count; k++)
            if (!next_value(w, depth + 1))
                return false;
        return true;
    }
    for (;;) {
        if (!skip_noops(w))
            return fail(w, "an array not closed");
        if (w->p[w->at] == ']') {
            w->at++;
            return true;
        }
        if (!next_value(w, depth + 1))
            return false;
    }
}

static bool object(walk_t *w, int depth)
{
    for (;;) {
        if (!skip_noops(w))
            return fail(w, "an object not closed");
        if (w->p[w->at] == '}') {
            w->at++;
            return true;
        }
        size_t klen; /* a key: its length (with its marker) and bytes, no 'S' */
        if (!read_len(w, 1, &klen))
            return false;
        w->at += klen;
        if (!next_value(w, depth + 1))
            return false;
    }
}

static bool value(walk_t *w, unsigned char t, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(w, "nested too deep");
    if (t == '{')
        return object(w, depth);
    if (t == '[')
        return array(w, depth);
    if (t == 'S' || t == 'H') {
        size_t len;
        if (!read_len(w, 1, &len))
            return false;
        w->at += len;
        return true;
    }
    size_t size = fixed_size(t);
    if (size == SIZE_MAX) {
        w->at--;
        return fail(w, "an unknown type marker");
    }
    if (w->n - w->at < size)
        return fail(w, "a number cut short");
    w->at += size;
    return true;
}

bool mg_ubj_check(const unsigned char *p, size_t n, char *why, size_t whylen)
{
    walk_t w = {p, n, 0, why, whylen};
    if (!next_value(&w, 0))
        return false;
    if (skip_noops(&w))
        return fail(&w, "bytes after the end of the document");
    return true;
}
