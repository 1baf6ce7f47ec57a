/*
 * gateway/spool.c - the write-ahead spool (see spool.h for the contract).
 *
 * DESIGN
 * Lines go to numbered segment files, appended and fdatasync'ed one batch at a time. A segment
 * is "sealed" once the appender moves on to the next one (when it passes seg_max bytes); only
 * the last segment grows. The shared state is a small ordered array of segments with their
 * durable sizes: the appender raises the size of the last one after each fsync, so the reader,
 * which never reads past a recorded size, only ever sees whole, durable lines. The reader's
 * position is its own business until it commits: then the position goes to the "committed" file
 * (written over the kept "committed.tmp", fdatasync, the two names swapped, fsync the directory:
 * a crash leaves the old or the new one, and no new block is needed) and sealed segments wholly
 * before it are deleted, which is what frees room under the cap. The last segment, all committed,
 * is replaced by an empty one when a batch cannot be written (a full disk).
 *
 * Recovery is the same code path as a normal start: segments before the committed one are
 * leftovers of a crash between commit and delete; a last line without '\n' is a torn append
 * (never fsync'ed, so never acknowledged) and is cut off; new lines always go to a new segment,
 * so old segments are only ever read.
 *
 * The cap counts whole segment files, committed bytes included, until the segment is deleted;
 * segments are at most max/8 bytes, so at worst about an eighth of the cap is "used" by lines
 * already in the database.
 *
 * A directory removed while in use leaves the open descriptors working on unlinked files:
 * appends "succeed", commits fail for ever (a reader that re-reads one batch), and a restart
 * finds nothing. The appender checks it before each batch (fstat: no links left) and makes the
 * spool again (remake_dir). Each segment's line count is kept for it, so the lines that went
 * with the files are counted, never silently lost.
 */
#include "gateway/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

#define SEG_MIN (4u * 1024)          /* smallest segment size before rolling */
/* largest: the reader's commit deletes a sealed segment once the database has it, so a spool
 * that keeps up holds about one or two of these on disk (16 MiB ones filled a small disk with
 * records MariaDB already had); a 1 GiB backlog is a thousand files */
#define SEG_MAX (1u * 1024 * 1024)
#define SEG_SUFFIX ".spool"
#define SEG_DIGITS 20
#define COMMITTED_LEN 42 /* "%020 %020\n": the same size whatever the position */

typedef struct seg {
    uint64_t no;
    uint64_t size;  /* durable bytes: whole lines only */
    uint64_t lines; /* in those bytes */
} seg_t;

struct mg_spool {
    char *dir;
    int dirfd;  /* swapped by remake_dir under dir_mu and mu: use it under one of them, or on
                 * the appender's thread */
    int lockfd; /* appender */
    uint64_t max_bytes;
    uint64_t seg_max;

    pthread_mutex_t dir_mu; /* the reader's commit holds it across its file operations */
    pthread_mutex_t mu;
    seg_t *segs; /* under mu: ordered by no; the last one is the appender's; never empty */
    size_t nsegs, capsegs;
    uint64_t total; /* under mu: sum of segs[].size, <= max_bytes */

    int wfd; /* appender: the last segment, open for appending */
    mg_log_cause_t write_failed; /* appender: a full disk fails every batch: said once a minute */
    mg_log_cause_t remake_failed; /* appender: the directory cannot be made again */
    uint64_t removed_lost;        /* under mu: lines lost with removed files, not taken yet */

    int rfd; /* reader: a cached descriptor of segment rseg, or -1; changed under mu */
    uint64_t rseg;
    mg_spool_pos_t committed; /* written by the reader, under mu */
    bool dir_unsynced;        /* reader: a swap of the committed files may not be durable */
};

static void seg_name(char *out, size_t cap, uint64_t no)
{
    snprintf(out, cap, "%0*" PRIu64 SEG_SUFFIX, SEG_DIGITS, no);
}

static bool parse_seg_name(const char *name, uint64_t *no)
{
    size_t n = strlen(name);
    if (n != SEG_DIGITS + sizeof(SEG_SUFFIX) - 1 || strcmp(name + SEG_DIGITS, SEG_SUFFIX) != 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < SEG_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *no = v;
    return true;
}

static size_t count_lines(const char *p, size_t n)
{
    size_t c = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        c++;
    return c;
}

static bool push_seg(mg_spool_t *s, uint64_t no, uint64_t size, uint64_t lines)
{
    if (s->nsegs == s->capsegs) {
        size_t cap = s->capsegs ? s->capsegs * 2 : 16;
        seg_t *n = realloc(s->segs, cap * sizeof(*n));
        if (n == NULL)
            return false;
        s->segs = n, s->capsegs = cap;
    }
    s->segs[s->nsegs++] = (seg_t){no, size, lines};
    s->total += size;
    return true;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Writes |n| bytes at the end of |fd| across short writes; false with errno on failure. */
static bool write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return false;
        }
        p += w, n -= (size_t)w;
    }
    return true;
}

