#!/usr/bin/env python3
"""Entrypoint of the Vidi image: the Vidi container contract (DESIGN.md) around upstream Vidi 1.5 9B.

Inputs (environment):
  VIDI_VIDEO         path of the video, or an http(s) URL downloaded first
  VIDI_QUERY         the text to find in the video
  VIDI_MODEL_PATH    directory of the Vidi 1.5 9B weights (read-only mount)
  VIDI_PRECISION     auto | fp16 | int8 | int4 (auto = fp16 here; the operator retries lower)
  VIDI_OUTPUT_DIR    where result.json is written (optional: without it only the compact result)
  VIDI_TERMINATION_LOG  where the compact result goes (default /dev/termination-log)
  VIDI_WORK_DIR      scratch directory for downloads (default: the system temp dir)
  VIDI_UPSTREAM_DIR  the upstream Vidi1.5_9B checkout (default /opt/vidi)

Exit codes: 0 success; 2 bad input (video missing/unreadable, empty query, bad precision);
3 CUDA out of memory; 1 anything else. On every exit the termination log holds either the
compact result JSON (0) or a one-line reason.

torch and the upstream code are imported only inside run_model / when already loaded, so the
contract logic is testable without a GPU, torch or the model.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_GPU_MEMORY = 3

PRECISIONS = ("auto", "fp16", "int8", "int4")
# Precision -> upstream load_pretrained_model(load_8bit=, load_4bit=).
LOADER_FLAGS = {"fp16": (False, False), "int8": (True, False), "int4": (False, True)}
# Kubernetes keeps at most 4096 bytes of a termination message; stay below.
TERMINATION_MAX_BYTES = 4000
REASON_MAX_CHARS = 1000
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_CHUNK = 1 << 20

# `HH:MM:SS-HH:MM:SS` (hours of any width, optional fractional seconds, any spacing).
_CLOCK = r"(\d+)\s*:\s*(\d{1,2})\s*:\s*(\d{1,2}(?:\.\d+)?)"
_SEGMENT = re.compile(_CLOCK + r"\s*[-\u2013\u2014]\s*" + _CLOCK)


class BadInput(Exception):
    """The job's input cannot work, whatever the retry: exit 2."""


class TransientError(Exception):
    """Something outside the input failed (network, server): exit 1, worth a retry."""


@dataclass(frozen=True)
class Inputs:
    video: str
    query: str
    model_path: str
    requested_precision: str
    precision: str
    output_dir: Path | None


# --- inputs ------------------------------------------------------------------------------


def effective_precision(requested: str) -> str:
    """auto runs at fp16: the operator lowers the precision itself after an exit 3."""
    return "fp16" if requested == "auto" else requested


