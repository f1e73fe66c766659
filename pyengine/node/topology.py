"""The topology of a partitioned system: workers, partitions, their members and symbols.

Read and checked from a topology file (see docs/partitions.md) by ``matchctl up`` and by each
worker process, which takes its partitions from ``DIR/topology.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyengine.node.settings import (
    DEFAULT_SNAPSHOT_INTERVAL_S,
    DEFAULT_SNAPSHOT_LOG_BYTES,
    INGRESS_OFFSET,
    METRICS_OFFSET,
    PORTS_PER_MEMBER,
    ClusterLayout,
    ConfigError,
    Timeouts,
)

DEFAULT_SYSTEM_DIR = Path("var/system")
MAX_MEMBERS = 3  # Aeron cluster member ids 0..2, as in the coordinator
MAX_CLUSTER_ID = 1_000_000  # MemberSettings: stream ids are offset by cluster id * 1000

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
ASSET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
HOST_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})$")
DECIMAL_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")

# add_symbol fields a topology may set besides symbol/base/quote/tick_size/lot_size.
SYMBOL_OPTIONS = ("min_qty", "max_qty", "max_price", "maker_fee_bps", "taker_fee_bps", "market_band_bps",
                  "stp_default")


class TopologyError(ConfigError):
    """A topology that cannot work; the message names the entry and the rule."""


class SystemStateError(RuntimeError):
    """The system could not be started, found or stopped; the message says why."""


# ---------------------------------------------------------------------------------------------
# topology
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    base: str
    quote: str
    tick_size: str
    lot_size: str
    options: tuple[tuple[str, Any], ...] = ()

    def add_symbol_command(self) -> dict:
        cmd = {"op": "add_symbol", "symbol": self.symbol, "base": self.base, "quote": self.quote,
               "tick_size": self.tick_size, "lot_size": self.lot_size}
        cmd.update(dict(self.options))
        return cmd

    def to_dict(self) -> dict:
        return {"symbol": self.symbol, "base": self.base, "quote": self.quote, "tick_size": self.tick_size,
                "lot_size": self.lot_size, **dict(self.options)}


@dataclass(frozen=True)
class WorkerSpec:
    id: str
    host: str


@dataclass(frozen=True)
class PartitionSpec:
    id: str
    cluster_id: int
    port_base: int
    members: tuple[str, ...]  # worker ids; member i runs on members[i]
    symbols: tuple[SymbolSpec, ...]

    @property
    def port_range(self) -> range:
        return range(self.port_base, self.port_base + PORTS_PER_MEMBER * len(self.members))


@dataclass(frozen=True)
class CoordinatorSpec:
    host: str = "127.0.0.1"
    port: int = 0  # 0: an ephemeral port, recorded in DIR/system.json
    db: str = "coordinator.db"  # relative to the system directory
    # raw bytes of an export copied per migration step (the coordinator's
    # --migration-chunk-bytes); None: the coordinator's default (48 KiB)
    migration_chunk_bytes: int | None = None
    # the coordinator's --migration-stage-delay-ms: for fault tests only (0: none)
    migration_stage_delay_ms: int = 0
    # the coordinator's --migration-step-hold-ms: for fault tests only (0: none)
    migration_step_hold_ms: int = 0
    # the coordinator's --no-migration-precopy when False: every migration copies its whole
    # export after the freeze (docs/migration.md)
    migration_precopy: bool = True
    # the coordinator's --migration-precopy-piece-orders: orders per piece of the pre-copy
    # (each its own log message); 0: the whole pre-copy as one message; None: its default
    migration_precopy_piece_orders: int | None = None
    # the coordinator's --migration-precopy-piece-pause-ms (0: none)
    migration_precopy_piece_pause_ms: int = 0
    # the coordinator's --migration-copy-pace-pct (None: its default)
    migration_copy_pace_pct: int | None = None


@dataclass(frozen=True)
class AuthServiceSpec:
    """The auth service ``matchctl up`` runs as part of the system (docs/auth.md)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: an ephemeral port, recorded in DIR/system.json
    db: str = "auth.db"  # relative to the system directory


