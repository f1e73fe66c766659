"""Bulky migration work on a low-priority thread while the service thread waits (#19).

A worker process hosts one member of every partition, and each worker is its own scheduling
group (started in its own session, kernel autogroup). When a member imports a moved book (~50 ms
of CPU at 100,000 orders) or builds a pre-copy piece, the worker's member of another partition
needs the same cores for its Aeron agents and its service: under one nice level they share
them evenly with the import, and that member's symbols wait for as long.

So such work runs on a thread whose nice level is raised once at its start: within the worker's
group the other threads then win the cores whenever they are runnable, and the work takes what
they leave. Raising nice needs no privilege, lowering it again would: hence a thread of its own
instead of the service thread lowering its priority for a while. The caller waits for the
result, so the order of log messages, the result and any exception are what they were with the
work on the service thread; only which thread spends the CPU changes.

One lane per calling thread (a worker's members each have their own service thread), so one
member's import never queues behind another member's work.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("matchx.lowprio")

T = TypeVar("T")

# how much nicer than the process the lanes run (CFS weight 110 against 1024 at nice 0)
NICE = 10


class _Job:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class _Lane(threading.Thread):
    """A daemon thread at ``NICE`` running its caller's jobs one at a time."""

    def __init__(self, owner: threading.Thread) -> None:
        super().__init__(name=f"lowprio-{owner.name}", daemon=True)
        self.owner = owner
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.niced = False

    def run(self) -> None:
        tid = threading.get_native_id()
        try:
            # relative to what it inherited: an absolute value could mean lowering it (privileged)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICE))
            self.niced = True
        except (OSError, AttributeError) as exc:  # no per-thread nice here: the work still runs
            log.warning("low-priority lane at the process's priority: %s", exc)
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the caller, who raises it as before
                job.error = exc
            finally:
                job.done.set()


_lanes: dict[int, _Lane] = {}
_lock = threading.Lock()


def _lane() -> _Lane:
    me = threading.current_thread()
    with _lock:
        lane = _lanes.get(me.ident or 0)
        if lane is None or lane.owner is not me or not lane.is_alive():
            # a caller thread that ended leaves its lane idle: end it (thread ids are reused)
            for k, old in list(_lanes.items()):
                if not old.owner.is_alive() or k == me.ident:
                    old.jobs.put(None)
                    del _lanes[k]
            lane = _lanes[me.ident or 0] = _Lane(me)
            lane.start()
        return lane


def run_low(fn: Callable[[], T]) -> T:
    """``fn()`` run on the calling thread's low-priority lane; this thread waits for it and
    returns its result or raises its exception (the same object). Called from a lane itself,
    it runs ``fn`` in place."""
    if isinstance(threading.current_thread(), _Lane):
        return fn()
    job = _Job(fn)
    _lane().jobs.put(job)
    job.done.wait()
    if job.error is not None:
        err = job.error
        job.error = None  # no cycle through the traceback's frames
        raise err
    return job.result  # type: ignore[return-value]


def lane_nice() -> int | None:
    """The calling thread's lane's nice level once it has run a job (for tests and logs)."""
    lane = _lanes.get(threading.get_ident())
    if lane is None or not lane.niced or lane.native_id is None:
        return None
    return os.getpriority(os.PRIO_PROCESS, lane.native_id)
