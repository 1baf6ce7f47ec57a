/*
 * backends/runtime/main.c - modelgate-runtime: the model-serving pod.
 *
 * DESIGN
 * One event loop thread serves HTTP/2 (h2c prior knowledge) and HTTP/1.1 on the listen
 * address(es) and parses requests; a pool of inference threads runs the predictions (batch.h);
 * a loader thread loads and switches models (slot.h). Signals are taken on the loop through
 * libevent: SIGHUP reloads the model source now, SIGTERM/SIGINT stop accepting, finish the
 * requests in flight (up to --drain-ms) and exit 0.
 */
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "backends/runtime/api.h"
#include "backends/runtime/batch.h"
#include "backends/runtime/slot.h"
#include "common/evmem.h"
#include "common/h2server.h"
#include "common/listen.h"
#include "common/log.h"

#define MAX_LISTEN 8

typedef struct rt_opts {
    const char *listen[MAX_LISTEN];
    size_t nlisten;
    const char *model, *kind, *name, *version, *service;
    unsigned threads, max_batch, max_wait_us, watch_ms, drain_ms, warmup_rounds;
    size_t max_body, max_items;
} rt_opts_t;

static const char usage[] =
    "usage: modelgate-runtime --listen ADDR --model FILE --kind KIND [options]\n"
    "       modelgate-runtime --listen ADDR --model DESCRIPTOR.json [options]\n"
    "\n"
    "Serves one model over HTTP/2 (h2c prior knowledge) and HTTP/1.1 on the same port:\n"
    "POST /v1/predict, the Open Inference Protocol v2 (/v2/...), /healthz, /readyz,\n"
    "/v1/status and /metrics. SIGHUP (or a change of the model file or descriptor) switches\n"
    "to the new model in-process without dropping a request.\n"
    "\n"
    "  --listen ADDR        host:port or [v6]:port (repeatable)\n"
    "  --model PATH         a model file (with --kind), or a descriptor JSON naming file,\n"
    "                       kind, name, version, options and warm-up samples\n"
    "  --kind KIND          xgboost, linear, embedding or text\n"
    "  --name NAME          model name to report (with --kind)\n"
    "  --model-version V    model version to report (with --kind)\n"
    "  --service NAME       the service this pod belongs to (reported in /v1/status)\n"
    "  --threads N          inference threads (default: the CPUs this process may use, less\n"
    "                       one for the event loop; 0 = predict on the event loop thread,\n"
    "                       the default and the best choice with one CPU)\n"
    "  --max-batch N        items per predict call when coalescing requests (default 64)\n"
    "  --max-wait-us N      how long a batch may wait for more requests (default 0: only\n"
    "                       requests that arrived in the same loop turn)\n"
    "  --max-body BYTES     request body limit (default 4194304; larger: 413)\n"
    "  --max-items N        items per request (default 1024)\n"
    "  --watch-ms N         how often the model source is checked for changes (default 500)\n"
    "  --warmup N           synthetic warm-up predictions when the source has no samples\n"
    "                       (default 3)\n"
    "  --drain-ms N         on SIGTERM, how long requests in flight may take (default 10000)\n"
    "  --log-level LEVEL    debug, info, warn or error\n"
    "  -h, --help           this text\n"
    "  -V, --version        print the version\n";

static bool parse_uint(const char *flag, const char *v, unsigned long min, unsigned long max,
                       unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (errno || *end || end == v || x < min || x > max || v[0] == '-') {
        fprintf(stderr,
                "modelgate-runtime: %s: expected a whole number from %lu to %lu, got '%s'\n", flag,
                min, max, v);
        return false;
    }
    *out = x;
    return true;
}

