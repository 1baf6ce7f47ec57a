/*
 * gateway/spool.h - a durable, size-capped queue of text lines on disk (write-ahead spool).
 *
 * The request log's database sink writes every batch of access-log lines here first, fsync'ed,
 * and only then tries the database; a reader takes lines back out in order and marks them
 * committed once the database has them. Whatever is not committed when the process dies (or the
 * database is away) is still on disk and is read again after a restart, from the last committed
 * position on. The reader must therefore tolerate seeing a line twice (the database side is
 * idempotent); it never misses one.
 *
 * Layout of |dir|: numbered segment files "00000000000000000001.spool" holding whole lines, a
 * "committed" file ("SEGMENT OFFSET\n", replaced atomically by rename), and a "lock" file held
 * with flock() so two processes never share a spool.
 *
 * Threading: one appender thread (mg_spool_append) and one reader thread (mg_spool_read,
 * mg_spool_commit) may run at the same time; internal mutexes guard what they share. Stats
 * may be read from any thread. Ownership: the spool owns its files and descriptors.
 */
#ifndef MG_GATEWAY_SPOOL_H
#define MG_GATEWAY_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct mg_spool mg_spool_t;

/* A place in the spool: segment number, byte offset in it, and the lines before that offset. */
typedef struct mg_spool_pos {
    uint64_t seg;
    uint64_t off;
    uint64_t line;
} mg_spool_pos_t;

/*
 * Opens (creating |dir| if its parent exists) the spool with a cap of |max_bytes| on disk, and
 * recovers it: segments before the committed position are removed, and a torn last line (a
 * crash in the middle of an append) is cut off. The lines of the others are counted (they are
 * read once for it), so that a directory removed later can say how many records went with it.
 * New lines go to a fresh segment. Returns NULL
 * with the reason (naming |dir|) in |err| when the directory cannot be used or another process
 * holds it.
 */
mg_spool_t *mg_spool_open(const char *dir, uint64_t max_bytes, char *err, size_t errlen);

/*
 * Appends the whole lines of |lines| (|len| bytes, each ending with '\n'; a trailing partial
 * line is ignored) and fdatasync()s them: once this returns they survive a crash. Lines that
 * would take the spool past its cap, or that a write error (disk full) prevented, are not kept:
 * their number is added to *|lost| and MG_E_LIMIT (cap) or MG_E_IO (write error) is returned.
 *
 * Each call, |len| 0 too (call it so when idle), first checks that the directory is still
 * there. One removed while in use (an operator's rm -rf, a cleaner of old files) is made again,
 * with what of the pending lines can still be read copied into its first segment: those of the
 * segment being appended to and of the one the reader has open, since their files are still
 * open. The other pending segments went with the directory: their lines are counted for
 * mg_spool_take_removed. When the directory cannot be made again, the batch is not kept
 * (MG_E_IO), and the next call tries again. A segment file removed with the directory kept (a
 * cleaner of old files) is left for the reader if it was the one being appended to: new lines
 * go to a new segment. Appender thread only.
 */
mg_err_t mg_spool_append(mg_spool_t *s, const char *lines, size_t len, uint64_t *lost);

/* Lines that were kept (durable) and then lost with removed files since the last call (see
 * mg_spool_append and mg_spool_read). Thread-safe. */
uint64_t mg_spool_take_removed(mg_spool_t *s);

/* The committed position: where a reader starts after mg_spool_open. */
mg_spool_pos_t mg_spool_committed(mg_spool_t *s);

/*
 * Reads whole lines from |*pos| into |buf| (|cap| bytes; at least one line must fit, so give
 * it 16 KiB or more), at most |max_lines| of them. On MG_OK, *len bytes and *nlines lines are in
 * |buf| and |*next| is the position after them (pass it to mg_spool_commit once they are safe);
 * *|cut| (when not NULL) says that |cap| stopped the read before the durable end of the segment,
 * so fewer than |max_lines| lines does not mean the spool is drained. MG_E_AGAIN when nothing
 * durable is past |*pos| yet; MG_E_IO on a read error (logged). |*pos| may be normalised (moved
 * past a finished segment). A sealed segment whose file was removed is skipped, its lines from
 * |*pos| on counted for mg_spool_take_removed and said in an error line. Reader thread only.
 */
mg_err_t mg_spool_read(mg_spool_t *s, mg_spool_pos_t *pos, char *buf, size_t cap,
                       size_t max_lines, size_t *len, size_t *nlines, mg_spool_pos_t *next,
                       bool *cut);

/*
 * Records |pos| as committed (fsync'ed file, atomic rename) and removes the segments wholly
 * before it, which frees their bytes from the cap. MG_E_IO when the file cannot be written
 * (logged; the old position stays, so lines are re-read, never lost). Reader thread only.
 */
mg_err_t mg_spool_commit(mg_spool_t *s, mg_spool_pos_t pos);

/* Bytes of segment files on disk (what counts against the cap). Any thread. */
uint64_t mg_spool_bytes(mg_spool_t *s);

/* Bytes appended and not committed yet: what still waits for the database. Thread-safe. */
uint64_t mg_spool_pending(mg_spool_t *s);

/* Closes the files and frees |s|; what is not committed stays on disk for the next open. */
void mg_spool_close(mg_spool_t *s);

#endif /* MG_GATEWAY_SPOOL_H */
