"""
Load balancing, canary splits, health and resilience, end to end: real gateway, python test pods
(backend.py) on 127.0.0.1, counted through the x-modelgate-service / x-pod response headers, the
access log and /metrics.

Tolerances: shares are binomial; with N requests and share p the standard deviation is
sqrt(p(1-p)/N); each check allows about 4 standard deviations, so a correct gateway fails one
in ~15000 runs and a wrong policy (e.g. round robin instead of P2C) fails every time.
"""

import collections
import os
import signal
import threading
import time

import httpx

from conftest import DOMAIN, HOST, error_json, free_port, silent_listener, wait_for


def route(app="digits", env="production", **kw):
    r = {"app": app, "env": env}
    r.update(kw)
    return r


def doc(services, routes):
    """A routing document from full service objects: {name: {...}}."""
    return {"domain": DOMAIN, "envs": ["staging", "production"], "services": services,
            "routes": routes}


def svc(*pods, **kw):
    s = {"protocol": "http1", "pods": [p.addr if hasattr(p, "addr") else p for p in pods]}
    s.update(kw)
    return s


class Client:
    """HTTP/1.1 keep-alive requests to the gateway with the app's Host."""

    def __init__(self, gw, host=HOST, timeout=10):
        self.base = "http://127.0.0.1:%d" % gw.port
        self.c = httpx.Client(timeout=timeout, headers={"host": host})

    def get(self, path="/", **kw):
        return self.c.get(self.base + path, **kw)

    def post(self, path="/", **kw):
        return self.c.post(self.base + path, **kw)

    def close(self):
        self.c.close()


def shares(counter, n):
    return {k: round(v / n, 4) for k, v in sorted(counter.items())}


def metrics(port):
    return httpx.get("http://127.0.0.1:%d/metrics" % port, timeout=5).text