static int parse_args(int argc, char **argv, rt_opts_t *o)
{
    enum { O_NAME = 256, O_VERSION, O_SERVICE, O_THREADS, O_MAXB, O_WAIT, O_BODY, O_ITEMS,
           O_WATCH, O_DRAIN, O_WARM, O_LOG };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"model", required_argument, NULL, 'm'},
        {"kind", required_argument, NULL, 'k'},
        {"name", required_argument, NULL, O_NAME},
        {"model-version", required_argument, NULL, O_VERSION},
        {"service", required_argument, NULL, O_SERVICE},
        {"threads", required_argument, NULL, O_THREADS},
        {"max-batch", required_argument, NULL, O_MAXB},
        {"max-wait-us", required_argument, NULL, O_WAIT},
        {"max-body", required_argument, NULL, O_BODY},
        {"max-items", required_argument, NULL, O_ITEMS},
        {"watch-ms", required_argument, NULL, O_WATCH},
        {"drain-ms", required_argument, NULL, O_DRAIN},
        {"warmup", required_argument, NULL, O_WARM},
        {"log-level", required_argument, NULL, O_LOG},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    /* the CPUs this process may run on (taskset, a container's cpuset): the loop keeps one,
     * inference gets the rest; with one CPU, predictions run on the loop (no hand-off) */
    cpu_set_t cpus;
    long ncpu = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus)
                                                               : sysconf(_SC_NPROCESSORS_ONLN);
    *o = (rt_opts_t){.threads = ncpu > 1 ? (unsigned)(ncpu - 1) : 0, .max_batch = 64,
                     .watch_ms = 500, .drain_ms = 10000, .warmup_rounds = 3,
                     .max_body = 4u << 20, .max_items = 1024};
    int c;
    unsigned long v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (o->nlisten == MAX_LISTEN) {
                fprintf(stderr, "modelgate-runtime: --listen: at most %d\n", MAX_LISTEN);
                return 1;
            }
            o->listen[o->nlisten++] = optarg;
            break;
        case 'm': o->model = optarg; break;
        case 'k': o->kind = optarg; break;
        case O_NAME: o->name = optarg; break;
        case O_VERSION: o->version = optarg; break;
        case O_SERVICE: o->service = optarg; break;
        case O_THREADS:
            if (!parse_uint("--threads", optarg, 0, 256, &v))
                return 1;
            o->threads = (unsigned)v;
            break;
        case O_MAXB:
            if (!parse_uint("--max-batch", optarg, 1, 100000, &v))
                return 1;
            o->max_batch = (unsigned)v;
            break;
        case O_WAIT:
            if (!parse_uint("--max-wait-us", optarg, 0, 1000000, &v))
                return 1;
            o->max_wait_us = (unsigned)v;
            break;
        case O_BODY:
            if (!parse_uint("--max-body", optarg, 1, 1ul << 30, &v))
                return 1;
            o->max_body = v;
            break;
        case O_ITEMS:
            if (!parse_uint("--max-items", optarg, 1, 1000000, &v))
                return 1;
            o->max_items = v;
            break;
        case O_WATCH:
            if (!parse_uint("--watch-ms", optarg, 1, 3600000, &v))
                return 1;
            o->watch_ms = (unsigned)v;
            break;
        case O_DRAIN:
            if (!parse_uint("--drain-ms", optarg, 0, 3600000, &v))
                return 1;
            o->drain_ms = (unsigned)v;
            break;
        case O_WARM:
            if (!parse_uint("--warmup", optarg, 0, 1000, &v))
                return 1;
            o->warmup_rounds = (unsigned)v;
            break;
        case O_LOG: {
            int lvl = mg_log_level_parse(optarg);
            if (lvl < 0) {
                fprintf(stderr, "modelgate-runtime: --log-level: expected debug, info, warn or "
                                "error, got '%s'\n", optarg);
                return 1;
            }
            mg_log_level = (mg_log_level_t)lvl;
            break;
        }
        case 'h': fputs(usage, stdout); return -1;
        case 'V': printf("modelgate-runtime %s\n", MG_VERSION); return -1;
        default:
            fprintf(stderr, "modelgate-runtime: unknown or incomplete option '%s'\n%s",
                    argv[optind - 1], "(modelgate-runtime --help lists the options)\n");
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "modelgate-runtime: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    if (o->nlisten == 0 || o->model == NULL) {
        fprintf(stderr, "modelgate-runtime: --listen and --model are required\n%s", usage);
        return 1;
    }
    if (o->kind == NULL && (o->name || o->version)) {
        fprintf(stderr, "modelgate-runtime: --name/--model-version go with --kind; a descriptor "
                        "names its model itself\n");
        return 1;
    }
    return 0;
}

typedef struct runtime {
    struct event_base *base;
    mg_srv_t *srv;
    mg_rt_t *api;
    mg_slot_t *slot;
    mg_batcher_t *batcher;
    struct event *check;
    unsigned drain_ms;
    bool draining;
} runtime_t;

static void on_check(evutil_socket_t fd, short what, void *arg)
{
    runtime_t *rt = arg;
    if (mg_srv_nconns(rt->srv) == 0 && mg_rt_inflight(rt->api) == 0)
        event_base_loopexit(rt->base, NULL);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    runtime_t *rt = arg;
    MG_LOG(MG_LOG_WARN, "runtime", "drain deadline of %u ms passed; closing what is left",
           rt->drain_ms);
    event_base_loopbreak(rt->base);
}

static void on_sigterm(evutil_socket_t sig, short what, void *arg)
{
    runtime_t *rt = arg;
    if (rt->draining) {
        event_base_loopbreak(rt->base);
        return;
    }
    rt->draining = true;
    MG_LOG(MG_LOG_INFO, "runtime", "signal %d: draining (deadline %u ms)", (int)sig,
           rt->drain_ms);
    mg_srv_shutdown(rt->srv);
    struct timeval tick = {0, 20000};
    event_add(rt->check, &tick);
    if (rt->drain_ms) {
        struct timeval tv = {rt->drain_ms / 1000, (rt->drain_ms % 1000) * 1000};
        event_base_once(rt->base, -1, EV_TIMEOUT, on_deadline, rt, &tv);
    }
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    runtime_t *rt = arg;
    MG_LOG(MG_LOG_INFO, "runtime", "SIGHUP: loading the model source again");
    mg_slot_reload(rt->slot);
}

