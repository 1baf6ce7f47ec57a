"""
The request log in MariaDB (gateway/dblog.c), against a private mariadbd (servers.py):
  - N requests -> N rows, the same ids as the N access-log lines, table layout and partitions;
  - MariaDB stopped for MG_DBLOG_DOWN_S seconds (default 30, as the issue says) under load, then
    started again -> exactly N rows, and N lines in the access log;
  - the gateway killed with SIGKILL while it replays its spool, then restarted -> exactly N rows;
  - the spool cap reached -> the gateway keeps serving and counts what it could not keep;
  - a spool left by the previous version replays, every awkward byte intact;
  - a password file that is not one line refuses the start-up, naming the file.
Load is a bounded number of HTTP/1.1 requests from a few threads on 127.0.0.1. The counts and
times are printed (ctest runs this with -rP).
"""

import fcntl
import glob
import json
import os
import re
import signal
import threading
import time
import urllib.request

import httpx
import pytest

from conftest import SANITIZER_RE, free_port, h2load, refused_start, routes_doc, wait_for
from servers import MariaDB

DOWN_S = float(os.environ.get("MG_DBLOG_DOWN_S", "30"))


def dblog_conf(db, **over):
    c = {"host": "127.0.0.1", "port": db.port, "user": "root", "database": db.database,
         "spool_dir": "spool", "batch_rows": 200, "flush_ms": 50}
    c.update(over)
    return {"request_log_db": c}


def rows(db, where=""):
    return db.query("SELECT COUNT(*) FROM request_log" + where)[0][0]


def table_exists(db):
    return db.query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = 'request_log'", (db.database,))[0][0] == 1


class Load:
    """|threads| threads sending HTTP/1.1 GETs (keep-alive) until stop() or |per_thread| each;
    counts the answers (every answer is one access-log record)."""

    def __init__(self, gw, threads=4, per_thread=None, pause=0.0, prefix="/load"):
        self.gw, self.per_thread, self.pause, self.prefix = gw, per_thread, pause, prefix
        self.done = [0] * threads
        self.errors = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        url = "http://127.0.0.1:%d" % self.gw.port
        try:
            with httpx.Client(base_url=url, headers={"host": self.gw.authority()},
                              timeout=10) as c:
                n = 0
                while not self._stop.is_set() and (self.per_thread is None or
                                                   n < self.per_thread):
                    r = c.get("%s/%d/%d" % (self.prefix, i, n))
                    assert r.status_code == 200, r.status_code
                    n += 1
                    self.done[i] = n
                    if self.pause:
                        time.sleep(self.pause)
        except Exception as e:  # reported by join()
            self.errors.append(repr(e))

    def stop(self):
        self._stop.set()
        return self.join()

    def join(self):
        for t in self.threads:
            t.join(60)
        assert not self.errors, self.errors
        return sum(self.done)


def spool_lines(gw):
    n = 0
    for p in glob.glob(os.path.join(gw.dir, "spool", "*.spool")):
        with open(p, "rb") as f:
            n += f.read().count(b"\n")
    return n


def check_exact(gw, db, n, what):
    """Exactly |n| rows, |n| access-log lines, and the same |n| distinct ids in both."""
    lines = gw.access()
    assert len(lines) == n, "%s: %d requests but %d access log lines" % (what, n, len(lines))
    ids = {ln["id"] for ln in lines}
    assert len(ids) == n, "%s: ids in the access log are not unique" % what
    got = {r[0] for r in db.query("SELECT LOWER(HEX(id)) FROM request_log")}
    count = rows(db)
    assert count == n, "%s: %d requests, %d rows" % (what, n, count)
    assert got == ids, "%s: %d ids only in the log, %d only in the table" % (
        what, len(ids - got), len(got - ids))


def test_n_requests_n_rows(procs):
    db = MariaDB(procs)
    # a user with a password, read from a file as gateway.json asks
    db.query("CREATE USER 'mg'@'127.0.0.1' IDENTIFIED BY 's3cret-pw'")
    db.query("GRANT ALL ON `%s`.* TO 'mg'@'127.0.0.1'" % db.database)
    a = procs.backend("pod-a")
    pw = os.path.join(procs.dir, "db.password")
    with open(pw, "w") as f:
        f.write("s3cret-pw\n")
    admin_port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dict(dblog_conf(db, user="mg", password_file=pw),
                                 admin={"listen": "127.0.0.1:%d" % admin_port}))
    n = 500
    t0 = time.monotonic()
    load = Load(gw, threads=4, per_thread=n // 4)
    assert load.join() == n
    wait_for(lambda: table_exists(db) and rows(db) == n, 30, 0.1, "%d rows" % n)
    took = time.monotonic() - t0
    gw.wait_access(n)
    check_exact(gw, db, n, "steady state")
    print("dblog: %d requests -> %d rows, %d access log lines, in %.1f s" % (
        n, rows(db), len(gw.access()), took))

    # the row is the log line
    ln = gw.access()[0]
    r = db.query("SELECT DATE_FORMAT(time, '%%Y-%%m-%%dT%%H:%%i:%%s.%%fZ'), request_id, proto, "
                 "method, path, app, env, service, pod, status, resp_bytes, total_us, fallback, "
                 "retries FROM request_log WHERE id = UNHEX(%s)", (ln["id"],))[0]
    assert r == (ln["time"], ln["request_id"], ln["proto"], ln["method"], ln["path"], ln["app"],
                 ln["env"], ln["service"], ln["pod"], ln["status"], ln["resp_bytes"],
                 ln["total_us"], int(ln["fallback"]), ln["retries"]), r
    assert (ln["app"], ln["env"], ln["service"]) == ("digits", "production", "svc-a")

    # layout: day partitions around today, the report indexes
    parts = [p[0] for p in db.query(
        "SELECT PARTITION_NAME FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = %s AND "
        "TABLE_NAME = 'request_log' ORDER BY PARTITION_ORDINAL_POSITION", (db.database,))]
    today = db.query("SELECT DATE_FORMAT(UTC_DATE(), 'p%Y%m%d')")[0][0]
    assert parts[0] == "p_old" and parts[-1] == "p_future" and today in parts, parts
    assert len(parts) == 2 + 8, parts  # today and 7 days ahead
    keys = {r[2] for r in db.query("SHOW INDEX FROM request_log")}
    assert {"PRIMARY", "app_env_time", "service_time"} <= keys, keys
    in_today = db.query("SELECT COUNT(*) FROM request_log PARTITION (%s)" % today)[0][0]
    assert in_today == n

    stats = json.loads(urllib.request.urlopen(
        "http://127.0.0.1:%d/stats/dblog" % admin_port, timeout=5).read())
    assert stats["inserted"] == n and stats["spooled"] == n and stats["lost"] == 0, stats
    assert stats["connected"] is True, stats
    assert "s3cret-pw" not in gw.log()
    # the same on /metrics, every sample with its HELP (spool_bytes and connected had none)
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).read()
    lines = text.decode().splitlines()
    names = [ln.split()[0] for ln in lines if ln.startswith("modelgate_request_log_db_")]
    assert "modelgate_request_log_db_pending_bytes" in names, names
    for name in names:
        assert "# HELP %s " % name in text.decode(), name