def metric(text, name, **labels):
    """The value of one sample of /metrics, or None."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            lab, _, val = line[len(name) + 1:].rpartition("} ")
            if all(('%s="%s"' % kv) in lab for kv in labels.items()):
                return float(val)
    return None


def admin_conf():
    port = free_port()
    return port, {"admin": {"listen": "127.0.0.1:%d" % port}, "workers": 2}


# ------------------------------------------------------------------------------------------
# canary splits


def test_split_90_10_shares_and_log(procs):
    a, b = procs.backend("v1"), procs.backend("v2")
    gw = procs.gateway(doc({"v1": svc(a), "v2": svc(b)},
                           [route(split=[{"service": "v1", "weight": 90},
                                         {"service": "v2", "weight": 10}])]), tls=False)
    n = 2000
    c = Client(gw)
    seen = collections.Counter()
    for _ in range(n):
        r = c.get("/predict")
        assert r.status_code == 200
        svc_hdr = r.headers["x-modelgate-service"]
        assert r.headers["x-pod"] == {"v1": "v1", "v2": "v2"}[svc_hdr]
        seen[svc_hdr] += 1
    c.close()
    print("90/10 split over %d requests: %s" % (n, shares(seen, n)))
    # sd = sqrt(.09/2000) = 0.0067: 0.1 +- 0.027
    assert abs(seen["v2"] / n - 0.10) < 0.027, seen
    log = gw.wait_access(n)
    assert collections.Counter(r["service"] for r in log) == seen
    assert not any(r["fallback"] for r in log)


def siphash_free_sticky_check(gw_factory, users):
    """{user: service} for |users| through a fresh gateway from |gw_factory|."""
    gw = gw_factory()
    c = Client(gw)
    out = {}
    for u in users:
        r = c.get("/p", headers={"x-user-id": u})
        assert r.status_code == 200
        out[u] = r.headers["x-modelgate-service"]
    c.close()
    return gw, out


def test_sticky_split_survives_restart_and_moves_only_what_it_must(procs):
    a, b = procs.backend("v1"), procs.backend("v2")
    routes = doc({"v1": svc(a), "v2": svc(b)},
                 [route(split=[{"service": "v1", "weight": 90}, {"service": "v2", "weight": 10}],
                        sticky_header="x-user-id")])
    users = ["user-%d" % i for i in range(600)]
    gw1, first = siphash_free_sticky_check(lambda: procs.gateway(routes, tls=False, name="gw1"),
                                           users)
    # the same user twice on one gateway: the same service
    c = Client(gw1)
    for u in users[:50]:
        assert c.get("/p", headers={"x-user-id": u}).headers["x-modelgate-service"] == first[u]
    c.close()
    gw1.signal(signal.SIGTERM)
    assert gw1.proc.wait(15) == 0
    # a new gateway process: every user keeps its service
    gw2, second = siphash_free_sticky_check(lambda: procs.gateway(routes, tls=False, name="gw2"),
                                            users)
    assert second == first
    share_v2 = sum(1 for s in first.values() if s == "v2") / len(users)
    print("sticky 90/10: v2 share %.3f over %d users" % (share_v2, len(users)))
    assert abs(share_v2 - 0.10) < 0.05
    # 90/10 -> 50/50 live: units only move v1 -> v2, and the expected 4000/9000 of v1's
    routes["routes"][0]["split"] = [{"service": "v1", "weight": 50},
                                    {"service": "v2", "weight": 50}]
    gw2.write_routes(routes)
    gw2.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in gw2.log(), 5, what="the reload")
    c = Client(gw2)
    after = {u: c.get("/p", headers={"x-user-id": u}).headers["x-modelgate-service"]
             for u in users}
    c.close()
    back = [u for u in users if first[u] == "v2" and after[u] == "v1"]
    moved = [u for u in users if first[u] == "v1" and after[u] == "v2"]
    on_v1 = sum(1 for s in first.values() if s == "v1")
    print("90/10 -> 50/50: %d of %d v1 users moved to v2 (expected %.3f), %d moved back"
          % (len(moved), on_v1, 4000 / 9000, len(back)))
    assert back == []
    assert abs(len(moved) / on_v1 - 4000 / 9000) < 0.09


def test_fallback_when_a_split_service_is_down(procs):
    a = procs.backend("v1")
    dead = "127.0.0.1:%d" % free_port()
    hc = {"path": "/health", "interval_ms": 200, "timeout_ms": 200}
    gw = procs.gateway(doc({"v1": svc(a), "v2": svc(dead, health_check=hc)},
                           [route(split=[{"service": "v1", "weight": 80},
                                         {"service": "v2", "weight": 20}])]), tls=False)
    n = 500
    c = Client(gw)
    for _ in range(n):
        r = c.get("/p")
        assert r.status_code == 200 and r.headers["x-modelgate-service"] == "v1"
    c.close()
    log = gw.wait_access(n)
    fb = sum(1 for r in log if r["fallback"])
    print("v2 down: %d of %d requests fell back to v1 (expected ~20%%)" % (fb, n))
    assert all(r["service"] == "v1" and r["status"] == 200 for r in log)
    # sd = sqrt(.16/500) = 0.018
    assert abs(fb / n - 0.20) < 0.075


# ------------------------------------------------------------------------------------------
# policies


def test_round_robin_weights_are_exact(procs):
    pods = [procs.backend("p%d" % i) for i in range(3)]
    s = svc(policy="round_robin")
    s["pods"] = [{"address": p.addr, "weight": w} for p, w in zip(pods, (1, 2, 5))]
    gw = procs.gateway(doc({"s": s}, [route(service="s")]), conf={"workers": 1}, tls=False)
    c = Client(gw)
    seen = collections.Counter(c.get("/").headers["x-pod"] for _ in range(800))
    c.close()
    print("round robin 1:2:5 over 800: %s" % dict(seen))
    assert seen == {"p0": 100, "p1": 200, "p2": 500}


def test_least_request_follows_weights(procs):
    pods = [procs.backend("p%d" % i) for i in range(3)]
    s = svc()
    s["pods"] = [{"address": p.addr, "weight": w} for p, w in zip(pods, (1, 1, 2))]
    gw = procs.gateway(doc({"s": s}, [route(service="s")]), tls=False)
    n = 1200
    c = Client(gw)
    seen = collections.Counter(c.get("/").headers["x-pod"] for _ in range(n))
    c.close()
    print("least_request (P2C) 1:1:2 over %d sequential: %s" % (n, shares(seen, n)))
    # one request at a time: every pod has 0 in flight, so P2C is a weighted random draw
    for pod, want in (("p0", 0.25), ("p1", 0.25), ("p2", 0.5)):
        assert abs(seen[pod] / n - want) < 0.06, seen


def concurrent_gets(gw, n, threads, path="/", headers=None):
    """n GETs from |threads| threads; returns (Counter of x-pod, list of failures)."""
    seen = collections.Counter()
    failures = []
    lock = threading.Lock()
    per = n // threads

    def run():
        c = Client(gw)
        for _ in range(per):
            try:
                r = c.get(path, headers=headers)
                with lock:
                    if r.status_code == 200:
                        seen[r.headers["x-pod"]] += 1
                    else:
                        failures.append((r.status_code, r.text[:200]))
            except httpx.HTTPError as e:
                with lock:
                    failures.append(("exception", repr(e)))
        c.close()

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return seen, failures


def test_p2c_steers_away_from_a_slow_pod(procs):
    fast = [procs.backend("fast-%d" % i) for i in range(2)]
    slow = procs.backend("slow", args=["--delay-ms", "60"])
    gw = procs.gateway(doc({"s": svc(fast[0], fast[1], slow)}, [route(service="s")]), tls=False)
    n = 600
    seen, failures = concurrent_gets(gw, n, 12)
    print("P2C, 12 concurrent clients, pod 'slow' +60 ms: %s" % shares(seen, n))
    assert failures == []
    # round robin would give it 1/3; P2C sees its requests pile up and mostly picks the others
    assert seen["slow"] / n < 0.15, seen


def test_consistent_hash_keeps_users_and_moves_few_when_a_pod_joins(procs):
    pods = [procs.backend("p%d" % i) for i in range(4)]
    s = svc(pods[0], pods[1], pods[2], policy="consistent_hash", hash_key="header:x-user-id")
    routes = doc({"s": s}, [route(service="s")])
    gw = procs.gateway(routes, tls=False)
    users = ["u%d" % i for i in range(600)]
    c = Client(gw)
    before = {u: c.get("/", headers={"x-user-id": u}).headers["x-pod"] for u in users}
    again = {u: c.get("/", headers={"x-user-id": u}).headers["x-pod"] for u in users}
    assert again == before
    routes["services"]["s"]["pods"].append(pods[3].addr)
    gw.write_routes(routes)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in gw.log(), 5, what="the reload")
    after = {u: c.get("/", headers={"x-user-id": u}).headers["x-pod"] for u in users}
    c.close()
    moved = [u for u in users if after[u] != before[u]]
    print("consistent hash, 3 -> 4 pods: %d of %d users moved (ideal 1/4 = %d), all to p3: %s"
          % (len(moved), len(users), len(users) // 4, all(after[u] == "p3" for u in moved)))
    assert all(after[u] == "p3" for u in moved)
    assert 0.10 < len(moved) / len(users) < 0.40


def test_consistent_hash_key_given_twice_names_no_key(procs):
    """With hash_key "header:x-user-id", x-user-id: a plus x-user-id: b went always to a's pod
    (the first copy was the key), and "a, b" to the pod of that whole string, while features
    and sticky splits take either form as no unit (mg_field_single). Either copy may be the
    forged one, and any hop may join the two lines into one list: the request is balanced as
    one without the header (least_request), in HTTP/1.1 and HTTP/2."""
    pods = [procs.backend("p%d" % i) for i in range(3)]
    s = svc(*pods, policy="consistent_hash", hash_key="header:x-user-id")
    gw = procs.gateway(doc({"s": s}, [route(service="s")]), tls=False)
    c = httpx.Client(timeout=10)

    def pod(*users):
        r = c.get("http://127.0.0.1:%d/" % gw.port,
                  headers=[("host", "%s:%d" % (HOST, gw.port))] +
                  [("x-user-id", u) for u in users])
        assert r.status_code == 200, r.text
        return r.headers["x-pod"]

    home = {}
    for i in range(64):  # two users the ring puts on different pods
        home.setdefault(pod("u%d" % i), "u%d" % i)
        if len(home) == 2:
            break
    (pa, a), (pb, b) = sorted(home.items())
    assert all(pod(a) == pa and pod(b) == pb for _ in range(5))  # one key: its pod, always
    for users in ((a, b), (b, a), ("%s, %s" % (a, b),), ("%s,%s" % (b, a),)):
        seen = {pod(*users) for _ in range(30)}
        assert len(seen) >= 2, (users, seen)  # pinned to one pod: P = 3 * (1/3)^30 if at random
    c.close()
    with gw.h2() as h2c:
        seen = set()
        for _ in range(30):
            st = h2c.get("/", headers=[("x-user-id", a), ("x-user-id", b)])
            assert st.status == 200, st
            seen.add(st.headers["x-pod"])
        assert len(seen) >= 2, seen


# ------------------------------------------------------------------------------------------
# health and resilience


def kill_under_load(procs, retry):
    pods = [procs.backend("p%d" % i) for i in range(3)]
    s = svc(*pods, retry=retry)
    gw = procs.gateway(doc({"s": s}, [route(service="s")]), tls=False)
    box = {}

    def killer():
        time.sleep(0.8)
        os.kill(pods[1].proc.pid, signal.SIGKILL)
        box["t"] = time.monotonic()

    k = threading.Thread(target=killer)
    k.start()
    seen, failures = concurrent_gets(gw, 1600, 8, path="/slow?ms=20")
    k.join()
    return gw, seen, failures


def test_kill9_pod_under_load_with_retries_loses_nothing(procs):
    gw, seen, failures = kill_under_load(procs, {"attempts": 2})
    print("kill -9 of p1 under 8 concurrent clients, retries on: %s, failures %d"
          % (dict(seen), len(failures)))
    assert failures == []
    assert seen["p1"] > 0 and seen["p0"] > 0 and seen["p2"] > 0


def test_kill9_pod_without_retries_loses_only_its_in_flight(procs):
    gw, seen, failures = kill_under_load(procs, {"attempts": 0})
    print("kill -9 of p1 under 8 concurrent clients, retries off: %d failed: %s"
          % (len(failures), failures[:3]))
    # only the requests in flight on p1 at the kill (at most one per client); the connect
    # failures that follow still go to another pod. A 502, or, when p1 died between the
    # HEADERS and the DATA of its answer, a response cut after its head (already sent on):
    # the client sees the connection close before the announced content-length.
    assert len(failures) <= 8, failures
    assert all(f[0] == 502 or "without sending complete message body" in f[1]
               for f in failures), failures


def test_unhealthy_pod_leaves_and_returns(procs):
    flag = os.path.join(procs.dir, "p1.healthy")
    open(flag, "w").close()
    p0 = procs.backend("p0", args=["--health-file", os.path.join(procs.dir, "p0.healthy")])
    open(os.path.join(procs.dir, "p0.healthy"), "w").close()
    p1 = procs.backend("p1", args=["--health-file", flag])
    hc = {"path": "/health", "interval_ms": 100, "timeout_ms": 500, "healthy_threshold": 2,
          "unhealthy_threshold": 2}
    aport, conf = admin_conf()
    gw = procs.gateway(doc({"s": svc(p0, p1, health_check=hc, policy="round_robin")},
                           [route(service="s")]), conf=conf, tls=False)
    c = Client(gw)
    wait_for(lambda: {c.get("/").headers["x-pod"] for _ in range(6)} == {"p0", "p1"}, 5,
             what="both pods in rotation")
    os.unlink(flag)
    wait_for(lambda: metric(metrics(aport), "modelgate_pod_healthy", pod=p1.addr) == 0, 5,
             what="p1 unhealthy in /metrics")
    assert {c.get("/").headers["x-pod"] for _ in range(20)} == {"p0"}
    t0 = time.monotonic()
    open(flag, "w").close()
    wait_for(lambda: "p1" in {c.get("/").headers["x-pod"] for _ in range(4)}, 5,
             what="p1 back in rotation")
    print("p1 back in rotation %.2f s after it became healthy (2 checks of 100 ms)"
          % (time.monotonic() - t0))
    c.close()


def until_served_by(c, service, n, seconds):
    """GET / until |n| answers came from |service| (x-modelgate-service), at most |seconds|;
    returns every (status, service) seen and asserts the |n| came."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sum(1 for r in seen if r[1] == service) < n:
        r = c.get("/")
        seen.append((r.status_code, r.headers.get("x-modelgate-service")))
    assert sum(1 for r in seen if r[1] == service) == n, seen[-5:]
    return seen


