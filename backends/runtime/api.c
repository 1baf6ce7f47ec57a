/*
 * backends/runtime/api.c - HTTP endpoints of modelgate-runtime.
 *
 * DESIGN
 * A request (rt_req_t) comes from a free list and keeps its buffers (body, parsed inputs,
 * response text) across uses, so a warm runtime allocates nothing per prediction but what
 * jansson needs to parse the body. A prediction request takes a model reference from the slot
 * when its body is complete, so a switch that happens meanwhile never changes the model under
 * it; the reference is dropped when the answer was handed to the connection. If the client
 * goes away while the inference threads work on its request, the request is marked closed and
 * recycled when the job comes back.
 */
#include "backends/runtime/api.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "common/log.h"

#define HIST_BUCKETS 13
static const double hist_le[HIST_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                             0.025,  0.05,    0.1,    0.25,  1.0,   5.0};

typedef enum ep {
    EP_NONE,
    EP_PREDICT,
    EP_INFER,
} ep_t;

typedef struct rt_req rt_req_t;

struct mg_rt {
    struct event_base *base;
    mg_slot_t *slot;
    mg_batcher_t *batcher;
    mg_rt_conf_t conf;
    char *service;
    rt_req_t *free_reqs;
    size_t nfree, inflight;
    /* metrics (loop thread only) */
    unsigned long long by_status[6]; /* 1xx..5xx, [0] unused */
    unsigned long long by_code[600]; /* every status answered, 100-599 */
    unsigned long long hist[HIST_BUCKETS + 1];
    double hist_sum;
    unsigned long long served;
};

struct rt_req {
    mg_rt_t *rt;
    rt_req_t *next_free;
    mg_srv_stream_t *s;
    ep_t ep;
    bool closed, in_job, too_large;
    struct timespec t0;
    struct evbuffer *body;
    json_t *doc;
    json_t *features;
    mg_input_buf_t inbuf;
    mg_job_t job;
    char *resp;
    size_t resp_len, resp_cap;
    bool resp_oom;
    int status;
    char request_id[256]; /* echoed as sent; longer ids are not echoed */
    char v2name[128]; /* POST /v2/models/{name}/infer: the name asked for */
    char v2ver[128];  /* ... and the version, when the path names one ("" = any) */
    unsigned v2_outputs; /* the request's "outputs", V2_OUT_* bits; 0 = all */
    const char *allow; /* a 405's Allow header, or NULL */
    double *fast;      /* fast_numbers' array, kept across uses */
    size_t fast_cap;
    mg_input_item_t fast_item;
};

/* ---------- text building ---------- */

static void out_reserve(rt_req_t *r, size_t more)
{
    if (r->resp_oom || r->resp_len + more + 1 <= r->resp_cap)
        return;
    size_t cap = r->resp_cap ? r->resp_cap : 1024;
    while (cap < r->resp_len + more + 1)
        cap *= 2;
    char *p = realloc(r->resp, cap);
    if (p == NULL) {
        r->resp_oom = true;
        return;
    }
    r->resp = p;
    r->resp_cap = cap;
}

static void out_put(rt_req_t *r, const char *s, size_t n)
{
    out_reserve(r, n);
    if (r->resp_oom)
        return;
    memcpy(r->resp + r->resp_len, s, n);
    r->resp_len += n;
    r->resp[r->resp_len] = '\0';
}

static void out_str(rt_req_t *r, const char *s)
{
    out_put(r, s, strlen(s));
}

static void out_fmt(rt_req_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(rt_req_t *r, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        out_put(r, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* Length of the valid UTF-8 sequence at |p| (1-4), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                            : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || (n == 2 && c < 0xC2) || (n == 4 && c > 0xF4))
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    if (n == 3 && ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F)))
        return 0; /* overlong, or a surrogate */
    if (n == 4 && ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F)))
        return 0;
    return n;
}

/* JSON string with quotes. Text from elsewhere (a library's error quoting a model file's bytes)
 * may not be UTF-8: such bytes become U+FFFD, so every answer stays valid JSON. */
static void out_jstr(rt_req_t *r, const char *s)
{
    out_put(r, "\"", 1);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            out_put(r, e, 2);
            p++;
        } else if (c < 0x20) {
            out_fmt(r, "\\u%04x", c);
            p++;
        } else {
            size_t n = utf8_len(p);
            if (n == 0) {
                out_str(r, "\\ufffd");
                p++;
            } else {
                out_put(r, (const char *)p, n);
                p += n;
            }
        }
    }
    out_put(r, "\"", 1);
}

