"""Monitoring a running system: a Prometheus (Debian's ``prometheus`` package) with a scrape
configuration generated from the system's topology, the alert rules (``rules.yml``, unit-tested by
``rules_test.yml``) and a Grafana dashboard (``dashboard.json``). docs/operations.md, "Monitoring".

    matchctl up TOPOLOGY --monitoring [--prometheus-port 9090]
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

log = logging.getLogger("matchx.monitoring")

ASSETS = Path(__file__).resolve().parent
RULES = ASSETS / "rules.yml"
RULE_TESTS = ASSETS / "rules_test.yml"
DASHBOARD = ASSETS / "dashboard.json"
DEFAULT_PROMETHEUS_PORT = 9090
SCRAPE_INTERVAL_S = 5

# Words in a PromQL expression that are not metric names.
_PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left",
                 "group_right", "and", "or", "unless", "rate", "increase", "delta", "deriv", "irate",
                 "histogram_quantile", "le", "bool", "offset", "abs", "clamp_min", "clamp_max", "topk"}


class MonitoringError(RuntimeError):
    """Prometheus is missing, or did not start; the message says what to do."""


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise MonitoringError("prometheus is not installed (Debian: apt-get install prometheus; "
                              "`make setup` installs it)")
    return found


def scrape_config(targets: dict[str, list[str]], interval_s: int = SCRAPE_INTERVAL_S) -> str:
    """Prometheus's configuration (JSON is YAML) scraping ``{job: [host:port, ...]}``."""
    doc = {
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": sorted(hosts)}]}
            for job, hosts in sorted(targets.items()) if hosts
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def system_targets(status: dict) -> dict[str, list[str]]:
    """Scrape targets of a running system, from ``System.status()`` (the ``matchctl status --json``
    document): every worker, the coordinator and the auth service."""

    def hostport(url: str | None) -> str | None:
        m = re.match(r"https?://([^/]+)/", url or "")
        return m.group(1) if m else None

    workers = [hostport(w.get("metrics_url")) for w in status.get("workers", {}).values()]
    targets = {"matchx-workers": [w for w in workers if w]}
    for job, key in (("matchx-coordinator", "coordinator"), ("matchx-auth", "auth")):
        url = hostport((status.get(key) or {}).get("metrics_url"))
        if url:
            targets[job] = [url]
    return targets


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (histogram series reduced to their family)."""
    no_labels = re.sub(r"\{[^}]*\}", "", expr)
    no_strings = re.sub(r'"[^"]*"', "", no_labels)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_strings)
    names = set()
    for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", no_ranges):
        if word in _PROMQL_WORDS or not word.startswith("matchx_"):
            continue
        names.add(re.sub(r"_(bucket|sum|count)$", "", word) if word.endswith(("_bucket", "_sum", "_count"))
                  else word)
    return names


def rule_exprs(path: Path = RULES) -> list[str]:
    """The ``expr`` of every rule (a one-line value or a folded block), without a YAML library."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        key, _, rest = line.strip().partition("expr:")
        if key or not line.strip().startswith("expr:"):
            continue
        rest = rest.strip()
        if rest not in (">-", ">", "|", "|-"):
            out.append(rest)
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for follow in lines[i + 1 :]:
            if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                break
            block.append(follow.strip())
        out.append(" ".join(block))
    return out


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    doc = json.loads(path.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


class Prometheus:
    """One Prometheus process with its data and configuration in ``directory``."""

    def __init__(self, directory: Path, port: int = DEFAULT_PROMETHEUS_PORT, host: str = "127.0.0.1") -> None:
        self.dir = Path(directory)
        self.port = port
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, targets: dict[str, list[str]], timeout: float = 60.0) -> int:
        binary = prometheus_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        config.write_text(scrape_config(targets))
        cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
               f"--web.listen-address={self.host}:{self.port}", "--storage.tsdb.retention.time=2d"]
        with open(self.dir / "prometheus.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise MonitoringError(f"prometheus exited with status {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    log.info("prometheus pid %d on %s", self.proc.pid, self.url)
                    return self.proc.pid
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise MonitoringError(f"prometheus did not become ready on {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def query(self, promql: str) -> list[dict]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10.0).json()
        if reply.get("status") != "success":
            raise MonitoringError(f"query {promql!r}: {reply}")
        return reply["data"]["result"]

    def targets(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/targets", timeout=10.0).json()["data"]["activeTargets"]
