"""
The access log (one JSON line per request, with routing, sizes, timings and errors), its reopen
on SIGUSR1 for rotation, and --check-config on good and bad configurations.
"""

import json
import os
import re
import signal
import subprocess

import httpx
import pytest

from conftest import (DOMAIN, GATEWAY_BIN, HOST, PYTHON, H1Conn, free_port, h1, read_jsonl,
                      routes_doc, wait_for)

KEYS = {"time", "id", "request_id", "client", "proto", "method", "host", "path", "app", "env", "service",
        "pod", "status", "req_bytes", "resp_bytes", "upstream_us", "total_us", "error"}


@pytest.fixture
def logged(procs):
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a], "svc-dead": ["127.0.0.1:%d" % free_port()]},
                                  [("digits", "production", "svc-a"),
                                   ("digits", "staging", "svc-dead")]),
                       conf={"request_id_in_response": True})  # ties answers to log lines
    return gw, a


def by_id(lines):
    out = {}
    for ln in lines:
        assert KEYS <= set(ln), "missing keys %s in %r" % (KEYS - set(ln), ln)
        out[ln["request_id"]] = ln
    return out


def test_one_line_per_request(logged):
    gw, a = logged
    expected = []  # (request_id, proto, method, path, req_bytes, resp_bytes)
    with gw.h2() as c:
        for i in range(3):
            r = c.get("/log/h2c/%d" % i)
            expected.append((r.headers["x-request-id"], "h2c", "GET", "/log/h2c/%d" % i, 0,
                             r.body_len))
    with gw.h2(tls=True) as c:
        for i in range(2):
            r = c.request("POST", "/log/h2/%d" % i, body=b"p" * 1234)
            expected.append((r.headers["x-request-id"], "h2", "POST", "/log/h2/%d" % i, 1234,
                             r.body_len))
    for i in range(2):
        r = h1(gw, "PUT", "/log/h1/%d" % i, body=b"q" * 777)
        expected.append((r.headers["x-request-id"], "http/1.1", "PUT", "/log/h1/%d" % i, 777,
                         len(r.body)))
    with httpx.Client(verify=gw.procs.tls["ca"], timeout=10) as hc:
        r = hc.get("https://127.0.0.1:%d/log/h1tls" % gw.tls_port,
                   headers={"host": gw.authority(tls=True)})
        expected.append((r.headers["x-request-id"], "http/1.1", "GET", "/log/h1tls", 0,
                         len(r.content)))
    n = len(expected)
    lines = gw.wait_access(n)
    assert len(lines) == n, "%d requests, %d log lines" % (n, len(lines))
    ids = by_id(lines)
    for rid, proto, method, path, req_bytes, resp_bytes in expected:
        ln = ids.get(rid)
        assert ln is not None, "no line for request %s (%s)" % (rid, path)
        assert (ln["proto"], ln["method"], ln["path"]) == (proto, method, path), ln
        assert ln["status"] == 200, ln
        assert (ln["app"], ln["env"], ln["service"]) == ("digits", "production", "svc-a"), ln
        assert ln["pod"] == a.addr, ln
        assert ln["req_bytes"] == req_bytes and ln["resp_bytes"] == resp_bytes, ln
        assert ln["host"].split(":")[0] == HOST, ln
        assert ln["client"].startswith("127.0.0.1"), ln
        assert ln["error"] in (None, ""), ln
        assert isinstance(ln["upstream_us"], int) and ln["upstream_us"] >= 0, ln
        assert isinstance(ln["total_us"], int) and ln["total_us"] >= ln["upstream_us"], ln
        assert ln["time"], ln


def test_error_lines(logged):
    """Answers the gateway writes itself log their body's bytes as resp_bytes (it said 0:
    traffic summed from the log missed every error body)."""
    gw, _ = logged
    with gw.h2() as c:
        r502 = c.get("/down", authority=gw.authority("digits-staging." + DOMAIN))
        assert r502.status == 502
        r404 = c.get("/nowhere", authority="nosuch-production." + DOMAIN)
        assert r404.status == 404
    r404h1 = h1(gw, "GET", "/nowhere-h1", host="nosuch-production." + DOMAIN)
    assert r404h1.status == 404
    ids = by_id(gw.wait_access(3))
    ln = ids[r502.headers.get("x-request-id") or r502.json()["error"]["request_id"]]
    assert ln["status"] == 502, ln
    assert isinstance(ln["error"], str) and ln["error"], ln
    assert (ln["app"], ln["env"], ln["service"]) == ("digits", "staging", "svc-dead"), ln
    assert ln["resp_bytes"] == r502.body_len > 0, ln
    ln = ids[r404.headers.get("x-request-id") or r404.json()["error"]["request_id"]]
    assert ln["status"] == 404 and ln["path"] == "/nowhere", ln
    assert ln["service"] in (None, ""), ln
    assert ln["resp_bytes"] == r404.body_len > 0, ln
    ln = ids[r404h1.json()["error"]["request_id"]]
    assert ln["status"] == 404 and ln["resp_bytes"] == len(r404h1.body) > 0, ln

    # requests refused before they were read whole (logged before their answer is written:
    # they logged 0)
    refused = []
    for raw in (b"GET /no-host HTTP/1.1\r\n\r\n",
                b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n",
                b"GET /bad HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"):
        with H1Conn(gw.port) as conn:
            conn.send(raw)
            refused.append(conn.read_response())
    ids = by_id(gw.wait_access(6))
    for r in refused:
        assert r.status in (400, 431), r.status
        ln = ids[r.json()["error"]["request_id"]]
        assert ln["status"] == r.status and ln["resp_bytes"] == len(r.body) > 0, ln


