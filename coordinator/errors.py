"""Errors raised by the coordinator, each with a stable machine-readable code.

Every error maps to exactly one HTTP status.  The REST layer renders them as::

    {"error": {"code": "<code>", "message": "<human text>", "details": {...}}}

The codes are part of the public API: clients may switch on them, so they never change
meaning.  When an error is raised nothing has been changed (the operation's transaction is
rolled back and the routing version is untouched).
"""

from __future__ import annotations

from typing import Any

# code -> HTTP status.  Stable: add codes, never rename or re-purpose one.
ERROR_STATUS: dict[str, int] = {
    "validation_error": 422,  # malformed request / document (schema, formats, ranges)
    "not_found": 404,  # unknown URL
    "method_not_allowed": 405,
    "worker_not_found": 404,  # a path or a member refers to a worker that does not exist
    "partition_not_found": 404,
    "symbol_not_found": 404,  # the symbol is not assigned to any partition
    "duplicate_id": 409,  # a worker/partition with this id already exists (or twice in a doc)
    "symbol_already_assigned": 409,  # the symbol is owned by another partition
    "symbol_not_in_partition": 409,  # unassign from a partition that does not own the symbol
    "partition_has_no_members": 409,  # a partition without members cannot own symbols
    "partition_not_active": 409,  # only an `active` partition may gain symbols
    "partition_has_symbols": 409,  # deleting a partition that still owns symbols
    "partition_holds_funds": 409,  # deleting a partition where accounts still have balances
    "partition_unreachable": 503,  # deleting a partition that did not answer whether it holds funds
    "transfer_in_progress": 409,  # deleting a partition an unfinished transfer comes from or goes to
    "topology_needs_migration": 409,  # a topology that would drop a partition or move a symbol without them
    "worker_in_use": 409,  # deleting a worker that is still a member of partitions
    "endpoint_in_use": 409,  # an ingress endpoint is already used by another member
    "epoch_mismatch": 409,  # move with expected_epoch that is not the current epoch
    "migration_not_found": 404,
    "migration_id_conflict": 409,  # a migration id reused for another symbol or destination
    "migration_to_owner": 409,  # migrating a symbol to the partition that owns it
    "migration_in_progress": 409,  # the symbol is already moving
    "migration_past_no_return": 409,  # abort after the destination was asked to activate
    "migrations_unavailable": 503,  # this coordinator runs no migration driver
    "transfer_not_found": 404,
    "transfer_id_conflict": 409,  # a transfer id reused with other values
    "not_enough_workers": 409,  # placement of more members than there are workers
    "internal_error": 500,
}


class CoordinatorError(Exception):
    """A rejected operation.  ``code`` is stable, ``status`` is the HTTP status."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        if code not in ERROR_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __repr__(self) -> str:
        return f"CoordinatorError({self.code!r}, {self.message!r}, {self.details!r})"