static bool pread_all(int fd, char *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO; /* shorter than its recorded size: someone truncated it */
            return false;
        }
        p += r, n -= (size_t)r, off += (uint64_t)r;
    }
    return true;
}

/* Creates segment |no| and makes its directory entry durable. */
static int create_seg(mg_spool_t *s, uint64_t no)
{
    char name[64];
    seg_name(name, sizeof(name), no);
    int fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd >= 0)
        fsync(s->dirfd);
    return fd;
}

/* Cuts a torn last line off segment |no| (size |*size|): everything after the last '\n'. */
static bool trim_torn(mg_spool_t *s, uint64_t no, uint64_t *size)
{
    char name[64], buf[8192];
    seg_name(name, sizeof(name), no);
    int fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return false;
    uint64_t end = *size, keep = 0;
    while (end > 0) {
        size_t n = end < sizeof(buf) ? (size_t)end : sizeof(buf);
        if (!pread_all(fd, buf, n, end - n)) {
            close(fd);
            return false;
        }
        const char *nl = memrchr(buf, '\n', n);
        if (nl != NULL) {
            keep = end - n + (uint64_t)(nl - buf) + 1;
            break;
        }
        end -= n;
    }
    bool ok = true;
    if (keep != *size) {
        MG_LOG(MG_LOG_WARN, "spool", "%s/%s: cut %" PRIu64 " bytes of a torn last line", s->dir,
               name, *size - keep);
        ok = ftruncate(fd, (off_t)keep) == 0 && fsync(fd) == 0;
        *size = keep;
    }
    close(fd);
    return ok;
}

/* Writes |pos| as the committed text, COMMITTED_LEN bytes, into |name| in |dirfd| (made if
 * missing) and syncs it; false with errno on failure. */
static bool write_commit_file(int dirfd, const char *name, mg_spool_pos_t pos)
{
    char text[COMMITTED_LEN + 1];
    snprintf(text, sizeof(text), "%020" PRIu64 " %020" PRIu64 "\n", pos.seg, pos.off);
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    bool ok = fd >= 0 && pwrite(fd, text, COMMITTED_LEN, 0) == COMMITTED_LEN && fdatasync(fd) == 0;
    int e = errno;
    if (fd >= 0)
        close(fd);
    errno = e;
    return ok;
}

/* "SEG OFF\n", two decimal numbers (zero-padded to 20 digits since commits write in place;
 * older versions wrote them unpadded): anything else is not a position. */
static bool parse_committed(const char *t, uint64_t *seg, uint64_t *off)
{
    uint64_t v[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        const char *start = t;
        for (; *t >= '0' && *t <= '9'; t++) {
            if (t - start == 20)
                return false;
            v[k] = v[k] * 10 + (uint64_t)(*t - '0');
        }
        if (t == start || *t++ != (k == 0 ? ' ' : '\n'))
            return false;
    }
    *seg = v[0], *off = v[1];
    return *t == '\0';
}

