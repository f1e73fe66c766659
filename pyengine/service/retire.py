"""Retiring a partition as a command in its own log (docs/partitions.md, "Retiring a partition").

Asking a partition whether it holds funds and then taking it out of the map are two steps: a
deposit sent straight to it in between would be stranded in a partition nobody routes to. The
``retire`` admin command closes that gap where it can be closed, in the partition's log: every
member applies it at one position, so either a deposit comes first (and ``retire`` is refused
naming the funds) or ``retire`` does (and the deposit is refused).

``retire``: refused (an answer of type ``rejected``, nothing changed) while the partition owns a
symbol, has a migration open, or any account holds funds there; else the partition is retired:
every command that would change its state gets an ERROR "partition retired" with no effect, and
reads (balances, funds, book, ...) still answer. ``unretire`` undoes it, for a removal that
failed after the retire. Both are idempotent.

The flag is kept by ``Migrations`` (``retired``), which snapshots it in its JSON only when it is
set: the snapshot of a partition never retired is byte for byte what it was, and a snapshot
without the flag loads as not retired.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from pyengine.wire.protocol import Status

RETIRE_OPS = frozenset({"retire", "unretire"})

# What a retired partition still answers. Engine commands: the reads. Admin commands: the reads,
# retire/unretire, and the auth commands: a revocation must reach every member that still runs
# (an unretired partition must not accept a token revoked meanwhile), and keys change no funds.
ENGINE_READS = frozenset({"book", "order", "balances", "open_orders", "fills", "trades",
                          "subscribe", "unsubscribe"})
# mig_cleanup changes no state either: it takes a moved book's orders out of the indexes, where
# every reader already skips them
ADMIN_READS = frozenset({"ping", "state_hash", "funds", "owned_symbols", "auth_state", "mig_state",
                         "funds_check", "mig_export_chunk", "mig_cleanup", "add_key", "remove_key",
                         "revoke"}) | RETIRE_OPS

REASON = "partition_retired"

Answer = tuple[int, bytes]


def refusal(op: object) -> Answer:
    """The answer to a command a retired partition does not apply (it had no effect)."""
    what = op if isinstance(op, str) else "this command"
    return Status.ERROR, orjson.dumps({
        "error": f"partition retired: {what} refused, nothing changed (a retired partition answers reads "
                 "only; send it to a partition of the coordinator's map)",
        "reason": REASON})


def engine_gate(cmd: dict, owned: dict[str, int] | None) -> Answer | None:
    """For a retired partition: the refusal of an engine command that would change its state;
    None for a read, and for a command naming a symbol the partition does not own (MOVED then
    tells the client where the symbol went, as before the retirement)."""
    if cmd.get("op") in ENGINE_READS:
        return None
    symbol = cmd.get("symbol")
    if isinstance(symbol, str) and owned is not None and symbol not in owned:
        return None
    return refusal(cmd.get("op"))


def hash_with_flag(engine_hash: str, retired: bool) -> str:
    """The state hash members compare: the engine's, changed once the partition is retired (a
    member that missed the retirement differs), unchanged for a partition never retired."""
    if not retired:
        return engine_hash
    return hashlib.sha256(f"{engine_hash}|retired".encode()).hexdigest()[:len(engine_hash)]


def apply(svc: Any, cmd: dict) -> Answer:
    """``retire`` or ``unretire``; ``svc`` is the MatchingService (owned, migrations, funds)."""
    mig = svc.migrations
    if cmd["op"] == "unretire":
        changed, mig.retired = mig.retired, False
        return Status.OK, orjson.dumps({"type": "unretired", "changed": changed})
    limit = cmd.get("limit", 5)
    funds = svc._funds({"limit": limit})
    if mig.retired:
        return Status.OK, orjson.dumps({"type": "retired", "changed": False, "fees": funds["fees"]})
    blocker = _blocker(svc, funds)
    if blocker is not None:
        reason, detail = blocker
        return Status.OK, orjson.dumps({"type": "rejected", "op": "retire", "reason": reason, "detail": detail,
                                        "funds": funds})
    mig.retired = True
    return Status.OK, orjson.dumps({"type": "retired", "changed": True, "fees": funds["fees"]})


def _blocker(svc: Any, funds: dict) -> tuple[str, str] | None:
    """Why the partition cannot retire now: (reason code, text), else None. Its fee pool does
    not stop it (it stays in its data, as ``matchctl partition remove`` reports)."""
    if svc.owned is None:
        return "owns_symbols", "it owns every symbol (own_symbols was never given: a single-partition system)"
    if svc.owned:
        return "owns_symbols", f"it owns {', '.join(sorted(svc.owned))}; migrate them away first"
    mig = svc.migrations
    open_ids = sorted({*mig.frozen.values(), *mig.inert.values()})
    if open_ids:
        return "migration_open", f"migration(s) {', '.join(open_ids)} are open here; let them finish or abort"
    if funds["count"]:
        shown = ", ".join(f"{b['account']} {b['asset']} {b['available']} available + {b['held']} held"
                          for b in funds["balances"])
        more = ", ..." if funds["count"] > len(funds["balances"]) else ""
        return "holds_funds", f"it holds funds of {funds['count']} balance(s) ({shown}{more})"
    return None
