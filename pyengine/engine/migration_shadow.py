"""The destination's pre-copy in pieces, built in the engine's own form as the pieces arrive,
and its import at the freeze in O(changes) (docs/migration.md, issue #19).

The import at the freeze used to walk the whole pre-copied book three times in one log message
(compose and digest it, check each order's account, holds and id, then point each order at the
engine's account, balances and symbol and put it in the engine's indexes): ~50 ms of CPU at
100,000 orders on every destination member at once, while the source's other symbols waited
for the cores. Here each piece, as it arrives (before the freeze, while the symbol trades at the
source), is built the way the import would leave it:

- each order points at the engine's account and balances (``AcctRec``: those it had when the
  piece came, or objects of the record's own that the import installs, where it had none) and
  at the symbol object that will be the engine's (the engine's own if it has the symbol, else
  the pre-copy's, which the import installs with the export's state);
- per account, its open orders and client order ids as the engine's indexes will hold them,
  and the units its orders hold; per queue (one side, one price), its order count and digest
  (``migration.fold_level``, the source's per-queue records).

Nothing of it is in the engine yet: no index, no balance, no account (the engine's state hash
and every answer are those of an engine without it). The import at the freeze then applies the
delta (removed, changed in place, appended: O(delta)), digests again only the queues the delta
touched and folds the queues' digests (O(levels)), checks each account's holds from the records
(O(accounts)), and merges the records into the engine's indexes: each the smaller dictionary
added to the larger (C loops, no Python step per order), so a destination with few open orders
of its own takes the records' dictionaries as they are. When something is not as the pieces left it (the symbol or an
account or balance appeared here since, two orders of one account share a client order id), it
points the orders again and fills the indexes order by order in priority order, as the import
did before: the same result, at the old cost.

A member restored from a snapshot between the pieces has no records (they are not state): it
builds them from the pieces' bytes at its next piece or at the import, against its own engine.
"""

from __future__ import annotations

from bisect import insort

from .columns import Cols
from .errors import MigrationError
from .migration import (
    _FL_SELL,
    _SETTINGS,
    PAUSE_EVERY,
    Pause,
    _adopt_accounts,
    _adopt_book,
    _check_holds,
    _check_rows,
    _check_target,
    _composed,
    _Delta,
    _mix,
    _new_order,
    _read,
    _take_symbol,
    claim_coid,
    delta_change,
    delta_remove,
    fold_level,
    move_levels,
    without_gc,
)
from .model import BUY, SELL, Account, Bal, EngineState, Level, Order, Symbol

# a symbol's state besides its book (what an export's small engine carries): copied onto the
# pre-copy's symbol object when it becomes the engine's, as if the export's own were installed
_SYMBOL_STATE = ("name", "base", "quote", "tick_c", "tick_d", "lot_c", "lot_d", "qpu", "bpl",
                 "min_qty", "max_qty", "max_price", "maker_bps", "taker_bps", "hold_bps",
                 "stp_default", "band_bps", "pcache", "qcache", "pstr", "qstr", "tick_str",
                 "lot_str", "quote_dec", "seq", "stamp", "watch", "md_levels", "md_trades", "recent")


class AcctRec:
    """One account's orders in the pre-copy: the objects they point at, its open orders and client
    order ids as the engine's indexes will hold them, and the units they hold."""

    __slots__ = ("acct", "bbal", "qbal", "open", "coids", "dup", "held")

    def __init__(self, eng: EngineState, name: str, sym: Symbol) -> None:
        a = eng.accounts.get(name)
        if a is None:  # the import installs this one, balances and all, if it still has none
            a = Account(name)
            a.bal[sym.base] = Bal()
            a.bal[sym.quote] = Bal()
        b = a.bal.get(sym.base)
        q = a.bal.get(sym.quote)
        self.acct = a
        self.bbal = b if b is not None else Bal()
        self.qbal = q if q is not None else Bal()
        self.open: dict[object, Order] = {}
        self.coids: dict[str, Order] = {}
        # two of its orders share a client order id (a conflict an earlier import kept): which
        # one the index names depends on their priority, so the import goes order by order
        self.dup = False
        self.held = [0, 0]  # by side: quote held by its buys, base held by its sells

    def add(self, o: Order) -> None:
        self.open[o.key] = o
        c = o.coid
        if c is not None:
            if c in self.coids:
                self.dup = True
            else:
                self.coids[c] = o
        self.held[o.side] += o.qty * o.unit

    def forget(self, o: Order) -> None:
        del self.open[o.key]
        c = o.coid
        if c is not None and self.coids.get(c) is o:
            del self.coids[c]
        self.held[o.side] -= o.qty * o.unit

    def side_objects(self, side: int) -> tuple[Bal, Bal]:
        """(held, received) balances of an order on ``side``."""
        return (self.qbal, self.bbal) if side == BUY else (self.bbal, self.qbal)


