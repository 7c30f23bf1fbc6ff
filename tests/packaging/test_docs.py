"""The snippets in docs/ are the ones that work: YAML parses, the Argo CD health Lua behaves,
the helm --set keys exist in the chart."""
from __future__ import annotations

import re

import pytest
import yaml

from pkg_support import CHART, ROOT

DOCS = ["install.md", "gitops.md", "vidi-image.md"]


def blocks(name: str, lang: str) -> list[str]:
    text = (ROOT / "docs" / name).read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("name", DOCS)
def test_yaml_snippets_parse(name):
    for block in blocks(name, "yaml"):
        docs = [d for d in yaml.safe_load_all(block) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), block


def test_argo_ignore_differences_cover_replicas_and_marks():
    text = (ROOT / "docs" / "gitops.md").read_text()
    [spec] = [yaml.safe_load(b)["spec"] for b in blocks("gitops.md", "yaml") if "ignoreDifferences" in b]
    kinds = {d["kind"] for d in spec["ignoreDifferences"]}
    assert kinds == {"Deployment", "StatefulSet"}
    for d in spec["ignoreDifferences"]:
        assert d["group"] == "apps"
        assert d["jsonPointers"] == [
            "/spec/replicas",
            "/metadata/annotations/vidi.dev~1held-by",
            "/metadata/annotations/vidi.dev~1original-replicas",
        ]
    assert "RespectIgnoreDifferences=true" in spec["syncPolicy"]["syncOptions"]
    assert "CoTenantFought" in text


def argo_health_lua() -> str:
    [cm] = [yaml.safe_load(b) for b in blocks("gitops.md", "yaml") if "argocd-cm" in b]
    return cm["data"]["resource.customizations.health.vidi.dev_VidiJob"]


def cond(kind, status, reason="Running", message=""):
    return {"type": kind, "status": status, "reason": reason, "message": message}


def conditions(phase, failed_reason=None, message=""):
    done, failed = phase == "Succeeded", phase == "Failed"
    return [
        cond("Ready", "True" if done else "False", message=message),
        cond("Reconciling", "False" if done or failed else "True", message=message),
        cond("Stalled", "True" if failed else "False", failed_reason or phase, message),
        cond("Complete", "True" if done else "False", message=message),
        cond("Failed", "True" if failed else "False", failed_reason or phase, message),
    ]


def job(phase=None, generation=1, observed=1, suspend=False, **status):
    obj = {"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "metadata": {"name": "j", "generation": generation},
           "spec": {"query": "q", "suspend": suspend}}
    if phase is not None:
        obj["status"] = {"phase": phase, "observedGeneration": observed, "conditions": conditions(phase, status.pop("reason", None), status.get("message", "")), **status}
    return obj


@pytest.mark.parametrize(
    "obj, status, message",
    [
        (job(), "Progressing", "Waiting for vidi-operator"),
        (job("Running"), "Progressing", "Phase Running"),
        (job("Queued", message="waiting for default/other"), "Progressing", "Phase Queued: waiting for default/other"),
        (job("Running", generation=2, observed=1), "Progressing", "Waiting for vidi-operator to observe the new spec"),
        (job("Succeeded", result={"summary": "2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04"}), "Healthy", "2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04"),
        (job("Succeeded", message="done"), "Healthy", "done"),
        (job("Failed", reason="BadInput", message="video missing"), "Degraded", "BadInput: video missing"),
        (job("Running", suspend=True), "Suspended", "spec.suspend is true"),
    ],
    ids=["no-status", "running", "queued", "stale-generation", "succeeded", "succeeded-no-result", "failed", "suspended"],
)
def test_argo_health_lua(obj, status, message):
    import lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(argo_health_lua())
    assert (hs["status"], hs["message"]) == (status, message)


def test_helm_set_keys_in_install_doc_exist_in_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = (ROOT / "docs" / "install.md").read_text()
    keys = re.findall(r"--set '?([A-Za-z][\w.]*)=", text)
    assert keys
    for key in keys:
        node = values
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                assert key.startswith("serviceMonitor.labels."), f"{key} is not a chart value"
                break