def test_http11_requests_refused_in_their_fields_are_logged_with_their_method(logged):
    """A request refused while its fields are read (two Content-Lengths, two Hosts, a coding
    other than chunked) had "method": "" in its line, although its request line was read."""
    gw, _ = logged
    host = gw.authority().encode()
    for head, status in [(b"PUT /m1 HTTP/1.1\r\nHost: %s\r\nContent-Length: 1\r\n"
                          b"Content-Length: 1\r\n\r\nx", 400),
                         (b"DELETE /m2 HTTP/1.1\r\nHost: %s\r\nHost: b\r\n\r\n", 400),
                         (b"PATCH /m3 HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: gzip\r\n\r\n",
                          501)]:
        with H1Conn(gw.port) as c:
            c.send(head % host if b"%s" in head else head)
            assert c.read_response().status == status
    lines = {ln["path"]: ln for ln in gw.wait_access(3)}
    for path, method, status in [("/m1", "PUT", 400), ("/m2", "DELETE", 400),
                                 ("/m3", "PATCH", 501)]:
        assert (lines[path]["method"], lines[path]["status"]) == (method, status), lines[path]


def test_http11_requests_refused_in_their_request_line_log_what_was_read(logged):
    """A request line that breaks off ("GET /\\x01", a control byte in the target; "GARBAGE",
    no request line at all) was logged with "method", "host" and "path" as "", and stored as ''
    in MariaDB. What was read is logged (the method, once its name ended), the rest is null,
    as for every unknown value."""
    gw, _ = logged
    for head in (b"GET /\x01\xff HTTP/1.1\r\nHost: x\r\n\r\n", b"GARBAGE\r\n\r\n"):
        with H1Conn(gw.port) as c:
            c.send(head)
            assert c.read_response().status == 400
    lines = [ln for ln in gw.wait_access(2) if ln["status"] == 400][-2:]
    assert [(ln["method"], ln["host"], ln["path"]) for ln in lines] == [
        ("GET", None, None), (None, None, None)], lines


def test_sigusr1_reopens_log(logged):
    gw, _ = logged
    with gw.h2() as c:
        for i in range(3):
            assert c.get("/before-rotate/%d" % i).status == 200
        gw.wait_access(3)
        rotated = gw.access_log + ".1"
        os.rename(gw.access_log, rotated)
        gw.signal(signal.SIGUSR1)
        # the writer reopens after its next batch: a line or two may still land in the old file
        n = [0]

        def new_file_has_lines():
            n[0] += 1
            assert n[0] < 200, "no new access.log after 200 requests"
            c.get("/rotating/%d" % n[0])
            return os.path.exists(gw.access_log) and read_jsonl(gw.access_log)
        wait_for(new_file_has_lines, 5, interval=0.05, what="a new access.log after SIGUSR1")
        for i in range(5):
            assert c.get("/after-rotate/%d" % i).status == 200
    wait_for(lambda: sum(1 for ln in read_jsonl(gw.access_log)
                         if ln["path"].startswith("/after-rotate/")) == 5, 5,
             what="the 5 requests after rotation in the new file")
    old = read_jsonl(rotated)
    assert [ln["path"] for ln in old[:3]] == ["/before-rotate/%d" % i for i in range(3)]
    assert not [ln for ln in old if ln["path"].startswith("/after-rotate/")]
    total = len(old) + len(read_jsonl(gw.access_log))
    assert total == 3 + n[0] + 5, "lines lost or doubled over the rotation: %d" % total
    gw.assert_alive()


# --- --check-config -----------------------------------------------------------------------------


def check_config(path):
    if not os.access(GATEWAY_BIN, os.X_OK):
        pytest.fail("gateway binary not found: %s" % GATEWAY_BIN)
    r = subprocess.run([GATEWAY_BIN, "--check-config", path], capture_output=True, text=True,
                       timeout=20)
    return r.returncode, r.stdout + r.stderr