@dataclass(frozen=True)
class Topology:
    coordinator: CoordinatorSpec
    workers: tuple[WorkerSpec, ...]
    partitions: tuple[PartitionSpec, ...]
    term_length: int = 1 << 20
    idle_max_park_us: int = 1000
    snapshot_interval_s: int = DEFAULT_SNAPSHOT_INTERVAL_S
    timeouts: Timeouts = field(default_factory=Timeouts)
    description: str = ""
    auth_keys_file: str | None = None  # settings.auth_keys_file: token authentication on every partition
    auth: AuthServiceSpec | None = None  # run the auth service as part of the system
    snapshot_log_bytes: int = DEFAULT_SNAPSHOT_LOG_BYTES  # settings.snapshot_log_bytes (see ClusterLayout)

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Topology:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise TopologyError(f"topology {path}: cannot read it: {exc.strerror or exc}") from None
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise TopologyError(f"topology {path}: not valid JSON: {exc}") from None
        try:
            topo = cls.from_dict(document)
        except TopologyError as exc:
            raise TopologyError(f"topology {path}: {exc}") from None
        if topo.auth_keys_file and not Path(topo.auth_keys_file).is_absolute():
            # relative to the topology file, not to whichever directory a worker starts in
            topo = replace(topo, auth_keys_file=str((path.parent / topo.auth_keys_file).resolve()))
        return topo

    @classmethod
    def from_dict(cls, d: Any) -> Topology:
        if not isinstance(d, dict):
            raise TopologyError("the topology must be a JSON object")
        _keys(d, "topology", required=("workers", "partitions"),
              optional=("coordinator", "settings", "description", "auth"))
        coordinator = _coordinator(d.get("coordinator", {}))
        auth = _auth(d["auth"]) if d.get("auth") is not None else None
        settings = d.get("settings", {})
        if not isinstance(settings, dict):
            raise TopologyError("settings must be an object")
        _keys(settings, "settings", optional=("term_length", "idle_max_park_us", "snapshot_interval_s", "timeouts",
                                             "auth_keys_file", "snapshot_log_bytes"))
        timeouts_d = settings.get("timeouts", {})
        if not isinstance(timeouts_d, dict):
            raise TopologyError("settings.timeouts must be an object")
        known = tuple(Timeouts.__dataclass_fields__)
        _keys(timeouts_d, "settings.timeouts", optional=known)
        for k, v in timeouts_d.items():
            _int(v, f"settings.timeouts.{k}", 1)
        try:
            timeouts = Timeouts(**timeouts_d)
            timeouts.check()
        except ConfigError as exc:
            raise TopologyError(f"settings.timeouts: {exc}") from None
        term_length = _int(settings.get("term_length", 1 << 20), "settings.term_length", 65536)
        if term_length & (term_length - 1):
            raise TopologyError("settings.term_length must be a power of two >= 65536")
        idle = _int(settings.get("idle_max_park_us", 1000), "settings.idle_max_park_us", 1)
        snap = _int(settings.get("snapshot_interval_s", DEFAULT_SNAPSHOT_INTERVAL_S), "settings.snapshot_interval_s", 0)
        snap_bytes = _int(settings.get("snapshot_log_bytes", DEFAULT_SNAPSHOT_LOG_BYTES),
                          "settings.snapshot_log_bytes", 0)
        auth_keys_file = settings.get("auth_keys_file")
        if auth_keys_file is not None and (not isinstance(auth_keys_file, str) or not auth_keys_file.strip()):
            raise TopologyError("settings.auth_keys_file must be a path (leave it out to run without tokens)")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise TopologyError("description must be a string")

        workers = _workers(d["workers"])
        worker_ids = {w.id for w in workers}
        partitions = _partitions(d["partitions"], worker_ids)

        topo = cls(coordinator, workers, partitions, term_length, idle, snap, timeouts, description, auth_keys_file,
                   auth, snapshot_log_bytes=snap_bytes)
        topo._check_ports()
        for p in partitions:
            topo.layout(p.id, Path("/nonexistent"))  # ClusterLayout's own checks
        return topo

    def _check_ports(self) -> None:
        ranges = sorted((p.port_range.start, p.port_range.stop, p.id) for p in self.partitions)
        for (s1, e1, a), (s2, _e2, b) in zip(ranges, ranges[1:], strict=False):
            if s2 < e1:
                raise TopologyError(
                    f"partitions {a!r} and {b!r} overlap in ports: {a} uses {s1}..{e1 - 1}, {b} starts at {s2} "
                    f"(each member takes {PORTS_PER_MEMBER} ports from port_base)")
        services = [("coordinator.port", self.coordinator.port)]
        if self.auth is not None:
            services.append(("auth.port", self.auth.port))
            if self.auth.port and self.auth.port == self.coordinator.port:
                raise TopologyError(f"auth.port {self.auth.port} is the coordinator's port")
        for name, port in services:
            for start, stop, pid in ranges:
                if port and start <= port < stop:
                    raise TopologyError(f"{name} {port} is inside the ports of partition {pid!r}")

    def to_dict(self) -> dict:
        """The document the workers read (DIR/topology.json): every setting must be in it, or a
        worker would run without it (tests/unit/test_topology_auth.py round-trips each field)."""
        settings: dict[str, Any] = {
            "term_length": self.term_length,
            "idle_max_park_us": self.idle_max_park_us,
            "snapshot_interval_s": self.snapshot_interval_s,
            "snapshot_log_bytes": self.snapshot_log_bytes,
            "timeouts": {k: getattr(self.timeouts, k) for k in Timeouts.__dataclass_fields__},
        }
        if self.auth_keys_file is not None:
            settings["auth_keys_file"] = self.auth_keys_file
        doc: dict[str, Any] = {
            "description": self.description,
            "coordinator": self._coordinator_doc(),
            "settings": settings,
            "workers": [{"id": w.id, "host": w.host} for w in self.workers],
            "partitions": [
                {"id": p.id, "cluster_id": p.cluster_id, "port_base": p.port_base, "members": list(p.members),
                 "symbols": [s.to_dict() for s in p.symbols]}
                for p in self.partitions
            ],
        }
        if self.auth is not None:
            doc["auth"] = {"host": self.auth.host, "port": self.auth.port, "db": self.auth.db}
        return doc

    # ---- derived -------------------------------------------------------------------------

    def worker(self, worker_id: str) -> WorkerSpec:
        for w in self.workers:
            if w.id == worker_id:
                return w
        raise TopologyError(f"worker {worker_id!r} is not in the topology (workers: "
                            f"{', '.join(w.id for w in self.workers)})")

    def partition(self, partition_id: str) -> PartitionSpec:
        for p in self.partitions:
            if p.id == partition_id:
                return p
        raise TopologyError(f"partition {partition_id!r} is not in the topology")

    def symbol(self, name: str) -> SymbolSpec | None:
        for p in self.partitions:
            for s in p.symbols:
                if s.symbol == name:
                    return s
        return None

    def members_on(self, worker_id: str) -> list[tuple[PartitionSpec, int]]:
        """The (partition, member id) pairs the worker hosts."""
        return [(p, i) for p in self.partitions for i, w in enumerate(p.members) if w == worker_id]

    def worker_metrics_port(self, worker_id: str) -> int | None:
        """Where the worker serves /metrics: the metrics port of the first member it hosts (in the
        topology's order), inside that partition's own port range; None when it hosts none."""
        hosted = self.members_on(worker_id)
        if not hosted:
            return None
        p, member_id = hosted[0]
        return p.port_base + PORTS_PER_MEMBER * member_id + METRICS_OFFSET

    def active_workers(self) -> list[WorkerSpec]:
        return [w for w in self.workers if self.members_on(w.id)]

    def layout(self, partition_id: str, system_dir: Path) -> ClusterLayout:
        p = self.partition(partition_id)
        hosts = tuple(self.worker(w).host for w in p.members)
        try:
            return ClusterLayout(
                base_dir=Path(system_dir) / "partitions" / p.id, members=len(p.members), cluster_id=p.cluster_id,
                port_base=p.port_base, hosts=hosts, term_length=self.term_length,
                idle_max_park_us=self.idle_max_park_us, snapshot_interval_s=self.snapshot_interval_s,
                snapshot_log_bytes=self.snapshot_log_bytes,
                timeouts=self.timeouts, auth_keys_file=self.auth_keys_file,
            )
        except ConfigError as exc:
            raise TopologyError(f"partition {p.id!r}: {exc}") from None

    def ingress_endpoints(self, partition_id: str) -> str:
        return self.layout(partition_id, Path("/")).ingress_endpoints()

    def _coordinator_doc(self) -> dict[str, Any]:
        c = self.coordinator
        doc: dict[str, Any] = {"host": c.host, "port": c.port, "db": c.db}
        if c.migration_chunk_bytes is not None:
            doc["migration_chunk_bytes"] = c.migration_chunk_bytes
        if c.migration_stage_delay_ms:
            doc["migration_stage_delay_ms"] = c.migration_stage_delay_ms
        if c.migration_step_hold_ms:
            doc["migration_step_hold_ms"] = c.migration_step_hold_ms
        if not c.migration_precopy:
            doc["migration_precopy"] = False
        if c.migration_precopy_piece_orders is not None:
            doc["migration_precopy_piece_orders"] = c.migration_precopy_piece_orders
        if c.migration_precopy_piece_pause_ms:
            doc["migration_precopy_piece_pause_ms"] = c.migration_precopy_piece_pause_ms
        if c.migration_copy_pace_pct is not None:
            doc["migration_copy_pace_pct"] = c.migration_copy_pace_pct
        return doc

    def coordinator_document(self) -> dict:
        """The coordinator's topology document (POST /v1/topology, --topology)."""
        workers = [{"id": w.id, "address": w.host} for w in self.workers]
        partitions = []
        for p in self.partitions:
            layout = self.layout(p.id, Path("/"))
            members = [{"worker_id": w, "member_id": i,
                        "ingress_endpoint": f"{layout.host(i)}:{layout.port(i, INGRESS_OFFSET)}"}
                       for i, w in enumerate(p.members)]
            partitions.append({"id": p.id, "state": "active", "members": members,
                               "symbols": [s.symbol for s in p.symbols]})
        return {"workers": workers, "partitions": partitions}

    # ---- changes (matchctl partition add/remove, worker add): each a new, checked topology ----

    def with_worker(self, worker_id: str, host: str = "127.0.0.1") -> Topology:
        if any(w.id == worker_id for w in self.workers):
            raise TopologyError(f"worker {worker_id!r} is already in the topology")
        doc = self.to_dict()
        doc["workers"].append({"id": worker_id, "host": host})
        return Topology.from_dict(doc)

    def with_partition(self, partition_id: str, workers: list[str], taken_ports: Sequence[int] = ()) -> Topology:
        """A new partition without symbols, member i on ``workers[i]``: the next cluster id, and
        ports from the next hundred above every partition's and every ``taken_ports``."""
        if any(p.id == partition_id for p in self.partitions):
            raise TopologyError(f"partition {partition_id!r} is already in the topology")
        high = max([p.port_range.stop for p in self.partitions] + [q + 1 for q in taken_ports if q])
        doc = self.to_dict()
        doc["partitions"].append({"id": partition_id, "cluster_id": max(p.cluster_id for p in self.partitions) + 1,
                                  "port_base": -(-high // 100) * 100, "members": list(workers), "symbols": []})
        return Topology.from_dict(doc)

    def without_partition(self, partition_id: str, owners: dict[str, str]) -> Topology:
        """The topology without the partition; the symbol descriptions it still lists (tick,
        lot: where ``up`` reads them) go to the partition that owns each symbol in ``owners``."""
        self.partition(partition_id)
        doc = self.to_dict()
        gone = next(p for p in doc["partitions"] if p["id"] == partition_id)
        doc["partitions"].remove(gone)
        if not doc["partitions"]:
            raise TopologyError(f"partition {partition_id!r} is the last one; a system keeps at least one")
        for spec in gone["symbols"]:
            owner = owners.get(spec["symbol"])
            dest = next((p for p in doc["partitions"] if p["id"] == owner), doc["partitions"][0])
            dest["symbols"].append(spec)
        return Topology.from_dict(doc)

    def save(self, path: Path) -> None:
        """Write the document atomically (workers follow this file: docs/partitions.md)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    def worker_aeron_dir(self, worker_id: str, system_dir: Path) -> str:
        """The worker's driver directory in /dev/shm: unique per system directory and worker."""
        tag = hashlib.sha1(str(Path(system_dir).resolve()).encode()).hexdigest()[:10]
        return f"/dev/shm/matchx-worker-{tag}-{worker_id}"


def _keys(d: dict, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in required if k not in d]
    if missing:
        raise TopologyError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(k for k in d if k not in required and k not in optional)
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                            f"(allowed: {', '.join(required + optional)})")


def _int(v: Any, where: str, minimum: int, maximum: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TopologyError(f"{where} must be an integer, not {v!r}")
    if v < minimum or (maximum is not None and v > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise TopologyError(f"{where} must be {bound}, not {v}")
    return v


def _str(v: Any, where: str, pattern: re.Pattern, what: str) -> str:
    if not isinstance(v, str) or not pattern.match(v):
        raise TopologyError(f"{where} {v!r} is not a valid {what}")
    return v


def _coordinator(d: Any) -> CoordinatorSpec:
    if not isinstance(d, dict):
        raise TopologyError("coordinator must be an object {host, port, db}")
    _keys(d, "coordinator", optional=("host", "port", "db", "migration_chunk_bytes", "migration_stage_delay_ms",
                                      "migration_step_hold_ms", "migration_precopy",
                                      "migration_precopy_piece_orders", "migration_precopy_piece_pause_ms",
                                      "migration_copy_pace_pct"))
    host = _str(d.get("host", "127.0.0.1"), "coordinator.host", HOST_RE, "host")
    port = _int(d.get("port", 0), "coordinator.port", 0, 65535)
    db = d.get("db", "coordinator.db")
    if not isinstance(db, str) or not db:
        raise TopologyError("coordinator.db must be a file path")
    chunk = d.get("migration_chunk_bytes")
    if chunk is not None:
        # the bounds of coordinator/migrations.py (MIN_CHUNK, MAX_CHUNK; the source answers at
        # most 64 KiB a chunk)
        chunk = _int(chunk, "coordinator.migration_chunk_bytes", 1024, 64 * 1024)
    delay = _int(d.get("migration_stage_delay_ms", 0), "coordinator.migration_stage_delay_ms", 0, 600_000)
    hold = _int(d.get("migration_step_hold_ms", 0), "coordinator.migration_step_hold_ms", 0, 600_000)
    precopy = d.get("migration_precopy", True)
    if not isinstance(precopy, bool):
        raise TopologyError("coordinator.migration_precopy must be true or false")
    pieces = d.get("migration_precopy_piece_orders")
    if pieces is not None:  # the bounds of coordinator/migrations.py (0 .. MAX_PIECE_ORDERS)
        pieces = _int(pieces, "coordinator.migration_precopy_piece_orders", 0, 100_000)
    pause = _int(d.get("migration_precopy_piece_pause_ms", 0), "coordinator.migration_precopy_piece_pause_ms",
                 0, 10_000)
    pace = d.get("migration_copy_pace_pct")
    if pace is not None:  # the bounds of coordinator/migrations.py (0 .. MAX_COPY_PACE_PCT)
        pace = _int(pace, "coordinator.migration_copy_pace_pct", 0, 1000)
    return CoordinatorSpec(host, port, db, chunk, delay, hold, precopy, pieces, pause, pace)


def _auth(d: Any) -> AuthServiceSpec:
    if not isinstance(d, dict):
        raise TopologyError("auth must be an object {host, port, db}")
    _keys(d, "auth", optional=("host", "port", "db"))
    host = _str(d.get("host", "127.0.0.1"), "auth.host", HOST_RE, "host")
    port = _int(d.get("port", 0), "auth.port", 0, 65535)
    db = d.get("db", "auth.db")
    if not isinstance(db, str) or not db:
        raise TopologyError("auth.db must be a file path")
    return AuthServiceSpec(host, port, db)


def _workers(v: Any) -> tuple[WorkerSpec, ...]:
    if not isinstance(v, list) or not v:
        raise TopologyError("workers must be a non-empty list of {id, host}")
    out: list[WorkerSpec] = []
    for i, w in enumerate(v):
        where = f"workers[{i}]"
        if not isinstance(w, dict):
            raise TopologyError(f"{where} must be an object {{id, host}}")
        _keys(w, where, required=("id",), optional=("host",))
        wid = _str(w["id"], f"{where}.id", ID_RE, "worker id")
        host = _str(w.get("host", "127.0.0.1"), f"{where}.host", HOST_RE, "host")
        if any(x.id == wid for x in out):
            raise TopologyError(f"worker {wid!r} appears twice in workers")
        out.append(WorkerSpec(wid, host))
    return tuple(out)


def _symbol(v: Any, where: str) -> SymbolSpec:
    if not isinstance(v, dict):
        raise TopologyError(f"{where} must be an object {{symbol, tick_size, lot_size[, base, quote, ...]}}")
    _keys(v, where, required=("symbol", "tick_size", "lot_size"), optional=("base", "quote", *SYMBOL_OPTIONS))
    name = _str(v["symbol"], f"{where}.symbol", SYMBOL_RE, "symbol")
    parts = re.split(r"[-/]", name)
    base, quote = v.get("base"), v.get("quote")
    if base is None or quote is None:
        if len(parts) != 2:
            raise TopologyError(f"{where}: cannot tell base and quote from {name!r}; give base and quote")
        base = parts[0] if base is None else base
        quote = parts[1] if quote is None else quote
    _str(base, f"{where}.base", ASSET_RE, "asset")
    _str(quote, f"{where}.quote", ASSET_RE, "asset")
    for k in ("tick_size", "lot_size"):
        if not isinstance(v[k], str) or not DECIMAL_RE.match(v[k]) or not any(c in "123456789" for c in v[k]):
            raise TopologyError(f"{where}.{k} must be a positive decimal string such as \"0.01\", not {v[k]!r}")
    options = tuple((k, v[k]) for k in SYMBOL_OPTIONS if k in v)
    return SymbolSpec(name, base, quote, v["tick_size"], v["lot_size"], options)


def _partitions(v: Any, worker_ids: set[str]) -> tuple[PartitionSpec, ...]:
    if not isinstance(v, list) or not v:
        raise TopologyError("partitions must be a non-empty list")
    out: list[PartitionSpec] = []
    owners: dict[str, str] = {}
    for i, p in enumerate(v):
        where = f"partitions[{i}]"
        if not isinstance(p, dict):
            raise TopologyError(f"{where} must be an object {{id, cluster_id, port_base, members, symbols}}")
        _keys(p, where, required=("id", "cluster_id", "port_base", "members"), optional=("symbols",))
        pid = _str(p["id"], f"{where}.id", ID_RE, "partition id")
        where = f"partition {pid!r}"
        if any(x.id == pid for x in out):
            raise TopologyError(f"partition {pid!r} appears twice in partitions")
        cluster_id = _int(p["cluster_id"], f"{where}: cluster_id", 0, MAX_CLUSTER_ID)
        other = next((x.id for x in out if x.cluster_id == cluster_id), None)
        if other is not None:
            raise TopologyError(f"{where}: cluster_id {cluster_id} is already used by partition {other!r}")
        port_base = _int(p["port_base"], f"{where}: port_base", 1024, 65535 - 100)
        members = p["members"]
        if not isinstance(members, list):
            raise TopologyError(f"{where}: members must be a list of worker ids")
        if not members:
            raise TopologyError(f"{where} has no members; give 1..{MAX_MEMBERS} worker ids (3 for failover)")
        if len(members) > MAX_MEMBERS:
            raise TopologyError(f"{where} has {len(members)} members; at most {MAX_MEMBERS}")
        for m in members:
            if not isinstance(m, str):
                raise TopologyError(f"{where}: members must be worker ids (strings), not {m!r}")
            if m not in worker_ids:
                raise TopologyError(f"{where}: member on worker {m!r}, which does not exist "
                                    f"(workers: {', '.join(sorted(worker_ids))})")
        dup = next((m for m in members if members.count(m) > 1), None)
        if dup is not None:
            raise TopologyError(f"{where}: worker {dup!r} is listed twice; a worker hosts at most one member "
                                "of a partition (one consensus module per cluster id and driver)")
        symbols_v = p.get("symbols", [])
        if not isinstance(symbols_v, list):
            raise TopologyError(f"{where}: symbols must be a list")
        symbols = []
        for j, s in enumerate(symbols_v):
            spec = _symbol(s, f"{where}: symbols[{j}]")
            if spec.symbol in owners:
                raise TopologyError(f"symbol {spec.symbol!r} is given to two partitions: "
                                    f"{owners[spec.symbol]!r} and {pid!r}")
            owners[spec.symbol] = pid
            symbols.append(spec)
        out.append(PartitionSpec(pid, cluster_id, port_base, tuple(members), tuple(symbols)))
    return tuple(out)

