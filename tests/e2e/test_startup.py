"""
Start-up: a listener address another process holds is refused with a clear message (SO_REUSEPORT
would otherwise share its traffic silently), bad flags name the problem, --help and --version.
"""

import json
import socket
import subprocess

from conftest import GATEWAY_BIN, SANITIZER_RE, free_port, port_open, routes_doc, wait_for
from runtime_util import RUNTIME_BIN


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


def test_check_config_refuses_what_start_up_refuses(tmp_path, tls_material):
    """--check-config said "configuration OK" for files the start refused, or that started
    half-configured: a dns_nameserver that is no address (port 99999: DNS discovery never
    started, and every DNS service answered 503 no_pods for good), an admin listener on a
    non-loopback address without a token file, an access log in a directory that is not
    there. Each is refused now, by both, naming the key or the path."""
    (tmp_path / "routes.json").write_text(json.dumps(
        routes_doc({"svc": ["127.0.0.1:1"]}, [("digits", "production", "svc")])))
    conf = tmp_path / "gateway.json"
    base = {"listen": ["127.0.0.1:%d" % free_port()], "routes": "routes.json"}
    p4, p6 = free_port(), free_port()
    cases = [
        ({"dns_nameserver": "127.0.0.1:99999"}, 'dns_nameserver: "127.0.0.1:99999" is not an IP'),
        ({"dns_nameserver": "not-an-ip"}, 'dns_nameserver: "not-an-ip" is not an IP'),
        ({"admin": {"listen": "0.0.0.0:%d" % p4}},
         "admin.listen: 0.0.0.0:%d is not a loopback address and admin.token_file is not set"
         % p4),
        ({"admin": {"listen": "[::]:%d" % p6}}, "admin.listen: [::]:%d is not a loopback" % p6),
        ({"access_log": str(tmp_path / "no-such-dir" / "access.log")},
         "cannot open access log %s" % (tmp_path / "no-such-dir" / "access.log")),
    ]
    for extra, msg in cases:
        conf.write_text(json.dumps(dict(base, **extra)))
        for how in (["--check-config", str(conf)], ["--config", str(conf)]):
            r = run(*how)
            assert r.returncode != 0 and msg in r.stderr, (how, extra, r.stdout, r.stderr)
            assert not SANITIZER_RE.search(r.stderr), r.stderr
    # files the config names, refused under the same header as the config's own problems, in
    # words that say what is wrong with them (OpenSSL's alone: "no start line", "unsupported")
    (tmp_path / "bad.pem").write_text("garbage\n")
    enc_key = tmp_path / "enc.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-aes256", "-pass", "pass:secret", "-out",
                    str(enc_key)], check=True, capture_output=True)
    rsa_key = tmp_path / "rsa.key"  # the certificate is EC: OpenSSL said "no certificate assigned"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(rsa_key)], check=True, capture_output=True)
    tls = {"listen": ["127.0.0.1:%d" % free_port()]}
    cert = tls_material["cert"]
    file_cases = [
        ({"tls": dict(tls, cert=cert, key=str(rsa_key))},
         "TLS key '%s': not the key of the certificate '%s' (a key of another type)" % (
             rsa_key, cert)),
        ({"tls": dict(tls, cert="bad.pem", key="bad.pem")},
         "TLS certificate '%s': not PEM, or not the right kind" % (tmp_path / "bad.pem")),
        ({"tls": dict(tls, cert=cert, key=cert)},
         "TLS key '%s': nothing in it reads as one (PEM expected)" % cert),
        ({"admin": {"listen": "127.0.0.1:%d" % free_port(), "token_file": "no-such-token"}},
         'admin.token_file: cannot read'),
        # a passphrase prompt on the terminal, or "processing error", before
        ({"tls": dict(tls, cert=cert, key=str(enc_key))}, "encrypted with a passphrase"),
        ({"tls": dict(tls, cert=str(tmp_path), key=str(tmp_path))},
         'tls.cert: "%s" is a directory' % tmp_path),
        # files the gateway reads, named as the file it writes: a JSON line appended to
        # routes.json per request, and the next reload refused
        ({"access_log": "routes.json"}, 'is the routing document (the gateway would write'),
        ({"access_log": str(conf)}, 'is the config file (the gateway would write'),
        ({"access_log": str(tmp_path)}, 'access_log: "%s" is a directory' % tmp_path),
    ]
    for extra, msg in file_cases:
        conf.write_text(json.dumps(dict(base, **extra)))
        for how in (["--check-config", str(conf)], ["--config", str(conf)]):
            r = run(*how)
            assert r.returncode != 0, (how, extra, r.stdout, r.stderr)
            assert "modelgate: configuration rejected:\n" in r.stderr and msg in r.stderr, (
                how, extra, r.stderr)
    for extra in ({"dns_nameserver": "[::1]:53"}, {"admin": {"listen": "[::1]:%d" % free_port()}},
                  {"access_log": str(tmp_path / "access.log")}):
        conf.write_text(json.dumps(dict(base, **extra)))
        r = run("--check-config", str(conf))
        assert r.returncode == 0, (extra, r.stdout, r.stderr)
    assert not (tmp_path / "access.log").exists()  # checked, not created


