#!/usr/bin/python3
"""bench/python_server.py - the digits classifier served the way a Python serving template does
it: http.server.ThreadingHTTPServer (a thread per connection, HTTP/1.1 keep-alive) and
xgboost.Booster.inplace_predict, JSON in and out like modelgate-runtime's /v1/predict. It is the
baseline of bench/runtime.sh; standard library + Debian's python3-xgboost and python3-numpy.

    /usr/bin/python3 bench/python_server.py --listen 127.0.0.1:8090 --model xgb_digits.json

POST /v1/predict {"input": [64 numbers]} -> {"output": label, "score": p, "model": {...}}
                 {"inputs": [[64 numbers], ...]} -> {"outputs": [{"output", "score"}, ...], ...}
GET /healthz -> {"status": "alive"}. Bad input: 400 with {"error": {"code", "message"}}.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import xgboost as xgb


def make_handler(booster, n_features, name, version):
    model = {"name": name, "version": version}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as h2load --h1 expects
        # TCP_NODELAY, as any serving framework sets: headers and body leave in two writes, and
        # with Nagle on, the body would wait for the client's delayed ACK (40 ms on Linux)
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # no per-request logging (a template turns it off)
            pass

        def reply(self, status, doc):
            body = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status, code, message):
            self.reply(status, {"error": {"code": code, "message": message}})

        def do_GET(self):
            if self.path == "/healthz":
                self.reply(200, {"status": "alive"})
            else:
                self.error(404, "not_found", "unknown path")

        def do_POST(self):
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n)
            if self.path != "/v1/predict":
                return self.error(404, "not_found", "unknown path")
            try:
                doc = json.loads(body)
            except ValueError as e:
                return self.error(400, "bad_request", "body: invalid JSON: %s" % e)
            batch = isinstance(doc, dict) and "inputs" in doc
            rows = doc.get("inputs") if batch else [doc.get("input")] if isinstance(doc, dict) \
                else None
            try:
                x = np.asarray(rows, dtype=np.float64)
            except (TypeError, ValueError):
                x = None
            if x is None or x.ndim != 2 or x.shape[1] != n_features:
                return self.error(400, "invalid_input", "input: expected %d numbers" % n_features)
            p = booster.inplace_predict(x)  # thread-safe for gbtree since XGBoost 1.4
            idx = p.argmax(axis=1)
            outs = [{"output": int(i), "score": float(p[r, i])} for r, i in enumerate(idx)]
            if batch:
                self.reply(200, {"outputs": outs, "model": model})
            else:
                self.reply(200, {"output": outs[0]["output"], "score": outs[0]["score"],
                                 "model": model})

    return Handler


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:8090", help="host:port")
    ap.add_argument("--model", required=True, help="an XGBoost classifier (.json or .ubj)")
    ap.add_argument("--name", default="digits")
    ap.add_argument("--model-version", default="1")
    ap.add_argument("--nthread", type=int, default=1, help="XGBoost threads per prediction")
    a = ap.parse_args(argv[1:])
    booster = xgb.Booster(model_file=a.model)
    booster.set_param({"nthread": a.nthread})
    n_features = booster.num_features()
    booster.inplace_predict(np.zeros((1, n_features)))  # warm-up
    host, port = a.listen.rsplit(":", 1)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128
    srv = ThreadingHTTPServer((host, int(port)), make_handler(booster, n_features, a.name,
                                                              a.model_version))
    print("python_server: %s on %s" % (a.model, a.listen), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
