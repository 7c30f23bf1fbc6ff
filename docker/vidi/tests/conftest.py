"""Fixtures for the Vidi wrapper tests: no GPU, torch, ffmpeg or model needed."""
from __future__ import annotations

import importlib.util
import os
import stat
import sys
import types
from pathlib import Path

import pytest

WRAPPER = Path(__file__).resolve().parents[1] / "vidi_entrypoint.py"

FAKE_FFPROBE = """#!/bin/sh
# Test double of ffprobe: prints FAKE_DURATION for any file whose name lacks "unreadable".
for last; do :; done
case "$last" in
  *unreadable*) echo "$last: Invalid data found when processing input" >&2; exit 1 ;;
esac
echo "${FAKE_DURATION:-125.5}"
"""


@pytest.fixture()
def wrapper(monkeypatch):
    spec = importlib.util.spec_from_file_location("vidi_entrypoint_under_test", WRAPPER)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


class Env:
    """A job's environment in a temp dir, plus the double standing in for the model."""

    def __init__(self, tmp: Path, wrapper, monkeypatch):
        self.tmp = tmp
        self.wrapper = wrapper
        self.weights = tmp / "weights"
        self.weights.mkdir()
        self.video = tmp / "talk.mp4"
        self.video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
        self.output = tmp / "output"
        self.termination = tmp / "termination-log"
        self.work = tmp / "work"
        self.vars = {
            "VIDI_VIDEO": str(self.video),
            "VIDI_QUERY": "a dog catches a frisbee",
            "VIDI_MODEL_PATH": str(self.weights),
            "VIDI_PRECISION": "int8",
            "VIDI_OUTPUT_DIR": str(self.output),
            "VIDI_TERMINATION_LOG": str(self.termination),
            "VIDI_WORK_DIR": str(self.work),
            "VIDI_UPSTREAM_DIR": str(tmp / "no-upstream"),
        }
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        ffprobe = bin_dir / "ffprobe"
        ffprobe.write_text(FAKE_FFPROBE)
        ffprobe.chmod(ffprobe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.delenv("FAKE_DURATION", raising=False)
        self.calls: list[tuple] = []
        self.output_line = "00:01:05-00:01:12, 00:03:00-00:03:04"
        self.raises: BaseException | None = None
        self.seen_video_bytes: bytes | None = None

        def model_double(video, query, model_path, precision, **kwargs):
            self.calls.append((str(video), query, model_path, precision))
            self.seen_video_bytes = Path(video).read_bytes()
            if self.raises is not None:
                raise self.raises
            return self.output_line

        monkeypatch.setattr(wrapper, "run_model", model_double)
        # select_attention puts the flash-attn stand-in on sys.path: keep that inside the test.
        monkeypatch.setattr(sys, "path", list(sys.path))

    def run(self, **overrides) -> int:
        env = dict(self.vars)
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return self.wrapper.run(env)

    def termination_text(self) -> str:
        return self.termination.read_text()


@pytest.fixture()
def job(tmp_path, wrapper, monkeypatch):
    return Env(tmp_path, wrapper, monkeypatch)


@pytest.fixture()
def fake_torch(monkeypatch):
    """A stand-in `torch` module in sys.modules (the wrapper never imports torch itself)."""
    torch = types.ModuleType("torch")

    class OutOfMemoryError(RuntimeError):
        pass

    OutOfMemoryError.__module__ = "torch"
    torch.OutOfMemoryError = OutOfMemoryError
    cuda = types.SimpleNamespace(
        OutOfMemoryError=OutOfMemoryError,
        is_available=lambda: True,
        max_memory_allocated=lambda: 10_737_418_240,
    )
    torch.cuda = cuda
    monkeypatch.setitem(sys.modules, "torch", torch)
    return torch
