#!/usr/bin/python3
"""
tests/e2e/grpc_backend.py - a gRPC test backend (grpcio, generic handlers, no protoc).

    /usr/bin/python3 grpc_backend.py --listen 127.0.0.1:P --name grpc-a

Methods (request and response are raw bytes, identity serializers):
    /test.Echo/Unary         answers the request bytes. Initial metadata x-pod: NAME; trailing
                             metadata x-echo-trailer: <request metadata x-echo-trailer, or "echo">.
                             Request metadata x-want-status: N (a grpc.StatusCode value) and
                             x-want-message: TEXT make it fail with that status and message
                             (trailing metadata still set). Request metadata x-trailers-only: 1
                             makes it fail with PERMISSION_DENIED as a Trailers-Only response.
    /test.Echo/ServerStream  the request is an ASCII count N: streams N messages b"msg-<i>",
                             then trailing metadata x-echo-trailer: stream-done.
Prints "ready" once listening.
"""

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def _ident(b):
    return b


def make_handler(name):
    def unary(request, context):
        md = dict(context.invocation_metadata())
        if md.get("x-trailers-only"):
            # no initial metadata, no message: grpcio answers with one HEADERS frame carrying
            # END_STREAM and the status (a "Trailers-Only" response)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "trailers only")
        context.send_initial_metadata((("x-pod", name),))
        context.set_trailing_metadata((("x-echo-trailer", md.get("x-echo-trailer", "echo")),
                                       ("x-pod", name)))
        want = md.get("x-want-status")
        if want:
            code = next((c for c in grpc.StatusCode if c.value[0] == int(want)), None)
            context.set_code(code or grpc.StatusCode.UNKNOWN)
            context.set_details(md.get("x-want-message", "failed as asked"))
            return b""
        return request

    def server_stream(request, context):
        context.send_initial_metadata((("x-pod", name),))
        n = int(request.decode() or "0")
        for i in range(n):
            yield b"msg-%d" % i
        context.set_trailing_metadata((("x-echo-trailer", "stream-done"),))

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_ident,
                                                     response_serializer=_ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream,
                                                             request_deserializer=_ident,
                                                             response_serializer=_ident),
    })


def serve(listen, name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((make_handler(name),))
    if server.add_insecure_port(listen) == 0:
        raise SystemExit("cannot listen on %s" % listen)
    server.start()
    return server


def main(argv=None):
    ap = argparse.ArgumentParser(description="gRPC echo backend for modelgate e2e tests")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--name", default="grpc")
    a = ap.parse_args(argv)
    server = serve(a.listen, a.name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    while not stop.wait(3600):
        pass
    server.stop(1).wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
