/*
 * gateway/dbrow.c - access-log line to request_log row (see dbrow.h for the contract).
 *
 * DESIGN
 * One pass over the line with a cursor; no allocation. Keys are matched against the column
 * table by length and bytes (22 short names: a linear scan is cheaper than hashing). Strings
 * are unescaped into the bytes they were read from, so the row can point at them and the
 * database thread binds them without a copy. The grammar is RFC 8259 restricted to one object
 * whose values are scalars: the access log writes nothing else, and anything else is not a
 * record.
 */
#include "gateway/dbrow.h"

#include <string.h>

#include "common/hex.h"

/* name and its length: keys are matched per line, so no strlen() there */
#define COL(name, ...)                                                                             \
    {                                                                                              \
        name, sizeof(name) - 1, __VA_ARGS__                                                        \
    }
const mg_dbrow_col_t mg_dbrow_cols[MG_DBROW_NCOLS] = {
    [MG_DBROW_REQUEST_ID] = COL("request_id", MG_DBROW_STR, 64, true),
    [MG_DBROW_CLIENT] = COL("client", MG_DBROW_STR, 64, true),
    [MG_DBROW_PROTO] = COL("proto", MG_DBROW_STR, 16, true),
    [MG_DBROW_METHOD] = COL("method", MG_DBROW_STR, 16, true),
    [MG_DBROW_HOST] = COL("host", MG_DBROW_STR, 255, true),
    [MG_DBROW_PATH] = COL("path", MG_DBROW_STR, 2048, true),
    [MG_DBROW_APP] = COL("app", MG_DBROW_STR, 64, true),
    [MG_DBROW_ENV] = COL("env", MG_DBROW_STR, 64, true),
    [MG_DBROW_SERVICE] = COL("service", MG_DBROW_STR, 128, true),
    [MG_DBROW_POD] = COL("pod", MG_DBROW_STR, 255, true),
    [MG_DBROW_STATUS] = COL("status", MG_DBROW_INT, 0, false),
    [MG_DBROW_REQ_BYTES] = COL("req_bytes", MG_DBROW_UINT, 0, false),
    [MG_DBROW_RESP_BYTES] = COL("resp_bytes", MG_DBROW_UINT, 0, false),
    [MG_DBROW_UPSTREAM_US] = COL("upstream_us", MG_DBROW_INT, 0, true),
    [MG_DBROW_TOTAL_US] = COL("total_us", MG_DBROW_INT, 0, false),
    [MG_DBROW_ERROR] = COL("error", MG_DBROW_STR, 255, true),
    [MG_DBROW_FALLBACK] = COL("fallback", MG_DBROW_BOOL, 0, false),
    [MG_DBROW_RETRIES] = COL("retries", MG_DBROW_UINT, 0, false),
    [MG_DBROW_FEATURES] = COL("features", MG_DBROW_STR, 16, true),
    [MG_DBROW_FEATURES_HASH] = COL("features_hash", MG_DBROW_STR, 64, true),
};

enum { K_ID = MG_DBROW_NCOLS, K_TIME, K_OTHER };

typedef struct cur {
    char *p, *end;
} cur_t;

/* A scalar value as read: its kind and, for strings, the unescaped bytes. */
typedef enum { V_STR, V_INT, V_REAL, V_TRUE, V_FALSE, V_NULL } vkind_t;
typedef struct val {
    vkind_t kind;
    char *s;
    size_t len;
    int64_t n;
} val_t;

static void skip_ws(cur_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Length of the valid UTF-8 sequence (2..4 bytes) at |s|, 0 if there is none before |end|.
 * RFC 3629 ranges: no overlongs, no surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, const unsigned char *end)
{
    size_t avail = (size_t)(end - s);
    unsigned char c = s[0];
#define CONT(i) (avail > (i) && s[i] >= 0x80 && s[i] <= 0xbf)
    if (c >= 0xc2 && c <= 0xdf)
        return CONT(1) ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        return avail > 2 && s[1] >= lo && s[1] <= hi && CONT(2) ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        return avail > 3 && s[1] >= lo && s[1] <= hi && CONT(2) && CONT(3) ? 4 : 0;
    }
#undef CONT
    return 0;
}

/* The code unit of a "uXXXX" escape at |p| (after its backslash); -1 when malformed. */
static long read_u4(const char *p, const char *end)
{
    if (end - p < 5 || p[0] != 'u')
        return -1;
    long v = 0;
    for (int i = 1; i <= 4; i++) {
        int d = mg_hex_digit(p[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t put_utf8(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6)), o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12)), o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18)), o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* One escape after a backslash (c->p at the character after it); writes its bytes at |*o|.
 * Surrogates must come in pairs, as jansson requires. */
