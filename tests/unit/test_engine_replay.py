"""Determinism across processes (different PYTHONHASHSEED) and the replay tool."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import orjson

from pyengine.engine import Engine
from pyengine.ops.replay import main, replay

ROOT = Path(__file__).resolve().parents[2]


def gen_stream(n: int = 3000, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    syms = [f"S{i}-Q" for i in range(4)]
    accts = [f"acct{i}" for i in range(12)]
    cmds: list[dict] = []
    for i, s in enumerate(syms):
        cmds.append({"op": "add_symbol", "symbol": s, "base": f"S{i}", "quote": "Q",
                     "tick_size": "0.01", "lot_size": "0.1", "maker_fee_bps": i,
                     "taker_fee_bps": 2 * i, "stp_default": ["cancel_taker", "cancel_maker",
                                                             "cancel_both", "none"][i]})
    for a in accts:
        cmds.append({"op": "deposit", "account": a, "asset": "Q", "amount": "1000000",
                     "tx_id": f"{a}-q"})
        for i in range(4):
            cmds.append({"op": "deposit", "account": a, "asset": f"S{i}", "amount": "10000",
                         "tx_id": f"{a}-{i}"})
    for k in range(n):
        a = rnd.choice(accts)
        s = rnd.choice(syms)
        r = rnd.random()
        if r < 0.6:
            c = {"op": "place", "account": a, "symbol": s, "side": rnd.choice(["buy", "sell"]),
                 "price": f"{rnd.randint(9900, 10100) / 100:.2f}",
                 "qty": f"{rnd.randint(1, 50) / 10:.1f}", "client_order_id": f"k{k}",
                 "tif": rnd.choice(["GTC"] * 6 + ["IOC", "FOK"])}
            if rnd.random() < 0.05:
                c = {**c, "type": "market", "tif": "IOC"}
                del c["price"]
            cmds.append(c)
        elif r < 0.8:
            cmds.append({"op": "cancel", "account": a, "symbol": s,
                         "client_order_id": f"k{rnd.randint(0, k)}"})
        elif r < 0.95:
            cmds.append({"op": "amend", "account": a, "symbol": s,
                         "client_order_id": f"k{rnd.randint(0, k)}",
                         "price": f"{rnd.randint(9900, 10100) / 100:.2f}"})
        else:
            cmds.append({"op": "cancel_all", "account": a})
    return cmds


def test_same_stream_same_events_and_hash_across_hash_seeds(tmp_path):
    cmds = gen_stream()
    f = tmp_path / "cmds.jsonl"
    f.write_bytes(b"".join(orjson.dumps(c) + b"\n" for c in cmds))
    outs = []
    for seed in ("0", "12345", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, "-m", "pyengine.ops.replay", str(f), "--state-hash"],
                           capture_output=True, env=env, check=True, cwd=ROOT, timeout=120)
        outs.append(p.stdout)
    assert outs[0] == outs[1] == outs[2]
    lines = outs[0].splitlines()
    assert b'"type":"trade"' in outs[0]
    # in-process engine agrees with the subprocesses
    eng = Engine()
    for i, c in enumerate(cmds, 1):
        eng.apply(c, i)
    assert orjson.loads(lines[-1])["hash"] == eng.state_hash()
    eng.check_invariants()
    # snapshot mid-stream, restore, continue: same final hash
    e1 = Engine()
    half = len(cmds) // 2
    for i, c in enumerate(cmds[:half], 1):
        e1.apply(c, i)
    e2 = Engine.restore(e1.snapshot())
    for i, c in enumerate(cmds[half:], half + 1):
        assert e1.apply(c, i) == e2.apply(c, i)
    assert e2.state_hash() == eng.state_hash()


def test_replay_bad_lines_and_ts():
    src = b"\n".join([
        b'{"op":"add_symbol","symbol":"S","base":"B","quote":"Q","tick_size":"1","lot_size":"1"}',
        b"# a comment",
        b"",
        b"not json",
        b'{"op":"deposit","account":"a","asset":"Q","amount":"10","tx_id":"1","ts":500}',
        b'{"op":"place","account":"a","symbol":"S","side":"buy","price":"2","qty":"1"}',
        b'{"op":"order","account":"a","order_id":1}',
        b'{"op":"book","symbol":"S","ts":"x"}',
        b'{"op":"nope"}',
        b"[1,2]",
    ]) + b"\n"
    out = io.BytesIO()
    replay(io.BytesIO(src), out, state_hash=True)
    evs = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert [e["type"] for e in evs] == ["symbol_added", "rejected", "deposited", "accepted",
                                        "order", "rejected", "rejected", "rejected",
                                        "state_hash"]
    assert evs[1]["line"] == 4 and evs[1]["reason"] == "bad_request"
    assert evs[4]["ts"] == 501  # previous ts + 1
    assert evs[5]["line"] == 8 and evs[6]["line"] == 9 and evs[7]["line"] == 10
    assert evs[-1]["commands"] == 5


def test_replay_main_file(tmp_path, capsysbinary):
    f = tmp_path / "in.jsonl"
    f.write_text('{"op":"add_symbol","symbol":"S","base":"B","quote":"Q","tick_size":"1",'
                 '"lot_size":"1"}\n')
    assert main([str(f)]) == 0
    assert b"symbol_added" in capsysbinary.readouterr().out
    assert main([str(tmp_path / "missing.jsonl")]) == 2
