/*
 * tests/unit/test_dblog.c - the database request log's parts that need no server: the spool
 * (append, read, commit, replay after a simulated crash, a torn last line, the size cap and its
 * lost count, the directory lock, an appender and a reader running at once). Lines to rows:
 * test_dbrow.c. The database side is tested end to end against a real MariaDB in
 * tests/e2e/test_dblog.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/dblog.h"
#include "gateway/spool.h"
#include "thread_policy.h"

static char dir[64];

static int make_dir(void **state)
{
    (void)state;
    strcpy(dir, "/tmp/mg-test-dblog-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* "line NNNNNN <padding>\n", |width| bytes in all */
static size_t make_lines(char *buf, int first, int n, int width)
{
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        int k = snprintf(buf + o, 32, "line %06d ", first + i);
        memset(buf + o + k, 'x', (size_t)(width - k - 1));
        buf[o + (size_t)width - 1] = '\n';
        o += (size_t)width;
    }
    return o;
}

/* Reads every line from |pos| on (committing each batch when |commit|) and checks that they are
 * "line first", "line first+1", ...; returns how many. */
static int read_all(mg_spool_t *s, mg_spool_pos_t *pos, int first, size_t max_lines, bool commit)
{
    static char buf[1 << 20];
    int n = 0;
    for (;;) {
        size_t len, nl;
        mg_spool_pos_t next;
        mg_err_t rc = mg_spool_read(s, pos, buf, sizeof(buf), max_lines, &len, &nl, &next, NULL);
        if (rc == MG_E_AGAIN)
            break;
        assert_int_equal(rc, MG_OK);
        assert_true(nl >= 1 && nl <= max_lines);
        assert_int_equal(buf[len - 1], '\n');
        for (char *p = buf, *e = buf + len; p < e; p = memchr(p, '\n', (size_t)(e - p)) + 1) {
            int v;
            assert_int_equal(sscanf(p, "line %d ", &v), 1);
            assert_int_equal(v, first + n);
            n++;
        }
        if (commit)
            assert_int_equal(mg_spool_commit(s, next), MG_OK);
        *pos = next;
    }
    return n;
}

static mg_spool_t *open_spool(uint64_t cap)
{
    char err[256] = "";
    mg_spool_t *s = mg_spool_open(dir, cap, err, sizeof(err));
    if (s == NULL)
        fail_msg("mg_spool_open: %s", err);
    return s;
}

static int count_segments(void)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        n += strstr(de->d_name, ".spool") != NULL;
    if (d)
        closedir(d);
    return n;
}

static void append_read_commit(void **state)
{
    (void)state;
    char buf[4096];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(1 << 20);
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 100, true), 0); /* empty */

    size_t n = make_lines(buf, 0, 3, 50);
    assert_int_equal(mg_spool_append(s, buf, n, &lost), MG_OK);
    assert_int_equal(lost, 0);
    assert_int_equal(mg_spool_bytes(s), 150);
    assert_int_equal(mg_spool_pending(s), 150);
    assert_int_equal(read_all(s, &pos, 0, 100, true), 3);
    /* committed: nothing pending, though the segment file stays until it is sealed */
    assert_int_equal(mg_spool_pending(s), 0);
    assert_int_equal(mg_spool_bytes(s), 150);

    /* a trailing partial line is not taken */
    n = make_lines(buf, 3, 2, 50);
    assert_int_equal(mg_spool_append(s, buf, n + 10, &lost), MG_OK);
    assert_int_equal(read_all(s, &pos, 3, 1, true), 2); /* one line per read */
    mg_spool_close(s);

    /* everything was committed: a new open has nothing to replay */
    s = open_spool(1 << 20);
    pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 100, false), 0);
    mg_spool_close(s);
}

