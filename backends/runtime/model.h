/*
 * backends/runtime/model.h - one interface for every model kind of the serving runtime.
 *
 * A kind (xgboost, linear, embedding, ...) is one file that fills an mg_model_kind_t: load a
 * file, describe what one input item must look like, predict a batch, free. Everything else --
 * HTTP, JSON and Open Inference Protocol v2 parsing, batching, hot swap -- is written once,
 * against this header. Adding a kind = one kind_<name>.c + one line in model.c's kind table.
 *
 * Objects and ownership
 *   mg_model_t        a loaded model. Reference-counted (atomic): mg_model_load() returns it
 *                     with one reference; every in-flight request holds one (mg_model_ref);
 *                     the last mg_model_unref() frees it. A switch loads the new model beside
 *                     the old one (on any thread: loading touches no global state), warms it
 *                     up (mg_model_warmup), swaps the runtime's current pointer atomically and
 *                     drops its reference on the old one, which dies when its last request ends.
 *   mg_input_view_t   a batch of n input items, read-only, borrowed: it points into the request
 *                     (jansson strings, a v2 binary tensor) or into an mg_input_buf_t. Numbers
 *                     are never copied when they already sit in one contiguous buffer.
 *   mg_outputs_t      where predict writes: caller-owned growable buffers, reused from batch to
 *                     batch (one per worker thread). They grow to the largest batch seen and
 *                     then stop allocating.
 *
 * Threading
 *   mg_model_predict() may be called from any number of threads at once on one model. A kind
 *   declares in its description whether its predict is reentrant (desc.thread_safe); when it
 *   is not, mg_model_predict() serialises calls on that model with a mutex, so the runtime
 *   never has to know. All shipped kinds are reentrant: the model is read-only after load and
 *   everything per-call lives in the caller's mg_outputs_t. (XGBoost: prediction is thread-safe
 *   for gbtree/dart boosters since 1.4 -- doc/prediction.rst "Thread Safety" -- when nothing
 *   changes the booster concurrently and each call has its own proxy DMatrix; kind_xgboost
 *   passes none, so libxgboost makes one per call, and reports gblinear as not thread-safe.)
 *   BLAS: the kinds call OpenBLAS from the worker threads. Run the runtime with
 *   OPENBLAS_NUM_THREADS=1 (or call openblas_set_num_threads(1) in main) so that concurrency
 *   comes from the workers and OpenBLAS does not start its own pool per call.
 *
 * Determinism: every kind computes each item on its own (no cross-item BLAS-3 call), so an
 * item's answer does not depend on which other requests were coalesced into its batch.
 *
 * Errors (mg_err_t, common/err.h): MG_E_PROTO = the caller's input is wrong (HTTP 400; the
 * message says what was expected); MG_E_NOTFOUND = no such file or kind; MG_E_CONFIG = a model
 * file that cannot be used; MG_E_IO = the model failed at run time (HTTP 500); MG_E_NOMEM.
 */
#ifndef MG_BACKENDS_RUNTIME_MODEL_H
#define MG_BACKENDS_RUNTIME_MODEL_H

#include <float.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/err.h"

/* ---------------------------------------------------------------------------------------- */
/* What a model expects and answers                                                          */

/* What one input item is, as a client writes it in JSON. */
typedef enum mg_input_type {
    MG_INPUT_FLOATS = 0, /* a list of numbers (ints are accepted and converted) */
    MG_INPUT_INTS = 1,   /* a list of integers */
    MG_INPUT_STRING = 2, /* one string */
    MG_INPUT_BYTES = 3,  /* binary data: a base64 string in JSON, a BYTES element in v2 */
    MG_INPUT_STRINGS = 4 /* a list of strings */
} mg_input_type_t;

