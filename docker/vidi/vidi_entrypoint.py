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
  VIDI_ATTENTION     auto | flash-attn | pytorch (default auto: flash-attn when it imports,
                     else the plain-PyTorch stand-in in flash_attn_fallback/)
  VIDI_CUDA_MEMORY_FRACTION  optional cap (0 < f <= 1) on the share of the GPU's memory this
                     process may allocate (torch.cuda.set_per_process_memory_fraction)

Exit codes: 0 success; 2 bad input (video missing/unreadable, empty query, bad precision);
3 CUDA out of memory; 1 anything else. On every exit the termination log holds either the
compact result JSON (0) or a one-line reason. With VIDI_OUTPUT_DIR, a successful run also
writes one thumbnail per segment (ffmpeg, at the segment's middle) and preview.html next to
result.json.

torch and the upstream code are imported only inside run_model / when already loaded, so the
contract logic is testable without a GPU, torch or the model.
"""
from __future__ import annotations

import datetime as _dt
import html
import importlib
import importlib.util
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
# Precision -> the bitsandbytes quantization upstream's load_pretrained_model is given.
# Upstream's own flags cannot be used with its pinned transformers 4.50 (seen on an H200, see
# docs/vidi-image.md): load_4bit=True passes both load_in_4bit=True and a quantization_config,
# which from_pretrained refuses ("You can't pass `load_in_4bit`or `load_in_8bit` as a kwarg
# when passing `quantization_config`"), and both flags also quantize the SigLIP tower's
# attention-pooling head, whose nn.MultiheadAttention reads out_proj.weight directly (int8:
# "self and mat2 must have the same dtype, but got Half and Char"), and at int8 the image
# projector, which upstream calls on 4-D features that bitsandbytes' int8 matmul refuses ("Only
# two or three dimensional matrices are supported for argument A"). So the wrapper passes the
# BitsAndBytesConfig upstream builds (nf4, double quant, fp16 compute for int4) through the
# loader's **kwargs, with load_8bit/load_4bit left False (upstream then also sets
# torch_dtype=float16 for what stays unquantized), and keeps those modules and lm_head in fp16
# (for the real model about 30M of 9B parameters).
QUANT_SKIP_MODULES = ["lm_head", "mm_vis.vision_model.head", "mm_rand_img_projector"]
QUANTIZATION = {
    "fp16": None,
    "int8": {"load_in_8bit": True, "llm_int8_skip_modules": QUANT_SKIP_MODULES},
    "int4": {
        "load_in_4bit": True,
        "bnb_4bit_compute_dtype": "float16",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_quant_type": "nf4",
        "llm_int8_skip_modules": QUANT_SKIP_MODULES,
    },
}
# Kubernetes keeps at most 4096 bytes of a termination message; stay below.
TERMINATION_MAX_BYTES = 4000
REASON_MAX_CHARS = 1000
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_CHUNK = 1 << 20
ATTENTIONS = ("auto", "flash-attn", "pytorch")
FALLBACK_DIR = Path(__file__).resolve().parent / "flash_attn_fallback"
PREVIEW_NAME = "preview.html"
THUMBNAIL_WIDTH = 320

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
    attention: str = "auto"
    memory_fraction: float | None = None


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
    attention = env.get("VIDI_ATTENTION", "auto").strip().lower() or "auto"
    if attention not in ATTENTIONS:
        raise BadInput(f"VIDI_ATTENTION: expected one of {', '.join(ATTENTIONS)}, got {attention!r}")
    fraction_text = env.get("VIDI_CUDA_MEMORY_FRACTION", "").strip()
    fraction = None
    if fraction_text:
        try:
            fraction = float(fraction_text)
        except ValueError:
            fraction = float("nan")
        if not 0 < fraction <= 1:
            raise BadInput(f"VIDI_CUDA_MEMORY_FRACTION: expected a number in (0, 1], got {fraction_text!r}")
    return Inputs(
        video=video,
        query=query.strip(),
        model_path=model_path,
        requested_precision=requested,
        precision=effective_precision(requested),
        output_dir=Path(out) if out else None,
        attention=attention,
        memory_fraction=fraction,
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


def select_attention(requested: str) -> str:
    """Which flash-attn upstream will import: "flash-attn" (the real one) or "pytorch".

    Upstream imports flash-attn unconditionally and asserts attn_implementation ==
    "flash_attention_2", so without it nothing loads. With "pytorch" (or "auto" when the real
    flash-attn does not import: no wheel for this torch/CUDA/Python, or an unsupported GPU) the
    plain-PyTorch stand-in in flash_attn_fallback/ goes first on sys.path; transformers and
    upstream then find it as `flash_attn`. Must run before transformers is imported.
    """
    if requested in ("auto", "flash-attn"):
        try:
            module = importlib.import_module("flash_attn")
            if not getattr(module, "IS_VIDI_FALLBACK", False):
                return "flash-attn"
            if requested == "flash-attn":
                raise RuntimeError("VIDI_ATTENTION=flash-attn but only the PyTorch stand-in is importable")
            return "pytorch"
        except Exception as e:  # noqa: BLE001 - an ImportError or a broken CUDA extension
            for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
                del sys.modules[name]
            if requested == "flash-attn":
                raise RuntimeError(f"VIDI_ATTENTION=flash-attn but flash-attn does not import: {e}") from e
            print(f"vidi: flash-attn does not import ({e}); using the PyTorch stand-in", file=sys.stderr)
    fallback = str(FALLBACK_DIR)
    if fallback not in sys.path:
        sys.path.insert(0, fallback)
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("flash_attn")
    if spec is None or not str(spec.origin or "").startswith(fallback):
        raise RuntimeError(f"the PyTorch flash-attn stand-in is not importable from {fallback}")
    return "pytorch"


def run_model(video: Path, query: str, model_path: str, precision: str, memory_fraction: float | None = None) -> str:
    """Runs upstream Vidi once; returns its one output line (`HH:MM:SS-HH:MM:SS, …`).

    Does what upstream's vidi/eval/inference.py __main__ does, plus the precision its CLI lacks
    (QUANTIZATION). Tests replace this function with a double.
    """
    upstream = os.environ.get("VIDI_UPSTREAM_DIR", "/opt/vidi")
    if upstream not in sys.path:
        sys.path.insert(0, upstream)
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        torch = None  # only in tests against a stand-in upstream
    if torch is not None:
        # Upstream needs CUDA (ask() calls .cuda(); xattn.py asserts FlashAttention 2, which
        # transformers only enables with CUDA); without it, say so instead of "AssertionError:".
        if not torch.cuda.is_available():
            raise RuntimeError(
                "no CUDA GPU is visible (torch.cuda.is_available() is False); upstream Vidi runs on "
                "CUDA only: give the container a GPU (docker run --gpus, or an nvidia.com/gpu limit)"
            )
        if memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(memory_fraction)

    builder = importlib.import_module("vidi.model.builder")
    inference = importlib.import_module("vidi.eval.inference")
    kwargs = {}
    if QUANTIZATION[precision] is not None:
        transformers = importlib.import_module("transformers")
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(**QUANTIZATION[precision])
    started = time.monotonic()
    model, tokenizer, image_processor, audio_processor = builder.load_pretrained_model(
        model_path, load_8bit=False, load_4bit=False, **kwargs
    )
    loaded = time.monotonic()
    print(f"vidi: model loaded at {precision} in {loaded - started:.1f}s", file=sys.stderr)
    model.config.mm_splits = 32  # as upstream's CLI sets it
    answer = str(inference.ask(query, str(video), model, tokenizer, image_processor, audio_processor))
    print(f"vidi: answered in {time.monotonic() - loaded:.1f}s: {answer!r}", file=sys.stderr)
    return answer


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
    segments: list[tuple[float, float]],
    precision: str,
    video_seconds: float | None,
    peak: int | None,
    preview: Path | None = None,
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
    if preview is not None:
        body["preview"] = str(preview)
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
    attention: str | None = None,
    preview: Path | None = None,
    thumbnails: list[str | None] | None = None,
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
        "attention": attention,
        "preview": preview.name if preview is not None else None,
        "thumbnails": list(thumbnails or []),
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


# --- the preview ------------------------------------------------------------------------

MAX_THUMBNAILS = 100


def clock(seconds: float) -> str:
    """65.4 -> `00:01:05` (what upstream prints)."""
    total = int(max(seconds, 0))
    return f"{total // 3600:02d}:{(total % 3600) // 60:02d}:{total % 60:02d}"


def video_href(video: str, output_dir: Path) -> str:
    """The link to the video from preview.html: the URL itself, or the path relative to the
    output dir (so the page works where the video and the output folder sit side by side, as
    they are mounted in the container)."""
    if is_url(video):
        return video
    try:
        rel = os.path.relpath(Path(video).resolve(), output_dir.resolve())
    except ValueError:  # another drive
        return Path(video).resolve().as_uri()
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def write_thumbnails(video: Path, segments: list[tuple[float, float]], video_seconds: float, output_dir: Path) -> list[str | None]:
    """One JPEG per segment (the first MAX_THUMBNAILS), the frame at its middle; None where
    ffmpeg made none. Best effort: a thumbnail never fails the job."""
    names: list[str | None] = []
    for i, (start, end) in enumerate(segments, 1):
        if i > MAX_THUMBNAILS:
            names.append(None)
            continue
        # Random or bad answers can point past the end: take the last frame then.
        at = min(max((start + end) / 2, 0.0), max(video_seconds - 0.1, 0.0))
        name = f"segment-{i:03d}.jpg"
        target = output_dir / name
        cmd = [
            "ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{at:.3f}", "-i", str(video),
            "-frames:v", "1", "-vf", f"scale={THUMBNAIL_WIDTH}:-2", "-q:v", "4", str(target),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            ok = proc.returncode == 0 and target.is_file() and target.stat().st_size > 0
            detail = (proc.stderr.strip().splitlines() or ["no frame"])[-1]
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, detail = False, str(e)
        if not ok:
            target.unlink(missing_ok=True)
            print(f"vidi: no thumbnail for segment {i} at {at:.1f}s: {detail}", file=sys.stderr)
        names.append(name if ok else None)
    return names


PREVIEW_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}
.meta{color:#555;margin:0 0 16px}
.timeline{position:relative;height:28px;background:#e3e6ea;border-radius:4px;overflow:hidden}
.timeline .segment{position:absolute;top:0;bottom:0;min-width:3px;background:#d9480f;opacity:.85}
.timeline .segment:hover{opacity:1}
.axis{display:flex;justify-content:space-between;color:#666;font-size:12px;margin:2px 0 16px}
.segments{list-style:none;padding:0;margin:0;display:flex;flex-wrap:wrap;gap:12px}
.segments li{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;width:%(w)dpx}
.segments img{display:block;width:100%%;height:auto;border-radius:3px;background:#222}
.segments .noframe{display:block;height:90px;background:#ccc;border-radius:3px}
.range{display:block;font-variant-numeric:tabular-nums;margin-top:4px}
#none{color:#555}
""" % {"w": THUMBNAIL_WIDTH}


def preview_html(
    query: str,
    video: str,
    href: str,
    segments: list[tuple[float, float]],
    video_seconds: float,
    thumbnails: list[str | None],
    precision: str,
) -> str:
    """A small self-contained page: the query, the segments over the video's length, and a
    thumbnail per segment, each linking to `video#t=start,end`. No script, no external file
    but the thumbnails beside it."""
    e = html.escape
    length = max(video_seconds, 1e-9)
    bars, cards = [], []
    for i, (start, end) in enumerate(segments, 1):
        link = f"{href}#t={_num(start)},{_num(end)}"
        span = f"{clock(start)}\u2013{clock(end)}"
        left = min(max(start / length, 0.0), 1.0) * 100
        width = min(max((end - start) / length, 0.0), 1.0 - left / 100) * 100
        bars.append(
            f'<a class="segment" href="{e(link)}" data-start="{_num(start)}" data-end="{_num(end)}" '
            f'style="left:{left:.3f}%;width:{width:.3f}%" title="{e(span)}"></a>'
        )
        thumb = thumbnails[i - 1] if i - 1 < len(thumbnails) else None
        image = (
            f'<img src="{e(thumb)}" alt="frame at {e(clock((start + end) / 2))}">'
            if thumb else '<span class="noframe"></span>'
        )
        cards.append(f'<li><a href="{e(link)}">{image}</a><span class="range">{e(span)}</span></li>')
    count = f"{len(segments)} segment" + ("" if len(segments) == 1 else "s")
    body = (
        f'<ol id="segments" class="segments">{"".join(cards)}</ol>'
        if segments else '<p id="none">No segment found.</p>'
    )
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Vidi: {e(query)}</title><style>{PREVIEW_STYLE}</style></head>\n<body>\n"
        f'<h1 id="query">{e(query)}</h1>\n'
        f'<p class="meta"><a id="video" href="{e(href)}">{e(video)}</a> \u00b7 {e(clock(video_seconds))} '
        f"\u00b7 {e(precision)} \u00b7 {count}</p>\n"
        f'<div id="timeline" class="timeline" data-video-seconds="{_num(video_seconds)}" '
        f'role="img" aria-label="{count} over {e(clock(video_seconds))}">{"".join(bars)}</div>\n'
        f'<div class="axis"><span>00:00:00</span><span>{e(clock(video_seconds))}</span></div>\n'
        f"{body}\n</body></html>\n"
    )


