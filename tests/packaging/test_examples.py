"""examples/: every object is valid for Kubernetes; every VidiJob fits the generated CRD schema;
the invalid corpus is well-formed. (CEL rules and the Rust validator run in the Rust example test.)"""
from __future__ import annotations

import re

import jsonschema
import pytest
import yaml

from pkg_support import KUBE_VERSION, ROOT, validate_vidijob

EXAMPLES = ROOT / "examples"
# examples/docker/ holds Docker-host jobs (hostPath, commands): not Kubernetes manifests.
VALID_FILES = sorted(
    p for p in EXAMPLES.rglob("*.yaml") if not p.relative_to(EXAMPLES).parts[0] in {"invalid", "docker"}
)
INVALID_FILES = sorted((EXAMPLES / "invalid").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\S+)\s*$", re.MULTILINE)


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def ids(paths):
    return [str(p.relative_to(EXAMPLES)) for p in paths]


def test_the_examples_are_there():
    names = {str(p.relative_to(EXAMPLES)) for p in VALID_FILES}
    assert {"co-tenants/cosyvoice.yaml", "co-tenants/comfyui.yaml"} <= names
    jobs = [d for p in VALID_FILES for d in docs(p) if d["kind"] == "VidiJob"]
    specs = [j["spec"] for j in jobs]
    assert any("url" in s["video"] for s in specs)
    assert any("volume" in s["video"] for s in specs)
    assert any(s["model"].get("precision") == "auto" for s in specs)
    assert any(s.get("coTenants", {}).get("namespaces") for s in specs)
    assert len(INVALID_FILES) >= 9


@pytest.mark.parametrize("path", VALID_FILES, ids=ids(VALID_FILES))
def test_example_objects_validate(path):
    import kubernetes_validate

    objs = docs(path)
    assert objs, f"{path} is empty"
    for obj in objs:
        if obj["kind"] == "VidiJob":
            validate_vidijob(obj)
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("path", VALID_FILES, ids=ids(VALID_FILES))
def test_co_tenants_opt_in_and_request_a_gpu(path):
    for obj in docs(path):
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            assert obj["metadata"]["labels"].get("vidi.dev/yield-gpu") == "true"
            limits = [c["resources"]["limits"] for c in obj["spec"]["template"]["spec"]["containers"]]
            assert any("nvidia.com/gpu" in lim for lim in limits)


@pytest.mark.parametrize("path", INVALID_FILES, ids=ids(INVALID_FILES))
def test_invalid_example_names_its_field(path):
    text = path.read_text()
    expects = EXPECT.findall(text)
    assert len(expects) == 1, f"{path}: expected exactly one '# expect: <field path>' line"
    assert expects[0].startswith("spec."), expects
    [job] = docs(path)
    assert job["kind"] == "VidiJob" and job["metadata"]["name"].startswith("invalid-")


def test_the_invalid_corpus_covers_the_cases():
    fields = {EXPECT.search(p.read_text()).group(1) for p in INVALID_FILES}
    assert {
        "spec.video",
        "spec.query",
        "spec.video.hostPath",
        "spec.backoffLimit",
        "spec.model.precision",
        "spec.coTenants.refs[0].kind",
        "spec.model.weights.hostPath",
        "spec.video.volume.path",
    } <= fields


@pytest.mark.parametrize("name", ["backoff-limit-99", "bad-precision"])
def test_schema_level_mistakes_are_refused_by_the_schema_alone(name):
    # The rest need CEL (kind Command, blank query, one video source, relative path) or the
    # Rust validator (hostPath on Kubernetes): the Rust example test checks those.
    [job] = docs(EXAMPLES / "invalid" / f"{name}.yaml")
    with pytest.raises(jsonschema.ValidationError):
        validate_vidijob(job)
