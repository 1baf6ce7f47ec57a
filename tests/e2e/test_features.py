"""
User features (DESIGN.md "One request", step 5) against a real Redis and a real MariaDB:
features attached on a Redis hit, miss -> MariaDB -> Redis fill, unknown users, TTL expiry,
coalescing (100 concurrent requests for one cold user -> 1 MariaDB query), Redis killed
mid-load (requests succeed with "unavailable" within the budget) and back (hits resume), the
admin API (PUT/GET/DELETE, bulk JSON lines), header spoofing, size cap, metrics, log hash.
"""

import json
import os
import re
import signal
import socket
import struct
import threading
import time

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from conftest import HOST, H1Conn, curl, free_port, h1_request_bytes, routes_doc, wait_for
from servers import MariaDB, Redis

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "features", "schema.sql")
GROUPS = [{"name": "profile", "type": "hash"},
          {"name": "recent", "type": "list", "max_items": 50},
          {"name": "vec", "type": "json"}]


# ------------------------------------------------------------------------------------------
# the documented hash: SipHash-2-4, key "modelgate:featv1", of the exact header value

def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & 0xFFFFFFFFFFFFFFFF


def siphash24(key, data):
    k0, k1 = struct.unpack("<QQ", key)
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573
    M = 0xFFFFFFFFFFFFFFFF

    def rnd(v0, v1, v2, v3):
        v0 = (v0 + v1) & M; v1 = _rotl(v1, 13) ^ v0; v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & M; v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & M; v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & M; v1 = _rotl(v1, 17) ^ v2; v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    tail = len(data) % 8
    for i in range(0, len(data) - tail, 8):
        m = struct.unpack("<Q", data[i:i + 8])[0]
        v3 ^= m
        v0, v1, v2, v3 = rnd(*rnd(v0, v1, v2, v3))
        v0 ^= m
    b = (len(data) & 0xFF) << 56
    for i, c in enumerate(data[len(data) - tail:]):
        b |= c << (8 * i)
    v3 ^= b
    v0, v1, v2, v3 = rnd(*rnd(v0, v1, v2, v3))
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def feature_hash(text):
    return "%016x" % siphash24(b"modelgate:featv1", text.encode())


def canonical(doc):
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


# ------------------------------------------------------------------------------------------
# setup

class Stack:
    def __init__(self, procs, timeout_ms=1000, local=None, redis_over=None, max_bytes=None,
                 workers=2, by_env=None, envs=("production",), db_threads=2, table=None,
                 before_start=None, db_over=None, pods=None, wait_up=True, routes_fn=None):
        self.procs = procs
        self.redis = Redis(procs)
        self.db = MariaDB(procs)
        sql = "\n".join(ln for ln in open(SCHEMA).read().splitlines()
                        if not ln.strip().startswith("--"))
        for stmt in sql.split(";"):
            if stmt.strip():
                self.db.query(stmt)
        if before_start:
            before_start(self)
        # |pods|: RawPods (h2c, round robin) in place of the echoing backend
        self.backend = procs.backend("pod-a") if pods is None else None
        self.admin_port = free_port()
        feats = {
            "redis": dict({"host": "127.0.0.1", "port": self.redis.port, "ttl_s": 60,
                           "negative_ttl_s": 30, "reconnect_max_ms": 200}, **(redis_over or {})),
            "mariadb": dict({"host": "127.0.0.1", "port": self.db.port, "user": "root",
                             "database": "modelgate", "threads": db_threads,
                             "table": table or "user_features"}, **(db_over or {})),
            "local": dict({"ttl_ms": 1000, "stale_ms": 0, "negative_ttl_ms": 1000},
                          **(local or {})),
            "apps": {"digits": {"timeout_ms": timeout_ms, "groups": GROUPS}},
        }
        if by_env:
            feats["apps"]["digits"]["timeout_ms_by_env"] = by_env
        if max_bytes:
            feats["max_header_bytes"] = max_bytes
        routes = routes_doc({"svc-a": ([p.addr for p in pods], "h2c") if pods else [self.backend]},
                            [("digits", e, "svc-a") for e in envs] +
                            [("plain", "production", "svc-a")])
        if pods:
            routes["services"]["svc-a"]["policy"] = "round_robin"
        if routes_fn:  # |routes_fn(self)|: another routing document
            routes = routes_fn(self)
        self.gw = procs.gateway(
            routes,
            conf={"workers": workers, "features": feats,
                  "admin": {"listen": "127.0.0.1:%d" % self.admin_port}})
        self.r = self.redis.client()
        if wait_up:
            wait_for(lambda: self.metric("modelgate_features_redis_up") == workers, 10,
                     what="every worker connected to Redis")

    # --- clients
    def get(self, user=None, host=HOST, headers=None, timeout=10):
        """One request on a kept-alive connection (so, one worker and its local cache)."""
        import httpx
        if not hasattr(self, "client"):
            self.client = httpx.Client(timeout=timeout)
        h = {"host": "%s:%d" % (host, self.gw.port)}
        if user is not None:
            h["x-user-id"] = user
        h.update(headers or {})
        r = self.client.get("http://127.0.0.1:%d/predict" % self.gw.port, headers=h)
        assert r.status_code == 200, r.text
        return r.json()["headers"]

    def admin(self, method, path, body=None):
        import httpx
        return httpx.request(method, "http://127.0.0.1:%d%s" % (self.admin_port, path),
                             content=body, timeout=30)

    def metrics(self):
        return self.admin("GET", "/metrics/features").text

    def metric(self, name):
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def sample(self, line_prefix):
        """The value of the one sample whose line starts with |line_prefix| (name{labels})."""
        for line in self.metrics().splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no sample %s" % line_prefix)

    def selects(self):
        return int(self.db.query("SHOW GLOBAL STATUS LIKE 'Com_select'")[0][1])

    # --- stores
    def put_redis(self, user, profile=None, recent=None, vec=None, ttl=60):
        base = "mgf:v1:digits:%s" % user
        p = self.r.pipeline()
        p.delete(base + ":profile", base + ":recent", base + ":vec")
        if profile:
            p.hset(base + ":profile", mapping=profile)
            p.expire(base + ":profile", ttl)
        if recent:
            p.rpush(base + ":recent", *recent)
            p.expire(base + ":recent", ttl)
        if vec is not None:
            p.set(base + ":vec", json.dumps(vec), ex=ttl)
        p.set(base, "1", ex=ttl)
        p.execute()

    def put_db(self, user, doc):
        self.db.query("REPLACE INTO user_features (app, user_id, features) VALUES (%s, %s, %s)",
                      ("digits", user, json.dumps(doc)))


@pytest.fixture
def stack(procs):
    return Stack(procs)


def log_for(gw, user_marker_path):
    return [r for r in gw.access() if r.get("path") == user_marker_path]


# ------------------------------------------------------------------------------------------
# tests

def test_attached_on_redis_hit_and_logged_with_hash(stack):
    recent = ["item%d" % i for i in range(60, 0, -1)]  # newest first; 60 > max_items
    stack.put_redis("u1", profile={"age": "31", "city": "Zürich"}, recent=recent,
                    vec=[0.5, -1.25, 3])
    h = stack.get("u1")
    expected = {"profile": {"age": "31", "city": "Zürich"}, "recent": recent[:50],
                "vec": [0.5, -1.25, 3]}
    assert h["x-modelgate-features"] == "hit"
    assert json.loads(h["x-user-features"]) == expected
    assert h["x-user-features"] == canonical(expected)  # compact, sorted: the documented form
    recs = stack.gw.wait_access(1)
    assert recs[-1]["features"] == "hit"
    assert recs[-1]["features_hash"] == feature_hash(h["x-user-features"])
    assert stack.metric('modelgate_features_layer_total{layer="redis",result="hit"}') == 1


def test_miss_goes_to_mariadb_and_fills_redis(stack):
    doc = {"profile": {"age": 40, "vip": True}, "recent": ["a", "b"], "vec": {"d": [1, 2]}}
    stack.put_db("u2", doc)
    assert stack.r.get("mgf:v1:digits:u2") is None
    before = stack.selects()
    h = stack.get("u2")
    assert h["x-modelgate-features"] == "hit"
    # hash values become strings, as Redis holds them
    want = {"profile": {"age": "40", "vip": "true"}, "recent": ["a", "b"], "vec": {"d": [1, 2]}}
    assert json.loads(h["x-user-features"]) == want
    assert stack.selects() - before == 1
    # cache-aside: written back in the documented layout, with the TTL
    assert stack.r.get("mgf:v1:digits:u2") == b"1"
    assert stack.r.hgetall("mgf:v1:digits:u2:profile") == {b"age": b"40", b"vip": b"true"}
    assert stack.r.lrange("mgf:v1:digits:u2:recent", 0, -1) == [b"a", b"b"]
    assert json.loads(stack.r.get("mgf:v1:digits:u2:vec")) == {"d": [1, 2]}
    for k in ("", ":profile", ":recent", ":vec"):
        assert 50 <= stack.r.ttl("mgf:v1:digits:u2" + k) <= 60
    # the same features written by a pipeline into Redis give the same bytes (and hash)
    stack.put_redis("u2", profile={"age": "40", "vip": "true"}, recent=["a", "b"],
                    vec={"d": [1, 2]})
    time.sleep(1.1)  # local ttl_ms 1000
    h2 = stack.get("u2")
    assert h2["x-user-features"] == h["x-user-features"]
    assert stack.selects() - before == 1


@pytest.mark.parametrize("group,broken", [("recent", "not a list"), ("vec", "{not json")])
def test_key_of_the_wrong_type_falls_back_to_mariadb_and_is_repaired(stack, group, broken):
    """A pipeline that wrote one of a user's keys in another type than its group (a string
    where the list goes) made every request of that user "unavailable" until the key expired;
    one that wrote a json group's key with text that is not JSON had that group dropped from
    the user's features without a word. MariaDB, the truth, answers instead, and its
    write-back rewrites the user's keys."""
    doc = {"profile": {"age": 7}, "recent": ["a", "b"], "vec": [1, 2]}
    stack.put_db("wt1", doc)
    stack.put_redis("wt1", profile={"age": "7"}, recent=["a", "b"], vec=[1, 2])
    key = "mgf:v1:digits:wt1:" + group
    stack.r.delete(key)
    stack.r.set(key, broken, ex=60)
    before = stack.selects()
    h = stack.get("wt1")
    assert h["x-modelgate-features"] == "hit", h
    assert json.loads(h["x-user-features"]) == {"profile": {"age": "7"}, "recent": ["a", "b"],
                                                "vec": [1, 2]}
    assert stack.selects() - before == 1
    assert stack.r.type("mgf:v1:digits:wt1:recent") == b"list"
    assert stack.r.lrange("mgf:v1:digits:wt1:recent", 0, -1) == [b"a", b"b"]
    assert json.loads(stack.r.get("mgf:v1:digits:wt1:vec")) == [1, 2]
    time.sleep(1.1)  # local ttl_ms 1000: the next request reads Redis again, now whole
    assert stack.get("wt1")["x-modelgate-features"] == "hit"
    assert stack.selects() - before == 1