/* A read that |cap| stops early says so: the caller must not take it for a drained spool. */
static void read_says_when_cap_cut_it(void **state)
{
    (void)state;
    char buf[4096], rb[4096];
    uint64_t lost = 0;
    size_t len, nl;
    bool cut = true;
    mg_spool_pos_t next;
    mg_spool_t *s = open_spool(1 << 20);
    mg_spool_pos_t pos = mg_spool_committed(s);
    size_t n = make_lines(buf, 0, 10, 50);
    assert_int_equal(mg_spool_append(s, buf, n, &lost), MG_OK);
    assert_int_equal(mg_spool_read(s, &pos, rb, 120, 100, &len, &nl, &next, &cut), MG_OK);
    assert_int_equal(nl, 2);
    assert_true(cut);
    pos = next;
    assert_int_equal(mg_spool_read(s, &pos, rb, 300, 3, &len, &nl, &next, &cut), MG_OK);
    assert_int_equal(nl, 3); /* max_lines ended it, not cap */
    assert_true(cut);        /* but cap did too: 300 of the 400 bytes left */
    pos = next;
    assert_int_equal(mg_spool_read(s, &pos, rb, sizeof(rb), 100, &len, &nl, &next, &cut), MG_OK);
    assert_int_equal(nl, 5);
    assert_false(cut); /* everything durable was read */
    mg_spool_close(s);
}

/* A crash is a close without commit: every line not committed comes back, in order, once. */
static void replay_after_crash(void **state)
{
    (void)state;
    static char buf[200 * 100];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(1 << 20);
    size_t n = make_lines(buf, 0, 200, 100);
    for (int i = 0; i < 10; i++) /* 10 batches of 20 lines */
        assert_int_equal(mg_spool_append(s, buf + (size_t)i * 2000, 2000, &lost), MG_OK);
    (void)n;
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 30, false), 200); /* read, never committed */
    mg_spool_pos_t p2 = mg_spool_committed(s);
    assert_int_equal(read_all(s, &p2, 0, 70, false), 200); /* the reader may start over */

    /* commit the first 70 (one read of 70 lines), then "crash" */
    static char rb[1 << 16];
    size_t len, nl;
    mg_spool_pos_t next, start = mg_spool_committed(s);
    assert_int_equal(mg_spool_read(s, &start, rb, sizeof(rb), 70, &len, &nl, &next, NULL), MG_OK);
    assert_int_equal(nl, 70);
    assert_int_equal(mg_spool_commit(s, next), MG_OK);
    mg_spool_close(s);

    s = open_spool(1 << 20);
    pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 70, 25, false), 130);
    /* lines appended after the restart come after the replayed ones */
    make_lines(buf, 200, 5, 100);
    assert_int_equal(mg_spool_append(s, buf, 500, &lost), MG_OK);
    assert_int_equal(read_all(s, &pos, 200, 25, false), 5);
    mg_spool_close(s);

    /* still nothing committed past 70: all of it again, then commit it all */
    s = open_spool(1 << 20);
    pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 70, 1000, true), 135);
    mg_spool_close(s);
    s = open_spool(1 << 20);
    pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 1000, true), 0);
    assert_int_equal(mg_spool_bytes(s), 0);
    assert_int_equal(count_segments(), 1); /* only the fresh, empty one */
    assert_int_equal(lost, 0);
    mg_spool_close(s);
}

/* A crash in the middle of an append leaves part of a line: it is cut off at the next open. */
static void torn_last_line_is_cut(void **state)
{
    (void)state;
    char buf[1000], path[384];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(1 << 20);
    make_lines(buf, 0, 4, 50);
    assert_int_equal(mg_spool_append(s, buf, 200, &lost), MG_OK);
    mg_spool_close(s);
    DIR *d = opendir(dir);
    struct dirent *de;
    path[0] = '\0';
    while ((de = readdir(d)) != NULL) /* the only non-empty segment */
        if (strstr(de->d_name, ".spool"))
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
    closedir(d);
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "line 000004 half a li", 21), 21);
    close(fd);

    s = open_spool(1 << 20);
    assert_int_equal(mg_spool_bytes(s), 200);
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 100, true), 4);
    mg_spool_close(s);
}