static void read_committed(mg_spool_t *s)
{
    char buf[128];
    s->committed = (mg_spool_pos_t){0, 0, 0};
    int fd = openat(s->dirfd, "committed", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* a new spool */
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    uint64_t seg, off;
    if (n > 0) {
        buf[n] = '\0';
        if (parse_committed(buf, &seg, &off)) {
            s->committed = (mg_spool_pos_t){seg, off, 0}; /* lines: counted by recover */
            return;
        }
    }
    /* Unreadable: replaying everything is the safe choice (the database drops duplicates). */
    MG_LOG(MG_LOG_WARN, "spool", "%s/committed is unreadable; replaying the whole spool", s->dir);
}

/* Counts the lines of segment |name| (|size| bytes) into *|lines|, and those before byte |upto|
 * into *|before|; false with errno when it cannot be read. */
static bool count_seg_lines(mg_spool_t *s, const char *name, uint64_t size, uint64_t upto,
                            uint64_t *lines, uint64_t *before)
{
    char buf[64 * 1024];
    int fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    *lines = *before = 0;
    for (uint64_t off = 0; off < size;) {
        size_t n = size - off < sizeof(buf) ? (size_t)(size - off) : sizeof(buf);
        if (!pread_all(fd, buf, n, off)) {
            int e = errno;
            close(fd);
            errno = e;
            return false;
        }
        size_t head = off >= upto ? 0 : upto - off < n ? (size_t)(upto - off) : n;
        uint64_t c = count_lines(buf, head);
        *before += c;
        *lines += c + count_lines(buf + head, n - head);
        off += n;
    }
    close(fd);
    return true;
}

/* Lists the segments, removes what is already committed, trims a torn tail. */
static bool recover(mg_spool_t *s, char *err, size_t errlen)
{
    int fd = dup(s->dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    uint64_t *nos = NULL;
    size_t n = 0, cap = 0;
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        snprintf(err, errlen, "spool %s: cannot list: %s", s->dir, strerror(errno));
        return false;
    }
    rewinddir(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t no;
        if (!parse_seg_name(de->d_name, &no))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *m = realloc(nos, cap * sizeof(*m));
            if (m == NULL) {
                free(nos);
                closedir(d);
                snprintf(err, errlen, "spool %s: out of memory", s->dir);
                return false;
            }
            nos = m;
        }
        nos[n++] = no;
    }
    closedir(d);
    if (n > 1)
        qsort(nos, n, sizeof(*nos), cmp_u64);

    if (n > 0 && s->committed.seg > nos[n - 1]) {
        /* every commit names a segment that exists: this one was damaged (by hand?) */
        MG_LOG(MG_LOG_WARN, "spool",
               "%s/committed names segment %" PRIu64 ", past the last one (%" PRIu64
               "); replaying the whole spool",
               s->dir, s->committed.seg, nos[n - 1]);
        s->committed = (mg_spool_pos_t){0, 0, 0};
    }
    uint64_t last = s->committed.seg, replay = 0;
    for (size_t i = 0; i < n; i++) {
        char name[64];
        struct stat st;
        seg_name(name, sizeof(name), nos[i]);
        last = nos[i] > last ? nos[i] : last;
        if (nos[i] < s->committed.seg) { /* committed, then the crash came before the delete */
            unlinkat(s->dirfd, name, 0);
            continue;
        }
        if (fstatat(s->dirfd, name, &st, 0) != 0) {
            snprintf(err, errlen, "spool %s/%s: %s", s->dir, name, strerror(errno));
            free(nos);
            return false;
        }
        uint64_t size = (uint64_t)st.st_size;
        if (i + 1 == n && !trim_torn(s, nos[i], &size)) {
            snprintf(err, errlen, "spool %s/%s: cannot repair the last line: %s", s->dir, name,
                     strerror(errno));
            free(nos);
            return false;
        }
        if (nos[i] == s->committed.seg && s->committed.off > size) {
            MG_LOG(MG_LOG_WARN, "spool",
                   "%s/committed is at byte %" PRIu64 " of %s, which has %" PRIu64
                   " bytes; replaying that segment",
                   s->dir, s->committed.off, name, size);
            s->committed.off = 0;
        }
        if (size == 0 || (nos[i] == s->committed.seg && s->committed.off >= size)) {
            unlinkat(s->dirfd, name, 0); /* empty, or read to its end and committed */
            continue;
        }
        uint64_t lines, before;
        uint64_t upto = nos[i] == s->committed.seg ? s->committed.off : 0;
        if (!count_seg_lines(s, name, size, upto, &lines, &before)) {
            snprintf(err, errlen, "spool %s/%s: cannot read: %s", s->dir, name, strerror(errno));
            free(nos);
            return false;
        }
        if (nos[i] == s->committed.seg)
            s->committed.line = before;
        if (!push_seg(s, nos[i], size, lines)) {
            snprintf(err, errlen, "spool %s: out of memory", s->dir);
            free(nos);
            return false;
        }
        replay += size - (nos[i] == s->committed.seg ? s->committed.off : 0);
    }
    free(nos);
    if (s->nsegs > 0)
        MG_LOG(MG_LOG_INFO, "spool",
               "%s: %zu segment(s), about %" PRIu64 " bytes not yet in the database; replaying",
               s->dir, s->nsegs, replay);

    /* the appender always starts a fresh segment: recovered ones are only read from now on */
    uint64_t wno = last + 1;
    if ((s->wfd = create_seg(s, wno)) < 0) {
        snprintf(err, errlen, "spool %s: cannot create a segment: %s", s->dir, strerror(errno));
        return false;
    }
    if (!push_seg(s, wno, 0, 0)) {
        snprintf(err, errlen, "spool %s: out of memory", s->dir);
        return false;
    }
    return true;
}