@pytest.mark.parametrize("group", ["recent", "profile"])
def test_string_that_is_not_utf8_breaks_the_layout(stack, group):
    """A pipeline that wrote bytes that are not UTF-8 (b"caf\\xe9") into a list item or a hash
    field: the string was dropped from a "hit" without a word (or a list of only that item read
    as "miss"). No JSON string can hold it: the key breaks the layout, MariaDB answers, its
    write-back rewrites the user's keys, and the warning names the group."""
    doc = {"profile": {"age": "7"}, "recent": ["good1", "good2"]}
    stack.put_db("nu1", doc)
    stack.put_redis("nu1", **doc)
    key = "mgf:v1:digits:nu1:" + group
    if group == "recent":
        stack.r.rpush(key, b"caf\xe9")
    else:
        stack.r.hset(key, b"\xff\xfe", b"x")
    before = stack.selects()
    h = stack.get("nu1")
    assert h["x-modelgate-features"] == "hit", h
    assert h["x-user-features"] == canonical(doc)
    assert stack.selects() - before == 1
    assert ("the %s group's key of a user of app digits holds a string that is not UTF-8"
            % group) in stack.gw.proc.stderr()
    assert stack.r.lrange("mgf:v1:digits:nu1:recent", 0, -1) == [b"good1", b"good2"]


def test_hung_mariadb_cannot_take_the_redis_hits_down(procs):
    """A hung MariaDB keeps its lookups (each request goes on at its budget; the lookup stays
    to fill the caches). At most mariadb.max_waiting of them wait per worker: the next cold
    users go on as "unavailable" at once, without asking MariaDB, and the users Redis has are
    still served. Without that cap the waiting lookups took all of the worker's 10,000, and
    then every request got "unavailable", Redis hits too."""
    s = Stack(procs, timeout_ms=30, workers=1, db_threads=1,
              db_over={"max_waiting": 4, "timeout_s": 60})
    s.put_redis("warm", recent=["w"])
    s.db.proc.signal(signal.SIGSTOP)  # hung: connections stay open, queries never answer
    try:
        st = [s.get("cold%d" % i)["x-modelgate-features"] for i in range(10)]
        assert st == ["timeout"] * 4 + ["unavailable"] * 6, st
        assert s.sample("modelgate_features_mariadb_refused_total") == 6
        h = s.get("warm")
        assert h["x-modelgate-features"] == "hit", h
        assert json.loads(h["x-user-features"]) == {"recent": ["w"]}
    finally:
        s.db.proc.signal(signal.SIGCONT)
    # MariaDB back: the waiting lookups end, and cold users are asked again
    wait_for(lambda: s.get("after")["x-modelgate-features"] == "miss", 30, 0.2,
             "a cold user answered by MariaDB again")


def test_unknown_user_is_a_cached_miss(stack):
    before = stack.selects()
    h = stack.get("nobody")
    assert h["x-modelgate-features"] == "miss"
    assert "x-user-features" not in h
    assert stack.r.get("mgf:v1:digits:nobody") == b"0"
    assert 20 <= stack.r.ttl("mgf:v1:digits:nobody") <= 30  # negative_ttl_s
    for _ in range(5):
        assert stack.get("nobody")["x-modelgate-features"] == "miss"
    assert stack.selects() - before == 1  # negative caching: local, then Redis
    recs = stack.gw.wait_access(6)
    assert all(r["features"] == "miss" and r.get("features_hash") is None for r in recs)


def test_no_user_id_and_routes_without_features(stack):
    h = stack.get(None)
    assert h["x-modelgate-features"] == "none"
    h = stack.get("bad:id")  # ':' is not allowed in a unit id (it separates key parts)
    assert h["x-modelgate-features"] == "none"
    h = stack.get("u1", host="plain-production.modelgate.local")
    assert "x-modelgate-features" not in h and "x-user-features" not in h
    recs = stack.gw.wait_access(3)
    assert [r["features"] for r in recs] == ["none", "none", None]


def test_client_cannot_inject_features(stack):
    stack.put_redis("u3", profile={"tier": "free"})
    h = stack.get("u3", headers={"x-user-features": '{"profile":{"tier":"gold"}}',
                                 "x-modelgate-features": "hit"})
    assert json.loads(h["x-user-features"]) == {"profile": {"tier": "free"}}
    h = stack.get(None, headers={"x-user-features": '{"profile":{"tier":"gold"}}'})
    assert "x-user-features" not in h


def test_ttl_expiry(procs):
    s = Stack(procs, local={"ttl_ms": 200, "stale_ms": 0}, redis_over={"ttl_s": 2})
    s.put_db("u4", {"recent": ["old"]})
    assert json.loads(s.get("u4")["x-user-features"]) == {"recent": ["old"]}
    assert 1 <= s.r.ttl("mgf:v1:digits:u4:recent") <= 2
    s.put_db("u4", {"recent": ["new"]})  # written behind the caches' back
    time.sleep(0.3)  # past the local TTL: served by Redis, still the old value
    assert json.loads(s.get("u4")["x-user-features"]) == {"recent": ["old"]}
    wait_for(lambda: s.r.get("mgf:v1:digits:u4") is None, 5, 0.1, "the Redis TTL to expire")
    time.sleep(0.3)
    assert json.loads(s.get("u4")["x-user-features"]) == {"recent": ["new"]}


def test_stale_while_revalidate(procs):
    s = Stack(procs, local={"ttl_ms": 100, "stale_ms": 60000}, workers=1)
    s.put_redis("u5", recent=["v1"])
    assert json.loads(s.get("u5")["x-user-features"]) == {"recent": ["v1"]}
    s.put_redis("u5", recent=["v2"])
    time.sleep(0.2)
    # stale: served at once, refreshed in the background
    assert json.loads(s.get("u5")["x-user-features"]) == {"recent": ["v1"]}
    wait_for(lambda: json.loads(s.get("u5")["x-user-features"]) == {"recent": ["v2"]}, 5, 0.05,
             "the refreshed value")
    assert s.metric('modelgate_features_layer_total{layer="local",result="stale"}') >= 1


def test_coalescing_one_query_for_100_concurrent_requests(stack):
    stack.put_db("cold", {"profile": {"k": "v"}})
    import httpx
    n = 100
    barrier = threading.Barrier(n)
    results, errors = [], []

    def one():
        try:
            with httpx.Client(timeout=20) as c:
                barrier.wait(10)
                r = c.get("http://127.0.0.1:%d/predict" % stack.gw.port,
                          headers={"host": "%s:%d" % (HOST, stack.gw.port), "x-user-id": "cold"})
                results.append(r.json()["headers"].get("x-modelgate-features"))
        except Exception as e:  # reported below
            errors.append(repr(e))

    before = stack.selects()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert results.count("hit") == n, results
    assert stack.selects() - before == 1


def test_redis_killed_mid_load_then_back(procs):
    budget_ms = 50
    s = Stack(procs, timeout_ms=budget_ms, local={"ttl_ms": 1000, "stale_ms": 0})
    for i in range(300):
        s.put_db("load%d" % i, {"profile": {"i": i}})
    import httpx
    c = httpx.Client(timeout=10)
    seen = []

    def req(user):
        t0 = time.monotonic()
        r = c.get("http://127.0.0.1:%d/predict" % s.gw.port,
                  headers={"host": "%s:%d" % (HOST, s.gw.port), "x-user-id": user})
        dt = time.monotonic() - t0
        assert r.status_code == 200
        st = r.json()["headers"]["x-modelgate-features"]
        seen.append((st, dt))
        return st

    for i in range(0, 40):  # warm-up: Redis and MariaDB answer
        assert req("load%d" % i) in ("hit", "timeout")
    s.redis.stop()  # SIGKILL, as a crash
    down = [req("load%d" % i) for i in range(40, 140)]
    # every request succeeded; after the loss was noticed, all say "unavailable"
    assert down[-50:] == ["unavailable"] * 50, down
    assert set(down) <= {"unavailable", "timeout", "hit"}, set(down)
    # the budget bounds the wait (+ the proxying itself, generous for sanitizer builds)
    worst = max(dt for st, dt in seen[40:])
    assert worst < (budget_ms + 250) / 1000.0, "worst request took %.0f ms" % (worst * 1000)
    recs = s.gw.wait_access(140)
    assert sum(1 for r in recs[40:] if r["features"] == "unavailable") >= 50
    assert all(r["status"] == 200 for r in recs)
    assert s.metric("modelgate_features_redis_up") == 0
    s.redis.start()
    # reconnect with backoff (max 200 ms here); Redis restarted empty: MariaDB refills it
    wait_for(lambda: s.metric("modelgate_features_redis_up") == 2, 10, 0.05, "Redis reconnect")
    sts = [req("load%d" % i) for i in range(140, 200)]
    assert sts.count("hit") >= 55, sts
    assert s.r.get("mgf:v1:digits:load150") == b"1"
    c.close()


def test_slow_mariadb_times_out_then_fills_the_caches(procs):
    # the app's budget is 2 s, but digits-production has its own: 100 ms
    s = Stack(procs, timeout_ms=2000, by_env={"production": 100})
    s.put_db("slow", {"recent": ["s"]})
    conn = s.db.connect()
    cur = conn.cursor()
    cur.execute("LOCK TABLES user_features WRITE")  # the gateway's SELECT now waits
    try:
        t0 = time.monotonic()
        h = s.get("slow")
        dt = time.monotonic() - t0
        assert h["x-modelgate-features"] == "timeout" and "x-user-features" not in h
        assert 0.09 <= dt < 0.6, "took %.0f ms" % (dt * 1000)
    finally:
        cur.execute("UNLOCK TABLES")
        conn.close()
    # the lookup went on without the request and filled Redis and the local cache
    wait_for(lambda: s.r.get("mgf:v1:digits:slow") == b"1", 5, 0.05, "the write-back")
    assert s.get("slow")["x-modelgate-features"] == "hit"
    assert s.metric("modelgate_features_timeouts_total") == 1
    assert s.gw.wait_access(2)[0]["features"] == "timeout"


def test_earlier_deadline_joining_later_times_out_on_time(procs):
    # One worker, so both requests share its fetch. digits-production waits up to 3 s,
    # digits-staging 150 ms: the staging request joins the fetch that the production one
    # started, and must still go on after its own 150 ms, not at the first waiter's deadline.
    s = Stack(procs, timeout_ms=3000, by_env={"staging": 150}, workers=1,
              envs=("production", "staging"))
    s.put_db("late", {"recent": ["x"]})
    import httpx
    url = "http://127.0.0.1:%d/predict" % s.gw.port

    def get(host):
        with httpx.Client(timeout=10) as c:
            t0 = time.monotonic()
            r = c.get(url, headers={"host": "%s:%d" % (host, s.gw.port), "x-user-id": "late"})
            assert r.status_code == 200
            return r.json()["headers"]["x-modelgate-features"], time.monotonic() - t0

    first = {}
    conn = s.db.connect()
    cur = conn.cursor()
    cur.execute("LOCK TABLES user_features WRITE")  # the fetch now waits in MariaDB
    try:
        t = threading.Thread(target=lambda: first.update(r=get(HOST)))
        t.start()
        wait_for(lambda: s.sample('modelgate_features_layer_total{layer="redis",result="miss"}')
                 == 1, 5, 0.02, "the first request's fetch to reach MariaDB")
        st, dt = get(HOST.replace("-production.", "-staging."))
        assert s.sample('modelgate_features_coalesced_total{layer="worker"}') == 1
        assert st == "timeout"
        assert 0.14 <= dt < 0.8, "the later, shorter budget ended after %.0f ms" % (dt * 1000)
    finally:
        cur.execute("UNLOCK TABLES")
        conn.close()
    t.join(10)
    assert first["r"][0] == "hit" and first["r"][1] < 3, first  # the first one still got them


