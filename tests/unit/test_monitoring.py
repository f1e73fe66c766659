"""The alert rules and the dashboard (pyengine/ops/monitoring): promtool checks the rules and runs
their unit tests; the generated scrape configuration is one Prometheus accepts.

promtool comes with Debian's ``prometheus`` package (.ci/system-deps.sh installs it). Without it
these tests skip, except under `make test` (MATCHX_REQUIRE_ALL=1) or CI=true, where a missing
promtool fails loudly (tests/prereq.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyengine.ops.monitoring import (
    DASHBOARD,
    RULE_TESTS,
    RULES,
    dashboard_exprs,
    metric_names,
    rule_exprs,
    scrape_config,
    system_targets,
)
from tests.prereq import missing


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool: install Debian's prometheus package (bash .ci/system-deps.sh)")
    return found


def run(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_alert_rules_are_valid(promtool: str) -> None:
    assert "SUCCESS" in run([promtool, "check", "rules", str(RULES)])


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    assert "SUCCESS" in run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)


def test_a_broken_rule_is_caught(promtool: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES.read_text().replace("sum by (partition) (matchx_member_is_leader) < 1",
                                             "sum by (partition) (matchx_member_is_leader < 1", 1))
    done = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0


def test_every_alert_has_a_unit_test() -> None:
    alerts = {line.split(":", 1)[1].strip() for line in RULES.read_text().splitlines()
              if line.strip().startswith("- alert:")}
    tested = {line.split(":", 1)[1].strip() for line in RULE_TESTS.read_text().splitlines()
              if line.strip().startswith("alertname:")}
    assert alerts <= tested, alerts - tested


def test_generated_scrape_config_is_accepted(promtool: str, tmp_path: Path) -> None:
    status = {"workers": {"w1": {"metrics_url": "http://127.0.0.1:21005/metrics"}, "w2": {"metrics_url": None}},
              "coordinator": {"metrics_url": "http://127.0.0.1:8700/metrics"},
              "auth": {"metrics_url": "http://127.0.0.1:8081/metrics"}}
    targets = system_targets(status)
    assert targets == {"matchx-workers": ["127.0.0.1:21005"], "matchx-coordinator": ["127.0.0.1:8700"],
                       "matchx-auth": ["127.0.0.1:8081"]}
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(targets))
    run([promtool, "check", "config", str(config)])


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (partition, le) (rate(matchx_service_command_seconds_bucket[1m])))'
            ' / on (partition) matchx_commands_total{outcome=~"rejected|error"} and up{job="x"}')
    assert metric_names(expr) == {"matchx_service_command_seconds", "matchx_commands_total"}


def test_dashboard_is_importable_json_with_queries() -> None:
    exprs = dashboard_exprs(DASHBOARD)
    assert len(exprs) >= 20
    assert all(metric_names(e) for e in exprs), [e for e in exprs if not metric_names(e)]


def test_rule_expressions_are_read_whole() -> None:
    exprs = rule_exprs()
    assert len(exprs) == RULES.read_text().count("- alert:")
    reject = next(e for e in exprs if "rejected|error|unauthorised" in e)
    assert reject.endswith("> 0.5") and metric_names(reject) == {"matchx_commands_total"}


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_coordinator_serves_routing_and_migration_metrics(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from coordinator.api import create_app

    app = create_app(db_path=str(tmp_path / "c.db"))
    with TestClient(app) as http:
        doc = {"workers": [{"id": "w1", "address": "127.0.0.1"}],
               "partitions": [{"id": "p1", "symbols": ["BTC-USDT", "ETH-USDT"], "members": [
                   {"worker_id": "w1", "member_id": 0, "ingress_endpoint": "127.0.0.1:20001"}]},
                   {"id": "p2", "symbols": []}]}
        assert http.post("/v1/topology", json=doc).status_code == 200
        http.get("/v1/routes/BTC-USDT")
        app.state.migration_metrics.set_states({"frozen": (1, 1.0), "done": (0, None)})
        s = _samples(http.get("/metrics").text)
    assert s[("matchx_coordinator_routing_version", frozenset())] >= 1
    assert s[("matchx_coordinator_symbols", frozenset({("partition", "p1")}))] == 2
    assert s[("matchx_coordinator_symbols", frozenset({("partition", "p2")}))] == 0
    assert s[("matchx_coordinator_migrations", frozenset({("state", "frozen")}))] == 1
    assert s[("matchx_coordinator_migration_oldest_age_seconds", frozenset({("state", "frozen")}))] > 1e9
    assert s[("matchx_coordinator_migration_oldest_age_seconds", frozenset({("state", "done")}))] == 0
    # the route template, never the symbol: no label per symbol or account
    key = ("matchx_coordinator_http_requests_total",
           frozenset({("method", "GET"), ("route", "/v1/routes/{symbol}"), ("code", "2xx")}))
    assert s[key] == 1
    assert not any("BTC-USDT" in str(labels) for _, labels in s)


def test_auth_service_serves_metrics_without_account_labels(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from coordinator.auth.app import create_app
    from coordinator.auth.config import AuthConfig
    from coordinator.auth.service import AuthService

    svc = AuthService(AuthConfig(db_path=str(tmp_path / "auth.db"), admin_api_key="k" * 32,
                                 argon2_opslimit=1, argon2_memlimit=8192))
    try:
        with TestClient(create_app(service=svc)) as http:
            assert http.post("/v1/login", json={"username": "alice", "password": "wrong-password"}).status_code == 401
            text = http.get("/metrics").text
    finally:
        svc.close()
    s = _samples(text)
    key = ("matchx_auth_http_requests_total", frozenset({("method", "POST"), ("route", "/v1/login"), ("code", "4xx")}))
    assert s[key] == 1
    assert ("matchx_process_resident_memory_bytes", frozenset()) in s
    assert "alice" not in text
