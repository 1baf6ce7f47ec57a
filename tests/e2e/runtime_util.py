"""
tests/e2e/runtime_util.py - helpers for the modelgate-runtime end-to-end tests (test_runtime.py).

    models = train_models(dir)              # backends/runtime/tools/train_digits.py, once a session
    rt = Runtime(procs, models.path("xgb_digits.json"), kind="xgboost", name="digits", version="1")
    r = rt.request("POST", "/v1/predict", {"input": models.inputs[0]}, mode="h2")   # or "h1"
    r.status, r.headers["x-request-id"], r.json()
    rt.status()["model"]["version"]
    rt.metrics()['modelgate_runtime_model_loads_total{result="ok"}']

The runtime binary is $MG_RUNTIME_BIN (CTest sets it), else
<repo>/build/backends/runtime/modelgate-runtime; a missing binary fails the test (never a skip).
A runtime is started through the test's `procs` (conftest.py): it is stopped at teardown with
SIGTERM and must then exit 0 within its drain time, like a gateway, with its stderr attached to
the failure report.
"""

import json
import os
import shutil
import subprocess

import pytest

from conftest import PYTHON, REPO, H1Conn, free_port, h1_request_bytes, wait_for

RUNTIME_BIN = os.path.abspath(os.environ.get("MG_RUNTIME_BIN") or os.path.join(
    REPO, "build", "backends", "runtime", "modelgate-runtime"))
TOOLS = os.path.join(REPO, "backends", "runtime", "tools")
TRAIN_SCRIPT = os.path.join(TOOLS, "train_digits.py")
TRAIN_TEXT_SCRIPT = os.path.join(TOOLS, "train_text.py")  # the `text` kind's models


class Models:
    """The trained test models: a directory, its expected.json and expected_text.json."""

    def __init__(self, d):
        self.dir = d
        with open(os.path.join(d, "expected.json")) as f:
            self.expected = json.load(f)
        self.inputs = self.expected["inputs"]  # 8 rows of 64 float64
        self.models = dict(self.expected["models"])
        text = os.path.join(d, "expected_text.json")
        if os.path.isfile(text):
            with open(text) as f:
                self.models.update(json.load(f)["models"])  # each with its own "inputs"

    def path(self, fname):
        return os.path.join(self.dir, fname)

    def copy(self, fname, dest):
        """Copies model |fname| to |dest| atomically (temp file + rename)."""
        tmp = dest + ".tmp"
        shutil.copyfile(self.path(fname), tmp)
        os.replace(tmp, dest)


