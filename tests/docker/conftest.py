"""Fixtures for the docker tests: cluster members in containers, the client on the host.

Each test gets its own user-defined bridge network (internal: no route off the host) with a
/24 chosen per run, three member containers with fixed addresses on it and one named volume
each at ``/data``. The members use IP addresses as their Aeron hosts, so no name is ever
resolved (docs/docker.md: Docker's DNS stalls Aeron) and the endpoints a follower sends in a
REDIRECT are reachable from the host. The client runs in the pytest process and receives
egress on the network's gateway address (the host side of the bridge).

Every container, network and volume carries the label ``org.matchx.test.run=<run id>`` and a
name ending in the run id: the per-test fixture removes its own, the session fixture removes
whatever is left with this run's label (also after failures), and at start it removes what
an earlier run on this host left behind when that pytest process no longer exists.
"""

from __future__ import annotations

import io
import ipaddress
import itertools
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Before testcontainers is imported: its Ryuk reaper image would be pulled from Docker Hub,
# and no registry is reachable here. Cleanup is ours (labels + finalizers), not Ryuk's.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from pyengine.node.localcluster import wait_for  # noqa: E402
from pyengine.node.settings import ClusterLayout, Timeouts  # noqa: E402
from tests.prereq import missing  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
JAR = REPO / "java-cluster" / "target" / "matchx-cluster.jar"
IMAGE = os.environ.get("MATCHX_IMAGE", "matchx/matchx:latest")
RUN_ID = f"{os.getpid():x}{secrets.token_hex(2)}"
LABEL_RUN = "org.matchx.test.run"
LABEL_OWNER = "org.matchx.test.owner"  # <hostname>:<pid> of the pytest process
OWNER = f"{socket.gethostname()}:{os.getpid()}"
LABELS = {LABEL_RUN: RUN_ID, LABEL_OWNER: OWNER}

# The member command: write the layout handed over in the environment, then run the member
# with today's entry point. tini (-g) is PID 1 and forwards signals to the whole group.
MEMBER_ENTRYPOINT = [
    "/usr/bin/tini", "-g", "--", "sh", "-c",
    'printf "%s" "$MATCHX_LAYOUT" > /data/cluster.json && '
    'exec python3 -m pyengine.node.member --layout /data/cluster.json --member-id "$MATCHX_MEMBER_ID"',
]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---- session: engine, jar, images -------------------------------------------------------------

def _engine_reachable() -> str | None:
    """None when `docker info` answers, else why not."""
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if r.returncode == 0 else _tail(r.stderr or r.stdout, 5)


DOCKERD_PIDFILE = Path("/var/run/matchx-dockerd.pid")  # written by docker/ensure-docker.sh


