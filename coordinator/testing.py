"""Run a real coordinator process for tests (``python -m coordinator`` in a subprocess).

::

    with CoordinatorProcess(tmp_path / "c.db") as coord:
        httpx.get(coord.url + "/v1/health")
        coord.restart()            # same port, same database

The process always gets stopped (SIGTERM, then SIGKILL) when the block exits, also on
failure; its stderr goes to ``<db>.stderr.log`` next to the database.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any


class CoordinatorProcess:
    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        topology: str | os.PathLike[str] | None = None,
        topology_mode: str = "bootstrap",
        start_timeout: float = 20.0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.host = host
        self.port = port
        self.topology = topology
        self.topology_mode = topology_mode
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stderr_path(self) -> Path:
        return self.db_path.with_name(self.db_path.name + ".stderr.log")

    def start(self) -> CoordinatorProcess:
        if self.proc is not None:
            raise RuntimeError("already running")
        cmd = [
            sys.executable,
            "-m",
            "coordinator",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--db",
            str(self.db_path),
            "--log-level",
            "warning",
            *self.extra_args,
        ]
        if self.topology is not None:
            cmd += ["--topology", str(self.topology), "--topology-mode", self.topology_mode]
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.stderr_path, "ab")  # closed in stop()
        root = Path(__file__).resolve().parent.parent
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p),
        }
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env
        )
        try:
            line = self._read_line(self.proc, self.start_timeout)
            self.port = int(json.loads(line)["port"])
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("coordinator did not report its port in time")
                if not sel.select(remaining):
                    continue
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"coordinator exited early (status {proc.wait()})")
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in ``timeout``.  Returns the status."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
            self.returncode = proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return self.returncode

    def restart(self) -> CoordinatorProcess:
        """Stop and start again on the same port with the same database."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> CoordinatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
