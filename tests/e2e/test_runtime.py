"""
modelgate-runtime end to end: the real binary serving the models that
backends/runtime/tools/train_digits.py and train_text.py train (once per session, into a temp
dir), over h2c (python h2, httpx) and HTTP/1.1 (raw sockets).

- predictions match expected.json / expected_text.json (what XGBoost, numpy and scikit-learn
  answer for the same files) to 1e-6 for every xgboost, linear and text model, top-K ids for the
  embeddings; single and batch; JSON floats and ints, texts, token lists, base64 bytes; the Open
  Inference Protocol v2 with FP32, FP64, INT32, INT64 and BYTES tensors
- every client error has its status, code and exact message; x-request-id is echoed
- readiness: no model yet -> 503, model file appears -> 200 and predictions
- /v1/status and /metrics fields and counters
- switches: descriptor rewritten under load (no failed request, versions 1 then 2, switch time
  printed), corrupt files refused while the old model keeps serving, SIGHUP reloads, SIGTERM
  lets in-flight requests finish and exits 0

The binary is $MG_RUNTIME_BIN (CTest sets it), else <repo>/build/backends/runtime/
modelgate-runtime. Everything runs on 127.0.0.1 and is bounded in time.
"""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import H1Conn, free_port, h1_request_bytes, port_open, wait_for
from runtime_util import RUNTIME_BIN, Runtime, train_models, write_json

TOL = 1e-6
SWITCH_LIMIT_S = 5.0  # the test's bound; the target (under 1 s) is printed, not asserted


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return train_models(str(tmp_path_factory.mktemp("runtime-models")))


def start(procs, models, fname="xgb_digits.json", kind="xgboost", name="digits", version="1",
          args=(), **kw):
    return Runtime(procs, models.path(fname), kind=kind, name=name, version=version, args=args,
                   **kw)


def descriptor(procs, file, version, kind="xgboost", name="digits", path=None, **extra):
    """Writes a descriptor (atomically) into the test's dir; returns its path."""
    path = path or os.path.join(procs.dir, "model.json")
    doc = {"file": file, "kind": kind, "name": name, "version": version}
    doc.update(extra)
    write_json(path, doc)
    return path


def check_output(entry, i, out, score, where=""):
    """Asserts one answer against expected.json's entry for input i."""
    want = entry["outputs"][i]
    if isinstance(want, float):
        assert isinstance(out, (int, float)) and abs(out - want) <= TOL, (where, i, out, want)
    else:
        assert out == want, (where, i, out, want)
    assert isinstance(score, (int, float)) and abs(score - entry["scores"][i]) <= TOL, \
        (where, i, score, entry["scores"][i])


def answer_problem(entry, i, doc):
    """The problem with a /v1/predict answer to input i (a string), or None."""
    try:
        check_output(entry, i, doc["output"], doc["score"])
    except (AssertionError, KeyError, TypeError) as e:
        return "wrong answer to input %d: %r (%s)" % (i, doc, e)
    return None


def err_of(r, status, code, message=None):
    """Asserts a JSON error answer; returns the error object."""
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    doc = r.json()
    err = doc.get("error")
    assert isinstance(err, dict), doc
    assert err.get("code") == code, doc
    assert isinstance(err.get("message"), str) and err["message"], doc
    if message is not None:
        assert err["message"] == message, doc
    return err


def ints(row):
    assert all(v == int(v) for v in row)
    return [int(v) for v in row]


def int_rows(models):
    return [i for i, row in enumerate(models.inputs) if all(v == int(v) for v in row)]


# ---------------------------------------------------------------------------------------------
# predictions


NUMERIC = ["xgb_multi", "xgb_multi_ubj", "xgb_binary", "xgb_reg", "linear_multinomial",
           "linear_binary", "linear_ovr", "linear_regression"]


@pytest.mark.parametrize("model", NUMERIC)
def test_predict_matches_python(procs, models, model):
    """Every xgboost (JSON, UBJSON; multi, binary, regression) and linear model answers what the
    Python libraries answer for the same file, over h2c and HTTP/1.1, single and batch, for
    float and int inputs."""
    e = models.models[model]
    rt = start(procs, models, e["file"], kind=e["kind"])
    for mode in ("h2", "h1"):
        for i, row in enumerate(models.inputs):
            r = rt.predict({"input": row}, mode=mode)
            assert r.status == 200, r
            assert r.headers.get("content-type", "").startswith("application/json"), r
            doc = r.json()
            check_output(e, i, doc["output"], doc["score"], mode)
            assert doc["model"] == {"name": "digits", "version": "1"}, doc
        r = rt.predict({"inputs": models.inputs}, mode=mode)
        assert r.status == 200, r
        doc = r.json()
        assert len(doc["outputs"]) == len(models.inputs), doc
        for i, o in enumerate(doc["outputs"]):
            check_output(e, i, o["output"], o["score"], mode + " batch")
        assert doc["model"] == {"name": "digits", "version": "1"}, doc
        # integers are numbers too: the same digits written as JSON ints
        rows = int_rows(models)
        assert len(rows) >= 5
        for i in rows[:3]:
            doc = rt.predict({"input": ints(models.inputs[i])}, mode=mode).json()
            check_output(e, i, doc["output"], doc["score"], mode + " ints")
        r = rt.predict({"inputs": [ints(models.inputs[i]) for i in rows]}, mode=mode)
        assert r.status == 200, r
        for k, o in enumerate(r.json()["outputs"]):
            check_output(e, rows[k], o["output"], o["score"], mode + " ints batch")
    # the request's other keys are the caller's business: an "option" the kind ignores is fine
    doc = rt.predict({"input": models.inputs[0], "option": {}}).json()
    check_output(e, 0, doc["output"], doc["score"], "option")


def test_predict_httpx(procs, models):
    """A third-party client: httpx over h2c (prior knowledge) and HTTP/1.1, keep-alive."""
    import httpx
    e = models.models["xgb_multi"]
    rt = start(procs, models)
    for http2 in (True, False):
        with httpx.Client(http1=not http2, http2=http2, timeout=10) as c:
            for i, row in enumerate(models.inputs):
                r = c.post("http://%s/v1/predict" % rt.addr, json={"input": row})
                assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1"), r.http_version
                assert r.status_code == 200, r.text
                check_output(e, i, r.json()["output"], r.json()["score"], r.http_version)


def test_offers_a_large_hpack_table(procs, models):
    """The runtime offers a 64 KiB HPACK table, and takes a client that fills it: twenty
    distinct 600-byte fields (12 KB, three times the default 4 KiB table), each sent indexed
    and then again as a table index (the second time, each head is a few bytes). A decoder
    still at 4 KiB would take the table size update as a COMPRESSION_ERROR and end the
    connection."""
    import socket
    import h2.config
    import h2.connection
    import h2.events
    rt = start(procs, models)
    host, port = rt.addr.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(conn.data_to_send())
    offered, ended, status, bodies = None, set(), {}, {}
    while offered is None:  # the runtime's SETTINGS: HEADER_TABLE_SIZE (1), else 4096
        for ev in conn.receive_data(sock.recv(65536)):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                setting = ev.changed_settings.get(1)
                offered = setting.new_value if setting else 4096
    sock.sendall(conn.data_to_send())
    assert offered == 65536, offered
    body = json.dumps({"input": models.inputs[0]}).encode()
    sids = []
    for turn in range(2):
        for i in range(20):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                    (":authority", rt.addr), (":path", "/v1/predict"),
                                    ("content-type", "application/json"),
                                    ("x-user-features", '{"k":"%02d%s"}' % (i, "x" * 590))])
            head = conn.data_to_send()
            if turn == 1:  # every field a table index: a few bytes of header block
                assert len(head) < 9 + 40, (i, len(head))
            conn.send_data(sid, body, end_stream=True)
            sids.append(sid)
            sock.sendall(head + conn.data_to_send())
            while sid not in ended:
                data = sock.recv(65536)
                assert data, "the runtime closed the connection"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status[ev.stream_id] = dict(ev.headers)[b":status"]
                    elif isinstance(ev, h2.events.DataReceived):
                        bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        ended.add(ev.stream_id)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        raise AssertionError("GOAWAY %s" % ev.error_code)
                sock.sendall(conn.data_to_send())
    sock.close()
    assert [status[s] for s in sids] == [b"200"] * 40, (status, bodies)


