"""
Start-up: a listener address another process holds is refused with a clear message (SO_REUSEPORT
would otherwise share its traffic silently), bad flags name the problem, --help and --version.
"""

import json
import subprocess

from conftest import GATEWAY_BIN, SANITIZER_RE, free_port, routes_doc


def run(*args, timeout=10):
    return subprocess.run([GATEWAY_BIN] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def test_port_in_use_is_refused(procs):
    port = free_port()
    a = procs.backend("pod-a")
    first = procs.gateway_cli(["--listen", "127.0.0.1:%d" % port, "--backend",
                               "127.0.0.1:%d" % a.port, "--workers", "2"], [port])
    second = run("--listen", "127.0.0.1:%d" % port, "--backend", "127.0.0.1:%d" % a.port)
    assert second.returncode != 0
    assert "cannot listen on 127.0.0.1:%d" % port in second.stderr
    assert "in use" in second.stderr
    assert not SANITIZER_RE.search(second.stderr), second.stderr
    assert first.alive()


def test_port_in_use_with_a_config_file_frees_everything(procs):
    """The refusal comes after the routes, the access log and the first worker were set up:
    all of it is released on the way out (the sanitizer build reports any leak)."""
    a = procs.backend("pod-a")
    first = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]))
    second = run("--config", first.conf_path)
    assert second.returncode == 1
    assert "cannot listen on 127.0.0.1:%d" % first.port in second.stderr
    assert not SANITIZER_RE.search(second.stderr), second.stderr
    assert first.proc.alive()


def test_unknown_flag_and_bad_address():
    r = run("--listen", "127.0.0.1:99999", "--backend", "127.0.0.1:1")
    assert r.returncode != 0
    assert "--listen" in r.stderr and "65535" in r.stderr
    r = run("--frobnicate")
    assert r.returncode != 0


def test_one_address_twice_is_refused_by_check_config(tmp_path):
    """Two listeners on one address (listen twice, or listen and admin.listen) would fail at
    start with "Address already in use", naming no culprit: --check-config says which keys."""
    port = free_port()
    (tmp_path / "routes.json").write_text(json.dumps(
        routes_doc({"svc": ["127.0.0.1:1"]}, [("digits", "production", "svc")])))
    conf = tmp_path / "gateway.json"
    conf.write_text(json.dumps({"listen": ["127.0.0.1:%d" % port, "127.0.0.1:%d" % port],
                                "admin": {"listen": "127.0.0.1:%d" % port},
                                "routes": "routes.json"}))
    r = run("--check-config", str(conf))
    assert r.returncode != 0, r.stdout + r.stderr
    assert 'listen[1]: "127.0.0.1:%d" is listen[0] too' % port in r.stderr, r.stderr
    assert 'admin.listen: "127.0.0.1:%d" is listen[0] too' % port in r.stderr, r.stderr
    conf.write_text(json.dumps({"listen": ["127.0.0.1:%d" % port],
                                "admin": {"listen": "127.0.0.1:%d" % free_port()},
                                "routes": "routes.json"}))
    r = run("--check-config", str(conf))
    assert r.returncode == 0, r.stdout + r.stderr


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "--listen" in r.stdout and "--backend" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("modelgate ")