mg_spool_t *mg_spool_open(const char *dir, uint64_t max_bytes, char *err, size_t errlen)
{
    mg_spool_t *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->dir = strdup(dir)) == NULL) {
        snprintf(err, errlen, "spool %s: out of memory", dir);
        free(s);
        return NULL;
    }
    s->dirfd = s->lockfd = s->wfd = s->rfd = -1;
    s->max_bytes = max_bytes;
    s->seg_max = max_bytes / 8;
    s->seg_max = s->seg_max < SEG_MIN ? SEG_MIN : s->seg_max > SEG_MAX ? SEG_MAX : s->seg_max;
    pthread_mutex_init(&s->dir_mu, NULL);
    pthread_mutex_init(&s->mu, NULL);

    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "spool %s: cannot create the directory: %s", dir, strerror(errno));
        goto fail;
    }
    if ((s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        snprintf(err, errlen, "spool %s: cannot open the directory: %s", dir, strerror(errno));
        goto fail;
    }
    /* two processes appending to one spool would interleave and commit each other's lines */
    if ((s->lockfd = openat(s->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640)) < 0) {
        snprintf(err, errlen, "spool %s: cannot create or open %s/lock: %s", dir, dir,
                 strerror(errno));
        goto fail;
    }
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "spool %s: %s", dir,
                 errno == EWOULDBLOCK ? "in use by another process (each gateway needs its own "
                                        "spool_dir)"
                                      : strerror(errno));
        goto fail;
    }
    read_committed(s);
    if (!recover(s, err, errlen))
        goto fail;
    /* both made now, while there is room: every commit then writes over committed.tmp and swaps
     * the names (mg_spool_commit), which needs no new block */
    bool ready = write_commit_file(s->dirfd, "committed.tmp", s->committed);
    if (faccessat(s->dirfd, "committed", F_OK, 0) != 0)
        ready = write_commit_file(s->dirfd, "committed", s->committed) && ready;
    if (!ready || fsync(s->dirfd) != 0)
        MG_LOG(MG_LOG_WARN, "spool",
               "%s: cannot prepare the files that record how far MariaDB got (%s): on a full "
               "disk, commits will fail until there is room",
               s->dir, strerror(errno));
    return s;
fail:
    mg_spool_close(s);
    return NULL;
}

/* The appender's segment |*cur|, when the reader has committed all of it, is replaced by a new,
 * empty one, so that its room can take the next batch: the segment only rolls at seg_max
 * otherwise, and on a full disk nothing else frees it. The new one is made first (if that
 * fails, nothing changes); the old one is then cut to zero (the reader may still hold it open:
 * unlinked alone, it would keep its blocks) and unlinked. False when it is not all committed,
 * or the new segment cannot be made. */
static bool recycle_last(mg_spool_t *s, seg_t *cur)
{
    pthread_mutex_lock(&s->mu);
    bool done = cur->size > 0 && (s->committed.seg > cur->no ||
                                  (s->committed.seg == cur->no && s->committed.off >= cur->size));
    pthread_mutex_unlock(&s->mu);
    if (!done || s->wfd < 0)
        return false;
    int fd = create_seg(s, cur->no + 1); /* first: if it fails, nothing has changed */
    if (fd < 0) {
        MG_LOG(MG_LOG_ERROR, "spool", "%s: cannot create a segment: %s", s->dir, strerror(errno));
        return false;
    }
    if (ftruncate(s->wfd, 0) != 0) /* frees its blocks even while the reader holds it open */
        MG_LOG(MG_LOG_WARN, "spool", "%s: cannot empty segment %" PRIu64 ": %s", s->dir, cur->no,
               strerror(errno));
    char name[64];
    seg_name(name, sizeof(name), cur->no);
    close(s->wfd);
    s->wfd = fd;
    unlinkat(s->dirfd, name, 0);
    pthread_mutex_lock(&s->mu);
    s->total -= cur->size;
    s->segs[s->nsegs - 1] = (seg_t){cur->no + 1, 0, 0};
    pthread_mutex_unlock(&s->mu);
    *cur = (seg_t){cur->no + 1, 0, 0};
    return true;
}

/* Under s->mu: deletes the sealed segments (never the last) wholly before the committed position,
 * or read to their end, and returns how many. On the reader's thread (|reader|) its cached
 * descriptor of one of them is closed; the appender (a full disk) cuts them to zero first, since
 * the reader may hold one open and an unlinked open file keeps its blocks. */
static size_t drop_committed(mg_spool_t *s, bool reader)
{
    mg_spool_pos_t pos = s->committed;
    size_t drop = 0;
    while (drop + 1 < s->nsegs && (s->segs[drop].no < pos.seg ||
                                   (s->segs[drop].no == pos.seg && pos.off >= s->segs[drop].size)))
        drop++;
    for (size_t i = 0; i < drop; i++) {
        char name[64];
        seg_name(name, sizeof(name), s->segs[i].no);
        int fd = reader ? -1 : openat(s->dirfd, name, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (ftruncate(fd, 0) != 0)
                MG_LOG(MG_LOG_WARN, "spool", "%s/%s: cannot empty: %s", s->dir, name,
                       strerror(errno));
            close(fd);
        }
        unlinkat(s->dirfd, name, 0);
        s->total -= s->segs[i].size;
        if (reader && s->rfd >= 0 && s->rseg == s->segs[i].no) {
            close(s->rfd);
            s->rfd = -1;
        }
    }
    memmove(s->segs, s->segs + drop, (s->nsegs - drop) * sizeof(*s->segs));
    s->nsegs -= drop;
    return drop;
}

/* |fd| has no link left: its file, or directory (rmdir clears a directory's links), was
 * removed. */
static bool unlinked(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && st.st_nlink == 0;
}

