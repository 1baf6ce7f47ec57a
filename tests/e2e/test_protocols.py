"""
Protocols, header handling and host routing through the gateway, with real clients: curl (TLS h2
with ALPN, h2c prior knowledge, HTTP/1.1 cleartext and TLS), nghttp, httpx (HTTP/2 over TLS and
HTTP/1.1), a raw python h2 client, and raw HTTP/1.1 sockets (keep-alive, chunked, pipelining).
"""

import hashlib
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
import httpx
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from conftest import (DOMAIN, GATEWAY_BIN, HOST, H1Conn, curl, error_json, free_port, h1,
                      h1_request_bytes, read_jsonl, routes_doc, wait_for)
from h2client import H2Client
from rawpod import ThreadedPod

HOST_B = "fraud-detect-staging." + DOMAIN  # an app name with a dash


@pytest.fixture
def stack(procs):
    """pod-a behind digits-production (svc-a), pod-b behind fraud-detect-staging (svc-b)."""
    a = procs.backend("pod-a")
    b = procs.backend("pod-b")
    gw = procs.gateway(routes_doc({"svc-a": [a], "svc-b": [b]},
                                  [("digits", "production", "svc-a"),
                                   ("fraud-detect", "staging", "svc-b")]))
    return gw, a, b


def summary(body):
    doc = json.loads(body)
    assert "pod" in doc, doc
    return doc


# --- curl --------------------------------------------------------------------------------------


def test_curl_tls_h2_alpn(stack):
    gw, a, _ = stack
    status, version, hdrs, body = curl(gw, "/v1/predict?x=1", tls=True, mode="h2")
    assert (status, version) == (200, "2")
    doc = summary(body)
    assert doc["pod"] == "pod-a" and hdrs["x-pod"] == "pod-a"
    assert doc["path"] == "/v1/predict?x=1"
    assert doc["headers"]["x-forwarded-proto"] == "https"


def test_curl_h2c_prior_knowledge(stack):
    gw, _, _ = stack
    status, version, hdrs, body = curl(gw, "/hello", mode="h2c")
    assert (status, version) == (200, "2")
    doc = summary(body)
    assert doc["pod"] == "pod-a" and doc["method"] == "GET"
    assert doc["headers"]["x-forwarded-proto"] == "http"


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_curl_http11(stack, tls):
    gw, _, _ = stack
    status, version, hdrs, body = curl(gw, "/h1", tls=tls, mode="h1")
    assert (status, version) == (200, "1.1")
    doc = summary(body)
    assert doc["pod"] == "pod-a" and doc["path"] == "/h1"
    assert doc["headers"]["x-forwarded-proto"] == ("https" if tls else "http")


def test_curl_post_body_h2_and_h1(stack):
    gw, _, _ = stack
    path = os.path.join(gw.procs.dir, "upload.bin")
    data = os.urandom(3 * 1024 * 1024 + 17)
    with open(path, "wb") as f:
        f.write(data)
    for mode, tls in (("h2c", False), ("h2", True), ("h1", False)):
        status, _, _, body = curl(gw, "/upload", "--data-binary", "@" + path, tls=tls, mode=mode)
        assert status == 200
        doc = summary(body)
        assert doc["method"] == "POST"
        assert doc["body_len"] == len(data), mode
        assert doc["body_sha256"] == hashlib.sha256(data).hexdigest(), mode


# --- nghttp, httpx, python h2 -------------------------------------------------------------------


def test_nghttp_h2c(stack):
    gw, _, _ = stack
    r = subprocess.run(["nghttp", "-v", "-H", ":authority: " + gw.authority(),
                        "http://127.0.0.1:%d/nghttp" % gw.port],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ":status: 200" in r.stdout, r.stdout
    assert "x-pod: pod-a" in r.stdout, r.stdout
    body = r.stdout[r.stdout.index('{"pod"'):]
    doc = json.JSONDecoder().raw_decode(body)[0]
    assert doc["authority"] == gw.authority()
    assert doc["path"] == "/nghttp"


def test_httpx_h2_over_tls(stack):
    gw, _, _ = stack
    with httpx.Client(http2=True, verify=gw.procs.tls["ca"], timeout=10) as c:
        for i in range(3):
            r = c.post("https://127.0.0.1:%d/httpx/%d" % (gw.tls_port, i),
                       headers={"host": gw.authority(tls=True)}, content=b"z" * 1000)
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200
            doc = r.json()
            assert doc["pod"] == "pod-a" and doc["body_len"] == 1000
            assert doc["path"] == "/httpx/%d" % i


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_httpx_http1(stack, tls):
    gw, _, _ = stack
    port = gw.tls_port if tls else gw.port
    with httpx.Client(http2=False, verify=gw.procs.tls["ca"], timeout=10) as c:
        r = c.get("%s://127.0.0.1:%d/httpx1" % ("https" if tls else "http", port),
                  headers={"host": gw.authority(tls=tls)})
        assert r.http_version == "HTTP/1.1"
        assert r.status_code == 200
        assert r.json()["pod"] == "pod-a"
        assert r.headers["x-pod"] == "pod-a"


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2"])
def test_python_h2_client(stack, tls):
    gw, _, _ = stack
    with gw.h2(tls=tls) as c:
        for i in range(5):
            r = c.get("/raw/%d" % i)
            assert r.status == 200, r
            assert r.json()["path"] == "/raw/%d" % i
            assert r.headers["x-pod"] == "pod-a"


# --- HTTP/1.1 on raw sockets --------------------------------------------------------------------


def test_http11_keepalive_two_requests(stack):
    gw, _, _ = stack
    with H1Conn(gw.port) as c:
        for i in range(2):
            c.send(h1_request_bytes("GET", "/ka/%d" % i, gw.authority()))
            r = c.read_response()
            assert r.status == 200
            assert r.json()["path"] == "/ka/%d" % i
            assert "close" not in r.headers.get("connection", "").lower()


def test_http11_chunked_request_body(stack):
    gw, _, _ = stack
    parts = [os.urandom(n) for n in (1, 1000, 70000, 3)]
    body = b"".join(parts)
    req = ("POST /chunked HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
           % gw.authority()).encode()
    for p in parts:
        req += b"%x\r\n%s\r\n" % (len(p), p)
    req += b"0\r\n\r\n"
    with H1Conn(gw.port) as c:
        c.send(req)
        r = c.read_response()
    assert r.status == 200
    doc = r.json()
    assert doc["body_len"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_http11_chunk_extensions_are_bounded(stack):
    """Chunk extensions count toward no limit (not the body's): one chunk may carry 16 KiB of
    them, as Node allows; past that the request is refused with a 400 naming them, instead of
    the gateway reading extension bytes for as long as a client sends them."""
    gw, _, _ = stack
    head = ("POST /chunked HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            % gw.authority()).encode()
    small = b"5;name=" + b"v" * 1000 + b"\r\nhello\r\n0;last\r\n\r\n"
    with H1Conn(gw.port) as c:
        c.send(head + small)
        r = c.read_response()
    assert r.status == 200 and r.json()["body_len"] == 5, r.status
    big = b"5;name=" + b"v" * 17000 + b"\r\nhello\r\n0\r\n\r\n"
    with H1Conn(gw.port) as c:
        c.send(head + big)
        r = c.read_response()
    assert r.status == 400, r.status
    assert "chunk extensions over 16384 bytes" in r.json()["error"]["message"], r.json()


def test_pod_chunk_extensions_are_bounded(procs, raw_pods):
    """A pod's answer is held to the same 16 KiB of chunk extensions per chunk: past it, the
    answer is cut (its head has gone out) and logged upstream_protocol_error."""
    ok = raw_pods("http1", 200, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                  b"2;a=" + b"x" * 1000 + b"\r\nok\r\n0\r\n\r\n")
    bad = raw_pods("http1", 200, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"2;a=" + b"x" * 17000 + b"\r\nok\r\n0\r\n\r\n")
    gw = procs.gateway(routes_doc({"ok": ([ok.addr], "http1"), "bad": ([bad.addr], "http1")},
                                  [("digits", "production", "ok"),
                                   ("fraud-detect", "staging", "bad")]), conf={"workers": 1})
    r = h1(gw, "GET", "/ext")
    assert r.status == 200 and r.body == b"ok", (r.status, r.body)
    with gw.h2(host=HOST_B) as c:
        r = c.get("/ext-bad")
        assert r.status == 200 and r.body == b"" and r.reset_code is not None, r
    line = [ln for ln in gw.wait_access(2) if ln["path"] == "/ext-bad"][0]
    assert (line["status"], line["error"]) == (200, "upstream_protocol_error"), line


def test_http11_pipelined_answered_in_order(stack):
    gw, _, _ = stack
    # the first is the slowest: answers must still come back in request order
    paths = ["/slow?ms=300", "/slow?ms=100", "/third"]
    data = b"".join(h1_request_bytes("GET", p, gw.authority()) for p in paths)
    with H1Conn(gw.port) as c:
        c.send(data)
        got = [c.read_response() for _ in paths]
    assert [r.status for r in got] == [200, 200, 200]
    assert [r.json()["path"] for r in got] == paths


# --- HTTP/1.1 clients that half-close -----------------------------------------------------------
# A client may send its requests and then shut its side of the connection down (shutdown(SHUT_WR):
# nc -N, HTTP/1.0-style clients, load balancers' probes). With answer_half_closed, what it sent in
# full is answered, in order, then the connection closes (as HAProxy without abortonclose); what
# the end of its input cut is an incomplete request, as before. Before, the EOF closed the
# connection at once: no answer at all, even to a GET. Without it (the default, as Envoy,
# nghttpx and nginx), the EOF is the client's close: its requests are called off at once.


@pytest.fixture
def half_stack(procs):
    """stack's pod-a, behind a gateway with answer_half_closed."""
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"answer_half_closed": True})
    return gw, a, None


def test_http11_half_close_is_the_clients_close_by_default(stack):
    """Without answer_half_closed the EOF is the client's close, as in Envoy, nghttpx and
    nginx: the request it has in flight is called off (no answer, logged client_aborted), so
    its pod stops working for a client that left."""
    gw, a, _ = stack
    with H1Conn(gw.port) as c:
        client = client_addr(c)
        c.send(h1_request_bytes("GET", "/slow?ms=1000", gw.authority()))
        wait_for(lambda: "/slow?ms=1000" in [p for _, _, p in a.requests()], 5,
                 what="the request at its pod")
        c.sock.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        assert c.closed_by_peer(5) and not c.buf, c.buf
        assert time.monotonic() - t0 < 0.8, "closed only once the pod answered"
    lines = wait_for(lambda: mine(gw, client), 5, what="the access-log line of %s" % client)
    assert [(x["status"], x["error"]) for x in lines] == [(0, "client_aborted")], lines


def mine(gw, client):
    """The access-log lines of the client connection from |client| (addr)."""
    return [r for r in gw.access() if r["client"] == client]


def client_addr(c):
    return "%s:%d" % c.sock.getsockname()[:2]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_http11_half_closed_client_gets_its_answer(half_stack, method):
    """A request, then SHUT_WR: the answer comes (the pod takes 300 ms, so it comes after the
    EOF), then the close; logged once, as answered."""
    gw, a, _ = half_stack
    body = b"x" * 1000 if method == "POST" else b""
    with H1Conn(gw.port) as c:
        client = client_addr(c)
        c.send(h1_request_bytes(method, "/slow?ms=300", gw.authority(), body=body))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response()
        assert r.status == 200, r
        doc = r.json()
        assert (doc["method"], doc["path"], doc["body_len"]) == (method, "/slow?ms=300",
                                                                 len(body)), doc
        assert c.closed_by_peer(5) and not c.buf, c.buf
    lines = wait_for(lambda: mine(gw, client), 5, what="the access-log line of %s" % client)
    time.sleep(0.3)  # a second line would come in the same batch
    lines = mine(gw, client)
    assert [(x["status"], x["error"]) for x in lines] == [(200, None)], lines


def test_http11_pipelined_then_half_close_all_answered_in_order(half_stack):
    """Three pipelined requests, then SHUT_WR: three answers in request order (the first is the
    slowest), then the close."""
    gw, a, _ = half_stack
    paths = ["/slow?ms=300", "/slow?ms=100", "/third"]
    with H1Conn(gw.port) as c:
        client = client_addr(c)
        c.send(b"".join(h1_request_bytes("GET", p, gw.authority()) for p in paths))
        c.sock.shutdown(socket.SHUT_WR)
        got = [c.read_response() for _ in paths]
        assert c.closed_by_peer(5) and not c.buf, c.buf
    assert [(r.status, r.json()["path"]) for r in got] == [(200, p) for p in paths], got
    lines = wait_for(lambda: len(mine(gw, client)) >= 3 and mine(gw, client), 5,
                     what="3 access-log lines of %s" % client)
    assert sorted((x["path"], x["status"], x["error"]) for x in lines) == \
        sorted((p, 200, None) for p in paths), lines


def test_http11_request_cut_by_half_close_is_not_forwarded(half_stack):
    """A whole request, then the start of another's head, then SHUT_WR: the first is answered,
    the second never reaches the pod, and the connection closes. Each is logged once: the
    answered one as answered, the cut one as the client's abort (status 0), with what was read
    of it. Before, the EOF closed at once: no answer, and the cut head was not logged at all."""
    gw, a, _ = half_stack
    with H1Conn(gw.port) as c:
        client = client_addr(c)
        c.send(h1_request_bytes("GET", "/slow?ms=200", gw.authority()) +
               b"GET /cut-head HTTP/1.1\r\nHost: %s\r\nX-A: 1\r\n" % gw.authority().encode())
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/slow?ms=200", r
        assert c.closed_by_peer(5) and not c.buf, c.buf
    lines = wait_for(lambda: mine(gw, client), 5, what="the access-log lines of %s" % client)
    time.sleep(0.3)  # a later line would come in the same batch
    lines = mine(gw, client)
    assert sorted((x["path"], x["status"], x["error"]) for x in lines) == \
        [("/cut-head", 0, "client_aborted"), ("/slow?ms=200", 200, None)], lines
    cut = [x for x in lines if x["path"] == "/cut-head"][0]
    assert (cut["method"], cut["host"]) == ("GET", gw.authority()), cut
    assert "/cut-head" not in [p for _, _, p in a.requests()]


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_http11_head_cut_by_close_is_logged_once(stack, tls):
    """The start of a head, then a close: nothing reaches the pod, and the request is logged
    once, as the client's abort, with what was read of it. Before, it was not logged at all."""
    gw, a, _ = stack
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=gw.procs.tls["ca"])
        ctx.set_alpn_protocols(["http/1.1"])
    with H1Conn(gw.tls_port if tls else gw.port, tls_ctx=ctx, server_name=HOST) as c:
        client = client_addr(c)
        c.send(b"POST /cut-close HTTP/1.1\r\nHost: %s\r\nX-A: 1\r\n"
               % gw.authority(tls=tls).encode())
        time.sleep(0.2)  # the gateway has read it
    lines = wait_for(lambda: mine(gw, client), 5, what="the access-log line of %s" % client)
    time.sleep(0.3)  # a second line would come in the same batch
    lines = mine(gw, client)
    assert [(x["method"], x["path"], x["status"], x["error"]) for x in lines] == \
        [("POST", "/cut-close", 0, "client_aborted")], lines
    assert "/cut-close" not in [p for _, _, p in a.requests()]


