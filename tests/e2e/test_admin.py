"""
The admin listener: its own port, bearer token from a file, loopback-only without a token.
(/metrics and the admin API's endpoints have their own tests.)
"""

import os
import signal
import time

from conftest import free_port, refused_start, routes_doc


def get(port, path, token=None):
    import httpx
    headers = {"authorization": "Bearer " + token} if token else {}
    return httpx.get("http://127.0.0.1:%d%s" % (port, path), headers=headers, timeout=5)


def test_token_required_except_healthz(procs):
    a = procs.backend("pod-a")
    token_path = os.path.join(procs.dir, "admin.token")
    with open(token_path, "w") as f:
        f.write("s3cret-token\n")
    port = free_port()
    procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                  conf={"admin": {"listen": "127.0.0.1:%d" % port, "token_file": token_path}})
    assert get(port, "/healthz").status_code == 200
    r = get(port, "/no-such-page")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="modelgate-admin"'  # was cut short
    assert r.json()["error"]["code"] == "unauthorized"
    assert get(port, "/no-such-page", "wrong-token").status_code == 401
    assert get(port, "/no-such-page", "s3cret-token-and-more").status_code == 401
    r = get(port, "/no-such-page", "s3cret-token")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # shorter than every mount, and a page's sub-path: not found, never a page
    assert get(port, "/m", "s3cret-token").status_code == 404
    assert get(port, "/metrics/nope", "s3cret-token").status_code == 404
    assert get(port, "/metrics", "s3cret-token").status_code == 200


def test_token_file_is_read_again_on_sighup(procs):
    """A token rotated in place (a Kubernetes Secret, a vault agent) is taken on SIGHUP: the new
    one works, the old one gets 401. A file that no longer holds a valid token is logged and
    the token in force stays. Before, the file was read at start only."""
    a = procs.backend("pod-a")
    token_path = os.path.join(procs.dir, "admin.token")
    with open(token_path, "w") as f:
        f.write("first-token\n")
    port = free_port()
    gw = procs.gateway(routes_doc({"svc-a": [a]}, [("digits", "production", "svc-a")]),
                       conf={"admin": {"listen": "127.0.0.1:%d" % port, "token_file": token_path}})
    assert get(port, "/metrics", "first-token").status_code == 200
    with open(token_path, "w") as f:
        f.write("second-token\n")
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while get(port, "/metrics", "second-token").status_code != 200:
        assert time.monotonic() < deadline, gw.proc.report()
        time.sleep(0.05)
    assert get(port, "/metrics", "first-token").status_code == 401
    with open(token_path, "w") as f:
        f.write("")
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "the previous token stays" not in gw.proc.stderr():
        assert time.monotonic() < deadline, gw.proc.report()
        time.sleep(0.05)
    assert get(port, "/metrics", "second-token").status_code == 200
    assert get(port, "/metrics").status_code == 401


def test_no_token_means_loopback_only(procs, tmp_path):
    conf = tmp_path / "gateway.json"
    conf.write_text('{"listen": ["127.0.0.1:%d"], "admin": {"listen": "0.0.0.0:%d"}}'
                    % (free_port(), free_port()))
    err = refused_start(conf, "a non-loopback admin listener and no token")
    assert "not a loopback address" in err and "token_file" in err


def test_missing_token_file_is_named(procs, tmp_path):
    conf = tmp_path / "gateway.json"
    conf.write_text('{"listen": ["127.0.0.1:%d"], "admin": {"listen": "127.0.0.1:%d", '
                    '"token_file": "nope.token"}}' % (free_port(), free_port()))
    err = refused_start(conf, "a missing token file")
    assert "nope.token" in err and "No such file" in err


def test_token_file_of_two_lines_is_refused(procs, tmp_path):
    """A token no request can send (a second line, a space inside) would make every admin
    request 401 with the right token in hand: refused at start-up, with the reason. A trailing
    space or tab is refused too, not trimmed: the file holds the token and its newline only."""
    for text in ("s3cret\nsecond line\n", "s3cret token\n", " s3cret\n", "s3cret \n",
                 "s3cret\t\n"):
        token = tmp_path / "admin.token"
        token.write_text(text)
        conf = tmp_path / "gateway.json"
        conf.write_text('{"listen": ["127.0.0.1:%d"], "admin": {"listen": "127.0.0.1:%d", '
                        '"token_file": "%s"}}' % (free_port(), free_port(), token))
        err = refused_start(conf, "the token file %r" % text)
        assert str(token) in err and "one line" in err, err
