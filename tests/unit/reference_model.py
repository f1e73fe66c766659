"""A plain, obviously-correct reference model of the matching engine (tests only).

Money is ``decimal.Decimal`` (exact), the book is a flat list of open orders and every match
sorts the candidates from scratch. Nothing here is optimised. It implements the subset of the
contract the property tests drive: add_symbol, deposit, withdraw, place, cancel, cancel_all,
amend and the book / balances / order queries, with the same event shapes as the engine.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext

D0 = Decimal(0)
FILLS_WINDOW = 1000  # fills remembered per account (the engine's model.FILLS_WINDOW)
TRADES_WINDOW = 1000  # trades remembered per symbol (model.TRADES_WINDOW)


def fmt(d: Decimal) -> str:
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def dec(x) -> Decimal:
    if type(x) is int:
        return Decimal(x)
    if type(x) is str:
        import re

        if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", x) and len(x) <= 48:
            return Decimal(x)
    raise Rej("bad_request")


class Rej(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def ident(x):
    if type(x) is not str or not x or len(x) > 64:
        raise Rej("bad_request")
    return x


STPS = ("none", "cancel_taker", "cancel_maker", "cancel_both")


class RefModel:
    def __init__(self):
        self.ctx_prec = 200
        self.assets = {}  # asset -> decimals
        self.syms = {}
        self.bal = {}  # (acct, asset) -> [avail, held]
        self.accounts = []  # names in creation order
        self.fees = {}
        self.orders = []  # open orders (dicts), any order
        self.all_orders = {}  # oid -> order dict (all ever accepted)
        self.coids = {}  # (acct, coid) -> oid
        self.place_events = {}  # oid -> events of its placement
        self.txs = {}
        self.next_oid = 1
        self.next_tid = 1
        self.seq = 0
        self.flows = {}
        self.md_seq = {}  # symbol -> its update sequence: +1 per command that changes its levels
        self.fills = {}  # account -> its fills (dicts as the ``fills`` query shows them)
        self.trades = {}  # symbol -> its public trades [trade id, price, qty, taker side]

    # ---------------------------------------------------------------- helpers
    def q(self, asset, v, rounding=ROUND_CEILING):
        e = Decimal(1).scaleb(-self.assets[asset])
        return v.quantize(e, rounding=rounding)

    def fee(self, sym, notional, bps):
        return self.q(sym["quote"], notional * bps / Decimal(10000))

    def unit_buy(self, sym, price):
        n = price * sym["lot"]
        return n + self.fee(sym, n, sym["hold_bps"])

    def b(self, acct, asset):
        return self.bal.setdefault((acct, asset), [D0, D0])

    def avail(self, acct, asset):
        v = self.bal.get((acct, asset))
        return v[0] if v else D0

    def price(self, sym, x):
        v = dec(x)
        if v % sym["tick"] != 0:
            raise Rej("price_off_tick")
        if v <= 0 or v > sym["max_price"]:
            raise Rej("out_of_bounds")
        return v

    def qty(self, sym, x):
        v = dec(x)
        if v % sym["lot"] != 0:
            raise Rej("qty_off_lot")
        if v < sym["min_qty"] or v > sym["max_qty"]:
            raise Rej("out_of_bounds")
        return v

    def book_side(self, sym, side):
        os_ = [o for o in self.orders if o["sym"] == sym["name"] and o["side"] == side]
        if side == "buy":
            os_.sort(key=lambda o: (-o["price"], o["seq"]))
        else:
            os_.sort(key=lambda o: (o["price"], o["seq"]))
        return os_

    def best(self, sym, side):
        s = self.book_side(sym, side)
        return s[0]["price"] if s else None

    def acc_ev(self, o):
        sym = self.syms[o["sym"]]
        return {
            "type": "accepted", "order_id": o["oid"], "client_order_id": o["coid"],
            "account": o["acct"], "symbol": o["sym"], "side": o["side"],
            "order_type": o["otype"], "tif": o["tif"], "post_only": o["post_only"],
            "stp": o["stp"], "price": None if o["oprice"] is None else fmt(o["oprice"]),
            "qty": fmt(o["oqty"]),
        } if sym else None

    def can_ev(self, o, rem, reason):
        return {"type": "cancelled", "order_id": o["oid"], "client_order_id": o["coid"],
                "account": o["acct"], "symbol": o["sym"], "side": o["side"],
                "remaining_qty": fmt(rem), "reason": reason}

    def release(self, o, rem):
        h = rem / self.syms[o["sym"]]["lot"] * o["unit"]
        bal = self.b(o["acct"], o["hasset"])
        bal[1] -= h
        bal[0] += h

    def close(self, o, status):
        self.orders.remove(o)
        o["status"] = status

    # ---------------------------------------------------------------- apply
    def levels(self, name):
        out = {}
        for o in self.orders:
            if o["sym"] == name:
                k = (o["side"], o["price"])
                out[k] = out.get(k, D0) + o["qty"]
        return out

    def apply(self, cmd, ts):
        with localcontext() as c:
            c.prec = self.ctx_prec
            before = {name: self.levels(name) for name in self.syms}
            try:
                return getattr(self, "op_" + cmd["op"])(cmd, ts)
            except Rej as r:
                return [{"type": "rejected", "reason": r.reason}]
            finally:
                for name in self.syms:
                    if self.levels(name) != before.get(name, {}):
                        self.md_seq[name] = self.md_seq.get(name, 0) + 1

    def op_add_symbol(self, c, ts):
        name, base, quote = ident(c["symbol"]), ident(c["base"]), ident(c["quote"])
        tick, lot = dec(c["tick_size"]).normalize(), dec(c["lot_size"]).normalize()
        if name in self.syms:
            raise Rej("duplicate_symbol")
        tick_d = max(0, -tick.as_tuple().exponent)
        lot_d = max(0, -lot.as_tuple().exponent)
        for a, need in ((base, lot_d), (quote, tick_d + lot_d)):
            if a in self.assets and self.assets[a] < need:
                raise Rej("asset_precision")
        for a, need in ((base, lot_d), (quote, tick_d + lot_d)):
            if a not in self.assets:
                self.assets[a] = max(need, 8)
                self.fees[a] = D0
        mk, tk = c.get("maker_fee_bps") or 0, c.get("taker_fee_bps") or 0
        self.syms[name] = {
            "name": name, "base": base, "quote": quote, "tick": tick, "lot": lot,
            "min_qty": dec(c["min_qty"]) if c.get("min_qty") else lot,
            "max_qty": dec(c["max_qty"]) if c.get("max_qty") else lot * 10**15,
            "max_price": dec(c["max_price"]) if c.get("max_price") else tick * 10**15,
            "maker_bps": mk, "taker_bps": tk, "hold_bps": max(mk, tk),
            "band": c.get("market_band_bps", 1000),
            "stp_default": c.get("stp_default") or "cancel_taker",
        }
        return [{"type": "symbol_added", "symbol": name}]

    def funds_ev(self, rec):
        op, acct, asset, amount, avail, tx = rec
        return {"type": "deposited" if op == "deposit" else "withdrawn", "account": acct,
                "asset": asset, "amount": fmt(amount), "tx_id": tx, "available": fmt(avail)}

    def _funds(self, c, op):
        acct, tx, asset = ident(c["account"]), ident(c["tx_id"]), ident(c["asset"])
        if asset not in self.assets:
            raise Rej("unknown_asset")
        amount = dec(c["amount"])
        if amount != self.q(asset, amount, ROUND_FLOOR):
            raise Rej("amount_precision")
        if amount <= 0:
            raise Rej("out_of_bounds")
        if tx in self.txs:
            p = self.txs[tx]
            if (p[0], p[1], p[2], p[3]) != (op, acct, asset, amount):
                raise Rej("tx_id_conflict")
            e = self.funds_ev(p)
            e["duplicate"] = True
            return [e]
        if op == "withdraw":
            if acct not in self.accounts:
                raise Rej("unknown_account")
            if self.avail(acct, asset) < amount:
                raise Rej("insufficient_funds")
            self.b(acct, asset)[0] -= amount
            self.flows[asset] = self.flows.get(asset, D0) - amount
        else:
            if acct not in self.accounts:
                self.accounts.append(acct)
            self.b(acct, asset)[0] += amount
            self.flows[asset] = self.flows.get(asset, D0) + amount
        rec = (op, acct, asset, amount, self.b(acct, asset)[0], tx)
        self.txs[tx] = rec
        return [self.funds_ev(rec)]

    def op_deposit(self, c, ts):
        return self._funds(c, "deposit")

    def op_withdraw(self, c, ts):
        return self._funds(c, "withdraw")

    def account(self, c):
        a = ident(c.get("account"))
        if a not in self.accounts:
            raise Rej("unknown_account")
        return a

    def symbol(self, c):
        s = ident(c.get("symbol"))
        if s not in self.syms:
            raise Rej("unknown_symbol")
        return self.syms[s]

    def op_place(self, c, ts):
        acct = self.account(c)
        coid = c.get("client_order_id")
        if coid is not None:
            ident(coid)
            if (acct, coid) in self.coids:
                oid = self.coids[(acct, coid)]
                return [dict(e, duplicate=True) for e in self.place_events[oid]]
        sym = self.symbol(c)
        side = c.get("side")
        if side not in ("buy", "sell"):
            raise Rej("bad_request")
        otype = c.get("type", "limit")
        if otype not in ("limit", "market"):
            raise Rej("bad_request")
        tif = c.get("tif") or ("IOC" if otype == "market" else "GTC")
        if tif not in ("GTC", "IOC", "FOK") or (otype == "market" and tif == "GTC"):
            raise Rej("bad_request")
        post_only = bool(c.get("post_only", False))
        if post_only and (otype != "limit" or tif != "GTC"):
            raise Rej("bad_request")
        stp = c.get("stp") or sym["stp_default"]
        if stp not in STPS:
            raise Rej("bad_request")
        if "qty" not in c:
            raise Rej("bad_request")
        if otype == "limit":
            if c.get("price") is None:
                raise Rej("bad_request")
            price = self.price(sym, c["price"])
        else:
            if c.get("price") is not None:
                raise Rej("bad_request")
            price = None
        qty = self.qty(sym, c["qty"])
        lot = sym["lot"]
        budget = None
        limit = price
        if side == "buy":
            hasset, rasset = sym["quote"], sym["base"]
            if otype == "limit":
                unit = self.unit_buy(sym, price)
            else:
                unit = D0
                budget = self.avail(acct, hasset)
                best = self.best(sym, "sell")
                if best is not None:
                    n1 = best * lot
                    if budget < n1 + self.fee(sym, n1, sym["taker_bps"]):
                        raise Rej("insufficient_funds")
                    lim = (best / sym["tick"] * (10000 + sym["band"]) / 10000).to_integral_value(
                        ROUND_FLOOR) * sym["tick"]
                    limit = min(lim, sym["max_price"])
        else:
            hasset, rasset = sym["base"], sym["quote"]
            unit = lot
            best = self.best(sym, "buy")
            if otype == "market" and best is not None:
                lim = (best / sym["tick"] * (10000 - sym["band"]) / 10000).to_integral_value(
                    ROUND_CEILING) * sym["tick"]
                limit = max(lim, sym["tick"])
        need = qty / lot * unit
        if need and self.avail(acct, hasset) < need:
            raise Rej("insufficient_funds")
        if post_only:
            opp = self.best(sym, "sell" if side == "buy" else "buy")
            if opp is not None and (price >= opp if side == "buy" else price <= opp):
                raise Rej("post_only_would_take")
        if tif == "FOK":
            if not self.fok_ok(sym, side, acct, limit, qty, stp, budget):
                raise Rej("fok_unfillable")
        oid = self.next_oid
        self.next_oid += 1
        self.b(acct, hasset)
        self.b(acct, rasset)
        bal = self.b(acct, hasset)
        bal[0] -= need
        bal[1] += need
        o = {"oid": oid, "acct": acct, "sym": sym["name"], "side": side, "price": price,
             "qty": qty, "oqty": qty, "oprice": price, "filled": D0, "coid": coid,
             "otype": otype, "tif": tif, "post_only": post_only, "stp": stp, "unit": unit,
             "hasset": hasset, "rasset": rasset, "status": "open", "ts": ts, "seq": 0}
        self.all_orders[oid] = o
        if coid is not None:
            self.coids[(acct, coid)] = oid
        ev = [self.acc_ev(o)]
        if otype == "market" and limit is None:
            stop = None
        else:
            stop = self.match(o, limit, ev, budget)
        rem = o["qty"]
        if rem == 0:
            o["status"] = "filled"
        elif stop is None and tif == "GTC":
            self.seq += 1
            o["seq"] = self.seq
            self.orders.append(o)
        else:
            self.release(o, rem)
            o["qty"] = D0
            o["status"] = "cancelled"
            ev.append(self.can_ev(o, rem, stop or "ioc"))
        self.place_events[oid] = [dict(e) for e in ev]
        return ev

    def crosses(self, side, p, limit):
        if limit is None:
            return True
        return p <= limit if side == "buy" else p >= limit

    def fok_ok(self, sym, side, acct, limit, qty, stp, budget):
        if side == "buy" and budget is not None and self.best(sym, "sell") is None:
            return False
        if limit is None:
            return False
        need = qty
        lot = sym["lot"]
        for m in self.book_side(sym, "sell" if side == "buy" else "buy"):
            if not self.crosses(side, m["price"], limit):
                return False
            if stp != "none" and m["acct"] == acct:
                if stp == "cancel_maker":
                    continue
                return False
            qn = min(need, m["qty"])
            if budget is not None:
                n1 = m["price"] * lot
                c1 = n1 + self.fee(sym, n1, sym["taker_bps"])
                if (budget / c1).to_integral_value(ROUND_FLOOR) * lot < qn:
                    return False
                n = qn / lot * n1
                budget -= n + self.fee(sym, n, sym["taker_bps"])
            need -= qn
            if need == 0:
                return True
        return False

    def match(self, t, limit, ev, budget):
        sym = self.syms[t["sym"]]
        lot = sym["lot"]
        stop = None
        while t["qty"] > 0:
            opp = self.book_side(sym, "sell" if t["side"] == "buy" else "buy")
            if not opp:
                break
            m = opp[0]
            if not self.crosses(t["side"], m["price"], limit):
                break
            if t["stp"] != "none" and m["acct"] == t["acct"]:
                if t["stp"] == "cancel_taker":
                    stop = "stp"
                    break
                rem = m["qty"]
                self.release(m, rem)
                m["qty"] = D0
                self.close(m, "cancelled")
                ev.append(self.can_ev(m, rem, "stp"))
                if t["stp"] == "cancel_both":
                    stop = "stp"
                    break
                continue
            qn = min(t["qty"], m["qty"])
            p = m["price"]
            if budget is not None:
                n1 = p * lot
                c1 = n1 + self.fee(sym, n1, sym["taker_bps"])
                afford = (budget / c1).to_integral_value(ROUND_FLOOR) * lot
                if afford < qn:
                    if afford == 0:
                        stop = "insufficient_funds"
                        break
                    qn = afford
            n = qn * p
            mf = self.fee(sym, n, sym["maker_bps"])
            tf = self.fee(sym, n, sym["taker_bps"])
            self.fees[sym["quote"]] += mf + tf
            if budget is not None:
                budget -= n + tf
            buyer, seller = (t, m) if t["side"] == "buy" else (m, t)
            bf, sf = (tf, mf) if t["side"] == "buy" else (mf, tf)
            h = qn / lot * buyer["unit"]
            qb = self.b(buyer["acct"], sym["quote"])
            qb[1] -= h
            qb[0] += h - n - bf
            self.b(buyer["acct"], sym["base"])[0] += qn
            self.b(seller["acct"], sym["base"])[1] -= qn
            self.b(seller["acct"], sym["quote"])[0] += n - sf
            t["qty"] -= qn
            t["filled"] += qn
            m["qty"] -= qn
            m["filled"] += qn
            ev.append({
                "type": "trade", "symbol": sym["name"], "trade_id": self.next_tid,
                "price": fmt(p), "qty": fmt(qn), "maker_order_id": m["oid"],
                "taker_order_id": t["oid"], "maker_account": m["acct"],
                "taker_account": t["acct"], "taker_side": t["side"],
                "maker_fee": fmt(mf), "taker_fee": fmt(tf),
            })
            for o, fee, liq in ((m, mf, "maker"), (t, tf, "taker")):
                fl = self.fills.setdefault(o["acct"], [])
                fl.append({"trade_id": self.next_tid, "symbol": sym["name"], "order_id": o["oid"],
                           "side": o["side"], "price": fmt(p), "qty": fmt(qn), "liquidity": liq,
                           "fee": fmt(fee), "fee_asset": sym["quote"]})
                del fl[:-FILLS_WINDOW]
            self.trades.setdefault(sym["name"], []).append([self.next_tid, fmt(p), fmt(qn), t["side"]])
            self.next_tid += 1
            if m["qty"] == 0:
                self.close(m, "filled")
        return stop

    def lookup(self, c, acct, sym):
        oid = c.get("order_id")
        coid = c.get("client_order_id")
        if oid is not None:
            if type(oid) is not int or oid <= 0:
                raise Rej("bad_request")
            o = self.all_orders.get(oid)
            if o is None or o["status"] != "open":
                raise Rej("unknown_order")
            if o["acct"] != acct:
                raise Rej("wrong_account")
        elif coid is not None:
            ident(coid)
            oid = self.coids.get((acct, coid))
            o = self.all_orders.get(oid)
            if o is None or o["status"] != "open":
                raise Rej("unknown_order")
        else:
            raise Rej("bad_request")
        if o["sym"] != sym["name"]:
            raise Rej("unknown_order")
        return o

    def op_cancel(self, c, ts):
        acct = self.account(c)
        sym = self.symbol(c)
        o = self.lookup(c, acct, sym)
        rem = o["qty"]
        self.release(o, rem)
        o["qty"] = D0
        self.close(o, "cancelled")
        return [self.can_ev(o, rem, "user")]

    def op_cancel_all(self, c, ts):
        acct = self.account(c)
        sym = self.symbol(c) if c.get("symbol") is not None else None
        ev = []
        for o in sorted(self.orders, key=lambda o: o["oid"]):
            if o["acct"] != acct or (sym is not None and o["sym"] != sym["name"]):
                continue
            rem = o["qty"]
            self.release(o, rem)
            o["qty"] = D0
            self.close(o, "cancelled")
            ev.append(self.can_ev(o, rem, "user"))
        ev.append({"type": "cancelled_all", "account": acct,
                   "symbol": None if sym is None else sym["name"], "count": len(ev)})
        return ev

    def op_amend(self, c, ts):
        acct = self.account(c)
        sym = self.symbol(c)
        o = self.lookup(c, acct, sym)
        if c.get("qty") is None and c.get("price") is None:
            raise Rej("bad_request")
        nq = o["qty"] if c.get("qty") is None else self.qty(sym, c["qty"])
        np_ = o["price"] if c.get("price") is None else self.price(sym, c["price"])
        oq, op_ = o["qty"], o["price"]
        lot = sym["lot"]

        def amended(prio):
            return {"type": "amended", "order_id": o["oid"], "client_order_id": o["coid"],
                    "account": acct, "symbol": sym["name"], "side": o["side"],
                    "price": fmt(o["price"]), "qty": fmt(o["qty"]), "old_price": fmt(op_),
                    "old_qty": fmt(oq), "priority": prio}

        if np_ == op_ and nq <= oq:
            if nq < oq:
                self.release(o, oq - nq)
                o["qty"] = nq
            return [amended("kept")]
        if o["post_only"]:
            opp = self.best(sym, "sell" if o["side"] == "buy" else "buy")
            if opp is not None and (np_ >= opp if o["side"] == "buy" else np_ <= opp):
                raise Rej("post_only_would_take")
        unit = self.unit_buy(sym, np_) if o["side"] == "buy" else o["unit"]
        extra = nq / lot * unit - oq / lot * o["unit"]
        if extra > 0 and self.avail(acct, o["hasset"]) < extra:
            raise Rej("insufficient_funds")
        self.release(o, oq)
        self.orders.remove(o)
        o["price"], o["qty"], o["unit"] = np_, nq, unit
        bal = self.b(acct, o["hasset"])
        bal[0] -= nq / lot * unit
        bal[1] += nq / lot * unit
        ev = [amended("lost")]
        stop = self.match(o, np_, ev, None)
        rem = o["qty"]
        if rem == 0:
            o["status"] = "filled"
        elif stop is not None:
            self.release(o, rem)
            o["qty"] = D0
            o["status"] = "cancelled"
            ev.append(self.can_ev(o, rem, stop))
        else:
            self.seq += 1
            o["seq"] = self.seq
            self.orders.append(o)
        return ev

    # ---------------------------------------------------------------- queries
    def op_book(self, c, ts):
        sym = self.symbol(c)
        depth = c.get("depth", 10)
        out = {"type": "book", "symbol": sym["name"], "seq": self.md_seq.get(sym["name"], 0)}
        for side, key in (("buy", "bids"), ("sell", "asks")):
            levels = []
            for o in self.book_side(sym, side):
                if levels and levels[-1][0] == o["price"]:
                    levels[-1][1] += o["qty"]
                else:
                    levels.append([o["price"], o["qty"]])
            out[key] = [[fmt(p), fmt(q)] for p, q in levels[:depth]]
        return [out]

    def op_balances(self, c, ts):
        acct = self.account(c)
        out = {}
        for (a, asset) in sorted(k for k in self.bal if k[0] == acct):
            av, hd = self.bal[(a, asset)]
            out[asset] = {"available": fmt(av), "held": fmt(hd)}
        return [{"type": "balances", "account": acct, "balances": out}]

    def op_order(self, c, ts):
        acct = self.account(c)
        oid = c.get("order_id")
        if oid is None:
            oid = self.coids.get((acct, c.get("client_order_id")))
        o = self.all_orders.get(oid)
        if o is None:
            raise Rej("unknown_order")
        if o["acct"] != acct:
            raise Rej("wrong_account" if o["status"] == "open" else "unknown_order")
        return [{"type": "order", **self.order_view(o)}]

    def op_open_orders(self, c, ts):
        acct = self.account(c)
        name = None if c.get("symbol") is None else self.symbol(c)["name"]
        found = sorted((o for o in self.orders if o["acct"] == acct and name in (None, o["sym"])),
                       key=lambda o: o["oid"])
        return [{"type": "open_orders", "account": acct, "symbol": name,
                 "orders": [self.order_view(o) for o in found[:1000]], "truncated": len(found) > 1000}]

    def op_fills(self, c, ts):
        acct = self.account(c)
        name = None if c.get("symbol") is None else self.symbol(c)["name"]
        since = c.get("since") or 0
        limit = c.get("limit") or FILLS_WINDOW
        if type(since) is not int or since < 0 or type(limit) is not int or not 1 <= limit <= FILLS_WINDOW:
            raise Rej("bad_request")
        out = [f for f in self.fills.get(acct, []) if f["trade_id"] > since and name in (None, f["symbol"])]
        return [{"type": "fills", "account": acct, "symbol": name, "fills": out[:limit],
                 "more": len(out) > limit}]

    def op_trades(self, c, ts):
        name = self.symbol(c)["name"]
        since = c.get("since") or 0
        if type(since) is not int or since < 0:
            raise Rej("bad_request")
        kept = self.trades.get(name, [])[-TRADES_WINDOW:]
        return [{"type": "trades", "symbol": name, "seq": self.md_seq.get(name, 0),
                 "trades": [t for t in kept if t[0] > since],
                 "complete": not kept or since + 1 >= kept[0][0]}]

    def order_view(self, o):
        return {
            "order_id": o["oid"], "client_order_id": o["coid"],
            "account": o["acct"], "symbol": o["sym"], "side": o["side"],
            "order_type": o["otype"], "tif": o["tif"], "post_only": o["post_only"],
            "stp": o["stp"], "price": None if o["price"] is None else fmt(o["price"]),
            "qty": fmt(o["oqty"]), "remaining_qty": fmt(o["qty"]),
            "filled_qty": fmt(o["filled"]), "status": o["status"], "ts": o["ts"],
        }

    # ---------------------------------------------------------------- invariants
    def check(self):
        held = {}
        for o in self.orders:
            sym = self.syms[o["sym"]]
            k = (o["acct"], o["hasset"])
            held[k] = held.get(k, D0) + o["qty"] / sym["lot"] * o["unit"]
        tot = dict(self.fees)
        for k, (av, hd) in self.bal.items():
            assert av >= 0 and hd >= 0, k
            assert hd == held.get(k, D0), (k, hd, held.get(k))
            tot[k[1]] = tot.get(k[1], D0) + av + hd
        for a, v in tot.items():
            assert v == self.flows.get(a, D0), a
        for s in self.syms.values():
            bb, ba = self.best(s, "buy"), self.best(s, "sell")
            assert bb is None or ba is None or bb < ba
