"""One cluster member in one OS process: Python starts the JVM, launches the member and parks
its main thread in Java until SIGTERM/SIGINT.

    python -m pyengine.node.member --layout DIR/cluster.json --member-id 0

The main thread waits inside Java (io.matchx.cluster.ShutdownLatch) so that callbacks from Aeron's
threads find the GIL free instead of waiting a switch interval for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from pyengine import jvm
from pyengine.node.procs import accept_sighup_restart, pid_alive, restart_self, since_process_start_ms
from pyengine.node.settings import ClusterLayout, ConfigError

log = logging.getLogger("matchx.node")


MARK_FILES = ("archive/archive-mark.dat", "cluster/cluster-mark.dat", "cluster/cluster-mark-service-0.dat")


class MemberDirInUse(RuntimeError):
    pass


def clear_stale_mark_files(member_dir: Path) -> None:
    """Removes the mark files a killed member left behind.

    Aeron refuses to start while a mark file looks active (updated within the driver timeout),
    so a member restarted quickly after a SIGKILL would fail. The previous owner's pid is in
    status.json: if that process is gone, its mark files are stale and safe to delete; if it
    is alive, this directory is in use and we stop with a clear error instead.
    """
    status = member_dir / "status.json"
    previous = None
    if status.is_file():
        try:
            previous = int(json.loads(status.read_text())["pid"])
        except (ValueError, KeyError, OSError):
            previous = None
    if previous is not None and previous != os.getpid() and pid_alive(previous):
        raise MemberDirInUse(f"member directory {member_dir} is in use by process {previous}")
    for name in MARK_FILES:
        (member_dir / name).unlink(missing_ok=True)
    status.unlink(missing_ok=True)


def run_member(layout: ClusterLayout, member_id: int) -> int:
    props = layout.member_properties(member_id)
    # Keys first: a member told to check tokens that cannot load them refuses to start, before
    # it touches its directory or starts a JVM.
    auth_keys = layout.auth_keys()
    member_dir = layout.member_dir(member_id)
    member_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_mark_files(member_dir)
    log.info("start: Python ready (+%.0f ms since process start)", since_process_start_ms())
    started = time.perf_counter()
    jvm.start()
    jvm.stamp_java_log_lines()
    log.info("start: JVM started in %.0f ms (+%.0f ms since process start)",
             (time.perf_counter() - started) * 1000, since_process_start_ms())

    import jpype

    from pyengine.node.bridge import ServiceBridge
    from pyengine.service.matching import MatchingService, max_reply_bytes

    Properties = jpype.JClass("java.util.Properties")
    MemberNode = jpype.JClass("io.matchx.cluster.MemberNode")
    Latch = jpype.JClass("io.matchx.cluster.ShutdownLatch")

    jprops = Properties()
    for k, v in props.items():
        jprops.setProperty(k, v)

    from pyengine.node.bridge import CredentialsBridge

    service = MatchingService(hash_file=member_dir / "hash.json", auth_keys=auth_keys,
                              max_reply_bytes=max_reply_bytes(layout.term_length))
    bridge = ServiceBridge(service)
    java_service = MemberNode.newService(jprops, bridge)
    bridge.attach(java_service)
    if auth_keys is not None:
        java_service.credentialsVerifier(CredentialsBridge(service))
        log.info("token authentication on, %d bootstrap key(s)", len(auth_keys))
    latch = Latch()
    from pyengine.node.metrics import JvmCollector, MemberCollector, MetricsServer

    # Before the member starts: a member whose metrics port is taken refuses to start (OSError)
    metrics = MetricsServer(layout.host(member_id), layout.metrics_port(member_id), [
        MemberCollector(str(layout.cluster_id), member_id, layout.cluster_id, java_service, service.counters,
                        bridge.timer, layout.aeron_dir(member_id), member_dir / "cluster"),
        JvmCollector({"partition": str(layout.cluster_id), "member": str(member_id)}),
    ])
    metrics.start()
    try:
        node = MemberNode.launch(jprops, java_service)
    except jpype.JException as exc:
        print(f"matchx node: member {member_id} failed to start: {exc.message()}", file=sys.stderr)
        metrics.stop()
        return 2
    print(json.dumps({"event": "started", "member_id": member_id, "dir": str(member_dir),
                      "metrics_port": metrics.port}), flush=True)
    try:
        signal_name = str(latch.await_())
        if signal_name == str(Latch.RESTART):
            # the member cannot go on (java-cluster JoinDeadlock.java) and closing it could wait on
            # the stuck threads: start again from the snapshot and log, as after a kill
            restart_self(f"member {member_id}: {latch.restartReason()}")
        log.info("member %d stopping on SIG%s", member_id, signal_name)
    finally:
        node.close()
        metrics.stop()
    print(json.dumps({"event": "stopped", "member_id": member_id}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matchx-node", description=__doc__.splitlines()[0])
    parser.add_argument("--layout", required=True, type=Path, help="cluster.json written by matchctl")
    parser.add_argument("--member-id", required=True, type=int)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    accept_sighup_restart()
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s m{args.member_id} %(name)s %(levelname)s %(message)s",
    )
    try:
        layout = ClusterLayout.from_json(args.layout.read_text())
        return run_member(layout, args.member_id)
    except (ConfigError, OSError, jvm.JvmSetupError, MemberDirInUse) as exc:
        print(f"matchx node: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