def test_http11_body_cut_by_half_close_is_the_clients_abort(stack):
    """A body shorter than its content-length, then SHUT_WR: an incomplete request, as before:
    the connection closes without an answer and the log says client_aborted."""
    gw, a, _ = stack
    with H1Conn(gw.port) as c:
        client = client_addr(c)
        c.send(h1_request_bytes("POST", "/cut-body", gw.authority(), body=b"x" * 10)[:-7])
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_by_peer(5) and not c.buf, c.buf
    lines = wait_for(lambda: mine(gw, client), 5, what="the access-log line of %s" % client)
    time.sleep(0.3)  # a second line would come in the same batch
    lines = mine(gw, client)
    assert [(x["path"], x["status"], x["error"]) for x in lines] == \
        [("/cut-body", 0, "client_aborted")], lines


def test_http11_chunked_trailers_then_pipelined_request(stack):
    """A chunked body, its trailer section, and the next request in the same packet: the
    trailers reach the pod (content-length among them is dropped, RFC 9110 6.5.1: it would
    change the framing; so is expect, met or refused at the head), the body ends at the last
    chunk, and the next request is read from the right byte on."""
    gw, _, _ = stack
    data = (b"POST /trailers HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0\r\nX-Req-Trailer: t1\r\nContent-Length: 99\r\n"
            b"Expect: foo\r\n\r\n"
            % gw.authority().encode()) + h1_request_bytes("GET", "/after", gw.authority())
    with H1Conn(gw.port) as c:
        c.send(data)
        r1, r2 = c.read_response(), c.read_response()
    doc = r1.json()
    assert r1.status == 200 and doc["body_len"] == 3, doc
    assert doc["trailers"] == {"x-req-trailer": "t1"}, doc
    assert r2.status == 200 and r2.json()["path"] == "/after", r2


def test_http11_expect_100_continue(stack):
    """Expect: 100-continue over HTTP/1.1: the client gets 100 Continue once the request is
    routed, sends its body, and gets the answer; the pod never sees the expectation."""
    gw, _, _ = stack
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("POST", "/cont", gw.authority(),
                                [("Expect", "100-continue"), ("Content-Length", "5")])
               .replace(b"Content-Length: 0\r\n", b""))
        assert c._line() == b"HTTP/1.1 100 Continue" and c._line() == b"", c.buf
        c.send(b"hello")
        r = c.read_response()
    doc = r.json()
    assert r.status == 200 and doc["body_len"] == 5 and "expect" not in doc["headers"], doc


def test_http11_expect_100_answered_early_without_the_body(stack):
    """Expect: 100-continue answered at once (404 here): no 100 was sent, so the client may
    well not send the body (RFC 9110 10.1.1), and its next request must not be read as that
    body. The answer closes the connection, as nginx's does. Before, it said keep-alive and
    waited for the 5 body bytes: the next request lost its first 5 bytes and got a 400."""
    gw, _, _ = stack
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("POST", "/nobody", "nosuchapp-production." + DOMAIN,
                                [("Expect", "100-continue"), ("Content-Length", "5")])
               .replace(b"Content-Length: 0\r\n", b""))
        r = c.read_response()
        error_json(404, None, r.status, r.headers, r.body)
        assert r.headers.get("connection") == "close", r.headers
        assert c.closed_by_peer(5)