def test_admin_put_get_delete(stack):
    r = stack.admin("PUT", "/v1/features/digits/u7",
                    json.dumps({"profile": {"plan": "pro", "n": 3}, "recent": ["x", "y"]}))
    assert r.status_code == 200, r.text
    text = canonical({"profile": {"n": "3", "plan": "pro"}, "recent": ["x", "y"]})
    assert r.json()["hash"] == feature_hash(text)
    assert stack.r.hgetall("mgf:v1:digits:u7:profile") == {b"plan": b"pro", b"n": b"3"}
    assert stack.get("u7")["x-user-features"] == text
    r = stack.admin("GET", "/v1/features/digits/u7")
    assert r.status_code == 200 and r.json()["features"]["recent"] == ["x", "y"]
    assert r.json()["hash"] == feature_hash(text)
    rows = stack.db.query("SELECT features FROM user_features WHERE user_id='u7'")
    assert json.loads(rows[0][0]) == json.loads(text)
    # refused with the reason: unknown group, wrong type, bad JSON
    r = stack.admin("PUT", "/v1/features/digits/u7", json.dumps({"nope": 1}))
    assert r.status_code == 400 and "unknown group" in r.json()["error"]["message"]
    r = stack.admin("PUT", "/v1/features/digits/u7", json.dumps({"recent": "x"}))
    assert r.status_code == 400 and "array" in r.json()["error"]["message"]
    r = stack.admin("PUT", "/v1/features/digits/u7", "{")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
    assert stack.admin("PUT", "/v1/features/nosuchapp/u7", "{}").status_code == 404
    assert stack.admin("POST", "/v1/features/digits/u7", "{}").status_code == 405
    r = stack.admin("DELETE", "/v1/features/digits/u7")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert stack.r.get("mgf:v1:digits:u7") == b"0"
    assert stack.admin("GET", "/v1/features/digits/u7").status_code == 404
    assert stack.admin("DELETE", "/v1/features/digits/u7").status_code == 404
    assert stack.get("u7")["x-modelgate-features"] == "miss"  # the worker dropped its copy


def test_admin_write_takes_effect_on_every_worker_at_once(procs):
    """After a PUT, a worker that had cached the user as unknown kept sending "miss" until
    local.negative_ttl_ms ran out (and one that had the old features, until local.ttl_ms),
    though the answer said Redis was refreshed. Now the write's answer comes once every worker
    of the gateway dropped its copies: the next request, on any worker, gets what was written,
    for a PUT, a bulk load and a DELETE alike. Local TTLs of a minute: nothing expires here."""
    s = Stack(procs, workers=2, local={"ttl_ms": 60000, "stale_ms": 0,
                                       "negative_ttl_ms": 60000})
    absent = 'modelgate_features_layer_total{layer="local",result="miss"}'

    def each_worker(user):
        """Requests on new connections (curl), spread by the kernel over both workers."""
        before = s.metric(absent)
        got = []
        for _ in range(20):
            status, _, _, body = curl(s.gw, "/predict", "-H", "x-user-id: " + user)
            assert status == 200, body
            h = json.loads(body)["headers"]
            got.append((h["x-modelgate-features"], h.get("x-user-features")))
        return got, s.metric(absent) - before

    got, looked_up = each_worker("carol")
    assert set(got) == {("miss", None)} and looked_up == 2, (got, looked_up)  # both cached it
    for body in ({"recent": ["i1"]}, {"recent": ["i2", "i1"]}):
        r = s.admin("PUT", "/v1/features/digits/carol", json.dumps(body))
        assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
        got, looked_up = each_worker("carol")
        assert set(got) == {("hit", canonical(body))}, got
        assert looked_up == 2, looked_up  # each worker read it once, then kept it
    r = bulk_post(s, json.dumps({"user": "carol", "features": {"recent": ["i3"]}}).encode())
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert set(each_worker("carol")[0]) == {("hit", canonical({"recent": ["i3"]}))}
    r = s.admin("DELETE", "/v1/features/digits/carol")
    assert r.status_code == 200, r.text
    assert set(each_worker("carol")[0]) == {("miss", None)}


def test_admin_write_says_whether_redis_has_it(stack):
    """MariaDB is the truth, so a PUT or DELETE with Redis down still answers 200; but a Redis
    that kept the old copy serves it until the key's TTL ends, so the answer says so (the
    caller can retry, or flush the key): "redis": refreshed | not_refreshed, with the reason."""
    body = json.dumps({"recent": ["a"]})
    r = stack.admin("PUT", "/v1/features/digits/w1", body)
    assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
    assert "redis_error" not in r.json()
    r = stack.admin("DELETE", "/v1/features/digits/w1")
    assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
    stack.redis.stop()
    r = stack.admin("PUT", "/v1/features/digits/w2", body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["redis"] == "not_refreshed" and "Redis" in doc["redis_error"], doc
    assert stack.db.query("SELECT COUNT(*) FROM user_features WHERE user_id='w2'")[0][0] == 1
    r = stack.admin("DELETE", "/v1/features/digits/w2")
    assert r.status_code == 200 and r.json()["redis"] == "not_refreshed", r.text
    lines = "\n".join(json.dumps({"user": "w%d" % i, "features": {"recent": ["b"]}})
                      for i in range(3, 6))
    r = bulk_post(stack, lines.encode())
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["accepted"] == 3 and doc["redis_not_refreshed"] == 3, doc
    assert "Redis" in doc["redis_error"], doc


def test_outdated_redis_copy_is_dropped_once_redis_answers_again(stack):
    """A PUT that MariaDB stored while Redis was stalled answers "not_refreshed", and Redis
    kept serving the user's previous features until redis.ttl_s (an hour by default; the
    tester found 1,712 such users after a 5 s stall during a bulk load). Now their Redis keys
    are dropped as soon as Redis answers again, and the next lookups read MariaDB."""
    r = stack.admin("PUT", "/v1/features/digits/st1", json.dumps({"recent": ["old"]}))
    assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
    assert json.loads(stack.get("st1")["x-user-features"]) == {"recent": ["old"]}
    stack.redis.proc.signal(signal.SIGSTOP)  # stalled: the write's refresh times out
    try:
        r = stack.admin("PUT", "/v1/features/digits/st1", json.dumps({"recent": ["new"]}))
    finally:
        stack.redis.proc.signal(signal.SIGCONT)
    assert r.status_code == 200 and r.json()["redis"] == "not_refreshed", r.text
    wait_for(lambda: stack.r.get("mgf:v1:digits:st1") != b"1" or
             stack.r.lrange("mgf:v1:digits:st1:recent", 0, -1) == [b"new"], 10, 0.1,
             "the outdated Redis copy dropped")
    time.sleep(1.1)  # local ttl_ms 1000
    assert json.loads(stack.get("st1")["x-user-features"]) == {"recent": ["new"]}
    assert "dropped its outdated copies of 1 user(s) of app digits" in stack.gw.proc.stderr()


def test_admin_bulk_load_counts_rows(stack):
    lines = []
    for i in range(1234):
        lines.append(json.dumps({"user": "b%d" % i, "features": {"recent": ["i%d" % i]}}))
    lines.insert(10, "not json")
    lines.insert(20, json.dumps({"user": "bad:id", "features": {}}))
    lines.insert(30, json.dumps({"user": "x", "features": {"unknown": 1}}))
    lines.insert(40, "")  # blank lines are skipped, not rejected

    def body():  # streamed in small chunks
        data = ("\n".join(lines)).encode()  # no final newline
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    import httpx
    r = httpx.post("http://127.0.0.1:%d/v1/features/digits" % stack.admin_port, content=body(),
                   timeout=60)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["accepted"] == 1234 and doc["rejected"] == 3, doc
    assert [e["line"] for e in doc["errors"]] == [11, 21, 31]
    assert stack.db.query("SELECT COUNT(*) FROM user_features")[0][0] == 1234
    assert stack.r.lrange("mgf:v1:digits:b1233:recent", 0, -1) == [b"i1233"]
    assert json.loads(stack.get("b77")["x-user-features"]) == {"recent": ["i77"]}


def bulk_post(stack, chunks, timeout=60):
    import httpx
    return httpx.post("http://127.0.0.1:%d/v1/features/digits" % stack.admin_port,
                      content=chunks, timeout=timeout)


def test_admin_put_with_empty_body_says_so(stack):
    r = stack.admin("PUT", "/v1/features/digits/u1", b"")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "bad_json" and "empty" in err["message"], err


def test_admin_refuses_a_key_given_twice(stack):
    """A group (or hash field) named twice in one body is refused with the reason, in a PUT and
    in a bulk line, instead of the last copy silently winning."""
    r = stack.admin("PUT", "/v1/features/digits/dup1",
                    '{"recent": ["a"], "recent": ["b"]}')
    assert r.status_code == 400, r.text
    assert "duplicate" in r.json()["error"]["message"], r.text
    r = stack.admin("PUT", "/v1/features/digits/dup1", '{"profile": {"n": "1", "n": "2"}}')
    assert r.status_code == 400 and "duplicate" in r.json()["error"]["message"], r.text
    assert stack.db.query("SELECT COUNT(*) FROM user_features WHERE user_id='dup1'")[0][0] == 0
    body = ('{"user": "dup2", "features": {"recent": ["a"], "recent": ["b"]}}\n'
            '{"user": "dup3", "features": {"recent": ["c"]}}\n').encode()
    doc = bulk_post(stack, body).json()
    assert doc["accepted"] == 1 and doc["rejected"] == 1, doc
    assert doc["errors"][0]["line"] == 1 and "duplicate" in doc["errors"][0]["error"], doc


def test_admin_refuses_a_list_over_max_items(stack):
    """A PUT whose list group held more than max_items was stored cut to the first max_items,
    answered 200 with the hash of what was kept: the caller never learned that items were
    dropped. Refused now, with the group, its length and max_items; in a bulk load the line
    is rejected with the same reason and the others are stored."""
    items = ["i%d" % i for i in range(51)]  # recent: max_items 50
    r = stack.admin("PUT", "/v1/features/digits/long1", json.dumps({"recent": items}))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "bad_features", err
    assert err["message"] == ('group "recent" has 51 items, more than its max_items (50); '
                              'send at most 50, newest first'), err
    assert stack.db.query("SELECT COUNT(*) FROM user_features WHERE user_id='long1'")[0][0] == 0
    assert stack.r.get("mgf:v1:digits:long1") is None
    r = stack.admin("PUT", "/v1/features/digits/long1", json.dumps({"recent": items[:50]}))
    assert r.status_code == 200, r.text
    assert r.json()["hash"] == feature_hash(canonical({"recent": items[:50]}))
    body = "\n".join(json.dumps({"user": u, "features": {"recent": items[:n]}})
                     for u, n in (("long2", 50), ("long3", 51), ("long4", 1))).encode()
    doc = bulk_post(stack, body).json()
    assert doc["accepted"] == 2 and doc["rejected"] == 1, doc
    assert doc["errors"] == [{"line": 2, "error": err["message"]}], doc
    assert stack.db.query("SELECT COUNT(*) FROM user_features WHERE user_id='long3'")[0][0] == 0


def test_features_without_any_group_are_no_features(stack):
    """A PUT of {} (or of empty groups only) made the user a "hit" with x-user-features: {}
    and a hash, while an unknown or deleted user is a "miss": two answers for "this user has
    no features". One now, whichever store holds it: a user without a group that has a value
    is a miss, without x-user-features, and Redis holds the marker 0 (for redis.ttl_s, as the
    user is known to MariaDB; an unknown one's is for negative_ttl_s). The row stays: GET
    answers it, with no hash since nothing is sent."""
    for user, body in (("e1", {}), ("e2", {"recent": [], "profile": {}, "vec": []})):
        r = stack.admin("PUT", "/v1/features/digits/" + user, json.dumps(body))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["hash"] is None and doc["bytes"] == 0 and doc["redis"] == "refreshed", doc
        assert stack.r.get("mgf:v1:digits:" + user) == b"0"
        assert 50 <= stack.r.ttl("mgf:v1:digits:" + user) <= 60  # ttl_s, not negative_ttl_s
        r = stack.admin("GET", "/v1/features/digits/" + user)
        assert r.status_code == 200 and r.json()["features"] == {} and r.json()["hash"] is None
    stack.put_db("e3", {})  # rows a pipeline wrote, read from MariaDB
    stack.put_db("e4", {"recent": [], "vec": {}})
    stack.put_redis("e5")  # a pipeline's marker 1 without any group key
    for user in ("e1", "e2", "e3", "e4", "e5"):
        h = stack.get(user)
        assert h["x-modelgate-features"] == "miss" and "x-user-features" not in h, (user, h)
    for user in ("e3", "e4"):  # written back as a user without features
        assert stack.r.get("mgf:v1:digits:" + user) == b"0"
        assert 50 <= stack.r.ttl("mgf:v1:digits:" + user) <= 60
    recs = stack.gw.wait_access(5)
    assert all(r["features"] == "miss" and r.get("features_hash") is None for r in recs), recs


def test_marker_left_without_its_group_keys_reads_mariadb(stack):
    """Group keys carry a TTL and Redis under maxmemory may evict them one by one, leaving the
    marker 1 with no group key, a state no writer leaves (a user without features gets 0).
    It read as "no features", cached, until the marker expired (redis.ttl_s, an hour by
    default), although MariaDB had them. Now MariaDB answers and its write-back puts the keys
    back. A marker 1 with a json group key of {} (keys there, values empty) stays a miss."""
    stack.put_db("ev1", {"recent": ["a"]})
    stack.put_redis("ev1", recent=["a"])
    stack.r.delete("mgf:v1:digits:ev1:recent")  # evicted; the marker stays
    before = stack.selects()
    h = stack.get("ev1")
    assert h["x-modelgate-features"] == "hit", h
    assert json.loads(h["x-user-features"]) == {"recent": ["a"]}
    assert stack.selects() == before + 1  # read from MariaDB
    wait_for(lambda: stack.r.lrange("mgf:v1:digits:ev1:recent", 0, -1) == [b"a"], 5, 0.05,
             "the write-back to restore the group key")
    stack.put_redis("ev2", vec={})  # a pipeline's marker 1 with an empty json group
    before = stack.selects()
    h = stack.get("ev2")
    assert h["x-modelgate-features"] == "miss" and "x-user-features" not in h, h
    assert stack.selects() == before


class HoldingRelay:
    """A TCP relay to a real Redis that, once told to, holds what a client sends from its next
    command with |trigger| in it (e.g. b"MULTI") until released: a slow link between one
    gateway and Redis at a chosen moment. Everything else passes as it comes."""

    def __init__(self, target_port, trigger):
        self.target = target_port
        self.trigger = trigger
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.socks = [self.srv]
        self.holding = False
        self.held = threading.Event()  # a MULTI is being held
        self.released = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src, dst, to_redis):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_redis and self.holding and self.trigger in data:
                    self.held.set()
                    self.released.wait(30)
                dst.sendall(data)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold_next_transaction(self):
        self.holding = True

    def release(self):
        self.holding = False
        self.released.set()

    def close(self):
        self.release()
        for x in self.socks:
            x.close()


