/*
 * backends/runtime/batch.c - batcher and inference thread pool.
 *
 * DESIGN
 * Loop side: |pending| collects jobs; it is flushed into batches when it holds max_items items,
 * when the max_wait timer fires, or (max_wait 0) by a zero-delay event at the end of the loop
 * turn. A flush walks |pending| and cuts it into batches of compatible jobs; each batch is a
 * linked list of jobs appended to the work queue (mutex + condvar).
 * Thread side: a thread takes one batch, builds one input view over all its items (an items
 * array it keeps and grows, no per-batch allocation once warm), predicts once, calls every job's
 * finish, then puts the jobs on the done list and writes one byte to the loop's pipe.
 */
#include "backends/runtime/batch.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

typedef struct worker_state {
    mg_outputs_t out;
    mg_input_item_t *items;
    size_t items_cap;
} worker_state_t;

typedef struct batch {
    mg_job_t *jobs; /* in arrival order */
    struct batch *next;
} batch_t;

struct mg_batcher {
    struct event_base *loop;
    size_t max_items;
    unsigned max_wait_us;
    /* loop side */
    mg_job_t *pending, **pending_tail;
    size_t pending_items;
    struct event *flush_ev; /* timer, or zero-delay */
    struct event *done_ev;  /* pipe readable */
    int pipe[2];
    batch_t *free_batches;
    /* shared */
    pthread_mutex_t lock;
    pthread_cond_t work;
    batch_t *queue, **queue_tail;
    mg_job_t *done, **done_tail;
    bool stop;
    unsigned nthreads;
    pthread_t *threads;
    unsigned inflight; /* batches queued or running */
    mg_batcher_stats_t stats;
    worker_state_t inline_ws; /* nthreads == 0: predictions run on the loop thread */
};

static void run_batch(mg_batcher_t *b, batch_t *bt, worker_state_t *ws);

static bool compatible(const mg_job_t *a, const mg_job_t *b)
{
    if (a->model != b->model)
        return false;
    if (a->model->desc.uses_option && (a->option || b->option))
        return false; /* options apply to a whole predict call */
    if (a->model->desc.uses_features && (a->features || b->features))
        return false;
    return true;
}

static batch_t *batch_new(mg_batcher_t *b)
{
    batch_t *bt = b->free_batches;
    if (bt)
        b->free_batches = bt->next;
    else if ((bt = malloc(sizeof(*bt))) == NULL)
        return NULL;
    bt->jobs = NULL;
    bt->next = NULL;
    return bt;
}

/* Cuts |pending| into batches and queues them. Loop thread. */
static void flush(mg_batcher_t *b)
{
    while (b->pending) {
        batch_t *bt = batch_new(b);
        if (bt == NULL)
            return; /* retried at the next flush */
        mg_job_t *head = b->pending, **tail = &bt->jobs;
        size_t items = 0;
        /* take the first job, then every later compatible one while the batch has room */
        mg_job_t **pp = &b->pending;
        while (*pp) {
            mg_job_t *j = *pp;
            if (j == head ||
                (compatible(head, j) && items + j->view.n <= b->max_items)) {
                *pp = j->_next;
                j->_next = NULL;
                *tail = j;
                tail = &j->_next;
                items += j->view.n;
                b->pending_items -= j->view.n;
            } else {
                pp = &j->_next;
            }
        }
        b->pending_tail = &b->pending;
        for (mg_job_t *j = b->pending; j; j = j->_next)
            b->pending_tail = &j->_next;
        if (b->nthreads == 0) { /* inline: predict here, answer at once */
            run_batch(b, bt, &b->inline_ws);
            mg_job_t *j = bt->jobs;
            bt->jobs = NULL;
            bt->next = b->free_batches;
            b->free_batches = bt;
            while (j) {
                mg_job_t *next = j->_next;
                j->done(j);
                j = next;
            }
            continue;
        }
        pthread_mutex_lock(&b->lock);
        *b->queue_tail = bt;
        b->queue_tail = &bt->next;
        b->inflight++;
        pthread_cond_signal(&b->work);
        pthread_mutex_unlock(&b->lock);
    }
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    flush(arg);
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    mg_batcher_t *b = arg;
    char buf[256];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    pthread_mutex_lock(&b->lock);
    mg_job_t *j = b->done;
    b->done = NULL;
    b->done_tail = &b->done;
    pthread_mutex_unlock(&b->lock);
    while (j) {
        mg_job_t *next = j->_next;
        j->done(j);
        j = next;
    }
}

void mg_batcher_submit(mg_batcher_t *b, mg_job_t *job)
{
    job->_next = NULL;
    *b->pending_tail = job;
    b->pending_tail = &job->_next;
    b->pending_items += job->view.n;
    b->stats.jobs++;
    if (b->pending_items >= b->max_items) {
        event_del(b->flush_ev);
        flush(b);
        return;
    }
    if (!event_pending(b->flush_ev, EV_TIMEOUT, NULL)) {
        struct timeval tv = {b->max_wait_us / 1000000, b->max_wait_us % 1000000};
        event_add(b->flush_ev, &tv); /* 0 us: runs after this loop turn's other events */
    }
}

/* ---------- inference threads ---------- */


