"""The deterministic matching engine (pure Python, integers inside).

See docs/engine.md for the contract. Internals:

* prices are integer ticks, quantities integer lots, balances integer asset units;
* a book side is ``dict price -> Level`` plus a sorted key list (best price at the end:
  bids keep ``price`` ascending, asks keep ``-price`` ascending) searched with ``bisect``;
* a ``Level`` is an intrusive doubly linked list of orders in time priority, so cancels and
  amends unlink in O(1);
* nothing iterates over a set or over dict keys whose order is not the command order.

The module is plain, fully typed Python. ``make build`` also compiles it (with numbers.py
and snapshot.py) with mypyc into C extensions that Python imports in preference to the
source; ``MATCHX_PURE_ENGINE=1`` runs the source instead (see pyengine/engine/__init__.py).
Both paths run the same tests.
"""

from __future__ import annotations

from typing import Final

from pyengine.wire.codec import CodecError, decode_command, encode_events

from .errors import Reject
from .model import (
    BUY,
    CANCELLED,
    DEFAULT_ASSET_DECIMALS,
    DEFAULT_BAND_BPS,
    DEFAULT_DEDUP_WINDOW,
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_DUPLICATE,
    EV_REJECTED,
    EV_TRADE,
    FILL,
    FILLED,
    FILLS_WINDOW,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    MAX_DEPTH,
    MAX_ID_LEN,
    MAX_LOTS,
    MAX_OPEN_LIST,
    MAX_TICKS,
    MAX_TS,
    NO_BUY_LIMIT,
    NO_SELL_LIMIT,
    OP_AMEND,
    OP_CANCEL,
    OP_PLACE,
    OPEN,
    SELL,
    SIDE_NAMES,
    STATUS_NAMES,
    STP_CANCEL_BOTH,
    STP_CANCEL_MAKER,
    STP_CANCEL_TAKER,
    STP_NAMES,
    STPS,
    TIF_NAMES,
    TYPE_NAMES,
    Account,
    Bal,
    EngineState,
    Order,
    Symbol,
    checked_ident,
    fee_of,
    fill_record,
    stale,
    trade_record,
)
from .numbers import POW10, decimals_of, fmt_scaled, parse_dec, to_scale
from .snapcache import SnapCache
from .snapshot import dump, load, state_hash

_REJ_ECHO: Final = ("account", "symbol", "client_order_id", "order_id", "tx_id")


def _rejected(cmd: object, reason: str, detail: str) -> dict:
    ev: dict = {"type": "rejected", "reason": reason}
    if type(cmd) is dict:
        op = cmd.get("op")
        if isinstance(op, str) and len(op) <= MAX_ID_LEN:
            ev["op"] = op
        for k in _REJ_ECHO:
            v = cmd.get(k)
            if (isinstance(v, str) and len(v) <= 256) or type(v) is int:
                ev[k] = v
    ev["detail"] = detail
    return ev


def event_dict(e: object) -> dict:
    """The documented JSON event of a compact event (a dict event is copied)."""
    if not isinstance(e, tuple):
        assert isinstance(e, dict)
        return dict(e)
    k = e[0]
    if k == EV_TRADE:
        m: Order = e[4]
        t: Order = e[5]
        return _trade_dict(t.sym, e[1], e[2], e[3], m.oid, m.acct.name, t, e[6], e[7])
    if k == EV_ACCEPTED:
        o: Order = e[1]
        sym = o.sym
        return {
            "type": "accepted",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": o.acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[o.side],
            "order_type": TYPE_NAMES[o.otype],
            "tif": TIF_NAMES[o.tif],
            "post_only": o.post_only,
            "stp": STP_NAMES[o.stp],
            "price": None if o.otype == MARKET else sym.price_str(o.oprice),
            "qty": sym.qty_str(o.oqty),
        }
    if k == EV_AMENDED:
        o = e[1]
        sym = o.sym
        return {
            "type": "amended",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": o.acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[o.side],
            "price": sym.price_str(e[2]),
            "qty": sym.qty_str(e[3]),
            "old_price": sym.price_str(e[4]),
            "old_qty": sym.qty_str(e[5]),
            "priority": e[6],
        }
    if k == EV_CANCELLED:
        o = e[1]
        return _cancelled_dict(o.sym, o.oid, o.coid, o.acct.name, o.side, e[2], e[3])
    if k == EV_REJECTED:
        return {"type": "rejected", "reason": e[1], "detail": e[2]}
    raise ValueError(f"not an event: {e!r}"[:200])


def _trade_dict(sym: Symbol, trade_id: int, price: int, qty: int, maker_oid: int, maker_account: str,
                taker: Order, mf: int, tf: int) -> dict:
    """A trade's JSON event; the taker is always a live order (the placing one)."""
    return {
        "type": "trade",
        "symbol": sym.name,
        "trade_id": trade_id,
        "price": sym.price_str(price),
        "qty": sym.qty_str(qty),
        "maker_order_id": maker_oid,
        "taker_order_id": taker.oid,
        "maker_account": maker_account,
        "taker_account": taker.acct.name,
        "taker_side": SIDE_NAMES[taker.side],
        "maker_fee": fmt_scaled(mf, sym.quote_dec) if mf else "0",
        "taker_fee": fmt_scaled(tf, sym.quote_dec) if tf else "0",
    }


def _cancelled_dict(sym: Symbol, oid: int, coid: str | None, account: str, side: int, remaining: int,
                    reason: str) -> dict:
    return {
        "type": "cancelled",
        "order_id": oid,
        "client_order_id": coid,
        "account": account,
        "symbol": sym.name,
        "side": SIDE_NAMES[side],
        "remaining_qty": sym.qty_str(remaining),
        "reason": reason,
    }


def event_dicts(evs: list) -> list[dict]:
    """``event_dict`` of each compact event; a duplicate expands to the original events."""
    out: list[dict] = []
    for e in evs:
        if e[0] == EV_DUPLICATE:
            out.extend(_dup_events(e[1]))
        else:
            out.append(event_dict(e))
    return out


def _release(o: Order, rem: int) -> None:
    h = rem * o.unit
    if h:
        hb = o.hb
        hb.held -= h
        hb.avail += h


def _balance(acct: Account, asset: str) -> Bal:
    b = acct.bal.get(asset)
    if b is None:
        b = Bal()
        acct.bal[asset] = b
    return b


