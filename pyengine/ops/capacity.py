"""The capacity model behind ``matchctl capacity``: partitions, workers, cores and memory for an
order rate, a symbol count and a number of resting orders, from constants the benches measured.

Every constant names its report in bench/reports/; docs/capacity.md shows the measurement behind
each and how to measure them again on the target machines (then pass ``--constants FILE``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

MEMBERS_PER_PARTITION = 3
MIB = 1 << 20


class CapacityError(ValueError):
    """An input the model cannot use; the message names it."""


@dataclass(frozen=True)
class Constants:
    # highest sustained replicated rate of one partition (3 members + client on 2 shared cores)
    bulk_orders_per_s_per_partition: float = 60_640  # cluster_throughput_bulk.md
    single_orders_per_s_per_partition: float = 9_039  # cluster_throughput.md
    # CPU of one member per order it applies (every member applies every order)
    bulk_member_cpu_us_per_order: float = 9.0  # cluster_throughput_bulk.md (members 9, 9, 8 us)
    single_member_cpu_us_per_order: float = 49.0  # cluster_throughput.md (members 47, 53, 46 us)
    idle_member_cores: float = 0.138  # idle_cpu.md (variant after: 13.8 % of a core per member)
    # share of a member's CPU spent in its service thread, i.e. in Python: a worker's members share
    # one interpreter lock, so a worker runs at most one core of them
    service_thread_share: float = 0.75  # cluster_throughput_bulk.md (clustered-service 42 of 56 %, 43/53, 37/47)
    idle_member_bytes: float = 184 * MIB  # capacity_constants.md (largest idle member RSS)
    resting_order_bytes: float = 495  # capacity_constants.md (RSS growth per resting order)
    snapshot_bytes_per_order: float = 82  # snapshot_recovery.md (82.5 MB for 1M orders)
    snapshot_s_per_million: float = 5.41  # snapshot_recovery.md
    recovery_s_per_million: float = 8.64  # snapshot_recovery.md (all 3 restarted -> first answer)

    @classmethod
    def load(cls, path: Path | None) -> Constants:
        if path is None:
            return cls()
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CapacityError(f"constants file {path}: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known if isinstance(doc, dict) else {"(not an object)"}
        if unknown:
            raise CapacityError(f"constants file {path}: unknown constants {sorted(unknown)}")
        if not all(isinstance(v, (int, float)) and v > 0 for v in doc.values()):
            raise CapacityError(f"constants file {path}: every constant must be a positive number")
        return replace(cls(), **doc)


@dataclass(frozen=True)
class Plan:
    partitions: int
    members: int
    workers: int
    cores: float
    memory_bytes: float
    memory_per_worker_bytes: float
    resting_per_partition: int
    orders_per_s_per_partition: float
    snapshot_s: float
    recovery_s: float
    limited_by: str
    warnings: tuple[str, ...]


def plan(orders_per_s: float, symbols: int, resting_orders: int, *, api: str = "bulk", headroom: float = 0.5,
         cores_per_worker: int = 8, recovery_target_s: float = 10.0, constants: Constants | None = None) -> Plan:
    """Partitions enough for the rate (each run at ``headroom`` of its measured ceiling) and for the
    state (each partition's recovery within ``recovery_target_s``); 3 members each; cores for every
    member's share of the orders plus its idle cost, again at ``headroom``; memory for every member's
    resting orders plus an idle member's footprint and one snapshot being built."""
    c = constants or Constants()
    if not orders_per_s > 0:
        raise CapacityError("--orders-per-s must be > 0")
    if symbols < 1:
        raise CapacityError("--symbols must be >= 1")
    if resting_orders < 0:
        raise CapacityError("--resting-orders must be >= 0")
    if api not in ("bulk", "single"):
        raise CapacityError("--api must be bulk or single")
    if not 0 < headroom <= 1:
        raise CapacityError("--headroom must be in (0, 1]")
    if cores_per_worker < 1 or recovery_target_s <= 0:
        raise CapacityError("--cores-per-worker must be >= 1 and --recovery-target-s > 0")
    ceiling = c.bulk_orders_per_s_per_partition if api == "bulk" else c.single_orders_per_s_per_partition
    cpu_us = c.bulk_member_cpu_us_per_order if api == "bulk" else c.single_member_cpu_us_per_order
    for_rate = math.ceil(orders_per_s / (ceiling * headroom))
    max_resting = recovery_target_s / c.recovery_s_per_million * 1e6
    for_state = math.ceil(resting_orders / max_resting) if resting_orders else 1
    partitions = max(1, for_rate, for_state)
    limited_by = "order rate" if for_rate >= for_state else "recovery time of the resting orders"
    warnings = []
    if partitions > symbols:
        warnings.append(f"{partitions} partitions are needed but there are only {symbols} symbols: a symbol is "
                        f"never split, so the busiest symbols must each stay under "
                        f"{ceiling * headroom:,.0f} orders/s")
        partitions = symbols
        limited_by += " (capped by the symbol count)"
    members = MEMBERS_PER_PARTITION * partitions
    cores = (members * c.idle_member_cores + orders_per_s * MEMBERS_PER_PARTITION * cpu_us / 1e6) / headroom
    python_cores = orders_per_s * MEMBERS_PER_PARTITION * cpu_us / 1e6 * c.service_thread_share / headroom
    workers = max(MEMBERS_PER_PARTITION, math.ceil(cores / cores_per_worker), math.ceil(python_cores))
    resting = math.ceil(resting_orders / partitions)
    per_member = c.idle_member_bytes + resting * (c.resting_order_bytes + c.snapshot_bytes_per_order)
    memory = members * per_member
    if resting > max_resting:
        warnings.append(f"{resting:,} resting orders per partition recover in about "
                        f"{resting / 1e6 * c.recovery_s_per_million:.1f} s (target {recovery_target_s:g} s)")
    return Plan(partitions, members, workers, cores, memory, memory / workers, resting, orders_per_s / partitions,
                resting / 1e6 * c.snapshot_s_per_million, resting / 1e6 * c.recovery_s_per_million, limited_by,
                tuple(warnings))


def describe(p: Plan, orders_per_s: float, symbols: int, resting_orders: int, api: str) -> str:
    lines = [
        f"for {orders_per_s:,.0f} orders/s ({api}), {symbols:,} symbols, {resting_orders:,} resting orders:",
        f"  partitions      {p.partitions} ({p.orders_per_s_per_partition:,.0f} orders/s and "
        f"{p.resting_per_partition:,} resting orders each; sized by {p.limited_by})",
        f"  members         {p.members} (3 per partition)",
        f"  workers         {p.workers} (at least 3; one member of a partition per worker; a worker's members "
        f"share one Python interpreter, so at most one core of service time each)",
        f"  cores           {p.cores:.1f} in all",
        f"  memory          {p.memory_bytes / 2**30:.1f} GiB in all, "
        f"{p.memory_per_worker_bytes / 2**30:.1f} GiB per worker",
        f"  per partition   snapshot ~{p.snapshot_s:.1f} s, recovery of all members ~{p.recovery_s:.1f} s",
    ]
    lines.extend(f"  warning: {w}" for w in p.warnings)
    return "\n".join(lines)


def constants_doc(c: Constants) -> dict:
    return asdict(c)