/* The appender's segment file was removed, its directory kept (a cleaner of old files, an
 * rm of the segments): what it appends would be read by nobody, so it moves on to a new one.
 * The reader counts the removed one's lines as lost, unless it has it open. */
static void roll_removed(mg_spool_t *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t no = s->segs[s->nsegs - 1].no + 1;
    pthread_mutex_unlock(&s->mu);
    int fd = create_seg(s, no);
    if (fd < 0)
        return; /* the append goes to the removed one; tried again next batch */
    pthread_mutex_lock(&s->mu);
    bool ok = push_seg(s, no, 0, 0);
    pthread_mutex_unlock(&s->mu);
    if (!ok) {
        char name[64];
        seg_name(name, sizeof(name), no);
        unlinkat(s->dirfd, name, 0);
        close(fd);
        return;
    }
    MG_LOG(MG_LOG_ERROR, "spool",
           "%s: segment %" PRIu64 " was removed while in use; new records go to %" PRIu64, s->dir,
           no - 1, no);
    close(s->wfd);
    s->wfd = fd;
}

/* Copies bytes [from, to) of |src| to the end of |dst| through |buf| (|cap| bytes). */
static bool copy_range(int src, uint64_t from, uint64_t to, int dst, char *buf, size_t cap)
{
    while (from < to) {
        size_t n = to - from < cap ? (size_t)(to - from) : cap;
        if (!pread_all(src, buf, n, from) || !write_all(dst, buf, n))
            return false;
        from += n;
    }
    return true;
}

/* Makes a removed directory again (see the file comment): its lock, a first segment holding
 * the pending lines still readable, in order, and "committed" at the start of it; then swaps
 * them in. The reader may go on meanwhile: its commits in the old directory fail (no file can
 * be made there) and are retried, and one that lands in the new directory afterwards names an
 * old segment, which is before every new one: nothing is skipped, a few lines come twice (the
 * database drops them). False, said once a minute, when the directory cannot be made again. */
static bool remake_dir(mg_spool_t *s)
{
    int dfd = -1, lfd = -1, wfd = -1, src_w = -1, src_r = -1;
    seg_t *old = NULL;
    char *buf = NULL, name[64], what[96];
    size_t nold = 0;
    uint64_t no = 0, size = 0, lines = 0, gone = 0, gone_bytes = 0;

    snprintf(what, sizeof(what), "cannot make it again");
    if (mkdir(s->dir, 0750) != 0 && errno != EEXIST)
        goto fail;
    snprintf(what, sizeof(what), "cannot open it again");
    if ((dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        goto fail;
    snprintf(what, sizeof(what), "cannot lock %s/lock", s->dir);
    if ((lfd = openat(dfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640)) < 0)
        goto fail;
    if (flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            snprintf(what, sizeof(what), "another process took the new one");
            errno = EBUSY;
        }
        goto fail;
    }

    /* what is pending, and the two descriptors it can still be read through */
    pthread_mutex_lock(&s->mu);
    mg_spool_pos_t done = s->committed;
    uint64_t rseg = s->rseg;
    if ((old = malloc(s->nsegs * sizeof(*old))) != NULL) {
        nold = s->nsegs;
        memcpy(old, s->segs, nold * sizeof(*old));
        src_r = s->rfd >= 0 ? dup(s->rfd) : -1;
    }
    pthread_mutex_unlock(&s->mu);
    snprintf(what, sizeof(what), "out of memory");
    if (old == NULL || (buf = malloc(64 * 1024)) == NULL)
        goto fail;
    char self[64];
    snprintf(self, sizeof(self), "/proc/self/fd/%d", s->wfd);
    src_w = open(self, O_RDONLY | O_CLOEXEC); /* the appender's own is write-only */

    no = old[nold - 1].no + 1;
    seg_name(name, sizeof(name), no);
    snprintf(what, sizeof(what), "cannot create %s", name);
    if ((wfd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0640)) < 0)
        goto fail;
    for (size_t i = 0; i < nold; i++) {
        const seg_t *g = &old[i];
        if (g->no < done.seg)
            continue;
        uint64_t from = g->no == done.seg ? done.off : 0;
        uint64_t skip = g->no == done.seg ? done.line : 0;
        uint64_t want = g->lines > skip ? g->lines - skip : 0;
        if (from >= g->size)
            continue;
        int src = i + 1 == nold && src_w >= 0 ? src_w : g->no == rseg ? src_r : -1;
        if (src >= 0 && copy_range(src, from, g->size, wfd, buf, 64 * 1024)) {
            size += g->size - from, lines += want;
            continue;
        }
        if (src >= 0 && ftruncate(wfd, (off_t)size) != 0) /* no piece of it stays */
            goto fail;
        gone += want, gone_bytes += g->size - from;
    }
    snprintf(what, sizeof(what), "cannot write its files");
    mg_spool_pos_t start = {no, 0, 0};
    if (fdatasync(wfd) != 0 || !write_commit_file(dfd, "committed.tmp", start) ||
        !write_commit_file(dfd, "committed", start) || fsync(dfd) != 0)
        goto fail;

    pthread_mutex_lock(&s->dir_mu); /* no commit of the reader is half done in the old one */
    pthread_mutex_lock(&s->mu);
    close(s->dirfd), close(s->lockfd), close(s->wfd);
    s->dirfd = dfd, s->lockfd = lfd, s->wfd = wfd;
    s->segs[0] = (seg_t){no, size, lines};
    s->nsegs = 1;
    s->total = size;
    s->committed = start;
    s->dir_unsynced = false;
    s->removed_lost += gone;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->dir_mu);
    mg_log_cause_reset(&s->remake_failed);
    if (gone > 0)
        MG_LOG(MG_LOG_ERROR, "spool",
               "%s was removed while in use; made it again with the %" PRIu64
               " pending records still readable. LOST %" PRIu64 " records (%" PRIu64
               " bytes) not in MariaDB yet, whose files went with it (the access log has them)",
               s->dir, lines, gone, gone_bytes);
    else if (lines > 0)
        MG_LOG(MG_LOG_ERROR, "spool",
               "%s was removed while in use; made it again with the %" PRIu64
               " records not in MariaDB yet (none lost)",
               s->dir, lines);
    else
        MG_LOG(MG_LOG_ERROR, "spool",
               "%s was removed while in use; made it again (no record was waiting for MariaDB)",
               s->dir);
    free(old), free(buf);
    if (src_w >= 0)
        close(src_w);
    if (src_r >= 0)
        close(src_r);
    return true;
