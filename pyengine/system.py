"""A whole partitioned system on this machine: the coordinator, the workers, their partitions.

    matchctl up docs/examples/topology-2x3.json --dir var/system
    matchctl status --dir var/system
    matchctl down --dir var/system

``up`` reads and checks a topology file (see docs/partitions.md) before it starts anything, then
starts the coordinator (which loads the topology), one worker process per worker
(``python -m pyengine.worker``), waits for a leader in every partition and sends each partition
the symbols it owns (``own_symbols`` with the coordinator's epochs, then ``add_symbol``). The
PIDs of everything it started are kept in ``DIR/system.json``; ``down`` stops exactly those
processes (SIGTERM, then SIGKILL) and removes the workers' driver directories in /dev/shm.

The directory keeps the durable state (coordinator database, each member's Raft log, archive and
snapshots): ``up`` on the same directory with the same topology restarts the same system.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyengine.config import (
    INGRESS_OFFSET,
    PORTS_PER_MEMBER,
    ClusterLayout,
    ConfigError,
    Timeouts,
)
from pyengine.procs import pid_alive

log = logging.getLogger("matchx.system")

REPO_ROOT = Path(__file__).resolve().parent.parent
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


@dataclass(frozen=True)
class Topology:
    coordinator: CoordinatorSpec
    workers: tuple[WorkerSpec, ...]
    partitions: tuple[PartitionSpec, ...]
    term_length: int = 1 << 20
    idle_max_park_us: int = 1000
    snapshot_interval_s: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    description: str = ""
    auth_keys_file: str | None = None  # settings.auth_keys_file: token authentication on every partition

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
            return cls.from_dict(document)
        except TopologyError as exc:
            raise TopologyError(f"topology {path}: {exc}") from None

    @classmethod
    def from_dict(cls, d: Any) -> Topology:
        if not isinstance(d, dict):
            raise TopologyError("the topology must be a JSON object")
        _keys(d, "topology", required=("workers", "partitions"),
              optional=("coordinator", "settings", "description"))
        coordinator = _coordinator(d.get("coordinator", {}))
        settings = d.get("settings", {})
        if not isinstance(settings, dict):
            raise TopologyError("settings must be an object")
        _keys(settings, "settings", optional=("term_length", "idle_max_park_us", "snapshot_interval_s", "timeouts",
                                             "auth_keys_file"))
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
        snap = _int(settings.get("snapshot_interval_s", 0), "settings.snapshot_interval_s", 0)
        auth_keys_file = settings.get("auth_keys_file")
        if auth_keys_file is not None and not isinstance(auth_keys_file, str):
            raise TopologyError("settings.auth_keys_file must be a path")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise TopologyError("description must be a string")

        workers = _workers(d["workers"])
        worker_ids = {w.id for w in workers}
        partitions = _partitions(d["partitions"], worker_ids)

        topo = cls(coordinator, workers, partitions, term_length, idle, snap, timeouts, description, auth_keys_file)
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
        port = self.coordinator.port
        for start, stop, pid in ranges:
            if port and start <= port < stop:
                raise TopologyError(f"coordinator.port {port} is inside the ports of partition {pid!r}")

    def to_dict(self) -> dict:
        return {
            "description": self.description,
            "coordinator": {"host": self.coordinator.host, "port": self.coordinator.port, "db": self.coordinator.db},
            "settings": {
                "term_length": self.term_length,
                "idle_max_park_us": self.idle_max_park_us,
                "snapshot_interval_s": self.snapshot_interval_s,
                "timeouts": {k: getattr(self.timeouts, k) for k in Timeouts.__dataclass_fields__},
            },
            "workers": [{"id": w.id, "host": w.host} for w in self.workers],
            "partitions": [
                {"id": p.id, "cluster_id": p.cluster_id, "port_base": p.port_base, "members": list(p.members),
                 "symbols": [s.to_dict() for s in p.symbols]}
                for p in self.partitions
            ],
        }

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
                timeouts=self.timeouts, auth_keys_file=self.auth_keys_file,
            )
        except ConfigError as exc:
            raise TopologyError(f"partition {p.id!r}: {exc}") from None

    def ingress_endpoints(self, partition_id: str) -> str:
        return self.layout(partition_id, Path("/")).ingress_endpoints()

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
    _keys(d, "coordinator", optional=("host", "port", "db"))
    host = _str(d.get("host", "127.0.0.1"), "coordinator.host", HOST_RE, "host")
    port = _int(d.get("port", 0), "coordinator.port", 0, 65535)
    db = d.get("db", "coordinator.db")
    if not isinstance(db, str) or not db:
        raise TopologyError("coordinator.db must be a file path")
    return CoordinatorSpec(host, port, db)


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


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int, marker: str) -> bool:
    """True if ``pid`` is alive and still the process we started (guards against PID reuse)."""
    return pid_alive(pid) and marker in _cmdline(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_pid(pid: int, marker: str, timeout: float) -> None:
    if not _ours(pid, marker):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, timeout):
        log.warning("process %d did not stop in %.0f s; SIGKILL", pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid, 10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _env() -> dict[str, str]:
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}


class System:
    """A system directory: what ``matchctl up`` started there, and how to stop it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory).resolve()
        self._topology: Topology | None = None

    # ---- files -----------------------------------------------------------------------------

    @property
    def topology_file(self) -> Path:
        return self.dir / "topology.json"

    @property
    def state_file(self) -> Path:
        return self.dir / "system.json"

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            if not self.topology_file.is_file():
                raise SystemStateError(f"no system in {self.dir} (no topology.json); start one with `matchctl up`")
            self._topology = Topology.load(self.topology_file)
        return self._topology

    def state(self) -> dict:
        if not self.state_file.is_file():
            return {"coordinator": None, "workers": {}}
        return json.loads(self.state_file.read_text())

    def _save_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    @property
    def coordinator_db(self) -> Path:
        db = Path(self.topology.coordinator.db)
        return db if db.is_absolute() else self.dir / db

    @property
    def coordinator_url(self) -> str:
        c = self.state().get("coordinator")
        if not c:
            raise SystemStateError(f"no coordinator recorded in {self.state_file}")
        return f"http://{self.topology.coordinator.host}:{c['port']}"

    def layout(self, partition_id: str) -> ClusterLayout:
        return self.topology.layout(partition_id, self.dir)

    def worker_aeron_dir(self, worker_id: str) -> str:
        return self.topology.worker_aeron_dir(worker_id, self.dir)

    # ---- up --------------------------------------------------------------------------------

    @classmethod
    def up(cls, topology_file: str | os.PathLike[str], directory: str | os.PathLike[str] = DEFAULT_SYSTEM_DIR,
           timeout: float = 90.0, log_level: str = "INFO") -> System:
        """Check the topology, start everything, wait for leaders, hand out the symbols.

        On any failure whatever was started is stopped again and the error raised."""
        topo = Topology.load(topology_file)  # nothing is touched before the file is known good
        system = cls(directory)
        system.dir.mkdir(parents=True, exist_ok=True)
        running = system.running()
        if running:
            raise SystemStateError(f"{system.dir} already runs {', '.join(running)}; `matchctl down --dir {directory}` "
                              "first")
        if system.topology_file.is_file():
            previous = json.loads(system.topology_file.read_text())
            if previous != topo.to_dict():
                raise SystemStateError(f"{system.dir} holds a system set up with a different topology "
                                  f"({system.topology_file}); use another --dir, or remove this one")
        system.topology_file.write_text(json.dumps(topo.to_dict(), indent=2) + "\n")
        system._topology = topo
        system._save_state({"coordinator": None, "workers": {}})
        deadline = time.monotonic() + timeout
        try:
            system.start_coordinator(timeout=min(30.0, timeout))
            system._check_coordinator_map()
            for w in topo.active_workers():
                system.start_worker(w.id, log_level=log_level)
            system.await_leaders(max(1.0, deadline - time.monotonic()))
            system.assign_symbols(max(5.0, deadline - time.monotonic()))
        except BaseException:
            system.down()
            raise
        return system

    def running(self) -> list[str]:
        """Names of the recorded processes that are still alive."""
        if not self.state_file.is_file():
            return []
        state = self.state()
        out = []
        c = state.get("coordinator")
        if c and _ours(c["pid"], "coordinator"):
            out.append(f"the coordinator (pid {c['pid']})")
        for wid, pid in sorted(state.get("workers", {}).items()):
            if _ours(pid, "pyengine.worker"):
                out.append(f"worker {wid} (pid {pid})")
        return out

    def start_coordinator(self, port: int | None = None, timeout: float = 30.0) -> int:
        """Starts the coordinator (its database bootstraps from the topology when new).

        ``port``: None uses the recorded port of an earlier start (a restart keeps its URL), else
        the topology's. Returns the port."""
        topo = self.topology
        state = self.state()
        if port is None:
            recorded = state.get("coordinator") or {}
            port = recorded.get("port") or topo.coordinator.port
        doc = self.dir / "coordinator-topology.json"
        doc.write_text(json.dumps(topo.coordinator_document(), indent=2) + "\n")
        out_file = self.dir / "coordinator.out"
        out_file.write_bytes(b"")
        cmd = [sys.executable, "-m", "coordinator", "--host", topo.coordinator.host, "--port", str(port),
               "--db", str(self.coordinator_db), "--topology", str(doc), "--topology-mode", "bootstrap",
               "--log-level", "warning"]
        with open(out_file, "ab") as out, open(self.dir / "coordinator.log", "ab") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(REPO_ROOT), env=_env())
        state["coordinator"] = {"pid": proc.pid, "port": port or None}
        self._save_state(state)
        deadline = time.monotonic() + timeout
        while True:
            text = out_file.read_text(errors="replace")
            if "\n" in text:
                try:
                    actual = int(json.loads(text.splitlines()[0])["port"])
                except (ValueError, KeyError, TypeError):
                    raise SystemStateError(f"coordinator printed {text.splitlines()[0]!r}, not its port") from None
                break
            if proc.poll() is not None:
                raise SystemStateError(f"the coordinator exited with status {proc.returncode}:\n"
                                  f"{_tail(self.dir / 'coordinator.log')}")
            if time.monotonic() > deadline:
                raise SystemStateError(f"the coordinator did not report its port within {timeout:.0f} s")
            time.sleep(0.05)
        state["coordinator"] = {"pid": proc.pid, "port": actual}
        self._save_state(state)
        log.info("coordinator pid %d on port %d", proc.pid, actual)
        return actual

    def stop_coordinator(self, timeout: float = 10.0) -> None:
        """SIGTERM (then SIGKILL) the coordinator; its port stays recorded for a restart."""
        c = self.state().get("coordinator")
        if c:
            _stop_pid(c["pid"], "coordinator", timeout)

    def _http(self, timeout: float = 5.0):
        import httpx

        return httpx.Client(base_url=self.coordinator_url, timeout=timeout)

    def _check_coordinator_map(self) -> None:
        """The coordinator's workers and members must be the topology's (an existing database may
        hold moves of symbols: those are kept, the coordinator's map is the truth for symbols)."""
        with self._http() as http:
            current = http.get("/v1/topology").json()
        want = self.topology.coordinator_document()

        def shape(doc: dict) -> tuple:
            workers = sorted((w["id"], w["address"]) for w in doc["workers"])
            parts = sorted((p["id"], tuple(sorted((m["member_id"], m["worker_id"], m["ingress_endpoint"])
                                                   for m in p["members"]))) for p in doc["partitions"])
            return workers, parts

        if shape(current) != shape(want):
            raise SystemStateError(f"the coordinator database {self.coordinator_db} describes other workers or "
                              "partitions than the topology; use a new --dir or remove the database")

    def start_worker(self, worker_id: str, log_level: str = "INFO") -> int:
        self.topology.worker(worker_id)
        logs = self.dir / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.worker_aeron_dir(worker_id), ignore_errors=True)
        cmd = [sys.executable, "-m", "pyengine.worker", "--topology", str(self.topology_file),
               "--worker-id", worker_id, "--dir", str(self.dir), "--log-level", log_level]
        with open(logs / f"{worker_id}.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(REPO_ROOT), env=_env())
        state = self.state()
        state.setdefault("workers", {})[worker_id] = proc.pid
        self._save_state(state)
        log.info("worker %s pid %d", worker_id, proc.pid)
        return proc.pid

    def stop_worker(self, worker_id: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        pid = self.state().get("workers", {}).get(worker_id)
        if pid is not None:
            if sig == signal.SIGTERM:
                _stop_pid(pid, "pyengine.worker", timeout)
            elif _ours(pid, "pyengine.worker"):
                os.kill(pid, sig)
                _wait_gone(pid, timeout)
        if pid is None or not pid_alive(pid):
            shutil.rmtree(self.worker_aeron_dir(worker_id), ignore_errors=True)

    # ---- observing -------------------------------------------------------------------------

    def member_status(self, partition_id: str, member_id: int) -> dict:
        p = self.topology.partition(partition_id)
        worker_id = p.members[member_id]
        pid = self.state().get("workers", {}).get(worker_id)
        status = {"partition": partition_id, "member_id": member_id, "worker": worker_id, "role": "down"}
        if pid is None or not _ours(pid, "pyengine.worker"):
            return status
        status["role"] = "starting"
        path = self.layout(partition_id).member_dir(member_id) / "status.json"
        try:
            reported = json.loads(path.read_text())
        except (OSError, ValueError):
            return status
        if reported.get("pid") == pid:  # a file from an earlier process says nothing about this one
            status.update(reported)
            status["worker"] = worker_id
        return status

    def partition_status(self, partition_id: str) -> list[dict]:
        p = self.topology.partition(partition_id)
        return [self.member_status(partition_id, m) for m in range(len(p.members))]

    def leader(self, partition_id: str) -> int | None:
        leaders = [s["member_id"] for s in self.partition_status(partition_id) if s.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def await_leaders(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        leaders: dict[str, int] = {}
        while True:
            for p in self.topology.partitions:
                if p.id not in leaders:
                    lead = self.leader(p.id)
                    if lead is not None:
                        leaders[p.id] = lead
            if len(leaders) == len(self.topology.partitions):
                return leaders
            for wid, pid in self.state().get("workers", {}).items():
                if not pid_alive(pid):
                    tail = _tail(self.dir / "workers" / f"{wid}.log")
                    raise SystemStateError(f"worker {wid} (pid {pid}) exited:\n{tail}")
            if time.monotonic() > deadline:
                missing = [p.id for p in self.topology.partitions if p.id not in leaders]
                raise SystemStateError(f"no leader in partition(s) {', '.join(missing)} within {timeout:.0f} s; "
                                  f"worker logs are in {self.dir / 'workers'}")
            time.sleep(0.05)

    def status(self) -> dict:
        state = self.state()
        coordinator: dict[str, Any] = {"running": False}
        c = state.get("coordinator")
        if c:
            coordinator = {"pid": c["pid"], "port": c["port"], "running": _ours(c["pid"], "coordinator")}
            if coordinator["running"]:
                try:
                    with self._http(2.0) as http:
                        coordinator["version"] = http.get("/v1/health").json()["version"]
                except Exception as exc:  # noqa: BLE001 - status reports, never fails
                    coordinator["error"] = str(exc)
        workers = {wid: {"pid": pid, "running": _ours(pid, "pyengine.worker")}
                   for wid, pid in state.get("workers", {}).items()}
        return {"dir": str(self.dir), "coordinator": coordinator, "workers": workers,
                "partitions": {p.id: self.partition_status(p.id) for p in self.topology.partitions}}

    # ---- symbols ---------------------------------------------------------------------------

    def assign_symbols(self, timeout: float = 60.0) -> dict[str, dict[str, int]]:
        """Tells every partition which symbols it owns (epochs from the coordinator's routes) and
        adds them to its engine (tick/lot from the topology). Idempotent: a restart sends the
        same ownership again and the engine answers ``duplicate_symbol`` for known symbols.

        A partition without symbols gets an empty ``own_symbols``, so it owns none (a partition
        that never got the command owns every symbol, as a single-partition system does)."""
        from pyengine.client import MatchClient

        with self._http() as http:
            routes = http.get("/v1/routes").json()
        owned: dict[str, dict[str, int]] = {p.id: {} for p in self.topology.partitions}
        for symbol, route in sorted(routes["symbols"].items()):
            owned.setdefault(route["partition"], {})[symbol] = route["epoch"]
        deadline = time.monotonic() + timeout
        for p in self.topology.partitions:
            with MatchClient(self.topology.ingress_endpoints(p.id)) as client:
                if not client.wait_connected(max(1.0, deadline - time.monotonic())):
                    raise SystemStateError(f"could not connect to partition {p.id}: {client.last_error}")
                left = max(1.0, deadline - time.monotonic())
                client.admin({"op": "own_symbols", "symbols": owned[p.id]}, timeout=left)
                for symbol in owned[p.id]:
                    spec = self.topology.symbol(symbol)
                    if spec is None:
                        log.warning("symbol %s is routed to %s but not described in the topology; not added",
                                    symbol, p.id)
                        continue
                    events = client.request(spec.add_symbol_command(), timeout=left).events
                    first = events[0] if events else {}
                    if first.get("type") == "rejected" and first.get("reason") != "duplicate_symbol":
                        raise SystemStateError(f"partition {p.id} refused symbol {symbol}: {first}")
            log.info("partition %s owns %s", p.id, owned[p.id])
        return owned

    # ---- down ------------------------------------------------------------------------------

    def down(self, timeout: float = 15.0) -> None:
        """Stops every recorded process (workers first), cleans the workers' /dev/shm dirs."""
        state = self.state()
        workers = state.get("workers", {})
        for pid in workers.values():
            if _ours(pid, "pyengine.worker"):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for pid in workers.values():
            _stop_pid(pid, "pyengine.worker", timeout)  # no-op once gone; SIGKILL after timeout
        c = state.get("coordinator")
        if c:
            _stop_pid(c["pid"], "coordinator", timeout)
        try:
            topo = self.topology
        except (SystemStateError, ConfigError):
            topo = None
        if topo is not None:
            for w in topo.workers:
                shutil.rmtree(self.worker_aeron_dir(w.id), ignore_errors=True)
        if self.state_file.is_file():
            self._save_state({"coordinator": None, "workers": {}})


def describe(status: dict) -> str:
    """``matchctl status`` text."""
    lines = [f"system in {status['dir']}"]
    c = status["coordinator"]
    if c.get("pid"):
        state = "running" if c["running"] else "down"
        lines.append(f"coordinator  pid {c['pid']}  port {c['port']}  {state}"
                     + (f"  routing version {c['version']}" if "version" in c else ""))
    else:
        lines.append("coordinator  not started")
    for wid, w in sorted(status["workers"].items()):
        lines.append(f"worker {wid:<8} pid {w['pid']}  {'running' if w['running'] else 'down'}")
    for pid, members in status["partitions"].items():
        roles = ", ".join(f"m{m['member_id']}@{m['worker']}={m['role']}" for m in members)
        lines.append(f"partition {pid:<6} {roles}")
    return "\n".join(lines)