@pytest.mark.parametrize("text,why", [
    ("s3cret-pw\nsecond line\n", "has more than one line (byte 0x0a at offset 9;"),
    ("", "is empty"),
    ("\n", "is empty"),
], ids=["two-lines", "empty", "newline-only"])
def test_password_file_not_one_line_refuses_start(tmp_path, text, why):
    """The password file holds one line. A second line used to be dropped silently (the first
    one was taken as the password) and an empty file meant no password; now the gateway does
    not start, and says which file and why. No MariaDB needed: the file is read first."""
    pw = tmp_path / "db.password"
    pw.write_text(text)
    conf = tmp_path / "gateway.json"
    conf.write_text(json.dumps({
        "listen": ["127.0.0.1:%d" % free_port()], "access_log": "access.log",
        "request_log_db": {"host": "127.0.0.1", "port": free_port(), "spool_dir": "spool",
                           "password_file": "db.password"}}))
    err = refused_start(conf, "the password file %r" % text)
    assert 'request_log_db.password_file: "%s" %s' % (pw, why) in err, err
    assert "s3cret-pw" not in err
    assert not SANITIZER_RE.search(err), err


def test_mariadb_down_under_load(procs):
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dblog_conf(db))
    load = Load(gw, threads=4, pause=0.01)
    time.sleep(3)
    before = sum(load.done)
    t_stop = time.monotonic()
    db.stop()
    time.sleep(DOWN_S)
    during = sum(load.done) - before
    rows_spooled = spool_lines(gw)
    db.start()
    t_back = time.monotonic()
    time.sleep(3)
    n = load.stop()
    wait_for(lambda: rows(db) == n, 60, 0.2, "%d rows after MariaDB came back" % n)
    caught_up = time.monotonic() - t_back
    wait_for(lambda: len(gw.access()) >= n, 10, 0.1, "%d access log lines" % n)
    check_exact(gw, db, n, "MariaDB down %.0f s" % DOWN_S)
    assert during > 0 and gw.proc.alive()
    assert "cannot connect to MariaDB" in gw.log()
    print("dblog: MariaDB down %.1f s under load: %d requests in all, %d while it was down "
          "(%d lines in spool files before the restart), %d rows, %d access log lines; "
          "caught up %.1f s after MariaDB was back" % (
              t_back - t_stop, n, during, rows_spooled, rows(db), len(gw.access()), caught_up))


