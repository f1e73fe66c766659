"""Compact binary codec for commands and events (hot path of the replicated service).

Lossless: ``decode_command(encode_command(c)) == c`` and
``decode_events(encode_events(evs)) == evs`` for any JSON-like input.

Commands: the first byte is a tag.

* ``1`` place, ``2`` cancel, ``3`` amend: fixed struct layouts (see ``_PLACE`` etc.) followed by
  length-prefixed UTF-8 strings. A decimal is ``kind:u8 | decimals:u8 | mantissa:i64`` where
  kind 0 = JSON null, 1 = int, 2 = decimal string (re-rendered exactly), 3 = key absent.
* ``0x7F``: anything else (other ops, unusual values, extra keys): ``orjson`` of the dict.

Events: ``count:u32`` then per event a tag: ``1`` accepted, ``2`` trade, ``3`` cancelled,
``4`` amended (fixed layouts when the event has exactly the standard keys), or ``0x7F``
followed by ``len:u32`` and the event as ``orjson``.

Strings are ``len:u16`` + UTF-8 bytes; ``len == 0xFFFF`` encodes ``None``.
"""

from __future__ import annotations

import struct

import orjson

__all__ = ["CodecError", "encode_command", "decode_command", "encode_events",
           "decode_events"]

T_PLACE = 1
T_CANCEL = 2
T_AMEND = 3
T_JSON = 0x7F
_NULL = 0xFFFF
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1

_SIDES = ("buy", "sell")
_TYPES = ("limit", "market")
_TIFS = ("GTC", "IOC", "FOK")
_STPS = ("none", "cancel_taker", "cancel_maker", "cancel_both")


class CodecError(ValueError):
    """Raised by the binary codec for malformed or truncated input."""
_SIDE_IX = {v: i for i, v in enumerate(_SIDES)}
_TYPE_IX = {v: i for i, v in enumerate(_TYPES)}
_TIF_IX = {v: i for i, v in enumerate(_TIFS)}
_STP_IX = {v: i for i, v in enumerate(_STPS)}
_ABSENT = 0xFF

# place: tag, side, type, tif, post_only, stp, then price(kind, dec, mant), qty(kind, dec, mant)
_PLACE = struct.Struct("<BBBBBBBBqBBq")
_PLACE_KEYS = frozenset(("op", "account", "symbol", "side", "type", "tif", "post_only", "price",
                         "qty", "client_order_id", "stp"))
# cancel: tag, has_order_id, order_id
_CANCEL = struct.Struct("<BBq")
_CANCEL_KEYS = frozenset(("op", "account", "symbol", "order_id", "client_order_id"))
# amend: tag, has_order_id, order_id, price(kind, dec, mant), qty(kind, dec, mant)
_AMEND = struct.Struct("<BBqBBqBBq")
_AMEND_KEYS = frozenset(("op", "account", "symbol", "order_id", "client_order_id", "price",
                         "qty"))
_H = struct.Struct("<H")
_U32 = struct.Struct("<I")

_K_NULL, _K_INT, _K_STR, _K_ABSENT = 0, 1, 2, 3


class _Fallback(Exception):
    pass


def _enc_str(v: object, out: list, nullable: bool = True) -> None:
    if v is None and nullable:
        out.append(b"\xff\xff")
        return
    if type(v) is not str:
        raise _Fallback
    b = v.encode()
    if len(b) >= 0xFFFE:
        raise _Fallback
    out.append(_H.pack(len(b)))
    out.append(b)


def _enc_dec(cmd: dict, key: str) -> tuple[int, int, int]:
    if key not in cmd:
        return _K_ABSENT, 0, 0
    v = cmd[key]
    if v is None:
        return _K_NULL, 0, 0
    t = type(v)
    if t is int:
        if _I64_MIN <= v <= _I64_MAX:
            return _K_INT, 0, v
        raise _Fallback
    if t is str and 0 < len(v) <= 30 and v[0] != "-":
        ip, dot, fp = v.partition(".")
        if ip.isdigit() and ip.isascii() and (not dot or (fp.isdigit() and fp.isascii())) and (
                ip == "0" or ip[0] != "0") and len(fp) < 250:
            m = int(ip + fp)
            if m <= _I64_MAX:
                return _K_STR, len(fp), m
    raise _Fallback


