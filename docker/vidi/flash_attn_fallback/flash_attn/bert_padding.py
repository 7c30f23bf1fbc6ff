"""flash_attn.bert_padding's helpers (2.8.3 semantics), in plain PyTorch. See __init__.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def index_first_axis(input, indices):
    """input [n, ...] -> input[indices]."""
    return input.reshape(input.shape[0], *input.shape[1:])[indices]


def index_put_first_axis(values, indices, first_axis_dim):
    output = torch.zeros((first_axis_dim, *values.shape[1:]), device=values.device, dtype=values.dtype)
    output[indices] = values
    return output


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """[b, s, ...] + mask [b, s] -> (tokens [nnz, ...], indices, cu_seqlens, max_seqlen, used_seqlens).

    flash-attn 2.7+ returns these five values (older releases returned the first four).
    """
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = seqlens_in_batch.max().item()
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return (index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen_in_batch, used_seqlens_in_batch)


def pad_input(hidden_states, indices, batch, seqlen):
    """tokens [nnz, ...] -> [batch, seqlen, ...], zeros where there was padding."""
    output = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return output.reshape(batch, seqlen, *hidden_states.shape[1:])