class Engine(EngineState):
    """Deterministic matching engine. ``apply(cmd, ts)`` never raises on bad input."""

    def __init__(self, dedup_window: object = DEFAULT_DEDUP_WINDOW) -> None:
        super().__init__(dedup_window)
        # snapshots re-encode only what changed since the last one (snapcache.py, #17)
        self.snap_cache = SnapCache()

    # ------------------------------------------------------------------ entry points
    def apply(self, cmd: object, ts: object) -> list[dict]:
        # typed ``object``: the compiled engine must turn any argument into a reject, not a
        # TypeError at the call boundary
        try:
            if type(cmd) is not dict:
                raise Reject("bad_request", "command must be a JSON object")
            if type(ts) is not int or not 0 <= ts <= MAX_TS:
                raise Reject("bad_request", "ts must be an integer in [0, 2**63)")
            self.ncmd += 1
            op = cmd.get("op")
            # the steady flow first: amends and places dominate a real order flow
            if op == "amend":
                return self._amend(cmd)
            if op == "place":
                return self._place(cmd, ts)
            if op == "cancel":
                return self._cancel(cmd)
            if op == "cancel_all":
                return self._cancel_all(cmd)
            if op == "deposit":
                return self._funds(cmd, "deposit")
            if op == "withdraw":
                return self._funds(cmd, "withdraw")
            if op == "add_symbol":
                return self._add_symbol(cmd)
            if op == "book":
                return self._q_book(cmd)
            if op == "order":
                return self._q_order(cmd)
            if op == "balances":
                return self._q_balances(cmd)
            if op == "open_orders":
                return self._q_open_orders(cmd)
            if op == "fills":
                return self._q_fills(cmd)
            if op == "trades":
                return self._q_trades(cmd)
            raise Reject("bad_request", f"unknown op {op!r}"[:120])
        except Reject as r:
            return [_rejected(cmd, r.reason, r.detail)]
        except Exception as e:  # input that slipped validation (e.g. an unhashable value)
            return [_rejected(cmd, "bad_request", f"malformed command ({type(e).__name__})")]

    def apply_compact(self, cmd: object, ts: object) -> list:
        """The compact API: a command tuple of ticks and lots in, compact events out.

        ``cmd`` is one of (prices in ticks, quantities in lots, enums as ints; see
        docs/engine.md)::

            (OP_PLACE, account, symbol, side, price, qty, client_order_id, tif, type,
             post_only, stp)                 # price 0 for a market order, stp -1 = default
            (OP_CANCEL, account, symbol, order_id)
            (OP_AMEND, account, symbol, order_id, price, qty)   # 0 = unchanged

        Same state changes as ``apply`` of the equivalent JSON command; the events are the
        tuples described at ``EV_*`` (``event_dicts`` turns them into ``apply``'s events).
        Never raises on bad input: a reject is ``[(EV_REJECTED, reason, detail)]``.
        """
        try:
            if not isinstance(cmd, tuple) or not cmd:
                raise Reject("bad_request", "a compact command is a non-empty tuple")
            if type(ts) is not int or not 0 <= ts <= MAX_TS:
                raise Reject("bad_request", "ts must be an integer in [0, 2**63)")
            self.ncmd += 1
            op = cmd[0]
            # exact types, checked here so that plain and compiled Python reject alike (and
            # ints, not bools: True would be order 1)
            if len(cmd) < 4 or type(cmd[1]) is not str or type(cmd[2]) is not str:
                raise Reject("bad_request", "account and symbol must be strings")
            for k in range(3, min(len(cmd), 6)):
                # an order is named by its order_id (int) or its client_order_id (str)
                if type(cmd[k]) is not int and not (k == 3 and op != OP_PLACE and type(cmd[3]) is str):
                    raise Reject("bad_request", "side, order_id, price and qty must be integers")
            if op == OP_PLACE and len(cmd) == 11 and not (
                    (cmd[6] is None or type(cmd[6]) is str) and type(cmd[7]) is int
                    and type(cmd[8]) is int and type(cmd[9]) is bool and type(cmd[10]) is int):
                raise Reject("bad_request", "client_order_id, tif, type, post_only or stp has "
                             "the wrong type")
            if op == OP_AMEND and len(cmd) == 6:
                return self._amend_compact(cmd[1], cmd[2], cmd[3], cmd[4], cmd[5])
            if op == OP_PLACE and len(cmd) == 11:
                return self._place_compact(cmd[1], cmd[2], cmd[3], cmd[4], cmd[5], cmd[6],
                                           cmd[7], cmd[8], cmd[9], cmd[10], ts)
            if op == OP_CANCEL and len(cmd) == 4:
                return [self._cancel_core(self._open_by_ref(cmd[1], cmd[2], cmd[3]))]
            raise Reject("bad_request", "unknown compact command or wrong arity")
        except Reject as r:
            return [(EV_REJECTED, r.reason, r.detail)]
        except Exception as e:  # a field of the wrong type
            return [(EV_REJECTED, "bad_request", f"malformed command ({type(e).__name__})")]

    def _amend_compact(self, account: str, symbol: str, ref: object, price: int, qty: int) -> list:
        """Amend in ticks and lots (0 = unchanged); raises Reject."""
        o = self._open_by_ref(account, symbol, ref)
        if price == 0 and qty == 0:
            raise Reject("bad_request", "amend needs qty and/or price")
        sym = o.sym
        if price == 0:
            price = o.price
        elif not 0 < price <= sym.max_price:
            raise Reject("out_of_bounds", f"price {price} ticks out of bounds")
        if qty == 0:
            qty = o.qty
        elif not sym.min_qty <= qty <= sym.max_qty:
            raise Reject("out_of_bounds", f"qty {qty} lots out of bounds")
        return self._amend_core(o, price, qty)

    def _place_compact(self, account: str, symbol: str, side: int, price: int, qty: int,
                       coid: str | None, tif: int, otype: int, post_only: bool, stp: int,
                       ts: int) -> list:
        acct = self.accounts.get(account)
        if acct is None:
            raise Reject("unknown_account", f"unknown account {account}"[:120])
        if coid is not None:
            if not coid or len(coid) > MAX_ID_LEN:
                raise Reject("bad_request", "client_order_id must be a non-empty string of at "
                             "most 64 chars")
            prev = acct.coid_index().get(coid)
            if prev is not None and not stale(prev):
                return [(EV_DUPLICATE, prev)]
        sym = self.symbols.get(symbol)
        if sym is None:
            raise Reject("unknown_symbol", f"unknown symbol {symbol}"[:120])
        if side != BUY and side != SELL:
            raise Reject("bad_request", "side must be buy or sell")
        if tif != GTC and tif != IOC and tif != FOK:
            raise Reject("bad_request", "tif must be GTC, IOC or FOK")
        if otype == LIMIT:
            if not 0 < price <= sym.max_price:
                raise Reject("out_of_bounds", f"price {price} ticks out of bounds")
        elif otype == MARKET:
            if tif == GTC:
                raise Reject("bad_request", "a market order cannot be GTC")
            if price != 0:
                raise Reject("bad_request", "a market order takes no price")
        else:
            raise Reject("bad_request", "type must be limit or market")
        if post_only and (otype != LIMIT or tif != GTC):
            raise Reject("bad_request", "post_only needs a GTC limit order")
        if stp < 0:
            stp = sym.stp_default
        elif stp > STP_CANCEL_BOTH:
            raise Reject("bad_request", "stp must be none|cancel_taker|cancel_maker|cancel_both")
        if not sym.min_qty <= qty <= sym.max_qty:
            raise Reject("out_of_bounds", f"qty {qty} lots out of bounds")
        return self._place_core(acct, sym, side, otype, tif, post_only, stp, price, qty, coid,
                                ts)

    def _open_by_ref(self, account: str, symbol: str, ref: object) -> Order:
        """The open order named by ``ref`` (order_id int or client_order_id str) of ``account``
        in ``symbol``, or the precise reject."""
        if not isinstance(ref, str):
            # passed on as the caller's object: narrowed to int, compiled code would unbox it
            # and box it again for the dict lookup
            return self._open_by_id(account, symbol, ref)
        acct, sym = self._named(account, symbol)
        o = acct.coid_index().get(ref)
        if o is None or o.status != OPEN or o.sym.detached:
            raise Reject("unknown_order", f"no open order with client_order_id {ref}"[:120])
        if o.sym is not sym:
            raise Reject("unknown_order", "order is not in that symbol")
        return o

    def _open_by_id(self, account: str, symbol: str, order_id: object) -> Order:
        """The open order ``order_id`` of ``account`` in ``symbol``, or the precise reject.

        ``order_id`` is an int: every caller has checked its type."""
        o = self.orders.get(order_id)
        if stale(o):
            o = None
        if o is not None and o.acct.name == account and o.sym.name == symbol:
            return o
        acct, _ = self._named(account, symbol)
        if o is None:
            raise Reject("unknown_order", f"no open order {order_id}")
        if o.acct is not acct:
            raise Reject("wrong_account", f"order {order_id} belongs to another account")
        raise Reject("unknown_order", "order is not in that symbol")

    def _named(self, account: str, symbol: str) -> tuple[Account, Symbol]:
        acct = self.accounts.get(account)
        if acct is None:
            raise Reject("unknown_account", f"unknown account {account}"[:120])
        sym = self.symbols.get(symbol)
        if sym is None:
            raise Reject("unknown_symbol", f"unknown symbol {symbol}"[:120])
        return acct, sym

    def apply_encoded(self, payload: bytes, ts: object) -> bytes:
        try:
            cmd = decode_command(payload)
        except CodecError as e:
            return encode_events([_rejected(None, "bad_request", str(e)[:200])])
        except Exception:  # pragma: no cover - defensive
            return encode_events([_rejected(None, "bad_request", "undecodable command")])
        return encode_events(self.apply(cmd, ts))

    def snapshot(self, digest: bool = True) -> bytes:
        """The engine's state as bytes; ``digest=False``: without the blake2b digest (snapshot
        version 5), for a container that checks the bytes itself (the cluster's snapshot)."""
        return dump(self, digest=digest)

    @staticmethod
    def restore(blob: object) -> Engine:
        return load(blob, Engine)

    def state_hash(self) -> str:
        return state_hash(self)

    # ------------------------------------------------------------------ helpers
    def _asset_str(self, asset: str, v: int) -> str:
        return fmt_scaled(v, self.assets[asset])

    def _retire(self, o: Order) -> None:
        """Remember a finished order in its account's bounded window."""
        acct = o.acct
        fin = acct.finished
        fin.append(o)
        if len(fin) > self.dedup_window:
            old = fin.popleft()
            c = old.coid
            if c is not None and acct.coids.get(c) is old:
                del acct.coids[c]
            # its placement events refer to the order itself: break that cycle so reference
            # counting frees it (the engine leaves no cyclic garbage; see docs/engine.md)
            old.ev = None

    def _finish_resting(self, o: Order, status: int) -> None:
        k = o.key
        del self.orders[k]
        del o.acct.open[k]
        o.status = status
        self._retire(o)

    def _unlink(self, o: Order) -> None:
        """Take a resting order out of its level (dropping the level when it empties)."""
        lvl = o.lvl
        assert lvl is not None
        lvl.total -= o.qty
        lvl.remove(o)
        sym = o.sym
        sym.touch(self.ncmd, o.price if o.side == BUY else -o.price)
        if lvl.head is None:
            sym.drop_level(o.side, o.price)

    def _lookup_open(self, cmd: dict, acct: Account, sym: Symbol | None) -> Order:
        oid = cmd.get("order_id")
        coid = cmd.get("client_order_id")
        o: Order | None
        if oid is not None:
            if type(oid) is not int or oid <= 0:
                raise Reject("bad_request", "order_id must be a positive integer")
            o = self.orders.get(oid)
            if o is None or stale(o):
                raise Reject("unknown_order", f"no open order {oid}")
            if o.acct is not acct:
                raise Reject("wrong_account", f"order {oid} belongs to another account")
        elif coid is not None:
            c = checked_ident(coid, "client_order_id")
            o = acct.coid_index().get(c)
            if o is None or o.status != OPEN or o.sym.detached:
                raise Reject("unknown_order", f"no open order with client_order_id {c}")
        else:
            raise Reject("bad_request", "order_id or client_order_id is required")
        if sym is not None and o.sym is not sym:
            raise Reject("unknown_order", "order is not in that symbol")
        return o

    def _get_account(self, cmd: dict) -> Account:
        name = checked_ident(cmd.get("account"), "account")
        acct = self.accounts.get(name)
        if acct is None:
            raise Reject("unknown_account", f"unknown account {name}")
        return acct

    def _get_symbol(self, cmd: dict) -> Symbol:
        name = checked_ident(cmd.get("symbol"), "symbol")
        sym = self.symbols.get(name)
        if sym is None:
            raise Reject("unknown_symbol", f"unknown symbol {name}")
        return sym

    # ------------------------------------------------------------------ matching
    def _fok_fillable(self, sym: Symbol, side: int, acct: Account, limit: int,
                      qty: int, stp: int, budget: int) -> bool:
        """Whether a FOK taker fills completely at once (``budget`` < 0: no budget)."""
        if side == BUY:
            levels = sym.asks
            keys = sym.ask_keys
            sgn = -1
        else:
            levels = sym.bids
            keys = sym.bid_keys
            sgn = 1
        need = qty
        qpu = sym.qpu
        tb = sym.taker_bps
        for i in range(len(keys) - 1, -1, -1):
            p = keys[i] * sgn
            if p > limit if side == BUY else p < limit:
                return False
            m = levels[p].head
            while m is not None:
                mq = m.qty
                if stp and m.acct is acct:
                    if stp == STP_CANCEL_MAKER:
                        m = m.nxt
                        continue
                    return False
                q = need if need < mq else mq
                if budget >= 0:
                    c1 = p * qpu
                    c1 += fee_of(c1, tb)
                    if budget // c1 < q:
                        return False
                    n = q * p * qpu
                    budget -= n + fee_of(n, tb)
                need -= q
                if not need:
                    return True
                m = m.nxt
        return False

    def _match(self, t: Order, limit: int, ev: list, budget: int) -> str | None:
        """Match taker ``t`` against the opposite side up to ``limit``.

        ``budget`` < 0 means the taker's funds are already held. Returns None, "stp" (the
        taker must be cancelled for self-trade prevention) or "insufficient_funds" (a market
        buy ran out of budget).
        """
        sym = t.sym
        side = t.side
        if side == BUY:
            levels = sym.asks
            keys = sym.ask_keys
            sgn = -1
        else:
            levels = sym.bids
            keys = sym.bid_keys
            sgn = 1
        rem = t.qty
        stp = t.stp
        tacct = t.acct
        qpu = sym.qpu
        bpl = sym.bpl
        mb = sym.maker_bps
        tb = sym.taker_bps
        tunit = t.unit
        thb = t.hb
        trb = t.rb
        stop: str | None = None
        orders = self.orders
        fee_total = 0
        ncmd = self.ncmd
        while rem and keys:
            kk = keys[-1]
            p = kk * sgn
            if p > limit if side == BUY else p < limit:
                break
            lvl = levels[p]
            before = lvl.total
            m = lvl.head
            while rem and m is not None:
                mq = m.qty
                macct = m.acct
                if stp and macct is tacct:
                    if stp == STP_CANCEL_TAKER:
                        stop = "stp"
                        break
                    # cancel the maker (cancel_maker / cancel_both)
                    nxt = m.nxt
                    lvl.total -= mq
                    lvl.remove(m)
                    m.qty = 0
                    _release(m, mq)
                    self._finish_resting(m, CANCELLED)
                    ev.append((EV_CANCELLED, m, mq, "stp"))
                    m = nxt
                    if stp == STP_CANCEL_BOTH:
                        stop = "stp"
                        break
                    continue
                q = rem if rem < mq else mq
                if budget >= 0:
                    c1 = p * qpu
                    c1 += fee_of(c1, tb)
                    afford = budget // c1
                    if afford < q:
                        if not afford:
                            stop = "insufficient_funds"
                            break
                        q = afford
                n = q * p * qpu
                b = q * bpl
                mf = 0
                tf = 0
                if mb or tb:
                    mf = fee_of(n, mb)
                    tf = fee_of(n, tb)
                    fee_total += mf + tf
                if budget >= 0:
                    budget -= n + tf
                if side == BUY:
                    # taker buys: release its hold for q lots, pay n + tf, receive base
                    h = q * tunit
                    thb.held -= h
                    thb.avail += h - n - tf
                    trb.avail += b
                    # maker sells: held base goes, quote comes in
                    m.hb.held -= b
                    m.rb.avail += n - mf
                else:
                    thb.held -= b
                    trb.avail += n - tf
                    h = q * m.unit
                    mhb = m.hb
                    mhb.held -= h
                    mhb.avail += h - n - mf
                    m.rb.avail += b
                rem -= q
                mq -= q
                m.qty = mq
                m.filled += q
                lvl.total -= q
                tid = self.next_tid
                self.next_tid = tid + 1
                e = (EV_TRADE, tid, p, q, m, t, mf, tf)
                ev.append(e)
                # the fills query: the event itself, kept by both accounts (a self-trade's
                # taker keeps a record, so each entry says whose side it is)
                macct.fills.append(e)
                tacct.fills.append(e if macct is not tacct
                                   else (FILL, tid, sym.name, p, q, t.oid, side, False, tf))
                sym.recent.append(e)
                if sym.watch:
                    sym.md_trades.append(e)
                if mq:
                    break  # the taker is done (rem == 0) inside this maker
                nxt = m.nxt
                lvl.remove(m)
                k = m.key
                del orders[k]
                del macct.open[k]
                m.status = FILLED
                self._retire(m)
                m = nxt
            if lvl.total != before:
                sym.touch(ncmd, kk)
            if lvl.head is None:
                del levels[p]
                keys.pop()
            if stop is not None:
                break
        if fee_total:
            self.fees[sym.quote] += fee_total
        t.filled += t.qty - rem
        t.qty = rem
        return stop

    # ------------------------------------------------------------------ commands
    def _place(self, cmd: dict, ts: int) -> list[dict]:
        name = cmd.get("account")
        acct = self.accounts.get(name) if isinstance(name, str) else None
        if acct is None:
            acct = self._get_account(cmd)
        cx = cmd.get("client_order_id")
        coid: str | None = None
        if cx is not None:
            coid = checked_ident(cx, "client_order_id")
            prev = acct.coid_index().get(coid)
            if prev is not None and not stale(prev):
                return _dup_events(prev)
        sn = cmd.get("symbol")
        sym = self.symbols.get(sn) if isinstance(sn, str) else None
        if sym is None:
            sym = self._get_symbol(cmd)
        sd = cmd.get("side")
        if sd == "buy":
            side = BUY
        elif sd == "sell":
            side = SELL
        else:
            raise Reject("bad_request", "side must be buy or sell")
        ot = cmd.get("type")
        if ot is None or ot == "limit":
            otype = LIMIT
        elif ot == "market":
            otype = MARKET
        else:
            raise Reject("bad_request", "type must be limit or market")
        tf = cmd.get("tif")
        if tf is None:
            tif = GTC if otype == LIMIT else IOC
        elif tf == "GTC":
            if otype == MARKET:
                raise Reject("bad_request", "a market order cannot be GTC")
            tif = GTC
        elif tf == "IOC":
            tif = IOC
        elif tf == "FOK":
            tif = FOK
        else:
            raise Reject("bad_request", "tif must be GTC, IOC or FOK")
        po = cmd.get("post_only")
        if po is None or po is False:
            post_only = False
        elif po is True:
            if otype != LIMIT or tif != GTC:
                raise Reject("bad_request", "post_only needs a GTC limit order")
            post_only = True
        else:
            raise Reject("bad_request", "post_only must be a boolean")
        sv = cmd.get("stp")
        if sv is None:
            stp = sym.stp_default
        else:
            st = STPS.get(sv) if isinstance(sv, str) else None
            if st is None:
                raise Reject("bad_request", "stp must be none|cancel_taker|cancel_maker|cancel_both")
            stp = st
        qx = cmd.get("qty")
        if qx is None:
            raise Reject("bad_request", "qty is required")
        px = cmd.get("price")
        price = 0
        if otype == LIMIT:
            if px is None:
                raise Reject("bad_request", "price is required for a limit order")
            pc = sym.pcache.get(px) if isinstance(px, str) else None
            price = sym.parse_price(px) if pc is None else pc
        elif px is not None:
            raise Reject("bad_request", "a market order takes no price")
        qc = sym.qcache.get(qx) if isinstance(qx, str) else None
        qty = sym.parse_qty(qx) if qc is None else qc
        return event_dicts(self._place_core(acct, sym, side, otype, tif, post_only, stp, price,
                                            qty, coid, ts))

    def _place_core(self, acct: Account, sym: Symbol, side: int, otype: int, tif: int,
                    post_only: bool, stp: int, price: int, qty: int, coid: str | None,
                    ts: int) -> list:
        """Place a validated order (client order id already checked for duplicates)."""
        # funds, price band, post-only and FOK checks (no state change before this point)
        budget = -1
        bal = acct.bal
        if side == BUY:
            hasset = sym.quote
            rasset = sym.base
            limit = NO_BUY_LIMIT
            ak = sym.ask_keys
            if otype == LIMIT:
                limit = price
                n = price * sym.qpu
                unit = n + fee_of(n, sym.hold_bps)
                cross = bool(ak) and -ak[-1] <= price
            else:
                unit = 0
                bb = bal.get(hasset)
                budget = bb.avail if bb is not None else 0
                cross = bool(ak)
                if cross:
                    best = -ak[-1]
                    if budget < _buy_cost1(sym, best):
                        raise Reject("insufficient_funds", "cannot buy one lot at the best ask")
                    limit = min(best * (10000 + sym.band_bps) // 10000, sym.max_price)
        else:
            hasset = sym.base
            rasset = sym.quote
            limit = NO_SELL_LIMIT
            unit = sym.bpl
            bk = sym.bid_keys
            if otype == LIMIT:
                limit = price
                cross = bool(bk) and bk[-1] >= price
            else:
                cross = bool(bk)
                if cross:
                    limit = max(-((-bk[-1] * (10000 - sym.band_bps)) // 10000), 1)
        need = qty * unit
        hb = bal.get(hasset)
        if need and (hb is None or hb.avail < need):
            raise Reject("insufficient_funds", f"needs {self._asset_str(hasset, need)} {hasset}")
        if post_only and cross:
            raise Reject("post_only_would_take", "post-only order would take")
        if tif == FOK:
            if not cross:
                raise Reject("fok_unfillable", "no liquidity")
            if not self._fok_fillable(sym, side, acct, limit, qty, stp, budget):
                raise Reject("fok_unfillable", "cannot fill completely at once")

        # ---- accepted: from here on the command takes effect
        oid = self.next_oid
        self.next_oid = oid + 1
        if hb is None:
            hb = Bal()
            bal[hasset] = hb
        rb = bal.get(rasset)
        if rb is None:
            rb = Bal()
            bal[rasset] = rb
        if need:
            hb.avail -= need
            hb.held += need
        o = Order(oid, acct, sym, side, price, qty, unit, hb, rb, coid, otype, tif, post_only,
                  stp, ts)
        if coid is not None:
            acct.coids[coid] = o
        ev: list = [(EV_ACCEPTED, o)]
        stop = self._match(o, limit, ev, budget) if cross else None
        rem = o.qty
        if not rem:
            o.status = FILLED
            self._retire(o)
        elif stop is None and tif == GTC:
            sym.level_of(side, price).push(o)
            sym.touch(self.ncmd, price if side == BUY else -price)
            k = o.key
            self.orders[k] = o
            acct.open[k] = o
        else:
            h = rem * unit
            if h:
                hb.held -= h
                hb.avail += h
            o.qty = 0
            o.status = CANCELLED
            ev.append((EV_CANCELLED, o, rem, stop if stop is not None else "ioc"))
            self._retire(o)
        if len(ev) > 1:
            o.ev = list(ev)
        return ev

    def _open_order(self, cmd: dict) -> Order:
        """Resolve the open order of a cancel/amend (account and symbol must match)."""
        name = cmd.get("account")
        acct = self.accounts.get(name) if isinstance(name, str) else None
        if acct is None:
            acct = self._get_account(cmd)
        sn = cmd.get("symbol")
        sym = self.symbols.get(sn) if isinstance(sn, str) else None
        if sym is None:
            sym = self._get_symbol(cmd)
        oid = cmd.get("order_id")
        o = self.orders.get(oid) if type(oid) is int else None
        if o is None or o.acct is not acct or o.sym is not sym or sym.detached:
            o = self._lookup_open(cmd, acct, sym)
        return o

    def _fast_open(self, cmd: dict) -> Order:
        """The fast path of ``_open_order``: an order id of this account and symbol."""
        oid = cmd.get("order_id")
        o = self.orders.get(oid) if type(oid) is int else None
        if o is not None and o.acct.name == cmd.get("account") and o.sym.name == cmd.get("symbol") \
                and not o.sym.detached:
            return o
        return self._open_order(cmd)

    def _cancel(self, cmd: dict) -> list[dict]:
        return [event_dict(self._cancel_core(self._fast_open(cmd)))]

    def _cancel_core(self, o: Order) -> tuple:
        rem = o.qty
        self._unlink(o)
        o.qty = 0
        _release(o, rem)
        self._finish_resting(o, CANCELLED)
        return (EV_CANCELLED, o, rem, "user")

    def _cancel_all(self, cmd: dict) -> list[dict]:
        acct = self._get_account(cmd)
        sym = None
        if cmd.get("symbol") is not None:
            sym = self._get_symbol(cmd)
        ev: list[dict] = []
        # in order id (placement) order; acct.open's own order is not state (see snapshot.py)
        for o in sorted(acct.open.values(), key=_oid_of):
            if (sym is not None and o.sym is not sym) or stale(o):
                continue
            rem = o.qty
            self._unlink(o)
            o.qty = 0
            _release(o, rem)
            self._finish_resting(o, CANCELLED)
            ev.append(event_dict((EV_CANCELLED, o, rem, "user")))
        ev.append({"type": "cancelled_all", "account": acct.name,
                   "symbol": None if sym is None else sym.name, "count": len(ev)})
        return ev

    def _amend(self, cmd: dict) -> list[dict]:
        o = self._fast_open(cmd)
        sym = o.sym
        qx = cmd.get("qty")
        px = cmd.get("price")
        if qx is None:
            if px is None:
                raise Reject("bad_request", "amend needs qty and/or price")
            new_qty = o.qty
        else:
            qc = sym.qcache.get(qx) if isinstance(qx, str) else None
            new_qty = sym.parse_qty(qx) if qc is None else qc
        if px is None:
            new_price = o.price
        else:
            pc = sym.pcache.get(px) if isinstance(px, str) else None
            new_price = sym.parse_price(px) if pc is None else pc
        return event_dicts(self._amend_core(o, new_price, new_qty))

    def _amend_core(self, o: Order, new_price: int, new_qty: int) -> list:
        """Amend an open order to a validated price and quantity."""
        sym = o.sym
        old_qty = o.qty
        old_price = o.price
        side = o.side
        if new_price == old_price and new_qty <= old_qty:
            # keeps time priority
            d = old_qty - new_qty
            if d:
                lvl = o.lvl
                assert lvl is not None
                lvl.total -= d
                o.qty = new_qty
                _release(o, d)
                sym.touch(self.ncmd, new_price if side == BUY else -new_price)
            return [(EV_AMENDED, o, new_price, new_qty, old_price, old_qty, "kept")]
        # loses time priority: validate first
        if side == BUY:
            ak = sym.ask_keys
            cross = bool(ak) and new_price >= -ak[-1]
            n = new_price * sym.qpu
            unit = n + fee_of(n, sym.hold_bps)
        else:
            bk = sym.bid_keys
            cross = bool(bk) and new_price <= bk[-1]
            unit = o.unit
        if cross and o.post_only:
            raise Reject("post_only_would_take", "post-only order would take")
        extra = new_qty * unit - old_qty * o.unit
        hb = o.hb
        if extra > 0 and hb.avail < extra:
            raise Reject("insufficient_funds", "not enough funds for the amended order")
        # apply: the order leaves its place in the queue; same object, same id
        self._unlink(o)
        hb.avail -= extra
        hb.held += extra
        o.price = new_price
        o.qty = new_qty
        o.unit = unit
        ev: list = [(EV_AMENDED, o, new_price, new_qty, old_price, old_qty, "lost")]
        stop = self._match(o, new_price, ev, -1) if cross else None
        rem = o.qty
        if not rem:
            self._finish_resting(o, FILLED)
        elif stop is not None:
            _release(o, rem)
            o.qty = 0
            self._finish_resting(o, CANCELLED)
            ev.append((EV_CANCELLED, o, rem, stop))
        else:
            sym.level_of(side, new_price).push(o)
            sym.touch(self.ncmd, new_price if side == BUY else -new_price)
        return ev

    # ------------------------------------------------------------------ funds
    def _parse_amount(self, cmd: dict) -> tuple[str, int]:
        asset = checked_ident(cmd.get("asset"), "asset")
        if asset not in self.assets:
            raise Reject("unknown_asset", f"unknown asset {asset}")
        c, d = parse_dec(cmd.get("amount"), "amount")
        v = to_scale(c, d, self.assets[asset])
        if v is None:
            raise Reject("amount_precision", f"{asset} has {self.assets[asset]} decimals")
        if v <= 0:
            raise Reject("out_of_bounds", "amount must be positive")
        return asset, v

    def _funds_event(self, rec: tuple[str, str, str, int, int, str]) -> dict:
        op, account, asset, amount, avail, tx = rec
        return {
            "type": "deposited" if op == "deposit" else "withdrawn",
            "account": account,
            "asset": asset,
            "amount": self._asset_str(asset, amount),
            "tx_id": tx,
            "available": self._asset_str(asset, avail),
        }

    def _funds(self, cmd: dict, op: str) -> list[dict]:
        name = checked_ident(cmd.get("account"), "account")
        tx = checked_ident(cmd.get("tx_id"), "tx_id")
        asset, amount = self._parse_amount(cmd)
        prev = self.txs.get(tx)
        if prev is not None:
            if prev[0] != op or prev[1] != name or prev[2] != asset or prev[3] != amount:
                raise Reject("tx_id_conflict", f"tx_id {tx} was used for another transfer")
            e = self._funds_event(prev)
            e["duplicate"] = True
            return [e]
        acct = self.accounts.get(name)
        if op == "withdraw":
            if acct is None:
                raise Reject("unknown_account", f"unknown account {name}")
            b = acct.bal.get(asset)
            if b is None or b.avail < amount:
                raise Reject("insufficient_funds", "not enough available funds")
            b.avail -= amount
        else:
            if acct is None:
                acct = self.accounts[name] = Account(name)
            b = _balance(acct, asset)
            b.avail += amount
        rec = (op, name, asset, amount, b.avail, tx)
        self.txs[tx] = rec
        return [self._funds_event(rec)]

    # ------------------------------------------------------------------ symbols
    def _add_symbol(self, cmd: dict) -> list[dict]:
        name = checked_ident(cmd.get("symbol"), "symbol")
        base = checked_ident(cmd.get("base"), "base")
        quote = checked_ident(cmd.get("quote"), "quote")
        if base == quote:
            raise Reject("bad_request", "base and quote must differ")
        tick_c, tick_d = decimals_of(*parse_dec(cmd.get("tick_size"), "tick_size"))
        lot_c, lot_d = decimals_of(*parse_dec(cmd.get("lot_size"), "lot_size"))
        if tick_c <= 0 or lot_c <= 0:
            raise Reject("out_of_bounds", "tick_size and lot_size must be positive")
        if tick_d > 18 or lot_d > 18:
            raise Reject("out_of_bounds", "tick_size/lot_size have at most 18 decimals")
        if tick_c >= 10**18 or lot_c >= 10**18:
            raise Reject("out_of_bounds", "tick_size/lot_size too large")
        sym = Symbol()
        sym.name = name
        sym.base = base
        sym.quote = quote
        sym.tick_c, sym.tick_d, sym.lot_c, sym.lot_d = tick_c, tick_d, lot_c, lot_d
        sym.tick_str = fmt_scaled(tick_c, tick_d)
        sym.lot_str = fmt_scaled(lot_c, lot_d)
        sym.min_qty = 1
        sym.max_qty = MAX_LOTS
        sym.max_price = MAX_TICKS
        if cmd.get("min_qty") is not None:
            sym.min_qty = sym.parse_qty(cmd.get("min_qty"))
        if cmd.get("max_qty") is not None:
            sym.max_qty = sym.parse_qty(cmd.get("max_qty"))
        if cmd.get("max_price") is not None:
            sym.max_price = sym.parse_price(cmd.get("max_price"))
        sym.pcache.clear()
        sym.qcache.clear()
        if sym.min_qty > sym.max_qty:
            raise Reject("out_of_bounds", "min_qty > max_qty")
        sym.maker_bps = _bps(cmd.get("maker_fee_bps"), "maker_fee_bps")
        sym.taker_bps = _bps(cmd.get("taker_fee_bps"), "taker_fee_bps")
        sym.hold_bps = max(sym.maker_bps, sym.taker_bps)
        band = cmd.get("market_band_bps")
        if band is None:
            band = DEFAULT_BAND_BPS
        if type(band) is not int or not 0 <= band <= 9999:
            raise Reject("bad_request", "market_band_bps must be an int in [0, 9999]")
        sym.band_bps = band
        sv = cmd.get("stp_default")
        if sv is None:
            sym.stp_default = STP_CANCEL_TAKER
        else:
            st = STPS.get(sv) if type(sv) is str else None
            if st is None:
                raise Reject("bad_request", "stp_default must be none|cancel_taker|...")
            sym.stp_default = st
        if name in self.symbols:
            raise Reject("duplicate_symbol", f"symbol {name} exists")
        need_b = lot_d
        need_q = tick_d + lot_d
        bd = self.assets.get(base)
        qd = self.assets.get(quote)
        if bd is not None and bd < need_b:
            raise Reject("asset_precision", f"{base} has {bd} decimals, lot_size needs {need_b}")
        if qd is not None and qd < need_q:
            raise Reject("asset_precision", f"{quote} has {qd} decimals, needs {need_q}")
        # accepted
        if bd is None:
            bd = self.assets[base] = max(need_b, DEFAULT_ASSET_DECIMALS)
            self.fees[base] = 0
        if qd is None:
            qd = self.assets[quote] = max(need_q, DEFAULT_ASSET_DECIMALS)
            self.fees[quote] = 0
        sym.bpl = lot_c * POW10[bd - lot_d]
        sym.qpu = tick_c * lot_c * POW10[qd - tick_d - lot_d]
        sym.quote_dec = qd
        self.symbols[name] = sym
        return [self._symbol_event(sym)]

    def _symbol_event(self, sym: Symbol) -> dict:
        return {
            "type": "symbol_added",
            "symbol": sym.name,
            "base": sym.base,
            "quote": sym.quote,
            "tick_size": sym.tick_str,
            "lot_size": sym.lot_str,
            "min_qty": sym.qty_str(sym.min_qty),
            "max_qty": sym.qty_str(sym.max_qty),
            "max_price": sym.price_str(sym.max_price),
            "maker_fee_bps": sym.maker_bps,
            "taker_fee_bps": sym.taker_bps,
            "stp_default": STP_NAMES[sym.stp_default],
            "market_band_bps": sym.band_bps,
            "base_decimals": self.assets[sym.base],
            "quote_decimals": self.assets[sym.quote],
        }

    # ------------------------------------------------------------------ queries
    def _q_book(self, cmd: dict) -> list[dict]:
        sym = self._get_symbol(cmd)
        depth = cmd.get("depth", 10)
        if depth is None:
            depth = 10
        if type(depth) is not int or not 1 <= depth <= MAX_DEPTH:
            raise Reject("bad_request", f"depth must be an int in [1, {MAX_DEPTH}]")
        return [{"type": "book", "symbol": sym.name, "seq": sym.seq, **self.l2(sym, depth)}]

    def l2(self, sym: Symbol, depth: int) -> dict:
        ps, qs = sym.price_str, sym.qty_str
        bk = sym.bid_keys
        ak = sym.ask_keys
        bids = [[ps(p), qs(sym.bids[p].total)] for p in bk[: -depth - 1: -1]]
        asks = [[ps(-k), qs(sym.asks[-k].total)] for k in ak[: -depth - 1: -1]]
        return {"bids": bids, "asks": asks}

    def _q_open_orders(self, cmd: dict) -> list[dict]:
        """The account's open orders (one symbol or all), oldest first, at most MAX_OPEN_LIST."""
        acct = self._get_account(cmd)
        sym = self._get_symbol(cmd) if cmd.get("symbol") is not None else None
        # acct.open's own order is not state (see snapshot.py): order id order is
        found = sorted([o for o in acct.open.values() if (sym is None or o.sym is sym) and not stale(o)],
                       key=_oid_of)
        return [{"type": "open_orders", "account": acct.name,
                 "symbol": None if sym is None else sym.name,
                 "orders": [_order_dict(o) for o in found[:MAX_OPEN_LIST]],
                 "truncated": len(found) > MAX_OPEN_LIST}]

    def _q_fills(self, cmd: dict) -> list[dict]:
        """The account's last fills (newest last): trade id > ``since``, at most ``limit``."""
        acct = self._get_account(cmd)
        sym = self._get_symbol(cmd) if cmd.get("symbol") is not None else None
        since = cmd.get("since", 0)
        if since is None:
            since = 0
        if type(since) is not int or since < 0:
            raise Reject("bad_request", "since must be a trade id (an int >= 0)")
        limit = cmd.get("limit", FILLS_WINDOW)
        if limit is None:
            limit = FILLS_WINDOW
        if type(limit) is not int or not 1 <= limit <= FILLS_WINDOW:
            raise Reject("bad_request", f"limit must be an int in [1, {FILLS_WINDOW}]")
        out: list[dict] = []
        for e in acct.fills:
            r = fill_record(e, acct)
            if r[1] <= since or (sym is not None and r[2] != sym.name):
                continue
            s = self.symbols.get(r[2])
            if s is None:  # pragma: no cover - symbols are never removed while fills name them
                continue
            out.append({
                "trade_id": r[1], "symbol": r[2], "order_id": r[5], "side": SIDE_NAMES[r[6]],
                "price": s.price_str(r[3]), "qty": s.qty_str(r[4]),
                "liquidity": "maker" if r[7] else "taker",
                "fee": fmt_scaled(r[8], s.quote_dec) if r[8] else "0", "fee_asset": s.quote,
            })
        # the oldest first: a client pages forward with since = the last trade id it got
        return [{"type": "fills", "account": acct.name, "symbol": None if sym is None else sym.name,
                 "fills": out[:limit], "more": len(out) > limit}]

    def _q_trades(self, cmd: dict) -> list[dict]:
        """The symbol's last trades (up to TRADES_WINDOW) with trade id > ``since``, oldest first."""
        sym = self._get_symbol(cmd)
        since = cmd.get("since", 0)
        if since is None:
            since = 0
        if type(since) is not int or since < 0:
            raise Reject("bad_request", "since must be a trade id (an int >= 0)")
        out = [public_trade(sym, trade_record(e)) for e in sym.recent if e[1] > since]
        first = sym.recent[0][1] if sym.recent else 0
        # complete: nothing after ``since`` has left the window (the client missed no trade)
        return [{"type": "trades", "symbol": sym.name, "seq": sym.seq, "trades": out,
                 "complete": since + 1 >= first or not sym.recent}]

    def _q_order(self, cmd: dict) -> list[dict]:
        acct = self._get_account(cmd)
        oid = cmd.get("order_id")
        coid = cmd.get("client_order_id")
        o = None
        if oid is not None:
            if type(oid) is not int or oid <= 0:
                raise Reject("bad_request", "order_id must be a positive integer")
            o = self.orders.get(oid)
            if stale(o):
                o = None
            if o is None:
                for f in acct.finished:
                    if f.oid == oid:
                        o = f
                        break
            elif o.acct is not acct:
                raise Reject("wrong_account", f"order {oid} belongs to another account")
        elif coid is not None:
            checked_ident(coid, "client_order_id")
            o = acct.coid_index().get(coid)
            if stale(o):
                o = None
        else:
            raise Reject("bad_request", "order_id or client_order_id is required")
        if o is None:
            raise Reject("unknown_order", "order unknown (or forgotten)")
        return [{"type": "order", **_order_dict(o)}]

    def _q_balances(self, cmd: dict) -> list[dict]:
        acct = self._get_account(cmd)
        out = {}
        for asset in sorted(acct.bal):
            b = acct.bal[asset]
            a = b.avail
            h = b.held
            out[asset] = {"available": self._asset_str(asset, a), "held": self._asset_str(asset, h)}
        return [{"type": "balances", "account": acct.name, "balances": out}]

    # ------------------------------------------------------------------ introspection
    def check_invariants(self) -> None:
        """Raise AssertionError if an internal invariant is broken (used by tests)."""
        held: dict[tuple[str, str], int] = {}
        n_open = 0
        for sym in self.symbols.values():
            assert sym.bid_keys == sorted(sym.bids), "bid keys"
            assert sym.ask_keys == sorted(-p for p in sym.asks), "ask keys"
            if sym.bid_keys and sym.ask_keys:
                assert sym.bid_keys[-1] < -sym.ask_keys[-1], "crossed book"
            for side, levels in ((BUY, sym.bids), (SELL, sym.asks)):
                for p, lvl in levels.items():
                    live = lvl.orders()
                    assert live, "empty level"
                    assert sum(o.qty for o in live) == lvl.total, "level total"
                    assert live[-1] is lvl.tail, "level tail"
                    prev: Order | None = None
                    for o in live:
                        assert o.lvl is lvl and o.prev is prev, "level links"
                        prev = o
                        assert o.qty > 0 and o.price == p and o.side == side and o.status == OPEN
                        assert self.orders.get(o.oid) is o, "order map"
                        asset = sym.quote if side == BUY else sym.base
                        key = (o.acct.name, asset)
                        held[key] = held.get(key, 0) + o.qty * o.unit
                    n_open += len(live)
        # (a detached book's orders wait in the indexes for their cleanup: not this engine's)
        assert n_open == sum(1 for o in self.orders.values() if not stale(o)), "open order count"
        totals: dict[str, int] = dict(self.fees)
        for acct in self.accounts.values():
            for asset, b in acct.bal.items():
                a = b.avail
                h = b.held
                assert a >= 0 and h >= 0, f"negative balance {acct.name} {asset}"
                assert h == held.get((acct.name, asset), 0), f"held {acct.name} {asset}"
                totals[asset] = totals.get(asset, 0) + a + h
            for oid, o in acct.open.items():
                assert self.orders.get(oid) is o and o.acct is acct
            for c, o in acct.coid_index().items():
                assert o.coid == c and o.acct is acct, "client order id index"
        flows: dict[str, int] = {}
        for op, _acct, asset, amount, _avail, _tx in self.txs.values():
            flows[asset] = flows.get(asset, 0) + (amount if op == "deposit" else -amount)
        for asset, tot in totals.items():
            assert tot == flows.get(asset, 0), f"conservation {asset}"


def _buy_cost1(sym: Symbol, price: int) -> int:
    n = price * sym.qpu
    return n + fee_of(n, sym.taker_bps)


def _bps(v: object, what: str) -> int:
    if v is None:
        return 0
    if type(v) is int and 0 <= v <= 1000:
        return v
    raise Reject("bad_request", f"{what} must be an int in [0, 1000]")


def _oid_of(o: Order) -> int:
    return o.oid


def public_trade(sym: Symbol, r: tuple) -> list:
    """A trade as market data shows it: [trade id, price, qty, taker side]."""
    return [r[1], sym.price_str(r[2]), sym.qty_str(r[3]), SIDE_NAMES[r[4]]]


def _order_dict(o: Order) -> dict:
    """An order as the ``order`` and ``open_orders`` queries show it."""
    sym = o.sym
    return {
        "order_id": o.oid,
        "client_order_id": o.coid,
        "account": o.acct.name,
        "symbol": sym.name,
        "side": SIDE_NAMES[o.side],
        "order_type": TYPE_NAMES[o.otype],
        "tif": TIF_NAMES[o.tif],
        "post_only": o.post_only,
        "stp": STP_NAMES[o.stp],
        "price": None if o.otype == MARKET else sym.price_str(o.price),
        "qty": sym.qty_str(o.oqty),
        "remaining_qty": sym.qty_str(o.qty),
        "filled_qty": sym.qty_str(o.filled),
        "status": STATUS_NAMES[o.status],
        "ts": o.ts,
    }


def placement_events(o: Order) -> list:
    """The events of ``o``'s placement: compact tuples, or the JSON API's dicts when a snapshot
    holds them as bytes (the orders they name may be gone by then)."""
    ev = o.ev
    if ev is None:
        return [(EV_ACCEPTED, o)]
    if isinstance(ev, int):
        row = o.row
        assert row is not None
        ev = row[ev:]
    if isinstance(ev, bytes):
        import orjson

        out: list = orjson.loads(ev)
        if out and isinstance(out[0], dict):
            return out  # written before 24 Nov 2026: the events' dicts themselves
        return _placement_dicts(o, out)
    assert isinstance(ev, list)
    return ev


def _placement_dicts(o: Order, rec: list) -> list[dict]:
    """The JSON API's events of a placement from its ``placement_record`` (the same dicts as
    ``event_dict`` of the live events)."""
    sym = o.sym
    out = [event_dict((EV_ACCEPTED, o))]
    for r in rec:
        if r[0] == EV_TRADE:
            out.append(_trade_dict(sym, r[1], r[2], r[3], r[4], r[5], o, int(r[6]), int(r[7])))
        else:
            out.append(_cancelled_dict(sym, r[1], r[2], r[3], r[4], r[5], r[6]))
    return out


def _dup_events(o: Order) -> list[dict]:
    """The original outcome of a repeated ``place``, marked duplicate."""
    out = []
    for e in placement_events(o):
        d = event_dict(e)
        d["duplicate"] = True
        out.append(d)
    return out