/* A double that reads back to the same value; JSON has no NaN/Infinity: null. */
static void out_double(rt_req_t *r, double v)
{
    if (!isfinite(v)) {
        out_str(r, "null");
        return;
    }
    char buf[32];
    snprintf(buf, sizeof(buf), "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, sizeof(buf), "%.17g", v);
    out_str(r, buf);
}

static void out_error(rt_req_t *r, int status, const char *code, const char *msg)
{
    r->resp_len = 0;
    r->status = status;
    out_str(r, "{\"error\":{\"code\":");
    out_jstr(r, code);
    out_str(r, ",\"message\":");
    out_jstr(r, msg);
    if (r->request_id[0]) {
        out_str(r, ",\"request_id\":");
        out_jstr(r, r->request_id);
    }
    out_str(r, "}}\n");
}

/* ---------- request lifetime ---------- */

static rt_req_t *req_new(mg_rt_t *rt)
{
    rt_req_t *r = rt->free_reqs;
    if (r) {
        rt->free_reqs = r->next_free;
        rt->nfree--;
    } else {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return NULL;
        r->body = evbuffer_new();
        if (r->body == NULL) {
            free(r);
            return NULL;
        }
        mg_input_buf_init(&r->inbuf, rt->conf.max_items);
    }
    r->rt = rt;
    r->s = NULL;
    r->ep = EP_NONE;
    r->closed = r->in_job = r->too_large = r->resp_oom = false;
    r->resp_len = 0;
    r->status = 0;
    r->request_id[0] = '\0';
    r->v2name[0] = r->v2ver[0] = '\0';
    r->allow = NULL;
    memset(&r->job, 0, sizeof(r->job));
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    rt->inflight++;
    return r;
}

static void req_free(rt_req_t *r)
{
    mg_rt_t *rt = r->rt;
    evbuffer_drain(r->body, evbuffer_get_length(r->body));
    json_decref(r->doc);
    json_decref(r->features);
    r->doc = r->features = NULL;
    mg_model_unref(r->job.model);
    r->job.model = NULL;
    rt->inflight--;
    if (rt->nfree < 256 && r->resp_cap <= (1u << 20)) { /* keep warm buffers, not huge ones */
        r->next_free = rt->free_reqs;
        rt->free_reqs = r;
        rt->nfree++;
    } else {
        evbuffer_free(r->body);
        mg_input_buf_clear(&r->inbuf);
        free(r->resp);
        free(r->fast);
        free(r);
    }
}

static void count(mg_rt_t *rt, int status, const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        rt->by_status[cls]++;
    if (status >= 100 && status < 600)
        rt->by_code[status]++;
    size_t b = 0;
    while (b < HIST_BUCKETS && sec > hist_le[b])
        b++;
    rt->hist[b]++;
    rt->hist_sum += sec;
    rt->served++;
}

/* Sends r->resp with r->status. The stream may close (and |r| be recycled) inside. */
static void send_response(rt_req_t *r, const char *ctype)
{
    if (r->resp_oom)
        out_error(r, 503, "overloaded", "out of memory formatting the answer");
    char len[24];
    snprintf(len, sizeof(len), "%zu", r->resp_len);
    mg_hdr_t h[4] = {
        {"content-length", len, 14, strlen(len), false},
    };
    size_t nh = 1;
    if (ctype) /* NULL: no body to describe (an OPTIONS answer) */
        h[nh++] = (mg_hdr_t){"content-type", ctype, 12, strlen(ctype), false};
    if (r->request_id[0])
        h[nh++] =
            (mg_hdr_t){"x-request-id", r->request_id, 12, strlen(r->request_id), MG_HPACK_UNIQUE};
    if (r->allow)
        h[nh++] = (mg_hdr_t){"allow", r->allow, 5, strlen(r->allow), MG_HPACK_INDEX};
    count(r->rt, r->status, &r->t0);
    mg_srv_stream_t *s = r->s;
    const char *body = r->resp;
    size_t n = r->resp_len;
    mg_srv_respond(s, r->status, h, nh, n == 0);
    if (n) {
        mg_srv_write(s, body, n);
        mg_srv_end(s, NULL, 0); /* may run on_close: |r| is not touched after this */
    }
}

static void send_json(rt_req_t *r)
{
    send_response(r, "application/json");
}

static void send_error(rt_req_t *r, int status, const char *code, const char *msg)
{
    out_error(r, status, code, msg);
    send_json(r);
}

/* Answers an OPTIONS request: 200, |allow|, no body. */
static void send_allow(rt_req_t *r, const char *allow)
{
    r->allow = allow;
    r->status = 200;
    r->resp_len = 0;
    send_response(r, NULL);
}

/* ---------- formatting answers (inference threads) ---------- */

static void model_object(rt_req_t *r, const mg_model_t *m)
{
    out_str(r, "{\"name\":");
    out_jstr(r, m->name);
    out_str(r, ",\"version\":");
    out_jstr(r, m->version);
    out_str(r, "}");
}

/* The first failed item's message, named as the client sent it ("input", "inputs[i]": the
 * batcher may have merged this request into a larger predict call), into |buf|; or NULL. */
static const char *item_error(const mg_job_t *job, const mg_outputs_t *out, size_t first,
                              char *buf, size_t cap)
{
    for (size_t i = 0; i < job->view.n; i++) {
        const mg_output_item_t *it = &out->items[first + i];
        if (it->err == MG_OK)
            continue;
        const char *msg = mg_output_json(out, first + i);
        char where[48];
        mg_input_where(&job->view, i, where, sizeof(where));
        snprintf(buf, cap, "%s: %s", where, msg + it->where_len);
        return buf;
    }
    return NULL;
}

/* Writes the error answer when the predict call or one of this job's items failed: 400 for the
 * client's input (named by its own index), 500 for the model. True when it did. */
static bool answered_error(mg_job_t *job, mg_err_t rc, const mg_outputs_t *out, size_t first)
{
    rt_req_t *r = job->ctx;
    char ebuf[512];
    r->resp_len = 0;
    const char *bad = rc == MG_OK ? item_error(job, out, first, ebuf, sizeof(ebuf)) : NULL;
    if (rc == MG_E_PROTO || bad) {
        out_error(r, 400, "invalid_input", bad ? bad : out->err);
        return true;
    }
    if (rc != MG_OK) {
        out_error(r, 500, "model_error", out->err[0] ? out->err : mg_strerror(rc));
        return true;
    }
    return false;
}

static void finish_v1(mg_job_t *job, mg_err_t rc, const mg_outputs_t *out, size_t first)
{
    rt_req_t *r = job->ctx;
    size_t n = job->view.n;
    if (answered_error(job, rc, out, first))
        return;
    r->status = 200;
    if (!job->view.batch) {
        out_str(r, "{\"output\":");
        out_str(r, mg_output_json(out, first));
        out_str(r, ",\"score\":");
        out_double(r, out->items[first].score);
    } else {
        out_str(r, "{\"outputs\":[");
        for (size_t i = 0; i < n; i++) {
            out_str(r, i ? ",{\"output\":" : "{\"output\":");
            out_str(r, mg_output_json(out, first + i));
            out_str(r, ",\"score\":");
            out_double(r, out->items[first + i].score);
            out_str(r, "}");
        }
        out_str(r, "]");
    }
    out_str(r, ",\"model\":");
    model_object(r, job->model);
    out_str(r, "}\n");
}

/* The v2 outputs: "output" (the label, value or ranked ids), "score", and the values behind
 * them ("probabilities" of a classifier, "scores" of a ranking). */
enum { V2_OUT_OUTPUT = 1, V2_OUT_SCORE = 2, V2_OUT_VALUES = 4 };

/* The datatype of "output", from the model alone, so that metadata and every answer agree:
 * labels are strings when the model's classes are ("\"cat\""), else integers; ranked ids as
 * the index holds them; a value is FP64 even when it happens to be integral. */
static const char *output_dtype(const mg_model_desc_t *d)
{
    if (d->output == MG_OUTPUT_VALUE)
        return "FP64";
    if (d->output == MG_OUTPUT_RANKING)
        return d->string_ids ? "BYTES" : "INT64";
    return d->n_classes && d->classes[0][0] == '"' ? "BYTES" : "INT64";
}

static const char *values_name(const mg_model_desc_t *d)
{
    return d->output == MG_OUTPUT_RANKING ? "scores" : "probabilities";
}

/* The request's "outputs" ([{"name": ...}], optional) as V2_OUT_* bits into r->v2_outputs;
 * false (answered 400) when one names no output of the model. */
static bool requested_outputs(rt_req_t *r, const mg_model_desc_t *d)
{
    const json_t *outs = json_object_get(r->doc, "outputs");
    r->v2_outputs = 0;
    if (outs == NULL)
        return true;
    char msg[300];
    if (!json_is_array(outs)) {
        send_error(r, 400, "invalid_input", "outputs: expected a list of {\"name\": ...}");
        return false;
    }
    for (size_t i = 0; i < json_array_size(outs); i++) {
        const char *n = json_string_value(json_object_get(json_array_get(outs, i), "name"));
        unsigned bit = n == NULL                  ? 0
                       : strcmp(n, "output") == 0 ? V2_OUT_OUTPUT
                       : strcmp(n, "score") == 0  ? V2_OUT_SCORE
                       : d->output != MG_OUTPUT_VALUE && strcmp(n, values_name(d)) == 0
                           ? V2_OUT_VALUES
                           : 0;
        if (bit == 0) {
            snprintf(msg, sizeof(msg),
                     "outputs[%zu].name: expected one of the model's outputs (output, score%s%s)",
                     i, d->output != MG_OUTPUT_VALUE ? ", " : "",
                     d->output != MG_OUTPUT_VALUE ? values_name(d) : "");
            send_error(r, 400, "invalid_input", msg);
            return false;
        }
        r->v2_outputs |= bit;
    }
    return true;
}

static void finish_v2(mg_job_t *job, mg_err_t rc, const mg_outputs_t *out, size_t first)
{
    rt_req_t *r = job->ctx;
    size_t n = job->view.n;
    if (answered_error(job, rc, out, first))
        return;
    const mg_model_t *m = job->model;
    bool ranking = m->desc.output == MG_OUTPUT_RANKING;
    size_t k = ranking && n ? out->items[first].n_values : 0;
    r->status = 200;
    out_str(r, "{\"model_name\":");
    out_jstr(r, m->name);
    out_str(r, ",\"model_version\":");
    out_jstr(r, m->version);
    json_t *id = r->doc ? json_object_get(r->doc, "id") : NULL;
    if (json_is_string(id)) {
        out_str(r, ",\"id\":");
        out_jstr(r, json_string_value(id));
    }
    unsigned want = r->v2_outputs ? r->v2_outputs : V2_OUT_OUTPUT | V2_OUT_SCORE | V2_OUT_VALUES;
    const char *sep = "";
    out_str(r, ",\"outputs\":[");
    if (want & V2_OUT_OUTPUT) {
        out_str(r, "{\"name\":\"output\",\"datatype\":\"");
        out_str(r, output_dtype(&m->desc));
        if (ranking)
            out_fmt(r, "\",\"shape\":[%zu,%zu],\"data\":[", n, k);
        else
            out_fmt(r, "\",\"shape\":[%zu],\"data\":[", n);
        for (size_t i = 0; i < n; i++) {
            const char *f = mg_output_json(out, first + i);
            size_t len = strlen(f);
            if (ranking && len >= 2 && f[0] == '[') { /* flatten [ids] rows */
                f++;
                len -= 2;
                if (len == 0)
                    continue;
            }
            if (i)
                out_put(r, ",", 1);
            out_put(r, f, len);
        }
        out_str(r, "]}");
        sep = ",";
    }
    if (want & V2_OUT_SCORE) {
        out_fmt(r, "%s{\"name\":\"score\",\"datatype\":\"FP64\",\"shape\":[%zu],\"data\":[", sep,
                n);
        for (size_t i = 0; i < n; i++) {
            if (i)
                out_put(r, ",", 1);
            out_double(r, out->items[first + i].score);
        }
        out_str(r, "]}");
        sep = ",";
    }
    size_t nv = n ? out->items[first].n_values : 0;
    bool same = nv > 0;
    for (size_t i = 0; i < n && same; i++)
        same = out->items[first + i].n_values == nv;
    if (same && (want & V2_OUT_VALUES)) {
        out_fmt(r, "%s{\"name\":\"%s\"", sep, values_name(&m->desc));
        out_fmt(r, ",\"datatype\":\"FP64\",\"shape\":[%zu,%zu],\"data\":[", n, nv);
        for (size_t i = 0; i < n; i++) {
            const double *v = mg_output_values(out, first + i);
            for (size_t j = 0; j < nv; j++) {
                if (i || j)
                    out_put(r, ",", 1);
                out_double(r, v[j]);
            }
        }
        out_str(r, "]}");
    }
    out_str(r, "]}\n");
}

static void job_done(mg_job_t *job)
{
    rt_req_t *r = job->ctx;
    r->in_job = false;
    if (r->closed) { /* the client left while we computed */
        req_free(r);
        return;
    }
    send_json(r);
}

/* ---------- request handling (loop thread) ---------- */

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* The path without its query string, copied into |buf|. */
static const char *clean_path(const char *path, char *buf, size_t cap)
{
    size_t n = strcspn(path, "?");
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, path, n);
    buf[n] = '\0';
    return buf;
}