/* What one output item is. */
typedef enum mg_output_kind {
    MG_OUTPUT_LABEL = 0,  /* classification: output = the predicted label (a JSON number or
                             string), score = its probability, values = one probability per
                             class (desc.n_classes of them, in desc.class order) */
    MG_OUTPUT_VALUE = 1,  /* regression: output = the number (or a list of numbers for a
                             multi-output model), score = the (first) number, no values */
    MG_OUTPUT_RANKING = 2 /* top-K retrieval: output = [id, ...] best first, score = the best
                             item's score, values = the K scores in the same order */
} mg_output_kind_t;

/* desc.accepts: the item forms an MG_INPUT_STRING model takes besides one JSON string (a text,
   MG_DTYPE_STR). 0 = the string only; other input types ignore it. */
#define MG_ACCEPT_BYTES 0x1u   /* {"b64": "<base64>"} in JSON: bytes (MG_DTYPE_BYTES) */
#define MG_ACCEPT_STRINGS 0x2u /* a list of strings, maybe empty (MG_DTYPE_STRS), e.g. tokens */

typedef struct mg_model_desc {
    mg_input_type_t input;
    size_t input_len; /* elements per item (numbers or strings); 0 = any length */
    unsigned accepts; /* MG_INPUT_STRING: MG_ACCEPT_* bitmask of other item forms */
    /* An absent or empty input is accepted: the kind then takes the item from the user
       features (embedding: the user's vector). */
    bool input_optional;
    mg_output_kind_t output;
    size_t n_classes; /* MG_OUTPUT_LABEL: number of classes (>= 2); else 0 */
    /* MG_OUTPUT_LABEL: the n_classes labels as compact JSON fragments ("3", "\"cat\""), in
       the order of the values; owned by the model. NULL otherwise. */
    const char *const *classes;
    /* predict reads its option (uses_option) / the user features (uses_features). When false
       the argument is ignored, so a batcher may coalesce requests whatever theirs are. */
    bool uses_option;
    bool uses_features;
    bool string_ids;  /* MG_OUTPUT_RANKING: the items' ids are strings, not integers */
    bool thread_safe; /* predict may run concurrently on one model (see Threading) */
} mg_model_desc_t;

/* ---------------------------------------------------------------------------------------- */
/* Input: a batch of items, borrowed                                                         */

/* Element type of an item's data. */
typedef enum mg_dtype {
    MG_DTYPE_NONE = 0, /* an absent/empty item (len 0): only for desc.input_optional */
    MG_DTYPE_F32 = 1,
    MG_DTYPE_F64 = 2,
    MG_DTYPE_I32 = 3,
    MG_DTYPE_I64 = 4,
    MG_DTYPE_STR = 5,   /* one UTF-8 string: data = chars (not NUL-terminated), len = bytes */
    MG_DTYPE_BYTES = 6, /* binary: data = bytes, len = bytes */
    MG_DTYPE_STRS = 7   /* a list of strings: data = const mg_bytes_t[len] */
} mg_dtype_t;

typedef struct mg_bytes {
    const char *p;
    size_t len;
} mg_bytes_t;

typedef struct mg_input_item {
    mg_dtype_t dtype;
    const void *data; /* len elements of dtype (numbers, mg_bytes_t) or len bytes (STR, BYTES) */
    size_t len;
} mg_input_item_t;

typedef struct mg_input_view {
    size_t n;                     /* items in the batch, >= 1 */
    const mg_input_item_t *items; /* n items */
    bool batch;                   /* the request used the batch form ("inputs": [...]), so
                                     messages say inputs[i]; else "input" */
    /* A hint, set when all n items are numbers of one dtype and length |dense_width| lying
       back to back in one buffer (dense == items[0].data, row i at dense + i * width): a v2
       tensor of shape [n, width], or a JSON batch parsed by mg_input_from_json. NULL when not
       so; kinds that need a matrix then gather rows with mg_input_matrix(). */
    const void *dense;
    mg_dtype_t dense_dtype;
    size_t dense_width;
} mg_input_view_t;

/* Storage for parsed inputs, owned by the caller and reused (grows, never shrinks until
   mg_input_buf_clear). Zero-initialise it, or use mg_input_buf_init. */