def test_every_problem_is_said_in_one_run(tmp_path, tls_material):
    """Validation ran in stages: an error in gateway.json hid the routing document's, a bad
    routing document hid a bad certificate, an out-of-range tls key hid a ticket key file of
    the wrong size; each showed only once the one before was fixed. Now --check-config and
    start-up both say them all at once, and still refuse."""
    (tmp_path / "routes.json").write_text(json.dumps(dict(
        routes_doc({"svc": ["127.0.0.1:1"]}, [("digits", "production", "svc")]),
        routes=[{"app": "digits", "env": "prod", "service": "svc"}])))
    env_err = 'routes.json: routes[0].env: unknown env "prod"'
    (tmp_path / "bad.pem").write_text("garbage\n")
    cert_err = "TLS certificate '%s': not PEM" % (tmp_path / "bad.pem")
    (tmp_path / "tk79").write_bytes(b"k" * 79)
    conf = tmp_path / "gateway.json"
    listen = "127.0.0.1:%d" % free_port()
    cases = [
        ({"listen": [listen], "routes": "routes.json", "limits": {"stream_window": 1000}}, [],
         ["limits.stream_window: out of range (got 1000;", env_err]),
        ({"listen": [listen], "routes": "routes.json"},
         ["--tls-listen", "127.0.0.1:%d" % free_port(), "--cert", str(tmp_path / "bad.pem"),
          "--key", tls_material["key"]],
         [env_err, cert_err]),
        ({"routes": "routes.json",
          "tls": {"listen": ["127.0.0.1:%d" % free_port()], "cert": "bad.pem",
                  "key": tls_material["key"], "reload_check_ms": 50,
                  "ticket_key_file": "tk79"}}, [],
         ["tls.reload_check_ms: too small (got 50;", env_err, cert_err,
          'tls.ticket_key_file: "%s" has 79 bytes' % (tmp_path / "tk79")]),
    ]
    for doc, flags, msgs in cases:
        conf.write_text(json.dumps(doc))
        for how in (["--check-config", str(conf)], ["--config", str(conf)]):
            r = run(*(how + flags))
            assert r.returncode == 1, (how, doc, r.stdout, r.stderr)
            for msg in msgs:
                assert msg in r.stderr, (how, doc, msg, r.stderr)
            assert not SANITIZER_RE.search(r.stderr), r.stderr


def expired_pair(d):
    """A self-signed certificate for localhost that expired on 2020-01-02, and its key."""
    def ossl(*args):
        subprocess.run(["openssl"] + list(args), cwd=d, check=True, capture_output=True)
    ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem")
    ossl("req", "-new", "-key", "key.pem", "-subj", "/CN=localhost", "-out", "csr.pem")
    (d / "index.txt").write_text("")
    (d / "serial").write_text("01\n")
    (d / "ca.cnf").write_text("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\n"
                              "new_certs_dir = .\nserial = serial\ndefault_md = sha256\n"
                              "policy = p\n[p]\ncommonName = supplied\n")
    ossl("ca", "-config", "ca.cnf", "-selfsign", "-keyfile", "key.pem", "-in", "csr.pem",
         "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-batch", "-notext",
         "-out", "cert.pem")
    return d / "cert.pem", d / "key.pem"


