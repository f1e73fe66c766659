"""A whole partitioned system on this machine: the coordinator, the workers, their partitions.

    matchctl up docs/examples/topology-2x3.json --dir var/system
    matchctl status --dir var/system
    matchctl down --dir var/system

``up`` reads and checks a topology file (see docs/partitions.md) before it starts anything, then
starts the coordinator (which loads the topology), one worker process per worker
(``python -m pyengine.node.worker``), waits for a leader in every partition and sends each partition
the symbols it owns (``own_symbols`` with the coordinator's epochs, then ``add_symbol``). The
PIDs of everything it started are kept in ``DIR/system.json``; ``down`` stops exactly those
processes (SIGTERM, then SIGKILL) and removes the workers' driver directories in /dev/shm.

The directory keeps the durable state (coordinator database, each member's Raft log, archive and
snapshots): ``up`` on the same directory with the same topology restarts the same system.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyengine.client.match_client import client_aeron_dirs
from pyengine.node.procs import pid_alive
from pyengine.node.settings import ClusterLayout, ConfigError, load_auth_keys
from pyengine.node.topology import (
    DEFAULT_SYSTEM_DIR,
    CoordinatorSpec,
    SystemStateError,
    Topology,
)

log = logging.getLogger("matchx.system")

REPO_ROOT = Path(__file__).resolve().parents[2]



# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int, marker: str) -> bool:
    """True if ``pid`` is alive and still the process we started (guards against PID reuse)."""
    return pid_alive(pid) and marker in _cmdline(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_pid(pid: int, marker: str, timeout: float) -> None:
    if not _ours(pid, marker):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, timeout):
        log.warning("process %d did not stop in %.0f s; SIGKILL", pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid, 10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _await_port(proc: subprocess.Popen, out_file: Path, log_file: Path, name: str, timeout: float) -> int:
    """The port a service reports in the first JSON line it prints (``{"port": N, ...}``)."""
    deadline = time.monotonic() + timeout
    while True:
        text = out_file.read_text(errors="replace")
        if "\n" in text:
            try:
                return int(json.loads(text.splitlines()[0])["port"])
            except (ValueError, KeyError, TypeError):
                raise SystemStateError(f"{name} printed {text.splitlines()[0]!r}, not its port") from None
        if proc.poll() is not None:
            raise SystemStateError(f"{name} exited with status {proc.returncode}:\n{_tail(log_file)}")
        if time.monotonic() > deadline:
            raise SystemStateError(f"{name} did not report its port within {timeout:.0f} s")
        time.sleep(0.05)


def _write_secret(path: Path, text: str) -> None:
    """A file only this user can read, created so (never world-readable for a moment)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _env() -> dict[str, str]:
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def coordinator_migration_args(spec: CoordinatorSpec) -> list[str]:
    """The coordinator's command-line options for the topology's migration settings; a setting
    left at its default adds nothing, so the coordinator's own default applies."""
    args: list[str] = []
    if spec.migration_chunk_bytes is not None:
        args += ["--migration-chunk-bytes", str(spec.migration_chunk_bytes)]
    if spec.migration_stage_delay_ms:
        args += ["--migration-stage-delay-ms", str(spec.migration_stage_delay_ms)]
    if spec.migration_step_hold_ms:
        args += ["--migration-step-hold-ms", str(spec.migration_step_hold_ms)]
    if not spec.migration_precopy:
        args += ["--no-migration-precopy"]
    if spec.migration_precopy_piece_orders is not None:
        args += ["--migration-precopy-piece-orders", str(spec.migration_precopy_piece_orders)]
    if spec.migration_precopy_piece_pause_ms:
        args += ["--migration-precopy-piece-pause-ms", str(spec.migration_precopy_piece_pause_ms)]
    if spec.migration_copy_pace_pct is not None:
        args += ["--migration-copy-pace-pct", str(spec.migration_copy_pace_pct)]
    return args

