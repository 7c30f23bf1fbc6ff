#!/usr/bin/env bash
# Runs docker/vidi/vidi_entrypoint.py -- the real upstream code path, no double -- on a GPU,
# with the tiny random checkpoint of docker/vidi/make_tiny_vidi.py, over upstream's dummy.mp4
# and an ffmpeg-made video, at fp16, int8 and int4; then once more with the process's CUDA
# memory capped so that loading fails (expects exit 3). Writes to OUT_DIR:
#   summary.json   one entry per run: video, precision, exit code, seconds, the compact
#                  termination JSON, result.json, and whether the operator's checks accept it
#   runs.log       every run's stderr and stdout
#   outputs.tar.gz each run's output dir (result.json, preview.html, thumbnails)
#
#   scripts/vidi-gpu-smoke.sh UPSTREAM_DIR TINY_DIR WRAPPER_DIR OUT_DIR
# UPSTREAM_DIR: upstream Vidi1.5_9B (vidi/, dummy.mp4); TINY_DIR: make_tiny_vidi.py's --out;
# WRAPPER_DIR: docker/vidi. Needs python3 with torch (CUDA), upstream's imports, ffmpeg/ffprobe
# on PATH. Exit 0 only when every run ended as expected.
set -uo pipefail

upstream="$(cd "$1" && pwd)"
tiny="$(cd "$2" && pwd)"
wrapper="$(cd "$3" && pwd)"
out="$4"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
log="$out/runs.log"
: >"$log"

# A 12 s video: red until 5 s, then blue; silent until 5 s, then a 440 Hz tone.
generated="$work/red-blue-tone.mp4"
ffmpeg -nostdin -v error -y \
  -f lavfi -i "color=c=red:s=320x240:r=25:d=5" \
  -f lavfi -i "color=c=blue:s=320x240:r=25:d=7" \
  -f lavfi -i "sine=frequency=440:sample_rate=16000:duration=12" \
  -filter_complex "[0:v][1:v]concat=n=2:v=1:a=0[v];[2:a]volume=enable='lt(t,5)':volume=0[a]" \
  -map "[v]" -map "[a]" -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest "$generated" \
  || { echo "ffmpeg could not make the test video" >&2; exit 1; }

runs=()
run() { # name video precision expected-exit [extra env...]
  local name="$1" video="$2" precision="$3" expected="$4"
  shift 4
  local dir="$work/out/$name"
  mkdir -p "$dir"
  local start end rc
  start=$(date +%s.%N)
  env HF_HOME="$tiny/hf-cache" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    VIDI_UPSTREAM_DIR="$upstream" VIDI_MODEL_PATH="$tiny/model" VIDI_VIDEO="$video" \
    VIDI_QUERY="the screen turns blue" VIDI_PRECISION="$precision" VIDI_OUTPUT_DIR="$dir" \
    VIDI_TERMINATION_LOG="$dir/termination-log" "$@" \
    python3 "$wrapper/vidi_entrypoint.py" >"$work/$name.stdout" 2>"$work/$name.stderr"
  rc=$?
  end=$(date +%s.%N)
  { echo "=== $name: exit $rc (expected $expected)"; cat "$work/$name.stderr" "$work/$name.stdout"; } >>"$log"
  runs+=("$name|$video|$precision|$expected|$rc|$start|$end|$dir")
  echo "$name: exit $rc (expected $expected)"
}

for precision in fp16 int8 int4; do
  run "dummy-$precision" "$upstream/dummy.mp4" "$precision" 0
  run "generated-$precision" "$generated" "$precision" 0
done
# 1e-6 of the GPU's memory: the first weight the loader puts on the GPU does not fit.
run "oom-fp16" "$upstream/dummy.mp4" fp16 3 VIDI_CUDA_MEMORY_FRACTION=0.000001

printf '%s\n' "${runs[@]}" >"$work/runs.txt"
python3 - "$out/summary.json" "$work/runs.txt" <<'PY'
import json, sys
from pathlib import Path

def operator_accepts(text):
    """What plan::outcome::parse_result checks of the compact result."""
    try:
        body = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}"
    segs = body.get("segments")
    if not isinstance(segs, list):
        return "no segments list"
    for i, seg in enumerate(segs):
        if not (isinstance(seg, list) and len(seg) == 2 and all(isinstance(x, (int, float)) for x in seg)):
            return f"segments[{i}] is not a pair of numbers"
        if not (0 <= seg[0] <= seg[1]):
            return f"segments[{i}] is not a range of seconds"
    if body.get("precision") not in (None, "fp16", "int8", "int4"):
        return "unknown precision"
    if len(text.encode()) > 4096:
        return "over 4096 bytes"
    return "ok"

entries, ok = [], True
for line in open(sys.argv[2]).read().split("\n"):
    if not line.strip():
        continue
    name, video, precision, expected, rc, start, end, d = line.split("|")
    d = Path(d)
    term = (d / "termination-log").read_text() if (d / "termination-log").exists() else None
    result = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else None
    entry = {
        "run": name, "video": Path(video).name, "precision": precision,
        "expectedExit": int(expected), "exit": int(rc),
        "seconds": round(float(end) - float(start), 1),
        "termination": term, "result": result,
        "files": sorted(p.name for p in d.iterdir()),
    }
    if int(rc) == 0:
        entry["operatorParses"] = operator_accepts(term or "")
        ok &= entry["operatorParses"] == "ok" and result is not None and (result.get("peakVramBytes") or 0) > 0
    ok &= int(rc) == int(expected)
    entries.append(entry)
json.dump({"allAsExpected": bool(ok), "runs": entries}, open(sys.argv[1], "w"), indent=2)
print(json.dumps({"allAsExpected": bool(ok)}))
sys.exit(0 if ok else 1)
PY
status=$?
cp "$generated" "$work/out/"
tar -czf "$out/outputs.tar.gz" -C "$work" out
rm -rf "$work"
exit "$status"
