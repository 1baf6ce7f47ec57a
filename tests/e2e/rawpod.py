"""
RawPod: a pod that answers what no real server would, and shows the raw header blocks it got.
"""

import socket
import struct
import threading

from hpack import Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, sid, payload):
    """One HTTP/2 frame, raw (for peers that break the protocol on purpose)."""
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) +
            struct.pack(">I", sid) + payload)


class ThreadedPod:
    """A loopback listener that serves each connection it accepts on a thread of its own:
    subclasses write serve(conn). |addr|: "127.0.0.1:port"; |conns|: the connections
    accepted; close() stops it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        raise NotImplementedError

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(): close() alone does not
        except OSError:
            pass
        self.sock.close()
        for conn in self.conns:
            conn.close()


class RawPod(ThreadedPod):
    """A pod that answers with a status line (HTTP/1.1: one per connection, the gateway closes
    it after a protocol error) or a HEADERS frame carrying |status| and |fields| on every stream
    a request opens (h2c, after its SETTINGS; HPACK without Huffman; then a HEADERS frame of
    |trailers| if any), whatever the request. |fields| and |trailers| may hold
    hpack.NeverIndexedHeaderTuple. |blocks|: the header blocks of the requests it got over
    HTTP/2, raw, in the order they came. |close_after| (HTTP/1.1): close the connection once
    the answer is sent (a body that ends at close, or a pod that dies in the middle of one).
    |zero_streams| (h2c): SETTINGS_MAX_CONCURRENT_STREAMS 0 as soon as a connection opens, and
    every request refused (REFUSED_STREAM). |interims| (h2c): (status, fields) of interim
    responses, each a HEADERS frame without END_STREAM sent before the final one, e.g.
    [(b"103", [("link", "</a.css>; rel=preload")])]; over HTTP/1.1, put them in
    |http1_answer|. |wait_end| (h2c): answer a request once it ended (END_STREAM), not at its
    HEADERS; |trailer_blocks|: the raw header blocks of the requests' trailers. |settings|
    (h2c): [(id, value)] of the SETTINGS frame sent as soon as a connection opens (empty by
    default, as any server's preface; the gateway sends a request only after it). |conns|:
    connections accepted."""

    def __init__(self, proto, status, http1_answer=None, close_after=False, fields=(),
                 trailers=(), zero_streams=False, interims=(), wait_end=False, settings=()):
        self.proto, self.status, self.close_after = proto, status, close_after
        self.zero_streams, self.settings = zero_streams, list(settings)
        self.fields, self.trailers = list(fields), list(trailers)
        self.interims = [(st.decode() if isinstance(st, bytes) else str(st), list(f))
                         for st, f in interims]
        self.blocks, self.trailer_blocks, self.wait_end = [], [], wait_end
        self.http1_answer = http1_answer or ("HTTP/1.1 %s OK\r\ncontent-length: 2\r\n\r\nok"
                                             % status).encode()
        super().__init__()

    frame = staticmethod(frame)

    def serve(self, conn):
        with conn:
            conn.settimeout(10)
            got, off, first = b"", len(PREFACE), True
            opened, answered = set(), set()  # streams whose HEADERS came, that got an answer
            try:
                if self.zero_streams:  # MAX_CONCURRENT_STREAMS (3) = 0, and the client's ACKed
                    conn.sendall(self.frame(4, 0, 0, struct.pack(">HI", 3, 0)) +
                                 self.frame(4, 1, 0, b""))
                elif self.proto == "h2c":  # a server's preface: the gateway sends nothing before
                    conn.sendall(self.frame(4, 0, 0, b"".join(struct.pack(">HI", k, v)
                                                              for k, v in self.settings)))
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    got += chunk
                    if self.proto == "http1":
                        conn.sendall(self.http1_answer)
                        if self.close_after:
                            return
                        continue
                    while len(got) >= off + 9:  # every complete frame: answer each HEADERS
                        length = int.from_bytes(got[off:off + 3], "big")
                        if len(got) < off + 9 + length:
                            break
                        ftype, flags = got[off + 3], got[off + 4]
                        sid = int.from_bytes(got[off + 5:off + 9], "big") & 0x7FFFFFFF
                        off += 9 + length
                        if ftype == 1 and sid in opened:  # a request's trailers
                            self.trailer_blocks.append(got[off - length:off])
                        elif ftype == 1:
                            # the tests' requests fit one frame: no padding, priority,
                            # CONTINUATION
                            opened.add(sid)
                            self.blocks.append(got[off - length:off])
                        ended = ftype in (0, 1) and flags & 1
                        if sid not in opened or sid in answered or (self.wait_end and not ended):
                            continue
                        answered.add(sid)
                        if self.zero_streams:  # REFUSED_STREAM (7)
                            conn.sendall(self.frame(3, 0, sid & 0x7FFFFFFF, struct.pack(">I", 7)))
                            continue
                        out = self.frame(4, 0, 0, b"") + self.frame(4, 1, 0, b"") if first else b""
                        first = False
                        for st, f in self.interims:  # END_HEADERS only: the stream goes on
                            out += self.frame(1, 4, sid, Encoder().encode([(":status", st)] + f,
                                                                          huffman=False))
                        block = Encoder().encode([(":status", str(self.status))] + self.fields,
                                                 huffman=False)
                        if self.trailers:
                            out += self.frame(1, 4, sid, block)
                            block = Encoder().encode(self.trailers, huffman=False)
                        conn.sendall(out + self.frame(1, 4 | 1, sid, block))
            except OSError:
                pass
