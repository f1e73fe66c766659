"""The revocation pusher: sends the auth service's key changes and revocations into every
partition's log, as admin commands, by itself.

    python -m pyengine.ops.pusher --dir DIR [--interval 0.2]          # a `matchctl up` system
    python -m pyengine.ops.pusher --topology-env MATCHX_TOPOLOGY --auth-url http://auth:8081 \
        --password-file /auth/service.password --state /data/pusher.json  # compose
    python -m pyengine.ops.pusher --cluster-dir var/cluster --auth-url http://127.0.0.1:8081 \
        --password-file var/auth/service.password --state var/cluster/pusher.json  # `matchctl cluster up`

``matchctl up`` starts it (one per system) when the topology runs an auth service, and stops it
with ``matchctl down``; ``matchctl cluster up --auth-url`` starts one for its single partition
(``spawn``), stopped by ``matchctl cluster down``. One thread per partition, so a partition that
is electing a leader does not hold up the others. Each thread, every ``--interval`` seconds:

1. asks its partition (through the log, so the answer is committed state) which keys it holds
   and the last revocation ``seq`` it applied (``auth_state``) -- on start, and again after any
   failure, so it resumes exactly where the partition stands after a pusher restart, a leader
   failover or a member restored from a snapshot;
2. asks the auth service for what is newer (``coordinator.auth.feed.commands_for``: published
   keys, ``GET /v1/revocations?since=last_seq``);
3. submits ``add_key``, then ``revoke`` in batches of up to 1,000 jtis, then ``remove_key``.
   Each is idempotent in the partition (``revoke`` with an old seq changes nothing), so a
   command resent after a failover is harmless.

The cursor that matters lives in the partition's own replicated log; the pusher also writes
what each partition acknowledged to ``DIR/pusher.json`` (for operators, and so that a restart
can say where it left off). The pusher's sessions use the system's service credential
(``System.service_token_provider``: admin and read).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("matchx.pusher")

DEFAULT_INTERVAL_S = 0.2
# Look for the leader with a second session when a command has had no word from the partition
# for this long (MatchClient silence_reconnect_s; the first session stays and wins if its NewLeader
# event comes first): a client whose leader died and whose NewLeader event never came would
# otherwise wait for Aeron's publication and new-leader timeouts (10 s: the failover rounds of
# bench/reports/auth_revocation.md). The pusher's commands are idempotent, so a needless second
# session costs a resend and nothing else.
SILENCE_RECONNECT_S = 1.0
# one client start at a time: JPype crashed (SIGSEGV) with two threads starting clients at once
_CLIENT_START = threading.Lock()


class PartitionPusher(threading.Thread):
    """Keeps one partition's keys and revocations equal to the auth service's."""

    def __init__(self, partition_id: str, endpoints: str, auth_client_factory: Callable, client_kwargs: dict,
                 on_acked: Callable[[str, dict], None], stop: threading.Event, interval_s: float) -> None:
        super().__init__(name=f"pusher-{partition_id}", daemon=True)
        self.partition_id = partition_id
        self.endpoints = endpoints
        self.auth_client_factory = auth_client_factory
        self.client_kwargs = client_kwargs
        self.on_acked = on_acked
        self.stop = stop
        self.interval_s = interval_s

    def run(self) -> None:
        from pyengine.client.match_client import MatchClient

        client = None
        applied: dict | None = None  # {"kids": [...], "last_seq": n}: what the partition holds
        with self.auth_client_factory() as api:
            while not self.stop.is_set():
                try:
                    if client is None:
                        with _CLIENT_START:
                            client = MatchClient(self.endpoints, silence_reconnect_s=SILENCE_RECONNECT_S,
                                                 **self.client_kwargs)
                    if not client.wait_connected(5.0):
                        raise RuntimeError(f"not connected: {client.last_error}")
                    if applied is None:
                        state = client.admin({"op": "auth_state"}, timeout=10).events
                        applied = {"kids": list(state["kids"]), "last_seq": int(state["last_seq"])}
                        log.info("partition %s holds %d key(s), revocations up to seq %d", self.partition_id,
                                 len(applied["kids"]), applied["last_seq"])
                        self._push(client, api, applied)
                        self.on_acked(self.partition_id, applied)  # in step: `matchctl up` waits for this
                    else:
                        self._push(client, api, applied)
                except Exception as exc:  # noqa: BLE001 - a pusher keeps going; the next round resumes
                    from pyengine.client.match_client import AuthenticationError

                    log.warning("partition %s: %s: %s; resuming from the partition's state", self.partition_id,
                                type(exc).__name__, exc)
                    applied = None
                    if isinstance(exc, AuthenticationError) and client is not None:
                        client.close()  # a refused credential: a new session with a new token
                        client = None
                self.stop.wait(self.interval_s)
        if client is not None:
            client.close()

    def _push(self, client, api, applied: dict) -> None:
        from coordinator.auth.feed import commands_for

        commands = commands_for(api, applied["kids"], applied["last_seq"])
        for cmd in commands:
            kind = cmd.pop("type")
            started = time.monotonic()
            # short: a command stuck behind a dead leader is resent by the next round (the
            # partition ignores what it already has), rather than waited on
            client.admin({"op": kind, **cmd}, timeout=3)
            if kind == "add_key":
                applied["kids"] = sorted({*applied["kids"], cmd["kid"]})
            elif kind == "remove_key":
                applied["kids"] = [k for k in applied["kids"] if k != cmd["kid"]]
            else:
                applied["last_seq"] = max(applied["last_seq"], int(cmd["seq"]))
            log.info("partition %s: %s %s applied in %.0f ms", self.partition_id, kind,
                     cmd.get("kid") or f"seq {cmd['seq']} ({len(cmd['jtis'])} jtis)",
                     (time.monotonic() - started) * 1000)
        if commands:
            self.on_acked(self.partition_id, applied)


class Pusher:
    """One system's pusher: a thread per partition and the acknowledged-cursor file.

    ``Pusher.for_system(DIR)`` for `matchctl up`; the explicit form for compose, where the
    topology, the auth service and the service password come from the container's setup."""

    def __init__(self, partitions: dict[str, str], auth_client_factory: Callable, client_kwargs: dict,
                 cursor_file: Path, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.partitions = partitions  # partition id -> its ingress endpoints
        self.auth_client_factory = auth_client_factory
        self.client_kwargs = client_kwargs
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.cursor_file = cursor_file
        self._lock = threading.Lock()
        self.cursor: dict[str, dict] = self._load_cursor()

    @classmethod
    def for_system(cls, system_dir: Path, interval_s: float = DEFAULT_INTERVAL_S) -> Pusher:
        from pyengine.ops.system import System

        system = System(system_dir)
        system.auth_url  # noqa: B018 - a clear error now rather than in every thread
        return cls(endpoints_of(system.topology), system.auth_client, system.control_credentials(),
                   system.dir / "pusher.json", interval_s)

    @classmethod
    def for_service(cls, partitions: dict[str, str], auth_url: str, password_file: Path, cursor_file: Path,
                    egress_host: str | None = None, interval_s: float = DEFAULT_INTERVAL_S) -> Pusher:
        from coordinator.auth.client import AuthClient
        from coordinator.auth.setup import service_token_provider

        password = password_file.read_text().strip()
        if not password:
            raise OSError(f"{password_file} is empty")
        tokens = service_token_provider(auth_url, password)
        kwargs: dict = {"token_provider": tokens}
        if egress_host:
            kwargs["egress_host"] = egress_host
        return cls(partitions, lambda: AuthClient(auth_url), kwargs, cursor_file, interval_s)

    def _load_cursor(self) -> dict[str, dict]:
        try:
            cursor = json.loads(self.cursor_file.read_text()).get("partitions", {})
        except (OSError, ValueError):
            return {}
        for pid, c in sorted(cursor.items()):
            log.info("partition %s was last acknowledged at revocation seq %s", pid, c.get("last_seq"))
        # kept as the record of where it stopped; the partitions' own answers are the resume point
        return {}

    def _acked(self, partition_id: str, applied: dict) -> None:
        with self._lock:
            self.cursor[partition_id] = {**applied, "at": time.time()}
            tmp = self.cursor_file.with_suffix(".tmp")
            doc = {"pid": os.getpid(), "partitions": self.cursor}
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.cursor_file)

    def run(self) -> None:
        from pyengine import jvm

        jvm.start()  # in the main thread, before any partition thread needs it
        threads = [PartitionPusher(pid, endpoints, self.auth_client_factory, self.client_kwargs, self._acked,
                                   self.stop, self.interval_s) for pid, endpoints in self.partitions.items()]
        for t in threads:
            t.start()
        log.info("pushing keys and revocations to %d partition(s) every %.2f s", len(threads), self.interval_s)
        self.stop.wait()
        for t in threads:
            t.join(15)