def test_kill9_mid_replay(procs):
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    routes = routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")])
    # small batches and a slow-ish cadence: the replay takes long enough to be interrupted
    conf = dblog_conf(db, batch_rows=20, flush_ms=10)
    gw = procs.gateway(routes, conf=conf)
    wait_for(lambda: table_exists(db), 20, 0.1, "the table")
    db.stop()
    n = 3000
    load = Load(gw, threads=4, per_thread=n // 4)
    assert load.join() == n
    wait_for(lambda: spool_lines(gw) >= n, 20, 0.1, "%d lines in the spool" % n)
    db.start()
    wait_for(lambda: rows(db) > 0, 30, 0.005, "the replay to start")
    gw.signal(signal.SIGKILL)
    gw.proc.wait(10)
    gw.proc.gateway_drain_s = None  # killed on purpose: no clean exit to check
    at_kill = rows(db)
    print("dblog: killed -9 with %d of %d rows in MariaDB" % (at_kill, n))
    assert at_kill < n, "the replay finished before the kill; nothing was tested"

    gw2 = procs.gateway(routes, conf=conf)  # same directory: same spool, same access log
    assert gw2.dir == gw.dir
    wait_for(lambda: rows(db) >= n, 60, 0.1, "%d rows after the restart" % n)
    time.sleep(1)  # a duplicate would show up now
    check_exact(gw2, db, n, "kill -9 mid-replay")
    assert "replaying" in gw2.log()
    print("dblog: after the restart %d rows for %d requests (%d replayed)" % (
        rows(db), n, n - at_kill))


def access_fifo(procs, size):
    """A FIFO "access.fifo" in the gateway's directory holding |size| bytes; returns the
    non-blocking read end, open so that the gateway's open succeeds, and read by nobody."""
    gdir = os.path.join(procs.dir, "gateway")
    os.makedirs(gdir, exist_ok=True)
    fifo = os.path.join(gdir, "access.fifo")
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(rfd, fcntl.F_SETPIPE_SZ, size)
    return rfd


def test_access_log_line_implies_row(procs):
    """A line that reached the access log was spooled for MariaDB first, so it is never lost
    when the gateway dies: the access log here is a pipe nobody drains, and the writer blocks
    half way through a batch; killed then with SIGKILL and restarted, the gateway must put
    every record that the pipe shows into MariaDB."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    routes = routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")])
    # A pipe takes a write a page at a time into free slots and blocks when none is left; a
    # write that fits what is left of the last page joins it. Two pages, emptied after a first
    # request: the burst's first batch (a line or two) goes into the first page, the next one
    # (several KB) fills the second and blocks half written.
    rfd = access_fifo(procs, 8192)

    def drain():
        data = b""
        while True:
            try:
                chunk = os.read(rfd, 1 << 16)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    try:
        gw = procs.gateway(routes, conf=dict(dblog_conf(db), access_log="access.fifo"))
        r = httpx.get("http://127.0.0.1:%d/first" % gw.port, headers={"host": gw.authority()})
        assert r.status_code == 200, r.status_code
        first = b""
        deadline = time.time() + 10
        while first.count(b"\n") < 1 and time.time() < deadline:
            first += drain()
            time.sleep(0.01)
        assert first.count(b"\n") == 1, "the first request's line did not reach the pipe"
        n = 600
        (total, _, done, ok, failed), _ = h2load(gw, "-n", str(n), "-c", "1", "-m", "100")
        assert ok == n, "%d of %d requests succeeded" % (ok, n)
        time.sleep(1)  # the writer is stuck in write() now
        gw.signal(signal.SIGKILL)
        gw.proc.wait(10)
        gw.proc.gateway_drain_s = None  # killed on purpose: no clean exit to check
        data = first + drain()
    finally:
        os.close(rfd)
    shown = [json.loads(ln)["id"] for ln in data.split(b"\n")[:-1]]  # whole lines only
    assert 1 < len(shown) < n + 1, "%d of %d lines in the pipe: the writer did not block" % (
        len(shown), n + 1)

    procs.gateway(routes, conf=dblog_conf(db))  # same directory: the spool replays
    deadline = time.monotonic() + 20  # the replay of a few hundred records takes well under 1 s
    while rows(db) < len(shown) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    got = {r[0] for r in db.query("SELECT LOWER(HEX(id)) FROM request_log")}
    missing = [i for i in shown if i not in got]
    print("dblog: %d of %d lines reached the blocked access log (%d bytes, the last line %s), "
          "%d rows after the restart, %d of those lines without a row" % (
              len(shown), n + 1, len(data), "cut" if not data.endswith(b"\n") else "whole",
              len(got), len(missing)))
    assert not missing, "%d records in the access log never reached MariaDB (first %s)" % (
        len(missing), missing[0])


def test_blocked_access_log_holds_back_no_row(procs):
    """The access log is a pipe nobody reads (a stalled log collector): its writes block, yet
    every record reaches MariaDB meanwhile, and the lines waiting for the pipe all arrive once
    it is read."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    rfd = access_fifo(procs, 4096)
    try:
        admin_port = free_port()
        gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                           conf=dict(dblog_conf(db), access_log="access.fifo",
                                     admin={"listen": "127.0.0.1:%d" % admin_port}))
        n = 2000
        (total, _, done, ok, failed), _ = h2load(gw, "-n", str(n), "-c", "2", "-m", "50")
        assert ok == n, "%d of %d requests succeeded" % (ok, n)
        wait_for(lambda: rows(db) == n, 30, 0.1, "%d rows while the access log is blocked" % n)
        prom = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port,
                                      timeout=5).read()
        for m in (b"modelgate_access_log_dropped_total 0\n", b"modelgate_access_log_lost_total 0\n",
                  b"modelgate_request_log_db_lost_total 0\n"):
            assert m in prom, m
        data = b""
        deadline = time.monotonic() + 30
        while data.count(b"\n") < n and time.monotonic() < deadline:
            try:
                data += os.read(rfd, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        os.close(rfd)
    ids = {json.loads(ln)["id"] for ln in data.split(b"\n")[:-1]}
    got = {r[0] for r in db.query("SELECT LOWER(HEX(id)) FROM request_log")}
    assert len(ids) == n and ids == got, "%d lines, %d rows, %d in common" % (
        len(ids), len(got), len(ids & got))
    print("dblog: access log blocked (a 4 KiB pipe nobody read): %d rows went in meanwhile; "
          "%d lines came out once it was read" % (n, len(ids)))


def test_previous_version_spool_replays(procs):
    """A spool left by the version that parsed lines with jansson and built SQL text (the lines
    are the access log's, so the format is the same) replays after the upgrade, and every
    awkward byte lands as the line has it: quotes, backslashes, control characters, U+FFFD,
    4-byte UTF-8, SQL-looking text, a path longer than its column."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    base = {"time": "2026-11-25T22:01:05.519213Z", "request_id": "r", "client": "127.0.0.1:1",
            "proto": "h2c", "method": "POST", "host": "digits-production.modelgate.local",
            "path": "/v1/predict", "app": "digits", "env": "production", "service": "svc-a",
            "pod": "127.0.0.1:2", "features": None, "features_hash": None, "status": 200,
            "req_bytes": 71, "resp_bytes": 96, "fallback": False, "retries": 0,
            "upstream_us": 412, "total_us": 520, "error": None}
    awkward = ["it's \"x\" \\ back\\slash", "nul\u0000 ctl\x01\x1a\t\n\r end",
               "bad \ufffd\ufffd bytes", "\u00e9t\u00e9 \u20ac \U0001f600",
               "'); DROP TABLE request_log; --", "x" * 3000]
    lines = []
    for i, v in enumerate(awkward):
        rec = dict(base, id="%032x" % (0xabc0 + i), request_id="r%d" % i, path=v)
        lines.append(json.dumps(rec, separators=(",", ":")))
    # MariaDB refuses this one (no February 30th): the batch goes in row by row, it alone is out
    bad = json.dumps(dict(base, id="%032x" % 0xbad, time="2026-02-30T00:00:00.000000Z"),
                     separators=(",", ":"))
    spool = os.path.join(procs.dir, "gateway", "spool")
    os.makedirs(spool)
    with open(os.path.join(spool, "%020d.spool" % 1), "w") as f:
        f.write("".join(ln + "\n" for ln in lines[:3] + [bad] + lines[3:]))
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dblog_conf(db))
    assert gw.dir == os.path.dirname(spool)
    wait_for(lambda: table_exists(db) and rows(db) == len(lines), 30, 0.1,
             "%d replayed rows" % len(lines))
    got = dict(db.query("SELECT request_id, path FROM request_log"))
    for i, v in enumerate(awkward):
        assert got["r%d" % i] == v[:2048], (i, got["r%d" % i][:80], v[:80])
    assert "replaying" in gw.log()
    wait_for(lambda: "MariaDB refused a record" in gw.log(), 5, 0.1, "the refused record's line")
    print("dblog: %d lines of a previous version's spool replayed, values intact; 1 refused" %
          len(lines))


@pytest.mark.parametrize("away", ["stopped", "hung"])
def test_spool_cap_counts_losses(procs, away):
    """MariaDB stopped, or hung (SIGSTOP: the database thread then waits in its I/O timeout):
    past the spool cap the gateway keeps serving, counts the records it could not keep and says
    so within about a second of the first loss, not once the database thread is free again."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    admin_port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dict(dblog_conf(db, spool_max_mb=1),
                                 admin={"listen": "127.0.0.1:%d" % admin_port}))
    wait_for(lambda: table_exists(db), 20, 0.1, "the table")
    if away == "stopped":
        db.stop()
    else:
        db.proc.signal(signal.SIGSTOP)
    n = 4000  # about 400 bytes a line: more than 1 MiB
    load = Load(gw, threads=4, per_thread=n // 4)

    def first_loss():
        return dblog_stats(admin_port)["lost"] > 0 or None
    wait_for(first_loss, 60, 0.05, "a first lost record")
    t_loss = time.monotonic()
    wait_for(lambda: "LOST" in gw.log(), 10, 0.05, "the LOST line")
    said_after = time.monotonic() - t_loss
    assert load.join() == n  # the gateway kept serving
    st = wait_for(lambda: (lambda s: s if s["spooled"] + s["lost"] == n else None)(
        dblog_stats(admin_port)), 20, 0.1, "every record spooled or counted as lost")
    assert st["lost"] > 0 and st["spool_bytes"] <= 1 << 20, st
    assert st["pending_bytes"] == st["spool_bytes"], st  # nothing went in while away
    assert said_after < 2.5, "the LOST line came %.1f s after the first loss" % said_after
    prom = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).read()
    assert ("modelgate_request_log_db_lost_total %d\n" % st["lost"]).encode() in prom
    wait_for(lambda: "LOST %d request records" % st["lost"] in gw.log() or
             "request records (%d in total)" % st["lost"] in gw.log(), 5, 0.1,
             "the LOST line in the gateway log")
    if away == "stopped":
        db.start()
    else:
        db.proc.signal(signal.SIGCONT)
    wait_for(lambda: rows(db) == st["spooled"], 60, 0.1, "%d rows" % st["spooled"])
    wait_for(lambda: dblog_stats(admin_port)["pending_bytes"] == 0, 10, 0.1, "no backlog")
    assert len(gw.access()) == n  # the access log has every record
    print("dblog: spool cap 1 MiB, MariaDB %s: %d requests, %d kept and inserted, %d counted "
          "as lost, said %.2f s after the first loss" % (away, n, rows(db), st["lost"],
                                                           said_after))


