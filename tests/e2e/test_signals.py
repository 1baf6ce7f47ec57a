"""
Signals: SIGHUP reloads the routing document under load without failing a request (and a broken
document is refused, logged, and the previous one stays), and a renewed TLS certificate (open
connections go on, sessions resume, a bad pair is refused); SIGTERM drains: listeners close,
HTTP/2 clients get GOAWAY, in-flight requests finish, exit 0 within timeouts_ms.drain.
"""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import types

from conftest import (DOMAIN, HOST, H1Conn, free_port, h1_request_bytes, port_open,
                      refused_start, routes_doc, wait_for)

LOAD_SECONDS = 8.0  # upper bound of the load phase; it stops earlier when the checks are done
MAX_REQUESTS_PER_CLIENT = 20000


class Load:
    """Clients sending requests back to back until stopped (bounded in time and count):
    one HTTP/2 connection, one HTTP/1.1 keep-alive connection, and a new HTTP/1.1 connection
    per request. Each result: (kind, started, status or error string, pod)."""

    def __init__(self, gw):
        self.gw = gw
        self.results = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.deadline = time.monotonic() + LOAD_SECONDS
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self.h2_loop, self.h1_keepalive_loop, self.h1_new_conn_loop)]

    def running(self, n):
        return not self.stop_ev.is_set() and time.monotonic() < self.deadline and \
            n < MAX_REQUESTS_PER_CLIENT

    def record(self, kind, t0, status, pod):
        with self.lock:
            self.results.append((kind, t0, status, pod, time.monotonic()))

    def h2_loop(self):
        try:
            c = self.gw.h2()
        except OSError as e:
            self.record("h2", time.monotonic(), "connect: %s" % e, None)
            return
        with c:
            n = 0
            while self.running(n):
                n += 1
                t0 = time.monotonic()
                try:
                    r = c.get("/load/h2/%d" % n, timeout=5)
                    pod = r.json().get("pod") if r.status == 200 else None
                    self.record("h2", t0, r.status if r.ended else "cut: %r" % r, pod)
                except Exception as e:  # noqa: BLE001 - recorded as a failure
                    self.record("h2", t0, "error: %r" % e, None)
                    return

    def h1_keepalive_loop(self):
        n = 0
        c = None
        while self.running(n):
            n += 1
            t0 = time.monotonic()
            try:
                if c is None:
                    c = H1Conn(self.gw.port, timeout=5)
                c.send(h1_request_bytes("GET", "/load/h1ka/%d" % n, self.gw.authority()))
                r = c.read_response()
                self.record("h1-keepalive", t0, r.status,
                            r.json().get("pod") if r.status == 200 else None)
                if "close" in r.headers.get("connection", "").lower():
                    c.close()
                    c = None
            except Exception as e:  # noqa: BLE001
                self.record("h1-keepalive", t0, "error: %r" % e, None)
                return
        if c is not None:
            c.close()

    def h1_new_conn_loop(self):
        n = 0
        while self.running(n):
            n += 1
            t0 = time.monotonic()
            try:
                with H1Conn(self.gw.port, timeout=5) as c:
                    c.send(h1_request_bytes("GET", "/load/h1/%d" % n, self.gw.authority(),
                                            headers=[("Connection", "close")]))
                    r = c.read_response()
                self.record("h1-new", t0, r.status,
                            r.json().get("pod") if r.status == 200 else None)
            except Exception as e:  # noqa: BLE001
                self.record("h1-new", t0, "error: %r" % e, None)
                return

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def count_since(self, t, kind=None):
        return sum(1 for r in self.snapshot() if r[1] >= t and (kind is None or r[0] == kind))