def read_inputs(env: dict[str, str]) -> Inputs:
    query = env.get("VIDI_QUERY", "")
    if not query.strip():
        raise BadInput("VIDI_QUERY: expected the text to find in the video; it is empty")
    video = env.get("VIDI_VIDEO", "").strip()
    if not video:
        raise BadInput("VIDI_VIDEO: expected a video path or an http(s) URL; it is empty")
    requested = env.get("VIDI_PRECISION", "auto").strip().lower() or "auto"
    if requested not in PRECISIONS:
        raise BadInput(f"VIDI_PRECISION: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    model_path = env.get("VIDI_MODEL_PATH", "").strip()
    if not model_path:
        raise BadInput("VIDI_MODEL_PATH: expected the directory of the Vidi weights; it is empty")
    if not Path(model_path).is_dir():
        raise BadInput(f"VIDI_MODEL_PATH: {model_path} is not a directory (are the weights mounted?)")
    out = env.get("VIDI_OUTPUT_DIR", "").strip()
    return Inputs(
        video=video,
        query=query.strip(),
        model_path=model_path,
        requested_precision=requested,
        precision=effective_precision(requested),
        output_dir=Path(out) if out else None,
    )


def prepare_output_dir(path: Path | None) -> None:
    """Fails early (before the model loads for minutes) when result.json could not be written."""
    if path is None:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeError(f"VIDI_OUTPUT_DIR: cannot create {path}: {e.strerror or e}") from e
    if not os.access(path, os.W_OK):
        raise RuntimeError(f"VIDI_OUTPUT_DIR: {path} is not writable by uid {os.getuid()}")


def is_url(video: str) -> bool:
    return urllib.parse.urlsplit(video).scheme.lower() in {"http", "https"}


def download(url: str, work_dir: Path) -> Path:
    """Fetches the video. 4xx (and an empty body) is bad input; anything else is transient."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "video"
    suffix = Path(name).suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", Path(name).suffix or "") else ""
    work_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="video-", suffix=suffix, dir=work_dir)
    dest = Path(tmp)
    request = urllib.request.Request(url, headers={"User-Agent": "vidi-operator-vidi-image/1"})
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, f, DOWNLOAD_CHUNK)
    except urllib.error.HTTPError as e:
        dest.unlink(missing_ok=True)
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise BadInput(f"VIDI_VIDEO: downloading {url} failed: HTTP {e.code} {e.reason}") from e
        raise TransientError(f"VIDI_VIDEO: downloading {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise TransientError(f"VIDI_VIDEO: downloading {url} failed: {reason}") from e
    if dest.stat().st_size == 0:
        dest.unlink(missing_ok=True)
        raise BadInput(f"VIDI_VIDEO: {url} returned an empty body")
    return dest


def local_video(video: str, work_dir: Path) -> Path:
    """The video as a local, readable, non-empty file (downloading a URL first)."""
    scheme = urllib.parse.urlsplit(video).scheme.lower()
    if is_url(video):
        return download(video, work_dir)
    if scheme and len(scheme) > 1:  # a one-letter "scheme" would be a Windows drive
        raise BadInput(f"VIDI_VIDEO: expected a file path or an http(s) URL, got a {scheme}:// URL")
    path = Path(video)
    if not path.exists():
        raise BadInput(f"VIDI_VIDEO: {video} does not exist")
    if not path.is_file():
        raise BadInput(f"VIDI_VIDEO: {video} is not a regular file")
    if not os.access(path, os.R_OK):
        raise BadInput(f"VIDI_VIDEO: {video} is not readable by uid {os.getuid()}")
    if path.stat().st_size == 0:
        raise BadInput(f"VIDI_VIDEO: {video} is empty")
    return path


def probe_duration(path: Path) -> float:
    """Video length in seconds (ffprobe), as upstream measures it. Unreadable video: bad input."""
    cmd = [
        "ffprobe", "-v", "error", "-show_entries", "format=duration",
        "-of", "default=noprint_wrappers=1:nokey=1", str(path),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError as e:
        raise RuntimeError("ffprobe is not installed in this image") from e
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out:
        detail = (proc.stderr.strip().splitlines() or ["no duration"])[-1]
        raise BadInput(f"VIDI_VIDEO: {path} is not a readable video: ffprobe: {detail}")
    try:
        seconds = float(out[0])
    except ValueError as e:
        raise BadInput(f"VIDI_VIDEO: {path} is not a readable video: ffprobe gave duration {out[0]!r}") from e
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise BadInput(f"VIDI_VIDEO: {path} has no usable duration ({seconds})")
    return seconds


# --- the model ---------------------------------------------------------------------------


def run_model(video: Path, query: str, model_path: str, precision: str) -> str:
    """Runs upstream Vidi once; returns its one output line (`HH:MM:SS-HH:MM:SS, …`).

    Does what upstream's vidi/eval/inference.py __main__ does, with the loader's precision flags
    that its CLI lacks. Tests replace this function with a double.
    """
    upstream = os.environ.get("VIDI_UPSTREAM_DIR", "/opt/vidi")
    if upstream not in sys.path:
        sys.path.insert(0, upstream)
    import importlib

    builder = importlib.import_module("vidi.model.builder")
    inference = importlib.import_module("vidi.eval.inference")
    load_8bit, load_4bit = LOADER_FLAGS[precision]
    model, tokenizer, image_processor, audio_processor = builder.load_pretrained_model(
        model_path, load_8bit=load_8bit, load_4bit=load_4bit
    )
    model.config.mm_splits = 32  # as upstream's CLI sets it
    return str(inference.ask(query, str(video), model, tokenizer, image_processor, audio_processor))


def peak_vram_bytes() -> int | None:
    """Peak GPU memory torch allocated, if torch was loaded (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except Exception:  # noqa: BLE001 - a metric must never fail the job
        return None
    return None


def is_cuda_oom(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, or a "CUDA out of memory" error anywhere in the exception chain.

    Upstream's loader retries any exception and then raises ConnectionError, so the OOM is
    often only the __context__ of what reaches us.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        torch = sys.modules.get("torch")
        oom_types = tuple(
            t for t in (getattr(torch, "OutOfMemoryError", None), getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
            if isinstance(t, type)
        )
        if oom_types and isinstance(e, oom_types):
            return True
        if type(e).__name__ == "OutOfMemoryError" and type(e).__module__.split(".")[0] == "torch":
            return True
        text = str(e)
        if "CUDA out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


# --- the output --------------------------------------------------------------------------


def _clock_seconds(h: str, m: str, s: str) -> float:
    return int(h) * 3600 + int(m) * 60 + float(s)


def parse_segments(line: str) -> list[tuple[float, float]]:
    """`00:01:05-00:01:12, 00:03:00 - 00:03:04` -> [(65.0, 72.0), (180.0, 184.0)].

    Tolerates odd spacing and separators; anything that is not a range is ignored (upstream
    prints nothing for no match). A reversed range is put in order.
    """
    segments = []
    for m in _SEGMENT.finditer(line or ""):
        start = _clock_seconds(*m.group(1, 2, 3))
        end = _clock_seconds(*m.group(4, 5, 6))
        if end < start:
            start, end = end, start
        segments.append((start, end))
    return segments


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(x, 3)


def compact_result(
    segments: list[tuple[float, float]], precision: str, video_seconds: float | None, peak: int | None
) -> str:
    """The termination message: the contract's JSON, under TERMINATION_MAX_BYTES (segments are
    dropped from the end if needed; segmentsTotal then says how many there were)."""
    body: dict = {
        "segments": [[_num(s), _num(e)] for s, e in segments],
        "precision": precision,
    }
    if video_seconds is not None:
        body["videoSeconds"] = _num(video_seconds)
    if peak is not None:
        body["peakVramBytes"] = int(peak)
    text = json.dumps(body, separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_MAX_BYTES:
        return text
    body["segmentsTotal"] = len(segments)
    kept = body["segments"]
    lo, hi = 0, len(kept)
    while lo < hi:  # the most segments that fit
        mid = (lo + hi + 1) // 2
        body["segments"] = kept[:mid]
        if len(json.dumps(body, separators=(",", ":")).encode()) <= TERMINATION_MAX_BYTES:
            lo = mid
        else:
            hi = mid - 1
    body["segments"] = kept[:lo]
    return json.dumps(body, separators=(",", ":"))


def full_result(
    inputs: Inputs,
    segments: list[tuple[float, float]],
    video_seconds: float,
    peak: int | None,
    raw: str,
    elapsed: float,
) -> dict:
    return {
        "query": inputs.query,
        "video": inputs.video,
        "segments": [[_num(s), _num(e)] for s, e in segments],
        "precision": inputs.precision,
        "requestedPrecision": inputs.requested_precision,
        "videoSeconds": _num(video_seconds),
        "peakVramBytes": peak,
        "raw": raw,
        "modelPath": inputs.model_path,
        "upstreamCommit": _upstream_commit(),
        "elapsedSeconds": round(elapsed, 3),
        "finishedAt": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _upstream_commit() -> str | None:
    path = Path(os.environ.get("VIDI_UPSTREAM_DIR", "/opt/vidi")) / "UPSTREAM_COMMIT"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_termination(text: str, env: dict[str, str]) -> None:
    """Best effort: a missing termination log (outside Kubernetes) must not change the exit code."""
    path = env.get("VIDI_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)
    data = text.encode()[:TERMINATION_MAX_BYTES]
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        print(f"vidi: cannot write the termination log {path}: {e}", file=sys.stderr)


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= REASON_MAX_CHARS else line[: REASON_MAX_CHARS - 1] + "…"


# --- main --------------------------------------------------------------------------------


def run(env: dict[str, str]) -> int:
    started = time.monotonic()
    precision = effective_precision(env.get("VIDI_PRECISION", "auto").strip().lower() or "auto")
    downloaded: Path | None = None
    try:
        inputs = read_inputs(env)
        prepare_output_dir(inputs.output_dir)
        work_dir = Path(env.get("VIDI_WORK_DIR") or tempfile.gettempdir())
        video = local_video(inputs.video, work_dir)
        if video != Path(inputs.video):
            downloaded = video
        video_seconds = probe_duration(video)
        print(
            f"vidi: query={inputs.query!r} video={inputs.video} ({video_seconds:.1f}s) "
            f"precision={inputs.precision} (requested {inputs.requested_precision})",
            file=sys.stderr,
        )
        raw = run_model(video, inputs.query, inputs.model_path, inputs.precision)
        raw = "" if raw is None else str(raw).strip()
        segments = parse_segments(raw)
        if raw and not segments:
            print(f"vidi: no time range in the model's output {raw!r}; reporting no segment", file=sys.stderr)
        peak = peak_vram_bytes()
        if inputs.output_dir is not None:
            result = full_result(inputs, segments, video_seconds, peak, raw, time.monotonic() - started)
            write_json_atomically(inputs.output_dir / "result.json", result)
        compact = compact_result(segments, inputs.precision, video_seconds, peak)
        write_termination(compact, env)
        print(compact)
        return EXIT_OK
    except BadInput as e:
        write_termination(one_line(f"bad input: {e}"), env)
        print(f"vidi: bad input: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - every failure maps to an exit code
        traceback.print_exc()
        if is_cuda_oom(e):
            write_termination(one_line(f"CUDA out of memory at {precision}: {_oom_detail(e)}"), env)
            return EXIT_OUT_OF_GPU_MEMORY
        write_termination(one_line(f"{type(e).__name__}: {e}"), env)
        return EXIT_FAILED
    finally:
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)


def _oom_detail(exc: BaseException) -> str:
    e: BaseException | None = exc
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if "out of memory" in str(e).lower():
            return str(e)
        e = e.__cause__ or e.__context__
    return str(exc)


def main() -> int:
    return run(dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())