def write(d, name, doc):
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return p


GOOD_ROUTES = routes_doc({"svc": ["127.0.0.1:9"]}, [("digits", "production", "svc")])


def good_conf(**over):
    c = {"listen": ["127.0.0.1:%d" % free_port()], "workers": 1, "routes": "routes.json",
         "access_log": "access.log", "log_level": "info",
         "limits": {"max_concurrent_streams": 1000, "max_request_body": 0},
         "timeouts_ms": {"connect": 1000, "first_byte": 5000, "drain": 1000}}
    c.update(over)
    return c


def jpath(*parts):
    """A regex for a JSON path: a.b[0].c, also written a.b.0.c or $.a.b[0].c."""
    rx = ""
    for p in parts:
        if isinstance(p, int):
            rx += r"(\[%d\]|\.%d)" % (p, p)
        else:
            rx += (r"\.?" if rx else r"(\$\.)?") + re.escape(p)
    return rx


def test_check_config_good(tmp_path):
    d = str(tmp_path)
    write(d, "routes.json", GOOD_ROUTES)
    rc, out = check_config(write(d, "gateway.json", good_conf()))
    assert rc == 0, out


def test_check_config_bad_gateway_json(tmp_path):
    d = str(tmp_path)
    write(d, "routes.json", GOOD_ROUTES)
    conf = good_conf(workers="many")
    conf["limits"]["max_concurrent_streams"] = -5
    conf["timeouts_ms"]["connect"] = "soon"
    rc, out = check_config(write(d, "gateway.json", conf))
    assert rc == 1, out
    for path in (("workers",), ("limits", "max_concurrent_streams"), ("timeouts_ms", "connect")):
        assert re.search(jpath(*path), out), "no problem reported at %s:\n%s" % (
            ".".join(path), out)
    assert "gateway.json" in out, out


def test_check_config_bad_routes(tmp_path):
    d = str(tmp_path)
    doc = routes_doc({"svc": ["127.0.0.1:9"], "svc2": ([], "h2c")},
                     [("digits", "production", "nosuchservice")])
    doc["services"]["svc"]["protocol"] = "carrier-pigeon"
    write(d, "routes.json", doc)
    rc, out = check_config(write(d, "gateway.json", good_conf()))
    assert rc == 1, out
    assert re.search(jpath("routes", 0, "service"), out), out
    assert re.search(jpath("services", "svc", "protocol"), out), out
    assert re.search(jpath("services", "svc2", "pods"), out), out
    assert "routes.json" in out, out


def test_check_config_loads_certificate_and_secret_files(tmp_path, tls_material):
    """--check-config refuses what start-up would refuse before binding: a certificate or key
    that does not load, a token or password file that is not one line, a ticket key file of the
    wrong size (each named); with good files it passes."""
    d = str(tmp_path)
    write(d, "routes.json", GOOD_ROUTES)
    write(d, "garbage.pem", "not a certificate\n")
    write(d, "admin.token", "t0ken with-space\n")
    write(d, "db.password", "first\nsecond\n")
    with open(os.path.join(d, "ticket.keys"), "wb") as f:
        f.write(b"k" * 81)
    conf = good_conf(tls={"listen": ["127.0.0.1:%d" % free_port()],
                          "cert": os.path.join(d, "garbage.pem"), "key": tls_material["key"],
                          "ticket_key_file": "ticket.keys"},
                     admin={"listen": "127.0.0.1:%d" % free_port(), "token_file": "admin.token"},
                     request_log_db={"host": "127.0.0.1", "user": "u", "database": "modelgate",
                                     "password_file": "db.password", "spool_dir": "spool"})
    rc, out = check_config(write(d, "gateway.json", conf))
    assert rc == 1, out
    for what in ("garbage.pem", "admin.token_file", "request_log_db.password_file",
                 "tls.ticket_key_file"):
        assert what in out, "%s not named:\n%s" % (what, out)
    assert "first" not in out and "t0ken" not in out, "a secret was printed:\n%s" % out
    conf["tls"]["cert"] = tls_material["cert"]
    write(d, "admin.token", "t0ken\n")
    write(d, "db.password", "pass word\r\n")
    with open(os.path.join(d, "ticket.keys"), "wb") as f:
        f.write(os.urandom(160))
    rc, out = check_config(write(d, "gateway.json", conf))
    assert rc == 0, out


def test_check_config_json_syntax(tmp_path):
    d = str(tmp_path)
    write(d, "routes.json", GOOD_ROUTES)
    p = write(d, "gateway.json", '{"listen": ["127.0.0.1:1"],\n "workers": 2,,\n}')
    rc, out = check_config(p)
    assert rc == 1, out
    assert "gateway.json" in out and re.search(r"(:2:|line 2\b)", out), out