static bool name_matches(const mg_model_t *m, const char *name, size_t len)
{
    const char *want = m->name[0] ? m->name : "model";
    return strlen(want) == len && memcmp(want, name, len) == 0;
}

static void v2_metadata(rt_req_t *r, const mg_model_t *m)
{
    static const char *const in_dtype[] = {"FP32", "INT64", "BYTES", "BYTES", "BYTES"};
    r->resp_len = 0;
    r->status = 200;
    out_str(r, "{\"name\":");
    out_jstr(r, m->name[0] ? m->name : "model");
    out_str(r, ",\"versions\":[");
    out_jstr(r, m->version);
    out_str(r, "],\"platform\":");
    char platform[64];
    snprintf(platform, sizeof(platform), "modelgate_%s", m->kind->name);
    out_jstr(r, platform);
    out_str(r, ",\"inputs\":[{\"name\":\"input\",\"datatype\":");
    out_jstr(r, in_dtype[m->desc.input]);
    if (m->desc.input_len)
        out_fmt(r, ",\"shape\":[-1,%zu]}]", m->desc.input_len);
    else
        out_str(r, ",\"shape\":[-1]}]");
    out_str(r, ",\"outputs\":[{\"name\":\"output\",\"datatype\":");
    out_jstr(r, output_dtype(&m->desc));
    out_str(r, m->desc.output == MG_OUTPUT_RANKING ? ",\"shape\":[-1,-1]}" : ",\"shape\":[-1]}");
    out_str(r, ",{\"name\":\"score\",\"datatype\":\"FP64\",\"shape\":[-1]}");
    if (m->desc.output == MG_OUTPUT_LABEL)
        out_fmt(r, ",{\"name\":\"probabilities\",\"datatype\":\"FP64\",\"shape\":[-1,%zu]}",
                m->desc.n_classes);
    else if (m->desc.output == MG_OUTPUT_RANKING)
        out_str(r, ",{\"name\":\"scores\",\"datatype\":\"FP64\",\"shape\":[-1,-1]}");
    out_str(r, "]");
    out_str(r, ",\"parameters\":{\"sha256\":");
    out_jstr(r, m->sha256);
    out_str(r, "}}\n");
}