typedef struct mg_input_buf {
    size_t max_items; /* refuse batches larger than this (0 = no limit) */
    mg_input_item_t *_items;
    size_t _items_cap;
    unsigned char *_data; /* numbers, decoded bytes and mg_bytes_t arrays */
    size_t _data_cap;
} mg_input_buf_t;

void mg_input_buf_init(mg_input_buf_t *b, size_t max_items);
void mg_input_buf_clear(mg_input_buf_t *b);

/*
 * Fills |out| from a POST /v1/predict body: {"input": X} or {"inputs": [X, ...]} (other keys,
 * such as "option", are the caller's business). Checks every item against |d| and writes the
 * exact client message into |err| on failure, e.g.
 *   input: expected 64 numbers, got 63
 *   inputs[2]: expected a list of numbers, got a string
 *   inputs[0][5]: expected a number, got a string
 *   body: expected "input" (a list of numbers) or "inputs" (a list of them)
 * Numbers of a whole batch go into one contiguous F64 (or I64 for MG_INPUT_INTS) array in |buf|
 * (out->dense is set when every item has the same length); strings point into |body| (keep it
 * alive while |out| is used); bytes are base64-decoded into |buf|. An absent, null or empty
 * input is one MG_DTYPE_NONE item when d->input_optional. A string model with d->accepts also
 * takes, per item, a list of strings (MG_ACCEPT_STRINGS) or {"b64": "..."} (MG_ACCEPT_BYTES):
 * a JSON string alone cannot say whether it is text or base64.
 * Returns MG_OK, MG_E_PROTO (message in |err|; a batch larger than buf->max_items is one too:
 * "inputs: at most 64 inputs per request, got 100"), or MG_E_NOMEM.
 */
mg_err_t mg_input_from_json(const mg_model_desc_t *d, const json_t *body, mg_input_buf_t *buf,
                            mg_input_view_t *out, char *err, size_t errlen);

/*
 * Fills |out| from one Open Inference Protocol v2 request tensor, JSON form:
 * {"name": ..., "shape": [...], "datatype": "FP32"|"FP64"|"INT32"|"INT64"|"BYTES",
 *  "data": [...] (flat or nested)}. |where| names the tensor in messages ("inputs[0]").
 * Shape [w] is one item of w elements, [n, w...] is n items of the product of the remaining
 * dimensions; a BYTES tensor for a string/bytes model has shape [n] (n items). Datatype and
 * shape are checked against |d| and against the data:
 *   inputs[0].datatype: expected FP32, FP64, INT32 or INT64, got "BYTES"
 *   inputs[0].shape: expected [n, 64], got [2, 63]
 *   inputs[0].data: expected 128 values for shape [2, 64], got 127
 * FP32 data is parsed into an F32 array, FP64 into F64, INT32/INT64 into I64: the kinds see
 * the client's precision. Returns as mg_input_from_json.
 */
mg_err_t mg_input_from_v2_json(const mg_model_desc_t *d, const json_t *tensor, const char *where,
                               mg_input_buf_t *buf, mg_input_view_t *out, char *err, size_t errlen);

/*
 * The same for a v2 tensor whose data is already binary (the binary-data extension, or a
 * gRPC raw_input_contents): |data| holds |nbytes| bytes of |dtype| (little-endian, numbers) in
 * row-major order, or, for BYTES, elements each prefixed by a 4-byte little-endian length.
 * Numbers are not copied: out->dense points into |data| (keep it alive while |out| is used),
 * unless |data| is misaligned for its type, which costs one copy into |buf|. BYTES elements
 * point into |data| too. |datatype| is the v2 name ("FP32", ...).
 */
mg_err_t mg_input_from_tensor(const mg_model_desc_t *d, const char *datatype, const int64_t *shape,
                              size_t ndim, const void *data, size_t nbytes, const char *where,
                              mg_input_buf_t *buf, mg_input_view_t *out, char *err, size_t errlen);