def test_sighup_reload_under_load(procs):
    a = procs.backend("pod-a")
    b = procs.backend("pod-b")
    doc_a = routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")])
    doc_b = routes_doc({"svc-b": [b]}, [("digits", "production", "svc-b")])
    gw = procs.gateway(doc_a)
    load = Load(gw)
    load.start()
    try:
        t_begin = time.monotonic()
        for kind in ("h2", "h1-keepalive", "h1-new"):
            wait_for(lambda: load.count_since(t_begin, kind) >= 5, 5, what="load (%s)" % kind)

        # a request in flight across the reload, on the old routes
        slow_result = {}

        def slow():
            with gw.h2() as c:
                r = c.get("/slow?ms=1000", timeout=10)
                slow_result["r"] = r

        ts = threading.Thread(target=slow, daemon=True)
        ts.start()
        wait_for(lambda: any(p == "/slow?ms=1000" for _, _, p in a.requests()), 5,
                 what="the slow request to reach pod-a")

        gw.write_routes(doc_b)
        t_hup = time.monotonic()
        gw.signal(signal.SIGHUP)
        wait_for(lambda: any(r[3] == "pod-b" for r in load.snapshot()), 5,
                 what="a request to reach pod-b after SIGHUP")
        ts.join(10)
        r = slow_result.get("r")
        assert r is not None and r.status == 200 and r.ended, r
        assert r.json()["pod"] == "pod-a"

        # settle, then every new request must go to pod-b, on every kind of connection
        t_settled = time.monotonic() + 0.5
        for kind in ("h2", "h1-keepalive", "h1-new"):
            wait_for(lambda: load.count_since(t_settled, kind) >= 5, 5,
                     what="load after reload (%s)" % kind)

        # a broken document: refused, logged, the previous routes stay
        log_before = len(gw.log())
        gw.write_routes('{"domain": "modelgate.local", "services": {')
        t_bad = time.monotonic()
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "routes.json" in gw.log()[log_before:], 5,
                 what="the gateway to log the refused routes.json")
        # the reason on the line with the time and the level, not on a line of its own
        assert re.search(r"\d{4}-\d\d-\d\dT[0-9:.]+Z error main: reload refused, the "
                         r"previous routes stay in force: \S*routes\.json:",
                         gw.log()[log_before:]), gw.log()[log_before:]
        for kind in ("h2", "h1-keepalive", "h1-new"):
            wait_for(lambda: load.count_since(t_bad + 0.5, kind) >= 5, 5,
                     what="load after the bad reload (%s)" % kind)
    finally:
        load.stop()

    res = load.snapshot()
    failed = [r for r in res if r[2] != 200]
    by_kind = {k: sum(1 for r in res if r[0] == k) for k in ("h2", "h1-keepalive", "h1-new")}
    print("requests during reload:", len(res), by_kind, "failed:", len(failed))
    assert not failed, "failed requests during reload: %r" % failed[:10]
    late = [r for r in res if r[1] >= t_settled and r[3] != "pod-b"]
    assert not late, "requests after the reload not on pod-b: %r" % late[:10]
    # a request that started before SIGHUP may be routed after it; one that had its answer
    # before SIGHUP cannot have seen the new routes
    assert [r for r in res if r[4] < t_hup and r[3] == "pod-b"] == []
    new_log = gw.log()[log_before:]
    assert re.search(r"error|warn|invalid|refus|fail", new_log, re.I), new_log
    gw.assert_alive()

    # reload still works after a refused one
    gw.write_routes(doc_a)
    gw.signal(signal.SIGHUP)

    def on_a():
        with gw.h2() as c:
            return c.get("/back").json()["pod"] == "pod-a"
    wait_for(on_a, 5, interval=0.1, what="a good reload after a refused one")


def test_sigterm_drain(procs):
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc": [a]}, [("digits", "production", "svc")]),
                       conf={"timeouts_ms": {"drain": 5000}})
    c = gw.h2()
    h1c = H1Conn(gw.port)
    st = c.start("GET", "/slow?ms=1500")
    h1c.send(h1_request_bytes("GET", "/slow?ms=1500", gw.authority()))
    wait_for(lambda: sum(1 for r in a.requests() if r[2] == "/slow?ms=1500") == 2, 5,
             what="both slow requests to reach the backend")
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    wait_for(lambda: not port_open(gw.port) and not port_open(gw.tls_port), 2,
             what="the listeners to close after SIGTERM")
    assert c.wait(st, 5), st
    assert st.status == 200 and st.ended, st
    assert st.json()["pod"] == "pod-a"
    assert c.goaway is not None, "no GOAWAY on the HTTP/2 connection"
    assert c.goaway[0] == 0, "GOAWAY error code %d" % c.goaway[0]
    r = h1c.read_response()
    assert r.status == 200 and r.json()["path"] == "/slow?ms=1500"
    rc = gw.proc.wait(6.5 - (time.monotonic() - t0))
    took = time.monotonic() - t0
    print("gateway exited %s after %.2fs" % (rc, took))
    assert rc == 0, "gateway exit code %r after SIGTERM" % rc
    assert took >= 1.0  # it did wait for the in-flight requests
    c.close()
    h1c.close()