fail:;
    int e = errno;
    unsigned long again;
    char more[64], cause[160];
    snprintf(cause, sizeof(cause), "%s: %s", what, strerror(e));
    if (mg_log_cause_pass(&s->remake_failed, cause, 60, &again))
        MG_LOG(MG_LOG_ERROR, "spool",
               "%s was removed while in use, and %s; the request log counts new records as "
               "lost until it can%s",
               s->dir, cause, mg_log_repeats(more, sizeof(more), again));
    if (wfd >= 0) {
        unlinkat(dfd, name, 0);
        close(wfd);
    }
    if (lfd >= 0)
        close(lfd);
    if (dfd >= 0)
        close(dfd);
    if (src_w >= 0)
        close(src_w);
    if (src_r >= 0)
        close(src_r);
    free(old), free(buf);
    errno = e;
    return false;
}

mg_err_t mg_spool_append(mg_spool_t *s, const char *lines, size_t len, uint64_t *lost)
{
    const char *nl = len ? memrchr(lines, '\n', len) : NULL;
    if (unlinked(s->wfd)) { /* one fstat per batch: its file or the whole directory gone */
        if (unlinked(s->dirfd) && !remake_dir(s)) {
            *lost += len ? count_lines(lines, len) : 0;
            return len ? MG_E_IO : MG_OK;
        }
        if (unlinked(s->wfd))
            roll_removed(s);
    }
    if (nl == NULL)
        return MG_OK;
    len = (size_t)(nl - lines) + 1;

    pthread_mutex_lock(&s->mu);
    uint64_t room = s->total < s->max_bytes ? s->max_bytes - s->total : 0;
    seg_t cur = s->segs[s->nsegs - 1];
    pthread_mutex_unlock(&s->mu);

    mg_err_t rc = MG_OK;
    size_t keep = len;
    if (len > room) { /* keep the whole lines that fit; order matters more than the newest */
        const char *cut = room ? memrchr(lines, '\n', (size_t)room) : NULL;
        keep = cut ? (size_t)(cut - lines) + 1 : 0;
        rc = MG_E_LIMIT;
    }
    if (keep == 0)
        goto out;

    if (cur.size >= s->seg_max) {
        int fd = create_seg(s, cur.no + 1);
        if (fd >= 0) {
            close(s->wfd);
            s->wfd = fd;
            pthread_mutex_lock(&s->mu);
            bool ok = push_seg(s, cur.no + 1, 0, 0);
            pthread_mutex_unlock(&s->mu);
            if (!ok) { /* keep appending to the old one; try again next batch */
                close(s->wfd);
                char name[64];
                seg_name(name, sizeof(name), cur.no + 1);
                unlinkat(s->dirfd, name, 0);
                s->wfd = create_seg(s, cur.no); /* reopen the old one for appending */
            } else {
                cur = (seg_t){cur.no + 1, 0, 0};
            }
        }
    }
    bool ok = s->wfd >= 0 && write_all(s->wfd, lines, keep) && fdatasync(s->wfd) == 0;
    if (!ok) {
        int e = errno;
        /* Not durable, so not kept: cut the segment back to its last durable line, so the
         * reader never sees half a batch that is also counted as lost. */
        if (s->wfd >= 0 && ftruncate(s->wfd, (off_t)cur.size) != 0)
            e = errno;
        /* A full disk: the room of what MariaDB already has is ours. Sealed segments it has
         * are deleted by the reader's next commit, which may never come (a segment rolled just
         * before, nothing new to read); the one in hand rolls only at seg_max. */
        pthread_mutex_lock(&s->mu);
        size_t freed = drop_committed(s, false);
        pthread_mutex_unlock(&s->mu);
        if (recycle_last(s, &cur) || freed > 0) {
            ok = write_all(s->wfd, lines, keep) && fdatasync(s->wfd) == 0;
            if (!ok) {
                e = errno;
                if (ftruncate(s->wfd, (off_t)cur.size) != 0)
                    e = errno;
            }
        }
        errno = e;
    }
    if (!ok) {
        int e = errno;
        unsigned long again;
        char more[64];
        if (mg_log_cause_pass(&s->write_failed, strerror(e), 60, &again))
            MG_LOG(MG_LOG_ERROR, "spool",
                   "%s: cannot write %zu bytes: %s; the request log counts the records as "
                   "lost%s",
                   s->dir, keep, strerror(e), mg_log_repeats(more, sizeof(more), again));
        rc = MG_E_IO;
        keep = 0;
        goto out;
    }
    mg_log_cause_reset(&s->write_failed);
    uint64_t kept_lines = count_lines(lines, keep);
    pthread_mutex_lock(&s->mu);
    s->segs[s->nsegs - 1].size += keep;
    s->segs[s->nsegs - 1].lines += kept_lines;
    s->total += keep;
    pthread_mutex_unlock(&s->mu);
out:
    *lost += count_lines(lines + keep, len - keep);
    return rc;
}

