"""MoBA (Mixture of Block Attention, arXiv 2502.13189): block-sparse causal attention.

Each sequence is cut into blocks of `block_size` tokens; a query attends to its own block (causally)
and to the `top_k` completed blocks before it whose mean key scores highest against it, per head.
Argument conventions follow `deltarl.kernels.kda`: q, k [B, T, H, Dk]; v [B, T, H, Dv]; cu_seqlens
int32 [N + 1] with B = 1 for packed sequences.
"""
import torch

from .flex import dense_attend, flex_attend, flex_moba_attention, moba_block_mask
from .gate import block_means, choose_blocks, packed_blocks, row_blocks
from .masked import masked_moba_attention, moba_mask
from .naive import naive_moba_attention, visible_keys


MOBA_IMPLS = ("gathered", "tiled", "triton")      # the CUDA paths; the CPU takes the masked one whatever impl


def moba_attention(q, k, v, cu_seqlens, block_size: int, top_k: int, scale: float | None = None,
                   impl: str = "gathered"):
    """MoBA over packed sequences. On CUDA: impl "gathered" or "tiled" (FlexAttention, `flex.py`) or "triton"
    (one Triton attention over (query, block) rows, `triton_rows.py`); on the CPU the sequences are gathered
    into right-padded rows and attended with a boolean mask (`masked.py`)."""
    if impl not in MOBA_IMPLS:
        raise ValueError(f"impl must be one of {list(MOBA_IMPLS)}, got {impl!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.is_cuda and impl == "triton":
        from .triton_rows import triton_moba_attention
        return triton_moba_attention(q, k, v, cu_seqlens, block_size, top_k, scale)
    if q.is_cuda:
        return flex_moba_attention(q, k, v, cu_seqlens, block_size, top_k, scale, impl=impl)
    return padded_moba_attention(q, k, v, cu_seqlens, block_size, top_k, scale)


def padded_moba_attention(q, k, v, cu_seqlens, block_size: int, top_k: int, scale: float):
    """MoBA over packed sequences by the masked path: the sequences gathered into right-padded rows
    [N, L], a [N, H, L, L] mask. Runs anywhere; the CPU's path and the GPU check's reference."""
    from ..kda.common import padded_index, to_padded
    index, valid = padded_index(cu_seqlens)
    rows = [to_padded(t, index) for t in (q, k, v)]                                  # [N, L, H, D]
    pos = torch.where(valid, torch.arange(valid.shape[1], device=valid.device), -1)  # [N, L]
    o = masked_moba_attention(*rows, pos, pos, block_size, top_k, scale)
    return o[valid][None]                                                           # [1, T, H, Dv]


__all__ = ["moba_attention", "padded_moba_attention", "flex_moba_attention", "masked_moba_attention",
           "naive_moba_attention", "visible_keys", "flex_attend", "dense_attend", "moba_block_mask", "moba_mask",
           "packed_blocks", "row_blocks", "block_means", "choose_blocks"]