@pytest.mark.parametrize("held", ["MULTI", "WATCH"])
def test_write_back_of_an_older_read_does_not_replace_another_gateways_write(procs, held):
    """Gateway A reads a user from MariaDB (Redis has no copy) just before gateway B takes a
    PUT of that user. A's write-back of what it read reached Redis after B's refresh and
    replaced it: every gateway then served the old features until redis.ttl_s ended. Here a
    relay between A and Redis holds A's write-back (MULTI) until B's PUT is answered. Now Redis
    drops it (A watched the user's keys before reading MariaDB), keeps B's write, and A counts
    the write-back as superseded. Held at A's WATCH instead, A reads MariaDB only after B's
    write: its write-back carries the new features (a WATCH after the read would let the old
    copy in)."""
    over, relays = {"reply_timeout_ms": 20000}, []  # A waits for its held write-back

    def via_relay(st):
        relays.append(HoldingRelay(st.redis.port, held.encode()))
        over["port"] = relays[0].port

    a = Stack(procs, workers=1, redis_over=over, before_start=via_relay)
    relay = relays[0]
    try:
        feats = json.loads(json.dumps(a.gw.conf["features"]))
        feats["redis"]["port"] = a.redis.port  # B talks to Redis directly
        b_admin = free_port()
        b = procs.gateway(routes_doc({"svc-a": [a.backend]}, [("digits", "production", "svc-a")]),
                          conf={"workers": 1, "features": feats,
                                "admin": {"listen": "127.0.0.1:%d" % b_admin}}, name="gateway-b")
        old, new = {"recent": ["old"]}, {"recent": ["new"]}
        a.put_db("dave", old)
        relay.hold_next_transaction()
        a.get("dave")  # Redis has no copy: A's lookup goes to MariaDB, and is held
        assert relay.held.wait(10), "A sent no %s" % held
        import httpx
        r = httpx.put("http://127.0.0.1:%d/v1/features/digits/dave" % b_admin,
                      content=json.dumps(new), timeout=30)
        assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
        assert a.r.lrange("mgf:v1:digits:dave:recent", 0, -1) == [b"new"]
        relay.release()
        wait_for(lambda: a.metric("modelgate_features_writeback_total") >= 1, 10, 0.05,
                 "A's write-back to end")
        assert a.r.lrange("mgf:v1:digits:dave:recent", 0, -1) == [b"new"]
        superseded = 1 if held == "MULTI" else 0
        assert a.sample('modelgate_features_writeback_total{result="superseded"}') == superseded
        assert a.sample('modelgate_features_writeback_total{result="ok"}') == 1 - superseded
        assert a.sample('modelgate_features_writeback_total{result="error"}') == 0
        time.sleep(1.2)  # A's worker kept what it read for local.ttl_ms (1 s): other gateways'
        # copies run their course (conf/README.md); then it reads Redis, which has B's write
        h = a.get("dave")
        assert json.loads(h["x-user-features"]) == new, h
        status, _, _, body = curl(b, "/predict", "-H", "x-user-id: dave")
        assert status == 200 and json.loads(json.loads(body)["headers"]["x-user-features"]) == new
    finally:
        relay.close()


def test_admin_user_id_may_be_percent_encoded(stack):
    # a client that encodes '@' (urllib.parse.quote, encodeURIComponent) means the same user
    r = stack.admin("PUT", "/v1/features/digits/ann%40example.com",
                    json.dumps({"recent": ["a"]}))
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "ann@example.com"
    r = stack.admin("GET", "/v1/features/digits/ann@example.com")
    assert r.status_code == 200 and r.json()["features"] == {"recent": ["a"]}, r.text
    # an escaped '/' or a bad escape is still not a user id
    assert stack.admin("GET", "/v1/features/digits/a%2Fb").status_code == 400
    assert stack.admin("GET", "/v1/features/digits/a%4").status_code == 400
    assert stack.admin("GET", "/v1/features/digits/a%zzb").status_code == 400


def test_admin_bulk_too_long_line_is_one_rejected_line(stack):
    """A line over the limit is rejected like any bad line, however it arrives: the rows
    before it (stored or still batched) and after it are stored, and the counts say so."""
    rows = [json.dumps({"user": "l%d" % i, "features": {"recent": ["i"]}}) for i in range(600)]
    long_line = json.dumps({"user": "long", "features": {"vec": "z" * 100000}})
    tail = [json.dumps({"user": "m%d" % i, "features": {"recent": ["j"]}}) for i in range(5)]

    def body():
        yield ("\n".join(rows) + "\n").encode()
        data = long_line.encode()
        for i in range(0, len(data), 8192):  # in pieces: no newline in sight for a while
            time.sleep(0.02)
            yield data[i:i + 8192]
        yield ("\n" + "\n".join(tail) + "\n").encode()

    r = bulk_post(stack, body())
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["accepted"] == 605 and doc["rejected"] == 1, doc
    assert doc["errors"][0]["line"] == 601 and "longer than" in doc["errors"][0]["error"], doc
    assert stack.db.query("SELECT COUNT(*) FROM user_features")[0][0] == 605
    # in one piece, or as the last line without a newline: refused the same way
    r = bulk_post(stack, [(long_line + "\n" + rows[0] + "\n").encode()])
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert "longer than" in r.json()["errors"][0]["error"], r.text
    r = bulk_post(stack, [(rows[0] + "\n" + long_line).encode()])
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert r.json()["errors"][0]["line"] == 2, r.text


def test_admin_bulk_cut_short_by_the_client_is_logged(stack):
    """A bulk load whose client goes away before the end of its body: the batches stored
    stay, and nobody was told. Now a warning says how far it got."""
    rows = "".join(json.dumps({"user": "cut%d" % i, "features": {"recent": ["i"]}}) + "\n"
                   for i in range(1200)).encode()
    head = (b"POST /v1/features/digits HTTP/1.1\r\nHost: admin\r\nContent-Length: %d\r\n\r\n"
            % (len(rows) + 1000))
    with H1Conn(stack.admin_port) as c:
        c.send(head + rows)
        wait_for(lambda: stack.db.query("SELECT COUNT(*) FROM user_features")[0][0] >= 1000, 10,
                 0.05, "two batches of 500 stored")
    line = wait_for(lambda: [ln for ln in stack.gw.log().splitlines()
                             if "bulk load of app digits cut short" in ln], 10, 0.05,
                    "the warning")[0]
    # how far its answer got when the client left: two batches stored, or one and one in flight
    m = re.search(r"after (\d+) lines, (\d+) rows stored( and one batch still being stored)?",
                  line)
    assert m and (m.group(2) == "1000" or (m.group(2) == "500" and m.group(3))), line
    assert stack.db.query("SELECT COUNT(*) FROM user_features")[0][0] == 1000


def test_admin_bulk_of_large_rows_fits_mariadb_packets(procs):
    """500 rows of 40 KB are 20 MB, more than MariaDB's max_allowed_packet (16 MB)."""
    s = Stack(procs, max_bytes=65536)
    row = json.dumps({"vec": "v" * 40000})

    def body():
        for i in range(520):
            yield ('{"user": "big%d", "features": %s}\n' % (i, row)).encode()

    r = bulk_post(s, body(), timeout=120)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["accepted"] == 520, r.text[:500]
    assert s.db.query("SELECT COUNT(*) FROM user_features")[0][0] == 520


def test_admin_bulk_names_the_lines_mariadb_did_not_store(stack):
    """MariaDB dies mid-load: 503 with counts, and the errors name the lines to send again."""
    def rows(prefix, n):
        return "".join(json.dumps({"user": "%s%d" % (prefix, i), "features": {"recent": ["x"]}})
                       + "\n" for i in range(n)).encode()

    def body():
        yield rows("d", 600)
        wait_for(lambda: stack.db.query("SELECT COUNT(*) FROM user_features")[0][0] == 500, 10,
                 what="the first batch stored")
        stack.db.stop(signal.SIGKILL)
        yield b"not json\n" + rows("e", 599)

    r = bulk_post(stack, body())
    assert r.status_code == 503, r.text
    doc = r.json()
    # the batch sent as MariaDB died got no answer: "unknown" when the statement left (it may
    # have been stored), "rejected" when sending it failed; the next one found no server
    unknown = doc.get("unknown", 0)
    assert doc["accepted"] == 500 and unknown in (0, 500), doc
    assert doc["rejected"] + unknown == 700, doc
    assert "MariaDB" in doc["database_error"], doc
    errs = doc["errors"]
    # rows 501-1000 are lines 501-1001 (line 601 is the bad one); the last batch, the rest,
    # in the same range when MariaDB failed both alike
    ranges = [(e["line"], e.get("last_line")) for e in errs]
    assert ranges in ([(501, 1001), (601, None), (1002, 1200)],
                      [(501, 1200), (601, None)]), errs
    assert ("may or may not be stored" if unknown else "not stored") in errs[0]["error"], errs
    assert "MariaDB" in errs[0]["error"], errs
    last = [e for e in errs if "last_line" in e][-1]
    assert "not stored" in last["error"] and "may or may not" not in last["error"], errs