uint64_t mg_spool_take_removed(mg_spool_t *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t n = s->removed_lost;
    s->removed_lost = 0;
    pthread_mutex_unlock(&s->mu);
    return n;
}

mg_spool_pos_t mg_spool_committed(mg_spool_t *s)
{
    return s->committed;
}

/* Under mu, on the reader: sealed segment |i|, where |*pos| is, has no file any more (a cleaner
 * of old files, an rm): its lines from |*pos| on are counted as lost (mg_spool_take_removed),
 * and the reader goes on with the next segment. */
static void skip_removed(mg_spool_t *s, size_t i, mg_spool_pos_t *pos)
{
    seg_t g = s->segs[i];
    uint64_t gone = g.lines > pos->line ? g.lines - pos->line : 0;
    MG_LOG(MG_LOG_ERROR, "spool",
           "%s: segment %" PRIu64 " was removed before MariaDB had it. LOST %" PRIu64
           " records (%" PRIu64 " bytes; the access log has them)",
           s->dir, g.no, gone, g.size - (pos->off < g.size ? pos->off : g.size));
    s->removed_lost += gone;
    s->total -= g.size;
    memmove(s->segs + i, s->segs + i + 1, (s->nsegs - i - 1) * sizeof(*s->segs));
    s->nsegs--;
    *pos = (mg_spool_pos_t){s->segs[i].no, 0, 0};
}

