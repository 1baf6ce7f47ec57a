"""
DNS discovery end to end: a private dnsmasq on a loopback port answers for a headless-Service
style name (one A record per pod); pods listen on 127.0.0.2-127.0.0.4 with one shared port, as
pods of a Kubernetes Service do. Pods appear and disappear without a reload; a request in
flight to a removed pod finishes.
"""

import collections
import signal
import threading
import time

import httpx

from conftest import DOMAIN, HOST, free_port, silent_listener, wait_for
from servers import Dnsmasq

NAME = "digits.pods.svc.test"


def pods_seen(gw, n=60):
    c = httpx.Client(timeout=10, headers={"host": HOST})
    seen = collections.Counter()
    for _ in range(n):
        r = c.get("http://127.0.0.1:%d/" % gw.port)
        if r.status_code == 200:
            seen[r.headers["x-pod"]] += 1
        else:
            seen[r.status_code] += 1
    c.close()
    return seen


def pods_in_metrics(admin_port, metric="modelgate_pod_requests_total"):
    text = httpx.get("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).text
    return {line.split('pod="', 1)[1].split('"', 1)[0] for line in text.splitlines()
            if line.startswith(metric + "{")}


def dns_routes(port, interval_ms):
    """A routing document whose one route goes to service "s", with pods from NAME."""
    return {"domain": DOMAIN, "envs": ["production"],
            "services": {"s": {"protocol": "http1",
                               "dns": {"name": NAME, "port": port, "interval_ms": interval_ms}}},
            "routes": [{"app": "digits", "env": "production", "service": "s"}]}


def test_pods_come_and_go_with_dns(procs):
    port = free_port()
    pods = {ip: procs.backend("pod-%s" % ip.rsplit(".", 1)[1], host=ip, port=port)
            for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
    dns = Dnsmasq(procs, {NAME: ["127.0.0.2", "127.0.0.3"]})
    routes = {"domain": DOMAIN, "envs": ["production"],
              "services": {"s": {"protocol": "http1", "policy": "round_robin",
                                 "dns": {"name": NAME, "port": port, "interval_ms": 200}}},
              "routes": [{"app": "digits", "env": "production", "service": "s"}]}
    aport = free_port()
    gw = procs.gateway(routes, conf={"dns_nameserver": dns.addr,
                                     "admin": {"listen": "127.0.0.1:%d" % aport}}, tls=False)
    wait_for(lambda: set(pods_seen(gw, 8)) == {"pod-2", "pod-3"}, 5,
             what="the two pods DNS names")

    def metrics_pods():
        return pods_in_metrics(aport)
    assert metrics_pods() == {"127.0.0.2:%d" % port, "127.0.0.3:%d" % port}
    # a pod is added: it gets traffic without a reload
    dns.set_hosts({NAME: ["127.0.0.2", "127.0.0.3", "127.0.0.4"]})
    t0 = time.monotonic()
    wait_for(lambda: "pod-4" in pods_seen(gw, 9), 5, what="pod-4 in rotation")
    print("pod added to DNS: in rotation after %.2f s (interval 200 ms)" % (time.monotonic() - t0))
    # a pod is removed while a request to it is in flight: that request finishes. Three slow
    # requests at once: round robin over three pods gives each pod one, whatever the rotation's
    # position (the requests before may have spanned the DNS change, so it is not known)
    slow = {}

    def slow_request():
        with httpx.Client(timeout=10, headers={"host": HOST}) as c:
            r = c.get("http://127.0.0.1:%d/slow?ms=1500" % gw.port)
            slow[r.headers.get("x-pod")] = r

    threads = [threading.Thread(target=slow_request) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    dns.set_hosts({NAME: ["127.0.0.3", "127.0.0.4"]})
    wait_for(lambda: "pod-2" not in pods_seen(gw, 9), 5, what="pod-2 out of rotation")
    for t in threads:
        t.join(30)
    assert "pod-2" in slow and slow["pod-2"].status_code == 200, {
        k: v.status_code for k, v in slow.items()}
    seen = pods_seen(gw, 60)
    print("after removing pod-2: %s" % dict(seen))
    assert set(seen) == {"pod-3", "pod-4"}
    # /metrics follows the pods DNS names: a rolling update does not grow the scrape forever
    assert metrics_pods() == {"127.0.0.3:%d" % port, "127.0.0.4:%d" % port}
    # every pod gone from DNS: 503 at once, naming the reason
    dns.set_hosts({})
    wait_for(lambda: set(pods_seen(gw, 3)) == {503}, 5, what="503 with no pods")
    r = httpx.get("http://127.0.0.1:%d/" % gw.port, headers={"host": HOST}, timeout=5)
    assert r.json()["error"]["code"] == "no_pods"
    # the name, and no "yet": the pods were there before
    assert "DNS gives no address for '%s'" % NAME in r.json()["error"]["message"], r.json()
    # back
    dns.set_hosts({NAME: ["127.0.0.4"]})
    wait_for(lambda: set(pods_seen(gw, 3)) == {"pod-4"}, 5, what="pod-4 back")
    assert all(p.proc.alive() for p in pods.values())


def test_a_dns_change_reaches_the_routes_in_force_during_a_reload_s_wait(procs):
    """A reload waits for the first check of a pod it adds (here one that never answers: up to
    the check's 8 s timeout). A DNS change meanwhile reaches the routes in force at once (their
    document is kept for it), and the wait goes on. Before, it waited with the document (503
    no_pods or the old pods for seconds), then it ended the wait."""
    port = free_port()
    procs.backend("pod-2", host="127.0.0.2", port=port)
    procs.backend("pod-3", host="127.0.0.3", port=port)
    dns = Dnsmasq(procs, {NAME: ["127.0.0.2"]})
    mute, mute_addr = silent_listener(8)  # its check never ends before its timeout
    routes = dns_routes(port, 200)
    gw = procs.gateway(routes, conf={"dns_nameserver": dns.addr}, tls=False)
    try:
        wait_for(lambda: set(pods_seen(gw, 3)) == {"pod-2"}, 5, what="pod-2 discovered")
        routes["services"]["slow"] = {
            "protocol": "http1", "pods": [mute_addr],
            "health_check": {"path": "/health", "interval_ms": 1000, "timeout_ms": 8000}}
        routes["routes"].append({"app": "other", "env": "production", "service": "slow"})
        gw.write_routes(routes)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "the previous routes serve until" in gw.log(), 5, what="the wait")
        dns.set_hosts({NAME: ["127.0.0.3"]})
        wait_for(lambda: set(pods_seen(gw, 3)) == {"pod-3"}, 4, what="pod-3 from DNS")
        assert "reloaded" not in gw.log()  # the wait goes on
    finally:
        mute.close()


def test_a_reload_waits_for_a_new_dns_name_and_its_pods_checks(procs):
    """A reload that adds a DNS service, or points one at another name, waits for the name's
    first answer and then for the first check of the pods it names, as for a static pod list,
    also of pods a later answer adds during the wait. Before, the reload took over at once (no
    pods known yet, so none to wait for): the added service answered 503 until its first check
    passed, and the renamed one too; and a second answer during the wait ended it."""
    port = free_port()
    procs.backend("pod-2", host="127.0.0.2", port=port)
    procs.backend("pod-3", host="127.0.0.3", port=port)
    procs.backend("pod-4", host="127.0.0.4", port=port)
    other_name = "other.pods.svc.test"
    dns = Dnsmasq(procs, {NAME: ["127.0.0.2"], other_name: ["127.0.0.3"]})
    slow_hc = {"path": "/slow?ms=700", "interval_ms": 1000, "timeout_ms": 3000}
    routes = dns_routes(port, 200)
    gw = procs.gateway(routes, conf={"dns_nameserver": dns.addr}, tls=False)
    wait_for(lambda: set(pods_seen(gw, 3)) == {"pod-2"}, 5, what="pod-2 discovered")
    other = httpx.Client(timeout=10, headers={"host": HOST.replace("digits", "other", 1)})
    url = "http://127.0.0.1:%d/" % gw.port
    try:
        # 1: a service the reload adds
        routes["services"]["t"] = {"protocol": "http1", "health_check": slow_hc,
                                   "dns": {"name": other_name, "port": port, "interval_ms": 200}}
        routes["routes"].append({"app": "other", "env": "production", "service": "t"})
        gw.write_routes(routes)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: "service t: 1 pod(s) from DNS" in gw.log(), 5, what="t's first answer")
        dns.set_hosts({NAME: ["127.0.0.2"], other_name: ["127.0.0.3", "127.0.0.4"]})
        wait_for(lambda: "reloaded: 2 services" in gw.log(), 8, what="the takeover")
        assert "service t: 2 pod(s) from DNS" in gw.log()  # during the wait: pod-4 waited too
        seen = collections.Counter(r.status_code for r in (other.get(url) for _ in range(10)))
        assert seen == {200: 10}, seen
        assert "the previous routes serve until 1 DNS service(s) have a first answer" in gw.log()
        # 2: a service in force pointed at another name (pod-3) under a check
        routes["services"]["s"]["dns"]["name"] = other_name
        routes["services"]["s"]["health_check"] = slow_hc
        gw.write_routes(routes)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: gw.log().count("reloaded: 2 services") == 2, 8, what="the takeover")
        seen = pods_seen(gw, 10)
        assert set(seen) == {"pod-3", "pod-4"}, seen  # no 503, no pod-2
        assert gw.log().count("the previous routes serve until 1 DNS service(s)") == 2
        assert "still have no answer" not in gw.log()
    finally:
        other.close()


