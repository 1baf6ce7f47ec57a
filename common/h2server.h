/*
 * common/h2server.h - the server side of HTTP/2 and HTTP/1.1, shared by the gateway and the
 * runtime.
 *
 * One mg_srv_t per worker thread and event_base. It accepts connections from listening sockets
 * (cleartext or TLS), tells HTTP/2 prior knowledge from HTTP/1.1 by the connection preface (or
 * by ALPN under TLS), and turns both protocols into the same stream events for a handler:
 * on_request (headers complete), on_body, on_end (with trailers), on_drain and on_close. The
 * handler answers with mg_srv_respond / mg_srv_write / mg_srv_end, all streaming.
 *
 * Flow control, both ways: request body bytes handed to on_body count against the client's
 * window until the handler calls mg_srv_consume() (HTTP/2: WINDOW_UPDATE; HTTP/1.1: reading
 * pauses while more than MG_SRV_HIGH bytes are unconsumed), or, for bytes it buffers, until
 * mg_srv_keep() (the stream's window) and mg_srv_kept() (the connection's, as they leave its
 * buffer). Response bytes queue per stream;
 * the handler stops producing when mg_srv_pending() passes MG_SRV_HIGH and is called back with
 * on_drain once it falls below MG_SRV_LOW. mg_srv_pending() also reports MG_SRV_HIGH while
 * the connection holds more than connection_buffer bytes for its client across its streams.
 * A connection whose output makes no progress for client_write_ms is closed.
 *
 * Ownership: the server owns streams; a stream pointer is valid from on_request until on_close
 * returns. HTTP/1.1 requests on one connection are handled one at a time, so pipelined
 * requests are answered in order; a cleartext HTTP/1.1 client that half-closes (shutdown
 * SHUT_WR) still gets the answers to those it sent whole, then the close. Not thread-safe:
 * everything runs on the worker's loop.
 */
#ifndef MG_COMMON_H2SERVER_H
#define MG_COMMON_H2SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "common/arena.h"
#include "common/err.h"

#define MG_SRV_HIGH (256 * 1024) /* per-stream buffered bytes above which producers pause */
#define MG_SRV_LOW (64 * 1024)   /* ... and below which they resume */
/* HTTP/1.1 chunk extension bytes allowed in one chunk, both ways (Node's bound) */
#define MG_H1_MAX_CHUNK_EXT 16384

/* How a field goes into HPACK (RFC 7541) on an HTTP/2 hop. */
typedef enum mg_hpack {
    MG_HPACK_INDEX = 0, /* as the encoder sees fit */
    MG_HPACK_UNIQUE,    /* a value unique per request (ids): never indexed, as it would only churn
                         * the table; upstream.c indexes one now and then for its name's sake */
    MG_HPACK_SENSITIVE, /* its sender used the never-indexed form, which every hop must keep
                         * (RFC 7541 6.2.3): never indexed, not even once */
    MG_HPACK_REPEAT,    /* a large value that went out before and may again (a user's features):
                         * indexed only where its entry takes at most a quarter of the table */
} mg_hpack_t;

typedef struct mg_hdr {
    const char *name; /* lowercase (requests and responses); NUL-terminated */
    const char *value;
    size_t name_len;
    size_t value_len;
    mg_hpack_t hpack;
} mg_hdr_t;

/* Whether |h| goes out as an HPACK never-indexed literal. */
static inline bool mg_hdr_no_index(const mg_hdr_t *h)
{
    return h->hpack != MG_HPACK_INDEX;
}

typedef struct mg_srv mg_srv_t;
typedef struct mg_srv_stream mg_srv_stream_t;

typedef struct mg_srv_req {
    const char *method;
    const char *scheme;    /* "http" or "https" */
    const char *authority; /* :authority, or Host for HTTP/1.1; "" when absent */
    bool authority_absent; /* neither was sent (an HTTP/1.0 request): the log says null */
    /* The Host field of an HTTP/1.1 request whose absolute-form target gives |authority|
     * (RFC 9112 3.2.2), else NULL. Not routed on, but the handler checks it as it checks
     * |authority|: an invalid Host is a 400 whatever the target (RFC 9112 3.2). */
    const char *host_field;
    const char *path;
    mg_hpack_t authority_hpack, path_hpack; /* SENSITIVE when the client sent it never-indexed */
    const mg_hdr_t *hdrs; /* regular fields, in order; pseudo-headers and Host excluded */
    size_t nhdrs;
    bool head_whole;        /* every field was read: false for some of on_reject's (a parse error, a
                             * head over the limits), whose |hdrs| may lack the last ones */
    int64_t content_length; /* -1 when not given */
    bool has_body;          /* false when the headers ended the request */
    const char *proto;      /* "h2", "h2c", "http/1.1", or "http/1.0" once its head was read */
    const char *client;     /* "ip:port" of the peer */
    const char *client_ip;
    const uint8_t *client_addr; /* client_ip as 16 bytes, IPv4 as IPv4-mapped IPv6 */
} mg_srv_req_t;