def test_completed_requests_not_logged_as_aborted(logged):
    """A client that closes its connection right after reading a whole response did not abort
    anything: 200, full resp_bytes, error null."""
    gw, _ = logged
    n = 0
    for tls in (False, True):
        for i in range(100):
            r = h1(gw, "GET", "/done/%s/%d" % ("tls" if tls else "clear", i), tls=tls)
            assert r.status == 200
            n += 1
    with gw.h2(tls=True) as c:
        for i in range(20):
            assert c.get("/done/h2/%d" % i).status == 200
            n += 1
    lines = gw.wait_access(n)
    bad = [ln for ln in lines if ln["error"] not in (None, "")]
    assert not bad, "%d of %d completed requests logged with an error, e.g. %r" % (
        len(bad), n, bad[:3])


def test_check_config_missing_routes_file(tmp_path):
    d = str(tmp_path)
    rc, out = check_config(write(d, "gateway.json", good_conf(routes="nosuch-routes.json")))
    assert rc == 1, out
    assert "nosuch-routes.json" in out, out


def test_sigterm_with_a_blocked_access_log(procs):
    """An access log that takes no more lines (a pipe nobody reads: a stalled log collector)
    does not hold SIGTERM back: the gateway exits 0 a second after its drain, saying what it
    could not write, instead of waiting in write(2) for ever."""
    import fcntl
    import time
    a = procs.backend("pod-a")
    gdir = os.path.join(procs.dir, "gateway")
    os.makedirs(gdir, exist_ok=True)
    fifo = os.path.join(gdir, "access.fifo")
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, so the gateway's open succeeds
    fcntl.fcntl(rfd, fcntl.F_SETPIPE_SZ, 4096)
    try:
        gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                           conf={"access_log": "access.fifo", "timeouts_ms": {"drain": 1000}})
        with httpx.Client(base_url="http://127.0.0.1:%d" % gw.port,
                          headers={"host": gw.authority()}, timeout=10) as c:
            for i in range(200):
                assert c.get("/blocked/%d" % i).status_code == 200
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        rc = gw.proc.wait(15)
        took = time.monotonic() - t0
    finally:
        os.close(rfd)
    assert rc == 0 and took < 4.0, "exit code %s after %.1f s" % (rc, took)
    assert "takes no more lines" in gw.log()
    print("SIGTERM with the access log blocked: exit 0 after %.1f s" % took)


def test_access_log_at_its_size_limit_keeps_whole_lines(procs, tmp_path):
    """A write that fails part way through a line (a full disk; here the file size limit of
    `ulimit -f`) left the piece at the end of the file, and the next record that went in was
    glued to it: two lines that were not JSON. The piece is cut off: every line of the file is
    a whole record, and the ones that did not go in are counted in
    modelgate_access_log_lost_total (the log's threads block SIGXFSZ: the limit is a write
    error like the others)."""
    wrapper = tmp_path / "limited.py"  # the gateway with a 32 KiB file size limit
    wrapper.write_text("import os, resource, signal, sys\n"
                       "resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))\n"
                       "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"  # as from a shell
                       "os.execv(%r, [%r] + sys.argv[1:])\n" % (GATEWAY_BIN, GATEWAY_BIN))
    launcher = tmp_path / "limited"
    launcher.write_text("#!/bin/sh\nexec %s %s \"$@\"\n" % (PYTHON, wrapper))
    launcher.chmod(0o755)
    admin = free_port()
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"admin": {"listen": "127.0.0.1:%d" % admin}}, tls=False,
                       binary=str(launcher))
    n = 300
    with httpx.Client(base_url="http://127.0.0.1:%d" % gw.port,
                      headers={"host": gw.authority()}, timeout=10) as c:
        for i in range(n):
            assert c.get("/limited/%d" % i).status_code == 200

    def lost():
        m = re.search(r"^modelgate_access_log_lost_total (\d+)$",
                      httpx.get("http://127.0.0.1:%d/metrics" % admin).text, re.M)
        return int(m.group(1))
    wait_for(lambda: lost() > 0 and len(open(gw.access_log, "rb").read().split(b"\n")) - 1 +
             lost() == n, 10, what="every record written or counted lost")
    raw = open(gw.access_log, "rb").read()
    assert 0 < len(raw) <= 32768 and raw.endswith(b"\n"), raw[-200:]
    lines = raw.split(b"\n")[:-1]
    for ln in lines:
        json.loads(ln)  # a whole record each, nothing glued
    assert [json.loads(ln)["path"] for ln in lines] == ["/limited/%d" % i
                                                        for i in range(len(lines))]
    gw.assert_alive()