def test_check_config_warns_of_an_expired_certificate(tmp_path):
    """Start-up serves an expired certificate and warns; --check-config said only
    "configuration OK". It says OK still (the start would go on), with the same warning."""
    cert, key = expired_pair(tmp_path)
    (tmp_path / "routes.json").write_text(json.dumps(
        routes_doc({"svc": ["127.0.0.1:1"]}, [("digits", "production", "svc")])))
    conf = tmp_path / "gateway.json"
    conf.write_text(json.dumps({"tls": {"listen": ["127.0.0.1:%d" % free_port()],
                                        "cert": str(cert), "key": str(key)},
                                "routes": "routes.json"}))
    r = run("--check-config", str(conf))
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout, r.stdout
    assert "warning: TLS certificate %s has EXPIRED" % cert in r.stderr, r.stderr


def test_tls_files_without_a_tls_listener_are_named(tmp_path):
    """A certificate and key with only cleartext listeners (a TLS listener written under
    "listen") were accepted in silence, by --check-config and start-up alike: the gateway then
    served cleartext where TLS was meant. Both now warn; the start still goes on."""
    cert, key = expired_pair(tmp_path)
    (tmp_path / "routes.json").write_text(json.dumps(
        routes_doc({"svc": ["127.0.0.1:1"]}, [("digits", "production", "svc")])))
    conf = tmp_path / "gateway.json"
    port = free_port()
    conf.write_text(json.dumps({"listen": ["127.0.0.1:%d" % port],
                                "tls": {"cert": str(cert), "key": str(key)},
                                "routes": "routes.json"}))
    words = "but no listener uses TLS (tls.listen or --tls-listen)"
    r = run("--check-config", str(conf))
    assert r.returncode == 0 and "configuration OK" in r.stdout, r.stderr
    assert "warning: a TLS certificate, key or ticket key file is set" in r.stderr, r.stderr
    assert words in r.stderr, r.stderr
    # start-up, from flags this time
    p = subprocess.Popen([GATEWAY_BIN, "--listen", "127.0.0.1:%d" % port, "--backend",
                          "127.0.0.1:1", "--cert", str(cert), "--key", str(key)],
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: port_open(port), 10, what="the cleartext listener")
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert words in err, err


def test_runtime_refuses_a_port_out_of_range_and_a_zero_batch():
    """modelgate-runtime --listen 127.0.0.1:99999 listened on port 34463 (99999 mod 65536)
    and logged "on 127.0.0.1:99999"; --max-batch 0 exited 1 without a word."""
    def rt(*args):
        return subprocess.run([RUNTIME_BIN, "--model", "m.json", "--kind", "linear"] + list(args),
                              capture_output=True, text=True, timeout=10)
    for port in ("99999", "65536"):
        r = rt("--listen", "127.0.0.1:" + port)
        assert r.returncode != 0, r.stderr
        assert "port '%s' is not a number from 0 to 65535" % port in r.stderr, r.stderr
    r = rt("--listen", "127.0.0.1:1", "--max-batch", "0")
    assert r.returncode != 0 and "--max-batch: expected a whole number from 1 to" in r.stderr, \
        r.stderr


def test_runtime_on_a_port_in_use_frees_everything():
    """modelgate-runtime refused a port in use and left its loop, server and model slot to the
    sanitizer build's leak report (3441 bytes in 15 allocations)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([RUNTIME_BIN, "--model", "m.json", "--kind", "linear", "--listen",
                            "127.0.0.1:%d" % port], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1, r.stderr
    assert "cannot listen on 127.0.0.1:%d: Address already in use" % port in r.stderr, r.stderr
    assert not SANITIZER_RE.search(r.stderr), r.stderr


def test_runtime_model_file_without_kind_says_so(tmp_path):
    """A model file given without --kind is read as a descriptor: it said only "unknown key
    'format'; valid: file, kind, ...". It now says the file looks like a model file and
    that --kind names its kind."""
    path = tmp_path / "lin.json"
    path.write_text(json.dumps({"format": "mg-linear", "version": 1, "kind": "linear",
                                "type": "regression", "n_features": 1, "coef": [[2.0]],
                                "intercept": [1.0]}))
    r = subprocess.run([RUNTIME_BIN, "--model", str(path), "--listen", "127.0.0.1:%d" % free_port()],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1, r.stderr
    assert "unknown key 'format'" in r.stderr, r.stderr
    assert "looks like a model file rather than a descriptor: give its kind with --kind, one " \
           "of xgboost linear" in r.stderr, r.stderr
    assert not SANITIZER_RE.search(r.stderr), r.stderr


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "--listen" in r.stdout and "--backend" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("modelgate ")
