"""How the tokens of one forward pass are laid out: padded rows, a packed row, and the decode cache."""
from dataclasses import dataclass

import torch

from .cache import KimiLinearCache


@dataclass
class TokenLayout:
    """valid: [B, T] True for real tokens (None: all real); cu_seqlens: int32 [N+1] boundaries of the
    sequences packed in a single row (B == 1); seq_idx: [B, T] sequence id per token (packed only);
    cache: the decode cache being filled or read (None in training)."""
    valid: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    seq_idx: torch.Tensor | None = None
    cache: KimiLinearCache | None = None


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[N+1] boundaries -> [1, total] id of the sequence each packed token belongs to."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.arange(len(lengths), device=cu_seqlens.device).repeat_interleave(lengths)
    if ids.numel() != total:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but the packed row has {total} tokens")
    return ids[None]