def test_predict_h1_keepalive_chunked(procs, models):
    """HTTP/1.1: several requests on one keep-alive connection, a chunked request body, and
    two pipelined requests answered in order."""
    e = models.models["xgb_multi"]
    rt = start(procs, models)
    hdr = [("content-type", "application/json")]
    with rt.h1conn() as c:
        for i, row in enumerate(models.inputs[:4]):
            body = json.dumps({"input": row}).encode()
            chunked = i % 2 == 1
            c.send(h1_request_bytes("POST", "/v1/predict", rt.addr, hdr, body, chunked=chunked))
            r = c.read_response()
            assert r.status == 200, r
            check_output(e, i, r.json()["output"], r.json()["score"], "h1 #%d" % i)
        both = b"".join(h1_request_bytes("POST", "/v1/predict", rt.addr, hdr,
                                         json.dumps({"input": models.inputs[i]}).encode())
                        for i in (5, 6))
        c.send(both)
        for i in (5, 6):
            r = c.read_response()
            assert r.status == 200, r
            check_output(e, i, r.json()["output"], r.json()["score"], "pipelined")


def test_predict_h1_answered_after_half_close(procs, models):
    """HTTP/1.1: POST /v1/predict (answered once a worker thread has predicted, after the
    request's end), then SHUT_WR, as nc -N and load balancers' probes do: the answer comes,
    then the close; so do two pipelined ones, in order. Before, the EOF closed the connection
    at once and only a synchronous answer (GET /healthz) got out."""
    e = models.models["xgb_multi"]
    rt = start(procs, models)
    hdr = [("content-type", "application/json")]
    for rows in ((0,), (1, 2)):
        with rt.h1conn() as c:
            c.send(b"".join(h1_request_bytes("POST", "/v1/predict", rt.addr, hdr,
                                             json.dumps({"input": models.inputs[i]}).encode())
                            for i in rows))
            c.sock.shutdown(socket.SHUT_WR)
            for i in rows:
                r = c.read_response()
                assert r.status == 200, r
                check_output(e, i, r.json()["output"], r.json()["score"], "half-closed #%d" % i)
            assert c.closed_by_peer(5) and not c.buf, c.buf
    rt.assert_alive()


def test_coalesced_requests_keep_their_answers(procs, models):
    """Many concurrent streams on one h2 connection, coalesced into batches (--max-wait-us):
    each answer belongs to its own request, and a bad request among them fails alone."""
    e = models.models["xgb_multi"]
    rt = start(procs, models, args=["--max-wait-us", "2000", "--max-batch", "16"])
    n = 300
    with rt.h2() as c:
        streams = []
        for k in range(n):
            i = k % len(models.inputs)
            row = models.inputs[i] if k % 25 != 7 else models.inputs[i][:10]
            body = json.dumps({"input": row}).encode()
            streams.append((k, i, c.start("POST", "/v1/predict", body=body, end_stream=True,
                                          headers=[("content-type", "application/json")])))
        assert c.wait([s for _, _, s in streams], timeout=30), "not every stream finished"
    for k, i, st in streams:
        assert st.ended and st.reset_code is None, st
        if k % 25 == 7:
            assert st.status == 400, (k, st.status, bytes(st.body))
            assert st.json()["error"]["message"] == "input: expected 64 numbers, got 10"
        else:
            assert st.status == 200, (k, st.status, bytes(st.body))
            doc = st.json()
            check_output(e, i, doc["output"], doc["score"], "stream %d" % k)
    m = rt.metrics()
    assert m["modelgate_runtime_batch_items_total"] == n - n // 25 - (1 if n % 25 > 7 else 0)
    # coalescing happened at all (fewer predict calls than requests)
    assert m["modelgate_runtime_batches_total"] < m["modelgate_runtime_batch_items_total"], m


@pytest.mark.parametrize("model", ["embedding_digits", "embedding_random"])
def test_embedding(procs, models, model):
    """Top-K retrieval: the expected ids best first (int and string ids), K from the index or
    from option.k, and the query taken from x-user-features when the input is omitted."""
    e = models.models[model]
    rt = start(procs, models, e["file"], kind="embedding", name="items")
    k = e["k"]
    for mode in ("h2", "h1"):
        for i, q in enumerate(e["inputs"]):
            r = rt.predict({"input": q}, mode=mode)
            assert r.status == 200, r
            doc = r.json()
            assert doc["output"] == e["outputs"][i], (mode, i, doc)
            assert abs(doc["score"] - e["scores"][i]) <= 1e-5, (doc["score"], e["scores"][i])
        r = rt.predict({"inputs": e["inputs"]}, mode=mode)
        assert r.status == 200, r
        assert [o["output"] for o in r.json()["outputs"]] == e["outputs"]
    # option.k
    doc = rt.predict({"input": e["inputs"][0], "option": {"k": 3}}).json()
    assert doc["output"] == e["outputs"][0][:3], doc
    r = rt.predict({"input": e["inputs"][0], "option": {"k": 0}})
    err_of(r, 400, "invalid_input")
    # the user's vector from the gateway's x-user-features (field "user_vector" in the index)
    feats = json.dumps({"user_vector": e["inputs"][1], "last_viewed": [1, 2, 3]})
    for body in ({}, {"input": None}, {"input": []}):
        for mode in ("h2", "h1"):
            r = rt.predict(body, headers=[("x-user-features", feats)], mode=mode)
            assert r.status == 200, (body, r)
            assert r.json()["output"] == e["outputs"][1], (body, r)
    # an explicit input wins over the features
    r = rt.predict({"input": e["inputs"][2]}, headers=[("x-user-features", feats)])
    assert r.json()["output"] == e["outputs"][2], r
    # neither an input nor the features: 400 that says what was expected
    r = rt.predict({})
    err = err_of(r, 400, "invalid_input")
    assert "user_vector" in err["message"], err
    r = rt.predict({}, headers=[("x-user-features", '{"user_vector": [1, 2]}')])
    err = err_of(r, 400, "invalid_input")
    assert "user_vector" in err["message"], err
    r = rt.predict({}, headers=[("x-user-features", "[1, 2]")])
    err_of(r, 400, "bad_request", "x-user-features: expected a JSON object")
    # v2: ranking outputs are [n, K] ids and "scores"
    r = rt.post("/v2/models/items/infer", {"inputs": [
        {"name": "input", "shape": [2, len(e["inputs"][0])], "datatype": "FP32",
         "data": e["inputs"][0] + e["inputs"][1]}]})
    assert r.status == 200, r
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["output"]["shape"] == [2, k], outs
    flat = e["outputs"][0] + e["outputs"][1]
    assert outs["output"]["data"] == flat, outs
    assert outs["output"]["datatype"] == ("INT64" if isinstance(flat[0], int) else "BYTES")
    assert outs["scores"]["shape"] == [2, k], outs
    # the metadata says so too (a string-id index declared INT64) and lists "scores"
    meta = rt.get("/v2/models/items").json()
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("output", outs["output"]["datatype"]), ("score", "FP64"), ("scores", "FP64")], meta