def write_preview(
    inputs: "Inputs", video: Path, segments: list[tuple[float, float]], video_seconds: float
) -> tuple[Path, list[str | None]]:
    """Thumbnails and preview.html in the output dir; returns the page's path and the names."""
    assert inputs.output_dir is not None
    thumbnails = write_thumbnails(video, segments, video_seconds, inputs.output_dir)
    page = preview_html(
        inputs.query, inputs.video, video_href(inputs.video, inputs.output_dir), segments,
        video_seconds, thumbnails, inputs.precision,
    )
    path = inputs.output_dir / PREVIEW_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path, thumbnails


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
        attention = select_attention(inputs.attention)
        print(f"vidi: attention: {attention}", file=sys.stderr)
        raw = run_model(video, inputs.query, inputs.model_path, inputs.precision, memory_fraction=inputs.memory_fraction)
        raw = "" if raw is None else str(raw).strip()
        segments = parse_segments(raw)
        if raw and not segments:
            print(f"vidi: no time range in the model's output {raw!r}; reporting no segment", file=sys.stderr)
        peak = peak_vram_bytes()
        preview = None
        if inputs.output_dir is not None:
            preview, thumbnails = write_preview(inputs, video, segments, video_seconds)
            result = full_result(
                inputs, segments, video_seconds, peak, raw, time.monotonic() - started,
                attention=attention, preview=preview, thumbnails=thumbnails,
            )
            write_json_atomically(inputs.output_dir / "result.json", result)
        compact = compact_result(segments, inputs.precision, video_seconds, peak, preview)
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
