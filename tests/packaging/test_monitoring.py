"""The chart's Grafana dashboard and PrometheusRule: off by default; when on, the dashboard
ConfigMap carries the sidecar's label and the dashboard JSON, and the alert rules pass
`promtool check rules` and fire on the series they are meant for (`promtool test rules`).
Their metric names are checked against a live scrape of the operator in tests/kube_metrics.rs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from pkg_support import CHART, KUBE_VERSION, NAMESPACE, by_kind, objects, render

MONITORING = {
    "serviceMonitor": {"enabled": True},
    "monitoring": {
        "dashboard": {"enabled": True},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "coTenantHeldMinutes": 45,
            "queuedMinutes": 20,
            "reconcileErrorsFor": "10m",
            "noLeaderFor": "3m",
        },
    },
}


@pytest.fixture(scope="module")
def monitoring_render() -> dict:
    return render(MONITORING)


def the_rule(rendered: dict) -> dict:
    [rule] = by_kind(objects(rendered), "PrometheusRule")
    return rule


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    reason = "promtool not found: Debian's `prometheus` package provides it (scripts/test installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def test_both_are_off_by_default(default_render):
    objs = objects(default_render)
    assert not by_kind(objs, "PrometheusRule")
    assert not by_kind(objs, "ConfigMap")


def test_both_render_and_lint_clean_when_on(monitoring_render):
    import helm_python as helm
    import kubernetes_validate

    objs = objects(monitoring_render)
    [cm] = by_kind(objs, "ConfigMap")
    kubernetes_validate.validate(cm, KUBE_VERSION, strict=True)
    assert the_rule(monitoring_render)["apiVersion"] == "monitoring.coreos.com/v1"
    report = helm.lint(CHART, MONITORING, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard(monitoring_render):
    [cm] = by_kind(objects(monitoring_render), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    [(key, text)] = cm["data"].items()
    assert key.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ["Jobs by phase", "Queue", "Co-tenants held", "Held for", "Reconciles and errors", "Leader"]:
        assert wanted in titles, titles
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_namespace_can_be_set():
    objs = objects(render({"monitoring": {"dashboard": {"enabled": True, "namespace": "grafana"}}}))
    [cm] = by_kind(objs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "grafana"
    assert not by_kind(objs, "PrometheusRule")


def test_rule_has_the_four_alerts_with_the_configured_thresholds(monitoring_render):
    rule = the_rule(monitoring_render)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    [group] = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {"VidiCoTenantHeldTooLong", "VidiJobQueuedTooLong", "VidiReconcileErrors", "VidiNoLeader"}
    assert alerts["VidiCoTenantHeldTooLong"]["expr"].endswith("> 2700")
    assert alerts["VidiJobQueuedTooLong"]["expr"].endswith("> 1200")
    assert alerts["VidiReconcileErrors"]["for"] == "10m"
    assert alerts["VidiNoLeader"]["for"] == "3m"


def rules_file(rendered: dict, tmp_path) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": the_rule(rendered)["spec"]["groups"]}))
    return str(path)


def test_rules_pass_promtool_check(monitoring_render, tmp_path):
    tool = promtool()
    out = subprocess.run([tool, "check", "rules", rules_file(monitoring_render, tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 rules found" in out.stdout, out.stdout


# Series over time (promtool's expanding notation: 'a+bxN' is N+1 samples from a, step b).
HELD = {
    "summary": "A GPU co-tenant has been suspended for more than 45 minutes",
    "description": "Deployment media/cosyvoice has been held for 46m 0s. `kubectl vidi status -A` shows which job holds it.",
}
QUEUED = {
    "summary": "A VidiJob has waited for its GPU for more than 20 minutes",
    "description": "The oldest waiting VidiJob has existed for 25m 0s. `kubectl vidi status -A` shows the queue.",
}
NO_LEADER = {
    "summary": "No vidi-operator replica is acting",
    "description": "No replica has led for 3m: VidiJobs are not reconciled and held co-tenants are not restored.",
}
ERRORS = {
    "summary": "vidi-operator reconciles keep failing",
    "description": "Reconciles have failed for 10m (0.10 per second). See the operator log and the VidiJobs' Events.",
}
WARNING = {"severity": "warning"}

RULE_TESTS = {
    "evaluation_interval": "1m",
    "tests": [
        {
            # Held 40 minutes, then 50: fires past 45 minutes (2700 s), not before.
            "interval": "1m",
            "input_series": [
                {
                    "series": 'vidi_operator_co_tenant_held_seconds{kind="Deployment",workload_namespace="media",workload="cosyvoice",pod="op-1"}',
                    "values": "2400+60x20",
                },
                {"series": 'vidi_operator_leader{pod="op-1"}', "values": "1x20"},
                {"series": 'vidi_operator_queue_oldest_seconds{pod="op-1"}', "values": "0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "VidiCoTenantHeldTooLong", "exp_alerts": []},
                {
                    "eval_time": "6m",
                    "alertname": "VidiCoTenantHeldTooLong",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "kind": "Deployment",
                                "workload_namespace": "media",
                                "workload": "cosyvoice",
                            },
                            "exp_annotations": HELD,
                        }
                    ],
                },
                {"eval_time": "10m", "alertname": "VidiNoLeader", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "VidiJobQueuedTooLong", "exp_alerts": []},
            ],
        },
        {
            # Nobody leads (a standby's 0, then no series at all); a job waits 25 minutes.
            "interval": "1m",
            "input_series": [
                {"series": 'vidi_operator_leader{pod="op-2"}', "values": "0x5"},
                {"series": 'vidi_operator_queue_oldest_seconds{pod="op-2"}', "values": "1500x5"},
                {
                    "series": 'vidi_operator_reconcile_errors_total{error="Write",pod="op-2"}',
                    "values": "0+6x20",
                },
                {
                    "series": 'vidi_operator_reconcile_errors_total{error="StillReleasing",pod="op-2"}',
                    "values": "0+6x20",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "VidiNoLeader", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "VidiNoLeader", "exp_alerts": [{"exp_labels": WARNING, "exp_annotations": NO_LEADER}]},
                {"eval_time": "15m", "alertname": "VidiNoLeader", "exp_alerts": [{"exp_labels": WARNING, "exp_annotations": NO_LEADER}]},
                {"eval_time": "2m", "alertname": "VidiJobQueuedTooLong", "exp_alerts": [{"exp_labels": WARNING, "exp_annotations": QUEUED}]},
                {"eval_time": "8m", "alertname": "VidiReconcileErrors", "exp_alerts": []},
                {"eval_time": "16m", "alertname": "VidiReconcileErrors", "exp_alerts": [{"exp_labels": WARNING, "exp_annotations": ERRORS}]},
            ],
        },
        {
            # Only the errors that are part of normal work: no alert.
            "interval": "1m",
            "input_series": [
                {"series": 'vidi_operator_leader{pod="op-3"}', "values": "1x20"},
                {
                    "series": 'vidi_operator_reconcile_errors_total{error="Replan",pod="op-3"}',
                    "values": "0+6x20",
                },
            ],
            "alert_rule_test": [{"eval_time": "20m", "alertname": "VidiReconcileErrors", "exp_alerts": []}],
        },
    ],
}


def test_alerts_fire_on_the_series_they_watch(monitoring_render, tmp_path):
    tool = promtool()
    rules = rules_file(monitoring_render, tmp_path)
    spec = dict(RULE_TESTS, rule_files=[rules])
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "bad",
    [
        {"monitoring": {"prometheusRule": {"coTenantHeldMinutes": "an hour"}}},
        {"monitoring": {"prometheusRule": {"queuedMinutes": 0}}},
        {"monitoring": {"prometheusRule": {"noLeaderFor": "5 minutes"}}},
        {"monitoring": {"dashboard": {"enabled": "yes"}}},
        {"monitoring": {"grafana": {}}},
    ],
    ids=["minutes-string", "minutes-zero", "bad-duration", "bool-as-string", "unknown-key"],
)
def test_schema_rejects_bad_monitoring_values(bad):
    import helm_python as helm

    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema(bad)