def _dec_dec(kind: int, d: int, m: int, out: dict, key: str) -> None:
    if kind == _K_ABSENT:
        return
    if kind == _K_NULL:
        out[key] = None
    elif kind == _K_INT:
        out[key] = m
    elif kind == _K_STR:
        if d:
            s = str(m).rjust(d + 1, "0")
            out[key] = s[:-d] + "." + s[-d:]
        else:
            out[key] = str(m)
    else:
        raise CodecError(f"bad decimal kind {kind} for {key}")


def _enum(cmd: dict, key: str, table: dict) -> int:
    if key not in cmd:
        return _ABSENT
    v = cmd[key]
    if type(v) is not str:
        raise _Fallback
    i = table.get(v)
    if i is None:
        raise _Fallback
    return i


def _enc_fast(cmd: dict) -> bytes:
    op = cmd.get("op")
    out: list[bytes] = []
    if op == "place":
        if not _PLACE_KEYS.issuperset(cmd):
            raise _Fallback
        side = _enum(cmd, "side", _SIDE_IX)
        typ = _enum(cmd, "type", _TYPE_IX)
        tif = _enum(cmd, "tif", _TIF_IX)
        stp = _enum(cmd, "stp", _STP_IX)
        if "post_only" in cmd:
            po = cmd["post_only"]
            if type(po) is not bool:
                raise _Fallback
            po = 1 if po else 0
        else:
            po = _ABSENT
        pk, pd, pm = _enc_dec(cmd, "price")
        qk, qd, qm = _enc_dec(cmd, "qty")
        out.append(_PLACE.pack(T_PLACE, side, typ, tif, po, stp, pk, pd, pm, qk, qd, qm))
        for k in ("account", "symbol", "client_order_id"):
            if k in cmd:
                _enc_str(cmd[k], out, k == "client_order_id")
            elif k == "client_order_id":
                out.append(b"\xfe\xff")  # absent marker
            else:
                raise _Fallback
        return b"".join(out)
    if op == "cancel" or op == "amend":
        keys = _CANCEL_KEYS if op == "cancel" else _AMEND_KEYS
        if not keys.issuperset(cmd) or "account" not in cmd or "symbol" not in cmd:
            raise _Fallback
        if "order_id" in cmd:
            oid = cmd["order_id"]
            if type(oid) is not int or not _I64_MIN <= oid <= _I64_MAX:
                raise _Fallback
            has = 1
        else:
            oid = 0
            has = 0
        if op == "cancel":
            out.append(_CANCEL.pack(T_CANCEL, has, oid))
        else:
            pk, pd, pm = _enc_dec(cmd, "price")
            qk, qd, qm = _enc_dec(cmd, "qty")
            out.append(_AMEND.pack(T_AMEND, has, oid, pk, pd, pm, qk, qd, qm))
        _enc_str(cmd["account"], out, False)
        _enc_str(cmd["symbol"], out, False)
        if "client_order_id" in cmd:
            _enc_str(cmd["client_order_id"], out)
        else:
            out.append(b"\xfe\xff")
        return b"".join(out)
    raise _Fallback


def encode_command(cmd: object) -> bytes:
    """Encode a command dict. Raises CodecError if it cannot be represented at all."""
    if type(cmd) is not dict:
        raise CodecError("command must be a dict")
    try:
        return _enc_fast(cmd)
    except _Fallback:
        pass
    try:
        return bytes((T_JSON,)) + orjson.dumps(cmd)
    except (TypeError, orjson.JSONEncodeError) as e:
        raise CodecError(f"command not encodable: {e}") from e


def _rd_str(b, pos: int, n: int) -> tuple[object, int, bool]:
    """Returns (value, new_pos, absent)."""
    if pos + 2 > n:
        raise CodecError("truncated string length")
    ln = b[pos] | (b[pos + 1] << 8)
    pos += 2
    if ln == _NULL:
        return None, pos, False
    if ln == 0xFFFE:
        return None, pos, True
    if pos + ln > n:
        raise CodecError("truncated string")
    try:
        return str(b[pos:pos + ln], "utf-8"), pos + ln, False
    except UnicodeDecodeError as e:
        raise CodecError("invalid UTF-8 in string") from e


def _enum_dec(i: int, names: tuple, out: dict, key: str) -> None:
    if i == _ABSENT:
        return
    if i >= len(names):
        raise CodecError(f"bad {key} code {i}")
    out[key] = names[i]