def test_sigterm_drain_deadline(procs):
    """A request longer than the drain timeout does not keep the gateway alive. It is logged
    with error "shutdown": the gateway cut it (it said client_aborted, blaming the client)."""
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc": [a]}, [("digits", "production", "svc")]),
                       conf={"timeouts_ms": {"drain": 1000}})
    c = gw.h2()
    st = c.start("GET", "/slow?ms=20000")
    wait_for(lambda: any(r[2] == "/slow?ms=20000" for r in a.requests()), 5,
             what="the slow request to reach the backend")
    t0 = time.monotonic()
    gw.signal(signal.SIGTERM)
    rc = gw.proc.wait(4.0)
    took = time.monotonic() - t0
    print("gateway exited %s after %.2fs" % (rc, took))
    assert rc == 0, "gateway exit code %r (None: still running 4 s after SIGTERM)" % rc
    assert 0.8 <= took < 3.5, took
    c.wait(st, 2)
    assert not st.ended, "a 20 s request cannot have finished: %r" % st
    c.close()
    recs = [r for r in gw.access() if r["path"] == "/slow?ms=20000"]
    assert len(recs) == 1 and recs[0]["error"] == "shutdown", recs


def test_sigterm_drain_finishes_slow_downloads(procs):
    """Downloads still running at SIGTERM arrive whole, over h2c and TLS. Their last stream
    ends while megabytes wait in the kernel's send queue and the client is still sending
    WINDOW_UPDATEs: closing the socket then would reset it and throw that tail away (curl:
    "Recv failure: Connection reset by peer" at 17 of 20 MB); the gateway lingers instead."""
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc": [a]}, [("digits", "production", "svc")]),
                       conf={"workers": 1, "timeouts_ms": {"drain": 10000}})
    size = 20000000
    clients = []  # three downloads each way: any one losing its tail fails the test
    for tls, k in [(False, k) for k in range(3)] + [(True, k) for k in range(3)]:
        port = gw.tls_port if tls else gw.port
        out = os.path.join(gw.procs.dir, "download-%s-%d" % ("tls" if tls else "h2c", k))
        argv = ["curl", "-sS", "--max-time", "20", "--limit-rate", "4M", "-o", out,
                "--resolve", "%s:%d:127.0.0.1" % (HOST, port)]
        argv += ["--http2", "--cacert", gw.procs.tls["ca"]] if tls else ["--http2-prior-knowledge"]
        argv.append("%s://%s:%d/bytes?n=%d" % ("https" if tls else "http", HOST, port, size))
        clients.append((out, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)))
    wait_for(lambda: all(os.path.exists(o) and os.path.getsize(o) > 2000000 for o, _ in clients),
             10, what="the downloads to be under way")
    gw.signal(signal.SIGTERM)
    for out, p in clients:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, "curl exited %d: %s" % (p.returncode, err)
        assert os.path.getsize(out) == size, (out, os.path.getsize(out))
    assert gw.proc.wait(10) == 0


def _issue_cert(tls, d, cn, days=2):
    """A key and a certificate for |cn| (SAN localhost, 127.0.0.1) signed by the tests' CA,
    valid |days| days."""
    ca_dir = os.path.dirname(tls["ca"])
    key, csr, pem = (os.path.join(d, cn + ext) for ext in (".key", ".csr", ".pem"))
    for argv in (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                  key],
                 ["req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", csr],
                 ["x509", "-req", "-in", csr, "-CA", tls["ca"], "-CAkey",
                  os.path.join(ca_dir, "ca.key"), "-CAcreateserial", "-days", str(days), "-extfile",
                  os.path.join(ca_dir, "ext.cnf"), "-out", pem]):
        subprocess.run(["openssl"] + argv, check=True, capture_output=True)
    return pem, key


def _install(src, dst):
    tmp = dst + ".new"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dst)


def _live_pair(procs, d):
    """Files live.pem and live.key in |d| holding a certificate for "first", and the key and
    certificate of a renewed one ("renewed") to install later: (cert, key, renewed)."""
    cert, key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")
    first = _issue_cert(procs.tls, d, "first")
    renewed = _issue_cert(procs.tls, d, "renewed")
    _install(first[0], cert)
    _install(first[1], key)
    return cert, key, renewed