def test_admin_bulk_names_every_line_to_send_again(stack):
    """A long load that outlives MariaDB: every line not stored is in a range the answer
    names, so that sending those ranges again stores every row. Each failed batch was a range
    of its own and the list stopped at 20 entries: a load of 12,000 lines named 5,000 of the
    11,500 it did not store. Batches that fail alike now make one range, and ranges are never
    cut from the list."""
    def body():
        yield "".join(json.dumps({"user": "n%d" % i, "features": {"recent": ["x"]}}) + "\n"
                      for i in range(500)).encode()
        wait_for(lambda: stack.db.query("SELECT COUNT(*) FROM user_features")[0][0] == 500, 10,
                 what="the first batch stored")
        stack.db.stop(signal.SIGKILL)
        for k in range(1, 24):
            yield "".join(json.dumps({"user": "n%d" % i, "features": {"recent": ["x"]}}) + "\n"
                          for i in range(500 * k, 500 * (k + 1))).encode()

    doc = bulk_post(stack, body()).json()
    ranges = [(e["line"], e["last_line"]) for e in doc["errors"] if "last_line" in e]
    stack.db.start()
    stored = {u for (u,) in stack.db.query("SELECT user_id FROM user_features")}
    assert len(stored) == doc["accepted"] == 500, doc
    missing = [i for i in range(12000) if "n%d" % i not in stored]
    named = [i for i in missing if any(a <= i + 1 <= b for a, b in ranges)]  # lines count from 1
    assert named == missing and len(missing) == 11500, (len(named), ranges)
    assert len(ranges) <= 3, ranges  # the batch in flight as it died, maybe; then the rest


def test_too_large_is_not_sent(procs):
    s = Stack(procs, max_bytes=100)
    s.put_redis("big", recent=["x" * 30] * 5)
    h = s.get("big")
    assert h["x-modelgate-features"] == "too_large" and "x-user-features" not in h
    r = s.admin("PUT", "/v1/features/digits/big2", json.dumps({"recent": ["y" * 200]}))
    assert r.status_code == 400 and "max_header_bytes" in r.json()["error"]["message"]


@pytest.mark.parametrize("group", ["vec", "profile"])
def test_huge_value_a_pipeline_wrote_is_too_large_unread(procs, group):
    """Features of megabytes a pipeline wrote straight into Redis (a JSON value, a hash of
    100,000 fields) were parsed and made canonical on the worker's loop before the size check:
    about a second per request of that user (the worker's other requests waited too). Past 8 x
    max_header_bytes of strings the user is too_large unread, within its budget, and stays so
    from the worker's cache."""
    s = Stack(procs, timeout_ms=300, workers=1)
    base = "mgf:v1:digits:huge"
    if group == "vec":
        text = json.dumps(list(range(1000000)))  # 6.9 MB, with blanks the canonical text drops
        s.r.set(base + ":vec", text, ex=60)
        raw = len(text)
    else:
        fields = {"f%d" % i: "v%d" % i for i in range(100000)}
        s.r.hset(base + ":profile", mapping=fields)
        s.r.expire(base + ":profile", 60)
        raw = sum(len(k) + len(v) for k, v in fields.items())
    s.r.set(base, "1", ex=60)
    s.put_redis("small", profile={"a": "1"})
    assert s.get("small")["x-modelgate-features"] == "hit"  # connected, warm
    for _ in range(2):  # Redis, then the worker's cache
        t0 = time.monotonic()
        h = s.get("huge")
        took = time.monotonic() - t0
        assert h["x-modelgate-features"] == "too_large" and "x-user-features" not in h, h
        assert took < 0.3 + 0.25, took  # the budget and a margin; 0.9-1.6 s before
    # the size said is the bytes in Redis, not the canonical text's: nothing was parsed (the
    # hash's text would be longer, the list's shorter)
    assert "features of %d bytes exceed features.max_header_bytes (8192)" % raw in \
        s.gw.proc.stderr()

def test_features_reach_h2_pods_indexed_once_they_repeat(procs, raw_pods):
    """x-user-features reaches an HTTP/2 pod never indexed the first time a value goes out
    (a one-off user's value would only push the fields that repeat out of the pod's HPACK
    table), and indexed once the same value goes out again (here from the worker's cache), so
    that the pod then gets a table index instead of the value to Huffman-decode. A value whose
    entry would take over a quarter of the pod's table (1 KiB of the default 4 KiB) is never
    indexed, repeated or not, not even as a connection's first request: the fields that repeat
    stay in the table."""
    pod = raw_pods("h2c", "200")
    s = Stack(procs, workers=1, pods=[pod])
    s.put_redis("large", recent=["item-%026d" % i for i in range(50)])  # ~1.6 KB of JSON
    for u in ("once", "rep", "other"):
        s.put_redis(u, profile={"age": "31", "u": u})
    users = ["large", "once", "rep", "rep", "rep", "rep", "other", "large", "large", "large"]
    with s.gw.h2() as c:
        for i, user in enumerate(users):
            r = c.get("/f/%d" % i, headers=[("x-user-id", user)])
            assert r.status == 200, r
    huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode
    decoder, sent_before = hpack.Decoder(), set()
    assert len(pod.blocks) == len(users), pod.blocks
    for i, (user, block) in enumerate(zip(users, pod.blocks)):
        fields = decoder.decode(block)
        feats = [f for f in fields if f[0] == "x-user-features"]
        assert len(feats) == 1 and ("x-modelgate-features", "hit") in fields, fields
        value = feats[0][1].encode()
        in_table = any(e == (b"x-user-features", value)
                       for e in decoder.header_table.dynamic_entries)
        as_literal = value in block or huffman(value) in block
        never = isinstance(feats[0], hpack.NeverIndexedHeaderTuple)
        what = "request %d (%s)" % (i, user)
        if value not in sent_before or user == "large":
            # a first value, or one too large for the table: never indexed, never in it
            assert never and not in_table and as_literal, what
        elif i == 3:  # the first repeat goes into the table (a literal with incremental indexing)
            assert not never and in_table and as_literal, what
        else:  # later repeats are a table index: the pod decodes no value
            assert not never and in_table and not as_literal, (what, block.hex())
        sent_before.add(value)
        if i >= 4:  # the fields that repeat stayed in the table: no literal of them
            for v in (s.gw.authority().encode(), b"hit"):
                assert v not in block and huffman(v) not in block, (what, v, block.hex())
    # once the field is in the table, a first value names it by index too
    name = b"x-user-features"
    for i in (6, 7):
        assert name not in pod.blocks[i] and huffman(name) not in pod.blocks[i], i


def test_features_repeat_across_lookups(procs, raw_pods):
    """Without the worker's cache (local.ttl_ms 0) every request of a user is a new lookup, and
    a new snapshot of the same text: the worker remembers the hashes of what went out, so the
    user's second request is indexed and the later ones are a table index too."""
    pod = raw_pods("h2c", "200")
    s = Stack(procs, workers=1, pods=[pod], local={"ttl_ms": 0, "negative_ttl_ms": 0})
    s.put_redis("rep", profile={"age": "31"}, recent=["item-%06d" % i for i in range(20)])
    with s.gw.h2() as c:
        c.get("/warm")  # the connection's first request may seed the table: not a features one
        for i in range(4):
            assert c.get("/f/%d" % i, headers=[("x-user-id", "rep")]).status == 200
    assert s.metric('modelgate_features_layer_total{layer="redis",result="hit"}') == 4
    huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode
    decoder, kinds = hpack.Decoder(), []
    for block in pod.blocks:
        fields = decoder.decode(block)
        feats = [f for f in fields if f[0] == "x-user-features"]
        if not feats:
            continue
        value = feats[0][1].encode()
        literal = value in block or huffman(value) in block
        never = isinstance(feats[0], hpack.NeverIndexedHeaderTuple)
        kinds.append("never" if never else "literal" if literal else "index")
    assert kinds == ["never", "literal", "index", "index"], kinds


def test_client_features_in_trailers_are_removed(procs, raw_pods):
    """A client cannot say what its features are in request trailers either: with features
    on, x-user-features and x-modelgate-features are removed from them (HTTP/2 and HTTP/1.1
    chunked), and the other trailers pass."""
    pod = raw_pods("h2c", "200", wait_end=True)
    s = Stack(procs, workers=1, pods=[pod])
    s.put_redis("t1", profile={"age": "31"})
    forged = [("x-user-features", '{"profile":{"age":"99"}}'), ("x-modelgate-features", "hit"),
              ("x-checksum", "abc")]
    with s.gw.h2() as c:
        st = c.request("POST", "/t", headers=[("x-user-id", "t1")], body=b"x", trailers=forged)
        assert st.status == 200, st
    with H1Conn(s.gw.port) as c:
        c.send(h1_request_bytes("POST", "/t1", s.gw.authority(), headers=[("x-user-id", "t1")],
                                body=b"x", chunked=True, trailers=forged))
        assert c.read_response().status == 200
    assert len(pod.trailer_blocks) == 2, pod.trailer_blocks
    decoder = hpack.Decoder()
    for head, trailer in zip(pod.blocks, pod.trailer_blocks):
        fields = dict(decoder.decode(head))
        assert json.loads(fields["x-user-features"]) == {"profile": {"age": "31"}}, fields
        assert decoder.decode(trailer) == [("x-checksum", "abc")]


@pytest.mark.parametrize("table,nusers", [(65536, 10), (4096, 10), (1 << 20, 130)])
def test_features_stay_indexed_in_a_larger_pod_table(procs, raw_pods, table, nusers):
    """A pod that offers a 64 KiB HPACK table (modelgate-runtime does) gets it used: ten users'
    features (~6.5 KB, more than the default 4 KiB table holds) go out three times in turn,
    and the third time every one is a table index. With 4 KiB, the oldest are evicted by then
    and go out as literals again. A pod offering more gets 64 KiB, no more: 130 users (~85 KB)
    in turn do not fit, and are evicted before they come back."""
    pod = raw_pods("h2c", "200", settings=[(1, table)])  # SETTINGS_HEADER_TABLE_SIZE
    s = Stack(procs, workers=1, pods=[pod])
    users = ["u%d" % i for i in range(nusers)]
    for u in users:
        s.put_redis(u, recent=["item-%06d-%s" % (i, u) for i in range(40)])  # ~600 bytes
    with s.gw.h2() as c:
        c.get("/warm")  # the connection's first request: the pod's SETTINGS come back
        for turn in range(3):
            for u in users:
                assert c.get("/f", headers=[("x-user-id", u)]).status == 200
    huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 1 << 20
    literals = []
    for block in pod.blocks:
        value = dict(decoder.decode(block)).get("x-user-features", "").encode()
        literals.append(bool(value) and (value in block or huffman(value) in block))
    assert len(literals) == 1 + 3 * nusers, literals
    third = literals[1 + 2 * nusers:]
    if table == 65536:
        assert not any(third), literals  # every value of the third turn was an index
    else:  # evicted before their user came back: every value a literal again (with the
        # 1 MiB offered, 130 users would all fit)
        assert all(third), literals


