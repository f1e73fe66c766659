"""The compiled engine (mypyc) and the plain-Python one: which runs, and that they agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pyengine.engine import native_stamp
from tests.prereq import missing

ROOT = Path(__file__).resolve().parents[2]

# A seeded flow through the engine; prints which implementation ran, the events' digest and
# the state hash.
_FLOW = r"""
import hashlib, json, random, sys
import pyengine.engine as pe
from pyengine.engine import Engine
rnd = random.Random(7)
e = Engine()
h = hashlib.sha256()
def run(c, ts):
    h.update(json.dumps(e.apply(c, ts), sort_keys=True).encode())
run({"op": "add_symbol", "symbol": "BTC-USD", "base": "BTC", "quote": "USD",
     "tick_size": "0.5", "lot_size": "0.001", "maker_fee_bps": 2, "taker_fee_bps": 5}, 1)
for i in range(8):
    run({"op": "deposit", "account": f"a{i}", "asset": "USD", "amount": "100000", "tx_id": f"u{i}"}, 2)
    run({"op": "deposit", "account": f"a{i}", "asset": "BTC", "amount": "50", "tx_id": f"b{i}"}, 2)
ids = []
for ts in range(3, 4000):
    r = rnd.random()
    acct = f"a{rnd.randrange(8)}"
    if r < 0.55 or not ids:
        c = {"op": "place", "account": acct, "symbol": "BTC-USD",
             "side": rnd.choice(("buy", "sell")), "price": str(rnd.randint(180, 220) / 2),
             "qty": f"0.{rnd.randint(1, 999):03d}", "client_order_id": f"c{ts}",
             "tif": rnd.choice(("GTC", "GTC", "GTC", "IOC", "FOK")),
             "stp": rnd.choice(("none", "cancel_taker", "cancel_maker", "cancel_both"))}
        if rnd.random() < 0.05:
            c = {"op": "place", "account": acct, "symbol": "BTC-USD", "side": "buy",
                 "type": "market", "qty": "0.01"}
        ev = e.apply(c, ts)
        if ev[0]["type"] == "accepted":
            ids.append((ev[0]["account"], ev[0]["order_id"]))
        h.update(json.dumps(ev, sort_keys=True).encode())
    else:
        a, oid = rnd.choice(ids)
        if r < 0.8:
            run({"op": "amend", "account": a, "symbol": "BTC-USD", "order_id": oid,
                 "price": str(rnd.randint(180, 220) / 2)}, ts)
        else:
            run({"op": "cancel", "account": a, "symbol": "BTC-USD", "order_id": oid}, ts)
e.check_invariants()
e2 = Engine.restore(e.snapshot())
assert e2.state_hash() == e.state_hash()
print(json.dumps({"native": pe.NATIVE, "events": h.hexdigest(), "state": e.state_hash()}))
"""


def _run(code: str, cwd: Path, pure: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("MATCHX_PURE_ENGINE", None)
    if pure:
        env["MATCHX_PURE_ENGINE"] = "1"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _needs_build() -> None:
    if not native_stamp.is_current():
        missing("the compiled engine (mypyc): not built or older than its source; "
                "run python -m pyengine.ops.build_engine")


def test_compiled_and_plain_engine_agree_event_for_event():
    _needs_build()
    native = _run(_FLOW, ROOT, pure=False)
    plain = _run(_FLOW, ROOT, pure=True)
    assert native.returncode == 0, native.stderr
    assert plain.returncode == 0, plain.stderr
    a = json.loads(native.stdout)
    b = json.loads(plain.stdout)
    assert a["native"] is True and b["native"] is False
    assert a["events"] == b["events"] and a["state"] == b["state"]


def test_stale_compiled_engine_is_not_used(tmp_path):
    _needs_build()
    shutil.copytree(ROOT / "pyengine", tmp_path / "pyengine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    core = tmp_path / "pyengine" / "engine" / "core.py"
    core.write_text(core.read_text() + "\n# edited after the build\n")
    r = _run("import pyengine.engine as pe; print(pe.NATIVE)", tmp_path, pure=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert "compiled engine is stale" in r.stderr


def test_plain_engine_when_nothing_is_built(tmp_path):
    shutil.copytree(ROOT / "pyengine", tmp_path / "pyengine",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "native.stamp"))
    r = _run("import pyengine.engine as pe, pyengine.engine.core as c; print(pe.NATIVE, c.__file__)",
             tmp_path, pure=False)
    assert r.returncode == 0, r.stderr
    native, path = r.stdout.split()
    assert native == "False" and path.endswith("core.py")
    assert "stale" not in r.stderr