class Shadow:
    """A pre-copy in pieces at the destination (not state: rebuilt from the pieces' bytes)."""

    __slots__ = ("name", "sym", "target", "orders", "accts", "queues")

    def __init__(self, eng: EngineState, name: str, psym: Symbol) -> None:
        self.name = name
        self.sym = psym  # holds the pre-copy's levels; the settings of its first piece
        cur = eng.symbols.get(name)
        self.target = cur if cur is not None else psym  # the symbol its orders point at
        self.orders: dict[object, Order] = {}
        self.accts: dict[str, AcctRec] = {}
        self.queues: dict[int, tuple[int, int]] = {}  # key (bids +price, asks -price): (orders, digest)

    def rec(self, eng: EngineState, name: str) -> AcctRec:
        r = self.accts.get(name)
        if r is None:
            r = self.accts[name] = AcctRec(eng, name, self.sym)
        return r

    def new_order(self, c: Cols, i: int, r: AcctRec) -> Order:
        """Order ``i`` of checked columns ``c`` (of account ``r``), pointing at what it will
        point at in the engine."""
        side = SELL if c.flags[i] & _FL_SELL else BUY
        sym = self.sym
        unit = sym.bpl if side == SELL else sym.buy_unit(c.price[i])
        hb, rb = r.side_objects(side)
        o = _new_order(c, i, r.acct, self.target, side, unit, hb, rb)
        r.add(o)
        return o

    def level(self, side: int, price: int) -> Level:
        return self.sym.level_of(side, price)


def _key(side: int, price: int) -> int:
    return price if side == BUY else -price


def extend_shadow(eng: EngineState, sh: Shadow | None, blob: bytes, pause: Pause = None) -> Shadow:
    """The destination's pre-copy with one more piece (``sh`` None: the first), built against
    ``eng`` (which it does not change). Raises MigrationError, ``sh`` unchanged, if the piece
    does not fit (malformed, a queue or an order it has already, other settings)."""
    return without_gc(lambda: _extend(eng, sh, blob, pause))


def _extend(eng: EngineState, sh: Shadow | None, blob: bytes, pause: Pause) -> Shadow:
    meta, mini, c, delta = _read(blob)
    if delta is not None:
        raise MigrationError("a pre-copy's piece is not a delta export")
    name = meta["symbol"]
    psym = mini.symbols[name]
    if sh is not None:
        if name != sh.name:
            raise MigrationError(f"the pre-copy holds no {name}")
        for setting in _SETTINGS:
            if getattr(sh.sym, setting) != getattr(psym, setting):
                raise MigrationError(f"{name}'s settings differ between the pre-copy's pieces ({setting})")
    macc = [a.name for a in mini.accounts.values()]
    have: dict[object, Order] = {} if sh is None else sh.orders
    for i in range(len(c.oid)):
        if c.oid[i] in have:
            raise MigrationError(f"piece's order {c.oid[i]} is in the pre-copy already")
        if sh is not None:
            k = _key(SELL if c.flags[i] & _FL_SELL else BUY, c.price[i])
            if k in sh.queues:
                side_name = "bid" if k > 0 else "ask"
                raise MigrationError(f"piece's {side_name} queue at {c.price[i]} is in the pre-copy already")
    _check_holds(mini, psym, _check_rows(c, psym, len(macc), have, pause))
    if sh is None:
        sh = Shadow(eng, name, psym)
    recs = [sh.rec(eng, an) for an in macc]
    sym = sh.sym
    orders = sh.orders
    lvl: Level | None = None
    key = 0
    n = 0
    qd = 0
    for i in range(len(c.oid)):
        if pause is not None and i & (PAUSE_EVERY - 1) == PAUSE_EVERY - 1:
            pause()
        o = sh.new_order(c, i, recs[c.acct[i]])
        k = _key(o.side, o.price)
        if lvl is None or k != key:
            if lvl is not None:
                sh.queues[key] = (n, qd)
            lvl = Level()
            if o.side == BUY:
                sym.bids[o.price] = lvl
                insort(sym.bid_keys, o.price)
            else:
                sym.asks[o.price] = lvl
                insort(sym.ask_keys, -o.price)
            key = k
            n = 0
            qd = 0
        lvl.push(o)
        orders[o.key] = o
        n += 1
        qd = _mix(qd, o.oid, o.side, o.price, o.qty, o.filled)
    if lvl is not None:
        sh.queues[key] = (n, qd)
    return sh


