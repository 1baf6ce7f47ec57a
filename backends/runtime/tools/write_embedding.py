#!/usr/bin/python3
"""write_embedding.py - writes a Modelgate `embedding` index (an .mgemb file) from numpy.

Layout (all integers little-endian; documented in backends/runtime/tools/README.md):

    offset 0      8 bytes   magic b"MGEMBED1"
    offset 8      4 bytes   uint32: H, the length of the JSON header
    offset 12     H bytes   JSON header (UTF-8), e.g.
                            {"count": N, "dim": D, "metric": "cosine", "ids": "int64",
                             "k": 10, "user_feature": "user_vector"}
    then          zero bytes up to the next multiple of 64 (the matrix is 64-byte aligned)
    matrix        N*D float32, row-major: row i is the vector of item i
    ids           "int64":  N int64
                  "string": N+1 uint64 offsets (offsets[0] = 0, non-decreasing), then
                            offsets[N] bytes of UTF-8 (id i = bytes[offsets[i]:offsets[i+1]])
    end of file   exactly here

Use as a module:
    from write_embedding import write_index
    write_index("items.mgemb", vectors, ids, metric="cosine", user_feature="user_vector")
or from the command line with .npy files:
    python3 write_embedding.py vectors.npy ids.npy items.mgemb [--metric dot] [--k 20]
"""
import json
import struct
import sys

import numpy as np

MAGIC = b"MGEMBED1"
ALIGN = 64
METRICS = ("dot", "cosine")


def write_index(path, vectors, ids, metric="cosine", k=10, user_feature="user_vector",
                description=None):
    """Writes an index of len(ids) items. |vectors|: N x D array (cast to float32, must be
    finite); |ids|: N distinct ints (int64) or N distinct strings. |metric|: "dot" or "cosine".
    |k|: default number of results. |user_feature|: the field of the user's features (the
    x-user-features JSON) that holds the user vector, or None. Returns the header dict."""
    v = np.ascontiguousarray(np.asarray(vectors, dtype="<f4"))
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError("vectors: expected a non-empty N x D matrix, got shape %s" % (v.shape,))
    if not np.all(np.isfinite(v)):
        raise ValueError("vectors: every value must be finite")
    n, d = v.shape
    ids = list(ids)
    if len(ids) != n:
        raise ValueError("ids: expected %d ids (one per row), got %d" % (n, len(ids)))
    if len(set(ids)) != n:
        raise ValueError("ids: must be distinct")
    if metric not in METRICS:
        raise ValueError("metric: expected one of %s, got %r" % (", ".join(METRICS), metric))
    if not 1 <= int(k) <= n:
        raise ValueError("k: expected 1..%d, got %r" % (n, k))
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        id_type = "int64"
        id_bytes = np.asarray(ids, dtype="<i8").tobytes()
    elif all(isinstance(i, str) for i in ids):
        id_type = "string"
        enc = [i.encode("utf-8") for i in ids]
        offs = np.zeros(n + 1, dtype="<u8")
        offs[1:] = np.cumsum([len(e) for e in enc])
        id_bytes = offs.tobytes() + b"".join(enc)
    else:
        raise ValueError("ids: expected all integers or all strings")
    header = {"count": n, "dim": d, "metric": metric, "ids": id_type, "k": int(k)}
    if user_feature:
        header["user_feature"] = str(user_feature)
    if description:
        header["description"] = str(description)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head = MAGIC + struct.pack("<I", len(hj)) + hj
    head += b"\0" * (-len(head) % ALIGN)
    with open(path, "wb") as f:
        f.write(head)
        f.write(v.tobytes())
        f.write(id_bytes)
    return header


def read_index(path):
    """Reads an index back: (header, vectors float32 N x D, ids list). For checks and tests."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != MAGIC:
        raise ValueError("%s: not an mg-embedding index (bad magic)" % path)
    (hlen,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12:12 + hlen])
    off = 12 + hlen
    off += -off % ALIGN
    n, d = header["count"], header["dim"]
    v = np.frombuffer(data, dtype="<f4", count=n * d, offset=off).reshape(n, d)
    off += 4 * n * d
    if header["ids"] == "int64":
        ids = [int(i) for i in np.frombuffer(data, dtype="<i8", count=n, offset=off)]
    else:
        offs = [int(o) for o in np.frombuffer(data, dtype="<u8", count=n + 1, offset=off)]
        base = off + 8 * (n + 1)
        ids = [data[base + offs[i]:base + offs[i + 1]].decode("utf-8") for i in range(n)]
    return header, v, ids


def top_k(vectors, query, k, metric):
    """The reference search: the (ids-index, score) pairs the runtime must return, best first,
    ties broken by the lower row index. Scores are float32 like the runtime's."""
    v = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(v, axis=1).astype(np.float32)
        norms[norms == 0] = 1
        v = v / norms[:, None]
        qn = np.float32(np.linalg.norm(q))
        if qn > 0:
            q = q / qn
    scores = (v @ q).astype(np.float32)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), float(scores[i])) for i in order]


def main(argv):
    import argparse

    p = argparse.ArgumentParser(description="write a Modelgate embedding index")
    p.add_argument("vectors", help=".npy file: N x D matrix")
    p.add_argument("ids", help=".npy file: N ints, or N strings")
    p.add_argument("out", help="output index, e.g. items.mgemb")
    p.add_argument("--metric", choices=METRICS, default="cosine")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--user-feature", default="user_vector")
    a = p.parse_args(argv[1:])
    ids = np.load(a.ids, allow_pickle=False).tolist()
    h = write_index(a.out, np.load(a.vectors, allow_pickle=False), ids, a.metric, a.k,
                    a.user_feature)
    print("%s: %d items x %d dims, %s, ids %s" % (a.out, h["count"], h["dim"], h["metric"],
                                                  h["ids"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