def test_a_reload_does_not_wait_for_a_name_whose_lookup_failed(procs):
    """A failed lookup is retried only at the watch's interval: a reload waiting for the name's
    first answer takes over at once, and says so. Before, it waited out the DNS bound (6 s)."""
    a = procs.backend("a")
    routes = {"domain": DOMAIN, "envs": ["production"],
              "services": {"s": {"protocol": "http1", "pods": [a.addr]}},
              "routes": [{"app": "digits", "env": "production", "service": "s"}]}
    nobody = "127.0.0.1:%d" % free_port()  # no nameserver there: refused at once
    gw = procs.gateway(routes, conf={"dns_nameserver": nobody}, tls=False)
    routes["services"]["t"] = {"protocol": "http1",
                               "dns": {"name": NAME, "port": 80, "interval_ms": 60000}}
    routes["routes"].append({"app": "other", "env": "production", "service": "t"})
    gw.write_routes(routes)
    t0 = time.monotonic()
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded: 2 services" in gw.log(), 8, what="the takeover")
    assert time.monotonic() - t0 < 3
    assert "1 DNS service(s) still have no answer (1 after a failed lookup)" in gw.log()


def test_nameserver_down_keeps_the_last_pods(procs):
    port = free_port()
    a = procs.backend("pod-2", host="127.0.0.2", port=port)
    dns = Dnsmasq(procs, {NAME: ["127.0.0.2"]})
    routes = dns_routes(port, 100)
    gw = procs.gateway(routes, conf={"dns_nameserver": dns.addr}, tls=False)
    wait_for(lambda: set(pods_seen(gw, 3)) == {"pod-2"}, 5, what="pod-2 discovered")
    dns.proc.stop()
    time.sleep(1.0)  # several failed rounds
    assert set(pods_seen(gw, 20)) == {"pod-2"}
    assert a.proc.alive()