def test_reload_renaming_a_checked_service_keeps_its_pods_in_rotation(procs):
    """A reload that renames a service (same pods, same check) hands its pods over with their
    verdicts: the renamed service's first requests are served, not answered 503 no_healthy_pod
    until the first check under the new name (which can start up to interval_ms / 10 later)."""
    p0, p1 = procs.backend("p0"), procs.backend("p1")
    hc = {"path": "/health", "interval_ms": 20000, "timeout_ms": 1000}
    gw = procs.gateway(doc({"old": svc(p0, p1, health_check=hc)}, [route(service="old")]),
                       tls=False)
    c = Client(gw)
    wait_for(lambda: c.get("/").status_code == 200, 5, what="the pods' first verdict")
    gw.write_routes(doc({"new": svc(p0, p1, health_check=hc)}, [route(service="new")]))
    gw.signal(signal.SIGHUP)
    seen = until_served_by(c, "new", 50, 5)
    c.close()
    assert set(code for code, _ in seen) == {200}, collections.Counter(seen)


def test_reload_moving_pods_under_a_different_check_waits_for_its_first_results(procs):
    """A reload that moves serving pods into a new service with a different check (another
    path: a new model's readiness) takes over once that check has a first result, and the
    routes in force serve until then, as Envoy warms a new cluster. Before, the new service
    answered 503 no_healthy_pod until the first check (up to interval_ms / 10 plus the check).
    The wait ends with a failing check too: a service whose only pod fails it answers 503."""
    p0, p1, p2 = procs.backend("p0"), procs.backend("p1"), procs.backend("p2")
    old_hc = {"path": "/health", "interval_ms": 20000, "timeout_ms": 1000}
    new_hc = {"path": "/status/204", "interval_ms": 20000, "timeout_ms": 1000}
    bad_hc = {"path": "/status/503", "interval_ms": 20000, "timeout_ms": 1000,
              "unhealthy_threshold": 1}
    gw = procs.gateway(doc({"old": svc(p0, p1, health_check=old_hc)}, [route(service="old")]),
                       tls=False)
    c = Client(gw)
    wait_for(lambda: c.get("/").status_code == 200, 5, what="the pods' first verdict")
    gw.write_routes(doc({"new": svc(p0, p1, health_check=new_hc),
                         "bad": svc(p2, health_check=bad_hc)},
                        [route(service="new"), route(app="other", service="bad")]))
    gw.signal(signal.SIGHUP)
    seen = until_served_by(c, "new", 50, 6)
    other = c.get("/", headers={"host": HOST.replace("digits", "other", 1)})
    c.close()
    assert set(code for code, _ in seen) == {200}, collections.Counter(seen)
    assert "the previous routes serve until the new health checks of 3 pod(s)" in gw.log()
    assert "still have no health check result" not in gw.log()
    assert other.status_code == 503, other.text
    assert other.json()["error"]["code"] == "no_healthy_pod"