def test_http11_connection_close_and_http10(stack):
    """Connection: close, and HTTP/1.0 without keep-alive, are answered then closed, and what
    the client sent after them is not read; HTTP/1.0 with keep-alive keeps its connection."""
    gw, a, _ = stack
    after = h1_request_bytes("GET", "/never", gw.authority())
    for first in (b"GET /close HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                  b"GET /close HTTP/1.0\r\nHost: %s\r\n\r\n"):
        with H1Conn(gw.port) as c:
            c.send(first % gw.authority().encode() + after)
            r = c.read_response()
            assert r.status == 200 and r.headers.get("connection") == "close", r
            assert c.closed_by_peer(5) and not c.buf, c.buf
    with H1Conn(gw.port) as c:
        for i in range(2):
            c.send(b"GET /ka10 HTTP/1.0\r\nHost: %s\r\nConnection: keep-alive\r\n\r\n"
                   % gw.authority().encode())
            r = c.read_response()
            assert r.status == 200 and r.headers.get("connection") == "keep-alive", r
    assert "/never" not in [p for _, _, p in a.requests()]


def test_http11_absolute_form_routes_by_its_authority(stack):
    """GET http://host/path: the target's authority routes and becomes the pod's Host, whatever
    the Host field says (RFC 9112 3.2.2), so the two cannot disagree downstream."""
    gw, a, b = stack
    with H1Conn(gw.port) as c:
        c.send(b"GET http://%s/abs?q=1 HTTP/1.1\r\nHost: %s\r\n\r\n"
               % (gw.authority(HOST_B).encode(), gw.authority().encode()))
        r = c.read_response()
    doc = r.json()
    assert r.status == 200 and doc["pod"] == "pod-b", doc
    assert doc["path"] == "/abs?q=1" and doc["authority"] == gw.authority(HOST_B), doc


@pytest.mark.parametrize("host_lines,status,code,problem", [
    pytest.param(b"", 400, "bad_request", "without a Host header", id="no-host"),
    pytest.param(b"Host: @@ bad\r\n", 400, "invalid_host", "Host header '@@ bad'", id="invalid"),
    pytest.param(b"Host: u@x\r\n", 400, "invalid_host", "user info", id="userinfo"),
    pytest.param(b"Host:\r\n", 400, "invalid_host", "empty Host header", id="empty"),
])
def test_http11_absolute_form_still_checks_the_host_field(stack, host_lines, status, code,
                                                          problem):
    """The target's authority routes an absolute-form request, but an HTTP/1.1 request still
    needs a Host field, and a valid one (RFC 9112 3.2: 400 otherwise). Before, the target's
    authority stood in for it: a request without Host, or with 'Host: @@ bad', was routed.
    HTTP/1.0 needs none."""
    gw, a, b = stack
    seen, before = len(a.requests()) + len(b.requests()), len(gw.access())
    target = b"http://%s/abs" % gw.authority(HOST_B).encode()
    with H1Conn(gw.port) as c:
        c.send(b"GET %s HTTP/1.1\r\n%s\r\n" % (target, host_lines))
        r = c.read_response()
    err = error_json(status, code, r.status, r.headers, r.body)
    assert problem in err["message"], err
    assert len(a.requests()) + len(b.requests()) == seen
    rec = gw.wait_access(before + 1)[before]
    assert (rec["status"], rec["error"]) == (status, code), rec
    with H1Conn(gw.port) as c:
        c.send(b"GET %s HTTP/1.0\r\n\r\n" % target)
        r = c.read_response()
    assert r.status == 200 and r.json()["pod"] == "pod-b", r


def test_http11_connect_and_upgrades(stack):
    """CONNECT gets 501 and a close (no tunnels); a websocket or h2c Upgrade is not taken: the
    request is answered as plain HTTP/1.1 (RFC 9110 7.8 lets a server ignore Upgrade), without
    Upgrade (nor HTTP2-Settings) reaching the pod, and the connection serves the next request -
    no 101, no hang."""
    gw, _, _ = stack
    with H1Conn(gw.port) as c:
        c.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % ((gw.authority().encode(),) * 2))
        r = c.read_response()
        error_json(501, "not_implemented", r.status, r.headers, r.body)
        assert c.closed_by_peer(5)
    for up in ([("Connection", "Upgrade"), ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")],
               [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAAQAoAAAAAIAAAAA")],
               # HTTP2-Settings belongs to the connection even when Connection does not name
               # it (RFC 7540 3.2.1): it reached h2c pods as "http2-settings: AAA"
               [("Connection", "Upgrade"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAA")]):
        with H1Conn(gw.port, timeout=5) as c:
            c.send(h1_request_bytes("GET", "/up", gw.authority(), up) +
                   h1_request_bytes("GET", "/next", gw.authority()))
            r1, r2 = c.read_response(), c.read_response()
        assert r1.status == 200 and r2.status == 200 and r2.json()["path"] == "/next", (r1, r2)
        sent = r1.json()["headers"]
        assert "upgrade" not in sent and "http2-settings" not in sent, sent


def test_post_bodies_hashed(stack):
    gw, _, _ = stack
    sizes = [0, 1, 16383, 16385, 100000, 2 * 1024 * 1024 + 5]
    with gw.h2() as c:
        for n in sizes:
            data = os.urandom(n)
            r = c.request("POST", "/hash", body=data)
            assert r.status == 200
            doc = r.json()
            assert (doc["body_len"], doc["body_sha256"]) == (n, hashlib.sha256(data).hexdigest())
    for n in sizes:
        data = os.urandom(n)
        r = h1(gw, "POST", "/hash", body=data)
        assert r.status == 200
        doc = r.json()
        assert (doc["body_len"], doc["body_sha256"]) == (n, hashlib.sha256(data).hexdigest())


# --- trailers -----------------------------------------------------------------------------------


def test_trailers_both_ways_h2(stack):
    gw, _, _ = stack
    with gw.h2() as c:
        r = c.request("POST", "/trailers", headers=[("te", "trailers")], body=b"abc" * 1000,
                      trailers=[("x-req-trailer", "r1"), ("x-checksum", "42")])
        assert r.status == 200, r
        assert r.ended and r.reset_code is None
        doc = r.json()
        assert doc["body_len"] == 3000
        assert doc["trailers"] == {"x-req-trailer": "r1", "x-checksum": "42"}
        assert doc["headers"].get("te") == "trailers"  # "te: trailers" is the one te kept
        assert r.trailers.get("x-trailer-a") == "1", r.trailers


def test_trailers_http11_chunked(stack):
    """HTTP/1.1 client: request trailers in a chunked body reach the backend; with TE: trailers
    the response trailers come back in a chunked response."""
    gw, _, _ = stack
    # a connection-specific field in the trailers is dropped: it must not reach the h2c pod
    # (RFC 9113 8.2.2 makes such a message malformed; a strict peer resets the stream)
    r = h1(gw, "POST", "/trailers", headers=[("TE", "trailers")], body=b"hello",
           chunked=True, trailers=[("X-Req-Trailer", "r1"), ("Connection", "x")])
    assert r.status == 200
    doc = r.json()
    assert doc["body_len"] == 5
    assert doc["trailers"] == {"x-req-trailer": "r1"}, doc
    assert r.chunked and r.trailers.get("x-trailer-a") == "1", (r.headers, r.trailers)


def test_announced_request_trailers_reach_http11_pods_despite_a_content_length(procs):
    """An HTTP/2 request with a content-length and trailers went to an HTTP/1.1 pod framed by
    its content-length, and the trailers were dropped without a word: HTTP/1.1 carries them
    only in a chunked body. A request that announces them (Trailer, RFC 9110 6.6.2) goes
    chunked now, without its content-length."""
    h = procs.backend("pod-h1", proto="http1")
    gw = procs.gateway(routes_doc({"svc-h": ([h], "http1")}, [("digits", "production", "svc-h")]))
    with gw.h2() as c:
        r = c.request("POST", "/trailers", body=b"abc" * 10,
                      headers=[("content-length", "30"), ("trailer", "x-req-trailer")],
                      trailers=[("x-req-trailer", "r3")])
    assert r.status == 200, r
    doc = r.json()
    assert doc["body_len"] == 30 and doc["trailers"] == {"x-req-trailer": "r3"}, doc
    assert "content-length" not in doc["headers"], doc["headers"]
    assert doc["headers"].get("transfer-encoding") == "chunked", doc["headers"]


# --- headers ------------------------------------------------------------------------------------

HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")


def test_hop_by_hop_request_headers_removed(procs):
    a = procs.backend("pod-a")
    h = procs.backend("pod-h1", proto="http1")
    gw = procs.gateway(routes_doc({"svc-a": [a], "svc-h": ([h], "http1")},
                                  [("digits", "production", "svc-a"),
                                   ("digits", "staging", "svc-h")]))
    hop = [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
           ("Proxy-Connection", "keep-alive"), ("Upgrade", "foo/1"), ("TE", "gzip"),
           ("X-Keep-Me", "yes")]
    for host in (HOST, "digits-staging." + DOMAIN):
        r = h1(gw, "POST", "/hop", headers=hop, body=b"chunked body", chunked=True, host=host)
        assert r.status == 200
        doc = r.json()
        seen = doc["headers"]
        for name in HOP_BY_HOP + ("te",):
            if name == "transfer-encoding" and doc["proto"] == "http/1.1":
                # an HTTP/1.1 upstream may get the body chunked again, by the gateway's choice
                assert seen.get(name, "chunked").lower() == "chunked", seen
                continue
            if name == "connection" and doc["proto"] == "http/1.1":
                assert seen.get(name, "keep-alive").lower() in ("keep-alive", "close"), seen
                continue
            assert name not in seen, "%s forwarded to %s: %r" % (name, doc["proto"], seen)
        assert seen["x-keep-me"] == "yes"
        assert doc["body_len"] == len(b"chunked body")


@pytest.fixture
def gw_h2c_pod(procs):
    a = procs.backend("pod-a")
    return procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]))


def test_http11_te_list_holding_trailers_reaches_h2c_pods(gw_h2c_pod):
    """An HTTP/1.1 client's TE list that holds "trailers" ("TE: gzip, trailers", or the token in
    a second TE field) reaches an h2c pod as one "te: trailers", the one TE value HTTP/2 allows
    (as nghttpx does); a list without it sends none. Before, only an exact "TE: trailers"
    passed, once per field."""
    gw = gw_h2c_pod
    cases = [
        ([("TE", "gzip, Trailers ")], "trailers"),
        ([("TE", "gzip;q=0.5"), ("TE", "trailers")], "trailers"),
        ([("TE", "trailers"), ("TE", "trailers")], "trailers"),
        ([("TE", "gzip, trailersx")], None),
        ([("TE", "deflate")], None),
    ]
    for te, want in cases:
        r = h1(gw, "GET", "/te", headers=te)
        assert r.status == 200, (te, r.status)
        doc = r.json()
        got = [v for k, v in doc["header_list"] if k == "te"]
        assert got == ([want] if want else []), (te, doc["header_list"])


def test_http11_every_connection_field_names_hop_by_hop_fields(gw_h2c_pod):
    """HTTP/1.1 lets a message carry several Connection fields, each a list: a field named by
    the second one stays behind too. Before, only the first was read."""
    gw = gw_h2c_pod
    r = h1(gw, "GET", "/conn", headers=[("Connection", "keep-alive"),
                                        ("Connection", "x-hop-a , X-Hop-B"),
                                        ("X-Hop-A", "1"), ("X-Hop-B", "2"), ("X-Keep", "3")])
    assert r.status == 200
    seen = r.json()["headers"]
    assert "x-hop-a" not in seen and "x-hop-b" not in seen, seen
    assert seen.get("x-keep") == "3", seen


def test_hop_by_hop_response_headers_removed(procs):
    """An HTTP/1.1 upstream answering with hop-by-hop headers: none reaches the client."""
    h = procs.backend("pod-h1", proto="http1")
    gw = procs.gateway(routes_doc({"svc-h": ([h], "http1")}, [("digits", "production", "svc-h")]))
    q = "&".join("set-header=%s" % v for v in ("keep-alive:timeout%3D5", "proxy-connection:x",
                                                 "upgrade:foo", "x-resp-keep:1"))
    with gw.h2() as c:
        r = c.get("/resp-hop?" + q)
        assert r.status == 200, r
        for name in HOP_BY_HOP:
            assert name not in r.headers, r.headers
        assert r.headers.get("x-resp-keep") == "1"
    r = h1(gw, "GET", "/resp-hop?" + q)
    assert r.status == 200
    for name in ("keep-alive", "proxy-connection", "upgrade"):
        assert name not in r.headers, r.headers
    assert r.headers.get("x-resp-keep") == "1"


@pytest.mark.parametrize("status", [204, 304])
def test_content_length_of_an_answer_without_body(procs, raw_pods, status):
    """A 204 carries no Content-Length (RFC 9110 8.6: a server MUST NOT send one); an HTTP/1.1
    pod that sends one anyway has it dropped, so an HTTP/2 client does not reset the stream as
    malformed (RFC 9113 8.1.1) and an HTTP/1.1 client is not told of a body. A 304 keeps it: it
    describes the selected representation. Before, the 204's reached both clients."""
    pod = raw_pods("http1", status, b"HTTP/1.1 %d X\r\ncontent-length: 6\r\n\r\n" % status)
    gw = procs.gateway(routes_doc({"svc": ([pod.addr], "http1")},
                                  [("digits", "production", "svc")]), conf={"workers": 1})
    # curl (nghttp2) and not python h2, which takes a 304's content-length for its body's
    code, _, headers, body = curl(gw, "/no-body")
    assert code == status and body == b"", (code, body)
    assert ("content-length" in headers) == (status == 304), headers
    r = h1(gw, "GET", "/no-body")
    assert r.status == status and ("content-length" in r.headers) == (status == 304), r


def test_request_id_added_and_kept(stack):
    """Every request reaches its pod with an x-request-id (the client's if it sent one). By
    default the answer carries only the pod's own x-request-id, as with Envoy."""
    gw, _, _ = stack
    with gw.h2() as c:
        r = c.get("/rid")
        rid = r.json()["headers"].get("x-request-id")
        assert rid and len(rid) == 32, r.json()
        assert "x-request-id" not in r.headers, r.headers
        r2 = c.get("/rid")
        assert r2.json()["headers"].get("x-request-id") not in (None, rid)  # one id per request
        r = c.get("/rid", headers=[("x-request-id", "client-chosen-123")])
        assert r.json()["headers"].get("x-request-id") == "client-chosen-123"
        assert "x-request-id" not in r.headers, r.headers
        r = c.get("/rid?set-header=x-request-id:pod-says-7")  # the pod's own passes through
        assert r.headers.get("x-request-id") == "pod-says-7", r.headers
    r = h1(gw, "GET", "/rid", headers=[("X-Request-Id", "h1-chosen")])
    assert r.json()["headers"]["x-request-id"] == "h1-chosen"
    assert "x-request-id" not in r.headers, r.headers
    r = h1(gw, "GET", "/rid")
    assert len(r.json()["headers"]["x-request-id"]) == 32 and "x-request-id" not in r.headers
    # one the client names in Connection is hop-by-hop: not kept (it was)
    r = h1(gw, "GET", "/rid", headers=[("X-Request-Id", "hop-chosen"),
                                       ("Connection", "keep-alive, X-Request-Id")])
    sent = r.json()["headers"]["x-request-id"]
    assert sent != "hop-chosen" and len(sent) == 32, r.json()


def test_request_id_never_indexed_with_indexed_name(procs, raw_pods):
    """The request id reaches an HTTP/2 pod never indexed (unique values would only push the
    fields that repeat out of its HPACK table), yet its name costs a table index, not a literal
    the pod Huffman-decodes on every request: the connection's first id goes in indexed."""
    pod = raw_pods("h2c", "200")
    gw = procs.gateway(routes_doc({"svc": ([pod.addr], "h2c")},
                                  [("digits", "production", "svc")]),
                       conf={"workers": 1}, tls=False)
    n = 5
    with gw.h2() as c:
        for i in range(n):
            assert c.get("/rid/%d" % i).status == 200
    assert len(pod.blocks) == n, "%d header blocks for %d requests" % (len(pod.blocks), n)
    name_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(b"x-request-id")
    decoder, ids = hpack.Decoder(), []
    for i, block in enumerate(pod.blocks):
        rid = [f for f in decoder.decode(block) if f[0] == "x-request-id"]
        assert len(rid) == 1, rid
        ids.append(rid[0][1])
        if i == 0:
            continue
        assert isinstance(rid[0], hpack.NeverIndexedHeaderTuple), "request %d: %r" % (i, rid)
        assert name_huffman not in block and b"x-request-id" not in block, (
            "request %d sent the name x-request-id as a literal: %s" % (i, block.hex()))
    assert len(set(ids)) == n and all(len(x) == 32 for x in ids), ids


def test_never_indexed_fields_stay_never_indexed(procs, raw_pods):
    """RFC 7541 6.2.3: a field its sender encoded never-indexed (a secret that a compression
    attack could otherwise guess) is forwarded never-indexed: request fields to the pod,
    response fields and trailers to the client. So is a request id the client sent that way,
    though the gateway indexes its ids on a connection's first request to seed the name."""
    secret = hpack.NeverIndexedHeaderTuple
    pod = raw_pods("h2c", "200", fields=[secret("x-pod-secret", "p0d-s3cret"), ("x-plain", "1")],
                   trailers=[secret("x-trailer-secret", "t-s3cret")])
    gw = procs.gateway(routes_doc({"svc": ([pod.addr], "h2c")},
                                  [("digits", "production", "svc")]),
                       conf={"workers": 1}, tls=False)
    n = 3
    with gw.h2() as c:
        for i in range(n):
            r = c.get("/secret/%d" % i, headers=[secret("x-api-secret", "s3cret-%d" % i),
                                                 secret("x-request-id", "rid-%d" % i),
                                                 secret("x-forwarded-for", "203.0.113.7"),
                                                 ("x-plain", "1")])
            assert r.status == 200, r
            for name, got in (("x-pod-secret", r.header_list),
                              ("x-trailer-secret", r.trailer_list)):
                f = [h for h in got if h[0] == name]
                assert len(f) == 1 and isinstance(f[0], secret), (i, name, got)
    assert len(pod.blocks) == n, len(pod.blocks)
    decoder = hpack.Decoder()
    for i, block in enumerate(pod.blocks):
        fields = {f[0]: f for f in decoder.decode(block)}
        assert fields["x-request-id"][1] == "rid-%d" % i, fields
        assert fields["x-forwarded-for"][1] == "203.0.113.7, 127.0.0.1", fields
        assert not isinstance(fields["x-plain"], secret), fields["x-plain"]
        for name in ("x-api-secret", "x-request-id", "x-forwarded-for"):
            assert isinstance(fields[name], secret), "request %d: %r" % (i, fields[name])


def test_never_indexed_pseudo_fields_and_request_trailers(procs, raw_pods):
    """RFC 7541 6.2.3 beyond the regular fields: an :authority or :path the client sent
    never-indexed reaches the pod never-indexed, and so do the request's trailers. With
    request_id_in_response, the request id the client sent never-indexed comes back
    never-indexed too."""
    secret = hpack.NeverIndexedHeaderTuple
    pod = raw_pods("h2c", "200", wait_end=True)
    gw = procs.gateway(routes_doc({"svc": ([pod.addr], "h2c")},
                                  [("digits", "production", "svc")]),
                       conf={"workers": 1, "request_id_in_response": True}, tls=False)
    n = 2
    with gw.h2() as c:
        for i in range(n):
            head = [(":method", "POST"), (":scheme", "http"), secret(":authority", c.authority),
                    secret(":path", "/secret-path/%d" % i), ("content-type", "text/plain"),
                    secret("x-request-id", "rid-%d" % i)]
            st = c.start("POST", None, raw_headers=head, end_stream=False)
            assert c.send(st, b"body")
            assert c.end(st, [secret("x-req-trailer-secret", "rt-%d" % i), ("x-req-plain", "1")])
            assert c.wait(st), st
            assert st.status == 200, st
            rid = [h for h in st.header_list if h[0] == "x-request-id"]
            assert rid == [("x-request-id", "rid-%d" % i)] and isinstance(rid[0], secret), \
                st.header_list
    assert len(pod.blocks) == n and len(pod.trailer_blocks) == n, (pod.blocks, pod.trailer_blocks)
    decoder = hpack.Decoder()  # the blocks and trailers share the connection's table, in order
    for i in range(n):
        fields = {f[0]: f for f in decoder.decode(pod.blocks[i])}
        assert fields[":path"][1] == "/secret-path/%d" % i, fields
        for name in (":authority", ":path"):
            assert isinstance(fields[name], secret), "request %d: %r" % (i, fields[name])
        assert not isinstance(fields["content-type"], secret), fields["content-type"]
        trailers = {f[0]: f for f in decoder.decode(pod.trailer_blocks[i])}
        assert trailers["x-req-trailer-secret"][1] == "rt-%d" % i, trailers
        assert isinstance(trailers["x-req-trailer-secret"], secret), trailers
        assert not isinstance(trailers["x-req-plain"], secret), trailers


def test_request_id_in_response(procs):
    """request_id_in_response: answers without an x-request-id of their own get the request's."""
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"request_id_in_response": True})
    with gw.h2() as c:
        r = c.get("/rid")
        rid = r.headers.get("x-request-id")
        assert rid and r.json()["headers"].get("x-request-id") == rid, (r.headers, r.json())
        r2 = c.get("/rid")
        assert r2.headers.get("x-request-id") not in (None, rid)
        r = c.get("/rid", headers=[("x-request-id", "client-chosen-123")])
        assert r.headers.get("x-request-id") == "client-chosen-123"
        assert r.json()["headers"].get("x-request-id") == "client-chosen-123"
        r = c.get("/rid?set-header=x-request-id:pod-says-7")
        assert [v for k, v in r.header_list if k == "x-request-id"] == ["pod-says-7"], r.header_list
    r = h1(gw, "GET", "/rid", headers=[("X-Request-Id", "h1-chosen")])
    assert r.headers.get("x-request-id") == "h1-chosen"
    assert r.json()["headers"]["x-request-id"] == "h1-chosen"
    r = h1(gw, "GET", "/rid")
    assert r.headers.get("x-request-id") and \
        r.json()["headers"]["x-request-id"] == r.headers["x-request-id"]


def test_generate_request_id_off(procs):
    """generate_request_id false (Envoy's generate_request_id: false): a request that brings no
    x-request-id reaches its pod without one, and its answer gets none even with
    request_id_in_response; a client's id still passes both ways. The gateway still makes an
    id for its own records: the access log line and the JSON of the errors it answers."""
    a = procs.backend("pod-a")
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"generate_request_id": False, "request_id_in_response": True})
    with gw.h2() as c:
        r = c.get("/rid")
        assert r.status == 200 and "x-request-id" not in r.json()["headers"], r.json()
        assert "x-request-id" not in r.headers, r.headers
        r = c.get("/rid", headers=[("x-request-id", "client-chosen-123")])
        assert r.json()["headers"].get("x-request-id") == "client-chosen-123", r.json()
        assert r.headers.get("x-request-id") == "client-chosen-123", r.headers
        r = c.get("/", authority=gw.authority("nosuchapp-production." + DOMAIN))
        assert r.status == 404 and len(r.json()["error"]["request_id"]) == 32, r.body
    r = h1(gw, "GET", "/rid")
    assert "x-request-id" not in r.json()["headers"] and "x-request-id" not in r.headers, r
    long_id = "L" * 100  # too long for the gateway's records: passed on untouched, not dropped
    r = h1(gw, "GET", "/rid", headers=[("X-Request-Id", long_id)])
    assert r.json()["headers"].get("x-request-id") == long_id, r.json()["headers"]
    lines = gw.wait_access(4)
    ids = [ln["request_id"] for ln in lines]
    assert ids[1] == "client-chosen-123" and all(len(i) == 32 for i in ids[:1] + ids[2:]), ids


