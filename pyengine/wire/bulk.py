"""The bulk wire format: many place / cancel / amend commands in one fixed-layout binary message.

The order-entry path for high rates (market makers' mass quoting): prices in ticks, quantities
in lots, accounts and symbols named once per bulk in two small tables, and every command a
34-byte record, so a member decodes a whole bulk with ``struct.iter_unpack`` and feeds the
engine's compact API without building a dict per order. The answer is a compact binary event
list per command. The layout is documented in docs/protocol.md ("Bulk orders").

Commands of a bulk are applied one after another, in order, with the same cluster timestamp;
each has its own outcome (a reject of one never stops the others). ``client_order_id`` is a
positive integer on this path; the engine sees its decimal string, so a bulk order with
client_order_id 42 is the JSON API's ``"42"``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Command ops and answer event kinds: the same numbers as the engine's compact commands and
# events (pyengine/engine/model.py), which apply_bulk writes straight into the answer; a unit
# test holds the two tables equal.
OP_PLACE = 1
OP_CANCEL = 2
OP_AMEND = 3
EV_REJECTED = 0
EV_ACCEPTED = 1
EV_TRADE = 2
EV_CANCELLED = 3
EV_AMENDED = 4
EV_DUPLICATE = 5

MAGIC = b"MB"
VERSION = 1
MAX_COMMANDS = 1024
MAX_NAMES = 256  # per table: a full bulk stays well under Aeron's 128 KB message limit
# Once the answer reaches this size the bulk's remaining commands are not applied (reason
# ``not_applied``). The default for the engine used alone; a cluster member passes its own
# limit (``pyengine.service.matching.BULK_ANSWER_BYTES``: its answers travel in PART pieces).
MAX_ANSWER_BYTES = 96_000

HEADER = struct.Struct("<2sBHHH")  # magic, version, accounts, symbols, commands
RECORD = struct.Struct("<BBBBbxHHqqQ")  # op, flags, side, tif, stp, pad, account, symbol, price, qty, id

# record flags
F_POST_ONLY = 1
F_MARKET = 2
F_BY_CLIENT_ORDER_ID = 4  # cancel / amend: ``id`` is the client_order_id, not the order_id
KNOWN_FLAGS = F_POST_ONLY | F_MARKET | F_BY_CLIENT_ORDER_ID

# Stable reason codes of rejects and cancels on this path (append only: clients depend on them).
REJECT_REASONS = (
    "bad_request", "unknown_account", "unknown_symbol", "unknown_order", "wrong_account",
    "insufficient_funds", "out_of_bounds", "price_off_tick", "qty_off_lot",
    "post_only_would_take", "fok_unfillable", "duplicate_symbol", "unknown_asset",
    "tx_id_conflict", "amount_precision", "asset_precision", "not_applied",
)
CANCEL_REASONS = ("user", "ioc", "stp", "insufficient_funds")
OTHER_REASON = 255  # a code not in the table: the detail text starts with "<code>: "
REJECT_CODE = {r: i for i, r in enumerate(REJECT_REASONS)}
CANCEL_CODE = {r: i for i, r in enumerate(CANCEL_REASONS)}

# events of the answer (u8 kind, then the fields)
ANS_COUNT = struct.Struct("<H")
ANS_REJECTED = struct.Struct("<BBB")  # kind, reason, detail length; then the UTF-8 detail
ANS_ACCEPTED = struct.Struct("<BQ")  # kind, order_id
ANS_TRADE = struct.Struct("<BQqqQQqq")  # kind, trade_id, price, qty, maker oid, taker oid, fees
ANS_CANCELLED = struct.Struct("<BQqB")  # kind, order_id, remaining qty, reason
ANS_AMENDED = struct.Struct("<BQqqqqB")  # kind, order_id, price, qty, old price, old qty, kept
ANS_DUPLICATE = struct.Struct("<BQ")  # kind, order_id; the original events follow
ANS_STRUCTS = {
    EV_ACCEPTED: ANS_ACCEPTED, EV_TRADE: ANS_TRADE, EV_CANCELLED: ANS_CANCELLED,
    EV_AMENDED: ANS_AMENDED, EV_DUPLICATE: ANS_DUPLICATE,
}


class BulkError(ValueError):
    """A bulk message that does not follow the layout; nothing of it was applied."""


# ---------------------------------------------------------------------------- building


_SIDES = {"buy": 0, "sell": 1}
_TIFS = {"GTC": 0, "IOC": 1, "FOK": 2}
_STPS = {None: -1, "none": 0, "cancel_taker": 1, "cancel_maker": 2, "cancel_both": 3}


class BulkBuilder:
    """Collects commands for one bulk. Prices are ticks, quantities lots (the symbol's units).

    >>> b = BulkBuilder()
    >>> b.place("alice", "BTC-USD", "buy", 10_000, 5, client_order_id=1)
    >>> b.cancel("alice", "BTC-USD", client_order_id=1)
    >>> payload = b.encode()
    """

    def __init__(self) -> None:
        self._accounts: dict[str, int] = {}
        self._symbols: dict[str, int] = {}
        self._records: list[bytes] = []

    def __len__(self) -> int:
        return len(self._records)

    def _names(self, account: str, symbol: str) -> tuple[int, int]:
        a = self._accounts.get(account)
        if a is None:
            a = self._accounts[account] = _check_name(len(self._accounts), account, "account")
        s = self._symbols.get(symbol)
        if s is None:
            s = self._symbols[symbol] = _check_name(len(self._symbols), symbol, "symbol")
        return a, s

    def _add(self, record: bytes) -> None:
        if len(self._records) >= MAX_COMMANDS:
            raise BulkError(f"a bulk holds at most {MAX_COMMANDS} commands")
        self._records.append(record)

    def place(self, account: str, symbol: str, side: str, price: int, qty: int, *,
              client_order_id: int = 0, tif: str = "GTC", market: bool = False,
              post_only: bool = False, stp: str | None = None) -> None:
        """A limit order (``price`` in ticks) or, with ``market=True``, a market order
        (``price`` 0); ``client_order_id`` 0 = none."""
        a, s = self._names(account, symbol)
        flags = (F_POST_ONLY if post_only else 0) | (F_MARKET if market else 0)
        try:
            rec = RECORD.pack(OP_PLACE, flags, _SIDES[side], _TIFS[tif], _STPS[stp],
                              a, s, price, qty, client_order_id)
        except (KeyError, struct.error) as exc:
            raise BulkError(f"bad place: {exc}") from None
        self._add(rec)

    def cancel(self, account: str, symbol: str, *, order_id: int = 0, client_order_id: int = 0) -> None:
        self._add(self._by_ref(OP_CANCEL, account, symbol, 0, 0, order_id, client_order_id))

    def amend(self, account: str, symbol: str, *, order_id: int = 0, client_order_id: int = 0,
              price: int = 0, qty: int = 0) -> None:
        """New price (ticks) and/or quantity (lots); 0 = unchanged."""
        self._add(self._by_ref(OP_AMEND, account, symbol, price, qty, order_id, client_order_id))

    def _by_ref(self, op: int, account: str, symbol: str, price: int, qty: int, order_id: int,
                client_order_id: int) -> bytes:
        if (order_id > 0) == (client_order_id > 0):
            raise BulkError("give exactly one of order_id and client_order_id")
        a, s = self._names(account, symbol)
        flags, ref = (0, order_id) if order_id > 0 else (F_BY_CLIENT_ORDER_ID, client_order_id)
        try:
            return RECORD.pack(op, flags, 0, 0, 0, a, s, price, qty, ref)
        except struct.error as exc:
            raise BulkError(f"bad {'cancel' if op == OP_CANCEL else 'amend'}: {exc}") from None

    def encode(self) -> bytes:
        if not self._records:
            raise BulkError("an empty bulk")
        parts = [HEADER.pack(MAGIC, VERSION, len(self._accounts), len(self._symbols), len(self._records))]
        for name in (*self._accounts, *self._symbols):
            raw = name.encode()
            parts.append(bytes((len(raw),)) + raw)
        parts.extend(self._records)
        return b"".join(parts)


def _check_name(index: int, name: str, what: str) -> int:
    if not isinstance(name, str) or not 0 < len(name.encode()) <= 64:
        raise BulkError(f"{what} must be a string of 1..64 bytes")
    if index >= MAX_NAMES:
        raise BulkError(f"a bulk names at most {MAX_NAMES} {what}s")
    return index


# ---------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Bulk:
    """A decoded bulk: the name tables and the raw records (see ``RECORD``)."""

    accounts: tuple[str, ...]
    symbols: tuple[str, ...]
    records: list[tuple]


def decode_bulk(buf: bytes | memoryview) -> Bulk:
    """Checks the whole layout (never reads past ``buf``) or raises BulkError."""
    n = len(buf)
    if n < HEADER.size:
        raise BulkError(f"bulk of {n} bytes is shorter than its {HEADER.size}-byte header")
    magic, version, n_acc, n_sym, count = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise BulkError("bad magic: not a bulk")
    if version != VERSION:
        raise BulkError(f"unsupported bulk version {version} (this engine reads {VERSION})")
    if not 0 < count <= MAX_COMMANDS or n_acc > MAX_NAMES or n_sym > MAX_NAMES:
        raise BulkError(f"bulk counts out of range ({n_acc} accounts, {n_sym} symbols, {count} commands)")
    accounts, symbols, off = _decode_names(buf, n_acc, n_sym)
    if n - off != count * RECORD.size:
        raise BulkError(f"{count} records need {count * RECORD.size} bytes, the bulk has {n - off}")
    return Bulk(accounts, symbols, list(RECORD.iter_unpack(buf[off:])))


def decode_names(buf: bytes | memoryview) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Only the (accounts, symbols) a bulk names: what authorisation and ownership check."""
    if len(buf) < HEADER.size:
        raise BulkError(f"bulk of {len(buf)} bytes is shorter than its {HEADER.size}-byte header")
    _, _, n_acc, n_sym, _ = HEADER.unpack_from(buf, 0)
    if n_acc > MAX_NAMES or n_sym > MAX_NAMES:
        raise BulkError(f"bulk counts out of range ({n_acc} accounts, {n_sym} symbols)")
    accounts, symbols, _ = _decode_names(buf, n_acc, n_sym)
    return accounts, symbols


def _decode_names(buf: bytes | memoryview, n_acc: int, n_sym: int) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    n = len(buf)
    off = HEADER.size
    names: list[str] = []
    for i in range(n_acc + n_sym):
        if off >= n:
            raise BulkError(f"name {i}: truncated")
        length = buf[off]
        end = off + 1 + length
        if length == 0 or end > n:
            raise BulkError(f"name {i}: bad length {length}")
        try:
            names.append(bytes(buf[off + 1:end]).decode())
        except UnicodeDecodeError:
            raise BulkError(f"name {i}: not UTF-8") from None
        off = end
    return tuple(names[:n_acc]), tuple(names[n_acc:]), off


# ---------------------------------------------------------------------------- applying



# ---------------------------------------------------------------------------- answers


def decode_answer(buf: bytes | memoryview) -> list[list[tuple]]:
    """The answer of a bulk: per command, its events as tuples ``(kind, fields...)``:

    - ``(EV_REJECTED, reason, detail)`` with ``reason`` the stable code string
    - ``(EV_ACCEPTED, order_id)``
    - ``(EV_TRADE, trade_id, price, qty, maker_order_id, taker_order_id, maker_fee, taker_fee)``
    - ``(EV_CANCELLED, order_id, remaining_qty, reason)``
    - ``(EV_AMENDED, order_id, price, qty, old_price, old_qty, priority_kept)``
    - ``(EV_DUPLICATE, order_id)`` followed by the original events of that place
    """
    try:
        (count,) = ANS_COUNT.unpack_from(buf, 0)
        off = 2
        results: list[list[tuple]] = []
        for _ in range(count):
            (n_ev,) = ANS_COUNT.unpack_from(buf, off)
            off += 2
            evs: list[tuple] = []
            for _ in range(n_ev):
                k = buf[off]
                if k == EV_REJECTED:
                    _, code, length = ANS_REJECTED.unpack_from(buf, off)
                    off += ANS_REJECTED.size
                    detail = bytes(buf[off:off + length]).decode(errors="replace")
                    off += length
                    if code < len(REJECT_REASONS):
                        evs.append((EV_REJECTED, REJECT_REASONS[code], detail))
                    else:
                        reason, _, rest = detail.partition(": ")
                        evs.append((EV_REJECTED, reason, rest))
                    continue
                st = ANS_STRUCTS[k]
                ev = st.unpack_from(buf, off)
                off += st.size
                if k == EV_CANCELLED:
                    r = ev[3]
                    ev = (*ev[:3], CANCEL_REASONS[r] if r < len(CANCEL_REASONS) else "other")
                elif k == EV_AMENDED:
                    ev = (*ev[:6], "kept" if ev[6] else "lost")
                evs.append(ev)
            results.append(evs)
    except (struct.error, KeyError, IndexError) as exc:
        raise BulkError(f"undecodable bulk answer: {exc}") from None
    if off != len(buf):
        raise BulkError(f"{len(buf) - off} trailing bytes after a bulk answer")
    return results

