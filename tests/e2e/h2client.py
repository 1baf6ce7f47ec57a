"""
tests/e2e/h2client.py - a small blocking HTTP/2 client over python h2, for the end-to-end tests.

It does what curl and httpx won't: explicit :authority, request trailers, many streams on one
connection, streamed bodies (generated, hashed, never stored), raw frames with header validation
off, and it reports what the server did to a stream (RST_STREAM code) or to the connection
(GOAWAY code).

    c = H2Client("127.0.0.1", port, authority="digits-production.modelgate.local:%d" % port)
    r = c.request("POST", "/x", body=b"abc", trailers=[("x-t", "1")])
    r.status, r.headers["x-pod"], r.json(), r.trailers, r.reset_code
"""

import json
import select
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

STREAM_WINDOW = 16 * 1024 * 1024
CONN_WINDOW = 1024 * 1024 * 1024


class H2Error(Exception):
    pass


class _Connection(h2.connection.H2Connection):
    """h2 closes its state machine on any GOAWAY and then refuses the frames of streams still
    in flight, which a graceful shutdown (GOAWAY, then the remaining responses) sends. Here a
    GOAWAY only reports ConnectionTerminated; the streams below its last_stream_id carry on."""

    def _receive_goaway_frame(self, frame):
        ev = h2.events.ConnectionTerminated()
        ev.error_code = h2.errors._error_code_from_int(frame.error_code)
        ev.last_stream_id = frame.last_stream_id
        ev.additional_data = frame.additional_data or None
        return [], [ev]


class Stream:
    """One request/response exchange as seen by the client."""

    def __init__(self, sid, on_data=None):
        self.stream_id = sid
        self.status = None
        self.informational = []  # statuses of 1xx responses before the final one
        self.informational_lists = []  # ... and their header lists, :status included
        self.header_list = []
        self.headers = {}
        self.trailers = {}
        self.trailer_list = []
        self.body = bytearray()
        self.body_len = 0
        self.on_data = on_data  # when set, data goes there instead of self.body
        self.ended = False  # response ended cleanly (END_STREAM)
        self.reset_code = None  # RST_STREAM error code from the server
        self.done = False  # ended, reset, or the connection went away
        self.first_byte_at = None  # response headers
        self.first_data_at = None  # first DATA byte
        self.done_at = None

    def json(self):
        return json.loads(bytes(self.body))

    def __repr__(self):
        return "<Stream %d status=%s reset=%s ended=%s len=%d>" % (
            self.stream_id, self.status, self.reset_code, self.ended, self.body_len)