def test_forwarded_headers(stack):
    gw, _, _ = stack
    with gw.h2() as c:
        doc = c.get("/fwd").json()
        assert doc["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert doc["headers"]["x-forwarded-proto"] == "http"
        doc = c.get("/fwd", headers=[("x-forwarded-for", "203.0.113.7")]).json()
        xff = [p.strip() for p in doc["headers"]["x-forwarded-for"].split(",")]
        assert xff == ["203.0.113.7", "127.0.0.1"], doc["headers"]
        # a chain split over two fields keeps both parts, in order, in one field
        doc = c.get("/fwd", headers=[("x-forwarded-for", "203.0.113.7"),
                                     ("x-forwarded-for", "198.51.100.2")]).json()
        fields = [v for k, v in doc["header_list"] if k == "x-forwarded-for"]
        assert fields == ["203.0.113.7, 198.51.100.2, 127.0.0.1"], doc["header_list"]
    with gw.h2(tls=True) as c:
        doc = c.get("/fwd").json()
        assert doc["headers"]["x-forwarded-proto"] == "https"
        assert doc["headers"]["x-forwarded-for"] == "127.0.0.1"
    doc = h1(gw, "GET", "/fwd", headers=[("X-Forwarded-For", "198.51.100.1")]).json()
    xff = [p.strip() for p in doc["headers"]["x-forwarded-for"].split(",")]
    assert xff == ["198.51.100.1", "127.0.0.1"]


# --- host routing -------------------------------------------------------------------------------


def test_host_routing_two_routes(stack):
    gw, _, _ = stack
    with gw.h2() as c:
        assert c.get("/r").json()["pod"] == "pod-a"
        r = c.get("/r", authority=gw.authority(HOST_B))
        assert r.status == 200 and r.json()["pod"] == "pod-b"
        # the port suffix is ignored, and so is its absence
        assert c.get("/r", authority=HOST_B).json()["pod"] == "pod-b"
        assert c.get("/r", authority=HOST_B + ":1").json()["pod"] == "pod-b"
        assert c.get("/r", authority=HOST).json()["pod"] == "pod-a"
    assert h1(gw, "GET", "/r", host=HOST_B).json()["pod"] == "pod-b"
    status, _, _, body = curl(gw, "/r", host=HOST_B, tls=True, mode="h2")
    assert status == 200 and json.loads(body)["pod"] == "pod-b"


@pytest.mark.parametrize("host", ["nosuchapp-production." + DOMAIN, "digits-nosuchenv." + DOMAIN,
                                  "digits-production.example.org", "localhost"])
def test_unknown_host_404_json(stack, host):
    gw, a, b = stack
    before = len(a.requests()) + len(b.requests())
    with gw.h2() as c:
        r = c.get("/x", authority=host)
        err = error_json(404, "unknown_host", r.status, r.headers, bytes(r.body))
        assert r.headers.get("x-request-id") in (None, err["request_id"])
    r = h1(gw, "GET", "/x", host=host)
    error_json(404, "unknown_host", r.status, r.headers, r.body)
    assert len(a.requests()) + len(b.requests()) == before
    gw.assert_alive()


# Hosts that are no host (RFC 9112 3.2: 400; RFC 9113 8.3.1: no user info in :authority), and
# what the error says. Each got 404, but ":99999", which was routed and went on to the pod.
INVALID_HOSTS = [
    pytest.param("u@{h}", "user info", id="userinfo"),
    pytest.param("{h}/evil", "no path", id="path"),
    pytest.param("", "empty", id="empty"),
    pytest.param("{h}:abc", "port", id="port-letters"),
    pytest.param("{h}:99999", "port", id="port-over-65535"),
    pytest.param("fraud-detect-staging.%s:123456" % DOMAIN, "port", id="port-6-digits"),
]


@pytest.mark.parametrize("host,problem", INVALID_HOSTS)
def test_invalid_host_400_json(stack, host, problem):
    """An invalid Host (HTTP/1.1) or :authority (HTTP/2) gets a 400 JSON error naming the
    problem, and an access log line, and never reaches a pod; a well-formed host of no route
    keeps its 404 (test_unknown_host_404_json). Before, they got 404 or were forwarded."""
    gw, a, b = stack
    host = host.format(h=HOST)
    before, seen = len(gw.access()), len(a.requests()) + len(b.requests())
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("GET", "/invalid-host", host))
        r = c.read_response()
    err = error_json(400, "invalid_host", r.status, r.headers, r.body)
    assert problem in err["message"], err
    n = 1
    if "/" not in host and host:  # nghttp2 resets those itself (a PROTOCOL_ERROR)
        with gw.h2() as c:
            r = c.get("/invalid-host", authority=host)
        err = error_json(400, "invalid_host", r.status, r.headers, bytes(r.body))
        assert problem in err["message"] and host in err["message"], err
        n += 1
    recs = gw.wait_access(before + n)[before:]
    assert [(x["status"], x["error"], x["host"]) for x in recs] == \
        [(400, "invalid_host", host)] * n, recs
    assert len(a.requests()) + len(b.requests()) == seen
    gw.assert_alive()


def test_http11_whitespace_around_field_values_is_cut(procs, raw_pods):
    """Whitespace around an HTTP/1.1 field value is no part of it (RFC 9112 5.1), and HTTP/2
    forbids it (RFC 9113 8.2.1). llhttp keeps the trailing one, and the gateway passed it on:
    its HTTP/2 pod reset each such request (502), five of them got the healthy pod ejected
    (503 for everyone), "Host: h " was an invalid host and "Expect: 100-continue " no expect.
    An HTTP/1.1 pod's "x-b: val  " reached HTTP/2 clients as is, and they refuse it."""
    a = procs.backend("pod-a", proto="h2c")
    pod = raw_pods("http1", 200, b"HTTP/1.1 200 OK\r\nx-b: val \t \r\ncontent-length: 2\r\n\r\nok")
    gw = procs.gateway(routes_doc({"svc-a": [a], "svc-raw": ([pod.addr], "http1")},
                                  [("digits", "production", "svc-a"),
                                   ("digits", "staging", "svc-raw")]))
    with H1Conn(gw.port) as c:
        for i in range(7):  # more than the 5 failures in a row that eject a pod
            c.send(b"GET /ws/%d HTTP/1.1\r\nHost: %s \r\nX-A: \t trail \t\r\n\r\n"
                   % (i, gw.authority().encode()))
            r = c.read_response()
            assert r.status == 200, (i, r.status, r.body)
            assert r.json()["headers"]["x-a"] == "trail", r.json()["headers"]
        c.send(b"POST /ws-expect HTTP/1.1\r\nHost: %s\r\nExpect: 100-continue \r\n"
               b"Content-Length: 5\r\n\r\n" % gw.authority().encode())
        assert c._line() == b"HTTP/1.1 100 Continue" and c._line() == b"", c.buf
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == 5, r.body
    with gw.h2() as c:
        r = c.get("/ws-answer", authority=gw.authority("digits-staging." + DOMAIN))
        assert r.status == 200 and r.reset_code is None, r
        assert [v for k, v in r.header_list if k == "x-b"] == ["val"], r.header_list


def test_http11_reason_phrases(stack):
    """An HTTP/2 pod's status reaches HTTP/1.1 clients with its registered reason phrase;
    before, every code outside a short list went out as e.g. "HTTP/1.1 308 Status"."""
    gw, _, _ = stack
    want = {203: "Non-Authoritative Information", 308: "Permanent Redirect", 410: "Gone",
            422: "Unprocessable Content", 451: "Unavailable For Legal Reasons",
            511: "Network Authentication Required"}
    with H1Conn(gw.port) as c:
        for code, phrase in want.items():
            c.send(h1_request_bytes("GET", "/status/%d" % code, gw.authority()))
            r = c.read_response()
            assert (r.status, r.reason) == (code, phrase)


def test_h1_error_answers_keep_the_connection(stack):
    """A POST answered at its head (404 here; a 401, 429 or 503 alike) keeps its HTTP/1.1
    connection: the gateway drops the body it did not read and serves the next request. An
    answer that promised keep-alive and was then closed made httpx send its next request into
    a closed connection ("Server disconnected without sending a response")."""
    gw, _, _ = stack
    before = len(gw.access())
    body = json.dumps({"input": list(range(2000))})
    with httpx.Client(timeout=10, headers={"host": "nosuchapp-production." + DOMAIN}) as c:
        for _ in range(20):
            r = c.post("http://127.0.0.1:%d/v1/predict" % gw.port, content=body)
            assert r.status_code == 404 and "connection" not in r.headers
        r = c.post("http://127.0.0.1:%d/r" % gw.port, content=body, headers={"host": HOST})
        assert r.status_code == 200 and r.json()["pod"] == "pod-a"
    recs = gw.wait_access(before + 21)[before:]
    assert [x["status"] for x in recs] == [404] * 20 + [200]
    assert len({x["client"] for x in recs}) == 1, "one connection for all 21 requests"


def test_default_service(procs):
    a = procs.backend("pod-a")
    d = procs.backend("pod-default")
    gw = procs.gateway(routes_doc({"svc-a": [a], "svc-d": [d]}, [("digits", "production", "svc-a")],
                                  default="svc-d"))
    with gw.h2() as c:
        assert c.get("/").json()["pod"] == "pod-a"
        for host in ("other-production." + DOMAIN, "whatever.example.org"):
            r = c.get("/", authority=host)
            assert r.status == 200 and r.json()["pod"] == "pod-default"


@pytest.mark.parametrize("proto", ["h2c", "http1"])
def test_http10_request_without_host_reaches_the_default_service(procs, proto):
    """HTTP/1.0 has no Host field, and health checkers still send such requests. The default
    service answers them, and the pod gets its own "host:port" as the authority, as nghttpx
    sends it. Before, the pod got an empty authority: nghttp2-based pods (nghttpd,
    modelgate-runtime) reset such a request, and the client got 502 upstream_reset. The log
    says host null and proto http/1.0."""
    d = procs.backend("pod-default", proto=proto)
    gw = procs.gateway(routes_doc({"svc-d": ([d], proto)}, [], default="svc-d"))
    with H1Conn(gw.port) as c:
        c.send(b"GET /no-host HTTP/1.0\r\n\r\n")
        r = c.read_response()
    doc = r.json()
    assert r.status == 200 and doc["pod"] == "pod-default", (r.status, r.body)
    assert doc["authority"] == d.addr and doc["path"] == "/no-host", doc
    assert doc["proto"] == ("http/1.1" if proto == "http1" else "h2c"), doc
    # no host was sent: null in the log, as for a request refused before its Host (it was "")
    rec = gw.wait_access(1)[0]
    assert rec["host"] is None and rec["path"] == "/no-host" and rec["status"] == 200, rec
    assert rec["proto"] == "http/1.0", rec  # it said http/1.1


def test_http10_request_without_host_to_an_nghttp2_pod(procs, tmp_path):
    """The same with nghttpd as the pod: nghttp2 refuses a request without a usable authority,
    so before the client got 502 upstream_reset, blaming the pod."""
    (tmp_path / "hello.txt").write_text("hello from nghttpd\n")
    port = free_port()
    pod = procs.spawn("nghttpd", ["nghttpd", "--no-tls", "-a", "127.0.0.1", "-d", str(tmp_path),
                                  str(port)])
    pod.wait_ready([port])
    gw = procs.gateway(routes_doc({"svc-d": ["127.0.0.1:%d" % port]}, [], default="svc-d"))
    with H1Conn(gw.port) as c:
        c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.body == b"hello from nghttpd\n", (r.status, r.body)


def test_round_robin_two_pods(procs):
    a = procs.backend("pod-a")
    b = procs.backend("pod-b")
    doc = routes_doc({"svc": [a, b]}, [("digits", "production", "svc")])
    doc["services"]["svc"]["policy"] = "round_robin"  # the default, least_request, draws at random
    gw = procs.gateway(doc)
    counts = {}
    with gw.h2() as c:
        for i in range(100):
            r = c.get("/rr/%d" % i)
            assert r.status == 200
            counts[r.json()["pod"]] = counts.get(r.json()["pod"], 0) + 1
    print("round robin split:", counts)
    # one connection is one worker: its smooth round robin alternates exactly
    assert counts == {"pod-a": 50, "pod-b": 50}, counts


def test_http1_upstream_for_h2_and_h1_clients(procs):
    h = procs.backend("pod-h1", proto="http1")
    gw = procs.gateway(routes_doc({"svc-h": ([h], "http1")}, [("digits", "production", "svc-h")]))
    data = os.urandom(300000)
    with gw.h2() as c:
        for i in range(3):  # several, so the upstream keep-alive connection gets reused
            r = c.request("POST", "/up1/%d" % i, body=data)
            assert r.status == 200, r
            doc = r.json()
            assert doc["proto"] == "http/1.1" and doc["pod"] == "pod-h1"
            assert doc["body_sha256"] == hashlib.sha256(data).hexdigest()
            assert doc["authority"] == gw.authority()
        r = c.get("/status/503")
        assert r.status == 503 and r.json()["pod"] == "pod-h1"
        r = c.get("/bytes?n=1000000", )
        assert r.status == 200 and r.body_len == 1000000
    status, version, _, body = curl(gw, "/up1", "--data-binary", "abc", mode="h1")
    assert (status, version) == (200, "1.1")
    doc = json.loads(body)
    assert doc["proto"] == "http/1.1" and doc["body_len"] == 3
    status, version, _, body = curl(gw, "/up1", tls=True, mode="h2")
    assert (status, version) == (200, "2") and json.loads(body)["pod"] == "pod-h1"