static bool unescape_one(cur_t *c, char **o)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *e = c->p < c->end ? memchr(from, *c->p, sizeof(from) - 1) : NULL;
    if (e != NULL) {
        *(*o)++ = to[e - from];
        c->p++;
        return true;
    }
    long cp = c->p < c->end ? read_u4(c->p, c->end) : -1;
    if (cp < 0)
        return false;
    c->p += 5;
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return false; /* a lone low surrogate */
    if (cp >= 0xd800 && cp <= 0xdbff) {
        long lo = c->end - c->p >= 6 && c->p[0] == '\\' ? read_u4(c->p + 1, c->end) : -1;
        if (lo < 0xdc00 || lo > 0xdfff)
            return false;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        c->p += 6;
    }
    *o += put_utf8(*o, (unsigned long)cp);
    return true;
}

/* Bytes that stand for themselves inside a JSON string: printable ASCII but '"' and '\\'. */
static const bool plain[256] = {
    [0x20] = 1,
    [0x21] = 1,
    [0x23 ... 0x5b] = 1,
    [0x5d ... 0x7f] = 1,
};

/* The bytes of |w| that are not plain ('"', '\\', below 0x20, 0x80 and up), flagged in their
 * top bits. Subtraction borrows make false flags only above a true one, so the lowest flag is
 * always a true one: its position is exact. */
static inline uint64_t not_plain8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull, tops = 0x8080808080808080ull;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    return (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w) | w) & tops;
}

/* The end of the run of plain bytes from |p|: 8 at a time, the tail byte by byte. */
static char *plain_run(char *p, const char *end)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (uint64_t w, m; end - p >= 8; p += 8) {
        memcpy(&w, p, sizeof(w)); /* byte i is bits 8i.. */
        if ((m = not_plain8(w)) != 0)
            return p + (__builtin_ctzll(m) >> 3);
    }
#endif
    while (p < end && plain[(unsigned char)*p])
        p++;
    return p;
}

/* A string (c->p after its opening quote): unescaped in place into [v->s, v->s + v->len). */
static bool read_string(cur_t *c, val_t *v)
{
    char *o = c->p;
    v->kind = V_STR;
    v->s = o;
    for (;;) {
        /* fast path: a run of plain ASCII, moved only once an escape has shifted the output */
        char *run = c->p, *p = plain_run(c->p, c->end); /* stores through |o| may alias c->p */
        c->p = p;
        size_t n = (size_t)(c->p - run);
        if (o != run)
            memmove(o, run, n);
        o += n;
        if (c->p >= c->end)
            return false;
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            c->p++;
            v->len = (size_t)(o - v->s);
            return true;
        }
        if (ch == '\\') {
            c->p++;
            if (!unescape_one(c, &o))
                return false;
            continue;
        }
        if (ch < 0x20)
            return false; /* raw control characters are not JSON */
        size_t k = utf8_seq((const unsigned char *)c->p, (const unsigned char *)c->end);
        if (k == 0)
            return false;
        memmove(o, c->p, k);
        o += k, c->p += k;
    }
}

/* A JSON number. Integers must fit int64 (jansson refuses larger ones too); a number with a
 * fraction or exponent is V_REAL, which no column takes. */
static bool read_number(cur_t *c, val_t *v)
{
    bool neg = c->p < c->end && *c->p == '-';
    c->p += neg;
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return false;
    uint64_t mag = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    bool over = false;
    if (*c->p == '0') {
        c->p++;
    } else {
        for (; c->p < c->end && *c->p >= '0' && *c->p <= '9'; c->p++) {
            unsigned d = (unsigned)(*c->p - '0');
            /* the first 18 digits cannot overflow: check (and divide) from the 19th on */
            if (mag >= 100000000000000000ull && mag > (limit - d) / 10)
                over = true;
            else
                mag = mag * 10 + d;
        }
    }
    bool real = false;
    if (c->p < c->end && *c->p == '.') {
        real = true, c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return false;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
            c->p++;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        real = true, c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
            c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return false;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
            c->p++;
    }
    if (real) {
        v->kind = V_REAL;
        return true;
    }
    if (over)
        return false;
    v->kind = V_INT;
    v->n = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return true;
}

static bool read_word(cur_t *c, const char *w, size_t n)
{
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0)
        return false;
    c->p += n;
    return true;
}

static bool read_value(cur_t *c, val_t *v)
{
    if (c->p >= c->end)
        return false;
    switch (*c->p) {
    case '"':
        c->p++;
        return read_string(c, v);
    case 't':
        v->kind = V_TRUE;
        return read_word(c, "true", 4);
    case 'f':
        v->kind = V_FALSE;
        return read_word(c, "false", 5);
    case 'n':
        v->kind = V_NULL;
        return read_word(c, "null", 4);
    default:
        return read_number(c, v); /* objects and arrays fail here: not a record */
    }
}