typedef struct mg_srv_handler {
    void (*on_request)(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud);
    void (*on_body)(mg_srv_stream_t *s, const uint8_t *data, size_t len);
    void (*on_end)(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t ntrailers);
    void (*on_drain)(mg_srv_stream_t *s);
    /* The stream is finished (|complete|) or aborted (client reset, connection lost). The
     * handler must drop every reference to |s| before returning. */
    void (*on_close)(mg_srv_stream_t *s, bool complete);
    /* Optional: a request the server answers itself (malformed HTTP/1.1, header limits), so
     * that it is logged like any other; also an HTTP/2 stream nghttp2 reset for a malformed
     * head (status 400, |code| "malformed_request"; no answer but the RST_STREAM). |req|
     * fields may be "" when parsing stopped early, but |authority| is NULL when no host was
     * read (an empty Host is ""). |rid|: the id the answer quotes (see request_id), or NULL;
     * |resp_bytes|: the answer's body, written right after this call (0 for none). */
    void (*on_reject)(void *ud, const mg_srv_req_t *req, int status, const char *code,
                      const char *rid, uint64_t resp_bytes);
    /* Optional, with on_reject: writes the request id such an answer quotes into |rid| (|cap|
     * bytes), before it is logged and written. */
    void (*request_id)(void *ud, char *rid, size_t cap);
    /* Optional: the server refuses the rest of a request it handed over already (its chunked
     * body is malformed, its trailers are over the limits) and will read no more of it. The
     * handler ends it as one request, logged once with its own request id: it answers |status|
     * (mg_srv_error, quoting |message|) when no answer started, else resets the stream (the
     * server closes an HTTP/1.1 connection then). Without it, the server calls on_close and
     * answers and logs the refusal itself (with on_reject). */
    void (*on_refused)(mg_srv_stream_t *s, int status, const char *code, const char *message);
} mg_srv_handler_t;

typedef struct mg_srv_conf {
    uint32_t max_concurrent_streams;
    uint32_t max_header_list_size;
    uint32_t header_table_size; /* HPACK table a client may fill with what repeats
                                 * (SETTINGS_HEADER_TABLE_SIZE); 0 = the default 4096 */
    uint32_t max_headers;
    uint32_t stream_window;
    uint32_t connection_window;
    uint32_t connection_buffer; /* response bytes held per connection before producers
                                 * pause; 0 = no limit */
    uint32_t client_idle_ms;    /* close connections idle this long; 0 = never */
    bool proxy_protocol; /* every connection starts with a PROXY header (common/proxyproto.h),
                          * whose client address it takes: one behind an L4 load balancer */
    bool h1_answer_half_closed; /* a cleartext HTTP/1.1 client's EOF ends its input only: the
                                 * requests it sent whole are answered (see h1_half_closed);
                                 * false: the EOF is its close, and its requests are called off */
    uint32_t client_write_ms;   /* close connections whose output stalls this long; 0 = never */
    uint32_t max_conns;         /* client connections held at once; at the limit the listeners
                                 * pause until one closes; 0 = no limit */
    size_t stream_memory;    /* arena cap per stream */
} mg_srv_conf_t;

/* Creates a server on |base|. |tls| (may be NULL) is used for listeners added with tls=true and
 * must come from mg_srv_tls_ctx_new; the server takes its own reference. |ud| is passed to
 * on_request. */
mg_srv_t *mg_srv_new(struct event_base *base, const mg_srv_conf_t *conf,
                     const mg_srv_handler_t *h, void *ud, SSL_CTX *tls);

/* Accepts connections on the bound, listening, non-blocking socket |fd| (the server owns it). */
mg_err_t mg_srv_listen(mg_srv_t *srv, int fd, bool tls);

/* Graceful shutdown: close listeners, GOAWAY every HTTP/2 connection, close idle HTTP/1.1
 * connections and the others after their current response. */
void mg_srv_shutdown(mg_srv_t *srv);

/* Connections accepted since |srv| was made (an activity mark); its loop's thread only. */
uint64_t mg_srv_accepted(const mg_srv_t *srv);

