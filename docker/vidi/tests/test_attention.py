"""Which flash-attn upstream gets (select_attention), and the plain-PyTorch stand-in's arithmetic."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import math
import sys

import pytest


@pytest.fixture()
def clean_import_state(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_pytorch_puts_the_stand_in_where_transformers_finds_flash_attn(wrapper, clean_import_state):
    assert wrapper.select_attention("pytorch") == "pytorch"
    spec = importlib.util.find_spec("flash_attn")
    assert spec is not None and spec.origin.startswith(str(wrapper.FALLBACK_DIR))
    # transformers' is_flash_attn_2_available()/is_flash_attn_greater_or_equal("2.6.0") read this.
    assert importlib.metadata.version("flash_attn") == "2.8.3+vidi.torch"
    assert str(wrapper.FALLBACK_DIR) == sys.path[0]


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="a real flash-attn is installed here")
def test_auto_without_flash_attn_falls_back(wrapper, clean_import_state):
    assert wrapper.select_attention("auto") == "pytorch"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="a real flash-attn is installed here")
def test_flash_attn_asked_for_but_missing_is_exit_1(job):
    assert job.run(VIDI_ATTENTION="flash-attn") == 1
    assert "VIDI_ATTENTION=flash-attn but flash-attn does not import" in job.termination_text()
    assert job.calls == [], "the model is never loaded"


def test_flash_attn_asked_for_but_only_the_stand_in_is_there(wrapper, clean_import_state):
    pytest.importorskip("torch", reason="importing the stand-in needs torch (not in the packaging venv)")
    wrapper.select_attention("pytorch")
    importlib.import_module("flash_attn")
    with pytest.raises(RuntimeError, match="only the PyTorch stand-in"):
        wrapper.select_attention("flash-attn")
    assert wrapper.select_attention("auto") == "pytorch"


def test_attention_is_reported_in_result_json(job):
    assert job.run(VIDI_ATTENTION="pytorch") == 0
    assert json.loads((job.output / "result.json").read_text())["attention"] == "pytorch"


def test_unknown_attention_is_bad_input(job):
    assert job.run(VIDI_ATTENTION="xformers") == 2
    assert "VIDI_ATTENTION" in job.termination_text()


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "half", "nan"])
def test_bad_memory_fraction_is_bad_input(job, value):
    assert job.run(VIDI_CUDA_MEMORY_FRACTION=value) == 2
    assert "VIDI_CUDA_MEMORY_FRACTION" in job.termination_text()


def test_memory_fraction_reaches_the_model(job, monkeypatch):
    seen = {}

    def model_double(video, query, model_path, precision, memory_fraction=None):
        seen["fraction"] = memory_fraction
        return ""

    monkeypatch.setattr(job.wrapper, "run_model", model_double)
    assert job.run(VIDI_CUDA_MEMORY_FRACTION="0.25") == 0
    assert seen == {"fraction": 0.25}


# --- the stand-in's arithmetic against attention written out naively ----------------------

NO_TORCH = "the stand-in's arithmetic needs torch (not in the packaging venv)"


@pytest.fixture()
def fa(wrapper, clean_import_state):
    pytest.importorskip("torch", reason=NO_TORCH)
    wrapper.select_attention("pytorch")
    module = importlib.import_module("flash_attn")
    assert module.IS_VIDI_FALLBACK
    return module, importlib.import_module("flash_attn.bert_padding")


def naive(q, k, v, scale, causal=False, window=(-1, -1), softcap=0.0):
    """q [lq, h, d], k/v [lk, hk, d]: loops, float64."""
    import torch

    lq, h, d = q.shape
    lk, hk, _ = k.shape
    out = torch.zeros(lq, h, d, dtype=torch.float64)
    for head in range(h):
        kh = head // (h // hk)
        for i in range(lq):
            scores = []
            for j in range(lk):
                shift = lk - lq
                ok = True
                if causal and j > i + shift:
                    ok = False
                if window[0] >= 0 and j < i + shift - window[0]:
                    ok = False
                if window[1] >= 0 and j > i + shift + window[1]:
                    ok = False
                if not ok:
                    scores.append(-math.inf)
                    continue
                s = float((q[i, head].double() * k[j, kh].double()).sum()) * scale
                if softcap:
                    s = softcap * math.tanh(s / softcap)
                scores.append(s)
            w = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
            out[i, head] = (w[:, None] * v[:, kh].double()).sum(0)
    return out


@pytest.mark.parametrize(
    "causal, window, softcap",
    [(False, (-1, -1), 0.0), (True, (-1, -1), 0.0), (True, (-1, -1), 50.0), (False, (2, 1), 0.0), (True, (3, 3), 30.0)],
)
def test_flash_attn_func_matches_naive_attention(fa, causal, window, softcap):
    import torch

    flash, _ = fa
    g = torch.Generator().manual_seed(0)
    b, lq, lk, h, hk, d = 2, 5, 7, 4, 2, 8
    q = torch.randn(b, lq, h, d, generator=g)
    k = torch.randn(b, lk, hk, d, generator=g)
    v = torch.randn(b, lk, hk, d, generator=g)
    out = flash.flash_attn_func(q, k, v, softmax_scale=0.3, causal=causal, window_size=window, softcap=softcap)
    assert out.shape == (b, lq, h, d)
    for i in range(b):
        ref = naive(q[i], k[i], v[i], 0.3, causal, window, softcap)
        assert torch.allclose(out[i].double(), ref, atol=1e-5)


def test_varlen_matches_per_sequence_attention_and_padding_round_trips(fa):
    import torch

    flash, pad = fa
    g = torch.Generator().manual_seed(1)
    b, s, h, d = 3, 6, 2, 4
    x = torch.randn(b, s, h, d, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    tokens, indices, cu, max_len, used = pad.unpad_input(x, mask)
    assert tokens.shape == (14, h, d) and cu.tolist() == [0, 6, 9, 14] and max_len == 6 and used.tolist() == [6, 3, 5]
    out = flash.flash_attn_varlen_func(tokens, tokens, tokens, cu, cu, max_len, max_len, softmax_scale=0.5, causal=True, softcap=50.0)
    back = pad.pad_input(out, indices, b, s)
    for i in range(b):
        n = int(mask[i].sum())
        ref = naive(x[i, :n], x[i, :n], x[i, :n], 0.5, causal=True, softcap=50.0)
        assert torch.allclose(back[i, :n].double(), ref, atol=1e-5)
        assert torch.count_nonzero(back[i, n:]) == 0
