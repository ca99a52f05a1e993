"""The alerting rules and the Grafana dashboard in deploy/monitoring.

promtool (Debian's prometheus package; CI installs it) checks the rules and runs their unit tests,
rules.test.yaml: series that must fire each alert and series that must not. A deliberately broken
copy of the rules must make those unit tests fail, so they are known to be able to. The GKE Rules
object must carry exactly the same groups, and every metric the rules and the dashboard query must
be one the service (or the audit, drift and actuals monitors) exports: the names are a contract.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]  # stubs (types-PyYAML) are optional here

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules.yaml"
RULE_TESTS = MONITORING / "rules.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
GKE_RULES = ROOT / "deploy" / "k8s" / "overlays" / "gke" / "rules.yaml"
IN_CI = os.environ.get("CI") == "true"

# The metric names agreed with the serving, audit, drift and actuals work (issue #10).
CONTRACT = frozenset(
    {
        "chargecast_http_requests_total",
        "chargecast_http_request_duration_seconds_bucket",
        "chargecast_http_requests_in_progress",
        "chargecast_predictions_total",
        "chargecast_model_info",
        "chargecast_audit_records_total",
        "chargecast_audit_dropped_total",
        "chargecast_audit_backlog_records",
        "chargecast_audit_sink_up",
        "chargecast_drift_score",
        "chargecast_drift_threshold",
        "chargecast_drift_window_records",
        "chargecast_actuals_coverage",
        "chargecast_actuals_window_records",
        "chargecast_ready",
    }
)
METRIC = re.compile(r"\bchargecast_[a-z_]+\b")
RUNBOOK = "Runbook:"

Obj = dict[str, Any]


def promtool() -> str:
    """Debian's prometheus package brings it; missing, it is a skip here and a failure in CI."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found on PATH (apt-get install prometheus; .ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=120)


def load(path: Path) -> Obj:
    data: Obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def alerts(groups: list[Obj]) -> list[Obj]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def metric_names(expression: str) -> set[str]:
    """The chargecast metric names a PromQL expression reads (label names never start with chargecast_)."""
    return set(METRIC.findall(expression))


# -- promtool ------------------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    proc = run_promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = sum(len(group["rules"]) for group in load(RULES)["groups"])
    assert f"SUCCESS: {count} rules found" in proc.stdout


def test_the_rule_unit_tests_pass() -> None:
    proc = run_promtool("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_case_that_fires_it_and_one_that_must_not() -> None:
    tests = load(RULE_TESTS)
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts(load(RULES)["groups"])}
    assert names - firing == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts with no case where they must stay silent"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


# Each: a change to the rules, the alert whose tests must then fail.
BREAKAGES = [
    pytest.param("chargecast_actuals_coverage < 0.85", "chargecast_actuals_coverage < 0.75", id="coverage-floor"),
    pytest.param("chargecast_actuals_coverage > 0.95", "chargecast_actuals_coverage >= 0.95", id="coverage-edge"),
    pytest.param("chargecast_actuals_window_records >= 100", "chargecast_actuals_window_records >= 99", id="actuals"),
    pytest.param("[5m])) >= 100", "[5m])) >= 90", id="traffic-guard"),
    pytest.param(") > 0.05\n", ") > 0.5\n", id="error-ratio"),
    pytest.param(") > 0.25\n", ") > 0.5\n", id="latency"),
    pytest.param("changes(chargecast_ready[15m]) > 2", "changes(chargecast_ready[15m]) > 1", id="flapping"),
    pytest.param("dropped_total[10m]) > 0", "dropped_total[10m]) > 5", id="drops"),
    pytest.param("(chargecast_drift_score > chargecast_drift_threshold)", "chargecast_drift_score", id="drift"),
    pytest.param("drift_window_records >= 1000", "drift_window_records >= 999", id="drift-records"),
    pytest.param(
        "\n            and ignoring(feature, statistic) chargecast_drift_window_records >= 1000", "", id="drift-guard"
    ),
    pytest.param("deriv(chargecast_audit_backlog_records[15m]) > 0", "vector(1)", id="backlog"),
    pytest.param("severity: critical", "severity: page", id="severity-label"),
]