/* Number of open client connections. Any thread may read it (for metrics). */
size_t mg_srv_nconns(const mg_srv_t *srv);

/* How many times the listeners paused: at max_conns, and after accept() failed (out of
 * descriptors or memory). Any thread may read them (for metrics). */
void mg_srv_accept_pauses(const mg_srv_t *srv, unsigned long *at_limit, unsigned long *on_error);

/* TLS handshakes that ended in a new session (|full|) or a resumed one, and connections whose
 * handshake broke on an error (|failed|: not TLS, a bad record, a reset; a probe that connects
 * and closes is none of these). Any thread may read them (for metrics). */
void mg_srv_tls_handshakes(const mg_srv_t *srv, unsigned long *full, unsigned long *resumed,
                           unsigned long *failed);

/* Frees the streams kept for reuse: the worker is idle. */
void mg_srv_trim(mg_srv_t *srv);

/* Closes everything at once and frees |srv| (in-flight streams get on_close(false)). */
void mg_srv_free(mg_srv_t *srv);

/* TLS context for the listeners: TLS 1.2+, modern ciphers, ALPN h2 and http/1.1.
 * Returns NULL and writes a message naming the file and the reason into |err|. */
SSL_CTX *mg_srv_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen);

/* Whether SSL_free_buffers refuses to free a half-read record in OpenSSL |version| (an
 * OPENSSL_VERSION_NUMBER, 0xMNN00PP0): 3.0.14, 3.1.6, 3.2.2, 3.3.1 and later (CVE-2024-4741).
 * Where it does not, the connections release their buffers after each record instead. */
bool mg_srv_free_buffers_safe(unsigned long version);

/* Writes "<subject>, valid until <date>" of |ctx|'s certificate into |buf|, and that date as
 * Unix time into *not_after (0 when unknown); true if it has expired. */
bool mg_srv_tls_ctx_describe(SSL_CTX *ctx, char *buf, size_t len, int64_t *not_after);

/* New connections on TLS listeners use |tls| from now on; open ones keep the context they
 * started with. The server holds its own reference, as mg_srv_new does. */
void mg_srv_set_tls(mg_srv_t *srv, SSL_CTX *tls);

/* --- per stream --- */
void mg_srv_set_data(mg_srv_stream_t *s, void *data);
void *mg_srv_data(const mg_srv_stream_t *s);
/* From inside on_request: the stream's later events (on_body, on_end, on_drain, on_close) go to
 * |h| instead of the server's handler. Lets one listener dispatch requests to sub-handlers (the
 * admin listener's mounts). */
void mg_srv_set_handler(mg_srv_stream_t *s, const mg_srv_handler_t *h);
mg_arena_t *mg_srv_arena(mg_srv_stream_t *s);

/* Sends the response head. |hdrs| must not hold pseudo-headers or hop-by-hop fields. With |end|,
 * the response has no body. Returns MG_OK or MG_E_PROTO when a head was already sent. */
mg_err_t mg_srv_respond(mg_srv_stream_t *s, int status, const mg_hdr_t *hdrs, size_t n, bool end);

/* Interim (1xx) response heads a stream passes on at most, before its final response: more
 * are refused (MG_E_LIMIT), so that a pod cannot flood a client with them. */
#define MG_SRV_MAX_INTERIM 8

/* Sends an interim response head (RFC 9110 15.2), such as 103 Early Hints, before the final
 * one. |status| is 102 to 199: 100 Continue is the server's own (Expect: 100-continue) and 101
 * is never sent. |hdrs| as for mg_srv_respond, copied; a content-length is left out. HTTP/2: a
 * HEADERS frame without END_STREAM. HTTP/1.1: the head is written at once, since a connection
 * answers one request at a time; never to an HTTP/1.0 client, which cannot take it. Returns
 * MG_OK; MG_E_PROTO when the final head was already sent, |status| is not one of those, the
 * client speaks HTTP/1.0 or closed the stream (nothing is sent); MG_E_LIMIT after
 * MG_SRV_MAX_INTERIM of them on this stream; MG_E_NOMEM when memory runs out (HTTP/2). None of
 * it comes from the stream's arena, which keeps its room for the final head. */
mg_err_t mg_srv_interim(mg_srv_stream_t *s, int status, const mg_hdr_t *hdrs, size_t n);

/* Queues |len| body bytes (copied). */
mg_err_t mg_srv_write(mg_srv_stream_t *s, const void *data, size_t len);

/* Ends the response, with optional trailers. */
mg_err_t mg_srv_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n);

