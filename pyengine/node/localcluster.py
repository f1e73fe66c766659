"""Start, watch and stop the members of one partition on this machine.

Each member is a separate OS process (``python -m pyengine.node.member``). The layout and the member
PIDs are written to ``DIR/cluster.json`` and ``DIR/pids.json`` so that ``matchctl cluster
status|down`` in another shell finds them. Shaped after Aeron's TestCluster: tests read as the
scenario they check (start, find the leader, kill it, wait for a condition with a deadline).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyengine.node.procs import pid_alive
from pyengine.node.settings import PORTS_PER_MEMBER, PORTS_PER_PARTITION, ClusterLayout


class ClusterError(RuntimeError):
    pass


def ports_free(host: str, ports: range) -> bool:
    """True when every port can be bound, for UDP (Aeron) and TCP (REST services)."""
    for port in ports:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    return False
    return True


def free_port_base(start: int, members: int = 3, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """The first port base at or after ``start`` (in steps of a partition) whose ports are free."""
    for i in range(attempts):
        base = start + i * PORTS_PER_PARTITION
        if base + PORTS_PER_PARTITION > 65535:
            break
        if ports_free(host, range(base, base + members * PORTS_PER_MEMBER)):
            return base
    raise ClusterError(f"no free port range found from {start}")


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class LocalCluster:
    def __init__(self, layout: ClusterLayout, log_level: str = "INFO") -> None:
        self.layout = layout
        self.log_level = log_level
        self.dir = Path(layout.base_dir)
        self.procs: dict[int, subprocess.Popen | None] = {}

    # ---- files shared with other matchctl invocations --------------------------------------

    @property
    def layout_file(self) -> Path:
        return self.dir / "cluster.json"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pids.json"

    @classmethod
    def open(cls, base_dir: Path) -> LocalCluster:
        layout_file = Path(base_dir) / "cluster.json"
        if not layout_file.is_file():
            raise ClusterError(f"no cluster in {base_dir} (no cluster.json); start one with `matchctl cluster up`")
        return cls(ClusterLayout.from_json(layout_file.read_text()))

    def pids(self) -> dict[int, int]:
        if not self.pid_file.is_file():
            return {}
        return {int(k): v for k, v in json.loads(self.pid_file.read_text()).items()}

    def _save_pids(self, pids: dict[int, int]) -> None:
        self.pid_file.write_text(json.dumps({str(k): v for k, v in sorted(pids.items())}))

    # ---- members ---------------------------------------------------------------------------

    def start(self, detach: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        running = [m for m, pid in self.pids().items() if pid_alive(pid)]
        if running:
            raise ClusterError(f"members {running} of {self.dir} are already running; `matchctl cluster down` first")
        self.layout_file.write_text(self.layout.to_json())
        for member_id in range(self.layout.members):
            self.start_member(member_id, detach=detach)

    def start_member(self, member_id: int, detach: bool = False) -> int:
        member_dir = self.layout.member_dir(member_id)
        member_dir.mkdir(parents=True, exist_ok=True)
        # The driver directory is scratch: stale files from a killed member would stop the
        # driver from starting. The cluster and archive dirs are the durable state and stay.
        shutil.rmtree(self.layout.aeron_dir(member_id), ignore_errors=True)
        log = open(member_dir / "member.log", "ab")
        cmd = [sys.executable, "-m", "pyengine.node.member", "--layout", str(self.layout_file),
               "--member-id", str(member_id), "--log-level", self.log_level]
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=detach, cwd=str(Path(__file__).resolve().parents[2]),
        )
        log.close()
        self.procs[member_id] = proc
        pids = self.pids()
        pids[member_id] = proc.pid
        self._save_pids(pids)
        return proc.pid

    def kill(self, member_id: int, sig: int = signal.SIGKILL) -> None:
        pid = self.pids().get(member_id)
        if pid is None:
            raise ClusterError(f"member {member_id} has no recorded pid")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self._reap(member_id, pid, 10)
            shutil.rmtree(self.layout.aeron_dir(member_id), ignore_errors=True)

    def _reap(self, member_id: int, pid: int, timeout: float) -> bool:
        proc = self.procs.get(member_id)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop_member(self, member_id: int, timeout: float = 15.0) -> None:
        pid = self.pids().get(member_id)
        if pid is None or not pid_alive(pid):
            shutil.rmtree(self.layout.aeron_dir(member_id), ignore_errors=True)
            return
        os.kill(pid, signal.SIGTERM)
        if not self._reap(member_id, pid, timeout):
            os.kill(pid, signal.SIGKILL)
            self._reap(member_id, pid, 10)
        shutil.rmtree(self.layout.aeron_dir(member_id), ignore_errors=True)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every member, SIGKILL what is still there after ``timeout``, clean /dev/shm."""
        pids = self.pids()
        for pid in pids.values():
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for member_id, pid in pids.items():
            if not self._reap(member_id, pid, timeout):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._reap(member_id, pid, 10)
        for member_id in range(self.layout.members):
            shutil.rmtree(self.layout.aeron_dir(member_id), ignore_errors=True)
        self.pid_file.unlink(missing_ok=True)

    # ---- observing -------------------------------------------------------------------------

    def is_running(self, member_id: int) -> bool:
        pid = self.pids().get(member_id)
        return pid is not None and pid_alive(pid)

    def member_status(self, member_id: int) -> dict:
        path = self.layout.member_dir(member_id) / "status.json"
        status = {"member_id": member_id, "role": "down", "running": self.is_running(member_id),
                  "metrics_url": f"http://{self.layout.host(member_id)}:{self.layout.metrics_port(member_id)}/metrics"}
        if status["running"] and path.is_file():
            try:
                reported = json.loads(path.read_text())
            except (OSError, ValueError):
                reported = {}
            # A file from an earlier process of this member says nothing about the current one.
            if reported.get("pid") == self.pids().get(member_id):
                status.update(reported)
            else:
                status["role"] = "starting"
        hash_path = self.layout.member_dir(member_id) / "hash.json"
        if hash_path.is_file():
            try:
                status["state_hash"] = json.loads(hash_path.read_text())
            except (OSError, ValueError):
                pass
        return status

    def status(self) -> list[dict]:
        return [self.member_status(m) for m in range(self.layout.members)]

    def leader(self) -> int | None:
        leaders = [s["member_id"] for s in self.status() if s.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def await_leader(self, timeout: float = 30.0, exclude: int | None = None) -> int:
        def found():
            lead = self.leader()
            return None if lead is None or lead == exclude else lead + 1  # +1: member 0 is falsy

        return wait_for(found, timeout, "a leader") - 1

    def await_followers(self, count: int, timeout: float = 30.0) -> None:
        wait_for(lambda: sum(s.get("role") == "follower" for s in self.status()) >= count,
                 timeout, f"{count} followers")

    def request_snapshot(self, timeout: float = 30.0) -> dict[int, int]:
        """Has the leader's consensus module take a snapshot on every member, like Aeron's
        ClusterTool: the control toggle in the leader's driver counters. Only someone who can
        read and write the leader's driver directory can do this (OS permissions authorise it).

        Returns {member: snapshot log position} once every running member has taken it.
        """
        from pyengine import jvm

        leader = self.await_leader(timeout)
        running = [m for m in range(self.layout.members) if self.is_running(m)]
        before = {m: self.member_status(m).get("last_snapshot_position", -1) for m in running}
        jvm.start()
        import jpype

        control = jpype.JClass("io.aeron.cluster.ClusterControl")
        cnc = jpype.JClass("java.io.File")(self.layout.aeron_dir(leader), "cnc.dat")
        if not cnc.exists():
            raise ClusterError(f"leader {leader} has no driver file {cnc}")
        toggle = control.findControlToggle(control.mapCounters(cnc), self.layout.cluster_id)
        if toggle is None:
            raise ClusterError(f"no control toggle for cluster {self.layout.cluster_id} in {cnc}")
        if not control.ToggleState.SNAPSHOT.toggle(toggle):
            raise ClusterError("the leader is busy with another control action; try again")

        def taken():
            now = {m: self.member_status(m).get("last_snapshot_position", -1) for m in running}
            return now if all(now[m] > before[m] for m in running) else None

        return wait_for(taken, timeout, "every member to take the snapshot", interval=0.1)

    def member_hash(self, member_id: int) -> dict | None:
        return self.member_status(member_id).get("state_hash")

    def ingress_endpoints(self, only: tuple[int, ...] | None = None) -> str:
        return self.layout.ingress_endpoints(only)

    def member_log(self, member_id: int) -> str:
        path = self.layout.member_dir(member_id) / "member.log"
        return path.read_text(errors="replace") if path.is_file() else ""
