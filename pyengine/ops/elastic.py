"""Partitions and workers added, moved and retired while the system runs (docs/partitions.md).

    matchctl partition add p3 [--workers w1,w2,w3] --dir var/system
    matchctl partition remove p3 --dir var/system
    matchctl partition move p1 --to-workers w4,w5,w6 [--as p1b] --dir var/system
    matchctl worker add w4 [--host 127.0.0.1] --dir var/system

The mechanism: DIR/topology.json is what the workers run. A change is checked first (bad input
changes nothing), registered with the coordinator (its map is what clients route by), then the
file is rewritten atomically; every worker follows the file and starts or stops its members of
the partition without a restart (pyengine/node/worker.py). ``worker add`` starts a new worker
process, which runs idle until a partition places a member on it. Everything is on disk, so
``matchctl down`` and ``matchctl up --dir DIR`` bring back the changed system.

The same as Python calls on a :class:`pyengine.ops.system.System`: :func:`add_partition`,
:func:`remove_partition`, :func:`move_partition`, :func:`add_worker`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from pyengine.node.settings import ConfigError
from pyengine.node.topology import SystemStateError, Topology
from pyengine.ops.system import System


class ElasticError(SystemStateError):
    """A refused or failed change, as one line for the operator."""


def _coordinator(system: System, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the coordinator's REST API; its refusal becomes an ElasticError."""
    import httpx

    try:
        with system._http(10.0) as http:
            r = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ElasticError(f"the coordinator at {system.coordinator_url} did not answer: {exc}") from None
    if r.is_success:
        return r.json() if r.content else None
    try:
        err = r.json()["error"]
        raise ElasticError(f"the coordinator refused: {err['code']}: {err['message']}")
    except (ValueError, KeyError, TypeError):
        raise ElasticError(f"the coordinator answered HTTP {r.status_code}: {r.text[:200]}") from None