# --- more HTTP semantics ------------------------------------------------------------------------


@pytest.fixture
def both_upstreams(procs):
    """digits-production: an h2c pod; digits-staging: an HTTP/1.1 pod."""
    a = procs.backend("pod-a", proto="h2c")
    h = procs.backend("pod-h1", proto="http1")
    gw = procs.gateway(routes_doc({"svc-a": [a], "svc-h": ([h], "http1")},
                                  [("digits", "production", "svc-a"),
                                   ("digits", "staging", "svc-h")]))
    return gw, a, h


UPSTREAM_HOSTS = [HOST, "digits-staging." + DOMAIN]


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_head_request(both_upstreams, host):
    gw, _, _ = both_upstreams
    with gw.h2() as c:
        r = c.request("HEAD", "/head", authority=gw.authority(host))
        assert r.status == 200 and r.ended, r
        assert r.body_len == 0
        assert int(r.headers.get("content-length", "1")) > 0, r.headers
        assert c.get("/after-head", authority=gw.authority(host)).status == 200
    with H1Conn(gw.port) as c:  # the response to HEAD has no body: the next one parses
        c.send(h1_request_bytes("HEAD", "/head", gw.authority(host)))
        r = c.read_response(head_request=True)
        assert r.status == 200 and int(r.headers.get("content-length", "1")) > 0, r
        c.send(h1_request_bytes("GET", "/after-head", gw.authority(host)))
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/after-head"


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_repeated_headers_and_cookies(both_upstreams, host):
    gw, _, _ = both_upstreams
    with gw.h2() as c:
        r = c.get("/multi?set-header=set-cookie:a%3D1&set-header=set-cookie:b%3D2",
                  authority=gw.authority(host),
                  headers=[("x-multi", "one"), ("x-multi", "two"), ("cookie", "c1=1"),
                           ("cookie", "c2=2")])
        assert r.status == 200, r
        doc = r.json()
        multi = [v for k, v in doc["header_list"] if k == "x-multi"]
        assert ", ".join(multi) == "one, two", doc["header_list"]
        cookies = [v for k, v in doc["header_list"] if k == "cookie"]
        if doc["proto"] == "http/1.1":
            # RFC 9113 8.2.3: cookie crumbs are joined with "; " for HTTP/1.1
            assert cookies == ["c1=1; c2=2"], cookies
        else:
            assert "; ".join(cookies) == "c1=1; c2=2", cookies
        if doc["proto"] == "http/1.1":  # only an HTTP/1.1 backend can send two set-cookie
            got = [v for k, v in r.header_list if k == "set-cookie"]
            assert got == ["a=1", "b=2"], r.header_list


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_path_and_query_forwarded_verbatim(both_upstreams, host):
    gw, _, _ = both_upstreams
    path = "/a%2Fb/c%20d/%E2%82%AC?x=1&y=%2F&z&w=a+b#"[:-1]
    with gw.h2() as c:
        assert c.get(path, authority=gw.authority(host)).json()["path"] == path
    assert h1(gw, "GET", path, host=host).json()["path"] == path


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_options_asterisk_reaches_the_pod_as_asterisk(both_upstreams, host):
    """OPTIONS * (the server as a whole) goes on as '*', the one target besides a path that an
    HTTP/2 pod takes (RFC 9113 8.3.1), from HTTP/1.1 and HTTP/2 clients alike; so does OPTIONS
    with an absolute URI that has no path (RFC 9112 3.2.4: the last proxy sends '*'), whose
    authority routes. With a query, its path is '/'. Before, that absolute form went on as '/'."""
    gw, _, _ = both_upstreams
    auth = gw.authority(host)
    paths = []
    with H1Conn(gw.port) as c:
        other = gw.authority("other-production." + DOMAIN)  # the absolute form's routes
        for target, field in (("*", auth), ("http://" + auth, other),
                              ("http://%s?q=1" % auth, other)):
            c.send(("OPTIONS %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, field)).encode())
            r = c.read_response()
            assert r.status == 200, r
            paths.append((r.json()["method"], r.json()["path"]))
    with gw.h2() as c:
        r = c.request("OPTIONS", "*", authority=auth)
        assert r.status == 200, r
        paths.append((r.json()["method"], r.json()["path"]))
    assert paths == [("OPTIONS", "*")] * 2 + [("OPTIONS", "/?q=1"), ("OPTIONS", "*")], paths


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_response_streams_as_it_comes(both_upstreams, host):
    """A response the upstream sends over 1.2 s reaches the client piece by piece."""
    gw, _, _ = both_upstreams
    with gw.h2() as c:
        st = c.start("GET", "/drip?n=5&ms=300", authority=gw.authority(host))
        assert c.wait(st, 10), st
        assert st.status == 200 and bytes(st.body) == b"".join(b"drip-%d\n" % i
                                                               for i in range(5))
        spread = st.done_at - st.first_data_at
        assert spread > 0.8, "the first byte came only %.2fs before the end: buffered" % spread
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("GET", "/drip?n=5&ms=300", gw.authority(host)))
        t0 = time.monotonic()
        while b"drip-0" not in c.buf:
            assert c._fill()
        first = time.monotonic() - t0
        r = c.read_response()
        total = time.monotonic() - t0
        assert r.status == 200 and b"drip-4" in r.body
        assert total - first > 0.8, "HTTP/1.1 response buffered: first %.2fs, total %.2fs" % (
            first, total)


def test_client_cancel_resets_upstream_stream(both_upstreams):
    gw, a, _ = both_upstreams
    with gw.h2() as c:
        got = []
        st = c.start("GET", "/bytes?n=%d" % (1 << 30), on_data=lambda d: got.append(len(d)))
        deadline = time.monotonic() + 10
        while sum(got) < (1 << 20):
            assert time.monotonic() < deadline and not st.done, st
            c.pump(0.5)
        c.reset(st)
        # the gateway passes the cancel on: the backend's stream is reset, it stops sending
        wait_for(lambda: "rst h2c /bytes?n=%d" % (1 << 30) in a.proc.stdout(), 5,
                 what="the backend to see its stream reset")
        r = c.get("/after-cancel")
        assert r.status == 200
    gw.assert_alive()


def test_h2_connect_is_refused(stack):
    """CONNECT over HTTP/2 (no :path, a tunnel to :authority) is refused with 501, as over
    HTTP/1.1: it stayed open, unanswered, before."""
    gw, _, _ = stack
    with gw.h2(validate=False) as c:  # the h2 package's own checks want a :path
        st = c.start("CONNECT", None, end_stream=False,
                     raw_headers=[(":method", "CONNECT"), (":authority", HOST)])  # routed
        assert c.wait(st, 5) and st.status == 501, st
    gw.assert_alive()


def test_h2_answer_before_the_request_ends_resets_the_stream(stack):
    """An answer that ends before the request (a 404 at the head of a POST whose body is still
    to come) is followed by RST_STREAM NO_ERROR: the client stops sending (RFC 9113 8.1).
    Before, the stream stayed half-open and the client could upload into it for good."""
    gw, _, _ = stack
    with gw.h2() as c:
        st = c.start("POST", "/up", end_stream=False,
                     authority="nosuchapp-production." + DOMAIN)
        assert c.wait_for(lambda: st.reset_code is not None), st
        assert st.status == 404 and st.ended and st.reset_code == 0, st


def test_h2_authority_and_a_different_host_is_400(stack):
    """:authority routes; a host field naming another host is refused (RFC 9113 8.3.1), so
    the host that routes and the one a pod may read cannot differ. The same host is fine."""
    gw, _, _ = stack
    statuses = []
    for host in ("other-production." + DOMAIN, HOST):
        with gw.h2(validate=False) as c:  # the h2 package would drop host beside :authority
            st = c.start("GET", "/a", headers=[("host", host)], authority=HOST)
            assert c.wait(st, 5), st
            statuses.append(st.status)
    assert statuses == [400, 200]


def test_h2_body_not_matching_its_content_length_is_the_clients_error(stack):
    """A body shorter than its content-length: nghttp2 resets the stream (RFC 9113 8.1.1), and
    the log says client_protocol_error. Before, it said client_aborted, as if the client had
    gone of its own accord."""
    gw, _, _ = stack
    with gw.h2(validate=False) as c:
        st = c.start("POST", "/cl-short", headers=[("content-length", "10")], end_stream=False)
        c.send(st, b"12345", end_stream=True)
        assert c.wait(st, 5), st
        assert st.reset_code == h2.errors.ErrorCodes.PROTOCOL_ERROR, st
    ln = [ln for ln in gw.wait_access(1) if ln["path"] == "/cl-short"][0]
    assert ln["error"] == "client_protocol_error", ln


def test_h2_expect_100_continue(stack):
    """An HTTP/2 client that sends Expect: 100-continue and waits gets the 100 from the gateway
    once the request is routed, as over HTTP/1.1; then its body goes through. Before, the
    pod's 100 was dropped and the client waited out its own expect timeout (curl: 1 s)."""
    gw, _, _ = stack
    with gw.h2() as c:
        st = c.start("POST", "/cont", end_stream=False,
                     headers=[("expect", "100-continue"), ("content-length", "5")])
        assert c.wait_for(lambda: st.informational or st.done), st
        assert st.informational == [100] and st.status is None, st
        c.send(st, b"hello", end_stream=True)
        assert c.wait(st, 5) and st.status == 200, st
        doc = st.json()
        assert doc["body_len"] == 5 and "expect" not in doc["headers"], doc


def test_expectations_other_than_100_continue_get_417(stack):
    """An Expect the gateway cannot meet gets 417 (RFC 9110 10.1.1), over HTTP/1.1 (with a
    close: its body is not read) and HTTP/2, and never reaches a pod. Before, "100-continue,
    foo" and "foo" went on to the pod, which the gateway had already answered 100 for."""
    gw, a, b = stack
    seen = len(a.requests()) + len(b.requests())
    for value in ("100-continue, foo", "foo"):
        with H1Conn(gw.port) as c:
            c.send(h1_request_bytes("POST", "/exp", gw.authority(),
                                    [("Expect", value), ("Content-Length", "5")])
                   .replace(b"Content-Length: 0\r\n", b"") + b"hello")
            r = c.read_response()
            err = error_json(417, "expectation_failed", r.status, r.headers, r.body)
            assert "100-continue" in err["message"], err
            assert c.closed_by_peer(5)
        with gw.h2() as c:
            r = c.request("POST", "/exp", headers=[("expect", value)], body=b"hello")
            error_json(417, "expectation_failed", r.status, r.headers, bytes(r.body))
            assert c.get("/after").status == 200  # the connection goes on
    assert len(a.requests()) + len(b.requests()) == seen + 2
    # a list is read as one: empty elements do not count (RFC 9110 5.6.1), and 100-continue
    # twice is 100-continue. Those got 417.
    for value in ("100-continue,", ", 100-continue", "100-continue, 100-continue"):
        with H1Conn(gw.port) as c:
            c.send(h1_request_bytes("POST", "/cont", gw.authority(),
                                    [("Expect", value), ("Content-Length", "5")])
                   .replace(b"Content-Length: 0\r\n", b""))
            assert c._line() == b"HTTP/1.1 100 Continue" and c._line() == b"", (value, c.buf)
            c.send(b"hello")
            r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == 5, (value, r)
        with gw.h2() as c:
            r = c.request("POST", "/exp", headers=[("expect", value)], body=b"hello")
            assert r.status == 200, (value, r)
    # refused at a field, an absolute-form request is logged with its target's host and path
    with H1Conn(gw.port) as c:
        c.send(b"GET http://%s/abs-417 HTTP/1.1\r\nHost: %s\r\nExpect: foo\r\n\r\n"
               % (gw.authority(HOST_B).encode(), gw.authority().encode()))
        assert c.read_response().status == 417
    wait_for(lambda: any(x["status"] == 417 and "abs-417" in x["path"] for x in gw.access()), 5,
             what="the 417's log line")
    rec = [x for x in gw.access() if x["status"] == 417 and "abs-417" in x["path"]][0]
    assert (rec["status"], rec["host"], rec["path"]) == (417, gw.authority(HOST_B), "/abs-417"), rec


def test_http10_expect_is_ignored(stack):
    """An HTTP/1.0 client's Expect: 100-continue is ignored (RFC 9110 10.1.1): the body is
    read as it comes, and the pod does not get the field. Before, it was forwarded."""
    gw, _, _ = stack
    with H1Conn(gw.port) as c:
        c.send(b"POST /exp10 HTTP/1.0\r\nHost: %s\r\nExpect: 100-continue\r\n"
               b"Content-Length: 5\r\n\r\nhello" % gw.authority().encode())
        r = c.read_response()
    doc = r.json()
    assert r.status == 200 and doc["body_len"] == 5 and "expect" not in doc["headers"], doc


def test_curl_http2_upgrade_offer_on_cleartext(stack):
    """curl --http2 on http:// offers Upgrade: h2c on its first request. The gateway answers
    it as plain HTTP/1.1 (as nginx does) and serves the next request on the connection: it
    used to answer that one 400 and drop it."""
    gw, _, _ = stack
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2", "-H", "host: " + HOST,
                        "-w", "%{http_code} %{http_version}\n",
                        "-o", "/dev/null", "http://127.0.0.1:%d/x" % gw.port,
                        "-o", "/dev/null", "http://127.0.0.1:%d/y" % gw.port],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["200 1.1", "200 1.1"], r.stdout
    gw.assert_alive()


def test_pod_answering_before_the_body_ends_frees_its_stream(procs):
    """An h2c pod that answers in full while the request body is still coming: the gateway
    forwards the answer and resets the pod's stream (NO_ERROR), which otherwise stayed open
    for good, holding one of the connection's streams."""
    a = procs.backend("pod-a", args=["--proto", "h2c"])
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       tls=False)

    def body():
        yield b"x" * 1000
        time.sleep(1.0)  # the pod has answered by now
        yield b"y" * 1000

    r = httpx.post("http://127.0.0.1:%d/early" % gw.port, content=body(),
                   headers={"host": HOST}, timeout=10)
    assert r.status_code == 200 and r.json()["path"] == "/early"
    wait_for(lambda: "rst h2c" in a.proc.stdout(), 5, what="the pod's stream reset")
    gw.assert_alive()