def _tls_client(gw):
    ctx = ssl.create_default_context(cafile=gw.procs.tls["ca"])
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _tls_hello(gw, ctx=None, session=None):
    """One TLS connection to |gw| (ALPN h2, verified against the tests' CA): the certificate's
    CN, whether |session| was resumed, and the session to resume next time. A session resumes
    only with the |ctx| it came from."""
    ctx = ctx or _tls_client(gw)
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            s.recv(4096)  # the server's SETTINGS; TLS 1.3 tickets come before it
            cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
            return cn, s.session_reused, s.session


RELOADED = r"routing document \S+ reloaded"


def test_sighup_reloads_the_tls_certificate(procs, tmp_path):
    """A renewed certificate goes live on SIGHUP: new connections get it, open ones go on, and
    sessions resume across the reload (the ticket keys stay). A key that does not match is
    refused with the reason, the previous certificate stays, and the routes still reload."""
    a = procs.backend("pod-a")
    d = str(tmp_path)
    cert, key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")
    first = _issue_cert(procs.tls, d, "first")
    renewed = _issue_cert(procs.tls, d, "renewed")
    other = _issue_cert(procs.tls, d, "other")
    _install(first[0], cert)
    _install(first[1], key)
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"tls": {"cert": cert, "key": key}})
    assert re.search(r"TLS certificate from .*live\.pem: CN = first, valid until", gw.log())
    client = _tls_client(gw)
    cn, _, session = _tls_hello(gw, client)
    assert cn == "first"
    with gw.h2(tls=True) as before:
        assert before.get("/one").status == 200

        _install(renewed[0], cert)
        _install(renewed[1], key)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "CN = renewed" in gw.log(), 5, what="the reload's log line")
        wait_for(lambda: _tls_hello(gw)[0] == "renewed", 5, what="the renewed certificate")
        assert _tls_hello(gw, client, session)[1], "a session from before the reload resumes"
        assert before.get("/two").status == 200, "a connection from before the reload goes on"

        # unchanged files: no new context (and no second line)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: len(re.findall(RELOADED, gw.log())) == 2, 5, what="the second reload")
        assert gw.log().count("CN = renewed") == 1

        _install(other[1], key)  # the renewed certificate with another key
        gw.write_routes(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a"),
                                                     ("digits", "staging", "svc-a")]))
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "TLS reload refused" in gw.log(), 5, what="the refusal")
        assert re.search(r"TLS reload refused, the previous certificate stays: TLS key "
                         r"'.*live\.key': not the key of the certificate", gw.log())
        wait_for(lambda: len(re.findall(RELOADED, gw.log())) == 3, 5, what="the routes reload")
        assert _tls_hello(gw)[0] == "renewed"
        with gw.h2(host="digits-staging." + DOMAIN, tls=True) as c:
            assert c.get("/three").status == 200, "the routes were reloaded all the same"
        assert before.get("/four").status == 200
    gw.assert_alive()


def test_renewed_tls_certificate_is_taken_without_sighup(procs, tmp_path):
    """A certificate renewed in place (a Kubernetes Secret volume, certbot) is taken within
    tls.reload_check_ms, with no SIGHUP; unchanged files make no new context, and a pair that
    does not load, or a key file gone, is said once, not at every check."""
    a = procs.backend("pod-a")
    d = str(tmp_path)
    cert, key, renewed = _live_pair(procs, d)
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"tls": {"cert": cert, "key": key, "reload_check_ms": 200}})
    assert _tls_hello(gw)[0] == "first"
    time.sleep(0.6)  # three checks of unchanged files
    assert "reloaded" not in gw.log()
    _install(renewed[1], key)
    _install(renewed[0], cert)
    wait_for(lambda: _tls_hello(gw)[0] == "renewed", 5, what="the renewed certificate")
    renewed_line = r"TLS certificate reloaded from \S+live\.pem: CN = renewed"
    reloads = lambda: len(re.findall(renewed_line, gw.log()))  # noqa: E731
    # (two, if a check read the files while they were being replaced)
    n = reloads()
    time.sleep(0.6)
    assert 1 <= n == reloads(), gw.log()
    # a pair that does not load: refused once, not at every check
    other = _issue_cert(procs.tls, d, "other")
    refusals = lambda: gw.log().count("TLS reload refused")  # noqa: E731
    before = refusals()  # (one, if a check came between the two installs above)
    _install(other[1], key)
    wait_for(lambda: refusals() > before, 5, what="the refusal")
    time.sleep(0.6)
    assert refusals() == before + 1, gw.log()
    assert _tls_hello(gw)[0] == "renewed"
    # files that cannot be read: said once too (the reason is the cause), not every check
    os.rename(key, key + ".away")
    wait_for(lambda: refusals() > before + 1, 5, what="the refusal of a missing key")
    time.sleep(0.6)
    assert refusals() == before + 2, gw.log()
    assert _tls_hello(gw)[0] == "renewed"


