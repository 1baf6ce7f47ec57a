"""
Start-up: a listener address another process holds is refused with a clear message (SO_REUSEPORT
would otherwise share its traffic silently), bad flags name the problem, --help and --version.
"""

import subprocess

from conftest import GATEWAY_BIN, free_port


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
    assert first.alive()


def test_unknown_flag_and_bad_address():
    r = run("--listen", "127.0.0.1:99999", "--backend", "127.0.0.1:1")
    assert r.returncode != 0
    assert "--listen" in r.stderr and "65535" in r.stderr
    r = run("--frobnicate")
    assert r.returncode != 0


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "--listen" in r.stdout and "--backend" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("modelgate ")
