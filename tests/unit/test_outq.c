/* tests/unit/test_outq.c - cleartext output written by the loop's queue (common/outq.c), over
 * real socket pairs: written without EPOLLOUT, in one write per turn, handed back to the
 * bufferevent when the socket is full and taken again once it drains, freed while queued; read
 * by the queue's reader, up to MG_OUTQ_READ_MAX bytes per readable event, with end of stream and
 * errors reported as the bufferevent reports them. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/outq.h"

typedef struct {
    struct event_base *base;
    mg_outq_t *q;
    int peer; /* the other end of the pair: the test reads here */
    struct bufferevent *bev;
    mg_outq_item_t item;
    int written; /* calls of the write callback */
    bool free_in_written;
} fixture_t;

static void on_written(struct bufferevent *bev, void *arg)
{
    fixture_t *f = arg;
    f->written++;
    mg_outq_bev_written(&f->item);
    if (f->free_in_written) { /* the owner frees the connection from its write callback */
        mg_outq_detach(&f->item);
        bufferevent_free(bev);
        f->bev = NULL;
    }
}

static void setup_pair(fixture_t *f, int sndbuf)
{
    memset(f, 0, sizeof(*f));
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    if (sndbuf)
        assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
    evutil_make_socket_nonblocking(sv[0]);
    evutil_make_socket_nonblocking(sv[1]);
    f->peer = sv[1];
    f->base = event_base_new();
    f->q = mg_outq_new(f->base);
    assert_non_null(f->q);
    f->bev = bufferevent_socket_new(f->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(f->bev, NULL, on_written, NULL, f);
    bufferevent_enable(f->bev, EV_READ | EV_WRITE);
    assert_true(mg_outq_attach(f->q, &f->item, f->bev, on_written, f));
}

static void teardown_pair(fixture_t *f)
{
    if (f->bev) {
        mg_outq_detach(&f->item);
        bufferevent_free(f->bev);
    }
    mg_outq_free(f->q);
    event_base_free(f->base);
    if (f->peer >= 0)
        close(f->peer);
}

static size_t drain_peer(fixture_t *f, char *into, size_t cap)
{
    size_t got = 0;
    ssize_t n;
    while (got < cap && (n = read(f->peer, into + got, cap - got)) > 0)
        got += (size_t)n;
    return got;
}

/* One turn of the loop: poll without waiting, run what is due, stop (NONBLOCK alone loops on
 * while callbacks keep becoming active). */
static void turn(fixture_t *f)
{
    event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

static void writes_without_epollout_once_per_turn(void **state)
{
    (void)state;
    fixture_t f;
    setup_pair(&f, 0);
    /* attached with an empty output: the bufferevent no longer watches for writability */
    assert_int_equal(bufferevent_get_enabled(f.bev) & EV_WRITE, 0);
    bufferevent_write(f.bev, "hello ", 6);
    bufferevent_write(f.bev, "world", 5);
    char buf[64];
    assert_int_equal(drain_peer(&f, buf, sizeof(buf)), 0); /* nothing before the loop runs */
    turn(&f); /* one turn: the queue's run, not a wait for EPOLLOUT */
    size_t n = drain_peer(&f, buf, sizeof(buf));
    assert_int_equal(n, 11);
    assert_memory_equal(buf, "hello world", 11);
    assert_int_equal(evbuffer_get_length(bufferevent_get_output(f.bev)), 0);
    assert_int_equal(f.written, 1); /* told once, as a bufferevent's write callback would be */
    assert_int_equal(bufferevent_get_enabled(f.bev) & EV_WRITE, 0);
    teardown_pair(&f);
}

/* A request's answer, written from its read callback */
static void on_read_answer(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_write(bev, "answer", 6);
}

/* Output that a callback adds while the loop runs leaves in the same loop turn: one
 * epoll_wait per readable event, not a second one (returning nothing) before the write. */
static void output_of_a_callback_leaves_in_its_own_turn(void **state)
{
    (void)state;
    fixture_t f;
    setup_pair(&f, 0);
    bufferevent_setcb(f.bev, on_read_answer, on_written, NULL, &f);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(write(f.peer, "ask", 3), 3);
        turn(&f); /* reads "ask", and the callback's answer goes out in this turn */
        char buf[16];
        size_t n = drain_peer(&f, buf, sizeof(buf));
        assert_int_equal(n, 6);
        assert_memory_equal(buf, "answer", 6);
        assert_int_equal(f.written, i + 1);
    }
    teardown_pair(&f);
}

static void full_socket_goes_back_to_the_bufferevent_and_returns(void **state)
{
    (void)state;
    fixture_t f;
    setup_pair(&f, 4096);
    size_t total = 4 << 20; /* far more than the socket holds */
    char *data = malloc(total), *got = malloc(total);
    assert_non_null(data);
    assert_non_null(got);
    for (size_t i = 0; i < total; i++)
        data[i] = (char)(i * 7 + i / 4096);
    bufferevent_write(f.bev, data, total);
    turn(&f);
    turn(&f);
    /* the socket took part: the rest waits for EPOLLOUT, with the bufferevent writing */
    assert_true(evbuffer_get_length(bufferevent_get_output(f.bev)) > 0);
    assert_int_not_equal(bufferevent_get_enabled(f.bev) & EV_WRITE, 0);
    size_t n = 0;
    for (int i = 0; i < 100000 && n < total; i++) {
        n += drain_peer(&f, got + n, total - n);
        event_base_loop(f.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    }
    assert_int_equal(n, total);
    assert_memory_equal(got, data, total);
    /* drained: the queue writes again */
    assert_int_equal(bufferevent_get_enabled(f.bev) & EV_WRITE, 0);
    bufferevent_write(f.bev, "x", 1);
    turn(&f);
    turn(&f);
    char c = 0;
    assert_int_equal(drain_peer(&f, &c, 1), 1);
    assert_int_equal(c, 'x');
    free(data);
    free(got);
    teardown_pair(&f);
}

static void detached_while_queued_is_not_written(void **state)
{
    (void)state;
    fixture_t f;
    setup_pair(&f, 0);
    int sv[2]; /* a second connection on the same loop and queue */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    evutil_make_socket_nonblocking(sv[0]);
    evutil_make_socket_nonblocking(sv[1]);
    struct bufferevent *other = bufferevent_socket_new(f.base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    mg_outq_item_t other_item;
    assert_true(mg_outq_attach(f.q, &other_item, other, on_written, &f));
    bufferevent_write(other, "gone", 4);
    bufferevent_write(f.bev, "kept", 4);
    mg_outq_detach(&other_item); /* that connection closes before the turn ends */
    bufferevent_free(other);
    turn(&f);
    turn(&f);
    char buf[8];
    assert_int_equal(drain_peer(&f, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "kept", 4);
    assert_int_equal(read(sv[1], buf, sizeof(buf)), 0); /* closed, "gone" never sent */
    close(sv[1]);
    teardown_pair(&f);
}

static void freed_from_its_write_callback(void **state)
{
    (void)state;
    fixture_t f;
    setup_pair(&f, 0);
    f.free_in_written = true;
    bufferevent_write(f.bev, "bye", 3);
    turn(&f);
    turn(&f);
    assert_null(f.bev); /* freed inside the queue's run; ASan checks nothing touched it after */
    char buf[8];
    assert_int_equal(drain_peer(&f, buf, sizeof(buf)), 3);
    teardown_pair(&f);
}

static int on_error_seen;
static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev, (void)arg;
    if (what & BEV_EVENT_ERROR)
        on_error_seen = 1;
}

static void peer_gone_is_reported_by_the_bufferevent(void **state)
{
    (void)state;
    fixture_t f;
    setup_pair(&f, 0);
    bufferevent_setcb(f.bev, NULL, on_written, on_event, &f);
    close(f.peer);
    f.peer = -1;
    on_error_seen = 0;
    bufferevent_write(f.bev, "lost", 4);
    for (int i = 0; i < 10 && !on_error_seen; i++)
        event_base_loop(f.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    assert_int_equal(on_error_seen, 1);
    teardown_pair(&f);
}

static size_t seen_on_read;
static int reads;
static short seen_events;
static int seen_errno;
static void on_read_all(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    seen_on_read = evbuffer_get_length(in);
    reads++;
    evbuffer_drain(in, seen_on_read);
}

static void on_read_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev, (void)arg;
    seen_events = what;
    seen_errno = EVUTIL_SOCKET_ERROR();
}

/* A pair whose reading the test watches: counters cleared, |on_read| as the read callback. */
static void setup_reader(fixture_t *f, bufferevent_data_cb on_read)
{
    setup_pair(f, 0);
    bufferevent_setcb(f->bev, on_read, on_written, on_read_event, f);
    reads = 0;
    seen_on_read = 0;
    seen_events = 0;
}

static void fill_peer(fixture_t *f, size_t len)
{
    static char data[100000];
    memset(data, 'r', sizeof(data));
    assert_true(len <= sizeof(data));
    size_t put = 0;
    while (put < len) {
        ssize_t n = write(f->peer, data + put, len - put);
        assert_true(n > 0);
        put += (size_t)n;
    }
}

static void one_read_per_event_up_to_the_max(void **state)
{
    (void)state;
    fixture_t f;
    setup_reader(&f, on_read_all);
    /* the reader has EV_READ: the bufferevent's own is off, and mg_outq_get_enabled says so */
    assert_int_equal(bufferevent_get_enabled(f.bev) & EV_READ, 0);
    assert_int_not_equal(mg_outq_get_enabled(&f.item, f.bev) & EV_READ, 0);
    fill_peer(&f, 100000);
    turn(&f);
    /* the bufferevent alone reads 4096 bytes per event; the reader, all it may */
    assert_int_equal(reads, 1);
    size_t first = seen_on_read; /* one 64 KiB chain's room */
    assert_true(first > MG_OUTQ_READ_MAX - 1024 && first <= MG_OUTQ_READ_MAX);
    turn(&f);
    assert_int_equal(reads, 2);
    assert_int_equal(seen_on_read, 100000 - first);
    turn(&f); /* nothing more: no callback */
    assert_int_equal(reads, 2);
    /* disabled, it reads nothing; enabled again, it does */
    mg_outq_disable(&f.item, f.bev, EV_READ);
    assert_int_equal(mg_outq_get_enabled(&f.item, f.bev) & EV_READ, 0);
    assert_int_equal(write(f.peer, "tail", 4), 4);
    turn(&f);
    assert_int_equal(reads, 2);
    mg_outq_enable(&f.item, f.bev, EV_READ);
    turn(&f);
    assert_int_equal(reads, 3);
    assert_int_equal(seen_on_read, 4);
    assert_int_equal(bufferevent_get_enabled(f.bev) & EV_READ, 0);
    teardown_pair(&f);
}

static void on_swapped_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    reads += 100;
    evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
}

static void end_of_stream_is_reported_and_reading_stops(void **state)
{
    (void)state;
    fixture_t f;
    setup_reader(&f, on_read_all);
    assert_int_equal(write(f.peer, "last", 4), 4);
    /* callbacks swapped (a lingering close does) are the ones the reader calls */
    bufferevent_setcb(f.bev, on_swapped_read, NULL, on_read_event, &f);
    shutdown(f.peer, SHUT_WR);
    turn(&f);
    assert_int_equal(reads, 100);
    turn(&f);
    assert_int_equal(seen_events, BEV_EVENT_READING | BEV_EVENT_EOF);
    assert_int_equal(mg_outq_get_enabled(&f.item, f.bev) & EV_READ, 0);
    seen_events = 0;
    turn(&f); /* stopped: not reported again */
    assert_int_equal(seen_events, 0);
    teardown_pair(&f);
}

static void a_reset_is_reported_with_its_error(void **state)
{
    (void)state;
    fixture_t f;
    setup_reader(&f, on_read_all);
    bufferevent_write(f.bev, "unread", 6);
    turn(&f);
    turn(&f); /* written: the peer closes without reading it, which resets */
    close(f.peer);
    f.peer = -1;
    seen_events = 0;
    for (int i = 0; i < 10 && seen_events == 0; i++)
        turn(&f);
    assert_int_equal(seen_events, BEV_EVENT_READING | BEV_EVENT_ERROR);
    assert_int_equal(seen_errno, ECONNRESET);
    teardown_pair(&f);
}

static void on_read_free(struct bufferevent *bev, void *arg)
{
    fixture_t *f = arg;
    reads++;
    mg_outq_detach(&f->item);
    bufferevent_free(bev);
    f->bev = NULL;
}

static void freed_from_its_read_callback(void **state)
{
    (void)state;
    fixture_t f;
    setup_reader(&f, on_read_free);
    assert_int_equal(write(f.peer, "bye", 3), 3);
    turn(&f);
    assert_int_equal(reads, 1);
    assert_null(f.bev); /* ASan checks the reader touched nothing after */
    assert_int_equal(write(f.peer, "more", 4), -1); /* closed with the bufferevent */
    turn(&f);
    assert_int_equal(reads, 1);
    teardown_pair(&f);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(writes_without_epollout_once_per_turn),
        cmocka_unit_test(output_of_a_callback_leaves_in_its_own_turn),
        cmocka_unit_test(full_socket_goes_back_to_the_bufferevent_and_returns),
        cmocka_unit_test(detached_while_queued_is_not_written),
        cmocka_unit_test(freed_from_its_write_callback),
        cmocka_unit_test(peer_gone_is_reported_by_the_bufferevent),
        cmocka_unit_test(one_read_per_event_up_to_the_max),
        cmocka_unit_test(end_of_stream_is_reported_and_reading_stops),
        cmocka_unit_test(a_reset_is_reported_with_its_error),
        cmocka_unit_test(freed_from_its_read_callback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
