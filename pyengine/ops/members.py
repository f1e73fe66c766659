"""Member-level operations: what Aeron's ClusterTool gives an operator, with our directories and names.

    matchctl member start|stop|restart P M [--dir var/cluster]
    matchctl cluster handover [--dir DIR]      # planned leader change (java-cluster Handover.java)
    matchctl cluster rolling-restart [--dir DIR]   # every member, followers first, then a handover
    matchctl cluster describe [--dir DIR]      # members, leader, term, positions, snapshots, recording log
    matchctl errors [--dir DIR] [--partition P] [--member M]   # the members' Aeron error logs

``describe`` and ``errors`` read files only (mark files, recording log, status.json), so they work
on a `matchctl cluster` directory and on a `matchctl up` system directory, on running and on
stopped members. They run Aeron's own ClusterTool (in the shaded jar) in a separate JVM.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyengine import jvm
from pyengine.node.localcluster import ClusterError, LocalCluster, wait_for

log = logging.getLogger("matchx.members")

# Agrona needs these on JDK 17 (as jvm.py gives the members' JVMs)
JAVA_OPTIONS = ("--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED",
                "--add-opens=java.base/java.util.zip=ALL-UNNAMED")
TOOL_TIMEOUT_S = 60.0
# what a starting member logs once its first election closed (StartPhases.java): it has caught up
# and acknowledges the log again. The status file says 'follower' before that, while it catches up
IN_STEP = "in step with the cluster"


@dataclass(frozen=True)
class MemberRef:
    partition: str
    member_id: int
    member_dir: Path
    running: bool


def members_of(directory: Path) -> list[MemberRef]:
    """Every member of a `matchctl cluster` directory (partition = its cluster id) or of a
    `matchctl up` system directory, in partition then member order."""
    directory = Path(directory)
    if (directory / "cluster.json").is_file():
        cluster = LocalCluster.open(directory)
        return [MemberRef(str(cluster.layout.cluster_id), m, cluster.layout.member_dir(m), cluster.is_running(m))
                for m in range(cluster.layout.members)]
    if (directory / "topology.json").is_file():
        from pyengine.ops.system import System

        system = System(directory)
        out = []
        for p in system.topology.partitions:
            for m in range(len(p.members)):
                status = system.member_status(p.id, m)
                out.append(MemberRef(p.id, m, system.layout(p.id).member_dir(m), status["role"] != "down"))
        return out
    raise ClusterError(f"{directory} holds neither a cluster (cluster.json) nor a system (topology.json)")


def cluster_tool(cluster_dir: Path, command: str) -> str:
    """Aeron's ClusterTool ``command`` on one member's cluster directory; its output, or why not."""
    if not cluster_dir.is_dir():
        return f"(no cluster directory {cluster_dir}: the member has never started)\n"
    java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "java")
    cmd = [java, *JAVA_OPTIONS, "-cp", str(jvm.find_jar()), "io.aeron.cluster.ClusterTool", str(cluster_dir), command]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"(ClusterTool {command} did not answer within {TOOL_TIMEOUT_S:.0f} s)\n"
    if done.returncode != 0:
        return f"(ClusterTool {command} failed with status {done.returncode})\n{done.stdout}{done.stderr}"
    return done.stdout


def _status(member_dir: Path) -> dict:
    try:
        return json.loads((member_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def describe(directory: Path, partition: str | None = None) -> str:
    lines = []
    for ref in members_of(directory):
        if partition is not None and ref.partition != partition:
            continue
        s = _status(ref.member_dir) if ref.running else {}
        state = s.get("role", "starting") if ref.running else "down"
        lines.append(f"== partition {ref.partition} member {ref.member_id}: {state}  dir {ref.member_dir}")
        if s:
            lines.append(f"   pid {s.get('pid')}  leader {s.get('leader_member_id')}"
                         f"  term {s.get('leadership_term_id')}  log position {s.get('log_position')}")
            lines.append(f"   last snapshot at {s.get('last_snapshot_position')}"
                         f" ({s.get('last_snapshot_bytes')} bytes)")
        cluster_dir = ref.member_dir / "cluster"
        lines.append("-- ClusterTool describe (mark files)")
        lines.append(_indent(cluster_tool(cluster_dir, "describe")))
        lines.append("-- ClusterTool recording-log (terms and snapshots this member has recorded)")
        lines.append(_indent(_one_entry_per_line(cluster_tool(cluster_dir, "recording-log"))))
    return "\n".join(lines)


def errors(directory: Path, partition: str | None = None, member: int | None = None) -> str:
    lines = []
    for ref in members_of(directory):
        if (partition is not None and ref.partition != partition) or (member is not None and ref.member_id != member):
            continue
        lines.append(f"== partition {ref.partition} member {ref.member_id} ({'running' if ref.running else 'down'})")
        lines.append(_indent(cluster_tool(ref.member_dir / "cluster", "errors")))
    return "\n".join(lines)


def _one_entry_per_line(text: str) -> str:
    # ClusterTool prints the whole RecordingLog on one line: one entry per line reads better
    entries = re.findall(r"Entry\{([^}]*)\}", text)
    if not entries:
        return text
    return "\n".join(e.replace("serviceId=-1, ", "") for e in entries)


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.rstrip("\n").splitlines())


def local_cluster(directory: Path, partition: str) -> LocalCluster:
    """The cluster of a `matchctl cluster` directory, checked to be partition ``partition``."""
    directory = Path(directory)
    if (directory / "topology.json").is_file() and not (directory / "cluster.json").is_file():
        raise ClusterError(f"{directory} is a partitioned system: its members run inside workers that host members "
                           "of several partitions, so a single member cannot be started or stopped on its own; "
                           "`matchctl member` works on `matchctl cluster` directories")
    cluster = LocalCluster.open(directory)
    if str(cluster.layout.cluster_id) != str(partition):
        raise ClusterError(f"{directory} holds partition {cluster.layout.cluster_id}, not {partition}")
    return cluster


def check_member(cluster: LocalCluster, member_id: int) -> None:
    if not 0 <= member_id < cluster.layout.members:
        raise ClusterError(f"member {member_id} is not in 0..{cluster.layout.members - 1}")


def start_member(cluster: LocalCluster, member_id: int, timeout: float) -> dict:
    check_member(cluster, member_id)
    if cluster.is_running(member_id):
        raise ClusterError(f"member {member_id} is already running (pid {cluster.pids()[member_id]})")
    in_step_before = cluster.member_log(member_id).count(IN_STEP)
    pid = cluster.start_member(member_id, detach=True)

    def in_step():
        if not cluster.is_running(member_id):
            raise ClusterError(f"member {member_id} (pid {pid}) exited while starting; see "
                               f"{cluster.layout.member_dir(member_id) / 'member.log'}")
        s = cluster.member_status(member_id)
        if s.get("role") not in ("follower", "leader") or s.get("leader_member_id", -1) < 0:
            return None
        # in step, not only following: a rolling restart that stops the next member while this
        # one still catches up stops two of three (no quorum until it has caught up)
        return s if cluster.member_log(member_id).count(IN_STEP) > in_step_before else None

    return wait_for(in_step, timeout, f"member {member_id} to join its cluster", interval=0.1)


def stop_member(cluster: LocalCluster, member_id: int, timeout: float) -> None:
    check_member(cluster, member_id)
    cluster.stop_member(member_id, timeout)


def handover(cluster: LocalCluster, timeout: float,
             on_stop: Callable[[int, int], None] | None = None) -> tuple[int, int, float]:
    """A planned leader change: SIGTERM to the leader, which ends its log first so that the others
    elect at once (java-cluster Handover.java); then the old leader restarts as a follower.
    Returns (old leader, new leader, seconds from the stop to the new leader in the status files)."""
    old = cluster.await_leader(timeout)
    cluster.await_followers(cluster.layout.members - 1, timeout)
    if on_stop is not None:
        on_stop(old, old)
    started = time.monotonic()
    cluster.kill(old, signal.SIGTERM)
    new = cluster.await_leader(timeout, exclude=old)
    took = time.monotonic() - started
    stop_member(cluster, old, timeout)  # reaps the stopping process
    start_member(cluster, old, timeout)
    return old, new, took


def rolling_restart(cluster: LocalCluster, timeout: float,
                    on_stop: Callable[[int, int], None] | None = None) -> list[str]:
    """Restarts every member one at a time: each follower (waiting until it is back in step),
    then the leader by a planned handover. Returns what was done, one line per member.
    ``on_stop(member, leader)`` is called just before each member is stopped (bench/handover.py
    times each step from there)."""
    leader = cluster.await_leader(timeout)
    cluster.await_followers(cluster.layout.members - 1, timeout)
    done = []
    for member_id in range(cluster.layout.members):
        if member_id == leader:
            continue
        started = time.monotonic()
        if on_stop is not None:
            on_stop(member_id, leader)
        stop_member(cluster, member_id, timeout)
        start_member(cluster, member_id, timeout)
        cluster.await_followers(cluster.layout.members - 1, timeout)
        done.append(f"member {member_id} (follower) restarted in {time.monotonic() - started:.1f} s")
    old, new, took = handover(cluster, timeout, on_stop)
    cluster.await_followers(cluster.layout.members - 1, timeout)
    done.append(f"member {old} (leader) handed over to member {new} ({took * 1000:.0f} ms) and restarted")
    return done