class System:
    """A system directory: what ``matchctl up`` started there, and how to stop it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory).resolve()
        self._topology: Topology | None = None

    # ---- files -----------------------------------------------------------------------------

    @property
    def topology_file(self) -> Path:
        return self.dir / "topology.json"

    @property
    def state_file(self) -> Path:
        return self.dir / "system.json"

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            if not self.topology_file.is_file():
                raise SystemStateError(f"no system in {self.dir} (no topology.json); start one with `matchctl up`")
            self._topology = Topology.load(self.topology_file)
        return self._topology

    def state(self) -> dict:
        if not self.state_file.is_file():
            return {"coordinator": None, "workers": {}}
        return json.loads(self.state_file.read_text())

    def _save_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    @property
    def coordinator_db(self) -> Path:
        db = Path(self.topology.coordinator.db)
        return db if db.is_absolute() else self.dir / db

    @property
    def coordinator_url(self) -> str:
        c = self.state().get("coordinator")
        if not c:
            raise SystemStateError(f"no coordinator recorded in {self.state_file}")
        return f"http://{self.topology.coordinator.host}:{c['port']}"

    def layout(self, partition_id: str) -> ClusterLayout:
        return self.topology.layout(partition_id, self.dir)

    def worker_aeron_dir(self, worker_id: str) -> str:
        return self.topology.worker_aeron_dir(worker_id, self.dir)

    # ---- up --------------------------------------------------------------------------------

    @classmethod
    def up(cls, topology_file: str | os.PathLike[str] | None, directory: str | os.PathLike[str] = DEFAULT_SYSTEM_DIR,
           timeout: float = 90.0, log_level: str = "INFO") -> System:
        """Check the topology, start everything, wait for leaders, hand out the symbols.
        ``topology_file`` None: the directory's own DIR/topology.json (the system as it was last
        changed by ``matchctl partition``/``worker`` commands).

        On any failure whatever was started is stopped again and the error raised."""
        own = topology_file is None
        if own and not cls(directory).topology_file.is_file():
            raise SystemStateError(f"no system in {Path(directory).resolve()} to restart (no topology.json); "
                                   "give a topology file")
        # nothing is touched before the file is known good
        topo = Topology.load(cls(directory).topology_file if own else topology_file)
        system = cls(directory)
        if topo.auth is not None and not own:
            if topo.auth_keys_file is not None:
                raise SystemStateError("the topology runs an auth service (auth) and names settings.auth_keys_file: "
                                       "leave the file out, `matchctl up` writes the service's keys to "
                                       "DIR/auth-keys.json and gives it to every member")
            topo = replace(topo, auth_keys_file=str(system.auth_keys_path))
        system.dir.mkdir(parents=True, exist_ok=True)
        running = system.running()
        if running:
            raise SystemStateError(f"{system.dir} already runs {', '.join(running)}; `matchctl down --dir {directory}` "
                              "first")
        if system.topology_file.is_file():
            previous = json.loads(system.topology_file.read_text())
            if previous != topo.to_dict():
                raise SystemStateError(f"{system.dir} holds a system set up with a different topology "
                                  f"({system.topology_file}; partitions or workers added or removed since count): "
                                  f"`matchctl up --dir {directory}` restarts it as it is, or use another --dir")
        system.topology_file.write_text(json.dumps(topo.to_dict(), indent=2) + "\n")
        system._topology = topo
        system._save_state({"coordinator": None, "workers": {}})
        deadline = time.monotonic() + timeout
        try:
            if topo.auth is not None:
                # the whole budget, not a share: on a loaded machine a Python service's start alone
                # has taken over 30 s (load 45 on 2 cores)
                system.start_auth(timeout=max(1.0, deadline - time.monotonic()))  # the members' keys come from it
            elif topo.auth_keys_file is not None:
                load_auth_keys(topo.auth_keys_file)  # the workers would refuse it: say so once, here
            system.start_coordinator(timeout=max(1.0, deadline - time.monotonic()))
            system._check_coordinator_map()
            for w in topo.workers:  # one without members yet runs idle and follows the topology
                system.start_worker(w.id, log_level=log_level)
            system.await_leaders(max(1.0, deadline - time.monotonic()))
            system.assign_symbols(max(5.0, deadline - time.monotonic()))
            if topo.auth is not None:
                system.start_pusher(log_level=log_level, timeout=max(60.0, deadline - time.monotonic()))
        except BaseException:
            system.down()
            raise
        return system

    def running(self) -> list[str]:
        """Names of the recorded processes that are still alive."""
        if not self.state_file.is_file():
            return []
        state = self.state()
        out = []
        c = state.get("coordinator")
        if c and _ours(c["pid"], "coordinator"):
            out.append(f"the coordinator (pid {c['pid']})")
        for wid, pid in sorted(state.get("workers", {}).items()):
            if _ours(pid, "pyengine.node.worker"):
                out.append(f"worker {wid} (pid {pid})")
        a = state.get("auth")
        if a and _ours(a["pid"], "coordinator.auth"):
            out.append(f"the auth service (pid {a['pid']})")
        pusher = state.get("pusher")
        if pusher and _ours(pusher, "pyengine.ops.pusher"):
            out.append(f"the revocation pusher (pid {pusher})")
        return out

    def start_coordinator(self, port: int | None = None, timeout: float = 30.0) -> int:
        """Starts the coordinator (its database bootstraps from the topology when new).

        ``port``: None uses the recorded port of an earlier start (a restart keeps its URL), else
        the topology's. Returns the port."""
        topo = self.topology
        state = self.state()
        if port is None:
            recorded = state.get("coordinator") or {}
            port = recorded.get("port") or topo.coordinator.port
        doc = self.dir / "coordinator-topology.json"
        doc.write_text(json.dumps(topo.coordinator_document(), indent=2) + "\n")
        out_file = self.dir / "coordinator.out"
        out_file.write_bytes(b"")
        cmd = [sys.executable, "-m", "coordinator", "--host", topo.coordinator.host, "--port", str(port),
               "--db", str(self.coordinator_db), "--topology", str(doc), "--topology-mode", "bootstrap",
               "--log-level", "warning", *self._coordinator_control_args()]
        cmd += coordinator_migration_args(topo.coordinator)
        with open(out_file, "ab") as out, open(self.dir / "coordinator.log", "ab") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(REPO_ROOT), env=_env())
        state["coordinator"] = {"pid": proc.pid, "port": port or None}
        self._save_state(state)
        actual = _await_port(proc, out_file, self.dir / "coordinator.log", "the coordinator", timeout)
        state["coordinator"] = {"pid": proc.pid, "port": actual}
        self._save_state(state)
        log.info("coordinator pid %d on port %d", proc.pid, actual)
        return actual

    def _coordinator_control_args(self) -> list[str]:
        """The coordinator's credential for the migration steps it sends to the partitions, as
        control_credentials() gives the system's own connections: it logs in as the service user
        when the system runs its auth service; with an outside one it reads $MATCHX_TOKEN, written
        to DIR/auth/control.token (0600); nothing when tokens are off."""
        topo = self.topology
        if topo.auth is not None:
            self._secret("service.password")  # made now if the auth service has not run yet
            return ["--control-auth-url", self.auth_url,
                    "--control-password-file", str(self.auth_secrets_dir / "service.password")]
        if topo.auth_keys_file is not None:
            token = os.environ.get("MATCHX_TOKEN", "").strip()
            if not token:
                raise SystemStateError("tokens are on (settings.auth_keys_file) and the topology runs no auth "
                                       "service: set MATCHX_TOKEN to an access token with admin and read")
            path = self.auth_secrets_dir / "control.token"
            _write_secret(path, token + "\n")
            return ["--control-token-file", str(path)]
        return []

    def stop_coordinator(self, timeout: float = 10.0) -> None:
        """SIGTERM (then SIGKILL) the coordinator; its port stays recorded for a restart."""
        c = self.state().get("coordinator")
        if c:
            _stop_pid(c["pid"], "coordinator", timeout)

    # ---- tokens: the auth service, the control plane's credential, the pusher ----------------

    @property
    def auth_keys_path(self) -> Path:
        """The keys file every member loads when the system runs its own auth service."""
        return self.dir / "auth-keys.json"

    @property
    def auth_secrets_dir(self) -> Path:
        return self.dir / "auth"  # mode 0700: the admin key and the service credential

    @property
    def auth_url(self) -> str:
        a = self.state().get("auth")
        if not a or self.topology.auth is None:
            raise SystemStateError(f"no auth service recorded in {self.state_file}")
        return f"http://{self.topology.auth.host}:{a['port']}"

    def _secret(self, name: str) -> str:
        """A random secret kept in DIR/auth/NAME, made on first use and the same ever after."""
        path = self.auth_secrets_dir / name
        if not path.is_file():
            import secrets

            _write_secret(path, secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip()

    def auth_client(self):
        from coordinator.auth.client import AuthClient

        return AuthClient(self.auth_url, admin_key=self._secret("admin.key"))

    def start_auth(self, timeout: float = 30.0) -> int:
        """Starts the auth service, makes sure the control plane's service user exists, and
        writes the service's public keys to DIR/auth-keys.json for the members. Returns the port."""
        from coordinator.auth.client import AuthError

        spec = self.topology.auth
        assert spec is not None
        self._secret("admin.key")  # created before the service reads it
        db = Path(spec.db) if Path(spec.db).is_absolute() else self.dir / spec.db
        out_file = self.dir / "auth.out"
        out_file.write_bytes(b"")
        cmd = [sys.executable, "-m", "coordinator.auth", "--host", spec.host, "--port", str(spec.port),
               "--db", str(db), "--admin-key-file", str(self.auth_secrets_dir / "admin.key"),
               "--log-level", "warning", "--no-access-log"]
        with open(out_file, "ab") as out, open(self.dir / "auth.log", "ab") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(REPO_ROOT), env=_env())
        state = self.state()
        state["auth"] = {"pid": proc.pid, "port": spec.port or None}
        self._save_state(state)
        port = _await_port(proc, out_file, self.dir / "auth.log", "the auth service", timeout)
        state["auth"] = {"pid": proc.pid, "port": port}
        self._save_state(state)
        from coordinator.auth.setup import ensure_service_user, write_keys_file

        with self.auth_client() as api:
            try:
                ensure_service_user(api, self._secret("service.password"))
                keys = write_keys_file(api, self.auth_keys_path)
            except AuthError as exc:
                raise SystemStateError(f"the auth service refused the service user: {exc}") from None
        log.info("auth service pid %d on port %d; %d key(s) in %s", proc.pid, port, keys, self.auth_keys_path)
        return port

    def service_token_provider(self):
        """A MatchClient token_provider for the control plane: the service user (admin and read
        on the partitions, nothing else), logged in again when asked to refresh."""
        from coordinator.auth.setup import service_token_provider

        return service_token_provider(self.auth_url, self._secret("service.password"))

    def control_credentials(self) -> dict[str, Any]:
        """MatchClient keyword arguments for the system's own connections (symbol assignment,
        admin, the pusher): the service user's token when the system runs its auth service,
        $MATCHX_TOKEN when tokens are on with an outside auth service, nothing when off."""
        topo = self.topology
        if topo.auth is not None:
            return {"token_provider": self.service_token_provider()}
        if topo.auth_keys_file is not None:
            token = os.environ.get("MATCHX_TOKEN", "").strip()
            if not token:
                raise SystemStateError("tokens are on (settings.auth_keys_file) and the topology runs no auth "
                                       "service: set MATCHX_TOKEN to an access token with admin and read")
            return {"credentials": token.encode()}
        return {}

    def start_pusher(self, log_level: str = "INFO", timeout: float = 60.0) -> int:
        """Starts the revocation pusher (pyengine/ops/pusher.py) for this system, in step with
        every partition before it returns (keys and revocations read back and brought up to date)."""
        from pyengine.ops.pusher import spawn

        def record(pid: int) -> None:
            state = self.state()
            state["pusher"] = pid
            self._save_state(state)

        try:
            pid = spawn(["--dir", str(self.dir), "--log-level", log_level], self.dir / "pusher.log",
                        self.dir / "pusher.json", {p.id for p in self.topology.partitions}, REPO_ROOT, _env(),
                        timeout, record)
        except RuntimeError as exc:
            raise SystemStateError(f"{exc}:\n{_tail(self.dir / 'pusher.log')}") from None
        log.info("revocation pusher pid %d, in step with every partition", pid)
        return pid

    def stop_pusher(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        pid = self.state().get("pusher")
        if pid is None:
            return
        if sig == signal.SIGTERM:
            _stop_pid(pid, "pyengine.ops.pusher", timeout)
        elif _ours(pid, "pyengine.ops.pusher"):
            os.kill(pid, sig)
            _wait_gone(pid, timeout)
        if not pid_alive(pid):  # it ends with os._exit once its JVM runs: its client dirs stay
            for d in client_aeron_dirs(pid):
                shutil.rmtree(d, ignore_errors=True)

    def _http(self, timeout: float = 5.0):
        import httpx

        return httpx.Client(base_url=self.coordinator_url, timeout=timeout)

    def _check_coordinator_map(self) -> None:
        """The coordinator's workers and members must be the topology's (an existing database may
        hold moves of symbols: those are kept, the coordinator's map is the truth for symbols)."""
        with self._http() as http:
            current = http.get("/v1/topology").json()
        want = self.topology.coordinator_document()

        def shape(doc: dict) -> tuple:
            workers = sorted((w["id"], w["address"]) for w in doc["workers"])
            parts = sorted((p["id"], tuple(sorted((m["member_id"], m["worker_id"], m["ingress_endpoint"])
                                                   for m in p["members"]))) for p in doc["partitions"])
            return workers, parts

        if shape(current) != shape(want):
            raise SystemStateError(f"the coordinator database {self.coordinator_db} describes other workers or "
                              "partitions than the topology; use a new --dir or remove the database")

    def start_worker(self, worker_id: str, log_level: str = "INFO") -> int:
        self.topology.worker(worker_id)
        logs = self.dir / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.worker_aeron_dir(worker_id), ignore_errors=True)
        cmd = [sys.executable, "-m", "pyengine.node.worker", "--topology", str(self.topology_file),
               "--worker-id", worker_id, "--dir", str(self.dir), "--log-level", log_level]
        with open(logs / f"{worker_id}.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(REPO_ROOT), env=_env())
        state = self.state()
        state.setdefault("workers", {})[worker_id] = proc.pid
        self._save_state(state)
        log.info("worker %s pid %d", worker_id, proc.pid)
        return proc.pid

    def stop_worker(self, worker_id: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        pid = self.state().get("workers", {}).get(worker_id)
        if pid is not None:
            if sig == signal.SIGTERM:
                _stop_pid(pid, "pyengine.node.worker", timeout)
            elif _ours(pid, "pyengine.node.worker"):
                os.kill(pid, sig)
                _wait_gone(pid, timeout)
        if pid is None or not pid_alive(pid):
            shutil.rmtree(self.worker_aeron_dir(worker_id), ignore_errors=True)

    # ---- observing -------------------------------------------------------------------------

    def worker_report(self, worker_id: str) -> dict | None:
        """What the running worker says it runs (DIR/workers/W.json: members, metrics port), or
        None when it has not written it or the file is from an earlier process."""
        pid = self.state().get("workers", {}).get(worker_id)
        try:
            doc = json.loads((self.dir / "workers" / f"{worker_id}.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if pid is not None and doc.get("pid") == pid and _ours(pid, "pyengine.node.worker") else None

    def worker_metrics_url(self, worker_id: str) -> str | None:
        report = self.worker_report(worker_id)
        port = report["metrics_port"] if report else self.topology.worker_metrics_port(worker_id)
        return None if port is None else f"http://{self.topology.worker(worker_id).host}:{port}/metrics"

    def member_status(self, partition_id: str, member_id: int) -> dict:
        p = self.topology.partition(partition_id)
        worker_id = p.members[member_id]
        pid = self.state().get("workers", {}).get(worker_id)
        status = {"partition": partition_id, "member_id": member_id, "worker": worker_id, "role": "down"}
        if pid is None or not _ours(pid, "pyengine.node.worker"):
            return status
        status["role"] = "starting"
        path = self.layout(partition_id).member_dir(member_id) / "status.json"
        try:
            reported = json.loads(path.read_text())
        except (OSError, ValueError):
            return status
        if reported.get("pid") == pid:  # a file from an earlier process says nothing about this one
            status.update(reported)
            status["worker"] = worker_id
        return status

    def partition_status(self, partition_id: str) -> list[dict]:
        p = self.topology.partition(partition_id)
        return [self.member_status(partition_id, m) for m in range(len(p.members))]

    def leader(self, partition_id: str) -> int | None:
        leaders = [s["member_id"] for s in self.partition_status(partition_id) if s.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def await_leaders(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        leaders: dict[str, int] = {}
        while True:
            for p in self.topology.partitions:
                if p.id not in leaders:
                    lead = self.leader(p.id)
                    if lead is not None:
                        leaders[p.id] = lead
            if len(leaders) == len(self.topology.partitions):
                return leaders
            for wid, pid in self.state().get("workers", {}).items():
                if not pid_alive(pid):
                    tail = _tail(self.dir / "workers" / f"{wid}.log")
                    raise SystemStateError(f"worker {wid} (pid {pid}) exited:\n{tail}")
            if time.monotonic() > deadline:
                missing = [p.id for p in self.topology.partitions if p.id not in leaders]
                raise SystemStateError(f"no leader in partition(s) {', '.join(missing)} within {timeout:.0f} s; "
                                  f"worker logs are in {self.dir / 'workers'}")
            time.sleep(0.05)

    def status(self) -> dict:
        state = self.state()
        coordinator: dict[str, Any] = {"running": False}
        c = state.get("coordinator")
        if c:
            coordinator = {"pid": c["pid"], "port": c["port"], "running": _ours(c["pid"], "coordinator"),
                           "metrics_url": f"{self.coordinator_url}/metrics"}
            if coordinator["running"]:
                try:
                    with self._http(2.0) as http:
                        coordinator["version"] = http.get("/v1/health").json()["version"]
                except Exception as exc:  # noqa: BLE001 - status reports, never fails
                    coordinator["error"] = str(exc)
        workers = {wid: {"pid": pid, "running": _ours(pid, "pyengine.node.worker"),
                         "metrics_url": self.worker_metrics_url(wid)}
                   for wid, pid in state.get("workers", {}).items()}
        doc = {"dir": str(self.dir), "coordinator": coordinator, "workers": workers,
               "partitions": {p.id: self.partition_status(p.id) for p in self.topology.partitions}}
        a = state.get("auth")
        if a:
            doc["auth"] = {"pid": a["pid"], "port": a["port"], "running": _ours(a["pid"], "coordinator.auth"),
                           "metrics_url": f"{self.auth_url}/metrics"}
        p = state.get("prometheus")
        if p:
            doc["prometheus"] = {"pid": p["pid"], "url": p["url"], "running": _ours(p["pid"], "prometheus")}
        return doc

    def start_prometheus(self, port: int | None = None) -> str:
        """Starts Prometheus scraping every worker, the coordinator and the auth service, with the
        alert rules; its data in DIR/monitoring. Returns its URL."""
        from pyengine.ops.monitoring import DEFAULT_PROMETHEUS_PORT, Prometheus, system_targets

        prom = Prometheus(self.dir / "monitoring", port or DEFAULT_PROMETHEUS_PORT)
        pid = prom.start(system_targets(self.status()))
        state = self.state()
        state["prometheus"] = {"pid": pid, "url": prom.url}
        self._save_state(state)
        return prom.url

    # ---- symbols ---------------------------------------------------------------------------

    def assign_symbols(self, timeout: float = 60.0, only: str | None = None) -> dict[str, dict[str, int]]:
        """Tells every partition which symbols it owns (epochs from the coordinator's routes) and
        adds them to its engine (tick/lot from the topology). Idempotent: a restart sends the
        same ownership again and the engine answers ``duplicate_symbol`` for known symbols.

        A partition without symbols gets an empty ``own_symbols``, so it owns none (a partition
        that never got the command owns every symbol, as a single-partition system does).
        ``only``: just this partition (a partition added to a running system)."""
        from pyengine.client.match_client import MatchClient
        from pyengine.service.migration import ID_SPACE

        with self._http() as http:
            routes = http.get("/v1/routes").json()
        owned: dict[str, dict[str, int]] = {p.id: {} for p in self.topology.partitions}
        for symbol, route in sorted(routes["symbols"].items()):
            owned.setdefault(route["partition"], {})[symbol] = route["epoch"]
        deadline = time.monotonic() + timeout
        for p in self.topology.partitions:
            if only is not None and p.id != only:
                continue
            with MatchClient(self.topology.ingress_endpoints(p.id), **self.control_credentials()) as client:
                if not client.wait_connected(max(1.0, deadline - time.monotonic())):
                    raise SystemStateError(f"could not connect to partition {p.id}: {client.last_error}")
                left = max(1.0, deadline - time.monotonic())
                client.admin({"op": "own_symbols", "symbols": owned[p.id]}, timeout=left)
                # each partition its own order id range, so orders keep their ids when their
                # symbol moves (docs/migration.md); never lowers a partition's next id
                client.admin({"op": "id_base", "base": p.cluster_id * ID_SPACE}, timeout=left)
                for symbol in owned[p.id]:
                    spec = self.topology.symbol(symbol)
                    if spec is None:
                        log.warning("symbol %s is routed to %s but not described in the topology; not added",
                                    symbol, p.id)
                        continue
                    events = client.request(spec.add_symbol_command(), timeout=left).events
                    first = events[0] if events else {}
                    if first.get("type") == "rejected" and first.get("reason") != "duplicate_symbol":
                        raise SystemStateError(f"partition {p.id} refused symbol {symbol}: {first}")
            log.info("partition %s owns %s", p.id, owned[p.id])
        return owned

    # ---- down ------------------------------------------------------------------------------

    def down(self, timeout: float = 15.0) -> None:
        """Stops every recorded process (workers first), cleans the workers' /dev/shm dirs."""
        state = self.state()
        if state.get("pusher"):
            _stop_pid(state["pusher"], "pyengine.ops.pusher", timeout)
        workers = state.get("workers", {})
        for pid in workers.values():
            if _ours(pid, "pyengine.node.worker"):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for pid in workers.values():
            _stop_pid(pid, "pyengine.node.worker", timeout)  # no-op once gone; SIGKILL after timeout
        c = state.get("coordinator")
        if c:
            _stop_pid(c["pid"], "coordinator", timeout)
        if state.get("auth"):
            _stop_pid(state["auth"]["pid"], "coordinator.auth", timeout)
        if state.get("prometheus"):
            _stop_pid(state["prometheus"]["pid"], "prometheus", timeout)
        # the coordinator and the pusher end with os._exit once their JVM runs (and a worker may
        # have needed SIGKILL): their clients' driver directories stay unless removed here
        stopped = [state.get("pusher"), *workers.values(), (c or {}).get("pid"), (state.get("auth") or {}).get("pid")]
        for pid in stopped:
            if isinstance(pid, int) and not pid_alive(pid):
                for d in client_aeron_dirs(pid):
                    shutil.rmtree(d, ignore_errors=True)
        try:
            topo = self.topology
        except (SystemStateError, ConfigError):
            topo = None
        if topo is not None:
            for w in topo.workers:
                shutil.rmtree(self.worker_aeron_dir(w.id), ignore_errors=True)
        if self.state_file.is_file():
            self._save_state({"coordinator": None, "workers": {}})


def describe(status: dict) -> str:
    """``matchctl status`` text."""
    lines = [f"system in {status['dir']}"]
    c = status["coordinator"]
    if c.get("pid"):
        state = "running" if c["running"] else "down"
        lines.append(f"coordinator  pid {c['pid']}  port {c['port']}  {state}"
                     + (f"  routing version {c['version']}" if "version" in c else ""))
    else:
        lines.append("coordinator  not started")
    for wid, w in sorted(status["workers"].items()):
        lines.append(f"worker {wid:<8} pid {w['pid']}  {'running' if w['running'] else 'down'}"
                     + (f"  metrics {w['metrics_url']}" if w.get("metrics_url") else ""))
    for pid, members in status["partitions"].items():
        roles = ", ".join(f"m{m['member_id']}@{m['worker']}={m['role']}" for m in members)
        lines.append(f"partition {pid:<6} {roles}")
    return "\n".join(lines)
