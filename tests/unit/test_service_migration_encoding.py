"""``mig_import`` of an export the coordinator compressed (``encoding: zlib``,
pyengine/service/migration.py): the destination decompresses what it staged and checks the
source's size and SHA-256; a stream that is not zlib, gives other bytes or more than the
export's size, or an unknown encoding, is refused with a clear error and changes nothing but the
staging (sent again, it fits). And the "moving" answer names the destination."""

from __future__ import annotations

import base64
import zlib

from pyengine.wire.protocol import Status
from tests.unit.test_service_migration import BTC, book, setup, writable


def export(src, mid: str = "m1") -> tuple[dict, bytes]:
    a = src.ok({"op": "mig_freeze", "id": mid, "symbol": BTC, "dest": "p2", "epoch": 2})
    raw = b""
    while len(raw) < a["size"]:
        raw += base64.b64decode(src.ok({"op": "mig_export_chunk", "id": mid, "offset": len(raw),
                                        "length": 1000})["data"])
    return a, raw


def stage(dst, data: bytes, mid: str = "m1") -> None:
    for off in range(0, len(data), 700):
        dst.ok({"op": "mig_import_chunk", "id": mid, "offset": off,
                "data": base64.b64encode(data[off:off + 700]).decode()})


def test_compressed_export_imports_the_same_book():
    src, dst = setup()
    before = book(src)
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    a, raw = export(src)
    # the source's "moving" answer names where the symbol goes
    st, body = src.place(BTC, "a", "buy", "50", "late")
    assert st == Status.MOVED and body["moving"] and body["dest"] == "p2", body
    h = dst.svc.hash_info()["engine_hash"]
    bad = [
        (b"not zlib at all", "zlib", "send it again"),
        (zlib.compress(raw[:-1], 1), "zlib", "send it again"),  # other bytes
        (zlib.compress(raw + b"x" * 10_000, 1), "zlib", "send it again"),  # more than the export's size
        (zlib.compress(raw, 1), "lz4", "unknown encoding"),
    ]
    for data, encoding, text in bad:
        stage(dst, data)
        st, body = dst.admin({"op": "mig_import", "id": "m1", "size": a["size"], "sha256": a["sha256"],
                              "encoding": encoding})
        assert st == Status.ERROR and text in body["error"], (encoding, body)
        assert dst.svc.hash_info()["engine_hash"] == h  # nothing imported
        if text == "unknown encoding":
            # the staging stays until an import that does not add up resets it
            st, body = dst.admin({"op": "mig_import", "id": "m1", "size": a["size"], "sha256": "0"})
            assert st == Status.ERROR and "send it again" in body["error"]
    st, body = dst.admin({"op": "mig_import", "id": "m1", "size": "many", "sha256": a["sha256"]})
    assert st == Status.ERROR and "needs size and sha256" in body["error"]
    stage(dst, zlib.compress(raw, 1))
    dst.ok({"op": "mig_import", "id": "m1", "size": a["size"], "sha256": a["sha256"], "encoding": "zlib"})
    dst.ok({"op": "mig_activate", "id": "m1"})
    src.ok({"op": "mig_drop", "id": "m1"})
    assert book(dst) == before
    assert writable(dst, "after") and not writable(src, "after")
    src.funds_ok()
    dst.funds_ok()
