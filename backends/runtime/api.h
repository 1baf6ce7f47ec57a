/*
 * backends/runtime/api.h - the runtime's HTTP API on top of common/h2server.
 *
 *   POST /v1/predict                  {"input": X} or {"inputs": [X, ...]}, "option": {...}
 *   POST /v2/models/{name}[/versions/{v}]/infer   Open Inference Protocol (KServe/Triton v2)
 *   GET  /v2/health/live, /v2/health/ready, /v2/models/{name}[/ready]
 *   GET  /healthz, /readyz, /v1/status, /metrics
 *
 * Runs on one event loop (the one the mg_srv_t runs on). Bodies are collected per request up to
 * |max_body| (413 past it), parsed on the loop, and handed to the batcher with the model the
 * request took from the slot; the inference thread formats the answer, the loop sends it. All
 * counters are touched by the loop thread only.
 */
#ifndef MG_BACKENDS_RUNTIME_API_H
#define MG_BACKENDS_RUNTIME_API_H

#include <stddef.h>

#include <event2/event.h>

#include "backends/runtime/batch.h"
#include "backends/runtime/slot.h"
#include "common/h2server.h"

typedef struct mg_rt mg_rt_t;

typedef struct mg_rt_conf {
    const char *service; /* reported in /v1/status; may be NULL */
    size_t max_body;     /* bytes */
    size_t max_items;    /* items per request */
} mg_rt_conf_t;

mg_rt_t *mg_rt_new(struct event_base *base, mg_slot_t *slot, mg_batcher_t *batcher,
                   const mg_rt_conf_t *conf);

/* The mg_srv_t handler; pass the runtime as its |ud|. */
const mg_srv_handler_t *mg_rt_handler(void);

/* Requests in flight (for draining). */
size_t mg_rt_inflight(const mg_rt_t *rt);

void mg_rt_free(mg_rt_t *rt);

#endif /* MG_BACKENDS_RUNTIME_API_H */
