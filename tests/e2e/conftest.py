"""
tests/e2e/conftest.py - the end-to-end harness: real gateway binary, real backends, on 127.0.0.1.

Every test gets a temporary directory and a process list (fixture `procs`); everything started
through it is killed at teardown, pass or fail, and when a test fails its report carries each
process's stderr/stdout and the gateway's logs. Ports are free loopback ports, reserved across parallel tests (see free_port);
readiness is a polled TCP connect with a 10 s deadline, never a fixed sleep.

    def test_x(procs):
        a = procs.backend("pod-a")
        gw = procs.gateway(routes=routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]))
        status, hdrs, body = curl(gw, "/hello")

The gateway binary is $MG_GATEWAY_BIN (CTest sets it), else <repo>/build/gateway/modelgate;
a missing binary fails the test with a message saying so (never a skip).
"""

import atexit
import copy
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("MG_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
GATEWAY_BIN = os.environ.get("MG_GATEWAY_BIN") or os.path.join(REPO, "build", "gateway",
                                                                "modelgate")
PYTHON = os.environ.get("MG_PYTHON") or "/usr/bin/python3"


def plain_gateway_bin():
    """A modelgate built without sanitizers, for the tests that measure the process's memory
    (ASan's allocator keeps freed memory in quarantine): GATEWAY_BIN when it is one, else the
    optimised build scripts/test.sh compiles (build-release/), else build/. Skips the test
    when there is none."""
    for b in (GATEWAY_BIN, os.path.join(REPO, "build-release", "gateway", "modelgate"),
              os.path.join(REPO, "build", "gateway", "modelgate")):
        if os.path.isfile(b) and os.access(b, os.X_OK):
            with open(b, "rb") as f:
                if b"__asan_init" not in f.read():
                    return b
    pytest.skip("no modelgate built without sanitizers (scripts/test.sh builds build-release/)")
DOMAIN = "modelgate.local"
HOST = "digits-production." + DOMAIN
READY_DEADLINE = 10.0
# a line of a sanitizer report (ASan, LSan, UBSan) on a gateway's stderr
SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Memory|Thread)Sanitizer|runtime error: |"
                          r"SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer")

if HERE not in sys.path:
    sys.path.insert(0, HERE)


# ---------------------------------------------------------------------------------------------
# small utilities


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORT_RANGE = (max(1024, _ephemeral_low() - 12000), _ephemeral_low())


# Ports handed out by any harness process on this machine are reserved by an exclusive file in
# this directory (named by the port, holding the owner's pid) until that process exits: two tests
# running in parallel can never both pick a port in the window between the probe and the server's
# bind(). A reservation whose owner is gone is taken over.
_PORT_DIR = os.path.join("/tmp", "modelgate-test-ports-%d" % os.getuid())
_my_ports = []


def _reserve(port):
    os.makedirs(_PORT_DIR, exist_ok=True)
    path = os.path.join(_PORT_DIR, str(port))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    owner = int(f.read().strip() or "0")
            except (OSError, ValueError):
                return False  # being written right now: someone else's
            if owner == os.getpid():
                return False
            try:
                os.kill(owner, 0)
                return False  # a live process holds it
            except ProcessLookupError:
                try:
                    os.unlink(path)  # stale: its owner died without cleaning up
                except FileNotFoundError:
                    pass
                continue
            except PermissionError:
                return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        _my_ports.append(path)
        return True
    return False


@atexit.register
def _release_ports():
    for path in _my_ports:
        try:
            os.unlink(path)
        except OSError:
            pass


