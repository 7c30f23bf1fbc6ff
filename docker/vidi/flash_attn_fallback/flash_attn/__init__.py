"""A plain-PyTorch stand-in for the part of flash-attn 2.8.3's API that upstream Vidi uses.

This is NOT flash-attn. Upstream Vidi 1.5 imports flash-attn unconditionally
(`vidi/model/lmm/dattn/xattn.py`) and asserts `attn_implementation == "flash_attention_2"`
(`DattnGemma2Model.__init__`), so without flash-attn it cannot even be imported. When the real
flash-attn cannot be imported (no wheel for this torch/CUDA/Python, or a GPU it does not
support), vidi_entrypoint.py puts this directory first on sys.path, before transformers or the
upstream code is imported; transformers then finds a `flash_attn` distribution and routes
`flash_attention_2` here.

Attention is computed per sequence with torch.nn.functional.scaled_dot_product_attention when no
logit soft-capping is asked for, and with the same arithmetic written out in PyTorch (float32
scores, tanh soft-capping, causal / sliding-window masks aligned bottom-right as flash-attn does)
when it is (Gemma 2 soft-caps its attention logits at 50, which SDPA cannot do). Same results up
to rounding, more memory and time than flash-attn: the fallback for getting an answer, not for
speed. Inference only: dropout is applied if asked, but there is no custom backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__version__ = "2.8.3+vidi.torch"
IS_VIDI_FALLBACK = True


def _mask(lq: int, lk: int, causal: bool, window_size, device) -> torch.Tensor | None:
    """Boolean [lq, lk] mask of allowed (query, key) pairs, flash-attn's bottom-right alignment."""
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    if causal:
        right = 0
    if left < 0 and right < 0:
        return None
    i = torch.arange(lq, device=device).unsqueeze(1) + (lk - lq)
    j = torch.arange(lk, device=device).unsqueeze(0)
    allowed = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if right >= 0:
        allowed &= j <= i + right
    if left >= 0:
        allowed &= j >= i - left
    return allowed


def _attend(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap):
    """One sequence: q [lq, h, d], k/v [lk, hk, d] (hk divides h) -> [lq, h, d]."""
    lq, h, d = q.shape
    lk, hk = k.shape[0], k.shape[1]
    if h != hk:
        k = k.repeat_interleave(h // hk, dim=1)
        v = v.repeat_interleave(h // hk, dim=1)
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    mask = _mask(lq, lk, causal, window_size, q.device)
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [h, l, d]
    if not softcap:
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask, dropout_p=dropout_p, scale=scale
        )
        if mask is not None:  # rows with no allowed key: flash-attn returns 0, SDPA NaN
            out = torch.nan_to_num(out, nan=0.0)
        return out.transpose(0, 1)
    scores = torch.matmul(qh.float(), kh.float().transpose(-1, -2)) * scale
    scores = softcap * torch.tanh(scores / softcap)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = torch.nan_to_num(probs, nan=0.0)
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p)
    out = torch.matmul(probs, vh.float()).to(q.dtype)
    return out.transpose(0, 1)


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """q [b, lq, h, d], k/v [b, lk, hk, d] -> [b, lq, h, d], as flash_attn.flash_attn_func."""
    if alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError("the PyTorch flash-attn fallback has no ALiBi or attention probabilities")
    outs = [
        _attend(q[b], k[b], v[b], dropout_p, softmax_scale, causal, window_size, softcap)
        for b in range(q.shape[0])
    ]
    return torch.stack(outs, dim=0)


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Packed sequences: q [total_q, h, d], k/v [total_k, hk, d], cu_seqlens_* [b + 1]."""
    if alibi_slopes is not None or return_attn_probs or block_table is not None:
        raise NotImplementedError("the PyTorch flash-attn fallback has no ALiBi, attention probabilities or paged KV")
    cq = [int(x) for x in cu_seqlens_q.tolist()]
    ck = [int(x) for x in cu_seqlens_k.tolist()]
    out = torch.zeros_like(q)
    for b in range(len(cq) - 1):
        if cq[b + 1] == cq[b]:
            continue
        if ck[b + 1] == ck[b]:
            continue  # no key: zeros, as flash-attn
        out[cq[b]:cq[b + 1]] = _attend(
            q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]],
            dropout_p, softmax_scale, causal, window_size, softcap,
        )
    return out


__all__ = ["flash_attn_func", "flash_attn_varlen_func", "__version__", "IS_VIDI_FALLBACK"]