def test_tls_session_ticket_keys_rotate(procs):
    """tls.ticket_key_rotation_ms reaches the contexts: a ticket resumes within a period and
    not after two. Two things end it there, the session timeout (two periods) and the key
    rotation, and this test cannot tell them apart: unit tlstickets shows the rotation alone
    (a ticket of a dropped key does not resume). Before, sessions lasted OpenSSL's two hours
    and one key served for the life of the process."""
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"tls": {"ticket_key_rotation_ms": 1000}})
    client = _tls_client(gw)
    t0 = time.monotonic()
    _, _, session = _tls_hello(gw, client)
    assert _tls_hello(gw, client, session)[1], "a fresh ticket resumes"
    time.sleep(max(0.0, t0 + 2.3 - time.monotonic()))
    assert not _tls_hello(gw, client, session)[1], "a ticket two periods old still resumed"


def _metrics(port):
    """The admin listener's /metrics samples: {name{labels}: value}."""
    import httpx
    r = httpx.get("http://127.0.0.1:%d/metrics" % port, timeout=5)
    assert r.status_code == 200
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in r.text.splitlines() if line and not line.startswith("#")}


def _handshakes(m, result):
    return sum(v for k, v in m.items()
               if k.startswith("modelgate_worker_tls_handshakes_total{") and
               'result="%s"' % result in k)


def test_tls_handshakes_and_certificate_expiry_in_metrics(procs, tmp_path):
    """/metrics counts TLS handshakes per worker (full, resumed, failed: an error before the
    handshake ended, here a client speaking cleartext, or a handshake stalled until the idle
    timeout; the harness's port probes are none) and
    gives the certificate's end of validity, the one to alert on, which follows a reload."""
    a = procs.backend("pod-a")
    d = str(tmp_path)
    cert, key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")
    first = _issue_cert(procs.tls, d, "first", days=2)
    renewed = _issue_cert(procs.tls, d, "renewed", days=30)
    _install(first[0], cert)
    _install(first[1], key)
    admin = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"tls": {"cert": cert, "key": key},
                             "timeouts_ms": {"client_idle": 1000},
                             "admin": {"listen": "127.0.0.1:%d" % admin}})
    not_after = lambda pem: ssl.cert_time_to_seconds(  # noqa: E731
        ssl._ssl._test_decode_cert(pem)["notAfter"])
    m = _metrics(admin)
    assert m["modelgate_tls_certificate_expiry_timestamp_seconds"] == not_after(first[0])
    assert (_handshakes(m, "full"), _handshakes(m, "resumed"), _handshakes(m, "failed")) == \
        (0, 0, 0)
    client = _tls_client(gw)
    _, _, session = _tls_hello(gw, client)
    assert _tls_hello(gw, client, session)[1]
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
        s.recv(4096)
    wait_for(lambda: _handshakes(_metrics(admin), "failed") == 1, 5, what="the failed handshake")
    # a handshake that stalls (a ClientHello cut short) until timeouts_ms.client_idle fails too
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01")
        assert s.recv(4096) == b"", "a stalled handshake was not closed"
    wait_for(lambda: _handshakes(_metrics(admin), "failed") == 2, 5, what="the stalled handshake")
    m = _metrics(admin)
    assert (_handshakes(m, "full"), _handshakes(m, "resumed")) == (1, 1), m
    _install(renewed[1], key)
    _install(renewed[0], cert)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: _metrics(admin)["modelgate_tls_certificate_expiry_timestamp_seconds"] ==
             not_after(renewed[0]), 5, what="the renewed certificate's date")