def refused_start(conf, what):
    """Starts the gateway with the configuration file |conf| (and a catch-all backend), which
    must make it refuse to start: returns its stderr once it exited 1; fails the test, naming
    |what|, when it exits otherwise or still runs after 10 s."""
    try:
        r = subprocess.run([GATEWAY_BIN, "--config", str(conf), "--backend", "127.0.0.1:1"],
                           capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("the gateway started with %s" % what)
    assert r.returncode == 1, "exit %d with %s: %s" % (r.returncode, what, r.stderr)
    return r.stderr


def free_port():
    """A TCP port on 127.0.0.1 that nothing uses right now and that no other harness process
    holds. Taken below the kernel's ephemeral range, so that no outgoing connection (of this test
    or a parallel one) can take it as its local port between this check and the server's bind()."""
    for _ in range(500):
        port = random.randrange(*_PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if _reserve(port):
            return port
    pytest.fail("no free loopback port left in %d-%d" % _PORT_RANGE)


def wait_for(pred, timeout=5.0, interval=0.02, what="condition"):
    """Polls |pred| until it returns a true value (returned) or |timeout| s pass (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def read_jsonl(path):
    """The JSON lines of |path| ([] when absent); a line that is not JSON fails the test."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n"):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail("%s: line is not JSON: %r" % (path, line[:300]))
    return out


def tail(path, lines=150):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "(%s)" % e
    text = data.decode("utf-8", "replace").splitlines()
    if len(text) > lines:
        text = ["... (%d lines before)" % (len(text) - lines)] + text[-lines:]
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# processes


class Proc:
    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.argv = argv
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.extra_logs = []  # more files to show on failure
        self.gateway_drain_s = None  # a gateway: its drain time, checked for a clean exit
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                          cwd=workdir, env=env, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        self.popen.send_signal(sig)

    def wait(self, timeout):
        """Exit code, or None if still running after |timeout| s."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stdout(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def report(self):
        parts = ["$ %s  (pid %d, %s)" % (" ".join(self.argv), self.pid,
                                          "running" if self.alive() else
                                          "exit %s" % self.popen.returncode)]
        for p in [self.stderr_path, self.stdout_path] + self.extra_logs:
            parts.append("--- %s\n%s" % (os.path.basename(p), tail(p)))
        return "\n".join(parts)

    def wait_ready(self, ports):
        self.wait_ready_on("127.0.0.1", ports)

    def wait_ready_on(self, host, ports):
        deadline = time.monotonic() + READY_DEADLINE
        pending = list(ports)
        while pending:
            if not self.alive():
                pytest.fail("%s exited (code %s) before listening on %s:\n%s" % (
                    self.name, self.popen.returncode, pending, self.report()))
            if port_open(pending[0], host):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                pytest.fail("%s not listening on %s after %.0fs:\n%s" % (
                    self.name, pending, READY_DEADLINE, self.report()))
            time.sleep(0.02)


class Backend:
    """A running tests/e2e/backend.py."""

    def __init__(self, proc, name, port):
        self.proc = proc
        self.name = name
        self.port = port
        self.addr = "127.0.0.1:%d" % port

    def requests(self):
        """[(proto, method, path)] the backend has received so far."""
        out = []
        for line in self.proc.stdout().splitlines():
            if line.startswith("req "):
                parts = line.split(" ", 3)
                if len(parts) == 4:
                    out.append(tuple(parts[1:]))
        return out

    def peak_conns(self):
        """The most connections the backend had open at once so far (0 before any)."""
        peaks = [int(line.split()[1]) for line in self.proc.stdout().splitlines()
                 if line.startswith("peak-conns ")]
        return max(peaks, default=0)


class Gateway:
    """A running modelgate with its generated gateway.json and routes.json."""

    def __init__(self, procs, conf, routes, tls, args, name, env=None, binary=None):
        self.procs = procs
        binary = binary or GATEWAY_BIN
        self.dir = os.path.join(procs.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.conf_path = os.path.join(self.dir, "gateway.json")
        self.routes_path = os.path.join(self.dir, "routes.json")
        self.access_log = os.path.join(self.dir, "access.log")
        base = {
            "listen": ["127.0.0.1:%d" % self.port],
            "workers": 2,
            "routes": "routes.json",
            "access_log": "access.log",
            "log_level": "info",
            "limits": {"max_concurrent_streams": 1000},
        }
        if tls:
            base["tls"] = {"listen": ["127.0.0.1:%d" % self.tls_port], "cert": tls["cert"],
                           "key": tls["key"]}
        self.conf = deep_merge(base, conf)
        self.write_json(self.conf_path, self.conf)
        self.write_routes(routes)
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            pytest.fail("gateway binary not found or not executable: %s (build the CMake target "
                        "`modelgate`, or set MG_GATEWAY_BIN)" % binary)
        argv = [binary, "--config", self.conf_path] + list(args)
        self.proc = procs.spawn(name, argv, env)
        self.proc.gateway_drain_s = self.conf.get("timeouts_ms", {}).get("drain", 10000) / 1000.0
        self.proc.extra_logs.append(self.access_log)
        self.pid = self.proc.pid
        ports = [self.port] + ([self.tls_port] if tls else [])
        self.proc.wait_ready(ports)

    @staticmethod
    def write_json(path, doc):
        """Writes |doc| (dict, or str written as is) atomically (temp file + rename)."""
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
        os.replace(tmp, path)

    def write_routes(self, routes):
        self.write_json(self.routes_path, routes)

    def authority(self, host=HOST, tls=False):
        return "%s:%d" % (host, self.tls_port if tls else self.port)

    def url(self, path="/", host=HOST, tls=False):
        return "%s://%s%s" % ("https" if tls else "http", self.authority(host, tls), path)

    def h2(self, host=HOST, tls=False, **kw):
        """An h2client.H2Client connected to this gateway with :authority for |host|."""
        import h2client
        return h2client.H2Client("127.0.0.1", self.tls_port if tls else self.port,
                                 authority=self.authority(host, tls), tls=tls,
                                 cafile=self.procs.tls["ca"] if tls and self.procs.tls else None,
                                 server_name=host, **kw)

    def signal(self, sig):
        self.proc.signal(sig)

    def log(self):
        return self.proc.stderr() + self.proc.stdout()

    def access(self):
        return read_jsonl(self.access_log)

    def wait_access(self, n, timeout=5.0):
        """Waits until the access log has at least |n| lines; returns them."""
        return wait_for(lambda: len(self.access()) >= n and self.access(), timeout,
                        what="%d access log lines in %s" % (n, self.access_log))

    def assert_alive(self):
        assert self.proc.alive(), "gateway exited with %s:\n%s" % (self.proc.popen.returncode,
                                                                   self.proc.report())


class Procs:
    """The processes of one test; all killed at teardown."""

    def __init__(self, workdir, tls):
        self.dir = str(workdir)
        self.tls = tls
        self.all = []

    def spawn(self, name, argv, env=None):
        names = {p.name for p in self.all}
        base, i = name, 2
        while name in names:
            name = "%s-%d" % (base, i)
            i += 1
        p = Proc(name, argv, self.dir, env)
        self.all.append(p)
        return p

    def backend(self, name="pod-a", proto="both", port=None, args=(), host="127.0.0.1"):
        """tests/e2e/backend.py; |args|: more flags (--delay-ms N, --health-file F); |host|:
        another loopback address (127.0.0.2...) for pods that share a port, as DNS pods do."""
        port = port or free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = self.spawn("backend-" + name, [PYTHON, os.path.join(HERE, "backend.py"), "--listen",
                                           "%s:%d" % (host, port), "--name", name, "--proto",
                                           proto] + list(args), env)
        p.wait_ready_on(host, [port])
        b = Backend(p, name, port)
        b.addr = "%s:%d" % (host, port)
        return b

    def grpc_backend(self, name="grpc-a", port=None):
        port = port or free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = self.spawn("grpc-" + name, [PYTHON, os.path.join(HERE, "grpc_backend.py"),
                                        "--listen", "127.0.0.1:%d" % port, "--name", name], env)
        p.wait_ready([port])
        return Backend(p, name, port)

    def gateway_cli(self, args, ports, name="gateway"):
        """Starts modelgate with command-line flags only (no gateway.json); waits for |ports|."""
        if not (os.path.isfile(GATEWAY_BIN) and os.access(GATEWAY_BIN, os.X_OK)):
            pytest.fail("gateway binary not found or not executable: %s (build the CMake target "
                        "`modelgate`, or set MG_GATEWAY_BIN)" % GATEWAY_BIN)
        p = self.spawn(name, [GATEWAY_BIN] + list(args))
        p.gateway_drain_s = 10.0
        p.wait_ready(ports)
        return p

    def gateway(self, routes, conf=None, tls=True, args=(), name="gateway", env=None,
                binary=None):
        """Starts modelgate with gateway.json = defaults + |conf| (deep-merged; None values
        delete keys) and routes.json = |routes|; waits until every listener accepts. |env|:
        the process environment (default: the tests'). |binary|: another modelgate build
        (default: GATEWAY_BIN)."""
        return Gateway(self, conf, routes, self.tls if tls else None, args, name, env, binary)

    def stop_all(self):
        """Stops every process. Gateways first get SIGTERM and must exit 0 within their drain
        time, with no sanitizer report on stderr; returns the problems found (strings)."""
        problems = []
        for p in self.all:
            if p.gateway_drain_s is None:
                continue
            if p.alive():
                p.signal(signal.SIGTERM)
                if p.wait(p.gateway_drain_s + 3.0) is None:
                    problems.append("%s did not exit within %.0fs of SIGTERM" % (
                        p.name, p.gateway_drain_s + 3.0))
            rc = p.popen.returncode
            if rc not in (None, 0):
                problems.append("%s exited with code %s" % (p.name, rc))
            for line in p.stderr().splitlines():
                if SANITIZER_RE.search(line):
                    problems.append("%s stderr: %s" % (p.name, line.strip()))
                    break
        for p in self.all:
            if p.alive():
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            p.stop()
        return problems

    def report(self):
        return "\n\n".join(p.report() for p in self.all)


def routes_doc(services, routes, default=None, domain=DOMAIN,
               envs=("development", "staging", "sandbox", "production")):
    """A routing document. |services|: {name: [Backend or "host:port", ...]} or
    {name: ([pods], "h2c"|"http1")}; |routes|: [(app, env, service)]."""
    svcs = {}
    for name, spec in services.items():
        proto = "h2c"
        if isinstance(spec, tuple):
            spec, proto = spec
        svcs[name] = {"protocol": proto,
                      "pods": [p.addr if isinstance(p, Backend) else p for p in spec]}
    doc = {"domain": domain, "envs": list(envs), "services": svcs,
           "routes": [{"app": a, "env": e, "service": s} for a, e, s in routes]}
    if default:
        doc["default_service"] = default
    return doc


# ---------------------------------------------------------------------------------------------
# fixtures and hooks


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory):
    """A CA and a server certificate (EC P-256; SAN localhost, *.modelgate.local, 127.0.0.1)."""
    d = tmp_path_factory.mktemp("tls")

    def run(*argv):
        r = subprocess.run(["openssl"] + list(argv), cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail("openssl %s failed: %s" % (" ".join(argv), r.stderr))

    ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    run("genpkey", *ec, "-out", "ca.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=modelgate e2e test CA", "-days",
        "3", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
        "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem")
    run("genpkey", *ec, "-out", "server.key")
    run("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,DNS:*.%s,IP:127.0.0.1\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "keyUsage=critical,digitalSignature\n" % DOMAIN)
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3", "-extfile", "ext.cnf", "-out", "server.pem")
    return {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}


@pytest.fixture
def procs(request, tmp_path, tls_material):
    ps = Procs(tmp_path, tls_material)
    request.node._mg_procs = ps
    try:
        yield ps
    finally:
        problems = ps.stop_all()
    if problems:
        pytest.fail("at teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def raw_pods():
    """RawPod(...) (rawpod.py) for a test, closed when it ends, passed or not."""
    pods = []

    def make(*args, **kw):
        from rawpod import RawPod
        pods.append(RawPod(*args, **kw))
        return pods[-1]
    yield make
    for pod in pods:
        pod.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    ps = getattr(item, "_mg_procs", None)
    if ps is not None and rep.failed and ps.all:
        rep.sections.append(("processes (%s)" % rep.when, ps.report()))


# ---------------------------------------------------------------------------------------------
# clients


def curl(gw, path="/", *args, tls=False, host=HOST, mode="h2c", timeout=20):
    """Runs curl against the gateway with Host/:authority |host|:port, connecting to 127.0.0.1.
    mode: "h2c" (prior knowledge), "h2" (TLS + ALPN), "h1". Returns (status, http_version,
    headers {lowercase: value}, body bytes)."""
    port = gw.tls_port if tls else gw.port
    out = os.path.join(gw.procs.dir, "curl.body")
    hdr = os.path.join(gw.procs.dir, "curl.headers")
    argv = ["curl", "-sS", "--max-time", str(timeout), "--resolve",
            "%s:%d:127.0.0.1" % (host, port), "-o", out, "-D", hdr, "-w",
            "%{http_code} %{http_version}"]
    if tls:
        argv += ["--cacert", gw.procs.tls["ca"]]
    argv += {"h2c": ["--http2-prior-knowledge"], "h2": ["--http2"], "h1": ["--http1.1"]}[mode]
    argv += list(args)
    argv.append("%s://%s:%d%s" % ("https" if tls else "http", host, port, path))
    for f in (out, hdr):  # a previous call's, which an answer without body would leave
        if os.path.exists(f):
            os.unlink(f)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
    assert r.returncode == 0, "curl failed (%d): %s\n%s" % (r.returncode, r.stderr, argv)
    code, version = r.stdout.split()
    headers = {}
    with open(hdr, "rb") as f:
        for line in f.read().decode("latin-1").splitlines():
            if line.startswith("HTTP/"):
                headers = {}  # keep only the last (final) response's headers
            elif ":" in line:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                headers[k] = headers[k] + ", " + v.strip() if k in headers else v.strip()
    try:
        with open(out, "rb") as f:
            body = f.read()
    except FileNotFoundError:  # curl writes no file for an answer without body (a 304)
        body = b""
    return int(code), version, headers, body


class H1Response:
    def __init__(self):
        self.status = None
        self.reason = ""
        self.header_list = []
        self.headers = {}
        self.body = b""
        self.trailers = {}
        self.chunked = False

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<H1Response %s %r %r>" % (self.status, self.headers, self.body[:200])


class H1Conn:
    """A raw HTTP/1.1 connection: send bytes, read responses one at a time."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, tls_ctx=None, server_name=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls_ctx is not None:
            self.sock = tls_ctx.wrap_socket(self.sock, server_hostname=server_name)
        self.buf = bytearray()
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(1024 * 1024)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a line")

    def _exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, head_request=False):
        """Reads one response; raises ConnectionError if the connection closes first."""
        r = H1Response()
        while True:  # skip 1xx
            line = self._line()
            parts = line.decode("latin-1").split(" ", 2)
            r.status = int(parts[1])
            r.reason = parts[2] if len(parts) > 2 else ""
            r.header_list = []
            while True:
                h = self._line()
                if not h:
                    break
                k, _, v = h.decode("latin-1").partition(":")
                r.header_list.append((k.strip().lower(), v.strip()))
            if r.status >= 200 or r.status == 101:
                break
        for k, v in r.header_list:
            r.headers[k] = r.headers[k] + ", " + v if k in r.headers else v
        if head_request or r.status in (204, 304) or 100 <= r.status < 200:
            return r
        if "chunked" in r.headers.get("transfer-encoding", "").lower():
            r.chunked = True
            body = bytearray()
            while True:
                size = int(self._line().split(b";")[0].strip(), 16)
                if size == 0:
                    break
                body += self._exact(size)
                self._exact(2)
            while True:
                t = self._line()
                if not t:
                    break
                k, _, v = t.decode("latin-1").partition(":")
                r.trailers[k.strip().lower()] = v.strip()
            r.body = bytes(body)
        elif "content-length" in r.headers:
            r.body = self._exact(int(r.headers["content-length"]))
        else:
            while self._fill():
                pass
            r.body = bytes(self.buf)
            self.buf.clear()
        return r

    def closed_by_peer(self, timeout=5.0):
        """Whether the peer closes the connection within |timeout| s (after any pending data)."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
            return True
        except socket.timeout:
            return False
        except (ConnectionResetError, OSError):
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def h1_request_bytes(method, path, host, headers=(), body=b"", chunked=False, trailers=None):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: " + host]
    lines += ["%s: %s" % kv for kv in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body or method in ("POST", "PUT"):
        lines.append("Content-Length: %d" % len(body))
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if chunked:
        if body:
            out += b"%x\r\n%s\r\n" % (len(body), body)
        out += b"0\r\n"
        for k, v in (trailers or []):
            out += ("%s: %s\r\n" % (k, v)).encode("latin-1")
        out += b"\r\n"
    else:
        out += body
    return out


def h1(gw, method="GET", path="/", headers=(), body=b"", host=HOST, tls=False, **kw):
    """One HTTP/1.1 request on a new connection (raw socket); returns an H1Response."""
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=gw.procs.tls["ca"])
        ctx.set_alpn_protocols(["http/1.1"])
    with H1Conn(gw.tls_port if tls else gw.port, tls_ctx=ctx, server_name=host) as c:
        c.send(h1_request_bytes(method, path, gw.authority(host, tls), headers, body, **kw))
        return c.read_response(head_request=(method == "HEAD"))


def error_json(status_expected, code_expected, status, headers, body):
    """Asserts an error response: |status_expected|, application/json, {"error": {code, message,
    request_id}} with |code_expected| (None: any code); returns the error object."""
    assert status == status_expected, "status %s (expected %s): %r" % (status, status_expected,
                                                                       body[:500])
    ct = headers.get("content-type", "")
    assert ct.startswith("application/json"), "content-type %r, body %r" % (ct, body[:500])
    doc = json.loads(body)
    err = doc.get("error")
    assert isinstance(err, dict), doc
    if code_expected is None:
        assert isinstance(err.get("code"), str) and err["code"], doc
    else:
        assert err.get("code") == code_expected, doc
    assert isinstance(err.get("message"), str) and err["message"], doc
    assert isinstance(err.get("request_id"), str) and err["request_id"], doc
    if "x-request-id" in headers:
        assert headers["x-request-id"] == err["request_id"], (headers, doc)
    return err


def h2load(gw, *args, path="/load"):
    """Runs h2load with |args| against |gw| (h2c, |path|); returns ((total, started, done,
    succeeded, failed), 2xx count or None). Fails the test when h2load does."""
    r = subprocess.run(["h2load", "-T", "30", "-N", "30", "-H", ":authority: " + gw.authority()]
                       + list(args) + ["http://127.0.0.1:%d%s" % (gw.port, path)],
                       capture_output=True, text=True, timeout=90)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed",
                  r.stdout)
    assert m, r.stdout
    m2 = re.search(r"status codes: (\d+) 2xx", r.stdout)
    return tuple(map(int, m.groups())), int(m2.group(1)) if m2 else None


def silent_listener(backlog):
    """A listening socket nobody accepts from, and its "127.0.0.1:port": the kernel completes
    the TCP handshake and the pod never speaks (hung, SIGSTOPped). The caller closes it."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(backlog)
    return ls, "127.0.0.1:%d" % ls.getsockname()[1]
