"""preview.html and the thumbnails the wrapper writes next to result.json.

The page's structure is checked by parsing it (always), the thumbnails with a real ffmpeg on a
video it makes (red until 5 s, then blue), and the page as a person sees it in Debian's headless
Chromium: a screenshot whose pixels must show both thumbnails and the timeline.
"""
from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SEGMENTS = [(1.0, 3.0), (6.0, 10.5)]


class Page(html.parser.HTMLParser):
    """The elements of preview.html, as (tag, attrs, text) with their ancestors' classes/ids."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, dict]] = []
        self.elements: list[dict] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        within = [x.get("id") or x.get("class") for _, x in self.stack]
        self.elements.append({"tag": tag, "attrs": a, "within": within})
        if tag not in ("meta", "img", "br", "link"):
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, a in self.stack:
            if a.get("id"):
                self.text[a["id"]] = self.text.get(a["id"], "") + data

    def find(self, tag, **attrs):
        return [e for e in self.elements if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in attrs.items())]


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


def make_video(path: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", "color=c=red:s=320x240:r=25:d=5",
         "-f", "lavfi", "-i", "color=c=blue:s=320x240:r=25:d=7",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=12",
         "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]",
         "-map", "[v]", "-map", "2:a", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=120,
    )


def rgb_pixels(image: Path) -> tuple[int, int, bytes]:
    """Decodes an image with ffmpeg to raw RGB24: (width, height, bytes)."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "json", str(image)],
        capture_output=True, text=True, check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(image), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return stream["width"], stream["height"], raw


def count_colour(raw: bytes, want, tol=40) -> int:
    n = 0
    for i in range(0, len(raw) - 2, 3):
        if abs(raw[i] - want[0]) <= tol and abs(raw[i + 1] - want[1]) <= tol and abs(raw[i + 2] - want[2]) <= tol:
            n += 1
    return n


def inputs(wrapper, out: Path, video: str, query="the screen turns blue"):
    return wrapper.Inputs(
        video=video, query=query, model_path="/models/vidi", requested_precision="auto",
        precision="fp16", output_dir=out,
    )


# --- structure ---------------------------------------------------------------------------


def test_preview_structure(wrapper):
    page_text = wrapper.preview_html(
        'the <b>dog</b> & "cat"', "/input/park dog.mp4", "../input/park%20dog.mp4", SEGMENTS, 12.0,
        ["segment-001.jpg", None], "int8",
    )
    page = parse(page_text)
    assert page.text["query"] == 'the <b>dog</b> & "cat"', "the query is shown as text, escaped"
    assert not page.find("b"), "the query's markup is not interpreted"
    # Self-contained: no script, no stylesheet or image from anywhere but beside it.
    assert not page.find("script") and not page.find("link")
    assert "<script" not in page_text.lower()
    # The timeline: one link per segment, placed over the video's length.
    bars = [e for e in page.find("a") if e["attrs"].get("class") == "segment"]
    assert len(bars) == 2
    assert all("timeline" in e["within"] for e in bars)
    assert [b["attrs"]["href"] for b in bars] == ["../input/park%20dog.mp4#t=1,3", "../input/park%20dog.mp4#t=6,10.5"]
    left, width = re.findall(r"[\d.]+", bars[1]["attrs"]["style"])
    assert float(left) == pytest.approx(50.0) and float(width) == pytest.approx(37.5)
    assert page.find("div", id="timeline")[0]["attrs"]["data-video-seconds"] == "12"
    # The thumbnails, each linking to its segment; a segment without one still has its card.
    cards = [e for e in page.find("a") if "segments" in e["within"]]
    assert [c["attrs"]["href"] for c in cards] == [b["attrs"]["href"] for b in bars]
    imgs = page.find("img")
    assert [i["attrs"]["src"] for i in imgs] == ["segment-001.jpg"]
    assert "00:00:01\u201300:00:03" in page_text and "00:00:06\u201300:00:10" in page_text
    assert "2 segments" in page_text and "int8" in page_text
    assert page.find("a", id="video")[0]["attrs"]["href"] == "../input/park%20dog.mp4"


def test_preview_without_segments_says_so(wrapper):
    page = parse(wrapper.preview_html("q", "v.mp4", "v.mp4", [], 30.0, [], "fp16"))
    assert "No segment found." in page.text["none"]
    assert not [e for e in page.find("a") if e["attrs"].get("class") == "segment"]


def test_segment_past_the_end_stays_on_the_timeline(wrapper):
    page = parse(wrapper.preview_html("q", "v.mp4", "v.mp4", [(11.0, 30.0)], 12.0, [None], "fp16"))
    bar = [e for e in page.find("a") if e["attrs"].get("class") == "segment"][0]
    left, width = (float(x) for x in re.findall(r"[\d.]+", bar["attrs"]["style"]))
    assert left + width <= 100.0 + 1e-9