def _ensure_engine() -> int | None:
    """Starts the engine with docker/ensure-docker.sh; skips the docker tests only when that is
    impossible (not root and no engine reachable, or the script fails). Returns the pid of the
    dockerd this started (the session stops it at the end), None when an engine already ran."""
    if os.geteuid() != 0:
        why = _engine_reachable()
        if why is not None:
            missing(f"a Docker engine: not root (docker/ensure-docker.sh needs root) "
                    f"and no engine answers `docker info`: {why}")
        return None
    already_running = _engine_reachable() is None
    try:
        r = subprocess.run([str(REPO / "docker" / "ensure-docker.sh")], capture_output=True, text=True,
                           timeout=900)
    except subprocess.TimeoutExpired:
        missing("a Docker engine: docker/ensure-docker.sh took more than 15 min")
    if r.returncode != 0:
        missing(f"a Docker engine: docker/ensure-docker.sh exited {r.returncode}: "
                f"{' | '.join(_tail(r.stdout + r.stderr, 5).splitlines())}")
    if already_running:
        return None
    try:
        return int(DOCKERD_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop_dockerd(pid: int, timeout: float = 60.0) -> None:
    """Stops the dockerd this session started (SIGTERM: it stops its containerd and its
    containers), then SIGKILL if it is still there after ``timeout``."""
    comm = Path(f"/proc/{pid}/comm")
    try:
        if comm.read_text().strip() != "dockerd":
            return  # gone, and the pid reused
        os.kill(pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if comm.read_text().strip() != "dockerd" or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.2)
    else:
        print(f"[docker tests] dockerd (pid {pid}) did not stop within {timeout:.0f} s; SIGKILL")
        os.kill(pid, signal.SIGKILL)
    DOCKERD_PIDFILE.unlink(missing_ok=True)
    print(f"[docker tests] stopped the dockerd this run started (pid {pid})")


def _run_logged(cmd: list[str], what: str, env: dict | None = None, timeout: float = 1800) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        pytest.fail(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{_tail(r.stdout + r.stderr, 40)}",
                    pytrace=False)
    return time.monotonic() - t0


def _remove_labelled(client, selector: dict[str, str] | None = None,
                     keep: Callable[[dict], bool] = lambda labels: False) -> list[str]:
    """Removes containers, then networks, then volumes carrying our labels (``selector`` narrows
    to one label value); ``keep(labels)`` spares some. Returns what was removed."""
    import docker.errors

    filters = [f"{k}={v}" for k, v in (selector or {}).items()] or [LABEL_RUN]
    removed = []
    for kind in ("containers", "networks", "volumes"):
        coll = getattr(client, kind)
        items = coll.list(all=True, filters={"label": filters}) if kind == "containers" else \
            coll.list(filters={"label": filters})
        for item in items:
            labels = (item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels") or {})
            if LABEL_RUN not in labels or keep(labels):
                continue
            try:
                if kind == "containers":
                    item.remove(force=True, v=True)
                elif kind == "volumes":
                    item.remove(force=True)
                else:
                    item.remove()
                removed.append(f"{kind[:-1]} {item.name}")
            except docker.errors.NotFound:
                pass
    return removed


def _from_dead_run(labels: dict) -> bool:
    host, _, pid = labels.get(LABEL_OWNER, "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not Path(f"/proc/{pid}").exists()


@pytest.fixture(scope="session")
def docker_client():
    """The engine (started if needed), the jar, and the images built by docker/build-images.sh
    (2-6 s when nothing changed). Yields a docker SDK client; removes every labelled leftover
    of this run at the end, and stops the engine when this session started it."""
    started_dockerd = _ensure_engine()
    from testcontainers.core.config import testcontainers_config

    import docker

    testcontainers_config.ryuk_disabled = True
    if not JAR.is_file():
        took = _run_logged(["mvn", "-q", "-B", "-DskipTests", "package"], "building the jar")
        print(f"[docker tests] built {JAR.name} in {took:.1f}s")
    env = dict(os.environ, MATCHX_SKIP_ENSURE="1") if os.geteuid() != 0 else None
    took = _run_logged([str(REPO / "docker" / "build-images.sh"), "--no-smoke"], "docker/build-images.sh", env)
    print(f"[docker tests] docker/build-images.sh took {took:.1f}s")
    client = docker.from_env(timeout=120)
    stale = _remove_labelled(client, keep=lambda labels: not _from_dead_run(labels))
    if stale:
        print(f"[docker tests] removed leftovers of dead runs: {', '.join(stale)}")
    try:
        yield client
    finally:
        left = _remove_labelled(client, {LABEL_RUN: RUN_ID})
        if left:
            print(f"[docker tests] removed at session end: {', '.join(left)}")
        client.close()
        if started_dockerd is not None:
            _stop_dockerd(started_dockerd)


# ---- one cluster ---------------------------------------------------------------------------

def _pick_subnet(client) -> ipaddress.IPv4Network:
    used = []
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Subnet") and ":" not in cfg["Subnet"]:
                used.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.split()
    for word in routes:
        if "/" in word and word[0].isdigit():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                pass
    rng = random.Random()
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{rng.randint(200, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError("no free /24 for a test network")


class DockerCluster:
    """One partition of three members, each in its own container, on its own network.

    Shaped like pyengine.node.localcluster.LocalCluster: start, find the leader, kill, cut off,
    wait with deadlines. Member state is read from the containers (status.json, hash.json)
    with the archive API (no process is started inside the container)."""

    def __init__(self, client, name: str, members: int = 3, timeouts: Timeouts | None = None) -> None:
        from docker.types import IPAMConfig, IPAMPool

        self.client = client
        self.name = name
        self.containers: dict[int, object] = {}  # member id -> testcontainers DockerContainer
        self.volumes = []
        self.network = None
        self._blocked: list[list[str]] = []  # iptables rules in force (block_peers)
        for attempt in range(5):
            subnet = _pick_subnet(client)
            hosts = list(subnet.hosts())
            try:
                self.network = client.networks.create(
                    f"{name}-net", driver="bridge", internal=True, labels=LABELS,
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=str(hosts[0]),
                                                           iprange=str(ipaddress.ip_network(
                                                               f"{hosts[127]}/25", strict=False)))]),
                )
                break
            except Exception as exc:  # noqa: BLE001 - a concurrent run took the subnet: pick again
                if attempt == 4 or "overlap" not in str(exc).lower():
                    raise
        self.subnet = subnet
        self.gateway = str(hosts[0])  # the host's address on the bridge: the client's egress host
        self.ips = [str(hosts[9 + i]) for i in range(members)]  # .10, .11, .12
        self.layout = ClusterLayout(base_dir=Path("/data"), members=members, hosts=tuple(self.ips),
                                    timeouts=timeouts or Timeouts())

    # ---- members ---------------------------------------------------------------------------

    def container_name(self, member_id: int) -> str:
        return f"{self.name}-m{member_id}"

    def start(self) -> None:
        for m in range(self.layout.members):
            self.start_member(m)

    def start_member(self, member_id: int):
        """Creates and starts the member's container, or restarts it when it exists."""
        if member_id in self.containers:
            self.docker(member_id).start()
            return self.containers[member_id]
        from docker.types import EndpointConfig
        from testcontainers.core.container import DockerContainer

        volume = self.client.volumes.create(name=f"{self.container_name(member_id)}-data", labels=LABELS)
        self.volumes.append(volume)
        net = self.network.name
        container = (
            DockerContainer(IMAGE)
            .with_name(self.container_name(member_id))
            .with_env("MATCHX_LAYOUT", self.layout.to_json())
            .with_env("MATCHX_MEMBER_ID", str(member_id))
            .with_volume_mapping(volume.name, "/data", mode="rw")
            .with_kwargs(
                entrypoint=MEMBER_ENTRYPOINT,
                hostname=f"member-{member_id}",
                network=net,
                networking_config={net: EndpointConfig(self.client.api.api_version,
                                                       ipv4_address=self.ips[member_id])},
                shm_size="1g",
                dns_opt=["timeout:1", "attempts:1"],
                labels=LABELS,
            )
        )
        self.containers[member_id] = container
        container.start()
        return container

    def docker(self, member_id: int):
        """The docker SDK container object of a member."""
        return self.containers[member_id].get_wrapped_container()

    def is_running(self, member_id: int) -> bool:
        c = self.docker(member_id)
        c.reload()
        return c.status == "running"

    def kill(self, member_id: int) -> None:
        """SIGKILL of the whole container (tini and the member)."""
        self.docker(member_id).kill()
        wait_for(lambda: not self.is_running(member_id), 10, f"member {member_id} to stop", 0.1)

    def disconnect(self, member_id: int) -> None:
        """Cuts the member off the network: its container keeps running with only loopback."""
        self.network.disconnect(self.docker(member_id), force=True)

    def reconnect(self, member_id: int) -> None:
        self.network.connect(self.docker(member_id), ipv4_address=self.ips[member_id])

    def _peer_rules(self, member_id: int) -> list[list[str]]:
        me = self.ips[member_id]
        return [["-s", a, "-d", b, "-j", "DROP"] for peer in self.ips if peer != me
                for a, b in ((me, peer), (peer, me))]

    def block_peers(self, member_id: int) -> None:
        """Drops all traffic between the member and the other members (host iptables, chain
        DOCKER-USER; bridged traffic passes it when bridge-nf-call-iptables=1). The member keeps
        its network: the host and its clients still reach it."""
        knob = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if not knob.is_file() or knob.read_text().strip() != "1":
            missing("net.bridge.bridge-nf-call-iptables=1 (bridged traffic bypasses iptables here, so the "
                    "split-brain test cannot cut members apart)")
        for rule in self._peer_rules(member_id):
            subprocess.run(["iptables", "-I", "DOCKER-USER", *rule], check=True, capture_output=True, timeout=30)
            self._blocked.append(rule)

    def unblock_peers(self, member_id: int) -> None:
        for rule in self._peer_rules(member_id):
            if rule in self._blocked:
                subprocess.run(["iptables", "-D", "DOCKER-USER", *rule], capture_output=True, timeout=30)
                self._blocked.remove(rule)

    def remove(self) -> None:
        import docker.errors

        for rule in list(self._blocked):
            subprocess.run(["iptables", "-D", "DOCKER-USER", *rule], capture_output=True, timeout=30)
        self._blocked.clear()

        for container in self.containers.values():
            try:
                container.stop(force=True, delete_volume=True)
            except docker.errors.NotFound:
                pass
        for volume in self.volumes:
            try:
                volume.remove(force=True)
            except docker.errors.NotFound:
                pass
        if self.network is not None:
            try:
                self.network.remove()
            except docker.errors.NotFound:
                pass

    # ---- observing -------------------------------------------------------------------------

    def read_file(self, member_id: int, path: str) -> bytes | None:
        """A file of the container (also of a stopped one), or None when it does not exist."""
        import docker.errors

        try:
            stream, _ = self.docker(member_id).get_archive(path)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            f = tar.extractfile(member) if member is not None else None
            return f.read() if f is not None else None

    def _json(self, member_id: int, name: str) -> dict | None:
        blob = self.read_file(member_id, f"{self.layout.member_dir(member_id)}/{name}")
        try:
            return json.loads(blob) if blob else None
        except ValueError:
            return None

    def status(self, member_id: int) -> dict:
        """The member's status.json (role, leader, term, log position) while it runs."""
        if not self.is_running(member_id):
            return {"member_id": member_id, "role": "down"}
        return self._json(member_id, "status.json") or {"member_id": member_id, "role": "starting"}

    def member_hash(self, member_id: int) -> dict | None:
        return self._json(member_id, "hash.json")

    def leaders(self, among=None) -> list[int]:
        ids = range(self.layout.members) if among is None else among
        return [m for m in ids if self.status(m).get("role") == "leader"]

    def await_leader(self, timeout: float = 60.0, exclude: int | None = None) -> int:
        among = [m for m in range(self.layout.members) if m != exclude]

        def one():
            found = self.leaders(among)
            return found[0] + 1 if len(found) == 1 else None  # +1: member 0 is falsy

        return wait_for(one, timeout, f"a leader among members {among}", interval=0.2) - 1

    def await_role(self, member_id: int, role: str, timeout: float = 60.0) -> dict:
        return wait_for(lambda: (s := self.status(member_id)).get("role") == role and s, timeout,
                        f"member {member_id} to be {role}", interval=0.2)

    def watch(self, interval: float = 0.3) -> StatusWatch:
        """Starts sampling every member's status.json in a thread (see StatusWatch)."""
        return StatusWatch(self, interval).start()

    def ingress_endpoints(self, only: tuple[int, ...] | None = None) -> str:
        return self.layout.ingress_endpoints(only)

    def hashes_at_one_position(self, client, members, timeout: float = 60.0) -> tuple[dict, list[dict]]:
        """Has every member write its state hash at one log position (an admin command in the
        log) and returns the leader's answer and each member's hash.json at that position."""
        info = client.admin({"op": "state_hash"}, timeout=30).events

        def reported():
            hs = [self.member_hash(m) for m in members]
            return hs if all(h and h["position"] == info["position"] for h in hs) else None

        return info, wait_for(reported, timeout, f"members {list(members)} to report the state hash", 0.25)

    def logs(self, member_id: int, tail: int = 60) -> str:
        try:
            return self.docker(member_id).logs(tail=tail).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"<no logs: {exc}>"


class StatusWatch:
    """Samples (monotonic time, member, status.json) of every member until stopped."""

    def __init__(self, cluster: DockerCluster, interval: float) -> None:
        self.cluster = cluster
        self.interval = interval
        self.samples: list[tuple[float, int, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)

    def start(self) -> StatusWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for m in range(self.cluster.layout.members):
                try:
                    status = self.cluster.status(m)
                    if "updated_ms" in status:  # how old the file was when read
                        status["age_ms"] = int(time.time() * 1000) - status["updated_ms"]
                    self.samples.append((time.monotonic(), m, status))
                except Exception as exc:  # noqa: BLE001 - a sample may fail while a container restarts
                    self.samples.append((time.monotonic(), m, {"error": str(exc)}))

    def stop(self) -> StatusWatch:
        self._stop.set()
        self._thread.join(10)
        return self

    def leaders_per_term(self) -> dict[int, set[int]]:
        """leadership term -> members that reported themselves leader in it."""
        terms: dict[int, set[int]] = {}
        for _, m, s in self.samples:
            if s.get("role") == "leader":
                terms.setdefault(s.get("leadership_term_id", -1), set()).add(m)
        return terms

    def timeline(self, t0: float, member: int | None = None) -> str:
        return "\n".join(
            f"{t - t0:7.2f}s m{m} {s.get('role')} term={s.get('leadership_term_id')} "
            f"leader={s.get('leader_member_id')} pos={s.get('log_position')} age={s.get('age_ms')}ms"
            for t, m, s in self.samples if member is None or m == member)


_cluster_seq = itertools.count()


@pytest.fixture
def docker_cluster(docker_client, request):
    """Factory: ``docker_cluster()`` -> a started DockerCluster; removed after the test (on
    failure after printing each member's last log lines)."""
    made: list[DockerCluster] = []

    def factory(**kwargs) -> DockerCluster:
        cluster = DockerCluster(docker_client, f"matchx-test-{RUN_ID}-{next(_cluster_seq)}", **kwargs)
        made.append(cluster)
        cluster.start()
        return cluster

    yield factory
    failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
    for cluster in made:
        if failed:
            for m in cluster.containers:
                print(f"---- {cluster.container_name(m)} (last lines) ----\n{cluster.logs(m)}")
        cluster.remove()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def host_client():
    """Factory for MatchClient on the host (its JVM runs in this process); closes them all."""
    from pyengine.client import MatchClient

    clients: list[MatchClient] = []

    def factory(endpoints: str, egress_host: str, **kwargs) -> MatchClient:
        client = MatchClient(endpoints, egress_host=egress_host, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()
        assert not Path(client.aeron_dir).exists(), f"client left {client.aeron_dir} behind"