TEXT = ["text_sentiment", "text_intent", "text_intent_ovr", "text_rating"]


@pytest.mark.parametrize("model", TEXT)
def test_text(procs, models, model):
    """The text kind (train_text.py's models, expected_text.json): a text, a list of tokens and
    {"b64": ...} bytes, single and batch, over h2c and HTTP/1.1, and a v2 BYTES tensor."""
    if model not in models.models:
        pytest.fail("no %s in the trained models: train_text.py missing or changed" % model)
    e = models.models[model]
    rt = start(procs, models, e["file"], kind="text", name="text")
    for mode in ("h2", "h1"):
        for i, x in enumerate(e["inputs"]):
            r = rt.predict({"input": x}, mode=mode)
            assert r.status == 200, (i, x, r)
            check_output(e, i, r.json()["output"], r.json()["score"], "%s %r" % (mode, x))
        r = rt.predict({"inputs": e["inputs"]}, mode=mode)
        assert r.status == 200, r
        for i, o in enumerate(r.json()["outputs"]):
            check_output(e, i, o["output"], o["score"], mode + " batch")
    err_of(rt.predict({"input": 5}), 400, "invalid_input")
    err_of(rt.predict({"input": [1, 2]}), 400, "invalid_input")
    # v2: the texts (plain strings) as one BYTES tensor of shape [n]
    texts = [(i, x) for i, x in enumerate(e["inputs"]) if isinstance(x, str)]
    r = rt.post("/v2/models/text/infer", {"inputs": [
        {"name": "input", "shape": [len(texts)], "datatype": "BYTES",
         "data": [x for _, x in texts]}]})
    assert r.status == 200, r
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["output"]["shape"] == [len(texts)], outs
    for k, (i, _) in enumerate(texts):
        check_output(e, i, outs["output"]["data"][k], outs["score"]["data"][k], "v2")
    r = rt.post("/v2/models/text/infer", {"inputs": [
        {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]})
    err_of(r, 400, "invalid_input")


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("mode", ["h2", "h1"])
def test_client_errors(procs, models, mode):
    """Each bad request gets its status, JSON error code and exact message; the runtime keeps
    serving on the same connection afterwards."""
    rt = start(procs, models, args=["--max-body", "4096", "--max-items", "4"])
    row = models.inputs[0]

    def p(body, **kw):
        return rt.predict(body, mode=mode, **kw)

    err_of(p({"input": row[:63]}), 400, "invalid_input", "input: expected 64 numbers, got 63")
    err_of(p({"input": row + [1.0]}), 400, "invalid_input", "input: expected 64 numbers, got 65")
    err_of(p({"input": "1,2,3"}), 400, "invalid_input",
           "input: expected a list of numbers, got a string")
    err_of(p({"input": {"a": 1}}), 400, "invalid_input",
           "input: expected a list of numbers, got an object")
    bad = list(row)
    bad[5] = "x"
    err_of(p({"input": bad}), 400, "invalid_input", "input[5]: expected a number, got a string")
    batch = [row, row, row[:10], row]
    err_of(p({"inputs": batch}), 400, "invalid_input", "inputs[2]: expected 64 numbers, got 10")
    err_of(p({"inputs": [row, row, bad]}), 400, "invalid_input",
           "inputs[2][5]: expected a number, got a string")
    # past float32's range: XGBoost took it as infinity, and a linear or embedding model
    # answered 200 with null or garbage
    huge = list(row)
    huge[7] = 1e39
    err_of(p({"input": huge}), 400, "invalid_input",
           "input[7]: expected a number within float32's range (-3.4e38 to 3.4e38), got 1e+39")
    err_of(p({"inputs": [row, [-1e308] * 64]}), 400, "invalid_input",
           "inputs[1][0]: expected a number within float32's range (-3.4e38 to 3.4e38), got "
           "-1e+308")
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [1, 64], "data": huge}
    err_of(rt.post("/v2/models/digits/infer", {"inputs": [tensor]}, mode=mode), 400,
           "invalid_input", "inputs[0].data[7]: expected a number within float32's range "
           "(-3.4e38 to 3.4e38), got 1e+39")
    err_of(p({"inputs": [row, row, None]}), 400, "invalid_input",
           "inputs[2]: expected a list of numbers, got null")
    err_of(p({"inputs": row[0]}), 400, "invalid_input",
           "inputs: expected a list of inputs, got a number")
    err_of(p({"inputs": []}), 400, "invalid_input",
           "inputs: expected at least one input, got an empty list")
    err_of(p({"input": row, "inputs": [row]}), 400, "invalid_input",
           'body: expected "input" or "inputs", not both')
    # missing input
    err_of(p({}), 400, "invalid_input",
           'body: expected "input" (a list of numbers) or "inputs" (a list of them)')
    err_of(p({"inputz": [row]}), 400, "invalid_input")
    # broken JSON, and JSON that is not an object
    err = err_of(p(b'{"input": [1, 2'), 400, "bad_request")
    assert err["message"].startswith("body: invalid JSON"), err
    err_of(p(b""), 400, "bad_request")
    err_of(p(b"[1, 2, 3]"), 400, "bad_request", "body: expected a JSON object")
    err_of(p({"input": row, "option": 3}), 400, "invalid_input", "option: expected an object")
    # limits: --max-body 4096, --max-items 4
    big = json.dumps({"input": row, "pad": "x" * 5000}).encode()
    err_of(p(big), 413, "body_too_large", "request body larger than 4096 bytes")
    err_of(p({"inputs": [row] * 5}), 413, "too_many_items",
           "inputs: at most 4 inputs per request, got 5")
    r = p({"inputs": [row] * 4})
    assert r.status == 200 and len(r.json()["outputs"]) == 4, r
    v2 = {"inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP64", "data": [row] * 5}]}
    err_of(rt.post("/v2/models/digits/infer", v2, mode=mode), 413, "too_many_items",
           "inputs[0].shape: at most 4 items per request, got 5")
    # unknown paths and wrong methods
    for method, path in (("GET", "/nope"), ("GET", "/v1/predictx"), ("GET", "/v2/models"),
                         ("GET", "/v2/models/digits/nope")):
        err_of(rt.request(method, path, mode=mode), 404, "not_found")
    for method, path in (("PUT", "/v1/predict"), ("DELETE", "/v1/predict"),
                         ("POST", "/healthz"), ("POST", "/v1/status"), ("PUT", "/metrics")):
        err_of(rt.request(method, path, body=b"{}", mode=mode), 405, "method_not_allowed")
    # still fine
    r = p({"input": row})
    assert r.status == 200, r
    check_output(models.models["xgb_multi"], 0, r.json()["output"], r.json()["score"])