def endpoints_of(topology) -> dict[str, str]:
    """Each partition of a topology and its ingress endpoints."""
    return {p.id: topology.ingress_endpoints(p.id) for p in topology.partitions}


def cluster_partition(cluster_dir: Path) -> dict[str, str]:
    """The one partition of a `matchctl cluster up` directory (named by its cluster id)."""
    from pyengine.node.localcluster import LocalCluster

    cluster = LocalCluster.open(cluster_dir)
    return {f"cluster-{cluster.layout.cluster_id}": cluster.ingress_endpoints()}


def spawn(args: list[str], log_file: Path, cursor_file: Path, partition_ids: set[str], cwd: Path,
          env: dict[str, str], timeout: float, on_started: Callable[[int], None] = lambda pid: None) -> int:
    """Starts ``python -m pyengine.ops.pusher ARGS`` in its own session (output to ``log_file``)
    and returns its pid once it is in step with every partition (``cursor_file`` names its pid
    and them all): a revoke right after would otherwise wait for its JVM to start.
    ``on_started(pid)`` records the pid before the wait; on failure the process is stopped and
    ``RuntimeError`` says why."""
    import subprocess

    with open(log_file, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pyengine.ops.pusher", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=str(cwd), env=env)
    on_started(proc.pid)
    deadline = time.monotonic() + timeout
    while True:
        try:
            doc = json.loads(cursor_file.read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("pid") == proc.pid and set(doc.get("partitions", {})) >= partition_ids:
            return proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"the revocation pusher exited with status {proc.returncode}; see {log_file}")
        if time.monotonic() > deadline:
            import shutil

            from pyengine.client.match_client import client_aeron_dirs

            proc.kill()
            proc.wait(10)
            for d in client_aeron_dirs(proc.pid):
                shutil.rmtree(d, ignore_errors=True)
            raise RuntimeError(f"the revocation pusher did not reach every partition within {timeout:.0f} s; "
                               f"see {log_file}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matchx-pusher", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="the system directory of `matchctl up`")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--topology", type=Path, help="without --dir: the topology file")
    src.add_argument("--topology-env", metavar="VAR", help="without --dir: a variable holding the topology JSON")
    src.add_argument("--cluster-dir", type=Path, help="without --dir: a `matchctl cluster up` directory")
    parser.add_argument("--auth-url", help="without --dir: the auth service, e.g. http://auth:8081")
    parser.add_argument("--password-file", type=Path, help="without --dir: the service user's password")
    parser.add_argument("--state", type=Path, default=Path("pusher.json"), help="without --dir: the cursor file")
    parser.add_argument("--egress-host", help="the address the members answer to (containers: this one's)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help=f"seconds between polls of the auth service (default {DEFAULT_INTERVAL_S})")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s pusher %(threadName)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll would drown the pushes
    if args.interval <= 0:
        print("matchx pusher: --interval must be positive", file=sys.stderr)
        return 2
    from pyengine.node.localcluster import ClusterError
    from pyengine.node.settings import ConfigError
    from pyengine.node.topology import SystemStateError, Topology

    try:
        if args.dir is not None:
            pusher = Pusher.for_system(args.dir.resolve(), args.interval)
        else:
            if not (args.auth_url and args.password_file and (args.topology or args.topology_env or args.cluster_dir)):
                parser.error("give --dir, or --topology/--topology-env/--cluster-dir with --auth-url and "
                             "--password-file")
            if args.cluster_dir is not None:
                partitions = cluster_partition(args.cluster_dir)
            else:
                partitions = endpoints_of(Topology.load(args.topology) if args.topology is not None
                                          else Topology.from_dict(json.loads(os.environ[args.topology_env])))
            pusher = Pusher.for_service(partitions, args.auth_url, args.password_file, args.state,
                                        args.egress_host, args.interval)
    except (ConfigError, SystemStateError, ClusterError, OSError, KeyError, ValueError) as exc:
        print(f"matchx pusher: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: pusher.stop.set())
    pusher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