def test_shared_ticket_key_file_resumes_across_gateways(procs, tmp_path):
    """Gateways that read the same tls.ticket_key_file (nginx's format: keys of 80 bytes, the
    first one encrypting) resume each other's sessions, as replicas behind one load balancer
    must. Whoever writes the file rotates the keys: a new key first and the old one after it
    keeps old tickets good; once the old key is dropped they are not. A file of the wrong size
    refuses the start with its size, and on a reload it leaves the keys in use."""
    a = procs.backend("pod-a")
    keys = os.path.join(str(tmp_path), "ticket.keys")
    old, new = os.urandom(80), os.urandom(80)
    with open(keys, "wb") as f:
        f.write(old)
    routes = routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")])
    conf = {"tls": {"ticket_key_file": keys, "reload_check_ms": 0}}
    one = procs.gateway(routes, conf=conf, name="one")
    two = procs.gateway(routes, conf=conf, name="two")
    alone = procs.gateway(routes, name="alone")  # keys of its own
    client = _tls_client(one)
    _, _, session = _tls_hello(one, client)
    assert _tls_hello(two, client, session)[1], "a ticket of one resumed on two"
    assert not _tls_hello(alone, client, session)[1]

    def rewrite(data):
        with open(keys + ".new", "wb") as f:
            f.write(data)
        os.replace(keys + ".new", keys)
        two.signal(signal.SIGHUP)

    rewrite(new + old)
    wait_for(lambda: "TLS session ticket keys reloaded" in two.log(), 5, what="the new keys")
    assert _tls_hello(two, client, session)[1], "the old key still decrypts"
    _, _, fresh = _tls_hello(two, client)  # a ticket under the new key
    assert not _tls_hello(one, client, fresh)[1], "one has not read the new keys"
    rewrite(new[:79])
    wait_for(lambda: "79 bytes" in two.log(), 5, what="the refusal")
    assert _tls_hello(two, client, session)[1], "a bad file leaves the keys in use"
    rewrite(new)
    wait_for(lambda: two.log().count("TLS session ticket keys reloaded") == 2, 5,
             what="the old key dropped")
    assert not _tls_hello(two, client, session)[1]
    assert _tls_hello(two, client, fresh)[1]

    bad = os.path.join(str(tmp_path), "bad.json")
    bad_conf = {"listen": ["127.0.0.1:%d" % free_port()],
                    "tls": {"listen": ["127.0.0.1:%d" % free_port()], "cert": procs.tls["cert"],
                            "key": procs.tls["key"], "ticket_key_file": keys + ".short"}}
    with open(keys + ".short", "wb") as f:
        f.write(os.urandom(100))
    with open(bad, "w") as f:
        json.dump(bad_conf, f)
    err = refused_start(bad, "a ticket key file of 100 bytes")
    assert 'tls.ticket_key_file: "%s.short" has 100 bytes (expected 1 to 4 keys of 80 bytes' \
        % keys in err, err


def test_quick_start_sighup_reloads_the_certificate(procs, tmp_path):
    """With --backend (no routing document) SIGHUP still reloads the certificate and key of
    --cert and --key, and says there is no routing document to reload."""
    a = procs.backend("pod-a")
    d = str(tmp_path)
    cert, key, renewed = _live_pair(procs, d)
    port, tls_port = free_port(), free_port()
    p = procs.gateway_cli(["--listen", "127.0.0.1:%d" % port, "--tls-listen",
                           "127.0.0.1:%d" % tls_port, "--cert", cert, "--key", key,
                           "--backend", a.addr, "--workers", "1"], [port, tls_port])

    gw = types.SimpleNamespace(procs=procs, tls_port=tls_port)  # what _tls_hello needs
    assert _tls_hello(gw)[0] == "first"
    _install(renewed[0], cert)
    _install(renewed[1], key)
    p.signal(signal.SIGHUP)
    wait_for(lambda: _tls_hello(gw)[0] == "renewed", 5, what="the renewed certificate")
    # the workers take the new context before the main thread's lines are written
    wait_for(lambda: ("no routing document to reload" in p.stderr() + p.stdout() and
                      "CN = renewed" in p.stderr() + p.stdout()), 5, what="the reload's lines")