/* Keys in the order mg_reqlog_format writes them, each as it appears there ("name":): the next
 * one is tried first, as bytes, before the key is read as a JSON string. */
typedef struct known_key {
    int index;    /* MG_DBROW_*, K_ID or K_TIME */
    char lit[17]; /* "\"name\":", 16 bytes at most, zero-padded: read as two words */
    size_t litlen;
} known_key_t;
/* names of 13 characters at most, so that "name": fits the two words (a longer one fails to
 * compile: negative array size) */
#define KEY(i, name)                                                                               \
    {                                                                                              \
        i, "\"" name "\":", sizeof(name) + 2 + 0 * sizeof(char[sizeof(name) <= 14 ? 1 : -1])       \
    }
static const known_key_t key_order[] = {
    KEY(K_TIME, "time"),
    KEY(K_ID, "id"),
    KEY(MG_DBROW_REQUEST_ID, "request_id"),
    KEY(MG_DBROW_CLIENT, "client"),
    KEY(MG_DBROW_PROTO, "proto"),
    KEY(MG_DBROW_METHOD, "method"),
    KEY(MG_DBROW_HOST, "host"),
    KEY(MG_DBROW_PATH, "path"),
    KEY(MG_DBROW_APP, "app"),
    KEY(MG_DBROW_ENV, "env"),
    KEY(MG_DBROW_SERVICE, "service"),
    KEY(MG_DBROW_POD, "pod"),
    KEY(MG_DBROW_FEATURES, "features"),
    KEY(MG_DBROW_FEATURES_HASH, "features_hash"),
    KEY(MG_DBROW_STATUS, "status"),
    KEY(MG_DBROW_REQ_BYTES, "req_bytes"),
    KEY(MG_DBROW_RESP_BYTES, "resp_bytes"),
    KEY(MG_DBROW_FALLBACK, "fallback"),
    KEY(MG_DBROW_RETRIES, "retries"),
    KEY(MG_DBROW_UPSTREAM_US, "upstream_us"),
    KEY(MG_DBROW_TOTAL_US, "total_us"),
    KEY(MG_DBROW_ERROR, "error"),
};
#define NKEYS (int)(sizeof(key_order) / sizeof(key_order[0]))

/* Is |k|'s literal at |c|? Two word compares where 16 bytes are left (every record has more
 * after its keys but the last), memcmp near the end. */
static bool literal_at(const cur_t *c, const known_key_t *k)
{
    size_t n = k->litlen;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (c->end - c->p >= 16) {
        uint64_t a0, a1, b0, b1;
        memcpy(&a0, c->p, 8), memcpy(&a1, c->p + 8, 8);
        memcpy(&b0, k->lit, 8), memcpy(&b1, k->lit + 8, 8);
        /* the first n bytes: byte i is bits 8i.. of its word */
        uint64_t m0 = n >= 8 ? ~0ull : (1ull << (8 * n)) - 1;
        uint64_t m1 = n >= 16 ? ~0ull : n <= 8 ? 0 : (1ull << (8 * (n - 8))) - 1;
        return ((a0 ^ b0) & m0) == 0 && ((a1 ^ b1) & m1) == 0;
    }
#endif
    return (size_t)(c->end - c->p) >= n && memcmp(c->p, k->lit, n) == 0;
}

/* The key literal at |c| is the next expected one: consumed, and its index returned; else -1
 * and |c| is unchanged. */
static int expected_key(cur_t *c, int *next)
{
    if (*next >= NKEYS)
        return -1;
    const known_key_t *k = &key_order[*next];
    if (!literal_at(c, k))
        return -1;
    c->p += k->litlen;
    (*next)++;
    return k->index;
}

/* The index of the (unescaped) key |k| (K_OTHER when it names no column); |*next| moves past
 * it in key_order. */
static int key_index(const char *k, size_t n, int *next)
{
    for (int j = 0; j < NKEYS; j++) {
        if (key_order[j].litlen - 3 == n && memcmp(key_order[j].lit + 1, k, n) == 0) {
            *next = j + 1;
            return key_order[j].index;
        }
    }
    return K_OTHER;
}

static bool parse_id(const val_t *v, uint8_t id[16])
{
    if (v->kind != V_STR || v->len != 32)
        return false;
    /* a digit's value + 1; 0 for any other byte (lower case only, as reqlog writes it) */
    static const uint8_t digit1[256] = {
        ['0'] = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ['a'] = 11, 12, 13, 14, 15, 16,
    };
    bool ok = true;
    for (int i = 0; i < 16; i++) {
        unsigned hi = digit1[(unsigned char)v->s[2 * i]],
                 lo = digit1[(unsigned char)v->s[2 * i + 1]];
        ok &= hi != 0 && lo != 0;
        id[i] = (uint8_t)((hi - 1) << 4 | (lo - 1));
    }
    return ok;
}

