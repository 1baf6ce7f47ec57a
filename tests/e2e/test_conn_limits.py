"""
Connection limits per pod (gateway.json upstream.max_conns_per_pod, upstream.max_pending_per_pod;
Envoy's max_connections / max_pending_requests): at the cap requests wait for a free connection
instead of opening more, a full queue overflows to another pod or to 503 upstream_overflow, and a
queued request keeps its timeouts and is never sent once its client cancelled it. The pods
(backend.py) report the most connections they had open at once ("peak-conns N").
"""

import time

import httpx
import pytest

from conftest import error_json, free_port, h2load, routes_doc, wait_for
from h2client import Stream


def stack(procs, pods, proto, upstream, conf=None):
    """A gateway with one worker (so that one worker's pool holds every connection) in front of
    |pods| (one service, protocol |proto|: "http1" or "h2c"), with gateway.json upstream
    settings |upstream|."""
    base = {"workers": 1, "upstream": upstream}
    base.update(conf or {})
    return procs.gateway(routes_doc({"svc": (pods, proto)}, [("digits", "production", "svc")]),
                         conf=base, tls=False)


def run_concurrent(gw, paths, timeout=30):
    """Starts every path at once on one HTTP/2 connection; returns the finished streams."""
    with gw.h2(timeout=timeout) as c:
        streams = [c.start("GET", p) for p in paths]
        assert c.wait(streams, timeout), [s for s in streams if not s.done][:5]
    return streams


@pytest.mark.parametrize("cap,expect_peak", [(4, 4), (0, 40)])
def test_http1_pod_gets_at_most_max_conns(procs, cap, expect_peak):
    """40 slow requests at once to an HTTP/1.1 pod: with max_conns_per_pod 4 all of them succeed
    over 4 connections (the others wait for one to finish its exchange); 0 = unlimited: one
    connection each."""
    a = procs.backend("pod-a", proto="http1")
    gw = stack(procs, [a], "http1", {"max_conns_per_pod": cap, "max_pending_per_pod": 100})
    streams = run_concurrent(gw, ["/slow?ms=300&i=%d" % i for i in range(40)])
    bad = [s for s in streams if s.status != 200 or not s.ended]
    assert not bad, bad[:5]
    assert len(a.requests()) == 40
    print("max_conns_per_pod %d: the pod saw %d connections at once" % (cap, a.peak_conns()))
    assert a.peak_conns() == expect_peak


def test_h2c_pod_gets_at_most_max_conns(procs):
    """h2c with max_streams_per_conn 2 and max_conns_per_pod 2: 20 slow requests at once go over
    2 connections, 2 streams each at a time, the rest waiting for a stream slot."""
    a = procs.backend("pod-a", proto="h2c")
    gw = stack(procs, [a], "h2c", {"max_streams_per_conn": 2, "max_conns_per_pod": 2})
    streams = run_concurrent(gw, ["/slow?ms=300&i=%d" % i for i in range(20)])
    bad = [s for s in streams if s.status != 200 or not s.ended]
    assert not bad, bad[:5]
    assert len(a.requests()) == 20
    print("the pod saw %d connections at once" % a.peak_conns())
    assert a.peak_conns() == 2