def across_the_wait(gw, c, n, meanwhile=None):
    """Once a reload waits, |n| answers of |c|, then |meanwhile|, then the takeover: returns
    their statuses, whether the wait was still on after them, and the first answer after."""
    wait_for(lambda: "the previous routes serve until" in gw.log(), 5, what="the wait")
    if meanwhile:
        meanwhile()
    during = collections.Counter(c.get("/").status_code for _ in range(n))
    still_waiting = "reloaded" not in gw.log()
    wait_for(lambda: "reloaded" in gw.log(), 6, what="the takeover")
    return during, still_waiting, c.get("/")


def test_a_waiting_reload_s_checks_leave_the_routes_in_force_alone(procs):
    """A reload waits for the first result of a service it adds (here a pod that never
    answers: up to the check's timeout). Meanwhile the new check it gives a serving pod
    (another path, which fails) must not take that pod from the routes in force, which still
    follow their own check: they serve until the reload takes over, then the new verdict
    holds. Before, the new check wrote the pod state both shared: 503 during the wait."""
    p0 = procs.backend("p0")
    mute, mute_addr = silent_listener(8)  # a check of it times out
    old_hc = {"path": "/health", "interval_ms": 1000, "timeout_ms": 1000}
    bad_hc = {"path": "/status/503", "interval_ms": 1000, "timeout_ms": 1000,
              "unhealthy_threshold": 1}
    slow_hc = {"path": "/health", "interval_ms": 1000, "timeout_ms": 3000}
    gw = procs.gateway(doc({"s": svc(p0, health_check=old_hc)}, [route(service="s")]),
                       tls=False)
    c = Client(gw)
    wait_for(lambda: c.get("/").status_code == 200, 5, what="p0's first verdict")
    gw.write_routes(doc({"s": svc(p0, health_check=bad_hc),
                         "slow": svc(mute_addr, health_check=slow_hc)},
                        [route(service="s"), route(app="other", service="slow")]))
    gw.signal(signal.SIGHUP)

    def broken_reload():
        time.sleep(0.5)  # s's new check has failed: its first starts within interval_ms / 10
        # a broken document meanwhile is refused, and said not to stop the waiting one
        with open(gw.routes_path, "w") as f:
            f.write("{")
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused, the reload waiting for its health checks and DNS "
                 "answers still takes over" in gw.log(), 5, what="the refusal")
    try:
        during, still_waiting, after = across_the_wait(gw, c, 30, broken_reload)
    finally:
        c.close()
        mute.close()
    assert still_waiting
    assert during == {200: 30}, during
    assert "pod %s is unhealthy (HTTP 503) by the new check of the reload waiting" % p0.addr \
        in gw.log()
    assert after.status_code == 503 and after.json()["error"]["code"] == "no_healthy_pod", \
        after.text


def test_a_waiting_reload_that_drops_a_check_drops_it_at_takeover(procs, tmp_path):
    """The routes in force judge their pods by their own checks until the reload takes over,
    also when the reload drops a check: a pod failing it stays out during the wait (here held
    by a pod that never answers its first check), and is served once the reload is in force.
    Before, the waiting document marked it unchecked at once."""
    p0 = procs.backend("p0", args=["--health-file", str(tmp_path / "absent")])
    mute, mute_addr = silent_listener(8)
    hc = {"path": "/health", "interval_ms": 1000, "timeout_ms": 1000, "unhealthy_threshold": 1}
    gw = procs.gateway(doc({"s": svc(p0, health_check=hc)}, [route(service="s")]), tls=False)
    c = Client(gw)
    wait_for(lambda: "is unhealthy" in gw.log(), 5, what="p0's failing verdict")
    slow_hc = {"path": "/health", "interval_ms": 1000, "timeout_ms": 3000}
    gw.write_routes(doc({"s": svc(p0), "slow": svc(mute_addr, health_check=slow_hc)},
                        [route(service="s"), route(app="other", service="slow")]))
    gw.signal(signal.SIGHUP)
    try:
        during, still_waiting, after = across_the_wait(gw, c, 10)
    finally:
        c.close()
        mute.close()
    assert still_waiting
    assert during == {503: 10}, during
    assert after.status_code == 200 and after.headers["x-pod"] == "p0", after.text


