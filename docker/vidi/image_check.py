#!/usr/bin/env python3
"""The Vidi image's build-time check (no GPU): versions, imports, tools. Prints one JSON line.

Upstream's model package cannot be imported without CUDA (vidi/model/lmm/dattn/xattn.py asserts
transformers' is_flash_attn_2_available(), False without a GPU), so this imports every
third-party module upstream's inference path imports, the upstream modules that need no GPU,
and the wrapper's attention choice; the model path itself is exercised on a GPU by
scripts/vidi-gpu-smoke.sh.
  FLASH_ATTN_WHEEL set (non-empty): flash-attn 2.8.3 must be installed; empty: it must not be.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import sys

EXPECTED = {"transformers": "4.50.0", "accelerate": "1.5.2", "deepspeed": "0.16.4", "numpy": "1.26.4"}
# What upstream's inference path imports (vidi/model, vidi/dataset, vidi/eval, vidi/utils).
MODULES = [
    "torch", "torchvision", "transformers", "accelerate", "bitsandbytes", "deepspeed", "deepspeed.comm",
    "liger_kernel.transformers.monkey_patch", "decord", "langid", "orjson", "numpy", "PIL", "requests",
    "einops", "sentencepiece", "cv2", "safetensors", "tokenizers",
]


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main() -> int:
    upstream = os.environ.get("VIDI_UPSTREAM_DIR", "/opt/vidi")
    wrapper_dir = os.environ.get("VIDI_WRAPPER_DIR", "/opt/vidi-wrapper")
    problems: list[str] = []
    got = {n: version(n) for n in ("torch", "torchvision", "torchaudio", "flash_attn", "bitsandbytes", "decord", "liger_kernel", *EXPECTED)}
    for name, want in EXPECTED.items():
        if got[name] != want:
            problems.append(f"{name} {got[name]} (want {want})")
    if not (got["torch"] or "").startswith(os.environ.get("TORCH_VERSION", "2.6.0")):
        problems.append(f"torch {got['torch']}")
    want_flash = bool(os.environ.get("FLASH_ATTN_WHEEL", "").strip())
    if want_flash and got["flash_attn"] != "2.8.3":
        problems.append(f"flash_attn {got['flash_attn']} (want 2.8.3)")
    if not want_flash and got["flash_attn"] is not None:
        problems.append(f"flash_attn {got['flash_attn']} installed although FLASH_ATTN_WHEEL is empty")

    imported = []
    for name in MODULES:
        try:
            importlib.import_module(name)
            imported.append(name)
        except Exception as e:  # noqa: BLE001 - report every failure
            problems.append(f"import {name}: {type(e).__name__}: {e}")

    sys.path.insert(0, upstream)
    for rel in ("vidi/constants.py", "vidi/dataset/txt_utils.py", "vidi/dataset/vid_utils.py", "vidi/dataset/img_utils.py"):
        name = "upstream_" + rel.replace("/", "_")[:-3]
        try:
            spec = importlib.util.spec_from_file_location(name, os.path.join(upstream, rel))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            imported.append(rel)
        except Exception as e:  # noqa: BLE001
            problems.append(f"import upstream {rel}: {type(e).__name__}: {e}")

    attention = None
    try:
        sys.path.insert(0, wrapper_dir)
        wrapper = importlib.import_module("vidi_entrypoint")
        attention = wrapper.select_attention("auto")
        flash = importlib.import_module("flash_attn")
        imported.append(f"flash_attn ({'stand-in' if getattr(flash, 'IS_VIDI_FALLBACK', False) else 'real'})")
    except Exception as e:  # noqa: BLE001
        problems.append(f"wrapper attention: {type(e).__name__}: {e}")
    tools = {t: shutil.which(t) for t in ("ffmpeg", "ffprobe")}
    problems += [f"{t} not on PATH" for t, p in tools.items() if p is None]
    commit_file = os.path.join(upstream, "UPSTREAM_COMMIT")
    commit = open(commit_file).read().strip() if os.path.exists(commit_file) else None
    if not commit:
        problems.append("no UPSTREAM_COMMIT")

    print(json.dumps({
        "ok": not problems, "problems": problems, "versions": got, "attention": attention,
        "imported": imported, "tools": tools, "upstreamCommit": commit, "python": sys.version.split()[0],
    }))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