def test_spool_directory_removed_while_running(procs):
    """spool_dir removed under a running gateway (an operator's rm -rf, a cleaner of old files):
    commits failed for ever, so MariaDB got no new record, and what the spool held was gone at
    the next start without a word. The directory is made again: with MariaDB up nothing is lost;
    with MariaDB away, the records of the spool files that went with it are counted as lost and
    said, and every other record goes in once MariaDB is back."""
    import shutil
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    admin_port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dict(dblog_conf(db, spool_max_mb=2),  # 256 KiB segments
                                 admin={"listen": "127.0.0.1:%d" % admin_port}))
    spool = os.path.join(gw.dir, "spool")
    n = Load(gw, threads=2, per_thread=100, prefix="/before").join()
    wait_for(lambda: table_exists(db) and rows(db) == n, 30, 0.1, "%d rows" % n)
    shutil.rmtree(spool)
    n += Load(gw, threads=2, per_thread=100, prefix="/after").join()
    wait_for(lambda: rows(db) == n, 30, 0.1, "%d rows after the removal" % n)
    wait_for(lambda: dblog_stats(admin_port)["pending_bytes"] == 0, 10, 0.1, "no backlog")
    gw.wait_access(n)
    check_exact(gw, db, n, "spool directory removed, MariaDB up")
    assert dblog_stats(admin_port)["lost"] == 0
    assert os.path.exists(os.path.join(spool, "committed")), os.listdir(spool)
    assert "was removed while in use; made it again" in gw.log(), gw.log()

    # MariaDB away: about 3 segments pile up; the sealed ones nobody has open are lost with
    # the directory, the reader's and the appender's are copied
    db.stop()
    n += Load(gw, threads=4, per_thread=500, prefix="/away").join()
    wait_for(lambda: dblog_stats(admin_port)["spooled"] == n, 20, 0.1, "%d spooled" % n)
    assert len(glob.glob(os.path.join(spool, "*.spool"))) >= 3
    shutil.rmtree(spool)
    st = wait_for(lambda: (lambda s: s if s["lost"] > 0 else None)(dblog_stats(admin_port)),
                  10, 0.1, "the records of the removed files counted as lost")
    wait_for(lambda: "were removed before MariaDB had them" in gw.log(), 5, 0.1, "the LOST line")
    prom = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).read()
    assert ("modelgate_request_log_db_lost_total %d\n" % st["lost"]).encode() in prom
    db.start()
    wait_for(lambda: rows(db) == n - st["lost"], 60, 0.1, "%d rows" % (n - st["lost"]))
    wait_for(lambda: dblog_stats(admin_port)["pending_bytes"] == 0, 10, 0.1, "no backlog")
    time.sleep(0.5)
    assert rows(db) == n - st["lost"] and dblog_stats(admin_port)["lost"] == st["lost"]
    gw.wait_access(n)
    logged = {ln["id"] for ln in gw.access()}
    got = {r[0] for r in db.query("SELECT LOWER(HEX(id)) FROM request_log")}
    assert got <= logged and len(logged) == n

    # a cleaner of old files: the oldest segments go, the directory stays. The database thread
    # stopped for good at the first file it could not open; it now counts them and goes on.
    db.stop()
    n += Load(gw, threads=4, per_thread=500, prefix="/cleaned").join()
    wait_for(lambda: dblog_stats(admin_port)["spooled"] == n, 20, 0.1, "%d spooled" % n)
    segs = sorted(glob.glob(os.path.join(spool, "*.spool")))
    assert len(segs) >= 3, segs
    for p in segs[:-1]:
        os.unlink(p)
    db.start()
    st2 = wait_for(lambda: (lambda s: s if s["pending_bytes"] == 0 and
                            rows(db) + s["lost"] == n else None)(dblog_stats(admin_port)),
                   60, 0.2, "every record inserted or counted as lost")
    assert st2["lost"] > st["lost"], (st, st2)
    assert "was removed before MariaDB had it" in gw.log()
    print("dblog: spool directory removed twice; with MariaDB away %d of %d records were in "
          "files that went with it, counted and said; then %d more in segment files a cleaner "
          "removed; the other %d went in" % (st["lost"], n, st2["lost"] - st["lost"], rows(db)))