def test_a_reload_correcting_the_interval_of_a_waiting_check_redraws_its_first(procs):
    """A reload adds a service whose check has interval_ms 600000 by mistake: its first check
    comes within interval_ms / 10 (up to a minute) and the reload waits for it. A second reload
    that corrects the interval draws the first check again, from the new interval: the
    document takes over within a second, not when the first draw comes due."""
    p0, p1 = procs.backend("p0"), procs.backend("p1")
    gw = procs.gateway(doc({"s": svc(p0)}, [route(service="s")]), tls=False)
    c = Client(gw)
    assert c.get("/").status_code == 200
    hc = {"path": "/health", "interval_ms": 600000, "timeout_ms": 1000}
    gw.write_routes(doc({"s": svc(p0), "new": svc(p1, health_check=hc)},
                        [route(service="s"), route(app="other", service="new")]))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "the previous routes serve until" in gw.log(), 5, what="the wait")
    hc["interval_ms"] = 1000
    gw.write_routes(doc({"s": svc(p0), "new": svc(p1, health_check=hc)},
                        [route(service="s"), route(app="other", service="new")]))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in gw.log(), 3, what="the takeover")
    r = c.get("/", headers={"host": HOST.replace("digits", "other", 1)})
    c.close()
    assert "still have no health check result" not in gw.log()  # not the wait's backstop
    assert r.status_code == 200 and r.headers["x-pod"] == "p1", r.text


def test_a_reload_waits_no_longer_than_reload_wait(procs):
    """A reload adds a service whose check may take 20 s (a pod that never answers, timeout_ms
    20000). It waits for that first result at most timeouts_ms.reload_wait (here 1 s), then
    takes over all the same: the new route answers 503 until its pod passes. Before, a SIGHUP
    could wait interval_ms / 10 + timeout_ms, up to 16 minutes with the largest settings."""
    p0 = procs.backend("p0")
    mute, mute_addr = silent_listener(8)
    hc = {"path": "/health", "interval_ms": 1000, "timeout_ms": 20000}
    gw = procs.gateway(doc({"s": svc(p0)}, [route(service="s")]),
                       conf={"timeouts_ms": {"reload_wait": 1000}}, tls=False)
    c = Client(gw, host=HOST.replace("digits", "other", 1))
    try:
        assert c.get("/").status_code == 404
        gw.write_routes(doc({"s": svc(p0), "slow": svc(mute_addr, health_check=hc)},
                            [route(service="s"), route(app="other", service="slow")]))
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "the previous routes serve until" in gw.log(), 5, what="the wait")
        assert c.get("/").status_code == 404  # the routes in force serve meanwhile
        wait_for(lambda: "reloaded" in gw.log(), 4, what="the takeover at reload_wait")
        r = c.get("/")
    finally:
        c.close()
        mute.close()
    assert "have a first result, at most 1000 ms (timeouts_ms.reload_wait; their first " \
           "results may take 20" in gw.log()
    assert "1 pod(s) still have no health check result; it takes over all the same" in gw.log()
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_pod", r.text


def test_reload_wait_0_takes_over_at_once(procs):
    """timeouts_ms.reload_wait 0 is the operator's choice not to wait: the reload takes over at
    once with one line saying so, and its new pod gets requests once it passes. Before, it
    logged "at most 0 ms", waited a poll, and warned on every SIGHUP."""
    p0, p1 = procs.backend("p0"), procs.backend("p1")
    hc = {"path": "/health", "interval_ms": 20000, "timeout_ms": 1000}
    gw = procs.gateway(doc({"s": svc(p0)}, [route(service="s")]),
                       conf={"timeouts_ms": {"reload_wait": 0}}, tls=False)
    c = Client(gw, host=HOST.replace("digits", "other", 1))
    try:
        gw.write_routes(doc({"s": svc(p0), "new": svc(p1, health_check=hc)},
                            [route(service="s"), route(app="other", service="new")]))
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in gw.log(), 2, what="the takeover")
        first = c.get("/")
        wait_for(lambda: c.get("/").status_code == 200, 5, what="p1's first check passing")
    finally:
        c.close()
    log = gw.log()
    assert "it would wait until the new health checks of 1 pod(s) have a first result; with " \
           "timeouts_ms.reload_wait 0 it takes over at once" in log
    assert "the previous routes serve until" not in log
    assert "still have no health check result" not in log
    assert first.status_code in (200, 503), first.text  # 503 until p1's first check passes


def test_pod_back_in_a_service_it_left_waits_for_a_new_verdict(procs, tmp_path):
    """A pod's verdict is kept per service and pod. A pod a reload put back in a service it had
    left took its old verdict at once: healthy before and failing now, it took every request
    until its first check failed (then up to interval_ms more with unhealthy_threshold 2);
    unhealthy before and passing now, the service answered 503 until its first check. Now it
    has no standing to keep: the reload waits for its first check, the routes in force serve
    meanwhile, and the answer follows what the check says today."""
    health = tmp_path / "b-health"
    health.write_text("ok")
    a = procs.backend("a")
    b = procs.backend("b", args=["--health-file", str(health)])
    hc = {"path": "/health", "interval_ms": 20000, "timeout_ms": 1000}
    with_b = doc({"main": svc(a), "canary": svc(b, health_check=hc)},
                 [route(service="canary")])
    without_b = doc({"main": svc(a)}, [route(service="main")])
    gw = procs.gateway(with_b, tls=False)
    c = Client(gw)
    wait_for(lambda: c.get("/").headers.get("x-pod") == "b", 5, what="b's first verdict")

    def rejoin():
        gw.write_routes(without_b)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: c.get("/").headers.get("x-pod") == "a", 5, what="b out")
        health.unlink() if health.exists() else health.write_text("ok")
        gw.write_routes(with_b)
        gw.signal(signal.SIGHUP)
        seen = collections.Counter()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            r = c.get("/")
            seen[(r.status_code, r.headers.get("x-pod"))] += 1
            if r.status_code == 503:
                said.append(r.json()["error"]["message"])
        return seen

    said = []

    seen = rejoin()  # healthy before, failing now (1 of 2 failures: no verdict, no traffic)
    assert (200, "b") not in seen, seen
    assert (503, None) in seen, seen
    # said as it is: not "1 unhealthy" (there is no verdict yet), and why in the log
    # (then "1 unhealthy", once the check after takeover made the second failure)
    assert "(1 pods: 0 unhealthy, 1 without a health check verdict yet," in said[0], said[0]
    assert "canary/%s: check failed (HTTP 503), 1 of 2 failures before it is unhealthy" % b.addr \
        in gw.log()
    seen = rejoin()  # failing when it left, passing now
    assert set(code for code, _ in seen) == {200}, seen
    assert (200, "b") in seen, seen
    c.close()


