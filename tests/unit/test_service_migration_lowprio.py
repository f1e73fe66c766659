"""The destination's bulky migration steps run on a low-priority thread while the service
thread waits (pyengine/service/lowprio.py): a pre-copy piece's build and the import. The
source's steps (its pieces, cleanup, restore) stay on the service thread: the source's other
symbols wait behind them in its own log, so lowering their priority would only make those
symbols wait longer (bench/reports/migration_lowprio_side_by_side.md). Real services; what each
step computes is checked to be the same (books, funds), and an exception reaches the caller as
before."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest
from test_service_migration import book, setup, transfer
from test_service_migration_pause import deep_book, precopy_and_freeze

from pyengine.engine.migration import MigrationError
from pyengine.service import lowprio
from pyengine.service import migration as service_migration

Seen = dict[str, list[tuple[int, int]]]


def _spy(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> Seen:
    """Each named engine function of the service, recorded with the thread and nice level it ran at."""
    seen: Seen = {n: [] for n in names}
    for name in names:
        real = getattr(service_migration, name)

        def wrapped(*a: object, _real: Callable = real, _name: str = name, **kw: object) -> object:
            tid = threading.get_native_id()
            seen[_name].append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
            return _real(*a, **kw)

        monkeypatch.setattr(service_migration, name, wrapped)
    return seen


def _assert_ran(seen: Seen, names: tuple[str, ...], low: bool) -> None:
    me = threading.get_native_id()
    want = min(19, os.getpriority(os.PRIO_PROCESS, me) + lowprio.NICE) if low else os.getpriority(os.PRIO_PROCESS, me)
    for name in names:
        assert seen[name], f"{name} never ran"
        for tid, nice in seen[name]:
            assert (tid != me) == low, f"{name} ran on the {'service' if low else 'low-priority'} thread"
            assert nice == want, f"{name} ran at nice {nice}, not {want}"


def test_the_destinations_build_and_import_run_at_low_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch, ("take_piece", "extend_shadow", "import_delta", "cleanup"))
    src, dst = setup()
    deep_book(src)
    frozen, at_freeze = precopy_and_freeze(src, dst)
    transfer(src, dst, "m1", frozen["meta"], frozen["size"], frozen["sha256"], chunk=60000)
    dst.ok({"op": "mig_activate", "id": "m1"})
    src.ok({"op": "mig_drop", "id": "m1"})
    cl = frozen["cleanup"]
    while cl["done"] < cl["orders"]:
        cl = src.ok({"op": "mig_cleanup", "id": "m1", "upto": cl["done"] + 2000})["cleanup"]
    _assert_ran(seen, ("extend_shadow", "import_delta"), low=True)
    _assert_ran(seen, ("take_piece", "cleanup"), low=False)
    assert book(dst) == at_freeze
    assert not src.svc.engine.orders
    dst.funds_ok()
    src.funds_ok()


def test_the_sources_restore_on_abort_stays_on_the_service_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch, ("import_delta",))
    src, dst = setup()
    deep_book(src)
    _, at_freeze = precopy_and_freeze(src, dst)
    src.ok({"op": "mig_restore", "id": "m1"})
    _assert_ran(seen, ("import_delta",), low=False)
    dst.ok({"op": "mig_discard", "id": "m1"})
    assert book(src) == at_freeze
    src.funds_ok()


def test_a_refusal_on_the_lane_is_answered_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object) -> dict:
        raise MigrationError("no room")

    src, dst = setup()
    deep_book(src)
    frozen, _ = precopy_and_freeze(src, dst)
    monkeypatch.setattr(service_migration, "import_delta", refuse)
    with pytest.raises(AssertionError, match="import refused: no room"):
        transfer(src, dst, "m1", frozen["meta"], frozen["size"], frozen["sha256"], chunk=60000)
    assert dst.svc.migrations.recs["m1"]["state"] == "prepared"


def test_run_low_gives_back_the_result_or_the_same_exception() -> None:
    assert lowprio.run_low(lambda: threading.get_native_id()) != threading.get_native_id()
    err = KeyError("k")

    def fail() -> None:
        raise err

    with pytest.raises(KeyError) as got:
        lowprio.run_low(fail)
    assert got.value is err
    # from the lane itself: in place (no wait for a job queued behind the one running)
    inner = lowprio.run_low(lambda: (threading.get_native_id(), lowprio.run_low(threading.get_native_id)))
    assert inner[0] == inner[1]
    assert lowprio.lane_nice() == min(19, os.getpriority(os.PRIO_PROCESS, 0) + lowprio.NICE)


def test_each_calling_thread_has_its_own_lane() -> None:
    """A worker's members each call from their own service thread: one member's import never
    queues behind another's."""
    release = threading.Event()
    started = threading.Event()
    tids: list[int] = []

    def long_job() -> None:
        started.set()
        release.wait(10)

    t = threading.Thread(target=lambda: lowprio.run_low(long_job))
    t.start()
    assert started.wait(10)
    try:
        tids.append(lowprio.run_low(threading.get_native_id))  # would wait for long_job on one lane
    finally:
        release.set()
        t.join(10)
    assert tids and not t.is_alive()
