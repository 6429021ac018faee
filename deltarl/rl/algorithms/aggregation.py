"""Masked reductions, and the three ways a per-token loss becomes one number.

A batch is a padded [B, T] tensor of per-token values with a mask [B, T] (1 / True for real
response tokens). Every reduction here ignores padded positions completely -- also when they
hold NaN or inf, and also in the backward pass -- and returns 0, not NaN, when there is
nothing to average (a row with no response tokens, or a batch without any).

    "token"                    sum of all valid tokens / number of valid tokens
                               (DAPO, Yu et al. 2025: long answers weigh by their length)
    "sequence"                 mean over non-empty sequences of each sequence's token mean
                               (GRPO as written in DeepSeekMath, Shao et al. 2024)
    "seq-mean-token-sum-norm"  mean over all B sequences of (token sum / max_len), max_len a
                               constant such as the generation budget (Dr.GRPO, Liu et al.
                               2025, "Understanding R1-Zero-Like Training": no length bias)

The reductions act on the tensors they are given. With gradient accumulation over
micro-batches, scale each micro-batch's loss by aggregation_units(micro mask) /
aggregation_units(whole mini-batch mask) and sum: that reproduces the aggregation over the
whole mini-batch.
"""
from __future__ import annotations

import torch

AGGREGATIONS = ("token", "sequence", "seq-mean-token-sum-norm")


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """The mask as bool (it may arrive as bool, int or float 0/1)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_values(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x as float32 with padded positions set to 0.

    torch.where (not x * mask) so that NaN or inf at padding cannot leak: NaN * 0 is NaN, and
    where() also sends a zero gradient there.
    """
    return torch.where(as_bool_mask(mask), x.float(), 0.0)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over valid positions (all dims, or along dim)."""
    x = masked_values(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over valid positions; 0 where there are none."""
    mask = as_bool_mask(mask)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def _check_aggregation(aggregation: str, max_len: int | None) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
    if aggregation == "seq-mean-token-sum-norm" and (max_len is None or max_len <= 0):
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_len > 0 (a constant, "
                         "such as the generation budget, not the padded length of the batch)")


def aggregate(values: torch.Tensor, mask: torch.Tensor, aggregation: str = "token",
              max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] to a scalar float32 with one of AGGREGATIONS."""
    _check_aggregation(aggregation, max_len)
    mask = as_bool_mask(mask)
    if aggregation == "token":
        return masked_mean(values, mask)
    per_seq_sum = masked_sum(values, mask, dim=-1)                       # [B]
    if aggregation == "sequence":
        lengths = mask.sum(-1)                                           # [B]
        per_seq_mean = per_seq_sum / lengths.clamp(min=1)
        return masked_mean(per_seq_mean, lengths > 0)
    return per_seq_sum.sum() / max(per_seq_sum.numel(), 1) / max_len    # Dr.GRPO


def aggregation_units(mask: torch.Tensor, aggregation: str = "token") -> torch.Tensor:
    """What `aggregation` averages over, as a 0-dim tensor: valid tokens ("token"), non-empty
    sequences ("sequence") or all sequences ("seq-mean-token-sum-norm").

    For gradient accumulation: loss_micro * units(micro) / units(mini-batch), summed over the
    micro-batches, equals the aggregation over the whole mini-batch.
    """
    _check_aggregation(aggregation, 1)
    mask = as_bool_mask(mask)
    if aggregation == "token":
        return mask.sum()
    if aggregation == "sequence":
        return mask.any(-1).sum()
    return torch.tensor(mask.shape[0], device=mask.device)
