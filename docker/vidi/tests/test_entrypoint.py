"""The Vidi container contract (DESIGN.md), as vidi_entrypoint.py implements it."""
from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import types
from pathlib import Path

import pytest

# --- parsing upstream's output line ------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        ("00:01:05-00:01:12", [(65, 72)]),
        ("00:01:05-00:01:12, 00:03:00-00:03:04", [(65, 72), (180, 184)]),
        ("  00:01:05 -  00:01:12 ,00:03:00-00:03:04  ", [(65, 72), (180, 184)]),
        ("00:01:05 - 00:01:12,\n00:03:00 -00:03:04\n", [(65, 72), (180, 184)]),
        ("01:00:00-01:00:30", [(3600, 3630)]),
        ("123:00:00-123:00:01", [(442800, 442801)]),
        ("0:1:5-0:1:12", [(65, 72)]),
        ("00:00:01.5-00:00:02.25", [(1.5, 2.25)]),
        ("00:00:10-00:00:05", [(5, 10)]),  # reversed: put in order
        ("", []),
        ("   ", []),
        ("Video not found.", []),
        ("no matching segment", []),
        ("00:01:05", []),  # a lone time is not a range
    ],
)
def test_parse_segments(wrapper, line, expected):
    assert wrapper.parse_segments(line) == [(float(s), float(e)) for s, e in expected]


def test_parse_segments_none(wrapper):
    assert wrapper.parse_segments(None) == []


# --- success -----------------------------------------------------------------------------


def test_success_writes_result_json_and_compact_termination(job):
    assert job.run() == 0
    assert job.calls == [(str(job.video), "a dog catches a frisbee", str(job.weights), "int8")]
    compact = json.loads(job.termination_text())
    assert compact == {
        "segments": [[65, 72], [180, 184]], "precision": "int8", "videoSeconds": 125.5,
        "preview": str(job.output / "preview.html"),
    }
    full = json.loads((job.output / "result.json").read_text())
    assert full["query"] == "a dog catches a frisbee"
    assert full["segments"] == [[65, 72], [180, 184]]
    assert full["precision"] == "int8" and full["requestedPrecision"] == "int8"
    assert full["videoSeconds"] == 125.5
    assert full["peakVramBytes"] is None  # torch never loaded
    assert full["raw"] == "00:01:05-00:01:12, 00:03:00-00:03:04"
    assert full["video"] == str(job.video)
    assert full["attention"] == "pytorch"  # no flash-attn in the test's Python: the stand-in
    assert full["preview"] == "preview.html" and (job.output / "preview.html").is_file()
    assert not list(job.output.glob(".*.tmp"))


def test_compact_termination_is_what_the_operator_parses(job):
    # plan::outcome::parse_result reads {"segments":[[s,e],…],"precision","videoSeconds","peakVramBytes"}.
    job.run()
    text = job.termination_text()
    assert "\n" not in text and " " not in text
    body = json.loads(text)
    # plan::outcome::TerminationResult ignores fields it does not know ("preview").
    assert set(body) <= {"segments", "precision", "videoSeconds", "peakVramBytes", "segmentsTotal", "preview"}
    for s, e in body["segments"]:
        assert 0 <= s <= e


def test_peak_vram_comes_from_torch_when_loaded(job, fake_torch):
    assert job.run() == 0
    assert json.loads(job.termination_text())["peakVramBytes"] == 10_737_418_240
    assert json.loads((job.output / "result.json").read_text())["peakVramBytes"] == 10_737_418_240


def test_empty_model_output_is_success_with_no_segments(job):
    job.output_line = ""
    assert job.run() == 0
    assert json.loads(job.termination_text())["segments"] == []
    assert json.loads((job.output / "result.json").read_text())["raw"] == ""


@pytest.mark.parametrize("requested, effective", [("auto", "fp16"), ("fp16", "fp16"), ("int8", "int8"), ("int4", "int4"), ("INT4", "int4"), ("", "fp16")])
def test_precision_reaches_the_model(job, requested, effective):
    assert job.run(VIDI_PRECISION=requested) == 0
    assert job.calls[0][3] == effective
    assert json.loads(job.termination_text())["precision"] == effective


def test_precision_unset_means_auto(job):
    assert job.run(VIDI_PRECISION=None) == 0
    assert job.calls[0][3] == "fp16"
    assert json.loads((job.output / "result.json").read_text())["requestedPrecision"] == "auto"


def test_without_output_dir_only_the_compact_result(job):
    assert job.run(VIDI_OUTPUT_DIR=None) == 0
    assert not job.output.exists()
    assert json.loads(job.termination_text())["segments"] == [[65, 72], [180, 184]]


