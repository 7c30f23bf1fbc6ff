#!/usr/bin/env bash
# Builds docker/vidi/Dockerfile where no container registry, GitHub or PyTorch index can be
# reached: only Debian's archive (mmdebstrap) and PyPI (pip download), then the build itself runs
# with no network but this machine's loopback.
#   1. base image: mmdebstrap (Debian bookworm: Python 3.11, ffmpeg, libgl1, libglib2.0) + docker
#      import, tagged $BASE_TAG;
#   2. wheelhouse: pip download of torch 2.6.0 (PyPI's Linux wheels carry CUDA 12.4) and upstream's
#      requirements.txt under constraints.txt, for Python 3.11;
#   3. upstream source: a tarball of the local Vidi1.5_9B copy, laid out like GitHub's
#      archive/<commit>.tar.gz;
#   4. both served by `python3 -m http.server` on 127.0.0.1 only for the build (docker build
#      --network host), no flash-attn (the wrapper falls back to its PyTorch stand-in);
#   5. `docker run` of image_check.py in the image; prints the build time and the image size.
#
#   docker/vidi/build-offline.sh UPSTREAM_DIR [TAG]
# UPSTREAM_DIR: upstream's Vidi1.5_9B at the pinned commit (e.g. ../shared/upstream/vidi-1.5-9b;
# CC BY-NC 4.0: the image holds it, this repository does not). Env: WORK (default
# /var/tmp/vidi-offline: base tarball, wheelhouse; reused when present), BASE_TAG
# (vidi-base:bookworm), PORT (8765), VIDI_COMMIT (the Dockerfile's default).
# Needs root, mmdebstrap, docker, python3 with pip. Idempotent.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
upstream="$(cd "${1:?usage: build-offline.sh UPSTREAM_DIR [TAG]}" && pwd)"
tag="${2:-vidi:offline}"
work="${WORK:-/var/tmp/vidi-offline}"
base_tag="${BASE_TAG:-vidi-base:bookworm}"
port="${PORT:-8765}"
commit="${VIDI_COMMIT:-$(sed -n 's/^ARG VIDI_COMMIT=\([0-9a-f]\{40\}\)$/\1/p' "$here/Dockerfile" | head -1)}"
[[ "$commit" =~ ^[0-9a-f]{40}$ ]] || { echo "no VIDI_COMMIT" >&2; exit 2; }
[[ -f "$upstream/vidi/model/builder.py" && -f "$upstream/requirements.txt" ]] \
  || { echo "$upstream is not upstream's Vidi1.5_9B (no vidi/model/builder.py)" >&2; exit 2; }
mkdir -p "$work/serve/wheels" "$work/serve/vidi/archive"
log() { echo "build-offline: $*" >&2; }
started=$(date +%s)

# 1. The base image.
if ! docker image inspect "$base_tag" >/dev/null 2>&1; then
  if [[ ! -s "$work/base.tar" ]]; then
    log "mmdebstrap bookworm -> $work/base.tar"
    mmdebstrap --variant=apt \
      --include=ca-certificates,curl,ffmpeg,libgl1,libglib2.0-0,python3,python3-venv,python3-dev \
      bookworm "$work/base.tar.partial"
    mv "$work/base.tar.partial" "$work/base.tar"
  fi
  log "docker import -> $base_tag"
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$work/base.tar" "$base_tag" >/dev/null
fi
base_python="$(docker run --rm "$base_tag" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
log "base $base_tag: Python $base_python"

# 2. The wheelhouse, for the base's Python: pip download resolves sdists (deepspeed, langid) by
# preparing their metadata, so it runs on a Python of the same minor version as the base's.
# `wheel` and `setuptools` too: those two sdists are built in an isolated environment that
# takes them from the wheelhouse.
host_python="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$host_python" == "$base_python" ]] \
  || { log "python3 here is $host_python, the base's is $base_python: run with a python3 $base_python"; exit 2; }
log "pip download -> $work/serve/wheels"
python3 -m pip download --quiet --dest "$work/serve/wheels" -c "$here/constraints.txt" \
  "torch==2.6.0" "torchvision==0.21.0" "torchaudio==2.6.0" "httpx==0.22.0" "wheel" "setuptools" \
  -r "$upstream/requirements.txt"

# 3. The upstream tarball, as GitHub lays out archive/<commit>.tar.gz.
tarball="$work/serve/vidi/archive/$commit.tar.gz"
if [[ ! -s "$tarball" ]]; then
  stage="$(mktemp -d)"
  mkdir -p "$stage/vidi-$commit"
  cp -r "$upstream" "$stage/vidi-$commit/Vidi1.5_9B"
  tar -czf "$tarball" -C "$stage" "vidi-$commit"
  rm -rf "$stage"
fi

# 4. Serve and build.
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/serve" >"$work/http.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$port/vidi/archive/$commit.tar.gz"
build_started=$(date +%s)
log "docker build -> $tag"
docker build --network host \
  --build-arg CUDA_IMAGE="$base_tag" \
  --build-arg SYSTEM_PACKAGES=preinstalled \
  --build-arg VIDI_REPO="http://127.0.0.1:$port/vidi" \
  --build-arg VIDI_COMMIT="$commit" \
  --build-arg FLASH_ATTN_WHEEL= \
  --build-arg PIP_OPTIONS="--no-index --find-links http://127.0.0.1:$port/wheels/" \
  -t "$tag" "$here"
build_done=$(date +%s)

# 5. The import check, again, in the image as it runs (non-root, no network).
log "image_check.py in $tag"
docker run --rm --network none --entrypoint python "$tag" /opt/vidi-wrapper/image_check.py
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "{\"tag\":\"$tag\",\"buildSeconds\":$((build_done - build_started)),\"totalSeconds\":$((build_done - started)),\"imageBytes\":$size}"
