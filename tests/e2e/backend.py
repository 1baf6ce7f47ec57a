#!/usr/bin/python3
"""
tests/e2e/backend.py - the test and demo backend behind the gateway in end-to-end tests.

One TCP port serves HTTP/2 with prior knowledge (python h2 over asyncio) and HTTP/1.1 (a small
hand-rolled asyncio server: keep-alive, content-length and chunked bodies, trailers), told apart
by the first bytes of the connection, as the gateway does.

    /usr/bin/python3 backend.py --listen 127.0.0.1:P --name pod-a [--proto both|h2c|http1]
                                [--health-file FILE] [--delay-ms N]
                                [--refuse stream|goaway]

Prints "ready" on stdout once listening, and one line per request ("req PROTO METHOD PATH") so
that a test can tell a request reached it.

--delay-ms N makes every answer wait N ms first (a deliberately slow pod).

--refuse (HTTP/2) refuses every request without processing it, once its whole body has arrived
(so the gateway has sent all of it): "stream" resets the stream with REFUSED_STREAM, "goaway"
sends GOAWAY with a last_stream_id below the stream (RFC 9113 8.7:
either says the request was not processed). Logged as "refused h2c METHOD PATH", not "req".

Every request body is read as it arrives and only hashed, never stored. Endpoints (any method):
    /slow?ms=N          answers after N ms
    /stall-body         sends the response headers, then nothing (until the peer gives up)
    /bytes?n=N          streams N bytes of a repeating pattern (byte i = i % 256), 64 KiB chunks
    /status/N           answers with status N
    /health             with --health-file FILE: 200 while FILE exists, 503 while it does not
                        (a test makes the pod fail and recover without restarting it); without
                        the option, like "anything else"
    /trailers           answers with trailer x-trailer-a: 1; the JSON carries the request trailers
                        (?n=N adds N more trailer fields x-t-0: v0 ... x-t-<N-1>)
    /headers?n=N        the summary with N more response header fields x-h-0: v0 ... x-h-<N-1>
                        (&size=S: each value S bytes)
    /cut?n=N            (HTTP/2) a head announcing 100000 bytes, N of them, then a reset, all
                        in one write
    /reset              resets the stream (HTTP/2) or closes the connection (HTTP/1.1)
    /drip?n=K&ms=M      answers at once, then K body chunks "drip-<i>\n", one every M ms
    /early              (HTTP/2) answers in full as soon as the request head arrives, before
                        its body (as a pod refusing an upload does); on any path, query
                        parameter early=1 starts the answer then too (HTTP/2)
    anything else       200 and the JSON summary below
Query parameter set-header=NAME:VALUE (repeatable) adds a response header (HTTP/1.1 sends it as
is, hop-by-hop or not; HTTP/2 only what h2 lets through).

HEAD gets the headers of the summary and no body.
Summary (application/json, response header x-pod: NAME):
    {"pod", "proto" ("h2c"|"http/1.1"), "method", "path", "authority", "headers" {lowercase name:
     value, repeats joined with ", "}, "header_list" [[name, value]...], "body_len",
     "body_sha256", "trailers" {name: value}, "conn_id" (numbers this process's connections),
     "stream_id" (HTTP/2 stream id, or the request's rank on its HTTP/1.1 connection),
     "bytes_sent" (body bytes of all /bytes answers this process has sent so far)}
Log lines on stdout: "req PROTO METHOD PATH" per request, "rst h2c PATH" when a peer resets a
stream ("rst h2c #ID" once its response is done), "peak-conns N" each time N connections are
open at once for the first time (the largest N is the most the peer held at a time).

Importable: pattern_chunk(), serve(), main().
"""

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import signal
import sys
import urllib.parse

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