def import_pieces(eng: EngineState, sh: Shadow, base_sha: str, blob: object, pause: Pause = None) -> dict:
    """Add a delta export's symbol to ``eng`` (format version 3 after a pre-copy in pieces whose
    identity is ``base_sha``): the delta applied to ``sh``, the book checked against the source's
    (order count, the queues' folded digest, each account's holds), then ``sh``'s records merged
    into the engine; the state (holds, finished orders) as ``migration.import_symbol``. Returns
    what ``import_symbol`` returns. Raises MigrationError, ``eng`` unchanged (``sh`` may be half
    changed then: build it again), if the export does not fit."""
    return without_gc(lambda: _import(eng, sh, base_sha, blob, pause))


def _apply_delta(eng: EngineState, sh: Shadow, c: Cols, macc: list[str], delta: _Delta) -> set[int]:
    """The delta's removals, in-place changes and appended orders on ``sh``; returns the keys of
    the queues it touched."""
    removed, ch_oid, ch_qty, ch_filled = delta
    sorders = sh.orders
    sym = sh.sym
    touched: set[int] = set()
    for oid in removed:
        o = delta_remove(sorders, sym, oid)
        sh.accts[o.acct.name].forget(o)
        touched.add(_key(o.side, o.price))
    for i in range(len(ch_oid)):
        o2, was = delta_change(sorders, ch_oid[i], ch_qty[i], ch_filled[i])
        sh.accts[o2.acct.name].held[o2.side] += (o2.qty - was) * o2.unit
        touched.add(_key(o2.side, o2.price))
    for i in range(len(c.oid)):
        o3 = sh.new_order(c, i, sh.rec(eng, macc[c.acct[i]]))
        if o3.key in sorders:
            raise MigrationError(f"order {o3.oid} of the delta is in the pre-copy already")
        sorders[o3.key] = o3
        sh.level(o3.side, o3.price).push(o3)
        touched.add(_key(o3.side, o3.price))
    return touched


def _book_digest(sh: Shadow, touched: set[int]) -> tuple[int, int]:
    """(orders, folded digest) of ``sh``'s book: the touched queues digested again, the others'
    from their records."""
    sym = sh.sym
    queues = sh.queues
    for key in touched:
        lvl = sym.bids.get(key) if key > 0 else sym.asks.get(-key)
        if lvl is None:
            queues.pop(key, None)
            continue
        n = 0
        qd = 0
        o = lvl.head
        while o is not None:
            qd = _mix(qd, o.oid, o.side, o.price, o.qty, o.filled)
            n += 1
            o = o.nxt
        queues[key] = (n, qd)
    total = 0
    h = 0
    for keys in (sym.bid_keys, sym.ask_keys):
        for i in range(len(keys) - 1, -1, -1):
            qn, qdig = queues[keys[i]]
            h = fold_level(h, keys[i], qn, qdig)
            total += qn
    return total, h


def _import(eng: EngineState, sh: Shadow, base_sha: str, blob: object, pause: Pause) -> dict:
    meta, mini, c, delta = _read(blob)
    if delta is None or not meta.get("ldigest"):
        raise MigrationError("not a delta export of a pre-copy in pieces")
    if meta["precopy"] != base_sha:
        raise MigrationError("the delta export is of another pre-copy")
    name = meta["symbol"]
    src = mini.symbols[name]
    if name != sh.name:
        raise MigrationError(f"the pre-copy holds no {name}")
    for setting in _SETTINGS:
        if getattr(sh.sym, setting) != getattr(src, setting):
            raise MigrationError(f"{name}'s settings changed since the pre-copy ({setting})")
    cur = _check_target(eng, name, mini, src)
    macc = [a.name for a in mini.accounts.values()]
    _check_rows(c, src, len(macc), eng.orders)
    touched = _apply_delta(eng, sh, c, macc, delta)
    n, h = _book_digest(sh, touched)
    if n != meta["orders"] or h != meta["digest"]:
        raise MigrationError("the book made of the pre-copy and the delta is not the source's")
    ix = {macc[i]: i for i in range(len(macc))}
    held = [0] * (2 * len(macc))
    for an, r in sh.accts.items():
        if not r.open:
            continue
        ai = ix.get(an)
        if ai is None:
            o = next(iter(r.open.values()))
            raise MigrationError(f"order {o.oid}'s account {an} is not in the export")
        held[2 * ai] = r.held[BUY]
        held[2 * ai + 1] = r.held[SELL]
    _check_holds(mini, src, held)
    if not eng.orders.keys().isdisjoint(sh.orders.keys()):
        clash = min([o.oid for o in sh.orders.values() if o.key in eng.orders])
        raise MigrationError(f"order id {clash} is already open here")
    # all checked: the symbol, its accounts and the pre-copy's book move into the engine
    if cur is None:
        for attr in _SYMBOL_STATE:
            setattr(sh.sym, attr, getattr(src, attr))
        sym = _take_symbol(eng, name, mini, sh.sym, None)
    else:
        sym = _take_symbol(eng, name, mini, src, cur)
    _install_accounts(eng, sh, macc, sym)
    accts, conflicts, skipped, forgotten = _adopt_accounts(eng, mini, sym, cur)
    if _as_built(eng, sh, sym):
        conflicts += _merge(eng, sh, sym)
    else:
        conflicts += _order_by_order(eng, sh, sym, accts, ix, pause)
    sh.orders = {}
    sh.accts = {}
    sh.queues = {}
    return {**meta, "coid_conflicts": conflicts, "finished_skipped": skipped,
            "finished_forgotten": forgotten}