def test_reload_adding_a_check_keeps_serving_pods_in_rotation(procs):
    """A reload that adds a health check to a service whose pods serve without one keeps them
    in rotation until the check's first verdict: before, they waited for it (up to
    interval_ms / 10 plus the check) and every request got 503 no_healthy_pod meanwhile. A
    pod the reload adds still waits for its first verdict."""
    p0, p1 = procs.backend("p0"), procs.backend("p1")
    new = "127.0.0.1:%d" % free_port()  # added by the reload, never up: never routed to
    gw = procs.gateway(doc({"s": svc(p0, p1)}, [route(service="s")]), tls=False)
    c = Client(gw)
    assert c.get("/").status_code == 200
    hc = {"path": "/health", "interval_ms": 20000, "timeout_ms": 1000}
    # refused (a route to a service that does not exist): nothing of it may take effect
    gw.write_routes(doc({"s": svc(p0, p1, health_check=hc)},
                        [route(service="s"), route(app="other", service="nope")]))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in gw.log(), 5, what="the refusal")
    assert [c.get("/").status_code for _ in range(20)] == [200] * 20
    gw.write_routes(doc({"s": svc(p0, p1, new, health_check=hc)}, [route(service="s")]))
    gw.signal(signal.SIGHUP)
    codes = collections.Counter()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and sum(codes.values()) < 200:
        r = c.get("/")
        codes[(r.status_code, r.headers.get("x-pod"))] += 1
    c.close()
    assert set(code for code, _ in codes) == {200}, codes
    assert set(pod for _, pod in codes) == {"p0", "p1"}, codes


def test_all_pods_down_answers_503_at_once(procs):
    dead = ["127.0.0.1:%d" % free_port() for _ in range(2)]
    hc = {"path": "/health", "interval_ms": 200, "timeout_ms": 200}
    gw = procs.gateway(doc({"s": svc(*dead, health_check=hc)}, [route(service="s")]), tls=False)
    c = Client(gw)
    t0 = time.monotonic()
    r = c.get("/")
    took = time.monotonic() - t0
    c.close()
    print("all pods down: %d in %.1f ms" % (r.status_code, took * 1000))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_healthy_pod"
    assert "0 unhealthy, 2 without a health check verdict yet" in r.json()["error"]["message"]
    assert took < 0.5


def test_passive_ejection_takes_a_dead_pod_out(procs):
    live = procs.backend("live")
    dead = "127.0.0.1:%d" % free_port()
    aport, conf = admin_conf()
    gw = procs.gateway(doc({"s": svc(live, dead, outlier={"consecutive_failures": 3,
                                                          "base_ejection_ms": 30000},
                                     policy="round_robin")},
                           [route(service="s")]), conf=conf, tls=False)
    c = Client(gw)
    for _ in range(40):
        r = c.get("/")
        assert r.status_code == 200 and r.headers["x-pod"] == "live"
    c.close()
    m = metrics(aport)
    ejected = metric(m, "modelgate_pod_ejected", pod=dead)
    ejections = metric(m, "modelgate_pod_ejections_total", pod=dead)
    retries = metric(m, "modelgate_service_retries_total", service="s")
    print("dead pod: ejected=%s ejections=%s retries=%s over 40 requests" % (ejected, ejections,
                                                                              retries))
    assert ejected == 1 and ejections == 1
    # once ejected the dead pod costs nothing: only the first few requests needed a retry
    assert retries is not None and retries <= 6


def test_connect_retries_do_not_use_up_attempts(procs):
    """attempts: 1 is one retry after a pod answered badly; a pod that refused the connection
    before does not count (nothing reached it)."""
    dead = "127.0.0.1:%d" % free_port()
    bad = procs.backend("bad", args=["--health-file", os.path.join(procs.dir, "never")])
    flag = os.path.join(procs.dir, "good")
    open(flag, "w").close()
    good = procs.backend("good", args=["--health-file", flag])
    s = svc(dead, bad, good, policy="round_robin", retry={"attempts": 1},
            outlier={"consecutive_failures": 0})
    gw = procs.gateway(doc({"s": s}, [route(service="s")]), conf={"workers": 1}, tls=False)
    c = Client(gw)
    codes = collections.Counter(c.get("/health").status_code for _ in range(9))
    c.close()
    # starting on "dead": refused, then "bad": 503, then the one retry: "good"
    assert codes == {200: 9}, codes