class EarlyAnswerPod(ThreadedPod):
    """An h2c pod. /early: answers 200 at the request's HEADERS and takes none of its body (its
    64 KiB windows stay as they are) until |open_early| is set, then opens that stream's
    window wide. Any other path: reads the body whole and answers with its length and the set
    of its bytes. |streams|: {stream id: [path, bytes, "end" | "reset" | None]}."""

    def __init__(self):
        self.open_early = threading.Event()
        self.streams = {}
        super().__init__()

    def serve(self, conn):
        c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, validate_inbound_headers=False))
        c.initiate_connection()
        conn.sendall(c.data_to_send())
        conn.settimeout(0.05)
        opened = set()
        while True:
            try:
                data = conn.recv(1 << 20)
                if not data:
                    return
            except socket.timeout:
                data = b""
            except OSError:
                return
            for ev in c.receive_data(data) if data else []:
                if isinstance(ev, h2.events.RequestReceived):
                    path = dict(ev.headers)[b":path"].decode()
                    self.streams[ev.stream_id] = [path, b"", None]
                    if path == "/early":
                        c.send_headers(ev.stream_id, [(":status", "200"),
                                                      ("content-length", "5")])
                        c.send_data(ev.stream_id, b"early", end_stream=True)
                elif isinstance(ev, h2.events.DataReceived):
                    st = self.streams[ev.stream_id]
                    st[1] += ev.data
                    if st[0] != "/early":
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif ev.flow_controlled_length:  # the connection's share: others go on
                        c.increment_flow_control_window(ev.flow_controlled_length)
                elif isinstance(ev, h2.events.StreamEnded):
                    st = self.streams[ev.stream_id]
                    st[2] = "end"
                    if st[0] != "/early":
                        body = json.dumps({"len": len(st[1]),
                                           "bytes": sorted(set(st[1].decode()))}).encode()
                        c.send_headers(ev.stream_id, [(":status", "200"),
                                                      ("content-length", str(len(body)))])
                        c.send_data(ev.stream_id, body, end_stream=True)
                elif isinstance(ev, h2.events.StreamReset):
                    self.streams[ev.stream_id][2] = "reset"
            if self.open_early.is_set():
                for sid, st in self.streams.items():
                    if st[0] == "/early" and sid not in opened and st[2] is None:
                        opened.add(sid)
                        try:
                            c.increment_flow_control_window(1 << 24, sid)
                        except h2.exceptions.StreamClosedError:
                            pass
            out = c.data_to_send()
            if out:
                conn.sendall(out)


def test_pod_answering_before_the_whole_body_reached_it(procs):
    """The client sent its whole 500 kB body to the gateway; the pod answered in full after
    64 KiB of it (its window). The gateway resets the pod's stream (NO_ERROR): it used to end
    it after an empty DATA frame, a request shorter than its content-length, which strict
    servers answer by dropping the connection, other requests on it included. Worse, the
    pod's stream still read the exchange's body buffer after the exchange was over: when the
    pod then opened its window, it received the next request's body (another client's), and
    that request stalled."""
    pod = EarlyAnswerPod()
    try:
        gw = procs.gateway(routes_doc({"s": [pod.addr]}, [("digits", "production", "s")]),
                           conf={"workers": 1}, tls=False)
        with gw.h2() as a:
            r = a.request("POST", "/early", body=b"A" * 500000,
                          headers=[("content-length", "500000")])
            assert r.status == 200 and bytes(r.body) == b"early", r
        early = [sid for sid, st in pod.streams.items() if st[0] == "/early"][0]
        # another client's upload, on the exchange (and body buffer) the first one left, while
        # the pod opens the first stream's window
        threading.Timer(0.3, pod.open_early.set).start()
        with gw.h2() as b:
            r = b.request("POST", "/count", body=b"B" * 2000000,
                          headers=[("content-length", "2000000")], timeout=20)
            assert r.status == 200, r
            assert r.json() == {"len": 2000000, "bytes": ["B"]}, r.json()
        wait_for(lambda: pod.streams[early][2] is not None, 5, what="the early stream's end")
        path, got, how = pod.streams[early]
        assert how == "reset" and set(got) <= {ord("A")} and len(got) < 500000, (
            how, len(got), set(got))
    finally:
        pod.close()
    gw.assert_alive()


def test_paused_http1_pod_connection_is_not_pooled_paused(procs):
    """A client that reads nothing (an HTTP/2 client that never opens its window) makes the
    gateway stop reading from the pod once 256 KiB wait on each side. An answer whose end is
    already in the gateway's last read completes anyway; its HTTP/1.1 pod connection went back
    to the pool with reading still off, and the next request on it hung until first_byte (a
    504 after 30 s). Answers of these sizes end in the read that crosses the mark (found by a
    sweep; several of them hit before the fix, in both the optimised and sanitizer builds)."""
    pod = procs.backend("pod-h1", args=["--proto", "http1"])
    gw = procs.gateway(routes_doc({"s": ([pod], "http1")}, [("digits", "production", "s")]),
                       conf={"workers": 1}, tls=False)

    def probe():
        return httpx.get("http://127.0.0.1:%d/probe" % gw.port, headers={"host": HOST},
                         timeout=3).status_code

    assert probe() == 200
    for n in range(576000, 604000, 1024):
        sock = socket.create_connection(("127.0.0.1", gw.port))
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":path", "/bytes?n=%d" % n), (":scheme", "http"),
                           (":authority", HOST)], end_stream=True)
        sock.sendall(c.data_to_send())
        time.sleep(0.2)  # the gateway reads what it will, and pauses
        try:
            assert probe() == 200, n
        finally:
            sock.close()
    gw.assert_alive()


def test_slow_client_does_not_stall_others_on_a_shared_pod_connection(procs):
    """One client that reads nothing (HTTP/2, windows never opened) with 30 big downloads
    holds up to a stream window of data per stream at the gateway. That used to count against
    the pod connection's window, which every stream on it shares: once about 21 such streams
    filled it, another client's download through the same connection got its head and then
    nothing. The connection window now reopens at once; only the slow stream's own waits."""
    pod = procs.backend("pod-a", args=["--proto", "h2c"])
    gw = procs.gateway(routes_doc({"s": [pod]}, [("digits", "production", "s")]),
                       conf={"workers": 1}, tls=False)
    slow = socket.create_connection(("127.0.0.1", gw.port))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    for i in range(30):
        c.send_headers(1 + 2 * i, [(":method", "GET"), (":path", "/bytes?n=4000000"),
                                   (":scheme", "http"), (":authority", HOST)], end_stream=True)
    slow.sendall(c.data_to_send())
    try:
        time.sleep(1.0)  # the gateway fills what the slow client's streams may hold
        r = httpx.get("http://127.0.0.1:%d/bytes?n=1000000" % gw.port, headers={"host": HOST},
                      timeout=10)
        assert r.status_code == 200 and len(r.content) == 1000000
    finally:
        slow.close()
    gw.assert_alive()


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_upstream_connections_reused(both_upstreams, host):
    gw, _, _ = both_upstreams
    conns = set()
    with gw.h2() as c:
        for i in range(30):
            conns.add(c.get("/reuse/%d" % i, authority=gw.authority(host)).json()["conn_id"])
    for i in range(10):
        conns.add(h1(gw, "GET", "/reuse-h1/%d" % i, host=host).json()["conn_id"])
    # one pool per worker (2 workers): 40 sequential requests need at most 2 connections
    assert len(conns) <= 2, "%d upstream connections for 40 sequential requests" % len(conns)


def test_tls_without_alpn_is_http11(stack):
    gw, _, _ = stack
    ctx = ssl.create_default_context(cafile=gw.procs.tls["ca"])  # no ALPN offered
    with H1Conn(gw.tls_port, tls_ctx=ctx, server_name=HOST) as c:
        assert c.sock.selected_alpn_protocol() is None
        c.send(h1_request_bytes("GET", "/no-alpn", gw.authority(tls=True)))
        r = c.read_response()
    assert r.status == 200 and r.json()["path"] == "/no-alpn"
    assert r.json()["headers"]["x-forwarded-proto"] == "https"


def test_tls_early_answer_then_late_body(stack):
    """Over TLS too, a client still sending its body after the gateway's early answer (404 for
    an unknown host, Connection: close) keeps sending without error and reads the answer: the
    gateway lingers, reading and dropping, instead of closing on unread input (which resets
    the connection and can destroy the answer before the client reads it)."""
    gw, _, _ = stack
    ctx = ssl.create_default_context(cafile=gw.procs.tls["ca"])
    with H1Conn(gw.tls_port, tls_ctx=ctx, server_name=HOST) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: nosuchapp-production.%s\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" % DOMAIN.encode())
        time.sleep(0.3)  # answered and flushed by now
        chunk = b"%x\r\n%s\r\n" % (65536, b"b" * 65536)
        for _ in range(8):
            c.sock.sendall(chunk)
            time.sleep(0.02)
        c.sock.sendall(b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 404 and r.headers.get("connection") == "close"
    gw.assert_alive()


def test_tls13_prefers_aes128_gcm(stack):
    """A client offering OpenSSL's default TLS 1.3 suites (AES-256 first) gets AES-128-GCM: the
    gateway's preference, as cheap as TLS 1.3 gets on AES-NI machines."""
    gw, _, _ = stack
    ctx = ssl.create_default_context(cafile=gw.procs.tls["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with H1Conn(gw.tls_port, tls_ctx=ctx, server_name=HOST) as c:
        assert c.sock.version() == "TLSv1.3"
        assert c.sock.cipher()[0] == "TLS_AES_128_GCM_SHA256", c.sock.cipher()


def test_curl_http2_upgrade_attempt_on_cleartext(stack):
    """curl --http2 on http:// asks for an h2c upgrade; answering 101 or plain HTTP/1.1 are
    both fine, hanging or failing is not."""
    gw, _, _ = stack
    status, version, _, body = curl(gw, "/upgrade", mode="h2", timeout=10)
    assert status == 200 and version in ("1.1", "2"), (status, version)
    assert json.loads(body)["path"] == "/upgrade"
    status, version, _, body = curl(gw, "/upgrade-post", "--data-binary", "abc", mode="h2",
                                    timeout=10)
    assert status == 200 and json.loads(body)["body_len"] == 3


# --- quick start: command-line flags only -------------------------------------------------------


def test_cli_quick_start_h2c_pods(procs):
    a = procs.backend("pod-a")
    b = procs.backend("pod-b")
    p1, p2, tp = free_port(), free_port(), free_port()
    log = os.path.join(procs.dir, "quick-access.log")
    gw = procs.gateway_cli(["--listen", "127.0.0.1:%d" % p1, "--listen", "127.0.0.1:%d" % p2,
                            "--tls-listen", "127.0.0.1:%d" % tp, "--cert", procs.tls["cert"],
                            "--key", procs.tls["key"], "--backend", "%s,%s" % (a.addr, b.addr),
                            "--workers", "1", "--access-log", log, "--log-level", "debug"],
                           [p1, p2, tp])
    pods = []
    for port in (p1, p2):
        with H2Client("127.0.0.1", port, authority="anything.example:%d" % port) as c:
            for i in range(4):
                r = c.get("/quick/%d" % i)
                assert r.status == 200, r
                pods.append(r.json()["pod"])
    assert sorted(set(pods)) == ["pod-a", "pod-b"] and pods.count("pod-a") == 4, pods
    with H2Client("127.0.0.1", tp, authority="localhost:%d" % tp, tls=True,
                  cafile=procs.tls["ca"], server_name="localhost") as c:
        r = c.get("/quick-tls")
        assert r.status == 200 and r.json()["headers"]["x-forwarded-proto"] == "https"
    wait_for(lambda: len(read_jsonl(log)) >= 9, 5, what="9 lines in the --access-log file")
    assert gw.alive()


def test_cli_quick_start_http1_pods(procs):
    h = procs.backend("pod-h1", proto="http1")
    port = free_port()
    procs.gateway_cli(["--listen", "127.0.0.1:%d" % port, "--backend", h.addr,
                       "--backend-proto", "http1", "--workers", "2"], [port])
    with H2Client("127.0.0.1", port, authority="x.example") as c:
        r = c.request("POST", "/quick-h1", body=b"abc" * 100)
        assert r.status == 200 and r.json()["proto"] == "http/1.1", r
        assert r.json()["body_len"] == 300
    with H1Conn(port) as c:
        c.send(h1_request_bytes("GET", "/quick-h1", "x.example"))
        r = c.read_response()
        assert r.status == 200 and r.json()["proto"] == "http/1.1"


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_request_body_streams_upstream(both_upstreams, host):
    """The request reaches the backend while the client is still sending its body."""
    gw, a, h = both_upstreams
    pod = a if host == HOST else h
    first = os.urandom(100000)
    rest = os.urandom(200000)
    with gw.h2() as c:
        st = c.start("POST", "/streamed-up", authority=gw.authority(host),
                     headers=[("content-length", str(len(first) + len(rest)))], end_stream=False)
        assert c.send(st, first)

        def arrived():
            c.pump(0.05)
            return any(r[2] == "/streamed-up" for r in pod.requests())
        wait_for(arrived, 5, what="the request to reach the backend before its body ended")
        assert c.send(st, rest, end_stream=True)
        assert c.wait(st, 10), st
        assert st.status == 200
        doc = st.json()
        assert doc["body_len"] == len(first) + len(rest)
        assert doc["body_sha256"] == hashlib.sha256(first + rest).hexdigest()


# --- limits on what pods answer and on what the gateway forwards --------------------------------


@pytest.fixture
def limits_stack(procs):
    """both_upstreams, with the admin listener (metrics) and request heads up to 256 KiB."""
    a = procs.backend("pod-a", proto="h2c")
    h = procs.backend("pod-h1", proto="http1")
    admin = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a], "svc-h": ([h], "http1")},
                                  [("digits", "production", "svc-a"),
                                   ("digits", "staging", "svc-h")]),
                       conf={"admin": {"listen": "127.0.0.1:%d" % admin},
                             "limits": {"max_header_list_size": 256 * 1024}})
    gw.admin_port = admin
    return gw