@contextmanager
def _changing(system: System) -> Iterator[Topology]:
    """One change at a time per system directory; yields the current topology (read afresh)."""
    if not system.topology_file.is_file():
        raise ElasticError(f"no system in {system.dir} (no topology.json); start one with `matchctl up`")
    with open(system.dir / "topology.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        system._topology = None
        yield system.topology


def _save(system: System, topo: Topology) -> None:
    topo.save(system.topology_file)
    system._topology = topo


def _require_running(system: System, workers: list[str]) -> None:
    topo = system.topology
    for w in workers:
        try:
            topo.worker(w)
        except ConfigError as exc:
            raise ElasticError(str(exc)) from None
        if system.worker_report(w) is None:
            raise ElasticError(f"worker {w} is not running (start it with `matchctl worker add {w}` or "
                               "`matchctl up`)")


def _wait(what: str, check: Callable[[], bool], timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ElasticError(f"{what} did not happen within {timeout:.0f} s; worker logs are in {logs}")
        time.sleep(0.1)


def _hosted(system: System, worker_id: str) -> set[str]:
    report = system.worker_report(worker_id) or {}
    return {m["partition"] for m in report.get("members", [])}


def _restart_pusher(system: System, timeout: float) -> None:
    """The revocation pusher serves the partitions of the topology it started with."""
    if system.state().get("pusher") and system.running():
        system.stop_pusher()
        system.start_pusher(timeout=timeout)


# ---------------------------------------------------------------------------------------------
# worker add
# ---------------------------------------------------------------------------------------------


def add_worker(system: System, worker_id: str, host: str = "127.0.0.1", timeout: float = 60.0) -> dict:
    """A new worker process joins the running system (it hosts nothing until a partition is
    placed on it). Returns its report (pid, metrics port)."""
    with _changing(system) as topo:
        try:
            new = topo.with_worker(worker_id, host)
        except ConfigError as exc:
            raise ElasticError(str(exc)) from None
        if not system.running():
            raise ElasticError(f"the system in {system.dir} is not running; `matchctl up --dir {system.dir}` first")
        _coordinator(system, "POST", "/v1/workers", json={"id": worker_id, "address": host})
        _save(system, new)
        try:
            system.start_worker(worker_id)
            _wait(f"worker {worker_id}'s start", lambda: system.worker_report(worker_id) is not None, timeout,
                  system.dir / "workers")
        except BaseException:
            system.stop_worker(worker_id)
            _save(system, topo)
            _coordinator(system, "DELETE", f"/v1/workers/{worker_id}")
            raise
        return system.worker_report(worker_id) or {}


# ---------------------------------------------------------------------------------------------
# partition add / remove / move
# ---------------------------------------------------------------------------------------------


def placement(system: System, members: int = 3) -> list[str]:
    """The coordinator's choice: the least-loaded workers, one member per worker."""
    return list(_coordinator(system, "GET", "/v1/placement", params={"members": members})["workers"])


def add_partition(system: System, partition_id: str, workers: list[str] | None = None,
                  timeout: float = 90.0) -> dict:
    """A new partition without symbols on running workers (``workers`` None: the coordinator
    places it). Returns its coordinator record once it has a leader and owns nothing."""
    with _changing(system) as topo:
        if any(p.id == partition_id for p in topo.partitions):
            raise ElasticError(f"partition {partition_id!r} already exists")
        if workers is None:
            workers = placement(system)
        _require_running(system, workers)
        from pyengine.node.localcluster import ports_free

        taken: list[int] = []
        # the next hundred of ports above the partitions that nothing on this machine holds (a
        # worker's metrics port in a removed partition's range, the coordinator's, others')
        for _ in range(50):
            try:
                new = topo.with_partition(partition_id, workers, taken)
            except ConfigError as exc:
                raise ElasticError(str(exc)) from None
            ports = new.partition(partition_id).port_range
            if all(ports_free(topo.worker(w).host, ports) for w in set(workers)):
                break
            taken.append(ports.stop)
        else:
            raise ElasticError(f"no free port range found for partition {partition_id}")
        layout = new.layout(partition_id, system.dir)
        if layout.base_dir.exists():
            raise ElasticError(f"{layout.base_dir} exists (state of an earlier partition {partition_id!r}?); "
                               "choose another id or move that directory away")
        [doc] = [p for p in new.coordinator_document()["partitions"] if p["id"] == partition_id]
        members = doc["members"]
        _coordinator(system, "POST", "/v1/partitions", json={"id": partition_id, "members": members, "symbols": []})
        try:
            _save(system, new)
            _wait(f"the start of partition {partition_id}'s members",
                  lambda: all(partition_id in _hosted(system, w) for w in workers), timeout, system.dir / "workers")
            _wait(f"a leader in partition {partition_id}", lambda: system.leader(partition_id) is not None, timeout,
                  system.dir / "workers")
            system.assign_symbols(timeout, only=partition_id)  # owns nothing (else it would own every symbol)
            _restart_pusher(system, timeout)
        except BaseException:
            _save(system, topo)  # the workers stop the members again
            # force: the coordinator would ask the new partition about its funds (it has none:
            # it never owned anything), and it may be the very thing that did not start
            _coordinator(system, "DELETE", f"/v1/partitions/{partition_id}", params={"force": "true"})
            raise
        return _coordinator(system, "GET", f"/v1/partitions/{partition_id}")


def _admin(system: System, partition_id: str, cmd: dict, timeout: float) -> Any:
    """One admin command to the partition (its answer's body)."""
    from pyengine.client.match_client import MatchClient

    with MatchClient(system.topology.ingress_endpoints(partition_id), **system.control_credentials()) as client:
        if not client.wait_connected(timeout):
            raise ElasticError(f"could not reach partition {partition_id} ({cmd['op']}): {client.last_error}")
        return client.admin(cmd, timeout=timeout).events


def funds(system: System, partition_id: str, timeout: float = 30.0) -> dict:
    """The partition's non-zero balances and fee pool (the ``funds`` admin command)."""
    return _admin(system, partition_id, {"op": "funds"}, timeout)


def retire(system: System, partition_id: str, timeout: float = 30.0) -> dict:
    """The ``retire`` admin command (pyengine/service/retire.py): at one position of the
    partition's log, refused while it owns a symbol, has a migration open or holds funds (an
    ElasticError naming them), else from then on it refuses every command that would change it.
    Returns the answer (``changed``: this call retired it; ``fees``: its fee pool)."""
    done = _admin(system, partition_id, {"op": "retire", "limit": 5}, timeout)
    if done.get("type") == "retired":
        return done
    held = done.get("funds") or {}
    if done.get("reason") != "holds_funds":
        raise ElasticError(f"partition {partition_id} refused to retire: {done.get('detail', done)}")
    rows = ", ".join(f"{b['account']} {b['asset']} {b['available']}+{b['held']}" for b in held["balances"][:5])
    raise ElasticError(f"partition {partition_id} holds funds of {held['count']} balance(s) "
                       f"({rows}{', ...' if held['count'] > 5 else ''}); transfer them away first "
                       "(POST /v1/transfers, RoutedClient.transfer)")


def unretire(system: System, partition_id: str, timeout: float = 30.0) -> None:
    """Undo ``retire``: the partition accepts deposits, orders and migrations again."""
    _admin(system, partition_id, {"op": "unretire"}, timeout)


def remove_partition(system: System, partition_id: str, timeout: float = 60.0) -> dict:
    """Retire a partition that owns no symbol and holds no funds: stop its members, take it out
    of the map and the topology, move its directory to DIR/retired/. Else an error, nothing
    changed. Returns what it left behind (the fee pool, where its data went)."""
    with _changing(system) as topo:
        try:
            topo.partition(partition_id)
        except ConfigError as exc:
            raise ElasticError(str(exc)) from None
        record = _coordinator(system, "GET", f"/v1/partitions/{partition_id}")
        if record["symbols"]:
            raise ElasticError(f"partition {partition_id} still owns {', '.join(record['symbols'])}; migrate them "
                               "away first (`matchctl migrate SYMBOL --to P`, or `matchctl partition move`)")
        if len(topo.partitions) == 1:
            raise ElasticError(f"partition {partition_id} is the last one; a system keeps at least one")
        # no migration may enter it while it is retired and taken out
        _coordinator(system, "PATCH", f"/v1/partitions/{partition_id}", json={"state": "offline"})
        try:
            # retired in its own log: a deposit sent straight to it either came first (refused
            # here, naming the funds) or is refused by the partition; nothing is stranded
            held = retire(system, partition_id, timeout)
            try:
                _coordinator(system, "DELETE", f"/v1/partitions/{partition_id}")
            except BaseException:
                if held["changed"]:  # a refused removal changes nothing: it takes deposits again
                    unretire(system, partition_id, timeout)
                raise
        except BaseException:
            _coordinator(system, "PATCH", f"/v1/partitions/{partition_id}", json={"state": record["state"]})
            raise
        owners = {s["symbol"]: s["partition"] for s in _coordinator(system, "GET", "/v1/symbols")}
        workers = list(topo.partition(partition_id).members)
        _save(system, topo.without_partition(partition_id, owners))
        _wait(f"the stop of partition {partition_id}'s members",
              lambda: all(partition_id not in _hosted(system, w) for w in workers if system.worker_report(w)),
              timeout, system.dir / "workers")
        source = topo.layout(partition_id, system.dir).base_dir
        retired = system.dir / "retired" / f"{partition_id}-{time.strftime('%Y%m%dT%H%M%S')}"
        if source.exists():
            retired.parent.mkdir(parents=True, exist_ok=True)
            source.rename(retired)
        _restart_pusher(system, timeout)
        return {"partition": partition_id, "fees": held["fees"], "retired_dir": str(retired)}


def _transfer_id(source: str, dest: str, account: str, asset: str) -> str:
    digest = hashlib.sha1(f"{source}\0{dest}\0{account}\0{asset}".encode()).hexdigest()[:24]
    return f"move-{digest}"


def move_partition(system: System, partition_id: str, to_workers: list[str], new_id: str | None = None,
                   timeout: float = 120.0, out: TextIO = sys.stdout) -> dict:
    """A new partition on ``to_workers``, every symbol migrated to it one at a time (progress
    lines on ``out``), the free funds transferred, the old partition retired."""
    from pyengine.ops import migrate

    topo = system.topology
    try:
        topo.partition(partition_id)
    except ConfigError as exc:
        raise ElasticError(str(exc)) from None
    if new_id is None:
        n = 1
        while any(p.id == f"{partition_id}.{n}" for p in topo.partitions):
            n += 1
        new_id = f"{partition_id}.{n}"
    _require_running(system, to_workers)
    print(f"partition {new_id} on {', '.join(to_workers)} ...", file=out, flush=True)
    add_partition(system, new_id, to_workers, timeout)
    url = system.coordinator_url
    symbols = _coordinator(system, "GET", f"/v1/partitions/{partition_id}")["symbols"]
    for i, symbol in enumerate(symbols, 1):
        print(f"[{i}/{len(symbols)}] {symbol} {partition_id} -> {new_id}", file=out, flush=True)
        try:
            rec = migrate.follow(url, migrate.start(url, symbol, new_id)["id"], timeout, out)
        except migrate.MigrateError as exc:
            raise ElasticError(f"{symbol}: {exc}; {partition_id} keeps the symbols not moved yet") from None
        if rec["state"] != "done":
            raise ElasticError(f"{migrate.summary(rec)}; {partition_id} keeps the symbols not moved yet")
        print(f"  {migrate.summary(rec)}", file=out, flush=True)
    moved = 0
    while True:
        left = funds(system, partition_id, timeout)
        free = [b for b in left["balances"] if b["available"].strip("0.")]
        if not free:
            break
        for b in free:
            tid = _transfer_id(partition_id, new_id, b["account"], b["asset"])
            _coordinator(system, "POST", "/v1/transfers", json={"id": tid, "account": b["account"], "asset": b["asset"],
                                                                "amount": b["available"], "from": partition_id,
                                                                "to": new_id})
            _wait(f"transfer {tid}", lambda t=tid: _coordinator(system, "GET", f"/v1/transfers/{t}")["state"]
                  in ("done", "refused", "refunded"), timeout, system.dir)
            moved += 1
    if moved:
        print(f"  free funds of {moved} balance(s) transferred to {new_id}", file=out, flush=True)
    retired = remove_partition(system, partition_id, timeout)
    print(f"partition {partition_id} retired (its data in {retired['retired_dir']})", file=out, flush=True)
    return {"partition": new_id, "symbols": symbols, "transfers": moved, **{"retired": retired}}


# ---------------------------------------------------------------------------------------------
# matchctl
# ---------------------------------------------------------------------------------------------


def _workers_arg(text: str) -> list[str]:
    workers = [w.strip() for w in text.split(",") if w.strip()]
    if not workers:
        raise argparse.ArgumentTypeError("give worker ids separated by commas, e.g. w1,w2,w3")
    return workers


def cmd_partition(args: argparse.Namespace) -> int:
    from pyengine.ops.system import describe

    system = System(args.dir)
    if args.action == "add":
        rec = add_partition(system, args.partition, args.workers, args.timeout)
        print(f"partition {rec['id']} runs on {', '.join(m['worker_id'] for m in rec['members'])} "
              f"(ingress {rec['ingress_endpoints']}); it owns no symbol yet: "
              f"`matchctl migrate SYMBOL --to {rec['id']}`")
    elif args.action == "remove":
        done = remove_partition(system, args.partition, args.timeout)
        fees = f"; its fee pool {done['fees']} stays in its data" if done["fees"] else ""
        print(f"partition {args.partition} removed; its data moved to {done['retired_dir']}{fees}")
    else:
        move_partition(system, args.partition, args.to_workers, args.new_id, args.timeout)
    print(describe(system.status()))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    report = add_worker(System(args.dir), args.worker, args.host, args.timeout)
    print(f"worker {args.worker} runs (pid {report.get('pid')}, metrics port {report.get('metrics_port')}); "
          f"place partitions on it with `matchctl partition add P --workers ...`")
    return 0


def add_parsers(sub: Any, default_dir: Path) -> None:
    part = sub.add_parser("partition", help="add, remove or move a partition of a running system (docs/partitions.md)")
    psub = part.add_subparsers(dest="action", required=True)
    add = psub.add_parser("add", help="a new partition (no symbols) on running workers")
    add.add_argument("partition")
    add.add_argument("--workers", type=_workers_arg, default=None,
                     help="w1,w2,w3: member i on the i-th; without: the coordinator picks the least-loaded workers")
    remove = psub.add_parser("remove", help="retire a partition that owns no symbol and holds no funds")
    remove.add_argument("partition")
    move = psub.add_parser("move", help="a new partition on other workers, every symbol migrated, the old one retired")
    move.add_argument("partition")
    move.add_argument("--to-workers", type=_workers_arg, required=True)
    move.add_argument("--as", dest="new_id", default=None, help="the new partition's id (default P.1)")
    worker = sub.add_parser("worker", help="add a worker process to a running system")
    wsub = worker.add_subparsers(dest="action", required=True)
    wadd = wsub.add_parser("add", help="start a new worker; it hosts members once partitions are placed on it")
    wadd.add_argument("worker")
    wadd.add_argument("--host", default="127.0.0.1")
    for p, func in ((add, cmd_partition), (remove, cmd_partition), (move, cmd_partition), (wadd, cmd_worker)):
        p.add_argument("--dir", type=Path, default=default_dir, help=f"system directory (default {default_dir})")
        p.add_argument("--timeout", type=float, default=120.0)
        p.set_defaults(func=func)