/* "2023-11-14T22:13:20.123456Z", the only shape reqlog writes, becomes the DATETIME(6) text
 * "2023-11-14 22:13:20.123456" in place. */
static bool parse_time(const val_t *v, mg_dbrow_t *row)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    if (v->kind != V_STR || v->len != sizeof(shape) - 1)
        return false;
    bool ok = true; /* no early exit: the loop has no branch to mispredict */
    for (size_t i = 0; i < sizeof(shape) - 1; i++)
        ok &= shape[i] == 'd' ? (unsigned char)(v->s[i] - '0') < 10 : v->s[i] == shape[i];
    if (!ok)
        return false;
    v->s[10] = ' ';
    row->time = v->s;
    return true;
}

size_t mg_dbrow_utf8_prefix(const char *s, size_t n, unsigned max_chars, size_t max_bytes)
{
    size_t i = 0;
    if (n <= max_chars) {
        i = n; /* no more characters than bytes: nothing to count */
    } else {
        for (unsigned chars = 0; i < n && chars < max_chars; chars++) {
            i++;
            while (i < n && ((unsigned char)s[i] & 0xc0) == 0x80)
                i++;
        }
    }
    if (i > max_bytes) {
        i = max_bytes;
        while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80) /* s[i] starts the cut character */
            i--;
    }
    return i;
}

static void set_col(mg_dbrow_val_t *out, const mg_dbrow_col_t *col, const val_t *v)
{
    switch (col->type) {
    case MG_DBROW_STR:
        if (v->kind == V_STR)
            *out = (mg_dbrow_val_t){v->s, mg_dbrow_utf8_prefix(v->s, v->len, col->maxlen, SIZE_MAX),
                                    0, false};
        break;
    case MG_DBROW_INT:
    case MG_DBROW_UINT:
        if (v->kind == V_INT)
            *out =
                (mg_dbrow_val_t){NULL, 0, col->type == MG_DBROW_UINT && v->n < 0 ? 0 : v->n, false};
        else if (v->kind != V_NULL)
            *out = (mg_dbrow_val_t){NULL, 0, 0, false}; /* a wrong type counts as 0 */
        break;
    case MG_DBROW_BOOL:
        if (v->kind != V_NULL)
            *out = (mg_dbrow_val_t){NULL, 0, v->kind == V_TRUE, false};
        break;
    }
}

static void set_defaults(mg_dbrow_t *row)
{
    for (int i = 0; i < MG_DBROW_NCOLS; i++) {
        bool null = mg_dbrow_cols[i].type == MG_DBROW_STR || mg_dbrow_cols[i].nullable;
        row->v[i] = (mg_dbrow_val_t){NULL, 0, 0, null};
    }
}

mg_err_t mg_dbrow_parse(char *line, size_t len, mg_dbrow_t *row)
{
    cur_t c = {line, line + len};
    uint32_t seen = 0; /* bit per known key: a repeated one is not a record */
    int next = 0;      /* key_order index of the key expected next */
    set_defaults(row);
    skip_ws(&c);
    if (c.p >= c.end || *c.p++ != '{')
        return MG_E_PROTO;
    skip_ws(&c);
    bool first = true;
    while (c.p < c.end && *c.p != '}') {
        val_t k, v;
        if (!first) {
            if (*c.p++ != ',')
                return MG_E_PROTO;
            skip_ws(&c);
        }
        first = false;
        int i = expected_key(&c, &next);
        if (i < 0) { /* another order, spacing or escapes: read the key as JSON */
            if (c.p >= c.end || *c.p++ != '"' || !read_string(&c, &k))
                return MG_E_PROTO;
            skip_ws(&c);
            if (c.p >= c.end || *c.p++ != ':')
                return MG_E_PROTO;
            i = key_index(k.s, k.len, &next);
        }
        skip_ws(&c);
        if (!read_value(&c, &v))
            return MG_E_PROTO;
        skip_ws(&c);
        if (i == K_OTHER)
            continue;
        if (seen & (1u << i))
            return MG_E_PROTO;
        seen |= 1u << i;
        if ((i == K_ID && !parse_id(&v, row->id)) || (i == K_TIME && !parse_time(&v, row)))
            return MG_E_PROTO;
        if (i < MG_DBROW_NCOLS)
            set_col(&row->v[i], &mg_dbrow_cols[i], &v);
    }
    if (c.p >= c.end)
        return MG_E_PROTO; /* no closing brace */
    c.p++;
    skip_ws(&c);
    if (c.p != c.end || !(seen & (1u << K_ID)) || !(seen & (1u << K_TIME)))
        return MG_E_PROTO;
    return MG_OK;
}
