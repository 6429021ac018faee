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

Each aggregation is a sum over the batch divided by a denominator that depends only on the
mask (and the Dr.GRPO budget): aggregate = aggregation_numerator / loss_denominator. With
gradient accumulation, compute the denominator once over the whole optimizer step's mask and
pass it as `denominator=` to every micro-batch's reduction; the micro-batch losses then sum to
the mini-batch's loss whatever the packing. (Data-parallel learners all-reduce the denominator
first: it is a plain count.)
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


def aggregation_numerator(values: torch.Tensor, mask: torch.Tensor, aggregation: str = "token") -> torch.Tensor:
    """The sum that `aggregation` divides, scalar float32: the sum of valid values ("token",
    "seq-mean-token-sum-norm") or the sum of each non-empty sequence's token mean ("sequence")."""
    _check_aggregation(aggregation, 1)
    mask = as_bool_mask(mask)
    if aggregation != "sequence":
        return masked_sum(values, mask)
    per_seq_sum = masked_sum(values, mask, dim=-1)                       # [B]
    return (per_seq_sum / mask.sum(-1).clamp(min=1)).sum()              # empty rows add 0


def loss_denominator(mask: torch.Tensor, aggregation: str = "token", max_len: int | None = None) -> torch.Tensor:
    """What `aggregation` divides by, a 0-dim float32 count: valid tokens ("token"), non-empty
    sequences ("sequence") or sequences x max_len ("seq-mean-token-sum-norm", max_len the fixed
    generation budget). Take it over the whole optimizer step, not a micro-batch."""
    _check_aggregation(aggregation, max_len)
    mask = as_bool_mask(mask)
    if aggregation == "token":
        count = mask.sum()
    elif aggregation == "sequence":
        count = mask.any(-1).sum()
    else:
        count = torch.tensor(mask.shape[0] * max_len, device=mask.device)
    return count.float()


def aggregate(values: torch.Tensor, mask: torch.Tensor, aggregation: str = "token",
              max_len: int | None = None, denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] to a scalar float32 with one of AGGREGATIONS.

    denominator: loss_denominator of the whole optimizer step when `values` are one micro-batch
    of it (then max_len is not needed); None: this batch's own. A zero denominator (nothing to
    average) gives 0."""
    if denominator is None:
        denominator = loss_denominator(mask, aggregation, max_len)
    else:
        _check_aggregation(aggregation, 1)
    denominator = torch.as_tensor(denominator, dtype=torch.float32, device=values.device)
    return aggregation_numerator(values, mask, aggregation) / denominator.clamp(min=1)