@pytest.mark.parametrize("mode", ["h2", "h1"])
def test_request_id_echoed(procs, models, mode):
    """x-request-id comes back as a header on answers and errors, and in the error JSON."""
    rt = start(procs, models)
    r = rt.predict({"input": models.inputs[0]}, headers=[("x-request-id", "rid-ok-1")],
                   mode=mode)
    assert r.status == 200 and r.headers.get("x-request-id") == "rid-ok-1", r.headers
    r = rt.predict({"input": [1, 2]}, headers=[("x-request-id", "rid-bad-2")], mode=mode)
    err = err_of(r, 400, "invalid_input")
    assert r.headers.get("x-request-id") == "rid-bad-2", r.headers
    assert err.get("request_id") == "rid-bad-2", err
    r = rt.get("/nope", headers=[("x-request-id", "rid-404")], mode=mode)
    assert err_of(r, 404, "not_found").get("request_id") == "rid-404"
    assert r.headers.get("x-request-id") == "rid-404", r.headers
    r = rt.post("/v2/models/digits/infer", {"inputs": []},
                headers=[("x-request-id", "rid-v2")], mode=mode)
    assert err_of(r, 400, "invalid_input").get("request_id") == "rid-v2"
    r = rt.get("/healthz", headers=[("x-request-id", "rid-h")], mode=mode)
    assert r.status == 200 and r.headers.get("x-request-id") == "rid-h", r.headers


# ---------------------------------------------------------------------------------------------
# Open Inference Protocol v2


def v2_tensor(rows, datatype, nested=False, shape=None):
    data = [list(r) for r in rows] if nested else [v for r in rows for v in r]
    return {"name": "input", "shape": shape or [len(rows), len(rows[0])], "datatype": datatype,
            "data": data}


@pytest.mark.parametrize("mode", ["h2", "h1"])
def test_v2(procs, models, mode):
    """v2 health, metadata, model ready and infer with FP32 / FP64 / INT64 tensors (flat and
    nested data, [n, 64] and [64] shapes, /versions/{v}/infer, id echoed)."""
    e = models.models["xgb_multi"]
    rt = start(procs, models)
    r = rt.get("/v2/health/live", mode=mode)
    assert r.status == 200 and r.json() == {"live": True}, r
    r = rt.get("/v2/health/ready", mode=mode)
    assert r.status == 200 and r.json() == {"ready": True}, r
    r = rt.get("/v2/models/digits/ready", mode=mode)
    assert r.status == 200 and r.json() == {"ready": True}, r
    r = rt.get("/v2/models/digits", mode=mode)
    assert r.status == 200, r
    meta = r.json()
    sha = hashlib.sha256(open(models.path(e["file"]), "rb").read()).hexdigest()
    assert meta["name"] == "digits" and meta["versions"] == ["1"], meta
    assert meta["platform"] == "modelgate_xgboost", meta
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}], meta
    # every output an answer carries, with the datatype and shape it comes in (the values
    # behind the label were missing)
    assert meta["outputs"] == [{"name": "output", "datatype": "INT64", "shape": [-1]},
                               {"name": "score", "datatype": "FP64", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP64",
                                "shape": [-1, 10]}], meta
    assert meta["parameters"]["sha256"] == sha, meta
    # the server's own metadata (it was a 404)
    r = rt.get("/v2", mode=mode)
    assert r.status == 200 and r.json()["name"] == "modelgate-runtime", r
    assert r.json()["extensions"] == [] and r.json()["version"], r

    def infer(tensor, path="/v2/models/digits/infer", **extra):
        doc = {"inputs": [tensor]}
        doc.update(extra)
        r = rt.post(path, doc, mode=mode)
        assert r.status == 200, (tensor["datatype"], r)
        return r.json()

    def check(doc, idx):
        assert doc["model_name"] == "digits" and doc["model_version"] == "1", doc
        outs = {o["name"]: o for o in doc["outputs"]}
        assert [o["name"] for o in doc["outputs"]] == ["output", "score", "probabilities"], doc
        n = len(idx)
        assert outs["output"]["datatype"] == "INT64" and outs["output"]["shape"] == [n], outs
        assert outs["score"]["datatype"] == "FP64" and outs["score"]["shape"] == [n], outs
        assert outs["probabilities"]["shape"] == [n, 10], outs
        for k, i in enumerate(idx):
            check_output(e, i, outs["output"]["data"][k], outs["score"]["data"][k], "v2")
            probs = outs["probabilities"]["data"][k * 10:(k + 1) * 10]
            assert all(abs(a - b) <= TOL for a, b in zip(probs, e["values"][i])), (probs, i)

    allidx = list(range(len(models.inputs)))
    check(infer(v2_tensor(models.inputs, "FP32")), allidx)
    check(infer(v2_tensor(models.inputs, "FP64", nested=True)), allidx)
    rows = int_rows(models)
    check(infer(v2_tensor([ints(models.inputs[i]) for i in rows], "INT64")), rows)
    check(infer(v2_tensor([ints(models.inputs[i]) for i in rows], "INT32", nested=True)), rows)
    # one item: shape [64]
    check(infer(v2_tensor([models.inputs[3]], "FP64", shape=[64])), [3])
    # id echoed, versioned path
    doc = infer(v2_tensor(models.inputs[:2], "FP32"), path="/v2/models/digits/versions/1/infer",
                id="req-42")
    assert doc["id"] == "req-42", doc
    check(doc, [0, 1])
    # "outputs" asks for some of them, in the model's order (all of them came back)
    doc = infer(v2_tensor(models.inputs[:2], "FP32"),
                outputs=[{"name": "probabilities"}, {"name": "output"}])
    assert [o["name"] for o in doc["outputs"]] == ["output", "probabilities"], doc
    r = rt.post("/v2/models/digits/infer", {"inputs": [v2_tensor(models.inputs[:1], "FP32")],
                                            "outputs": [{"name": "logits"}]}, mode=mode)
    err_of(r, 400, "invalid_input", "outputs[0].name: expected one of the model's outputs "
           "(output, score, probabilities)")
    # a tensor without its name (taken before)
    nameless = v2_tensor(models.inputs[:1], "FP32")
    del nameless["name"]
    err_of(rt.post("/v2/models/digits/infer", {"inputs": [nameless]}, mode=mode), 400,
           "invalid_input", 'inputs[0].name: expected a string (the tensor\'s name, "input")')
    # a regressor's output is FP64 and it has no probabilities
    rr = start(procs, models, "xgb_digits_reg.json", name="reg", proc_name="runtime-reg")
    r = rr.post("/v2/models/reg/infer", {"inputs": [v2_tensor(models.inputs, "FP64")]},
                mode=mode)
    assert r.status == 200, r
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outs) == {"output", "score"}, outs
    assert outs["output"]["datatype"] == "FP64", outs
    meta = rr.get("/v2/models/reg", mode=mode).json()
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("output", "FP64"), ("score", "FP64")], meta
    for i, v in enumerate(outs["output"]["data"]):
        check_output(models.models["xgb_reg"], i, v, outs["score"]["data"][i], "v2 reg")


