"""``matchctl migrate`` and ``matchctl migrations``: symbol migration through the coordinator's
REST API (the coordinator process runs the driver; docs/migration.md).

    matchctl migrate BTC-USDT --to p2 --dir var/system
    matchctl migrate SOL-USDT XRP-USDT --to p1          # one after the other, each its own pause
    matchctl migrate --abort ID
    matchctl migrations [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("done", "aborted")


class MigrateError(Exception):
    """What the coordinator refused, as one line for the operator."""


def _url(directory: Path) -> str:
    from pyengine.ops.system import System

    return System(directory).coordinator_url


def _check(r: httpx.Response) -> Any:
    if r.is_success:
        return r.json()
    try:
        err = r.json()["error"]
        raise MigrateError(f"{err['code']}: {err['message']}")
    except (ValueError, KeyError, TypeError):
        raise MigrateError(f"HTTP {r.status_code}: {r.text[:200]}") from None


def start(url: str, symbol: str, to: str, mid: str | None = None) -> dict:
    body = {"symbol": symbol, "to": to}
    if mid:
        body["id"] = mid
    with httpx.Client(base_url=url, timeout=10) as http:
        return _check(http.post("/v1/migrations", json=body))


def follow(url: str, mid: str, timeout: float, out=sys.stdout) -> dict:
    """Poll a migration until it is done or aborted, printing each state it passes."""
    deadline = time.monotonic() + timeout
    seen = None
    with httpx.Client(base_url=url, timeout=10) as http:
        while True:
            rec = _check(http.get(f"/v1/migrations/{mid}"))
            if rec["state"] != seen:
                seen = rec["state"]
                print(f"  {rec['symbol']} {rec['source']} -> {rec['dest']}: {seen}", file=out, flush=True)
            if seen in TERMINAL:
                return rec
            if time.monotonic() > deadline:
                raise MigrateError(f"migration {mid} is still {seen} after {timeout:.0f} s "
                                   f"(it goes on in the coordinator; `matchctl migrations` follows it)")
            time.sleep(0.1)


def summary(rec: dict) -> str:
    info = rec["info"]
    if rec["state"] == "aborted":
        return f"{rec['symbol']}: aborted ({rec.get('error') or 'on request'}); {rec['source']} owns it again"
    pause = info.get("pause_ms")
    return (f"{rec['symbol']}: moved {info.get('orders', 0):,} orders, funds of {info.get('accounts', 0):,} "
            f"accounts, pause {pause if pause is not None else '?'} ms ({rec['source']} -> {rec['dest']}, "
            f"epoch {rec['epoch']}, migration {rec['id']})")


def cmd_migrate(args: argparse.Namespace) -> int:
    url = _url(args.dir)
    try:
        if args.abort:
            with httpx.Client(base_url=url, timeout=10) as http:
                rec = _check(http.delete(f"/v1/migrations/{args.abort}"))
            rec = follow(url, rec["id"], args.timeout)
            print(summary(rec))
            return 0 if rec["state"] == "aborted" else 1
        if not args.symbols or not args.to:
            raise MigrateError("give SYMBOL... and --to PARTITION (or --abort ID)")
        if args.id and len(args.symbols) > 1:
            raise MigrateError("--id names one migration: give one symbol with it")
        failed = 0
        for symbol in args.symbols:  # one at a time: each symbol its own short pause
            rec = start(url, symbol, args.to, args.id)
            print(f"migration {rec['id']}: {symbol} {rec['source']} -> {rec['dest']}", flush=True)
            rec = follow(url, rec["id"], args.timeout)
            print(summary(rec), flush=True)
            failed += rec["state"] != "done"
        return 1 if failed else 0
    except (MigrateError, httpx.HTTPError) as exc:
        print(f"matchctl migrate: {exc}", file=sys.stderr)
        return 2


def cmd_migrations(args: argparse.Namespace) -> int:
    try:
        with httpx.Client(base_url=_url(args.dir), timeout=10) as http:
            recs = _check(http.get("/v1/migrations"))
    except (MigrateError, httpx.HTTPError) as exc:
        print(f"matchctl migrations: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(recs, indent=2))
        return 0
    print(f"{'id':<18} {'symbol':<12} {'from':<6} {'to':<6} {'state':<11} {'orders':>7} {'pause ms':>9}  why aborted")
    for r in recs:
        pause = r["info"].get("pause_ms")
        print(f"{r['id']:<18} {r['symbol']:<12} {r['source']:<6} {r['dest']:<6} {r['state']:<11} "
              f"{r['info'].get('orders', ''):>7} {'' if pause is None else pause:>9}"
              + (f"  {r['error']}" if r.get("error") and r["state"] in ("aborting", "aborted") else ""))
        if args.timing:
            for line in timing_lines(r):
                print(f"    {line}")
    return 0


def timing_lines(rec: dict) -> list[str]:
    """The driver's steps of a migration (coordinator/migration_timing.py): ms from the freeze
    sent; empty for a migration recorded before the steps were timed."""
    from coordinator.migration_timing import render

    timing = rec["info"].get("timing")
    if not timing or not timing.get("steps"):
        return []
    head = (f"steps (ms from the freeze sent{'; resumed after a coordinator restart' if timing.get('resumed') else ''}"
            f"): activation answered at {timing.get('activated_ms')}, route flipped at {timing.get('route_ms')}")
    return [head, *render(timing)]


def add_parsers(sub: Any, default_dir: Path) -> None:
    """``migrate`` and ``migrations`` under matchctl's subcommands."""
    mig = sub.add_parser("migrate", help="move symbols (book, held funds, idempotency state) to a partition")
    mig.add_argument("symbols", nargs="*", metavar="SYMBOL")
    mig.add_argument("--to", metavar="PARTITION")
    mig.add_argument("--id", help="migration id (idempotency key; one symbol only)")
    mig.add_argument("--abort", metavar="ID", help="abort a migration before its point of no return")
    mig.add_argument("--timeout", type=float, default=300.0, help="seconds to follow each migration")
    mig.set_defaults(func=cmd_migrate)
    migs = sub.add_parser("migrations", help="every migration: id, symbol, from, to, state, pause")
    migs.add_argument("--json", action="store_true")
    migs.add_argument("--timing", action="store_true",
                      help="each migration's steps as the driver timed them (ms from the freeze sent)")
    migs.set_defaults(func=cmd_migrations)
    for p in (mig, migs):
        p.add_argument("--dir", type=Path, default=default_dir, help=f"system directory (default {default_dir})")
