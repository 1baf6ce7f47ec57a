/*
 * tests/unit/test_features_rloop.c - hiredis on libevent through features/rloop.h, against a
 * fake Redis on a loopback socket driven by the test: connect, a pipeline written at once and
 * answered in order, a command too large for the socket buffers (the write blocks and must
 * finish through the write event), and the server closing the connection.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "features/rloop.h"

typedef struct fixture {
    struct event_base *base;
    redisAsyncContext *ac;
    int lfd, sfd; /* listener, server side of the connection */
    int connected, disconnected, replies;
    char last[64];
} fixture_t;

static void on_connect(const redisAsyncContext *ac, int status)
{
    fixture_t *x = ac->data;
    x->connected = status == REDIS_OK ? 1 : -1;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    fixture_t *x = ac->data;
    (void)status;
    x->disconnected = 1;
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    fixture_t *x = priv;
    redisReply *reply = r;
    (void)ac;
    if (reply) {
        x->replies++;
        snprintf(x->last, sizeof(x->last), "%s", reply->str ? reply->str : "");
    }
}

/* Runs the loop, non-blocking, until |*flag| is |want| or 5 s of passes went by. */
static void loop_until(fixture_t *x, const int *flag, int want)
{
    for (int i = 0; i < 50000 && *flag != want; i++) {
        event_base_loop(x->base, EVLOOP_NONBLOCK);
        if (*flag != want)
            usleep(100);
    }
    assert_int_equal(*flag, want);
}

/* Reads from the server side until |n| bytes came, running the client's loop meanwhile. */
static size_t server_read(fixture_t *x, char *buf, size_t n)
{
    size_t got = 0;
    for (int i = 0; i < 200000 && got < n; i++) {
        ssize_t k = recv(x->sfd, buf + got, n - got, MSG_DONTWAIT);
        if (k > 0)
            got += (size_t)k;
        else if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            break;
        event_base_loop(x->base, EVLOOP_NONBLOCK);
    }
    return got;
}

static int setup(void **state)
{
    fixture_t *x = calloc(1, sizeof(*x));
    x->base = event_base_new();
    x->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    assert_int_equal(bind(x->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(x->lfd, 4), 0);
    assert_int_equal(getsockname(x->lfd, (struct sockaddr *)&sa, &sl), 0);
    x->ac = redisAsyncConnect("127.0.0.1", ntohs(sa.sin_port));
    assert_non_null(x->ac);
    assert_int_equal(x->ac->err, 0);
    x->ac->data = x;
    assert_int_equal(mg_rloop_attach(x->ac, x->base), MG_OK);
    redisAsyncSetConnectCallback(x->ac, on_connect);
    redisAsyncSetDisconnectCallback(x->ac, on_disconnect);
    x->sfd = accept(x->lfd, NULL, NULL);
    assert_true(x->sfd >= 0);
    loop_until(x, &x->connected, 1);
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *x = *state;
    if (!x->disconnected)
        redisAsyncFree(x->ac);
    if (x->sfd >= 0)
        close(x->sfd);
    close(x->lfd);
    event_base_free(x->base);
    free(x);
    return 0;
}

static void pipeline_in_order(void **state)
{
    fixture_t *x = *state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(redisAsyncCommand(x->ac, on_reply, x, "GET k%d", i), REDIS_OK);
    static const char want[] = "*2\r\n$3\r\nGET\r\n$2\r\nk0\r\n"
                               "*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n"
                               "*2\r\n$3\r\nGET\r\n$2\r\nk2\r\n";
    char buf[256];
    assert_int_equal(server_read(x, buf, sizeof(want) - 1), sizeof(want) - 1);
    assert_memory_equal(buf, want, sizeof(want) - 1);
    static const char answer[] = "$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n";
    assert_int_equal(send(x->sfd, answer, sizeof(answer) - 1, 0), sizeof(answer) - 1);
    loop_until(x, &x->replies, 3);
    assert_string_equal(x->last, "c");
    /* and again, after the write path went idle */
    assert_int_equal(redisAsyncCommand(x->ac, on_reply, x, "PING"), REDIS_OK);
    assert_int_equal(server_read(x, buf, 14), 14);
    assert_int_equal(send(x->sfd, "+PONG\r\n", 7, 0), 7);
    loop_until(x, &x->replies, 4);
    assert_string_equal(x->last, "PONG");
}

static void a_write_that_blocks_completes(void **state)
{
    fixture_t *x = *state;
    int small = 64 * 1024; /* fixed buffers: the 8 MiB cannot go out in one write */
    assert_int_equal(setsockopt(x->ac->c.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    assert_int_equal(setsockopt(x->sfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    size_t n = 8 << 20;
    char *big = malloc(n), *buf = malloc(n + 64);
    memset(big, 'v', n);
    assert_int_equal(redisAsyncCommand(x->ac, on_reply, x, "SET k %b", big, n), REDIS_OK);
    for (int i = 0; i < 20; i++) /* let the direct write hit EAGAIN before the server reads */
        event_base_loop(x->base, EVLOOP_NONBLOCK);
    size_t head = strlen("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n"), total = head + n + 2;
    assert_int_equal(server_read(x, buf, total), total);
    assert_memory_equal(buf + head, big, n);
    assert_int_equal(send(x->sfd, "+OK\r\n", 5, 0), 5);
    loop_until(x, &x->replies, 1);
    assert_string_equal(x->last, "OK");
    free(big);
    free(buf);
}

static void server_close_disconnects(void **state)
{
    fixture_t *x = *state;
    assert_int_equal(redisAsyncCommand(x->ac, on_reply, x, "PING"), REDIS_OK);
    close(x->sfd);
    x->sfd = -1;
    loop_until(x, &x->disconnected, 1); /* hiredis frees the context (and our events) */
    assert_int_equal(x->replies, 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the gateway: a write to a closed socket is an error */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(pipeline_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(a_write_that_blocks_completes, setup, teardown),
        cmocka_unit_test_setup_teardown(server_close_disconnects, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
