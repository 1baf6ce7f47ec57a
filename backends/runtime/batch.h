/*
 * backends/runtime/batch.h - coalescing prediction requests and running them on worker threads.
 *
 * The event loop submits jobs (one per HTTP request: its parsed inputs and the model it took);
 * the batcher groups jobs that can share one predict call (same model, and no per-request
 * option or features that the model reads) into a batch of at most |max_items| items, waiting
 * at most |max_wait_us| for more (0: only what arrived in the same loop turn). A batch goes to a
 * pool of inference threads; each thread keeps its own reusable mg_outputs_t and merge buffers,
 * predicts, and hands every job its slice of the outputs through the job's |finish| callback --
 * on the inference thread, which formats the response there. Finished jobs come back to the
 * loop through a pipe and |done| runs on the loop thread.
 *
 * With |threads| 0 the predictions run on the loop thread itself, at the end of the loop turn
 * that gathered the batch: no hand-off between threads, the better choice for a pod with one
 * core (a model call is tens of microseconds), at the price of a loop that waits for it.
 *
 * Ownership: the caller owns jobs; a job is the batcher's from mg_batcher_submit until |done|.
 */
#ifndef MG_BACKENDS_RUNTIME_BATCH_H
#define MG_BACKENDS_RUNTIME_BATCH_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <jansson.h>

#include "backends/runtime/model.h"

typedef struct mg_batcher mg_batcher_t;
typedef struct mg_job mg_job_t;

struct mg_job {
    mg_model_t *model;    /* the caller's reference */
    mg_input_view_t view; /* the request's items */
    const json_t *option; /* may be NULL */
    const json_t *features;
    /* Called on an inference thread with the outputs of this job's items (|first| .. |first| +
     * view.n - 1 of |out|), or with |rc| != MG_OK and out->err when the predict call failed. */
    void (*finish)(mg_job_t *job, mg_err_t rc, const mg_outputs_t *out, size_t first);
    void (*done)(mg_job_t *job); /* on the loop thread, after finish */
    void *ctx;
    mg_job_t *_next;
    double _queued_at; /* for the queueing-time figures */
};

typedef struct mg_batcher_stats {
    unsigned long long batches, items, jobs;
} mg_batcher_stats_t;

mg_batcher_t *mg_batcher_new(struct event_base *loop, unsigned threads, size_t max_items,
                             unsigned max_wait_us);
void mg_batcher_submit(mg_batcher_t *b, mg_job_t *job);
void mg_batcher_stats(mg_batcher_t *b, mg_batcher_stats_t *out);
/* Waits for queued work to finish (running |done| for it), then stops the threads. */
void mg_batcher_free(mg_batcher_t *b);

#endif /* MG_BACKENDS_RUNTIME_BATCH_H */