/* Past the cap, lines are not kept and are counted; committing frees room again. */
static void cap_counts_lost(void **state)
{
    (void)state;
    static char buf[100 * 100];
    const uint64_t cap = 64 * 1024; /* segments of 8 KiB */
    uint64_t lost = 0;
    int total = 0;
    mg_spool_t *s = open_spool(cap);
    mg_err_t last = MG_OK;
    for (int b = 0; b < 10; b++) { /* 10 batches of 100 lines of 100 bytes: 100000 > cap */
        make_lines(buf, total, 100, 100);
        last = mg_spool_append(s, buf, sizeof(buf), &lost);
        total += 100;
    }
    assert_int_equal(last, MG_E_LIMIT);
    assert_true(mg_spool_bytes(s) <= cap);
    int kept = (int)(mg_spool_bytes(s) / 100);
    assert_int_equal((uint64_t)kept + lost, (uint64_t)total);
    assert_true(lost >= (uint64_t)(total - 655));

    /* the kept lines are the oldest ones, whole, in order */
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 64, true), kept);
    assert_true(mg_spool_bytes(s) < cap / 4); /* sealed segments went away */

    /* room again: a new batch is kept entirely */
    uint64_t lost2 = 0;
    make_lines(buf, 5000, 100, 100);
    assert_int_equal(mg_spool_append(s, buf, sizeof(buf), &lost2), MG_OK);
    assert_int_equal(lost2, 0);
    assert_int_equal(read_all(s, &pos, 5000, 64, true), 100);
    mg_spool_close(s);
}

/* A disk that refuses every write (here RLIMIT_FSIZE: EFBIG, as ENOSPC would) fails each
 * batch: the records are counted as lost, the error said once, not per batch, and the next
 * batch that fits is kept. */
static void write_errors_are_said_once(void **state)
{
    (void)state;
    static char buf[10 * 100];
    mg_spool_t *s = open_spool(1 << 20);
    struct rlimit old, lim = {32 * 1024, RLIM_INFINITY};
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim.rlim_max = old.rlim_max;
    signal(SIGXFSZ, SIG_IGN);
    char log[128];
    snprintf(log, sizeof(log), "%s/stderr.txt", dir);
    fflush(stderr);
    int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    uint64_t lost = 0;
    int failed = 0;
    for (int b = 0; b < 60; b++) { /* 60 KB into a segment that may not pass 32 KB */
        make_lines(buf, b * 10, 10, 100);
        failed += mg_spool_append(s, buf, sizeof(buf), &lost) != MG_OK;
    }
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    signal(SIGXFSZ, SIG_DFL);
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[512];
    int said = 0;
    while (fgets(line, sizeof(line), f))
        said += strstr(line, "cannot write") != NULL;
    fclose(f);
    assert_true(failed >= 20);
    assert_int_equal(lost, (uint64_t)failed * 10);
    assert_int_equal(said, 1);
    mg_spool_close(s);
}

/* A full disk (here: a file-size limit) and a last segment the reader has all committed: its
 * room takes the next batch. Before, the last segment only rolled at seg_max, so on a full
 * disk nearly every record was lost even with MariaDB keeping up. */
static void full_disk_reuses_the_committed_last_segment(void **state)
{
    (void)state;
    static char buf[310 * 100];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(1 << 20); /* segments roll at 128 KiB */
    make_lines(buf, 0, 310, 100);
    assert_int_equal(mg_spool_append(s, buf, sizeof(buf), &lost), MG_OK);
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 1000, true), 310);
    struct rlimit old, lim = {32 * 1024, RLIM_INFINITY};
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim.rlim_max = old.rlim_max;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    make_lines(buf, 310, 20, 100); /* 31,000 + 2,000 bytes: past the limit */
    mg_err_t rc = mg_spool_append(s, buf, 2000, &lost);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(rc, MG_OK);
    assert_int_equal(lost, 0);
    assert_int_equal(mg_spool_bytes(s), 2000);
    assert_int_equal(count_segments(), 1);
    assert_int_equal(read_all(s, &pos, 310, 1000, true), 20);
    mg_spool_close(s);
    s = open_spool(1 << 20); /* and nothing comes back after a restart */
    pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 1000, false), 0);
    mg_spool_close(s);
}