@pytest.mark.parametrize(("before", "after"), BREAKAGES)
def test_a_broken_copy_of_the_rules_fails_the_unit_tests(tmp_path: Path, before: str, after: str) -> None:
    text = RULES.read_text(encoding="utf-8")
    assert text.count(before) >= 1, f"{before!r} is not in the rules any more: update this test"
    (tmp_path / RULES.name).write_text(text.replace(before, after), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert run_promtool("check", "rules", RULES.name, cwd=tmp_path).returncode == 0, "still valid rules"
    proc = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0, f"the unit tests did not notice {before!r} -> {after!r}"
    assert "FAILED" in proc.stdout + proc.stderr


# -- the rules themselves ------------------------------------------------------------------------


def test_every_alert_says_how_urgent_it_is_and_what_to_do() -> None:
    for rule in alerts(load(RULES)["groups"]):
        name = rule["alert"]
        assert re.fullmatch(r"Chargecast[A-Z][A-Za-z0-9]+", name)
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert len(rule["annotations"]["summary"]) <= 120, name
        assert RUNBOOK in rule["annotations"]["description"], f"{name} tells on-call what to do"


def test_the_rules_query_only_contract_metrics() -> None:
    used: set[str] = set()
    for group in load(RULES)["groups"]:
        for rule in group["rules"]:
            used |= metric_names(rule["expr"])
    assert used, "no metric parsed: the pattern is broken"
    assert used <= CONTRACT, used - CONTRACT


def exported_names(text: str) -> set[str]:
    """The metric names with a sample in a Prometheus text page (HELP and TYPE lines are not samples)."""
    return {m for line in text.splitlines() if not line.startswith("#") for m in METRIC.findall(line.split("{")[0])}


def test_the_service_exports_every_contract_metric(model_dir: Path, tmp_path: Path) -> None:
    """The rules were written before the gauges existed: the running service must export every
    name they (and the dashboard) query, with a forecast, an actual and a monitoring round behind it."""
    from chargecast.settings import Settings
    from test_app import RECORD, post_json, ready_client

    audit = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    settings = Settings(model_dir=model_dir, log_level="warning", audit_url=audit, monitor_seconds=0.05)
    with ready_client(settings) as client:
        forecast = post_json(client, RECORD)
        minted = forecast.headers["x-audit-request-id"]
        service = client.app.state.service  # type: ignore[attr-defined]
        names: set[str] = set()
        deadline = time.monotonic() + 20
        while not names >= CONTRACT:
            assert time.monotonic() < deadline, f"never exported: {sorted(CONTRACT - names)}"
            actual = {"request_id": minted, "row": 0, "charges": 5000.0}  # idempotent: repeats add nothing
            assert post_json(client, actual, "/api/v1/actuals").status_code == 200
            time.sleep(0.05)
            names = exported_names(service.metrics.render().decode())
    assert names >= CONTRACT


def rules_resource_text() -> str:
    """The GKE Rules object: this header, then the plain file's groups (comments included) under spec."""
    plain = RULES.read_text(encoding="utf-8")
    committed = GKE_RULES.read_text(encoding="utf-8")
    header = committed[: committed.index("\nspec:\n") + len("\nspec:\n")]
    body = plain[plain.index("\ngroups:\n") + 1 :]
    return header + "".join(f"  {line}" if line.strip() else line for line in body.splitlines(keepends=True))


def test_the_gke_rules_resource_carries_exactly_the_plain_groups() -> None:
    if os.environ.get("CHARGECAST_WRITE_RULES") == "1":
        GKE_RULES.write_text(rules_resource_text(), encoding="utf-8")
    resource = load(GKE_RULES)
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.googleapis.com/v1", "Rules")
    assert resource["spec"]["groups"] == load(RULES)["groups"], (
        f"{GKE_RULES.relative_to(ROOT)} differs from {RULES.relative_to(ROOT)}: "
        "run CHARGECAST_WRITE_RULES=1 .venv/bin/pytest tests/test_alerts.py -k rules_resource"
    )
    assert set(resource) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(resource["spec"]) == {"groups"}


# -- the dashboard -------------------------------------------------------------------------------


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_is_grafana_json_with_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "chargecast"
    panels = dashboard["panels"]
    assert len(panels) >= 8
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
    # No two panels overlap on Grafana's 24-column grid.
    cells = [
        (p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy)
        for p in panels
        for dx in range(p["gridPos"]["w"])
        for dy in range(p["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells))


def test_the_dashboard_shows_what_on_call_needs() -> None:
    used = {name for _, expr in dashboard_expressions() for name in metric_names(expr)}
    assert used == CONTRACT, f"on no panel: {CONTRACT - used}; not in the contract: {used - CONTRACT}"
    quantiles = {m for _, e in dashboard_expressions() for m in re.findall(r"histogram_quantile\((0\.\d+)", e)}
    assert quantiles == {"0.5", "0.99"}
    coverage = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if "chargecast_actuals_coverage" in str(p))
    steps = coverage["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.85, 0.95], "the 0.85-0.95 band of ChargecastIntervalCoverageOff"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's $__rate_interval stands in as 5m)."""
    queries = dashboard_expressions()
    rules = [
        {"record": f"dashboard:panel_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_, expr) in enumerate(queries)
    ]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout


def test_the_contract_pattern_finds_names_and_nothing_else() -> None:
    expr = 'sum by (route) (rate(chargecast_http_requests_total{route="/x"}[5m])) > on(feature) chargecast_ready'
    assert metric_names(expr) == {"chargecast_http_requests_total", "chargecast_ready"}