def _install_accounts(eng: EngineState, sh: Shadow, macc: list[str], sym: Symbol) -> None:
    """The export's accounts the engine lacks, in the export's order (as ``_adopt_accounts``
    would create them): the records' own where the orders point at them, else new ones; the
    records' balances where an account here lacks the asset."""
    for an in macc:
        r = sh.accts.get(an)
        a = eng.accounts.get(an)
        if r is None or not r.open:
            if a is None:
                eng.accounts[an] = Account(an)
            continue
        if a is None:
            a = r.acct
            eng.accounts[an] = a
        if a is r.acct:
            if sym.base not in a.bal:
                a.bal[sym.base] = r.bbal
            if sym.quote not in a.bal:
                a.bal[sym.quote] = r.qbal


def _as_built(eng: EngineState, sh: Shadow, sym: Symbol) -> bool:
    """Every order of ``sh`` points at what it must in ``eng`` and no account's client order ids
    depend on its orders' priority."""
    if sym is not sh.target:
        return False
    for an, r in sh.accts.items():
        if not r.open:
            continue
        a = eng.accounts[an]
        if r.dup or a is not r.acct or a.bal[sym.base] is not r.bbal or a.bal[sym.quote] is not r.qbal:
            return False
    return True


def _union(have: dict, add: dict) -> dict:
    """``have`` and ``add`` (no key in both) as one dict: the smaller is added to the larger, which
    is returned (the indexes' order is not state: readers that list sort)."""
    if len(have) < len(add):
        add.update(have)
        return add
    have.update(add)
    return have


def _merge(eng: EngineState, sh: Shadow, sym: Symbol) -> int:
    """The records into the engine's indexes, each the smaller dict added to the larger (a
    destination with few open orders of its own takes the records' dicts as they are); returns
    the client order id conflicts."""
    conflicts = 0
    eng.orders = _union(eng.orders, sh.orders)
    for r in sh.accts.values():
        if not r.open:
            continue
        a = r.acct
        a.open = _union(a.open, r.open)
        idx = a.coid_index()
        if idx.keys().isdisjoint(r.coids.keys()):
            a.coids = _union(idx, r.coids)
            continue
        for coid, o in r.coids.items():
            conflicts += claim_coid(idx, coid, o)
    if sym is not sh.sym:
        move_levels(sh.sym, sym)
    return conflicts


def _order_by_order(eng: EngineState, sh: Shadow, sym: Symbol, accts: list[Account], ix: dict[str, int],
                    pause: Pause) -> int:
    """The book into the engine order by order in priority order, each order pointed again at
    its account, balances and symbol here (``migration._adopt_book``)."""
    book, _h = _composed(sh.sym, True, pause)
    owner = [ix[o.acct.name] for o in book]
    held_by = sh.sym
    if sym is sh.sym:  # _adopt_book moves the levels from one symbol object to another
        held_by = Symbol()
        move_levels(sh.sym, held_by)
    return _adopt_book(eng, sym, held_by, book, accts, owner, pause)


def release_shadow(shadow: EngineState | Shadow) -> None:
    """A pre-copy built beside the engine that will not be imported (an abort): in pieces
    (``Shadow``) or whole (``migration.build_shadow``'s small engine). Its levels and orders refer
    to one another, and the service keeps the pieces out of the cyclic collector
    (``gc.freeze``, as a snapshot keeps the engine), so the links are undone here: reference
    counting then frees them."""
    if isinstance(shadow, Shadow):
        _unlink(shadow.sym)
        shadow.orders = {}
        shadow.accts = {}
        shadow.queues = {}
        return
    for sym in shadow.symbols.values():
        _unlink(sym)
    for acct in shadow.accounts.values():
        acct.open.clear()
        acct.coids.clear()
        acct.finished.clear()
    shadow.orders.clear()


def _unlink(sym: Symbol) -> None:
    for levels in (sym.bids, sym.asks):
        for lvl in levels.values():
            for o in lvl.orders():
                o.lvl = None
                o.prev = None
                o.nxt = None
            lvl.head = None
            lvl.tail = None
    sym.bids = {}
    sym.asks = {}
    sym.bid_keys = []
    sym.ask_keys = []