/* Response bytes queued for this stream and not yet handed to the socket. */
size_t mg_srv_pending(const mg_srv_stream_t *s);

/* The handler is done with |n| request body bytes: the client may send that many more. */
void mg_srv_consume(mg_srv_stream_t *s, size_t n);

/*
 * The handler took |n| request body bytes into a buffer of its own: the stream may send that
 * many more (HTTP/2: its stream window), but the connection's window opens only as they leave
 * that buffer, told by mg_srv_kept(). A client's connection so holds at most
 * limits.connection_window of request bodies in the gateway, however many of its streams go
 * to pods that do not read. HTTP/1.1: as mg_srv_consume().
 */
void mg_srv_keep(mg_srv_stream_t *s, size_t n);

/* The handler now holds |held| bytes of what it kept (its buffer's length; bytes leave it in
 * order): the connection's window opens by what left. Never more than mg_srv_keep() took. */
void mg_srv_kept(mg_srv_stream_t *s, size_t held);

/* Aborts the stream: HTTP/2 RST_STREAM (INTERNAL_ERROR), HTTP/1.1 closes the connection.
 * on_close(false) follows. */
void mg_srv_reset(mg_srv_stream_t *s);

/* Answers with a JSON error {"error":{"code","message","request_id"}} and ends the stream; a
 * gRPC call gets a Trailers-Only answer instead (grpc-status from |status|, grpc-message).
 * |extra| (may be NULL, |nextra| 0) adds response headers. */
mg_err_t mg_srv_error(mg_srv_stream_t *s, int status, const char *code, const char *message,
                      const char *request_id, const mg_hdr_t *extra, size_t nextra);

/* True once the response head was sent. */
bool mg_srv_responded(const mg_srv_stream_t *s);

/* In on_close(false): why the stream ended, when it was neither the client's reset nor a lost
 * connection: "client_protocol_error" (nghttp2 reset a stream the client broke: a body longer
 * or shorter than its content-length...), "client_write_timeout" (the client took nothing for
 * client_write_ms), "shutdown" (the server was freed with it open: the drain deadline). NULL
 * otherwise. */
const char *mg_srv_close_why(const mg_srv_stream_t *s);

/* Response body bytes written toward the client: put in DATA frames (HTTP/2) or in the
 * connection's output (HTTP/1.1), the gateway's own error bodies included; not what was
 * still waiting in the stream when it ended (a client that read nothing). */
uint64_t mg_srv_body_sent(const mg_srv_stream_t *s);

/* --- shared with the HTTP/2 client side (gateway/upstream.c) --- */

/* The decimal number that starts |s| (|len| bytes): a content-length or :status value, which
 * nghttp2 and llhttp have checked. -1 when there is no digit or it overflows. strtoll costs
 * ~125 instructions here, three times per request. */