@pytest.mark.parametrize("mode", ["h2", "h1"])
def test_v2_errors(procs, models, mode):
    """v2 bad tensors: the messages of model.h; an unknown model name is 404."""
    rt = start(procs, models)
    row = models.inputs[0]
    path = "/v2/models/digits/infer"

    def post(doc):
        return rt.post(path, doc, mode=mode)

    t = v2_tensor([row], "BYTES")
    err_of(post({"inputs": [t]}), 400, "invalid_input",
           'inputs[0].datatype: expected FP32, FP64, INT32 or INT64, got "BYTES"')
    t = v2_tensor([row], "FP16")
    err_of(post({"inputs": [t]}), 400, "invalid_input",
           'inputs[0].datatype: expected FP32, FP64, INT32 or INT64, got "FP16"')
    t = v2_tensor([row[:63], row[:63]], "FP32")
    err_of(post({"inputs": [t]}), 400, "invalid_input",
           "inputs[0].shape: expected [n, 64], got [2, 63]")
    t = v2_tensor([row, row], "FP32")
    t["data"] = t["data"][:127]
    err_of(post({"inputs": [t]}), 400, "invalid_input",
           "inputs[0].data: expected 128 values for shape [2, 64], got 127")
    t = v2_tensor([row], "FP32")
    t["data"][3] = "x"
    err = err_of(post({"inputs": [t]}), 400, "invalid_input")
    assert err["message"].startswith("inputs[0].data[3]: expected a number"), err
    frac = models.inputs[7]  # the row with fractional values: not an INT64 tensor
    j = next(k for k, v in enumerate(frac) if v != int(v))
    err = err_of(post({"inputs": [v2_tensor([frac], "INT64")]}), 400, "invalid_input")
    assert err["message"] == "inputs[0].data[%d]: expected an INT64, got %.17g" % (j, frac[j]), err
    err_of(post({"inputs": []}), 400, "invalid_input")
    err_of(post({}), 400, "invalid_input")
    err_of(post({"inputs": [v2_tensor([row], "FP32"), v2_tensor([row], "FP32")]}), 400,
           "invalid_input")
    err_of(rt.post(path, b'{"inputs": [', mode=mode), 400, "bad_request")
    # unknown model name: metadata, ready and infer
    err_of(rt.get("/v2/models/nosuch", mode=mode), 404, "model_not_found")
    err_of(rt.get("/v2/models/nosuch/ready", mode=mode), 404, "model_not_found")
    err = err_of(rt.post("/v2/models/nosuch/infer", {"inputs": [v2_tensor([row], "FP32")]},
                         mode=mode), 404, "model_not_found")
    assert "nosuch" in err["message"] and "digits" in err["message"], err


# ---------------------------------------------------------------------------------------------
# status, metrics, readiness


