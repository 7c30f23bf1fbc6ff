#!/usr/bin/env bash
# See vidi-operator work on any machine with Docker, in one command: no GPU, no registry, no
# model weights. It builds a stand-in Vidi image and two stand-in co-tenants locally (from
# Debian's busybox-static), runs a real VidiJob with `docker run --gpus none`, shows the
# co-tenants stopping and coming back, and removes everything it made.
#   examples/quickstart/quickstart.sh
# Uses `vidi-operator` from $VIDI_OPERATOR, else from PATH, else builds it with cargo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bin="${VIDI_OPERATOR:-}"
if [ -z "$bin" ]; then
  if command -v vidi-operator >/dev/null; then
    bin="$(command -v vidi-operator)"
  else
    say "building vidi-operator (cargo build --locked; a few minutes the first time)"
    (cd "$root" && cargo build --locked --quiet --bin vidi-operator)
    bin="$root/target/debug/vidi-operator"
  fi
fi
docker info >/dev/null 2>&1 || { echo "quickstart: no Docker engine answers (docker info)" >&2; exit 1; }
if [ ! -x /bin/busybox ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  else
    echo "quickstart: needs /bin/busybox for the stand-in images: sudo apt-get install busybox-static" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
tag="vidi-quickstart-$$"
image="vidi-quickstart/stand-in:$$"
cleanup() {
  [ -f "$work/comfy.pid" ] && kill "$(cat "$work/comfy.pid")" 2>/dev/null || true
  docker rm -f "$tag-cosyvoice" "$tag-comfyui-api" >/dev/null 2>&1 || true
  docker rmi "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "building a stand-in Vidi image ($image) from tests/images/fake-vidi"
mkdir -p "$work/image" "$work/weights"
cp "$root"/tests/images/fake-vidi/* /bin/busybox "$work/image/"
"$bin" docker build --tag "$image" "$work/image" 2>/dev/null

say "starting the GPU's co-tenants: two containers that opt in, and a process started from a shell"
for c in cosyvoice comfyui-api; do
  docker run -d --name "$tag-$c" --label vidi.dev/yield-gpu=true --label "vidi-quickstart=$tag" \
    --restart unless-stopped --entrypoint /bin/sh "$image" /cotenant.sh >/dev/null
done
cat > "$work/comfy.sh" <<'SH'
#!/bin/sh
trap 'exit 0' TERM
while :; do sleep 1; done
SH
sh -c "sh '$work/comfy.sh' </dev/null >/dev/null 2>&1 & echo \$! > '$work/comfy.pid'"
echo "a stand-in video" > "$work/talk.mp4"
cat > "$work/job.yaml" <<YAML
apiVersion: vidi.dev/v1alpha1
kind: VidiJob
metadata:
  name: quickstart
spec:
  video: {hostPath: $work/talk.mp4}
  query: "the speaker holds up a red book"
  model:
    image: $image
    weights: {hostPath: $work/weights}
  coTenants:
    selector: {matchLabels: {vidi-quickstart: $tag}}
    commands:
      - name: comfyui
        stop: "kill \$(cat $work/comfy.pid) 2>/dev/null; true"
        start: "sh -c \"sh $work/comfy.sh </dev/null >/dev/null 2>&1 & echo \\\\\$! > $work/comfy.pid\""
        check: "kill -0 \$(cat $work/comfy.pid) 2>/dev/null"
YAML
docker ps --filter "label=vidi-quickstart=$tag" --format '  {{.Names}}: {{.Status}}'

say "what would happen (--dry-run changes nothing)"
"$bin" docker run -f "$work/job.yaml" --gpus none --state-dir "$work/state" --dry-run

say "running the job: stop the co-tenants, run (stand-in) Vidi, start them again"
"$bin" docker run -f "$work/job.yaml" --gpus none --state-dir "$work/state" --stop-timeout 5s

say "the co-tenants are back"
docker ps --filter "label=vidi-quickstart=$tag" --format '  {{.Names}}: {{.Status}}'
kill -0 "$(cat "$work/comfy.pid")" && echo "  comfyui (pid $(cat "$work/comfy.pid")): running"
say "done: now edit examples/docker/vidijob.yaml for your own co-tenants, image and weights"