int main(int argc, char **argv)
{
    mg_evmem_install(); /* before libevent allocates anything */
    rt_opts_t o;
    int prc = parse_args(argc, argv, &o);
    if (prc != 0)
        return prc < 0 ? 0 : 1;
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    /* concurrency comes from our inference threads, not from a BLAS pool per call */
    setenv("OPENBLAS_NUM_THREADS", "1", 0);

    runtime_t rt = {.drain_ms = o.drain_ms};
    mg_slot_source_t src = o.kind ? (mg_slot_source_t){.file = o.model, .kind = o.kind,
                                                       .name = o.name, .version = o.version}
                                  : (mg_slot_source_t){.descriptor = o.model};
    if (o.kind == NULL) { /* check the descriptor now: a typo should not start a pod */
        char *f, *k, *n, *v, *opt;
        json_t *wu;
        char err[512];
        if (mg_slot_read_descriptor(o.model, &f, &k, &n, &v, &opt, &wu, err, sizeof(err)) !=
            MG_OK) {
            fprintf(stderr, "modelgate-runtime: %s\n", err);
            return 1;
        }
        free(f);
        free(k);
        free(n);
        free(v);
        free(opt);
        json_decref(wu);
    } else if (mg_model_kind_find(o.kind) == NULL) {
        char kinds[128];
        fprintf(stderr, "modelgate-runtime: --kind: unknown model kind '%s'; valid:%s\n", o.kind,
                mg_model_kind_list(kinds, sizeof(kinds)));
        return 1;
    }

    int rc = 1;
    struct event *sigs[3] = {NULL, NULL, NULL};
    rt.base = event_base_new();
    rt.slot = mg_slot_new(&src, o.watch_ms, o.warmup_rounds);
    rt.batcher = rt.base ? mg_batcher_new(rt.base, o.threads, o.max_batch, o.max_wait_us) : NULL;
    mg_rt_conf_t ac = {.service = o.service, .max_body = o.max_body, .max_items = o.max_items};
    rt.api = rt.batcher ? mg_rt_new(rt.base, rt.slot, rt.batcher, &ac) : NULL;
    /* a 64 KiB HPACK table: a gateway indexes the features of users whose requests repeat,
     * and about a hundred users' features then stay indexed instead of six */
    mg_srv_conf_t sc = {.max_concurrent_streams = 1000,
                        .max_header_list_size = 65536,
                        .header_table_size = 65536,
                        .max_headers = 100,
                        .stream_window = 1 << 20,
                        .connection_window = 16 << 20,
                        .connection_buffer = 4 << 20,
                        .client_idle_ms = 120000,
                        .client_write_ms = 30000,
                        /* a prediction is answered to a client that half-closed after it */
                        .h1_answer_half_closed = true};
    rt.srv = rt.api ? mg_srv_new(rt.base, &sc, mg_rt_handler(), rt.api, NULL) : NULL;
    rt.check = rt.base ? event_new(rt.base, -1, EV_PERSIST, on_check, &rt) : NULL;
    if (rt.slot == NULL || rt.srv == NULL || rt.check == NULL) {
        fprintf(stderr, "modelgate-runtime: cannot start (out of memory or threads)\n");
        goto out;
    }
    for (size_t i = 0; i < o.nlisten; i++) {
        char err[512];
        int fd = mg_listen_bind(o.listen[i], true, err, sizeof(err));
        if (fd < 0 || mg_srv_listen(rt.srv, fd, false) != MG_OK) {
            fprintf(stderr, "modelgate-runtime: %s\n", fd < 0 ? err : "cannot serve");
            goto out;
        }
    }
    static const int signo[3] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(rt.base, signo[i], signo[i] == SIGHUP ? on_sighup : on_sigterm, &rt);
        if (sigs[i] == NULL || event_add(sigs[i], NULL) != 0) {
            fprintf(stderr, "modelgate-runtime: cannot watch signals\n");
            goto out;
        }
    }
    if (mg_slot_start(rt.slot) != MG_OK) {
        fprintf(stderr, "modelgate-runtime: cannot start the model loader\n");
        goto out;
    }
    MG_LOG(MG_LOG_INFO, "runtime",
           "modelgate-runtime %s on %s: %u inference thread(s), batches of up to %u (wait %u "
           "us); loading %s",
           MG_VERSION, o.listen[0], o.threads, o.max_batch, o.max_wait_us, o.model);

    event_base_dispatch(rt.base);
    rc = 0;

out: /* a refused start frees what it made too: the sanitizer build reports no leak */
    mg_srv_free(rt.srv);         /* closes client streams: requests in jobs are marked closed */
    mg_batcher_free(rt.batcher); /* finishes queued jobs, which recycle their requests */
    mg_rt_free(rt.api);
    mg_slot_free(rt.slot);
    for (size_t i = 0; i < 3; i++)
        if (sigs[i])
            event_free(sigs[i]);
    if (rt.check)
        event_free(rt.check);
    if (rt.base)
        event_base_free(rt.base);
    mg_evmem_flush(); /* the loop thread's chains */
    if (rc == 0)
        MG_LOG(MG_LOG_INFO, "runtime", "stopped");
    return rc;
}