def test_sigterm_with_mariadb_hung(procs):
    """SIGTERM while MariaDB hangs (SIGSTOP: calls into it wait for their 10 s timeout): the
    gateway still exits 0 within a few seconds, and the records it could not insert go in from
    the spool at the next start, exactly once."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    routes = routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")])
    gw = procs.gateway(routes, conf=dblog_conf(db))
    assert Load(gw, threads=2, per_thread=10).join() == 20
    wait_for(lambda: rows(db) == 20, 30, 0.1, "20 rows")
    db.proc.signal(signal.SIGSTOP)
    try:
        assert Load(gw, threads=2, per_thread=15).join() == 30
        time.sleep(0.5)  # the database thread is waiting on MariaDB now
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        rc = gw.proc.wait(15)
        took = time.monotonic() - t0
    finally:
        db.proc.signal(signal.SIGCONT)
    assert rc == 0 and took < 5.0, "exit code %s after %.1f s" % (rc, took)
    assert "did not answer within" in gw.log()
    gw2 = procs.gateway(routes, conf=dblog_conf(db))  # same directory: the spool replays
    wait_for(lambda: rows(db) == 50, 30, 0.1, "50 rows after the restart")
    time.sleep(0.5)
    check_exact(gw2, db, 50, "SIGTERM with MariaDB hung")
    print("dblog: SIGTERM with MariaDB hung: exited 0 after %.1f s; 50 rows after the restart"
          % took)


def operator_sql(db, first_day):
    """conf/request_log.sql for |db|, its first day partition bound |first_day| (TO_DAYS)."""
    src = os.environ.get("MG_SOURCE_DIR") or os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(src, "conf", "request_log.sql")) as f:
        sql = "\n".join(re.sub(r"--( .*)?$", "", ln) for ln in f.read().splitlines())
    return sql.replace("739000", str(first_day)).replace("modelgate", db.database)


def run_sql(db, sql):
    conn = db.connect()
    with conn.cursor() as cur:
        for stmt in [s.strip() for s in sql.split(";") if s.strip()]:
            cur.execute(stmt)
    conn.close()


def dblog_stats(admin_port):
    return json.loads(urllib.request.urlopen("http://127.0.0.1:%d/stats/dblog" % admin_port,
                                             timeout=5).read())


def test_refusals_that_may_pass_are_retried(procs):
    """Only a record's own bad value rejects it: any other refusal (here an operator's trigger,
    as a statement time limit or a full disk would) keeps the records in the spool, and they go
    in, exactly once, when the cause is gone."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    admin_port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dict(dblog_conf(db), admin={"listen": "127.0.0.1:%d" % admin_port}))
    assert Load(gw, threads=2, per_thread=10).join() == 20
    wait_for(lambda: rows(db) == 20, 30, 0.1, "20 rows")
    run_sql(db, "CREATE TRIGGER no_inserts BEFORE INSERT ON request_log FOR EACH ROW "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'maintenance window'")
    assert Load(gw, threads=2, per_thread=15).join() == 30
    wait_for(lambda: "maintenance window" in gw.log(), 20, 0.1, "the refusal in the log")

    def connections():
        return int(db.query("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])
    c0 = connections()
    time.sleep(3)  # retried meanwhile, backing off (0.1, 0.2, ... 2 s), and said once
    retries = connections() - c0 - 1  # one is this query's
    assert 1 <= retries <= 6, "%d reconnections in 3 s" % retries
    assert gw.log().count("maintenance window") == 1, gw.log()
    st = dblog_stats(admin_port)
    assert rows(db) == 20 and st["rejected"] == 0, (rows(db), st)
    assert "REJECTED" not in gw.log()
    run_sql(db, "DROP TRIGGER no_inserts")
    wait_for(lambda: rows(db) == 50, 30, 0.1, "50 rows once the trigger is gone")
    check_exact(gw, db, 50, "refused by a trigger, then accepted")
    print("dblog: 30 records refused by a trigger (%s) waited in the spool and went in after" %
          [ln for ln in gw.log().splitlines() if "maintenance window" in ln][0][-120:])


def test_batches_fit_the_servers_max_allowed_packet(procs):
    """A server whose max_allowed_packet is smaller than a batch's INSERT (500 rows of 2 KB
    paths: a megabyte; here 64 KiB) refused it with error 1153 or closed the connection, and
    the same batch came back for ever: the request log stopped for good. Batches are now read
    to fit half of it, and every record goes in."""
    db = MariaDB(procs)
    db.query("SET GLOBAL max_allowed_packet = 65536")  # for the gateway's connections
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dblog_conf(db, batch_rows=500, flush_ms=200))
    n = Load(gw, threads=2, per_thread=150, prefix="/" + "p" * 1900).join()
    wait_for(lambda: table_exists(db) and rows(db) == n, 30, 0.1, "%d rows" % n)
    check_exact(gw, db, n, "batches over max_allowed_packet")
    assert "1153" not in gw.log(), gw.log()


@pytest.mark.parametrize("case", ["no_key", "merging_key", "prefix_key", "narrow"])
def test_operator_table_is_checked(procs, case):
    """A table an operator made: without the idempotency key (time, id), or with a unique key
    that would merge distinct records (one on request_id, or on a prefix of id: the first 8
    bytes are the same for a whole gateway start, and such a key passed before), records wait
    in the spool (said in the log) until the table is fixed; narrower text columns get values
    cut to their length, not refused."""
    db = MariaDB(procs)
    today = db.query("SELECT TO_DAYS(UTC_DATE())")[0][0]
    sql = operator_sql(db, today)
    if case == "no_key":
        sql = sql.replace("PRIMARY KEY (time, id),", "KEY by_time (time),")
    elif case == "merging_key":
        sql = sql.replace("PRIMARY KEY (time, id),",
                          "PRIMARY KEY (time, id), UNIQUE KEY rid (request_id, time),")
    elif case == "prefix_key":
        sql = sql.replace("PRIMARY KEY (time, id),",
                          "PRIMARY KEY (time, id), UNIQUE KEY idp (id(8), time),")
    else:
        sql = sql.replace("path VARCHAR(2048)", "path VARCHAR(12)")
    assert sql != operator_sql(db, today)
    run_sql(db, sql)
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dblog_conf(db))
    n = 20
    assert Load(gw, threads=2, per_thread=n // 2, prefix="/a-long-path-é").join() == n
    if case == "narrow":
        wait_for(lambda: rows(db) == n, 30, 0.1, "%d rows" % n)
        check_exact(gw, db, n, "narrow path column")
        paths = {r[0] for r in db.query("SELECT path FROM request_log")}
        full = {ln["path"] for ln in gw.access()}
        assert paths == {p[:12] for p in full} and all(len(p) > 12 for p in full), (paths, full)
        print("dblog: path VARCHAR(12): %s cut to %s" % (sorted(full)[0], sorted(paths)[0]))
        return
    why = {"no_key": "has no PRIMARY KEY (time, id)",
           "merging_key": "unique key rid (request_id,time) would merge",
           "prefix_key": "unique key idp (id(8),time) would merge"}[case]
    wait_for(lambda: why in gw.log(), 20, 0.1, "the refusal: " + why)
    time.sleep(1)
    assert rows(db) == 0
    run_sql(db, {"no_key": "ALTER TABLE request_log ADD PRIMARY KEY (time, id)",
                 "merging_key": "ALTER TABLE request_log DROP INDEX rid",
                 "prefix_key": "ALTER TABLE request_log DROP INDEX idp"}[case])
    wait_for(lambda: rows(db) == n, 30, 0.1, "%d rows once the table is fixed" % n)
    check_exact(gw, db, n, case)
    assert gw.log().count(why) == 1, "said once, not at every retry"
    print("dblog: %s: refused (%s), then %d rows" % (case, why, n))


def test_operator_schema_and_retention(procs):
    """conf/request_log.sql creates a table the gateway manages: it adds the days ahead, drops
    the day partitions older than retention_days, and empties p_old (the days before the table
    was made) once its bound is that old too; p_old itself stays."""
    db = MariaDB(procs)
    today = db.query("SELECT TO_DAYS(UTC_DATE())")[0][0]
    run_sql(db, operator_sql(db, today - 100))
    conn = db.connect()
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE request_log REORGANIZE PARTITION p_future INTO ("
                    "PARTITION p_day100 VALUES LESS THAN (%d), "
                    "PARTITION p_future VALUES LESS THAN MAXVALUE)" % (today - 99))
        # name it the way the gateway does, pYYYYMMDD
        name = db.query("SELECT DATE_FORMAT(FROM_DAYS(%s), 'p%%Y%%m%%d')", (today - 100,))[0][0]
        cur.execute("ALTER TABLE request_log REORGANIZE PARTITION p_day100 INTO ("
                    "PARTITION %s VALUES LESS THAN (%d))" % (name, today - 99))
        for rid, day in (("ab", today - 100), ("cd", today - 200)):  # a day partition, p_old
            cur.execute("INSERT INTO request_log (id, time, status, req_bytes, resp_bytes, "
                        "total_us, fallback, retries) VALUES (UNHEX(REPEAT('%s', 16)), "
                        "FROM_DAYS(%d) + INTERVAL 1 HOUR, 200, 0, 0, 1, 0, 0)" % (rid, day))
    conn.close()
    assert rows(db) == 2
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dblog_conf(db, retention_days=30))
    load = Load(gw, threads=2, per_thread=10)
    assert load.join() == 20

    def parts():
        return [p[0] for p in db.query(
            "SELECT PARTITION_NAME FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = 'request_log' ORDER BY PARTITION_ORDINAL_POSITION",
            (db.database,))]
    wait_for(lambda: rows(db) == 20, 30, 0.1, "20 new rows, the expired ones gone")
    assert "emptied p_old" in gw.log()
    p = parts()
    assert name not in p and p[0] == "p_old" and p[-1] == "p_future" and len(p) == 10, p
    print("dblog: retention 30 days dropped %s (100 days old); partitions now %s" % (
        name, ", ".join(p)))


@pytest.mark.parametrize("scheme", ["range_columns", "year"])
def test_operator_partition_scheme_is_left_alone(procs, scheme):
    """An operator's table partitioned otherwise than conf/request_log.sql does (RANGE COLUMNS
    over dates, or by YEAR): its bounds are no day numbers, and retention read them as such
    and dropped today's and yesterday's partitions, rows and all. Now such a table is logged
    to, and its partitions are left alone, with a warning."""
    db = MariaDB(procs)
    today = db.query("SELECT TO_DAYS(UTC_DATE())")[0][0]
    run_sql(db, operator_sql(db, today - 100))

    def day(k):
        return db.query("SELECT DATE_FORMAT(FROM_DAYS(%s), '%%Y-%%m-%%d')", (today + k,))[0][0]
    year = int(day(0)[:4])
    parts = {
        "range_columns": "RANGE COLUMNS(time) (PARTITION p_old VALUES LESS THAN ('%s'), "
                         "PARTITION p%s VALUES LESS THAN ('%s'), "
                         "PARTITION p%s VALUES LESS THAN ('%s'), "
                         "PARTITION p_future VALUES LESS THAN (MAXVALUE))"
                         % (day(-1), day(-1).replace("-", ""), day(0), day(0).replace("-", ""),
                            day(1)),
        "year": "RANGE (YEAR(time)) (PARTITION p%d VALUES LESS THAN (%d), "
                "PARTITION p%d VALUES LESS THAN (%d), "
                "PARTITION p_future VALUES LESS THAN MAXVALUE)" % (year - 1, year, year, year + 1),
    }[scheme]
    run_sql(db, "ALTER TABLE request_log PARTITION BY " + parts)
    for rid, k in (("ab", -1), ("cd", 0)):
        run_sql(db, "INSERT INTO request_log (id, time, status, req_bytes, resp_bytes, total_us, "
                    "fallback, retries) VALUES (UNHEX(REPEAT('%s', 16)), FROM_DAYS(%d) + INTERVAL "
                    "1 HOUR, 200, 0, 0, 1, 0, 0)" % (rid, today + k))
    before = db.query("SELECT PARTITION_NAME FROM information_schema.PARTITIONS WHERE "
                      "TABLE_SCHEMA = %s AND TABLE_NAME = 'request_log' ORDER BY "
                      "PARTITION_ORDINAL_POSITION", (db.database,))
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dblog_conf(db, retention_days=1))
    assert Load(gw, threads=2, per_thread=10).join() == 20
    wait_for(lambda: rows(db) == 22, 30, 0.1, "20 new rows, the 2 old ones kept")
    wait_for(lambda: "not RANGE (TO_DAYS(time))" in gw.log(), 10, 0.1, "the warning")
    after = db.query("SELECT PARTITION_NAME FROM information_schema.PARTITIONS WHERE "
                     "TABLE_SCHEMA = %s AND TABLE_NAME = 'request_log' ORDER BY "
                     "PARTITION_ORDINAL_POSITION", (db.database,))
    assert after == before
    assert "dropped partitions" not in gw.log() and "partition(s) added" not in gw.log()