/* A write that fails right after a roll (the disk filled up then): the sealed segment before,
 * all committed, is deleted by the appender. The reader would delete it at its next commit,
 * which never comes when there is nothing new to read; the file-size limit here fails the
 * retry too, so the batch is lost, but the room is back for the next. */
static void full_disk_after_a_roll_frees_the_sealed_segment(void **state)
{
    (void)state;
    static char buf[82 * 100];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(64 * 1024); /* segments roll at 8 KiB */
    make_lines(buf, 0, 82, 100);
    assert_int_equal(mg_spool_append(s, buf, sizeof(buf), &lost), MG_OK);
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 1000, true), 82);
    assert_int_equal(mg_spool_bytes(s), 8200); /* the last segment: not deleted by the commit */
    struct rlimit old, lim = {1, RLIM_INFINITY};
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim.rlim_max = old.rlim_max;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    make_lines(buf, 82, 10, 100);
    mg_err_t rc = mg_spool_append(s, buf, 1000, &lost); /* rolls, then fails */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(rc, MG_E_IO);
    assert_int_equal(lost, 10);
    assert_int_equal(mg_spool_bytes(s), 0);
    assert_int_equal(count_segments(), 1);
    assert_int_equal(mg_spool_append(s, buf, 1000, &lost), MG_OK);
    assert_int_equal(read_all(s, &pos, 82, 1000, true), 10);
    mg_spool_close(s);
}

static void inodes(ino_t out[2])
{
    struct stat a, b;
    char p[128];
    snprintf(p, sizeof(p), "%s/committed", dir);
    assert_int_equal(stat(p, &a), 0);
    snprintf(p, sizeof(p), "%s/committed.tmp", dir);
    assert_int_equal(stat(p, &b), 0);
    out[0] = a.st_ino < b.st_ino ? a.st_ino : b.st_ino;
    out[1] = a.st_ino < b.st_ino ? b.st_ino : a.st_ino;
}

/* A commit writes over a file kept for it and swaps the two names: no new file (and so no new
 * block a full disk would refuse) per commit. */
static void commits_make_no_new_file(void **state)
{
    (void)state;
    static char buf[30 * 100];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(1 << 20);
    ino_t before[2], after[2];
    inodes(before); /* both made at open: even the first commit swaps them */
    make_lines(buf, 0, 30, 100);
    assert_int_equal(mg_spool_append(s, buf, sizeof(buf), &lost), MG_OK);
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 10, true), 30); /* 3 commits */
    make_lines(buf, 30, 30, 100);
    assert_int_equal(mg_spool_append(s, buf, sizeof(buf), &lost), MG_OK);
    assert_int_equal(read_all(s, &pos, 30, 10, true), 30);
    inodes(after);
    assert_true(before[0] == after[0] && before[1] == after[1]);
    mg_spool_close(s);
    s = open_spool(1 << 20);
    pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 1000, false), 0);
    mg_spool_close(s);
}

/* While the reader keeps up, the spool holds one or two segments of at most about 1 MiB on
 * disk (each sealed one is deleted by the commit after it): segments of 16 MiB, the default cap's
 * before, filled a small disk with records the database already had. */
static void caught_up_spool_stays_small(void **state)
{
    (void)state;
    static char buf[256 * 100];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(1024ull << 20);
    mg_spool_pos_t pos = mg_spool_committed(s);
    for (int i = 0; i < 160; i++) { /* 4 MB in all */
        make_lines(buf, i * 256, 256, 100);
        assert_int_equal(mg_spool_append(s, buf, sizeof(buf), &lost), MG_OK);
        assert_true(mg_spool_bytes(s) <= 2 * ((1u << 20) + sizeof(buf)));
        assert_int_equal(read_all(s, &pos, i * 256, 500, true), 256);
    }
    assert_int_equal(lost, 0);
    assert_true(count_segments() <= 2);
    mg_spool_close(s);
    s = open_spool(1024ull << 20);
    pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 1000, false), 0);
    mg_spool_close(s);
}