def train_models(outdir):
    """Runs train_digits.py (and train_text.py) into |outdir| (seconds); returns Models."""
    for script, done in ((TRAIN_SCRIPT, "expected.json"), (TRAIN_TEXT_SCRIPT,
                                                           "expected_text.json")):
        if os.path.isfile(os.path.join(outdir, done)) or not os.path.isfile(script):
            continue
        r = subprocess.run([PYTHON, script, outdir], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail("%s failed (%d): %s%s" % (os.path.basename(script), r.returncode,
                                                   r.stdout, r.stderr))
    return Models(outdir)


def write_json(path, doc):
    """Writes |doc| (dict, or str/bytes written as is) atomically (temp file + rename)."""
    tmp = path + ".tmp"
    mode = "wb" if isinstance(doc, bytes) else "w"
    with open(tmp, mode) as f:
        f.write(doc if isinstance(doc, (str, bytes)) else json.dumps(doc, indent=1))
    os.replace(tmp, path)


class Resp:
    def __init__(self, status, headers, body, version):
        self.status = status
        self.headers = headers  # {lowercase name: value}
        self.body = bytes(body)
        self.version = version  # "h2" or "h1"

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Resp %s %s %r>" % (self.version, self.status, self.body[:300])


def _body_bytes(body):
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def h2_client_class():
    import h2client

    class KeepReadingH2Client(h2client.H2Client):
        """An h2client.H2Client that keeps reading after a failed send. A server that drains
        sends GOAWAY and closes once its last stream is answered; frames the client sent
        meanwhile make the kernel answer with a reset, and h2client would then stop reading
        and lose the GOAWAY and the answers still in its receive buffer."""

        def flush(self):
            data = self.conn.data_to_send()
            if data:
                try:
                    self.sock.sendall(data)
                except OSError as e:
                    self.send_errors = getattr(self, "send_errors", []) + [str(e)]

    return KeepReadingH2Client


class Runtime:
    """A running modelgate-runtime on 127.0.0.1:<free port>."""

    def __init__(self, procs, model, kind=None, name=None, version=None, args=(),
                 proc_name="runtime", threads=None, wait_ready=True, env=None):
        if not (os.path.isfile(RUNTIME_BIN) and os.access(RUNTIME_BIN, os.X_OK)):
            pytest.fail("runtime binary not found or not executable: %s (build the CMake target "
                        "`modelgate-runtime`, or set MG_RUNTIME_BIN)" % RUNTIME_BIN)
        self.procs = procs
        self.body_problems = []
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        if threads is None:  # MG_RUNTIME_THREADS=0 runs the suite with inline predictions
            threads = int(os.environ.get("MG_RUNTIME_THREADS", "2"))
        argv = [RUNTIME_BIN, "--listen", self.addr, "--model", model, "--threads", str(threads)]
        if kind:
            argv += ["--kind", kind]
        if name is not None:
            argv += ["--name", name]
        if version is not None:
            argv += ["--model-version", version]
        argv += [str(a) for a in args]
        drain_ms = 10000
        if "--drain-ms" in argv:
            drain_ms = int(argv[argv.index("--drain-ms") + 1])
        self.proc = procs.spawn(proc_name, argv, env or dict(os.environ))
        # teardown (Procs.stop_all) sends SIGTERM and wants exit 0 within the drain time
        self.proc.gateway_drain_s = drain_ms / 1000.0
        self.pid = self.proc.pid
        self.proc.wait_ready([self.port])
        if wait_ready:
            self.wait_ready()

    # -- process ----------------------------------------------------------------------------

    def signal(self, sig):
        self.proc.signal(sig)

    def log(self):
        return self.proc.stderr() + self.proc.stdout()

    def assert_alive(self):
        assert self.proc.alive(), "runtime exited with %s:\n%s" % (self.proc.popen.returncode,
                                                                   self.proc.report())

    # -- clients ----------------------------------------------------------------------------

    def h2(self, **kw):
        """An h2c connection (h2client.H2Client that keeps reading after a failed send)."""
        return h2_client_class()("127.0.0.1", self.port, **kw)

    def h1conn(self, timeout=10.0):
        return H1Conn(self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=(), mode="h2", timeout=10.0):
        """One request on a new connection. |body|: dict/list (sent as JSON), str or bytes.
        mode "h2" (h2c prior knowledge, python h2) or "h1" (raw HTTP/1.1 socket)."""
        data = _body_bytes(body)
        hdrs = list(headers)
        if data and not any(k.lower() == "content-type" for k, _ in hdrs):
            hdrs.append(("content-type", "application/json"))
        if mode == "h2":
            with self.h2(timeout=timeout) as c:
                st = c.request(method, path, headers=hdrs, body=data, timeout=timeout)
                assert st.reset_code is None, "stream reset (%s) by the runtime" % st.reset_code
                return Resp(st.status, dict(st.headers), st.body, "h2")
        with self.h1conn(timeout) as c:
            c.send(h1_request_bytes(method, path, self.addr, hdrs, data))
            r = c.read_response(head_request=(method == "HEAD"))
            return Resp(r.status, dict(r.headers), r.body, "h1")

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def predict(self, doc, **kw):
        return self.request("POST", "/v1/predict", doc, **kw)

    # -- state ------------------------------------------------------------------------------

    def status(self, strict=True):
        """/v1/status as a dict. strict=False: a body that is not valid UTF-8 JSON is decoded
        with replacement characters and the problem is kept in self.body_problems (for tests
        that must go on and report it at the end)."""
        r = self.get("/v1/status")
        assert r.status == 200, r
        try:
            return json.loads(r.body.decode("utf-8"))
        except UnicodeDecodeError as e:
            if strict:
                raise AssertionError("/v1/status is not valid UTF-8 (RFC 8259 8.1): %s in %r"
                                     % (e, r.body))
            self.body_problems.append("/v1/status is not valid UTF-8 JSON (%s): %r" % (e, r.body))
            return json.loads(r.body.decode("utf-8", "replace"))

    def metrics(self):
        """/metrics as {'name{labels}': float} (sample lines only)."""
        r = self.get("/metrics")
        assert r.status == 200, r
        assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
        out = {}
        for line in r.body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
        return out

    def ready(self):
        return self.get("/readyz").status == 200

    def wait_ready(self, timeout=10.0):
        wait_for(self.ready, timeout, 0.05, what="%s /readyz 200:\n%s" % (self.addr, self.log()))

    def wait_status(self, pred, timeout=10.0, what="a /v1/status condition", strict=True):
        """Polls /v1/status until pred(doc) is true; returns the doc."""
        return wait_for(lambda: (lambda d: d if pred(d) else None)(self.status(strict)),
                        timeout, 0.05, what=what)
