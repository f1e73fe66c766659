"""The migration driver's pipelined copy and its step timing (coordinator/migrations.py,
coordinator/migration_timing.py) against real partition services in this process, through a
transport that answers asynchronously, one partition's commands in the order they were sent (as
one client session does): the same book moves, the timing is recorded, and a chunk lost on the
way makes the copy go on one step at a time without a rollback.

The same with processes and Aeron: tests/integration/test_migration*.py (the coordinator's
ClientTransport has ``submit``, so those run the pipelined copy)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from coordinator.migration_timing import one_line, render
from coordinator.migrations import COPY_PACE_PCT, MAX_COPY_PACE_PCT, Driver, PartitionUnavailable
from pyengine.ops.migrate import timing_lines
from tests.unit.test_coordinator_migrations import LocalTransport, funds_ok, owners, system  # noqa: F401
from tests.unit.test_service_migration import BTC, book


class PipeTransport(LocalTransport):
    """``LocalTransport`` with ``submit``: each partition's commands applied in order on its own
    thread, answered through futures. ``lose`` names (op, offset) pairs to drop once: never
    applied, answered unreachable (a message lost with a leader)."""

    def __init__(self, parts) -> None:
        super().__init__(parts)
        self.pools = {p: ThreadPoolExecutor(max_workers=1) for p in parts}
        self.lose: set[tuple[str, int]] = set()
        self.submitted: list[str] = []

    def submit(self, partition: str, command: dict) -> Future:
        self.submitted.append(command["op"])
        key = (command["op"], command.get("offset", -1))
        if key in self.lose:
            self.lose.discard(key)
            out: Future = Future()
            out.set_exception(PartitionUnavailable(f"{partition}: lost"))
            return out
        return self.pools[partition].submit(super().admin, partition, command)

    def admin(self, partition: str, command: dict) -> tuple[str, dict]:
        return self.submit(partition, command).result()  # in order with the submitted ones

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True)


@pytest.fixture
def piped(system):  # noqa: F811 - the fixture of test_coordinator_migrations
    store, transport, parts, path = system
    for i in range(300):  # a book whose export spans several chunks of 1 KiB
        buy = i % 2 == 1
        parts["p1"].place(BTC, "abc"[i % 3], "buy" if buy else "sell", str(80 - i % 9 if buy else 120 + i % 9), f"x{i}")
    t = PipeTransport(parts)
    yield store, t, parts
    t.close()


def test_pipelined_copy_moves_the_book_and_times_every_step(piped):
    """The whole export copied after the freeze (no pre-copy: the copy's pipelining is what is
    looked at; with a pre-copy the same copy carries the pre-copy, see below)."""
    store, transport, parts = piped
    before = book(parts["p1"])
    d = Driver(store, transport, chunk_bytes=1024, precopy=False)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec
    assert book(parts["p2"]) == before and book(parts["p1"]) == []
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)
    size = rec["info"]["size"]
    chunks = -(-size // 1024)
    assert chunks >= 3, size  # several chunks in flight at once
    assert rec["info"]["encoding"] == "zlib"
    progress = d.describe(rec)["progress"]
    staged = progress["encoded"]
    assert progress["fetched"] == size and progress["staged"] == staged < size, progress
    # the export chunks went without waiting for each other's answers, the compressed export to
    # the destination the same way, with the import right behind its last chunk
    assert transport.submitted.count("mig_import_chunk") == -(-staged // 1024)
    timing = rec["info"]["timing"]
    names = [s[0] for s in timing["steps"]]
    for step in ("prepare", "freeze", "record frozen", "compress", "import", "record imported",
                 "record activating", "route flip", "activate", "record switched", "drop"):
        assert step in names, (step, names)
    assert sum(n.startswith("export@") for n in names) >= chunks
    assert sum(n.startswith("import@") for n in names) == -(-staged // 1024)
    assert timing["resumed"] is False and timing["activated_ms"] >= 0 and timing["route_ms"] >= 0
    start = dict((s[0], s[1]) for s in timing["steps"])
    assert start["freeze"] == 0.0 and start["prepare"] < 0  # ms from the freeze sent
    lines = render(timing)
    assert any(f"export chunks x{chunks}" in line for line in lines), lines
    assert any(f"import chunks x{-(-staged // 1024)}" in line for line in lines), lines
    assert "freeze 0.0-" in one_line(timing)
    assert timing_lines(rec)[0].startswith("steps (ms from the freeze sent)")


def test_precopy_in_pieces_moves_the_book_with_trading_between_pieces(piped):
    """Pieces of 20 orders, the next asked for while the destination takes the last; orders
    placed and cancelled at the source during the pre-copy (from the transport's thread, between
    two of its commands) arrive exactly; the freeze's export holds only what changed."""
    store, transport, parts = piped
    src = parts["p1"]
    n = [0]
    orig = transport.submit

    def submit(partition, command):
        if command["op"] == "mig_preimport":  # the source trades on between its pieces
            n[0] += 1
            i = n[0]

            def trade() -> None:  # on the source's thread, in its log between two commands
                src.place(BTC, "abc"[i % 3], "buy", str(70 + i % 5), f"mid{i}")
                src.eng({"op": "cancel", "account": "abc"[(2 * i - 1) % 3], "symbol": BTC,
                         "client_order_id": f"x{2 * i - 1}"})

            transport.pools["p1"].submit(trade)
        return orig(partition, command)

    transport.submit = submit
    d = Driver(store, transport, chunk_bytes=1024, piece_orders=20)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec
    assert n[0] >= 8  # pieces: ~340 orders on 32 queues, 20 orders a piece or more (whole queues)
    names = [s[0] for s in rec["info"]["timing"]["steps"]]
    assert sum(x.startswith("precopy piece@") for x in names) == n[0]
    assert sum(x.startswith("preimport@") for x in names) == n[0]
    moved = book(parts["p2"])
    assert moved and {r[7] for r in moved} >= {f"mid{i}" for i in range(1, n[0] + 1)}
    assert not {f"x{2 * i - 1}" for i in range(1, n[0] + 1)} & {r[7] for r in moved}
    assert book(parts["p1"]) == []
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)


