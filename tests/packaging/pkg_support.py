"""Shared helpers for the packaging tests (chart, examples, Dockerfiles)."""
from __future__ import annotations

import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "vidi-operator"
RELEASE = "vidi"
NAMESPACE = "vidi-system"
# The newest Kubernetes the pinned kubernetes-validate ships schemas for; the chart's
# kubeVersion (>=1.30) is also linted against this.
KUBE_VERSION = "1.37.0"

NON_DEFAULT_VALUES = {
    "replicaCount": 2,
    "watchNamespaces": ["team-a", "team-b"],
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    "image": {"repository": "registry.example.com/vidi-operator", "tag": "1.2.3"},
    "vidiImage": {"repository": "registry.example.com/vidi", "tag": "1.5.0"},
    "dryRun": True,
    "gateTimeout": "15m",
    "extraArgs": ["--some-flag=x"],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "serviceAccount": {"annotations": {"example.com/role": "vidi"}},
}


def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(values: dict | None = None) -> dict[str, list[dict]]:
    """Renders the chart; returns the objects of each template (NOTES.txt as text under 'NOTES')."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        if values is not None:
            chart.validate_schema(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out: dict[str, list[dict]] = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            out["NOTES"] = text  # type: ignore[assignment]
        else:
            out[path] = load_yaml_docs(text)
    return out


def objects(rendered: dict) -> list[dict]:
    return [o for k, docs in rendered.items() if k != "NOTES" for o in docs]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def _strict(schema):
    """The CRD's schema, refusing unknown fields as `kubectl apply` (field validation Strict) does."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def vidijob_schema() -> dict:
    crd = yaml.safe_load((ROOT / "crds" / "vidijob.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # apiVersion, kind and metadata are implicit in a CRD's schema.
    schema["properties"] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        **schema["properties"],
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema


def validate_vidijob(job: dict) -> None:
    """Structural check of a VidiJob against the generated CRD schema (types, enums, bounds,
    required and unknown fields). CEL rules and the Rust validator are checked by the Rust
    example test."""
    import jsonschema

    assert job.get("apiVersion") == "vidi.dev/v1alpha1", job.get("apiVersion")
    assert job.get("kind") == "VidiJob"
    assert job["metadata"].get("name")
    jsonschema.validate(job, vidijob_schema())
