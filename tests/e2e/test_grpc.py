"""
gRPC through the gateway with python3-grpcio: unary and server-streaming calls, OK and non-OK
statuses, initial and trailing metadata (HTTP/2 trailers end to end), and the gateway's own
errors as gRPC statuses.
"""

import grpc
import pytest

from conftest import DOMAIN, HOST, free_port, routes_doc, wait_for


def _ident(b):
    return b


@pytest.fixture
def grpc_stack(procs):
    g = procs.grpc_backend("grpc-a")
    gw = procs.gateway(routes_doc({"svc-grpc": [g]}, [("digits", "production", "svc-grpc")]))
    return gw, g


def channel(gw, tls=False):
    if tls:
        with open(gw.procs.tls["ca"], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel("127.0.0.1:%d" % gw.tls_port, creds,
                                   options=[("grpc.default_authority", gw.authority(tls=True)),
                                            ("grpc.ssl_target_name_override", HOST)])
    return grpc.insecure_channel("127.0.0.1:%d" % gw.port,
                                 options=[("grpc.default_authority", gw.authority())])


def unary(ch):
    return ch.unary_unary("/test.Echo/Unary", request_serializer=_ident,
                          response_deserializer=_ident)


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2"])
def test_grpc_unary_ok(grpc_stack, tls):
    gw, _ = grpc_stack
    with channel(gw, tls) as ch:
        payload = bytes(range(256)) * 40
        resp, call = unary(ch).with_call(payload, metadata=[("x-echo-trailer", "t-123")],
                                         timeout=10)
        assert resp == payload
        assert call.code() == grpc.StatusCode.OK
        trailing = dict(call.trailing_metadata())
        assert trailing.get("x-echo-trailer") == "t-123", trailing
        assert dict(call.initial_metadata()).get("x-pod") == "grpc-a"
        # several calls on the same channel (one HTTP/2 connection)
        for i in range(20):
            assert unary(ch)(b"n%d" % i, timeout=10) == b"n%d" % i


def test_grpc_unary_non_ok_status(grpc_stack):
    gw, _ = grpc_stack
    with channel(gw) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            unary(ch)(b"x", metadata=[("x-want-status", "5"), ("x-want-message", "no such model"),
                                      ("x-echo-trailer", "failed-call")], timeout=10)
        e = ei.value
        assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())
        assert e.details() == "no such model"
        assert dict(e.trailing_metadata()).get("x-echo-trailer") == "failed-call"
        with pytest.raises(grpc.RpcError) as ei:
            unary(ch)(b"x", metadata=[("x-want-status", "8")], timeout=10)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the connection is still good for an OK call
        assert unary(ch)(b"after", timeout=10) == b"after"


def test_grpc_server_streaming(grpc_stack):
    gw, _ = grpc_stack
    with channel(gw) as ch:
        stream = ch.unary_stream("/test.Echo/ServerStream", request_serializer=_ident,
                                 response_deserializer=_ident)
        it = stream(b"500", timeout=20)
        msgs = list(it)
        assert msgs == [b"msg-%d" % i for i in range(500)]
        assert it.code() == grpc.StatusCode.OK
        assert dict(it.trailing_metadata()).get("x-echo-trailer") == "stream-done"
        assert dict(it.initial_metadata()).get("x-pod") == "grpc-a"


def test_grpc_trailers_only_error(grpc_stack):
    """An error answered as Trailers-Only (one HEADERS frame with END_STREAM and grpc-status,
    what servers send for errors raised before any message) must reach the client as such."""
    gw, _ = grpc_stack
    with channel(gw) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            unary(ch)(b"x", metadata=[("x-trailers-only", "1")], timeout=10)
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED, (ei.value.code(),
                                                                      ei.value.details())
        assert ei.value.details() == "trailers only"


def test_grpc_unknown_method_status(grpc_stack):
    """The backend's UNIMPLEMENTED (a trailers-only response) reaches the client as is."""
    gw, _ = grpc_stack
    with channel(gw) as ch:
        m = ch.unary_unary("/test.Echo/NoSuchMethod", request_serializer=_ident,
                           response_deserializer=_ident)
        with pytest.raises(grpc.RpcError) as ei:
            m(b"x", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


GATEWAY_ERRORS = [
    # (case, host, method, request, gRPC status, the gateway's error code, HTTP status logged)
    ("unknown_host", "nosuch-production." + DOMAIN, "/test.Echo/Unary", b"x",
     grpc.StatusCode.UNIMPLEMENTED, "unknown_host", 404),
    ("no_pod", "digits-staging." + DOMAIN, "/test.Echo/Unary", b"x",
     grpc.StatusCode.UNAVAILABLE, "upstream_unavailable", 502),
    ("slow_pod", HOST, "/slow?ms=3000", b"x", grpc.StatusCode.UNAVAILABLE, "upstream_timeout",
     504),
    ("body_too_large", HOST, "/test.Echo/Unary", b"x" * 5000,
     grpc.StatusCode.RESOURCE_EXHAUSTED, "body_too_large", 413),
]


def test_gateway_errors_reach_grpc_clients_as_grpc_status(procs):
    """The gateway's own errors reach a gRPC client as a gRPC status that carries the gateway's
    reason and request id: a Trailers-Only answer (HTTP 200, grpc-status, grpc-message), as
    Envoy answers. gRPC clients read no JSON body: before, they saw only "Received http2 header
    with status: 502". The statuses follow gRPC's HTTP mapping (404 UNIMPLEMENTED, 502-504
    UNAVAILABLE) and 413 is RESOURCE_EXHAUSTED. The access log keeps the HTTP status the
    gateway decided, and the error code."""
    slow = procs.backend("slow", proto="h2c")
    dead = "127.0.0.1:%d" % free_port()
    gw = procs.gateway(routes_doc({"svc-slow": [slow], "svc-dead": [dead]},
                                  [("digits", "production", "svc-slow"),
                                   ("digits", "staging", "svc-dead")]),
                       conf={"timeouts_ms": {"first_byte": 300},
                             "limits": {"max_request_body": 1000}})
    for case, host, method, request, want, code, status in GATEWAY_ERRORS:
        authority = "%s:%d" % (host, gw.port)
        with grpc.insecure_channel("127.0.0.1:%d" % gw.port,
                                   options=[("grpc.default_authority", authority)]) as ch:
            m = ch.unary_unary(method, request_serializer=_ident, response_deserializer=_ident)
            with pytest.raises(grpc.RpcError) as ei:
                m(request, timeout=10)
        e = ei.value
        assert e.code() == want, (case, e.code(), e.details())
        assert e.details().startswith(code + ": "), (case, e.details())
        line = wait_for(lambda: [l for l in gw.access() if l["host"] == authority and
                                 l["error"] == code], 5, what="the access log line of " + case)[-1]
        assert line["path"] == method
        assert line["status"] == status, (case, line)
        assert e.details().endswith("(request id %s)" % line["request_id"]), (case, e.details())
