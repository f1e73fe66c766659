"""The work inside a migration's pause, at engine level, in one process: before and after side by side.

    nice -n 19 .venv/bin/python bench/migration_engine.py --orders 10000 100000 \
        [--before d27e785] [--reps 3] [--report bench/reports/migration_engine.md]

From the freeze to the activation every member of the source applies ``mig_freeze`` (the export)
and one ``mig_export_chunk`` per chunk, the coordinator carries each chunk (decode the answer,
encode the next command), and every member of the destination applies one ``mig_import_chunk``
per chunk and ``mig_import``. This runs exactly those commands (``pyengine/service/migration.py``
on a bare service holding an engine) for a symbol with N resting orders of 30 accounts, with the
JSON and base64 of each message, and measures CPU time (``time.process_time``) per step: once
with the code at ``--before`` (loaded from git), once with the working tree's, interleaved, the
fastest of ``--reps`` runs each. The log round trips themselves (Aeron, Raft) are not in it.

The compiled engine and the plain one cannot share a process: the report runs one child process
per engine (``MATCHX_PURE_ENGINE``) and puts their tables together.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's pyengine, not an installed one
CHUNK = 48 * 1024  # coordinator/migrations.py CHUNK
STEPS = ("export", "chunks_src", "carry", "chunks_dst", "import")


def _load_before(rev: str) -> tuple[ModuleType, ModuleType]:
    """pyengine/engine/migration.py and pyengine/service/migration.py as they were at ``rev``."""
    tmp = Path(tempfile.mkdtemp(prefix="matchx-migbench-"))
    mods: list[ModuleType] = []
    for path, name in (("pyengine/engine/migration.py", "pyengine.engine._migration_before"),
                       ("pyengine/service/migration.py", "pyengine.service._migration_before")):
        src = subprocess.run(["git", "--git-dir", os.environ.get("MATCHX_BENCH_GIT_DIR", str(ROOT / ".git")),
                              "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        src = src.replace("from pyengine.engine.migration import", "from pyengine.engine._migration_before import")
        f = tmp / (name.rsplit(".", 1)[1] + ".py")
        f.write_text(src)
        spec = importlib.util.spec_from_file_location(name, f)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


def _book(n: int) -> tuple[Any, Any]:
    from bench.migration import book

    return book(n)


def _svc(eng: Any, owned: dict[str, int]) -> SimpleNamespace:
    return SimpleNamespace(engine=eng, owned=owned, moved={})


def _call(mig: Any, svc: Any, cmd: dict) -> dict:
    """One admin command as a member applies it: decode the log message, apply, encode the answer."""
    status, body = mig.apply(svc, orjson.loads(orjson.dumps(cmd)))
    out = orjson.loads(body)
    if status != 0:
        raise RuntimeError(f"{cmd['op']}: {out}")
    return out


def run_once(n: int, svc_mod: ModuleType) -> dict:
    """One migration's pause work; CPU seconds per step (one member of each partition)."""
    src_eng, dst_eng = _book(n)
    t = time.process_time
    src = svc_mod.Migrations()
    dst = svc_mod.Migrations()
    ssvc = _svc(src_eng, {"B": 1})
    dsvc = _svc(dst_eng, {})
    _call(dst, dsvc, {"op": "mig_prepare", "id": "m", "symbol": "B", "source": "p1", "epoch": 2})
    out = {s: 0.0 for s in STEPS}
    t0 = t()
    info = _call(src, ssvc, {"op": "mig_freeze", "id": "m", "symbol": "B", "dest": "p2", "epoch": 2})
    out["export"] = t() - t0
    size, sha = info["size"], info["sha256"]
    off = 0
    while off < size:
        t0 = t()
        status, body = src.apply(ssvc, orjson.loads(orjson.dumps(
            {"op": "mig_export_chunk", "id": "m", "offset": off, "length": CHUNK})))
        t1 = t()
        ans = orjson.loads(body)  # the coordinator: the answer, its data, the next command
        data = ans["data"]
        nbytes = len(base64.b64decode(data))
        cmd = orjson.dumps({"op": "mig_import_chunk", "id": "m", "offset": off, "data": data})
        t2 = t()
        _call(dst, dsvc, orjson.loads(cmd))
        t3 = t()
        out["chunks_src"] += t1 - t0
        out["carry"] += t2 - t1
        out["chunks_dst"] += t3 - t2
        off += nbytes
    t0 = t()
    _call(dst, dsvc, {"op": "mig_import", "id": "m", "size": size, "sha256": sha})
    out["import"] = t() - t0
    assert len(dst_eng.orders) == n and not src_eng.orders
    out["bytes"] = size
    out["chunks"] = -(-size // CHUNK)
    return out


def child(sizes: list[int], reps: int, rev: str) -> dict:
    import pyengine.service.migration as after
    from pyengine.engine import NATIVE

    _eng_before, before = _load_before(rev)
    rows = []
    for n in sizes:
        best: dict[str, dict] = {}
        for _ in range(reps):
            for label, mod in (("before", before), ("after", after)):
                r = run_once(n, mod)
                r["total"] = sum(r[s] for s in STEPS)
                prev = best.get(label)
                if prev is None or r["total"] < prev["total"]:
                    best[label] = r
        rows.append({"orders": n, **best})
    return {"native": NATIVE, "rows": rows}


def report(args: argparse.Namespace, results: list[dict], load0: tuple, load1: tuple) -> str:
    lines = [
        "# Symbol migration: the work inside the pause, at engine level",
        "",
        f"`nice -n 19 .venv/bin/python bench/migration_engine.py --orders {' '.join(map(str, args.orders))} "
        f"--before {args.before} --reps {args.reps}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average before the run "
        f"{load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f}, after {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f} "
        "(a shared machine: other sessions' work ran; CPU time, not wall time, the fastest of the repetitions).",
        "",
        "One process, no cluster: the commands of the pause as one member of each partition applies them",
        "(pyengine/service/migration.py on an engine; JSON and base64 of each message included): `mig_freeze`",
        "(the export and its SHA-256) at the source, the 48 KiB chunks (`mig_export_chunk` at the source,",
        "the coordinator's decode and re-encode, `mig_import_chunk` at the destination), `mig_import` (SHA-256",
        "and the import) at the destination. In a cluster each of the three members of a partition applies",
        "its partition's commands, so the machine's CPU for one migration is about 3 x (source + destination)",
        "+ coordinator. Before: the code at " + f"`{args.before}`" + " (export = the symbol's mini engine in the",
        "snapshot codec, ~75 bytes an order; plain-Python migration module); after: the working tree",
        "(export format version 2: columns of narrow ints, ~15-18 bytes an order; migration module compiled",
        "with the engine; the book built in one pass; staging without re-copying).",
        "",
        "| engine | orders | code | export | source chunks | coordinator | destination chunks | import "
        "| total ms | export bytes | chunks |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        eng = "compiled" if res["native"] else "plain"
        for row in res["rows"]:
            for label in ("before", "after"):
                r = row[label]
                cells = " | ".join(f"{r[s] * 1000:.1f}" for s in STEPS)
                lines.append(f"| {eng} | {row['orders']:,} | {label} | {cells} | **{r['total'] * 1000:.1f}** | "
                             f"{r['bytes']:,} | {r['chunks']} |")
            b, a = row["before"], row["after"]
            lines.append(f"| {eng} | {row['orders']:,} | before / after | "
                         + " | ".join(f"{b[s] / a[s]:.1f}x" if a[s] > 0 else "-" for s in STEPS)
                         + f" | **{b['total'] / a['total']:.1f}x** | {b['bytes'] / a['bytes']:.1f}x | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--orders", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--before", default="d27e785", help="git revision of the code to compare with")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--report", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.orders, args.reps, args.before)))
        return 0
    load0 = os.getloadavg()
    results = []
    for pure in (False, True):
        env = dict(os.environ)
        env.pop("MATCHX_PURE_ENGINE", None)
        if pure:
            env["MATCHX_PURE_ENGINE"] = "1"
        cmd = [sys.executable, __file__, "--child", "--before", args.before, "--reps", str(args.reps),
               "--orders", *map(str, args.orders)]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    text = report(args, results, load0, os.getloadavg())
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
