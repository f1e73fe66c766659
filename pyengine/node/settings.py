"""Where a cluster's members live: ports, directories and Aeron settings, with checked defaults.

Port plan (documented in docs/operations.md): member ``i`` of a partition with port base ``B``
uses ``B + 10*i + k`` with k = 0 archive control, 1 client ingress, 2 consensus, 3 log,
4 catch-up, 5 metrics (HTTP ``/metrics``; a worker serves its on the metrics port of the first
member it hosts). The default base is 20000 and each partition takes 100 ports, so partition ``p``
defaults to ``20000 + 100*p``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT_BASE = 20000
PORTS_PER_MEMBER = 10
PORTS_PER_PARTITION = 100

# As MemberSettings.java; why these values: docs/operations.md, "Snapshots and recovery"
DEFAULT_SNAPSHOT_INTERVAL_S = 30
DEFAULT_SNAPSHOT_LOG_BYTES = 2 << 20
DEFAULT_SNAPSHOT_TERM_LENGTH = 16 << 20
DEFAULT_SNAPSHOT_MTU = 0

MEMBER_THREADING = ("shared", "compact")  # as MemberSettings.java
AGENT_WAKEUPS = ("commit", "all", "off")  # as AgentWakeups.java

ARCHIVE_OFFSET, INGRESS_OFFSET, CONSENSUS_OFFSET, LOG_OFFSET, CATCHUP_OFFSET, METRICS_OFFSET = range(6)


class ConfigError(ValueError):
    """A setting that cannot work; the message names it."""


def load_auth_keys(path: str | Path) -> dict[str, str]:
    """Reads an auth keys file: the auth service's ``GET /v1/keys`` answer (a list of
    ``{kid, x, ...}``) or its JWK set (``{"keys": [...]}``). Every entry must be a usable
    Ed25519 public key, and there must be at least one: an empty file would be a member that
    accepts no token at all, which is never what was meant."""
    from pyengine.service.tokens import AuthState

    where = f"auth keys file {path}"
    if not str(path).strip():
        raise ConfigError("auth_keys_file is empty: name the auth service's keys file (GET /v1/keys)")
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else doc
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"{where}: holds no key; expected a non-empty list of {{kid, x}} "
                          "(GET /v1/keys) or {\"keys\": [...]}")
    out: dict[str, str] = {}
    probe = AuthState()  # the same checks a partition's add_key runs
    for i, k in enumerate(keys):
        if not isinstance(k, dict) or not isinstance(k.get("kid"), str) or not isinstance(k.get("x"), str):
            raise ConfigError(f"{where}: key {i} is not an object with string kid and x")
        try:
            probe.apply({"type": "add_key", "kid": k["kid"], "x": k["x"]})
        except ValueError as exc:
            raise ConfigError(f"{where}: key {i} ({k['kid'][:40]!r}) is not a valid Ed25519 key: {exc}") from None
        out[k["kid"]] = k["x"]
    return out


@dataclass(frozen=True)
class Timeouts:
    """Raft timing. The defaults aim at sub-500 ms failover on loopback; see docs/operations.md."""

    heartbeat_interval_ms: int = 20
    # failover detection. Also a follower's deadline to join a new leader's log: 120 ms became
    # safe once SETUPs repeat every 10 ms (setup_repeat_ms); 100 ms gave multi-second outliers
    heartbeat_timeout_ms: int = 120
    # how long a candidate waits for votes: with one member dead the vote is never unanimous,
    # so every failover waits this long in full (20 vs 50 ms: bench/reports/failover_under_load.md)
    election_timeout_ms: int = 20
    # how often a member repeats its canvass/vote messages during an election (Aeron's default;
    # 20 ms measured no better here: bench/reports/failover_under_load.md)
    election_status_interval_ms: int = 100
    startup_canvass_timeout_ms: int = 1000
    session_timeout_ms: int = 10000
    # how often the media driver repeats a new publication's SETUP frame: a follower joins a new
    # leader's log only on a repeat (Aeron's fixed 100 ms otherwise; SetupRepeat.java)
    setup_repeat_ms: int = 10

    def check(self) -> None:
        if self.heartbeat_interval_ms <= 0 or self.heartbeat_timeout_ms <= 2 * self.heartbeat_interval_ms:
            raise ConfigError("heartbeat_timeout_ms must exceed twice heartbeat_interval_ms")
        if self.startup_canvass_timeout_ms < 2 * self.heartbeat_timeout_ms:
            raise ConfigError("startup_canvass_timeout_ms must be >= 2 x heartbeat_timeout_ms")
        if not 0 < self.election_timeout_ms < self.heartbeat_timeout_ms:
            raise ConfigError("election_timeout_ms must be in 1..heartbeat_timeout_ms - 1")
        if not 0 < self.election_status_interval_ms < self.heartbeat_timeout_ms:
            raise ConfigError("election_status_interval_ms must be in 1..heartbeat_timeout_ms - 1")
        if not 1 <= self.setup_repeat_ms <= 1000:
            raise ConfigError("setup_repeat_ms must be in 1..1000")


@dataclass(frozen=True)
class ClusterLayout:
    """One partition: its members' hosts, ports and base directory."""

    base_dir: Path
    members: int = 3
    cluster_id: int = 0
    port_base: int = DEFAULT_PORT_BASE
    hosts: tuple[str, ...] = ()
    term_length: int = 1 << 20
    idle_max_park_us: int = 1000
    idle_min_park_us: int = 1
    idle_yields: int = 10
    # a driver duty cycle with no more work than this (bytes sent and received: a lone heartbeat,
    # status message or timer tick) leaves its backoff at the long parks instead of starting it
    # again; 0 turns it off. io.matchx.cluster.LightWorkBackoff, docs/operations.md
    driver_light_work: int = 48
    # the service's longest park: the consensus module wakes it when the commit moves and during
    # elections (agent_wakeups), so it needs no 1 ms poll; with agent_wakeups="off" it is
    # idle_max_park_us
    service_max_park_us: int = 10_000
    # the consensus module's and the archive's longest park outside elections: the driver wakes
    # them after a cycle that moved a payload, the archive and the service wake the consensus
    # module; their timers (the leader's 20 ms heartbeat) run up to this late. At most
    # idle_max_park_us turns it off. io.matchx.cluster.AgentWakeups, docs/operations.md
    woken_max_park_us: int = 4_000
    # agent threads of a member process: "shared" (driver, archive, consensus module, service:
    # four) or "compact" (the archive's thread also runs the driver: three). What each trades:
    # docs/operations.md, "Latency settings"; measured in bench/reports/latency.md (no gain
    # there; compact is experimental: it failed failover tests). A worker's members share one
    # driver whatever this says.
    member_threading: str = "shared"
    # a member's agents wake the agent that handles what they produced instead of leaving it to
    # its park: "commit" (the consensus module wakes the service and the driver when the commit
    # moves, the service wakes the driver), "all" (also after any work of the consensus module and
    # the archive: costs idle CPU), "off". io.matchx.cluster.AgentWakeups, docs/operations.md
    agent_wakeups: str = "commit"
    # a snapshot every this many seconds while the log grows, and whenever the log has grown by
    # snapshot_log_bytes since the last one: a restarted member replays at most that much log
    # (0 turns a trigger off; docs/operations.md, "Snapshots and recovery")
    snapshot_interval_s: int = DEFAULT_SNAPSHOT_INTERVAL_S
    snapshot_log_bytes: int = DEFAULT_SNAPSHOT_LOG_BYTES
    # the service snapshot's IPC publication: its term length (the service runs up to half a term
    # ahead of the archive recording it) and frame size (0: the driver's); MemberSettings.java
    snapshot_term_length: int = DEFAULT_SNAPSHOT_TERM_LENGTH
    snapshot_mtu: int = DEFAULT_SNAPSHOT_MTU
    # JSON file with the auth service's public keys ({"keys": [{kid, x}, ...]} or a list);
    # when set, every session must present an access token. The same file on every member.
    auth_keys_file: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if not 1 <= self.members <= 9:
            raise ConfigError(f"members must be 1..9, not {self.members}")
        if not 1024 <= self.port_base <= 65535 - PORTS_PER_PARTITION:
            raise ConfigError(f"port_base {self.port_base} out of range")
        if self.hosts and len(self.hosts) != self.members:
            raise ConfigError(f"{len(self.hosts)} hosts given for {self.members} members")
        if self.term_length & (self.term_length - 1) or self.term_length < 65536:
            raise ConfigError("term_length must be a power of two >= 65536")
        if self.agent_wakeups not in AGENT_WAKEUPS:
            raise ConfigError(f"agent_wakeups must be one of {', '.join(AGENT_WAKEUPS)}, not {self.agent_wakeups!r}")
        if not 0 <= self.driver_light_work < 64:
            raise ConfigError("driver_light_work must be in 0..63 (64 bytes is a consensus message on an order's path)")
        if not self.idle_min_park_us <= self.service_max_park_us <= 1_000_000:
            raise ConfigError("service_max_park_us must be in idle_min_park_us..1000000")
        if not 1 <= self.woken_max_park_us <= 100_000:
            raise ConfigError("woken_max_park_us must be in 1..100000")
        if self.member_threading not in MEMBER_THREADING:
            raise ConfigError(f"member_threading must be one of {', '.join(MEMBER_THREADING)}, "
                              f"not {self.member_threading!r}")
        if self.snapshot_interval_s < 0 or self.snapshot_log_bytes < 0:
            raise ConfigError("snapshot_interval_s and snapshot_log_bytes must be >= 0 (0 = that trigger off)")
        self.timeouts.check()

    def auth_keys(self) -> dict[str, str] | None:
        """The bootstrap keys {kid: x}, or None when tokens are off. A member calls this before
        it starts anything: a keys file that is missing, unreadable or holds no valid key is a
        ConfigError (the member refuses to start) -- never a member that runs open."""
        if self.auth_keys_file is None:
            return None
        return load_auth_keys(self.auth_keys_file)

    def host(self, member_id: int) -> str:
        return self.hosts[member_id] if self.hosts else DEFAULT_HOST

    def port(self, member_id: int, offset: int) -> int:
        return self.port_base + PORTS_PER_MEMBER * member_id + offset

    def metrics_port(self, member_id: int) -> int:
        return self.port(member_id, METRICS_OFFSET)

    def cluster_members(self) -> str:
        """Aeron's member string: id,ingress,consensus,log,catchup,archive|..."""
        parts = []
        for i in range(self.members):
            h = self.host(i)
            eps = [f"{h}:{self.port(i, o)}" for o in
                   (INGRESS_OFFSET, CONSENSUS_OFFSET, LOG_OFFSET, CATCHUP_OFFSET, ARCHIVE_OFFSET)]
            parts.append(f"{i}," + ",".join(eps))
        return "|".join(parts)

    def ingress_endpoints(self, only: tuple[int, ...] | None = None) -> str:
        ids = range(self.members) if only is None else only
        return ",".join(f"{i}={self.host(i)}:{self.port(i, INGRESS_OFFSET)}" for i in ids)

    def member_dir(self, member_id: int) -> Path:
        return Path(self.base_dir) / f"member-{member_id}"

    def aeron_dir(self, member_id: int) -> str:
        # /dev/shm keeps the driver's files in memory; the name is unique per port plan so
        # parallel test clusters never share a driver directory.
        return f"/dev/shm/matchx-c{self.cluster_id}-p{self.port_base}-m{member_id}"

    def member_properties(self, member_id: int) -> dict[str, str]:
        if not 0 <= member_id < self.members:
            raise ConfigError(f"member id {member_id} not in 0..{self.members - 1}")
        t = self.timeouts
        return {
            "cluster.id": str(self.cluster_id),
            "member.id": str(member_id),
            "cluster.members": self.cluster_members(),
            "host": self.host(member_id),
            "archive.port": str(self.port(member_id, ARCHIVE_OFFSET)),
            "base.dir": str(self.member_dir(member_id)),
            "aeron.dir": self.aeron_dir(member_id),
            "term.length": str(self.term_length),
            "ingress.term.length": str(self.term_length),
            "heartbeat.interval.ms": str(t.heartbeat_interval_ms),
            "heartbeat.timeout.ms": str(t.heartbeat_timeout_ms),
            "election.timeout.ms": str(t.election_timeout_ms),
            "election.status.interval.ms": str(t.election_status_interval_ms),
            "startup.canvass.timeout.ms": str(t.startup_canvass_timeout_ms),
            "session.timeout.ms": str(t.session_timeout_ms),
            "setup.repeat.ms": str(t.setup_repeat_ms),
            "idle.max.park.us": str(self.idle_max_park_us),
            "idle.min.park.us": str(self.idle_min_park_us),
            "idle.yields": str(self.idle_yields),
            "idle.driver.light.work": str(self.driver_light_work),
            "idle.service.max.park.us": str(self.service_max_park_us),
            "idle.woken.max.park.us": str(self.woken_max_park_us),
            "threading": self.member_threading,
            "agent.wakeups": self.agent_wakeups,
            "snapshot.interval.s": str(self.snapshot_interval_s),
            "snapshot.log.bytes": str(self.snapshot_log_bytes),
            "snapshot.term.length": str(self.snapshot_term_length),
            "snapshot.mtu": str(self.snapshot_mtu),
        }

    def to_json(self) -> str:
        d = asdict(self)
        d["base_dir"] = str(self.base_dir)
        d["hosts"] = list(self.hosts)
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterLayout:
        d = json.loads(text)
        d["base_dir"] = Path(d["base_dir"])
        d["hosts"] = tuple(d.get("hosts", ()))
        d["timeouts"] = Timeouts(**d.get("timeouts", {}))
        return cls(**d)

    def with_(self, **changes) -> ClusterLayout:
        return replace(self, **changes)