def test_many_segments_are_truncated_under_4_kib(job):
    job.output_line = ", ".join(f"00:{m:02d}:{s:02d}-00:{m:02d}:{s + 1:02d}" for m in range(60) for s in range(0, 58, 2))
    assert job.run() == 0
    text = job.termination_text()
    assert len(text.encode()) < 4096
    body = json.loads(text)
    assert body["segmentsTotal"] == 60 * 29
    assert 0 < len(body["segments"]) < 60 * 29
    assert body["segments"][0] == [0, 1]
    full = json.loads((job.output / "result.json").read_text())
    assert len(full["segments"]) == 60 * 29


def test_missing_termination_log_dir_does_not_fail_the_job(job):
    assert job.run(VIDI_TERMINATION_LOG=str(job.tmp / "nope" / "termination-log")) == 0


# --- bad input: exit 2, a one-line reason, the model never runs ---------------------------


def _bad(job, code=2, **overrides) -> str:
    assert job.run(**overrides) == code
    assert job.calls == []
    text = job.termination_text()
    assert "\n" not in text and len(text) <= 1000
    return text


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_blank_query(job, query):
    assert "VIDI_QUERY" in _bad(job, VIDI_QUERY=query)


def test_missing_query(job):
    assert "VIDI_QUERY" in _bad(job, VIDI_QUERY=None)


def test_missing_video_file(job):
    text = _bad(job, VIDI_VIDEO=str(job.tmp / "missing.mp4"))
    assert text.startswith("bad input: VIDI_VIDEO:") and "does not exist" in text


def test_no_video(job):
    assert "VIDI_VIDEO" in _bad(job, VIDI_VIDEO="")


def test_video_is_a_directory(job):
    assert "not a regular file" in _bad(job, VIDI_VIDEO=str(job.tmp))


def test_empty_video_file(job):
    empty = job.tmp / "empty.mp4"
    empty.write_bytes(b"")
    assert "is empty" in _bad(job, VIDI_VIDEO=str(empty))


def test_unreadable_video_by_ffprobe(job):
    bad = job.tmp / "unreadable.mp4"
    bad.write_bytes(b"garbage")
    text = _bad(job, VIDI_VIDEO=str(bad))
    assert "not a readable video" in text and "Invalid data" in text


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_video_without_read_permission(job):
    job.video.chmod(0)
    assert "not readable" in _bad(job)


@pytest.mark.parametrize("duration", ["N/A", "0", "-3"])
def test_video_without_duration(job, monkeypatch, duration):
    monkeypatch.setenv("FAKE_DURATION", duration)
    assert "VIDI_VIDEO" in _bad(job)


@pytest.mark.parametrize("video", ["ftp://example.com/a.mp4", "file:///videos/a.mp4", "s3://bucket/a.mp4"])
def test_unsupported_url_scheme(job, video):
    assert "http(s)" in _bad(job, VIDI_VIDEO=video)


def test_bad_precision(job):
    assert "VIDI_PRECISION" in _bad(job, VIDI_PRECISION="bf16")


def test_missing_weights(job):
    assert "VIDI_MODEL_PATH" in _bad(job, VIDI_MODEL_PATH=str(job.tmp / "no-weights"))


# --- failures: exit 3 for CUDA out of memory, 1 for anything else --------------------------


def test_torch_out_of_memory_error_is_exit_3(job, fake_torch):
    job.raises = fake_torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert job.run() == 3
    text = job.termination_text()
    assert text.startswith("CUDA out of memory at int8") and "\n" not in text
    assert not (job.output / "result.json").exists()


def test_cuda_out_of_memory_runtime_error_is_exit_3(job):
    job.raises = RuntimeError("CUDA error: CUDA out of memory. Tried to allocate 20.00 MiB")
    assert job.run(VIDI_PRECISION="auto") == 3
    assert job.termination_text().startswith("CUDA out of memory at fp16")


def test_oom_wrapped_by_upstream_loader_retry_is_exit_3(job, fake_torch):
    # Upstream's load_pretrained_model catches every exception and, after 5 tries, raises
    # ConnectionError from inside the except block: the OOM is the __context__.
    def loader():
        try:
            raise fake_torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        except Exception:
            raise ConnectionError("Failed to download/reload model weights.")

    try:
        loader()
    except ConnectionError as e:
        job.raises = e
    assert job.run() == 3