def pod_failures(gw, service):
    """modelgate_pod_failures_total of |service|'s pods, summed."""
    text = httpx.get("http://127.0.0.1:%d/metrics" % gw.admin_port, timeout=5).text
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("modelgate_pod_failures_total{") and
               'service="%s"' % service in line)


def fields(pairs, prefix):
    return [k for k, _ in pairs if k.startswith(prefix)]


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_response_head_with_too_many_fields_is_502(limits_stack, host):
    """A pod's response head with more fields than the gateway passes on (128) is never cut: the
    client gets a 502 JSON error, the attempt counts as a failure of the pod, the access log says
    why. 100 fields pass whole."""
    gw = limits_stack
    svc = "svc-a" if host == HOST else "svc-h"
    want = ["x-h-%d" % i for i in range(100)]
    with gw.h2() as c:
        r = c.get("/headers?n=100", authority=gw.authority(host))
        assert r.status == 200, r
        assert fields(r.header_list, "x-h-") == want and r.headers["x-h-99"] == "v99"
        r = c.get("/headers?n=200", authority=gw.authority(host))
        error_json(502, "upstream_headers_too_large", r.status, r.headers, bytes(r.body))
        assert c.get("/after", authority=gw.authority(host)).status == 200
    r = h1(gw, "GET", "/headers?n=100", host=host)
    assert r.status == 200 and fields(r.header_list, "x-h-") == want, r
    r = h1(gw, "GET", "/headers?n=200", host=host)
    error_json(502, "upstream_headers_too_large", r.status, r.headers, r.body)
    lines = gw.wait_access(5)
    bad = [(ln["status"], ln["error"]) for ln in lines if ln["path"] == "/headers?n=200"]
    assert bad == [(502, "upstream_headers_too_large")] * 2, lines
    assert pod_failures(gw, svc) == 2
    gw.assert_alive()


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_response_trailers_with_too_many_fields_abort(limits_stack, host):
    """Trailers with more fields than the gateway passes on come after the head went out: the
    client's stream is reset (HTTP/2), its connection closed before the last chunk (HTTP/1.1),
    the access log says why; never trailers silently cut. 100 trailer fields pass whole."""
    gw = limits_stack
    svc = "svc-a" if host == HOST else "svc-h"
    want = ["x-trailer-a"] + ["x-t-%d" % i for i in range(100)]
    te = [("te", "trailers")]
    with gw.h2() as c:
        r = c.get("/trailers?n=100", headers=te, authority=gw.authority(host))
        assert r.status == 200 and r.ended and r.reset_code is None, r
        assert sorted(r.trailers) == sorted(want), r.trailers
        r = c.get("/trailers?n=200", headers=te, authority=gw.authority(host))
        assert r.status == 200 and not r.ended and r.reset_code is not None, (r, r.trailers)
        assert c.get("/after", authority=gw.authority(host)).status == 200
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("GET", "/trailers?n=100", gw.authority(host), te))
        r = c.read_response()
        assert r.status == 200 and sorted(r.trailers) == sorted(want), r.trailers
        c.send(h1_request_bytes("GET", "/trailers?n=200", gw.authority(host), te))
        with pytest.raises(ConnectionError):
            r = c.read_response()
            pytest.fail("the response ended with %d trailer fields" % len(r.trailers))
    lines = gw.wait_access(5)
    bad = [(ln["status"], ln["error"]) for ln in lines if ln["path"] == "/trailers?n=200"]
    assert bad == [(200, "upstream_headers_too_large")] * 2, lines
    assert pod_failures(gw, svc) == 2
    gw.assert_alive()


@pytest.mark.parametrize("host", UPSTREAM_HOSTS, ids=["h2c-upstream", "http1-upstream"])
def test_request_head_over_64k_reaches_the_pod(limits_stack, host):
    """With limits.max_header_list_size at 256 KiB, a 100 KiB request head the gateway took from
    its client reaches the pod whole. Over h2c, nghttp2 sends no header block over 64 KiB unless
    told to (the client got a 502 upstream_reset, the pod blamed for the gateway's refusal)."""
    gw = limits_stack
    big = "b" * (100 * 1024)
    # curl over HTTP/1.1: one 100 KiB field (curl's HTTP/2 sends no head over 64 KiB)
    status, _, _, body = curl(gw, "/big-head", "-H", "x-big: " + big, mode="h1", host=host)
    assert status == 200, body[:300]
    assert len(json.loads(body)["headers"]["x-big"]) == len(big)
    # HTTP/2: two 50 KiB fields (nghttp2 takes no single field over 64 KiB)
    halves = [("x-big-1", big[:51200]), ("x-big-2", big[51200:])]
    with gw.h2() as c:
        r = c.get("/big-head", headers=halves, authority=gw.authority(host))
        assert r.status == 200, r
        seen = r.json()["headers"]
        assert (len(seen["x-big-1"]), len(seen["x-big-2"])) == (51200, 51200)
    gw.assert_alive()


def test_big_response_head_passes_to_http2_clients(stack):
    """A pod's response head of 40 fields of 4000 bytes (160 KB, over what the client stream's
    arena holds beside the request) reaches an HTTP/2 client whole: nghttp2 copies it when the
    arena cannot. It was reset (INTERNAL_ERROR) with no status and no log line."""
    gw, _, _ = stack
    with gw.h2() as c:
        r = c.get("/headers?n=40&size=4000")
        assert r.status == 200 and r.reset_code is None, r
        assert sum(1 for k, v in r.header_list if k.startswith("x-h-") and len(v) == 4000) == 40
    gw.assert_alive()


def test_pod_reset_after_part_of_the_body_reaches_the_client_cut(stack):
    """A pod's head, 1000 bytes of its body and its reset arrive in one read: the client gets
    the head and the 1000 bytes, then the reset, as the access log says (status 200,
    resp_bytes 1000, upstream_reset). The reset used to drop the frames queued in that turn."""
    gw, _, _ = stack
    with gw.h2() as c:
        r = c.get("/cut?n=1000")
        assert r.status == 200 and len(r.body) == 1000 and r.reset_code is not None, r
    line = [ln for ln in gw.wait_access(1) if ln["path"] == "/cut?n=1000"][0]
    assert (line["status"], line["resp_bytes"], line["error"]) == (200, 1000, "upstream_reset")


def tls_request_with_finished(gw, alpn, request):
    """A TLS 1.3 client that holds back its Finished and sends it in one write with its first
    application bytes (|request|, as |alpn| frames them), as clients in a hurry do: the
    gateway reads both at once. Returns everything the gateway answered, decrypted, until it
    closes or 2 s pass."""
    ctx = ssl.create_default_context(cafile=gw.procs.tls["ca"])
    ctx.set_alpn_protocols([alpn])
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname=HOST)
    sock = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out.pending:
                    sock.sendall(out.read())
                data = sock.recv(65536)
                assert data, "closed during the handshake"
                inc.write(data)
        assert tls.selected_alpn_protocol() == alpn
        finished = out.read()  # the client's last handshake flight, not sent yet
        tls.write(request)
        sock.sendall(finished + out.read())
        got = b""
        sock.settimeout(2)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                inc.write(data)
                try:
                    while True:  # every record that came
                        got += tls.read(1 << 20)
                except ssl.SSLWantReadError:
                    pass
                if b"/with-finished" in got:
                    break
        except (socket.timeout, ssl.SSLZeroReturnError):
            pass
        return got
    finally:
        sock.close()


def test_tls_request_in_the_handshakes_last_write(stack):
    """The client's Finished and its first request in one write: the gateway gets the request
    before the TLS library reports the handshake done, and must still start the protocol ALPN
    chose (not guess it from the bytes and then start it again), for HTTP/2 and HTTP/1.1."""
    gw, _, _ = stack
    authority = gw.authority(tls=True)
    for _ in range(5):
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                           (":path", "/with-finished")], end_stream=True)
        got = tls_request_with_finished(gw, "h2", c.data_to_send())
        events = c.receive_data(got)
        answers = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert answers and dict(answers[0].headers)[b":status"] == b"200", events
        assert b"/with-finished" in got, events
        got = tls_request_with_finished(gw, "http/1.1",
                                        h1_request_bytes("GET", "/with-finished", authority))
        assert got.startswith(b"HTTP/1.1 200") and b"/with-finished" in got, got[:300]
    gw.assert_alive()


# ---------------------------------------------------------------------------------------------
# interim (1xx) responses from pods (RFC 9110 15.2)

HINT = ("link", "</a.css>; rel=preload")


def interim_pod(raw_pods, proto, interims, h1_extra=b""):
    """A RawPod that answers every request with |interims| ((status, fields) of 1xx responses),
    then 200 with x-final: 1 (HTTP/1.1: body "ok"). |h1_extra|: raw field lines added to each
    interim head over HTTP/1.1 (fields an h2c pod could not send: nghttp2 rejects them)."""
    if proto == "h2c":
        return raw_pods("h2c", "200", fields=[("x-final", "1")], interims=interims)
    answer = b""
    for status, fields in interims:
        answer += b"HTTP/1.1 %s Interim\r\n" % status
        answer += b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in fields)
        answer += h1_extra + b"\r\n"
    return raw_pods("http1", 200, answer + b"HTTP/1.1 200 OK\r\nx-final: 1\r\ncontent-length: 2"
                                           b"\r\n\r\nok")


def interim_gateway(procs, pod, proto, conf=None):
    return procs.gateway(routes_doc({"svc": ([pod.addr], proto)},
                                    [("digits", "production", "svc")]),
                         conf=dict({"workers": 1}, **(conf or {})), tls=False)


def read_h1_head(c):
    """The next head on H1Conn |c|, raw: (status line, [(name, value)])."""
    line, fields = c._line(), []
    while True:
        h = c._line()
        if not h:
            return line, fields
        k, _, v = h.decode("latin-1").partition(":")
        fields.append((k.strip().lower(), v.strip()))


# a pod's hop-by-hop fields and content-length, which must not reach the client (RFC 9110 7.6.1,
# 8.6); HTTP/1.1 pods only, as nghttp2 refuses an h2c response that carries them
HOP_FIELDS = b"content-length: 0\r\nconnection: x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\n"
HOP_NAMES = {"content-length", "connection", "x-hop", "keep-alive"}


@pytest.mark.parametrize("proto", ["h2c", "http1"])
def test_pod_early_hints_reach_http2_clients(procs, raw_pods, proto):
    """A pod's 103 Early Hints reach an HTTP/2 client as an interim HEADERS frame before the
    final response (RFC 9110 15.2: a proxy forwards the 1xx it did not generate), without the
    pod's hop-by-hop fields or content-length; the final response follows intact and the access
    log has its status. Before, the gateway dropped every 1xx a pod sent."""
    pod = interim_pod(raw_pods, proto, [(b"103", [HINT, ("x-hint", "1")])], HOP_FIELDS)
    gw = interim_gateway(procs, pod, proto)
    with gw.h2() as c:
        r = c.get("/hints")
    assert r.status == 200 and r.headers.get("x-final") == "1", r
    assert bytes(r.body) == (b"ok" if proto == "http1" else b""), bytes(r.body)
    assert r.informational == [103], r.informational
    got = r.informational_lists[0]
    assert HINT in got and ("x-hint", "1") in got, got
    assert not HOP_NAMES & {k for k, _ in got}, got
    assert [ln["status"] for ln in gw.wait_access(1)] == [200]
    gw.assert_alive()


def test_pod_early_hints_never_indexed_fields_stay_so(procs, raw_pods):
    """A field an h2c pod sent never-indexed in its 103 reaches the HTTP/2 client never-indexed
    (RFC 7541 6.2.3), as the final response's fields do; the others do not."""
    secret = hpack.NeverIndexedHeaderTuple
    pod = raw_pods("h2c", "200", interims=[(b"103", [HINT, secret("x-hint-secret", "s3cret")])])
    gw = interim_gateway(procs, pod, "h2c")
    with gw.h2() as c:
        r = c.get("/hints")
    assert r.status == 200 and r.informational == [103], r
    got = {f[0]: f for f in r.informational_lists[0]}
    assert isinstance(got["x-hint-secret"], secret) and got["x-hint-secret"][1] == "s3cret", got
    assert not isinstance(got["link"], secret), got


@pytest.mark.parametrize("proto", ["h2c", "http1"])
def test_pod_early_hints_reach_http11_clients_not_http10(procs, raw_pods, proto):
    """An HTTP/1.1 client gets the pod's 103 head before the final response's, one for each of
    its pipelined requests and in their order, without the pod's hop-by-hop fields; an HTTP/1.0
    client gets none (RFC 9110 15.2: a server must not send it a 1xx), only the final answer."""
    pod = interim_pod(raw_pods, proto, [(b"103", [HINT])], HOP_FIELDS)
    gw = interim_gateway(procs, pod, proto)
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("GET", "/one", gw.authority()) +
               h1_request_bytes("GET", "/two", gw.authority()))
        for _ in range(2):
            line, fields = read_h1_head(c)
            assert line == b"HTTP/1.1 103 Early Hints", (line, fields, c.buf)
            assert fields == [HINT], fields
            r = c.read_response()
            assert r.status == 200 and r.headers.get("x-final") == "1", r.headers
    with H1Conn(gw.port) as c:
        c.send(b"GET /old HTTP/1.0\r\nHost: %s\r\n\r\n" % gw.authority().encode())
        assert c.closed_by_peer(5)
        got = bytes(c.buf)
    assert got.startswith(b"HTTP/1.1 200 ") and b" 103 " not in got, got
    gw.assert_alive()