def test_pieces_with_a_pause_between_them_go_one_after_the_other(piped):
    """``piece_pause_s``: no piece is asked for before the last one went in (no pipelining of
    the pieces), and the book moves as without the pause."""
    store, transport, parts = piped
    before = book(parts["p1"])
    d = Driver(store, transport, chunk_bytes=4096, piece_orders=40, piece_pause_s=0.001)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec
    assert book(parts["p2"]) == before
    ops = [op for op in transport.submitted if op in ("mig_precopy", "mig_preimport")]
    assert len(ops) >= 8 and ops == ["mig_precopy", "mig_preimport"] * (len(ops) // 2), ops
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)
    with pytest.raises(ValueError, match="piece_pause_s"):
        Driver(store, transport, piece_pause_s=11)


def test_paced_pieces_wait_a_share_of_their_time_after_each(piped):
    """``copy_pace_pct`` 100: the driver waits after each piece of the pre-copy and of the
    cleanup at least as long as the piece took (asked for at the source to built at the
    destination; sent to answered for the cleanup), and asks for no piece before the last one
    went in; the book moves as without the waits. Off by default (``COPY_PACE_PCT``)."""
    store, transport, parts = piped
    before = book(parts["p1"])
    stamps: list[tuple[str, float, float]] = []  # op, sent, answered (monotonic)
    orig = transport.submit

    def submit(partition, command):
        op = command["op"]
        if op in ("mig_preimport", "mig_cleanup"):  # a piece that takes a while to apply
            transport.pools[partition].submit(time.sleep, 0.02)
        t = time.monotonic()
        fut = orig(partition, command)
        if op in ("mig_precopy", "mig_preimport", "mig_cleanup"):
            fut.add_done_callback(lambda _f: stamps.append((op, t, time.monotonic())))
        return fut

    transport.submit = submit
    assert COPY_PACE_PCT == 0
    d = Driver(store, transport, chunk_bytes=4096, piece_orders=40, copy_pace_pct=100)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec
    assert book(parts["p2"]) == before
    ops = [op for op, _s, _a in stamps if op != "mig_cleanup"]
    assert len(ops) >= 8 and ops == ["mig_precopy", "mig_preimport"] * (len(ops) // 2), ops
    pre = [x for x in stamps if x[0] != "mig_cleanup"]
    for k in range(0, len(pre) - 2, 2):
        (_, asked, _), (_, _, built), (_, nxt, _) = pre[k], pre[k + 1], pre[k + 2]
        assert nxt - built >= built - asked, (k // 2, asked, built, nxt)
    clean = [x for x in stamps if x[0] == "mig_cleanup"]
    assert len(clean) >= 5, clean
    for (_, s0, a0), (_, s1, _) in zip(clean, clean[1:], strict=False):
        assert s1 - a0 >= a0 - s0
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)
    with pytest.raises(ValueError, match="copy_pace_pct"):
        Driver(store, transport, copy_pace_pct=MAX_COPY_PACE_PCT + 1)


def test_a_deep_queue_is_one_large_piece_fetched_and_staged_in_chunks(system):  # noqa: F811
    """A queue is never split: 4,000 bids at one price make one piece larger than an answer
    holds (64 KiB), fetched from the source and staged at the destination in chunks."""
    store, _t, parts, _path = system
    for i in range(4000):
        st, body = parts["p1"].place(BTC, "abc"[i % 3], "buy", "70", f"deep{i}")
        assert st == 0, body
    before = book(parts["p1"])
    transport = PipeTransport(parts)
    try:
        d = Driver(store, transport, chunk_bytes=4096, piece_orders=100)
        rec = d.start(BTC, "p2", "m1", wait=True)
    finally:
        transport.close()
    assert rec["state"] == "done", rec
    assert book(parts["p2"]) == before and book(parts["p1"]) == []
    names = [s[0] for s in rec["info"]["timing"]["steps"]]
    assert sum(n.startswith("precopy export@") for n in names) > 16  # > 64 KiB in 4 KiB chunks
    assert sum(n.startswith("precopy import@") for n in names) >= 2
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)