static void status_doc(rt_req_t *r)
{
    mg_rt_t *rt = r->rt;
    mg_model_t *m = mg_slot_get(rt->slot);
    mg_slot_stats_t st;
    mg_slot_stats(rt->slot, &st);
    r->resp_len = 0;
    r->status = 200;
    out_str(r, "{\"service\":");
    out_jstr(r, rt->service);
    out_fmt(r, ",\"ready\":%s,\"requests_served\":%llu,\"model\":", m ? "true" : "false",
            rt->served);
    if (m) {
        char when[40];
        time_t secs = (time_t)(m->loaded_at_ms / 1000);
        struct tm tm;
        gmtime_r(&secs, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        out_str(r, "{\"name\":");
        out_jstr(r, m->name);
        out_str(r, ",\"version\":");
        out_jstr(r, m->version);
        out_str(r, ",\"kind\":");
        out_jstr(r, m->kind->name);
        out_str(r, ",\"sha256\":");
        out_jstr(r, m->sha256);
        out_str(r, ",\"path\":");
        out_jstr(r, m->path);
        out_fmt(r, ",\"size\":%llu,\"loaded_at\":\"%s\",\"load_ms\":", (unsigned long long)m->size,
                when);
        out_double(r, m->load_ms);
        out_str(r, "}");
    } else {
        out_str(r, "null");
    }
    out_fmt(r,
            ",\"switch\":{\"loading\":%s,\"loads_ok\":%llu,\"loads_failed\":%llu,"
            "\"last_switch_ms\":",
            st.loading ? "true" : "false", (unsigned long long)st.loads_ok,
            (unsigned long long)st.loads_failed);
    out_double(r, st.last_switch_ms);
    out_str(r, ",\"last_error\":");
    if (st.last_error[0])
        out_jstr(r, st.last_error);
    else
        out_str(r, "null");
    /* when: a failure kept after later switches succeeded reads as current otherwise */
    out_str(r, ",\"last_error_at\":");
    if (st.last_failure_ms > 0) {
        char when[32];
        struct tm tm;
        time_t secs = (time_t)(st.last_failure_ms / 1000);
        gmtime_r(&secs, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        out_jstr(r, when);
    } else {
        out_str(r, "null");
    }
    out_str(r, "}}\n");
    mg_model_unref(m);
}

static void metrics_doc(rt_req_t *r)
{
    mg_rt_t *rt = r->rt;
    mg_slot_stats_t st;
    mg_slot_stats(rt->slot, &st);
    mg_batcher_stats_t bs;
    mg_batcher_stats(rt->batcher, &bs);
    mg_model_t *m = mg_slot_get(rt->slot);
    r->resp_len = 0;
    r->status = 200;
    out_str(r, "# HELP modelgate_runtime_requests_total Requests answered, by HTTP status.\n"
               "# TYPE modelgate_runtime_requests_total counter\n");
    /* the usual ones always (a series from the start), any other once it happened: the codes
     * add up to the classes below */
    for (int c = 100; c < 600; c++)
        if (rt->by_code[c] || c == 200 || c == 400 || c == 404 || c == 413 || c == 500 || c == 503)
            out_fmt(r, "modelgate_runtime_requests_total{code=\"%d\"} %llu\n", c, rt->by_code[c]);
    out_str(r, "# HELP modelgate_runtime_responses_total Requests answered, by status class.\n"
               "# TYPE modelgate_runtime_responses_total counter\n");
    for (int c = 1; c <= 5; c++)
        out_fmt(r, "modelgate_runtime_responses_total{class=\"%dxx\"} %llu\n", c,
                rt->by_status[c]);
    out_str(r, "# HELP modelgate_runtime_request_duration_seconds Time from request to answer.\n"
               "# TYPE modelgate_runtime_request_duration_seconds histogram\n");
    unsigned long long cum = 0;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        cum += rt->hist[b];
        out_fmt(r, "modelgate_runtime_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                hist_le[b], cum);
    }
    cum += rt->hist[HIST_BUCKETS];
    out_fmt(r, "modelgate_runtime_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
    out_fmt(r, "modelgate_runtime_request_duration_seconds_sum %.6f\n", rt->hist_sum);
    out_fmt(r, "modelgate_runtime_request_duration_seconds_count %llu\n", cum);
    out_fmt(r,
            "# HELP modelgate_runtime_model_loads_total Model loads (switches), by result.\n"
            "# TYPE modelgate_runtime_model_loads_total counter\n"
            "modelgate_runtime_model_loads_total{result=\"ok\"} %llu\n"
            "modelgate_runtime_model_loads_total{result=\"failed\"} %llu\n",
            (unsigned long long)st.loads_ok, (unsigned long long)st.loads_failed);
    out_fmt(r,
            "# HELP modelgate_runtime_model_switch_seconds Duration of the last successful "
            "switch (load + warm-up).\n"
            "# TYPE modelgate_runtime_model_switch_seconds gauge\n"
            "modelgate_runtime_model_switch_seconds %.6f\n"
            "# HELP modelgate_runtime_model_loading 1 while a model loads.\n"
            "# TYPE modelgate_runtime_model_loading gauge\n"
            "modelgate_runtime_model_loading %d\n",
            st.last_switch_ms / 1000.0, st.loading ? 1 : 0);
    out_fmt(r,
            "# HELP modelgate_runtime_batches_total Predict calls (each may hold many "
            "requests).\n"
            "# TYPE modelgate_runtime_batches_total counter\n"
            "modelgate_runtime_batches_total %llu\n"
            "# HELP modelgate_runtime_batch_items_total Items predicted.\n"
            "# TYPE modelgate_runtime_batch_items_total counter\n"
            "modelgate_runtime_batch_items_total %llu\n",
            bs.batches, bs.items);
    if (m) {
        out_str(r, "# HELP modelgate_runtime_model_info The model being served.\n"
                   "# TYPE modelgate_runtime_model_info gauge\n"
                   "modelgate_runtime_model_info{name=");
        out_jstr(r, m->name);
        out_str(r, ",version=");
        out_jstr(r, m->version);
        out_str(r, ",kind=");
        out_jstr(r, m->kind->name);
        out_str(r, ",sha256=");
        out_jstr(r, m->sha256);
        out_str(r, "} 1\n");
        mg_model_unref(m);
    }
    send_response(r, "text/plain; version=0.0.4");
}

typedef enum path_kind {
    PK_UNKNOWN,
    PK_SERVER_META, /* GET /v2: the Open Inference Protocol's server metadata */
    PK_PREDICT,     /* POST */
    PK_INFER,       /* POST */
    PK_HEALTHZ,     /* the rest: GET/HEAD */
    PK_LIVE,
    PK_READYZ,
    PK_READY,
    PK_STATUS,
    PK_METRICS,
    PK_MODEL_META,
    PK_MODEL_READY,
} path_kind_t;

/* Copies the next path segment (up to '/' or the end) into |out|; returns the rest, or NULL
 * when the segment is empty or does not fit. */
static const char *segment(const char *p, char *out, size_t cap)
{
    size_t n = strcspn(p, "/");
    if (n == 0 || n >= cap)
        return NULL;
    memcpy(out, p, n);
    out[n] = '\0';
    return p + n;
}

/* What |path| names: /v2/models/{name}[/versions/{v}][/ready|/infer] fill |name| and |ver|. */
static path_kind_t classify(const char *path, char *name, size_t ncap, char *ver, size_t vcap)
{
    static const struct {
        const char *path;
        path_kind_t kind;
    } fixed[] = {{"/v1/predict", PK_PREDICT},    {"/healthz", PK_HEALTHZ},
                 {"/v2/health/live", PK_LIVE},   {"/readyz", PK_READYZ},
                 {"/v2/health/ready", PK_READY}, {"/v1/status", PK_STATUS},
                 {"/metrics", PK_METRICS},       {"/v2", PK_SERVER_META}};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strcmp(path, fixed[i].path) == 0)
            return fixed[i].kind;
    name[0] = ver[0] = '\0';
    if (!has_prefix(path, "/v2/models/"))
        return PK_UNKNOWN;
    const char *p = segment(path + 11, name, ncap);
    if (p == NULL)
        return PK_UNKNOWN;
    if (has_prefix(p, "/versions/") && (p = segment(p + 10, ver, vcap)) == NULL)
        return PK_UNKNOWN;
    if (*p == '\0')
        return PK_MODEL_META;
    if (strcmp(p, "/ready") == 0)
        return PK_MODEL_READY;
    if (strcmp(p, "/infer") == 0)
        return PK_INFER;
    return PK_UNKNOWN;
}

/* Answers 404 when |name| (and |ver|, if given) is not the model served; true if it is. */
static bool model_is(rt_req_t *r, const mg_model_t *m, const char *name, const char *ver)
{
    char msg[300];
    if (!name_matches(m, name, strlen(name))) {
        snprintf(msg, sizeof(msg), "no model '%.100s' here (this runtime serves '%.100s')", name,
                 m->name[0] ? m->name : "model");
        send_error(r, 404, "model_not_found", msg);
        return false;
    }
    if (ver[0] && strcmp(ver, m->version) != 0) {
        snprintf(msg, sizeof(msg), "no version '%.60s' of model '%.100s' here (serving '%.60s')",
                 ver, name, m->version);
        send_error(r, 404, "model_version_not_found", msg);
        return false;
    }
    return true;
}

static void on_request(mg_srv_stream_t *s, const mg_srv_req_t *req, void *ud)
{
    mg_rt_t *rt = ud;
    rt_req_t *r = req_new(rt);
    if (r == NULL) {
        mg_srv_error(s, 503, "overloaded", "out of memory", NULL, NULL, 0);
        return;
    }
    r->s = s;
    mg_srv_set_data(s, r);
    for (size_t i = 0; i < req->nhdrs; i++) {
        const mg_hdr_t *h = &req->hdrs[i];
        if (h->name_len == 12 && memcmp(h->name, "x-request-id", 12) == 0 &&
            h->value_len < sizeof(r->request_id))
            snprintf(r->request_id, sizeof(r->request_id), "%s", h->value);
        else if (h->name_len == 15 && memcmp(h->name, "x-user-features", 15) == 0) {
            json_error_t jerr;
            json_decref(r->features);
            r->features = json_loadb(h->value, h->value_len, 0, &jerr);
            if (r->features == NULL || !json_is_object(r->features)) {
                json_decref(r->features);
                r->features = NULL;
                send_error(r, 400, "bad_request", "x-user-features: expected a JSON object");
                return;
            }
        }
    }
    char pbuf[512], ver[128];
    const char *path = clean_path(req->path, pbuf, sizeof(pbuf));
    bool options = strcmp(req->method, "OPTIONS") == 0;
    if (options && strcmp(path, "*") == 0) { /* the server as a whole (RFC 9110 9.3.7) */
        send_allow(r, "GET, HEAD, POST, OPTIONS");
        return;
    }
    path_kind_t kind = classify(path, r->v2name, sizeof(r->v2name), ver, sizeof(ver));
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    bool post = strcmp(req->method, "POST") == 0;
    if (kind == PK_UNKNOWN) {
        send_error(r, 404, "not_found",
                   "unknown path; see /v1/predict, /v2/models/{name}/infer, /v1/status");
        return;
    }
    bool wants_post = kind == PK_PREDICT || kind == PK_INFER;
    if (options) { /* what this path takes */
        send_allow(r, wants_post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS");
        return;
    }
    if (wants_post ? !post : !get) {
        r->allow = wants_post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS";
        char msg[100];
        snprintf(msg, sizeof(msg), "%.60s takes %s", path, wants_post ? "POST" : "GET or HEAD");
        send_error(r, 405, "method_not_allowed", msg);
        return;
    }
    switch (kind) {
    case PK_PREDICT:
        r->ep = EP_PREDICT;
        return;
    case PK_INFER:
        snprintf(r->v2ver, sizeof(r->v2ver), "%s", ver);
        r->ep = EP_INFER; /* name and version are checked when the body is complete */
        return;
    case PK_HEALTHZ:
    case PK_LIVE:
        r->status = 200;
        r->resp_len = 0;
        out_str(r, kind == PK_HEALTHZ ? "{\"status\":\"alive\"}\n" : "{\"live\":true}\n");
        send_json(r);
        return;
    case PK_READYZ:
    case PK_READY: {
        mg_model_t *m = mg_slot_get(rt->slot);
        r->status = m ? 200 : 503;
        r->resp_len = 0;
        out_str(r, m ? "{\"ready\":true}\n" : "{\"ready\":false}\n");
        mg_model_unref(m);
        send_json(r);
        return;
    }
    case PK_STATUS:
        status_doc(r);
        send_json(r);
        return;
    case PK_SERVER_META:
        r->status = 200;
        r->resp_len = 0;
        out_str(r, "{\"name\":\"modelgate-runtime\",\"version\":\"" MG_VERSION
                   "\",\"extensions\":[]}\n");
        send_json(r);
        return;
    case PK_METRICS:
        metrics_doc(r);
        return;
    case PK_MODEL_META:
    case PK_MODEL_READY: {
        mg_model_t *m = mg_slot_get(rt->slot);
        if (m == NULL) {
            send_error(r, 503, "no_model", "no model is loaded yet");
        } else if (model_is(r, m, r->v2name, ver)) {
            if (kind == PK_MODEL_META) {
                v2_metadata(r, m);
            } else {
                r->status = 200;
                r->resp_len = 0;
                out_str(r, "{\"ready\":true}\n");
            }
            send_json(r);
        }
        mg_model_unref(m);
        return;
    }
    case PK_UNKNOWN:
        break;
    }
}

static void on_body(mg_srv_stream_t *s, const uint8_t *data, size_t len)
{
    rt_req_t *r = mg_srv_data(s);
    mg_srv_consume(s, len); /* bodies are small: the limit below bounds memory */
    if (r == NULL || r->ep == EP_NONE || r->too_large || mg_srv_responded(s))
        return;
    if (evbuffer_get_length(r->body) + len > r->rt->conf.max_body) {
        r->too_large = true;
        char msg[120];
        snprintf(msg, sizeof(msg), "request body larger than %zu bytes", r->rt->conf.max_body);
        send_error(r, 413, "body_too_large", msg);
        return;
    }
    evbuffer_add(r->body, data, len);
}

/* Parses the body and hands the job to the batcher; answers errors itself. */
/* Is [p, q) a number as RFC 8259 writes them: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool json_number_syntax(const char *p, const char *q)
{
    if (p < q && *p == '-')
        p++;
    if (p == q || *p < '0' || *p > '9')
        return false;
    if (*p == '0' && p + 1 < q && p[1] >= '0' && p[1] <= '9')
        return false;
    while (p < q && *p >= '0' && *p <= '9')
        p++;
    if (p < q && *p == '.') {
        if (++p == q || *p < '0' || *p > '9')
            return false;
        while (p < q && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < q && (*p == 'e' || *p == 'E')) {
        if (++p < q && (*p == '+' || *p == '-'))
            p++;
        if (p == q || *p < '0' || *p > '9')
            return false;
        while (p < q && *p >= '0' && *p <= '9')
            p++;
    }
    return p == q;
}

/*
 * The common prediction body, {"input": [n, n, ...]} and nothing else, parsed straight into a
 * reusable array of doubles instead of a JSON tree (jansson's number parsing was an eighth of
 * the runtime's CPU per request). |text| is NUL-terminated. Returns the count, or -1 when the
 * body has any other shape (then the full parser runs and gives the exact messages).
 */
static long fast_numbers(rt_req_t *r, const char *text)
{
    const char *p = text;
#define SKIP_WS()                                                                                  \
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')                                    \
    p++
    SKIP_WS();
    if (*p++ != '{')
        return -1;
    SKIP_WS();
    if (strncmp(p, "\"input\"", 7) != 0)
        return -1;
    p += 7;
    SKIP_WS();
    if (*p++ != ':')
        return -1;
    SKIP_WS();
    if (*p++ != '[')
        return -1;
    size_t n = 0;
    SKIP_WS();
    if (*p == ']')
        return -1; /* empty: let the full parser say what it expects */
    for (;;) {
        SKIP_WS();
        if (*p != '-' && (*p < '0' || *p > '9'))
            return -1; /* JSON numbers only: no "inf", "nan", "+1", hex */
        const char *q = p;
        while ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' || *q == '-' ||
               *q == '+')
            q++;
        if (!json_number_syntax(p, q))
            return -1; /* "01", "1.", ".5", "1e": not JSON; the full parser says so */
        char *end;
        double v = strtod(p, &end);
        if (end != q || !mg_in_float32_range(v))
            return -1; /* the full parser says what is wrong */
        if (n == r->fast_cap) {
            size_t cap = r->fast_cap ? r->fast_cap * 2 : 256;
            if (cap > r->rt->conf.max_body) /* cannot have more numbers than bytes */
                return -1;
            double *nv = realloc(r->fast, sizeof(double) * cap);
            if (nv == NULL)
                return -1;
            r->fast = nv;
            r->fast_cap = cap;
        }
        r->fast[n++] = v;
        p = q;
        SKIP_WS();
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p++ != ']')
            return -1;
        break;
    }
    SKIP_WS();
    if (*p++ != '}')
        return -1;
    SKIP_WS();
#undef SKIP_WS
    return *p == '\0' ? (long)n : -1;
}

static void dispatch(rt_req_t *r)
{
    mg_rt_t *rt = r->rt;
    char err[512];
    size_t len = evbuffer_get_length(r->body);
    evbuffer_add(r->body, "", 1); /* a NUL for the fast path's strtod */
    const char *text = (const char *)evbuffer_pullup(r->body, (ssize_t)len + 1);
    if (r->ep == EP_PREDICT && text && strlen(text) == len) {
        long n = fast_numbers(r, text);
        mg_model_t *m = n > 0 ? mg_slot_get(rt->slot) : NULL;
        if (m && m->desc.input == MG_INPUT_FLOATS) {
            r->fast_item = (mg_input_item_t){.dtype = MG_DTYPE_F64, .data = r->fast,
                                              .len = (size_t)n};
            r->job.view = (mg_input_view_t){.n = 1, .items = &r->fast_item, .batch = false,
                                            .dense = r->fast, .dense_dtype = MG_DTYPE_F64,
                                            .dense_width = (size_t)n};
            if (mg_input_check(&m->desc, &r->job.view, err, sizeof(err)) == MG_OK) {
                r->job.model = m; /* released with the request */
                r->job.option = NULL;
                r->job.features = r->features;
                r->job.finish = finish_v1;
                r->job.done = job_done;
                r->job.ctx = r;
                r->in_job = true;
                mg_batcher_submit(rt->batcher, &r->job);
                return;
            }
        }
        mg_model_unref(m); /* any other case: the full parser below decides and explains */
    }
    json_error_t jerr;
    r->doc = json_loadb(text ? text : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (r->doc == NULL || !json_is_object(r->doc)) {
        if (r->doc)
            snprintf(err, sizeof(err), "body: expected a JSON object");
        else
            snprintf(err, sizeof(err), "body: invalid JSON at line %d column %d: %s", jerr.line,
                     jerr.column, jerr.text);
        send_error(r, 400, "bad_request", err);
        return;
    }
    mg_model_t *m = mg_slot_get(rt->slot);
    if (m == NULL) {
        send_error(r, 503, "no_model", "no model is loaded yet; see /readyz");
        return;
    }
    r->job.model = m; /* released with the request */
    mg_err_t rc;
    const json_t *option = NULL;
    if (r->ep == EP_PREDICT) {
        option = json_object_get(r->doc, "option");
        if (option && !json_is_object(option)) {
            send_error(r, 400, "invalid_input", "option: expected an object");
            return;
        }
        rc = mg_input_from_json(&m->desc, r->doc, &r->inbuf, &r->job.view, err, sizeof(err));
        r->job.finish = finish_v1;
    } else {
        if (!model_is(r, m, r->v2name, r->v2ver))
            return;
        json_t *inputs = json_object_get(r->doc, "inputs");
        if (!json_is_array(inputs) || json_array_size(inputs) != 1) {
            send_error(r, 400, "invalid_input",
                       "inputs: expected an array with one tensor (this model has one input)");
            return;
        }
        if (json_is_object(json_array_get(inputs, 0)) &&
            !json_is_string(json_object_get(json_array_get(inputs, 0), "name"))) {
            send_error(r, 400, "invalid_input",
                       "inputs[0].name: expected a string (the tensor's name, \"input\")");
            return;
        }
        if (!requested_outputs(r, &m->desc))
            return;
        rc = mg_input_from_v2_json(&m->desc, json_array_get(inputs, 0), "inputs[0]", &r->inbuf,
                                   &r->job.view, err, sizeof(err));
        json_t *params = json_object_get(r->doc, "parameters");
        option = json_is_object(params) ? params : NULL;
        r->job.finish = finish_v2;
    }
    if (rc == MG_E_LIMIT) {
        send_error(r, 413, "too_many_items", err);
        return;
    }
    if (rc != MG_OK) {
        send_error(r, rc == MG_E_NOMEM ? 503 : 400, "invalid_input", err);
        return;
    }
    r->job.option = option;
    r->job.features = r->features;
    r->job.done = job_done;
    r->job.ctx = r;
    r->in_job = true;
    mg_batcher_submit(rt->batcher, &r->job);
}

static void on_end(mg_srv_stream_t *s, const mg_hdr_t *trailers, size_t n)
{
    rt_req_t *r = mg_srv_data(s);
    if (r == NULL || r->ep == EP_NONE || r->too_large || mg_srv_responded(s))
        return;
    dispatch(r);
}

static void on_drain(mg_srv_stream_t *s)
{
}

static void on_close(mg_srv_stream_t *s, bool complete)
{
    rt_req_t *r = mg_srv_data(s);
    if (r == NULL)
        return;
    mg_srv_set_data(s, NULL);
    r->s = NULL;
    if (r->in_job) {
        r->closed = true; /* freed when the job comes back */
        return;
    }
    req_free(r);
}

static const mg_srv_handler_t handler = {
    .on_request = on_request,
    .on_body = on_body,
    .on_end = on_end,
    .on_drain = on_drain,
    .on_close = on_close,
};

const mg_srv_handler_t *mg_rt_handler(void)
{
    return &handler;
}

mg_rt_t *mg_rt_new(struct event_base *base, mg_slot_t *slot, mg_batcher_t *batcher,
                   const mg_rt_conf_t *conf)
{
    mg_rt_t *rt = calloc(1, sizeof(*rt));
    if (rt == NULL)
        return NULL;
    rt->base = base;
    rt->slot = slot;
    rt->batcher = batcher;
    rt->conf = *conf;
    if (rt->conf.max_body == 0)
        rt->conf.max_body = 4u << 20;
    rt->service = strdup(conf->service ? conf->service : "");
    rt->conf.service = rt->service;
    return rt;
}

size_t mg_rt_inflight(const mg_rt_t *rt)
{
    return rt->inflight;
}

void mg_rt_free(mg_rt_t *rt)
{
    if (rt == NULL)
        return;
    while (rt->free_reqs) {
        rt_req_t *r = rt->free_reqs;
        rt->free_reqs = r->next_free;
        evbuffer_free(r->body);
        mg_input_buf_clear(&r->inbuf);
        free(r->resp);
        free(r->fast);
        free(r);
    }
    free(rt->service);
    free(rt);
}