static void run_batch(mg_batcher_t *b, batch_t *bt, worker_state_t *ws)
{
    size_t n = 0;
    for (mg_job_t *j = bt->jobs; j; j = j->_next)
        n += j->view.n;
    mg_err_t rc = MG_OK;
    mg_input_view_t view;
    if (bt->jobs->_next == NULL) {
        view = bt->jobs->view; /* one job: its view as it is (dense hint kept) */
    } else {
        if (n > ws->items_cap) {
            mg_input_item_t *it = realloc(ws->items, sizeof(*it) * n);
            if (it == NULL) {
                rc = MG_E_NOMEM;
                goto finish;
            }
            ws->items = it;
            ws->items_cap = n;
        }
        size_t k = 0;
        for (mg_job_t *j = bt->jobs; j; j = j->_next) {
            memcpy(ws->items + k, j->view.items, sizeof(mg_input_item_t) * j->view.n);
            k += j->view.n;
        }
        view = (mg_input_view_t){.n = n, .items = ws->items, .batch = true};
    }
    const mg_job_t *h = bt->jobs;
    rc = mg_model_predict(h->model, &view, h->option, h->features, &ws->out);
finish:;
    size_t first = 0;
    for (mg_job_t *j = bt->jobs; j; j = j->_next) {
        if (rc != MG_OK && rc != MG_E_PROTO && ws->out.err[0] == '\0')
            strcpy(ws->out.err, mg_strerror(rc));
        j->finish(j, rc, &ws->out, first);
        first += j->view.n;
    }
    pthread_mutex_lock(&b->lock);
    b->stats.batches++;
    b->stats.items += n;
    pthread_mutex_unlock(&b->lock);
}

static void *worker_main(void *arg)
{
    mg_batcher_t *b = arg;
    worker_state_t ws = {0};
    mg_outputs_init(&ws.out);
    pthread_mutex_lock(&b->lock);
    for (;;) {
        while (b->queue == NULL && !b->stop)
            pthread_cond_wait(&b->work, &b->lock);
        if (b->queue == NULL)
            break;
        batch_t *bt = b->queue;
        b->queue = bt->next;
        if (b->queue == NULL)
            b->queue_tail = &b->queue;
        pthread_mutex_unlock(&b->lock);
        run_batch(b, bt, &ws);
        pthread_mutex_lock(&b->lock);
        mg_job_t *last = bt->jobs;
        while (last->_next)
            last = last->_next;
        *b->done_tail = bt->jobs;
        b->done_tail = &last->_next;
        b->inflight--;
        bt->next = NULL;
        bt->jobs = NULL;
        /* the batch struct goes back to the loop side's free list through the done path */
        free(bt);
        pthread_mutex_unlock(&b->lock);
        ssize_t w = write(b->pipe[1], "!", 1); /* a full pipe already holds a wake-up */
        (void)w;
        pthread_mutex_lock(&b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    mg_outputs_clear(&ws.out);
    free(ws.items);
    return NULL;
}

mg_batcher_t *mg_batcher_new(struct event_base *loop, unsigned threads, size_t max_items,
                             unsigned max_wait_us)
{
    mg_batcher_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->loop = loop;
    b->max_items = max_items ? max_items : 64;
    b->max_wait_us = max_wait_us;
    b->pending_tail = &b->pending;
    b->queue_tail = &b->queue;
    b->done_tail = &b->done;
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->work, NULL);
    if (pipe2(b->pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        goto fail;
    b->flush_ev = evtimer_new(loop, on_flush, b);
    b->done_ev = event_new(loop, b->pipe[0], EV_READ | EV_PERSIST, on_done, b);
    if (b->flush_ev == NULL || b->done_ev == NULL || event_add(b->done_ev, NULL) != 0)
        goto fail;
    b->nthreads = threads; /* 0: inline on the loop thread */
    mg_outputs_init(&b->inline_ws.out);
    b->threads = calloc(b->nthreads ? b->nthreads : 1, sizeof(pthread_t));
    if (b->threads == NULL)
        goto fail;
    for (unsigned i = 0; i < b->nthreads; i++) {
        if (pthread_create(&b->threads[i], NULL, worker_main, b) != 0) {
            b->nthreads = i;
            goto fail;
        }
        pthread_setname_np(b->threads[i], "mg-infer");
    }
    return b;
fail:
    MG_LOG(MG_LOG_ERROR, "batch", "cannot start the inference threads");
    mg_batcher_free(b);
    return NULL;
}

void mg_batcher_stats(mg_batcher_t *b, mg_batcher_stats_t *out)
{
    pthread_mutex_lock(&b->lock);
    *out = b->stats;
    pthread_mutex_unlock(&b->lock);
}

void mg_batcher_free(mg_batcher_t *b)
{
    if (b == NULL)
        return;
    if (b->flush_ev)
        flush(b);
    pthread_mutex_lock(&b->lock);
    b->stop = true; /* threads finish the queue first: they stop only when it is empty */
    pthread_cond_broadcast(&b->work);
    pthread_mutex_unlock(&b->lock);
    for (unsigned i = 0; i < b->nthreads; i++)
        pthread_join(b->threads[i], NULL);
    if (b->done_ev)
        on_done(b->pipe[0], EV_READ, b); /* the last finished jobs */
    while (b->free_batches) {
        batch_t *bt = b->free_batches;
        b->free_batches = bt->next;
        free(bt);
    }
    if (b->flush_ev)
        event_free(b->flush_ev);
    if (b->done_ev)
        event_free(b->done_ev);
    if (b->pipe[0] > 0) {
        close(b->pipe[0]);
        close(b->pipe[1]);
    }
    free(b->threads);
    mg_outputs_clear(&b->inline_ws.out);
    free(b->inline_ws.items);
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->work);
    free(b);
}
