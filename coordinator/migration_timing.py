"""Per-step timing of a migration as the driver runs it (coordinator/migrations.py).

Operators asked where a migration's pause goes: every step the driver takes (a command sent to a
partition and its answer, a durable write of the record, the route flip) gets its monotonic start
and end. They are kept in memory while the driver runs and written into the migration record's
``info["timing"]`` with each state change (no extra durable write inside the pause), so
``GET /v1/migrations/{id}`` and ``matchctl migrations --timing`` show them, and the driver logs
one line of them at INFO when the symbol is switched.

Times are milliseconds from the moment the freeze was sent (``base``); steps before it (the
destination's prepare) are negative. ``base_monotonic`` is that moment on the machine's monotonic
clock (``time.monotonic()``, one clock for every process of a Linux host), so a client on the same
machine can line its own events up with the driver's (bench/migration.py does). After a restart
of the coordinator a run that resumes past the freeze has no freeze step: its base is its own
first step and ``resumed`` is true.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StepClock:
    """The steps of one driver run of one migration: ``(name, start, end)`` monotonic seconds."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float, float]] = []

    def add(self, name: str, start: float, end: float) -> None:
        self.steps.append((name, start, end))

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.add(name, t, time.monotonic())

    def base(self) -> tuple[float | None, bool]:
        """(the freeze's start, or the first step's when this run resumed past it; resumed)."""
        for name, start, _end in self.steps:
            if name == "freeze":
                return start, False
        return (self.steps[0][1], True) if self.steps else (None, False)

    def end_of(self, name: str) -> float | None:
        """Milliseconds from the base to the end of the last step called ``name``."""
        base, _ = self.base()
        ends = [e for n, _s, e in self.steps if n == name]
        return None if base is None or not ends else round((ends[-1] - base) * 1000, 2)

    def to_json(self) -> dict[str, Any]:
        base, resumed = self.base()
        if base is None:
            return {"steps": []}
        return {
            "base_monotonic": base,
            "resumed": resumed,
            # the figures: freeze sent -> activation answered, and -> the route flipped
            "activated_ms": self.end_of("activate"),
            "route_ms": self.end_of("route flip"),
            "steps": [[n, round((s - base) * 1000, 2), round((e - base) * 1000, 2)] for n, s, e in self.steps],
        }


def render(timing: dict[str, Any]) -> list[str]:
    """The steps of a stored ``info["timing"]`` as lines: start and end (ms from the freeze
    sent), duration, name; the export chunks (``export@OFFSET``) folded into one line and the
    import chunks (``import@OFFSET``) into another, where the first of each began."""
    rows: list[list[Any]] = []
    groups: dict[str, list[Any]] = {}
    for name, start, end in timing.get("steps") or []:
        kind = name.split("@")[0] if "@" in name else None
        if kind is None:
            rows.append([name, start, end, 0, 0.0])
        elif kind in groups:
            g = groups[kind]
            g[1], g[2], g[3], g[4] = min(g[1], start), max(g[2], end), g[3] + 1, g[4] + (end - start)
        else:
            groups[kind] = [kind, start, end, 1, end - start]
            rows.append(groups[kind])
    out = []
    for name, start, end, n, busy in rows:
        what = f"{name} chunks x{n} (each sent to answered, summed: {busy:.1f} ms)" if n else name
        out.append(f"{start:9.1f} .. {end:9.1f} ms {end - start:8.1f} ms  {what}")
    return out


def one_line(timing: dict[str, Any]) -> str:
    """The steps on one line for the log: ``name start-end`` in ms from the freeze sent."""
    return ", ".join(f"{n} {s:.1f}-{e:.1f}" for n, s, e in timing.get("steps") or [])
