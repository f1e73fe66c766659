"""matchctl: run and inspect a local matchx system.

    matchctl cluster up [--members 3] [--dir var/cluster] [--port-base 20000] [--auth-keys-file FILE]
                        [--auth-url URL --service-password-file FILE]   # + the revocation pusher
    matchctl cluster status [--dir var/cluster] [--json]
    matchctl cluster hash [--dir var/cluster]        # prove the members agree
    matchctl cluster snapshot [--dir var/cluster]    # snapshot every member now
    matchctl cluster down [--dir var/cluster]
    matchctl up TOPOLOGY [--dir var/system]           # coordinator + workers + partitions
    matchctl up --dir var/system                      # restart it as it was last changed
    matchctl partition add|remove|move P ...          # while it runs (docs/partitions.md)
    matchctl worker add W [--dir var/system]
    matchctl status [--dir var/system] [--json]
    matchctl down [--dir var/system]
    matchctl replay [FILE]                            # JSON-lines commands in, events out
    matchctl demo                                     # the scripted session of `make demo`
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pyengine.node.localcluster import ClusterError, LocalCluster, wait_for
from pyengine.node.settings import (
    DEFAULT_PORT_BASE,
    DEFAULT_SNAPSHOT_INTERVAL_S,
    DEFAULT_SNAPSHOT_LOG_BYTES,
    MEMBER_THREADING,
    ClusterLayout,
    ConfigError,
)
from pyengine.node.topology import DEFAULT_SYSTEM_DIR, SystemStateError

DEFAULT_DIR = Path("var/cluster")


def _print_status(cluster: LocalCluster, as_json: bool) -> None:
    rows = cluster.status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"cluster {cluster.layout.cluster_id} in {cluster.dir}  ingress {cluster.ingress_endpoints()}")
    print(f"{'member':>6} {'pid':>8} {'role':<10} {'leader':>6} {'log position':>14} {'snapshot at':>12} "
          f"{'size, build + write':>21}  state hash")
    for s in rows:
        h = s.get("state_hash") or {}
        hash_text = f"{h['engine_hash'][:16]} @{h['position']}" if h else "-"
        snap = s.get("last_snapshot_position", -1)
        print(f"{s['member_id']:>6} {s.get('pid', '-'):>8} {s['role']:<10} {s.get('leader_member_id', '-'):>6} "
              f"{s.get('log_position', '-'):>14} {snap if snap is not None and snap >= 0 else '-':>12} "
              f"{_snapshot_cost(s):>21}  {hash_text}")


def _snapshot_cost(status: dict) -> str:
    """The member's last snapshot: its size and how long its service took to build and write it
    (a member notices a dead leader only after its snapshot is done; docs/operations.md)."""
    size = status.get("last_snapshot_bytes", -1)
    if size is None or size < 0:
        return "-"
    return f"{size / 1e6:.1f} MB, {status.get('last_snapshot_build_ms')} + {status.get('last_snapshot_write_ms')} ms"


def cmd_cluster_up(args) -> int:
    keys_file = str(args.auth_keys_file.resolve()) if args.auth_keys_file is not None else None
    if (args.auth_url is None) != (args.service_password_file is None) or (args.auth_url and keys_file is None):
        print("matchctl: --auth-url and --service-password-file go together, and with --auth-keys-file",
              file=sys.stderr)
        return 2
    if args.service_password_file is not None and not args.service_password_file.is_file():
        print(f"matchctl: no service password file {args.service_password_file}", file=sys.stderr)
        return 2
    layout = ClusterLayout(base_dir=args.dir.resolve(), members=args.members, port_base=args.port_base,
                           snapshot_interval_s=args.snapshot_interval,
                           snapshot_log_bytes=args.snapshot_log_mib << 20, auth_keys_file=keys_file,
                           member_threading=args.threading, idle_max_park_us=args.idle_max_park_us)
    layout.auth_keys()  # a bad keys file is reported here, before any member starts
    cluster = LocalCluster(layout)
    cluster.start(detach=True)
    print(f"starting {args.members} members in {args.dir} ...", flush=True)
    try:
        leader = cluster.await_leader(args.timeout)
    except ClusterError:
        print("no leader elected in time; member logs are in", args.dir, file=sys.stderr)
        cluster.stop()
        return 1
    print(f"member {leader} is leader")
    if args.auth_url is not None:
        try:
            pid = _start_cluster_pusher(cluster.dir, args.auth_url, args.service_password_file.resolve(),
                                        max(60.0, args.timeout))
        except RuntimeError as exc:
            print(f"matchctl: {exc}; stopping the members", file=sys.stderr)
            cluster.stop()
            return 1
        print(f"revocation pusher pid {pid} follows {args.auth_url} (log: {cluster.dir / 'pusher.log'})")
    _print_status(cluster, False)
    return 0


def _start_cluster_pusher(cluster_dir: Path, auth_url: str, password_file: Path, timeout: float) -> int:
    """The revocation pusher for a `matchctl cluster up` partition, in step with it when this
    returns; its pid in DIR/pusher.pid for `matchctl cluster down`."""
    from pyengine.ops.pusher import cluster_partition, spawn
    from pyengine.ops.system import REPO_ROOT, _env

    pid_file = cluster_dir / "pusher.pid"
    cursor = cluster_dir / "pusher.json"
    args = ["--cluster-dir", str(cluster_dir), "--auth-url", auth_url, "--password-file", str(password_file),
            "--state", str(cursor)]
    return spawn(args, cluster_dir / "pusher.log", cursor, set(cluster_partition(cluster_dir)), REPO_ROOT, _env(),
                 timeout, lambda pid: pid_file.write_text(json.dumps({"pid": pid}) + "\n"))


def _stop_cluster_pusher(cluster_dir: Path) -> None:
    """Stops the pusher `matchctl cluster up --auth-url` started, if any, and cleans its /dev/shm."""
    import shutil

    from pyengine.client.match_client import client_aeron_dirs
    from pyengine.node.procs import pid_alive
    from pyengine.ops.system import _stop_pid

    pid_file = cluster_dir / "pusher.pid"
    try:
        pid = int(json.loads(pid_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    _stop_pid(pid, "pyengine.ops.pusher", 10.0)
    if not pid_alive(pid):  # it ends with os._exit once its JVM runs: its client dirs stay
        for d in client_aeron_dirs(pid):
            shutil.rmtree(d, ignore_errors=True)
        pid_file.unlink()


def cmd_cluster_status(args) -> int:
    _print_status(LocalCluster.open(args.dir), args.json)
    return 0


def cmd_cluster_down(args) -> int:
    cluster = LocalCluster.open(args.dir)
    _stop_cluster_pusher(cluster.dir)
    cluster.stop()
    print(f"stopped the members of {args.dir}")
    return 0


def cmd_cluster_hash(args) -> int:
    from pyengine.client.match_client import MatchClient

    cluster = LocalCluster.open(args.dir)
    with MatchClient(cluster.ingress_endpoints(), credentials=_token(args)) as client:
        if not client.wait_connected(args.timeout):
            print(f"could not connect: {client.last_error}", file=sys.stderr)
            return 1
        reply = client.admin({"op": "state_hash"}, timeout=args.timeout).events
    position = reply["position"]
    running = [m for m in range(cluster.layout.members) if cluster.is_running(m)]

    def all_reported():
        hashes = [cluster.member_hash(m) for m in running]
        return hashes if all(h and h["position"] == position for h in hashes) else None

    hashes = wait_for(all_reported, args.timeout, "every running member to report the hash")
    agree = len({(h["engine_hash"], h["sequence_hash"]) for h in hashes}) == 1
    for h in hashes:
        print(f"member {h['member_id']}: position {h['position']} applied {h['applied']} "
              f"engine {h['engine_hash'][:24]} sequence {h['sequence_hash']}")
    print("members agree" if agree else "MEMBERS DIFFER")
    return 0 if agree else 1


def _token(args) -> bytes:
    """The access token for a control connection: --token-file, else $MATCHX_TOKEN (tokens on)."""
    if getattr(args, "token_file", None) is not None:
        return args.token_file.read_text().strip().encode()
    return os.environ.get("MATCHX_TOKEN", "").strip().encode()


def cmd_cluster_describe(args) -> int:
    from pyengine.ops import members

    print(members.describe(args.dir, args.partition))
    return 0


def cmd_errors(args) -> int:
    from pyengine.ops import members

    print(members.errors(args.dir, args.partition, args.member))
    return 0


def cmd_member(args) -> int:
    from pyengine.ops import members

    cluster = members.local_cluster(args.dir, args.partition)
    if args.action in ("stop", "restart"):
        members.stop_member(cluster, args.member, args.timeout)
        print(f"member {args.member} of partition {args.partition} stopped")
    if args.action in ("start", "restart"):
        s = members.start_member(cluster, args.member, args.timeout)
        print(f"member {args.member} of partition {args.partition} is {s['role']} (pid {s['pid']}, "
              f"leader {s['leader_member_id']})")
    return 0


def cmd_cluster_handover(args) -> int:
    from pyengine.ops import members

    cluster = LocalCluster.open(args.dir)
    old, new, took = members.handover(cluster, args.timeout)
    print(f"member {old} stopped leading; member {new} leads (seen {took * 1000:.0f} ms after the stop); "
          f"member {old} restarted as a follower")
    return 0


def cmd_capacity(args) -> int:
    from dataclasses import asdict

    from pyengine.ops import capacity

    try:
        constants = capacity.Constants.load(args.constants)
        p = capacity.plan(args.orders_per_s, args.symbols, args.resting_orders, api=args.api, headroom=args.headroom,
                          cores_per_worker=args.cores_per_worker, recovery_target_s=args.recovery_target_s,
                          constants=constants)
    except capacity.CapacityError as exc:
        print(f"matchctl capacity: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"plan": asdict(p), "constants": capacity.constants_doc(constants)}, indent=2))
    else:
        print(capacity.describe(p, args.orders_per_s, args.symbols, args.resting_orders, args.api))
        print("  (constants measured by the benches on a shared 2-core machine: docs/capacity.md)")
    return 0


def cmd_cluster_rolling_restart(args) -> int:
    from pyengine.ops import members

    for line in members.rolling_restart(LocalCluster.open(args.dir), args.timeout):
        print(line, flush=True)
    return 0


def cmd_cluster_snapshot(args) -> int:
    cluster = LocalCluster.open(args.dir)
    taken = cluster.request_snapshot(args.timeout)
    for member, position in sorted(taken.items()):
        print(f"member {member}: snapshot at log position {position}")
    return 0


def cmd_up(args) -> int:
    from pyengine.node.topology import Topology
    from pyengine.ops.system import System, describe

    topology = args.topology_file or args.topology  # None: restart the system of --dir as it is
    if topology is not None:
        Topology.load(topology)  # a bad file is reported before anything is said or started
    print(f"starting the system of {topology or args.dir / 'topology.json'} in {args.dir} ...", flush=True)
    system = System.up(topology, args.dir, timeout=args.timeout)
    print(describe(system.status()))
    print(f"coordinator: {system.coordinator_url}")
    if args.monitoring:
        from pyengine.ops.monitoring import MonitoringError

        try:
            print(f"prometheus: {system.start_prometheus(args.prometheus_port)} (alert rules loaded; "
                  f"Grafana dashboard: pyengine/ops/monitoring/dashboard.json)")
        except MonitoringError as exc:
            print(f"matchctl: {exc}; the system runs without monitoring (`matchctl down` stops it)", file=sys.stderr)
            return 1
    return 0


def cmd_status(args) -> int:
    from pyengine.ops.system import System, describe

    status = System(args.dir).status()
    print(json.dumps(status, indent=2) if args.json else describe(status))
    return 0


def cmd_down(args) -> int:
    from pyengine.ops.system import System

    System(args.dir).down()
    print(f"stopped the system of {args.dir}")
    return 0


def cmd_replay(args) -> int:
    from pyengine.ops import replay

    return replay.main([str(args.file)] if args.file else [])


def cmd_demo(args) -> int:
    from pyengine.ops import demo

    return demo.main([])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matchctl", description="Run and inspect a local matchx system.")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="one partition's members on this machine")
    csub = cluster.add_subparsers(dest="action", required=True)
    up = csub.add_parser("up", help="start the members and wait for a leader")
    up.add_argument("--members", type=int, default=3)
    up.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    up.add_argument("--timeout", type=float, default=60.0)
    up.add_argument("--snapshot-interval", type=int, default=DEFAULT_SNAPSHOT_INTERVAL_S, metavar="SECONDS",
                    help="snapshot at least every SECONDS while the log grows (default %(default)s; 0: no time "
                         "trigger); see docs/operations.md")
    up.add_argument("--snapshot-log-mib", type=int, default=DEFAULT_SNAPSHOT_LOG_BYTES >> 20, metavar="MIB",
                    help="snapshot whenever the log has grown MIB since the last one (default %(default)s; 0: no "
                         "size trigger): bounds the log a restarted member replays")
    up.add_argument("--auth-keys-file", type=Path, metavar="FILE",
                    help="turn tokens on: the auth service's public keys (GET /v1/keys saved to FILE); every "
                         "session must then present an access token (docs/auth.md)")
    up.add_argument("--auth-url", metavar="URL",
                    help="with --auth-keys-file: also run the revocation pusher, following this auth service's "
                         "revocations and key changes into the partition's log (stopped by `cluster down`)")
    up.add_argument("--service-password-file", type=Path, metavar="FILE",
                    help="with --auth-url: the password of the service user `matchctl` (admin, read), as "
                         "`python -m coordinator.auth.setup` creates it")
    up.add_argument("--threading", choices=MEMBER_THREADING, default=ClusterLayout.member_threading,
                    help="agent threads per member: shared (4) or compact (the archive's thread runs the driver: "
                         "3; experimental, it fails failover tests); default %(default)s; docs/operations.md, "
                         "'Latency settings'")
    up.add_argument("--idle-max-park-us", type=int, default=ClusterLayout.idle_max_park_us, metavar="US",
                    help="longest park of an idle member agent (default %(default)s): shorter answers sooner "
                         "and costs idle CPU; docs/operations.md, 'Latency settings'")
    up.set_defaults(func=cmd_cluster_up)
    status = csub.add_parser("status", help="role, leader, log position and state hash of each member")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_cluster_status)
    down = csub.add_parser("down", help="stop every member (SIGTERM, then SIGKILL) and clean /dev/shm")
    down.set_defaults(func=cmd_cluster_down)
    hash_ = csub.add_parser("hash", help="ask for the state hash at one log position; compare members")
    hash_.add_argument("--timeout", type=float, default=30.0)
    hash_.add_argument("--token-file", type=Path, metavar="FILE",
                       help="access token (read permission) when tokens are on; default $MATCHX_TOKEN")
    hash_.set_defaults(func=cmd_cluster_hash)
    snap = csub.add_parser("snapshot", help="take a snapshot on every member now (needs access to the leader's files)")
    snap.add_argument("--timeout", type=float, default=60.0)
    snap.set_defaults(func=cmd_cluster_snapshot)
    describe_ = csub.add_parser("describe", help="members, leader, term, positions, snapshots, recording log "
                                "(Aeron's ClusterTool on each member's files; also a `matchctl up` directory)")
    describe_.add_argument("--partition", default=None, help="only this partition")
    describe_.set_defaults(func=cmd_cluster_describe)
    handover = csub.add_parser("handover", help="planned leader change: the leader ends its log and restarts "
                               "as a follower; the others elect at once (docs/operations.md)")
    handover.add_argument("--timeout", type=float, default=60.0)
    handover.set_defaults(func=cmd_cluster_handover)
    rolling = csub.add_parser("rolling-restart", help="restart every member one at a time: followers first, "
                              "then the leader by a handover")
    rolling.add_argument("--timeout", type=float, default=120.0)
    rolling.set_defaults(func=cmd_cluster_rolling_restart)
    for p in (up, status, down, hash_, snap, describe_, handover, rolling):
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"cluster directory (default {DEFAULT_DIR})")

    member = sub.add_parser("member", help="start, stop or restart one member of a `matchctl cluster` partition")
    member.add_argument("action", choices=("start", "stop", "restart"))
    member.add_argument("partition", help="the partition (a `matchctl cluster` directory's cluster id, 0 by default)")
    member.add_argument("member", type=int)
    member.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"cluster directory (default {DEFAULT_DIR})")
    member.add_argument("--timeout", type=float, default=60.0)
    member.set_defaults(func=cmd_member)
    cap = sub.add_parser("capacity", help="partitions, workers, cores and memory for a load (docs/capacity.md)")
    cap.add_argument("--orders-per-s", type=float, required=True)
    cap.add_argument("--symbols", type=int, required=True)
    cap.add_argument("--resting-orders", type=int, required=True)
    cap.add_argument("--api", choices=("bulk", "single"), default="bulk",
                     help="how clients send: bulk orders, or one command per order")
    cap.add_argument("--headroom", type=float, default=0.5, help="run each partition and core at this share of "
                     "its measured ceiling (default 0.5)")
    cap.add_argument("--cores-per-worker", type=int, default=8)
    cap.add_argument("--recovery-target-s", type=float, default=10.0)
    cap.add_argument("--constants", type=Path, default=None, help="JSON of re-measured constants (docs/capacity.md)")
    cap.add_argument("--json", action="store_true")
    cap.set_defaults(func=cmd_capacity)
    errs = sub.add_parser("errors", help="the members' Aeron error logs (consensus module, service container)")
    errs.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="a cluster or system directory")
    errs.add_argument("--partition", default=None)
    errs.add_argument("--member", type=int, default=None)
    errs.set_defaults(func=cmd_errors)

    sys_up = sub.add_parser("up", help="start a partitioned system from a topology file (docs/partitions.md)")
    sys_up.add_argument("topology", type=Path, nargs="?", default=None,
                        help="topology file; leave it out to restart the system of --dir as it was last changed")
    sys_up.add_argument("--topology", dest="topology_file", type=Path, default=None, help="the same as TOPOLOGY")
    sys_up.add_argument("--timeout", type=float, default=120.0)
    sys_up.add_argument("--monitoring", action="store_true",
                        help="also start Prometheus scraping every process, with the alert rules (docs/operations.md)")
    sys_up.add_argument("--prometheus-port", type=int, default=None, metavar="PORT", help="default 9090")
    sys_up.set_defaults(func=cmd_up)
    sys_status = sub.add_parser("status", help="coordinator, workers and every partition member's role")
    sys_status.add_argument("--json", action="store_true")
    sys_status.set_defaults(func=cmd_status)
    sys_down = sub.add_parser("down", help="stop what `matchctl up` started (SIGTERM, then SIGKILL), clean /dev/shm")
    sys_down.set_defaults(func=cmd_down)
    for p in (sys_up, sys_status, sys_down):
        p.add_argument("--dir", type=Path, default=DEFAULT_SYSTEM_DIR,
                       help=f"system directory (default {DEFAULT_SYSTEM_DIR})")
    from pyengine.ops import migrate

    migrate.add_parsers(sub, DEFAULT_SYSTEM_DIR)  # matchctl migrate / migrations (docs/migration.md)
    from pyengine.ops import elastic

    elastic.add_parsers(sub, DEFAULT_SYSTEM_DIR)  # matchctl partition add/remove/move, worker add

    replay = sub.add_parser("replay", help="apply JSON-lines commands to a fresh engine, print events")
    replay.add_argument("file", nargs="?", type=Path)
    replay.set_defaults(func=cmd_replay)
    demo = sub.add_parser("demo", help="local cluster, scripted trading session with a leader kill, clean stop")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ClusterError, ConfigError, SystemStateError) as exc:
        print(f"matchctl: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from pyengine.jvm import JvmSetupError

        if isinstance(exc, JvmSetupError):
            print(str(exc), file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