def test_torch_named_out_of_memory_without_torch_loaded_is_exit_3(job):
    class OutOfMemoryError(RuntimeError):
        pass

    OutOfMemoryError.__module__ = "torch.cuda"
    job.raises = OutOfMemoryError("allocation failed")
    assert job.run() == 3


@pytest.mark.parametrize(
    "exc",
    [ValueError("boom"), RuntimeError("CUDA error: device-side assert triggered"), MemoryError(), ConnectionError("Failed to download/reload model weights.")],
    ids=["value-error", "other-cuda-error", "host-memory", "loader-gave-up"],
)
def test_other_failures_are_exit_1(job, exc):
    job.raises = exc
    assert job.run() == 1
    text = job.termination_text()
    assert text.startswith(type(exc).__name__) and "\n" not in text


def test_unwritable_output_dir_fails_before_the_model_loads(job):
    blocker = job.tmp / "a-file"
    blocker.write_text("x")
    assert job.run(VIDI_OUTPUT_DIR=str(blocker / "out")) == 1
    assert job.calls == []
    assert "VIDI_OUTPUT_DIR" in job.termination_text()


def test_long_failure_reasons_are_cut_to_one_line(job):
    job.raises = RuntimeError("line one\n" + "x" * 5000)
    assert job.run() == 1
    text = job.termination_text()
    assert "\n" not in text and len(text) <= 1000