mg_err_t mg_spool_read(mg_spool_t *s, mg_spool_pos_t *pos, char *buf, size_t cap,
                       size_t max_lines, size_t *len, size_t *nlines, mg_spool_pos_t *next,
                       bool *cut)
{
    *len = *nlines = 0;
    if (cut)
        *cut = false;
    pthread_mutex_lock(&s->mu);
again:;
    size_t i = 0;
    for (;;) {
        while (i < s->nsegs && s->segs[i].no < pos->seg)
            i++;
        if (i == s->nsegs) { /* past the last segment: cannot happen, the last one is never cut */
            i = s->nsegs - 1;
            *pos = (mg_spool_pos_t){s->segs[i].no, s->segs[i].size, s->segs[i].lines};
            break;
        }
        if (s->segs[i].no > pos->seg) /* a remade directory's segments come after the old */
            *pos = (mg_spool_pos_t){s->segs[i].no, 0, 0};
        if (pos->off >= s->segs[i].size && i + 1 < s->nsegs) { /* sealed and read: move on */
            *pos = (mg_spool_pos_t){s->segs[i + 1].no, 0, 0};
            continue;
        }
        break;
    }
    uint64_t size = s->segs[i].size;
    if (pos->off < size && (s->rfd < 0 || s->rseg != pos->seg)) {
        /* under mu: remake_dir reads through this descriptor too, and swaps dirfd */
        char name[64];
        if (s->rfd >= 0)
            close(s->rfd);
        seg_name(name, sizeof(name), pos->seg);
        s->rseg = pos->seg;
        if ((s->rfd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC)) < 0) {
            int e = errno;
            /* a removed directory is the appender's to make again (remake_dir), which
             * counts what went with it: skipping here would count it twice */
            bool dir_gone = e == ENOENT && unlinked(s->dirfd);
            if (e == ENOENT && !dir_gone && i + 1 < s->nsegs) {
                skip_removed(s, i, pos);
                goto again;
            }
            pthread_mutex_unlock(&s->mu);
            if (e == ENOENT) /* the appender's own, or the directory: it acts at its next batch */
                return MG_E_AGAIN;
            MG_LOG(MG_LOG_ERROR, "spool", "%s/%s: cannot open: %s", s->dir, name, strerror(e));
            return MG_E_IO;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (pos->off >= size)
        return MG_E_AGAIN;

    size_t want = size - pos->off < cap ? (size_t)(size - pos->off) : cap;
    if (!pread_all(s->rfd, buf, want, pos->off)) {
        MG_LOG(MG_LOG_ERROR, "spool", "%s: cannot read segment %" PRIu64 ": %s", s->dir,
               pos->seg, strerror(errno));
        return MG_E_IO;
    }
    size_t used = 0, n = 0;
    while (n < max_lines && used < want) {
        const char *nl = memchr(buf + used, '\n', want - used);
        if (nl == NULL)
            break;
        used = (size_t)(nl - buf) + 1;
        n++;
    }
    uint64_t line = pos->line + n;
    if (n == 0) {
        /* No '\n' in a whole buffer: garbage, not a line. Hand it over as one "line" (the
         * caller rejects it and says so) rather than stall behind it forever. */
        used = want, n = 1;
    }
    *len = used, *nlines = n;
    *next = (mg_spool_pos_t){pos->seg, pos->off + used, line};
    if (cut)
        *cut = want < size - pos->off;
    return MG_OK;
}

mg_err_t mg_spool_commit(mg_spool_t *s, mg_spool_pos_t pos)
{
    /* One fixed-size text, written over the kept committed.tmp, then the two names swapped
     * (RENAME_EXCHANGE): a commit makes no new file and no new block, so a full disk cannot
     * stop the reader from committing and so freeing the segments MariaDB has. A crash leaves
     * the old or the new text under "committed". A swap whose directory sync failed may not be
     * durable, so committed.tmp may still be "committed" on disk: it is not written over until
     * a sync succeeds. */
    pthread_mutex_lock(&s->dir_mu); /* remake_dir swaps dirfd */
    if (s->dir_unsynced && fsync(s->dirfd) != 0) {
        MG_LOG(MG_LOG_ERROR, "spool", "%s: cannot sync the directory: %s", s->dir, strerror(errno));
        pthread_mutex_unlock(&s->dir_mu);
        return MG_E_IO;
    }
    s->dir_unsynced = false;
    bool ok = write_commit_file(s->dirfd, "committed.tmp", pos), swapped = false;
    if (ok) {
        swapped = renameat2(s->dirfd, "committed.tmp", s->dirfd, "committed", RENAME_EXCHANGE) == 0;
        /* no "committed" (made at open, unless the disk was full), or a filesystem that cannot
         * swap: a plain rename, and a new committed.tmp for the next one */
        if (!swapped)
            ok = (errno == ENOENT || errno == EINVAL || errno == ENOSYS) &&
                 renameat(s->dirfd, "committed.tmp", s->dirfd, "committed") == 0;
    }
    if (ok && fsync(s->dirfd) != 0) {
        s->dir_unsynced = true;
        ok = false;
    }
    if (ok && !swapped)
        write_commit_file(s->dirfd, "committed.tmp", pos);
    if (!ok) {
        MG_LOG(MG_LOG_ERROR, "spool", "%s/committed: cannot write: %s", s->dir, strerror(errno));
        pthread_mutex_unlock(&s->dir_mu);
        return MG_E_IO;
    }
    /* sealed segments wholly before |pos|, or read to their end, are done */
    pthread_mutex_lock(&s->mu);
    s->committed = pos;
    drop_committed(s, true);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->dir_mu);
    return MG_OK;
}

uint64_t mg_spool_pending(mg_spool_t *s)
{
    uint64_t n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nsegs; i++) {
        const seg_t *g = &s->segs[i];
        if (g->no > s->committed.seg)
            n += g->size;
        else if (g->no == s->committed.seg && g->size > s->committed.off)
            n += g->size - s->committed.off;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

uint64_t mg_spool_bytes(mg_spool_t *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t t = s->total;
    pthread_mutex_unlock(&s->mu);
    return t;
}

void mg_spool_close(mg_spool_t *s)
{
    if (s == NULL)
        return;
    if (s->wfd >= 0)
        close(s->wfd);
    if (s->rfd >= 0)
        close(s->rfd);
    if (s->lockfd >= 0)
        close(s->lockfd); /* releases the flock */
    if (s->dirfd >= 0)
        close(s->dirfd);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->dir_mu);
    free(s->segs);
    free(s->dir);
    free(s);
}