static inline int64_t mg_parse_decimal(const char *s, size_t len)
{
    int64_t v = 0;
    size_t i = 0;
    for (; i < len && (unsigned)(s[i] - '0') < 10u; i++) {
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    return i ? v : -1;
}

/* Copies a field into |a| and appends it to the array *|arr| (*|n| used of *|cap|), which starts
 * small and doubles inside the arena, so a typical request needs no heap allocation. The name
 * is lowercased when |lower| (HTTP/1.1 names may have any case; nghttp2 has checked that
 * HTTP/2's are lowercase). |sensitive|: the field came never-indexed. Returns false when |max|
 * fields are reached or the arena is full. */
bool mg_hdrs_push(mg_arena_t *a, mg_hdr_t **arr, size_t *n, size_t *cap, size_t max,
                  const char *name, size_t nlen, const char *value, size_t vlen, bool lower,
                  bool sensitive);

/* Sets |nv| to a field whose bytes are copied into |a|, flagged so that nghttp2 neither copies
 * nor lowercases them again (the arena outlives the frame: it is the stream's). The name must
 * be lowercase. Returns false when the arena is full. */
bool mg_nv_copy(mg_arena_t *a, nghttp2_nv *nv, const char *name, size_t nlen, const char *value,
                size_t vlen, bool never_index);

/* The |n| fields |h| as an array of nghttp2_nv in |a|, copied with mg_nv_copy (never-indexed
 * as mg_hdr_no_index says). NULL when the arena is full. */
nghttp2_nv *mg_nv_copy_hdrs(mg_arena_t *a, const mg_hdr_t *h, size_t n);

/* A connection-specific field (RFC 9110 7.6.1, RFC 9113 8.2.2): connection, keep-alive,
 * proxy-connection, te, transfer-encoding, upgrade. Never forwarded as is. Any case. */
bool mg_field_connection_specific(const char *name, size_t len);

/* A field that must not travel in a trailer section (RFC 9110 6.5.1, RFC 9113 8.2.2): the
 * connection-specific ones, content-length, host, trailer and pseudo-fields. Dropped where
 * trailers arrive, so neither side forwards them: an HTTP/2 peer may reset a stream whose
 * trailers carry a connection-specific field. Any case. */
bool mg_trailer_forbidden(const char *name, size_t len);

/* The field named |name| (lowercase, |len| bytes) among the |n| fields |h|, when it is one
 * value: for fields that name one thing, such as the unit id of features and sticky splits
 * (x-user-id). NULL when the field is absent, and also when it is ambiguous: present more
 * than once, or holding a comma-separated list (RFC 9110 5.3 lets any hop join the field lines
 * "a" and "b" into "a, b", so both forms must mean the same); then *|ambiguous| (may be NULL)
 * is set, else cleared. An empty value is returned as it is. Allocates nothing. */
const mg_hdr_t *mg_field_single(const mg_hdr_t *h, size_t n, const char *name, size_t len,
                                bool *ambiguous);

/* True when a Transfer-Encoding value is exactly "chunked" (any case, optional spaces around).
 * llhttp also takes "gzip, chunked", whose gzip coding nobody would undo: HTTP/1.1 requests
 * with another coding get 501, and responses with one are a pod's protocol error. */
bool mg_field_is_chunked(const char *v, size_t n);

/* Cuts the whitespace (SP, HTAB) around an HTTP/1.1 field value, which is no part of it (RFC
 * 9112 5.1): llhttp keeps the trailing one, and HTTP/2 peers refuse a value with it (RFC 9113
 * 8.2.1). */
static inline void mg_field_trim(const char **v, size_t *n)
{
    while (*n > 0 && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t'))
        (*n)--;
    while (*n > 0 && (**v == ' ' || **v == '\t')) {
        (*v)++;
        (*n)--;
    }
}

/* Walks a comma-separated field value (a list: RFC 9110 5.6.1) ending at |end|: sets |*el| and
 * |*n| to the next element without the whitespace around it (maybe empty) and moves |*v| past
 * it. False once |*v| reaches |end|. */
static inline bool mg_field_list_next(const char **v, const char *end, const char **el, size_t *n)
{
    if (*v >= end)
        return false;
    const char *comma = memchr(*v, ',', (size_t)(end - *v));
    *el = *v;
    *n = (size_t)((comma ? comma : end) - *v);
    mg_field_trim(el, n);
    *v = comma ? comma + 1 : end;
    return true;
}

/* Moves frames from |h2| into |bev|'s output until nghttp2 has nothing more or the output holds
 * |high| bytes. Frames are coalesced so that one socket write (one TLS record) carries many.
 * With |piece| > 0, frames added to an empty output start a contiguous piece of that many
 * bytes, which later calls fill before a new one is started. Returns 0, or the nghttp2 error. */
struct nghttp2_session;
struct bufferevent;
int mg_h2_send(struct nghttp2_session *h2, struct bufferevent *bev, size_t high, size_t piece);

/* For a data source callback whose body is complete: sets EOF, and when |n| trailers are given
 * keeps the stream open for them and submits them (nghttp2's documented way). */
void mg_h2_end_data(nghttp2_session *h2, int32_t id, uint32_t *flags,
                    const nghttp2_nv *trailers, size_t n);

/* Sees the bytes before nghttp2 does (the frame headers). Returns how many of the |n| nghttp2
 * gets; fewer than |n|: reading stops after them. */
typedef size_t (*mg_h2_scan_fn)(void *arg, const uint8_t *p, size_t n);

/* Feeds every byte of |in| to |h2| (draining what it took), stopping early once *|stop| is set
 * by a callback (the connection died) or |scan| (NULL: none) said so. Returns 0, or the
 * nghttp2 error; then |in| is emptied. */
struct evbuffer;
int mg_h2_recv(struct nghttp2_session *h2, struct evbuffer *in, const bool *stop,
               mg_h2_scan_fn scan, void *arg);

/* Whether the first |n| bytes a pod sent on an h2c connection are an HTTP/1.x answer: it read
 * our preface as a bad request, so the service's protocol is wrong. The words for the log: */
bool mg_h2_answered_in_h1(const void *first, size_t n);
#define MG_H2_ANSWERED_IN_H1 "answered in HTTP/1.x, not h2c (is its service's protocol \"http1\"?)"

#endif /* MG_COMMON_H2SERVER_H */