def decode_command(b: object) -> dict:
    """Decode bytes from ``encode_command``. Raises CodecError on malformed/truncated input."""
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise CodecError("payload must be bytes")
    if isinstance(b, memoryview):
        b = b.cast("B") if b.format != "B" else b
    n = len(b)
    if n == 0:
        raise CodecError("empty payload")
    tag = b[0]
    try:
        if tag == T_JSON:
            try:
                cmd = orjson.loads(bytes(b[1:]))
            except orjson.JSONDecodeError as e:
                raise CodecError(f"bad JSON command: {e}") from e
            if type(cmd) is not dict:
                raise CodecError("JSON command is not an object")
            return cmd
        if tag == T_PLACE:
            if n < _PLACE.size:
                raise CodecError("truncated place command")
            (_t, side, typ, tif, po, stp, pk, pd, pm, qk, qd, qm) = _PLACE.unpack_from(b, 0)
            pos = _PLACE.size
            acct, pos, _ = _rd_str(b, pos, n)
            sym, pos, _ = _rd_str(b, pos, n)
            coid, pos, coid_absent = _rd_str(b, pos, n)
            if pos != n:
                raise CodecError("trailing bytes after place command")
            cmd = {"op": "place", "account": acct, "symbol": sym}
            _enum_dec(side, _SIDES, cmd, "side")
            _enum_dec(typ, _TYPES, cmd, "type")
            _enum_dec(tif, _TIFS, cmd, "tif")
            if po != _ABSENT:
                if po > 1:
                    raise CodecError("bad post_only")
                cmd["post_only"] = po == 1
            _dec_dec(pk, pd, pm, cmd, "price")
            _dec_dec(qk, qd, qm, cmd, "qty")
            if not coid_absent:
                cmd["client_order_id"] = coid
            _enum_dec(stp, _STPS, cmd, "stp")
            return cmd
        if tag == T_CANCEL or tag == T_AMEND:
            st = _CANCEL if tag == T_CANCEL else _AMEND
            if n < st.size:
                raise CodecError("truncated cancel/amend command")
            vals = st.unpack_from(b, 0)
            pos = st.size
            acct, pos, _ = _rd_str(b, pos, n)
            sym, pos, _ = _rd_str(b, pos, n)
            coid, pos, coid_absent = _rd_str(b, pos, n)
            if pos != n:
                raise CodecError("trailing bytes after command")
            cmd = {"op": "cancel" if tag == T_CANCEL else "amend", "account": acct,
                   "symbol": sym}
            if vals[1] > 1:
                raise CodecError("bad order_id flag")
            if vals[1]:
                cmd["order_id"] = vals[2]
            if not coid_absent:
                cmd["client_order_id"] = coid
            if tag == T_AMEND:
                _dec_dec(vals[3], vals[4], vals[5], cmd, "price")
                _dec_dec(vals[6], vals[7], vals[8], cmd, "qty")
            return cmd
    except struct.error as e:
        raise CodecError(f"malformed command: {e}") from e
    raise CodecError(f"unknown command tag {tag}")


# ------------------------------------------------------------------------------ events
_EV_SCHEMAS = {
    "accepted": (1, [("order_id", "q"), ("client_order_id", "S"), ("account", "s"),
                     ("symbol", "s"), ("side", "s"), ("order_type", "s"), ("tif", "s"),
                     ("post_only", "b"), ("stp", "s"), ("price", "S"), ("qty", "s")]),
    "trade": (2, [("symbol", "s"), ("trade_id", "q"), ("price", "s"), ("qty", "s"),
                  ("maker_order_id", "q"), ("taker_order_id", "q"), ("maker_account", "s"),
                  ("taker_account", "s"), ("taker_side", "s"), ("maker_fee", "s"),
                  ("taker_fee", "s")]),
    "cancelled": (3, [("order_id", "q"), ("client_order_id", "S"), ("account", "s"),
                      ("symbol", "s"), ("side", "s"), ("remaining_qty", "s"), ("reason", "s")]),
    "amended": (4, [("order_id", "q"), ("client_order_id", "S"), ("account", "s"),
                    ("symbol", "s"), ("side", "s"), ("price", "s"), ("qty", "s"),
                    ("old_price", "s"), ("old_qty", "s"), ("priority", "s")]),
}