def test_metrics_page(stack):
    stack.put_redis("m1", profile={"a": "1"})
    stack.get("m1")
    stack.get("m1")
    m = stack.metrics()
    assert 'modelgate_features_requests_total{status="hit"} 2' in m
    assert 'modelgate_features_layer_total{layer="local",result="hit"} 1' in m
    assert "modelgate_features_lookup_seconds_count 2" in m
    assert 'modelgate_features_hit_ratio{layer="local"} 0.5' in m
    assert "modelgate_features_timeouts_total 0" in m


def test_config_errors_are_reported(procs, tmp_path):
    import subprocess
    from conftest import GATEWAY_BIN
    conf = tmp_path / "gateway.json"
    conf.write_text(json.dumps({
        "listen": ["127.0.0.1:%d" % free_port()],
        "features": {"redis": {"port": 0}, "apps": {"digits": {
            "timeout_ms": 0, "groups": [{"name": "Bad", "type": "set"}]}}, "typo": 1}}))
    r = subprocess.run([GATEWAY_BIN, "--check-config", str(conf), "--backend", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    for want in ("features.typo: unknown key", "features.redis.port:",
                 "features.apps.digits.timeout_ms:", "features.apps.digits.groups[0].name:",
                 "features.apps.digits.groups[0].type:"):
        assert want in r.stderr, r.stderr


def test_password_file_of_two_lines_is_refused(tmp_path):
    """A password file holds one line. "s3cret\nsecond" used to be taken whole, newline and all,
    as the password (AUTH then failed at run time); now the config is refused, naming the key
    and the file. One line with spaces and a CRLF ending is a password."""
    import subprocess
    from conftest import GATEWAY_BIN
    conf = tmp_path / "gateway.json"
    conf.write_text(json.dumps({
        "listen": ["127.0.0.1:%d" % free_port()],
        "features": {"redis": {"port": free_port(), "password_file": "redis.password"},
                     "mariadb": {"port": free_port(), "password_file": "mariadb.password"},
                     "apps": {"digits": {"timeout_ms": 5, "groups": GROUPS}}}}))

    def check():
        return subprocess.run([GATEWAY_BIN, "--check-config", str(conf), "--backend",
                               "127.0.0.1:1"], capture_output=True, text=True, timeout=10)

    (tmp_path / "redis.password").write_text("s3cret\nsecond\n")
    (tmp_path / "mariadb.password").write_bytes(b"s3cret\r\nsecond\r\n")
    r = check()
    assert r.returncode == 1, r.stderr
    for store, byte in (("redis", "0a"), ("mariadb", "0d")):
        want = 'features.%s.password_file: "%s" has more than one line (byte 0x%s at offset 6;' % (
            store, tmp_path / ("%s.password" % store), byte)
        assert want in r.stderr, r.stderr
    assert "second" not in r.stderr

    (tmp_path / "redis.password").write_bytes(b"correct horse battery\r\n")
    (tmp_path / "mariadb.password").write_text("s3cret\n")
    r = check()
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", ["v", "v\u00e9"])  # ASCII; non-ASCII (read by jansson)
def test_long_hash_field_reads_the_same_from_redis_as_from_mariadb(stack, value):
    # A hash field of 300 bytes: the first request reads MariaDB (and writes Redis back), the
    # next one, past the local TTL, reads Redis. Both must send the same bytes (and hash).
    field = "f" * 300
    doc = {"profile": {field: value, "short": "w"}}
    stack.put_db("longf", doc)
    h = stack.get("longf")
    assert h["x-modelgate-features"] == "hit"
    assert h["x-user-features"] == canonical(doc)
    assert stack.r.hgetall("mgf:v1:digits:longf:profile")[field.encode()] == value.encode()
    time.sleep(1.1)  # local ttl_ms 1000: the next one is read from Redis
    before = stack.selects()
    h2 = stack.get("longf")
    assert stack.selects() == before  # Redis answered
    assert h2["x-user-features"] == h["x-user-features"]


def escape_cases():
    """Strings of 1-20 bytes with one byte that JSON escapes ('"', '\\', a control byte, NUL,
    DEL) at every position, and plain ones."""
    out = []
    for n in range(1, 21):
        out.append("p" * n)
        for pos in range(n):
            for ch in ('"', "\\", "\n", "\x01", "\x00", "\x1f", "\x7f"):
                out.append(("x" * pos + ch + "y" * n)[:n])
    return out


def test_escapes_anywhere_in_a_value_read_from_redis(stack):
    # Values a pipeline wrote to Redis with bytes to escape at every offset: the gateway's
    # snapshot must be the canonical JSON (jansson's form, as MariaDB's rows are written).
    cases = escape_cases()
    for k in range(0, len(cases), 50):
        recent = cases[k:k + 50]
        profile = {"f%d" % i: v for i, v in enumerate(cases[k:k + 20])}
        user = "esc%d" % k
        stack.put_redis(user, profile=profile, recent=recent)
        h = stack.get(user)
        assert h["x-modelgate-features"] == "hit", (user, h)
        assert h["x-user-features"] == canonical({"profile": profile, "recent": recent}), user


# Empty values of a group: as a MariaDB row or an admin PUT holds them, and as a pipeline may
# write them to Redis (the text of the json key; None: no key, since Redis holds no empty hash
# or list). They are left out of the snapshot, whichever store serves it.
EMPTY_GROUPS = [("vec", "{}"), ("vec", "[]"), ("vec", "{ }"), ("vec", " {}\n"), ("vec", "[ ]"),
                ("vec", "\t[]\r\n"), ("profile", None), ("recent", None)]
# json values that are not empty: sent as they are
KEPT_JSON = [("vec", "null"), ("vec", '""'), ("vec", "0"), ("vec", "false")]


@pytest.mark.parametrize("group, text", EMPTY_GROUPS + KEPT_JSON)
def test_empty_group_reads_the_same_from_every_store(stack, group, text):
    """A json group of {} was left out when MariaDB served the user (a row, or an admin PUT)
    but sent as "vec":{} when a pipeline had written {} to Redis: the same features gave other
    bytes and another features_hash, i.e. false training/serving skew. One rule now, for every
    store: a group whose value is {} or [] is left out, whatever its type."""
    full = {"profile": {"k": "v"}, "recent": ["a"], "vec": [1]}
    value = {"profile": {}, "recent": []}[group] if text is None else json.loads(text)
    doc = dict(full, **{group: value})
    left_out = (group, text) in EMPTY_GROUPS
    want = canonical({g: v for g, v in doc.items() if g != group or not left_out})
    # MariaDB: a row a pipeline wrote, and one the admin API wrote
    stack.put_db("row", doc)
    r = stack.admin("PUT", "/v1/features/digits/put", json.dumps(doc))
    assert r.status_code == 200, r.text
    stack.r.delete("mgf:v1:digits:put")  # its marker: not cached, so MariaDB answers
    # Redis, written by a pipeline in the documented layout
    stack.put_redis("pipe", **{g: v for g, v in full.items() if g != group})
    if text is not None:
        stack.r.set("mgf:v1:digits:pipe:vec", text, ex=60)
    before = stack.selects()
    got = [stack.get(user)["x-user-features"] for user in ("row", "put", "pipe")]
    assert stack.selects() - before == 2  # row and put from MariaDB, pipe from Redis
    assert got == [want] * 3
    recs = [rec for rec in stack.gw.wait_access(3) if rec["features"] == "hit"]
    assert [rec["features_hash"] for rec in recs] == [feature_hash(want)] * 3
    assert r.json()["hash"] == feature_hash(want)  # what the admin PUT said it stored


def test_del_byte_is_escaped_from_every_store(stack):
    """DEL (0x7f) is no field-value byte (RFC 9110 5.5), and jansson leaves it raw: a user whose
    features held one had every request reset by an nghttp2 pod (502), and five such requests
    got the pod ejected, failing everyone else. It goes out as \\u007f now (as Python's json
    writes it), whichever store served the user and whatever the group's type."""
    doc = {"profile": {"k": "a\x7fb"}, "recent": ["\x7f", "x" * 9 + "\x7f"], "vec": ["d\x7f"]}
    want = canonical(doc)
    assert "\\u007f" in want and "\x7f" not in want
    stack.put_db("row", doc)
    r = stack.admin("PUT", "/v1/features/digits/put", json.dumps(doc))
    assert r.status_code == 200, r.text
    stack.put_redis("pipe", **doc)
    got = [stack.get(user) for user in ("row", "put", "pipe", "row")]
    assert [h["x-modelgate-features"] for h in got] == ["hit"] * 4, got
    assert [h["x-user-features"] for h in got] == [want] * 4
    assert r.json()["hash"] == feature_hash(want)


def test_user_ids_that_differ_in_case_are_two_users(stack):
    """Redis keys tell "CaseUser" from "caseuser"; the table's utf8mb4 default collation did
    not: one row, the second PUT replacing the first's features, served to both once Redis
    forgot them, and a DELETE of "CASEUSER" (never written) removed it. schema.sql and the
    gateway's CREATE make user ids case-sensitive (utf8mb4_bin) now."""
    for user, item in (("CaseUser", "upper"), ("caseuser", "lower")):
        r = stack.admin("PUT", "/v1/features/digits/" + user, json.dumps({"recent": [item]}))
        assert r.status_code == 200, r.text
    assert stack.db.query("SELECT COUNT(*) FROM user_features WHERE app = 'digits'")[0][0] == 2
    r = stack.admin("DELETE", "/v1/features/digits/CASEUSER")
    assert r.status_code == 404, r.text
    for user, item in (("CaseUser", "upper"), ("caseuser", "lower")):
        stack.r.delete("mgf:v1:digits:" + user)  # its marker: MariaDB answers
        assert stack.admin("GET", "/v1/features/digits/" + user).json()["features"] == {
            "recent": [item]}
        h = stack.get(user)
        assert h["x-user-features"] == canonical({"recent": [item]}), (user, h)


@pytest.mark.parametrize("charset,collation,case_sensitive", [
    ("utf8mb4", "utf8mb4_general_ci", False),  # utf8mb4's default: tables made before
    ("latin1", "latin1_general_cs", True),  # "_cs" (utf8mb4_uca1400_as_cs in MariaDB 11)
])
def test_table_collation_of_user_ids_is_checked(procs, charset, collation, case_sensitive):
    """A table made before (utf8mb4's case-insensitive default collation) is used, and the
    log says once what it does to user ids and the ALTER TABLE that fixes it. A case-sensitive
    collation that is not binary gets no such ERROR (the first check took only "_bin" ones)."""
    def table(s):
        ids = "CHARACTER SET %s COLLATE %s NOT NULL" % (charset, collation)
        s.db.query("DROP TABLE user_features")
        s.db.query("CREATE TABLE user_features (app VARCHAR(64) %s, user_id VARCHAR(128) %s, "
                   "features LONGTEXT NOT NULL, updated_at TIMESTAMP(6) NOT NULL DEFAULT "
                   "CURRENT_TIMESTAMP(6), PRIMARY KEY (app, user_id)) DEFAULT CHARSET=utf8mb4"
                   % (ids, ids))
    s = Stack(procs, before_start=table)
    s.put_db("Old1", {"recent": ["x"]})
    assert s.get("Old1")["x-modelgate-features"] == "hit"
    if case_sensitive:
        assert s.get("old1")["x-modelgate-features"] == "miss"
        assert "case-insensitive collation" not in s.gw.log()
        return
    wait_for(lambda: "case-insensitive collation %s" % collation in s.gw.log(), 10, 0.05,
             "the collation error")
    assert s.gw.log().count("case-insensitive collation") == 1
    assert "CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" in s.gw.log()


@pytest.mark.parametrize("how", ["client_kill", "idle_timeout"])
def test_admin_write_reaches_redis_after_it_closed_the_connection(procs, how):
    """Redis closed the connection a MariaDB thread keeps for write-backs (CLIENT KILL, a
    restart, or its idle "timeout", as it may do in production): the next PUT and DELETE must
    still replace what Redis holds, or requests get the old features for redis.ttl_s."""
    s = Stack(procs, db_threads=1)
    r = s.admin("PUT", "/v1/features/digits/rk", json.dumps({"recent": ["old"]}))
    assert r.status_code == 200, r.text
    assert s.r.lrange("mgf:v1:digits:rk:recent", 0, -1) == [b"old"]
    if how == "client_kill":
        s.r.client_kill_filter(_type="normal", skipme=True)
    else:
        s.r.config_set("timeout", 1)
        try:
            # the thread's connection ran EXEC last; wait until Redis has closed it
            wait_for(lambda: "cmd=exec" not in str(s.r.execute_command("CLIENT", "LIST")), 10,
                     0.1, "Redis to close the idle write-back connection")
        finally:
            s.r.config_set("timeout", 0)
    r = s.admin("PUT", "/v1/features/digits/rk", json.dumps({"recent": ["new"]}))
    assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
    assert s.r.lrange("mgf:v1:digits:rk:recent", 0, -1) == [b"new"]
    assert s.sample('modelgate_features_writeback_total{result="error"}') == 0
    wait_for(lambda: s.metric("modelgate_features_redis_up") == 2, 10, 0.05, "Redis reconnect")
    assert json.loads(s.get("rk")["x-user-features"]) == {"recent": ["new"]}
    r = s.admin("DELETE", "/v1/features/digits/rk")
    assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
    assert s.r.get("mgf:v1:digits:rk") == b"0"


def test_admin_write_during_a_lookup_is_not_undone_by_its_write_back(procs):
    # The lookups read a view that sleeps a second after reading the row, so that an admin
    # write lands while a lookup holds the old row. The lookup's write-back must not replace
    # the new features in Redis with the old ones (requests would get them for redis.ttl_s).
    def slow_view(st):
        st.db.query("CREATE VIEW slow_features AS SELECT * FROM user_features "
                    "WHERE SLEEP(1) = 0")
    s = Stack(procs, timeout_ms=50, table="slow_features", before_start=slow_view)
    s.put_db("race", {"recent": ["old"]})
    got = {}
    t = threading.Thread(target=lambda: got.update(h=s.get("race")))
    t.start()
    wait_for(lambda: any(row[6] == "User sleep" and "slow_features" in str(row[7])
                         for row in s.db.query("SHOW FULL PROCESSLIST")), 5, 0.02,
             "the lookup to have read the row")
    r = s.admin("PUT", "/v1/features/digits/race", json.dumps({"recent": ["new"]}))
    assert r.status_code == 200, r.text
    t.join(10)
    assert got["h"]["x-modelgate-features"] == "timeout"
    wait_for(lambda: s.sample('modelgate_features_writeback_total{result="ok"}') == 2, 5, 0.05,
             "both write-backs")
    assert s.r.lrange("mgf:v1:digits:race:recent", 0, -1) == [b"new"]
    time.sleep(1.1)  # local ttl_ms 1000
    assert json.loads(s.get("race")["x-user-features"]) == {"recent": ["new"]}


def test_wrong_redis_password_is_logged_and_never_up(procs):
    """A Redis that refuses the gateway's AUTH (features.redis.password_file holds another
    password than its requirepass) used to be invisible: AUTH went out without a reply
    callback, the workers counted as connected (modelgate_features_redis_up), and every lookup
    failed silently as "unavailable". Now the refused AUTH fails the connection: logged once
    per worker with Redis's message and the address (never the password), counted in
    modelgate_features_redis_connect_failures_total, retried with backoff - and once Redis
    takes the password, the workers come up."""
    import redis
    pwfile = os.path.join(procs.dir, "redis.password")
    with open(pwfile, "w") as f:
        f.write("wrongpw\n")
    s = Stack(procs, redis_over={"password_file": pwfile}, wait_up=False,
              before_start=lambda st: st.redis.client().config_set("requirepass", "rightpw"))
    admin = redis.Redis(host="127.0.0.1", port=s.redis.port, password="rightpw",
                        socket_timeout=5)
    line = "Redis 127.0.0.1:%d: AUTH refused (WRONGPASS" % s.redis.port
    wait_for(lambda: s.gw.proc.stderr().count(line) == 2, 5, 0.05, "one line per worker")
    # retried with backoff (reconnect_max_ms 200 here), and never taken for up
    wait_for(lambda: s.metric("modelgate_features_redis_connect_failures_total") >= 8, 5, 0.05,
             "the reconnects to fail too")
    assert s.metric("modelgate_features_redis_up") == 0
    assert s.metric("modelgate_features_redis_connects_total") == 0
    assert s.get("pw1")["x-modelgate-features"] == "unavailable"
    err = s.gw.proc.stderr()
    assert err.count(line) == 2, err  # once per cause and worker, not once per attempt
    assert "features.redis.password_file" in err and "wrongpw" not in err, err
    # Redis now wants the password the gateway has: the next attempt of each worker is up
    admin.config_set("requirepass", "wrongpw")
    wait_for(lambda: s.metric("modelgate_features_redis_up") == 2, 5, 0.05, "both workers up")
    s.r = redis.Redis(host="127.0.0.1", port=s.redis.port, password="wrongpw", socket_timeout=5)
    s.put_redis("pw1", recent=["a"])
    assert s.get("pw1")["x-modelgate-features"] == "hit"
    assert "connected after" in s.gw.proc.stderr()


def test_wrong_redis_password_for_the_write_back_is_reported(procs):
    """The MariaDB threads' write-back connection checked AUTH's reply but said nothing: an
    admin write answered "redis_error": "cannot connect to Redis ..." without the reason, and
    nothing was logged. Now the reason is Redis's message, in the answer and in the log (once
    per cause and thread, never the password)."""
    pwfile = os.path.join(procs.dir, "redis.password")
    with open(pwfile, "w") as f:
        f.write("wrongpw\n")
    s = Stack(procs, redis_over={"password_file": pwfile}, wait_up=False, db_threads=1,
              before_start=lambda st: st.redis.client().config_set("requirepass", "rightpw"))
    want = "Redis 127.0.0.1:%d: AUTH refused (WRONGPASS" % s.redis.port
    for i in range(2):  # the second one after the thread's 500 ms backoff: a new attempt
        r = s.admin("PUT", "/v1/features/digits/wb%d" % i, json.dumps({"recent": ["a"]}))
        assert r.status_code == 200, r.text
        assert r.json()["redis"] == "not_refreshed", r.text
        assert r.json()["redis_error"].startswith(want), r.text
        time.sleep(0.6)
    assert s.db.query("SELECT COUNT(*) FROM user_features")[0][0] == 2
    err = s.gw.proc.stderr()
    lines = [ln for ln in err.splitlines() if "write-back: " + want in ln]
    assert len(lines) == 1, err  # once per cause
    assert "features.redis.password_file" in lines[0] and "wrongpw" not in err, err
    # the two writes, and the attempts to drop the copies they left outdated (once a second)
    assert s.sample('modelgate_features_writeback_total{result="error"}') >= 2


def test_error_replies_to_lookups_are_logged(stack):
    """An error reply to a lookup (here NOPERM: an ACL change took HGETALL from the gateway's
    user; also OOM, LOADING, MISCONF...) made the request "unavailable" without a word. It is
    logged now, with Redis's message and the address, at most one line every few seconds per
    worker (with the count of the others)."""
    stack.put_redis("acl1", profile={"a": "1"}, recent=["x"])
    stack.r.execute_command("ACL", "SETUSER", "default", "-hgetall")
    try:
        # one kept-alive connection: one worker; "unavailable" is not cached, each one asks
        sts = [stack.get("acl1")["x-modelgate-features"] for _ in range(5)]
    finally:
        stack.r.execute_command("ACL", "SETUSER", "default", "+hgetall")
    assert sts == ["unavailable"] * 5, sts
    err = stack.gw.proc.stderr()
    lines = [ln for ln in err.splitlines() if "error reply" in ln]
    assert len(lines) == 1, err
    assert ("Redis 127.0.0.1:%d: error reply reading group profile of a user of app digits "
            "(NOPERM" % stack.redis.port) in lines[0], lines
    assert stack.get("acl1")["x-modelgate-features"] == "hit"


@pytest.mark.parametrize("how", ["put", "bulk", "put-after-client-kill"])
def test_write_mariadb_did_not_answer_drops_the_redis_copy(procs, how):
    """MariaDB hung (SIGSTOP) past mariadb.timeout_s while a write was in it, then resumed and
    carried it out. The answer said "not stored" (503; the bulk load's "rows not stored"),
    and Redis kept serving the old features for redis.ttl_s. Now the answer says the outcome
    is unknown (504 write_outcome_unknown; "unknown" rows in a bulk load), and the users' Redis
    copies are dropped, so the next lookup reads MariaDB, whichever way it went."""
    s = Stack(procs, db_threads=1, db_over={"timeout_s": 1}, local={"ttl_ms": 0})
    r = s.admin("PUT", "/v1/features/digits/inc1", json.dumps({"recent": ["old"]}))
    assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
    assert s.get("inc1")["x-user-features"] == canonical({"recent": ["old"]})
    if how == "put-after-client-kill":
        # Redis closed the write-back connection meanwhile: the drop goes on a new one (the
        # first version of the drop used the dead one and left the copy)
        s.r.client_kill_filter(_type="normal", skipme=True)
    s.db.proc.signal(signal.SIGSTOP)
    try:
        if how.startswith("put"):
            r = s.admin("PUT", "/v1/features/digits/inc1", json.dumps({"recent": ["new"]}))
            assert r.status_code == 504, r.text
            err = r.json()["error"]
            assert err["code"] == "write_outcome_unknown", err
            assert "may or may not be stored" in err["message"], err
        else:
            r = s.admin("POST", "/v1/features/digits",
                        json.dumps({"user": "inc1", "features": {"recent": ["new"]}}) + "\n")
            assert r.status_code == 503, r.text
            doc = r.json()
            assert doc["unknown"] == 1 and doc["rejected"] == 0 and doc["accepted"] == 0, doc
            assert "may or may not be stored" in doc["errors"][0]["error"], doc
    finally:
        s.db.proc.signal(signal.SIGCONT)
    assert s.r.exists("mgf:v1:digits:inc1") == 0  # the marker: the next lookup reads MariaDB
    assert s.r.exists("mgf:v1:digits:inc1:recent") == 0
    wait_for(lambda: s.db.query("SELECT features FROM user_features WHERE user_id = 'inc1'")
             [0][0] == '{"recent":["new"]}', 10, 0.1, "the resumed MariaDB to carry it out")
    # (the MariaDB thread reconnects with its backoff: "unavailable" until then)
    h = wait_for(lambda: (lambda h: h["x-modelgate-features"] != "unavailable" and h)(
        s.get("inc1")), 10, 0.1, "a lookup after the reconnect")
    assert h.get("x-user-features") == canonical({"recent": ["new"]}), h


def test_admin_refresh_redis_did_not_answer_says_so(procs):
    """A refresh Redis did not answer (SIGSTOP) said redis_error "Resource temporarily
    unavailable", hiredis's strerror(EAGAIN); it names the timeout now."""
    s = Stack(procs, db_threads=1, redis_over={"reply_timeout_ms": 300})
    r = s.admin("PUT", "/v1/features/digits/slow1", json.dumps({"recent": ["a"]}))
    assert r.status_code == 200 and r.json()["redis"] == "refreshed", r.text
    s.redis.proc.signal(signal.SIGSTOP)
    try:
        r = s.admin("PUT", "/v1/features/digits/slow1", json.dumps({"recent": ["b"]}))
    finally:
        s.redis.proc.signal(signal.SIGCONT)
    assert r.status_code == 200 and r.json()["redis"] == "not_refreshed", r.text
    assert "no reply within redis.reply_timeout_ms (300 ms)" in r.json()["redis_error"], r.text


def test_the_client_sees_the_features_status(stack):
    """DESIGN (step 5): a request that goes on without features says so in a response header
    and the log. The pod got x-modelgate-features, the client nothing. Now the client's answer
    carries it too, the gateway's word: a pod's own x-modelgate-features does not pass."""
    import httpx
    stack.put_redis("seen1", recent=["a"])
    url = "http://127.0.0.1:%d/predict?set-header=x-modelgate-features:forged" % stack.gw.port
    with httpx.Client(timeout=10) as c:
        for user, want in (("seen1", "hit"), ("nobody-here", "miss"), (None, "none")):
            h = {"host": "%s:%d" % (HOST, stack.gw.port)}
            if user:
                h["x-user-id"] = user
            r = c.get(url, headers=h)
            assert r.status_code == 200, r.text
            assert r.headers.get_list("x-modelgate-features") == [want], (user, r.headers)


def test_admin_write_the_table_cannot_hold_is_a_500(procs):
    """A features table narrower than schema.sql's (features VARCHAR(30)) refused a PUT with
    "Data too long", answered 503 features_unavailable, as if sending it again could help. It
    is the table's fault: 500 features_table_refused, naming the table and schema.sql."""
    def narrow(s):
        s.db.query("ALTER TABLE user_features MODIFY features VARCHAR(30) NOT NULL")
    s = Stack(procs, before_start=narrow)
    r = s.admin("PUT", "/v1/features/digits/short", json.dumps({"recent": ["a"]}))
    assert r.status_code == 200, r.text
    r = s.admin("PUT", "/v1/features/digits/long", json.dumps({"recent": ["a" * 40]}))
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert err["code"] == "features_table_refused", err
    assert "user_features" in err["message"] and "features/schema.sql" in err["message"], err
    assert "Data too long" in err["message"], err


def test_a_short_budget_ends_on_time(procs):
    """A 5 ms budget with Redis hung: the request goes on at 5 ms, not at the next tick of a
    coarse clock. On libevent's default clock (CLOCK_MONOTONIC_COARSE, a 4 ms tick) the wait
    before the upstream request had a median of 6.6 ms and reached 9 ms. Budgets are timers on
    a timerfd of each worker's (common/ptimer.h). modelgate_features_timeout_late_seconds says
    how long after its deadline each timeout went on: on a 4 ms tick that spreads evenly over
    0-4 ms (a quarter under 1 ms), on the timerfd it is tens of microseconds. So most of the
    41 must be under 1 ms: a budget 20 times wider than what a timerfd takes, even here under
    the sanitizers. The median wait (from the access log: it includes delivering the answer) is
    printed, and checked to be no shorter than the budget."""
    budget_ms = 5
    s = Stack(procs, timeout_ms=budget_ms, workers=2, redis_over={"reply_timeout_ms": 30000})
    s.put_redis("warm", recent=["a"])
    assert s.get("warm")["x-modelgate-features"] == "hit"
    assert s.metric("modelgate_features_timeout_late_seconds_count") == 0
    s.redis.proc.signal(signal.SIGSTOP)
    try:
        for i in range(41):
            assert s.get("late%d" % i)["x-modelgate-features"] == "timeout"
    finally:
        s.redis.proc.signal(signal.SIGCONT)
    recs = [r for r in s.gw.wait_access(42) if r.get("features") == "timeout"]
    assert len(recs) == 41
    waits = sorted((r["total_us"] - r["upstream_us"]) / 1000.0 for r in recs)
    median = waits[len(waits) // 2]
    late = {le: s.sample('modelgate_features_timeout_late_seconds_bucket{le="%s"}' % le)
            for le in ("0.00025", "0.001", "0.004", "+Inf")}
    mean_us = 1e6 * s.metric("modelgate_features_timeout_late_seconds_sum") / 41
    print("features: %d ms budget, wait before the upstream: median %.2f ms, max %.2f ms; "
          "timeouts late by at most 0.25/1/4 ms: %s of 41, mean %.0f us" % (
              budget_ms, median, waits[-1], [late["0.00025"], late["0.001"], late["0.004"]],
              mean_us))
    assert s.metric("modelgate_features_timeout_late_seconds_count") == 41
    assert late["+Inf"] == 41, late
    assert late["0.001"] >= 31, late  # on a 4 ms tick, about 10 would be
    assert median >= budget_ms, waits


def test_hung_redis_is_dropped_and_reconnected(procs):
    """A hung Redis (SIGSTOP: the connection stays open, nothing answers) was never noticed:
    requests went on at their budget, but redis_up stayed 1, lookups kept being sent and
    piled up, and no reconnect was tried. Now a reply due for longer than
    redis.reply_timeout_ms drops the connection (its lookups end "unavailable"), lookups
    answer at once while it is down, the reconnects fail their handshake (within
    redis.connect_timeout_ms, a bound of its own) while Redis is stopped, and hits resume once
    it runs again."""
    bound_ms = 300
    s = Stack(procs, timeout_ms=50, workers=1,
              redis_over={"reply_timeout_ms": bound_ms, "connect_timeout_ms": 1500})
    s.put_redis("hung1", recent=["a"])
    s.put_redis("hung2", recent=["b"])
    assert s.get("hung1")["x-modelgate-features"] == "hit"
    s.redis.proc.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert s.get("cold0")["x-modelgate-features"] == "timeout"  # at its budget
        wait_for(lambda: s.metric("modelgate_features_redis_up") == 0, 3, 0.02,
                 "the hung connection to be dropped")
        took = time.monotonic() - t0
        assert bound_ms / 1000.0 <= took < bound_ms / 1000.0 + 1.0, took
        assert s.metric("modelgate_features_redis_reply_timeouts_total") == 1
        assert s.metric("modelgate_features_redis_disconnects_total") == 1
        # the lookup that was waiting ended "unavailable", counted as a Redis error
        assert s.sample('modelgate_features_layer_total{layer="redis",result="error"}') == 1
        t1 = time.monotonic()
        assert s.get("cold1")["x-modelgate-features"] == "unavailable"  # at once
        assert time.monotonic() - t1 < 0.5
        # reconnects: TCP is accepted by the kernel, but the handshake gets no reply
        wait_for(lambda: s.metric("modelgate_features_redis_connect_failures_total") >= 1, 5,
                 0.02, "a reconnect to fail its handshake")
        assert s.metric("modelgate_features_redis_up") == 0
        assert "no reply for" in s.gw.proc.stderr()
    finally:
        s.redis.proc.signal(signal.SIGCONT)
    wait_for(lambda: s.metric("modelgate_features_redis_up") == 1, 5, 0.02, "the reconnect")
    assert s.get("hung2")["x-modelgate-features"] == "hit"


@pytest.mark.parametrize("marker", ["yes", "2", " 1", ""])
def test_malformed_marker_falls_back_to_mariadb_and_is_repaired(stack, marker):
    """A marker that is neither "1" nor "0" (a pipeline that wrote "yes") was read as "known
    to have no features": the user got "miss" until the key expired, though MariaDB had
    features. It breaks the documented layout like a key of the wrong type: MariaDB answers,
    its write-back rewrites the user's keys, and a warning is logged."""
    stack.put_db("mk1", {"recent": ["a"]})
    stack.put_redis("mk1", recent=["a"])
    stack.r.set("mgf:v1:digits:mk1", marker, ex=60)
    before = stack.selects()
    h = stack.get("mk1")
    assert h["x-modelgate-features"] == "hit", h
    assert json.loads(h["x-user-features"]) == {"recent": ["a"]}
    assert stack.selects() - before == 1
    assert stack.r.get("mgf:v1:digits:mk1") == b"1"  # repaired by the write-back
    assert ('the marker key of a user of app digits is neither "1" nor "0"'
            in stack.gw.proc.stderr())
    time.sleep(1.1)  # local ttl_ms 1000: the next one reads Redis, now whole
    assert stack.get("mk1")["x-modelgate-features"] == "hit"
    assert stack.selects() - before == 1


def test_unit_header_given_twice_names_no_user(procs):
    """With x-user-id: alice and x-user-id: bob, features took the last copy (bob's went to the
    pod) while the sticky split took the first (alice's service). Either copy may be the
    forged one, and HTTP lets any hop join the two lines into "alice, bob": the request names
    no one unit. Both now agree on that: no features (status none) and the split picks at
    random, as for a request without the header, in HTTP/1.1 and HTTP/2."""
    import httpx

    def split_routes(st):
        st.v1, st.v2 = procs.backend("v1"), procs.backend("v2")
        doc = routes_doc({"v1": [st.v1], "v2": [st.v2]}, [("plain", "production", "v1")])
        doc["routes"].append({"app": "digits", "env": "production", "sticky_header": "x-user-id",
                              "split": [{"service": "v1", "weight": 50},
                                        {"service": "v2", "weight": 50}]})
        return doc

    s = Stack(procs, workers=1, routes_fn=split_routes)
    c = httpx.Client(timeout=10)

    def get(*users):
        r = c.get("http://127.0.0.1:%d/predict" % s.gw.port,
                  headers=[("host", "%s:%d" % (HOST, s.gw.port))] +
                  [("x-user-id", u) for u in users])
        assert r.status_code == 200, r.text
        return r.headers["x-modelgate-service"], r.json()["headers"]

    # two users the split puts apart, each with features of their own
    first = {}
    for i in range(64):
        s.put_redis("u%d" % i, recent=["of-u%d" % i])
        svc, h = get("u%d" % i)
        assert h["x-modelgate-features"] == "hit", h
        first.setdefault(svc, "u%d" % i)
        if len(first) == 2:
            break
    a, b = first["v1"], first["v2"]
    for u, svc in ((a, "v1"), (b, "v2")):  # once: that user's service and features
        got, h = get(u)
        assert got == svc and json.loads(h["x-user-features"]) == {"recent": ["of-" + u]}
    for users in ((a, b), (b, a), ("%s, %s" % (a, b),), ("%s,%s" % (b, a),)):
        seen = set()
        for _ in range(24):
            svc, h = get(*users)
            assert h["x-modelgate-features"] == "none" and "x-user-features" not in h, (users, h)
            seen.add(svc)
        assert seen == {"v1", "v2"}, (users, seen)  # at random: P(one service) = 2 / 2^24
    c.close()
    with s.gw.h2() as h2c:
        seen = set()
        for _ in range(24):
            st = h2c.get("/predict", headers=[("x-user-id", a), ("x-user-id", b)])
            assert st.status == 200, st
            assert st.json()["headers"]["x-modelgate-features"] == "none", st.json()
            seen.add(st.headers["x-modelgate-service"])
        assert seen == {"v1", "v2"}, seen
    assert "has x-user-id more than once or as a list" in s.gw.proc.stderr()
    recs = s.gw.wait_access(i + 1 + 2 + 5 * 24)  # the access log says so too
    assert sum(1 for r in recs if r["features"] == "none") == 5 * 24