/* A committed file that names a segment past every one there (damaged by hand) replays the
 * whole spool, with a warning; before, every segment was deleted unread. */
static void committed_past_the_segments_replays_all(void **state)
{
    (void)state;
    static char buf[50 * 100];
    uint64_t lost = 0;
    mg_spool_t *s = open_spool(1 << 20);
    make_lines(buf, 0, 50, 100);
    assert_int_equal(mg_spool_append(s, buf, sizeof(buf), &lost), MG_OK);
    mg_spool_close(s);
    char p[128];
    snprintf(p, sizeof(p), "%s/committed", dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("99 0\n", f);
    fclose(f);
    s = open_spool(1 << 20);
    mg_spool_pos_t pos = mg_spool_committed(s);
    assert_int_equal(read_all(s, &pos, 0, 1000, true), 50);
    mg_spool_close(s);
}

/* A lock file that cannot be made (a read-only directory; here a directory in its place, since
 * root ignores permissions) is named in the error, with the reason. Before: "spool DIR: Is a
 * directory", naming neither the file nor what failed. */
static void unopenable_lock_is_named(void **state)
{
    (void)state;
    char p[128], err[256] = "";
    snprintf(p, sizeof(p), "%s/lock", dir);
    assert_int_equal(mkdir(p, 0700), 0);
    assert_null(mg_spool_open(dir, 1 << 20, err, sizeof(err)));
    assert_non_null(strstr(err, "cannot create or open"));
    assert_non_null(strstr(err, "/lock: Is a directory"));
    rmdir(p);
}

static void second_process_is_refused(void **state)
{
    (void)state;
    char err[256] = "";
    mg_spool_t *s = open_spool(1 << 20);
    /* flock is per open file description, so a second open in this process conflicts too */
    assert_null(mg_spool_open(dir, 1 << 20, err, sizeof(err)));
    assert_non_null(strstr(err, "in use by another process"));
    mg_spool_close(s);
    s = open_spool(1 << 20);
    mg_spool_close(s);
}

typedef struct {
    mg_spool_t *s;
    int n;
} appender_arg_t;

static void *appender(void *p)
{
    appender_arg_t *a = p;
    static char buf[50 * 64];
    uint64_t lost = 0;
    for (int i = 0; i < a->n; i += 50) {
        size_t n = make_lines(buf, i, 50, 64);
        mg_spool_append(a->s, buf, n, &lost);
    }
    return (void *)(uintptr_t)lost;
}

/* One appender and one reader at once, across many segment rolls: every line once, in order. */
static void concurrent_append_and_read(void **state)
{
    (void)state;
    static char buf[1 << 16];
    mg_spool_t *s = open_spool(4 << 20); /* segments of 512 KiB; 20000 x 64 B = 1.2 MiB */
    appender_arg_t a = {s, 20000};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, appender, &a), 0);
    mg_spool_pos_t pos = mg_spool_committed(s);
    int seen = 0;
    for (int spins = 0; seen < a.n && spins < 2000000; spins++) {
        size_t len, nl;
        mg_spool_pos_t next;
        mg_err_t rc = mg_spool_read(s, &pos, buf, sizeof(buf), 333, &len, &nl, &next, NULL);
        if (rc == MG_E_AGAIN) {
            usleep(100);
            continue;
        }
        assert_int_equal(rc, MG_OK);
        for (char *p = buf, *e = buf + len; p < e; p = memchr(p, '\n', (size_t)(e - p)) + 1) {
            int v;
            assert_int_equal(sscanf(p, "line %d ", &v), 1);
            assert_int_equal(v, seen);
            seen++;
        }
        assert_int_equal(mg_spool_commit(s, next), MG_OK);
        pos = next;
    }
    void *lost;
    pthread_join(t, &lost);
    assert_int_equal((uintptr_t)lost, 0);
    assert_int_equal(seen, a.n);
    assert_true(count_segments() <= 2);
    mg_spool_close(s);
}