def test_least_privilege_user_logs_to_an_existing_table(procs):
    """A least-privilege user (INSERT, SELECT and UPDATE, for a replay's ON DUPLICATE KEY
    UPDATE, on the table an operator made) was refused "CREATE command denied" at every
    connect, even with IF NOT EXISTS, so nothing was ever inserted and the spool only grew. A
    table that exists is not created again now."""
    db = MariaDB(procs)
    today = db.query("SELECT TO_DAYS(UTC_DATE())")[0][0]
    run_sql(db, operator_sql(db, today))
    db.query("CREATE USER 'ins'@'127.0.0.1' IDENTIFIED BY 'ins-pw'")
    db.query("GRANT INSERT, SELECT, UPDATE ON `%s`.request_log TO 'ins'@'127.0.0.1'"
             % db.database)
    pw = os.path.join(procs.dir, "ins.password")
    with open(pw, "w") as f:
        f.write("ins-pw\n")
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dblog_conf(db, user="ins", password_file=pw))
    assert Load(gw, threads=2, per_thread=25).join() == 50
    wait_for(lambda: rows(db) == 50, 30, 0.1, "50 rows")
    check_exact(gw, db, 50, "least privilege")
    assert "CREATE command denied" not in gw.log()


def test_narrowed_column_then_refused_rows(procs):
    """A column narrowed while the gateway is connected (values are cut to the lengths read at
    connect) got every following row rejected with error 1406 until some reconnect; now the
    first 1406 reads the lengths again and binds the batch again with them, and the rows go in
    cut. And rows MariaDB does refuse (an operator's CHECK) were one ERROR line each
    (2000 lines for 2000 requests): now one per cause a minute, the REJECTED summary counting."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    admin_port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dict(dblog_conf(db), admin={"listen": "127.0.0.1:%d" % admin_port}))
    assert Load(gw, threads=2, per_thread=5).join() == 10
    wait_for(lambda: rows(db) == 10, 30, 0.1, "10 rows")
    run_sql(db, "TRUNCATE TABLE request_log; ALTER TABLE request_log MODIFY path VARCHAR(5)")
    assert Load(gw, threads=2, per_thread=10).join() == 20
    wait_for(lambda: rows(db) == 20, 30, 0.1, "20 rows, their paths cut to 5 characters")
    assert db.query("SELECT MAX(CHAR_LENGTH(path)) FROM request_log")[0][0] == 5
    assert dblog_stats(admin_port)["rejected"] == 0
    run_sql(db, "TRUNCATE TABLE request_log; "
                "ALTER TABLE request_log ADD CONSTRAINT no_rows CHECK (status < 0)")
    assert Load(gw, threads=2, per_thread=15).join() == 30
    wait_for(lambda: dblog_stats(admin_port)["rejected"] == 30, 30, 0.1, "30 rejected")
    assert rows(db) == 0
    assert gw.log().count("MariaDB refused a record") == 1, gw.log()
    wait_for(lambda: "REJECTED" in gw.log(), 5, 0.1, "the REJECTED summary")


def test_refused_row_of_a_batch_sent_back_is_counted_once(procs):
    """A row-by-row pass that refused a row and then sent its batch back (a 1406 after a column
    was narrowed: the lengths read again differ) counted that row in "rejected" again when the
    batch came back. A batch waits on a table lock while the path column is narrowed and a
    CHECK refusing 404s is added; the next batch holds a 404 and then a long path: the 404 is
    refused once, and the long path goes in cut, with no reconnect."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    admin_port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dict(dblog_conf(db), admin={"listen": "127.0.0.1:%d" % admin_port}))
    url = "http://127.0.0.1:%d" % gw.port
    with httpx.Client(base_url=url, headers={"host": gw.authority()}, timeout=10) as c:
        assert c.get("/a").status_code == 200
        wait_for(lambda: table_exists(db) and rows(db) == 1, 30, 0.1, "the first row")
        lock = db.connect()
        with lock.cursor() as cur:
            cur.execute("LOCK TABLES request_log WRITE")
            assert c.get("/b").status_code == 200  # its batch waits on the lock
            wait_for(lambda: db.query(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE LIKE 'Waiting "
                "for table%' AND INFO LIKE 'INSERT INTO `request_log`%'")[0][0] == 1, 10, 0.05,
                "a batch waiting on the lock")
            assert c.get("/c", headers={"host": "nope.example"}).status_code == 404
            assert c.get("/a-path-longer-than-five").status_code == 200
            wait_for(lambda: dblog_stats(admin_port)["spooled"] == 4, 10, 0.05, "4 spooled")
            cur.execute("ALTER TABLE request_log MODIFY path VARCHAR(5), "
                        "ADD CONSTRAINT no_404 CHECK (status <> 404)")
            cur.execute("UNLOCK TABLES")
        lock.close()
    wait_for(lambda: rows(db) == 3, 30, 0.1, "3 rows, the long path cut")
    assert sorted(r[0] for r in db.query("SELECT path FROM request_log")) == ["/a", "/a-pa", "/b"]
    # the batch was bound again with the lengths just read, on the same connection: no
    # "insert failed", no reconnect, no backoff (it used to go back through all three)
    assert "insert failed" not in gw.log(), gw.log()
    time.sleep(1.5)  # the REJECTED summary and any late count
    assert dblog_stats(admin_port)["rejected"] == 1


