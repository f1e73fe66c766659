"""One worker in one OS process: one JVM, one media driver, and one member of every partition the
topology places on this worker (its own archive, consensus module, service container, Python
MatchingService). The main thread parks in Java until SIGTERM/SIGINT, as in ``pyengine.node.member``.

    python -m pyengine.node.worker --topology FILE --worker-id W [--dir var/system]

``--dir`` is the system directory: member ``i`` of partition ``P`` keeps its durable state in
``DIR/partitions/P/member-i``. The driver directory is in /dev/shm, named after the system
directory and the worker; it is removed when the worker stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from pyengine import jvm
from pyengine.node.member import MemberDirInUse, clear_stale_mark_files
from pyengine.node.settings import ConfigError
from pyengine.node.topology import DEFAULT_SYSTEM_DIR, Topology

log = logging.getLogger("matchx.worker")


def run_worker(topology: Topology, system_dir: Path, worker_id: str) -> int:
    topology.worker(worker_id)  # a clear error for an unknown worker
    hosted = topology.members_on(worker_id)
    if not hosted:
        print(f"matchx worker: worker {worker_id} hosts no member in this topology; nothing to run",
              file=sys.stderr)
        return 2
    aeron_dir = topology.worker_aeron_dir(worker_id, system_dir)
    # Keys first: a worker told to check tokens that cannot load them refuses to start.
    auth_keys = topology.layout(hosted[0][0].id, system_dir).auth_keys()
    members = []
    for partition, member_id in hosted:
        layout = topology.layout(partition.id, system_dir)
        props = layout.member_properties(member_id)
        props["aeron.dir"] = aeron_dir  # every member of this worker uses the one driver
        member_dir = layout.member_dir(member_id)
        member_dir.mkdir(parents=True, exist_ok=True)
        clear_stale_mark_files(member_dir)
        members.append((partition.id, member_id, member_dir, props, auth_keys))

    # Scratch: a killed worker leaves it behind and the driver would refuse a live-looking one.
    shutil.rmtree(aeron_dir, ignore_errors=True)
    jvm.start()

    import jpype

    from pyengine.node.bridge import CredentialsBridge, ServiceBridge
    from pyengine.service.matching import MatchingService, max_reply_bytes

    Properties = jpype.JClass("java.util.Properties")
    MemberNode = jpype.JClass("io.matchx.cluster.MemberNode")
    WorkerNode = jpype.JClass("io.matchx.cluster.WorkerNode")
    Latch = jpype.JClass("io.matchx.cluster.ShutdownLatch")

    def jprops(values: dict[str, str]):
        p = Properties()
        for k, v in values.items():
            p.setProperty(k, v)
        return p

    latch = Latch()  # signal handlers first: a SIGTERM during start-up still stops us cleanly
    bridges = []  # keep the proxies referenced for the life of the process
    node = None
    from pyengine.node.metrics import JvmCollector, MemberCollector, MetricsServer

    # Before anything starts: a worker whose metrics port is taken refuses to start (OSError)
    metrics = MetricsServer(topology.worker(worker_id).host, topology.worker_metrics_port(worker_id),
                            [JvmCollector({"worker": worker_id})])
    metrics.start()
    try:
        node = WorkerNode.launch(jprops({
            "aeron.dir": aeron_dir,
            "term.length": str(topology.term_length),
            "idle.max.park.us": str(topology.idle_max_park_us),
            "worker.id": worker_id,
        }))
        for partition_id, member_id, member_dir, props, auth_keys in members:
            service = MatchingService(hash_file=member_dir / "hash.json", auth_keys=auth_keys,
                                      max_reply_bytes=max_reply_bytes(topology.term_length))
            bridge = ServiceBridge(service)
            member_props = jprops(props)
            java_service = MemberNode.newService(member_props, bridge)
            bridge.attach(java_service)
            bridges.append(bridge)
            if auth_keys is not None:
                verifier = CredentialsBridge(service)
                java_service.credentialsVerifier(verifier)
                bridges.append(verifier)
            node.addMember(member_props, java_service)
            metrics.registry.register(MemberCollector(
                partition_id, member_id, int(props["cluster.id"]), java_service, service.counters, bridge.timer,
                aeron_dir, member_dir / "cluster"))
            log.info("partition %s member %d started in %s", partition_id, member_id, member_dir)
    except jpype.JException as exc:
        print(f"matchx worker {worker_id}: failed to start: {exc.message()}", file=sys.stderr)
        if node is not None:
            node.close()
        metrics.stop()
        shutil.rmtree(aeron_dir, ignore_errors=True)
        return 2
    print(json.dumps({"event": "started", "worker": worker_id, "aeron_dir": aeron_dir, "metrics_port": metrics.port,
                      "members": [{"partition": p, "member_id": m} for p, m, *_ in members]}), flush=True)
    try:
        signal_name = latch.await_()
        log.info("worker %s stopping on SIG%s", worker_id, signal_name)
    finally:
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
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s {args.worker_id} %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    try:
        topology = Topology.load(args.topology)
        return run_worker(topology, args.dir.resolve(), args.worker_id)
    except (ConfigError, OSError, jvm.JvmSetupError, MemberDirInUse) as exc:
        print(f"matchx worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
