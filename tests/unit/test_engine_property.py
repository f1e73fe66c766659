"""Property-based tests: the engine against the plain reference model, invariants each step."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyengine.engine import Engine
from tests.unit.reference_model import RefModel

ACCOUNTS = ["a", "b", "c"]
SYMS = {
    "X-Q": {"tick_size": "0.5", "lot_size": "0.1", "base": "X", "quote": "Q"},
    "Y-Q": {"tick_size": "1", "lot_size": "1", "base": "Y", "quote": "Q"},
}


def norm(events):
    out = []
    for e in events:
        if e["type"] == "rejected":
            out.append({"type": "rejected", "reason": e["reason"]})
        elif e["type"] == "symbol_added":
            out.append({"type": "symbol_added", "symbol": e["symbol"]})
        else:
            out.append(e)
    return out


def price_s(draw, sym):
    t = draw(st.integers(190, 210))
    if sym == "X-Q":
        if draw(st.integers(0, 30)) == 0:
            return "100.25"  # off tick
        return str(t / 2) if t % 2 else str(t // 2)
    return str(t // 2)


@st.composite
def commands(draw):
    fees = draw(st.sampled_from([(0, 0), (0, 10), (5, 20), (25, 7)]))
    stp_default = draw(st.sampled_from(["cancel_taker", "cancel_maker", "cancel_both", "none"]))
    band = draw(st.sampled_from([1000, 200, 0]))
    cmds = []
    for name, s in SYMS.items():
        cmds.append({"op": "add_symbol", "symbol": name, **s, "maker_fee_bps": fees[0],
                     "taker_fee_bps": fees[1], "stp_default": stp_default,
                     "market_band_bps": band, "max_qty": "50"})
    tx = 0
    for a in ACCOUNTS:
        for asset, amt in (("X", draw(st.sampled_from(["3", "20", "0.7"]))),
                           ("Y", "30"),
                           ("Q", draw(st.sampled_from(["150", "3000", "40.25"])))):
            tx += 1
            cmds.append({"op": "deposit", "account": a, "asset": asset, "amount": amt,
                         "tx_id": f"t{tx}"})
    n = draw(st.integers(5, 60))
    for _ in range(n):
        kind = draw(st.sampled_from(
            ["place"] * 8 + ["cancel"] * 2 + ["amend"] * 4 + ["cancel_all", "funds", "query"]))
        acct = draw(st.sampled_from(ACCOUNTS + (["zz"] if draw(st.integers(0, 40)) == 0
                                               else [])))
        sym = draw(st.sampled_from(list(SYMS)))
        if kind == "place":
            otype = draw(st.sampled_from(["limit"] * 5 + ["market"]))
            c = {"op": "place", "account": acct, "symbol": sym,
                 "side": draw(st.sampled_from(["buy", "sell"])), "type": otype,
                 "qty": str(draw(st.integers(1, 6)))}
            if sym == "X-Q":
                c["qty"] = "0." + str(draw(st.integers(1, 9))) if draw(st.booleans()) else str(
                    draw(st.integers(1, 3)))
            if otype == "limit":
                c["price"] = price_s(draw, sym)
                c["tif"] = draw(st.sampled_from(["GTC", "GTC", "GTC", "IOC", "FOK"]))
                if c["tif"] == "GTC" and draw(st.integers(0, 5)) == 0:
                    c["post_only"] = True
            else:
                c["tif"] = draw(st.sampled_from(["IOC", "FOK"]))
            if draw(st.booleans()):
                c["stp"] = draw(st.sampled_from(
                    ["none", "cancel_taker", "cancel_maker", "cancel_both"]))
            if draw(st.integers(0, 3)):
                c["client_order_id"] = f"c{draw(st.integers(0, 8))}"
            cmds.append(c)
        elif kind in ("cancel", "amend"):
            c = {"op": kind, "account": acct, "symbol": sym}
            if draw(st.booleans()):
                c["order_id"] = draw(st.integers(1, 16))
            else:
                c["client_order_id"] = f"c{draw(st.integers(0, 8))}"
            if kind == "amend":
                if draw(st.booleans()):
                    c["price"] = price_s(draw, sym)
                if draw(st.booleans()) or "price" not in c:
                    c["qty"] = str(draw(st.integers(1, 7))) if sym == "Y-Q" else \
                        "0." + str(draw(st.integers(1, 9)))
            cmds.append(c)
        elif kind == "cancel_all":
            c = {"op": "cancel_all", "account": acct}
            if draw(st.booleans()):
                c["symbol"] = sym
            cmds.append(c)
        elif kind == "funds":
            tx += 1
            asset = draw(st.sampled_from(["X", "Y", "Q"]))
            cmds.append({"op": draw(st.sampled_from(["deposit", "withdraw"])), "account": acct,
                         "asset": asset, "amount": draw(st.sampled_from(["1", "5", "0.5"])),
                         "tx_id": f"t{draw(st.integers(tx - 3, tx))}"})
        else:
            q = draw(st.sampled_from(["book", "balances", "order", "open_orders", "fills", "trades"]))
            if q == "book":
                cmds.append({"op": "book", "symbol": sym, "depth": 5})
            elif q == "trades":
                cmds.append({"op": "trades", "symbol": sym, "since": draw(st.integers(0, 6))})
            elif q in ("open_orders", "fills"):
                c = {"op": q, "account": acct}
                if draw(st.booleans()):
                    c["symbol"] = sym
                if q == "fills" and draw(st.booleans()):
                    c["since"] = draw(st.integers(0, 8))
                    c["limit"] = draw(st.integers(1, 4))
                cmds.append(c)
            elif q == "balances":
                cmds.append({"op": "balances", "account": acct})
            else:
                c = {"op": "order", "account": acct}
                if draw(st.booleans()):
                    c["order_id"] = draw(st.integers(1, 16))
                else:
                    c["client_order_id"] = f"c{draw(st.integers(0, 8))}"
                cmds.append(c)
    return cmds


@settings(max_examples=int(os.environ.get("ENGINE_EXAMPLES", "250")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(commands())
def test_engine_matches_reference(cmds):
    eng = Engine()
    ref = RefModel()
    for i, c in enumerate(cmds):
        ts = 1000 + i
        got = norm(eng.apply(c, ts))
        want = norm(ref.apply(c, ts))
        if got != want and os.environ.get("ENGINE_DUMP"):
            with open(os.environ["ENGINE_DUMP"], "w") as f:
                json.dump(cmds[: i + 1], f)
        assert got == want, (i, c)
        eng.check_invariants()
        ref.check()
        for e in got:
            event(e["type"] + ":" + str(e.get("reason", "")) + ("dup" if "duplicate" in e else ""))
    for a in ACCOUNTS:
        for c in ({"op": "balances", "account": a}, {"op": "open_orders", "account": a},
                  {"op": "fills", "account": a}):
            assert norm(eng.apply(c, 0)) == norm(ref.apply(c, 0))
    for s in SYMS:
        for c in ({"op": "book", "symbol": s, "depth": 100}, {"op": "trades", "symbol": s}):
            assert eng.apply(c, 0) == ref.apply(c, 0)
    # snapshot round trip keeps the state, the hash, and the behaviour
    blob = eng.snapshot()
    eng2 = Engine.restore(blob)
    assert eng2.snapshot() == blob
    assert eng2.state_hash() == eng.state_hash()
    eng2.check_invariants()
    for a in ACCOUNTS:  # the fills and sequences survive the snapshot
        c = {"op": "fills", "account": a}
        assert eng2.apply(c, 0) == eng.apply(c, 0)
    probe = {"op": "place", "account": "a", "symbol": "X-Q", "side": "buy", "price": "105",
             "qty": "0.5", "tif": "IOC"}
    assert eng2.apply(probe, 1) == eng.apply(probe, 1)
    assert eng2.snapshot() == eng.snapshot()