def test_refused_rows_are_said_once_per_error_number(procs):
    """MariaDB's message quotes the value for a bad DATETIME (1292), so each refused row had a
    cause of its own and got its own ERROR line however many came: the limit now keys on the
    error number. Three records with three impossible dates: three rejected, one line."""
    db = MariaDB(procs)
    a = procs.backend("pod-a")
    base = {"time": "2026-11-25T22:01:05.519213Z", "request_id": "r", "client": "127.0.0.1:1",
            "proto": "h2c", "method": "GET", "host": "h", "path": "/p", "app": "digits",
            "env": "production", "service": "svc-a", "pod": "127.0.0.1:2", "features": None,
            "features_hash": None, "status": 200, "req_bytes": 0, "resp_bytes": 1,
            "fallback": False, "retries": 0, "upstream_us": 1, "total_us": 2, "error": None}
    recs = [dict(base, id="%032x" % (0xbad0 + i), time="2026-02-%02dT00:00:00.000000Z" % d)
            for i, d in enumerate((30, 31, 32))]
    recs += [dict(base, id="%032x" % (0x900d + i)) for i in range(2)]
    spool = os.path.join(procs.dir, "gateway", "spool")
    os.makedirs(spool)
    with open(os.path.join(spool, "%020d.spool" % 1), "w") as f:
        f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs))
    admin_port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf=dict(dblog_conf(db), admin={"listen": "127.0.0.1:%d" % admin_port}))
    wait_for(lambda: table_exists(db) and rows(db) == 2, 30, 0.1, "the 2 good records")
    wait_for(lambda: dblog_stats(admin_port)["rejected"] == 3, 10, 0.1, "3 rejected")
    assert gw.log().count("MariaDB refused a record") == 1, gw.log()
    assert "(error 1292)" in gw.log()
