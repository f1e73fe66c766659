"""Exact decimal <-> scaled integer conversion. No floats anywhere.

A decimal at the edge is a string such as ``"100.5"`` (an optional leading ``-``, digits,
an optional ``.`` and digits; no exponent, no spaces) or an ``int``. ``bool`` and ``float``
are refused. Inside the engine every quantity is an ``int`` at a fixed decimal scale.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from .errors import Reject

_DEC_RE: Final = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_MAX_LEN: Final = 48
POW10: Final = [10**i for i in range(80)]


def parse_dec(x: object, what: str = "value") -> tuple[int, int]:
    """Return ``(coefficient, decimals)`` with value == coefficient * 10**-decimals.

    Raises ``Reject("bad_request")`` for anything that is not an int or a plain decimal string.
    """
    if type(x) is int:
        if -(10**30) < x < 10**30:
            return x, 0
    elif type(x) is str:
        if len(x) <= _MAX_LEN:
            m = _DEC_RE.fullmatch(x)
            if m is not None:
                ip = m.group(2)
                fp = m.group(3)
                if fp:
                    c = int(ip + fp)
                    d = len(fp)
                else:
                    c = int(ip)
                    d = 0
                return (-c if m.group(1) else c), d
    elif isinstance(x, Decimal):
        if x.is_finite():
            return parse_dec(format(x, "f"), what)
    raise Reject("bad_request", f"{what} must be a decimal string or an integer")


def to_scale(c: int, d: int, scale: int) -> int | None:
    """Exact ``c * 10**-d`` expressed in units of ``10**-scale``; ``None`` if not representable."""
    if d <= scale:
        return c * POW10[scale - d]
    q, r = divmod(c, 10 ** (d - scale))
    return None if r else q


def decimals_of(c: int, d: int) -> tuple[int, int]:
    """Normalise ``(c, d)``: strip trailing zeros from the coefficient while ``d > 0``."""
    while d > 0 and c % 10 == 0:
        c //= 10
        d -= 1
    return c, d


def fmt_scaled(v: int, d: int) -> str:
    """Canonical decimal string of ``v * 10**-d``: no exponent, no trailing zeros."""
    if d == 0:
        return str(v)
    if v < 0:
        return "-" + fmt_scaled(-v, d)
    s = str(v)
    if len(s) <= d:
        s = "0" * (d + 1 - len(s)) + s
    ip = s[:-d]
    fp = s[-d:].rstrip("0")
    return ip + "." + fp if fp else ip
