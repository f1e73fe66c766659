"""What the pre-copy tests share, engine level (test_engine_migration_precopy.py,
test_engine_migration_pieces.py) and service level (test_service_migration_precopy.py,
test_service_migration_pieces.py): a freeze taken beside a whole export of the same state, the
destination checked against that export's, an abort after the freeze checked exact, a member
restarted from a snapshot."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

from test_engine_migration import X, fund, holds_in, neg, run
from test_service_migration import BTC, Part, book, transfer, writable

from pyengine.engine import Engine
from pyengine.engine.migration import book_rows, export_symbol, funds_problems, import_symbol
from pyengine.service.matching import MatchingService


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def copy(e: Engine) -> Engine:
    """``e`` restored from its snapshot: another member at the same log position."""
    return Engine.restore(e.snapshot())


class Frozen(NamedTuple):
    at_freeze: list[tuple]  # the source's book just before the freeze
    delta: bytes            # the freeze's export (what changed since the pre-copy)
    meta: dict
    whole: bytes            # a whole export of the same state, for reference
    ref_dst: Engine         # the destination before the import, for the whole export


def freeze_beside_whole(src: Engine, dst: Engine, freeze: Callable[[], tuple[bytes, dict]]) -> Frozen:
    """``freeze()`` on ``src`` and, on a copy of it, a whole export: the same orders, holds and
    finished orders, and the same source state after both."""
    at_freeze = book_rows(src, X)
    ref_src, ref_dst = copy(src), copy(dst)
    delta, meta = freeze()
    whole, wmeta = export_symbol(ref_src, X)
    assert meta["orders"] == wmeta["orders"] == len(at_freeze)
    assert meta["holds"] == wmeta["holds"] and meta["finished"] == wmeta["finished"]
    assert src.state_hash() == ref_src.state_hash()  # the freeze leaves the source alike
    return Frozen(at_freeze, delta, meta, whole, ref_dst)


def check_as_whole(src: Engine, dst: Engine, fz: Frozen, got: dict, flow) -> None:
    """The destination after the import of ``fz.delta`` (``got``: what the import answered) is
    where the whole export would have left it, funds hold on both sides, and the moved book
    trades as the whole export's does (duplicates, cancels of pre-copied orders)."""
    import_symbol(fz.ref_dst, fz.whole)
    assert book_rows(dst, X) == fz.at_freeze
    assert dst.state_hash() == fz.ref_dst.state_hash()
    assert got["orders"] == len(fz.at_freeze) and got["coid_conflicts"] == 0
    assert funds_problems(dst, holds_in(fz.meta)) == []
    assert funds_problems(src, neg(holds_in(fz.meta))) == []
    fund(dst, "after")
    fund(fz.ref_dst, "after")
    flow.syms = (X,)
    for i in range(100):
        cmd = flow.next()
        assert dst.apply(cmd, 90_000 + i) == fz.ref_dst.apply(cmd, 90_000 + i), (i, cmd)


def restored_exactly(src: Engine, got: dict, meta: dict, h: str, flow) -> None:
    """The source took its own export back (``got``: what the import answered, ``meta``: the
    freeze's): the state it had before the freeze (hash ``h``), its finished orders remembered
    once, and it trades on."""
    assert got["finished_skipped"] == meta["finished"]
    assert src.state_hash() == h
    src.check_invariants()
    run(src, flow, 100, ts=8_000)
    src.check_invariants()


def restarted(p: Part) -> Part:
    """Another member of ``p``'s partition, restored from ``p``'s snapshot."""
    q = Part.__new__(Part)
    q.name, q.pos = p.name, p.pos
    q.svc = MatchingService()
    q.svc.restore(p.svc.snapshot())
    assert q.svc.snapshot() == p.svc.snapshot()
    return q


def switch_over(src: Part, dst: Part, frozen: dict, at_freeze: list[tuple]) -> None:
    """The freeze's export (``frozen``: its answer) copied and imported, then the activation and
    the drop: the destination's book is the source's at the freeze, one owner at every step,
    funds hold on both sides."""
    transfer(src, dst, "m1", frozen["meta"], frozen["size"], frozen["sha256"])
    assert book(dst) == at_freeze
    assert not writable(dst, "imported")
    dst.ok({"op": "mig_activate", "id": "m1"})
    src.ok({"op": "mig_drop", "id": "m1"})
    assert writable(dst, "active") and not writable(src, "active")
    src.funds_ok()
    dst.funds_ok()


def abort_after_freeze_is_exact(src: Part, dst: Part, freeze: dict,
                                after_freeze: Callable[[dict], None] | None = None) -> None:
    """Freeze (then ``after_freeze`` with its answer), copy and import, then the abort (the
    destination discards, the source restores): the source's engine is as before the freeze, it
    owns the symbol at the new epoch, and the destination holds nothing of it."""
    h, before = src.svc.engine.state_hash(), book(src)
    a = src.ok(freeze)
    if after_freeze is not None:
        after_freeze(a)
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    dst.ok({"op": "mig_discard", "id": "m1"})
    assert book(dst) == [] and not writable(dst, "discarded")
    assert src.ok({"op": "mig_restore", "id": "m1"})["state"] == "restored"
    assert src.svc.engine.state_hash() == h and book(src) == before
    assert src.svc.owned[BTC] == 2 and writable(src, "restored")
    src.svc.engine.check_invariants()
    src.funds_ok()
    dst.funds_ok()
