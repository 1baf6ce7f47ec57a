"""
1000 concurrent streams on one HTTP/2 connection: h2load (-c 1 -m 1000) and a python h2 client
that opens all 1000 streams before reading any answer; every one must be a 200 carrying its own
answer. The gateway is configured with max_concurrent_streams = 1000. And a worker out of file
descriptors pauses accepting instead of spinning, as does one at limits.max_client_conns.
"""

import os
import re
import resource
import socket
import time

import httpx
import pytest

from conftest import free_port, h2load, routes_doc

N = 1000


@pytest.fixture
def stack(procs):
    a = procs.backend("pod-a", proto="h2c")
    b = procs.backend("pod-b", proto="h2c")
    gw = procs.gateway(routes_doc({"svc": [a, b]}, [("digits", "production", "svc")]),
                       conf={"limits": {"max_concurrent_streams": N}}, tls=False)
    return gw, a, b


def test_h2load_1000_streams_one_connection(stack):
    gw, a, b = stack
    counts, ok_2xx = h2load(gw, "-n", str(N), "-c", "1", "-m", str(N), path="/conc")
    assert counts == (N, N, N, N, 0), counts
    assert ok_2xx == N, "%s of %d answers were 2xx" % (ok_2xx, N)
    served = len(a.requests()) + len(b.requests())
    assert served == N, "backends saw %d requests" % served


def test_python_h2_1000_streams_at_once(stack):
    gw, a, b = stack
    with gw.h2(timeout=60) as c:
        # learn the server's settings first
        assert c.wait_settings(), "no SETTINGS from the gateway"
        advertised = c.conn.remote_settings.max_concurrent_streams
        assert advertised >= N, "gateway advertises SETTINGS_MAX_CONCURRENT_STREAMS=%s" % advertised
        streams = [c.start("GET", "/each/%d" % i) for i in range(N)]
        assert c.wait(streams, 60), [s for s in streams if not s.done][:5]
    bad = [s for s in streams if s.status != 200 or not s.ended]
    assert not bad, "%d of %d streams failed, e.g. %r" % (len(bad), N, bad[:5])
    for i, s in enumerate(streams):
        assert s.json()["path"] == "/each/%d" % i
    pods = [s.json()["pod"] for s in streams]
    print("split:", {p: pods.count(p) for p in set(pods)})
    assert set(pods) == {"pod-a", "pod-b"}


def test_h2load_many_connections(stack):
    gw, _, _ = stack
    counts, ok2xx = h2load(gw, "-n", "4000", "-c", "40", "-m", "20")
    assert counts == (4000, 4000, 4000, 4000, 0) and ok2xx == 4000, counts


def test_h2load_http11_connections(stack):
    gw, _, _ = stack
    counts, ok2xx = h2load(gw, "--h1", "-n", "2000", "-c", "50")
    assert counts == (2000, 2000, 2000, 2000, 0) and ok2xx == 2000, counts


def test_settings_follow_limits(procs):
    a = procs.backend("pod-a", proto="h2c")
    gw = procs.gateway(routes_doc({"svc": [a]}, [("digits", "production", "svc")]),
                       conf={"limits": {"max_concurrent_streams": 7, "stream_window": 262144,
                                        "max_header_list_size": 20000}}, tls=False)
    with gw.h2() as c:
        assert c.wait_settings()
        rs = c.conn.remote_settings
        assert rs.max_concurrent_streams == 7
        assert rs.initial_window_size == 262144
        assert rs.max_header_list_size == 20000
        # 7 streams at once are fine
        streams = [c.start("GET", "/slow?ms=300") for _ in range(7)]
        assert c.wait(streams, 10)
        assert all(s.status == 200 for s in streams), streams


def _cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _accept_lines(gw):
    return sum(1 for ln in gw.proc.stderr().splitlines() if "accept" in ln)