def test_video_href(wrapper, tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    assert wrapper.video_href("https://e.example/a b.mp4", out) == "https://e.example/a b.mp4"
    (tmp_path / "input").mkdir()
    assert wrapper.video_href(str(tmp_path / "input" / "a b.mp4"), out) == "../input/a%20b.mp4"


# --- thumbnails with a real ffmpeg --------------------------------------------------------


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed (Debian: apt-get install ffmpeg)",
)


@needs_ffmpeg
def test_thumbnails_are_the_frame_at_each_segments_middle(wrapper, tmp_path):
    video = tmp_path / "red-blue.mp4"
    make_video(video)
    out = tmp_path / "out"
    out.mkdir()
    path, thumbs = wrapper.write_preview(inputs(wrapper, out, str(video)), video, SEGMENTS + [(11.0, 40.0)], 12.0)
    assert path == out / "preview.html" and path.is_file()
    assert thumbs == ["segment-001.jpg", "segment-002.jpg", "segment-003.jpg"]
    colours = []
    for name in thumbs:
        w, h, raw = rgb_pixels(out / name)
        assert w == wrapper.THUMBNAIL_WIDTH and h == 240
        colours.append("red" if count_colour(raw, (255, 0, 0)) > w * h * 0.9 else
                       "blue" if count_colour(raw, (0, 0, 255)) > w * h * 0.9 else "other")
    # 2 s is red, 8.25 s blue; a segment past the end gets the last frame (blue).
    assert colours == ["red", "blue", "blue"]


@needs_ffmpeg
def test_wrapper_run_writes_preview_and_thumbnails(job, tmp_path, monkeypatch):
    # The whole run() with the model double answering two segments over a real video.
    video = tmp_path / "real.mp4"
    make_video(video)
    monkeypatch.setenv("FAKE_DURATION", "12")
    job.output_line = "00:00:01-00:00:03, 00:00:06-00:00:10"
    assert job.run(VIDI_VIDEO=str(video)) == 0
    result = json.loads((job.output / "result.json").read_text())
    assert result["preview"] == "preview.html"
    assert result["thumbnails"] == ["segment-001.jpg", "segment-002.jpg"]
    assert all((job.output / t).stat().st_size > 0 for t in result["thumbnails"])
    assert json.loads(job.termination_text())["preview"] == str(job.output / "preview.html")


def test_a_video_ffmpeg_cannot_decode_gives_no_thumbnail_but_the_job_succeeds(job):
    # The job's video is not a real video (ffprobe is a double): no frame, no failure.
    assert job.run() == 0
    result = json.loads((job.output / "result.json").read_text())
    assert result["thumbnails"] == [None, None]
    assert not list(job.output.glob("segment-*.jpg"))
    page = parse((job.output / "preview.html").read_text())
    assert len([e for e in page.find("a") if e["attrs"].get("class") == "segment"]) == 2


# --- in a real browser --------------------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@needs_ffmpeg
@pytest.mark.skipif(chromium() is None, reason="no headless Chromium (Debian: apt-get install chromium)")
def test_preview_in_headless_chromium(wrapper, tmp_path):
    video = tmp_path / "input" / "red-blue.mp4"
    video.parent.mkdir()
    make_video(video)
    out = tmp_path / "output"
    out.mkdir()
    path, _ = wrapper.write_preview(inputs(wrapper, out, str(video)), video, SEGMENTS, 12.0)
    shot = tmp_path / "preview.png"
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run(
        base + ["--window-size=1100,600", f"--screenshot={shot}", path.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    if os.environ.get("VIDI_PREVIEW_SCREENSHOT"):
        shutil.copy(shot, os.environ["VIDI_PREVIEW_SCREENSHOT"])
    w, h, raw = rgb_pixels(shot)
    assert (w, h) == (1100, 600)
    # Both thumbnails were loaded from beside the page and drawn; the timeline's bars too.
    assert count_colour(raw, (255, 0, 0), tol=30) > 20_000, "the red thumbnail (segment 1)"
    assert count_colour(raw, (0, 0, 255), tol=30) > 20_000, "the blue thumbnail (segment 2)"
    assert count_colour(raw, (0xD9, 0x48, 0x0F), tol=40) > 2_000, "the timeline's segment bars"
    # The DOM as Chromium built it.
    dom = subprocess.run(
        base + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    page = parse(dom)
    assert page.text["query"] == "the screen turns blue"
    hrefs = [e["attrs"]["href"] for e in page.find("a") if e["attrs"].get("class") == "segment"]
    assert hrefs == ["../input/red-blue.mp4#t=1,3", "../input/red-blue.mp4#t=6,10.5"]
    assert [i["attrs"]["src"] for i in page.find("img")] == ["segment-001.jpg", "segment-002.jpg"]