/*
 * Checks a view filled by other means (a batcher that merged requests) against |d|: type and
 * length of every item. Writes the first problem into |err| ("inputs[3]: expected 64 numbers,
 * got 10") and returns MG_E_PROTO, or returns MG_OK.
 */
mg_err_t mg_input_check(const mg_model_desc_t *d, const mg_input_view_t *in, char *err,
                        size_t errlen);

/* Writes "input" or "inputs[i]" (the view's own naming) into |buf|; returns |buf|. */
const char *mg_input_where(const mg_input_view_t *in, size_t i, char *buf, size_t len);

/* ---------------------------------------------------------------------------------------- */
/* Output: caller-owned, reusable buffers                                                    */

typedef struct mg_output_item {
    mg_err_t err;     /* MG_OK, or MG_E_PROTO when this item alone was refused (its message,
                         already prefixed with input/inputs[i], is the json fragment) */
    size_t where_len; /* refused items: length of that "inputs[i]: " prefix, so that a batcher
                         that merged requests can replace it with the request's own index */
    size_t json_off;  /* the compact JSON fragment of the output: json + json_off, json_len */
    size_t json_len;  /* bytes, excluding the NUL that follows it */
    double score;
    size_t values_off; /* per-class probabilities or top-K scores: values + values_off */
    size_t n_values;   /* 0 when none */
} mg_output_item_t;

#define MG_OUT_SCRATCH_SLOTS 4 /* scratch regions per predict call (mg_out_scratch) */

typedef struct mg_outputs {
    size_t n;                /* items written by the last predict */
    mg_output_item_t *items; /* n items */
    char *json;              /* fragments, each NUL-terminated, back to back */
    double *values;
    char err[256]; /* the message when predict failed as a whole */
    /* capacities, the item being written and the kind's scratch space: private */
    size_t _items_cap, _json_len, _json_cap, _values_len, _values_cap;
    size_t _cur_json, _cur_values;        /* where the item being written started */
    void *_scratch[MG_OUT_SCRATCH_SLOTS]; /* regions kept across calls */
    size_t _scratch_cap[MG_OUT_SCRATCH_SLOTS];
    unsigned _scratch_used; /* regions handed out since mg_out_begin */
} mg_outputs_t;

void mg_outputs_init(mg_outputs_t *o);
void mg_outputs_clear(mg_outputs_t *o); /* frees the buffers; o can be reused after init */

/* The output fragment of item i, NUL-terminated. */
static inline const char *mg_output_json(const mg_outputs_t *o, size_t i)
{
    return o->json + o->items[i].json_off;
}

static inline const double *mg_output_values(const mg_outputs_t *o, size_t i)
{
    return o->values + o->items[i].values_off;
}

/* ---------------------------------------------------------------------------------------- */
/* Kinds                                                                                     */

typedef struct mg_model_kind {
    const char *name; /* "xgboost", "linear", "embedding": the registry's model kind */
    /* Loads the file at |path|. |options| is a JSON object (never NULL; may be empty) of
       kind-specific load options; unknown keys must be refused. On success stores the kind's
       state in *impl and returns MG_OK; else writes a message naming the path and the cause
       into |err| and returns MG_E_NOTFOUND, MG_E_CONFIG or MG_E_NOMEM. Must not touch global
       state (another model of the same kind is serving meanwhile). */
    mg_err_t (*load)(const char *path, const json_t *options, void **impl, char *err,
                     size_t errlen);
    /* Fills |d|; pointers in it live as long as |impl|. */
    void (*describe)(const void *impl, mg_model_desc_t *d);
    /* Predicts in->n items that mg_input_check accepted; |option| (a JSON object or NULL) and
       |features| (the user features object or NULL) apply to the whole batch. Writes
       out->n = in->n items with mg_out_* below. Returns MG_OK (some items may still carry an
       item error), MG_E_PROTO for a bad option (message in out->err), MG_E_IO when the model
       failed (message in out->err), MG_E_NOMEM. */
    mg_err_t (*predict)(const void *impl, const mg_input_view_t *in, const json_t *option,
                        const json_t *features, mg_outputs_t *out);
    void (*free)(void *impl);
} mg_model_kind_t;