# --- precision -> upstream loader flags ---------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_run_model_passes_the_quantization_for_the_precision(wrapper, tmp_path, monkeypatch, precision):
    """run_model against a stand-in upstream tree (same module layout as Vidi1.5_9B) and a
    stand-in transformers.BitsAndBytesConfig that records what it is given."""
    up = tmp_path / "upstream"
    (up / "vidi" / "model").mkdir(parents=True)
    (up / "vidi" / "eval").mkdir(parents=True)
    (up / "vidi" / "__init__.py").write_text("")
    (up / "vidi" / "model" / "__init__.py").write_text("")
    (up / "vidi" / "model" / "builder.py").write_text(
        "CALLS = []\n"
        "class _Cfg: pass\n"
        "class _Model:\n"
        "    config = _Cfg()\n"
        "def load_pretrained_model(path, load_8bit=False, load_4bit=False, **kw):\n"
        "    CALLS.append((path, load_8bit, load_4bit, kw))\n"
        "    return _Model(), 'tok', 'img', 'aud'\n"
    )
    (up / "vidi" / "eval" / "inference.py").write_text(
        "def ask(question, vid_path, model, tokenizer, image_processor, audio_processor):\n"
        "    assert model.config.mm_splits == 32\n"
        "    return '00:00:01-00:00:02'\n"
    )
    transformers = types.ModuleType("transformers")

    class BitsAndBytesConfig:
        def __init__(self, **kw):
            self.kw = kw

    transformers.BitsAndBytesConfig = BitsAndBytesConfig
    monkeypatch.setitem(sys.modules, "transformers", transformers)
    monkeypatch.setenv("VIDI_UPSTREAM_DIR", str(up))
    for name in [m for m in sys.modules if m == "vidi" or m.startswith("vidi.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = wrapper.run_model(Path("/v.mp4"), "q", "/models/vidi", precision)
    assert out == "00:00:01-00:00:02"
    (path, load_8bit, load_4bit, kw), = sys.modules["vidi.model.builder"].CALLS
    # Upstream's own flags stay off: with transformers 4.50 its load_4bit path raises.
    assert (path, load_8bit, load_4bit) == ("/models/vidi", False, False)
    if precision == "fp16":
        assert kw == {}
    else:
        q = kw["quantization_config"].kw
        assert q["llm_int8_skip_modules"] == ["lm_head", "mm_vis.vision_model.head", "mm_rand_img_projector"]
        if precision == "int8":
            assert q["load_in_8bit"] is True and "load_in_4bit" not in q
        else:  # what upstream's load_4bit builds: nf4, double quant, fp16 compute
            assert q["load_in_4bit"] is True and "load_in_8bit" not in q
            assert (q["bnb_4bit_quant_type"], q["bnb_4bit_use_double_quant"], q["bnb_4bit_compute_dtype"]) == ("nf4", True, "float16")
    for name in [m for m in sys.modules if m == "vidi" or m.startswith("vidi.")]:
        monkeypatch.delitem(sys.modules, name)


def test_quantization_covers_every_effective_precision(wrapper):
    for p in wrapper.PRECISIONS:
        assert wrapper.effective_precision(p) in wrapper.QUANTIZATION


# --- URL videos ---------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/videos/ok"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.VIDEO)))
            self.end_headers()
            self.wfile.write(self.VIDEO)
        elif self.path.startswith("/videos/empty"):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/videos/broken"):
            self.send_error(500, "Internal Server Error")
        else:
            self.send_error(404, "Not Found")

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_url_video_is_downloaded_first(job, server):
    url = f"{server}/videos/ok/talk%20one.mp4?token=abc"
    assert job.run(VIDI_VIDEO=url) == 0
    [(video, *_)] = job.calls
    assert video != url and video.endswith(".mp4") and video.startswith(str(job.work))
    assert job.seen_video_bytes == _Handler.VIDEO
    assert not Path(video).exists(), "the download is removed afterwards"
    assert json.loads((job.output / "result.json").read_text())["video"] == url


def test_url_not_found_is_bad_input(job, server):
    text = _bad(job, VIDI_VIDEO=f"{server}/videos/missing.mp4")
    assert "HTTP 404" in text
    assert list(job.work.iterdir()) == []


def test_url_empty_body_is_bad_input(job, server):
    assert "empty" in _bad(job, VIDI_VIDEO=f"{server}/videos/empty.mp4")


def test_url_server_error_is_exit_1(job, server):
    assert "HTTP 500" in _bad(job, code=1, VIDI_VIDEO=f"{server}/videos/broken.mp4")
    assert list(job.work.iterdir()) == []


def test_url_connection_refused_is_exit_1(job):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert "downloading" in _bad(job, code=1, VIDI_VIDEO=f"http://127.0.0.1:{port}/a.mp4")


# --- the real process: `python vidi_entrypoint.py`, upstream replaced by a stand-in tree ---


def _stand_in_upstream(root: Path, line: str, raise_oom: bool = False) -> Path:
    up = root / "upstream"
    (up / "vidi" / "model").mkdir(parents=True)
    (up / "vidi" / "eval").mkdir(parents=True)
    (up / "vidi" / "__init__.py").write_text("")
    (up / "vidi" / "model" / "__init__.py").write_text("")
    # int8/int4 build a transformers.BitsAndBytesConfig: a stand-in beside the stand-in upstream.
    (up / "transformers.py").write_text("class BitsAndBytesConfig:\n    def __init__(self, **kw):\n        self.kw = kw\n")
    loader_body = (
        "    try:\n"
        "        raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
        "    except Exception:\n"
        "        raise ConnectionError('Failed to download/reload model weights.')\n"
        if raise_oom
        else "    return _Model(), 'tok', 'img', 'aud'\n"
    )
    (up / "vidi" / "model" / "builder.py").write_text(
        "class _Cfg: pass\n"
        "class _Model:\n"
        "    config = _Cfg()\n"
        "def load_pretrained_model(path, load_8bit=False, load_4bit=False, **kw):\n" + loader_body
    )
    (up / "vidi" / "eval" / "inference.py").write_text(
        "def ask(question, vid_path, model, tokenizer, image_processor, audio_processor):\n"
        f"    return {line!r}\n"
    )
    return up


@pytest.mark.parametrize(
    "case, code",
    [("ok", 0), ("oom", 3), ("blank-query", 2)],
)
def test_entrypoint_process_exit_codes(job, case, code):
    import subprocess

    from conftest import WRAPPER

    up = _stand_in_upstream(job.tmp, "00:00:03-00:00:09", raise_oom=(case == "oom"))
    env = {**os.environ, **job.vars, "VIDI_UPSTREAM_DIR": str(up)}
    if case == "blank-query":
        env["VIDI_QUERY"] = " "
    proc = subprocess.run([sys.executable, str(WRAPPER)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    text = job.termination_text()
    if code == 0:
        assert json.loads(text) == {
            "segments": [[3, 9]], "precision": "int8", "videoSeconds": 125.5,
            "preview": str(job.output / "preview.html"),
        }
        assert proc.stdout.strip().splitlines()[-1] == text
        assert json.loads((job.output / "result.json").read_text())["raw"] == "00:00:03-00:00:09"
    elif code == 3:
        assert text.startswith("CUDA out of memory at int8")
    else:
        assert text.startswith("bad input: VIDI_QUERY")


def test_no_cuda_says_so_instead_of_upstreams_bare_assertion(wrapper, fake_torch, tmp_path, monkeypatch):
    # Seen in the image without --gpus: upstream's xattn.py fails with a bare "AssertionError:".
    fake_torch.cuda.is_available = lambda: False
    monkeypatch.setenv("VIDI_UPSTREAM_DIR", str(tmp_path / "no-upstream"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        wrapper.run_model(Path("/v.mp4"), "q", "/models/vidi", "fp16")