def test_full_queue_answers_503_upstream_overflow(procs):
    """One connection and 2 places in the queue: of 6 slow requests at once, 3 are served and 3
    are refused at once with 503 upstream_overflow, in the body, the access log and /metrics."""
    a = procs.backend("pod-a", proto="http1")
    admin = free_port()
    gw = stack(procs, [a], "http1", {"max_conns_per_pod": 1, "max_pending_per_pod": 2},
               conf={"admin": {"listen": "127.0.0.1:%d" % admin}})
    t0 = time.monotonic()
    with gw.h2(timeout=30) as c:
        streams = [c.start("GET", "/slow?ms=1000&i=%d" % i) for i in range(6)]
        refused = lambda: [s for s in streams if s.done and s.status == 503]
        assert c.wait_for(lambda: len(refused()) == 3, 5), streams
        refused_after = time.monotonic() - t0
        assert c.wait(streams, 30), streams
    ok = [s for s in streams if s.status == 200]
    print("3 refused after %.2fs; all done after %.2fs" % (refused_after, time.monotonic() - t0))
    assert len(ok) == 3, streams
    # refused at once, not after waiting for the connection (the first answer takes 1 s)
    assert refused_after < 0.9
    for s in refused():
        err = error_json(503, "upstream_overflow", s.status, s.headers, bytes(s.body))
        assert "max_pending_per_pod 2" in err["message"], err
    assert len(a.requests()) == 3
    lines = gw.wait_access(6)
    overflowed = [l for l in lines if l.get("error") == "upstream_overflow"]
    assert len(overflowed) == 3 and all(l["status"] == 503 for l in overflowed), lines
    m = httpx.get("http://127.0.0.1:%d/metrics" % admin, timeout=5).text
    assert 'modelgate_pod_overflows_total{service="svc",pod="%s"} 3' % a.addr in m, m
    assert 'modelgate_service_overflows_total{service="svc"} 3' in m, m
    assert 'modelgate_pod_queued_requests{service="svc",pod="%s"} 0' % a.addr in m, m


def test_overflowing_pod_passes_the_request_to_another(procs):
    """A pod whose connection is busy and whose queue is full is skipped like a pod at its limits:
    the request goes to another pod at once (round robin would send all to the heavy pod 'a'),
    and only when every pod overflows does the client get 503 upstream_overflow."""
    a = procs.backend("pod-a", proto="http1")
    b = procs.backend("pod-b", proto="http1")
    doc = routes_doc({"svc": ([a, b], "http1")}, [("digits", "production", "svc")])
    doc["services"]["svc"]["policy"] = "round_robin"
    doc["services"]["svc"]["pods"] = [{"address": a.addr, "weight": 1000},
                                      {"address": b.addr, "weight": 1}]
    gw = procs.gateway(doc, conf={"workers": 1, "upstream": {"max_conns_per_pod": 1,
                                                             "max_pending_per_pod": 1}},
                       tls=False)
    streams = run_concurrent(gw, ["/slow?ms=800&i=%d" % i for i in range(5)])
    pods = [s.json()["pod"] for s in streams if s.status == 200]
    print("served by %s; statuses %s" % (pods, [s.status for s in streams]))
    assert sorted(pods) == ["pod-a", "pod-a", "pod-b", "pod-b"], streams
    refused = [s for s in streams if s.status != 200]
    assert len(refused) == 1
    error_json(503, "upstream_overflow", refused[0].status, refused[0].headers,
               bytes(refused[0].body))
    lines = gw.wait_access(5)
    # failing over from an overflowing pod is no retry: nothing was sent
    assert all(l["retries"] == 0 for l in lines), lines


@pytest.mark.parametrize("proto,method", [("http1", "GET"), ("http1", "POST"), ("h2c", "GET")])
def test_queued_request_cancelled_never_reaches_the_pod(procs, proto, method):
    """Requests waiting for the pod's only connection (a slow request holds it), reset by their
    client, leave the queue: the pod never sees them, and the connection serves the next one."""
    a = procs.backend("pod-a", proto=proto)
    gw = stack(procs, [a], proto, {"max_conns_per_pod": 1, "max_streams_per_conn": 1})
    with gw.h2() as c:
        slow = c.start("GET", "/slow?ms=1500")
        wait_for(lambda: any(r[2] == "/slow?ms=1500" for r in a.requests()),
                 what="the slow request at the pod")
        queued = []
        for i in range(5):
            sid = c.conn.get_next_available_stream_id()
            c.streams[sid] = st = Stream(sid)
            c.conn.send_headers(sid, c.headers_for(method, "/cancelled/%d" % i),
                                end_stream=method == "GET")
            if method == "POST":
                c.conn.send_data(sid, b"p" * 100, end_stream=True)
            queued.append(st)
        c.flush()
        time.sleep(0.3)  # they wait in the queue now
        c.pump(0)
        assert not any(s.done for s in queued), queued
        for s in queued:
            c.reset(s)
        assert c.wait(slow) and slow.status == 200, slow
        assert c.get("/after").status == 200
    time.sleep(0.5)
    seen = [r for r in a.requests() if r[2].startswith("/cancelled")]
    assert seen == []
    assert a.peak_conns() == 1
    lines = gw.wait_access(7)
    assert sum(1 for l in lines if l.get("error") == "client_aborted") == 5, lines
    gw.assert_alive()


