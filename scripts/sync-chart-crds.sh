#!/usr/bin/env bash
# Copies the generated CRDs (crds/, produced by `vidi-operator crd`) into the Helm chart.
# tests/packaging checks the two stay byte-identical.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/charts/vidi-operator/crds"
cp "$root/crds/vidijob.yaml" "$root/charts/vidi-operator/crds/vidijob.yaml"
echo "synced crds/vidijob.yaml -> charts/vidi-operator/crds/vidijob.yaml"
