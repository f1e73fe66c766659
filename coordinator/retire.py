"""Retiring a partition from the coordinator: the ``retire`` command in the partition's own log
(pyengine/service/retire.py) before it leaves the map, ``unretire`` when it cannot leave.

A question about its funds followed by the deletion would miss a deposit sent straight to the
partition between the two. ``retire`` is one log position: a deposit applied before it makes it
refuse (409 ``partition_holds_funds``, nothing changed), a deposit after it is refused by the
partition. ``DELETE /v1/partitions/{id}`` (coordinator/api.py) retires, deletes, and unretires
if the deletion is refused after all, so a refused DELETE changes nothing.
"""

from __future__ import annotations

import logging

from coordinator.errors import CoordinatorError
from coordinator.migrations import Driver, PartitionUnavailable, StepRefused

log = logging.getLogger("coordinator.retire")

# the longest the REST API waits for a partition's answer to retire or unretire (DELETE
# /v1/partitions/{id}): a request, not a migration step
FUNDS_CHECK_TIMEOUT = 10.0

# the partition's reasons for refusing to retire -> the coordinator's error codes
_REFUSALS = {"holds_funds": "partition_holds_funds", "owns_symbols": "partition_has_symbols",
             "migration_open": "migration_in_progress"}


def _timeout(driver: Driver, timeout: float | None) -> float:
    return min(driver.step_timeout, FUNDS_CHECK_TIMEOUT) if timeout is None else timeout


def retire(driver: Driver, partition: str, timeout: float | None = None) -> bool:
    """Retire ``partition`` in its log; True if this call retired it (False: it already was).

    CoordinatorError ``partition_holds_funds`` (409) names the first balances and how to move
    them; ``partition_has_symbols`` / ``migration_in_progress`` (409) when the partition itself
    still owns a symbol or has a migration open; ``partition_unreachable`` (503) when it gives
    no answer within ``timeout`` (default: the step timeout, at most FUNDS_CHECK_TIMEOUT): a
    partition that cannot say is never taken as empty. Its fee pool does not stop it."""
    try:
        body = driver.ask(partition, {"op": "retire", "limit": 5}, _timeout(driver, timeout))
    except (PartitionUnavailable, StepRefused) as exc:
        raise CoordinatorError(
            "partition_unreachable",
            f"partition {partition!r} did not say whether it can retire ({exc}); nothing was changed. "
            "Try again once it runs; a partition gone for good is removed with ?force=true "
            "(docs/coordinator.md: the funds still in its data directory are not moved)",
            partition=partition) from None
    if body.get("type") == "retired":
        return bool(body.get("changed"))
    funds = body.get("funds") or {}
    reason = str(body.get("reason"))
    if reason != "holds_funds":
        raise CoordinatorError(_REFUSALS.get(reason, "partition_has_symbols"),
                               f"partition {partition!r} refused to retire: {body.get('detail', body)}; "
                               "nothing was changed", partition=partition, reason=reason)
    count = int(funds.get("count", 0))
    rows = funds.get("balances", [])
    shown = ", ".join(f"{b['account']} {b['asset']} {b['available']} available + {b['held']} held" for b in rows)
    raise CoordinatorError(
        "partition_holds_funds",
        f"partition {partition!r} holds funds of {count} balance(s) ({shown}"
        f"{', ...' if count > len(rows) else ''}); move them to another partition first "
        "(POST /v1/transfers or RoutedClient.transfer; `matchctl partition move` moves a "
        "partition's symbols and funds and retires it)",
        partition=partition, count=count, balances=rows, fees=funds.get("fees", {}))


def unretire(driver: Driver, partition: str, timeout: float | None = None) -> str | None:
    """Undo ``retire`` (a deletion refused after it); None when done, else why not (logged: the
    partition stays retired, refusing deposits and orders, until ``unretire`` reaches it)."""
    try:
        driver.ask(partition, {"op": "unretire"}, _timeout(driver, timeout))
    except (PartitionUnavailable, StepRefused) as exc:
        log.error("partition %s stays retired: unretire failed (%s); send it the admin command "
                  "{\"op\": \"unretire\"} once it runs", partition, exc)
        return str(exc)
    return None