class H2Client:
    def __init__(self, host, port, authority=None, tls=False, cafile=None, server_name=None,
                 scheme=None, validate=True, timeout=10.0, settings=None, connect=True):
        self.host = host
        self.port = port
        self.authority = authority or "%s:%d" % (host, port)
        self.scheme = scheme or ("https" if tls else "http")
        self.timeout = timeout
        self.streams = {}
        self.goaway = None  # (error_code, last_stream_id) once received
        self.closed = False  # the server closed the TCP connection
        self.settings_seen = False  # the server's first SETTINGS arrived
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate,
                                        validate_inbound_headers=False)
        self.conn = _Connection(config=cfg)
        self.sock = None
        if connect:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                ctx = ssl.create_default_context(cafile=cafile)
                if cafile is None:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                ctx.set_alpn_protocols(["h2"])
                self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name or
                                            self.authority.rsplit(":", 1)[0])
                if self.sock.selected_alpn_protocol() != "h2":
                    raise H2Error("ALPN did not select h2: %r" % self.sock.selected_alpn_protocol())
            self.conn.initiate_connection()
            s = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                 h2.settings.SettingCodes.ENABLE_PUSH: 0,
                 h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1024 * 1024}
            s.update(settings or {})
            self.conn.update_settings(s)
            self.conn.increment_flow_control_window(CONN_WINDOW)
            self.flush()

    # -- plumbing ---------------------------------------------------------------------------

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError) as e:
                self._lost("send: %s" % e)

    def _lost(self, why):
        self.closed = True
        for st in self.streams.values():
            if not st.done:
                st.done = True
                st.done_at = time.monotonic()

    def pump(self, timeout):
        """Reads what the socket has within |timeout| s and processes it. False when nothing
        arrived (timeout) or the connection is closed."""
        if self.closed:
            return False
        if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
            if not r:
                return False
        try:
            data = self.sock.recv(1024 * 1024)
        except (ConnectionResetError, ssl.SSLError, OSError) as e:
            self._lost("recv: %s" % e)
            return False
        if not data:
            self._lost("eof")
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.flush()
            raise H2Error("protocol error from server: %s" % e)
        for ev in events:
            self._event(ev)
        self.flush()
        return True

    def _event(self, ev):
        st = self.streams.get(getattr(ev, "stream_id", None) or -1)
        now = time.monotonic()
        if isinstance(ev, h2.events.ResponseReceived):
            st.header_list = list(ev.headers)
            for k, v in ev.headers:
                if k == ":status":
                    st.status = int(v)
                st.headers[k] = st.headers[k] + ", " + v if k in st.headers else v
            st.first_byte_at = st.first_byte_at or now
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            if st is not None:
                st.informational += [int(v) for k, v in ev.headers if k == ":status"]
                st.informational_lists.append(list(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            if st is not None:
                if ev.data and st.first_data_at is None:
                    st.first_data_at = now
                st.body_len += len(ev.data)
                if st.on_data is not None:
                    st.on_data(ev.data)
                else:
                    st.body += ev.data
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            st.trailers = {k: v for k, v in ev.headers}
            st.trailer_list = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            if st is not None:
                st.ended = True
                st.done = True
                st.done_at = now
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                st.reset_code = int(ev.error_code)
                st.done = True
                st.done_at = now
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code), ev.last_stream_id)
            for sid, s in self.streams.items():
                if sid > (ev.last_stream_id or 0) and not s.done:
                    s.done = True
                    s.done_at = now

    # -- requests ---------------------------------------------------------------------------

    def headers_for(self, method, path, headers=None, authority=None):
        h = [(":method", method), (":scheme", self.scheme),
             (":authority", authority or self.authority), (":path", path)]
        h.extend(headers or [])
        return h

    def start(self, method, path, headers=None, body=None, end_stream=None, on_data=None,
              authority=None, raw_headers=None):
        """Opens a stream; sends |body| (bytes, small) at once. Returns the Stream.
        With end_stream False the caller sends the body with send()/end()."""
        sid = self.conn.get_next_available_stream_id()
        st = Stream(sid, on_data)
        self.streams[sid] = st
        hl = raw_headers if raw_headers is not None else self.headers_for(method, path, headers,
                                                                           authority)
        if end_stream is None:
            end_stream = not body
        self.conn.send_headers(sid, hl, end_stream=end_stream and not body)
        self.flush()
        if body:
            self.send(st, body, end_stream=end_stream)
        return st

    def send(self, st, data, end_stream=False, deadline=None):
        """Sends |data| on |st| within the flow-control windows, reading the connection while
        waiting for window. Stops early (returns False) if the stream or connection finished."""
        mv = memoryview(data)
        off = 0
        deadline = deadline or time.monotonic() + self.timeout
        while off < len(mv):
            if st.done or self.closed or self.goaway and st.stream_id > self.goaway[1]:
                return False
            try:
                w = self.conn.local_flow_control_window(st.stream_id)
            except h2.exceptions.StreamClosedError:
                return False
            if w <= 0:
                if time.monotonic() > deadline:
                    raise H2Error("no flow-control window for stream %d" % st.stream_id)
                self.pump(0.5)
                continue
            n = min(w, len(mv) - off, self.conn.max_outbound_frame_size)
            try:
                self.conn.send_data(st.stream_id, mv[off:off + n],
                                    end_stream=end_stream and off + n == len(mv))
            except h2.exceptions.StreamClosedError:
                return False
            off += n
            self.flush()
            # keep reading so the server's WINDOW_UPDATEs and early responses are seen
            while self.pump(0):
                pass
        if end_stream and not mv:
            self.end(st)
        return True

    def end(self, st, trailers=None):
        try:
            if trailers:
                self.conn.send_headers(st.stream_id, trailers, end_stream=True)
            else:
                self.conn.end_stream(st.stream_id)
        except h2.exceptions.StreamClosedError:
            return False
        self.flush()
        return True

    def reset(self, st, code=h2.errors.ErrorCodes.CANCEL):
        self.conn.reset_stream(st.stream_id, error_code=code)
        self.flush()

    def wait(self, streams, timeout=None):
        """Reads until every stream in |streams| is done or |timeout| s pass; returns whether
        all are done."""
        if isinstance(streams, Stream):
            streams = [streams]
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not all(s.done for s in streams):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.closed:
                return all(s.done for s in streams)
            self.pump(min(left, 0.5))
        return True

    def wait_for(self, pred, timeout=5.0):
        """Reads until |pred()| holds (True) or |timeout| s pass, or the connection closes."""
        deadline = time.monotonic() + timeout
        while not pred() and not self.closed and time.monotonic() < deadline:
            self.pump(0.2)
        return pred()

    def wait_settings(self, timeout=5.0):
        """Reads until the server's SETTINGS arrived; returns whether they did."""
        deadline = time.monotonic() + timeout
        while not self.settings_seen and not self.closed and time.monotonic() < deadline:
            self.pump(0.2)
        return self.settings_seen

    def wait_goaway(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.goaway is None and not self.closed and time.monotonic() < deadline:
            self.pump(0.2)
        return self.goaway

    def wait_closed(self, timeout=5.0):
        """Reads until the server closes the connection; returns whether it did."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            try:
                self.pump(0.2)
            except H2Error:
                pass
        return self.closed

    def request(self, method="GET", path="/", headers=None, body=b"", trailers=None,
                timeout=None, authority=None):
        """One whole exchange. Raises H2Error when it does not finish within |timeout|."""
        st = self.start(method, path, headers, end_stream=not body and not trailers,
                        authority=authority)
        if body:
            self.send(st, body, end_stream=not trailers)
        if trailers and not st.done:
            self.end(st, trailers)
        if not self.wait(st, timeout):
            raise H2Error("stream %d did not finish within %ss: %r" % (st.stream_id,
                          self.timeout if timeout is None else timeout, st))
        return st

    def get(self, path="/", **kw):
        return self.request("GET", path, **kw)

    def close(self):
        if self.sock is None:
            return
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
