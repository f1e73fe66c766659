"""One worker in one OS process: one JVM, one media driver, and one member of every partition the
topology places on this worker (its own archive, consensus module, service container, Python
MatchingService). The main thread parks in Java until SIGTERM/SIGINT, as in ``pyengine.node.member``.

    python -m pyengine.node.worker --topology FILE --worker-id W [--dir var/system]

``--dir`` is the system directory: member ``i`` of partition ``P`` keeps its durable state in
``DIR/partitions/P/member-i``. The driver directory is in /dev/shm, named after the system
directory and the worker; it is removed when the worker stops.

The worker follows its topology file: when ``matchctl partition add/remove`` rewrites it, the
worker starts the members of new partitions on its running driver and stops those of removed
ones, without a restart (its other members run on). It writes what it runs to
``DIR/workers/W.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from pyengine import jvm
from pyengine.node.member import MemberDirInUse, clear_stale_mark_files
from pyengine.node.procs import accept_sighup_restart, restart_self
from pyengine.node.settings import ConfigError
from pyengine.node.topology import DEFAULT_SYSTEM_DIR, PartitionSpec, Topology

log = logging.getLogger("matchx.worker")


class _Members:
    """The members this worker runs, kept equal to its share of the topology file: at start and
    whenever the file changes (``matchctl partition add/remove``), members of new partitions are
    started on the running driver and members of partitions that left are stopped. What it runs
    is written to ``DIR/workers/W.json`` after every change (pid, metrics port, members)."""

    def __init__(self, worker_id: str, system_dir: Path, aeron_dir: str, node: Any, metrics: Any,
                 report_file: Path) -> None:
        import jpype

        self.worker_id, self.system_dir, self.aeron_dir = worker_id, system_dir, aeron_dir
        self.node, self.metrics, self.report_file = node, metrics, report_file
        self.running: dict[str, dict[str, Any]] = {}  # partition id -> member id, cluster id, port base, refs
        self.lock = threading.Lock()
        self._properties = jpype.JClass("java.util.Properties")
        self._member_node = jpype.JClass("io.matchx.cluster.MemberNode")

    def _jprops(self, values: dict[str, str]) -> Any:
        p = self._properties()
        for k, v in values.items():
            p.setProperty(k, v)
        return p

    def _add(self, topology: Topology, partition: PartitionSpec, member_id: int) -> None:
        from pyengine.node.bridge import CredentialsBridge, ServiceBridge
        from pyengine.node.metrics import MemberCollector
        from pyengine.service.matching import MatchingService, max_reply_bytes

        layout = topology.layout(partition.id, self.system_dir)
        auth_keys = layout.auth_keys()
        props = layout.member_properties(member_id)
        props["aeron.dir"] = self.aeron_dir  # every member of this worker uses the one driver
        member_dir = layout.member_dir(member_id)
        member_dir.mkdir(parents=True, exist_ok=True)
        clear_stale_mark_files(member_dir)
        service = MatchingService(hash_file=member_dir / "hash.json", auth_keys=auth_keys,
                                  max_reply_bytes=max_reply_bytes(topology.term_length))
        bridge = ServiceBridge(service)
        member_props = self._jprops(props)
        java_service = self._member_node.newService(member_props, bridge)
        bridge.attach(java_service)
        refs: list[Any] = [bridge]  # keep the proxies referenced while the member runs
        if auth_keys is not None:
            verifier = CredentialsBridge(service)
            java_service.credentialsVerifier(verifier)
            refs.append(verifier)
        self.node.addMember(member_props, java_service)
        collector = MemberCollector(partition.id, member_id, int(props["cluster.id"]), java_service, service.counters,
                                    bridge.timer, self.aeron_dir, member_dir / "cluster")
        self.metrics.registry.register(collector)
        self.running[partition.id] = {"member_id": member_id, "cluster_id": partition.cluster_id,
                                      "port_base": partition.port_base, "refs": refs, "collector": collector}
        log.info("partition %s member %d started in %s", partition.id, member_id, member_dir)

    def _remove(self, partition_id: str) -> None:
        entry = self.running.pop(partition_id)
        self.metrics.registry.unregister(entry["collector"])
        self.node.removeMember(entry["cluster_id"])
        log.info("partition %s member %d stopped (no longer on this worker)", partition_id, entry["member_id"])

    def reconcile(self, topology: Topology) -> None:
        """Start and stop members until this worker runs exactly its members in ``topology``."""
        wanted = {p.id: (p, m) for p, m in topology.members_on(self.worker_id)}
        with self.lock:
            for pid, entry in list(self.running.items()):
                w = wanted.get(pid)
                if w is None or (w[1], w[0].cluster_id, w[0].port_base) != (
                        entry["member_id"], entry["cluster_id"], entry["port_base"]):
                    self._remove(pid)
            for pid, (partition, member_id) in wanted.items():
                if pid not in self.running:
                    self._add(topology, partition, member_id)
            self.report()

    def report(self) -> None:
        doc = {"pid": os.getpid(), "worker": self.worker_id, "metrics_port": self.metrics.port,
               "members": [{"partition": p, "member_id": e["member_id"], "cluster_id": e["cluster_id"]}
                           for p, e in sorted(self.running.items())]}
        self.report_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.report_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        os.replace(tmp, self.report_file)
        print(json.dumps({"event": "members", **doc}), flush=True)


def _watch(members: _Members, topology_file: Path, stop: threading.Event, interval_s: float = 0.25) -> None:
    """Reconcile whenever the topology file changes (its size or modification time)."""

    def stamp() -> tuple[int, int] | None:
        try:
            st = topology_file.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    seen = stamp()
    while not stop.wait(interval_s):
        now = stamp()
        if now is None or now == seen:
            continue
        seen = now
        try:
            topology = Topology.load(topology_file)
            topology.worker(members.worker_id)
            members.reconcile(topology)
        except Exception as exc:  # noqa: BLE001 - a bad file or member start must not end the worker
            log.error("worker %s: topology change not applied: %s", members.worker_id, exc)


def run_worker(topology: Topology, system_dir: Path, worker_id: str, topology_file: Path | None = None) -> int:
    """Run the worker's members until SIGTERM/SIGINT. With ``topology_file``, follow its changes
    (members of added partitions start, members of removed ones stop). A worker that hosts no
    member yet runs its driver and waits for one (``matchctl worker add``)."""
    topology.worker(worker_id)  # a clear error for an unknown worker
    hosted = topology.members_on(worker_id)
    if not hosted and topology_file is None:
        print(f"matchx worker: worker {worker_id} hosts no member in this topology; nothing to run",
              file=sys.stderr)
        return 2
    aeron_dir = topology.worker_aeron_dir(worker_id, system_dir)
    # Keys first: a worker told to check tokens that cannot load them refuses to start.
    if hosted:
        topology.layout(hosted[0][0].id, system_dir).auth_keys()

    # Scratch: a killed worker leaves it behind and the driver would refuse a live-looking one.
    shutil.rmtree(aeron_dir, ignore_errors=True)
    jvm.start()
    jvm.stamp_java_log_lines()

    import jpype

    from pyengine.node.metrics import JvmCollector, MetricsServer

    Properties = jpype.JClass("java.util.Properties")
    WorkerNode = jpype.JClass("io.matchx.cluster.WorkerNode")
    Latch = jpype.JClass("io.matchx.cluster.ShutdownLatch")

    latch = Latch()  # signal handlers first: a SIGTERM during start-up still stops us cleanly
    node = None
    # Before anything starts: a worker whose metrics port is taken refuses to start (OSError);
    # a worker without members yet takes any free port (reported in DIR/workers/W.json)
    metrics = MetricsServer(topology.worker(worker_id).host, topology.worker_metrics_port(worker_id) or 0,
                            [JvmCollector({"worker": worker_id})])
    metrics.start()
    stop = threading.Event()
    try:
        props = Properties()
        for k, v in {"aeron.dir": aeron_dir, "term.length": str(topology.term_length),
                     "idle.max.park.us": str(topology.idle_max_park_us), "worker.id": worker_id}.items():
            props.setProperty(k, v)
        node = WorkerNode.launch(props)
        members = _Members(worker_id, system_dir, aeron_dir, node, metrics,
                           system_dir / "workers" / f"{worker_id}.json")
        members.reconcile(topology)
    except (jpype.JException, ConfigError) as exc:
        text = exc.message() if isinstance(exc, jpype.JException) else str(exc)
        print(f"matchx worker {worker_id}: failed to start: {text}", file=sys.stderr)
        if node is not None:
            node.close()
        metrics.stop()
        shutil.rmtree(aeron_dir, ignore_errors=True)
        return 2
    print(json.dumps({"event": "started", "worker": worker_id, "aeron_dir": aeron_dir, "metrics_port": metrics.port,
                      "members": [{"partition": p, "member_id": e["member_id"]}
                                  for p, e in members.running.items()]}), flush=True)
    watcher = None
    if topology_file is not None:
        watcher = threading.Thread(target=_watch, args=(members, topology_file, stop), name="topology-watch",
                                   daemon=True)
        watcher.start()
    try:
        signal_name = str(latch.await_())
        if signal_name == str(Latch.RESTART):
            # one member cannot go on (java-cluster JoinDeadlock.java): the worker starts again
            # with all its members (each recovers from its snapshot and log, as after a kill)
            restart_self(f"worker {worker_id}: {latch.restartReason()}")
        log.info("worker %s stopping on SIG%s", worker_id, signal_name)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(10)
        with members.lock:
            node.close()
        metrics.stop()
        shutil.rmtree(aeron_dir, ignore_errors=True)
    print(json.dumps({"event": "stopped", "worker": worker_id}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matchx-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--topology", required=True, type=Path, help="topology file (see docs/partitions.md)")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--dir", type=Path, default=DEFAULT_SYSTEM_DIR,
                        help=f"system directory (default {DEFAULT_SYSTEM_DIR})")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    accept_sighup_restart()
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {args.worker_id} %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    try:
        topology = Topology.load(args.topology)
        return run_worker(topology, args.dir.resolve(), args.worker_id, topology_file=args.topology.resolve())
    except (ConfigError, OSError, jvm.JvmSetupError, MemberDirInUse) as exc:
        print(f"matchx worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
