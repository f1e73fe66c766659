"""Applying a bulk (pyengine/wire/bulk.py) to the engine through its compact API, and writing
each command's answer in the bulk answer layout.

Compiled with the engine (mypyc): this is the hot loop of mass quoting.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyengine.wire.bulk import (
    ANS_ACCEPTED,
    ANS_AMENDED,
    ANS_CANCELLED,
    ANS_COUNT,
    ANS_DUPLICATE,
    ANS_REJECTED,
    ANS_TRADE,
    CANCEL_CODE,
    F_BY_CLIENT_ORDER_ID,
    F_MARKET,
    F_POST_ONLY,
    KNOWN_FLAGS,
    MAX_ANSWER_BYTES,
    OTHER_REASON,
    REJECT_CODE,
    Bulk,
    BulkError,
)

from .core import Engine, placement_events
from .errors import Reject
from .model import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_DUPLICATE,
    EV_REJECTED,
    EV_TRADE,
    MAX_TS,
    OP_AMEND,
    OP_CANCEL,
    OP_PLACE,
    Symbol,
)
from .numbers import parse_dec, to_scale


def apply_bulk(engine: Engine, bulk: Bulk, ts: int, max_answer_bytes: int = MAX_ANSWER_BYTES) -> bytes:
    """Applies every command of ``bulk`` in order and returns the encoded answer."""
    accounts, symbols = bulk.accounts, bulk.symbols
    n_acc, n_sym = len(accounts), len(symbols)
    out: list[bytes] = [ANS_COUNT.pack(len(bulk.records))]
    if type(ts) is not int or not 0 <= ts <= MAX_TS:
        raise BulkError("ts must be an integer in [0, 2**63)")
    size = 0
    evs: list
    for op, flags, side, tif, stp, a, s, price, qty, ref in bulk.records:
        # the engine's compact entry points directly: struct already gave every field its type
        engine.ncmd += 1
        try:
            if size >= max_answer_bytes:
                raise Reject("not_applied", "the bulk's answer reached its size limit")
            if a >= n_acc or s >= n_sym or flags & ~KNOWN_FLAGS:
                raise Reject("bad_request", "account/symbol index or flags out of range")
            if op == OP_PLACE:
                evs = engine._place_compact(accounts[a], symbols[s], side, price, qty,
                                            str(ref) if ref else None, tif, 1 if flags & F_MARKET else 0,
                                            bool(flags & F_POST_ONLY), stp, ts)
            elif op == OP_CANCEL or op == OP_AMEND:
                if ref == 0:
                    raise Reject("bad_request", "order_id or client_order_id is required")
                order: object = str(ref) if flags & F_BY_CLIENT_ORDER_ID else ref
                if op == OP_CANCEL:
                    evs = [engine._cancel_core(engine._open_by_ref(accounts[a], symbols[s], order))]
                else:
                    evs = engine._amend_compact(accounts[a], symbols[s], order, price, qty)
            else:
                raise Reject("bad_request", f"unknown bulk op {op}")
        except Reject as r:
            evs = [(EV_REJECTED, r.reason, r.detail)]
        except Exception as exc:  # as apply_compact: never a crash on a member
            evs = [(EV_REJECTED, "bad_request", f"malformed command ({type(exc).__name__})")]
        # encoded now: the orders the events name change with the next command
        mark = len(out)
        out.append(b"")
        size += 2 + _encode_events(evs, out)
        out[mark] = ANS_COUNT.pack(len(out) - mark - 1)
    return b"".join(out)


def _encode_events(evs: Iterable, out: list[bytes]) -> int:
    """Appends one bytes object per event; returns the bytes added."""
    added = 0
    for e in evs:
        k = e[0]
        if k == EV_ACCEPTED:
            out.append(ANS_ACCEPTED.pack(EV_ACCEPTED, e[1].oid))
            added += 9
        elif k == EV_TRADE:
            out.append(ANS_TRADE.pack(EV_TRADE, e[1], e[2], e[3], e[4].oid, e[5].oid, e[6], e[7]))
            added += 57
        elif k == EV_CANCELLED:
            out.append(ANS_CANCELLED.pack(EV_CANCELLED, e[1].oid, e[2], CANCEL_CODE.get(e[3], OTHER_REASON)))
            added += 18
        elif k == EV_AMENDED:
            out.append(ANS_AMENDED.pack(EV_AMENDED, e[1].oid, e[2], e[3], e[4], e[5], e[6] == "kept"))
            added += 42
        elif k == EV_REJECTED:
            code = REJECT_CODE.get(e[1], OTHER_REASON)
            detail = (e[2] if code != OTHER_REASON else f"{e[1]}: {e[2]}").encode()[:255]
            out.append(ANS_REJECTED.pack(EV_REJECTED, code, len(detail)) + detail)
            added += 3 + len(detail)
        elif k == EV_DUPLICATE:
            o = e[1]
            out.append(ANS_DUPLICATE.pack(EV_DUPLICATE, o.oid))
            evs = placement_events(o)
            if evs and isinstance(evs[0], dict):
                # encoded by a snapshot: the original events as the JSON API's dicts
                added += 9 + _encode_restored(evs, o.sym, out)
            else:
                added += 9 + _encode_events(evs, out)
        else:  # pragma: no cover - the compact API has no other kinds
            raise AssertionError(f"unexpected event kind {k}")
    return added


def _scaled(text: object, scale: int, unit: int) -> int:
    c, d = parse_dec(text)
    v = to_scale(c, d, scale)
    assert v is not None
    return v // unit


def _encode_restored(evs: list, sym: Symbol, out: list[bytes]) -> int:
    """``_encode_events`` for placement events a snapshot holds as JSON (the orders they name
    may be gone): the same bytes as from the live events."""
    added = 0
    for d in evs:
        kind = d["type"]
        if kind == "accepted":
            out.append(ANS_ACCEPTED.pack(EV_ACCEPTED, d["order_id"]))
            added += 9
        elif kind == "trade":
            out.append(ANS_TRADE.pack(
                EV_TRADE, d["trade_id"], _scaled(d["price"], sym.tick_d, sym.tick_c),
                _scaled(d["qty"], sym.lot_d, sym.lot_c), d["maker_order_id"], d["taker_order_id"],
                _scaled(d["maker_fee"], sym.quote_dec, 1), _scaled(d["taker_fee"], sym.quote_dec, 1)))
            added += 57
        elif kind == "cancelled":
            rest = _scaled(d["remaining_qty"], sym.lot_d, sym.lot_c)
            code = CANCEL_CODE.get(d["reason"], OTHER_REASON)
            out.append(ANS_CANCELLED.pack(EV_CANCELLED, d["order_id"], rest, code))
            added += 18
        else:  # pragma: no cover - a placement's events are only these
            raise AssertionError(f"unexpected restored event {kind}")
    return added