@pytest.mark.parametrize("body", [False, True])
def test_queued_request_honours_first_byte_timeout(procs, body):
    """A request that waits for a connection longer than timeouts_ms.first_byte gets 504
    upstream_timeout at that deadline, saying it had no connection, and is never sent later.
    Its body ending while it waits does not push that deadline back."""
    a = procs.backend("pod-a", proto="http1")
    gw = stack(procs, [a], "http1", {"max_conns_per_pod": 1},
               conf={"timeouts_ms": {"first_byte": 600}})
    with gw.h2(timeout=20) as c:
        # answers its head at once (no first-byte timeout), then holds the connection ~1.6 s
        holder = c.start("GET", "/drip?n=5&ms=400")
        wait_for(lambda: any(r[2].startswith("/drip") for r in a.requests()),
                 what="the holding request at the pod")
        t0 = time.monotonic()
        if body:
            q = c.start("POST", "/queued", body=b"x" * 100, end_stream=False)
            c.wait_for(lambda: False, 0.4)  # queued; then the body ends
            c.end(q)
        else:
            q = c.start("GET", "/queued")
        assert c.wait(q, 5), q
        waited = time.monotonic() - t0
        err = error_json(504, "upstream_timeout", q.status, q.headers, bytes(q.body))
        assert "no connection" in err["message"], err
        assert c.wait(holder, 10) and holder.status == 200 and holder.ended, holder
    print("the queued request failed after %.2fs" % waited)
    # with its body ended at 0.4 s, a deadline pushed back by it would come at 1.0 s or later
    assert 0.5 < waited < (0.9 if body else 1.5)
    time.sleep(0.5)
    assert not any(r[2] == "/queued" for r in a.requests()), a.requests()
    lines = gw.wait_access(2)
    assert any(l["path"] == "/queued" and l["error"] == "upstream_timeout" for l in lines), lines


def test_pod_allowing_one_stream_per_connection_refuses_none(procs, tmp_path):
    """nghttpd -m 1 allows one stream per connection (SETTINGS_MAX_CONCURRENT_STREAMS 1). Its
    limit is unknown until its SETTINGS arrive, so a new connection carries one request and the
    others wait for them instead of going out and coming back REFUSED_STREAM: every request
    of a burst is answered."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "x").write_text("hello\n")
    port = free_port()
    pod = procs.spawn("nghttpd", ["nghttpd", "--no-tls", "-m", "1", "-d", str(docs), str(port)])
    pod.wait_ready([port])
    gw = procs.gateway(routes_doc({"svc": ["127.0.0.1:%d" % port]},
                                  [("digits", "production", "svc")]), tls=False)
    (total, started, done, ok, failed), ok_2xx = h2load(gw, "-n", "400", "-c", "2", "-m", "20",
                                                        path="/x")
    assert (ok, ok_2xx) == (400, 400), "%d succeeded, %s 2xx of 400" % (ok, ok_2xx)
    refused = [ln for ln in gw.access() if ln.get("error")]
    assert not refused, refused[:3]
    print("one stream per connection: 400 of 400 answered 2xx, none refused")