def test_pod_is_ejected_once_for_its_inflight_failures(procs):
    """Requests in flight when a pod is ejected still fail; they must not eject it again (nor
    make the ejection longer)."""
    slowbad = procs.backend("slowbad", args=["--delay-ms", "400",
                                             "--health-file", os.path.join(procs.dir, "none")])
    flag = os.path.join(procs.dir, "ok")
    open(flag, "w").close()
    goods = [procs.backend("good%d" % i, args=["--health-file", flag]) for i in range(3)]
    aport, conf = admin_conf()
    s = svc(slowbad, *goods, policy="round_robin", retry={"attempts": 0},
            outlier={"consecutive_failures": 3, "base_ejection_ms": 60000})
    gw = procs.gateway(doc({"s": s}, [route(service="s")]), conf=dict(conf, workers=1),
                       tls=False)
    results = []

    def one():
        c = Client(gw)
        results.append(c.get("/health").status_code)
        c.close()

    ts = [threading.Thread(target=one) for _ in range(40)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    m = metrics(aport)
    ej = metric(m, "modelgate_pod_ejections_total", pod=slowbad.addr)
    print("40 concurrent requests, ~10 in flight on a failing pod: %d failed, ejections %s"
          % (results.count(503), ej))
    assert results.count(503) >= 4
    assert ej == 1


def test_retry_budget_keeps_retries_to_a_share_of_traffic(procs):
    """Every pod answers 503: without a budget, 2 retries per request would triple the load on
    a failing service; with budget_percent 10 the retries stay near a tenth of the requests."""
    bads = [procs.backend("bad%d" % i, args=["--health-file", os.path.join(procs.dir, "no")])
            for i in range(3)]
    aport, conf = admin_conf()
    s = svc(*bads, retry={"attempts": 2, "budget_percent": 10, "min_per_second": 1},
            outlier={"consecutive_failures": 0})
    gw = procs.gateway(doc({"s": s}, [route(service="s")]), conf=dict(conf, workers=1),
                       tls=False)
    n = 200
    c = Client(gw)
    t0 = time.monotonic()
    codes = collections.Counter(c.get("/health").status_code for _ in range(n))
    seconds = time.monotonic() - t0
    c.close()
    m = metrics(aport)
    retries = metric(m, "modelgate_service_retries_total", service="s")
    refused = metric(m, "modelgate_service_retry_budget_exhausted_total", service="s")
    print("all pods 503, %d requests in %.1f s: %d retries (no budget: %d), %d refused by the "
          "budget" % (n, seconds, retries, 2 * n, refused))
    assert codes == {503: n}
    # 10% of each second's requests, at least 1 per second (+1: a window may start mid-run)
    assert retries <= 0.10 * n + (int(seconds) + 2)
    assert refused > 0


def test_retriable_post_is_replayed_on_another_pod(procs):
    bad = procs.backend("bad", args=["--health-file", os.path.join(procs.dir, "never")])
    good_flag = os.path.join(procs.dir, "good")
    open(good_flag, "w").close()
    good = procs.backend("good", args=["--health-file", good_flag])
    services = {"s": svc(bad, good, policy="round_robin", retry={"attempts": 1, "on": ["5xx"]},
                         outlier={"consecutive_failures": 0})}
    routes = doc(services, [route(service="s", retry_post=True)])
    gw = procs.gateway(routes, tls=False)
    body = os.urandom(20000)
    c = Client(gw)
    for _ in range(6):  # round robin: half of them start on "bad" (503 on /health)
        r = c.post("/health", content=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-pod"] == "good"
    log = gw.wait_access(6)
    assert sum(r["retries"] for r in log) == 3
    # the same without retry_post: a POST is not repeated, the pod's 503 comes through
    routes["routes"][0]["retry_post"] = False
    gw.write_routes(routes)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in gw.log(), 5, what="the reload")
    codes = collections.Counter(c.post("/health", content=body).status_code for _ in range(6))
    c.close()
    assert codes == {200: 3, 503: 3}, codes


def test_circuit_breaker_limits_requests_per_pod(procs):
    a = procs.backend("a")
    gw = procs.gateway(doc({"s": svc(a, limits={"max_requests_per_pod": 2})},
                           [route(service="s")]), tls=False)
    results = []

    def one():
        c = Client(gw)
        r = c.get("/slow?ms=700")
        results.append((r.status_code, r.json().get("error", {}).get("code")))
        c.close()

    ts = [threading.Thread(target=one) for _ in range(4)]
    for t in ts:
        t.start()
        time.sleep(0.05)
    for t in ts:
        t.join(10)
    print("4 concurrent slow requests, max_requests_per_pod 2: %s" % results)
    assert sorted(results, key=str).count((200, None)) == 2
    assert results.count((503, "overloaded")) == 2


def test_route_timeout_overrides_the_default(procs):
    a = procs.backend("a")
    gw = procs.gateway(doc({"s": svc(a)},
                           [route(service="s", timeouts_ms={"first_byte": 300})]), tls=False)
    c = Client(gw)
    t0 = time.monotonic()
    r = c.get("/slow?ms=3000")
    took = time.monotonic() - t0
    c.close()
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert 0.25 < took < 2.0, took


def test_slow_upload_timeout_is_not_the_pods_failure(procs):
    """The first-byte window opens when the client has sent its whole request: an upload that
    keeps moving, slower than first_byte, arrives; a client that stalls mid-body gets 408 at
    the idle timeout. Neither counts toward ejecting the pod."""
    a = procs.backend("a")
    aport, conf = admin_conf()
    gw = procs.gateway(doc({"s": svc(a, outlier={"consecutive_failures": 2})},
                           [route(service="s", timeouts_ms={"first_byte": 300, "idle": 700})]),
                       conf=conf, tls=False)

    import socket

    def answer(sk):
        head = b""
        while b"}" not in head:  # the status line and the JSON body, maybe in pieces
            chunk = sk.recv(65536)
            if not chunk:
                break
            head += chunk
        return head.decode("latin-1")

    # 600 bytes in 6 pieces, 200 ms apart: 1.2 s of upload against a 300 ms first-byte window
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sk:
        sk.sendall(("POST /upload HTTP/1.1\r\nhost: %s\r\ncontent-length: 600\r\n\r\n"
                    % HOST).encode())
        for _ in range(6):
            time.sleep(0.2)
            sk.sendall(b"x" * 100)
        head = answer(sk)
    assert head.startswith("HTTP/1.1 200") and '"body_len": 600' in head, head
    for _ in range(3):  # the head and 100 of 600 body bytes, then the client dawdles
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sk:
            sk.sendall(("POST /upload HTTP/1.1\r\nhost: %s\r\ncontent-length: 600\r\n\r\n"
                        % HOST).encode() + b"x" * 100)
            head = answer(sk)
        assert head.startswith("HTTP/1.1 408") and "client_timeout" in head, head
    assert metric(metrics(aport), "modelgate_pod_ejections_total", pod=a.addr) == 0
    c = Client(gw)
    assert c.get("/").status_code == 200  # the only pod is still in rotation
    c.close()


def test_queued_request_gets_its_whole_first_byte_window_at_the_pod(procs):
    """A request that waited in the gateway's queue for the pod's only connection
    (max_conns_per_pod) gets the whole first-byte window, and a fresh idle clock, from when
    the pod got it: the time it queued is not charged to the pod, so an answer the pod gives
    within the window arrives and nothing counts against the pod."""
    a = procs.backend("a")
    aport, conf = admin_conf()
    conf.update(workers=1, upstream={"max_conns_per_pod": 1})
    gw = procs.gateway(doc({"s": svc(a, outlier={"consecutive_failures": 1})},
                           [route(service="s", timeouts_ms={"first_byte": 1500, "idle": 2000})]),
                       conf=conf, tls=False)
    with gw.h2(timeout=20) as c:
        holder = c.start("GET", "/slow?ms=1000")  # holds the connection ~1 s
        wait_for(lambda: any(r[2] == "/slow?ms=1000" for r in a.requests()),
                 what="the holding request at the pod")
        t0 = time.monotonic()
        late = c.start("GET", "/slow?ms=1100&late=1")  # at the pod ~1 s after its start
        assert c.wait([holder, late], 10), (holder, late)
        took = time.monotonic() - t0
    assert holder.status == 200, holder
    # ~2.1 s after it started: past 1.5 s of first byte and 2 s of idle counted from its start,
    # but 1.1 s after the pod got it
    assert late.status == 200, (late, bytes(late.body))
    print("the queued request answered after %.2fs" % took)
    assert took > 1.5
    assert metric(metrics(aport), "modelgate_pod_ejections_total", pod=a.addr) == 0


def test_hung_pod_behind_its_queue_is_ejected(procs):
    """A pod that answers nothing, with one connection (max_conns_per_pod 1) and requests
    queued behind it: each request the pod gets times out after the whole window at the pod and
    counts, so the pod is ejected at the second failure (a request that waited in the queue
    too is judged by the window it had at the pod, not left out); one that timed out still
    queued is the gateway's, and counts for nothing."""
    a = procs.backend("a")
    aport, conf = admin_conf()
    conf.update(workers=1, upstream={"max_conns_per_pod": 1})
    gw = procs.gateway(doc({"s": svc(a, outlier={"consecutive_failures": 2,
                                                  "base_ejection_ms": 60000})},
                           [route(service="s", timeouts_ms={"first_byte": 600})]),
                       conf=conf, tls=False)
    with gw.h2(timeout=20) as c:
        first = c.start("GET", "/slow?ms=5000&i=0")
        wait_for(lambda: any(r[2] == "/slow?ms=5000&i=0" for r in a.requests()),
                 what="the first request at the pod")
        time.sleep(0.3)
        # the pod gets the first of these at ~600 ms, when the first request times out; the
        # second waits for it, and times out in the queue at ~900 ms
        streams = [first] + [c.start("GET", "/slow?ms=5000&i=%d" % i) for i in (1, 2)]
        assert c.wait(streams, 10), streams
    msgs = []
    for s in streams:
        err = error_json(504, "upstream_timeout", s.status, s.headers, bytes(s.body))
        msgs.append(err["message"])
    print(msgs)
    assert sum("sent no response" in m for m in msgs) == 2, msgs  # the two the pod got
    assert sum("no connection" in m for m in msgs) == 1, msgs     # the one that waited 600 ms
    wait_for(lambda: metric(metrics(aport), "modelgate_pod_ejections_total", pod=a.addr) == 1,
             what="the hung pod ejected")


def test_metrics_count_requests_per_route_service_and_pod(procs):
    a, b = procs.backend("v1"), procs.backend("v2")
    aport, conf = admin_conf()
    gw = procs.gateway(doc({"v1": svc(a), "v2": svc(b)},
                           [route(split=[{"service": "v1", "weight": 1},
                                         {"service": "v2", "weight": 1}])]),
                       conf=conf, tls=False)
    c = Client(gw)
    seen = collections.Counter(c.get("/").headers["x-modelgate-service"] for _ in range(100))
    assert c.get("/status/404").status_code == 404
    c.close()
    m = metrics(aport)
    assert metric(m, "modelgate_route_requests_total", app="digits", env="production",
                  code="2xx") == 100
    assert metric(m, "modelgate_route_requests_total", app="digits", env="production",
                  code="4xx") == 1
    twoxx = [metric(m, "modelgate_service_requests_total", service=s, code="2xx")
             for s in ("v1", "v2")]
    assert twoxx[0] + twoxx[1] == 100 and twoxx[0] >= seen["v1"]
    assert metric(m, "modelgate_pod_requests_total", pod=a.addr, code="2xx") == twoxx[0]
    assert metric(m, "modelgate_route_request_duration_seconds_count", app="digits",
                  env="production") == 101
    assert "modelgate_worker_connections{worker=\"1\"}" in m
    # the gateway keeps pooled connections to the pods that answered
    assert metric(m, "modelgate_pod_connections", pod=a.addr) >= 1
    assert "# TYPE modelgate_pod_request_duration_seconds histogram" in m
    # a reload that drops service v1 and the digits route: their series leave the page, as
    # the pods' do; one back keeps its counts
    gw.write_routes(doc({"v2": svc(b)}, [route(app="other", service="v2")]))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in gw.log(), 5, what="the reload")
    m = metrics(aport)
    assert metric(m, "modelgate_service_requests_total", service="v1") is None, m
    assert metric(m, "modelgate_route_requests_total", app="digits") is None, m
    assert metric(m, "modelgate_service_requests_total", service="v2", code="2xx") == twoxx[1]
    assert metric(m, "modelgate_pod_requests_total", pod=a.addr) is None
    gw.write_routes(doc({"v1": svc(a)}, [route(service="v1")]))
    gw.signal(signal.SIGHUP)
    wait_for(lambda: gw.log().count("reloaded") == 2, 5, what="the second reload")
    m = metrics(aport)
    assert metric(m, "modelgate_route_requests_total", app="digits", code="2xx") == 100
    assert metric(m, "modelgate_service_requests_total", service="v1", code="2xx") == twoxx[0]
    assert metric(m, "modelgate_service_requests_total", service="v2") is None