class _Schema:
    __slots__ = ("tag", "type", "keys", "keyset", "fixed", "fixed_keys", "fixed_bool",
                 "str_keys", "str_null")

    def __init__(self, typ: str, tag: int, fields: list) -> None:
        self.tag = tag
        self.type = typ
        self.keys = ["type"] + [k for k, _ in fields]
        self.keyset = frozenset(self.keys)
        fx = [(k, c) for k, c in fields if c in "qb"]
        self.fixed_keys = [k for k, _ in fx]
        self.fixed_bool = [c == "b" for _, c in fx]
        self.fixed = struct.Struct("<" + "".join("q" if c == "q" else "?" for _, c in fx))
        self.str_keys = [k for k, c in fields if c in "sS"]
        self.str_null = [c == "S" for k, c in fields if c in "sS"]


_SCHEMAS = {t: _Schema(t, tag, f) for t, (tag, f) in _EV_SCHEMAS.items()}
_BY_TAG = {s.tag: s for s in _SCHEMAS.values()}


def _enc_event(e: dict, out: list) -> None:
    t = e.get("type")
    sc = _SCHEMAS.get(t) if isinstance(t, str) else None
    if sc is not None and len(e) == len(sc.keys) and sc.keyset.issuperset(e):
        try:
            vals = []
            for k, isb in zip(sc.fixed_keys, sc.fixed_bool, strict=True):
                v = e[k]
                if isb:
                    if type(v) is not bool:
                        raise _Fallback
                elif type(v) is not int or not _I64_MIN <= v <= _I64_MAX:
                    raise _Fallback
                vals.append(v)
            parts = [bytes((sc.tag,)), sc.fixed.pack(*vals)]
            for k, nullable in zip(sc.str_keys, sc.str_null, strict=True):
                _enc_str(e[k], parts, nullable)
            out.extend(parts)
            return
        except _Fallback:
            pass
    try:
        j = orjson.dumps(e)
    except (TypeError, orjson.JSONEncodeError) as ex:
        raise CodecError(f"event not encodable: {ex}") from ex
    out.append(bytes((T_JSON,)))
    out.append(_U32.pack(len(j)))
    out.append(j)


def encode_events(events: object) -> bytes:
    if not isinstance(events, list):
        raise CodecError("events must be a list")
    out = [_U32.pack(len(events))]
    for e in events:
        if type(e) is not dict:
            raise CodecError("event must be a dict")
        _enc_event(e, out)
    return b"".join(out)


def decode_events(b: object) -> list[dict]:
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise CodecError("payload must be bytes")
    if isinstance(b, memoryview) and b.format != "B":
        b = b.cast("B")
    n = len(b)
    if n < 4:
        raise CodecError("truncated events header")
    count = _U32.unpack_from(b, 0)[0]
    pos = 4
    out = []
    try:
        for _ in range(count):
            if pos >= n:
                raise CodecError("truncated events")
            tag = b[pos]
            pos += 1
            if tag == T_JSON:
                if pos + 4 > n:
                    raise CodecError("truncated event length")
                ln = _U32.unpack_from(b, pos)[0]
                pos += 4
                if pos + ln > n:
                    raise CodecError("truncated JSON event")
                try:
                    e = orjson.loads(bytes(b[pos:pos + ln]))
                except orjson.JSONDecodeError as ex:
                    raise CodecError(f"bad JSON event: {ex}") from ex
                if type(e) is not dict:
                    raise CodecError("JSON event is not an object")
                pos += ln
                out.append(e)
                continue
            sc = _BY_TAG.get(tag)
            if sc is None:
                raise CodecError(f"unknown event tag {tag}")
            if pos + sc.fixed.size > n:
                raise CodecError("truncated event")
            fixed = sc.fixed.unpack_from(b, pos)
            pos += sc.fixed.size
            vals = dict(zip(sc.fixed_keys, fixed, strict=True))
            for k, nullable in zip(sc.str_keys, sc.str_null, strict=True):
                v, pos, absent = _rd_str(b, pos, n)
                if absent or (v is None and not nullable):
                    raise CodecError(f"bad string for {k}")
                vals[k] = v
            e = {"type": sc.type}
            for k in sc.keys[1:]:
                e[k] = vals[k]
            out.append(e)
    except struct.error as ex:
        raise CodecError(f"malformed events: {ex}") from ex
    if pos != n:
        raise CodecError("trailing bytes after events")
    return out