def test_a_lost_chunk_makes_the_copy_go_on_step_by_step(piped):
    store, transport, parts = piped
    before = book(parts["p1"])
    transport.lose = {("mig_import_chunk", 1024)}  # the second chunk never reaches p2
    d = Driver(store, transport, chunk_bytes=1024)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec  # no rollback: the careful path finished the copy
    assert book(parts["p2"]) == before
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)


def test_a_lost_freeze_answer_is_sent_again(piped):
    store, transport, parts = piped
    before = book(parts["p1"])
    transport.lose = {("mig_freeze", -1), ("mig_activate", -1)}
    d = Driver(store, transport, chunk_bytes=2048)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec
    assert book(parts["p2"]) == before
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)


@pytest.mark.parametrize("compress", [True, False])
def test_a_lost_chunk_step_by_step_with_and_without_compression(piped, compress):
    store, transport, parts = piped
    before = book(parts["p1"])
    transport.lose = {("mig_import_chunk", 0), ("mig_export_chunk", 2048)}
    d = Driver(store, transport, chunk_bytes=1024, compress=compress)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec
    assert rec["info"]["encoding"] == ("zlib" if compress else None)
    assert book(parts["p2"]) == before
    assert owners(parts, "end") == ["p2"]
    funds_ok(parts)


class TradingTransport(PipeTransport):
    """``PipeTransport`` that places, cancels and amends BTC at p1 (through the log, as a
    client would) right before the freeze reaches it: the changes made during the pre-copy."""

    def __init__(self, parts) -> None:
        super().__init__(parts)
        self.at_freeze: list[tuple] | None = None

    def submit(self, partition: str, command: dict) -> Future:
        if command["op"] == "mig_freeze" and self.at_freeze is None:
            p1 = self.parts["p1"]
            for i in range(20):
                p1.place(BTC, "abc"[i % 3], "buy", str(70 + i % 5), f"during{i}")
            p1.eng({"op": "cancel", "account": "a", "symbol": BTC, "client_order_id": "x0"})
            p1.eng({"op": "amend", "account": "b", "symbol": BTC, "client_order_id": "x1", "qty": "0.3"})
            self.at_freeze = book(p1)
        return super().submit(partition, command)


def test_precopy_carries_the_book_and_the_freeze_only_the_changes(system):  # noqa: F811
    store, _t, parts, _path = system
    for i in range(300):
        buy = i % 2 == 1
        parts["p1"].place(BTC, "abc"[i % 3], "buy" if buy else "sell", str(80 - i % 9 if buy else 120 + i % 9), f"x{i}")
    transport = TradingTransport(parts)
    try:
        # the pre-copy as one message (piece_orders 0, the mode before the pieces): its copy
        # in chunks is what is looked at; in pieces: test_precopy_in_pieces_... above
        d = Driver(store, transport, chunk_bytes=1024, piece_orders=0)
        rec = d.start(BTC, "p2", "m1", wait=True)
    finally:
        transport.close()
    assert rec["state"] == "done", rec
    assert transport.at_freeze is not None and book(parts["p2"]) == transport.at_freeze
    assert book(parts["p1"]) == [] and owners(parts, "end") == ["p2"]
    funds_ok(parts)
    assert rec["info"]["orders"] == len(transport.at_freeze)
    names = [s[0] for s in rec["info"]["timing"]["steps"]]
    for step in ("precopy", "precopy compress", "preimport", "freeze", "import", "activate"):
        assert step in names, (step, names)
    # the book went before the freeze; the freeze's export (the changes, and the accounts' holds
    # and finished orders of the symbol) is a fraction of it
    pre = sum(n.startswith("precopy export@") for n in names)
    assert pre >= 5 and sum(n.startswith("export@") for n in names) <= pre // 2, names
    # every pre-copy step before the freeze was sent (negative ms), in order
    start = {s[0]: s[1] for s in rec["info"]["timing"]["steps"]}
    assert start["precopy"] < start["preimport"] < start["freeze"] == 0.0
    assert transport.submitted.index("mig_preimport") < transport.submitted.index("mig_freeze")