/* The shipped kinds (kind_xgboost.c, kind_linear.c, kind_embedding.c, kind_text.c). */
extern const mg_model_kind_t mg_kind_xgboost;
extern const mg_model_kind_t mg_kind_linear;
extern const mg_model_kind_t mg_kind_embedding;
extern const mg_model_kind_t mg_kind_text;

/* The kind called |name|, or NULL. The table is static: kinds are compiled in. */
const mg_model_kind_t *mg_model_kind_find(const char *name);
/* The kinds' names, NULL-terminated, e.g. for "valid kinds: ..." messages. */
const char *const *mg_model_kind_names(void);
/* Writes the kinds' names into |buf| (|cap| bytes, truncated to fit) for those messages, each
 * after a space: " xgboost linear ...". Returns |buf|. */
const char *mg_model_kind_list(char *buf, size_t cap);

/* Helpers for kinds writing outputs. mg_out_begin() starts a batch of n items (resets the
   buffers, keeps their memory); mg_out_printf()/mg_out_write() append to item i's fragment,
   item by item in order; mg_out_end() closes item i with its score. Return MG_OK or
   MG_E_NOMEM. */
mg_err_t mg_out_begin(mg_outputs_t *o, size_t n);
mg_err_t mg_out_write(mg_outputs_t *o, const char *s, size_t len);
mg_err_t mg_out_printf(mg_outputs_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
mg_err_t mg_out_end(mg_outputs_t *o, size_t i, double score);
/* Appends n values for the item being written (before its mg_out_end). */
mg_err_t mg_out_values(mg_outputs_t *o, const double *v, size_t n);
/* Refuses item i alone (the rest of the batch goes on): its fragment is
   "<input|inputs[i]>: <message>" and its err MG_E_PROTO. */
mg_err_t mg_out_fail(mg_outputs_t *o, const mg_input_view_t *in, size_t i, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Sets out->err for a whole-batch failure and returns |e|. */
mg_err_t mg_out_error(mg_outputs_t *o, mg_err_t e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Per-call scratch memory of at least |size| bytes (64-byte aligned, contents undefined),
   reused across calls. Each call during one predict returns a separate region (at most
   MG_OUT_SCRATCH_SLOTS per predict, mg_input_matrix included); all are released by the next
   mg_out_begin(). NULL when out of memory or out of slots. */
void *mg_out_scratch(mg_outputs_t *o, size_t size);
/* Writes a double so that it reads back to the same value (the shortest of %.15g, %.16g and
   %.17g that does); NaN and infinities, which JSON lacks, as null. */
mg_err_t mg_out_double(mg_outputs_t *o, double v);

/* For kinds parsing their files and options: MG_OK when every key of |obj| is in |valid|
   (NULL-terminated); else writes "<where>: unknown key 'x'; valid: a, b" into |err| and returns
   MG_E_CONFIG. */
mg_err_t mg_kind_check_keys(const json_t *obj, const char *const *valid, const char *where,
                            char *err, size_t errlen);

/* Returns the n x width row-major matrix of the batch as |dtype| (F32 or F64): in->dense itself
   when it already is one, else gathered and converted into |o|'s scratch. Every item must have
   |width| numeric elements (mg_input_check with input_len = width guarantees it). NULL when out
   of memory. */
const void *mg_input_matrix(const mg_input_view_t *in, mg_dtype_t dtype, size_t width,
                            mg_outputs_t *o);

/* ---------------------------------------------------------------------------------------- */
/* Models                                                                                    */

typedef struct mg_model {
    unsigned _magic; /* MG_MODEL_MAGIC while alive; checked in debug builds */
    atomic_uint _refs;
    char *name;    /* e.g. "digits" (from the registry; "" if not given) */
    char *version; /* e.g. "3" ("" if not given) */
    const mg_model_kind_t *kind;
    char *path;
    char sha256[65];       /* hex digest of the file as loaded, lower case */
    uint64_t size;         /* bytes */
    int64_t loaded_at_ms;  /* Unix time in milliseconds when the load finished */
    double load_ms;        /* how long load took (hash + parse + kind load) */
    mg_model_desc_t desc;  /* what the kind described after load */
    void *_impl;           /* the kind's state */
    pthread_mutex_t _lock; /* serialises predict when !desc.thread_safe */
} mg_model_t;

#define MG_MODEL_MAGIC 0x6d676d6cu /* "mgml" */

/*
 * Loads the model file at |path| with the kind called |kind|. |options_json| is a JSON object
 * in text form with the kind's load options, or NULL. |name| and |version| are copied (NULL
 * = ""). Computes the file's sha256 (OpenSSL EVP) first. Returns MG_OK and *out (one
 * reference), or an error with a message in |err| that names the path:
 *   MG_E_NOTFOUND  unknown kind ("unknown model kind 'foo'; valid: xgboost, linear, embedding")
 *                  or missing file ("model file '/m/x.json': No such file or directory")
 *   MG_E_CONFIG    the kind refused the file (with the library's own message), or bad options
 *   MG_E_IO        the file cannot be read ("model file '/m': Is a directory")
 *   MG_E_NOMEM
 * Blocking (file I/O, parsing): call it off the event loops. Touches no global state.
 */
mg_err_t mg_model_load(const char *kind, const char *path, const char *name, const char *version,
                       const char *options_json, mg_model_t **out, char *err, size_t errlen);

/* The same with a kind object (tests, or kinds outside the table). */
mg_err_t mg_model_load_kind(const mg_model_kind_t *kind, const char *path, const char *name,
                            const char *version, const char *options_json, mg_model_t **out,
                            char *err, size_t errlen);

/* Takes a reference; returns |m|. */
mg_model_t *mg_model_ref(mg_model_t *m);
/* Drops a reference; the last one frees the model (the kind's free included). NULL is a no-op. */
void mg_model_unref(mg_model_t *m);
/* Current reference count (for tests and the status endpoint; racy by nature). */
unsigned mg_model_refs(const mg_model_t *m);

/*
 * Predicts in->n items. Checks the view first (mg_input_check: MG_E_PROTO with the message in
 * out->err), so a merged or hand-built view is safe too. Thread-safe for any kind (serialised
 * per model when the kind is not reentrant); |out| must not be shared by concurrent calls.
 * Returns as mg_model_kind_t.predict; out->n == in->n on MG_OK. HTTP: MG_E_PROTO -> 400,
 * MG_E_IO -> 500, MG_E_NOMEM -> 503; an item with items[i].err != MG_OK -> 400 for its request.
 */
mg_err_t mg_model_predict(mg_model_t *m, const mg_input_view_t *in, const json_t *option,
                          const json_t *features, mg_outputs_t *out);

/*
 * Runs |rounds| predictions of a synthetic item (zeros, or an empty string) through |m| -- the
 * warm-up before a switch -- and checks each answers. Returns MG_OK or the predict error with
 * its message in |err|.
 */
mg_err_t mg_model_warmup(mg_model_t *m, unsigned rounds, char *err, size_t errlen);

/* Human-readable names for logs and messages. */
const char *mg_input_type_name(mg_input_type_t t);
const char *mg_output_kind_name(mg_output_kind_t k);

/* Whether |v| is a number float32 holds without becoming infinite: inputs past it are
 * refused (every kind but linear computes in float32). */
static inline bool mg_in_float32_range(double v)
{
    return v >= -FLT_MAX && v <= FLT_MAX;
}

#endif /* MG_BACKENDS_RUNTIME_MODEL_H */