/* Reads every line from |*pos| on, without committing, into |out| (the numbers of "line N"). */
static size_t read_numbers(mg_spool_t *s, mg_spool_pos_t *pos, int *out, size_t cap)
{
    static char buf[1 << 16];
    size_t n = 0, len, nl;
    mg_spool_pos_t next;
    while (mg_spool_read(s, pos, buf, sizeof(buf), 1000, &len, &nl, &next, NULL) == MG_OK) {
        for (char *p = buf, *e = buf + len; p < e; p = memchr(p, '\n', (size_t)(e - p)) + 1) {
            assert_true(n < cap);
            assert_int_equal(sscanf(p, "line %d ", &out[n]), 1);
            n++;
        }
        *pos = next;
    }
    return n;
}

static void append_lines(mg_spool_t *s, int first, int n)
{
    char buf[1000];
    uint64_t lost = 0;
    for (int i = 0; i < n; i += 10)
        assert_int_equal(mg_spool_append(s, buf, make_lines(buf, first + i, 10, 100), &lost),
                         MG_OK);
    assert_int_equal(lost, 0);
}

/* Removed while in use (an operator's rm -rf, a cleaner of old files): appends went on into
 * unlinked files and commits failed for ever, so the database got nothing new, and a restart
 * found nothing to replay. The directory is made again, with the pending lines of the open
 * segments (the reader's and the appender's) copied, and the lines of the others counted. */
static void removed_directory_is_made_again(void **state)
{
    (void)state;
    char sub[96], spool[128], cmd[256];
    snprintf(sub, sizeof(sub), "%s/sub", dir);
    snprintf(spool, sizeof(spool), "%s/spool", sub);
    assert_int_equal(mkdir(sub, 0750), 0);
    char err[256] = "";
    mg_spool_t *s = mg_spool_open(spool, 64 * 1024, err, sizeof(err)); /* 8 KiB segments */
    assert_non_null(s);
    append_lines(s, 0, 300); /* segments of lines 0-89, 90-179, 180-269, 270-299 */
    mg_spool_pos_t pos = mg_spool_committed(s), next;
    char buf[4096];
    size_t len, nl;
    assert_int_equal(mg_spool_read(s, &pos, buf, sizeof(buf), 5, &len, &nl, &next, NULL), MG_OK);
    assert_int_equal(mg_spool_commit(s, next), MG_OK); /* lines 0-4 are in the database */
    pos = next;

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", spool);
    assert_int_equal(system(cmd), 0);
    uint64_t lost = 0;
    assert_int_equal(mg_spool_append(s, NULL, 0, &lost), MG_OK); /* the writer's idle call */
    struct stat st;
    assert_int_equal(stat(spool, &st), 0);
    assert_int_equal(mg_spool_take_removed(s), 180); /* lines 90-269: their files are gone */
    assert_int_equal(mg_spool_take_removed(s), 0);
    append_lines(s, 300, 10);

    int got[400];
    size_t n = read_numbers(s, &pos, got, 400);
    assert_int_equal(n, 85 + 30 + 10);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(got[i], i < 85 ? 5 + (int)i : 270 + (int)(i - 85));
    mg_spool_close(s);

    /* on disk too: a restart replays the same lines */
    s = mg_spool_open(spool, 64 * 1024, err, sizeof(err));
    assert_non_null(s);
    pos = mg_spool_committed(s);
    assert_int_equal(read_numbers(s, &pos, got, 400), 85 + 30 + 10);
    assert_int_equal(got[0], 5);
    assert_int_equal(got[124], 309);
    assert_int_equal(mg_spool_commit(s, pos), MG_OK); /* all in the database */

    /* its parent gone too: it cannot be made again, and batches are lost until it can */
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", sub);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(mg_spool_append(s, buf, make_lines(buf, 310, 10, 100), &lost), MG_E_IO);
    assert_int_equal(lost, 10);
    assert_int_equal(mkdir(sub, 0750), 0);
    lost = 0;
    assert_int_equal(mg_spool_append(s, buf, make_lines(buf, 320, 10, 100), &lost), MG_OK);
    assert_int_equal(lost, 0);
    assert_int_equal(mg_spool_take_removed(s), 0); /* nothing was pending */
    pos = mg_spool_committed(s);
    assert_int_equal(read_numbers(s, &pos, got, 400), 10);
    assert_int_equal(got[0], 320);
    mg_spool_close(s);
}