@pytest.mark.parametrize("proto", ["h2c", "http1"])
def test_pod_100_continue_is_not_forwarded(procs, raw_pods, proto):
    """A pod's 100 Continue stays with the gateway, which answers Expect: 100-continue itself;
    the 103 that follows it and the final response reach HTTP/2 and HTTP/1.1 clients."""
    pod = interim_pod(raw_pods, proto, [(b"100", []), (b"103", [HINT])])
    gw = interim_gateway(procs, pod, proto)
    with gw.h2() as c:
        r = c.get("/cont")
    assert r.status == 200 and r.headers.get("x-final") == "1", r
    assert r.informational == [103], r.informational
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("GET", "/cont", gw.authority()))
        line, fields = read_h1_head(c)
        assert line == b"HTTP/1.1 103 Early Hints" and fields == [HINT], (line, fields)
        r = c.read_response()
    assert r.status == 200 and r.headers.get("x-final") == "1", r.headers
    gw.assert_alive()


@pytest.mark.parametrize("proto", ["h2c", "http1"])
def test_pod_interim_responses_are_capped(procs, raw_pods, proto):
    """A pod that sends more interim responses than a request passes on (8): the client gets
    the first 8, in order, then the final response; the rest are dropped with a debug line."""
    hints = [(b"103", [("link", "</%d.css>; rel=preload" % i)]) for i in range(12)]
    pod = interim_pod(raw_pods, proto, hints)
    gw = interim_gateway(procs, pod, proto, {"log_level": "debug"})
    want = [[("link", "</%d.css>; rel=preload" % i)] for i in range(8)]
    with gw.h2() as c:
        r = c.get("/flood")
    assert r.status == 200 and r.headers.get("x-final") == "1", r
    assert [[f for f in h if f[0] != ":status"] for h in r.informational_lists] == want, r
    with H1Conn(gw.port) as c:
        c.send(h1_request_bytes("GET", "/flood", gw.authority()))
        for fields in want:
            line, got = read_h1_head(c)
            assert line == b"HTTP/1.1 103 Early Hints" and got == fields, (line, got)
        r = c.read_response()
    assert r.status == 200 and r.headers.get("x-final") == "1", r.headers
    wait_for(lambda: "interim responses; the others are dropped" in gw.log(),
             what="the debug line on dropped interims")
    gw.assert_alive()


def _pp_v2_tcp4(src, sport, dst="198.51.100.1", dport=443, local=False):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 if local else 0x21, 0x11]) +
            struct.pack(">H", len(body)) + body)


def test_proxy_protocol_gives_the_client_address(procs):
    """With proxy_protocol, every client connection starts with a PROXY protocol header (v1 or
    v2, as HAProxy and the cloud L4 load balancers send), and the gateway takes the client's
    address from it: the access log's client and the pod's x-forwarded-for name the client, not
    the load balancer. Over cleartext (HTTP/1.1 and HTTP/2) and TLS (the header comes before
    the ClientHello). v2's LOCAL command (the load balancer's health checks) keeps the
    connection's own address. A connection without a valid header is closed unanswered."""
    a = procs.backend("pod-a")
    admin = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"proxy_protocol": True, "workers": 1,
                             "admin": {"listen": "127.0.0.1:%d" % admin}})

    def h1_over(sock, path):
        sock.sendall(h1_request_bytes("GET", path, gw.authority()))
        got = b""
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + \
                int(got.split(b"content-length: ")[1].split(b"\r\n")[0]):
            d = sock.recv(65536)
            assert d, "closed before the answer: %r" % got
            got += d
        assert got.startswith(b"HTTP/1.1 200"), got
        return json.loads(got.split(b"\r\n\r\n", 1)[1])

    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 203.0.113.7 198.51.100.1 56324 443\r\n")
        assert h1_over(s, "/v1")["headers"]["x-forwarded-for"] == "203.0.113.7"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(_pp_v2_tcp4("192.0.2.44", 40000))
        assert h1_over(s, "/v2")["headers"]["x-forwarded-for"] == "192.0.2.44"
    ctx = ssl.create_default_context(cafile=procs.tls["ca"])
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as raw:
        raw.sendall(b"PROXY TCP6 2001:db8::7 2001:db8::1 1234 443\r\n")
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert h1_over(s, "/tls")["headers"]["x-forwarded-for"] == "2001:db8::7"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 203.0.113.8 198.")  # a header cut in two
        time.sleep(0.1)
        s.sendall(b"51.100.1 1000 443\r\n")
        assert h1_over(s, "/split")["headers"]["x-forwarded-for"] == "203.0.113.8"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        tlvs = bytes([0x04, 0x03, 0xe5]) + b"\0" * 997  # one NOOP TLV of 997 bytes
        h = _pp_v2_tcp4("192.0.2.45", 40001)
        s.sendall(h[:14] + struct.pack(">H", 12 + len(tlvs)) + h[16:] + tlvs)
        assert h1_over(s, "/tlvs")["headers"]["x-forwarded-for"] == "192.0.2.45"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(_pp_v2_tcp4("192.0.2.44", 40000, local=True))
        assert h1_over(s, "/local")["headers"]["x-forwarded-for"] == "127.0.0.1"
    # HTTP/2 prior knowledge after the header, in the same segment
    c = H2Client("127.0.0.1", gw.port, authority=gw.authority(), connect=False)
    c.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    c.sock.sendall(b"PROXY TCP4 203.0.113.9 198.51.100.1 5555 80\r\n")
    c.conn.initiate_connection()
    c.flush()
    with c:
        r = c.get("/h2")
        assert r.status == 200 and r.json()["headers"]["x-forwarded-for"] == "203.0.113.9"
    log = {l["path"]: l["client"] for l in gw.wait_access(7)}
    assert log == {"/v1": "203.0.113.7:56324", "/v2": "192.0.2.44:40000",
                   "/tls": "[2001:db8::7]:1234", "/split": "203.0.113.8:1000",
                   "/tlvs": "192.0.2.45:40001", "/h2": "203.0.113.9:5555",
                   "/local": log.get("/local")}, log
    assert log["/local"].startswith("127.0.0.1:")

    for bad in (h1_request_bytes("GET", "/no-header", gw.authority()),
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 443\r\n",
                b"PROXY TCP4 1.2.3.4\r\nGET / HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(bad)
            try:  # closed with the request unread: a reset, or an end of file
                got = s.recv(4096)
            except ConnectionResetError:
                got = b""
            assert got == b"", "answered without a valid PROXY header: %r" % bad
    assert not [l for l in gw.access() if l["path"] == "/no-header"]

    # clients that leave halfway through their header are let go at once, not after 10 s
    def conns():
        r = httpx.get("http://127.0.0.1:%d/metrics" % admin, timeout=5)
        return sum(int(float(l.rsplit(" ", 1)[1])) for l in r.text.splitlines()
                   if l.startswith("modelgate_worker_connections{"))
    before = conns()
    for i in range(10):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"PROXY TCP4 1.2")
    wait_for(lambda: conns() == before, 2, what="the half-headers' connections closed")
    gw.assert_alive()


def test_trusted_proxy_keeps_its_forwarded_proto(procs):
    """Behind a TLS-terminating load balancer listed in trusted_proxies, the pod gets the
    scheme the balancer's client used: its x-forwarded-proto, when it names exactly one of
    http and https. The gateway overwrote it with its own (http), so pods never saw https.
    From any other peer, or with a list, an unknown scheme or two fields, the gateway's own."""
    a = procs.backend("pod-a")
    routes = routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")])
    gw = procs.gateway(routes, conf={"trusted_proxies": ["127.0.0.0/8"], "workers": 1})
    plain = procs.gateway(routes, conf={"workers": 1}, name="plain")
    cases = [  # (x-forwarded-proto fields, what the pod gets from gw)
        (["https"], "https"), (["HTTPS "], "https"), (["http"], "http"), ([], "http"),
        (["https, http"], "http"), (["wss"], "http"), (["https", "https"], "http")]
    for fields, want in cases:
        hdrs = [("x-forwarded-proto", v) for v in fields]
        for g, expect in ((gw, want), (plain, "http")):
            with g.h2() as c:
                got = [v for k, v in c.get("/xfp", headers=hdrs).json()["header_list"]
                       if k == "x-forwarded-proto"]
            assert got == [expect], (g is gw, fields, got)
            got = [v for k, v in h1(g, "GET", "/xfp", headers=hdrs).json()["header_list"]
                   if k == "x-forwarded-proto"]
            assert got == [expect], ("http/1.1", g is gw, fields, got)


def test_trusted_proxies_name_the_client(procs, tmp_path):
    """Behind HTTP proxies the operator lists in trusted_proxies, the client is the nearest
    x-forwarded-for entry that is not one of them (as nginx's real_ip_recursive): the access
    log's client says so, and consistent hashing on the client's address uses it. Entries to
    the left of it are the client's own words and are not taken; a peer that is not trusted is
    the client whatever it sends (an IPv6 network such as ::/0 trusts no IPv4 peer). Requests
    the gateway refuses itself are logged the same way when their whole head was read, with
    the peer when it was not (431: the field a proxy appended may be among those dropped). The
    connection's own address is then logged as "peer". The pod still gets the whole chain with
    the peer appended. Over HTTP/2 and HTTP/1.1, where
    each x-forwarded-for line is a field."""
    a = procs.backend("pod-a")
    routes = routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")])
    gw = procs.gateway(routes, conf={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"],
                                     "workers": 1, "limits": {"max_headers": 20}})
    plain = procs.gateway(routes, conf={"workers": 1}, name="plain")
    other = procs.gateway(routes, conf={"workers": 1, "trusted_proxies": ["10.0.0.0/8", "::/0"]},
                          name="other")
    cases = [  # (path, x-forwarded-for fields, the client logged: None = the peer)
        ("/chain", ["1.1.1.1, 203.0.113.9, 10.0.0.5"], "203.0.113.9"),
        ("/fields", ["198.51.100.1", "203.0.113.10:5050", "10.1.1.1"], "203.0.113.10"),
        ("/v6", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("/all-trusted", ["10.2.2.2, 10.3.3.3"], "10.2.2.2"),
        ("/empty-entries", ["203.0.113.12,, 10.0.0.6,"], "203.0.113.12"),
        ("/garbage", ["unknown"], None),
        ("/garbage-later", ["203.0.113.11, _hidden, 10.4.4.4"], "10.4.4.4"),
        ("/none", [], None),
    ]
    want = {}
    for g in (gw, plain, other):
        for http2 in (True, False):
            with httpx.Client(http2=http2, http1=not http2, timeout=10) as c:
                for path, xff, client in cases:
                    path = ("/h2" if http2 else "/h1") + path
                    r = c.get("http://127.0.0.1:%d%s" % (g.port, path),
                              headers=[("host", g.authority())] +
                              [("x-forwarded-for", v) for v in xff])
                    assert r.status_code == 200 and r.http_version == (
                        "HTTP/2" if http2 else "HTTP/1.1"), r
                    sent = r.json()["headers"]["x-forwarded-for"]
                    assert sent == ", ".join(xff + ["127.0.0.1"]), (path, sent)
                    want[g, path] = client if g is gw else None
    # refused by the gateway itself: a whole head (400, :authority and host differ), and one
    # over limits.max_headers (431)
    with gw.h2(validate=False) as c:
        st = c.start("GET", "/rejected-400", authority=HOST, headers=[
            ("host", "other-production." + DOMAIN), ("x-forwarded-for", "203.0.113.20")])
        assert c.wait(st, 5) and st.status == 400, st
    want[gw, "/rejected-400"] = "203.0.113.20"
    with gw.h2() as c:
        r = c.get("/rejected-431", headers=[("x-forwarded-for", "203.0.113.21")] +
                  [("x-f%d" % i, "v") for i in range(30)])
        assert r.status == 431, r
    want[gw, "/rejected-431"] = None
    for g in (gw, plain, other):
        paths = {p for (h, p) in want if h is g}
        log = {l["path"]: l for l in g.wait_access(len(paths))}
        for path in paths:
            client, peer = log[path]["client"], log[path].get("peer")
            if want[g, path]:  # the connection's own address is kept as "peer"
                assert client == want[g, path], (g.dir, path, client)
                assert re.fullmatch(r"127\.0\.0\.1:\d+", peer or ""), (g.dir, path, peer)
            else:
                assert re.fullmatch(r"127\.0\.0\.1:\d+", client), (g.dir, path, client)
                assert peer is None, (g.dir, path, peer)

    # consistent hashing on client_ip: one client through any trusted chain keeps its pod, and
    # different clients behind the same proxy spread (all would be 127.0.0.1 otherwise)
    b = procs.backend("pod-b")
    hashed = routes_doc({"svc-a": [a, b]}, [("digits", "production", "svc-a")])
    hashed["services"]["svc-a"].update(policy="consistent_hash", hash_key="client_ip")
    hg = procs.gateway(hashed, conf={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"],
                                     "workers": 1}, name="hashed")
    with httpx.Client(http2=True, timeout=10) as c:
        def pod(xff):
            r = c.get("http://127.0.0.1:%d/h" % hg.port,
                      headers={"host": hg.authority(), "x-forwarded-for": xff})
            assert r.status_code == 200, r.text
            return r.json()["pod"]
        assert len({pod("203.0.113.9, 10.0.0.%d" % i) for i in range(1, 9)}) == 1
        assert {pod("203.0.113.%d" % i) for i in range(1, 41)} == {"pod-a", "pod-b"}

    conf = tmp_path / "gateway.json"
    conf.write_text(json.dumps({"listen": ["127.0.0.1:%d" % free_port()],
                                "trusted_proxies": ["10.0.0.0/8", "10.0.0.1/8", "nope", 7]}))
    r = subprocess.run([GATEWAY_BIN, "--check-config", str(conf), "--backend", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1, r.stderr
    for want in ('trusted_proxies[1]: invalid network "10.0.0.1/8" (host bits set',
                 'trusted_proxies[2]: invalid network "nope" (not an IPv4 or IPv6 address)',
                 "trusted_proxies[3]:"):
        assert want in r.stderr, r.stderr