def test_status_and_metrics(procs, models):
    """/v1/status describes the model and the switch state; /metrics counts requests by
    status, durations, batches and loads, and labels the model being served."""
    fname = models.path("xgb_digits.json")
    rt = start(procs, models, args=["--service", "digits-production-v1"])
    st = rt.status()
    data = open(fname, "rb").read()
    sha = hashlib.sha256(data).hexdigest()
    assert st["service"] == "digits-production-v1" and st["ready"] is True, st
    m = st["model"]
    assert m["name"] == "digits" and m["version"] == "1" and m["kind"] == "xgboost", st
    assert m["sha256"] == sha and m["size"] == len(data), st
    assert os.path.realpath(m["path"]) == os.path.realpath(fname), st
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["loaded_at"]), st
    assert abs(time.mktime(time.strptime(m["loaded_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
               - time.time()) < 120, st
    assert m["load_ms"] > 0, st
    sw = st["switch"]
    assert sw["loading"] is False and sw["loads_ok"] == 1 and sw["loads_failed"] == 0, st
    assert sw["last_error"] is None and sw["last_switch_ms"] >= 0, st
    assert sw["last_error_at"] is None, st

    m0 = rt.metrics()
    for i in range(5):
        assert rt.predict({"input": models.inputs[i]}).status == 200
    assert rt.predict({"input": [1]}).status == 400
    assert rt.predict(b"{").status == 400
    assert rt.get("/nope").status == 404
    assert rt.request("DELETE", "/v1/predict").status == 405
    m1 = rt.metrics()

    def d(key):
        return m1.get(key, 0) - m0.get(key, 0)

    # the first /metrics request is counted once it was answered: one more 200
    assert d('modelgate_runtime_requests_total{code="200"}') == 6, (m0, m1)
    assert d('modelgate_runtime_requests_total{code="400"}') == 2, (m0, m1)
    assert d('modelgate_runtime_requests_total{code="404"}') == 1, (m0, m1)
    assert d('modelgate_runtime_responses_total{class="2xx"}') == 6
    assert d('modelgate_runtime_requests_total{code="405"}') == 1, (m0, m1)  # had no series
    assert d('modelgate_runtime_responses_total{class="4xx"}') == 4
    # the codes add up to the classes
    for cls in "12345":
        assert sum(v for k, v in m1.items() if k.startswith(
            'modelgate_runtime_requests_total{code="%s' % cls)) == m1.get(
                'modelgate_runtime_responses_total{class="%sxx"}' % cls, 0), (cls, m1)
    assert d("modelgate_runtime_request_duration_seconds_count") == 10
    assert d('modelgate_runtime_request_duration_seconds_bucket{le="+Inf"}') == 10
    assert d("modelgate_runtime_request_duration_seconds_sum") > 0
    assert d("modelgate_runtime_batch_items_total") == 5
    assert 1 <= d("modelgate_runtime_batches_total") <= 5
    assert m1['modelgate_runtime_model_loads_total{result="ok"}'] == 1
    assert m1['modelgate_runtime_model_loads_total{result="failed"}'] == 0
    assert m1["modelgate_runtime_model_loading"] == 0
    assert m1["modelgate_runtime_model_switch_seconds"] >= 0
    info = 'modelgate_runtime_model_info{name="digits",version="1",kind="xgboost",sha256="%s"}'
    assert m1.get(info % sha) == 1, m1
    # histogram buckets are cumulative
    buckets = [v for k, v in m1.items()
               if k.startswith("modelgate_runtime_request_duration_seconds_bucket")]
    assert buckets == sorted(buckets), m1
    text = rt.get("/metrics").body.decode()
    for name, typ in (("modelgate_runtime_requests_total", "counter"),
                      ("modelgate_runtime_request_duration_seconds", "histogram"),
                      ("modelgate_runtime_model_loads_total", "counter"),
                      ("modelgate_runtime_model_info", "gauge")):
        assert "# TYPE %s %s" % (name, typ) in text, text
    assert rt.status()["requests_served"] >= 9


@pytest.mark.parametrize("what", ["model", "descriptor"])
def test_fifo_model_is_refused_and_sigterm_still_exits(procs, models, what):
    """A model file or descriptor that is a FIFO: the loader waited in open() for a writer for
    ever (and /dev/zero kept it hashing), the pod never got a model, and SIGTERM could not end
    the process (its exit waited for the loader). Refused at once as not a regular file; the
    pod stays up without a model and exits 0 on SIGTERM within its drain."""
    fifo = os.path.join(procs.dir, "model-fifo.json")
    os.mkfifo(fifo)
    if what == "descriptor":  # read at start-up: the command line is refused, at once
        r = subprocess.run([RUNTIME_BIN, "--listen", "127.0.0.1:%d" % free_port(), "--model",
                            fifo], capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and "model descriptor '%s': not a regular file" % fifo in (
            r.stderr), (r.returncode, r.stderr)
        return
    rt = Runtime(procs, fifo, kind="linear", wait_ready=False)
    st = wait_for(lambda: (lambda s: s if s["switch"]["loads_failed"] >= 1 else None)(
        rt.status()), 10, what="the load of a FIFO refused")
    assert "not a regular file" in (st["switch"]["last_error"] or ""), st
    assert rt.get("/readyz").status == 503
    t0 = time.monotonic()
    rt.signal(signal.SIGTERM)
    rc = rt.proc.popen.wait(timeout=15)
    assert rc == 0, (rc, rt.log())
    print("FIFO %s refused (%s); SIGTERM -> exit 0 in %.2f s" % (
        what, st["switch"]["last_error"], time.monotonic() - t0))


def test_readiness_flips_when_the_model_appears(procs, models):
    """Started with a descriptor whose model file does not exist yet: alive but not ready,
    predictions 503 no_model, status says why; once the file appears the runtime loads it
    within seconds, /readyz turns 200 and predictions work."""
    target = os.path.join(procs.dir, "digits-v1.json")
    desc = descriptor(procs, "digits-v1.json", "1")
    rt = Runtime(procs, desc, args=["--watch-ms", "200"], wait_ready=False)
    for mode in ("h2", "h1"):
        r = rt.get("/readyz", mode=mode)
        assert r.status == 503 and r.json() == {"ready": False}, r
        assert rt.get("/v2/health/ready", mode=mode).status == 503
        assert rt.get("/healthz", mode=mode).status == 200
        assert rt.get("/v2/health/live", mode=mode).status == 200
        err_of(rt.predict({"input": models.inputs[0]}, mode=mode), 503, "no_model")
        err_of(rt.post("/v2/models/digits/infer",
                       {"inputs": [v2_tensor([models.inputs[0]], "FP32")]}, mode=mode),
               503, "no_model")
        err_of(rt.get("/v2/models/digits", mode=mode), 503, "no_model")
    # the first load runs on the loader thread, at a lower priority than requests: on a busy
    # machine the checks above may all come before it has failed
    def failed_once():
        st = rt.status()
        return st if st["switch"]["loads_failed"] >= 1 else None
    st = wait_for(failed_once, 10, what="the runtime's first load to fail")
    assert st["ready"] is False and st["model"] is None, st
    assert st["switch"]["loads_failed"] >= 1 and st["switch"]["loads_ok"] == 0, st
    assert "digits-v1.json" in (st["switch"]["last_error"] or ""), st
    # when it happened: a failure kept after later switches succeeded is told apart
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", st["switch"]["last_error_at"]), st
    # no "switch" without a model to switch from: it said "model switch refused"
    assert "model load refused; no model serves yet" in rt.log(), rt.log()
    assert "model switch refused" not in rt.log(), rt.log()
    time.sleep(0.5)  # a few watch intervals: a missing file is not retried in a busy loop
    assert rt.status()["switch"]["loads_failed"] <= 2, rt.status()

    t0 = time.monotonic()
    models.copy("xgb_digits.json", target)
    rt.wait_ready(timeout=5.0)
    took = time.monotonic() - t0
    print("model file appeared -> /readyz 200 after %.0f ms (--watch-ms 200)" % (took * 1000))
    r = rt.predict({"input": models.inputs[1]})
    assert r.status == 200, r
    check_output(models.models["xgb_multi"], 1, r.json()["output"], r.json()["score"])
    assert r.json()["model"] == {"name": "digits", "version": "1"}
    st = rt.status()
    assert st["ready"] is True and st["switch"]["loads_ok"] == 1, st
    assert rt.get("/v2/health/ready").status == 200


# ---------------------------------------------------------------------------------------------
# switching models


class CountingConn(H1Conn):
    """An H1Conn that counts the bytes it received (got)."""

    def __init__(self, port):
        super().__init__(port, timeout=10.0)
        self.got = 0

    def _fill(self):
        before = len(self.buf)
        ok = super()._fill()
        self.got += len(self.buf) - before
        return ok


class Load:
    """Clients that send predictions back to back until stopped (bounded in time): h2
    connections with several streams in flight, an HTTP/1.1 keep-alive connection and a new
    HTTP/1.1 connection per request. Each answer is checked against the expected output of
    the version that answered (|by_version|: version -> expected.json entry). A result:
    (kind, started, ended, status, version, problem or None)."""

    def __init__(self, rt, models, by_version, seconds, h2_conns=2, streams=4):
        self.rt = rt
        self.inputs = models.inputs
        self.by_version = by_version
        self.results = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.deadline = time.monotonic() + seconds
        self.bodies = [json.dumps({"input": row}).encode() for row in self.inputs]
        fns = [lambda: self.h2_loop(streams)] * h2_conns + [self.h1_loop, self.h1_new_loop]
        self.threads = [threading.Thread(target=f, daemon=True) for f in fns]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(15)

    def running(self):
        return not self.stop_ev.is_set() and time.monotonic() < self.deadline

    def judge(self, kind, t0, t1, i, status, body):
        version, problem = None, None
        try:
            doc = json.loads(bytes(body))
        except ValueError:
            doc = None
            problem = "not JSON: %r" % bytes(body)[:200]
        if status != 200:
            problem = "status %s: %r" % (status, bytes(body)[:300])
        elif doc is not None:
            version = (doc.get("model") or {}).get("version")
            entry = self.by_version.get(version)
            if entry is None:
                problem = "unexpected model %r" % doc.get("model")
            else:
                problem = answer_problem(entry, i, doc)
        with self.lock:
            self.results.append((kind, t0, t1, status, version, problem))

    def fail(self, kind, t0, what):
        with self.lock:
            self.results.append((kind, t0, time.monotonic(), None, None, what))

    def h2_loop(self, streams):
        try:
            c = self.rt.h2(timeout=10)
        except OSError as e:
            return self.fail("h2", time.monotonic(), "refused: connect: %s" % e)
        hdr = [("content-type", "application/json")]
        n = 0
        with c:
            while self.running() and c.goaway is None and not c.closed:
                batch = []
                for _ in range(streams):
                    i = n % len(self.inputs)
                    n += 1
                    batch.append((i, time.monotonic(),
                                  c.start("POST", "/v1/predict", headers=hdr,
                                          body=self.bodies[i], end_stream=True)))
                if not c.wait([s for _, _, s in batch], timeout=10) and not c.closed:
                    return self.fail("h2", batch[0][1], "streams unfinished after 10 s")
                for i, t0, st in batch:
                    if st.ended and st.reset_code is None:
                        self.judge("h2", t0, st.done_at, i, st.status, st.body)
                    elif c.goaway is not None and st.stream_id > c.goaway[1] and \
                            st.status is None:
                        # not processed, as the GOAWAY says: a client retries it elsewhere
                        self.fail("h2", t0, "refused: stream %d above GOAWAY last_stream_id %d"
                                  % (st.stream_id, c.goaway[1]))
                    else:
                        self.fail("h2", t0, "stream cut: %r (goaway %r)" % (st, c.goaway))

    def h1_loop(self):
        hdr = [("content-type", "application/json")]
        n = 0
        try:
            c = CountingConn(self.rt.port)
        except OSError as e:
            return self.fail("h1", time.monotonic(), "refused: connect: %s" % e)
        with c:
            while self.running():
                i = n % len(self.inputs)
                n += 1
                t0 = time.monotonic()
                got = c.got
                try:
                    c.send(h1_request_bytes("POST", "/v1/predict", self.rt.addr, hdr,
                                            self.bodies[i]))
                    r = c.read_response()
                except (OSError, ConnectionError) as e:
                    # closed before a byte of the answer: not processed (a keep-alive race)
                    why = "refused: closed before an answer" if c.got == got else "cut"
                    return self.fail("h1", t0, "%s: keep-alive request: %r" % (why, e))
                self.judge("h1", t0, time.monotonic(), i, r.status, r.body)
                if r.headers.get("connection", "").lower() == "close":
                    return

    def h1_new_loop(self):
        hdr = [("content-type", "application/json"), ("connection", "close")]
        n = 0
        while self.running():
            i = n % len(self.inputs)
            n += 1
            t0 = time.monotonic()
            try:
                c = CountingConn(self.rt.port)
            except OSError as e:
                self.fail("h1-new", t0, "refused: connect: %r" % e)
                time.sleep(0.05)
                continue
            with c:
                try:
                    c.send(h1_request_bytes("POST", "/v1/predict", self.rt.addr, hdr,
                                            self.bodies[i]))
                    r = c.read_response()
                except (OSError, ConnectionError) as e:
                    why = "refused: closed before an answer" if c.got == 0 else "cut"
                    self.fail("h1-new", t0, "%s: request: %r" % (why, e))
                    continue
            self.judge("h1-new", t0, time.monotonic(), i, r.status, r.body)

    def problems(self):
        with self.lock:
            return [r for r in self.results if r[5] is not None]

    def first_answer(self, version):
        with self.lock:
            ts = [r[2] for r in self.results if r[4] == version and r[5] is None]
        return min(ts) if ts else None


def test_switch_under_load(procs, models):
    """The descriptor is rewritten to a second model (the UBJSON file, version "2") while
    clients send predictions back to back: no request fails, every answer is well-formed and
    right for the version that gave it, answers go from version 1 to 2 and never back; the
    switch time (rewrite -> first version-2 answer) is printed and bounded by 5 s."""
    work = procs.dir
    models.copy("xgb_digits.json", os.path.join(work, "digits-1.json"))
    models.copy("xgb_digits.ubj", os.path.join(work, "digits-2.ubj"))
    desc = descriptor(procs, "digits-1.json", "1", warmup=[models.inputs[0]])
    rt = Runtime(procs, desc, args=["--watch-ms", "200"])
    entry = models.models["xgb_multi"]
    assert models.models["xgb_multi_ubj"]["outputs"] == entry["outputs"]
    with Load(rt, models, {"1": entry, "2": models.models["xgb_multi_ubj"]}, 6.0) as load:
        time.sleep(2.0)
        assert not load.problems(), load.problems()[:5]
        t_switch = time.monotonic()
        descriptor(procs, "digits-2.ubj", "2", warmup=[models.inputs[0]])
        wait_for(lambda: load.first_answer("2"), 5.0, what="a version-2 answer")
        time.sleep(1.5)  # keep the load on the new model a little
    results = load.results
    problems = load.problems()
    assert not problems, "%d of %d requests failed, e.g. %r" % (len(problems), len(results),
                                                                 problems[:5])
    first_v2 = load.first_answer("2")
    switch_s = first_v2 - t_switch
    v1 = [r for r in results if r[4] == "1"]
    v2 = [r for r in results if r[4] == "2"]
    assert len(v1) >= 20 and len(v2) >= 20, (len(v1), len(v2))
    # once a version-2 answer came back, every request started after it got version 2
    late_v1 = [r for r in v1 if r[1] > first_v2]
    assert not late_v1, "version 1 answered requests started after the switch: %r" % late_v1[:5]
    for kind in ("h2", "h1", "h1-new"):
        assert any(r[0] == kind for r in v1) and any(r[0] == kind for r in v2), kind
    st = rt.status()
    assert st["model"]["version"] == "2" and st["model"]["path"].endswith("digits-2.ubj"), st
    assert st["switch"]["loads_ok"] == 2 and st["switch"]["loads_failed"] == 0, st
    rps = len(results) / (max(r[2] for r in results) - min(r[1] for r in results))
    print("switch under load: %d requests (%.0f/s, python clients: h2 x2 with 4 streams, h1 "
          "keep-alive, h1 new connection), 0 failed; %d answered by v1, %d by v2" % (
              len(results), rps, len(v1), len(v2)))
    print("switch time: descriptor rewritten -> first v2 answer %.0f ms (--watch-ms 200 "
          "polling included); runtime's last_switch_ms (load + warm-up + swap) %.1f ms" % (
              switch_s * 1000, st["switch"]["last_switch_ms"]))
    assert switch_s < SWITCH_LIMIT_S, switch_s


def test_sighup_reloads(procs, models):
    """SIGHUP loads the model source again at once (the watcher is slowed down to an hour, so
    nothing else can): the file replaced by the regressor is served after SIGHUP, and a SIGHUP
    with nothing changed reloads the same model without a failed request."""
    work = procs.dir
    model = os.path.join(work, "m.json")
    models.copy("xgb_digits.json", model)
    rt = Runtime(procs, model, kind="xgboost", name="digits", version="7",
                 args=["--watch-ms", "3600000"])
    reg = models.models["xgb_reg"]
    with Load(rt, models, {"7": models.models["xgb_multi"]}, 3.0, h2_conns=1) as load:
        time.sleep(0.5)
        rt.signal(signal.SIGHUP)
        rt.wait_status(lambda d: d["switch"]["loads_ok"] == 2, 5.0, what="the SIGHUP reload")
        time.sleep(0.5)
    assert not load.problems(), load.problems()[:5]
    models.copy("xgb_digits_reg.json", model)
    time.sleep(0.3)
    r = rt.predict({"input": models.inputs[0]})
    check_output(models.models["xgb_multi"], 0, r.json()["output"], r.json()["score"],
                 "no reload without SIGHUP")
    t0 = time.monotonic()
    rt.signal(signal.SIGHUP)
    with rt.h2() as c:
        body = json.dumps({"input": models.inputs[0]}).encode()
        while True:
            st = c.request("POST", "/v1/predict", body=body)
            assert st.status == 200, st
            if isinstance(st.json()["output"], float):
                break
            assert time.monotonic() - t0 < SWITCH_LIMIT_S, "SIGHUP did not switch"
    took = time.monotonic() - t0
    check_output(reg, 0, st.json()["output"], st.json()["score"], "after SIGHUP")
    s = rt.status()
    assert s["switch"]["loads_ok"] == 3 and s["switch"]["loads_failed"] == 0, s
    print("SIGHUP -> first answer from the new model: %.0f ms (last_switch_ms %.1f)" % (
        took * 1000, s["switch"]["last_switch_ms"]))
    assert "SIGHUP" in rt.log()


def test_sigterm_drains_in_flight_requests(procs, models):
    """SIGTERM while requests are in flight (bodies half sent on h2 and HTTP/1.1, plus a
    load): the listener closes, those requests complete with 200 when their bodies finish,
    nothing is cut, and the runtime exits 0 once they are done."""
    rt = start(procs, models, args=["--drain-ms", "8000"])
    entry = models.models["xgb_multi"]
    body = json.dumps({"input": models.inputs[4]}).encode()
    hdr = [("content-type", "application/json")]
    c2 = rt.h2()
    st = c2.start("POST", "/v1/predict", headers=hdr, body=body[:40], end_stream=False)
    c1 = rt.h1conn()
    c1.send(h1_request_bytes("POST", "/v1/predict", rt.addr, hdr, body)[:-30])
    time.sleep(0.2)
    with Load(rt, models, {"1": entry}, 3.0, h2_conns=1) as load:
        time.sleep(0.5)
        rt.signal(signal.SIGTERM)
        time.sleep(0.5)
    # every request of the load was either answered in full or refused before it was
    # processed (new connection refused, h2 stream above the GOAWAY, idle keep-alive closed)
    answered = [r for r in load.results if r[5] is None]
    assert answered, load.results[:5]
    refused = [r for r in load.results if r[5] is not None and r[5].startswith("refused")]
    bad = [r for r in load.results if r[5] is not None and not r[5].startswith("refused")]
    assert not bad, bad[:5]
    assert rt.proc.alive(), "the runtime exited with requests in flight"
    assert not port_open(rt.port), "the listener is still open after SIGTERM"
    # finish the in-flight requests
    assert c2.send(st, body[40:], end_stream=True), st
    assert c2.wait(st, 5), st
    assert st.status == 200 and st.ended, st
    check_output(entry, 4, st.json()["output"], st.json()["score"], "h2 in flight")
    assert c2.goaway is not None, "no GOAWAY on the h2 connection"
    c1.send(h1_request_bytes("POST", "/v1/predict", rt.addr, hdr, body)[-30:])
    r = c1.read_response()
    assert r.status == 200, r
    check_output(entry, 4, r.json()["output"], r.json()["score"], "h1 in flight")
    c1.close()
    c2.close()
    rc = rt.proc.wait(5.0)
    assert rc == 0, "exit code %s after SIGTERM:\n%s" % (rc, rt.proc.report())
    assert "draining" in rt.log()
    print("drain: %d answered, %d refused before processing (%s)" % (
        len(answered), len(refused), sorted({r[5].split(":")[1].strip() for r in refused})))


def test_corrupt_models_are_refused(procs, models):
    """A truncated JSON model, garbage bytes written over the model file in place, a model
    that fails its warm-up and a broken descriptor are each refused: the old model keeps
    answering (no failed request meanwhile), /v1/status last_error names the file, the
    failed-load counters count each; a good file then switches."""
    work = procs.dir
    model = os.path.join(work, "model-file.json")
    models.copy("xgb_digits.json", model)
    desc = descriptor(procs, "model-file.json", "1")
    rt = Runtime(procs, desc, args=["--watch-ms", "100"])
    entry = models.models["xgb_multi"]
    sha1 = rt.status()["model"]["sha256"]
    good = open(models.path("xgb_digits.json"), "rb").read()

    def wait_failed(n, what):
        st = rt.wait_status(lambda d: d["switch"]["loads_failed"] >= n, 5.0,
                            what="load failure %d (%s)" % (n, what), strict=False)
        assert st["switch"]["loads_failed"] == n, st
        assert st["model"]["sha256"] == sha1 and st["model"]["version"] == "1", st
        assert rt.metrics()['modelgate_runtime_model_loads_total{result="failed"}'] == n
        assert rt.ready()
        r = rt.predict({"input": models.inputs[2]})
        assert r.status == 200 and r.json()["model"]["version"] == "1", r
        check_output(entry, 2, r.json()["output"], r.json()["score"], what)
        return st["switch"]["last_error"]

    with Load(rt, models, {"1": entry, "2": models.models["xgb_reg"]}, 20.0, h2_conns=1,
              streams=2) as load:
        # 1. truncated JSON (replaced as a whole)
        write_json(model, good[:len(good) // 2])
        err = wait_failed(1, "truncated JSON")
        assert model in err, err
        # 2. garbage bytes written over the start of the file, in place (same inode and size);
        # not UTF-8 either, so they must not make /v1/status invalid JSON when quoted
        with open(model, "r+b") as f:
            f.write(b"\x98\xfe" + bytes((k * 37 + 11) % 256 for k in range(254)))
        err = wait_failed(2, "garbage bytes")
        assert model in err, err
        # 3. a model that loads but fails its warm-up (the descriptor's sample is too short);
        # a new file named by the new descriptor, so the watcher sees one change: a new model
        # copied over the old name first could be taken with the old descriptor in between
        model2 = os.path.join(work, "model-file-2.json")
        models.copy("xgb_digits_reg.json", model2)
        descriptor(procs, "model-file-2.json", "2", warmup=[[1, 2, 3]])
        err = wait_failed(3, "failed warm-up")
        assert "warm-up" in err and model2 in err, err
        # 4. a descriptor that is not JSON
        write_json(desc, '{"file": "model-file.json", "kind": ')
        err = wait_failed(4, "broken descriptor")
        assert desc in err, err
        # 5. a good model again: switches
        descriptor(procs, "model-file-2.json", "2")
        st = rt.wait_status(lambda d: d["switch"]["loads_ok"] == 2, 5.0, what="the switch",
                            strict=False)
        assert st["model"]["version"] == "2", st
        assert st["model"]["sha256"] == hashlib.sha256(
            open(models.path("xgb_digits_reg.json"), "rb").read()).hexdigest(), st
        wait_for(lambda: load.first_answer("2"), 5.0, what="a version-2 answer under load")
        time.sleep(0.3)
    assert not load.problems(), load.problems()[:5]
    assert len(load.results) > 50, len(load.results)
    for i, row in enumerate(models.inputs):
        r = rt.predict({"input": row})
        assert r.status == 200 and r.json()["model"]["version"] == "2", r
        check_output(models.models["xgb_reg"], i, r.json()["output"], r.json()["score"])
    m = rt.metrics()
    assert m['modelgate_runtime_model_loads_total{result="failed"}'] == 4, m
    assert m['modelgate_runtime_model_loads_total{result="ok"}'] == 2, m
    log = rt.log()
    assert log.count("model switch refused") == 4, log
    assert rt.proc.alive()
    assert not rt.body_problems, rt.body_problems[0]


# ---------------------------------------------------------------------------------------------
# HTTP semantics beyond the runtime's own table (last: ctest runs pytest -x)


def test_method_and_path_semantics(procs, models):
    """HTTP semantics beyond the basic table (RFC 9110 15.5.5/15.5.6): a known path with the
    wrong method is 405 with an Allow header, an unknown path is 404 whatever the method."""
    rt = start(procs, models)
    problems = []
    for method, path in (("GET", "/v1/predict"), ("PUT", "/v1/predict"), ("POST", "/healthz")):
        r = rt.request(method, path, body=b"{}" if method != "GET" else None)
        if r.status != 405:
            problems.append("%s %s -> %s (expected 405): %r" % (method, path, r.status, r.body))
        elif "allow" not in r.headers:
            problems.append("%s %s -> 405 without an Allow header: %r" % (method, path,
                                                                          r.headers))
    for method, path in (("POST", "/nope"), ("POST", "/v1/predictx"), ("DELETE", "/nope")):
        r = rt.request(method, path, body=b"{}")
        if r.status != 404:
            problems.append("%s %s -> %s (expected 404): %r" % (method, path, r.status, r.body))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("mode", ["h2", "h1"])
def test_options_says_what_the_pod_takes(procs, models, mode):
    """OPTIONS (RFC 9110 9.3.7) got 404 for "*" and 405 for a known path, although the gateway
    passes OPTIONS * on to pods as such: "*" now answers 200 with every method the pod serves,
    a known path 200 with the methods it takes (the 405s' Allow names OPTIONS too), an unknown
    path still 404, all with an empty body."""
    rt = start(procs, models)
    for path, allow in (("*", "GET, HEAD, POST, OPTIONS"), ("/v1/predict", "POST, OPTIONS"),
                        ("/v1/status", "GET, HEAD, OPTIONS")):
        r = rt.request("OPTIONS", path, mode=mode)
        assert (r.status, r.headers.get("allow"), r.body) == (200, allow, b""), (path, r)
        assert r.headers.get("content-length") == "0", (path, r.headers)
    assert rt.request("OPTIONS", "/nope", mode=mode).status == 404
    r = rt.request("PUT", "/v1/predict", body=b"{}", mode=mode)
    assert (r.status, r.headers.get("allow")) == (405, "POST, OPTIONS"), r