DELAY_MS = 0  # --delay-ms
REFUSE = None  # --refuse: "stream" | "goaway"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHUNK = 64 * 1024
# byte i of a /bytes body is i % 256; PATTERN[o:o+n] is the n bytes starting at any offset o % 256
PATTERN = bytes(range(256)) * (CHUNK // 256 * 2 + 1)
_PATTERN_MV = memoryview(PATTERN)

H2_STREAM_WINDOW = 16 * 1024 * 1024
H2_CONN_WINDOW = 1024 * 1024 * 1024
H2_MAX_HEADER_LIST = 1024 * 1024  # SETTINGS_MAX_HEADER_LIST_SIZE: heads the gateway may send
# SETTINGS_MAX_FRAME_SIZE stays at 16 KiB: h2 4.1 checks a received chunk's frames against the
# old limit even when the same chunk first carries the ACK of a larger one.
H1_MAX_HEAD = 1024 * 1024
_conn_ids = itertools.count(1)
BYTES_SENT = [0]  # body bytes of every /bytes answer handed to the transport, both protocols
HEALTH_FILE = None  # --health-file: /health answers 200 while this file exists, else 503
CONNS = [0, 0]  # connections open now, the most open at once


def pattern_chunk(offset, n):
    """The n (<= 64 KiB) bytes of the /bytes pattern that start at stream offset |offset|."""
    o = offset % 256
    return _PATTERN_MV[o:o + n]


def pattern_sha256(n):
    """sha256 hex of the first n bytes of the /bytes pattern (what /bytes?n=N must deliver)."""
    h = hashlib.sha256()
    off = 0
    while off < n:
        k = min(CHUNK, n - off)
        h.update(pattern_chunk(off, k))
        off += k
    return h.hexdigest()


class Request:
    """What one request carried: head, trailers, and the running hash of its body."""

    def __init__(self, proto, method, path, authority, header_list, conn_id=0, stream_id=0):
        self.proto = proto
        self.conn_id = conn_id
        self.stream_id = stream_id
        self.method = method
        self.target = path
        u = urllib.parse.urlsplit(path)
        self.path = u.path
        self.query = urllib.parse.parse_qs(u.query)
        self.authority = authority
        self.header_list = header_list
        self.trailers = {}
        self.body_len = 0
        self.hasher = hashlib.sha256()

    def feed(self, data):
        self.body_len += len(data)
        self.hasher.update(data)

    def qint(self, name, default):
        try:
            return int(self.query[name][0])
        except (KeyError, ValueError, IndexError):
            return default

    def many_fields(self, prefix):
        """The fields PREFIX-0: v0 ... PREFIX-<n-1>, n from the query (/headers, /trailers);
        with size=S each value is S bytes instead."""
        size = self.qint("size", 0)
        return [("%s-%d" % (prefix, i), "a" * size if size else "v%d" % i)
                for i in range(self.qint("n", 0))]

    def extra_headers(self):
        out = self.many_fields("x-h") if self.path == "/headers" else []
        for spec in self.query.get("set-header", []):
            name, _, value = spec.partition(":")
            if name:
                out.append((name.strip().lower(), value.strip()))
        return out

    def summary(self, pod):
        headers = {}
        for k, v in self.header_list:
            headers[k] = headers[k] + ", " + v if k in headers else v
        return {
            "pod": pod,
            "proto": self.proto,
            "method": self.method,
            "path": self.target,
            "authority": self.authority,
            "headers": headers,
            "header_list": [list(kv) for kv in self.header_list],
            "body_len": self.body_len,
            "body_sha256": self.hasher.hexdigest(),
            "trailers": self.trailers,
            "conn_id": self.conn_id,
            "stream_id": self.stream_id,
            "bytes_sent": BYTES_SENT[0],
        }

    def status_code(self):
        if self.path == "/health" and HEALTH_FILE is not None:
            return 200 if os.path.exists(HEALTH_FILE) else 503
        if self.path.startswith("/status/"):
            try:
                return int(self.path[len("/status/"):])
            except ValueError:
                return 400
        return 200


def log_request(proto, method, path):
    sys.stdout.write("req %s %s %s\n" % (proto, method, path))
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# HTTP/2


class H2Handler:
    """One HTTP/2 (prior knowledge) connection."""

    def __init__(self, reader, writer, name, initial):
        self.reader = reader
        self.writer = writer
        self.name = name
        self.initial = initial
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        # h2 enforces an announced MAX_HEADER_LIST_SIZE only once the peer acknowledged it, and
        # 64 KiB before: a large head in the connection's first request would be refused
        self.conn.decoder.max_header_list_size = H2_MAX_HEADER_LIST
        self.reqs = {}  # stream id -> Request (until the response is done)
        self.tasks = {}  # stream id -> response task
        self.window_event = asyncio.Event()
        self.closed = False
        self.conn_id = next(_conn_ids)

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    def wake_senders(self):
        self.window_event.set()
        self.window_event = asyncio.Event()

    async def run(self):
        c = self.conn
        c.initiate_connection()
        c.update_settings({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: H2_STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 4096,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: H2_MAX_HEADER_LIST,
        })
        c.increment_flow_control_window(H2_CONN_WINDOW)
        self.flush()
        data = self.initial
        try:
            while True:
                if data:
                    try:
                        events = c.receive_data(data)
                    except h2.exceptions.ProtocolError as e:
                        sys.stderr.write("h2 protocol error from peer: %r\n" % (e,))
                        self.flush()
                        break
                    for ev in events:
                        self.on_event(ev)
                    self.flush()
                    if self.writer.transport.get_write_buffer_size() > 4 * 1024 * 1024:
                        await self.writer.drain()
                data = await self.reader.read(1024 * 1024)
                if not data:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            for t in list(self.tasks.values()):
                t.cancel()
            self.wake_senders()
            try:
                self.writer.close()
            except Exception:
                pass

    def on_event(self, ev):
        c = self.conn
        if isinstance(ev, h2.events.RequestReceived):
            hdrs = ev.headers
            pseudo = {k: v for k, v in hdrs if k.startswith(":")}
            authority = pseudo.get(":authority")
            if authority is None:
                authority = next((v for k, v in hdrs if k == "host"), None)
            r = Request("h2c", pseudo.get(":method", ""), pseudo.get(":path", ""), authority,
                        [(k, v) for k, v in hdrs], self.conn_id, ev.stream_id)
            self.reqs[ev.stream_id] = r
            if REFUSE is None:
                log_request("h2c", r.method, r.target)
            if ev.stream_ended or r.path == "/early" or "early" in r.query:
                self.start_response(ev.stream_id)
        elif isinstance(ev, h2.events.DataReceived):
            r = self.reqs.get(ev.stream_id)
            if r is not None:
                r.feed(ev.data)
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.stream_ended:
                self.start_response(ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            r = self.reqs.get(ev.stream_id)
            if r is not None:
                r.trailers = {k: v for k, v in ev.headers}
            if ev.stream_ended:
                self.start_response(ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.start_response(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            r = self.reqs.pop(ev.stream_id, None)
            sys.stdout.write("rst h2c %s\n" % (r.target if r is not None else
                                                "#%d" % ev.stream_id))
            sys.stdout.flush()
            t = self.tasks.pop(ev.stream_id, None)
            if t is not None:
                t.cancel()
            self.wake_senders()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.wake_senders()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closed = True

    def start_response(self, sid):
        if sid in self.tasks or sid not in self.reqs:
            return
        if REFUSE is not None:
            self.refuse(sid)
            return
        self.tasks[sid] = asyncio.ensure_future(self.respond(sid))

    def refuse(self, sid):
        """--refuse: the request is dropped unprocessed (RST_STREAM or GOAWAY)."""
        r = self.reqs.pop(sid)
        sys.stdout.write("refused h2c %s %s\n" % (r.method, r.target))
        sys.stdout.flush()
        if REFUSE == "stream":
            self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
            self.flush()
            return
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR,
                                   last_stream_id=sid - 2 if sid > 2 else 0)
        self.flush()  # the gateway closes the connection: nothing is left on it

    def send_headers(self, sid, status, req, extra=(), end_stream=False, flush=True):
        h = [(":status", str(status)), ("x-pod", self.name)]
        h.extend(extra)
        h.extend(req.extra_headers())
        self.conn.send_headers(sid, h, end_stream=end_stream)
        if flush:
            self.flush()

    async def send_body(self, sid, data, end_stream=True):
        """Sends |data| (bytes-like) on |sid| within the flow-control windows."""
        mv = memoryview(data)
        off = 0
        while off < len(mv):
            n = await self.window(sid, len(mv) - off)
            self.conn.send_data(sid, mv[off:off + n])
            off += n
            self.flush()
            await self.writer.drain()
        if end_stream:
            self.conn.end_stream(sid)
            self.flush()

    async def window(self, sid, want):
        """Waits until |sid| may send at least one byte; returns how many (<= want)."""
        while True:
            if self.closed:
                raise ConnectionError("connection closed")
            w = self.conn.local_flow_control_window(sid)
            if w > 0:
                return min(w, want, self.conn.max_outbound_frame_size)
            await self.window_event.wait()

    async def respond(self, sid):
        r = self.reqs[sid]
        try:
            await self.respond_inner(sid, r)
        except (asyncio.CancelledError, ConnectionError):
            pass
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.reqs.pop(sid, None)
            self.tasks.pop(sid, None)

    async def respond_inner(self, sid, r):
        p = r.path
        if DELAY_MS:
            await asyncio.sleep(DELAY_MS / 1000.0)
        if p == "/slow":
            await asyncio.sleep(r.qint("ms", 1000) / 1000.0)
        if p == "/reset":
            self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        if p == "/cut":  # a head, n body bytes and a reset, in one write
            self.send_headers(sid, 200, r, [("content-length", "100000")], flush=False)
            self.conn.send_data(sid, b"c" * r.qint("n", 1000))
            self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        if p == "/stall-body":
            self.send_headers(sid, 200, r, [("content-type", "application/octet-stream")])
            await asyncio.Event().wait()  # until cancelled by a reset or the connection's end
            return
        if p == "/bytes":
            n = r.qint("n", 0)
            self.send_headers(sid, 200, r, [("content-type", "application/octet-stream"),
                                            ("content-length", str(n))], end_stream=(n == 0))
            off = 0
            while off < n:
                k = await self.window(sid, min(CHUNK, n - off))
                self.conn.send_data(sid, pattern_chunk(off, k), end_stream=(off + k == n))
                off += k
                BYTES_SENT[0] += k
                self.flush()
                if self.writer.transport.get_write_buffer_size() > 1024 * 1024:
                    await self.writer.drain()
            return
        if p == "/drip":
            self.send_headers(sid, 200, r, [("content-type", "text/plain")])
            for i in range(r.qint("n", 3)):
                if i:
                    await asyncio.sleep(r.qint("ms", 200) / 1000.0)
                await self.send_body(sid, b"drip-%d\n" % i, end_stream=False)
            self.conn.end_stream(sid)
            self.flush()
            return
        body = json.dumps(r.summary(self.name)).encode()
        ctype = ("content-type", "application/json")
        if r.method == "HEAD":
            self.send_headers(sid, r.status_code(), r,
                              [ctype, ("content-length", str(len(body)))], end_stream=True)
            return
        if p == "/trailers":
            self.send_headers(sid, 200, r, [ctype])
            await self.send_body(sid, body, end_stream=False)
            self.conn.send_headers(sid, [("x-trailer-a", "1")] + r.many_fields("x-t"),
                                   end_stream=True)
            self.flush()
            return
        # the head leaves with the body, in one write: a pod killed mid-answer (the kill -9
        # tests) never leaves a client with a head and no body
        self.send_headers(sid, r.status_code(), r, [ctype, ("content-length", str(len(body)))],
                          flush=False)
        await self.send_body(sid, body)


# --------------------------------------------------------------------------------------------
# HTTP/1.1


class BufReader:
    """A StreamReader with bytes already read put back in front."""

    def __init__(self, reader, initial=b""):
        self.r = reader
        self.buf = bytearray(initial)

    async def fill(self):
        data = await self.r.read(1024 * 1024)
        if not data:
            return False
        self.buf += data
        return True

    async def readuntil(self, sep, limit):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("too long")
            start = max(0, len(self.buf) - len(sep) + 1)
            if not await self.fill():
                if self.buf:
                    raise ConnectionError("eof in the middle of a message")
                return None

    async def read_some(self, n):
        """Up to n bytes (at least 1), or raises at EOF."""
        if not self.buf and not await self.fill():
            raise ConnectionError("eof in body")
        k = min(n, len(self.buf))
        out = bytes(self.buf[:k])
        del self.buf[:k]
        return out


class H1Handler:
    """One HTTP/1.1 connection: requests one at a time (pipelined ones queue in the buffer)."""

    def __init__(self, reader, writer, name, initial):
        self.r = BufReader(reader, initial)
        self.w = writer
        self.name = name
        self.conn_id = next(_conn_ids)
        self.nreq = 0

    async def run(self):
        try:
            while await self.one():
                pass
        except (ConnectionError, OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                self.w.close()
            except Exception:
                pass

    async def bad(self, why):
        body = json.dumps({"error": why}).encode()
        self.w.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: "
                     b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await self.w.drain()
        return False

    async def one(self):
        head = await self.r.readuntil(b"\r\n\r\n", H1_MAX_HEAD)
        if head is None:
            return False
        lines = head[:-4].decode("latin-1").split("\r\n")
        while lines and lines[0] == "":  # tolerate CRLF between requests (RFC 9112 2.2)
            lines.pop(0)
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return await self.bad("bad request line")
        method, target, version = parts
        hl = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return await self.bad("bad header line")
            hl.append((name.lower(), value.strip()))
        hd = {}
        for k, v in hl:
            hd[k] = hd[k] + ", " + v if k in hd else v
        self.nreq += 1
        r = Request("http/1.1", method, target, hd.get("host"), hl, self.conn_id, self.nreq)
        log_request("http/1.1", method, target)
        conn_tokens = [t.strip().lower() for t in hd.get("connection", "").split(",")]
        keep = ("close" not in conn_tokens) if version == "HTTP/1.1" else ("keep-alive" in conn_tokens)
        if "chunked" in hd.get("transfer-encoding", "").lower():
            await self.read_chunked(r)
        elif "content-length" in hd:
            try:
                n = int(hd["content-length"])
            except ValueError:
                return await self.bad("bad content-length")
            while n > 0:
                data = await self.r.read_some(min(n, 1024 * 1024))
                r.feed(data)
                n -= len(data)
        return await self.respond(r, keep)

    async def read_chunked(self, r):
        while True:
            line = await self.r.readuntil(b"\r\n", 4096)
            if line is None:
                raise ConnectionError("eof in chunked body")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            left = size
            while left > 0:
                data = await self.r.read_some(min(left, 1024 * 1024))
                r.feed(data)
                left -= len(data)
            crlf = await self.r.readuntil(b"\r\n", 2)
            if crlf != b"\r\n":
                raise ValueError("bad chunk end")
        while True:  # trailer section
            line = await self.r.readuntil(b"\r\n", H1_MAX_HEAD)
            if line is None:
                raise ConnectionError("eof in trailers")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            r.trailers[name.strip().lower()] = value.strip()

    def head(self, status, r, extra, keep):
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Status")
        out = ["HTTP/1.1 %d %s" % (status, reason), "x-pod: " + self.name]
        out.extend("%s: %s" % kv for kv in extra)
        out.extend("%s: %s" % kv for kv in r.extra_headers())
        if not keep:
            out.append("connection: close")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    async def respond(self, r, keep):
        p = r.path
        w = self.w
        if DELAY_MS:
            await asyncio.sleep(DELAY_MS / 1000.0)
        if p == "/slow":
            await asyncio.sleep(r.qint("ms", 1000) / 1000.0)
        if p == "/reset":
            w.transport.abort()
            return False
        if p == "/stall-body":
            w.write(self.head(200, r, [("content-type", "application/octet-stream"),
                                       ("content-length", "1048576")], keep))
            await w.drain()
            await self.r.fill()  # until the peer closes
            return False
        if p == "/bytes":
            n = r.qint("n", 0)
            w.write(self.head(200, r, [("content-type", "application/octet-stream"),
                                       ("content-length", str(n))], keep))
            off = 0
            while off < n:
                k = min(CHUNK, n - off)
                w.write(pattern_chunk(off, k))
                off += k
                BYTES_SENT[0] += k
                if w.transport.get_write_buffer_size() > 1024 * 1024:
                    await w.drain()
            await w.drain()
            return keep
        if p == "/drip":
            w.write(self.head(200, r, [("content-type", "text/plain"),
                                       ("transfer-encoding", "chunked")], keep))
            await w.drain()
            for i in range(r.qint("n", 3)):
                if i:
                    await asyncio.sleep(r.qint("ms", 200) / 1000.0)
                chunk = b"drip-%d\n" % i
                w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await w.drain()
            w.write(b"0\r\n\r\n")
            await w.drain()
            return keep
        body = json.dumps(r.summary(self.name)).encode()
        ctype = ("content-type", "application/json")
        if r.method == "HEAD":
            w.write(self.head(r.status_code(), r, [ctype, ("content-length", str(len(body)))],
                              keep))
            await w.drain()
            return keep
        if p == "/trailers":
            w.write(self.head(200, r, [ctype, ("transfer-encoding", "chunked"),
                                       ("trailer", "x-trailer-a")], keep))
            more = "".join("%s: %s\r\n" % kv for kv in r.many_fields("x-t")).encode()
            w.write(b"%x\r\n%s\r\n0\r\nx-trailer-a: 1\r\n%s\r\n" % (len(body), body, more))
            await w.drain()
            return keep
        w.write(self.head(r.status_code(), r, [ctype, ("content-length", str(len(body)))], keep))
        w.write(body)
        await w.drain()
        return keep


# --------------------------------------------------------------------------------------------


async def sniff(reader):
    """Reads until the bytes are either the HTTP/2 preface or cannot be; returns (is_h2, bytes)."""
    buf = b""
    while len(buf) < len(PREFACE) and PREFACE.startswith(buf):
        data = await reader.read(65536)
        if not data:
            return None, buf
        buf += data
    return buf.startswith(PREFACE), buf


async def serve(host, port, name, proto="both", health_file=None, delay_ms=0, refuse=None):
    """Serves until cancelled; returns the asyncio server once it listens."""
    global HEALTH_FILE, DELAY_MS, REFUSE
    HEALTH_FILE = health_file
    DELAY_MS = delay_ms
    REFUSE = refuse

    async def handle(reader, writer):
        CONNS[0] += 1
        if CONNS[0] > CONNS[1]:
            CONNS[1] = CONNS[0]
            sys.stdout.write("peak-conns %d\n" % CONNS[1])
            sys.stdout.flush()
        try:
            await handle_conn(reader, writer)
        finally:
            CONNS[0] -= 1

    async def handle_conn(reader, writer):
        try:
            is_h2, buf = await sniff(reader)
        except (ConnectionError, OSError):
            writer.close()
            return
        if is_h2 is None:
            writer.close()
            return
        if is_h2 and proto in ("both", "h2c"):
            await H2Handler(reader, writer, name, buf).run()
        elif not is_h2 and proto in ("both", "http1"):
            await H1Handler(reader, writer, name, buf).run()
        else:
            writer.transport.abort()

    return await asyncio.start_server(handle, host, port, backlog=1024, reuse_address=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--name", default="pod")
    ap.add_argument("--proto", default="both", choices=["both", "h2c", "http1"])
    ap.add_argument("--health-file", help="/health answers 200 while this file exists, else 503")
    ap.add_argument("--delay-ms", type=int, default=0, help="every answer waits this long first")
    ap.add_argument("--refuse", choices=["stream", "goaway"],
                    help="(HTTP/2) refuse every request unprocessed: REFUSED_STREAM or GOAWAY")
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    host = host.strip("[]")

    async def run():
        server = await serve(host, int(port), a.name, a.proto, a.health_file, a.delay_ms,
                             a.refuse)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        print("ready", flush=True)
        await stop.wait()
        server.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
