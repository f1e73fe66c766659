"""Request/document schemas of the coordinator (pydantic v2).

The same models validate REST bodies (FastAPI renders failures as ``validation_error``/422)
and documents handed to :meth:`coordinator.store.CoordinatorStore.load_topology`.
All models reject unknown fields so typos never silently do nothing.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
MAX_MEMBERS = 3  # Aeron cluster member ids 0..2

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$"
)


def validate_host(value: str) -> str:
    """A hostname, an IPv4 address or a bracketed IPv6 address (``[::1]``)."""
    if value.startswith("[") and value.endswith("]"):
        try:
            ipaddress.IPv6Address(value[1:-1])
        except ValueError:
            raise ValueError(f"invalid IPv6 address {value!r}") from None
        return value
    if not _HOSTNAME_RE.match(value):
        raise ValueError(f"invalid host {value!r} (hostname, IPv4 or [IPv6])")
    return value


def validate_endpoint(value: str) -> str:
    """``host:port`` with 1 <= port <= 65535 (IPv6 as ``[addr]:port``)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"invalid endpoint {value!r}, expected host:port")
    validate_host(host)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid port in endpoint {value!r}")
    return f"{host}:{int(port)}"


Id = Annotated[str, Field(pattern=ID_PATTERN, strict=True)]
Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN, strict=True)]
Host = Annotated[str, Field(strict=True, min_length=1, max_length=255), AfterValidator(validate_host)]
Endpoint = Annotated[str, Field(strict=True, min_length=3, max_length=300), AfterValidator(validate_endpoint)]
MemberId = Annotated[int, Field(strict=True, ge=0, le=MAX_MEMBERS - 1)]


class PartitionState(StrEnum):
    """``active``: serves and may gain symbols.  ``draining``: keeps serving the symbols it
    owns but may not gain new ones (move them away).  ``offline``: not serving; may not gain
    symbols either."""

    ACTIVE = "active"
    DRAINING = "draining"
    OFFLINE = "offline"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkerIn(_Strict):
    id: Id
    address: Host


class WorkerUpdate(_Strict):
    address: Host


class MemberIn(_Strict):
    worker_id: Id
    member_id: MemberId
    ingress_endpoint: Endpoint


def _check_members(members: list[MemberIn]) -> None:
    ids = [m.member_id for m in members]
    if len(set(ids)) != len(ids):
        raise ValueError("member_id values must be unique within a partition")
    endpoints = [m.ingress_endpoint for m in members]
    if len(set(endpoints)) != len(endpoints):
        raise ValueError("ingress_endpoint values must be unique within a partition")


class PartitionIn(_Strict):
    id: Id
    state: PartitionState = PartitionState.ACTIVE
    members: list[MemberIn] = Field(default_factory=list, max_length=MAX_MEMBERS)
    symbols: list[Symbol] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PartitionIn:
        _check_members(self.members)
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("symbols must be unique within a partition")
        return self


class PartitionUpdate(_Strict):
    """Partial update: omitted fields are left unchanged; ``members`` replaces the list."""

    state: PartitionState | None = None
    members: list[MemberIn] | None = Field(default=None, max_length=MAX_MEMBERS)

    @model_validator(mode="after")
    def _unique(self) -> PartitionUpdate:
        if self.members is not None:
            _check_members(self.members)
        return self


class SymbolsIn(_Strict):
    symbols: list[Symbol] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SymbolsIn:
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("symbols must be unique")
        return self


class MoveIn(_Strict):
    partition: Id
    expected_epoch: Annotated[int, Field(strict=True, ge=0)] | None = None


class Topology(_Strict):
    """A whole topology: the desired complete state (replace semantics)."""

    workers: list[WorkerIn] = Field(default_factory=list)
    partitions: list[PartitionIn] = Field(default_factory=list)


class MigrationIn(_Strict):
    """A request to move ``symbol`` (its book, holds and idempotency state) to partition ``to``."""

    symbol: str = Field(min_length=1, max_length=64)
    to: Id
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                           description="the migration id (idempotency key); made up when absent")


class MigrationOut(BaseModel):
    id: str
    symbol: str
    source: str
    dest: str
    old_epoch: int
    epoch: int
    state: str = Field(description="new, prepared, frozen, imported, activating (point of no return), "
                                   "switched, done; aborting, aborted")
    abort: bool
    error: str | None
    info: dict
    created: float
    updated: float
    progress: dict | None = Field(default=None, description=(
        "the copy of the export as this coordinator process drives it: size, fetched (bytes from the "
        "source), staged (bytes at the destination), chunks, chunk_bytes, imported; null before the "
        "copy began or after a coordinator restart until the copy goes on"))


class TransferIn(_Strict):
    """Free funds of ``account`` from partition ``from_`` to ``to``, exactly once by ``id``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,40}$", description="the transfer id (idempotency key)")
    account: str = Field(min_length=1, max_length=64)
    asset: str = Field(min_length=1, max_length=64)
    amount: str = Field(pattern=r"^[0-9]+(\.[0-9]+)?$")
    from_: Id = Field(alias="from")
    to: Id


class TransferOut(BaseModel):
    id: str
    account: str
    asset: str
    amount: str
    source: str
    dest: str
    state: str = Field(description="new, debited (in transit), done; refused (nothing moved), refunding, refunded")
    error: str | None
    created: float
    updated: float
