"""
Readiness-aware balancing with real modelgate-runtime pods: a pod that has no model loaded yet
gets no traffic; a service that names the model version it expects holds out pods reporting
another version (GET /v1/status) until they switch to it.
"""

import json
import os
import shutil
import signal

import httpx
import pytest

from conftest import DOMAIN, HOST, wait_for
from runtime_util import Runtime, train_models, write_json


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return train_models(str(tmp_path_factory.mktemp("readiness-models")))


def descriptor(procs, name, file, version):
    path = os.path.join(procs.dir, name)
    write_json(path, {"file": file, "kind": "xgboost", "name": "digits", "version": version})
    return path


def versions_seen(gw, models, n=12):
    c = httpx.Client(timeout=10, headers={"host": HOST})
    out = set()
    for _ in range(n):
        r = c.post("http://127.0.0.1:%d/v1/predict" % gw.port,
                   content=json.dumps({"input": models.inputs[0]}))
        out.add(r.json()["model"]["version"] if r.status_code == 200 else r.status_code)
    c.close()
    return out


def routes(pods, **svc):
    s = {"protocol": "h2c", "pods": [p.addr for p in pods], "policy": "round_robin",
         "health_check": {"path": "/readyz", "interval_ms": 100, "timeout_ms": 1000}}
    s.update(svc)
    return {"domain": DOMAIN, "envs": ["production"], "services": {"digits": s},
            "routes": [{"app": "digits", "env": "production", "service": "digits"}]}


def test_pod_without_a_model_gets_no_traffic(procs, models):
    ready = Runtime(procs, descriptor(procs, "a.json", models.path("xgb_digits.json"), "1"),
                    proc_name="pod-ready")
    # its model file does not exist yet: the pod runs, /readyz says 503
    late_file = os.path.join(procs.dir, "late.json")
    late = Runtime(procs, descriptor(procs, "b.json", late_file, "2"), proc_name="pod-late",
                   wait_ready=False, args=["--watch-ms", "100"])
    gw = procs.gateway(routes([ready, late]), tls=False)
    wait_for(lambda: versions_seen(gw, models, 4) == {"1"}, 5, what="only the ready pod")
    assert versions_seen(gw, models, 20) == {"1"}
    shutil.copyfile(models.path("xgb_digits.json"), late_file + ".tmp")
    os.replace(late_file + ".tmp", late_file)
    wait_for(lambda: versions_seen(gw, models, 6) == {"1", "2"}, 10,
             what="the late pod in rotation once its model loaded")


def test_expected_version_holds_pods_out_until_they_switch(procs, models):
    d1 = descriptor(procs, "p1.json", models.path("xgb_digits.json"), "1")
    d2 = descriptor(procs, "p2.json", models.path("xgb_digits.json"), "2")
    p1 = Runtime(procs, d1, proc_name="pod-1", args=["--watch-ms", "100"])
    p2 = Runtime(procs, d2, proc_name="pod-2", args=["--watch-ms", "100"])
    gw = procs.gateway(routes([p1, p2], model_version="2"), tls=False)
    wait_for(lambda: versions_seen(gw, models, 4) == {"2"}, 5, what="only version 2 answering")
    assert versions_seen(gw, models, 20) == {"2"}
    # pod-1 switches to version 2 in-process: it joins
    descriptor(procs, "p1.json", models.path("xgb_digits.ubj"), "2")
    wait_for(lambda: p1.status()["model"]["version"] == "2", 10, what="pod-1 on version 2")
    before = p1.status()["requests_served"]
    wait_for(lambda: versions_seen(gw, models, 6) == {"2"} and
             p1.status()["requests_served"] > before, 10,
             what="pod-1 taking requests once it reports version 2")
    # a reload that restarts the checks (another path) keeps the pods' verdicts until the new
    # checks have theirs: no request fails meanwhile
    doc = routes([p1, p2], model_version="2")
    doc["services"]["digits"]["health_check"]["path"] = "/v2/health/ready"
    gw.write_routes(doc)
    gw.signal(signal.SIGHUP)
    c = httpx.Client(timeout=10, headers={"host": HOST})
    codes = [c.post("http://127.0.0.1:%d/v1/predict" % gw.port,
                    content=json.dumps({"input": models.inputs[0]})).status_code
             for _ in range(60)]
    c.close()
    assert set(codes) == {200}, codes
    # the service now expects version 3: both are held out, 503 at once
    doc = routes([p1, p2], model_version="3")
    gw.write_routes(doc)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: versions_seen(gw, models, 2) == {503}, 5, what="every pod held out")