def test_out_of_descriptors_pauses_accepting(procs):
    """accept() failing with EMFILE leaves the connection queued, so the listener stays
    readable: the worker must pause accepting (no busy loop, a line a second at most, naming the
    error and the limit) and serve again once descriptors are free."""
    a = procs.backend("pod-a", proto="h2c")
    gw = procs.gateway(routes_doc({"svc": [a]}, [("digits", "production", "svc")]),
                       conf={"workers": 1}, tls=False)
    with gw.h2() as c:
        assert c.get("/warm").status == 200  # the pod connection exists before the squeeze
    soft, hard = resource.prlimit(gw.pid, resource.RLIMIT_NOFILE)
    assert soft == hard, (soft, hard)  # raised to the hard limit at start
    used = len(os.listdir("/proc/%d/fd" % gw.pid))
    socks = []
    try:
        resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (used + 3, hard))
        socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(20)]
        time.sleep(0.3)
        lines0, cpu0 = _accept_lines(gw), _cpu_seconds(gw.pid)
        time.sleep(1.0)
        spent, lines = _cpu_seconds(gw.pid) - cpu0, _accept_lines(gw) - lines0
    finally:
        for s in socks:
            s.close()
        resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert lines <= 3, "%d accept lines in a second" % lines
    assert spent < 0.5, "%.2f s of CPU in 1 s while out of descriptors" % spent
    assert "Too many open files (open-files limit %d" % (used + 3) in gw.proc.stderr()
    with gw.h2() as c:
        assert c.get("/after").status == 200


def test_client_connection_limit(procs):
    """limits.max_client_conns (HAProxy's maxconn): with 2 connections held, a third one waits
    in the listen queue, unanswered, until one of them closes; the pause is logged and counted
    in /metrics. The queue holds hundreds of connections."""
    a = procs.backend("pod-a", proto="h2c")
    admin = free_port()
    gw = procs.gateway(routes_doc({"svc": [a]}, [("digits", "production", "svc")]),
                       conf={"workers": 1, "limits": {"max_client_conns": 2},
                             "admin": {"listen": "127.0.0.1:%d" % admin}}, tls=False)
    host = gw.authority()
    request = ("GET /held HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode()

    def answered(s):
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            assert chunk, "closed before an answer: %r" % got
            got += chunk
        return got.split(b"\r\n", 1)[0]

    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(2)]
    third = None
    try:
        for s in held:  # both accepted and served: the worker holds 2
            s.sendall(request)
            assert answered(s) == b"HTTP/1.1 200 OK"
        third = socket.create_connection(("127.0.0.1", gw.port), timeout=5)  # the kernel accepts it
        third.sendall(request)
        third.settimeout(1.0)
        with pytest.raises(socket.timeout):
            third.recv(4096)  # not accepted: no answer
        m = httpx.get("http://127.0.0.1:%d/metrics" % admin, timeout=5).text
        assert 'modelgate_worker_connections{worker="0"} 2' in m, m
        # >= 1: the harness's own probes for the listener may have reached the limit already
        pauses = re.search(r'modelgate_worker_accept_pauses_total\{worker="0",reason="limit"\} (\d+)', m)
        assert pauses and int(pauses.group(1)) >= 1, m
        assert 'modelgate_worker_accept_pauses_total{worker="0",reason="error"} 0' in m, m
        assert "its limit (limits.max_client_conns)" in gw.proc.stderr()
        # meanwhile new connections wait in the listen queue, up to somaxconn (4096 at most),
        # not libevent's default 128: past that the kernel drops SYNs and clients wait
        # seconds for retransmits
        queued = []
        try:
            for _ in range(300):
                queued.append(socket.create_connection(("127.0.0.1", gw.port), timeout=2))
        except OSError as e:
            pytest.fail("only %d connections fit in the listen queue (%r)" % (len(queued), e))
        finally:
            for s in queued:
                s.close()
        held.pop().close()
        third.settimeout(5)
        assert answered(third) == b"HTTP/1.1 200 OK"  # accepted once one closed
    finally:
        for s in held + ([third] if third else []):
            s.close()
