"""The Helm chart renders, lints and validates clean, and matches the controller's needs."""
from __future__ import annotations

import pytest
import yaml

from pkg_support import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    NON_DEFAULT_VALUES,
    ROOT,
    by_kind,
    objects,
    render,
    validate_vidijob,
)

# Kinds kubernetes-validate has no schema for (CRD types); checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kube_validate(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def operator_container(objs: list[dict]) -> dict:
    [deploy] = by_kind(objs, "Deployment")
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    return container


# --- rendering and validation ------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "custom"])
def test_every_rendered_object_validates_strictly(which, default_render, custom_render):
    rendered = default_render if which == "default" else custom_render
    objs = objects(rendered)
    assert objs
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            continue
        kube_validate(obj)


@pytest.mark.parametrize("values", [None, NON_DEFAULT_VALUES], ids=["default", "custom"])
def test_chart_lints_clean(values):
    import helm_python as helm

    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_chart_crds_are_a_byte_identical_copy_of_the_generated_crds():
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    in_chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert in_chart == generated, "run scripts/sync-chart-crds.sh"
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/vidi-operator/crds/{name} differs from crds/{name}: run scripts/sync-chart-crds.sh"
        )


def test_chart_crds_validate_as_customresourcedefinitions():
    for path in (CHART / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kube_validate(doc)


def test_app_version_matches_the_crate_version():
    import tomllib

    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == crate


# --- defaults ---------------------------------------------------------------------------


def test_default_render_has_the_expected_objects(default_render):
    kinds = sorted(o["kind"] for o in objects(default_render))
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"])


def test_default_deployment_runs_the_controller(default_render):
    objs = objects(default_render)
    [deploy] = by_kind(objs, "Deployment")
    c = operator_container(objs)
    assert deploy["spec"]["replicas"] == 1
    assert c["image"] == "ghcr.io/vidi-dev/vidi-operator:0.1.0"
    assert c["args"] == [
        "run",
        "--metrics-addr=0.0.0.0:8080",
        "--log-format=json",
        "--vidi-image=ghcr.io/vidi-dev/vidi:0.1.0",
        "--gate-image=ghcr.io/vidi-dev/vidi-operator:0.1.0",
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_security_context_is_restricted(default_render):
    objs = objects(default_render)
    [deploy] = by_kind(objs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    sc = operator_container(objs)["securityContext"]
    assert sc["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] != 0


def test_service_selects_the_operator_pods(default_render):
    objs = objects(default_render)
    [deploy] = by_kind(objs, "Deployment")
    [svc] = by_kind(objs, "Service")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert deploy["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_cluster_role_rules_are_exactly_the_generated_rules(default_render, rbac_rules):
    objs = objects(default_render)
    [role] = by_kind(objs, "ClusterRole")
    assert role["rules"] == rbac_rules
    [binding] = by_kind(objs, "ClusterRoleBinding")
    [sa] = by_kind(objs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    [deploy] = by_kind(objs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_notes_tell_how_to_submit_and_watch_a_first_job(default_render):
    notes = default_render["NOTES"]
    assert "kind: VidiJob" in notes
    assert "kubectl -n default get vj -w" in notes
    assert "kubectl -n default wait --for=condition=Complete vj/first-job" in notes
    assert "kubectl -n default apply -f -" in notes
    # The job in NOTES is itself a valid VidiJob.
    start = notes.index("apiVersion: vidi.dev/v1alpha1")
    end = notes.index("YAML", start)
    job = yaml.safe_load(notes[start:end])
    validate_vidijob(job)


# --- non-default values -----------------------------------------------------------------


def test_notes_use_a_watched_namespace(custom_render):
    # With watchNamespaces set, a job applied elsewhere would never be seen.
    notes = custom_render["NOTES"]
    assert "kubectl -n team-a apply -f -" in notes, notes
    assert "kubectl -n team-a label deployment/cosyvoice" in notes, notes
    assert "kubectl -n team-a get vj -w" in notes, notes


def test_custom_render_has_the_expected_objects(custom_render):
    kinds = sorted(o["kind"] for o in objects(custom_render))
    assert kinds == sorted(
        ["ServiceAccount", "Deployment", "Service", "ServiceMonitor", "PodDisruptionBudget"]
        + ["Role", "RoleBinding"] * 3  # team-a, team-b, leader election
        + ["ClusterRole", "ClusterRoleBinding"]  # nodes, cluster-scoped
    )


def test_custom_deployment_args(custom_render):
    objs = objects(custom_render)
    [deploy] = by_kind(objs, "Deployment")
    c = operator_container(objs)
    assert deploy["spec"]["replicas"] == 2
    assert c["image"] == "registry.example.com/vidi-operator:1.2.3"
    assert c["args"] == [
        "run",
        "--metrics-addr=0.0.0.0:8080",
        "--log-format=json",
        "--leader-election",
        "--watch-namespaces=team-a,team-b",
        "--vidi-image=registry.example.com/vidi:1.5.0",
        "--gate-image=registry.example.com/vidi-operator:1.2.3",
        "--gate-timeout=15m",
        "--dry-run",
        "--some-flag=x",
    ]
    assert deploy["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_namespaced_roles_carry_exactly_the_generated_rules(custom_render, rbac_rules):
    objs = objects(custom_render)
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(objs, "Role")}
    # Only nodes (cluster-scoped, read-only) need a ClusterRole.
    node_rules = [r for r in rbac_rules if "nodes" in r["resources"]]
    assert node_rules and all(set(r["verbs"]) <= {"get", "list", "watch"} for r in node_rules)
    [cluster_role] = by_kind(objs, "ClusterRole")
    assert cluster_role["metadata"]["name"] == "vidi-vidi-operator-nodes"
    assert cluster_role["rules"] == node_rules
    [cluster_binding] = by_kind(objs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "vidi-vidi-operator-nodes",
    }
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": "vidi-vidi-operator", "namespace": NAMESPACE}]
    for ns in ["team-a", "team-b"]:
        assert roles[(ns, "vidi-vidi-operator")]["rules"] == rbac_rules
    lease_rules = [r for r in rbac_rules if "coordination.k8s.io" in r["apiGroups"]]
    assert lease_rules, "the generated rules must cover the leader-election Lease"
    assert roles[(NAMESPACE, "vidi-vidi-operator-leader-election")]["rules"] == lease_rules
    bindings = by_kind(objs, "RoleBinding")
    for b in bindings:
        role = roles[(b["metadata"]["namespace"], b["roleRef"]["name"])]
        assert b["roleRef"]["kind"] == "Role" and role
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "vidi-vidi-operator", "namespace": NAMESPACE}]


def test_pdb_only_with_several_replicas(default_render, custom_render):
    assert not by_kind(objects(default_render), "PodDisruptionBudget")
    [pdb] = by_kind(objects(custom_render), "PodDisruptionBudget")
    [deploy] = by_kind(objects(custom_render), "Deployment")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]


def test_service_monitor_scrapes_the_metrics_service(custom_render):
    # ServiceMonitor is a Prometheus Operator CRD type kubernetes-validate has no schema for:
    # checked loosely here (shape, and that it selects the metrics Service's port).
    objs = objects(custom_render)
    [sm] = by_kind(objs, "ServiceMonitor")
    [svc] = by_kind(objs, "Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [ep] = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["path"] == "/metrics"


def test_one_controller_at_a_time(default_render, custom_render):
    # Without leader election a rolling update would run two controllers at once.
    [single] = by_kind(objects(default_render), "Deployment")
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    [ha] = by_kind(objects(custom_render), "Deployment")
    assert ha["spec"]["strategy"]["type"] == "RollingUpdate"


def test_leader_election_can_be_forced_with_one_replica():
    objs = objects(render({"leaderElection": {"enabled": True}}))
    assert "--leader-election" in operator_container(objs)["args"]
    assert not by_kind(objs, "PodDisruptionBudget")


def test_gate_image_override_and_digest():
    objs = objects(
        render({"gateImage": "example.com/gate:9", "image": {"repository": "example.com/op", "digest": "sha256:" + "a" * 64}})
    )
    c = operator_container(objs)
    assert c["image"] == "example.com/op@sha256:" + "a" * 64
    assert "--gate-image=example.com/gate:9" in c["args"]


def test_rbac_and_service_account_can_be_disabled():
    objs = objects(render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}}))
    assert sorted(o["kind"] for o in objs) == ["Deployment", "Service"]
    [deploy] = by_kind(objs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "two"},
        {"watchNamespaces": ["Team_A"]},
        {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
        {"unknownKey": True},
        {"serviceMonitor": {"enabled": "yes"}},
        {"gateTimeout": "ten minutes"},
    ],
    ids=["replicas-string", "bad-namespace", "bad-pull-policy", "unknown-key", "bool-as-string", "bad-duration"],
)
def test_schema_rejects_bad_values(bad):
    import helm_python as helm

    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema(bad)


def test_rendered_flags_are_flags_the_binary_accepts(custom_render):
    """Opt-in (CI sets VIDI_OPERATOR_BIN to a built binary): every flag the chart passes to
    `vidi-operator run` is one its --help lists."""
    import os
    import re
    import subprocess

    binary = os.environ.get("VIDI_OPERATOR_BIN")
    if not binary:
        pytest.skip("set VIDI_OPERATOR_BIN=target/debug/vidi-operator to compare the chart's flags with the binary")
    help_text = subprocess.run([binary, "run", "--help"], capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))
    args = operator_container(objects(custom_render))["args"]
    assert args[0] == "run"
    passed = {a.split("=", 1)[0] for a in args[1:] if a != "--some-flag=x"}
    assert passed <= known, f"flags the binary does not know: {sorted(passed - known)}"
