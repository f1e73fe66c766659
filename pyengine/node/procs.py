"""Process helpers: whether a process id is a live process (Linux /proc), and a process that
starts itself again."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("matchx.node")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. An exited child of ours is reaped; a zombie counts as gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return False
    return "zombie" not in state.lower()


def accept_sighup_restart() -> None:
    """Lets SIGHUP restart this member or worker in place (docs/operations.md); call before the JVM
    starts. A parent that ignores SIGHUP (nohup, some supervisors) passes the ignore on, and the JVM
    then leaves it ignored rather than install its handler: the restart would silently do nothing."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def restart_self(reason: str) -> None:
    """Replaces this process with a fresh run of its own command line (same pid, environment,
    working directory, stdout and stderr); never returns.

    For a member or worker that Aeron left in a wait it cannot leave (java-cluster
    JoinDeadlock.java): closing it cleanly could wait on the same stuck threads, and a new start
    recovers from its snapshot and log as after a kill. Every descriptor above stderr is closed
    first: the JVM's sockets and files do not all close on exec, and the new media driver must
    bind the same ports. The same pid lets the new start clear the mark files it left
    (member.clear_stale_mark_files).
    """
    log.error("restarting this process: %s", reason)
    for h in logging.getLogger().handlers:
        h.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.execv(sys.executable, sys.orig_argv)


def since_process_start_ms() -> float:
    """Milliseconds since this OS process started (Linux /proc; -1 elsewhere): the member's
    start-phase log lines carry it, as the Java side's do (StartPhases.java). Computed as the JDK
    computes ``ProcessHandle.info().startInstant()`` (boot time from /proc/stat, whole seconds,
    plus the process's start ticks, against the wall clock), so that the Python and Java lines of
    one start share a clock: from /proc/uptime instead they differed by a constant of up to 1 s
    (the boot time's rounding), which put "service restored" before "snapshot read"."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return -1.0
    return time.time() * 1000 - (btime * 1000 + start_ticks * 1000 // os.sysconf("SC_CLK_TCK"))