def test_more_pods_than_a_udp_answer_holds(procs):
    """A plain DNS answer over UDP holds about 29 A records; a Service with more pods answers
    truncated, and the resolver asks again over TCP: all 60 pods are in the routing."""
    port = free_port()
    ips = ["127.0.1.%d" % i for i in range(1, 61)]
    dns = Dnsmasq(procs, {NAME: ips})
    routes = dns_routes(port, 200)
    aport = free_port()
    procs.gateway(routes, conf={"dns_nameserver": dns.addr,
                                "admin": {"listen": "127.0.0.1:%d" % aport}}, tls=False)
    want = {"%s:%d" % (ip, port) for ip in ips}
    wait_for(lambda: pods_in_metrics(aport, "modelgate_pod_healthy") == want, 5,
             what="the 60 pods DNS names")


def pod_states(admin_port):
    text = httpx.get("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).text
    for line in text.splitlines():
        if line.startswith("modelgate_pod_states "):
            return int(line.split()[1])
    raise AssertionError("no modelgate_pod_states on /metrics")


def test_pods_gone_from_dns_or_the_document_leave_memory(procs):
    """A DNS service whose one pod takes a new address 40 times in turn (a rollout each), with
    requests to each address (each worker makes an upstream pool): once the pods are gone from
    DNS, their states, series and pools are freed, and modelgate_pod_states comes back to the
    pods of the routing. The same for pods a reload takes out of the document. Before, every
    address ever routed to kept its state (2.8 KiB with 8 workers) until the process ended."""
    port = free_port()
    # one backend for every address: 127.0.4.x reach a socket bound to every address
    procs.backend("pods", host="0.0.0.0", port=port)
    ips = ["127.0.4.%d" % i for i in range(1, 41)]
    dns = Dnsmasq(procs, {NAME: ips[:1]})
    aport = free_port()
    routes = dns_routes(port, 100)
    gw = procs.gateway(routes, conf={"dns_nameserver": dns.addr, "workers": 2,
                                     "admin": {"listen": "127.0.0.1:%d" % aport}}, tls=False)
    url = "http://127.0.0.1:%d/" % gw.port
    t0 = time.monotonic()
    for ip in ips:
        dns.set_hosts({NAME: [ip]})
        pod = "%s:%d" % (ip, port)
        wait_for(lambda: pods_in_metrics(aport, "modelgate_pod_healthy") == {pod}, 5,
                 what="%s from DNS" % pod)
        for _ in range(4):  # new connections: both workers get some
            r = httpx.get(url, headers={"host": HOST}, timeout=10)
            assert r.status_code == 200, r.text
    print("40 addresses in %.1f s" % (time.monotonic() - t0))
    # the old snapshots are gone, the reaper closes the idle connections to old pods and frees
    # their pools (about a second), and with them the last references
    wait_for(lambda: pod_states(aport) == 1, 10, interval=0.2, what="one pod state left")
    assert pods_in_metrics(aport) <= {"%s:%d" % (ips[-1], port)}
    assert pods_in_metrics(aport, "modelgate_pod_healthy") == {"%s:%d" % (ips[-1], port)}
    r = httpx.get(url, headers={"host": HOST}, timeout=10)
    assert r.status_code == 200

    # a static service a reload adds, then takes out
    routes["services"]["t"] = {"protocol": "http1", "pods": ["127.0.4.200:%d" % port]}
    routes["routes"].append({"app": "other", "env": "production", "service": "t"})
    gw.write_routes(routes)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: pod_states(aport) == 2, 5, interval=0.1, what="the added pod's state")
    other = HOST.replace("digits", "other", 1)
    for _ in range(4):
        assert httpx.get(url, headers={"host": other}, timeout=10).status_code == 200
    del routes["services"]["t"]
    routes["routes"].pop()
    gw.write_routes(routes)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: pod_states(aport) == 1, 10, interval=0.2, what="the removed pod's state gone")
    assert pods_in_metrics(aport, "modelgate_pod_healthy") == {"%s:%d" % (ips[-1], port)}
    gw.assert_alive()