/* Segment files removed with the directory kept (a cleaner of old files, an rm): the reader
 * stopped for good at the first one it could not open, and the database got nothing more. It
 * now counts their lines as lost and goes on; the appender, whose own file was removed, moves
 * on to a new one. */
static void removed_segments_are_counted_and_skipped(void **state)
{
    (void)state;
    mg_spool_t *s = open_spool(64 * 1024); /* 8 KiB segments */
    append_lines(s, 0, 300);               /* segments 1-4: lines 0-89, 90-179, 180-269, 270-299 */
    mg_spool_pos_t pos = mg_spool_committed(s), next;
    char buf[4096], name[128];
    size_t len, nl;
    assert_int_equal(mg_spool_read(s, &pos, buf, sizeof(buf), 5, &len, &nl, &next, NULL), MG_OK);
    assert_int_equal(mg_spool_commit(s, next), MG_OK);
    pos = next;
    for (int no = 2; no <= 4; no++) { /* the reader has segment 1 open: it stays readable */
        snprintf(name, sizeof(name), "%s/%020d.spool", dir, no);
        assert_int_equal(unlink(name), 0);
    }
    append_lines(s, 300, 10); /* to a new segment 5 */
    int got[400];
    size_t n = read_numbers(s, &pos, got, 400);
    assert_int_equal(n, 85 + 10);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(got[i], i < 85 ? 5 + (int)i : 300 + (int)(i - 85));
    assert_int_equal(mg_spool_take_removed(s), 90 + 90 + 30);
    assert_int_equal(mg_spool_commit(s, pos), MG_OK);
    assert_int_equal(mg_spool_pending(s), 0);
    mg_spool_close(s);
}

/* The database thread works in batches: it runs as a background thread, so its wake-ups do
 * not preempt an event loop in the middle of its requests. MariaDB need not be up for it. */
static void database_thread_is_a_background_thread(void **state)
{
    (void)state;
    if (!mg_test_batch_allowed())
        skip(); /* this environment refuses SCHED_BATCH: nothing to check */
    mg_dblog_conf_t c;
    mg_dblog_conf_defaults(&c);
    c.host = "127.0.0.1";
    c.port = 1; /* nothing listens: the thread backs off and retries */
    c.spool_dir = dir;
    mg_dblog_t *d = mg_dblog_open(&c);
    assert_non_null(d);
    assert_int_equal(mg_test_thread_policy("mg-dblog", SCHED_BATCH), SCHED_BATCH);
    mg_dblog_close(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(append_read_commit, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(read_says_when_cap_cut_it, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(replay_after_crash, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(torn_last_line_is_cut, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(cap_counts_lost, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(write_errors_are_said_once, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(full_disk_reuses_the_committed_last_segment, make_dir,
                                        remove_dir),
        cmocka_unit_test_setup_teardown(commits_make_no_new_file, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(caught_up_spool_stays_small, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(full_disk_after_a_roll_frees_the_sealed_segment, make_dir,
                                        remove_dir),
        cmocka_unit_test_setup_teardown(committed_past_the_segments_replays_all, make_dir,
                                        remove_dir),
        cmocka_unit_test_setup_teardown(unopenable_lock_is_named, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(second_process_is_refused, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(concurrent_append_and_read, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(removed_directory_is_made_again, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(removed_segments_are_counted_and_skipped, make_dir,
                                        remove_dir),
        cmocka_unit_test_setup_teardown(database_thread_is_a_background_thread, make_dir,
                                        remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
